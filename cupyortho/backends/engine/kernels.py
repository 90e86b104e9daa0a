r"""Numba kernels of the compiled CPU engine (imported only at the engine's first use).

Every kernel makes ONE pass over all pairs of a schedule, in a *processing order* given by the
caller (see :func:`locality_stages`), over a work array ``y`` of shape ``(B, n, k)`` that it updates
in place.  Work is split over threads (``prange``) by independent items ``(batch b, column chunk)``:
chunk ``h`` holds the columns ``[h*cw, min(k, (h+1)*cw))``.  Inside an item the pairs run in order,
so no barrier is needed between rounds (a rotation only mixes two rows of the same columns).

Coefficients are per processing position ``p``: ``c[t, p]``, ``s[t, p]`` (and ``u[t, p]`` for U(n)),
``t = tmap[b]`` the row of the parameter batch that output batch ``b`` uses.  Signs (transpose,
adjoint, undo) are folded into ``s`` by the caller; ``reverse`` walks ``p`` from last to first.

Angle-gradient partials are written per item to ``part[b, h, p]``: one sum over the chunk's columns,
in column order, by the same code whatever the number of threads; the caller adds the chunks in
chunk order.  Results are therefore bitwise identical run to run and for any thread count.

Maths: ``docs/conventions.md`` (SO(n)) and ``docs/unitary.md`` (U(n)); the formulas are those of the
NumPy reference (:mod:`cupyortho.backends.numpy_backend`, :mod:`cupyortho.backends.numpy_unitary`).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# FMA contraction, and reassociation so LLVM vectorizes the column sums of the gradient partials
# (a vector width fixed at compile time: the same code, hence the same order, for every chunk
# whatever the thread count).  No nnan/ninf: NaN and inf propagate as in NumPy.
_FM = {"contract", "reassoc"}
_OPTS = dict(cache=True, nogil=True, fastmath=_FM, boundscheck=False)


# --------------------------------------------------------------------------- plan (processing order)

@njit(cache=True)
def _find(parent, a):
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


@njit(cache=True)
def locality_stages(n, pair_i, pair_j, round_offsets, budget):
    r"""Group consecutive rounds into *stages* whose pairs split into components of at most
    ``budget`` rows (connected components of the pair graph of the stage's rounds).

    Returns ``(stage_of_q, root_of_q)``: for every round-major pair ``q`` its stage number and the
    root row of its component.  Sorting the pairs by ``(stage, root)`` stably (so ``q`` order, hence
    round order, is kept inside a component) gives an order that computes exactly the same product
    (pairs of different components of a stage touch disjoint rows, so they commute exactly) while the
    rows of one component stay in L1 for all the stage's rounds.  For team schedules the components
    are the meeting blocks of :func:`cupyortho.schedule.team_stages`; for the circle schedule they
    grow too fast and stages are single rounds.  Nothing is special-cased: any schedule's tables work.
    """
    R = round_offsets.size - 1
    Q = pair_i.size
    parent = np.arange(n)
    size = np.ones(n, dtype=np.int64)
    save_p = parent.copy()
    save_s = size.copy()
    stage_of_q = np.empty(Q, dtype=np.int64)
    root_of_q = np.empty(Q, dtype=np.int64)
    stage = 0
    start = 0  # first round of the current stage
    for r in range(R):
        save_p[:] = parent
        save_s[:] = size
        ok = True
        for q in range(round_offsets[r], round_offsets[r + 1]):
            a = _find(parent, pair_i[q])
            b = _find(parent, pair_j[q])
            if a != b:
                if size[a] < size[b]:
                    a, b = b, a
                parent[b] = a
                size[a] += size[b]
                if size[a] > budget:
                    ok = False
                    break
        if not ok and r > start:
            # close the stage [start, r): label its pairs with the roots before round r
            parent[:] = save_p
            size[:] = save_s
            for q in range(round_offsets[start], round_offsets[r]):
                stage_of_q[q] = stage
                root_of_q[q] = _find(parent, pair_i[q])
            stage += 1
            start = r
            for v in range(n):
                parent[v] = v
                size[v] = 1
            for q in range(round_offsets[r], round_offsets[r + 1]):
                a = _find(parent, pair_i[q])
                b = _find(parent, pair_j[q])
                if a != b:
                    parent[b] = a
                    size[a] += size[b]
        elif not ok:
            # a single round over budget (budget < 2): finish merging it, it is a stage of its own
            for q in range(round_offsets[r], round_offsets[r + 1]):
                a = _find(parent, pair_i[q])
                b = _find(parent, pair_j[q])
                if a != b:
                    parent[b] = a
                    size[a] += size[b]
    for q in range(round_offsets[start], round_offsets[R]):
        stage_of_q[q] = stage
        root_of_q[q] = _find(parent, pair_i[q])
    return stage_of_q, root_of_q


# --------------------------------------------------------------------------- SO(n)
#
# Each item copies its columns into private buffers ``(n, cw)`` (zero-padded past ``k``: rotations
# keep zeros zero and add exact zeros to the partials), so the inner loops run over contiguous rows
# of a fixed width with no aliasing, then copies the result back.

@njit(**_OPTS)
def _pack(buf, y, b, c0, c1):
    n, cw = buf.shape
    m = c1 - c0
    for r in range(n):
        for col in range(m):
            buf[r, col] = y[b, r, c0 + col]
        for col in range(m, cw):
            buf[r, col] = 0


@njit(**_OPTS)
def _unpack(y, buf, b, c0, c1):
    n = buf.shape[0]
    m = c1 - c0
    for r in range(n):
        for col in range(m):
            y[b, r, c0 + col] = buf[r, col]


@njit(**_OPTS)
def _so_apply_item(y, c, s, tmap, pi, pj, cw, reverse, w):
    B, n, k = y.shape
    P = pi.size
    nc = (k + cw - 1) // cw
    b = w // nc
    c0 = (w % nc) * cw
    c1 = min(k, c0 + cw)
    t = tmap[b]
    buf = np.empty((n, cw), dtype=y.dtype)
    _pack(buf, y, b, c0, c1)
    for p0 in range(P):
        p = P - 1 - p0 if reverse else p0
        cc = c[t, p]
        ss = s[t, p]
        i = pi[p]
        j = pj[p]
        for col in range(cw):
            a = buf[i, col]
            d = buf[j, col]
            buf[i, col] = cc * a - ss * d
            buf[j, col] = ss * a + cc * d
    _unpack(y, buf, b, c0, c1)


@njit(parallel=True, **_OPTS)
def so_apply(y, c, s, tmap, pi, pj, cw, reverse):
    """In place: the rotations ``p`` (rows ``pi[p], pj[p]``) applied to every column of ``y``."""
    for w in prange(y.shape[0] * ((y.shape[2] + cw - 1) // cw)):
        _so_apply_item(y, c, s, tmap, pi, pj, cw, reverse, w)


@njit(**_OPTS)
def so_apply_serial(y, c, s, tmap, pi, pj, cw, reverse):
    """:func:`so_apply` on the calling thread (small passes: no parallel region)."""
    for w in range(y.shape[0] * ((y.shape[2] + cw - 1) // cw)):
        _so_apply_item(y, c, s, tmap, pi, pj, cw, reverse, w)


@njit(**_OPTS)
def _so_apply_vjp_item(y, g, c, s, tmap, pi, pj, cw, reverse, part, zero, w):
    B, n, k = y.shape
    P = pi.size
    nc = (k + cw - 1) // cw
    b = w // nc
    h = w % nc
    c0 = h * cw
    c1 = min(k, c0 + cw)
    t = tmap[b]
    yb = np.empty((n, cw), dtype=y.dtype)
    gb = np.empty((n, cw), dtype=y.dtype)
    _pack(yb, y, b, c0, c1)
    _pack(gb, g, b, c0, c1)
    for p0 in range(P):
        p = P - 1 - p0 if reverse else p0
        cc = c[t, p]
        ss = s[t, p]
        i = pi[p]
        j = pj[p]
        acc = zero
        for col in range(cw):
            a = yb[i, col]
            d = yb[j, col]
            ya = cc * a - ss * d
            yc = ss * a + cc * d
            yb[i, col] = ya
            yb[j, col] = yc
            e = gb[i, col]
            f = gb[j, col]
            ga = cc * e - ss * f
            gc = ss * e + cc * f
            gb[i, col] = ga
            gb[j, col] = gc
            acc += ya * gc - yc * ga
        part[b, h, p] = acc
    _unpack(y, yb, b, c0, c1)
    _unpack(g, gb, b, c0, c1)


@njit(parallel=True, **_OPTS)
def so_apply_vjp(y, g, c, s, tmap, pi, pj, cw, reverse, part, zero):
    """In place, walking back: undo each rotation on ``y`` and ``g`` (``s`` already the undo sign),
    then ``part[b, h, p] = sum_cols(y_i g_j - y_j g_i)`` over chunk ``h``."""
    for w in prange(y.shape[0] * ((y.shape[2] + cw - 1) // cw)):
        _so_apply_vjp_item(y, g, c, s, tmap, pi, pj, cw, reverse, part, zero, w)


@njit(**_OPTS)
def so_apply_vjp_serial(y, g, c, s, tmap, pi, pj, cw, reverse, part, zero):
    """:func:`so_apply_vjp` on the calling thread (small passes: no parallel region)."""
    for w in range(y.shape[0] * ((y.shape[2] + cw - 1) // cw)):
        _so_apply_vjp_item(y, g, c, s, tmap, pi, pj, cw, reverse, part, zero, w)


@njit(**_OPTS)
def _so_apply_jvp_item(y, dy, c, s, dt, tmap, pi, pj, cw, reverse, w):
    B, n, k = y.shape
    P = pi.size
    nc = (k + cw - 1) // cw
    b = w // nc
    c0 = (w % nc) * cw
    c1 = min(k, c0 + cw)
    t = tmap[b]
    yb = np.empty((n, cw), dtype=y.dtype)
    db = np.empty((n, cw), dtype=y.dtype)
    _pack(yb, y, b, c0, c1)
    _pack(db, dy, b, c0, c1)
    for p0 in range(P):
        p = P - 1 - p0 if reverse else p0
        cc = c[t, p]
        ss = s[t, p]
        dd = dt[t, p]
        i = pi[p]
        j = pj[p]
        for col in range(cw):
            a = yb[i, col]
            d = yb[j, col]
            ya = cc * a - ss * d
            yc = ss * a + cc * d
            yb[i, col] = ya
            yb[j, col] = yc
            e = db[i, col]
            f = db[j, col]
            db[i, col] = cc * e - ss * f - dd * yc
            db[j, col] = ss * e + cc * f + dd * ya
    _unpack(y, yb, b, c0, c1)
    _unpack(dy, db, b, c0, c1)


@njit(parallel=True, **_OPTS)
def so_apply_jvp(y, dy, c, s, dt, tmap, pi, pj, cw, reverse):
    """In place: ``(y, dy) <- (B y, B dy + dt K y)`` rotation by rotation (signs folded in s, dt)."""
    for w in prange(y.shape[0] * ((y.shape[2] + cw - 1) // cw)):
        _so_apply_jvp_item(y, dy, c, s, dt, tmap, pi, pj, cw, reverse, w)


@njit(**_OPTS)
def so_apply_jvp_serial(y, dy, c, s, dt, tmap, pi, pj, cw, reverse):
    """:func:`so_apply_jvp` on the calling thread (small passes: no parallel region)."""
    for w in range(y.shape[0] * ((y.shape[2] + cw - 1) // cw)):
        _so_apply_jvp_item(y, dy, c, s, dt, tmap, pi, pj, cw, reverse, w)


# --------------------------------------------------------------------------- U(n)
#
# G = [[c, -s conj(u)], [s u, c]] on rows (i, j); D = diag(dg) on all rows.  ``diag`` is 0 (no
# diagonal), 1 (diagonal after the rotations) or -1 (before).

@njit(**_OPTS)
def _u_apply_item(y, c, s, u, dg, tmap, pi, pj, cw, reverse, diag, w):
    B, n, k = y.shape
    P = pi.size
    nc = (k + cw - 1) // cw
    b = w // nc
    c0 = (w % nc) * cw
    c1 = min(k, c0 + cw)
    t = tmap[b]
    if diag < 0:
        for r in range(n):
            dr = dg[t, r]
            for col in range(c0, c1):
                y[b, r, col] *= dr
    for p0 in range(P):
        p = P - 1 - p0 if reverse else p0
        cc = c[t, p]
        ss = s[t, p]
        su = ss * u[t, p]
        sub = ss * np.conj(u[t, p])
        yi = y[b, pi[p]]
        yj = y[b, pj[p]]
        for col in range(c0, c1):
            a = yi[col]
            d = yj[col]
            yi[col] = cc * a - sub * d
            yj[col] = su * a + cc * d
    if diag > 0:
        for r in range(n):
            dr = dg[t, r]
            for col in range(c0, c1):
                y[b, r, col] *= dr


@njit(parallel=True, **_OPTS)
def u_apply(y, c, s, u, dg, tmap, pi, pj, cw, reverse, diag):
    for w in prange(y.shape[0] * ((y.shape[2] + cw - 1) // cw)):
        _u_apply_item(y, c, s, u, dg, tmap, pi, pj, cw, reverse, diag, w)


@njit(**_OPTS)
def u_apply_serial(y, c, s, u, dg, tmap, pi, pj, cw, reverse, diag):
    """:func:`u_apply` on the calling thread (small passes: no parallel region)."""
    for w in range(y.shape[0] * ((y.shape[2] + cw - 1) // cw)):
        _u_apply_item(y, c, s, u, dg, tmap, pi, pj, cw, reverse, diag, w)


@njit(**_OPTS)
def _u_apply_vjp_item(y, g, c, s, u, dg, tmap, pi, pj, cw, reverse, diag, part_t, part_p, part_d, zero, w):
    B, n, k = y.shape
    P = pi.size
    nc = (k + cw - 1) // cw
    b = w // nc
    h = w % nc
    c0 = h * cw
    c1 = min(k, c0 + cw)
    t = tmap[b]
    if diag > 0:
        for r in range(n):
            back = np.conj(dg[t, r])
            acc = zero
            for col in range(c0, c1):
                acc += (np.conj(g[b, r, col]) * y[b, r, col]).imag
                y[b, r, col] *= back
                g[b, r, col] *= back
            part_d[b, h, r] = acc
    for p0 in range(P):
        p = P - 1 - p0 if reverse else p0
        cc = c[t, p]
        ss = s[t, p]
        uu = u[t, p]
        ub = np.conj(uu)
        yi = y[b, pi[p]]
        yj = y[b, pj[p]]
        gi = g[b, pi[p]]
        gj = g[b, pj[p]]
        acc_t = zero
        acc_p = zero
        for col in range(c0, c1):
            a = yi[col]
            d = yj[col]
            e = np.conj(gi[col])
            f = np.conj(gj[col])
            acc_t += (uu * f * a - ub * e * d).real
            # undo: G(-s)
            xa = cc * a + ss * ub * d
            xb = -ss * uu * a + cc * d
            yi[col] = xa
            yj[col] = xb
            acc_p += (ub * e * xb + uu * f * xa).imag
            ge = gi[col]
            gf = gj[col]
            gi[col] = cc * ge + ss * ub * gf
            gj[col] = -ss * uu * ge + cc * gf
        part_t[b, h, p] = acc_t
        part_p[b, h, p] = -ss * acc_p
    if diag < 0:
        for r in range(n):
            back = np.conj(dg[t, r])
            acc = zero
            for col in range(c0, c1):
                acc += (np.conj(g[b, r, col]) * y[b, r, col]).imag
                y[b, r, col] *= back
                g[b, r, col] *= back
            part_d[b, h, r] = acc


@njit(parallel=True, **_OPTS)
def u_apply_vjp(y, g, c, s, u, dg, tmap, pi, pj, cw, reverse, diag, part_t, part_p, part_d, zero):
    r"""In place, walking back over the ops of a forward walk whose rounds used ``s`` (sign folded)
    and whose diagonal (``diag`` as in :func:`u_apply`, ``dg`` the forward factors) ran after (1) or
    before (-1) the rounds; ``reverse`` is the direction of this backward walk.

    Per pair: ``part_t = Re sum(u conj(g_j) y_i - conj(u) conj(g_i) y_j)`` at the op's output,
    ``part_p = -s Im sum(conj(u) conj(g_i) x_j + u conj(g_j) x_i)`` at its input; per diagonal row:
    ``part_d = Im sum(conj(g_r) y_r)`` at the diagonal's output.  The caller applies the signs.
    """
    for w in prange(y.shape[0] * ((y.shape[2] + cw - 1) // cw)):
        _u_apply_vjp_item(y, g, c, s, u, dg, tmap, pi, pj, cw, reverse, diag, part_t, part_p, part_d, zero, w)


@njit(**_OPTS)
def u_apply_vjp_serial(y, g, c, s, u, dg, tmap, pi, pj, cw, reverse, diag, part_t, part_p, part_d, zero):
    """:func:`u_apply_vjp` on the calling thread (small passes: no parallel region)."""
    for w in range(y.shape[0] * ((y.shape[2] + cw - 1) // cw)):
        _u_apply_vjp_item(y, g, c, s, u, dg, tmap, pi, pj, cw, reverse, diag, part_t, part_p, part_d, zero, w)


@njit(**_OPTS)
def _u_apply_jvp_item(y, dy, c, s, u, dg, dt, dp, dd, tmap, pi, pj, cw, reverse, diag, sigma, w):
    B, n, k = y.shape
    P = pi.size
    nc = (k + cw - 1) // cw
    b = w // nc
    c0 = (w % nc) * cw
    c1 = min(k, c0 + cw)
    t = tmap[b]
    if diag < 0:
        for r in range(n):
            dr = dg[t, r]
            ir = 1j * sigma * dd[t, r]
            for col in range(c0, c1):
                yr = y[b, r, col] * dr
                y[b, r, col] = yr
                dy[b, r, col] = dy[b, r, col] * dr + ir * yr
    for p0 in range(P):
        p = P - 1 - p0 if reverse else p0
        cc = c[t, p]
        ss = s[t, p]
        uu = u[t, p]
        ub = np.conj(uu)
        dtp = dt[t, p]
        isd = 1j * ss * dp[t, p]
        yi = y[b, pi[p]]
        yj = y[b, pj[p]]
        di = dy[b, pi[p]]
        dj = dy[b, pj[p]]
        for col in range(c0, c1):
            a = yi[col]
            d = yj[col]
            ya = cc * a - ss * ub * d
            yb = ss * uu * a + cc * d
            yi[col] = ya
            yj[col] = yb
            e = di[col]
            f = dj[col]
            di[col] = cc * e - ss * ub * f - dtp * ub * yb + isd * ub * d
            dj[col] = ss * uu * e + cc * f + dtp * uu * ya + isd * uu * a
    if diag > 0:
        for r in range(n):
            dr = dg[t, r]
            ir = 1j * sigma * dd[t, r]
            for col in range(c0, c1):
                yr = y[b, r, col] * dr
                y[b, r, col] = yr
                dy[b, r, col] = dy[b, r, col] * dr + ir * yr


@njit(parallel=True, **_OPTS)
def u_apply_jvp(y, dy, c, s, u, dg, dt, dp, dd, tmap, pi, pj, cw, reverse, diag, sigma):
    r"""In place: ``(y, dy)`` through the ops; a round adds ``dt K y + i s dp (conj(u) x_j, u x_i)``
    (``dt`` with the sign folded in), the diagonal ``dy <- D dy + i sigma dd y``."""
    for w in prange(y.shape[0] * ((y.shape[2] + cw - 1) // cw)):
        _u_apply_jvp_item(y, dy, c, s, u, dg, dt, dp, dd, tmap, pi, pj, cw, reverse, diag, sigma, w)


@njit(**_OPTS)
def u_apply_jvp_serial(y, dy, c, s, u, dg, dt, dp, dd, tmap, pi, pj, cw, reverse, diag, sigma):
    """:func:`u_apply_jvp` on the calling thread (small passes: no parallel region)."""
    for w in range(y.shape[0] * ((y.shape[2] + cw - 1) // cw)):
        _u_apply_jvp_item(y, dy, c, s, u, dg, dt, dp, dd, tmap, pi, pj, cw, reverse, diag, sigma, w)
