/* umas_eval.c - umas-eval: energy of one structure (ASE extended XYZ), printed as JSON.
 *
 *   umas-eval --model M.safetensors --task omat [--charge 0] [--spin S] [--backend general]
 *             [--device cpu] [--precision fp32|3xtf32|tf32] STRUCTURE.extxyz
 *
 * Builds the periodic graph itself (all images within the cutoff), applies fairchem's
 * max_neighbors rule, runs the model and prints {"energy": eV, "energies": [eV per atom],
 * "forces": [[eV/A]], "stress": [eV/A^3, Voigt xx yy zz yz xz xy, fairchem's sign], ...};
 * stress only for cells periodic in all three directions.
 * Errors go to stderr with exit status 1. */
#include "extxyz.h"
#include "umas.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct arguments {
    const char *model, *task, *backend, *device, *precision, *structure;
    int charge, spin, has_spin;
} arguments;

static void usage(FILE *out) {
    fprintf(out, "usage: umas-eval --model M.safetensors --task TASK [--charge Q] [--spin S]\n"
                 "                 [--backend general] [--device cpu] [--precision P]"
                 " STRUCTURE.extxyz\n"
                 "Prints the energy (eV) and per-atom energies of the structure as JSON.\n"
                 "Defaults: charge 0; spin 1 for task omol, else 0 (as fairchem).\n");
}

static int parse_int(const char *text, const char *option, int *out) {
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || *end || end == text || v < -1000000 || v > 1000000) {
        fprintf(stderr, "umas-eval: error: %s needs an integer, got '%s'\n", option, text);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_arguments(int argc, char **argv, arguments *a) {
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            usage(stdout);
            exit(0);
        }
        if (arg[0] == '-' && arg[1] == '-') {
            if (i + 1 >= argc) {
                fprintf(stderr, "umas-eval: error: %s needs a value\n", arg);
                return -1;
            }
            const char *value = argv[++i];
            if (strcmp(arg, "--model") == 0)
                a->model = value;
            else if (strcmp(arg, "--task") == 0)
                a->task = value;
            else if (strcmp(arg, "--backend") == 0)
                a->backend = value;
            else if (strcmp(arg, "--device") == 0)
                a->device = value;
            else if (strcmp(arg, "--precision") == 0)
                a->precision = value;
            else if (strcmp(arg, "--charge") == 0) {
                if (parse_int(value, arg, &a->charge))
                    return -1;
            } else if (strcmp(arg, "--spin") == 0) {
                if (parse_int(value, arg, &a->spin))
                    return -1;
                a->has_spin = 1;
            } else {
                fprintf(stderr, "umas-eval: error: unknown option %s\n", arg);
                return -1;
            }
        } else if (!a->structure) {
            a->structure = arg;
        } else {
            fprintf(stderr, "umas-eval: error: more than one structure file given\n");
            return -1;
        }
    }
    if (!a->model || !a->task || !a->structure) {
        usage(stderr);
        return -1;
    }
    if (!a->has_spin)
        a->spin = umas_default_spin(a->task);
    return 0;
}

static double cell_volume(const double h[9]) {
    return fabs(h[0] * (h[4] * h[8] - h[5] * h[7]) - h[1] * (h[3] * h[8] - h[5] * h[6]) +
                h[2] * (h[3] * h[7] - h[4] * h[6]));
}

static void print_json(const arguments *a, const extxyz_frame *frame, int num_edges,
                       const umas_result *result) {
    cJSON *out = cJSON_CreateObject();
    cJSON_AddNumberToObject(out, "energy", result->energy);
    cJSON_AddItemToObject(out, "energies",
                          cJSON_CreateDoubleArray(result->node_energy, frame->num_atoms));
    cJSON *forces = cJSON_AddArrayToObject(out, "forces");
    for (int i = 0; i < frame->num_atoms; i++)
        cJSON_AddItemToArray(forces, cJSON_CreateDoubleArray(result->forces + 3 * (size_t)i, 3));
    if (frame->pbc[0] && frame->pbc[1] && frame->pbc[2]) {
        /* fairchem's stress = -W / V; W is in LAMMPS order xx yy zz xy xz yz */
        const double *W = result->virial;
        double V = cell_volume(frame->cell);
        double voigt[6] = {-W[0] / V, -W[1] / V, -W[2] / V, -W[5] / V, -W[4] / V, -W[3] / V};
        cJSON_AddItemToObject(out, "stress", cJSON_CreateDoubleArray(voigt, 6));
    }
    cJSON_AddNumberToObject(out, "num_atoms", frame->num_atoms);
    cJSON_AddNumberToObject(out, "num_edges", num_edges);
    cJSON_AddStringToObject(out, "task", a->task);
    cJSON_AddNumberToObject(out, "charge", a->charge);
    cJSON_AddNumberToObject(out, "spin", a->spin);
    cJSON_AddStringToObject(out, "backend", a->backend ? a->backend : "general");
    cJSON_AddStringToObject(out, "device", a->device ? a->device : "cpu");
    char *text = cJSON_Print(out);
    printf("%s\n", text);
    free(text);
    cJSON_Delete(out);
}

int main(int argc, char **argv) {
    arguments a = {0};
    if (parse_arguments(argc, argv, &a))
        return 1;

    char message[512];
    extxyz_frame frame = {0};
    if (extxyz_read(a.structure, &frame, message, sizeof message)) {
        fprintf(stderr, "umas-eval: error: %s\n", message);
        return 1;
    }
    umas_error err;
    umas_model *model = umas_model_load(a.model, &err);
    umas_context *ctx = NULL;
    umas_edge_list edges = {0};
    double *energies = calloc((size_t)frame.num_atoms + 1, sizeof(double));
    double *forces = calloc(3 * (size_t)frame.num_atoms + 1, sizeof(double));
    int status = 1;
    if (!energies || !forces)
        snprintf(err.message, sizeof err.message, "out of memory");
    if (!model || !energies || !forces)
        goto fail;
    const umas_model_info *info = umas_model_get_info(model);
    umas_system system = {.task = a.task,
                          .charge = a.charge,
                          .spin = a.spin,
                          .num_atoms = frame.num_atoms,
                          .atomic_numbers = frame.atomic_numbers};
    umas_options options = {a.backend, a.device, a.precision};
    ctx = umas_context_create(model, &system, &options, &err);
    if (!ctx)
        goto fail;
    if (umas_build_edges(frame.num_atoms, frame.positions, frame.cell, frame.pbc, info->cutoff,
                         &edges, &err))
        goto fail;
    int cut = umas_limit_neighbors(&edges, frame.num_atoms, info->max_neighbors);
    if (cut > 0)
        fprintf(stderr,
                "umas-eval: warning: %d atoms have more than max_neighbors = %d neighbours; their"
                " farthest neighbours were dropped as fairchem does (forces are discontinuous)\n",
                cut, info->max_neighbors);
    umas_graph graph = {frame.num_atoms, frame.num_atoms, frame.atomic_numbers, edges.num_edges,
                        edges.source,    edges.target,    edges.vector};
    umas_result result = {.node_energy = energies, .forces = forces, .want_virial = 1};
    if (umas_compute(ctx, &graph, &result, &err))
        goto fail;
    print_json(&a, &frame, edges.num_edges, &result);
    status = 0;
    goto done;
fail:
    fprintf(stderr, "umas-eval: error: %s\n", err.message);
done:
    free(energies);
    free(forces);
    umas_edge_list_free(&edges);
    umas_context_free(ctx);
    umas_model_free(model);
    extxyz_free(&frame);
    return status;
}
