// Warp intrinsics for tests/test_cudasim.py.  Blocks are whole warps unless a test says otherwise.
template <typename T>
__global__ void warp_sum_xor(const T* __restrict__ x, T* __restrict__ out)
{
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    T v = x[g];
    for (int m = 16; m > 0; m /= 2) v += __shfl_xor_sync(0xffffffffu, v, m);
    out[g] = v;  // every lane holds the warp's sum
}

template <typename T>
__global__ void warp_sum_down(const T* __restrict__ x, T* __restrict__ out)
{
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    T v = x[g];
    for (int d = 16; d > 0; d /= 2) v += __shfl_down_sync(0xffffffffu, v, d);
    out[g] = v;  // lane 0 holds the warp's sum; other lanes partial sums
}

// Inclusive prefix sum within segments of `width` lanes (shfl_up), then a broadcast of lane 3 of
// each segment (shfl with width).
template <typename T, int WIDTH>
__global__ void segment_scan(const T* __restrict__ x, T* __restrict__ scan, T* __restrict__ lane3)
{
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    const int lane = threadIdx.x % 32;
    T v = x[g];
    for (int d = 1; d < WIDTH; d *= 2) {
        const T u = __shfl_up_sync(0xffffffffu, v, d, WIDTH);
        if (lane % WIDTH >= d) v += u;
    }
    scan[g] = v;
    lane3[g] = __shfl_sync(0xffffffffu, x[g], 3, WIDTH);
}

extern "C" __global__ void votes(const float* __restrict__ x, unsigned* __restrict__ ballot,
                                 int* __restrict__ any, int* __restrict__ all)
{
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned b = __ballot_sync(0xffffffffu, x[g] > 0.0f);
    const bool a = __any_sync(0xffffffffu, x[g] > 0.0f);
    const bool e = __all_sync(0xffffffffu, x[g] > 0.0f);
    if (threadIdx.x % 32 == 0) {
        ballot[g / 32] = b;
        any[g / 32] = a;
        all[g / 32] = e;
    }
}

// Warp-synchronous reduction through shared memory: without __syncwarp between the steps it is a
// race (lanes of a warp are not in lock-step since Volta).  One warp per block.
template <typename T, bool SYNC>
__global__ void warp_sum_shared(const T* __restrict__ x, T* __restrict__ out)
{
    __shared__ T buf[32];
    const int lane = threadIdx.x;
    buf[lane] = x[blockIdx.x * 32 + lane];
    if (SYNC) __syncwarp();
    for (int d = 16; d > 0; d /= 2) {
        T v = T(0);
        if (lane < d) v = buf[lane] + buf[lane + d];
        if (SYNC) __syncwarp();
        if (lane < d) buf[lane] = v;
        if (SYNC) __syncwarp();
    }
    if (lane == 0) out[blockIdx.x] = buf[0];
}

// A shuffle with the full mask in a block of blockDim.x < 32 threads (a partial warp).
extern "C" __global__ void partial_warp_full_mask(float* out)
{
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, out[threadIdx.x], 1);
}

// The same with the mask of the lanes that exist: defined behaviour.
extern "C" __global__ void partial_warp_exact_mask(float* out)
{
    const unsigned mask = (1u << blockDim.x) - 1u;
    out[threadIdx.x] = __shfl_xor_sync(mask, out[threadIdx.x], 1);
}
