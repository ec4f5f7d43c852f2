/* edgewise.h - the message part of an eSCN-MD block, on a chunk of edges (spec 7.2), and the
 * edge-degree embedding (spec 6). Straightforward "general" form: dense per-edge rotations,
 * SO(2) convolutions as GEMMs over the chunk, scatter-add into the receivers. */
#ifndef UMAS_EDGEWISE_H
#define UMAS_EDGEWISE_H

#include "weights.h"
#include "wigner.h"

/* M-order position p holds L-order coefficient umas_m_to_l[p] (spec 2.2):
 * p: l0m0 l1m0 l2m0 l1m+1 l2m+1 l1m-1 l2m-1 l2m+2 l2m-2. */
extern const int umas_m_to_l[9];

/* A chunk of edges with their geometry. */
typedef struct umas_edge_chunk {
    int count;
    const int *source;         /* [n] sender j */
    const int *target;         /* [n] receiver i */
    const umas_wigner *wigner; /* [n] */
    const double *envelope;    /* [n] */
} umas_edge_chunk;

/* Work space for umas_edgewise_forward on chunks of up to n edges. */
typedef struct umas_edgewise_work {
    double *rotated;   /* [n][9][2C] gathered [source | target], rotated, M-order */
    double *conv1_m0;  /* [n][2H + 3H] */
    double *gated;     /* [n][9][H] conv1 output (M-order), gated in place */
    double *product_r; /* [n][4 max(C, H)] x_r W^T of the m > 0 convolutions */
    double *product_i; /* [n][4 max(C, H)] x_i W^T */
    double *messages;  /* [n][9][C] conv2 output (M-order) */
    /* backward only */
    double *d_rotated;  /* [n][9][2C] */
    double *d_gated;    /* [n][9][H] */
    double *d_conv1_m0; /* [n][5H] */
    double *d_messages; /* [n][9][C] */
    double *unscaled;   /* [n][9][2C] rotated features before the radial scaling */
} umas_edgewise_work;

size_t umas_edgewise_work_doubles(int n, int C, int H);
void umas_edgewise_work_bind(umas_edgewise_work *work, double *memory, int n, int C, int H);

/* x_out[target] += env * D^T conv2(gate(conv1(to_m D [x[source] | x[target]] * radial))) for
 * every edge of the chunk. radial: [n][12C], conv1's per-(m, l, channel) scales.
 * x, x_out: [N][9][C], L-order. */
void umas_edgewise_forward(const umas_block_weights *b, int C, int H, const umas_edge_chunk *edges,
                           const double *radial, const double *x, double *x_out,
                           umas_edgewise_work *work);

/* Backward of umas_edgewise_forward. Recomputes the chunk's forward from x and radial, then
 * from d_out = dE/dx_out [N][9][C]:
 *   d_x      [N][9][C] += dE/dx through both gather ends
 *   d_radial [n][12C]   = dE/dradial
 *   d_wigner [n]       += dE/dD (block-diagonal entries)
 *   d_envelope [n]     += dE/denv */
void umas_edgewise_backward(const umas_block_weights *b, int C, int H, const umas_edge_chunk *edges,
                            const double *radial, const double *x, const double *d_out, double *d_x,
                            double *d_radial, umas_wigner *d_wigner, double *d_envelope,
                            umas_edgewise_work *work);

/* The per-edge steps of the messages, shared with the umas_fast backend (edges one at a time;
 * the SO(2) convolutions between them are where the backends differ). */

/* Gather [x_source | x_target] ([9][C] each, L-order), rotate into the edge frame and permute
 * L -> M: y [9][2C], y[p][0:C] = (D x_source)[m_to_l[p]], y[p][C:2C] = (D x_target)[...]. */
void umas_gather_rotate(const umas_wigner *D, const double *x_source, const double *x_target, int C,
                        double *y);
/* Its backward from dy [9][2C]: d_source, d_target [9][C] += D^T dy^L (each half);
 * dD[i][j] += <dy^L[i], [x_source | x_target][j]>. */
void umas_gather_rotate_backward(const umas_wigner *D, const double *x_source,
                                 const double *x_target, const double *dy, int C, double *d_source,
                                 double *d_target, umas_wigner *dD);
/* x_out[j] += env * sum_i D[i][j] z^L[i]: rotate an M-order message z [9][C] back and add it
 * to the receiver's x_out [9][C]. */
void umas_rotate_back_scatter(const umas_wigner *D, double env, const double *z, int C,
                              double *x_out);
/* Its backward, a = d_out[target] [9][C]: dz [9][C] = env (D a)[m_to_l[p]];
 * dD[i][j] += env <z^L[i], a[j]>;  d_env += <z^L, D a>. */
void umas_rotate_back_backward(const umas_wigner *D, double env, const double *z, const double *a,
                               int C, double *dz, umas_wigner *dD, double *d_env);
/* The same over a chunk: dz [n][9C] from the messages z [n][9C] and d_out [N][9C] (by target);
 * d_wigner, d_envelope [n] accumulated. */
void umas_rotate_back_chunk_backward(const umas_edge_chunk *edges, const double *z,
                                     const double *d_out, int C, double *dz, umas_wigner *d_wigner,
                                     double *d_envelope);
/* Gate of conv1's output (M-order): g[0] = SiLU(o[0]), g[p] = o[p] * sigmoid(gate_l), l the
 * degree of p; gates = conv1_m0 [n][5H] columns [0, 2H); o, g [n][9H] (g may alias o). */
void umas_edge_gate_forward(int n, int H, const double *conv1_m0, const double *o, double *g);
/* Its backward, in place on dg [n][9H] (becomes dE/do); d_conv1_m0 [n][5H] = [d gates 2H |
 * dE/do rows 0..2]. */
void umas_edge_gate_backward(int n, int H, const double *conv1_m0, const double *o, double *dg,
                             double *d_conv1_m0);

/* x_out[target] += (env / 5) * sum_l rho[l] (x) (m = 0 row of D^l), rho = radial [n][3C]. */
void umas_edge_degree_forward(int C, const umas_edge_chunk *edges, const double *radial,
                              double *x_out);
/* Its backward: d_radial [n][3C] = dE/drho; d_wigner, d_envelope accumulate. */
void umas_edge_degree_backward(int C, const umas_edge_chunk *edges, const double *radial,
                               const double *d_out, double *d_radial, umas_wigner *d_wigner,
                               double *d_envelope);

#endif
