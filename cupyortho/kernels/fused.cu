// Fused kernels: all rounds of a schedule in one launch.
//
// A thread block owns a tile of TK columns of one batch entry, (n, TK), held in dynamic shared memory
// for the whole sweep (row-major, sh[row * TK + c]); rounds are separated by __syncthreads, since
// the next round pairs rows written by other threads.  Columns >= k of the last tile are zero
// padding and are never written back.  Grid: B * ntiles blocks, block index = b * ntiles + tile.
//
// Rounds: r = 0 .. R-1 in application order; `reverse` = 1 walks them backwards (the transpose).
// round_offsets: (R + 1,) offsets into the round-major pair_i, pair_j and cs.
#include "givens.cuh"

// Load the (n, TK) tile `tile` of src (n, k) into sh, zero-padding columns >= k.
template <typename T>
__device__ inline void load_tile(T* sh, const T* __restrict__ src, const int n, const int k,
                                 const int TK, const int col0)
{
    for (int e = threadIdx.x; e < n * TK; e += blockDim.x) {
        const int row = e / TK;
        const int col = col0 + (e - row * TK);
        sh[e] = col < k ? src[(long long)row * k + col] : T(0);
    }
}

template <typename T>
__device__ inline void store_tile(T* __restrict__ dst, const T* sh, const int n, const int k,
                                  const int TK, const int col0)
{
    for (int e = threadIdx.x; e < n * TK; e += blockDim.x) {
        const int row = e / TK;
        const int col = col0 + (e - row * TK);
        if (col < k) dst[(long long)row * k + col] = sh[e];
    }
}

// Runs body(q, c) for every item (round-major pair q, tile column c) of every round, the items of a
// round spread over the block's threads, rounds in application order (reverse = 1: backwards) with
// a barrier after each: the next round pairs rows written by other threads.
template <typename Body>
__device__ inline void for_each_round_item(const int* __restrict__ round_offsets, const int R, const int reverse,
                                           const int TK, Body body)
{
    for (int step = 0; step < R; ++step) {
        const int r = reverse ? R - 1 - step : step;
        const int q0 = round_offsets[r];
        const int items = (round_offsets[r + 1] - q0) * TK;
        for (int it = threadIdx.x; it < items; it += blockDim.x) {
            const int p = it / TK;
            body(q0 + p, it - p * TK);
        }
        __syncthreads();
    }
}

// y <- B_{R-1} ... B_0 y (or its transpose), in place.  Shared memory: n * TK * sizeof(T).
template <typename T>
__global__ void apply_fused(T* __restrict__ y, const T* __restrict__ cs, const int* __restrict__ pair_i,
                            const int* __restrict__ pair_j, const int* __restrict__ round_offsets,
                            const int R, const int reverse, const int n, const int k, const int TK,
                            const int ntiles, const long long cs_bstride, const T sign)
{
    extern __shared__ double smem_raw[];
    T* sh = reinterpret_cast<T*>(smem_raw);
    const long long b = blockIdx.x / ntiles;
    const int col0 = (int)(blockIdx.x - b * ntiles) * TK;
    T* yb = y + b * (long long)n * k;
    const T* csb = cs + b * cs_bstride;
    load_tile(sh, yb, n, k, TK, col0);
    __syncthreads();
    for_each_round_item(round_offsets, R, reverse, TK, [&](const int q, const int c) {
        T cq, sq;
        load_cos_sin(csb, q, sign, cq, sq);
        givens_rotate(sh[pair_i[q] * TK + c], sh[pair_j[q] * TK + c], cq, sq);
    });
    store_tile(yb, sh, n, k, TK, col0);
}

// Backward of y = apply(theta, x): y holds the output, g the cotangent.  Walks the rounds in the
// reverse of application order; for each, undoes it on the y tile (sign = sign of the undo) and
// rotates the g tile the same way, then the thread owning pair p writes its column sum over the
// tile, partial[b, tile, q] = sum_c (y_i g_j - y_j g_i), summed over c in order.  At the end the
// g tile (now U^T g, or U g) is written back to g.  Shared memory: 2 * n * TK * sizeof(T).
// partial: (B, ntiles, A); reduce_partials then sums the tiles in a fixed order (deterministic).
template <typename T>
__global__ void apply_vjp_fused(T* __restrict__ y, T* __restrict__ g, T* __restrict__ partial,
                                const T* __restrict__ cs, const int* __restrict__ pair_i,
                                const int* __restrict__ pair_j, const int* __restrict__ round_offsets,
                                const int R, const int reverse, const int n, const int k, const int TK,
                                const int ntiles, const int A, const long long cs_bstride, const T sign)
{
    extern __shared__ double smem_raw[];
    T* shy = reinterpret_cast<T*>(smem_raw);
    T* shg = shy + n * TK;
    const long long b = blockIdx.x / ntiles;
    const int tile = (int)(blockIdx.x - b * ntiles);
    const int col0 = tile * TK;
    const T* csb = cs + b * cs_bstride;
    T* pb = partial + (b * ntiles + tile) * (long long)A;
    load_tile(shy, y + b * (long long)n * k, n, k, TK, col0);
    load_tile(shg, g + b * (long long)n * k, n, k, TK, col0);
    __syncthreads();
    for (int step = 0; step < R; ++step) {
        // Backward visits rounds in the reverse of the forward order.
        const int r = reverse ? step : R - 1 - step;
        const int q0 = round_offsets[r];
        const int P = round_offsets[r + 1] - q0;
        for (int p = threadIdx.x; p < P; p += blockDim.x) {
            const int q = q0 + p;
            T cq, sq;
            load_cos_sin(csb, q, sign, cq, sq);
            T* yi = shy + pair_i[q] * TK;
            T* yj = shy + pair_j[q] * TK;
            T* gi = shg + pair_i[q] * TK;
            T* gj = shg + pair_j[q] * TK;
            T acc = T(0);
            for (int c = 0; c < TK; ++c) {
                givens_rotate(yi[c], yj[c], cq, sq);
                givens_rotate(gi[c], gj[c], cq, sq);
                acc += yi[c] * gj[c] - yj[c] * gi[c];
            }
            pb[q] = acc;
        }
        __syncthreads();
    }
    store_tile(g + b * (long long)n * k, shg, n, k, TK, col0);
}

// Forward mode: (y, dy) <- (B y, B dy + K y_new) round by round, K = sum_p sign dt_p K_p.
// dt: (Bt, A) round-major tangent angles, batch stride dt_bstride.  Shared: 2 * n * TK * sizeof(T).
template <typename T>
__global__ void apply_jvp_fused(T* __restrict__ y, T* __restrict__ dy, const T* __restrict__ cs,
                                const T* __restrict__ dt, const int* __restrict__ pair_i,
                                const int* __restrict__ pair_j, const int* __restrict__ round_offsets,
                                const int R, const int reverse, const int n, const int k, const int TK,
                                const int ntiles, const long long cs_bstride, const long long dt_bstride,
                                const T sign)
{
    extern __shared__ double smem_raw[];
    T* shy = reinterpret_cast<T*>(smem_raw);
    T* shd = shy + n * TK;
    const long long b = blockIdx.x / ntiles;
    const int col0 = (int)(blockIdx.x - b * ntiles) * TK;
    const T* csb = cs + b * cs_bstride;
    const T* dtb = dt + b * dt_bstride;
    load_tile(shy, y + b * (long long)n * k, n, k, TK, col0);
    load_tile(shd, dy + b * (long long)n * k, n, k, TK, col0);
    __syncthreads();
    for_each_round_item(round_offsets, R, reverse, TK, [&](const int q, const int c) {
        T cq, sq;
        load_cos_sin(csb, q, sign, cq, sq);
        const int oi = pair_i[q] * TK + c;
        const int oj = pair_j[q] * TK + c;
        givens_rotate_tangent(shy[oi], shy[oj], shd[oi], shd[oj], cq, sq, sign * dtb[q]);
    });
    store_tile(y + b * (long long)n * k, shy, n, k, TK, col0);
    store_tile(dy + b * (long long)n * k, shd, n, k, TK, col0);
}

// Reduction-free materialized VJP (docs/conventions.md, Derivatives) with W in shared memory, all
// rounds in one launch: one thread block per batch entry owns W[b] (n x n) for the whole backward sweep.  For
// r = R-1 .. 0: d[b, q_p] = W[j_p, i_p] - W[i_p, j_p] for the round's pairs, then W <- B_r^T W B_r,
// one thread per (slot a, slot e) 2 x 2 sub-block as in matrix_vjp_round; __syncthreads between
// rounds.  slot_offsets: (R + 1,).  d: (B, A) round-major.  Shared memory: n * n * sizeof(T).
template <typename T>
__global__ void matrix_vjp_fused(const T* __restrict__ w, T* __restrict__ d, const T* __restrict__ cs,
                                 const int* __restrict__ slot_i, const int* __restrict__ slot_j,
                                 const int* __restrict__ slot_q, const int* __restrict__ slot_offsets,
                                 const int R, const int n, const int A, const long long cs_bstride)
{
    extern __shared__ double smem_raw[];
    T* m = reinterpret_cast<T*>(smem_raw);
    const long long b = blockIdx.x;
    const T* wb = w + b * (long long)n * n;
    const T* csb = cs + b * cs_bstride;
    T* db = d + b * A;
    for (int e = threadIdx.x; e < n * n; e += blockDim.x) m[e] = wb[e];
    __syncthreads();
    for (int r = R - 1; r >= 0; --r) {
        const int s0 = slot_offsets[r];
        const int S = slot_offsets[r + 1] - s0;
        for (int it = threadIdx.x; it < S * S; it += blockDim.x) {
            const int a = s0 + it / S;
            const int e = s0 + it % S;
            const int ri = slot_i[a], rj = slot_j[a];
            if (a == e && slot_q[a] >= 0) db[slot_q[a]] = m[rj * n + ri] - m[ri * n + rj];
            T rc, rs, cc, cn;
            load_slot_cos_sin(csb, slot_q[a], rc, rs);
            load_slot_cos_sin(csb, slot_q[e], cc, cn);
            slot_rotate(m, n, ri, rj, slot_i[e], slot_j[e], rc, rs, cc, cn);
        }
        __syncthreads();
    }
}
