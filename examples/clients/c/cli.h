/*
 * cli.h - helpers shared by fabric-send and fabric-pull: numbers, input, errors.
 */
#ifndef FABRIC_CLI_H
#define FABRIC_CLI_H

#include <stddef.h>
#include <stdint.h>

#include "fabric.h"

/* Exit statuses: 0 done, 1 a failure (server error, timeout, ...), 2 bad usage. */
#define EXIT_FAILED 1
#define EXIT_USAGE 2

/* Parse a whole decimal integer within [min, max]; 0 or -1 (message printed). */
int cli_parse_i64(const char *prog, const char *what, const char *text, int64_t min, int64_t max,
                  int64_t *out);
/* Read all of stdin, at most limit bytes (more is an error); binary-safe. */
int cli_read_stdin(const char *prog, size_t limit, uint8_t **out, size_t *out_len);
/* "PROG: error: NAME (CODE) from ADDR: MESSAGE" on stderr. */
void cli_print_error(const char *prog, const fab_error *err);
/* Check that a command-line string is UTF-8 (MessagePack str must be); -1 printed. */
int cli_check_utf8(const char *prog, const char *what, const char *s);

#endif
