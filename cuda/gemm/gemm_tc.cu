/* gemm_tc.cu - split-precision ("3xTF32") GEMM on the tensor cores for sm_90 (API and shapes:
 * gemm_tc.h). One kernel template serves NT and NN, aligned and unaligned operands, and the
 * three accumulation schemes.
 *
 * Tiling: a block of 256 threads (8 warps) computes a 128 (rows) x 128 (outputs) tile of Y;
 * the warps form a 4 (rows) x 2 (outputs) grid, each owning 32 x 64 = 2 x 8 mma tiles of
 * m16n8. K advances in tiles of 32 through a 3-stage cp.async pipeline in dynamic shared
 * memory (X tile [128][36], W_hi and W_lo tiles [128][36] (NT) or [32][136] (NN); the padding
 * makes every fragment load conflict-free and keeps rows 16-byte aligned). Out-of-range rows,
 * columns and k are zero-filled by the copies (src-size < cp-size), so edge tiles need no other
 * special case. The linear block index runs over output tiles fastest, so the blocks resident
 * at one time share X rows in L2. One block per SM (162 KiB of shared memory for NT, 156 KiB for
 * NN).
 *
 * Split: X is copied to shared memory as fp32 and split in registers when loaded into mma
 * fragments: x_hi = cvt.rna.tf32(x), x_lo = cvt.rna.tf32(x - x_hi) (x - x_hi is exact). The
 * weights come pre-split (tc_split_weights, once at upload): splitting them here would cost
 * 3 more instructions per fragment element in every k-step of every block, for a weight that
 * never changes.
 *
 * Products: x_lo w_hi + x_hi w_lo + x_hi w_hi per k-step of 8 with
 * mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 (the small terms first); x_lo w_lo is
 * dropped (2^-22 relative).
 *
 * Accumulation, and why: a Hopper tf32 mma forms C + sum of its 8 products in a fixed-point
 * sum aligned to the largest term (25 fraction bits, each term truncated) and rounds the
 * result to fp32 toward zero (the bit-accurate model of microsoft/MMA-Sim). Accumulating a
 * whole K in the mma accumulator (TC_ACCUM_DIRECT; presumably cuBLAS's way) therefore loses about
 * half an ulp of the running sum per k-step, always toward zero: a shrink of ~K/8 x 2^-24 relative
 * (~5e-6 at K = 768), the energy bias seen with cuBLAS 3xTF32. Here each k-chunk of
 * KCHUNK = 8 (one mma k-step; three mma per output tile) goes into a fresh zero accumulator, so
 * the truncation is relative to the chunk's partial p, not to the running sum, and p is added
 * to the fp32 accumulator with an ordinary round-to-nearest add. The final toward-zero rounding
 * of p still biases each partial by -ulp(p)/2 on average (-4e-8 of the result for same-sign
 * data: TC_ACCUM_CHUNK), so by default (TC_ACCUM_CHUNK_JAM) p is first replaced by
 * p + ulp(p)/2 rounded to nearest even, i.e. p plus one ulp when its last bit is set: on
 * average +ulp(p)/2, which cancels the truncation (an exact p with a clear last bit, e.g.
 * small-integer data, stays exact). KCHUNK = 8 is the smallest chunk an m16n8k8 mma allows;
 * a longer chunk (16) feeds the first step's truncated sum into the second and doubles the
 * residual bias, a shorter one needs zero-padded mma. A simulation of one output with the
 * MMA-Sim model (K = 768, U(-1,1) or U(0,1) data) gives relative bias/shrink: fp32 FMA
 * ~1e-9 (noise), DIRECT -4.6e-6 (random signs) / -8.4e-6 (positive), CHUNK -4e-8,
 * CHUNK_JAM +1e-9..+4e-9; max errors 4e-7 (CHUNK, CHUNK_JAM) vs 1e-6 (fp32).
 *
 * Costs per output tile and k-step: 3 mma, plus 4 fp32 adds (CHUNK) or 4 x (and, fma, add)
 * (CHUNK_JAM). */
#include "common.cuh"
#include "gemm_tc.h"
#include "gemm_tc_common.cuh"

#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace {

constexpr int BM = 128;          /* rows of Y per block */
constexpr int BN = 128;          /* outputs (columns of Y) per block */
constexpr int BK = 32;           /* k per pipeline stage */
constexpr int STAGES = 3;        /* cp.async pipeline depth */
constexpr int THREADS = 256;     /* 8 warps */
constexpr int WARPS_M = 4;       /* warp grid: 4 along rows ... */
constexpr int WARPS_N = 2;       /* ... x 2 along outputs */
constexpr int WM = BM / WARPS_M; /* 32 rows per warp */
constexpr int WN = BN / WARPS_N; /* 64 outputs per warp */
constexpr int MI = WM / 16;      /* m16 tiles per warp */
constexpr int NI = WN / 8;       /* n8 tiles per warp */
constexpr int KCHUNK = 8;        /* k per fresh partial accumulator (one mma k-step) */
constexpr int LDA = BK + 4;      /* X tile [BM][LDA] */
constexpr int LDB_T = BK + 4;    /* NT weight tile [BN][LDB_T] */
constexpr int LDB_N = BN + 8;    /* NN weight tile [BK][LDB_N] */
constexpr int A_FLOATS = BM * LDA;

static_assert(WARPS_M * WARPS_N * 32 == THREADS, "warp grid");
static_assert(BK % KCHUNK == 0 && KCHUNK == 8, "one m16n8k8 step per chunk");
static_assert((LDA * 4) % 16 == 0 && (LDB_T * 4) % 16 == 0 && (LDB_N * 4) % 16 == 0,
              "16-byte aligned shared rows");

/* Shared-memory layout of one pipeline stage: X tile, then the W_hi and W_lo tiles. */
template <bool NN> struct Stage {
    static constexpr int B_FLOATS = NN ? BK * LDB_N : BN * LDB_T;
    static constexpr int FLOATS = A_FLOATS + 2 * B_FLOATS;
    static constexpr size_t SMEM_BYTES = sizeof(float) * STAGES * FLOATS;
    static_assert(SMEM_BYTES <= 227 * 1024, "fits sm_90 shared memory");
    static_assert((A_FLOATS * 4) % 16 == 0 && (B_FLOATS * 4) % 16 == 0, "16-byte aligned tiles");
};

/* ---- PTX helpers ------------------------------------------------------------------------- */

/* d = a b + c for one m16n8k8 tile (warp-wide). Fragments (g = lane / 4, t = lane % 4):
 * a[0] = A[g][t], a[1] = A[g+8][t], a[2] = A[g][t+4], a[3] = A[g+8][t+4];
 * b[0] = B[k=t][n=g], b[1] = B[k=t+4][n=g];
 * c, d: [0] = C[g][2t], [1] = C[g][2t+1], [2] = C[g+8][2t], [3] = C[g+8][2t+1]. */
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4],
                                         const uint32_t (&b)[2], const float (&c)[4]) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
          "f"(c[2]), "f"(c[3]));
}

/* ---- end of PTX helpers ------------------------------------------------------------------ */

/* Copies the R x C tile at (r0, c0) of the row-major matrix g (stride ld, valid rows < rlim,
 * columns < clim) into s (row stride LDS); entries outside the matrix become zeros. The empty
 * asm makes the row index opaque, so the compiler recomputes each source row address instead of
 * hoisting all of them (up to 48 64-bit pointers) out of the k loop, which cost registers and
 * spills. */
template <int R, int C, int LDS, bool ALIGNED>
__device__ __forceinline__ void load_tile(float *s, const float *g, size_t ld, int r0, int c0,
                                          int rlim, int clim, int tid) {
    if constexpr (ALIGNED) {
        constexpr int CHUNKS = C / 4; /* 16-byte chunks per row */
        static_assert(C % 4 == 0 && (R * CHUNKS) % THREADS == 0, "tile split");
#pragma unroll
        for (int i = 0; i < R * CHUNKS / THREADS; i++) {
            const int e = tid + i * THREADS;
            const int r = e / CHUNKS, c = (e % CHUNKS) * 4;
            int gr = r0 + r;
            asm volatile("" : "+r"(gr));
            const int gc = c0 + c;
            int bytes = 0;
            const float *src = g;
            if (gr < rlim && gc < clim) {
                bytes = 4 * min(4, clim - gc);
                src = g + (size_t)gr * ld + gc;
            }
            cp_async_16(s + r * LDS + c, src, bytes);
        }
    } else {
        static_assert((R * C) % THREADS == 0, "tile split");
#pragma unroll
        for (int i = 0; i < R * C / THREADS; i++) {
            const int e = tid + i * THREADS;
            const int r = e / C, c = e % C;
            int gr = r0 + r;
            asm volatile("" : "+r"(gr));
            const int gc = c0 + c;
            const bool in = gr < rlim && gc < clim;
            cp_async_4(s + r * LDS + c, in ? g + (size_t)gr * ld + gc : g, in ? 4 : 0);
        }
    }
}

/* Y tile (blockIdx.x / tiles_n, blockIdx.x % tiles_n) of Y = beta Y + X op(W). NN: W [K][N],
 * else W [N][K]. ALIGNED: X, W_hi, W_lo 16-byte aligned, ldx and ldw multiples of 4. ACC: a
 * tc_accumulation. */
template <bool NN, bool ALIGNED, int ACC>
__global__ void __launch_bounds__(THREADS, 1)
    tc_gemm_kernel(int M, int N, int K, const float *__restrict__ X, size_t ldx,
                   const float *__restrict__ Whi, const float *__restrict__ Wlo, size_t ldw,
                   float beta, float *__restrict__ Y, size_t ldy, int tiles_n) {
    extern __shared__ float4 smem_raw[];
    float *const smem = reinterpret_cast<float *>(smem_raw);
    constexpr int B_FLOATS = Stage<NN>::B_FLOATS;
    constexpr int STAGE = Stage<NN>::FLOATS;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int wm = warp / WARPS_N, wn = warp % WARPS_N;
    const int m0 = (int)(blockIdx.x / tiles_n) * BM;
    const int n0 = (int)(blockIdx.x % tiles_n) * BN;
    const int ktiles = (K + BK - 1) / BK;

    auto load_stage = [&](int stage, int kt) {
        float *as = smem + stage * STAGE;
        float *bh = as + A_FLOATS, *bl = bh + B_FLOATS;
        const int k0 = kt * BK;
        load_tile<BM, BK, LDA, ALIGNED>(as, X, ldx, m0, k0, M, K, tid);
        if constexpr (NN) {
            load_tile<BK, BN, LDB_N, ALIGNED>(bh, Whi, ldw, k0, n0, K, N, tid);
            load_tile<BK, BN, LDB_N, ALIGNED>(bl, Wlo, ldw, k0, n0, K, N, tid);
        } else {
            load_tile<BN, BK, LDB_T, ALIGNED>(bh, Whi, ldw, n0, k0, N, K, tid);
            load_tile<BN, BK, LDB_T, ALIGNED>(bl, Wlo, ldw, n0, k0, N, K, tid);
        }
    };

    float acc[MI][NI][4];
#pragma unroll
    for (int mi = 0; mi < MI; mi++)
#pragma unroll
        for (int ni = 0; ni < NI; ni++)
#pragma unroll
            for (int j = 0; j < 4; j++)
                acc[mi][ni][j] = 0.0f;

    auto compute_stage = [&](int stage) {
        const float *as = smem + stage * STAGE;
        const float *bh = as + A_FLOATS, *bl = bh + B_FLOATS;
#pragma unroll
        for (int kk = 0; kk < BK; kk += KCHUNK) {
            uint32_t ahi[MI][4], alo[MI][4];
#pragma unroll
            for (int mi = 0; mi < MI; mi++) {
                const float *a = as + (wm * WM + mi * 16 + g) * LDA + kk + t;
                split_tf32(a[0], ahi[mi][0], alo[mi][0]);
                split_tf32(a[8 * LDA], ahi[mi][1], alo[mi][1]);
                split_tf32(a[4], ahi[mi][2], alo[mi][2]);
                split_tf32(a[8 * LDA + 4], ahi[mi][3], alo[mi][3]);
            }
#pragma unroll
            for (int ni = 0; ni < NI; ni++) {
                const int n = wn * WN + ni * 8 + g;
                const int o0 = NN ? (kk + t) * LDB_N + n : n * LDB_T + kk + t;
                const int o1 = NN ? o0 + 4 * LDB_N : o0 + 4;
                const uint32_t bhi[2] = {__float_as_uint(bh[o0]), __float_as_uint(bh[o1])};
                const uint32_t blo[2] = {__float_as_uint(bl[o0]), __float_as_uint(bl[o1])};
#pragma unroll
                for (int mi = 0; mi < MI; mi++) {
                    if constexpr (ACC == TC_ACCUM_DIRECT) {
                        mma_tf32(acc[mi][ni], alo[mi], bhi, acc[mi][ni]);
                        mma_tf32(acc[mi][ni], ahi[mi], blo, acc[mi][ni]);
                        mma_tf32(acc[mi][ni], ahi[mi], bhi, acc[mi][ni]);
                    } else {
                        const float zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                        float p[4];
                        mma_tf32(p, alo[mi], bhi, zero);
                        mma_tf32(p, ahi[mi], blo, p);
                        mma_tf32(p, ahi[mi], bhi, p);
#pragma unroll
                        for (int j = 0; j < 4; j++)
                            acc[mi][ni][j] += ACC == TC_ACCUM_CHUNK_JAM ? jam_half_ulp(p[j]) : p[j];
                    }
                }
            }
        }
    };

    /* Pipeline: tiles 0..STAGES-2 in flight before the loop; at step kt tile kt has landed
     * (wait leaves at most STAGES-2 newer groups pending), the barrier publishes it and
     * retires every warp's reads of step kt-1, whose buffer then receives tile kt+STAGES-1.
     * Every step commits a group (possibly empty) so the group count stays in step. */
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < ktiles)
            load_stage(s, s);
        cp_async_commit();
    }
#pragma unroll 1
    for (int kt = 0; kt < ktiles; kt++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int next = kt + STAGES - 1;
        if (next < ktiles)
            load_stage(next % STAGES, next);
        cp_async_commit();
        compute_stage(kt % STAGES);
    }
    cp_async_wait<0>();

#pragma unroll
    for (int mi = 0; mi < MI; mi++)
#pragma unroll
        for (int ni = 0; ni < NI; ni++)
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int row = m0 + wm * WM + mi * 16 + g + (j >> 1) * 8;
                const int col = n0 + wn * WN + ni * 8 + 2 * t + (j & 1);
                if (row < M && col < N) {
                    float *y = Y + (size_t)row * ldy + col;
                    *y = beta == 0.0f ? acc[mi][ni][j] : fmaf(beta, *y, acc[mi][ni][j]);
                }
            }
}

__global__ void split_kernel(int rows, int cols, const float *__restrict__ w, size_t ld,
                             float *__restrict__ hi, float *__restrict__ lo) {
    const size_t total = (size_t)rows * cols;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t o = i / (size_t)cols * ld + i % (size_t)cols;
        uint32_t h, l;
        split_tf32(w[o], h, l);
        hi[o] = __uint_as_float(h);
        lo[o] = __uint_as_float(l & 0xffffe000u);
    }
}

/* ---- host side --------------------------------------------------------------------------- */

template <bool NN, bool ALIGNED, int ACC>
void launch(int M, int N, int K, const float *X, size_t ldx, const float *Whi, const float *Wlo,
            size_t ldw, float beta, float *Y, size_t ldy, cudaStream_t stream) {
    auto kernel = tc_gemm_kernel<NN, ALIGNED, ACC>;
    constexpr size_t smem = Stage<NN>::SMEM_BYTES;
    /* The shared-memory opt-in is per device (context): set once for each device used (a
     * cudaDeviceReset would drop it; umas never resets). */
    static std::atomic<unsigned long long> configured{0};
    int device = 0;
    cudaGetDevice(&device);
    const unsigned long long bit = device >= 0 && device < 64 ? 1ull << device : 0;
    if (!bit || !(configured.load(std::memory_order_relaxed) & bit)) {
        if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) ==
            cudaSuccess)
            configured.fetch_or(bit, std::memory_order_relaxed);
    }
    const int tiles_n = (N + BN - 1) / BN;
    const size_t blocks = (size_t)((M + BM - 1) / BM) * (size_t)tiles_n;
    kernel<<<(unsigned)blocks, THREADS, smem, stream>>>(M, N, K, X, ldx, Whi, Wlo, ldw, beta, Y,
                                                        ldy, tiles_n);
}

template <bool NN, bool ALIGNED>
void launch_acc(tc_accumulation acc, int M, int N, int K, const float *X, size_t ldx,
                const float *Whi, const float *Wlo, size_t ldw, float beta, float *Y, size_t ldy,
                cudaStream_t stream) {
    switch (acc) {
    case TC_ACCUM_CHUNK:
        launch<NN, ALIGNED, TC_ACCUM_CHUNK>(M, N, K, X, ldx, Whi, Wlo, ldw, beta, Y, ldy, stream);
        break;
    case TC_ACCUM_DIRECT:
        launch<NN, ALIGNED, TC_ACCUM_DIRECT>(M, N, K, X, ldx, Whi, Wlo, ldw, beta, Y, ldy, stream);
        break;
    default:
        launch<NN, ALIGNED, TC_ACCUM_CHUNK_JAM>(M, N, K, X, ldx, Whi, Wlo, ldw, beta, Y, ldy,
                                                stream);
        break;
    }
}

} // namespace

extern "C" void tc_gemm(int w_transposed, tc_accumulation accumulation, int rows, int n, int K,
                        const float *X, size_t ldx, const float *W_hi, const float *W_lo,
                        size_t ldw, float beta, float *Y, size_t ldy, cudaStream_t stream) {
    if (rows <= 0 || n <= 0 || K < 0)
        return;
    /* The 1-D grid holds up to 2^31 - 1 blocks: rows * n up to ~3.5e13. */
    const bool aligned =
        aligned16(X) && aligned16(W_hi) && aligned16(W_lo) && ldx % 4 == 0 && ldw % 4 == 0;
    if (w_transposed) {
        if (aligned)
            launch_acc<false, true>(accumulation, rows, n, K, X, ldx, W_hi, W_lo, ldw, beta, Y, ldy,
                                    stream);
        else
            launch_acc<false, false>(accumulation, rows, n, K, X, ldx, W_hi, W_lo, ldw, beta, Y,
                                     ldy, stream);
    } else {
        if (aligned)
            launch_acc<true, true>(accumulation, rows, n, K, X, ldx, W_hi, W_lo, ldw, beta, Y, ldy,
                                   stream);
        else
            launch_acc<true, false>(accumulation, rows, n, K, X, ldx, W_hi, W_lo, ldw, beta, Y, ldy,
                                    stream);
    }
}

extern "C" void tc_gemm_nt(int rows, int out, int K, const float *X, size_t ldx, const float *W_hi,
                           const float *W_lo, size_t ldw, float beta, float *Y, size_t ldy,
                           cudaStream_t stream) {
    tc_gemm(1, TC_ACCUM_CHUNK_JAM, rows, out, K, X, ldx, W_hi, W_lo, ldw, beta, Y, ldy, stream);
}

extern "C" void tc_gemm_nn(int rows, int cols, int K, const float *X, size_t ldx, const float *W_hi,
                           const float *W_lo, size_t ldw, float beta, float *Y, size_t ldy,
                           cudaStream_t stream) {
    tc_gemm(0, TC_ACCUM_CHUNK_JAM, rows, cols, K, X, ldx, W_hi, W_lo, ldw, beta, Y, ldy, stream);
}

extern "C" void tc_split_weights(int rows, int cols, const float *w, size_t ld, float *hi,
                                 float *lo, cudaStream_t stream) {
    if (rows <= 0 || cols <= 0)
        return;
    split_kernel<<<grid_for((size_t)rows * cols, 256), 256, 0, stream>>>(rows, cols, w, ld, hi, lo);
}
