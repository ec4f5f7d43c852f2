/* gemm_i8.h - fp32-accurate GEMM on the int8 tensor cores of Hopper (sm_90a), the "ozaki"
 * precision: Y[rows][out] = beta Y + X[rows][K] W^T (+ bias), W [out][K].
 *
 * Operands are "sliced" (the Ozaki scheme with integer slices). Row r of an fp32 matrix a
 * [rows][K] gets one power-of-two exponent e_r, the smallest with max_k |a[r][k]| (1 + 2^-6) <
 * 2^e_r, and each entry is rounded to the integer A = rint(a 2^(23 - e_r)), |A| < 2^23 / (1 +
 * 2^-6), written in three balanced base-255 digits, high to low:
 *     a[r][k] ~ 2^(e_r - 23) A,   A = 255^2 s0 + 255 s1 + s2,   s0, s1, s2 in [-127, 127]
 * (exact: the rounding error is at most 2^(e_r - 24) <= 2^-23 max|a[r]| (1 + 2^-6)). The digits
 * are those of rounding to the nearest multiple of 255, so that s1 and s2 are distributed
 * symmetrically about 0 (two's-complement bytes would have the mean -1/2, and the dropped
 * products below a bias). A product of two sliced rows is sum_k A_k B_k = sum_{i,j}
 * 255^(4 - i - j) sum_k s_i t_j; the kernel forms the six int8 products with i + j <= 2 on the
 * tensor cores, summed exactly in int32 (no rounding: the truncating fp32 accumulation of the
 * TF32 routes does not exist here), and drops the three with i + j >= 3 (an error of mean 0 and
 * about 2^-22 max|x_r| max|w_o| per sqrt(K) terms). The epilogue combines the three level sums
 * exactly in int64 and rounds once to fp32. Accuracy is comparable to an fp32 SGEMM for rows
 * whose entries are of similar size; entries far below their row's largest keep an absolute, not
 * a relative, error of 2^-23 max|row|. Non-finite entries make their row's outputs NaN.
 *
 * Slices live in planes: slices[p * plane + r * ld + k], p = 0 (s0), 1 (s1), 2 (s2); ld is a
 * multiple of 16 (bytes) >= K, plane >= rows * ld a multiple of 16. A row view (rows first ..
 * first + count) is the same struct with slices + first * ld and exponents + first.
 *
 * Kernels run on `stream` and report launch errors through cudaGetLastError(). Speed: int8
 * products run at four times the TF32 rate, so the six of them cost what 1.5 TF32 products
 * would, with no fp32 work per k-step (bench/README.md). */
#ifndef UMAS_CUDA_GEMM_I8_H
#define UMAS_CUDA_GEMM_I8_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct i8_sliced {
    int8_t *slices; /* three planes, see above */
    int *exponents; /* [rows] e_r; I8_NOT_FINITE for rows with an inf or NaN */
    size_t ld;      /* row stride of a plane, bytes (multiple of 16) */
    size_t plane;   /* plane stride, bytes (multiple of 16) */
} i8_sliced;

enum { I8_NOT_FINITE = 0x7fffffff };

/* Row stride (bytes) of the slices of a matrix with K columns: K rounded up to 16. */
size_t i8_slice_ld(int K);

/* Slices a[rows][K] (row stride lda floats) into out (out->slices, out->exponents, out->ld,
 * out->plane set by the caller, room for rows). Columns K .. ld of the planes are set to 0. */
void i8_slice(int rows, int K, const float *a, size_t lda, const i8_sliced *out,
              cudaStream_t stream);

/* Y[rows][out] = beta Y + X W^T (+ bias[out] when not null), X and W sliced (W's rows are the
 * outputs). With beta == 0, Y is not read. Returns 1 when launched (or nothing to do), 0 when
 * it cannot run here and did nothing: the device is not compute capability 9.0, the driver has
 * no tensor-map encoder, a slice pointer is not 16-byte aligned, or K > 32768 (the int32 level
 * sums could overflow past that). */
int i8_gemm_nt(int rows, int out, int K, const i8_sliced *x, const i8_sliced *w, const float *bias,
               float beta, float *Y, size_t ldy, cudaStream_t stream);

/* For measurements (umas-gemm-check): i8_gemm_nt with another pipeline shape (k per stage x
 * stages; I8_DEFAULT is i8_gemm_nt's, 64 x 4), or I8_COMPUTE_ONLY (a wrong result: every stage
 * reuses the first k-tile, so no load is waited for: the tensor cores' own time). */
enum {
    I8_DEFAULT = 0,
    I8_K128_2STAGES = 1,
    I8_K32_8STAGES = 2,
    I8_COMPUTE_ONLY = 3,
    I8_NO_EPILOGUE = 4, /* a wrong result: Y is not written (the epilogue's cost) */
    I8_K64_3STAGES = 5
};
int i8_gemm_nt_variant(int variant, int rows, int out, int K, const i8_sliced *x,
                       const i8_sliced *w, const float *bias, float beta, float *Y, size_t ldy,
                       cudaStream_t stream);

/* Thread blocks (tiles of Y) i8_gemm_nt launches for rows x out. */
size_t i8_gemm_nt_blocks(int rows, int out);

#ifdef __cplusplus
}
#endif

#endif
