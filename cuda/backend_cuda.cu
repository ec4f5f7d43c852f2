/* backend_cuda.cu - the `general` backend on the GPU: fp32 storage, cuBLAS SGEMM (no TF32),
 * the same sequence of operations as core/backend_general.c (read that file first: this one
 * mirrors it function by function). The MoLE merge stays on the host in float64; energies are
 * summed in float64 on the host; the per-edge geometry and the final edge gradient are computed
 * in double on the device.
 *
 * Memory: one set of per-edge, per-node and per-chunk buffers, grown when a graph needs more and
 * reused across calls; a failed cudaMalloc reports the bytes asked for with the atom and edge
 * counts. */
#include "gemm_i8.h"
#include "gemm_tc.h"
#include "kernels.h"

extern "C" {
#include "context.h"
#include "error.h"
#include "radial.h"
#include "so2_fast.h"
}

#include <cublasLt.h>
#include <cublas_v2.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

namespace {

struct dev_linear {
    int out = 0, in = 0;
    float *weight = nullptr;    /* [out][in]; with 3xtf32 its TF32 part */
    float *weight_lo = nullptr; /* 3xtf32: weight - tf32(weight), else null */
    /* 3xtf32: the transpose [in][out] split the same way, for the backward's NT products on
     * Hopper (tc_gemm_nt_tma); else null */
    float *weight_t = nullptr, *weight_t_lo = nullptr;
    /* 3xtf32 and ozaki: the weight in fp32, [out][in], for products too small to fill the GPU
     * with the tensor-core kernel's tiles (exact fp32 SGEMM instead); else null */
    float *weight_f32 = nullptr;
    /* ozaki on Hopper: the int8 slices of the weight [out][in] (the forward's operand) and of
     * its transpose [in][out] (the backward's), gemm_i8.h; else empty */
    i8_sliced sliced = {}, sliced_t = {};
    float *bias = nullptr; /* [out] or null */
};
struct dev_layer_norm {
    int n = 0;
    float *weight = nullptr, *bias = nullptr;
};
struct dev_radial {
    dev_linear fc1, fc2, fc3;
    dev_layer_norm norm1, norm2;
};
struct dev_rms_norm {
    float *scale = nullptr, *bias = nullptr;
};
struct dev_block {
    dev_rms_norm norm_1, norm_2;
    dev_radial radial;
    dev_linear conv1_m0, conv1_m1, conv1_m2, conv2_m0, conv2_m1, conv2_m2, ffn_scalar;
    /* conv1_m0's outputs in two forward products: the 2H gate inputs, then the 3H m = 0 rows,
     * which go straight into the gate's input (views of conv1_m0's rows) */
    dev_linear conv1_m0_gates, conv1_m0_rows;
    /* umas_fast: the m > 0 convolutions in block form [[W1, -W2], [W2, W1]] (so2_fast.h) */
    dev_linear block_conv1_m1, block_conv1_m2, block_conv2_m1, block_conv2_m2;
    dev_linear so3_1[3], so3_2[3]; /* per degree l; the bias on l = 0 only */
};

/* A device buffer that grows and remembers its size. */
struct buffer {
    void *ptr = nullptr;
    size_t bytes = 0;
};

/* A chunk's edge activations that a block's backward reads (rows = the chunk's edges). */
struct edge_tape {
    buffer pre_norm1, pre_norm2; /* [n][Ce] radial MLP LayerNorm inputs */
    buffer radial;               /* [n][12C] radial MLP output (conv1's per-m weights) */
    buffer gates;                /* [n][2H] conv1 m = 0 outputs 0..2H: the gate inputs */
    buffer gated;                /* [n][9][H] conv1 output before the gate, M-order */
    buffer messages;             /* [n][9][C] conv2 output, M-order */
};
const int tape_buffers = 6;
buffer *tape_buffer(edge_tape &t, int i) {
    buffer *all[tape_buffers] = {&t.pre_norm1, &t.pre_norm2, &t.radial,
                                 &t.gates,     &t.gated,     &t.messages};
    return all[i];
}

/* One captured step (forward, backward, forces) and what it was captured for. */
struct step_graph {
    int N = 0, E = 0, energy_nodes = 0;
    bool node_virial = false, keep_radial = true;
    int kept_blocks = 0, chunk = 0;
    unsigned long generation = 0;
    cudaGraphExec_t exec = nullptr;
};

struct cuda_state {
    cudaStream_t stream = nullptr;
    cublasHandle_t blas = nullptr;
    cublasLtHandle_t blas_lt = nullptr; /* biased linear layers: the bias in the GEMM epilogue */
    int device = 0;
    bool fast = false; /* umas_fast: block-form SO(2) GEMMs and the unified radial MLP */
    umas_precision precision = UMAS_PRECISION_EXACT;
    /* 3xtf32 on a Hopper GPU: products by the split-precision tensor-core kernels of gemm_tc.h
     * (no activation split buffers); elsewhere three cuBLAS TF32 products. ozaki on a Hopper
     * GPU: products by the int8 kernel of gemm_i8.h; elsewhere exact fp32 SGEMMs. */
    bool tensor_core_gemm = false;
    int multiprocessors = 0; /* of the device */
    int ozaki_rows = 0;      /* ozaki: rows of an activation sliced at a time (s->sliced) */
    /* ozaki: the caller's promise that the next product's activation is unchanged since the
     * previous product; that product's slicing is then skipped if s->sliced holds all of it
     * (sliced_from: the activation it was made from, null if none or only a part). */
    bool ozaki_same_activation = false;
    const float *sliced_from = nullptr;
    int sliced_rows = 0, sliced_k = 0, sliced_ld = 0;
    /* ozaki, umas_fast_gpu: activations that their producer wrote sliced, with no fp32 copy
     * (register_presliced; conv1_sliced and the others): the product of activation `act` (rows,
     * k, ld as the caller passes them) takes `x` and always the int8 kernel. */
    struct presliced_operand {
        const float *act;
        int rows, k, ld;
        i8_sliced x;
    } presliced[3] = {};
    int presliced_count = 0;
    int widest = 0; /* the largest in or out of any linear layer (3xtf32 split buffers) */
    std::vector<void *> weight_memory;
    size_t weight_bytes = 0;

    float *sphere = nullptr, *source_embedding = nullptr, *target_embedding = nullptr;
    float *system_embedding = nullptr, *offsets = nullptr;
    float coeff = 0;
    dev_radial degree;
    std::vector<dev_block> blocks;
    dev_rms_norm final_norm;
    dev_linear head[3];
    dev_linear unified_fc1; /* umas_fast: every block's first radial layer, [L Ce][F] */
    float *head_w3_dev = nullptr;
    /* charge/spin balancing (ctx->balance): channels [count], targets [count] and the sums of
     * the current balancing [count]; host_sums: those sums on their way through the host when
     * several processes share the system */
    int *balance_channel = nullptr;
    double *balance_target = nullptr, *balance_sums = nullptr;
    std::vector<double> host_sums;

    /* Edges per chunk of this call (reserve_all); recompute_chunk: about 1 GB of scratch. */
    int chunk = 0, recompute_chunk = 0;
    /* umas_fast_gpu: the last kept_blocks blocks (L - kept_blocks .. L - 1) keep their edge
     * activations over all edges from the forward for the backward, in tapes[l] (block 0's in
     * tapes[0]: only when all blocks keep theirs); the others recompute them chunk by chunk in
     * the backward, in tapes[0]. As many as fit in device memory (reserve_all). */
    bool fused = false;
    int kept_blocks = 0;
    /* Whether the kept tapes hold each block's radial MLP output too. Without it the blocks
     * share tapes[0]'s, and the backward runs the MLP's last layer again: +4 % of the GEMM work
     * for 6 KB less per edge and block (UMA-S). */
    bool keep_radial = true;
    /* A tape forced by UMAS_CUDA_RECOMPUTE (tests, forced_tape_of); UMAS_CUDA_VERBOSE=1 prints
     * each choice reserve_all makes to stderr. */
    struct forced_tape {
        bool on = false;
        int kept_blocks = 0;
        bool keep_radial = true;
        bool three_chunks = false; /* else chunks of `chunk` edges (recompute_chunk when 0) */
        int chunk = 0;
    } forced;
    bool verbose = false;
    /* reserve_all's choice, made for up to `edges` edges (0: none yet); one_chunk: chunk = E */
    struct tape_decision {
        size_t edges = 0;
        int kept_blocks = 0, chunk = 0;
        bool keep_radial = true, one_chunk = false;
    } decision;
    /* per edge */
    buffer vec, src, tgt, distance, envelope, wigner, d_wigner, d_envelope, d_distance, gradient;
    /* per node */
    buffer node_sums; /* [N][9][C] fixed-point sums of edge terms (kernels.h), kept zero between
                         uses */
    buffer z, h, u, ffn_out, ffn_pre, ffn_hidden, head_hidden, node_output, saved, dh, du, d_tmp,
        ffn_d_pre, ffn_d_r;
    /* per chunk */
    /* rotated: conv1's input y [n][9][2C] in the forward, its adjoint dy in the backward (the
     * two are never needed at once) */
    buffer radial_input, hidden, d_radial, d_gauss, radial_work, rotated, product_r, product_i,
        d_gated, d_conv1_m0, unscaled;
    /* The activations the backward of a chunk needs: tapes[l] over all edges for the blocks
     * that keep theirs (kept_blocks), tapes[0] one chunk's for those that recompute (over all
     * edges when every block keeps). tapes[0] also serves the edge-degree MLP. */
    std::vector<edge_tape> tapes;
    /* 3xtf32: the TF32 parts of a product's activation operand */
    buffer split_hi, split_lo;
    /* ozaki: a product's activation operand, sliced (gemm_i8.h), for up to ozaki_rows rows at a
     * time: [ozaki_rows] exponents, then the three planes */
    buffer sliced;
    /* umas_fast, per edge: every block's first radial layer output [E][L Ce]; in the backward
     * block l's slice is overwritten by its adjoint once block l is done */
    buffer first;
    /* neighbour-list route: the list (umas_set_neighbors) and its per-step selection */
    buffer list_source, list_target, list_image, list_vector, keep, slot, kept, select_scratch,
        flags, positions, cell, forces, virial, node_virial;
    size_t buffer_bytes = 0;
    /* bumped whenever a buffer moves: a captured graph holds buffer addresses */
    unsigned long generation = 0;

    /* umas_fast_gpu, neighbour route: the step's device work as CUDA graphs (step_graph) */
    std::vector<step_graph> graphs;
    bool graphs_failed = false; /* capture refused once: run without graphs from then on */
    void *blas_workspace = nullptr;

    std::vector<float> host_output;   /* [N] */
    std::vector<float> host_features; /* trace */
};

float *F(buffer &b) {
    return static_cast<float *>(b.ptr);
}
int *I(buffer &b) {
    return static_cast<int *>(b.ptr);
}
unsigned long long *U(buffer &b) {
    return static_cast<unsigned long long *>(b.ptr);
}

/* Grows b to at least `bytes`; on failure writes the error (with what the graph needs). */
int reserve(cuda_state *s, buffer &b, size_t bytes, const char *what, int atoms, int edges,
            umas_error *err) {
    if (bytes <= b.bytes && b.ptr)
        return 0;
    if (b.ptr) {
        cudaFree(b.ptr);
        s->buffer_bytes -= b.bytes;
    }
    b.ptr = nullptr;
    b.bytes = 0;
    size_t ask = bytes ? bytes : 16;
    if (cudaMalloc(&b.ptr, ask) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky-free allocation error */
        b.ptr = nullptr;
        size_t free_bytes = 0, total = 0;
        cudaMemGetInfo(&free_bytes, &total);
        return umas_fail(err,
                         "out of GPU memory: %.1f MB for %s (%d atoms, %d edges); %.1f MB of "
                         "%.1f MB free on the device",
                         ask / 1048576.0, what, atoms, edges, free_bytes / 1048576.0,
                         total / 1048576.0);
    }
    b.bytes = ask;
    s->buffer_bytes += ask;
    s->generation++;
    return 0;
}

float *upload_floats(cuda_state *s, const std::vector<float> &f) {
    size_t n = f.size();
    void *p = nullptr;
    if (cudaMalloc(&p, n * sizeof(float)) != cudaSuccess)
        return nullptr;
    cudaMemcpy(p, f.data(), n * sizeof(float), cudaMemcpyHostToDevice);
    s->weight_memory.push_back(p);
    s->weight_bytes += n * sizeof(float);
    return static_cast<float *>(p);
}

float *upload(cuda_state *s, const double *host, size_t n) {
    if (!host || n == 0)
        return nullptr;
    return upload_floats(s, std::vector<float>(host, host + n));
}

/* ozaki: the int8 slices (gemm_i8.h) of the fp32 matrix a [rows][cols], made on the device and
 * kept with the weights (null pointers when out of memory: the caller's check finds them). */
i8_sliced upload_sliced(cuda_state *s, const std::vector<float> &a, int rows, int cols) {
    i8_sliced d = {};
    d.ld = i8_slice_ld(cols);
    d.plane = (size_t)rows * d.ld;
    void *slices = nullptr, *exponents = nullptr;
    float *matrix = nullptr;
    if (cudaMalloc(&slices, 3 * d.plane) != cudaSuccess)
        slices = nullptr;
    if (cudaMalloc(&exponents, (size_t)rows * sizeof(int)) != cudaSuccess)
        exponents = nullptr;
    s->weight_memory.push_back(slices);
    s->weight_memory.push_back(exponents);
    s->weight_bytes += 3 * d.plane + (size_t)rows * sizeof(int);
    if (!slices || !exponents ||
        cudaMalloc(reinterpret_cast<void **>(&matrix), a.size() * sizeof(float)) != cudaSuccess) {
        cudaGetLastError();
        s->weight_memory.push_back(nullptr); /* reported as out of memory */
        return d;
    }
    d.slices = static_cast<int8_t *>(slices);
    d.exponents = static_cast<int *>(exponents);
    cudaMemcpy(matrix, a.data(), a.size() * sizeof(float), cudaMemcpyHostToDevice);
    i8_slice(rows, cols, matrix, (size_t)cols, &d, s->stream);
    cudaStreamSynchronize(s->stream);
    cudaFree(matrix);
    return d;
}

/* A linear layer [out][in] from float64 weights (and bias). With 3xtf32 the weight goes up as its
 * TF32 part and the float32 remainder (split once here, in double). */
dev_linear upload_linear_weights(cuda_state *s, int out, int in, const double *weight,
                                 const double *bias) {
    dev_linear d;
    d.out = out;
    d.in = in;
    s->widest = std::max(s->widest, std::max(in, out));
    size_t n = (size_t)out * in;
    if (s->precision == UMAS_PRECISION_3XTF32) {
        std::vector<float> hi(n), lo(n);
        for (size_t k = 0; k < n; k++) {
            hi[k] = umas_round_to_tf32((float)weight[k]);
            lo[k] = umas_round_to_tf32((float)(weight[k] - (double)hi[k]));
        }
        d.weight = upload_floats(s, hi);
        d.weight_lo = upload_floats(s, lo);
        std::vector<float> hi_t(n), lo_t(n);
        for (int o = 0; o < out; o++)
            for (int i = 0; i < in; i++) {
                hi_t[(size_t)i * out + o] = hi[(size_t)o * in + i];
                lo_t[(size_t)i * out + o] = lo[(size_t)o * in + i];
            }
        d.weight_t = upload_floats(s, hi_t);
        d.weight_t_lo = upload_floats(s, lo_t);
        d.weight_f32 = upload(s, weight, n);
    } else if (s->precision == UMAS_PRECISION_OZAKI) {
        d.weight = upload(s, weight, n);
        d.weight_f32 = d.weight;
        if (s->tensor_core_gemm) {
            std::vector<float> f(n), t(n);
            for (int o = 0; o < out; o++)
                for (int i = 0; i < in; i++) {
                    f[(size_t)o * in + i] = (float)weight[(size_t)o * in + i];
                    t[(size_t)i * out + o] = f[(size_t)o * in + i];
                }
            d.sliced = upload_sliced(s, f, out, in);
            d.sliced_t = upload_sliced(s, t, in, out);
        }
    } else if (s->precision == UMAS_PRECISION_TF32) {
        std::vector<float> rounded(n);
        for (size_t k = 0; k < n; k++)
            rounded[k] = umas_round_to_tf32((float)weight[k]);
        d.weight = upload_floats(s, rounded);
    } else {
        d.weight = upload(s, weight, n);
    }
    d.bias = upload(s, bias, bias ? (size_t)out : 0);
    return d;
}

/* Outputs [first, first + count) of a linear layer, for a forward product of their own: a view
 * of its weight rows and bias (no transposed copies, so not for the backward). */
dev_linear output_rows(const dev_linear &lin, int first, int count) {
    dev_linear d;
    size_t offset = (size_t)first * lin.in;
    d.out = count;
    d.in = lin.in;
    d.weight = lin.weight + offset;
    d.weight_lo = lin.weight_lo ? lin.weight_lo + offset : nullptr;
    d.weight_f32 = lin.weight_f32 ? lin.weight_f32 + offset : nullptr;
    if (lin.sliced.slices) {
        d.sliced = lin.sliced;
        d.sliced.slices += (size_t)first * lin.sliced.ld;
        d.sliced.exponents += first;
    }
    d.bias = lin.bias ? lin.bias + first : nullptr;
    return d;
}

dev_linear upload_linear(cuda_state *s, const umas_linear &l) {
    return upload_linear_weights(s, l.out, l.in, l.weight, l.bias);
}

dev_radial upload_radial(cuda_state *s, const umas_radial_mlp &m) {
    dev_radial d;
    d.fc1 = upload_linear(s, m.fc1);
    d.fc2 = upload_linear(s, m.fc2);
    d.fc3 = upload_linear(s, m.fc3);
    d.norm1 = {m.norm1.n, upload(s, m.norm1.weight, m.norm1.n), upload(s, m.norm1.bias, m.norm1.n)};
    d.norm2 = {m.norm2.n, upload(s, m.norm2.weight, m.norm2.n), upload(s, m.norm2.bias, m.norm2.n)};
    return d;
}

dev_rms_norm upload_rms(cuda_state *s, const umas_rms_norm &n, int C) {
    return {upload(s, n.scale, 3 * (size_t)C), upload(s, n.bias, (size_t)C)};
}

/* ---------------------------------------------------------------------------------------------
 * GEMMs (row-major views of column-major cuBLAS)
 * ------------------------------------------------------------------------------------------- */

__global__ void broadcast_bias_kernel(int rows, int out, const float *bias, float *y, int ldy) {
    size_t total = (size_t)rows * out;
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < total;
         k += (size_t)gridDim.x * blockDim.x)
        y[(k / out) * ldy + k % out] = bias[k % out];
}

int blocks_for(size_t n) {
    size_t b = (n + 255) / 256;
    return (int)(b < 65535 ? (b ? b : 1) : 65535);
}

/* One cuBLAS product C = A op B + beta C in the context's arithmetic: exact float32
 * (pedantic, no TF32) or TF32 tensor cores (tf32 and the three products of 3xtf32). */
void gemm_with(cuda_state *s, cublasComputeType_t compute, cublasOperation_t op_a, int m, int n,
               int k, const float *a, int lda, const float *b, int ldb, float beta, float *c,
               int ldc) {
    const float one = 1.0f;
    cublasGemmEx(s->blas, op_a, CUBLAS_OP_N, m, n, k, &one, a, CUDA_R_32F, lda, b, CUDA_R_32F, ldb,
                 &beta, c, CUDA_R_32F, ldc, compute, CUBLAS_GEMM_DEFAULT);
}

/* Whether the context's cuBLAS products are exact fp32: precision fp32, and ozaki's products
 * that its int8 kernel does not take. */
bool fp32_products(const cuda_state *s) {
    return s->precision == UMAS_PRECISION_EXACT || s->precision == UMAS_PRECISION_OZAKI;
}

void gemm(cuda_state *s, cublasOperation_t op_a, int m, int n, int k, const float *a, int lda,
          const float *b, int ldb, float beta, float *c, int ldc) {
    gemm_with(s, fp32_products(s) ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F_FAST_TF32,
              op_a, m, n, k, a, lda, b, ldb, beta, c, ldc);
}

/* ozaki on Hopper: c[rows][m] = beta c + act[rows][k] W^T (+ bias) by the int8 kernel
 * (gemm_i8.h) on the weight's slices (w: the weight's, or its transpose's), the activation
 * sliced into s->sliced up to ozaki_rows rows at a time. Returns false (nothing done) when the
 * kernel does not take the product. */
bool gemm_ozaki(cuda_state *s, const i8_sliced &w, int m, int k, int rows, const float *act,
                int ldact, const float *bias, float beta, float *c, int ldc) {
    for (int i = 0; i < s->presliced_count; i++) {
        const cuda_state::presliced_operand &p = s->presliced[i];
        if (p.act == act && p.rows == rows && p.k == k && p.ld == ldact) {
            s->sliced_from = nullptr; /* s->sliced is not involved */
            return i8_gemm_nt(rows, m, k, &p.x, &w, bias, beta, c, (size_t)ldc, s->stream);
        }
    }
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
    const bool sliced = s->ozaki_same_activation && s->sliced_from == act &&
                        s->sliced_rows == rows && s->sliced_k == k && s->sliced_ld == ldact;
    s->sliced_from = (size_t)rows <= chunk ? act : nullptr;
    s->sliced_rows = rows, s->sliced_k = k, s->sliced_ld = ldact;
    for (size_t r0 = 0; r0 < (size_t)rows; r0 += chunk) {
        const int n = (int)std::min(chunk, (size_t)rows - r0);
        if (!sliced)
            i8_slice(n, k, act + r0 * ldact, (size_t)ldact, &x, s->stream);
        i8_gemm_nt(n, m, k, &x, &w, bias, beta, c + r0 * ldc, (size_t)ldc, s->stream);
    }
    return true;
}

/* Whether a product of `rows` rows and m outputs has too few tiles of the int8 kernel to fill
 * the GPU once: an exact fp32 SGEMM is faster there (gemm_tensor_cores). */
bool ozaki_tiles_few(const cuda_state *s, int rows, int m) {
    return i8_gemm_nt_blocks(rows, m) < (size_t)s->multiprocessors;
}

/* Whether a product on the weight slices w (m outputs, k inputs) of `rows` rows would take the
 * int8 kernel with the operand x (sliced): enough tiles to fill the GPU and the kernel accepts
 * the operands. */
bool ozaki_kernel_takes(const cuda_state *s, const i8_sliced &w, int m, int k, int rows,
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

/* P sliced operands of `rows` rows and K[i] columns laid out one after the other from
 * base: per operand the [rows] exponents (16-byte aligned), then its three planes [rows][ld].
 * Returns the bytes they take (parts set when base is not null). */
template <int P>
size_t sliced_layout(void *base, int rows, const int (&K)[P], i8_sliced (&parts)[P]) {
    size_t offset = 0;
    for (int i = 0; i < P; i++) {
        const size_t ld = i8_slice_ld(K[i]);
        const size_t exponents = ((size_t)rows * sizeof(int) + 15) / 16 * 16;
        if (base) {
            unsigned char *at = static_cast<unsigned char *>(base) + offset;
            parts[i] = {reinterpret_cast<int8_t *>(at + exponents), reinterpret_cast<int *>(at), ld,
                        (size_t)rows * ld};
        }
        offset += exponents + 3 * (size_t)rows * ld;
    }
    return offset;
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

/* Registers the P operands a producer wrote sliced for the products on act[i] (rows, K[i]
 * columns, row stride ld[i]); until presliced_count is reset their products read these. */
template <int P>
void register_presliced(cuda_state *s, const float *const (&act)[P], int rows, const int (&K)[P],
                        const int (&ld)[P], const i8_sliced (&parts)[P]) {
    static_assert(P <= 3, "room in s->presliced");
    for (int i = 0; i < P; i++)
        s->presliced[i] = {act[i], rows, K[i], ld[i], parts[i]};
    s->presliced_count = P;
    s->sliced_from = nullptr; /* s->sliced may have been overwritten */
}

/* Operands written sliced for n rows into the buffer b: whether they fit there (parts set if
 * so). conv1's go into s->rotated, the other producers' into s->sliced. */
template <int P>
bool operands_sliced_in(const buffer &b, int n, const int (&K)[P], i8_sliced (&parts)[P]) {
    i8_sliced unused[P];
    if (!b.ptr || sliced_layout(nullptr, n, K, unused) > b.bytes)
        return false;
    sliced_layout(b.ptr, n, K, parts);
    return true;
}
template <int P>
bool fused_operands_sliced(cuda_state *s, int n, const int (&K)[P], i8_sliced (&parts)[P]) {
    return operands_sliced_in(s->sliced, n, K, parts);
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
bool gemm_tensor_cores(cuda_state *s, const dev_linear &lin, cublasOperation_t op_w, int m, int k,
                       int rows, const float *act, int ldact, const float *bias, float beta,
                       float *c, int ldc) {
    if (!s->tensor_core_gemm)
        return false;
    const bool forward = op_w == CUBLAS_OP_T;
    if (s->precision == UMAS_PRECISION_OZAKI) {
        bool few = ozaki_tiles_few(s, rows, m);
        for (int i = 0; i < s->presliced_count; i++)
            few = few && s->presliced[i].act != act; /* no fp32 copy: the kernel it is */
        if (!few && gemm_ozaki(s, forward ? lin.sliced : lin.sliced_t, m, k, rows, act, ldact, bias,
                               beta, c, ldc))
            return true;
        s->sliced_from = nullptr; /* this product sliced nothing */
        if (bias && rows > 0) {
            broadcast_bias_kernel<<<blocks_for((size_t)rows * m), 256, 0, s->stream>>>(
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
        broadcast_bias_kernel<<<blocks_for((size_t)rows * m), 256, 0, s->stream>>>(rows, m, bias, c,
                                                                                   ldc);
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
void gemm_split(cuda_state *s, const dev_linear &lin, cublasOperation_t op_w, int m, int k,
                int rows, const float *act, int ldact, int width, float beta, float *c, int ldc) {
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
bool linear_forward_bias_epilogue(cuda_state *s, const dev_linear &lin, int rows, const float *x,
                                  int ldx, float *y, int ldy) {
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
        broadcast_bias_kernel<<<blocks_for((size_t)rows * lin.out), 256, 0, s->stream>>>(
            rows, lin.out, lin.bias, y, ldy);
        beta = 1.0f;
    }
    gemm_split(s, lin, CUBLAS_OP_T, lin.out, lin.in, rows, x, ldx, lin.in, beta, y, ldy);
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

/* The three per-degree weights [3][out][in] of an SO(3) linear; the bias goes with l = 0. */
void upload_so3_linear(cuda_state *s, const double *weight, const double *bias, int out, int in,
                       dev_linear (&lin)[3]) {
    for (int l = 0; l < 3; l++)
        lin[l] = upload_linear_weights(s, out, in, weight + (size_t)l * out * in,
                                       l == 0 ? bias : nullptr);
}

/* ---------------------------------------------------------------------------------------------
 * Building blocks, as in core/backend_general.c
 * ------------------------------------------------------------------------------------------- */

struct graph_view {
    int N, E, energy_nodes;
};

int num_blocks(const cuda_state *s) {
    return (int)s->blocks.size();
}

/* Whether block l keeps its edge activations over all edges (cuda_state::kept_blocks). */
bool block_keeps(const cuda_state *s, int l) {
    return l >= 0 && l >= num_blocks(s) - s->kept_blocks;
}

/* Whether tapes[i] holds all edges (a kept tape) rather than one chunk. */
bool tape_holds_all_edges(const cuda_state *s, int i) {
    return i > 0 || s->kept_blocks == num_blocks(s);
}

void tape_sizes(const cuda_state *s, const umas_weights *w, size_t l, size_t floats[]);

/* The tape of block l (l = -1: the edge-degree MLP) for the chunk from edge `first` on: its
 * kept tape seen from that edge, or tapes[0] (see cuda_state::kept_blocks). */
edge_tape tape(cuda_state *s, const umas_weights *w, int l, int first) {
    int i = block_keeps(s, l) ? l : 0;
    edge_tape t = s->tapes[i];
    if (!tape_holds_all_edges(s, i) || first == 0)
        return t;
    size_t floats[tape_buffers];
    tape_sizes(s, w, i, floats);
    for (int k = 0; k < tape_buffers; k++)
        if (tape_buffer(t, k)->ptr)
            tape_buffer(t, k)->ptr = F(*tape_buffer(t, k)) + (size_t)first * floats[k];
    return t;
}

/* Where tape t's radial MLP output [n][out] lives: in t, or in tapes[0]'s when the kept tapes
 * leave it out (s->keep_radial false; each block then recomputes it in its backward). */
float *radial_of(cuda_state *s, edge_tape &t) {
    return F(s->keep_radial ? t.radial : s->tapes[0].radial);
}

/* umas_fast_gpu, ozaki: SiLU(LayerNorm) of x [n][Ce] (row stride ld) written sliced into
 * s->sliced as the operand of the product `next` on s->hidden (cu_layer_norm_silu_sliced), when
 * that product takes the int8 kernel; false (nothing done) otherwise. */
bool norm_silu_sliced(cuda_state *s, const dev_linear &next, const dev_layer_norm &norm, int n,
                      const float *x, int ld) {
    if (!producers_write_sliced(s, n))
        return false;
    const int K[1] = {next.in};
    i8_sliced part[1];
    if (!fused_operands_sliced(s, n, K, part) || !ozaki_forward_takes(s, next, n, part[0]) ||
        !cu_layer_norm_silu_sliced(n, next.in, x, ld, norm.weight, norm.bias, &part[0], s->stream))
        return false;
    register_presliced(s, {(const float *)F(s->hidden)}, n, K, {next.in}, part);
    return true;
}

/* The radial MLP's SiLU(LayerNorm) of x [n][Ce] (row stride ld) into s->hidden, then the
 * product `next` on it into y [n][next.out]. */
void norm_silu_then(cuda_state *s, const dev_layer_norm &norm, const dev_linear &next, int n,
                    const float *x, int ld, float *y) {
    if (!norm_silu_sliced(s, next, norm, n, x, ld))
        cu_layer_norm_silu(n, next.in, x, ld, norm.weight, norm.bias, F(s->hidden), s->stream);
    linear_forward(s, next, n, F(s->hidden), next.in, y, next.out);
    s->presliced_count = 0;
}

/* The radial MLP's last layer: t.pre_norm2 [n][Ce] -> radial_of(t). */
void radial_mlp_last(cuda_state *s, const dev_radial &m, int n, edge_tape &t) {
    norm_silu_then(s, m.norm2, m.fc3, n, F(t.pre_norm2), m.fc1.out, radial_of(s, t));
}

/* The radial MLP after its first layer: pre_norm1 [n][Ce] (row stride ld) -> radial_of(t). */
void radial_mlp_rest(cuda_state *s, const dev_radial &m, int n, const float *pre_norm1, int ld,
                     edge_tape &t) {
    norm_silu_then(s, m.norm1, m.fc2, n, pre_norm1, ld, F(t.pre_norm2));
    radial_mlp_last(s, m, n, t);
}

void radial_mlp_forward(cuda_state *s, const dev_radial &m, int n, edge_tape &t) {
    linear_forward(s, m.fc1, n, F(s->radial_input), m.fc1.in, F(t.pre_norm1), m.fc1.out);
    radial_mlp_rest(s, m, n, F(t.pre_norm1), m.fc1.out, t);
}

/* umas_fast_gpu, ozaki: the second SiLU(LayerNorm)'s adjoint written sliced into s->sliced as
 * the operand of fc2's backward (the product on d_hidden), when that takes the int8 kernel;
 * d_hidden (the adjoint of its output) is only read. False (nothing done) otherwise. */
bool norm_silu_backward_sliced(cuda_state *s, const dev_radial &m, int n, edge_tape &t,
                               const float *d_hidden) {
    if (!producers_write_sliced(s, n))
        return false;
    const int ce = m.fc1.out, K[1] = {m.fc2.out};
    i8_sliced part[1];
    if (!fused_operands_sliced(s, n, K, part) ||
        !ozaki_backward_takes(s, m.fc2, m.fc2.in, n, part[0]) ||
        !cu_layer_norm_silu_backward_sliced(n, ce, F(t.pre_norm2), ce, m.norm2.weight, m.norm2.bias,
                                            d_hidden, &part[0], s->stream))
        return false;
    register_presliced(s, {d_hidden}, n, K, {ce}, part);
    return true;
}

/* d_radial -> dE/d(first layer output) into d_first [n][Ce] (row stride ld, as pre_norm1, the
 * forward's input; d_first may be pre_norm1 itself) */
void radial_mlp_rest_backward(cuda_state *s, const dev_radial &m, int n, const float *pre_norm1,
                              float *d_first, int ld, edge_tape &t) {
    int ce = m.fc1.out;
    float *d_hidden = F(s->radial_work), *scratch = F(s->radial_work) + (size_t)n * ce;
    linear_backward(s, m.fc3, n, F(s->d_radial), m.fc3.out, d_hidden, ce, ce, 0);
    s->presliced_count = 0; /* d_radial, when the producer's backward wrote it sliced */
    if (!norm_silu_backward_sliced(s, m, n, t, d_hidden))
        cu_layer_norm_silu_backward(n, ce, F(t.pre_norm2), ce, m.norm2.weight, m.norm2.bias,
                                    d_hidden, d_hidden, s->stream);
    linear_backward(s, m.fc2, n, d_hidden, ce, scratch, ce, ce, 0);
    s->presliced_count = 0;
    cu_layer_norm_silu_backward(n, ce, pre_norm1, ld, m.norm1.weight, m.norm1.bias, scratch,
                                d_first, s->stream);
}

/* d_radial -> d_gauss [n][B] -> d_distance (umas_radial_mlp_backward + gaussian backward) */
void radial_mlp_backward(cuda_state *s, const dev_radial &m, int n, int first, int B,
                         edge_tape &t) {
    float *d_first = F(s->radial_work) + (size_t)n * m.fc1.out;
    radial_mlp_rest_backward(s, m, n, F(t.pre_norm1), d_first, m.fc1.out, t);
    linear_backward(s, m.fc1, n, d_first, m.fc1.out, F(s->d_gauss), B, B, 0);
    cu_gaussian_backward(n, F(s->distance) + first, s->offsets, s->coeff, B, F(s->d_gauss), B,
                         F(s->d_distance) + first, s->stream);
}

/* the number of edges in the chunk that starts at edge `first` */
int chunk_size(const cuda_state *s, const graph_view &g, int first) {
    return g.E - first < s->chunk ? g.E - first : s->chunk;
}

/* edges [first, first + n) and their radial MLP output in radial_of(t) */
int radial_chunk(cuda_state *s, const umas_weights *w, const dev_radial &m, const graph_view &g,
                 int first, edge_tape &t) {
    int n = chunk_size(s, g, first);
    cu_radial_input(n, I(s->src) + first, I(s->tgt) + first, I(s->z), F(s->distance) + first,
                    s->offsets, s->coeff, w->B, s->source_embedding, s->target_embedding, w->Ce,
                    F(s->radial_input), s->stream);
    radial_mlp_forward(s, m, n, t);
    return n;
}

/* umas_fast: block l's slice of the unified first radial layer's output (s->first, row stride
 * ld) for the edges from `first` on: the radial MLP's LayerNorm reads it there, and its adjoint
 * goes back into the same place */
int first_layer_ld(const umas_weights *w) {
    return w->num_layers * w->Ce;
}
float *first_layer_slice(cuda_state *s, const umas_weights *w, int l, int first) {
    return F(s->first) + (size_t)first * first_layer_ld(w) + (size_t)l * w->Ce;
}

/* Block l's radial MLP output for edges [first, first + n) into its tape t; umas_fast from its
 * slice of the unified first layer */
int block_radial_chunk(cuda_state *s, const umas_weights *w, int l, const graph_view &g, int first,
                       edge_tape &t) {
    const dev_radial &m = s->blocks[l].radial;
    if (!s->fast)
        return radial_chunk(s, w, m, g, first, t);
    int n = chunk_size(s, g, first);
    radial_mlp_rest(s, m, n, first_layer_slice(s, w, l, first), first_layer_ld(w), t);
    return n;
}

/* umas_fast: dE/d(first layer output) of block l into its slice of s->first */
void block_radial_backward(cuda_state *s, const umas_weights *w, int l, int n, int first,
                           edge_tape &t) {
    const dev_radial &m = s->blocks[l].radial;
    if (!s->fast) {
        radial_mlp_backward(s, m, n, first, w->B, t);
        return;
    }
    float *slice = first_layer_slice(s, w, l, first);
    radial_mlp_rest_backward(s, m, n, slice, slice, first_layer_ld(w), t);
}

/* umas_fast: every block's first radial layer for all edges, one GEMM per chunk */
void unified_radial_forward(cuda_state *s, const umas_weights *w, const graph_view &g) {
    size_t ld = (size_t)w->num_layers * w->Ce;
    for (int first = 0; first < g.E; first += s->chunk) {
        int n = chunk_size(s, g, first);
        cu_radial_input(n, I(s->src) + first, I(s->tgt) + first, I(s->z), F(s->distance) + first,
                        s->offsets, s->coeff, w->B, s->source_embedding, s->target_embedding, w->Ce,
                        F(s->radial_input), s->stream);
        linear_forward(s, s->unified_fc1, n, F(s->radial_input), w->F, F(s->first) + first * ld,
                       (int)ld);
    }
}

/* umas_fast: the adjoint of all blocks' first layers in one GEMM per chunk, to the Gaussians
 * and on to the distances */
void unified_radial_backward(cuda_state *s, const umas_weights *w, const graph_view &g) {
    size_t ld = (size_t)w->num_layers * w->Ce;
    for (int first = 0; first < g.E; first += s->chunk) {
        int n = chunk_size(s, g, first);
        linear_backward(s, s->unified_fc1, n, F(s->first) + first * ld, (int)ld, F(s->d_gauss),
                        w->B, w->B, 0);
        cu_gaussian_backward(n, F(s->distance) + first, s->offsets, s->coeff, w->B, F(s->d_gauss),
                             w->B, F(s->d_distance) + first, s->stream);
    }
}

const cu_wigner *W(cuda_state *s, int first) {
    return static_cast<const cu_wigner *>(s->wigner.ptr) + first;
}
cu_wigner *dW(cuda_state *s, int first) {
    return static_cast<cu_wigner *>(s->d_wigner.ptr) + first;
}

/* One m > 0 SO(2) convolution: out_r = W1 x_r - W2 x_i, out_i = W2 x_r + W1 x_i (so2_m_forward).
 * general: two GEMMs and a combine; umas_fast: one GEMM with the block form, as x_i follows x_r
 * and out_i follows out_r in every call (the M-order layout). */
void so2_forward(cuda_state *s, const dev_linear &Wl, const dev_linear &block, int n,
                 const float *x_r, const float *x_i, int ldx, float *out_r, float *out_i, int ldo) {
    if (s->fast) {
        linear_forward(s, block, n, x_r, ldx, out_r, ldo);
        return;
    }
    linear_forward(s, Wl, n, x_r, ldx, F(s->product_r), Wl.out);
    linear_forward(s, Wl, n, x_i, ldx, F(s->product_i), Wl.out);
    cu_so2_combine(n, Wl.out / 2, F(s->product_r), F(s->product_i), out_r, out_i, ldo, s->stream);
}

/* umas_fast_gpu, ozaki: the producer writes conv1's operands sliced (cu_gather_rotate_sliced)
 * into y's buffer s->rotated, whose fp32 y then never exists, and registers them as the
 * presliced operands of the products on y, y + 6C and y + 14C; that saves y's write and the
 * slicing's read of it. Only when all four conv1 products take the int8 kernel (and C <= 256);
 * returns false (nothing done) otherwise. Layout in s->rotated per part (K = 6C, 8C, 4C): the
 * [n] exponents (16-byte aligned), then the three planes [n][ld]. */
bool conv1_sliced(cuda_state *s, const dev_block &b, int C, int n, int first, const float *x,
                  edge_tape &t, const float *y) {
    if (!producers_write_sliced(s, n))
        return false;
    const int K[3] = {6 * C, 8 * C, 4 * C};
    i8_sliced part[3];
    if (!operands_sliced_in(s->rotated, n, K, part) ||
        !ozaki_forward_takes(s, b.conv1_m0_gates, n, part[0]) ||
        !ozaki_forward_takes(s, b.conv1_m0_rows, n, part[0]) ||
        !ozaki_forward_takes(s, b.block_conv1_m1, n, part[1]) ||
        !ozaki_forward_takes(s, b.block_conv1_m2, n, part[2]) ||
        !cu_gather_rotate_sliced(n, I(s->src) + first, I(s->tgt) + first, W(s, first), C, x,
                                 radial_of(s, t), part, s->stream))
        return false;
    register_presliced(s, {y, y + 6 * C, y + 14 * C}, n, K, {18 * C, 18 * C, 18 * C}, part);
    return true;
}

/* umas_fast_gpu, ozaki: the gate writes conv2's operands sliced (cu_gate_forward_sliced) into
 * s->sliced: g (the products on g, g + 3H, g + 7H) never exists in fp32, nor is o gated in
 * place. Only when all three conv2 products take the int8 kernel; false (nothing done)
 * otherwise. */
bool gate_sliced(cuda_state *s, const dev_block &b, int H, int n, edge_tape &t, const float *o,
                 const float *g) {
    if (!producers_write_sliced(s, n))
        return false;
    const int K[3] = {3 * H, 4 * H, 2 * H};
    i8_sliced part[3];
    if (!fused_operands_sliced(s, n, K, part) ||
        !so2_products_take(s, b.conv2_m0, b.block_conv2_m1, b.block_conv2_m2, 0, n, part) ||
        !cu_gate_forward_sliced(n, H, F(t.gates), o, part, s->stream))
        return false;
    register_presliced(s, {g, g + 3 * H, g + 7 * H}, n, K, {9 * H, 9 * H, 9 * H}, part);
    return true;
}

/* The backward's counterpart: the gate's adjoints, conv1's adjoint operands (d_conv1_m0 and the
 * m > 0 columns of dO), written sliced into s->sliced (cu_gate_backward_sliced); dg stays as
 * conv2's backward wrote it. */
bool gate_backward_sliced(cuda_state *s, const dev_block &b, int C, int H, int n, edge_tape &t,
                          const float *dg) {
    if (!producers_write_sliced(s, n))
        return false;
    const int K[3] = {5 * H, 4 * H, 2 * H};
    i8_sliced part[3];
    if (!fused_operands_sliced(s, n, K, part) ||
        !so2_products_take(s, b.conv1_m0, b.block_conv1_m1, b.block_conv1_m2, 6 * C, n, part) ||
        !cu_gate_backward_sliced(n, H, F(t.gates), F(t.gated), dg, part, s->stream))
        return false;
    const float *d_conv1_m0 = F(s->d_conv1_m0);
    register_presliced(s, {d_conv1_m0, dg + 3 * H, dg + 7 * H}, n, K, {5 * H, 9 * H, 9 * H}, part);
    return true;
}

/* The chunk's messages into t.messages (core/edgewise.c edgewise_messages), from the radial
 * weights in radial_of(t). With `keep_gate_input` (the backward will read this chunk's tape) the
 * conv1 output stays in t.gated and the gate writes to scratch; else it gates in place. The
 * unscaled rotated features go to `unscaled` unless it is null. */
void edgewise_messages(cuda_state *s, const dev_block &b, int C, int H, int n, int first,
                       const float *x, edge_tape &t, float *unscaled, bool keep_gate_input) {
    cudaStream_t st = s->stream;
    float *y = F(s->rotated), *o = F(t.gated), *z = F(t.messages);
    float *g = keep_gate_input ? F(s->d_gated) : o;
    if (!conv1_sliced(s, b, C, n, first, x, t, y))
        cu_gather_rotate(n, I(s->src) + first, I(s->tgt) + first, W(s, first), C, x,
                         radial_of(s, t), unscaled, y, st);
    linear_forward(s, b.conv1_m0_gates, n, y, 18 * C, F(t.gates), 2 * H);
    s->ozaki_same_activation = true; /* the same m = 0 rows of y */
    linear_forward(s, b.conv1_m0_rows, n, y, 18 * C, o, 9 * H);
    s->ozaki_same_activation = false;
    so2_forward(s, b.conv1_m1, b.block_conv1_m1, n, y + 6 * C, y + 10 * C, 18 * C, o + 3 * H,
                o + 5 * H, 9 * H);
    so2_forward(s, b.conv1_m2, b.block_conv1_m2, n, y + 14 * C, y + 16 * C, 18 * C, o + 7 * H,
                o + 8 * H, 9 * H);
    s->presliced_count = 0; /* y's buffer is reused below (as dz, dy) */
    if (!gate_sliced(s, b, H, n, t, o, g))
        cu_gate_forward(n, H, F(t.gates), o, g, st);
    linear_forward(s, b.conv2_m0, n, g, 9 * H, z, 9 * C);
    so2_forward(s, b.conv2_m1, b.block_conv2_m1, n, g + 3 * H, g + 5 * H, 9 * H, z + 3 * C,
                z + 5 * C, 9 * C);
    so2_forward(s, b.conv2_m2, b.block_conv2_m2, n, g + 7 * H, g + 8 * H, 9 * H, z + 7 * C,
                z + 8 * C, 9 * C);
    s->presliced_count = 0;
}

/* umas_fast_gpu, ozaki: the consumer's backward writes conv2's adjoint operands sliced
 * (cu_rotate_back_backward_sliced) into s->sliced instead of dz in fp32. Only when all three
 * conv2 adjoint products take the int8 kernel; false (nothing done) otherwise. */
bool rotate_back_backward_sliced(cuda_state *s, const dev_block &b, int C, int H, int n, int first,
                                 edge_tape &t, const float *d_out, const float *dz) {
    if (!producers_write_sliced(s, n))
        return false;
    const int K[3] = {3 * C, 4 * C, 2 * C};
    i8_sliced part[3];
    if (!fused_operands_sliced(s, n, K, part) ||
        !so2_products_take(s, b.conv2_m0, b.block_conv2_m1, b.block_conv2_m2, 3 * H, n, part))
        return false;
    cu_rotate_back_backward_sliced(n, I(s->tgt) + first, W(s, first), F(s->envelope) + first, C,
                                   F(t.messages), d_out, dW(s, first), F(s->d_envelope) + first,
                                   part, s->stream);
    register_presliced(s, {dz, dz + 3 * C, dz + 7 * C}, n, K, {9 * C, 9 * C, 9 * C}, part);
    return true;
}

/* umas_fast_gpu, ozaki: the producer's backward writes d_radial sliced into s->sliced
 * (cu_producer_backward_sliced), the operand of the radial MLP's last layer's backward, which
 * block_radial_backward runs next (radial_mlp_rest_backward ends the registration). Only when
 * that product takes the int8 kernel; false (nothing done) otherwise. */
bool producer_backward_sliced(cuda_state *s, const dev_block &b, int C, int n, int first,
                              const float *x, edge_tape &t, const float *dy) {
    if (!producers_write_sliced(s, n))
        return false;
    const dev_linear &fc3 = b.radial.fc3;
    const int K[1] = {fc3.out}; /* 12C */
    i8_sliced part[1];
    if (!fused_operands_sliced(s, n, K, part) ||
        !ozaki_backward_takes(s, fc3, fc3.in, n, part[0]) ||
        !cu_producer_backward_sliced(n, I(s->src) + first, I(s->tgt) + first, W(s, first), C, x,
                                     radial_of(s, t), dy, &part[0], U(s->node_sums), dW(s, first),
                                     s->stream))
        return false;
    register_presliced(s, {F(s->d_radial)}, n, K, {fc3.out}, part);
    return true;
}

/* so2_m_backward: general stacks then two GEMMs; umas_fast one GEMM with the block form */
void so2_backward(cuda_state *s, const dev_linear &Wl, const dev_linear &block, int n,
                  const float *do_r, const float *do_i, int ldo, float *dx_r, float *dx_i,
                  int ldx) {
    if (s->fast) {
        linear_backward(s, block, n, do_r, ldo, dx_r, ldx, block.in, 0);
        return;
    }
    cu_so2_stack(n, Wl.out / 2, do_r, do_i, ldo, F(s->product_r), F(s->product_i), s->stream);
    linear_backward(s, Wl, n, F(s->product_r), Wl.out, dx_r, ldx, Wl.in, 0);
    linear_backward(s, Wl, n, F(s->product_i), Wl.out, dx_i, ldx, Wl.in, 0);
}

/* The chunk's adjoints; dE/dx goes into the fixed-point s->node_sums. The chunk's tape is
 * recomputed from x first unless the forward kept it (`kept`, umas_fast_gpu only).
 * umas_fast_gpu runs the producer's backward as one pass that re-gathers and rotates x itself
 * (cu_producer_backward); general and umas_fast keep the unscaled rotated features of the
 * recompute for it. */
void edgewise_backward(cuda_state *s, const dev_block &b, int C, int H, int n, int first,
                       const float *x, const float *d_out, edge_tape &t, bool kept) {
    cudaStream_t st = s->stream;
    if (!kept)
        edgewise_messages(s, b, C, H, n, first, x, t, s->fused ? nullptr : F(s->unscaled), true);
    else if (!s->keep_radial)
        radial_mlp_last(s, b.radial, n, t); /* the tape kept its input, not its output */
    /* dz lives in conv1's operand buffer: dead there since conv1's forward, and read only
     * by conv2's backward, before conv1's backward writes dy over it */
    float *dz = F(s->rotated), *dg = F(s->d_gated), *dy = F(s->rotated);
    if (!rotate_back_backward_sliced(s, b, C, H, n, first, t, d_out, dz))
        cu_rotate_back_backward(n, I(s->tgt) + first, W(s, first), F(s->envelope) + first, C,
                                F(t.messages), d_out, dz, dW(s, first), F(s->d_envelope) + first,
                                st);
    linear_backward(s, b.conv2_m0, n, dz, 9 * C, dg, 9 * H, 3 * H, 0);
    so2_backward(s, b.conv2_m1, b.block_conv2_m1, n, dz + 3 * C, dz + 5 * C, 9 * C, dg + 3 * H,
                 dg + 5 * H, 9 * H);
    so2_backward(s, b.conv2_m2, b.block_conv2_m2, n, dz + 7 * C, dz + 8 * C, 9 * C, dg + 7 * H,
                 dg + 8 * H, 9 * H);
    s->presliced_count = 0;
    if (!gate_backward_sliced(s, b, C, H, n, t, dg))
        cu_gate_backward(n, H, F(t.gates), F(t.gated), dg, F(s->d_conv1_m0), st);
    linear_backward(s, b.conv1_m0, n, F(s->d_conv1_m0), 5 * H, dy, 18 * C, 6 * C, 0);
    so2_backward(s, b.conv1_m1, b.block_conv1_m1, n, dg + 3 * H, dg + 5 * H, 9 * H, dy + 6 * C,
                 dy + 10 * C, 18 * C);
    so2_backward(s, b.conv1_m2, b.block_conv1_m2, n, dg + 7 * H, dg + 8 * H, 9 * H, dy + 14 * C,
                 dy + 16 * C, 18 * C);
    s->presliced_count = 0;
    if (s->fused) {
        if (!producer_backward_sliced(s, b, C, n, first, x, t, dy))
            cu_producer_backward(n, I(s->src) + first, I(s->tgt) + first, W(s, first), C, x,
                                 radial_of(s, t), dy, F(s->d_radial), U(s->node_sums), dW(s, first),
                                 st);
        return;
    }
    cu_scale_by_radial_backward(n, C, radial_of(s, t), F(s->unscaled), dy, F(s->d_radial), st);
    cu_gather_rotate_backward(n, I(s->src) + first, I(s->tgt) + first, W(s, first), C, x, dy,
                              U(s->node_sums), dW(s, first), st);
}

void message_input(cuda_state *s, const dev_block &b, int N, int C, const float *h, float *u) {
    cu_rms_norm_forward(N, C, b.norm_1.scale, b.norm_1.bias, h, u, s->stream);
    cu_add_to_l0(N, C, s->system_embedding, u, s->stream);
}

/* umas_spectral_atomwise_forward: out = FFN(v) */
void ffn_forward(cuda_state *s, const dev_block &b, int N, int C, int H, const float *v,
                 float *out) {
    float *gates = F(s->ffn_pre), *q = F(s->ffn_hidden);
    linear_forward(s, b.ffn_scalar, N, v, 9 * C, gates, 2 * H);
    so3_linear_forward(s, b.so3_1, N, v, q);
    cu_ffn_gate_forward(N, H, gates, q, s->stream);
    so3_linear_forward(s, b.so3_2, N, q, out);
}

/* umas_spectral_atomwise_backward: dv from v and d_out */
void ffn_backward(cuda_state *s, const dev_block &b, int N, int C, int H, const float *v,
                  const float *d_out, float *dv) {
    float *pre = F(s->ffn_pre), *q = F(s->ffn_hidden), *d_r = F(s->ffn_d_r);
    float *d_pre = F(s->ffn_d_pre);
    linear_forward(s, b.ffn_scalar, N, v, 9 * C, pre, 2 * H);
    so3_linear_forward(s, b.so3_1, N, v, q);
    so3_linear_backward(s, b.so3_2, N, d_out, d_r, 0);
    cu_ffn_gate_backward(N, H, pre, q, d_r, d_pre, s->stream);
    so3_linear_backward(s, b.so3_1, N, q, dv, 0);
    linear_backward(s, b.ffn_scalar, N, d_pre, 2 * H, dv, 9 * C, C, 1);
}

void record_trace(umas_context *ctx, cuda_state *s, int stage, const float *x, int N) {
    if (!ctx->trace)
        return;
    size_t n = (size_t)N * 9 * ctx->weights.C;
    s->host_features.resize(n);
    cudaMemcpyAsync(s->host_features.data(), x, n * sizeof(float), cudaMemcpyDeviceToHost,
                    s->stream);
    cudaStreamSynchronize(s->stream);
    for (size_t k = 0; k < n; k++)
        ctx->trace[(size_t)stage * n + k] = s->host_features[k];
}

double seconds_now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

int check(cudaError_t e, const char *what, umas_error *err) {
    if (e == cudaSuccess)
        return 0;
    return umas_fail(err, "CUDA error in %s: %s", what, cudaGetErrorString(e));
}

/* ---------------------------------------------------------------------------------------------
 * Backend functions
 * ------------------------------------------------------------------------------------------- */

void cuda_destroy(umas_context *ctx) {
    cuda_state *s = static_cast<cuda_state *>(ctx->backend_state);
    if (!s)
        return;
    for (void *p : s->weight_memory)
        cudaFree(p);
    /* every buffer, five to a row (clang-format would give each its own line) */
    // clang-format off
    buffer *all[] = {
        &s->vec,          &s->src,          &s->tgt,          &s->distance,     &s->envelope,
        &s->wigner,       &s->d_wigner,     &s->d_envelope,   &s->d_distance,   &s->gradient,
        &s->z,            &s->h,            &s->u,            &s->ffn_out,      &s->ffn_pre,
        &s->ffn_hidden,   &s->head_hidden,  &s->node_output,  &s->saved,        &s->dh,
        &s->du,           &s->d_tmp,        &s->ffn_d_pre,    &s->ffn_d_r,      &s->radial_input,
        &s->hidden,       &s->d_radial,     &s->d_gauss,      &s->radial_work,  &s->rotated,
        &s->product_r,    &s->product_i,    &s->d_gated,      &s->d_conv1_m0,   &s->unscaled,
        &s->list_source,  &s->list_target,  &s->list_image,   &s->list_vector,  &s->keep,
        &s->slot,         &s->kept,         &s->select_scratch, &s->flags,        &s->positions,
        &s->cell,         &s->forces,       &s->virial,       &s->node_virial,  &s->first,
        &s->split_hi,     &s->split_lo,     &s->node_sums,    &s->sliced};
    // clang-format on
    for (buffer *b : all)
        if (b->ptr)
            cudaFree(b->ptr);
    for (edge_tape &t : s->tapes)
        for (int i = 0; i < tape_buffers; i++)
            if (tape_buffer(t, i)->ptr)
                cudaFree(tape_buffer(t, i)->ptr);
    for (step_graph &sg : s->graphs)
        cudaGraphExecDestroy(sg.exec);
    if (s->blas)
        cublasDestroy(s->blas);
    if (s->blas_lt)
        cublasLtDestroy(s->blas_lt);
    if (s->blas_workspace)
        cudaFree(s->blas_workspace);
    if (s->stream)
        cudaStreamDestroy(s->stream);
    delete s;
    ctx->backend_state = nullptr;
}

/* Floats per edge of block l's edge_tape, buffer by buffer (tape_buffer order), as
 * reserve_buffers sizes them. umas_fast's blocks read their radial LayerNorm input in s->first,
 * so only tapes[0] (which also serves the edge-degree MLP) and general's tape keep pre_norm1;
 * without keep_radial the kept tapes of blocks 1.. have no radial output either. */
void tape_sizes(const cuda_state *s, const umas_weights *w, size_t l, size_t floats[]) {
    size_t C = w->C, H = w->H, Ce = w->Ce;
    const bool shared_radial = block_keeps(s, (int)l) && !s->keep_radial && l > 0; /* tapes[0] */
    const size_t sizes[tape_buffers] = {
        s->fast && l > 0 ? 0 : Ce, Ce, shared_radial ? 0 : 12 * C, 2 * H, 9 * H, 9 * C};
    for (int i = 0; i < tape_buffers; i++)
        floats[i] = sizes[i];
}
size_t tape_floats_per_edge(const cuda_state *s, const umas_weights *w, size_t l) {
    size_t floats[tape_buffers], total = 0;
    tape_sizes(s, w, l, floats);
    for (size_t f : floats)
        total += f;
    return total;
}
/* Floats per edge of the per-chunk scratch besides the tapes (reserve_buffers' per-chunk items;
 * the few per-edge geometry arrays are left out). */
size_t scratch_floats_per_edge(const cuda_state *s, const umas_weights *w) {
    size_t C = w->C, H = w->H, Ce = w->Ce, wide = 4 * (C > H ? C : H);
    return (size_t)w->F + Ce + 12 * C + (size_t)w->B + 2 * Ce /* radial MLP and its adjoints */
           + 18 * C                                           /* rotated */
           + (s->fast ? 0 : 2 * wide)                         /* product_r, product_i */
           + 9 * H + 5 * H                                    /* d_gated, d_conv1_m0 */
           + (s->fused ? 0 : 18 * C)                          /* unscaled */
           + (producers_write_sliced(s, 1)
                  ? (fused_operand_bytes(1024, (int)C, (int)H) / 1024 + 3) / 4
                  : 0);
}

/* UMAS_CUDA_RECOMPUTE's tape (tests and measurements; anything else, "0" or unset, forces none):
 * "1" keeps no block's activations; "chunks" every block's; "radial" every block's without the
 * radial outputs; "partial" the last half of the blocks' without them. The last three run in
 * three chunks of edges. "kept:K:radial:N" or "kept:K:noradial:N" keeps the last K blocks' with
 * or without the radial outputs, in chunks of N edges (to measure the choices reserve_all makes
 * between). */
cuda_state::forced_tape forced_tape_of(const char *value, int L) {
    cuda_state::forced_tape f;
    if (!value)
        return f;
    if (strcmp(value, "1") == 0)
        f = {true, 0, true, false};
    else if (strcmp(value, "chunks") == 0)
        f = {true, L, true, true};
    else if (strcmp(value, "radial") == 0)
        f = {true, L, false, true};
    else if (strcmp(value, "partial") == 0)
        f = {true, std::max(1, L / 2), false, true};
    int kept = 0, chunk = 0;
    char radial[16] = "";
    if (sscanf(value, "kept:%d:%15[a-z]:%d", &kept, radial, &chunk) == 3 && chunk > 0 &&
        (strcmp(radial, "radial") == 0 || strcmp(radial, "noradial") == 0)) {
        kept = std::min(std::max(kept, 0), L);
        f = {true, kept, kept == 0 || strcmp(radial, "radial") == 0, false, chunk};
    }
    return f;
}

/* The balanced channels and their targets (ctx->balance) and room for their sums. */
int upload_balance(umas_context *ctx, cuda_state *s, umas_error *err) {
    const umas_balance &b = ctx->balance;
    if (b.count == 0)
        return 0;
    void *channel = nullptr, *target = nullptr, *sums = nullptr;
    cudaError_t e = cudaMalloc(&channel, sizeof(int) * b.count);
    if (e == cudaSuccess)
        e = cudaMalloc(&target, sizeof(double) * b.count);
    if (e == cudaSuccess)
        e = cudaMalloc(&sums, sizeof(double) * b.count);
    s->weight_memory.insert(s->weight_memory.end(), {channel, target, sums});
    if (check(e, "the balanced channels", err))
        return -1;
    s->balance_channel = static_cast<int *>(channel);
    s->balance_target = static_cast<double *>(target);
    s->balance_sums = static_cast<double *>(sums);
    cudaMemcpy(channel, b.channel, sizeof(int) * b.count, cudaMemcpyHostToDevice);
    cudaMemcpy(target, b.target, sizeof(double) * b.count, cudaMemcpyHostToDevice);
    s->host_sums.resize(b.count);
    return 0;
}

int create(umas_context *ctx, bool fast, bool fused, umas_error *err) {
    const umas_weights *w = &ctx->weights;
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        cudaGetLastError();
        return umas_fail(err, "device cuda: no CUDA device is visible on this machine (use "
                              "device cpu)");
    }
    cuda_state *s = new cuda_state();
    ctx->backend_state = s;
    s->fast = fast;
    s->fused = fused;
    const char *recompute = getenv("UMAS_CUDA_RECOMPUTE");
    s->forced = forced_tape_of(recompute, w->num_layers);
    const char *verbose = getenv("UMAS_CUDA_VERBOSE");
    s->verbose = verbose && strcmp(verbose, "1") == 0;
    s->tapes.resize(fused ? w->num_layers : 1);
    s->precision = ctx->precision;
    cudaGetDevice(&s->device);
    if (s->precision == UMAS_PRECISION_3XTF32) { /* rows = 0: asks whether the kernel runs here */
        alignas(16) static const float aligned[4] = {0, 0, 0, 0};
        s->tensor_core_gemm = tc_gemm_nt_tma(TC_ACCUM_CHUNK_JAM, 2, 0, 4, 4, aligned, 4, aligned,
                                             aligned, 4, nullptr, 0.0f, nullptr, 4, nullptr) != 0;
        cudaDeviceGetAttribute(&s->multiprocessors, cudaDevAttrMultiProcessorCount, s->device);
    }
    if (s->precision == UMAS_PRECISION_OZAKI) { /* rows = 0: asks whether the kernel runs here */
        alignas(16) static int8_t slices[16];
        static int exponents[1];
        const i8_sliced probe = {slices, exponents, 16, 16};
        s->tensor_core_gemm =
            i8_gemm_nt(0, 4, 4, &probe, &probe, nullptr, 0.0f, nullptr, 4, nullptr) != 0;
        cudaDeviceGetAttribute(&s->multiprocessors, cudaDevAttrMultiProcessorCount, s->device);
    }
    if (check(cudaStreamCreate(&s->stream), "cudaStreamCreate", err))
        return -1;
    if (cublasCreate(&s->blas) != CUBLAS_STATUS_SUCCESS)
        return umas_fail(err, "device cuda: cuBLAS could not be initialised");
    cublasSetStream(s->blas, s->stream);
    if (cublasLtCreate(&s->blas_lt) != CUBLAS_STATUS_SUCCESS)
        s->blas_lt = nullptr; /* then biases are broadcast before the product */
    if (fused) {              /* cuBLAS must not allocate while a graph is being captured */
        const size_t workspace = (size_t)32 << 20;
        if (check(cudaMalloc(&s->blas_workspace, workspace), "the cuBLAS workspace", err))
            return -1;
        cublasSetWorkspace(s->blas, s->blas_workspace, workspace);
    }
    /* the arithmetic of each product is set per call (gemm) */

    int Z = w->num_elements, C = w->C;
    s->sphere = upload(s, w->sphere_embedding, (size_t)Z * C);
    s->source_embedding = upload(s, w->source_embedding, (size_t)Z * w->Ce);
    s->target_embedding = upload(s, w->target_embedding, (size_t)Z * w->Ce);
    s->system_embedding = upload(s, w->system_embedding, (size_t)C);
    umas_gaussian_basis basis;
    if (umas_gaussian_basis_init(&basis, w->B, w->cutoff))
        return umas_fail(err, "out of memory");
    s->offsets = upload(s, basis.offsets, (size_t)w->B);
    s->coeff = (float)basis.coeff;
    umas_gaussian_basis_free(&basis);
    s->degree = upload_radial(s, w->degree_radial);
    s->blocks.resize(w->num_layers);
    for (int l = 0; l < w->num_layers; l++) {
        const umas_block_weights &b = w->blocks[l];
        dev_block &d = s->blocks[l];
        d.norm_1 = upload_rms(s, b.norm_1, C);
        d.norm_2 = upload_rms(s, b.norm_2, C);
        d.radial = upload_radial(s, b.radial);
        d.conv1_m0 = upload_linear(s, b.conv1_m0);
        d.conv1_m0_gates = output_rows(d.conv1_m0, 0, 2 * w->H);
        d.conv1_m0_rows = output_rows(d.conv1_m0, 2 * w->H, 3 * w->H);
        d.conv1_m1 = upload_linear(s, b.conv1_m1);
        d.conv1_m2 = upload_linear(s, b.conv1_m2);
        d.conv2_m0 = upload_linear(s, b.conv2_m0);
        d.conv2_m1 = upload_linear(s, b.conv2_m1);
        d.conv2_m2 = upload_linear(s, b.conv2_m2);
        d.ffn_scalar = upload_linear(s, b.ffn_scalar);
        upload_so3_linear(s, b.ffn_so3_1, b.ffn_so3_1_bias, w->H, C, d.so3_1);
        upload_so3_linear(s, b.ffn_so3_2, b.ffn_so3_2_bias, C, w->H, d.so3_2);
        if (fast) {
            umas_fast_block form = {};
            if (umas_fast_block_init(&form, &b))
                return umas_fail(err, "out of memory for the block-form convolutions");
            d.block_conv1_m1 = upload_linear(s, form.conv1_m1);
            d.block_conv1_m2 = upload_linear(s, form.conv1_m2);
            d.block_conv2_m1 = upload_linear(s, form.conv2_m1);
            d.block_conv2_m2 = upload_linear(s, form.conv2_m2);
            umas_fast_block_free(&form);
        }
    }
    if (fast) {
        umas_unified_radial unified = {};
        if (umas_unified_radial_init(&unified, w))
            return umas_fail(err, "out of memory for the unified radial layer");
        s->unified_fc1 = upload_linear(s, unified.fc1);
        umas_unified_radial_free(&unified);
    }
    s->final_norm = upload_rms(s, w->final_norm, C);
    for (int i = 0; i < 3; i++)
        s->head[i] = upload_linear(s, w->head[i]);
    s->head_w3_dev = upload(s, w->head[2].weight, (size_t)w->H); /* exact: not a GEMM operand */
    if (upload_balance(ctx, s, err))
        return -1;
    if (check(cudaGetLastError(), "weight upload", err))
        return -1;
    for (void *p : s->weight_memory)
        if (!p)
            return umas_fail(err, "out of GPU memory for the model weights");

    /* chunk: about 1 GB of per-edge work space */
    size_t per_edge =
        (tape_floats_per_edge(s, w, 0) + scratch_floats_per_edge(s, w)) * sizeof(float);
    size_t chunk = ((size_t)1 << 30) / per_edge;
    s->recompute_chunk = (int)(chunk < 1024 ? 1024 : chunk > (1 << 20) ? (1 << 20) : chunk);
    s->chunk = s->recompute_chunk;
    return 0;
}

int cuda_create(umas_context *ctx, umas_error *err) {
    return create(ctx, false, false, err);
}

int cuda_create_fast(umas_context *ctx, umas_error *err) {
    return create(ctx, true, false, err);
}

int cuda_create_fast_gpu(umas_context *ctx, umas_error *err) {
    return create(ctx, true, true, err);
}

size_t cuda_bytes(const umas_context *ctx) {
    const cuda_state *s = static_cast<const cuda_state *>(ctx->backend_state);
    return s->weight_bytes + s->buffer_bytes;
}

/* Every buffer for the graph g, with edges in chunks of s->chunk (already chosen). */
int reserve_buffers(umas_context *ctx, const graph_view &g, umas_error *err) {
    cuda_state *s = static_cast<cuda_state *>(ctx->backend_state);
    const umas_weights *w = &ctx->weights;
    size_t E = g.E, N = g.N, C = w->C, H = w->H, L = w->num_layers;
    size_t n = (size_t)s->chunk < E ? (size_t)s->chunk : (E ? E : 1);
    size_t wide = 4 * (C > H ? C : H), f = sizeof(float);
    int a = g.N, e = g.E;
    size_t split = s->precision == UMAS_PRECISION_3XTF32 && !s->tensor_core_gemm
                       ? std::max(n, N) * s->widest
                       : 0;
    /* ozaki: the sliced activation of the largest product, at most 2^18 rows at a time */
    size_t ozaki = 0;
    if (s->precision == UMAS_PRECISION_OZAKI && s->tensor_core_gemm) {
        s->ozaki_rows = (int)std::min(std::max(n, N), (size_t)1 << 18);
        ozaki = ((size_t)s->ozaki_rows * sizeof(int) + 15) / 16 * 16 +
                3 * (size_t)s->ozaki_rows * i8_slice_ld(s->widest);
        /* also room for the operands the producers write sliced (fused_operands_sliced) */
        if (producers_write_sliced(s, 1))
            ozaki = std::max(ozaki, fused_operand_bytes(n, (int)C, (int)H));
    }
    struct item {
        buffer *b;
        size_t bytes;
        const char *what;
    } items[] = {
        {&s->vec, E * 3 * sizeof(double), "edge vectors"},
        {&s->src, E * sizeof(int), "edges"},
        {&s->tgt, E * sizeof(int), "edges"},
        {&s->distance, E * f, "edge geometry"},
        {&s->envelope, E * f, "edge geometry"},
        {&s->wigner, E * sizeof(cu_wigner), "Wigner matrices"},
        {&s->d_wigner, E * sizeof(cu_wigner), "Wigner adjoints"},
        {&s->d_envelope, E * f, "edge adjoints"},
        {&s->d_distance, E * f, "edge adjoints"},
        {&s->gradient, E * 3 * sizeof(double), "edge gradients"},
        {&s->z, N * sizeof(int), "atoms"},
        {&s->node_sums, N * 9 * C * sizeof(unsigned long long), "node sums"},
        {&s->h, N * 9 * C * f, "node features"},
        {&s->u, N * 9 * C * f, "node features"},
        {&s->ffn_out, N * 9 * C * f, "node features"},
        {&s->ffn_pre, N * 2 * H * f, "feed-forward"},
        {&s->ffn_hidden, N * 9 * H * f, "feed-forward"},
        {&s->head_hidden, N * 2 * H * f, "energy head"},
        {&s->node_output, N * f, "energy head"},
        {&s->saved, (2 * L + 1) * N * 9 * C * f, "saved block inputs"},
        {&s->dh, N * 9 * C * f, "node adjoints"},
        {&s->du, N * 9 * C * f, "node adjoints"},
        {&s->d_tmp, N * 9 * C * f, "node adjoints"},
        {&s->ffn_d_pre, N * 2 * H * f, "feed-forward adjoints"},
        {&s->ffn_d_r, N * 9 * H * f, "feed-forward adjoints"},
        {&s->radial_input, n * w->F * f, "radial inputs"},
        {&s->hidden, n * w->Ce * f, "radial MLP"},
        {&s->d_radial, n * 12 * C * f, "radial adjoints"},
        {&s->d_gauss, n * w->B * f, "radial adjoints"},
        {&s->radial_work, n * 2 * w->Ce * f, "radial adjoints"},
        {&s->rotated, n * 18 * C * f, "edge features"},
        /* general's real/imag products; umas_fast's block-form GEMMs need none */
        {&s->product_r, s->fast ? 0 : n * wide * f, "edge features"},
        {&s->product_i, s->fast ? 0 : n * wide * f, "edge features"},
        {&s->d_gated, n * 9 * H * f, "edge adjoints"},
        {&s->d_conv1_m0, n * 5 * H * f, "edge adjoints"},
        /* umas_fast_gpu's producer backward recomputes these in registers */
        {&s->unscaled, s->fused ? 0 : n * 18 * C * f, "edge features"},
        {&s->first, s->fast ? E * L * w->Ce * f : 0, "the unified radial layer"},
        {&s->split_hi, split * f, "3xtf32 operands"},
        {&s->sliced, ozaki, "ozaki operands"},
        {&s->split_lo, split * f, "3xtf32 operands"},
    };
    for (const item &it : items)
        if (reserve(s, *it.b, it.bytes, it.what, a, e, err))
            return -1;
    for (size_t l = 0; l < L; l++) {
        if (l > 0 && !block_keeps(s, (int)l))
            continue; /* recomputes in tapes[0] */
        size_t floats[tape_buffers];
        size_t rows = tape_holds_all_edges(s, (int)l) ? std::max<size_t>(E, 1) : n;
        tape_sizes(s, w, l, floats);
        for (int i = 0; i < tape_buffers; i++)
            if (reserve(s, *tape_buffer(s->tapes[l], i), rows * floats[i] * f,
                        "saved edge activations", a, e, err))
                return -1;
    }
    return 0;
}

void release(cuda_state *s, buffer &b) {
    if (b.ptr) {
        cudaFree(b.ptr);
        s->buffer_bytes -= b.bytes;
        s->generation++;
    }
    b = buffer();
}

/* Bytes of the kept tapes and of one chunk's scratch for E edges in chunks of `chunk`, with
 * s->kept_blocks and s->keep_radial as they would be (the keep-or-recompute estimate; the
 * per-edge geometry and the node arrays are left out). */
double tape_bytes(const cuda_state *s, const umas_weights *w, size_t E, size_t chunk) {
    size_t L = w->num_layers;
    double floats = (double)chunk * scratch_floats_per_edge(s, w) +
                    (s->fast ? (double)E * L * w->Ce : 0.0); /* s->first */
    for (size_t l = 0; l < L; l++)
        if (l == 0 || block_keeps(s, (int)l))
            floats += (double)(tape_holds_all_edges(s, (int)l) ? E : chunk) *
                      (double)tape_floats_per_edge(s, w, l);
    return floats * sizeof(float);
}

/* Gives back the tapes the choice in s does not use: those of blocks 1.. that recompute, the
 * radial outputs of the kept ones without keep_radial, and tapes[0]'s room beyond one chunk
 * when it holds one chunk (it held all edges for an earlier choice). */
void release_unused_tapes(cuda_state *s, const umas_weights *w) {
    size_t chunk_floats[tape_buffers];
    tape_sizes(s, w, 0, chunk_floats);
    for (size_t l = 0; l < s->tapes.size(); l++)
        for (int i = 0; i < tape_buffers; i++) {
            buffer *b = tape_buffer(s->tapes[l], i);
            bool unused =
                l > 0 && (!block_keeps(s, (int)l) || (b == &s->tapes[l].radial && !s->keep_radial));
            bool oversized = l == 0 && !tape_holds_all_edges(s, 0) &&
                             b->bytes > (size_t)s->chunk * chunk_floats[i] * sizeof(float) + 16;
            if (unused || oversized)
                release(s, *b);
        }
}

void print_tape_choice(const cuda_state *s, const umas_weights *w, size_t E) {
    int L = num_blocks(s), k = s->kept_blocks;
    fprintf(stderr,
            "umas cuda: %zu edges: %d of %d blocks keep their edge activations%s, chunks of %d "
            "edges; %.1f GB of tapes and scratch\n",
            E, k, L, k > 0 && !s->keep_radial ? " (without the radial outputs)" : "", s->chunk,
            tape_bytes(s, w, E, (size_t)s->chunk) / 1e9);
}

/* umas_fast_gpu keeps the edge activations of as many blocks (the last ones) as fit in 80 % of
 * the device memory that is free or already ours, each over all edges: every block's with its
 * radial MLP outputs, then without them, then fewer blocks'. The rest recompute theirs in the
 * backward, chunk by chunk, like umas_fast. Among equal tapes, fewer and larger chunks first
 * (all edges at once, about 4 GB, then about 1 GB of scratch). The choice holds for every later
 * call with as many edges or fewer (the steps of one neighbour list: no buffer moves). */
int reserve_all(umas_context *ctx, const graph_view &g, umas_error *err) {
    cuda_state *s = static_cast<cuda_state *>(ctx->backend_state);
    const umas_weights *w = &ctx->weights;
    size_t E = g.E > 0 ? g.E : 1;
    int L = w->num_layers;
    cuda_state::tape_decision &made = s->decision;
    if (!s->fused) {
        s->kept_blocks = 0;
        s->keep_radial = true;
        s->chunk = s->recompute_chunk;
        return reserve_buffers(ctx, g, err);
    }
    const size_t rc = (size_t)s->recompute_chunk;
    if (s->forced.on) {
        s->kept_blocks = s->forced.kept_blocks;
        s->keep_radial = s->forced.keep_radial;
        const size_t forced_chunk = s->forced.chunk > 0 ? (size_t)s->forced.chunk : rc;
        s->chunk = (int)(s->forced.three_chunks ? (E + 2) / 3 : std::min(E, forced_chunk));
        release_unused_tapes(s, w);
        if (s->verbose)
            print_tape_choice(s, w, E);
        return reserve_buffers(ctx, g, err);
    }
    if (E <= made.edges) {
        s->kept_blocks = made.kept_blocks;
        s->keep_radial = made.keep_radial;
        s->chunk = made.one_chunk ? (int)E : made.chunk;
        if (reserve_buffers(ctx, g, err) == 0)
            return 0;
        cudaGetLastError();
    }
    made.edges = 0;
    size_t free_bytes = 0, total = 0;
    cudaMemGetInfo(&free_bytes, &total);
    const double budget = 0.8 * (double)(free_bytes + s->buffer_bytes);
    const size_t chunks[3] = {E, std::min(E, 4 * rc), std::min(E, rc)};
    for (int k = L; k >= 0; k--) {
        for (bool keep_radial : {true, false}) {
            if (!keep_radial && k == 0)
                continue;
            for (int c = 0; c < 3; c++) {
                if (c > 0 && chunks[c] == chunks[c - 1])
                    continue;
                s->kept_blocks = k;
                s->keep_radial = keep_radial;
                s->chunk = (int)chunks[c];
                /* recomputing all in the smallest chunks is tried whatever the estimate */
                bool last_resort = k == 0 && chunks[c] == chunks[2];
                if (!last_resort && tape_bytes(s, w, E, chunks[c]) > budget)
                    continue;
                release_unused_tapes(s, w);
                if (reserve_buffers(ctx, g, err) != 0) {
                    cudaGetLastError();
                    continue;
                }
                made = {E, k, (int)chunks[c], keep_radial, chunks[c] == E};
                if (s->verbose)
                    print_tape_choice(s, w, E);
                return 0;
            }
        }
    }
    return -1; /* recomputing everything did not fit either: err says what */
}

/* Whether the balancing's sums go through the host (several processes share the system): then
 * every balancing waits for the GPU, and the step cannot be one CUDA graph. */
bool balance_on_host(const umas_context *ctx) {
    return ctx->balance.count > 0 && ctx->sum_over_processes;
}

/* Charge/spin balancing (core/balance.h) of x [N][9][C]: the forward on a block's output, or
 * (backward) its adjoint on dE/d(block output). */
void balance(umas_context *ctx, cuda_state *s, const graph_view &g, float *x, bool backward) {
    const umas_balance &b = ctx->balance;
    if (b.count == 0)
        return;
    int C = ctx->weights.C;
    cu_balance_sums(backward ? g.N : g.energy_nodes, C, b.count, s->balance_channel, x,
                    s->balance_sums, s->stream);
    if (balance_on_host(ctx)) {
        double *host = s->host_sums.data();
        cudaMemcpyAsync(host, s->balance_sums, sizeof(double) * b.count, cudaMemcpyDeviceToHost,
                        s->stream);
        cudaStreamSynchronize(s->stream);
        umas_sum_over_processes(ctx, host, b.count);
        cudaMemcpyAsync(s->balance_sums, host, sizeof(double) * b.count, cudaMemcpyHostToDevice,
                        s->stream);
    }
    cu_balance_shift(backward ? g.energy_nodes : g.N, C, b.count, s->balance_channel,
                     s->balance_sums, backward ? nullptr : s->balance_target, ctx->num_atoms, x,
                     s->stream);
}

void block_forward(umas_context *ctx, cuda_state *s, int l, const graph_view &g, float *save) {
    const dev_block &b = s->blocks[l];
    const umas_weights *w = &ctx->weights;
    int N = g.N, C = w->C, H = w->H;
    size_t size = (size_t)N * 9 * C * sizeof(float);
    if (save)
        cudaMemcpyAsync(save, F(s->h), size, cudaMemcpyDeviceToDevice, s->stream);
    message_input(s, b, N, C, F(s->h), F(s->u));
    for (int first = 0; first < g.E; first += s->chunk) {
        edge_tape t = tape(s, w, l, first);
        int n = block_radial_chunk(s, w, l, g, first, t);
        edgewise_messages(s, b, C, H, n, first, F(s->u), t, nullptr, block_keeps(s, l));
        cu_rotate_back_scatter(n, I(s->tgt) + first, W(s, first), F(s->envelope) + first, C,
                               F(t.messages), U(s->node_sums), s->stream);
    }
    cu_fixed_add((size_t)N * 9 * C, U(s->node_sums), F(s->h), s->stream);
    if (save)
        cudaMemcpyAsync(save + (size_t)N * 9 * C, F(s->h), size, cudaMemcpyDeviceToDevice,
                        s->stream);
    cu_rms_norm_forward(N, C, b.norm_2.scale, b.norm_2.bias, F(s->h), F(s->u), s->stream);
    ffn_forward(s, b, N, C, H, F(s->u), F(s->ffn_out));
    cu_add((size_t)N * 9 * C, F(s->ffn_out), F(s->h), s->stream);
    balance(ctx, s, g, F(s->h), false);
}

void block_backward(umas_context *ctx, cuda_state *s, int l, const graph_view &g,
                    const float *save) {
    const dev_block &b = s->blocks[l];
    const umas_weights *w = &ctx->weights;
    int N = g.N, C = w->C, H = w->H;
    size_t size = (size_t)N * 9 * C;
    const float *h_in = save, *h_mid = save + size;
    balance(ctx, s, g, F(s->dh), true);
    cu_rms_norm_forward(N, C, b.norm_2.scale, b.norm_2.bias, h_mid, F(s->u), s->stream);
    ffn_backward(s, b, N, C, H, F(s->u), F(s->dh), F(s->d_tmp));
    cu_rms_norm_backward(N, C, b.norm_2.scale, h_mid, F(s->d_tmp), F(s->du), s->stream);
    cu_add(size, F(s->du), F(s->dh), s->stream);
    message_input(s, b, N, C, h_in, F(s->u));
    cudaMemsetAsync(F(s->du), 0, size * sizeof(float), s->stream);
    for (int first = 0; first < g.E; first += s->chunk) {
        edge_tape t = tape(s, w, l, first);
        bool kept = block_keeps(s, l);
        int n = kept ? chunk_size(s, g, first) : block_radial_chunk(s, w, l, g, first, t);
        edgewise_backward(s, b, C, H, n, first, F(s->u), F(s->dh), t, kept);
        block_radial_backward(s, w, l, n, first, t);
    }
    cu_fixed_add(size, U(s->node_sums), F(s->du), s->stream);
    cu_rms_norm_backward(N, C, b.norm_1.scale, h_in, F(s->du), F(s->d_tmp), s->stream);
    cu_add(size, F(s->d_tmp), F(s->dh), s->stream);
}

void head_forward(cuda_state *s, const umas_weights *w, int N, const float *u) {
    int H = w->H;
    float *h1 = F(s->head_hidden), *h2 = F(s->head_hidden) + (size_t)N * H;
    linear_forward(s, s->head[0], N, u, 9 * w->C, h1, H);
    cu_silu((size_t)N * H, h1, s->stream);
    linear_forward(s, s->head[1], N, h1, H, h2, H);
    cu_silu((size_t)N * H, h2, s->stream);
    linear_forward(s, s->head[2], N, h2, H, F(s->node_output), 1);
}

/* energy_head_backward: s->du = d(sum of energy nodes' outputs)/d u (l = 0 only) */
void head_backward(cuda_state *s, const umas_weights *w, int N, int energy_nodes) {
    int C = w->C, H = w->H;
    float *z1 = F(s->head_hidden), *z2 = F(s->head_hidden) + (size_t)N * H;
    float *a1 = F(s->ffn_hidden);
    linear_forward(s, s->head[0], N, F(s->u), 9 * C, z1, H);
    cudaMemcpyAsync(a1, z1, sizeof(float) * (size_t)N * H, cudaMemcpyDeviceToDevice, s->stream);
    cu_silu((size_t)N * H, a1, s->stream);
    linear_forward(s, s->head[1], N, a1, H, z2, H);
    cu_head_seed(N, H, energy_nodes, s->head_w3_dev, z2, z2, s->stream);
    linear_backward(s, s->head[1], N, z2, H, a1, H, H, 0);
    cu_silu_backward((size_t)N * H, z1, a1, a1, s->stream);
    cudaMemsetAsync(F(s->du), 0, sizeof(float) * (size_t)N * 9 * C, s->stream);
    linear_backward(s, s->head[0], N, a1, H, F(s->du), 9 * C, C, 0);
}

/* The forward pass on s->stream, no host synchronisation (unless tracing): node outputs into
 * s->node_output; with gradients the block inputs are saved for the backward. */
void enqueue_forward(umas_context *ctx, cuda_state *s, const graph_view &g, int gradients) {
    const umas_weights *w = &ctx->weights;
    int N = g.N, E = g.E, C = w->C, L = w->num_layers;
    cudaStream_t st = s->stream;
    size_t size = (size_t)N * 9 * C;
    cu_edge_geometry(E, static_cast<const double *>(s->vec.ptr), w->cutoff, F(s->distance),
                     F(s->envelope), static_cast<cu_wigner *>(s->wigner.ptr), st);
    cudaMemsetAsync(s->node_sums.ptr, 0, sizeof(unsigned long long) * size, st);
    cu_embed_nodes(N, C, I(s->z), s->sphere, s->system_embedding, F(s->h), st);
    record_trace(ctx, s, 0, F(s->h), N);
    for (int first = 0; first < E; first += s->chunk) {
        edge_tape t = tape(s, w, -1, first);
        int n = radial_chunk(s, w, s->degree, g, first, t);
        cu_edge_degree_forward(n, I(s->tgt) + first, W(s, first), F(s->envelope) + first, C,
                               radial_of(s, t), U(s->node_sums), st);
    }
    cu_fixed_add(size, U(s->node_sums), F(s->h), st);
    record_trace(ctx, s, 1, F(s->h), N);
    if (s->fast)
        unified_radial_forward(s, w, g);
    for (int l = 0; l < L; l++) {
        block_forward(ctx, s, l, g, gradients ? F(s->saved) + 2 * l * size : nullptr);
        record_trace(ctx, s, 2 + l, F(s->h), N);
    }
    if (gradients)
        cudaMemcpyAsync(F(s->saved) + 2 * L * size, F(s->h), size * sizeof(float),
                        cudaMemcpyDeviceToDevice, st);
    cu_rms_norm_forward(N, C, s->final_norm.scale, s->final_norm.bias, F(s->h), F(s->u), st);
    record_trace(ctx, s, 2 + L, F(s->u), N);
    head_forward(s, w, N, F(s->u));
}

/* The backward pass on s->stream after enqueue_forward: dE/dr per edge (double [E][3]) into
 * s->gradient. */
void enqueue_backward(umas_context *ctx, cuda_state *s, const graph_view &g) {
    const umas_weights *w = &ctx->weights;
    int N = g.N, E = g.E, C = w->C, L = w->num_layers;
    cudaStream_t st = s->stream;
    size_t size = (size_t)N * 9 * C;
    cudaMemsetAsync(s->d_wigner.ptr, 0, sizeof(cu_wigner) * (size_t)E, st);
    cudaMemsetAsync(s->d_envelope.ptr, 0, sizeof(float) * (size_t)E, st);
    cudaMemsetAsync(s->d_distance.ptr, 0, sizeof(float) * (size_t)E, st);
    head_backward(s, w, N, g.energy_nodes);
    cu_rms_norm_backward(N, C, s->final_norm.scale, F(s->saved) + 2 * L * size, F(s->du), F(s->dh),
                         st);
    for (int l = L - 1; l >= 0; l--)
        block_backward(ctx, s, l, g, F(s->saved) + 2 * l * size);
    if (s->fast)
        unified_radial_backward(s, w, g);
    for (int first = 0; first < E; first += s->chunk) {
        edge_tape t = tape(s, w, -1, first);
        int n = radial_chunk(s, w, s->degree, g, first, t);
        cu_edge_degree_backward(n, I(s->tgt) + first, W(s, first), F(s->envelope) + first, C,
                                radial_of(s, t), F(s->dh), F(s->d_radial), dW(s, first),
                                F(s->d_envelope) + first, st);
        radial_mlp_backward(s, s->degree, n, first, w->B, t);
    }
    cu_edge_gradient(E, static_cast<const double *>(s->vec.ptr), w->cutoff, dW(s, 0),
                     F(s->d_envelope), F(s->d_distance), w->energy_rmsd,
                     static_cast<double *>(s->gradient.ptr), st);
}

/* Node outputs from the device into ctx->node_output (waits for the stream). */
int download_node_output(umas_context *ctx, cuda_state *s, int N, const char *what,
                         umas_error *err) {
    s->host_output.resize(N > 0 ? N : 1);
    if (N > 0)
        cudaMemcpyAsync(s->host_output.data(), s->node_output.ptr, sizeof(float) * N,
                        cudaMemcpyDeviceToHost, s->stream);
    if (check(cudaStreamSynchronize(s->stream), what, err) || check(cudaGetLastError(), what, err))
        return -1;
    for (int n = 0; n < N; n++)
        ctx->node_output[n] = s->host_output[n];
    return 0;
}

int allocate_trace(umas_context *ctx, int N, umas_error *err) {
    if (!ctx->keep_trace)
        return 0;
    free(ctx->trace);
    ctx->trace = (double *)malloc(
        sizeof(double) * (size_t)(ctx->weights.num_layers + 3) * N * 9 * ctx->weights.C + 1);
    return ctx->trace ? 0 : umas_fail(err, "out of memory for the trace");
}

/* The model on the graph whose edges (s->vec, s->src, s->tgt) and atomic numbers (s->z) are on
 * the device, buffers reserved: node outputs to ctx->node_output; with gradients dE/dr per edge
 * (double [E][3]) in s->gradient, on the device. */
int run_model(umas_context *ctx, cuda_state *s, const graph_view &g, int gradients,
              umas_result *result, umas_error *err) {
    if (allocate_trace(ctx, g.N, err))
        return -1;
    double start = seconds_now();
    enqueue_forward(ctx, s, g, gradients);
    if (download_node_output(ctx, s, g.N, "the forward pass", err))
        return -1;
    double middle = seconds_now();
    result->seconds_forward = middle - start;
    result->seconds_backward = 0;
    if (!gradients)
        return 0;
    enqueue_backward(ctx, s, g);
    if (check(cudaStreamSynchronize(s->stream), "the backward pass", err) ||
        check(cudaGetLastError(), "the backward pass", err))
        return -1;
    result->seconds_backward = seconds_now() - middle;
    return 0;
}

int cuda_compute(umas_context *ctx, const umas_graph *graph, umas_result *result, int gradients,
                 umas_error *err) {
    cuda_state *s = static_cast<cuda_state *>(ctx->backend_state);
    graph_view g = {graph->num_nodes, graph->num_edges, graph->num_energy_nodes};
    cudaSetDevice(s->device);
    if (reserve_all(ctx, g, err))
        return -1;
    cudaStream_t st = s->stream;
    if (g.E > 0) {
        cudaMemcpyAsync(s->vec.ptr, graph->edge_vector, sizeof(double) * 3 * g.E,
                        cudaMemcpyHostToDevice, st);
        cudaMemcpyAsync(s->src.ptr, graph->edge_source, sizeof(int) * g.E, cudaMemcpyHostToDevice,
                        st);
        cudaMemcpyAsync(s->tgt.ptr, graph->edge_target, sizeof(int) * g.E, cudaMemcpyHostToDevice,
                        st);
    }
    if (g.N > 0)
        cudaMemcpyAsync(s->z.ptr, graph->atomic_numbers, sizeof(int) * g.N, cudaMemcpyHostToDevice,
                        st);
    if (run_model(ctx, s, g, gradients, result, err))
        return -1;
    if (gradients && g.E > 0 &&
        check(cudaMemcpy(ctx->edge_gradient, s->gradient.ptr, sizeof(double) * 3 * g.E,
                         cudaMemcpyDeviceToHost),
              "the edge gradients", err))
        return -1;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Neighbour-list route: the list lives on the device from one rebuild to the next; per step
 * positions go up, the kept edges are selected on the device, forces and virials come down.
 * ------------------------------------------------------------------------------------------- */

/* umas_fast_gpu: the number of edges a step runs with, E rounded up to a multiple of a power of
 * two of about E / 64 (at least 256), so that one captured graph serves the steps of a
 * neighbour list while the count within the cutoff wanders. The padding edges are inert
 * (cu_pad_edges): at most 1/64 + 256 / E more edge work. */
int padded_edges(int E) {
    if (E <= 0)
        return 0;
    long long grain = 256;
    while (grain * 128 <= E)
        grain *= 2;
    return (int)((E + grain - 1) / grain * grain);
}

int cuda_set_neighbors(umas_context *ctx, umas_error *err) {
    cuda_state *s = static_cast<cuda_state *>(ctx->backend_state);
    const umas_neighbor_state *nb = &ctx->neighbors;
    size_t N = (size_t)nb->num_nodes;
    size_t E = (size_t)(s->fused ? padded_edges(nb->num_edges) : nb->num_edges);
    size_t listed = (size_t)nb->num_edges;
    int a = nb->num_nodes, e = nb->num_edges;
    cudaSetDevice(s->device);
    struct item {
        buffer *b;
        size_t bytes;
        const char *what;
    } items[] = {
        {&s->list_source, listed * sizeof(int), "the neighbour list"},
        {&s->list_target, listed * sizeof(int), "the neighbour list"},
        {&s->list_image, 3 * listed * sizeof(int), "the neighbour list"},
        {&s->list_vector, 3 * listed * sizeof(double), "the neighbour list"},
        {&s->keep, listed * sizeof(int), "the neighbour list"},
        {&s->slot, listed * sizeof(int), "the neighbour list"},
        {&s->kept, listed * sizeof(int), "the neighbour list"},
        {&s->select_scratch, cu_select_scratch_bytes(e), "the neighbour list"},
        {&s->flags, 2 * sizeof(int), "the neighbour list"},
        {&s->positions, 3 * N * sizeof(double), "positions"},
        {&s->cell, 9 * sizeof(double), "positions"},
        {&s->forces, 3 * N * sizeof(double), "forces"},
        {&s->virial, 6 * sizeof(double), "forces"},
        /* the kept edges go straight into the graph's edge arrays (with room for padding) */
        {&s->vec, 3 * E * sizeof(double), "edge vectors"},
        {&s->src, E * sizeof(int), "edges"},
        {&s->tgt, E * sizeof(int), "edges"},
    };
    for (const item &it : items)
        if (reserve(s, *it.b, it.bytes, it.what, a, e, err))
            return -1;
    if (listed > 0) {
        cudaMemcpy(s->list_source.ptr, nb->source, listed * sizeof(int), cudaMemcpyHostToDevice);
        cudaMemcpy(s->list_target.ptr, nb->target, listed * sizeof(int), cudaMemcpyHostToDevice);
        cudaMemcpy(s->list_image.ptr, nb->image, 3 * listed * sizeof(int), cudaMemcpyHostToDevice);
    }
    return check(cudaGetLastError(), "uploading the neighbour list", err);
}

/* Forces [N][3], the virial and (when node_virial is not null) per-atom virials from
 * s->gradient, on the device. */
void enqueue_forces(cuda_state *s, const graph_view &g, double *node_virial) {
    cu_scatter_edge_gradients(
        g.N, g.E, I(s->src), I(s->tgt), static_cast<const double *>(s->vec.ptr),
        static_cast<const double *>(s->gradient.ptr), static_cast<double *>(s->forces.ptr),
        static_cast<double *>(s->virial.ptr), node_virial, s->stream);
}

void enqueue_step(umas_context *ctx, cuda_state *s, const graph_view &g, double *node_virial) {
    enqueue_forward(ctx, s, g, 1);
    enqueue_backward(ctx, s, g);
    enqueue_forces(s, g, node_virial);
}

/* umas_fast_gpu: the step's device work (forward, backward, forces) on s->stream as a CUDA
 * graph: captured the first time a shape is met (atoms, padded edges, buffers), replayed after
 * that; the last four shapes are kept (the padded edge count can flip between neighbours). If
 * the driver refuses a capture, the step runs directly and graphs stay off. */
int launch_step_graph(umas_context *ctx, cuda_state *s, const graph_view &g, double *node_virial,
                      umas_error *err) {
    cudaStream_t st = s->stream;
    for (const step_graph &sg : s->graphs)
        if (sg.N == g.N && sg.E == g.E && sg.energy_nodes == g.energy_nodes &&
            sg.node_virial == (node_virial != nullptr) && sg.kept_blocks == s->kept_blocks &&
            sg.chunk == s->chunk && sg.keep_radial == s->keep_radial &&
            sg.generation == s->generation)
            return check(cudaGraphLaunch(sg.exec, st), "launching the step graph", err);
    step_graph sg;
    sg.N = g.N;
    sg.E = g.E;
    sg.energy_nodes = g.energy_nodes;
    sg.node_virial = node_virial != nullptr;
    sg.kept_blocks = s->kept_blocks;
    sg.chunk = s->chunk;
    sg.keep_radial = s->keep_radial;
    sg.generation = s->generation;
    cudaGraph_t graph = nullptr;
    bool captured = cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal) == cudaSuccess;
    if (captured) {
        enqueue_step(ctx, s, g, node_virial);
        captured = cudaStreamEndCapture(st, &graph) == cudaSuccess && graph &&
                   cudaGraphInstantiate(&sg.exec, graph, 0) == cudaSuccess;
    }
    if (graph)
        cudaGraphDestroy(graph);
    if (!captured) {
        cudaGetLastError();
        s->graphs_failed = true;
        enqueue_step(ctx, s, g, node_virial);
        return check(cudaGetLastError(), "the step", err);
    }
    if (s->graphs.size() == 4) {
        cudaGraphExecDestroy(s->graphs.front().exec);
        s->graphs.erase(s->graphs.begin());
    }
    s->graphs.push_back(sg);
    return check(cudaGraphLaunch(sg.exec, st), "launching the step graph", err);
}

int cuda_compute_positions(umas_context *ctx, const double *positions, const double cell[9],
                           umas_result *result, int gradients, umas_error *err) {
    cuda_state *s = static_cast<cuda_state *>(ctx->backend_state);
    umas_neighbor_state *nb = &ctx->neighbors;
    int N = nb->num_nodes, listed = nb->num_edges;
    cudaSetDevice(s->device);
    cudaStream_t st = s->stream;
    if (N > 0)
        cudaMemcpyAsync(s->positions.ptr, positions, sizeof(double) * 3 * N, cudaMemcpyHostToDevice,
                        st);
    if (nb->has_images)
        cudaMemcpyAsync(s->cell.ptr, cell, sizeof(double) * 9, cudaMemcpyHostToDevice, st);
    int *flags = I(s->flags); /* [0] kept edges, [1] first kept edge of length 0 */
    const int no_edge[2] = {0, listed};
    cudaMemcpyAsync(flags, no_edge, sizeof no_edge, cudaMemcpyHostToDevice, st);
    const double *device_cell = static_cast<const double *>(s->cell.ptr);
    cu_neighbor_vectors(listed, static_cast<const double *>(s->positions.ptr), I(s->list_source),
                        I(s->list_target), nb->has_images ? I(s->list_image) : nullptr, device_cell,
                        ctx->weights.cutoff, static_cast<double *>(s->list_vector.ptr), I(s->keep),
                        flags + 1, st);
    cu_select_edges(listed, I(s->keep), I(s->slot), s->select_scratch.ptr, s->select_scratch.bytes,
                    I(s->list_source), I(s->list_target),
                    static_cast<const double *>(s->list_vector.ptr), I(s->kept), I(s->src),
                    I(s->tgt), static_cast<double *>(s->vec.ptr), flags, st);
    int host_flags[2];
    cudaMemcpyAsync(host_flags, flags, sizeof host_flags, cudaMemcpyDeviceToHost, st);
    if (check(cudaStreamSynchronize(st), "selecting the edges within the cutoff", err))
        return -1;
    if (host_flags[1] < listed) {
        int e = host_flags[1];
        return umas_fail(err, "edge %d: atoms %d and %d are on top of each other (distance 0)", e,
                         nb->source[e], nb->target[e]);
    }
    /* umas_fast_gpu replays a captured graph of the step; its edge count is padded (inert
     * edges) so that the graph serves many steps */
    int kept = host_flags[0];
    bool graphed = s->fused && gradients && !ctx->keep_trace && !s->graphs_failed &&
                   !balance_on_host(ctx) && N > 0 && kept > 0;
    graph_view g = {N, graphed ? padded_edges(kept) : kept, nb->num_energy_nodes};
    if (g.E > kept)
        cu_pad_edges(kept, g.E - kept, N, 2.0 * ctx->weights.cutoff, I(s->src), I(s->tgt),
                     static_cast<double *>(s->vec.ptr), st);
    if (reserve_all(ctx, g, err))
        return -1;
    if (gradients && result->node_virial &&
        reserve(s, s->node_virial, 6 * (size_t)N * sizeof(double), "per-atom virials", N, g.E, err))
        return -1;
    double *node_virial = result->node_virial ? static_cast<double *>(s->node_virial.ptr) : nullptr;
    if (N > 0)
        cudaMemcpyAsync(s->z.ptr, nb->atomic_numbers, sizeof(int) * N, cudaMemcpyHostToDevice, st);
    double start = seconds_now();
    if (graphed) {
        if (launch_step_graph(ctx, s, g, node_virial, err) ||
            download_node_output(ctx, s, N, "the step", err))
            return -1;
        result->seconds_forward = seconds_now() - start; /* one launch: all counted here */
        result->seconds_backward = 0;
        start = seconds_now();
    } else {
        if (run_model(ctx, s, g, gradients, result, err))
            return -1;
        if (!gradients)
            return 0;
        start = seconds_now();
        enqueue_forces(s, g, node_virial);
    }
    double *forces = static_cast<double *>(s->forces.ptr);
    if (result->forces && N > 0)
        cudaMemcpyAsync(result->forces, forces, sizeof(double) * 3 * N, cudaMemcpyDeviceToHost, st);
    if (node_virial && N > 0)
        cudaMemcpyAsync(result->node_virial, node_virial, sizeof(double) * 6 * N,
                        cudaMemcpyDeviceToHost, st);
    cudaMemcpyAsync(result->virial, s->virial.ptr, sizeof(double) * 6, cudaMemcpyDeviceToHost, st);
    if (result->edge_gradient && kept > 0) { /* only when asked for: O(edges) */
        cudaMemcpyAsync(nb->kept, s->kept.ptr, sizeof(int) * kept, cudaMemcpyDeviceToHost, st);
        cudaMemcpyAsync(ctx->edge_gradient, s->gradient.ptr, sizeof(double) * 3 * kept,
                        cudaMemcpyDeviceToHost, st);
    }
    if (check(cudaStreamSynchronize(st), "the forces", err) ||
        check(cudaGetLastError(), "the forces", err))
        return -1;
    if (result->edge_gradient)
        umas_list_edge_gradient(ctx, kept, result->edge_gradient);
    result->seconds_backward += seconds_now() - start;
    return 0;
}

} // namespace

extern "C" const umas_backend umas_backend_general_cuda = {
    "general",    "cuda",     cuda_create,        cuda_compute,
    cuda_destroy, cuda_bytes, cuda_set_neighbors, cuda_compute_positions,
};

extern "C" const umas_backend umas_backend_fast_cuda = {
    "umas_fast",  "cuda",     cuda_create_fast,   cuda_compute,
    cuda_destroy, cuda_bytes, cuda_set_neighbors, cuda_compute_positions,
};

extern "C" const umas_backend umas_backend_fast_gpu_cuda = {
    "umas_fast_gpu", "cuda",     cuda_create_fast_gpu, cuda_compute,
    cuda_destroy,    cuda_bytes, cuda_set_neighbors,   cuda_compute_positions,
};

extern "C" int umas_cuda_device_count(void) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return count;
}

extern "C" size_t umas_cuda_memory_in_use(void) {
    size_t free_bytes = 0, total = 0;
    if (cudaMemGetInfo(&free_bytes, &total) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return total - free_bytes;
}
