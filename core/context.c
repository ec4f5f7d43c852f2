/* context.c - context life cycle: validation of the system, backend and precision choice, the
 * MoLE merge, the balanced channels; the CPU thread count and the CUDA stubs of a CPU build.
 * umas_compute is in compute.c, the neighbour-list route in neighbor_route.c. */
#include "context.h"

#include "error.h"
#include "mole.h"

#include <cblas.h>
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
    if (!sys->refresh_ghosts != !sys->sum_into_owners)
        return umas_fail(err, "the halo exchange needs both refresh_ghosts and sum_into_owners "
                              "(or neither)");
    return 0;
}

void umas_neighbor_state_free(umas_neighbor_state *nb) {
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
    ctx->refresh_ghosts = sys->refresh_ghosts;
    ctx->sum_into_owners = sys->sum_into_owners;
    ctx->halo_data = sys->halo_data;
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
    umas_neighbor_state_free(&ctx->neighbors);
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
