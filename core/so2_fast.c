/* so2_fast.c - block-form SO(2) convolutions and the unified radial MLP (umas_fast, float64). */
#include "so2_fast.h"

#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------
 * Block form of the m > 0 convolutions
 * ------------------------------------------------------------------------------------------- */

int umas_so2_block_form(const umas_linear *W, umas_linear *block) {
    int half = W->out / 2, in = W->in;
    block->out = 2 * half;
    block->in = 2 * in;
    block->bias = NULL;
    block->weight = malloc(sizeof(double) * (size_t)block->out * block->in);
    if (!block->weight)
        return -1;
    for (int r = 0; r < half; r++) {
        const double *w1 = W->weight + (size_t)r * in, *w2 = W->weight + (size_t)(half + r) * in;
        double *real = block->weight + (size_t)r * 2 * in;          /* [W1 | -W2] */
        double *imag = block->weight + (size_t)(half + r) * 2 * in; /* [W2 |  W1] */
        for (int k = 0; k < in; k++) {
            real[k] = w1[k];
            real[in + k] = -w2[k];
            imag[k] = w2[k];
            imag[in + k] = w1[k];
        }
    }
    return 0;
}

void umas_fast_block_free(umas_fast_block *f) {
    free(f->conv1_m1.weight), free(f->conv1_m2.weight);
    free(f->conv2_m1.weight), free(f->conv2_m2.weight);
    memset(f, 0, sizeof *f);
}

int umas_fast_block_init(umas_fast_block *f, const umas_block_weights *b) {
    memset(f, 0, sizeof *f);
    if (umas_so2_block_form(&b->conv1_m1, &f->conv1_m1) ||
        umas_so2_block_form(&b->conv1_m2, &f->conv1_m2) ||
        umas_so2_block_form(&b->conv2_m1, &f->conv2_m1) ||
        umas_so2_block_form(&b->conv2_m2, &f->conv2_m2)) {
        umas_fast_block_free(f);
        return -1;
    }
    return 0;
}

size_t umas_fast_block_bytes(const umas_fast_block *f) {
    const umas_linear *all[] = {&f->conv1_m1, &f->conv1_m2, &f->conv2_m1, &f->conv2_m2};
    size_t bytes = 0;
    for (int k = 0; k < 4; k++)
        bytes += sizeof(double) * (size_t)all[k]->out * all[k]->in;
    return bytes;
}

/* Radial scaling of one edge's packed features y [18C] = [m0 6C | m1 real 4C, imag 4C |
 * m2 real 2C, imag 2C] by rho [12C] = [m0 6C | m1 4C | m2 2C] (real and imaginary parts share
 * their m's scales). */
static void scale_packed(int C, const double *rho, double *y) {
    for (int k = 0; k < 6 * C; k++)
        y[k] *= rho[k];
    for (int k = 0; k < 4 * C; k++) {
        y[6 * C + k] *= rho[6 * C + k];
        y[10 * C + k] *= rho[6 * C + k];
    }
    for (int k = 0; k < 2 * C; k++) {
        y[14 * C + k] *= rho[10 * C + k];
        y[16 * C + k] *= rho[10 * C + k];
    }
}

/* Its backward for one edge: d_rho [12C] = sum over each scale's uses of dy * y_unscaled;
 * dy [18C] *= rho in place. */
static void scale_packed_backward(int C, const double *rho, const double *unscaled, double *dy,
                                  double *d_rho) {
    for (int k = 0; k < 6 * C; k++) {
        d_rho[k] = dy[k] * unscaled[k];
        dy[k] *= rho[k];
    }
    for (int k = 0; k < 4 * C; k++) {
        int r = 6 * C + k, i = 10 * C + k;
        d_rho[6 * C + k] = dy[r] * unscaled[r] + dy[i] * unscaled[i];
        dy[r] *= rho[6 * C + k];
        dy[i] *= rho[6 * C + k];
    }
    for (int k = 0; k < 2 * C; k++) {
        int r = 14 * C + k, i = 16 * C + k;
        d_rho[10 * C + k] = dy[r] * unscaled[r] + dy[i] * unscaled[i];
        dy[r] *= rho[10 * C + k];
        dy[i] *= rho[10 * C + k];
    }
}

/* The chunk's messages z [n][9][C] (M-order) in work->messages; keeps what the backward needs
 * exactly as edgewise.c does: work->rotated (scaled), work->conv1_m0, and with `keep` also
 * work->unscaled and the conv1 output before the gate in work->gated (gated values then go to
 * work->d_gated as scratch). */
static void fast_messages(const umas_block_weights *b, const umas_fast_block *f, int C, int H,
                          const umas_edge_chunk *edges, const double *radial, const double *x,
                          umas_edgewise_work *work, int keep) {
    int n = edges->count;
    double *y = work->rotated, *o = work->gated, *z = work->messages;
    double *g = keep ? work->d_gated : work->gated;

    /* gather [x_s | x_t], rotate, L -> M, scale by the radial: y [n][18C], packed by m */
    for (int e = 0; e < n; e++) {
        double *ye = y + (size_t)e * 18 * C;
        umas_gather_rotate(&edges->wigner[e], x + (size_t)edges->source[e] * 9 * C,
                           x + (size_t)edges->target[e] * 9 * C, C, ye);
        if (keep)
            memcpy(work->unscaled + (size_t)e * 18 * C, ye, sizeof(double) * 18 * (size_t)C);
        scale_packed(C, radial + (size_t)e * 12 * C, ye);
    }

    /* conv1: m = 0 [6C] -> [gates 2H | O rows 0..2, 3H] with bias; m = 1 [8C] -> O rows 3..6
     * [4H]; m = 2 [4C] -> O rows 7, 8 [2H]: o [n][9H] */
    umas_linear_forward(&b->conv1_m0, n, y, 18 * C, work->conv1_m0, 5 * H);
    for (int e = 0; e < n; e++)
        memcpy(o + (size_t)e * 9 * H, work->conv1_m0 + (size_t)e * 5 * H + 2 * H,
               sizeof(double) * 3 * (size_t)H);
    umas_linear_forward(&f->conv1_m1, n, y + 6 * C, 18 * C, o + 3 * H, 9 * H);
    umas_linear_forward(&f->conv1_m2, n, y + 14 * C, 18 * C, o + 7 * H, 9 * H);

    umas_edge_gate_forward(n, H, work->conv1_m0, o, g);

    /* conv2: m = 0 [3H] -> [3C] with bias; m = 1 [4H] -> [4C]; m = 2 [2H] -> [2C]: z [n][9C] */
    umas_linear_forward(&b->conv2_m0, n, g, 9 * H, z, 9 * C);
    umas_linear_forward(&f->conv2_m1, n, g + 3 * H, 9 * H, z + 3 * C, 9 * C);
    umas_linear_forward(&f->conv2_m2, n, g + 7 * H, 9 * H, z + 7 * C, 9 * C);
}

void umas_fast_edgewise_forward(const umas_block_weights *b, const umas_fast_block *f, int C, int H,
                                const umas_edge_chunk *edges, const double *radial, const double *x,
                                double *x_out, umas_edgewise_work *work) {
    fast_messages(b, f, C, H, edges, radial, x, work, 0);
    for (int e = 0; e < edges->count; e++)
        umas_rotate_back_scatter(&edges->wigner[e], edges->envelope[e],
                                 work->messages + (size_t)e * 9 * C, C,
                                 x_out + (size_t)edges->target[e] * 9 * C);
}

void umas_fast_edgewise_backward(const umas_block_weights *b, const umas_fast_block *f, int C,
                                 int H, const umas_edge_chunk *edges, const double *radial,
                                 const double *x, const double *d_out, double *d_x,
                                 double *d_radial, umas_wigner *d_wigner, double *d_envelope,
                                 umas_edgewise_work *work) {
    int n = edges->count;
    fast_messages(b, f, C, H, edges, radial, x, work, 1);
    double *dz = work->d_messages, *dg = work->d_gated, *dy = work->d_rotated;

    /* rotate back + scatter: dz [n][9C] */
    umas_rotate_back_chunk_backward(edges, work->messages, d_out, C, dz, d_wigner, d_envelope);
    /* conv2^T: dg [n][9H]; for m > 0 [dg_r | dg_i] = [dz_r | dz_i] W_block */
    umas_linear_backward(&b->conv2_m0, n, dz, 9 * C, dg, 9 * H, 3 * H, 0);
    umas_linear_backward(&f->conv2_m1, n, dz + 3 * C, 9 * C, dg + 3 * H, 9 * H, 4 * H, 0);
    umas_linear_backward(&f->conv2_m2, n, dz + 7 * C, 9 * C, dg + 7 * H, 9 * H, 2 * H, 0);
    /* gate^T: dg becomes dE/dO, d_conv1_m0 [n][5H] */
    umas_edge_gate_backward(n, H, work->conv1_m0, work->gated, dg, work->d_conv1_m0);
    /* conv1^T: dy [n][18C] */
    umas_linear_backward(&b->conv1_m0, n, work->d_conv1_m0, 5 * H, dy, 18 * C, 6 * C, 0);
    umas_linear_backward(&f->conv1_m1, n, dg + 3 * H, 9 * H, dy + 6 * C, 18 * C, 8 * C, 0);
    umas_linear_backward(&f->conv1_m2, n, dg + 7 * H, 9 * H, dy + 14 * C, 18 * C, 4 * C, 0);
    /* radial scaling^T and rotation + gather^T, edge by edge */
    for (int e = 0; e < n; e++) {
        size_t s = (size_t)edges->source[e] * 9 * C, t = (size_t)edges->target[e] * 9 * C;
        double *dye = dy + (size_t)e * 18 * C;
        scale_packed_backward(C, radial + (size_t)e * 12 * C, work->unscaled + (size_t)e * 18 * C,
                              dye, d_radial + (size_t)e * 12 * C);
        umas_gather_rotate_backward(&edges->wigner[e], x + s, x + t, dye, C, d_x + s, d_x + t,
                                    &d_wigner[e]);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Unified radial MLP
 * ------------------------------------------------------------------------------------------- */

int umas_unified_radial_init(umas_unified_radial *u, const umas_weights *w) {
    int L = w->num_layers, Ce = w->Ce, F = w->F;
    memset(u, 0, sizeof *u);
    u->layers = L;
    u->Ce = Ce;
    u->fc1.out = L * Ce;
    u->fc1.in = F;
    u->fc1.weight = malloc(sizeof(double) * (size_t)L * Ce * F);
    u->fc1.bias = malloc(sizeof(double) * (size_t)L * Ce);
    if (!u->fc1.weight || !u->fc1.bias) {
        umas_unified_radial_free(u);
        return -1;
    }
    for (int l = 0; l < L; l++) {
        const umas_linear *fc1 = &w->blocks[l].radial.fc1; /* [Ce][F] + bias */
        memcpy(u->fc1.weight + (size_t)l * Ce * F, fc1->weight, sizeof(double) * (size_t)Ce * F);
        memcpy(u->fc1.bias + (size_t)l * Ce, fc1->bias, sizeof(double) * (size_t)Ce);
    }
    return 0;
}

void umas_unified_radial_free(umas_unified_radial *u) {
    free(u->fc1.weight), free(u->fc1.bias);
    memset(u, 0, sizeof *u);
}

void umas_unified_radial_forward(const umas_unified_radial *u, int rows, const double *a,
                                 double *first, int ld) {
    umas_linear_forward(&u->fc1, rows, a, u->fc1.in, first, ld);
}

void umas_unified_radial_backward(const umas_unified_radial *u, int rows, const double *d_first,
                                  int ld, double *da, int cols) {
    umas_linear_backward(&u->fc1, rows, d_first, ld, da, cols, cols, 0);
}

void umas_unified_radial_block_forward(const umas_radial_mlp *mlp, int rows, const double *first,
                                       int ld, umas_radial_saved *saved, double *out) {
    int Ce = mlp->fc1.out;
    for (int r = 0; r < rows; r++)
        memcpy(saved->pre_norm1 + (size_t)r * Ce, first + (size_t)r * ld, sizeof(double) * Ce);
    umas_radial_mlp_forward_rest(mlp, rows, saved, out);
}

void umas_unified_radial_block_backward(const umas_radial_mlp *mlp, int rows,
                                        const umas_radial_saved *saved, const double *d_out,
                                        double *d_first, int ld, double *work) {
    int Ce = mlp->fc1.out;
    double *d_pre_norm1 = saved->hidden; /* [rows][Ce]: the MLP's work space, free here */
    umas_radial_mlp_backward_rest(mlp, rows, saved, d_out, d_pre_norm1, work);
    for (int r = 0; r < rows; r++)
        memcpy(d_first + (size_t)r * ld, d_pre_norm1 + (size_t)r * Ce, sizeof(double) * Ce);
}
