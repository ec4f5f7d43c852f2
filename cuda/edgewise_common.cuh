/* edgewise_common.cuh - what the kernels of the message pipeline share (edgewise_producer.cu,
 * edgewise_consumer.cu): the index tables, the per-(edge, channel) rotation math as __host__
 * __device__ functions (checked on the host against core/edgewise.c), fixed-point accumulation,
 * launch helpers, warp and block sums, and the writing of outputs as int8 slices (ozaki).
 *
 * The message pipeline of an eSCN-MD block and the edge-degree embedding (core/edgewise.c) on
 * the GPU, fp32, forward and backward:
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
#ifndef UMAS_CUDA_EDGEWISE_COMMON_CUH
#define UMAS_CUDA_EDGEWISE_COMMON_CUH

#include "common.cuh"
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
static inline unsigned flat_blocks(size_t total) {
    size_t blocks = (total + FLAT_THREADS - 1) / FLAT_THREADS;
    return (unsigned)(blocks < (size_t)1 << 30 ? blocks : (size_t)1 << 30);
}

/* Threads of a one-block-per-edge kernel: C rounded up to warps, within [64, 256]. */
static inline int edge_threads(int C) {
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

static inline unsigned warp_edge_blocks(int n) {
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

/* Edges per block at most (blockDim.y: FLAT_THREADS threads, at least one warp per edge). */
#define GATHER_EDGES_MAX (FLAT_THREADS / 32)

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
static inline channel_launch channel_launch_for(int n, int channels) {
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

#endif
