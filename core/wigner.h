/* wigner.h - per-edge rotation into the edge frame: real Wigner D matrices for l = 1, 2.
 *
 * The rotation R maps the edge direction e onto +y. D^1 = R acts on the l = 1 coefficients
 * (x, y, z); D^2[i][j] = (2/3) tr(A_i R A_j R^T) acts on the l = 2 coefficients in the basis
 * (sqrt3 xz, sqrt3 xy, y^2 - (x^2 + z^2)/2, sqrt3 yz, sqrt3/2 (z^2 - x^2)) (spec 2.1, 3.4).
 * D^0 = 1. Any roll of R about y gives the same model output (spec 3.3); ours is a fixed,
 * deterministic frame. */
#ifndef UMAS_WIGNER_H
#define UMAS_WIGNER_H

#include "wigner_math.h"

/* D for a unit vector e (|e| = 1). */
void umas_wigner_from_unit_vector(const double e[3], umas_wigner *D);

void umas_wigner_generators_init(umas_wigner_generators *J);

/* Backward of the edge direction (spec 3.6): given dD = dE/dD (only roll-invariant uses of D,
 * which every use in the model is), adds the direction part of dE/dr to dr:
 *   tau_a = -sum_l <dD^l, D^l J^l_a>,   dr += (tau x e) / d.
 * Gauge-free: it does not differentiate our choice of roll. */
void umas_wigner_backward(const umas_wigner_generators *J, const umas_wigner *D,
                          const umas_wigner *dD, const double e[3], double d, double dr[3]);

#endif
