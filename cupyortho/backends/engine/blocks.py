r"""Compiled (Numba) block work of the blocked team path: meeting blocks and their VJP by rounds,
and the two permute-and-antisymmetrize passes of the materialized VJP.

Imported lazily by :mod:`cupyortho.backends.blocked` at first use (``import cupyortho`` loads NumPy
only); every kernel is compiled with ``cache=True``, so a second process loads machine code instead
of recompiling.  The kernels are serial and release the GIL (``nogil``): every one takes a range
of independent jobs (blocks, rows, team slabs), and :mod:`cupyortho.backends.blocked` splits the
jobs over its own worker threads, which also run the stage GEMMs with single-threaded BLAS
(docs/threads.md: one pool, no numba pool spinning beside OpenBLAS's).  A job's numbers do not
depend on the split, so results do not depend on the thread count.  Maths: docs/blocked.md.
"""

from __future__ import annotations

import numpy as np
import numba as nb

_JIT = dict(cache=True, nogil=True)


# --------------------------------------------------------------------------- materialized VJP passes

@nb.njit(**_JIT)
def antisym_gather(w, order, n, L, out, j0, j1):
    """``out[p, q] = w[o_p, o_q] - w[o_q, o_p]`` (0 where a coordinate ``>= n``), ``o = order``,
    for ``q >= L * (p // L)``: the upper block triangle of blocks of ``L``, with the diagonal
    blocks whole (the rest of ``out`` is not written).

    ``w`` ``(Bt, n, n)``, ``out`` ``(Bt, N, N)``; the rows ``j0 <= bt * N + p < j1`` are written."""
    N = out.shape[1]
    for job in range(j0, j1):
        bt = job // N
        p = job - bt * N
        op = order[p]
        row = out[bt, p]
        q0 = L * (p // L)
        if op >= n:
            row[q0:] = 0
            continue
        wr = w[bt, op]
        for q in range(q0, N):
            oq = order[q]
            if oq >= n:
                row[q] = 0
            else:
                row[q] = wr[oq] - w[bt, oq, op]


@nb.njit(**_JIT)
def scatter_mirror(c, pos, t, out, p0, p1):
    """Scatter the upper block triangle of ``S^T A S`` into the next stage's layout, mirrored.

    ``c``: ``(NB, 2t, N)``: row panel ``I`` holds, in its columns ``J*2t..``, ``J >= I``, the
    blocks ``P_I^T A_IJ P_J`` (columns ``< I*2t`` unused).  ``pos``: ``(T,)`` slab position of each
    of the current layout's team slabs in the next layout.  Writes ``out`` ``(N, N)``: tile
    ``(p, q)`` of teams to ``(pos[p], pos[q])`` and/or its negative transpose to
    ``(pos[q], pos[p])``, whichever lies in the upper block triangle of the next layout (blocks of
    two slabs; both inside a diagonal block), the only part the next sweep reads; a diagonal team
    tile ``(p, p)`` is written antisymmetrized.  The strict lower block triangle of ``out`` is
    left as it was.  Only the tiles made by team slabs ``p0 <= p < p1`` of ``c`` are written (they
    read row panel ``p // 2`` only), so callers split the slabs over their threads: no two slabs
    write the same tile.
    """
    T = pos.shape[0]
    for p in range(p0, p1):  # plain 2-D indexing throughout: a view per row costs more than its copy
        I = p // 2
        r0 = (p - 2 * I) * t
        P = pos[p]
        for q in range(p, T):
            Q = pos[q]
            if q == p:
                for i in range(t):
                    for j in range(t):
                        out[P * t + i, P * t + j] = 0.5 * (c[I, r0 + i, q * t + j] - c[I, r0 + j, q * t + i])
                continue
            # the next sweep reads only the upper block triangle (blocks of 2 slabs) and the
            # diagonal blocks: write X at (P, Q) and/or -X^T at (Q, P) where they land there
            if P // 2 <= Q // 2:
                for i in range(t):
                    for j in range(t):
                        out[P * t + i, Q * t + j] = c[I, r0 + i, q * t + j]
            if P // 2 >= Q // 2:
                for j in range(t):
                    for i in range(t):
                        out[Q * t + j, P * t + i] = -c[I, r0 + i, q * t + j]


# --------------------------------------------------------------------------- blocks by rounds
#
# A meeting block (two teams, ``L = 2t`` local coordinates) built by applying its ``t`` local
# rounds of ``t`` rotations to the identity, column chunk by column chunk: a chunk's ``L x cw``
# numbers stay in L1 for all ``t^2`` rotations, and each rotation is two contiguous rows of ``cw``
# numbers (vectorized; ``cw`` is a run-time argument on purpose: a compile-time width gets the
# loop fully unrolled and then not vectorized, since the two rows might alias).  Every block of a team schedule has the same local pairs
# (``cupyortho.schedule.team_local_rounds``), so ``pi, pj`` are shared and only the coefficients
# differ per block.  ``12 t^3`` flops per block, against ``~8 t^3`` for the level recursion of
# ``blocked.build_meet``, but at a far higher rate (n = 2048, t = 64, float32, one thread: all 496
# blocks in 47 ms against 120 ms; their VJP 124 ms against 440 ms).  The VJP starts from ``Y = I`` and ``G = A / 2`` at the block's output
# (``G Y^T - Y G^T = A``), walks the rotations back, undoing each on both, and reads each angle's
# cotangent as ``sum(y_i g_j - y_j g_i)`` (docs/blocked.md); the undone ``Y`` is ``M^T``, so the
# block itself comes for free.

_RK = dict(cache=True, nogil=True, boundscheck=False, fastmath={"contract", "reassoc"})


@nb.njit(**_RK)
def rounds_blocks(c, s, pi, pj, out, cw, j0, j1):
    """Blocks ``out[b] = R_{P-1} ... R_1 R_0`` for ``j0 <= b < j1``: rotation ``p`` acts on local
    rows ``pi[p], pj[p]`` as ``[[c, -s], [s, c]]`` with ``c[b, p], s[b, p]``.

    ``c, s`` ``(B, P)``, ``pi, pj`` ``(P,)``, ``out`` ``(B, L, L)``, written in natural local
    order; ``cw`` the column-chunk width (divides ``L``)."""
    L = out.shape[1]
    P = pi.size
    buf = np.empty((L, cw), dtype=out.dtype)
    for b in range(j0, j1):
        for c0 in range(0, L, cw):
            for r in range(L):
                for col in range(cw):
                    buf[r, col] = 1 if r == c0 + col else 0
            for p in range(P):
                cc = c[b, p]
                ss = s[b, p]
                i = pi[p]
                j = pj[p]
                for col in range(cw):
                    x = buf[i, col]
                    z = buf[j, col]
                    buf[i, col] = cc * x - ss * z
                    buf[j, col] = ss * x + cc * z
            for r in range(L):
                for col in range(cw):
                    out[b, r, c0 + col] = buf[r, col]


@nb.njit(**_RK)
def rounds_blocks_vjp(c, s, pi, pj, a, d, out, cw, zero, j0, j1):
    """Angle cotangents of the blocks of :func:`rounds_blocks` from ``A = W - W^T`` at their outputs,
    and the blocks themselves, for ``j0 <= b < j1``.

    ``a`` ``(B, L, L)`` antisymmetric, natural local order; ``d`` ``(B, P)``: ``d[b, p] =
    (Q_p^T A Q_p)[pj, pi]``, ``Q_p`` the rotations after ``p`` (the column chunks added in chunk
    order, whatever the split of blocks: results do not depend on the thread count); ``out``
    ``(B, L, L)``: the blocks (natural order); ``zero``: a zero of the dtype."""
    L = a.shape[1]
    P = pi.size
    y = np.empty((L, cw), dtype=a.dtype)
    g = np.empty((L, cw), dtype=a.dtype)
    acc = np.empty(P, dtype=a.dtype)
    for b in range(j0, j1):
        acc[:] = 0
        for c0 in range(0, L, cw):
            for r in range(L):
                for col in range(cw):
                    y[r, col] = 1 if r == c0 + col else 0
                    g[r, col] = 0.5 * a[b, r, c0 + col]
            for p0 in range(P):
                p = P - 1 - p0
                cc = c[b, p]
                ss = s[b, p]
                i = pi[p]
                j = pj[p]
                sm = zero
                for col in range(cw):
                    yi = y[i, col]
                    yj = y[j, col]
                    gi = g[i, col]
                    gj = g[j, col]
                    ui = cc * yi + ss * yj
                    uj = cc * yj - ss * yi
                    vi = cc * gi + ss * gj
                    vj = cc * gj - ss * gi
                    y[i, col] = ui
                    y[j, col] = uj
                    g[i, col] = vi
                    g[j, col] = vj
                    sm += ui * vj - uj * vi
                acc[p] += sm
            for r in range(L):  # y = M^T on this chunk's columns
                for col in range(cw):
                    out[b, c0 + col, r] = y[r, col]
        for p in range(P):
            d[b, p] = acc[p]


@nb.njit(**_RK)
def rounds_blocks_jvp(c, s, dth, pi, pj, out, dout, cw, j0, j1):
    """:func:`rounds_blocks` and the tangents ``dout[b] = d/de R(theta + e dth)`` of the blocks, for
    ``j0 <= b < j1``: per rotation ``dY <- R dY + dth R' Y`` (``R'`` the derivative of ``R``, applied
    to ``Y`` before the rotation).  ``dth`` ``(B, P)`` the angle tangents in rotation order."""
    L = out.shape[1]
    P = pi.size
    y = np.empty((L, cw), dtype=out.dtype)
    dy = np.empty((L, cw), dtype=out.dtype)
    for b in range(j0, j1):
        for c0 in range(0, L, cw):
            for r in range(L):
                for col in range(cw):
                    y[r, col] = 1 if r == c0 + col else 0
                    dy[r, col] = 0
            for p in range(P):
                cc = c[b, p]
                ss = s[b, p]
                e = dth[b, p]
                i = pi[p]
                j = pj[p]
                for col in range(cw):
                    x = y[i, col]
                    z = y[j, col]
                    dx = dy[i, col]
                    dz = dy[j, col]
                    ya = cc * x - ss * z
                    yb = ss * x + cc * z
                    y[i, col] = ya
                    y[j, col] = yb
                    dy[i, col] = cc * dx - ss * dz - e * yb
                    dy[j, col] = ss * dx + cc * dz + e * ya
            for r in range(L):
                for col in range(cw):
                    out[b, r, c0 + col] = y[r, col]
                    dout[b, r, c0 + col] = dy[r, col]
