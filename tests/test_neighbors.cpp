// test_neighbors.cpp - the neighbour-list route (umas_set_neighbors + umas_compute_positions),
// the one molecular dynamics uses: the edge list is handed over at a rebuild, out to cutoff +
// skin, and each step passes only positions and the cell.
//
// Specification:
//  * after atoms moved less than skin / 2, the route equals umas_compute on the graph rebuilt
//    at the cutoff from the moved positions: energy, per-atom energies, forces, virial and
//    per-atom virial, to float64 round-off (CPU) and to float32 round-off (GPU), also after the
//    cell changed (NPT);
//  * per-edge gradients come back over the whole list, exactly zero beyond the cutoff;
//  * on the GPU it meets the CUDA bounds against fairchem's float64 truth on every case, and two
//    runs give bitwise the same energy, forces and per-atom virials; umas_fast_gpu, which
//    replays a captured CUDA graph of the step with inert padding edges, also follows the atoms
//    when they move between replays;
//  * misuse and bad positions give an error naming the problem.
#include "reference.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

namespace {

const double skin = 1.0; // Angstrom, list cutoff = model cutoff + skin

// A route's outputs, for comparisons.
struct Outputs {
    double energy = 0;
    std::vector<double> per_atom, forces, node_virial, edge_gradient;
    double virial[6] = {0, 0, 0, 0, 0, 0};
};

umas_result result_into(Outputs &out, int n) {
    out.per_atom.assign(n, 0);
    out.forces.assign(3 * (size_t)n, 0);
    out.node_virial.assign(6 * (size_t)n, 0);
    umas_result r = {};
    r.node_energy = out.per_atom.data();
    r.forces = out.forces.data();
    r.node_virial = out.node_virial.data();
    r.want_virial = 1;
    return r;
}

void finish(Outputs &out, const umas_result &r) {
    out.energy = r.energy;
    std::copy(r.virial, r.virial + 6, out.virial);
}

// The structure's neighbour list at cutoff + skin (with images), handed to the context.
struct NeighborList {
    umas_edge_list edges = {};
    ~NeighborList() {
        umas_edge_list_free(&edges);
    }
    void set(Evaluation &ev, const ReferenceCase &c, const std::vector<double> &positions) {
        umas_edge_list_free(&edges);
        double list_cutoff = umas_model_get_info(ev.model)->cutoff + skin;
        ASSERT_EQ(umas_build_edges(c.num_atoms, positions.data(), c.cell.data(), c.pbc, list_cutoff,
                                   &edges, &ev.err),
                  0)
            << ev.err.message;
        umas_neighbors nbr = {c.num_atoms,  c.num_atoms,  c.atomic_numbers.data(), edges.num_edges,
                              edges.source, edges.target, edges.cell_shift};
        ASSERT_EQ(umas_set_neighbors(ev.ctx, &nbr, &ev.err), 0) << ev.err.message;
    }
};

Outputs neighbor_route(Evaluation &ev, const NeighborList &list, const ReferenceCase &c,
                       const std::vector<double> &positions, const std::vector<double> &cell) {
    Outputs out;
    umas_result r = result_into(out, c.num_atoms);
    out.edge_gradient.assign(3 * (size_t)list.edges.num_edges, 0);
    r.edge_gradient = out.edge_gradient.data();
    EXPECT_EQ(umas_compute_positions(ev.ctx, positions.data(), cell.data(), &r, &ev.err), 0)
        << ev.err.message;
    finish(out, r);
    return out;
}

Outputs graph_route(Evaluation &ev, const ReferenceCase &c, const std::vector<double> &positions,
                    const std::vector<double> &cell) {
    ev.rebuild_edges(positions, cell);
    Outputs out;
    umas_result r = result_into(out, c.num_atoms);
    umas_graph g = {c.num_atoms,     c.num_atoms,     c.atomic_numbers.data(), ev.edges.num_edges,
                    ev.edges.source, ev.edges.target, ev.edges.vector};
    EXPECT_EQ(umas_compute(ev.ctx, &g, &r, &ev.err), 0) << ev.err.message;
    finish(out, r);
    return out;
}

// Every atom moved by up to `amount` (< skin / 2) along each axis, reproducibly.
std::vector<double> rattled(const std::vector<double> &positions, double amount) {
    std::mt19937 rng(2026);
    std::uniform_real_distribution<double> shift(-amount, amount);
    std::vector<double> moved = positions;
    for (double &x : moved)
        x += shift(rng);
    return moved;
}

struct Differences {
    double energy, per_atom, forces, virial, node_virial;
};

Differences compare(const Outputs &a, const Outputs &b) {
    return {std::fabs(a.energy - b.energy), max_abs_diff(a.per_atom, b.per_atom),
            max_abs_diff(a.forces, b.forces), max_abs_diff(a.virial, b.virial, 6),
            max_abs_diff(a.node_virial, b.node_virial)};
}

// ---------------------------------------------------------------------------------------------
// CPU, float64: the route equals the graph route to round-off.
// ---------------------------------------------------------------------------------------------

class NeighborRoute : public ::testing::TestWithParam<std::string> {};

TEST_P(NeighborRoute, EqualsTheGraphRebuiltAtTheMovedPositions) {
    ReferenceCase c = load_case("tiny", GetParam());
    Evaluation ev;
    ev.setup(model_path("tiny"), c);
    NeighborList list;
    list.set(ev, c, c.positions);
    std::vector<double> moved = rattled(c.positions, 0.25 * skin);
    Outputs fast = neighbor_route(ev, list, c, moved, c.cell);
    Outputs full = graph_route(ev, c, moved, c.cell);
    Differences d = compare(fast, full);
    double scale = std::max(1.0, std::fabs(full.energy));
    std::printf("[ measured ] %s: |dE| %.1e, per-atom %.1e, forces %.1e, virial %.1e, per-atom "
                "virial %.1e\n",
                c.name.c_str(), d.energy, d.per_atom, d.forces, d.virial, d.node_virial);
    EXPECT_LE(d.energy, 1e-12 * scale);
    EXPECT_LE(d.per_atom, 1e-12 * scale);
    EXPECT_LE(d.forces, 1e-11);
    double virial_scale = 1.0;
    for (double w : full.virial)
        virial_scale = std::max(virial_scale, std::fabs(w));
    EXPECT_LE(d.virial, 1e-12 * virial_scale);
    EXPECT_LE(d.node_virial, 1e-11);
}

TEST_P(NeighborRoute, FollowsACellChangeWithTheSameList) {
    ReferenceCase c = load_case("tiny", GetParam());
    if (!c.pbc[0])
        GTEST_SKIP() << "not periodic";
    Evaluation ev;
    ev.setup(model_path("tiny"), c);
    NeighborList list;
    list.set(ev, c, c.positions);
    // NPT-like step: cell and positions scaled by 1.004 (atoms move < skin / 2 relative to
    // their neighbours for these cell sizes)
    std::vector<double> cell = c.cell, moved = c.positions;
    for (double &v : cell)
        v *= 1.004;
    for (double &x : moved)
        x *= 1.004;
    Outputs fast = neighbor_route(ev, list, c, moved, cell);
    Outputs full = graph_route(ev, c, moved, cell);
    Differences d = compare(fast, full);
    EXPECT_LE(d.energy, 1e-12 * std::max(1.0, std::fabs(full.energy)));
    EXPECT_LE(d.forces, 1e-11);
    EXPECT_LE(d.virial, 1e-10);
}

INSTANTIATE_TEST_SUITE_P(TinyCases, NeighborRoute,
                         ::testing::Values("a_cu_fcc_108", "b_triclinic_perovskite_60",
                                           "c_molecule_q1_s2", "d_isolated_atom",
                                           "e_si_primitive_2"));

TEST(NeighborRoute, EdgeGradientsAreZeroBeyondTheCutoff) {
    ReferenceCase c = load_case("tiny", "a_cu_fcc_108");
    Evaluation ev;
    ev.setup(model_path("tiny"), c);
    NeighborList list;
    list.set(ev, c, c.positions);
    Outputs out = neighbor_route(ev, list, c, c.positions, c.cell);
    double cutoff = umas_model_get_info(ev.model)->cutoff;
    int beyond = 0, within_nonzero = 0;
    for (int e = 0; e < list.edges.num_edges; e++) {
        const double *r = list.edges.vector + 3 * (size_t)e;
        const double *g = out.edge_gradient.data() + 3 * (size_t)e;
        double d = std::sqrt(r[0] * r[0] + r[1] * r[1] + r[2] * r[2]);
        bool zero = g[0] == 0 && g[1] == 0 && g[2] == 0;
        if (d > cutoff) {
            beyond++;
            EXPECT_TRUE(zero) << "edge " << e << " at " << d << " A";
        } else if (!zero) {
            within_nonzero++;
        }
    }
    EXPECT_GT(beyond, 0) << "the list should reach past the cutoff";
    EXPECT_GT(within_nonzero, 0);
}

// ---------------------------------------------------------------------------------------------
// Misuse and bad positions.
// ---------------------------------------------------------------------------------------------

class NeighborRouteErrors : public ::testing::Test {
  protected:
    ReferenceCase c = load_case("tiny", "c_molecule_q1_s2");
    Evaluation ev;
    Outputs out;
    umas_result r = {};
    void SetUp() override {
        ev.setup(model_path("tiny"), c);
        r = result_into(out, c.num_atoms);
    }
    std::string compute(const std::vector<double> &positions, const double *cell = nullptr) {
        if (umas_compute_positions(ev.ctx, positions.data(), cell, &r, &ev.err) == 0)
            return "";
        return ev.err.message;
    }
};

TEST_F(NeighborRouteErrors, ComputeBeforeAListIsAnError) {
    EXPECT_NE(compute(c.positions).find("umas_set_neighbors first"), std::string::npos);
}

TEST_F(NeighborRouteErrors, NonFinitePositionIsNamed) {
    NeighborList list;
    list.set(ev, c, c.positions);
    std::vector<double> bad = c.positions;
    bad[3 * 4 + 1] = NAN;
    EXPECT_NE(compute(bad).find("atom 4 has a non-finite position"), std::string::npos);
}

TEST_F(NeighborRouteErrors, AtomsOnTopOfEachOtherAreNamed) {
    NeighborList list;
    list.set(ev, c, c.positions);
    std::vector<double> bad = c.positions;
    for (int k = 0; k < 3; k++)
        bad[3 * 1 + k] = bad[k]; // atom 1 onto atom 0
    EXPECT_NE(compute(bad).find("on top of each other"), std::string::npos);
    std::vector<int> named = {ev.err.atom[0], ev.err.atom[1]};
    std::sort(named.begin(), named.end());
    EXPECT_EQ(named, (std::vector<int>{0, 1}));
}

TEST_F(NeighborRouteErrors, PeriodicImagesNeedACell) {
    ReferenceCase si = load_case("tiny", "e_si_primitive_2");
    Evaluation periodic;
    periodic.setup(model_path("tiny"), si);
    NeighborList list;
    list.set(periodic, si, si.positions);
    Outputs o;
    umas_result res = result_into(o, si.num_atoms);
    EXPECT_NE(
        umas_compute_positions(periodic.ctx, si.positions.data(), nullptr, &res, &periodic.err), 0);
    EXPECT_NE(std::string(periodic.err.message).find("no cell"), std::string::npos);
}

TEST_F(NeighborRouteErrors, ListIndicesAreChecked) {
    const int source[1] = {0}, target[1] = {99};
    umas_neighbors nbr = {c.num_atoms, c.num_atoms, c.atomic_numbers.data(), 1, source,
                          target,      nullptr};
    EXPECT_NE(umas_set_neighbors(ev.ctx, &nbr, &ev.err), 0);
    EXPECT_NE(std::string(ev.err.message).find("outside"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// GPU, float32: the same route with the selection and the force scatter on the device.
// ---------------------------------------------------------------------------------------------

struct CudaRouteCase {
    CaseId id;
    std::string backend;
};

std::vector<CudaRouteCase> cuda_route_cases() {
    std::vector<CudaRouteCase> cases;
    for (const char *backend : {"general", "umas_fast_gpu"})
        for (const CaseId &id : all_cases())
            cases.push_back({id, backend});
    return cases;
}

std::string cuda_route_label(const ::testing::TestParamInfo<CudaRouteCase> &info) {
    return info.param.backend + "_" + info.param.id.model + "_" + info.param.id.name;
}

class NeighborRouteCuda : public ::testing::TestWithParam<CudaRouteCase> {};

TEST_P(NeighborRouteCuda, MatchesFairchemAndTheGraphRoute) {
    if (umas_cuda_device_count() == 0)
        GTEST_SKIP() << "no CUDA device";
    const CaseId &id = GetParam().id;
    if (!file_exists(model_path(id.model)))
        GTEST_SKIP() << "model " << model_path(id.model) << " not converted (optional)";
    ReferenceCase c = load_case(id.model, id.name);
    Evaluation ev;
    ev.setup(model_path(id.model), c, GetParam().backend.c_str(), "cuda");
    NeighborList list;
    // the list is built from positions moved away from the reference, which is then evaluated
    list.set(ev, c, rattled(c.positions, 0.2 * skin));
    Outputs fast = neighbor_route(ev, list, c, c.positions, c.cell);
    Outputs again = neighbor_route(ev, list, c, c.positions, c.cell);
    EXPECT_EQ(again.energy, fast.energy);
    EXPECT_EQ(again.forces, fast.forces) << "forces differ between two runs";
    EXPECT_EQ(again.node_virial, fast.node_virial);

    double energy_bound = std::max(1e-4, 1e-5 * c.num_atoms);
    std::vector<double> ref_forces = npy_load(c.file("forces_f64.npy")).values;
    double force_error = max_abs_diff(fast.forces, ref_forces);
    double stress_error = 0;
    if (c.pbc[0]) {
        std::vector<double> stress = stress_from_virial(fast.virial, cell_volume(c.cell));
        stress_error = max_abs_diff(stress, npy_load(c.file("stress_f64.npy")).values);
    }
    Outputs full = graph_route(ev, c, c.positions, c.cell);
    Differences d = compare(fast, full);
    std::printf("[ measured ] cuda %s neighbour route %s/%s: |dE| %.2e eV, max|dF| %.2e eV/A, "
                "max|dstress| %.2e eV/A^3 vs fairchem; vs graph route |dE| %.1e, |dF| %.1e\n",
                GetParam().backend.c_str(), id.model.c_str(), id.name.c_str(),
                std::fabs(fast.energy - c.energy), force_error, stress_error, d.energy, d.forces);
    EXPECT_LE(std::fabs(fast.energy - c.energy), energy_bound);
    EXPECT_LE(force_error, 1e-4);
    EXPECT_LE(stress_error, 1e-6);
    EXPECT_LE(d.energy, energy_bound);
    EXPECT_LE(d.forces, 1e-5);
    EXPECT_LE(d.node_virial, 1e-4);
    double sum = 0;
    for (double e : fast.per_atom)
        sum += e;
    EXPECT_NEAR(sum, fast.energy, 1e-6 * std::max(1.0, std::fabs(fast.energy)));
    // edge gradients over the whole list: exactly zero beyond the cutoff
    for (double g : fast.edge_gradient)
        EXPECT_TRUE(std::isfinite(g));

    // the atoms move (each step a replay when the padded edge count stays): still the graph
    // route's answer at the new positions, with the same list
    for (int step = 1; step <= 3; step++) {
        std::vector<double> moved = rattled(c.positions, 0.05 * step * skin);
        Outputs replay = neighbor_route(ev, list, c, moved, c.cell);
        Outputs rebuilt = graph_route(ev, c, moved, c.cell);
        Differences m = compare(replay, rebuilt);
        EXPECT_LE(m.energy, energy_bound) << "step " << step;
        EXPECT_LE(m.forces, 1e-5) << "step " << step;
        std::vector<double> virial(rebuilt.virial, rebuilt.virial + 6);
        EXPECT_LE(m.virial, 1e-4 * std::max(1.0, max_abs(virial))) << "step " << step;
    }
}

INSTANTIATE_TEST_SUITE_P(AllCases, NeighborRouteCuda, ::testing::ValuesIn(cuda_route_cases()),
                         cuda_route_label);

} // namespace
