/* umas_bench.c - umas-bench: MD-step speed of the backends on rattled Cu FCC boxes.
 *
 *   umas-bench --model M.safetensors [--device cpu|cuda] [--backend general,umas_fast]
 *              [--precision fp32|3xtf32|tf32|ozaki]
 *              [--atoms 1000,2000,6000,16000] [--steps 10] [--warmup 2] [--skin 2.0]
 *
 * For each size and backend: a rattled (0.05 A) Cu FCC box of that many atoms (a = 3.61 A), its
 * periodic neighbour list to cutoff + skin (6 + 2 A; about 78 edges per atom within the cutoff),
 * handed over once as in MD, then warm-up and timed steps that move the atoms slightly and
 * evaluate energy + forces + virial from positions (umas_compute_positions). One table row per
 * size and backend: atoms, edges per atom within the cutoff, backend, device, ms/step, steps/s,
 * ns/day at 1 fs, the memory the context holds, and the peak device memory in use during the
 * run above what was in use before the context existed (driver reading; 0 on the CPU). A size
 * that does not fit prints the error and the table goes on. This is a benchmark program: its
 * numbers go to bench/README.md, no test times anything. */
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

/* One MD-like run: the neighbour list (cutoff + skin) handed over once, then per step the
 * atoms move a little (a fixed, tiny displacement pattern) and only positions go in. */
static void bench_size(umas_model *model, const char *backend, const char *device,
                       const char *precision, int atoms, int warmup, int steps, double skin) {
    int cells[3] = {0, 0, 0};
    if (!fcc_cells(atoms, cells)) {
        printf("%8d  (not a multiple of 4: skipped)\n", atoms);
        return;
    }
    double *positions = malloc(sizeof(double) * 3 * atoms);
    double *moved = malloc(sizeof(double) * 3 * atoms);
    double *forces = malloc(sizeof(double) * 3 * atoms);
    int *z = malloc(sizeof(int) * atoms);
    double cell[9];
    int pbc[3] = {1, 1, 1};
    umas_edge_list edges = {0};
    umas_context *ctx = NULL;
    umas_error err;
    if (!positions || !moved || !forces || !z) {
        printf("%8d  out of host memory\n", atoms);
        goto done;
    }
    fcc_box(cells, positions, cell);
    for (int i = 0; i < atoms; i++)
        z[i] = 29;
    double cutoff = umas_model_get_info(model)->cutoff;
    if (umas_build_edges(atoms, positions, cell, pbc, cutoff + skin, &edges, &err)) {
        printf("%8d  %s\n", atoms, err.message);
        goto done;
    }
    size_t memory_before = umas_cuda_memory_in_use(), memory_peak = memory_before;
    umas_system sys = {.task = "omat", .num_atoms = atoms, .atomic_numbers = z};
    umas_options opt = {backend, device, precision};
    ctx = umas_context_create(model, &sys, &opt, &err);
    umas_neighbors list = {atoms,        atoms,           z, edges.num_edges, edges.source,
                           edges.target, edges.cell_shift};
    if (!ctx || umas_set_neighbors(ctx, &list, &err)) {
        printf("%8d  %s\n", atoms, err.message);
        goto done;
    }
    umas_result r = {0};
    r.forces = forces;
    r.want_virial = 1;
    double forward = 0, backward = 0, start = 0;
    int within = 0;
    for (int i = -warmup; i < steps; i++) {
        if (i == 0)
            start = now();
        for (int k = 0; k < 3 * atoms; k++) /* at most 0.01 A from the list's positions */
            moved[k] = positions[k] + 0.01 * ((k * 7 + i) % 5 - 2) / 2.0;
        if (umas_compute_positions(ctx, moved, cell, &r, &err)) {
            printf("%8d  %s\n", atoms, err.message);
            goto done;
        }
        size_t in_use = umas_cuda_memory_in_use();
        memory_peak = in_use > memory_peak ? in_use : memory_peak;
        if (i >= 0)
            forward += r.seconds_forward, backward += r.seconds_backward;
    }
    double ms = 1e3 * (now() - start) / steps;
    for (int e = 0; e < edges.num_edges; e++) {
        const double *v = edges.vector + 3 * (size_t)e;
        within += v[0] * v[0] + v[1] * v[1] + v[2] * v[2] <= cutoff * cutoff;
    }
    printf("%8d %9.1f  %-10s %-6s %10.2f %9.2f %9.4f %10.1f %10.1f %9.1f %9.1f\n", atoms,
           (double)within / atoms, backend, device, ms, 1e3 / ms, 1e3 / ms * 86400.0 * 1e-6,
           umas_context_bytes(ctx) / 1048576.0, (memory_peak - memory_before) / 1048576.0,
           1e3 * forward / steps, 1e3 * backward / steps);
    fflush(stdout);
done:
    umas_context_free(ctx);
    umas_edge_list_free(&edges);
    free(positions);
    free(moved);
    free(forces);
    free(z);
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *device = "cpu", *backend = "general", *precision = NULL;
    const char *sizes = "1000,2000,6000,16000";
    int steps = 10, warmup = 2;
    double skin = 2.0;
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
        else if (strcmp(argv[i], "--precision") == 0)
            precision = argv[i + 1];
        else if (strcmp(argv[i], "--skin") == 0)
            skin = atof(argv[i + 1]);
        else {
            fprintf(stderr, "umas-bench: unknown option %s\n", argv[i]);
            return 1;
        }
    }
    if (!model_path || steps < 1 || warmup < 0 || skin < 0) {
        fprintf(
            stderr,
            "usage: umas-bench --model M.safetensors [--device cpu|cuda] "
            "[--backend general,umas_fast] [--precision P] [--atoms 1000,2000,...] [--steps 10] "
            "[--warmup 2] [--skin 2.0]\n");
        return 1;
    }
    umas_error err;
    umas_model *model = umas_model_load(model_path, &err);
    if (!model) {
        fprintf(stderr, "umas-bench: error: %s\n", err.message);
        return 1;
    }
    printf("model %s (%s), %d steps after %d warm-up, energy + forces + virial per step, "
           "neighbour list to cutoff + %.1f A set once, precision %s\n",
           model_path, umas_model_get_info(model)->model_id, steps, warmup, skin,
           precision ? precision : "default (exact)");
    printf("%8s %9s  %-10s %-6s %10s %9s %9s %10s %10s %9s %9s\n", "atoms", "edges/at", "backend",
           "device", "ms/step", "steps/s", "ns/day", "context MB", "GPU peak", "fwd ms", "bwd ms");
    char *size_list = strdup(sizes), *size_next = NULL;
    for (char *item = strtok_r(size_list, ",", &size_next); item;
         item = strtok_r(NULL, ",", &size_next)) {
        char *backend_list = strdup(backend), *backend_next = NULL;
        for (char *name = strtok_r(backend_list, ",", &backend_next); name;
             name = strtok_r(NULL, ",", &backend_next))
            bench_size(model, name, device, precision, atoi(item), warmup, steps, skin);
        free(backend_list);
    }
    free(size_list);
    umas_model_free(model);
    return 0;
}
