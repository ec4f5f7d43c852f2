/* edgewise.cu - the message pipeline pieces of an eSCN-MD block and the edge-degree embedding
 * (core/edgewise.c) on the GPU, fp32, forward and backward.
 *
 * Conventions (as core/edgewise.c):
 *   node features x [N][9][C], L-order (l0 | l1: 3 | l2: 5);
 *   edge features [n][9][C'] in M-order: position p holds L-order coefficient m_to_l(p),
 *     p: l0m0 l1m0 l2m0 l1m+1 l2m+1 l1m-1 l2m-1 l2m+2 l2m-2;
 *   a Wigner record cu_wigner is read as 34 contiguous floats W: D^1[a][b] = W[3a + b],
 *     D^2[a][b] = W[9 + 5a + b]; D^0 = 1 is implicit and has no adjoint entry.
 *
 * Parallel structure:
 *   - elementwise / per-(edge, channel) kernels: one thread per item over a flat index
 *     (grid-stride loop), node rows read coalesced over the channel;
 *   - scatters into node rows: 64-bit fixed-point atomics (cu_fixed_point: integer sums do not
 *     depend on their order, so every run gives the same bits), converted into the float rows
 *     once per chunk loop by cu_fixed_add. Sums into the targets go through a target_run: a
 *     thread walks a fixed span of consecutive edges and adds them up in registers while their
 *     target stays the same, with one atomic per row when it changes. Edges come sorted by
 *     target (pair_umas, core/graph.c), so that is about one atomic per node and span instead
 *     of one per edge; the spans are fixed, so the bits still do not change from run to run;
 *   - per-edge dot products over the channels (d_wigner, d_envelope): one warp per edge, lanes
 *     over the channels, then a sum over the lanes (rotate_back_backward, edge_degree_backward);
 *     in the gather backward, whose block walks a few edges, per edge a reduce-scatter over the
 *     lanes of each warp and a sum over the (<= 8) warps (block_sum);
 * The per-(edge, channel) math lives in __host__ __device__ functions so that it can be checked
 * on the host against the CPU code; accumulate() is an atomic add on the device, += on the
 * host. */
#include "kernels.h"
#include "slicing.cuh"

#include <float.h>
#include <math.h>
#include <stddef.h>

static_assert(sizeof(cu_wigner) == 34 * sizeof(float), "cu_wigner must be 34 packed floats");

#define HD __host__ __device__ __forceinline__

/* ---------------------------------------------------------------------------------------------
 * index tables and small helpers
 * ------------------------------------------------------------------------------------------- */

/* umas_m_to_l = {0, 2, 6, 3, 7, 1, 5, 8, 4}: M-order position p -> L-order coefficient. */
HD constexpr int m_to_l(int p) {
    return p == 0   ? 0
           : p == 1 ? 2
           : p == 2 ? 6
           : p == 3 ? 3
           : p == 4 ? 7
           : p == 5 ? 1
           : p == 6 ? 5
           : p == 7 ? 8
                    : 4;
}
/* degree_of_m = {0, 1, 2, 1, 2, 1, 2, 2, 2}: degree l of M-order position p. */
HD constexpr int degree_of_m(int p) {
    return p == 0 ? 0 : (p == 1 || p == 3 || p == 5) ? 1 : 2;
}

/* Offsets of the m = 0 rows inside W: D^1[1][j] = W[3 + j], D^2[2][j] = W[19 + j]. */
#define W_L1_M0 3
#define W_L2_M0 19

HD float sigmoidf_(float x) {
    return 1.0f / (1.0f + expf(-x));
}
HD float silu_derivativef(float x) { /* s (1 + x (1 - s)) */
    float s = sigmoidf_(x);
    return s * (1.0f + x * (1.0f - s));
}

/* fixed[i] += v in 2^-32 units: atomic on the device (several edges hit one node row), plain
 * on the host. Integer addition is associative, so the sum is the same in any order. */
HD void accumulate(unsigned long long *fixed, size_t i, float v) {
#ifdef __CUDA_ARCH__
    atomicAdd(fixed + i, (unsigned long long)__float2ll_rn(v * CU_FIXED_ONE));
#else
    fixed[i] += (unsigned long long)llrintf(v * CU_FIXED_ONE);
#endif
}

/* Sums of consecutive edges into one target row, channel c of the 9 coefficients: add() while
 * the row stays the same, flush() into the fixed-point rows when it changes and at the end. */
struct target_run {
    size_t row = (size_t)-1; /* fixed-point offset of the node row being summed; -1: none */
    float sum[9];

    HD void flush(int C, int c, unsigned long long *x_out) {
        if (row == (size_t)-1)
            return;
#pragma unroll
        for (int j = 0; j < 9; j++)
            accumulate(x_out, row + (size_t)j * C + c, sum[j]);
        row = (size_t)-1;
    }
    HD void add(size_t node_row, const float v[9], int C, int c, unsigned long long *x_out) {
        if (node_row != row) {
            flush(C, c, x_out);
            row = node_row;
#pragma unroll
            for (int j = 0; j < 9; j++)
                sum[j] = 0.0f;
        }
#pragma unroll
        for (int j = 0; j < 9; j++)
            sum[j] += v[j];
    }
};

/* The radial weight of position k = q C + c (q < 18, c < C) of an edge's [9][2C] M-order
 * features is radial[radial_row(q) C + c] (radial [12C]): rows 0..2 by [0, 6C), rows 3, 4 and
 * again 5, 6 by [6C, 10C), rows 7 and again 8 by [10C, 12C) (core/edgewise.c radial_slot, whose
 * slot is radial_row(k / C) C + k % C). */
HD constexpr int radial_row(int q) {
    return q < 6 ? q : q < 14 ? 6 + (q - 6) % 4 : 10 + (q - 14) % 2;
}

HD void load_wigner(const cu_wigner *w, float W[34]) {
    const float *f = (const float *)w;
#pragma unroll
    for (int k = 0; k < 34; k++)
        W[k] = f[k];
}

/* y = D x on the 9 L-order coefficients (block diagonal). */
HD void rotate(const float W[34], const float x[9], float y[9]) {
    y[0] = x[0];
#pragma unroll
    for (int a = 0; a < 3; a++) {
        float s = 0.0f;
#pragma unroll
        for (int b = 0; b < 3; b++)
            s += W[3 * a + b] * x[1 + b];
        y[1 + a] = s;
    }
#pragma unroll
    for (int a = 0; a < 5; a++) {
        float s = 0.0f;
#pragma unroll
        for (int b = 0; b < 5; b++)
            s += W[9 + 5 * a + b] * x[4 + b];
        y[4 + a] = s;
    }
}

/* y = D^T x. */
HD void rotate_transpose(const float W[34], const float x[9], float y[9]) {
    y[0] = x[0];
#pragma unroll
    for (int b = 0; b < 3; b++) {
        float s = 0.0f;
#pragma unroll
        for (int a = 0; a < 3; a++)
            s += W[3 * a + b] * x[1 + a];
        y[1 + b] = s;
    }
#pragma unroll
    for (int b = 0; b < 5; b++) {
        float s = 0.0f;
#pragma unroll
        for (int a = 0; a < 5; a++)
            s += W[9 + 5 * a + b] * x[4 + a];
        y[4 + b] = s;
    }
}

/* acc[D entry (i, j)] += u[i] v[j] for every entry of the l = 1, 2 blocks. */
HD void outer_accumulate(const float u[9], const float v[9], float acc[34]) {
#pragma unroll
    for (int a = 0; a < 3; a++)
#pragma unroll
        for (int b = 0; b < 3; b++)
            acc[3 * a + b] += u[1 + a] * v[1 + b];
#pragma unroll
    for (int a = 0; a < 5; a++)
#pragma unroll
        for (int b = 0; b < 5; b++)
            acc[9 + 5 * a + b] += u[4 + a] * v[4 + b];
}

/* v[j] = row[j * C + c], j < 9 (a node row or an edge row with stride C). */
HD void load_column(const float *row, int C, int c, float v[9]) {
#pragma unroll
    for (int j = 0; j < 9; j++)
        v[j] = row[(size_t)j * C + c];
}

/* ---------------------------------------------------------------------------------------------
 * launch helpers
 * ------------------------------------------------------------------------------------------- */

#define FLAT_THREADS     256
#define EDGE_THREADS_MAX 256

/* Blocks for a grid-stride loop over `total` items. */
static unsigned flat_blocks(size_t total) {
    size_t blocks = (total + FLAT_THREADS - 1) / FLAT_THREADS;
    return (unsigned)(blocks < (size_t)1 << 30 ? blocks : (size_t)1 << 30);
}

/* Threads of a one-block-per-edge kernel: C rounded up to warps, within [64, 256]. */
static int edge_threads(int C) {
    int t = (C + 31) / 32 * 32;
    return t < 64 ? 64 : t > EDGE_THREADS_MAX ? EDGE_THREADS_MAX : t;
}

#define FLAT_LOOP(i, total)                                                                        \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (total);                    \
         i += (size_t)gridDim.x * blockDim.x)

/* One-warp-per-edge kernels: EDGE_WARPS warps per block, warp w of block b takes edges
 * b EDGE_WARPS + w, then + gridDim.x EDGE_WARPS, ... (e is the same for all lanes of a warp);
 * lanes over the channels. */
#define EDGE_WARPS 8

#define WARP_EDGE_LOOP(e, n)                                                                       \
    for (long long e = (long long)blockIdx.x * EDGE_WARPS + threadIdx.x / 32; e < (n);             \
         e += (long long)gridDim.x * EDGE_WARPS)

static unsigned warp_edge_blocks(int n) {
    size_t groups = ((size_t)n + EDGE_WARPS - 1) / EDGE_WARPS;
    return (unsigned)(groups < (size_t)1 << 30 ? groups : (size_t)1 << 30);
}

/* Span-walking kernels: thread row y of a block takes RUN_EDGES consecutive edges at a time
 * (a grid-stride loop over such spans, e0 its first edge), threads x over the channels. */
#define RUN_EDGES 16

#define SPAN_LOOP(e0, n)                                                                           \
    for (long long e0 = ((long long)blockIdx.x * blockDim.y + threadIdx.y) * RUN_EDGES; e0 < (n);  \
         e0 += (long long)gridDim.x * blockDim.y * RUN_EDGES)

/* Their launch shape: x = C rounded up to warps (at most FLAT_THREADS), y = the rest. */
struct span_launch {
    dim3 threads;
    unsigned blocks;
    span_launch(int n, int C) {
        int tx = (C + 31) / 32 * 32;
        tx = tx > FLAT_THREADS ? FLAT_THREADS : tx;
        int ty = FLAT_THREADS / tx;
        size_t spans = ((size_t)n + RUN_EDGES - 1) / RUN_EDGES;
        size_t b = (spans + ty - 1) / ty;
        threads = dim3(tx, ty);
        blocks = (unsigned)(b < (size_t)1 << 30 ? b : (size_t)1 << 30);
    }
};

/* Sums v[0..K) over the 32 lanes of a warp, a shuffle tree per value: every lane gets the sums
 * (the same bits: the butterfly's additions are commutative), in a fixed order. */
template <int K> __device__ void warp_sum(float (&v)[K]) {
#pragma unroll
    for (int k = 0; k < K; k++)
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2)
            v[k] += __shfl_xor_sync(0xffffffffu, v[k], offset);
}

/* One halving step of warp_sum_scatter: lanes L and L ^ half pair up; the lane whose `half` bit
 * is clear keeps values [0, half) of v, the other keeps [half, 2 half), and each adds in its
 * partner's copy of the half it keeps. On return v[0..half) holds the kept half. */
template <int half> __device__ __forceinline__ void halve(float *v, int lane) {
    const bool upper = lane & half;
#pragma unroll
    for (int i = 0; i < half; i++) {
        float keep = upper ? v[half + i] : v[i], send = upper ? v[i] : v[half + i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, half);
    }
}

/* Sums over the 32 lanes of a warp, K >= 32 values per lane: on return v[0] of lane L holds the
 * sum of value L (L < 32) and v[32..K) of every lane the sums of values 32..K-1. The first 32
 * values take a reduce-scatter (each step sends half of what is left: 16 + 8 + 4 + 2 + 1
 * shuffles in all, against 32 x 5 for a shuffle tree per value), the rest a shuffle tree each.
 * The order of the additions is fixed, so the sums are the same bits in every run. */
template <int K> __device__ void warp_sum_scatter(float (&v)[K], int lane) {
    static_assert(K >= 32, "warp_sum_scatter needs a value per lane");
#pragma unroll
    for (int k = 32; k < K; k++) /* the values past the lanes: a shuffle tree each */
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2)
            v[k] += __shfl_xor_sync(0xffffffffu, v[k], offset);
    halve<16>(v, lane); /* all unrolled: v stays in registers */
    halve<8>(v, lane);
    halve<4>(v, lane);
    halve<2>(v, lane);
    halve<1>(v, lane);
}

/* After warp_sum_scatter: the sum of value 32 + lane (lane < K - 32), from v[32..K). */
template <int K> __device__ float tail_sum(const float (&v)[K], int lane) {
    float mine = 0.0f;
#pragma unroll
    for (int k = 32; k < K; k++)
        if (lane == k - 32)
            mine = v[k];
    return mine;
}

/* Block-wide sums of the per-thread values v[0..K) (blockDim.x a multiple of 32, at most
 * EDGE_THREADS_MAX): sums within each warp, then over the warps. Every thread of the block must
 * call it; on return total[0..K) (shared) holds the sums. K >= 32: lane L of each warp ends up
 * with value L (warp_sum_scatter). */
template <int K> __device__ void block_sum(float (&v)[K], float *total) {
    __shared__ float warp_sums[EDGE_THREADS_MAX / 32][K];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    warp_sum_scatter<K>(v, lane);
    warp_sums[warp][lane] = v[0];
    if (lane < K - 32)
        warp_sums[warp][32 + lane] = tail_sum(v, lane);
    __syncthreads();
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        float s = 0.0f;
        for (int w = 0; w < warps; w++)
            s += warp_sums[w][k];
        total[k] = s;
    }
    __syncthreads();
}

/* ---------------------------------------------------------------------------------------------
 * gather_rotate (core/edgewise.c gather_rotate) with conv1's radial scaling fused in
 * u[e][p][0:C] = (D x[source[e]])[m_to_l(p)], u[e][p][C:2C] likewise for target[e];
 * y = u * radial at radial_row (scale_by_radial) unless y is null, and u itself into
 * `unscaled` when it is not null (the backward needs it). x [N][9][C], y and unscaled [n][9][2C],
 * radial [n][12C]. A block takes blockDim.y edges at a time (a grid-stride loop over such
 * groups), threads x over the channels: the group's Wigner records, sources and targets are read
 * once into shared memory, then thread (x, y) does edge e0 + y, channels x, x + blockDim.x, ...
 * ------------------------------------------------------------------------------------------- */

/* Edges per block at most (blockDim.y: FLAT_THREADS threads, at least one warp per edge). */
#define GATHER_EDGES_MAX (FLAT_THREADS / 32)

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

/* ---------------------------------------------------------------------------------------------
 * Outputs written sliced (precision ozaki, gemm_i8.h), for kernels whose block takes blockDim.y
 * edges with one channel per thread (thread x = channel c < blockDim.x of edge threadIdx.y):
 * each thread holds its channel's V output values; value i belongs to part part[i] (one of P
 * GEMM operands, one row per edge) at column col[i]. The block agrees on each (edge, part)'s
 * largest magnitude (a non-finite value counts as +inf: its row gets I8_NOT_FINITE) through
 * shared memory, then each thread writes its values' three digits and thread 0 of each edge
 * the exponents. Columns past K within a part's ld are not written (the GEMM does not read
 * them). The entries are those i8_slice gives for the same values in fp32.
 * ------------------------------------------------------------------------------------------- */

template <int P> struct sliced_parts { i8_sliced part[P]; };

/* Called by every thread of the block (active: the thread has an edge and a channel); the
 * caller synchronises the block before calling it again. */
template <int V, int P>
__device__ void store_channel_sliced(bool active, size_t e, const float (&v)[V],
                                     const int (&part)[V], const int (&col)[V],
                                     const sliced_parts<P> &out) {
    __shared__ float largest[GATHER_EDGES_MAX][FLAT_THREADS / 32][P]; /* edge, warp, part */
    const int lane = threadIdx.x % 32, j = threadIdx.y;
    float top[P];
#pragma unroll
    for (int p = 0; p < P; p++)
        top[p] = 0.0f;
    if (active)
#pragma unroll
        for (int i = 0; i < V; i++) {
            top[part[i]] = fmaxf(top[part[i]], finite_magnitude(v[i]));
        }
#pragma unroll
    for (int p = 0; p < P; p++) {
        top[p] = warp_max(top[p]);
        if (lane == 0)
            largest[j][threadIdx.x / 32][p] = top[p];
    }
    __syncthreads();
    if (!active)
        return;
    RowSlicing slicing[P];
#pragma unroll
    for (int p = 0; p < P; p++) {
        float t = 0.0f;
        for (int w = 0; w < (int)blockDim.x / 32; w++)
            t = fmaxf(t, largest[j][w][p]);
        slicing[p] = row_slicing(t);
    }
#pragma unroll
    for (int i = 0; i < V; i++) {
        const i8_sliced &o = out.part[part[i]];
        store_digits(o.slices + e * o.ld + col[i], o.plane, v[i], slicing[part[i]].scale);
    }
    if (threadIdx.x == 0)
#pragma unroll
        for (int p = 0; p < P; p++)
            out.part[p].exponents[e] = slicing[p].exponent;
}

/* The launch of such a kernel for n edges of `channels` (<= FLAT_THREADS) channels. */
struct channel_launch {
    unsigned blocks;
    dim3 threads;
};
channel_launch channel_launch_for(int n, int channels) {
    const int tx = (channels + 31) / 32 * 32, ty = FLAT_THREADS / tx;
    const size_t groups = ((size_t)n + ty - 1) / ty;
    return {(unsigned)(groups < (size_t)1 << 30 ? groups : (size_t)1 << 30), dim3(tx, ty)};
}

/* Part of position q of the [9][2C] row among conv1's operands, and the part's first position:
 * [0, 6) m = 0, [6, 14) m = 1, [14, 18) m = 2. */
HD constexpr int conv1_part(int q) {
    return q < 6 ? 0 : q < 14 ? 1 : 2;
}
HD constexpr int conv1_part_start(int part) {
    return part == 0 ? 0 : part == 1 ? 6 : 14;
}

/* Part of position p of a [9][C'] M-order row among an SO(2) product's three operands (conv2's
 * forward, conv2's and conv1's m > 0 adjoints): [0, 3) m = 0, [3, 7) m = 1, [7, 9) m = 2. */
HD constexpr int gate_part(int p) {
    return p < 3 ? 0 : p < 7 ? 1 : 2;
}
HD constexpr int gate_part_start(int part) {
    return part == 0 ? 0 : part == 1 ? 3 : 7;
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
    dO[0] = dg[base] * silu_derivativef(o[base]);
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
