// Block-wide sums, correct and deliberately broken, for the harness's own tests (tests/test_cudasim.py).
//
// block_sum<T, BARRIER>: out[blockIdx.x] = sum of x[blockIdx.x * blockDim.x + t] over the block's threads,
// a shared-memory tree reduction (blockDim.x a power of two).  BARRIER = false removes the barrier
// between the tree's levels: a race that only shows for some thread orders.
// block_sum_dyn<T>: the same with dynamic shared memory (blockDim.x * sizeof(T) bytes).
#include "helpers.cuh"

template <typename T, bool BARRIER>
__global__ void block_sum(const T* __restrict__ x, T* __restrict__ out, const int n)
{
    __shared__ T buf[256];
    const int t = threadIdx.x;
    const int g = blockIdx.x * blockDim.x + t;
    buf[t] = g < n ? x[g] : T(0);
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (t < stride) buf[t] = add(buf[t], buf[t + stride]);
        if (BARRIER) __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = buf[0];
}

template <typename T>
__global__ void block_sum_dyn(const T* __restrict__ x, T* __restrict__ out, const int n)
{
    extern __shared__ __align__(16) unsigned char smem[];
    T* buf = reinterpret_cast<T*>(smem);
    const int t = threadIdx.x;
    const int g = blockIdx.x * blockDim.x + t;
    buf[t] = g < n ? x[g] : T(0);
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (t < stride) buf[t] += buf[t + stride];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = buf[0];
}
