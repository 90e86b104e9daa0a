r"""One place for every strategy decision: how a validated call is carried out.

Design rule: the public layer and the adapters never decide how to compute; they ask this module.
It decides whether ``apply``/``apply_vjp``/``apply_jvp`` materialize ``U`` and multiply, or sweep
the rounds over ``x`` (:func:`apply_method`, ``method=`` overrides it), and which CPU implementation
runs a pass (:func:`cpu_impl`: compiled engine, blocked GEMM stages, or the round-by-round
reference).  The measured crossovers behind both are in ``docs/engine.md``.
"""

from __future__ import annotations

import functools
import importlib.util
import math

import numpy as np

from .errors import MethodError

__all__ = [
    "METHODS", "apply_method", "CPU_IMPLS", "FORCE", "ENGINE_MATRIX_MAX_N", "cpu_impl", "engine_available",
    "team_blocks_pay", "cupy_impl",
]

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

FORCE = None
"""Benchmarks and tests may set this to one of :data:`CPU_IMPLS` to force every pass that
implementation has; None (default) lets :func:`cpu_impl` decide."""

ENGINE_MATRIX_MAX_N = {"matrix": None, "matrix_jvp": None, "matrix_vjp": 2560}
"""Team schedules: the largest ``n`` at which the engine runs each pass that forms ``U`` or its
derivatives, the blocked GEMM stages (compiled slab path) beyond; None: the engine at every ``n``.
Measured crossover (one thread, CPU time per one ``n x n`` float32 matmul, 2026-12-02 00:55-01:17
UTC, load 1.8-3.0; ``matrix`` and ``matrix_vjp`` by ``bench/engine_bench.py --crossover``,
``matrix_jvp`` after the engine's SIMD JVP landed; details in docs/blocked.md), engine / blocked:

=====  ===============  ===============================  =================
n      ``matrix``       ``matrix_vjp(output=U)``         ``matrix_jvp``
=====  ===============  ===============================  =================
512    3.26 / 6.54      9.03 / 18.38                     6.74 / 17.0
768    3.20 / 5.62      8.52 / 11.85
1024   2.78 / 4.81      7.88 / 9.74                      6.86 / 13.3
1536   2.58 / 4.00      7.25 / 8.54
2048   2.74 / 4.71      7.07 / 8.14                      8.13 / 14.0
3072   3.25 / 5.43      8.41 / 8.34
4096   3.45 / 4.42      9.25 / 6.70                      9.50 / 13.7
=====  ===============  ===============================  =================

A second one-thread run after the slab VJP's last change (01:26, load 1.4-2.5), ``matrix_vjp``:
7.07 / 7.49 (2048), 7.95 / 7.40 (3072), 9.66 / 7.44 (4096); two threads, wall time per two-thread
matmul (01:28-01:30, load 1.2-1.6): 7.24 / 8.51 (2048), 7.04 / 7.17 (3072), 8.34 / 7.75 (4096);
again (01:34, load 0.9-1.8): 6.54 / 8.99, 8.38 / 7.98, 7.79 / 7.05; one thread at load 0.9-1.0
(01:37): 6.81 / 7.33, 7.68 / 7.71, 8.24 / 7.12 (``matrix``: 2.76 / 4.13, 3.11 / 5.45, 3.38 / 5.14).
At 3072 the slab path is level with the engine or up to 7% ahead in all five runs, at 2048 behind
in all: limit 2560.  (It also holds fewer buffers: about 7 ``n x n`` at the peak against 10.)
"""


@functools.lru_cache(maxsize=None)
def engine_available() -> bool:
    """True when Numba can be imported (checked without importing it)."""
    return importlib.util.find_spec("numba") is not None


def team_blocks_pay(schedule) -> bool:
    """Whether the block-diagonal team paths (CPU blocked stages, CuPy block kernels) may take
    ``schedule``: plain team schedules only (not truncations or user rounds), and not a narrow
    Stiefel restriction (8m < n), which sweeps its O(nm) rotations instead, since a block plan builds
    every stage of the full n x n schedule."""
    narrow = schedule.m is not None and 8 * schedule.m < schedule.n
    return schedule.kind == "team" and not narrow


def cpu_impl(op, schedule, dtype=None, k=None):
    """Which CPU implementation runs pass ``op`` of :mod:`cupyortho.backends.cpu` on NumPy arrays.

    ``op`` is a protocol function name (``"matrix"``, ``"apply_vjp"``, ``"unitary_apply"``, ...);
    ``k`` the number of columns of ``x`` for the apply passes.  Returns one of :data:`CPU_IMPLS`:

    * ``"blocked"`` (block-diagonal GEMM stages, :mod:`cupyortho.backends.blocked`): the VJP of
      ``U`` for team schedules above its :data:`ENGINE_MATRIX_MAX_N` (there the stage GEMMs beat
      rotations; ``U`` itself and its JVP stay on the engine at every ``n`` measured);
    * ``"engine"`` (:mod:`cupyortho.backends.engine`): every other pass, SO(n) and U(n), every
      schedule and every ``k`` (sweeps over ``x`` beat the blocked stages at every ``k`` measured,
      up to ``k = 2n``), while Numba is importable;
    * ``"reference"`` (round-by-round NumPy): without Numba.

    The measurements behind the rule are in ``docs/engine.md``.
    """
    unitary = op.startswith("unitary")
    blocked_ok = not unitary and team_blocks_pay(schedule)
    if FORCE == "reference" or (FORCE == "blocked" and blocked_ok):
        return FORCE
    if not engine_available():
        return "blocked" if blocked_ok else "reference"
    if FORCE == "engine":
        return "engine"
    limit = ENGINE_MATRIX_MAX_N.get(op, None) if op.startswith("matrix") else None
    if blocked_ok and limit is not None and schedule.n > limit:
        return "blocked"
    return "engine"


# --------------------------------------------------------------------------- CuPy implementation

def cupy_impl(op, schedule):
    """Which implementation of :mod:`cupyortho.backends.cupy` forms ``U`` and its VJP (``op`` is
    ``"matrix"`` or ``"matrix_vjp"``): ``"blocked"`` (block-diagonal stages built by a kernel and
    multiplied by batched GEMMs) for team schedules, ``"rounds"`` (the rounds swept over the identity;
    fused or per-round launches as shared memory allows) otherwise.  The sweeps over ``x`` and the
    JVPs always run the rounds."""
    return "blocked" if op in ("matrix", "matrix_vjp") and team_blocks_pay(schedule) else "rounds"
