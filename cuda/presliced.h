/* presliced.h - operands that umas_fast_gpu's producers write already sliced for the ozaki GEMM
 * (gemm_i8.h): their layout in a buffer, and the scope that holds them for the products that
 * follow the producer, so that those products read the slices. Internal to cuda/. */
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

/* An activation `act` [rows][k] (row stride ld) that exists only as its slices x, which live in
 * the buffer `home`. */
struct presliced_operand {
    const float *act;
    int rows, k, ld;
    i8_sliced x;
    const void *home;
};

/* The operands a producer wrote sliced, for the products that follow it. Declare the scope
 * around the producer and those products; while it lives, a product on one of its operands
 * (gemm_dispatch.cu) reads the slices and takes the int8 kernel. Scopes nest: a product looks in
 * the innermost first, then outwards; holding operands in a buffer forgets the outer scopes'
 * operands in that buffer (their slices are being overwritten). Leaving the scope forgets its
 * operands: nothing outlives the products it was made for, nothing needs resetting.
 *
 *     presliced_scope scope(s);
 *     if (!producer_writes_sliced(s, scope, ...))   // on success: scope.hold(...)
 *         producer_writes_fp32(...);
 *     linear_forward(s, lin, n, act, ...);           // reads the slices when held */
class presliced_scope {
  public:
    explicit presliced_scope(cuda_state *s) : s_(s), outer_(s->presliced) {
        s->presliced = this;
    }
    ~presliced_scope() {
        s_->presliced = outer_;
    }
    presliced_scope(const presliced_scope &) = delete;
    presliced_scope &operator=(const presliced_scope &) = delete;

    /* Holds the P operands a producer wrote sliced (parts, in the buffer home) for the products
     * on act[i]: rows rows, K[i] columns, row stride ld[i]. */
    template <int P>
    void hold(const float *const (&act)[P], int rows, const int (&K)[P], const int (&ld)[P],
              const i8_sliced (&parts)[P], const buffer &home) {
        static_assert(P <= max_operands, "room in the scope");
        for (presliced_scope *o = outer_; o; o = o->outer_)
            o->forget(home.ptr);
        count_ = 0;
        for (int i = 0; i < P; i++)
            operands_[count_++] = {act[i], rows, K[i], ld[i], parts[i], home.ptr};
    }

    /* The operand held for a product on act [rows][k] (row stride ld) in this scope or an outer
     * one, or null. */
    const presliced_operand *find(const float *act, int rows, int k, int ld) const {
        for (const presliced_scope *o = this; o; o = o->outer_)
            for (int i = 0; i < o->count_; i++) {
                const presliced_operand &p = o->operands_[i];
                if (p.act == act && p.rows == rows && p.k == k && p.ld == ld)
                    return &p;
            }
        return nullptr;
    }
    /* Whether act exists only sliced (any shape): its products must take the int8 kernel. */
    bool holds(const float *act) const {
        for (const presliced_scope *o = this; o; o = o->outer_)
            for (int i = 0; i < o->count_; i++)
                if (o->operands_[i].act == act)
                    return true;
        return false;
    }

  private:
    void forget(const void *home) {
        int kept = 0;
        for (int i = 0; i < count_; i++)
            if (operands_[i].home != home)
                operands_[kept++] = operands_[i];
        count_ = kept;
    }

    static const int max_operands = 3;
    cuda_state *s_;
    presliced_scope *outer_;
    presliced_operand operands_[max_operands] = {};
    int count_ = 0;
};

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

} // namespace umas_cuda

#endif
