/*
 * fabric.h - a small C client library for the zmq-fabric wire protocol.
 *
 * Written from docs/PROTOCOL.md only: one DEALER socket per server, frame 0 a
 * MessagePack array, raw body frames, replies matched by request id.
 *
 * Conventions: functions returning int give 0 on success and -1 on failure, with
 * the reason in a fab_error. Nothing here prints; the programs do.
 */
#ifndef FABRIC_CLIENT_H
#define FABRIC_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>
#include <zmq.h>

/* Section 3 and 3.4 of docs/PROTOCOL.md. */
#define FAB_PROTOCOL_VERSION 1
#define FAB_MAX_HEADER_BYTES 4194304u
#define FAB_MAX_MESSAGE_BYTES 4194304u
#define FAB_MAX_BATCH_MESSAGES 1024u
#define FAB_MAX_REQUEST_BYTES 16777216u
#define FAB_MAX_QUEUE_NUMS 1024
/* Section 8: names have at most 127 characters (system topics 255). */
#define FAB_NAME_MAX 255
#define FAB_ENDPOINT_MAX 256

/* Flag bits (section 3.3). */
#define FAB_FLAG_RESPONSE 0x1u
#define FAB_FLAG_ONEWAY 0x2u

/* Perm bits (section 7.1). */
#define FAB_PERM_WRITE 0x2
#define FAB_PERM_READ 0x4

/* SysFlag bits (section 7.2). */
#define FAB_SYSFLAG_COMPRESSED 0x1

/* Request codes (section 5). */
enum fab_request_code {
    FAB_SEND_MESSAGE = 10,
    FAB_PULL_MESSAGE = 11,
    FAB_QUERY_CONSUMER_OFFSET = 14,
    FAB_COMMIT_CONSUMER_OFFSET = 15,
    FAB_GET_MAX_OFFSET = 30,
    FAB_GET_MIN_OFFSET = 31,
    FAB_GET_ROUTE_INFO_BY_TOPIC = 105,
    FAB_GET_CLUSTER_INFO = 106
};

/* Response codes (section 4). */
enum fab_response_code {
    FAB_SUCCESS = 0,
    FAB_SYSTEM_ERROR = 1,
    FAB_SYSTEM_BUSY = 2,
    FAB_REQUEST_CODE_NOT_SUPPORTED = 3,
    FAB_FLUSH_DISK_TIMEOUT = 10,
    FAB_SLAVE_NOT_AVAILABLE = 11,
    FAB_FLUSH_SLAVE_TIMEOUT = 12,
    FAB_MESSAGE_ILLEGAL = 13,
    FAB_SERVICE_NOT_AVAILABLE = 14,
    FAB_NO_PERMISSION = 16,
    FAB_TOPIC_NOT_EXIST = 17,
    FAB_TOPIC_ALREADY_EXISTS = 18,
    FAB_PULL_NOT_FOUND = 19,
    FAB_PULL_RETRY_IMMEDIATELY = 20,
    FAB_PULL_OFFSET_MOVED = 21,
    FAB_QUERY_NOT_FOUND = 22,
    FAB_VERSION_NOT_SUPPORTED = 50,
    FAB_MALFORMED_REQUEST = 51,
    FAB_INVALID_TOPIC_NAME = 52,
    FAB_INVALID_GROUP_NAME = 53,
    FAB_NO_ROUTE = 54,
    FAB_BROKER_NOT_REGISTERED = 55
};

/* Local failures use negative codes, so they never collide with a server's code. */
#define FAB_E_LOCAL (-1)    /* bad input, out of memory, a ZeroMQ call failed */
#define FAB_E_TIMEOUT (-2)  /* no reply (or no connection) within the deadline */
#define FAB_E_PROTOCOL (-3) /* a reply that does not follow docs/PROTOCOL.md */

typedef struct {
    int code;            /* a response code (>= 0) or FAB_E_* (< 0) */
    char message[1024];  /* the server's remark, or what went wrong locally */
    char address[FAB_ENDPOINT_MAX]; /* the server involved, "" when none */
} fab_error;

/* The name of a response code ("INVALID_TOPIC_NAME"), or "UNKNOWN". */
const char *fab_response_name(int code);
/* The name of a local error code ("TIMEOUT", ...) or of a response code. */
const char *fab_error_name(int code);
void fab_set_error(fab_error *err, int code, const char *address, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* One DEALER connected to one server. */
typedef struct {
    void *sock;
    char endpoint[FAB_ENDPOINT_MAX];
} fab_conn;

/*
 * Normalise an endpoint: "host:port" becomes "tcp://host:port" (section 11.2).
 * Fails when the result does not fit in out_size bytes.
 */
int fab_endpoint(const char *in, char *out, size_t out_size, fab_error *err);
/* Open a DEALER (LINGER 0, IMMEDIATE 1, SNDTIMEO timeout_ms) and connect it. */
int fab_conn_open(fab_conn *c, void *zctx, const char *endpoint, int timeout_ms, fab_error *err);
/* Close the socket; linger_ms > 0 lets queued oneway messages leave first (11.8). */
void fab_conn_close(fab_conn *c, int linger_ms);

/* A request being built: frame 0 = [code, version, request_id, flags, body]. */
typedef struct {
    msgpack_sbuffer buf;
    msgpack_packer pk;
    int failed; /* a pack call failed (out of memory) */
    uint32_t code;
    uint32_t flags;
    uint64_t request_id;
} fab_request;

/* Start frame 0 with a fresh request id; the caller then packs the body map. */
int fab_request_begin(fab_request *r, uint32_t code, uint32_t flags);
void fab_request_free(fab_request *r);
/* Pack helpers; a failure is latched in r->failed and reported when sending. */
void fab_pack_map(fab_request *r, uint32_t n);
void fab_pack_array(fab_request *r, uint32_t n);
void fab_pack_strn(fab_request *r, const char *s, size_t n);
void fab_pack_str(fab_request *r, const char *s);
void fab_pack_int(fab_request *r, int64_t v);
void fab_pack_kv_str(fab_request *r, const char *key, const char *value);
void fab_pack_kv_int(fab_request *r, const char *key, int64_t value);

/* A raw body frame. */
typedef struct {
    const void *data;
    size_t size;
} fab_frame;

/* A decoded reply; body and remark point into frame 0, kept alive here. */
typedef struct {
    int code;
    uint64_t request_id;
    uint64_t flags;
    const char *remark; /* not NUL-terminated */
    size_t remark_len;
    const msgpack_object *body; /* a map */
    msgpack_unpacked unpacked;
    zmq_msg_t *frames; /* frames[0] is frame 0; frames[1..nframes-1] the raw frames */
    size_t nframes;
} fab_reply;

/* Send a request (frame 0 and its body frames), checking the limits of 3.4 first. */
int fab_send(fab_conn *c, fab_request *r, const fab_frame *frames, size_t nframes, fab_error *err);
/* Send and wait up to timeout_ms for the reply with the request's id. */
int fab_call(fab_conn *c, fab_request *r, const fab_frame *frames, size_t nframes,
             int timeout_ms, fab_reply *reply, fab_error *err);
void fab_reply_free(fab_reply *reply);
/* Copy a reply's code and remark into err (for a non-SUCCESS reply). */
void fab_reply_error(const fab_reply *reply, const char *address, fab_error *err);

/* Body access: map lookup by str key, typed getters (0 on success, -1 on a bad type). */
const msgpack_object *fab_map_get(const msgpack_object *map, const char *key);
int fab_obj_int(const msgpack_object *o, int64_t *out);
int fab_obj_str(const msgpack_object *o, const char **p, size_t *n);
/* Required field of a reply body: error FAB_E_PROTOCOL when missing or of another type. */
int fab_body_int(const fab_reply *reply, const char *key, int64_t *out, const char *address,
                 fab_error *err);

/* A queue of a topic and the endpoint that serves it. */
typedef struct {
    char broker_name[FAB_NAME_MAX + 1];
    int32_t queue_id;
    char addr[FAB_ENDPOINT_MAX];
} fab_queue;

typedef struct {
    fab_queue *items;
    size_t n;
} fab_queue_list;

/*
 * Ask a NameServer for the route of topic (GET_ROUTE_INFO_BY_TOPIC) and list its
 * write queues (perm FAB_PERM_WRITE: served by the master, broker_addrs[0]) or its
 * read queues (FAB_PERM_READ: the master, else the lowest live broker id), sorted by
 * (broker name, queue id), as section 11.2 says.
 */
int fab_route_queues(fab_conn *ns, const char *topic, int perm, int timeout_ms,
                     fab_queue_list *out, fab_error *err);
/* The provisional route of 11.2: queue 0 of every live master (GET_CLUSTER_INFO). */
int fab_cluster_master_queues(fab_conn *ns, int timeout_ms, fab_queue_list *out, fab_error *err);
void fab_queue_list_free(fab_queue_list *list);
/*
 * Open a connection to the NameServer at endpoint, list the topic's queues with
 * fab_route_queues and close it again. With provisional set, a NO_ROUTE reply falls
 * back to fab_cluster_master_queues (keeping the NO_ROUTE error when that is empty).
 * On failure out is left empty.
 */
int fab_lookup_queues(void *zctx, const char *nameserver, const char *topic, int perm,
                      int provisional, int timeout_ms, fab_queue_list *out, fab_error *err);

/* A stored CommitLog record as a pull reply carries it (section 7.4). */
typedef struct {
    uint32_t total_size;
    int32_t queue_id;
    int32_t flag;
    int64_t queue_offset;
    int64_t physical_offset;
    int32_t sysflag;
    int64_t born_timestamp;
    int64_t store_timestamp;
    uint8_t born_host[16];
    uint16_t born_port;
    uint8_t store_host[16];
    uint16_t store_port;
    int32_t reconsume_times;
    int64_t prepared_tx_offset;
    const char *topic;
    size_t topic_len;
    const uint8_t *properties;
    size_t properties_len;
    const uint8_t *body;
    size_t body_len;
} fab_record;

#define FAB_RECORD_HEADER 114
#define FAB_RECORD_MAGIC 0xFAB1C0DEu

/* Check and slice one record frame; check_crc also verifies its CRC32. */
int fab_record_parse(const void *data, size_t size, int check_crc, fab_record *rec, fab_error *err);

/* The properties of a record: a MessagePack map with optional keys. */
typedef struct {
    msgpack_unpacked unpacked;
    const char *tags;
    size_t tags_len;
    const char *uniq_id;
    size_t uniq_id_len;
    const msgpack_object *keys;  /* an array of str, or NULL */
    const msgpack_object *props; /* a map str -> str, or NULL */
} fab_props;

int fab_props_parse(const fab_record *rec, fab_props *out, fab_error *err);
void fab_props_free(fab_props *p);

/* The broker's offset message id of a record (7.2), for messages without uniq_id. */
int fab_offset_msg_id(const fab_record *rec, char *out, size_t out_size);

/* zlib (RFC 1950): decompress at most limit bytes; compress at a level. Free *out. */
int fab_inflate(const uint8_t *in, size_t n, size_t limit, uint8_t **out, size_t *out_len,
                fab_error *err);
int fab_deflate(const uint8_t *in, size_t n, int level, uint8_t **out, size_t *out_len,
                fab_error *err);

/* A fresh message id: 32 uppercase hex digits (section 11.1). */
int fab_new_msg_id(char out[33], fab_error *err);

/* 1 when s[0..n) is well-formed UTF-8 (no surrogates, no overlong forms). */
int fab_utf8_valid(const char *s, size_t n);

/* Milliseconds: monotonic clock and wall clock since the Unix epoch. */
int64_t fab_monotonic_ms(void);
int64_t fab_wall_ms(void);

#endif
