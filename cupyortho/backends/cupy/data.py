"""Per-device data of the CuPy backend: schedule tables uploaded once, and array helpers shared by
:mod:`.so` and :mod:`.un`.

Every table is built from the public :class:`~cupyortho.schedule.Schedule` (its round-major arrays,
its rounds, and for team schedules the one team-block plan, :func:`cupyortho.backends.team_plan.kernel_tables`)
and cached per (device, schedule key): the hot path never rebuilds or re-uploads them.
"""

from __future__ import annotations

import math
import threading
from types import SimpleNamespace

import numpy as np

from .. import team_plan

__all__ = ["rounds_data", "slot_data", "block_data", "work", "angles_per_batch", "prod"]

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
        tab = team_plan.kernel_tables(schedule)
        return SimpleNamespace(
            t=tab.t, L=tab.L, N=tab.N, S=tab.S, NB=tab.NB,
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

