// test_balance.cpp - charge/spin balanced channels (model-spec section 8, UMA-S 1.2) and the
// system-wide sums of a system shared by several processes (umas_system.sum_over_processes).
//
// Specification:
//  * after every block of the tiny121 model (charge-balanced channels 0-2) the l = 0 sums of
//    those channels equal the charge; with a hand-made model that also balances channels 3-4 to
//    the spin, those sum to spin - 1; the forces of such a model are minus the gradient of its
//    energy (finite differences), so the balancing's backward is right;
//  * a system split over 1, 2, 4 and 8 processes (threads here, each with its own context and a
//    graph of its atoms as energy nodes plus every other atom as a ghost node, the sums going
//    through a barrier) gives the one-process energy, forces and virial to 1e-10 relative on the
//    CPU and fairchem's float64 truth to 1e-8; on the GPU (when present) the strict fp32 bounds;
//  * what cannot be honoured stops with a message: energy nodes that do not cover the system
//    once, a channel balanced twice.
#include "reference.hpp"

extern "C" {
#include "context.h"
}

#include <cjson/cJSON.h>
#include <gtest/gtest.h>

#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

namespace {

bool have_gpu() {
    return umas_cuda_device_count() > 0;
}

// A copy of a converted model with its backbone metadata edited (a hand-made model variant).
std::string model_variant(const std::string &source, const std::string &name,
                          const std::function<void(cJSON *backbone)> &edit) {
    std::string bytes = read_text(source);
    uint64_t header_size = 0;
    std::memcpy(&header_size, bytes.data(), 8);
    cJSON *header = cJSON_Parse(bytes.substr(8, header_size).c_str());
    cJSON *metadata = cJSON_GetObjectItem(header, "__metadata__");
    cJSON *umas = cJSON_Parse(cJSON_GetObjectItem(metadata, "umas")->valuestring);
    edit(cJSON_GetObjectItem(umas, "backbone"));
    char *umas_text = cJSON_PrintUnformatted(umas);
    cJSON_ReplaceItemInObject(metadata, "umas", cJSON_CreateString(umas_text));
    char *header_text = cJSON_PrintUnformatted(header);
    std::string new_header = header_text;
    while (new_header.size() % 8) // tensors stay aligned as in the original
        new_header += ' ';
    uint64_t new_size = new_header.size();
    std::string path = test_models_dir() + "/" + name + ".safetensors";
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char *>(&new_size), 8);
    out << new_header << bytes.substr(8 + header_size);
    std::free(umas_text);
    std::free(header_text);
    cJSON_Delete(umas);
    cJSON_Delete(header);
    return path;
}

void set_channels(cJSON *backbone, const char *key, std::vector<int> channels) {
    cJSON_DeleteItemFromObject(backbone, key);
    cJSON_AddItemToObject(backbone, key,
                          cJSON_CreateIntArray(channels.data(), (int)channels.size()));
}

// tiny121 with channels 3 and 4 balanced to the spin as well (no released model does this).
std::string spin_balanced_model() {
    return model_variant(model_path("tiny121"), "tiny121_spin_balanced", [](cJSON *backbone) {
        set_channels(backbone, "spin_balanced_channels", {3, 4});
    });
}

// l = 0 sum of channel c after each block, from a context's trace [L + 3][N][9][C].
std::vector<double> block_sums(Evaluation &ev, const ReferenceCase &c, int channel) {
    ev.ctx->keep_trace = 1;
    ev.compute(c.atomic_numbers, false);
    const umas_weights &w = ev.ctx->weights;
    size_t stage = (size_t)ev.ctx->trace_nodes * 9 * w.C;
    std::vector<double> sums;
    for (int l = 0; l < w.num_layers; l++) {
        double sum = 0;
        for (int n = 0; n < ev.ctx->trace_nodes; n++)
            sum += ev.ctx->trace[(2 + l) * stage + (size_t)n * 9 * w.C + channel];
        sums.push_back(sum);
    }
    ev.ctx->keep_trace = 0;
    return sums;
}

TEST(BalancedChannels, ChargeChannelsSumToTheChargeAfterEveryBlock) {
    for (const char *name : {"c_molecule_q1_s2", "a_cu_fcc_108"}) {
        ReferenceCase c = load_case("tiny121", name);
        Evaluation ev;
        ev.setup(model_path("tiny121"), c);
        ASSERT_EQ(umas_model_get_info(ev.model)->num_charge_balanced, 3);
        for (int channel = 0; channel < 4; channel++) {
            std::vector<double> sums = block_sums(ev, c, channel);
            for (size_t l = 0; l < sums.size(); l++)
                if (channel < 3)
                    EXPECT_NEAR(sums[l], c.charge, 1e-10) << name << " block " << l;
                else // not balanced: anything but the charge
                    EXPECT_GT(std::fabs(sums[l] - c.charge), 1e-3) << name << " block " << l;
        }
    }
}

TEST(BalancedChannels, SpinChannelsOfAHandMadeModelSumToSpinMinusOne) {
    std::string path = spin_balanced_model();
    ReferenceCase c = load_case("tiny121", "c_molecule_q1_s2"); // charge 1, spin multiplicity 2
    Evaluation ev;
    ev.setup(path, c);
    EXPECT_EQ(umas_model_get_info(ev.model)->num_spin_balanced, 2);
    for (int channel : {0, 3, 4}) {
        double target = channel < 3 ? c.charge : c.spin - 1.0;
        for (double sum : block_sums(ev, c, channel))
            EXPECT_NEAR(sum, target, 1e-10) << "channel " << channel;
    }
}

TEST(BalancedChannels, ForcesOfAChargeAndSpinBalancedModelAreMinusTheEnergyGradient) {
    std::string path = spin_balanced_model();
    for (const char *name : {"c_molecule_q1_s2", "b_triclinic_perovskite_60"}) {
        ReferenceCase c = load_case("tiny121", name);
        Evaluation ev;
        ev.setup(path, c);
        double worst = check_forces_by_finite_differences(ev, c);
        std::printf("[ measured ] tiny121 + spin channels, %s: |F - finite difference| <= %.2e "
                    "eV/A\n",
                    name, worst);
    }
}

// The hand-made charge- and spin-balanced model on the GPU against the CPU's float64 (the exact
// function of that model: no fairchem truth exists for it), every backend and the tensor-core
// precisions: the strict bounds, and the same bits twice.
class SpinBalancedOnTheGpu : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {
};

TEST_P(SpinBalancedOnTheGpu, MatchesTheCpuWithinTheStrictBoundsAndRepeatsBitwise) {
    if (!have_gpu())
        GTEST_SKIP() << "no CUDA device";
    const std::string &backend = std::get<0>(GetParam()), &precision = std::get<1>(GetParam());
    std::string path = spin_balanced_model();
    for (const char *name : {"c_molecule_q1_s2", "b_triclinic_perovskite_60"}) {
        ReferenceCase c = load_case("tiny121", name);
        Evaluation cpu, gpu;
        cpu.setup(path, c);
        gpu.setup(path, c, backend.c_str(), "cuda", precision.c_str());
        Evaluation::Output exact = cpu.compute(c.atomic_numbers, true);
        Evaluation::Output out = gpu.compute(c.atomic_numbers, true);
        Evaluation::Output again = gpu.compute(c.atomic_numbers, true);
        double energy = std::fabs(out.energy - exact.energy);
        double forces = max_abs_diff(out.forces, exact.forces);
        double virial = max_abs_diff(out.virial, exact.virial, 6) / cell_volume(c.cell);
        std::printf("[ measured ] cuda %s %s, tiny121 + spin channels, %s: |dE| %.2e eV, "
                    "max|dF| %.2e eV/A, max|dW|/V %.2e eV/A^3 against the CPU\n",
                    backend.c_str(), precision.c_str(), name, energy, forces, virial);
        EXPECT_LE(energy, std::max(1e-4, 1e-5 * c.num_atoms));
        EXPECT_LE(forces, 1e-4);
        if (c.pbc[0]) {
            EXPECT_LE(virial, 1e-6);
        }
        EXPECT_EQ(again.energy, out.energy);
        EXPECT_EQ(again.forces, out.forces);
    }
}

INSTANTIATE_TEST_SUITE_P(Backends, SpinBalancedOnTheGpu,
                         ::testing::Values(std::make_tuple("general", "fp32"),
                                           std::make_tuple("umas_fast", "fp32"),
                                           std::make_tuple("umas_fast_gpu", "fp32"),
                                           std::make_tuple("umas_fast_gpu", "3xtf32"),
                                           std::make_tuple("umas_fast_gpu", "ozaki")));

// ---------------------------------------------------------------------------------------------
// One system over several processes: threads, each with its own context.
// ---------------------------------------------------------------------------------------------

// umas_system.sum_over_processes for threads: every thread deposits its values, the last to
// arrive sums them in rank order (the same bits every time), everyone takes the sums.
struct ThreadSum {
    int size;
    std::mutex mutex;
    std::condition_variable done;
    int arrived = 0;
    unsigned long round = 0;
    std::vector<std::vector<double>> deposited;
    std::vector<double> total;

    explicit ThreadSum(int processes) : size(processes), deposited(processes) {}

    void sum(int rank, double *values, int count) {
        std::unique_lock<std::mutex> lock(mutex);
        deposited[rank].assign(values, values + count);
        unsigned long my_round = round;
        if (++arrived == size) {
            total.assign(count, 0.0);
            for (int r = 0; r < size; r++)
                for (int k = 0; k < count; k++)
                    total[k] += deposited[r][k];
            arrived = 0;
            round++;
            done.notify_all();
        } else {
            done.wait(lock, [&] { return round != my_round; });
        }
        std::copy(total.begin(), total.end(), values);
    }
};

struct Process {
    ThreadSum *group;
    int rank;
};

void sum_over_threads(double *values, int count, void *data) {
    Process *p = static_cast<Process *>(data);
    p->group->sum(p->rank, values, count);
}

struct Totals {
    double energy = 0;
    std::vector<double> forces; // [N][3], summed over processes
    double virial[6] = {0, 0, 0, 0, 0, 0};
};

// The case on `processes` threads: process p owns the atoms i with i % processes == p (its
// energy nodes, first), every other atom is a ghost node of it; each process has every edge.
// Forces, energies and virials add up over the processes (ghost forces to their atoms).
Totals split_evaluation(const std::string &model, const ReferenceCase &c, int processes,
                        const char *backend, const char *device, const char *precision) {
    ThreadSum group(processes);
    std::vector<Process> ranks(processes);
    std::vector<Evaluation> evaluations(processes);
    std::vector<std::string> errors(processes);
    std::vector<Totals> parts(processes);
    auto run = [&](int p) {
        try {
            Evaluation &ev = evaluations[p];
            ranks[p] = {&group, p};
            if (processes > 1) {
                ev.sum_over_processes = sum_over_threads;
                ev.sum_data = &ranks[p];
            }
            ev.setup(model, c, backend, device, precision);
            std::vector<int> node_of(c.num_atoms), atom_of;
            int owned = 0;
            for (int pass = 0; pass < 2; pass++) // owned atoms first, then the ghosts
                for (int i = 0; i < c.num_atoms; i++)
                    if ((i % processes == p) == (pass == 0)) {
                        node_of[i] = (int)atom_of.size();
                        atom_of.push_back(i);
                        owned += pass == 0;
                    }
            int N = c.num_atoms, E = ev.edges.num_edges;
            std::vector<int> z(N), source(E), target(E);
            for (int n = 0; n < N; n++)
                z[n] = c.atomic_numbers[atom_of[n]];
            for (int e = 0; e < E; e++) {
                source[e] = node_of[ev.edges.source[e]];
                target[e] = node_of[ev.edges.target[e]];
            }
            umas_graph g = {N, owned, z.data(), E, source.data(), target.data(), ev.edges.vector};
            std::vector<double> forces(3 * (size_t)N);
            umas_result r = {};
            r.forces = forces.data();
            r.want_virial = 1;
            if (umas_compute(ev.ctx, &g, &r, &ev.err))
                throw std::runtime_error(ev.err.message);
            Totals &part = parts[p];
            part.energy = r.energy;
            part.forces.assign(3 * (size_t)N, 0.0);
            for (int n = 0; n < N; n++)
                for (int k = 0; k < 3; k++)
                    part.forces[3 * (size_t)atom_of[n] + k] = forces[3 * (size_t)n + k];
            std::copy(r.virial, r.virial + 6, part.virial);
        } catch (const std::exception &e) {
            errors[p] = e.what();
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
    }
    return total;
}

struct SplitCase {
    std::string model, name, device;
};

std::string split_label(const ::testing::TestParamInfo<SplitCase> &info) {
    return info.param.device + "_" + info.param.model + "_" + info.param.name;
}

class SplitOverProcesses : public ::testing::TestWithParam<SplitCase> {};

TEST_P(SplitOverProcesses, OneTwoFourAndEightProcessesAgreeWithEachOtherAndTheTruth) {
    const SplitCase &sc = GetParam();
    bool gpu = sc.device == "cuda";
    if (gpu && !have_gpu())
        GTEST_SKIP() << "no CUDA device";
    if (!file_exists(model_path(sc.model)))
        GTEST_SKIP() << "model " << model_path(sc.model) << " not converted (optional)";
    ReferenceCase c = load_case(sc.model, sc.name);
    std::vector<double> truth = npy_load(c.file("forces_f64.npy")).values;
    const char *backend = gpu ? "umas_fast_gpu" : "general";
    const char *precision = gpu ? "ozaki" : nullptr;
    Totals one =
        split_evaluation(model_path(sc.model), c, 1, backend, sc.device.c_str(), precision);
    double force_scale = max_abs(truth);
    for (int processes : {1, 2, 4, 8}) {
        Totals split = processes == 1 ? one
                                      : split_evaluation(model_path(sc.model), c, processes,
                                                         backend, sc.device.c_str(), precision);
        double energy = std::fabs(split.energy - one.energy) / std::fabs(one.energy);
        double forces = max_abs_diff(split.forces, one.forces) / force_scale;
        double virial = max_abs_diff(split.virial, one.virial, 6) /
                        std::max(1e-300, max_abs(std::vector<double>(one.virial, one.virial + 6)));
        double truth_energy = std::fabs(split.energy - c.energy);
        double truth_forces = max_abs_diff(split.forces, truth);
        std::printf("[ measured ] %s %s/%s on %d processes: vs 1 process |dE|/|E| %.2e, "
                    "max|dF|/max|F| %.2e, virial %.2e; vs fairchem float64 |dE| %.2e eV, "
                    "max|dF| %.2e eV/A\n",
                    sc.device.c_str(), sc.model.c_str(), sc.name.c_str(), processes, energy, forces,
                    virial, truth_energy, truth_forces);
        if (gpu) { // fp32 arithmetic: the strict bounds of test_cuda
            EXPECT_LE(truth_energy, std::max(1e-4, 1e-5 * c.num_atoms));
            EXPECT_LE(truth_forces, 1e-4);
        } else {
            EXPECT_LE(energy, 1e-10);
            EXPECT_LE(forces, 1e-10);
            EXPECT_LE(virial, 1e-10);
            EXPECT_LE(truth_energy / std::fabs(c.energy), 1e-8);
            EXPECT_LE(truth_forces / force_scale, 1e-8);
        }
    }
}

std::vector<SplitCase> split_cases() {
    std::vector<SplitCase> cases;
    for (const char *device : {"cpu", "cuda"}) {
        for (const char *name : {"c_molecule_q1_s2", "b_triclinic_perovskite_60"})
            cases.push_back({"tiny121", name, device});
        cases.push_back({"umas121", "c_molecule_q1_s2", device});
    }
    return cases;
}

INSTANTIATE_TEST_SUITE_P(Models121, SplitOverProcesses, ::testing::ValuesIn(split_cases()),
                         split_label);

// ---------------------------------------------------------------------------------------------
// What cannot be honoured is refused.
// ---------------------------------------------------------------------------------------------

TEST(BalancedChannels, EnergyNodesThatDoNotCoverTheSystemAreRefused) {
    ReferenceCase c = load_case("tiny121", "c_molecule_q1_s2");
    std::vector<std::string> devices = {"cpu"};
    if (have_gpu())
        devices.push_back("cuda");
    for (const std::string &device : devices) {
        Evaluation ev;
        ev.setup(model_path("tiny121"), c, "general", device.c_str());
        // one process, but only half the atoms counted: the balancing's sums would be wrong
        umas_graph g = {c.num_atoms,        c.num_atoms / 2, c.atomic_numbers.data(),
                        ev.edges.num_edges, ev.edges.source, ev.edges.target,
                        ev.edges.vector};
        umas_result r = {};
        EXPECT_NE(umas_compute(ev.ctx, &g, &r, &ev.err), 0) << device;
        EXPECT_NE(std::string(ev.err.message)
                      .find("every atom must be an energy node of exactly "
                            "one process"),
                  std::string::npos)
            << ev.err.message;
    }
}

TEST(BalancedChannels, AChannelBalancedTwiceIsRefused) {
    std::string path =
        model_variant(model_path("tiny121"), "tiny121_balanced_twice", [](cJSON *backbone) {
            set_channels(backbone, "spin_balanced_channels", {2});
        });
    ReferenceCase c = load_case("tiny121", "c_molecule_q1_s2");
    Evaluation ev;
    try {
        ev.setup(path, c);
        FAIL() << "a model balancing channel 2 to both charge and spin was accepted";
    } catch (const std::runtime_error &e) {
        EXPECT_NE(std::string(e.what()).find("channel 2 is balanced twice"), std::string::npos)
            << e.what();
    }
}

TEST(Precision, DefaultMeansTheDevicesDefaultEverywhere) {
    ReferenceCase c = load_case("tiny121", "c_molecule_q1_s2");
    Evaluation by_name, by_default;
    by_name.setup(model_path("tiny121"), c, "general", "cpu", "fp64");
    by_default.setup(model_path("tiny121"), c, "general", "cpu", "default");
    EXPECT_EQ(by_default.compute(c.atomic_numbers, false).energy,
              by_name.compute(c.atomic_numbers, false).energy);
    if (have_gpu()) {
        Evaluation gpu;
        gpu.setup(model_path("tiny121"), c, "general", "cuda", "default");
        EXPECT_EQ(gpu.ctx->precision, UMAS_PRECISION_EXACT);
    }
}

} // namespace
