/* context.c - context life cycle (validation, MoLE merge, backend choice) and umas_compute. */
#include "context.h"

#include "error.h"
#include "mole.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

static const umas_backend *const backends[] = {
    &umas_backend_general_cpu,
#ifdef UMAS_HAVE_CUDA
    &umas_backend_general_cuda,
#endif
};

static const umas_backend *find_backend(const char *name, const char *device, umas_error *err) {
    if (!name)
        name = "general";
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
        umas_fail(err, "backend '%s' is not available on device '%s' (this build: general on %s)",
                  name, device,
#ifdef UMAS_HAVE_CUDA
                  "cpu and cuda"
#else
                  "cpu"
#endif
        );
    else
        umas_fail(err, "unknown backend '%s' (this build has: general)", name);
    return NULL;
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
    ctx->charge = sys->charge;
    ctx->spin = sys->spin;
    ctx->num_atoms = sys->num_atoms;
    ctx->expert_coefficients = calloc((size_t)model->info.num_experts, sizeof(double));
    ctx->routing_input = calloc(2 * (size_t)model->info.sphere_channels, sizeof(double));
    int failed = !ctx->expert_coefficients || !ctx->routing_input;
    if (failed)
        umas_fail(err, "out of memory");
    else
        failed = umas_merge(model, ctx->task, sys->charge, sys->spin, counts, sys->num_atoms,
                            &ctx->weights, ctx->expert_coefficients, ctx->routing_input, err) ||
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
    free(ctx->expert_coefficients);
    free(ctx->routing_input);
    free(ctx->trace);
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
        /* LAMMPS order xx yy zz xy xz yz */
        const double W[6] = {-r[0] * dr[0],
                             -r[1] * dr[1],
                             -r[2] * dr[2],
                             -0.5 * (r[0] * dr[1] + r[1] * dr[0]),
                             -0.5 * (r[0] * dr[2] + r[2] * dr[0]),
                             -0.5 * (r[1] * dr[2] + r[2] * dr[1])};
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

int umas_compute(umas_context *ctx, const umas_graph *graph, umas_result *result, umas_error *err) {
    if (!ctx || !graph || !result)
        return umas_fail(err, "umas_compute: context, graph and result are required");
    if (check_graph(ctx, graph, err))
        return -1;
    int gradients =
        result->forces || result->edge_gradient || result->want_virial || result->node_virial;
    if (gradients && (!ctx->edge_gradient || graph->num_edges > ctx->edge_gradient_capacity)) {
        free(ctx->edge_gradient);
        ctx->edge_gradient = malloc(sizeof(double) * 3 * ((size_t)graph->num_edges + 1));
        ctx->edge_gradient_capacity = ctx->edge_gradient ? graph->num_edges : 0;
        if (!ctx->edge_gradient)
            return umas_fail(err, "out of memory for the gradients of %d edges", graph->num_edges);
    }
    if (!ctx->node_output || graph->num_nodes > ctx->node_output_capacity) {
        free(ctx->node_output);
        ctx->node_output = malloc(sizeof(double) * ((size_t)graph->num_nodes + 1));
        ctx->node_output_capacity = ctx->node_output ? graph->num_nodes : 0;
        if (!ctx->node_output)
            return umas_fail(err, "out of memory for %d atoms", graph->num_nodes);
    }
    if (ctx->backend->compute(ctx, graph, result, gradients, err))
        return -1;
    node_energies(ctx, graph, result);
    if (gradients)
        scatter_edge_gradients(graph, ctx->edge_gradient, result);
    return 0;
}
