/* gemm_i8_tma.cu - the "ozaki" GEMM (gemm_i8.h): fp32-accurate products from int8 slices on the
 * tensor cores of Hopper, and the slicing of fp32 matrices (the digit arithmetic is in
 * slicing.cuh, shared with the producers that write their outputs sliced).
 *
 * Block: 3 warpgroups (384 threads), persistent (one block per multiprocessor, tiles b, b +
 * gridDim.x, ...). Warpgroup 0 is the producer: one thread issues, per stage, two bulk tensor
 * copies (the X box [3 planes][128 rows][64 k] and the W box of the same shape, 24 KiB each) that
 * complete on an mbarrier, running ahead into the next tile. Warpgroups 1 and 2 each compute 64
 * rows of the block's 128 x 128 tile of Y with m64n128k32 int8 wgmma, both operands from shared
 * memory, in three int32 accumulators, one per level i + j of the slice products s_i t_j:
 *     level 0: s0 t0;   level 1: s0 t1 + s1 t0;   level 2: s0 t2 + s1 t1 + s2 t0
 * (3 x 64 registers per thread; setmaxnreg gives the consumers 240). Each stage holds k = 64
 * (2 k-steps x 6 products); the consumers keep one stage's products in flight while they issue
 * the next stage's, and release a stage once its products are complete.
 * Shared memory: 4 stages of 48 KiB in the 64-byte swizzle (the K-major layout wgmma reads), the
 * barriers, then the column scales and biases of the block's tiles (ColumnTerms).
 *
 * Epilogue: y = 2^(e_x + e_w - 46) 255^2 (255^2 L0 + 255 L1 + L2), the level sums combined exactly
 * in int64 and rounded once to fp32, plus the bias; NaN where a row of X or W was not finite.
 * The common tile (beta 0, all columns inside N and in the fast exponent range) takes a path with
 * no per-output checks: the epilogue is latency-bound, and the checks had made it a third of a
 * 768-deep product (bench/README.md). */
#include "gemm_i8.h"
#include "gemm_tc_common.cuh"
#include "slicing.cuh"
#include "tma.cuh"
#include "wgmma.cuh"

#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace {

constexpr int CONSUMERS = 2;                   /* consumer warpgroups, 64 rows each */
constexpr int BM = 64 * CONSUMERS;             /* rows of Y per block */
constexpr int BN = 128;                        /* outputs per block: the n of one wgmma */
constexpr int PLANES = 3;                      /* slices per entry */
constexpr int THREADS = 128 * (1 + CONSUMERS); /* producer warpgroup + consumers */
constexpr int MAX_K = 32768; /* 3 x 127^2 x K < 2^31, and (255^2 L0) 255^2 < 2^63 */

/* The epilogue's per-column terms of a block, in shared memory: 2^(e_w - 23) and the bias of
 * each of its BN columns; all_in_range: every column's exponent is in the fast range. */
struct alignas(16) ColumnTerms {
    float scale[BN];
    float bias[BN];
    int all_in_range;
};

/* A pipeline shape: BK = k per stage (one swizzled row of BK bytes: 128, 64 or 32) and the
 * number of stages. */
template <int BK_, int STAGES_> struct Pipeline {
    static constexpr int BK = BK_, STAGES = STAGES_;
    static constexpr int KSTEPS = BK / 32; /* wgmma k-steps per stage */
    static constexpr unsigned X_PLANE_BYTES = BM * BK, W_PLANE_BYTES = BN * BK;
    static constexpr unsigned X_BOX_BYTES = PLANES * X_PLANE_BYTES;
    static constexpr unsigned STAGE_BYTES = X_BOX_BYTES + PLANES * W_PLANE_BYTES;
    /* the stages (1,024-byte aligned for the swizzle atoms), the full[] and empty[] barriers,
     * then the block's column scales and biases (the epilogue's, see ColumnTerms) */
    static constexpr size_t BARRIER_BYTES = 2 * STAGES * sizeof(uint64_t);
    static constexpr size_t SMEM_BYTES =
        1024 + STAGES * (size_t)STAGE_BYTES + BARRIER_BYTES + 2 * sizeof(ColumnTerms);
    static_assert(SMEM_BYTES <= 227 * 1024, "fits sm_90 shared memory");
};

/* ---- slicing ------------------------------------------------------------------------------ */

constexpr int SLICE_THREADS = 256;

/* Entries k .. k + 3 of row r (v; 0 past K) as slices: three 4-byte stores, one per plane. */
__device__ __forceinline__ void store_slices(const i8_sliced &out, size_t r, size_t k,
                                             const float (&v)[4], const RowScale &scale) {
    int digits[4][PLANES];
#pragma unroll
    for (int j = 0; j < 4; j++)
        balanced_digits(scaled_integer(v[j], scale), digits[j]);
    int8_t *s0 = out.slices + r * out.ld + k;
#pragma unroll
    for (int p = 0; p < PLANES; p++)
        *reinterpret_cast<uint32_t *>(s0 + p * out.plane) =
            low_bytes(digits[0][p], digits[1][p], digits[2][p], digits[3][p]);
}

/* Entries k .. k + 3 of a row, 0 past K; one 16-byte load when `vector` (row 16-byte aligned). */
__device__ __forceinline__ void load4(const float *row, int K, int k, bool vector, float (&v)[4]) {
    if (vector && k + 3 < K) {
        const float4 f = *reinterpret_cast<const float4 *>(row + k);
        v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
    } else {
#pragma unroll
        for (int j = 0; j < 4; j++)
            v[j] = k + j < K ? row[k + j] : 0.0f;
    }
}

/* One warp per row: the row's largest magnitude, then its entries in three signed bytes. Lane l
 * takes entries 4 l + 128 q .. + 3 for q = 0, 1, ...: with QUADS > 0 (rows of ld <= 128 QUADS
 * bytes) they stay in registers between the two steps (one read of the row); QUADS = 0 reads the
 * row twice (any length). `vector`: lda % 4 == 0 and a 16-byte aligned. */
template <int QUADS>
__global__ void slice_kernel(int rows, int K, const float *__restrict__ a, size_t lda, bool vector,
                             i8_sliced out) {
    const int lane = threadIdx.x & 31;
    const size_t warps = (size_t)gridDim.x * (blockDim.x / 32);
    for (size_t r = blockIdx.x * (size_t)(blockDim.x / 32) + threadIdx.x / 32; r < (size_t)rows;
         r += warps) {
        const float *row = a + r * lda;
        float m = 0.0f;
        bool finite = true;
        float v[QUADS > 0 ? QUADS : 1][4];
        if (QUADS > 0) {
#pragma unroll
            for (int q = 0; q < QUADS; q++) {
                load4(row, K, 4 * lane + 128 * q, vector, v[q]);
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    finite = finite && fabsf(v[q][j]) <= FLT_MAX;
                    m = fmaxf(m, fabsf(v[q][j]));
                }
            }
        } else {
            for (int k = lane; k < K; k += 32) {
                const float x = fabsf(row[k]);
                finite = finite && x <= FLT_MAX;
                m = fmaxf(m, x);
            }
        }
        m = warp_max(m);
        finite = __all_sync(0xffffffffu, finite);
        const int e = row_exponent(m);
        const RowScale scale = row_scale_of(e, finite);
        if (QUADS > 0) {
#pragma unroll
            for (int q = 0; q < QUADS; q++) {
                const size_t k = 4 * (size_t)lane + 128 * q;
                if (k < out.ld)
                    store_slices(out, r, k, v[q], scale);
            }
        } else {
            for (size_t k = 4 * (size_t)lane; k < out.ld; k += 128) {
                float x[4];
                load4(row, K, (int)k, vector, x);
                store_slices(out, r, k, x, scale);
            }
        }
        if (lane == 0)
            out.exponents[r] = finite ? e : I8_NOT_FINITE;
    }
}

/* ---- the GEMM kernel ---------------------------------------------------------------------- */

/* Row and column exponents in [-60, 60] take the fp32 epilogue: 2^(e - 23) is a normal float and
 * (sum 2^(e_w - 23)) 2^(e_x - 23) (|sum| < 2^61) neither underflows nor overflows before the last
 * product. The others (tiny or huge rows, non-finite ones) take the int64 / double route. */
__device__ __forceinline__ bool in_fast_range(int e) {
    return e >= -60 && e <= 60;
}
__device__ __forceinline__ float power_of_two(int e) { /* e in [-126, 127] */
    return __int_as_float((e + 127) << 23);
}

/* The output sum 2^(e_x + e_w - 46) outside the fast range: NaN for a non-finite row or column,
 * else through double (one rounding to fp32). Not inlined: the epilogue's unrolled code stays
 * small. */
__device__ __noinline__ float rare_value(long long sum, int ex, int ew) {
    if (ex == I8_NOT_FINITE || ew == I8_NOT_FINITE)
        return __int_as_float(0x7fc00000);
    return (float)ldexp((double)sum, ex + ew - 46);
}

/* 255^2 (255^2 L0 + 255 L1 + L2), exact in int64 */
__device__ __forceinline__ long long level_sum(int l0, int l1, int l2) {
    return ((long long)l0 * 65025 + (long long)l1 * 255 + l2) * 65025;
}

/* An output in the fast range: the sum rounded once, two exact scalings, plus the bias. */
__device__ __forceinline__ float fast_value(int l0, int l1, int l2, float column_scale,
                                            float row_scale, float bias) {
    return __ll2float_rn(level_sum(l0, l1, l2)) * column_scale * row_scale + bias;
}

/* One output of the tile (column c of the block's columns): 255^2 (255^2 L0 + 255 L1 + L2) (exact
 * in int64) rounded once and scaled by two exact powers of two (`fast`), else rare_value; plus the
 * column's bias. ew: the column's exponent (null past N). */
__device__ __forceinline__ float output_value(int l0, int l1, int l2, bool fast, float row_scale,
                                              int ex, const ColumnTerms &columns, int c,
                                              const int *ew) {
    if (fast)
        return fast_value(l0, l1, l2, columns.scale[c], row_scale, columns.bias[c]);
    return rare_value(level_sum(l0, l1, l2), ex, ew ? *ew : 0) + columns.bias[c];
}

/* Column c of tile `tile` (its columns (tile % tiles_n) BN ..): the weight row's exponent and the
 * bias (0 past N). */
__device__ __forceinline__ void load_column_terms(int tile, int tiles_n, int c, int N,
                                                  const int *exp_w, const float *bias, int &ew,
                                                  float &b) {
    const int col = tile % tiles_n * BN + c;
    ew = col < N ? exp_w[col] : 0;
    b = bias && col < N ? bias[col] : 0.0f;
}

/* Y = beta Y + X W^T (+ bias), persistent: block b computes the tiles b, b + gridDim.x, ... of Y
 * (tile t: rows (t / tiles_n) BM, columns (t % tiles_n) BN). The producer runs ahead through the
 * k-tiles of all its tiles, so the next tile's first stages load while the consumers finish the
 * last one. COMPUTE_ONLY (measurements only, a wrong result): every stage reuses the first
 * k-tile, so the kernel runs without waiting for loads; NO_EPILOGUE (measurements only): Y is not
 * written. */
template <class P, bool COMPUTE_ONLY, bool NO_EPILOGUE>
__global__ void __launch_bounds__(THREADS, 1)
    i8_gemm_kernel(const __grid_constant__ CUtensorMap map_x,
                   const __grid_constant__ CUtensorMap map_w, const int *__restrict__ exp_x,
                   const int *__restrict__ exp_w, int M, int N, int K,
                   const float *__restrict__ bias, float beta, float *__restrict__ Y, size_t ldy,
                   int tiles_n, int tiles, bool pairs) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int BK = P::BK, STAGES = P::STAGES;
    constexpr unsigned STAGE_BYTES = P::STAGE_BYTES;
    extern __shared__ unsigned char smem_raw[];
    unsigned char *const smem = reinterpret_cast<unsigned char *>(
        (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
    uint64_t *const full = reinterpret_cast<uint64_t *>(smem + STAGES * (size_t)STAGE_BYTES);
    uint64_t *const empty = full + STAGES;
    /* the column terms of the block's tiles, by tile parity (one tile's epilogue may still read
     * them while the next tile's are written) */
    ColumnTerms *const terms =
        reinterpret_cast<ColumnTerms *>(smem + STAGES * (size_t)STAGE_BYTES + P::BARRIER_BYTES);

    const int tid = threadIdx.x;
    const int warpgroup = tid / 128;
    const int ktiles = (K + BK - 1) / BK;

    if (tid == 0)
        init_stage_barriers(full, empty, STAGES, 4 * CONSUMERS);
    __syncthreads();

    if (warpgroup == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n");
        if (tid == 0) {
            int it = 0; /* k-tiles issued, over all of this block's tiles */
            for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
                const int m0 = tile / tiles_n * BM, n0 = tile % tiles_n * BN;
                for (int kt = 0; kt < ktiles; kt++, it++) {
                    if (COMPUTE_ONLY && it > 0)
                        break;
                    const int s = it % STAGES, round = it / STAGES;
                    if (round > 0)
                        barrier_wait(&empty[s], (round - 1) & 1); /* consumers done with it */
                    unsigned char *stage = smem + s * (size_t)STAGE_BYTES;
                    barrier_arrive_expect(&full[s], STAGE_BYTES);
                    copy_box_3d(stage, &map_x, kt * BK, m0, 0, &full[s]);
                    copy_box_3d(stage + P::X_BOX_BYTES, &map_w, kt * BK, n0, 0, &full[s]);
                }
            }
        }
        return;
    }

    asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n"); /* (65,536 - 128 x 24) / 256 */
    const int lane = tid & 31, warp = (tid >> 5) & 3;
    const int consumer = warpgroup - 1;
    int it = 0;       /* k-tiles consumed, over all of this block's tiles */
    int checksum = 0; /* NO_EPILOGUE: keeps the products alive */

#pragma unroll 1
    for (int tile = blockIdx.x, round = 0; tile < tiles; tile += gridDim.x, round++) {
        const int m0 = tile / tiles_n * BM, n0 = tile % tiles_n * BN;
        ColumnTerms &columns = terms[round & 1];
        if (consumer == 0) { /* thread c of the first consumer: column n0 + c's scale and bias */
            const int c = tid - 128;
            int ew;
            float b;
            load_column_terms(tile, tiles_n, c, N, exp_w, bias, ew, b);
            if (c == 0)
                columns.all_in_range = 1;
            asm volatile("bar.sync 2, 128;\n" ::: "memory");
            columns.scale[c] = power_of_two(in_fast_range(ew) ? ew - 23 : 0);
            columns.bias[c] = b;
            if (!in_fast_range(ew))
                columns.all_in_range = 0;
        }

        /* this thread's two rows of the tile (row0, row0 + 8) and their exponents, loaded now:
         * their latency passes during the products */
        const int g = lane >> 2, t = lane & 3;
        const int row0 = m0 + consumer * 64 + warp * 16 + g;
        int row_exponents[2];
#pragma unroll
        for (int q2 = 0; q2 < 2; q2++)
            row_exponents[q2] = row0 + 8 * q2 < M ? exp_x[row0 + 8 * q2] : 0;

        int level0[64], level1[64], level2[64];
#pragma unroll
        for (int i = 0; i < 64; i++) {
            level0[i] = 0;
            level1[i] = 0;
            level2[i] = 0;
        }

#pragma unroll 1
        for (int kt = 0; kt < ktiles; kt++, it++) {
            const int s = COMPUTE_ONLY ? 0 : it % STAGES;
            if (!COMPUTE_ONLY || it == 0)
                barrier_wait(&full[s], (it / STAGES) & 1);
            const unsigned char *stage = smem + s * (size_t)STAGE_BYTES;
            const unsigned char *x_rows = stage + consumer * 64 * BK; /* this warpgroup's rows */
            const unsigned char *w_rows = stage + P::X_BOX_BYTES;
            wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < P::KSTEPS; ks++) {
                const uint64_t x0 = descriptor_swizzled<BK>(x_rows, ks);
                const uint64_t x1 = descriptor_swizzled<BK>(x_rows + P::X_PLANE_BYTES, ks);
                const uint64_t x2 = descriptor_swizzled<BK>(x_rows + 2 * P::X_PLANE_BYTES, ks);
                const uint64_t w0 = descriptor_swizzled<BK>(w_rows, ks);
                const uint64_t w1 = descriptor_swizzled<BK>(w_rows + P::W_PLANE_BYTES, ks);
                const uint64_t w2 = descriptor_swizzled<BK>(w_rows + 2 * P::W_PLANE_BYTES, ks);
                wgmma_s8(level0, x0, w0);
                wgmma_s8(level1, x0, w1);
                wgmma_s8(level1, x1, w0);
                wgmma_s8(level2, x0, w2);
                wgmma_s8(level2, x1, w1);
                wgmma_s8(level2, x2, w0);
            }
            wgmma_commit();
            wgmma_wait<1>(); /* the previous k-tile's products are complete */
            if (kt > 0 && !COMPUTE_ONLY) {
                __syncwarp();
                if (lane == 0)
                    barrier_arrive(&empty[(it - 1) % STAGES]);
            }
        }
        wgmma_wait<0>();
        pin(level0);
        pin(level1);
        pin(level2);
        if (!COMPUTE_ONLY) { /* the tile's last k-tile */
            __syncwarp();
            if (lane == 0)
                barrier_arrive(&empty[(it - 1) % STAGES]);
        }

        if (NO_EPILOGUE) {
#pragma unroll
            for (int i = 0; i < 64; i++)
                checksum ^= level0[i] ^ level1[i] ^ level2[i];
            continue;
        }
        /* the column terms are there for both consumers */
        asm volatile("bar.sync 1, %0;\n" ::"n"(128 * CONSUMERS) : "memory");
        /* a tile that needs no per-output checks: Y only written, 8-byte column pairs, all of its
         * columns inside N and in the fast range (rows are checked one by one) */
        const bool plain_tile = beta == 0.0f && pairs && n0 + BN <= N && columns.all_in_range;
#pragma unroll
        for (int q2 = 0; q2 < 2; q2++) {
            const int r = row0 + 8 * q2;
            if (r >= M)
                continue;
            const int ex = row_exponents[q2];
            const bool fast = columns.all_in_range && in_fast_range(ex);
            const float row_scale = fast ? power_of_two(ex - 23) : 0.0f;
            float *y = Y + (size_t)r * ldy;
            if (fast && plain_tile) { /* the common case, with nothing to check per output */
#pragma unroll
                for (int j = 0; j < 16; j++) {
                    const int c = 8 * j + 2 * t, i = 4 * j + 2 * q2;
                    const float2 scale = *reinterpret_cast<const float2 *>(&columns.scale[c]);
                    const float2 b = *reinterpret_cast<const float2 *>(&columns.bias[c]);
                    *reinterpret_cast<float2 *>(y + n0 + c) = make_float2(
                        fast_value(level0[i], level1[i], level2[i], scale.x, row_scale, b.x),
                        fast_value(level0[i + 1], level1[i + 1], level2[i + 1], scale.y, row_scale,
                                   b.y));
                }
                continue;
            }
#pragma unroll
            for (int j = 0; j < 16; j++) {
                const int c = 8 * j + 2 * t; /* this thread's columns c, c + 1 of the tile */
                float v[2];
#pragma unroll
                for (int q1 = 0; q1 < 2; q1++) {
                    const int i = 4 * j + 2 * q2 + q1;
                    v[q1] =
                        output_value(level0[i], level1[i], level2[i], fast, row_scale, ex, columns,
                                     c + q1, n0 + c + q1 < N ? exp_w + n0 + c + q1 : nullptr);
                }
                const int col = n0 + c;
                if (pairs && col + 1 < N) { /* one 8-byte store */
                    float2 *out = reinterpret_cast<float2 *>(y + col);
                    if (beta != 0.0f) {
                        const float2 old = *out;
                        v[0] = fmaf(beta, old.x, v[0]);
                        v[1] = fmaf(beta, old.y, v[1]);
                    }
                    *out = make_float2(v[0], v[1]);
                } else {
                    for (int q1 = 0; q1 < 2 && col + q1 < N; q1++)
                        y[col + q1] = beta == 0.0f ? v[q1] : fmaf(beta, y[col + q1], v[q1]);
                }
            }
        }
    }
    if (NO_EPILOGUE && checksum == 0x12345678)
        Y[0] = 0.0f;
#endif
}

/* ---- host side ---------------------------------------------------------------------------- */

/* Tensor map of a sliced matrix [3 planes][rows][K] (int8), boxes [3][box_rows][BK] in the
 * BK-byte swizzle, zeros outside. */
bool encode_sliced(CUtensorMap *map, const i8_sliced *a, int rows, int K, int box_rows, int BK) {
    PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
    if (!encode)
        return false;
    const cuuint64_t dims[3] = {(cuuint64_t)K, (cuuint64_t)rows, (cuuint64_t)PLANES};
    const cuuint64_t strides[2] = {(cuuint64_t)a->ld, (cuuint64_t)a->plane};
    const cuuint32_t box[3] = {(cuuint32_t)BK, (cuuint32_t)box_rows, (cuuint32_t)PLANES};
    const cuuint32_t element_strides[3] = {1, 1, 1};
    return encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 3, a->slices, dims, strides, box,
                  element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                  BK == 128  ? CU_TENSOR_MAP_SWIZZLE_128B
                  : BK == 64 ? CU_TENSOR_MAP_SWIZZLE_64B
                             : CU_TENSOR_MAP_SWIZZLE_32B,
                  CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                  CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

/* Launches the kernel of pipeline P (its shared-memory opt-in once per device). */
template <class P, bool COMPUTE_ONLY = false, bool NO_EPILOGUE = false>
bool launch(int rows, int out, int K, const i8_sliced *x, const i8_sliced *w, const float *bias,
            float beta, float *Y, size_t ldy, cudaStream_t stream) {
    auto kernel = i8_gemm_kernel<P, COMPUTE_ONLY, NO_EPILOGUE>;
    static std::atomic<unsigned long long> configured{0};
    int device = 0;
    cudaGetDevice(&device);
    const unsigned long long bit = device >= 0 && device < 64 ? 1ull << device : 0;
    if (!bit || !(configured.load(std::memory_order_relaxed) & bit)) {
        if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)P::SMEM_BYTES) != cudaSuccess)
            return false;
        configured.fetch_or(bit, std::memory_order_relaxed);
    }
    CUtensorMap map_x, map_w;
    if (!encode_sliced(&map_x, x, rows, K, BM, P::BK) ||
        !encode_sliced(&map_w, w, out, K, BN, P::BK))
        return false;
    const int tiles_n = (out + BN - 1) / BN;
    const size_t tiles = i8_gemm_nt_blocks(rows, out);
    if (tiles > (size_t)INT_MAX)
        return false;
    int multiprocessors = 0;
    cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device);
    const size_t blocks = std::min(tiles, (size_t)std::max(multiprocessors, 1));
    kernel<<<(unsigned)blocks, THREADS, P::SMEM_BYTES, stream>>>(
        map_x, map_w, x->exponents, w->exponents, rows, out, K, bias, beta, Y, ldy, tiles_n,
        (int)tiles, ldy % 2 == 0 && reinterpret_cast<uintptr_t>(Y) % 8 == 0);
    return true;
}

bool usable(const i8_sliced *a) {
    return a && aligned16(a->slices) && a->ld % 16 == 0 && a->plane % 16 == 0 && a->exponents;
}

} // namespace

extern "C" size_t i8_slice_ld(int K) {
    return K > 0 ? ((size_t)K + 15) / 16 * 16 : 16;
}

extern "C" void i8_slice(int rows, int K, const float *a, size_t lda, const i8_sliced *out,
                         cudaStream_t stream) {
    if (rows <= 0)
        return;
    const size_t warps_per_block = SLICE_THREADS / 32;
    size_t blocks = ((size_t)rows + warps_per_block - 1) / warps_per_block;
    if (blocks > (1u << 30))
        blocks = 1u << 30;
    const bool vector = lda % 4 == 0 && aligned16(a);
    const size_t quads = (out->ld + 127) / 128; /* per lane */
    auto kernel = quads <= 2    ? slice_kernel<2>
                  : quads <= 4  ? slice_kernel<4>
                  : quads <= 8  ? slice_kernel<8>
                  : quads <= 12 ? slice_kernel<12>
                                : slice_kernel<0>;
    kernel<<<(unsigned)blocks, SLICE_THREADS, 0, stream>>>(rows, K, a, lda, vector, *out);
}

extern "C" int i8_gemm_nt_variant(int variant, int rows, int out, int K, const i8_sliced *x,
                                  const i8_sliced *w, const float *bias, float beta, float *Y,
                                  size_t ldy, cudaStream_t stream) {
    if (!device_is_sm90() || !tensor_map_encoder() || !usable(x) || !usable(w) || K <= 0 ||
        K > MAX_K)
        return 0;
    if (rows <= 0 || out <= 0)
        return 1;
    switch (variant) {
    case I8_K128_2STAGES:
        return launch<Pipeline<128, 2>, false>(rows, out, K, x, w, bias, beta, Y, ldy, stream);
    case I8_K32_8STAGES:
        return launch<Pipeline<32, 8>, false>(rows, out, K, x, w, bias, beta, Y, ldy, stream);
    case I8_K64_3STAGES:
        return launch<Pipeline<64, 3>>(rows, out, K, x, w, bias, beta, Y, ldy, stream);
    case I8_COMPUTE_ONLY:
        return launch<Pipeline<64, 4>, true>(rows, out, K, x, w, bias, beta, Y, ldy, stream);
    case I8_NO_EPILOGUE:
        return launch<Pipeline<64, 4>, false, true>(rows, out, K, x, w, bias, beta, Y, ldy, stream);
    default:
        return launch<Pipeline<64, 4>, false>(rows, out, K, x, w, bias, beta, Y, ldy, stream);
    }
}

extern "C" int i8_gemm_nt(int rows, int out, int K, const i8_sliced *x, const i8_sliced *w,
                          const float *bias, float beta, float *Y, size_t ldy,
                          cudaStream_t stream) {
    return i8_gemm_nt_variant(I8_DEFAULT, rows, out, K, x, w, bias, beta, Y, ldy, stream);
}

extern "C" size_t i8_gemm_nt_blocks(int rows, int out) {
    if (rows <= 0 || out <= 0)
        return 0;
    return (size_t)((rows + BM - 1) / BM) * (size_t)((out + BN - 1) / BN);
}
