/* weights.h - the dense, MoLE-merged weights of one context, in float64.
 * Layouts are PyTorch's: a linear layer's weight is [out][in], y = W x + b. */
#ifndef UMAS_WEIGHTS_H
#define UMAS_WEIGHTS_H

#include <stddef.h>

typedef struct umas_linear {
    int out, in;
    double *weight; /* [out][in] */
    double *bias;   /* [out], or NULL */
} umas_linear;

typedef struct umas_layer_norm {
    int n;
    double *weight; /* [n] */
    double *bias;   /* [n] */
} umas_layer_norm;

/* RadialMLP: Linear(F->Ce) LayerNorm SiLU Linear(Ce->Ce) LayerNorm SiLU Linear(Ce->out). */
typedef struct umas_radial_mlp {
    umas_linear fc1;
    umas_layer_norm norm1;
    umas_linear fc2;
    umas_layer_norm norm2;
    umas_linear fc3;
} umas_radial_mlp;

/* rms_norm_sh: per-degree affine scale [3][C] and an l = 0 bias [C]. */
typedef struct umas_rms_norm {
    double *scale; /* [3][C] */
    double *bias;  /* [C] */
} umas_rms_norm;

typedef struct umas_block_weights {
    umas_rms_norm norm_1;
    umas_radial_mlp radial; /* a_e [F] -> rho [12C]: conv1's per-(m, l, channel) scales */
    umas_linear conv1_m0;   /* [2H + 3H][6C] + bias: gating outputs first, then l = 0, 1, 2 */
    umas_linear conv1_m1;   /* [4H][4C]: rows [0, 2H) = W1, [2H, 4H) = W2 */
    umas_linear conv1_m2;   /* [2H][2C] */
    umas_linear conv2_m0;   /* [3C][3H] + bias */
    umas_linear conv2_m1;   /* [4C][2H] */
    umas_linear conv2_m2;   /* [2C][H] */
    umas_rms_norm norm_2;
    umas_linear ffn_scalar; /* [2H][C] + bias, SiLU: the FFN's gate inputs */
    double *ffn_so3_1;      /* [3][H][C], one matrix per degree */
    double *ffn_so3_1_bias; /* [H], l = 0 only */
    double *ffn_so3_2;      /* [3][C][H] */
    double *ffn_so3_2_bias; /* [C] */
} umas_block_weights;

typedef struct umas_weights {
    int C, H, Ce, B, F; /* sphere, hidden, edge channels; distance basis; F = B + 2 Ce */
    int num_layers;
    int num_elements;
    double cutoff;
    double *sphere_embedding;      /* [Z][C] */
    double *source_embedding;      /* [Z][Ce] */
    double *target_embedding;      /* [Z][Ce] */
    double *system_embedding;      /* [C] c_sys = SiLU(mix_csd [charge; spin; dataset]) */
    umas_radial_mlp degree_radial; /* a_e -> [3C], edge-degree embedding */
    umas_block_weights *blocks;    /* [num_layers] */
    umas_rms_norm final_norm;
    umas_linear head[3]; /* energy MLP C -> H -> H -> 1 (the task's expert) */
    double energy_rmsd, energy_mean;
    const double *element_references; /* [Z], owned by the model */

    void **allocations; /* every array above, for umas_weights_free */
    int num_allocations, capacity;
    size_t bytes;
} umas_weights;

void umas_weights_free(umas_weights *w);

#endif
