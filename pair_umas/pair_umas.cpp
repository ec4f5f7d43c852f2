/* pair_umas.cpp - `pair_style umas`: the LAMMPS glue around the umas C core (see pair_umas.h).
 *
 * LAMMPS API used here exists unchanged from 29 Sep 2021 to current versions: no neighbor
 * request (the graph comes from positions), no pair communication, only the std::string
 * overloads of error and logmesg (no fmt templates: their namespace differs between builds). */
#include "pair_umas.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
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
#include <cstdio>
#include <cstring>
#include <tuple>

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
      model(nullptr), context(nullptr), banner_printed(false), list_context(nullptr),
      owned_nodes(0), every_step(false), warned_max_neighbors(false), halo_width(0),
      seconds_edges(0), seconds_forward(0), seconds_backward(0), calls(0), list_builds(0) {
    single_enable = 0;
    restartinfo = 0; /* re-issue pair_style after read_restart */
    one_coeff = 1;
    manybody_flag = 1;
    no_virial_fdotr_compute = 1; /* the virial comes from the edges, explicitly */
    centroidstressflag = CENTROID_NOTAVAIL;
    comm_forward = comm_reverse = 0; /* mode halo: 9 C, set in settings */
}

PairUMAS::~PairUMAS() {
    if (calls > 0 && comm->me == 0)
        utils::logmesg(lmp, "umas timing (rank 0): " + std::to_string(calls) + " calls, " +
                                std::to_string(list_builds) +
                                " neighbour lists; lists and positions " +
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

/* pair_style umas FILE task T [charge Q] [spin S] [backend B] [device D] [precision P]
 * [mode M]. The halo exchange's width is set here (comm_forward, comm_reverse): LAMMPS sizes
 * its buffers from them in Comm::init, and pair hybrid reads them after settings. */
void PairUMAS::settings(int narg, char **arg) {
    if (narg < 1)
        fail("usage: pair_style umas model.safetensors task TASK [charge Q] [spin S] "
             "[backend general] [device cpu] [precision default] [mode auto|local|halo|shell]");
    umas_context_free(context);
    context = nullptr;
    umas_model_free(model);
    model = nullptr;
    model_file = arg[0];
    task.clear();
    backend = "general";
    device = "cpu";
    precision = "default";
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
        else if (key == "precision")
            precision = value;
        else if (key == "mode") {
            if (value == "auto")
                requested_mode = AUTO;
            else if (value == "local")
                requested_mode = LOCAL;
            else if (value == "halo")
                requested_mode = HALO;
            else if (value == "shell")
                requested_mode = SHELL;
            else
                fail("mode must be auto, local, halo or shell, not '" + value + "'");
        } else
            fail("unknown keyword '" + key +
                 "' (known: task, charge, spin, backend, device, precision, mode)");
    }

    umas_error err;
    model = umas_model_load(model_file.c_str(), &err);
    if (!model)
        fail(err.message);
    const umas_model_info *info = umas_model_get_info(model);
    bool halo = requested_mode == HALO || (requested_mode == AUTO && comm->nprocs > 1);
    comm_forward = comm_reverse = halo ? 9 * info->sphere_channels : 0;
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
        mode = comm->nprocs > 1 ? HALO : LOCAL;
    if (mode == LOCAL && comm->nprocs > 1)
        fail("mode local works on one MPI rank only; use mode halo (the default with several "
             "ranks)");
    const umas_model_info *info = umas_model_get_info(model);
    if (mode == HALO && comm_forward != 9 * info->sphere_channels)
        fail("mode halo was not known when pair_style was read: re-issue pair_style");
    if (mode == SHELL) {
        /* the energy of an atom depends on atoms (blocks + 1) cutoffs away (edge-degree
         * embedding + one hop per block); skin keeps the ghost set valid between rebuilds */
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

/* umas_system.sum_over_processes: system-wide sums (the charge/spin balancing of UMA-S 1.2)
 * over the ranks of the pair style's communicator. */
static void sum_over_ranks(double *values, int count, void *communicator) {
    MPI_Allreduce(MPI_IN_PLACE, values, count, MPI_DOUBLE, MPI_SUM,
                  *static_cast<MPI_Comm *>(communicator));
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
    umas_system system = {};
    system.task = task.c_str();
    system.charge = charge;
    system.spin = spin;
    system.num_atoms = (int)total;
    system.element_counts = counts.data();
    if (comm->nprocs > 1) {
        system.sum_over_processes = sum_over_ranks;
        system.sum_data = &world;
    }
    if (mode == HALO) {
        system.refresh_ghosts = refresh_ghosts;
        system.sum_into_owners = sum_into_owners;
        system.halo_data = this;
    }
    umas_options options = {backend.c_str(), device.c_str(),
                            precision == "default" ? nullptr : precision.c_str()};
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
    if (info->num_charge_balanced || info->num_spin_balanced)
        text += "  balanced l=0 channels: " + std::to_string(info->num_charge_balanced) +
                " to the charge, " + std::to_string(info->num_spin_balanced) +
                " to the spin (sums over all " + std::to_string(comm->nprocs) + " ranks)\n";
    text += "  MoLE merged for " + composition + "(expert coefficients " + coefficients + ")\n";
    text += "  types " + types + "\n";
    text += "  backend " + backend + ", device " + device + ", precision " + precision + ", mode " +
            (mode == SHELL  ? "shell"
             : mode == HALO ? "halo"
                            : "local") +
            ", " + std::to_string(comm->nprocs) + " MPI ranks x " +
            std::to_string(umas_cpu_threads()) + " BLAS threads\n";
    text += "  memory: model file " + format_bytes((double)umas_model_bytes(model)) +
            " (mapped), merged weights and work " +
            format_bytes((double)umas_context_bytes(context)) + " per rank\n";
    utils::logmesg(lmp, text);
}

/* Model atoms (types with an element) of all slots, owned first: slot_of, positions,
 * node_z. Returns their number. */
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
        check_position(i);
        slot_of.push_back(i);
        positions.insert(positions.end(), {x[i][0], x[i][1], x[i][2]});
        node_z.push_back(z);
    }
    return (int)slot_of.size();
}

void PairUMAS::check_position(int slot) {
    const double *x = atom->x[slot];
    if (!std::isfinite(x[0]) || !std::isfinite(x[1]) || !std::isfinite(x[2]))
        error->one(FLERR, "pair_style umas: atom ID " + std::to_string(atom->tag[slot]) +
                              " has a non-finite position (NaN or inf)");
}

/* Stops with a core message; when it names atoms (err.atom: indices into `slot`, this rank's
 * model atoms or graph nodes), they are named by their LAMMPS atom IDs instead. */
void PairUMAS::fail_naming_atoms(const umas_error &err, const std::vector<int> &slot) {
    std::string text = err.message;
    int i = err.atom[0], j = err.atom[1];
    if (i >= 0 && j >= 0 && i < (int)slot.size() && j < (int)slot.size()) {
        size_t verb = text.find(" are ");
        text = "atom IDs " + std::to_string(atom->tag[slot[i]]) + " and " +
               std::to_string(atom->tag[slot[j]]) +
               (verb == std::string::npos ? ": " + text : text.substr(verb));
    }
    error->one(FLERR, "pair_style umas: " + text);
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

/* The periodic box as lattice vectors (rows): a = (xprd, 0, 0), b = (xy, yprd, 0),
 * c = (xz, yz, zprd); LAMMPS places a ghost at its owner + i a + j b + k c. */
static void box_cell(const Domain *domain, double cell[9]) {
    const double rows[9] = {domain->xprd, 0,          0,           domain->xy, domain->yprd, 0,
                            domain->xz,   domain->yz, domain->zprd};
    std::copy(rows, rows + 9, cell);
}

/* Integers (i, j, k) with d = i a + j b + k c (d = ghost - owner); false when d is no lattice
 * vector of the box. */
static bool lattice_image(const Domain *domain, const double d[3], int image[3]) {
    double k = domain->zperiodic ? std::round(d[2] / domain->zprd) : 0;
    double j = domain->yperiodic ? std::round((d[1] - k * domain->yz) / domain->yprd) : 0;
    double i =
        domain->xperiodic ? std::round((d[0] - j * domain->xy - k * domain->xz) / domain->xprd) : 0;
    double r[3] = {d[0] - i * domain->xprd - j * domain->xy - k * domain->xz,
                   d[1] - j * domain->yprd - k * domain->yz, d[2] - k * domain->zprd};
    image[0] = (int)i, image[1] = (int)j, image[2] = (int)k;
    return std::fabs(r[0]) + std::fabs(r[1]) + std::fabs(r[2]) < 1e-6;
}

/* Drops the edges longer than `cutoff` in place, keeping the order of the rest. */
static void keep_within(umas_edge_list &edges, double cutoff) {
    int kept = 0;
    for (int e = 0; e < edges.num_edges; e++) {
        const double *v = edges.vector + 3 * (size_t)e;
        if (v[0] * v[0] + v[1] * v[1] + v[2] * v[2] > cutoff * cutoff)
            continue;
        edges.source[kept] = edges.source[e];
        edges.target[kept] = edges.target[e];
        for (int k = 0; k < 3; k++) {
            if (edges.cell_shift)
                edges.cell_shift[3 * (size_t)kept + k] = edges.cell_shift[3 * (size_t)e + k];
            edges.vector[3 * (size_t)kept + k] = v[k];
        }
        kept++;
    }
    edges.num_edges = kept;
}

/* Neighbour list of the model atoms, handed to the context (umas_set_neighbors). Edges reach
 * cutoff + skin, so that the list stays complete until LAMMPS rebuilds (atoms move less than
 * skin / 2); the core drops the edges beyond the cutoff every step. When an atom may have more
 * neighbours than the model's max_neighbors, fairchem's rule can cut edges: then the list is
 * rebuilt at the exact cutoff every step and the rule applied (every_step).
 *   local: nodes are the owned atoms, sorted by atom ID; a ghost source becomes its owner plus
 *          a periodic image, so edge vectors follow the current box (NPT) exactly.
 *   shell: nodes are owned atoms (sorted by ID) then the ghosts within reach; no images.
 * Edges are sorted by (target, source, image): results do not depend on LAMMPS' atom order,
 * which makes restarts continue bit for bit. */
void PairUMAS::build_list() {
    const umas_model_info *info = umas_model_get_info(model);
    double needed = info->cutoff + neighbor->skin, ghost_cutoff = comm->get_comm_cutoff();
    if (mode == HALO && ghost_cutoff < needed)
        fail("mode halo needs ghost atoms out to cutoff + skin = " + std::to_string(needed) +
             " A, but the communication cutoff is " + std::to_string(ghost_cutoff) +
             " A: remove the smaller comm_modify cutoff");
    if (list_builds == 0 && comm->me == 0)
        utils::logmesg(lmp, "pair_style umas: ghost atom cutoff " + std::to_string(ghost_cutoff) +
                                " A (model cutoff " + std::to_string(info->cutoff) + " + skin " +
                                std::to_string(neighbor->skin) + ")\n");
    int model_atoms = gather_atoms();
    int owned = 0;
    while (owned < model_atoms && slot_of[owned] < atom->nlocal)
        owned++;
    umas_edge_list pairs = candidate_pairs(model_atoms, owned);
    std::vector<int> hop, order = order_nodes(pairs, model_atoms, owned, hop);
    list_edges(pairs, model_atoms, owned, order, hop);
    umas_edge_list_free(&pairs);
    umas_neighbors list = {(int)node_slot.size(),   owned_nodes,        list_z.data(),
                           (int)list_source.size(), list_source.data(), list_target.data(),
                           list_image.data()};
    umas_error err;
    if (umas_set_neighbors(context, &list, &err))
        error->one(FLERR, std::string("pair_style umas: ") + err.message);
    list_context = context;
    list_builds++;
}

/* build_list, phase 1: every pair of model atoms within cutoff + skin (into the owned atoms only
 * in local mode, where ghosts are sources only); where some atom has more than max_neighbors
 * within the cutoff, fairchem's cut on the exact list instead (every_step: rebuilt each step). */
umas_edge_list PairUMAS::candidate_pairs(int model_atoms, int owned) {
    const umas_model_info *info = umas_model_get_info(model);
    const double cell[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
    const int no_pbc[3] = {0, 0, 0}; /* ghosts are explicit images */
    umas_edge_list all = {0, nullptr, nullptr, nullptr, nullptr};
    umas_error err;
    int targets = mode == SHELL ? model_atoms : owned; /* halo, local: edges into owned atoms */
    if (umas_build_edges_to(model_atoms, targets, positions.data(), cell, no_pbc,
                            info->cutoff + neighbor->skin, &all, &err))
        fail_naming_atoms(err, slot_of);
    std::vector<int> incoming(model_atoms, 0);
    for (int e = 0; e < all.num_edges; e++)
        incoming[all.target[e]]++;
    int most = model_atoms ? *std::max_element(incoming.begin(), incoming.end()) : 0;
    every_step = info->max_neighbors > 0 && most > info->max_neighbors;
    if (every_step) {
        keep_within(all, info->cutoff);
        int cut = umas_limit_neighbors(&all, model_atoms, info->max_neighbors);
        if (cut > 0 && !warned_max_neighbors) {
            warned_max_neighbors = true;
            error->warning(FLERR, "pair_style umas: " + std::to_string(cut) +
                                      " atoms exceed max_neighbors; farthest neighbours dropped "
                                      "as fairchem does (forces are discontinuous there)");
        }
    }
    return all;
}

/* build_list, phase 2: the graph's nodes, owned atoms by ID, then
 *   halo:  the ghosts that send an edge into an owned atom, by ID and position;
 *   shell: the ghosts that can reach an owned atom (the owned energies depend on nodes up to
 *          `blocks` hops away through their complete incoming edges, plus one hop for the
 *          edge-degree embedding; hop[k]: model atom k's hops).
 * Sets node_slot, list_z, owned_nodes; returns the model atom of each node. */
std::vector<int> PairUMAS::order_nodes(const umas_edge_list &pairs, int model_atoms, int owned,
                                       std::vector<int> &hop) {
    const umas_model_info *info = umas_model_get_info(model);
    std::vector<int> order(owned);
    for (int k = 0; k < owned; k++)
        order[k] = k;
    std::sort(order.begin(), order.end(),
              [&](int p, int q) { return atom->tag[slot_of[p]] < atom->tag[slot_of[q]]; });
    hop.clear();
    if (mode == HALO) { /* the ghosts that send an edge, by ID and position (any atom order) */
        std::vector<char> sends(model_atoms, 0);
        for (int e = 0; e < pairs.num_edges; e++)
            sends[pairs.source[e]] = 1;
        size_t first_ghost = order.size();
        for (int k = owned; k < model_atoms; k++)
            if (sends[k])
                order.push_back(k);
        auto key = [&](int k) {
            const double *x = &positions[3 * (size_t)k];
            return std::make_tuple(atom->tag[slot_of[k]], x[0], x[1], x[2]);
        };
        std::sort(order.begin() + (ptrdiff_t)first_ghost, order.end(),
                  [&](int p, int q) { return key(p) < key(q); });
    }
    if (mode == SHELL) {
        hop = receptive_hops(pairs, model_atoms, owned, info->num_layers + 1);
        for (int k = owned; k < model_atoms; k++)
            if (hop[k] <= info->num_layers + 1)
                order.push_back(k);
    }
    node_slot.resize(order.size());
    list_z.resize(order.size());
    for (size_t n = 0; n < order.size(); n++) {
        node_slot[n] = slot_of[order[n]];
        list_z[n] = node_z[order[n]];
    }
    owned_nodes = owned;
    return order;
}

/* build_list, phase 3: the list's edges between nodes, in canonical order (target, source,
 * image): in local mode a ghost source becomes its owner plus an integer periodic image; edges
 * no owned energy depends on are left out. Sets list_source, list_target, list_image. */
void PairUMAS::list_edges(umas_edge_list &pairs, int model_atoms, int owned,
                          const std::vector<int> &order, const std::vector<int> &hop) {
    const umas_model_info *info = umas_model_get_info(model);
    std::vector<int> node_of(model_atoms, -1);
    for (size_t n = 0; n < order.size(); n++)
        node_of[order[n]] = (int)n;
    std::vector<int> owner_of_tag; /* local mode: node of an owned atom ID */
    if (mode == LOCAL) {
        tagint max_tag = 0;
        for (int k = 0; k < model_atoms; k++)
            max_tag = std::max(max_tag, atom->tag[slot_of[k]]);
        owner_of_tag.assign((size_t)max_tag + 1, -1);
        for (int k = 0; k < owned; k++)
            owner_of_tag[atom->tag[slot_of[k]]] = node_of[k];
    }
    struct list_edge {
        int target, source, image[3];
    };
    std::vector<list_edge> edges;
    edges.reserve(pairs.num_edges);
    for (int e = 0; e < pairs.num_edges; e++) {
        int s = pairs.source[e], t = pairs.target[e];
        list_edge edge = {node_of[t], node_of[s], {0, 0, 0}};
        if (mode == SHELL ? hop[t] > info->num_layers : t >= owned)
            continue; /* no energy or message of an owned atom depends on it */
        if (mode == LOCAL && s >= owned) {
            tagint tag = atom->tag[slot_of[s]];
            edge.source = owner_of_tag[tag];
            if (edge.source < 0) {
                umas_edge_list_free(&pairs);
                error->one(FLERR, "pair_style umas: ghost atom ID " + std::to_string(tag) +
                                      " has no owner on this rank; use mode shell");
            }
            const double *xg = &positions[3 * (size_t)s];
            const double *xo = &positions[3 * (size_t)order[edge.source]];
            const double d[3] = {xg[0] - xo[0], xg[1] - xo[1], xg[2] - xo[2]};
            if (!lattice_image(domain, d, edge.image)) {
                umas_edge_list_free(&pairs);
                error->one(FLERR, "pair_style umas: ghost of atom ID " + std::to_string(tag) +
                                      " is not a periodic image of it; use mode shell");
            }
        }
        edges.push_back(edge);
    }
    std::sort(edges.begin(), edges.end(), [](const list_edge &p, const list_edge &q) {
        if (p.target != q.target)
            return p.target < q.target;
        if (p.source != q.source)
            return p.source < q.source;
        return std::lexicographical_compare(p.image, p.image + 3, q.image, q.image + 3);
    });
    list_source.resize(edges.size());
    list_target.resize(edges.size());
    list_image.resize(3 * edges.size());
    for (size_t e = 0; e < edges.size(); e++) {
        list_source[e] = edges[e].source;
        list_target[e] = edges[e].target;
        std::copy(edges[e].image, edges[e].image + 3, &list_image[3 * e]);
    }
}

void PairUMAS::compute(int eflag, int vflag) {
    ev_init(eflag, vflag);
    if (neighbor->ago == 0)
        update_merge("atoms added or removed");
    auto start = std::chrono::steady_clock::now();
    if (neighbor->ago == 0 || every_step || list_context != context)
        build_list();

    /* per step: positions in (O(atoms)), forces, energies and virials out */
    int nodes = (int)node_slot.size();
    double **x = atom->x;
    positions.resize(3 * (size_t)nodes);
    for (int n = 0; n < nodes; n++) {
        int i = node_slot[n];
        check_position(i);
        positions[3 * (size_t)n] = x[i][0];
        positions[3 * (size_t)n + 1] = x[i][1];
        positions[3 * (size_t)n + 2] = x[i][2];
    }
    double cell[9];
    box_cell(domain, cell);
    /* one spare row: a rank without atoms still passes non-null arrays, so that it runs the
     * backward with the others (the halo exchange and the balancing sums are collective) */
    node_energy.resize(nodes + 1);
    node_forces.resize(3 * (size_t)nodes + 3);
    node_virial.resize(vflag_atom ? 6 * (size_t)nodes + 6 : 0);
    seconds_edges += seconds_since(start);

    umas_result result = {};
    result.node_energy = node_energy.data();
    result.forces = node_forces.data();
    result.want_virial = vflag_global;
    result.node_virial = vflag_atom ? node_virial.data() : nullptr;
    umas_error err;
    if (umas_compute_positions(context, positions.data(), cell, &result, &err))
        fail_naming_atoms(err, node_slot);
    seconds_forward += result.seconds_forward;
    seconds_backward += result.seconds_backward;
    calls++;

    double **f = atom->f;
    for (int n = 0; n < nodes; n++)
        for (int k = 0; k < 3; k++)
            f[node_slot[n]][k] += node_forces[3 * (size_t)n + k];
    if (eflag_global)
        eng_vdwl += result.energy;
    if (eflag_atom)
        for (int n = 0; n < owned_nodes; n++)
            eatom[node_slot[n]] += node_energy[n];
    if (vflag_global)
        for (int k = 0; k < 6; k++)
            virial[k] += result.virial[k];
    if (vflag_atom)
        for (int n = 0; n < nodes; n++)
            for (int k = 0; k < 6; k++)
                vatom[node_slot[n]][k] += node_virial[6 * (size_t)n + k];
}

double PairUMAS::memory_usage() {
    double bytes = Pair::memory_usage();
    if (context)
        bytes += (double)umas_context_bytes(context);
    bytes +=
        sizeof(double) * (positions.capacity() + node_energy.capacity() + node_forces.capacity() +
                          node_virial.capacity() + halo_rows.capacity());
    bytes += sizeof(int) *
             (slot_of.capacity() + node_z.capacity() + node_slot.capacity() + list_z.capacity() +
              list_source.capacity() + list_target.capacity() + list_image.capacity());
    return bytes;
}

/* ---------------------------------------------------------------------------------------------
 * The halo exchange (mode halo, umas_system.refresh_ghosts / sum_into_owners): node rows go
 * through halo_rows, one row per LAMMPS slot, and LAMMPS' own pair communication, which runs
 * swap by swap (a later swap may forward ghost rows an earlier one received; periodic images
 * on one rank are swaps with itself).
 * ------------------------------------------------------------------------------------------- */

static void forward_pair_comm(Comm *comm, Pair *pair) {
#if LAMMPS_VERSION_NUMBER >= 20220324
    comm->forward_comm(pair);
#else
    comm->forward_comm_pair(pair);
#endif
}

static void reverse_pair_comm(Comm *comm, Pair *pair) {
#if LAMMPS_VERSION_NUMBER >= 20220324
    comm->reverse_comm(pair);
#else
    comm->reverse_comm_pair(pair);
#endif
}

/* halo_rows: a row of `width` doubles for every slot, owned and ghost. */
void PairUMAS::halo_slots(int width) {
    if (width != comm_forward || (int)node_slot.size() > atom->nlocal + atom->nghost)
        error->one(FLERR, "pair_style umas: internal error: halo exchange of " +
                              std::to_string(width) + " doubles per atom, set up for " +
                              std::to_string(comm_forward));
    halo_width = width;
    halo_rows.resize((size_t)(atom->nlocal + atom->nghost) * width);
}

/* rows [nodes][width]: every ghost node's row from its owner (forward communication). */
void PairUMAS::refresh_ghosts(double *rows, int nodes, int width, void *self) {
    PairUMAS *pair = static_cast<PairUMAS *>(self);
    pair->halo_slots(width);
    const std::vector<int> &slot = pair->node_slot;
    double *slot_rows = pair->halo_rows.data();
    for (int n = 0; n < pair->owned_nodes; n++)
        std::copy(rows + (size_t)n * width, rows + (size_t)(n + 1) * width,
                  slot_rows + (size_t)slot[n] * width);
    forward_pair_comm(pair->comm, pair);
    for (int n = pair->owned_nodes; n < nodes; n++)
        std::copy(slot_rows + (size_t)slot[n] * width, slot_rows + (size_t)(slot[n] + 1) * width,
                  rows + (size_t)n * width);
}

/* rows [nodes][width]: every ghost node's row added into its owner's (reverse communication;
 * the core zeroes the ghost rows afterwards). Slots that are no node send zeros. */
void PairUMAS::sum_into_owners(double *rows, int nodes, int width, void *self) {
    PairUMAS *pair = static_cast<PairUMAS *>(self);
    pair->halo_slots(width);
    const std::vector<int> &slot = pair->node_slot;
    double *slot_rows = pair->halo_rows.data();
    std::fill(pair->halo_rows.begin(), pair->halo_rows.end(), 0.0);
    for (int n = 0; n < nodes; n++)
        std::copy(rows + (size_t)n * width, rows + (size_t)(n + 1) * width,
                  slot_rows + (size_t)slot[n] * width);
    reverse_pair_comm(pair->comm, pair);
    for (int n = 0; n < pair->owned_nodes; n++)
        std::copy(slot_rows + (size_t)slot[n] * width, slot_rows + (size_t)(slot[n] + 1) * width,
                  rows + (size_t)n * width);
}

/* Node features are invariant under translation, so the periodic shift (pbc) plays no part. */
int PairUMAS::pack_forward_comm(int n, int *list, double *buf, int, int *) {
    for (int i = 0; i < n; i++) {
        const double *row = &halo_rows[(size_t)list[i] * halo_width];
        std::copy(row, row + halo_width, buf + (size_t)i * halo_width);
    }
    return n * halo_width;
}

void PairUMAS::unpack_forward_comm(int n, int first, double *buf) {
    std::copy(buf, buf + (size_t)n * halo_width, &halo_rows[(size_t)first * halo_width]);
}

int PairUMAS::pack_reverse_comm(int n, int first, double *buf) {
    std::copy(&halo_rows[(size_t)first * halo_width],
              &halo_rows[(size_t)first * halo_width] + (size_t)n * halo_width, buf);
    return n * halo_width;
}

void PairUMAS::unpack_reverse_comm(int n, int *list, double *buf) {
    for (int i = 0; i < n; i++) {
        double *row = &halo_rows[(size_t)list[i] * halo_width];
        for (int k = 0; k < halo_width; k++)
            row[k] += buf[(size_t)i * halo_width + k];
    }
}

static Pair *create_pair_umas(LAMMPS *lmp) {
    return new PairUMAS(lmp);
}

void umas_register_pair_style(LAMMPS *lmp) {
    (*lmp->force->pair_map)["umas"] = &create_pair_umas;
}
