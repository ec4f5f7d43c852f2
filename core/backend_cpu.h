/* backend_cpu.h - the CPU float64 driver shared by the `general` and `umas_fast` backends
 * (implemented in backend_general.c). Internal.
 *
 * The driver owns the forward pass and its backward sweep (geometry, embedding, edge-degree
 * embedding, norms, FFN, balancing, head, dE/dr per edge) and the per-edge and per-chunk
 * buffers. A backend supplies only how a block's messages are computed over a chunk of edges
 * (umas_cpu_messages): the radial MLP that scales conv1's input and the SO(2) convolutions. */
#ifndef UMAS_BACKEND_CPU_H
#define UMAS_BACKEND_CPU_H

#include "context.h"
#include "edgewise.h"
#include "nn.h"
#include "radial.h"
#include "wigner.h"

typedef struct umas_cpu_messages {
    /* Once per compute, after the edge geometry (s->distance, envelope, wigner), before the
     * edge-degree embedding. May be NULL. */
    int (*begin)(umas_context *ctx, const umas_graph *g, int gradients, umas_error *err);
    /* h [N][9][C] += the messages of block `layer` from u [N][9][C] over the edges
     * [first, first + chunk). */
    void (*forward)(umas_context *ctx, const umas_graph *g, int layer, int first, const double *u,
                    double *h);
    /* Backward of forward from dh = dE/dh [N][9][C]: du [N][9][C] += dE/du; the chunk's dE/dD,
     * dE/denv and dE/dd accumulate in s->d_wigner, d_envelope, d_distance. */
    void (*backward)(umas_context *ctx, const umas_graph *g, int layer, int first, const double *u,
                     const double *dh, double *du);
    /* Once after every block's backward, before the edge-degree backward. May be NULL. */
    void (*finish_backward)(umas_context *ctx, const umas_graph *g);
} umas_cpu_messages;

typedef struct umas_cpu_state {
    const umas_cpu_messages *messages;
    void *extension; /* the backend's own state (umas_fast: packed weights, unified radial) */
    umas_gaussian_basis basis;
    umas_wigner_generators generators;
    int chunk; /* edges per chunk */

    /* per edge, [E] */
    int edge_capacity, gradient_edge_capacity;
    double *distance;
    double *envelope;
    umas_wigner *wigner;
    umas_wigner *d_wigner; /* dE/dD */
    double *d_envelope;    /* dE/denv */
    double *d_distance;    /* dE/dd */

    /* per node */
    int node_capacity, gradient_node_capacity;
    double *h;               /* [N][9][C] the residual stream */
    double *u;               /* [N][9][C] normed input of the current sub-layer */
    double *ffn_out;         /* [N][9][C] */
    double *ffn_gates;       /* [N][2H] */
    double *ffn_hidden;      /* [N][9][H] */
    double *head_hidden;     /* [N][2H] */
    double *saved;           /* [2 L + 1][N][9][C] block inputs, post-message features, final */
    double *dh, *du, *d_tmp; /* [N][9][C] adjoints */
    double *ffn_work;        /* umas_spectral_atomwise_backward_work(N) */

    /* per chunk */
    double *radial_input;           /* [chunk][F] Gaussians, source and target element embeddings */
    umas_radial_saved radial_saved; /* 3 x [chunk][Ce] */
    double *radial;                 /* [chunk][12C] */
    double *d_radial;               /* [chunk][12C] */
    double *d_gaussians;            /* [chunk][B] */
    double *radial_work;            /* [chunk][2 Ce] */
    double *edgewise_space;
    umas_edgewise_work work;
} umas_cpu_state;

/* The backend table entries of a CPU backend built on the driver. destroy frees the driver's
 * buffers only (a backend frees its extension first). */
int umas_cpu_create(umas_context *ctx, const umas_cpu_messages *messages, umas_error *err);
int umas_cpu_compute(umas_context *ctx, const umas_graph *g, umas_result *result, int gradients,
                     umas_error *err);
void umas_cpu_destroy(umas_context *ctx);
size_t umas_cpu_bytes(const umas_context *ctx);

/* Helpers for the message hooks. */
/* The chunk of edges starting at `first` (at most s->chunk of them), with their geometry. */
umas_edge_chunk umas_cpu_edge_chunk(const umas_cpu_state *s, const umas_graph *g, int first);
/* s->radial_input [n][F] = [gaussians(d_e) | source_embedding[Z_s] | target_embedding[Z_t]]
 * for the edges [first, first + n). */
void umas_cpu_radial_input(umas_cpu_state *s, const umas_weights *w, const umas_graph *g, int first,
                           int n);
/* d_distance[first + k] += dE/dd from s->d_gaussians [n][B] = dE/d gaussians. */
void umas_cpu_gaussians_backward(umas_cpu_state *s, const umas_weights *w, int first, int n);

#endif
