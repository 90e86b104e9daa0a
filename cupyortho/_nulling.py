r"""Exact inverse of the brick schedule by constructive nulling (Clements et al. 2016), in O(n^3).

Design rule: no iterative solve.  ``W = U`` is reduced to a diagonal by one Givens rotation per
angle, each chosen to null one entry of the strict lower triangle, taken along the anti-diagonals
``i = 1..n-1`` (``docs/conventions.md``, "Exact inverse of brick"):

* ``i`` odd: for ``j = 0..i-1`` null ``W[n-1-j, c]``, ``c = i-1-j``, by mixing **columns**
  ``c, c+1``: ``W <- W G(c, c+1, t)^T`` with ``t = atan2(W[r, c], W[r, c+1])``.  These rotations are
  the brick slots ``(round j, pair c)``, the ones with ``c + round <= n - 2``; they act first.
* ``i`` even: for ``j = 1..i`` null ``W[r+1, j-1]``, ``r = n-2+j-i``, by mixing **rows**
  ``r, r+1``: ``W <- G(r, r+1, t)^T W`` with ``t = atan2(W[r+1, c], W[r, c])``: the slots
  ``(round n-j, pair r)``, ``c + round >= n - 1``.

Entries nulled earlier stay zero (Clements' ordering), so at the end ``W = D`` is diagonal and
``U = L^{-1} D R^{-1}`` with ``R^{-1}`` the column rotations (first rounds) and ``L^{-1}`` the row
rotations (last rounds).  The diagonal is moved to the far left through ``L^{-1}``:
``G D = D (D^{-1} G D)``, which for SO(n) (``D = diag(+-1)``) multiplies each angle of ``L^{-1}`` by
``d_r d_{r+1}`` and for U(n) (``D = diag(e^{i mu})``) adds ``mu_r - mu_{r+1}`` to its phase.  For U(n)
``D`` is then the ``D(delta)`` of the parametrization.  For SO(n) (``det D = det U = +1``) ``D`` is a
product of ``F_k = G(k, k+1, pi)`` (``F_k`` present when an odd number of ``d_0..d_k`` are -1); each
``F_k`` at the far left is absorbed into the last round holding pair ``(k, k+1)``: round ``n-1``
(angle + pi) or, through round ``n-1`` (which negates the angles of pairs ``(k-1, k)`` and
``(k+1, k+2)`` there), round ``n-2``.

The sweeps run in compiled loops (numba, ``cache=True``, compiled at first use); each of the
``n(n-1)/2`` steps rotates two rows or two columns: ``O(n^3)`` in all.
"""

from __future__ import annotations

import numpy as np

from . import schedule as _sched

__all__ = ["is_brick", "brick_angles", "brick_unitary_params", "brick_frame_angles"]


def is_brick(schedule) -> bool:
    """True when ``schedule`` names an unrestricted-or-restricted brick schedule (name, token or object)."""
    if isinstance(schedule, str):
        return schedule == "brick" or schedule.startswith("brick:")
    return isinstance(schedule, _sched.Schedule) and schedule.kind == "brick"


def _sweep_real(W, offsets, theta):  # pragma: no cover - compiled by numba
    n = W.shape[0]
    for i in range(1, n):
        if i % 2 == 1:
            for j in range(i):
                r = n - 1 - j
                c = i - 1 - j
                t = np.arctan2(W[r, c], W[r, c + 1])
                co = np.cos(t)
                si = np.sin(t)
                for k in range(r + 1):  # rows below r are zero in both columns already
                    x = W[k, c]
                    y = W[k, c + 1]
                    W[k, c] = co * x - si * y
                    W[k, c + 1] = si * x + co * y
                W[r, c] = 0.0
                theta[offsets[j] + (c - j % 2) // 2] = t
        else:
            for j in range(1, i + 1):
                r = n - 2 + j - i
                c = j - 1
                t = np.arctan2(W[r + 1, c], W[r, c])
                co = np.cos(t)
                si = np.sin(t)
                for k in range(c, n):  # columns left of c are zero in both rows already
                    x = W[r, k]
                    y = W[r + 1, k]
                    W[r, k] = co * x + si * y
                    W[r + 1, k] = co * y - si * x
                W[r + 1, c] = 0.0
                rnd = n - j
                theta[offsets[rnd] + (r - rnd % 2) // 2] = t


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


def _slot(sched, rnd, c):
    """Index of the angle of pair (c, c+1) in round rnd, or -1 when brick has no such slot."""
    n = sched.n
    if rnd < 0 or rnd >= sched.num_rounds or c < 0 or c > n - 2 or (c - rnd) % 2:
        return -1
    return int(sched.round_offsets[rnd]) + (c - rnd % 2) // 2


def _wrap(a):
    return np.angle(np.exp(1j * a))


def _one_real(U, sched):
    n = sched.n
    W = np.array(U, dtype=np.float64, order="C", copy=True)
    theta = np.zeros(sched.num_angles)
    _jit("_sweep_real")(W, np.ascontiguousarray(sched.round_offsets), theta)
    d = np.where(np.diagonal(W) < 0, -1.0, 1.0)
    rnd, c = _slots(sched)
    left = c + rnd >= n - 1
    theta[left] *= d[c[left]] * d[c[left] + 1]
    parity = np.cumsum(d < 0) % 2
    last = sched.num_rounds - 1
    for k in np.flatnonzero(parity[: n - 1]):
        q = _slot(sched, last, k)
        if q >= 0:
            theta[q] += np.pi
            continue
        for nb in (k - 1, k + 1):
            q = _slot(sched, last, nb)
            if q >= 0:
                theta[q] = -theta[q]
        theta[_slot(sched, last - 1, k)] += np.pi
    return _wrap(theta)


def _one_complex(U, sched):
    n = sched.n
    W = np.array(U, dtype=np.complex128, order="C", copy=True)
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
    det +1 by the caller): ``(B, n(n-1)/2)`` in brick's round-major layout, in :math:`(-\\pi, \\pi]`."""
    n = flat.shape[-1]
    sched = _sched.brick_schedule(n)
    out = np.empty((flat.shape[0], sched.num_angles))
    for b in range(flat.shape[0]):
        out[b] = _one_real(flat[b], sched)
    return out


def brick_unitary_params(flat):
    """U(n) parameters ``[theta, phi, delta]`` of brick for each unitary of ``flat`` ``(B, n, n)``."""
    n = flat.shape[-1]
    sched = _sched.brick_schedule(n)
    out = np.empty((flat.shape[0], n * n))
    for b in range(flat.shape[0]):
        out[b] = _one_complex(flat[b], sched)
    return out


def brick_frame_angles(flat):
    """Angles of brick's St(n, n-1) restriction (all of brick) for frames ``(B, n, n-1)``: each frame
    is completed to SO(n) by the unit vector orthogonal to it, signed so det = +1, then nulled."""
    B, n, m = flat.shape
    full = np.empty((B, n, n))
    full[:, :, :m] = flat
    for b in range(B):
        q, _ = np.linalg.qr(flat[b], mode="complete")
        v = q[:, -1]
        full[b, :, -1] = v
        if np.linalg.det(full[b]) < 0:
            full[b, :, -1] = -v
    return brick_angles(full)
