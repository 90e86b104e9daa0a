r"""Exact inverse of the brick schedule by constructive nulling (Clements et al. 2016), in O(n^3).

Design rule: no iterative solve.  ``W = U`` is reduced to a diagonal by one Givens rotation per
angle, each chosen to null one entry of the strict lower triangle, taken along the anti-diagonals
``i = 1..n-1`` (``docs/conventions.md``, "Exact inverse of brick"):

* ``i`` odd: for ``j = 0..i-1`` null ``W[n-1-j, c]``, ``c = i-1-j``, by mixing **columns**
  ``c, c+1``: ``W <- W G(c, c+1, t)^H``.  These rotations are the brick slots ``(round j, pair c)``,
  the ones with ``c + round <= n - 2``; they act first.
* ``i`` even: for ``j = 1..i`` null ``W[r+1, j-1]``, ``r = n-2+j-i``, by mixing **rows**
  ``r, r+1``: ``W <- G(r, r+1, t)^H W``: the slots ``(round n-j, pair r)``, ``c + round >= n - 1``.

Entries nulled earlier stay zero (Clements' ordering), so at the end ``W = D`` is diagonal and
``U = L^{-1} D R^{-1}`` with ``R^{-1}`` the column rotations (first rounds) and ``L^{-1}`` the row
rotations (last rounds).

U(n) (:func:`brick_unitary_params`, ``_sweep_complex``): ``D = diag(e^{i mu})`` is moved to the far
left through ``L^{-1}``: ``G D = D (D^{-1} G D)`` adds ``mu_r - mu_{r+1}`` to the phase of each left
rotation, and ``D`` is the ``D(delta)`` of the parametrization.

SO(n) and St(n, m) (:func:`brick_angles` is the case ``m = n`` of :func:`brick_frame_angles`,
``_sweep_frame``): brick's band (``docs/conventions.md``, "Brick: the band St(n, m)"; all of brick
for ``m >= n - 1``) is nulled on the ``n x m`` frame ``W = Q``.  The slots of the band with
``s = round + pair <= m - 2`` (the top-left triangle of the (round, pair) grid) rotate only the first
``m`` coordinates and act before every other band slot that touches them, so on ``I[:, :m]`` they are
a right factor ``R_m`` in SO(m): they are undone as **column** steps on ``W``; the other band slots
are **row** steps.  The order is Clements' alternation of groups of equal ``s``: column groups
``s = 0, 2, ..., <= m - 2`` (rounds ascending) alternate with row groups of ``s`` descending (rounds
descending), and once the column groups are used up the remaining row groups follow (for ``m = n``
exactly the anti-diagonal order above).  The ``g``-th group (counting both kinds) nulls the matrix
anti-diagonal ``r - c = a = n - 1 - g``: a column step on pair ``p`` nulls ``W[p + a, p]``, a row
step on pair ``p`` nulls ``W[p + 1, p + 1 - a]``.  Entries nulled earlier stay zero (checked on
sparsity patterns for every n <= 16 and every m in ``tests/test_brick.py``, and by its round trips),
so ``W = I[:, :m] D`` at the end, ``Q = L I[:, :m] D R_m``.  ``D R_m = R_m' D`` (column-step angles
times ``d_p d_{p+1}``), and ``I[:, :m] D`` is absorbed by adding pi to the angle of a round-0/1 slot:
on pair ``(i, i+1)`` that inserts -1 on coordinates ``i, i+1``, which, moved to the input, negates
the round-0 angles of pairs ``i - 1, i + 1`` (when the slot is in round 1) and flips columns
``i, i+1`` of ``I[:, :m]``; pair ``(m-1, m)`` flips column ``m - 1`` alone (``m < n``: no
determinant condition; for ``m = n``, ``det D = det U = +1`` leaves an even number of -1, which the
pair flips clear).  Every step rotates two rows (``O(m)``) or two columns (``O(n)``, only the
``~m^2/4`` column steps): ``O(n m^2)``.

The sweeps run in compiled loops (numba, ``cache=True``, compiled at first use) on row-padded work
arrays (:func:`_work`).
"""

from __future__ import annotations

import functools

import numpy as np

from . import schedule as _sched
from .errors import NotOrthogonalError

__all__ = ["is_brick", "brick_angles", "brick_unitary_params", "brick_frame_angles"]


def is_brick(schedule) -> bool:
    """True when ``schedule`` names an unrestricted-or-restricted brick schedule (name, token or object)."""
    if isinstance(schedule, str):
        return schedule == "brick" or schedule.startswith("brick:")
    return isinstance(schedule, _sched.Schedule) and schedule.kind == "brick"


def _sweep_complex(W, offsets, theta, phi):  # pragma: no cover - compiled by numba
    n = W.shape[0]
    for i in range(1, n):
        if i % 2 == 1:
            for j in range(i):
                r = n - 1 - j
                c = i - 1 - j
                a = W[r, c]
                b = W[r, c + 1]
                t = np.arctan2(np.abs(a), np.abs(b))
                p = 0.0
                if np.abs(a) > 0.0:
                    p = np.angle(a) - (np.angle(b) if np.abs(b) > 0.0 else 0.0)
                co = np.cos(t)
                si = np.sin(t)
                u = np.exp(1j * p)
                # W <- W G^H, G = [[c, -s conj(u)], [s u, c]] on columns (c, c+1)
                for k in range(r + 1):
                    x = W[k, c]
                    y = W[k, c + 1]
                    W[k, c] = co * x - si * u * y
                    W[k, c + 1] = si * np.conj(u) * x + co * y
                W[r, c] = 0.0
                q = offsets[j] + (c - j % 2) // 2
                theta[q] = t
                phi[q] = p
        else:
            for j in range(1, i + 1):
                r = n - 2 + j - i
                c = j - 1
                a = W[r, c]
                b = W[r + 1, c]
                t = np.arctan2(np.abs(b), np.abs(a))
                p = 0.0
                if np.abs(b) > 0.0:
                    p = np.angle(b) - (np.angle(a) if np.abs(a) > 0.0 else 0.0)
                co = np.cos(t)
                si = np.sin(t)
                u = np.exp(1j * p)
                # W <- G^H W on rows (r, r+1)
                for k in range(c, n):  # columns left of c are zero in both rows already
                    x = W[r, k]
                    y = W[r + 1, k]
                    W[r, k] = co * x + si * np.conj(u) * y
                    W[r + 1, k] = co * y - si * u * x
                W[r + 1, c] = 0.0
                rnd = n - j
                q = offsets[rnd] + (r - rnd % 2) // 2
                theta[q] = t
                phi[q] = p


_JIT = {}


def _jit(name):
    """The numba-compiled sweep (cached on disk, compiled once per machine)."""
    f = _JIT.get(name)
    if f is None:
        import numba

        f = numba.njit(cache=True, nogil=True)(globals()[name])
        _JIT[name] = f
    return f


def _slots(sched):
    """Round and pair of each brick angle, and the slot-index helper."""
    rnd = np.repeat(np.arange(sched.num_rounds), np.diff(sched.round_offsets))
    return rnd, sched.pair_i


def _wrap(a):
    return np.angle(np.exp(1j * a))


def _work(A, dtype):
    """A C-order copy of ``A`` (n, m) whose rows are padded to ``m + 8`` entries: with ``m`` a power of
    two the column steps (one entry per row, a row length apart) would otherwise map to the same cache
    sets (3x slower at n = 1024)."""
    n, m = A.shape
    buf = np.empty((n, m + 8), dtype=dtype)
    W = buf[:, :m]
    W[...] = A
    return W


def _one_complex(U, sched):
    n = sched.n
    W = _work(U, np.complex128)
    theta = np.zeros(sched.num_angles)
    phi = np.zeros(sched.num_angles)
    _jit("_sweep_complex")(W, np.ascontiguousarray(sched.round_offsets), theta, phi)
    mu = np.angle(np.diagonal(W))
    rnd, c = _slots(sched)
    left = c + rnd >= n - 1
    phi[left] += mu[c[left]] - mu[c[left] + 1]
    return np.concatenate([_wrap(theta), _wrap(phi), _wrap(mu)])


def brick_angles(flat):
    """Brick angles of each SO(n) matrix of ``flat`` ``(B, n, n)`` (float64, checked orthogonal with
    det +1 by the caller): ``(B, n(n-1)/2)`` in brick's round-major layout, in :math:`(-\\pi, \\pi]`.
    The frame nulling with ``m = n`` (the band is all of brick)."""
    B, n, _ = flat.shape
    out = np.empty((B, n * (n - 1) // 2))
    for b in range(B):
        out[b] = _one_frame(flat[b], n, n)
    return out


def brick_unitary_params(flat):
    """U(n) parameters ``[theta, phi, delta]`` of brick for each unitary of ``flat`` ``(B, n, n)``."""
    n = flat.shape[-1]
    sched = _sched.brick_schedule(n)
    out = np.empty((flat.shape[0], n * n))
    for b in range(flat.shape[0]):
        out[b] = _one_complex(flat[b], sched)
    return out


@functools.lru_cache(maxsize=16)  # a plan is 4 int64 per rotation (16 MB at n = 1024)
def _frame_plan(n: int, m: int):
    """Nulling plan of brick's St(n, m) band (``1 <= m <= n``), in nulling order.

    ``m = n`` is the full SO(n) nulling (Clements' own order).  Returns int64 arrays
    ``(kind, q, p, target)``: ``kind`` 0 = column step on columns ``p, p+1``
    nulling ``W[target, p]``, 1 = row step on rows ``p, p+1`` nulling ``W[p+1, target]``; ``q`` the
    angle index in the band's round-major layout.  See the module docstring ("Frames").
    """
    sched = _sched.brick_schedule(n) if m == n else _sched.brick_schedule(n).restrict(m)
    rnd = np.repeat(np.arange(sched.num_rounds), np.diff(sched.round_offsets))
    p = sched.pair_i
    s = rnd + p                      # anti-diagonal of the (round, pair) grid, always even
    col = s <= m - 2                 # the top-left triangle: rotations inside the first m coordinates
    n_col = m // 2                   # column groups s = 0, 2, ..., <= m - 2
    rs = np.unique(s[~col])[::-1]    # row groups, s descending
    rank = np.searchsorted(-rs, -s)  # index of a row step's group in rs
    pos = np.where(col, s, np.where(rank < n_col, 2 * rank + 1, n_col + rank))
    a = n - 1 - pos                  # the matrix anti-diagonal r - c this group nulls
    key = np.where(col, rnd, -rnd)   # column groups: rounds ascending; row groups: descending
    order = np.lexsort((key, pos))
    target = np.where(col, p + a, p + 1 - a)
    out = tuple(np.ascontiguousarray(x[order], dtype=np.int64)
                for x in (np.where(col, 0, 1), np.arange(sched.num_angles), p, target))
    return out, sched


def _sweep_frame(W, kind, qs, ps, targets, theta):  # pragma: no cover - compiled by numba
    n, m = W.shape
    for step in range(kind.shape[0]):
        p = ps[step]
        if kind[step] == 0:  # columns p, p+1: W <- W G(p, p+1, t)^T nulls W[r, p]
            r = targets[step]
            t = np.arctan2(W[r, p], W[r, p + 1])
            co = np.cos(t)
            si = np.sin(t)
            for k in range(n):
                x = W[k, p]
                y = W[k, p + 1]
                W[k, p] = co * x - si * y
                W[k, p + 1] = si * x + co * y
            W[r, p] = 0.0
        else:  # rows p, p+1: W <- G(p, p+1, t)^T W nulls W[p+1, c]
            c = targets[step]
            t = np.arctan2(W[p + 1, c], W[p, c])
            co = np.cos(t)
            si = np.sin(t)
            for k in range(m):
                x = W[p, k]
                y = W[p + 1, k]
                W[p, k] = co * x + si * y
                W[p + 1, k] = co * y - si * x
            W[p + 1, c] = 0.0
        theta[qs[step]] = t


def _band_slot(sched, rnd, i):
    """Index of the band's angle of pair (i, i+1) in round rnd, or -1 when the band has none."""
    if rnd < 0 or rnd >= sched.num_rounds:
        return -1
    lo, hi = int(sched.round_offsets[rnd]), int(sched.round_offsets[rnd + 1])
    k = lo + int(np.searchsorted(sched.pair_i[lo:hi], i))
    return k if k < hi and sched.pair_i[k] == i else -1


def _one_frame(Q, n, m):
    (kind, qs, ps, targets), sched = _frame_plan(n, m)
    W = _work(Q, np.float64)
    theta = np.zeros(sched.num_angles)
    _jit("_sweep_frame")(W, kind, qs, ps, targets, theta)
    # W = I[:, :m] D.  Q = L I D R_m (R_m: the column steps, inside the first m coordinates), and
    # D R_m = R_m' D with each column-step angle times d_p d_{p+1}.
    d = np.where(np.diagonal(W) < 0, -1.0, 1.0)
    c = kind == 0
    theta[qs[c]] *= d[ps[c]] * d[ps[c] + 1]
    # Q = L R_m' I D: flip the columns with d = -1.  Adding pi to the angle of the first-or-second
    # round pair (i, i+1) inserts -1 on coordinates i, i+1 there; moved to the input it negates the
    # round-0 angles of pairs i-1, i+1 (when it sits in round 1) and flips columns i, i+1 (< m) of
    # I[:, :m].  Flips of (i, i+1), i = 0..m-2, then (m-1, m), which flips column m-1 alone (m < n;
    # for m = n, det D = det U = +1 leaves an even number of flips, so column n-1 never needs one).
    flips = d < 0
    for i in range(m):
        if not flips[i]:
            continue
        r = i % 2
        q = _band_slot(sched, r, i)
        if q < 0:  # only for i = n - 1, m = n: det U = -1, refused by the callers
            raise NotOrthogonalError("brick nulling met det = -1: the matrix is not in SO(n)")
        theta[q] += np.pi
        if r == 1:
            for nb in (i - 1, i + 1):
                q = _band_slot(sched, 0, nb)
                if q >= 0:
                    theta[q] = -theta[q]
        flips[i] = False
        if i + 1 < m:
            flips[i + 1] = not flips[i + 1]
    return _wrap(theta)


def brick_frame_angles(flat):
    """Angles of brick's St(n, m) band (``1 <= m <= n - 1``) for frames ``(B, n, m)`` (float64, checked
    orthonormal by the caller), in the band's round-major layout, in :math:`(-\\pi, \\pi]`."""
    B, n, m = flat.shape
    out = np.empty((B, _sched.brick_schedule(n).restrict(m).num_angles))
    for b in range(B):
        out[b] = _one_frame(flat[b], n, m)
    return out
