/* tma.cuh - Hopper (sm_90a) building blocks of the warp-specialized tensor-core GEMMs
 * (gemm_tc_tma.cu, gemm_i8_tma.cu): mbarriers, bulk tensor copies (TMA) and their tensor-map
 * encoder, the shared-memory matrix descriptor of the 128-byte swizzle, and the "is this an
 * sm_90 device" test. Internal (in an anonymous namespace). */
#ifndef UMAS_CUDA_TMA_CUH
#define UMAS_CUDA_TMA_CUH

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <mutex>

namespace {

/* ---- mbarriers and bulk tensor copies (PTX ISA: mbarrier, cp.async.bulk.tensor) ----------- */

__device__ __forceinline__ unsigned smem_address(const void *p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void barrier_init(uint64_t *bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_address(bar)), "r"(count)
                 : "memory");
}

/* Makes the barriers' initialisation visible to the copy engine (and the other threads, after
 * the block barrier that follows). */
__device__ __forceinline__ void barrier_init_fence() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

/* The barriers of a pipeline of `stages` stages: full[s] completes on the producer's arrival
 * and its copies' bytes, empty[s] on one arrival of each of the `consumers` consumer warps. */
__device__ __forceinline__ void init_stage_barriers(uint64_t *full, uint64_t *empty, int stages,
                                                    unsigned consumers) {
    for (int s = 0; s < stages; s++) {
        barrier_init(&full[s], 1);
        barrier_init(&empty[s], consumers);
    }
    barrier_init_fence();
}

/* One arrival that also announces `bytes` of copies completing on this barrier's phase. */
__device__ __forceinline__ void barrier_arrive_expect(uint64_t *bar, unsigned bytes) {
    asm volatile(
        "mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_address(bar)),
        "r"(bytes)
        : "memory");
}

__device__ __forceinline__ void barrier_arrive(uint64_t *bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_address(bar)) : "memory");
}

/* Waits until the barrier's phase with this parity (0, 1, 0, ... for its rounds) completed. */
__device__ __forceinline__ void barrier_wait(uint64_t *bar, unsigned parity) {
    unsigned done = 0;
    do {
        asm volatile("{\n.reg .pred p;\n"
                     "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     "selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(smem_address(bar)), "r"(parity)
                     : "memory");
    } while (!done);
}

/* Copies the box ([BM][32] or [BN][32]) at (k, row) of `map` into dst; completes on bar. */
__device__ __forceinline__ void copy_tile(void *dst, const CUtensorMap *map, int k, int row,
                                          uint64_t *bar) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes "
                 "[%0], [%1, {%2, %3}], [%4];\n" ::"r"(smem_address(dst)),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(k), "r"(row), "r"(smem_address(bar))
                 : "memory");
}

/* Descriptor of a K-major tile (A or B) whose rows of ROW_BYTES (128, 64 or 32) bytes are in
 * the swizzle of that width (PTX ISA, "matrix descriptor"): start address / 16; leading byte
 * offset unused (1); stride byte offset 8 ROW_BYTES / 16 between 8-row atoms; layout type 1, 2, 3
 * (128-, 64-, 32-byte swizzle) in bits 62-63. k-step s of a stage starts 32 s bytes into the rows
 * (the hardware applies the swizzle to the computed addresses). */
template <int ROW_BYTES>
__device__ __forceinline__ uint64_t descriptor_swizzled(const void *tile, int kstep) {
    static_assert(ROW_BYTES == 128 || ROW_BYTES == 64 || ROW_BYTES == 32, "a swizzle width");
    constexpr uint64_t layout = ROW_BYTES == 128 ? 1 : ROW_BYTES == 64 ? 2 : 3;
    const unsigned address = smem_address(tile) + 32u * (unsigned)kstep;
    uint64_t d = (uint64_t)((address & 0x3ffffu) >> 4);
    d |= (uint64_t)1 << 16;
    d |= (uint64_t)(8 * ROW_BYTES >> 4) << 32;
    d |= layout << 62;
    return d;
}

__device__ __forceinline__ uint64_t descriptor_sw128(const void *tile, int kstep) {
    return descriptor_swizzled<128>(tile, kstep);
}

/* Copies the 3-d box at (k, row, plane) of `map` into dst; completes on bar. */
__device__ __forceinline__ void copy_box_3d(void *dst, const CUtensorMap *map, int k, int row,
                                            int plane, uint64_t *bar) {
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes "
                 "[%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(smem_address(dst)),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(k), "r"(row), "r"(plane),
                 "r"(smem_address(bar))
                 : "memory");
}

/* ---- host side ---------------------------------------------------------------------------- */

/* The driver's cuTensorMapEncodeTiled, through the runtime (no link to libcuda); null when the
 * driver has none. */
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
    static std::once_flag once;
    static PFN_cuTensorMapEncodeTiled_v12000 encode = nullptr;
    std::call_once(once, [] {
        void *fn = nullptr;
        cudaDriverEntryPointQueryResult found;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000,
                                             cudaEnableDefault, &found) == cudaSuccess &&
            found == cudaDriverEntryPointSuccess)
            encode = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
    });
    return encode;
}

/* Whether the current device is compute capability 9.0, asked once per device. The answer is
 * published before the "known" bit (release), and read after it (acquire). */
bool device_is_sm90() {
    static std::atomic<unsigned long long> known{0}, yes{0};
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64)
        return false;
    const unsigned long long bit = 1ull << device;
    if (!(known.load(std::memory_order_acquire) & bit)) {
        int major = 0, minor = 0;
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
        if (major == 9 && minor == 0)
            yes.fetch_or(bit, std::memory_order_relaxed);
        known.fetch_or(bit, std::memory_order_release);
    }
    return (yes.load(std::memory_order_relaxed) & bit) != 0;
}

} // namespace

#endif
