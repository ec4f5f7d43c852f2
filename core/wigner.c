/* wigner.c - real Wigner D matrices (l = 1, 2) of the rotation that maps an edge onto +y, their
 * generators and the torque formula; the math itself is core/wigner_math.h (shared with CUDA). */
#include "wigner.h"

void umas_wigner_from_unit_vector(const double e[3], umas_wigner *D) {
    umas_wigner_compute(e, D);
}

void umas_wigner_generators_init(umas_wigner_generators *J) {
    double *flat = &J->l1[0][0][0]; /* l1 then l2: 27 + 75 doubles, as umas_generator_entry */
    for (int k = 0; k < 27; k++)
        flat[k] = umas_generator_entry(k);
    double *flat2 = &J->l2[0][0][0];
    for (int k = 0; k < 75; k++)
        flat2[k] = umas_generator_entry(27 + k);
}

void umas_wigner_backward(const umas_wigner_generators *J, const umas_wigner *D,
                          const umas_wigner *dD, const double e[3], double d, double dr[3]) {
    umas_wigner_torque(J, D, dD, e, d, dr);
}
