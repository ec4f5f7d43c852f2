/* so3.c - node-level layers on spherical-harmonic features: rms_norm_sh, SpectralAtomwise. */
#include "so3.h"

#include "nn.h"

#include <math.h>

const int umas_degree_of[9] = {0, 1, 1, 1, 2, 2, 2, 2, 2};

/* w_i = 1 / ((2 l + 1)(lmax + 1)): each degree weighs the same in the mean square */
static const double degree_weight[3] = {1.0 / 3.0, 1.0 / 9.0, 1.0 / 15.0};

/* For one node x[9][C]: the l = 0 channel mean and r = 1/sqrt(weighted mean square + eps) of
 * the centred features f (f = x, with the l = 0 row centred). */
static void rms_statistics(const double *xn, int C, double *mean0, double *r) {
    double m = 0;
    for (int c = 0; c < C; c++)
        m += xn[c];
    m /= C;
    double mean_square = 0;
    for (int i = 0; i < 9; i++) {
        double centre = (i == 0) ? m : 0.0, sum = 0;
        for (int c = 0; c < C; c++) {
            double f = xn[i * C + c] - centre;
            sum += f * f;
        }
        mean_square += degree_weight[umas_degree_of[i]] * sum;
    }
    *mean0 = m;
    *r = 1.0 / sqrt(mean_square / C + 1e-5);
}

void umas_rms_norm_forward(const umas_rms_norm *norm, int nodes, int C, const double *x,
                           double *y) {
    for (int n = 0; n < nodes; n++) {
        const double *xn = x + (size_t)n * 9 * C;
        double *yn = y + (size_t)n * 9 * C;
        double mean0, r;
        rms_statistics(xn, C, &mean0, &r);
        for (int i = 0; i < 9; i++) {
            double centre = (i == 0) ? mean0 : 0.0;
            const double *scale = norm->scale + umas_degree_of[i] * C;
            for (int c = 0; c < C; c++)
                yn[i * C + c] = (xn[i * C + c] - centre) * r * scale[c];
        }
        for (int c = 0; c < C; c++)
            yn[c] += norm->bias[c];
    }
}

void umas_rms_norm_backward(const umas_rms_norm *norm, int nodes, int C, const double *x,
                            const double *dy, double *dx) {
    /* g = dy * scale;  S = sum g f;  df = r g - r^3 (w_i / C) f S;
     * dx = df, with the l = 0 row's channel mean removed (the centring) */
    for (int n = 0; n < nodes; n++) {
        const double *xn = x + (size_t)n * 9 * C, *dyn = dy + (size_t)n * 9 * C;
        double *dxn = dx + (size_t)n * 9 * C;
        double mean0, r;
        rms_statistics(xn, C, &mean0, &r);
        double S = 0;
        for (int i = 0; i < 9; i++) {
            double centre = (i == 0) ? mean0 : 0.0;
            const double *scale = norm->scale + umas_degree_of[i] * C;
            for (int c = 0; c < C; c++)
                S += dyn[i * C + c] * scale[c] * (xn[i * C + c] - centre);
        }
        for (int i = 0; i < 9; i++) {
            double centre = (i == 0) ? mean0 : 0.0;
            double w = degree_weight[umas_degree_of[i]] / C;
            const double *scale = norm->scale + umas_degree_of[i] * C;
            for (int c = 0; c < C; c++) {
                double f = xn[i * C + c] - centre;
                dxn[i * C + c] = r * dyn[i * C + c] * scale[c] - r * r * r * w * f * S;
            }
        }
        double mean_d0 = 0;
        for (int c = 0; c < C; c++)
            mean_d0 += dxn[c];
        mean_d0 /= C;
        for (int c = 0; c < C; c++)
            dxn[c] -= mean_d0;
    }
}

/* y[:, i, :] = x[:, i, :] W_{l(i)}^T (+ bias at i = 0) for every coefficient i: SO3_Linear. */
static void so3_linear_forward(const double *weight, const double *bias, int out, int in, int nodes,
                               const double *x, double *y) {
    for (int i = 0; i < 9; i++) {
        umas_linear lin = {out, in, (double *)weight + (size_t)umas_degree_of[i] * out * in,
                           i == 0 ? (double *)bias : NULL};
        umas_linear_forward(&lin, nodes, x + i * in, 9 * in, y + i * out, 9 * out);
    }
}

/* dx[:, i, :] (+)= dy[:, i, :] W_{l(i)}: the adjoint of so3_linear_forward. */
static void so3_linear_backward(const double *weight, int out, int in, int nodes, const double *dy,
                                double *dx, int accumulate) {
    for (int i = 0; i < 9; i++) {
        umas_linear lin = {out, in, (double *)weight + (size_t)umas_degree_of[i] * out * in, NULL};
        umas_linear_backward(&lin, nodes, dy + i * out, 9 * out, dx + i * in, 9 * in, in,
                             accumulate);
    }
}

void umas_spectral_atomwise_forward(const umas_block_weights *b, int nodes, int C, int H,
                                    const double *v, double *out, double *gates, double *hidden) {
    /* gates[N][2H] = sigmoid(SiLU(scalar_mlp(v[:, 0, :]))): [0, H) for l = 1, [H, 2H) for l = 2 */
    umas_linear_forward(&b->ffn_scalar, nodes, v, 9 * C, gates, 2 * H);
    for (size_t k = 0; k < (size_t)nodes * 2 * H; k++)
        gates[k] = umas_sigmoid(umas_silu(gates[k]));
    so3_linear_forward(b->ffn_so3_1, b->ffn_so3_1_bias, H, C, nodes, v, hidden);
    for (int n = 0; n < nodes; n++) {
        double *q = hidden + (size_t)n * 9 * H;
        const double *g = gates + (size_t)n * 2 * H;
        for (int c = 0; c < H; c++)
            q[c] = umas_silu(q[c]);
        for (int i = 1; i < 9; i++)
            for (int c = 0; c < H; c++)
                q[i * H + c] *= g[(umas_degree_of[i] - 1) * H + c];
    }
    so3_linear_forward(b->ffn_so3_2, b->ffn_so3_2_bias, C, H, nodes, hidden, out);
}

size_t umas_spectral_atomwise_backward_work(int nodes, int H) {
    return (size_t)nodes * (4 * (size_t)H + 18 * (size_t)H);
}

void umas_spectral_atomwise_backward(const umas_block_weights *b, int nodes, int C, int H,
                                     const double *v, const double *d_out, double *dv,
                                     double *work) {
    double *pre = work;                          /* [N][2H] scalar_mlp pre-activation p */
    double *d_pre = pre + (size_t)nodes * 2 * H; /* [N][2H] */
    double *q = d_pre + (size_t)nodes * 2 * H;   /* [N][9][H] so3_linear_1 output */
    double *d_r = q + (size_t)nodes * 9 * H;     /* [N][9][H] adjoint of the gated hidden */

    /* forward again: p = W_s v0 + b_s, s = SiLU(p), g = sigmoid(s); q = so3_linear_1(v) */
    umas_linear_forward(&b->ffn_scalar, nodes, v, 9 * C, pre, 2 * H);
    so3_linear_forward(b->ffn_so3_1, b->ffn_so3_1_bias, H, C, nodes, v, q);
    /* d_r = so3_linear_2^T(d_out) */
    so3_linear_backward(b->ffn_so3_2, C, H, nodes, d_out, d_r, 0);
    for (int n = 0; n < nodes; n++) {
        const double *p = pre + (size_t)n * 2 * H;
        double *dp = d_pre + (size_t)n * 2 * H;
        double *qn = q + (size_t)n * 9 * H, *drn = d_r + (size_t)n * 9 * H;
        for (int k = 0; k < 2 * H; k++)
            dp[k] = 0;
        /* gate: r[0] = SiLU(q[0]); r[i] = q[i] g_l(i). ds_l = sum_i dr[i] q[i]. */
        for (int i = 1; i < 9; i++)
            for (int c = 0; c < H; c++)
                dp[(umas_degree_of[i] - 1) * H + c] += drn[i * H + c] * qn[i * H + c];
        for (int k = 0; k < 2 * H; k++) {
            double s = umas_silu(p[k]);
            dp[k] *= umas_sigmoid_derivative(s) * umas_silu_derivative(p[k]);
        }
        /* dq, written over q (q is not needed after this) */
        for (int c = 0; c < H; c++)
            qn[c] = drn[c] * umas_silu_derivative(qn[c]);
        for (int i = 1; i < 9; i++)
            for (int c = 0; c < H; c++) {
                double g = umas_sigmoid(umas_silu(p[(umas_degree_of[i] - 1) * H + c]));
                qn[i * H + c] = drn[i * H + c] * g;
            }
    }
    /* dv = so3_linear_1^T(dq) + scalar_mlp^T(dp) on l = 0 */
    so3_linear_backward(b->ffn_so3_1, H, C, nodes, q, dv, 0);
    umas_linear_backward(&b->ffn_scalar, nodes, d_pre, 2 * H, dv, 9 * C, C, 1);
}
