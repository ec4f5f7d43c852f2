/* fuzz_model_loader.c - libFuzzer harness for the model loader (core/model.c) and, when a file
 * loads, the MoLE merge and one energy + forces evaluation of a 2-atom system.
 *
 * Each input is written to one memfd (created once, rewritten per run) and loaded through its
 * /proc/self/fd path, so umas_model_load runs exactly as for a real file: open, fstat, mmap.
 *
 * Build (see docs/reliability.md for the seed corpus, dictionary and run commands):
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Icore \
 *         tests/fuzz/fuzz_model_loader.c $(find core -name '*.c') \
 *         $(pkg-config --cflags --libs openblas libcjson) -lm -o /tmp/fuzz_loader
 *
 * Environment:
 *   UMAS_FUZZ_NO_COMPUTE=1   stop after umas_context_create (skip umas_compute)
 *   UMAS_FUZZ_VERBOSE=1      print the loader's error message for every input (for triage;
 *                            run the binary on single files then)
 */
#define _GNU_SOURCE
#include "umas.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static int memfd = -1;
static char memfd_path[64];
static int no_compute, verbose;

/* A model this big is loaded and merged but not evaluated (keeps the executions fast). */
enum { COMPUTE_MAX_MODEL_BYTES = 1 << 20 };

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    memfd = memfd_create("umas-fuzz-model", 0);
    if (memfd < 0) {
        perror("memfd_create");
        abort();
    }
    snprintf(memfd_path, sizeof memfd_path, "/proc/self/fd/%d", memfd);
    no_compute = getenv("UMAS_FUZZ_NO_COMPUTE") != NULL;
    verbose = getenv("UMAS_FUZZ_VERBOSE") != NULL;
    return 0;
}

static void write_input(const uint8_t *data, size_t size) {
    if (ftruncate(memfd, 0) != 0) {
        perror("ftruncate");
        abort();
    }
    size_t done = 0;
    while (done < size) {
        ssize_t n = pwrite(memfd, data + done, size - done, (off_t)done);
        if (n <= 0) {
            perror("pwrite");
            abort();
        }
        done += (size_t)n;
    }
}

/* The error message must be a terminated, non-empty string. */
static void check_message(const umas_error *err, const char *what) {
    size_t n = strnlen(err->message, sizeof err->message);
    if (n == 0 || n == sizeof err->message) {
        fprintf(stderr, "%s failed without a (terminated) error message\n", what);
        abort();
    }
    if (verbose)
        fprintf(stderr, "%s: %s\n", what, err->message);
}

static void exercise_context(const umas_model *model) {
    const umas_model_info *info = umas_model_get_info(model);
    const char *task = umas_model_task_name(model, 0);
    if (!info || !task || info->num_tasks < 1)
        abort(); /* a loaded model always has a first task */
    /* two atoms: H and the heaviest element the model knows */
    int z[2] = {1, info->max_num_elements - 1};
    umas_system sys = {.task = task,
                       .charge = 0,
                       .spin = umas_default_spin(task),
                       .num_atoms = 2,
                       .atomic_numbers = z};
    umas_options opt = {.backend = "general", .device = "cpu"};
    umas_error err;
    memset(&err, 0, sizeof err);
    umas_context *ctx = umas_context_create(model, &sys, &opt, &err);
    if (!ctx) {
        check_message(&err, "umas_context_create");
        return;
    }
    const double *coef = umas_context_expert_coefficients(ctx);
    volatile double sink = 0;
    for (int k = 0; k < info->num_experts; k++)
        sink += coef[k];
    (void)sink;
    (void)umas_context_bytes(ctx);

    if (!no_compute && umas_model_bytes(model) <= COMPUTE_MAX_MODEL_BYTES) {
        /* one pair at half the cutoff, both directions */
        double r = 0.5 * info->cutoff;
        int source[2] = {1, 0}, target[2] = {0, 1};
        double vec[6] = {r, 0.1 * r, 0, -r, -0.1 * r, 0};
        umas_graph g = {.num_nodes = 2,
                        .num_energy_nodes = 2,
                        .atomic_numbers = z,
                        .num_edges = 2,
                        .edge_source = source,
                        .edge_target = target,
                        .edge_vector = vec};
        double forces[6], node_energy[2];
        umas_result res = {.node_energy = node_energy, .forces = forces, .want_virial = 1};
        if (umas_compute(ctx, &g, &res, &err) != 0)
            check_message(&err, "umas_compute");
        else if (verbose)
            fprintf(stderr, "umas_compute: ok (energy %g)\n", res.energy);
    }
    umas_context_free(ctx);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    write_input(data, size);
    umas_error err;
    memset(&err, 0, sizeof err);
    umas_model *model = umas_model_load(memfd_path, &err);
    if (!model) {
        check_message(&err, "umas_model_load");
        return 0;
    }
    if (verbose)
        fprintf(stderr, "umas_model_load: ok (%s, %d tasks)\n",
                umas_model_get_info(model)->model_id, umas_model_get_info(model)->num_tasks);
    exercise_context(model);
    umas_model_free(model);
    return 0;
}
