// test_fast.cpp - the `umas_fast` backend on the CPU (float64): block-form SO(2) convolutions and
// the unified radial MLP (spec 13, issue 6).
//
// Specification:
//  * umas_fast equals `general` on every reference case of every available model: energy,
//    per-atom energies, forces, virial and dE/dr per edge to 1e-10 relative (max-abs difference
//    over the components / max-abs `general` component);
//  * umas_fast matches fairchem's float64 references with the tolerances of the general tests:
//    energy and per-atom energies 1e-8 relative, forces and stress 1e-7 relative;
//  * the unified radial MLP (one first-layer product for all blocks, then each block's rest)
//    equals the blocks' own radial MLPs to 1e-12, forward and backward (input adjoints summed
//    over the blocks);
//  * a convolution converted to block form [[W1, -W2], [W2, W1]] equals the complex product
//    (x_r + i x_i)(W1 + i W2) to 1e-12, forward and backward, and a whole block's messages with
//    the converted convolutions equal the general messages to 1e-12 (every output and adjoint);
//  * umas_fast's forces are central finite differences of its own energy;
//  * `umas_fast_pytorch` (fairchem's name) selects umas_fast; unknown names list umas_fast.
#include "reference.hpp"

extern "C" {
#include "context.h"
#include "edgewise.h"
#include "nn.h"
#include "so2_fast.h"
}

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <random>

namespace {

using Vec = std::vector<double>;

// max |a - b| / max |b|, the relative measure of every comparison here.
double relative(const Vec &a, const Vec &b) {
    double scale = max_abs(b);
    return scale > 0 ? max_abs_diff(a, b) / scale : max_abs_diff(a, b);
}

Vec normals(std::mt19937 &gen, size_t n, double scale = 1.0) {
    std::normal_distribution<double> normal(0.0, scale);
    Vec v(n);
    for (double &x : v)
        x = normal(gen);
    return v;
}

// ---------------------------------------------------------------------------------------------
// Whole model: umas_fast vs general vs fairchem, every reference case.
// ---------------------------------------------------------------------------------------------

struct BothBackends {
    Evaluation::Output general, fast;
    int num_edges = 0;
};

// One evaluation per case and backend, shared by the tests below (the umas cases are slow).
const BothBackends &evaluate_both(const CaseId &id, const ReferenceCase &c) {
    static std::map<std::string, std::unique_ptr<BothBackends>> cache;
    std::unique_ptr<BothBackends> &slot = cache[id.model + "/" + id.name];
    if (!slot) {
        slot = std::make_unique<BothBackends>();
        Evaluation general, fast;
        general.setup(model_path(id.model), c, "general");
        fast.setup(model_path(id.model), c, "umas_fast");
        slot->general = general.compute(c.atomic_numbers, true);
        slot->fast = fast.compute(c.atomic_numbers, true);
        slot->num_edges = fast.edges.num_edges;
    }
    return *slot;
}

class FastBackend : public ::testing::TestWithParam<CaseId> {};

TEST_P(FastBackend, EqualsGeneral) {
    const CaseId &id = GetParam();
    if (!file_exists(model_path(id.model)))
        GTEST_SKIP() << "model " << model_path(id.model) << " not converted (optional)";
    ReferenceCase c = load_case(id.model, id.name);
    const BothBackends &r = evaluate_both(id, c);

    double energy = std::fabs(r.fast.energy - r.general.energy) / std::fabs(r.general.energy);
    double per_atom = relative(r.fast.per_atom, r.general.per_atom);
    double forces = relative(r.fast.forces, r.general.forces);
    double edge_gradient = relative(r.fast.edge_gradient, r.general.edge_gradient);
    double virial = relative(Vec(r.fast.virial, r.fast.virial + 6),
                             Vec(r.general.virial, r.general.virial + 6));
    std::printf("[ measured ] %s/%s (%d edges): umas_fast vs general, relative: energy %.2e, "
                "per-atom %.2e, forces %.2e, dE/dr %.2e, virial %.2e\n",
                id.model.c_str(), id.name.c_str(), r.num_edges, energy, per_atom, forces,
                edge_gradient, virial);
    EXPECT_LE(energy, 1e-10);
    EXPECT_LE(per_atom, 1e-10);
    EXPECT_LE(forces, 1e-10);
    EXPECT_LE(edge_gradient, 1e-10);
    EXPECT_LE(virial, 1e-10);
}

TEST_P(FastBackend, MatchesFairchemFloat64) {
    const CaseId &id = GetParam();
    if (!file_exists(model_path(id.model)))
        GTEST_SKIP() << "model " << model_path(id.model) << " not converted (optional)";
    ReferenceCase c = load_case(id.model, id.name);
    const Evaluation::Output &out = evaluate_both(id, c).fast;

    double energy = std::fabs(out.energy - c.energy) / std::fabs(c.energy);
    double per_atom = per_atom_error(out.per_atom, c);
    double forces = relative(out.forces, npy_load(c.file("forces_f64.npy")).values);
    double stress = 0;
    if (c.pbc[0])
        stress = relative(stress_from_virial(out.virial, cell_volume(c.cell)),
                          npy_load(c.file("stress_f64.npy")).values);
    std::printf("[ measured ] %s/%s: umas_fast vs fairchem float64, relative: energy %.2e, "
                "per-atom %.2e, forces %.2e, stress %.2e\n",
                id.model.c_str(), id.name.c_str(), energy, per_atom, forces, stress);
    EXPECT_LE(energy, 1e-8);
    EXPECT_LE(per_atom, 1e-8);
    EXPECT_LE(forces, 1e-7);
    EXPECT_LE(stress, 1e-7);
}

INSTANTIATE_TEST_SUITE_P(AllCases, FastBackend, ::testing::ValuesIn(all_cases()), case_label);

TEST(FastBackend, FairchemNameIsAnAliasAndUnknownNamesListIt) {
    ReferenceCase c = load_case("tiny", "e_si_primitive_2");
    Evaluation alias;
    alias.setup(model_path("tiny"), c, "umas_fast_pytorch");
    EXPECT_STREQ(alias.ctx->backend->name, "umas_fast");

    umas_system sys =
        one_process_system(c.task.c_str(), c.charge, c.spin, c.num_atoms, c.atomic_numbers.data());
    umas_options opt = {"umas_slow", "cpu", nullptr};
    umas_error err = {};
    EXPECT_EQ(umas_context_create(alias.model, &sys, &opt, &err), nullptr);
    EXPECT_NE(std::string(err.message).find("umas_fast"), std::string::npos) << err.message;
}

// ---------------------------------------------------------------------------------------------
// Self-consistency: finite differences of umas_fast's own energy.
// ---------------------------------------------------------------------------------------------

class FastFiniteDifferences : public ::testing::TestWithParam<std::string> {};

TEST_P(FastFiniteDifferences, ForcesAreMinusTheEnergyGradient) {
    ReferenceCase c = load_case("tiny", GetParam());
    Evaluation ev;
    ev.setup(model_path("tiny"), c, "umas_fast");
    double worst = check_forces_by_finite_differences(ev, c);
    std::printf("[ measured ] tiny/%s umas_fast: |F - finite difference| <= %.2e eV/A\n",
                GetParam().c_str(), worst);
}

INSTANTIATE_TEST_SUITE_P(Tiny, FastFiniteDifferences,
                         ::testing::Values("b_triclinic_perovskite_60", "c_molecule_q1_s2"));

// ---------------------------------------------------------------------------------------------
// The pieces, on the tiny model's merged weights and random inputs.
// ---------------------------------------------------------------------------------------------

// The tiny model merged for one case: real weights of every block.
struct TinyWeights {
    Evaluation ev;
    const umas_weights *w = nullptr;
    TinyWeights() {
        ev.setup(model_path("tiny"), load_case("tiny", "b_triclinic_perovskite_60"));
        w = &ev.ctx->weights;
    }
};

// Per-row work space of one radial MLP call, as the backends size it.
struct RadialWork {
    Vec pre_norm1, pre_norm2, hidden, work;
    umas_radial_saved saved;
    RadialWork(int rows, int Ce)
        : pre_norm1((size_t)rows * Ce), pre_norm2((size_t)rows * Ce), hidden((size_t)rows * Ce),
          work((size_t)rows * 2 * Ce) {
        saved = {pre_norm1.data(), pre_norm2.data(), hidden.data()};
    }
};

TEST(UnifiedRadialMlp, EqualsEachBlocksRadialMlpForwardAndBackward) {
    TinyWeights tiny;
    const umas_weights &w = *tiny.w;
    const int rows = 37, L = w.num_layers, Ce = w.Ce, F = w.F, width = L * Ce;
    ASSERT_GE(L, 2) << "a unified MLP of one block tests nothing";
    std::mt19937 gen(6);
    Vec a = normals(gen, (size_t)rows * F);

    umas_unified_radial unified;
    ASSERT_EQ(umas_unified_radial_init(&unified, &w), 0);
    Vec first((size_t)rows * width);
    umas_unified_radial_forward(&unified, rows, a.data(), first.data(), width);

    RadialWork general_work(rows, Ce), unified_work(rows, Ce);
    Vec da_general((size_t)rows * F, 0.0), d_first((size_t)rows * width);
    double forward_error = 0, backward_error = 0;
    for (int l = 0; l < L; l++) {
        const umas_radial_mlp &mlp = w.blocks[l].radial;
        const int out = mlp.fc3.out;
        Vec expected((size_t)rows * out), got((size_t)rows * out);
        umas_radial_mlp_forward(&mlp, rows, a.data(), &general_work.saved, expected.data());
        umas_unified_radial_block_forward(&mlp, rows, first.data() + (size_t)l * Ce, width,
                                          &unified_work.saved, got.data());
        forward_error = std::max(forward_error, relative(got, expected));

        // backward: the general MLP's input adjoint per block, summed over the blocks ...
        Vec d_out = normals(gen, (size_t)rows * out), da((size_t)rows * F);
        umas_radial_mlp_backward(&mlp, rows, &general_work.saved, d_out.data(), da.data(), F,
                                 general_work.work.data());
        for (size_t k = 0; k < da.size(); k++)
            da_general[k] += da[k];
        // ... and the unified one: each block's slice of d_first, then one product
        umas_unified_radial_block_backward(&mlp, rows, &unified_work.saved, d_out.data(),
                                           d_first.data() + (size_t)l * Ce, width,
                                           unified_work.work.data());
    }
    Vec da_unified((size_t)rows * F);
    umas_unified_radial_backward(&unified, rows, d_first.data(), width, da_unified.data(), F);
    backward_error = relative(da_unified, da_general);
    // only the Gaussian columns, as the backend uses it: a strided partial product
    Vec db_unified((size_t)rows * w.B), db_general((size_t)rows * w.B);
    umas_unified_radial_backward(&unified, rows, d_first.data(), width, db_unified.data(), w.B);
    for (int r = 0; r < rows; r++)
        for (int k = 0; k < w.B; k++)
            db_general[(size_t)r * w.B + k] = da_general[(size_t)r * F + k];
    double gaussian_error = relative(db_unified, db_general);
    umas_unified_radial_free(&unified);

    std::printf("[ measured ] unified radial MLP (%d blocks, F = %d, Ce = %d): forward %.2e, "
                "backward %.2e (Gaussian columns %.2e) relative\n",
                L, F, Ce, forward_error, backward_error, gaussian_error);
    EXPECT_LE(forward_error, 1e-12);
    EXPECT_LE(backward_error, 1e-12);
    EXPECT_LE(gaussian_error, 1e-12);
}

// (x_r + i x_i)(W1 + i W2) written out, W = [W1; W2] [2 half][in]: out [rows][2 half] =
// [out_r | out_i]; and its adjoint dx [rows][2 in] = [dx_r | dx_i].
void complex_product(const umas_linear &W, int rows, const Vec &x, Vec &out) {
    int half = W.out / 2, in = W.in;
    out.assign((size_t)rows * 2 * half, 0.0);
    for (int e = 0; e < rows; e++)
        for (int r = 0; r < half; r++) {
            const double *w1 = W.weight + (size_t)r * in, *w2 = W.weight + (size_t)(half + r) * in;
            const double *xr = &x[(size_t)e * 2 * in], *xi = xr + in;
            double re = 0, im = 0;
            for (int k = 0; k < in; k++) {
                re += w1[k] * xr[k] - w2[k] * xi[k];
                im += w2[k] * xr[k] + w1[k] * xi[k];
            }
            out[(size_t)e * 2 * half + r] = re;
            out[(size_t)e * 2 * half + half + r] = im;
        }
}

void complex_product_adjoint(const umas_linear &W, int rows, const Vec &d_out, Vec &dx) {
    int half = W.out / 2, in = W.in;
    dx.assign((size_t)rows * 2 * in, 0.0);
    for (int e = 0; e < rows; e++)
        for (int r = 0; r < half; r++) {
            const double *w1 = W.weight + (size_t)r * in, *w2 = W.weight + (size_t)(half + r) * in;
            double dr = d_out[(size_t)e * 2 * half + r],
                   di = d_out[(size_t)e * 2 * half + half + r];
            double *dxr = &dx[(size_t)e * 2 * in], *dxi = dxr + in;
            for (int k = 0; k < in; k++) {
                dxr[k] += w1[k] * dr + w2[k] * di;
                dxi[k] += -w2[k] * dr + w1[k] * di;
            }
        }
}

TEST(BlockForm, EachConvolutionEqualsTheComplexProduct) {
    TinyWeights tiny;
    const umas_block_weights &b = tiny.w->blocks[0];
    std::mt19937 gen(7);
    const int rows = 11;
    struct Named {
        const char *name;
        const umas_linear *W;
    } convs[] = {{"conv1 m=1", &b.conv1_m1},
                 {"conv1 m=2", &b.conv1_m2},
                 {"conv2 m=1", &b.conv2_m1},
                 {"conv2 m=2", &b.conv2_m2}};
    for (const Named &conv : convs) {
        umas_linear block;
        ASSERT_EQ(umas_so2_block_form(conv.W, &block), 0);
        ASSERT_EQ(block.out, conv.W->out);
        ASSERT_EQ(block.in, 2 * conv.W->in);
        Vec x = normals(gen, (size_t)rows * block.in),
            d_out = normals(gen, (size_t)rows * block.out);
        Vec expected, expected_dx, got((size_t)rows * block.out), got_dx((size_t)rows * block.in);
        complex_product(*conv.W, rows, x, expected);
        complex_product_adjoint(*conv.W, rows, d_out, expected_dx);
        umas_linear_forward(&block, rows, x.data(), block.in, got.data(), block.out);
        umas_linear_backward(&block, rows, d_out.data(), block.out, got_dx.data(), block.in,
                             block.in, 0);
        free(block.weight);
        double forward = relative(got, expected), backward = relative(got_dx, expected_dx);
        std::printf("[ measured ] block form of %s ([%d][%d]): forward %.2e, backward %.2e\n",
                    conv.name, block.out, block.in, forward, backward);
        EXPECT_LE(forward, 1e-12) << conv.name;
        EXPECT_LE(backward, 1e-12) << conv.name;
    }
}

// Random per-edge D blocks (the messages are linear in D; no rotation needed to compare).
std::vector<umas_wigner> random_wigner(std::mt19937 &gen, int n) {
    std::vector<umas_wigner> D(n);
    for (umas_wigner &d : D) {
        Vec v = normals(gen, 34);
        std::copy(v.begin(), v.begin() + 9, &d.l1[0][0]);
        std::copy(v.begin() + 9, v.end(), &d.l2[0][0]);
    }
    return D;
}

Vec flatten(const std::vector<umas_wigner> &D) {
    Vec v;
    for (const umas_wigner &d : D) {
        v.insert(v.end(), &d.l1[0][0], &d.l1[0][0] + 9);
        v.insert(v.end(), &d.l2[0][0], &d.l2[0][0] + 25);
    }
    return v;
}

TEST(BlockForm, BlockMessagesEqualGeneralForwardAndBackward) {
    TinyWeights tiny;
    const umas_weights &w = *tiny.w;
    const int C = w.C, H = w.H, N = 7, n = 23;
    std::mt19937 gen(8);
    std::vector<int> source(n), target(n);
    for (int e = 0; e < n; e++) {
        source[e] = (int)(gen() % N);
        target[e] = (source[e] + 1 + (int)(gen() % (N - 1))) % N;
    }
    Vec x = normals(gen, (size_t)N * 9 * C), radial = normals(gen, (size_t)n * 12 * C);
    Vec d_out = normals(gen, (size_t)N * 9 * C), envelope(n);
    for (double &v : envelope)
        v = std::uniform_real_distribution<double>(0.2, 1.0)(gen);
    std::vector<umas_wigner> D = random_wigner(gen, n);
    umas_edge_chunk chunk{n, source.data(), target.data(), D.data(), envelope.data()};
    Vec memory(umas_edgewise_work_doubles(n, C, H));
    umas_edgewise_work work;
    umas_edgewise_work_bind(&work, memory.data(), n, C, H);

    for (int l = 0; l < w.num_layers; l++) {
        const umas_block_weights &b = w.blocks[l];
        umas_fast_block f;
        ASSERT_EQ(umas_fast_block_init(&f, &b), 0);

        struct Result {
            Vec x_out, d_x, d_radial, d_wigner, d_envelope;
        } general, fast;
        for (Result *r : {&general, &fast}) {
            bool is_fast = r == &fast;
            r->x_out.assign(x.size(), 0.0);
            r->d_x.assign(x.size(), 0.0);
            r->d_radial.assign(radial.size(), 0.0);
            r->d_envelope.assign(n, 0.0);
            std::vector<umas_wigner> dD(n, umas_wigner{});
            if (is_fast) {
                umas_fast_edgewise_forward(&b, &f, C, H, &chunk, radial.data(), x.data(),
                                           r->x_out.data(), &work);
                umas_fast_edgewise_backward(&b, &f, C, H, &chunk, radial.data(), x.data(),
                                            d_out.data(), r->d_x.data(), r->d_radial.data(),
                                            dD.data(), r->d_envelope.data(), &work);
            } else {
                umas_edgewise_forward(&b, C, H, &chunk, radial.data(), x.data(), r->x_out.data(),
                                      &work);
                umas_edgewise_backward(&b, C, H, &chunk, radial.data(), x.data(), d_out.data(),
                                       r->d_x.data(), r->d_radial.data(), dD.data(),
                                       r->d_envelope.data(), &work);
            }
            r->d_wigner = flatten(dD);
        }
        umas_fast_block_free(&f);

        double errors[] = {relative(fast.x_out, general.x_out), relative(fast.d_x, general.d_x),
                           relative(fast.d_radial, general.d_radial),
                           relative(fast.d_wigner, general.d_wigner),
                           relative(fast.d_envelope, general.d_envelope)};
        const char *names[] = {"messages", "dE/dx", "dE/dradial", "dE/dD", "dE/denv"};
        std::printf("[ measured ] block %d messages, block form vs general:", l);
        for (int k = 0; k < 5; k++) {
            std::printf(" %s %.2e", names[k], errors[k]);
            EXPECT_LE(errors[k], 1e-12) << names[k] << ", block " << l;
        }
        std::printf("\n");
    }
}

} // namespace
