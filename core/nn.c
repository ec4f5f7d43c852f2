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

void umas_layer_norm_forward(const umas_layer_norm *ln, int rows, double *x) {
    int n = ln->n;
    for (int r = 0; r < rows; r++) {
        double *row = x + (size_t)r * n;
        double mean = 0, var = 0;
        for (int i = 0; i < n; i++)
            mean += row[i];
        mean /= n;
        for (int i = 0; i < n; i++)
            var += (row[i] - mean) * (row[i] - mean);
        double inv_std = 1.0 / sqrt(var / n + 1e-5);
        for (int i = 0; i < n; i++)
            row[i] = (row[i] - mean) * inv_std * ln->weight[i] + ln->bias[i];
    }
}

void umas_silu_forward(double *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        x[i] = umas_silu(x[i]);
}

void umas_radial_mlp_forward(const umas_radial_mlp *mlp, int rows, const double *a, double *hidden,
                             double *hidden2, double *out) {
    int ce = mlp->fc1.out;
    umas_linear_forward(&mlp->fc1, rows, a, mlp->fc1.in, hidden, ce);
    umas_layer_norm_forward(&mlp->norm1, rows, hidden);
    umas_silu_forward(hidden, (size_t)rows * ce);
    umas_linear_forward(&mlp->fc2, rows, hidden, ce, hidden2, ce);
    umas_layer_norm_forward(&mlp->norm2, rows, hidden2);
    umas_silu_forward(hidden2, (size_t)rows * ce);
    umas_linear_forward(&mlp->fc3, rows, hidden2, ce, out, mlp->fc3.out);
}
