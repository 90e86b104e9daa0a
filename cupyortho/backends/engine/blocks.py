r"""Compiled (Numba) block work of the blocked team path: meeting blocks from angles, their VJP, and
the two permute-and-antisymmetrize passes of the materialized VJP.

Imported lazily by :mod:`cupyortho.backends.blocked` at first use (``import cupyortho`` loads NumPy
only); every kernel is compiled with ``cache=True``, so a second process loads machine code instead
of recompiling.  The kernels are serial and release the GIL (``nogil``): every one takes a range
of independent jobs (blocks, rows, team slabs), and :mod:`cupyortho.backends.blocked` splits the
jobs over its own worker threads, which also run the stage GEMMs with single-threaded BLAS
(docs/threads.md: one pool, no numba pool spinning beside OpenBLAS's).  A job's numbers do not
depend on the split, so results do not depend on the thread count.

Block recursion (see :mod:`cupyortho.backends.blocked`, "Storage order").  A meeting block of ``u``
against ``u`` players is built bottom-up from its ``u*u`` leaf rotations in ``log2 u`` levels; at
every level the blocks of that level occupy one buffer of ``(2u)^2`` numbers (``4^(L-l)`` blocks of
``2^(l+1)`` squared), and the four children of block ``i`` of the next level are the blocks
``k*q + i``, ``k = 0..3`` (``X_1, X_2, Y_1, Y_2``), ``q`` the number of blocks of the next level.
A combine is ``M = (Y_1 (+) Y_2)(X_1 (+) X_2)`` on chunks of ``h``: 4 products of ``2h x h`` by
``h x 2h`` (``32 h^3`` flops).  The VJP walks the levels top-down from ``A = W - W^T`` at the block's
output: ``Y``'s children read ``A`` on their coordinates, ``X``'s read ``Y^T A Y``, a leaf reads
``A[1, 0]``; it keeps the forward levels of the one block it works on (``(L+1) (2u)^2`` numbers).
The bottom level (``4 x 4`` blocks from four leaves, and its VJP) is written in closed form.

Every buffer is flat and addressed by offsets: an array view made inside a loop costs a reference
count, which at the small low-level blocks costs more than their arithmetic.  ``u >= 2``.
"""

from __future__ import annotations

import numpy as np
import numba as nb
from numba import uint64 as _U  # unsigned offsets: indexing skips the negative-index wraparound
                                # test, which otherwise keeps LLVM from vectorizing the hot loops

_JIT = dict(cache=True, nogil=True)
_INL = dict(cache=True, nogil=True)


# --------------------------------------------------------------------------- flat small products

@nb.njit(**_INL)
def _prod(ls, lo, lc0, rs, ro, rr0, dst, o, r0, r1, c0, c1, h, tmp):
    """``dst`` block at ``o`` (``4h x 4h``): chunks ``{r0, r1} x {c0, c1}`` (of ``h``) ``=``
    ``L[:, lc0:lc0+h] @ R[rr0:rr0+h, :]``, ``L`` the ``2h x 2h`` block of ``ls`` at ``lo``, ``R``
    that of ``rs`` at ``ro``.  The hot loop accumulates one output row in ``tmp`` (``>= 2h``)."""
    b = 2 * h
    ub = _U(b)
    ostride = 2 * b
    for i in range(b):
        orow = (r0 if i < h else r1) * h + (i % h)
        for j in range(ub):
            tmp[j] = 0
        lrow = lo + i * b + lc0
        if h == 1:
            lv = ls[_U(lrow)]
            base = _U(ro + rr0 * b)
            for j in range(ub):
                tmp[j] += lv * rs[base + j]
        else:
            for k in range(0, h, 2):  # two rows of R per pass: half the traffic on tmp
                l0 = ls[_U(lrow + k)]
                l1 = ls[_U(lrow + k + 1)]
                b0 = _U(ro + (rr0 + k) * b)
                b1 = b0 + ub
                for j in range(ub):
                    tmp[j] += l0 * rs[b0 + j] + l1 * rs[b1 + j]
        ob = o + orow * ostride
        for j in range(h):
            dst[ob + c0 * h + j] = tmp[j]
            dst[ob + c1 * h + j] = tmp[h + j]


@nb.njit(**_INL)
def _fix(src, o, perm, b, fix):
    """``fix`` (``b x b``) ``= Y_2[perm][:, perm]``, ``Y_2`` the block of ``src`` at ``o``."""
    for i in range(b):
        row = o + perm[i] * b
        for j in range(b):
            fix[i * b + j] = src[row + perm[j]]


@nb.njit(**_INL)
def _cs(cs, slots, leaf, r):
    """``(cos, sin)`` of the angle in slot ``slots[leaf, r]`` (``cs`` ``(A + 1, 2)``, slot ``A`` the
    zero angle of dropped pairs)."""
    q = slots[leaf, r]
    return cs[q, 0], cs[q, 1]


@nb.njit(**_JIT)
def _forward_levels(cs, slots, r, levels, perms, saved, fix, tmp):
    """Every level ``1..L`` of block ``r`` into ``saved`` (flat, ``(2u)^2`` numbers per level: the
    ``4^(L-l)`` blocks of level ``l``, each ``2^(l+1)`` squared, in storage order)."""
    BB = 4 * 4 ** levels
    q1 = 4 ** (levels - 1)
    o1 = BB
    for i in range(q1):
        c1, s1 = _cs(cs, slots, i, r)            # X_1 on (a0, b0)
        c2, s2 = _cs(cs, slots, q1 + i, r)       # X_2 on (a1, b1)
        c3, s3 = _cs(cs, slots, 2 * q1 + i, r)   # Y_1 on (a0, b1)
        c4, s4 = _cs(cs, slots, 3 * q1 + i, r)   # Y_2 on (a1, b0)
        o = o1 + 16 * i  # storage [a0, a1, b0, b1]; M = Y X
        saved[o + 0] = c3 * c1
        saved[o + 1] = -s3 * s2
        saved[o + 2] = -c3 * s1
        saved[o + 3] = -s3 * c2
        saved[o + 4] = -s4 * s1
        saved[o + 5] = c4 * c2
        saved[o + 6] = -s4 * c1
        saved[o + 7] = -c4 * s2
        saved[o + 8] = c4 * s1
        saved[o + 9] = s4 * c2
        saved[o + 10] = c4 * c1
        saved[o + 11] = -s4 * s2
        saved[o + 12] = s3 * c1
        saved[o + 13] = c3 * s2
        saved[o + 14] = -s3 * s1
        saved[o + 15] = c3 * c2
    for lev in range(1, levels):
        b = 2 ** (lev + 1)  # children's size
        h = b // 2
        bb = b * b
        q = 4 ** (levels - lev - 1)  # blocks of the next level
        src = lev * BB
        dst = (lev + 1) * BB
        perm = perms[lev]
        for i in range(q):
            x1 = src + i * bb
            x2 = src + (q + i) * bb
            y1 = src + (2 * q + i) * bb
            y2 = src + (3 * q + i) * bb
            o = dst + i * 4 * bb
            _fix(saved, y2, perm, b, fix)
            _prod(saved, y1, 0, saved, x1, 0, saved, o, 0, 3, 0, 2, h, tmp)
            _prod(saved, y1, h, saved, x2, h, saved, o, 0, 3, 1, 3, h, tmp)
            _prod(fix, 0, h, saved, x1, h, saved, o, 1, 2, 0, 2, h, tmp)
            _prod(fix, 0, 0, saved, x2, 0, saved, o, 1, 2, 1, 3, h, tmp)


# --------------------------------------------------------------------------- meeting blocks

@nb.njit(**_JIT)
def meet_blocks(cs, slots, r0, levels, perms, inv, out, j0, j1):
    """Meeting blocks in *natural* local order.

    Args:
        cs: ``(Bt, A + 1, 2)`` cosines and sines of the angles, slot ``A`` the zero angle.
        slots: ``(u*u, *)`` leaf angle slots, in the leaf layout of ``blocked.build_meet``; blocks
            ``r0 .. r0 + R - 1`` are built, ``R`` from ``out``.  levels: ``log2 u >= 1``.
        perms: ``(levels, 2u)``: ``perms[l, :2^(l+1)]`` the ``Y_2`` storage permutation of level ``l``.
        inv: ``(2u,)`` storage position of each natural local index.
        out: ``(Bt, R, 2u, 2u)``; the blocks of jobs ``j0 <= job < j1`` (``job = bt * R + r``) are
            written, so callers split the ``Bt * R`` jobs over their threads (any split gives the
            same numbers).
    """
    R = out.shape[1]
    b = out.shape[-1]
    BB = b * b
    saved = np.empty((levels + 1) * BB, dtype=out.dtype)
    fix = np.empty(BB // 4, dtype=out.dtype)
    tmp = np.empty(b, dtype=out.dtype)
    for job in range(j0, j1):
        bt = job // R
        r = job - bt * R
        _forward_levels(cs[bt], slots, r0 + r, levels, perms, saved, fix, tmp)
        top = levels * BB
        for i in range(b):
            row = top + inv[i] * b
            for j in range(b):
                out[bt, r, i, j] = saved[row + inv[j]]


@nb.njit(**_INL)
def _zrows(ys, yo, ycol, b2, h, ayy, arow, bs, c0, c1, z, zrow):
    """``z[zrow + i, c0:c1] = sum_k Y[k, ycol + i] ayy[arow + k, c0:c1]``, ``i < h``, ``k < 2h``
    (``Y`` the ``2h x 2h`` block of ``ys`` at ``yo``)."""
    w = _U(c1 - c0)
    ubs = _U(bs)
    for i in range(h):
        zr = _U((zrow + i) * bs + c0)
        for j in range(w):
            z[zr + j] = 0
        for k in range(0, b2, 2):
            y0 = ys[_U(yo + k * b2 + ycol + i)]
            y1 = ys[_U(yo + (k + 1) * b2 + ycol + i)]
            a0 = _U((arow + k) * bs + c0)
            a1 = a0 + ubs
            for j in range(w):
                z[zr + j] += y0 * ayy[a0 + j] + y1 * ayy[a1 + j]


@nb.njit(**_INL)
def _ctile(z, zrow, zcol, bs, ys, yo, ycol, b2, h, dst, o, ostride, neg_t, tmp):
    """``C = z[zrow:zrow+h, zcol:zcol+2h] @ Y[:, ycol:ycol+h]`` into ``dst`` at ``o`` (row stride
    ``ostride``); with ``neg_t >= 0`` also ``-C^T`` at ``dst[neg_t]``."""
    uh = _U(h)
    ub2 = _U(b2)
    for i in range(h):
        for j in range(uh):
            tmp[j] = 0
        zr = (zrow + i) * bs + zcol
        for k in range(0, b2, 2):
            z0 = z[_U(zr + k)]
            z1 = z[_U(zr + k + 1)]
            r0 = _U(yo + k * b2 + ycol)
            r1 = r0 + ub2
            for j in range(uh):
                tmp[j] += z0 * ys[r0 + j] + z1 * ys[r1 + j]
        for j in range(h):
            dst[o + i * ostride + j] = tmp[j]
        if neg_t >= 0:
            for j in range(h):
                dst[neg_t + j * ostride + i] = -tmp[j]


@nb.njit(**_JIT)
def _level_vjp(cur, a, bs, saved, y1, y2, perm, nxt, ox1, ox2, oy1, oy2, ayy, z, fix, tmp):
    """One level of the meeting-block VJP: ``A`` of a parent (``bs x bs`` at ``cur[a]``, storage
    order) -> ``A`` of its children (``bs/2`` squared, at ``nxt[ox1]`` etc.).  ``Y_1, Y_2`` are the
    forward children at ``saved[y1]``, ``saved[y2]``; ``ayy, z, fix, tmp``: scratch.

    With ``ayy`` = ``A`` in Y-order (chunks ``[0, 3, 1, 2]``, so ``Y = Y_1 (+) Y_2f``),
    ``C = Y^T ayy Y``; ``X_1`` reads ``C`` at Y-positions ``(0, 3)``, ``X_2`` at ``(2, 1)``.  ``C``
    is antisymmetric, so of the 8 tiles the children read only 6 are formed (the off-diagonal
    tile of each child is mirrored), and only the rows/columns of ``Z = Y^T ayy`` they need."""
    h = bs // 4
    b2 = 2 * h
    _fix(saved, y2, perm, b2, fix)
    for pi in range(4):
        ci = (0, 3, 1, 2)[pi]
        for s in range(h):
            src = a + (ci * h + s) * bs
            dst = (pi * h + s) * bs
            for pj in range(4):
                cj = (0, 3, 1, 2)[pj]
                for t in range(h):
                    ayy[dst + pj * h + t] = cur[src + cj * h + t]
    # Z rows by Y-position: P0 = Y_1 cols [0, h) (full width), P1 = Y_1 cols [h, 2h) (cols
    # [0, 2h)), P2 = Y_2f cols [0, h) (full), P3 = Y_2f cols [h, 2h) (cols [2h, 4h)).
    _zrows(saved, y1, 0, b2, h, ayy, 0, bs, 0, bs, z, 0)
    _zrows(saved, y1, h, b2, h, ayy, 0, bs, 0, b2, z, h)
    _zrows(fix, 0, 0, b2, h, ayy, b2, bs, 0, bs, z, b2)
    _zrows(fix, 0, h, b2, h, ayy, b2, bs, b2, bs, z, 3 * h)
    # X_1 = [[C00, C03], [-C03^T, C33]],  X_2 = [[C22, C21], [-C21^T, C11]]
    _ctile(z, 0, 0, bs, saved, y1, 0, b2, h, nxt, ox1, b2, -1, tmp)
    _ctile(z, 0, b2, bs, fix, 0, h, b2, h, nxt, ox1 + h, b2, ox1 + h * b2, tmp)
    _ctile(z, 3 * h, b2, bs, fix, 0, h, b2, h, nxt, ox1 + h * b2 + h, b2, -1, tmp)
    _ctile(z, b2, b2, bs, fix, 0, 0, b2, h, nxt, ox2, b2, -1, tmp)
    _ctile(z, b2, 0, bs, saved, y1, h, b2, h, nxt, ox2 + h, b2, ox2 + h * b2, tmp)
    _ctile(z, h, 0, bs, saved, y1, h, b2, h, nxt, ox2 + h * b2 + h, b2, -1, tmp)
    for s in range(b2):
        for t in range(b2):
            nxt[oy1 + s * b2 + t] = ayy[s * bs + t]
            nxt[oy2 + perm[s] * b2 + perm[t]] = ayy[(b2 + s) * bs + b2 + t]


@nb.njit(**_JIT)
def meet_blocks_vjp(cs, slots, r0, levels, perms, inv, a_nat, d, blocks, j0, j1):
    """Leaf-angle cotangents of meeting blocks given ``A = W - W^T`` at their outputs.

    Args:
        cs, slots, r0, levels, perms, inv, j0, j1: as :func:`meet_blocks`.
        a_nat: ``(Bt, R, 2u, 2u)`` ``A`` per block, natural local order.
        d: ``(Bt, u*u, R)`` leaf cotangents of blocks ``r0 ..``, written (layout of ``slots``).
        blocks: ``(Bt, R, 2u, 2u)`` or ``(0, 0, 0, 0)``: when not empty, also receives the blocks
            themselves (natural order), which the VJP builds anyway.
    """
    R = a_nat.shape[1]
    b = a_nat.shape[-1]
    BB = b * b
    dt = a_nat.dtype
    want = blocks.shape[0] > 0
    saved = np.empty((levels + 1) * BB, dtype=dt)
    fix = np.empty(BB // 4, dtype=dt)
    tmp = np.empty(b, dtype=dt)
    cur0 = np.empty(BB, dtype=dt)
    nxt0 = np.empty(BB, dtype=dt)
    ayy = np.empty(BB, dtype=dt)
    z = np.empty(BB, dtype=dt)
    for job in range(j0, j1):
        bt = job // R
        r = job - bt * R
        th = cs[bt]
        _forward_levels(th, slots, r0 + r, levels, perms, saved, fix, tmp)
        if want:
            top = levels * BB
            for i in range(b):
                row = top + inv[i] * b
                for j in range(b):
                    blocks[bt, r, i, j] = saved[row + inv[j]]
        cur = cur0
        nxt = nxt0
        for i in range(b):
            for j in range(b):
                cur[inv[i] * b + inv[j]] = a_nat[bt, r, i, j]
        for lev in range(levels, 1, -1):
            bs = 2 ** (lev + 1)  # size of the blocks whose A we hold
            q = 4 ** (levels - lev)  # their number
            chs = bs // 2
            cc = chs * chs
            fw = (lev - 1) * BB
            perm = perms[lev - 1]
            for i in range(q):
                _level_vjp(cur, i * bs * bs, bs, saved, fw + (2 * q + i) * cc, fw + (3 * q + i) * cc,
                           perm, nxt, i * cc, (q + i) * cc, (2 * q + i) * cc, (3 * q + i) * cc,
                           ayy, z, fix, tmp)
            cur, nxt = nxt, cur
        # 4 x 4 blocks [a0, a1, b0, b1]: Y_1 = (a0, b1), Y_2 = (a1, b0) act last and read
        # A[3, 0], A[2, 1]; X_1 = (a0, b0), X_2 = (a1, b1) read (Y^T A Y)[2, 0] and [3, 1].
        q1 = 4 ** (levels - 1)
        for i in range(q1):
            o = 16 * i
            c1, s1 = _cs(th, slots, 2 * q1 + i, r0 + r)
            c2, s2 = _cs(th, slots, 3 * q1 + i, r0 + r)
            d[bt, i, r] = (c2 * (cur[o + 8] * c1 + cur[o + 11] * s1)
                           - s2 * (cur[o + 4] * c1 + cur[o + 7] * s1))
            d[bt, q1 + i, r] = (c1 * (cur[o + 13] * c2 + cur[o + 14] * s2)
                                - s1 * (cur[o + 1] * c2 + cur[o + 2] * s2))
            d[bt, 2 * q1 + i, r] = cur[o + 12]
            d[bt, 3 * q1 + i, r] = cur[o + 9]


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
    tmp = np.empty((t, t), dtype=out.dtype)
    T = pos.shape[0]
    for p in range(p0, p1):
        I = p // 2
        half = p - 2 * I
        P = pos[p]
        for q in range(p, T):
            Q = pos[q]
            for i in range(t):
                src = c[I, half * t + i, q * t: q * t + t]
                tr = tmp[i]
                for j in range(t):
                    tr[j] = src[j]
            if q == p:
                for i in range(t):
                    dst = out[P * t + i, P * t: P * t + t]
                    for j in range(t):
                        dst[j] = 0.5 * (tmp[i, j] - tmp[j, i])
                continue
            # the next sweep reads only the upper block triangle (blocks of 2 slabs) and the
            # diagonal blocks: write X at (P, Q) and/or -X^T at (Q, P) where they land there
            upper = P // 2 <= Q // 2
            lower = P // 2 >= Q // 2
            if upper:
                for i in range(t):
                    dst = out[P * t + i, Q * t: Q * t + t]
                    tr = tmp[i]
                    for j in range(t):
                        dst[j] = tr[j]
            if lower:
                for j in range(t):
                    dst = out[Q * t + j, P * t: P * t + t]
                    for i in range(t):
                        dst[i] = -tmp[i, j]


# --------------------------------------------------------------------------- blocks by rounds
#
# A meeting block (two teams, ``L = 2t`` local coordinates) built by applying its ``t`` local
# rounds of ``t`` rotations to the identity, column chunk by column chunk: a chunk's ``L x CW``
# numbers stay in L1 for all ``t^2`` rotations, and each rotation is two contiguous rows of ``CW``
# numbers (vectorized).  Every block of a team schedule has the same local pairs
# (``cupyortho.schedule.team_local_rounds``), so ``pi, pj`` are shared and only the coefficients
# differ per block.  ``12 t^3`` flops per block, against ``~8 t^3`` for the recursion above, but
# at a far higher rate.  The VJP starts from ``Y = I`` and ``G = A / 2`` at the block's output
# (``G Y^T - Y G^T = A``), walks the rotations back, undoing each on both, and reads each angle's
# cotangent as ``sum(y_i g_j - y_j g_i)`` (docs/blocked.md); the undone ``Y`` is ``M^T``, so the
# block itself comes for free.

CW = 16
"""Column-chunk width of the round kernels (divides ``L = 2t`` for every ``t >= 8``)."""

_RK = dict(cache=True, nogil=True, boundscheck=False, fastmath={"contract", "reassoc"})


@nb.njit(**_RK)
def rounds_blocks(c, s, pi, pj, out, cw, j0, j1):
    """Blocks ``out[b] = R_{P-1} ... R_1 R_0`` for ``j0 <= b < j1``: rotation ``p`` acts on local
    rows ``pi[p], pj[p]`` as ``[[c, -s], [s, c]]`` with ``c[b, p], s[b, p]``.

    ``c, s`` ``(B, P)``, ``pi, pj`` ``(P,)``, ``out`` ``(B, L, L)`` (``L`` a multiple of
    :data:`CW`), written in natural local order."""
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
