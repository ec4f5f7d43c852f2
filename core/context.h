/* context.h - a model specialised for one system, and the backend table. Internal. */
#ifndef UMAS_CONTEXT_H
#define UMAS_CONTEXT_H

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
} umas_backend;

extern const umas_backend umas_backend_general_cpu;
#ifdef UMAS_HAVE_CUDA
extern const umas_backend umas_backend_general_cuda;
#endif

struct umas_context {
    const umas_model *model;
    const umas_task *task;
    const umas_backend *backend;
    int charge, spin, num_atoms; /* the system of the merge */
    double *expert_coefficients; /* [K] */
    double *routing_input;       /* [2C] composition embedding mean, then c_sys */
    umas_weights weights;        /* merged, float64 */
    void *backend_state;
    double *node_output; /* [N] energy head output, model units, written by the backend */
    int node_output_capacity;
    double *edge_gradient; /* [E][3] dE/dr per edge, written by the backend */
    int edge_gradient_capacity;

    /* For tests: when keep_trace is set, the backend copies the node features [N][9][C] after
     * each stage into trace: embedding, edge degree, each block, final norm (num_layers + 3). */
    int keep_trace;
    double *trace;
    int trace_nodes;
};

#endif
