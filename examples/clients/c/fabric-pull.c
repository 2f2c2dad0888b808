/*
 * fabric-pull - pull one queue from an offset and commit the offset for a group
 * (PULL_MESSAGE and COMMIT_CONSUMER_OFFSET, docs/PROTOCOL.md 7.4 and 7.5).
 *
 * Prints one JSON object per line (UTF-8, one line per message, then one result):
 *
 *   {"type":"message","msg_id":"...","offset_msg_id":"...","topic":"...",
 *    "broker":"...","queue_id":0,"queue_offset":0,"tags":"...","keys":["..."],
 *    "properties":{"k":"v"},"flag":0,"sysflag":0,"born_timestamp":0,
 *    "store_timestamp":0,"reconsume_times":0,"body_len":5,"body_base64":"aGVsbG8="}
 *   {"type":"result","status":"FOUND","messages":1,"next_offset":1,"min_offset":0,
 *    "max_offset":1,"committed":1}
 *
 * The body is the application's body: decompressed when the record is COMPRESSED.
 * Errors print "fabric-pull: error: NAME (CODE) from ENDPOINT: REMARK" on stderr and
 * the exit status is 1 (2 for bad usage).
 */
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "fabric.h"

#define PROG "fabric-pull"
/* Pulls in a row that return nothing to print (filtered, offset moved) before giving up. */
#define MAX_EMPTY_PULLS 64

static void usage(FILE *out) {
    (void)fprintf(
        out,
        "usage: " PROG " (--nameserver EP | --broker EP) --topic TOPIC --queue ID [options]\n"
        "\n"
        "Pulls up to --max messages of one queue, prints them as JSON lines, then commits\n"
        "the next offset for --group.\n"
        "\n"
        "  -n, --nameserver EP     find the queue's broker through this NameServer\n"
        "  -b, --broker EP         pull from this broker directly\n"
        "  -t, --topic TOPIC       the topic\n"
        "  -q, --queue ID          the queue id\n"
        "      --broker-name NAME  the broker name (needed when several serve the topic)\n"
        "  -o, --offset OFFSET     a number, min, max or committed (the group's committed\n"
        "                          offset, else min; default committed)\n"
        "  -m, --max N             at most N messages (default 32)\n"
        "  -g, --group GROUP       consumer group (default fabric-c-consumer)\n"
        "  -w, --wait MS           long polling: wait up to MS for messages (default 0)\n"
        "  -s, --subscription EXPR tag filter: * or tags joined by || (default *)\n"
        "      --no-commit         do not commit the offset\n"
        "      --check-crc         verify each record's CRC32\n"
        "      --timeout MS        per request, on top of the wait (default 3000)\n"
        "  -h, --help              this text\n");
}

typedef struct {
    cli_target t; /* -n -b -t -q --broker-name --timeout */
    const char *offset;
    int64_t max;
    const char *group;
    int64_t wait_ms;
    const char *subscription;
    int no_commit;
    int check_crc;
} options;

/* ------------------------------------------------------------------------------ */
/* Output: JSON strings, base64. A failed write is remembered and reported at exit. */
/* ------------------------------------------------------------------------------ */

static int out_failed = 0;

static void out_bytes(const void *p, size_t n) {
    if (n > 0 && fwrite(p, 1, n, stdout) != n) {
        out_failed = 1;
    }
}

static void out_str(const char *s) { out_bytes(s, strlen(s)); }

static void out_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void out_fmt(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (vprintf(fmt, ap) < 0) {
        out_failed = 1;
    }
    va_end(ap);
}

/* A JSON string; the input was checked to be UTF-8, so only escapes are needed. */
static void out_json_str(const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    out_bytes("\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            continue;
        }
        out_bytes(s + run, i - run);
        run = i + 1;
        char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 0xF]};
        if (c == '"' || c == '\\') {
            esc[1] = (char)c;
            out_bytes(esc, 2);
        } else {
            out_bytes(esc, 6);
        }
    }
    out_bytes(s + run, n - run);
    out_bytes("\"", 1);
}

static void out_base64(const uint8_t *p, size_t n) {
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char buf[4096];
    size_t used = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n) {
            v |= (uint32_t)p[i + 1] << 8;
        }
        if (i + 2 < n) {
            v |= p[i + 2];
        }
        buf[used++] = alphabet[(v >> 18) & 63];
        buf[used++] = alphabet[(v >> 12) & 63];
        buf[used++] = i + 1 < n ? alphabet[(v >> 6) & 63] : '=';
        buf[used++] = i + 2 < n ? alphabet[v & 63] : '=';
        if (used == sizeof buf) {
            out_bytes(buf, used);
            used = 0;
        }
    }
    out_bytes(buf, used);
}

/* ------------------------------------------------------------------------------ */
/* Arguments                                                                       */
/* ------------------------------------------------------------------------------ */

static int parse_args(int argc, char **argv, options *o) {
    static const struct option longopts[] = {
        CLI_TARGET_LONGOPTS,
        {"offset", required_argument, NULL, 'o'},
        {"max", required_argument, NULL, 'm'},
        {"group", required_argument, NULL, 'g'},
        {"wait", required_argument, NULL, 'w'},
        {"subscription", required_argument, NULL, 's'},
        {"no-commit", no_argument, NULL, 'N'},
        {"check-crc", no_argument, NULL, 'C'},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof *o);
    cli_target_init(&o->t);
    o->offset = "committed";
    o->max = 32;
    o->group = "fabric-c-consumer";
    o->subscription = "*";
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":n:b:t:q:o:m:g:w:s:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'o':
            o->offset = optarg;
            break;
        case 'm':
            if (cli_parse_i64(PROG, "--max", optarg, 1, 100000000, &o->max) != 0) {
                return -1;
            }
            break;
        case 'g':
            o->group = optarg;
            break;
        case 'w':
            if (cli_parse_i64(PROG, "--wait", optarg, 0, 3600000, &o->wait_ms) != 0) {
                return -1;
            }
            break;
        case 's':
            o->subscription = optarg;
            break;
        case 'N':
            o->no_commit = 1;
            break;
        case 'C':
            o->check_crc = 1;
            break;
        default:
            if (cli_common_option(PROG, c, argv, usage, &o->t) != 0) {
                return -1;
            }
            break;
        }
    }
    if (optind < argc) {
        (void)fprintf(stderr, PROG ": error: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (cli_check_target(PROG, o->t.nameserver, o->t.broker) != 0) {
        return -1;
    }
    if (o->t.topic == NULL || o->t.queue < 0) {
        (void)fprintf(stderr, PROG ": error: --topic and --queue are required\n");
        return -1;
    }
    if (strcmp(o->offset, "min") != 0 && strcmp(o->offset, "max") != 0 &&
        strcmp(o->offset, "committed") != 0) {
        int64_t ignored;
        if (cli_parse_i64(PROG, "--offset (or min, max, committed)", o->offset, 0, INT64_MAX,
                          &ignored) != 0) {
            return -1;
        }
    }
    if (cli_check_utf8(PROG, "--topic", o->t.topic) != 0 ||
        cli_check_utf8(PROG, "--group", o->group) != 0 ||
        cli_check_utf8(PROG, "--subscription", o->subscription) != 0) {
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------ */
/* Requests                                                                        */
/* ------------------------------------------------------------------------------ */

/* The broker serving queue o->t.queue for reading, and its broker name. */
static int resolve_broker(void *zctx, const options *o, char *addr, size_t addr_size,
                          char *broker_name, size_t name_size, fab_error *err) {
    if (o->t.broker != NULL) {
        (void)snprintf(broker_name, name_size, "%s", o->t.broker_name ? o->t.broker_name : "");
        return fab_endpoint(o->t.broker, addr, addr_size, err);
    }
    fab_queue_list qs;
    if (fab_lookup_queues(zctx, o->t.nameserver, o->t.topic, FAB_PERM_READ, 0,
                          (int)o->t.timeout_ms, &qs, err) != 0) {
        return -1;
    }
    const fab_queue *found = NULL;
    for (size_t i = 0; i < qs.n; i++) {
        const fab_queue *q = &qs.items[i];
        if (q->queue_id != o->t.queue ||
            (o->t.broker_name != NULL && strcmp(q->broker_name, o->t.broker_name) != 0)) {
            continue;
        }
        if (found != NULL) {
            fab_set_error(err, FAB_E_LOCAL, NULL,
                          "brokers %s and %s both serve queue %lld of %s: choose one with "
                          "--broker-name",
                          found->broker_name, q->broker_name, (long long)o->t.queue, o->t.topic);
            fab_queue_list_free(&qs);
            return -1;
        }
        found = q;
    }
    if (found == NULL) {
        fab_set_error(err, FAB_E_LOCAL, NULL, "topic %s has no readable queue %lld%s", o->t.topic,
                      (long long)o->t.queue, o->t.broker_name ? " on that broker name" : "");
        fab_queue_list_free(&qs);
        return -1;
    }
    (void)snprintf(addr, addr_size, "%s", found->addr);
    (void)snprintf(broker_name, name_size, "%s", found->broker_name);
    fab_queue_list_free(&qs);
    return 0;
}

/* QUERY_CONSUMER_OFFSET, GET_MIN_OFFSET or GET_MAX_OFFSET: the OffsetReply's offset.
 * Returns 0, 1 for QUERY_NOT_FOUND, -1 on an error. */
static int query_offset(fab_conn *c, const options *o, uint32_t code, int64_t *out,
                        fab_error *err) {
    fab_request r;
    if (fab_request_begin(&r, code, 0) == 0) {
        fab_pack_map(&r, code == FAB_QUERY_CONSUMER_OFFSET ? 3 : 2);
        if (code == FAB_QUERY_CONSUMER_OFFSET) {
            fab_pack_kv_str(&r, "consumer_group", o->group);
        }
        fab_pack_kv_str(&r, "topic", o->t.topic);
        fab_pack_kv_int(&r, "queue_id", o->t.queue);
    }
    fab_reply reply;
    int rc = fab_call(c, &r, NULL, 0, (int)o->t.timeout_ms, &reply, err);
    fab_request_free(&r);
    if (rc != 0) {
        return -1;
    }
    if (reply.code == FAB_QUERY_NOT_FOUND && code == FAB_QUERY_CONSUMER_OFFSET) {
        fab_reply_free(&reply);
        return 1;
    }
    if (reply.code != FAB_SUCCESS) {
        fab_reply_error(&reply, c->endpoint, err);
        fab_reply_free(&reply);
        return -1;
    }
    rc = fab_body_int(&reply, "offset", out, c->endpoint, err);
    fab_reply_free(&reply);
    return rc;
}

static int start_offset(fab_conn *c, const options *o, int64_t *out, fab_error *err) {
    if (strcmp(o->offset, "min") == 0) {
        return query_offset(c, o, FAB_GET_MIN_OFFSET, out, err);
    }
    if (strcmp(o->offset, "max") == 0) {
        return query_offset(c, o, FAB_GET_MAX_OFFSET, out, err);
    }
    if (strcmp(o->offset, "committed") == 0) {
        int rc = query_offset(c, o, FAB_QUERY_CONSUMER_OFFSET, out, err);
        if (rc == 1) {
            return query_offset(c, o, FAB_GET_MIN_OFFSET, out, err);
        }
        return rc;
    }
    /* A number, checked by parse_args. */
    *out = strtoll(o->offset, NULL, 10);
    return 0;
}

static int commit_offset(fab_conn *c, const options *o, int64_t offset, fab_error *err) {
    fab_request r;
    if (fab_request_begin(&r, FAB_COMMIT_CONSUMER_OFFSET, 0) == 0) {
        fab_pack_map(&r, 4);
        fab_pack_kv_str(&r, "consumer_group", o->group);
        fab_pack_kv_str(&r, "topic", o->t.topic);
        fab_pack_kv_int(&r, "queue_id", o->t.queue);
        fab_pack_kv_int(&r, "offset", offset);
    }
    fab_reply reply;
    int rc = fab_call(c, &r, NULL, 0, (int)o->t.timeout_ms, &reply, err);
    fab_request_free(&r);
    if (rc != 0) {
        return -1;
    }
    if (reply.code != FAB_SUCCESS) {
        fab_reply_error(&reply, c->endpoint, err);
        rc = -1;
    }
    fab_reply_free(&reply);
    return rc;
}

/* Section 7.4 step 3: the broker filters by tag CRC32, so re-check the tag exactly. */
static int tag_matches(const char *subscription, const char *tag, size_t tag_len) {
    const char *s = subscription;
    while (*s == ' ') {
        s++;
    }
    if (*s == '\0' || (s[0] == '*' && s[1 + strspn(s + 1, " ")] == '\0')) {
        return 1;
    }
    if (tag_len == 0) {
        return 0;
    }
    while (*s != '\0') {
        const char *end = strstr(s, "||");
        size_t len = end != NULL ? (size_t)(end - s) : strlen(s);
        const char *a = s;
        const char *b = s + len;
        while (a < b && *a == ' ') {
            a++;
        }
        while (b > a && b[-1] == ' ') {
            b--;
        }
        if ((size_t)(b - a) == tag_len && memcmp(a, tag, tag_len) == 0) {
            return 1;
        }
        if (end == NULL) {
            break;
        }
        s = end + 2;
    }
    return 0;
}

static int check_str(const char *p, size_t n, const char *what, fab_error *err) {
    if (!fab_utf8_valid(p, n)) {
        fab_set_error(err, FAB_E_PROTOCOL, NULL, "a record's %s is not UTF-8", what);
        return -1;
    }
    return 0;
}

/* Print one record as a JSON line; *printed is 1 when it matched the subscription. */
static int print_record(const options *o, const char *broker_name, const void *data, size_t size,
                        int *printed, fab_error *err) {
    fab_record rec;
    fab_props props;
    *printed = 0;
    if (fab_record_parse(data, size, o->check_crc, &rec, err) != 0) {
        return -1;
    }
    if (fab_props_parse(&rec, &props, err) != 0) {
        return -1;
    }
    int rc = -1;
    uint8_t *inflated = NULL;
    const uint8_t *body = rec.body;
    size_t body_len = rec.body_len;
    if (check_str(rec.topic, rec.topic_len, "topic", err) != 0 ||
        check_str(props.tags, props.tags_len, "tags", err) != 0 ||
        check_str(props.uniq_id, props.uniq_id_len, "uniq_id", err) != 0) {
        goto out;
    }
    for (uint32_t i = 0; props.keys != NULL && i < props.keys->via.array.size; i++) {
        const msgpack_object *k = &props.keys->via.array.ptr[i];
        if (check_str(k->via.str.ptr, k->via.str.size, "keys", err) != 0) {
            goto out;
        }
    }
    for (uint32_t i = 0; props.props != NULL && i < props.props->via.map.size; i++) {
        const msgpack_object_kv *kv = &props.props->via.map.ptr[i];
        if (check_str(kv->key.via.str.ptr, kv->key.via.str.size, "properties", err) != 0 ||
            check_str(kv->val.via.str.ptr, kv->val.via.str.size, "properties", err) != 0) {
            goto out;
        }
    }
    if (!tag_matches(o->subscription, props.tags, props.tags_len)) {
        rc = 0;
        goto out;
    }
    if (rec.sysflag & FAB_SYSFLAG_COMPRESSED) {
        /* Section 11.6: the size limit applies to the body before compression. */
        if (fab_inflate(rec.body, rec.body_len, FAB_MAX_MESSAGE_BYTES, &inflated, &body_len,
                        err) != 0) {
            goto out;
        }
        body = inflated;
    }
    /* Section 7.4: the message id is uniq_id ("" when the producer set none); the
     * broker's offset id is rebuilt from the record. */
    char offset_id[80];
    if (fab_offset_msg_id(&rec, offset_id, sizeof offset_id) != 0) {
        fab_set_error(err, FAB_E_LOCAL, NULL, "cannot format a message id");
        goto out;
    }
    out_str("{\"type\":\"message\",\"msg_id\":");
    out_json_str(props.uniq_id, props.uniq_id_len);
    out_str(",\"offset_msg_id\":");
    out_json_str(offset_id, strlen(offset_id));
    out_str(",\"topic\":");
    out_json_str(rec.topic, rec.topic_len);
    out_str(",\"broker\":");
    out_json_str(broker_name, strlen(broker_name));
    out_fmt(",\"queue_id\":%d,\"queue_offset\":%lld,\"tags\":", (int)rec.queue_id,
            (long long)rec.queue_offset);
    out_json_str(props.tags, props.tags_len);
    out_str(",\"keys\":[");
    for (uint32_t i = 0; props.keys != NULL && i < props.keys->via.array.size; i++) {
        const msgpack_object *k = &props.keys->via.array.ptr[i];
        out_str(i > 0 ? "," : "");
        out_json_str(k->via.str.ptr, k->via.str.size);
    }
    out_str("],\"properties\":{");
    for (uint32_t i = 0; props.props != NULL && i < props.props->via.map.size; i++) {
        const msgpack_object_kv *kv = &props.props->via.map.ptr[i];
        out_str(i > 0 ? "," : "");
        out_json_str(kv->key.via.str.ptr, kv->key.via.str.size);
        out_str(":");
        out_json_str(kv->val.via.str.ptr, kv->val.via.str.size);
    }
    out_fmt("},\"flag\":%d,\"sysflag\":%d,\"born_timestamp\":%lld,\"store_timestamp\":%lld,"
            "\"reconsume_times\":%d,\"body_len\":%zu,\"body_base64\":\"",
            (int)rec.flag, (int)rec.sysflag, (long long)rec.born_timestamp,
            (long long)rec.store_timestamp, (int)rec.reconsume_times, body_len);
    out_base64(body, body_len);
    out_str("\"}\n");
    *printed = 1;
    rc = 0;
out:
    free(inflated);
    fab_props_free(&props);
    return rc;
}

static const char *pull_status(int code) {
    switch (code) {
    case FAB_SUCCESS:
        return "FOUND";
    case FAB_PULL_NOT_FOUND:
        return "NO_NEW_MSG";
    case FAB_PULL_RETRY_IMMEDIATELY:
        return "NO_MATCHED_MSG";
    case FAB_PULL_OFFSET_MOVED:
        return "OFFSET_ILLEGAL";
    default:
        return NULL;
    }
}

typedef struct {
    const char *status;
    int64_t messages;
    int64_t next_offset;
    int64_t min_offset;
    int64_t max_offset;
} pull_outcome;

/* Pull until --max messages, no new message (after --wait), or an error. */
static int pull_loop(fab_conn *c, const options *o, const char *broker_name, int64_t offset,
                     pull_outcome *res, fab_error *err) {
    int64_t wait_deadline = fab_monotonic_ms() + o->wait_ms;
    int empty = 0;
    res->status = "NO_NEW_MSG";
    res->messages = 0;
    res->next_offset = offset;
    res->min_offset = 0;
    res->max_offset = 0;
    while (res->messages < o->max) {
        int64_t want = o->max - res->messages;
        int64_t suspend = wait_deadline - fab_monotonic_ms();
        if (suspend < 0) {
            suspend = 0;
        }
        fab_request r;
        if (fab_request_begin(&r, FAB_PULL_MESSAGE, 0) == 0) {
            fab_pack_map(&r, 7);
            fab_pack_kv_str(&r, "consumer_group", o->group);
            fab_pack_kv_str(&r, "topic", o->t.topic);
            fab_pack_kv_int(&r, "queue_id", o->t.queue);
            fab_pack_kv_int(&r, "queue_offset", res->next_offset);
            fab_pack_kv_int(&r, "max_msgs", want > 1024 ? 1024 : want);
            fab_pack_kv_int(&r, "suspend_timeout_ms", suspend);
            fab_pack_kv_str(&r, "subscription", o->subscription);
        }
        fab_reply reply;
        /* Section 11.7: the wait plus the request timeout. */
        int rc = fab_call(c, &r, NULL, 0, (int)(suspend + o->t.timeout_ms), &reply, err);
        fab_request_free(&r);
        if (rc != 0) {
            return -1;
        }
        const char *status = pull_status(reply.code);
        if (status == NULL) {
            fab_reply_error(&reply, c->endpoint, err);
            fab_reply_free(&reply);
            return -1;
        }
        int64_t next;
        if (fab_body_int(&reply, "next_offset", &next, c->endpoint, err) != 0 ||
            fab_body_int(&reply, "min_offset", &res->min_offset, c->endpoint, err) != 0 ||
            fab_body_int(&reply, "max_offset", &res->max_offset, c->endpoint, err) != 0) {
            fab_reply_free(&reply);
            return -1;
        }
        res->status = status;
        int got = 0;
        if (reply.code == FAB_SUCCESS) {
            for (size_t i = 1; i < reply.nframes; i++) {
                int printed;
                if (print_record(o, broker_name, zmq_msg_data(&reply.frames[i]),
                                 zmq_msg_size(&reply.frames[i]), &printed, err) != 0) {
                    (void)snprintf(err->address, sizeof err->address, "%s", c->endpoint);
                    fab_reply_free(&reply);
                    return -1;
                }
                got += printed;
            }
        } else if (reply.code == FAB_PULL_OFFSET_MOVED) {
            (void)fprintf(stderr, PROG ": offset %lld is out of range, continuing at %lld\n",
                          (long long)res->next_offset, (long long)next);
        }
        int code = reply.code;
        fab_reply_free(&reply);
        res->messages += got;
        res->next_offset = next;
        if (code == FAB_PULL_NOT_FOUND) {
            break;
        }
        empty = got > 0 ? 0 : empty + 1;
        if (empty >= MAX_EMPTY_PULLS) {
            break;
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    options o;
    if (parse_args(argc, argv, &o) != 0) {
        (void)fprintf(stderr, "try '" PROG " --help'\n");
        return EXIT_USAGE;
    }
    int status = EXIT_FAILED;
    fab_error err;
    memset(&err, 0, sizeof err);
    fab_conn conn = {NULL, {0}};
    void *zctx = zmq_ctx_new();
    if (zctx == NULL) {
        (void)fprintf(stderr, PROG ": error: cannot create a ZeroMQ context\n");
        return EXIT_FAILED;
    }
    char addr[FAB_ENDPOINT_MAX];
    char broker_name[FAB_NAME_MAX + 1];
    int64_t offset;
    pull_outcome res;
    if (resolve_broker(zctx, &o, addr, sizeof addr, broker_name, sizeof broker_name, &err) != 0 ||
        fab_conn_open(&conn, zctx, addr, (int)o.t.timeout_ms, &err) != 0 ||
        start_offset(&conn, &o, &offset, &err) != 0 ||
        pull_loop(&conn, &o, broker_name, offset, &res, &err) != 0) {
        cli_print_error(PROG, &err);
        goto done;
    }
    if (!o.no_commit && commit_offset(&conn, &o, res.next_offset, &err) != 0) {
        cli_print_error(PROG, &err);
        goto done;
    }
    out_fmt("{\"type\":\"result\",\"status\":\"%s\",\"messages\":%lld,\"next_offset\":%lld,"
            "\"min_offset\":%lld,\"max_offset\":%lld,\"committed\":",
            res.status, (long long)res.messages, (long long)res.next_offset,
            (long long)res.min_offset, (long long)res.max_offset);
    if (o.no_commit) {
        out_str("null}\n");
    } else {
        out_fmt("%lld}\n", (long long)res.next_offset);
    }
    status = 0;
done:
    status = cli_flush_stdout(PROG, status, out_failed);
    fab_conn_close(&conn, 0);
    return cli_ctx_term(PROG, zctx, status);
}
