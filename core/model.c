/* model.c - loading a umas model file (safetensors + JSON metadata, docs/model-format.md) and
 * checking every tensor the model needs against the hyperparameters. */
#define _POSIX_C_SOURCE 200809L
#include "model.h"

#include "error.h"

#include <cjson/cJSON.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

enum { MAX_HEADER_BYTES = 100 * 1024 * 1024, MAX_TASKS = 256 };

static char *copy_string(const char *s) {
    size_t n = strlen(s) + 1;
    char *c = malloc(n);
    if (c)
        memcpy(c, s, n);
    return c;
}

/* ---------------------------------------------------------------------------------------------
 * Tensor access
 * ------------------------------------------------------------------------------------------- */

const umas_tensor *umas_model_find(const umas_model *model, const char *name) {
    for (int i = 0; i < model->num_tensors; i++)
        if (strcmp(model->tensors[i].name, name) == 0)
            return &model->tensors[i];
    return NULL;
}

void umas_tensor_read(const umas_tensor *tensor, size_t offset, size_t count, double *dst) {
    const unsigned char *bytes = tensor->data;
    if (tensor->dtype == UMAS_DTYPE_F64) {
        memcpy(dst, bytes + offset * sizeof(double), count * sizeof(double));
        return;
    }
    for (size_t i = 0; i < count; i++) { /* memcpy: the data need not be 4-byte aligned */
        float v;
        memcpy(&v, bytes + (offset + i) * sizeof(float), sizeof v);
        dst[i] = v;
    }
}

const umas_task *umas_model_find_task(const umas_model *model, const char *name) {
    for (int i = 0; i < model->num_tasks; i++)
        if (strcmp(model->tasks[i].name, name) == 0)
            return &model->tasks[i];
    return NULL;
}

const umas_model_info *umas_model_get_info(const umas_model *model) {
    return &model->info;
}

const char *umas_model_task_name(const umas_model *model, int i) {
    return (i >= 0 && i < model->num_tasks) ? model->tasks[i].name : NULL;
}

size_t umas_model_bytes(const umas_model *model) {
    return model->mapping_size;
}

int umas_default_spin(const char *task) {
    return (task && strcmp(task, "omol") == 0) ? 1 : 0;
}

/* ---------------------------------------------------------------------------------------------
 * Safetensors header: {"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...}
 * ------------------------------------------------------------------------------------------- */

/* The JSON type of a value, for messages ("a string", "missing"). */
static const char *json_type_name(const cJSON *v) {
    if (!v)
        return "missing";
    if (cJSON_IsNumber(v))
        return "a number";
    if (cJSON_IsString(v))
        return "a string";
    if (cJSON_IsBool(v))
        return "a boolean";
    if (cJSON_IsNull(v))
        return "null";
    if (cJSON_IsArray(v))
        return "an array";
    if (cJSON_IsObject(v))
        return "an object";
    return "an invalid value";
}

/* A safetensors data offset: an integer in 0..2^53 (exact in a double). */
static int is_byte_offset(double v) {
    return v >= 0 && v <= 9007199254740992.0 && v == floor(v);
}

static void format_offset(double v, char *buf, size_t size) {
    if (is_byte_offset(v))
        snprintf(buf, size, "%.0f", v);
    else
        snprintf(buf, size, "%.6g", v);
}

static int parse_tensor_entry(const cJSON *entry, const unsigned char *data, size_t data_size,
                              umas_tensor *t, umas_error *err) {
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(entry, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(entry, "shape");
    const cJSON *offsets = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
    if (!cJSON_IsString(dtype) || !cJSON_IsArray(shape) || !cJSON_IsArray(offsets) ||
        cJSON_GetArraySize(offsets) != 2)
        return umas_fail(err, "tensor '%s': header entry needs dtype, shape and data_offsets",
                         t->name);
    size_t item;
    if (strcmp(dtype->valuestring, "F32") == 0) {
        t->dtype = UMAS_DTYPE_F32;
        item = 4;
    } else if (strcmp(dtype->valuestring, "F64") == 0) {
        t->dtype = UMAS_DTYPE_F64;
        item = 8;
    } else {
        return umas_fail(err, "tensor '%s': dtype %s is not supported (F32 or F64)", t->name,
                         dtype->valuestring);
    }
    t->ndim = cJSON_GetArraySize(shape);
    if (t->ndim > UMAS_MAX_DIMS)
        return umas_fail(err, "tensor '%s': %d dimensions (at most %d)", t->name, t->ndim,
                         UMAS_MAX_DIMS);
    t->numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        double v = cJSON_GetNumberValue(cJSON_GetArrayItem(shape, d));
        if (!(v >= 0 && v < 1e12) || v != floor(v))
            return umas_fail(err, "tensor '%s': bad shape", t->name);
        t->shape[d] = (int64_t)v;
        if (v > 0 && t->numel > SIZE_MAX / item / (size_t)v)
            return umas_fail(err, "tensor '%s': shape too large", t->name);
        t->numel *= (size_t)v;
    }
    const cJSON *first = cJSON_GetArrayItem(offsets, 0), *second = cJSON_GetArrayItem(offsets, 1);
    if (!cJSON_IsNumber(first) || !cJSON_IsNumber(second))
        return umas_fail(err, "tensor '%s': data_offsets must be two numbers (got %s, %s)", t->name,
                         json_type_name(first), json_type_name(second));
    double begin = first->valuedouble, end = second->valuedouble;
    /* Offsets are printed exactly only when they are plain byte counts; anything else (1e300,
     * -3, 2.5) is printed with %g, so that the message stays short. */
    char b[32], e[32];
    format_offset(begin, b, sizeof b);
    format_offset(end, e, sizeof e);
    if (!(begin >= 0 && end >= 0) || begin != floor(begin) || end != floor(end))
        return umas_fail(err,
                         "tensor '%s': data_offsets [%s, %s] are not non-negative integers"
                         " (corrupt file)",
                         t->name, b, e);
    if (begin > (double)data_size || end > (double)data_size)
        return umas_fail(err,
                         "tensor '%s': data_offsets [%s, %s] out of range: exceed the %zu"
                         " data bytes (truncated or corrupt file)",
                         t->name, b, e, data_size);
    if (begin > end)
        return umas_fail(err, "tensor '%s': data_offsets [%s, %s] reversed (corrupt file)", t->name,
                         b, e);
    if ((size_t)(end - begin) != t->numel * item)
        return umas_fail(err, "tensor '%s': %.0f data bytes for %zu elements of %s", t->name,
                         end - begin, t->numel, dtype->valuestring);
    t->data = data + (size_t)begin;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Metadata (the "umas" JSON document)
 * ------------------------------------------------------------------------------------------- */

static int get_int(const cJSON *obj, const char *key, int *out, umas_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || fabs(v->valuedouble) > 1e9)
        return umas_fail(err, "model metadata: '%s' must be an integer", key);
    *out = (int)v->valuedouble;
    return 0;
}

static int get_double(const cJSON *obj, const char *key, double *out, umas_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsNumber(v))
        return umas_fail(err, "model metadata: '%s' must be a number", key);
    *out = v->valuedouble;
    return 0;
}

/* A string option that must have one supported value, e.g. norm_type == "rms_norm_sh". */
static int require_string(const cJSON *obj, const char *key, const char *supported,
                          umas_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsString(v))
        return umas_fail(err, "model metadata: '%s' missing", key);
    if (strcmp(v->valuestring, supported) != 0)
        return umas_fail(err, "unsupported model: %s = '%s' (umas implements '%s', UMA-S)", key,
                         v->valuestring, supported);
    return 0;
}

static int require_bool(const cJSON *obj, const char *key, int supported, umas_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (v && !cJSON_IsBool(v))
        return umas_fail(err, "model metadata: '%s' must be true or false", key);
    if (v && cJSON_IsTrue(v) != supported)
        return umas_fail(err, "unsupported model: %s = %s (umas implements %s, UMA-S)", key,
                         supported ? "false" : "true", supported ? "true" : "false");
    return 0;
}

static int parse_channel_list(const cJSON *obj, const char *key, int channels, int **list,
                              int *count, umas_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    *list = NULL;
    *count = 0;
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsArray(v))
        return umas_fail(err, "model metadata: '%s' must be a list of channels", key);
    int n = cJSON_GetArraySize(v);
    if (n == 0)
        return 0;
    *list = malloc(sizeof(int) * (size_t)n);
    if (!*list)
        return umas_fail(err, "out of memory");
    for (int i = 0; i < n; i++) {
        double c = cJSON_GetNumberValue(cJSON_GetArrayItem(v, i));
        if (!(c >= 0 && c < channels) || c != floor(c))
            return umas_fail(err, "model metadata: '%s' has channel %g outside 0..%d", key, c,
                             channels - 1);
        (*list)[i] = (int)c;
    }
    *count = n;
    return 0;
}

static int parse_backbone(umas_model *m, const cJSON *bb, umas_error *err) {
    umas_model_info *info = &m->info;
    if (!cJSON_IsObject(bb))
        return umas_fail(err, "model metadata: 'backbone' missing");
    if (get_int(bb, "sphere_channels", &info->sphere_channels, err) ||
        get_int(bb, "hidden_channels", &info->hidden_channels, err) ||
        get_int(bb, "edge_channels", &info->edge_channels, err) ||
        get_int(bb, "lmax", &info->lmax, err) || get_int(bb, "mmax", &info->mmax, err) ||
        get_int(bb, "num_layers", &info->num_layers, err) ||
        get_int(bb, "num_distance_basis", &info->num_distance_basis, err) ||
        get_int(bb, "max_num_elements", &info->max_num_elements, err) ||
        get_int(bb, "max_neighbors", &info->max_neighbors, err) ||
        get_int(bb, "num_experts", &info->num_experts, err) ||
        get_double(bb, "cutoff", &info->cutoff, err))
        return -1;
    if (info->lmax != 2 || info->mmax != 2)
        return umas_fail(err, "unsupported model: lmax = %d, mmax = %d (umas implements 2, 2)",
                         info->lmax, info->mmax);
    if (info->sphere_channels < 1 || info->hidden_channels < 1 || info->edge_channels < 1 ||
        info->num_layers < 1 || info->num_distance_basis < 2 || info->num_experts < 1 ||
        info->max_num_elements < 2 || info->max_num_elements > 1000 ||
        !(info->cutoff > 0 && info->cutoff < 1e3))
        return umas_fail(err, "model metadata: hyperparameters out of range");
    if (require_string(bb, "norm_type", "rms_norm_sh", err) ||
        require_string(bb, "act_type", "gate", err) ||
        require_string(bb, "ff_type", "spectral", err) ||
        require_string(bb, "chg_spin_emb_type", "rand_emb", err) ||
        require_string(bb, "distance_function", "gaussian", err) ||
        require_string(bb, "moe_expert_coefficient_norm", "softmax", err) ||
        require_bool(bb, "use_composition_embedding", 1, err) ||
        require_bool(bb, "use_dataset_embedding", 1, err) ||
        require_bool(bb, "direct_forces", 0, err))
        return -1;
    if (parse_channel_list(bb, "charge_balanced_channels", info->sphere_channels,
                           &m->charge_balanced, &m->num_charge_balanced, err) ||
        parse_channel_list(bb, "spin_balanced_channels", info->sphere_channels, &m->spin_balanced,
                           &m->num_spin_balanced, err))
        return -1;
    info->num_charge_balanced = m->num_charge_balanced;
    info->num_spin_balanced = m->num_spin_balanced;
    return 0;
}

static int parse_task(umas_model *m, const cJSON *tasks, const cJSON *entry, umas_task *task,
                      umas_error *err) {
    if (!cJSON_IsString(entry))
        return umas_fail(err, "model metadata: dataset_mapping['%s'] must be a string",
                         entry->string);
    task->name = copy_string(entry->string);
    task->dataset = copy_string(entry->valuestring);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(tasks, entry->string);
    const cJSON *energy = cJSON_GetObjectItemCaseSensitive(t, "energy");
    const cJSON *refs = cJSON_GetObjectItemCaseSensitive(t, "element_references");
    if (!cJSON_IsObject(energy) || !cJSON_IsArray(refs))
        return umas_fail(err, "model metadata: task '%s' needs 'energy' and 'element_references'",
                         entry->string);
    if (get_double(energy, "mean", &task->energy_mean, err) ||
        get_double(energy, "rmsd", &task->energy_rmsd, err))
        return -1;
    int n = m->info.max_num_elements;
    if (cJSON_GetArraySize(refs) != n)
        return umas_fail(err, "model metadata: task '%s' has %d element references, expected %d",
                         task->name, cJSON_GetArraySize(refs), n);
    task->element_references = calloc((size_t)n, sizeof(double));
    if (!task->element_references || !task->dataset || !task->name)
        return umas_fail(err, "out of memory");
    for (int z = 0; z < n; z++) {
        const cJSON *v = cJSON_GetArrayItem(refs, z);
        if (!cJSON_IsNumber(v))
            return umas_fail(err, "model metadata: task '%s' element reference %d is not a number",
                             task->name, z);
        task->element_references[z] = v->valuedouble;
    }
    return 0;
}

static int compare_datasets(const umas_task *a, const umas_task *b) {
    return strcmp(a->dataset ? a->dataset : "", b->dataset ? b->dataset : "");
}

/* Tasks, head wrapper and head expert index: expert = position of the task's dataset in the
 * sorted list of distinct datasets (fairchem's DatasetSpecificMoEWrapper). */
static int parse_tasks(umas_model *m, const cJSON *meta, umas_error *err) {
    const cJSON *mapping = cJSON_GetObjectItemCaseSensitive(meta, "dataset_mapping");
    const cJSON *tasks = cJSON_GetObjectItemCaseSensitive(meta, "tasks");
    const cJSON *head = cJSON_GetObjectItemCaseSensitive(meta, "head");
    const cJSON *module = cJSON_GetObjectItemCaseSensitive(head, "module");
    if (!cJSON_IsObject(mapping) || !cJSON_IsObject(tasks) || !cJSON_IsString(module))
        return umas_fail(err, "model metadata: needs dataset_mapping, tasks and head.module");
    if (strcmp(module->valuestring, "DatasetSpecificMoEWrapper") == 0)
        m->head_is_moe = 1;
    else if (strcmp(module->valuestring, "DatasetSpecificSingleHeadWrapper") != 0)
        return umas_fail(err, "unsupported model: head module '%s'", module->valuestring);

    int n = cJSON_GetArraySize(mapping);
    if (n < 1 || n > MAX_TASKS)
        return umas_fail(err, "model metadata: dataset_mapping has %d entries (1..%d)", n,
                         MAX_TASKS);
    m->tasks = calloc((size_t)n, sizeof(umas_task));
    if (!m->tasks)
        return umas_fail(err, "out of memory");
    m->num_tasks = 0;
    const cJSON *entry;
    cJSON_ArrayForEach(entry, mapping) {
        if (parse_task(m, tasks, entry, &m->tasks[m->num_tasks++], err))
            return -1;
    }
    /* expert of task t = number of distinct datasets sorting before its dataset */
    m->num_head_experts = 0;
    for (int t = 0; t < m->num_tasks; t++) {
        m->tasks[t].head_expert = 0;
        for (int u = 0; u < m->num_tasks; u++) {
            int first = 1; /* u is the first task with its dataset */
            for (int v = 0; v < u && first; v++)
                first = compare_datasets(&m->tasks[v], &m->tasks[u]) != 0;
            if (first && compare_datasets(&m->tasks[u], &m->tasks[t]) < 0)
                m->tasks[t].head_expert++;
            if (first && t == 0)
                m->num_head_experts++;
        }
    }
    m->info.num_tasks = m->num_tasks;
    return 0;
}

static int parse_metadata(umas_model *m, const cJSON *header, umas_error *err) {
    const cJSON *meta_map = cJSON_GetObjectItemCaseSensitive(header, "__metadata__");
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(meta_map, "umas");
    if (!cJSON_IsString(text))
        return umas_fail(err, "not a umas model file: no __metadata__.umas (convert the fairchem"
                              " checkpoint with umas-convert)");
    cJSON *meta = cJSON_Parse(text->valuestring);
    if (!meta)
        return umas_fail(err, "model metadata: __metadata__.umas is not valid JSON");
    int rc = -1;
    const cJSON *format = cJSON_GetObjectItemCaseSensitive(meta, "format");
    const cJSON *version = cJSON_GetObjectItemCaseSensitive(meta, "format_version");
    const cJSON *model_id = cJSON_GetObjectItemCaseSensitive(meta, "model_id");
    if (!cJSON_IsString(format) || strcmp(format->valuestring, "umas-model") != 0)
        umas_fail(err, "not a umas model file: metadata format is not 'umas-model'");
    else if (!cJSON_IsNumber(version))
        umas_fail(err, "model metadata: format_version must be a number (got %s)",
                  json_type_name(version));
    else if (version->valuedouble != 1)
        umas_fail(err, "model file format_version %.6g is not supported (this umas reads 1)",
                  version->valuedouble);
    else if (!cJSON_IsString(model_id))
        umas_fail(err, "model metadata: 'model_id' missing");
    else if (!(m->model_id = copy_string(model_id->valuestring)))
        umas_fail(err, "out of memory");
    else if (parse_backbone(m, cJSON_GetObjectItemCaseSensitive(meta, "backbone"), err) == 0 &&
             parse_tasks(m, meta, err) == 0)
        rc = 0;
    m->info.model_id = m->model_id;
    cJSON_Delete(meta);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Schema: every tensor the model needs, with its shape from the hyperparameters.
 * ------------------------------------------------------------------------------------------- */

/* Checks that tensor `name` (printf format) exists with the given shape (-1 ends the list). */
static int expect(const umas_model *m, umas_error *err, const int64_t *shape, const char *format,
                  ...) __attribute__((format(printf, 4, 5)));

static int expect(const umas_model *m, umas_error *err, const int64_t *shape, const char *format,
                  ...) {
    char name[256];
    va_list args;
    va_start(args, format);
    vsnprintf(name, sizeof name, format, args);
    va_end(args);
    const umas_tensor *t = umas_model_find(m, name);
    if (!t)
        return umas_fail(err, "model file is missing tensor '%s'", name);
    int ndim = 0;
    while (shape[ndim] >= 0)
        ndim++;
    int same = (ndim == t->ndim);
    for (int d = 0; same && d < ndim; d++)
        same = (shape[d] == t->shape[d]);
    if (!same) {
        char want[64] = "", got[64] = "";
        for (int d = 0; d < ndim; d++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", d ? ", " : "",
                     (long long)shape[d]);
        for (int d = 0; d < t->ndim; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? ", " : "",
                     (long long)t->shape[d]);
        return umas_fail(err, "tensor '%s' has shape [%s], the hyperparameters need [%s]", name,
                         got, want);
    }
    return 0;
}

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__, -1})

static int check_radial_mlp(const umas_model *m, umas_error *err, const char *prefix, int64_t out) {
    int64_t ce = m->info.edge_channels;
    int64_t f = m->info.num_distance_basis + 2 * ce;
    if (expect(m, err, SHAPE(ce, f), "%s.net.0.weight", prefix) ||
        expect(m, err, SHAPE(ce), "%s.net.0.bias", prefix) ||
        expect(m, err, SHAPE(ce), "%s.net.1.weight", prefix) ||
        expect(m, err, SHAPE(ce), "%s.net.1.bias", prefix) ||
        expect(m, err, SHAPE(ce, ce), "%s.net.3.weight", prefix) ||
        expect(m, err, SHAPE(ce), "%s.net.3.bias", prefix) ||
        expect(m, err, SHAPE(ce), "%s.net.4.weight", prefix) ||
        expect(m, err, SHAPE(ce), "%s.net.4.bias", prefix) ||
        expect(m, err, SHAPE(out, ce), "%s.net.6.weight", prefix) ||
        expect(m, err, SHAPE(out), "%s.net.6.bias", prefix))
        return -1;
    return 0;
}

static int check_rms_norm(const umas_model *m, umas_error *err, const char *prefix) {
    int64_t c = m->info.sphere_channels;
    if (expect(m, err, SHAPE(3, c), "%s.affine_weight", prefix) ||
        expect(m, err, SHAPE(c), "%s.affine_bias", prefix))
        return -1;
    return 0;
}

static int check_block(const umas_model *m, umas_error *err, int l) {
    int64_t c = m->info.sphere_channels, h = m->info.hidden_channels, k = m->info.num_experts;
    char p[128];
    snprintf(p, sizeof p, "backbone.blocks.%d", l);
    char norm1[160], norm2[160], radial[160];
    snprintf(norm1, sizeof norm1, "%s.norm_1", p);
    snprintf(norm2, sizeof norm2, "%s.norm_2", p);
    snprintf(radial, sizeof radial, "%s.edge_wise.so2_conv_1.rad_func", p);
    if (check_rms_norm(m, err, norm1) || check_rms_norm(m, err, norm2) ||
        check_radial_mlp(m, err, radial, 12 * c))
        return -1;
    if (expect(m, err, SHAPE(k, 5 * h, 6 * c), "%s.edge_wise.so2_conv_1.fc_m0.weights", p) ||
        expect(m, err, SHAPE(5 * h), "%s.edge_wise.so2_conv_1.fc_m0.bias", p) ||
        expect(m, err, SHAPE(k, 4 * h, 4 * c), "%s.edge_wise.so2_conv_1.so2_m_conv.0.fc.weights",
               p) ||
        expect(m, err, SHAPE(k, 2 * h, 2 * c), "%s.edge_wise.so2_conv_1.so2_m_conv.1.fc.weights",
               p) ||
        expect(m, err, SHAPE(k, 3 * c, 3 * h), "%s.edge_wise.so2_conv_2.fc_m0.weights", p) ||
        expect(m, err, SHAPE(3 * c), "%s.edge_wise.so2_conv_2.fc_m0.bias", p) ||
        expect(m, err, SHAPE(k, 4 * c, 2 * h), "%s.edge_wise.so2_conv_2.so2_m_conv.0.fc.weights",
               p) ||
        expect(m, err, SHAPE(k, 2 * c, h), "%s.edge_wise.so2_conv_2.so2_m_conv.1.fc.weights", p) ||
        expect(m, err, SHAPE(2 * h, c), "%s.atom_wise.scalar_mlp.0.weight", p) ||
        expect(m, err, SHAPE(2 * h), "%s.atom_wise.scalar_mlp.0.bias", p) ||
        expect(m, err, SHAPE(3, h, c), "%s.atom_wise.so3_linear_1.weight", p) ||
        expect(m, err, SHAPE(h), "%s.atom_wise.so3_linear_1.bias", p) ||
        expect(m, err, SHAPE(3, c, h), "%s.atom_wise.so3_linear_2.weight", p) ||
        expect(m, err, SHAPE(c), "%s.atom_wise.so3_linear_2.bias", p))
        return -1;
    return 0;
}

static int check_head(const umas_model *m, umas_error *err) {
    int64_t c = m->info.sphere_channels, h = m->info.hidden_channels, kh = m->num_head_experts;
    const char *p = "output_heads.energyandforcehead.head.energy_block";
    if (m->head_is_moe)
        return (expect(m, err, SHAPE(kh, h, c), "%s.0.weights", p) ||
                expect(m, err, SHAPE(h), "%s.0.bias", p) ||
                expect(m, err, SHAPE(kh, h, h), "%s.2.weights", p) ||
                expect(m, err, SHAPE(h), "%s.2.bias", p) ||
                expect(m, err, SHAPE(kh, 1, h), "%s.4.weights", p) ||
                expect(m, err, SHAPE(1), "%s.4.bias", p))
                   ? -1
                   : 0;
    return (expect(m, err, SHAPE(h, c), "%s.0.weight", p) ||
            expect(m, err, SHAPE(h), "%s.0.bias", p) ||
            expect(m, err, SHAPE(h, h), "%s.2.weight", p) ||
            expect(m, err, SHAPE(h), "%s.2.bias", p) ||
            expect(m, err, SHAPE(1, h), "%s.4.weight", p) ||
            expect(m, err, SHAPE(1), "%s.4.bias", p))
               ? -1
               : 0;
}

static int check_schema(const umas_model *m, umas_error *err) {
    int64_t c = m->info.sphere_channels, ce = m->info.edge_channels, k = m->info.num_experts;
    int64_t z = m->info.max_num_elements;
    if (expect(m, err, SHAPE(z, c), "backbone.sphere_embedding.weight") ||
        expect(m, err, SHAPE(201, c), "backbone.charge_embedding.rand_emb.weight") ||
        expect(m, err, SHAPE(101, c), "backbone.spin_embedding.rand_emb.weight") ||
        expect(m, err, SHAPE(c, 3 * c), "backbone.mix_csd.weight") ||
        expect(m, err, SHAPE(c), "backbone.mix_csd.bias") ||
        expect(m, err, SHAPE(z, ce), "backbone.source_embedding.weight") ||
        expect(m, err, SHAPE(z, ce), "backbone.target_embedding.weight") ||
        expect(m, err, SHAPE(z, c), "backbone.composition_embedding.weight") ||
        expect(m, err, SHAPE(2 * k, 2 * c), "backbone.routing_mlp.0.weight") ||
        expect(m, err, SHAPE(2 * k), "backbone.routing_mlp.0.bias") ||
        expect(m, err, SHAPE(2 * k, 2 * k), "backbone.routing_mlp.2.weight") ||
        expect(m, err, SHAPE(2 * k), "backbone.routing_mlp.2.bias") ||
        expect(m, err, SHAPE(k, 2 * k), "backbone.routing_mlp.4.weight") ||
        expect(m, err, SHAPE(k), "backbone.routing_mlp.4.bias") ||
        check_radial_mlp(m, err, "backbone.edge_degree_embedding.rad_func", 3 * c) ||
        check_rms_norm(m, err, "backbone.norm") || check_head(m, err))
        return -1;
    for (int t = 0; t < m->num_tasks; t++)
        if (expect(m, err, SHAPE(1, c), "backbone.dataset_embedding.dataset_emb_dict.%s.weight",
                   m->tasks[t].dataset))
            return -1;
    for (int l = 0; l < m->info.num_layers; l++)
        if (check_block(m, err, l))
            return -1;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Load / free
 * ------------------------------------------------------------------------------------------- */

static int parse_file(umas_model *m, umas_error *err) {
    const unsigned char *bytes = m->mapping;
    if (m->mapping_size < 8)
        return umas_fail(err, "file too short to be a safetensors model (%zu bytes)",
                         m->mapping_size);
    uint64_t header_size = 0;
    for (int i = 7; i >= 0; i--)
        header_size = (header_size << 8) | bytes[i];
    if (header_size > MAX_HEADER_BYTES || 8 + header_size > m->mapping_size)
        return umas_fail(err,
                         "not a safetensors file or truncated (header of %llu bytes in a"
                         " %zu-byte file)",
                         (unsigned long long)header_size, m->mapping_size);
    /* parse a NUL-terminated copy: no JSON parser may read past the header, and nothing but
     * whitespace may follow the JSON object */
    char *text = malloc((size_t)header_size + 1);
    if (!text)
        return umas_fail(err, "out of memory for a %llu-byte header",
                         (unsigned long long)header_size);
    memcpy(text, bytes + 8, (size_t)header_size);
    text[header_size] = '\0';
    cJSON *header = cJSON_ParseWithOpts(text, NULL, 1);
    free(text);
    if (!cJSON_IsObject(header)) {
        cJSON_Delete(header);
        return umas_fail(err, "safetensors header is not valid JSON (corrupt file?)");
    }
    const unsigned char *data = bytes + 8 + header_size;
    size_t data_size = m->mapping_size - 8 - (size_t)header_size;
    int count = cJSON_GetArraySize(header);
    m->tensors = calloc((size_t)count, sizeof(umas_tensor));
    int rc = m->tensors ? 0 : umas_fail(err, "out of memory");
    const cJSON *entry;
    cJSON_ArrayForEach(entry, header) {
        if (rc || strcmp(entry->string, "__metadata__") == 0)
            continue;
        umas_tensor *t = &m->tensors[m->num_tensors++];
        t->name = copy_string(entry->string);
        if (!t->name)
            rc = umas_fail(err, "out of memory");
        else if (parse_tensor_entry(entry, data, data_size, t, err))
            rc = -1;
    }
    if (rc == 0)
        rc = parse_metadata(m, header, err);
    cJSON_Delete(header);
    if (rc == 0)
        rc = check_schema(m, err);
    return rc;
}

umas_model *umas_model_load(const char *path, umas_error *err) {
    if (!path)
        return umas_fail(err, "no model file given"), NULL;
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return umas_fail(err, "cannot open model file '%s' (missing or unreadable)", path), NULL;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return umas_fail(err, "model file '%s' is not a regular file", path), NULL;
    }
    umas_model *m = calloc(1, sizeof *m);
    if (!m) {
        close(fd);
        return umas_fail(err, "out of memory"), NULL;
    }
    m->mapping_size = (size_t)st.st_size;
    if (m->mapping_size > 0) {
        m->mapping = mmap(NULL, m->mapping_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m->mapping == MAP_FAILED) {
            m->mapping = NULL;
            close(fd);
            umas_model_free(m);
            return umas_fail(err, "cannot map model file '%s'", path), NULL;
        }
    }
    close(fd);
    if (parse_file(m, err)) {
        if (err) {
            char reason[sizeof err->message];
            memcpy(reason, err->message, sizeof reason);
            umas_fail(err, "model file '%s': %s", path, reason);
        }
        umas_model_free(m);
        return NULL;
    }
    return m;
}

void umas_model_free(umas_model *m) {
    if (!m)
        return;
    for (int i = 0; i < m->num_tensors; i++)
        free(m->tensors[i].name);
    free(m->tensors);
    for (int i = 0; i < m->num_tasks; i++) {
        free(m->tasks[i].name);
        free(m->tasks[i].dataset);
        free(m->tasks[i].element_references);
    }
    free(m->tasks);
    free(m->charge_balanced);
    free(m->spin_balanced);
    free(m->model_id);
    if (m->mapping)
        munmap(m->mapping, m->mapping_size);
    free(m);
}
