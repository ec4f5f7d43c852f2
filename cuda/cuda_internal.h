/* cuda_internal.h - the GPU backends' state (cuda_state: weights, buffers, tapes, graphs), their
 * buffer and layer types, and the functions the files of cuda/ share, each declared under the
 * file that defines it. Internal to cuda/.
 *
 *   backend_cuda.cu   create, destroy, compute and the neighbour route: the backend tables
 *   weights_cuda.cu   weight upload and per-precision preparation (TF32 splits, int8 slices)
 *   gemm_dispatch.cu  the precision policy: which GEMM (cuBLAS, cuBLASLt, 3xtf32, ozaki) runs
 *   presliced.h       operands that producers write already sliced for the ozaki GEMM,
 *                     held by a scope object
 *   memory_plan.cu    buffer sizes, tapes and the keep/recompute search (reserve_all)
 *   model_cuda.cu     the model's composition, forward and backward (mirrors backend_general.c)
 *   processes.cu      the balancing's sums and the halo exchange with the other processes
 *   step_graph.cu     umas_fast_gpu's padded edge count and the CUDA graph of the step
 *   gemm/             the tensor-core GEMM kernels (gemm_tc.h: 3xtf32, gemm_i8.h: ozaki)
 */
#ifndef UMAS_CUDA_INTERNAL_H
#define UMAS_CUDA_INTERNAL_H

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
#include <initializer_list>
#include <vector>

namespace umas_cuda {

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
inline buffer *tape_buffer(edge_tape &t, int i) {
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

class presliced_scope;

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
    /* ozaki, umas_fast_gpu: the innermost open presliced_scope (presliced.h), null if none: the
     * operands that producers wrote sliced for the products that follow them */
    presliced_scope *presliced = nullptr;
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
    /* bumped whenever a buffer moves: a captured graph holds buffer addresses */
    unsigned long generation = 0;

    /* umas_fast_gpu, neighbour route: the step's device work as CUDA graphs (step_graph) */
    std::vector<step_graph> graphs;
    bool graphs_failed = false; /* capture refused once: run without graphs from then on */
    void *blas_workspace = nullptr;

    std::vector<float> host_output;   /* [N] */
    std::vector<float> host_features; /* trace */
    /* halo exchange through the host (processes.cu): [N][9][C] as doubles, and fp32 rows */
    std::vector<double> host_halo;
    std::vector<float> host_halo_rows;
};

inline float *F(buffer &b) {
    return static_cast<float *>(b.ptr);
}
inline int *I(buffer &b) {
    return static_cast<int *>(b.ptr);
}
inline unsigned long long *U(buffer &b) {
    return static_cast<unsigned long long *>(b.ptr);
}

/* The sizes of the graph a step runs on (E: with umas_fast_gpu's padding edges). */
struct graph_view {
    int N, E, energy_nodes;
};

inline double seconds_now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

inline int check(cudaError_t e, const char *what, umas_error *err) {
    if (e == cudaSuccess)
        return 0;
    return umas_fail(err, "CUDA error in %s: %s", what, cudaGetErrorString(e));
}

/* memory_plan.cu: the table of every device buffer (buffer_table), which call reserves it */
enum buffer_use {
    EDGE_INPUT,   /* the graph's edges: each call's graph, or cuda_set_neighbors (padded) */
    GRAPH,        /* the rest of a graph's buffers: reserve_all */
    TAPE,         /* umas_fast_gpu's tapes in use: reserve_all */
    UNUSED_TAPE,  /* tapes of blocks that recompute theirs: released */
    LIST,         /* the neighbour-list route: cuda_set_neighbors */
    NODE_VIRIALS, /* per-atom virials, when a step asks for them */
};
/* What the buffers are sized for: atoms, edges, edges per chunk, and the neighbour list's
 * pairs. */
struct buffer_sizes {
    size_t atoms, edges, chunk, listed;
};
struct buffer_entry {
    buffer *b;
    buffer_use use;
    size_t bytes; /* for the sizes the table was made for */
    const char *what;
};
std::vector<buffer_entry> buffer_table(cuda_state *s, const umas_weights *w, const buffer_sizes &z);
int reserve_for(cuda_state *s, const umas_weights *w, std::initializer_list<buffer_use> uses,
                const buffer_sizes &z, umas_error *err);
void release_all(cuda_state *s, const umas_weights *w);
size_t buffer_bytes(cuda_state *s, const umas_weights *w);
bool block_keeps(const cuda_state *s, int l);
bool tape_holds_all_edges(const cuda_state *s, int i);
void tape_sizes(const cuda_state *s, const umas_weights *w, size_t l, size_t floats[]);
size_t tape_floats_per_edge(const cuda_state *s, const umas_weights *w, size_t l);
size_t scratch_floats_per_edge(const cuda_state *s, const umas_weights *w);
cuda_state::forced_tape forced_tape_of(const char *value, int L);
int reserve_all(umas_context *ctx, const graph_view &g, umas_error *err);

/* weights_cuda.cu */
float *upload(cuda_state *s, const double *host, size_t n);
dev_linear output_rows(const dev_linear &lin, int first, int count);
dev_linear upload_linear(cuda_state *s, const umas_linear &l);
dev_radial upload_radial(cuda_state *s, const umas_radial_mlp &m);
dev_rms_norm upload_rms(cuda_state *s, const umas_rms_norm &n, int C);
void upload_so3_linear(cuda_state *s, const double *weight, const double *bias, int out, int in,
                       dev_linear (&lin)[3]);
int upload_balance(umas_context *ctx, cuda_state *s, umas_error *err);

/* gemm_dispatch.cu */
void gemm(cuda_state *s, cublasOperation_t op_a, int m, int n, int k, const float *a, int lda,
          const float *b, int ldb, float beta, float *c, int ldc);
bool ozaki_forward_takes(const cuda_state *s, const dev_linear &lin, int rows, const i8_sliced &x);
bool ozaki_backward_takes(const cuda_state *s, const dev_linear &lin, int cols, int rows,
                          const i8_sliced &x);
bool so2_products_take(const cuda_state *s, const dev_linear &m0, const dev_linear &block_m1,
                       const dev_linear &block_m2, int m0_cols, int n, const i8_sliced (&parts)[3]);
bool producers_write_sliced(const cuda_state *s, int n);
size_t fused_operand_bytes(size_t n, int C, int H);
void linear_forward(cuda_state *s, const dev_linear &lin, int rows, const float *x, int ldx,
                    float *y, int ldy);
void linear_forward_pair(cuda_state *s, const dev_linear &a, float *ya, int ldya,
                         const dev_linear &b, float *yb, int ldyb, int rows, const float *x,
                         int ldx);
void linear_backward(cuda_state *s, const dev_linear &lin, int rows, const float *dy, int lddy,
                     float *dx, int lddx, int cols, int accumulate);
void so3_linear_forward(cuda_state *s, const dev_linear (&lin)[3], int N, const float *x, float *y);
void so3_linear_backward(cuda_state *s, const dev_linear (&lin)[3], int N, const float *dy,
                         float *dx, int accumulate);

/* processes.cu: the exchanges with the other processes sharing the system, around a block */
/* Whether the balancing's sums go through the host (several processes share the system). */
bool balance_on_host(const umas_context *ctx);
/* Whether the step waits for the other processes (balancing sums or halo exchange through the
 * host): then it cannot be one CUDA graph. */
bool step_waits_for_processes(const umas_context *ctx);
/* Charge/spin balancing (core/balance.h) of x [N][9][C]: the forward on a block's output, or
 * (backward) its adjoint on dE/d(block output). */
void balance_block(umas_context *ctx, cuda_state *s, const graph_view &g, float *x, bool backward);
/* Halo exchange (core/halo.h): ghost rows of the features x [N][9][C] from their atoms before a
 * block; after its backward the ghost rows of the adjoints dx added into their atoms', zeroed. */
void halo_refresh(umas_context *ctx, cuda_state *s, const graph_view &g, float *x);
void halo_sum_into_owners(umas_context *ctx, cuda_state *s, const graph_view &g, float *dx);

/* model_cuda.cu */
void enqueue_forward(umas_context *ctx, cuda_state *s, const graph_view &g, int gradients);
void enqueue_backward(umas_context *ctx, cuda_state *s, const graph_view &g);
int download_node_output(umas_context *ctx, cuda_state *s, int N, const char *what,
                         umas_error *err);
int run_model(umas_context *ctx, cuda_state *s, const graph_view &g, int gradients,
              umas_result *result, umas_error *err);

/* step_graph.cu */
int padded_edges(int E);
void enqueue_forces(cuda_state *s, const graph_view &g, double *node_virial);
int launch_step_graph(umas_context *ctx, cuda_state *s, const graph_view &g, double *node_virial,
                      umas_error *err);

} // namespace umas_cuda

#endif
