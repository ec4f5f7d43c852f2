/* so2_fast.h - the `umas_fast` forms of a block's messages (spec 13), float64 on the CPU:
 *
 *  * SO(2) convolutions in block form: the m > 0 weight W = [W1; W2] of a convolution is packed
 *    once into W_block = [[W1, -W2], [W2, W1]], so (x_r + i x_i)(W1 + i W2) is one product
 *    [out_r | out_i] = W_block [x_r | x_i] over the M-order features, whose rows already lie as
 *    [m0: 6C | m1 real 4C, imag 4C | m2 real 2C, imag 2C]; m = 0 stays one product with bias.
 *    conv1's radial scaling is applied while the rotated features are packed, edge by edge.
 *  * The unified radial MLP: the first linear layer of every block's radial MLP reads the same
 *    a_e, so all blocks' first layers are one product [E][F] x [F][L Ce], once per step; each
 *    block then runs the rest of its MLP (LayerNorm, SiLU, Linear, LayerNorm, SiLU, Linear) from
 *    its slice. The edge-degree radial MLP is not included (as in fairchem).
 *
 * Both are algebraically identical to the `general` forms (edgewise.c, nn.c); only the order of
 * floating-point sums differs. Forward and backward side by side. */
#ifndef UMAS_SO2_FAST_H
#define UMAS_SO2_FAST_H

#include "edgewise.h"
#include "nn.h"
#include "weights.h"

/* A block's m > 0 convolutions in block form (owned copies). */
typedef struct umas_fast_block {
    umas_linear conv1_m1; /* [4H][8C] */
    umas_linear conv1_m2; /* [2H][4C] */
    umas_linear conv2_m1; /* [4C][4H] */
    umas_linear conv2_m2; /* [2C][2H] */
} umas_fast_block;

/* block = [[W1, -W2], [W2, W1]] ([2 half][2 in]) of W = [W1; W2] ([2 half][in], no bias): then
 * [out_r | out_i] = block [x_r | x_i] equals out_r = W1 x_r - W2 x_i, out_i = W2 x_r + W1 x_i.
 * Allocates block->weight; 0 on success. */
int umas_so2_block_form(const umas_linear *W, umas_linear *block);

int umas_fast_block_init(umas_fast_block *f, const umas_block_weights *b);
void umas_fast_block_free(umas_fast_block *f);
size_t umas_fast_block_bytes(const umas_fast_block *f);

/* Messages of one block over a chunk of edges with the block-form convolutions; same contract
 * as umas_edgewise_forward / umas_edgewise_backward (edgewise.h). */
void umas_fast_edgewise_forward(const umas_block_weights *b, const umas_fast_block *f, int C, int H,
                                const umas_edge_chunk *edges, const double *radial, const double *x,
                                double *x_out, umas_edgewise_work *work);
void umas_fast_edgewise_backward(const umas_block_weights *b, const umas_fast_block *f, int C,
                                 int H, const umas_edge_chunk *edges, const double *radial,
                                 const double *x, const double *d_out, double *d_x,
                                 double *d_radial, umas_wigner *d_wigner, double *d_envelope,
                                 umas_edgewise_work *work);

/* Every block's first radial layer stacked: fc1 [L Ce][F] + bias [L Ce] (owned copy); rows
 * [l Ce, (l + 1) Ce) are block l's. */
typedef struct umas_unified_radial {
    int layers, Ce;
    umas_linear fc1;
} umas_unified_radial;

int umas_unified_radial_init(umas_unified_radial *u, const umas_weights *w);
void umas_unified_radial_free(umas_unified_radial *u);

/* first [rows][ld] columns [0, L Ce) = a [rows][F] fc1^T + b: every block's first layer. */
void umas_unified_radial_forward(const umas_unified_radial *u, int rows, const double *a,
                                 double *first, int ld);
/* da [rows][0:cols] = d_first [rows][ld] columns [0, L Ce) . fc1[:, 0:cols]: the adjoint of the
 * first `cols` inputs, summed over the blocks in one product. */
void umas_unified_radial_backward(const umas_unified_radial *u, int rows, const double *d_first,
                                  int ld, double *da, int cols);

/* One block's radial MLP from its slice of the unified first layer: first [rows][ld] (the
 * block's Ce columns) -> out [rows][mlp->fc3.out]; saved as in umas_radial_mlp_forward. */
void umas_unified_radial_block_forward(const umas_radial_mlp *mlp, int rows, const double *first,
                                       int ld, umas_radial_saved *saved, double *out);
/* Its backward: d_first [rows][ld] (the block's Ce columns) = dE/d(first layer output), from
 * the saved forward and d_out; work [rows][2 Ce]. d_first may be the forward's `first`. */
void umas_unified_radial_block_backward(const umas_radial_mlp *mlp, int rows,
                                        const umas_radial_saved *saved, const double *d_out,
                                        double *d_first, int ld, double *work);

#endif
