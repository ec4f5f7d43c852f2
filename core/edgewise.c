/* edgewise.c - messages of an eSCN-MD block and the edge-degree embedding (general backend). */
#include "edgewise.h"

#include "nn.h"

#include <string.h>

const int umas_m_to_l[9] = {0, 2, 6, 3, 7, 1, 5, 8, 4};

/* Degree l of M-order position p. */
static const int degree_of_m[9] = {0, 1, 2, 1, 2, 1, 2, 2, 2};

static const double one = 1.0;

/* Row i (L-order) of the block-diagonal D, restricted to its block: coefficients
 * D[i][start .. start + size). */
static const double *wigner_row(const umas_wigner *D, int i, int *start, int *size) {
    if (i == 0) {
        *start = 0, *size = 1;
        return &one;
    }
    if (i < 4) {
        *start = 1, *size = 3;
        return D->l1[i - 1];
    }
    *start = 4, *size = 5;
    return D->l2[i - 4];
}

size_t umas_edgewise_work_doubles(int n, int C, int H) {
    int wide = 4 * (C > H ? C : H);
    return (size_t)n * (18 * C + 5 * H + 9 * H + 2 * wide + 9 * C);
}

void umas_edgewise_work_bind(umas_edgewise_work *work, double *memory, int n, int C, int H) {
    int wide = 4 * (C > H ? C : H);
    work->rotated = memory;
    work->conv1_m0 = work->rotated + (size_t)n * 18 * C;
    work->gated = work->conv1_m0 + (size_t)n * 5 * H;
    work->product_r = work->gated + (size_t)n * 9 * H;
    work->product_i = work->product_r + (size_t)n * wide;
    work->messages = work->product_i + (size_t)n * wide;
}

/* y[p][0:C] = (D x_source)[m_to_l[p]], y[p][C:2C] = (D x_target)[m_to_l[p]]: y is [9][2C]. */
static void gather_rotate(const umas_wigner *D, const double *x_source, const double *x_target,
                          int C, double *y) {
    for (int p = 0; p < 9; p++) {
        int start, size;
        const double *row = wigner_row(D, umas_m_to_l[p], &start, &size);
        double *yp = y + (size_t)p * 2 * C;
        memset(yp, 0, sizeof(double) * 2 * (size_t)C);
        for (int k = 0; k < size; k++) {
            const double *s = x_source + (size_t)(start + k) * C;
            const double *t = x_target + (size_t)(start + k) * C;
            for (int c = 0; c < C; c++) {
                yp[c] += row[k] * s[c];
                yp[C + c] += row[k] * t[c];
            }
        }
    }
}

/* x_out[j] += env * sum_i D[i][j] z[m_of_l[i]]: rotate an M-order message back, scatter. */
static void rotate_back_scatter(const umas_wigner *D, double env, const double *z, int C,
                                double *x_out) {
    for (int p = 0; p < 9; p++) {
        int i = umas_m_to_l[p], start, size;
        const double *row = wigner_row(D, i, &start, &size);
        const double *zp = z + (size_t)p * C;
        for (int k = 0; k < size; k++) {
            double a = env * row[k];
            double *out = x_out + (size_t)(start + k) * C;
            for (int c = 0; c < C; c++)
                out[c] += a * zp[c];
        }
    }
}

/* The m > 0 part of an SO(2) convolution: complex multiplication (x_r + i x_i)(W1 + i W2) with
 * W = [W1; W2] ([2 half][in]), done like fairchem's general backend: one linear layer on x_r
 * and on x_i, then out_r = W1 x_r - W2 x_i, out_i = W2 x_r + W1 x_i. */
static void so2_m_forward(const umas_linear *W, int n, const double *x_r, const double *x_i,
                          int ldx, double *out_r, double *out_i, int ldo, double *product_r,
                          double *product_i) {
    int half = W->out / 2;
    umas_linear_forward(W, n, x_r, ldx, product_r, W->out);
    umas_linear_forward(W, n, x_i, ldx, product_i, W->out);
    for (int e = 0; e < n; e++) {
        const double *pr = product_r + (size_t)e * W->out;
        const double *pi = product_i + (size_t)e * W->out;
        for (int k = 0; k < half; k++) {
            out_r[(size_t)e * ldo + k] = pr[k] - pi[half + k];
            out_i[(size_t)e * ldo + k] = pr[half + k] + pi[k];
        }
    }
}

/* Radial scaling of the rotated features y[n][9][2C] (M-order) by rho[n][12C]: rows 0..2 by
 * rho[0, 6C), rows 3, 4 and (again) 5, 6 by rho[6C, 10C), rows 7 and 8 by rho[10C, 12C). */
static void scale_by_radial(int n, int C, const double *radial, double *y) {
    for (int e = 0; e < n; e++) {
        double *ye = y + (size_t)e * 18 * C;
        const double *re = radial + (size_t)e * 12 * C;
        for (int k = 0; k < 6 * C; k++)
            ye[k] *= re[k];
        for (int k = 0; k < 4 * C; k++) {
            ye[6 * C + k] *= re[6 * C + k];
            ye[10 * C + k] *= re[6 * C + k];
        }
        for (int k = 0; k < 2 * C; k++) {
            ye[14 * C + k] *= re[10 * C + k];
            ye[16 * C + k] *= re[10 * C + k];
        }
    }
}

/* Gate (M-order): G[0] = SiLU(O[0]); G[p] = O[p] * sigmoid(gate_l), l = degree of p. */
static void gate_forward(int n, int H, const double *conv1_m0, double *o) {
    for (int e = 0; e < n; e++) {
        const double *gate = conv1_m0 + (size_t)e * 5 * H;
        double *oe = o + (size_t)e * 9 * H;
        for (int c = 0; c < H; c++)
            oe[c] = umas_silu(oe[c]);
        for (int p = 1; p < 9; p++) {
            const double *g = gate + (degree_of_m[p] - 1) * H;
            for (int c = 0; c < H; c++)
                oe[p * H + c] *= umas_sigmoid(g[c]);
        }
    }
}

void umas_edgewise_forward(const umas_block_weights *b, int C, int H, const umas_edge_chunk *edges,
                           const double *radial, const double *x, double *x_out,
                           umas_edgewise_work *work) {
    int n = edges->count;
    double *y = work->rotated, *o = work->gated, *z = work->messages;

    /* gather [x_source | x_target], rotate into the edge frame, L -> M order: y [n][9][2C] */
    for (int e = 0; e < n; e++)
        gather_rotate(&edges->wigner[e], x + (size_t)edges->source[e] * 9 * C,
                      x + (size_t)edges->target[e] * 9 * C, C, y + (size_t)e * 18 * C);
    scale_by_radial(n, C, radial, y);

    /* conv1. m = 0: rows 0..2 ([6C]) -> [gates 2H | l = 0, 1, 2 outputs 3H] */
    umas_linear_forward(&b->conv1_m0, n, y, 18 * C, work->conv1_m0, 5 * H);
    for (int e = 0; e < n; e++)
        memcpy(o + (size_t)e * 9 * H, work->conv1_m0 + (size_t)e * 5 * H + 2 * H,
               sizeof(double) * 3 * (size_t)H);
    /* m = 1: real rows 3, 4, imaginary rows 5, 6 ([4C] each) -> o rows 3, 4 | 5, 6 */
    so2_m_forward(&b->conv1_m1, n, y + 6 * C, y + 10 * C, 18 * C, o + 3 * H, o + 5 * H, 9 * H,
                  work->product_r, work->product_i);
    /* m = 2: real row 7, imaginary row 8 ([2C] each) -> o rows 7 | 8 */
    so2_m_forward(&b->conv1_m2, n, y + 14 * C, y + 16 * C, 18 * C, o + 7 * H, o + 8 * H, 9 * H,
                  work->product_r, work->product_i);

    gate_forward(n, H, work->conv1_m0, o);

    /* conv2: the same structure, H -> C channels, no radial, m = 0 with bias */
    umas_linear_forward(&b->conv2_m0, n, o, 9 * H, z, 9 * C);
    so2_m_forward(&b->conv2_m1, n, o + 3 * H, o + 5 * H, 9 * H, z + 3 * C, z + 5 * C, 9 * C,
                  work->product_r, work->product_i);
    so2_m_forward(&b->conv2_m2, n, o + 7 * H, o + 8 * H, 9 * H, z + 7 * C, z + 8 * C, 9 * C,
                  work->product_r, work->product_i);

    /* M -> L, rotate back with the envelope, sum into the receiver */
    for (int e = 0; e < n; e++)
        rotate_back_scatter(&edges->wigner[e], edges->envelope[e], z + (size_t)e * 9 * C, C,
                            x_out + (size_t)edges->target[e] * 9 * C);
}

void umas_edge_degree_forward(int C, const umas_edge_chunk *edges, const double *radial,
                              double *x_out) {
    for (int e = 0; e < edges->count; e++) {
        const umas_wigner *D = &edges->wigner[e];
        const double *rho = radial + (size_t)e * 3 * C; /* rows l = 0, 1, 2 */
        double a = edges->envelope[e] / 5.0;            /* fairchem's rescale factor 5 */
        double *out = x_out + (size_t)edges->target[e] * 9 * C;
        for (int c = 0; c < C; c++)
            out[c] += a * rho[c];
        for (int j = 0; j < 3; j++) /* m = 0 row of D^1 */
            for (int c = 0; c < C; c++)
                out[(1 + j) * C + c] += a * D->l1[1][j] * rho[C + c];
        for (int j = 0; j < 5; j++) /* m = 0 row of D^2 */
            for (int c = 0; c < C; c++)
                out[(4 + j) * C + c] += a * D->l2[2][j] * rho[2 * C + c];
    }
}
