/* wigner.h - per-edge rotation into the edge frame: real Wigner D matrices for l = 1, 2.
 *
 * The rotation R maps the edge direction e onto +y. D^1 = R acts on the l = 1 coefficients
 * (x, y, z); D^2[i][j] = (2/3) tr(A_i R A_j R^T) acts on the l = 2 coefficients in the basis
 * (sqrt3 xz, sqrt3 xy, y^2 - (x^2 + z^2)/2, sqrt3 yz, sqrt3/2 (z^2 - x^2)) (spec 2.1, 3.4).
 * D^0 = 1. Any roll of R about y gives the same model output (spec 3.3); ours is a fixed,
 * deterministic frame. */
#ifndef UMAS_WIGNER_H
#define UMAS_WIGNER_H

typedef struct umas_wigner {
    double l1[3][3]; /* D^1 = R */
    double l2[5][5]; /* D^2 */
} umas_wigner;

/* D for a unit vector e (|e| = 1). */
void umas_wigner_from_unit_vector(const double e[3], umas_wigner *D);

#endif
