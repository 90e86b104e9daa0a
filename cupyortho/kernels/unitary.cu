// Per-round kernels of U(n) (docs/unitary.md): complex Givens rotations with a phase per pair.
//
// Templated on the real type T (float for complex64, double for complex128).  Complex arrays are
// passed as their real views: element (.., m) of a complex array is T[2m] (real) and T[2m + 1]
// (imaginary), exactly the memory of numpy/cupy complex64/complex128.
//
// Pair p = (i, j) with c = cos(theta), s = sin(theta), u = e^{i phi} acts on rows
//   x_i <- c x_i - s conj(u) x_j,   x_j <- s u x_i + c x_j.
// A round op has a sign: sigma = +1 for U, -1 for U^H (theta -> -theta); `sign` below.
//
// Layouts (all C-contiguous):
//   y, g, dy : (B, n, k) complex     operand, cotangent, tangent
//   w        : (B, n, n) complex     the materialized VJP's W
//   coef     : (Bc, A, 4) real       (cos theta, sin theta, cos phi, sin phi), round-major; batch b
//                                    reads coef + b * coef_bstride (0 broadcasts one parameter set)
//   d        : (B, 2A) real          round-major cotangents: theta in [0, A), phi in [A, 2A)
//   dt       : (Bt, 2A) real         round-major tangents, same layout; batch stride dt_bstride
//   pair_i, pair_j : (A,) int        round-major pairs; a round owns q in [q0, q0 + P)
// The diagonal phases are applied by the caller (element-wise array operations).
// Every kernel uses a flat 1-D grid over its work items and no shared memory, atomics or warp
// intrinsics; results are deterministic (sums over columns run in order in one thread).
#include "givens.cuh"

template <typename T>
struct unitary_coef {
    T c, s, ur, ui;
};

// Coefficients of round-major angle q; the sine multiplied by `sign`.
template <typename T>
__device__ inline unitary_coef<T> unitary_load(const T* __restrict__ coef, const long long q, const T sign)
{
    unitary_coef<T> k;
    k.c = coef[4 * q];
    k.s = sign * coef[4 * q + 1];
    k.ur = coef[4 * q + 2];
    k.ui = coef[4 * q + 3];
    return k;
}

// (ar + i ai, br + i bi) <- (c a - s conj(u) b, s u a + c b).
template <typename T>
__device__ inline void unitary_rotate(T& ar, T& ai, T& br, T& bi, const T c, const T s, const T ur, const T ui)
{
    const T xr = ar, xi = ai, yr = br, yi = bi;
    // conj(u) b = (ur yr + ui yi) + i (ur yi - ui yr);  u a = (ur xr - ui xi) + i (ur xi + ui xr)
    ar = c * xr - s * (ur * yr + ui * yi);
    ai = c * xi - s * (ur * yi - ui * yr);
    br = s * (ur * xr - ui * xi) + c * yr;
    bi = s * (ur * xi + ui * xr) + c * yi;
}

// One round on rows of y.  Work items (b, p, col), total = B * P * k.
template <typename T>
__global__ void unitary_apply_round(T* __restrict__ y, const T* __restrict__ coef, const int* __restrict__ pair_i,
                                    const int* __restrict__ pair_j, const int q0, const int P, const int n,
                                    const int k, const long long coef_bstride, const T sign,
                                    const long long total)
{
    grid_item it;  // (b, pair, column)
    if (!flat_item(total, P, k, it)) return;
    const int q = q0 + it.u;
    const unitary_coef<T> K = unitary_load(coef + it.b * coef_bstride, q, sign);
    T* yb = y + 2 * it.b * (long long)n * k;
    const long long oi = 2 * ((long long)pair_i[q] * k + it.v);
    const long long oj = 2 * ((long long)pair_j[q] * k + it.v);
    unitary_rotate(yb[oi], yb[oi + 1], yb[oj], yb[oj + 1], K.c, K.s, K.ur, K.ui);
}

// Backward step of a round op of sign sigma: y holds the op's output, g its cotangent
// (dL/dRe + i dL/dIm).  Per pair, summed over columns in order (one thread per (b, p)):
//   d_theta = sigma Re sum(u conj(g_j) y_i - conj(u) conj(g_i) y_j)            (y = output)
//   y <- the op's input x (rotation by -sigma theta)
//   d_phi   = -sigma s Im sum(conj(u) conj(g_i) x_j + u conj(g_j) x_i)
//   g <- G^H g.
template <typename T>
__global__ void unitary_apply_vjp_round(T* __restrict__ y, T* __restrict__ g, T* __restrict__ d,
                                        const T* __restrict__ coef, const int* __restrict__ pair_i,
                                        const int* __restrict__ pair_j, const int q0, const int P, const int n,
                                        const int k, const int A, const long long coef_bstride, const T sign,
                                        const long long total)
{
    const long long t = flat_thread_index();
    if (t >= total) return;
    const long long b = t / P;
    const int q = q0 + (int)(t - b * P);
    const unitary_coef<T> K = unitary_load(coef + b * coef_bstride, q, sign);  // K.s = sigma s
    const long long base = 2 * b * (long long)n * k;
    T* yi = y + base + 2 * (long long)pair_i[q] * k;
    T* yj = y + base + 2 * (long long)pair_j[q] * k;
    T* gi = g + base + 2 * (long long)pair_i[q] * k;
    T* gj = g + base + 2 * (long long)pair_j[q] * k;
    T acc_theta = T(0), acc_phi = T(0);
    for (int col = 0; col < k; ++col) {
        T air = yi[2 * col], aii = yi[2 * col + 1], ajr = yj[2 * col], aji = yj[2 * col + 1];
        const T gir = gi[2 * col], gii = gi[2 * col + 1], gjr = gj[2 * col], gji = gj[2 * col + 1];
        // conj(g_j) y_i and conj(g_i) y_j
        T pr = gjr * air + gji * aii, pi = gjr * aii - gji * air;
        T qr = gir * ajr + gii * aji, qi = gir * aji - gii * ajr;
        // Re(u * P) - Re(conj(u) * Q)
        acc_theta += (K.ur * pr - K.ui * pi) - (K.ur * qr + K.ui * qi);
        unitary_rotate(air, aii, ajr, aji, K.c, -K.s, K.ur, K.ui);  // the op's input
        yi[2 * col] = air;
        yi[2 * col + 1] = aii;
        yj[2 * col] = ajr;
        yj[2 * col + 1] = aji;
        // conj(g_i) x_j and conj(g_j) x_i
        qr = gir * ajr + gii * aji;
        qi = gir * aji - gii * ajr;
        pr = gjr * air + gji * aii;
        pi = gjr * aii - gji * air;
        // Im(conj(u) * Q) + Im(u * P)
        acc_phi += (K.ur * qi - K.ui * qr) + (K.ur * pi + K.ui * pr);
        T hir = gir, hii = gii, hjr = gjr, hji = gji;
        unitary_rotate(hir, hii, hjr, hji, K.c, -K.s, K.ur, K.ui);
        gi[2 * col] = hir;
        gi[2 * col + 1] = hii;
        gj[2 * col] = hjr;
        gj[2 * col + 1] = hji;
    }
    d[b * 2 * (long long)A + q] = sign * acc_theta;
    d[b * 2 * (long long)A + A + q] = -K.s * acc_phi;
}

// Forward-mode step of a round op of sign sigma, on (y, dy) with y the op's input x:
//   y <- G y,  dy <- G dy + sigma dtheta K y + sigma s dphi (i conj(u) x_j, i u x_i),
//   K y = (-conj(u) y_j, u y_i).   Work items (b, p, col).
template <typename T>
__global__ void unitary_apply_jvp_round(T* __restrict__ y, T* __restrict__ dy, const T* __restrict__ coef,
                                        const T* __restrict__ dt, const int* __restrict__ pair_i,
                                        const int* __restrict__ pair_j, const int q0, const int P, const int n,
                                        const int k, const int A, const long long coef_bstride,
                                        const long long dt_bstride, const T sign, const long long total)
{
    grid_item it;  // (b, pair, column)
    if (!flat_item(total, P, k, it)) return;
    const long long b = it.b;
    const int q = q0 + it.u;
    const unitary_coef<T> K = unitary_load(coef + b * coef_bstride, q, sign);  // K.s = sigma s
    const T wt = sign * dt[b * dt_bstride + q];
    const T wp = K.s * dt[b * dt_bstride + A + q];
    const long long base = 2 * b * (long long)n * k;
    const long long oi = base + 2 * ((long long)pair_i[q] * k + it.v);
    const long long oj = base + 2 * ((long long)pair_j[q] * k + it.v);
    const T xir = y[oi], xii = y[oi + 1], xjr = y[oj], xji = y[oj + 1];
    T air = xir, aii = xii, ajr = xjr, aji = xji;
    T vir = dy[oi], vii = dy[oi + 1], vjr = dy[oj], vji = dy[oj + 1];
    unitary_rotate(air, aii, ajr, aji, K.c, K.s, K.ur, K.ui);
    unitary_rotate(vir, vii, vjr, vji, K.c, K.s, K.ur, K.ui);
    // conj(u) y_j, u y_i (outputs); conj(u) x_j, u x_i (inputs)
    const T cyr = K.ur * ajr + K.ui * aji, cyi = K.ur * aji - K.ui * ajr;
    const T uyr = K.ur * air - K.ui * aii, uyi = K.ur * aii + K.ui * air;
    const T cxr = K.ur * xjr + K.ui * xji, cxi = K.ur * xji - K.ui * xjr;
    const T uxr = K.ur * xir - K.ui * xii, uxi = K.ur * xii + K.ui * xir;
    y[oi] = air;
    y[oi + 1] = aii;
    y[oj] = ajr;
    y[oj + 1] = aji;
    // i * z = (-Im z, Re z)
    dy[oi] = vir - wt * cyr - wp * cxi;
    dy[oi + 1] = vii - wt * cyi + wp * cxr;
    dy[oj] = vjr + wt * uyr - wp * uxi;
    dy[oj + 1] = vji + wt * uyi + wp * uxr;
}

// One backward step of the reduction-free materialized VJP for round r (docs/unitary.md):
//   d_theta = Re(conj(u) W_ji - u W_ij),
//   d_phi   = Im(s^2 (W_jj - W_ii) + s c (u W_ij + conj(u) W_ji))     (read before the update),
// then W <- B_r^H W B_r.  A round is a set of slots: pairs (i, j, q) and untouched coordinates
// (i, -1, -1); B^H W B acts on the sub-block rows(slot a) x cols(slot e) independently of every other
// sub-block, so one thread owns one (a, e) sub-block.  Work items (b, a, e), total = B * S * S.
template <typename T>
__global__ void unitary_matrix_vjp_round(T* __restrict__ w, T* __restrict__ d, const T* __restrict__ coef,
                                         const int* __restrict__ slot_i, const int* __restrict__ slot_j,
                                         const int* __restrict__ slot_q, const int s0, const int S, const int n,
                                         const int A, const long long coef_bstride, const long long total)
{
    grid_item it;  // (b, row slot, column slot)
    if (!flat_item(total, S, S, it)) return;
    const long long b = it.b;
    const int a = s0 + it.u, e = s0 + it.v;
    T* wb = w + 2 * b * (long long)n * n;
    const T* cb = coef + b * coef_bstride;
    const int ri = slot_i[a], rj = slot_j[a], ci = slot_i[e], cj = slot_j[e];
    unitary_coef<T> R = {T(1), T(0), T(1), T(0)}, C = {T(1), T(0), T(1), T(0)};
    if (slot_q[a] >= 0) R = unitary_load(cb, slot_q[a], T(1));
    if (slot_q[e] >= 0) C = unitary_load(cb, slot_q[e], T(1));
    // Entries of the sub-block; a missing row/column (singleton) is a zero placeholder.
    const long long o00 = 2 * ((long long)ri * n + ci);
    const long long o01 = cj >= 0 ? 2 * ((long long)ri * n + cj) : -1;
    const long long o10 = rj >= 0 ? 2 * ((long long)rj * n + ci) : -1;
    const long long o11 = (rj >= 0 && cj >= 0) ? 2 * ((long long)rj * n + cj) : -1;
    T m00r = wb[o00], m00i = wb[o00 + 1];
    T m01r = o01 >= 0 ? wb[o01] : T(0), m01i = o01 >= 0 ? wb[o01 + 1] : T(0);
    T m10r = o10 >= 0 ? wb[o10] : T(0), m10i = o10 >= 0 ? wb[o10 + 1] : T(0);
    T m11r = o11 >= 0 ? wb[o11] : T(0), m11i = o11 >= 0 ? wb[o11 + 1] : T(0);
    if (a == e && slot_q[a] >= 0) {
        const int q = slot_q[a];
        // W_ii = m00, W_ij = m01, W_ji = m10, W_jj = m11
        const T ur = R.ur, ui = R.ui, c = R.c, s = R.s;
        // conj(u) W_ji and u W_ij
        const T vr = ur * m10r + ui * m10i, vi = ur * m10i - ui * m10r;
        const T zr = ur * m01r - ui * m01i, zi = ur * m01i + ui * m01r;
        d[b * 2 * (long long)A + q] = vr - zr;
        d[b * 2 * (long long)A + A + q] = s * s * (m11i - m00i) + s * c * (zi + vi);
    }
    // Left: rows by G^H = G(-theta, phi).
    unitary_rotate(m00r, m00i, m10r, m10i, R.c, -R.s, R.ur, R.ui);
    unitary_rotate(m01r, m01i, m11r, m11i, R.c, -R.s, R.ur, R.ui);
    // Right: W G on columns: w_i <- c w_i + s u w_j, w_j <- -s conj(u) w_i + c w_j, i.e. the row
    // rotation with (c, -s, conj(u)).
    unitary_rotate(m00r, m00i, m01r, m01i, C.c, -C.s, C.ur, -C.ui);
    unitary_rotate(m10r, m10i, m11r, m11i, C.c, -C.s, C.ur, -C.ui);
    wb[o00] = m00r;
    wb[o00 + 1] = m00i;
    if (o01 >= 0) { wb[o01] = m01r; wb[o01 + 1] = m01i; }
    if (o10 >= 0) { wb[o10] = m10r; wb[o10 + 1] = m10i; }
    if (o11 >= 0) { wb[o11] = m11r; wb[o11 + 1] = m11i; }
}
