r"""Numba kernels of the compiled CPU engine (imported only at the engine's first use).

Every kernel makes ONE pass over all pairs of a schedule, in a *processing order* given by the
caller (see :func:`locality_stages`), over a work array ``y`` of shape ``(B, n, k)`` that it updates
in place.  Work is split over threads (``prange``) by independent items ``(batch b, column chunk)``:
chunk ``h`` holds the columns ``[h*cw, min(k, (h+1)*cw))``.  Inside an item the pairs run in order,
so no barrier is needed between rounds (a rotation only mixes two rows of the same columns).

Coefficients are per processing position ``p``: ``c[t, p]``, ``s[t, p]`` (and ``u[t, p]`` for U(n)),
``t = tmap[b]`` the row of the parameter batch that output batch ``b`` uses.  The SO(n) apply and
VJP kernels take the sign of the rotations (transpose, undo) as ``sgn`` and walk an op stream of
8-row register blocks and single rotations over 64-byte SIMD tiles (see "SIMD tiles" below); the
other kernels take signs folded into ``s`` by the caller.  ``reverse`` walks ``p`` from last to first.

Angle-gradient partials are written per item to ``part[b, h, p]``: one sum over the chunk's columns,
in column order, by the same code whatever the number of threads; the caller adds the chunks in
chunk order.  Results are therefore bitwise identical run to run and for any thread count.

Maths: ``docs/conventions.md`` (SO(n)) and ``docs/unitary.md`` (U(n)); the formulas are those of the
NumPy reference (:mod:`cupyortho.backends.numpy_backend`, :mod:`cupyortho.backends.numpy_unitary`).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

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


# --------------------------------------------------------------------------- coefficients
#
# cos and sin of the angles gathered into processing order, in one parallel pass: a scalar gather of
# a block of angles (vector gathers are slow on this hardware and LLVM does not emit them here), then
# a branch-free sincos that LLVM vectorizes.  float32: Cody-Waite reduction by pi/2 in three float32
# parts and the Cephes sinf/cosf polynomials (error about 1.5 ulp, against NumPy's 1.2), valid for
# |x| <= 8192.  float64: two-part reduction and the fdlibm kernels __kernel_sin / __kernel_cos
# (about 1 ulp), valid for |x| <= 1e5.  Larger |x|, inf and NaN take libm's cos and sin.

_TRIG = dict(cache=True, nogil=True, fastmath={"contract"}, boundscheck=False)  # no reassociation
COEF_BLOCK = 4096
"""Angles per work item of :func:`coefficients`."""
TRIG_LIMIT32 = 8192.0
TRIG_LIMIT64 = 1e5
_F = np.float32
_INV_PIO2_F, _HALF_F, _ONE_F = _F(0.636619772367581343), _F(0.5), _F(1.0)
_P1_F, _P2_F, _P3_F = _F(1.5703125), _F(4.837512969970703125e-4), _F(7.54978995489188216e-8)
_S1_F, _S2_F, _S3_F = _F(-1.6666654611e-1), _F(8.3321608736e-3), _F(-1.9515295891e-4)
_C1_F, _C2_F, _C3_F = _F(4.166664568298827e-2), _F(-1.388731625493765e-3), _F(2.443315711809948e-5)
_INV_PIO2 = 6.36619772367581382433e-01
_PIO2_1 = 1.57079632673412561417e+00   # the first 33 bits of pi/2
_PIO2_1T = 6.07710050650619224932e-11  # pi/2 - _PIO2_1
_S1, _S2, _S3 = -1.66666666666666324348e-01, 8.33333333332248946124e-03, -1.98412698298579493134e-04
_S4, _S5, _S6 = 2.75573137070700676789e-06, -2.50507602534068634195e-08, 1.58969099521155010221e-10
_C1, _C2, _C3 = 4.16666666666666019037e-02, -1.38888888888741095749e-03, 2.48015872894767294178e-05
_C4, _C5, _C6 = -2.75573143513906633035e-07, 2.08757232129817482790e-09, -1.13596475577881948265e-11


@njit(**_TRIG)
def _quadrant(q, cs, sn):
    """``(cos, sin)`` of ``r + q pi/2`` from those of ``r``."""
    odd = (q & 1) == 1
    s2 = cs if odd else sn
    c2 = sn if odd else cs
    s2 = -s2 if (q & 2) != 0 else s2
    c2 = -c2 if ((q + 1) & 2) != 0 else c2
    return c2, s2


@njit(**_TRIG)
def _sincos32(x):
    """float32 ``(cos x, sin x)`` for ``|x| <= TRIG_LIMIT32``."""
    k = np.floor(x * _INV_PIO2_F + _HALF_F)
    r = ((x - k * _P1_F) - k * _P2_F) - k * _P3_F
    z = r * r
    sn = r + r * z * (_S1_F + z * (_S2_F + z * _S3_F))
    cs = _ONE_F - _HALF_F * z + z * z * (_C1_F + z * (_C2_F + z * _C3_F))
    return _quadrant(np.int32(k), cs, sn)


@njit(**_TRIG)
def _sincos64(x):
    """float64 ``(cos x, sin x)`` for ``|x| <= TRIG_LIMIT64``."""
    k = np.floor(x * _INV_PIO2 + 0.5)
    r = (x - k * _PIO2_1) - k * _PIO2_1T
    z = r * r
    sn = r + r * z * (_S1 + z * (_S2 + z * (_S3 + z * (_S4 + z * (_S5 + z * _S6)))))
    hz = 0.5 * z
    w = 1.0 - hz
    cs = w + (((1.0 - w) - hz) + z * z * (_C1 + z * (_C2 + z * (_C3 + z * (_C4 + z * (_C5 + z * _C6))))))
    return _quadrant(np.int64(k), cs, sn)


@njit(**_TRIG)
def _coefficients_item(theta, aidx, c, s, w):
    T, P = c.shape
    nb = (P + COEF_BLOCK - 1) // COEF_BLOCK
    t = w // nb
    p0 = (w % nb) * COEF_BLOCK
    m = min(P, p0 + COEF_BLOCK) - p0
    x = np.empty(m, dtype=c.dtype)
    cv = c[t, p0:p0 + m]  # views: indices from range() need no negative-index wraparound, so
    sv = s[t, p0:p0 + m]  # LLVM sees consecutive accesses and vectorizes
    av = aidx[p0:p0 + m]
    single = c.itemsize == 4
    limit = TRIG_LIMIT32 if single else TRIG_LIMIT64
    for q in range(m):
        x[q] = theta[t, av[q]]
    if single:
        for q in range(m):
            cc, ss = _sincos32(x[q])
            cv[q] = cc
            sv[q] = ss
    else:
        for q in range(m):
            cc, ss = _sincos64(x[q])
            cv[q] = cc
            sv[q] = ss
    big = False  # a separate scan: a flag in the loops above stops LLVM vectorizing them
    for q in range(m):
        if not np.abs(x[q]) <= limit:
            big = True
            break
    if big:
        for q in range(m):
            v = np.float64(theta[t, av[q]])
            if not np.abs(v) <= limit:  # large, inf or NaN: libm
                cv[q] = np.cos(v)
                sv[q] = np.sin(v)


@njit(parallel=True, **_TRIG)
def coefficients(theta, aidx, c, s):
    """``c[t, p] = cos(theta[t, aidx[p]])``, ``s[t, p] = sin(...)``: theta ``(T, A)``, ``c, s``
    ``(T, P)`` of the kernels' dtype."""
    for w in prange(c.shape[0] * ((c.shape[1] + COEF_BLOCK - 1) // COEF_BLOCK)):
        _coefficients_item(theta, aidx, c, s, w)


@njit(**_TRIG)
def coefficients_serial(theta, aidx, c, s):
    """:func:`coefficients` on the calling thread."""
    for w in range(c.shape[0] * ((c.shape[1] + COEF_BLOCK - 1) // COEF_BLOCK)):
        _coefficients_item(theta, aidx, c, s, w)


# --------------------------------------------------------------------------- SIMD tiles (LLVM IR)
#
# The SO(n) apply and VJP passes work on *tiles*: ``W`` consecutive columns of a row, one 64-byte
# vector (``W = 16`` float32, ``8`` float64), in an item's private buffer whose width is padded to a
# multiple of ``W``.  The operations below are emitted as LLVM vector IR (``numba.extending.
# intrinsic``): LLVM's loop vectorizer cannot prove that two rows of one buffer do not overlap, so it
# would add run-time checks and remainder loops around every rotation; here there are none.
#
# A *block* is the unit of a team schedule's meeting (``schedule.meeting_stages`` with ``u = 4``):
# 8 rows, 4 rounds, 16 rotations in the local pattern ``BLOCK`` (slots ``2q`` are one team's rows,
# ``2q + 1`` the other's; round ``l`` pairs slot ``2q`` with ``2((q + shift_l) mod 4) + 1``, shifts
# ``0, 2, 1, 3``).  A block loads its 8 row tiles once, applies its 16 rotations in registers and
# stores them once: half a load and half a store per rotation instead of two of each.

BLOCK = ((0, 1), (2, 3), (4, 5), (6, 7), (0, 5), (2, 7), (4, 1), (6, 3),
         (0, 3), (2, 5), (4, 7), (6, 1), (0, 7), (2, 1), (4, 3), (6, 5))
"""Local pattern of a block: rotation ``m`` acts on slots ``BLOCK[m]`` (first slot = row ``i``)."""
BLOCK_ROWS = 8
BLOCK_ROTS = 16

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _lanes(dt):
    return 64 // (4 if dt == types.float32 else 8)


def _vec(context, dt):
    lt = context.get_value_type(dt)
    return ir.VectorType(lt, _lanes(dt))


def _data(context, builder, aty, a):
    return context.make_array(aty)(context, builder, a).data


def _i64(builder, v):
    return builder.sext(v, _I64) if v.type.width < 64 else v


def _vload(builder, base, off, vt):
    return builder.load(builder.bitcast(builder.gep(base, [off]), vt.as_pointer()), align=4)


def _vstore(builder, v, base, off, vt):
    builder.store(v, builder.bitcast(builder.gep(base, [off]), vt.as_pointer()), align=4)


def _splat(builder, x, vt):
    v = builder.insert_element(ir.Constant(vt, ir.Undefined), x, ir.Constant(_I32, 0))
    mask = ir.Constant(ir.VectorType(_I32, vt.count), [0] * vt.count)
    return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined), mask)


def _fma(builder, a, b, c):
    vt = a.type
    name = "llvm.fma.v%d%s" % (vt.count, "f32" if str(vt.element) == "float" else "f64")
    return builder.call(cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt] * 3), name),
                        [a, b, c])


def _rotate(builder, a, d, cv, sv, nsv):
    """``(c a - s d, s a + c d)`` on vectors (``nsv = -s``)."""
    return _fma(builder, cv, a, builder.fmul(nsv, d)), _fma(builder, cv, d, builder.fmul(sv, a))


def _cs(builder, cbase, sbase, off, sgn, vt):
    """Splats of ``c[off]``, ``sgn * s[off]`` and ``-sgn * s[off]``."""
    c = builder.load(builder.gep(cbase, [off]))
    s = builder.fmul(sgn, builder.load(builder.gep(sbase, [off])))
    return _splat(builder, c, vt), _splat(builder, s, vt), _splat(builder, builder.fneg(s), vt)


def _halves(builder, v):
    """Sum of the two halves of a vector (a vector of half the lanes)."""
    h = v.type.count // 2
    und = ir.Constant(v.type, ir.Undefined)
    lo = builder.shuffle_vector(v, und, ir.Constant(ir.VectorType(_I32, h), list(range(h))))
    hi = builder.shuffle_vector(v, und, ir.Constant(ir.VectorType(_I32, h), list(range(h, 2 * h))))
    return builder.fadd(lo, hi)


def _hsum(builder, v):
    """Horizontal sum of one vector, in a fixed tree order."""
    while v.type.count > 1:
        v = _halves(builder, v)
    return builder.extract_element(v, ir.Constant(_I32, 0))


def _tree(builder, vecs):
    """Lane sums of ``vecs`` (one vector per rotation, in rotation order) packed into as few vectors
    as possible, in rotation order: pairs are merged by shuffles, halving the lanes per rotation
    each level (a fixed order, so fixed bits)."""
    W = vecs[0].type.count
    g = W
    while g > 1 and len(vecs) > 1:
        h = g // 2
        lo_idx = [r * g + q for r in range(W // g) for q in range(h)]
        lo_idx = lo_idx + [W + i for i in lo_idx]
        hi_idx = [i + h for i in lo_idx]
        out = []
        for i in range(0, len(vecs), 2):
            a, b = vecs[i], vecs[i + 1]
            lo = builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, W), lo_idx))
            hi = builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, W), hi_idx))
            out.append(builder.fadd(lo, hi))
        vecs = out
        g = h
    return vecs


@intrinsic
def _address(typingctx, a):
    """Address of an array's data (to align a buffer)."""
    def codegen(context, builder, sig, args):
        return builder.ptrtoint(_data(context, builder, sig.args[0], args[0]), _I64)
    return types.int64(a), codegen


@intrinsic
def _rot(typingctx, buf, oi, oj, c, s):
    """One rotation on the tiles at flat offsets ``oi`` (row i) and ``oj`` (row j) of ``buf``."""
    def codegen(context, builder, sig, args):
        b, oi_, oj_, c_, s_ = args
        vt = _vec(context, sig.args[0].dtype)
        base = _data(context, builder, sig.args[0], b)
        oi_, oj_ = _i64(builder, oi_), _i64(builder, oj_)
        cv, sv = _splat(builder, c_, vt), _splat(builder, s_, vt)
        nsv = _splat(builder, builder.fneg(s_), vt)
        a, d = _rotate(builder, _vload(builder, base, oi_, vt), _vload(builder, base, oj_, vt), cv, sv, nsv)
        _vstore(builder, a, base, oi_, vt)
        _vstore(builder, d, base, oj_, vt)
        return context.get_dummy_value()
    return types.void(buf, oi, oj, c, s), codegen


@intrinsic
def _rot_vjp(typingctx, yb, gb, oi, oj, c, s):
    """One rotation on the tiles of ``yb`` and of ``gb``; returns the tile's sum of
    ``y_i g_j - y_j g_i`` after it."""
    def codegen(context, builder, sig, args):
        y_, g_, oi_, oj_, c_, s_ = args
        vt = _vec(context, sig.args[0].dtype)
        yb_ = _data(context, builder, sig.args[0], y_)
        gb_ = _data(context, builder, sig.args[1], g_)
        oi_, oj_ = _i64(builder, oi_), _i64(builder, oj_)
        cv, sv = _splat(builder, c_, vt), _splat(builder, s_, vt)
        nsv = _splat(builder, builder.fneg(s_), vt)
        ya, yc = _rotate(builder, _vload(builder, yb_, oi_, vt), _vload(builder, yb_, oj_, vt), cv, sv, nsv)
        ga, gc = _rotate(builder, _vload(builder, gb_, oi_, vt), _vload(builder, gb_, oj_, vt), cv, sv, nsv)
        for v, base, off in ((ya, yb_, oi_), (yc, yb_, oj_), (ga, gb_, oi_), (gc, gb_, oj_)):
            _vstore(builder, v, base, off, vt)
        prod = _fma(builder, ya, gc, builder.fneg(builder.fmul(yc, ga)))
        return _hsum(builder, prod)
    return yb.dtype(yb, gb, oi, oj, c, s), codegen


PREFETCH = 512
"""Positions ahead (in the walk's direction) at which a block prefetches its coefficients."""


def _prefetch(builder, base, off, step):
    """Prefetch ``base[off + step]`` into all cache levels (harmless past the array's ends)."""
    i8p = ir.IntType(8).as_pointer()
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32]), "llvm.prefetch.p0")
    p = builder.bitcast(builder.gep(base, [builder.add(off, ir.Constant(_I64, step))]), i8p)
    builder.call(fn, [p, ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])


def _block_rows(builder, idx_base, ip, stride, col):
    """Flat offsets of the 8 row tiles of a block: rows ``idx[ip + slot]``."""
    offs = []
    for q in range(BLOCK_ROWS):
        r = _i64(builder, builder.load(builder.gep(idx_base, [builder.add(ip, ir.Constant(_I64, q))])))
        offs.append(builder.add(builder.mul(r, stride), col))
    return offs


def _make_block(reverse):
    order = tuple(range(BLOCK_ROTS))[::-1] if reverse else tuple(range(BLOCK_ROTS))

    @intrinsic
    def block(typingctx, buf, idx, ip, c, s, sgn, cf, stride, col):
        def codegen(context, builder, sig, args):
            b, ix, ip_, c_, s_, sg, cf_, st_, col_ = args
            vt = _vec(context, sig.args[0].dtype)
            base = _data(context, builder, sig.args[0], b)
            ixb = _data(context, builder, sig.args[1], ix)
            cb = _data(context, builder, sig.args[3], c_)
            sb = _data(context, builder, sig.args[4], s_)
            ip_, cf_, st_, col_ = (_i64(builder, v) for v in (ip_, cf_, st_, col_))
            offs = _block_rows(builder, ixb, ip_, st_, col_)
            step = -PREFETCH if reverse else PREFETCH
            for ptr, o, st in ((cb, cf_, step), (sb, cf_, step), (ixb, ip_, step // 2)):
                _prefetch(builder, ptr, o, st)
            x = [_vload(builder, base, o, vt) for o in offs]
            for m in order:
                i, j = BLOCK[m]
                cv, sv, nsv = _cs(builder, cb, sb, builder.add(cf_, ir.Constant(_I64, m)), sg, vt)
                x[i], x[j] = _rotate(builder, x[i], x[j], cv, sv, nsv)
            for v, o in zip(x, offs):
                _vstore(builder, v, base, o, vt)
            return context.get_dummy_value()
        return types.void(buf, idx, ip, c, s, sgn, cf, stride, col), codegen

    return block


def _make_block_vjp(reverse):
    order = tuple(range(BLOCK_ROTS))[::-1] if reverse else tuple(range(BLOCK_ROTS))

    @intrinsic
    def block_vjp(typingctx, yb, gb, idx, ip, c, s, sgn, cf, stride, col, part, pf):
        def codegen(context, builder, sig, args):
            y_, g_, ix, ip_, c_, s_, sg, cf_, st_, col_, pt, pf_ = args
            vt = _vec(context, sig.args[0].dtype)
            yb_ = _data(context, builder, sig.args[0], y_)
            gb_ = _data(context, builder, sig.args[1], g_)
            ixb = _data(context, builder, sig.args[2], ix)
            cb = _data(context, builder, sig.args[4], c_)
            sb = _data(context, builder, sig.args[5], s_)
            pb = _data(context, builder, sig.args[10], pt)
            ip_, cf_, st_, col_, pf_ = (_i64(builder, v) for v in (ip_, cf_, st_, col_, pf_))
            offs = _block_rows(builder, ixb, ip_, st_, col_)
            step = -PREFETCH if reverse else PREFETCH
            for ptr, o, st in ((cb, cf_, step), (sb, cf_, step), (ixb, ip_, step // 2)):
                _prefetch(builder, ptr, o, st)
            y = [_vload(builder, yb_, o, vt) for o in offs]
            g = [_vload(builder, gb_, o, vt) for o in offs]
            prods = [None] * BLOCK_ROTS
            for m in order:
                i, j = BLOCK[m]
                cv, sv, nsv = _cs(builder, cb, sb, builder.add(cf_, ir.Constant(_I64, m)), sg, vt)
                y[i], y[j] = _rotate(builder, y[i], y[j], cv, sv, nsv)
                g[i], g[j] = _rotate(builder, g[i], g[j], cv, sv, nsv)
                prods[m] = _fma(builder, y[i], g[j], builder.fneg(builder.fmul(y[j], g[i])))
            for v, o in zip(y, offs):
                _vstore(builder, v, yb_, o, vt)
            for v, o in zip(g, offs):
                _vstore(builder, v, gb_, o, vt)
            for q, v in enumerate(_tree(builder, prods)):
                off = builder.add(pf_, ir.Constant(_I64, q * vt.count))
                _vstore(builder, builder.fadd(_vload(builder, pb, off, vt), v), pb, off, vt)
            return context.get_dummy_value()
        return types.void(yb, gb, idx, ip, c, s, sgn, cf, stride, col, part, pf), codegen

    return block_vjp


@intrinsic
def _rot_jvp(typingctx, yb, db, oi, oj, c, s, dd):
    """One rotation on the tiles of ``yb`` and its tangent on ``db``:
    ``(y_i, y_j) <- G (y_i, y_j)``, ``(d_i, d_j) <- G (d_i, d_j) + dd (-y_j, y_i)`` (new ``y``)."""
    def codegen(context, builder, sig, args):
        y_, d_, oi_, oj_, c_, s_, dd_ = args
        vt = _vec(context, sig.args[0].dtype)
        yb_ = _data(context, builder, sig.args[0], y_)
        db_ = _data(context, builder, sig.args[1], d_)
        oi_, oj_ = _i64(builder, oi_), _i64(builder, oj_)
        cv, sv = _splat(builder, c_, vt), _splat(builder, s_, vt)
        nsv = _splat(builder, builder.fneg(s_), vt)
        ddv, nddv = _splat(builder, dd_, vt), _splat(builder, builder.fneg(dd_), vt)
        ya, yc = _rotate(builder, _vload(builder, yb_, oi_, vt), _vload(builder, yb_, oj_, vt), cv, sv, nsv)
        e, f = _rotate(builder, _vload(builder, db_, oi_, vt), _vload(builder, db_, oj_, vt), cv, sv, nsv)
        e, f = _fma(builder, nddv, yc, e), _fma(builder, ddv, ya, f)
        for v, base, off in ((ya, yb_, oi_), (yc, yb_, oj_), (e, db_, oi_), (f, db_, oj_)):
            _vstore(builder, v, base, off, vt)
        return context.get_dummy_value()
    return types.void(yb, db, oi, oj, c, s, dd), codegen


def _make_block_jvp(reverse):
    order = tuple(range(BLOCK_ROTS))[::-1] if reverse else tuple(range(BLOCK_ROTS))

    @intrinsic
    def block_jvp(typingctx, yb, db, idx, ip, c, s, dt, sgn, cf, stride, col):
        def codegen(context, builder, sig, args):
            y_, d_, ix, ip_, c_, s_, dt_, sg, cf_, st_, col_ = args
            vt = _vec(context, sig.args[0].dtype)
            yb_ = _data(context, builder, sig.args[0], y_)
            db_ = _data(context, builder, sig.args[1], d_)
            ixb = _data(context, builder, sig.args[2], ix)
            cb = _data(context, builder, sig.args[4], c_)
            sb = _data(context, builder, sig.args[5], s_)
            tb = _data(context, builder, sig.args[6], dt_)
            ip_, cf_, st_, col_ = (_i64(builder, v) for v in (ip_, cf_, st_, col_))
            offs = _block_rows(builder, ixb, ip_, st_, col_)
            step = -PREFETCH if reverse else PREFETCH
            for ptr, o, stp in ((cb, cf_, step), (sb, cf_, step), (tb, cf_, step), (ixb, ip_, step // 2)):
                _prefetch(builder, ptr, o, stp)
            y = [_vload(builder, yb_, o, vt) for o in offs]
            d = [_vload(builder, db_, o, vt) for o in offs]
            for m in order:
                i, j = BLOCK[m]
                off = builder.add(cf_, ir.Constant(_I64, m))
                cv, sv, nsv = _cs(builder, cb, sb, off, sg, vt)
                _, ddv, nddv = _cs(builder, cb, tb, off, sg, vt)
                y[i], y[j] = _rotate(builder, y[i], y[j], cv, sv, nsv)
                e, f = _rotate(builder, d[i], d[j], cv, sv, nsv)
                d[i], d[j] = _fma(builder, nddv, y[j], e), _fma(builder, ddv, y[i], f)
            for v, o in zip(y, offs):
                _vstore(builder, v, yb_, o, vt)
            for v, o in zip(d, offs):
                _vstore(builder, v, db_, o, vt)
            return context.get_dummy_value()
        return types.void(yb, db, idx, ip, c, s, dt, sgn, cf, stride, col), codegen

    return block_jvp


_block_fwd, _block_rev = _make_block(False), _make_block(True)
_block_jvp_fwd, _block_jvp_rev = _make_block_jvp(False), _make_block_jvp(True)
_block_vjp_fwd, _block_vjp_rev = _make_block_vjp(False), _make_block_vjp(True)


# --------------------------------------------------------------------------- plan (blocks)

_PAT_I = np.array([a for a, _ in BLOCK], dtype=np.int64)
_PAT_J = np.array([b for _, b in BLOCK], dtype=np.int64)


@njit(cache=True)
def block_ops(pi, pj, gstart):
    r"""The op stream of the SO(n) tile kernels for pairs in processing order.

    ``gstart`` holds the first position of every group of consecutive pairs (then ``pi.size``),
    the components of :func:`locality_stages` at a budget of 8 rows.  A group of 16 pairs that is
    exactly the pattern :data:`BLOCK` on 8 distinct rows becomes one block op (``kind`` 1, its 8
    rows in ``idx``); every other pair is a single op (``kind`` 0, ``i, j`` in ``idx``).  Ops cover
    the positions in order, so the coefficients stay in processing order.
    """
    P = pi.size
    kind = np.empty(P, dtype=np.uint8)
    idx = np.empty(2 * P, dtype=np.int32)
    no = 0
    ni = 0
    for gi in range(gstart.size - 1):
        g0 = gstart[gi]
        g1 = gstart[gi + 1]
        ok = g1 - g0 == 16
        if ok:
            rows = np.empty(8, dtype=np.int64)
            for q in range(4):
                rows[2 * q] = pi[g0 + q]
                rows[2 * q + 1] = pj[g0 + q]
            for a in range(8):
                for b2 in range(a):
                    if rows[a] == rows[b2]:
                        ok = False
            if ok:
                for m in range(16):
                    if pi[g0 + m] != rows[_PAT_I[m]] or pj[g0 + m] != rows[_PAT_J[m]]:
                        ok = False
        if ok:
            kind[no] = 1
            no += 1
            for q in range(8):
                idx[ni + q] = rows[q]
            ni += 8
        else:
            for q in range(g0, g1):
                kind[no] = 0
                no += 1
                idx[ni] = pi[q]
                idx[ni + 1] = pj[q]
                ni += 2
    return kind[:no].copy(), idx[:ni].copy()



# --------------------------------------------------------------------------- SO(n)
#
# Each item copies its columns into private buffers ``(n, cwp)`` (``cwp`` the chunk width rounded
# up to whole tiles, 64-byte aligned, zero-padded past ``k``: rotations keep zeros zero and add
# exact zeros to the partials), runs the op stream tile by tile, then copies the result back.

@njit(**_OPTS)
def _tiles(y, n, cwp, W):
    """A 64-byte aligned ``(n, cwp)`` buffer of ``y``'s dtype."""
    flat = np.empty(n * cwp + W, dtype=y.dtype)
    off = ((-(_address(flat) // (64 // W))) % W + W) % W
    return flat[off:off + n * cwp].reshape((n, cwp))


@njit(**_OPTS)
def _pack(buf, y, b, c0, c1):
    n, cw = buf.shape
    m = c1 - c0
    for r in range(n):
        src = y[b, r, c0:c1]  # a view: range() indices, no wraparound, so the copy vectorizes
        dst = buf[r]
        for col in range(m):
            dst[col] = src[col]
        for col in range(m, cw):
            dst[col] = 0


@njit(**_OPTS)
def _unpack(y, buf, b, c0, c1):
    n = buf.shape[0]
    m = c1 - c0
    for r in range(n):
        src = buf[r]
        dst = y[b, r, c0:c1]
        for col in range(m):
            dst[col] = src[col]


@njit(**_OPTS)
def _item(w, k, cw):
    """Work item ``w`` of a pass over ``k`` columns in chunks of ``cw``: ``(batch b, chunk h, number of
    chunks, first column, end column)``; items run batch-major, chunk ``h`` holds ``[h*cw, min(k, (h+1)*cw))``."""
    nc = (k + cw - 1) // cw
    h = w % nc
    c0 = h * cw
    return w // nc, h, nc, c0, min(k, c0 + cw)


@njit(**_OPTS)
def _so_apply_item(y, c, s, sgn, tmap, kind, idx, cw, W, reverse, w):
    B, n, k = y.shape
    P = c.shape[1]
    b, _, _, c0, c1 = _item(w, k, cw)
    t = tmap[b]
    cf = t * P
    cwp = (cw + W - 1) // W * W
    nt = cwp // W
    buf = _tiles(y, n, cwp, W)
    _pack(buf, y, b, c0, c1)
    if reverse:
        p = P
        ip = idx.size
        for o in range(kind.size - 1, -1, -1):
            if kind[o]:
                p -= 16
                ip -= 8
                for tl in range(nt):
                    _block_rev(buf, idx, ip, c, s, sgn, cf + p, cwp, tl * W)
            else:
                p -= 1
                ip -= 2
                oi = idx[ip] * cwp
                oj = idx[ip + 1] * cwp
                cc = c[t, p]
                ss = sgn * s[t, p]
                for tl in range(nt):
                    _rot(buf, oi + tl * W, oj + tl * W, cc, ss)
    else:
        p = 0
        ip = 0
        for o in range(kind.size):
            if kind[o]:
                for tl in range(nt):
                    _block_fwd(buf, idx, ip, c, s, sgn, cf + p, cwp, tl * W)
                p += 16
                ip += 8
            else:
                oi = idx[ip] * cwp
                oj = idx[ip + 1] * cwp
                cc = c[t, p]
                ss = sgn * s[t, p]
                for tl in range(nt):
                    _rot(buf, oi + tl * W, oj + tl * W, cc, ss)
                p += 1
                ip += 2
    _unpack(y, buf, b, c0, c1)


@njit(parallel=True, **_OPTS)
def so_apply(y, c, s, sgn, tmap, kind, idx, cw, W, reverse):
    """In place: the op stream (:func:`block_ops`; position ``p`` uses ``c[t, p], sgn * s[t, p]``)
    applied to every column of ``y``; ``W`` lanes per tile (64 bytes)."""
    for w in prange(y.shape[0] * ((y.shape[2] + cw - 1) // cw)):
        _so_apply_item(y, c, s, sgn, tmap, kind, idx, cw, W, reverse, w)


@njit(**_OPTS)
def so_apply_serial(y, c, s, sgn, tmap, kind, idx, cw, W, reverse):
    """:func:`so_apply` on the calling thread (small passes: no parallel region)."""
    for w in range(y.shape[0] * ((y.shape[2] + cw - 1) // cw)):
        _so_apply_item(y, c, s, sgn, tmap, kind, idx, cw, W, reverse, w)


@njit(**_OPTS)
def _so_apply_vjp_item(y, g, c, s, sgn, tmap, kind, idx, cw, W, reverse, part, zero, w):
    B, n, k = y.shape
    P = c.shape[1]
    b, h, nc, c0, c1 = _item(w, k, cw)
    t = tmap[b]
    cf = t * P
    pf = (b * nc + h) * P
    cwp = (cw + W - 1) // W * W
    nt = cwp // W
    yb = _tiles(y, n, cwp, W)
    gb = _tiles(y, n, cwp, W)
    _pack(yb, y, b, c0, c1)
    _pack(gb, g, b, c0, c1)
    if reverse:
        p = P
        ip = idx.size
        for o in range(kind.size - 1, -1, -1):
            if kind[o]:
                p -= 16
                ip -= 8
                for q in range(16):
                    part[b, h, p + q] = zero
                for tl in range(nt):
                    _block_vjp_rev(yb, gb, idx, ip, c, s, sgn, cf + p, cwp, tl * W, part, pf + p)
            else:
                p -= 1
                ip -= 2
                oi = idx[ip] * cwp
                oj = idx[ip + 1] * cwp
                cc = c[t, p]
                ss = sgn * s[t, p]
                acc = zero
                for tl in range(nt):
                    acc += _rot_vjp(yb, gb, oi + tl * W, oj + tl * W, cc, ss)
                part[b, h, p] = acc
    else:
        p = 0
        ip = 0
        for o in range(kind.size):
            if kind[o]:
                for q in range(16):
                    part[b, h, p + q] = zero
                for tl in range(nt):
                    _block_vjp_fwd(yb, gb, idx, ip, c, s, sgn, cf + p, cwp, tl * W, part, pf + p)
                p += 16
                ip += 8
            else:
                oi = idx[ip] * cwp
                oj = idx[ip + 1] * cwp
                cc = c[t, p]
                ss = sgn * s[t, p]
                acc = zero
                for tl in range(nt):
                    acc += _rot_vjp(yb, gb, oi + tl * W, oj + tl * W, cc, ss)
                part[b, h, p] = acc
                p += 1
                ip += 2
    _unpack(y, yb, b, c0, c1)
    _unpack(g, gb, b, c0, c1)


@njit(parallel=True, **_OPTS)
def so_apply_vjp(y, g, c, s, sgn, tmap, kind, idx, cw, W, reverse, part, zero):
    """In place, walking the op stream (back when ``reverse``): undo each rotation on ``y`` and ``g``
    (``sgn`` the undo sign), then ``part[b, h, p] = sum_cols(y_i g_j - y_j g_i)`` over chunk
    ``h`` (a fixed summation order: lanes by a shuffle tree, tiles in order)."""
    for w in prange(y.shape[0] * ((y.shape[2] + cw - 1) // cw)):
        _so_apply_vjp_item(y, g, c, s, sgn, tmap, kind, idx, cw, W, reverse, part, zero, w)


@njit(**_OPTS)
def so_apply_vjp_serial(y, g, c, s, sgn, tmap, kind, idx, cw, W, reverse, part, zero):
    """:func:`so_apply_vjp` on the calling thread (small passes: no parallel region)."""
    for w in range(y.shape[0] * ((y.shape[2] + cw - 1) // cw)):
        _so_apply_vjp_item(y, g, c, s, sgn, tmap, kind, idx, cw, W, reverse, part, zero, w)


@njit(**_OPTS)
def _so_apply_jvp_item(y, dy, c, s, dt, sgn, tmap, kind, idx, cw, W, reverse, w):
    B, n, k = y.shape
    P = c.shape[1]
    b, _, _, c0, c1 = _item(w, k, cw)
    t = tmap[b]
    cf = t * P
    cwp = (cw + W - 1) // W * W
    nt = cwp // W
    yb = _tiles(y, n, cwp, W)
    db = _tiles(y, n, cwp, W)
    _pack(yb, y, b, c0, c1)
    _pack(db, dy, b, c0, c1)
    if reverse:
        p = P
        ip = idx.size
        for o in range(kind.size - 1, -1, -1):
            if kind[o]:
                p -= 16
                ip -= 8
                for tl in range(nt):
                    _block_jvp_rev(yb, db, idx, ip, c, s, dt, sgn, cf + p, cwp, tl * W)
            else:
                p -= 1
                ip -= 2
                _single_jvp(yb, db, idx, ip, c, s, dt, sgn, t, p, cwp, nt, W)
    else:
        p = 0
        ip = 0
        for o in range(kind.size):
            if kind[o]:
                for tl in range(nt):
                    _block_jvp_fwd(yb, db, idx, ip, c, s, dt, sgn, cf + p, cwp, tl * W)
                p += 16
                ip += 8
            else:
                _single_jvp(yb, db, idx, ip, c, s, dt, sgn, t, p, cwp, nt, W)
                p += 1
                ip += 2
    _unpack(y, yb, b, c0, c1)
    _unpack(dy, db, b, c0, c1)


@njit(**_OPTS)
def _single_jvp(yb, db, idx, ip, c, s, dt, sgn, t, p, cwp, nt, W):
    oi = idx[ip] * cwp
    oj = idx[ip + 1] * cwp
    cc = c[t, p]
    ss = sgn * s[t, p]
    dd = sgn * dt[t, p]
    for tl in range(nt):
        _rot_jvp(yb, db, oi + tl * W, oj + tl * W, cc, ss, dd)


@njit(parallel=True, **_OPTS)
def so_apply_jvp(y, dy, c, s, dt, sgn, tmap, kind, idx, cw, W, reverse):
    """In place: ``(y, dy) <- (B y, B dy + dt K y)`` rotation by rotation along the op stream
    (``sgn`` the sign of ``s`` and ``dt``: -1 for the transpose)."""
    for w in prange(y.shape[0] * ((y.shape[2] + cw - 1) // cw)):
        _so_apply_jvp_item(y, dy, c, s, dt, sgn, tmap, kind, idx, cw, W, reverse, w)


@njit(**_OPTS)
def so_apply_jvp_serial(y, dy, c, s, dt, sgn, tmap, kind, idx, cw, W, reverse):
    """:func:`so_apply_jvp` on the calling thread (small passes: no parallel region)."""
    for w in range(y.shape[0] * ((y.shape[2] + cw - 1) // cw)):
        _so_apply_jvp_item(y, dy, c, s, dt, sgn, tmap, kind, idx, cw, W, reverse, w)


# --------------------------------------------------------------------------- U(n)
#
# G = [[c, -s conj(u)], [s u, c]] on rows (i, j); D = diag(dg) on all rows.  ``diag`` is 0 (no
# diagonal), 1 (diagonal after the rotations) or -1 (before).

@njit(**_OPTS)
def _u_apply_item(y, c, s, u, dg, tmap, pi, pj, cw, reverse, diag, w):
    B, n, k = y.shape
    P = pi.size
    b, _, _, c0, c1 = _item(w, k, cw)
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
    b, h, nc, c0, c1 = _item(w, k, cw)
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
    b, _, _, c0, c1 = _item(w, k, cw)
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
