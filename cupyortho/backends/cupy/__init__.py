r"""The CuPy backend: the backend module for CuPy arrays, SO(n) and U(n) together.

It provides the protocol of ``docs/backends.md`` (the same functions and attributes as the NumPy
backend): ``xp``, ``all_finite``, ``complex_dtype``; ``matrix``, ``apply``, ``matrix_vjp``,
``apply_vjp``, ``matrix_jvp``, ``apply_jvp`` for SO(n); ``unitary``, ``unitary_apply``,
``unitary_vjp``, ``unitary_apply_vjp``, ``unitary_jvp``, ``unitary_apply_jvp`` for U(n).  The public
layer has validated and cast every argument; see the page for what it guarantees.

Layout of the package:

* :mod:`.device` -- the device object (``CupyDevice``: NVRTC modules, shared-memory and SM limits);
* :mod:`.kernels` -- the kernel registry (every template instantiation and its ``.cu`` file);
* :mod:`.launch` -- one launcher per kernel (grid, block, shared memory, C scalar types);
* :mod:`.data` -- per-device schedule tables (cached) and array helpers;
* :mod:`.so` (SO(n)), :mod:`.un` (U(n)) -- the algorithms, ``_impl_*(dev, ...)``.

Every public function here is a thin call: find the device of its arrays, make it current, and run
``_impl_*(dev, ...)``.  The ``_impl_*`` code uses only ``dev.xp`` and the launchers, so the CPU harness
of ``tests/cudasim`` (NumPy arrays, the same ``.cu`` files compiled with g++) runs it unchanged.
Importing this package does not import CuPy; ``xp`` imports it on first use.
"""

from __future__ import annotations

import contextlib

from .._common import SO_FUNCTIONS, U_FUNCTIONS, complex_dtype
from . import so as _so
from . import un as _un
from .device import get_device

__all__ = ["all_finite", "complex_dtype", *SO_FUNCTIONS, *U_FUNCTIONS]


def __getattr__(attr):
    # ``xp`` is CuPy, imported on first use so that importing this package needs no GPU.
    if attr == "xp":
        import cupy

        return cupy
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def all_finite(a) -> bool:
    """True when every entry of ``a`` is finite (one device-to-host transfer of a flag), computed on
    the device that holds ``a``."""
    import cupy

    with a.device:
        return bool(cupy.isfinite(a).all())


# --------------------------------------------------------------------------- devices

def _on(array):
    """The device of ``array`` (whose device the computation runs on) and a context making it
    current."""
    dev = get_device(array)
    ctx = getattr(dev, "context", None)
    return dev, (ctx() if ctx is not None else contextlib.nullcontext())


def _here(dev, a):
    """``a`` on the device ``dev`` (a copy when it lives on another GPU, e.g. the identity frame the
    public layer creates on the current device for ``frame``); call with ``dev`` current."""
    where = getattr(getattr(a, "device", None), "id", None)
    if a is None or where is None or where == getattr(dev, "id", where):
        return a
    import cupy

    with a.device:
        src = cupy.ascontiguousarray(a)
        cupy.cuda.get_current_stream().synchronize()  # rare path: order the peer copy after a's producer
    out = cupy.empty(src.shape, dtype=src.dtype)
    if src.nbytes:
        out.data.copy_from_device_async(src.data, src.nbytes)
    return out


# --------------------------------------------------------------------------- SO(n)

def apply(theta, x, schedule, transpose=False):
    """``U(theta) @ x`` (or ``U(theta).T @ x``): theta (..., A), x (..., n, k) -> (..., n, k)."""
    dev, ctx = _on(theta)
    with ctx:
        return _so._impl_apply(dev, theta, _here(dev, x), schedule, transpose)


def matrix(theta, schedule):
    """``U(theta)`` of shape (..., n, n)."""
    dev, ctx = _on(theta)
    with ctx:
        return _so._impl_matrix(dev, theta, schedule)


def apply_vjp(theta, x, cotangent, schedule, transpose=False, output=None):
    """``(d_theta, d_x)`` of ``y = apply(theta, x)`` for ``cotangent = dL/dy``, shaped like theta, x."""
    dev, ctx = _on(theta)
    with ctx:
        return _so._impl_apply_vjp(dev, theta, _here(dev, x), _here(dev, cotangent), schedule, transpose,
                                   _here(dev, output))


def matrix_vjp(theta, cotangent, schedule, output=None):
    """``d_theta`` of ``U = matrix(theta)`` for ``cotangent = dL/dU``, shaped like theta.
    ``output`` may pass ``U`` itself (from :func:`matrix`) to skip recomputing it."""
    dev, ctx = _on(theta)
    with ctx:
        return _so._impl_matrix_vjp(dev, theta, _here(dev, cotangent), schedule, output=_here(dev, output))


def apply_jvp(theta, x, theta_tangent, x_tangent, schedule, transpose=False):
    """Tangent of ``y = apply(theta, x)`` along ``(theta_tangent, x_tangent)`` (x_tangent may be None)."""
    dev, ctx = _on(theta)
    with ctx:
        return _so._impl_apply_jvp(dev, theta, _here(dev, x), _here(dev, theta_tangent), _here(dev, x_tangent),
                                   schedule, transpose)


def matrix_jvp(theta, theta_tangent, schedule):
    """Tangent ``dU`` of ``U = matrix(theta)`` along ``theta_tangent``."""
    dev, ctx = _on(theta)
    with ctx:
        return _so._impl_matrix_jvp(dev, theta, _here(dev, theta_tangent), schedule)


# --------------------------------------------------------------------------- U(n)

def unitary(params, schedule, cdtype):
    """``U(params)`` (..., n, n) of complex dtype ``cdtype``; params (..., n*n) real."""
    dev, ctx = _on(params)
    with ctx:
        return _un._impl_unitary(dev, params, schedule, cdtype)


def unitary_apply(params, x, schedule, adjoint=False):
    """``U @ x`` (or ``U^H @ x``): params (..., n*n) real, x (..., n, k) complex -> (..., n, k)."""
    dev, ctx = _on(x)
    with ctx:
        return _un._impl_unitary_apply(dev, _here(dev, params), x, schedule, adjoint)


def unitary_vjp(params, cotangent, schedule, output=None):
    """``d_params`` (shaped like params) of ``U = unitary(params)`` for the complex ``cotangent``;
    ``output`` may pass ``U`` to skip recomputing it."""
    dev, ctx = _on(params)
    with ctx:
        return _un._impl_unitary_vjp(dev, params, _here(dev, cotangent), schedule, _here(dev, output))


def unitary_apply_vjp(params, x, cotangent, schedule, adjoint=False, output=None):
    """``(d_params, d_x)`` of ``y = unitary_apply(params, x)``; ``output`` may pass ``y``."""
    dev, ctx = _on(x)
    with ctx:
        return _un._impl_unitary_apply_vjp(dev, _here(dev, params), x, _here(dev, cotangent), schedule,
                                                adjoint, _here(dev, output))


def unitary_jvp(params, params_tangent, schedule, cdtype):
    """Tangent ``dU`` of ``U = unitary(params)`` along ``params_tangent``."""
    dev, ctx = _on(params)
    with ctx:
        return _un._impl_unitary_jvp(dev, params, _here(dev, params_tangent), schedule, cdtype)


def unitary_apply_jvp(params, x, params_tangent, x_tangent, schedule, adjoint=False):
    """Tangent of ``y = unitary_apply(params, x)`` along ``(params_tangent, x_tangent)`` (x_tangent may be None)."""
    dev, ctx = _on(x)
    with ctx:
        return _un._impl_unitary_apply_jvp(dev, _here(dev, params), x, _here(dev, params_tangent),
                                                _here(dev, x_tangent), schedule, adjoint)
