/*
 * graph.c - directed neighbour list of a (periodic) structure in fairchem's convention (spec
 * section 1.2) and fairchem's max_neighbors rule (spec section 1.3).
 *
 * Method (umas_build_edges): fractional coordinates f = r . B^-1 in a basis B whose rows are the
 * lattice vectors along periodic directions, completed by orthonormal vectors along the
 * non-periodic ones. Two points within the cutoff rc differ by at most delta_a = rc / h_a in
 * fractional coordinate a, where h_a = |det B| / |B_b x B_c| is the height of the cell
 * perpendicular to the other two rows. Every periodic image of every atom whose fractional
 * coordinates fall within delta of the atoms' fractional bounding box becomes a "ghost"; ghosts
 * are binned on a grid (in fractional coordinates) whose bins are at least delta wide, so the
 * neighbours of an atom lie in its bin and the 26 around it. The final test uses the Cartesian
 * edge vector r_j - r_i + n . cell. Nothing assumes the atoms lie inside the cell, and any
 * triclinic cell works, including cells smaller than the cutoff (many images of one pair).
 */
#include "umas.h"

#include "error.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* At most this many ghosts (periodic images of atoms near the structure); far more than any
 * sensible input needs (a 1e6-atom box has ~1.2e6). */
#define MAX_GHOSTS ((double)(1 << 27))

static void cross(const double a[3], const double b[3], double out[3]) {
    out[0] = a[1] * b[2] - a[2] * b[1];
    out[1] = a[2] * b[0] - a[0] * b[2];
    out[2] = a[0] * b[1] - a[1] * b[0];
}

static double norm(const double a[3]) {
    return sqrt(a[0] * a[0] + a[1] * a[1] + a[2] * a[2]);
}

/* m is not const: C11 does not convert double (*)[3] to const double (*)[3]. */
static double det3(double m[3][3]) {
    return m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) -
           m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) +
           m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
}

/* basis[3][3]: rows = the cell rows along periodic directions, completed by orthonormal vectors
 * perpendicular to them along the non-periodic directions (identity when nothing is periodic).
 * Fails when the periodic rows are not finite or not linearly independent. */
static int make_basis(const double cell[9], const int periodic[3], double basis[3][3],
                      umas_error *err) {
    int p[3] = {0, 0, 0}, np = 0, q[3] = {0, 0, 0}, nq = 0;
    for (int a = 0; a < 3; a++) {
        if (periodic[a]) {
            p[np++] = a;
        } else {
            q[nq++] = a;
        }
    }
    for (int k = 0; k < np; k++) {
        for (int c = 0; c < 3; c++) {
            if (!isfinite(cell[3 * p[k] + c])) {
                return umas_fail(err, "cell vector %d (periodic) is not finite", p[k]);
            }
        }
    }
    memset(basis, 0, 9 * sizeof(double));
    if (np == 0) {
        basis[0][0] = basis[1][1] = basis[2][2] = 1.0;
        return 0;
    }
    for (int k = 0; k < np; k++) {
        memcpy(basis[p[k]], cell + 3 * p[k], 3 * sizeof(double));
    }
    if (np == 3) {
        double scale = norm(basis[0]) * norm(basis[1]) * norm(basis[2]);
        double det = det3(basis);
        if (!(scale > 0) || !(fabs(det) > 1e-10 * scale)) {
            return umas_fail(err,
                             "the cell is singular (det = %g): its three periodic lattice "
                             "vectors must be linearly independent",
                             det);
        }
        return 0;
    }
    if (np == 2) {
        double n[3];
        const double *u = basis[p[0]], *v = basis[p[1]];
        cross(u, v, n);
        double len = norm(n), scale = norm(u) * norm(v);
        if (!(scale > 0) || !(len > 1e-10 * scale)) {
            return umas_fail(err,
                             "the cell is singular: periodic lattice vectors %d and %d are zero "
                             "or parallel",
                             p[0], p[1]);
        }
        for (int c = 0; c < 3; c++) {
            basis[q[0]][c] = n[c] / len;
        }
        return 0;
    }
    /* np == 1: two unit vectors perpendicular to the periodic one and to each other. */
    const double *u = basis[p[0]];
    double len = norm(u);
    if (!(len > 0)) {
        return umas_fail(err, "the cell is singular: periodic lattice vector %d is zero", p[0]);
    }
    int k = 0; /* the Cartesian axis least aligned with u */
    for (int c = 1; c < 3; c++) {
        if (fabs(u[c]) < fabs(u[k])) {
            k = c;
        }
    }
    double e[3] = {0, 0, 0}, v[3], w[3], uh[3] = {u[0] / len, u[1] / len, u[2] / len};
    e[k] = 1.0;
    cross(uh, e, v);
    double lv = norm(v);
    for (int c = 0; c < 3; c++) {
        v[c] /= lv;
    }
    cross(uh, v, w);
    memcpy(basis[q[0]], v, sizeof v);
    memcpy(basis[q[1]], w, sizeof w);
    return 0;
}

/* inv[3][3] = m^-1 (m is known to be invertible). */
static void invert3(double m[3][3], double inv[3][3]) {
    double d = det3(m);
    inv[0][0] = (m[1][1] * m[2][2] - m[1][2] * m[2][1]) / d;
    inv[0][1] = (m[0][2] * m[2][1] - m[0][1] * m[2][2]) / d;
    inv[0][2] = (m[0][1] * m[1][2] - m[0][2] * m[1][1]) / d;
    inv[1][0] = (m[1][2] * m[2][0] - m[1][0] * m[2][2]) / d;
    inv[1][1] = (m[0][0] * m[2][2] - m[0][2] * m[2][0]) / d;
    inv[1][2] = (m[0][2] * m[1][0] - m[0][0] * m[1][2]) / d;
    inv[2][0] = (m[1][0] * m[2][1] - m[1][1] * m[2][0]) / d;
    inv[2][1] = (m[0][1] * m[2][0] - m[0][0] * m[2][1]) / d;
    inv[2][2] = (m[0][0] * m[1][1] - m[0][1] * m[1][0]) / d;
}

/* Sorts a[n] ascending (insertion sort for short runs, quicksort otherwise). */
static void sort_u64(uint64_t *a, size_t n) {
    while (n > 24) {
        uint64_t x = a[0], y = a[n / 2], z = a[n - 1]; /* median of three as pivot */
        uint64_t pivot = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
        size_t i = 0, j = n - 1;
        for (;;) {
            while (a[i] < pivot) {
                i++;
            }
            while (a[j] > pivot) {
                j--;
            }
            if (i >= j) {
                break;
            }
            uint64_t t = a[i];
            a[i++] = a[j];
            a[j--] = t;
        }
        /* [0, j] <= pivot <= [j+1, n): recurse into the smaller part, loop on the larger */
        size_t left = j + 1;
        if (left < n - left) {
            sort_u64(a, left);
            a += left;
            n -= left;
        } else {
            sort_u64(a + left, n - left);
            n = left;
        }
    }
    for (size_t i = 1; i < n; i++) {
        uint64_t v = a[i];
        size_t j = i;
        for (; j > 0 && a[j - 1] > v; j--) {
            a[j] = a[j - 1];
        }
        a[j] = v;
    }
}

/* Grows the four arrays of *edges to hold at least need edges. */
static int reserve_edges(umas_edge_list *edges, size_t *capacity, size_t need) {
    if (need <= *capacity) {
        return 0;
    }
    size_t cap = *capacity > 0 ? *capacity : 1024;
    while (cap < need) {
        cap *= 2;
    }
    if (cap > (size_t)INT32_MAX) {
        cap = (size_t)INT32_MAX;
    }
    int *s = realloc(edges->source, cap * sizeof(int));
    if (s != NULL) {
        edges->source = s;
    }
    int *t = realloc(edges->target, cap * sizeof(int));
    if (t != NULL) {
        edges->target = t;
    }
    int *n = realloc(edges->cell_shift, cap * 3 * sizeof(int));
    if (n != NULL) {
        edges->cell_shift = n;
    }
    double *v = realloc(edges->vector, cap * 3 * sizeof(double));
    if (v != NULL) {
        edges->vector = v;
    }
    if (s == NULL || t == NULL || n == NULL || v == NULL) {
        return -1;
    }
    *capacity = cap;
    return 0;
}

void umas_edge_list_free(umas_edge_list *edges) {
    if (edges == NULL) {
        return;
    }
    free(edges->source);
    free(edges->target);
    free(edges->cell_shift);
    free(edges->vector);
    memset(edges, 0, sizeof *edges);
}

int umas_build_edges(int num_atoms, const double *positions, const double cell[9], const int pbc[3],
                     double cutoff, umas_edge_list *edges, umas_error *err) {
    return umas_build_edges_to(num_atoms, num_atoms, positions, cell, pbc, cutoff, edges, err);
}

int umas_build_edges_to(int num_atoms, int num_targets, const double *positions,
                        const double cell[9], const int pbc[3], double cutoff,
                        umas_edge_list *edges, umas_error *err) {
    if (edges == NULL) {
        return umas_fail(err, "umas_build_edges: edges is NULL");
    }
    memset(edges, 0, sizeof *edges);
    if (num_atoms < 0) {
        return umas_fail(err, "umas_build_edges: num_atoms = %d is negative", num_atoms);
    }
    if (num_targets < 0 || num_targets > num_atoms) {
        return umas_fail(err, "umas_build_edges: num_targets = %d is not in [0, %d]", num_targets,
                         num_atoms);
    }
    if (!(cutoff > 0) || !isfinite(cutoff)) {
        return umas_fail(err, "umas_build_edges: the cutoff (%g) must be positive and finite",
                         cutoff);
    }
    if (num_atoms == 0) {
        return 0;
    }
    if (positions == NULL) {
        return umas_fail(err, "umas_build_edges: positions is NULL");
    }
    for (int i = 0; i < num_atoms; i++) {
        const double *r = positions + 3 * (size_t)i;
        if (!isfinite(r[0]) || !isfinite(r[1]) || !isfinite(r[2])) {
            return umas_fail(err, "the position of atom %d is not finite (%g %g %g)", i, r[0], r[1],
                             r[2]);
        }
    }
    int periodic[3];
    int any_periodic = 0;
    for (int a = 0; a < 3; a++) {
        periodic[a] = pbc != NULL && pbc[a] != 0;
        any_periodic |= periodic[a];
    }
    if (any_periodic && cell == NULL) {
        return umas_fail(err, "umas_build_edges: the cell is NULL but some direction is periodic");
    }

    /* Fractional coordinates and the geometry of the grid. */
    double basis[3][3] = {{0}}, inv[3][3];
    if (make_basis(cell, periodic, basis, err) != 0) {
        return -1;
    }
    invert3(basis, inv);
    const double volume = fabs(det3(basis));
    const double rc2 = cutoff * cutoff;

    int status = -1;
    double *frac = NULL;         /* [N][3] fractional coordinates of the atoms */
    int *image_lo = NULL;        /* [N][3] first image n along each direction */
    int *image_hi = NULL;        /* [N][3] last image n along each direction */
    int *ghost_atom = NULL;      /* [G] atom of each ghost; ghosts are ordered by (atom, n) */
    int *ghost_shift = NULL;     /* [G][3] its image n */
    size_t *ghost_bin = NULL;    /* [G] its bin */
    size_t *bin_start = NULL;    /* [B+1] first entry of each bin in the by_bin arrays */
    int *by_bin_ghost = NULL;    /* [G] ghosts ordered by bin */
    int *by_bin_atom = NULL;     /* [G] their atoms */
    double *by_bin_shift = NULL; /* [G][3] their shifts n . cell (periodic directions only) */
    int *atom_bin = NULL;        /* [N][3] bin coordinates of each atom (its n = 0 image) */
    uint64_t *hits = NULL;     /* [hit_cap] neighbours of the current target: ghost << 32 | slot */
    double *hit_vector = NULL; /* [hit_cap][3] their edge vectors, by slot */
    size_t hit_cap = 0, capacity = 0, num_edges = 0;

    frac = malloc((size_t)num_atoms * 3 * sizeof(double));
    image_lo = malloc((size_t)num_atoms * 3 * sizeof(int));
    image_hi = malloc((size_t)num_atoms * 3 * sizeof(int));
    atom_bin = malloc((size_t)num_atoms * 3 * sizeof(int));
    if (frac == NULL || image_lo == NULL || image_hi == NULL || atom_bin == NULL) {
        umas_fail(err, "umas_build_edges: out of memory (%d atoms)", num_atoms);
        goto done;
    }
    double lo[3] = {INFINITY, INFINITY, INFINITY}, hi[3] = {-INFINITY, -INFINITY, -INFINITY};
    double fmax = 0;
    for (int i = 0; i < num_atoms; i++) {
        const double *r = positions + 3 * (size_t)i;
        for (int a = 0; a < 3; a++) {
            double f = r[0] * inv[0][a] + r[1] * inv[1][a] + r[2] * inv[2][a];
            frac[3 * (size_t)i + a] = f;
            lo[a] = f < lo[a] ? f : lo[a];
            hi[a] = f > hi[a] ? f : hi[a];
            fmax = fabs(f) > fmax ? fabs(f) : fmax;
        }
    }
    if (!isfinite(fmax)) {
        umas_fail(err, "umas_build_edges: positions too large for this cell");
        goto done;
    }
    /* delta[a]: largest fractional difference along a of two points within the cutoff, with a
     * margin for round-off (a larger delta only adds candidates, never loses neighbours). */
    double delta[3], rlo[3], rhi[3];
    for (int a = 0; a < 3; a++) {
        double w[3];
        cross(basis[(a + 1) % 3], basis[(a + 2) % 3], w);
        double height = volume / norm(w);
        delta[a] = cutoff / height * (1 + 1e-6) + 1e-9 * (1 + fmax);
        rlo[a] = periodic[a] ? lo[a] - delta[a] : lo[a];
        rhi[a] = periodic[a] ? hi[a] + delta[a] : hi[a];
    }

    /* Images of each atom that land in the region [rlo, rhi] (only n = 0 along non-periodic
     * directions; the atom itself always does). */
    double total = 0;
    for (int i = 0; i < num_atoms; i++) {
        double count = 1;
        for (int a = 0; a < 3; a++) {
            double nlo = 0, nhi = 0, f = frac[3 * (size_t)i + a];
            if (periodic[a]) {
                nlo = ceil(rlo[a] - f);
                nhi = floor(rhi[a] - f);
                nlo = nlo > 0 ? 0 : nlo; /* n = 0 always (guards against round-off) */
                nhi = nhi < 0 ? 0 : nhi;
            }
            count *= nhi - nlo + 1;
            if (count > MAX_GHOSTS || total + count > MAX_GHOSTS) {
                umas_fail(err,
                          "the cell is too small for the cutoff %g (or the atoms are spread "
                          "over too many cells): more than %.0f periodic images needed",
                          cutoff, MAX_GHOSTS);
                goto done;
            }
            image_lo[3 * (size_t)i + a] = (int)nlo;
            image_hi[3 * (size_t)i + a] = (int)nhi;
        }
        total += count;
    }
    const size_t num_ghosts = (size_t)total;

    /* Grid: nb[a] bins along a, each at least delta[a] wide; at most ~2 bins per ghost. */
    double width[3], extent[3];
    int nb[3];
    for (int a = 0; a < 3; a++) {
        extent[a] = rhi[a] - rlo[a];
        width[a] = delta[a];
    }
    const double max_bins = 2.0 * (double)num_ghosts + 64;
    for (;;) {
        double product = 1;
        for (int a = 0; a < 3; a++) {
            double n = floor(extent[a] / width[a]);
            n = n < 1 ? 1 : (n > 1e6 ? 1e6 : n);
            nb[a] = (int)n;
            product *= n;
        }
        if (product <= max_bins) {
            break;
        }
        for (int a = 0; a < 3; a++) {
            width[a] *= 1.26;
        }
    }
    for (int a = 0; a < 3; a++) {
        width[a] = extent[a] > 0 ? extent[a] / nb[a] : 1.0; /* >= delta[a] */
    }
    const size_t num_bins = (size_t)nb[0] * nb[1] * nb[2];

    ghost_atom = malloc(num_ghosts * sizeof(int));
    ghost_shift = malloc(num_ghosts * 3 * sizeof(int));
    ghost_bin = malloc(num_ghosts * sizeof(size_t));
    by_bin_ghost = malloc(num_ghosts * sizeof(int));
    by_bin_atom = malloc(num_ghosts * sizeof(int));
    by_bin_shift = malloc(num_ghosts * 3 * sizeof(double));
    bin_start = calloc(num_bins + 1, sizeof(size_t));
    if (ghost_atom == NULL || ghost_shift == NULL || ghost_bin == NULL || by_bin_ghost == NULL ||
        by_bin_atom == NULL || by_bin_shift == NULL || bin_start == NULL) {
        umas_fail(err, "umas_build_edges: out of memory (%zu periodic images)", num_ghosts);
        goto done;
    }

    /* Ghosts and their bins. */
    size_t g = 0;
    for (int i = 0; i < num_atoms; i++) {
        const double *f = frac + 3 * (size_t)i;
        const int *nlo = image_lo + 3 * (size_t)i, *nhi = image_hi + 3 * (size_t)i;
        for (int a = 0; a < 3; a++) {
            int k = (int)floor((f[a] - rlo[a]) / width[a]);
            atom_bin[3 * (size_t)i + a] = k < 0 ? 0 : (k >= nb[a] ? nb[a] - 1 : k);
        }
        for (int n0 = nlo[0]; n0 <= nhi[0]; n0++) {
            for (int n1 = nlo[1]; n1 <= nhi[1]; n1++) {
                for (int n2 = nlo[2]; n2 <= nhi[2]; n2++) {
                    int n[3] = {n0, n1, n2}, k[3];
                    for (int a = 0; a < 3; a++) {
                        k[a] = (int)floor((f[a] + n[a] - rlo[a]) / width[a]);
                        k[a] = k[a] < 0 ? 0 : (k[a] >= nb[a] ? nb[a] - 1 : k[a]);
                    }
                    ghost_atom[g] = i;
                    memcpy(ghost_shift + 3 * g, n, sizeof n);
                    ghost_bin[g] = ((size_t)k[0] * nb[1] + k[1]) * nb[2] + k[2];
                    bin_start[ghost_bin[g] + 1]++;
                    g++;
                }
            }
        }
    }
    /* Counting sort by bin (stable: ghosts of a bin stay in (atom, n) order). */
    for (size_t b = 0; b < num_bins; b++) {
        bin_start[b + 1] += bin_start[b];
    }
    for (size_t h = 0; h < g; h++) { /* g == num_ghosts */
        size_t slot = bin_start[ghost_bin[h]]++;
        const int *n = ghost_shift + 3 * h;
        by_bin_ghost[slot] = (int)h;
        by_bin_atom[slot] = ghost_atom[h];
        for (int c = 0; c < 3; c++) {
            double shift = 0; /* n . cell, summed over periodic directions only */
            for (int a = 0; a < 3; a++) {
                if (periodic[a]) {
                    shift += n[a] * cell[3 * a + c];
                }
            }
            by_bin_shift[3 * slot + c] = shift;
        }
    }
    for (size_t b = num_bins; b > 0; b--) { /* undo the shift of the fill pass */
        bin_start[b] = bin_start[b - 1];
    }
    bin_start[0] = 0;
    free(ghost_bin);
    ghost_bin = NULL;

    /* First guess of the edge count from the ghost density: a little above the expected
     * neighbours per atom; the arrays grow when needed and shrink at the end. */
    {
        double region = volume;
        for (int a = 0; a < 3; a++) {
            region *= extent[a] > delta[a] ? extent[a] : delta[a];
        }
        double expected = (double)num_ghosts / region * 4.18879 * cutoff * cutoff * cutoff;
        double guess = num_targets * (1.1 * (isfinite(expected) ? expected : 0) + 8) + 256;
        double most = (double)num_targets * (double)num_ghosts;
        guess = guess < most ? guess : most;
        guess = guess < 4194304.0 ? guess : 4194304.0; /* beyond this, grow when needed */
        if (reserve_edges(edges, &capacity, (size_t)guess) != 0) {
            umas_fail(err, "umas_build_edges: out of memory (%.0f edges)", guess);
            goto done;
        }
    }

    /* For each target: its neighbours among the ghosts of its bin and the 26 around it, sorted
     * by ghost index, i.e. by (source, n). */
    for (int i = 0; i < num_targets; i++) {
        const double *ri = positions + 3 * (size_t)i;
        const int *bi = atom_bin + 3 * (size_t)i;
        size_t num_hits = 0;
        for (int k0 = bi[0] - 1; k0 <= bi[0] + 1; k0++) {
            if (k0 < 0 || k0 >= nb[0]) {
                continue;
            }
            for (int k1 = bi[1] - 1; k1 <= bi[1] + 1; k1++) {
                if (k1 < 0 || k1 >= nb[1]) {
                    continue;
                }
                for (int k2 = bi[2] - 1; k2 <= bi[2] + 1; k2++) {
                    if (k2 < 0 || k2 >= nb[2]) {
                        continue;
                    }
                    size_t b = ((size_t)k0 * nb[1] + k1) * nb[2] + k2;
                    for (size_t e = bin_start[b]; e < bin_start[b + 1]; e++) {
                        const double *rj = positions + 3 * (size_t)by_bin_atom[e];
                        const double *shift = by_bin_shift + 3 * e;
                        double v[3] = {rj[0] - ri[0] + shift[0], rj[1] - ri[1] + shift[1],
                                       rj[2] - ri[2] + shift[2]};
                        double d2 = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
                        int self =
                            by_bin_atom[e] == i && shift[0] == 0 && shift[1] == 0 && shift[2] == 0;
                        if (d2 == 0 && !self) { /* the model is undefined there (1/d) */
                            umas_fail_atoms(err, by_bin_atom[e], i,
                                            "atoms %d and %d are on top of each other (distance 0)",
                                            by_bin_atom[e], i);
                            goto done;
                        }
                        if (!(d2 > 0 && d2 <= rc2)) {
                            continue;
                        }
                        if (num_hits == hit_cap) {
                            size_t cap = hit_cap > 0 ? 2 * hit_cap : 256;
                            uint64_t *grown = realloc(hits, cap * sizeof *hits);
                            if (grown != NULL) {
                                hits = grown;
                            }
                            double *grown_v = realloc(hit_vector, cap * 3 * sizeof(double));
                            if (grown_v != NULL) {
                                hit_vector = grown_v;
                            }
                            if (grown == NULL || grown_v == NULL) {
                                umas_fail(err, "umas_build_edges: out of memory");
                                goto done;
                            }
                            hit_cap = cap;
                        }
                        hits[num_hits] = (uint64_t)by_bin_ghost[e] << 32 | num_hits;
                        memcpy(hit_vector + 3 * num_hits, v, sizeof v);
                        num_hits++;
                    }
                }
            }
        }
        if (num_hits == 0) {
            continue;
        }
        sort_u64(hits, num_hits);
        if (num_edges + num_hits > (size_t)INT32_MAX) {
            umas_fail(err, "umas_build_edges: more than %d edges", INT32_MAX);
            goto done;
        }
        if (reserve_edges(edges, &capacity, num_edges + num_hits) != 0) {
            umas_fail(err, "umas_build_edges: out of memory (%zu edges)", num_edges + num_hits);
            goto done;
        }
        for (size_t k = 0; k < num_hits; k++, num_edges++) {
            size_t h = (size_t)(hits[k] >> 32), slot = (size_t)(hits[k] & 0xffffffffu);
            edges->source[num_edges] = ghost_atom[h];
            edges->target[num_edges] = i;
            memcpy(edges->cell_shift + 3 * num_edges, ghost_shift + 3 * h, 3 * sizeof(int));
            memcpy(edges->vector + 3 * num_edges, hit_vector + 3 * slot, 3 * sizeof(double));
        }
    }
    if (num_edges < capacity && num_edges > 0) { /* give back the unused part */
        size_t n = num_edges;
        int *p;
        double *q;
        if ((p = realloc(edges->source, n * sizeof(int))) != NULL) {
            edges->source = p;
        }
        if ((p = realloc(edges->target, n * sizeof(int))) != NULL) {
            edges->target = p;
        }
        if ((p = realloc(edges->cell_shift, 3 * n * sizeof(int))) != NULL) {
            edges->cell_shift = p;
        }
        if ((q = realloc(edges->vector, 3 * n * sizeof(double))) != NULL) {
            edges->vector = q;
        }
    }
    edges->num_edges = (int)num_edges;
    status = 0;

done:
    free(frac);
    free(image_lo);
    free(image_hi);
    free(atom_bin);
    free(ghost_atom);
    free(ghost_shift);
    free(ghost_bin);
    free(bin_start);
    free(by_bin_ghost);
    free(by_bin_atom);
    free(by_bin_shift);
    free(hits);
    free(hit_vector);
    if (status != 0) {
        umas_edge_list_free(edges);
    }
    return status;
}

static int compare_doubles(const void *pa, const void *pb) {
    double a = *(const double *)pa, b = *(const double *)pb;
    return a < b ? -1 : (a > b ? 1 : 0);
}

int umas_limit_neighbors(umas_edge_list *edges, int num_atoms, int max_neighbors) {
    if (edges == NULL || edges->num_edges <= 0 || num_atoms <= 0 || max_neighbors <= 0) {
        return 0; /* fairchem: max_neighbors <= 0 means no limit */
    }
    const int num_edges = edges->num_edges;
    int *count = calloc((size_t)num_atoms + 1, sizeof(int)); /* [N+1] incoming edges, then CSR */
    if (count == NULL) {
        return -1;
    }
    int exceeded = 0;
    for (int e = 0; e < num_edges; e++) {
        int t = edges->target[e];
        if (t >= 0 && t < num_atoms && ++count[t] > max_neighbors) {
            exceeded = 1;
        }
    }
    if (!exceeded) {
        free(count);
        return 0;
    }

    /* Squared lengths of the incoming edges of each atom with too many: d2[start[i]..). */
    int *start = calloc((size_t)num_atoms + 1, sizeof(int));        /* [N+1] */
    double *threshold = malloc((size_t)num_atoms * sizeof(double)); /* [N] largest kept d2 */
    int *cut = calloc((size_t)num_atoms, sizeof(int));              /* [N] 1 if it lost edges */
    size_t total = 0;
    for (int i = 0; i < num_atoms; i++) {
        total += count[i] > max_neighbors ? (size_t)count[i] : 0;
    }
    double *d2 = malloc((total > 0 ? total : 1) * sizeof(double));
    if (start == NULL || threshold == NULL || cut == NULL || d2 == NULL) {
        free(count);
        free(start);
        free(threshold);
        free(cut);
        free(d2);
        return -1;
    }
    for (int i = 0; i < num_atoms; i++) {
        start[i + 1] = start[i] + (count[i] > max_neighbors ? count[i] : 0);
        count[i] = 0; /* reused as fill position */
    }
    for (int e = 0; e < num_edges; e++) {
        int t = edges->target[e];
        if (t >= 0 && t < num_atoms && start[t + 1] > start[t]) {
            const double *v = edges->vector + 3 * (size_t)e;
            d2[start[t] + count[t]++] = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
        }
    }
    for (int i = 0; i < num_atoms; i++) {
        int n = start[i + 1] - start[i];
        threshold[i] = INFINITY;
        if (n > 0) {
            qsort(d2 + start[i], (size_t)n, sizeof(double), compare_doubles);
            threshold[i] = d2[start[i] + max_neighbors] + 0.01; /* Angstrom^2 */
        }
    }

    /* Remove the edges beyond the threshold, keeping the order of the rest. */
    int kept = 0;
    for (int e = 0; e < num_edges; e++) {
        int t = edges->target[e];
        const double *v = edges->vector + 3 * (size_t)e;
        if (t >= 0 && t < num_atoms && !(v[0] * v[0] + v[1] * v[1] + v[2] * v[2] <= threshold[t])) {
            cut[t] = 1;
            continue;
        }
        if (kept != e) {
            edges->source[kept] = edges->source[e];
            edges->target[kept] = t;
            memcpy(edges->cell_shift + 3 * (size_t)kept, edges->cell_shift + 3 * (size_t)e,
                   3 * sizeof(int));
            memcpy(edges->vector + 3 * (size_t)kept, v, 3 * sizeof(double));
        }
        kept++;
    }
    edges->num_edges = kept;
    int num_cut = 0;
    for (int i = 0; i < num_atoms; i++) {
        num_cut += cut[i];
    }
    free(count);
    free(start);
    free(threshold);
    free(cut);
    free(d2);
    return num_cut;
}
