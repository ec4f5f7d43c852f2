/* weights_cuda.cu - the merged float64 weights onto the GPU, prepared for the context's precision:
 * fp32, TF32 parts (tf32), TF32 high and low parts and transposes (3xtf32), int8 slices of the
 * weights and their transposes (ozaki); the balanced channels and their targets. */
#include "cuda_internal.h"

namespace umas_cuda {

static float *upload_floats(cuda_state *s, const std::vector<float> &f) {
    size_t n = f.size();
    void *p = nullptr;
    if (cudaMalloc(&p, n * sizeof(float)) != cudaSuccess)
        return nullptr;
    cudaMemcpy(p, f.data(), n * sizeof(float), cudaMemcpyHostToDevice);
    s->weight_memory.push_back(p);
    s->weight_bytes += n * sizeof(float);
    return static_cast<float *>(p);
}

float *upload(cuda_state *s, const double *host, size_t n) {
    if (!host || n == 0)
        return nullptr;
    return upload_floats(s, std::vector<float>(host, host + n));
}

/* ozaki: the int8 slices (gemm_i8.h) of the fp32 matrix a [rows][cols], made on the device and
 * kept with the weights (null pointers when out of memory: the caller's check finds them). */
static i8_sliced upload_sliced(cuda_state *s, const std::vector<float> &a, int rows, int cols) {
    i8_sliced d = {};
    d.ld = i8_slice_ld(cols);
    d.plane = (size_t)rows * d.ld;
    void *slices = nullptr, *exponents = nullptr;
    float *matrix = nullptr;
    if (cudaMalloc(&slices, 3 * d.plane) != cudaSuccess)
        slices = nullptr;
    if (cudaMalloc(&exponents, (size_t)rows * sizeof(int)) != cudaSuccess)
        exponents = nullptr;
    s->weight_memory.push_back(slices);
    s->weight_memory.push_back(exponents);
    s->weight_bytes += 3 * d.plane + (size_t)rows * sizeof(int);
    if (!slices || !exponents ||
        cudaMalloc(reinterpret_cast<void **>(&matrix), a.size() * sizeof(float)) != cudaSuccess) {
        cudaGetLastError();
        s->weight_memory.push_back(nullptr); /* reported as out of memory */
        return d;
    }
    d.slices = static_cast<int8_t *>(slices);
    d.exponents = static_cast<int *>(exponents);
    cudaMemcpy(matrix, a.data(), a.size() * sizeof(float), cudaMemcpyHostToDevice);
    i8_slice(rows, cols, matrix, (size_t)cols, &d, s->stream);
    cudaStreamSynchronize(s->stream);
    cudaFree(matrix);
    return d;
}

/* A linear layer [out][in] from float64 weights (and bias). With 3xtf32 the weight goes up as its
 * TF32 part and the float32 remainder (split once here, in double). */
static dev_linear upload_linear_weights(cuda_state *s, int out, int in, const double *weight,
                                        const double *bias) {
    dev_linear d;
    d.out = out;
    d.in = in;
    s->widest = std::max(s->widest, std::max(in, out));
    size_t n = (size_t)out * in;
    if (s->precision == UMAS_PRECISION_3XTF32) {
        std::vector<float> hi(n), lo(n);
        for (size_t k = 0; k < n; k++) {
            hi[k] = umas_round_to_tf32((float)weight[k]);
            lo[k] = umas_round_to_tf32((float)(weight[k] - (double)hi[k]));
        }
        d.weight = upload_floats(s, hi);
        d.weight_lo = upload_floats(s, lo);
        std::vector<float> hi_t(n), lo_t(n);
        for (int o = 0; o < out; o++)
            for (int i = 0; i < in; i++) {
                hi_t[(size_t)i * out + o] = hi[(size_t)o * in + i];
                lo_t[(size_t)i * out + o] = lo[(size_t)o * in + i];
            }
        d.weight_t = upload_floats(s, hi_t);
        d.weight_t_lo = upload_floats(s, lo_t);
        d.weight_f32 = upload(s, weight, n);
    } else if (s->precision == UMAS_PRECISION_OZAKI) {
        d.weight = upload(s, weight, n);
        d.weight_f32 = d.weight;
        if (s->tensor_core_gemm) {
            std::vector<float> f(n), t(n);
            for (int o = 0; o < out; o++)
                for (int i = 0; i < in; i++) {
                    f[(size_t)o * in + i] = (float)weight[(size_t)o * in + i];
                    t[(size_t)i * out + o] = f[(size_t)o * in + i];
                }
            d.sliced = upload_sliced(s, f, out, in);
            d.sliced_t = upload_sliced(s, t, in, out);
        }
    } else if (s->precision == UMAS_PRECISION_TF32) {
        std::vector<float> rounded(n);
        for (size_t k = 0; k < n; k++)
            rounded[k] = umas_round_to_tf32((float)weight[k]);
        d.weight = upload_floats(s, rounded);
    } else {
        d.weight = upload(s, weight, n);
    }
    d.bias = upload(s, bias, bias ? (size_t)out : 0);
    return d;
}

/* Outputs [first, first + count) of a linear layer, for a forward product of their own: a view
 * of its weight rows and bias (no transposed copies, so not for the backward). */
dev_linear output_rows(const dev_linear &lin, int first, int count) {
    dev_linear d;
    size_t offset = (size_t)first * lin.in;
    d.out = count;
    d.in = lin.in;
    d.weight = lin.weight + offset;
    d.weight_lo = lin.weight_lo ? lin.weight_lo + offset : nullptr;
    d.weight_f32 = lin.weight_f32 ? lin.weight_f32 + offset : nullptr;
    if (lin.sliced.slices) {
        d.sliced = lin.sliced;
        d.sliced.slices += (size_t)first * lin.sliced.ld;
        d.sliced.exponents += first;
    }
    d.bias = lin.bias ? lin.bias + first : nullptr;
    return d;
}

dev_linear upload_linear(cuda_state *s, const umas_linear &l) {
    return upload_linear_weights(s, l.out, l.in, l.weight, l.bias);
}

dev_radial upload_radial(cuda_state *s, const umas_radial_mlp &m) {
    dev_radial d;
    d.fc1 = upload_linear(s, m.fc1);
    d.fc2 = upload_linear(s, m.fc2);
    d.fc3 = upload_linear(s, m.fc3);
    d.norm1 = {m.norm1.n, upload(s, m.norm1.weight, m.norm1.n), upload(s, m.norm1.bias, m.norm1.n)};
    d.norm2 = {m.norm2.n, upload(s, m.norm2.weight, m.norm2.n), upload(s, m.norm2.bias, m.norm2.n)};
    return d;
}

dev_rms_norm upload_rms(cuda_state *s, const umas_rms_norm &n, int C) {
    return {upload(s, n.scale, 3 * (size_t)C), upload(s, n.bias, (size_t)C)};
}

/* The three per-degree weights [3][out][in] of an SO(3) linear; the bias goes with l = 0. */
void upload_so3_linear(cuda_state *s, const double *weight, const double *bias, int out, int in,
                       dev_linear (&lin)[3]) {
    for (int l = 0; l < 3; l++)
        lin[l] = upload_linear_weights(s, out, in, weight + (size_t)l * out * in,
                                       l == 0 ? bias : nullptr);
}

/* The balanced channels and their targets (ctx->balance) and room for their sums. */
int upload_balance(umas_context *ctx, cuda_state *s, umas_error *err) {
    const umas_balance &b = ctx->balance;
    if (b.count == 0)
        return 0;
    void *channel = nullptr, *target = nullptr, *sums = nullptr;
    cudaError_t e = cudaMalloc(&channel, sizeof(int) * b.count);
    if (e == cudaSuccess)
        e = cudaMalloc(&target, sizeof(double) * b.count);
    if (e == cudaSuccess)
        e = cudaMalloc(&sums, sizeof(double) * b.count);
    s->weight_memory.insert(s->weight_memory.end(), {channel, target, sums});
    if (check(e, "the balanced channels", err))
        return -1;
    s->balance_channel = static_cast<int *>(channel);
    s->balance_target = static_cast<double *>(target);
    s->balance_sums = static_cast<double *>(sums);
    cudaMemcpy(channel, b.channel, sizeof(int) * b.count, cudaMemcpyHostToDevice);
    cudaMemcpy(target, b.target, sizeof(double) * b.count, cudaMemcpyHostToDevice);
    s->host_sums.resize(b.count);
    return 0;
}

} // namespace umas_cuda
