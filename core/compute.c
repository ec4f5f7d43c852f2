/* compute.c - umas_compute: the graph checked, the backend run, its per-node outputs and per-edge
 * gradients turned into energies, forces and virials (shared with the neighbour route). */
#include "context.h"

#include "balance.h"
#include "error.h"
#include "virial.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Everything a backend may rely on: indices in range, finite non-zero edge vectors. */
int umas_check_graph(const umas_context *ctx, const umas_graph *g, umas_error *err) {
    int z_max = ctx->model->info.max_num_elements;
    if (g->num_nodes < 0 || g->num_edges < 0 || g->num_energy_nodes < 0 ||
        g->num_energy_nodes > g->num_nodes)
        return umas_fail(err, "graph: bad sizes (%d nodes, %d energy nodes, %d edges)",
                         g->num_nodes, g->num_energy_nodes, g->num_edges);
    if (g->num_nodes > 0 && !g->atomic_numbers)
        return umas_fail(err, "graph: atomic_numbers missing");
    if (g->num_edges > 0 && (!g->edge_source || !g->edge_target || !g->edge_vector))
        return umas_fail(err, "graph: edge arrays missing");
    for (int n = 0; n < g->num_nodes; n++)
        if (g->atomic_numbers[n] < 1 || g->atomic_numbers[n] >= z_max)
            return umas_fail(err, "atom %d has atomic number %d; the model knows 1..%d", n,
                             g->atomic_numbers[n], z_max - 1);
    for (int e = 0; e < g->num_edges; e++) {
        int s = g->edge_source[e], t = g->edge_target[e];
        if (s < 0 || s >= g->num_nodes || t < 0 || t >= g->num_nodes)
            return umas_fail(err, "edge %d connects nodes %d -> %d outside 0..%d", e, s, t,
                             g->num_nodes - 1);
        const double *r = g->edge_vector + 3 * (size_t)e;
        double d2 = r[0] * r[0] + r[1] * r[1] + r[2] * r[2];
        if (!isfinite(d2))
            return umas_fail(err,
                             "edge %d (atoms %d -> %d) has a non-finite vector: NaN or inf"
                             " positions?",
                             e, s, t);
        if (d2 == 0.0)
            return umas_fail_atoms(err, s, t,
                                   "edge %d: atoms %d and %d are on top of each other "
                                   "(distance 0)",
                                   e, s, t);
    }
    return 0;
}

/* E = rmsd * sum_n eps_n + mean + sum_n ref[Z_n] over the energy nodes, in float64; the mean is
 * spread evenly over the system's atoms so that per-node energies sum to E (spec 10). */
void umas_node_energies(const umas_context *ctx, const umas_graph *g, umas_result *result) {
    const umas_weights *w = &ctx->weights;
    double mean_per_atom = w->energy_mean / ctx->num_atoms;
    result->energy = 0;
    for (int n = 0; n < g->num_nodes; n++) {
        double e = 0;
        if (n < g->num_energy_nodes) {
            e = w->energy_rmsd * ctx->node_output[n] + w->element_references[g->atomic_numbers[n]] +
                mean_per_atom;
            result->energy += e;
        }
        if (result->node_energy)
            result->node_energy[n] = e;
    }
}

/* Forces, virial and per-node virial from dE/dr per edge (every backend). The edge vector is
 * r_source - r_target: F_source -= dE/dr, F_target += dE/dr; W = -sum_e sym(r_e (x) dE/dr_e). */
void umas_scatter_edge_gradients(const umas_graph *g, const double *gradient, umas_result *result) {
    double virial[6] = {0, 0, 0, 0, 0, 0};
    if (result->forces)
        memset(result->forces, 0, sizeof(double) * 3 * (size_t)g->num_nodes);
    if (result->node_virial)
        memset(result->node_virial, 0, sizeof(double) * 6 * (size_t)g->num_nodes);
    if (result->edge_gradient && g->num_edges > 0)
        memcpy(result->edge_gradient, gradient, sizeof(double) * 3 * (size_t)g->num_edges);
    for (int e = 0; e < g->num_edges; e++) {
        const double *r = g->edge_vector + 3 * (size_t)e, *dr = gradient + 3 * (size_t)e;
        size_t src = (size_t)g->edge_source[e], tgt = (size_t)g->edge_target[e];
        if (result->forces)
            for (int k = 0; k < 3; k++) {
                result->forces[3 * src + k] -= dr[k];
                result->forces[3 * tgt + k] += dr[k];
            }
        double W[6];
        umas_edge_virial(r, dr, W);
        for (int k = 0; k < 6; k++) {
            virial[k] += W[k];
            if (result->node_virial) {
                result->node_virial[6 * src + k] += 0.5 * W[k];
                result->node_virial[6 * tgt + k] += 0.5 * W[k];
            }
        }
    }
    memcpy(result->virial, virial, sizeof virial);
}

/* The result buffers both routes need: node outputs [N] and, with gradients, dE/dr [E][3]. */
int umas_reserve_outputs(umas_context *ctx, int num_nodes, int num_edges, int gradients,
                         umas_error *err) {
    if (gradients && (!ctx->edge_gradient || num_edges > ctx->edge_gradient_capacity)) {
        free(ctx->edge_gradient);
        ctx->edge_gradient = malloc(sizeof(double) * 3 * ((size_t)num_edges + 1));
        ctx->edge_gradient_capacity = ctx->edge_gradient ? num_edges : 0;
        if (!ctx->edge_gradient)
            return umas_fail(err, "out of memory for the gradients of %d edges", num_edges);
    }
    if (!ctx->node_output || num_nodes > ctx->node_output_capacity) {
        free(ctx->node_output);
        ctx->node_output = malloc(sizeof(double) * ((size_t)num_nodes + 1));
        ctx->node_output_capacity = ctx->node_output ? num_nodes : 0;
        if (!ctx->node_output)
            return umas_fail(err, "out of memory for %d atoms", num_nodes);
    }
    return 0;
}

int umas_wants_gradients(const umas_result *result) {
    return result->forces || result->edge_gradient || result->want_virial || result->node_virial;
}

int umas_compute(umas_context *ctx, const umas_graph *graph, umas_result *result, umas_error *err) {
    if (!ctx || !graph || !result)
        return umas_fail(err, "umas_compute: context, graph and result are required");
    if (umas_check_graph(ctx, graph, err))
        return -1;
    int gradients = umas_wants_gradients(result);
    if (umas_balance_check_atoms(ctx, graph->num_energy_nodes, err) ||
        umas_reserve_outputs(ctx, graph->num_nodes, graph->num_edges, gradients, err))
        return -1;
    if (ctx->backend->compute(ctx, graph, result, gradients, err))
        return -1;
    umas_node_energies(ctx, graph, result);
    if (gradients)
        umas_scatter_edge_gradients(graph, ctx->edge_gradient, result);
    return 0;
}
