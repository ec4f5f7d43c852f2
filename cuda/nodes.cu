/* nodes.cu - node-level layers on the GPU: rms_norm_sh forward/backward (core/so3.c), the node
 * embedding (core/backend_general.c embed_nodes), the elementwise gate of SpectralAtomwise
 * (core/so3.c) and small elementwise pieces of the energy head. Node features x[N][9][C] in
 * L-order. Each kernel names the CPU function it mirrors; see kernels.h for the contracts. */
#include "kernels.h"

#include <math.h>

/* Kernels and helpers are static: internal to this file. */

/* ---------------------------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------------------------- */

enum { ELEMENTWISE_THREADS = 256, NODE_THREADS = 256 };

#include "common.cuh"

/* Degree of L-order coefficient i (core/so3.c umas_degree_of) and the rms weight of degree l,
 * 1 / ((2 l + 1)(lmax + 1)) (core/so3.c degree_weight). */
static __device__ __forceinline__ int degree_of(int i) {
    return i == 0 ? 0 : i < 4 ? 1 : 2;
}
static __device__ __forceinline__ double degree_weight(int l) {
    return l == 0 ? 1.0 / 3.0 : l == 1 ? 1.0 / 9.0 : 1.0 / 15.0;
}

/* core/so3.c rms_statistics for node xn[9][C], by the whole block, in double: the l = 0 channel
 * mean and r = 1 / sqrt(weighted mean square of the centred features / C + 1e-5). */
__device__ static void rms_statistics(const float *xn, int C, double *mean0, double *r) {
    double s[1] = {0.0};
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        s[0] += (double)xn[c];
    block_sum<1>(s);
    const double m = s[0] / C;
    double q[1] = {0.0};
    for (int k = threadIdx.x; k < 9 * C; k += blockDim.x) {
        const int i = k / C;
        const double f = (double)xn[k] - (i == 0 ? m : 0.0);
        q[0] += degree_weight(degree_of(i)) * f * f;
    }
    block_sum<1>(q);
    *mean0 = m;
    *r = 1.0 / sqrt(q[0] / C + 1e-5);
}

/* ---------------------------------------------------------------------------------------------
 * rms_norm_sh
 * ------------------------------------------------------------------------------------------- */

/* core/so3.c umas_rms_norm_forward: y[n][i][c] = (x - centre_i) r scale[l(i)][c] (+ bias[c] at
 * i = 0); x, y [N][9][C], scale [3][C], bias [C]. One block per node. */
static __global__ void rms_norm_forward_kernel(int C, const float *__restrict__ scale,
                                               const float *__restrict__ bias,
                                               const float *__restrict__ x, float *__restrict__ y) {
    const float *xn = x + (size_t)blockIdx.x * 9 * C;
    float *yn = y + (size_t)blockIdx.x * 9 * C;
    double mean0, r;
    rms_statistics(xn, C, &mean0, &r);
    for (int k = threadIdx.x; k < 9 * C; k += blockDim.x) {
        const int i = k / C, c = k - i * C;
        const double f = (double)xn[k] - (i == 0 ? mean0 : 0.0);
        double v = f * r * (double)scale[degree_of(i) * C + c];
        if (i == 0)
            v += (double)bias[c];
        yn[k] = (float)v;
    }
}

void cu_rms_norm_forward(int N, int C, const float *scale, const float *bias, const float *x,
                         float *y, cudaStream_t stream) {
    if (N <= 0 || C <= 0)
        return;
    rms_norm_forward_kernel<<<N, NODE_THREADS, 0, stream>>>(C, scale, bias, x, y);
}

/* core/so3.c umas_rms_norm_backward: g = dy scale; S = sum g f; df = r g - r^3 (w_i / C) f S;
 * dx = df with the l = 0 row's channel mean removed. One block per node, in double. dx may alias
 * dy: every element is read and written by the same thread, and the row-0 reads of the mean pass
 * precede all writes (barrier in block_sum). */
static __global__ void rms_norm_backward_kernel(int C, const float *__restrict__ scale,
                                                const float *__restrict__ x, const float *dy,
                                                float *dx) {
    const float *xn = x + (size_t)blockIdx.x * 9 * C;
    const float *dyn = dy + (size_t)blockIdx.x * 9 * C;
    float *dxn = dx + (size_t)blockIdx.x * 9 * C;
    double mean0, r;
    rms_statistics(xn, C, &mean0, &r);

    double S[1] = {0.0};
    for (int k = threadIdx.x; k < 9 * C; k += blockDim.x) {
        const int i = k / C, c = k - i * C;
        const double f = (double)xn[k] - (i == 0 ? mean0 : 0.0);
        S[0] += (double)dyn[k] * (double)scale[degree_of(i) * C + c] * f;
    }
    block_sum<1>(S);
    const double r3S = r * r * r * S[0];

    /* row 0 (l = 0): df, then the mean over channels */
    double sum0[1] = {0.0};
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        const double f = (double)xn[c] - mean0;
        sum0[0] += r * (double)dyn[c] * (double)scale[c] - r3S * (degree_weight(0) / C) * f;
    }
    block_sum<1>(sum0);
    const double mean_d0 = sum0[0] / C;

    for (int k = threadIdx.x; k < 9 * C; k += blockDim.x) {
        const int i = k / C, c = k - i * C, l = degree_of(i);
        const double f = (double)xn[k] - (i == 0 ? mean0 : 0.0);
        double v = r * (double)dyn[k] * (double)scale[l * C + c] - r3S * (degree_weight(l) / C) * f;
        if (i == 0)
            v -= mean_d0;
        dxn[k] = (float)v;
    }
}

void cu_rms_norm_backward(int N, int C, const float *scale, const float *x, const float *dy,
                          float *dx, cudaStream_t stream) {
    if (N <= 0 || C <= 0)
        return;
    rms_norm_backward_kernel<<<N, NODE_THREADS, 0, stream>>>(C, scale, x, dy, dx);
}

/* ---------------------------------------------------------------------------------------------
 * Embedding, c_sys
 * ------------------------------------------------------------------------------------------- */

/* core/backend_general.c message_input's c_sys: x[n][0][c] += v[c], x [N][9][C]. */
static __global__ void add_to_l0_kernel(int N, int C, const float *__restrict__ v,
                                        float *__restrict__ x) {
    const size_t total = (size_t)N * C;
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < total;
         k += (size_t)gridDim.x * blockDim.x) {
        const size_t n = k / C, c = k % C;
        x[n * 9 * C + c] += v[c];
    }
}

void cu_add_to_l0(int N, int C, const float *v, float *x, cudaStream_t stream) {
    if (N <= 0 || C <= 0)
        return;
    const size_t total = (size_t)N * C;
    add_to_l0_kernel<<<grid_for(total, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS, 0, stream>>>(
        N, C, v, x);
}

/* core/backend_general.c embed_nodes: h[n][0][c] = sphere[Z_n][c] + c_sys[c], h[n][1..8] = 0;
 * h [N][9][C], sphere_embedding [Z][C], system_embedding [C]. */
static __global__ void embed_nodes_kernel(int N, int C, const int *__restrict__ atomic_numbers,
                                          const float *__restrict__ sphere_embedding,
                                          const float *__restrict__ system_embedding,
                                          float *__restrict__ h) {
    const size_t row = 9 * (size_t)C, total = (size_t)N * row;
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < total;
         k += (size_t)gridDim.x * blockDim.x) {
        const size_t n = k / row, j = k % row;
        float v = 0.0f;
        if (j < (size_t)C)
            v = sphere_embedding[(size_t)atomic_numbers[n] * C + j] + system_embedding[j];
        h[k] = v;
    }
}

void cu_embed_nodes(int N, int C, const int *atomic_numbers, const float *sphere_embedding,
                    const float *system_embedding, float *h, cudaStream_t stream) {
    if (N <= 0 || C <= 0)
        return;
    const size_t total = (size_t)N * 9 * C;
    embed_nodes_kernel<<<grid_for(total, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS, 0, stream>>>(
        N, C, atomic_numbers, sphere_embedding, system_embedding, h);
}

/* ---------------------------------------------------------------------------------------------
 * SpectralAtomwise gate
 * ------------------------------------------------------------------------------------------- */

/* core/so3.c umas_spectral_atomwise_forward, between the GEMMs: gates[n][k] =
 * sigmoid(SiLU(gates[n][k])) ([0, H) for l = 1, [H, 2H) for l = 2), q[n][0][c] = SiLU(q[n][0][c]),
 * q[n][i][c] *= gate_{l(i)}[c]. gates [N][2H], q [N][9][H], in place. One thread per (n, c). */
static __global__ void ffn_gate_forward_kernel(int N, int H, float *__restrict__ gates,
                                               float *__restrict__ q) {
    const size_t total = (size_t)N * H;
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < total;
         k += (size_t)gridDim.x * blockDim.x) {
        const size_t n = k / H, c = k % H;
        float *g = gates + n * 2 * H;
        const float g1 = sigmoidf_(siluf_(g[c])), g2 = sigmoidf_(siluf_(g[H + c]));
        g[c] = g1;
        g[H + c] = g2;
        float *qn = q + n * 9 * H + c;
        qn[0] = siluf_(qn[0]);
        for (int i = 1; i < 4; i++)
            qn[(size_t)i * H] *= g1;
        for (int i = 4; i < 9; i++)
            qn[(size_t)i * H] *= g2;
    }
}

void cu_ffn_gate_forward(int N, int H, float *gates, float *q, cudaStream_t stream) {
    if (N <= 0 || H <= 0)
        return;
    const size_t total = (size_t)N * H;
    ffn_gate_forward_kernel<<<grid_for(total, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS, 0,
                              stream>>>(N, H, gates, q);
}

/* core/so3.c umas_spectral_atomwise_backward, between the GEMMs. With p = pre[n][k],
 * s = SiLU(p): d_pre[n][(l-1)H + c] = (sum_{i of degree l} d_r[i][c] q[i][c]) sigmoid'(s) SiLU'(p);
 * dq over q: q[0][c] = d_r[0][c] SiLU'(q[0][c]), q[i][c] = d_r[i][c] sigmoid(SiLU(p_l(i))).
 * pre, d_pre [N][2H]; q, d_r [N][9][H]. One thread per (n, c). */
static __global__ void ffn_gate_backward_kernel(int N, int H, const float *__restrict__ pre,
                                                float *__restrict__ q,
                                                const float *__restrict__ d_r,
                                                float *__restrict__ d_pre) {
    const size_t total = (size_t)N * H;
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < total;
         k += (size_t)gridDim.x * blockDim.x) {
        const size_t n = k / H, c = k % H;
        float *qn = q + n * 9 * H + c;
        const float *drn = d_r + n * 9 * H + c;
        float ds1 = 0.0f, ds2 = 0.0f;
        for (int i = 1; i < 4; i++)
            ds1 += drn[(size_t)i * H] * qn[(size_t)i * H];
        for (int i = 4; i < 9; i++)
            ds2 += drn[(size_t)i * H] * qn[(size_t)i * H];
        const float p1 = pre[n * 2 * H + c], p2 = pre[n * 2 * H + H + c];
        const float s1 = siluf_(p1), s2 = siluf_(p2);
        d_pre[n * 2 * H + c] = ds1 * sigmoid_derivativef_(s1) * silu_derivativef_(p1);
        d_pre[n * 2 * H + H + c] = ds2 * sigmoid_derivativef_(s2) * silu_derivativef_(p2);
        const float g1 = sigmoidf_(s1), g2 = sigmoidf_(s2);
        qn[0] = drn[0] * silu_derivativef_(qn[0]);
        for (int i = 1; i < 4; i++)
            qn[(size_t)i * H] = drn[(size_t)i * H] * g1;
        for (int i = 4; i < 9; i++)
            qn[(size_t)i * H] = drn[(size_t)i * H] * g2;
    }
}

void cu_ffn_gate_backward(int N, int H, const float *pre, float *q, const float *d_r, float *d_pre,
                          cudaStream_t stream) {
    if (N <= 0 || H <= 0)
        return;
    const size_t total = (size_t)N * H;
    ffn_gate_backward_kernel<<<grid_for(total, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS, 0,
                               stream>>>(N, H, pre, q, d_r, d_pre);
}

/* ---------------------------------------------------------------------------------------------
 * Elementwise
 * ------------------------------------------------------------------------------------------- */

/* core/nn.c umas_silu_forward: x = SiLU(x), in place. */
static __global__ void silu_kernel(size_t n, float *__restrict__ x) {
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < n;
         k += (size_t)gridDim.x * blockDim.x)
        x[k] = siluf_(x[k]);
}

void cu_silu(size_t n, float *x, cudaStream_t stream) {
    if (n == 0)
        return;
    silu_kernel<<<grid_for(n, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS, 0, stream>>>(n, x);
}

/* y = dy SiLU'(x) (energy_head_backward's a1 *= SiLU'(z1)); y may alias dy (same element). */
static __global__ void silu_backward_kernel(size_t n, const float *__restrict__ x, const float *dy,
                                            float *y) {
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < n;
         k += (size_t)gridDim.x * blockDim.x)
        y[k] = dy[k] * silu_derivativef_(x[k]);
}

void cu_silu_backward(size_t n, const float *x, const float *dy, float *y, cudaStream_t stream) {
    if (n == 0)
        return;
    silu_backward_kernel<<<grid_for(n, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS, 0, stream>>>(
        n, x, dy, y);
}

/* core/backend_general.c energy_head_backward's seed: d[n][k] = w3[k] SiLU'(z2[n][k]) for
 * n < energy_nodes, else 0; z2, d [N][H] (d may alias z2, as on the CPU). */
static __global__ void head_seed_kernel(int N, int H, int energy_nodes,
                                        const float *__restrict__ w3, const float *z2, float *d) {
    const size_t total = (size_t)N * H;
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < total;
         k += (size_t)gridDim.x * blockDim.x) {
        const size_t n = k / H, j = k % H;
        d[k] = (n < (size_t)energy_nodes) ? w3[j] * silu_derivativef_(z2[k]) : 0.0f;
    }
}

void cu_head_seed(int N, int H, int energy_nodes, const float *w3, const float *z2, float *d,
                  cudaStream_t stream) {
    if (N <= 0 || H <= 0)
        return;
    const size_t total = (size_t)N * H;
    head_seed_kernel<<<grid_for(total, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS, 0, stream>>>(
        N, H, energy_nodes, w3, z2, d);
}

/* a += b, n elements (the residual adds of block_forward / block_backward). */
static __global__ void add_kernel(size_t n, const float *__restrict__ b, float *__restrict__ a) {
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < n;
         k += (size_t)gridDim.x * blockDim.x)
        a[k] += b[k];
}

void cu_add(size_t n, const float *b, float *a, cudaStream_t stream) {
    if (n == 0)
        return;
    add_kernel<<<grid_for(n, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS, 0, stream>>>(n, b, a);
}
