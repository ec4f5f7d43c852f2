/* umas_bench.c - umas-bench: MD-step speed of the backends on rattled Cu FCC boxes.
 *
 *   umas-bench --model M.safetensors [--device cpu|cuda] [--backend general]
 *              [--atoms 1000,2000,6000,16000] [--steps 10] [--warmup 2]
 *
 * For each size: a rattled (0.05 A) Cu FCC box of that many atoms (a = 3.61 A), its periodic
 * graph (6 A, about 78 edges per atom), then warm-up and timed evaluations of energy + forces +
 * virial, as an MD step needs them. Prints one table row per size: atoms, edges per atom,
 * backend, device, ms/step, steps/s, ns/day at 1 fs, and the memory the context holds (on the
 * GPU: weights and work buffers). A size that does not fit prints the error and the table goes
 * on. This is a benchmark program: its numbers go to bench/README.md, no test times anything. */
#define _POSIX_C_SOURCE 200809L
#include "umas.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* xorshift: a fixed, portable random sequence for the rattle */
static double uniform(unsigned long long *state) {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return (double)(*state >> 11) / 9007199254740992.0;
}

/* cells a x b x c with 4 a b c = atoms, as cubic as possible; 0 if atoms is not a multiple of 4 */
static int fcc_cells(int atoms, int cells[3]) {
    if (atoms <= 0 || atoms % 4)
        return 0;
    long long n = atoms / 4, best = -1;
    for (long long a = 1; a * a * a <= n; a++)
        for (long long b = a; a * b * b <= n; b++) {
            if (n % (a * b))
                continue;
            long long c = n / (a * b);
            if (best < 0 || c - a < best) {
                best = c - a;
                cells[0] = (int)a, cells[1] = (int)b, cells[2] = (int)c;
            }
        }
    return best >= 0;
}

static void fcc_box(const int cells[3], double *positions, double cell[9]) {
    const double a = 3.61, basis[4][3] = {{0, 0, 0}, {0.5, 0.5, 0}, {0.5, 0, 0.5}, {0, 0.5, 0.5}};
    unsigned long long state = 88172645463325252ULL;
    int k = 0;
    for (int i = 0; i < cells[0]; i++)
        for (int j = 0; j < cells[1]; j++)
            for (int l = 0; l < cells[2]; l++)
                for (int b = 0; b < 4; b++, k++) {
                    positions[3 * k + 0] = a * (i + basis[b][0]) + 0.1 * (uniform(&state) - 0.5);
                    positions[3 * k + 1] = a * (j + basis[b][1]) + 0.1 * (uniform(&state) - 0.5);
                    positions[3 * k + 2] = a * (l + basis[b][2]) + 0.1 * (uniform(&state) - 0.5);
                }
    memset(cell, 0, 9 * sizeof(double));
    cell[0] = a * cells[0], cell[4] = a * cells[1], cell[8] = a * cells[2];
}

static void bench_size(umas_model *model, const char *backend, const char *device, int atoms,
                       int warmup, int steps) {
    int cells[3];
    if (!fcc_cells(atoms, cells)) {
        printf("%8d  (not a multiple of 4: skipped)\n", atoms);
        return;
    }
    double *positions = malloc(sizeof(double) * 3 * atoms);
    double *forces = malloc(sizeof(double) * 3 * atoms);
    int *z = malloc(sizeof(int) * atoms);
    double cell[9];
    int pbc[3] = {1, 1, 1};
    umas_edge_list edges = {0};
    umas_context *ctx = NULL;
    umas_error err;
    if (!positions || !forces || !z) {
        printf("%8d  out of host memory\n", atoms);
        goto done;
    }
    fcc_box(cells, positions, cell);
    for (int i = 0; i < atoms; i++)
        z[i] = 29;
    if (umas_build_edges(atoms, positions, cell, pbc, umas_model_get_info(model)->cutoff, &edges,
                         &err)) {
        printf("%8d  %s\n", atoms, err.message);
        goto done;
    }
    umas_system sys = {"omat", 0, 0, atoms, z, NULL};
    umas_options opt = {backend, device};
    ctx = umas_context_create(model, &sys, &opt, &err);
    if (!ctx) {
        printf("%8d  %s\n", atoms, err.message);
        goto done;
    }
    umas_graph g = {atoms, atoms, z, edges.num_edges, edges.source, edges.target, edges.vector};
    umas_result r = {0};
    r.forces = forces;
    r.want_virial = 1;
    for (int i = 0; i < warmup; i++)
        if (umas_compute(ctx, &g, &r, &err)) {
            printf("%8d  %s\n", atoms, err.message);
            goto done;
        }
    double forward = 0, backward = 0, start = now();
    for (int i = 0; i < steps; i++) {
        if (umas_compute(ctx, &g, &r, &err)) {
            printf("%8d  %s\n", atoms, err.message);
            goto done;
        }
        forward += r.seconds_forward;
        backward += r.seconds_backward;
    }
    double ms = 1e3 * (now() - start) / steps;
    printf("%8d %9.1f  %-8s %-6s %10.2f %9.2f %9.4f %10.1f %9.1f %9.1f\n", atoms,
           (double)edges.num_edges / atoms, backend, device, ms, 1e3 / ms,
           1e3 / ms * 86400.0 * 1e-6, umas_context_bytes(ctx) / 1048576.0, 1e3 * forward / steps,
           1e3 * backward / steps);
    fflush(stdout);
done:
    umas_context_free(ctx);
    umas_edge_list_free(&edges);
    free(positions);
    free(forces);
    free(z);
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *device = "cpu", *backend = "general";
    const char *sizes = "1000,2000,6000,16000";
    int steps = 10, warmup = 2;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--model") == 0)
            model_path = argv[i + 1];
        else if (strcmp(argv[i], "--device") == 0)
            device = argv[i + 1];
        else if (strcmp(argv[i], "--backend") == 0)
            backend = argv[i + 1];
        else if (strcmp(argv[i], "--atoms") == 0)
            sizes = argv[i + 1];
        else if (strcmp(argv[i], "--steps") == 0)
            steps = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--warmup") == 0)
            warmup = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "umas-bench: unknown option %s\n", argv[i]);
            return 1;
        }
    }
    if (!model_path || steps < 1 || warmup < 0) {
        fprintf(stderr, "usage: umas-bench --model M.safetensors [--device cpu|cuda] "
                        "[--backend general] [--atoms 1000,2000,...] [--steps 10] [--warmup 2]\n");
        return 1;
    }
    umas_error err;
    umas_model *model = umas_model_load(model_path, &err);
    if (!model) {
        fprintf(stderr, "umas-bench: error: %s\n", err.message);
        return 1;
    }
    printf("model %s (%s), %d steps after %d warm-up, energy + forces + virial per step\n",
           model_path, umas_model_get_info(model)->model_id, steps, warmup);
    printf("%8s %9s  %-8s %-6s %10s %9s %9s %10s %9s %9s\n", "atoms", "edges/at", "backend",
           "device", "ms/step", "steps/s", "ns/day", "memory MB", "fwd ms", "bwd ms");
    char *list = strdup(sizes);
    for (char *item = strtok(list, ","); item; item = strtok(NULL, ","))
        bench_size(model, backend, device, atoi(item), warmup, steps);
    free(list);
    umas_model_free(model);
    return 0;
}
