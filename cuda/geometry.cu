/* geometry.cu - per-edge geometry on the GPU: distance, envelope and Wigner D (in double, stored
 * as float), the radial MLP's input and its LayerNorm+SiLU layers, the Gaussian basis backward,
 * and the final per-edge gradient dE/dr (in double). Each kernel names the CPU function of the
 * core that it mirrors; see kernels.h for the contracts. */
#include "kernels.h"

#include <math.h>

/* Kernels and helpers are static: internal to this file. */

/* ---------------------------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------------------------- */

enum { ELEMENTWISE_THREADS = 256, ROW_THREADS = 128, EDGE_THREADS = 128 };

#include "common.cuh"

/* ---------------------------------------------------------------------------------------------
 * Double-precision math of core/wigner.c and core/radial.c (host and device, so that a host test
 * can compare it with the core)
 * ------------------------------------------------------------------------------------------- */

typedef struct wigner_d {
    double l1[3][3];
    double l2[5][5];
} wigner_d;

/* Same layout as umas_wigner_generators: l1 [3][3][3] then l2 [3][5][5], 102 doubles. */
typedef struct generators_d {
    double l1[3][3][3];
    double l2[3][5][5];
} generators_d;
enum { GENERATOR_DOUBLES = 27 + 75 };

/* core/wigner.c l2_basis: Y_i(v) = v^T A_i v. */
__host__ __device__ static inline void l2_basis(double A[5][3][3]) {
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

/* core/wigner.c edge_frame: rows u, e, w = u x e; u from the axis least aligned with e. */
__host__ __device__ static inline void edge_frame(const double e[3], double R[3][3]) {
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

/* core/wigner.c umas_wigner_from_unit_vector: D^1 = R, D^2[i][j] = (2/3) tr(A_i R A_j R^T). */
__host__ __device__ static inline void wigner_from_unit_vector(const double e[3], wigner_d *D) {
    double R[3][3];
    edge_frame(e, R);
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++)
            D->l1[a][b] = R[a][b];

    double A[5][3][3];
    l2_basis(A);
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

/* core/wigner.c vector_generators: K_a[i][j], K_a v = e_a x v. */
__host__ __device__ static inline double vector_generator(int a, int i, int j) {
    /* K_a[i][j] = -epsilon_{a i j}: -1 for cyclic (a, i, j), +1 for anticyclic, else 0 */
    if (i == a || j == a || i == j)
        return 0.0;
    return (i == (a + 1) % 3) ? -1.0 : 1.0;
}

/* Entry `index` (0 <= index < 102) of the generators in the generators_d layout (core/wigner.c
 * umas_wigner_generators_init): J^1_a = K_a; J^2_a[i][j] = (2/3) tr(A_i (K_a A_j - A_j K_a)). */
__host__ __device__ static inline double generator_entry(int index) {
    if (index < 27)
        return vector_generator(index / 9, index / 3 % 3, index % 3);
    index -= 27;
    const int a = index / 25, i = index / 5 % 5, j = index % 5;
    double A[5][3][3];
    l2_basis(A);
    double t = 0;
    for (int p = 0; p < 3; p++)
        for (int q = 0; q < 3; q++) {
            double commutator = 0;
            for (int k = 0; k < 3; k++)
                commutator +=
                    vector_generator(a, p, k) * A[j][k][q] - A[j][p][k] * vector_generator(a, k, q);
            t += A[i][q][p] * commutator;
        }
    return (2.0 / 3.0) * t;
}

/* core/wigner.c umas_wigner_backward: tau_a = -sum_l <dD^l, D^l J^l_a>; dr += (tau x e) / d. */
__host__ __device__ static inline void wigner_backward(const generators_d *J, const wigner_d *D,
                                                       const wigner_d *dD, const double e[3],
                                                       double d, double dr[3]) {
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

/* core/radial.c umas_envelope / umas_envelope_derivative (p = 5). */
__host__ __device__ static inline double envelope_d(double d, double cutoff) {
    double x = d / cutoff;
    if (x >= 1.0)
        return 0.0;
    double x5 = x * x * x * x * x;
    return 1.0 - 21.0 * x5 + 35.0 * x5 * x - 15.0 * x5 * x * x;
}
__host__ __device__ static inline double envelope_derivative_d(double d, double cutoff) {
    double x = d / cutoff;
    if (x >= 1.0)
        return 0.0;
    return -105.0 * x * x * x * x * (1.0 - x) * (1.0 - x) / cutoff;
}

/* ---------------------------------------------------------------------------------------------
 * Kernels
 * ------------------------------------------------------------------------------------------- */

/* core/backend_general.c edge_geometry. One thread per edge; edge_vector [E][3] double;
 * distance, envelope [E], wigner [E]. */
static __global__ void edge_geometry_kernel(int E, const double *__restrict__ edge_vector,
                                            double cutoff, float *__restrict__ distance,
                                            float *__restrict__ envelope,
                                            cu_wigner *__restrict__ wigner) {
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < E; e += gridDim.x * blockDim.x) {
        const double *r = edge_vector + 3 * (size_t)e;
        const double r0 = r[0], r1 = r[1], r2 = r[2];
        const double d = sqrt(r0 * r0 + r1 * r1 + r2 * r2);
        const double unit[3] = {r0 / d, r1 / d, r2 / d};
        wigner_d D;
        wigner_from_unit_vector(unit, &D);
        distance[e] = (float)d;
        envelope[e] = (float)envelope_d(d, cutoff);
        cu_wigner *out = wigner + e;
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 3; b++)
                out->l1[a][b] = (float)D.l1[a][b];
        for (int a = 0; a < 5; a++)
            for (int b = 0; b < 5; b++)
                out->l2[a][b] = (float)D.l2[a][b];
    }
}

void cu_edge_geometry(int E, const double *edge_vector, double cutoff, float *distance,
                      float *envelope, cu_wigner *wigner, cudaStream_t stream) {
    if (E <= 0)
        return;
    edge_geometry_kernel<<<grid_for((size_t)E, EDGE_THREADS), EDGE_THREADS, 0, stream>>>(
        E, edge_vector, cutoff, distance, envelope, wigner);
}

/* core/backend_general.c radial_input: out[n][F], F = B + 2 Ce:
 * [exp(coeff (d - mu_k)^2) k < B | source_embedding[Z_src][Ce] | target_embedding[Z_tgt][Ce]].
 * Grid-stride over the n F outputs (consecutive threads write consecutive columns). */
static __global__ void
radial_input_kernel(int n, const int *__restrict__ source, const int *__restrict__ target,
                    const int *__restrict__ atomic_numbers, const float *__restrict__ distance,
                    const float *__restrict__ offsets, float coeff, int B,
                    const float *__restrict__ source_embedding,
                    const float *__restrict__ target_embedding, int Ce, float *__restrict__ out) {
    const int F = B + 2 * Ce;
    const size_t total = (size_t)n * F;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        const int e = (int)(idx / F), k = (int)(idx % F);
        float v;
        if (k < B) {
            const float x = distance[e] - offsets[k];
            v = expf(coeff * x * x);
        } else if (k < B + Ce) {
            v = source_embedding[(size_t)atomic_numbers[source[e]] * Ce + (k - B)];
        } else {
            v = target_embedding[(size_t)atomic_numbers[target[e]] * Ce + (k - B - Ce)];
        }
        out[idx] = v;
    }
}

void cu_radial_input(int n, const int *source, const int *target, const int *atomic_numbers,
                     const float *distance, const float *offsets, float coeff, int B,
                     const float *source_embedding, const float *target_embedding, int Ce,
                     float *out, cudaStream_t stream) {
    if (n <= 0)
        return;
    const size_t total = (size_t)n * (size_t)(B + 2 * Ce);
    radial_input_kernel<<<grid_for(total, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS, 0, stream>>>(
        n, source, target, atomic_numbers, distance, offsets, coeff, B, source_embedding,
        target_embedding, Ce, out);
}

/* Mean and 1/sqrt(var + 1e-5) of one row of n floats (core/nn.c row_statistics), two-pass in
 * double. Called by the whole block. */
__device__ static void row_statistics(const float *row, int n, double *mean, double *inv_std) {
    double s[1] = {0.0};
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        s[0] += (double)row[i];
    block_sum<1>(s);
    const double m = s[0] / n;
    double v[1] = {0.0};
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const double x = (double)row[i] - m;
        v[0] += x * x;
    }
    block_sum<1>(v);
    *mean = m;
    *inv_std = 1.0 / sqrt(v[0] / n + 1e-5);
}

/* core/nn.c norm_silu: out[rows][n] = SiLU(LayerNorm(in)). One block per row. */
static __global__ void layer_norm_silu_kernel(int n, const float *__restrict__ in,
                                              const float *__restrict__ weight,
                                              const float *__restrict__ bias,
                                              float *__restrict__ out) {
    const float *x = in + (size_t)blockIdx.x * n;
    float *y = out + (size_t)blockIdx.x * n;
    double mean, inv_std;
    row_statistics(x, n, &mean, &inv_std);
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        y[i] = siluf_((float)(((double)x[i] - mean) * inv_std * weight[i] + bias[i]));
}

void cu_layer_norm_silu(int rows, int n, const float *in, const float *weight, const float *bias,
                        float *out, cudaStream_t stream) {
    if (rows <= 0 || n <= 0)
        return;
    layer_norm_silu_kernel<<<rows, ROW_THREADS, 0, stream>>>(n, in, weight, bias, out);
}

/* core/nn.c norm_silu_backward: with y = LayerNorm(x), g = weight * d_out * SiLU'(y),
 * x_hat = (x - mean) s: d_in = s (g - mean(g) - x_hat mean(g x_hat)). One block per row;
 * d_in may alias d_out (every d_out is read before the last pass, which reads and writes each
 * element in the same thread). */
static __global__ void layer_norm_silu_backward_kernel(int n, const float *__restrict__ in,
                                                       const float *__restrict__ weight,
                                                       const float *__restrict__ bias,
                                                       const float *d_out, float *d_in) {
    const float *x = in + (size_t)blockIdx.x * n;
    const float *dy = d_out + (size_t)blockIdx.x * n;
    float *dx = d_in + (size_t)blockIdx.x * n;
    double mean, inv_std;
    row_statistics(x, n, &mean, &inv_std);
    double sums[2] = {0.0, 0.0}; /* sum g, sum g x_hat */
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const double x_hat = ((double)x[i] - mean) * inv_std;
        const float y = (float)(x_hat * weight[i] + bias[i]);
        const double g = (double)(weight[i] * dy[i] * silu_derivativef_(y));
        sums[0] += g;
        sums[1] += g * x_hat;
    }
    block_sum<2>(sums);
    const double mean_g = sums[0] / n, mean_gx = sums[1] / n;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const double x_hat = ((double)x[i] - mean) * inv_std;
        const float y = (float)(x_hat * weight[i] + bias[i]);
        const double g = (double)(weight[i] * dy[i] * silu_derivativef_(y));
        dx[i] = (float)(inv_std * (g - mean_g - x_hat * mean_gx));
    }
}

void cu_layer_norm_silu_backward(int rows, int n, const float *in, const float *weight,
                                 const float *bias, const float *d_out, float *d_in,
                                 cudaStream_t stream) {
    if (rows <= 0 || n <= 0)
        return;
    layer_norm_silu_backward_kernel<<<rows, ROW_THREADS, 0, stream>>>(n, in, weight, bias, d_out,
                                                                      d_in);
}

/* core/radial.c umas_gaussian_backward for n edges: d_distance[e] +=
 * sum_k d_gauss[e][k] 2 coeff (d - mu_k) exp(coeff (d - mu_k)^2), d_gauss [n][ld]. One warp per
 * edge (coalesced over k), sum in double. */
static __global__ void gaussian_backward_kernel(int n, const float *__restrict__ distance,
                                                const float *__restrict__ offsets, float coeff,
                                                int B, const float *__restrict__ d_gauss, int ld,
                                                float *__restrict__ d_distance) {
    const int lane = threadIdx.x & 31;
    const int warps_per_block = blockDim.x >> 5;
    for (int e = blockIdx.x * warps_per_block + (threadIdx.x >> 5); e < n;
         e += gridDim.x * warps_per_block) {
        const float d = distance[e];
        const float *dg = d_gauss + (size_t)e * ld;
        double sum = 0.0;
        for (int k = lane; k < B; k += 32) {
            const float x = d - offsets[k];
            sum += (double)(dg[k] * 2.0f * coeff * x * expf(coeff * x * x));
        }
        for (int offset = 16; offset > 0; offset >>= 1)
            sum += __shfl_xor_sync(0xffffffffu, sum, offset);
        if (lane == 0)
            d_distance[e] += (float)sum;
    }
}

void cu_gaussian_backward(int n, const float *distance, const float *offsets, float coeff, int B,
                          const float *d_gauss, int ld, float *d_distance, cudaStream_t stream) {
    if (n <= 0)
        return;
    const int warps = ELEMENTWISE_THREADS / 32;
    gaussian_backward_kernel<<<grid_for((size_t)n, warps), ELEMENTWISE_THREADS, 0, stream>>>(
        n, distance, offsets, coeff, B, d_gauss, ld, d_distance);
}

/* core/backend_general.c backward's edge loop (in double): dd = d_distance + d_envelope
 * envelope'(d); dr = dd e + (tau x e) / d (umas_wigner_backward, D recomputed in double);
 * edge_gradient[e] = rmsd dr, [E][3] double. One thread per edge; the generators are computed
 * once per block into shared memory. */
static __global__ void edge_gradient_kernel(int E, const double *__restrict__ edge_vector,
                                            double cutoff, const cu_wigner *__restrict__ d_wigner,
                                            const float *__restrict__ d_envelope,
                                            const float *__restrict__ d_distance, double rmsd,
                                            double *__restrict__ edge_gradient) {
    __shared__ generators_d J;
    double *flat = &J.l1[0][0][0];
    for (int k = threadIdx.x; k < GENERATOR_DOUBLES; k += blockDim.x)
        flat[k] = generator_entry(k);
    __syncthreads();

    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < E; e += gridDim.x * blockDim.x) {
        const double *r = edge_vector + 3 * (size_t)e;
        const double r0 = r[0], r1 = r[1], r2 = r[2];
        const double d = sqrt(r0 * r0 + r1 * r1 + r2 * r2);
        const double unit[3] = {r0 / d, r1 / d, r2 / d};
        wigner_d D, dD;
        wigner_from_unit_vector(unit, &D);
        const cu_wigner *g = d_wigner + e;
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 3; b++)
                dD.l1[a][b] = (double)g->l1[a][b];
        for (int a = 0; a < 5; a++)
            for (int b = 0; b < 5; b++)
                dD.l2[a][b] = (double)g->l2[a][b];
        const double dd =
            (double)d_distance[e] + (double)d_envelope[e] * envelope_derivative_d(d, cutoff);
        double dr[3] = {dd * unit[0], dd * unit[1], dd * unit[2]};
        wigner_backward(&J, &D, &dD, unit, d, dr);
        double *out = edge_gradient + 3 * (size_t)e;
        for (int k = 0; k < 3; k++)
            out[k] = dr[k] * rmsd;
    }
}

void cu_edge_gradient(int E, const double *edge_vector, double cutoff, const cu_wigner *d_wigner,
                      const float *d_envelope, const float *d_distance, double rmsd,
                      double *edge_gradient, cudaStream_t stream) {
    if (E <= 0)
        return;
    edge_gradient_kernel<<<grid_for((size_t)E, EDGE_THREADS), EDGE_THREADS, 0, stream>>>(
        E, edge_vector, cutoff, d_wigner, d_envelope, d_distance, rmsd, edge_gradient);
}
