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


def bit_reversal(u: int) -> np.ndarray:
    """The bit-reversal permutation of ``0..u-1`` (``u`` a power of two): the order in which the ``u``
    shifts of a meeting are played (see :func:`team_schedule`)."""
    order = np.zeros(1, dtype=np.int64)
    while order.size < u:
        order = np.concatenate([2 * order, 2 * order + 1])
    return order


def meeting_stages(a, b, u: int):
    r"""Split meetings into stages of meetings of ``u`` against ``u`` players.

    ``a``, ``b``: ``(M, v)`` coordinates of ``M`` simultaneous meetings (``v`` a power of two,
    ``u <= v``), every ``a`` coordinate below every ``b`` coordinate of its meeting.  A meeting of
    ``v`` against ``v`` is played recursively: first its "X" half, the two meetings
    ``(a[0::2], b[0::2])`` and ``(a[1::2], b[1::2])`` side by side, then its "Y" half,
    ``(a[0::2], b[1::2])`` and ``(a[1::2], roll(b[0::2], -1))``.  Unrolled down to ``u = 1`` this is
    ``v`` rounds in which ``a[q]`` meets ``b[(q + s) mod v]`` with the shifts ``s`` in bit-reversed
    order.  Returns the list of ``v/u`` stages, each ``(A, B)`` of shape ``(M*v/u, u)``: meetings
    that act on disjoint coordinates, so each stage is one block-diagonal step with ``2u x 2u``
    blocks on the coordinates ``[A[k], B[k]]``.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if a.shape[1] == u:
        return [(a, b)]
    ae, ao, be, bo = a[:, 0::2], a[:, 1::2], b[:, 0::2], b[:, 1::2]
    x = meeting_stages(np.concatenate([ae, ao]), np.concatenate([be, bo]), u)
    y = meeting_stages(np.concatenate([ae, ao]), np.concatenate([bo, np.roll(be, -1, axis=1)]), u)
    return x + y


def team_stages(n: int, t: int, u: int):
    r"""The team schedule of size ``n``, team size ``t``, as block-diagonal stages of granularity ``u``.

    Returns ``(N, rr, stages)``: ``N`` the padded size; ``rr`` None (``t = 1``) or ``(v, groups)``:
    the first stage, a round robin ``RR(v)`` on each row of ``groups`` (``(N/v, v)`` consecutive
    coordinates), ``v = min(t, 2u)``; ``stages`` the following stages, each ``(A, B)`` of
    :func:`meeting_stages`.  ``RR(2w)`` on ``c`` is ``RR(w)`` on both halves side by side, then the
    meeting ``(c[:w], c[w:])``.  With ``u = 1`` every stage is one round: this *defines* the rounds of
    :func:`team_schedule`; any ``u`` (a power of two ``<= t``) gives the same product of rotations.
    """
    T = -(-n // t)
    T += T % 2
    N = T * t
    rr = None
    stages = []
    if t >= 2:
        v = min(t, 2 * u)
        rr = (v, np.arange(N, dtype=np.int64).reshape(N // v, v))
        w = v
        while w < t:
            halves = np.arange(N, dtype=np.int64).reshape(N // (2 * w), 2, w)
            stages += meeting_stages(halves[:, 0], halves[:, 1], min(u, w))
            w *= 2
    q = np.arange(t, dtype=np.int64)
    for i, j in _circle_rounds(T):
        a, b = np.minimum(i, j), np.maximum(i, j)
        stages += meeting_stages(a[:, None] * t + q, b[:, None] * t + q, min(u, t))
    return N, rr, stages


def _rr_rounds(groups):
    """Rounds of the recursive round robin on each row of ``groups`` (``(G, v)``, v a power of 2)."""
    v = groups.shape[1]
    if v == 1:
        return []
    w = v // 2
    inner = _rr_rounds(np.concatenate([groups[:, :w], groups[:, w:]]))
    meet = [(a[:, 0], b[:, 0]) for a, b in meeting_stages(groups[:, :w], groups[:, w:], 1)]
    return inner + meet


def _team_rounds(n: int, t: int):
    _, rr, stages = team_stages(n, t, 1)
    rounds = _rr_rounds(rr[1]) if rr is not None else []
    return rounds + [(a[:, 0], b[:, 0]) for a, b in stages]


def team_local_rounds(t: int):
    """Local form of one team-schedule block, for kernels that build blocks round by round.

    Returns ``(rr_i, rr_j, shifts)``: ``rr_i, rr_j`` ``(t - 1, t // 2)`` the pairs (local indices
    ``0..t-1``) of the intra-team round robin, round by round; ``shifts`` ``(t,)``: in a meeting of
    teams ``a < b``, local round ``l`` pairs ``a*t + q`` with ``b*t + (q + shifts[l]) mod t``
    (``shifts`` is the bit-reversal permutation).
    """
    t = _check_int("t", t, 1)
    rounds = _rr_rounds(np.arange(t, dtype=np.int64)[None, :]) if t >= 2 else []
    rr_i = np.array([r[0] for r in rounds], dtype=np.int64).reshape(len(rounds), t // 2)
    rr_j = np.array([r[1] for r in rounds], dtype=np.int64).reshape(len(rounds), t // 2)
    return rr_i, rr_j, bit_reversal(t)


@functools.lru_cache(maxsize=None)
def _rebuild(kind: str, n: int, m, team_size):
    if kind == "circle":
        N = n + n % 2
        return Schedule("circle", n, m, None, N, list(_circle_rounds(N)))
    if kind == "team":
        T, _ = _team_structure(n, team_size)
        return Schedule("team", n, m, team_size, T * team_size, _team_rounds(n, team_size))
    raise ScheduleError(f"schedule kind must be one of {SCHEDULE_KINDS}, got {kind!r}")


def circle_schedule(n: int) -> Schedule:
    """The paper's circle method: coordinate 0 fixed, the others rotate; ``n - 1`` rounds (``n`` if odd).

    Round ``r`` pairs ``0`` with ``1 + r`` and ``1 + (r + k) mod M`` with ``1 + (r - k) mod M``,
    ``k = 1..N/2 - 1``, where ``N = n`` rounded up to even and ``M = N - 1``.
    """
    n = _check_int("n", n, 2)
    return _rebuild("circle", n, None, None)


def default_team_size(n: int) -> int:
    r"""The team size used when none is given (a pure function of ``n``: it fixes ``U(theta)``).

    Candidates are the powers of two ``t <= min(DEFAULT_TEAM_SIZE, p)``, ``p`` the smallest power of
    two with ``2p >= n``.  The padded size ``N(t) = t * T``, ``T = ceil(n/t)`` rounded up to even, costs
    about ``(N/n)^3`` in work, so the largest candidate with ``N(t) <= 17 n / 16`` is taken; when none
    qualifies, the one with the smallest ``N(t)`` (the largest on ties).  Examples: 2048 -> 64,
    1030 -> 32 (N = 1088 instead of 1152), 100 -> 4 (N = 104), 3 -> 2.
    """
    n = _check_int("n", n, 2)
    cap = 1
    while 2 * cap < n:
        cap *= 2
    cap = min(DEFAULT_TEAM_SIZE, cap)
    best, best_n = None, None
    t = cap
    while t >= 1:
        T = -(-n // t)
        N = (T + T % 2) * t
        if 16 * N <= 17 * n:
            return t
        if best_n is None or N < best_n:
            best, best_n = t, N
        t //= 2
    return best


def team_schedule(n: int, team_size: int | None = None) -> Schedule:
    r"""The blocked "team" schedule (DESIGN.md section 3), played recursively.

    Coordinates are split into ``T`` teams of ``t = team_size`` consecutive coordinates (``T`` rounded
    up to even, padding with dummy coordinates).  First every team plays its own round robin
    ``RR(t)`` (``t - 1`` rounds), defined recursively: ``RR(2w)`` on ``c`` is ``RR(w)`` on both halves
    side by side, then the meeting of ``c[:w]`` with ``c[w:]``.  Then the teams play a circle round
    robin of their own; a meeting of teams ``a < b`` is ``t`` rounds in which ``a*t + q`` meets
    ``b*t + (q + s) mod t``, with the shifts ``s`` in bit-reversed order (``0, t/2, t/4, 3t/4, ...``;
    :func:`bit_reversal`).  That order makes a meeting of ``w`` against ``w`` two half-size meetings
    side by side, twice (:func:`meeting_stages`), so every block of ``2u`` coordinates, ``u <= t``,
    is built from four half-size blocks by small GEMMs, and the whole product is a sequence of
    block-diagonal stages (:func:`team_stages`).  ``T*t - 1`` rounds before dropping dummies.
    :func:`team_local_rounds` gives the pairs of one block in local indices.

    Args:
        team_size (int, optional): a power of two; default :func:`default_team_size` ``(n)``.
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


DEFAULT_SCHEDULE = "team"
"""The schedule used when none is given: the blocked team schedule (fast on CPUs through
:mod:`cupyortho.backends.blocked`, and on GPUs through block kernels).  ``"circle"`` stays available."""
