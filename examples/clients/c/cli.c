/*
 * cli.c - helpers shared by fabric-send and fabric-pull.
 */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cli_parse_i64(const char *prog, const char *what, const char *text, int64_t min, int64_t max,
                  int64_t *out) {
    char *end = NULL;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (text[0] == '\0' || end == NULL || *end != '\0' || errno == ERANGE || v < min || v > max) {
        (void)fprintf(stderr, "%s: error: %s must be an integer in %lld..%lld, got '%s'\n", prog,
                      what, (long long)min, (long long)max, text);
        return -1;
    }
    *out = (int64_t)v;
    return 0;
}

int cli_read_stdin(const char *prog, size_t limit, uint8_t **out, size_t *out_len) {
    size_t cap = 65536;
    size_t used = 0;
    uint8_t *buf = malloc(cap);
    if (buf == NULL) {
        (void)fprintf(stderr, "%s: error: out of memory\n", prog);
        return -1;
    }
    for (;;) {
        if (used == cap) {
            if (cap > limit) {
                (void)fprintf(stderr, "%s: error: the body on stdin is larger than %zu bytes\n",
                              prog, limit);
                free(buf);
                return -1;
            }
            size_t ncap = cap * 2 > limit + 1 ? limit + 1 : cap * 2;
            uint8_t *grown = realloc(buf, ncap);
            if (grown == NULL) {
                (void)fprintf(stderr, "%s: error: out of memory\n", prog);
                free(buf);
                return -1;
            }
            buf = grown;
            cap = ncap;
        }
        size_t got = fread(buf + used, 1, cap - used, stdin);
        used += got;
        if (got == 0) {
            if (ferror(stdin)) {
                (void)fprintf(stderr, "%s: error: cannot read stdin: %s\n", prog,
                              strerror(errno));
                free(buf);
                return -1;
            }
            if (feof(stdin)) {
                break;
            }
        }
    }
    if (used > limit) {
        (void)fprintf(stderr, "%s: error: the body on stdin is larger than %zu bytes\n", prog,
                      limit);
        free(buf);
        return -1;
    }
    *out = buf;
    *out_len = used;
    return 0;
}

void cli_print_error(const char *prog, const fab_error *err) {
    if (err->code >= 0) {
        (void)fprintf(stderr, "%s: error: %s (%d) from %s: %s\n", prog,
                      fab_response_name(err->code), err->code,
                      err->address[0] != '\0' ? err->address : "the server", err->message);
    } else if (err->code == FAB_E_LOCAL) {
        (void)fprintf(stderr, "%s: error: %s\n", prog, err->message);
    } else if (err->address[0] != '\0') {
        (void)fprintf(stderr, "%s: error: %s at %s: %s\n", prog, fab_error_name(err->code),
                      err->address, err->message);
    } else {
        (void)fprintf(stderr, "%s: error: %s: %s\n", prog, fab_error_name(err->code),
                      err->message);
    }
}

int cli_check_utf8(const char *prog, const char *what, const char *s) {
    if (!fab_utf8_valid(s, strlen(s))) {
        (void)fprintf(stderr, "%s: error: %s is not valid UTF-8\n", prog, what);
        return -1;
    }
    return 0;
}

void cli_target_init(cli_target *t) {
    memset(t, 0, sizeof *t);
    t->queue = -1;
    t->timeout_ms = 3000;
}

int cli_common_option(const char *prog, int c, char **argv, void (*usage)(FILE *out),
                      cli_target *t) {
    switch (c) {
    case 'n':
        t->nameserver = optarg;
        return 0;
    case 'b':
        t->broker = optarg;
        return 0;
    case 't':
        t->topic = optarg;
        return 0;
    case 'B':
        t->broker_name = optarg;
        return 0;
    case 'q':
        return cli_parse_i64(prog, "--queue", optarg, 0, FAB_MAX_QUEUE_NUMS - 1, &t->queue);
    case 'W':
        return cli_parse_i64(prog, "--timeout", optarg, 1, 3600000, &t->timeout_ms);
    case 'h':
        usage(stdout);
        exit(0);
    case ':':
        (void)fprintf(stderr, "%s: error: %s needs a value\n", prog, argv[optind - 1]);
        return -1;
    default:
        (void)fprintf(stderr, "%s: error: unknown option %s\n", prog, argv[optind - 1]);
        return -1;
    }
}

int cli_check_target(const char *prog, const char *nameserver, const char *broker) {
    if ((nameserver == NULL) == (broker == NULL)) {
        (void)fprintf(stderr, "%s: error: give exactly one of --nameserver and --broker\n", prog);
        return -1;
    }
    return 0;
}

int cli_flush_stdout(const char *prog, int status, int failed) {
    if (fflush(stdout) != 0 || ferror(stdout) || failed) {
        (void)fprintf(stderr, "%s: error: cannot write to stdout\n", prog);
        return EXIT_FAILED;
    }
    return status;
}

int cli_ctx_term(const char *prog, void *zctx, int status) {
    if (zctx == NULL) {
        return status;
    }
    while (zmq_ctx_term(zctx) != 0) {
        if (zmq_errno() != EINTR) {
            (void)fprintf(stderr, "%s: error: zmq_ctx_term: %s\n", prog,
                          zmq_strerror(zmq_errno()));
            return EXIT_FAILED;
        }
    }
    return status;
}
