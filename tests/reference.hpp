// reference.hpp - the shared fairchem reference cases (tests/data/<model>/<case>/) and the
// converted reference models, for the GoogleTest suites.
//
// Data layout and provenance: tests/data/REFERENCE-README.md. Ground truth = the *_f64 arrays,
// computed by fairchem in float64.
#ifndef UMAS_TESTS_REFERENCE_HPP
#define UMAS_TESTS_REFERENCE_HPP

#include "npy.hpp"
#include "umas.h"

#include <cjson/cJSON.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <sys/stat.h>
#include <vector>

inline std::string test_data_dir() {
    const char *env = std::getenv("UMAS_TEST_DATA");
    return env ? env : UMAS_TEST_DATA_DIR;
}

// Converted models (tiny, tiny_v12, umas), written by the ctest fixture convert_reference_models.
inline std::string test_models_dir() {
    const char *env = std::getenv("UMAS_TEST_MODELS");
    return env ? env : UMAS_TEST_MODELS_DIR;
}

inline bool file_exists(const std::string &path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0;
}

inline std::string model_path(const std::string &model) {
    return test_models_dir() + "/" + model + ".safetensors";
}

inline std::string read_text(const std::string &path) {
    std::ifstream in(path);
    if (!in)
        throw std::runtime_error("cannot read " + path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

inline double max_abs(const std::vector<double> &v) {
    double m = 0;
    for (double x : v)
        m = std::max(m, std::fabs(x));
    return m;
}

inline double max_abs_diff(const double *a, const double *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = std::max(m, std::fabs(a[i] - b[i]));
    return m;
}

inline double max_abs_diff(const std::vector<double> &a, const std::vector<double> &b) {
    return max_abs_diff(a.data(), b.data(), std::min(a.size(), b.size()));
}

// |det| of a cell whose rows are the lattice vectors [3][3].
inline double cell_volume(const std::vector<double> &h) {
    return std::fabs(h[0] * (h[4] * h[8] - h[5] * h[7]) - h[1] * (h[3] * h[8] - h[5] * h[6]) +
                     h[2] * (h[3] * h[7] - h[4] * h[6]));
}

// fairchem's stress (eV/A^3, 3x3 row-major) from a virial W (eV, LAMMPS order xx yy zz xy xz
// yz): stress = -W / V.
inline std::vector<double> stress_from_virial(const double W[6], double V) {
    return {-W[0] / V, -W[3] / V, -W[4] / V, -W[3] / V, -W[1] / V,
            -W[5] / V, -W[4] / V, -W[5] / V, -W[2] / V};
}

// A umas_system of one process: the MoLE inputs, no exchange with other processes.
inline umas_system one_process_system(const char *task, int charge, int spin, int num_atoms,
                                      const int *atomic_numbers,
                                      const int *element_counts = nullptr) {
    umas_system sys = {};
    sys.task = task;
    sys.charge = charge;
    sys.spin = spin;
    sys.num_atoms = num_atoms;
    sys.atomic_numbers = atomic_numbers;
    sys.element_counts = element_counts;
    return sys;
}

// One reference structure with fairchem's float64 results.
struct ReferenceCase {
    std::string model, name, dir;
    std::string task;
    int charge = 0, spin = 0;
    int num_atoms = 0;
    std::vector<int> atomic_numbers;
    std::vector<double> positions; // [N][3]
    std::vector<double> cell;      // [3][3] rows = lattice vectors
    int pbc[3] = {0, 0, 0};
    double energy = 0;                   // eV, float64 reference
    std::vector<double> per_atom_energy; // eV

    std::string file(const std::string &name_in_case) const {
        return dir + "/" + name_in_case;
    }
};

inline ReferenceCase load_case(const std::string &model, const std::string &name) {
    ReferenceCase c;
    c.model = model;
    c.name = name;
    c.dir = test_data_dir() + "/" + model + "/" + name;
    cJSON *meta = cJSON_Parse(read_text(c.dir + "/meta.json").c_str());
    if (!meta)
        throw std::runtime_error("bad meta.json in " + c.dir);
    c.task = cJSON_GetObjectItem(meta, "task")->valuestring;
    c.charge = (int)cJSON_GetObjectItem(meta, "charge")->valuedouble;
    c.spin = (int)cJSON_GetObjectItem(meta, "spin")->valuedouble;
    c.energy = cJSON_GetObjectItem(cJSON_GetObjectItem(meta, "energy_eV"), "f64")->valuedouble;
    cJSON_Delete(meta);

    NpyArray z = npy_load(c.file("atomic_numbers.npy"));
    NpyArray pos = npy_load(c.file("positions.npy"));
    NpyArray cell = npy_load(c.file("cell.npy"));
    NpyArray pbc = npy_load(c.file("pbc.npy"));
    c.num_atoms = (int)z.size();
    for (double v : z.values)
        c.atomic_numbers.push_back((int)v);
    c.positions = pos.values;
    c.cell = cell.values;
    for (int k = 0; k < 3; k++)
        c.pbc[k] = pbc.values[k] != 0;
    if (file_exists(c.file("per_atom_energy_f64.npy"))) // not in the 1.2.1 cases
        c.per_atom_energy = npy_load(c.file("per_atom_energy_f64.npy")).values;
    return c;
}

// Per-atom energies against the case's: max |difference| / max |reference|; for a case without
// per-atom references (the 1.2.1 ones), |sum - the reference energy| / |energy| instead.
inline double per_atom_error(const std::vector<double> &per_atom, const ReferenceCase &c) {
    if (c.per_atom_energy.empty()) {
        double sum = 0;
        for (double e : per_atom)
            sum += e;
        return std::fabs(sum - c.energy) / std::fabs(c.energy);
    }
    return max_abs_diff(per_atom, c.per_atom_energy) / max_abs(c.per_atom_energy);
}

// Every reference case of a model (directory names under tests/data/<model>/).
inline std::vector<std::string> case_names(const std::string &model) {
    if (model == "tiny_v12")
        return {"a_cu_fcc_108", "c_molecule_q0_s1"}; // the only tiny_v12 cases shipped
    if (model == "tiny121")                          // UMA-S 1.2.1 architecture, tiny dims
        return {"a_cu_fcc_108", "b_triclinic_perovskite_60", "c_molecule_q0_s1", "c_molecule_q1_s2",
                "e_si_primitive_2"};
    return {"a_cu_fcc_108",    "b_triclinic_perovskite_60", "c_molecule_q0_s1", "c_molecule_q1_s2",
            "d_isolated_atom", "e_si_primitive_2",          "f_cu_fcc_2000"};
}

// fairchem's intermediates (tests/data/tiny/<case>/intermediates/*.npy) in the order of a
// context's trace: embedding, edge degree, each block, final norm.
inline std::vector<std::string> intermediate_stages(int layers) {
    std::vector<std::string> stages = {"x0_atom_csd_embedding", "x1_after_edge_degree"};
    for (int l = 0; l < layers; l++)
        stages.push_back("x2_after_block" + std::to_string(l));
    stages.push_back("x3_after_final_norm");
    return stages;
}

struct CaseId {
    std::string model, name;
};

// Every reference case of every reference model: tiny, tiny_v12, umas (UMA-S dims) and the
// UMA-S 1.2.1 architecture (charge-balanced channels, 32 Gaussians, 7 datasets) tiny121, umas121.
inline std::vector<CaseId> all_cases() {
    std::vector<CaseId> cases;
    for (const char *model : {"tiny", "tiny_v12", "umas", "tiny121", "umas121"})
        for (const std::string &name : case_names(model))
            cases.push_back({model, name});
    return cases;
}

inline std::string case_label(const ::testing::TestParamInfo<CaseId> &info) {
    return info.param.model + "_" + info.param.name;
}

// Owns a model, a context for one case, and the case's graph (built by umas_build_edges).
struct Evaluation {
    umas_model *model = nullptr;
    umas_context *ctx = nullptr;
    umas_edge_list edges = {};
    umas_error err = {};
    // set before setup() for a context that shares its system with other processes
    void (*sum_over_processes)(double *values, int count, void *data) = nullptr;
    void *sum_data = nullptr;
    // and for one that exchanges a halo with them (umas_system.refresh_ghosts, sum_into_owners)
    void (*refresh_ghosts)(double *rows, int num_nodes, int width, void *data) = nullptr;
    void (*sum_into_owners)(double *rows, int num_nodes, int width, void *data) = nullptr;
    void *halo_data = nullptr;

    Evaluation() = default;
    Evaluation(const Evaluation &) = delete;
    Evaluation &operator=(const Evaluation &) = delete;
    ~Evaluation() {
        umas_edge_list_free(&edges);
        umas_context_free(ctx);
        umas_model_free(model);
    }

    // Loads the model and merges it for the case; builds the case's edges. Throws on error.
    void setup(const std::string &model_file, const ReferenceCase &c,
               const char *backend = "general", const char *device = "cpu",
               const char *precision = nullptr) {
        model = umas_model_load(model_file.c_str(), &err);
        if (!model)
            throw std::runtime_error(err.message);
        umas_system sys = one_process_system(c.task.c_str(), c.charge, c.spin, c.num_atoms,
                                             c.atomic_numbers.data());
        sys.sum_over_processes = sum_over_processes;
        sys.sum_data = sum_data;
        sys.refresh_ghosts = refresh_ghosts;
        sys.sum_into_owners = sum_into_owners;
        sys.halo_data = halo_data;
        umas_options opt = {backend, device, precision};
        ctx = umas_context_create(model, &sys, &opt, &err);
        if (!ctx)
            throw std::runtime_error(err.message);
        for (int k = 0; k < 3; k++)
            pbc[k] = c.pbc[k];
        rebuild_edges(c.positions, c.cell);
    }

    // Edges of a (moved) structure with the case's periodicity.
    void rebuild_edges(const std::vector<double> &positions, const std::vector<double> &cell) {
        umas_edge_list_free(&edges);
        if (umas_build_edges((int)positions.size() / 3, positions.data(), cell.data(), pbc,
                             umas_model_get_info(model)->cutoff, &edges, &err))
            throw std::runtime_error(err.message);
    }

    struct Output {
        double energy = 0;
        std::vector<double> per_atom, forces, edge_gradient; // [N], [N][3], [E][3]
        double virial[6] = {0, 0, 0, 0, 0, 0};               // eV, xx yy zz xy xz yz
    };

    // Energy, per-atom energies and, with gradients, forces, edge gradients and the virial.
    Output compute(const std::vector<int> &atomic_numbers, bool gradients) {
        Output out;
        int n = (int)atomic_numbers.size();
        out.per_atom.resize(n);
        umas_graph g = {
            n, n, atomic_numbers.data(), edges.num_edges, edges.source, edges.target, edges.vector};
        umas_result r = {};
        r.node_energy = out.per_atom.data();
        if (gradients) {
            out.forces.resize(3 * (size_t)n);
            out.edge_gradient.resize(3 * (size_t)edges.num_edges);
            r.forces = out.forces.data();
            r.edge_gradient = out.edge_gradient.data();
            r.want_virial = 1;
        }
        if (umas_compute(ctx, &g, &r, &err))
            throw std::runtime_error(err.message);
        out.energy = r.energy;
        for (int k = 0; k < 6; k++)
            out.virial[k] = r.virial[k];
        return out;
    }

    // Energy (eV) and per-atom energies of the current edges.
    double energy(const std::vector<int> &atomic_numbers, std::vector<double> *per_atom) {
        Output out = compute(atomic_numbers, false);
        if (per_atom)
            *per_atom = out.per_atom;
        return out.energy;
    }

    int pbc[3] = {0, 0, 0};
};

// Central finite differences (step h = 1e-4 A) of the energy for the first, middle and last
// atom, each direction, against the forces of the same evaluation: each component within
// 1e-6 x max(1, max |F|). Returns the largest |F - finite difference| (eV/A).
inline double check_forces_by_finite_differences(Evaluation &ev, const ReferenceCase &c) {
    std::vector<double> forces = ev.compute(c.atomic_numbers, true).forces;
    const double h = 1e-4;
    double worst = 0;
    for (int atom : {0, c.num_atoms / 2, c.num_atoms - 1})
        for (int k = 0; k < 3; k++) {
            std::vector<double> moved = c.positions;
            moved[3 * atom + k] += h;
            ev.rebuild_edges(moved, c.cell);
            double up = ev.energy(c.atomic_numbers, nullptr);
            moved[3 * atom + k] -= 2 * h;
            ev.rebuild_edges(moved, c.cell);
            double down = ev.energy(c.atomic_numbers, nullptr);
            double fd = -(up - down) / (2 * h);
            worst = std::max(worst, std::fabs(fd - forces[3 * atom + k]));
            EXPECT_NEAR(fd, forces[3 * atom + k], 1e-6 * std::max(1.0, max_abs(forces)))
                << "atom " << atom << " component " << k;
        }
    ev.rebuild_edges(c.positions, c.cell);
    return worst;
}

#endif
