/* backend_general.c - the `general` backend on the CPU, float64: the straightforward reference
 * path of the eSCN-MD forward pass (spec 14.1) and its hand-written backward (spec 14.2).
 *
 * Forward:
 *   geometry   per edge: d, envelope, Wigner D
 *   embedding  h[n][0] = sphere_embedding[Z_n] + c_sys, other coefficients 0
 *   degree     h[target] += edge-degree messages
 *   block l    (halo: ghost rows of h from their atoms, halo.h)
 *              u = norm_1(h) (+ c_sys on l = 0);  h += messages(u)
 *              h += FFN(norm_2(h));  h = balance(h)
 *   output     energy_n = head(final_norm(h)[n][0])
 * Backward (when forces or the virial are asked for): the same steps in reverse, seeded with
 * dE/d energy_n = 1 on the energy nodes, down to dE/dD, dE/d envelope and dE/d distance per edge,
 * then dE/dr_e = (dE/dd) e + (tau x e) / d (spec 3.6).
 *
 * Edges are processed in chunks so per-edge activations ([E][9][2C] and friends) never exist for
 * all edges at once; the backward recomputes a chunk's edge pipeline from the saved node
 * features instead of storing it. Memory, float64:
 *   per edge   geometry D, envelope, distance (36 doubles); with gradients also dE/dD, dE/denv,
 *              dE/dd (36 doubles): 288 + 288 bytes
 *   per node   27 C + 13 H doubles of work; with gradients also the block inputs and the
 *              post-message features of every block plus the final features ((2 L + 1) 9 C
 *              doubles; UMA-S: 83 KB per atom) and 27 C + 22 H of adjoint work
 *   per chunk  about 32 MB (the chunk size adapts to C, H)
 *
 * This file is also the CPU driver of backend_cpu.h: everything above except a block's messages
 * is shared with `umas_fast` (backend_fast.c), which plugs in its own umas_cpu_messages; the
 * `general` messages (radial MLP per chunk + edgewise.c) are at the end of the file.
 */
#define _POSIX_C_SOURCE 200809L
#include "backend_cpu.h"
#include "error.h"
#include "halo.h"
#include "so3.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { CHUNK_BYTES = 32 << 20 }; /* target size of the per-chunk work space */

static size_t chunk_doubles_per_edge(const umas_weights *w) {
    return (size_t)w->F + 3 * (size_t)w->Ce + 24 * (size_t)w->C + (size_t)w->B + 2 * (size_t)w->Ce +
           umas_edgewise_work_doubles(1, w->C, w->H);
}

/* Replaces *p by an uninitialised array of n doubles; 0 on success. */
static int regrow(double **p, size_t n) {
    free(*p);
    *p = malloc(sizeof(double) * (n ? n : 1));
    return *p ? 0 : -1;
}

static void free_node_buffers(umas_cpu_state *s) {
    double **all[] = {&s->h, &s->u, &s->ffn_out, &s->ffn_gates, &s->ffn_hidden, &s->head_hidden};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        free(*all[i]), *all[i] = NULL;
}

static void free_gradient_buffers(umas_cpu_state *s) {
    free(s->d_wigner), free(s->d_envelope), free(s->d_distance);
    free(s->saved), free(s->dh), free(s->du), free(s->d_tmp), free(s->ffn_work);
    s->d_wigner = NULL, s->d_envelope = s->d_distance = NULL;
    s->saved = s->dh = s->du = s->d_tmp = s->ffn_work = NULL;
}

void umas_cpu_destroy(umas_context *ctx) {
    umas_cpu_state *s = ctx->backend_state;
    umas_gaussian_basis_free(&s->basis);
    free(s->distance), free(s->envelope), free(s->wigner);
    free_node_buffers(s);
    free_gradient_buffers(s);
    free(s->radial_input), free(s->radial_saved.pre_norm1), free(s->radial), free(s->d_radial);
    free(s->d_gaussians), free(s->radial_work), free(s->edgewise_space);
    free(s);
    ctx->backend_state = NULL;
}

int umas_cpu_create(umas_context *ctx, const umas_cpu_messages *messages, umas_error *err) {
    const umas_weights *w = &ctx->weights;
    umas_cpu_state *s = calloc(1, sizeof *s);
    if (!s)
        return umas_fail(err, "out of memory");
    ctx->backend_state = s;
    s->messages = messages;
    umas_wigner_generators_init(&s->generators);
    size_t per_edge = chunk_doubles_per_edge(w);
    s->chunk = (int)(CHUNK_BYTES / (per_edge * sizeof(double)));
    s->chunk = s->chunk < 64 ? 64 : s->chunk > 8192 ? 8192 : s->chunk;
    size_t n = (size_t)s->chunk;
    s->radial_input = malloc(sizeof(double) * n * w->F);
    s->radial_saved.pre_norm1 = malloc(sizeof(double) * n * 3 * w->Ce);
    s->radial = malloc(sizeof(double) * n * 12 * w->C);
    s->d_radial = malloc(sizeof(double) * n * 12 * w->C);
    s->d_gaussians = malloc(sizeof(double) * n * w->B);
    s->radial_work = malloc(sizeof(double) * n * 2 * w->Ce);
    s->edgewise_space = malloc(sizeof(double) * umas_edgewise_work_doubles(s->chunk, w->C, w->H));
    if (umas_gaussian_basis_init(&s->basis, w->B, w->cutoff) || !s->radial_input ||
        !s->radial_saved.pre_norm1 || !s->radial || !s->d_radial || !s->d_gaussians ||
        !s->radial_work || !s->edgewise_space)
        return umas_fail(err, "out of memory for the general backend's work space");
    s->radial_saved.pre_norm2 = s->radial_saved.pre_norm1 + n * w->Ce;
    s->radial_saved.hidden = s->radial_saved.pre_norm2 + n * w->Ce;
    umas_edgewise_work_bind(&s->work, s->edgewise_space, s->chunk, w->C, w->H);
    return 0;
}

static size_t saved_doubles(const umas_weights *w, int nodes) {
    return (2 * (size_t)w->num_layers + 1) * (size_t)nodes * 9 * (size_t)w->C;
}

/* Work space: per chunk, per edge and per node, as in the comment at the top. */
size_t umas_cpu_bytes(const umas_context *ctx) {
    const umas_cpu_state *s = ctx->backend_state;
    const umas_weights *w = &ctx->weights;
    size_t C = (size_t)w->C, H = (size_t)w->H;
    size_t per_edge = 2 * sizeof(double) + sizeof(umas_wigner);
    size_t per_node = sizeof(double) * (27 * C + 13 * H);
    size_t gradient_per_node =
        sizeof(double) * (27 * C + 22 * H) + sizeof(double) * saved_doubles(w, 1);
    return sizeof(double) * (size_t)s->chunk * chunk_doubles_per_edge(w) +
           (size_t)s->edge_capacity * per_edge + (size_t)s->node_capacity * per_node +
           (size_t)s->gradient_edge_capacity * per_edge +
           (size_t)s->gradient_node_capacity * gradient_per_node;
}

/* Grows the per-edge and per-node buffers to the graph (never shrinks: MD graphs are stable). */
static int reserve(umas_context *ctx, const umas_graph *g, int gradients, umas_error *err) {
    umas_cpu_state *s = ctx->backend_state;
    const umas_weights *w = &ctx->weights;
    size_t C = (size_t)w->C, H = (size_t)w->H, e = (size_t)g->num_edges;
    size_t n = (size_t)g->num_nodes;
    /* (every buffer exists after the first call, also for empty graphs) */
    if (!s->wigner || g->num_edges > s->edge_capacity) {
        free(s->wigner);
        s->wigner = malloc(sizeof(umas_wigner) * (e ? e : 1));
        int ok = !regrow(&s->distance, e) && !regrow(&s->envelope, e) && s->wigner;
        s->edge_capacity = ok ? g->num_edges : 0;
        if (!ok)
            return umas_fail(err, "out of memory for the geometry of %d edges", g->num_edges);
    }
    if (!s->h || g->num_nodes > s->node_capacity) {
        free_node_buffers(s);
        int ok = !regrow(&s->h, n * 9 * C) && !regrow(&s->u, n * 9 * C) &&
                 !regrow(&s->ffn_out, n * 9 * C) && !regrow(&s->ffn_gates, n * 2 * H) &&
                 !regrow(&s->ffn_hidden, n * 9 * H) && !regrow(&s->head_hidden, n * 2 * H);
        s->node_capacity = ok ? g->num_nodes : 0;
        if (!ok)
            return umas_fail(err, "out of memory for the features of %d atoms", g->num_nodes);
    }
    if (gradients && (!s->saved || g->num_edges > s->gradient_edge_capacity ||
                      g->num_nodes > s->gradient_node_capacity)) {
        free_gradient_buffers(s);
        size_t e_max =
            e > (size_t)s->gradient_edge_capacity ? e : (size_t)s->gradient_edge_capacity;
        size_t n_max =
            n > (size_t)s->gradient_node_capacity ? n : (size_t)s->gradient_node_capacity;
        s->d_wigner = malloc(sizeof(umas_wigner) * (e_max ? e_max : 1));
        int ok = s->d_wigner && !regrow(&s->d_envelope, e_max) && !regrow(&s->d_distance, e_max) &&
                 !regrow(&s->saved, saved_doubles(w, n_max)) && !regrow(&s->dh, n_max * 9 * C) &&
                 !regrow(&s->du, n_max * 9 * C) && !regrow(&s->d_tmp, n_max * 9 * C) &&
                 !regrow(&s->ffn_work, umas_spectral_atomwise_backward_work((int)n_max, w->H));
        s->gradient_edge_capacity = ok ? (int)e_max : 0;
        s->gradient_node_capacity = ok ? (int)n_max : 0;
        if (!ok)
            return umas_fail(err, "out of memory for the backward pass of %d atoms, %d edges",
                             g->num_nodes, g->num_edges);
    }
    return 0;
}

static void edge_geometry(umas_cpu_state *s, const umas_weights *w, const umas_graph *g) {
    for (int e = 0; e < g->num_edges; e++) {
        const double *r = g->edge_vector + 3 * (size_t)e;
        double d = sqrt(r[0] * r[0] + r[1] * r[1] + r[2] * r[2]);
        double unit[3] = {r[0] / d, r[1] / d, r[2] / d};
        s->distance[e] = d;
        s->envelope[e] = umas_envelope(d, w->cutoff);
        umas_wigner_from_unit_vector(unit, &s->wigner[e]);
    }
}

void umas_cpu_radial_input(umas_cpu_state *s, const umas_weights *w, const umas_graph *g, int first,
                           int n) {
    for (int k = 0; k < n; k++) {
        int e = first + k;
        double *a = s->radial_input + (size_t)k * w->F;
        int zs = g->atomic_numbers[g->edge_source[e]], zt = g->atomic_numbers[g->edge_target[e]];
        umas_gaussian_forward(&s->basis, s->distance[e], a);
        memcpy(a + w->B, w->source_embedding + (size_t)zs * w->Ce, sizeof(double) * w->Ce);
        memcpy(a + w->B + w->Ce, w->target_embedding + (size_t)zt * w->Ce, sizeof(double) * w->Ce);
    }
}

umas_edge_chunk umas_cpu_edge_chunk(const umas_cpu_state *s, const umas_graph *g, int first) {
    int n = g->num_edges - first < s->chunk ? g->num_edges - first : s->chunk;
    umas_edge_chunk c = {n, g->edge_source + first, g->edge_target + first, s->wigner + first,
                         s->envelope + first};
    return c;
}

void umas_cpu_gaussians_backward(umas_cpu_state *s, const umas_weights *w, int first, int n) {
    for (int k = 0; k < n; k++)
        s->d_distance[first + k] += umas_gaussian_backward(&s->basis, s->distance[first + k],
                                                           s->d_gaussians + (size_t)k * w->B);
}

/* The edges [first, first + chunk) and their radial MLP output: s->radial [n][mlp out]. */
static umas_edge_chunk radial_chunk(umas_cpu_state *s, const umas_weights *w, const umas_graph *g,
                                    const umas_radial_mlp *mlp, int first) {
    umas_edge_chunk c = umas_cpu_edge_chunk(s, g, first);
    umas_cpu_radial_input(s, w, g, first, c.count);
    umas_radial_mlp_forward(mlp, c.count, s->radial_input, &s->radial_saved, s->radial);
    return c;
}

/* Backward of radial_chunk for its distances: s->d_radial -> dE/dd added to d_distance. */
static void radial_chunk_backward(umas_cpu_state *s, const umas_weights *w,
                                  const umas_radial_mlp *mlp, int first, int n) {
    umas_radial_mlp_backward(mlp, n, &s->radial_saved, s->d_radial, s->d_gaussians, w->B,
                             s->radial_work);
    umas_cpu_gaussians_backward(s, w, first, n);
}

static void record_trace(umas_context *ctx, int stage, const double *x, int nodes) {
    if (!ctx->trace)
        return;
    size_t n = (size_t)nodes * 9 * ctx->weights.C;
    memcpy(ctx->trace + (size_t)stage * n, x, sizeof(double) * n);
}

static void embed_nodes(const umas_weights *w, const umas_graph *g, double *h) {
    int C = w->C;
    memset(h, 0, sizeof(double) * (size_t)g->num_nodes * 9 * C);
    for (int n = 0; n < g->num_nodes; n++) {
        const double *sphere = w->sphere_embedding + (size_t)g->atomic_numbers[n] * C;
        for (int c = 0; c < C; c++)
            h[(size_t)n * 9 * C + c] = sphere[c] + w->system_embedding[c];
    }
}

static void edge_degree(umas_cpu_state *s, const umas_weights *w, const umas_graph *g) {
    for (int first = 0; first < g->num_edges; first += s->chunk) {
        umas_edge_chunk edges = radial_chunk(s, w, g, &w->degree_radial, first);
        umas_edge_degree_forward(w->C, &edges, s->radial, s->h);
    }
}

/* u = norm_1(h) + c_sys on l = 0: the input of the block's messages. */
static void message_input(const umas_weights *w, const umas_block_weights *b, int N,
                          const double *h, double *u) {
    int C = w->C;
    umas_rms_norm_forward(&b->norm_1, N, C, h, u);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            u[(size_t)n * 9 * C + c] += w->system_embedding[c];
}

/* One block on s->h. With `save` (the backward will run), keeps the block input and the
 * features after the messages in save[0], save[1]. */
static void block_forward(umas_context *ctx, int layer, const umas_graph *g, double *save) {
    umas_cpu_state *s = ctx->backend_state;
    const umas_weights *w = &ctx->weights;
    const umas_block_weights *b = &w->blocks[layer];
    int N = g->num_nodes, C = w->C, H = w->H;
    size_t size = (size_t)N * 9 * C;

    umas_halo_refresh(ctx, s->h, N, 9 * C); /* ghosts read by this block's messages */
    if (save)
        memcpy(save, s->h, sizeof(double) * size);
    message_input(w, b, N, s->h, s->u);
    for (int first = 0; first < g->num_edges; first += s->chunk)
        s->messages->forward(ctx, g, layer, first, s->u, s->h);
    if (save)
        memcpy(save + size, s->h, sizeof(double) * size);

    umas_rms_norm_forward(&b->norm_2, N, C, s->h, s->u);
    umas_spectral_atomwise_forward(b, N, C, H, s->u, s->ffn_out, s->ffn_gates, s->ffn_hidden);
    for (size_t k = 0; k < size; k++)
        s->h[k] += s->ffn_out[k];

    umas_balance_forward(ctx, s->h, N, g->num_energy_nodes, C);
}

/* Backward of one block: s->dh holds dE/d(block output) and becomes dE/d(block input). */
static void block_backward(umas_context *ctx, int layer, const umas_graph *g, const double *save) {
    umas_cpu_state *s = ctx->backend_state;
    const umas_weights *w = &ctx->weights;
    const umas_block_weights *b = &w->blocks[layer];
    int N = g->num_nodes, C = w->C, H = w->H;
    size_t size = (size_t)N * 9 * C;
    const double *h_in = save, *h_mid = save + size;

    umas_balance_backward(ctx, s->dh, N, g->num_energy_nodes, C);

    /* h_out = h_mid + FFN(norm_2(h_mid)) */
    umas_rms_norm_forward(&b->norm_2, N, C, h_mid, s->u);
    umas_spectral_atomwise_backward(b, N, C, H, s->u, s->dh, s->d_tmp, s->ffn_work);
    umas_rms_norm_backward(&b->norm_2, N, C, h_mid, s->d_tmp, s->du);
    for (size_t k = 0; k < size; k++)
        s->dh[k] += s->du[k];

    /* h_mid = h_in + messages(u), u = norm_1(h_in) + c_sys */
    message_input(w, b, N, h_in, s->u);
    memset(s->du, 0, sizeof(double) * size);
    for (int first = 0; first < g->num_edges; first += s->chunk)
        s->messages->backward(ctx, g, layer, first, s->u, s->dh, s->du);
    umas_rms_norm_backward(&b->norm_1, N, C, h_in, s->du, s->d_tmp);
    for (size_t k = 0; k < size; k++)
        s->dh[k] += s->d_tmp[k];
    umas_halo_sum_into_owners(ctx, s->dh, N, g->num_energy_nodes, 9 * C);
}

/* output[n] = head MLP of the final l = 0 features s->u[n][0], model units. */
static void energy_head(umas_cpu_state *s, const umas_weights *w, int N, double *output) {
    int H = w->H;
    double *h1 = s->head_hidden, *h2 = s->head_hidden + (size_t)N * H;
    umas_linear_forward(&w->head[0], N, s->u, 9 * w->C, h1, H);
    umas_silu_forward(h1, (size_t)N * H);
    umas_linear_forward(&w->head[1], N, h1, H, h2, H);
    umas_silu_forward(h2, (size_t)N * H);
    umas_linear_forward(&w->head[2], N, h2, H, output, 1);
}

/* du[n] = d(sum of the energy nodes' head outputs) / d(final features u[n]): non-zero on l = 0
 * only. Recomputes the head's pre-activations from s->u. */
static void energy_head_backward(umas_cpu_state *s, const umas_weights *w, int N,
                                 int energy_nodes) {
    int C = w->C, H = w->H;
    double *z1 = s->head_hidden, *z2 = s->head_hidden + (size_t)N * H;
    double *a1 = s->ffn_hidden; /* [N][H] scratch */
    umas_linear_forward(&w->head[0], N, s->u, 9 * C, z1, H);
    for (size_t k = 0; k < (size_t)N * H; k++)
        a1[k] = umas_silu(z1[k]);
    umas_linear_forward(&w->head[1], N, a1, H, z2, H);
    for (int n = 0; n < N; n++) /* dE/dz2 = w3 * SiLU'(z2) for energy nodes */
        for (int k = 0; k < H; k++)
            z2[(size_t)n * H + k] =
                n < energy_nodes
                    ? w->head[2].weight[k] * umas_silu_derivative(z2[(size_t)n * H + k])
                    : 0.0;
    umas_linear_backward(&w->head[1], N, z2, H, a1, H, H, 0); /* dE/da1 */
    for (size_t k = 0; k < (size_t)N * H; k++)
        a1[k] *= umas_silu_derivative(z1[k]);
    memset(s->du, 0, sizeof(double) * (size_t)N * 9 * C);
    umas_linear_backward(&w->head[0], N, a1, H, s->du, 9 * C, C, 0);
}

/* The backward sweep: dE/dr per edge (eV/A: model units times rmsd) into ctx->edge_gradient. */
static void backward(umas_context *ctx, const umas_graph *g) {
    umas_cpu_state *s = ctx->backend_state;
    const umas_weights *w = &ctx->weights;
    int N = g->num_nodes, E = g->num_edges, L = w->num_layers;
    size_t size = (size_t)N * 9 * w->C;

    memset(s->d_wigner, 0, sizeof(umas_wigner) * (size_t)E);
    memset(s->d_envelope, 0, sizeof(double) * (size_t)E);
    memset(s->d_distance, 0, sizeof(double) * (size_t)E);

    energy_head_backward(s, w, N, g->num_energy_nodes);
    umas_rms_norm_backward(&w->final_norm, N, w->C, s->saved + 2 * L * size, s->du, s->dh);
    for (int l = L - 1; l >= 0; l--)
        block_backward(ctx, l, g, s->saved + 2 * l * size);
    if (s->messages->finish_backward)
        s->messages->finish_backward(ctx, g);
    for (int first = 0; first < E; first += s->chunk) {
        umas_edge_chunk edges = radial_chunk(s, w, g, &w->degree_radial, first);
        umas_edge_degree_backward(w->C, &edges, s->radial, s->dh, s->d_radial, s->d_wigner + first,
                                  s->d_envelope + first);
        radial_chunk_backward(s, w, &w->degree_radial, first, edges.count);
    }

    for (int e = 0; e < E; e++) {
        const double *r = g->edge_vector + 3 * (size_t)e;
        double d = s->distance[e], unit[3] = {r[0] / d, r[1] / d, r[2] / d};
        double dd = s->d_distance[e] + s->d_envelope[e] * umas_envelope_derivative(d, w->cutoff);
        double *dr = ctx->edge_gradient + 3 * (size_t)e;
        for (int k = 0; k < 3; k++)
            dr[k] = dd * unit[k];
        umas_wigner_backward(&s->generators, &s->wigner[e], &s->d_wigner[e], unit, d, dr);
        for (int k = 0; k < 3; k++)
            dr[k] *= w->energy_rmsd;
    }
}

static double seconds_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int umas_cpu_compute(umas_context *ctx, const umas_graph *g, umas_result *result, int gradients,
                     umas_error *err) {
    umas_cpu_state *s = ctx->backend_state;
    const umas_weights *w = &ctx->weights;
    int N = g->num_nodes, L = w->num_layers;
    if (reserve(ctx, g, gradients, err))
        return -1;
    if (gradients && !s->saved) /* cannot happen after reserve; keeps the analyzer informed */
        return umas_fail(err, "internal error: backward buffers missing");
    if (ctx->keep_trace) {
        free(ctx->trace);
        ctx->trace = malloc(sizeof(double) * (size_t)(L + 3) * N * 9 * w->C + 1);
        ctx->trace_nodes = N;
        if (!ctx->trace)
            return umas_fail(err, "out of memory for the trace");
    }
    size_t size = (size_t)N * 9 * w->C;
    double start = seconds_now();

    edge_geometry(s, w, g);
    if (s->messages->begin && s->messages->begin(ctx, g, gradients, err))
        return -1;
    embed_nodes(w, g, s->h);
    record_trace(ctx, 0, s->h, N);
    edge_degree(s, w, g);
    record_trace(ctx, 1, s->h, N);
    for (int l = 0; l < L; l++) {
        block_forward(ctx, l, g, gradients ? s->saved + 2 * l * size : NULL);
        record_trace(ctx, 2 + l, s->h, N);
    }
    if (gradients)
        memcpy(s->saved + 2 * L * size, s->h, sizeof(double) * size);
    umas_rms_norm_forward(&w->final_norm, N, w->C, s->h, s->u);
    record_trace(ctx, 2 + L, s->u, N);
    energy_head(s, w, N, ctx->node_output);

    double middle = seconds_now();
    result->seconds_forward = middle - start;
    result->seconds_backward = 0;
    if (gradients) {
        backward(ctx, g);
        result->seconds_backward = seconds_now() - middle;
    }
    return 0;
}

/* The `general` messages: each block's radial MLP on the chunk, then the straightforward
 * edgewise pipeline (edgewise.c). */
static void general_messages(umas_context *ctx, const umas_graph *g, int layer, int first,
                             const double *u, double *h) {
    umas_cpu_state *s = ctx->backend_state;
    const umas_weights *w = &ctx->weights;
    const umas_block_weights *b = &w->blocks[layer];
    umas_edge_chunk edges = radial_chunk(s, w, g, &b->radial, first);
    umas_edgewise_forward(b, w->C, w->H, &edges, s->radial, u, h, &s->work);
}

static void general_messages_backward(umas_context *ctx, const umas_graph *g, int layer, int first,
                                      const double *u, const double *dh, double *du) {
    umas_cpu_state *s = ctx->backend_state;
    const umas_weights *w = &ctx->weights;
    const umas_block_weights *b = &w->blocks[layer];
    umas_edge_chunk edges = radial_chunk(s, w, g, &b->radial, first);
    umas_edgewise_backward(b, w->C, w->H, &edges, s->radial, u, dh, du, s->d_radial,
                           s->d_wigner + first, s->d_envelope + first, &s->work);
    radial_chunk_backward(s, w, &b->radial, first, edges.count);
}

static const umas_cpu_messages general_messages_ops = {
    .forward = general_messages,
    .backward = general_messages_backward,
};

static int general_create(umas_context *ctx, umas_error *err) {
    return umas_cpu_create(ctx, &general_messages_ops, err);
}

const umas_backend umas_backend_general_cpu = {
    .name = "general",
    .device = "cpu",
    .create = general_create,
    .compute = umas_cpu_compute,
    .destroy = umas_cpu_destroy,
    .bytes = umas_cpu_bytes,
};
