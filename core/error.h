/* error.h - filling a umas_error. */
#ifndef UMAS_ERROR_H
#define UMAS_ERROR_H

#include "umas.h"

#include <stdarg.h>
#include <stdio.h>

/* printf-style: writes the message into *err (if err is not NULL), with no atoms named. Always
 * returns -1 so that callers can write `return umas_fail(err, "...")`. */
static inline int umas_fail(umas_error *err, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
/* The same for an error about the atoms (nodes) a and b: err->atom = {a, b}. */
static inline int umas_fail_atoms(umas_error *err, int a, int b, const char *format, ...)
    __attribute__((format(printf, 4, 5)));

static inline int umas_fail_args(umas_error *err, int a, int b, const char *format, va_list args) {
    if (err) {
        vsnprintf(err->message, sizeof err->message, format, args);
        err->atom[0] = a;
        err->atom[1] = b;
    }
    return -1;
}

static inline int umas_fail(umas_error *err, const char *format, ...) {
    va_list args;
    va_start(args, format);
    umas_fail_args(err, -1, -1, format, args);
    va_end(args);
    return -1;
}

static inline int umas_fail_atoms(umas_error *err, int a, int b, const char *format, ...) {
    va_list args;
    va_start(args, format);
    umas_fail_args(err, a, b, format, args);
    va_end(args);
    return -1;
}

#endif
