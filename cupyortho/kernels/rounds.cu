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
    const long long t = flat_thread_index();
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
    grid_item it;  // (b, pair, column)
    if (!flat_item(total, P, k, it)) return;
    const int q = q0 + it.u;
    T c, s;
    load_cos_sin(cs + it.b * cs_bstride, q, sign, c, s);
    T* yb = y + it.b * (long long)n * k;
    givens_rotate(yb[(long long)pair_i[q] * k + it.v], yb[(long long)pair_j[q] * k + it.v], c, s);
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
    const long long t = flat_thread_index();
    if (t >= total) return;
    const long long b = t / P;
    const int q = q0 + (int)(t - b * P);
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
    grid_item it;  // (b, pair, column)
    if (!flat_item(total, P, k, it)) return;
    const int q = q0 + it.u;
    T c, s;
    load_cos_sin(cs + it.b * cs_bstride, q, sign, c, s);
    const long long base = it.b * (long long)n * k + it.v;
    const long long oi = base + (long long)pair_i[q] * k;
    const long long oj = base + (long long)pair_j[q] * k;
    givens_rotate_tangent(y[oi], y[oj], dy[oi], dy[oj], c, s, sign * dt[it.b * dt_bstride + q]);
}

// One backward step, for round r, of the reduction-free materialized VJP (docs/conventions.md):
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
    grid_item it;  // (b, row slot, column slot)
    if (!flat_item(total, S, S, it)) return;
    const int a = s0 + it.u, e = s0 + it.v;
    T* wb = w + it.b * (long long)n * n;
    const T* csb = cs + it.b * cs_bstride;
    const int ri = slot_i[a], rj = slot_j[a];
    if (a == e && slot_q[a] >= 0) {
        d[it.b * A + slot_q[a]] = wb[(long long)rj * n + ri] - wb[(long long)ri * n + rj];
    }
    T rc, rs, cc, cn;
    load_slot_cos_sin(csb, slot_q[a], rc, rs);
    load_slot_cos_sin(csb, slot_q[e], cc, cn);
    slot_rotate(wb, n, ri, rj, slot_i[e], slot_j[e], rc, rs, cc, cn);
}

// d[b, angle_index[q]] = dsign * sum_{tile < ntiles} partial[b, tile, q], summed in tile order:
// the fixed-order second stage of the deterministic column reduction.  partial: (B, ntiles, A).
template <typename T>
__global__ void reduce_partials(const T* __restrict__ partial, T* __restrict__ d,
                                const int* __restrict__ angle_index, const int ntiles, const int A,
                                const T dsign, const long long total)
{
    const long long t = flat_thread_index();
    if (t >= total) return;
    const long long b = t / A;
    const int q = (int)(t - b * A);
    const T* pb = partial + b * (long long)ntiles * A + q;
    T acc = T(0);
    for (int tile = 0; tile < ntiles; ++tile) acc += pb[(long long)tile * A];
    d[b * A + angle_index[q]] = dsign * acc;
}
