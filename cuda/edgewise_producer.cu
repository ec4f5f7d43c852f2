/* edgewise_producer.cu - the producers of a block's SO(2) products on the GPU, forward and
 * backward side by side: gather_rotate (edge rows rotated into the edge frame, conv1's radial
 * scaling fused in; also written as int8 slices for ozaki), its backward and umas_fast_gpu's
 * one-pass producer backward, scale_by_radial's backward. Conventions: edgewise_common.cuh. */
#include "edgewise_common.cuh"

/* ---------------------------------------------------------------------------------------------
 * gather_rotate (core/edgewise.c gather_rotate) with conv1's radial scaling fused in
 * u[e][p][0:C] = (D x[source[e]])[m_to_l(p)], u[e][p][C:2C] likewise for target[e];
 * y = u * radial at radial_row (scale_by_radial) unless y is null, and u itself into
 * `unscaled` when it is not null (the backward needs it). x [N][9][C], y and unscaled [n][9][2C],
 * radial [n][12C]. A block takes blockDim.y edges at a time (a grid-stride loop over such
 * groups), threads x over the channels: the group's Wigner records, sources and targets are read
 * once into shared memory, then thread (x, y) does edge e0 + y, channels x, x + blockDim.x, ...
 * ------------------------------------------------------------------------------------------- */

/* Channel c of edge e rotated, unscaled: u[q] for the 18 positions q = 2p (source), 2p + 1
 * (target) of the edge's [9][2C] row (position q: column q C + c). W is the edge's Wigner
 * record (in shared memory), xs_row and xt_row the [9][C] rows x[source[e]] and x[target[e]]. */
HD void rotated_channel(int c, const float W[34], const float *xs_row, const float *xt_row, int C,
                        float u[18]) {
    float xs[9], xt[9], ys[9], yt[9];
    load_column(xs_row, C, c, xs);
    load_column(xt_row, C, c, xt);
    rotate(W, xs, ys);
    rotate(W, xt, yt);
#pragma unroll
    for (int p = 0; p < 9; p++) {
        u[2 * p] = ys[m_to_l(p)];
        u[2 * p + 1] = yt[m_to_l(p)];
    }
}

/* u[q] *= radial weight of position q (channel c of edge e; radial [n][12C]). */
HD void scale_channel(size_t e, int c, int C, const float *radial, float u[18]) {
    const float *re = radial + e * 12 * C;
#pragma unroll
    for (int q = 0; q < 18; q++)
        u[q] *= re[(size_t)radial_row(q) * C + c];
}

/* Channel c of edge e into y (scaled, unless y is null) and unscaled (unless null). */
HD void gather_rotate_one(size_t e, int c, const float W[34], const float *xs_row,
                          const float *xt_row, int C, const float *radial, float *unscaled,
                          float *y) {
    float u[18];
    rotated_channel(c, W, xs_row, xt_row, C, u);
    const size_t row = e * 18 * C;
    if (unscaled)
#pragma unroll
        for (int q = 0; q < 18; q++)
            unscaled[row + (size_t)q * C + c] = u[q];
    if (y) {
        scale_channel(e, c, C, radial, u);
#pragma unroll
        for (int q = 0; q < 18; q++)
            y[row + (size_t)q * C + c] = u[q];
    }
}

/* The Wigner records (contiguous as in wigner) and the ends (source, target) of the group's m
 * edges from e0 into shared memory, by all threads of the block. */
__device__ __forceinline__ void load_edge_group(long long e0, int m, const int *source,
                                                const int *target, const cu_wigner *wigner,
                                                float (*W)[34], int (*ends)[2]) {
    const int threads = blockDim.x * blockDim.y, tid = threadIdx.y * blockDim.x + threadIdx.x;
    const float *wf = (const float *)(wigner + e0);
    for (int k = tid; k < m * 34; k += threads)
        (&W[0][0])[k] = wf[k];
    if (tid < m) {
        ends[tid][0] = source[e0 + tid];
        ends[tid][1] = target[e0 + tid];
    }
}

__global__ void gather_rotate_kernel(int n, const int *__restrict__ source,
                                     const int *__restrict__ target,
                                     const cu_wigner *__restrict__ wigner, int C,
                                     const float *__restrict__ x, const float *__restrict__ radial,
                                     float *__restrict__ unscaled, float *__restrict__ y) {
    __shared__ float W[GATHER_EDGES_MAX][34]; /* the group's records, contiguous as in wigner */
    __shared__ int ends[GATHER_EDGES_MAX][2]; /* source, target */
    const int edges = blockDim.y;
    for (long long e0 = (long long)blockIdx.x * edges; e0 < n; e0 += (long long)gridDim.x * edges) {
        int m = n - e0 < edges ? (int)(n - e0) : edges; /* edges in this group */
        load_edge_group(e0, m, source, target, wigner, W, ends);
        __syncthreads();
        int j = threadIdx.y;
        if (j < m) {
            const float *xs_row = x + (size_t)ends[j][0] * 9 * C;
            const float *xt_row = x + (size_t)ends[j][1] * 9 * C;
            for (int c = threadIdx.x; c < C; c += blockDim.x)
                gather_rotate_one((size_t)(e0 + j), c, W[j], xs_row, xt_row, C, radial, unscaled,
                                  y);
        }
        __syncthreads(); /* before the next group overwrites W and ends */
    }
}

void cu_gather_rotate(int n, const int *source, const int *target, const cu_wigner *wigner, int C,
                      const float *x, const float *radial, float *unscaled, float *y,
                      cudaStream_t stream) {
    if (n <= 0 || C <= 0)
        return;
    /* threads x: C rounded up to warps, at most FLAT_THREADS; edges per block: the rest */
    int tx = (C + 31) / 32 * 32;
    tx = tx > FLAT_THREADS ? FLAT_THREADS : tx;
    int ty = FLAT_THREADS / tx; /* <= GATHER_EDGES_MAX */
    size_t groups = ((size_t)n + ty - 1) / ty;
    unsigned blocks = (unsigned)(groups < (size_t)1 << 30 ? groups : (size_t)1 << 30);
    gather_rotate_kernel<<<blocks, dim3(tx, ty), 0, stream>>>(n, source, target, wigner, C, x,
                                                              radial, unscaled, y);
}

/* cu_gather_rotate_sliced: gather_rotate_kernel's y, sliced. */
__global__ void gather_rotate_sliced_kernel(int n, const int *__restrict__ source,
                                            const int *__restrict__ target,
                                            const cu_wigner *__restrict__ wigner, int C,
                                            const float *__restrict__ x,
                                            const float *__restrict__ radial, sliced_parts<3> out) {
    __shared__ float W[GATHER_EDGES_MAX][34];
    __shared__ int ends[GATHER_EDGES_MAX][2];
    const int edges = blockDim.y;
    const int c = threadIdx.x, j = threadIdx.y;
    for (long long e0 = (long long)blockIdx.x * edges; e0 < n; e0 += (long long)gridDim.x * edges) {
        const int m = n - e0 < edges ? (int)(n - e0) : edges;
        load_edge_group(e0, m, source, target, wigner, W, ends);
        __syncthreads();
        const size_t e = (size_t)(e0 + j);
        const bool active = j < m && c < C;
        float u[18];
        int part[18], col[18];
#pragma unroll
        for (int q = 0; q < 18; q++) {
            u[q] = 0.0f;
            part[q] = conv1_part(q);
            col[q] = (q - conv1_part_start(part[q])) * C + c;
        }
        if (active) {
            rotated_channel(c, W[j], x + (size_t)ends[j][0] * 9 * C, x + (size_t)ends[j][1] * 9 * C,
                            C, u);
            scale_channel(e, c, C, radial, u);
        }
        store_channel_sliced(active, e, u, part, col, out);
        __syncthreads(); /* before the next group overwrites W, ends and the maxima */
    }
}

int cu_gather_rotate_sliced(int n, const int *source, const int *target, const cu_wigner *wigner,
                            int C, const float *x, const float *radial, const i8_sliced out[3],
                            cudaStream_t stream) {
    if (C > FLAT_THREADS)
        return 0;
    if (n <= 0 || C <= 0)
        return 1;
    const channel_launch launch = channel_launch_for(n, C);
    const sliced_parts<3> parts = {{out[0], out[1], out[2]}};
    gather_rotate_sliced_kernel<<<launch.blocks, launch.threads, 0, stream>>>(
        n, source, target, wigner, C, x, radial, parts);
    return 1;
}

/* ---------------------------------------------------------------------------------------------
 * gather_rotate_backward (core/edgewise.c gather_rotate_backward) and umas_fast_gpu's one-pass
 * producer backward, one kernel:
 *   dy [n][9][2C] M-order, the adjoint of the gathered rows (gather_rotate_backward) or of the
 *   radially scaled ones (producer backward: u = D x and the scaled adjoint dy * radial then live
 *   in registers only, re-gathered and rotated per (edge, channel); d_radial [n][12C] is
 *   written, the uses of a slot summed in the same order as scale_by_radial_backward);
 *   d_x[source] += D^T dy^L[:, 0:C], d_x[target] += D^T dy^L[:, C:2C] (fixed point);
 *   d_wigner[e][i][j] += sum_c dy^L[i][c] x_s[j][c] + dy^L[i][C + c] x_t[j][c].
 * A block walks PRODUCER_EDGES consecutive edges, threads over the channels; per edge a block
 * sum gives d_wigner. With one channel per thread the target rows are summed in a target_run;
 * the sources (in no order) take their atomics per edge. Both variants do the same products
 * and sums in the same order, so the one-pass backward equals the three kernels bit for bit.
 * ------------------------------------------------------------------------------------------- */

#define PRODUCER_EDGES 8

/* The adjoint of one gathered channel, given the L-order adjoints dys, dyt of the rotated
 * source and target columns xs, xt: ds = D^T dys, dt = D^T dyt (into the node rows),
 * acc (the 34 Wigner entries) += dys xs^T + dyt xt^T. */
HD void gather_adjoint(const float W[34], const float dys[9], const float dyt[9], const float xs[9],
                       const float xt[9], float ds[9], float dt[9], float acc[34]) {
    rotate_transpose(W, dys, ds);
    rotate_transpose(W, dyt, dt);
    outer_accumulate(dys, xs, acc);
    outer_accumulate(dyt, xt, acc);
}

/* Channel c of edge e: the L-order adjoints dys, dyt of its gathered source and target columns.
 * Without radial (gather_rotate_backward) they are dy as it is; with it (the producer backward)
 * dy * radial, and d_radial[e] (channel c) is written from dy and u = D x. */
HD void gathered_adjoint(int e, int c, const float W[34], const float xs[9], const float xt[9],
                         int C, const float *radial, const float *dy, float *d_radial, float dys[9],
                         float dyt[9], float dr[12]) {
    const float *dye = dy + (size_t)e * 18 * C;
    if (!radial) {
#pragma unroll
        for (int p = 0; p < 9; p++) { /* M -> L */
            dys[m_to_l(p)] = dye[(size_t)p * 2 * C + c];
            dyt[m_to_l(p)] = dye[(size_t)p * 2 * C + C + c];
        }
        return;
    }
    float us[9], ut[9];
    rotate(W, xs, us);
    rotate(W, xt, ut);
    const float *re = radial + (size_t)e * 12 * C;
#pragma unroll
    for (int j = 0; j < 12; j++)
        dr[j] = 0.0f;
#pragma unroll
    for (int p = 0; p < 9; p++) { /* M -> L, positions q = 2p (source) and 2p + 1 (target) */
        int i = m_to_l(p);
        float gs = dye[(size_t)(2 * p) * C + c], gt = dye[(size_t)(2 * p + 1) * C + c];
        dr[radial_row(2 * p)] += gs * us[i];
        dr[radial_row(2 * p + 1)] += gt * ut[i];
        dys[i] = gs * re[(size_t)radial_row(2 * p) * C + c];
        dyt[i] = gt * re[(size_t)radial_row(2 * p + 1) * C + c];
    }
    if (!d_radial)
        return;
    float *dre = d_radial + (size_t)e * 12 * C;
#pragma unroll
    for (int j = 0; j < 12; j++)
        dre[(size_t)j * C + c] = dr[j];
}

/* The edge's d_radial row (this thread's channel c = threadIdx.x < C: dr[j] at column j C + c)
 * as slices, its exponent from the warps' largest magnitudes (visible to all threads). */
__device__ void store_radial_adjoint_sliced(int e, int C, const float (&dr)[12],
                                            const float *warp_top, const i8_sliced &o) {
    float t = 0.0f;
    for (int w = 0; w < (int)blockDim.x / 32; w++)
        t = fmaxf(t, warp_top[w]);
    const RowSlicing slicing = row_slicing(t);
    const int c = threadIdx.x;
    if (c == 0)
        o.exponents[e] = slicing.exponent;
    if (c >= C)
        return;
    int8_t *row = o.slices + (size_t)e * o.ld + c;
#pragma unroll
    for (int j = 0; j < 12; j++)
        store_digits(row + (size_t)j * C, o.plane, dr[j], slicing.scale);
}

/* radial null: gather_rotate_backward; else the producer backward (d_radial written, or with
 * SLICED its slices into out: one channel per thread, each thread's 12 d_radial values stay in
 * registers while the block finds the edge's largest; the warps' maxima go through shared
 * memory, by edge parity, beside block_sum's, whose barriers they share). */
template <bool SLICED>
__global__ void
gather_backward_kernel(int n, const int *source, const int *target, const cu_wigner *wigner, int C,
                       const float *x, const float *radial, const float *dy, float *d_radial,
                       unsigned long long *d_x, cu_wigner *d_wigner, sliced_parts<1> out) {
    __shared__ float total[34];
    __shared__ float warp_top[2][EDGE_THREADS_MAX / 32]; /* SLICED: by edge parity */
    const bool one_channel = C <= (int)blockDim.x;       /* then the target rows go through a run */
    target_run run;
    for (long long e0 = (long long)blockIdx.x * PRODUCER_EDGES; e0 < n;
         e0 += (long long)gridDim.x * PRODUCER_EDGES) {
        int end = n - e0 < PRODUCER_EDGES ? n : (int)e0 + PRODUCER_EDGES;
        for (int e = (int)e0; e < end; e++) {
            float acc[34];
#pragma unroll
            for (int k = 0; k < 34; k++)
                acc[k] = 0.0f;
            size_t s = (size_t)source[e] * 9 * C, t = (size_t)target[e] * 9 * C;
            float dr[12] = {}; /* SLICED: this thread's channel's d_radial */
            for (int c = threadIdx.x; c < C; c += blockDim.x) {
                float W[34], xs[9], xt[9], dys[9], dyt[9], ds[9], dt[9];
                load_wigner(&wigner[e], W);
                load_column(x + s, C, c, xs);
                load_column(x + t, C, c, xt);
                gathered_adjoint(e, c, W, xs, xt, C, radial, dy, SLICED ? nullptr : d_radial, dys,
                                 dyt, dr);
                gather_adjoint(W, dys, dyt, xs, xt, ds, dt, acc);
#pragma unroll
                for (int j = 0; j < 9; j++)
                    accumulate(d_x, s + (size_t)j * C + c, ds[j]);
                if (one_channel) {
                    run.add(t, dt, C, c, d_x);
                } else {
#pragma unroll
                    for (int j = 0; j < 9; j++)
                        accumulate(d_x, t + (size_t)j * C + c, dt[j]);
                }
            }
            if (SLICED) {
                float top = 0.0f;
#pragma unroll
                for (int j = 0; j < 12; j++)
                    top = fmaxf(top, finite_magnitude(dr[j]));
                top = warp_max(top);
                if (threadIdx.x % 32 == 0)
                    warp_top[e & 1][threadIdx.x / 32] = top;
            }
            block_sum<34>(acc, total);
            if (threadIdx.x < 34)
                ((float *)&d_wigner[e])[threadIdx.x] += total[threadIdx.x];
            if (SLICED)
                store_radial_adjoint_sliced(e, C, dr, warp_top[e & 1], out.part[0]);
        }
    }
    if (one_channel && (int)threadIdx.x < C)
        run.flush(C, threadIdx.x, d_x);
}

static void launch_gather_backward(int n, const int *source, const int *target,
                                   const cu_wigner *wigner, int C, const float *x,
                                   const float *radial, const float *dy, float *d_radial,
                                   unsigned long long *d_x, cu_wigner *d_wigner,
                                   const i8_sliced *sliced, cudaStream_t stream) {
    if (n <= 0 || C <= 0)
        return;
    size_t spans = ((size_t)n + PRODUCER_EDGES - 1) / PRODUCER_EDGES;
    unsigned blocks = (unsigned)(spans < (size_t)1 << 30 ? spans : (size_t)1 << 30);
    if (sliced) {
        const sliced_parts<1> out = {{*sliced}};
        gather_backward_kernel<true><<<blocks, edge_threads(C), 0, stream>>>(
            n, source, target, wigner, C, x, radial, dy, nullptr, d_x, d_wigner, out);
        return;
    }
    gather_backward_kernel<false><<<blocks, edge_threads(C), 0, stream>>>(
        n, source, target, wigner, C, x, radial, dy, d_radial, d_x, d_wigner, sliced_parts<1>{});
}

void cu_gather_rotate_backward(int n, const int *source, const int *target, const cu_wigner *wigner,
                               int C, const float *x, const float *dy, unsigned long long *d_x,
                               cu_wigner *d_wigner, cudaStream_t stream) {
    launch_gather_backward(n, source, target, wigner, C, x, nullptr, dy, nullptr, d_x, d_wigner,
                           nullptr, stream);
}

void cu_producer_backward(int n, const int *source, const int *target, const cu_wigner *wigner,
                          int C, const float *x, const float *radial, const float *dy,
                          float *d_radial, unsigned long long *d_x, cu_wigner *d_wigner,
                          cudaStream_t stream) {
    launch_gather_backward(n, source, target, wigner, C, x, radial, dy, d_radial, d_x, d_wigner,
                           nullptr, stream);
}

int cu_producer_backward_sliced(int n, const int *source, const int *target,
                                const cu_wigner *wigner, int C, const float *x, const float *radial,
                                const float *dy, const i8_sliced *d_radial, unsigned long long *d_x,
                                cu_wigner *d_wigner, cudaStream_t stream) {
    if (C > edge_threads(C))
        return 0;
    launch_gather_backward(n, source, target, wigner, C, x, radial, dy, nullptr, d_x, d_wigner,
                           d_radial, stream);
    return 1;
}

/* ---------------------------------------------------------------------------------------------
 * scale_by_radial_backward (core/edgewise.c scale_by_radial_backward)
 * d_radial[e][s] = sum over the positions k with radial_slot(k) = s of dy[e][k] unscaled[e][k]
 * (overwrite); dy[e][k] *= radial[e][s]. One thread per slot (e, s): slot s < 6C has the one
 * use k = s; 6C <= s < 10C the uses s and s + 4C; 10C <= s < 12C the uses s + 4C and s + 6C.
 * ------------------------------------------------------------------------------------------- */

HD void scale_by_radial_backward_one(int e, int s, int C, const float *radial,
                                     const float *unscaled, float *dy, float *d_radial) {
    int k0, k1; /* the uses of slot s; k1 < 0: none */
    if (s < 6 * C)
        k0 = s, k1 = -1;
    else if (s < 10 * C)
        k0 = s, k1 = s + 4 * C;
    else
        k0 = s + 4 * C, k1 = s + 6 * C;
    size_t y0 = (size_t)e * 18 * C;
    float r = radial[(size_t)e * 12 * C + s];
    float d = dy[y0 + k0] * unscaled[y0 + k0];
    dy[y0 + k0] *= r;
    if (k1 >= 0) {
        d += dy[y0 + k1] * unscaled[y0 + k1];
        dy[y0 + k1] *= r;
    }
    d_radial[(size_t)e * 12 * C + s] = d;
}

__global__ void scale_by_radial_backward_kernel(int n, int C, const float *radial,
                                                const float *unscaled, float *dy, float *d_radial) {
    size_t width = (size_t)12 * C;
    FLAT_LOOP(i, (size_t)n * width)
    scale_by_radial_backward_one((int)(i / width), (int)(i % width), C, radial, unscaled, dy,
                                 d_radial);
}

void cu_scale_by_radial_backward(int n, int C, const float *radial, const float *unscaled,
                                 float *dy, float *d_radial, cudaStream_t stream) {
    if (n <= 0 || C <= 0)
        return;
    scale_by_radial_backward_kernel<<<flat_blocks((size_t)n * 12 * C), FLAT_THREADS, 0, stream>>>(
        n, C, radial, unscaled, dy, d_radial);
}
