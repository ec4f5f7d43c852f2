/* context.h - a model specialised for one system, and the backend table. Internal. */
#ifndef UMAS_CONTEXT_H
#define UMAS_CONTEXT_H

#include "balance.h"
#include "model.h"
#include "weights.h"

/* A backend is a table of functions over the same context state (the merged weights).
 * `general` is the straightforward reference; the others must agree with it. */
typedef struct umas_backend {
    const char *name;
    const char *device;
    int (*create)(umas_context *ctx, umas_error *err);
    /* graph is validated by umas_compute before this is called. Writes the energy head's
     * output per node (model units) into ctx->node_output [N] and the seconds_* of result;
     * when `gradients` is set also dE/dr per edge (eV/A) into ctx->edge_gradient [E][3].
     * umas_compute turns these into energies, forces and virials. */
    int (*compute)(umas_context *ctx, const umas_graph *graph, umas_result *result, int gradients,
                   umas_error *err);
    void (*destroy)(umas_context *ctx);
    size_t (*bytes)(const umas_context *ctx);

    /* Optional neighbour-list route (NULL: umas_compute_positions forms and filters the edges on
     * the host and calls compute). set_neighbors receives ctx->neighbors after it is stored;
     * compute_positions fills node_output like compute and, from the edges within the cutoff,
     * result's forces, virial, node_virial and edge_gradient (over the whole list) itself. */
    int (*set_neighbors)(umas_context *ctx, umas_error *err);
    int (*compute_positions)(umas_context *ctx, const double *positions, const double cell[9],
                             umas_result *result, int gradients, umas_error *err);
} umas_backend;

/* The context's copy of the caller's neighbour list (umas_set_neighbors), and the host route's
 * per-step graph of the edges within the cutoff. */
typedef struct umas_neighbor_state {
    int num_nodes, num_energy_nodes, num_edges;
    int *atomic_numbers;  /* [N] */
    int *source, *target; /* [E] */
    int *image;           /* [E][3] */
    int has_images;
    /* host route, per step: kept edges */
    int *kept;           /* [E] list index of each kept edge */
    int *kept_source;    /* [E] */
    int *kept_target;    /* [E] */
    double *kept_vector; /* [E][3] */
} umas_neighbor_state;

extern const umas_backend umas_backend_general_cpu;
extern const umas_backend umas_backend_fast_cpu;
#ifdef UMAS_HAVE_CUDA
extern const umas_backend umas_backend_general_cuda;
extern const umas_backend umas_backend_fast_cuda;
extern const umas_backend umas_backend_fast_gpu_cuda;
#endif

/* Arithmetic of the matrix products (umas_options.precision). */
typedef enum umas_precision {
    UMAS_PRECISION_EXACT,  /* fp64 on the CPU, fp32 on the GPU */
    UMAS_PRECISION_3XTF32, /* GPU: three TF32 tensor-core products (high/low split) */
    UMAS_PRECISION_TF32,   /* GPU: one TF32 tensor-core product */
    UMAS_PRECISION_OZAKI,  /* GPU: fp32-accurate products from int8 slices (Hopper) */
} umas_precision;

struct umas_context {
    const umas_model *model;
    const umas_task *task;
    const umas_backend *backend;
    umas_precision precision;
    int charge, spin, num_atoms; /* the system of the merge */
    double *expert_coefficients; /* [K] */
    double *routing_input;       /* [2C] composition embedding mean, then c_sys */
    umas_weights weights;        /* merged, float64 */
    umas_balance balance;        /* charge/spin balanced channels and their targets */
    /* umas_system.sum_over_processes and its data (NULL: one process holds the system) */
    void (*sum_over_processes)(double *values, int count, void *data);
    void *sum_data;
    /* umas_system's halo exchange (NULL: none; core/halo.h) */
    void (*refresh_ghosts)(double *rows, int num_nodes, int width, void *data);
    void (*sum_into_owners)(double *rows, int num_nodes, int width, void *data);
    void *halo_data;
    void *backend_state;
    double *node_output; /* [N] energy head output, model units, written by the backend */
    int node_output_capacity;
    double *edge_gradient; /* [E][3] dE/dr per edge, written by the backend */
    int edge_gradient_capacity;
    umas_neighbor_state neighbors; /* num_nodes < 0 until umas_set_neighbors */

    /* For tests: when keep_trace is set, the backend copies the node features [N][9][C] after
     * each stage into trace: embedding, edge degree, each block, final norm (num_layers + 3). */
    int keep_trace;
    double *trace;
    int trace_nodes;
};

/* The neighbour route's dE/dr over the whole list [E][3]: the gradients of the `kept` edges
 * (ctx->edge_gradient, in the order of ctx->neighbors.kept) at their list positions, 0 for the
 * edges beyond the cutoff. (neighbor_route.c) */
void umas_list_edge_gradient(const umas_context *ctx, int kept, double *list_gradient);

/* Frees the stored neighbour list and marks it absent (num_nodes -1). (context.c) */
void umas_neighbor_state_free(umas_neighbor_state *nb);

/* Shared by umas_compute and the neighbour route (compute.c): */
/* Everything a backend may rely on: indices in range, finite non-zero edge vectors. */
int umas_check_graph(const umas_context *ctx, const umas_graph *g, umas_error *err);
/* Whether the result asks for anything of the backward pass. */
int umas_wants_gradients(const umas_result *result);
/* ctx->node_output [N] and, with gradients, ctx->edge_gradient [E][3] large enough. */
int umas_reserve_outputs(umas_context *ctx, int num_nodes, int num_edges, int gradients,
                         umas_error *err);
/* result->energy and node_energy from ctx->node_output (spec 10). */
void umas_node_energies(const umas_context *ctx, const umas_graph *g, umas_result *result);
/* Forces, virial and per-node virial of result from dE/dr per edge. */
void umas_scatter_edge_gradients(const umas_graph *g, const double *gradient, umas_result *result);

#endif
