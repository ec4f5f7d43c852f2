/* kernels.h - CUDA kernels of the `general` backend on the GPU (fp32 storage).
 *
 * Every launcher mirrors a CPU function of the core (named in its comment) with the same
 * semantics, layouts and argument order, but float32 device arrays; the CPU float64 path is the
 * oracle. All pointers are device pointers; launches go to `stream`; nothing synchronises.
 * Layouts (row-major): node features [N][9][C] in L-order; edge features in M-order as in
 * core/edgewise.c; a Wigner record is cu_wigner (D^1 [3][3], D^2 [5][5]; D^0 = 1).
 * "accumulate" = adds into the output (atomicAdd where several edges hit one row). */
#ifndef UMAS_CUDA_KERNELS_H
#define UMAS_CUDA_KERNELS_H

#include <cuda_runtime.h>

#include "gemm_i8.h"

#include <string.h>

/* Node sums of edge terms are taken in 64-bit fixed point: a value v is added as the integer
 * round(v 2^32) (range +-2^31, resolution 2.3e-10). Integer sums do not depend on the order in
 * which the edges add up, so forces are bitwise reproducible run to run. */
#define CU_FIXED_ONE  4294967296.0f
#define CU_FIXED_UNIT (1.0 / 4294967296.0)

typedef struct cu_wigner {
    float l1[3][3];
    float l2[5][5];
} cu_wigner;

/* ---------------------------------------------------------------------------------------------
 * geometry.cu: edge geometry, radial inputs, LayerNorm+SiLU, Gaussians, edge gradients
 * ------------------------------------------------------------------------------------------- */

/* core/backend_general.c edge_geometry: per edge d = |r|, envelope(d), Wigner D of r/d
 * (core/wigner.c umas_wigner_from_unit_vector: same frame construction), computed in double,
 * stored as float. edge_vector [E][3] double. */
void cu_edge_geometry(int E, const double *edge_vector, double cutoff, float *distance,
                      float *envelope, cu_wigner *wigner, cudaStream_t stream);

/* core/backend_general.c radial_input for edges [0, n) of the given arrays:
 * out[n][B + 2Ce] = [exp(coeff (d - offsets[k])^2), source_embedding[Z_src],
 * target_embedding[Z_tgt]] with Z = atomic_numbers[source[e]] / [target[e]]; embeddings [Z][Ce]. */
void cu_radial_input(int n, const int *source, const int *target, const int *atomic_numbers,
                     const float *distance, const float *offsets, float coeff, int B,
                     const float *source_embedding, const float *target_embedding, int Ce,
                     float *out, cudaStream_t stream);

/* out[rows][n] = SiLU(LayerNorm(in)) (core/nn.c norm_silu; eps 1e-5, biased variance); in rows
 * of n with stride ld_in. out may not alias in. */
void cu_layer_norm_silu(int rows, int n, const float *in, int ld_in, const float *weight,
                        const float *bias, float *out, cudaStream_t stream);
/* d_in from in (the LayerNorm input) and d_out [rows][n] (core/nn.c norm_silu_backward); in and
 * d_in rows of n with stride ld. d_in may alias d_out (ld = n) or in. */
void cu_layer_norm_silu_backward(int rows, int n, const float *in, int ld, const float *weight,
                                 const float *bias, const float *d_out, float *d_in,
                                 cudaStream_t stream);
/* precision ozaki: the same outputs written sliced (gemm_i8.h) instead of in fp32, as the
 * operand of the next product: out (rows of n) for the forward (n <= 256), d_in (n <= 128) for
 * the backward, d_out only read. Return 0 (nothing done) for longer rows. */
int cu_layer_norm_silu_sliced(int rows, int n, const float *in, int ld_in, const float *weight,
                              const float *bias, const i8_sliced *out, cudaStream_t stream);
int cu_layer_norm_silu_backward_sliced(int rows, int n, const float *in, int ld,
                                       const float *weight, const float *bias, const float *d_out,
                                       const i8_sliced *d_in, cudaStream_t stream);

/* d_distance[e] += sum_k d_gauss[e][k] 2 coeff (d - mu_k) g_k(d)  (umas_gaussian_backward),
 * d_gauss [n][ld] (first B columns used). */
void cu_gaussian_backward(int n, const float *distance, const float *offsets, float coeff, int B,
                          const float *d_gauss, int ld, float *d_distance, cudaStream_t stream);

/* Final per-edge gradient (core/backend_general.c backward's edge loop, in double):
 * dd = d_distance + d_envelope * envelope'(d); dr = dd e + torque(D, dD) (umas_wigner_backward
 * with the generators of core/wigner.c); edge_gradient[e] = rmsd * dr (double [E][3]).
 * D is recomputed in double from edge_vector (not the float copy). */
void cu_edge_gradient(int E, const double *edge_vector, double cutoff, const cu_wigner *d_wigner,
                      const float *d_envelope, const float *d_distance, double rmsd,
                      double *edge_gradient, cudaStream_t stream);

/* ---------------------------------------------------------------------------------------------
 * edgewise_producer.cu, edgewise_consumer.cu: the message pipeline pieces (core/edgewise.c),
 * forward and backward
 * ------------------------------------------------------------------------------------------- */

/* gather_rotate for n edges with conv1's radial scaling fused in: u[e][p][0:C] =
 * (D x[source])[m_to_l[p]], u[e][p][C:2C] likewise for the target; y = u * radial[e] at
 * radial_slot (core/edgewise.c scale_by_radial) unless y is null, u also into `unscaled`
 * unless it is null.
 * x [N][9][C], y and unscaled [n][9][2C], radial [n][12C]. */
void cu_gather_rotate(int n, const int *source, const int *target, const cu_wigner *wigner, int C,
                      const float *x, const float *radial, float *unscaled, float *y,
                      cudaStream_t stream);
/* cu_gather_rotate's scaled y for precision ozaki, written sliced (gemm_i8.h) instead of in fp32:
 * as the three operands of conv1, the columns [0, 6C) (m = 0), [6C, 14C) (m = 1) and [14C, 18C)
 * (m = 2) of each [9][2C] row, out[0..2] (rows n; each row's exponent is that of its part).
 * Columns past K within ld are not written (the GEMM does not read them). Requires C <= 256
 * (one channel per thread); returns 0 (nothing done) otherwise. */
int cu_gather_rotate_sliced(int n, const int *source, const int *target, const cu_wigner *wigner,
                            int C, const float *x, const float *radial, const i8_sliced out[3],
                            cudaStream_t stream);
/* gather_rotate_backward: d_x (fixed point [N][9][C], accumulate) += D^T dy^L per half;
 * d_wigner[e] (accumulate, one edge per record) += <dy^L[i], [x_s | x_t][j]>. */
void cu_gather_rotate_backward(int n, const int *source, const int *target, const cu_wigner *wigner,
                               int C, const float *x, const float *dy, unsigned long long *d_x,
                               cu_wigner *d_wigner, cudaStream_t stream);

/* umas_fast_gpu: cu_gather_rotate's backward in one pass, equal to cu_gather_rotate (unscaled u)
 * + cu_scale_by_radial_backward + cu_gather_rotate_backward without u or the scaled adjoint in
 * memory: d_radial[n][12C] (overwrite) from dy (adjoint of the scaled y, [n][9][2C], read only)
 * and u recomputed from x; d_x (fixed point, accumulate) += D^T (dy * radial)^L per half;
 * d_wigner[e] (accumulate) += <(dy * radial)^L, [x_s | x_t]>. */
void cu_producer_backward(int n, const int *source, const int *target, const cu_wigner *wigner,
                          int C, const float *x, const float *radial, const float *dy,
                          float *d_radial, unsigned long long *d_x, cu_wigner *d_wigner,
                          cudaStream_t stream);
/* precision ozaki: the same with d_radial written sliced (gemm_i8.h, one row of 12C per edge:
 * the operand of the radial MLP's last layer's backward) instead of in fp32. Requires C <= 256
 * (one channel per thread); returns 0 (nothing done) otherwise. */
int cu_producer_backward_sliced(int n, const int *source, const int *target,
                                const cu_wigner *wigner, int C, const float *x, const float *radial,
                                const float *dy, const i8_sliced *d_radial, unsigned long long *d_x,
                                cu_wigner *d_wigner, cudaStream_t stream);
/* scale_by_radial_backward: d_radial[n][12C] = sum over uses of dy * unscaled (overwrite);
 * dy *= radial. */
void cu_scale_by_radial_backward(int n, int C, const float *radial, const float *unscaled,
                                 float *dy, float *d_radial, cudaStream_t stream);

/* so2_m_forward's combine: out_r[e][k] = pr[e][k] - pi[e][half + k],
 * out_i[e][k] = pr[e][half + k] + pi[e][k]; pr, pi [n][2 half]; out rows stride ldo. */
void cu_so2_combine(int n, int half, const float *product_r, const float *product_i, float *out_r,
                    float *out_i, int ldo, cudaStream_t stream);
/* so2_m_backward's stacking: stack_r[e] = [do_r | do_i], stack_i[e] = [do_i | -do_r]
 * ([n][2 half]); do_r, do_i rows stride ldo. */
void cu_so2_stack(int n, int half, const float *do_r, const float *do_i, int ldo, float *stack_r,
                  float *stack_i, cudaStream_t stream);

/* gate_forward: g = gate(o) with gates [n][2H] (conv1's m = 0 outputs 0..2H); g may alias o.
 * o, g [n][9][H]. */
void cu_gate_forward(int n, int H, const float *gates, const float *o, float *g,
                     cudaStream_t stream);
/* gate_backward: dg (in place -> dO); d_conv1_m0 [n][5H]: [0:2H] the gates' adjoints,
 * [2H:5H] = dO rows 0..2. */
void cu_gate_backward(int n, int H, const float *gates, const float *o, float *dg,
                      float *d_conv1_m0, cudaStream_t stream);
/* precision ozaki, umas_fast_gpu: cu_gate_forward's g written sliced (gemm_i8.h) instead of in
 * fp32, as conv2's operands out[0..2], the columns [0, 3H), [3H, 7H) and [7H, 9H) of each
 * [9][H] row; and cu_gate_backward's outputs as conv1's adjoint operands: out[0] the m = 0
 * adjoint d_conv1_m0 [5H], out[1], out[2] the columns [3H, 7H) and [7H, 9H) of dO (dg itself is
 * only read). As cu_gather_rotate_sliced: H <= 256, else 0 and nothing done. */
int cu_gate_forward_sliced(int n, int H, const float *gates, const float *o, const i8_sliced out[3],
                           cudaStream_t stream);
int cu_gate_backward_sliced(int n, int H, const float *gates, const float *o, const float *dg,
                            const i8_sliced out[3], cudaStream_t stream);

/* rotate_back_scatter: x_out[target[e]] += env D^T z^L (fixed point [N][9][C]). z [n][9][C]
 * M-order. */
void cu_rotate_back_scatter(int n, const int *target, const cu_wigner *wigner,
                            const float *envelope, int C, const float *z, unsigned long long *x_out,
                            cudaStream_t stream);
/* rotate_back_backward: dz[e] = env (D a)[m_to_l[p]] with a = d_out[target[e]] (overwrite);
 * d_wigner[e] += env <z^L[i], a[j]>; d_envelope[e] += <z^L, D a>. */
void cu_rotate_back_backward(int n, const int *target, const cu_wigner *wigner,
                             const float *envelope, int C, const float *z, const float *d_out,
                             float *dz, cu_wigner *d_wigner, float *d_envelope,
                             cudaStream_t stream);
/* precision ozaki, umas_fast_gpu: the same, dz written sliced (gemm_i8.h) instead of in fp32,
 * as conv2's adjoint operands out[0..2], the columns [0, 3C), [3C, 7C) and [7C, 9C) of each
 * [9][C] row (any C). d_wigner and d_envelope as cu_rotate_back_backward. */
void cu_rotate_back_backward_sliced(int n, const int *target, const cu_wigner *wigner,
                                    const float *envelope, int C, const float *z,
                                    const float *d_out, cu_wigner *d_wigner, float *d_envelope,
                                    const i8_sliced out[3], cudaStream_t stream);

/* umas_edge_degree_forward / _backward (radial [n][3C]; d_radial overwrite; d_wigner,
 * d_envelope accumulate; x_out accumulate, fixed point [N][9][C]). */
void cu_edge_degree_forward(int n, const int *target, const cu_wigner *wigner,
                            const float *envelope, int C, const float *radial,
                            unsigned long long *x_out, cudaStream_t stream);
/* x[i] += fixed[i] 2^-32 and fixed[i] = 0, i < n: the fixed-point sums into float rows. */
void cu_fixed_add(size_t n, unsigned long long *fixed, float *x, cudaStream_t stream);
void cu_edge_degree_backward(int n, const int *target, const cu_wigner *wigner,
                             const float *envelope, int C, const float *radial, const float *d_out,
                             float *d_radial, cu_wigner *d_wigner, float *d_envelope,
                             cudaStream_t stream);

/* ---------------------------------------------------------------------------------------------
 * nodes.cu: node-level layers (core/so3.c, core/backend_general.c)
 * ------------------------------------------------------------------------------------------- */

/* umas_rms_norm_forward / _backward on [N][9][C]; scale [3][C], bias [C]. */
void cu_rms_norm_forward(int N, int C, const float *scale, const float *bias, const float *x,
                         float *y, cudaStream_t stream);
void cu_rms_norm_backward(int N, int C, const float *scale, const float *x, const float *dy,
                          float *dx, cudaStream_t stream);

/* x[n][0][c] += v[c] for every node (c_sys on l = 0), x [N][9][C]. */
void cu_add_to_l0(int N, int C, const float *v, float *x, cudaStream_t stream);
/* embed_nodes: h = 0 except h[n][0] = sphere[Z_n] + c_sys. */
void cu_embed_nodes(int N, int C, const int *atomic_numbers, const float *sphere_embedding,
                    const float *system_embedding, float *h, cudaStream_t stream);

/* SpectralAtomwise gate (core/so3.c): gates[N][2H] = sigmoid(SiLU(gates)) in place;
 * q[N][9][H]: q[0] = SiLU(q[0]), q[i] *= gate of degree l(i). */
void cu_ffn_gate_forward(int N, int H, float *gates, float *q, cudaStream_t stream);
/* Its backward given pre (scalar_mlp pre-activation [N][2H]), q (so3_linear_1 output
 * [N][9][H]) and d_r ([N][9][H], adjoint of the gated hidden): writes d_pre [N][2H] and dq
 * (over q), as umas_spectral_atomwise_backward. */
void cu_ffn_gate_backward(int N, int H, const float *pre, float *q, const float *d_r, float *d_pre,
                          cudaStream_t stream);

/* Elementwise: x = SiLU(x); y = dy * SiLU'(x) (y may alias dy). */
void cu_silu(size_t n, float *x, cudaStream_t stream);
void cu_silu_backward(size_t n, const float *x, const float *dy, float *y, cudaStream_t stream);
/* Head seed: d[n][k] = (n < energy_nodes) ? w3[k] * SiLU'(z2[n][k]) : 0, [N][H]. */
void cu_head_seed(int N, int H, int energy_nodes, const float *w3, const float *z2, float *d,
                  cudaStream_t stream);
/* a += b, n elements. */
void cu_add(size_t n, const float *b, float *a, cudaStream_t stream);

/* ---------------------------------------------------------------------------------------------
 * balance.cu: charge/spin balancing of l = 0 channels (core/balance.h)
 * ------------------------------------------------------------------------------------------- */

/* sums[k] = sum over nodes [0, nodes) of x[n][0][channel[k]], k < count (one double each, fixed
 * order: bitwise repeatable); nodes may be 0 (sums 0). channel and sums on the device. */
void cu_balance_sums(int nodes, int C, int count, const int *channel, const float *x, double *sums,
                     cudaStream_t stream);
/* x[n][0][channel[k]] -= (sums[k] - target[k]) / atoms over nodes [0, nodes) (core/balance.c
 * balance); target null: 0 (the backward). */
void cu_balance_shift(int nodes, int C, int count, const int *channel, const double *sums,
                      const double *target, int atoms, float *x, cudaStream_t stream);

/* ---------------------------------------------------------------------------------------------
 * neighbors.cu: the neighbour-list route (core/context.c umas_compute_positions, on the GPU)
 * ------------------------------------------------------------------------------------------- */

/* core/context.c kept_graph, first half: vector[e] = x[source] + image . cell - x[target] for the
 * E list edges (image [E][3] ints or null, cell [9] rows), keep[e] = (|r| <= cutoff); the
 * smallest kept edge of length 0 goes to *zero_edge (atomicMin; preset it to E). */
void cu_neighbor_vectors(int E, const double *positions, const int *source, const int *target,
                         const int *image, const double *cell, double cutoff, double *vector,
                         int *keep, int *zero_edge, cudaStream_t stream);
/* Scratch bytes cu_select_edges needs for E list edges. */
size_t cu_select_scratch_bytes(int E);
/* Second half: the kept edges in list order (stable: exclusive scan of keep into slot [E]):
 * kept [K] list index, kept_source/kept_target [K], kept_vector [K][3]; *count = K. */
void cu_select_edges(int E, const int *keep, int *slot, void *scratch, size_t scratch_bytes,
                     const int *source, const int *target, const double *vector, int *kept,
                     int *kept_source, int *kept_target, double *kept_vector, int *count,
                     cudaStream_t stream);
/* Edges [first, first + count) of source/target/vector made inert for padding (umas_fast_gpu's
 * CUDA graphs): e % N to itself at distance `length` > cutoff, contributing exactly zero. */
void cu_pad_edges(int first, int count, int N, double length, int *source, int *target,
                  double *vector, cudaStream_t stream);
/* core/context.c scatter_edge_gradients: forces [N][3] = -dE/dx, virial [6] and, when not null,
 * node_virial [N][6] from the E edges' gradient [E][3] (all double; zeroed first; summed in
 * 64-bit fixed point of 2^-32 eV/A or eV, range +-2^31: the same bits in every run). */
void cu_scatter_edge_gradients(int N, int E, const int *source, const int *target,
                               const double *vector, const double *gradient, double *forces,
                               double *virial, double *node_virial, cudaStream_t stream);

/* ---------------------------------------------------------------------------------------------
 * precision.cu: TF32 operand splitting for the "3xtf32" precision
 * ------------------------------------------------------------------------------------------- */

/* a rounded to the nearest TF32 value (10 mantissa bits, ties to even; inf and NaN kept). */
static inline __host__ __device__ float umas_round_to_tf32(float a) {
    unsigned bits;
    memcpy(&bits, &a, sizeof bits);
    if ((bits & 0x7f800000u) != 0x7f800000u) /* finite */
        bits = (bits + 0x0fffu + ((bits >> 13) & 1u)) & ~0x1fffu;
    float h;
    memcpy(&h, &bits, sizeof h);
    return h;
}

/* hi [rows][cols] = tf32(x), lo = tf32(x - hi) (not written when lo is null), from
 * x [rows][ldx]. */
void cu_split_tf32(int rows, int cols, const float *x, int ldx, float *hi, float *lo,
                   cudaStream_t stream);

#endif
