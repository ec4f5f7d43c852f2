/* gemm_tc_tma.cu - the split-precision ("3xTF32") NT GEMM on Hopper with bulk tensor copies
 * (TMA) and a warp-specialized pipeline: Y[rows][out] = beta Y + X[rows][K] W^T (+ bias), with
 * the weight pre-split into W_hi, W_lo [out][K] (tc_split_weights, or at upload).
 *
 * Why this shape: the earlier Hopper kernel fed its warpgroups with cp.async, two block-wide
 * barriers per stage and a split of W in shared memory; its loads and tensor-core work did not
 * overlap (2.58 ms on 156,000 x 768 x 640, commit 823f526). Here one producer thread issues three
 * bulk tensor copies per stage (the X tile, the W_hi tile, the W_lo tile) that complete on an
 * mbarrier; the consumer warpgroups wait on that barrier, run their products and release the
 * stage on a second mbarrier. No block-wide barrier after the start, no split of W in the
 * kernel, no address arithmetic for the loads.
 *
 * Block: 4 warpgroups (512 threads). Warpgroup 0 is the producer (one thread issues the copies;
 * setmaxnreg gives its registers to the others); warpgroups 1-3 each compute 64 rows of the
 * block's 192 (rows) x 128 (outputs) tile of Y with m64n128k8 wgmma, A (the split x) from
 * registers, B (W_hi, W_lo) from shared memory through descriptors.
 * Shared memory: STAGES stages of an X tile [192][32] and two W tiles [128][32] (fp32), each
 * written by the copy engine in the 128-byte swizzle: row r's 16-byte chunk c lies at r * 128 +
 * ((c ^ r % 8) * 16). That is the K-major, 128-byte-swizzled layout wgmma reads B in (8-row atoms
 * of 1,024 bytes), and it makes the threads' fragment loads of X free of bank conflicts.
 *
 * Accumulation (gemm_tc.h, tc_accumulation): the products of CHUNK consecutive k-steps of 8 go
 * into a fresh tensor-core accumulator p in the order x_lo w_hi, x_hi w_lo (all k-steps of the
 * chunk: small terms first), then x_hi w_hi, and p is added to the fp32 running sums (for
 * TC_ACCUM_CHUNK_JAM with p's last bit set: +ulp(p)/2 on average, the correction of the
 * truncation; results below FLT_MIN in magnitude, e.g. the sticky bits of zero sums, become 0). The
 * tensor cores truncate each sum they form; the truncations of the large terms happen at the
 * chunk's partial sums, so a chunk of n k-steps keeps a shrink toward zero of about (n + 1) / 2 x
 * 2^-25 relative per chunk sum, of which the correction removes 2^-25. TC_ACCUM_DIRECT chains
 * everything over K (for comparison only).
 *
 * Where the time goes (H200, 156,000 x 768 x 640, bench/README.md): the consumers' instructions
 * (about 280 per warp and chunk: the fp32 adds of p, the corrections, the split of x), not the
 * tensor cores. Without the adds (a wrong result, timed only) the kernel ran at 550 TFLOP/s of
 * TF32 products, near the chip's peak; with them at 254 (chunk 1), 256 (chunk 2 with the
 * correction, the model's choice: 1.79 ms, 85 TFLOP/s of fp32-equivalent work, 1.75x cuBLAS
 * SGEMM). Chunks of 4 ran 5 % faster but the model then missed the strict stress bound on one
 * reference case.
 *
 * Conditions (else tc_gemm_nt_tma returns 0 and does nothing): compute capability 9.0, the
 * driver's tensor-map encoder available, X, W_hi, W_lo 16-byte aligned, ldx and ldw multiples of
 * 4. Any rows, out, K: the copy engine fills what lies outside the matrices with zeros. */
#include "gemm_tc.h"
#include "gemm_tc_common.cuh"
#include "tma.cuh"
#include "wgmma.cuh"

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cfloat>
#include <cstddef>
#include <cstdint>
#include <mutex>

namespace {

constexpr int CONSUMERS = 3;                   /* consumer warpgroups, 64 rows each */
constexpr int BM = 64 * CONSUMERS;             /* rows of Y per block */
constexpr int BN = 128;                        /* outputs per block: the n of one wgmma */
constexpr int BK = 32;                         /* k per stage: one 128-byte row of a tile */
constexpr int KSTEPS = BK / 8;                 /* wgmma k-steps per stage */
constexpr int STAGES = 3;                      /* pipeline depth */
constexpr int THREADS = 128 * (1 + CONSUMERS); /* producer warpgroup + consumers */
constexpr unsigned X_TILE_BYTES = BM * BK * 4; /* [BM][32] fp32: 24 KiB */
constexpr unsigned W_TILE_BYTES = BN * BK * 4; /* [BN][32] fp32: 16 KiB */
constexpr unsigned STAGE_BYTES = X_TILE_BYTES + 2 * W_TILE_BYTES; /* X, W_hi, W_lo */
/* the stages (1,024-byte aligned for the swizzle atoms), then full[] and empty[] barriers */
constexpr size_t SMEM_BYTES = 1024 + STAGES * (size_t)STAGE_BYTES + 2 * STAGES * sizeof(uint64_t);
static_assert(SMEM_BYTES <= 227 * 1024, "fits sm_90 shared memory");

/* x[r][k] of a swizzled [rows][32] tile. */
__device__ __forceinline__ float tile_at(const float *tile, int r, int k) {
    return tile[r * 32 + ((((k >> 2) ^ (r & 7)) << 2) | (k & 3))];
}

/* ---- the kernel --------------------------------------------------------------------------- */

/* Y tile (blockIdx.x / tiles_n, blockIdx.x % tiles_n) of Y = beta Y + X W^T (+ bias). ACC: a
 * tc_accumulation; CHUNK: k-steps of 8 per fresh accumulator (1, 2; 4 = one stage for
 * TC_ACCUM_DIRECT, whose products all accumulate in acc). */
template <int ACC, int CHUNK>
__global__ void __launch_bounds__(THREADS, 1)
    tc_gemm_tma_kernel(const __grid_constant__ CUtensorMap map_x,
                       const __grid_constant__ CUtensorMap map_w_hi,
                       const __grid_constant__ CUtensorMap map_w_lo, int M, int N, int K,
                       const float *__restrict__ bias, float beta, float *__restrict__ Y,
                       size_t ldy, int tiles_n) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    static_assert(KSTEPS % CHUNK == 0, "whole chunks per stage");
    extern __shared__ unsigned char smem_raw[];
    unsigned char *const smem = reinterpret_cast<unsigned char *>(
        (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
    uint64_t *const full = reinterpret_cast<uint64_t *>(smem + STAGES * (size_t)STAGE_BYTES);
    uint64_t *const empty = full + STAGES;

    const int tid = threadIdx.x;
    const int warpgroup = tid / 128;
    const int m0 = (int)(blockIdx.x / tiles_n) * BM;
    const int n0 = (int)(blockIdx.x % tiles_n) * BN;
    const int ktiles = (K + BK - 1) / BK;

    if (tid == 0)
        init_stage_barriers(full, empty, STAGES, 4 * CONSUMERS);
    __syncthreads();

    if (warpgroup == 0) {
        /* producer: a few registers suffice */
        asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n");
        if (tid == 0) {
            for (int kt = 0; kt < ktiles; kt++) {
                const int s = kt % STAGES, round = kt / STAGES;
                if (round > 0)
                    barrier_wait(&empty[s], (round - 1) & 1); /* consumers done with it */
                unsigned char *stage = smem + s * (size_t)STAGE_BYTES;
                barrier_arrive_expect(&full[s], STAGE_BYTES);
                copy_tile(stage, &map_x, kt * BK, m0, &full[s]);
                copy_tile(stage + X_TILE_BYTES, &map_w_hi, kt * BK, n0, &full[s]);
                copy_tile(stage + X_TILE_BYTES + W_TILE_BYTES, &map_w_lo, kt * BK, n0, &full[s]);
            }
        }
        return;
    }

    asm volatile("setmaxnreg.inc.sync.aligned.u32 160;\n"); /* (65,536 - 128 x 24) / 384 */
    const int lane = tid & 31, warp = (tid >> 5) & 3;       /* warp within the warpgroup */
    const int g = lane >> 2, t = lane & 3;
    const int row = (warpgroup - 1) * 64 + warp * 16 + g; /* fragment row g in the tile */

    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; i++)
        acc[i] = 0.0f;
    float p[64]; /* the partial sums of one chunk */
#pragma unroll
    for (int i = 0; i < 64; i++)
        p[i] = 0.0f;

#pragma unroll 1
    for (int kt = 0; kt < ktiles; kt++) {
        const int s = kt % STAGES;
        barrier_wait(&full[s], (kt / STAGES) & 1);
        const unsigned char *stage = smem + s * (size_t)STAGE_BYTES;
        const float *xs = reinterpret_cast<const float *>(stage);
        const void *w_hi = stage + X_TILE_BYTES, *w_lo = stage + X_TILE_BYTES + W_TILE_BYTES;
#pragma unroll
        for (int c0 = 0; c0 < KSTEPS; c0 += CHUNK) {
            /* x = x_hi + x_lo of the chunk's fragments (rows g, g + 8; k t, t + 4 of each step) */
            uint32_t ahi[CHUNK][4], alo[CHUNK][4];
#pragma unroll
            for (int c = 0; c < CHUNK; c++) {
                const int k = 8 * (c0 + c) + t;
                split_tf32(tile_at(xs, row, k), ahi[c][0], alo[c][0]);
                split_tf32(tile_at(xs, row + 8, k), ahi[c][1], alo[c][1]);
                split_tf32(tile_at(xs, row, k + 4), ahi[c][2], alo[c][2]);
                split_tf32(tile_at(xs, row + 8, k + 4), ahi[c][3], alo[c][3]);
            }
            wgmma_fence();
            if constexpr (ACC == TC_ACCUM_DIRECT) {
#pragma unroll
                for (int c = 0; c < CHUNK; c++) {
                    wgmma_tf32(acc, alo[c], descriptor_sw128(w_hi, c0 + c), 1);
                    wgmma_tf32(acc, ahi[c], descriptor_sw128(w_lo, c0 + c), 1);
                    wgmma_tf32(acc, ahi[c], descriptor_sw128(w_hi, c0 + c), 1);
                }
                wgmma_commit();
                wgmma_wait<0>();
                pin(acc);
            } else {
#pragma unroll
                for (int c = 0; c < CHUNK; c++) /* fresh accumulator at the first */
                    wgmma_tf32(p, alo[c], descriptor_sw128(w_hi, c0 + c), c > 0);
#pragma unroll
                for (int c = 0; c < CHUNK; c++)
                    wgmma_tf32(p, ahi[c], descriptor_sw128(w_lo, c0 + c), 1);
#pragma unroll
                for (int c = 0; c < CHUNK; c++)
                    wgmma_tf32(p, ahi[c], descriptor_sw128(w_hi, c0 + c), 1);
                wgmma_commit();
                wgmma_wait<0>();
                pin(p);
                add_partials<ACC>(acc, p);
            }
#pragma unroll
            for (int c = 0; c < CHUNK; c++) {
                pin(ahi[c]);
                pin(alo[c]);
            }
        }
        __syncwarp();
        if (lane == 0)
            barrier_arrive(&empty[s]); /* this warp's reads of the stage are complete */
    }

    const int row0 = m0 + row;
#pragma unroll
    for (int j = 0; j < 16; j++)
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const int r = row0 + (q >> 1) * 8;
            const int col = n0 + 8 * j + 2 * t + (q & 1);
            if (r < M && col < N) {
                float *y = Y + (size_t)r * ldy + col;
                float v = acc[4 * j + q];
                if (ACC == TC_ACCUM_CHUNK_JAM && fabsf(v) < FLT_MIN)
                    v = 0.0f; /* the sticky bits of zero sums (subnormal results: zero) */
                if (bias)
                    v += bias[col];
                *y = beta == 0.0f ? v : fmaf(beta, *y, v);
            }
        }
#endif
}

/* ---- host side ---------------------------------------------------------------------------- */

/* Tensor map of the fp32 matrix a [rows][cols] (row stride ld elements), boxes of box_rows rows x
 * 32 columns in the 128-byte swizzle, zeros outside. */
bool encode_tiles(CUtensorMap *map, const float *a, int rows, int cols, size_t ld, int box_rows) {
    PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
    if (!encode)
        return false;
    const cuuint64_t dims[2] = {(cuuint64_t)(cols > 0 ? cols : 1), (cuuint64_t)rows};
    const cuuint64_t strides[1] = {(cuuint64_t)ld * sizeof(float)};
    const cuuint32_t box[2] = {(cuuint32_t)BK, (cuuint32_t)box_rows};
    const cuuint32_t element_strides[2] = {1, 1};
    return encode(map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 2, const_cast<float *>(a), dims, strides,
                  box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                  CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                  CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

template <int ACC, int CHUNK>
bool launch(int M, int N, int K, const CUtensorMap &map_x, const CUtensorMap &map_w_hi,
            const CUtensorMap &map_w_lo, const float *bias, float beta, float *Y, size_t ldy,
            cudaStream_t stream) {
    auto kernel = tc_gemm_tma_kernel<ACC, CHUNK>;
    /* the shared-memory opt-in is per device: once for each device used */
    static std::atomic<unsigned long long> configured{0};
    int device = 0;
    cudaGetDevice(&device);
    const unsigned long long bit = device >= 0 && device < 64 ? 1ull << device : 0;
    if (!bit || !(configured.load(std::memory_order_relaxed) & bit)) {
        if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)SMEM_BYTES) != cudaSuccess)
            return false;
        configured.fetch_or(bit, std::memory_order_relaxed);
    }
    const int tiles_n = (N + BN - 1) / BN;
    const size_t blocks = tc_gemm_nt_tma_blocks(M, N);
    kernel<<<(unsigned)blocks, THREADS, SMEM_BYTES, stream>>>(map_x, map_w_hi, map_w_lo, M, N, K,
                                                              bias, beta, Y, ldy, tiles_n);
    return true;
}

template <int ACC>
bool launch_chunk(int chunk, int M, int N, int K, const CUtensorMap &mx, const CUtensorMap &mh,
                  const CUtensorMap &ml, const float *bias, float beta, float *Y, size_t ldy,
                  cudaStream_t stream) {
    switch (chunk) {
    case 1:
        return launch<ACC, 1>(M, N, K, mx, mh, ml, bias, beta, Y, ldy, stream);
    default:
        return launch<ACC, 2>(M, N, K, mx, mh, ml, bias, beta, Y, ldy, stream);
    }
}

} // namespace

extern "C" int tc_gemm_nt_tma(tc_accumulation accumulation, int chunk, int rows, int out, int K,
                              const float *X, size_t ldx, const float *W_hi, const float *W_lo,
                              size_t ldw, const float *bias, float beta, float *Y, size_t ldy,
                              cudaStream_t stream) {
    if (!device_is_sm90() || !tensor_map_encoder() || !aligned16(X) || !aligned16(W_hi) ||
        !aligned16(W_lo) || ldx % 4 != 0 || ldw % 4 != 0 || K < 0)
        return 0;
    if (rows <= 0 || out <= 0)
        return 1;
    CUtensorMap map_x, map_w_hi, map_w_lo;
    if (!encode_tiles(&map_x, X, rows, K, ldx, BM) ||
        !encode_tiles(&map_w_hi, W_hi, out, K, ldw, BN) ||
        !encode_tiles(&map_w_lo, W_lo, out, K, ldw, BN))
        return 0;
    switch (accumulation) {
    case TC_ACCUM_CHUNK:
        return launch_chunk<TC_ACCUM_CHUNK>(chunk, rows, out, K, map_x, map_w_hi, map_w_lo, bias,
                                            beta, Y, ldy, stream);
    case TC_ACCUM_DIRECT:
        return launch<TC_ACCUM_DIRECT, KSTEPS>(rows, out, K, map_x, map_w_hi, map_w_lo, bias, beta,
                                               Y, ldy, stream);
    default:
        return launch_chunk<TC_ACCUM_CHUNK_JAM>(chunk, rows, out, K, map_x, map_w_hi, map_w_lo,
                                                bias, beta, Y, ldy, stream);
    }
}

extern "C" size_t tc_gemm_nt_tma_blocks(int rows, int out) {
    if (rows <= 0 || out <= 0)
        return 0;
    return (size_t)((rows + BM - 1) / BM) * (size_t)((out + BN - 1) / BN);
}
