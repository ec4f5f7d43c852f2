/* model.h - the loaded model file: tensors (all experts), hyperparameters, tasks.
 * Internal to the core; the public view is umas_model_info in umas.h. */
#ifndef UMAS_MODEL_H
#define UMAS_MODEL_H

#include "umas.h"

#include <stdint.h>

enum { UMAS_MAX_DIMS = 4 };

typedef enum { UMAS_DTYPE_F32, UMAS_DTYPE_F64 } umas_dtype;

/* One tensor of the file. data points into the file mapping, little-endian, C order. */
typedef struct umas_tensor {
    char *name;
    umas_dtype dtype;
    int ndim;
    int64_t shape[UMAS_MAX_DIMS];
    size_t numel;
    const void *data;
} umas_tensor;

/* A task the model can be run as (a key of the dataset mapping). */
typedef struct umas_task {
    char *name;         /* e.g. "omat" */
    char *dataset;      /* dataset_mapping[name]: selects the dataset embedding */
    int head_expert;    /* index of dataset in the sorted dataset list */
    double energy_mean; /* normalizer: E = rmsd * E_model + mean */
    double energy_rmsd;
    double *element_references; /* [max_num_elements] eV, added per atom */
} umas_task;

struct umas_model {
    umas_model_info info;
    char *model_id;
    int head_is_moe;      /* DatasetSpecificMoEWrapper (per-dataset head experts) */
    int num_head_experts; /* Kh when head_is_moe */
    int *charge_balanced; /* channel indices with charge balancing (spec section 8) */
    int num_charge_balanced;
    int *spin_balanced;
    int num_spin_balanced;
    umas_task *tasks;
    int num_tasks;
    umas_tensor *tensors;
    int num_tensors;
    void *mapping; /* the whole file, mmap'ed read-only */
    size_t mapping_size;
};

/* Tensor by name, NULL if absent. */
const umas_tensor *umas_model_find(const umas_model *model, const char *name);

/* Copies elements [offset, offset + count) of a tensor into dst as doubles. */
void umas_tensor_read(const umas_tensor *tensor, size_t offset, size_t count, double *dst);

/* Task by name, NULL if the model has none of that name. */
const umas_task *umas_model_find_task(const umas_model *model, const char *name);

#endif
