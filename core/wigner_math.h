/* wigner_math.h - the rotation math of the model in double precision, written once for the C
 * core (core/wigner.c, core/radial.c) and the CUDA kernels (cuda/geometry.cu), where nvcc
 * compiles the same functions for host and device. Spec sections 3.4-3.6 and 4.2. */
#ifndef UMAS_WIGNER_MATH_H
#define UMAS_WIGNER_MATH_H

#include <math.h>

#ifdef __CUDACC__
#define UMAS_HOST_DEVICE __host__ __device__
#else
#define UMAS_HOST_DEVICE
#endif

/* Real Wigner D blocks of one edge (D^0 = 1): D^1 acts on (x, y, z), D^2 on the l = 2 basis
 * (sqrt3 xz, sqrt3 xy, y^2 - (x^2 + z^2)/2, sqrt3 yz, sqrt3/2 (z^2 - x^2)). */
typedef struct umas_wigner {
    double l1[3][3];
    double l2[5][5];
} umas_wigner;

/* Generators J^l_a of the l = 1, 2 representations: D^l(exp(t K_a)) = exp(t J^l_a), with
 * K_a v = e_a x v. J^1_a = K_a; J^2_a[i][j] = (2/3) tr(A_i (K_a A_j - A_j K_a)). */
typedef struct umas_wigner_generators {
    double l1[3][3][3]; /* [a][i][j] */
    double l2[3][5][5];
} umas_wigner_generators;

/* The l = 2 basis as symmetric matrices: Y_i(v) = v^T A_i v (spec 3.4). */
static inline UMAS_HOST_DEVICE void umas_l2_basis(double A[5][3][3]) {
    const double s = sqrt(3.0);
    for (int i = 0; i < 5; i++)
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 3; b++)
                A[i][a][b] = 0.0;
    A[0][0][2] = A[0][2][0] = s / 2; /* sqrt3 xz */
    A[1][0][1] = A[1][1][0] = s / 2; /* sqrt3 xy */
    A[2][0][0] = -0.5;               /* y^2 - (x^2 + z^2) / 2 */
    A[2][1][1] = 1.0;
    A[2][2][2] = -0.5;
    A[3][1][2] = A[3][2][1] = s / 2; /* sqrt3 yz */
    A[4][0][0] = -s / 2;             /* sqrt3/2 (z^2 - x^2) */
    A[4][2][2] = s / 2;
}

/* Rows of R: u (perpendicular to e), e, w = u x e, so R e = (0, 1, 0) and det R = +1. u comes
 * from the coordinate axis least aligned with e (Gram-Schmidt), never degenerate. */
static inline UMAS_HOST_DEVICE void umas_edge_frame(const double e[3], double R[3][3]) {
    int axis = 0;
    for (int k = 1; k < 3; k++)
        if (fabs(e[k]) < fabs(e[axis]))
            axis = k;
    double u[3] = {0, 0, 0};
    u[axis] = 1.0;
    double dot = e[axis];
    for (int k = 0; k < 3; k++)
        u[k] -= dot * e[k];
    double norm = sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2]);
    for (int k = 0; k < 3; k++)
        u[k] /= norm;
    const double w[3] = {u[1] * e[2] - u[2] * e[1], u[2] * e[0] - u[0] * e[2],
                         u[0] * e[1] - u[1] * e[0]};
    for (int k = 0; k < 3; k++) {
        R[0][k] = u[k];
        R[1][k] = e[k];
        R[2][k] = w[k];
    }
}

/* D for a unit vector e: D^1 = R, D^2[i][j] = (2/3) tr(A_i R A_j R^T). */
static inline UMAS_HOST_DEVICE void umas_wigner_compute(const double e[3], umas_wigner *D) {
    double R[3][3];
    umas_edge_frame(e, R);
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++)
            D->l1[a][b] = R[a][b];

    double A[5][3][3];
    umas_l2_basis(A);
    for (int j = 0; j < 5; j++) {
        double RA[3][3], S[3][3]; /* S = R A_j R^T */
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 3; b++)
                RA[a][b] = R[a][0] * A[j][0][b] + R[a][1] * A[j][1][b] + R[a][2] * A[j][2][b];
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 3; b++)
                S[a][b] = RA[a][0] * R[b][0] + RA[a][1] * R[b][1] + RA[a][2] * R[b][2];
        for (int i = 0; i < 5; i++) {
            double t = 0;
            for (int a = 0; a < 3; a++)
                for (int b = 0; b < 3; b++)
                    t += A[i][a][b] * S[a][b];
            D->l2[i][j] = (2.0 / 3.0) * t;
        }
    }
}

/* K_a[i][j] with K_a v = e_a x v. */
static inline UMAS_HOST_DEVICE double umas_vector_generator(int a, int i, int j) {
    /* K_a[i][j] = -epsilon_{a i j}: -1 for cyclic (a, i, j), +1 for anticyclic, else 0 */
    if (i == a || j == a || i == j)
        return 0.0;
    return (i == (a + 1) % 3) ? -1.0 : 1.0;
}

/* Entry `index` (0 <= index < 102) of the generators in the umas_wigner_generators layout: J^1_a =
 * K_a; J^2_a[i][j] = (2/3) tr(A_i (K_a A_j - A_j K_a)). */
static inline UMAS_HOST_DEVICE double umas_generator_entry(int index) {
    if (index < 27)
        return umas_vector_generator(index / 9, index / 3 % 3, index % 3);
    index -= 27;
    const int a = index / 25, i = index / 5 % 5, j = index % 5;
    double A[5][3][3];
    umas_l2_basis(A);
    double t = 0;
    for (int p = 0; p < 3; p++)
        for (int q = 0; q < 3; q++) {
            double commutator = 0;
            for (int k = 0; k < 3; k++)
                commutator += umas_vector_generator(a, p, k) * A[j][k][q] -
                              A[j][p][k] * umas_vector_generator(a, k, q);
            t += A[i][q][p] * commutator;
        }
    return (2.0 / 3.0) * t;
}

/* The torque formula (spec 3.6): tau_a = -sum_l <dD^l, D^l J^l_a>; dr += (tau x e) / d. */
static inline UMAS_HOST_DEVICE void umas_wigner_torque(const umas_wigner_generators *J,
                                                       const umas_wigner *D, const umas_wigner *dD,
                                                       const double e[3], double d, double dr[3]) {
    double tau[3];
    for (int a = 0; a < 3; a++) {
        double t = 0;
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++) {
                double DJ = 0;
                for (int k = 0; k < 3; k++)
                    DJ += D->l1[i][k] * J->l1[a][k][j];
                t += dD->l1[i][j] * DJ;
            }
        for (int i = 0; i < 5; i++)
            for (int j = 0; j < 5; j++) {
                double DJ = 0;
                for (int k = 0; k < 5; k++)
                    DJ += D->l2[i][k] * J->l2[a][k][j];
                t += dD->l2[i][j] * DJ;
            }
        tau[a] = -t;
    }
    dr[0] += (tau[1] * e[2] - tau[2] * e[1]) / d;
    dr[1] += (tau[2] * e[0] - tau[0] * e[2]) / d;
    dr[2] += (tau[0] * e[1] - tau[1] * e[0]) / d;
}

/* PolynomialEnvelope (p = 5) and its derivative with respect to d. */
static inline UMAS_HOST_DEVICE double umas_envelope_value(double d, double cutoff) {
    double x = d / cutoff;
    if (x >= 1.0)
        return 0.0;
    double x5 = x * x * x * x * x;
    return 1.0 - 21.0 * x5 + 35.0 * x5 * x - 15.0 * x5 * x * x;
}
static inline UMAS_HOST_DEVICE double umas_envelope_slope(double d, double cutoff) {
    double x = d / cutoff;
    if (x >= 1.0)
        return 0.0;
    return -105.0 * x * x * x * x * (1.0 - x) * (1.0 - x) / cutoff;
}

#endif
