r"""The one team-block plan: a team schedule unrolled into block-diagonal stages, for every backend.

Design rule: the blocked structure of a team schedule is planned once, here, from the schedule's
public description (:func:`cupyortho.schedule.team_stages`, :func:`~cupyortho.schedule.team_local_rounds`,
:func:`~cupyortho.schedule.pair_index`), and cached on the :class:`~cupyortho.schedule.Schedule`
object (a weak cache keyed by the schedule, so a plan lives exactly as long as its schedule).
Backends read plans; they never rebuild pairings.  Two views are offered:

* :func:`plan` ``(schedule, u)`` -> :class:`TeamPlan`: stages of granularity ``u`` (a power of two
  ``<= t``), with blocks in the bit-reversed *storage order* the block recursion of
  :mod:`cupyortho.backends.blocked` builds them in (the CPU GEMM path).
* :func:`kernel_tables` ``(schedule)`` -> :class:`KernelTables`: the same schedule at ``u = t`` with
  the first stage taken two teams at a time, every block described round by round in local indices
  (what kernels that build a block by applying its rounds read, ``kernels/blocks.cu``).

Maths: docs/conventions.md (angle layout, rounds) and :func:`cupyortho.schedule.team_schedule` (the
recursive team schedule and why every ``u`` gives the same product of rotations).
"""

from __future__ import annotations

import functools
import weakref

import numpy as np

from .. import schedule as _sched

__all__ = ["TeamPlan", "KernelTables", "Gather", "plan", "kernel_tables"]

_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _cached(schedule, key, build):
    """``build()`` cached on ``schedule`` under ``key`` (the schedule holds no attribute for it, so a
    weak dictionary keyed by the schedule object stands in)."""
    slot = _CACHE.get(schedule)
    if slot is None:
        slot = {}
        _CACHE[schedule] = slot
    if key not in slot:
        slot[key] = build()
    return slot[key]


def _check_team(schedule):
    from ..errors import ScheduleError

    if not isinstance(schedule, _sched.Schedule) or schedule.kind != "team":
        raise ScheduleError(f"a team-block plan needs a team Schedule, got {schedule!r}")


def plan(schedule, u):
    """The cached :class:`TeamPlan` of a team ``schedule`` at granularity ``u``.

    Args:
        schedule (Schedule): a team schedule (any ``m`` restriction).
        u (int): block half-size, a power of two ``<= schedule.team_size``.

    Raises:
        ScheduleError: ``schedule`` is not a team schedule.
        SizeError: ``u`` is not a power of two in ``[1, t]``.
    """
    _check_team(schedule)
    from ..errors import SizeError

    u = int(u)
    t = schedule.team_size
    if u < 1 or u & (u - 1) or u > t:
        raise SizeError(f"u must be a power of two in [1, team_size = {t}], got {u}")
    return _cached(schedule, ("plan", u), lambda: TeamPlan(schedule, u))


def kernel_tables(schedule):
    """The cached :class:`KernelTables` of a team ``schedule`` (round-by-round block tables).

    Raises:
        ScheduleError: ``schedule`` is not a team schedule.
    """
    _check_team(schedule)
    return _cached(schedule, "kernel", lambda: KernelTables(schedule))


def _frozen(a, dtype=np.int64):
    a = np.ascontiguousarray(a, dtype=dtype)
    a.flags.writeable = False
    return a


# --------------------------------------------------------------------------- the GEMM-path plan

class TeamPlan:
    r"""Index data of a team schedule unrolled into block stages of granularity ``u``.

    ``U = S_{K-1} \cdots S_1 S_0``: ``S_0`` is block diagonal with round-robin blocks ``RR(v)``,
    ``v = min(t, 2u)``, on consecutive coordinates (absent when ``t = 1``); every later stage is
    block diagonal, after a permutation of the coordinates, with ``2u x 2u`` meeting blocks of
    ``u`` players against ``u``.  Slot ``A`` (one past the last angle) stands for a zero angle: a
    pair touching a padding coordinate ``>= n``, or dropped by the Stiefel restriction ``i >= m``.

    Attributes:
        n, m, t, u, N (int): sizes; ``m`` None for all of SO(n); ``N`` the padded size.
        A (int): number of angles (``len(theta)``).
        levels (int): ``log2 u``, the depth of the meeting-block recursion.
        rr_v (int): block size of the round-robin stage ``S_0``; 0 when there is none (``t = 1``).
        rr_slots (ndarray ``(N/v, v(v-1)/2)`` int32/int64 or None): angle slot of every leaf of
            every ``RR(v)`` block, in the leaf order of ``blocked.build_rr``.
        num_meet (int): number ``K'`` of meeting stages.
        meet_rows (ndarray ``(K', N/(2u), 2u)`` int64): coordinates of every block of every meeting
            stage, in the blocks' storage order ``[a[rev], b[rev]]`` (``rev`` the bit reversal of
            ``0..u-1``), so also the order of the rows after the stage.
        meet_slots (ndarray ``(u*u, K' N/(2u))``): angle slot of every leaf of every meeting block
            (stage-major), in the leaf layout of ``blocked.build_meet``.
        meet_teams (ndarray ``(K', T/2, 2)`` int64 or None): when ``u = t``, the teams ``(a, b)``
            of every meeting block (the block's rows are ``a*t + q`` and ``b*t + q``); else None.
        orders (list of ``N``-arrays): the coordinate order of the rows of each stage's blocks, in
            application order (``S_0`` first).
        fwd, rev (tuple ``(list, final)``): :class:`Gather` objects (None: nothing to move) taking
            rows from one stage's order to the next one's, for a forward sweep (``S_0`` first) and a
            reverse one, and ``final``, the gather back to the natural order.
        num_stages (int): ``len(orders)``.
    Every array is read-only.
    """

    def __init__(self, sched, u):
        n, t, m = sched.n, sched.team_size, sched.m
        N, rr, stages = _sched.team_stages(n, t, u)
        self.n, self.m, self.t, self.u, self.N = n, m, t, u, N
        self.A = sched.num_angles
        self.rr_v = 0 if rr is None else rr[0]
        self.rr_slots = None
        orders = []
        if rr is not None:
            v, groups = rr
            i, j = _rr_leaves(groups)
            self.rr_slots = self._slots(i, j)
            orders.append(groups.reshape(-1))
        if stages:
            a = np.stack([s[0] for s in stages])
            b = np.stack([s[1] for s in stages])
            i, j = _meet_leaves(a, b)
            slots = self._slots(i, j)[..., _digit_rev(int(u).bit_length() - 1)]
            self.meet_slots = np.ascontiguousarray(slots.reshape(-1, u * u).T)  # (u*u, K*B)
            self.num_meet = a.shape[0]
            order, _ = _storage(u)
            self.meet_rows = np.ascontiguousarray(np.concatenate([a, b], axis=-1)[..., order])
            orders += list(self.meet_rows.reshape(len(stages), -1))
        else:
            self.meet_slots = np.zeros((u * u, 0), dtype=np.int64)
            self.num_meet = 0
            self.meet_rows = np.zeros((0, N // (2 * u), 2 * u), dtype=np.int64)
        self.meet_teams = None
        if u == t and self.num_meet:
            self.meet_teams = _frozen(self.meet_rows[..., [0, u]] // t)
        self.orders = orders
        self.levels = int(u).bit_length() - 1
        self.fwd = _gathers(orders, N)
        self.rev = _gathers(orders[::-1], N)
        for arr in [self.rr_slots, self.meet_slots, self.meet_rows] + orders:
            if arr is not None:
                arr.flags.writeable = False

    def _slots(self, i, j):
        n, m = self.n, self.m
        valid = j < n
        if m is not None:
            valid &= i < m
        idx = _sched._pair_index(i, np.where(valid, j, i + 1), n)
        return np.where(valid, idx, self.A).astype(np.int32 if self.A < 2**31 - 1 else np.int64)

    @property
    def num_stages(self):
        return len(self.orders)


class Gather:
    """A permutation of ``N`` rows, applied as a permutation of contiguous chunks when it is one
    (stage orders move whole teams, so most gathers copy runs of ``c`` rows, not single rows).

    Attributes: ``idx`` (the row permutation), ``c`` (chunk length), ``chunks`` (``idx[::c] // c``).
    """

    __slots__ = ("idx", "c", "chunks")

    def __init__(self, idx):
        idx = np.asarray(idx, dtype=np.int64)
        N = idx.size
        c = 1
        while N % (2 * c) == 0:
            cc = 2 * c
            runs = idx.reshape(-1, cc)
            if not (np.all(runs[:, 0] % cc == 0) and np.all(runs - runs[:, :1] == np.arange(cc))):
                break
            c = cc
        self.idx, self.c, self.chunks = _frozen(idx), c, _frozen(idx[::c] // c)

    def __call__(self, a, axis=-2):
        """``np.take(a, idx, axis)``."""
        if self.c == 1:
            return np.take(a, self.idx, axis=axis)
        axis = axis % a.ndim
        shape = a.shape[:axis] + (a.shape[axis] // self.c, self.c) + a.shape[axis + 1:]
        return np.take(a.reshape(shape), self.chunks, axis=axis).reshape(a.shape)


def _gather(idx, N):
    return None if np.array_equal(idx, np.arange(N)) else Gather(idx)


def _gathers(orders, N):
    """For a sequence of row orders: the gather taking rows in order k-1 (natural before the first)
    to order k (None: nothing to do), and the final gather back to natural order."""
    out = []
    pos = np.arange(N)
    natural = True
    for order in orders:
        out.append(_gather(pos[order], N))
        pos = np.empty(N, dtype=np.int64)
        pos[order] = np.arange(N)
        natural = False
    final = None if natural else _gather(pos, N)
    return out, final


def _meet_leaves(a, b):
    """Pairs ``(i, j)`` of the leaves of meeting blocks ``(a, b)`` (``(..., u)``), recursion order
    (children X1, X2, Y1, Y2; the top-level split varies slowest).  Returns arrays ``(..., u*u)``."""
    u = a.shape[-1]
    if u == 1:
        return a, b
    ae, ao, be, bo = a[..., 0::2], a[..., 1::2], b[..., 0::2], b[..., 1::2]
    a4 = np.stack([ae, ao, ae, ao], axis=-2)
    b4 = np.stack([be, bo, bo, np.roll(be, -1, axis=-1)], axis=-2)
    i, j = _meet_leaves(a4, b4)
    return i.reshape(a.shape[:-1] + (u * u,)), j.reshape(a.shape[:-1] + (u * u,))


def _rr_leaves(c):
    """Leaves of ``RR(v)`` on coordinates ``c`` (``(..., v)``): ``[meeting leaves, RR child 1, RR child 2]``."""
    v = c.shape[-1]
    if v == 1:
        e = np.zeros(c.shape[:-1] + (0,), dtype=np.int64)
        return e, e
    w = v // 2
    mi, mj = _meet_leaves(c[..., :w], c[..., w:])
    ci, cj = _rr_leaves(np.stack([c[..., :w], c[..., w:]], axis=-2))
    shape = c.shape[:-1] + (-1,)
    return (np.concatenate([mi, ci.reshape(shape)], axis=-1),
            np.concatenate([mj, cj.reshape(shape)], axis=-1))


@functools.lru_cache(maxsize=None)
def _digit_rev(levels):
    """Leaf permutation from "top digit most significant" to ``blocked.build_meet``'s layout."""
    idx = np.arange(4 ** levels).reshape((4,) * levels) if levels else np.zeros(1, dtype=np.int64)
    return _frozen(np.transpose(idx).reshape(-1)) if levels else _frozen(idx)


@functools.lru_cache(maxsize=None)
def _storage(u):
    """Local storage order of a meeting block of ``u`` against ``u``: ``[rev, u + rev]``, and its inverse."""
    rev = _sched.bit_reversal(u)
    order = np.concatenate([rev, u + rev])
    inv = np.empty_like(order)
    inv[order] = np.arange(2 * u)
    return _frozen(order), _frozen(inv)


# --------------------------------------------------------------------------- round-by-round tables

class KernelTables:
    """Round-by-round tables of the blocked form of a team schedule (``kernels/blocks.cu``).

    Stage 0 takes the teams ``2c, 2c + 1`` as one block of ``L = 2t`` coordinates: both teams' own
    round robins ``RR(t)`` side by side (``t - 1`` local rounds) and a filler round of identity
    rotations; stage ``s >= 1`` is team round ``s - 1`` of the circle round robin of the teams, one
    block per meeting ``a < b``, whose local round ``l`` pairs ``a*t + q`` with
    ``b*t + (q + shifts[l]) mod t`` (:func:`cupyortho.schedule.team_local_rounds`).  Every stage has
    ``t`` local rounds of ``t`` disjoint local pairs covering all ``L`` local coordinates.

    Attributes:
        t, L, N, S, NB (int): team size, block size ``2t``, padded size, number of stages
            (``T``, the number of teams), blocks per stage (``T/2``).
        coords (ndarray ``(S, NB, L)`` int64): padded coordinate of each local index of each block
            (increasing along the last axis), so stage ``s`` works on the rows in the order
            ``coords[s].ravel()``.
        local_i, local_j (ndarray ``(S, NB, t, t)`` int64): indexed by (stage, block, local round,
            pair): the local pair ``local_i < local_j``.
        block_angle (ndarray ``(S, NB, t, t)`` int64): the public angle index of that pair, or -1
            where the rotation is absent (a padding coordinate ``>= n``, the Stiefel restriction
            ``i >= m``, or the filler round of stage 0).
    Every array is read-only.  Applying, for ``s = 0..S-1`` and ``l = 0..t-1``, the rotations of
    local round ``l`` of every block of stage ``s`` is the schedule's product of rotations.
    """

    def __init__(self, sched):
        n, m, t = sched.n, sched.m, sched.team_size
        N, _, stages = _sched.team_stages(n, t, t)
        T = N // t
        L, NB, S = 2 * t, T // 2, T
        rr_i, rr_j, shifts = _sched.team_local_rounds(t)
        coords = np.zeros((S, NB, L), dtype=np.int64)
        coords[0] = np.arange(N).reshape(NB, L)
        li = np.zeros((S, NB, t, t), dtype=np.int64)
        lj = np.zeros((S, NB, t, t), dtype=np.int64)
        # stage 0: RR(t) of the first team on local 0..t-1, of the second on t..2t-1
        h = t // 2
        if t >= 2:
            li[0, :, : t - 1, :h] = rr_i
            lj[0, :, : t - 1, :h] = rr_j
            li[0, :, : t - 1, h:] = rr_i + t
            lj[0, :, : t - 1, h:] = rr_j + t
        li[0, :, t - 1] = np.arange(t)  # filler round
        lj[0, :, t - 1] = np.arange(t) + t
        # meeting stages (u = t: one stage per team round, blocks (a*t + q, b*t + q))
        if len(stages) != S - 1:
            from ..errors import ScheduleError

            raise ScheduleError(f"team schedule n={n}, t={t}: expected {S - 1} meeting stages, got {len(stages)}")
        q = np.arange(t)
        for s, (a, b) in enumerate(stages, start=1):
            coords[s] = np.concatenate([a, b], axis=-1)
            li[s] = q
            lj[s] = t + (q[None, :] + shifts[:, None]) % t
        gi = np.take_along_axis(coords, li.reshape(S, NB, t * t), axis=-1).reshape(li.shape)
        gj = np.take_along_axis(coords, lj.reshape(S, NB, t * t), axis=-1).reshape(lj.shape)
        valid = gj < n
        if m is not None:
            valid &= gi < m
        valid[0, :, t - 1] = False
        angle = np.where(valid, _sched._pair_index(gi, np.where(valid, gj, gi + 1), n), -1)
        self.t, self.L, self.N, self.S, self.NB = t, L, N, S, NB
        self.coords = _frozen(coords)
        self.local_i = _frozen(li)
        self.local_j = _frozen(lj)
        self.block_angle = _frozen(angle)
