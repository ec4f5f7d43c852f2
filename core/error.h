/* error.h - filling a umas_error. */
#ifndef UMAS_ERROR_H
#define UMAS_ERROR_H

#include "umas.h"

#include <stdarg.h>
#include <stdio.h>

/* printf-style: writes the message into *err (if err is not NULL). Always returns -1 so that
 * callers can write `return umas_fail(err, "...")`. */
static inline int umas_fail(umas_error *err, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

static inline int umas_fail(umas_error *err, const char *format, ...) {
    if (err) {
        va_list args;
        va_start(args, format);
        vsnprintf(err->message, sizeof err->message, format, args);
        va_end(args);
    }
    return -1;
}

#endif
