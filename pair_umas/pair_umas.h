/* pair_umas.h - `pair_style umas`: fairchem's UMA-S potentials through the umas C core.
 *
 *   units metal
 *   pair_style umas model.safetensors task omat [charge 0] [spin 0] [backend general]
 *              [device cpu] [precision default|fp32|3xtf32|ozaki|tf32]
 *              [mode auto|local|halo|shell]
 *   pair_coeff * * Cu O            # LAMMPS type -> element (NULL: not this style's, hybrid)
 *
 * The style builds its own neighbour list from the atom and ghost positions (no neighbor list
 * request) when LAMMPS rebuilds its lists: every pair within cutoff + skin, handed to the core
 * once (umas_set_neighbors); every step only positions and the box go in
 * (umas_compute_positions), the core drops pairs beyond the cutoff, forces come back per atom.
 *   local (auto with one rank): nodes are the owned atoms; a ghost source is mapped to its
 *         owner by tag and an integer periodic image, so every periodic image is one edge.
 *   halo (auto with several ranks): LAMMPS' ghost shell of cutoff + skin; nodes are the owned
 *         atoms, then the ghosts that send an edge into them; edges only into owned atoms.
 *         Before every block the ghosts' node features come from their owners (forward_comm of
 *         9 C doubles per atom), after its backward their adjoints go back to the owners
 *         (reverse_comm); ghost forces return through LAMMPS' reverse communication.
 *   shell (the reference for halo): the ghost shell is widened to (blocks + 1) x cutoff + skin,
 *         the graph spans owned and ghost atoms and every block runs on the ghosts too, no
 *         exchange; energy counts the owned atoms only. Exact, but the shell is large.
 */
#ifndef LMP_PAIR_UMAS_H
#define LMP_PAIR_UMAS_H

#include "pair.h"
#include "umas.h"

#include <string>
#include <vector>

namespace LAMMPS_NS {

class PairUMAS : public Pair {
  public:
    explicit PairUMAS(class LAMMPS *);
    ~PairUMAS() override;
    void compute(int, int) override;
    void settings(int, char **) override;
    void coeff(int, char **) override;
    void init_style() override;
    double init_one(int, int) override;
    double memory_usage() override;

    // halo exchange (mode halo): rows of halo_rows, one per LAMMPS slot
    int pack_forward_comm(int n, int *list, double *buf, int pbc_flag, int *pbc) override;
    void unpack_forward_comm(int n, int first, double *buf) override;
    int pack_reverse_comm(int n, int first, double *buf) override;
    void unpack_reverse_comm(int n, int *list, double *buf) override;

  private:
    enum Mode { AUTO, LOCAL, HALO, SHELL };

    // pair_style arguments
    std::string model_file, task, backend, device, precision;
    int charge, spin;
    bool spin_given;
    Mode requested_mode, mode;

    umas_model *model;
    umas_context *context;
    std::vector<int> type_to_z;     // [ntypes + 1], 0 = not handled by this style
    std::vector<int> merged_counts; // composition of the last MoLE merge (all ranks)
    bool banner_printed;

    // neighbour list (built at LAMMPS' rebuilds, see build_list) and per-step arrays
    umas_context *list_context;         // the context the list was handed to
    std::vector<int> slot_of;           // [model atoms] LAMMPS slot (owned first, then ghosts)
    std::vector<int> node_z;            // [model atoms]
    std::vector<int> node_slot, list_z; // [nodes] LAMMPS slot and atomic number of each node
    int owned_nodes;                    // nodes [0, owned_nodes) are owned atoms
    std::vector<int> list_source, list_target, list_image; // [E], [E], [E][3]
    bool every_step;               // max_neighbors may cut edges: exact list every step
    bool warned_max_neighbors;     // the max_neighbors warning was printed
    std::vector<double> positions; // [model atoms or nodes][3]
    std::vector<double> node_energy, node_forces, node_virial; // [nodes], [nodes][3], [nodes][6]
    int halo_width;                // doubles per atom of the halo exchange: 9 C
    std::vector<double> halo_rows; // [nlocal + nghost][halo_width] what forward/reverse_comm move

    // where the time went (printed when the style is destroyed)
    double seconds_edges, seconds_forward, seconds_backward;
    long calls, list_builds;

    void allocate();
    void fail(const std::string &message);
    void update_merge(const char *why);
    void print_banner();
    int gather_atoms();
    void check_position(int slot);
    void fail_naming_atoms(const umas_error &err, const std::vector<int> &slot);
    void build_list();
    umas_edge_list candidate_pairs(int model_atoms, int owned);
    std::vector<int> order_nodes(const umas_edge_list &pairs, int model_atoms, int owned,
                                 std::vector<int> &hop);
    void list_edges(umas_edge_list &pairs, int model_atoms, int owned,
                    const std::vector<int> &order, const std::vector<int> &hop);
    // umas_system.refresh_ghosts / sum_into_owners (self: this style) through LAMMPS' comm
    static void refresh_ghosts(double *rows, int nodes, int width, void *self);
    static void sum_into_owners(double *rows, int nodes, int width, void *self);
    void halo_slots(int width);
};

} // namespace LAMMPS_NS

/* Registers `pair_style umas` with a LAMMPS instance (launcher and plugin routes). */
void umas_register_pair_style(LAMMPS_NS::LAMMPS *lmp);

#endif
