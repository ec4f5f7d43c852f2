/* pair_umas.h - `pair_style umas`: fairchem's UMA-S potentials through the umas C core.
 *
 *   units metal
 *   pair_style umas model.safetensors task omat [charge 0] [spin 0] [backend general]
 *              [device cpu] [mode auto|local|shell]
 *   pair_coeff * * Cu O            # LAMMPS type -> element (NULL: not this style's, hybrid)
 *
 * The style builds the graph itself from the atom and ghost positions (no neighbor list
 * request): every pair within the model cutoff, edge vector = x_source - x_target.
 *   local (one rank): nodes are the owned atoms; a ghost source is mapped to its owner by tag,
 *         its edge vector still comes from the ghost position, so every periodic image is one
 *         edge. Forces go to the slot the edge points to; LAMMPS folds ghosts onto owners.
 *   shell (several ranks): the ghost shell is widened to (blocks + 1) x cutoff + skin, the
 *         graph spans owned and ghost atoms, energy counts the owned atoms only, ghost forces
 *         return through LAMMPS' reverse communication. Exact, not yet efficient.
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

  private:
    enum Mode { AUTO, LOCAL, SHELL };

    // pair_style arguments
    std::string model_file, task, backend, device;
    int charge, spin;
    bool spin_given;
    Mode requested_mode, mode;

    umas_model *model;
    umas_context *context;
    std::vector<int> type_to_z;     // [ntypes + 1], 0 = not handled by this style
    std::vector<int> merged_counts; // composition of the last MoLE merge (all ranks)
    bool banner_printed;

    // per step work arrays
    std::vector<int> slot_of;      // [model atoms] LAMMPS slot (owned first, then ghosts)
    std::vector<int> node_z;       // [nodes]
    std::vector<double> positions; // [model atoms][3]
    std::vector<int> owner_of_tag; // [max tag + 1] node of an owned atom, local mode
    std::vector<int> edge_source, edge_target, edge_source_slot, edge_target_slot;
    std::vector<double> edge_vector, edge_gradient, node_energy;

    // where the time went (printed when the style is destroyed)
    double seconds_edges, seconds_forward, seconds_backward;
    long calls;

    void allocate();
    void fail(const std::string &message);
    void update_merge(const char *why);
    void print_banner();
    int gather_atoms();
    void build_graph(int model_atoms, int owned);
};

} // namespace LAMMPS_NS

/* Registers `pair_style umas` with a LAMMPS instance (launcher and plugin routes). */
void umas_register_pair_style(LAMMPS_NS::LAMMPS *lmp);

#endif
