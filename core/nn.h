/* nn.h - dense layers on batches of rows (float64): linear, LayerNorm, SiLU, the radial MLP.
 * Each forward has its backward beside it: given the adjoint dy = dE/dy of the output, the
 * backward returns dx = dE/dx (weights are frozen: no weight gradients). */
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

/* d sigmoid / dx */
static inline double umas_sigmoid_derivative(double x) {
    double s = umas_sigmoid(x);
    return s * (1.0 - s);
}

/* d SiLU / dx = s (1 + x (1 - s)), s = sigmoid(x) */
static inline double umas_silu_derivative(double x) {
    double s = umas_sigmoid(x);
    return s * (1.0 + x * (1.0 - s));
}

/* y[rows][out] = x[rows][in] W^T + b. Row strides ldx, ldy (in elements). */
void umas_linear_forward(const umas_linear *lin, int rows, const double *x, int ldx, double *y,
                         int ldy);
/* dx[rows][0:cols] (+)= dy[rows][out] W[:, 0:cols]: the adjoint of the first `cols` inputs
 * (cols = lin->in for all of them). accumulate = 0 overwrites dx, 1 adds to it. */
void umas_linear_backward(const umas_linear *lin, int rows, const double *dy, int lddy, double *dx,
                          int lddx, int cols, int accumulate);

/* In place on x[rows][n]: (x - mean) / sqrt(var + 1e-5) * weight + bias (biased variance). */
void umas_layer_norm_forward(const umas_layer_norm *ln, int rows, double *x);
/* dx[rows][n] from the LayerNorm's input x[rows][n] and dy[rows][n]. dx may alias dy. */
void umas_layer_norm_backward(const umas_layer_norm *ln, int rows, const double *x,
                              const double *dy, double *dx);

/* In place on x[n]. */
void umas_silu_forward(double *x, size_t n);

/* The radial MLP keeps what its backward needs: the two LayerNorm inputs. */
typedef struct umas_radial_saved {
    double *pre_norm1; /* [rows][Ce] fc1 output */
    double *pre_norm2; /* [rows][Ce] fc2 output */
    double *hidden;    /* [rows][Ce] work space */
} umas_radial_saved;

/* out[rows][fc3.out] = MLP(a[rows][F]). */
void umas_radial_mlp_forward(const umas_radial_mlp *mlp, int rows, const double *a,
                             umas_radial_saved *saved, double *out);
/* da[rows][0:cols] = adjoint of the first `cols` MLP inputs (the distance basis needs only
 * cols = B), from the saved forward and d_out[rows][fc3.out]. work: [rows][2 Ce]. */
void umas_radial_mlp_backward(const umas_radial_mlp *mlp, int rows, const umas_radial_saved *saved,
                              const double *d_out, double *da, int cols, double *work);

/* The MLP after its first linear layer, from saved->pre_norm1 [rows][Ce] already filled (the
 * unified radial MLP of umas_fast computes every block's first layer in one product). */
void umas_radial_mlp_forward_rest(const umas_radial_mlp *mlp, int rows, umas_radial_saved *saved,
                                  double *out);
/* Its backward: d_pre_norm1 [rows][Ce] = dE/d(first layer output); work [rows][2 Ce] (must not
 * overlap d_pre_norm1). */
void umas_radial_mlp_backward_rest(const umas_radial_mlp *mlp, int rows,
                                   const umas_radial_saved *saved, const double *d_out,
                                   double *d_pre_norm1, double *work);

#endif
