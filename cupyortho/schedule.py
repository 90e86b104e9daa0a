r"""Round-robin schedules: which Givens rotations run in parallel, and in what order.

Design rule: a schedule is immutable, cached data computed once per ``(kind, n, team size, m)`` and
shared by every backend.  Backends never build pairings themselves; they read the round-major index
arrays below (and may copy them to a device once).

Conventions (``docs/conventions.md``):

* The angles of an ``n x n`` rotation are indexed by the pairs ``i < j`` in the row-major order of the
  strict upper triangle (``numpy.triu_indices(n, 1)``): angle ``p`` belongs to plane ``(i, j)`` with
  ``p = i*n - i*(i+1)/2 + (j - i - 1)``, whatever the schedule.
* A schedule groups the pairs into *rounds* of disjoint pairs (a 1-factorization of :math:`K_n`).
  Rotations inside a round commute; round 0 acts first: :math:`U = B_{R-1} \cdots B_1 B_0`.
* Odd ``n`` (and, for the team schedule, ``n`` that does not fill whole teams) is padded with dummy
  coordinates ``>= n``; rotations touching them are dropped and rounds left empty are removed.

Storage is CSR-like, round-major: ``pair_i[q], pair_j[q], angle_index[q]`` for ``q`` in
``round_offsets[r]:round_offsets[r+1]`` are the pairs of round ``r`` and the public (upper-triangle)
index of their angle, with ``pair_i < pair_j``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from .errors import ScheduleError, SizeError

__all__ = [
    "Schedule",
    "Round",
    "circle_schedule",
    "team_schedule",
    "get_schedule",
    "num_angles",
    "pair_index",
    "SCHEDULE_KINDS",
    "DEFAULT_TEAM_SIZE",
]

SCHEDULE_KINDS = ("circle", "team")
DEFAULT_TEAM_SIZE = 64


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise SizeError(f"{name} must be an integer >= {minimum}, got {value!r} of type {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise SizeError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def num_angles(n: int, m: int | None = None) -> int:
    r"""Number of angles parametrizing SO(n), or the Stiefel manifold St(n, m).

    ``n(n-1)/2`` for SO(n); ``n*m - m(m+1)/2`` (the dimension of St(n, m), the pairs ``i < j`` with
    ``i < m``) when ``m`` is given, ``1 <= m <= n``.  ``m = n`` and ``m = n - 1`` both give SO(n).
    """
    n = _check_int("n", n, 2)
    if m is None:
        return n * (n - 1) // 2
    m = _check_int("m", m, 1)
    if m > n:
        raise SizeError(f"m must satisfy 1 <= m <= n = {n}, got m = {m}")
    return n * m - m * (m + 1) // 2


def pair_index(i, j, n: int):
    """Public (upper-triangle, row-major) angle index of the plane ``(i, j)``, ``i < j < n``."""
    i = np.asarray(i)
    j = np.asarray(j)
    return i * n - (i * (i + 1)) // 2 + (j - i - 1)


class Round(NamedTuple):
    """One round of a schedule: disjoint pairs ``(i[q], j[q])`` with ``i < j``, and their angle indices."""

    i: np.ndarray
    j: np.ndarray
    angle: np.ndarray


def _frozen(a) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.int64)
    a.flags.writeable = False
    return a


class Schedule:
    """An ordering of the Givens rotations of SO(n) (or St(n, m)) into rounds of commuting rotations.

    Do not construct directly: use :func:`circle_schedule`, :func:`team_schedule` or
    :func:`get_schedule`.  Instances are cached, immutable and hashable.

    Attributes:
        kind (str): ``"circle"`` or ``"team"``.
        n (int): matrix size.
        m (int | None): Stiefel restriction (only pairs with ``i < m`` kept), or None for all of SO(n).
        team_size (int | None): team size ``t`` of a team schedule, None for circle.
        padded_n (int): ``n`` plus dummy coordinates (even; a multiple of ``2*t`` for team schedules).
        num_angles (int): number of angles, ``len(theta)``.
        num_rounds (int): number of non-empty rounds.
        pair_i, pair_j, angle_index (ndarray[int64]): round-major pairs and their public angle index.
        round_offsets (ndarray[int64]): ``num_rounds + 1`` offsets into the round-major arrays.
        max_round_size (int): the largest number of pairs in one round (<= n // 2).
    """

    __slots__ = (
        "kind", "n", "m", "team_size", "padded_n", "num_angles", "num_rounds",
        "pair_i", "pair_j", "angle_index", "round_offsets", "round_of_angle", "max_round_size",
        "_rounds", "__weakref__",
    )

    def __init__(self, kind, n, m, team_size, padded_n, rounds):
        # ``rounds``: list of (i, j) integer arrays on the padded index set, before dropping.
        pi, pj, offsets = [], [], [0]
        for i, j in rounds:
            i = np.asarray(i, dtype=np.int64)
            j = np.asarray(j, dtype=np.int64)
            lo, hi = np.minimum(i, j), np.maximum(i, j)
            keep = hi < n
            if m is not None:
                keep &= lo < m
            lo, hi = lo[keep], hi[keep]
            if lo.size == 0:
                continue
            order = np.argsort(lo, kind="stable")
            pi.append(lo[order])
            pj.append(hi[order])
            offsets.append(offsets[-1] + lo.size)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "m", m)
        object.__setattr__(self, "team_size", team_size)
        object.__setattr__(self, "padded_n", padded_n)
        pair_i = _frozen(np.concatenate(pi) if pi else np.zeros(0))
        pair_j = _frozen(np.concatenate(pj) if pj else np.zeros(0))
        angle_index = _frozen(pair_index(pair_i, pair_j, n))
        round_offsets = _frozen(offsets)
        round_of_angle = np.empty(angle_index.size, dtype=np.int64)
        round_of_angle[angle_index] = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        object.__setattr__(self, "pair_i", pair_i)
        object.__setattr__(self, "pair_j", pair_j)
        object.__setattr__(self, "angle_index", angle_index)
        object.__setattr__(self, "round_offsets", round_offsets)
        object.__setattr__(self, "round_of_angle", _frozen(round_of_angle))
        object.__setattr__(self, "num_angles", int(angle_index.size))
        object.__setattr__(self, "num_rounds", len(offsets) - 1)
        object.__setattr__(self, "max_round_size", int(np.diff(offsets).max(initial=0)))
        object.__setattr__(
            self,
            "_rounds",
            tuple(
                Round(pair_i[a:b], pair_j[a:b], angle_index[a:b])
                for a, b in zip(offsets[:-1], offsets[1:])
            ),
        )

    def __setattr__(self, name, value):
        raise AttributeError("Schedule objects are immutable")

    @property
    def rounds(self) -> tuple[Round, ...]:
        """The rounds in application order (round 0 acts first), each a :class:`Round`."""
        return self._rounds

    @property
    def key(self) -> tuple:
        return (self.kind, self.n, self.m, self.team_size)

    def __eq__(self, other):
        return isinstance(other, Schedule) and self.key == other.key

    def __hash__(self):
        return hash(self.key)

    def __repr__(self):
        extra = f", team_size={self.team_size}" if self.team_size is not None else ""
        extra += f", m={self.m}" if self.m is not None else ""
        return f"Schedule({self.kind!r}, n={self.n}{extra}, rounds={self.num_rounds})"

    def __reduce__(self):
        return (_rebuild, self.key)

    def restrict(self, m: int) -> "Schedule":
        """The same schedule with only the pairs ``i < m`` (the Stiefel restriction St(n, m)).

        The kept angles are exactly the first ``num_angles(n, m)`` public angles, so
        ``angle_index`` of the result indexes the prefix ``theta[:num_angles(n, m)]``.
        """
        num_angles(self.n, m)  # validates m
        if self.m is not None and m > self.m:
            raise SizeError(f"m = {m} exceeds the restriction m = {self.m} of {self!r}")
        return _rebuild(self.kind, self.n, int(m), self.team_size)

    def to_round_order(self, theta):
        """Angles in the public layout (last axis) -> round-major order (``theta[..., angle_index]``)."""
        return theta[..., self.angle_index]

    def from_round_order(self, values):
        """Inverse of :meth:`to_round_order`: round-major values -> public upper-triangle layout."""
        out = np.empty_like(values)
        out[..., self.angle_index] = values
        return out


def _circle_rounds(N: int):
    """Circle method on N (even) players: player 0 fixed, players 1..N-1 rotate."""
    M = N - 1
    k = np.arange(1, N // 2)
    for r in range(M):
        i = np.concatenate(([0], 1 + (r + k) % M))
        j = np.concatenate(([1 + r], 1 + (r - k) % M))
        yield i, j


def _team_structure(n: int, t: int):
    """Team pairing meetings: a list of team rounds, each a list of (team a, team b) with a < b."""
    T = -(-n // t)
    T += T % 2
    meetings = [
        [tuple(sorted((int(a), int(b)))) for a, b in zip(i, j)] for i, j in _circle_rounds(T)
    ]
    return T, meetings


def _team_rounds(n: int, t: int):
    T, meetings = _team_structure(n, t)
    N = T * t
    base = np.arange(T)[:, None] * t
    # Phase 1: all teams play their own round robin simultaneously (t - 1 rounds).
    if t >= 2:
        for i, j in _circle_rounds(t):
            yield (base + i).ravel(), (base + j).ravel()
    # Phase 2: team rounds; in a meeting of a < b, a_q meets b_{(q + s) mod t}, s = 0..t-1.
    q = np.arange(t)
    for team_round in meetings:
        a = np.array([m[0] for m in team_round])[:, None]
        b = np.array([m[1] for m in team_round])[:, None]
        for s in range(t):
            yield (a * t + q).ravel(), (b * t + (q + s) % t).ravel()
    return N


@functools.lru_cache(maxsize=None)
def _rebuild(kind: str, n: int, m, team_size):
    if kind == "circle":
        N = n + n % 2
        return Schedule("circle", n, m, None, N, list(_circle_rounds(N)))
    if kind == "team":
        T, _ = _team_structure(n, team_size)
        return Schedule("team", n, m, team_size, T * team_size, list(_team_rounds(n, team_size)))
    raise ScheduleError(f"schedule kind must be one of {SCHEDULE_KINDS}, got {kind!r}")


def circle_schedule(n: int) -> Schedule:
    """The paper's circle method: coordinate 0 fixed, the others rotate; ``n - 1`` rounds (``n`` if odd).

    Round ``r`` pairs ``0`` with ``1 + r`` and ``1 + (r + k) mod M`` with ``1 + (r - k) mod M``,
    ``k = 1..N/2 - 1``, where ``N = n`` rounded up to even and ``M = N - 1``.
    """
    n = _check_int("n", n, 2)
    return _rebuild("circle", n, None, None)


def default_team_size(n: int) -> int:
    """The team size used when none is given: ``DEFAULT_TEAM_SIZE``, shrunk to the smallest power of
    two ``t`` with ``2t >= n`` for small ``n`` (so small matrices are not padded to 2*64)."""
    n = _check_int("n", n, 2)
    t = 1
    while 2 * t < n:
        t *= 2
    return min(DEFAULT_TEAM_SIZE, t)


def team_schedule(n: int, team_size: int | None = None) -> Schedule:
    r"""The blocked "team" schedule (DESIGN.md §3).

    Coordinates are split into ``T`` teams of ``t = team_size`` consecutive coordinates (``T`` rounded up
    to even, padding with dummy coordinates).  First every team plays its own circle round robin
    (``t - 1`` rounds); then the teams play a circle round robin of their own, and a meeting of teams
    ``a < b`` is ``t`` rounds in which ``a*t + q`` meets ``b*t + (q + s) mod t``, ``s = 0..t-1``.
    ``T*t - 1`` rounds before dropping dummies.  One team round acts on disjoint ``2t``-coordinate
    blocks, which is what the blocked GEMM path exploits.

    Args:
        n (int): matrix size, >= 2.
        team_size (int, optional): a power of two; default :func:`default_team_size`.
    """
    n = _check_int("n", n, 2)
    if team_size is None:
        team_size = default_team_size(n)
    team_size = _check_int("team_size", team_size, 1)
    if team_size & (team_size - 1):
        raise SizeError(f"team_size must be a power of two, got {team_size}")
    return _rebuild("team", n, None, team_size)


def get_schedule(schedule, n: int, m: int | None = None) -> Schedule:
    """Resolve a ``schedule`` argument: a name (``"circle"``, ``"team"``), a :class:`Schedule`, or None
    for the library default.  Checks it is built for ``n`` and restricts it to ``m`` when given."""
    if schedule is None:
        schedule = DEFAULT_SCHEDULE
    if isinstance(schedule, str):
        if schedule == "circle":
            s = circle_schedule(n)
        elif schedule == "team":
            s = team_schedule(n)
        else:
            raise ScheduleError(
                f"schedule must be one of {SCHEDULE_KINDS}, a Schedule or None, got {schedule!r}"
            )
    elif isinstance(schedule, Schedule):
        s = schedule
        if s.n != n:
            raise ScheduleError(f"schedule was built for n = {s.n} but the inputs have n = {n}")
    else:
        raise ScheduleError(
            f"schedule must be one of {SCHEDULE_KINDS}, a Schedule or None, got {type(schedule).__name__}"
        )
    if m is not None and m != s.m:
        s = s.restrict(m)
    return s


DEFAULT_SCHEDULE = "circle"
