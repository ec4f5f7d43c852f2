// test_cuda.cpp - the `general`, `umas_fast` and `umas_fast_gpu` backends on the GPU (device cuda,
// float32; umas_fast_gpu both keeping its edge activations and recomputing them) against
// fairchem's float64 truth. Needs a GPU: without one the GPU tests skip, and only the error a user
// gets without a GPU is checked.
//
// Specification (bounds of the CUDA issue for the exact fp32 arithmetic; fairchem's own fp32
// stays within about 2e-5 eV/A; the experimental tensor-core precisions: see bounds_for):
//  * on every reference case: energy within max(1e-4 eV, 1e-5 eV x atoms), forces within
//    1e-4 eV/A (max-abs), stress within 1e-6 eV/A^3 of the float64 references;
//  * the node features after every stage of the tiny model follow fairchem's intermediates to
//    float32 precision (so a mismatch is located);
//  * per-atom energies sum to the energy; two runs give bitwise the same energy, forces and
//    virial (fixed-point node sums, no float atomics).
#include "intermediates.hpp"
#include "reference.hpp"

extern "C" {
#include "context.h"
}

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ostream>
#include <string>
#include <tuple>
#include <vector>

namespace {

bool have_gpu() {
    return umas_cuda_device_count() > 0;
}

// A reference case on one of the GPU backends, in one precision ("" = exact fp32). `keep` forces
// umas_fast_gpu's choice for its edge activations (UMAS_CUDA_RECOMPUTE): "" keeps them all (as
// when they fit in GPU memory), "recompute" recomputes them in the backward (=1: when keeping
// them does not fit), "chunks" keeps them all but works in chunks of edges (=chunks: when the
// scratch for all edges at once does not fit, as at 16,000 atoms), "radial" keeps them without
// the radial MLP outputs (=radial: when only that fits), "partial" keeps those of the last half
// of the blocks over all edges and recomputes the others (=partial: when only some blocks' fit,
// as at 100,000 atoms); the last three in three chunks of edges.
struct CudaCase {
    CaseId id;
    std::string backend, precision, keep;
};

std::vector<CudaCase> cuda_cases() {
    std::vector<CudaCase> cases;
    struct mode {
        const char *backend, *precision, *keep;
    } modes[] = {{"general", "", ""},
                 {"umas_fast", "", ""},
                 {"umas_fast", "3xtf32", ""},
                 {"umas_fast", "tf32", ""},
                 {"umas_fast_gpu", "", ""},
                 {"umas_fast_gpu", "", "recompute"},
                 {"umas_fast_gpu", "", "radial"},
                 {"umas_fast_gpu", "", "partial"},
                 {"umas_fast_gpu", "", "chunks"},
                 {"umas_fast_gpu", "3xtf32", ""},
                 {"umas_fast_gpu", "3xtf32", "recompute"},
                 {"umas_fast_gpu", "3xtf32", "radial"},
                 {"umas_fast", "ozaki", ""},
                 {"umas_fast_gpu", "ozaki", ""},
                 {"umas_fast_gpu", "ozaki", "recompute"},
                 {"umas_fast_gpu", "ozaki", "radial"},
                 {"umas_fast_gpu", "ozaki", "partial"},
                 {"umas_fast_gpu", "ozaki", "chunks"},
                 {"umas_fast_gpu", "tf32", ""}};
    for (const mode &m : modes)
        for (const CaseId &id : all_cases())
            cases.push_back({id, m.backend, m.precision, m.keep});
    return cases;
}

std::string cuda_case_label(const ::testing::TestParamInfo<CudaCase> &info) {
    const CudaCase &c = info.param;
    return c.backend + (c.keep.empty() ? "" : "_" + c.keep) +
           (c.precision.empty() ? "" : "_" + c.precision) + "_" + c.id.model + "_" + c.id.name;
}

void PrintTo(const CudaCase &c, std::ostream *os) {
    *os << c.backend << (c.keep.empty() ? "" : " (" + c.keep + ")") << " "
        << (c.precision.empty() ? "fp32" : c.precision) << " " << c.id.model << "/" << c.id.name;
}

// Sets an environment variable for the life of a scope.
struct ScopedEnv {
    std::string name;
    ScopedEnv(const char *n, const char *value) : name(n) {
        setenv(n, value, 1);
    }
    ~ScopedEnv() {
        unsetenv(name.c_str());
    }
};

/* What each precision promises against fairchem's float64 truth.
 *  fp32 (exact, the default) and 3xtf32 (split-precision tensor-core products; on Hopper the
 *  kernels of cuda/gemm/gemm_tc.h, whose sums carry no significant bias): the CUDA issue's strict
 *  bounds.
 *  tf32 is the fast mode (issue 7): on the H200 its errors are those recorded in
 *  bench/README.md (forces up to 1.2e-2 eV/A); this bound states that behaviour. */
struct Bounds {
    double energy, forces, stress;
};

Bounds bounds_for(const std::string &precision, int atoms) {
    double strict_energy = std::max(1e-4, 1e-5 * atoms);
    if (precision == "tf32")
        return {2e-2 * atoms + 0.1, 2e-2, 1e-2};
    return {strict_energy, 1e-4, 1e-6};
}

class CudaReference : public ::testing::TestWithParam<CudaCase> {};

TEST_P(CudaReference, MatchesFairchemFloat64WithinFloat32Bounds) {
    if (!have_gpu())
        GTEST_SKIP() << "no CUDA device";
    const CaseId &id = GetParam().id;
    const char *backend = GetParam().backend.c_str();
    const std::string &precision = GetParam().precision;
    if (!file_exists(model_path(id.model)))
        GTEST_SKIP() << "model " << model_path(id.model) << " not converted (optional)";
    ReferenceCase c = load_case(id.model, id.name);
    const std::string &keep = GetParam().keep;
    ScopedEnv recompute("UMAS_CUDA_RECOMPUTE", keep == "recompute" ? "1"
                                               : keep.empty()      ? "0"
                                                                   : keep.c_str());
    Evaluation ev;
    ev.setup(model_path(id.model), c, backend, "cuda",
             precision.empty() ? nullptr : precision.c_str());
    Evaluation::Output out = ev.compute(c.atomic_numbers, true);

    double energy_error = std::fabs(out.energy - c.energy);
    Bounds bound = bounds_for(precision, c.num_atoms);
    double energy_bound = bound.energy, force_bound = bound.forces, stress_bound = bound.stress;
    std::vector<double> ref_forces = npy_load(c.file("forces_f64.npy")).values;
    double force_error = max_abs_diff(out.forces.data(), ref_forces.data(), ref_forces.size());
    double stress_error = 0;
    if (c.pbc[0]) {
        std::vector<double> stress = stress_from_virial(out.virial, cell_volume(c.cell));
        stress_error = max_abs_diff(stress, npy_load(c.file("stress_f64.npy")).values);
    }
    double sum = 0;
    for (double e : out.per_atom)
        sum += e;
    std::printf("[ measured ] cuda %s %s %s/%s: |dE| %.2e eV (bound %.0e), max|dF| %.2e eV/A, "
                "max|dstress| %.2e eV/A^3\n",
                backend, precision.empty() ? "fp32" : precision.c_str(), id.model.c_str(),
                id.name.c_str(), energy_error, energy_bound, force_error, stress_error);
    EXPECT_LE(energy_error, energy_bound);
    EXPECT_LE(force_error, force_bound);
    EXPECT_LE(stress_error, stress_bound);
    EXPECT_NEAR(sum, out.energy, 1e-6 * std::max(1.0, std::fabs(out.energy)));
    /* node sums are fixed-point (cuda/kernels.h): a second run gives the same bits */
    Evaluation::Output again = ev.compute(c.atomic_numbers, true);
    EXPECT_EQ(again.energy, out.energy);
    EXPECT_EQ(again.forces, out.forces) << "forces differ between two runs";
    EXPECT_EQ(0, std::memcmp(again.virial, out.virial, sizeof out.virial));
}

INSTANTIATE_TEST_SUITE_P(AllCases, CudaReference, ::testing::ValuesIn(cuda_cases()),
                         cuda_case_label);

class CudaIntermediates : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(CudaIntermediates, NodeFeaturesAfterEveryStage) {
    if (!have_gpu())
        GTEST_SKIP() << "no CUDA device";
    const std::string &backend = std::get<0>(GetParam()), &name = std::get<1>(GetParam());
    ReferenceCase c = load_case("tiny", name);
    Evaluation ev;
    ev.setup(model_path("tiny"), c, backend.c_str(), "cuda");
    std::vector<std::string> stages = intermediate_stages(ev.ctx->weights.num_layers);
    std::vector<double> errors = intermediate_errors(ev, c, "cuda " + backend + " tiny/" + name);
    for (size_t s = 0; s < errors.size(); s++)
        EXPECT_LE(errors[s], 1e-4) << "first mismatch at stage " << stages[s];
}

INSTANTIATE_TEST_SUITE_P(
    Tiny, CudaIntermediates,
    ::testing::Combine(::testing::Values("general", "umas_fast", "umas_fast_gpu"),
                       ::testing::Values("a_cu_fcc_108", "b_triclinic_perovskite_60",
                                         "c_molecule_q1_s2", "e_si_primitive_2")));

TEST(CudaDevice, WithoutAGpuTheContextSaysSo) {
    if (have_gpu())
        GTEST_SKIP() << "a GPU is present";
    umas_error err;
    umas_model *model = umas_model_load(model_path("tiny").c_str(), &err);
    ASSERT_NE(model, nullptr) << err.message;
    int z[1] = {29};
    umas_system sys = one_process_system("omat", 0, 0, 1, z);
    umas_options opt = {"general", "cuda", nullptr};
    umas_context *ctx = umas_context_create(model, &sys, &opt, &err);
    EXPECT_EQ(ctx, nullptr);
    std::string message = err.message;
    bool clear = message.find("no CUDA device") != std::string::npos ||
                 message.find("not available on device 'cuda'") != std::string::npos;
    EXPECT_TRUE(clear) << message;
    umas_context_free(ctx);
    umas_model_free(model);
}

TEST(CudaDevice, UmasFastGpuIsAGpuBackend) {
    umas_error err;
    umas_model *model = umas_model_load(model_path("tiny").c_str(), &err);
    ASSERT_NE(model, nullptr) << err.message;
    int z[1] = {29};
    umas_system sys = one_process_system("omat", 0, 0, 1, z);
    umas_options on_cpu = {"umas_fast_gpu", "cpu", nullptr};
    EXPECT_EQ(umas_context_create(model, &sys, &on_cpu, &err), nullptr);
    std::string message = err.message;
#ifdef UMAS_HAVE_CUDA
    EXPECT_NE(message.find("backend 'umas_fast_gpu' is not available on device 'cpu'"),
              std::string::npos)
        << message;
#else
    EXPECT_NE(message.find("unknown backend 'umas_fast_gpu'"), std::string::npos) << message;
#endif
    umas_model_free(model);
}

TEST(Precision, TensorCoreModesAreForTheGpuAndNamesAreChecked) {
    umas_error err;
    umas_model *model = umas_model_load(model_path("tiny").c_str(), &err);
    ASSERT_NE(model, nullptr) << err.message;
    int z[1] = {29};
    umas_system sys = one_process_system("omat", 0, 0, 1, z);
    umas_options cpu_tf32 = {"general", "cpu", "tf32"};
    EXPECT_EQ(umas_context_create(model, &sys, &cpu_tf32, &err), nullptr);
    EXPECT_NE(std::string(err.message).find("precision 'tf32' is not available on device 'cpu'"),
              std::string::npos)
        << err.message;
    umas_options cpu_fp64 = {"general", "cpu", "fp64"};
    umas_context *ctx = umas_context_create(model, &sys, &cpu_fp64, &err);
    EXPECT_NE(ctx, nullptr) << err.message;
    umas_context_free(ctx);
    if (have_gpu()) {
        umas_options typo = {"umas_fast", "cuda", "fp16"};
        EXPECT_EQ(umas_context_create(model, &sys, &typo, &err), nullptr);
        EXPECT_NE(
            std::string(err.message).find("cuda has default (fp32), fp32, 3xtf32, tf32 and ozaki"),
            std::string::npos)
            << err.message;
    }
    umas_model_free(model);
}

} // namespace
