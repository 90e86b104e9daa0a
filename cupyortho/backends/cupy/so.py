r"""SO(n) on the CuPy backend: the reference's operations as CUDA kernels (RawKernels) and cuBLAS GEMMs.

Design rule: the package's public functions (:mod:`cupyortho.backends.cupy`) are thin calls
``_impl_x(dev, ...)``; the ``_impl_*`` functions take a *device object* ``dev`` first (:mod:`.device`)
and use only ``dev.xp`` functions that exist in both NumPy and CuPy and the launchers of
:mod:`.launch`.  So the whole algorithm runs
on a GPU with :class:`~._device.CupyDevice`, and on the CPU (numpy arrays, kernels compiled with g++)
with the harness device of ``tests/cudasim``.  Nothing in the hot path copies to the host or
synchronizes; everything runs on CuPy's current stream and on the device of theta (other
arguments on another GPU, such as the identity the public layer creates for ``frame``, are copied
there).  Inputs are never written to: every sweep works on its own copy.

Maths and conventions are the NumPy reference's (:mod:`cupyortho.backends.numpy_backend`,
``docs/conventions.md``):
a round rotates rows ``x_i <- c x_i - s x_j``, ``x_j <- s x_i + c x_j``; ``U = B_{R-1} ... B_0``.

Paths (how a pass runs on the device, or forced with ``path=`` in the ``_impl_*`` functions):
``"blocked"`` for ``U`` and its VJP when :func:`cupyortho._strategy.cupy_impl` says so, else fused or
per-round sweeps by what fits in shared memory.  Whether ``apply`` materializes ``U`` first is not
decided here but by :mod:`cupyortho._strategy` (the public layer then composes :func:`_impl_matrix` /
:func:`_impl_matrix_vjp` with GEMMs):

``"fused"``
    All rounds in one launch: a thread block owns a tile of ``TK`` columns of one batch entry in
    shared memory for the whole sweep, ``__syncthreads`` between rounds.  Used when a column of the
    operand (two, for the backward and forward-mode sweeps) fits in shared memory.  The backward
    writes per-tile angle sums (``partial``, one row per tile) that a second kernel adds in tile
    order: no atomics, bitwise reproducible.  For circle schedules the materialized VJP's
    two-sided sweep runs with W in shared memory when ``n*n`` fits (one thread block per matrix).
``"rounds"``
    One launch per round, operands in global memory: any ``n``.  The backward sums the columns of
    one pair in one thread (deterministic); the materialized VJP updates one 2 x 2 sub-block of W
    per thread.  For circle schedules at large ``n`` this is R launches over all of W: use the
    team schedule there.
``"blocked"``
    Team schedules (``docs/conventions.md``; tables from :mod:`cupyortho.backends.team_plan`), for
    :func:`_impl_matrix` and :func:`_impl_matrix_vjp`: each stage is block-diagonal with ``2t x 2t``
    blocks built from the angles by a kernel (one thread block per block), applied by batched GEMMs
    (``xp.matmul``); the VJP maps block cotangents to angle cotangents with the reduction-free
    formula inside each block.

cos and sin of the angles are computed once per call (kernel ``cos_sin``).
"""

from __future__ import annotations

import numpy as np

from ... import _strategy
from .._common import sum_to as _sum_to
from ...errors import MethodError, ScheduleError
from . import launch as _launch
from .data import angles_per_batch, block_data, prod, rounds_data, slot_data, work

#: The values of ``path=`` each operation accepts (None: chosen per call).
APPLY_PATHS = ("fused", "rounds")
MATRIX_PATHS = ("fused", "rounds", "blocked")

#: Upper bound on the scratch of per-tile partial angle sums of the fused backward, in bytes (it is
#: also allowed 8 gradients' worth); beyond it the tiles are widened, or the per-round path is used.
PARTIAL_BYTES = 256 * 1024 * 1024
#: Force the column-tile width of the fused kernels (None: chosen per call); for tuning and benchmarks.
TILE_WIDTH = None


def _cos_sin(dev, theta, batch, index):
    """cos/sin of theta (..., A) at ``index`` (round-major or identity), once per call.

    Returns ``(cs, cs_bstride)``: cs (Bt, A, 2), and the element stride between batch entries (0 when
    one angle vector serves the whole batch)."""
    xp = dev.xp
    t, step = angles_per_batch(xp, theta, batch)
    A = index.shape[0]
    cs = xp.empty((t.shape[0], A, 2), dtype=theta.dtype)
    _launch.cos_sin(dev, t, index, cs)
    return cs, step * 2 * A


def _tile_width(dev, n, k, B, buffers, itemsize, A=None, path=None):
    """Columns per thread block of a fused sweep, or None for the per-round path.

    The tile must fit in shared memory (``buffers`` (n, TK) tiles); within that, tiles are as narrow
    as keeps about two blocks per SM busy (narrow tiles = more blocks), and wide enough that the
    per-tile partial sums of a backward (``A`` angles per tile) stay within ``PARTIAL_BYTES``.
    """
    if path == "rounds" or k == 0:
        return None
    smem = int(getattr(dev, "max_shared_memory", 48 * 1024))
    tk_max = min(k, smem // (buffers * n * itemsize))
    if tk_max < 1:
        if path == "fused":
            raise MethodError(f"path='fused' needs {buffers * n * itemsize} bytes of shared memory for "
                              f"n = {n}, the device offers {smem}")
        return None
    if TILE_WIDTH is not None:
        return int(min(TILE_WIDTH, tk_max))
    sms = int(getattr(dev, "multiprocessor_count", 80))
    tk = max(1, min(tk_max, -(-(B * k) // (2 * sms))))
    if A:
        budget = max(PARTIAL_BYTES, 8 * B * A * itemsize)
        max_tiles = max(1, budget // max(1, B * A * itemsize))
        tk = max(tk, -(-k // max_tiles))
        if tk > tk_max:
            if path == "fused":
                tk = tk_max
            else:
                return None
    return int(tk)


def _check_path(path, allowed):
    if path is not None and path not in allowed:
        raise MethodError(f"path must be one of {allowed} or None, got {path!r}")


# --------------------------------------------------------------------------- sweeps

def _sweep(dev, y, cs, cs_bstride, rd, transpose, path=None):
    """y (B, n, k) <- U y (or U^T y) in place."""
    B, n, k = y.shape
    sign = -1.0 if transpose else 1.0
    tk = _tile_width(dev, n, k, B, 1, y.itemsize, path=path)
    if tk is not None:
        _launch.apply_fused(dev, y, cs, rd.pair_i, rd.pair_j, rd.round_offsets, transpose, tk,
                            cs_bstride, sign)
        return y
    off = rd.offsets
    R = off.size - 1
    for r in (range(R - 1, -1, -1) if transpose else range(R)):
        _launch.apply_round(dev, y, cs, rd.pair_i, rd.pair_j, int(off[r]), int(off[r + 1] - off[r]),
                            cs_bstride, sign)
    return y


def _impl_apply(dev, theta, x, schedule, transpose=False, path=None):
    """``U(theta) @ x`` (or ``U^T @ x``).  theta (..., A), x (..., n, k) -> (..., n, k)."""
    _check_path(path, APPLY_PATHS)
    xp = dev.xp
    batch = np.broadcast_shapes(theta.shape[:-1], x.shape[:-2])
    rd = rounds_data(dev, schedule)
    cs, cs_bstride = _cos_sin(dev, theta, batch, rd.angle_index)
    y = work(xp, x, batch, x.dtype)
    _sweep(dev, y, cs, cs_bstride, rd, bool(transpose), path)
    return y.reshape(tuple(batch) + tuple(x.shape[-2:]))


def _impl_apply_vjp(dev, theta, x, cotangent, schedule, transpose=False, output=None, path=None):
    r"""Cotangents ``(d_theta, d_x)`` of ``y = apply(theta, x)`` (see numpy_backend.apply_vjp).

    Undoes each round on y (recovering its input), rotates the cotangent by the round's transpose and
    sums :math:`x_i \bar g_j - x_j \bar g_i` over the columns, deterministically."""
    _check_path(path, APPLY_PATHS)
    xp = dev.xp
    transpose = bool(transpose)
    batch = tuple(np.broadcast_shapes(theta.shape[:-1], x.shape[:-2], cotangent.shape[:-2]))
    rd = rounds_data(dev, schedule)
    cs, cs_bstride = _cos_sin(dev, theta, batch, rd.angle_index)
    n, k = x.shape[-2:]
    B = prod(batch)
    if output is None:
        y = work(xp, x, batch, x.dtype)
        _sweep(dev, y, cs, cs_bstride, rd, transpose, path)
    else:
        y = work(xp, output, batch, x.dtype)
    g = work(xp, cotangent, batch, x.dtype)
    A = schedule.num_angles
    undo = 1.0 if transpose else -1.0
    dsign = -1.0 if transpose else 1.0
    d = xp.empty((B, A), dtype=x.dtype)
    tk = _tile_width(dev, n, k, B, 2, x.itemsize, A=A, path=path)
    if tk is not None:
        partial = xp.empty((B, -(-k // tk), A), dtype=x.dtype)
        _launch.apply_vjp_fused(dev, y, g, partial, cs, rd.pair_i, rd.pair_j, rd.round_offsets,
                                transpose, tk, cs_bstride, undo)
        _launch.reduce_partials(dev, partial, d, rd.angle_index, dsign)
    else:
        d_round = xp.empty((B, A), dtype=x.dtype)
        off = rd.offsets
        R = off.size - 1
        for r in (range(R) if transpose else range(R - 1, -1, -1)):
            _launch.apply_vjp_round(dev, y, g, d_round, cs, rd.pair_i, rd.pair_j, int(off[r]),
                                    int(off[r + 1] - off[r]), cs_bstride, undo, dsign)
        d[:, rd.angle_index] = d_round
    d_theta = _sum_to(d.reshape(batch + (A,)), theta.shape)
    d_x = _sum_to(g.reshape(batch + (n, k)), x.shape)
    return d_theta, d_x


def _impl_apply_jvp(dev, theta, x, theta_tangent, x_tangent, schedule, transpose=False, path=None):
    r"""Tangent of ``y = apply(theta, x)``: :math:`dy_r = B_r dy_{r-1} + K_r y_r` round by round."""
    _check_path(path, APPLY_PATHS)
    xp = dev.xp
    transpose = bool(transpose)
    shapes = [theta.shape[:-1], x.shape[:-2], theta_tangent.shape[:-1]]
    if x_tangent is not None:
        shapes.append(x_tangent.shape[:-2])
    batch = tuple(np.broadcast_shapes(*shapes))
    rd = rounds_data(dev, schedule)
    cs, cs_bstride = _cos_sin(dev, theta, batch, rd.angle_index)
    n, k = x.shape[-2:]
    B = prod(batch)
    y = work(xp, x, batch, x.dtype)
    if x_tangent is None:
        dy = xp.zeros((B, n, k), dtype=x.dtype)
    else:
        dy = work(xp, x_tangent, batch, x.dtype)
    tt, step = angles_per_batch(xp, theta_tangent, batch)
    dt = xp.ascontiguousarray(xp.take(tt, rd.angle_index, axis=1))
    dt_bstride = step * schedule.num_angles
    sign = -1.0 if transpose else 1.0
    tk = _tile_width(dev, n, k, B, 2, x.itemsize, path=path)
    if tk is not None:
        _launch.apply_jvp_fused(dev, y, dy, cs, dt, rd.pair_i, rd.pair_j, rd.round_offsets, transpose,
                                tk, cs_bstride, dt_bstride, sign)
    else:
        off = rd.offsets
        R = off.size - 1
        for r in (range(R - 1, -1, -1) if transpose else range(R)):
            _launch.apply_jvp_round(dev, y, dy, cs, dt, rd.pair_i, rd.pair_j, int(off[r]),
                                    int(off[r + 1] - off[r]), cs_bstride, dt_bstride, sign)
    return dy.reshape(batch + (n, k))


# --------------------------------------------------------------------------- blocked (team) path

def _use_blocked(op, schedule, path):
    """Whether ``op`` (``"matrix"``, ``"matrix_vjp"``) runs by block stages: forced by ``path``, else as
    :func:`cupyortho._strategy.cupy_impl` decides."""
    if path == "blocked":
        if schedule.kind != "team":
            raise ScheduleError(f"path='blocked' needs a team schedule, got {schedule!r}")
        return True
    return path is None and _strategy.cupy_impl(op, schedule) == "blocked"


def _blocked_blocks(dev, theta, batch, schedule):
    """The stage blocks (B, S, NB, L, L) of theta broadcast to ``batch``, and their cos/sin."""
    xp = dev.xp
    bd = block_data(dev, schedule)
    rd = rounds_data(dev, schedule)
    cs, cs_bstride = _cos_sin(dev, theta, batch, rd.identity)
    blocks = xp.empty((prod(batch), bd.S, bd.NB, bd.L, bd.L), dtype=theta.dtype)
    _launch.build_blocks(dev, blocks, cs, bd.block_angle, bd.local_i, bd.local_j, cs_bstride)
    return blocks, cs, cs_bstride, bd


def _blocked_forward(dev, theta, batch, schedule):
    """``U`` (B, n, n) by stages, and ``(blocks, cs, cs_bstride, tables)`` of :func:`_blocked_blocks`.

    U is kept with its rows in the current stage's block order, so each stage is one row gather
    and one batched GEMM ``(B, NB, L, L) @ (B, NB, L, N)``; one final gather restores the natural
    order.  Stage 0 acts on contiguous coordinates: U starts as its block diagonal."""
    xp = dev.xp
    blocks, cs, cs_bstride, bd = _blocked_blocks(dev, theta, batch, schedule)
    B, N, L, NB = blocks.shape[0], bd.N, bd.L, bd.NB
    u = xp.zeros((B, N, N), dtype=theta.dtype)
    u[:, bd.diag_rows, bd.diag_cols] = blocks[:, 0].reshape(B, N, L)
    for s in range(1, bd.S):
        u = xp.matmul(blocks[:, s], u[:, bd.to_stage[s], :].reshape(B, NB, L, N)).reshape(B, N, N)
    n = schedule.n
    u = u[:, bd.to_natural[:n], :n] if bd.S > 1 else u[:, :n, :n]
    return xp.ascontiguousarray(u), (blocks, cs, cs_bstride, bd)


def _impl_matrix_blocked(dev, theta, schedule):
    batch = tuple(theta.shape[:-1])
    n = schedule.n
    u, _ = _blocked_forward(dev, theta, batch, schedule)
    return u.reshape(batch + (n, n))


def _impl_matrix_vjp_blocked(dev, theta, cotangent, schedule, output=None, blocked=None):
    r"""Materialized VJP by stages: :math:`W = \bar G U^T`; for each stage, last first, the angle
    cotangents of its blocks from the diagonal blocks of W (kernel ``block_vjp``), then
    :math:`W \leftarrow P_s^T W P_s` by two batched GEMMs.

    W is kept in the current stage's order of rows and columns, alternately transposed: the right
    product :math:`M P` is computed as :math:`(P^T M^T)^T`, so every GEMM is a left product on
    contiguous rows, and a stage costs one gather, one transposing copy and two GEMMs.  (The
    diagonal blocks of :math:`W^T` are the transposed blocks of W, and
    :math:`P^T W^T P = (P^T W P)^T`.)  ``output`` may pass U (..., n, n) to skip recomputing it,
    ``blocked`` the second result of :func:`_blocked_forward` for the same theta and batch."""
    xp = dev.xp
    batch = tuple(np.broadcast_shapes(theta.shape[:-1], cotangent.shape[:-2]))
    n, A = schedule.n, schedule.num_angles
    B = prod(batch)
    if output is None:
        u, blocked = _blocked_forward(dev, theta, batch, schedule)
    else:
        u = xp.broadcast_to(output, batch + (n, n)).reshape(B, n, n)
        if blocked is None:
            blocked = _blocked_blocks(dev, theta, batch, schedule)
    blocks, cs, cs_bstride, bd = blocked
    N, L, NB = bd.N, bd.L, bd.NB
    g = xp.broadcast_to(cotangent, batch + (n, n)).reshape(B, n, n)
    w = xp.zeros((B, N, N), dtype=theta.dtype)  # zero on the padding, where U is the identity
    w[:, :n, :n] = xp.matmul(g, xp.swapaxes(u, -1, -2))
    d = xp.zeros((B, A), dtype=theta.dtype)
    transposed = False  # whether w holds W^T (in the current order) rather than W
    for s in range(bd.S - 1, -1, -1):
        c = bd.from_stage[s]
        w = w[:, c[:, None], c[None, :]]
        wb = w[:, bd.diag_rows, bd.diag_cols].reshape(B, NB, L, L)
        wb = xp.ascontiguousarray(xp.swapaxes(wb, -1, -2) if transposed else wb)
        _launch.block_vjp(dev, wb, d, cs, bd.block_angle, bd.local_i, bd.local_j, s, cs_bstride)
        if s > 0:
            blk_t = xp.swapaxes(blocks[:, s], -1, -2)
            w = xp.matmul(blk_t, w.reshape(B, NB, L, N)).reshape(B, N, N)  # P^T M
            w = xp.ascontiguousarray(xp.swapaxes(w, -1, -2))  # (P^T M)^T = M^T P
            w = xp.matmul(blk_t, w.reshape(B, NB, L, N)).reshape(B, N, N)  # P^T M^T P
            transposed = not transposed
    return _sum_to(d.reshape(batch + (A,)), theta.shape)


# --------------------------------------------------------------------------- materialized

def _eye(xp, n, dtype):
    return xp.eye(n, dtype=dtype)


def _impl_matrix(dev, theta, schedule, path=None):
    """``U(theta)`` (..., n, n): blocked stages for team schedules, else the rounds applied to I."""
    _check_path(path, MATRIX_PATHS)
    if _use_blocked("matrix", schedule, path):
        return _impl_matrix_blocked(dev, theta, schedule)
    return _impl_apply(dev, theta, _eye(dev.xp, schedule.n, theta.dtype), schedule, False, path)


def _impl_matrix_vjp(dev, theta, cotangent, schedule, output=None, path=None):
    r"""``d_theta`` of ``U = matrix(theta)`` by the reduction-free formula (``docs/conventions.md``).

    Team schedules: by stages (:func:`_impl_matrix_vjp_blocked`).  Otherwise
    :math:`W = \bar G U^T` and, per round (last first; all rounds in one launch with W in shared
    memory when it fits, unless ``path="rounds"``; else one launch per round), reads
    :math:`W[j,i] - W[i,j]` for the round's pairs and updates :math:`W \leftarrow B_r^T W B_r`;
    every angle's cotangent is one difference of two entries: no sums, no atomics.
    ``output`` may pass ``U = matrix(theta)`` (..., n, n) to skip recomputing it."""
    _check_path(path, MATRIX_PATHS)
    if _use_blocked("matrix_vjp", schedule, path):
        return _impl_matrix_vjp_blocked(dev, theta, cotangent, schedule, output)
    xp = dev.xp
    batch = tuple(np.broadcast_shapes(theta.shape[:-1], cotangent.shape[:-2]))
    rd = rounds_data(dev, schedule)
    sl = slot_data(dev, schedule)
    n, A = schedule.n, schedule.num_angles
    B = prod(batch)
    cs, cs_bstride = _cos_sin(dev, theta, batch, rd.angle_index)
    if output is None:
        u = work(xp, _eye(xp, n, theta.dtype), batch, theta.dtype)
        _sweep(dev, u, cs, cs_bstride, rd, False, path)
    else:
        u = xp.broadcast_to(output, batch + (n, n)).reshape(B, n, n)
    g = xp.broadcast_to(cotangent, batch + (n, n)).reshape(B, n, n)
    w = xp.ascontiguousarray(xp.matmul(g, xp.swapaxes(u, -1, -2)))
    d_round = xp.empty((B, A), dtype=theta.dtype)
    smem = int(getattr(dev, "max_shared_memory", 48 * 1024))
    if path != "rounds" and n * n * w.itemsize <= smem:
        # W fits in shared memory: the whole sweep in one launch, one thread block per matrix.
        _launch.matrix_vjp_fused(dev, w, d_round, cs, sl.slot_i, sl.slot_j, sl.slot_q, sl.slot_offsets,
                                 cs_bstride)
    else:
        off = sl.offsets
        for r in range(off.size - 2, -1, -1):
            _launch.matrix_vjp_round(dev, w, d_round, cs, sl.slot_i, sl.slot_j, sl.slot_q, int(off[r]),
                                     int(off[r + 1] - off[r]), cs_bstride)
    d = xp.empty((B, A), dtype=theta.dtype)
    d[:, rd.angle_index] = d_round
    return _sum_to(d.reshape(batch + (A,)), theta.shape)


def _impl_matrix_jvp(dev, theta, theta_tangent, schedule, path=None):
    """Tangent ``dU`` of ``U = matrix(theta)``: the forward-mode sweep on the identity."""
    _check_path(path, APPLY_PATHS)
    return _impl_apply_jvp(dev, theta, _eye(dev.xp, schedule.n, theta.dtype), theta_tangent, None,
                           schedule, False, path)
