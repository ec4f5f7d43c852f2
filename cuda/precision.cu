/* precision.cu - splitting float32 operands into TF32 parts for the "3xtf32" precision: a = hi +
 * lo with hi = a rounded to TF32 (10 mantissa bits, exactly representable, so the tensor cores
 * read it unchanged) and lo = a - hi (exact in float32). A product a b is then taken as
 * hi_a hi_b + hi_a lo_b + lo_a hi_b: the dropped lo_a lo_b and the TF32 rounding of the lo parts
 * leave about 2^-21 relative error per term, close to float32's 2^-24. */
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
        lo[k] = a - h;
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
