r"""Schedules: which Givens rotations run in parallel, and in what order.

Design rule: a schedule is immutable, cached data, shared by every backend.  Backends never build
pairings themselves; they read the round-major index arrays below (and may copy them to a device once).

Conventions (``docs/conventions.md``):

* A schedule groups rotations into *rounds* of disjoint pairs.  Rotations inside a round commute;
  round 0 acts first: :math:`U = B_{R-1} \cdots B_1 B_0`.  The pair ``(i, j)`` rotates rows ``i`` and
  ``j`` as ``x_i <- c x_i - s x_j``, ``x_j <- s x_i + c x_j`` whatever the order of ``i`` and ``j``
  (so a pair written ``(j, i)`` with ``j > i`` is :math:`G(i, j, -\theta)`: the *sign rule* of
  :meth:`Schedule.from_rounds`).
* Two angle layouts (``Schedule.layout``):

  - ``"triangle"`` (circle and team schedules, one rotation per plane): angle ``p`` belongs to the
    plane ``(i, j)``, ``i < j``, with ``p = i*n - i*(i+1)/2 + (j - i - 1)`` (the row-major strict upper
    triangle, :func:`pair_index`), whatever the schedule;
  - ``"round"`` (brick, :meth:`Schedule.from_rounds`, :meth:`Schedule.truncate`, where a plane may
    carry several rotations): angle ``q`` is the ``q``-th rotation in round-major order.

* Odd ``n`` (and, for the team schedule, ``n`` that does not fill whole teams) is padded with dummy
  coordinates ``>= n``; rotations touching them are dropped and rounds left empty are removed.

Storage is CSR-like, round-major: ``pair_i[q], pair_j[q], angle_index[q]`` for ``q`` in
``round_offsets[r]:round_offsets[r+1]`` are the pairs of round ``r`` and the index of their angle in
``theta`` (``angle_index`` is ``arange(num_angles)`` for the round layout).  Every consumer reads the
angle count from ``schedule.num_angles``.

Sizes are checked before anything is allocated (:data:`MAX_SCHEDULE_PAIRS`, and the machine's memory),
and restricted schedules (Stiefel frames, truncations) are built without the full schedule.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from typing import NamedTuple

import numpy as np

from .errors import ScheduleError, ShapeError, SizeError

__all__ = [
    "Schedule",
    "Round",
    "circle_schedule",
    "team_schedule",
    "brick_schedule",
    "get_schedule",
    "from_token",
    "num_angles",
    "pair_index",
    "SCHEDULE_KINDS",
    "DEFAULT_TEAM_SIZE",
    "MAX_SCHEDULE_PAIRS",
    "MAX_TOKEN_CHARS",
]

SCHEDULE_KINDS = ("circle", "team", "brick")
DEFAULT_TEAM_SIZE = 64
MAX_SCHEDULE_PAIRS = 2**31 - 1
"""Most rotations a schedule may hold (device kernels index them with int32)."""
_BYTES_PER_PAIR = 48  # pair_i, pair_j, angle_index, round_of_angle (int64) and build temporaries


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise SizeError(f"{name} must be an integer >= {minimum}, got {value!r} of type {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise SizeError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return None


def _check_pairs(count: int, what: str) -> None:
    """Refuse, before allocating, a schedule of ``count`` rotations that cannot be stored."""
    if count > MAX_SCHEDULE_PAIRS:
        raise SizeError(
            f"{what} needs {count} rotations; at most MAX_SCHEDULE_PAIRS = {MAX_SCHEDULE_PAIRS} are supported"
        )
    mem = _memory_bytes()
    if mem is not None and count * _BYTES_PER_PAIR > mem // 2:
        raise SizeError(
            f"{what} needs {count} rotations (about {count * _BYTES_PER_PAIR / 2**30:.1f} GiB of index "
            f"arrays), more than half of this machine's {mem / 2**30:.1f} GiB of memory"
        )


def num_angles(n: int, m: int | None = None) -> int:
    r"""Number of angles parametrizing SO(n), or the Stiefel manifold St(n, m).

    ``n(n-1)/2`` for SO(n); ``n*m - m(m+1)/2`` (the dimension of St(n, m), the pairs ``i < j`` with
    ``i < m``) when ``m`` is given, ``1 <= m <= n``.  ``m = n`` and ``m = n - 1`` both give SO(n).
    (A truncated or user-built schedule may hold another number: read ``schedule.num_angles``.)
    """
    n = _check_int("n", n, 2)
    if m is None:
        return n * (n - 1) // 2
    m = _check_int("m", m, 1)
    if m > n:
        raise SizeError(f"m must satisfy 1 <= m <= n = {n}, got m = {m}")
    return n * m - m * (m + 1) // 2


def _pair_index(i, j, n):
    """Unchecked :func:`pair_index` (for internal callers that mask invalid entries themselves)."""
    i = np.asarray(i)
    j = np.asarray(j)
    return i * n - (i * (i + 1)) // 2 + (j - i - 1)


def pair_index(i, j, n: int):
    """Upper-triangle (row-major) angle index of the plane ``(i, j)``, ``0 <= i < j < n``.

    ``i``, ``j``: integers or integer arrays (broadcast).  Returns an int64 array (or scalar).
    Raises SizeError for ``n < 2``, non-integer ``i``/``j``, or pairs outside ``0 <= i < j < n``.
    """
    n = _check_int("n", n, 2)
    out = []
    for name, v in (("i", i), ("j", j)):
        if isinstance(v, np.ma.MaskedArray):
            raise SizeError(f"{name} must be an integer or integer array, got a masked array (its mask would be dropped)")
        try:
            a = np.asarray(v)
        except Exception as exc:
            raise SizeError(f"{name} must be an integer or integer array, got {type(v).__name__} ({exc})") from None
        if a.dtype == bool or a.dtype.kind not in "iu":
            raise SizeError(f"{name} must be an integer or integer array, got dtype {a.dtype}")
        out.append(a.astype(np.int64))
    try:
        i, j = np.broadcast_arrays(*out)
    except ValueError:
        raise ShapeError(f"i and j must broadcast against each other; got shapes {out[0].shape} and {out[1].shape}") from None
    bad = ~((0 <= i) & (i < j) & (j < n))
    if bad.any():
        k = np.flatnonzero(bad)[0]
        raise SizeError(
            f"pairs must satisfy 0 <= i < j < n = {n}; got i = {int(i.flat[k])}, j = {int(j.flat[k])}"
        )
    r = _pair_index(i, j, n)
    return r[()] if r.ndim == 0 else r


class Round(NamedTuple):
    """One round of a schedule: disjoint pairs ``(i[q], j[q])`` and the index of their angles in theta."""

    i: np.ndarray
    j: np.ndarray
    angle: np.ndarray


def _frozen(a) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.int64)
    a.flags.writeable = False
    return a


def _flatten_rounds(rounds, n, m, orient):
    """Per-round (i, j) arrays -> flat (pair_i, pair_j, offsets).

    ``orient=True`` (triangle layout): pairs become ``lo < hi``, those touching dummies (``>= n``) or,
    with ``m``, with ``lo >= m`` are dropped, each round is sorted by ``lo``.  ``orient=False``: kept
    as given.  Empty rounds are removed either way.
    """
    pi, pj, offsets = [], [], [0]
    for i, j in rounds:
        i = np.asarray(i, dtype=np.int64)
        j = np.asarray(j, dtype=np.int64)
        if orient:
            lo, hi = np.minimum(i, j), np.maximum(i, j)
            keep = hi < n
            if m is not None:
                keep &= lo < m
            lo, hi = lo[keep], hi[keep]
            order = np.argsort(lo, kind="stable")
            i, j = lo[order], hi[order]
        if i.size == 0:
            continue
        pi.append(i)
        pj.append(j)
        offsets.append(offsets[-1] + i.size)
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)  # noqa: E731
    return cat(pi), cat(pj), np.asarray(offsets, dtype=np.int64)


class Schedule:
    """An ordering of Givens rotations on ``n`` coordinates into rounds of commuting rotations.

    Do not construct directly: use :func:`circle_schedule`, :func:`team_schedule`,
    :func:`brick_schedule`, :func:`get_schedule`, :meth:`from_rounds`, :meth:`truncate` or
    :meth:`restrict`.  Instances are cached, immutable, hashable and picklable, and :attr:`token`
    names any of them as a string (:func:`from_token`), which is how schedules travel through the torch
    and JAX adapters.

    Attributes:
        kind (str): ``"circle"``, ``"team"``, ``"brick"``, ``"rounds"`` (from user rounds) or
            ``"truncated"``.  Only ``kind == "team"`` schedules are plain team schedules (the blocked
            GEMM paths take those and nothing else).
        n (int): matrix size.
        m (int | None): Stiefel restriction St(n, m), or None.
        team_size (int | None): team size of a team schedule, else None.
        layout (str): ``"triangle"`` (angle of plane (i, j) at :func:`pair_index`) or ``"round"``
            (angles in round-major order).
        padded_n (int): ``n`` plus dummy coordinates.
        num_angles (int): number of angles, ``len(theta)``.
        num_rounds (int): number of non-empty rounds.
        pair_i, pair_j, angle_index (ndarray[int64]): round-major pairs and the index of their angles.
        round_offsets (ndarray[int64]): ``num_rounds + 1`` offsets into the round-major arrays.
        round_of_angle (ndarray[int64]): round of each angle (indexed like theta).
        max_round_size (int): the largest number of pairs in one round (<= n // 2).
        base (Schedule | None): the schedule a truncation was cut from.  depth (int | None): its ``k``.
    """

    __slots__ = (
        "kind", "n", "m", "team_size", "padded_n", "num_angles", "num_rounds", "layout",
        "pair_i", "pair_j", "angle_index", "round_offsets", "round_of_angle", "max_round_size",
        "base", "depth", "_key", "_rounds", "__weakref__",
    )

    def __init__(self, kind, n, m, team_size, padded_n, pair_i, pair_j, offsets, *, layout="triangle",
                 key=None, base=None, depth=None):
        pair_i, pair_j, offsets = _frozen(pair_i), _frozen(pair_j), _frozen(offsets)
        if layout == "triangle":
            angle_index = _frozen(_pair_index(pair_i, pair_j, n))
        else:
            angle_index = _frozen(np.arange(pair_i.size))
        counts = np.diff(offsets)
        round_of_angle = np.empty(angle_index.size, dtype=np.int64)
        round_of_angle[angle_index] = np.repeat(np.arange(counts.size), counts)
        values = dict(
            kind=kind, n=n, m=m, team_size=team_size, padded_n=padded_n, layout=layout,
            pair_i=pair_i, pair_j=pair_j, angle_index=angle_index, round_offsets=offsets,
            round_of_angle=_frozen(round_of_angle), num_angles=int(angle_index.size),
            num_rounds=int(counts.size), max_round_size=int(counts.max(initial=0)),
            base=base, depth=depth, _key=key if key is not None else (kind, n, m, team_size), _rounds=None,
        )
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError("Schedule objects are immutable")

    @property
    def rounds(self) -> tuple[Round, ...]:
        """The rounds in application order (round 0 acts first), each a :class:`Round` (built lazily)."""
        if self._rounds is None:
            off = self.round_offsets
            object.__setattr__(self, "_rounds", tuple(
                Round(self.pair_i[a:b], self.pair_j[a:b], self.angle_index[a:b])
                for a, b in zip(off[:-1].tolist(), off[1:].tolist())
            ))
        return self._rounds

    @property
    def key(self) -> tuple:
        """Hashable identity: ``(kind, n, m, team_size)`` for circle, team and brick schedules,
        ``(kind, n, m, None, recipe)`` for derived ones."""
        return self._key

    @property
    def token(self) -> str:
        """A string naming this schedule, accepted wherever a schedule is (``schedule=token``) and by
        :func:`from_token`, in this process or another: ``"team:100:t=4"``, ``"brick:8:m=3"``,
        ``"team:64:t=8|trunc=5"``, user rounds ``"rounds:6:z=..."`` (their pairs, compressed).  Only
        user rounds beyond :data:`MAX_TOKEN_CHARS` get a digest valid in this process (pickle those)."""
        return _token_of(self)

    def __eq__(self, other):
        return isinstance(other, Schedule) and self._key == other._key

    def __hash__(self):
        return hash(self._key)

    def __repr__(self):
        extra = f", team_size={self.team_size}" if self.team_size is not None else ""
        extra += f", m={self.m}" if self.m is not None else ""
        extra += f", depth={self.depth}" if self.depth is not None else ""
        return f"Schedule({self.kind!r}, n={self.n}{extra}, rounds={self.num_rounds}, angles={self.num_angles})"

    def __reduce__(self):
        return (_from_key, (self._key,))

    # ------------------------------------------------------------------ derived schedules

    @classmethod
    def from_rounds(cls, n: int, rounds) -> "Schedule":
        r"""A schedule from a user's list of rounds: ``rounds[r]`` is a sequence of pairs ``(i, j)``.

        Round 0 acts first; the angle layout is round-major (angle ``q`` is the ``q``-th pair listed).
        Pairs must be disjoint within a round, ``0 <= i, j < n``, ``i != j``; a plane may appear in
        several rounds and need not appear at all.  **Sign rule**: the pair ``(i, j)`` rotates rows
        ``x_i <- c x_i - s x_j``, ``x_j <- s x_i + c x_j`` as written, so ``(j, i)`` with ``i < j`` is
        :math:`G(i, j, -\theta)`, the rotation of ``(i, j)`` by the opposite angle.  Empty rounds are
        allowed and dropped.

        Raises:
            SizeError: ``n`` is not an integer >= 2, an index is out of range, or the schedule is too large.
            ScheduleError: malformed rounds, a pair ``(i, i)``, or a coordinate used twice in a round.
        """
        n = _check_int("n", n, 2)
        if isinstance(rounds, (str, bytes)) or not hasattr(rounds, "__iter__"):
            raise ScheduleError(f"rounds must be a sequence of rounds of (i, j) pairs, got {type(rounds).__name__}")
        flat = []
        offsets = [0]
        total = 0
        for r, rd in enumerate(rounds):
            try:
                a = np.asarray(rd)
            except Exception as exc:  # ragged nested sequences
                raise ScheduleError(f"rounds[{r}] must be a sequence of (i, j) pairs: {exc}") from None
            if a.size == 0:
                continue
            if a.ndim != 2 or a.shape[1] != 2:
                raise ScheduleError(f"rounds[{r}] must have shape (P, 2) (pairs (i, j)); got shape {a.shape}")
            if a.dtype == bool or a.dtype.kind not in "iu":
                raise ScheduleError(f"rounds[{r}] must hold integer indices, got dtype {a.dtype}")
            a = a.astype(np.int64)
            if (a < 0).any() or (a >= n).any():
                bad = a[(a < 0) | (a >= n)][0]
                raise SizeError(f"rounds[{r}] has index {int(bad)}; indices must satisfy 0 <= index < n = {n}")
            if (a[:, 0] == a[:, 1]).any():
                i = int(a[a[:, 0] == a[:, 1]][0, 0])
                raise ScheduleError(f"rounds[{r}] has the pair ({i}, {i}); a pair needs two coordinates")
            used = a.ravel()
            if np.unique(used).size != used.size:
                vals, counts = np.unique(used, return_counts=True)
                raise ScheduleError(
                    f"rounds[{r}] uses coordinate {int(vals[counts > 1][0])} twice; pairs in a round must be disjoint"
                )
            total += a.shape[0]
            _check_pairs(total, f"Schedule.from_rounds(n = {n})")
            flat.append(a)
            offsets.append(total)
        pairs = np.concatenate(flat) if flat else np.zeros((0, 2), dtype=np.int64)
        recipe = (None, "rounds", (tuple(offsets), tuple(pairs.ravel().tolist())))
        return _derived(("rounds", n, None, None, recipe))

    def truncate(self, k: int) -> "Schedule":
        """The first ``k`` rounds (``1 <= k <= num_rounds``): a depth-limited schedule.

        It has as many angles as those rounds hold pairs (``k * floor(n/2)`` for a schedule whose rounds
        are full, fewer for odd ``n`` or padded teams), in round-major order (``layout == "round"``):
        angle ``q`` of the truncation is the ``q``-th rotation of the first ``k`` rounds.  Still
        exactly orthogonal; applied in ``O(n k)`` per vector.
        """
        k = _check_int("k", k, 1)
        if k > self.num_rounds:
            raise SizeError(f"k must satisfy 1 <= k <= num_rounds = {self.num_rounds} of {self!r}, got k = {k}")
        return _derived(("truncated", self.n, self.m, None, (self._key, "truncate", k)))

    def restrict(self, m: int) -> "Schedule":
        """The Stiefel restriction St(n, m): the rotations a frame of ``m`` columns keeps.

        Circle and team schedules keep the pairs ``i < m``: exactly the first ``num_angles(n, m)``
        public angles, so ``angle_index`` of the result indexes the prefix ``theta[:num_angles(n, m)]``.
        Brick keeps the band of slots ``-2*floor((m-1)/2) <= round - i <= 2*floor(m/2)`` (pair ``(i, i+1)``),
        also ``num_angles(n, m)`` rotations, in round-major order (``docs/conventions.md``).  Other
        schedules (user rounds, truncations) keep the rotations touching a coordinate ``< m``, in
        round-major order (no coverage claim).  Built without the full schedule.
        """
        num_angles(self.n, m)  # validates m
        m = int(m)
        if self.m is not None and m > self.m:
            raise SizeError(f"m = {m} exceeds the restriction m = {self.m} of {self!r}")
        if m == self.m:
            return self
        if len(self._key) == 4:
            return _rebuild(self.kind, self.n, m, self.team_size)
        return _derived((self.kind, self.n, m, None, (self._key, "restrict", m)))

    def unrestricted(self) -> "Schedule":
        """The schedule this Stiefel restriction was taken from (itself when ``m`` is None)."""
        if self.m is None:
            return self
        if len(self._key) == 4:
            return _rebuild(self.kind, self.n, None, self.team_size)
        return _from_key(self._key[4][0])

    def to_round_order(self, theta):
        """Angles in theta's layout (last axis) -> round-major order (``theta[..., angle_index]``)."""
        return theta[..., self.angle_index]

    def from_round_order(self, values):
        """Inverse of :meth:`to_round_order`: round-major values -> theta's layout."""
        if self.layout == "round":
            return values
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




def _team_rounds_restricted(n: int, t: int, m: int):
    """The rounds of ``team_schedule(n, t)`` restricted to pairs with ``lo < m``, generated round by
    round touching only the teams that hold coordinates ``< m`` (``O(m + t)`` work per round)."""
    T, _ = _team_structure(n, t)
    tm = -(-m // t)  # teams holding coordinates < m
    rr_i, rr_j, shifts = team_local_rounds(t)
    base = (np.arange(tm, dtype=np.int64) * t)[:, None]
    for li, lj in zip(rr_i, rr_j):
        yield (base + li).ravel(), (base + lj).ravel()
    q = np.arange(t, dtype=np.int64)
    for i, j in _circle_rounds(T):
        a, b = np.minimum(i, j), np.maximum(i, j)
        keep = a < tm
        a, b = a[keep][:, None] * t, b[keep][:, None] * t
        for s in shifts:
            yield (a + q).ravel(), (b + (q + s) % t).ravel()


def _circle_restricted(n: int, m: int):
    """Flat (pair_i, pair_j, offsets) of ``circle_schedule(n)`` restricted to ``lo < m``, vectorized
    over rounds from the partner rule: in round ``r``, 0 meets ``1 + r`` and player ``p >= 1`` meets
    the player ``p'`` with ``(p - 1) + (p' - 1) = 2r mod (N - 1)``."""
    N = n + n % 2
    M = N - 1
    r = np.arange(M, dtype=np.int64)[None, :]
    a = np.arange(m, dtype=np.int64)[:, None]
    partner = np.where(a == 0, 1 + r, 1 + (2 * r - (a - 1)) % M)
    partner = np.where((a >= 1) & ((a - 1) == r), 0, partner)
    a, r = np.broadcast_arrays(a, r)
    a, r, partner = a.ravel(), r.ravel(), partner.ravel()
    keep = (partner < n) & ((a < partner) | (partner >= m))
    a, r, partner = a[keep], r[keep], partner[keep]
    lo, hi = np.minimum(a, partner), np.maximum(a, partner)
    order = np.lexsort((lo, r))
    lo, hi, r = lo[order], hi[order], r[order]
    counts = np.bincount(r, minlength=M)
    counts = counts[counts > 0]
    return lo, hi, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _brick_band(m: int):
    """Band ``(lo, hi)`` of ``round - i`` kept by the Stiefel restriction St(n, m) of brick."""
    return -2 * ((m - 1) // 2), 2 * (m // 2)


def _brick_flat(n: int, m):
    """Flat round-major pairs of brick: round ``l`` (``l = 0..n-1``) pairs ``(i, i+1)``, ``i = l mod 2,
    l mod 2 + 2, ...``; with ``m``, only the band of :func:`_brick_band`."""
    pi, offsets = [], [0]
    lo, hi = _brick_band(m) if m is not None else (-n, n)
    for l in range(n):
        first = max(l % 2, l - hi)
        first += (first - l) % 2
        i = np.arange(first, min(n - 2, l - lo) + 1, 2, dtype=np.int64)
        if i.size:
            pi.append(i)
            offsets.append(offsets[-1] + i.size)
    pi = np.concatenate(pi)
    return pi, pi + 1, np.asarray(offsets, dtype=np.int64)


@functools.lru_cache(maxsize=None)
def _rebuild(kind: str, n: int, m, team_size):
    if kind == "circle":
        N = n + n % 2
        _check_pairs(num_angles(n, m), f"circle_schedule(n = {n}" + (f", m = {m})" if m else ")"))
        if m is not None and m < n - 1:
            return Schedule("circle", n, m, None, N, *_circle_restricted(n, m))
        return Schedule("circle", n, m, None, N, *_flatten_rounds(_circle_rounds(N), n, m, True))
    if kind == "team":
        what = f"team_schedule(n = {n}, team_size = {team_size}" + (f", m = {m})" if m else ")")
        _check_pairs(num_angles(n, m), what)  # before _team_structure allocates per team
        T, _ = _team_structure(n, team_size)
        N = T * team_size
        if m is not None and m < n - 1:
            _check_pairs(N * -(-m // team_size) * team_size, what)
            rounds = _team_rounds_restricted(n, team_size, m)
        else:
            _check_pairs(N * (N - 1) // 2, what)
            rounds = _team_rounds(n, team_size)
        return Schedule("team", n, m, team_size, N, *_flatten_rounds(rounds, n, m, True))
    if kind == "brick":
        _check_pairs(num_angles(n, m), f"brick_schedule(n = {n}" + (f", m = {m})" if m else ")"))
        return Schedule("brick", n, m, None, n, *_brick_flat(n, m), layout="round")
    raise ScheduleError(f"schedule kind must be one of {SCHEDULE_KINDS}, got {kind!r}")


@functools.lru_cache(maxsize=256)
def _derived(key):
    """Build a derived schedule (``from_rounds``, ``truncate``, generic ``restrict``) from its key."""
    kind, n, m, _, (base_key, op, arg) = key
    if op == "rounds":
        offsets, flat = arg
        pairs = np.asarray(flat, dtype=np.int64).reshape(-1, 2)
        return Schedule("rounds", n, None, None, n, pairs[:, 0], pairs[:, 1], np.asarray(offsets), layout="round",
                        key=key)
    base = _from_key(base_key)
    if op == "truncate":
        end = int(base.round_offsets[arg])
        return Schedule("truncated", n, base.m, None, base.padded_n, base.pair_i[:end], base.pair_j[:end],
                        base.round_offsets[: arg + 1], layout="round", key=key, base=base, depth=arg)
    if op == "restrict":
        keep = np.minimum(base.pair_i, base.pair_j) < arg
        counts = np.add.reduceat(keep.astype(np.int64), base.round_offsets[:-1]) if keep.size else np.zeros(0, int)
        counts = counts[counts > 0]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return Schedule(kind, n, arg, None, base.padded_n, base.pair_i[keep], base.pair_j[keep], offsets,
                        layout="round", key=key, base=base.base, depth=base.depth)
    raise ScheduleError(f"unknown schedule recipe {op!r}")  # pragma: no cover


def _from_key(key):
    """The schedule with this :attr:`Schedule.key` (used by pickling and tokens)."""
    if len(key) == 4:
        return _rebuild(*key)
    return _derived(key)


# --------------------------------------------------------------------------- tokens
#
# Grammar (docs/conventions.md, "Schedules and round order"):  token := base ("|" op)*
#   base := "circle:N" | "team:N:t=T" | "brick:N"  (each optionally ":m=M", the built-in restriction)
#         | "rounds:N:z=PAYLOAD"                    (user rounds, PAYLOAD below)
#   op   := "trunc=K" (Schedule.truncate(K)) | "m=M" (Schedule.restrict(M) of a derived schedule)
# PAYLOAD is the URL-safe base64 (no padding) of the zlib-compressed little-endian uint32 array
# [R, count_0 .. count_{R-1}, i_0, j_0, i_1, j_1, ...] of the rounds as given to from_rounds.  A
# token longer than MAX_TOKEN_CHARS falls back to "kind:N:#DIGEST", registered in this process only.

MAX_TOKEN_CHARS = 1 << 18
"""Longest self-describing token; user rounds that do not fit get a per-process digest token."""

_TOKENS: dict = {}
_TOKENS_LOCK = threading.Lock()


def _encode_rounds(n, offsets, flat) -> str:
    import base64
    import zlib

    counts = np.diff(np.asarray(offsets, dtype=np.int64))
    words = np.concatenate([[counts.size], counts, np.asarray(flat, dtype=np.int64)]).astype("<u4")
    payload = base64.urlsafe_b64encode(zlib.compress(words.tobytes(), 9)).decode("ascii").rstrip("=")
    return f"rounds:{n}:z={payload}"


def _decode_rounds(token: str, n: int, payload: str) -> Schedule:
    import base64
    import binascii
    import zlib

    try:
        raw = zlib.decompress(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError, zlib.error) as exc:
        raise ScheduleError(f"malformed schedule token {token[:80]!r}: the rounds do not decode ({exc})") from None
    if len(raw) % 4:
        raise ScheduleError(f"malformed schedule token {token[:80]!r}: the rounds do not decode")
    words = np.frombuffer(raw, dtype="<u4").astype(np.int64)
    if words.size < 1 or words.size < 1 + words[0] or words.size != 1 + words[0] + 2 * words[1:1 + words[0]].sum():
        raise ScheduleError(f"malformed schedule token {token[:80]!r}: the round counts do not match the pairs")
    R = int(words[0])
    counts = words[1:1 + R]
    pairs = words[1 + R:].reshape(-1, 2)
    ends = np.cumsum(counts)
    return Schedule.from_rounds(n, [pairs[e - c:e] for c, e in zip(counts.tolist(), ends.tolist())])


def _builtin_token(key) -> str:
    kind, n, m, t = key
    return f"{kind}:{n}" + (f":t={t}" if t is not None else "") + (f":m={m}" if m is not None else "")


def _readable_token(key):
    """The self-describing token of ``key``, or None when it does not fit (huge user rounds)."""
    if len(key) == 4:
        return _builtin_token(key)
    _, n, _, _, (base_key, op, arg) = key
    if op == "rounds":
        offsets, flat = arg
        if len(flat) > 32 * MAX_TOKEN_CHARS:  # would not compress into the limit: skip the work
            return None
        token = _encode_rounds(n, offsets, flat)
        return token if len(token) <= MAX_TOKEN_CHARS else None
    base = _readable_token(base_key)
    if base is None:
        return None
    token = base + (f"|trunc={arg}" if op == "truncate" else f"|m={arg}")
    return token if len(token) <= MAX_TOKEN_CHARS else None


@functools.lru_cache(maxsize=256)  # as _derived: the keys hold user rounds' pairs
def _token_of_key(key) -> str:
    token = _readable_token(key)
    if token is not None:
        return token
    digest = hashlib.sha1(repr(key).encode()).hexdigest()[:20]
    token = f"{key[0]}:{key[1]}:#{digest}"
    with _TOKENS_LOCK:
        _TOKENS[token] = key
    return token


def _token_of(s: Schedule) -> str:
    return _token_of_key(s.key)


def _base_from_token(token: str, part: str) -> Schedule:
    fields = part.split(":")
    if len(fields) < 2 or fields[0] not in SCHEDULE_KINDS + ("rounds",):
        raise ScheduleError(
            f"schedule token {token[:80]!r} is unknown: tokens are 'kind:n[:t=T][:m=M]' (kind in {SCHEDULE_KINDS}), "
            "'rounds:n:z=...' (user rounds), each optionally followed by '|trunc=K' / '|m=M'"
        )
    try:
        n = int(fields[1])
        opts = dict(f.split("=", 1) for f in fields[2:])
    except ValueError:
        raise ScheduleError(f"malformed schedule token {token[:80]!r}") from None
    if fields[0] == "rounds":
        if set(opts) != {"z"}:
            raise ScheduleError(f"malformed schedule token {token[:80]!r}: user rounds carry exactly 'z=...'")
        return _decode_rounds(token, _check_int("n", n, 2), opts["z"])
    try:
        t = int(opts.pop("t")) if "t" in opts else None
        m = int(opts.pop("m")) if "m" in opts else None
    except ValueError:
        raise ScheduleError(f"malformed schedule token {token!r}") from None
    if opts:
        raise ScheduleError(f"malformed schedule token {token!r}: unknown fields {sorted(opts)}")
    if fields[0] == "team":
        s = team_schedule(n, t)
    elif t is not None:
        raise ScheduleError(f"malformed schedule token {token!r}: only team schedules have t=")
    else:
        s = circle_schedule(n) if fields[0] == "circle" else brick_schedule(n)
    return s if m is None else s.restrict(m)


@functools.lru_cache(maxsize=256)
def _parse_token(token: str) -> Schedule:
    parts = token.split("|")
    s = _base_from_token(token, parts[0])
    for op in parts[1:]:
        name, _, value = op.partition("=")
        try:
            value = int(value)
        except ValueError:
            raise ScheduleError(f"malformed schedule token {token[:80]!r}: {op!r} is not 'trunc=K' or 'm=M'") from None
        if name == "trunc":
            s = s.truncate(value)
        elif name == "m":
            s = s.restrict(value)
        else:
            raise ScheduleError(f"malformed schedule token {token[:80]!r}: {op!r} is not 'trunc=K' or 'm=M'")
    return s


def from_token(token: str) -> Schedule:
    """The schedule a :attr:`Schedule.token` names, in this process or any other.

    Tokens describe their schedule (``"team:64:t=8"``, ``"brick:9|trunc=2|m=3"``, user rounds as
    ``"rounds:6:z=..."``), so a token written by one process (a torch ``state_dict``, a message to a
    DDP worker) resolves in another.  Only user rounds too large for :data:`MAX_TOKEN_CHARS` get a
    digest token (``"rounds:n:#..."``) that resolves in the process that made it.

    Raises:
        ScheduleError: not a token, a malformed one, or a digest token made by another process.
    """
    if not isinstance(token, str):
        raise ScheduleError(f"a schedule token must be a str, got {type(token).__name__}")
    key = _TOKENS.get(token)
    if key is not None:
        return _from_key(key)
    if "#" in token:
        raise ScheduleError(
            f"schedule token {token!r} names user rounds too large to describe in a token (more than "
            f"MAX_TOKEN_CHARS = {MAX_TOKEN_CHARS} characters), registered only in the process that built them. "
            "Pass the Schedule object itself (it pickles, e.g. to DDP workers or with torch.save), or build "
            "it with Schedule.from_rounds in this process and use its token"
        )
    return _parse_token(token)


# --------------------------------------------------------------------------- constructors

def circle_schedule(n: int) -> Schedule:
    """The paper's circle method: coordinate 0 fixed, the others rotate; ``n - 1`` rounds (``n`` if odd).

    Round ``r`` pairs ``0`` with ``1 + r`` and ``1 + (r + k) mod M`` with ``1 + (r - k) mod M``,
    ``k = 1..N/2 - 1``, where ``N = n`` rounded up to even and ``M = N - 1``.
    """
    n = _check_int("n", n, 2)
    return _rebuild("circle", n, None, None)


def brick_schedule(n: int) -> Schedule:
    r"""The brick (rectangular "Clements") mesh: nearest-neighbour pairs in alternating layers.

    ``n`` rounds for every ``n >= 2`` (one for ``n = 2``): round ``l`` pairs ``(i, i+1)`` for
    ``i = l mod 2, l mod 2 + 2, ... <= n - 2``, so rounds alternate ``(0,1),(2,3),...`` and
    ``(1,2),(3,4),...``; ``n(n-1)/2`` rotations in all, each plane ``(i, i+1)`` about ``n/2`` times,
    so the angle layout is round-major (``layout == "round"``).  Exactly invertible by nulling
    (:func:`cupyortho.angles_from_matrix`), with exact Haar angles (:func:`cupyortho.haar_angles`).
    """
    n = _check_int("n", n, 2)
    return _rebuild("brick", n, None, None)


def _next_pow2(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


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
    r"""The blocked "team" schedule (``docs/conventions.md``), played recursively.

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
    cap = max(DEFAULT_TEAM_SIZE, _next_pow2(n))
    if team_size > cap:
        raise SizeError(
            f"team_size must be a power of two <= {cap} (max(DEFAULT_TEAM_SIZE, the smallest power of two "
            f">= n = {n})), got {team_size}"
        )
    return _rebuild("team", n, None, team_size)


def get_schedule(schedule, n: int, m: int | None = None) -> Schedule:
    """Resolve a ``schedule`` argument: a name (``"circle"``, ``"team"``, ``"brick"``), a
    :attr:`Schedule.token`, a :class:`Schedule`, or None for the library default.  Checks it is built
    for ``n`` and restricts it to ``m`` when given, without building the unrestricted schedule."""
    if schedule is None:
        schedule = DEFAULT_SCHEDULE
    n = _check_int("n", n, 2)
    if m is not None:
        num_angles(n, m)
    if isinstance(schedule, str):
        if schedule in SCHEDULE_KINDS:
            if schedule == "team":
                s = _rebuild("team", n, m, default_team_size(n))
            else:
                s = _rebuild(schedule, n, m, None)
            return s
        if ":" not in schedule:
            raise ScheduleError(
                f"schedule must be one of {SCHEDULE_KINDS}, a schedule token, a Schedule or None, got {schedule!r}"
            )
        s = from_token(schedule)
    elif isinstance(schedule, Schedule):
        s = schedule
    else:
        raise ScheduleError(
            f"schedule must be one of {SCHEDULE_KINDS}, a schedule token, a Schedule or None, "
            f"got {type(schedule).__name__}"
        )
    if s.n != n:
        raise ScheduleError(f"schedule was built for n = {s.n} but the inputs have n = {n}")
    if m is not None and m != s.m:
        s = s.restrict(m)
    return s


DEFAULT_SCHEDULE = "team"
"""The schedule used when none is given: the blocked team schedule (fast on CPUs through
:mod:`cupyortho.backends.blocked`, and on GPUs through block kernels).  ``"circle"`` stays available."""
