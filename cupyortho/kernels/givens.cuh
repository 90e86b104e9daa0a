// Shared device helpers for the Givens-rotation kernels of cupyortho.
//
// Conventions (docs/conventions.md): a rotation of the plane (i, j), i < j, by theta acts on rows:
//   x_i <- c x_i - s x_j,   x_j <- s x_i + c x_j,   c = cos(theta), s = sin(theta).
// Cosines and sines are computed once per call by the kernel `cos_sin` and stored interleaved,
// cs[2q] = cos(theta_q), cs[2q+1] = sin(theta_q), q a round-major (or public) angle index.
//
// Only the CUDA features listed in the design contract are used here (no atomics, no warp
// intrinsics), so the CPU harness in tests/cudasim can run every kernel.
#pragma once

// Rotate the pair (a, b) in place by (c, s): a <- c a - s b, b <- s a + c b.
template <typename T>
__device__ inline void givens_rotate(T& a, T& b, const T c, const T s)
{
    const T u = a;
    const T v = b;
    a = c * u - s * v;
    b = s * u + c * v;
}

// Interleaved cosine/sine of angle q, the sine multiplied by `sign` (+1 forward, -1 transpose).
template <typename T>
__device__ inline void load_cos_sin(const T* __restrict__ cs, const long long q, const T sign,
                                             T& c, T& s)
{
    c = cs[2 * q];
    s = sign * cs[2 * q + 1];
}

// This thread's index in a flat 1-D grid (every per-round kernel indexes its work items this way,
// so large batches need no 2-D grid).
__device__ inline long long flat_thread_index()
{
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}

// Work item t of a flat grid over B x U x V: batch entry b and the two inner indices (u, v); e.g.
// (pair p of a round, column) for the row kernels, (row slot, column slot) for the two-sided sweep.
struct grid_item {
    long long b;
    int u;
    int v;
};

__device__ inline grid_item split_item(const long long t, const int U, const int V)
{
    grid_item it;
    const long long per_batch = (long long)U * V;
    it.b = t / per_batch;
    const long long r = t - it.b * per_batch;
    it.u = (int)(r / V);
    it.v = (int)(r - (long long)it.u * V);
    return it;
}

// This thread's work item of a flat grid over total = B x U x V items; false for the threads past
// the end (which return).
__device__ inline bool flat_item(const long long total, const int U, const int V, grid_item& it)
{
    const long long t = flat_thread_index();
    if (t >= total) return false;
    it = split_item(t, U, V);
    return true;
}

// Forward-mode step of one rotation on (y, dy): y <- G y, dy <- G dy + w K y_new with
// (K y)_i = -y_j, (K y)_j = y_i (w = sign * d theta).
template <typename T>
__device__ inline void givens_rotate_tangent(T& yi, T& yj, T& dyi, T& dyj, const T c, const T s, const T w)
{
    givens_rotate(yi, yj, c, s);
    givens_rotate(dyi, dyj, c, s);
    dyi -= w * yj;
    dyj += w * yi;
}

// cos/sin of slot angle q (round-major), or the identity (1, 0) for a coordinate the round leaves
// alone (q < 0).
template <typename T>
__device__ inline void load_slot_cos_sin(const T* __restrict__ cs, const int q, T& c, T& s)
{
    c = T(1);
    s = T(0);
    if (q >= 0) load_cos_sin(cs, q, T(1), c, s);
}

// One slot sub-block of W <- B^T W B on the row-major n x n matrix m: rows (ri, rj) x columns
// (ci, cj), a missing row or column (-1: a coordinate the round leaves alone) a zero placeholder;
// (rc, rs) is the rotation of the row slot, (cc, cn) that of the column slot.  The sub-blocks of one
// round are independent, so one thread may own each.
template <typename T>
__device__ inline void slot_rotate(T* m, const long long n, const int ri, const int rj, const int ci,
                                   const int cj, const T rc, const T rs, const T cc, const T cn)
{
    T m00 = m[ri * n + ci];
    T m01 = cj >= 0 ? m[ri * n + cj] : T(0);
    T m10 = rj >= 0 ? m[rj * n + ci] : T(0);
    T m11 = (rj >= 0 && cj >= 0) ? m[rj * n + cj] : T(0);
    // Left: G^T on rows (x_i <- c x_i + s x_j, x_j <- -s x_i + c x_j).
    givens_rotate(m00, m10, rc, -rs);
    givens_rotate(m01, m11, rc, -rs);
    // Right: W G on columns (w_i <- c w_i + s w_j, w_j <- -s w_i + c w_j).
    givens_rotate(m00, m01, cc, -cn);
    givens_rotate(m10, m11, cc, -cn);
    m[ri * n + ci] = m00;
    if (cj >= 0) m[ri * n + cj] = m01;
    if (rj >= 0) m[rj * n + ci] = m10;
    if (rj >= 0 && cj >= 0) m[rj * n + cj] = m11;
}
