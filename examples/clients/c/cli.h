/*
 * cli.h - helpers shared by fabric-send and fabric-pull: numbers, input, errors.
 */
#ifndef FABRIC_CLI_H
#define FABRIC_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

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


/* The options both programs take: where the topic's queues are and how long to wait. */
typedef struct {
    const char *nameserver;
    const char *broker;
    const char *topic;
    const char *broker_name;
    int64_t queue;      /* -1: not given */
    int64_t timeout_ms; /* default 3000 */
} cli_target;

/* Their getopt_long entries (add the program's own, then the terminating zero entry). */
#define CLI_TARGET_LONGOPTS                                                                    \
    {"nameserver", required_argument, NULL, 'n'}, {"broker", required_argument, NULL, 'b'},    \
        {"topic", required_argument, NULL, 't'}, {"queue", required_argument, NULL, 'q'},      \
        {"broker-name", required_argument, NULL, 'B'},                                         \
        {"timeout", required_argument, NULL, 'W'}, {"help", no_argument, NULL, 'h'}

/* The defaults: nothing given, queue -1, timeout 3000 ms. */
void cli_target_init(cli_target *t);
/*
 * A getopt_long result the program does not handle itself: -n -b -t -q -B -W go into
 * t (0, or -1 with a message for a bad number); 'h' prints usage on stdout and exits 0;
 * ':' (a missing value) and anything else (an unknown option) print an error, -1.
 */
int cli_common_option(const char *prog, int c, char **argv, void (*usage)(FILE *out),
                      cli_target *t);
/* Exactly one of --nameserver and --broker must be given; 0 or -1 (message printed). */
int cli_check_target(const char *prog, const char *nameserver, const char *broker);
/* Flush stdout; status, or EXIT_FAILED (message printed) when stdout or failed says a
 * write went wrong. */
int cli_flush_stdout(const char *prog, int status, int failed);
/* Terminate a ZeroMQ context (NULL: nothing); status, or EXIT_FAILED (printed). */
int cli_ctx_term(const char *prog, void *zctx, int status);

#endif
