/*
 * fabric.c - the client library: connections, requests, replies, routes, records.
 * Every section number below refers to docs/PROTOCOL.md.
 */
#include "fabric.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

/* Most frames a reply may have: frame 0 and up to pull_max_msgs (1024) records. */
#define FAB_MAX_REPLY_FRAMES 4096

/* ------------------------------------------------------------------------------ */
/* Errors                                                                          */
/* ------------------------------------------------------------------------------ */

static const struct {
    int code;
    const char *name;
} RESPONSE_NAMES[] = {
    {FAB_SUCCESS, "SUCCESS"},
    {FAB_SYSTEM_ERROR, "SYSTEM_ERROR"},
    {FAB_SYSTEM_BUSY, "SYSTEM_BUSY"},
    {FAB_REQUEST_CODE_NOT_SUPPORTED, "REQUEST_CODE_NOT_SUPPORTED"},
    {FAB_FLUSH_DISK_TIMEOUT, "FLUSH_DISK_TIMEOUT"},
    {FAB_SLAVE_NOT_AVAILABLE, "SLAVE_NOT_AVAILABLE"},
    {FAB_FLUSH_SLAVE_TIMEOUT, "FLUSH_SLAVE_TIMEOUT"},
    {FAB_MESSAGE_ILLEGAL, "MESSAGE_ILLEGAL"},
    {FAB_SERVICE_NOT_AVAILABLE, "SERVICE_NOT_AVAILABLE"},
    {FAB_NO_PERMISSION, "NO_PERMISSION"},
    {FAB_TOPIC_NOT_EXIST, "TOPIC_NOT_EXIST"},
    {FAB_TOPIC_ALREADY_EXISTS, "TOPIC_ALREADY_EXISTS"},
    {FAB_PULL_NOT_FOUND, "PULL_NOT_FOUND"},
    {FAB_PULL_RETRY_IMMEDIATELY, "PULL_RETRY_IMMEDIATELY"},
    {FAB_PULL_OFFSET_MOVED, "PULL_OFFSET_MOVED"},
    {FAB_QUERY_NOT_FOUND, "QUERY_NOT_FOUND"},
    {FAB_VERSION_NOT_SUPPORTED, "VERSION_NOT_SUPPORTED"},
    {FAB_MALFORMED_REQUEST, "MALFORMED_REQUEST"},
    {FAB_INVALID_TOPIC_NAME, "INVALID_TOPIC_NAME"},
    {FAB_INVALID_GROUP_NAME, "INVALID_GROUP_NAME"},
    {FAB_NO_ROUTE, "NO_ROUTE"},
    {FAB_BROKER_NOT_REGISTERED, "BROKER_NOT_REGISTERED"},
};

const char *fab_response_name(int code) {
    for (size_t i = 0; i < sizeof RESPONSE_NAMES / sizeof RESPONSE_NAMES[0]; i++) {
        if (RESPONSE_NAMES[i].code == code) {
            return RESPONSE_NAMES[i].name;
        }
    }
    return "UNKNOWN";
}

const char *fab_error_name(int code) {
    switch (code) {
    case FAB_E_LOCAL:
        return "ERROR";
    case FAB_E_TIMEOUT:
        return "TIMEOUT";
    case FAB_E_PROTOCOL:
        return "PROTOCOL_ERROR";
    default:
        return fab_response_name(code);
    }
}

void fab_set_error(fab_error *err, int code, const char *address, const char *fmt, ...) {
    if (err == NULL) {
        return;
    }
    err->code = code;
    err->address[0] = '\0';
    if (address != NULL) {
        (void)snprintf(err->address, sizeof err->address, "%s", address);
    }
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    if (n < 0) {
        err->message[0] = '\0';
    }
}

/* ------------------------------------------------------------------------------ */
/* Clocks, ids, UTF-8                                                              */
/* ------------------------------------------------------------------------------ */

int64_t fab_monotonic_ms(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        return 0; /* cannot fail on Linux with a valid clock id */
    }
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t fab_wall_ms(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) {
        return 0;
    }
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int fill_random(void *buf, size_t n, fab_error *err) {
    uint8_t *p = buf;
    while (n > 0) {
        ssize_t got = getrandom(p, n, 0);
        if (got < 0) {
            if (errno == EINTR) {
                continue;
            }
            fab_set_error(err, FAB_E_LOCAL, NULL, "getrandom: %s", strerror(errno));
            return -1;
        }
        p += got;
        n -= (size_t)got;
    }
    return 0;
}

int fab_new_msg_id(char out[33], fab_error *err) {
    /* Section 11.1: host (32 bits), pid (16), random (16), seconds since 2020 (32),
     * counter (32). The host part is a hash of the host name: any unique id works. */
    static int ready = 0;
    static uint32_t host;
    static uint16_t salt;
    static uint32_t counter;
    static pid_t pid;
    if (!ready || pid != getpid()) {
        char name[256] = {0};
        if (gethostname(name, sizeof name - 1) != 0) {
            name[0] = '\0';
        }
        uint32_t h = 2166136261u; /* FNV-1a */
        for (const char *s = name; *s != '\0'; s++) {
            h = (h ^ (uint8_t)*s) * 16777619u;
        }
        host = h;
        if (fill_random(&salt, sizeof salt, err) != 0 ||
            fill_random(&counter, sizeof counter, err) != 0) {
            return -1;
        }
        pid = getpid();
        ready = 1;
    }
    int64_t since_2020 = fab_wall_ms() / 1000 - 1577836800;
    uint32_t seconds = since_2020 > 0 ? (uint32_t)since_2020 : 0;
    uint32_t count = counter++;
    int n = snprintf(out, 33, "%08X%04X%04X%08X%08X", (unsigned)host, (unsigned)(pid & 0xFFFF),
                     (unsigned)salt, (unsigned)seconds, (unsigned)count);
    if (n != 32) {
        fab_set_error(err, FAB_E_LOCAL, NULL, "cannot format a message id");
        return -1;
    }
    return 0;
}

int fab_utf8_valid(const char *str, size_t n) {
    const uint8_t *s = (const uint8_t *)str;
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i < len) {
            return 0;
        }
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) {
                return 0;
            }
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF)) {
            return 0;
        }
        i += len;
    }
    return 1;
}

/* ------------------------------------------------------------------------------ */
/* Connections                                                                     */
/* ------------------------------------------------------------------------------ */

int fab_endpoint(const char *in, char *out, size_t out_size, fab_error *err) {
    if (in == NULL || in[0] == '\0') {
        fab_set_error(err, FAB_E_LOCAL, NULL, "empty endpoint");
        return -1;
    }
    const char *prefix = strstr(in, "://") != NULL ? "" : "tcp://";
    int n = snprintf(out, out_size, "%s%s", prefix, in);
    if (n < 0 || (size_t)n >= out_size) {
        fab_set_error(err, FAB_E_LOCAL, NULL, "endpoint too long (at most %zu bytes): %s",
                      out_size - 1, in);
        return -1;
    }
    return 0;
}

int fab_conn_open(fab_conn *c, void *zctx, const char *endpoint, int timeout_ms, fab_error *err) {
    memset(c, 0, sizeof *c);
    if (fab_endpoint(endpoint, c->endpoint, sizeof c->endpoint, err) != 0) {
        return -1;
    }
    c->sock = zmq_socket(zctx, ZMQ_DEALER);
    if (c->sock == NULL) {
        fab_set_error(err, FAB_E_LOCAL, c->endpoint, "zmq_socket: %s", zmq_strerror(zmq_errno()));
        return -1;
    }
    /* Section 1: LINGER 0, IMMEDIATE 1; SNDTIMEO bounds the wait for a connection. */
    int linger = 0;
    int immediate = 1;
    int sndtimeo = timeout_ms;
    if (zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_setsockopt(c->sock, ZMQ_IMMEDIATE, &immediate, sizeof immediate) != 0 ||
        zmq_setsockopt(c->sock, ZMQ_SNDTIMEO, &sndtimeo, sizeof sndtimeo) != 0) {
        fab_set_error(err, FAB_E_LOCAL, c->endpoint, "zmq_setsockopt: %s",
                      zmq_strerror(zmq_errno()));
        fab_conn_close(c, 0);
        return -1;
    }
    if (zmq_connect(c->sock, c->endpoint) != 0) {
        fab_set_error(err, FAB_E_LOCAL, c->endpoint, "cannot connect to %s: %s", c->endpoint,
                      zmq_strerror(zmq_errno()));
        fab_conn_close(c, 0);
        return -1;
    }
    return 0;
}

void fab_conn_close(fab_conn *c, int linger_ms) {
    if (c->sock == NULL) {
        return;
    }
    int linger = linger_ms > 0 ? linger_ms : 0;
    /* A failure here leaves the linger at 0: queued oneway messages may be lost, which
     * the caller cannot do anything about while closing. */
    (void)zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger);
    (void)zmq_close(c->sock);
    c->sock = NULL;
}

/* ------------------------------------------------------------------------------ */
/* Requests                                                                        */
/* ------------------------------------------------------------------------------ */

static uint64_t next_request_id = 1;

int fab_request_begin(fab_request *r, uint32_t code, uint32_t flags) {
    msgpack_sbuffer_init(&r->buf);
    msgpack_packer_init(&r->pk, &r->buf, msgpack_sbuffer_write);
    r->failed = 0;
    r->code = code;
    r->flags = flags;
    /* Section 3.3: unique among the requests in flight, 0 .. 2^63-1. */
    r->request_id = next_request_id;
    next_request_id = next_request_id >= INT64_MAX ? 1 : next_request_id + 1;
    /* Section 3.1: [code, version, request_id, flags, body]. */
    if (msgpack_pack_array(&r->pk, 5) != 0 || msgpack_pack_uint32(&r->pk, code) != 0 ||
        msgpack_pack_uint32(&r->pk, FAB_PROTOCOL_VERSION) != 0 ||
        msgpack_pack_uint64(&r->pk, r->request_id) != 0 ||
        msgpack_pack_uint32(&r->pk, flags) != 0) {
        r->failed = 1;
        return -1;
    }
    return 0;
}

void fab_request_free(fab_request *r) { msgpack_sbuffer_destroy(&r->buf); }

void fab_pack_map(fab_request *r, uint32_t n) {
    if (msgpack_pack_map(&r->pk, n) != 0) {
        r->failed = 1;
    }
}

void fab_pack_array(fab_request *r, uint32_t n) {
    if (msgpack_pack_array(&r->pk, n) != 0) {
        r->failed = 1;
    }
}

void fab_pack_strn(fab_request *r, const char *s, size_t n) {
    if (n > UINT32_MAX || msgpack_pack_str(&r->pk, n) != 0 ||
        msgpack_pack_str_body(&r->pk, s, n) != 0) {
        r->failed = 1;
    }
}

void fab_pack_str(fab_request *r, const char *s) { fab_pack_strn(r, s, strlen(s)); }

void fab_pack_int(fab_request *r, int64_t v) {
    if (msgpack_pack_int64(&r->pk, v) != 0) {
        r->failed = 1;
    }
}

void fab_pack_kv_str(fab_request *r, const char *key, const char *value) {
    fab_pack_str(r, key);
    fab_pack_str(r, value);
}

void fab_pack_kv_int(fab_request *r, const char *key, int64_t value) {
    fab_pack_str(r, key);
    fab_pack_int(r, value);
}

int fab_send(fab_conn *c, fab_request *r, const fab_frame *frames, size_t nframes, fab_error *err) {
    if (r->failed) {
        fab_set_error(err, FAB_E_LOCAL, c->endpoint, "out of memory while encoding a request");
        return -1;
    }
    /* Section 3.4, checked before anything goes on the wire. */
    if (r->buf.size > FAB_MAX_HEADER_BYTES) {
        fab_set_error(err, FAB_E_LOCAL, NULL,
                      "frame 0 has %zu bytes, more than MAX_HEADER_BYTES (%u)", r->buf.size,
                      FAB_MAX_HEADER_BYTES);
        return -1;
    }
    if (nframes > FAB_MAX_BATCH_MESSAGES) {
        fab_set_error(err, FAB_E_LOCAL, NULL,
                      "%zu body frames, more than MAX_BATCH_MESSAGES (%u)", nframes,
                      FAB_MAX_BATCH_MESSAGES);
        return -1;
    }
    size_t total = r->buf.size;
    for (size_t i = 0; i < nframes; i++) {
        if (frames[i].size > FAB_MAX_MESSAGE_BYTES) {
            fab_set_error(err, FAB_E_LOCAL, NULL,
                          "body frame of %zu bytes, more than MAX_MESSAGE_BYTES (%u)",
                          frames[i].size, FAB_MAX_MESSAGE_BYTES);
            return -1;
        }
        total += frames[i].size;
    }
    if (total > FAB_MAX_REQUEST_BYTES) {
        fab_set_error(err, FAB_E_LOCAL, NULL,
                      "request of %zu bytes, more than MAX_REQUEST_BYTES (%u)", total,
                      FAB_MAX_REQUEST_BYTES);
        return -1;
    }
    /* With ZMQ_IMMEDIATE the first part blocks until the server is connected (at most
     * SNDTIMEO); once it is accepted, the other parts of the message are too. */
    if (zmq_send(c->sock, r->buf.data, r->buf.size, nframes > 0 ? ZMQ_SNDMORE : 0) < 0) {
        int e = zmq_errno();
        if (e == EAGAIN) {
            fab_set_error(err, FAB_E_TIMEOUT, c->endpoint,
                          "no connection to the server in time");
        } else {
            fab_set_error(err, FAB_E_LOCAL, c->endpoint, "zmq_send: %s", zmq_strerror(e));
        }
        return -1;
    }
    for (size_t i = 0; i < nframes; i++) {
        int more = i + 1 < nframes ? ZMQ_SNDMORE : 0;
        if (zmq_send(c->sock, frames[i].data, frames[i].size, more) < 0) {
            fab_set_error(err, FAB_E_LOCAL, c->endpoint, "zmq_send: %s",
                          zmq_strerror(zmq_errno()));
            return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------------ */
/* Replies                                                                         */
/* ------------------------------------------------------------------------------ */

static void close_frames(zmq_msg_t *frames, size_t n) {
    for (size_t i = 0; i < n; i++) {
        (void)zmq_msg_close(&frames[i]);
    }
    free(frames);
}

void fab_reply_free(fab_reply *reply) {
    if (reply->frames != NULL) {
        msgpack_unpacked_destroy(&reply->unpacked);
        close_frames(reply->frames, reply->nframes);
    }
    memset(reply, 0, sizeof *reply);
}

/* Receive every part of one message into a fresh array. */
static int recv_message(fab_conn *c, zmq_msg_t **out, size_t *nout, fab_error *err) {
    size_t cap = 4;
    size_t n = 0;
    zmq_msg_t *frames = malloc(cap * sizeof *frames);
    if (frames == NULL) {
        fab_set_error(err, FAB_E_LOCAL, c->endpoint, "out of memory");
        return -1;
    }
    int too_many = 0;
    for (;;) {
        zmq_msg_t part;
        if (zmq_msg_init(&part) != 0) {
            fab_set_error(err, FAB_E_LOCAL, c->endpoint, "zmq_msg_init: %s",
                          zmq_strerror(zmq_errno()));
            close_frames(frames, n);
            return -1;
        }
        if (zmq_msg_recv(&part, c->sock, 0) < 0) {
            fab_set_error(err, FAB_E_LOCAL, c->endpoint, "zmq_msg_recv: %s",
                          zmq_strerror(zmq_errno()));
            (void)zmq_msg_close(&part);
            close_frames(frames, n);
            return -1;
        }
        int more = zmq_msg_more(&part);
        if (n >= FAB_MAX_REPLY_FRAMES) {
            too_many = 1; /* keep reading to the end of the message, then fail */
            (void)zmq_msg_close(&part);
        } else {
            if (n == cap) {
                zmq_msg_t *grown = realloc(frames, 2 * cap * sizeof *frames);
                if (grown == NULL) {
                    fab_set_error(err, FAB_E_LOCAL, c->endpoint, "out of memory");
                    (void)zmq_msg_close(&part);
                    close_frames(frames, n);
                    return -1;
                }
                frames = grown;
                cap *= 2;
            }
            /* zmq_msg_t may be moved with memcpy only through zmq_msg_move. */
            if (zmq_msg_init(&frames[n]) != 0 || zmq_msg_move(&frames[n], &part) != 0) {
                fab_set_error(err, FAB_E_LOCAL, c->endpoint, "zmq_msg_move: %s",
                              zmq_strerror(zmq_errno()));
                (void)zmq_msg_close(&part);
                close_frames(frames, n);
                return -1;
            }
            (void)zmq_msg_close(&part);
            n++;
        }
        if (!more) {
            break;
        }
    }
    if (too_many) {
        fab_set_error(err, FAB_E_PROTOCOL, c->endpoint, "a reply with more than %d frames",
                      FAB_MAX_REPLY_FRAMES);
        close_frames(frames, n);
        return -1;
    }
    *out = frames;
    *nout = n;
    return 0;
}

static int obj_uint(const msgpack_object *o, uint64_t *out) {
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        return -1;
    }
    *out = o->via.u64;
    return 0;
}

/*
 * Decode frame 0 of a reply (section 3.2): an array of at least 6 elements (extra
 * elements are ignored, section 2). Returns 0, or -1 with err set.
 */
static int decode_reply(fab_conn *c, fab_reply *reply, fab_error *err) {
    const char *data = zmq_msg_data(&reply->frames[0]);
    size_t size = zmq_msg_size(&reply->frames[0]);
    size_t off = 0;
    msgpack_unpack_return ret = msgpack_unpack_next(&reply->unpacked, data, size, &off);
    if (ret != MSGPACK_UNPACK_SUCCESS || off != size) {
        fab_set_error(err, FAB_E_PROTOCOL, c->endpoint,
                      "reply frame 0 is not one MessagePack value");
        return -1;
    }
    const msgpack_object *top = &reply->unpacked.data;
    if (top->type != MSGPACK_OBJECT_ARRAY || top->via.array.size < 6) {
        fab_set_error(err, FAB_E_PROTOCOL, c->endpoint, "reply frame 0 is not an array of 6");
        return -1;
    }
    const msgpack_object *el = top->via.array.ptr;
    uint64_t code;
    uint64_t version;
    if (obj_uint(&el[0], &code) != 0 || code > INT32_MAX || obj_uint(&el[1], &version) != 0 ||
        obj_uint(&el[2], &reply->request_id) != 0 || obj_uint(&el[3], &reply->flags) != 0 ||
        fab_obj_str(&el[4], &reply->remark, &reply->remark_len) != 0 ||
        el[5].type != MSGPACK_OBJECT_MAP) {
        fab_set_error(err, FAB_E_PROTOCOL, c->endpoint,
                      "reply frame 0 does not hold code, version, request_id, flags, remark, body");
        return -1;
    }
    if ((reply->flags & FAB_FLAG_RESPONSE) == 0) {
        fab_set_error(err, FAB_E_PROTOCOL, c->endpoint, "a reply without the RESPONSE flag");
        return -1;
    }
    reply->code = (int)code;
    reply->body = &el[5];
    return 0;
}

static int recv_reply(fab_conn *c, uint64_t request_id, int64_t deadline, fab_reply *reply,
                      fab_error *err) {
    for (;;) {
        int64_t remaining = deadline - fab_monotonic_ms();
        if (remaining <= 0) {
            fab_set_error(err, FAB_E_TIMEOUT, c->endpoint, "no reply in time");
            return -1;
        }
        zmq_pollitem_t item = {c->sock, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&item, 1, (long)remaining);
        if (rc < 0) {
            if (zmq_errno() == EINTR) {
                continue;
            }
            fab_set_error(err, FAB_E_LOCAL, c->endpoint, "zmq_poll: %s",
                          zmq_strerror(zmq_errno()));
            return -1;
        }
        if (rc == 0) {
            continue; /* the deadline check above reports the timeout */
        }
        memset(reply, 0, sizeof *reply);
        if (recv_message(c, &reply->frames, &reply->nframes, err) != 0) {
            memset(reply, 0, sizeof *reply);
            return -1;
        }
        msgpack_unpacked_init(&reply->unpacked);
        if (decode_reply(c, reply, err) != 0) {
            fab_reply_free(reply);
            return -1;
        }
        if (reply->request_id != request_id) {
            /* Section 3.3: the reply of a request that timed out earlier: dropped. */
            fab_reply_free(reply);
            continue;
        }
        return 0;
    }
}

int fab_call(fab_conn *c, fab_request *r, const fab_frame *frames, size_t nframes,
             int timeout_ms, fab_reply *reply, fab_error *err) {
    memset(reply, 0, sizeof *reply);
    int64_t deadline = fab_monotonic_ms() + timeout_ms;
    if (fab_send(c, r, frames, nframes, err) != 0) {
        return -1;
    }
    return recv_reply(c, r->request_id, deadline, reply, err);
}

void fab_reply_error(const fab_reply *reply, const char *address, fab_error *err) {
    int len = reply->remark_len > 900 ? 900 : (int)reply->remark_len;
    fab_set_error(err, reply->code, address, "%.*s", len, reply->remark);
}

/* ------------------------------------------------------------------------------ */
/* Body access                                                                     */
/* ------------------------------------------------------------------------------ */

const msgpack_object *fab_map_get(const msgpack_object *map, const char *key) {
    if (map == NULL || map->type != MSGPACK_OBJECT_MAP) {
        return NULL;
    }
    size_t klen = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == klen &&
            memcmp(k->via.str.ptr, key, klen) == 0) {
            return &map->via.map.ptr[i].val;
        }
    }
    return NULL;
}

int fab_obj_int(const msgpack_object *o, int64_t *out) {
    if (o == NULL) {
        return -1;
    }
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (o->via.u64 > INT64_MAX) {
            return -1;
        }
        *out = (int64_t)o->via.u64;
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = o->via.i64;
        return 0;
    }
    return -1;
}

int fab_obj_str(const msgpack_object *o, const char **p, size_t *n) {
    if (o == NULL || o->type != MSGPACK_OBJECT_STR) {
        return -1;
    }
    *p = o->via.str.ptr;
    *n = o->via.str.size;
    return 0;
}

int fab_body_int(const fab_reply *reply, const char *key, int64_t *out, const char *address,
                 fab_error *err) {
    if (fab_obj_int(fab_map_get(reply->body, key), out) != 0) {
        fab_set_error(err, FAB_E_PROTOCOL, address, "reply body has no integer field %s", key);
        return -1;
    }
    return 0;
}

static int copy_str(const msgpack_object *o, char *out, size_t out_size, const char *what,
                    const char *address, fab_error *err) {
    const char *p;
    size_t n;
    if (fab_obj_str(o, &p, &n) != 0) {
        fab_set_error(err, FAB_E_PROTOCOL, address, "%s is missing or not a string", what);
        return -1;
    }
    if (n >= out_size) {
        fab_set_error(err, FAB_E_PROTOCOL, address, "%s is too long (%zu bytes)", what, n);
        return -1;
    }
    memcpy(out, p, n);
    out[n] = '\0';
    return 0;
}

/* ------------------------------------------------------------------------------ */
/* Routes                                                                          */
/* ------------------------------------------------------------------------------ */

void fab_queue_list_free(fab_queue_list *list) {
    free(list->items);
    list->items = NULL;
    list->n = 0;
}

static int queue_cmp(const void *a, const void *b) {
    const fab_queue *x = a;
    const fab_queue *y = b;
    int c = strcmp(x->broker_name, y->broker_name);
    if (c != 0) {
        return c;
    }
    return (x->queue_id > y->queue_id) - (x->queue_id < y->queue_id);
}

/*
 * The endpoint of a BrokerData's broker_addrs ({int: str}): id 0 (the master), or,
 * when any_id is set and there is no master, the lowest id. 0 found, 1 none, -1 bad.
 */
static int pick_addr(const msgpack_object *addrs, int any_id, char *out, size_t out_size,
                     const char *address, fab_error *err) {
    if (addrs == NULL || addrs->type != MSGPACK_OBJECT_MAP) {
        fab_set_error(err, FAB_E_PROTOCOL, address, "broker_addrs is missing or not a map");
        return -1;
    }
    const msgpack_object *best = NULL;
    int64_t best_id = 0;
    for (uint32_t i = 0; i < addrs->via.map.size; i++) {
        int64_t id;
        if (fab_obj_int(&addrs->via.map.ptr[i].key, &id) != 0 || id < 0) {
            fab_set_error(err, FAB_E_PROTOCOL, address,
                          "broker_addrs has a key that is not a broker id");
            return -1;
        }
        if ((id == 0 || any_id) && (best == NULL || id < best_id)) {
            best = &addrs->via.map.ptr[i].val;
            best_id = id;
        }
    }
    if (best == NULL) {
        return 1;
    }
    return copy_str(best, out, out_size, "a broker address", address, err) == 0 ? 0 : -1;
}

static const msgpack_object *find_broker_data(const msgpack_object *datas, const char *name) {
    size_t nlen = strlen(name);
    for (uint32_t i = 0; i < datas->via.array.size; i++) {
        const char *p;
        size_t n;
        if (fab_obj_str(fab_map_get(&datas->via.array.ptr[i], "broker_name"), &p, &n) == 0 &&
            n == nlen && memcmp(p, name, n) == 0) {
            return &datas->via.array.ptr[i];
        }
    }
    return NULL;
}

static int append_queues(fab_queue_list *out, size_t *cap, const char *broker_name,
                         int64_t nums, const char *addr, fab_error *err) {
    for (int64_t q = 0; q < nums; q++) {
        if (out->n == *cap) {
            size_t ncap = *cap == 0 ? 16 : 2 * *cap;
            fab_queue *grown = realloc(out->items, ncap * sizeof *grown);
            if (grown == NULL) {
                fab_set_error(err, FAB_E_LOCAL, NULL, "out of memory");
                return -1;
            }
            out->items = grown;
            *cap = ncap;
        }
        fab_queue *item = &out->items[out->n++];
        memset(item, 0, sizeof *item);
        (void)snprintf(item->broker_name, sizeof item->broker_name, "%s", broker_name);
        (void)snprintf(item->addr, sizeof item->addr, "%s", addr);
        item->queue_id = (int32_t)q;
    }
    return 0;
}

int fab_route_queues(fab_conn *ns, const char *topic, int perm, int timeout_ms,
                     fab_queue_list *out, fab_error *err) {
    out->items = NULL;
    out->n = 0;
    fab_request r;
    fab_reply reply;
    if (fab_request_begin(&r, FAB_GET_ROUTE_INFO_BY_TOPIC, 0) == 0) {
        fab_pack_map(&r, 1);
        fab_pack_kv_str(&r, "topic", topic);
    }
    int rc = fab_call(ns, &r, NULL, 0, timeout_ms, &reply, err);
    fab_request_free(&r);
    if (rc != 0) {
        return -1;
    }
    if (reply.code != FAB_SUCCESS) {
        fab_reply_error(&reply, ns->endpoint, err);
        fab_reply_free(&reply);
        return -1;
    }
    const msgpack_object *qds = fab_map_get(reply.body, "queue_datas");
    const msgpack_object *bds = fab_map_get(reply.body, "broker_datas");
    if (qds == NULL || qds->type != MSGPACK_OBJECT_ARRAY || bds == NULL ||
        bds->type != MSGPACK_OBJECT_ARRAY) {
        fab_set_error(err, FAB_E_PROTOCOL, ns->endpoint,
                      "TopicRouteData without queue_datas and broker_datas arrays");
        fab_reply_free(&reply);
        return -1;
    }
    size_t cap = 0;
    for (uint32_t i = 0; i < qds->via.array.size; i++) {
        const msgpack_object *qd = &qds->via.array.ptr[i];
        char name[FAB_NAME_MAX + 1];
        int64_t rnums;
        int64_t wnums;
        int64_t qperm;
        if (copy_str(fab_map_get(qd, "broker_name"), name, sizeof name, "QueueData.broker_name",
                     ns->endpoint, err) != 0) {
            goto fail;
        }
        if (fab_obj_int(fab_map_get(qd, "read_queue_nums"), &rnums) != 0 ||
            fab_obj_int(fab_map_get(qd, "write_queue_nums"), &wnums) != 0 ||
            fab_obj_int(fab_map_get(qd, "perm"), &qperm) != 0 || rnums < 0 ||
            rnums > FAB_MAX_QUEUE_NUMS || wnums < 0 || wnums > FAB_MAX_QUEUE_NUMS) {
            fab_set_error(err, FAB_E_PROTOCOL, ns->endpoint, "bad QueueData for broker %s", name);
            goto fail;
        }
        if ((qperm & perm) == 0) {
            continue;
        }
        const msgpack_object *bd = find_broker_data(bds, name);
        if (bd == NULL) {
            continue; /* no live broker of that name */
        }
        char addr[FAB_ENDPOINT_MAX];
        int found = pick_addr(fab_map_get(bd, "broker_addrs"), perm == FAB_PERM_READ, addr,
                              sizeof addr, ns->endpoint, err);
        if (found < 0) {
            goto fail;
        }
        if (found > 0) {
            continue; /* no master to write to (or no broker at all) */
        }
        int64_t nums = perm == FAB_PERM_READ ? rnums : wnums;
        if (append_queues(out, &cap, name, nums, addr, err) != 0) {
            goto fail;
        }
    }
    fab_reply_free(&reply);
    if (out->n > 1) {
        qsort(out->items, out->n, sizeof out->items[0], queue_cmp);
    }
    return 0;
fail:
    fab_reply_free(&reply);
    fab_queue_list_free(out);
    return -1;
}

int fab_cluster_master_queues(fab_conn *ns, int timeout_ms, fab_queue_list *out, fab_error *err) {
    out->items = NULL;
    out->n = 0;
    fab_request r;
    fab_reply reply;
    if (fab_request_begin(&r, FAB_GET_CLUSTER_INFO, 0) == 0) {
        fab_pack_map(&r, 0);
    }
    int rc = fab_call(ns, &r, NULL, 0, timeout_ms, &reply, err);
    fab_request_free(&r);
    if (rc != 0) {
        return -1;
    }
    if (reply.code != FAB_SUCCESS) {
        fab_reply_error(&reply, ns->endpoint, err);
        fab_reply_free(&reply);
        return -1;
    }
    const msgpack_object *brokers = fab_map_get(reply.body, "brokers");
    if (brokers == NULL || brokers->type != MSGPACK_OBJECT_MAP) {
        fab_set_error(err, FAB_E_PROTOCOL, ns->endpoint, "ClusterInfo without a brokers map");
        fab_reply_free(&reply);
        return -1;
    }
    size_t cap = 0;
    for (uint32_t i = 0; i < brokers->via.map.size; i++) {
        char name[FAB_NAME_MAX + 1];
        char addr[FAB_ENDPOINT_MAX];
        if (copy_str(&brokers->via.map.ptr[i].key, name, sizeof name, "a broker name",
                     ns->endpoint, err) != 0) {
            goto fail;
        }
        const msgpack_object *bd = &brokers->via.map.ptr[i].val;
        int found = pick_addr(fab_map_get(bd, "broker_addrs"), 0, addr, sizeof addr, ns->endpoint,
                              err);
        if (found < 0) {
            goto fail;
        }
        if (found == 0 && append_queues(out, &cap, name, 1, addr, err) != 0) {
            goto fail;
        }
    }
    fab_reply_free(&reply);
    if (out->n > 1) {
        qsort(out->items, out->n, sizeof out->items[0], queue_cmp);
    }
    return 0;
fail:
    fab_reply_free(&reply);
    fab_queue_list_free(out);
    return -1;
}

int fab_lookup_queues(void *zctx, const char *nameserver, const char *topic, int perm,
                      int provisional, int timeout_ms, fab_queue_list *out, fab_error *err) {
    out->items = NULL;
    out->n = 0;
    fab_conn ns;
    if (fab_conn_open(&ns, zctx, nameserver, timeout_ms, err) != 0) {
        return -1;
    }
    int rc = fab_route_queues(&ns, topic, perm, timeout_ms, out, err);
    if (rc != 0 && provisional && err->code == FAB_NO_ROUTE) {
        /* Section 11.2, provisional route: queue 0 of every live master, so that a
         * broker with auto-create creates the topic. */
        fab_error route_err = *err;
        rc = fab_cluster_master_queues(&ns, timeout_ms, out, err);
        if (rc == 0 && out->n == 0) {
            *err = route_err;
            rc = -1;
        }
    }
    fab_conn_close(&ns, 0);
    if (rc != 0) {
        fab_queue_list_free(out);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------ */
/* Records                                                                         */
/* ------------------------------------------------------------------------------ */

static uint16_t be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }

static uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint64_t be64(const uint8_t *p) { return ((uint64_t)be32(p) << 32) | be32(p + 4); }

int fab_record_parse(const void *data, size_t size, int check_crc, fab_record *rec,
                     fab_error *err) {
    const uint8_t *p = data;
    memset(rec, 0, sizeof *rec);
    if (size < FAB_RECORD_HEADER) {
        fab_set_error(err, FAB_E_PROTOCOL, NULL, "a record of %zu bytes, shorter than its header",
                      size);
        return -1;
    }
    rec->total_size = be32(p);
    uint32_t magic = be32(p + 4);
    if (magic != FAB_RECORD_MAGIC) {
        fab_set_error(err, FAB_E_PROTOCOL, NULL, "a record with magic 0x%08X", (unsigned)magic);
        return -1;
    }
    if (rec->total_size != size) {
        fab_set_error(err, FAB_E_PROTOCOL, NULL, "a record of %zu bytes says total_size %u", size,
                      (unsigned)rec->total_size);
        return -1;
    }
    uint32_t crc = be32(p + 8);
    rec->queue_id = (int32_t)be32(p + 12);
    rec->flag = (int32_t)be32(p + 16);
    rec->queue_offset = (int64_t)be64(p + 20);
    rec->physical_offset = (int64_t)be64(p + 28);
    rec->sysflag = (int32_t)be32(p + 36);
    rec->born_timestamp = (int64_t)be64(p + 40);
    rec->store_timestamp = (int64_t)be64(p + 48);
    memcpy(rec->born_host, p + 56, 16);
    rec->born_port = be16(p + 72);
    memcpy(rec->store_host, p + 74, 16);
    rec->store_port = be16(p + 90);
    rec->reconsume_times = (int32_t)be32(p + 92);
    rec->prepared_tx_offset = (int64_t)be64(p + 96);
    uint64_t t = be16(p + 104);
    uint64_t pl = be32(p + 106);
    uint64_t b = be32(p + 110);
    if (FAB_RECORD_HEADER + t + pl + b != size) {
        fab_set_error(err, FAB_E_PROTOCOL, NULL,
                      "a record's lengths (%u + %llu + %llu + %llu) do not add up to %zu",
                      FAB_RECORD_HEADER, (unsigned long long)t, (unsigned long long)pl,
                      (unsigned long long)b, size);
        return -1;
    }
    if (check_crc) {
        uLong c = crc32(0L, Z_NULL, 0);
        const uint8_t *q = p + 12;
        size_t left = size - 12;
        while (left > 0) {
            uInt chunk = left > 0x40000000u ? 0x40000000u : (uInt)left;
            c = crc32(c, q, chunk);
            q += chunk;
            left -= chunk;
        }
        if ((uint32_t)c != crc) {
            fab_set_error(err, FAB_E_PROTOCOL, NULL, "a record with a bad CRC32");
            return -1;
        }
    }
    rec->topic = (const char *)(p + FAB_RECORD_HEADER);
    rec->topic_len = t;
    rec->properties = p + FAB_RECORD_HEADER + t;
    rec->properties_len = pl;
    rec->body = p + FAB_RECORD_HEADER + t + pl;
    rec->body_len = b;
    return 0;
}

void fab_props_free(fab_props *p) {
    msgpack_unpacked_destroy(&p->unpacked);
    memset(p, 0, sizeof *p);
}

int fab_props_parse(const fab_record *rec, fab_props *out, fab_error *err) {
    memset(out, 0, sizeof *out);
    msgpack_unpacked_init(&out->unpacked);
    out->tags = "";
    out->uniq_id = "";
    if (rec->properties_len == 0) {
        return 0; /* every property empty */
    }
    size_t off = 0;
    msgpack_unpack_return ret = msgpack_unpack_next(
        &out->unpacked, (const char *)rec->properties, rec->properties_len, &off);
    const msgpack_object *map = &out->unpacked.data;
    if (ret != MSGPACK_UNPACK_SUCCESS || off != rec->properties_len ||
        map->type != MSGPACK_OBJECT_MAP) {
        fab_set_error(err, FAB_E_PROTOCOL, NULL, "record properties are not a MessagePack map");
        fab_props_free(out);
        return -1;
    }
    const msgpack_object *o;
    if ((o = fab_map_get(map, "tags")) != NULL && fab_obj_str(o, &out->tags, &out->tags_len) != 0) {
        goto bad;
    }
    if ((o = fab_map_get(map, "uniq_id")) != NULL &&
        fab_obj_str(o, &out->uniq_id, &out->uniq_id_len) != 0) {
        goto bad;
    }
    if ((o = fab_map_get(map, "keys")) != NULL) {
        if (o->type != MSGPACK_OBJECT_ARRAY) {
            goto bad;
        }
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            if (o->via.array.ptr[i].type != MSGPACK_OBJECT_STR) {
                goto bad;
            }
        }
        out->keys = o;
    }
    if ((o = fab_map_get(map, "props")) != NULL) {
        if (o->type != MSGPACK_OBJECT_MAP) {
            goto bad;
        }
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            if (o->via.map.ptr[i].key.type != MSGPACK_OBJECT_STR ||
                o->via.map.ptr[i].val.type != MSGPACK_OBJECT_STR) {
                goto bad;
            }
        }
        out->props = o;
    }
    return 0;
bad:
    fab_set_error(err, FAB_E_PROTOCOL, NULL, "record properties of the wrong types");
    fab_props_free(out);
    return -1;
}

int fab_offset_msg_id(const fab_record *rec, char *out, size_t out_size) {
    /* Section 7.2: store host (IPv4: 8 hex digits, else 32), port (8), CommitLog
     * offset (16), uppercase. The record keeps IPv4 as ::ffff:a.b.c.d. */
    static const uint8_t v4_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
    char host[33];
    const uint8_t *h = rec->store_host;
    int is_v4 = memcmp(h, v4_prefix, sizeof v4_prefix) == 0;
    size_t start = is_v4 ? 12 : 0;
    for (size_t i = start; i < 16; i++) {
        (void)snprintf(host + 2 * (i - start), 3, "%02X", h[i]);
    }
    int n = snprintf(out, out_size, "%s%08X%016llX", host, (unsigned)rec->store_port,
                     (unsigned long long)rec->physical_offset);
    return n < 0 || (size_t)n >= out_size ? -1 : 0;
}

/* ------------------------------------------------------------------------------ */
/* Compression                                                                     */
/* ------------------------------------------------------------------------------ */

int fab_inflate(const uint8_t *in, size_t n, size_t limit, uint8_t **out, size_t *out_len,
                fab_error *err) {
    *out = NULL;
    *out_len = 0;
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit(&zs) != Z_OK) {
        fab_set_error(err, FAB_E_LOCAL, NULL, "inflateInit failed");
        return -1;
    }
    size_t cap = n * 4 < 65536 ? 65536 : n * 4;
    if (cap > limit + 1) {
        cap = limit + 1;
    }
    uint8_t *buf = malloc(cap);
    if (buf == NULL) {
        (void)inflateEnd(&zs);
        fab_set_error(err, FAB_E_LOCAL, NULL, "out of memory");
        return -1;
    }
    size_t used = 0;
    size_t in_left = n;
    const uint8_t *next = in;
    int zrc = Z_OK;
    while (zrc != Z_STREAM_END) {
        if (used == cap) {
            if (cap > limit) {
                free(buf);
                (void)inflateEnd(&zs);
                fab_set_error(err, FAB_E_PROTOCOL, NULL,
                              "a compressed body inflates past %zu bytes", limit);
                return -1;
            }
            size_t ncap = cap * 2 > limit + 1 ? limit + 1 : cap * 2;
            uint8_t *grown = realloc(buf, ncap);
            if (grown == NULL) {
                free(buf);
                (void)inflateEnd(&zs);
                fab_set_error(err, FAB_E_LOCAL, NULL, "out of memory");
                return -1;
            }
            buf = grown;
            cap = ncap;
        }
        uInt in_chunk = in_left > 0x40000000u ? 0x40000000u : (uInt)in_left;
        uInt out_chunk = cap - used > 0x40000000u ? 0x40000000u : (uInt)(cap - used);
        zs.next_in = (Bytef *)(uintptr_t)next;
        zs.avail_in = in_chunk;
        zs.next_out = buf + used;
        zs.avail_out = out_chunk;
        zrc = inflate(&zs, Z_NO_FLUSH);
        next += in_chunk - zs.avail_in;
        in_left -= in_chunk - zs.avail_in;
        used += out_chunk - zs.avail_out;
        if (zrc == Z_BUF_ERROR && zs.avail_out > 0) {
            zrc = Z_DATA_ERROR; /* no progress with room left: the input ended early */
        }
        if (zrc != Z_OK && zrc != Z_STREAM_END && zrc != Z_BUF_ERROR) {
            free(buf);
            (void)inflateEnd(&zs);
            fab_set_error(err, FAB_E_PROTOCOL, NULL, "a compressed body is not valid zlib data");
            return -1;
        }
    }
    (void)inflateEnd(&zs);
    if (used > limit) {
        free(buf);
        fab_set_error(err, FAB_E_PROTOCOL, NULL, "a compressed body inflates past %zu bytes",
                      limit);
        return -1;
    }
    *out = buf;
    *out_len = used;
    return 0;
}

int fab_deflate(const uint8_t *in, size_t n, int level, uint8_t **out, size_t *out_len,
                fab_error *err) {
    *out = NULL;
    *out_len = 0;
    if (n > (size_t)UINT32_MAX / 2) {
        fab_set_error(err, FAB_E_LOCAL, NULL, "body too large to compress");
        return -1;
    }
    uLongf cap = compressBound((uLong)n);
    uint8_t *buf = malloc(cap > 0 ? cap : 1);
    if (buf == NULL) {
        fab_set_error(err, FAB_E_LOCAL, NULL, "out of memory");
        return -1;
    }
    if (compress2(buf, &cap, in, (uLong)n, level) != Z_OK) {
        free(buf);
        fab_set_error(err, FAB_E_LOCAL, NULL, "zlib compress2 failed");
        return -1;
    }
    *out = buf;
    *out_len = cap;
    return 0;
}
