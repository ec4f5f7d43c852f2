/* virial.h - one edge's virial term, written once for the C core (context.c) and the CUDA
 * kernels (cuda/neighbors.cu), where nvcc compiles it for host and device. */
#ifndef UMAS_VIRIAL_H
#define UMAS_VIRIAL_H

#ifndef UMAS_HOST_DEVICE
#ifdef __CUDACC__
#define UMAS_HOST_DEVICE __host__ __device__
#else
#define UMAS_HOST_DEVICE
#endif
#endif

/* W = -sym(r (x) g) of an edge with vector r = r_source - r_target and g = dE/dr, in LAMMPS'
 * order xx yy zz xy xz yz (eV). The system's virial is the sum over edges; half of each term
 * belongs to each end (per-atom virial). */
static inline UMAS_HOST_DEVICE void umas_edge_virial(const double r[3], const double g[3],
                                                     double W[6]) {
    W[0] = -r[0] * g[0];
    W[1] = -r[1] * g[1];
    W[2] = -r[2] * g[2];
    W[3] = -0.5 * (r[0] * g[1] + r[1] * g[0]);
    W[4] = -0.5 * (r[0] * g[2] + r[2] * g[0]);
    W[5] = -0.5 * (r[1] * g[2] + r[2] * g[1]);
}

#endif
