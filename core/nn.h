/* nn.h - dense layers on batches of rows (float64): linear, LayerNorm, SiLU, the radial MLP. */
#ifndef UMAS_NN_H
#define UMAS_NN_H

#include "weights.h"

#include <math.h>

static inline double umas_sigmoid(double x) {
    return 1.0 / (1.0 + exp(-x));
}

static inline double umas_silu(double x) {
    return x * umas_sigmoid(x);
}

/* y[rows][out] = x[rows][in] W^T + b. Row strides ldx, ldy (in elements). */
void umas_linear_forward(const umas_linear *lin, int rows, const double *x, int ldx, double *y,
                         int ldy);

/* In place on x[rows][n]: (x - mean) / sqrt(var + 1e-5) * weight + bias (biased variance). */
void umas_layer_norm_forward(const umas_layer_norm *ln, int rows, double *x);

/* In place on x[n]. */
void umas_silu_forward(double *x, size_t n);

/* out[rows][fc3.out] = MLP(a[rows][F]); hidden is work space [rows][Ce]. */
void umas_radial_mlp_forward(const umas_radial_mlp *mlp, int rows, const double *a, double *hidden,
                             double *hidden2, double *out);

#endif
