/* mole.c - building a context's dense weights: the system embedding c_sys, the MoLE routing
 * (expert coefficients from composition, charge, spin and task), and the merge
 * W = sum_k coef_k W_k of every expert layer (spec sections 5 and 11). All in float64. */
#include "mole.h"

#include "error.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------
 * Allocation: every array of a umas_weights is registered so umas_weights_free finds it.
 * ------------------------------------------------------------------------------------------- */

static double *new_array(umas_weights *w, size_t count) {
    if (w->num_allocations == w->capacity) {
        int capacity = w->capacity ? 2 * w->capacity : 256;
        void **grown = realloc(w->allocations, sizeof(void *) * (size_t)capacity);
        if (!grown)
            return NULL;
        w->allocations = grown;
        w->capacity = capacity;
    }
    double *a = calloc(count ? count : 1, sizeof(double));
    if (a) {
        w->allocations[w->num_allocations++] = a;
        w->bytes += count * sizeof(double);
    }
    return a;
}

void umas_weights_free(umas_weights *w) {
    for (int i = 0; i < w->num_allocations; i++)
        free(w->allocations[i]);
    free(w->allocations);
    free(w->blocks);
    memset(w, 0, sizeof *w);
}

/* ---------------------------------------------------------------------------------------------
 * Reading tensors into double arrays
 * ------------------------------------------------------------------------------------------- */

enum { NAME_SIZE = 320 };

/* printf into a tensor-name buffer of NAME_SIZE bytes (names are far shorter). */
static void tensor_name(char *out, const char *format, ...) __attribute__((format(printf, 2, 3)));

static void tensor_name(char *out, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(out, NAME_SIZE, format, args);
    va_end(args);
}

typedef struct loader {
    const umas_model *model;
    umas_weights *w;
    umas_error *err;
    int failed;
} loader;

static const umas_tensor *find(loader *ld, const char *name) {
    const umas_tensor *t = umas_model_find(ld->model, name);
    if (!t && !ld->failed) { /* cannot happen after the loader's schema check */
        umas_fail(ld->err, "model has no tensor '%s'", name);
        ld->failed = 1;
    }
    return t;
}

static double *alloc_or_fail(loader *ld, size_t count) {
    double *a = new_array(ld->w, count);
    if (!a && !ld->failed) {
        umas_fail(ld->err, "out of memory for the merged weights");
        ld->failed = 1;
    }
    return a;
}

/* Whole tensor (or `count` elements from `offset`) as a new double array. */
static double *load_part(loader *ld, const char *name, size_t offset, size_t count) {
    const umas_tensor *t = find(ld, name);
    double *a = alloc_or_fail(ld, count);
    if (t && a)
        umas_tensor_read(t, offset, count, a);
    return a;
}

static double *load(loader *ld, const char *name) {
    const umas_tensor *t = find(ld, name);
    return t ? load_part(ld, name, 0, t->numel) : NULL;
}

static void load_linear(loader *ld, umas_linear *lin, const char *prefix, int has_bias) {
    char name[NAME_SIZE];
    tensor_name(name, "%s.weight", prefix);
    const umas_tensor *t = find(ld, name);
    if (!t)
        return;
    lin->out = (int)t->shape[0];
    lin->in = (int)t->shape[1];
    lin->weight = load(ld, name);
    tensor_name(name, "%s.bias", prefix);
    lin->bias = has_bias ? load(ld, name) : NULL;
}

/* W = sum_k coef[k] W_k over the experts of a MoLE layer ([K][out][in] "weights"); the bias is
 * shared by the experts and not scaled. */
static void load_merged_linear(loader *ld, umas_linear *lin, const char *prefix, int has_bias,
                               const double *coef) {
    char name[NAME_SIZE];
    tensor_name(name, "%s.weights", prefix);
    const umas_tensor *t = find(ld, name);
    if (!t)
        return;
    int experts = (int)t->shape[0];
    lin->out = (int)t->shape[1];
    lin->in = (int)t->shape[2];
    size_t n = (size_t)lin->out * (size_t)lin->in;
    lin->weight = alloc_or_fail(ld, n);
    double *expert = malloc(n * sizeof(double));
    if (!lin->weight || !expert) {
        free(expert);
        if (!ld->failed)
            umas_fail(ld->err, "out of memory for the merged weights");
        ld->failed = 1;
        return;
    }
    for (int k = 0; k < experts; k++) {
        umas_tensor_read(t, (size_t)k * n, n, expert);
        for (size_t i = 0; i < n; i++)
            lin->weight[i] += coef[k] * expert[i];
    }
    free(expert);
    tensor_name(name, "%s.bias", prefix);
    lin->bias = has_bias ? load(ld, name) : NULL;
}

/* One expert of a [Kh][out][in] head layer: fairchem's one-hot dataset experts. */
static void load_expert_linear(loader *ld, umas_linear *lin, const char *prefix, int expert) {
    char name[NAME_SIZE];
    tensor_name(name, "%s.weights", prefix);
    const umas_tensor *t = find(ld, name);
    if (!t)
        return;
    lin->out = (int)t->shape[1];
    lin->in = (int)t->shape[2];
    size_t n = (size_t)lin->out * (size_t)lin->in;
    lin->weight = load_part(ld, name, (size_t)expert * n, n);
    tensor_name(name, "%s.bias", prefix);
    lin->bias = load(ld, name);
}

static void load_layer_norm(loader *ld, umas_layer_norm *ln, const char *prefix) {
    char name[NAME_SIZE];
    tensor_name(name, "%s.weight", prefix);
    const umas_tensor *t = find(ld, name);
    if (!t)
        return;
    ln->n = (int)t->shape[0];
    ln->weight = load(ld, name);
    tensor_name(name, "%s.bias", prefix);
    ln->bias = load(ld, name);
}

static void load_radial_mlp(loader *ld, umas_radial_mlp *mlp, const char *prefix) {
    char name[NAME_SIZE];
    tensor_name(name, "%s.net.0", prefix);
    load_linear(ld, &mlp->fc1, name, 1);
    tensor_name(name, "%s.net.1", prefix);
    load_layer_norm(ld, &mlp->norm1, name);
    tensor_name(name, "%s.net.3", prefix);
    load_linear(ld, &mlp->fc2, name, 1);
    tensor_name(name, "%s.net.4", prefix);
    load_layer_norm(ld, &mlp->norm2, name);
    tensor_name(name, "%s.net.6", prefix);
    load_linear(ld, &mlp->fc3, name, 1);
}

static void load_rms_norm(loader *ld, umas_rms_norm *norm, const char *prefix) {
    char name[NAME_SIZE];
    tensor_name(name, "%s.affine_weight", prefix);
    norm->scale = load(ld, name);
    tensor_name(name, "%s.affine_bias", prefix);
    norm->bias = load(ld, name);
}

static void load_block(loader *ld, umas_block_weights *b, int layer, const double *coef) {
    char p[128], name[256];
    tensor_name(p, "backbone.blocks.%d", layer);
    tensor_name(name, "%s.norm_1", p);
    load_rms_norm(ld, &b->norm_1, name);
    tensor_name(name, "%s.norm_2", p);
    load_rms_norm(ld, &b->norm_2, name);
    tensor_name(name, "%s.edge_wise.so2_conv_1.rad_func", p);
    load_radial_mlp(ld, &b->radial, name);
    tensor_name(name, "%s.edge_wise.so2_conv_1.fc_m0", p);
    load_merged_linear(ld, &b->conv1_m0, name, 1, coef);
    tensor_name(name, "%s.edge_wise.so2_conv_1.so2_m_conv.0.fc", p);
    load_merged_linear(ld, &b->conv1_m1, name, 0, coef);
    tensor_name(name, "%s.edge_wise.so2_conv_1.so2_m_conv.1.fc", p);
    load_merged_linear(ld, &b->conv1_m2, name, 0, coef);
    tensor_name(name, "%s.edge_wise.so2_conv_2.fc_m0", p);
    load_merged_linear(ld, &b->conv2_m0, name, 1, coef);
    tensor_name(name, "%s.edge_wise.so2_conv_2.so2_m_conv.0.fc", p);
    load_merged_linear(ld, &b->conv2_m1, name, 0, coef);
    tensor_name(name, "%s.edge_wise.so2_conv_2.so2_m_conv.1.fc", p);
    load_merged_linear(ld, &b->conv2_m2, name, 0, coef);
    tensor_name(name, "%s.atom_wise.scalar_mlp.0", p);
    load_linear(ld, &b->ffn_scalar, name, 1);
    tensor_name(name, "%s.atom_wise.so3_linear_1.weight", p);
    b->ffn_so3_1 = load(ld, name);
    tensor_name(name, "%s.atom_wise.so3_linear_1.bias", p);
    b->ffn_so3_1_bias = load(ld, name);
    tensor_name(name, "%s.atom_wise.so3_linear_2.weight", p);
    b->ffn_so3_2 = load(ld, name);
    tensor_name(name, "%s.atom_wise.so3_linear_2.bias", p);
    b->ffn_so3_2_bias = load(ld, name);
}

/* ---------------------------------------------------------------------------------------------
 * System embedding and routing (once per system, no position dependence)
 * ------------------------------------------------------------------------------------------- */

static double silu(double x) {
    return x / (1.0 + exp(-x));
}

/* y[out] = W x + b for a [out][in] tensor W read from the model. */
static void tensor_matvec(loader *ld, const umas_tensor *weight, const umas_tensor *bias,
                          const double *x, double *y) {
    int out = (int)weight->shape[0], in = (int)weight->shape[1];
    double *row = malloc(sizeof(double) * (size_t)in);
    if (!row) {
        if (!ld->failed)
            umas_fail(ld->err, "out of memory");
        ld->failed = 1;
        return;
    }
    umas_tensor_read(bias, 0, (size_t)out, y);
    for (int o = 0; o < out; o++) {
        umas_tensor_read(weight, (size_t)o * (size_t)in, (size_t)in, row);
        for (int i = 0; i < in; i++)
            y[o] += row[i] * x[i];
    }
    free(row);
}

/* c_sys = SiLU(mix_csd [charge_emb[charge + 100]; spin_emb[spin]; dataset_emb[dataset]]) [C]. */
static void system_embedding(loader *ld, const umas_task *task, int charge, int spin,
                             double *c_sys) {
    int c = ld->model->info.sphere_channels;
    char name[NAME_SIZE];
    tensor_name(name, "backbone.dataset_embedding.dataset_emb_dict.%s.weight", task->dataset);
    const umas_tensor *charge_emb = find(ld, "backbone.charge_embedding.rand_emb.weight");
    const umas_tensor *spin_emb = find(ld, "backbone.spin_embedding.rand_emb.weight");
    const umas_tensor *dataset_emb = find(ld, name);
    const umas_tensor *mix_w = find(ld, "backbone.mix_csd.weight");
    const umas_tensor *mix_b = find(ld, "backbone.mix_csd.bias");
    double *input = calloc(3 * (size_t)c, sizeof(double));
    if (ld->failed || !input) {
        free(input);
        return;
    }
    umas_tensor_read(charge_emb, (size_t)(charge + 100) * (size_t)c, (size_t)c, input);
    umas_tensor_read(spin_emb, (size_t)spin * (size_t)c, (size_t)c, input + c);
    umas_tensor_read(dataset_emb, 0, (size_t)c, input + 2 * c);
    tensor_matvec(ld, mix_w, mix_b, input, c_sys);
    for (int i = 0; i < c; i++)
        c_sys[i] = silu(c_sys[i]);
    free(input);
}

/* Expert coefficients: softmax(routing_mlp([composition; c_sys])) + 0.005 (spec 11.2). */
static void route(loader *ld, const int *counts, int num_atoms, const double *c_sys,
                  double *routing_input, double *coef) {
    const umas_model *m = ld->model;
    int c = m->info.sphere_channels, k = m->info.num_experts;
    const umas_tensor *comp_emb = find(ld, "backbone.composition_embedding.weight");
    const umas_tensor *w[3] = {find(ld, "backbone.routing_mlp.0.weight"),
                               find(ld, "backbone.routing_mlp.2.weight"),
                               find(ld, "backbone.routing_mlp.4.weight")};
    const umas_tensor *b[3] = {find(ld, "backbone.routing_mlp.0.bias"),
                               find(ld, "backbone.routing_mlp.2.bias"),
                               find(ld, "backbone.routing_mlp.4.bias")};
    double *row = malloc(sizeof(double) * (size_t)c);
    double *h1 = calloc(2 * (size_t)k, sizeof(double));
    double *h2 = calloc(2 * (size_t)k, sizeof(double));
    if (ld->failed || !row || !h1 || !h2) {
        if (!ld->failed)
            umas_fail(ld->err, "out of memory");
        ld->failed = 1;
        free(row), free(h1), free(h2);
        return;
    }
    /* fairchem's "mean" is sum / (N + 1) for model_id "UMA-S-1.2" exactly (a zero-initialised
     * buffer counted by index_reduce_ with include_self), sum / N otherwise. */
    double denominator = num_atoms + (strcmp(m->model_id, "UMA-S-1.2") == 0 ? 1 : 0);
    memset(routing_input, 0, sizeof(double) * 2 * (size_t)c);
    for (int z = 0; z < m->info.max_num_elements; z++) {
        if (counts[z] == 0)
            continue;
        umas_tensor_read(comp_emb, (size_t)z * (size_t)c, (size_t)c, row);
        for (int i = 0; i < c; i++)
            routing_input[i] += counts[z] * row[i];
    }
    for (int i = 0; i < c; i++) {
        routing_input[i] /= denominator;
        routing_input[c + i] = c_sys[i];
    }
    tensor_matvec(ld, w[0], b[0], routing_input, h1);
    for (int i = 0; i < 2 * k; i++)
        h1[i] = silu(h1[i]);
    tensor_matvec(ld, w[1], b[1], h1, h2);
    for (int i = 0; i < 2 * k; i++)
        h2[i] = silu(h2[i]);
    tensor_matvec(ld, w[2], b[2], h2, coef);
    double max = -INFINITY, sum = 0;
    for (int i = 0; i < k; i++) {
        coef[i] = silu(coef[i]); /* the routing MLP ends with a SiLU too */
        max = fmax(max, coef[i]);
    }
    for (int i = 0; i < k; i++)
        sum += (coef[i] = exp(coef[i] - max));
    for (int i = 0; i < k; i++)
        coef[i] = coef[i] / sum + 0.005; /* not renormalised */
    free(row), free(h1), free(h2);
}

/* ---------------------------------------------------------------------------------------------
 * The merge
 * ------------------------------------------------------------------------------------------- */

int umas_merge(const umas_model *m, const umas_task *task, int charge, int spin, const int *counts,
               int num_atoms, umas_weights *w, double *coefficients, double *routing_input,
               umas_error *err) {
    const umas_model_info *info = &m->info;
    memset(w, 0, sizeof *w);
    loader ld = {m, w, err, 0};
    w->C = info->sphere_channels;
    w->H = info->hidden_channels;
    w->Ce = info->edge_channels;
    w->B = info->num_distance_basis;
    w->F = w->B + 2 * w->Ce;
    w->num_layers = info->num_layers;
    w->num_elements = info->max_num_elements;
    w->cutoff = info->cutoff;
    w->energy_rmsd = task->energy_rmsd;
    w->energy_mean = task->energy_mean;
    w->element_references = task->element_references;

    w->system_embedding = alloc_or_fail(&ld, (size_t)w->C);
    if (!ld.failed)
        system_embedding(&ld, task, charge, spin, w->system_embedding);
    if (!ld.failed)
        route(&ld, counts, num_atoms, w->system_embedding, routing_input, coefficients);

    w->sphere_embedding = load(&ld, "backbone.sphere_embedding.weight");
    w->source_embedding = load(&ld, "backbone.source_embedding.weight");
    w->target_embedding = load(&ld, "backbone.target_embedding.weight");
    load_radial_mlp(&ld, &w->degree_radial, "backbone.edge_degree_embedding.rad_func");
    load_rms_norm(&ld, &w->final_norm, "backbone.norm");
    w->blocks = calloc((size_t)w->num_layers, sizeof(umas_block_weights));
    if (!w->blocks && !ld.failed) {
        umas_fail(err, "out of memory for the merged weights");
        ld.failed = 1;
    }
    for (int l = 0; l < w->num_layers && !ld.failed; l++)
        load_block(&ld, &w->blocks[l], l, coefficients);

    const char *head = "output_heads.energyandforcehead.head.energy_block";
    for (int i = 0; i < 3 && !ld.failed; i++) {
        char name[NAME_SIZE];
        tensor_name(name, "%s.%d", head, 2 * i);
        if (m->head_is_moe)
            load_expert_linear(&ld, &w->head[i], name, task->head_expert);
        else
            load_linear(&ld, &w->head[i], name, 1);
    }
    if (ld.failed) {
        umas_weights_free(w);
        return -1;
    }
    return 0;
}
