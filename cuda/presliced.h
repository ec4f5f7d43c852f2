/* presliced.h - operands that umas_fast_gpu's producers write already sliced for the ozaki GEMM
 * (gemm_i8.h): their layout in a buffer and their registration with cuda_state::presliced, so
 * that the products on those activations read the slices. Internal to cuda/. */
#ifndef UMAS_CUDA_PRESLICED_H
#define UMAS_CUDA_PRESLICED_H

#include "cuda_internal.h"

namespace umas_cuda {

/* P sliced operands of `rows` rows and K[i] columns laid out one after the other from
 * base: per operand the [rows] exponents (16-byte aligned), then its three planes [rows][ld].
 * Returns the bytes they take (parts set when base is not null). */
template <int P>
size_t sliced_layout(void *base, int rows, const int (&K)[P], i8_sliced (&parts)[P]) {
    size_t offset = 0;
    for (int i = 0; i < P; i++) {
        const size_t ld = i8_slice_ld(K[i]);
        const size_t exponents = ((size_t)rows * sizeof(int) + 15) / 16 * 16;
        if (base) {
            unsigned char *at = static_cast<unsigned char *>(base) + offset;
            parts[i] = {reinterpret_cast<int8_t *>(at + exponents), reinterpret_cast<int *>(at), ld,
                        (size_t)rows * ld};
        }
        offset += exponents + 3 * (size_t)rows * ld;
    }
    return offset;
}

/* Registers the P operands a producer wrote sliced for the products on act[i] (rows, K[i]
 * columns, row stride ld[i]); until presliced_count is reset their products read these. */
template <int P>
void register_presliced(cuda_state *s, const float *const (&act)[P], int rows, const int (&K)[P],
                        const int (&ld)[P], const i8_sliced (&parts)[P]) {
    static_assert(P <= 3, "room in s->presliced");
    for (int i = 0; i < P; i++)
        s->presliced[i] = {act[i], rows, K[i], ld[i], parts[i]};
    s->presliced_count = P;
    s->sliced_from = nullptr; /* s->sliced may have been overwritten */
}

/* Operands written sliced for n rows into the buffer b: whether they fit there (parts set if
 * so). conv1's go into s->rotated, the other producers' into s->sliced. */
template <int P>
bool operands_sliced_in(const buffer &b, int n, const int (&K)[P], i8_sliced (&parts)[P]) {
    i8_sliced unused[P];
    if (!b.ptr || sliced_layout(nullptr, n, K, unused) > b.bytes)
        return false;
    sliced_layout(b.ptr, n, K, parts);
    return true;
}
template <int P>
bool fused_operands_sliced(cuda_state *s, int n, const int (&K)[P], i8_sliced (&parts)[P]) {
    return operands_sliced_in(s->sliced, n, K, parts);
}

} // namespace umas_cuda

#endif
