/* gemm_check.cu - umas-gemm-check: accuracy and speed of the split-precision tensor-core GEMM
 * (cuda/gemm/gemm_tc.cu) on the model's shapes, against a float64 reference and cuBLAS. Needs a GPU
 * (the kernels are built for sm_90).
 *
 *   umas-gemm-check [--quick] [--reps N] [--case SUBSTRING]
 *
 * Per case: X ~ U(-1,1) (or mixed magnitudes U(-1,1) 10^U(-3,3), or U(0,1)), W likewise
 * (U(-1,1) for the mixed cases), fixed seeds; padding columns of X, W and Y hold NaN, and with
 * beta = 0 so does Y, so a read outside the matrices or of Y shows. The reference is computed in
 * float64 on the GPU for up to 2048 sampled rows (the first and last 64 rows always, so edge
 * tiles are covered), spot-checked against the CPU. Methods: cuBLAS SGEMM
 * (CUBLAS_COMPUTE_32F_PEDANTIC, the reference for the pass criteria; and CUBLAS_COMPUTE_32F),
 * cuBLAS TF32 (CUBLAS_COMPUTE_32F_FAST_TF32, one product), cuBLAS 3xTF32 (three FAST_TF32
 * GEMMs on pre-split operands, as umas's precision 3xtf32; the split is not timed), and the
 * mma.sync tensor-core kernel with its three accumulation schemes (tc-*; tc-jam is its default)
 * and the Hopper warpgroup-MMA kernel fed by bulk tensor copies (tma-*: tc_gemm_nt_tma, NT only,
 * so NN cases run it on the split transposed weight, as umas's backward does; chunks of 1 and 2
 * k-steps per fresh accumulator, -cN; tma-jam-c2 is the model's, shown for information: its
 * shrink of about -2e-8 on same-sign data fails the SGEMM-level bias criterion below, and the
 * model's own bounds are checked by test_cuda; skipped where it does not take the operands),
 * and the int8 "ozaki" GEMM (gemm_i8.h: i8_gemm_nt on weights sliced once; "ozaki" times the
 * slicing of X with the product, "ozaki-gemm" the product alone; shown for information, as
 * tma-jam-c2: its criterion is the model's strict bounds in test_cuda; ozaki-gemm-k128x2 and
 * -k32x8 are other pipeline shapes, ozaki-compute-only the tensor cores' own time, a wrong
 * result).
 *
 * Columns: maxrel = max|y - ref| / max|ref|; bias = sum(y - ref) / sum|ref|; shrink =
 * sum((y - ref) sign(ref)) / sum|ref| (negative: results pulled toward zero, what truncating
 * accumulation does); SE = sqrt(sum (y - ref)^2) / sum|ref|, the standard error of bias; ms =
 * median of --reps timed runs after 3 warm-up runs; TFLOP/s = 2 rows K n / time.
 *
 * Pass (tc-jam and tma-jam-c1, every case): maxrel <= max(4 x SGEMM's, 1e-5), and |bias|
 * <= 4 |SGEMM's bias| + 1e-9 + 4 SE (the 4 SE allows for the sampling noise of the bias estimate,
 * which exceeds 1e-9 on the small cases), no NaN, nothing written outside rows x n of Y. The same
 * verdict is shown for tc-chunk and tc-direct (information only).
 *
 * Exit status: 0 pass; 1 the default kernel failed on max error, NaN or writes outside Y (a bug);
 * 2 it failed on bias only; 3 CUDA, cuBLAS or reference errors. */
#include "gemm_i8.h"
#include "gemm_tc.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <set>
#include <string>
#include <vector>

static void cuda_check(cudaError_t e, const char *what, int line) {
    if (e != cudaSuccess) {
        fprintf(stderr, "umas-gemm-check: line %d: %s: %s\n", line, what, cudaGetErrorString(e));
        exit(3);
    }
}
static void blas_check(cublasStatus_t s, const char *what, int line) {
    if (s != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "umas-gemm-check: line %d: %s: cuBLAS status %d\n", line, what, (int)s);
        exit(3);
    }
}
#define CUDA_CHECK(x) cuda_check((x), #x, __LINE__)
#define BLAS_CHECK(x) blas_check((x), #x, __LINE__)

enum Dist { UNIFORM = 0, MIXED = 1, POSITIVE = 2 };
static const char *dist_name[] = {"U(-1,1)", "U(-1,1) 10^U(-3,3)", "U(0,1)"};

struct Case {
    const char *name;
    bool nn;           /* NN (W [K][n]) or NT (W [n][K]) */
    int rows, K, n;    /* Y [rows][n] */
    int ldx, ldw, ldy; /* 0: tight */
    float beta;
    Dist dist; /* of X; W is U(-1,1) for MIXED, else the same */
};

static const Case cases[] = {
    {"nt-1000-768x640", false, 1000, 768, 640, 0, 0, 0, 0.0f, UNIFORM},
    {"nt-768x640", false, 156000, 768, 640, 0, 0, 0, 0.0f, UNIFORM},
    {"nt-512x512", false, 156000, 512, 512, 0, 0, 0, 0.0f, UNIFORM},
    {"nt-256x256", false, 156000, 256, 256, 0, 0, 0, 0.0f, UNIFORM},
    {"nt-384x384", false, 156000, 384, 384, 0, 0, 0, 0.0f, UNIFORM},
    {"nt-256x512", false, 156000, 256, 512, 0, 0, 0, 0.0f, UNIFORM},
    {"nt-128x1536", false, 156000, 128, 1536, 0, 0, 0, 0.0f, UNIFORM}, /* radial MLP's last layer */
    {"nt-768x640-mixed", false, 156000, 768, 640, 0, 0, 0, 0.0f, MIXED},
    {"nt-768x640-positive", false, 156000, 768, 640, 0, 0, 0, 0.0f, POSITIVE},
    {"nt-512x512-beta1", false, 20000, 512, 512, 0, 0, 0, 1.0f, UNIFORM},
    {"nt-ragged-1003-200x72", false, 1003, 200, 72, 0, 0, 0, 0.0f, UNIFORM},
    {"nt-unaligned-strides", false, 5001, 130, 100, 131, 133, 103, 1.0f, UNIFORM},
    {"nt-tiny-7-9x5", false, 7, 9, 5, 0, 0, 0, 0.0f, UNIFORM},
    {"nn-512x512", true, 156000, 512, 512, 0, 0, 0, 0.0f, UNIFORM},
    {"nn-256x512", true, 156000, 256, 512, 0, 0, 0, 0.0f, UNIFORM},
    {"nn-384-cols128-of-384", true, 40000, 384, 128, 0, 384, 0, 0.0f, UNIFORM},
    {"nn-512x512-positive", true, 156000, 512, 512, 0, 0, 0, 0.0f, POSITIVE},
    {"nn-384x384-mixed-beta1", true, 50000, 384, 384, 0, 0, 0, 1.0f, MIXED},
    {"nn-ragged-1003-200x72", true, 1003, 200, 72, 0, 77, 75, 0.0f, UNIFORM},
    {"nn-tiny-1-3x130", true, 1, 3, 130, 0, 0, 0, 0.0f, UNIFORM},
};

/* ---- data --------------------------------------------------------------------------------- */

static __host__ __device__ uint64_t splitmix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static __device__ float random_value(uint64_t seed, uint64_t i, int dist) {
    const uint64_t h = splitmix64(seed ^ splitmix64(i));
    const double u = (double)(h >> 11) * 0x1p-53;
    if (dist == POSITIVE)
        return (float)u;
    double v = 2.0 * u - 1.0;
    if (dist == MIXED)
        v *= exp10(6.0 * ((double)(splitmix64(h) >> 11) * 0x1p-53) - 3.0);
    return (float)v;
}

static unsigned blocks_for(size_t n) {
    const size_t b = (n + 255) / 256;
    return (unsigned)(b < 65536 ? b : 65536);
}

/* a [rows][ld]: random values in the first cols columns, NaN in the padding. */
static __global__ void fill_kernel(float *a, int rows, int cols, size_t ld, uint64_t seed,
                                   int dist) {
    const size_t total = (size_t)rows * ld;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / ld, c = i % ld;
        a[i] = c < (size_t)cols ? random_value(seed, r * (size_t)cols + c, dist)
                                : __int_as_float(0x7fffffff);
    }
}

/* dst [S][ld] = src rows rows[0..S) (whole rows, padding included). */
static __global__ void gather_rows_kernel(const float *src, size_t ld, const int *rows, int S,
                                          float *dst) {
    const size_t total = (size_t)S * ld;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = src[(size_t)rows[i / ld] * ld + i % ld];
}

/* ref [S][n] = beta Y0 + X W^T (NT) or X W (NN) for the sampled rows, in float64. */
static __global__ void reference_kernel(int S, const int *rows, int n, int K, const float *X,
                                        size_t ldx, const float *W, size_t ldw, int nn, float beta,
                                        const float *Y0, size_t ldy, double *ref) {
    const size_t total = (size_t)S * n;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = (size_t)rows[i / n];
        const int j = (int)(i % n);
        const float *x = X + r * ldx;
        double sum = 0.0;
        if (nn)
            for (int k = 0; k < K; k++)
                sum += (double)x[k] * (double)W[(size_t)k * ldw + j];
        else
            for (int k = 0; k < K; k++)
                sum += (double)x[k] * (double)W[(size_t)j * ldw + k];
        if (beta != 0.0f)
            sum += (double)beta * (double)Y0[r * ldy + j];
        ref[i] = sum;
    }
}

/* ---- measurements ------------------------------------------------------------------------- */

struct Stats {
    double maxrel = 0, bias = 0, shrink = 0, se = 0;
    long nonfinite = 0;
    bool outside_ok = true; /* padding columns and the guard row unchanged */
};

static Stats compare(const std::vector<float> &y, const std::vector<float> &y0,
                     const std::vector<double> &ref, int S, int n, size_t ldy,
                     const std::vector<float> &guard, const std::vector<float> &guard0) {
    Stats st;
    double maxerr = 0, maxref = 0, sum_err = 0, sum_shrink = 0, sum_abs = 0, sum_sq = 0;
    for (int s = 0; s < S; s++) {
        for (int j = 0; j < n; j++) {
            const double r = ref[(size_t)s * n + j], v = y[(size_t)s * ldy + j];
            maxref = std::max(maxref, std::fabs(r));
            sum_abs += std::fabs(r);
            if (!std::isfinite(v)) {
                st.nonfinite++;
                continue;
            }
            const double e = v - r;
            maxerr = std::max(maxerr, std::fabs(e));
            sum_err += e;
            sum_shrink += r >= 0 ? e : -e;
            sum_sq += e * e;
        }
        for (size_t j = n; j < ldy; j++)
            if (memcmp(&y[(size_t)s * ldy + j], &y0[(size_t)s * ldy + j], sizeof(float)))
                st.outside_ok = false;
    }
    if (memcmp(guard.data(), guard0.data(), guard.size() * sizeof(float)))
        st.outside_ok = false;
    st.maxrel = st.nonfinite ? INFINITY : maxref > 0 ? maxerr / maxref : maxerr;
    const double denom = sum_abs > 0 ? sum_abs : 1.0;
    st.bias = sum_err / denom;
    st.shrink = sum_shrink / denom;
    st.se = std::sqrt(sum_sq) / denom;
    return st;
}

static double median_ms(const std::function<void()> &run, int reps) {
    for (int i = 0; i < 3; i++)
        run();
    cudaEvent_t a, b;
    CUDA_CHECK(cudaEventCreate(&a));
    CUDA_CHECK(cudaEventCreate(&b));
    std::vector<float> t(reps);
    for (int i = 0; i < reps; i++) {
        CUDA_CHECK(cudaEventRecord(a));
        run();
        CUDA_CHECK(cudaEventRecord(b));
        CUDA_CHECK(cudaEventSynchronize(b));
        CUDA_CHECK(cudaEventElapsedTime(&t[i], a, b));
    }
    CUDA_CHECK(cudaGetLastError());
    CUDA_CHECK(cudaEventDestroy(a));
    CUDA_CHECK(cudaEventDestroy(b));
    std::sort(t.begin(), t.end());
    return reps % 2 ? t[reps / 2] : 0.5 * (t[reps / 2 - 1] + t[reps / 2]);
}

/* Row-major Y [rows][n] = beta Y + X op(W) through column-major cuBLAS: Y^T = op(W)^T X^T. */
static void cublas_gemm(cublasHandle_t h, cublasComputeType_t compute, bool nn, int rows, int n,
                        int K, const float *X, size_t ldx, const float *W, size_t ldw, float beta,
                        float *Y, size_t ldy) {
    const float one = 1.0f;
    BLAS_CHECK(cublasGemmEx(h, nn ? CUBLAS_OP_N : CUBLAS_OP_T, CUBLAS_OP_N, n, rows, K, &one, W,
                            CUDA_R_32F, (int)ldw, X, CUDA_R_32F, (int)ldx, &beta, Y, CUDA_R_32F,
                            (int)ldy, compute, CUBLAS_GEMM_DEFAULT));
}

/* The tensor-core kernels compared: mma.sync (tc_gemm), warpgroup MMA fed by bulk tensor
 * copies (tc_gemm_nt_tma), the int8 ozaki GEMM (i8_gemm_nt). */
enum Kernel { MMA_SYNC = 0, TMA = 1, OZAKI = 2, KERNELS = 3 };

struct Method {
    const char *name;
    int tc; /* -1: cuBLAS, else the tc_accumulation */
    Kernel kernel;
    bool gating; /* its verdict decides the exit status (the kernels' unbiased defaults) */
    std::function<void()> run;
};

/* wt [n][K] (row stride ldwt) = w^T for an NN weight w [K][n] (stride ldw): the TMA kernel
 * does NT only, so NN products run on transposed weights (as umas's backward does). */
static __global__ void transpose_kernel(int K, int n, const float *w, size_t ldw, float *wt,
                                        size_t ldwt) {
    const size_t total = (size_t)K * n;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t k = i / n, j = i % n;
        wt[j * ldwt + k] = w[k * ldw + j];
    }
}

struct Result {
    Stats st;
    double ms = 0, tflops = 0;
};

/* The pass criteria for a tc method against cuBLAS SGEMM (pedantic); "" when it passes. */
static std::string verdict(const Stats &tc, const Stats &sgemm, bool *max_fail, bool *bias_fail) {
    std::string why;
    *max_fail = *bias_fail = false;
    if (tc.nonfinite) {
        why += "nan ";
        *max_fail = true;
    }
    if (!tc.outside_ok) {
        why += "wrote-outside ";
        *max_fail = true;
    }
    if (!(tc.maxrel <= std::max(4.0 * sgemm.maxrel, 1e-5))) {
        why += "max ";
        *max_fail = true;
    }
    if (!(std::fabs(tc.bias) <= 4.0 * std::fabs(sgemm.bias) + 1e-9 + 4.0 * tc.se)) {
        why += "bias ";
        *bias_fail = true;
    }
    if (!why.empty())
        why.pop_back();
    return why;
}

int main(int argc, char **argv) {
    bool quick = false;
    int reps = 20;
    const char *filter = nullptr;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick"))
            quick = true;
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = std::max(1, atoi(argv[++i]));
        else if (!strcmp(argv[i], "--case") && i + 1 < argc)
            filter = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--quick] [--reps N] [--case SUBSTRING]\n", argv[0]);
            return 3;
        }
    }
    if (quick)
        reps = std::min(reps, 3);

    int device = 0;
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    printf("umas-gemm-check: %s, %d SMs, compute capability %d.%d\n", prop.name,
           prop.multiProcessorCount, prop.major, prop.minor);
    if (prop.major < 9)
        printf("warning: the tensor-core kernel is built for sm_90 (and needs 162 KiB of shared "
               "memory per block)\n");
    printf("maxrel = max|y-ref|/max|ref|; bias = sum(y-ref)/sum|ref|; shrink = "
           "sum((y-ref) sign(ref))/sum|ref|;\nSE = sqrt(sum (y-ref)^2)/sum|ref|; ms: median of "
           "%d runs; pass (tc): maxrel <= max(4 sgemm, 1e-5), |bias| <= 4 |sgemm bias| + 1e-9 + "
           "4 SE\n",
           reps);

    cublasHandle_t blas;
    BLAS_CHECK(cublasCreate(&blas));
    BLAS_CHECK(cublasSetStream(blas, 0));

    int n_cases = 0, max_failures = 0, bias_failures = 0;
    std::string failed;
    struct Speed {
        std::string name;
        double sgemm_pedantic, sgemm, tf32, cublas3, tc, tma_jam2;
    };
    std::vector<Speed> speeds;
    int info_pass[KERNELS][3] = {}, kernel_cases[KERNELS] = {};

    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const Case &c = cases[ci];
        if (filter && !strstr(c.name, filter))
            continue;
        if (quick && c.rows > 20000)
            continue;
        n_cases++;
        const int rows = c.rows, K = c.K, n = c.n;
        const size_t ldx = c.ldx ? c.ldx : K;
        const size_t ldw = c.ldw ? c.ldw : (c.nn ? n : K);
        const size_t ldy = c.ldy ? c.ldy : n;
        const int wrows = c.nn ? K : n, wcols = c.nn ? n : K;
        const float beta = c.beta;
        const double flops = 2.0 * rows * (double)K * n;
        printf("\n[%s] %s rows=%d K=%d n=%d ldx=%zu ldw=%zu ldy=%zu beta=%g X~%s W~%s\n", c.name,
               c.nn ? "NN" : "NT", rows, K, n, ldx, ldw, ldy, beta, dist_name[c.dist],
               dist_name[c.dist == MIXED ? UNIFORM : c.dist]);

        /* Operands, NaN padded. Y and Y0 have a guard row after the last row. */
        const size_t x_n = (size_t)rows * ldx, w_n = (size_t)wrows * ldw;
        const size_t y_n = (size_t)rows * ldy + ldy;
        float *X, *Xhi, *Xlo, *W, *Whi, *Wlo, *Y, *Y0;
        CUDA_CHECK(cudaMalloc(&X, x_n * sizeof(float)));
        CUDA_CHECK(cudaMalloc(&Xhi, x_n * sizeof(float)));
        CUDA_CHECK(cudaMalloc(&Xlo, x_n * sizeof(float)));
        CUDA_CHECK(cudaMalloc(&W, w_n * sizeof(float)));
        CUDA_CHECK(cudaMalloc(&Whi, w_n * sizeof(float)));
        CUDA_CHECK(cudaMalloc(&Wlo, w_n * sizeof(float)));
        CUDA_CHECK(cudaMalloc(&Y, y_n * sizeof(float)));
        CUDA_CHECK(cudaMalloc(&Y0, y_n * sizeof(float)));
        const uint64_t seed = 0x5eed0000ull + 16 * ci;
        fill_kernel<<<blocks_for(x_n), 256>>>(X, rows, K, ldx, seed + 1, c.dist);
        fill_kernel<<<blocks_for(w_n), 256>>>(W, wrows, wcols, ldw, seed + 2,
                                              c.dist == MIXED ? UNIFORM : c.dist);
        CUDA_CHECK(cudaMemset(Y0, 0xff, y_n * sizeof(float))); /* NaN */
        if (beta != 0.0f)
            fill_kernel<<<blocks_for((size_t)rows * ldy), 256>>>(Y0, rows, n, ldy, seed + 3,
                                                                 UNIFORM);
        CUDA_CHECK(cudaMemset(Whi, 0xff, w_n * sizeof(float)));
        CUDA_CHECK(cudaMemset(Wlo, 0xff, w_n * sizeof(float)));
        CUDA_CHECK(cudaMemset(Xhi, 0xff, x_n * sizeof(float)));
        CUDA_CHECK(cudaMemset(Xlo, 0xff, x_n * sizeof(float)));
        tc_split_weights(wrows, wcols, W, ldw, Whi, Wlo, 0);
        tc_split_weights(rows, K, X, ldx, Xhi, Xlo, 0);
        CUDA_CHECK(cudaGetLastError());
        /* the weights as the TMA kernel takes them: [n][K] (NT as is; NN transposed) */
        const size_t ldwt = c.nn ? (size_t)(K + 3) / 4 * 4 : ldw;
        float *Wt = W;
        if (c.nn) {
            CUDA_CHECK(cudaMalloc(&Wt, (size_t)n * ldwt * sizeof(float)));
            transpose_kernel<<<blocks_for((size_t)K * n), 256>>>(K, n, W, ldw, Wt, ldwt);
            CUDA_CHECK(cudaGetLastError());
        }
        /* the TMA kernel's pre-split weights [n][K] */
        float *Wthi = Whi, *Wtlo = Wlo;
        if (c.nn) {
            CUDA_CHECK(cudaMalloc(&Wthi, (size_t)n * ldwt * sizeof(float)));
            CUDA_CHECK(cudaMalloc(&Wtlo, (size_t)n * ldwt * sizeof(float)));
            tc_split_weights(n, K, Wt, ldwt, Wthi, Wtlo, 0);
            CUDA_CHECK(cudaGetLastError());
        }
        /* rows = 0: only asks whether the kernel takes these operands here */
        const bool tma = tc_gemm_nt_tma(TC_ACCUM_CHUNK_JAM, 1, 0, n, K, X, ldx, Wthi, Wtlo, ldwt,
                                        nullptr, beta, Y, ldy, 0) != 0;
        kernel_cases[MMA_SYNC]++;
        kernel_cases[TMA] += tma;
        kernel_cases[OZAKI]++;

        /* Sampled rows: all, or the first and last 64 and random others. */
        std::vector<int> sample;
        if (rows <= 2048) {
            for (int r = 0; r < rows; r++)
                sample.push_back(r);
        } else {
            std::set<int> pick;
            for (int r = 0; r < 64; r++) {
                pick.insert(r);
                pick.insert(rows - 1 - r);
            }
            std::mt19937 rng(1234 + (unsigned)ci);
            std::uniform_int_distribution<int> any(0, rows - 1);
            while (pick.size() < 2048)
                pick.insert(any(rng));
            sample.assign(pick.begin(), pick.end());
        }
        const int S = (int)sample.size();
        int *d_sample;
        float *d_rows;
        double *d_ref;
        CUDA_CHECK(cudaMalloc(&d_sample, S * sizeof(int)));
        CUDA_CHECK(cudaMalloc(&d_rows, (size_t)S * std::max(ldy, ldx) * sizeof(float)));
        CUDA_CHECK(cudaMalloc(&d_ref, (size_t)S * n * sizeof(double)));
        CUDA_CHECK(cudaMemcpy(d_sample, sample.data(), S * sizeof(int), cudaMemcpyHostToDevice));

        auto gather = [&](const float *src, size_t ld, std::vector<float> &out) {
            gather_rows_kernel<<<blocks_for((size_t)S * ld), 256>>>(src, ld, d_sample, S, d_rows);
            CUDA_CHECK(cudaGetLastError());
            out.resize((size_t)S * ld);
            CUDA_CHECK(
                cudaMemcpy(out.data(), d_rows, out.size() * sizeof(float), cudaMemcpyDeviceToHost));
        };
        auto guard_row = [&](const float *src, std::vector<float> &out) {
            out.resize(ldy);
            CUDA_CHECK(cudaMemcpy(out.data(), src + (size_t)rows * ldy, ldy * sizeof(float),
                                  cudaMemcpyDeviceToHost));
        };

        /* float64 reference, and a CPU spot check of it. */
        reference_kernel<<<blocks_for((size_t)S * n), 256>>>(S, d_sample, n, K, X, ldx, W, ldw,
                                                             c.nn, beta, Y0, ldy, d_ref);
        CUDA_CHECK(cudaGetLastError());
        std::vector<double> ref((size_t)S * n);
        CUDA_CHECK(
            cudaMemcpy(ref.data(), d_ref, ref.size() * sizeof(double), cudaMemcpyDeviceToHost));
        std::vector<float> y0_rows, y0_guard, x_rows, w_host(w_n);
        gather(Y0, ldy, y0_rows);
        guard_row(Y0, y0_guard);
        gather(X, ldx, x_rows);
        CUDA_CHECK(cudaMemcpy(w_host.data(), W, w_n * sizeof(float), cudaMemcpyDeviceToHost));
        {
            double maxref = 0, maxdiff = 0;
            for (double v : ref)
                maxref = std::max(maxref, std::fabs(v));
            const int spots[] = {0, 1, S / 2, S - 2, S - 1};
            for (int s : spots) {
                if (s < 0 || s >= S)
                    continue;
                for (int j = 0; j < n; j++) {
                    double sum = 0;
                    for (int k = 0; k < K; k++)
                        sum += (double)x_rows[(size_t)s * ldx + k] *
                               (double)w_host[c.nn ? (size_t)k * ldw + j : (size_t)j * ldw + k];
                    if (beta != 0.0f)
                        sum += (double)beta * (double)y0_rows[(size_t)s * ldy + j];
                    maxdiff = std::max(maxdiff, std::fabs(sum - ref[(size_t)s * n + j]));
                }
            }
            if (!(maxdiff <= 1e-12 * maxref)) {
                fprintf(stderr,
                        "umas-gemm-check: the float64 reference disagrees with the CPU "
                        "(%.3e of max|ref|)\n",
                        maxref > 0 ? maxdiff / maxref : maxdiff);
                return 3;
            }
        }

        const bool nn = c.nn;
        std::vector<Method> methods = {
            {"cublas-fp32-pedantic", -1, MMA_SYNC, false,
             [&] {
                 cublas_gemm(blas, CUBLAS_COMPUTE_32F_PEDANTIC, nn, rows, n, K, X, ldx, W, ldw,
                             beta, Y, ldy);
             }},
            {"cublas-fp32", -1, MMA_SYNC, false,
             [&] {
                 cublas_gemm(blas, CUBLAS_COMPUTE_32F, nn, rows, n, K, X, ldx, W, ldw, beta, Y,
                             ldy);
             }},
            {"cublas-tf32", -1, MMA_SYNC, false,
             [&] {
                 cublas_gemm(blas, CUBLAS_COMPUTE_32F_FAST_TF32, nn, rows, n, K, X, ldx, W, ldw,
                             beta, Y, ldy);
             }},
            {"cublas-3xtf32", -1, MMA_SYNC, false,
             [&] {
                 const cublasComputeType_t t = CUBLAS_COMPUTE_32F_FAST_TF32;
                 cublas_gemm(blas, t, nn, rows, n, K, Xlo, ldx, Whi, ldw, beta, Y, ldy);
                 cublas_gemm(blas, t, nn, rows, n, K, Xhi, ldx, Wlo, ldw, 1.0f, Y, ldy);
                 cublas_gemm(blas, t, nn, rows, n, K, Xhi, ldx, Whi, ldw, 1.0f, Y, ldy);
             }},
            {"tc-jam", TC_ACCUM_CHUNK_JAM, MMA_SYNC, true,
             [&] {
                 tc_gemm(!nn, TC_ACCUM_CHUNK_JAM, rows, n, K, X, ldx, Whi, Wlo, ldw, beta, Y, ldy,
                         0);
             }},
            {"tc-chunk", TC_ACCUM_CHUNK, MMA_SYNC, false,
             [&] {
                 tc_gemm(!nn, TC_ACCUM_CHUNK, rows, n, K, X, ldx, Whi, Wlo, ldw, beta, Y, ldy, 0);
             }},
            {"tc-direct", TC_ACCUM_DIRECT, MMA_SYNC, false,
             [&] {
                 tc_gemm(!nn, TC_ACCUM_DIRECT, rows, n, K, X, ldx, Whi, Wlo, ldw, beta, Y, ldy, 0);
             }},
        };
        /* the TMA kernel: each scheme with chunks of 1 and 2 k-steps (direct: one) */
        struct TmaVariant {
            const char *name;
            tc_accumulation scheme;
            int chunk;
        };
        static const TmaVariant tma_variants[] = {{"tma-jam-c1", TC_ACCUM_CHUNK_JAM, 1},
                                                  {"tma-jam-c2", TC_ACCUM_CHUNK_JAM, 2},
                                                  {"tma-chunk-c1", TC_ACCUM_CHUNK, 1},
                                                  {"tma-chunk-c2", TC_ACCUM_CHUNK, 2},
                                                  {"tma-direct", TC_ACCUM_DIRECT, 2}};
        int tma_jam2 = -1; /* index of tma-jam-c2 (the model's) in methods */
        for (const TmaVariant &v : tma_variants) {
            if (!tma)
                break;
            if (v.scheme == TC_ACCUM_CHUNK_JAM && v.chunk == 2)
                tma_jam2 = (int)methods.size();
            methods.push_back(
                {v.name, v.scheme, TMA, v.scheme == TC_ACCUM_CHUNK_JAM && v.chunk == 1, [&, v] {
                     tc_gemm_nt_tma(v.scheme, v.chunk, rows, n, K, X, ldx, Wthi, Wtlo, ldwt,
                                    nullptr, beta, Y, ldy, 0);
                 }});
        }
        if (!tma)
            printf("  (tma kernel: not for these operands or this device)\n");
        /* the ozaki GEMM: W^T [n][K] sliced once, X sliced per call (or once, for the product
         * alone) */
        const size_t lds = i8_slice_ld(K);
        int8_t *xs = nullptr, *ws = nullptr;
        int *xe = nullptr, *we = nullptr;
        CUDA_CHECK(cudaMalloc(&xs, 3 * (size_t)rows * lds));
        CUDA_CHECK(cudaMalloc(&ws, 3 * (size_t)n * lds));
        CUDA_CHECK(cudaMalloc(&xe, (size_t)rows * sizeof(int)));
        CUDA_CHECK(cudaMalloc(&we, (size_t)n * sizeof(int)));
        const i8_sliced x8 = {xs, xe, lds, (size_t)rows * lds};
        const i8_sliced w8 = {ws, we, lds, (size_t)n * lds};
        i8_slice(n, K, Wt, ldwt, &w8, 0);
        i8_slice(rows, K, X, ldx, &x8, 0);
        CUDA_CHECK(cudaGetLastError());
        if (i8_gemm_nt(0, n, K, &x8, &w8, nullptr, beta, Y, ldy, 0)) {
            methods.push_back({"ozaki", TC_ACCUM_CHUNK_JAM, OZAKI, false, [&] {
                                   i8_slice(rows, K, X, ldx, &x8, 0);
                                   i8_gemm_nt(rows, n, K, &x8, &w8, nullptr, beta, Y, ldy, 0);
                               }});
            methods.push_back({"ozaki-gemm", TC_ACCUM_CHUNK_JAM, OZAKI, false, [&] {
                                   i8_gemm_nt(rows, n, K, &x8, &w8, nullptr, beta, Y, ldy, 0);
                               }});
            /* other pipeline shapes, and the tensor cores' own time (a wrong result) */
            static const struct {
                const char *name;
                int variant;
            } shapes[] = {{"ozaki-gemm-k128x2", I8_K128_2STAGES},
                          {"ozaki-gemm-k32x8", I8_K32_8STAGES},
                          {"ozaki-no-epilogue", I8_NO_EPILOGUE},
                          {"ozaki-gemm-k64x3", I8_K64_3STAGES},
                          {"ozaki-compute-only", I8_COMPUTE_ONLY}};
            for (const auto &v : shapes)
                methods.push_back({v.name, -1, OZAKI, false, [&, v] {
                                       i8_gemm_nt_variant(v.variant, rows, n, K, &x8, &w8, nullptr,
                                                          beta, Y, ldy, 0);
                                   }});
        } else {
            printf("  (ozaki kernel: not for these operands or this device)\n");
        }

        printf("  %-22s %10s %11s %11s %10s %9s %8s  %s\n", "method", "maxrel", "bias", "shrink",
               "SE", "ms", "TFLOP/s", "verdict");
        std::vector<Result> res(methods.size());
        for (size_t m = 0; m < methods.size(); m++) {
            CUDA_CHECK(cudaMemcpy(Y, Y0, y_n * sizeof(float), cudaMemcpyDeviceToDevice));
            methods[m].run();
            CUDA_CHECK(cudaGetLastError());
            CUDA_CHECK(cudaDeviceSynchronize());
            std::vector<float> y_rows, y_guard;
            gather(Y, ldy, y_rows);
            guard_row(Y, y_guard);
            res[m].st = compare(y_rows, y0_rows, ref, S, n, ldy, y_guard, y0_guard);
            res[m].ms = median_ms(methods[m].run, reps);
            res[m].tflops = flops / (res[m].ms * 1e-3) / 1e12;
            std::string v = "";
            if (methods[m].tc >= 0) {
                bool max_fail, bias_fail;
                v = verdict(res[m].st, res[0].st, &max_fail, &bias_fail);
                if (methods[m].gating) { /* the unbiased schemes: tc-jam, tma-jam-c1 */
                    max_failures += max_fail;
                    bias_failures += !max_fail && bias_fail;
                    if (max_fail || bias_fail)
                        failed += std::string(failed.empty() ? "" : ", ") + c.name + " (" + v + ")";
                }
                if (v.empty())
                    info_pass[methods[m].kernel][methods[m].tc]++;
                v = v.empty() ? "PASS" : "FAIL: " + v;
            } else if (!res[m].st.outside_ok) {
                v = "(wrote outside Y?)";
            }
            printf("  %-22s %10.3e %+11.3e %+11.3e %10.2e %9.3f %8.2f  %s\n", methods[m].name,
                   res[m].st.maxrel, res[m].st.bias, res[m].st.shrink, res[m].st.se, res[m].ms,
                   res[m].tflops, v.c_str());
            fflush(stdout);
        }
        speeds.push_back({c.name, res[0].tflops, res[1].tflops, res[2].tflops, res[3].tflops,
                          res[4].tflops, tma_jam2 >= 0 ? res[tma_jam2].tflops : 0.0});
        if (c.nn) {
            CUDA_CHECK(cudaFree(Wt));
            CUDA_CHECK(cudaFree(Wthi));
            CUDA_CHECK(cudaFree(Wtlo));
        }

        CUDA_CHECK(cudaFree(xs));
        CUDA_CHECK(cudaFree(ws));
        CUDA_CHECK(cudaFree(xe));
        CUDA_CHECK(cudaFree(we));
        CUDA_CHECK(cudaFree(X));
        CUDA_CHECK(cudaFree(Xhi));
        CUDA_CHECK(cudaFree(Xlo));
        CUDA_CHECK(cudaFree(W));
        CUDA_CHECK(cudaFree(Whi));
        CUDA_CHECK(cudaFree(Wlo));
        CUDA_CHECK(cudaFree(Y));
        CUDA_CHECK(cudaFree(Y0));
        CUDA_CHECK(cudaFree(d_sample));
        CUDA_CHECK(cudaFree(d_rows));
        CUDA_CHECK(cudaFree(d_ref));
    }
    BLAS_CHECK(cublasDestroy(blas));

    printf("\nspeed (TFLOP/s, 2 rows K n / time; x: over cublas-fp32-pedantic):\n"
           "  %-26s %10s %10s %10s %10s %10s %8s %10s %8s\n",
           "case", "fp32-ped.", "fp32", "tf32", "3xtf32", "tc-jam", "x", "tma-jam-c2", "x");
    for (const Speed &s : speeds)
        printf("  %-26s %10.2f %10.2f %10.2f %10.2f %10.2f %7.2fx %10.2f %7.2fx\n", s.name.c_str(),
               s.sgemm_pedantic, s.sgemm, s.tf32, s.cublas3, s.tc, s.tc / s.sgemm_pedantic,
               s.tma_jam2, s.tma_jam2 / s.sgemm_pedantic);
    const char *kernel_names[KERNELS] = {"tc", "tma", "ozaki"};
    printf("\ncases passing the criteria (tma-jam, tma-chunk: both chunk lengths together):");
    for (int k = 0; k < OZAKI; k++) {
        const int variants = k == TMA ? 2 : 1;
        printf(" %s-jam %d/%d, %s-chunk %d/%d, %s-direct %d/%d;", kernel_names[k],
               info_pass[k][TC_ACCUM_CHUNK_JAM], variants * kernel_cases[k], kernel_names[k],
               info_pass[k][TC_ACCUM_CHUNK], variants * kernel_cases[k], kernel_names[k],
               info_pass[k][TC_ACCUM_DIRECT], kernel_cases[k]);
    }
    printf(" %s (with and without the slicing) %d/%d;", kernel_names[OZAKI],
           info_pass[OZAKI][TC_ACCUM_CHUNK_JAM], 2 * kernel_cases[OZAKI]);
    printf("\n");
    if (!n_cases) {
        printf("no case matched\n");
        return 3;
    }
    if (max_failures || bias_failures) {
        printf("umas-gemm-check: FAIL (tc-jam or tma-jam-c1): %s\n", failed.c_str());
        return max_failures ? 1 : 2;
    }
    printf("umas-gemm-check: PASS (%d cases)\n", n_cases);
    return 0;
}
