/* umas_plugin.cpp - entry point of libumasplugin.so for LAMMPS built with the PLUGIN package
 * (modern LAMMPS only; lammpsplugin.h does not exist in Debian's 29 Sep 2021):
 *   plugin load libumasplugin.so
 *   pair_style umas ...
 * or put the directory holding libumasplugin.so on LAMMPS_PLUGIN_PATH (auto-loaded).
 */
#include "lammpsplugin.h"
#include "version.h"

#include "pair_umas.h"

using namespace LAMMPS_NS;

static Pair *umas_creator(LAMMPS *lmp) {
    return new PairUMAS(lmp);
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc) {
    lammpsplugin_t plugin;
    lammpsplugin_regfunc register_plugin = (lammpsplugin_regfunc)regfunc;

    plugin.version = LAMMPS_VERSION; // the loader notes a mismatch with the host's version
    plugin.style = "pair";
    plugin.name = "umas";
    plugin.info = "umas: fairchem UMA-S potentials (native C core)";
    plugin.author = "umas developers";
    plugin.creator.v1 = (lammpsplugin_factory1 *)&umas_creator;
    plugin.handle = handle;
    (*register_plugin)(&plugin, lmp);
}
