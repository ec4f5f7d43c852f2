/*
 * extxyz.h - reader for the first frame of an ASE extended XYZ file.
 *
 *     line 1: number of atoms N
 *     line 2: key=value pairs, values optionally in double quotes; keys are case-insensitive:
 *             Lattice="ax ay az bx by bz cx cy cz"   (rows = lattice vectors, Angstrom)
 *             Properties=species:S:1:pos:R:3:...     (name:type:columns; the default is
 *                                                     species:S:1:pos:R:3)
 *             pbc="T T F"                            (default T T T with a Lattice, else F F F)
 *     N lines: one atom each, columns as given by Properties (species by chemical symbol; a file
 *             without species but with Z:I:1 is read from Z).
 */
#ifndef UMAS_EXTXYZ_H
#define UMAS_EXTXYZ_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct extxyz_frame {
    int num_atoms;
    int *atomic_numbers; /* [N] */
    double *positions;   /* [N][3] Cartesian, Angstrom */
    double cell[9];      /* [3][3] rows = lattice vectors; zero when has_cell == 0 */
    int has_cell;        /* 1 when the comment line has a Lattice */
    int pbc[3];          /* 1 = periodic along that lattice vector */
} extxyz_frame;

/* Reads the first frame of path into *out (which it overwrites; free it with extxyz_free).
 * Returns 0 on success; otherwise non-zero with a message (naming the line) in err[errlen]
 * and *out empty. */
int extxyz_read(const char *path, extxyz_frame *out, char *err, size_t errlen);
void extxyz_free(extxyz_frame *frame);

#ifdef __cplusplus
}
#endif

#endif /* UMAS_EXTXYZ_H */
