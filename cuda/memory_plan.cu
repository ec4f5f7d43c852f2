/* memory_plan.cu - the GPU buffers a graph needs: the per-edge, per-node and per-chunk buffers,
 * umas_fast_gpu's tapes (the edge activations a block keeps for its backward) and the search for
 * how many blocks keep theirs in how large chunks of edges (reserve_all). */
#include "cuda_internal.h"
#include "tape_plan.h"

namespace umas_cuda {

/* Grows b to at least `bytes`; on failure writes the error (with what the graph needs). */
static int reserve(cuda_state *s, buffer &b, size_t bytes, const char *what, int atoms, int edges,
                   umas_error *err) {
    if (bytes <= b.bytes && b.ptr)
        return 0;
    if (b.ptr)
        cudaFree(b.ptr);
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
    s->generation++;
    return 0;
}

static void release(cuda_state *s, buffer &b) {
    if (b.ptr) {
        cudaFree(b.ptr);
        s->generation++;
    }
    b = buffer();
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

/* ozaki on Hopper: rows of an activation sliced at a time (at most 2^18), for products of up to
 * `rows` rows; 0 otherwise. */
static int ozaki_rows_for(const cuda_state *s, size_t rows) {
    if (s->precision != UMAS_PRECISION_OZAKI || !s->tensor_core_gemm)
        return 0;
    return (int)std::min(rows, (size_t)1 << 18);
}

/* Bytes of s->sliced: an activation of the widest product sliced, s->ozaki_rows rows at a time,
 * and room for the operands the producers write sliced for a chunk of n edges. */
static size_t sliced_bytes(const cuda_state *s, size_t n, int C, int H) {
    if (s->ozaki_rows == 0)
        return 0;
    size_t bytes = ((size_t)s->ozaki_rows * sizeof(int) + 15) / 16 * 16 +
                   3 * (size_t)s->ozaki_rows * i8_slice_ld(s->widest);
    if (producers_write_sliced(s, 1))
        bytes = std::max(bytes, fused_operand_bytes(n, C, H));
    return bytes;
}

/* Every device buffer of s, each once: what reserves it, its size for the sizes z, and what it
 * holds (for the out-of-memory message). reserve_for, release_all and buffer_bytes read it. */
std::vector<buffer_entry> buffer_table(cuda_state *s, const umas_weights *w,
                                       const buffer_sizes &z) {
    const size_t E = z.edges, N = z.atoms, n = z.chunk, listed = z.listed;
    const size_t C = w->C, H = w->H, L = w->num_layers, Ce = w->Ce;
    const size_t wide = 4 * (C > H ? C : H), f = sizeof(float), d = sizeof(double);
    const size_t split = s->precision == UMAS_PRECISION_3XTF32 && !s->tensor_core_gemm
                             ? std::max(n, N) * s->widest
                             : 0;
    std::vector<buffer_entry> t = {
        /* the graph's edges: from the caller's graph, or the neighbour route's kept edges (room
         * for umas_fast_gpu's padding) */
        {&s->vec, EDGE_INPUT, E * 3 * d, "edge vectors"},
        {&s->src, EDGE_INPUT, E * sizeof(int), "edges"},
        {&s->tgt, EDGE_INPUT, E * sizeof(int), "edges"},
        /* per edge */
        {&s->distance, GRAPH, E * f, "edge geometry"},
        {&s->envelope, GRAPH, E * f, "edge geometry"},
        {&s->wigner, GRAPH, E * sizeof(cu_wigner), "Wigner matrices"},
        {&s->d_wigner, GRAPH, E * sizeof(cu_wigner), "Wigner adjoints"},
        {&s->d_envelope, GRAPH, E * f, "edge adjoints"},
        {&s->d_distance, GRAPH, E * f, "edge adjoints"},
        {&s->gradient, GRAPH, E * 3 * d, "edge gradients"},
        /* umas_fast: every block's first radial layer output */
        {&s->first, GRAPH, s->fast ? E * L * Ce * f : 0, "the unified radial layer"},
        /* per node */
        {&s->z, GRAPH, N * sizeof(int), "atoms"},
        {&s->node_sums, GRAPH, N * 9 * C * sizeof(unsigned long long), "node sums"},
        {&s->h, GRAPH, N * 9 * C * f, "node features"},
        {&s->u, GRAPH, N * 9 * C * f, "node features"},
        {&s->ffn_out, GRAPH, N * 9 * C * f, "node features"},
        {&s->ffn_pre, GRAPH, N * 2 * H * f, "feed-forward"},
        {&s->ffn_hidden, GRAPH, N * 9 * H * f, "feed-forward"},
        {&s->head_hidden, GRAPH, N * 2 * H * f, "energy head"},
        {&s->node_output, GRAPH, N * f, "energy head"},
        {&s->saved, GRAPH, (2 * L + 1) * N * 9 * C * f, "saved block inputs"},
        {&s->dh, GRAPH, N * 9 * C * f, "node adjoints"},
        {&s->du, GRAPH, N * 9 * C * f, "node adjoints"},
        {&s->d_tmp, GRAPH, N * 9 * C * f, "node adjoints"},
        {&s->ffn_d_pre, GRAPH, N * 2 * H * f, "feed-forward adjoints"},
        {&s->ffn_d_r, GRAPH, N * 9 * H * f, "feed-forward adjoints"},
        /* per chunk of n edges */
        {&s->radial_input, GRAPH, n * w->F * f, "radial inputs"},
        {&s->hidden, GRAPH, n * Ce * f, "radial MLP"},
        {&s->d_radial, GRAPH, n * 12 * C * f, "radial adjoints"},
        {&s->d_gauss, GRAPH, n * w->B * f, "radial adjoints"},
        {&s->radial_work, GRAPH, n * 2 * Ce * f, "radial adjoints"},
        {&s->rotated, GRAPH, n * 18 * C * f, "edge features"},
        /* general's real/imag products; umas_fast's block-form GEMMs need none */
        {&s->product_r, GRAPH, s->fast ? 0 : n * wide * f, "edge features"},
        {&s->product_i, GRAPH, s->fast ? 0 : n * wide * f, "edge features"},
        {&s->d_gated, GRAPH, n * 9 * H * f, "edge adjoints"},
        {&s->d_conv1_m0, GRAPH, n * 5 * H * f, "edge adjoints"},
        /* umas_fast_gpu's producer backward recomputes these in registers */
        {&s->unscaled, GRAPH, s->fused ? 0 : n * 18 * C * f, "edge features"},
        /* a product's activation operand: 3xtf32's TF32 parts, ozaki's slices */
        {&s->split_hi, GRAPH, split * f, "3xtf32 operands"},
        {&s->sliced, GRAPH, sliced_bytes(s, n, (int)C, (int)H), "ozaki operands"},
        {&s->split_lo, GRAPH, split * f, "3xtf32 operands"},
        /* the neighbour-list route: the list (umas_set_neighbors) and its per-step selection */
        {&s->list_source, LIST, listed * sizeof(int), "the neighbour list"},
        {&s->list_target, LIST, listed * sizeof(int), "the neighbour list"},
        {&s->list_image, LIST, 3 * listed * sizeof(int), "the neighbour list"},
        {&s->list_vector, LIST, 3 * listed * d, "the neighbour list"},
        {&s->keep, LIST, listed * sizeof(int), "the neighbour list"},
        {&s->slot, LIST, listed * sizeof(int), "the neighbour list"},
        {&s->kept, LIST, listed * sizeof(int), "the neighbour list"},
        {&s->select_scratch, LIST, cu_select_scratch_bytes((int)listed), "the neighbour list"},
        {&s->flags, LIST, 2 * sizeof(int), "the neighbour list"},
        {&s->positions, LIST, 3 * N * d, "positions"},
        {&s->cell, LIST, 9 * d, "positions"},
        {&s->forces, LIST, 3 * N * d, "forces"},
        {&s->virial, LIST, 6 * d, "forces"},
        {&s->node_virial, NODE_VIRIALS, 6 * N * d, "per-atom virials"},
    };
    /* the tapes: block l's (0: the one of the blocks that recompute, and of the edge-degree
     * MLP) while it is used, over all edges or one chunk */
    for (size_t l = 0; l < s->tapes.size(); l++) {
        const bool used = l == 0 || block_keeps(s, (int)l);
        const size_t rows = tape_holds_all_edges(s, (int)l) ? std::max<size_t>(E, 1) : n;
        size_t floats[tape_buffers];
        tape_sizes(s, w, l, floats);
        for (int i = 0; i < tape_buffers; i++)
            t.push_back({tape_buffer(s->tapes[l], i), used ? TAPE : UNUSED_TAPE,
                         rows * floats[i] * f, "saved edge activations"});
    }
    return t;
}

/* Reserves the buffers of s that any of `uses` reserves, sized for z (one pass over the table:
 * this runs every step). */
int reserve_for(cuda_state *s, const umas_weights *w, std::initializer_list<buffer_use> uses,
                const buffer_sizes &z, umas_error *err) {
    for (const buffer_entry &it : buffer_table(s, w, z))
        if (std::find(uses.begin(), uses.end(), it.use) != uses.end() &&
            reserve(s, *it.b, it.bytes, it.what, (int)z.atoms, (int)z.edges, err))
            return -1;
    return 0;
}

/* Every buffer for the graph g, with edges in chunks of s->chunk (already chosen). */
static int reserve_buffers(umas_context *ctx, const graph_view &g, umas_error *err) {
    cuda_state *s = static_cast<cuda_state *>(ctx->backend_state);
    const umas_weights *w = &ctx->weights;
    const size_t E = g.E, N = g.N;
    const size_t n = (size_t)s->chunk < E ? (size_t)s->chunk : (E ? E : 1);
    s->ozaki_rows = ozaki_rows_for(s, std::max(n, N));
    const buffer_sizes z = {N, E, n, 0};
    return reserve_for(s, w, {EDGE_INPUT, GRAPH, TAPE}, z, err);
}

/* Frees every buffer of s (cuda_destroy). */
void release_all(cuda_state *s, const umas_weights *w) {
    for (const buffer_entry &it : buffer_table(s, w, {}))
        release(s, *it.b);
}

/* Bytes of device memory in s's buffers. */
size_t buffer_bytes(cuda_state *s, const umas_weights *w) {
    size_t bytes = 0;
    for (const buffer_entry &it : buffer_table(s, w, {}))
        bytes += it.b->bytes;
    return bytes;
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
    in.budget_bytes = 0.8 * (double)(free_bytes + buffer_bytes(s, w));
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
