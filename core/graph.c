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

/* The periodic images ("ghosts") of the atoms that can lie within the cutoff of an atom, binned
 * on a grid in fractional coordinates (the method at the top of this file). */
typedef struct ghost_grid {
    int periodic[3];
    double basis[3][3], inv[3][3], volume;
    double delta[3];       /* fractional reach of the cutoff along each direction */
    double rlo[3], rhi[3]; /* the region of the ghosts: the atoms' bounds, widened by delta */
    double extent[3], width[3];
    int nb[3]; /* bins along each direction, each at least delta wide */
    size_t num_ghosts, num_bins;
    double *frac;         /* [N][3] fractional coordinates of the atoms */
    int *image_lo;        /* [N][3] first image n along each direction */
    int *image_hi;        /* [N][3] last image n along each direction */
    int *atom_bin;        /* [N][3] bin coordinates of each atom (its n = 0 image) */
    int *ghost_atom;      /* [G] atom of each ghost; ghosts are ordered by (atom, n) */
    int *ghost_shift;     /* [G][3] its image n */
    size_t *bin_start;    /* [B+1] first entry of each bin in the by_bin arrays */
    int *by_bin_ghost;    /* [G] ghosts ordered by bin */
    int *by_bin_atom;     /* [G] their atoms */
    double *by_bin_shift; /* [G][3] their shifts n . cell (periodic directions only) */
} ghost_grid;

static void ghost_grid_free(ghost_grid *g) {
    free(g->frac);
    free(g->image_lo);
    free(g->image_hi);
    free(g->atom_bin);
    free(g->ghost_atom);
    free(g->ghost_shift);
    free(g->bin_start);
    free(g->by_bin_ghost);
    free(g->by_bin_atom);
    free(g->by_bin_shift);
}

/* The arguments of umas_build_edges_to, checked: 1 when there are no atoms (nothing to do). */
static int check_edge_inputs(int num_atoms, int num_targets, const double *positions,
                             const double cell[9], const int pbc[3], double cutoff, int periodic[3],
                             umas_error *err) {
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
        return 1;
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
    int any_periodic = 0;
    for (int a = 0; a < 3; a++) {
        periodic[a] = pbc != NULL && pbc[a] != 0;
        any_periodic |= periodic[a];
    }
    if (any_periodic && cell == NULL) {
        return umas_fail(err, "umas_build_edges: the cell is NULL but some direction is periodic");
    }
    return 0;
}

/* Fractional coordinates of the atoms, the cutoff's reach delta and the region of the ghosts. */
static int find_region(ghost_grid *g, int num_atoms, const double *positions, double cutoff,
                       umas_error *err) {
    g->frac = malloc((size_t)num_atoms * 3 * sizeof(double));
    if (g->frac == NULL) {
        return umas_fail(err, "umas_build_edges: out of memory (%d atoms)", num_atoms);
    }
    double lo[3] = {INFINITY, INFINITY, INFINITY}, hi[3] = {-INFINITY, -INFINITY, -INFINITY};
    double fmax = 0;
    for (int i = 0; i < num_atoms; i++) {
        const double *r = positions + 3 * (size_t)i;
        for (int a = 0; a < 3; a++) {
            double f = r[0] * g->inv[0][a] + r[1] * g->inv[1][a] + r[2] * g->inv[2][a];
            g->frac[3 * (size_t)i + a] = f;
            lo[a] = f < lo[a] ? f : lo[a];
            hi[a] = f > hi[a] ? f : hi[a];
            fmax = fabs(f) > fmax ? fabs(f) : fmax;
        }
    }
    if (!isfinite(fmax)) {
        return umas_fail(err, "umas_build_edges: positions too large for this cell");
    }
    /* delta[a]: largest fractional difference along a of two points within the cutoff, with a
     * margin for round-off (a larger delta only adds candidates, never loses neighbours). */
    for (int a = 0; a < 3; a++) {
        double w[3];
        cross(g->basis[(a + 1) % 3], g->basis[(a + 2) % 3], w);
        double height = g->volume / norm(w);
        g->delta[a] = cutoff / height * (1 + 1e-6) + 1e-9 * (1 + fmax);
        g->rlo[a] = g->periodic[a] ? lo[a] - g->delta[a] : lo[a];
        g->rhi[a] = g->periodic[a] ? hi[a] + g->delta[a] : hi[a];
    }
    return 0;
}

/* The images of each atom that land in the region [rlo, rhi] (only n = 0 along non-periodic
 * directions; the atom itself always does), and their number. */
static int count_images(ghost_grid *g, int num_atoms, double cutoff, umas_error *err) {
    g->image_lo = malloc((size_t)num_atoms * 3 * sizeof(int));
    g->image_hi = malloc((size_t)num_atoms * 3 * sizeof(int));
    if (g->image_lo == NULL || g->image_hi == NULL) {
        return umas_fail(err, "umas_build_edges: out of memory (%d atoms)", num_atoms);
    }
    double total = 0;
    for (int i = 0; i < num_atoms; i++) {
        double count = 1;
        for (int a = 0; a < 3; a++) {
            double nlo = 0, nhi = 0, f = g->frac[3 * (size_t)i + a];
            if (g->periodic[a]) {
                nlo = ceil(g->rlo[a] - f);
                nhi = floor(g->rhi[a] - f);
                nlo = nlo > 0 ? 0 : nlo; /* n = 0 always (guards against round-off) */
                nhi = nhi < 0 ? 0 : nhi;
            }
            count *= nhi - nlo + 1;
            if (count > MAX_GHOSTS || total + count > MAX_GHOSTS) {
                return umas_fail(err,
                                 "the cell is too small for the cutoff %g (or the atoms are spread "
                                 "over too many cells): more than %.0f periodic images needed",
                                 cutoff, MAX_GHOSTS);
            }
            g->image_lo[3 * (size_t)i + a] = (int)nlo;
            g->image_hi[3 * (size_t)i + a] = (int)nhi;
        }
        total += count;
    }
    g->num_ghosts = (size_t)total;
    return 0;
}

/* The grid: nb[a] bins along a, each at least delta[a] wide; at most ~2 bins per ghost. */
static void choose_bins(ghost_grid *g) {
    for (int a = 0; a < 3; a++) {
        g->extent[a] = g->rhi[a] - g->rlo[a];
        g->width[a] = g->delta[a];
    }
    const double max_bins = 2.0 * (double)g->num_ghosts + 64;
    for (;;) {
        double product = 1;
        for (int a = 0; a < 3; a++) {
            double n = floor(g->extent[a] / g->width[a]);
            n = n < 1 ? 1 : (n > 1e6 ? 1e6 : n);
            g->nb[a] = (int)n;
            product *= n;
        }
        if (product <= max_bins) {
            break;
        }
        for (int a = 0; a < 3; a++) {
            g->width[a] *= 1.26;
        }
    }
    for (int a = 0; a < 3; a++) {
        g->width[a] = g->extent[a] > 0 ? g->extent[a] / g->nb[a] : 1.0; /* >= delta[a] */
    }
    g->num_bins = (size_t)g->nb[0] * g->nb[1] * g->nb[2];
}

/* Bin coordinate along a of fractional coordinate f. */
static int bin_along(const ghost_grid *g, int a, double f) {
    int k = (int)floor((f - g->rlo[a]) / g->width[a]);
    return k < 0 ? 0 : (k >= g->nb[a] ? g->nb[a] - 1 : k);
}

/* Every ghost with its atom, image and shift, in bin order (a counting sort, stable: the ghosts
 * of a bin stay in (atom, n) order), and each atom's bin. */
static int fill_bins(ghost_grid *g, int num_atoms, const double cell[9], umas_error *err) {
    const size_t G = g->num_ghosts; /* >= num_atoms > 0: every atom is its own n = 0 image */
    if (G < (size_t)num_atoms || num_atoms <= 0) {
        return umas_fail(err, "umas_build_edges: %zu periodic images for %d atoms", G, num_atoms);
    }
    size_t *ghost_bin = malloc(G * sizeof(size_t)); /* [G] the bin of each ghost */
    g->atom_bin = calloc((size_t)num_atoms * 3, sizeof(int));
    g->ghost_atom = malloc(G * sizeof(int));
    g->ghost_shift = malloc(G * 3 * sizeof(int));
    g->by_bin_ghost = malloc(G * sizeof(int));
    g->by_bin_atom = malloc(G * sizeof(int));
    g->by_bin_shift = malloc(G * 3 * sizeof(double));
    g->bin_start = calloc(g->num_bins + 1, sizeof(size_t));
    if (ghost_bin == NULL || g->atom_bin == NULL || g->ghost_atom == NULL ||
        g->ghost_shift == NULL || g->by_bin_ghost == NULL || g->by_bin_atom == NULL ||
        g->by_bin_shift == NULL || g->bin_start == NULL) {
        free(ghost_bin);
        return umas_fail(err, "umas_build_edges: out of memory (%zu periodic images)", G);
    }
    const int *nb = g->nb;
    size_t h = 0;
    for (int i = 0; i < num_atoms; i++) {
        const double *f = g->frac + 3 * (size_t)i;
        const int *nlo = g->image_lo + 3 * (size_t)i, *nhi = g->image_hi + 3 * (size_t)i;
        for (int a = 0; a < 3; a++) {
            g->atom_bin[3 * (size_t)i + a] = bin_along(g, a, f[a]);
        }
        for (int n0 = nlo[0]; n0 <= nhi[0]; n0++) {
            for (int n1 = nlo[1]; n1 <= nhi[1]; n1++) {
                for (int n2 = nlo[2]; n2 <= nhi[2]; n2++) {
                    int n[3] = {n0, n1, n2}, k[3];
                    for (int a = 0; a < 3; a++) {
                        k[a] = bin_along(g, a, f[a] + n[a]);
                    }
                    g->ghost_atom[h] = i;
                    memcpy(g->ghost_shift + 3 * h, n, sizeof n);
                    ghost_bin[h] = ((size_t)k[0] * nb[1] + k[1]) * nb[2] + k[2];
                    g->bin_start[ghost_bin[h] + 1]++;
                    h++;
                }
            }
        }
    }
    size_t *bin_start = g->bin_start;
    for (size_t b = 0; b < g->num_bins; b++) {
        bin_start[b + 1] += bin_start[b];
    }
    for (size_t j = 0; j < h; j++) { /* h == num_ghosts */
        size_t slot = bin_start[ghost_bin[j]]++;
        const int *n = g->ghost_shift + 3 * j;
        g->by_bin_ghost[slot] = (int)j;
        g->by_bin_atom[slot] = g->ghost_atom[j];
        for (int c = 0; c < 3; c++) {
            double shift = 0; /* n . cell, summed over periodic directions only */
            for (int a = 0; a < 3; a++) {
                if (g->periodic[a]) {
                    shift += n[a] * cell[3 * a + c];
                }
            }
            g->by_bin_shift[3 * slot + c] = shift;
        }
    }
    for (size_t b = g->num_bins; b > 0; b--) { /* undo the shift of the fill pass */
        bin_start[b] = bin_start[b - 1];
    }
    bin_start[0] = 0;
    free(ghost_bin);
    return 0;
}

/* First guess of the edge count from the ghost density: a little above the expected neighbours
 * per atom; the arrays grow when needed and shrink at the end. */
static int reserve_first_guess(const ghost_grid *g, int num_targets, double cutoff,
                               umas_edge_list *edges, size_t *capacity, umas_error *err) {
    double region = g->volume;
    for (int a = 0; a < 3; a++) {
        region *= g->extent[a] > g->delta[a] ? g->extent[a] : g->delta[a];
    }
    double expected = (double)g->num_ghosts / region * 4.18879 * cutoff * cutoff * cutoff;
    double guess = num_targets * (1.1 * (isfinite(expected) ? expected : 0) + 8) + 256;
    double most = (double)num_targets * (double)g->num_ghosts;
    guess = guess < most ? guess : most;
    guess = guess < 4194304.0 ? guess : 4194304.0; /* beyond this, grow when needed */
    if (reserve_edges(edges, capacity, (size_t)guess) != 0) {
        return umas_fail(err, "umas_build_edges: out of memory (%.0f edges)", guess);
    }
    return 0;
}

/* The neighbours of one target: ghost << 32 | slot in hits, their edge vectors by slot. */
typedef struct target_hits {
    uint64_t *hits;
    double *vector; /* [cap][3] */
    size_t count, cap;
} target_hits;

static int add_hit(target_hits *t, int ghost, const double v[3], umas_error *err) {
    if (t->count == t->cap) {
        size_t cap = t->cap > 0 ? 2 * t->cap : 256;
        uint64_t *grown = realloc(t->hits, cap * sizeof *t->hits);
        if (grown != NULL) {
            t->hits = grown;
        }
        double *grown_v = realloc(t->vector, cap * 3 * sizeof(double));
        if (grown_v != NULL) {
            t->vector = grown_v;
        }
        if (grown == NULL || grown_v == NULL) {
            return umas_fail(err, "umas_build_edges: out of memory");
        }
        t->cap = cap;
    }
    t->hits[t->count] = (uint64_t)ghost << 32 | t->count;
    memcpy(t->vector + 3 * t->count, v, 3 * sizeof(double));
    t->count++;
    return 0;
}

/* Target i's neighbours among the ghosts of its bin and the 26 around it, sorted by ghost index,
 * i.e. by (source, n). Two atoms at distance 0 are an error (the model is undefined there). */
static int find_neighbours(const ghost_grid *g, int i, const double *positions, double rc2,
                           target_hits *t, umas_error *err) {
    const double *ri = positions + 3 * (size_t)i;
    const int *bi = g->atom_bin + 3 * (size_t)i, *nb = g->nb;
    t->count = 0;
    for (int k0 = bi[0] - 1; k0 <= bi[0] + 1; k0++) {
        for (int k1 = bi[1] - 1; k1 <= bi[1] + 1; k1++) {
            for (int k2 = bi[2] - 1; k2 <= bi[2] + 1; k2++) {
                if (k0 < 0 || k0 >= nb[0] || k1 < 0 || k1 >= nb[1] || k2 < 0 || k2 >= nb[2]) {
                    continue;
                }
                size_t b = ((size_t)k0 * nb[1] + k1) * nb[2] + k2;
                for (size_t e = g->bin_start[b]; e < g->bin_start[b + 1]; e++) {
                    const int j = g->by_bin_atom[e];
                    const double *rj = positions + 3 * (size_t)j;
                    const double *shift = g->by_bin_shift + 3 * e;
                    double v[3] = {rj[0] - ri[0] + shift[0], rj[1] - ri[1] + shift[1],
                                   rj[2] - ri[2] + shift[2]};
                    double d2 = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
                    int self = j == i && shift[0] == 0 && shift[1] == 0 && shift[2] == 0;
                    if (d2 == 0 && !self) {
                        return umas_fail_atoms(
                            err, j, i, "atoms %d and %d are on top of each other (distance 0)", j,
                            i);
                    }
                    if (d2 > 0 && d2 <= rc2 && add_hit(t, g->by_bin_ghost[e], v, err) != 0) {
                        return -1;
                    }
                }
            }
        }
    }
    sort_u64(t->hits, t->count);
    return 0;
}

/* Appends target i's neighbours t (sorted) to the edge list. */
static int append_edges(const ghost_grid *g, int i, const target_hits *t, umas_edge_list *edges,
                        size_t *capacity, size_t *num_edges, umas_error *err) {
    if (*num_edges + t->count > (size_t)INT32_MAX) {
        return umas_fail(err, "umas_build_edges: more than %d edges", INT32_MAX);
    }
    if (reserve_edges(edges, capacity, *num_edges + t->count) != 0) {
        return umas_fail(err, "umas_build_edges: out of memory (%zu edges)", *num_edges + t->count);
    }
    for (size_t k = 0; k < t->count; k++) {
        size_t h = (size_t)(t->hits[k] >> 32), slot = (size_t)(t->hits[k] & 0xffffffffu);
        size_t e = (*num_edges)++;
        edges->source[e] = g->ghost_atom[h];
        edges->target[e] = i;
        memcpy(edges->cell_shift + 3 * e, g->ghost_shift + 3 * h, 3 * sizeof(int));
        memcpy(edges->vector + 3 * e, t->vector + 3 * slot, 3 * sizeof(double));
    }
    return 0;
}

/* Gives back the unused part of the edge arrays (n edges kept). */
static void shrink_edges(umas_edge_list *edges, size_t n) {
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

int umas_build_edges_to(int num_atoms, int num_targets, const double *positions,
                        const double cell[9], const int pbc[3], double cutoff,
                        umas_edge_list *edges, umas_error *err) {
    if (edges == NULL) {
        return umas_fail(err, "umas_build_edges: edges is NULL");
    }
    memset(edges, 0, sizeof *edges);
    ghost_grid grid;
    memset(&grid, 0, sizeof grid);
    int checked =
        check_edge_inputs(num_atoms, num_targets, positions, cell, pbc, cutoff, grid.periodic, err);
    if (checked != 0) {
        return checked > 0 ? 0 : -1; /* no atoms: no edges */
    }
    if (make_basis(cell, grid.periodic, grid.basis, err) != 0) {
        return -1;
    }
    invert3(grid.basis, grid.inv);
    grid.volume = fabs(det3(grid.basis));

    int status = -1;
    target_hits hits = {NULL, NULL, 0, 0};
    size_t capacity = 0, num_edges = 0;
    if (find_region(&grid, num_atoms, positions, cutoff, err) != 0 ||
        count_images(&grid, num_atoms, cutoff, err) != 0) {
        goto done;
    }
    choose_bins(&grid);
    if (fill_bins(&grid, num_atoms, cell, err) != 0 ||
        reserve_first_guess(&grid, num_targets, cutoff, edges, &capacity, err) != 0) {
        goto done;
    }
    for (int i = 0; i < num_targets; i++) {
        if (find_neighbours(&grid, i, positions, cutoff * cutoff, &hits, err) != 0 ||
            append_edges(&grid, i, &hits, edges, &capacity, &num_edges, err) != 0) {
            goto done;
        }
    }
    if (num_edges < capacity && num_edges > 0) {
        shrink_edges(edges, num_edges);
    }
    edges->num_edges = (int)num_edges;
    status = 0;

done:
    ghost_grid_free(&grid);
    free(hits.hits);
    free(hits.vector);
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
