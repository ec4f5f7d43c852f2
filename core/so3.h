/* so3.h - node-level layers on spherical-harmonic features x[N][9][C] (L-order, l <= 2). */
#ifndef UMAS_SO3_H
#define UMAS_SO3_H

#include "weights.h"

/* Degree of L-order coefficient i: [0, 1, 1, 1, 2, 2, 2, 2, 2]. */
extern const int umas_degree_of[9];

/* rms_norm_sh (EquivariantRMSNormArraySphericalHarmonicsV2, spec 7.1): per node, centre the
 * l = 0 row over channels, scale everything by 1/sqrt(weighted mean square + 1e-5), multiply by
 * the per-degree affine scale, add the l = 0 bias. y may not alias x. */
void umas_rms_norm_forward(const umas_rms_norm *norm, int nodes, int C, const double *x, double *y);

/* dx[N][9][C] from the norm's input x and dy = dE/dy. */
void umas_rms_norm_backward(const umas_rms_norm *norm, int nodes, int C, const double *x,
                            const double *dy, double *dx);

/* SpectralAtomwise (spec 7.3): out[N][9][C] = FFN(v[N][9][C]).
 * work: gates [N][2H] and hidden [N][9][H]. */
void umas_spectral_atomwise_forward(const umas_block_weights *b, int nodes, int C, int H,
                                    const double *v, double *out, double *gates, double *hidden);
/* dv[N][9][C] from v and d_out[N][9][C] (recomputes the forward). work: N * (4H + 18H). */
void umas_spectral_atomwise_backward(const umas_block_weights *b, int nodes, int C, int H,
                                     const double *v, const double *d_out, double *dv,
                                     double *work);
size_t umas_spectral_atomwise_backward_work(int nodes, int H);

#endif
