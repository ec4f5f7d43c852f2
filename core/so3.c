/* so3.c - node-level layers on spherical-harmonic features: rms_norm_sh, SpectralAtomwise. */
#include "so3.h"

#include "nn.h"

#include <math.h>

const int umas_degree_of[9] = {0, 1, 1, 1, 2, 2, 2, 2, 2};

void umas_rms_norm_forward(const umas_rms_norm *norm, int nodes, int C, const double *x,
                           double *y) {
    /* w_i = 1 / ((2 l + 1)(lmax + 1)): each degree weighs the same in the mean square */
    static const double degree_weight[3] = {1.0 / 3.0, 1.0 / 9.0, 1.0 / 15.0};
    for (int n = 0; n < nodes; n++) {
        const double *xn = x + (size_t)n * 9 * C;
        double *yn = y + (size_t)n * 9 * C;
        double mean0 = 0;
        for (int c = 0; c < C; c++)
            mean0 += xn[c];
        mean0 /= C;
        double mean_square = 0;
        for (int i = 0; i < 9; i++) {
            double centre = (i == 0) ? mean0 : 0.0, sum = 0;
            for (int c = 0; c < C; c++) {
                double f = xn[i * C + c] - centre;
                sum += f * f;
            }
            mean_square += degree_weight[umas_degree_of[i]] * sum;
        }
        double r = 1.0 / sqrt(mean_square / C + 1e-5);
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

/* y[:, i, :] = x[:, i, :] W_{l(i)}^T (+ bias at i = 0) for every coefficient i: SO3_Linear. */
static void so3_linear_forward(const double *weight, const double *bias, int out, int in, int nodes,
                               const double *x, double *y) {
    for (int i = 0; i < 9; i++) {
        umas_linear lin = {out, in, (double *)weight + (size_t)umas_degree_of[i] * out * in,
                           i == 0 ? (double *)bias : NULL};
        umas_linear_forward(&lin, nodes, x + i * in, 9 * in, y + i * out, 9 * out);
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
