/* edgewise_consumer.cu - what follows a block's SO(2) products on the GPU, forward and backward
 * side by side: so2_combine / so2_stack (the m > 0 combine), the gate (also writing conv2's
 * operands as int8 slices for ozaki), rotate_back_scatter into the target nodes, the edge-degree
 * embedding, and the fixed-point node sums. Conventions: edgewise_common.cuh. */
#include "edgewise_common.cuh"

/* ---------------------------------------------------------------------------------------------
 * so2_combine (the combine loop of core/edgewise.c so2_m_forward)
 * out_r[e][k] = pr[e][k] - pi[e][half + k], out_i[e][k] = pr[e][half + k] + pi[e][k];
 * pr, pi [n][2 half]; out rows stride ldo.
 * ------------------------------------------------------------------------------------------- */

HD void so2_combine_one(size_t e, int k, int half, const float *product_r, const float *product_i,
                        float *out_r, float *out_i, int ldo) {
    const float *pr = product_r + e * 2 * half, *pi = product_i + e * 2 * half;
    out_r[e * ldo + k] = pr[k] - pi[half + k];
    out_i[e * ldo + k] = pr[half + k] + pi[k];
}

__global__ void so2_combine_kernel(int n, int half, const float *product_r, const float *product_i,
                                   float *out_r, float *out_i, int ldo) {
    FLAT_LOOP(i, (size_t)n * half)
    so2_combine_one(i / half, (int)(i % half), half, product_r, product_i, out_r, out_i, ldo);
}

void cu_so2_combine(int n, int half, const float *product_r, const float *product_i, float *out_r,
                    float *out_i, int ldo, cudaStream_t stream) {
    if (n <= 0 || half <= 0)
        return;
    so2_combine_kernel<<<flat_blocks((size_t)n * half), FLAT_THREADS, 0, stream>>>(
        n, half, product_r, product_i, out_r, out_i, ldo);
}

/* ---------------------------------------------------------------------------------------------
 * so2_stack (the stacking loop of core/edgewise.c so2_m_backward)
 * stack_r[e] = [do_r | do_i], stack_i[e] = [do_i | -do_r] ([n][2 half]); do rows stride ldo.
 * ------------------------------------------------------------------------------------------- */

HD void so2_stack_one(size_t e, int k, int half, const float *do_r, const float *do_i, int ldo,
                      float *stack_r, float *stack_i) {
    float r = do_r[e * ldo + k], im = do_i[e * ldo + k];
    float *sr = stack_r + e * 2 * half, *si = stack_i + e * 2 * half;
    sr[k] = r;
    sr[half + k] = im;
    si[k] = im;
    si[half + k] = -r;
}

__global__ void so2_stack_kernel(int n, int half, const float *do_r, const float *do_i, int ldo,
                                 float *stack_r, float *stack_i) {
    FLAT_LOOP(i, (size_t)n * half)
    so2_stack_one(i / half, (int)(i % half), half, do_r, do_i, ldo, stack_r, stack_i);
}

void cu_so2_stack(int n, int half, const float *do_r, const float *do_i, int ldo, float *stack_r,
                  float *stack_i, cudaStream_t stream) {
    if (n <= 0 || half <= 0)
        return;
    so2_stack_kernel<<<flat_blocks((size_t)n * half), FLAT_THREADS, 0, stream>>>(
        n, half, do_r, do_i, ldo, stack_r, stack_i);
}

/* ---------------------------------------------------------------------------------------------
 * gate_forward (core/edgewise.c gate_forward)
 * g[e][0][c] = SiLU(o[e][0][c]); g[e][p][c] = o[e][p][c] sigmoid(gates[e][(l - 1) H + c]),
 * l = degree_of_m(p). o, g [n][9][H] (g may alias o), gates [n][2H] (conv1's m = 0 outputs 0..2H).
 * One thread per (edge, channel).
 * ------------------------------------------------------------------------------------------- */

/* g[0..9) of (edge e, channel c), position p at g[p]. */
HD void gate_forward_values(size_t e, int c, int H, const float *gates, const float *o,
                            float g[9]) {
    const float *gate = gates + e * 2 * H;
    float s1 = sigmoidf_(gate[c]), s2 = sigmoidf_(gate[H + c]);
    size_t base = e * 9 * H + c;
    float o0 = o[base];
    g[0] = o0 * sigmoidf_(o0);
#pragma unroll
    for (int p = 1; p < 9; p++)
        g[p] = o[base + (size_t)p * H] * (degree_of_m(p) == 1 ? s1 : s2);
}

HD void gate_forward_one(int e, int c, int H, const float *gates, const float *o, float *g) {
    float v[9];
    gate_forward_values((size_t)e, c, H, gates, o, v);
    size_t base = (size_t)e * 9 * H + c;
#pragma unroll
    for (int p = 0; p < 9; p++)
        g[base + (size_t)p * H] = v[p];
}

__global__ void gate_forward_kernel(int n, int H, const float *gates, const float *o, float *g) {
    FLAT_LOOP(i, (size_t)n * H)
    gate_forward_one((int)(i / H), (int)(i % H), H, gates, o, g);
}

void cu_gate_forward(int n, int H, const float *gates, const float *o, float *g,
                     cudaStream_t stream) {
    if (n <= 0 || H <= 0)
        return;
    gate_forward_kernel<<<flat_blocks((size_t)n * H), FLAT_THREADS, 0, stream>>>(n, H, gates, o, g);
}

/* ---------------------------------------------------------------------------------------------
 * gate_backward (core/edgewise.c gate_backward)
 * In place dg -> dO: dO[0] = dg[0] SiLU'(o[0]), dO[p] = dg[p] sigmoid(gate_l). Gate inputs:
 * d_conv1_m0[e][(l - 1) H + c] = sigmoid'(gate_l) sum_{p of degree l} dg[p] o[p] (degree 1:
 * p = 1, 3, 5; degree 2: p = 2, 4, 6, 7, 8); d_conv1_m0[e][2H + pH + c] = dO[p], p = 0, 1, 2.
 * One thread per (edge, channel).
 * ------------------------------------------------------------------------------------------- */

/* (edge e, channel c): dO[0..9) (position p at dO[p]) from dg, and the 5 d_conv1_m0 entries
 * dce[j] (column jH + c). */
HD void gate_backward_values(size_t e, int c, int H, const float *gates, const float *o,
                             const float *dg, float dO[9], float dce[5]) {
    const float *gate = gates + e * 2 * H;
    float a1 = gate[c], a2 = gate[H + c];
    float s1 = sigmoidf_(a1), s2 = sigmoidf_(a2);
    size_t base = e * 9 * H + c;
    float sum1 = 0.0f, sum2 = 0.0f;
#pragma unroll
    for (int p = 1; p < 9; p++) {
        size_t k = base + (size_t)p * H;
        float d = dg[k];
        if (degree_of_m(p) == 1) {
            sum1 += d * o[k];
            dO[p] = d * s1;
        } else {
            sum2 += d * o[k];
            dO[p] = d * s2;
        }
    }
    dce[0] = sum1 * (s1 * (1.0f - s1));
    dce[1] = sum2 * (s2 * (1.0f - s2));
    dO[0] = dg[base] * silu_derivativef_(o[base]);
    dce[2] = dO[0];
    dce[3] = dO[1];
    dce[4] = dO[2];
}

HD void gate_backward_one(int e, int c, int H, const float *gates, const float *o, float *dg,
                          float *d_conv1_m0) {
    float dO[9], dce[5];
    gate_backward_values((size_t)e, c, H, gates, o, dg, dO, dce);
    size_t base = (size_t)e * 9 * H + c;
#pragma unroll
    for (int p = 0; p < 9; p++)
        dg[base + (size_t)p * H] = dO[p];
#pragma unroll
    for (int j = 0; j < 5; j++)
        d_conv1_m0[(size_t)e * 5 * H + (size_t)j * H + c] = dce[j];
}

__global__ void gate_backward_kernel(int n, int H, const float *gates, const float *o, float *dg,
                                     float *d_conv1_m0) {
    FLAT_LOOP(i, (size_t)n * H)
    gate_backward_one((int)(i / H), (int)(i % H), H, gates, o, dg, d_conv1_m0);
}

void cu_gate_backward(int n, int H, const float *gates, const float *o, float *dg,
                      float *d_conv1_m0, cudaStream_t stream) {
    if (n <= 0 || H <= 0)
        return;
    gate_backward_kernel<<<flat_blocks((size_t)n * H), FLAT_THREADS, 0, stream>>>(n, H, gates, o,
                                                                                  dg, d_conv1_m0);
}

/* cu_gate_forward_sliced / cu_gate_backward_sliced (kernels.h): the same values, sliced. */
__global__ void gate_forward_sliced_kernel(int n, int H, const float *__restrict__ gates,
                                           const float *__restrict__ o, sliced_parts<3> out) {
    const int c = threadIdx.x, edges = blockDim.y;
    for (long long e0 = (long long)blockIdx.x * edges; e0 < n; e0 += (long long)gridDim.x * edges) {
        const size_t e = (size_t)(e0 + threadIdx.y);
        const bool active = e < (size_t)n && c < H;
        float g[9];
        int part[9], col[9];
#pragma unroll
        for (int p = 0; p < 9; p++) {
            g[p] = 0.0f;
            part[p] = gate_part(p);
            col[p] = (p - gate_part_start(part[p])) * H + c;
        }
        if (active)
            gate_forward_values(e, c, H, gates, o, g);
        store_channel_sliced(active, e, g, part, col, out);
        __syncthreads();
    }
}

/* Values: dce[0..5) (part 0, the m = 0 adjoint [5H]), then dO[3..9) (parts 1 and 2). */
__global__ void gate_backward_sliced_kernel(int n, int H, const float *__restrict__ gates,
                                            const float *__restrict__ o,
                                            const float *__restrict__ dg, sliced_parts<3> out) {
    const int c = threadIdx.x, edges = blockDim.y;
    for (long long e0 = (long long)blockIdx.x * edges; e0 < n; e0 += (long long)gridDim.x * edges) {
        const size_t e = (size_t)(e0 + threadIdx.y);
        const bool active = e < (size_t)n && c < H;
        float dO[9] = {}, dce[5] = {}, v[11];
        int part[11], col[11];
        if (active)
            gate_backward_values(e, c, H, gates, o, dg, dO, dce);
#pragma unroll
        for (int i = 0; i < 11; i++) {
            const int p = i - 2; /* i >= 5: position p = i - 2 in 3 .. 8 */
            v[i] = i < 5 ? dce[i] : dO[p];
            part[i] = i < 5 ? 0 : gate_part(p);
            col[i] = (i < 5 ? i : p - gate_part_start(part[i])) * H + c;
        }
        store_channel_sliced(active, e, v, part, col, out);
        __syncthreads();
    }
}

int cu_gate_forward_sliced(int n, int H, const float *gates, const float *o, const i8_sliced out[3],
                           cudaStream_t stream) {
    if (H > FLAT_THREADS)
        return 0;
    if (n <= 0 || H <= 0)
        return 1;
    const channel_launch launch = channel_launch_for(n, H);
    const sliced_parts<3> parts = {{out[0], out[1], out[2]}};
    gate_forward_sliced_kernel<<<launch.blocks, launch.threads, 0, stream>>>(n, H, gates, o, parts);
    return 1;
}

int cu_gate_backward_sliced(int n, int H, const float *gates, const float *o, const float *dg,
                            const i8_sliced out[3], cudaStream_t stream) {
    if (H > FLAT_THREADS)
        return 0;
    if (n <= 0 || H <= 0)
        return 1;
    const channel_launch launch = channel_launch_for(n, H);
    const sliced_parts<3> parts = {{out[0], out[1], out[2]}};
    gate_backward_sliced_kernel<<<launch.blocks, launch.threads, 0, stream>>>(n, H, gates, o, dg,
                                                                              parts);
    return 1;
}

/* ---------------------------------------------------------------------------------------------
 * rotate_back_scatter (core/edgewise.c rotate_back_scatter)
 * x_out[target[e]][j][c] += env[e] sum_i D[i][j] z^L[i][c] (fixed point); z [n][9][C] M-order,
 * x_out [N][9][C]. Thread (x, y) walks a span of RUN_EDGES edges for channels x, x + blockDim.x,
 * ..., summing each run of equal targets before its atomics (target_run).
 * ------------------------------------------------------------------------------------------- */

/* Channel c of edge e's message, rotated back and enveloped: out[j] = env sum_i D[i][j] z^L[i]. */
HD void rotate_back_one(int e, int c, const cu_wigner *wigner, const float *envelope, int C,
                        const float *z, float out[9]) {
    float W[34], zl[9], back[9];
    load_wigner(&wigner[e], W);
    const float *ze = z + (size_t)e * 9 * C;
#pragma unroll
    for (int p = 0; p < 9; p++) /* M -> L */
        zl[m_to_l(p)] = ze[(size_t)p * C + c];
    rotate_transpose(W, zl, back);
    float env = envelope[e];
#pragma unroll
    for (int j = 0; j < 9; j++)
        out[j] = env * back[j];
}

/* The scatter of per-(edge, channel) terms into the target rows shared by rotate_back_scatter and
 * edge_degree_forward: x_out[target[e]][j][c] += term(e, c)[j] over spans with target runs.
 * TERM(e, c, wigner, envelope, C, in, out[9]) computes the 9 coefficients from the edge
 * features `in`. */
typedef void (*target_term)(int, int, const cu_wigner *, const float *, int, const float *,
                            float *);

template <target_term TERM>
__global__ void scatter_to_targets_kernel(int n, const int *target, const cu_wigner *wigner,
                                          const float *envelope, int C, const float *in,
                                          unsigned long long *x_out) {
    SPAN_LOOP(e0, n) {
        int end = n - e0 < RUN_EDGES ? n : (int)e0 + RUN_EDGES;
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            target_run run;
            for (int e = (int)e0; e < end; e++) {
                float out[9];
                TERM(e, c, wigner, envelope, C, in, out);
                run.add((size_t)target[e] * 9 * C, out, C, c, x_out);
            }
            run.flush(C, c, x_out);
        }
    }
}

void cu_rotate_back_scatter(int n, const int *target, const cu_wigner *wigner,
                            const float *envelope, int C, const float *z, unsigned long long *x_out,
                            cudaStream_t stream) {
    if (n <= 0 || C <= 0)
        return;
    span_launch launch(n, C);
    scatter_to_targets_kernel<rotate_back_one>
        <<<launch.blocks, launch.threads, 0, stream>>>(n, target, wigner, envelope, C, z, x_out);
}

/* ---------------------------------------------------------------------------------------------
 * rotate_back_backward (core/edgewise.c rotate_back_backward)
 * a = d_out[target[e]] [9][C], z [n][9][C] M-order:
 *   dz[e][p][c] = env (D a)[m_to_l(p)][c]                    (overwrite)
 *   d_wigner[e][i][j] += env sum_c z^L[i][c] a[j][c]
 *   d_envelope[e]     += sum_c sum_i z^L[i][c] (D a)[i][c]
 * One warp per edge, lanes over the channels.
 * ------------------------------------------------------------------------------------------- */

/* Channel c of edge e's adjoint dz[p] = env (D a)[m_to_l(p)] (M-order position p at v[p]) from
 * a = d_out[target[e]] (column c, into a), and D a (into da). */
HD void rotate_back_adjoint(int e, int c, const float W[34], const int *target,
                            const float *envelope, int C, const float *d_out, float a[9],
                            float da[9], float v[9]) {
    load_column(d_out + (size_t)target[e] * 9 * C, C, c, a);
    rotate(W, a, da);
    float env = envelope[e];
#pragma unroll
    for (int p = 0; p < 9; p++)
        v[p] = env * da[m_to_l(p)];
}

/* Channel c of edge e: writes dz (or, when dz is null, takes the largest magnitudes of its
 * three operand parts into top, gate_part), adds <z^L[i], a[j]> into acc[0..34), <z^L, D a>
 * into acc[34]. */
HD void rotate_back_backward_one(int e, int c, const int *target, const cu_wigner *wigner,
                                 const float *envelope, int C, const float *z, const float *d_out,
                                 float *dz, float acc[35], float top[3] = nullptr) {
    float W[34], a[9], da[9], zl[9], v[9];
    load_wigner(&wigner[e], W);
    rotate_back_adjoint(e, c, W, target, envelope, C, d_out, a, da, v);
    const float *ze = z + (size_t)e * 9 * C;
    float *dze = dz ? dz + (size_t)e * 9 * C : nullptr;
    float z_dot_da = 0.0f;
#pragma unroll
    for (int p = 0; p < 9; p++) {
        int i = m_to_l(p);
        zl[i] = ze[(size_t)p * C + c];
        if (dze)
            dze[(size_t)p * C + c] = v[p];
        else
            top[gate_part(p)] = fmaxf(top[gate_part(p)], finite_magnitude(v[p]));
        z_dot_da += zl[i] * da[i];
    }
    outer_accumulate(zl, a, acc);
    acc[34] += z_dot_da;
}

/* Entry k < 35 of the edge's sums over the channels (as acc) into d_wigner[e] / d_envelope[e]. */
HD void rotate_back_backward_finish(int e, int k, const float *envelope, float total,
                                    cu_wigner *d_wigner, float *d_envelope) {
    if (k < 34)
        ((float *)&d_wigner[e])[k] += envelope[e] * total;
    else
        d_envelope[e] += total;
}

/* One warp per edge, lanes over the channels (c = lane, lane + 32, ...): each lane sums its
 * channels' terms in registers, one warp_sum_scatter gives the edge's 35 sums. */
__global__ void rotate_back_backward_kernel(int n, const int *target, const cu_wigner *wigner,
                                            const float *envelope, int C, const float *z,
                                            const float *d_out, float *dz, cu_wigner *d_wigner,
                                            float *d_envelope) {
    const int lane = threadIdx.x % 32;
    WARP_EDGE_LOOP(e, n) {
        float acc[35];
#pragma unroll
        for (int k = 0; k < 35; k++)
            acc[k] = 0.0f;
        for (int c = lane; c < C; c += 32)
            rotate_back_backward_one((int)e, c, target, wigner, envelope, C, z, d_out, dz, acc);
        warp_sum_scatter<35>(acc, lane);
        rotate_back_backward_finish((int)e, lane, envelope, acc[0], d_wigner, d_envelope);
        if (lane < 3)
            rotate_back_backward_finish((int)e, 32 + lane, envelope, tail_sum(acc, lane), d_wigner,
                                        d_envelope);
    }
}

void cu_rotate_back_backward(int n, const int *target, const cu_wigner *wigner,
                             const float *envelope, int C, const float *z, const float *d_out,
                             float *dz, cu_wigner *d_wigner, float *d_envelope,
                             cudaStream_t stream) {
    if (n <= 0 || C <= 0)
        return;
    rotate_back_backward_kernel<<<warp_edge_blocks(n), 32 * EDGE_WARPS, 0, stream>>>(
        n, target, wigner, envelope, C, z, d_out, dz, d_wigner, d_envelope);
}

/* cu_rotate_back_backward_sliced: as rotate_back_backward_kernel, the first pass over the
 * channels taking each operand part's largest |dz| instead of writing dz; a second pass
 * recomputes dz (the same arithmetic; d_out's target rows are in cache) and writes its digits. */
__global__ void rotate_back_backward_sliced_kernel(int n, const int *target,
                                                   const cu_wigner *wigner, const float *envelope,
                                                   int C, const float *z, const float *d_out,
                                                   cu_wigner *d_wigner, float *d_envelope,
                                                   sliced_parts<3> out) {
    const int lane = threadIdx.x % 32;
    WARP_EDGE_LOOP(e, n) {
        float acc[35], top[3] = {0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int k = 0; k < 35; k++)
            acc[k] = 0.0f;
        for (int c = lane; c < C; c += 32)
            rotate_back_backward_one((int)e, c, target, wigner, envelope, C, z, d_out, nullptr, acc,
                                     top);
        warp_sum_scatter<35>(acc, lane);
        rotate_back_backward_finish((int)e, lane, envelope, acc[0], d_wigner, d_envelope);
        if (lane < 3)
            rotate_back_backward_finish((int)e, 32 + lane, envelope, tail_sum(acc, lane), d_wigner,
                                        d_envelope);
        RowSlicing slicing[3];
#pragma unroll
        for (int part = 0; part < 3; part++) {
            slicing[part] = row_slicing(warp_max(top[part]));
            if (lane == 0)
                out.part[part].exponents[e] = slicing[part].exponent;
        }
        float W[34];
        load_wigner(&wigner[e], W);
        for (int c = lane; c < C; c += 32) {
            float a[9], da[9], v[9];
            rotate_back_adjoint((int)e, c, W, target, envelope, C, d_out, a, da, v);
#pragma unroll
            for (int p = 0; p < 9; p++) {
                const int part = gate_part(p);
                const i8_sliced &o = out.part[part];
                store_digits(o.slices + (size_t)e * o.ld + (size_t)(p - gate_part_start(part)) * C +
                                 c,
                             o.plane, v[p], slicing[part].scale);
            }
        }
    }
}

void cu_rotate_back_backward_sliced(int n, const int *target, const cu_wigner *wigner,
                                    const float *envelope, int C, const float *z,
                                    const float *d_out, cu_wigner *d_wigner, float *d_envelope,
                                    const i8_sliced out[3], cudaStream_t stream) {
    if (n <= 0 || C <= 0)
        return;
    const sliced_parts<3> parts = {{out[0], out[1], out[2]}};
    rotate_back_backward_sliced_kernel<<<warp_edge_blocks(n), 32 * EDGE_WARPS, 0, stream>>>(
        n, target, wigner, envelope, C, z, d_out, d_wigner, d_envelope, parts);
}

/* ---------------------------------------------------------------------------------------------
 * edge_degree_forward (core/edgewise.c umas_edge_degree_forward)
 * x_out[target[e]] += (env / 5) rho[l] (x) (m = 0 row of D^l), rho = radial [n][3C]:
 * row 0 += a rho0, rows 1 + j += a D^1[1][j] rho1, rows 4 + j += a D^2[2][j] rho2 (fixed
 * point). Spans of edges with target runs, as rotate_back_scatter.
 * ------------------------------------------------------------------------------------------- */

/* Channel c of edge e's embedding term, the 9 coefficients of its target row. */
HD void edge_degree_one(int e, int c, const cu_wigner *wigner, const float *envelope, int C,
                        const float *radial, float out[9]) {
    const float *W = (const float *)&wigner[e];
    const float *rho = radial + (size_t)e * 3 * C;
    float a = envelope[e] / 5.0f; /* fairchem's rescale factor 5 */
    float r0 = rho[c], r1 = rho[C + c], r2 = rho[2 * C + c];
    out[0] = a * r0;
#pragma unroll
    for (int j = 0; j < 3; j++)
        out[1 + j] = a * W[W_L1_M0 + j] * r1;
#pragma unroll
    for (int j = 0; j < 5; j++)
        out[4 + j] = a * W[W_L2_M0 + j] * r2;
}

void cu_edge_degree_forward(int n, const int *target, const cu_wigner *wigner,
                            const float *envelope, int C, const float *radial,
                            unsigned long long *x_out, cudaStream_t stream) {
    if (n <= 0 || C <= 0)
        return;
    span_launch launch(n, C);
    scatter_to_targets_kernel<edge_degree_one><<<launch.blocks, launch.threads, 0, stream>>>(
        n, target, wigner, envelope, C, radial, x_out);
}

/* ---------------------------------------------------------------------------------------------
 * edge_degree_backward (core/edgewise.c umas_edge_degree_backward)
 * a = d_out[target[e]], scale = env / 5:
 *   d_radial[e][0][c] = scale a[0][c], [1][c] = scale sum_j D^1[1][j] a[1 + j][c],
 *   [2][c] = scale sum_j D^2[2][j] a[4 + j][c]                                   (overwrite)
 *   d_wigner[e].l1[1][j] += scale <rho1, a[1 + j]>, .l2[2][j] += scale <rho2, a[4 + j]>
 *   d_envelope[e] += (<rho0, a0> + sum_j D^1[1][j] <rho1, a[1+j]> + sum_j D^2[2][j] <rho2, a[4+j]>)
 * / 5. One warp per edge, lanes over the channels.
 * ------------------------------------------------------------------------------------------- */

/* Channel c of edge e: writes d_radial, adds the 9 dot-product terms into acc:
 * acc[0] = rho0 a0, acc[1 + j] = rho1 a[1 + j], acc[4 + j] = rho2 a[4 + j]. */
HD void edge_degree_backward_one(int e, int c, const int *target, const cu_wigner *wigner,
                                 const float *envelope, int C, const float *radial,
                                 const float *d_out, float *d_radial, float acc[9]) {
    const float *W = (const float *)&wigner[e];
    const float *rho = radial + (size_t)e * 3 * C;
    float *d_rho = d_radial + (size_t)e * 3 * C;
    float scale = envelope[e] / 5.0f;
    float a[9];
    load_column(d_out + (size_t)target[e] * 9 * C, C, c, a);
    float r0 = rho[c], r1 = rho[C + c], r2 = rho[2 * C + c];
    float y1 = 0.0f, y2 = 0.0f;
#pragma unroll
    for (int j = 0; j < 3; j++)
        y1 += W[W_L1_M0 + j] * a[1 + j];
#pragma unroll
    for (int j = 0; j < 5; j++)
        y2 += W[W_L2_M0 + j] * a[4 + j];
    d_rho[c] = scale * a[0];
    d_rho[C + c] = scale * y1;
    d_rho[2 * C + c] = scale * y2;
    acc[0] += r0 * a[0];
#pragma unroll
    for (int j = 0; j < 3; j++)
        acc[1 + j] += r1 * a[1 + j];
#pragma unroll
    for (int j = 0; j < 5; j++)
        acc[4 + j] += r2 * a[4 + j];
}

/* The edge's sums over the channels, total[9] (as acc), into d_wigner[e] and d_envelope[e]. */
HD void edge_degree_backward_finish(int e, const cu_wigner *wigner, const float *envelope,
                                    const float total[9], cu_wigner *d_wigner, float *d_envelope) {
    const float *W = (const float *)&wigner[e];
    float *dW = (float *)&d_wigner[e];
    float scale = envelope[e] / 5.0f, rho_dot = total[0];
    for (int j = 0; j < 3; j++) {
        dW[W_L1_M0 + j] += scale * total[1 + j];
        rho_dot += W[W_L1_M0 + j] * total[1 + j];
    }
    for (int j = 0; j < 5; j++) {
        dW[W_L2_M0 + j] += scale * total[4 + j];
        rho_dot += W[W_L2_M0 + j] * total[4 + j];
    }
    d_envelope[e] += rho_dot / 5.0f;
}

__global__ void edge_degree_backward_kernel(int n, const int *target, const cu_wigner *wigner,
                                            const float *envelope, int C, const float *radial,
                                            const float *d_out, float *d_radial,
                                            cu_wigner *d_wigner, float *d_envelope) {
    WARP_EDGE_LOOP(e, n) {
        float acc[9];
#pragma unroll
        for (int k = 0; k < 9; k++)
            acc[k] = 0.0f;
        for (int c = threadIdx.x % 32; c < C; c += 32)
            edge_degree_backward_one((int)e, c, target, wigner, envelope, C, radial, d_out,
                                     d_radial, acc);
        warp_sum<9>(acc);
        if (threadIdx.x % 32 == 0)
            edge_degree_backward_finish((int)e, wigner, envelope, acc, d_wigner, d_envelope);
    }
}

void cu_edge_degree_backward(int n, const int *target, const cu_wigner *wigner,
                             const float *envelope, int C, const float *radial, const float *d_out,
                             float *d_radial, cu_wigner *d_wigner, float *d_envelope,
                             cudaStream_t stream) {
    if (n <= 0 || C <= 0)
        return;
    edge_degree_backward_kernel<<<warp_edge_blocks(n), 32 * EDGE_WARPS, 0, stream>>>(
        n, target, wigner, envelope, C, radial, d_out, d_radial, d_wigner, d_envelope);
}

/* ---------------------------------------------------------------------------------------------
 * fixed_add: x[i] += fixed[i] 2^-32, then fixed[i] = 0 (ready for the next sums).
 * ------------------------------------------------------------------------------------------- */

__global__ void fixed_add_kernel(size_t n, unsigned long long *fixed, float *x) {
    FLAT_LOOP(i, n) {
        x[i] += (float)((double)(long long)fixed[i] * CU_FIXED_UNIT);
        fixed[i] = 0;
    }
}

void cu_fixed_add(size_t n, unsigned long long *fixed, float *x, cudaStream_t stream) {
    if (n == 0)
        return;
    fixed_add_kernel<<<flat_blocks(n), FLAT_THREADS, 0, stream>>>(n, fixed, x);
}
