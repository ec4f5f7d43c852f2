/* model_cuda.cu - the model on the GPU, as core/backend_general.c composes it on the CPU (read that
 * file first): radial MLPs, a block's messages over chunks of edges with their tapes, the FFN,
 * the energy head, and the forward and backward passes of a step (the balancing and the halo
 * exchange around each block: processes.cu). */
#include "cuda_internal.h"
#include "presliced.h"

namespace umas_cuda {

/* The tape of block l (l = -1: the edge-degree MLP) for the chunk from edge `first` on: its
 * kept tape seen from that edge, or tapes[0] (see cuda_state::kept_blocks). */
static edge_tape tape(cuda_state *s, const umas_weights *w, int l, int first) {
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
static float *radial_of(cuda_state *s, edge_tape &t) {
    return F(s->keep_radial ? t.radial : s->tapes[0].radial);
}

/* A chunk of edges [first, first + n) of the graph and its rows of the per-edge arrays on the
 * device (the CPU's umas_edge_chunk). The adjoints accumulate over the blocks. */
struct edge_chunk {
    int first, n;
    const int *source, *target;       /* [n] sender j, receiver i */
    const cu_wigner *wigner;          /* [n] */
    const float *distance, *envelope; /* [n] */
    cu_wigner *d_wigner;              /* [n] dE/dW */
    float *d_envelope, *d_distance;   /* [n] */
};

/* The chunk of s->chunk edges (fewer at the end) that starts at edge `first` of g. */
static edge_chunk chunk_at(cuda_state *s, const graph_view &g, int first) {
    edge_chunk c;
    c.first = first;
    c.n = g.E - first < s->chunk ? g.E - first : s->chunk;
    c.source = I(s->src) + first;
    c.target = I(s->tgt) + first;
    c.wigner = static_cast<const cu_wigner *>(s->wigner.ptr) + first;
    c.distance = F(s->distance) + first;
    c.envelope = F(s->envelope) + first;
    c.d_wigner = static_cast<cu_wigner *>(s->d_wigner.ptr) + first;
    c.d_envelope = F(s->d_envelope) + first;
    c.d_distance = F(s->d_distance) + first;
    return c;
}

/* umas_fast_gpu, ozaki: SiLU(LayerNorm) of x [n][Ce] (row stride ld) written sliced into
 * s->sliced as the operand of the product `next` on s->hidden (cu_layer_norm_silu_sliced), when
 * that product takes the int8 kernel; false (nothing done) otherwise. */
static bool norm_silu_sliced(cuda_state *s, presliced_scope &scope, const dev_linear &next,
                             const dev_layer_norm &norm, int n, const float *x, int ld) {
    if (!producers_write_sliced(s, n))
        return false;
    const int K[1] = {next.in};
    i8_sliced part[1];
    if (!operands_sliced_in(s->sliced, n, K, part) || !ozaki_forward_takes(s, next, n, part[0]) ||
        !cu_layer_norm_silu_sliced(n, next.in, x, ld, norm.weight, norm.bias, &part[0], s->stream))
        return false;
    scope.hold({(const float *)F(s->hidden)}, n, K, {next.in}, part, s->sliced);
    return true;
}

/* The radial MLP's SiLU(LayerNorm) of x [n][Ce] (row stride ld) into s->hidden, then the
 * product `next` on it into y [n][next.out]. */
static void norm_silu_then(cuda_state *s, const dev_layer_norm &norm, const dev_linear &next, int n,
                           const float *x, int ld, float *y) {
    presliced_scope scope(s);
    if (!norm_silu_sliced(s, scope, next, norm, n, x, ld))
        cu_layer_norm_silu(n, next.in, x, ld, norm.weight, norm.bias, F(s->hidden), s->stream);
    linear_forward(s, next, n, F(s->hidden), next.in, y, next.out);
}

/* The radial MLP's last layer: t.pre_norm2 [n][Ce] -> radial_of(t). */
static void radial_mlp_last(cuda_state *s, const dev_radial &m, int n, edge_tape &t) {
    norm_silu_then(s, m.norm2, m.fc3, n, F(t.pre_norm2), m.fc1.out, radial_of(s, t));
}

/* The radial MLP after its first layer: pre_norm1 [n][Ce] (row stride ld) -> radial_of(t). */
static void radial_mlp_rest(cuda_state *s, const dev_radial &m, int n, const float *pre_norm1,
                            int ld, edge_tape &t) {
    norm_silu_then(s, m.norm1, m.fc2, n, pre_norm1, ld, F(t.pre_norm2));
    radial_mlp_last(s, m, n, t);
}

static void radial_mlp_forward(cuda_state *s, const dev_radial &m, int n, edge_tape &t) {
    linear_forward(s, m.fc1, n, F(s->radial_input), m.fc1.in, F(t.pre_norm1), m.fc1.out);
    radial_mlp_rest(s, m, n, F(t.pre_norm1), m.fc1.out, t);
}

/* umas_fast_gpu, ozaki: the second SiLU(LayerNorm)'s adjoint written sliced into s->sliced as
 * the operand of fc2's backward (the product on d_hidden), when that takes the int8 kernel;
 * d_hidden (the adjoint of its output) is only read. False (nothing done) otherwise. */
static bool norm_silu_backward_sliced(cuda_state *s, presliced_scope &scope, const dev_radial &m,
                                      int n, edge_tape &t, const float *d_hidden) {
    if (!producers_write_sliced(s, n))
        return false;
    const int ce = m.fc1.out, K[1] = {m.fc2.out};
    i8_sliced part[1];
    if (!operands_sliced_in(s->sliced, n, K, part) ||
        !ozaki_backward_takes(s, m.fc2, m.fc2.in, n, part[0]) ||
        !cu_layer_norm_silu_backward_sliced(n, ce, F(t.pre_norm2), ce, m.norm2.weight, m.norm2.bias,
                                            d_hidden, &part[0], s->stream))
        return false;
    scope.hold({d_hidden}, n, K, {ce}, part, s->sliced);
    return true;
}

/* d_radial -> dE/d(first layer output) into d_first [n][Ce] (row stride ld, as pre_norm1, the
 * forward's input; d_first may be pre_norm1 itself). d_radial may exist only sliced, held by the
 * caller's scope (producer_backward). */
static void radial_mlp_rest_backward(cuda_state *s, const dev_radial &m, int n,
                                     const float *pre_norm1, float *d_first, int ld, edge_tape &t) {
    int ce = m.fc1.out;
    float *d_hidden = F(s->radial_work), *scratch = F(s->radial_work) + (size_t)n * ce;
    linear_backward(s, m.fc3, n, F(s->d_radial), m.fc3.out, d_hidden, ce, ce, 0);
    {
        presliced_scope scope(s);
        if (!norm_silu_backward_sliced(s, scope, m, n, t, d_hidden))
            cu_layer_norm_silu_backward(n, ce, F(t.pre_norm2), ce, m.norm2.weight, m.norm2.bias,
                                        d_hidden, d_hidden, s->stream);
        linear_backward(s, m.fc2, n, d_hidden, ce, scratch, ce, ce, 0);
    }
    cu_layer_norm_silu_backward(n, ce, pre_norm1, ld, m.norm1.weight, m.norm1.bias, scratch,
                                d_first, s->stream);
}

/* d_radial -> d_gauss [n][B] -> d_distance (umas_radial_mlp_backward + gaussian backward) */
static void radial_mlp_backward(cuda_state *s, const dev_radial &m, const edge_chunk &c, int B,
                                edge_tape &t) {
    float *d_first = F(s->radial_work) + (size_t)c.n * m.fc1.out;
    radial_mlp_rest_backward(s, m, c.n, F(t.pre_norm1), d_first, m.fc1.out, t);
    linear_backward(s, m.fc1, c.n, d_first, m.fc1.out, F(s->d_gauss), B, B, 0);
    cu_gaussian_backward(c.n, c.distance, s->offsets, s->coeff, B, F(s->d_gauss), B, c.d_distance,
                         s->stream);
}

/* edges [first, first + n) and their radial MLP output in radial_of(t) */
static void radial_chunk(cuda_state *s, const umas_weights *w, const dev_radial &m,
                         const edge_chunk &c, edge_tape &t) {
    cu_radial_input(c.n, c.source, c.target, I(s->z), c.distance, s->offsets, s->coeff, w->B,
                    s->source_embedding, s->target_embedding, w->Ce, F(s->radial_input), s->stream);
    radial_mlp_forward(s, m, c.n, t);
}

/* umas_fast: block l's slice of the unified first radial layer's output (s->first, row stride
 * ld) for the edges from `first` on: the radial MLP's LayerNorm reads it there, and its adjoint
 * goes back into the same place */
static int first_layer_ld(const umas_weights *w) {
    return w->num_layers * w->Ce;
}
static float *first_layer_slice(cuda_state *s, const umas_weights *w, int l, int first) {
    return F(s->first) + (size_t)first * first_layer_ld(w) + (size_t)l * w->Ce;
}

/* Block l's radial MLP output for edges [first, first + n) into its tape t; umas_fast from its
 * slice of the unified first layer */
static void block_radial_chunk(cuda_state *s, const umas_weights *w, int l, const edge_chunk &c,
                               edge_tape &t) {
    const dev_radial &m = s->blocks[l].radial;
    if (!s->fast)
        radial_chunk(s, w, m, c, t);
    else
        radial_mlp_rest(s, m, c.n, first_layer_slice(s, w, l, c.first), first_layer_ld(w), t);
}

/* umas_fast: dE/d(first layer output) of block l into its slice of s->first */
static void block_radial_backward(cuda_state *s, const umas_weights *w, int l, const edge_chunk &c,
                                  edge_tape &t) {
    const dev_radial &m = s->blocks[l].radial;
    if (!s->fast) {
        radial_mlp_backward(s, m, c, w->B, t);
        return;
    }
    float *slice = first_layer_slice(s, w, l, c.first);
    radial_mlp_rest_backward(s, m, c.n, slice, slice, first_layer_ld(w), t);
}

/* umas_fast: every block's first radial layer for all edges, one GEMM per chunk */
static void unified_radial_forward(cuda_state *s, const umas_weights *w, const graph_view &g) {
    size_t ld = (size_t)w->num_layers * w->Ce;
    for (int first = 0; first < g.E; first += s->chunk) {
        const edge_chunk c = chunk_at(s, g, first);
        cu_radial_input(c.n, c.source, c.target, I(s->z), c.distance, s->offsets, s->coeff, w->B,
                        s->source_embedding, s->target_embedding, w->Ce, F(s->radial_input),
                        s->stream);
        linear_forward(s, s->unified_fc1, c.n, F(s->radial_input), w->F, F(s->first) + first * ld,
                       (int)ld);
    }
}

/* umas_fast: the adjoint of all blocks' first layers in one GEMM per chunk, to the Gaussians
 * and on to the distances */
static void unified_radial_backward(cuda_state *s, const umas_weights *w, const graph_view &g) {
    size_t ld = (size_t)w->num_layers * w->Ce;
    for (int first = 0; first < g.E; first += s->chunk) {
        const edge_chunk c = chunk_at(s, g, first);
        linear_backward(s, s->unified_fc1, c.n, F(s->first) + first * ld, (int)ld, F(s->d_gauss),
                        w->B, w->B, 0);
        cu_gaussian_backward(c.n, c.distance, s->offsets, s->coeff, w->B, F(s->d_gauss), w->B,
                             c.d_distance, s->stream);
    }
}

/* One m > 0 SO(2) convolution: out_r = W1 x_r - W2 x_i, out_i = W2 x_r + W1 x_i (so2_m_forward).
 * general: two GEMMs and a combine; umas_fast: one GEMM with the block form, as x_i follows x_r
 * and out_i follows out_r in every call (the M-order layout). */
static void so2_forward(cuda_state *s, const dev_linear &Wl, const dev_linear &block, int n,
                        const float *x_r, const float *x_i, int ldx, float *out_r, float *out_i,
                        int ldo) {
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
static bool conv1_sliced(cuda_state *s, presliced_scope &scope, const dev_block &b, int C,
                         const edge_chunk &c, const float *x, edge_tape &t, const float *y) {
    if (!producers_write_sliced(s, c.n))
        return false;
    const int K[3] = {6 * C, 8 * C, 4 * C};
    i8_sliced part[3];
    if (!operands_sliced_in(s->rotated, c.n, K, part) ||
        !ozaki_forward_takes(s, b.conv1_m0_gates, c.n, part[0]) ||
        !ozaki_forward_takes(s, b.conv1_m0_rows, c.n, part[0]) ||
        !ozaki_forward_takes(s, b.block_conv1_m1, c.n, part[1]) ||
        !ozaki_forward_takes(s, b.block_conv1_m2, c.n, part[2]) ||
        !cu_gather_rotate_sliced(c.n, c.source, c.target, c.wigner, C, x, radial_of(s, t), part,
                                 s->stream))
        return false;
    scope.hold({y, y + 6 * C, y + 14 * C}, c.n, K, {18 * C, 18 * C, 18 * C}, part, s->rotated);
    return true;
}

/* umas_fast_gpu, ozaki: the gate writes conv2's operands sliced (cu_gate_forward_sliced) into
 * s->sliced: g (the products on g, g + 3H, g + 7H) never exists in fp32, nor is o gated in
 * place. Only when all three conv2 products take the int8 kernel; false (nothing done)
 * otherwise. */
static bool gate_sliced(cuda_state *s, presliced_scope &scope, const dev_block &b, int H, int n,
                        edge_tape &t, const float *o, const float *g) {
    if (!producers_write_sliced(s, n))
        return false;
    const int K[3] = {3 * H, 4 * H, 2 * H};
    i8_sliced part[3];
    if (!operands_sliced_in(s->sliced, n, K, part) ||
        !so2_products_take(s, b.conv2_m0, b.block_conv2_m1, b.block_conv2_m2, 0, n, part) ||
        !cu_gate_forward_sliced(n, H, F(t.gates), o, part, s->stream))
        return false;
    scope.hold({g, g + 3 * H, g + 7 * H}, n, K, {9 * H, 9 * H, 9 * H}, part, s->sliced);
    return true;
}

/* The backward's counterpart: the gate's adjoints, conv1's adjoint operands (d_conv1_m0 and the
 * m > 0 columns of dO), written sliced into s->sliced (cu_gate_backward_sliced); dg stays as
 * conv2's backward wrote it. */
static bool gate_backward_sliced(cuda_state *s, presliced_scope &scope, const dev_block &b, int C,
                                 int H, int n, edge_tape &t, const float *dg) {
    if (!producers_write_sliced(s, n))
        return false;
    const int K[3] = {5 * H, 4 * H, 2 * H};
    i8_sliced part[3];
    if (!operands_sliced_in(s->sliced, n, K, part) ||
        !so2_products_take(s, b.conv1_m0, b.block_conv1_m1, b.block_conv1_m2, 6 * C, n, part) ||
        !cu_gate_backward_sliced(n, H, F(t.gates), F(t.gated), dg, part, s->stream))
        return false;
    const float *d_conv1_m0 = F(s->d_conv1_m0);
    scope.hold({d_conv1_m0, dg + 3 * H, dg + 7 * H}, n, K, {5 * H, 9 * H, 9 * H}, part, s->sliced);
    return true;
}

/* The chunk's messages into t.messages (core/edgewise.c edgewise_messages), from the radial
 * weights in radial_of(t). With `keep_gate_input` (the backward will read this chunk's tape) the
 * conv1 output stays in t.gated and the gate writes to scratch; else it gates in place. The
 * unscaled rotated features go to `unscaled` unless it is null. */
static void edgewise_messages(cuda_state *s, const dev_block &b, int C, int H, const edge_chunk &c,
                              const float *x, edge_tape &t, float *unscaled, bool keep_gate_input) {
    cudaStream_t st = s->stream;
    float *y = F(s->rotated), *o = F(t.gated), *z = F(t.messages);
    float *g = keep_gate_input ? F(s->d_gated) : o;
    { /* conv1: y [n][9][2C] -> o [n][9][H] (the m = 0 gate inputs to t.gates) */
        presliced_scope scope(s);
        if (!conv1_sliced(s, scope, b, C, c, x, t, y))
            cu_gather_rotate(c.n, c.source, c.target, c.wigner, C, x, radial_of(s, t), unscaled, y,
                             st);
        linear_forward_pair(s, b.conv1_m0_gates, F(t.gates), 2 * H, b.conv1_m0_rows, o, 9 * H, c.n,
                            y, 18 * C);
        so2_forward(s, b.conv1_m1, b.block_conv1_m1, c.n, y + 6 * C, y + 10 * C, 18 * C, o + 3 * H,
                    o + 5 * H, 9 * H);
        so2_forward(s, b.conv1_m2, b.block_conv1_m2, c.n, y + 14 * C, y + 16 * C, 18 * C, o + 7 * H,
                    o + 8 * H, 9 * H);
    }
    /* the gate, then conv2: g [n][9][H] -> z [n][9][C] */
    presliced_scope scope(s);
    if (!gate_sliced(s, scope, b, H, c.n, t, o, g))
        cu_gate_forward(c.n, H, F(t.gates), o, g, st);
    linear_forward(s, b.conv2_m0, c.n, g, 9 * H, z, 9 * C);
    so2_forward(s, b.conv2_m1, b.block_conv2_m1, c.n, g + 3 * H, g + 5 * H, 9 * H, z + 3 * C,
                z + 5 * C, 9 * C);
    so2_forward(s, b.conv2_m2, b.block_conv2_m2, c.n, g + 7 * H, g + 8 * H, 9 * H, z + 7 * C,
                z + 8 * C, 9 * C);
}

/* umas_fast_gpu, ozaki: the consumer's backward writes conv2's adjoint operands sliced
 * (cu_rotate_back_backward_sliced) into s->sliced instead of dz in fp32. Only when all three
 * conv2 adjoint products take the int8 kernel; false (nothing done) otherwise. */
static bool rotate_back_backward_sliced(cuda_state *s, presliced_scope &scope, const dev_block &b,
                                        int C, int H, const edge_chunk &c, edge_tape &t,
                                        const float *d_out, const float *dz) {
    if (!producers_write_sliced(s, c.n))
        return false;
    const int K[3] = {3 * C, 4 * C, 2 * C};
    i8_sliced part[3];
    if (!operands_sliced_in(s->sliced, c.n, K, part) ||
        !so2_products_take(s, b.conv2_m0, b.block_conv2_m1, b.block_conv2_m2, 3 * H, c.n, part))
        return false;
    cu_rotate_back_backward_sliced(c.n, c.target, c.wigner, c.envelope, C, F(t.messages), d_out,
                                   c.d_wigner, c.d_envelope, part, s->stream);
    scope.hold({dz, dz + 3 * C, dz + 7 * C}, c.n, K, {9 * C, 9 * C, 9 * C}, part, s->sliced);
    return true;
}

/* umas_fast_gpu, ozaki: the producer's backward writes d_radial sliced into s->sliced
 * (cu_producer_backward_sliced), the operand of the radial MLP's last layer's backward, which
 * block_radial_backward runs next in the same scope. Only when that product takes the int8
 * kernel; false (nothing done) otherwise. */
static bool producer_backward_sliced(cuda_state *s, presliced_scope &scope, const dev_block &b,
                                     int C, const edge_chunk &c, const float *x, edge_tape &t,
                                     const float *dy) {
    if (!producers_write_sliced(s, c.n))
        return false;
    const dev_linear &fc3 = b.radial.fc3;
    const int K[1] = {fc3.out}; /* 12C */
    i8_sliced part[1];
    if (!operands_sliced_in(s->sliced, c.n, K, part) ||
        !ozaki_backward_takes(s, fc3, fc3.in, c.n, part[0]) ||
        !cu_producer_backward_sliced(c.n, c.source, c.target, c.wigner, C, x, radial_of(s, t), dy,
                                     &part[0], U(s->node_sums), c.d_wigner, s->stream))
        return false;
    scope.hold({(const float *)F(s->d_radial)}, c.n, K, {fc3.out}, part, s->sliced);
    return true;
}

/* so2_m_backward: general stacks then two GEMMs; umas_fast one GEMM with the block form */
static void so2_backward(cuda_state *s, const dev_linear &Wl, const dev_linear &block, int n,
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

/* The chunk's adjoints down to conv1's input: dE/dy [n][9][2C] into s->rotated (dy). The
 * chunk's tape is recomputed from x first unless the forward kept it (`kept`, umas_fast_gpu
 * only). */
static void edgewise_backward(cuda_state *s, const dev_block &b, int C, int H, const edge_chunk &c,
                              const float *x, const float *d_out, edge_tape &t, bool kept) {
    cudaStream_t st = s->stream;
    if (!kept)
        edgewise_messages(s, b, C, H, c, x, t, s->fused ? nullptr : F(s->unscaled), true);
    else if (!s->keep_radial)
        radial_mlp_last(s, b.radial, c.n, t); /* the tape kept its input, not its output */
    /* dz lives in conv1's operand buffer: dead there since conv1's forward, and read only
     * by conv2's backward, before conv1's backward writes dy over it */
    float *dz = F(s->rotated), *dg = F(s->d_gated), *dy = F(s->rotated);
    { /* the rotation back, then conv2's backward: dz -> dg */
        presliced_scope scope(s);
        if (!rotate_back_backward_sliced(s, scope, b, C, H, c, t, d_out, dz))
            cu_rotate_back_backward(c.n, c.target, c.wigner, c.envelope, C, F(t.messages), d_out,
                                    dz, c.d_wigner, c.d_envelope, st);
        linear_backward(s, b.conv2_m0, c.n, dz, 9 * C, dg, 9 * H, 3 * H, 0);
        so2_backward(s, b.conv2_m1, b.block_conv2_m1, c.n, dz + 3 * C, dz + 5 * C, 9 * C,
                     dg + 3 * H, dg + 5 * H, 9 * H);
        so2_backward(s, b.conv2_m2, b.block_conv2_m2, c.n, dz + 7 * C, dz + 8 * C, 9 * C,
                     dg + 7 * H, dg + 8 * H, 9 * H);
    }
    /* the gate's backward, then conv1's: dg -> dy */
    presliced_scope scope(s);
    if (!gate_backward_sliced(s, scope, b, C, H, c.n, t, dg))
        cu_gate_backward(c.n, H, F(t.gates), F(t.gated), dg, F(s->d_conv1_m0), st);
    linear_backward(s, b.conv1_m0, c.n, F(s->d_conv1_m0), 5 * H, dy, 18 * C, 6 * C, 0);
    so2_backward(s, b.conv1_m1, b.block_conv1_m1, c.n, dg + 3 * H, dg + 5 * H, 9 * H, dy + 6 * C,
                 dy + 10 * C, 18 * C);
    so2_backward(s, b.conv1_m2, b.block_conv1_m2, c.n, dg + 7 * H, dg + 8 * H, 9 * H, dy + 14 * C,
                 dy + 16 * C, 18 * C);
}

/* The producer's backward, from dy (s->rotated): d_radial [n][12C], dE/dx into the fixed-point
 * s->node_sums and the Wigner adjoints. umas_fast_gpu runs it as one pass that re-gathers and
 * rotates x itself (cu_producer_backward), with ozaki writing d_radial sliced and held in
 * `scope`; general and umas_fast use the unscaled rotated features kept by the recompute. */
static void producer_backward(cuda_state *s, presliced_scope &scope, const dev_block &b, int C,
                              const edge_chunk &c, const float *x, edge_tape &t) {
    cudaStream_t st = s->stream;
    float *dy = F(s->rotated); /* scaled in place by general and umas_fast */
    if (s->fused) {
        if (!producer_backward_sliced(s, scope, b, C, c, x, t, dy))
            cu_producer_backward(c.n, c.source, c.target, c.wigner, C, x, radial_of(s, t), dy,
                                 F(s->d_radial), U(s->node_sums), c.d_wigner, st);
        return;
    }
    cu_scale_by_radial_backward(c.n, C, radial_of(s, t), F(s->unscaled), dy, F(s->d_radial), st);
    cu_gather_rotate_backward(c.n, c.source, c.target, c.wigner, C, x, dy, U(s->node_sums),
                              c.d_wigner, st);
}

static void message_input(cuda_state *s, const dev_block &b, int N, int C, const float *h,
                          float *u) {
    cu_rms_norm_forward(N, C, b.norm_1.scale, b.norm_1.bias, h, u, s->stream);
    cu_add_to_l0(N, C, s->system_embedding, u, s->stream);
}

/* umas_spectral_atomwise_forward: out = FFN(v) */
static void ffn_forward(cuda_state *s, const dev_block &b, int N, int C, int H, const float *v,
                        float *out) {
    float *gates = F(s->ffn_pre), *q = F(s->ffn_hidden);
    linear_forward(s, b.ffn_scalar, N, v, 9 * C, gates, 2 * H);
    so3_linear_forward(s, b.so3_1, N, v, q);
    cu_ffn_gate_forward(N, H, gates, q, s->stream);
    so3_linear_forward(s, b.so3_2, N, q, out);
}

/* umas_spectral_atomwise_backward: dv from v and d_out */
static void ffn_backward(cuda_state *s, const dev_block &b, int N, int C, int H, const float *v,
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

static void record_trace(umas_context *ctx, cuda_state *s, int stage, const float *x, int N) {
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

static void block_forward(umas_context *ctx, cuda_state *s, int l, const graph_view &g,
                          float *save) {
    const dev_block &b = s->blocks[l];
    const umas_weights *w = &ctx->weights;
    int N = g.N, C = w->C, H = w->H;
    size_t size = (size_t)N * 9 * C * sizeof(float);
    halo_refresh(ctx, s, g, F(s->h)); /* ghosts read by this block's messages */
    if (save)
        cudaMemcpyAsync(save, F(s->h), size, cudaMemcpyDeviceToDevice, s->stream);
    message_input(s, b, N, C, F(s->h), F(s->u));
    for (int first = 0; first < g.E; first += s->chunk) {
        const edge_chunk c = chunk_at(s, g, first);
        edge_tape t = tape(s, w, l, first);
        block_radial_chunk(s, w, l, c, t);
        edgewise_messages(s, b, C, H, c, F(s->u), t, nullptr, block_keeps(s, l));
        cu_rotate_back_scatter(c.n, c.target, c.wigner, c.envelope, C, F(t.messages),
                               U(s->node_sums), s->stream);
    }
    cu_fixed_add((size_t)N * 9 * C, U(s->node_sums), F(s->h), s->stream);
    if (save)
        cudaMemcpyAsync(save + (size_t)N * 9 * C, F(s->h), size, cudaMemcpyDeviceToDevice,
                        s->stream);
    cu_rms_norm_forward(N, C, b.norm_2.scale, b.norm_2.bias, F(s->h), F(s->u), s->stream);
    ffn_forward(s, b, N, C, H, F(s->u), F(s->ffn_out));
    cu_add((size_t)N * 9 * C, F(s->ffn_out), F(s->h), s->stream);
    balance_block(ctx, s, g, F(s->h), false);
}

static void block_backward(umas_context *ctx, cuda_state *s, int l, const graph_view &g,
                           const float *save) {
    const dev_block &b = s->blocks[l];
    const umas_weights *w = &ctx->weights;
    int N = g.N, C = w->C, H = w->H;
    size_t size = (size_t)N * 9 * C;
    const float *h_in = save, *h_mid = save + size;
    balance_block(ctx, s, g, F(s->dh), true);
    cu_rms_norm_forward(N, C, b.norm_2.scale, b.norm_2.bias, h_mid, F(s->u), s->stream);
    ffn_backward(s, b, N, C, H, F(s->u), F(s->dh), F(s->d_tmp));
    cu_rms_norm_backward(N, C, b.norm_2.scale, h_mid, F(s->d_tmp), F(s->du), s->stream);
    cu_add(size, F(s->du), F(s->dh), s->stream);
    message_input(s, b, N, C, h_in, F(s->u));
    cudaMemsetAsync(F(s->du), 0, size * sizeof(float), s->stream);
    for (int first = 0; first < g.E; first += s->chunk) {
        const edge_chunk c = chunk_at(s, g, first);
        edge_tape t = tape(s, w, l, first);
        const bool kept = block_keeps(s, l);
        if (!kept)
            block_radial_chunk(s, w, l, c, t);
        edgewise_backward(s, b, C, H, c, F(s->u), F(s->dh), t, kept);
        presliced_scope d_radial_sliced(s);
        producer_backward(s, d_radial_sliced, b, C, c, F(s->u), t);
        block_radial_backward(s, w, l, c, t);
    }
    cu_fixed_add(size, U(s->node_sums), F(s->du), s->stream);
    cu_rms_norm_backward(N, C, b.norm_1.scale, h_in, F(s->du), F(s->d_tmp), s->stream);
    cu_add(size, F(s->d_tmp), F(s->dh), s->stream);
    halo_sum_into_owners(ctx, s, g, F(s->dh));
}

static void head_forward(cuda_state *s, const umas_weights *w, int N, const float *u) {
    int H = w->H;
    float *h1 = F(s->head_hidden), *h2 = F(s->head_hidden) + (size_t)N * H;
    linear_forward(s, s->head[0], N, u, 9 * w->C, h1, H);
    cu_silu((size_t)N * H, h1, s->stream);
    linear_forward(s, s->head[1], N, h1, H, h2, H);
    cu_silu((size_t)N * H, h2, s->stream);
    linear_forward(s, s->head[2], N, h2, H, F(s->node_output), 1);
}

/* energy_head_backward: s->du = d(sum of energy nodes' outputs)/d u (l = 0 only) */
static void head_backward(cuda_state *s, const umas_weights *w, int N, int energy_nodes) {
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
        const edge_chunk c = chunk_at(s, g, first);
        edge_tape t = tape(s, w, -1, first);
        radial_chunk(s, w, s->degree, c, t);
        cu_edge_degree_forward(c.n, c.target, c.wigner, c.envelope, C, radial_of(s, t),
                               U(s->node_sums), st);
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
        const edge_chunk c = chunk_at(s, g, first);
        edge_tape t = tape(s, w, -1, first);
        radial_chunk(s, w, s->degree, c, t);
        cu_edge_degree_backward(c.n, c.target, c.wigner, c.envelope, C, radial_of(s, t), F(s->dh),
                                F(s->d_radial), c.d_wigner, c.d_envelope, st);
        radial_mlp_backward(s, s->degree, c, w->B, t);
    }
    cu_edge_gradient(E, static_cast<const double *>(s->vec.ptr), w->cutoff,
                     static_cast<const cu_wigner *>(s->d_wigner.ptr), F(s->d_envelope),
                     F(s->d_distance), w->energy_rmsd, static_cast<double *>(s->gradient.ptr), st);
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

static int allocate_trace(umas_context *ctx, int N, umas_error *err) {
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

} // namespace umas_cuda
