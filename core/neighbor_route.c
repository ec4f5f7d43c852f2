/* neighbor_route.c - the neighbour-list route for molecular dynamics: the list stored once per
 * rebuild (umas_set_neighbors), then per step the edges within the cutoff formed from positions
 * and evaluated (umas_compute_positions; the backend's own route when it has one). */
#include "context.h"

#include "balance.h"
#include "error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------
 * Neighbour-list route: the list is stored once per rebuild; each step forms the edge vectors
 * from positions, keeps the edges within the cutoff and evaluates their graph.
 * ------------------------------------------------------------------------------------------- */

int umas_set_neighbors(umas_context *ctx, const umas_neighbors *nbr, umas_error *err) {
    if (!ctx || !nbr)
        return umas_fail(err, "umas_set_neighbors: context and neighbour list are required");
    /* the same checks as a graph, without vectors */
    umas_graph shape = {
        nbr->num_nodes, nbr->num_energy_nodes, nbr->atomic_numbers, 0, NULL, NULL, NULL};
    if (umas_check_graph(ctx, &shape, err))
        return -1;
    if (nbr->num_edges < 0 || (nbr->num_edges > 0 && (!nbr->edge_source || !nbr->edge_target)))
        return umas_fail(err, "neighbour list: %d edges without source/target arrays",
                         nbr->num_edges);
    for (int e = 0; e < nbr->num_edges; e++) {
        int s = nbr->edge_source[e], t = nbr->edge_target[e];
        if (s < 0 || s >= nbr->num_nodes || t < 0 || t >= nbr->num_nodes)
            return umas_fail(err, "edge %d connects nodes %d -> %d outside 0..%d", e, s, t,
                             nbr->num_nodes - 1);
    }
    umas_neighbor_state *nb = &ctx->neighbors;
    umas_neighbor_state_free(nb);
    size_t N = (size_t)nbr->num_nodes + 1, E = (size_t)nbr->num_edges + 1;
    nb->atomic_numbers = malloc(sizeof(int) * N);
    nb->source = malloc(sizeof(int) * E);
    nb->target = malloc(sizeof(int) * E);
    nb->image = calloc(3 * E, sizeof(int));
    nb->kept = malloc(sizeof(int) * E);
    nb->kept_source = malloc(sizeof(int) * E);
    nb->kept_target = malloc(sizeof(int) * E);
    nb->kept_vector = malloc(sizeof(double) * 3 * E);
    if (!nb->atomic_numbers || !nb->source || !nb->target || !nb->image || !nb->kept ||
        !nb->kept_source || !nb->kept_target || !nb->kept_vector) {
        umas_neighbor_state_free(nb);
        return umas_fail(err, "out of memory for a neighbour list of %d edges", nbr->num_edges);
    }
    memcpy(nb->atomic_numbers, nbr->atomic_numbers, sizeof(int) * (size_t)nbr->num_nodes);
    memcpy(nb->source, nbr->edge_source, sizeof(int) * (size_t)nbr->num_edges);
    memcpy(nb->target, nbr->edge_target, sizeof(int) * (size_t)nbr->num_edges);
    nb->has_images = 0;
    if (nbr->edge_image) {
        memcpy(nb->image, nbr->edge_image, sizeof(int) * 3 * (size_t)nbr->num_edges);
        for (size_t k = 0; k < 3 * (size_t)nbr->num_edges; k++)
            nb->has_images |= nb->image[k] != 0;
    }
    nb->num_nodes = nbr->num_nodes;
    nb->num_energy_nodes = nbr->num_energy_nodes;
    nb->num_edges = nbr->num_edges;
    if (ctx->backend->set_neighbors && ctx->backend->set_neighbors(ctx, err)) {
        umas_neighbor_state_free(nb);
        return -1;
    }
    return 0;
}

void umas_list_edge_gradient(const umas_context *ctx, int kept, double *list_gradient) {
    const umas_neighbor_state *nb = &ctx->neighbors;
    memset(list_gradient, 0, sizeof(double) * 3 * (size_t)nb->num_edges);
    for (int k = 0; k < kept; k++)
        memcpy(list_gradient + 3 * (size_t)nb->kept[k], ctx->edge_gradient + 3 * (size_t)k,
               3 * sizeof(double));
}

/* Host route: the edges within the cutoff as a graph (list order). */
static int kept_graph(umas_context *ctx, const double *positions, const double cell[9],
                      umas_graph *graph, umas_error *err) {
    umas_neighbor_state *nb = &ctx->neighbors;
    double cutoff2 = ctx->weights.cutoff * ctx->weights.cutoff;
    int kept = 0;
    for (int e = 0; e < nb->num_edges; e++) {
        int s = nb->source[e], t = nb->target[e];
        const int *n = nb->image + 3 * (size_t)e;
        double r[3], d2 = 0;
        for (int k = 0; k < 3; k++) {
            r[k] = positions[3 * (size_t)s + k] - positions[3 * (size_t)t + k];
            if (nb->has_images)
                r[k] += n[0] * cell[k] + n[1] * cell[3 + k] + n[2] * cell[6 + k];
            d2 += r[k] * r[k];
        }
        if (!(d2 <= cutoff2))
            continue; /* beyond the cutoff (NaN was caught with the positions) */
        nb->kept[kept] = e;
        nb->kept_source[kept] = s;
        nb->kept_target[kept] = t;
        memcpy(nb->kept_vector + 3 * (size_t)kept, r, sizeof r);
        kept++;
    }
    *graph = (umas_graph){nb->num_nodes,   nb->num_energy_nodes, nb->atomic_numbers, kept,
                          nb->kept_source, nb->kept_target,      nb->kept_vector};
    return umas_check_graph(ctx, graph, err); /* atoms on top of each other */
}

int umas_compute_positions(umas_context *ctx, const double *positions, const double cell[9],
                           umas_result *result, umas_error *err) {
    if (!ctx || !result)
        return umas_fail(err, "umas_compute_positions: context and result are required");
    umas_neighbor_state *nb = &ctx->neighbors;
    if (nb->num_nodes < 0)
        return umas_fail(err, "umas_compute_positions: call umas_set_neighbors first");
    if (nb->num_nodes > 0 && !positions)
        return umas_fail(err, "umas_compute_positions: positions missing");
    if (nb->has_images && !cell)
        return umas_fail(err, "umas_compute_positions: the neighbour list has periodic images "
                              "but no cell was given");
    for (size_t k = 0; k < 3 * (size_t)nb->num_nodes; k++)
        if (!isfinite(positions[k]))
            return umas_fail(err, "atom %zu has a non-finite position (NaN or inf)", k / 3);
    if (nb->has_images)
        for (int k = 0; k < 9; k++)
            if (!isfinite(cell[k]))
                return umas_fail(err, "the cell has a non-finite entry (NaN or inf)");
    int gradients = umas_wants_gradients(result);
    if (umas_balance_check_atoms(ctx, nb->num_energy_nodes, err) ||
        umas_reserve_outputs(ctx, nb->num_nodes, nb->num_edges, gradients, err))
        return -1;
    umas_graph graph = {nb->num_nodes, nb->num_energy_nodes, nb->atomic_numbers, 0, NULL, NULL,
                        NULL};
    if (ctx->backend->compute_positions) {
        if (ctx->backend->compute_positions(ctx, positions, cell, result, gradients, err))
            return -1;
        umas_node_energies(ctx, &graph, result);
        return 0;
    }
    if (kept_graph(ctx, positions, cell, &graph, err) ||
        ctx->backend->compute(ctx, &graph, result, gradients, err))
        return -1;
    umas_node_energies(ctx, &graph, result);
    if (!gradients)
        return 0;
    double *list_gradient = result->edge_gradient;
    result->edge_gradient = NULL; /* per list edge, filled below */
    umas_scatter_edge_gradients(&graph, ctx->edge_gradient, result);
    result->edge_gradient = list_gradient;
    if (list_gradient)
        umas_list_edge_gradient(ctx, graph.num_edges, list_gradient);
    return 0;
}
