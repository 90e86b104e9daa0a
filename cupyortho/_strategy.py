r"""One place for every strategy decision: how a validated call is carried out.

Design rule: the public layer and the adapters never decide how to compute; they ask this module.
Today it decides whether ``apply``/``apply_vjp``/``apply_jvp`` materialize ``U`` and multiply, or
sweep the rounds over ``x`` (``method=``).  Which CPU implementation runs a pass (compiled engine,
blocked GEMM stages, or the round-by-round reference) is decided here too as those land.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import MethodError

__all__ = ["METHODS", "apply_method", "CPU_IMPLS", "cpu_impl"]

METHODS = ("auto", "materialize", "rounds")


def apply_method(method, theta, x2):
    """Resolve the ``method`` argument of apply/apply_vjp/apply_jvp to "materialize" or "rounds".

    "auto" materializes when the columns sharing one ``U`` are at least ``n``:
    ``k * (number of x matrices per theta matrix) >= n``; forming ``U`` then costs about as much as
    one sweep over the columns, and everything after it is a GEMM.  Otherwise "rounds": the rounds
    (or, for team schedules on the NumPy backend, the block stages) are applied to ``x`` directly,
    in ``O(nk)`` memory.
    """
    if method not in METHODS:
        raise MethodError(f"method must be one of {METHODS}, got {method!r}")
    if method != "auto":
        return method
    n, k = x2.shape[-2], x2.shape[-1]
    out_batch = np.broadcast_shapes(theta.shape[:-1], x2.shape[:-2])
    per_u = math.prod(out_batch) // max(1, math.prod(theta.shape[:-1]))
    return "materialize" if k * per_u >= n else "rounds"


# --------------------------------------------------------------------------- CPU implementation

CPU_IMPLS = ("reference", "blocked", "engine")


def cpu_impl(op, schedule, dtype=None, k=None):
    """Which CPU implementation runs pass ``op`` of :mod:`cupyortho.backends.cpu` on NumPy arrays.

    ``op`` is a protocol function name (``"matrix"``, ``"apply_vjp"``, ``"unitary_apply"``, ...);
    ``k`` the number of columns of ``x`` for the apply passes.  Returns one of :data:`CPU_IMPLS`:
    ``"blocked"`` (the block-diagonal GEMM stages of :mod:`cupyortho.backends.blocked`, team
    schedules, SO(n) only), ``"reference"`` (the round-by-round NumPy functions).
    """
    # Plain team schedules only; a narrow Stiefel restriction (8m < n) sweeps its O(nm) rotations,
    # since the block plan would build every stage of the full n x n schedule.
    narrow = schedule.m is not None and 8 * schedule.m < schedule.n
    if not op.startswith("unitary") and schedule.kind == "team" and not narrow:
        return "blocked"
    return "reference"
