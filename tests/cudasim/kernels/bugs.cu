// Deliberately broken kernels (and their correct twins) for tests/test_cudasim.py: each shows one
// class of bug the harness must catch.
#include "helpers.cuh"

// y[i] = 2 x[i], i < n: correct.
template <typename T>
__global__ void scale(const T* __restrict__ x, T* __restrict__ y, const int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = add(x[i], x[i]);
}

// Off by one in the read index: y[i] = 2 x[i + 1] reads one element past the end of x.
template <typename T>
__global__ void scale_read_past(const T* __restrict__ x, T* __restrict__ y, const int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = add(x[i + 1], x[i + 1]);
}

// Off by one in the bound: i <= n writes one element past the end of y.
template <typename T>
__global__ void scale_write_past(const T* __restrict__ x, T* __restrict__ y, const int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) y[i] = add(x[i < n ? i : 0], x[i < n ? i : 0]);
}

// In place through two pointers that may alias: y[i] += x[i].
template <typename T>
__global__ void accumulate(const T* x, T* y, const int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = add(y[i], x[i]);
}

// A barrier only half of the block reaches.
extern "C" __global__ void divergent_barrier(float* out)
{
    if (threadIdx.x < blockDim.x / 2) __syncthreads();
    out[threadIdx.x] = 1.0f;
}

// Threads past n return early, the others then wait at a barrier.
extern "C" __global__ void early_return_barrier(float* out, const int n)
{
    const int i = threadIdx.x;
    if (i >= n) return;
    out[i] = 1.0f;
    __syncthreads();
    out[i] = 2.0f;
}

// Threads wait at two different barriers.
extern "C" __global__ void two_barriers(float* out)
{
    if (threadIdx.x % 2) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1.0f;
}

// Writes one element past the dynamic shared memory it was given (blockDim.x floats).
extern "C" __global__ void shared_write_past(float* out)
{
    extern __shared__ float sh[];
    sh[threadIdx.x + 1] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = sh[threadIdx.x];
}

// Reads dynamic shared memory nobody wrote: NaN in the harness, garbage on a GPU.
template <typename T>
__global__ void shared_uninitialized(T* out)
{
    extern __shared__ __align__(sizeof(T)) unsigned char raw[];
    const T* sh = reinterpret_cast<const T*>(raw);
    out[threadIdx.x] = sh[threadIdx.x];
}

// Writes through a non-const pointer (used with a read-only array).
extern "C" __global__ void overwrite(double* a)
{
    a[threadIdx.x] = -1.0;
}

extern "C" __global__ void trap_at_five(int* out)
{
    if (threadIdx.x == 5) __trap();
    out[threadIdx.x] = 1;
}

// Reads a static __shared__ array before any thread of the block wrote it (no barrier between the
// write and the read of a neighbour's slot): NaN in the harness for the first reader, in every
// block, not the previous block's values.
extern "C" __global__ void static_shared_read_before_write(float* out)
{
    __shared__ float buf[64], other;
    out[blockIdx.x * blockDim.x + threadIdx.x] = buf[(threadIdx.x + 1) % blockDim.x] + other;
    buf[threadIdx.x] = 1.0f;
    if (threadIdx.x == 0) other = 0.0f;
}

// A race the result does not show on the CPU: every thread adds into out[0] without an atomic.
// On a GPU updates are lost; in the harness threads run one at a time, so the sum comes out right.
// Only the ThreadSanitizer mode reports it.
extern "C" __global__ void racy_accumulate(const double* __restrict__ x, double* __restrict__ out, const int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[0] += x[i];
}

// The same with atomicAdd: correct on a GPU, clean under ThreadSanitizer.
extern "C" __global__ void atomic_accumulate(const double* __restrict__ x, double* __restrict__ out, const int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) atomicAdd(out, x[i]);
}
