// test_gradients.cpp - every hand-written backward agrees with finite differences of its forward.
//
// Specification (float64, random inputs and weights from fixed seeds):
//  * for an op y = f(x) and a random adjoint dy, the backward's dx is the gradient of the scalar
//    L(x) = <dy, f(x)>: per component (small sizes) and along random directions it matches a
//    central finite difference of L (5-point stencil, error O(h^4)) to 1e-7 relative. Per
//    component, errors are relative to the largest gradient component of that input; along a
//    direction, to |<dx, dir>| (floored at 1e-3 |dx| |dir|);
//  * the contracts on the outputs hold: `accumulate` / "+=" outputs add to what is there,
//    overwritten ones do not read it, strided and partial (`cols`) outputs touch nothing else;
//  * the edgewise and edge-degree backwards give dE/dD for every entry of the l = 1, 2 blocks of
//    D taken as free parameters (not through an edge vector);
//  * umas_wigner_backward (the torque formula, spec 3.6) is the gradient with respect to the edge
//    vector of any roll-invariant functional of D(r), also at and near the poles e = +-y and
//    where the frame construction switches its helper axis (the gauge jumps, the functional
//    does not); the generators are the tables of spec 3.5.
extern "C" {
#include "edgewise.h"
#include "nn.h"
#include "radial.h"
#include "so3.h"
#include "wigner.h"
}

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <deque>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace {

using Vec = std::vector<double>;
using Scalar = std::function<double(const Vec &)>;

constexpr double kTolerance = 1e-7;
constexpr double kStep = 1e-4; // with the O(h^4) stencil: truncation ~1e-16, round-off ~1e-12

struct Rng {
    std::mt19937 gen;
    explicit Rng(unsigned seed) : gen(seed) {}
    double normal() {
        return std::normal_distribution<double>(0.0, 1.0)(gen);
    }
    double uniform(double a, double b) {
        return std::uniform_real_distribution<double>(a, b)(gen);
    }
    Vec normals(size_t n, double scale = 1.0, double offset = 0.0) {
        Vec v(n);
        for (double &x : v)
            x = offset + scale * normal();
        return v;
    }
};

double dot(const Vec &a, const Vec &b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); i++)
        s += a[i] * b[i];
    return s;
}

double max_abs(const Vec &v) {
    double m = 0;
    for (double x : v)
        m = std::max(m, std::fabs(x));
    return m;
}

// Central finite difference of f at x along dir: 5-point stencil, error O(h^4).
double fd_along(const Scalar &f, const Vec &x, const Vec &dir, double h) {
    Vec p(x.size());
    auto at = [&](double t) {
        for (size_t i = 0; i < x.size(); i++)
            p[i] = x[i] + t * dir[i];
        return f(p);
    };
    return (8.0 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12.0 * h);
}

// The largest relative error seen, and where.
struct Error {
    double max = 0;
    std::string worst = "(none)";
    void add(double fd, double analytic, double scale, const std::string &where) {
        double e = std::fabs(fd - analytic) / std::max(scale, 1e-300);
        if (e > max || std::isnan(e)) {
            max = std::isnan(e) ? INFINITY : e;
            char buf[160];
            std::snprintf(buf, sizeof buf, "%s: fd %.15g, backward %.15g", where.c_str(), fd,
                          analytic);
            worst = buf;
        }
    }
    void merge(const Error &o) {
        if (o.max > max) {
            max = o.max;
            worst = o.worst;
        }
    }
};

// Compares g, the backward's gradient of f at x, with finite differences of f: every component
// when per_component, and `directions` random directions.
Error check_gradient(const Scalar &f, const Vec &x, const Vec &g, Rng &rng, bool per_component,
                     int directions = 3, double h = kStep) {
    Error err;
    double g_max = max_abs(g), g_norm = std::sqrt(dot(g, g));
    if (per_component)
        for (size_t i = 0; i < x.size(); i++) {
            Vec dir(x.size(), 0.0);
            dir[i] = 1.0;
            err.add(fd_along(f, x, dir, h), g[i], g_max, "component " + std::to_string(i));
        }
    for (int k = 0; k < directions; k++) {
        Vec dir = rng.normals(x.size());
        double analytic = dot(g, dir);
        double scale = std::max(std::fabs(analytic), 1e-3 * g_norm * std::sqrt(dot(dir, dir)));
        err.add(fd_along(f, x, dir, h), analytic, scale, "direction " + std::to_string(k));
    }
    return err;
}

// Owns the arrays that the plain C weight structs point to.
struct Arena {
    std::deque<Vec> arrays;
    double *add(Vec v) {
        arrays.push_back(std::move(v));
        return arrays.back().data();
    }
};

umas_linear random_linear(Arena &arena, Rng &rng, int out, int in, bool bias) {
    umas_linear lin;
    lin.out = out;
    lin.in = in;
    lin.weight = arena.add(rng.normals((size_t)out * in, 1.0 / std::sqrt((double)in)));
    lin.bias = bias ? arena.add(rng.normals(out, 0.1)) : nullptr;
    return lin;
}

umas_layer_norm random_layer_norm(Arena &arena, Rng &rng, int n) {
    umas_layer_norm ln;
    ln.n = n;
    ln.weight = arena.add(rng.normals(n, 0.2, 1.0));
    ln.bias = arena.add(rng.normals(n, 0.1));
    return ln;
}

umas_rms_norm random_rms_norm(Arena &arena, Rng &rng, int C) {
    umas_rms_norm norm;
    norm.scale = arena.add(rng.normals(3 * (size_t)C, 0.2, 1.0));
    norm.bias = arena.add(rng.normals(C, 0.1));
    return norm;
}

void report(const char *name, const Error &err) {
    std::printf("[ measured ] %-58s max rel. error %.2e\n", name, err.max);
    EXPECT_LE(err.max, kTolerance) << name << ", worst " << err.worst;
}

// ---------------------------------------------------------------------------------------------
// nn.h

TEST(Gradients, Linear) {
    Rng rng(1);
    Arena arena;
    const int rows = 4, in = 7, out = 5, ldx = 9, ldy = 6, lddy = 8, lddx = 10;
    for (bool bias : {false, true})
        for (int cols : {in, 3})
            for (int accumulate : {0, 1}) {
                umas_linear lin = random_linear(arena, rng, out, in, bias);
                Vec x = rng.normals((size_t)rows * ldx), dy = rng.normals((size_t)rows * lddy);
                // L(xs) = <dy, lin(x)> with xs the checked inputs x[r][0:cols]
                auto loss = [&](const Vec &xs) {
                    Vec xx = x, y((size_t)rows * ldy, 0.0);
                    for (int r = 0; r < rows; r++)
                        for (int k = 0; k < cols; k++)
                            xx[(size_t)r * ldx + k] = xs[(size_t)r * cols + k];
                    umas_linear_forward(&lin, rows, xx.data(), ldx, y.data(), ldy);
                    double s = 0;
                    for (int r = 0; r < rows; r++)
                        for (int o = 0; o < out; o++)
                            s += dy[(size_t)r * lddy + o] * y[(size_t)r * ldy + o];
                    return s;
                };
                Vec prefill = rng.normals((size_t)rows * lddx), dx = prefill;
                umas_linear_backward(&lin, rows, dy.data(), lddy, dx.data(), lddx, cols,
                                     accumulate);
                Vec xs((size_t)rows * cols), g((size_t)rows * cols);
                int untouched = 1;
                for (int r = 0; r < rows; r++)
                    for (int k = 0; k < lddx; k++) {
                        size_t i = (size_t)r * lddx + k;
                        if (k >= cols) {
                            untouched &= dx[i] == prefill[i];
                            continue;
                        }
                        xs[(size_t)r * cols + k] = x[(size_t)r * ldx + k];
                        g[(size_t)r * cols + k] = dx[i] - (accumulate ? prefill[i] : 0.0);
                    }
                char name[96];
                std::snprintf(name, sizeof name, "linear bias=%d cols=%d accumulate=%d", bias, cols,
                              accumulate);
                EXPECT_TRUE(untouched) << name << ": wrote outside dx[:, 0:cols]";
                report(name, check_gradient(loss, xs, g, rng, true));
            }
}

TEST(Gradients, LayerNorm) {
    Rng rng(2);
    Arena arena;
    const int rows = 3, n = 16;
    umas_layer_norm ln = random_layer_norm(arena, rng, n);
    Vec x = rng.normals((size_t)rows * n, 1.5, 0.3), dy = rng.normals((size_t)rows * n);
    auto loss = [&](const Vec &xx) {
        Vec y = xx;
        umas_layer_norm_forward(&ln, rows, y.data());
        return dot(dy, y);
    };
    Vec dx(x.size());
    umas_layer_norm_backward(&ln, rows, x.data(), dy.data(), dx.data());
    report("layer_norm", check_gradient(loss, x, dx, rng, true));

    Vec aliased = dy; // dx may alias dy
    umas_layer_norm_backward(&ln, rows, x.data(), aliased.data(), aliased.data());
    for (size_t i = 0; i < dx.size(); i++)
        EXPECT_NEAR(aliased[i], dx[i], 1e-15 * max_abs(dx)) << "aliased dx = dy, index " << i;
}

TEST(Gradients, ActivationDerivatives) {
    Rng rng(3);
    Error silu, sigmoid;
    Vec points;
    for (int k = -16; k <= 16; k++)
        points.push_back(0.5 * k);
    for (int k = 0; k < 20; k++)
        points.push_back(rng.uniform(-8, 8));
    points.push_back(1e-3);
    points.push_back(-1.2784645427610738); // near the zero of SiLU'
    for (double x0 : points) {
        Vec x{x0}, dir{1.0};
        auto f_silu = [](const Vec &v) { return umas_silu(v[0]); };
        auto f_sigmoid = [](const Vec &v) { return umas_sigmoid(v[0]); };
        // relative to max(|f'|, 1e-2): SiLU' crosses zero
        double a = umas_silu_derivative(x0), b = umas_sigmoid_derivative(x0);
        std::string where = "x = " + std::to_string(x0);
        silu.add(fd_along(f_silu, x, dir, kStep), a, std::max(std::fabs(a), 1e-2), where);
        sigmoid.add(fd_along(f_sigmoid, x, dir, kStep), b, std::fabs(b), where);
    }
    report("silu_derivative", silu);
    report("sigmoid_derivative", sigmoid);
}

TEST(Gradients, RadialMlp) {
    Rng rng(4);
    Arena arena;
    const int rows = 4, B = 6, Ce = 8, F = B + 2 * Ce, out = 12;
    umas_radial_mlp mlp;
    mlp.fc1 = random_linear(arena, rng, Ce, F, true);
    mlp.norm1 = random_layer_norm(arena, rng, Ce);
    mlp.fc2 = random_linear(arena, rng, Ce, Ce, true);
    mlp.norm2 = random_layer_norm(arena, rng, Ce);
    mlp.fc3 = random_linear(arena, rng, out, Ce, true);
    Vec a = rng.normals((size_t)rows * F), d_out = rng.normals((size_t)rows * out);
    Vec pre1((size_t)rows * Ce), pre2((size_t)rows * Ce), hidden((size_t)rows * Ce);
    umas_radial_saved saved{pre1.data(), pre2.data(), hidden.data()};
    Vec y((size_t)rows * out);

    for (int cols : {B, F}) {
        // L(as) = <d_out, MLP(a)> with as = a[:, 0:cols]
        auto loss = [&](const Vec &as) {
            Vec aa = a, p1(pre1.size()), p2(pre2.size()), h(hidden.size()), o(y.size());
            for (int r = 0; r < rows; r++)
                for (int k = 0; k < cols; k++)
                    aa[(size_t)r * F + k] = as[(size_t)r * cols + k];
            umas_radial_saved s{p1.data(), p2.data(), h.data()};
            umas_radial_mlp_forward(&mlp, rows, aa.data(), &s, o.data());
            return dot(d_out, o);
        };
        umas_radial_mlp_forward(&mlp, rows, a.data(), &saved, y.data());
        Vec da((size_t)rows * cols), work((size_t)rows * 2 * Ce), as((size_t)rows * cols);
        umas_radial_mlp_backward(&mlp, rows, &saved, d_out.data(), da.data(), cols, work.data());
        for (int r = 0; r < rows; r++)
            for (int k = 0; k < cols; k++)
                as[(size_t)r * cols + k] = a[(size_t)r * F + k];
        report(cols == B ? "radial_mlp cols = B" : "radial_mlp cols = F",
               check_gradient(loss, as, da, rng, true));
    }
}

// ---------------------------------------------------------------------------------------------
// so3.h

TEST(Gradients, RmsNorm) {
    Rng rng(5);
    Arena arena;
    const int nodes = 3;
    for (int C : {8, 32}) {
        umas_rms_norm norm = random_rms_norm(arena, rng, C);
        Vec x = rng.normals((size_t)nodes * 9 * C), dy = rng.normals(x.size());
        for (int n = 0; n < nodes; n++) // an l = 0 offset, so that the centring matters
            for (int c = 0; c < C; c++)
                x[(size_t)n * 9 * C + c] += 0.7;
        auto loss = [&](const Vec &xx) {
            Vec y(xx.size());
            umas_rms_norm_forward(&norm, nodes, C, xx.data(), y.data());
            return dot(dy, y);
        };
        Vec dx(x.size());
        umas_rms_norm_backward(&norm, nodes, C, x.data(), dy.data(), dx.data());
        report(C == 8 ? "rms_norm C = 8" : "rms_norm C = 32",
               check_gradient(loss, x, dx, rng, true));
    }
}

umas_block_weights random_ffn_weights(Arena &arena, Rng &rng, int C, int H) {
    umas_block_weights b{};
    b.ffn_scalar = random_linear(arena, rng, 2 * H, C, true);
    b.ffn_so3_1 = arena.add(rng.normals(3 * (size_t)H * C, 1.0 / std::sqrt((double)C)));
    b.ffn_so3_1_bias = arena.add(rng.normals(H, 0.1));
    b.ffn_so3_2 = arena.add(rng.normals(3 * (size_t)C * H, 1.0 / std::sqrt((double)H)));
    b.ffn_so3_2_bias = arena.add(rng.normals(C, 0.1));
    return b;
}

TEST(Gradients, SpectralAtomwise) {
    Rng rng(6);
    Arena arena;
    const int nodes = 3;
    for (std::pair<int, int> size : {std::pair<int, int>{8, 12}, {8, 8}, {12, 8}}) {
        const int C = size.first, H = size.second;
        umas_block_weights b = random_ffn_weights(arena, rng, C, H);
        Vec v = rng.normals((size_t)nodes * 9 * C), d_out = rng.normals(v.size());
        auto loss = [&](const Vec &vv) {
            Vec out(vv.size()), gates((size_t)nodes * 2 * H), hidden((size_t)nodes * 9 * H);
            umas_spectral_atomwise_forward(&b, nodes, C, H, vv.data(), out.data(), gates.data(),
                                           hidden.data());
            return dot(d_out, out);
        };
        Vec dv(v.size()), work(umas_spectral_atomwise_backward_work(nodes, H));
        umas_spectral_atomwise_backward(&b, nodes, C, H, v.data(), d_out.data(), dv.data(),
                                        work.data());
        char name[64];
        std::snprintf(name, sizeof name, "spectral_atomwise C = %d, H = %d", C, H);
        report(name, check_gradient(loss, v, dv, rng, true));
    }
}

// ---------------------------------------------------------------------------------------------
// radial.h

TEST(Gradients, Gaussian) {
    Rng rng(7);
    umas_gaussian_basis basis;
    ASSERT_EQ(umas_gaussian_basis_init(&basis, 16, 6.0), 0);
    Error err;
    for (double d0 : {0.0, 0.3, 1.7, 2.95, 3.2, 4.2, 5.9, 6.0, 6.5}) {
        Vec dg = rng.normals(16);
        auto loss = [&](const Vec &d) {
            Vec g(16);
            umas_gaussian_forward(&basis, d[0], g.data());
            return dot(dg, g);
        };
        double analytic = umas_gaussian_backward(&basis, d0, dg.data());
        // relative to |dL/dd|, floored at 1e-3 sum_k |dg_k dg_k/dd| (cancellations)
        Vec g(16);
        umas_gaussian_forward(&basis, d0, g.data());
        double floor = 0;
        for (int k = 0; k < 16; k++)
            floor += std::fabs(dg[k] * 2 * basis.coeff * (d0 - basis.offsets[k]) * g[k]);
        err.add(fd_along(loss, {d0}, {1.0}, kStep), analytic,
                std::max(std::fabs(analytic), 1e-3 * floor), "d = " + std::to_string(d0));
    }
    umas_gaussian_basis_free(&basis);
    report("gaussian_backward", err);
}

TEST(Gradients, Envelope) {
    Rng rng(8);
    const double rc = 6.0;
    auto env = [&](const Vec &d) { return umas_envelope(d[0], rc); };
    Error interior, near_cutoff;
    // The envelope is 1 - O(x^5) near 0 and ~(1 - x)^3 out of a cancelling polynomial near the
    // cutoff: there the finite difference carries ~eps/h absolute round-off, so errors are
    // relative to max(|envelope'|, 1e-3 max|envelope'|) (the maximum is at x = 2/3).
    double peak = std::fabs(umas_envelope_derivative(rc * 2.0 / 3.0, rc));
    for (int k = 0; k < 20; k++) {
        double d = rng.uniform(0.05, 0.98 * rc), a = umas_envelope_derivative(d, rc);
        interior.add(fd_along(env, {d}, {1.0}, kStep), a, std::max(std::fabs(a), 1e-3 * peak),
                     "d = " + std::to_string(d));
    }
    // near the cutoff: relative to max|envelope'|; the stencil (+-2 kStep) stays below it
    for (double gap : {1e-1, 1e-2, 1e-3}) {
        double d = rc - gap;
        near_cutoff.add(fd_along(env, {d}, {1.0}, kStep), umas_envelope_derivative(d, rc), peak,
                        "rc - " + std::to_string(gap));
    }
    report("envelope_derivative interior", interior);
    report("envelope_derivative near the cutoff (rel. to max |env'|)", near_cutoff);
    // zero at and beyond the cutoff, continuous at it
    for (double d : {rc, rc + 1e-12, rc + 0.5, 2 * rc})
        EXPECT_EQ(umas_envelope_derivative(d, rc), 0.0) << "d = " << d;
    EXPECT_LE(std::fabs(umas_envelope_derivative(rc * (1 - 1e-6), rc)), 1e-10);
    EXPECT_LE(std::fabs(umas_envelope_derivative(std::nextafter(rc, 0.0), rc)), 1e-20);
}

// ---------------------------------------------------------------------------------------------
// edgewise.h: a small graph, inputs and D entries as free parameters

struct Graph {
    int N = 5;
    // s -> t, with a self-loop (3, 3) and repeated pairs (1, 2), (0, 1)
    std::vector<int> source{0, 1, 2, 3, 4, 2, 1, 0, 3, 1};
    std::vector<int> target{1, 2, 0, 3, 0, 4, 2, 1, 1, 2};
    int n() const {
        return (int)source.size();
    }
};

constexpr int kWignerEntries = 9 + 25;

// D entries as a flat vector: per edge l1 (9) then l2 (25).
Vec pack_wigner(const std::vector<umas_wigner> &D) {
    Vec v;
    for (const umas_wigner &d : D) {
        v.insert(v.end(), &d.l1[0][0], &d.l1[0][0] + 9);
        v.insert(v.end(), &d.l2[0][0], &d.l2[0][0] + 25);
    }
    return v;
}

std::vector<umas_wigner> unpack_wigner(const Vec &v) {
    std::vector<umas_wigner> D(v.size() / kWignerEntries);
    for (size_t e = 0; e < D.size(); e++) {
        std::copy(&v[e * kWignerEntries], &v[e * kWignerEntries] + 9, &D[e].l1[0][0]);
        std::copy(&v[e * kWignerEntries + 9], &v[e * kWignerEntries + 9] + 25, &D[e].l2[0][0]);
    }
    return D;
}

Vec random_unit_vector(Rng &rng) {
    Vec e = rng.normals(3);
    double norm = std::sqrt(dot(e, e));
    for (double &x : e)
        x /= norm;
    return e;
}

std::vector<umas_wigner> random_rotations(Rng &rng, int n) {
    std::vector<umas_wigner> D(n);
    for (umas_wigner &d : D)
        umas_wigner_from_unit_vector(random_unit_vector(rng).data(), &d);
    return D;
}

// The inputs of an edge op, each a flat vector, and a loss built from them.
struct EdgeInputs {
    Vec x, radial, wigner, envelope;
};

using EdgeLoss = std::function<double(const EdgeInputs &)>;

// Checks every component of every input: dx, d_radial, d_wigner, d_envelope.
void check_edge_gradients(const char *name, const EdgeLoss &loss, const EdgeInputs &at,
                          const EdgeInputs &grad, Rng &rng, bool with_x) {
    auto varying = [&](Vec EdgeInputs::*field) {
        return [&, field](const Vec &v) {
            EdgeInputs in = at;
            in.*field = v;
            return loss(in);
        };
    };
    struct Part {
        const char *label;
        Vec EdgeInputs::*field;
    };
    for (Part part :
         {Part{"d_x", &EdgeInputs::x}, Part{"d_radial", &EdgeInputs::radial},
          Part{"d_wigner", &EdgeInputs::wigner}, Part{"d_envelope", &EdgeInputs::envelope}}) {
        if (!with_x && part.field == &EdgeInputs::x)
            continue;
        char label[96];
        std::snprintf(label, sizeof label, "%s: %s", name, part.label);
        report(label,
               check_gradient(varying(part.field), at.*part.field, grad.*part.field, rng, true));
    }
}

umas_block_weights random_conv_weights(Arena &arena, Rng &rng, int C, int H) {
    umas_block_weights b{}; // only the convolutions are used by the edgewise op
    b.conv1_m0 = random_linear(arena, rng, 5 * H, 6 * C, true);
    b.conv1_m1 = random_linear(arena, rng, 4 * H, 4 * C, false);
    b.conv1_m2 = random_linear(arena, rng, 2 * H, 2 * C, false);
    b.conv2_m0 = random_linear(arena, rng, 3 * C, 3 * H, true);
    b.conv2_m1 = random_linear(arena, rng, 4 * C, 2 * H, false);
    b.conv2_m2 = random_linear(arena, rng, 2 * C, H, false);
    return b;
}

class EdgewiseGradients : public ::testing::TestWithParam<std::pair<int, int>> {};

TEST_P(EdgewiseGradients, MatchFiniteDifferences) {
    const int C = GetParam().first, H = GetParam().second;
    Rng rng(9 + C + 100 * H);
    Arena arena;
    Graph graph;
    const int N = graph.N, n = graph.n();
    umas_block_weights b = random_conv_weights(arena, rng, C, H);

    EdgeInputs at;
    at.x = rng.normals((size_t)N * 9 * C);
    at.radial = rng.normals((size_t)n * 12 * C);
    at.wigner = pack_wigner(random_rotations(rng, n));
    for (int e = 0; e < n; e++)
        at.envelope.push_back(rng.uniform(0.2, 1.0));
    Vec d_out = rng.normals((size_t)N * 9 * C);

    Vec memory(umas_edgewise_work_doubles(n, C, H));
    umas_edgewise_work work;
    umas_edgewise_work_bind(&work, memory.data(), n, C, H);

    auto loss = [&](const EdgeInputs &in) {
        std::vector<umas_wigner> D = unpack_wigner(in.wigner);
        umas_edge_chunk chunk{n, graph.source.data(), graph.target.data(), D.data(),
                              in.envelope.data()};
        Vec x_out((size_t)N * 9 * C, 0.0);
        umas_edgewise_forward(&b, C, H, &chunk, in.radial.data(), in.x.data(), x_out.data(), &work);
        return dot(d_out, x_out);
    };

    // backward into the given buffers (d_x, d_wigner, d_envelope accumulate)
    auto backward = [&](EdgeInputs &grad) {
        std::vector<umas_wigner> D = unpack_wigner(at.wigner), dD = unpack_wigner(grad.wigner);
        umas_edge_chunk chunk{n, graph.source.data(), graph.target.data(), D.data(),
                              at.envelope.data()};
        umas_edgewise_backward(&b, C, H, &chunk, at.radial.data(), at.x.data(), d_out.data(),
                               grad.x.data(), grad.radial.data(), dD.data(), grad.envelope.data(),
                               &work);
        grad.wigner = pack_wigner(dD);
    };
    EdgeInputs grad{Vec(at.x.size(), 0.0), Vec(at.radial.size(), 0.0), Vec(at.wigner.size(), 0.0),
                    Vec(n, 0.0)};
    backward(grad);

    char name[64];
    std::snprintf(name, sizeof name, "edgewise C = %d, H = %d", C, H);
    check_edge_gradients(name, loss, at, grad, rng, true);

    // Contracts: d_x, d_wigner, d_envelope add to what is there; d_radial is overwritten.
    EdgeInputs again{rng.normals(at.x.size()), Vec(at.radial.size(), 12345.0),
                     rng.normals(at.wigner.size()), rng.normals(n)};
    EdgeInputs prefill = again;
    backward(again);
    auto expect_added = [](const char *what, const Vec &got, const Vec &pre, const Vec &g) {
        double worst = 0, scale = max_abs(g);
        for (size_t i = 0; i < got.size(); i++)
            worst = std::max(worst, std::fabs(got[i] - pre[i] - g[i]));
        EXPECT_LE(worst, 1e-12 * scale + 1e-12) << what << " does not accumulate";
    };
    expect_added("d_x", again.x, prefill.x, grad.x);
    expect_added("d_wigner", again.wigner, prefill.wigner, grad.wigner);
    expect_added("d_envelope", again.envelope, prefill.envelope, grad.envelope);
    expect_added("d_radial", again.radial, Vec(at.radial.size(), 0.0), grad.radial);
}

INSTANTIATE_TEST_SUITE_P(Gradients, EdgewiseGradients,
                         ::testing::Values(std::pair<int, int>{8, 8}, std::pair<int, int>{8, 12},
                                           std::pair<int, int>{12, 8}),
                         [](const auto &info) {
                             return "C" + std::to_string(info.param.first) + "_H" +
                                    std::to_string(info.param.second);
                         });

TEST(Gradients, EdgeDegree) {
    Rng rng(10);
    Graph graph;
    const int N = graph.N, n = graph.n(), C = 8;

    EdgeInputs at;
    at.radial = rng.normals((size_t)n * 3 * C);
    at.wigner = pack_wigner(random_rotations(rng, n));
    for (int e = 0; e < n; e++)
        at.envelope.push_back(rng.uniform(0.2, 1.0));
    Vec d_out = rng.normals((size_t)N * 9 * C);

    auto loss = [&](const EdgeInputs &in) {
        std::vector<umas_wigner> D = unpack_wigner(in.wigner);
        umas_edge_chunk chunk{n, graph.source.data(), graph.target.data(), D.data(),
                              in.envelope.data()};
        Vec x_out((size_t)N * 9 * C, 0.0);
        umas_edge_degree_forward(C, &chunk, in.radial.data(), x_out.data());
        return dot(d_out, x_out);
    };
    auto backward = [&](EdgeInputs &grad) {
        std::vector<umas_wigner> D = unpack_wigner(at.wigner), dD = unpack_wigner(grad.wigner);
        umas_edge_chunk chunk{n, graph.source.data(), graph.target.data(), D.data(),
                              at.envelope.data()};
        umas_edge_degree_backward(C, &chunk, at.radial.data(), d_out.data(), grad.radial.data(),
                                  dD.data(), grad.envelope.data());
        grad.wigner = pack_wigner(dD);
    };
    EdgeInputs grad{Vec(), Vec(at.radial.size(), 12345.0), Vec(at.wigner.size(), 0.0), Vec(n, 0.0)};
    backward(grad);
    check_edge_gradients("edge_degree", loss, at, grad, rng, false);

    // Only the m = 0 rows l1[1][*], l2[2][*] enter: every other entry gets exactly 0.
    std::vector<umas_wigner> dD = unpack_wigner(grad.wigner);
    for (int e = 0; e < n; e++) {
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++) {
                if (i != 1) {
                    EXPECT_EQ(dD[e].l1[i][j], 0.0)
                        << "edge " << e << " l1[" << i << "][" << j << "]";
                }
            }
        for (int i = 0; i < 5; i++)
            for (int j = 0; j < 5; j++) {
                if (i != 2) {
                    EXPECT_EQ(dD[e].l2[i][j], 0.0)
                        << "edge " << e << " l2[" << i << "][" << j << "]";
                }
            }
    }

    // d_wigner and d_envelope accumulate
    EdgeInputs again{Vec(), Vec(at.radial.size(), 0.0), rng.normals(at.wigner.size()),
                     rng.normals(n)};
    EdgeInputs prefill = again;
    backward(again);
    for (size_t i = 0; i < again.wigner.size(); i++)
        EXPECT_NEAR(again.wigner[i] - prefill.wigner[i], grad.wigner[i], 1e-12) << i;
    for (int e = 0; e < n; e++)
        EXPECT_NEAR(again.envelope[e] - prefill.envelope[e], grad.envelope[e], 1e-12) << e;
}

// ---------------------------------------------------------------------------------------------
// wigner.h

// Forward-mode dual numbers: the exact derivative of the test functional.
struct Dual {
    double v, d;
};
Dual operator+(Dual a, Dual b) {
    return {a.v + b.v, a.d + b.d};
}
Dual operator-(Dual a, Dual b) {
    return {a.v - b.v, a.d - b.d};
}
Dual operator*(Dual a, Dual b) {
    return {a.v * b.v, a.d * b.v + a.v * b.d};
}
Dual operator*(double s, Dual a) {
    return {s * a.v, s * a.d};
}

// A roll-invariant functional of u = D a, v = D b (L-order). In the edge frame each pair
// z_{l,m} = c_{l,+m} + i c_{l,-m} turns by e^{i m t} under a roll (spec 3.3), m = 0 is fixed:
// m = 0 at L-index 0, 2, 6; (+1, -1) at (3, 1) and (7, 5); (+2, -2) at (8, 4). Products
// z z'^* within one m, and z_2 (z_1^*)^2, are invariant.
template <class T> T roll_invariant_functional(const T *u, const T *v) {
    return u[2] * v[6] + 0.7 * (u[6] * u[6]) + (u[3] * v[7] + u[1] * v[5]) +
           0.4 * (u[1] * v[7] - u[3] * v[5]) +          // Im z_u1 z_v2^*
           0.3 * ((u[7] * v[7] + u[5] * v[5]) * u[2]) + // |m| = 1, times an m = 0 term
           0.5 * ((u[3] * v[3] + u[1] * v[1]) * v[6]) + //
           0.2 * (u[8] * v[8] + u[4] * v[4]) +          // |m| = 2
           0.25 * (u[8] * (v[7] * v[7] - v[5] * v[5]) + 2.0 * (u[4] * (v[7] * v[5]))) + // Re
           0.1 * u[0] * v[0];
}

// The same with a term that is not roll-invariant: it must change under a roll.
double not_roll_invariant(const double *u, const double *v) {
    return roll_invariant_functional(u, v) + u[3] * v[3];
}

// y = D x for the block-diagonal D (L-order).
template <class T> void apply_wigner(const umas_wigner &D, const T *x, T *y) {
    y[0] = x[0];
    for (int i = 0; i < 3; i++) {
        y[1 + i] = 0.0 * x[0];
        for (int j = 0; j < 3; j++)
            y[1 + i] = y[1 + i] + D.l1[i][j] * x[1 + j];
    }
    for (int i = 0; i < 5; i++) {
        y[4 + i] = 0.0 * x[0];
        for (int j = 0; j < 5; j++)
            y[4 + i] = y[4 + i] + D.l2[i][j] * x[4 + j];
    }
}

struct WignerFunctional {
    double a[9], b[9];

    double operator()(const umas_wigner &D) const {
        double u[9], v[9];
        apply_wigner(D, a, u);
        apply_wigner(D, b, v);
        return roll_invariant_functional(u, v);
    }

    // dE/dD for the l = 1, 2 blocks: dD^l[i][j] = dE/du_i a_j + dE/dv_i b_j.
    umas_wigner gradient(const umas_wigner &D) const {
        double u[9], v[9], du[9], dv[9];
        apply_wigner(D, a, u);
        apply_wigner(D, b, v);
        for (int k = 0; k < 18; k++) {
            Dual ud[9], vd[9];
            for (int i = 0; i < 9; i++) {
                ud[i] = {u[i], k == i ? 1.0 : 0.0};
                vd[i] = {v[i], k == 9 + i ? 1.0 : 0.0};
            }
            double g = roll_invariant_functional(ud, vd).d;
            (k < 9 ? du[k] : dv[k - 9]) = g;
        }
        umas_wigner dD;
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++)
                dD.l1[i][j] = du[1 + i] * a[1 + j] + dv[1 + i] * b[1 + j];
        for (int i = 0; i < 5; i++)
            for (int j = 0; j < 5; j++)
                dD.l2[i][j] = du[4 + i] * a[4 + j] + dv[4 + i] * b[4 + j];
        return dD;
    }
};

WignerFunctional random_functional(Rng &rng) {
    WignerFunctional f;
    for (int i = 0; i < 9; i++) {
        f.a[i] = rng.normal();
        f.b[i] = rng.normal();
    }
    return f;
}

umas_wigner wigner_of(const Vec &r) {
    double d = std::sqrt(dot(r, r)), e[3] = {r[0] / d, r[1] / d, r[2] / d};
    umas_wigner D;
    umas_wigner_from_unit_vector(e, &D);
    return D;
}

// D^2(R)[i][j] = (2/3) tr(A_i R A_j R^T) (spec 3.4), independently of the library.
void l2_of_rotation(const double R[3][3], double l2[5][5]) {
    const double s = std::sqrt(3.0);
    double A[5][3][3] = {};
    A[0][0][2] = A[0][2][0] = s / 2;
    A[1][0][1] = A[1][1][0] = s / 2;
    A[2][0][0] = A[2][2][2] = -0.5;
    A[2][1][1] = 1.0;
    A[3][1][2] = A[3][2][1] = s / 2;
    A[4][0][0] = -s / 2;
    A[4][2][2] = s / 2;
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 5; j++) {
            double t = 0;
            for (int a = 0; a < 3; a++)
                for (int b = 0; b < 3; b++)
                    for (int c = 0; c < 3; c++)
                        for (int k = 0; k < 3; k++)
                            t += A[i][a][b] * R[b][c] * A[j][c][k] * R[a][k];
            l2[i][j] = (2.0 / 3.0) * t;
        }
}

TEST(Gradients, TestFunctionalIsRollInvariant) {
    Rng rng(11);
    WignerFunctional f = random_functional(rng);
    double worst = 0, changed = 0;
    for (int k = 0; k < 5; k++) {
        umas_wigner D = wigner_of(random_unit_vector(rng));
        double l2[5][5]; // the helper reproduces the library's D^2 from D^1
        l2_of_rotation(D.l1, l2);
        for (int i = 0; i < 5; i++)
            for (int j = 0; j < 5; j++)
                EXPECT_NEAR(l2[i][j], D.l2[i][j], 1e-14);
        double t = rng.uniform(0.1, 6.0), c = std::cos(t), s = std::sin(t);
        const double Ry[3][3] = {{c, 0, s}, {0, 1, 0}, {-s, 0, c}};
        umas_wigner rolled; // D(R_y(t) R)
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++)
                rolled.l1[i][j] =
                    Ry[i][0] * D.l1[0][j] + Ry[i][1] * D.l1[1][j] + Ry[i][2] * D.l1[2][j];
        l2_of_rotation(rolled.l1, rolled.l2);
        double E = f(D);
        worst = std::max(worst, std::fabs(f(rolled) - E) / std::fabs(E));
        double u[9], v[9], ur[9], vr[9];
        apply_wigner(D, f.a, u);
        apply_wigner(D, f.b, v);
        apply_wigner(rolled, f.a, ur);
        apply_wigner(rolled, f.b, vr);
        changed =
            std::max(changed, std::fabs(not_roll_invariant(ur, vr) - not_roll_invariant(u, v)));
    }
    std::printf("[ measured ] test functional under a roll: max rel. change %.2e\n", worst);
    EXPECT_LE(worst, 1e-13);
    EXPECT_GT(changed, 1e-3) << "the roll check cannot see a non-invariant term";
}

TEST(Gradients, Generators) {
    umas_wigner_generators J;
    umas_wigner_generators_init(&J);
    const double K[3][3][3] = {{{0, 0, 0}, {0, 0, -1}, {0, 1, 0}},
                               {{0, 0, 1}, {0, 0, 0}, {-1, 0, 0}},
                               {{0, -1, 0}, {1, 0, 0}, {0, 0, 0}}};
    const double s = std::sqrt(3.0);
    const double J2[3][5][5] = {
        {{0, 1, 0, 0, 0}, {-1, 0, 0, 0, 0}, {0, 0, 0, -s, 0}, {0, 0, s, 0, -1}, {0, 0, 0, 1, 0}},
        {{0, 0, 0, 0, 2}, {0, 0, 0, 1, 0}, {0, 0, 0, 0, 0}, {0, -1, 0, 0, 0}, {-2, 0, 0, 0, 0}},
        {{0, 0, 0, -1, 0}, {0, 0, -s, 0, -1}, {0, s, 0, 0, 0}, {1, 0, 0, 0, 0}, {0, 1, 0, 0, 0}}};
    for (int a = 0; a < 3; a++) {
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++)
                EXPECT_NEAR(J.l1[a][i][j], K[a][i][j], 1e-12) << "J1[" << a << "]";
        for (int i = 0; i < 5; i++)
            for (int j = 0; j < 5; j++)
                EXPECT_NEAR(J.l2[a][i][j], J2[a][i][j], 1e-12)
                    << "J2[" << a << "][" << i << "][" << j << "]";
    }
    // and they generate D: d/dt D^l(exp(t K_a) R) at t = 0 is J^l_a D^l(R)
    Rng rng(12);
    umas_wigner D = wigner_of(random_unit_vector(rng));
    double worst = 0;
    for (int a = 0; a < 3; a++)
        for (int i = 0; i < 5; i++)
            for (int j = 0; j < 5; j++) {
                auto entry = [&](const Vec &t) {
                    // exp(t K_a) by Rodrigues' formula, times R
                    double c = std::cos(t[0]), sn = std::sin(t[0]), Q[3][3], QR[3][3], l2[5][5];
                    for (int p = 0; p < 3; p++)
                        for (int q = 0; q < 3; q++) {
                            double KK = 0;
                            for (int m = 0; m < 3; m++)
                                KK += K[a][p][m] * K[a][m][q];
                            Q[p][q] = (p == q) + sn * K[a][p][q] + (1 - c) * KK;
                        }
                    for (int p = 0; p < 3; p++)
                        for (int q = 0; q < 3; q++)
                            QR[p][q] =
                                Q[p][0] * D.l1[0][q] + Q[p][1] * D.l1[1][q] + Q[p][2] * D.l1[2][q];
                    l2_of_rotation(QR, l2);
                    return l2[i][j];
                };
                double JD = 0;
                for (int k = 0; k < 5; k++)
                    JD += J.l2[a][i][k] * D.l2[k][j];
                worst = std::max(worst, std::fabs(fd_along(entry, {0.0}, {1.0}, 1e-3) - JD));
            }
    std::printf("[ measured ] generators: d/dt D2(exp(tK_a) R) - J2_a D2, max abs %.2e\n", worst);
    EXPECT_LE(worst, 1e-9);
}

// dE/dr of E(D(r)) for a roll-invariant E: the torque formula vs finite differences in r.
Error wigner_backward_error(const WignerFunctional &f, const umas_wigner_generators &J,
                            const Vec &r, Rng &rng) {
    double d = std::sqrt(dot(r, r)), e[3] = {r[0] / d, r[1] / d, r[2] / d};
    umas_wigner D;
    umas_wigner_from_unit_vector(e, &D);
    umas_wigner dD = f.gradient(D);
    double prefill[3] = {rng.normal(), rng.normal(), rng.normal()}, dr[3];
    std::copy(prefill, prefill + 3, dr);
    umas_wigner_backward(&J, &D, &dD, e, d, dr); // adds
    Vec g{dr[0] - prefill[0], dr[1] - prefill[1], dr[2] - prefill[2]};
    auto energy = [&](const Vec &rr) { return f(wigner_of(rr)); };
    return check_gradient(energy, r, g, rng, true, 2, 1e-4 * d);
}

TEST(Gradients, WignerBackward) {
    Rng rng(13);
    umas_wigner_generators J;
    umas_wigner_generators_init(&J);
    WignerFunctional f = random_functional(rng);
    auto scaled = [&](Vec v, double length) {
        double norm = std::sqrt(dot(v, v));
        for (double &x : v)
            x *= length / norm;
        return v;
    };

    Error random_dirs, poles, switches;
    for (int k = 0; k < 12; k++) {
        Vec r = scaled(random_unit_vector(rng), rng.uniform(0.7, 5.0));
        random_dirs.merge(wigner_backward_error(f, J, r, rng));
    }
    // at and near the poles e = +-y
    for (Vec e : {Vec{0, 1, 0}, Vec{0, -1, 0}, Vec{1e-9, 1, 0}, Vec{0, -1, 1e-7},
                  Vec{-1e-8, 1, 1e-8}, Vec{1e-5, -1, -2e-5}})
        poles.merge(wigner_backward_error(f, J, scaled(e, rng.uniform(0.7, 5.0)), rng));
    // where the helper axis (the component of e smallest in magnitude) switches
    for (Vec e : {Vec{0.3, 0.9, 0.3}, Vec{0.3, 0.9, -0.3}, Vec{-0.4, 0.8, 0.4 + 1e-10},
                  Vec{0.5, 0.5, 0.7}, Vec{0.6, -0.2, 0.2}, Vec{1, 1, 1}, Vec{1, 0, 0},
                  Vec{0, 0, -1}, Vec{0.2, -0.7, 0.2 - 1e-12}, Vec{0.8, 0.1, -0.1}})
        switches.merge(wigner_backward_error(f, J, scaled(e, rng.uniform(0.7, 5.0)), rng));
    report("wigner_backward random directions", random_dirs);
    report("wigner_backward at/near the poles", poles);
    report("wigner_backward at the frame's axis switches", switches);
}

} // namespace
