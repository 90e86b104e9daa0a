r"""CuPy backend: the NumPy backend's operations as CUDA kernels (RawKernels) and cuBLAS GEMMs.

Design rule: every public function is a thin call ``_impl_x(get_device(...), ...)``; the ``_impl_*``
functions take a *device object* ``dev`` first (:mod:`._device`) and use only ``dev.xp`` functions
that exist in both NumPy and CuPy and the launchers of :mod:`._launch`.  So the whole algorithm runs
on a GPU with :class:`~._device.CupyDevice`, and on the CPU (numpy arrays, kernels compiled with g++)
with the harness device of ``tests/cudasim``.  Nothing in the hot path copies to the host or
synchronizes; everything runs on CuPy's current stream and on the device of theta (other
arguments on another GPU, such as the identity the public layer creates for ``frame``, are copied
there).  Inputs are never written to: every sweep works on its own copy.

Maths and conventions are the NumPy backend's (:mod:`.numpy_backend`, ``docs/conventions.md``):
a round rotates rows ``x_i <- c x_i - s x_j``, ``x_j <- s x_i + c x_j``; ``U = B_{R-1} ... B_0``.

Paths (chosen per call, or forced with ``path=`` in the ``_impl_*`` functions):

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
    Team schedules (DESIGN.md section 3), for :func:`matrix` and :func:`matrix_vjp`: each stage is
    block-diagonal with ``2t x 2t`` blocks built from the angles by a kernel (one thread block per
    block), applied by batched GEMMs (``xp.matmul``); the VJP maps block cotangents to angle
    cotangents with the reduction-free formula inside each block.
``"dense"``
    Team schedules, :func:`apply` and its VJP when ``x`` has at least ``n`` columns: U by the
    blocked path, then GEMMs (``y = U x``; the VJP feeds :math:`\bar G x^T` to the blocked
    materialized VJP and returns :math:`U^T \bar G`).

cos and sin of the angles are computed once per call (kernel ``cos_sin``).
"""

from __future__ import annotations

import contextlib
import math
import threading
from types import SimpleNamespace

import numpy as np

from ._common import sum_to as _sum_to
from .. import schedule as _sched
from . import _launch
from ._device import get_device

__all__ = [
    "matrix",
    "apply",
    "matrix_vjp",
    "apply_vjp",
    "matrix_jvp",
    "apply_jvp",
]

name = "cupy"
PATHS = ("fused", "rounds", "blocked", "dense")
_MATRIX_PATHS = ("fused", "rounds", "blocked")

#: Upper bound on the scratch of per-tile partial angle sums of the fused backward, in bytes (it is
#: also allowed 8 gradients' worth); beyond it the tiles are widened, or the per-round path is used.
PARTIAL_BYTES = 256 * 1024 * 1024
#: Force the column-tile width of the fused kernels (None: chosen per call); for tuning and benchmarks.
TILE_WIDTH = None


def __getattr__(attr):
    # ``xp`` is CuPy, imported on first use so that importing this module needs no GPU.
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


# --------------------------------------------------------------------------- per-device data

_cache: dict = {}
_cache_lock = threading.Lock()


def _cached(dev, schedule, what, build):
    """Device arrays derived from a schedule, built once per (device, schedule, what)."""
    key = (getattr(dev, "key", None) or ("object", id(dev)), schedule.key, what)
    value = _cache.get(key)
    if value is None:
        with _cache_lock:
            value = _cache.get(key)
            if value is None:
                value = build()
                # The uploads were enqueued on the current stream; a later call may run on another
                # stream, so wait for them once (not in the hot path: once per device and schedule).
                sync = getattr(dev, "synchronize", None)
                if sync is not None:
                    sync()
                _cache[key] = value
    return value


def _to_dev(dev, a):
    return dev.xp.asarray(np.ascontiguousarray(a, dtype=np.int32))


def _rounds_data(dev, schedule):
    """Round-major pairs, offsets and angle indices as int32 device arrays (plus host offsets)."""

    def build():
        return SimpleNamespace(
            pair_i=_to_dev(dev, schedule.pair_i),
            pair_j=_to_dev(dev, schedule.pair_j),
            angle_index=_to_dev(dev, schedule.angle_index),
            round_offsets=_to_dev(dev, schedule.round_offsets),
            offsets=np.asarray(schedule.round_offsets, dtype=np.int64),
            identity=_to_dev(dev, np.arange(schedule.num_angles)),
        )

    return _cached(dev, schedule, "rounds", build)


def _slot_data(dev, schedule):
    """Per round, its pairs ``(i, j, q)`` and its untouched coordinates ``(i, -1, -1)`` ("slots"),
    for the two-sided sweep of the materialized VJP."""

    def build():
        si, sj, sq, offsets = [], [], [], [0]
        q = 0
        for rd in schedule.rounds:
            P = rd.i.size
            free = np.setdiff1d(np.arange(schedule.n), np.concatenate([rd.i, rd.j]))
            si.append(np.concatenate([rd.i, free]))
            sj.append(np.concatenate([rd.j, -np.ones(free.size, dtype=np.int64)]))
            sq.append(np.concatenate([np.arange(q, q + P), -np.ones(free.size, dtype=np.int64)]))
            q += P
            offsets.append(offsets[-1] + P + free.size)
        return SimpleNamespace(
            slot_i=_to_dev(dev, np.concatenate(si)),
            slot_j=_to_dev(dev, np.concatenate(sj)),
            slot_q=_to_dev(dev, np.concatenate(sq)),
            offsets=np.asarray(offsets, dtype=np.int64),
            slot_offsets=_to_dev(dev, offsets),
        )

    return _cached(dev, schedule, "slots", build)


def team_block_tables(schedule):
    """Host tables of the blocked form of a team schedule (see ``kernels/blocks.cu``).

    Derived from the schedule's own rounds (before empty rounds are dropped), using only its phase
    structure: the first ``t - 1`` rounds pair coordinates inside teams; then each team round is ``t``
    rounds pairing, in every meeting ``a < b`` of that team round, team ``a`` with team ``b``.  Stage 0
    takes the teams ``2c, 2c + 1`` as one block; stage ``s >= 1`` is team round ``s - 1``, one block
    per meeting.  Returns a namespace with ``t``, ``L = 2t``, ``N`` (padded size), ``S`` stages, ``NB``
    blocks per stage, ``coords`` (S, NB, L) padded coordinates of each block's local indices
    (increasing), and (S, NB, t, t) tables indexed by (stage, block, local round, pair):
    ``local_i < local_j`` local pairs and ``block_angle``, the public angle index or -1 where the
    rotation is absent (padding, Stiefel restriction, the filler round of stage 0).
    """
    from ..errors import ScheduleError

    n, m, t = schedule.n, schedule.m, schedule.team_size
    T, meetings = _sched._team_structure(n, t)
    N, L, NB, S = T * t, 2 * t, T // 2, T
    coords = np.zeros((S, NB, L), dtype=np.int64)
    coords[0] = np.arange(N).reshape(NB, L)
    for s, team_round in enumerate(meetings, start=1):
        for nb, (a, b) in enumerate(team_round):
            coords[s, nb] = np.concatenate([a * t + np.arange(t), b * t + np.arange(t)])
    block_of = np.zeros((S, N), dtype=np.int64)  # block of each coordinate, per stage
    local = np.zeros((S, N), dtype=np.int64)  # its local index in that block
    for s in range(S):
        block_of[s, coords[s]] = np.arange(NB)[:, None]
        local[s, coords[s]] = np.arange(L)[None, :]
    local_i = np.zeros((S, NB, t, t), dtype=np.int64)
    local_j = np.zeros((S, NB, t, t), dtype=np.int64)
    angle = -np.ones((S, NB, t, t), dtype=np.int64)
    # Filler round of stage 0 (it has t - 1 rounds): identity rotations on any perfect matching.
    local_i[0, :, t - 1] = np.arange(t)
    local_j[0, :, t - 1] = np.arange(t) + t
    rounds = [(np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64))
              for i, j in _sched._team_rounds(n, t)]
    if len(rounds) != N - 1:
        raise ScheduleError(f"team schedule n={n}, t={t}: expected {N - 1} rounds before dropping, "
                            f"got {len(rounds)}")
    for r, (i, j) in enumerate(rounds):
        lo, hi = np.minimum(i, j), np.maximum(i, j)
        s, l = (0, r) if r < t - 1 else (1 + (r - t + 1) // t, (r - t + 1) % t)
        blk = block_of[s, lo]
        counts = np.bincount(blk, minlength=NB)
        if lo.size != N // 2 or (blk != block_of[s, hi]).any() or (counts != t).any():
            raise ScheduleError(
                f"team schedule n={n}, t={t}: round {r} is not a perfect matching inside the "
                f"blocks of stage {s}; the blocked path does not know this schedule's structure")
        order = np.argsort(blk, kind="stable")
        p = np.arange(lo.size) - np.repeat(np.arange(NB) * t, t)
        b_sorted, lo_s, hi_s = blk[order], lo[order], hi[order]
        local_i[s, b_sorted, l, p] = local[s, lo_s]
        local_j[s, b_sorted, l, p] = local[s, hi_s]
        valid = hi_s < n
        if m is not None:
            valid &= lo_s < m
        angle[s, b_sorted, l, p] = np.where(valid, _sched._pair_index(lo_s, np.where(valid, hi_s, lo_s + 1), n), -1)
    return SimpleNamespace(t=t, L=L, N=N, S=S, NB=NB, coords=coords, local_i=local_i, local_j=local_j,
                           block_angle=angle)


def _stage_gathers(tab, forward):
    """Index arrays moving rows from one stage's order to the next (see ``_block_data``)."""
    orders = [tab.coords[s].ravel() for s in range(tab.S)]
    natural = np.arange(tab.N)
    out = []
    for s in range(tab.S):
        prev = (orders[s - 1] if s > 0 else natural) if forward else \
            (orders[s + 1] if s + 1 < tab.S else natural)
        position = np.argsort(prev)  # position[coordinate] in the previous order
        out.append(position[orders[s]].astype(np.int64))
    return out


def _block_data(dev, schedule):
    def build():
        tab = team_block_tables(schedule)
        return SimpleNamespace(
            t=tab.t, L=tab.L, N=tab.N, S=tab.S, NB=tab.NB,
            coords=[dev.xp.asarray(c.astype(np.int64)) for c in tab.coords],
            # Stage s works on rows (and columns) in the order coords[s].ravel(); to_stage[s] gathers
            # that order from the order of stage s - 1 (forward), from_stage[s] from the order of
            # stage s + 1 (backward; the natural order after the last stage).
            to_stage=[dev.xp.asarray(g) for g in _stage_gathers(tab, forward=True)],
            from_stage=[dev.xp.asarray(g) for g in _stage_gathers(tab, forward=False)],
            to_natural=dev.xp.asarray(np.argsort(tab.coords[-1].ravel())),
            diag_rows=dev.xp.asarray(np.arange(tab.N, dtype=np.int64)[:, None]),
            diag_cols=dev.xp.asarray((np.arange(tab.N) // tab.L * tab.L)[:, None] + np.arange(tab.L)),
            local_i=_to_dev(dev, tab.local_i),
            local_j=_to_dev(dev, tab.local_j),
            block_angle=_to_dev(dev, tab.block_angle),
        )

    return _cached(dev, schedule, "blocks", build)


# --------------------------------------------------------------------------- helpers

def _prod(shape) -> int:
    return int(math.prod(shape))


def _work(xp, a, batch, dtype):
    """A private C-contiguous copy of ``a`` broadcast to ``batch + a.shape[-2:]``, as (B, r, c)."""
    shape = tuple(batch) + tuple(a.shape[-2:])
    w = xp.array(xp.broadcast_to(a, shape), dtype=dtype, order="C", copy=True)
    return w.reshape((_prod(batch),) + tuple(a.shape[-2:]))


def _angles_per_batch(xp, theta, batch):
    """theta (..., A) as a C-contiguous (Bt, A) array and its batch stride in rows (0 or 1)."""
    A = theta.shape[-1]
    if _prod(theta.shape[:-1]) == 1:
        return xp.ascontiguousarray(theta.reshape(1, A)), 0
    t = xp.ascontiguousarray(xp.broadcast_to(theta, tuple(batch) + (A,)))
    return t.reshape(_prod(batch), A), 1


def _cos_sin(dev, theta, batch, index):
    """cos/sin of theta (..., A) at ``index`` (round-major or identity), once per call.

    Returns ``(cs, cs_bstride)``: cs (Bt, A, 2), and the element stride between batch entries (0 when
    one angle vector serves the whole batch)."""
    xp = dev.xp
    t, step = _angles_per_batch(xp, theta, batch)
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
            raise ValueError(f"path='fused' needs {buffers * n * itemsize} bytes of shared memory, "
                             f"the device offers {smem}")
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
        raise ValueError(f"path must be one of {allowed} or None, got {path!r}")


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
    _check_path(path, ("fused", "rounds", "dense"))
    xp = dev.xp
    if _use_dense(schedule, x, path):
        y = _dense_apply(dev, theta, x, schedule, bool(transpose))
        batch = np.broadcast_shapes(theta.shape[:-1], x.shape[:-2])
        return xp.ascontiguousarray(xp.broadcast_to(y, tuple(batch) + tuple(x.shape[-2:])))
    batch = np.broadcast_shapes(theta.shape[:-1], x.shape[:-2])
    rd = _rounds_data(dev, schedule)
    cs, cs_bstride = _cos_sin(dev, theta, batch, rd.angle_index)
    y = _work(xp, x, batch, x.dtype)
    _sweep(dev, y, cs, cs_bstride, rd, bool(transpose), path)
    return y.reshape(tuple(batch) + tuple(x.shape[-2:]))


def _impl_apply_vjp(dev, theta, x, cotangent, schedule, transpose=False, output=None, path=None):
    r"""Cotangents ``(d_theta, d_x)`` of ``y = apply(theta, x)`` (see numpy_backend.apply_vjp).

    Undoes each round on y (recovering its input), rotates the cotangent by the round's transpose and
    sums :math:`x_i \bar g_j - x_j \bar g_i` over the columns, deterministically."""
    _check_path(path, ("fused", "rounds", "dense"))
    xp = dev.xp
    transpose = bool(transpose)
    if _use_dense(schedule, x, path):
        return _impl_apply_vjp_dense(dev, theta, x, cotangent, schedule, transpose)
    batch = tuple(np.broadcast_shapes(theta.shape[:-1], x.shape[:-2], cotangent.shape[:-2]))
    rd = _rounds_data(dev, schedule)
    cs, cs_bstride = _cos_sin(dev, theta, batch, rd.angle_index)
    n, k = x.shape[-2:]
    B = _prod(batch)
    if output is None:
        y = _work(xp, x, batch, x.dtype)
        _sweep(dev, y, cs, cs_bstride, rd, transpose, path)
    else:
        y = _work(xp, output, batch, x.dtype)
    g = _work(xp, cotangent, batch, x.dtype)
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
    _check_path(path, ("fused", "rounds"))
    xp = dev.xp
    transpose = bool(transpose)
    shapes = [theta.shape[:-1], x.shape[:-2], theta_tangent.shape[:-1]]
    if x_tangent is not None:
        shapes.append(x_tangent.shape[:-2])
    batch = tuple(np.broadcast_shapes(*shapes))
    rd = _rounds_data(dev, schedule)
    cs, cs_bstride = _cos_sin(dev, theta, batch, rd.angle_index)
    n, k = x.shape[-2:]
    B = _prod(batch)
    y = _work(xp, x, batch, x.dtype)
    if x_tangent is None:
        dy = xp.zeros((B, n, k), dtype=x.dtype)
    else:
        dy = _work(xp, x_tangent, batch, x.dtype)
    tt, step = _angles_per_batch(xp, theta_tangent, batch)
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

def _use_blocked(schedule, path):
    if path == "blocked":
        if schedule.kind != "team":
            raise ValueError(f"path='blocked' needs a team schedule, got {schedule!r}")
        return True
    return path is None and schedule.kind == "team"


def _blocked_blocks(dev, theta, batch, schedule):
    """The stage blocks (B, S, NB, L, L) of theta broadcast to ``batch``, and their cos/sin."""
    xp = dev.xp
    bd = _block_data(dev, schedule)
    rd = _rounds_data(dev, schedule)
    cs, cs_bstride = _cos_sin(dev, theta, batch, rd.identity)
    blocks = xp.empty((_prod(batch), bd.S, bd.NB, bd.L, bd.L), dtype=theta.dtype)
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
    B = _prod(batch)
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


def _use_dense(schedule, x, path):
    """Apply through U (blocked) and one GEMM: team schedules with at least n columns (DESIGN.md
    section 3: forming U costs about two GEMMs, the round sweeps cost O(n^2 k) shared-memory work)."""
    if path == "dense":
        if schedule.kind != "team":
            raise ValueError(f"path='dense' needs a team schedule, got {schedule!r}")
        return True
    return path is None and schedule.kind == "team" and schedule.m is None and x.shape[-1] >= schedule.n


def _dense_apply(dev, theta, x, schedule, transpose):
    xp = dev.xp
    batch = tuple(theta.shape[:-1])
    n = schedule.n
    u = _blocked_forward(dev, theta, batch, schedule)[0].reshape(batch + (n, n))
    return xp.matmul(xp.swapaxes(u, -1, -2) if transpose else u, x)


def _impl_apply_vjp_dense(dev, theta, x, cotangent, schedule, transpose):
    r"""VJP of ``y = U x`` through U: :math:`\bar U = \bar G x^T` (or :math:`x \bar G^T` for
    ``y = U^T x``) fed to the blocked materialized VJP, and :math:`d_x = U^T \bar G` (or
    :math:`U \bar G`), all GEMMs."""
    xp = dev.xp
    batch = tuple(theta.shape[:-1])
    n = schedule.n
    u, blocked = _blocked_forward(dev, theta, batch, schedule)
    u = u.reshape(batch + (n, n))
    if transpose:
        u_bar = xp.matmul(x, xp.swapaxes(cotangent, -1, -2))
        d_x = xp.matmul(u, cotangent)
    else:
        u_bar = xp.matmul(cotangent, xp.swapaxes(x, -1, -2))
        d_x = xp.matmul(xp.swapaxes(u, -1, -2), cotangent)
    if tuple(u_bar.shape[:-2]) == batch:
        d_theta = _impl_matrix_vjp_blocked(dev, theta, u_bar, schedule, u, blocked)
    else:  # x or the cotangent carry batch axes theta does not
        d_theta = _impl_matrix_vjp_blocked(dev, theta, u_bar, schedule)
    return d_theta, _sum_to(d_x, x.shape)


# --------------------------------------------------------------------------- materialized

def _eye(xp, n, dtype):
    return xp.eye(n, dtype=dtype)


def _impl_matrix(dev, theta, schedule, path=None):
    """``U(theta)`` (..., n, n): blocked stages for team schedules, else the rounds applied to I."""
    _check_path(path, _MATRIX_PATHS)
    if _use_blocked(schedule, path):
        return _impl_matrix_blocked(dev, theta, schedule)
    return _impl_apply(dev, theta, _eye(dev.xp, schedule.n, theta.dtype), schedule, False, path)


def _impl_matrix_vjp(dev, theta, cotangent, schedule, path=None, output=None):
    r"""``d_theta`` of ``U = matrix(theta)`` by the reduction-free formula (DESIGN.md section 2).

    Team schedules: by stages (:func:`_impl_matrix_vjp_blocked`).  Otherwise
    :math:`W = \bar G U^T` and, per round (last first; all rounds in one launch with W in shared
    memory when it fits, unless ``path="rounds"``; else one launch per round), reads
    :math:`W[j,i] - W[i,j]` for the round's pairs and updates :math:`W \leftarrow B_r^T W B_r`;
    every angle's cotangent is one difference of two entries: no sums, no atomics.
    ``output`` may pass ``U = matrix(theta)`` (..., n, n) to skip recomputing it."""
    _check_path(path, _MATRIX_PATHS)
    if _use_blocked(schedule, path):
        return _impl_matrix_vjp_blocked(dev, theta, cotangent, schedule, output)
    xp = dev.xp
    batch = tuple(np.broadcast_shapes(theta.shape[:-1], cotangent.shape[:-2]))
    rd = _rounds_data(dev, schedule)
    sl = _slot_data(dev, schedule)
    n, A = schedule.n, schedule.num_angles
    B = _prod(batch)
    cs, cs_bstride = _cos_sin(dev, theta, batch, rd.angle_index)
    if output is None:
        u = _work(xp, _eye(xp, n, theta.dtype), batch, theta.dtype)
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
    _check_path(path, ("fused", "rounds"))
    return _impl_apply_jvp(dev, theta, _eye(dev.xp, schedule.n, theta.dtype), theta_tangent, None,
                           schedule, False, path)


# --------------------------------------------------------------------------- public (thin calls)

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


def apply(theta, x, schedule, transpose=False):
    """``U(theta) @ x`` (or ``U(theta).T @ x``): theta (..., A), x (..., n, k) -> (..., n, k)."""
    dev, ctx = _on(theta)
    with ctx:
        return _impl_apply(dev, theta, _here(dev, x), schedule, transpose)


def matrix(theta, schedule):
    """``U(theta)`` of shape (..., n, n)."""
    dev, ctx = _on(theta)
    with ctx:
        return _impl_matrix(dev, theta, schedule)


def apply_vjp(theta, x, cotangent, schedule, transpose=False, output=None):
    """``(d_theta, d_x)`` of ``y = apply(theta, x)`` for ``cotangent = dL/dy``, shaped like theta, x."""
    dev, ctx = _on(theta)
    with ctx:
        return _impl_apply_vjp(dev, theta, _here(dev, x), _here(dev, cotangent), schedule, transpose,
                               _here(dev, output))


def matrix_vjp(theta, cotangent, schedule, output=None):
    """``d_theta`` of ``U = matrix(theta)`` for ``cotangent = dL/dU``, shaped like theta.
    ``output`` may pass ``U`` itself (from :func:`matrix`) to skip recomputing it."""
    dev, ctx = _on(theta)
    with ctx:
        return _impl_matrix_vjp(dev, theta, _here(dev, cotangent), schedule, output=_here(dev, output))


def apply_jvp(theta, x, theta_tangent, x_tangent, schedule, transpose=False):
    """Tangent of ``y = apply(theta, x)`` along ``(theta_tangent, x_tangent)`` (x_tangent may be None)."""
    dev, ctx = _on(theta)
    with ctx:
        return _impl_apply_jvp(dev, theta, _here(dev, x), _here(dev, theta_tangent), _here(dev, x_tangent),
                               schedule, transpose)


def matrix_jvp(theta, theta_tangent, schedule):
    """Tangent ``dU`` of ``U = matrix(theta)`` along ``theta_tangent``."""
    dev, ctx = _on(theta)
    with ctx:
        return _impl_matrix_jvp(dev, theta, _here(dev, theta_tangent), schedule)
