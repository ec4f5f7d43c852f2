/* radial.h - functions of the edge length: Gaussian distance basis and polynomial envelope. */
#ifndef UMAS_RADIAL_H
#define UMAS_RADIAL_H

/* GaussianSmearing(0, cutoff, B, 2.0): offsets mu[B] = linspace(0, cutoff, B) (computed like
 * torch.linspace in double) and coeff = -0.5 / (2 * (mu[1] - mu[0]))^2. */
typedef struct umas_gaussian_basis {
    int num_basis;
    double coeff;
    double *offsets; /* [B] */
} umas_gaussian_basis;

int umas_gaussian_basis_init(umas_gaussian_basis *basis, int num_basis, double cutoff);
void umas_gaussian_basis_free(umas_gaussian_basis *basis);

/* g[k] = exp(coeff (d - mu_k)^2), k < B. */
void umas_gaussian_forward(const umas_gaussian_basis *basis, double d, double *g);

/* sum_k dg[k] * d g_k / d d = sum_k dg[k] 2 coeff (d - mu_k) g_k(d). */
double umas_gaussian_backward(const umas_gaussian_basis *basis, double d, const double *dg);

/* PolynomialEnvelope(p = 5): x = d / cutoff, 1 - 21 x^5 + 35 x^6 - 15 x^7 for x < 1, else 0. */
double umas_envelope(double d, double cutoff);
/* d envelope / d d = -105 x^4 (1 - x)^2 / cutoff for x < 1, else 0. */
double umas_envelope_derivative(double d, double cutoff);

#endif
