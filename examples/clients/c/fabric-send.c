/*
 * fabric-send - send messages to a topic (SEND_MESSAGE, docs/PROTOCOL.md 7.2).
 *
 * Looks the topic's route up at a NameServer (or sends to one broker directly),
 * then sends COUNT messages round robin over the write queues, sync or oneway.
 * Each sync result prints one line:
 *
 *   SEND_OK msg_id=<id> broker=<broker name> queue=<queue id> offset=<queue offset>
 *
 * and each oneway send "ONEWAY msg_id=<id> broker=<name> queue=<id>". An error reply
 * prints "fabric-send: error: NAME (CODE) from ENDPOINT: REMARK" on stderr and the
 * exit status is 1 (2 for bad usage).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "cli.h"
#include "fabric.h"

#define PROG "fabric-send"
#define MAX_BROKERS 64

static void usage(FILE *out) {
    (void)fprintf(
        out,
        "usage: " PROG " (--nameserver EP | --broker EP) --topic TOPIC [options] [BODY]\n"
        "\n"
        "Sends BODY (or, without it, all of stdin, binary-safe) COUNT times.\n"
        "\n"
        "  -n, --nameserver EP    look the route up at this NameServer (tcp://host:port)\n"
        "  -b, --broker EP        send to this broker directly (queue --queue, default 0)\n"
        "  -t, --topic TOPIC      the topic\n"
        "  -g, --group GROUP      producer group (default fabric-c-producer)\n"
        "      --tag TAG          the message's tag\n"
        "  -k, --key KEY          a key (repeat for several)\n"
        "  -p, --prop KEY=VALUE   a user property, split at the first = (repeatable)\n"
        "  -c, --count N          send N messages (default 1)\n"
        "      --oneway           send ONEWAY: no reply, nothing printed per message but its id\n"
        "  -q, --queue ID         only this queue id (default: round robin over all)\n"
        "      --broker-name NAME only queues of this broker name\n"
        "      --flag N           the application flag (default 0)\n"
        "      --compress-over N  zlib-compress bodies longer than N bytes (default 4096;\n"
        "                         -1: never)\n"
        "      --timeout MS       per message, retries included (default 3000)\n"
        "      --retries N        extra attempts after a retryable failure (default 2)\n"
        "  -h, --help             this text\n");
}

typedef struct {
    cli_target t; /* -n -b -t -q --broker-name --timeout */
    const char *group;
    const char *tag;
    const char **keys;
    size_t nkeys;
    const char **props; /* "key=value" */
    size_t nprops;
    int64_t count;
    int oneway;
    int64_t flag;
    int64_t compress_over;
    int64_t retries;
    const char *body_arg;
} options;

typedef struct {
    fab_conn conns[MAX_BROKERS];
    size_t n;
} conn_pool;

static fab_conn *pool_get(conn_pool *pool, void *zctx, const char *addr, int timeout_ms,
                          fab_error *err) {
    char endpoint[FAB_ENDPOINT_MAX];
    if (fab_endpoint(addr, endpoint, sizeof endpoint, err) != 0) {
        return NULL;
    }
    for (size_t i = 0; i < pool->n; i++) {
        if (strcmp(pool->conns[i].endpoint, endpoint) == 0) {
            return &pool->conns[i];
        }
    }
    if (pool->n == MAX_BROKERS) {
        fab_set_error(err, FAB_E_LOCAL, NULL, "more than %d brokers", MAX_BROKERS);
        return NULL;
    }
    if (fab_conn_open(&pool->conns[pool->n], zctx, endpoint, timeout_ms, err) != 0) {
        return NULL;
    }
    return &pool->conns[pool->n++];
}

/* Section 11.4: the replies after which a send is tried again. */
static int retryable(int code) {
    return code == FAB_E_TIMEOUT || code == FAB_SYSTEM_ERROR || code == FAB_SYSTEM_BUSY ||
           code == FAB_SERVICE_NOT_AVAILABLE || code == FAB_TOPIC_NOT_EXIST ||
           code == FAB_NO_PERMISSION;
}

/* Section 4: the SendStatus of a reply code that carries a SendReply, or NULL. */
static const char *send_status(int code) {
    switch (code) {
    case FAB_SUCCESS:
        return "SEND_OK";
    case FAB_FLUSH_DISK_TIMEOUT:
        return "FLUSH_DISK_TIMEOUT";
    case FAB_FLUSH_SLAVE_TIMEOUT:
        return "FLUSH_SLAVE_TIMEOUT";
    case FAB_SLAVE_NOT_AVAILABLE:
        return "SLAVE_NOT_AVAILABLE";
    default:
        return NULL;
    }
}

static int parse_args(int argc, char **argv, options *o) {
    static const struct option longopts[] = {
        CLI_TARGET_LONGOPTS,
        {"group", required_argument, NULL, 'g'},
        {"tag", required_argument, NULL, 'T'},
        {"key", required_argument, NULL, 'k'},
        {"prop", required_argument, NULL, 'p'},
        {"count", required_argument, NULL, 'c'},
        {"oneway", no_argument, NULL, 'O'},
        {"flag", required_argument, NULL, 'F'},
        {"compress-over", required_argument, NULL, 'Z'},
        {"retries", required_argument, NULL, 'R'},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof *o);
    cli_target_init(&o->t);
    o->group = "fabric-c-producer";
    o->tag = "";
    o->count = 1;
    o->compress_over = 4096;
    o->retries = 2;
    /* At most argc keys and properties: allocate once, no growth needed. */
    o->keys = calloc((size_t)argc, sizeof *o->keys);
    o->props = calloc((size_t)argc, sizeof *o->props);
    if (o->keys == NULL || o->props == NULL) {
        (void)fprintf(stderr, PROG ": error: out of memory\n");
        return -1;
    }
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":n:b:t:g:k:p:c:q:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'g':
            o->group = optarg;
            break;
        case 'T':
            o->tag = optarg;
            break;
        case 'k':
            o->keys[o->nkeys++] = optarg;
            break;
        case 'p':
            o->props[o->nprops++] = optarg;
            break;
        case 'c':
            if (cli_parse_i64(PROG, "--count", optarg, 1, 100000000, &o->count) != 0) {
                return -1;
            }
            break;
        case 'O':
            o->oneway = 1;
            break;
        case 'F':
            if (cli_parse_i64(PROG, "--flag", optarg, INT32_MIN, INT32_MAX, &o->flag) != 0) {
                return -1;
            }
            break;
        case 'Z':
            if (cli_parse_i64(PROG, "--compress-over", optarg, -1, INT32_MAX, &o->compress_over) !=
                0) {
                return -1;
            }
            break;
        case 'R':
            if (cli_parse_i64(PROG, "--retries", optarg, 0, 100, &o->retries) != 0) {
                return -1;
            }
            break;
        default:
            if (cli_common_option(PROG, c, argv, usage, &o->t) != 0) {
                return -1;
            }
            break;
        }
    }
    if (optind < argc) {
        o->body_arg = argv[optind++];
    }
    if (optind < argc) {
        (void)fprintf(stderr, PROG ": error: more than one BODY argument ('%s')\n", argv[optind]);
        return -1;
    }
    if (cli_check_target(PROG, o->t.nameserver, o->t.broker) != 0) {
        return -1;
    }
    if (o->t.topic == NULL) {
        (void)fprintf(stderr, PROG ": error: --topic is required\n");
        return -1;
    }
    /* Names are checked by the servers (section 8), whose error is then printed; the
     * strings must still be UTF-8 to be MessagePack str at all (section 2). */
    if (cli_check_utf8(PROG, "--topic", o->t.topic) != 0 ||
        cli_check_utf8(PROG, "--group", o->group) != 0 ||
        cli_check_utf8(PROG, "--tag", o->tag) != 0) {
        return -1;
    }
    for (size_t i = 0; i < o->nkeys; i++) {
        if (cli_check_utf8(PROG, "--key", o->keys[i]) != 0) {
            return -1;
        }
    }
    for (size_t i = 0; i < o->nprops; i++) {
        const char *eq = strchr(o->props[i], '=');
        if (eq == NULL || eq == o->props[i]) {
            (void)fprintf(stderr,
                          PROG ": error: --prop needs KEY=VALUE with a non-empty KEY, got '%s'\n",
                          o->props[i]);
            return -1;
        }
        if (cli_check_utf8(PROG, "--prop", o->props[i]) != 0) {
            return -1;
        }
        size_t klen = (size_t)(eq - o->props[i]);
        for (size_t j = 0; j < i; j++) {
            if (strncmp(o->props[j], o->props[i], klen + 1) == 0) {
                (void)fprintf(stderr, PROG ": error: property '%.*s' given twice\n", (int)klen,
                              o->props[i]);
                return -1;
            }
        }
    }
    return 0;
}

/* Frame 0 of one SEND_MESSAGE (SendMessageBody, section 7.2). */
static void pack_send(fab_request *r, const options *o, const fab_queue *q, const char *uniq_id,
                      int32_t sysflag) {
    fab_pack_map(r, 10);
    fab_pack_kv_str(r, "producer_group", o->group);
    fab_pack_kv_str(r, "topic", o->t.topic);
    fab_pack_kv_int(r, "queue_id", q->queue_id);
    fab_pack_kv_str(r, "tags", o->tag);
    fab_pack_str(r, "keys");
    fab_pack_array(r, (uint32_t)o->nkeys);
    for (size_t i = 0; i < o->nkeys; i++) {
        fab_pack_str(r, o->keys[i]);
    }
    fab_pack_kv_str(r, "uniq_id", uniq_id);
    fab_pack_str(r, "properties");
    fab_pack_map(r, (uint32_t)o->nprops);
    for (size_t i = 0; i < o->nprops; i++) {
        const char *eq = strchr(o->props[i], '=');
        fab_pack_strn(r, o->props[i], (size_t)(eq - o->props[i]));
        fab_pack_str(r, eq + 1);
    }
    fab_pack_kv_int(r, "flag", o->flag);
    fab_pack_kv_int(r, "sysflag", sysflag);
    fab_pack_kv_int(r, "born_timestamp", fab_wall_ms());
}

/* The queues to send to: the route's write queues, filtered by --queue/--broker-name. */
static int resolve_queues(void *zctx, const options *o, fab_queue_list *out, fab_error *err) {
    out->items = NULL;
    out->n = 0;
    if (o->t.broker != NULL) {
        out->items = calloc(1, sizeof *out->items);
        if (out->items == NULL) {
            fab_set_error(err, FAB_E_LOCAL, NULL, "out of memory");
            return -1;
        }
        out->n = 1;
        out->items[0].queue_id = o->t.queue < 0 ? 0 : (int32_t)o->t.queue;
        (void)snprintf(out->items[0].broker_name, sizeof out->items[0].broker_name, "%s",
                       o->t.broker_name != NULL ? o->t.broker_name : "");
        return fab_endpoint(o->t.broker, out->items[0].addr, sizeof out->items[0].addr, err);
    }
    /* With the provisional route of section 11.2 when the topic has none yet. */
    if (fab_lookup_queues(zctx, o->t.nameserver, o->t.topic, FAB_PERM_WRITE, 1,
                          (int)o->t.timeout_ms, out, err) != 0) {
        return -1;
    }
    size_t kept = 0;
    for (size_t i = 0; i < out->n; i++) {
        const fab_queue *q = &out->items[i];
        if ((o->t.queue >= 0 && q->queue_id != o->t.queue) ||
            (o->t.broker_name != NULL && strcmp(q->broker_name, o->t.broker_name) != 0)) {
            continue;
        }
        out->items[kept++] = *q;
    }
    out->n = kept;
    if (kept == 0) {
        int filtered = o->t.queue >= 0 || o->t.broker_name != NULL;
        fab_set_error(err, FAB_E_LOCAL, NULL, "topic %s has no writable queue%s", o->t.topic,
                      filtered ? " matching --queue/--broker-name" : "");
        return -1;
    }
    return 0;
}

/* The next queue after index pos on another broker name, when there is one. */
static size_t next_other_broker(const fab_queue_list *qs, size_t pos) {
    for (size_t step = 1; step < qs->n; step++) {
        size_t i = (pos + step) % qs->n;
        if (strcmp(qs->items[i].broker_name, qs->items[pos].broker_name) != 0) {
            return i;
        }
    }
    return (pos + 1) % qs->n;
}

/*
 * One message: attempts within the deadline, retries on another broker (11.4).
 * Returns 0 when sent (and its result printed), -1 with err set.
 */
static int send_one(void *zctx, conn_pool *pool, const options *o, const fab_queue_list *qs,
                    size_t *pos, const fab_frame *body, int32_t sysflag, fab_error *err) {
    char uniq_id[33];
    if (fab_new_msg_id(uniq_id, err) != 0) {
        return -1;
    }
    int64_t deadline = fab_monotonic_ms() + o->t.timeout_ms;
    size_t at = *pos % qs->n;
    *pos = at + 1;
    for (int64_t attempt = 0;; attempt++) {
        const fab_queue *q = &qs->items[at];
        int64_t remaining = deadline - fab_monotonic_ms();
        if (remaining <= 0) {
            if (attempt == 0) {
                fab_set_error(err, FAB_E_TIMEOUT, q->addr, "no time left to send");
            }
            return -1; /* err holds the last attempt's failure */
        }
        fab_conn *conn = pool_get(pool, zctx, q->addr, (int)o->t.timeout_ms, err);
        if (conn == NULL) {
            return -1;
        }
        fab_request r;
        if (fab_request_begin(&r, FAB_SEND_MESSAGE, o->oneway ? FAB_FLAG_ONEWAY : 0) == 0) {
            pack_send(&r, o, q, uniq_id, sysflag);
        }
        int rc;
        fab_reply reply;
        memset(&reply, 0, sizeof reply);
        if (o->oneway) {
            rc = fab_send(conn, &r, body, 1, err);
        } else {
            rc = fab_call(conn, &r, body, 1, (int)remaining, &reply, err);
        }
        fab_request_free(&r);
        if (rc == 0 && o->oneway) {
            if (printf("ONEWAY msg_id=%s broker=%s queue=%d\n", uniq_id, q->broker_name,
                       (int)q->queue_id) < 0) {
                fab_set_error(err, FAB_E_LOCAL, NULL, "cannot write to stdout");
                return -1;
            }
            return 0;
        }
        if (rc == 0) {
            const char *status = send_status(reply.code);
            if (status != NULL) {
                /* SendReply (7.2): msg_id, queue_id, queue_offset, broker_name. */
                const char *msg_id;
                size_t msg_id_len;
                const char *broker;
                size_t broker_len;
                int64_t queue_id;
                int64_t offset;
                if (fab_obj_str(fab_map_get(reply.body, "msg_id"), &msg_id, &msg_id_len) != 0 ||
                    fab_obj_str(fab_map_get(reply.body, "broker_name"), &broker, &broker_len) !=
                        0 ||
                    fab_body_int(&reply, "queue_id", &queue_id, conn->endpoint, err) != 0 ||
                    fab_body_int(&reply, "queue_offset", &offset, conn->endpoint, err) != 0) {
                    if (err->code != FAB_E_PROTOCOL) {
                        fab_set_error(err, FAB_E_PROTOCOL, conn->endpoint,
                                      "SendReply without msg_id or broker_name");
                    }
                    fab_reply_free(&reply);
                    return -1;
                }
                int n = printf("%s msg_id=%.*s broker=%.*s queue=%lld offset=%lld\n", status,
                               (int)msg_id_len, msg_id, (int)broker_len, broker,
                               (long long)queue_id, (long long)offset);
                fab_reply_free(&reply);
                if (n < 0) {
                    fab_set_error(err, FAB_E_LOCAL, NULL, "cannot write to stdout");
                    return -1;
                }
                return 0;
            }
            fab_reply_error(&reply, conn->endpoint, err);
            fab_reply_free(&reply);
        }
        if (!retryable(err->code) || attempt >= o->retries) {
            return -1;
        }
        /* A retry keeps uniq_id and goes to another broker unless a queue was chosen. */
        if (o->t.queue < 0 && o->t.broker_name == NULL) {
            at = next_other_broker(qs, at);
            *pos = at + 1;
        }
    }
}

int main(int argc, char **argv) {
    options o;
    if (parse_args(argc, argv, &o) != 0) {
        free(o.keys);
        free(o.props);
        (void)fprintf(stderr, "try '" PROG " --help'\n");
        return EXIT_USAGE;
    }
    int status = EXIT_FAILED;
    uint8_t *stdin_body = NULL;
    uint8_t *packed = NULL;
    fab_queue_list qs = {NULL, 0};
    conn_pool *pool = NULL;
    void *zctx = NULL;
    fab_error err;
    memset(&err, 0, sizeof err);

    const uint8_t *body;
    size_t body_len;
    if (o.body_arg != NULL) {
        body = (const uint8_t *)o.body_arg;
        body_len = strlen(o.body_arg);
        if (body_len > FAB_MAX_MESSAGE_BYTES) {
            (void)fprintf(stderr, PROG ": error: the body is larger than %u bytes\n",
                          FAB_MAX_MESSAGE_BYTES);
            goto done;
        }
    } else {
        if (cli_read_stdin(PROG, FAB_MAX_MESSAGE_BYTES, &stdin_body, &body_len) != 0) {
            goto done;
        }
        body = stdin_body;
    }
    /* Section 11.6: compress with zlib level 5 when that makes the body smaller; the
     * size limit applies to the body before compression (checked above). */
    fab_frame frame = {body, body_len};
    int32_t sysflag = 0;
    if (o.compress_over >= 0 && body_len > (size_t)o.compress_over) {
        size_t packed_len;
        if (fab_deflate(body, body_len, 5, &packed, &packed_len, &err) != 0) {
            cli_print_error(PROG, &err);
            goto done;
        }
        if (packed_len < body_len) {
            frame.data = packed;
            frame.size = packed_len;
            sysflag |= FAB_SYSFLAG_COMPRESSED;
        }
    }

    zctx = zmq_ctx_new();
    pool = calloc(1, sizeof *pool);
    if (zctx == NULL || pool == NULL) {
        (void)fprintf(stderr, PROG ": error: cannot create a ZeroMQ context\n");
        goto done;
    }
    if (resolve_queues(zctx, &o, &qs, &err) != 0) {
        cli_print_error(PROG, &err);
        goto done;
    }
    uint32_t start;
    if (getrandom(&start, sizeof start, 0) != (ssize_t)sizeof start) {
        start = 0; /* round robin from the first queue then */
    }
    size_t pos = start % qs.n; /* section 11.3: start at a random queue */
    for (int64_t i = 0; i < o.count; i++) {
        if (send_one(zctx, pool, &o, &qs, &pos, &frame, sysflag, &err) != 0) {
            cli_print_error(PROG, &err);
            goto done;
        }
    }
    status = 0;
done:
    status = cli_flush_stdout(PROG, status, 0);
    if (pool != NULL) {
        /* Oneway messages still queued get up to --timeout to leave (11.8). */
        for (size_t i = 0; i < pool->n; i++) {
            fab_conn_close(&pool->conns[i], o.oneway ? (int)o.t.timeout_ms : 0);
        }
        free(pool);
    }
    status = cli_ctx_term(PROG, zctx, status);
    fab_queue_list_free(&qs);
    free(packed);
    free(stdin_body);
    free(o.keys);
    free(o.props);
    return status;
}
