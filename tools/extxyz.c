/*
 * extxyz.c - reader for the first frame of an ASE extended XYZ file (see extxyz.h).
 */
#include "extxyz.h"

#include "umas.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The reader's state: the file, its current line and where errors go. */
typedef struct reader {
    FILE *file;
    const char *path;
    char *line; /* the current line, without its end-of-line characters */
    size_t capacity;
    int line_number; /* 1-based number of the current line */
    char *err;
    size_t errlen;
} reader;

static int fail(reader *r, const char *fmt, ...) {
    if (r->err != NULL && r->errlen > 0) {
        int n = snprintf(r->err, r->errlen, "%s:%d: ", r->path, r->line_number);
        if (n >= 0 && (size_t)n < r->errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(r->err + n, r->errlen - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    return -1;
}

/* Reads the next line into r->line. Returns 0, or -1 at the end of the file (or out of memory,
 * reported as such). */
static int next_line(reader *r) {
    size_t len = 0;
    int c;
    r->line_number++;
    if (r->line == NULL) {
        r->capacity = 256;
        r->line = malloc(r->capacity);
        if (r->line == NULL) {
            return fail(r, "out of memory");
        }
    }
    while ((c = fgetc(r->file)) != EOF && c != '\n') {
        if (len + 1 >= r->capacity) {
            char *grown = realloc(r->line, 2 * r->capacity);
            if (grown == NULL) {
                return fail(r, "out of memory");
            }
            r->line = grown;
            r->capacity *= 2;
        }
        r->line[len++] = (char)c;
    }
    if (c == EOF && len == 0) {
        return -1;
    }
    if (len > 0 && r->line[len - 1] == '\r') {
        len--;
    }
    r->line[len] = '\0';
    return 0;
}

static int equal_nocase(const char *a, const char *b) {
    for (; *a != '\0' && *b != '\0'; a++, b++) {
        if (tolower((unsigned char)*a) != tolower((unsigned char)*b)) {
            return 0;
        }
    }
    return *a == *b;
}

/* Splits s in place at characters of seps; stores up to max token starts in tokens. Returns the
 * number of tokens (which may exceed max; only the first max are stored). */
static int split(char *s, const char *seps, char **tokens, int max) {
    int n = 0;
    for (;;) {
        while (*s != '\0' && strchr(seps, *s) != NULL) {
            s++;
        }
        if (*s == '\0') {
            return n;
        }
        if (n < max) {
            tokens[n] = s;
        }
        n++;
        while (*s != '\0' && strchr(seps, *s) == NULL) {
            s++;
        }
        if (*s != '\0') {
            *s++ = '\0';
        }
    }
}

/* Parses a whole token as a finite double. */
static int parse_double(const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || !isfinite(v)) {
        return -1;
    }
    *out = v;
    return 0;
}

/* Parses a whole token as an int. */
static int parse_int(const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || errno != 0 || v < lo || v > hi) {
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* Atomic number of a species token: the standard symbol ("Cu"), the symbol in another case
 * ("CU", "cu") or an atomic number ("29"). 0 when unknown. */
static int species_number(const char *s) {
    int z = umas_element_number(s);
    if (z > 0) {
        return z;
    }
    char fixed[4];
    size_t n = strlen(s);
    if (n >= 1 && n <= 3) {
        for (size_t k = 0; k <= n; k++) {
            fixed[k] = (char)(k == 0 ? toupper((unsigned char)s[k]) : tolower((unsigned char)s[k]));
        }
        z = umas_element_number(fixed);
        if (z > 0) {
            return z;
        }
    }
    return parse_int(s, 1, 118, &z) == 0 ? z : 0;
}

/* Per-frame settings read from the comment line. */
typedef struct header {
    int has_lattice;
    double lattice[9];
    int has_pbc;
    int pbc[3];
    int num_columns;    /* columns of an atom line */
    int species_column; /* column of species (symbol), or -1 */
    int z_column;       /* column of Z (atomic number), or -1 */
    int pos_column;     /* first of the 3 columns of pos */
} header;

static int parse_lattice(reader *r, char *value, header *h) {
    char *tok[10];
    int n = split(value, " \t,[]", tok, 10);
    if (n != 9) {
        return fail(r, "Lattice needs 9 numbers (ax ay az bx by bz cx cy cz), found %d", n);
    }
    for (int k = 0; k < 9; k++) {
        if (parse_double(tok[k], &h->lattice[k]) != 0) {
            return fail(r, "Lattice value %d ('%s') is not a finite number", k + 1, tok[k]);
        }
    }
    h->has_lattice = 1;
    return 0;
}

static int parse_pbc(reader *r, char *value, header *h) {
    char *tok[4];
    int n = split(value, " \t,[]", tok, 4);
    if (n != 1 && n != 3) {
        return fail(r, "pbc needs 3 values (e.g. pbc=\"T T F\"), found %d", n);
    }
    for (int k = 0; k < n; k++) {
        const char *t = tok[k];
        if (equal_nocase(t, "T") || equal_nocase(t, "True") || strcmp(t, "1") == 0) {
            h->pbc[k] = 1;
        } else if (equal_nocase(t, "F") || equal_nocase(t, "False") || strcmp(t, "0") == 0) {
            h->pbc[k] = 0;
        } else {
            return fail(r, "pbc value '%s' is not T, F, True or False", t);
        }
    }
    if (n == 1) {
        h->pbc[1] = h->pbc[2] = h->pbc[0];
    }
    h->has_pbc = 1;
    return 0;
}

static int parse_properties(reader *r, char *value, header *h) {
    char *tok[3 * 64];
    int n = split(value, ":", tok, 3 * 64);
    if (n % 3 != 0 || n == 0 || n > 3 * 64) {
        return fail(r, "Properties must be name:type:columns triples, found %d fields", n);
    }
    h->num_columns = 0;
    h->species_column = h->z_column = h->pos_column = -1;
    for (int k = 0; k < n; k += 3) {
        const char *name = tok[k], *type = tok[k + 1];
        int cols;
        if (parse_int(tok[k + 2], 1, 1000, &cols) != 0) {
            return fail(r, "Properties: property '%s' has a bad column count '%s'", name,
                        tok[k + 2]);
        }
        if (strlen(type) != 1 || strchr("SRILsril", type[0]) == NULL) {
            return fail(r, "Properties: property '%s' has an unknown type '%s' (S, R, I or L)",
                        name, type);
        }
        char t = (char)toupper((unsigned char)type[0]);
        if (equal_nocase(name, "species")) {
            if (t != 'S' || cols != 1) {
                return fail(r, "Properties: species must be species:S:1");
            }
            h->species_column = h->num_columns;
        } else if (equal_nocase(name, "Z")) {
            if (t == 'I' && cols == 1) {
                h->z_column = h->num_columns;
            }
        } else if (equal_nocase(name, "pos")) {
            if (t != 'R' || cols != 3) {
                return fail(r, "Properties: pos must be pos:R:3");
            }
            h->pos_column = h->num_columns;
        }
        h->num_columns += cols;
    }
    if (h->pos_column < 0) {
        return fail(r, "Properties has no pos:R:3");
    }
    if (h->species_column < 0 && h->z_column < 0) {
        return fail(r, "Properties has neither species:S:1 nor Z:I:1");
    }
    return 0;
}

/* Reads a word starting at *s: a "quoted" string (with \" and \\ escapes), a {braced} list
 * (values only), or a run of characters up to whitespace (or '=' for keys). Returns its start and
 * leaves *s just past it; *end is where a terminating '\0' may be written once the caller has
 * looked at the character after the word. Returns NULL when a quote or brace is not closed. */
static char *read_word(char **s, int is_key, char **end) {
    char *p = *s, *start;
    if (*p == '"') {
        start = ++p;
        char *out = p;
        while (*p != '\0' && *p != '"') {
            if (*p == '\\' && (p[1] == '"' || p[1] == '\\')) {
                p++;
            }
            *out++ = *p++;
        }
        if (*p != '"') {
            return NULL;
        }
        *out = '\0';
        *end = out;
        *s = p + 1;
        return start;
    }
    if (*p == '{' && !is_key) {
        start = ++p;
        while (*p != '\0' && *p != '}') {
            p++;
        }
        if (*p != '}') {
            return NULL;
        }
        *end = p;
        *s = p + 1;
        return start;
    }
    start = p;
    while (*p != '\0' && !isspace((unsigned char)*p) && !(is_key && *p == '=')) {
        p++;
    }
    *end = p;
    *s = p;
    return start;
}

static void skip_space(char **s) {
    while (isspace((unsigned char)**s)) {
        (*s)++;
    }
}

/* Parses the comment line (key=value pairs) into *h. */
static int parse_comment(reader *r, header *h) {
    memset(h, 0, sizeof *h);
    h->num_columns = 4; /* species:S:1:pos:R:3 */
    h->species_column = 0;
    h->z_column = -1;
    h->pos_column = 1;
    char *s = r->line;
    for (;;) {
        skip_space(&s);
        if (*s == '\0') {
            break;
        }
        char *end;
        char *key = read_word(&s, 1, &end);
        if (key == NULL) {
            return fail(r, "unterminated quote in the comment line");
        }
        skip_space(&s);
        int has_value = *s == '=';
        *end = '\0'; /* may overwrite the '=' or a space: both already looked at */
        if (!has_value) {
            continue; /* a bare key (a flag), or a word of a plain comment */
        }
        s++;
        skip_space(&s);
        char *value = read_word(&s, 0, &end);
        if (value == NULL) {
            return fail(r, "unterminated quote or brace in the value of '%s'", key);
        }
        if (s == end && *s != '\0') {
            s++; /* an unquoted value ends at whitespace, about to become its '\0' */
        }
        *end = '\0';
        int status = 0;
        if (equal_nocase(key, "Lattice")) {
            status = parse_lattice(r, value, h);
        } else if (equal_nocase(key, "pbc")) {
            status = parse_pbc(r, value, h);
        } else if (equal_nocase(key, "Properties")) {
            status = parse_properties(r, value, h);
        }
        if (status != 0) {
            return status;
        }
    }
    return 0;
}

void extxyz_free(extxyz_frame *frame) {
    if (frame == NULL) {
        return;
    }
    free(frame->atomic_numbers);
    free(frame->positions);
    memset(frame, 0, sizeof *frame);
}

int extxyz_read(const char *path, extxyz_frame *out, char *err, size_t errlen) {
    reader r = {.path = path != NULL ? path : "(null)", .err = err, .errlen = errlen};
    char **tok = NULL;
    int status = -1;
    if (out == NULL) {
        return fail(&r, "extxyz_read: out is NULL");
    }
    memset(out, 0, sizeof *out);
    if (path == NULL) {
        return fail(&r, "extxyz_read: path is NULL");
    }
    r.file = fopen(path, "rb");
    if (r.file == NULL) {
        return fail(&r, "cannot open the file: %s", strerror(errno));
    }

    if (next_line(&r) != 0) {
        fail(&r, "the file is empty (line 1 must be the number of atoms)");
        goto done;
    }
    {
        char *t[2];
        int n = split(r.line, " \t", t, 2);
        if (n != 1 || parse_int(t[0], 0, INT_MAX / 4, &out->num_atoms) != 0) {
            fail(&r, "line 1 must be the number of atoms (a non-negative integer), found '%s'",
                 n > 0 ? t[0] : "");
            goto done;
        }
    }
    header h;
    if (next_line(&r) != 0) {
        fail(&r, "the file ends before the comment line (line 2)");
        goto done;
    }
    if (parse_comment(&r, &h) != 0) {
        goto done;
    }
    if (h.has_lattice) {
        memcpy(out->cell, h.lattice, sizeof out->cell);
        out->has_cell = 1;
    }
    for (int a = 0; a < 3; a++) {
        out->pbc[a] = h.has_pbc ? h.pbc[a] : h.has_lattice;
        if (out->pbc[a] && !h.has_lattice) {
            fail(&r, "pbc is periodic along direction %d but there is no Lattice", a);
            goto done;
        }
    }

    const int num_atoms = out->num_atoms;
    out->atomic_numbers = malloc((num_atoms > 0 ? (size_t)num_atoms : 1) * sizeof(int));
    out->positions = malloc((num_atoms > 0 ? (size_t)num_atoms : 1) * 3 * sizeof(double));
    tok = malloc((size_t)(h.num_columns + 1) * sizeof(char *));
    if (out->atomic_numbers == NULL || out->positions == NULL || tok == NULL) {
        fail(&r, "out of memory (%d atoms)", num_atoms);
        goto done;
    }
    for (int i = 0; i < num_atoms; i++) {
        if (next_line(&r) != 0) {
            fail(&r, "the file ends after %d of %d atom lines", i, num_atoms);
            goto done;
        }
        int n = split(r.line, " \t", tok, h.num_columns + 1);
        if (n < h.num_columns) {
            fail(&r, "atom %d: expected %d columns (Properties), found %d", i, h.num_columns, n);
            goto done;
        }
        if (h.species_column >= 0) {
            const char *symbol = tok[h.species_column];
            out->atomic_numbers[i] = species_number(symbol);
            if (out->atomic_numbers[i] == 0) {
                fail(&r, "atom %d: unknown element symbol '%s'", i, symbol);
                goto done;
            }
        } else if (parse_int(tok[h.z_column], 1, 118, &out->atomic_numbers[i]) != 0) {
            fail(&r, "atom %d: Z '%s' is not an atomic number 1..118", i, tok[h.z_column]);
            goto done;
        }
        for (int c = 0; c < 3; c++) {
            const char *t = tok[h.pos_column + c];
            if (parse_double(t, &out->positions[3 * (size_t)i + c]) != 0) {
                fail(&r, "atom %d: position component %d ('%s') is not a finite number", i, c, t);
                goto done;
            }
        }
    }
    status = 0;

done:
    free(tok);
    free(r.line);
    if (r.file != NULL) {
        fclose(r.file);
    }
    if (status != 0) {
        extxyz_free(out);
    }
    return status;
}
