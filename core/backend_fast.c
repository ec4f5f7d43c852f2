/* backend_fast.c - the `umas_fast` backend on the CPU, float64 (fairchem's umas_fast_pytorch,
 * spec 13): the `general` driver (backend_cpu.h) with two changes in the blocks' messages.
 *
 *  * At creation every block's m > 0 SO(2) weights are packed into block form
 *    [[W1, -W2], [W2, W1]] (so2_fast.h): each m is one product over [real | imag]; m = 0 stays
 *    one product with bias; conv1's radial scaling is applied while its input is packed.
 *  * The unified radial MLP: once per step, the first layer of all L blocks' radial MLPs is one
 *    product a [E][F] x [F][L Ce] kept for the whole step (`first`, [E][L Ce]); a block's
 *    messages (forward, and their recomputation in the backward) run only the rest of its MLP
 *    from its slice. In the backward, block l's slice is overwritten by dE/d(its first layer
 *    output) once the block is done, and after the last block one product
 *    [E][L Ce] x [L Ce][B] gives dE/d gaussians of all blocks together.
 *
 * Results equal `general` up to the order of floating-point sums (<= 1e-10 relative, tested).
 * Memory: as `general` (README) plus the packed weights (60 H C doubles per block) and the unified
 * first layer, L Ce doubles per edge (UMA-S: 4 KB per edge). */
#include "backend_cpu.h"
#include "error.h"
#include "so2_fast.h"

#include <stdlib.h>

typedef struct fast_state {
    umas_fast_block *blocks; /* [L] block-form convolutions */
    umas_unified_radial radial;
    double *first; /* [E][L Ce] unified first radial layer; in the backward, its adjoint */
    int first_capacity;
} fast_state;

/* Once per step: first [E][L Ce] = every block's first radial layer of a_e, chunk by chunk. */
static int fast_begin(umas_context *ctx, const umas_graph *g, int gradients, umas_error *err) {
    (void)gradients;
    umas_cpu_state *s = ctx->backend_state;
    fast_state *f = s->extension;
    const umas_weights *w = &ctx->weights;
    size_t width = (size_t)w->num_layers * w->Ce;
    if (!f->first || g->num_edges > f->first_capacity) {
        free(f->first);
        f->first = malloc(sizeof(double) * width * ((size_t)g->num_edges + 1));
        f->first_capacity = f->first ? g->num_edges : 0;
        if (!f->first)
            return umas_fail(err, "out of memory for the unified radial layer of %d edges",
                             g->num_edges);
    }
    for (int first = 0; first < g->num_edges; first += s->chunk) {
        int n = umas_cpu_edge_chunk(s, g, first).count;
        umas_cpu_radial_input(s, w, g, first, n);
        umas_unified_radial_forward(&f->radial, n, s->radial_input, f->first + first * width,
                                    (int)width);
    }
    return 0;
}

/* h += messages of block `layer` over the chunk at `first`. */
static void fast_messages(umas_context *ctx, const umas_graph *g, int layer, int first,
                          const double *u, double *h) {
    umas_cpu_state *s = ctx->backend_state;
    fast_state *f = s->extension;
    const umas_weights *w = &ctx->weights;
    const umas_block_weights *b = &w->blocks[layer];
    int width = w->num_layers * w->Ce;
    umas_edge_chunk edges = umas_cpu_edge_chunk(s, g, first);
    umas_unified_radial_block_forward(&b->radial, edges.count,
                                      f->first + (size_t)first * width + (size_t)layer * w->Ce,
                                      width, &s->radial_saved, s->radial);
    umas_fast_edgewise_forward(b, &f->blocks[layer], w->C, w->H, &edges, s->radial, u, h, &s->work);
}

/* Backward of fast_messages; leaves dE/d(block's first radial layer) in its slice of first. */
static void fast_messages_backward(umas_context *ctx, const umas_graph *g, int layer, int first,
                                   const double *u, const double *dh, double *du) {
    umas_cpu_state *s = ctx->backend_state;
    fast_state *f = s->extension;
    const umas_weights *w = &ctx->weights;
    const umas_block_weights *b = &w->blocks[layer];
    int width = w->num_layers * w->Ce;
    double *slice = f->first + (size_t)first * width + (size_t)layer * w->Ce;
    umas_edge_chunk edges = umas_cpu_edge_chunk(s, g, first);
    umas_unified_radial_block_forward(&b->radial, edges.count, slice, width, &s->radial_saved,
                                      s->radial);
    umas_fast_edgewise_backward(b, &f->blocks[layer], w->C, w->H, &edges, s->radial, u, dh, du,
                                s->d_radial, s->d_wigner + first, s->d_envelope + first, &s->work);
    umas_unified_radial_block_backward(&b->radial, edges.count, &s->radial_saved, s->d_radial,
                                       slice, width, s->radial_work);
}

/* After every block: dE/d gaussians of all blocks in one product, then dE/dd. */
static void fast_finish_backward(umas_context *ctx, const umas_graph *g) {
    umas_cpu_state *s = ctx->backend_state;
    fast_state *f = s->extension;
    const umas_weights *w = &ctx->weights;
    int width = w->num_layers * w->Ce;
    for (int first = 0; first < g->num_edges; first += s->chunk) {
        int n = umas_cpu_edge_chunk(s, g, first).count;
        umas_unified_radial_backward(&f->radial, n, f->first + (size_t)first * width, width,
                                     s->d_gaussians, w->B);
        umas_cpu_gaussians_backward(s, w, first, n);
    }
}

static const umas_cpu_messages fast_messages_ops = {
    .begin = fast_begin,
    .forward = fast_messages,
    .backward = fast_messages_backward,
    .finish_backward = fast_finish_backward,
};

static void fast_destroy(umas_context *ctx) {
    umas_cpu_state *s = ctx->backend_state;
    fast_state *f = s ? s->extension : NULL;
    if (f) {
        for (int l = 0; f->blocks && l < ctx->weights.num_layers; l++)
            umas_fast_block_free(&f->blocks[l]);
        free(f->blocks);
        umas_unified_radial_free(&f->radial);
        free(f->first);
        free(f);
        s->extension = NULL;
    }
    umas_cpu_destroy(ctx);
}

static int fast_create(umas_context *ctx, umas_error *err) {
    if (umas_cpu_create(ctx, &fast_messages_ops, err))
        return -1;
    const umas_weights *w = &ctx->weights;
    umas_cpu_state *s = ctx->backend_state;
    fast_state *f = calloc(1, sizeof *f);
    s->extension = f;
    if (!f)
        return umas_fail(err, "out of memory for the umas_fast backend");
    f->blocks = calloc((size_t)w->num_layers, sizeof *f->blocks);
    if (!f->blocks || umas_unified_radial_init(&f->radial, w))
        return umas_fail(err, "out of memory for the umas_fast weights");
    for (int l = 0; l < w->num_layers; l++)
        if (umas_fast_block_init(&f->blocks[l], &w->blocks[l]))
            return umas_fail(err, "out of memory for the umas_fast weights of block %d", l);
    return 0;
}

/* The driver's buffers, the packed weights and the unified first layer. */
static size_t fast_bytes(const umas_context *ctx) {
    const umas_cpu_state *s = ctx->backend_state;
    const fast_state *f = s->extension;
    const umas_weights *w = &ctx->weights;
    size_t bytes = umas_cpu_bytes(ctx);
    for (int l = 0; l < w->num_layers; l++)
        bytes += umas_fast_block_bytes(&f->blocks[l]);
    bytes += sizeof(double) * (size_t)f->radial.fc1.out * (f->radial.fc1.in + 1);
    bytes += sizeof(double) * (size_t)w->num_layers * w->Ce * (size_t)f->first_capacity;
    return bytes;
}

const umas_backend umas_backend_fast_cpu = {
    .name = "umas_fast",
    .device = "cpu",
    .create = fast_create,
    .compute = umas_cpu_compute,
    .destroy = fast_destroy,
    .bytes = fast_bytes,
};
