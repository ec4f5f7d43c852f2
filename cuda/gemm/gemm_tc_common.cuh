/* gemm_tc_common.cuh - device helpers shared by the split-precision GEMM kernels (gemm_tc.cu,
 * gemm_tc_tma.cu): the alignment test, cp.async copies, the TF32 split of an fp32 value, the
 * half-ulp corrections. Internal to those two files (static inline, in an anonymous namespace). */
#ifndef UMAS_CUDA_GEMM_TC_COMMON_CUH
#define UMAS_CUDA_GEMM_TC_COMMON_CUH

#include <cstdint>

namespace {

/* Whether p is 16-byte aligned (what the 16-byte copies need). */
__host__ __device__ __forceinline__ bool aligned16(const void *p) {
    return ((uintptr_t)p & 15u) == 0;
}

/* 16-byte asynchronous copy global -> shared; bytes past src_bytes (0..16) are zero-filled and
 * not read. dst, src 16-byte aligned. */
__device__ __forceinline__ void cp_async_16(float *dst, const float *src, int src_bytes) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src),
                 "r"(src_bytes)
                 : "memory");
}

/* 4-byte asynchronous copy; src_bytes 0 writes a zero without reading. */
__device__ __forceinline__ void cp_async_4(float *dst, const float *src, int src_bytes) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(src_bytes)
                 : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

/* Waits until at most N of this thread's committed copy groups are still in flight. */
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* x = hi + lo + O(2^-22 |x|): hi = tf32(x) rounded to nearest, lo = tf32(x - hi) (as fp32 bit
 * patterns with the 13 low bits clear; the mask makes x - hi exact whatever cvt leaves there). */
__device__ __forceinline__ void split_tf32(float x, uint32_t &hi, uint32_t &lo) {
    uint32_t h, l;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(h) : "f"(x));
    h &= 0xffffe000u;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(l) : "f"(x - __uint_as_float(h)));
    hi = h;
    lo = l;
}

/* p + ulp(p)/2 rounded to nearest even: p plus one ulp (in magnitude) when p's last bit is set.
 * The and-mask keeps the sign and exponent of p, i.e. +-2^e for p = +-m 2^e, m in [1, 2); times
 * 2^-24 that is half an ulp. Zero, subnormal p: unchanged; inf, NaN: kept. */
__device__ __forceinline__ float jam_half_ulp(float p) {
    return fmaf(__uint_as_float(__float_as_uint(p) & 0xff800000u), 0x1p-24f, p);
}

/* p with its last mantissa bit set: for a sum p the tensor cores truncated toward zero (true
 * value in [p, p + ulp) in magnitude) this adds ulp(p)/2 on average, as jam_half_ulp does (one
 * ulp when the last bit is clear instead of when it is set), in one instruction. Zero becomes
 * the smallest subnormal (see the TMA kernel's epilogue); an infinite p becomes NaN (as an
 * infinite input does in any 3xTF32 split); exact sums (small integers) move by up to one ulp. */
__device__ __forceinline__ float jam_sticky(float p) {
    return __uint_as_float(__float_as_uint(p) | 1u);
}

} // namespace

#endif
