// test_kernels.cpp - the CUDA edge kernels (cuda/edgewise_producer.cu, edgewise_consumer.cu), the
// radial MLP's LayerNorm+SiLU kernels (cuda/geometry.cu) and the split-precision GEMM
// (cuda/gemm/gemm_tc_tma.cu), one at a time, against the CPU float64 functions they mirror
// (core/edgewise.c, core/nn.c), on random graphs with real Wigner rotations and random rows.
//
// Specification (docs/history/gpu-performance.md, plan item 6: the per-kernel tests of the seed):
//  * producer: cu_gather_rotate equals umas_gather_rotate followed by conv1's radial scaling, both
//    the scaled output and the unscaled copy, within 1e-5 x max(1, max |reference|) per l-block;
//    leaving out the unscaled copy (null) gives the same scaled bits;
//  * consumer: cu_rotate_back_scatter equals umas_rotate_back_scatter summed into the targets
//    within 1e-5 x max(1, max |reference|) per l-block; cu_fixed_add turns its fixed-point sums
//    into exactly the floats they encode and clears them;
//  * backward: cu_gather_rotate_backward (grad to node features through both ends, grad to the
//    Wigner blocks), cu_rotate_back_backward (grad to messages, Wigner blocks, envelope) and
//    cu_edge_degree_backward equal umas_gather_rotate_backward, umas_rotate_back_backward and
//    umas_edge_degree_backward PER l-BLOCK (features: l = 0, 1, 2; Wigner: D^1 3x3, D^2 5x5)
//    within 1e-3 absolute for the sums over channels or edges (the seed's floor), and within the
//    forward's 1e-5 x max(1, max |reference|) for the elementwise outputs (grad to messages,
//    cu_scale_by_radial_backward's grad to radial weights and rescaled adjoint); every error
//    found is printed ("[ measured ]") and recorded as a test property;
//  * edge degree: cu_edge_degree_forward equals umas_edge_degree_forward within 1e-5 x
//    max(1, max |reference|) per l-block;
//  * reproducibility: two runs of each kernel that sums in 64-bit fixed point give bitwise the
//    same sums, and the per-edge sums of the backward kernels are bitwise the same too.
//  * LayerNorm+SiLU (one warp per row): cu_layer_norm_silu equals core/nn.c norm_silu and
//    cu_layer_norm_silu_backward equals norm_silu_backward (static there, so composed here from
//    the public umas_layer_norm_forward/backward, umas_silu_forward and umas_silu_derivative, the
//    same steps), both within 1e-5 x max(1, max |reference|) (elementwise float32 after double
//    statistics); the backward in place (d_in = d_out) gives bitwise the backward's separate
//    output; two runs of each give the same bits; rows = 0 is a no-op.
//    Rows x n: 3000 x 128 (Ce), 5 x 7 (a partial warp), 100 x 1000 (32 elements per lane), and
//    530000 x 8 (more rows than the capped grid's warps: the grid-stride loop wraps). Inputs:
//    per-row offset in [-1, 1] plus values in [-1, 1], weight in [0.5, 1.5], bias and d_out in
//    [-1, 1].
//  * split-precision GEMM (precision 3xtf32 on Hopper): tc_gemm_nt_tma with the model's scheme
//    (TC_ACCUM_CHUNK_JAM, chunks of 2) computes Y = beta Y + X W^T + bias within
//    1e-5 x (sum_k |x w| + |beta y| + |bias|) of the float64 product per element, writes nothing
//    outside rows x out (NaN padding and a guard row stay), gives the same bits twice, and gives
//    exact zeros for zero rows of X (every 7th row; checked where neither bias nor beta adds to
//    them); operands it cannot take (strides not multiples of 4) are declined (returns 0) with
//    nothing written. Shapes: the model's 3000 x 768 -> 640, a ragged 1003 x 200 -> 72 with
//    padded strides and beta = 1, K = 8 (less than one stage), 500 x 96 -> 256 without bias or
//    beta, 1 row.
//  * ozaki GEMM (precision ozaki on Hopper, cuda/gemm/gemm_i8.h): i8_slice writes each row as its
//    exponent e (max|row| (1 + 2^-6) < 2^e <= 2 max|row| (1 + 2^-6)) and three balanced base-255
//    digits in [-127, 127] whose value 2^(e-23) (255^2 s0 + 255 s1 + s2) is within 2^(e-24) of the
//    entry, zeros past K, a
//    zero row as zeros, a row with inf or NaN marked I8_NOT_FINITE (rows of 45, 700 and 2000
//    entries, with 16-byte and odd strides); i8_gemm_nt on sliced
//    operands meets the split-precision GEMM's bound above on the same shapes (zero rows give
//    exact zeros, nothing written outside rows x out, the same bits twice; plus 20011 x 136 ->
//    200 with beta and bias: more tiles than multiprocessors, so blocks take several), and a
//    non-finite row of X gives NaN in its row of Y only.
// Sizes: the seed's N = 100, E = 3000, C = 128; N = 5, E = 10; C = 256; plus C = 7 (a partial
// warp) and C = 320 (more channels than threads in the one-block-per-edge kernels).
// Inputs: random edges (source != target, pairs may repeat), the Wigner blocks of random unit
// vectors (plus the six axis directions) from core/wigner.c, envelopes in (0, 1], features and
// radial weights in [-1, 1], all from std::mt19937 with a fixed seed. The CPU reads the very
// float32 values the GPU gets, widened to double, so only the kernels' float32 arithmetic shows.
// Without a GPU every test skips.
#include "gemm_i8.h"
#include "gemm_tc.h"
#include "kernels.h" // cuda/: C++ linkage (compiled by nvcc as C++)

extern "C" {
#include "edgewise.h"
#include "nn.h"
#include "wigner.h"
}

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

const double forward_tolerance = 1e-5;  // x max(1, max |reference|) of the block
const double backward_tolerance = 1e-3; // absolute, sums over channels or edges

bool have_gpu() {
    static const bool present = [] {
        int count = 0;
        if (cudaGetDeviceCount(&count) != cudaSuccess) {
            cudaGetLastError(); // clear the error of "no driver / no device"
            return false;
        }
        return count > 0;
    }();
    return present;
}

// ---------------------------------------------------------------------------------------------
// device memory
// ---------------------------------------------------------------------------------------------

void check_cuda(cudaError_t status, const char *what) {
    if (status != cudaSuccess)
        throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

// After a launch: its launch error, then its execution error.
void finish(const char *kernel) {
    check_cuda(cudaGetLastError(), kernel);
    check_cuda(cudaDeviceSynchronize(), kernel);
}

// A device array of `count` T, freed with the object.
template <class T> class DeviceArray {
  public:
    explicit DeviceArray(size_t count) : count_(count) {
        check_cuda(cudaMalloc(&data_, bytes()), "cudaMalloc");
    }
    explicit DeviceArray(const std::vector<T> &host) : DeviceArray(host.size()) {
        upload(host);
    }
    ~DeviceArray() {
        cudaFree(data_);
    }
    DeviceArray(const DeviceArray &) = delete;
    DeviceArray &operator=(const DeviceArray &) = delete;

    void upload(const std::vector<T> &host) {
        if (host.size() != count_)
            throw std::runtime_error("DeviceArray::upload: size mismatch");
        check_cuda(cudaMemcpy(data_, host.data(), sizeof(T) * count_, cudaMemcpyHostToDevice),
                   "upload");
    }
    std::vector<T> download() const {
        std::vector<T> host(count_);
        check_cuda(cudaMemcpy(host.data(), data_, sizeof(T) * count_, cudaMemcpyDeviceToHost),
                   "download");
        return host;
    }
    // Every byte = `byte`: 0 for sums, 0xff (float NaN) for outputs that must be overwritten.
    void fill_bytes(int byte) {
        check_cuda(cudaMemset(data_, byte, bytes()), "cudaMemset");
    }
    T *get() {
        return data_;
    }

  private:
    size_t bytes() const {
        return sizeof(T) * std::max<size_t>(count_, 1);
    }
    T *data_ = nullptr;
    size_t count_;
};

const int nan_bytes = 0xff;

template <class T> bool same_bits(const std::vector<T> &a, const std::vector<T> &b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), sizeof(T) * a.size()) == 0;
}

// Fixed-point node sums (cuda/kernels.h: value v stored as round(v 2^32)) as doubles.
std::vector<double> from_fixed(const std::vector<unsigned long long> &fixed) {
    std::vector<double> v(fixed.size());
    for (size_t i = 0; i < fixed.size(); i++)
        v[i] = (double)(long long)fixed[i] * CU_FIXED_UNIT;
    return v;
}

// ---------------------------------------------------------------------------------------------
// random inputs
// ---------------------------------------------------------------------------------------------

std::vector<float> random_values(std::mt19937 &rng, size_t count, float lo = -1.0f,
                                 float hi = 1.0f) {
    std::uniform_real_distribution<float> uniform(lo, hi);
    std::vector<float> v(count);
    for (float &x : v)
        x = uniform(rng);
    return v;
}

std::vector<double> widen(const std::vector<float> &v) {
    return std::vector<double>(v.begin(), v.end());
}

cu_wigner to_float(const umas_wigner &D) {
    cu_wigner w;
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++)
            w.l1[a][b] = (float)D.l1[a][b];
    for (int a = 0; a < 5; a++)
        for (int b = 0; b < 5; b++)
            w.l2[a][b] = (float)D.l2[a][b];
    return w;
}

umas_wigner widen(const cu_wigner &w) {
    umas_wigner D;
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++)
            D.l1[a][b] = w.l1[a][b];
    for (int a = 0; a < 5; a++)
        for (int b = 0; b < 5; b++)
            D.l2[a][b] = w.l2[a][b];
    return D;
}

// Random cu_wigner records (for the accumulated adjoints' starting values).
std::vector<cu_wigner> random_wigner_records(std::mt19937 &rng, int count) {
    std::vector<float> v = random_values(rng, 34 * (size_t)count);
    std::vector<cu_wigner> w(count);
    std::memcpy(w.data(), v.data(), sizeof(float) * v.size());
    return w;
}

std::vector<umas_wigner> widen(const std::vector<cu_wigner> &w) {
    std::vector<umas_wigner> D(w.size());
    for (size_t e = 0; e < w.size(); e++)
        D[e] = widen(w[e]);
    return D;
}

// max over i, j of |sum_k M[i][k] M[j][k] - delta_ij| for an n x n row-major M.
double orthogonality_error(const double *M, int n) {
    double worst = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double dot = 0;
            for (int k = 0; k < n; k++)
                dot += M[i * n + k] * M[j * n + k];
            worst = std::max(worst, std::fabs(dot - (i == j ? 1.0 : 0.0)));
        }
    return worst;
}

// A test graph's size. by_target: the edges sorted by target, as pair_umas and core/graph.c
// give them (the node sums then take long runs of equal targets); else in random order.
struct Size {
    int N, E, C;
    bool by_target = false;
};

std::string size_label(const ::testing::TestParamInfo<Size> &info) {
    const Size &s = info.param;
    return "N" + std::to_string(s.N) + "_E" + std::to_string(s.E) + "_C" + std::to_string(s.C) +
           (s.by_target ? "_by_target" : "");
}

void PrintTo(const Size &s, std::ostream *os) {
    *os << "N=" << s.N << " E=" << s.E << " C=" << s.C << (s.by_target ? " sorted by target" : "");
}

// A random graph with its edge geometry: float32 values for the GPU, the same values widened to
// double for the CPU.
struct Graph {
    int N = 0, E = 0, C = 0;
    std::vector<int> source, target;    // [E], source != target
    std::vector<cu_wigner> wigner;      // [E] D^1 [3][3], D^2 [5][5] of the edge direction
    std::vector<umas_wigner> wigner64;  // [E] the same entries in double
    std::vector<float> envelope;        // [E] in (0, 1]
    std::vector<double> envelope64;     // [E]
    double max_orthogonality_error = 0; // of the double D^1, D^2 (they are rotations)

    umas_edge_chunk chunk() const {
        umas_edge_chunk c;
        c.count = E;
        c.source = source.data();
        c.target = target.data();
        c.wigner = wigner64.data();
        c.envelope = envelope64.data();
        return c;
    }
};

Graph random_graph(const Size &size, std::mt19937 &rng) {
    Graph g;
    g.N = size.N, g.E = size.E, g.C = size.C;
    std::uniform_int_distribution<int> node(0, g.N - 1);
    std::uniform_real_distribution<double> cube(-1.0, 1.0);
    const double axes[6][3] = {{1, 0, 0}, {-1, 0, 0}, {0, 1, 0}, {0, -1, 0}, {0, 0, 1}, {0, 0, -1}};
    std::vector<std::pair<int, int>> ends(g.E); // (target, source)
    for (auto &[t, s] : ends) {
        s = node(rng), t = node(rng);
        while (t == s)
            t = node(rng);
    }
    if (size.by_target)
        std::stable_sort(ends.begin(), ends.end(),
                         [](const auto &a, const auto &b) { return a.first < b.first; });
    for (int e = 0; e < g.E; e++) {
        g.source.push_back(ends[e].second);
        g.target.push_back(ends[e].first);

        double u[3], norm = 0;
        if (e < 6) { // the coordinate axes, where the edge frame's choice of axis switches
            for (int k = 0; k < 3; k++)
                u[k] = axes[e][k];
            norm = 1;
        } else {
            do { // uniform in the unit ball, away from 0
                for (double &c : u)
                    c = cube(rng);
                norm = std::sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2]);
            } while (norm < 0.1 || norm > 1.0);
        }
        for (double &c : u)
            c /= norm;
        umas_wigner D;
        umas_wigner_from_unit_vector(u, &D);
        g.max_orthogonality_error =
            std::max({g.max_orthogonality_error, orthogonality_error(&D.l1[0][0], 3),
                      orthogonality_error(&D.l2[0][0], 5)});
        g.wigner.push_back(to_float(D));
        g.wigner64.push_back(widen(g.wigner.back()));
    }
    g.envelope = random_values(rng, g.E, 0.0f, 1.0f);
    for (float &v : g.envelope)
        v = 1.0f - v; // [0, 1) -> (0, 1]
    g.envelope64 = widen(g.envelope);
    return g;
}

// The graph's per-edge arrays on the device.
struct DeviceGraph {
    DeviceArray<int> source, target;
    DeviceArray<cu_wigner> wigner;
    DeviceArray<float> envelope;
    explicit DeviceGraph(const Graph &g)
        : source(g.source), target(g.target), wigner(g.wigner), envelope(g.envelope) {}
};

// ---------------------------------------------------------------------------------------------
// CPU references (float64, core/edgewise.c)
// ---------------------------------------------------------------------------------------------

// umas_gather_rotate per edge: u [E][9][2C] M-order, u[e][p][0:C] = (D x[source])[m_to_l[p]],
// u[e][p][C:2C] = (D x[target])[m_to_l[p]]; x [N][9][C] L-order.
std::vector<double> cpu_gather_rotate(const Graph &g, const std::vector<double> &x) {
    const int C = g.C;
    std::vector<double> u((size_t)g.E * 18 * C);
    for (int e = 0; e < g.E; e++)
        umas_gather_rotate(&g.wigner64[e], x.data() + (size_t)g.source[e] * 9 * C,
                           x.data() + (size_t)g.target[e] * 9 * C, C,
                           u.data() + (size_t)e * 18 * C);
    return u;
}

// conv1's radial scaling (core/edgewise.c scale_by_radial, static there, so written here from its
// documented layout): the radial entry [0, 12C) that scales row p, column q of an edge's [9][2C]
// M-order features. Rows 0..2 by [0, 6C); rows 3, 4 and again 5, 6 (the m = 1 real and imaginary
// parts) by [6C, 10C); rows 7 and again 8 (m = 2) by [10C, 12C).
size_t radial_index(int p, int q, int C) {
    if (p < 3)
        return (size_t)p * 2 * C + q;
    if (p < 7)
        return 6 * (size_t)C + (size_t)((p - 3) % 2) * 2 * C + q;
    return 10 * (size_t)C + q;
}

// y [E][9][2C] = u * radial at radial_index; radial [E][12C].
std::vector<double> cpu_scale_by_radial(int E, int C, const std::vector<double> &radial,
                                        const std::vector<double> &u) {
    std::vector<double> y(u.size());
    for (int e = 0; e < E; e++)
        for (int p = 0; p < 9; p++)
            for (int q = 0; q < 2 * C; q++) {
                size_t k = (size_t)e * 18 * C + (size_t)p * 2 * C + q;
                y[k] = u[k] * radial[(size_t)e * 12 * C + radial_index(p, q, C)];
            }
    return y;
}

// Adjoint of cpu_scale_by_radial: d_radial [E][12C] = sum over the uses of each entry of
// dy * unscaled (overwrite); dy [E][9][2C] *= radial (in place).
std::vector<double> cpu_scale_by_radial_backward(int E, int C, const std::vector<double> &radial,
                                                 const std::vector<double> &unscaled,
                                                 std::vector<double> &dy) {
    std::vector<double> d_radial((size_t)E * 12 * C, 0.0);
    for (int e = 0; e < E; e++)
        for (int p = 0; p < 9; p++)
            for (int q = 0; q < 2 * C; q++) {
                size_t k = (size_t)e * 18 * C + (size_t)p * 2 * C + q;
                size_t r = (size_t)e * 12 * C + radial_index(p, q, C);
                d_radial[r] += dy[k] * unscaled[k];
                dy[k] *= radial[r];
            }
    return d_radial;
}

// umas_rotate_back_scatter per edge: x_out [N][9][C] (from 0) += env D^T z^L, z [E][9][C] M-order.
std::vector<double> cpu_rotate_back_scatter(const Graph &g, const std::vector<double> &z) {
    const int C = g.C;
    std::vector<double> x_out((size_t)g.N * 9 * C, 0.0);
    for (int e = 0; e < g.E; e++)
        umas_rotate_back_scatter(&g.wigner64[e], g.envelope64[e], z.data() + (size_t)e * 9 * C, C,
                                 x_out.data() + (size_t)g.target[e] * 9 * C);
    return x_out;
}

// umas_gather_rotate_backward per edge: d_x [N][9][C] (from 0) += D^T dy^L through both ends;
// d_wigner [E] += <dy^L[i], [x_source | x_target][j]>. dy [E][9][2C] M-order.
std::vector<double> cpu_gather_rotate_backward(const Graph &g, const std::vector<double> &x,
                                               const std::vector<double> &dy,
                                               std::vector<umas_wigner> &d_wigner) {
    const int C = g.C;
    std::vector<double> d_x((size_t)g.N * 9 * C, 0.0);
    for (int e = 0; e < g.E; e++) {
        size_t s = (size_t)g.source[e] * 9 * C, t = (size_t)g.target[e] * 9 * C;
        umas_gather_rotate_backward(&g.wigner64[e], x.data() + s, x.data() + t,
                                    dy.data() + (size_t)e * 18 * C, C, d_x.data() + s,
                                    d_x.data() + t, &d_wigner[e]);
    }
    return d_x;
}

// ---------------------------------------------------------------------------------------------
// comparison, per l-block
// ---------------------------------------------------------------------------------------------

// Largest |reference - value| (NaN if any value is NaN) and largest |reference| over a set.
struct Deviation {
    double error = 0, scale = 0;
    bool nan = false;
    void add(double reference, double value) {
        double d = std::fabs(reference - value);
        if (std::isnan(d))
            nan = true;
        else
            error = std::max(error, d);
        scale = std::max(scale, std::fabs(reference));
    }
    double max_error() const {
        return nan ? std::numeric_limits<double>::quiet_NaN() : error;
    }
};

using ByDegree = std::array<Deviation, 3>; // l = 0, 1, 2

// Degree l of each of the 9 rows: L-order (node features) and M-order (edge features).
const int degree_of_l[9] = {0, 1, 1, 1, 2, 2, 2, 2, 2};
const int degree_of_m[9] = {0, 1, 2, 1, 2, 1, 2, 2, 2};
// Degree of each [2C] block of conv1's radial weights [12C] (the M-order rows 0, 1, 2, 3, 4, 7).
const int degree_of_radial[6] = {0, 1, 2, 1, 2, 2};
// Degree of each [C] row of the edge-degree radial weights [3C].
const int degree_of_degree_radial[3] = {0, 1, 2};

// Deviation per degree of a tensor [items][rows][width], the degree of row r being degree[r].
template <class T>
ByDegree by_degree(const std::vector<double> &reference, const std::vector<T> &value, int rows,
                   size_t width, const int *degree) {
    ByDegree d;
    EXPECT_EQ(reference.size(), value.size());
    for (size_t k = 0; k < std::min(reference.size(), value.size()); k++)
        d[degree[k / width % rows]].add(reference[k], (double)value[k]);
    return d;
}

// Deviation per Wigner block: [0] D^1 (3x3), [1] D^2 (5x5).
std::array<Deviation, 2> by_wigner_block(const std::vector<umas_wigner> &reference,
                                         const std::vector<cu_wigner> &value) {
    std::array<Deviation, 2> d;
    EXPECT_EQ(reference.size(), value.size());
    for (size_t e = 0; e < std::min(reference.size(), value.size()); e++) {
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 3; b++)
                d[0].add(reference[e].l1[a][b], value[e].l1[a][b]);
        for (int a = 0; a < 5; a++)
            for (int b = 0; b < 5; b++)
                d[1].add(reference[e].l2[a][b], value[e].l2[a][b]);
    }
    return d;
}

template <class T>
Deviation overall(const std::vector<double> &reference, const std::vector<T> &value) {
    Deviation d;
    EXPECT_EQ(reference.size(), value.size());
    for (size_t k = 0; k < std::min(reference.size(), value.size()); k++)
        d.add(reference[k], (double)value[k]);
    return d;
}

enum class Bound {
    relative, // forward_tolerance x max(1, max |reference|): elementwise outputs
    absolute, // backward_tolerance: sums over channels or edges
};

// Prints and records the error of one block, and expects it within the bound.
void check(const std::string &label, const Deviation &d, Bound bound) {
    double limit =
        bound == Bound::relative ? forward_tolerance * std::max(1.0, d.scale) : backward_tolerance;
    std::printf("[ measured ] %-32s max |err| %.3e  max |ref| %.3e  (bound %.1e)\n", label.c_str(),
                d.max_error(), d.scale, limit);
    char text[32];
    std::snprintf(text, sizeof text, "%.3e", d.max_error());
    ::testing::Test::RecordProperty(label, text);
    EXPECT_LE(d.max_error(), limit) << label << " (max |reference| " << d.scale << ")";
}

void check_degrees(const std::string &label, const ByDegree &d, Bound bound) {
    for (int l = 0; l < 3; l++)
        check(label + "_l" + std::to_string(l), d[l], bound);
}

void check_wigner(const std::string &label, const std::array<Deviation, 2> &d) {
    check(label + "_D1", d[0], Bound::absolute);
    check(label + "_D2", d[1], Bound::absolute);
}

// ---------------------------------------------------------------------------------------------
// the tests
// ---------------------------------------------------------------------------------------------

class EdgeKernels : public ::testing::TestWithParam<Size> {
  protected:
    void SetUp() override {
        if (!have_gpu())
            GTEST_SKIP() << "no CUDA device";
        g = random_graph(GetParam(), rng);
        ASSERT_LT(g.max_orthogonality_error, 1e-12) << "Wigner blocks are not rotations";
        dg = std::make_unique<DeviceGraph>(g);
    }
    size_t node_size() const { // [N][9][C]
        return (size_t)g.N * 9 * g.C;
    }
    std::mt19937 rng{20240611};
    Graph g;
    std::unique_ptr<DeviceGraph> dg;
};

TEST_P(EdgeKernels, GatherRotateEqualsCpuGatherRotateAndRadialScaling) {
    const int E = g.E, C = g.C;
    std::vector<float> x = random_values(rng, node_size());             // [N][9][C]
    std::vector<float> radial = random_values(rng, (size_t)E * 12 * C); // [E][12C]
    std::vector<double> u_ref = cpu_gather_rotate(g, widen(x));         // [E][9][2C]
    std::vector<double> y_ref = cpu_scale_by_radial(E, C, widen(radial), u_ref);

    DeviceArray<float> dx(x), dradial(radial);
    DeviceArray<float> unscaled((size_t)E * 18 * C), y((size_t)E * 18 * C); // [E][9][2C]
    unscaled.fill_bytes(nan_bytes);
    y.fill_bytes(nan_bytes);
    cu_gather_rotate(E, dg->source.get(), dg->target.get(), dg->wigner.get(), C, dx.get(),
                     dradial.get(), unscaled.get(), y.get(), 0);
    finish("cu_gather_rotate");
    std::vector<float> y_gpu = y.download();
    check_degrees("gather_rotate_y", by_degree(y_ref, y_gpu, 9, 2 * C, degree_of_m),
                  Bound::relative);
    check_degrees("gather_rotate_unscaled",
                  by_degree(u_ref, unscaled.download(), 9, 2 * C, degree_of_m), Bound::relative);

    // without the unscaled copy: the same scaled output
    y.fill_bytes(nan_bytes);
    cu_gather_rotate(E, dg->source.get(), dg->target.get(), dg->wigner.get(), C, dx.get(),
                     dradial.get(), nullptr, y.get(), 0);
    finish("cu_gather_rotate (unscaled = null)");
    EXPECT_TRUE(same_bits(y_gpu, y.download()));
}

TEST_P(EdgeKernels, RotateBackScatterEqualsCpuRotateBackSummedIntoTargets) {
    const int E = g.E, C = g.C;
    std::vector<float> z = random_values(rng, (size_t)E * 9 * C);     // [E][9][C] M-order
    std::vector<double> x_ref = cpu_rotate_back_scatter(g, widen(z)); // [N][9][C]

    DeviceArray<float> dz(z);
    std::vector<unsigned long long> runs[2];
    for (auto &run : runs) {
        DeviceArray<unsigned long long> x_out(node_size()); // fixed point [N][9][C]
        x_out.fill_bytes(0);
        cu_rotate_back_scatter(E, dg->target.get(), dg->wigner.get(), dg->envelope.get(), C,
                               dz.get(), x_out.get(), 0);
        finish("cu_rotate_back_scatter");
        run = x_out.download();
    }
    check_degrees("rotate_back_scatter", by_degree(x_ref, from_fixed(runs[0]), 9, C, degree_of_l),
                  Bound::relative);
    EXPECT_TRUE(same_bits(runs[0], runs[1])) << "fixed-point sums differ between two runs";

    // cu_fixed_add: x += the encoded value (here x = 0, so exactly the float of it), fixed = 0
    DeviceArray<unsigned long long> fixed(runs[0]);
    DeviceArray<float> x(node_size());
    x.fill_bytes(0);
    cu_fixed_add(node_size(), fixed.get(), x.get(), 0);
    finish("cu_fixed_add");
    std::vector<double> expected = from_fixed(runs[0]);
    std::vector<float> x_gpu = x.download();
    size_t mismatches = 0;
    for (size_t i = 0; i < x_gpu.size(); i++)
        mismatches += x_gpu[i] != (float)expected[i];
    EXPECT_EQ(mismatches, 0u) << "cu_fixed_add differs from the encoded values";
    EXPECT_TRUE(same_bits(fixed.download(), std::vector<unsigned long long>(node_size(), 0)))
        << "cu_fixed_add leaves the fixed-point sums non-zero";
}

TEST_P(EdgeKernels, GatherRotateBackwardEqualsCpuPerLBlock) {
    const int E = g.E, C = g.C;
    std::vector<float> x = random_values(rng, node_size());           // [N][9][C]
    std::vector<float> dy = random_values(rng, (size_t)E * 18 * C);   // [E][9][2C] M-order
    std::vector<cu_wigner> d_wigner0 = random_wigner_records(rng, E); // accumulated into
    std::vector<umas_wigner> d_wigner_ref = widen(d_wigner0);
    std::vector<double> d_x_ref = cpu_gather_rotate_backward(g, widen(x), widen(dy), d_wigner_ref);

    DeviceArray<float> dx(x), ddy(dy);
    std::vector<unsigned long long> d_x_runs[2];
    std::vector<cu_wigner> d_wigner_runs[2];
    for (int run = 0; run < 2; run++) {
        DeviceArray<unsigned long long> d_x(node_size()); // fixed point [N][9][C]
        d_x.fill_bytes(0);
        DeviceArray<cu_wigner> d_wigner(d_wigner0);
        cu_gather_rotate_backward(E, dg->source.get(), dg->target.get(), dg->wigner.get(), C,
                                  dx.get(), ddy.get(), d_x.get(), d_wigner.get(), 0);
        finish("cu_gather_rotate_backward");
        d_x_runs[run] = d_x.download();
        d_wigner_runs[run] = d_wigner.download();
    }
    check_degrees("gather_rotate_backward_dx",
                  by_degree(d_x_ref, from_fixed(d_x_runs[0]), 9, C, degree_of_l), Bound::absolute);
    check_wigner("gather_rotate_backward_dW", by_wigner_block(d_wigner_ref, d_wigner_runs[0]));
    EXPECT_TRUE(same_bits(d_x_runs[0], d_x_runs[1])) << "fixed-point sums differ between two runs";
    EXPECT_TRUE(same_bits(d_wigner_runs[0], d_wigner_runs[1]))
        << "d_wigner differs between two runs";
}

// umas_fast_gpu's one-pass producer backward equals the three kernels it replaces, bit for bit
// (same products and sums, only without u and the scaled adjoint in memory), and so the CPU.
TEST_P(EdgeKernels, ProducerBackwardEqualsGatherScaleAndGatherBackwardBitForBit) {
    const int E = g.E, C = g.C;
    std::vector<float> x = random_values(rng, node_size());             // [N][9][C]
    std::vector<float> radial = random_values(rng, (size_t)E * 12 * C); // [E][12C]
    std::vector<float> dy = random_values(rng, (size_t)E * 18 * C);     // [E][9][2C] M-order
    std::vector<cu_wigner> d_wigner0 = random_wigner_records(rng, E);   // accumulated into

    // the CPU: scale_by_radial_backward on u = gather_rotate(x), then gather_rotate_backward
    std::vector<double> dy_ref = widen(dy);
    std::vector<double> d_radial_ref =
        cpu_scale_by_radial_backward(E, C, widen(radial), cpu_gather_rotate(g, widen(x)), dy_ref);
    std::vector<umas_wigner> d_wigner_ref = widen(d_wigner0);
    std::vector<double> d_x_ref = cpu_gather_rotate_backward(g, widen(x), dy_ref, d_wigner_ref);

    DeviceArray<float> dx(x), dradial(radial);
    // three kernels
    DeviceArray<float> unscaled((size_t)E * 18 * C), dy_three(dy),
        d_radial_three((size_t)E * 12 * C);
    DeviceArray<unsigned long long> d_x_three(node_size());
    d_x_three.fill_bytes(0);
    DeviceArray<cu_wigner> d_wigner_three(d_wigner0);
    cu_gather_rotate(E, dg->source.get(), dg->target.get(), dg->wigner.get(), C, dx.get(),
                     dradial.get(), unscaled.get(), nullptr, 0);
    cu_scale_by_radial_backward(E, C, dradial.get(), unscaled.get(), dy_three.get(),
                                d_radial_three.get(), 0);
    cu_gather_rotate_backward(E, dg->source.get(), dg->target.get(), dg->wigner.get(), C, dx.get(),
                              dy_three.get(), d_x_three.get(), d_wigner_three.get(), 0);
    finish("gather_rotate + scale_by_radial_backward + gather_rotate_backward");
    // one pass
    DeviceArray<float> dy_one(dy), d_radial_one((size_t)E * 12 * C);
    DeviceArray<unsigned long long> d_x_one(node_size());
    d_x_one.fill_bytes(0);
    DeviceArray<cu_wigner> d_wigner_one(d_wigner0);
    cu_producer_backward(E, dg->source.get(), dg->target.get(), dg->wigner.get(), C, dx.get(),
                         dradial.get(), dy_one.get(), d_radial_one.get(), d_x_one.get(),
                         d_wigner_one.get(), 0);
    finish("cu_producer_backward");

    EXPECT_TRUE(same_bits(d_radial_one.download(), d_radial_three.download()));
    EXPECT_TRUE(same_bits(d_x_one.download(), d_x_three.download()));
    EXPECT_TRUE(same_bits(d_wigner_one.download(), d_wigner_three.download()));
    EXPECT_TRUE(same_bits(dy_one.download(), dy)) << "dy must be left as it was";
    check("producer_backward_d_radial", overall(d_radial_ref, d_radial_one.download()),
          Bound::relative);
    check_degrees("producer_backward_dx",
                  by_degree(d_x_ref, from_fixed(d_x_one.download()), 9, C, degree_of_l),
                  Bound::absolute);
    check_wigner("producer_backward_dW", by_wigner_block(d_wigner_ref, d_wigner_one.download()));
}

// Sliced GEMM operands of `rows` rows (gemm_i8.h), K[i] columns each, on the device.
struct SlicedOperands {
    SlicedOperands(int rows_, const std::vector<int> &K_)
        : rows(rows_), K(K_), slices(K.size()), exponents(K.size()), part(K.size()) {
        for (size_t i = 0; i < K.size(); i++) {
            const size_t ld = i8_slice_ld(K[i]);
            slices[i] = std::make_unique<DeviceArray<int8_t>>(3 * (size_t)rows * ld);
            slices[i]->fill_bytes(0);
            exponents[i] = std::make_unique<DeviceArray<int>>((size_t)rows);
            part[i] = {slices[i]->get(), exponents[i]->get(), ld, (size_t)rows * ld};
        }
    }
    // Slices fp32 rows: operand i from columns column[i] of a [rows][ld] device matrix.
    void slice(const float *a, size_t ld, const std::vector<int> &column) {
        for (size_t i = 0; i < K.size(); i++)
            i8_slice(rows, K[i], a + column[i], ld, &part[i], 0);
        finish("i8_slice");
    }
    // Expects the same exponents and, in rows whose exponent is finite, the same digits in the
    // K columns of each operand.
    void expect_equal(const SlicedOperands &other) const {
        for (size_t i = 0; i < K.size(); i++) {
            SCOPED_TRACE("operand " + std::to_string(i));
            const std::vector<int> e = exponents[i]->download();
            EXPECT_EQ(e, other.exponents[i]->download()) << "the row exponents differ";
            const std::vector<int8_t> a = slices[i]->download(), b = other.slices[i]->download();
            const size_t ld = part[i].ld;
            int wrong = 0;
            for (size_t plane = 0; plane < 3; plane++)
                for (size_t r = 0; r < (size_t)rows; r++)
                    for (size_t k = 0; k < (size_t)K[i] && e[r] != (int)I8_NOT_FINITE; k++)
                        wrong += a[(plane * rows + r) * ld + k] != b[(plane * rows + r) * ld + k];
            EXPECT_EQ(wrong, 0) << "digits that differ";
        }
    }
    int exponent(int i, int r) const {
        return exponents[i]->download()[r];
    }
    int rows;
    std::vector<int> K;
    std::vector<std::unique_ptr<DeviceArray<int8_t>>> slices;
    std::vector<std::unique_ptr<DeviceArray<int>>> exponents;
    std::vector<i8_sliced> part;
};

TEST_P(EdgeKernels, SlicedProducerWritesTheSlicesOfItsFp32OutputForEachConv1Operand) {
    const int E = g.E, C = g.C;
    std::vector<float> x = random_values(rng, node_size());                   // [N][9][C]
    std::vector<float> radial = random_values(rng, (size_t)E * 12 * C);       // [E][12C]
    radial[3 * 12 * (size_t)C + 1] = std::numeric_limits<float>::quiet_NaN(); // edge 3, m = 0
    DeviceArray<float> dx(x), dradial(radial), y((size_t)E * 18 * C);
    // the three parts of a [9][2C] row: columns [0, 6C), [6C, 14C), [14C, 18C)
    SlicedOperands fused(E, {6 * C, 8 * C, 4 * C}), sliced(E, {6 * C, 8 * C, 4 * C});
    const int launched =
        cu_gather_rotate_sliced(E, dg->source.get(), dg->target.get(), dg->wigner.get(), C,
                                dx.get(), dradial.get(), fused.part.data(), 0);
    finish("cu_gather_rotate_sliced");
    if (C > 256) {
        EXPECT_EQ(launched, 0) << "one channel per thread: C <= 256 only";
        return;
    }
    ASSERT_EQ(launched, 1);
    cu_gather_rotate(E, dg->source.get(), dg->target.get(), dg->wigner.get(), C, dx.get(),
                     dradial.get(), nullptr, y.get(), 0);
    sliced.slice(y.get(), 18 * (size_t)C, {0, 6 * C, 14 * C});
    fused.expect_equal(sliced);
    EXPECT_EQ(fused.exponent(0, 3), (int)I8_NOT_FINITE) << "edge 3's NaN marks its m = 0 row";
    EXPECT_NE(fused.exponent(1, 3), (int)I8_NOT_FINITE) << "and only that one";
}

// The gate with H = C channels on E edges: forward (conv2's operands) and backward (conv1's
// adjoint operands) written sliced are the slices of the fp32 kernels' outputs.
TEST_P(EdgeKernels, SlicedGateWritesTheSlicesOfItsFp32Outputs) {
    const int n = g.E, H = g.C;
    std::vector<float> gates = random_values(rng, (size_t)n * 2 * H); // [n][2H]
    std::vector<float> o = random_values(rng, (size_t)n * 9 * H);     // [n][9][H]
    std::vector<float> dg = random_values(rng, (size_t)n * 9 * H);
    o[5 * 9 * (size_t)H + 4 * H] = std::numeric_limits<float>::infinity(); // edge 5, m = 1
    DeviceArray<float> dgates(gates), d_o(o), d_dg(dg), g_out((size_t)n * 9 * H),
        d_conv1_m0((size_t)n * 5 * H);
    SlicedOperands forward(n, {3 * H, 4 * H, 2 * H}), forward_ref(n, {3 * H, 4 * H, 2 * H});
    SlicedOperands backward(n, {5 * H, 4 * H, 2 * H}), backward_ref(n, {5 * H, 4 * H, 2 * H});
    const int launched_forward =
        cu_gate_forward_sliced(n, H, dgates.get(), d_o.get(), forward.part.data(), 0);
    const int launched_backward =
        cu_gate_backward_sliced(n, H, dgates.get(), d_o.get(), d_dg.get(), backward.part.data(), 0);
    finish("cu_gate_forward_sliced, cu_gate_backward_sliced");
    if (H > 256) {
        EXPECT_EQ(launched_forward, 0);
        EXPECT_EQ(launched_backward, 0);
        return;
    }
    ASSERT_EQ(launched_forward, 1);
    ASSERT_EQ(launched_backward, 1);
    EXPECT_TRUE(same_bits(d_dg.download(), dg)) << "dg is only read";
    cu_gate_forward(n, H, dgates.get(), d_o.get(), g_out.get(), 0);
    cu_gate_backward(n, H, dgates.get(), d_o.get(), d_dg.get(), d_conv1_m0.get(), 0);
    finish("cu_gate_forward, cu_gate_backward");
    forward_ref.slice(g_out.get(), 9 * (size_t)H, {0, 3 * H, 7 * H});
    forward.expect_equal(forward_ref);
    EXPECT_EQ(forward.exponent(1, 5), (int)I8_NOT_FINITE) << "edge 5's inf marks its m = 1 row";
    EXPECT_NE(forward.exponent(0, 5), (int)I8_NOT_FINITE) << "and only that one";
    // backward: operand 0 from d_conv1_m0 [n][5H], 1 and 2 from dO [n][9H]
    SlicedOperands m0_ref(n, {5 * H, 4 * H, 2 * H});
    m0_ref.slice(d_conv1_m0.get(), 5 * (size_t)H, {0, 0, 0});
    backward_ref.slice(d_dg.get(), 9 * (size_t)H, {0, 3 * H, 7 * H});
    std::swap(backward_ref.slices[0], m0_ref.slices[0]);
    std::swap(backward_ref.exponents[0], m0_ref.exponents[0]);
    backward.expect_equal(backward_ref);
}

TEST_P(EdgeKernels, SlicedProducerBackwardWritesTheSlicesOfDRadialAndTheSameAdjoints) {
    const int E = g.E, C = g.C;
    std::vector<float> x = random_values(rng, node_size());               // [N][9][C]
    std::vector<float> radial = random_values(rng, (size_t)E * 12 * C);   // [E][12C]
    std::vector<float> dy = random_values(rng, (size_t)E * 18 * C);       // [E][9][2C] M-order
    dy[2 * 18 * (size_t)C + 5] = std::numeric_limits<float>::quiet_NaN(); // edge 2's d_radial
    std::vector<cu_wigner> d_wigner0 = random_wigner_records(rng, E);
    DeviceArray<float> dx(x), dradial(radial), ddy(dy), d_radial((size_t)E * 12 * C);
    DeviceArray<unsigned long long> d_x(node_size()), d_x_sliced(node_size());
    d_x.fill_bytes(0);
    d_x_sliced.fill_bytes(0);
    DeviceArray<cu_wigner> d_wigner(d_wigner0), d_wigner_sliced(d_wigner0);
    SlicedOperands sliced(E, {12 * C}), reference(E, {12 * C});
    const int launched = cu_producer_backward_sliced(
        E, dg->source.get(), dg->target.get(), dg->wigner.get(), C, dx.get(), dradial.get(),
        ddy.get(), &sliced.part[0], d_x_sliced.get(), d_wigner_sliced.get(), 0);
    finish("cu_producer_backward_sliced");
    if (C > 256) {
        EXPECT_EQ(launched, 0) << "one channel per thread: C <= 256 only";
        return;
    }
    ASSERT_EQ(launched, 1);
    cu_producer_backward(E, dg->source.get(), dg->target.get(), dg->wigner.get(), C, dx.get(),
                         dradial.get(), ddy.get(), d_radial.get(), d_x.get(), d_wigner.get(), 0);
    finish("cu_producer_backward");
    reference.slice(d_radial.get(), 12 * (size_t)C, {0});
    sliced.expect_equal(reference);
    EXPECT_EQ(sliced.exponent(0, 2), (int)I8_NOT_FINITE) << "edge 2's NaN marks its row";
    EXPECT_TRUE(same_bits(d_x_sliced.download(), d_x.download()));
    EXPECT_TRUE(same_bits(d_wigner_sliced.download(), d_wigner.download()));
}

TEST_P(EdgeKernels, ScaleByRadialBackwardEqualsCpu) {
    const int E = g.E, C = g.C;
    std::vector<float> radial = random_values(rng, (size_t)E * 12 * C);   // [E][12C]
    std::vector<float> unscaled = random_values(rng, (size_t)E * 18 * C); // [E][9][2C]
    std::vector<float> dy = random_values(rng, (size_t)E * 18 * C);       // [E][9][2C]
    std::vector<double> dy_ref = widen(dy);
    std::vector<double> d_radial_ref =
        cpu_scale_by_radial_backward(E, C, widen(radial), widen(unscaled), dy_ref);

    DeviceArray<float> dradial(radial), dunscaled(unscaled), ddy(dy);
    DeviceArray<float> d_radial((size_t)E * 12 * C); // [E][12C], overwritten
    d_radial.fill_bytes(nan_bytes);
    cu_scale_by_radial_backward(E, C, dradial.get(), dunscaled.get(), ddy.get(), d_radial.get(), 0);
    finish("cu_scale_by_radial_backward");
    check_degrees("scale_by_radial_backward_dradial",
                  by_degree(d_radial_ref, d_radial.download(), 6, 2 * C, degree_of_radial),
                  Bound::relative);
    check_degrees("scale_by_radial_backward_dy",
                  by_degree(dy_ref, ddy.download(), 9, 2 * C, degree_of_m), Bound::relative);
}

TEST_P(EdgeKernels, RotateBackBackwardEqualsCpuPerLBlock) {
    const int E = g.E, C = g.C;
    std::vector<float> z = random_values(rng, (size_t)E * 9 * C);     // [E][9][C] M-order
    std::vector<float> d_out = random_values(rng, node_size());       // [N][9][C] L-order
    std::vector<cu_wigner> d_wigner0 = random_wigner_records(rng, E); // accumulated into
    std::vector<float> d_envelope0 = random_values(rng, E);           // accumulated into
    std::vector<umas_wigner> d_wigner_ref = widen(d_wigner0);
    std::vector<double> d_envelope_ref = widen(d_envelope0);
    std::vector<double> dz_ref((size_t)E * 9 * C); // [E][9][C] M-order
    std::vector<double> z64 = widen(z), d_out64 = widen(d_out);
    umas_edge_chunk chunk = g.chunk();
    umas_rotate_back_chunk_backward(&chunk, z64.data(), d_out64.data(), C, dz_ref.data(),
                                    d_wigner_ref.data(), d_envelope_ref.data());

    DeviceArray<float> dz_in(z), dd_out(d_out);
    std::vector<float> dz_runs[2], d_envelope_runs[2];
    std::vector<cu_wigner> d_wigner_runs[2];
    for (int run = 0; run < 2; run++) {
        DeviceArray<float> dz((size_t)E * 9 * C); // overwritten
        dz.fill_bytes(nan_bytes);
        DeviceArray<cu_wigner> d_wigner(d_wigner0);
        DeviceArray<float> d_envelope(d_envelope0);
        cu_rotate_back_backward(E, dg->target.get(), dg->wigner.get(), dg->envelope.get(), C,
                                dz_in.get(), dd_out.get(), dz.get(), d_wigner.get(),
                                d_envelope.get(), 0);
        finish("cu_rotate_back_backward");
        dz_runs[run] = dz.download();
        d_wigner_runs[run] = d_wigner.download();
        d_envelope_runs[run] = d_envelope.download();
    }
    check_degrees("rotate_back_backward_dz", by_degree(dz_ref, dz_runs[0], 9, C, degree_of_m),
                  Bound::relative);
    check_wigner("rotate_back_backward_dW", by_wigner_block(d_wigner_ref, d_wigner_runs[0]));
    check("rotate_back_backward_denv", overall(d_envelope_ref, d_envelope_runs[0]),
          Bound::absolute);
    EXPECT_TRUE(same_bits(d_wigner_runs[0], d_wigner_runs[1])) << "d_wigner differs between runs";
    EXPECT_TRUE(same_bits(d_envelope_runs[0], d_envelope_runs[1]))
        << "d_envelope differs between runs";
}

TEST_P(EdgeKernels, SlicedRotateBackBackwardWritesTheSlicesOfDzAndTheSameAdjoints) {
    const int E = g.E, C = g.C;
    std::vector<float> z = random_values(rng, (size_t)E * 9 * C);     // [E][9][C] M-order
    std::vector<float> d_out = random_values(rng, node_size());       // [N][9][C] L-order
    std::vector<cu_wigner> d_wigner0 = random_wigner_records(rng, E); // accumulated into
    std::vector<float> d_envelope0 = random_values(rng, E);           // accumulated into
    DeviceArray<float> dz_in(z), dd_out(d_out), dz((size_t)E * 9 * C);
    DeviceArray<cu_wigner> d_wigner(d_wigner0), d_wigner_sliced(d_wigner0);
    DeviceArray<float> d_envelope(d_envelope0), d_envelope_sliced(d_envelope0);
    SlicedOperands sliced(E, {3 * C, 4 * C, 2 * C}), reference(E, {3 * C, 4 * C, 2 * C});
    cu_rotate_back_backward_sliced(E, dg->target.get(), dg->wigner.get(), dg->envelope.get(), C,
                                   dz_in.get(), dd_out.get(), d_wigner_sliced.get(),
                                   d_envelope_sliced.get(), sliced.part.data(), 0);
    cu_rotate_back_backward(E, dg->target.get(), dg->wigner.get(), dg->envelope.get(), C,
                            dz_in.get(), dd_out.get(), dz.get(), d_wigner.get(), d_envelope.get(),
                            0);
    finish("cu_rotate_back_backward_sliced, cu_rotate_back_backward");
    reference.slice(dz.get(), 9 * (size_t)C, {0, 3 * C, 7 * C});
    sliced.expect_equal(reference);
    EXPECT_TRUE(same_bits(d_wigner_sliced.download(), d_wigner.download()));
    EXPECT_TRUE(same_bits(d_envelope_sliced.download(), d_envelope.download()));
}

TEST_P(EdgeKernels, EdgeDegreeForwardEqualsCpu) {
    const int E = g.E, C = g.C;
    std::vector<float> radial = random_values(rng, (size_t)E * 3 * C); // [E][3C]: l = 0, 1, 2
    std::vector<double> radial64 = widen(radial);
    std::vector<double> x_ref(node_size(), 0.0); // [N][9][C]
    umas_edge_chunk chunk = g.chunk();
    umas_edge_degree_forward(C, &chunk, radial64.data(), x_ref.data());

    DeviceArray<float> dradial(radial);
    std::vector<unsigned long long> runs[2];
    for (auto &run : runs) {
        DeviceArray<unsigned long long> x_out(node_size()); // fixed point [N][9][C]
        x_out.fill_bytes(0);
        cu_edge_degree_forward(E, dg->target.get(), dg->wigner.get(), dg->envelope.get(), C,
                               dradial.get(), x_out.get(), 0);
        finish("cu_edge_degree_forward");
        run = x_out.download();
    }
    check_degrees("edge_degree_forward", by_degree(x_ref, from_fixed(runs[0]), 9, C, degree_of_l),
                  Bound::relative);
    EXPECT_TRUE(same_bits(runs[0], runs[1])) << "fixed-point sums differ between two runs";
}

TEST_P(EdgeKernels, EdgeDegreeBackwardEqualsCpuPerLBlock) {
    const int E = g.E, C = g.C;
    std::vector<float> radial = random_values(rng, (size_t)E * 3 * C); // [E][3C]
    std::vector<float> d_out = random_values(rng, node_size());        // [N][9][C]
    std::vector<cu_wigner> d_wigner0 = random_wigner_records(rng, E);  // accumulated into
    std::vector<float> d_envelope0 = random_values(rng, E);            // accumulated into
    std::vector<umas_wigner> d_wigner_ref = widen(d_wigner0);
    std::vector<double> d_envelope_ref = widen(d_envelope0);
    std::vector<double> d_radial_ref((size_t)E * 3 * C); // [E][3C]
    std::vector<double> radial64 = widen(radial), d_out64 = widen(d_out);
    umas_edge_chunk chunk = g.chunk();
    umas_edge_degree_backward(C, &chunk, radial64.data(), d_out64.data(), d_radial_ref.data(),
                              d_wigner_ref.data(), d_envelope_ref.data());

    DeviceArray<float> dradial(radial), dd_out(d_out);
    std::vector<float> d_radial_runs[2], d_envelope_runs[2];
    std::vector<cu_wigner> d_wigner_runs[2];
    for (int run = 0; run < 2; run++) {
        DeviceArray<float> d_radial((size_t)E * 3 * C); // overwritten
        d_radial.fill_bytes(nan_bytes);
        DeviceArray<cu_wigner> d_wigner(d_wigner0);
        DeviceArray<float> d_envelope(d_envelope0);
        cu_edge_degree_backward(E, dg->target.get(), dg->wigner.get(), dg->envelope.get(), C,
                                dradial.get(), dd_out.get(), d_radial.get(), d_wigner.get(),
                                d_envelope.get(), 0);
        finish("cu_edge_degree_backward");
        d_radial_runs[run] = d_radial.download();
        d_wigner_runs[run] = d_wigner.download();
        d_envelope_runs[run] = d_envelope.download();
    }
    check_degrees("edge_degree_backward_dradial",
                  by_degree(d_radial_ref, d_radial_runs[0], 3, C, degree_of_degree_radial),
                  Bound::relative);
    check_wigner("edge_degree_backward_dW", by_wigner_block(d_wigner_ref, d_wigner_runs[0]));
    check("edge_degree_backward_denv", overall(d_envelope_ref, d_envelope_runs[0]),
          Bound::absolute);
    EXPECT_TRUE(same_bits(d_wigner_runs[0], d_wigner_runs[1])) << "d_wigner differs between runs";
    EXPECT_TRUE(same_bits(d_envelope_runs[0], d_envelope_runs[1]))
        << "d_envelope differs between runs";
}

INSTANTIATE_TEST_SUITE_P(Sizes, EdgeKernels,
                         ::testing::Values(Size{100, 3000, 128},       // the seed's size
                                           Size{100, 3000, 128, true}, // as LAMMPS orders them
                                           Size{5, 10, 128},           // tiny graph
                                           Size{100, 3000, 256},       // wide features
                                           Size{5, 10, 7},             // a partial warp
                                           Size{50, 500, 320},         // C > threads per edge block
                                           Size{50, 500, 320, true},
                                           Size{3, 1000, 7, true}), // runs over many spans
                         size_label);

// ---------------------------------------------------------------------------------------------
// the radial MLP's LayerNorm+SiLU (cuda/geometry.cu against core/nn.c)
// ---------------------------------------------------------------------------------------------

struct RowSize {
    int rows, n;
};

std::string row_size_label(const ::testing::TestParamInfo<RowSize> &info) {
    return "rows" + std::to_string(info.param.rows) + "_n" + std::to_string(info.param.n);
}

void PrintTo(const RowSize &s, std::ostream *os) {
    *os << "rows=" << s.rows << " n=" << s.n;
}

// A LayerNorm's float32 parameters for the GPU and the same values widened for the CPU.
struct NormParameters {
    std::vector<float> weight, bias;      // [n]
    std::vector<double> weight64, bias64; // [n]
    umas_layer_norm layer_norm() {
        umas_layer_norm ln;
        ln.n = (int)weight.size();
        ln.weight = weight64.data();
        ln.bias = bias64.data();
        return ln;
    }
};

// core/nn.c norm_silu: SiLU(LayerNorm(x)), x [rows][n].
std::vector<double> cpu_norm_silu(umas_layer_norm ln, int rows, std::vector<double> x) {
    umas_layer_norm_forward(&ln, rows, x.data());
    umas_silu_forward(x.data(), x.size());
    return x;
}

// core/nn.c norm_silu_backward (static there; the same steps from the public pieces):
// d_pre_norm = LayerNorm^T(SiLU'(LayerNorm(pre_norm)) * d_hidden), all [rows][n].
std::vector<double> cpu_norm_silu_backward(umas_layer_norm ln, int rows,
                                           const std::vector<double> &pre_norm,
                                           const std::vector<double> &d_hidden) {
    std::vector<double> work = pre_norm;
    umas_layer_norm_forward(&ln, rows, work.data());
    for (size_t i = 0; i < work.size(); i++)
        work[i] = d_hidden[i] * umas_silu_derivative(work[i]);
    std::vector<double> d_pre_norm(pre_norm.size());
    umas_layer_norm_backward(&ln, rows, pre_norm.data(), work.data(), d_pre_norm.data());
    return d_pre_norm;
}

class NormSiluKernels : public ::testing::TestWithParam<RowSize> {
  protected:
    void SetUp() override {
        if (!have_gpu())
            GTEST_SKIP() << "no CUDA device";
        rows = GetParam().rows, n = GetParam().n;
        p.weight = random_values(rng, n, 0.5f, 1.5f);
        p.bias = random_values(rng, n);
        p.weight64 = widen(p.weight);
        p.bias64 = widen(p.bias);
        // each row: an offset in [-1, 1] (the mean to take out) plus values in [-1, 1]
        std::vector<float> offset = random_values(rng, rows);
        x = random_values(rng, size());
        for (size_t k = 0; k < size(); k++)
            x[k] += offset[k / n];
    }
    size_t size() const { // [rows][n]
        return (size_t)rows * n;
    }
    std::mt19937 rng{20240612};
    int rows = 0, n = 0;
    NormParameters p;
    std::vector<float> x; // [rows][n], the LayerNorm input
};

TEST_P(NormSiluKernels, ForwardEqualsCpuNormSilu) {
    std::vector<double> y_ref = cpu_norm_silu(p.layer_norm(), rows, widen(x));

    DeviceArray<float> dx(x), dweight(p.weight), dbias(p.bias);
    std::vector<float> runs[2];
    for (auto &run : runs) {
        DeviceArray<float> y(size()); // overwritten
        y.fill_bytes(nan_bytes);
        cu_layer_norm_silu(rows, n, dx.get(), n, dweight.get(), dbias.get(), y.get(), 0);
        finish("cu_layer_norm_silu");
        run = y.download();
    }
    check("layer_norm_silu", overall(y_ref, runs[0]), Bound::relative);
    EXPECT_TRUE(same_bits(runs[0], runs[1])) << "cu_layer_norm_silu differs between two runs";
    EXPECT_TRUE(same_bits(dx.download(), x)) << "the input must be left as it was";
}

// Written sliced (the next product's operand): the slices of the fp32 kernels' outputs.
TEST_P(NormSiluKernels, SlicedForwardAndBackwardWriteTheSlicesOfTheirFp32Outputs) {
    std::vector<float> d_out = random_values(rng, size()); // [rows][n]
    x[n / 2] = std::numeric_limits<float>::quiet_NaN();    // row 0 not finite
    DeviceArray<float> dx(x), dweight(p.weight), dbias(p.bias), dd_out(d_out);
    DeviceArray<float> y(size()), d_in(size());
    SlicedOperands y_sliced(rows, {n}), y_reference(rows, {n});
    SlicedOperands d_in_sliced(rows, {n}), d_in_reference(rows, {n});
    const int forward = cu_layer_norm_silu_sliced(rows, n, dx.get(), n, dweight.get(), dbias.get(),
                                                  &y_sliced.part[0], 0);
    const int backward = cu_layer_norm_silu_backward_sliced(
        rows, n, dx.get(), n, dweight.get(), dbias.get(), dd_out.get(), &d_in_sliced.part[0], 0);
    finish("cu_layer_norm_silu_sliced, cu_layer_norm_silu_backward_sliced");
    EXPECT_EQ(forward, n <= 256 ? 1 : 0) << "rows of up to 256 entries (8 per lane)";
    EXPECT_EQ(backward, n <= 128 ? 1 : 0) << "rows of up to 128 entries (4 per lane)";
    EXPECT_TRUE(same_bits(dd_out.download(), d_out)) << "d_out is only read";
    cu_layer_norm_silu(rows, n, dx.get(), n, dweight.get(), dbias.get(), y.get(), 0);
    cu_layer_norm_silu_backward(rows, n, dx.get(), n, dweight.get(), dbias.get(), dd_out.get(),
                                d_in.get(), 0);
    finish("cu_layer_norm_silu, cu_layer_norm_silu_backward");
    if (forward) {
        y_reference.slice(y.get(), n, {0});
        y_sliced.expect_equal(y_reference);
        EXPECT_EQ(y_sliced.exponent(0, 0), (int)I8_NOT_FINITE);
    }
    if (backward) {
        d_in_reference.slice(d_in.get(), n, {0});
        d_in_sliced.expect_equal(d_in_reference);
    }
}

TEST_P(NormSiluKernels, BackwardEqualsCpuNormSiluBackwardAlsoInPlace) {
    std::vector<float> d_out = random_values(rng, size()); // [rows][n]
    std::vector<double> d_in_ref =
        cpu_norm_silu_backward(p.layer_norm(), rows, widen(x), widen(d_out));

    DeviceArray<float> dx(x), dweight(p.weight), dbias(p.bias), dd_out(d_out);
    std::vector<float> runs[2];
    for (auto &run : runs) {
        DeviceArray<float> d_in(size()); // overwritten
        d_in.fill_bytes(nan_bytes);
        cu_layer_norm_silu_backward(rows, n, dx.get(), n, dweight.get(), dbias.get(), dd_out.get(),
                                    d_in.get(), 0);
        finish("cu_layer_norm_silu_backward");
        run = d_in.download();
    }
    check("layer_norm_silu_backward", overall(d_in_ref, runs[0]), Bound::relative);
    EXPECT_TRUE(same_bits(runs[0], runs[1]))
        << "cu_layer_norm_silu_backward differs between two runs";
    EXPECT_TRUE(same_bits(dd_out.download(), d_out)) << "d_out must be left as it was";

    // in place: d_in = d_out, as umas_fast_gpu calls it; the same bits as the separate output
    DeviceArray<float> in_place(d_out);
    cu_layer_norm_silu_backward(rows, n, dx.get(), n, dweight.get(), dbias.get(), in_place.get(),
                                in_place.get(), 0);
    finish("cu_layer_norm_silu_backward (d_in = d_out)");
    std::vector<float> in_place_gpu = in_place.download();
    check("layer_norm_silu_backward_in_place", overall(d_in_ref, in_place_gpu), Bound::relative);
    EXPECT_TRUE(same_bits(in_place_gpu, runs[0]))
        << "in place (d_in = d_out) differs from the separate output";
}

// umas_fast's radial MLP reads its LayerNorm input in place, as one block's slice of the unified
// first layer (rows of n with a longer stride), and writes the adjoint back over it: the same
// bits as the contiguous calls, and nothing between the slices touched.
TEST_P(NormSiluKernels, StridedInputAndInPlaceAdjointGiveTheSameBits) {
    const int ld = n + 5;
    const float guard = -7.25f;
    std::vector<float> strided((size_t)rows * ld, guard); // [rows][ld], x in the first n
    for (int r = 0; r < rows; r++)
        std::copy(x.begin() + (size_t)r * n, x.begin() + (size_t)(r + 1) * n,
                  strided.begin() + (size_t)r * ld);
    std::vector<float> d_out = random_values(rng, size());
    DeviceArray<float> dx(x), dweight(p.weight), dbias(p.bias), dd_out(d_out);
    DeviceArray<float> y(size()), d_in(size());
    cu_layer_norm_silu(rows, n, dx.get(), n, dweight.get(), dbias.get(), y.get(), 0);
    cu_layer_norm_silu_backward(rows, n, dx.get(), n, dweight.get(), dbias.get(), dd_out.get(),
                                d_in.get(), 0);
    finish("contiguous LayerNorm+SiLU");

    DeviceArray<float> dstrided(strided), y_strided(size());
    cu_layer_norm_silu(rows, n, dstrided.get(), ld, dweight.get(), dbias.get(), y_strided.get(), 0);
    cu_layer_norm_silu_backward(rows, n, dstrided.get(), ld, dweight.get(), dbias.get(),
                                dd_out.get(), dstrided.get(), 0);
    finish("strided LayerNorm+SiLU, adjoint over its input");
    EXPECT_TRUE(same_bits(y_strided.download(), y.download()));
    std::vector<float> back = dstrided.download(), expected = d_in.download();
    bool same = true, guards = true;
    for (int r = 0; r < rows; r++)
        for (int k = 0; k < ld; k++) {
            float v = back[(size_t)r * ld + k];
            if (k < n)
                same = same && std::memcmp(&v, &expected[(size_t)r * n + k], sizeof v) == 0;
            else
                guards = guards && v == guard;
        }
    EXPECT_TRUE(same) << "the in-place adjoint differs from the contiguous one";
    EXPECT_TRUE(guards) << "a value between the rows was written";
}

// rows = 0: nothing is launched and nothing is written.
TEST(NormSiluKernelsEmpty, ZeroRowsIsANoOp) {
    if (!have_gpu())
        GTEST_SKIP() << "no CUDA device";
    const int n = 128;
    std::mt19937 rng{20240613};
    std::vector<float> values = random_values(rng, n);
    DeviceArray<float> in(values), weight(values), bias(values), out(values);
    cu_layer_norm_silu(0, n, in.get(), n, weight.get(), bias.get(), out.get(), 0);
    finish("cu_layer_norm_silu (rows = 0)");
    cu_layer_norm_silu_backward(0, n, in.get(), n, weight.get(), bias.get(), in.get(), out.get(),
                                0);
    finish("cu_layer_norm_silu_backward (rows = 0)");
    EXPECT_TRUE(same_bits(out.download(), values)) << "rows = 0 wrote to the output";
}

INSTANTIATE_TEST_SUITE_P(Sizes, NormSiluKernels,
                         ::testing::Values(RowSize{3000, 128},  // edges x Ce
                                           RowSize{5, 7},       // a partial warp
                                           RowSize{100, 1000},  // many elements per lane
                                           RowSize{530000, 8}), // > 65536 blocks x 8 warps
                         row_size_label);

// ---------------------------------------------------------------------------------------------
// the split-precision GEMM (cuda/gemm/gemm_tc_tma.cu) against a float64 product
// ---------------------------------------------------------------------------------------------

struct GemmShape {
    int rows, out, K;
    int pad;    // extra columns in the strides of X, W and Y (filled with NaN)
    float beta; // 0: Y is only written; else Y = beta Y + ...
    bool bias;
};

std::string gemm_shape_label(const ::testing::TestParamInfo<GemmShape> &info) {
    const GemmShape &g = info.param;
    return "rows" + std::to_string(g.rows) + "_out" + std::to_string(g.out) + "_K" +
           std::to_string(g.K) + (g.pad ? "_padded" : "") + (g.beta != 0.0f ? "_beta" : "") +
           (g.bias ? "_bias" : "");
}

void PrintTo(const GemmShape &g, std::ostream *os) {
    *os << g.rows << " x " << g.K << " -> " << g.out << " pad " << g.pad << " beta " << g.beta
        << (g.bias ? " bias" : "");
}

bool device_is_hopper() {
    int device = 0, major = 0, minor = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    return major == 9 && minor == 0;
}

class SplitPrecisionGemm : public ::testing::TestWithParam<GemmShape> {
  protected:
    void SetUp() override {
        if (!have_gpu())
            GTEST_SKIP() << "no CUDA device";
        if (!device_is_hopper())
            GTEST_SKIP() << "the bulk-copy GEMM runs on compute capability 9.0 only";
        g = GetParam();
        ldx = g.K + g.pad, ldw = g.K + g.pad, ldy = g.out + g.pad;
        const float nan = std::numeric_limits<float>::quiet_NaN();
        x.assign((size_t)g.rows * ldx, nan);
        w.assign((size_t)g.out * ldw, nan);
        y0.assign((size_t)(g.rows + 1) * ldy, nan); // + a guard row
        std::vector<float> xv = random_values(rng, (size_t)g.rows * g.K);
        std::vector<float> wv = random_values(rng, (size_t)g.out * g.K);
        for (int r = 0; r < g.rows; r++)
            for (int k = 0; k < g.K; k++)
                x[(size_t)r * ldx + k] = r % 7 == 3 ? 0.0f : xv[(size_t)r * g.K + k]; // zero rows
        for (int o = 0; o < g.out; o++)
            for (int k = 0; k < g.K; k++)
                w[(size_t)o * ldw + k] = wv[(size_t)o * g.K + k];
        if (g.beta != 0.0f) {
            std::vector<float> yv = random_values(rng, (size_t)g.rows * g.out);
            for (int r = 0; r < g.rows; r++)
                for (int o = 0; o < g.out; o++)
                    y0[(size_t)r * ldy + o] = yv[(size_t)r * g.out + o];
        }
        if (g.bias)
            bias = random_values(rng, g.out);
    }
    // Y after one product on the GPU (starting from y0), and whether the kernel took it.
    std::vector<float> run(int *launched) {
        DeviceArray<float> dx(x), dw(w), dw_hi(w.size()), dw_lo(w.size()), dy(y0);
        DeviceArray<float> dbias(bias.empty() ? std::vector<float>(1, 0.0f) : bias);
        dw_hi.upload(w);
        dw_lo.upload(w);
        tc_split_weights(g.out, g.K, dw.get(), ldw, dw_hi.get(), dw_lo.get(), 0);
        finish("tc_split_weights");
        *launched = tc_gemm_nt_tma(TC_ACCUM_CHUNK_JAM, 2, g.rows, g.out, g.K, dx.get(), ldx,
                                   dw_hi.get(), dw_lo.get(), ldw, g.bias ? dbias.get() : nullptr,
                                   g.beta, dy.get(), ldy, 0);
        finish("tc_gemm_nt_tma");
        return dy.download();
    }
    std::mt19937 rng{20240614};
    GemmShape g{};
    size_t ldx = 0, ldw = 0, ldy = 0;
    std::vector<float> x, w, y0, bias; // [rows][ldx], [out][ldw], [rows + 1][ldy], [out]
};

// The ozaki GEMM on the same operands: X and W sliced on the device, then one product.
class OzakiGemm : public SplitPrecisionGemm {
  protected:
    std::vector<float> run_ozaki(int *launched) {
        DeviceArray<float> dx(x), dw(w), dy(y0);
        DeviceArray<float> dbias(bias.empty() ? std::vector<float>(1, 0.0f) : bias);
        const size_t ld = i8_slice_ld(g.K);
        DeviceArray<int8_t> xs(3 * (size_t)g.rows * ld), ws(3 * (size_t)g.out * ld);
        DeviceArray<int> xe(g.rows), we(g.out);
        const i8_sliced x8 = {xs.get(), xe.get(), ld, (size_t)g.rows * ld};
        const i8_sliced w8 = {ws.get(), we.get(), ld, (size_t)g.out * ld};
        i8_slice(g.rows, g.K, dx.get(), ldx, &x8, 0);
        i8_slice(g.out, g.K, dw.get(), ldw, &w8, 0);
        finish("i8_slice");
        *launched = i8_gemm_nt(g.rows, g.out, g.K, &x8, &w8, g.bias ? dbias.get() : nullptr, g.beta,
                               dy.get(), ldy, 0);
        finish("i8_gemm_nt");
        return dy.download();
    }
};

// max |y - ref| / (sum |x w| + |beta y0| + |bias|) over Y, asserting finite outputs and exact
// zeros where every term is zero.
double worst_gemm_error(const GemmShape &g, const std::vector<float> &x, size_t ldx,
                        const std::vector<float> &w, size_t ldw, const std::vector<float> &y0,
                        const std::vector<float> &bias, const std::vector<float> &y, size_t ldy) {
    double worst = 0;
    for (int r = 0; r < g.rows; r++)
        for (int o = 0; o < g.out; o++) {
            double ref = 0, scale = 0;
            for (int k = 0; k < g.K; k++) {
                const double p = (double)x[(size_t)r * ldx + k] * (double)w[(size_t)o * ldw + k];
                ref += p;
                scale += std::fabs(p);
            }
            if (g.beta != 0.0f) {
                ref += (double)g.beta * y0[(size_t)r * ldy + o];
                scale += std::fabs((double)g.beta * y0[(size_t)r * ldy + o]);
            }
            if (g.bias) {
                ref += bias[o];
                scale += std::fabs((double)bias[o]);
            }
            const float got = y[(size_t)r * ldy + o];
            EXPECT_TRUE(std::isfinite(got)) << "Y[" << r << "][" << o << "] = " << got;
            if (scale == 0.0) {
                EXPECT_EQ(got, 0.0f) << "a zero row gave Y[" << r << "][" << o << "] = " << got;
                continue;
            }
            worst = std::max(worst, std::fabs(got - ref) / scale);
        }
    return worst;
}

// The padding columns and the guard row of Y are still NaN.
void expect_only_output_written(const GemmShape &g, const std::vector<float> &y, size_t ldy) {
    for (int r = 0; r <= g.rows; r++)
        for (int o = r < g.rows ? g.out : 0; o < (int)ldy; o++)
            ASSERT_TRUE(std::isnan(y[(size_t)r * ldy + o])) << "wrote Y[" << r << "][" << o << "]";
}

TEST_P(SplitPrecisionGemm, EqualsFloat64ProductAndWritesOnlyTheOutput) {
    int launched = 0;
    std::vector<float> y = run(&launched);
    ASSERT_EQ(launched, 1) << "the kernel declined aligned operands on a Hopper GPU";
    const double worst = worst_gemm_error(g, x, ldx, w, ldw, y0, bias, y, ldy);
    std::printf("[ measured ] tc_gemm_nt_tma %d x %d -> %d: max |y - ref| / sum|terms| %.3e\n",
                g.rows, g.K, g.out, worst);
    RecordProperty("max_relative_error", std::to_string(worst));
    EXPECT_LE(worst, 1e-5);
    expect_only_output_written(g, y, ldy);
}

TEST_P(OzakiGemm, EqualsFloat64ProductAndWritesOnlyTheOutput) {
    int launched = 0;
    std::vector<float> y = run_ozaki(&launched);
    ASSERT_EQ(launched, 1) << "the kernel declined sliced operands on a Hopper GPU";
    const double worst = worst_gemm_error(g, x, ldx, w, ldw, y0, bias, y, ldy);
    std::printf("[ measured ] i8_gemm_nt %d x %d -> %d: max |y - ref| / sum|terms| %.3e\n", g.rows,
                g.K, g.out, worst);
    RecordProperty("max_relative_error", std::to_string(worst));
    EXPECT_LE(worst, 1e-5);
    expect_only_output_written(g, y, ldy);
}

TEST_P(OzakiGemm, GivesTheSameBitsTwice) {
    int launched = 0;
    std::vector<float> first = run_ozaki(&launched), second = run_ozaki(&launched);
    ASSERT_EQ(launched, 1);
    EXPECT_TRUE(same_bits(first, second)) << "two runs differ";
}

TEST_P(OzakiGemm, ANonFiniteRowOfXGivesNaNInItsRowOfYOnly) {
    const int bad = g.rows / 2;
    x[(size_t)bad * ldx] = std::numeric_limits<float>::infinity();
    int launched = 0;
    std::vector<float> y = run_ozaki(&launched);
    ASSERT_EQ(launched, 1);
    for (int r = 0; r < g.rows; r++)
        for (int o = 0; o < g.out; o++)
            ASSERT_EQ(std::isnan(y[(size_t)r * ldy + o]), r == bad)
                << "Y[" << r << "][" << o << "] = " << y[(size_t)r * ldy + o];
}

TEST(OzakiSlices, EachEntryIsItsRowsMultipleOf2ToTheEMinus23WithinHalfAUnitInDigitsOf255) {
    if (!have_gpu())
        GTEST_SKIP() << "no CUDA device";
    // rows: uniform, mixed magnitudes 10^[-6, 6], one entry large, all zero, tiny (subnormal
    // range), NaN, exact halves; row lengths: ragged K padded to the next 16 bytes, strides that
    // are not multiples of 4 (scalar loads), rows kept in registers (up to 1536) and longer ones
    struct Shape {
        int K;
        size_t lda;
    };
    for (const Shape shape : {Shape{45, 48}, Shape{45, 45}, Shape{700, 704}, Shape{2000, 2003}}) {
        const int rows = 7, K = shape.K;
        const size_t lda = shape.lda, ld = i8_slice_ld(K);
        SCOPED_TRACE("K = " + std::to_string(K) + ", lda = " + std::to_string(lda));
        ASSERT_EQ(ld, ((size_t)K + 15) / 16 * 16);
        std::mt19937 rng{20241204};
        std::uniform_real_distribution<float> u(-1.0f, 1.0f);
        std::vector<float> a((size_t)rows * lda, 0.0f);
        for (int k = 0; k < K; k++) {
            a[0 * lda + k] = u(rng);
            a[1 * lda + k] = u(rng) * std::pow(10.0f, 12.0f * (0.5f + 0.5f * u(rng)) - 6.0f);
            a[2 * lda + k] = k == 7 ? 1e30f : u(rng);
            a[4 * lda + k] = u(rng) * 1e-41f;
            a[5 * lda + k] = k == 3 ? std::numeric_limits<float>::quiet_NaN() : u(rng);
            a[6 * lda + k] = 255.875f * (k % 3 - 1); // the largest digits and exact halves
        }
        DeviceArray<float> da(a);
        DeviceArray<int8_t> slices(3 * rows * ld);
        slices.fill_bytes(0x55); // the padding columns must be written as zero
        DeviceArray<int> exponents(rows);
        const i8_sliced out = {slices.get(), exponents.get(), ld, rows * ld};
        i8_slice(rows, K, da.get(), lda, &out, 0);
        finish("i8_slice");
        const std::vector<int8_t> s = slices.download();
        const std::vector<int> e = exponents.download();
        int wrong = 0;
        for (int r = 0; r < rows; r++) {
            if (r == 5) {
                EXPECT_EQ(e[r], (int)I8_NOT_FINITE) << "a NaN entry must mark its row";
                continue;
            }
            double largest = 0;
            for (int k = 0; k < K; k++)
                largest = std::max(largest, std::fabs((double)a[r * lda + k]));
            if (largest > 0) {
                const double top = largest * (1.0 + std::ldexp(1.0, -6));
                EXPECT_LT(top, std::ldexp(1.0, e[r])) << "row " << r;
                EXPECT_GE(2 * top, std::ldexp(1.0, e[r])) << "row " << r;
            }
            for (size_t k = 0; k < ld && wrong < 10; k++) {
                const int s0 = s[r * ld + k], s1 = s[rows * ld + r * ld + k],
                          s2 = s[2 * rows * ld + r * ld + k];
                const double value = std::ldexp(65025.0 * s0 + 255.0 * s1 + s2, e[r] - 23);
                const double entry = k < (size_t)K ? a[r * lda + k] : 0.0;
                const bool ok = std::fabs(value - entry) <= std::ldexp(1.0, e[r] - 24) &&
                                std::max({std::abs(s0), std::abs(s1), std::abs(s2)}) <= 127;
                wrong += !ok;
                EXPECT_TRUE(ok) << "row " << r << " column " << k << ": " << entry << " sliced as "
                                << value;
            }
        }
    }
}

TEST_P(SplitPrecisionGemm, GivesTheSameBitsTwice) {
    int launched = 0;
    std::vector<float> first = run(&launched), second = run(&launched);
    ASSERT_EQ(launched, 1);
    EXPECT_TRUE(same_bits(first, second)) << "two runs differ";
}

TEST(SplitPrecisionGemmOperands, DeclinesStridesItCannotCopyAndWritesNothing) {
    if (!have_gpu())
        GTEST_SKIP() << "no CUDA device";
    if (!device_is_hopper()) // elsewhere it declines everything: nothing to learn here
        GTEST_SKIP() << "the bulk-copy GEMM runs on compute capability 9.0 only";
    const int rows = 16, out = 8, K = 9; // row strides of 9 floats: not 16-byte multiples
    std::mt19937 rng{20240615};
    std::vector<float> values = random_values(rng, (size_t)rows * K + (size_t)out * K);
    DeviceArray<float> x(values), w(values), y(values);
    const int launched = tc_gemm_nt_tma(TC_ACCUM_CHUNK_JAM, 2, rows, out, K, x.get(), K, w.get(),
                                        w.get(), K, nullptr, 0.0f, y.get(), out, 0);
    finish("tc_gemm_nt_tma (declined)");
    EXPECT_EQ(launched, 0);
    EXPECT_TRUE(same_bits(y.download(), values)) << "a declined product wrote to Y";
}

INSTANTIATE_TEST_SUITE_P(Shapes, SplitPrecisionGemm,
                         ::testing::Values(GemmShape{3000, 640, 768, 0, 0.0f, true}, // conv1 m=0
                                           GemmShape{1003, 72, 200, 4, 1.0f, false}, // ragged
                                           GemmShape{300, 130, 8, 0, 0.0f, true},    // K < BK
                                           GemmShape{500, 256, 96, 0, 0.0f, false},  // zero rows: 0
                                           GemmShape{1, 128, 64, 0, 0.5f, true}),    // one row
                         gemm_shape_label);

INSTANTIATE_TEST_SUITE_P(Shapes, OzakiGemm,
                         ::testing::Values(GemmShape{3000, 640, 768, 0, 0.0f, true}, // conv1 m=0
                                           GemmShape{1003, 72, 200, 4, 1.0f, false}, // ragged
                                           GemmShape{300, 130, 8, 0, 0.0f, true},    // K < BK
                                           GemmShape{500, 256, 96, 0, 0.0f, false},  // zero rows: 0
                                           GemmShape{1, 128, 64, 0, 0.5f, true},     // one row
                                           GemmShape{700, 128, 300, 0, 0.0f, false}, // 5 k-tiles
                                           // more tiles than multiprocessors: blocks take several
                                           GemmShape{20011, 200, 136, 4, 1.0f, true},
                                           // ragged k-tiles, the ring wraps within a tile
                                           GemmShape{9001, 136, 1030, 4, 1.0f, true}),
                         gemm_shape_label);

} // namespace
