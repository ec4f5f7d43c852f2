/* common.cuh - the one home of the small helpers the CUDA kernel files share: grid sizes, a
 * deterministic block reduction in double, and fp32 activations with their derivatives (host and
 * device, so that per-element math can be checked on the host). */
#ifndef UMAS_CUDA_COMMON_CUH
#define UMAS_CUDA_COMMON_CUH

#include <cuda_runtime.h>

#include <cstddef>

/* Blocks for a grid-stride loop over n elements: at least 1, at most 65536. */
static inline unsigned grid_for(size_t n, int threads) {
    size_t blocks = (n + (size_t)threads - 1) / (size_t)threads;
    return (unsigned)(blocks < 1 ? 1 : blocks < 65536 ? blocks : 65536);
}

/* Sums v[0..K) over the block; every thread gets the sums. blockDim.x a multiple of 32, at most
 * 1024. Fixed summation order (deterministic). May be called repeatedly. */
template <int K> static __device__ void block_sum(double (&v)[K]) {
    __shared__ double partial[K][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int k = 0; k < K; k++)
        for (int offset = 16; offset > 0; offset >>= 1)
            v[k] += __shfl_xor_sync(0xffffffffu, v[k], offset);
    __syncthreads(); /* the previous call's readers are done with `partial` */
    if (lane == 0)
        for (int k = 0; k < K; k++)
            partial[k][warp] = v[k];
    __syncthreads();
    for (int k = 0; k < K; k++) {
        double s = 0;
        for (int w = 0; w < warps; w++)
            s += partial[k][w];
        v[k] = s;
    }
}

static __host__ __device__ __forceinline__ float sigmoidf_(float x) {
    return 1.0f / (1.0f + expf(-x));
}
static __host__ __device__ __forceinline__ float siluf_(float x) {
    return x * sigmoidf_(x);
}
/* d sigmoid / dx = s (1 - s) */
static __host__ __device__ __forceinline__ float sigmoid_derivativef_(float x) {
    float s = sigmoidf_(x);
    return s * (1.0f - s);
}
/* d SiLU / dx = s (1 + x (1 - s)) */
static __host__ __device__ __forceinline__ float silu_derivativef_(float x) {
    float s = sigmoidf_(x);
    return s * (1.0f + x * (1.0f - s));
}

#endif
