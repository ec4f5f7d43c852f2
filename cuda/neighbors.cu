/* neighbors.cu - the neighbour-list route on the GPU (umas_compute_positions): edge vectors from
 * positions and periodic images, the stable selection of the edges within the cutoff, and the
 * scatter of dE/dr into forces and virials (fixed-point sums: bitwise reproducible), so that per
 * step only positions go up and forces come down. */
#include "kernels.h"

#include "common.cuh"
#include "virial.h"

#include <cub/device/device_scan.cuh>

#include <cstring>

enum { NEIGHBOR_THREADS = 256 };

/* r_e = x[source] + image . cell - x[target]; keep[e] = (|r_e| <= cutoff); the first kept edge
 * of length 0 (atoms on top of each other) is recorded in *zero_edge (atomicMin). */
__global__ void neighbor_vectors_kernel(int E, const double *positions, const int *source,
                                        const int *target, const int *image, const double *cell,
                                        double cutoff2, double *vector, int *keep, int *zero_edge) {
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < E; e += gridDim.x * blockDim.x) {
        const double *xs = positions + 3 * (size_t)source[e];
        const double *xt = positions + 3 * (size_t)target[e];
        double r[3], d2 = 0;
        for (int k = 0; k < 3; k++) {
            r[k] = xs[k] - xt[k];
            if (image)
                r[k] += image[3 * (size_t)e] * cell[k] + image[3 * (size_t)e + 1] * cell[3 + k] +
                        image[3 * (size_t)e + 2] * cell[6 + k];
            d2 += r[k] * r[k];
            vector[3 * (size_t)e + k] = r[k];
        }
        int kept = d2 <= cutoff2;
        keep[e] = kept;
        if (kept && d2 == 0.0)
            atomicMin(zero_edge, e);
    }
}

void cu_neighbor_vectors(int E, const double *positions, const int *source, const int *target,
                         const int *image, const double *cell, double cutoff, double *vector,
                         int *keep, int *zero_edge, cudaStream_t stream) {
    if (E <= 0)
        return;
    neighbor_vectors_kernel<<<grid_for((size_t)E, NEIGHBOR_THREADS), NEIGHBOR_THREADS, 0, stream>>>(
        E, positions, source, target, image, cell, cutoff * cutoff, vector, keep, zero_edge);
}

size_t cu_select_scratch_bytes(int E) {
    size_t bytes = 0;
    cub::DeviceScan::ExclusiveSum(nullptr, bytes, (const int *)nullptr, (int *)nullptr,
                                  E > 0 ? E : 1);
    return bytes;
}

/* Kept edge k = slot[e] of list edge e: its list index, ends and vector. */
__global__ void compact_edges_kernel(int E, const int *keep, const int *slot, const int *source,
                                     const int *target, const double *vector, int *kept,
                                     int *kept_source, int *kept_target, double *kept_vector,
                                     int *count) {
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < E; e += gridDim.x * blockDim.x) {
        if (e == E - 1)
            *count = slot[e] + keep[e];
        if (!keep[e])
            continue;
        int k = slot[e];
        kept[k] = e;
        kept_source[k] = source[e];
        kept_target[k] = target[e];
        for (int c = 0; c < 3; c++)
            kept_vector[3 * (size_t)k + c] = vector[3 * (size_t)e + c];
    }
}

void cu_select_edges(int E, const int *keep, int *slot, void *scratch, size_t scratch_bytes,
                     const int *source, const int *target, const double *vector, int *kept,
                     int *kept_source, int *kept_target, double *kept_vector, int *count,
                     cudaStream_t stream) {
    if (E <= 0) {
        cudaMemsetAsync(count, 0, sizeof(int), stream);
        return;
    }
    cub::DeviceScan::ExclusiveSum(scratch, scratch_bytes, keep, slot, E, stream);
    compact_edges_kernel<<<grid_for((size_t)E, NEIGHBOR_THREADS), NEIGHBOR_THREADS, 0, stream>>>(
        E, keep, slot, source, target, vector, kept, kept_source, kept_target, kept_vector, count);
}

/* v (eV/A or eV) in 2^-32 units, added atomically: integer sums, the same bits in any order. */
__device__ void add_fixed(double *sum, double v) {
    atomicAdd(reinterpret_cast<unsigned long long *>(sum),
              (unsigned long long)__double2ll_rn(v * 4294967296.0));
}

/* F_source -= g, F_target += g; W_e = -sym(r (x) g) (xx yy zz xy xz yz) summed per block, then
 * added to virial[6]; half of W_e to each end's node_virial when given. All sums in 64-bit fixed
 * point held in the double arrays' bits (fixed_to_double turns them into doubles). */
__global__ void scatter_gradients_kernel(int E, const int *source, const int *target,
                                         const double *vector, const double *gradient,
                                         double *forces, double *virial, double *node_virial) {
    double w_sum[6] = {0, 0, 0, 0, 0, 0};
    int stride = gridDim.x * blockDim.x;
    int rounds = (E + stride - 1) / stride; /* every thread of a block runs block_sum alike */
    for (int round = 0; round < rounds; round++) {
        int e = round * stride + blockIdx.x * blockDim.x + threadIdx.x;
        if (e >= E)
            continue;
        const double *r = vector + 3 * (size_t)e, *g = gradient + 3 * (size_t)e;
        size_t s = (size_t)source[e], t = (size_t)target[e];
        for (int k = 0; k < 3; k++) {
            add_fixed(forces + 3 * s + k, -g[k]);
            add_fixed(forces + 3 * t + k, g[k]);
        }
        double w[6];
        umas_edge_virial(r, g, w);
        for (int k = 0; k < 6; k++) {
            w_sum[k] += w[k];
            if (node_virial) {
                add_fixed(node_virial + 6 * s + k, 0.5 * w[k]);
                add_fixed(node_virial + 6 * t + k, 0.5 * w[k]);
            }
        }
    }
    block_sum<6>(w_sum); /* fixed order within the block */
    if (threadIdx.x == 0)
        for (int k = 0; k < 6; k++)
            add_fixed(virial + k, w_sum[k]);
}

/* In place: the fixed-point integer in each element's bits -> its double value. */
__global__ void fixed_to_double_kernel(size_t n, double *x) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        long long fixed;
        memcpy(&fixed, &x[i], sizeof fixed);
        x[i] = (double)fixed / 4294967296.0;
    }
}

static void fixed_to_double(size_t n, double *x, cudaStream_t stream) {
    if (n > 0)
        fixed_to_double_kernel<<<grid_for(n, NEIGHBOR_THREADS), NEIGHBOR_THREADS, 0, stream>>>(n,
                                                                                               x);
}

void cu_scatter_edge_gradients(int N, int E, const int *source, const int *target,
                               const double *vector, const double *gradient, double *forces,
                               double *virial, double *node_virial, cudaStream_t stream) {
    cudaMemsetAsync(forces, 0, sizeof(double) * 3 * (size_t)N, stream);
    cudaMemsetAsync(virial, 0, sizeof(double) * 6, stream);
    if (node_virial)
        cudaMemsetAsync(node_virial, 0, sizeof(double) * 6 * (size_t)N, stream);
    if (E > 0)
        scatter_gradients_kernel<<<grid_for((size_t)E, NEIGHBOR_THREADS), NEIGHBOR_THREADS, 0,
                                   stream>>>(E, source, target, vector, gradient, forces, virial,
                                             node_virial);
    fixed_to_double(3 * (size_t)N, forces, stream);
    fixed_to_double(6, virial, stream);
    if (node_virial)
        fixed_to_double(6 * (size_t)N, node_virial, stream);
}

/* Edges [first, first + count) made inert: atom e % N to itself at distance `length` (beyond the
 * cutoff) along a generic direction, so the envelope, its slope and every term of these edges
 * are exactly zero. */
__global__ void pad_edges_kernel(int first, int count, int N, double length, int *source,
                                 int *target, double *vector) {
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < count; k += gridDim.x * blockDim.x) {
        int e = first + k;
        source[e] = target[e] = e % N;
        vector[3 * (size_t)e + 0] = 0.60 * length;
        vector[3 * (size_t)e + 1] = 0.64 * length;
        vector[3 * (size_t)e + 2] = 0.48 * length;
    }
}

void cu_pad_edges(int first, int count, int N, double length, int *source, int *target,
                  double *vector, cudaStream_t stream) {
    if (count > 0 && N > 0)
        pad_edges_kernel<<<grid_for((size_t)count, NEIGHBOR_THREADS), NEIGHBOR_THREADS, 0,
                           stream>>>(first, count, N, length, source, target, vector);
}
