// test_forward.cpp - the CPU `general` forward pass (float64) reproduces fairchem.
//
// Specification:
//  * the energy of every reference case is fairchem's float64 energy to 1e-8 relative, and every
//    per-atom energy to 1e-8 of the largest per-atom energy;
//  * for the tiny model, the node features after the embedding, the edge-degree embedding, each
//    block and the final norm match fairchem's intermediates (so a mismatch is located), as do
//    the MoLE routing input, the expert coefficients and the merged weights;
//  * the energy does not change when the structure is rotated, translated or its atoms permuted.
#include "intermediates.hpp"
#include "reference.hpp"

extern "C" {
#include "context.h"
}

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>

namespace {

class ReferenceEnergy : public ::testing::TestWithParam<CaseId> {};

TEST_P(ReferenceEnergy, MatchesFairchemFloat64) {
    const CaseId &id = GetParam();
    if (!file_exists(model_path(id.model)))
        GTEST_SKIP() << "model " << model_path(id.model)
                     << " not converted (the umas checkpoint is optional, see tests/README.md)";
    ReferenceCase c = load_case(id.model, id.name);
    Evaluation ev;
    ev.setup(model_path(id.model), c);
    std::vector<double> per_atom;
    double energy = ev.energy(c.atomic_numbers, &per_atom);

    double energy_error = std::fabs(energy - c.energy) / std::fabs(c.energy);
    double per_atom_errors = per_atom_error(per_atom, c);
    std::printf("[ measured ] %s/%s: E = %.10f eV (fairchem %.10f), relative error %.2e, "
                "per-atom %.2e, %d edges\n",
                id.model.c_str(), id.name.c_str(), energy, c.energy, energy_error, per_atom_errors,
                ev.edges.num_edges);
    EXPECT_LE(energy_error, 1e-8);
    EXPECT_LE(per_atom_errors, 1e-8);
}

INSTANTIATE_TEST_SUITE_P(AllCases, ReferenceEnergy, ::testing::ValuesIn(all_cases()), case_label);

// Node features after each stage against fairchem's intermediates (tiny model, cases a-e).
class TinyIntermediates : public ::testing::TestWithParam<std::string> {};

TEST_P(TinyIntermediates, NodeFeaturesAfterEveryStage) {
    ReferenceCase c = load_case("tiny", GetParam());
    Evaluation ev;
    ev.setup(model_path("tiny"), c);
    std::vector<std::string> stages = intermediate_stages(ev.ctx->weights.num_layers);
    std::vector<double> errors = intermediate_errors(ev, c, "tiny/" + GetParam());
    for (size_t s = 0; s < errors.size(); s++)
        EXPECT_LE(errors[s], 1e-10) << "first mismatch at stage " << stages[s];
}

TEST_P(TinyIntermediates, MoleRoutingAndCoefficients) {
    ReferenceCase c = load_case("tiny", GetParam());
    Evaluation ev;
    ev.setup(model_path("tiny"), c);
    int C = ev.ctx->weights.C, K = umas_model_get_info(ev.model)->num_experts;
    NpyArray csd = npy_load(c.file("intermediates/mole_csd_mixed_emb.npy"));
    NpyArray input = npy_load(c.file("intermediates/mole_routing_mlp_input.npy"));
    NpyArray coef = npy_load(c.file("intermediates/mole_expert_mixing_coefficients.npy"));
    ASSERT_EQ(csd.size(), (size_t)C);
    ASSERT_EQ(input.size(), (size_t)2 * C);
    ASSERT_EQ(coef.size(), (size_t)K);
    EXPECT_LE(max_abs_diff(ev.ctx->weights.system_embedding, csd.values.data(), C), 1e-13);
    EXPECT_LE(max_abs_diff(ev.ctx->routing_input, input.values.data(), 2 * C), 1e-13);
    EXPECT_LE(max_abs_diff(umas_context_expert_coefficients(ev.ctx), coef.values.data(), K), 1e-13);
}

INSTANTIATE_TEST_SUITE_P(Tiny, TinyIntermediates,
                         ::testing::Values("a_cu_fcc_108", "b_triclinic_perovskite_60",
                                           "c_molecule_q0_s1", "c_molecule_q1_s2",
                                           "d_isolated_atom", "e_si_primitive_2"));

TEST(MoleMerge, MergedWeightsOfBlock0AndHeadMatchFairchem) {
    ReferenceCase c = load_case("tiny", "a_cu_fcc_108");
    Evaluation ev;
    ev.setup(model_path("tiny"), c);
    const umas_weights &w = ev.ctx->weights;
    const umas_block_weights &b = w.blocks[0];
    struct Expected {
        const char *file;
        const umas_linear *linear;
    } expected[] = {
        {"backbone.blocks.0.edge_wise.so2_conv_1.fc_m0", &b.conv1_m0},
        {"backbone.blocks.0.edge_wise.so2_conv_1.so2_m_conv.0.fc", &b.conv1_m1},
        {"backbone.blocks.0.edge_wise.so2_conv_1.so2_m_conv.1.fc", &b.conv1_m2},
        {"backbone.blocks.0.edge_wise.so2_conv_2.fc_m0", &b.conv2_m0},
        {"backbone.blocks.0.edge_wise.so2_conv_2.so2_m_conv.0.fc", &b.conv2_m1},
        {"backbone.blocks.0.edge_wise.so2_conv_2.so2_m_conv.1.fc", &b.conv2_m2},
        {"output_heads.energyandforcehead.head.energy_block.0", &w.head[0]},
        {"output_heads.energyandforcehead.head.energy_block.2", &w.head[1]},
        {"output_heads.energyandforcehead.head.energy_block.4", &w.head[2]},
    };
    for (const Expected &e : expected) {
        NpyArray ref =
            npy_load(c.file(std::string("intermediates/merged_weights/") + e.file + ".weight.npy"));
        ASSERT_EQ(ref.size(), (size_t)e.linear->out * e.linear->in) << e.file;
        EXPECT_LE(max_abs_diff(e.linear->weight, ref.values.data(), ref.size()), 1e-14) << e.file;
    }
}

// ---------------------------------------------------------------------------------------------
// Invariances: rotation, translation, permutation.
// ---------------------------------------------------------------------------------------------

// A random proper rotation (QR of a Gaussian matrix via Gram-Schmidt).
void random_rotation(std::mt19937 &rng, double Q[3][3]) {
    std::normal_distribution<double> normal;
    double a[3][3];
    for (auto &row : a)
        for (double &x : row)
            x = normal(rng);
    for (int i = 0; i < 3; i++) {
        for (int j = 0; j < i; j++) {
            double dot = a[i][0] * a[j][0] + a[i][1] * a[j][1] + a[i][2] * a[j][2];
            for (int k = 0; k < 3; k++)
                a[i][k] -= dot * a[j][k];
        }
        double n = std::sqrt(a[i][0] * a[i][0] + a[i][1] * a[i][1] + a[i][2] * a[i][2]);
        for (int k = 0; k < 3; k++)
            a[i][k] /= n;
    }
    double det = a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) -
                 a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0]) +
                 a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]);
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < 3; k++)
            Q[i][k] = (det < 0 && i == 2) ? -a[i][k] : a[i][k];
}

std::vector<double> rotate_rows(const std::vector<double> &rows, const double Q[3][3]) {
    std::vector<double> out(rows.size());
    for (size_t r = 0; r < rows.size() / 3; r++)
        for (int i = 0; i < 3; i++)
            out[3 * r + i] =
                Q[i][0] * rows[3 * r] + Q[i][1] * rows[3 * r + 1] + Q[i][2] * rows[3 * r + 2];
    return out;
}

class Invariance : public ::testing::TestWithParam<std::string> {};

TEST_P(Invariance, RotationTranslationPermutation) {
    ReferenceCase c = load_case("tiny", GetParam());
    Evaluation ev;
    ev.setup(model_path("tiny"), c);
    double e0 = ev.energy(c.atomic_numbers, nullptr);
    std::mt19937 rng(7);

    double Q[3][3];
    random_rotation(rng, Q);
    ev.rebuild_edges(rotate_rows(c.positions, Q), rotate_rows(c.cell, Q));
    double rotated = ev.energy(c.atomic_numbers, nullptr);
    EXPECT_LE(std::fabs(rotated - e0), 1e-10 * std::fabs(e0)) << "rotation";

    std::vector<double> moved = c.positions;
    for (size_t i = 0; i < moved.size(); i++)
        moved[i] += (i % 3 == 0) ? 1.234 : (i % 3 == 1) ? -0.56 : 7.8;
    ev.rebuild_edges(moved, c.cell);
    double translated = ev.energy(c.atomic_numbers, nullptr);
    EXPECT_LE(std::fabs(translated - e0), 1e-10 * std::fabs(e0)) << "translation";

    std::vector<int> order(c.num_atoms);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<double> permuted(c.positions.size());
    std::vector<int> permuted_z(c.num_atoms);
    for (int i = 0; i < c.num_atoms; i++) {
        permuted_z[i] = c.atomic_numbers[order[i]];
        for (int k = 0; k < 3; k++)
            permuted[3 * i + k] = c.positions[3 * order[i] + k];
    }
    ev.rebuild_edges(permuted, c.cell);
    std::vector<double> per_atom;
    double permuted_energy = ev.energy(permuted_z, &per_atom);
    EXPECT_LE(std::fabs(permuted_energy - e0), 1e-10 * std::fabs(e0)) << "permutation";
    for (int i = 0; i < c.num_atoms; i++)
        EXPECT_NEAR(per_atom[i], c.per_atom_energy[order[i]], 1e-8) << "atom " << order[i];
}

INSTANTIATE_TEST_SUITE_P(Tiny, Invariance,
                         ::testing::Values("b_triclinic_perovskite_60", "c_molecule_q1_s2"));

} // namespace
