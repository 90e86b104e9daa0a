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
