"""Per-device data of the CuPy backend: schedule tables uploaded once, and array helpers shared by
:mod:`.so` and :mod:`.un`.

Every table is built from the public :class:`~cupyortho.schedule.Schedule` (its round-major arrays,
its rounds, and for team schedules the one team-block plan) and cached per (device, schedule key):
the hot path never rebuilds or re-uploads them.
"""

from __future__ import annotations

import math
import threading
from types import SimpleNamespace

import numpy as np

from ... import schedule as _sched
from ...errors import ScheduleError

__all__ = ["rounds_data", "slot_data", "block_data", "team_block_tables", "work", "angles_per_batch", "prod"]

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


def rounds_data(dev, schedule):
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


def slot_data(dev, schedule):
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
    """Index arrays moving rows from one stage's order to the next (see ``block_data``)."""
    orders = [tab.coords[s].ravel() for s in range(tab.S)]
    natural = np.arange(tab.N)
    out = []
    for s in range(tab.S):
        prev = (orders[s - 1] if s > 0 else natural) if forward else \
            (orders[s + 1] if s + 1 < tab.S else natural)
        position = np.argsort(prev)  # position[coordinate] in the previous order
        out.append(position[orders[s]].astype(np.int64))
    return out


def block_data(dev, schedule):
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


# --------------------------------------------------------------------------- array helpers

def prod(shape) -> int:
    """The number of entries of ``shape`` as a Python int."""
    return int(math.prod(shape))


def work(xp, a, batch, dtype):
    """A private C-contiguous copy of ``a`` broadcast to ``batch + a.shape[-2:]``, as (B, r, c)."""
    shape = tuple(batch) + tuple(a.shape[-2:])
    w = xp.array(xp.broadcast_to(a, shape), dtype=dtype, order="C", copy=True)
    return w.reshape((prod(batch),) + tuple(a.shape[-2:]))


def angles_per_batch(xp, theta, batch):
    """theta (..., A) as a C-contiguous (Bt, A) array and its batch stride in rows (0 or 1)."""
    A = theta.shape[-1]
    if prod(theta.shape[:-1]) == 1:
        return xp.ascontiguousarray(theta.reshape(1, A)), 0
    t = xp.ascontiguousarray(xp.broadcast_to(theta, tuple(batch) + (A,)))
    return t.reshape(prod(batch), A), 1

