/* memory_plan.cu - the GPU buffers a graph needs: the per-edge, per-node and per-chunk buffers,
 * umas_fast_gpu's tapes (the edge activations a block keeps for its backward) and the search for
 * how many blocks keep theirs in how large chunks of edges (reserve_all). */
#include "cuda_internal.h"
#include "tape_plan.h"

namespace umas_cuda {

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

static int num_blocks(const cuda_state *s) {
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

/* Floats per edge of block l's edge_tape, buffer by buffer (tape_buffer order), as
 * reserve_buffers sizes them. umas_fast's blocks read their radial LayerNorm input in s->first,
 * so only tapes[0] (which also serves the edge-degree MLP) and general's tape keep pre_norm1;
 * without keep_radial the kept tapes of blocks 1.. have no radial output either. */
/* Floats per edge of block l's tape, buffer by buffer (tape_buffer order), with its radial
 * output (shared_radial false) or without it (a kept tape that shares tapes[0]'s). */
static void tape_sizes_of(bool fast, const umas_weights *w, size_t l, bool shared_radial,
                          size_t floats[]) {
    size_t C = w->C, H = w->H, Ce = w->Ce;
    const size_t sizes[tape_buffers] = {
        fast && l > 0 ? 0 : Ce, Ce, shared_radial ? 0 : 12 * C, 2 * H, 9 * H, 9 * C};
    for (int i = 0; i < tape_buffers; i++)
        floats[i] = sizes[i];
}
void tape_sizes(const cuda_state *s, const umas_weights *w, size_t l, size_t floats[]) {
    const bool shared_radial = block_keeps(s, (int)l) && !s->keep_radial && l > 0; /* tapes[0] */
    tape_sizes_of(s->fast, w, l, shared_radial, floats);
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

/* Every buffer for the graph g, with edges in chunks of s->chunk (already chosen). */
static int reserve_buffers(umas_context *ctx, const graph_view &g, umas_error *err) {
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

static void release(cuda_state *s, buffer &b) {
    if (b.ptr) {
        cudaFree(b.ptr);
        s->buffer_bytes -= b.bytes;
        s->generation++;
    }
    b = buffer();
}

/* The sizes the memory plan (tape_plan.h) weighs for E edges. */
static tape_plan_input plan_input(const cuda_state *s, const umas_weights *w, size_t E) {
    size_t block0[tape_buffers], kept[tape_buffers];
    tape_sizes_of(s->fast, w, 0, false, block0);
    tape_sizes_of(s->fast, w, 1, false, kept);
    tape_plan_input in;
    in.edges = E;
    in.blocks = w->num_layers;
    in.recompute_chunk = (size_t)s->recompute_chunk;
    for (int i = 0; i < tape_buffers; i++) {
        in.block0_tape += block0[i];
        in.kept_tape += kept[i];
    }
    in.radial = kept[2];
    in.scratch = scratch_floats_per_edge(s, w);
    in.per_edge = s->fast ? (size_t)w->num_layers * w->Ce : 0; /* s->first */
    return in;
}

static void release_unused_tapes(cuda_state *s, const umas_weights *w) {
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

static void print_tape_choice(const cuda_state *s, const umas_weights *w, size_t E) {
    int L = num_blocks(s), k = s->kept_blocks;
    fprintf(stderr,
            "umas cuda: %zu edges: %d of %d blocks keep their edge activations%s, chunks of %d "
            "edges; %.1f GB of tapes and scratch\n",
            E, k, L, k > 0 && !s->keep_radial ? " (without the radial outputs)" : "", s->chunk,
            tape_bytes(plan_input(s, w, E), s->kept_blocks, s->keep_radial, (size_t)s->chunk) /
                1e9);
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
    tape_plan_input in = plan_input(s, w, E);
    in.budget_bytes = 0.8 * (double)(free_bytes + s->buffer_bytes);
    for (const tape_choice &choice : plan_tapes(in)) {
        s->kept_blocks = choice.kept_blocks;
        s->keep_radial = choice.keep_radial;
        s->chunk = (int)choice.chunk;
        release_unused_tapes(s, w);
        if (reserve_buffers(ctx, g, err) != 0) {
            cudaGetLastError();
            continue;
        }
        made = {E, choice.kept_blocks, (int)choice.chunk, choice.keep_radial, choice.chunk == E};
        if (s->verbose)
            print_tape_choice(s, w, E);
        return 0;
    }
    return -1; /* recomputing everything did not fit either: err says what */
}

} // namespace umas_cuda
