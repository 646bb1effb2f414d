/* e2e — the end-to-end benchmark's driver (bench/e2e starts the pipeline
 * around it): signed WhatsApp webhooks in, the archive and the replies out.
 * One process holds the three ends of the line, so every time is on one
 * clock (CLOCK_MONOTONIC, µs):
 *
 *   load      signed WhatsApp Cloud webhooks (X-Hub-Signature-256) to
 *             omni-ingest-webhook over keep-alive connections (libcurl
 *             multi), each with its own wamid; open loop at a fixed offered
 *             rate: a message is due at its slot whether or not the ones
 *             before it were answered, and its latencies count from the slot
 *             (so they include any queueing, the sender's too);
 *   archive   a SUB on omni-archive's --tap, which publishes what the
 *             archive passes on after its commit: the time each question
 *             is archived, its envelope id, and which reply answers which
 *             question (reply_to);
 *   provider  a fake WhatsApp Cloud API (libmicrohttpd, one epoll thread)
 *             answering omni-send's POST /VERSION/PHONE_ID/messages with
 *             {"messages":[{"id":...}]}, and recording the arrival of each
 *             reply by its Idempotency-Key header (the reply id).
 *
 * After each level the three records are joined: wamid -> question id (the
 * tap) -> reply id (the tap's reply_to) -> arrival at the provider. Reply
 * latency = provider arrival - the question's slot, for the questions the
 * bot answered (a handoff or a human queue produces no reply; they count
 * in "archived" only).
 *
 *   e2e --url URL --secret SECRET --questions FILE --tap URI
 *       --port-file FILE --go FILE [--levels R,R,...] [--secs S]
 *       [--closed-secs S] [--window W] [--closed-max N] [--warmup N] [--conns C]
 *       [--per-customer N] [--drain S] [--seed N] [--phone-id ID]
 *
 * It starts the provider on a free loopback port, writes the port to
 * --port-file, subscribes to --tap, and waits (at most 60 s) for --go to
 * exist (the pipeline is up). Then --warmup messages at the first level's
 * rate (not reported), each level of --levels for --secs seconds, and, with
 * --closed-secs, a closed-loop run: as fast as the pipeline completes, with
 * at most --window messages in flight end to end (sent but not archived,
 * plus archived replies not yet at the provider) and --closed-max messages
 * in all. Every level sends the same questions (examples' pt-BR questions,
 * in one pseudo-random order from --seed) from customers of its own, each
 * writing about --per-customer messages, interleaved with others'. After each level's sends it waits for the
 * pipeline to drain (every accepted message archived and every archived
 * reply delivered; at most --drain seconds, or until nothing has moved for
 * 3 s).
 *
 * Output, one line per level on stdout (rates are from the first event of
 * the kind to the last; latencies in ms, nearest rank):
 *   e2e mode=open offered=R secs=S sent= accepted= refused= archived=
 *       answered= delivered= archived_rate= reply_rate= done_rate=
 *       ack_p50_ms= ack_p99_ms= archive_p50_ms= archive_p99_ms=
 *       reply_p50_ms= reply_p99_ms= reply_max_ms= drained=0|1 drain_secs=
 * done_rate counts a message done when it is archived and, if answered,
 * its reply delivered. Before it, "e2e where mode= offered=: STAGE P50/P99,
 * ..." says where the questions' time went, from their traces (s_where). Last, "e2e driver cpu_secs=S": this process's CPU
 * time (load, provider and tap together). Exit status 0 when every level ran and got messages
 * through; 1 otherwise; 64 usage, 69 setup. Loopback only. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <microhttpd.h>
#include <zmq.h>

#include "buf.h"
#include "envelope.h"
#include "mp.h"
#include "sig.h"
#include "ulid.h"

#define MAX_LEVELS 16           /* entries of --levels */
#define GO_WAIT_S 60            /* how long to wait for --go */
#define STALL_US 3000000        /* a drain with no progress this long ends */
#define SEND_GRACE_US 30000000  /* sends still unanswered this long after the last slot are given up */
#define HTTP_TIMEOUT_MS 30000   /* one webhook POST */
#define TAP_HWM 1000000         /* the tap subscriber's queue (a PUB drops past it) */
#define START_DELAY_US 20000    /* the first slot, after the level is set up */
#define CUSTOMER_SPREAD 2000    /* one customer's messages fall within this many */
#define MAX_MESSAGES 500000     /* messages of one level (customers per level < 10^6) */
#define MAX_TRACE 8             /* trace stamps kept per question */
#define MAX_STAGE_NAMES 16      /* distinct stage names in traces */

/* Options. */
struct opts {
    const char *url;            /* the webhook's WhatsApp URL */
    const char *secret;         /* the Meta app secret */
    const char *questions;      /* JSON lines with "q" */
    const char *tap;            /* omni-archive's --tap, to connect to */
    const char *port_file;      /* where the provider's port goes */
    const char *go;             /* file whose existence starts the load */
    const char *phone_id;       /* the business phone number id in payloads */
    double levels[MAX_LEVELS];  /* offered rates, msg/s */
    int nlevels;                /* entries used in levels */
    double secs;                /* seconds per open-loop level */
    double closed_secs;         /* seconds of the closed-loop run; 0: none */
    long window;                /* closed loop: messages in flight end to end */
    long closed_max;            /* closed loop: messages at most */
    long warmup;                /* messages sent before the levels, not reported */
    long conns;                 /* keep-alive connections to the webhook */
    long per_customer;          /* messages per sender in a level */
    double drain;               /* seconds a level may take to drain */
    unsigned long seed;         /* payloads */
};

/* One message of a level. */
struct msg {
    int64_t slot_us;            /* when it was due to be sent */
    int64_t ack_us;             /* when the webhook answered, 0 before */
    int64_t arch_us;            /* when the archive's tap showed it, 0 before */
    int64_t reply_us;           /* when its reply reached the provider, 0 if none */
    long status;                /* HTTP status, 0 for no answer */
    bool answered;              /* the bot made a reply to it */
    char qid[ULID_LEN + 1];     /* its envelope id, from the tap */
    int64_t trace_ms[MAX_TRACE];    /* its trace's stamps (CLOCK_REALTIME ms), from the tap */
    uint8_t trace_name[MAX_TRACE];  /* the stage of each stamp, an index into e2e.names */
    uint8_t ntrace;             /* stamps kept */
    char *body;                 /* the webhook's body */
    size_t body_len;            /* bytes of body */
    char sig[96];               /* "X-Hub-Signature-256: sha256=..." */
};

/* A reply seen on the tap, or a request seen by the provider. */
struct pair {
    char id[ULID_LEN + 1];      /* reply id (the provider's Idempotency-Key) */
    char ref[ULID_LEN + 1];     /* the question it answers (tap only) */
    int64_t t_us;               /* arrival (provider only) */
};

/* A growable array of pairs. */
struct pairs {
    struct pair *v;             /* entries */
    size_t n;                   /* entries used */
    size_t cap;                 /* entries allocated */
};

/* The state the threads share. */
struct e2e {
    const struct opts *o;       /* options */
    pthread_mutex_t lock;       /* guards msgs, prefix, replies, sent_n */
    struct msg *msgs;           /* this level's messages */
    long nmsgs;                 /* entries of msgs in use */
    char prefix[64];            /* wamid prefix of this level */
    size_t prefix_len;          /* its length */
    struct pairs replies;       /* replies seen on the tap this level */
    pthread_mutex_t plock;      /* guards delivered */
    struct pairs delivered;     /* requests seen by the provider this level */
    atomic_long tap_questions;  /* this level's questions archived */
    atomic_long tap_replies;    /* replies archived since the level began */
    atomic_long prov_n;         /* provider requests since the level began */
    atomic_long prov_bad;       /* requests the provider refused (wrong path, no key) */
    atomic_long tap_bad;        /* tap messages that did not decode */
    atomic_ulong prov_seq;      /* numbers the provider's message ids */
    atomic_bool stop;           /* the tap thread ends */
    void *zctx;                 /* ZeroMQ */
    char **questions;           /* question texts */
    size_t nquestions;          /* entries of questions */
    char run[9];                /* this run's tag in wamids */
    char names[MAX_STAGE_NAMES][32];    /* stage names seen in traces (under lock) */
    int nnames;                 /* entries used in names */
    int64_t real_off_us;        /* CLOCK_REALTIME - CLOCK_MONOTONIC, µs */
};

static const char *const s_names[] = {
    "Ana Souza", "Bruno Lima", "Carla Dias", "Diego Rocha", "Eduarda Costa", "Felipe Gomes",
    "Gabriela Alves", "Henrique Melo", "Isabela Castro", "João Pereira", "Letícia Araújo",
    "Mariana Ribeiro",
};

static int64_t s_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int s_usage(void)
{
    fprintf(stderr, "usage: e2e --url URL --secret SECRET --questions FILE --tap URI --port-file FILE\n"
                    "           --go FILE [--levels R,R,...] [--secs S] [--closed-secs S] [--window W]\n"
                    "           [--closed-max N] [--warmup N] [--conns C] [--per-customer N]\n"
                    "           [--drain S] [--seed N] [--phone-id ID]\n");
    return 64;
}

/* --- small helpers ---------------------------------------------------------- */

/* splitmix64: the payloads' random numbers, repeatable from --seed. */
static uint64_t s_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int s_pairs_add(struct pairs *p, const struct pair *x)
{
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 4096;
        struct pair *v = realloc(p->v, cap * sizeof *v);
        if (v == NULL) {
            return -1;
        }
        p->v = v;
        p->cap = cap;
    }
    p->v[p->n++] = *x;
    return 0;
}

static int s_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The q-quantile (nearest rank) of v[0..n) in ms, sorting v; -1 when n is 0. */
static double s_quantile_ms(int64_t *v, size_t n, double q)
{
    if (n == 0) {
        return -1;
    }
    qsort(v, n, sizeof *v, s_cmp_i64);
    size_t r = (size_t)(q * (double)n + 0.999999);
    r = r < 1 ? 1 : r > n ? n : r;
    return (double)v[r - 1] / 1000.0;
}

/* (n - 1) / (last - first) in events/s, 0 when that is not defined. */
static double s_rate(long n, int64_t first, int64_t last)
{
    return n > 1 && last > first ? (double)(n - 1) * 1e6 / (double)(last - first) : 0.0;
}

/* An id -> index map for 26-character ids (open addressing). */
struct idmap {
    char (*key)[ULID_LEN + 1];  /* "" for a free slot */
    long *val;                  /* the index of each key */
    size_t mask;                /* slots - 1 (a power of two) */
};

static int s_idmap_init(struct idmap *m, size_t n)
{
    size_t cap = 1024;
    while (cap < 2 * n) {
        cap *= 2;
    }
    m->key = calloc(cap, sizeof *m->key);
    m->val = calloc(cap, sizeof *m->val);
    m->mask = cap - 1;
    return m->key && m->val ? 0 : -1;
}

static void s_idmap_free(struct idmap *m)
{
    free(m->key);
    free(m->val);
    m->key = NULL;
    m->val = NULL;
}

static size_t s_idmap_slot(const struct idmap *m, const char *id)
{
    uint64_t h = 1469598103934665603ULL;
    for (const char *p = id; *p; p++) {
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    }
    size_t i = (size_t)h & m->mask;
    while (m->key[i][0] != '\0' && strcmp(m->key[i], id) != 0) {
        i = (i + 1) & m->mask;
    }
    return i;
}

/* Adds id -> v unless id is there already. */
static void s_idmap_put(struct idmap *m, const char *id, long v)
{
    size_t i = s_idmap_slot(m, id);
    if (m->key[i][0] == '\0') {
        snprintf(m->key[i], sizeof m->key[i], "%s", id);
        m->val[i] = v;
    }
}

/* The index of id, or -1. */
static long s_idmap_get(const struct idmap *m, const char *id)
{
    size_t i = s_idmap_slot(m, id);
    return m->key[i][0] == '\0' ? -1 : m->val[i];
}

/* --- the provider ------------------------------------------------------------ */

static enum MHD_Result s_provider(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    struct e2e *x = cls;
    (void)version;
    (void)upload;
    if (*con_cls == NULL) {
        *con_cls = conn;        /* the first call only announces the request */
        return MHD_YES;
    }
    if (*upload_size != 0) {
        *upload_size = 0;       /* the body is not looked at */
        return MHD_YES;
    }
    int64_t now = s_now_us();
    const char *key = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Idempotency-Key");
    size_t ul = strlen(url);
    bool ok = strcmp(method, "POST") == 0 && ul > 9 && strcmp(url + ul - 9, "/messages") == 0
              && key != NULL && strlen(key) == ULID_LEN;
    char body[256];
    unsigned int status = MHD_HTTP_OK;
    if (ok) {
        struct pair p = { .t_us = now };
        memcpy(p.id, key, ULID_LEN + 1);
        pthread_mutex_lock(&x->plock);
        ok = s_pairs_add(&x->delivered, &p) == 0;
        pthread_mutex_unlock(&x->plock);
    }
    if (ok) {
        atomic_fetch_add(&x->prov_n, 1);
        snprintf(body, sizeof body,
                 "{\"messaging_product\":\"whatsapp\",\"contacts\":[],"
                 "\"messages\":[{\"id\":\"wamid.E2EOUT%010lu\"}]}",
                 (unsigned long)atomic_fetch_add(&x->prov_seq, 1));
    } else {
        atomic_fetch_add(&x->prov_bad, 1);
        status = MHD_HTTP_BAD_REQUEST;
        snprintf(body, sizeof body, "{\"error\":{\"message\":\"(#100) e2e provider: not a send\","
                                    "\"type\":\"OAuthException\",\"code\":100}}");
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_COPY);
    if (r == NULL) {
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "application/json");
    enum MHD_Result rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

/* --- the archive's tap -------------------------------------------------------- */

/* The index in this level of a wamid, or -1 when it is not of this level. */
static long s_wamid_index(const struct e2e *x, const char *src)
{
    if (src == NULL || x->prefix_len == 0 || strncmp(src, x->prefix, x->prefix_len) != 0) {
        return -1;
    }
    char *end = NULL;
    long k = strtol(src + x->prefix_len, &end, 10);
    return end != src + x->prefix_len && *end == '\0' && k >= 0 && k < x->nmsgs ? k : -1;
}

/* The index of a stage name in x->names, added when new; -1 when full.
 * Called under x->lock. */
static int s_name_index(struct e2e *x, const char *s, size_t n)
{
    for (int i = 0; i < x->nnames; i++) {
        if (strlen(x->names[i]) == n && memcmp(x->names[i], s, n) == 0) {
            return i;
        }
    }
    if (x->nnames == MAX_STAGE_NAMES || n >= sizeof x->names[0]) {
        return -1;
    }
    memcpy(x->names[x->nnames], s, n);
    x->names[x->nnames][n] = '\0';
    return x->nnames++;
}

/* Keeps the [stage, ms] stamps of e's trace in m. Called under x->lock. */
static void s_keep_trace(struct e2e *x, struct msg *m, const struct env *e)
{
    size_t n = 0;
    const void *p = env_raw(e, ENV_TRACE, &n);
    struct mp_reader r;
    struct mp_val v, name, ms;
    m->ntrace = 0;
    if (p == NULL) {
        return;
    }
    mp_reader_init(&r, p, n);
    if (mp_read(&r, &v) != 0 || v.type != MP_ARRAY) {
        return;
    }
    for (uint32_t i = 0; i < v.n && m->ntrace < MAX_TRACE; i++) {
        struct mp_val pair;
        if (mp_read(&r, &pair) != 0 || pair.type != MP_ARRAY || pair.n != 2 || mp_read(&r, &name) != 0
            || name.type != MP_STR || mp_read(&r, &ms) != 0 || ms.type != MP_UINT) {
            m->ntrace = 0;
            return;
        }
        int k = s_name_index(x, name.s, name.n);
        if (k < 0) {
            m->ntrace = 0;
            return;
        }
        m->trace_name[m->ntrace] = (uint8_t)k;
        m->trace_ms[m->ntrace++] = (int64_t)ms.u;
    }
}

static void s_tap_one(struct e2e *x, struct env *e, int64_t now)
{
    const char *dir = env_get(e, ENV_DIR);
    const char *id = env_get(e, ENV_ID);
    if (dir == NULL || id == NULL || strlen(id) != ULID_LEN) {
        return;
    }
    if (strcmp(dir, "in") == 0) {
        pthread_mutex_lock(&x->lock);
        long k = s_wamid_index(x, env_get(e, ENV_SRC_ID));
        if (k >= 0 && x->msgs[k].arch_us == 0) {
            x->msgs[k].arch_us = now;
            memcpy(x->msgs[k].qid, id, ULID_LEN + 1);
            s_keep_trace(x, &x->msgs[k], e);
            atomic_fetch_add(&x->tap_questions, 1);
        }
        pthread_mutex_unlock(&x->lock);
    } else if (strcmp(dir, "out") == 0) {
        const char *ref = env_get(e, ENV_REPLY_TO);
        if (ref == NULL || strlen(ref) != ULID_LEN) {
            return;
        }
        struct pair p = { .t_us = now };
        memcpy(p.id, id, ULID_LEN + 1);
        memcpy(p.ref, ref, ULID_LEN + 1);
        pthread_mutex_lock(&x->lock);
        if (s_pairs_add(&x->replies, &p) == 0) {
            atomic_fetch_add(&x->tap_replies, 1);
        }
        pthread_mutex_unlock(&x->lock);
    }
}

static void *s_tap_main(void *arg)
{
    struct e2e *x = arg;
    void *sub = zmq_socket(x->zctx, ZMQ_SUB);
    if (sub == NULL) {
        fprintf(stderr, "e2e: tap socket: %s\n", zmq_strerror(zmq_errno()));
        return NULL;
    }
    int hwm = TAP_HWM, timeout = 100, linger = 0;
    zmq_setsockopt(sub, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(sub, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    zmq_setsockopt(sub, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "", 0);
    if (zmq_connect(sub, x->o->tap) != 0) {
        fprintf(stderr, "e2e: connect %s: %s\n", x->o->tap, zmq_strerror(zmq_errno()));
        zmq_close(sub);
        return NULL;
    }
    struct env *e = env_new();
    zmq_msg_t m;
    zmq_msg_init(&m);
    while (e != NULL && !atomic_load(&x->stop)) {
        if (zmq_msg_recv(&m, sub, 0) < 0) {
            continue;           /* EAGAIN (the timeout) or EINTR */
        }
        int64_t now = s_now_us();
        struct env_err err;
        if (env_decode(e, zmq_msg_data(&m), zmq_msg_size(&m), &err) != 0) {
            atomic_fetch_add(&x->tap_bad, 1);
            continue;
        }
        s_tap_one(x, e, now);
    }
    zmq_msg_close(&m);
    env_destroy(&e);
    zmq_close(sub);
    return NULL;
}

/* --- the load ------------------------------------------------------------------ */

/* Reads the "q" of each line of path. Returns 0, or -1 with a message. */
static int s_load_questions(struct e2e *x, const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "e2e: %s: %s\n", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int rc = 0;
    while (rc == 0 && (len = getline(&line, &cap, f)) >= 0) {
        cJSON *j = cJSON_ParseWithLength(line, (size_t)len);
        const cJSON *q = cJSON_GetObjectItemCaseSensitive(j, "q");
        if (cJSON_IsString(q) && q->valuestring[0] != '\0') {
            char **v = realloc(x->questions, (x->nquestions + 1) * sizeof *v);
            char *s = strdup(q->valuestring);
            if (v == NULL || s == NULL) {
                free(s);
                if (v != NULL) {
                    x->questions = v;
                }
                rc = -1;
            } else {
                x->questions = v;
                x->questions[x->nquestions++] = s;
            }
        }
        cJSON_Delete(j);
    }
    free(line);
    fclose(f);
    if (rc == 0 && x->nquestions == 0) {
        fprintf(stderr, "e2e: %s: no {\"q\": ...} lines\n", path);
        rc = -1;
    }
    return rc;
}

/* Builds the signed payload of message k of level lv. Returns 0, or -1. */
static int s_payload(struct e2e *x, struct msg *m, int lv, long k, uint64_t *rnd, struct buf *b)
{
    const struct opts *o = x->o;
    /* Customer c writes about --per-customer of the messages around the
     * (c * per_customer)th, interleaved with others': the same mix however
     * many messages a level has. */
    uint64_t c = ((uint64_t)k + s_rand(rnd) % CUSTOMER_SPREAD) / (uint64_t)o->per_customer;
    /* Each level its own customers (a conversation handed to a human stays
     * there, so old customers would take fewer bot answers); 7919 is prime
     * to 10^8, so (level, c) -> phone is one to one. */
    uint64_t who = (uint64_t)lv * 1000000ULL + c;
    unsigned long phone = (unsigned long)((o->seed * 1000003ULL + who * 7919ULL) % 100000000ULL);
    const char *q = x->questions[s_rand(rnd) % x->nquestions];
    const char *name = s_names[c % (sizeof s_names / sizeof s_names[0])];
    buf_reset(b);
    int rc = buf_printf(b,
                        "{\"object\":\"whatsapp_business_account\",\"entry\":[{\"id\":\"102290129340398\","
                        "\"changes\":[{\"value\":{\"messaging_product\":\"whatsapp\",\"metadata\":"
                        "{\"display_phone_number\":\"551140041234\",\"phone_number_id\":\"%s\"},"
                        "\"contacts\":[{\"profile\":{\"name\":\"%s\"},\"wa_id\":\"55119%08lu\"}],"
                        "\"messages\":[{\"from\":\"55119%08lu\",\"id\":\"%s%ld\",\"timestamp\":\"%ld\","
                        "\"text\":{\"body\":",
                        o->phone_id, name, phone, phone, x->prefix, k, (long)time(NULL));
    rc |= buf_json_str(b, q, strlen(q));
    rc |= buf_puts(b, "},\"type\":\"text\"}]},\"field\":\"messages\"}]}]}");
    unsigned char mac[SIG_SHA256_LEN];
    char hex[2 * SIG_SHA256_LEN + 1];
    if (rc != 0 || sig_hmac_sha256(o->secret, strlen(o->secret), b->data, b->len, mac) != 0) {
        return -1;
    }
    sig_hex(mac, sizeof mac, hex);
    snprintf(m->sig, sizeof m->sig, "X-Hub-Signature-256: sha256=%s", hex);
    m->body = malloc(b->len + 1);
    if (m->body == NULL) {
        return -1;
    }
    memcpy(m->body, b->data, b->len + 1);
    m->body_len = b->len;
    return 0;
}

/* One webhook POST in flight. */
struct req {
    CURL *h;                    /* its handle, reused */
    struct curl_slist *hdrs;    /* its headers */
    long k;                     /* the message */
    struct req *next;           /* the free list */
    struct req *all;            /* every request made */
    bool active;                /* in flight */
};

static size_t s_discard(char *p, size_t size, size_t nmemb, void *arg)
{
    (void)p;
    (void)arg;
    return size * nmemb;
}

/* The sender: a curl multi handle with a free list of requests. */
struct sender {
    CURLM *multi;               /* keep-alive connections to the webhook */
    struct req *free;           /* requests not in flight */
    struct req *all;            /* every request made, through req.all */
    long inflight;              /* requests in flight */
};

static int s_dispatch(struct e2e *x, struct sender *s, long k)
{
    struct req *r = s->free;
    if (r != NULL) {
        s->free = r->next;
    } else {
        r = calloc(1, sizeof *r);
        if (r == NULL || (r->h = curl_easy_init()) == NULL) {
            free(r);
            return -1;
        }
        r->all = s->all;
        s->all = r;
    }
    struct msg *m = &x->msgs[k];
    r->k = k;
    curl_slist_free_all(r->hdrs);
    r->hdrs = NULL;
    const char *lines[] = { "Content-Type: application/json", "Expect:", "User-Agent: facebookexternalua",
                            m->sig };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        struct curl_slist *t = curl_slist_append(r->hdrs, lines[i]);
        if (t == NULL) {
            return -1;
        }
        r->hdrs = t;
    }
    CURL *h = r->h;
    curl_easy_reset(h);
    curl_easy_setopt(h, CURLOPT_URL, x->o->url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, r->hdrs);
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, m->body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)m->body_len);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, s_discard);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)HTTP_TIMEOUT_MS);
    curl_easy_setopt(h, CURLOPT_PRIVATE, r);
    if (curl_multi_add_handle(s->multi, h) != CURLM_OK) {
        r->next = s->free;
        s->free = r;
        return -1;
    }
    r->active = true;
    s->inflight++;
    return 0;
}

/* Takes the answers that came; returns how many. */
static long s_collect(struct e2e *x, struct sender *s)
{
    long n = 0;
    int left;
    CURLMsg *cm;
    while ((cm = curl_multi_info_read(s->multi, &left)) != NULL) {
        if (cm->msg != CURLMSG_DONE) {
            continue;
        }
        int64_t now = s_now_us();
        char *priv = NULL;
        curl_easy_getinfo(cm->easy_handle, CURLINFO_PRIVATE, &priv);
        struct req *r = (struct req *)priv;
        long status = 0;
        if (cm->data.result == CURLE_OK) {
            curl_easy_getinfo(cm->easy_handle, CURLINFO_RESPONSE_CODE, &status);
        }
        curl_multi_remove_handle(s->multi, cm->easy_handle);
        pthread_mutex_lock(&x->lock);
        x->msgs[r->k].status = status;
        x->msgs[r->k].ack_us = now;
        pthread_mutex_unlock(&x->lock);
        r->active = false;
        r->next = s->free;
        s->free = r;
        s->inflight--;
        n++;
    }
    return n;
}

/* Takes back the requests still in flight (their bodies are about to go). */
static void s_abandon(struct sender *s)
{
    for (struct req *r = s->all; r != NULL; r = r->all) {
        if (r->active) {
            curl_multi_remove_handle(s->multi, r->h);
            r->active = false;
            r->next = s->free;
            s->free = r;
            s->inflight--;
        }
    }
}

/* Sets up level number lv of n messages: payloads, fresh records. */
static int s_level_setup(struct e2e *x, int lv, long n)
{
    struct buf b = { 0 };
    /* The same questions and customers' turns at every level. */
    uint64_t rnd = x->o->seed * 7777ULL;
    pthread_mutex_lock(&x->lock);
    for (long k = 0; k < x->nmsgs; k++) {
        free(x->msgs[k].body);
    }
    free(x->msgs);
    x->msgs = calloc((size_t)n, sizeof *x->msgs);
    x->nmsgs = x->msgs ? n : 0;
    x->replies.n = 0;
    snprintf(x->prefix, sizeof x->prefix, "wamid.E2E%s.%02d.", x->run, lv);
    x->prefix_len = strlen(x->prefix);
    atomic_store(&x->tap_questions, 0);
    atomic_store(&x->tap_replies, 0);
    int rc = x->msgs ? 0 : -1;
    for (long k = 0; rc == 0 && k < n; k++) {
        rc = s_payload(x, &x->msgs[k], lv, k, &rnd, &b);
    }
    pthread_mutex_unlock(&x->lock);
    pthread_mutex_lock(&x->plock);
    x->delivered.n = 0;
    atomic_store(&x->prov_n, 0);
    pthread_mutex_unlock(&x->plock);
    buf_free(&b);
    if (rc != 0) {
        fprintf(stderr, "e2e: out of memory building payloads\n");
    }
    return rc;
}

/* Messages in flight end to end: sent but not archived, and archived
 * replies not yet delivered. */
static long s_in_flight(struct e2e *x, long sent)
{
    return sent - atomic_load(&x->tap_questions) + atomic_load(&x->tap_replies) - atomic_load(&x->prov_n);
}

/* Sends the level: open loop at rate (msg/s) for all n messages, or, with
 * rate 0, closed loop for secs seconds. Sets *sent. Returns 0, or -1. */
static int s_send(struct e2e *x, struct sender *s, double rate, double secs, long n, long *sent)
{
    long next = 0, done = 0;
    int64_t t0 = s_now_us() + START_DELAY_US;
    int64_t end = t0 + (int64_t)(secs * 1e6);
    int64_t give_up = end + SEND_GRACE_US;
    while (done < next || next < n) {
        int64_t now = s_now_us();
        if (now >= give_up) {
            fprintf(stderr, "e2e: %ld webhook requests unanswered %d s after the last was due\n",
                    next - done, SEND_GRACE_US / 1000000);
            s_abandon(s);
            break;
        }
        if (rate > 0) {
            while (next < n) {
                int64_t slot = t0 + (int64_t)((double)next * 1e6 / rate);
                if (slot > now) {
                    break;
                }
                x->msgs[next].slot_us = slot;
                if (s_dispatch(x, s, next) != 0) {
                    return -1;
                }
                next++;
            }
        } else if (now >= t0) {
            if (now >= end) {
                n = next;       /* closed loop: the time is up */
            }
            while (next < n && s->inflight < x->o->conns && s_in_flight(x, next) < x->o->window) {
                x->msgs[next].slot_us = now;
                if (s_dispatch(x, s, next) != 0) {
                    return -1;
                }
                next++;
            }
        }
        int running;
        curl_multi_perform(s->multi, &running);
        done += s_collect(x, s);
        int wait_ms = 1;
        if (rate > 0 && next < n) {
            int64_t slot = t0 + (int64_t)((double)next * 1e6 / rate);
            int64_t d = slot - s_now_us();
            wait_ms = d <= 0 ? 0 : (int)((d + 999) / 1000);
        } else if (rate > 0) {
            wait_ms = 50;
        }
        if (wait_ms > 0) {
            curl_multi_poll(s->multi, NULL, 0, wait_ms, NULL);
        }
    }
    *sent = next;
    return 0;
}

/* Waits for the level to drain; sets *secs to the time it took. */
static bool s_drain(struct e2e *x, long accepted, double limit, double *secs)
{
    int64_t t0 = s_now_us(), moved = t0;
    long last = -1;
    bool ok = false;
    for (;;) {
        long q = atomic_load(&x->tap_questions), r = atomic_load(&x->tap_replies);
        long p = atomic_load(&x->prov_n);
        int64_t now = s_now_us();
        if (q >= accepted && p >= r) {
            ok = true;
            break;
        }
        if (q + r + p != last) {
            last = q + r + p;
            moved = now;
        }
        if (now - moved >= STALL_US || now - t0 >= (int64_t)(limit * 1e6)) {
            break;
        }
        usleep(2000);
    }
    *secs = (double)(s_now_us() - t0) / 1e6;
    return ok;
}

/* Appends " NAME P50/P99," for v[0..n) (µs) to b. */
static void s_where_one(struct buf *b, const char *name, int64_t *v, size_t n)
{
    double p50 = s_quantile_ms(v, n, 0.5), p99 = s_quantile_ms(v, n, 0.99);
    buf_printf(b, " %s %.*f/%.*f,", name, p50 < 10 ? 1 : 0, p50, p99 < 10 ? 1 : 0, p99);
}

/* Prints where the time of the level's questions went, from their traces
 * (each stage stamps [stage, ms] as it sends on, CLOCK_REALTIME ms): the
 * time up to each stamp from the one before (the first from the slot),
 * from the last stamp to the tap, and from the tap to the provider for
 * answered ones (omni-send). Only questions whose stages are those of the
 * first one count. Called under x->lock. */
static void s_where(struct e2e *x, const char *mode, double rate, long n)
{
    const struct msg *ref = NULL;
    for (long k = 0; k < n && ref == NULL; k++) {
        if (x->msgs[k].arch_us != 0 && x->msgs[k].ntrace > 0) {
            ref = &x->msgs[k];
        }
    }
    if (ref == NULL) {
        return;
    }
    int hops = ref->ntrace + 2;
    int64_t *v = calloc((size_t)hops * (size_t)n, sizeof *v);
    size_t *cnt = calloc((size_t)hops, sizeof *cnt);
    struct buf b = { 0 };
    if (v == NULL || cnt == NULL) {
        goto done;
    }
    for (long k = 0; k < n; k++) {
        const struct msg *m = &x->msgs[k];
        if (m->arch_us == 0 || m->ntrace != ref->ntrace
            || memcmp(m->trace_name, ref->trace_name, ref->ntrace) != 0) {
            continue;
        }
        int64_t prev = m->slot_us + x->real_off_us;
        for (int i = 0; i < m->ntrace; i++) {
            int64_t t = m->trace_ms[i] * 1000;
            v[(size_t)i * (size_t)n + cnt[i]++] = t - prev;
            prev = t;
        }
        v[(size_t)m->ntrace * (size_t)n + cnt[m->ntrace]++] = m->arch_us + x->real_off_us - prev;
        if (m->reply_us != 0) {
            v[(size_t)(m->ntrace + 1) * (size_t)n + cnt[m->ntrace + 1]++] = m->reply_us - m->arch_us;
        }
    }
    buf_printf(&b, "e2e where mode=%s offered=%.0f:", mode, rate);
    for (int i = 0; i < hops; i++) {
        const char *name = i < ref->ntrace ? x->names[ref->trace_name[i]] : i == ref->ntrace ? "tap" : "send";
        s_where_one(&b, name, v + (size_t)i * (size_t)n, cnt[i]);
    }
    if (b.data != NULL) {
        b.data[b.len - 1] = '\0';  /* the last comma */
        printf("%s (p50/p99 ms)\n", b.data);
    }
done:
    buf_free(&b);
    free(cnt);
    free(v);
}

/* Joins the records of the level and prints its line. Returns 0 when
 * messages got through. */
static int s_report(struct e2e *x, const char *mode, double rate, double secs, long sent, bool drained,
                    double drain_secs)
{
    int rc = -1;
    long n = sent, accepted = 0, archived = 0, answered = 0, delivered = 0, done = 0;
    int64_t *ack = calloc((size_t)n + 1, sizeof *ack);
    int64_t *arch = calloc((size_t)n + 1, sizeof *arch);
    int64_t *rep = calloc((size_t)n + 1, sizeof *rep);
    struct idmap qmap = { 0 }, rmap = { 0 };
    if (ack == NULL || arch == NULL || rep == NULL || s_idmap_init(&qmap, (size_t)n) != 0
        || s_idmap_init(&rmap, (size_t)n) != 0) {
        fprintf(stderr, "e2e: out of memory joining the records\n");
        goto done;
    }
    pthread_mutex_lock(&x->lock);
    for (long k = 0; k < n; k++) {
        if (x->msgs[k].arch_us != 0) {
            s_idmap_put(&qmap, x->msgs[k].qid, k);
        }
    }
    for (size_t i = 0; i < x->replies.n; i++) {
        long k = s_idmap_get(&qmap, x->replies.v[i].ref);
        if (k >= 0 && !x->msgs[k].answered) {
            x->msgs[k].answered = true;
            s_idmap_put(&rmap, x->replies.v[i].id, k);
        }
    }
    pthread_mutex_lock(&x->plock);
    for (size_t i = 0; i < x->delivered.n; i++) {
        long k = s_idmap_get(&rmap, x->delivered.v[i].id);
        if (k >= 0 && x->msgs[k].reply_us == 0) {
            x->msgs[k].reply_us = x->delivered.v[i].t_us;
        }
    }
    pthread_mutex_unlock(&x->plock);
    int64_t first_arch = INT64_MAX, last_arch = 0, first_rep = INT64_MAX, last_rep = 0;
    int64_t first_done = INT64_MAX, last_done = 0;
    long nack = 0;
    for (long k = 0; k < n; k++) {
        const struct msg *m = &x->msgs[k];
        if (m->status == 200) {
            accepted++;
        }
        if (m->ack_us != 0) {
            ack[nack++] = m->ack_us - m->slot_us;
        }
        if (m->arch_us != 0) {
            arch[archived++] = m->arch_us - m->slot_us;
            first_arch = m->arch_us < first_arch ? m->arch_us : first_arch;
            last_arch = m->arch_us > last_arch ? m->arch_us : last_arch;
        }
        answered += m->answered;
        if (m->reply_us != 0) {
            rep[delivered++] = m->reply_us - m->slot_us;
            first_rep = m->reply_us < first_rep ? m->reply_us : first_rep;
            last_rep = m->reply_us > last_rep ? m->reply_us : last_rep;
        }
        if (m->arch_us != 0 && (!m->answered || m->reply_us != 0)) {
            int64_t t = m->reply_us > m->arch_us ? m->reply_us : m->arch_us;
            first_done = t < first_done ? t : first_done;
            last_done = t > last_done ? t : last_done;
            done++;
        }
    }
    s_where(x, mode, rate, n);
    pthread_mutex_unlock(&x->lock);
    double reply_max = delivered > 0 ? s_quantile_ms(rep, (size_t)delivered, 1.0) : -1;
    printf("e2e mode=%s offered=%.0f secs=%.1f sent=%ld accepted=%ld refused=%ld archived=%ld answered=%ld "
           "delivered=%ld archived_rate=%.0f reply_rate=%.0f done_rate=%.0f ack_p50_ms=%.2f ack_p99_ms=%.2f "
           "archive_p50_ms=%.2f archive_p99_ms=%.2f reply_p50_ms=%.2f reply_p99_ms=%.2f reply_max_ms=%.2f "
           "drained=%d drain_secs=%.2f\n",
           mode, rate, secs, sent, accepted, sent - accepted, archived, answered, delivered,
           s_rate(archived, first_arch, last_arch), s_rate(delivered, first_rep, last_rep),
           s_rate(done, first_done, last_done), s_quantile_ms(ack, (size_t)nack, 0.5),
           s_quantile_ms(ack, (size_t)nack, 0.99), s_quantile_ms(arch, (size_t)archived, 0.5),
           s_quantile_ms(arch, (size_t)archived, 0.99), s_quantile_ms(rep, (size_t)delivered, 0.5),
           s_quantile_ms(rep, (size_t)delivered, 0.99), reply_max, drained ? 1 : 0, drain_secs);
    fflush(stdout);
    if (accepted < sent) {
        fprintf(stderr, "e2e: %s %.0f/s: the webhook refused or did not answer %ld of %ld\n", mode, rate,
                sent - accepted, sent);
    }
    rc = archived > 0 && delivered > 0 ? 0 : -1;
done:
    s_idmap_free(&qmap);
    s_idmap_free(&rmap);
    free(ack);
    free(arch);
    free(rep);
    return rc;
}

/* Runs one level: rate > 0 open loop for secs, rate 0 closed loop. */
static int s_level(struct e2e *x, struct sender *s, int lv, const char *mode, double rate, double secs,
                   long count, bool report)
{
    long n = count > 0 ? count : rate > 0 ? (long)(rate * secs + 0.5) : x->o->closed_max;
    if (n > MAX_MESSAGES) {
        fprintf(stderr, "e2e: %ld messages in one level: at most %d\n", n, MAX_MESSAGES);
        return -1;
    }
    if (s_level_setup(x, lv, n) != 0) {
        return -1;
    }
    long sent = 0;
    if (s_send(x, s, rate, count > 0 && rate > 0 ? (double)count / rate : secs, n, &sent) != 0) {
        fprintf(stderr, "e2e: cannot send (out of memory)\n");
        return -1;
    }
    long accepted = 0;
    pthread_mutex_lock(&x->lock);
    for (long k = 0; k < sent; k++) {
        accepted += x->msgs[k].status == 200;
    }
    pthread_mutex_unlock(&x->lock);
    double drain_secs = 0;
    bool drained = s_drain(x, accepted, x->o->drain, &drain_secs);
    if (!report) {
        return 0;
    }
    return s_report(x, mode, rate, secs, sent, drained, drain_secs);
}

/* --- main ------------------------------------------------------------------------ */

static int s_num(const char *s, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || v < 0) {
        return -1;
    }
    *out = v;
    return 0;
}

static int s_parse(int argc, char **argv, struct opts *o)
{
    for (int i = 1; i < argc; i += 2) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        double d = 0;
        if (v == NULL) {
            return -1;
        }
        if (strcmp(k, "--url") == 0) {
            o->url = v;
        } else if (strcmp(k, "--secret") == 0) {
            o->secret = v;
        } else if (strcmp(k, "--questions") == 0) {
            o->questions = v;
        } else if (strcmp(k, "--tap") == 0) {
            o->tap = v;
        } else if (strcmp(k, "--port-file") == 0) {
            o->port_file = v;
        } else if (strcmp(k, "--go") == 0) {
            o->go = v;
        } else if (strcmp(k, "--phone-id") == 0) {
            o->phone_id = v;
        } else if (strcmp(k, "--levels") == 0) {
            o->nlevels = 0;
            char *copy = strdup(v), *save = NULL;
            for (char *t = copy ? strtok_r(copy, ",", &save) : NULL; t; t = strtok_r(NULL, ",", &save)) {
                if (o->nlevels == MAX_LEVELS || s_num(t, &d) != 0 || d <= 0) {
                    free(copy);
                    return -1;
                }
                o->levels[o->nlevels++] = d;
            }
            free(copy);
        } else if (s_num(v, &d) != 0) {
            return -1;
        } else if (strcmp(k, "--secs") == 0) {
            o->secs = d;
        } else if (strcmp(k, "--closed-secs") == 0) {
            o->closed_secs = d;
        } else if (strcmp(k, "--closed-max") == 0) {
            o->closed_max = (long)d;
        } else if (strcmp(k, "--window") == 0) {
            o->window = (long)d;
        } else if (strcmp(k, "--warmup") == 0) {
            o->warmup = (long)d;
        } else if (strcmp(k, "--conns") == 0) {
            o->conns = (long)d;
        } else if (strcmp(k, "--per-customer") == 0) {
            o->per_customer = (long)d;
        } else if (strcmp(k, "--drain") == 0) {
            o->drain = d;
        } else if (strcmp(k, "--seed") == 0) {
            o->seed = (unsigned long)d;
        } else {
            return -1;
        }
    }
    bool ok = o->url && o->secret && o->questions && o->tap && o->port_file && o->go && o->secs > 0
              && o->window > 0 && o->closed_max > 0 && o->conns > 0 && o->per_customer > 0
              && o->drain > 0;
    return ok ? 0 : -1;
}

/* Writes the port to path (via a rename, so a reader never sees half). */
static int s_write_port(const char *path, unsigned int port)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (f == NULL || fprintf(f, "%u\n", port) < 0 || fclose(f) != 0 || rename(tmp, path) != 0) {
        fprintf(stderr, "e2e: %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct opts o = { .phone_id = "106540352242922", .levels = { 250, 500, 1000, 2000 }, .nlevels = 4,
                      .secs = 5, .window = 500, .closed_max = 40000, .conns = 32, .per_customer = 4,
                      .drain = 20, .seed = 1 };
    if (s_parse(argc, argv, &o) != 0) {
        return s_usage();
    }
    static struct e2e x;
    x.o = &o;
    pthread_mutex_init(&x.lock, NULL);
    pthread_mutex_init(&x.plock, NULL);
    struct timespec mono, real;
    clock_gettime(CLOCK_MONOTONIC, &mono);
    clock_gettime(CLOCK_REALTIME, &real);
    x.real_off_us = ((int64_t)real.tv_sec - (int64_t)mono.tv_sec) * 1000000
                    + (real.tv_nsec - mono.tv_nsec) / 1000;
    uint64_t r = o.seed ^ (uint64_t)s_now_us();
    snprintf(x.run, sizeof x.run, "%08X", (unsigned int)(s_rand(&r) & 0xffffffffu));
    if (s_load_questions(&x, o.questions) != 0 || curl_global_init(CURL_GLOBAL_DEFAULT) != 0) {
        return 69;
    }
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_EPOLL_INTERNAL_THREAD, 0, NULL, NULL, s_provider, &x,
                                            MHD_OPTION_END);
    const union MHD_DaemonInfo *info = d ? MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT) : NULL;
    if (info == NULL || info->port == 0) {
        fprintf(stderr, "e2e: the provider did not start\n");
        return 69;
    }
    x.zctx = zmq_ctx_new();
    pthread_t tap;
    if (x.zctx == NULL || pthread_create(&tap, NULL, s_tap_main, &x) != 0
        || s_write_port(o.port_file, info->port) != 0) {
        fprintf(stderr, "e2e: setup failed\n");
        return 69;
    }
    struct sender s = { .multi = curl_multi_init() };
    int status = 69;
    if (s.multi == NULL) {
        goto out;
    }
    curl_multi_setopt(s.multi, CURLMOPT_MAX_HOST_CONNECTIONS, o.conns);
    curl_multi_setopt(s.multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, o.conns);
    curl_multi_setopt(s.multi, CURLMOPT_MAXCONNECTS, o.conns);
    int64_t go_by = s_now_us() + (int64_t)GO_WAIT_S * 1000000;
    while (access(o.go, F_OK) != 0) {
        if (s_now_us() > go_by) {
            fprintf(stderr, "e2e: %s did not appear in %d s\n", o.go, GO_WAIT_S);
            goto out;
        }
        usleep(20000);
    }
    fprintf(stderr, "e2e: provider on 127.0.0.1:%u, run %s\n", info->port, x.run);
    status = 0;
    int lv = 0;
    if (o.warmup > 0 && s_level(&x, &s, lv++, "warmup", o.levels[0], o.secs, o.warmup, false) != 0) {
        status = 1;
    }
    for (int i = 0; i < o.nlevels; i++) {
        if (s_level(&x, &s, lv++, "open", o.levels[i], o.secs, 0, true) != 0) {
            status = 1;
        }
    }
    if (o.closed_secs > 0 && s_level(&x, &s, lv++, "closed", 0, o.closed_secs, 0, true) != 0) {
        status = 1;
    }
    if (atomic_load(&x.prov_bad) > 0 || atomic_load(&x.tap_bad) > 0) {
        fprintf(stderr, "e2e: the provider refused %ld requests; %ld tap messages did not decode\n",
                atomic_load(&x.prov_bad), atomic_load(&x.tap_bad));
        status = 1;
    }
out:
    atomic_store(&x.stop, true);
    pthread_join(tap, NULL);
    MHD_stop_daemon(d);
    struct rusage ru;
    if (status != 69 && getrusage(RUSAGE_SELF, &ru) == 0) {
        printf("e2e driver cpu_secs=%.1f\n", (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec)
                                                 + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
    }
    s_abandon(&s);
    for (struct req *q = s.all, *nx; q != NULL; q = nx) {
        nx = q->all;
        curl_easy_cleanup(q->h);
        curl_slist_free_all(q->hdrs);
        free(q);
    }
    if (s.multi != NULL) {
        curl_multi_cleanup(s.multi);
    }
    zmq_ctx_term(x.zctx);
    return status;
}
