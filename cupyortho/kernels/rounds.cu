// Per-round kernels: one launch per round of a schedule.  They are the general fallback used when a
// whole column of the operand does not fit in shared memory, and the reference for the fused kernels.
//
// Layouts (all C-contiguous):
//   y, g, dy : (B, n, k)   operand, cotangent, tangent; rows are coordinates.
//   cs       : (Bc, A, 2)  interleaved cos/sin of the angles in round-major order; batch b reads
//                          cs + b * cs_bstride (cs_bstride = 0 broadcasts one angle vector).
//   pair_i, pair_j : (A,)  round-major pairs; round r owns q in [q0, q0 + P).
// Every kernel indexes with a flat 1-D grid over its work items, so large batches need no 2-D grid.
#include "givens.cuh"

// cs[b, q] = (cos, sin)(theta[b, angle_index[q]]) for b < B, q < A.   theta: (B, A_theta).
template <typename T>
__global__ void cos_sin(const T* __restrict__ theta, const int* __restrict__ angle_index,
                        T* __restrict__ cs, const int A, const int A_theta, const long long total)
{
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= total) return;
    const long long b = t / A;
    const int q = (int)(t - b * A);
    const T a = theta[b * A_theta + angle_index[q]];
    cs[2 * t] = cos(a);
    cs[2 * t + 1] = sin(a);
}

// One round on rows: y[b, i_p, col], y[b, j_p, col] rotated by angle q0 + p (sine times `sign`).
// Work items: (b, p, col), total = B * P * k.
template <typename T>
__global__ void apply_round(T* __restrict__ y, const T* __restrict__ cs, const int* __restrict__ pair_i,
                            const int* __restrict__ pair_j, const int q0, const int P, const int n,
                            const int k, const long long cs_bstride, const T sign, const long long total)
{
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= total) return;
    const long long per_batch = (long long)P * k;
    const long long b = t / per_batch;
    const long long r = t - b * per_batch;
    const int p = (int)(r / k);
    const int col = (int)(r - (long long)p * k);
    const int q = q0 + p;
    T c, s;
    load_cos_sin(cs + b * cs_bstride, q, sign, c, s);
    T* yb = y + b * (long long)n * k;
    givens_rotate(yb[(long long)pair_i[q] * k + col], yb[(long long)pair_j[q] * k + col], c, s);
}

// Backward step of one round: undo the round on y (its output -> its input) and rotate the cotangent
// g the same way (B^T g), then d[b, q] = dsign * sum_col (y_i g_j - y_j g_i) over the round's input.
// One thread per (b, p) sums the k columns in order, so the result is deterministic.
// `sign` is the sign of the undo rotation (-1 undoes a forward round, +1 a transposed one).
template <typename T>
__global__ void apply_vjp_round(T* __restrict__ y, T* __restrict__ g, T* __restrict__ d,
                                const T* __restrict__ cs, const int* __restrict__ pair_i,
                                const int* __restrict__ pair_j, const int q0, const int P, const int n,
                                const int k, const int A, const long long cs_bstride, const T sign,
                                const T dsign, const long long total)
{
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= total) return;
    const long long b = t / P;
    const int p = (int)(t - b * P);
    const int q = q0 + p;
    T c, s;
    load_cos_sin(cs + b * cs_bstride, q, sign, c, s);
    T* yi = y + b * (long long)n * k + (long long)pair_i[q] * k;
    T* yj = y + b * (long long)n * k + (long long)pair_j[q] * k;
    T* gi = g + b * (long long)n * k + (long long)pair_i[q] * k;
    T* gj = g + b * (long long)n * k + (long long)pair_j[q] * k;
    T acc = T(0);
    for (int col = 0; col < k; ++col) {
        givens_rotate(yi[col], yj[col], c, s);
        givens_rotate(gi[col], gj[col], c, s);
        acc += yi[col] * gj[col] - yj[col] * gi[col];
    }
    d[b * A + q] = dsign * acc;
}

// Forward-mode step of one round: y <- B y, dy <- B dy + K y_new with K = sum_p sign dt_p K_p,
// (K_p y)_i = -y_j, (K_p y)_j = y_i.  dt: (Bt, A) tangent angles in round-major order.
template <typename T>
__global__ void apply_jvp_round(T* __restrict__ y, T* __restrict__ dy, const T* __restrict__ cs,
                                const T* __restrict__ dt, const int* __restrict__ pair_i,
                                const int* __restrict__ pair_j, const int q0, const int P, const int n,
                                const int k, const long long cs_bstride, const long long dt_bstride,
                                const T sign, const long long total)
{
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= total) return;
    const long long per_batch = (long long)P * k;
    const long long b = t / per_batch;
    const long long r = t - b * per_batch;
    const int p = (int)(r / k);
    const int col = (int)(r - (long long)p * k);
    const int q = q0 + p;
    T c, s;
    load_cos_sin(cs + b * cs_bstride, q, sign, c, s);
    const T w = sign * dt[b * dt_bstride + q];
    const long long oi = b * (long long)n * k + (long long)pair_i[q] * k + col;
    const long long oj = b * (long long)n * k + (long long)pair_j[q] * k + col;
    T ui = y[oi], uj = y[oj], vi = dy[oi], vj = dy[oj];
    givens_rotate(ui, uj, c, s);
    givens_rotate(vi, vj, c, s);
    y[oi] = ui;
    y[oj] = uj;
    dy[oi] = vi - w * uj;
    dy[oj] = vj + w * ui;
}

// One backward step of the reduction-free materialized VJP (DESIGN.md section 2) for round r:
//   d[b, q_p] = W[j_p, i_p] - W[i_p, j_p]   (read before the update), then W <- B_r^T W B_r.
// A round is a set of slots: pairs (i, j, q) and, for coordinates the round leaves alone, singletons
// (i, -1, -1).  B_r^T W B_r acts on the sub-block rows(slot a) x cols(slot e) independently of every
// other sub-block, so one thread owns one (a, e) sub-block: no two threads touch the same entry.
// w: (B, n, n).  Work items: (b, a, e), total = B * S * S.
template <typename T>
__global__ void matrix_vjp_round(T* __restrict__ w, T* __restrict__ d, const T* __restrict__ cs,
                                 const int* __restrict__ slot_i, const int* __restrict__ slot_j,
                                 const int* __restrict__ slot_q, const int s0, const int S, const int n,
                                 const int A, const long long cs_bstride, const long long total)
{
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= total) return;
    const long long per_batch = (long long)S * S;
    const long long b = t / per_batch;
    const long long r = t - b * per_batch;
    const int a = (int)(r / S) + s0;
    const int e = (int)(r - (long long)(a - s0) * S) + s0;
    T* wb = w + b * (long long)n * n;
    const T* csb = cs + b * cs_bstride;
    const int ri = slot_i[a], rj = slot_j[a], ci = slot_i[e], cj = slot_j[e];
    T rc = T(1), rs = T(0), cc = T(1), cn = T(0);
    if (slot_q[a] >= 0) load_cos_sin(csb, slot_q[a], T(1), rc, rs);
    if (slot_q[e] >= 0) load_cos_sin(csb, slot_q[e], T(1), cc, cn);
    if (a == e && slot_q[a] >= 0) {
        d[b * A + slot_q[a]] = wb[(long long)rj * n + ri] - wb[(long long)ri * n + rj];
    }
    // Entries of the sub-block; a missing row/column (singleton) is a zero placeholder.
    T m00 = wb[(long long)ri * n + ci];
    T m01 = cj >= 0 ? wb[(long long)ri * n + cj] : T(0);
    T m10 = rj >= 0 ? wb[(long long)rj * n + ci] : T(0);
    T m11 = (rj >= 0 && cj >= 0) ? wb[(long long)rj * n + cj] : T(0);
    // Left: G^T on rows (x_i <- c x_i + s x_j, x_j <- -s x_i + c x_j).
    givens_rotate(m00, m10, rc, -rs);
    givens_rotate(m01, m11, rc, -rs);
    // Right: W G on columns (w_i <- c w_i + s w_j, w_j <- -s w_i + c w_j).
    givens_rotate(m00, m01, cc, -cn);
    givens_rotate(m10, m11, cc, -cn);
    wb[(long long)ri * n + ci] = m00;
    if (cj >= 0) wb[(long long)ri * n + cj] = m01;
    if (rj >= 0) wb[(long long)rj * n + ci] = m10;
    if (rj >= 0 && cj >= 0) wb[(long long)rj * n + cj] = m11;
}

// d[b, angle_index[q]] = dsign * sum_{tile < ntiles} partial[b, tile, q], summed in tile order:
// the fixed-order second stage of the deterministic column reduction.  partial: (B, ntiles, A).
template <typename T>
__global__ void reduce_partials(const T* __restrict__ partial, T* __restrict__ d,
                                const int* __restrict__ angle_index, const int ntiles, const int A,
                                const T dsign, const long long total)
{
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= total) return;
    const long long b = t / A;
    const int q = (int)(t - b * A);
    const T* pb = partial + b * (long long)ntiles * A + q;
    T acc = T(0);
    for (int tile = 0; tile < ntiles; ++tile) acc += pb[(long long)tile * A];
    d[b * A + angle_index[q]] = dsign * acc;
}
