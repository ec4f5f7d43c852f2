/* pair_umas.cpp - `pair_style umas`: the LAMMPS glue around the umas C core (see pair_umas.h).
 *
 * LAMMPS API used here exists unchanged from 29 Sep 2021 to current versions: no neighbor
 * request (the graph comes from positions), no pair communication, only the std::string
 * overloads of error and logmesg (no fmt templates: their namespace differs between builds). */
#include "pair_umas.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "lammps.h"
#include "memory.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

using namespace LAMMPS_NS;

static double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

static std::string format_bytes(double bytes) {
    char text[64];
    snprintf(text, sizeof text, "%.1f MB", bytes / (1024.0 * 1024.0));
    return text;
}

PairUMAS::PairUMAS(LAMMPS *lmp)
    : Pair(lmp), charge(0), spin(0), spin_given(false), requested_mode(AUTO), mode(LOCAL),
      model(nullptr), context(nullptr), banner_printed(false), seconds_edges(0), seconds_forward(0),
      seconds_backward(0), calls(0) {
    single_enable = 0;
    restartinfo = 0; /* re-issue pair_style after read_restart */
    one_coeff = 1;
    manybody_flag = 1;
    no_virial_fdotr_compute = 1; /* the virial comes from the edges, explicitly */
    centroidstressflag = CENTROID_NOTAVAIL;
}

PairUMAS::~PairUMAS() {
    if (calls > 0 && comm->me == 0)
        utils::logmesg(lmp, "umas timing (rank 0): " + std::to_string(calls) + " calls, graph " +
                                std::to_string(seconds_edges) + " s, forward " +
                                std::to_string(seconds_forward) + " s, backward " +
                                std::to_string(seconds_backward) + " s\n");
    umas_context_free(context);
    umas_model_free(model);
    if (allocated) {
        memory->destroy(setflag);
        memory->destroy(cutsq);
    }
}

void PairUMAS::fail(const std::string &message) {
    error->all(FLERR, "pair_style umas: " + message);
}

void PairUMAS::allocate() {
    allocated = 1;
    int n = atom->ntypes;
    memory->create(setflag, n + 1, n + 1, "pair:setflag");
    memory->create(cutsq, n + 1, n + 1, "pair:cutsq");
    for (int i = 1; i <= n; i++)
        for (int j = i; j <= n; j++)
            setflag[i][j] = 0;
}

/* pair_style umas FILE task T [charge Q] [spin S] [backend B] [device D] [mode M] */
void PairUMAS::settings(int narg, char **arg) {
    if (narg < 1)
        fail("usage: pair_style umas model.safetensors task TASK [charge Q] [spin S] "
             "[backend general] [device cpu] [mode auto|local|shell]");
    umas_context_free(context);
    context = nullptr;
    umas_model_free(model);
    model = nullptr;
    model_file = arg[0];
    task.clear();
    backend = "general";
    device = "cpu";
    charge = 0;
    spin_given = false;
    requested_mode = AUTO;
    banner_printed = false;
    merged_counts.clear();
    for (int i = 1; i < narg; i += 2) {
        std::string key = arg[i];
        if (i + 1 >= narg)
            fail("keyword '" + key + "' needs a value");
        std::string value = arg[i + 1];
        if (key == "task")
            task = value;
        else if (key == "charge")
            charge = utils::inumeric(FLERR, value.c_str(), false, lmp);
        else if (key == "spin") {
            spin = utils::inumeric(FLERR, value.c_str(), false, lmp);
            spin_given = true;
        } else if (key == "backend")
            backend = value == "umas_fast_pytorch" ? "umas_fast" : value;
        else if (key == "device")
            device = value;
        else if (key == "mode") {
            if (value == "auto")
                requested_mode = AUTO;
            else if (value == "local")
                requested_mode = LOCAL;
            else if (value == "shell")
                requested_mode = SHELL;
            else
                fail("mode must be auto, local or shell, not '" + value + "'");
        } else
            fail("unknown keyword '" + key +
                 "' (known: task, charge, spin, backend, device, mode)");
    }

    umas_error err;
    model = umas_model_load(model_file.c_str(), &err);
    if (!model)
        fail(err.message);
    const umas_model_info *info = umas_model_get_info(model);
    if (task.empty()) {
        std::string tasks;
        for (int t = 0; t < info->num_tasks; t++)
            tasks += std::string(t ? ", " : "") + umas_model_task_name(model, t);
        fail("no task given: add 'task NAME' (this model has: " + tasks + ")");
    }
    if (!spin_given) {
        spin = umas_default_spin(task.c_str());
        if (spin != 0 && comm->me == 0)
            error->warning(FLERR, "pair_style umas: no spin given for task " + task +
                                      ": using multiplicity " + std::to_string(spin) +
                                      " (fairchem's default)");
    }
}

/* pair_coeff * * El1 El2 ... : one element symbol (or NULL) per atom type */
void PairUMAS::coeff(int narg, char **arg) {
    if (!allocated)
        allocate();
    int ntypes = atom->ntypes;
    if (narg != 2 + ntypes || strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
        fail("usage: pair_coeff * * followed by one element symbol per atom type (" +
             std::to_string(ntypes) + " types), NULL for types of another hybrid sub-style");
    if (!model)
        fail("pair_coeff before a complete pair_style umas command");
    int z_max = umas_model_get_info(model)->max_num_elements;
    type_to_z.assign(ntypes + 1, 0);
    for (int t = 1; t <= ntypes; t++) {
        const char *symbol = arg[1 + t];
        if (strcmp(symbol, "NULL") == 0)
            continue;
        int z = umas_element_number(symbol);
        if (z == 0)
            fail(std::string("unknown element symbol '") + symbol + "' for atom type " +
                 std::to_string(t) + " (use symbols such as Cu, O, H)");
        if (z >= z_max)
            fail(std::string("element ") + symbol + " (Z = " + std::to_string(z) +
                 ") is outside this model's element table (Z < " + std::to_string(z_max) + ")");
        type_to_z[t] = z;
    }
    for (int i = 1; i <= ntypes; i++)
        for (int j = i; j <= ntypes; j++)
            setflag[i][j] = (type_to_z[i] > 0 && type_to_z[j] > 0) ? 1 : 0;
}

void PairUMAS::init_style() {
    if (strcmp(update->unit_style, "metal") != 0)
        fail(std::string("needs 'units metal' (eV, Angstrom); this input uses units ") +
             update->unit_style);
    if (force->newton_pair == 0)
        fail("needs newton pair on (the LAMMPS default): remove 'newton off' from the input");
    if (atom->tag_enable == 0)
        fail("needs atom IDs (atom_modify id yes)");
    if (!model || type_to_z.empty())
        fail("pair_coeff * * <elements> is missing");

    mode = requested_mode;
    if (mode == AUTO)
        mode = comm->nprocs > 1 ? SHELL : LOCAL;
    if (mode == LOCAL && comm->nprocs > 1)
        fail("mode local works on one MPI rank only; use mode shell (the default with several "
             "ranks)");
    if (mode == SHELL) {
        /* the energy of an atom depends on atoms (blocks + 1) cutoffs away (edge-degree
         * embedding + one hop per block); skin keeps the ghost set valid between rebuilds */
        const umas_model_info *info = umas_model_get_info(model);
        double shell = (info->num_layers + 1) * info->cutoff + neighbor->skin;
        if (comm->cutghostuser < shell) {
            comm->cutghostuser = shell;
            if (comm->me == 0)
                utils::logmesg(lmp, "pair_style umas: mode shell, ghost cutoff set to " +
                                        std::to_string(shell) + " A\n");
        }
    }
    update_merge("setup");
}

double PairUMAS::init_one(int, int) {
    return umas_model_get_info(model)->cutoff;
}

/* The MoLE merge depends on the composition of the whole system: recount it (all ranks) and
 * re-merge when it, the charge or the spin changed. */
void PairUMAS::update_merge(const char *why) {
    int z_max = umas_model_get_info(model)->max_num_elements;
    std::vector<int> counts(z_max, 0);
    for (int i = 0; i < atom->nlocal; i++)
        if (type_to_z[atom->type[i]] > 0)
            counts[type_to_z[atom->type[i]]]++;
    MPI_Allreduce(MPI_IN_PLACE, counts.data(), z_max, MPI_INT, MPI_SUM, world);
    if (context && counts == merged_counts)
        return;
    long total = 0;
    for (int c : counts)
        total += c;
    if (total == 0)
        fail("no atoms of the elements given in pair_coeff");
    umas_system system = {task.c_str(), charge, spin, (int)total, nullptr, counts.data()};
    umas_options options = {backend.c_str(), device.c_str()};
    umas_error err;
    umas_context *next = umas_context_create(model, &system, &options, &err);
    if (!next)
        fail(err.message);
    bool remerge = context != nullptr;
    umas_context_free(context);
    context = next;
    merged_counts = counts;
    if (!banner_printed)
        print_banner();
    else if (remerge && comm->me == 0)
        utils::logmesg(lmp, std::string("pair_style umas: composition changed (") + why +
                                "): MoLE experts re-merged for " + std::to_string(total) +
                                " atoms\n");
}

void PairUMAS::print_banner() {
    banner_printed = true;
    if (comm->me != 0)
        return;
    const umas_model_info *info = umas_model_get_info(model);
    std::string composition;
    for (size_t z = 0; z < merged_counts.size(); z++)
        if (merged_counts[z] > 0)
            composition +=
                std::string(umas_element_symbol((int)z)) + std::to_string(merged_counts[z]) + " ";
    std::string types;
    for (size_t t = 1; t < type_to_z.size(); t++)
        types += std::to_string(t) + "->" +
                 (type_to_z[t] ? umas_element_symbol(type_to_z[t]) : "NULL") + " ";
    std::string coefficients;
    const double *coef = umas_context_expert_coefficients(context);
    for (int k = 0; k < info->num_experts && k < 8; k++)
        coefficients += std::to_string(coef[k]).substr(0, 6) + " ";
    std::string text;
    text += "pair_style umas: model " + model_file + " (" + info->model_id + ")\n";
    text += "  C=" + std::to_string(info->sphere_channels) +
            " H=" + std::to_string(info->hidden_channels) +
            " edge=" + std::to_string(info->edge_channels) + " lmax=" + std::to_string(info->lmax) +
            " blocks=" + std::to_string(info->num_layers) +
            " basis=" + std::to_string(info->num_distance_basis) +
            " experts=" + std::to_string(info->num_experts) +
            " cutoff=" + std::to_string(info->cutoff) + " A\n";
    text += "  task " + task + ", charge " + std::to_string(charge) + ", spin " +
            std::to_string(spin) + "\n";
    text += "  MoLE merged for " + composition + "(expert coefficients " + coefficients + ")\n";
    text += "  types " + types + "\n";
    text += "  backend " + backend + ", device " + device + ", mode " +
            (mode == SHELL ? "shell" : "local") + ", " + std::to_string(comm->nprocs) +
            " MPI ranks x " + std::to_string(umas_cpu_threads()) + " BLAS threads\n";
    text += "  memory: model file " + format_bytes((double)umas_model_bytes(model)) +
            " (mapped), merged weights and work " +
            format_bytes((double)umas_context_bytes(context)) + " per rank\n";
    utils::logmesg(lmp, text);
}

/* Model atoms (types with an element) of all slots, owned first: slot_of, positions,
 * node_z. Returns their number; *owned the owned ones. */
int PairUMAS::gather_atoms() {
    int nall = atom->nlocal + atom->nghost;
    double **x = atom->x;
    slot_of.clear();
    positions.clear();
    node_z.clear();
    for (int i = 0; i < nall; i++) {
        int z = type_to_z[atom->type[i]];
        if (z == 0)
            continue;
        if (!std::isfinite(x[i][0]) || !std::isfinite(x[i][1]) || !std::isfinite(x[i][2]))
            error->one(FLERR, "pair_style umas: atom ID " + std::to_string(atom->tag[i]) +
                                  " has a non-finite position (NaN or inf)");
        slot_of.push_back(i);
        positions.insert(positions.end(), {x[i][0], x[i][1], x[i][2]});
        node_z.push_back(z);
    }
    return (int)slot_of.size();
}

/* Hops from the owned atoms (0) over the edges, capped at max_hop + 1 for nodes farther away:
 * breadth-first search over the incoming edges of each node (the graph is symmetric). */
static std::vector<int> receptive_hops(const umas_edge_list &edges, int nodes, int owned,
                                       int max_hop) {
    std::vector<int> first(nodes + 1, 0), sources(edges.num_edges);
    for (int e = 0; e < edges.num_edges; e++)
        first[edges.target[e] + 1]++;
    for (int k = 0; k < nodes; k++)
        first[k + 1] += first[k];
    std::vector<int> fill(first.begin(), first.end() - 1);
    for (int e = 0; e < edges.num_edges; e++)
        sources[fill[edges.target[e]]++] = edges.source[e];
    std::vector<int> hop(nodes, max_hop + 1), frontier, next;
    for (int k = 0; k < owned; k++) {
        hop[k] = 0;
        frontier.push_back(k);
    }
    for (int h = 1; h <= max_hop && !frontier.empty(); h++) {
        next.clear();
        for (int t : frontier)
            for (int i = first[t]; i < first[t + 1]; i++)
                if (hop[sources[i]] > h) {
                    hop[sources[i]] = h;
                    next.push_back(sources[i]);
                }
        frontier.swap(next);
    }
    return hop;
}

/* Edges of the model atoms; in local mode only those into owned atoms, their sources mapped
 * to the owners. Fills edge_* arrays; node_z is cut to the graph's nodes. */
void PairUMAS::build_graph(int model_atoms, int owned) {
    const double cell[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
    const int no_pbc[3] = {0, 0, 0}; /* ghosts are explicit images */
    umas_edge_list all = {0, nullptr, nullptr, nullptr, nullptr};
    umas_error err;
    if (umas_build_edges(model_atoms, positions.data(), cell, no_pbc,
                         umas_model_get_info(model)->cutoff, &all, &err))
        error->one(FLERR, std::string("pair_style umas: ") + err.message);
    int cut = umas_limit_neighbors(&all, model_atoms, umas_model_get_info(model)->max_neighbors);
    if (cut > 0)
        error->warning(FLERR, "pair_style umas: " + std::to_string(cut) +
                                  " atoms exceed max_neighbors; farthest neighbours dropped as "
                                  "fairchem does (forces are discontinuous there)");

    if (mode == LOCAL) {
        tagint *tag = atom->tag;
        tagint max_tag = 0;
        for (int k = 0; k < model_atoms; k++)
            max_tag = std::max(max_tag, tag[slot_of[k]]);
        owner_of_tag.assign((size_t)max_tag + 1, -1);
        for (int k = 0; k < owned; k++)
            owner_of_tag[tag[slot_of[k]]] = k;
    }
    /* shell mode: the owned energies depend on nodes up to `blocks` hops away through their
     * complete incoming edges (the edge-degree embedding reads neighbour positions, each block
     * one more hop of features). Keep the edges into nodes within `blocks` hops, and the nodes
     * within blocks + 1 hops; farther ghosts cannot reach an owned atom. */
    std::vector<int> node_of(model_atoms, -1);
    if (mode == SHELL) {
        int blocks = umas_model_get_info(model)->num_layers;
        std::vector<int> hop = receptive_hops(all, model_atoms, owned, blocks + 1);
        int nodes = 0;
        for (int k = 0; k < model_atoms; k++)
            if (hop[k] <= blocks + 1)
                node_of[k] = nodes++;
        std::vector<int> kept_z(nodes);
        std::vector<int> kept_slot(nodes);
        for (int k = 0; k < model_atoms; k++)
            if (node_of[k] >= 0) {
                kept_z[node_of[k]] = node_z[k];
                kept_slot[node_of[k]] = slot_of[k];
            }
        for (int e = 0; e < all.num_edges; e++)
            if (hop[all.target[e]] > blocks)
                all.target[e] = -1; /* not needed */
        node_z.swap(kept_z);
        slot_of.swap(kept_slot);
    } else {
        for (int k = 0; k < model_atoms; k++)
            node_of[k] = k;
    }

    edge_source.clear(), edge_target.clear(), edge_vector.clear();
    edge_source_slot.clear(), edge_target_slot.clear();
    for (int e = 0; e < all.num_edges; e++) {
        int s = all.source[e], t = all.target[e];
        if (t < 0 || (mode == LOCAL && t >= owned))
            continue;
        int source_node = node_of[s];
        if (mode == LOCAL && s >= owned) {
            source_node = owner_of_tag[atom->tag[slot_of[s]]];
            if (source_node < 0) {
                umas_edge_list_free(&all);
                error->one(FLERR, "pair_style umas: ghost atom ID " +
                                      std::to_string(atom->tag[slot_of[s]]) +
                                      " has no owner on this rank; use mode shell");
            }
        }
        edge_source.push_back(source_node);
        edge_target.push_back(node_of[t]);
        edge_source_slot.push_back(slot_of[node_of[s]]);
        edge_target_slot.push_back(slot_of[node_of[t]]);
        edge_vector.insert(edge_vector.end(), all.vector + 3 * (size_t)e,
                           all.vector + 3 * (size_t)e + 3);
    }
    umas_edge_list_free(&all);
    if (mode == LOCAL)
        node_z.resize(owned);
}

void PairUMAS::compute(int eflag, int vflag) {
    ev_init(eflag, vflag);
    if (neighbor->ago == 0)
        update_merge("atoms added or removed");
    auto start = std::chrono::steady_clock::now();
    int model_atoms = gather_atoms();
    int owned = 0;
    while (owned < model_atoms && slot_of[owned] < atom->nlocal)
        owned++;
    build_graph(model_atoms, owned);
    seconds_edges += seconds_since(start);

    int nodes = (int)node_z.size(), num_edges = (int)edge_source.size();
    edge_gradient.resize(3 * (size_t)num_edges);
    node_energy.resize(nodes);
    umas_graph graph = {nodes,
                        owned,
                        node_z.data(),
                        num_edges,
                        edge_source.data(),
                        edge_target.data(),
                        edge_vector.data()};
    umas_result result = {};
    result.node_energy = node_energy.data();
    result.edge_gradient = edge_gradient.data();
    result.want_virial = vflag_global;
    umas_error err;
    if (umas_compute(context, &graph, &result, &err))
        error->one(FLERR, std::string("pair_style umas: ") + err.message);
    seconds_forward += result.seconds_forward;
    seconds_backward += result.seconds_backward;
    calls++;

    /* forces: the edge vector is x_source - x_target, so F_source -= dE/dr, F_target += dE/dr,
     * on the slots the edge points to (ghost slots are folded onto owners by LAMMPS) */
    double **f = atom->f;
    for (int e = 0; e < num_edges; e++) {
        const double *g = &edge_gradient[3 * (size_t)e];
        int s = edge_source_slot[e], t = edge_target_slot[e];
        for (int k = 0; k < 3; k++) {
            f[s][k] -= g[k];
            f[t][k] += g[k];
        }
    }
    if (eflag_global)
        eng_vdwl += result.energy;
    if (eflag_atom)
        for (int k = 0; k < owned; k++)
            eatom[slot_of[k]] += node_energy[k];
    if (vflag_global)
        for (int k = 0; k < 6; k++)
            virial[k] += result.virial[k];
    if (vflag_atom)
        for (int e = 0; e < num_edges; e++) {
            const double *r = &edge_vector[3 * (size_t)e], *g = &edge_gradient[3 * (size_t)e];
            /* W_e = -sym(r (x) g), xx yy zz xy xz yz, half to each end */
            double w[6] = {-r[0] * g[0],
                           -r[1] * g[1],
                           -r[2] * g[2],
                           -0.5 * (r[0] * g[1] + r[1] * g[0]),
                           -0.5 * (r[0] * g[2] + r[2] * g[0]),
                           -0.5 * (r[1] * g[2] + r[2] * g[1])};
            for (int k = 0; k < 6; k++) {
                vatom[edge_source_slot[e]][k] += 0.5 * w[k];
                vatom[edge_target_slot[e]][k] += 0.5 * w[k];
            }
        }
}

double PairUMAS::memory_usage() {
    double bytes = Pair::memory_usage();
    if (context)
        bytes += (double)umas_context_bytes(context);
    bytes += sizeof(double) * (positions.capacity() + edge_vector.capacity() +
                               edge_gradient.capacity() + node_energy.capacity());
    bytes += sizeof(int) * (slot_of.capacity() + node_z.capacity() + owner_of_tag.capacity() +
                            4 * edge_source.capacity());
    return bytes;
}

static Pair *create_pair_umas(LAMMPS *lmp) {
    return new PairUMAS(lmp);
}

void umas_register_pair_style(LAMMPS *lmp) {
    (*lmp->force->pair_map)["umas"] = &create_pair_umas;
}
