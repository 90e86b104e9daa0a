"""Helpers shared by every backend (array-library agnostic: only ndarray methods are used), and the
names of the backend protocol (``docs/backends.md``)."""

from __future__ import annotations

import numpy as np

#: The SO(n) operations every backend module provides (signatures in ``docs/backends.md``).
SO_FUNCTIONS = ("matrix", "apply", "matrix_vjp", "apply_vjp", "matrix_jvp", "apply_jvp")
#: The U(n) operations every backend module provides.
U_FUNCTIONS = ("unitary", "unitary_apply", "unitary_vjp", "unitary_apply_vjp", "unitary_jvp", "unitary_apply_jvp")
#: Everything else a backend module provides: its array module and two helpers.
ATTRIBUTES = ("xp", "all_finite", "complex_dtype")


def sum_to(a, shape):
    """Sum a broadcast result back to ``shape``: the reverse of broadcasting (the VJP of
    ``broadcast_to``).  Works for NumPy and CuPy arrays alike."""
    shape = tuple(shape)
    if tuple(a.shape) == shape:
        return a
    lead = a.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + d for d, size in enumerate(shape) if size == 1 and a.shape[lead + d] != 1
    )
    return a.sum(axis=axes).reshape(shape)


def complex_dtype(real_dtype):
    """The complex dtype of the same precision: complex64 for float32, complex128 for float64."""
    return np.result_type(np.dtype(real_dtype), np.complex64)
