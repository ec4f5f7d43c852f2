/* error.h - filling a umas_error. */
#ifndef UMAS_ERROR_H
#define UMAS_ERROR_H

#include "umas.h"

/* printf-style: writes the message into *err (if err is not NULL). Always returns -1 so that
 * callers can write `return umas_fail(err, "...")`. */
int umas_fail(umas_error *err, const char *format, ...) __attribute__((format(printf, 2, 3)));

#endif
