// test_forces.cpp - forces and stress from the hand-written backward pass (CPU `general`).
//
// Specification:
//  * forces and stress equal fairchem's float64 references on every case to 1e-7 relative
//    (max-abs error over components / max-abs reference component);
//  * forces equal central finite differences of our own energy, and the stress equals the
//    finite-difference strain derivative (1/V) dE/d(eps) of our own energy;
//  * the forces on an isolated molecule sum to zero; an atom without neighbours feels no force;
//  * a pair exactly at the cutoff contributes nothing and its force goes to zero continuously.
#include "reference.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace {

class ReferenceForces : public ::testing::TestWithParam<CaseId> {};

TEST_P(ReferenceForces, ForcesAndStressMatchFairchemFloat64) {
    const CaseId &id = GetParam();
    if (!file_exists(model_path(id.model)))
        GTEST_SKIP() << "model " << model_path(id.model) << " not converted (optional)";
    ReferenceCase c = load_case(id.model, id.name);
    Evaluation ev;
    ev.setup(model_path(id.model), c);
    Evaluation::Output out = ev.compute(c.atomic_numbers, true);

    std::vector<double> reference = npy_load(c.file("forces_f64.npy")).values;
    double force_error = max_abs_diff(out.forces, reference) / max_abs(reference);
    EXPECT_LE(force_error, 1e-7);
    double stress_error = 0;
    if (c.pbc[0]) {
        std::vector<double> stress = stress_from_virial(out.virial, cell_volume(c.cell));
        std::vector<double> ref_stress = npy_load(c.file("stress_f64.npy")).values;
        stress_error = max_abs_diff(stress, ref_stress) / max_abs(ref_stress);
        EXPECT_LE(stress_error, 1e-7);
    }
    std::printf("[ measured ] %s/%s: forces max error %.2e (relative to max |F| %.3f eV/A), "
                "stress %.2e relative\n",
                id.model.c_str(), id.name.c_str(), force_error * max_abs(reference),
                max_abs(reference), stress_error);
}

INSTANTIATE_TEST_SUITE_P(AllCases, ReferenceForces, ::testing::ValuesIn(all_cases()), case_label);

// ---------------------------------------------------------------------------------------------
// Self-consistency: finite differences of our own energy.
// ---------------------------------------------------------------------------------------------

class FiniteDifferences : public ::testing::TestWithParam<std::string> {};

TEST_P(FiniteDifferences, ForcesAreMinusTheEnergyGradient) {
    ReferenceCase c = load_case("tiny", GetParam());
    Evaluation ev;
    ev.setup(model_path("tiny"), c);
    double worst = check_forces_by_finite_differences(ev, c);
    std::printf("[ measured ] tiny/%s: |F - finite difference| <= %.2e eV/A\n", GetParam().c_str(),
                worst);
}

TEST_P(FiniteDifferences, StressIsTheStrainDerivative) {
    ReferenceCase c = load_case("tiny", GetParam());
    if (!c.pbc[0])
        GTEST_SKIP() << "no stress for a molecule";
    Evaluation ev;
    ev.setup(model_path("tiny"), c);
    Evaluation::Output out = ev.compute(c.atomic_numbers, true);
    double V = cell_volume(c.cell);
    std::vector<double> stress = stress_from_virial(out.virial, V);
    // strained structure: r' = r (I + eps), cell' = cell (I + eps), eps symmetric
    auto strained_energy = [&](int a, int b, double amount) {
        double eps[3][3] = {{0, 0, 0}, {0, 0, 0}, {0, 0, 0}};
        eps[a][b] += 0.5 * amount;
        eps[b][a] += 0.5 * amount;
        auto apply = [&](const std::vector<double> &rows) {
            std::vector<double> out_rows(rows.size());
            for (size_t r = 0; r < rows.size() / 3; r++)
                for (int j = 0; j < 3; j++)
                    out_rows[3 * r + j] = rows[3 * r + j] + rows[3 * r] * eps[0][j] +
                                          rows[3 * r + 1] * eps[1][j] + rows[3 * r + 2] * eps[2][j];
            return out_rows;
        };
        ev.rebuild_edges(apply(c.positions), apply(c.cell));
        return ev.energy(c.atomic_numbers, nullptr);
    };
    const double h = 1e-5;
    double worst = 0;
    for (auto [a, b] : {std::pair{0, 0}, {1, 1}, {2, 2}, {1, 2}, {0, 2}, {0, 1}}) {
        double fd = (strained_energy(a, b, h) - strained_energy(a, b, -h)) / (2 * h) / V;
        worst = std::max(worst, std::fabs(fd - stress[3 * a + b]));
        EXPECT_NEAR(fd, stress[3 * a + b], 1e-7 + 1e-6 * max_abs(stress)) << a << b;
    }
    std::printf("[ measured ] tiny/%s: |stress - strain derivative| <= %.2e eV/A^3\n",
                GetParam().c_str(), worst);
}

INSTANTIATE_TEST_SUITE_P(Tiny, FiniteDifferences,
                         ::testing::Values("b_triclinic_perovskite_60", "c_molecule_q1_s2",
                                           "e_si_primitive_2"));

// ---------------------------------------------------------------------------------------------
// Physical checks and edge cases.
// ---------------------------------------------------------------------------------------------

TEST(Forces, SumToZeroOnAnIsolatedMolecule) {
    ReferenceCase c = load_case("tiny", "c_molecule_q0_s1");
    Evaluation ev;
    ev.setup(model_path("tiny"), c);
    std::vector<double> forces = ev.compute(c.atomic_numbers, true).forces;
    for (int k = 0; k < 3; k++) {
        double sum = 0;
        for (int i = 0; i < c.num_atoms; i++)
            sum += forces[3 * i + k];
        EXPECT_NEAR(sum, 0.0, 1e-10 * max_abs(forces));
    }
}

TEST(Forces, AtomWithoutNeighboursFeelsNoForce) {
    ReferenceCase c = load_case("tiny", "d_isolated_atom"); // atom 8: nearest other atom 13.8 A
    Evaluation ev;
    ev.setup(model_path("tiny"), c);
    std::vector<double> forces = ev.compute(c.atomic_numbers, true).forces;
    for (int k = 0; k < 3; k++)
        EXPECT_EQ(forces[3 * 8 + k], 0.0);
}

// Two atoms in a big box at distance d: energy, forces and their continuity at the cutoff.
Evaluation::Output dimer(Evaluation &ev, double d) {
    std::vector<double> positions = {10, 10, 10, 10 + d * 0.6, 10 + d * 0.8, 10};
    ev.rebuild_edges(positions, {30, 0, 0, 0, 30, 0, 0, 0, 30});
    return ev.compute({29, 8}, true);
}

TEST(Forces, PairAtTheCutoffContributesNothingAndForcesAreContinuous) {
    ReferenceCase c = load_case("tiny", "d_isolated_atom");
    Evaluation ev;
    ev.setup(model_path("tiny"), c);
    Evaluation::Output far = dimer(ev, 7.0);
    Evaluation::Output at = dimer(ev, 6.0);
    EXPECT_EQ(ev.edges.num_edges, 2);        // d <= cutoff: the pair is listed ...
    EXPECT_DOUBLE_EQ(at.energy, far.energy); // ... and contributes exactly nothing
    for (double f : at.forces) {
        EXPECT_TRUE(std::isfinite(f));
        EXPECT_EQ(f, 0.0);
    }
    // The envelope is C2 at the cutoff: the force decays like (cutoff - d)^2.
    double previous = max_abs(dimer(ev, 5.99).forces);
    for (double d : {5.999, 5.9999}) {
        double f = max_abs(dimer(ev, d).forces);
        EXPECT_GT(f, 0.0) << d;
        EXPECT_NEAR(f / previous, 0.01, 0.002) << d;
        previous = f;
    }
}

} // namespace
