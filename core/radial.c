/* radial.c - Gaussian distance basis and polynomial envelope (spec sections 4.1, 4.2). */
#include "radial.h"

#include "wigner_math.h"

#include <math.h>
#include <stdlib.h>

int umas_gaussian_basis_init(umas_gaussian_basis *basis, int num_basis, double cutoff) {
    basis->num_basis = num_basis;
    basis->offsets = NULL;
    if (num_basis < 2)
        return -1;
    basis->offsets = malloc(sizeof(double) * (size_t)num_basis);
    if (!basis->offsets)
        return -1;
    /* torch.linspace: the first half counts up from the start, the second half down from the
     * end, so the last offset is exactly the cutoff. */
    double step = cutoff / (num_basis - 1);
    for (int k = 0; k < num_basis; k++)
        basis->offsets[k] = (k < num_basis / 2) ? k * step : cutoff - (num_basis - 1 - k) * step;
    double delta = basis->offsets[1] - basis->offsets[0];
    basis->coeff = -0.5 / ((2.0 * delta) * (2.0 * delta));
    return 0;
}

void umas_gaussian_basis_free(umas_gaussian_basis *basis) {
    free(basis->offsets);
    basis->offsets = NULL;
}

void umas_gaussian_forward(const umas_gaussian_basis *basis, double d, double *g) {
    for (int k = 0; k < basis->num_basis; k++) {
        double x = d - basis->offsets[k];
        g[k] = exp(basis->coeff * x * x);
    }
}

double umas_envelope(double d, double cutoff) {
    return umas_envelope_value(d, cutoff);
}

double umas_gaussian_backward(const umas_gaussian_basis *basis, double d, const double *dg) {
    double dd = 0;
    for (int k = 0; k < basis->num_basis; k++) {
        double x = d - basis->offsets[k];
        dd += dg[k] * 2.0 * basis->coeff * x * exp(basis->coeff * x * x);
    }
    return dd;
}

double umas_envelope_derivative(double d, double cutoff) {
    return umas_envelope_slope(d, cutoff);
}
