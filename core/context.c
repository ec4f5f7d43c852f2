/* context.c - context life cycle (validation, MoLE merge, backend choice) and umas_compute. */
#include "context.h"

#include "error.h"
#include "mole.h"
#include "virial.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

static const umas_backend *const backends[] = {
    &umas_backend_general_cpu,  &umas_backend_fast_cpu,
#ifdef UMAS_HAVE_CUDA
    &umas_backend_general_cuda, &umas_backend_fast_cuda, &umas_backend_fast_gpu_cuda,
#endif
};

static const umas_backend *find_backend(const char *name, const char *device, umas_error *err) {
    if (!name)
        name = "general";
    if (strcmp(name, "umas_fast_pytorch") == 0) /* fairchem's name of the same backend */
        name = "umas_fast";
    if (!device)
        device = "cpu";
    int known_name = 0;
    for (size_t i = 0; i < sizeof backends / sizeof backends[0]; i++) {
        if (strcmp(backends[i]->name, name) != 0)
            continue;
        known_name = 1;
        if (strcmp(backends[i]->device, device) == 0)
            return backends[i];
    }
    if (known_name)
        umas_fail(err,
                  "backend '%s' is not available on device '%s' (this build: general and "
                  "umas_fast on %s%s)",
                  name, device,
#ifdef UMAS_HAVE_CUDA
                  "cpu and cuda", ", umas_fast_gpu on cuda"
#else
                  "cpu", ""
#endif
        );
    else
        umas_fail(err, "unknown backend '%s' (this build has: general, umas_fast%s)", name,
#ifdef UMAS_HAVE_CUDA
                  ", umas_fast_gpu"
#else
                  ""
#endif
        );
    return NULL;
}

/* umas_options.precision: NULL or the device's exact arithmetic, or a GPU tensor-core mode. */
static int find_precision(const char *name, const char *device, umas_precision *precision,
                          umas_error *err) {
    int gpu = device && strcmp(device, "cuda") == 0;
    *precision = UMAS_PRECISION_EXACT;
    if (!name || strcmp(name, "default") == 0 || strcmp(name, gpu ? "fp32" : "fp64") == 0)
        return 0;
    if (gpu && strcmp(name, "3xtf32") == 0)
        *precision = UMAS_PRECISION_3XTF32;
    else if (gpu && strcmp(name, "tf32") == 0)
        *precision = UMAS_PRECISION_TF32;
    else if (gpu && strcmp(name, "ozaki") == 0)
        *precision = UMAS_PRECISION_OZAKI;
    else
        return umas_fail(err, "precision '%s' is not available on device '%s' (%s)", name,
                         device ? device : "cpu",
                         gpu ? "cuda has default (fp32), fp32, 3xtf32, tf32 and ozaki"
                             : "the CPU has default (fp64) and fp64");
    return 0;
}

/* Atoms per atomic number of the whole system, validated against the element table. */
static int *composition(const umas_model *model, const umas_system *sys, umas_error *err) {
    int z_max = model->info.max_num_elements;
    int *counts = calloc((size_t)z_max, sizeof(int));
    if (!counts)
        return umas_fail(err, "out of memory"), NULL;
    long total = 0;
    if (sys->atomic_numbers) {
        for (int i = 0; i < sys->num_atoms; i++) {
            int z = sys->atomic_numbers[i];
            if (z < 1 || z >= z_max) {
                free(counts);
                return umas_fail(err, "atom %d has atomic number %d; the model knows 1..%d", i, z,
                                 z_max - 1),
                       NULL;
            }
            counts[z]++;
        }
        total = sys->num_atoms;
    } else {
        for (int z = 0; z < z_max; z++) {
            int n = sys->element_counts[z];
            if (n < 0 || (n > 0 && z == 0)) {
                free(counts);
                return umas_fail(err, "element count %d for atomic number %d is invalid", n, z),
                       NULL;
            }
            counts[z] = n;
            total += n;
        }
    }
    if (total != sys->num_atoms) {
        free(counts);
        return umas_fail(err, "element counts sum to %ld atoms, the system has %d", total,
                         sys->num_atoms),
               NULL;
    }
    return counts;
}

static int check_system(const umas_model *model, const umas_system *sys, umas_error *err) {
    if (!sys->task)
        return umas_fail(err, "no task given (the model has e.g. '%s')", model->tasks[0].name);
    if (!umas_model_find_task(model, sys->task)) {
        char names[256] = "";
        for (int i = 0; i < model->num_tasks; i++) {
            size_t used = strlen(names);
            snprintf(names + used, sizeof names - used, "%s%s", i ? ", " : "",
                     model->tasks[i].name);
        }
        return umas_fail(err, "the model has no task '%s' (it has: %s)", sys->task, names);
    }
    if (sys->charge < -100 || sys->charge > 100)
        return umas_fail(err, "charge %d is outside the model's range -100..100", sys->charge);
    if (sys->spin < 0 || sys->spin > 100)
        return umas_fail(err, "spin multiplicity %d is outside the model's range 0..100",
                         sys->spin);
    if (sys->num_atoms <= 0)
        return umas_fail(err, "the system has no atoms (%d)", sys->num_atoms);
    if (!sys->atomic_numbers && !sys->element_counts)
        return umas_fail(err, "the system needs atomic_numbers or element_counts");
    return 0;
}

static void neighbor_state_free(umas_neighbor_state *nb) {
    free(nb->atomic_numbers);
    free(nb->source);
    free(nb->target);
    free(nb->image);
    free(nb->kept);
    free(nb->kept_source);
    free(nb->kept_target);
    free(nb->kept_vector);
    memset(nb, 0, sizeof *nb);
    nb->num_nodes = -1;
}

umas_context *umas_context_create(const umas_model *model, const umas_system *sys,
                                  const umas_options *options, umas_error *err) {
    if (!model || !sys)
        return umas_fail(err, "umas_context_create: model and system are required"), NULL;
    if (check_system(model, sys, err))
        return NULL;
    const umas_backend *backend =
        find_backend(options ? options->backend : NULL, options ? options->device : NULL, err);
    if (!backend)
        return NULL;
    umas_precision precision;
    if (find_precision(options ? options->precision : NULL, backend->device, &precision, err))
        return NULL;
    int *counts = composition(model, sys, err);
    if (!counts)
        return NULL;
    umas_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        free(counts);
        return umas_fail(err, "out of memory"), NULL;
    }
    ctx->model = model;
    ctx->task = umas_model_find_task(model, sys->task);
    ctx->backend = backend;
    ctx->precision = precision;
    ctx->charge = sys->charge;
    ctx->spin = sys->spin;
    ctx->num_atoms = sys->num_atoms;
    ctx->sum_over_processes = sys->sum_over_processes;
    ctx->sum_data = sys->sum_data;
    ctx->neighbors.num_nodes = -1;
    ctx->expert_coefficients = calloc((size_t)model->info.num_experts, sizeof(double));
    ctx->routing_input = calloc(2 * (size_t)model->info.sphere_channels, sizeof(double));
    int failed = !ctx->expert_coefficients || !ctx->routing_input;
    if (failed)
        umas_fail(err, "out of memory");
    else
        failed = umas_merge(model, ctx->task, sys->charge, sys->spin, counts, sys->num_atoms,
                            &ctx->weights, ctx->expert_coefficients, ctx->routing_input, err) ||
                 umas_balance_init(&ctx->balance, model->charge_balanced,
                                   model->num_charge_balanced, model->spin_balanced,
                                   model->num_spin_balanced, sys->charge, sys->spin, err) ||
                 backend->create(ctx, err);
    free(counts);
    if (failed) {
        umas_context_free(ctx);
        return NULL;
    }
    return ctx;
}

void umas_context_free(umas_context *ctx) {
    if (!ctx)
        return;
    if (ctx->backend_state)
        ctx->backend->destroy(ctx);
    umas_weights_free(&ctx->weights);
    umas_balance_free(&ctx->balance);
    free(ctx->expert_coefficients);
    free(ctx->routing_input);
    free(ctx->trace);
    neighbor_state_free(&ctx->neighbors);
    free(ctx->edge_gradient);
    free(ctx->node_output);
    free(ctx);
}

const double *umas_context_expert_coefficients(const umas_context *ctx) {
    return ctx->expert_coefficients;
}

size_t umas_context_bytes(const umas_context *ctx) {
    return ctx->weights.bytes + ctx->backend->bytes(ctx);
}

/* Everything a backend may rely on: indices in range, finite non-zero edge vectors. */
static int check_graph(const umas_context *ctx, const umas_graph *g, umas_error *err) {
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
            return umas_fail(err, "edge %d: atoms %d and %d are on top of each other (distance 0)",
                             e, s, t);
    }
    return 0;
}

#ifndef UMAS_HAVE_CUDA
int umas_cuda_device_count(void) {
    return 0;
}

size_t umas_cuda_memory_in_use(void) {
    return 0;
}
#endif

int umas_cpu_threads(void) {
    return openblas_get_num_threads();
}

/* E = rmsd * sum_n eps_n + mean + sum_n ref[Z_n] over the energy nodes, in float64; the mean is
 * spread evenly over the system's atoms so that per-node energies sum to E (spec 10). */
static void node_energies(const umas_context *ctx, const umas_graph *g, umas_result *result) {
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
static void scatter_edge_gradients(const umas_graph *g, const double *gradient,
                                   umas_result *result) {
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
static int reserve_outputs(umas_context *ctx, int num_nodes, int num_edges, int gradients,
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

static int wants_gradients(const umas_result *result) {
    return result->forces || result->edge_gradient || result->want_virial || result->node_virial;
}

int umas_compute(umas_context *ctx, const umas_graph *graph, umas_result *result, umas_error *err) {
    if (!ctx || !graph || !result)
        return umas_fail(err, "umas_compute: context, graph and result are required");
    if (check_graph(ctx, graph, err))
        return -1;
    int gradients = wants_gradients(result);
    if (umas_balance_check_atoms(ctx, graph->num_energy_nodes, err) ||
        reserve_outputs(ctx, graph->num_nodes, graph->num_edges, gradients, err))
        return -1;
    if (ctx->backend->compute(ctx, graph, result, gradients, err))
        return -1;
    node_energies(ctx, graph, result);
    if (gradients)
        scatter_edge_gradients(graph, ctx->edge_gradient, result);
    return 0;
}

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
    if (check_graph(ctx, &shape, err))
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
    neighbor_state_free(nb);
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
        neighbor_state_free(nb);
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
        neighbor_state_free(nb);
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
    return check_graph(ctx, graph, err); /* atoms on top of each other */
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
    int gradients = wants_gradients(result);
    if (umas_balance_check_atoms(ctx, nb->num_energy_nodes, err) ||
        reserve_outputs(ctx, nb->num_nodes, nb->num_edges, gradients, err))
        return -1;
    umas_graph graph = {nb->num_nodes, nb->num_energy_nodes, nb->atomic_numbers, 0, NULL, NULL,
                        NULL};
    if (ctx->backend->compute_positions) {
        if (ctx->backend->compute_positions(ctx, positions, cell, result, gradients, err))
            return -1;
        node_energies(ctx, &graph, result);
        return 0;
    }
    if (kept_graph(ctx, positions, cell, &graph, err) ||
        ctx->backend->compute(ctx, &graph, result, gradients, err))
        return -1;
    node_energies(ctx, &graph, result);
    if (!gradients)
        return 0;
    double *list_gradient = result->edge_gradient;
    result->edge_gradient = NULL; /* per list edge, filled below */
    scatter_edge_gradients(&graph, ctx->edge_gradient, result);
    result->edge_gradient = list_gradient;
    if (list_gradient)
        umas_list_edge_gradient(ctx, graph.num_edges, list_gradient);
    return 0;
}
