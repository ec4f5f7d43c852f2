/* gemm_dispatch.cu - every matrix product of the GPU backends, in the context's precision: exact
 * fp32 (cuBLAS, pedantic), tf32 (cuBLAS TF32), 3xtf32 (umas's split-precision tensor-core kernels
 * on Hopper, else three cuBLAS TF32 products), ozaki (the int8 kernel on Hopper, with exact fp32
 * SGEMMs for products too small to fill the GPU); linear and SO(3)-linear layers on top. */
#include "common.cuh"
#include "cuda_internal.h"
#include "presliced.h"

namespace umas_cuda {

/* ---------------------------------------------------------------------------------------------
 * GEMMs (row-major views of column-major cuBLAS)
 * ------------------------------------------------------------------------------------------- */

static __global__ void broadcast_bias_kernel(int rows, int out, const float *bias, float *y,
                                             int ldy) {
    size_t total = (size_t)rows * out;
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < total;
         k += (size_t)gridDim.x * blockDim.x)
        y[(k / out) * ldy + k % out] = bias[k % out];
}

/* One cuBLAS product C = A op B + beta C in the context's arithmetic: exact float32
 * (pedantic, no TF32) or TF32 tensor cores (tf32 and the three products of 3xtf32). */
static void gemm_with(cuda_state *s, cublasComputeType_t compute, cublasOperation_t op_a, int m,
                      int n, int k, const float *a, int lda, const float *b, int ldb, float beta,
                      float *c, int ldc) {
    const float one = 1.0f;
    cublasGemmEx(s->blas, op_a, CUBLAS_OP_N, m, n, k, &one, a, CUDA_R_32F, lda, b, CUDA_R_32F, ldb,
                 &beta, c, CUDA_R_32F, ldc, compute, CUBLAS_GEMM_DEFAULT);
}

/* Whether the context's cuBLAS products are exact fp32: precision fp32, and ozaki's products
 * that its int8 kernel does not take. */
static bool fp32_products(const cuda_state *s) {
    return s->precision == UMAS_PRECISION_EXACT || s->precision == UMAS_PRECISION_OZAKI;
}

void gemm(cuda_state *s, cublasOperation_t op_a, int m, int n, int k, const float *a, int lda,
          const float *b, int ldb, float beta, float *c, int ldc) {
    gemm_with(s, fp32_products(s) ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F_FAST_TF32,
              op_a, m, n, k, a, lda, b, ldb, beta, c, ldc);
}

/* ozaki on Hopper: c[rows][m] = beta c + act[rows][k] W^T (+ bias) by the int8 kernel
 * (gemm_i8.h) on the weight's slices (w: the weight's, or its transpose's), the activation's
 * slices those an open presliced_scope holds, else sliced here into s->sliced up to ozaki_rows
 * rows at a time. Returns false (nothing done) when the kernel does not take the product. */
static bool gemm_ozaki(cuda_state *s, const i8_sliced &w, int m, int k, int rows, const float *act,
                       int ldact, const float *bias, float beta, float *c, int ldc) {
    const presliced_operand *held =
        s->presliced ? s->presliced->find(act, rows, k, ldact) : nullptr;
    if (held)
        return i8_gemm_nt(rows, m, k, &held->x, &w, bias, beta, c, (size_t)ldc, s->stream);
    const size_t ld = i8_slice_ld(k);
    const size_t exponent_bytes = ((size_t)s->ozaki_rows * sizeof(int) + 15) / 16 * 16;
    const size_t chunk = s->ozaki_rows;
    if (!w.slices || chunk == 0 || s->sliced.bytes < exponent_bytes + 3 * chunk * ld)
        return false;
    unsigned char *base = static_cast<unsigned char *>(s->sliced.ptr);
    i8_sliced x = {reinterpret_cast<int8_t *>(base + exponent_bytes), reinterpret_cast<int *>(base),
                   ld, chunk * ld};
    if (!i8_gemm_nt(0, m, k, &x, &w, bias, beta, c, (size_t)ldc, s->stream))
        return false; /* asks whether the kernel takes these operands */
    for (size_t r0 = 0; r0 < (size_t)rows; r0 += chunk) {
        const int n = (int)std::min(chunk, (size_t)rows - r0);
        i8_slice(n, k, act + r0 * ldact, (size_t)ldact, &x, s->stream);
        i8_gemm_nt(n, m, k, &x, &w, bias, beta, c + r0 * ldc, (size_t)ldc, s->stream);
    }
    return true;
}

/* Whether a product of `rows` rows and m outputs has too few tiles of the int8 kernel to fill
 * the GPU once: an exact fp32 SGEMM is faster there (gemm_tensor_cores). */
static bool ozaki_tiles_few(const cuda_state *s, int rows, int m) {
    return i8_gemm_nt_blocks(rows, m) < (size_t)s->multiprocessors;
}

/* Whether a product on the weight slices w (m outputs, k inputs) of `rows` rows would take the
 * int8 kernel with the operand x (sliced): enough tiles to fill the GPU and the kernel accepts
 * the operands. */
static bool ozaki_kernel_takes(const cuda_state *s, const i8_sliced &w, int m, int k, int rows,
                               const i8_sliced &x) {
    return s->precision == UMAS_PRECISION_OZAKI && s->tensor_core_gemm && w.slices &&
           !ozaki_tiles_few(s, rows, m) &&
           i8_gemm_nt(0, m, k, &x, &w, nullptr, 0.0f, nullptr, 0, s->stream);
}
bool ozaki_forward_takes(const cuda_state *s, const dev_linear &lin, int rows, const i8_sliced &x) {
    return ozaki_kernel_takes(s, lin.sliced, lin.out, lin.in, rows, x);
}
bool ozaki_backward_takes(const cuda_state *s, const dev_linear &lin, int cols, int rows,
                          const i8_sliced &x) {
    return ozaki_kernel_takes(s, lin.sliced_t, cols, lin.out, rows, x);
}

/* Whether an SO(2) convolution's three products (m = 0, and the block forms of m = 1 and 2) on
 * n rows take the int8 kernel with the operands parts: the forward ones, or (m0_cols > 0) the
 * backward ones, with m0_cols output columns of the m = 0 product. */
bool so2_products_take(const cuda_state *s, const dev_linear &m0, const dev_linear &block_m1,
                       const dev_linear &block_m2, int m0_cols, int n,
                       const i8_sliced (&parts)[3]) {
    if (m0_cols == 0)
        return ozaki_forward_takes(s, m0, n, parts[0]) &&
               ozaki_forward_takes(s, block_m1, n, parts[1]) &&
               ozaki_forward_takes(s, block_m2, n, parts[2]);
    return ozaki_backward_takes(s, m0, m0_cols, n, parts[0]) &&
           ozaki_backward_takes(s, block_m1, block_m1.in, n, parts[1]) &&
           ozaki_backward_takes(s, block_m2, block_m2.in, n, parts[2]);
}

/* Whether umas_fast_gpu's producers write their products' operands sliced for a chunk of n
 * edges (each producer then checks that its products take the int8 kernel). */
bool producers_write_sliced(const cuda_state *s, int n) {
    return s->fused && s->precision == UMAS_PRECISION_OZAKI && s->tensor_core_gemm && n > 0;
}

/* Bytes in s->sliced of the operands umas_fast_gpu's producers write sliced for n rows: the
 * largest of conv2's (K 3H, 4H, 2H), conv2's adjoint (3C, 4C, 2C), conv1's adjoint (5H, 4H, 2H)
 * and the radial adjoint's (12C) operands. */
size_t fused_operand_bytes(size_t n, int C, int H) {
    i8_sliced unused[3], radial[1];
    return std::max({sliced_layout(nullptr, (int)n, {5 * H, 4 * H, 2 * H}, unused),
                     sliced_layout(nullptr, (int)n, {3 * C, 4 * C, 2 * C}, unused),
                     sliced_layout(nullptr, (int)n, {12 * C}, radial)});
}

/* 3xtf32 on Hopper: c[rows][m] = beta c + act[rows][k] op(W) (+ bias) by the split-precision
 * tensor-core kernels (gemm_tc.h). The bulk-copy warpgroup-MMA kernel (tc_gemm_nt_tma) does NT
 * products on pre-split weights: W [out][in] in the forward (op_w T), the transposed copy
 * [in][out] in the backward (op_w N). Operands it cannot take (not 16-byte aligned) go to the
 * mma.sync kernel. Products whose tiles would not fill the GPU once (node-sized ones: 2,000
 * atoms give 11 tiles of 192 rows for 132 multiprocessors) run as exact fp32 SGEMMs instead:
 * faster there (the kernel's 8 chunks per stage wait in series) and exact. Returns false
 * (nothing done) when the context does not use these kernels.
 * Accumulation: the products of 2 k-steps of 8 share a fresh tensor-core accumulator, whose sum
 * gets the half-ulp correction before the fp32 add (TC_ACCUM_CHUNK_JAM, chunk 2): a shrink
 * toward zero of about -1e-8 of a 768-term product (-2e-8 on same-sign data), against -4e-8 for
 * fresh accumulators per k-step without the correction and -5e-6 for cuBLAS's TF32 paths. With
 * chunks of 4 the model missed the strict bounds (bench/README.md). */
static bool gemm_tensor_cores(cuda_state *s, const dev_linear &lin, cublasOperation_t op_w, int m,
                              int k, int rows, const float *act, int ldact, const float *bias,
                              float beta, float *c, int ldc) {
    if (!s->tensor_core_gemm)
        return false;
    const bool forward = op_w == CUBLAS_OP_T;
    if (s->precision == UMAS_PRECISION_OZAKI) {
        /* an activation held sliced has no fp32 copy: the kernel it is */
        const bool few = ozaki_tiles_few(s, rows, m) && !(s->presliced && s->presliced->holds(act));
        if (!few && gemm_ozaki(s, forward ? lin.sliced : lin.sliced_t, m, k, rows, act, ldact, bias,
                               beta, c, ldc))
            return true;
        if (bias && rows > 0) {
            broadcast_bias_kernel<<<grid_for((size_t)rows * m, 256), 256, 0, s->stream>>>(
                rows, m, bias, c, ldc);
            beta = 1.0f;
        }
        gemm_with(s, CUBLAS_COMPUTE_32F_PEDANTIC, op_w, m, rows, k, lin.weight_f32, lin.in, act,
                  ldact, beta, c, ldc);
        return true;
    }
    const bool small = tc_gemm_nt_tma_blocks(rows, m) < (size_t)s->multiprocessors;
    if (!small &&
        tc_gemm_nt_tma(TC_ACCUM_CHUNK_JAM, 2, rows, m, k, act, (size_t)ldact,
                       forward ? lin.weight : lin.weight_t,
                       forward ? lin.weight_lo : lin.weight_t_lo,
                       (size_t)(forward ? lin.in : lin.out), bias, beta, c, (size_t)ldc, s->stream))
        return true;
    if (bias && rows > 0) {
        broadcast_bias_kernel<<<grid_for((size_t)rows * m, 256), 256, 0, s->stream>>>(rows, m, bias,
                                                                                      c, ldc);
        beta = 1.0f;
    }
    if (small)
        gemm_with(s, CUBLAS_COMPUTE_32F_PEDANTIC, op_w, m, rows, k, lin.weight_f32, lin.in, act,
                  ldact, beta, c, ldc);
    else
        tc_gemm(forward ? 1 : 0, TC_ACCUM_CHUNK, rows, m, k, act, (size_t)ldact, lin.weight,
                lin.weight_lo, (size_t)lin.in, beta, c, (size_t)ldc, s->stream);
    return true;
}

/* C (+)= W-side x activation, where the activation is act [rows][width] (ld ldact): with 3xtf32
 * as lo_W hi_x + hi_W lo_x + hi_W hi_x (small terms first; on Hopper in one tensor-core kernel,
 * elsewhere three cuBLAS products of the parts from precision.cu), else one product. */
static void gemm_split(cuda_state *s, const dev_linear &lin, cublasOperation_t op_w, int m, int k,
                       int rows, const float *act, int ldact, int width, float beta, float *c,
                       int ldc) {
    if (gemm_tensor_cores(s, lin, op_w, m, k, rows, act, ldact, nullptr, beta, c, ldc))
        return;
    if (fp32_products(s)) {
        gemm(s, op_w, m, rows, k, lin.weight, lin.in, act, ldact, beta, c, ldc);
        return;
    }
    if (s->precision == UMAS_PRECISION_TF32) {
        /* the weight was rounded at upload; rounding the activation too costs a pass over it
         * (+34 ms per step at 2000 atoms) and measured no gain in accuracy */
        gemm(s, op_w, m, rows, k, lin.weight, lin.in, act, ldact, beta, c, ldc);
        return;
    }
    float *hi = F(s->split_hi), *lo = F(s->split_lo);
    cu_split_tf32(rows, width, act, ldact, hi, lo, s->stream);
    gemm(s, op_w, m, rows, k, lin.weight_lo, lin.in, hi, width, beta, c, ldc);
    gemm(s, op_w, m, rows, k, lin.weight, lin.in, lo, width, 1.0f, c, ldc);
    gemm(s, op_w, m, rows, k, lin.weight, lin.in, hi, width, 1.0f, c, ldc);
}

/* y[rows][out] = x[rows][in] W^T + bias in one cuBLASLt product with the bias added in its
 * epilogue (column-major: D[out][rows] = W^T X^T + bias, W stored as [in][out] column-major),
 * in the context's arithmetic (fp32 pedantic or TF32). Saves writing the broadcast bias and
 * reading it back (4.7 ms per 2,000-atom step). Returns false, having done nothing, when
 * cuBLASLt declines (no handle, no algorithm for the shape): the caller then broadcasts. */
static bool linear_forward_bias_epilogue(cuda_state *s, const dev_linear &lin, int rows,
                                         const float *x, int ldx, float *y, int ldy) {
    if (!s->blas_lt || !lin.bias || s->precision == UMAS_PRECISION_3XTF32)
        return false;
    const cublasComputeType_t compute =
        fp32_products(s) ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F_FAST_TF32;
    const cublasOperation_t transpose = CUBLAS_OP_T, none = CUBLAS_OP_N;
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    const float one = 1.0f, zero = 0.0f;
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t w = nullptr, a = nullptr, d = nullptr;
    const size_t workspace = s->blas_workspace ? (size_t)32 << 20 : 0;
    bool ok =
        cublasLtMatmulDescCreate(&op, compute, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &transpose,
                                       sizeof transpose) == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &none, sizeof none) ==
            CUBLAS_STATUS_SUCCESS &&
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                       sizeof epilogue) == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &lin.bias,
                                       sizeof lin.bias) == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatrixLayoutCreate(&w, CUDA_R_32F, lin.in, lin.out, lin.in) ==
            CUBLAS_STATUS_SUCCESS &&
        cublasLtMatrixLayoutCreate(&a, CUDA_R_32F, lin.in, rows, ldx) == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatrixLayoutCreate(&d, CUDA_R_32F, lin.out, rows, ldy) == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatmul(s->blas_lt, op, &one, lin.weight, w, x, a, &zero, y, d, y, d, nullptr,
                       s->blas_workspace, workspace, s->stream) == CUBLAS_STATUS_SUCCESS;
    if (d)
        cublasLtMatrixLayoutDestroy(d);
    if (a)
        cublasLtMatrixLayoutDestroy(a);
    if (w)
        cublasLtMatrixLayoutDestroy(w);
    if (op)
        cublasLtMatmulDescDestroy(op);
    return ok;
}

/* y[rows][out] = x[rows][in] W^T + b (umas_linear_forward) */
void linear_forward(cuda_state *s, const dev_linear &lin, int rows, const float *x, int ldx,
                    float *y, int ldy) {
    if (rows == 0)
        return;
    if (gemm_tensor_cores(s, lin, CUBLAS_OP_T, lin.out, lin.in, rows, x, ldx, lin.bias, 0.0f, y,
                          ldy) ||
        linear_forward_bias_epilogue(s, lin, rows, x, ldx, y, ldy))
        return;
    float beta = 0.0f;
    if (lin.bias) {
        broadcast_bias_kernel<<<grid_for((size_t)rows * lin.out, 256), 256, 0, s->stream>>>(
            rows, lin.out, lin.bias, y, ldy);
        beta = 1.0f;
    }
    gemm_split(s, lin, CUBLAS_OP_T, lin.out, lin.in, rows, x, ldx, lin.in, beta, y, ldy);
}

/* Two products on one activation x [rows][in] (row stride ldx), ya = x A^T + a and
 * yb = x B^T + b: with ozaki on Hopper x is sliced once for both, unless a scope holds it already
 * sliced. */
void linear_forward_pair(cuda_state *s, const dev_linear &a, float *ya, int ldya,
                         const dev_linear &b, float *yb, int ldyb, int rows, const float *x,
                         int ldx) {
    presliced_scope scope(s);
    const int K[1] = {a.in};
    i8_sliced part[1];
    const bool held = s->presliced->find(x, rows, a.in, ldx) != nullptr;
    if (!held && s->ozaki_rows >= rows && operands_sliced_in(s->sliced, rows, K, part) &&
        ozaki_forward_takes(s, a, rows, part[0]) && ozaki_forward_takes(s, b, rows, part[0])) {
        i8_slice(rows, a.in, x, (size_t)ldx, &part[0], s->stream);
        scope.hold({x}, rows, K, {ldx}, part, s->sliced);
    }
    linear_forward(s, a, rows, x, ldx, ya, ldya);
    linear_forward(s, b, rows, x, ldx, yb, ldyb);
}

/* dx[rows][0:cols] (+)= dy[rows][out] W[:, 0:cols] (umas_linear_backward) */
void linear_backward(cuda_state *s, const dev_linear &lin, int rows, const float *dy, int lddy,
                     float *dx, int lddx, int cols, int accumulate) {
    if (rows == 0)
        return;
    gemm_split(s, lin, CUBLAS_OP_N, cols, lin.out, rows, dy, lddy, lin.out,
               accumulate ? 1.0f : 0.0f, dx, lddx);
}

/* y[:, i, :] = x[:, i, :] W_{l(i)}^T (+ bias at i = 0): so3_linear_forward */
const int degree_of[9] = {0, 1, 1, 1, 2, 2, 2, 2, 2};

void so3_linear_forward(cuda_state *s, const dev_linear (&lin)[3], int N, const float *x,
                        float *y) {
    int out = lin[0].out, in = lin[0].in;
    for (int i = 0; i < 9; i++)
        linear_forward(s, lin[degree_of[i]], N, x + i * in, 9 * in, y + i * out, 9 * out);
}

void so3_linear_backward(cuda_state *s, const dev_linear (&lin)[3], int N, const float *dy,
                         float *dx, int accumulate) {
    int out = lin[0].out, in = lin[0].in;
    for (int i = 0; i < 9; i++)
        linear_backward(s, lin[degree_of[i]], N, dy + i * out, 9 * out, dx + i * in, 9 * in, in,
                        accumulate);
}

} // namespace umas_cuda
