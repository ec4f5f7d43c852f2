/* precision.cu - TF32 operands for the tensor-core precisions (experimental, see bench/README.md
 * for the errors measured on the H200).
 *   3xtf32: a = hi + lo, hi = tf32(a), lo = tf32(a - hi); a b is taken as
 *           lo_a hi_b + hi_a lo_b + hi_a hi_b. The dropped lo_a lo_b and the rounding of lo
 *           leave about 2^-22 relative error per product term; the tensor cores' own fp32
 *           accumulation adds to it (measured: forces as fp32, energies not).
 *   tf32:   one product; the weights are rounded to TF32 at upload, the activations are read
 *           by the tensor cores as they are (rounding them too cost a pass, gained nothing). */
#include "kernels.h"

#include "common.cuh"

enum { SPLIT_THREADS = 256 };

__global__ void split_tf32_kernel(int rows, int cols, const float *x, int ldx, float *hi,
                                  float *lo) {
    size_t total = (size_t)rows * cols;
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < total;
         k += (size_t)gridDim.x * blockDim.x) {
        size_t r = k / (size_t)cols, c = k % (size_t)cols;
        float a = x[r * (size_t)ldx + c], h = umas_round_to_tf32(a);
        hi[k] = h;
        if (lo)
            lo[k] = umas_round_to_tf32(a - h);
    }
}

void cu_split_tf32(int rows, int cols, const float *x, int ldx, float *hi, float *lo,
                   cudaStream_t stream) {
    if (rows <= 0 || cols <= 0)
        return;
    size_t total = (size_t)rows * cols;
    split_tf32_kernel<<<grid_for(total, SPLIT_THREADS), SPLIT_THREADS, 0, stream>>>(rows, cols, x,
                                                                                    ldx, hi, lo);
}
