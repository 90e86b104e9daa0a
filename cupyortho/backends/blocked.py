r"""The fast CPU path for team schedules: block-diagonal stages applied with batched GEMMs.

Design rule: three primitives carry everything -- *blocks from angles* (:func:`build_meet`,
:func:`build_rr`), *angle cotangents from a block cotangent* (:func:`meet_vjp`, :func:`rr_vjp`) and
GEMM (``numpy.matmul`` on stacks of blocks).  Block construction and the block-to-angle maps are
vectorized over every block of every stage at once; the only Python loops run over stages (``~N/u``
of them) and over the ``log2 u`` levels of the block recursion.  Nothing the caller passed is
written to.  :mod:`cupyortho.backends.numpy_backend` dispatches team schedules here and keeps the
round-by-round functions as the readable reference.

Maths (docs/design.md §8, the blocked formulation; :func:`cupyortho.schedule.team_stages`).  With granularity ``u`` (a power
of two ``<= t``), ``U = S_{K-1} \cdots S_1 S_0`` where ``S_0`` is block diagonal with the round-robin
blocks ``RR(v)``, ``v = min(t, 2u)``, of consecutive coordinates, and every later stage is block
diagonal, after a permutation of the coordinates, with ``2u x 2u`` meeting blocks.  A meeting block of
``u`` against ``u`` players ``[a_0..a_{u-1}, b_0..b_{u-1}]`` (local order) is ``M = Y X`` with
``X = X_1 (+) X_2`` on ``(a_even, b_even)``, ``(a_odd, b_odd)`` and ``Y = Y_1 (+) Y_2`` on
``(a_even, b_odd)``, ``(a_odd, roll(b_even, -1))``: four half-size meeting blocks, down to the
``2 x 2`` rotation ``[[c, -s], [s, c]]`` of one pair.  ``RR(2w) = M_w (RR(w) (+) RR(w))``.

Derivatives.  For a block ``P`` at the output of which the "W-matrix" is ``W`` (``W = \bar G_P P^T``,
``\bar G_P`` the cotangent of ``P``), only the antisymmetric part ``A = W - W^T`` matters: the angle of
a pair ``(i, j)`` of the last round gets ``A[j, i]``, and going down a level ``A <- F^T A F`` for the
factor ``F`` that acts after (the reduction-free VJP formula of docs/design.md §6, one level at a time).
``apply``: ``W = \bar g\,y^T`` per block, ``y`` the stage output (recovered by undoing stages) and
``\bar g`` its cotangent.  ``matrix``: ``A = \bar G U^T - U \bar G^T`` is conjugated stage by stage,
``A <- S^T A S``, and each stage reads its diagonal blocks.  JVPs carry ``(y, dy)`` with
``dy <- S\,dy + dS\,y``, ``dS`` from the product rule on the block recursion.

Padding: coordinates ``>= n`` (and pairs with ``i >= m`` for a Stiefel restriction) get angle 0, so
their rotations are the identity, exactly as the schedule's dropped rotations.

Execution: ``U`` itself (``matrix``, ``matrix_vjp``) runs at ``u = t`` (``N/t`` stages of ``2t x 2t``
blocks, the biggest GEMMs); sweeps over ``x`` at ``u = APPLY_GRANULARITY`` (cheaper blocks, more
stages).  Blocks are stored in a bit-reversed local order (see "Storage order" below); the stage
row orders absorb it.  Block construction and the block-to-angle maps run in ``THREADS`` threads over
independent blocks.  Costs at ``u = t``: forward ``4N^3`` flops in stage GEMMs; the materialized VJP
one GEMM for ``W``, ``8N^3`` for the two-sided sweep (``4N^3`` on the compiled slab path, which forms
only the upper block triangle of the antisymmetric ``A``), plus ``O(N^2 t)`` block work.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import _threads
from ._common import sum_to as _sum_to
from . import team_plan as _team_plan
from .team_plan import _digit_rev, _meet_leaves, _rr_leaves, _storage  # noqa: F401 (used here and by tests)
from .. import schedule as _sched

__all__ = [
    "matrix",
    "apply",
    "matrix_vjp",
    "apply_vjp",
    "matrix_jvp",
    "apply_jvp",
    "plan",
    "granularity",
]

APPLY_GRANULARITY = 4
"""Block half-size ``u`` for apply-mode sweeps over ``k`` columns: small blocks are cheaper to build
and to differentiate (the per-angle work dominates when ``k << n``), large ones make faster GEMMs.
Measured at n = 2048, k in {1, 32, 256} (float32, fwd+bwd): u = 4 is best or within 15% of it."""


THREADS = max(1, min(4, os.cpu_count() or 1))
"""Threads for the block construction and the block-to-angle maps (NumPy elementwise work, which
releases the GIL); the stage GEMMs use BLAS's own threads.  Work is split over independent blocks."""

_MIN_SPLIT = 1 << 15  # angles per thread below which splitting does not pay
_pool = None


def _split_map(fn, n_items, weight, *arrays_axes):
    """Run ``fn`` on ``THREADS`` slices of the block axis and concatenate the results.

    ``arrays_axes``: ``(array, axis)`` pairs, each sliced along its axis (the same ``n_items``
    blocks, ``weight`` angles each).  Returns ``fn``'s result, or the list of per-slice results.
    """
    global _pool
    parts = _threads.pool_size(THREADS) if n_items * weight >= 2 * _MIN_SPLIT else 1  # docs/threads.md
    parts = min(parts, n_items)
    if parts <= 1:
        return fn(*[a for a, _ in arrays_axes])
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="cupyortho")
    bounds = np.linspace(0, n_items, parts + 1).astype(int)

    def piece(k):
        sl = slice(bounds[k], bounds[k + 1])
        return fn(*[a[(slice(None),) * (axis % a.ndim) + (sl,)] for a, axis in arrays_axes])

    return list(_pool.map(piece, range(parts)))


def _build_meet_par(ang, levels, keep=False):
    """:func:`build_meet` over the block axis (last axis of ``ang``) in threads; with ``keep`` also
    returns the saved ``Y`` children, one dict per thread's slice."""
    R = ang.shape[-1]

    def run(a):
        saved = {} if keep else None
        return build_meet(a, levels, keep=saved), saved

    res = _split_map(run, R, ang.shape[-2], (ang, -1))
    if not isinstance(res, list):
        res = [res]
    blocks = res[0][0] if len(res) == 1 else np.concatenate([r[0] for r in res], axis=-3)
    return (blocks, [r[1] for r in res]) if keep else blocks


def _meet_vjp_par(ang, a, levels, keeps=None):
    """:func:`meet_vjp` over the block axis in threads (the same slices as :func:`_build_meet_par`)."""
    R = ang.shape[-1]
    if keeps is None:
        res = _split_map(lambda x, y: meet_vjp(x, y, levels), R, ang.shape[-2], (ang, -1), (a, -3))
    else:
        res = _split_map(lambda x, y, k: meet_vjp(x, y, levels, keeps[int(k[0])]),
                         R, ang.shape[-2], (ang, -1), (a, -3), (_part_index(R, len(keeps)), 0))
    return res if not isinstance(res, list) else np.concatenate(res, axis=-1)


def _part_index(R, parts):
    """For each block, the index of the thread slice it falls in (so a slice knows its own data)."""
    bounds = np.linspace(0, R, parts + 1).astype(int)
    return np.repeat(np.arange(parts), np.diff(bounds))


# --------------------------------------------------------------------------- plans

def plan(schedule, u):
    """The cached :class:`~cupyortho.backends.team_plan.TeamPlan` of a team ``schedule`` at
    granularity ``u`` (the one team-block plan, shared with the CuPy path)."""
    return _team_plan.plan(schedule, u)


def granularity(schedule, k=None):
    """Block half-size for a sweep over ``k`` columns (None: materializing ``U``): the team size for
    ``U`` itself and for wide operands (``k >= n/4``, e.g. frames with many columns, where the stage
    GEMMs dominate), :data:`APPLY_GRANULARITY` (capped by the team size) for thin ones."""
    t = schedule.team_size
    if k is None or 4 * k >= schedule.n:
        return t
    return min(t, APPLY_GRANULARITY)


# --------------------------------------------------------------------------- block recursion
#
# Storage order.  A meeting block of a = [a_0..a_{u-1}] against b is stored with rows and columns in
# the order [a[rev], b[rev]], rev the bit-reversal permutation of 0..u-1.  Then the parent's storage is
# four chunks of h = u/2, [a_even, a_odd, b_even, b_odd], each in its child's storage order, and
# M = Y X is assembled by copying contiguous chunks: Y_1 owns row chunks (0, 3), Y_2 (1, 2); X_1 owns
# column chunks (0, 2), X_2 (1, 3).  Only Y_2, a meeting with roll(b_even, -1), needs its b-part
# permuted into b_even's storage order (``_y2_perm``).  The two lowest levels run with the block index
# last ("SoA"), so NumPy works on long vectors; higher levels use batched GEMMs.

_SOA_LEVELS = 2


@functools.lru_cache(maxsize=None)
def _y2_perm(h):
    """``(perm, inverse)``: ``Y_2[perm][:, perm]`` has its b-part in ``b_even``'s storage order."""
    rev = _sched.bit_reversal(h)
    pos = np.empty(h, dtype=np.int64)
    pos[rev] = np.arange(h)
    pi = pos[(rev - 1) % h]
    perm = np.concatenate([np.arange(h), h + pi])
    inv = np.empty_like(perm)
    inv[perm] = np.arange(2 * h)
    return perm, inv


def _fix_y2(y2, h, axes):
    """Permute the rows and columns (``axes``) of Y_2 blocks into b_even storage order."""
    if h == 1:
        return y2
    perm, _ = _y2_perm(h)
    return np.take(np.take(y2, perm, axis=axes[0]), perm, axis=axes[1])


def _leaf(c, s, lead=False):
    """2x2 rotations; ``lead``: entries first (SoA, ``(2, 2, ...)``), else last."""
    shape = (2, 2) + c.shape if lead else c.shape + (2, 2)
    blk = np.empty(shape, dtype=c.dtype)
    v = blk if lead else np.moveaxis(blk, (-2, -1), (0, 1))
    v[0, 0] = c
    v[0, 1] = -s
    v[1, 0] = s
    v[1, 1] = c
    return blk


def _combine(x1, x2, y1, y2):
    r"""``M = (Y_1 (+) Y_2)(X_1 (+) X_2)`` on batched blocks ``(..., 2h, 2h)`` (storage order)."""
    h = x1.shape[-1] // 2
    y2 = _fix_y2(y2, h, (-2, -1))
    out = np.empty(x1.shape[:-2] + (4 * h, 4 * h), dtype=x1.dtype)
    o4 = out.reshape(x1.shape[:-2] + (4, h, 4, h))
    sh = x1.shape[:-2] + (2, h, 2, h)
    o4[..., 0::3, :, 0::2, :] = np.matmul(y1[..., :, :h], x1[..., :h, :]).reshape(sh)
    o4[..., 0::3, :, 1::2, :] = np.matmul(y1[..., :, h:], x2[..., h:, :]).reshape(sh)
    o4[..., 1:3, :, 0::2, :] = np.matmul(y2[..., :, h:], x1[..., h:, :]).reshape(sh)
    o4[..., 1:3, :, 1::2, :] = np.matmul(y2[..., :, :h], x2[..., :h, :]).reshape(sh)
    return out


def _mm_soa(l, r):
    """Products of SoA blocks: ``l`` ``(p, k, *B)``, ``r`` ``(k, q, *B)`` -> ``(p, q, *B)``."""
    out = l[:, 0, None] * r[None, 0]
    for k in range(1, l.shape[1]):
        out += l[:, k, None] * r[None, k]
    return out


def _combine_soa(x1, x2, y1, y2):
    """:func:`_combine` with blocks ``(2h, 2h, *B)`` (block entries first)."""
    h = x1.shape[0] // 2
    y2 = _fix_y2(y2, h, (0, 1))
    out = np.empty((4 * h, 4 * h) + x1.shape[2:], dtype=x1.dtype)
    o4 = out.reshape((4, h, 4, h) + x1.shape[2:])
    sh = (2, h, 2, h) + x1.shape[2:]
    o4[0::3, :, 0::2] = _mm_soa(y1[:, :h], x1[:h]).reshape(sh)
    o4[0::3, :, 1::2] = _mm_soa(y1[:, h:], x2[h:]).reshape(sh)
    o4[1:3, :, 0::2] = _mm_soa(y2[:, h:], x1[h:]).reshape(sh)
    o4[1:3, :, 1::2] = _mm_soa(y2[:, :h], x2[:h]).reshape(sh)
    return out


def _build_soa(ang, levels, dang=None):
    """SoA blocks ``(2u, 2u, *B)`` from leaf angles ``(u*u, *B)`` (bottom digit slowest); with ``dang``
    also their tangents."""
    c, s = np.cos(ang), np.sin(ang)
    blk = _leaf(c, s, lead=True)  # (2, 2, 4**L, *B)
    dblk = None if dang is None else _leaf(-s * dang, c * dang, lead=True)
    for lev in range(levels):
        q = 4 ** (levels - lev - 1)
        shape = blk.shape[:2] + (4, q) + blk.shape[3:]
        ch = [blk.reshape(shape)[:, :, k] for k in range(4)]
        if dblk is not None:
            dch = [dblk.reshape(shape)[:, :, k] for k in range(4)]
            dblk = _combine_soa(ch[0], ch[1], dch[2], dch[3]) + _combine_soa(dch[0], dch[1], ch[2], ch[3])
        blk = _combine_soa(*ch)
    blk = blk.reshape(blk.shape[:2] + blk.shape[3:])
    if dblk is not None:
        return blk, dblk.reshape(blk.shape)
    return blk


def build_meet(ang, levels, dang=None, keep=None):
    """Meeting blocks ``(..., R, 2u, 2u)`` (storage order) from leaf angles ``(..., u*u, R)``,
    ``u = 2**levels``; with ``dang`` returns ``(blocks, tangents)`` (product rule).

    Leaf layout: the leaf index is the base-4 number of the recursion's child choices (X1, X2, Y1,
    Y2) with the *bottom* level's digit most significant, so at every level the four children are
    contiguous slabs; ``R`` counts independent blocks.  ``keep``: a dict that receives, for every
    GEMM level ``lev``, the ``Y`` children combined there, ``(..., 2, 4**(levels-lev-1), R, b, b)``
    (:func:`meet_vjp` reads them instead of rebuilding).
    """
    ls = min(levels, _SOA_LEVELS)
    lead = ang.shape[:-2]
    R = ang.shape[-1]
    rest = 4 ** (levels - ls)
    # SoA part: the ls bottom digits (slowest) first, everything else is the batch
    a = np.moveaxis(ang.reshape(lead + (4 ** ls, rest, R)), -3, 0)
    d = None if dang is None else np.moveaxis(dang.reshape(lead + (4 ** ls, rest, R)), -3, 0)
    res = _build_soa(a, ls, d)
    blk, dblk = res if dang is not None else (res, None)
    blk = np.ascontiguousarray(np.moveaxis(blk, (0, 1), (-2, -1)))  # (..., rest, R, b, b)
    if dblk is not None:
        dblk = np.ascontiguousarray(np.moveaxis(dblk, (0, 1), (-2, -1)))
    for lev in range(ls, levels):
        q = 4 ** (levels - lev - 1)
        shape = lead + (4, q, R) + blk.shape[-2:]
        ch = [blk.reshape(shape)[..., k, :, :, :, :] for k in range(4)]
        if keep is not None:
            keep[lev] = np.ascontiguousarray(blk.reshape(shape)[..., 2:, :, :, :, :])
        if dblk is not None:
            dch = [dblk.reshape(shape)[..., k, :, :, :, :] for k in range(4)]
            dblk = _combine(ch[0], ch[1], dch[2], dch[3]) + _combine(dch[0], dch[1], ch[2], ch[3])
        blk = _combine(*ch)
    out = blk.reshape(lead + (R,) + blk.shape[-2:])
    if dblk is not None:
        return out, dblk.reshape(out.shape)
    return out



_YORDER = np.array([0, 3, 1, 2])


def _vjp_level(ayy, yb, h, soa):
    """``C = Y^T A Y`` from ``A`` in Y-order (chunks Y_1 | Y_2) and ``yb = (Y_1, Y_2)`` -> children
    ``(A_X1, A_X2)``."""
    if soa:
        left = np.concatenate([_mm_soa(np.swapaxes(yb[g], 0, 1), ayy[2 * h * g: 2 * h * (g + 1)])
                               for g in range(2)], axis=0)
        c = np.concatenate([_mm_soa(left[:, 2 * h * g: 2 * h * (g + 1)], yb[g]) for g in range(2)], axis=1)
        c4 = c.reshape((4, h, 4, h) + c.shape[2:])
        ax1 = c4[0::3, :, 0::3].reshape((2 * h, 2 * h) + c.shape[2:])
        ax2 = c4[2:0:-1, :, 2:0:-1].reshape((2 * h, 2 * h) + c.shape[2:])
        return ax1, ax2
    batch = ayy.shape[:-2]
    left = np.matmul(np.swapaxes(yb, -1, -2), ayy.reshape(batch + (2, 2 * h, 4 * h)))
    left = left.reshape(batch + (4 * h, 4 * h))
    c = np.concatenate([np.matmul(left[..., :, : 2 * h], yb[..., 0, :, :]),
                        np.matmul(left[..., :, 2 * h:], yb[..., 1, :, :])], axis=-1)
    c4 = c.reshape(batch + (4, h, 4, h))
    ax1 = c4[..., 0::3, :, 0::3, :].reshape(batch + (2 * h, 2 * h))
    ax2 = c4[..., 2:0:-1, :, 2:0:-1, :].reshape(batch + (2 * h, 2 * h))
    return ax1, ax2


def _soa_leaf_levels(ang, a, levels):
    """The last one or two levels of :func:`_meet_vjp_soa` (``levels <= 1``)."""
    if levels == 0:
        return a[1, 0][None]
    # closed form for a 4x4 meeting block, storage [a0, a1, b0, b1]: Y_1 = (a0, b1) and
    # Y_2 = (a1, b0) act last and read A[3, 0], A[2, 1]; X_1 = (a0, b0), X_2 = (a1, b1) read
    # (Y^T A Y)[2, 0] and [3, 1], each a sum of four entries of A.
    c1, s1 = np.cos(ang[2]), np.sin(ang[2])
    c2, s2 = np.cos(ang[3]), np.sin(ang[3])
    d = np.empty((4,) + a.shape[2:], dtype=a.dtype)
    d[0] = c2 * (a[2, 0] * c1 + a[2, 3] * s1) - s2 * (a[1, 0] * c1 + a[1, 3] * s1)
    d[1] = c1 * (a[3, 1] * c2 + a[3, 2] * s2) - s1 * (a[0, 1] * c2 + a[0, 2] * s2)
    d[2] = a[3, 0]
    d[3] = a[2, 1]
    return d


def _meet_vjp_soa(ang, a, levels):
    """:func:`meet_vjp` with ``ang`` ``(u*u, *B)`` and ``a`` ``(2u, 2u, *B)`` (one level per pass of
    the loop, so each level's temporaries are freed before the next)."""
    shape = ang.shape
    while levels > 1:
        h = 2 ** (levels - 1)
        q = 4 ** (levels - 1)
        rest = ang.shape[1:]
        ang = ang.reshape((q, 4) + rest)  # the top digit is the fastest
        yb = _build_soa(ang[:, 2:], levels - 1)  # (2h, 2h, 2, *B)
        yb = [yb[:, :, 0], _fix_y2(yb[:, :, 1], h, (0, 1))]
        a4 = a.reshape((4, h, 4, h) + rest)
        ayy = a4[_YORDER][:, :, _YORDER].reshape((4 * h, 4 * h) + rest)
        del a4
        ax1, ax2 = _vjp_level(ayy, yb, h, soa=True)
        ay2 = ayy[2 * h:, 2 * h:]
        if h > 1:
            _, inv = _y2_perm(h)
            ay2 = ay2[inv][:, inv]
        a = np.stack([ax1, ax2, ayy[: 2 * h, : 2 * h], ay2], axis=2)  # (2h, 2h, 4, *B)
        del ayy, ax1, ax2, ay2, yb
        levels -= 1
    return _soa_leaf_levels(ang, a, levels).reshape(shape)


def meet_vjp(ang, a, levels, keep=None):
    r"""Leaf-angle cotangents ``(..., u*u, R)`` (layout of :func:`build_meet`) of meeting blocks, given
    ``A = W - W^T`` ``(..., R, 2u, 2u)`` (storage order) at their outputs.  ``Y``'s children read
    ``A`` on their coordinates; ``X``'s read ``Y^T A Y``; a leaf (one pair ``(a_0, b_0)``) reads
    ``A[1, 0]``.  ``keep``: the ``Y`` children saved by :func:`build_meet` (else rebuilt).  One level
    per pass of the loop (the children of all blocks become the next pass's blocks), so a level's
    temporaries are freed before the next."""
    shape = ang.shape
    lead = ang.shape[:-2]
    while levels > _SOA_LEVELS:
        h = 2 ** (levels - 1)
        q = 4 ** (levels - 1)
        R = ang.shape[-1]
        ang4 = ang.reshape(lead + (q, 4, R))  # the top digit is the fastest
        if keep is not None and (levels - 1) in keep:
            yb = keep.pop(levels - 1)
            yb = yb.reshape(yb.shape[:-5] + (2, R) + yb.shape[-2:])
        else:
            yb = build_meet(ang4[..., 2:, :].reshape(lead + (q, 2 * R)), levels - 1)
            yb = yb.reshape(lead + (2, R) + yb.shape[-2:])
        yb = np.stack([yb[..., 0, :, :, :], _fix_y2(yb[..., 1, :, :, :], h, (-2, -1))], axis=-3)
        batch = a.shape[:-2]
        a4 = a.reshape(batch + (4, h, 4, h))
        ayy = np.take(np.take(a4, _YORDER, axis=-4), _YORDER, axis=-2).reshape(batch + (4 * h, 4 * h))
        del a4
        ax1, ax2 = _vjp_level(ayy, yb, h, soa=False)
        _, inv = _y2_perm(h)
        ay2 = np.take(np.take(ayy[..., 2 * h:, 2 * h:], inv, axis=-2), inv, axis=-1)
        a = np.stack([ax1, ax2, ayy[..., : 2 * h, : 2 * h], ay2], axis=-4)  # (..., 4, R, 2h, 2h)
        a = a.reshape(lead + (4 * R, 2 * h, 2 * h))
        del ayy, ax1, ax2, ay2, yb
        ang = ang4.reshape(lead + (q, 4 * R))
        levels -= 1
    d = _meet_vjp_soa(np.moveaxis(ang, -2, 0), np.moveaxis(a, (-2, -1), (0, 1)), levels)
    return np.moveaxis(d, 0, -2).reshape(shape)


def _to_layout(ang, levels):
    """``(..., u*u)`` leaves, top digit most significant -> ``(..., u*u, 1)`` in build_meet's layout."""
    return ang[..., _digit_rev(levels)][..., None]


def _from_layout(d, levels):
    out = np.empty(d.shape[:-1], dtype=d.dtype)
    out[..., _digit_rev(levels)] = d[..., 0]
    return out


def _natural(m, w):
    """A meeting block from storage order to the natural local order ``[a, b]``."""
    _, inv = _storage(w)
    return np.take(np.take(m, inv, axis=-2), inv, axis=-1)


def _rr_split(ang, v):
    w = v // 2
    return ang[..., : w * w], ang[..., w * w:].reshape(ang.shape[:-1] + (2, -1))


def build_rr(ang, v):
    """Round-robin blocks ``RR(v)`` ``(..., v, v)`` from leaf angles ``(..., v(v-1)/2)``."""
    if v == 1:
        return np.ones(ang.shape[:-1] + (1, 1), dtype=ang.dtype)
    w = v // 2
    am, ac = _rr_split(ang, v)
    lev = w.bit_length() - 1
    m = _natural(build_meet(_to_layout(am, lev), lev)[..., 0, :, :], w)
    r = build_rr(ac, w)
    return np.concatenate([np.matmul(m[..., :, :w], r[..., 0, :, :]),
                           np.matmul(m[..., :, w:], r[..., 1, :, :])], axis=-1)


def build_rr_jvp(ang, dang, v):
    """``RR(v)`` blocks and tangents: ``R = M D``, ``dR = dM D + M dD``."""
    if v == 1:
        one = np.ones(ang.shape[:-1] + (1, 1), dtype=ang.dtype)
        return one, np.zeros_like(one)
    w = v // 2
    am, ac = _rr_split(ang, v)
    dam, dac = _rr_split(dang, v)
    lev = w.bit_length() - 1
    m, dm = build_meet(_to_layout(am, lev), lev, _to_layout(dam, lev))
    m, dm = _natural(m[..., 0, :, :], w), _natural(dm[..., 0, :, :], w)
    r, dr = build_rr_jvp(ac, dac, w)
    blk = np.concatenate([m[..., :, :w] @ r[..., 0, :, :], m[..., :, w:] @ r[..., 1, :, :]], axis=-1)
    dblk = np.concatenate([dm[..., :, :w] @ r[..., 0, :, :] + m[..., :, :w] @ dr[..., 0, :, :],
                           dm[..., :, w:] @ r[..., 1, :, :] + m[..., :, w:] @ dr[..., 1, :, :]], axis=-1)
    return blk, dblk


def rr_vjp(ang, a, v):
    """Leaf-angle cotangents of ``RR(v)`` blocks given ``A`` at their outputs: the meeting reads ``A``,
    the two halves read the diagonal blocks of ``M^T A M``."""
    if v == 1:
        return np.zeros(ang.shape, dtype=a.dtype)
    w = v // 2
    am, ac = _rr_split(ang, v)
    lev = w.bit_length() - 1
    order, _ = _storage(w)
    dm = _from_layout(meet_vjp(_to_layout(am, lev), np.take(np.take(a, order, axis=-2), order, axis=-1)[..., None, :, :], lev), lev)
    m = _natural(build_meet(_to_layout(am, lev), lev)[..., 0, :, :], w)
    m1, m2 = m[..., :, :w], m[..., :, w:]
    ad = np.stack([np.swapaxes(m1, -1, -2) @ a @ m1, np.swapaxes(m2, -1, -2) @ a @ m2], axis=-3)
    dc = rr_vjp(ac, ad, w)
    return np.concatenate([dm, dc.reshape(dc.shape[:-2] + (-1,))], axis=-1)


# --------------------------------------------------------------------------- stages

def _ext(theta):
    """theta ``(..., A)`` with one zero appended: slot ``A`` is the angle of dropped pairs."""
    return np.concatenate([theta, np.zeros(theta.shape[:-1] + (1,), dtype=theta.dtype)], axis=-1)


def _blocks(theta, pl, keep=None):
    """Per-stage blocks: a list of ``(..., B_k, b_k, b_k)`` arrays in application order.  ``keep``: a
    list that receives the intermediate blocks :func:`_angle_cotangent` can reuse."""
    ext = _ext(theta)
    out = []
    if pl.rr_v:
        out.append(build_rr(ext[..., pl.rr_slots], pl.rr_v))
    if pl.num_meet:
        if keep is not None:
            mb, saved = _build_meet_par(ext[..., pl.meet_slots], pl.levels, keep=True)
            keep.extend(saved)
        else:
            mb = _build_meet_par(ext[..., pl.meet_slots], pl.levels)
        mb = mb.reshape(mb.shape[:-3] + (pl.num_meet, -1) + mb.shape[-2:])
        out += [mb[..., k, :, :, :] for k in range(pl.num_meet)]
    return out


def _blocks_jvp(theta, tangent, pl):
    ext, dext = _ext(theta), _ext(tangent)
    out, dout = [], []
    if pl.rr_v:
        b, db = build_rr_jvp(ext[..., pl.rr_slots], dext[..., pl.rr_slots], pl.rr_v)
        out.append(b)
        dout.append(db)
    if pl.num_meet:
        mb, dmb = build_meet(ext[..., pl.meet_slots], pl.levels, dext[..., pl.meet_slots])
        shape = mb.shape[:-3] + (pl.num_meet, -1) + mb.shape[-2:]
        mb, dmb = mb.reshape(shape), dmb.reshape(shape)
        out += [mb[..., k, :, :, :] for k in range(pl.num_meet)]
        dout += [dmb[..., k, :, :, :] for k in range(pl.num_meet)]
    return out, dout


def _angle_cotangent(a_list, theta, pl, keep=None):
    """Angle cotangents (public layout, shaped like theta) from the per-stage ``A`` blocks."""
    ext = _ext(theta)
    d = np.zeros(theta.shape[:-1] + (pl.A + 1,), dtype=theta.dtype)
    k = 0
    if pl.rr_v:
        slots = pl.rr_slots
        d[..., slots] = rr_vjp(ext[..., slots], a_list[0], pl.rr_v)
        k = 1
    if pl.num_meet:
        slots = pl.meet_slots
        am = np.stack(a_list[k:], axis=-4)
        a_list.clear()
        am = am.reshape(am.shape[:-4] + (-1,) + am.shape[-2:])
        d[..., slots] = _meet_vjp_par(ext[..., slots], am, pl.levels, keep or None)
    return d[..., : pl.A]


def _take_rows(y, idx):
    return y if idx is None else idx(y, axis=-2)


def _pad_rows(x, N):
    n = x.shape[-2]
    if n == N:
        return x
    pad = np.zeros(x.shape[:-2] + (N - n, x.shape[-1]), dtype=x.dtype)
    return np.concatenate([x, pad], axis=-2)


def _stage(blk, y, transpose=False):
    """``blk @ y`` on the row blocks of ``y`` (``(..., N, k)``, rows in the stage's order)."""
    nb, b = blk.shape[-3], blk.shape[-1]
    y4 = y.reshape(y.shape[:-2] + (nb, b, y.shape[-1]))
    p = np.swapaxes(blk, -1, -2) if transpose else blk
    out = np.matmul(p, y4)
    return out.reshape(out.shape[:-3] + (nb * b, out.shape[-1]))


def _sweep(blocks, pl, x, transpose):
    """``U x`` (or ``U^T x``) for ``x`` ``(..., N, k)`` in natural order; returns natural order."""
    gathers, final = pl.rev if transpose else pl.fwd
    seq = blocks[::-1] if transpose else blocks
    y = x
    for blk, idx in zip(seq, gathers):
        y = _stage(blk, _take_rows(y, idx), transpose)
    return _take_rows(y, final)


# --------------------------------------------------------------------------- compiled materialize (u = t)
#
# ``U``, its VJP and its JVP at ``u = t`` with the block work compiled (:mod:`.engine.blocks`:
# blocks built round by round) and no row gathers: every meeting block acts on two whole teams,
# i.e. two slabs of ``t`` consecutive rows.
# A stage reads its rows in a *slab layout* where the two teams of block ``j`` sit at slab positions
# ``2j, 2j + 1``, and each of its GEMMs writes its output slab straight to that team's position in
# the next stage's layout (``np.matmul(..., out=slab)``), so the permutation between stages costs
# nothing.  The two-sided sweep of the VJP, ``A <- S^T A S``, uses that ``A`` stays antisymmetric:
# only the blocks ``I <= J`` of ``P_I^T A_IJ P_J`` are formed (half the flops of the full
# conjugation) and a compiled pass scatters them, and their negative transposes, into the next
# layout.  All parallel work (blocks, per-block GEMMs with single-threaded BLAS, panels, scatters)
# runs on cupyortho's worker threads (:func:`_run`), not on Numba's pool: docs/threads.md.

FAST_MIN_TEAM = 8
"""Smallest team size that takes the compiled slab path for ``matrix``, ``matrix_vjp`` and
``matrix_jvp`` at ``u = t`` (below it the blocks are too small for GEMMs to pay, and the NumPy
stages are used)."""


def _engine():
    from .engine import blocks  # lazy: numba is imported at first use only

    return blocks


def _fast(pl):
    """Whether ``pl`` takes the compiled slab path (which needs Numba; without it the NumPy stages
    run, the strategy's fallback when Numba is not installed)."""
    from .. import _strategy

    return pl.u == pl.t and pl.t >= FAST_MIN_TEAM and pl.num_meet > 0 and _strategy.engine_available()


def _slab_layouts(pl):
    """Team order of each meeting stage's slab layout, and the natural order after the last."""
    T = pl.N // pl.t
    lays = [pl.meet_teams[k].reshape(-1) for k in range(pl.num_meet)]
    return lays, np.arange(T)


def _inverse(perm):
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size)
    return inv


def _workers():
    """Worker threads of the slab path, at most THREADS: cupyortho's setting (docs/threads.md), or,
    with none, as many as NumPy's BLAS would use (the threads this path's GEMMs take over)."""
    if _threads.get_setting() is None:
        return max(1, min([THREADS] + _threads.blas_threads()))
    return _threads.pool_size(THREADS)


def _ranges(jobs, parts):
    """``parts`` contiguous ``(j0, j1)`` job ranges covering ``0..jobs`` (none empty)."""
    parts = max(1, min(parts, jobs))
    return [(jobs * p // parts, jobs * (p + 1) // parts) for p in range(parts)]


def _run(fn, chunks):
    """``fn(chunk)`` for every chunk: the last in the calling thread, the others on the worker
    pool; returns when all are done (the first exception is raised after every chunk finished, so
    no worker still writes into the caller's buffers)."""
    global _pool
    if len(chunks) == 1:
        fn(chunks[0])
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="cupyortho")
    futs = [_pool.submit(fn, c) for c in chunks[:-1]]
    err = None
    try:
        fn(chunks[-1])
    except BaseException as exc:  # noqa: B902 - re-raised below, after the workers are done
        err = exc
    for f in futs:
        try:
            f.result()
        except BaseException as exc:  # noqa: B902
            err = err or exc
    if err is not None:
        raise err


class _Rounds:
    """The meeting blocks of a team schedule's slab path, round by round (from the one team-block
    plan's :func:`~cupyortho.backends.team_plan.kernel_tables`): ``slots`` ``(K * NB, t * t)`` the
    angle slot of every rotation of every meeting block (stage ``k`` holds blocks ``k * NB ..``, in
    the order of ``plan.meet_teams``; slot ``A``: the zero angle of an absent rotation), ``pi, pj``
    ``(t * t,)`` the local rows of each rotation, the same for every block, in application order."""

    def __init__(self, schedule):
        kt = _team_plan.kernel_tables(schedule)
        A = schedule.num_angles
        ang = kt.block_angle[1:]
        slots = np.where(ang < 0, A, ang)
        self.slots = np.ascontiguousarray(slots.reshape(-1, ang.shape[-2] * ang.shape[-1]))
        self.pi = np.ascontiguousarray(kt.local_i[1, 0].reshape(-1))
        self.pj = np.ascontiguousarray(kt.local_j[1, 0].reshape(-1))
        self.cw = min(64, kt.L)  # column chunk of the round kernels (measured: 64 > 32 > 16)


def _rounds(schedule):
    return _team_plan._cached(schedule, "slab_rounds", lambda: _Rounds(schedule))


def _coefficients(ext, slots):
    """``(c, s)`` ``(Bt * R, P)`` of the rotations with angle slots ``slots`` ``(R, P)``; ``ext``
    ``(Bt, A + 1)``: the angles and the zero angle (:func:`_ext`).  The engine's coefficient pass
    (one compiled gather + vectorized cos/sin; :mod:`.engine.kernels`)."""
    from .engine import kernels

    Bt, (R, P) = ext.shape[0], slots.shape
    c = np.empty((Bt, R * P), dtype=ext.dtype)
    s = np.empty_like(c)
    kernels.coefficients_serial(ext, np.ascontiguousarray(slots).reshape(-1), c, s)
    return c.reshape(Bt * R, P), s.reshape(Bt * R, P)


def _block_range(th2, pl, sched, r0, R, W):
    """Natural-order blocks ``(Bt, R, 2t, 2t)`` of the meeting blocks ``r0 .. r0 + R - 1`` (compiled,
    by rounds), split over ``W`` workers."""
    rd = _rounds(sched)
    c, s = _coefficients(_ext(th2), rd.slots[r0: r0 + R])
    L = 2 * pl.t
    out = np.empty((c.shape[0], L, L), dtype=th2.dtype)
    eb = _engine()
    _run(lambda jr: eb.rounds_blocks(c, s, rd.pi, rd.pj, out, rd.cw, jr[0], jr[1]), _ranges(out.shape[0], W))
    return out.reshape(th2.shape[0], R, L, L)


def _stage_blocks(th2, pl, k, sched):
    """Natural-order blocks ``(Bt, NB, 2t, 2t)`` of meeting stage ``k`` (compiled)."""
    NB = pl.meet_teams.shape[1]
    return _block_range(th2, pl, sched, k * NB, NB, 1)


def _rr_diag(theta2, pl):
    """Stage-0 blocks ``RR(t)`` ``(Bt, T, t, t)``."""
    return build_rr(_ext(theta2)[..., pl.rr_slots], pl.rr_v)


def _matrix_fast(theta, pl, sched):
    n, t, N = pl.n, pl.t, pl.N
    T = N // t
    batch = theta.shape[:-1]
    th2 = np.ascontiguousarray(theta.reshape(-1, theta.shape[-1]))
    Bt = th2.shape[0]
    lays, natural = _slab_layouts(pl)
    K = pl.num_meet
    NB = pl.meet_teams.shape[1]
    out = np.empty((Bt, n, n), dtype=theta.dtype)
    y = np.empty((N, N), dtype=theta.dtype)
    ynext = np.empty((N, N), dtype=theta.dtype)
    rr = _rr_diag(th2, pl) if pl.rr_v else None
    with _threads.serial_blas(_workers()) as W:
        blocks = _block_range(th2, pl, sched, 0, K * NB, W)  # every stage's blocks, one pass
        for b in range(Bt):
            # stage 0 applied to the identity, rows in stage 1's slab layout, columns natural
            y[...] = 0
            pos = _inverse(lays[0])
            y4 = y.reshape(T, t, T, t)
            if rr is None:
                y4[pos, :, natural, :] = np.eye(t, dtype=y.dtype)
            else:
                y4[pos, :, natural, :] = rr[b]
            for k in range(K):
                teams = pl.meet_teams[k]
                nxt = _inverse(lays[k + 1]) if k + 1 < K else natural
                blk = blocks[b, k * NB: (k + 1) * NB]

                def gemms(js, y=y, ynext=ynext, blk=blk, teams=teams, nxt=nxt):
                    for j in js:  # block j: two GEMMs, outputs straight to the next layout
                        src = y[2 * j * t: (2 * j + 2) * t]
                        pa, pb = nxt[teams[j, 0]], nxt[teams[j, 1]]
                        np.matmul(blk[j, :t], src, out=ynext[pa * t: (pa + 1) * t])
                        np.matmul(blk[j, t:], src, out=ynext[pb * t: (pb + 1) * t])

                _run(gemms, [range(w, NB, W) for w in range(min(W, NB))])
                y, ynext = ynext, y
            out[b] = y[:n, :n]
    return out.reshape(batch + (n, n))


def _panel_split(NB, W):
    """Row panels ``0..NB-1`` of the half sweep for ``W`` workers: panel ``I`` costs ``~NB - I``,
    so the panels go in pairs ``(I, NB-1-I)`` of equal cost, pairs dealt round robin."""
    order = []
    for I in range((NB + 1) // 2):
        order += [I] if I == NB - 1 - I else [I, NB - 1 - I]
    pairs = [order[i: i + 2] for i in range(0, len(order), 2)]
    W = max(1, min(W, len(pairs)))
    return [sum(pairs[w::W], []) for w in range(W)]


def _conjugate(a, blk, to_next, t, out, pan=None, zbufs=None, W=1):
    """One step of the two-sided sweep: ``out <- S^T a S`` for one block-diagonal stage.

    ``a`` ``(N, N)`` antisymmetric, rows and columns in the stage's slab layout, of which only the
    upper block triangle (blocks of ``L = 2t``, diagonal blocks whole) is read; ``blk``
    ``(NB, L, L)`` the stage's blocks (natural local order); ``to_next`` ``(T,)`` the slab position
    of each current slab in the next layout.  Only the blocks ``I <= J`` of ``P_I^T a_IJ P_J`` are
    formed, ``N^3 / (2t)`` multiply-adds instead of twice that for both sides in full; the compiled
    scatter writes them (and their negative transposes) into the upper block triangle of ``out``
    in the next layout.  Row panels are split over ``W`` workers (:func:`_panel_split`); each
    scatters the two team slabs of its own panels.  ``pan`` ``(NB, L, N)`` and ``zbufs`` (``W``
    arrays ``(L, N)``): optional scratch."""
    N = a.shape[-1]
    L = 2 * t
    NB = N // L
    split = _panel_split(NB, W)
    if pan is None:
        pan = np.empty((NB, L, N), dtype=a.dtype)
    if zbufs is None:
        zbufs = [np.empty((L, N), dtype=a.dtype) for _ in split]
    eb = _engine()

    def panels(w):
        zbuf = zbufs[w]
        for I in split[w]:
            c0 = I * L
            np.matmul(blk[I].T, a[c0: c0 + L, c0:], out=zbuf[:, c0:])
            zv = np.swapaxes(zbuf.reshape(L, NB, L)[:, I:], 0, 1)
            cv = np.swapaxes(pan[I].reshape(L, NB, L)[:, I:], 0, 1)
            np.matmul(zv, blk[I:], out=cv)
            eb.scatter_mirror(pan, to_next, t, out, 2 * I, 2 * I + 2)

    _run(panels, list(range(len(split))))


def _matrix_vjp_fast(theta, cotangent, pl, output, sched):
    eb = _engine()
    n, t, N, A = pl.n, pl.t, pl.N, pl.A
    T, NB, L = N // t, N // (2 * t), 2 * t
    th2 = np.ascontiguousarray(theta.reshape(-1, A))
    Bt = th2.shape[0]
    dt = theta.dtype
    uu = _matrix_fast(theta, pl, sched) if output is None else output
    w = np.matmul(cotangent, np.swapaxes(uu, -1, -2))  # one large GEMM: BLAS's own threads
    del uu
    w = np.ascontiguousarray(_sum_to(w, theta.shape[:-1] + (n, n)).reshape(Bt, n, n), dtype=dt)
    lays, natural = _slab_layouts(pl)
    K = pl.num_meet
    order = (lays[K - 1][:, None] * t + np.arange(t)).reshape(-1)
    rd = _rounds(sched)
    ext = _ext(th2)
    with _threads.serial_blas(_workers()) as W:
        a = np.empty((Bt, N, N), dtype=dt)
        _run(lambda jr: eb.antisym_gather(w, order, n, L, a, jr[0], jr[1]), _ranges(Bt * N, W))
        del w
        a2 = np.empty_like(a)
        pan = np.empty((NB, L, N), dtype=dt)
        zbufs = [np.empty((L, N), dtype=dt) for _ in _panel_split(NB, W)]
        d = np.zeros((Bt, A + 1), dtype=dt)
        ar = np.arange(NB)
        blk = np.empty((Bt * NB, L, L), dtype=dt)
        dk = np.empty((Bt * NB, t * t), dtype=dt)
        for k in range(K - 1, -1, -1):
            diag = np.ascontiguousarray(a.reshape(Bt, NB, L, NB, L)[:, ar, :, ar, :].swapaxes(0, 1))
            diag = diag.reshape(Bt * NB, L, L)
            sl = rd.slots[k * NB: (k + 1) * NB]
            c, s = _coefficients(ext, sl)
            # the stage's angle cotangents and, from the same pass, its blocks
            _run(lambda jr: eb.rounds_blocks_vjp(c, s, rd.pi, rd.pj, diag, dk, blk, rd.cw, dt.type(0),
                                                 jr[0], jr[1]), _ranges(Bt * NB, W))
            del c, s
            d[:, sl] = dk.reshape(Bt, NB, t * t)
            if k == 0:
                break
            del diag
            to_next = _inverse(lays[k - 1])[lays[k]]
            blk4 = blk.reshape(Bt, NB, L, L)
            for b in range(Bt):
                _conjugate(a[b], blk4[b], to_next, t, a2[b], pan, zbufs, W)
            a, a2 = a2, a
        del a, a2, pan, zbufs
    if pl.rr_v:
        # the round robins RR(t) read only the T diagonal team tiles of S^T A S for the first
        # meeting stage: from its blocks' diagonal blocks of A, P^T A_II P, not a whole conjugation
        c2 = np.matmul(np.swapaxes(blk, -1, -2), np.matmul(diag, blk)).reshape(Bt, NB, 2, t, 2, t)
        arr = np.empty((Bt, T, t, t), dtype=dt)
        teams = pl.meet_teams[0]
        arr[:, teams[:, 0]] = c2[:, :, 0, :, 0, :]
        arr[:, teams[:, 1]] = c2[:, :, 1, :, 1, :]
        d[:, pl.rr_slots] = rr_vjp(ext[..., pl.rr_slots], arr, t)
    return d[:, :A].reshape(theta.shape)


def _matrix_jvp_fast(theta, theta_tangent, pl, sched):
    """``dU`` on the slab path: ``(Y, dY) <- (S Y, S dY + dS Y)`` stage by stage.  Rows are kept in a
    slab layout of ``4t``-row groups, block ``j``'s ``[Y_a, Y_b, dY_a, dY_b]``, so the tangent rows of
    a team come from one ``K = 4t`` GEMM, ``[dB | B] [Y; dY]``, with no accumulation pass."""
    n, t, N = pl.n, pl.t, pl.N
    T, K, NB, L = N // t, pl.num_meet, pl.meet_teams.shape[1], 2 * t
    batch = np.broadcast_shapes(theta.shape[:-1], theta_tangent.shape[:-1])
    A = theta.shape[-1]
    th2 = np.ascontiguousarray(np.broadcast_to(theta, batch + (A,)).reshape(-1, A))
    tt2 = np.ascontiguousarray(np.broadcast_to(theta_tangent, batch + (A,)).reshape(-1, A), dtype=th2.dtype)
    Bt = th2.shape[0]
    dt = th2.dtype
    rd = _rounds(sched)
    lays, natural = _slab_layouts(pl)
    eb = _engine()
    out = np.empty((Bt, n, n), dtype=dt)
    z = np.empty((2 * N, N), dtype=dt)  # rows: group g = block g's [Y_a, Y_b, dY_a, dY_b]
    znext = np.empty_like(z)
    if pl.rr_v:
        ext, dext = _ext(th2), _ext(tt2)
        rr, drr = build_rr_jvp(ext[..., pl.rr_slots], dext[..., pl.rr_slots], pl.rr_v)
    with _threads.serial_blas(_workers()) as W:
        c, s = _coefficients(_ext(th2), rd.slots)
        dth = _ext(tt2)[:, rd.slots].reshape(c.shape)
        blocks = np.empty((c.shape[0], L, L), dtype=dt)
        dblocks = np.empty_like(blocks)
        _run(lambda jr: eb.rounds_blocks_jvp(c, s, dth, rd.pi, rd.pj, blocks, dblocks, rd.cw, jr[0], jr[1]),
             _ranges(c.shape[0], W))
        del c, s, dth
        blocks = blocks.reshape(Bt, K * NB, L, L)
        dblocks = dblocks.reshape(Bt, K * NB, L, L)

        def rows(pos_slab, tangent):  # row offset of a team slab in the grouped layout
            g, h = divmod(pos_slab, 2)
            return (4 * g + 2 * tangent + h) * t

        for b in range(Bt):
            z[...] = 0
            pos = _inverse(lays[0])
            for team in range(T):
                r0, r1 = rows(pos[team], 0), rows(pos[team], 1)
                if pl.rr_v:
                    z[r0: r0 + t, team * t: (team + 1) * t] = rr[b, team]
                    z[r1: r1 + t, team * t: (team + 1) * t] = drr[b, team]
                else:
                    z[r0: r0 + t, team * t: (team + 1) * t] = np.eye(t, dtype=dt)
            for k in range(K):
                teams = pl.meet_teams[k]
                last = k + 1 == K
                nxt = _inverse(lays[k + 1]) if not last else natural
                blk = blocks[b, k * NB: (k + 1) * NB]
                dblk = dblocks[b, k * NB: (k + 1) * NB]

                def gemms(js, z=z, znext=znext, blk=blk, dblk=dblk, teams=teams, nxt=nxt, last=last):
                    coef = np.empty((t, 2 * L), dtype=dt)
                    for j in js:
                        src = z[4 * j * t: (4 * j + 4) * t]
                        for half in range(2):
                            p = nxt[teams[j, half]]
                            ry = p * t if last else rows(p, 0)
                            rdy = N + p * t if last else rows(p, 1)
                            rs = slice(half * t, (half + 1) * t)
                            np.matmul(blk[j, rs], src[:L], out=znext[ry: ry + t])
                            coef[:, :L] = dblk[j, rs]
                            coef[:, L:] = blk[j, rs]
                            np.matmul(coef, src, out=znext[rdy: rdy + t])

                _run(gemms, [range(w, NB, W) for w in range(min(W, NB))])
                z, znext = znext, z
            # after the last stage: rows [0, N) hold Y, [N, 2N) dY, both in natural order
            out[b] = z[N: N + n, :n]
    return out.reshape(batch + (n, n))


# --------------------------------------------------------------------------- public backend functions

def apply(theta, x, schedule, transpose=False, u=None):
    r"""``U(theta) @ x`` (``U^T`` with ``transpose``) by block stages.  theta ``(..., A)``, x ``(..., n, k)``."""
    n = schedule.n
    pl = plan(schedule, u or granularity(schedule, x.shape[-1]))
    blocks = _blocks(theta, pl)
    y = _sweep(blocks, pl, _pad_rows(x, pl.N), transpose)[..., :n, :]
    batch = np.broadcast_shapes(theta.shape[:-1], x.shape[:-2])
    return np.array(np.broadcast_to(y, batch + y.shape[-2:]), copy=True)


def matrix(theta, schedule, u=None):
    """``U(theta)`` ``(..., n, n)``: the first stage's blocks placed on the diagonal, then the stages."""
    pl = plan(schedule, u or granularity(schedule))
    if _fast(pl):
        return _matrix_fast(theta, pl, schedule)
    blocks = _blocks(theta, pl)
    return _matrix_from_blocks(blocks, pl)[..., : pl.n, : pl.n].copy()


def _matrix_from_blocks(blocks, pl):
    N = pl.N
    first = blocks[0]
    batch = first.shape[:-3]
    nb, b = first.shape[-3], first.shape[-1]
    y = np.zeros(batch + (N, N), dtype=first.dtype)
    order = pl.orders[0]
    # stage 0 applied to the identity, rows and columns in stage-0 order
    y5 = y.reshape(batch + (nb, b, nb, b))
    idx = np.arange(nb)
    y5[..., idx, :, idx, :] = np.moveaxis(first, -3, 0)
    # columns back to natural order (rows stay in stage-0 order, as the sweep expects)
    pos = np.empty(N, dtype=np.int64)
    pos[order] = np.arange(N)
    if not np.array_equal(pos, np.arange(N)):
        y = np.take(y, pos, axis=-1)
    gathers, final = pl.fwd
    for blk, g in zip(blocks[1:], gathers[1:]):
        y = _stage(blk, _take_rows(y, g))
    return _take_rows(y, final)


def apply_vjp(theta, x, cotangent, schedule, transpose=False, output=None, u=None):
    r"""``(d_theta, d_x)`` of ``y = apply(theta, x)``: stages undone on ``y``, ``W = \bar g y^T`` per block."""
    n = schedule.n
    pl = plan(schedule, u or granularity(schedule, x.shape[-1]))
    blocks = _blocks(theta, pl)
    batch = np.broadcast_shapes(theta.shape[:-1], x.shape[:-2], cotangent.shape[:-2])
    if output is None:
        y = _sweep(blocks, pl, _pad_rows(x, pl.N), transpose)
    else:
        y = _pad_rows(output, pl.N)
    y = np.broadcast_to(y, batch + y.shape[-2:])
    g = np.broadcast_to(_pad_rows(cotangent, pl.N), batch + y.shape[-2:])
    K = len(blocks)
    a_list = [None] * K
    # Walk the applied stages backwards.  Forward order of application: stages 0..K-1 (transposed:
    # K-1..0 with P^T).  ``order`` tracks the coordinate order of the rows of y and g.
    seq = list(range(K)) if transpose else list(range(K - 1, -1, -1))
    gathers, final = pl.fwd if transpose else pl.rev
    for k, idx in zip(seq, gathers):
        y, g = _take_rows(y, idx), _take_rows(g, idx)
        blk = blocks[k]
        nb, b = blk.shape[-3], blk.shape[-1]
        kk = y.shape[-1]
        if transpose:
            # this stage applied Q = P^T; undo: y_in = P y_out.  A_P = y_in g_in^T - g_in y_in^T.
            y = _stage(blk, y)
            g = _stage(blk, g)
        else:
            y4 = y.reshape(y.shape[:-2] + (nb, b, kk))
            g4 = g.reshape(g.shape[:-2] + (nb, b, kk))
            w = np.matmul(g4, np.swapaxes(y4, -1, -2))
            a_list[k] = _sum_to(w - np.swapaxes(w, -1, -2), theta.shape[:-1] + w.shape[-3:])
            y = _stage(blk, y, transpose=True)
            g = _stage(blk, g, transpose=True)
        if transpose:
            y4 = y.reshape(y.shape[:-2] + (nb, b, kk))
            g4 = g.reshape(g.shape[:-2] + (nb, b, kk))
            w = np.matmul(y4, np.swapaxes(g4, -1, -2))
            a_list[k] = _sum_to(w - np.swapaxes(w, -1, -2), theta.shape[:-1] + w.shape[-3:])
    g = _take_rows(g, final)
    d_theta = _angle_cotangent(a_list, theta, pl)
    d_x = _sum_to(g[..., :n, :], x.shape)
    return d_theta, np.ascontiguousarray(d_x)


def matrix_vjp(theta, cotangent, schedule, output=None, u=None):
    r"""``d_theta`` of ``U = matrix(theta)``: ``A = \bar G U^T - U \bar G^T``, then ``A <- S^T A S``
    stage by stage (last first), each stage's blocks reading the diagonal blocks of ``A``.
    ``output`` may pass ``U`` to skip recomputing it."""
    n = schedule.n
    pl = plan(schedule, u or granularity(schedule))
    if _fast(pl):
        return _matrix_vjp_fast(theta, cotangent, pl, output, schedule)
    keep = []
    blocks = _blocks(theta, pl, keep)
    uu = _matrix_from_blocks(blocks, pl)[..., :n, :n] if output is None else output
    batch = np.broadcast_shapes(theta.shape[:-1], cotangent.shape[:-2])
    w = np.matmul(cotangent, np.swapaxes(uu, -1, -2))
    w = _sum_to(w, theta.shape[:-1] + (n, n))
    N = pl.N
    a = np.zeros(w.shape[:-2] + (N, N), dtype=w.dtype)
    a[..., :n, :n] = w
    a[..., :n, :n] -= np.swapaxes(w, -1, -2)
    del w, batch
    K = len(blocks)
    a_list = [None] * K
    gathers, _ = pl.rev  # rows and columns of a are in the same order
    for k, idx in zip(range(K - 1, -1, -1), gathers):
        if idx is not None:
            a = idx(idx(a, axis=-2), axis=-1)
        blk = blocks[k]
        nb, b = blk.shape[-3], blk.shape[-1]
        a5 = a.reshape(a.shape[:-2] + (nb, b, nb, b))
        diag = np.diagonal(a5, axis1=-4, axis2=-2)  # (..., b, b, nb)
        a_list[k] = np.ascontiguousarray(np.moveaxis(diag, -1, -3))
        if k == 0:
            break
        # A <- P^T A P: left on row blocks, right on column blocks
        z = np.matmul(np.swapaxes(blk, -1, -2), a.reshape(a.shape[:-2] + (nb, b, N)))
        z = z.reshape(a.shape)
        zc = np.swapaxes(z.reshape(a.shape[:-1] + (nb, b)), -3, -2)  # (..., nb, N, b)
        del a
        r = np.matmul(zc, blk)  # (..., nb, N, b)
        del z, zc
        a = np.swapaxes(r, -3, -2).reshape(r.shape[:-3] + (N, N))
        del r
    del a, blocks, uu
    return _angle_cotangent(a_list, theta, pl, keep)


def apply_jvp(theta, x, theta_tangent, x_tangent, schedule, transpose=False, u=None):
    r"""Tangent of ``y = apply(theta, x)``: ``dy <- S dy + dS y`` stage by stage."""
    n = schedule.n
    pl = plan(schedule, u or granularity(schedule, x.shape[-1]))
    blocks, dblocks = _blocks_jvp(theta, theta_tangent, pl)
    shapes = [theta.shape[:-1], x.shape[:-2], theta_tangent.shape[:-1]]
    if x_tangent is not None:
        shapes.append(x_tangent.shape[:-2])
    batch = np.broadcast_shapes(*shapes)
    y = _pad_rows(x, pl.N)
    dy = np.zeros_like(y) if x_tangent is None else _pad_rows(x_tangent, pl.N)
    gathers, final = pl.rev if transpose else pl.fwd
    seq = list(zip(blocks, dblocks))
    if transpose:
        seq = seq[::-1]
    for (blk, dblk), idx in zip(seq, gathers):
        y, dy = _take_rows(y, idx), _take_rows(dy, idx)
        dy = _stage(blk, dy, transpose) + _stage(dblk, y, transpose)
        y = _stage(blk, y, transpose)
    dy = _take_rows(dy, final)[..., :n, :]
    return np.array(np.broadcast_to(dy, batch + dy.shape[-2:]), copy=True)


def matrix_jvp(theta, theta_tangent, schedule, u=None):
    """Tangent ``dU`` of ``U = matrix(theta)`` along ``theta_tangent``."""
    pl = plan(schedule, u or granularity(schedule))
    if _fast(pl):
        return _matrix_jvp_fast(theta, theta_tangent, pl, schedule)
    eye = np.eye(schedule.n, dtype=theta.dtype)
    return apply_jvp(theta, eye, theta_tangent, None, schedule, u=u or granularity(schedule))


