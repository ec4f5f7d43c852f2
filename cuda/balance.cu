/* balance.cu - charge/spin balancing of the l = 0 channels on the GPU (core/balance.h,
 * model-spec section 8): the per-channel sums, in double with a fixed order (deterministic),
 * and the shift. Node features x[N][9][C] in L-order, fp32. See kernels.h for the contracts. */
#include "kernels.h"

#include "common.cuh"

enum { SUM_THREADS = 1024, SHIFT_THREADS = 256 };

/* One block per channel k: sums[k] = sum over nodes [0, nodes) of x[n][0][channel[k]]. */
static __global__ void balance_sums_kernel(int nodes, int C, const int *__restrict__ channel,
                                           const float *__restrict__ x, double *__restrict__ sums) {
    const int c = channel[blockIdx.x];
    double v[1] = {0.0};
    for (int n = threadIdx.x; n < nodes; n += blockDim.x)
        v[0] += (double)x[(size_t)n * 9 * C + c];
    block_sum<1>(v);
    if (threadIdx.x == 0)
        sums[blockIdx.x] = v[0];
}

void cu_balance_sums(int nodes, int C, int count, const int *channel, const float *x, double *sums,
                     cudaStream_t stream) {
    if (count <= 0)
        return;
    balance_sums_kernel<<<count, SUM_THREADS, 0, stream>>>(nodes, C, channel, x, sums);
}

/* x[n][0][channel[k]] -= (sums[k] - target[k]) / atoms over nodes [0, nodes). */
static __global__ void balance_shift_kernel(int nodes, int C, int count,
                                            const int *__restrict__ channel,
                                            const double *__restrict__ sums,
                                            const double *__restrict__ target, double atoms,
                                            float *__restrict__ x) {
    const size_t total = (size_t)nodes * count;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const int k = (int)(i % count);
        const size_t n = i / count;
        const double shift = (sums[k] - (target ? target[k] : 0.0)) / atoms;
        x[n * 9 * C + channel[k]] -= (float)shift;
    }
}

void cu_balance_shift(int nodes, int C, int count, const int *channel, const double *sums,
                      const double *target, int atoms, float *x, cudaStream_t stream) {
    if (count <= 0 || nodes <= 0)
        return;
    const size_t total = (size_t)nodes * count;
    balance_shift_kernel<<<grid_for(total, SHIFT_THREADS), SHIFT_THREADS, 0, stream>>>(
        nodes, C, count, channel, sums, target, (double)atoms, x);
}
