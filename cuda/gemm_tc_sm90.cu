/* gemm_tc_sm90.cu - the split-precision ("3xTF32") NT GEMM on Hopper's warpgroup MMA (wgmma):
 * Y[rows][out] = beta Y + X[rows][K] W^T (+ bias), W [out][K] in plain fp32 (gemm_tc.h).
 * Same products and the same accumulation schemes as the mma.sync kernel of gemm_tc.cu (read its
 * header comment first: why fresh accumulators per k-step of 8, and the half-ulp correction);
 * this file changes how the tensor cores are fed.
 *
 * Tiling: a block of 3 warpgroups (384 threads) computes a 192 (rows) x 128 (outputs) tile of Y;
 * warpgroup w owns rows [64 w, 64 w + 64) and issues one m64n128k8 wgmma per product and k-step.
 * K advances in tiles of 32 through a 3-stage cp.async pipeline in dynamic shared memory:
 *   X tile  [192][36] floats, read by the threads themselves into wgmma's register operand A
 *           (the split x = x_hi + x_lo happens there, in registers);
 *   W tile  [16][8][8][4] floats: 16-byte chunks (4 consecutive k of one output row) grouped
 *           into "core matrices" of 8 outputs x 4 k = 128 contiguous bytes, 8 per group of 8
 *           outputs. After the stage lands, the threads split it in place into its TF32 high
 *           part and a second tile with the low part (the weights travel once, as fp32: loading
 *           pre-split W_hi and W_lo instead measured 1.6 ms of pure loading where the whole
 *           product takes 2.6). wgmma reads both through shared-memory descriptors as B,
 *           K-major without swizzle: core matrices 128 bytes apart along k (leading byte
 *           offset), 1024 bytes apart along the outputs (stride byte offset).
 * 145 KiB of shared memory: one block per SM; the three warpgroups take turns on the tensor
 * cores (two add their partial sums while the third's wgmma runs).
 *
 * Per k-step of 8 and warpgroup: p = x_lo w_hi (fresh accumulator: scale-d = 0), p += x_hi w_lo,
 * p += x_hi w_hi (three wgmma into the same 64 registers), then acc += p (or jam(p)) in fp32, as
 * in gemm_tc.cu.
 *
 * Measured on the H200 (umas-gemm-check, 156,000 x 768 x 640): 2.56 ms (60 TFLOP/s, 1.2x cuBLAS
 * SGEMM) with TC_ACCUM_CHUNK, 3.26 ms with the half-ulp correction. Loading the tiles alone takes
 * 1.27 ms and the tensor-core work alone 1.8 ms: the block-wide barriers of each stage keep them
 * from overlapping fully. A producer warp with bulk (TMA) copies and mbarriers, and W tiles
 * multicast to a cluster of blocks, are what a faster kernel would add.
 *
 * Conditions (else tc_gemm_nt_sm90 returns 0 and does nothing): a device of compute capability
 * 9.0, X and W 16-byte aligned, ldx and ldw multiples of 4. Any rows, out, K: edge tiles are
 * zero-filled by the copies. wgmma exists only in the architecture-specific sm_90a target: the
 * file is built for it alone (cuda/CMakeLists.txt), and elsewhere the kernel body is empty. */
#include "gemm_tc.h"
#include "gemm_tc_common.cuh"
#include "wgmma.cuh"

#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace {

constexpr int BN = 128;                       /* outputs per block: the n of one wgmma */
constexpr int BK = 32;                        /* k per pipeline stage */
constexpr int KSTEP = 8;                      /* k of one wgmma (tf32) */
constexpr int LDA = BK + 4;                   /* X tile [BM][LDA]: conflict-free fragment loads */
constexpr int B_FLOATS = BN * BK;             /* 4,096: W tile [BN/8][BK/4][8][4] */
constexpr int CHUNKS = BK / 4;                /* 16-byte chunks per row of a tile */
constexpr unsigned KCHUNK_STRIDE_BYTES = 128; /* between core matrices along k */
constexpr unsigned CORE_STRIDE_BYTES = CHUNKS * 128; /* between core matrices along outputs */

/* Warpgroups per block. Measured on the H200 (umas-gemm-check, 156,000 x 768 x 640, chunked
 * accumulation): 3 warpgroups with single-buffered partials 2.56 ms; 2 warpgroups 3.17 ms, or
 * 2.88 ms with the partials double-buffered (the next k-step's wgmma issued before this one's
 * sums). Three fit in the registers only single-buffered (168 per thread). */
constexpr int WARPGROUPS = 3;

/* Tile shape and shared memory for WGS warpgroups (64 rows each). */
template <int WGS> struct Shape {
    static constexpr int THREADS = 128 * WGS;
    static constexpr int BM = 64 * WGS; /* rows of Y per block */
    static constexpr int A_FLOATS = BM * LDA;
    static constexpr int STAGE_FLOATS = A_FLOATS + B_FLOATS; /* X tile, then W tile */
    static constexpr int STAGES = WGS == 2 ? 4 : 3;          /* cp.async pipeline depth */
    /* the stages, then the k-step's W_lo tile (one: refilled every stage) */
    static constexpr size_t SMEM_BYTES = sizeof(float) * (STAGES * STAGE_FLOATS + B_FLOATS);
    static_assert(SMEM_BYTES <= 227 * 1024, "fits sm_90 shared memory");
    static_assert((A_FLOATS * 4) % 16 == 0, "16-byte aligned tiles");
};
static_assert(BK % KSTEP == 0, "whole k-steps per stage");

/* Shared-memory descriptors (the wgmma helpers are in wgmma.cuh). */

/* Shared-memory matrix descriptor of a K-major B tile without swizzle (PTX ISA, "matrix
 * descriptor"): start address, leading byte offset (along k), stride byte offset (along the
 * outputs), all in 16-byte units; layout type 0 (no swizzle) in bits 62-63. */
__device__ __forceinline__ uint64_t b_descriptor(const float *tile) {
    const unsigned address = (unsigned)__cvta_generic_to_shared(tile);
    uint64_t d = (uint64_t)((address & 0x3ffffu) >> 4);
    d |= (uint64_t)(KCHUNK_STRIDE_BYTES >> 4) << 16;
    d |= (uint64_t)(CORE_STRIDE_BYTES >> 4) << 32;
    return d;
}

/* One stage's tiles: X rows [m0, m0 + BM) and W rows (outputs) [n0, n0 + BN), k [k0, k0 + BK);
 * entries outside the matrices are zero-filled (src-size 0..16 bytes). */
template <int WGS>
__device__ __forceinline__ void load_stage(float *stage, const float *X, size_t ldx, const float *W,
                                           size_t ldw, int M, int N, int K, int m0, int n0, int k0,
                                           int tid) {
    using S = Shape<WGS>;
    float *xs = stage, *ws = stage + S::A_FLOATS;
    /* X: 8 threads per row of 128 bytes, into [BM][LDA] */
#pragma unroll
    for (int i = 0; i < S::BM * CHUNKS / S::THREADS; i++) {
        const int e = tid + i * S::THREADS;
        const int r = e / CHUNKS, c = (e % CHUNKS) * 4;
        int gr = m0 + r;
        asm volatile("" : "+r"(gr)); /* keep the address math inside the loop (gemm_tc.cu) */
        const int gc = k0 + c;
        int bytes = 0;
        const float *src = X;
        if (gr < M && gc < K) {
            bytes = 4 * min(4, K - gc);
            src = X + (size_t)gr * ldx + gc;
        }
        cp_async_16(xs + r * LDA + c, src, bytes);
    }
    /* W: 8 threads read one output row's 128 bytes; a warp writes 4 x 8 16-byte slots of 4
     * core matrices (conflict-free). */
    for (int e = tid; e < BN * CHUNKS; e += S::THREADS) {
        const int n = e / CHUNKS, kc = e % CHUNKS;
        int gn = n0 + n;
        asm volatile("" : "+r"(gn));
        const int gc = k0 + 4 * kc;
        int bytes = 0;
        const float *src = W;
        if (gn < N && gc < K) {
            bytes = 4 * min(4, K - gc);
            src = W + (size_t)gn * ldw + gc;
        }
        cp_async_16(ws + ((n >> 3) * CHUNKS + kc) * 32 + (n & 7) * 4, src, bytes);
    }
}

/* The stage's W tile becomes its TF32 high part in place and lo receives the low part, as
 * split_tf32: w_hi = tf32(w), w_lo = tf32(w - w_hi), both rounded to nearest. (Taking w_hi = w
 * with its 13 low bits cleared, i.e. truncated, measured a 20x larger bias of the sums.) Same
 * layout; every thread takes float4s. */
template <int WGS> __device__ __forceinline__ void split_w_tile(float *w, float *lo, int tid) {
    float4 *w4 = reinterpret_cast<float4 *>(w), *lo4 = reinterpret_cast<float4 *>(lo);
    for (int i = tid; i < B_FLOATS / 4; i += Shape<WGS>::THREADS) {
        float4 v = w4[i], l;
        float *pv = &v.x, *pl = &l.x;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            uint32_t hi, lo;
            split_tf32(pv[j], hi, lo);
            pv[j] = __uint_as_float(hi);
            pl[j] = __uint_as_float(lo);
        }
        w4[i] = v;
        lo4[i] = l;
    }
}

/* Y tile (blockIdx.x / tiles_n, blockIdx.x % tiles_n) of Y = beta Y + X W^T (+ bias). ACC: a
 * tc_accumulation; WGS: warpgroups (64 rows each). */
template <int ACC, int WGS>
__global__ void __launch_bounds__(Shape<WGS>::THREADS, 1)
    tc_gemm_sm90_kernel(int M, int N, int K, const float *__restrict__ X, size_t ldx,
                        const float *__restrict__ W, size_t ldw, const float *__restrict__ bias,
                        float beta, float *__restrict__ Y, size_t ldy, int tiles_n) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    using S = Shape<WGS>;
    constexpr int STAGES = S::STAGES;
    extern __shared__ float4 smem_raw[];
    float *const smem = reinterpret_cast<float *>(smem_raw);
    float *const w_lo = smem + STAGES * S::STAGE_FLOATS;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int row_in_tile = (warp >> 2) * 64 + (warp & 3) * 16 + g; /* fragment row g */
    const int m0 = (int)(blockIdx.x / tiles_n) * S::BM;
    const int n0 = (int)(blockIdx.x % tiles_n) * BN;
    const int ktiles = (K + BK - 1) / BK;

    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; i++)
        acc[i] = 0.0f;
    float p[64]; /* the partial sums of one k-step */
#pragma unroll
    for (int i = 0; i < 64; i++)
        p[i] = 0.0f;

    for (int s = 0; s < STAGES - 1; s++) {
        if (s < ktiles)
            load_stage<WGS>(smem + s * S::STAGE_FLOATS, X, ldx, W, ldw, M, N, K, m0, n0, s * BK,
                            tid);
        cp_async_commit();
    }
#pragma unroll 1
    for (int kt = 0; kt < ktiles; kt++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads(); /* tile kt landed; every warpgroup is done with tile kt - 1 and w_lo */
        const int next = kt + STAGES - 1;
        if (next < ktiles)
            load_stage<WGS>(smem + (next % STAGES) * S::STAGE_FLOATS, X, ldx, W, ldw, M, N, K, m0,
                            n0, next * BK, tid);
        cp_async_commit();

        const float *xs = smem + (kt % STAGES) * S::STAGE_FLOATS;
        float *const w_hi = smem + (kt % STAGES) * S::STAGE_FLOATS + S::A_FLOATS;
        split_w_tile<WGS>(w_hi, w_lo, tid);
        fence_proxy_async(); /* the tiles, written by this thread, visible to the tensor cores */
        __syncthreads();

        uint32_t ahi[2][4], alo[2][4]; /* two sets: the next step's split overlaps this one's */
#pragma unroll
        for (int s = 0; s < BK / KSTEP; s++) {
            const int b = s & 1;
            const float *a = xs + row_in_tile * LDA + s * KSTEP + t;
            split_tf32(a[0], ahi[b][0], alo[b][0]);
            split_tf32(a[8 * LDA], ahi[b][1], alo[b][1]);
            split_tf32(a[4], ahi[b][2], alo[b][2]);
            split_tf32(a[8 * LDA + 4], ahi[b][3], alo[b][3]);
            /* k-step s is k-chunks 2s, 2s + 1 of the [BN/8][BK/4][8][4] tiles */
            const uint64_t dhi = b_descriptor(w_hi + 2 * s * 32);
            const uint64_t dlo = b_descriptor(w_lo + 2 * s * 32);
            wgmma_fence();
            if constexpr (ACC == TC_ACCUM_DIRECT) {
                wgmma_tf32(acc, alo[b], dhi, 1);
                wgmma_tf32(acc, ahi[b], dlo, 1);
                wgmma_tf32(acc, ahi[b], dhi, 1);
                wgmma_commit();
                wgmma_wait<0>();
                pin(acc);
            } else {
                wgmma_tf32(p, alo[b], dhi, 0); /* fresh accumulator */
                wgmma_tf32(p, ahi[b], dlo, 1);
                wgmma_tf32(p, ahi[b], dhi, 1);
                wgmma_commit();
                wgmma_wait<0>();
                pin(p);
                add_partials<ACC>(acc, p);
            }
            pin(ahi[b]);
            pin(alo[b]);
        }
    }
    cp_async_wait<0>();

    const int row0 = m0 + row_in_tile;
#pragma unroll
    for (int j = 0; j < 16; j++)
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const int row = row0 + (q >> 1) * 8;
            const int col = n0 + 8 * j + 2 * t + (q & 1);
            if (row < M && col < N) {
                float *y = Y + (size_t)row * ldy + col;
                float v = acc[4 * j + q];
                if (bias)
                    v += bias[col];
                *y = beta == 0.0f ? v : fmaf(beta, *y, v);
            }
        }
#endif
}

template <int ACC>
void launch(int M, int N, int K, const float *X, size_t ldx, const float *W, size_t ldw,
            const float *bias, float beta, float *Y, size_t ldy, cudaStream_t stream) {
    using S = Shape<WARPGROUPS>;
    auto kernel = tc_gemm_sm90_kernel<ACC, WARPGROUPS>;
    /* The shared-memory opt-in is per device: once for each device used. */
    static std::atomic<unsigned long long> configured{0};
    int device = 0;
    cudaGetDevice(&device);
    const unsigned long long bit = device >= 0 && device < 64 ? 1ull << device : 0;
    if (!bit || !(configured.load(std::memory_order_relaxed) & bit)) {
        if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)S::SMEM_BYTES) == cudaSuccess)
            configured.fetch_or(bit, std::memory_order_relaxed);
    }
    const int tiles_n = (N + BN - 1) / BN;
    const size_t blocks = (size_t)((M + S::BM - 1) / S::BM) * (size_t)tiles_n;
    kernel<<<(unsigned)blocks, S::THREADS, S::SMEM_BYTES, stream>>>(M, N, K, X, ldx, W, ldw, bias,
                                                                    beta, Y, ldy, tiles_n);
}

bool aligned16(const void *p) {
    return ((uintptr_t)p & 15u) == 0;
}

/* Whether the current device runs the wgmma kernel (compute capability 9.0), asked once per
 * device. */
bool device_is_sm90() {
    static std::atomic<unsigned long long> known{0}, yes{0};
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64)
        return false;
    const unsigned long long bit = 1ull << device;
    if (!(known.load(std::memory_order_relaxed) & bit)) {
        int major = 0, minor = 0;
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
        if (major == 9 && minor == 0)
            yes.fetch_or(bit, std::memory_order_relaxed);
        known.fetch_or(bit, std::memory_order_relaxed);
    }
    return (yes.load(std::memory_order_relaxed) & bit) != 0;
}

} // namespace

extern "C" int tc_gemm_nt_sm90(tc_accumulation accumulation, int rows, int out, int K,
                               const float *X, size_t ldx, const float *W, size_t ldw,
                               const float *bias, float beta, float *Y, size_t ldy,
                               cudaStream_t stream) {
    if (!device_is_sm90() || !aligned16(X) || !aligned16(W) || ldx % 4 != 0 || ldw % 4 != 0)
        return 0;
    if (rows <= 0 || out <= 0 || K < 0)
        return 1;
    switch (accumulation) {
    case TC_ACCUM_CHUNK:
        launch<TC_ACCUM_CHUNK>(rows, out, K, X, ldx, W, ldw, bias, beta, Y, ldy, stream);
        break;
    case TC_ACCUM_DIRECT:
        launch<TC_ACCUM_DIRECT>(rows, out, K, X, ldx, W, ldw, bias, beta, Y, ldy, stream);
        break;
    default:
        launch<TC_ACCUM_CHUNK_JAM>(rows, out, K, X, ldx, W, ldw, bias, beta, Y, ldy, stream);
        break;
    }
    return 1;
}
