/* slicing.cuh - the arithmetic of the ozaki precision's slices (gemm_i8.h), for the slicing
 * kernel (gemm_i8_tma.cu) and for producers that write their output sliced (edgewise_*.cu):
 * a row's exponent e, the integer A = rint(a 2^(23 - e)) of each entry and its three balanced
 * base-255 digits, packed four to a word; a warp's row written sliced. */
#ifndef UMAS_CUDA_SLICING_CUH
#define UMAS_CUDA_SLICING_CUH

#include "gemm_i8.h"

#include <cuda_runtime.h>
#include <float.h>
#include <math.h>
#include <stdint.h>

/* The row exponent e (gemm_i8.h) of a row whose largest magnitude is m; 0 for a zero row. */
__device__ __forceinline__ int row_exponent(float m) {
    if (m == 0.0f)
        return 0;
    int e = 0;
    frexp((double)m * (1.0 + 0x1p-6), &e); /* m (1 + 2^-6) = f 2^e, f in [0.5, 1) */
    return e;
}

/* A (|A| < 2^23 / (1 + 2^-6)) in balanced base-255 digits, high to low, each the low byte of an
 * int (the digit modulo 256). B = A + 127 (255^2 + 255 + 1) lies in [0, 255^3) and has plain
 * base-255 digits d in [0, 254]; the balanced digits are d - 127 (the representation is unique,
 * 255 being odd). Unsigned division by the constant 255 is a multiply-high and a shift. */
__device__ __forceinline__ void balanced_digits(int A, int (&digit)[3]) {
    const unsigned B = (unsigned)(A + 127 * (65025 + 255 + 1));
    const unsigned q1 = B / 255, q0 = q1 / 255; /* B = 255 q1 + d2, q1 = 255 q0 + d1, d0 = q0 */
    digit[2] = (int)(B - 255 * q1) - 127;
    digit[1] = (int)(q1 - 255 * q0) - 127;
    digit[0] = (int)q0 - 127;
}

/* The low bytes of b0 .. b3 in one word, b0 lowest. */
__device__ __forceinline__ uint32_t low_bytes(int b0, int b1, int b2, int b3) {
    return __byte_perm(__byte_perm(b0, b1, 0x0040), __byte_perm(b2, b3, 0x0040), 0x5410);
}

/* The row's scaling to integers, A = rint(a 2^(23 - e)): in fp32 (exact: a power of two) when
 * 2^(23 - e) is a normal float, else through double (rows below 2^-100). A non-finite row gets
 * zeros. */
struct RowScale {
    bool in_float;
    float f;
    double d;
};
__device__ __forceinline__ RowScale row_scale_of(int e, bool finite) {
    RowScale s;
    s.in_float = !finite || e >= -100;
    s.f = finite && s.in_float ? __int_as_float((23 - e + 127) << 23) : 0.0f;
    s.d = finite ? ldexp(1.0, 23 - e) : 0.0;
    return s;
}
__device__ __forceinline__ int scaled_integer(float v, const RowScale &s) {
    return s.in_float ? __float2int_rn(v * s.f) : (int)rint((double)v * s.d);
}

/* |v|, or +inf when v is not finite (fmaxf would drop a NaN): the largest of these over a row
 * is +inf exactly when the row is not finite. */
__host__ __device__ __forceinline__ float finite_magnitude(float v) {
    const float a = fabsf(v);
    return a <= FLT_MAX ? a : INFINITY;
}

/* The exponent of a row whose largest finite_magnitude is t (I8_NOT_FINITE for +inf). */
__device__ __forceinline__ int part_exponent(float t) {
    return t <= FLT_MAX ? row_exponent(t) : I8_NOT_FINITE;
}

/* What a row whose largest finite_magnitude is t is written with: its exponent (as stored) and
 * its scaling to integers. */
struct RowSlicing {
    int exponent;
    RowScale scale;
};
__device__ __forceinline__ RowSlicing row_slicing(float t) {
    const int exponent = part_exponent(t);
    return {exponent, row_scale_of(exponent, t <= FLT_MAX)};
}

/* The largest of the 32 lanes' t (every lane gets it). */
__device__ __forceinline__ float warp_max(float t) {
    for (int offset = 16; offset > 0; offset >>= 1)
        t = fmaxf(t, __shfl_xor_sync(0xffffffffu, t, offset));
    return t;
}

/* Entry v of a row scaled by s, as its three digits at at[0], at[plane], at[2 plane]. */
__device__ __forceinline__ void store_digits(int8_t *at, size_t plane, float v, const RowScale &s) {
    int digit[3];
    balanced_digits(scaled_integer(v, s), digit);
#pragma unroll
    for (int p = 0; p < 3; p++)
        at[p * plane] = (int8_t)digit[p];
}

/* Row r of `out` from one warp: lane l holds the row's entries v[k] = entry l + 32 k (k <
 * VALUES; 0 past the row's n <= 32 VALUES entries). The warp's largest magnitude gives the
 * exponent (written by lane 0), then each lane writes its entries' digits (consecutive lanes,
 * consecutive bytes). Called by all 32 lanes. */
template <int VALUES>
__device__ void store_warp_row_sliced(const float (&v)[VALUES], int n, size_t r,
                                      const i8_sliced &out) {
    const int lane = threadIdx.x & 31;
    float top = 0.0f;
#pragma unroll
    for (int k = 0; k < VALUES; k++)
        top = fmaxf(top, finite_magnitude(v[k]));
    const RowSlicing slicing = row_slicing(warp_max(top));
    if (lane == 0)
        out.exponents[r] = slicing.exponent;
    int8_t *row = out.slices + r * out.ld;
#pragma unroll
    for (int k = 0; k < VALUES; k++) {
        const int i = lane + 32 * k;
        if (i >= n)
            break;
        store_digits(row + i, out.plane, v[k], slicing.scale);
    }
}

#endif
