"""One launcher per kernel, SO(n) and U(n): grid, block and shared memory are chosen here, nowhere else.

Design rule: every launcher takes the device object ``dev`` first (see :mod:`.device`), C-contiguous
``dev.xp`` arrays and Python ints, converts the scalars to the exact C types of the kernel's
parameters (``np.int32`` for ``int``, ``np.int64`` for ``long long``, the array's float type for
``T``) and launches on the current stream.  The algorithms in :mod:`.so` and :mod:`.un` call
these and nothing lower.  The CPU harness in ``tests/cudasim`` runs the same launchers with its own
``dev``.  U(n) launchers take complex operands as their real views (``(B, n, 2k)``), so every kernel
is templated on the real type.
"""

from __future__ import annotations

import numpy as np

from ...errors import DtypeError, ShapeError
from .kernels import name_expression

__all__ = [
    "THREADS",
    "cos_sin",
    "apply_round",
    "apply_vjp_round",
    "apply_jvp_round",
    "matrix_vjp_round",
    "reduce_partials",
    "apply_fused",
    "apply_vjp_fused",
    "apply_jvp_fused",
    "matrix_vjp_fused",
    "build_blocks",
    "block_vjp",
    "unitary_apply_round",
    "unitary_apply_vjp_round",
    "unitary_apply_jvp_round",
    "unitary_matrix_vjp_round",
]

#: Threads per block of the element-wise (one item per thread) kernels.
THREADS = 256
#: Threads per block of the per-round backward kernels (one thread sums the columns of one pair).
VJP_THREADS = 128
#: Largest block of the fused kernels (one block owns a column tile for all rounds).
FUSED_THREADS = 1024
#: Threads per block of the block kernels (one block per L x L block).
BLOCK_THREADS = 256

#: Dynamic shared memory a kernel may use without opting in.
DEFAULT_SHARED = 48 * 1024

_i32 = np.int32
_i64 = np.int64


def _scalar(dtype, value):
    return np.dtype(dtype).type(value)


def _flat_grid(total: int, threads: int = THREADS):
    return (max(1, -(-int(total) // threads)),), (threads,)


def _launch_flat(dev, kernel, dtype, total, args, threads=THREADS):
    """Launch ``kernel<dtype>`` with one thread per work item on a flat 1-D grid; the kernel's last
    parameter is the item count ``total`` (nothing is launched for none)."""
    if total == 0:
        return
    grid, block = _flat_grid(total, threads)
    dev.get_function(name_expression(kernel, dtype))(grid, block, tuple(args) + (_i64(total),))


def _check(name, a, dtype=None):
    # Kernels ignore strides: every array must be C-contiguous (and of the kernel's type).
    if not a.flags.c_contiguous:
        raise ShapeError(f"kernel argument {name} must be C-contiguous, got strides {a.strides}")
    if dtype is not None and a.dtype != dtype:
        raise DtypeError(f"kernel argument {name} must have dtype {np.dtype(dtype).name}, got {a.dtype}")


def cos_sin(dev, theta, angle_index, out):
    """``out[b, q] = (cos, sin)(theta[b, angle_index[q]])``.  theta: (B, A_theta); angle_index:
    int32 (A,); out: (B, A, 2)."""
    B, A_theta = theta.shape
    A = angle_index.shape[0]
    _check("theta", theta)
    _check("angle_index", angle_index, np.int32)
    _check("cos_sin out", out, theta.dtype)
    _launch_flat(dev, "cos_sin", theta.dtype, B * A, (theta, angle_index, out, _i32(A), _i32(A_theta)))
    return out


def apply_round(dev, y, cs, pair_i, pair_j, q0, P, cs_bstride, sign):
    """Rotate rows of y (B, n, k) in place by one round (pairs ``q0 .. q0+P``)."""
    B, n, k = y.shape
    _launch_flat(dev, "apply_round", y.dtype, B * P * k,
                 (y, cs, pair_i, pair_j, _i32(q0), _i32(P), _i32(n), _i32(k), _i64(cs_bstride),
                  _scalar(y.dtype, sign)))


def apply_vjp_round(dev, y, g, d, cs, pair_i, pair_j, q0, P, cs_bstride, sign, dsign):
    """Undo one round on y and g (B, n, k) in place; ``d[b, q0+p] = dsign * sum_col(...)``.
    d: (B, A) round-major.  One thread per (b, pair) sums its columns in order."""
    B, n, k = y.shape
    _launch_flat(dev, "apply_vjp_round", y.dtype, B * P,
                 (y, g, d, cs, pair_i, pair_j, _i32(q0), _i32(P), _i32(n), _i32(k), _i32(d.shape[-1]),
                  _i64(cs_bstride), _scalar(y.dtype, sign), _scalar(y.dtype, dsign)), VJP_THREADS)


def apply_jvp_round(dev, y, dy, cs, dt, pair_i, pair_j, q0, P, cs_bstride, dt_bstride, sign):
    """One forward-mode round on (y, dy), both (B, n, k), in place.  dt: (Bt, A) round-major."""
    B, n, k = y.shape
    _launch_flat(dev, "apply_jvp_round", y.dtype, B * P * k,
                 (y, dy, cs, dt, pair_i, pair_j, _i32(q0), _i32(P), _i32(n), _i32(k),
                  _i64(cs_bstride), _i64(dt_bstride), _scalar(y.dtype, sign)))


def matrix_vjp_round(dev, w, d, cs, slot_i, slot_j, slot_q, s0, S, cs_bstride):
    """One backward round of the reduction-free materialized VJP on w (B, n, n), in place; writes
    the round's angle cotangents into d (B, A) round-major.  One thread per (b, slot, slot)."""
    B, n, _ = w.shape
    _launch_flat(dev, "matrix_vjp_round", w.dtype, B * S * S,
                 (w, d, cs, slot_i, slot_j, slot_q, _i32(s0), _i32(S), _i32(n), _i32(d.shape[-1]),
                  _i64(cs_bstride)))


def reduce_partials(dev, partial, d, angle_index, dsign):
    """``d[b, angle_index[q]] = dsign * sum_tile partial[b, tile, q]`` in tile order.
    partial: (B, ntiles, A); d: (B, A) public order."""
    B, ntiles, A = partial.shape
    _launch_flat(dev, "reduce_partials", partial.dtype, B * A,
                 (partial, d, angle_index, _i32(ntiles), _i32(A), _scalar(partial.dtype, dsign)))


def _fused_block(n, TK):
    # Enough threads to cover one round's (pair, column) items, a multiple of 32, at most 1024.
    items = max(1, (n // 2) * TK)
    return int(min(FUSED_THREADS, max(32, -(-items // 32) * 32)))


def fused_shared_bytes(n, TK, buffers, itemsize):
    """Dynamic shared memory of a fused kernel holding ``buffers`` (n, TK) tiles."""
    return int(buffers * n * TK * itemsize)


def _allow_shared(f, shared):
    # Above 48 KiB a kernel must opt in (cupy#2118); the attribute is per kernel.
    if shared > DEFAULT_SHARED and int(getattr(f, "max_dynamic_shared_size_bytes", 0)) < shared:
        f.max_dynamic_shared_size_bytes = int(shared)


def _launch_shared(dev, kernel, dtype, blocks, threads, shared, args):
    """Launch ``kernel<dtype>`` on ``blocks`` thread blocks of ``threads`` with ``shared`` bytes of
    dynamic shared memory (opting in above the default)."""
    f = dev.get_function(name_expression(kernel, dtype))
    _allow_shared(f, shared)
    f((int(blocks),), (int(threads),), args, shared_mem=int(shared))


def _tiling(y, round_offsets, TK):
    """``(B, n, k, R, ntiles)`` of a fused sweep over y (B, n, k) in column tiles of width TK."""
    B, n, k = y.shape
    return B, n, k, round_offsets.shape[0] - 1, -(-k // TK)


def apply_fused(dev, y, cs, pair_i, pair_j, round_offsets, reverse, TK, cs_bstride, sign):
    """All rounds on y (B, n, k) in place, one block per (batch, column tile of width TK)."""
    B, n, k, R, ntiles = _tiling(y, round_offsets, TK)
    if B * ntiles == 0:
        return
    _launch_shared(dev, "apply_fused", y.dtype, B * ntiles, _fused_block(n, TK),
                   fused_shared_bytes(n, TK, 1, y.itemsize),
                   (y, cs, pair_i, pair_j, round_offsets, _i32(R), _i32(int(reverse)), _i32(n), _i32(k),
                    _i32(TK), _i32(ntiles), _i64(cs_bstride), _scalar(y.dtype, sign)))


def apply_vjp_fused(dev, y, g, partial, cs, pair_i, pair_j, round_offsets, reverse, TK, cs_bstride, sign):
    """Backward sweep of all rounds on (y, g) (B, n, k) in place; per-tile angle sums into
    partial (B, ntiles, A) round-major."""
    B, n, k, R, ntiles = _tiling(y, round_offsets, TK)
    A = partial.shape[-1]
    if B * ntiles == 0:
        return
    threads = min(FUSED_THREADS, max(32, -(-(n // 2) // 32) * 32))  # one thread per pair
    _launch_shared(dev, "apply_vjp_fused", y.dtype, B * ntiles, threads, fused_shared_bytes(n, TK, 2, y.itemsize),
                   (y, g, partial, cs, pair_i, pair_j, round_offsets, _i32(R), _i32(int(reverse)), _i32(n),
                    _i32(k), _i32(TK), _i32(ntiles), _i32(A), _i64(cs_bstride), _scalar(y.dtype, sign)))


def apply_jvp_fused(dev, y, dy, cs, dt, pair_i, pair_j, round_offsets, reverse, TK, cs_bstride,
                    dt_bstride, sign):
    """All forward-mode rounds on (y, dy) (B, n, k) in place."""
    B, n, k, R, ntiles = _tiling(y, round_offsets, TK)
    if B * ntiles == 0:
        return
    _launch_shared(dev, "apply_jvp_fused", y.dtype, B * ntiles, _fused_block(n, TK),
                   fused_shared_bytes(n, TK, 2, y.itemsize),
                   (y, dy, cs, dt, pair_i, pair_j, round_offsets, _i32(R), _i32(int(reverse)), _i32(n),
                    _i32(k), _i32(TK), _i32(ntiles), _i64(cs_bstride), _i64(dt_bstride),
                    _scalar(y.dtype, sign)))


def matrix_vjp_fused(dev, w, d, cs, slot_i, slot_j, slot_q, slot_offsets, cs_bstride):
    """The whole backward sweep of the materialized VJP with w[b] (n, n) in shared memory (read
    only in global memory); angle cotangents into d (B, A) round-major."""
    B, n, _ = w.shape
    A = d.shape[-1]
    R = slot_offsets.shape[0] - 1
    if B == 0:
        return
    threads = min(FUSED_THREADS, max(32, -(-((n + 1) // 2) ** 2 // 32) * 32))  # one per 2 x 2 sub-block
    _launch_shared(dev, "matrix_vjp_fused", w.dtype, B, threads, n * n * w.itemsize,
                   (w, d, cs, slot_i, slot_j, slot_q, slot_offsets, _i32(R), _i32(n), _i32(A), _i64(cs_bstride)))


def build_blocks(dev, blocks, cs, block_angle, local_i, local_j, cs_bstride):
    """blocks (B, S, NB, L, L) <- the dense blocks of every stage from cs (public order)."""
    B, S, NB, L, _ = blocks.shape
    t = L // 2
    if B * S * NB == 0:
        return
    f = dev.get_function(name_expression("build_blocks", blocks.dtype))
    f((B * S * NB,), (BLOCK_THREADS,),
      (blocks, cs, block_angle, local_i, local_j, _i32(t), _i32(S), _i32(NB), _i64(cs_bstride)))


def block_vjp(dev, w, d, cs, block_angle, local_i, local_j, stage, cs_bstride):
    """Angle cotangents of stage ``stage`` from its block cotangents w (B, NB, L, L) (overwritten);
    written into d (B, A) public order."""
    B, NB, L, _ = w.shape
    t = L // 2
    A = d.shape[-1]
    if B * NB == 0:
        return
    f = dev.get_function(name_expression("block_vjp", w.dtype))
    f((B * NB,), (BLOCK_THREADS,),
      (w, d, cs, block_angle, local_i, local_j, _i32(t), _i32(stage), _i32(NB), _i32(A), _i64(cs_bstride)))


# --------------------------------------------------------------------------- U(n) (kernels/unitary.cu)

def unitary_apply_round(dev, yr, coef, pair_i, pair_j, q0, P, coef_bstride, sign):
    """One round on yr (B, n, 2k) (the real view of a complex (B, n, k)), in place."""
    B, n, k2 = yr.shape
    _check("y", yr, coef.dtype)
    _launch_flat(dev, "unitary_apply_round", yr.dtype, B * P * (k2 // 2),
                 (yr, coef, pair_i, pair_j, _i32(q0), _i32(P), _i32(n), _i32(k2 // 2), _i64(coef_bstride),
                  _scalar(yr.dtype, sign)))


def unitary_apply_vjp_round(dev, yr, gr, d, coef, pair_i, pair_j, q0, P, A, coef_bstride, sign):
    """Undo one round op on yr and gr (real views (B, n, 2k)) in place; its 2P cotangents into d (B, 2A)."""
    B, n, k2 = yr.shape
    for name, a in (("y", yr), ("g", gr), ("d", d)):
        _check(name, a, coef.dtype)
    _launch_flat(dev, "unitary_apply_vjp_round", yr.dtype, B * P,
                 (yr, gr, d, coef, pair_i, pair_j, _i32(q0), _i32(P), _i32(n), _i32(k2 // 2), _i32(A),
                  _i64(coef_bstride), _scalar(yr.dtype, sign)), VJP_THREADS)


def unitary_apply_jvp_round(dev, yr, dyr, coef, dt, pair_i, pair_j, q0, P, A, coef_bstride, dt_bstride, sign):
    """One forward-mode round op on (yr, dyr) (real views (B, n, 2k)), in place.  dt: (Bt, 2A)."""
    B, n, k2 = yr.shape
    for name, a in (("y", yr), ("dy", dyr), ("dt", dt)):
        _check(name, a, coef.dtype)
    _launch_flat(dev, "unitary_apply_jvp_round", yr.dtype, B * P * (k2 // 2),
                 (yr, dyr, coef, dt, pair_i, pair_j, _i32(q0), _i32(P), _i32(n), _i32(k2 // 2), _i32(A),
                  _i64(coef_bstride), _i64(dt_bstride), _scalar(yr.dtype, sign)))


def unitary_matrix_vjp_round(dev, wr, d, coef, slot_i, slot_j, slot_q, s0, S, A, coef_bstride):
    """One backward round of the reduction-free VJP on wr (real view (B, n, 2n)), in place."""
    B, n, _ = wr.shape
    for name, a in (("w", wr), ("d", d)):
        _check(name, a, coef.dtype)
    _launch_flat(dev, "unitary_matrix_vjp_round", wr.dtype, B * S * S,
                 (wr, d, coef, slot_i, slot_j, slot_q, _i32(s0), _i32(S), _i32(n), _i32(A), _i64(coef_bstride)))
