/* backend_general.c - the `general` backend on the CPU, float64: the straightforward reference
 * path of the eSCN-MD forward pass (spec 14.1):
 *
 *   geometry   per edge: d, envelope, Wigner D
 *   embedding  h[n][0] = sphere_embedding[Z_n] + c_sys, other coefficients 0
 *   degree     h[target] += edge-degree messages
 *   block l    u = norm_1(h) (+ c_sys on l = 0);  h += messages(u)
 *              h += FFN(norm_2(h));  h = balance(h)
 *   output     energy_n = head(final_norm(h)[n][0])
 *
 * Edges are processed in chunks so the per-edge activations ([E][9][2C] and friends) never
 * exist for all edges at once: memory is O(nodes + chunk), plus 35 doubles of geometry per edge.
 */
#include "context.h"
#include "edgewise.h"
#include "error.h"
#include "nn.h"
#include "radial.h"
#include "so3.h"
#include "wigner.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { CHUNK_BYTES = 32 << 20 }; /* target size of the per-chunk work space */

typedef struct general_state {
    umas_gaussian_basis basis;
    int chunk; /* edges per chunk */

    int edge_capacity;
    double *distance;    /* [E] */
    double *envelope;    /* [E] */
    umas_wigner *wigner; /* [E] */

    int node_capacity;
    double *h;           /* [N][9][C] the residual stream */
    double *u;           /* [N][9][C] normed input of the current sub-layer */
    double *ffn_out;     /* [N][9][C] */
    double *ffn_gates;   /* [N][2H] */
    double *ffn_hidden;  /* [N][9][H] */
    double *head_hidden; /* [N][2H] */
    double *node_output; /* [N] energy head output, model units */

    double *radial_input;   /* [chunk][F] Gaussians, source and target element embeddings */
    double *radial_hidden;  /* [chunk][2 Ce] */
    double *radial;         /* [chunk][12C] */
    double *edgewise_space; /* umas_edgewise_work_doubles(chunk) */
    umas_edgewise_work work;
} general_state;

static size_t chunk_doubles_per_edge(const umas_weights *w) {
    return (size_t)w->F + 2 * (size_t)w->Ce + 12 * (size_t)w->C +
           umas_edgewise_work_doubles(1, w->C, w->H);
}

static void free_node_buffers(general_state *s) {
    free(s->h), free(s->u), free(s->ffn_out), free(s->ffn_gates), free(s->ffn_hidden);
    free(s->head_hidden), free(s->node_output);
}

static void general_destroy(umas_context *ctx) {
    general_state *s = ctx->backend_state;
    umas_gaussian_basis_free(&s->basis);
    free(s->distance), free(s->envelope), free(s->wigner);
    free_node_buffers(s);
    free(s->radial_input), free(s->radial_hidden), free(s->radial), free(s->edgewise_space);
    free(s);
    ctx->backend_state = NULL;
}

static int general_create(umas_context *ctx, umas_error *err) {
    const umas_weights *w = &ctx->weights;
    general_state *s = calloc(1, sizeof *s);
    if (!s)
        return umas_fail(err, "out of memory");
    ctx->backend_state = s;
    size_t per_edge = chunk_doubles_per_edge(w);
    s->chunk = (int)(CHUNK_BYTES / (per_edge * sizeof(double)));
    s->chunk = s->chunk < 64 ? 64 : s->chunk > 8192 ? 8192 : s->chunk;
    s->radial_input = malloc(sizeof(double) * (size_t)s->chunk * w->F);
    s->radial_hidden = malloc(sizeof(double) * (size_t)s->chunk * 2 * w->Ce);
    s->radial = malloc(sizeof(double) * (size_t)s->chunk * 12 * w->C);
    s->edgewise_space = malloc(sizeof(double) * umas_edgewise_work_doubles(s->chunk, w->C, w->H));
    if (umas_gaussian_basis_init(&s->basis, w->B, w->cutoff) || !s->radial_input ||
        !s->radial_hidden || !s->radial || !s->edgewise_space)
        return umas_fail(err, "out of memory for the general backend's work space");
    umas_edgewise_work_bind(&s->work, s->edgewise_space, s->chunk, w->C, w->H);
    return 0;
}

/* Work space: per chunk, per edge (geometry) and per node (features, FFN, head). */
static size_t general_bytes(const umas_context *ctx) {
    const general_state *s = ctx->backend_state;
    const umas_weights *w = &ctx->weights;
    size_t per_node = sizeof(double) * (27 * (size_t)w->C + 13 * (size_t)w->H + 1);
    size_t per_edge = 2 * sizeof(double) + sizeof(umas_wigner);
    return sizeof(double) * (size_t)s->chunk * chunk_doubles_per_edge(w) +
           (size_t)s->edge_capacity * per_edge + (size_t)s->node_capacity * per_node;
}

/* Grows the per-edge and per-node buffers to the graph (never shrinks: MD graphs are stable). */
static int reserve(umas_context *ctx, const umas_graph *g, umas_error *err) {
    general_state *s = ctx->backend_state;
    const umas_weights *w = &ctx->weights;
    size_t C = (size_t)w->C, H = (size_t)w->H;
    if (g->num_edges > s->edge_capacity) {
        free(s->distance), free(s->envelope), free(s->wigner);
        size_t e = (size_t)g->num_edges;
        s->distance = malloc(sizeof(double) * e);
        s->envelope = malloc(sizeof(double) * e);
        s->wigner = malloc(sizeof(umas_wigner) * e);
        s->edge_capacity = (s->distance && s->envelope && s->wigner) ? g->num_edges : 0;
        if (!s->edge_capacity)
            return umas_fail(err, "out of memory for the geometry of %d edges", g->num_edges);
    }
    if (g->num_nodes > s->node_capacity) {
        free_node_buffers(s);
        size_t n = (size_t)g->num_nodes;
        s->h = malloc(sizeof(double) * n * 9 * C);
        s->u = malloc(sizeof(double) * n * 9 * C);
        s->ffn_out = malloc(sizeof(double) * n * 9 * C);
        s->ffn_gates = malloc(sizeof(double) * n * 2 * H);
        s->ffn_hidden = malloc(sizeof(double) * n * 9 * H);
        s->head_hidden = malloc(sizeof(double) * n * 2 * H);
        s->node_output = malloc(sizeof(double) * n);
        int ok = s->h && s->u && s->ffn_out && s->ffn_gates && s->ffn_hidden && s->head_hidden &&
                 s->node_output;
        s->node_capacity = ok ? g->num_nodes : 0;
        if (!ok)
            return umas_fail(err, "out of memory for the features of %d atoms", g->num_nodes);
    }
    return 0;
}

static void edge_geometry(general_state *s, const umas_weights *w, const umas_graph *g) {
    for (int e = 0; e < g->num_edges; e++) {
        const double *r = g->edge_vector + 3 * (size_t)e;
        double d = sqrt(r[0] * r[0] + r[1] * r[1] + r[2] * r[2]);
        double unit[3] = {r[0] / d, r[1] / d, r[2] / d};
        s->distance[e] = d;
        s->envelope[e] = umas_envelope(d, w->cutoff);
        umas_wigner_from_unit_vector(unit, &s->wigner[e]);
    }
}

/* a_e = [gaussians(d_e) | source_embedding[Z_s] | target_embedding[Z_t]] for edges
 * [first, first + n): radial_input [n][F]. */
static void radial_input(general_state *s, const umas_weights *w, const umas_graph *g, int first,
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

/* The edges [first, first + chunk) and their radial MLP output: s->radial [n][mlp out]. */
static umas_edge_chunk radial_chunk(general_state *s, const umas_weights *w, const umas_graph *g,
                                    const umas_radial_mlp *mlp, int first) {
    int n = g->num_edges - first < s->chunk ? g->num_edges - first : s->chunk;
    radial_input(s, w, g, first, n);
    umas_radial_mlp_forward(mlp, n, s->radial_input, s->radial_hidden,
                            s->radial_hidden + (size_t)n * w->Ce, s->radial);
    umas_edge_chunk c = {n, g->edge_source + first, g->edge_target + first, s->wigner + first,
                         s->envelope + first};
    return c;
}

static void record_trace(umas_context *ctx, int stage, const double *x, int nodes) {
    if (!ctx->trace)
        return;
    size_t n = (size_t)nodes * 9 * ctx->weights.C;
    memcpy(ctx->trace + (size_t)stage * n, x, sizeof(double) * n);
}

/* Charge/spin balancing of l = 0 channels (spec 8): their sums over the system become
 * charge (resp. spin - 1). */
static void balance(const int *channels, int count, double target, double *h, int nodes, int C) {
    for (int k = 0; k < count; k++) {
        int c = channels[k];
        double sum = 0;
        for (int n = 0; n < nodes; n++)
            sum += h[(size_t)n * 9 * C + c];
        double shift = (sum - target) / nodes;
        for (int n = 0; n < nodes; n++)
            h[(size_t)n * 9 * C + c] -= shift;
    }
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

static void edge_degree(general_state *s, const umas_weights *w, const umas_graph *g) {
    for (int first = 0; first < g->num_edges; first += s->chunk) {
        umas_edge_chunk edges = radial_chunk(s, w, g, &w->degree_radial, first);
        umas_edge_degree_forward(w->C, &edges, s->radial, s->h);
    }
}

static void block_forward(umas_context *ctx, const umas_block_weights *b, const umas_graph *g) {
    general_state *s = ctx->backend_state;
    const umas_weights *w = &ctx->weights;
    int N = g->num_nodes, C = w->C, H = w->H;

    umas_rms_norm_forward(&b->norm_1, N, C, s->h, s->u);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            s->u[(size_t)n * 9 * C + c] += w->system_embedding[c];
    for (int first = 0; first < g->num_edges; first += s->chunk) {
        umas_edge_chunk edges = radial_chunk(s, w, g, &b->radial, first);
        umas_edgewise_forward(b, C, H, &edges, s->radial, s->u, s->h, &s->work);
    }

    umas_rms_norm_forward(&b->norm_2, N, C, s->h, s->u);
    umas_spectral_atomwise_forward(b, N, C, H, s->u, s->ffn_out, s->ffn_gates, s->ffn_hidden);
    for (size_t k = 0; k < (size_t)N * 9 * C; k++)
        s->h[k] += s->ffn_out[k];

    balance(w->charge_balanced, w->num_charge_balanced, ctx->charge, s->h, N, C);
    balance(w->spin_balanced, w->num_spin_balanced, ctx->spin - 1.0, s->h, N, C);
}

/* node_output[n] = head MLP of the final l = 0 features, model units. */
static void energy_head(general_state *s, const umas_weights *w, int N) {
    int H = w->H;
    double *h1 = s->head_hidden, *h2 = s->head_hidden + (size_t)N * H;
    umas_linear_forward(&w->head[0], N, s->u, 9 * w->C, h1, H);
    umas_silu_forward(h1, (size_t)N * H);
    umas_linear_forward(&w->head[1], N, h1, H, h2, H);
    umas_silu_forward(h2, (size_t)N * H);
    umas_linear_forward(&w->head[2], N, h2, H, s->node_output, 1);
}

static int general_compute(umas_context *ctx, const umas_graph *g, umas_result *result,
                           umas_error *err) {
    general_state *s = ctx->backend_state;
    const umas_weights *w = &ctx->weights;
    int N = g->num_nodes;
    if ((w->num_charge_balanced || w->num_spin_balanced) && g->num_energy_nodes != N)
        return umas_fail(err, "this model balances charge/spin channels over the whole system;"
                              " that needs every atom on one rank (no ghost nodes) for now");
    if (reserve(ctx, g, err))
        return -1;
    if (ctx->keep_trace) {
        free(ctx->trace);
        ctx->trace = malloc(sizeof(double) * (size_t)(w->num_layers + 3) * N * 9 * w->C + 1);
        ctx->trace_nodes = N;
        if (!ctx->trace)
            return umas_fail(err, "out of memory for the trace");
    }

    edge_geometry(s, w, g);
    embed_nodes(w, g, s->h);
    record_trace(ctx, 0, s->h, N);
    edge_degree(s, w, g);
    record_trace(ctx, 1, s->h, N);
    for (int l = 0; l < w->num_layers; l++) {
        block_forward(ctx, &w->blocks[l], g);
        record_trace(ctx, 2 + l, s->h, N);
    }
    umas_rms_norm_forward(&w->final_norm, N, w->C, s->h, s->u);
    record_trace(ctx, 2 + w->num_layers, s->u, N);
    energy_head(s, w, N);

    /* E = rmsd * sum_n eps_n + mean + sum_n ref[Z_n], in float64; the mean is spread evenly
     * over the system's atoms so that per-node energies sum to E. */
    double mean_per_atom = w->energy_mean / ctx->num_atoms;
    result->energy = 0;
    for (int n = 0; n < N; n++) {
        double e = 0;
        if (n < g->num_energy_nodes) {
            e = w->energy_rmsd * s->node_output[n] + w->element_references[g->atomic_numbers[n]] +
                mean_per_atom;
            result->energy += e;
        }
        if (result->node_energy)
            result->node_energy[n] = e;
    }
    return 0;
}

const umas_backend umas_backend_general_cpu = {
    .name = "general",
    .device = "cpu",
    .create = general_create,
    .compute = general_compute,
    .destroy = general_destroy,
    .bytes = general_bytes,
};
