/* nn.c - dense layers on batches of rows (float64), matrix products through CBLAS. */
#include "nn.h"

#include <cblas.h>

void umas_linear_forward(const umas_linear *lin, int rows, const double *x, int ldx, double *y,
                         int ldy) {
    if (rows == 0)
        return;
    double beta = 0.0;
    if (lin->bias) {
        for (int r = 0; r < rows; r++)
            for (int o = 0; o < lin->out; o++)
                y[(size_t)r * ldy + o] = lin->bias[o];
        beta = 1.0;
    }
    /* y[rows][out] (+)= x[rows][in] . W[out][in]^T */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, lin->out, lin->in, 1.0, x, ldx,
                lin->weight, lin->in, beta, y, ldy);
}

void umas_linear_backward(const umas_linear *lin, int rows, const double *dy, int lddy, double *dx,
                          int lddx, int cols, int accumulate) {
    if (rows == 0)
        return;
    /* dx[rows][cols] (+)= dy[rows][out] . W[out][0:cols] */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols, lin->out, 1.0, dy, lddy,
                lin->weight, lin->in, accumulate ? 1.0 : 0.0, dx, lddx);
}

/* Mean and 1/sqrt(var + eps) of one row. */
static void row_statistics(const double *row, int n, double *mean, double *inv_std) {
    double m = 0, var = 0;
    for (int i = 0; i < n; i++)
        m += row[i];
    m /= n;
    for (int i = 0; i < n; i++)
        var += (row[i] - m) * (row[i] - m);
    *mean = m;
    *inv_std = 1.0 / sqrt(var / n + 1e-5);
}

void umas_layer_norm_forward(const umas_layer_norm *ln, int rows, double *x) {
    int n = ln->n;
    for (int r = 0; r < rows; r++) {
        double *row = x + (size_t)r * n, mean, inv_std;
        row_statistics(row, n, &mean, &inv_std);
        for (int i = 0; i < n; i++)
            row[i] = (row[i] - mean) * inv_std * ln->weight[i] + ln->bias[i];
    }
}

void umas_layer_norm_backward(const umas_layer_norm *ln, int rows, const double *x,
                              const double *dy, double *dx) {
    /* x_hat = (x - mean) s;  g = weight * dy;
     * dx = s (g - mean(g) - x_hat mean(g x_hat)) */
    int n = ln->n;
    for (int r = 0; r < rows; r++) {
        const double *xr = x + (size_t)r * n, *dyr = dy + (size_t)r * n;
        double *dxr = dx + (size_t)r * n, mean, inv_std;
        row_statistics(xr, n, &mean, &inv_std);
        double mean_g = 0, mean_gx = 0;
        for (int i = 0; i < n; i++) {
            double g = ln->weight[i] * dyr[i], x_hat = (xr[i] - mean) * inv_std;
            mean_g += g;
            mean_gx += g * x_hat;
        }
        mean_g /= n;
        mean_gx /= n;
        for (int i = 0; i < n; i++) {
            double g = ln->weight[i] * dyr[i], x_hat = (xr[i] - mean) * inv_std;
            dxr[i] = inv_std * (g - mean_g - x_hat * mean_gx);
        }
    }
}

void umas_silu_forward(double *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        x[i] = umas_silu(x[i]);
}

/* hidden = SiLU(LayerNorm(pre_norm)) */
static void norm_silu(const umas_layer_norm *ln, int rows, const double *pre_norm, double *hidden) {
    size_t n = (size_t)rows * ln->n;
    for (size_t i = 0; i < n; i++)
        hidden[i] = pre_norm[i];
    umas_layer_norm_forward(ln, rows, hidden);
    umas_silu_forward(hidden, n);
}

/* d_pre_norm = LayerNorm^T(SiLU'(LayerNorm(pre_norm)) * d_hidden); work [rows][n]. */
static void norm_silu_backward(const umas_layer_norm *ln, int rows, const double *pre_norm,
                               const double *d_hidden, double *d_pre_norm, double *work) {
    size_t n = (size_t)rows * ln->n;
    for (size_t i = 0; i < n; i++)
        work[i] = pre_norm[i];
    umas_layer_norm_forward(ln, rows, work);
    for (size_t i = 0; i < n; i++)
        work[i] = d_hidden[i] * umas_silu_derivative(work[i]);
    umas_layer_norm_backward(ln, rows, pre_norm, work, d_pre_norm);
}

void umas_radial_mlp_forward_rest(const umas_radial_mlp *mlp, int rows, umas_radial_saved *saved,
                                  double *out) {
    int ce = mlp->fc1.out;
    norm_silu(&mlp->norm1, rows, saved->pre_norm1, saved->hidden);
    umas_linear_forward(&mlp->fc2, rows, saved->hidden, ce, saved->pre_norm2, ce);
    norm_silu(&mlp->norm2, rows, saved->pre_norm2, saved->hidden);
    umas_linear_forward(&mlp->fc3, rows, saved->hidden, ce, out, mlp->fc3.out);
}

void umas_radial_mlp_forward(const umas_radial_mlp *mlp, int rows, const double *a,
                             umas_radial_saved *saved, double *out) {
    umas_linear_forward(&mlp->fc1, rows, a, mlp->fc1.in, saved->pre_norm1, mlp->fc1.out);
    umas_radial_mlp_forward_rest(mlp, rows, saved, out);
}

void umas_radial_mlp_backward_rest(const umas_radial_mlp *mlp, int rows,
                                   const umas_radial_saved *saved, const double *d_out,
                                   double *d_pre_norm1, double *work) {
    int ce = mlp->fc1.out;
    double *d_hidden = work, *scratch = work + (size_t)rows * ce;
    umas_linear_backward(&mlp->fc3, rows, d_out, mlp->fc3.out, d_hidden, ce, ce, 0);
    norm_silu_backward(&mlp->norm2, rows, saved->pre_norm2, d_hidden, d_hidden, scratch);
    umas_linear_backward(&mlp->fc2, rows, d_hidden, ce, scratch, ce, ce, 0);
    norm_silu_backward(&mlp->norm1, rows, saved->pre_norm1, scratch, d_pre_norm1, d_hidden);
}

void umas_radial_mlp_backward(const umas_radial_mlp *mlp, int rows, const umas_radial_saved *saved,
                              const double *d_out, double *da, int cols, double *work) {
    int ce = mlp->fc1.out;
    double *d_pre_norm1 = work + (size_t)rows * ce;
    umas_radial_mlp_backward_rest(mlp, rows, saved, d_out, d_pre_norm1, work);
    umas_linear_backward(&mlp->fc1, rows, d_pre_norm1, ce, da, cols, cols, 0);
}
