// test_halo.cpp - the halo exchange (umas_system.refresh_ghosts, sum_into_owners; core/halo.h):
// a system split over processes that each hold their own atoms and a ghost shell of one cutoff,
// the ghosts' features refreshed from their atoms before every block and their adjoints summed
// back into their atoms after that block's backward.
//
// Specification:
//  * a reference case split over 1, 2, 4 and 8 processes (threads here, each with its own
//    context; process p owns the atoms i with i % P == p) gives the one-process energy, forces
//    and virial to 1e-10 relative and fairchem's float64 truth to 1e-8 on the CPU (general and
//    umas_fast; models tiny, tiny121, umas, umas121; molecules and periodic cells, one smaller
//    than the cutoff, where most processes own no atom); on the GPU (when present) the strict
//    fp32 bounds of test_cuda and the one-process result within them. A process's graph is
//    what LAMMPS' mode halo gives it: its atoms as energy nodes, then one ghost node per
//    (atom, periodic image) that sends an edge into them, its own atoms' images included, and
//    only the edges into its atoms;
//  * a context given only one of the two functions is refused with a message.
#include "reference.hpp"

#include <gtest/gtest.h>

#include <condition_variable>
#include <map>
#include <ostream>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

namespace {

bool have_gpu() {
    return umas_cuda_device_count() > 0;
}

// Threads wait here until all of them have arrived (reusable).
class Barrier {
  public:
    explicit Barrier(int size) : size_(size) {}
    void wait() {
        std::unique_lock<std::mutex> lock(mutex_);
        unsigned long generation = generation_;
        if (++arrived_ == size_) {
            arrived_ = 0;
            generation_++;
            released_.notify_all();
        } else {
            released_.wait(lock, [&] { return generation_ != generation; });
        }
    }

  private:
    int size_, arrived_ = 0;
    unsigned long generation_ = 0;
    std::mutex mutex_;
    std::condition_variable released_;
};

struct HaloGroup;

// One process: its nodes' atoms (energy nodes first, then ghosts) and its group.
struct Process {
    HaloGroup *group = nullptr;
    int rank = 0, owned = 0;
    std::vector<int> atom_of;           // [nodes] the atom a node is (or images)
    std::map<int, int> node_of_owned;   // atom -> its energy node here
    std::vector<double> ghost_adjoints; // [ghosts][width], deposited for the owners
    std::vector<double> sums = {};      // for sum_over_processes
};

// What the processes share: every atom's feature row (written by its owner), a barrier, and
// the deposits of the balancing sums.
struct HaloGroup {
    int size, width;
    std::vector<double> atom_rows; // [atoms][width]
    std::vector<Process> processes;
    Barrier barrier;
    HaloGroup(int processes_, int atoms, int width_)
        : size(processes_), width(width_), atom_rows((size_t)atoms * width_), processes(processes_),
          barrier(processes_) {}
};

// umas_system.refresh_ghosts: owners write their atoms' rows, then every ghost reads its atom's.
void refresh_ghosts(double *rows, int nodes, int width, void *data) {
    Process &p = *static_cast<Process *>(data);
    HaloGroup &group = *p.group;
    EXPECT_EQ(width, group.width);
    EXPECT_EQ(nodes, (int)p.atom_of.size());
    for (int n = 0; n < p.owned; n++)
        std::copy(rows + (size_t)n * width, rows + (size_t)(n + 1) * width,
                  group.atom_rows.begin() + (ptrdiff_t)p.atom_of[n] * width);
    group.barrier.wait();
    for (int n = p.owned; n < nodes; n++)
        std::copy(group.atom_rows.begin() + (ptrdiff_t)p.atom_of[n] * width,
                  group.atom_rows.begin() + (ptrdiff_t)(p.atom_of[n] + 1) * width,
                  rows + (size_t)n * width);
    group.barrier.wait();
}

// umas_system.sum_into_owners: every process deposits its ghost rows; each owner adds those of
// its atoms into its rows, in process and node order (the same bits every time).
void sum_into_owners(double *rows, int nodes, int width, void *data) {
    Process &p = *static_cast<Process *>(data);
    HaloGroup &group = *p.group;
    p.ghost_adjoints.assign(rows + (size_t)p.owned * width, rows + (size_t)nodes * width);
    group.barrier.wait();
    for (const Process &q : group.processes)
        for (size_t k = 0; k + q.owned < q.atom_of.size(); k++) {
            auto owner = p.node_of_owned.find(q.atom_of[q.owned + k]);
            if (owner == p.node_of_owned.end())
                continue;
            for (int c = 0; c < width; c++)
                rows[(size_t)owner->second * width + c] += q.ghost_adjoints[k * width + c];
        }
    group.barrier.wait();
}

// umas_system.sum_over_processes: the same deposit-and-sum in rank order.
void sum_over_processes(double *values, int count, void *data) {
    Process &p = *static_cast<Process *>(data);
    HaloGroup &group = *p.group;
    p.sums.assign(values, values + count);
    group.barrier.wait();
    for (int k = 0; k < count; k++) {
        values[k] = 0;
        for (const Process &q : group.processes)
            values[k] += q.sums[k];
    }
    group.barrier.wait();
}

struct Totals {
    double energy = 0;
    std::vector<double> forces; // [atoms][3], ghost forces added to their atoms
    double virial[6] = {0, 0, 0, 0, 0, 0};
    int ghosts = 0; // ghost nodes over all processes
};

// Process p's graph from the structure's edges: the edges into its atoms; a source that is not
// its own atom in the home cell becomes a ghost node, one per (atom, image).
void build_process_graph(const umas_edge_list &edges, int atoms, Process &p, int processes,
                         std::vector<int> &source, std::vector<int> &target,
                         std::vector<double> &vector) {
    for (int i = 0; i < atoms; i++)
        if (i % processes == p.rank) {
            p.node_of_owned[i] = (int)p.atom_of.size();
            p.atom_of.push_back(i);
        }
    p.owned = (int)p.atom_of.size();
    std::map<std::tuple<int, int, int, int>, int> ghost_of;
    for (int e = 0; e < edges.num_edges; e++) {
        int i = edges.target[e], j = edges.source[e];
        if (i % processes != p.rank)
            continue;
        const int *n = edges.cell_shift + 3 * (size_t)e;
        int node;
        if (j % processes == p.rank && n[0] == 0 && n[1] == 0 && n[2] == 0) {
            node = p.node_of_owned[j];
        } else {
            auto key = std::make_tuple(j, n[0], n[1], n[2]);
            auto found = ghost_of.find(key);
            if (found == ghost_of.end()) {
                found = ghost_of.emplace(key, (int)p.atom_of.size()).first;
                p.atom_of.push_back(j);
            }
            node = found->second;
        }
        source.push_back(node);
        target.push_back(p.node_of_owned[i]);
        vector.insert(vector.end(), edges.vector + 3 * (size_t)e, edges.vector + 3 * (size_t)e + 3);
    }
}

Totals halo_evaluation(const std::string &model, const ReferenceCase &c, int processes,
                       const char *backend, const char *device, const char *precision) {
    umas_error err;
    umas_model *m = umas_model_load(model.c_str(), &err);
    if (!m)
        throw std::runtime_error(err.message);
    int width = 9 * umas_model_get_info(m)->sphere_channels;
    umas_model_free(m);
    HaloGroup group(processes, c.num_atoms, width);
    std::vector<std::string> errors(processes);
    std::vector<Totals> parts(processes);
    auto run = [&](int rank) {
        Process &p = group.processes[rank];
        p.group = &group;
        p.rank = rank;
        try {
            Evaluation ev;
            ev.sum_over_processes = sum_over_processes;
            ev.sum_data = &p;
            ev.refresh_ghosts = refresh_ghosts;
            ev.sum_into_owners = sum_into_owners;
            ev.halo_data = &p;
            ev.setup(model, c, backend, device, precision);
            std::vector<int> source, target, z;
            std::vector<double> vector;
            build_process_graph(ev.edges, c.num_atoms, p, processes, source, target, vector);
            for (int atom : p.atom_of)
                z.push_back(c.atomic_numbers[atom]);
            int N = (int)p.atom_of.size();
            umas_graph g = {N,
                            p.owned,
                            z.data(),
                            (int)source.size(),
                            source.data(),
                            target.data(),
                            vector.data()};
            std::vector<double> forces(3 * (size_t)N + 3);
            umas_result r = {};
            r.forces = forces.data();
            r.want_virial = 1;
            if (umas_compute(ev.ctx, &g, &r, &ev.err))
                throw std::runtime_error(ev.err.message);
            Totals &part = parts[rank];
            part.energy = r.energy;
            part.forces.assign(3 * (size_t)c.num_atoms, 0.0);
            for (int n = 0; n < N; n++)
                for (int k = 0; k < 3; k++)
                    part.forces[3 * (size_t)p.atom_of[n] + k] += forces[3 * (size_t)n + k];
            std::copy(r.virial, r.virial + 6, part.virial);
            part.ghosts = N - p.owned;
        } catch (const std::exception &e) {
            errors[rank] = e.what(); // (a failing process leaves the others waiting: see ctest)
        }
    };
    std::vector<std::thread> threads;
    for (int p = 0; p < processes; p++)
        threads.emplace_back(run, p);
    for (std::thread &t : threads)
        t.join();
    Totals total;
    total.forces.assign(3 * (size_t)c.num_atoms, 0.0);
    for (int p = 0; p < processes; p++) {
        if (!errors[p].empty())
            throw std::runtime_error("process " + std::to_string(p) + ": " + errors[p]);
        total.energy += parts[p].energy;
        for (size_t k = 0; k < total.forces.size(); k++)
            total.forces[k] += parts[p].forces[k];
        for (int k = 0; k < 6; k++)
            total.virial[k] += parts[p].virial[k];
        total.ghosts += parts[p].ghosts;
    }
    return total;
}

struct HaloCase {
    std::string model, name, device, backend, precision;
};

void PrintTo(const HaloCase &c, std::ostream *os) {
    *os << c.device << " " << c.backend << " " << c.precision << " " << c.model << "/" << c.name;
}

std::string halo_label(const ::testing::TestParamInfo<HaloCase> &info) {
    std::string label = info.param.device + "_" + info.param.backend + "_" +
                        (info.param.precision.empty() ? "default" : info.param.precision) + "_" +
                        info.param.model + "_" + info.param.name;
    for (char &ch : label)
        if (!isalnum((unsigned char)ch))
            ch = '_';
    return label;
}

class HaloOverProcesses : public ::testing::TestWithParam<HaloCase> {};

TEST_P(HaloOverProcesses, OneTwoFourAndEightProcessesAgreeWithEachOtherAndTheTruth) {
    const HaloCase &hc = GetParam();
    bool gpu = hc.device == "cuda";
    if (gpu && !have_gpu())
        GTEST_SKIP() << "no CUDA device";
    if (!file_exists(model_path(hc.model)))
        GTEST_SKIP() << "model " << model_path(hc.model) << " not converted (optional)";
    ReferenceCase c = load_case(hc.model, hc.name);
    std::vector<double> truth = npy_load(c.file("forces_f64.npy")).values;
    const char *precision = hc.precision.empty() ? nullptr : hc.precision.c_str();
    double force_scale = max_abs(truth);
    Totals one;
    for (int processes : {1, 2, 4, 8}) {
        Totals split = halo_evaluation(model_path(hc.model), c, processes, hc.backend.c_str(),
                                       hc.device.c_str(), precision);
        if (processes == 1)
            one = split;
        double energy = std::fabs(split.energy - one.energy) / std::fabs(one.energy);
        double forces = max_abs_diff(split.forces, one.forces) / force_scale;
        double virial = max_abs_diff(split.virial, one.virial, 6) /
                        std::max(1e-300, max_abs(std::vector<double>(one.virial, one.virial + 6)));
        double truth_energy = std::fabs(split.energy - c.energy);
        double truth_forces = max_abs_diff(split.forces, truth);
        std::printf("[ measured ] %s %s %s/%s on %d processes (%d ghost nodes): vs 1 process "
                    "|dE|/|E| %.2e, max|dF|/max|F| %.2e, virial %.2e; vs fairchem float64 |dE| "
                    "%.2e eV, max|dF| %.2e eV/A\n",
                    hc.device.c_str(), hc.backend.c_str(), hc.model.c_str(), hc.name.c_str(),
                    processes, split.ghosts, energy, forces, virial, truth_energy, truth_forces);
        if (gpu) { // fp32 arithmetic: the strict bounds of test_cuda
            EXPECT_LE(truth_energy, std::max(1e-4, 1e-5 * c.num_atoms));
            EXPECT_LE(truth_forces, 1e-4);
            EXPECT_LE(max_abs_diff(split.forces, one.forces), 1e-4);
        } else {
            EXPECT_LE(energy, 1e-10);
            EXPECT_LE(forces, 1e-10);
            EXPECT_LE(virial, 1e-10);
            EXPECT_LE(truth_energy / std::fabs(c.energy), 1e-8);
            EXPECT_LE(truth_forces / force_scale, 1e-8);
        }
    }
}

std::vector<HaloCase> halo_cases() {
    std::vector<HaloCase> cases;
    const std::vector<std::pair<std::string, std::string>> structures = {
        {"tiny", "c_molecule_q1_s2"},
        {"tiny", "b_triclinic_perovskite_60"},
        {"tiny", "e_si_primitive_2"},
        {"tiny121", "c_molecule_q1_s2"},
        {"tiny121", "b_triclinic_perovskite_60"},
        {"umas", "c_molecule_q0_s1"},
        {"umas", "e_si_primitive_2"},
        {"umas121", "c_molecule_q1_s2"},
        {"umas121", "e_si_primitive_2"}};
    for (const auto &s : structures)
        cases.push_back({s.first, s.second, "cpu", "general", ""});
    cases.push_back({"tiny121", "b_triclinic_perovskite_60", "cpu", "umas_fast", ""});
    cases.push_back({"umas121", "c_molecule_q1_s2", "cpu", "umas_fast", ""});
    for (const auto &s : structures) {
        cases.push_back({s.first, s.second, "cuda", "general", "fp32"});
        cases.push_back({s.first, s.second, "cuda", "umas_fast_gpu", "ozaki"});
    }
    cases.push_back({"umas121", "c_molecule_q1_s2", "cuda", "umas_fast_gpu", "fp32"});
    return cases;
}

INSTANTIATE_TEST_SUITE_P(Models, HaloOverProcesses, ::testing::ValuesIn(halo_cases()), halo_label);

// ---------------------------------------------------------------------------------------------
// What cannot be honoured is refused.
// ---------------------------------------------------------------------------------------------

TEST(Halo, AContextWithOnlyOneOfTheTwoFunctionsIsRefused) {
    ReferenceCase c = load_case("tiny", "c_molecule_q1_s2");
    Evaluation ev;
    ev.refresh_ghosts = refresh_ghosts;
    try {
        ev.setup(model_path("tiny"), c);
        FAIL() << "a halo without sum_into_owners was accepted";
    } catch (const std::runtime_error &e) {
        EXPECT_NE(std::string(e.what()).find("sum_into_owners"), std::string::npos) << e.what();
    }
}

} // namespace
