/* geometry.cu - per-edge geometry on the GPU: distance, envelope and Wigner D (in double, stored
 * as float), the radial MLP's input and its LayerNorm+SiLU layers, the Gaussian basis backward,
 * and the final per-edge gradient dE/dr (in double). Each kernel names the CPU function of the
 * core that it mirrors; see kernels.h for the contracts. */
#include "kernels.h"
#include "slicing.cuh"

#include <math.h>

/* Kernels and helpers are static: internal to this file. */

/* ---------------------------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------------------------- */

/* ROW_THREADS: the LayerNorm+SiLU kernels, one warp per row, ROW_THREADS / 32 rows per block. */
enum { ELEMENTWISE_THREADS = 256, ROW_THREADS = 256, EDGE_THREADS = 128 };

#include "common.cuh"
#include "wigner_math.h"

/* The double-precision rotation math is core/wigner_math.h, shared with the C core. */
enum { GENERATOR_DOUBLES = 27 + 75 };

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
        umas_wigner D;
        umas_wigner_compute(unit, &D);
        distance[e] = (float)d;
        envelope[e] = (float)umas_envelope_value(d, cutoff);
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

/* Sums v[0..K) over the 32 lanes of a warp (all lanes active); every lane gets the sums. The
 * butterfly's additions are commutative, so all lanes hold bitwise the same sums; the order is
 * fixed (deterministic). */
template <int K> static __device__ void warp_sum(double (&v)[K]) {
    for (int k = 0; k < K; k++)
        for (int offset = 16; offset > 0; offset >>= 1)
            v[k] += __shfl_xor_sync(0xffffffffu, v[k], offset);
}

/* Mean and 1/sqrt(var + 1e-5) of one row of n floats (core/nn.c row_statistics), in double.
 * One pass: the sums of x and x^2 in one warp_sum (var = E[x^2] - mean^2; the float inputs are
 * exact in double, so the cancellation costs at most mean^2 / var x 1e-16 of var), one wait on
 * the shuffles instead of two. Called by the whole warp of the row; lane = threadIdx.x & 31 sums
 * the elements lane, lane + 32, ...; every lane gets the same mean and inv_std. */
__device__ static void row_statistics(const float *row, int n, int lane, double *mean,
                                      double *inv_std) {
    double s[2] = {0.0, 0.0};
    for (int i = lane; i < n; i += 32) {
        const double x = (double)row[i];
        s[0] += x;
        s[1] += x * x;
    }
    warp_sum<2>(s);
    const double m = s[0] / n, var = s[1] / n - m * m;
    *mean = m;
    *inv_std = 1.0 / sqrt((var > 0.0 ? var : 0.0) + 1e-5);
}

/* One element of SiLU(LayerNorm(x)): y = x_hat w + b with x_hat = (x - mean) inv_std. */
__device__ static float norm_silu_value(float x, double mean, double inv_std, float w, float b) {
    return siluf_((float)(((double)x - mean) * inv_std * w + b));
}

/* One element's terms of the backward: x_hat and g = w dy SiLU'(y) (y as in norm_silu_value). */
__device__ static double norm_silu_adjoint(float x, double mean, double inv_std, float w, float b,
                                           float dy, double *x_hat) {
    *x_hat = ((double)x - mean) * inv_std;
    const float y = (float)(*x_hat * w + b);
    return (double)(w * dy * silu_derivativef_(y));
}

/* core/nn.c norm_silu: out[rows][n] = SiLU(LayerNorm(in)); weight, bias [n]. One warp per row
 * (ROW_THREADS / 32 rows per block, grid-stride over the rows); lane handles the elements
 * lane, lane + 32, ... of its row (consecutive lanes read consecutive floats). */
static __global__ void layer_norm_silu_kernel(int rows, int n, const float *__restrict__ in,
                                              size_t ld_in, const float *__restrict__ weight,
                                              const float *__restrict__ bias,
                                              float *__restrict__ out) {
    const int lane = threadIdx.x & 31;
    const size_t warps_per_block = blockDim.x >> 5;
    for (size_t row = blockIdx.x * warps_per_block + (threadIdx.x >> 5); row < (size_t)rows;
         row += gridDim.x * warps_per_block) { /* the same for all lanes of a warp */
        const float *x = in + row * ld_in;
        float *y = out + row * n;
        double mean, inv_std;
        row_statistics(x, n, lane, &mean, &inv_std);
        for (int i = lane; i < n; i += 32)
            y[i] = norm_silu_value(x[i], mean, inv_std, weight[i], bias[i]);
    }
}

void cu_layer_norm_silu(int rows, int n, const float *in, int ld_in, const float *weight,
                        const float *bias, float *out, cudaStream_t stream) {
    if (rows <= 0 || n <= 0)
        return;
    layer_norm_silu_kernel<<<grid_for((size_t)rows, ROW_THREADS / 32), ROW_THREADS, 0, stream>>>(
        rows, n, in, (size_t)ld_in, weight, bias, out);
}

/* layer_norm_silu_kernel with the row kept in registers (VALUES per lane) and written sliced. */
template <int VALUES>
static __global__ void layer_norm_silu_sliced_kernel(int rows, int n, const float *__restrict__ in,
                                                     size_t ld_in, const float *__restrict__ weight,
                                                     const float *__restrict__ bias,
                                                     i8_sliced out) {
    const int lane = threadIdx.x & 31;
    const size_t warps_per_block = blockDim.x >> 5;
    for (size_t row = blockIdx.x * warps_per_block + (threadIdx.x >> 5); row < (size_t)rows;
         row += gridDim.x * warps_per_block) {
        const float *x = in + row * ld_in;
        double mean, inv_std;
        row_statistics(x, n, lane, &mean, &inv_std);
        float y[VALUES];
#pragma unroll
        for (int k = 0; k < VALUES; k++) {
            const int i = lane + 32 * k;
            y[k] = i < n ? norm_silu_value(x[i], mean, inv_std, weight[i], bias[i]) : 0.0f;
        }
        store_warp_row_sliced(y, n, row, out);
    }
}

int cu_layer_norm_silu_sliced(int rows, int n, const float *in, int ld_in, const float *weight,
                              const float *bias, const i8_sliced *out, cudaStream_t stream) {
    if (n > 256)
        return 0;
    if (rows <= 0 || n <= 0)
        return 1;
    const unsigned blocks = grid_for((size_t)rows, ROW_THREADS / 32);
    if (n <= 128)
        layer_norm_silu_sliced_kernel<4>
            <<<blocks, ROW_THREADS, 0, stream>>>(rows, n, in, (size_t)ld_in, weight, bias, *out);
    else
        layer_norm_silu_sliced_kernel<8>
            <<<blocks, ROW_THREADS, 0, stream>>>(rows, n, in, (size_t)ld_in, weight, bias, *out);
    return 1;
}

/* core/nn.c norm_silu_backward: with y = LayerNorm(x), g = weight * d_out * SiLU'(y),
 * x_hat = (x - mean) s: d_in = s (g - mean(g) - x_hat mean(g x_hat)); d_out [rows][n], in and
 * d_in rows of n with stride ld. One warp per row as in the forward. d_in may alias d_out (then
 * ld = n) or in: element i of a row is read and written only by lane i % 32 (every pass uses
 * i = lane, lane + 32, ...), which reads its in[i] and d_out[i] before it writes d_in[i] in the
 * last pass (so in, d_out and d_in are not __restrict__). */
static __global__ void layer_norm_silu_backward_kernel(int rows, int n, const float *in, size_t ld,
                                                       const float *__restrict__ weight,
                                                       const float *__restrict__ bias,
                                                       const float *d_out, float *d_in) {
    const int lane = threadIdx.x & 31;
    const size_t warps_per_block = blockDim.x >> 5;
    for (size_t row = blockIdx.x * warps_per_block + (threadIdx.x >> 5); row < (size_t)rows;
         row += gridDim.x * warps_per_block) { /* the same for all lanes of a warp */
        const float *x = in + row * ld;
        const float *dy = d_out + row * n;
        float *dx = d_in + row * ld;
        double mean, inv_std;
        row_statistics(x, n, lane, &mean, &inv_std);
        double sums[2] = {0.0, 0.0}; /* sum g, sum g x_hat */
        for (int i = lane; i < n; i += 32) {
            double x_hat;
            const double g =
                norm_silu_adjoint(x[i], mean, inv_std, weight[i], bias[i], dy[i], &x_hat);
            sums[0] += g;
            sums[1] += g * x_hat;
        }
        warp_sum<2>(sums);
        const double mean_g = sums[0] / n, mean_gx = sums[1] / n;
        for (int i = lane; i < n; i += 32) {
            double x_hat;
            const double g =
                norm_silu_adjoint(x[i], mean, inv_std, weight[i], bias[i], dy[i], &x_hat);
            dx[i] = (float)(inv_std * (g - mean_g - x_hat * mean_gx));
        }
    }
}

void cu_layer_norm_silu_backward(int rows, int n, const float *in, int ld, const float *weight,
                                 const float *bias, const float *d_out, float *d_in,
                                 cudaStream_t stream) {
    if (rows <= 0 || n <= 0)
        return;
    layer_norm_silu_backward_kernel<<<grid_for((size_t)rows, ROW_THREADS / 32), ROW_THREADS, 0,
                                      stream>>>(rows, n, in, (size_t)ld, weight, bias, d_out, d_in);
}

/* layer_norm_silu_backward_kernel with d_in kept in registers (VALUES per lane) and written
 * sliced; d_out is only read. */
template <int VALUES>
static __global__ void layer_norm_silu_backward_sliced_kernel(int rows, int n, const float *in,
                                                              size_t ld,
                                                              const float *__restrict__ weight,
                                                              const float *__restrict__ bias,
                                                              const float *d_out, i8_sliced out) {
    const int lane = threadIdx.x & 31;
    const size_t warps_per_block = blockDim.x >> 5;
    for (size_t row = blockIdx.x * warps_per_block + (threadIdx.x >> 5); row < (size_t)rows;
         row += gridDim.x * warps_per_block) {
        const float *x = in + row * ld;
        const float *dy = d_out + row * n;
        double mean, inv_std;
        row_statistics(x, n, lane, &mean, &inv_std);
        double x_hat[VALUES], g[VALUES], sums[2] = {0.0, 0.0}; /* sum g, sum g x_hat */
#pragma unroll
        for (int k = 0; k < VALUES; k++) {
            const int i = lane + 32 * k;
            x_hat[k] = g[k] = 0.0;
            if (i < n)
                g[k] = norm_silu_adjoint(x[i], mean, inv_std, weight[i], bias[i], dy[i], &x_hat[k]);
            sums[0] += g[k];
            sums[1] += g[k] * x_hat[k];
        }
        warp_sum<2>(sums);
        const double mean_g = sums[0] / n, mean_gx = sums[1] / n;
        float dx[VALUES];
#pragma unroll
        for (int k = 0; k < VALUES; k++)
            dx[k] =
                lane + 32 * k < n ? (float)(inv_std * (g[k] - mean_g - x_hat[k] * mean_gx)) : 0.0f;
        store_warp_row_sliced(dx, n, row, out);
    }
}

int cu_layer_norm_silu_backward_sliced(int rows, int n, const float *in, int ld,
                                       const float *weight, const float *bias, const float *d_out,
                                       const i8_sliced *d_in, cudaStream_t stream) {
    if (n > 128)
        return 0;
    if (rows <= 0 || n <= 0)
        return 1;
    layer_norm_silu_backward_sliced_kernel<4>
        <<<grid_for((size_t)rows, ROW_THREADS / 32), ROW_THREADS, 0, stream>>>(
            rows, n, in, (size_t)ld, weight, bias, d_out, *d_in);
    return 1;
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
    __shared__ umas_wigner_generators J;
    double *flat = &J.l1[0][0][0];
    for (int k = threadIdx.x; k < GENERATOR_DOUBLES; k += blockDim.x)
        flat[k] = umas_generator_entry(k);
    __syncthreads();

    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < E; e += gridDim.x * blockDim.x) {
        const double *r = edge_vector + 3 * (size_t)e;
        const double r0 = r[0], r1 = r[1], r2 = r[2];
        const double d = sqrt(r0 * r0 + r1 * r1 + r2 * r2);
        const double unit[3] = {r0 / d, r1 / d, r2 / d};
        umas_wigner D, dD;
        umas_wigner_compute(unit, &D);
        const cu_wigner *g = d_wigner + e;
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 3; b++)
                dD.l1[a][b] = (double)g->l1[a][b];
        for (int a = 0; a < 5; a++)
            for (int b = 0; b < 5; b++)
                dD.l2[a][b] = (double)g->l2[a][b];
        const double dd =
            (double)d_distance[e] + (double)d_envelope[e] * umas_envelope_slope(d, cutoff);
        double dr[3] = {dd * unit[0], dd * unit[1], dd * unit[2]};
        umas_wigner_torque(&J, &D, &dD, unit, d, dr);
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
