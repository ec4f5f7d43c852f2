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
    size_t forward = 18 * C + 5 * H + 9 * H + 2 * wide + 9 * C;
    size_t backward = 18 * C + 9 * H + 5 * H + 9 * C + 18 * C;
    return (size_t)n * (forward + backward);
}

void umas_edgewise_work_bind(umas_edgewise_work *work, double *memory, int n, int C, int H) {
    size_t wide = 4 * (size_t)(C > H ? C : H), rows = (size_t)n;
    work->rotated = memory;
    work->conv1_m0 = work->rotated + rows * 18 * C;
    work->gated = work->conv1_m0 + rows * 5 * H;
    work->product_r = work->gated + rows * 9 * H;
    work->product_i = work->product_r + rows * wide;
    work->messages = work->product_i + rows * wide;
    work->d_rotated = work->messages + rows * 9 * C;
    work->d_gated = work->d_rotated + rows * 18 * C;
    work->d_conv1_m0 = work->d_gated + rows * 9 * H;
    work->d_messages = work->d_conv1_m0 + rows * 5 * H;
    work->unscaled = work->d_messages + rows * 9 * C;
}

/* y[p][0:C] = (D x_source)[m_to_l[p]], y[p][C:2C] = (D x_target)[m_to_l[p]]: y is [9][2C]. */
void umas_gather_rotate(const umas_wigner *D, const double *x_source, const double *x_target, int C,
                        double *y) {
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
void umas_rotate_back_scatter(const umas_wigner *D, double env, const double *z, int C,
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

/* Adjoint of so2_m_forward: dx_r = W1^T do_r + W2^T do_i = [do_r | do_i] W,
 * dx_i = -W2^T do_r + W1^T do_i = [do_i | -do_r] W. */
static void so2_m_backward(const umas_linear *W, int n, const double *do_r, const double *do_i,
                           int ldo, double *dx_r, double *dx_i, int ldx, double *stack_r,
                           double *stack_i) {
    int half = W->out / 2;
    for (int e = 0; e < n; e++) {
        double *sr = stack_r + (size_t)e * W->out, *si = stack_i + (size_t)e * W->out;
        const double *r = do_r + (size_t)e * ldo, *i = do_i + (size_t)e * ldo;
        for (int k = 0; k < half; k++) {
            sr[k] = r[k];
            sr[half + k] = i[k];
            si[k] = i[k];
            si[half + k] = -r[k];
        }
    }
    umas_linear_backward(W, n, stack_r, W->out, dx_r, ldx, W->in, 0);
    umas_linear_backward(W, n, stack_i, W->out, dx_i, ldx, W->in, 0);
}

/* Radial scaling of the rotated features y[n][9][2C] (M-order) by rho[n][12C]: rows 0..2 by
 * rho[0, 6C), rows 3, 4 and (again) 5, 6 by rho[6C, 10C), rows 7 and 8 by rho[10C, 12C). */
static int radial_slot(int k, int C) {
    /* position k of an edge's [9][2C] rotated features -> its radial entry */
    if (k < 6 * C)
        return k;
    if (k < 14 * C)
        return 6 * C + (k - 6 * C) % (4 * C);
    return 10 * C + (k - 14 * C) % (2 * C);
}

static void scale_by_radial(int n, int C, const double *radial, double *y) {
    for (int e = 0; e < n; e++) {
        double *ye = y + (size_t)e * 18 * C;
        const double *re = radial + (size_t)e * 12 * C;
        for (int k = 0; k < 18 * C; k++)
            ye[k] *= re[radial_slot(k, C)];
    }
}

/* Adjoint of scale_by_radial: d_radial = sum over the slot's uses of dy * y_unscaled; dy *= rho. */
static void scale_by_radial_backward(int n, int C, const double *radial, const double *unscaled,
                                     double *dy, double *d_radial) {
    for (int e = 0; e < n; e++) {
        double *dye = dy + (size_t)e * 18 * C, *dre = d_radial + (size_t)e * 12 * C;
        const double *ye = unscaled + (size_t)e * 18 * C, *re = radial + (size_t)e * 12 * C;
        for (int k = 0; k < 12 * C; k++)
            dre[k] = 0;
        for (int k = 0; k < 18 * C; k++) {
            int slot = radial_slot(k, C);
            dre[slot] += dye[k] * ye[k];
            dye[k] *= re[slot];
        }
    }
}

/* Gate (M-order): G[0] = SiLU(O[0]); G[p] = O[p] * sigmoid(gate_l), l = degree of p.
 * g may alias o. */
void umas_edge_gate_forward(int n, int H, const double *conv1_m0, const double *o, double *g) {
    for (int e = 0; e < n; e++) {
        const double *gate = conv1_m0 + (size_t)e * 5 * H;
        const double *oe = o + (size_t)e * 9 * H;
        double *ge = g + (size_t)e * 9 * H;
        for (int c = 0; c < H; c++)
            ge[c] = umas_silu(oe[c]);
        for (int p = 1; p < 9; p++) {
            const double *a = gate + (degree_of_m[p] - 1) * H;
            for (int c = 0; c < H; c++)
                ge[p * H + c] = oe[p * H + c] * umas_sigmoid(a[c]);
        }
    }
}

/* Its backward, in place on dg (which becomes dO); d_conv1_m0[e][0:2H] = d gate inputs and
 * d_conv1_m0[e][2H:5H] = dO rows 0..2 (the m = 0 outputs of conv1). */
void umas_edge_gate_backward(int n, int H, const double *conv1_m0, const double *o, double *dg,
                             double *d_conv1_m0) {
    for (int e = 0; e < n; e++) {
        const double *gate = conv1_m0 + (size_t)e * 5 * H;
        const double *oe = o + (size_t)e * 9 * H;
        double *dge = dg + (size_t)e * 9 * H, *dce = d_conv1_m0 + (size_t)e * 5 * H;
        for (int k = 0; k < 2 * H; k++)
            dce[k] = 0;
        for (int p = 1; p < 9; p++) {
            int l = degree_of_m[p];
            for (int c = 0; c < H; c++) {
                double a = gate[(l - 1) * H + c];
                dce[(l - 1) * H + c] += dge[p * H + c] * oe[p * H + c];
                dge[p * H + c] *= umas_sigmoid(a);
            }
        }
        for (int k = 0; k < 2 * H; k++)
            dce[k] *= umas_sigmoid_derivative(gate[k]);
        for (int c = 0; c < H; c++)
            dge[c] *= umas_silu_derivative(oe[c]);
        for (int k = 0; k < 3 * H; k++)
            dce[2 * H + k] = dge[k];
    }
}

/* The chunk's messages z = conv2(gate(conv1(to_m D [x_s | x_t] * radial))) [n][9][C] in
 * work->messages, keeping on the way what the backward needs: work->rotated (after the radial
 * scaling), work->conv1_m0, and, when `keep` is set, work->unscaled (before the scaling) and
 * the conv1 output before the gate in work->gated (the gated values then go to
 * work->d_gated as scratch). */
static void edgewise_messages(const umas_block_weights *b, int C, int H,
                              const umas_edge_chunk *edges, const double *radial, const double *x,
                              umas_edgewise_work *work, int keep) {
    int n = edges->count;
    double *y = work->rotated, *o = work->gated, *z = work->messages;
    double *g = keep ? work->d_gated : work->gated;

    /* gather [x_source | x_target], rotate into the edge frame, L -> M order: y [n][9][2C] */
    for (int e = 0; e < n; e++)
        umas_gather_rotate(&edges->wigner[e], x + (size_t)edges->source[e] * 9 * C,
                           x + (size_t)edges->target[e] * 9 * C, C, y + (size_t)e * 18 * C);
    if (keep)
        memcpy(work->unscaled, y, sizeof(double) * (size_t)n * 18 * C);
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

    umas_edge_gate_forward(n, H, work->conv1_m0, o, g);

    /* conv2: the same structure, H -> C channels, no radial, m = 0 with bias */
    umas_linear_forward(&b->conv2_m0, n, g, 9 * H, z, 9 * C);
    so2_m_forward(&b->conv2_m1, n, g + 3 * H, g + 5 * H, 9 * H, z + 3 * C, z + 5 * C, 9 * C,
                  work->product_r, work->product_i);
    so2_m_forward(&b->conv2_m2, n, g + 7 * H, g + 8 * H, 9 * H, z + 7 * C, z + 8 * C, 9 * C,
                  work->product_r, work->product_i);
}

void umas_edgewise_forward(const umas_block_weights *b, int C, int H, const umas_edge_chunk *edges,
                           const double *radial, const double *x, double *x_out,
                           umas_edgewise_work *work) {
    edgewise_messages(b, C, H, edges, radial, x, work, 0);
    /* M -> L, rotate back with the envelope, sum into the receiver */
    for (int e = 0; e < edges->count; e++)
        umas_rotate_back_scatter(&edges->wigner[e], edges->envelope[e],
                                 work->messages + (size_t)e * 9 * C, C,
                                 x_out + (size_t)edges->target[e] * 9 * C);
}

/* Row i (L-order) of the adjoint of D within its block; NULL for l = 0 (D^0 = 1 is constant). */
static double *wigner_adjoint_row(umas_wigner *dD, int i) {
    if (i == 0)
        return NULL;
    return i < 4 ? dD->l1[i - 1] : dD->l2[i - 4];
}

/* Backward of umas_rotate_back_scatter for one edge: a = d_out[target] [9][C], z [9][C] M-order.
 * dz[p] = env (D a)[m_to_l[p]];  dD[i][j] += env <z^L[i], a[j]>;  denv += <z^L, D a>. */
void umas_rotate_back_backward(const umas_wigner *D, double env, const double *z, const double *a,
                               int C, double *dz, umas_wigner *dD, double *d_env) {
    for (int p = 0; p < 9; p++) {
        int i = umas_m_to_l[p], start, size;
        const double *row = wigner_row(D, i, &start, &size);
        double *adj = wigner_adjoint_row(dD, i);
        const double *zp = z + (size_t)p * C;
        double *dzp = dz + (size_t)p * C, z_dot_Da = 0;
        memset(dzp, 0, sizeof(double) * (size_t)C);
        for (int k = 0; k < size; k++) {
            const double *aj = a + (size_t)(start + k) * C;
            double z_dot_a = 0;
            for (int c = 0; c < C; c++) {
                dzp[c] += row[k] * aj[c];
                z_dot_a += zp[c] * aj[c];
            }
            if (adj)
                adj[k] += env * z_dot_a;
            z_dot_Da += row[k] * z_dot_a;
        }
        *d_env += z_dot_Da;
        for (int c = 0; c < C; c++)
            dzp[c] *= env;
    }
}

void umas_rotate_back_chunk_backward(const umas_edge_chunk *edges, const double *z,
                                     const double *d_out, int C, double *dz, umas_wigner *d_wigner,
                                     double *d_envelope) {
    for (int e = 0; e < edges->count; e++)
        umas_rotate_back_backward(&edges->wigner[e], edges->envelope[e], z + (size_t)e * 9 * C,
                                  d_out + (size_t)edges->target[e] * 9 * C, C,
                                  dz + (size_t)e * 9 * C, &d_wigner[e], &d_envelope[e]);
}

/* Backward of umas_gather_rotate for one edge: dy [9][2C] M-order. d_source/d_target [9][C] +=
 * D^T dy^L (each half); dD[i][j] += <dy^L[i], [x_source | x_target][j]>. */
void umas_gather_rotate_backward(const umas_wigner *D, const double *x_source,
                                 const double *x_target, const double *dy, int C, double *d_source,
                                 double *d_target, umas_wigner *dD) {
    for (int p = 0; p < 9; p++) {
        int i = umas_m_to_l[p], start, size;
        const double *row = wigner_row(D, i, &start, &size);
        double *adj = wigner_adjoint_row(dD, i);
        const double *dyp = dy + (size_t)p * 2 * C;
        for (int k = 0; k < size; k++) {
            size_t j = (size_t)(start + k) * C;
            double dot = 0;
            for (int c = 0; c < C; c++) {
                d_source[j + c] += row[k] * dyp[c];
                d_target[j + c] += row[k] * dyp[C + c];
                dot += dyp[c] * x_source[j + c] + dyp[C + c] * x_target[j + c];
            }
            if (adj)
                adj[k] += dot;
        }
    }
}

void umas_edgewise_backward(const umas_block_weights *b, int C, int H, const umas_edge_chunk *edges,
                            const double *radial, const double *x, const double *d_out, double *d_x,
                            double *d_radial, umas_wigner *d_wigner, double *d_envelope,
                            umas_edgewise_work *work) {
    int n = edges->count;
    edgewise_messages(b, C, H, edges, radial, x, work, 1);
    double *dz = work->d_messages, *dg = work->d_gated, *dy = work->d_rotated;

    /* rotate back + scatter */
    umas_rotate_back_chunk_backward(edges, work->messages, d_out, C, dz, d_wigner, d_envelope);
    /* conv2 */
    umas_linear_backward(&b->conv2_m0, n, dz, 9 * C, dg, 9 * H, 3 * H, 0);
    so2_m_backward(&b->conv2_m1, n, dz + 3 * C, dz + 5 * C, 9 * C, dg + 3 * H, dg + 5 * H, 9 * H,
                   work->product_r, work->product_i);
    so2_m_backward(&b->conv2_m2, n, dz + 7 * C, dz + 8 * C, 9 * C, dg + 7 * H, dg + 8 * H, 9 * H,
                   work->product_r, work->product_i);
    /* gate */
    umas_edge_gate_backward(n, H, work->conv1_m0, work->gated, dg, work->d_conv1_m0);
    /* conv1 */
    umas_linear_backward(&b->conv1_m0, n, work->d_conv1_m0, 5 * H, dy, 18 * C, 6 * C, 0);
    so2_m_backward(&b->conv1_m1, n, dg + 3 * H, dg + 5 * H, 9 * H, dy + 6 * C, dy + 10 * C, 18 * C,
                   work->product_r, work->product_i);
    so2_m_backward(&b->conv1_m2, n, dg + 7 * H, dg + 8 * H, 9 * H, dy + 14 * C, dy + 16 * C, 18 * C,
                   work->product_r, work->product_i);
    /* radial scaling */
    scale_by_radial_backward(n, C, radial, work->unscaled, dy, d_radial);
    /* rotation + gather */
    for (int e = 0; e < n; e++) {
        size_t s = (size_t)edges->source[e] * 9 * C, t = (size_t)edges->target[e] * 9 * C;
        umas_gather_rotate_backward(&edges->wigner[e], x + s, x + t, dy + (size_t)e * 18 * C, C,
                                    d_x + s, d_x + t, &d_wigner[e]);
    }
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

void umas_edge_degree_backward(int C, const umas_edge_chunk *edges, const double *radial,
                               const double *d_out, double *d_radial, umas_wigner *d_wigner,
                               double *d_envelope) {
    for (int e = 0; e < edges->count; e++) {
        const umas_wigner *D = &edges->wigner[e];
        const double *rho = radial + (size_t)e * 3 * C;
        const double *a = d_out + (size_t)edges->target[e] * 9 * C;
        double *d_rho = d_radial + (size_t)e * 3 * C;
        double scale = edges->envelope[e] / 5.0;
        double rho_dot = 0; /* <rho[l], Y^l(e) a^l>, summed over l: d_envelope * 5 */
        for (int c = 0; c < 3 * C; c++)
            d_rho[c] = 0;
        for (int c = 0; c < C; c++) {
            d_rho[c] = scale * a[c];
            rho_dot += rho[c] * a[c];
        }
        for (int j = 0; j < 3; j++) { /* l = 1: m = 0 row of D^1 */
            double dot = 0;
            for (int c = 0; c < C; c++) {
                d_rho[C + c] += scale * D->l1[1][j] * a[(1 + j) * C + c];
                dot += rho[C + c] * a[(1 + j) * C + c];
            }
            d_wigner[e].l1[1][j] += scale * dot;
            rho_dot += D->l1[1][j] * dot;
        }
        for (int j = 0; j < 5; j++) { /* l = 2: m = 0 row of D^2 */
            double dot = 0;
            for (int c = 0; c < C; c++) {
                d_rho[2 * C + c] += scale * D->l2[2][j] * a[(4 + j) * C + c];
                dot += rho[2 * C + c] * a[(4 + j) * C + c];
            }
            d_wigner[e].l2[2][j] += scale * dot;
            rho_dot += D->l2[2][j] * dot;
        }
        d_envelope[e] += rho_dot / 5.0;
    }
}
