/* slicing.cuh - the arithmetic of the ozaki precision's slices (gemm_i8.h), for the slicing
 * kernel (gemm_i8_tma.cu) and for producers that write their output sliced (edgewise.cu):
 * a row's exponent e, the integer A = rint(a 2^(23 - e)) of each entry and its three balanced
 * base-255 digits, packed four to a word. */
#ifndef UMAS_CUDA_SLICING_CUH
#define UMAS_CUDA_SLICING_CUH

#include <cuda_runtime.h>
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

#endif
