/*
 * umas.h - public C API of the umas engine: fairchem's UMA-S (eSCN-MD + MoLE) potentials.
 *
 * Life cycle:
 *
 *     umas_error err;
 *     umas_model *model = umas_model_load("uma.safetensors", &err);   // the file: all experts
 *     umas_system sys = {.task = "omat", .charge = 0, .spin = 0,
 *                        .num_atoms = n, .atomic_numbers = z};
 *     umas_options opt = {.backend = "general", .device = "cpu"};
 *     umas_context *ctx = umas_context_create(model, &sys, &opt, &err);  // MoLE merge, once
 *     umas_graph graph = {...};             // nodes and directed edges, built by the caller
 *     umas_result result = {.node_energy = per_atom};   // outputs the caller wants
 *     umas_compute(ctx, &graph, &result, &err);          // every timestep
 *     umas_context_free(ctx);
 *     umas_model_free(model);
 *
 * Every function that can fail returns NULL or a non-zero status and writes a message that says
 * what went wrong and what to do into *err (err may be NULL). Nothing here prints or exits.
 * Units are fairchem's: eV, Angstrom, eV/Angstrom.
 *
 * A model may be shared by several contexts; a context is used by one thread at a time.
 */
#ifndef UMAS_H
#define UMAS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct umas_error {
    char message[512];
    /* the nodes (atoms, as indexed in the caller's graph or structure) the error is about, e.g.
     * two atoms on top of each other, so that a caller can name them its own way; -1 when none */
    int atom[2];
} umas_error;

/* ---------------------------------------------------------------------------------------------
 * Model file: a safetensors file written by umas-convert (docs/model-format.md).
 * ------------------------------------------------------------------------------------------- */

typedef struct umas_model umas_model;

typedef struct umas_model_info {
    const char *model_id;   /* e.g. "UMA-S-1.2.1" */
    int sphere_channels;    /* C */
    int hidden_channels;    /* H */
    int edge_channels;      /* Ce, also the radial MLP hidden width */
    int lmax, mmax;         /* 2, 2 (the only supported values) */
    int num_layers;         /* eSCN-MD blocks */
    int num_distance_basis; /* B Gaussians */
    int num_experts;        /* K, backbone MoLE experts */
    int max_num_elements;   /* rows of the element embeddings (atomic numbers 1..this-1) */
    int max_neighbors;      /* fairchem's per-atom neighbour limit (section 1.3 of the spec) */
    double cutoff;          /* Angstrom */
    int num_tasks;          /* tasks (datasets) the model can be run as */
    /* l = 0 channels balanced to the system's charge / spin after every block (model-spec
     * section 8; UMA-S 1.2: 3 and 0; 1.1: none) */
    int num_charge_balanced, num_spin_balanced;
} umas_model_info;

/* Loads and validates a model file (every tensor's name, dtype and shape). */
umas_model *umas_model_load(const char *path, umas_error *err);
void umas_model_free(umas_model *model);

const umas_model_info *umas_model_get_info(const umas_model *model);
/* Name of task i, 0 <= i < num_tasks, e.g. "omat", "omol". */
const char *umas_model_task_name(const umas_model *model, int i);
/* Bytes of the model's tensors (all experts). */
size_t umas_model_bytes(const umas_model *model);

/* CUDA devices visible to this build (0 without CUDA support or without a GPU). */
int umas_cuda_device_count(void);

/* Bytes in use on the current CUDA device, by every process (the driver's total - free): a
 * benchmark's peak-memory reading. 0 without CUDA support or without a GPU. */
size_t umas_cuda_memory_in_use(void);

/* Threads the CPU backends use (OpenBLAS; set OPENBLAS_NUM_THREADS to change). */
int umas_cpu_threads(void);

/* fairchem's default spin multiplicity for a task: 1 for omol, 0 for the others. */
int umas_default_spin(const char *task);

/* ---------------------------------------------------------------------------------------------
 * Context: the model specialised (MoLE-merged) for one system and one backend.
 * ------------------------------------------------------------------------------------------- */

typedef struct umas_context umas_context;

/* What the MoLE merge depends on. Describes the WHOLE system (all MPI ranks), not a subdomain. */
typedef struct umas_system {
    const char *task;          /* one of umas_model_task_name() */
    int charge;                /* total charge, -100..100 */
    int spin;                  /* spin multiplicity, 0..100 (see umas_default_spin) */
    int num_atoms;             /* atoms in the whole system, > 0 */
    const int *atomic_numbers; /* [num_atoms], or NULL when element_counts is given */
    const int *element_counts; /* [max_num_elements] atoms per atomic number, or NULL */

    /* Several processes (MPI ranks) sharing the system, each with a part of it in its graph:
     * a function that sums values[count] over all of them, in place, e.g.
     * MPI_Allreduce(MPI_IN_PLACE, values, count, MPI_DOUBLE, MPI_SUM, comm), and its `data`.
     * Every process then calls umas_compute / umas_compute_positions together (collectively,
     * also a process whose graph is empty), and system-wide sums (the charge/spin balancing of
     * UMA-S 1.2: model-spec section 8) run over the energy nodes of all processes, which must
     * hold every atom of the system exactly once. NULL: this process holds the whole system. */
    void (*sum_over_processes)(double *values, int count, void *data);
    void *sum_data;

    /* Halo exchange, for processes that each hold a ghost shell of one cutoff only (LAMMPS'
     * domain decomposition, pair_style umas mode halo). When set, nodes [num_energy_nodes, N)
     * of every graph are ghosts, each a copy of an energy node of some process (possibly of
     * this one: a periodic image), and the graph has only the edges into energy nodes.
     *   refresh_ghosts(rows, N, width, data): before every block, on the node features
     *     rows [N][width] (width = 9 C): overwrite every ghost row with its atom's row.
     *   sum_into_owners(rows, N, width, data): after that block's backward, on the adjoints
     *     rows [N][width]: add every ghost row into its atom's row (the engine then zeroes the
     *     ghost rows).
     * Collective like sum_over_processes (the same calls on every process, also one whose
     * graph is empty: every process asks for the same outputs of umas_result, so that all of
     * them run the backward or none). Both or neither; NULL: no exchange (one process, or
     * mode shell). */
    void (*refresh_ghosts)(double *rows, int num_nodes, int width, void *data);
    void (*sum_into_owners)(double *rows, int num_nodes, int width, void *data);
    void *halo_data;
} umas_system;

typedef struct umas_options {
    /* "general" (default when NULL), "umas_fast" (alias "umas_fast_pytorch") or, on cuda only,
     * "umas_fast_gpu" (umas_fast that keeps each block's edge activations for the backward when
     * they fit in GPU memory instead of recomputing them; set UMAS_CUDA_RECOMPUTE=1 to force
     * the recompute path) */
    const char *backend;
    const char *device; /* "cpu" (default when NULL) or "cuda" (float32, current CUDA device) */
    /* Arithmetic of the matrix products. NULL or "default": the device's exact default, "fp64"
     * on the CPU, "fp32" on the GPU. On the GPU also "3xtf32" (tensor cores, each product split
     * into high and low TF32 parts: float32 accuracy, within the same bounds against float64; on
     * Hopper GPUs umas's own tensor-core kernel, faster than fp32), "ozaki" (float32
     * accuracy from int8 tensor-core products: each operand row in three int8 slices with one
     * power-of-two scale, six products summed exactly in int32; Hopper GPUs only, elsewhere it
     * computes as fp32) and "tf32" (one TF32 product: fastest, forces to about 1e-2 eV/A). */
    const char *precision;
} umas_options;

umas_context *umas_context_create(const umas_model *model, const umas_system *system,
                                  const umas_options *options, umas_error *err);
void umas_context_free(umas_context *ctx);

/* Expert mixing coefficients of the merge: [num_experts]. */
const double *umas_context_expert_coefficients(const umas_context *ctx);
/* Bytes held by the context (merged weights and work buffers). */
size_t umas_context_bytes(const umas_context *ctx);

/* ---------------------------------------------------------------------------------------------
 * Compute: one energy evaluation on a graph supplied by the caller.
 * ------------------------------------------------------------------------------------------- */

/* Nodes are atoms; edge e carries a message from node edge_source[e] (j, the sender) to node
 * edge_target[e] (i, the receiver). edge_vector[e] = r_j - r_i + shift, the vector from the
 * receiver to the sender's (periodic image) position, exactly as fairchem defines it. Every
 * pair within the cutoff must appear in both directions. */
typedef struct umas_graph {
    int num_nodes;             /* N */
    int num_energy_nodes;      /* nodes [0, num_energy_nodes) count toward the energy */
    const int *atomic_numbers; /* [N] */
    int num_edges;             /* E */
    const int *edge_source;    /* [E] */
    const int *edge_target;    /* [E] */
    const double *edge_vector; /* [E][3] Angstrom */
} umas_graph;

/* What umas_compute returns. Set the optional pointers to arrays for the outputs you want; the
 * backward pass (forces, virial) runs only when one of its outputs is asked for. */
typedef struct umas_result {
    double energy;       /* out: eV, sum over energy nodes, with element references */
    double *node_energy; /* out, optional [N]: eV per node (0 for nodes past num_energy_nodes) */

    /* Gradients of `energy` with respect to the edge vectors (forces = -dE/dr). */
    double *forces;        /* out, optional [N][3] eV/A: -dE/dr_n through every edge touching n
                            * (ghost nodes receive the forces of their edges; sum them onto the
                            * atoms they image, e.g. LAMMPS' reverse communication) */
    double *edge_gradient; /* out, optional [E][3] eV/A: dE/d edge_vector[e] */
    int want_virial;       /* in: 1 to fill virial */
    double virial[6];      /* out: W = -sum_e sym(r_e (x) dE/dr_e), eV, LAMMPS order
                            * xx yy zz xy xz yz. fairchem's stress = -W / volume. */
    double *node_virial;   /* out, optional [N][6]: W split half to each end of every edge */

    double seconds_forward;  /* out: wall time of the forward pass */
    double seconds_backward; /* out: wall time of the backward pass (0 without gradients) */
} umas_result;

int umas_compute(umas_context *ctx, const umas_graph *graph, umas_result *result, umas_error *err);

/* ---------------------------------------------------------------------------------------------
 * Neighbour-list route, for molecular dynamics: hand over the edges when your neighbour list is
 * rebuilt (pairs out to cutoff + skin, each with the periodic image of its source), then only
 * positions (and the cell) every step. The backend forms edge_vector = x[source] + image . cell
 * - x[target] itself and drops the edges longer than the cutoff (on the GPU with device cuda),
 * so the caller's work per step is O(atoms). Results equal umas_compute on the graph of the
 * edges within the cutoff, in list order.
 *
 * fairchem's max_neighbors rule (umas_limit_neighbors) is not applied on this route: a caller
 * whose atoms can have more than max_neighbors neighbours within the cutoff uses umas_compute.
 * ------------------------------------------------------------------------------------------- */

typedef struct umas_neighbors {
    int num_nodes;             /* N */
    int num_energy_nodes;      /* nodes [0, num_energy_nodes) count toward the energy */
    const int *atomic_numbers; /* [N] */
    int num_edges;             /* E, edges of the list (within cutoff + skin) */
    const int *edge_source;    /* [E] */
    const int *edge_target;    /* [E] */
    const int *edge_image;     /* [E][3] integer image of the source, or NULL (all zero) */
} umas_neighbors;

/* Copies the list into the context (and onto the GPU). Call after every neighbour-list build. */
int umas_set_neighbors(umas_context *ctx, const umas_neighbors *neighbors, umas_error *err);

/* One evaluation at `positions` [N][3] (Angstrom) with the last list. cell: rows are the lattice
 * vectors, the current ones (they may change every step, e.g. NPT); NULL when no image is
 * non-zero. result as for umas_compute; result->edge_gradient, when set, is [E][3] over the
 * list, zero for edges beyond the cutoff. */
int umas_compute_positions(umas_context *ctx, const double *positions, const double cell[9],
                           umas_result *result, umas_error *err);

/* ---------------------------------------------------------------------------------------------
 * Utilities for callers that do not have a neighbour list of their own (umas-eval, tests).
 * ------------------------------------------------------------------------------------------- */

/* Chemical symbol <-> atomic number (1..118). Returns 0 / NULL when unknown. */
int umas_element_number(const char *symbol);
const char *umas_element_symbol(int atomic_number);

/* Directed edges of a (periodic) structure, in fairchem's convention. */
typedef struct umas_edge_list {
    int num_edges;
    int *source;     /* [E] j */
    int *target;     /* [E] i */
    int *cell_shift; /* [E][3] integer image n of the source: its image is at r_j + n . cell */
    double *vector;  /* [E][3] r_j - r_i + n . cell */
} umas_edge_list;

/* All ordered pairs (j, i, n) with 0 < |r_j + n.cell - r_i| <= cutoff, over every periodic image
 * along the periodic directions (any triclinic cell; cells smaller than the cutoff included).
 * cell rows are the lattice vectors; it is ignored along non-periodic directions. Fails with
 * "atoms i and j are on top of each other" when two atoms (or images) are at distance 0. */
int umas_build_edges(int num_atoms, const double *positions, const double cell[9], const int pbc[3],
                     double cutoff, umas_edge_list *edges, umas_error *err);
/* The same edges into the first num_targets atoms only (0 <= num_targets <= num_atoms; sources
 * are all atoms), in the same order: umas_build_edges's list without the edges whose target is
 * num_targets or later, for the cost of those targets alone (pair_umas: owned atoms first, then
 * the ghosts, which are only sources in its local mode). Atoms on top of each other are found
 * when one of them is a target. */
int umas_build_edges_to(int num_atoms, int num_targets, const double *positions,
                        const double cell[9], const int pbc[3], double cutoff,
                        umas_edge_list *edges, umas_error *err);
void umas_edge_list_free(umas_edge_list *edges);

/* fairchem's max_neighbors rule (spec section 1.3, enforce_strictly = False): if some target atom
 * has more than max_neighbors incoming edges, keep for each such atom the edges whose squared
 * length is <= (squared length of its (max_neighbors+1)-th nearest) + 0.01 A^2; other atoms keep
 * all; max_neighbors <= 0 means no limit. Removes edges in place, keeps the order of the rest.
 * Returns how many atoms lost edges, or -1 when out of memory. */
int umas_limit_neighbors(umas_edge_list *edges, int num_atoms, int max_neighbors);

#ifdef __cplusplus
}
#endif

#endif /* UMAS_H */
