// Index built-ins, block order and atomics for tests/test_cudasim.py.

// One entry per thread of a 3-D grid of 3-D blocks: the packed (block, thread) coordinates.
extern "C" __global__ void coordinates(int* __restrict__ out)
{
    const long long block = blockIdx.x + (long long)gridDim.x * (blockIdx.y + (long long)gridDim.y * blockIdx.z);
    const int thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const long long g = block * (blockDim.x * blockDim.y * blockDim.z) + thread;
    int* o = out + 6 * g;
    o[0] = blockIdx.x; o[1] = blockIdx.y; o[2] = blockIdx.z;
    o[3] = threadIdx.x; o[4] = threadIdx.y; o[5] = threadIdx.z;
}

// Which position each block ran at: out[block] = atomicAdd(counter, 1).
extern "C" __global__ void block_order(unsigned int* __restrict__ counter, unsigned int* __restrict__ out)
{
    if (threadIdx.x == 0) out[blockIdx.x] = atomicAdd(counter, 1u);
}

// total += x[i] with atomics, and the maximum.
template <typename T>
__global__ void atomic_sum(const T* __restrict__ x, T* __restrict__ total, int* __restrict__ maxi, const int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicAdd(total, x[i]);
    atomicMax(maxi, (int)x[i]);
}

// Math built-ins the package kernels may use: cos, sin, sincos, rsqrt, fma.
template <typename T>
__global__ void math_functions(const T* __restrict__ x, T* __restrict__ out, const int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    T s, c;
    sincos(x[i], &s, &c);
    out[5 * i + 0] = cos(x[i]);
    out[5 * i + 1] = sin(x[i]);
    out[5 * i + 2] = s * s + c * c;
    out[5 * i + 3] = rsqrt(T(1) + x[i] * x[i]);
    out[5 * i + 4] = fma(x[i], x[i], T(1));
}
