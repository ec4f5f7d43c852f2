/* error.c - filling a umas_error. */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>

int umas_fail(umas_error *err, const char *format, ...) {
    if (err) {
        va_list args;
        va_start(args, format);
        vsnprintf(err->message, sizeof err->message, format, args);
        va_end(args);
    }
    return -1;
}
