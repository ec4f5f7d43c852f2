/* gemm_tc.h - split-precision ("3xTF32") GEMM on the tensor cores (sm_90), fp32 in and out.
 *
 * Row-major operations of the model (rows = edges, large; the weights are small):
 *   NT: Y[rows][out]  = beta Y + X[rows][K] W^T,  W [out][K]   (row stride ldw, ldw >= K)
 *   NN: Y[rows][cols] = beta Y + X[rows][K] W,    W [K][cols]  (row stride ldw, ldw >= cols)
 * X has row stride ldx >= K, Y row stride ldy >= out (cols). Strides are in elements; row
 * offsets are computed in 64 bits. Any sizes (edge tiles are bounds-checked); rows, out/cols
 * and K >= 0 (nothing is done when rows or out/cols is 0; K = 0 gives Y = beta Y). With
 * beta == 0, Y is not read (NaN there does not propagate). Y must not overlap X or W.
 *
 * Precision: X is split in the kernel into x_hi = tf32(x) (round to nearest) and
 * x_lo = tf32(x - x_hi); the weights come pre-split (tc_split_weights, once at upload) as W_hi
 * and W_lo with the layout and stride of W. Each output is sum_k (x_lo w_hi + x_hi w_lo +
 * x_hi w_hi), accumulated so that the tensor cores' truncating accumulation leaves no
 * significant systematic bias (see gemm_tc.cu). Error: comparable to an fp32 SGEMM (about 2^-22
 * relative per product from the split, fp32 round-to-nearest sums between k-chunks of 8). Infinite
 * inputs give NaN (the low part of inf is NaN), as in any 3xTF32 scheme.
 *
 * Speed: fastest when X, W_hi and W_lo are 16-byte aligned and ldx, ldw are multiples of 4
 * (16-byte asynchronous copies); otherwise 4-byte copies are used.
 *
 * Kernels are launched on `stream`; like the other umas kernels they report launch errors
 * through cudaGetLastError(). Built for sm_90 (needs cp.async and mma.sync tf32, sm_80+; the
 * 162 KiB of shared memory per block need sm_90's 227 KiB). */
#ifndef UMAS_CUDA_GEMM_TC_H
#define UMAS_CUDA_GEMM_TC_H

#include <cuda_runtime_api.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* How partial products are accumulated (tc_gemm; tc_gemm_nt/nn use TC_ACCUM_CHUNK_JAM).
 *   TC_ACCUM_CHUNK_JAM: per k-chunk of 8 the three products go into a fresh (zero) tensor-core
 *       accumulator; the chunk's partial p, which the tensor cores round toward zero, is
 *       corrected by half an ulp (p + ulp(p)/2 rounded to nearest even) and added to the fp32
 *       running sum with an ordinary (round-to-nearest) add. Default: no bias.
 *   TC_ACCUM_CHUNK: as above without the half-ulp correction (keeps a bias of about -2^-24
 *       relative per chunk partial, i.e. -4e-8 of the result on same-sign data).
 *   TC_ACCUM_DIRECT: all products accumulate in the tensor-core accumulator over the whole K
 *       (presumably what cuBLAS's TF32 paths do): fastest, but biased toward zero by about
 *       K/8 x 2^-24 relative. For comparison only. */
typedef enum tc_accumulation {
    TC_ACCUM_CHUNK_JAM = 0,
    TC_ACCUM_CHUNK = 1,
    TC_ACCUM_DIRECT = 2
} tc_accumulation;

/* hi = tf32(w) (round to nearest), lo = tf32(w - hi), for the rows x cols matrix w with row
 * stride ld; hi and lo have the same layout and stride (entries outside rows x cols are not
 * written). NT weights [out][K]: rows = out, cols = K. NN weights [K][cols]: rows = K,
 * cols = cols. Works for any fp32 matrix (the check program also splits activations with it). */
void tc_split_weights(int rows, int cols, const float *w, size_t ld, float *hi, float *lo,
                      cudaStream_t stream);

/* NT: Y[rows][out] = beta Y + X[rows][K] W^T with W_hi, W_lo [out][K] (stride ldw). */
void tc_gemm_nt(int rows, int out, int K, const float *X, size_t ldx, const float *W_hi,
                const float *W_lo, size_t ldw, float beta, float *Y, size_t ldy,
                cudaStream_t stream);

/* NN: Y[rows][cols] = beta Y + X[rows][K] W with W_hi, W_lo [K][cols] (stride ldw). */
void tc_gemm_nn(int rows, int cols, int K, const float *X, size_t ldx, const float *W_hi,
                const float *W_lo, size_t ldw, float beta, float *Y, size_t ldy,
                cudaStream_t stream);

/* NT on Hopper with bulk tensor copies and a warp-specialized pipeline (gemm_tc_tma.cu):
 * Y[rows][out] = beta Y + X W^T (+ bias[out] when bias is not null), with the weight pre-split
 * (tc_split_weights) into W_hi, W_lo [out][K] (row stride ldw). X is split in the kernel.
 * chunk (1 or 2; other values: 2): k-steps of 8 whose products share one fresh tensor-core
 * accumulator before the fp32 add (1: the scheme of tc_gemm; 2: half the adds, a shrink toward
 * zero of about 1.5 x 2^-25 per chunk sum instead of 2^-25, removed for the most part by the
 * half-ulp correction of TC_ACCUM_CHUNK_JAM; see the kernel's header). Returns 1 when launched (or
 * nothing to do), 0 when it cannot run here and did nothing: the device is not compute
 * capability 9.0, the driver has no tensor-map encoder, X, W_hi or W_lo are not 16-byte aligned,
 * ldx, ldw are not multiples of 4, or K < 0. */
int tc_gemm_nt_tma(tc_accumulation accumulation, int chunk, int rows, int out, int K,
                   const float *X, size_t ldx, const float *W_hi, const float *W_lo, size_t ldw,
                   const float *bias, float beta, float *Y, size_t ldy, cudaStream_t stream);

/* Thread blocks (tiles of Y) tc_gemm_nt_tma launches for rows x out: fewer than the device's
 * multiprocessors leave it partly idle. */
size_t tc_gemm_nt_tma_blocks(int rows, int out);

/* Either operation (w_transposed != 0: NT, else NN; n = out or cols) with a chosen
 * accumulation scheme (for comparisons; tc_gemm_nt/nn are this with TC_ACCUM_CHUNK_JAM). */
void tc_gemm(int w_transposed, tc_accumulation accumulation, int rows, int n, int K, const float *X,
             size_t ldx, const float *W_hi, const float *W_lo, size_t ldw, float beta, float *Y,
             size_t ldy, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
