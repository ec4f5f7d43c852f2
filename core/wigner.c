/* wigner.c - real Wigner D matrices (l = 1, 2) of the rotation that maps an edge onto +y. */
#include "wigner.h"

#include <math.h>

/* The l = 2 basis as symmetric matrices: Y_i(v) = v^T A_i v (spec 3.4). */
static void l2_basis(double A[5][3][3]) {
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

/* Rows of R: u (perpendicular to e), e, w = u x e, so R e = (0, 1, 0) and det R = +1.
 * u comes from the coordinate axis least aligned with e (Gram-Schmidt), never degenerate. */
static void edge_frame(const double e[3], double R[3][3]) {
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

void umas_wigner_from_unit_vector(const double e[3], umas_wigner *D) {
    double R[3][3];
    edge_frame(e, R);
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++)
            D->l1[a][b] = R[a][b];

    double A[5][3][3];
    l2_basis(A);
    for (int j = 0; j < 5; j++) {
        /* S = R A_j R^T */
        double RA[3][3], S[3][3];
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 3; b++)
                RA[a][b] = R[a][0] * A[j][0][b] + R[a][1] * A[j][1][b] + R[a][2] * A[j][2][b];
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 3; b++)
                S[a][b] = RA[a][0] * R[b][0] + RA[a][1] * R[b][1] + RA[a][2] * R[b][2];
        /* D2[i][j] = (2/3) tr(A_i S) = (2/3) sum_ab A_i[a][b] S[a][b] (both symmetric) */
        for (int i = 0; i < 5; i++) {
            double t = 0;
            for (int a = 0; a < 3; a++)
                for (int b = 0; b < 3; b++)
                    t += A[i][a][b] * S[a][b];
            D->l2[i][j] = (2.0 / 3.0) * t;
        }
    }
}

/* K_a v = e_a x v: the generators of rotations about x, y, z acting on vectors. */
static void vector_generators(double K[3][3][3]) {
    for (int a = 0; a < 3; a++)
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++)
                K[a][i][j] = 0.0;
    K[0][1][2] = -1, K[0][2][1] = 1;
    K[1][0][2] = 1, K[1][2][0] = -1;
    K[2][0][1] = -1, K[2][1][0] = 1;
}

void umas_wigner_generators_init(umas_wigner_generators *J) {
    double A[5][3][3];
    l2_basis(A);
    vector_generators(J->l1);
    double(*J1)[3][3] = J->l1;
    double(*J2)[5][5] = J->l2;
    /* J2_a[i][j] = (2/3) tr(A_i (K_a A_j - A_j K_a)): the derivative of D^2 at the identity */
    for (int a = 0; a < 3; a++)
        for (int i = 0; i < 5; i++)
            for (int j = 0; j < 5; j++) {
                double t = 0;
                for (int p = 0; p < 3; p++)
                    for (int q = 0; q < 3; q++) {
                        double commutator = 0;
                        for (int k = 0; k < 3; k++)
                            commutator += J1[a][p][k] * A[j][k][q] - A[j][p][k] * J1[a][k][q];
                        t += A[i][q][p] * commutator;
                    }
                J2[a][i][j] = (2.0 / 3.0) * t;
            }
}

void umas_wigner_backward(const umas_wigner_generators *J, const umas_wigner *D,
                          const umas_wigner *dD, const double e[3], double d, double dr[3]) {
    const double(*J1)[3][3] = J->l1;
    const double(*J2)[5][5] = J->l2;
    /* tau_a = -sum_l <dD^l, D^l J^l_a> */
    double tau[3];
    for (int a = 0; a < 3; a++) {
        double t = 0;
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++) {
                double DJ = 0;
                for (int k = 0; k < 3; k++)
                    DJ += D->l1[i][k] * J1[a][k][j];
                t += dD->l1[i][j] * DJ;
            }
        for (int i = 0; i < 5; i++)
            for (int j = 0; j < 5; j++) {
                double DJ = 0;
                for (int k = 0; k < 5; k++)
                    DJ += D->l2[i][k] * J2[a][k][j];
                t += dD->l2[i][j] * DJ;
            }
        tau[a] = -t;
    }
    /* dE/dr (direction part) = (tau x e) / d */
    dr[0] += (tau[1] * e[2] - tau[2] * e[1]) / d;
    dr[1] += (tau[2] * e[0] - tau[0] * e[2]) / d;
    dr[2] += (tau[0] * e[1] - tau[1] * e[0]) / d;
}
