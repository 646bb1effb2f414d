/* metrics — what the pipeline is doing, as Prometheus text.
 *
 * The stable part binds, the moving parts connect: omni-metrics binds a SUB
 * socket (--taps) and every stage's --tap connects to it, so one endpoint
 * gathers the whole pipeline; dead letters come on --dead-in (PULL) from the
 * stages' --dead. From each envelope it counts messages by channel, dir and
 * stage; per-stage and end-to-end latency from `trace`; first response time
 * per conversation; bot answers and handoffs by reason; queue waits; send
 * receipts. The counters live in memory: a restart starts them from zero,
 * which Prometheus's rate() expects of any process.
 *
 * Single-threaded: one loop polls the sockets, libmicrohttpd's listening
 * socket (no internal thread), and the runner's signals. */
#include "metrics.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <microhttpd.h>
#include <zmq.h>

#include "buf.h"
#include "endpoint.h"
#include "envelope.h"
#include "log.h"
#include "mp.h"

#define NBUCKETS 12
#define MAX_SERIES 4096         /* distinct label sets kept; more are counted, not kept */
#define MAX_CONVS 200000        /* conversations followed for first response / queue */

static const double s_bounds[NBUCKETS] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5
};
/* First response and queue wait are minutes to hours, not milliseconds. */
static const double s_slow_bounds[NBUCKETS] = {
    1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 14400, 86400
};

struct metrics_conf {
    const char *listen;         /* host:port of the HTTP server */
    const char *taps;           /* SUB endpoint the stages' taps connect to */
    const char *dead_in;        /* PULL endpoint the stages' --dead connect to */
};

/* One series: a metric name with its labels, and a value or a histogram. */
struct series {
    char *key;                  /* "name{labels}" as printed, or NULL when free */
    const char *help;           /* HELP text of the metric family */
    bool hist;                  /* histogram (else counter) */
    bool slow;                  /* histogram with s_slow_bounds */
    double value;               /* counter value */
    uint64_t buckets[NBUCKETS]; /* histogram: observations <= bound (cumulated when printed) */
    uint64_t count;             /* histogram: observations */
    double sum;                 /* histogram: their sum */
};

/* What is known of one conversation. */
struct conv {
    char id[48];                /* conversation id, "" when free */
    uint64_t first_in_ms;       /* ts of the first inbound not yet answered, 0 when none */
    bool answered;              /* first response seen */
    char queue[48];             /* queue it waits in, "" when none */
    uint64_t queued_ms;         /* when it started waiting */
};

struct metrics {
    struct metrics_conf *conf;  /* options */
    struct series *series;      /* open-addressed table of MAX_SERIES */
    size_t nseries;             /* used */
    uint64_t series_full;       /* observations lost to a full table */
    struct conv *convs;         /* open-addressed table of MAX_CONVS */
    size_t nconvs;              /* used */
    struct ep *taps;            /* SUB */
    struct ep *dead;            /* PULL, or NULL */
    struct env *env;            /* the envelope being counted */
    struct MHD_Daemon *httpd;   /* the HTTP server */
    uint64_t started_ms;        /* wall clock at start */
    uint64_t malformed;         /* messages on --taps that were not envelopes */
    uint64_t envelopes;         /* envelopes counted */
    struct log_limit bad_limit; /* rate limit of malformed-input lines */
};

static const struct opt s_opts[] = {
    { "listen", OPT_STR, "127.0.0.1:9464", offsetof(struct metrics_conf, listen),
      "HTTP address for /metrics (host:port)" },
    { "taps", OPT_STR, "@tcp://127.0.0.1:5590", offsetof(struct metrics_conf, taps),
      "where the stages' --tap connect (SUB; a bare URI binds)" },
    { "dead-in", OPT_STR, NULL, offsetof(struct metrics_conf, dead_in),
      "where the stages' --dead connect, to count dead letters (PULL; a bare URI binds)" },
    { NULL, 0, NULL, 0, NULL }
};

static uint64_t s_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    }
    return h;
}

/* The series for key, created when new; NULL when the table is full. */
static struct series *s_series(struct metrics *m, const char *key, const char *help, bool hist,
                               bool slow)
{
    size_t i = s_hash(key) % MAX_SERIES;
    for (size_t probe = 0; probe < MAX_SERIES; probe++, i = (i + 1) % MAX_SERIES) {
        struct series *s = &m->series[i];
        if (s->key == NULL) {
            if (m->nseries >= MAX_SERIES * 3 / 4 || (s->key = strdup(key)) == NULL) {
                m->series_full++;
                return NULL;
            }
            s->help = help;
            s->hist = hist;
            s->slow = slow;
            m->nseries++;
            return s;
        }
        if (strcmp(s->key, key) == 0) {
            return s;
        }
    }
    m->series_full++;
    return NULL;
}

/* Label values come from the outside: keep them printable and short. */
static void s_label(char *out, size_t n, const char *v)
{
    size_t k = 0;
    for (; v != NULL && *v != '\0' && k + 1 < n && k < 60; v++) {
        unsigned char c = (unsigned char)*v;
        out[k++] = (c == '"' || c == '\\' || c <= 0x20 || c >= 0x7f) ? '_' : (char)c;
    }
    out[k] = '\0';
    if (k == 0) {
        snprintf(out, n, "none");
    }
}

static void s_count(struct metrics *m, const char *key, const char *help, double by)
{
    struct series *s = s_series(m, key, help, false, false);
    if (s != NULL) {
        s->value += by;
    }
}

static void s_observe(struct metrics *m, const char *key, const char *help, bool slow, double v)
{
    struct series *s = s_series(m, key, help, true, slow);
    if (s == NULL || !isfinite(v)) {
        return;
    }
    const double *b = slow ? s_slow_bounds : s_bounds;
    for (int i = 0; i < NBUCKETS; i++) {
        if (v <= b[i]) {
            s->buckets[i]++;
            break;
        }
    }
    s->count++;
    s->sum += v;
}

/* The conversation record for id, created when new; NULL when full. */
static struct conv *s_conv(struct metrics *m, const char *id)
{
    size_t i = s_hash(id) % MAX_CONVS;
    for (size_t probe = 0; probe < 64; probe++, i = (i + 1) % MAX_CONVS) {
        struct conv *c = &m->convs[i];
        if (c->id[0] == '\0') {
            if (m->nconvs >= MAX_CONVS * 3 / 4) {
                return NULL;
            }
            snprintf(c->id, sizeof c->id, "%s", id);
            m->nconvs++;
            return c;
        }
        if (strcmp(c->id, id) == 0) {
            return c;
        }
    }
    return NULL;
}

/* One walk over trace ([stage, ms] pairs, validated when decoded): the last
 * stamp's stage into st[stn] and ms into *last_ms, the one before it into
 * *prev_ms. Returns the number of stamps. */
static size_t s_trace(const struct env *e, char *st, size_t stn, uint64_t *last_ms, uint64_t *prev_ms)
{
    size_t n;
    const void *p = env_raw(e, ENV_TRACE, &n);
    struct mp_reader r;
    struct mp_val a, pair, name, t;
    if (p == NULL) {
        return 0;
    }
    mp_reader_init(&r, p, n);
    if (mp_read(&r, &a) != 0 || a.type != MP_ARRAY) {
        return 0;
    }
    for (uint32_t k = 0; k < a.n; k++) {
        if (mp_read(&r, &pair) != 0 || mp_read(&r, &name) != 0 || mp_read(&r, &t) != 0) {
            return 0;
        }
        *prev_ms = *last_ms;
        *last_ms = t.u;
        if (k + 1 == a.n) {
            snprintf(st, stn, "%.*s", (int)name.n, name.s);
        }
    }
    return a.n;
}

static void s_envelope(struct metrics *m, struct env *e)
{
    char ch[64], dir[16], stage[64], k[256];
    s_label(ch, sizeof ch, env_get(e, ENV_CHANNEL));
    s_label(dir, sizeof dir, env_get(e, ENV_DIR));
    char st[64] = "";
    uint64_t st_ms = 0, prev_ms = 0;
    size_t nstamps = s_trace(e, st, sizeof st, &st_ms, &prev_ms);
    s_label(stage, sizeof stage, st);
    m->envelopes++;
    char v[64], ev[64] = "";
    if (strcmp(dir, "event") == 0 && env_map_str(e, ENV_META, "event", v, sizeof v) == 1) {
        s_label(ev, sizeof ev, v);
    }
    if (strcmp(ev, "stats") == 0) {
        /* A stage's report of itself (lib/spool: the backlog), not a message. */
        int64_t backlog;
        if (env_map_int(e, ENV_META, "spool_backlog", &backlog) == 1) {
            snprintf(k, sizeof k, "omnibus_spool_backlog{stage=\"%s\"}", stage);
            struct series *s = s_series(m, k, "Envelopes spooled and not yet acknowledged.", false, false);
            if (s != NULL) {
                s->value = (double)backlog;
            }
        }
        return;
    }

    snprintf(k, sizeof k, "omnibus_messages_total{channel=\"%s\",dir=\"%s\",stage=\"%s\"}", ch, dir, stage);
    s_count(m, k, "Envelopes seen on the taps, by channel, direction and the stage that published them.", 1);
    if (nstamps > 1 && st_ms >= prev_ms) {
        snprintf(k, sizeof k, "omnibus_stage_latency_seconds{stage=\"%s\"}", stage);
        s_observe(m, k, "Time from the previous stage's stamp to this stage's, from trace.", false,
                  (double)(st_ms - prev_ms) / 1e3);
    }
    if (nstamps > 0 && env_has(e, ENV_TS) && st_ms >= e->ts && st_ms - e->ts < 86400000ULL) {
        snprintf(k, sizeof k, "omnibus_pipeline_latency_seconds{stage=\"%s\"}", stage);
        s_observe(m, k, "Time from entering the system (ts) to this stage's stamp.", false,
                  (double)(st_ms - e->ts) / 1e3);
    }

    const char *conv_id = env_get(e, ENV_CONVERSATION);
    struct conv *c = conv_id != NULL ? s_conv(m, conv_id) : NULL;
    bool is_in = strcmp(dir, "in") == 0, is_out = strcmp(dir, "out") == 0;
    if (c != NULL && is_in && !c->answered && c->first_in_ms == 0) {
        c->first_in_ms = e->ts;
    }
    if (c != NULL && is_out && !c->answered && c->first_in_ms != 0 && e->ts >= c->first_in_ms) {
        c->answered = true;
        snprintf(k, sizeof k, "omnibus_first_response_seconds{channel=\"%s\"}", ch);
        s_observe(m, k, "First response time: first reply after a conversation's first inbound message.",
                  true, (double)(e->ts - c->first_in_ms) / 1e3);
    }

    char reason[64];
    /* One outcome per question: the question itself carries the bot's
     * verdict (its reply, handoff event and off-hours notice carry copies). */
    if (strcmp(stage, "bot") == 0 && is_in && env_has(e, ENV_BOT)) {
        if (env_map_str(e, ENV_BOT, "handoff", v, sizeof v) == 1) {
            s_label(reason, sizeof reason, v);
            snprintf(k, sizeof k, "omnibus_bot_total{outcome=\"handoff\",reason=\"%s\"}", reason);
            s_count(m, k, "Bot outcomes: answered from the knowledge base, or handed off (by reason).", 1);
        } else {
            snprintf(k, sizeof k, "omnibus_bot_total{outcome=\"answered\",reason=\"none\"}");
            s_count(m, k, "Bot outcomes: answered from the knowledge base, or handed off (by reason).", 1);
        }
    }
    if (strcmp(stage, "route") == 0 && c != NULL && is_in && env_has(e, ENV_ROUTE)) {
        char target[64], agent[64];
        bool has_agent = env_map_str(e, ENV_ROUTE, "agent", agent, sizeof agent) == 1;
        if (env_map_str(e, ENV_ROUTE, "target", target, sizeof target) == 1 && strcmp(target, "bot") != 0) {
            if (c->queue[0] == '\0') {
                s_label(c->queue, sizeof c->queue, target);
                c->queued_ms = e->ts;
            }
            if (has_agent && c->queued_ms != 0) {
                snprintf(k, sizeof k, "omnibus_queue_wait_seconds{queue=\"%s\"}", c->queue);
                s_observe(m, k, "Time a conversation waited in a queue before an agent had it.", true,
                          e->ts >= c->queued_ms ? (double)(e->ts - c->queued_ms) / 1e3 : 0);
                c->queued_ms = 0;
            }
        }
    }
    if (ev[0] != '\0') {
        if (strcmp(ev, "close") == 0 && c != NULL) {
            c->queue[0] = '\0';
            c->queued_ms = 0;
        }
        /* omni-bot handed the conversation to a queue: it waits from now. */
        if (strcmp(ev, "handoff") == 0 && c != NULL && c->queue[0] == '\0'
            && env_map_str(e, ENV_META, "queue", v, sizeof v) == 1) {
            s_label(c->queue, sizeof c->queue, v);
            c->queued_ms = e->ts;
        }
        /* An agent given later than the message (omni-route's assign event,
         * or omni-agent claim): the wait ends now. */
        if (strcmp(ev, "assign") == 0 && c != NULL && c->queued_ms != 0) {
            snprintf(k, sizeof k, "omnibus_queue_wait_seconds{queue=\"%s\"}", c->queue);
            s_observe(m, k, "Time a conversation waited in a queue before an agent had it.", true,
                      e->ts >= c->queued_ms ? (double)(e->ts - c->queued_ms) / 1e3 : 0);
            c->queued_ms = 0;
        }
        /* omni-send's own receipts (born there: one stamp); a provider's,
         * passing through, were counted where they came in. */
        if (strcmp(ev, "receipt") == 0 && strcmp(stage, "send") == 0 && nstamps == 1) {
            char status[64];
            s_label(status, sizeof status, env_map_str(e, ENV_META, "status", v, sizeof v) == 1 ? v : NULL);
            snprintf(k, sizeof k, "omnibus_send_receipts_total{channel=\"%s\",status=\"%s\"}", ch, status);
            s_count(m, k, "Delivery receipts from omni-send, by channel and status.", 1);
        }
    }
}

/* A dead letter: {stage, ts, reason, label?, raw}. */
static void s_dead(struct metrics *m, const void *p, size_t n)
{
    struct mp_reader r;
    struct mp_val v, key, val;
    char stage[64] = "unknown", reason[64] = "unknown", k[256];
    mp_reader_init(&r, p, n);
    if (mp_read(&r, &v) != 0 || v.type != MP_MAP) {
        m->malformed++;
        return;
    }
    for (uint32_t i = 0; i < v.n; i++) {
        if (mp_read(&r, &key) != 0 || key.type != MP_STR) {
            m->malformed++;
            return;
        }
        struct mp_reader at = r;
        if (mp_read(&at, &val) == 0 && val.type == MP_STR) {
            char tmp[128];
            snprintf(tmp, sizeof tmp, "%.*s", (int)(val.n < 127 ? val.n : 127), val.s);
            if (key.n == 5 && memcmp(key.s, "stage", 5) == 0) {
                s_label(stage, sizeof stage, tmp);
            } else if (key.n == 6 && memcmp(key.s, "reason", 6) == 0) {
                /* "field=text reason=..." -> the field names the kind of
                 * fault; a reason without a field ("not msgpack") is one. */
                char kind[64];
                if (strncmp(tmp, "field=", 6) == 0) {
                    snprintf(kind, sizeof kind, "%.*s", (int)strcspn(tmp + 6, " "), tmp + 6);
                } else {
                    snprintf(kind, sizeof kind, "%.63s", tmp);
                }
                s_label(reason, sizeof reason, kind);
            }
        }
        if (mp_skip(&r) != 0) {
            m->malformed++;
            return;
        }
    }
    snprintf(k, sizeof k, "omnibus_dead_total{stage=\"%s\",reason=\"%s\"}", stage, reason);
    s_count(m, k, "Malformed input rejected by a stage (dead letters), by stage and the field at fault.", 1);
}

/* Renders every series, grouped by metric family. */
static void s_render(struct metrics *m, struct buf *out)
{
    buf_printf(out, "# HELP omnibus_metrics_envelopes_total Envelopes omni-metrics has counted.\n"
                    "# TYPE omnibus_metrics_envelopes_total counter\n"
                    "omnibus_metrics_envelopes_total %llu\n"
                    "# HELP omnibus_metrics_malformed_total Messages on the taps that were not envelopes.\n"
                    "# TYPE omnibus_metrics_malformed_total counter\n"
                    "omnibus_metrics_malformed_total %llu\n"
                    "# HELP omnibus_metrics_series_dropped_total Observations lost because the series table was full.\n"
                    "# TYPE omnibus_metrics_series_dropped_total counter\n"
                    "omnibus_metrics_series_dropped_total %llu\n"
                    "# HELP omnibus_metrics_start_time_seconds When omni-metrics started.\n"
                    "# TYPE omnibus_metrics_start_time_seconds gauge\n"
                    "omnibus_metrics_start_time_seconds %.3f\n",
               (unsigned long long)m->envelopes, (unsigned long long)m->malformed,
               (unsigned long long)m->series_full, (double)m->started_ms / 1e3);
    /* Families: collect distinct names, print each with its series. */
    bool *done = calloc(MAX_SERIES, sizeof *done);
    if (done == NULL) {
        return;
    }
    for (size_t i = 0; i < MAX_SERIES; i++) {
        struct series *s = &m->series[i];
        if (s->key == NULL || done[i]) {
            continue;
        }
        size_t nl = strcspn(s->key, "{");
        const char *kind = s->hist ? "histogram" : (strstr(s->key, "_total") ? "counter" : "gauge");
        buf_printf(out, "# HELP %.*s %s\n# TYPE %.*s %s\n", (int)nl, s->key, s->help, (int)nl, s->key, kind);
        for (size_t j = i; j < MAX_SERIES; j++) {
            struct series *t = &m->series[j];
            if (t->key == NULL || done[j] || strncmp(t->key, s->key, nl) != 0 || t->key[nl] != '{') {
                continue;
            }
            done[j] = true;
            if (!t->hist) {
                buf_printf(out, "%s %.17g\n", t->key, t->value);
                continue;
            }
            const char *labels = t->key + nl + 1;   /* `a="b"}` */
            size_t ll = strlen(labels) - 1;
            const double *b = t->slow ? s_slow_bounds : s_bounds;
            uint64_t cum = 0;
            for (int q = 0; q < NBUCKETS; q++) {
                cum += t->buckets[q];
                buf_printf(out, "%.*s_bucket{%.*s,le=\"%g\"} %llu\n", (int)nl, t->key, (int)ll, labels, b[q],
                           (unsigned long long)cum);
            }
            buf_printf(out, "%.*s_bucket{%.*s,le=\"+Inf\"} %llu\n", (int)nl, t->key, (int)ll, labels,
                       (unsigned long long)t->count);
            buf_printf(out, "%.*s_sum{%.*s} %.17g\n", (int)nl, t->key, (int)ll, labels, t->sum);
            buf_printf(out, "%.*s_count{%.*s} %llu\n", (int)nl, t->key, (int)ll, labels,
                       (unsigned long long)t->count);
        }
    }
    free(done);
}

static enum MHD_Result s_http(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **con_cls)
{
    (void)version;
    (void)upload;
    (void)upload_size;
    (void)con_cls;
    struct metrics *m = cls;
    struct buf body = { 0 };
    unsigned status = MHD_HTTP_OK;
    const char *type = "text/plain; version=0.0.4; charset=utf-8";
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        status = MHD_HTTP_METHOD_NOT_ALLOWED;
        buf_puts(&body, "only GET\n");
    } else if (strcmp(url, "/metrics") == 0) {
        s_render(m, &body);
    } else if (strcmp(url, "/") == 0) {
        type = "text/plain; charset=utf-8";
        buf_puts(&body, "omni-metrics: see /metrics\n");
    } else {
        status = MHD_HTTP_NOT_FOUND;
        buf_puts(&body, "not found\n");
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(body.len, body.data ? body.data : (char *)"",
                                                             MHD_RESPMEM_MUST_COPY);
    buf_free(&body);
    if (r == NULL) {
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    enum MHD_Result rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

static int s_init(struct stage_ctx *ctx, void *confp, void **state)
{
    struct metrics_conf *conf = confp;
    struct metrics *m = calloc(1, sizeof *m);
    char err[300];
    int status = EXIT_SOFTWARE;
    if (m == NULL) {
        return EXIT_SOFTWARE;
    }
    *state = m;
    m->conf = conf;
    m->started_ms = stage_now_ms();
    m->series = calloc(MAX_SERIES, sizeof *m->series);
    m->convs = calloc(MAX_CONVS, sizeof *m->convs);
    m->env = env_new();
    if (m->series == NULL || m->convs == NULL || m->env == NULL) {
        goto fail;
    }
    struct ep_opts eo = { .hwm = 100000, .linger_ms = 0, .curve = stage_curve(ctx) };
    struct ep_spec spec;
    if (ep_parse(conf->taps, EP_SUB, &spec, err, sizeof err) != 0) {
        log_msg(LOG_ERROR, "--taps: %s", err);
        status = EXIT_USAGE;
        goto fail;
    }
    if (spec.mode == EP_STDIO) {
        log_msg(LOG_ERROR, "--taps: needs an endpoint, not '-'");
        status = EXIT_USAGE;
        goto fail;
    }
    if ((m->taps = ep_open(stage_zctx(ctx), &spec, EP_SUB, &eo, err, sizeof err)) == NULL) {
        log_msg(LOG_ERROR, "--taps: %s", err);
        status = EXIT_UNAVAILABLE;
        goto fail;
    }
    if (conf->dead_in != NULL && conf->dead_in[0] != '\0') {
        if (ep_parse(conf->dead_in, EP_IN, &spec, err, sizeof err) != 0 || spec.mode == EP_STDIO) {
            log_msg(LOG_ERROR, "--dead-in: %s", spec.mode == EP_STDIO ? "needs an endpoint" : err);
            status = EXIT_USAGE;
            goto fail;
        }
        if ((m->dead = ep_open(stage_zctx(ctx), &spec, EP_IN, &eo, err, sizeof err)) == NULL) {
            log_msg(LOG_ERROR, "--dead-in: %s", err);
            status = EXIT_UNAVAILABLE;
            goto fail;
        }
    }
    const char *colon = strrchr(conf->listen, ':');
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (colon == NULL || end == NULL || *end != '\0' || port < 1 || port > 65535) {
        log_msg(LOG_ERROR, "--listen: '%s' is not host:port", conf->listen);
        status = EXIT_USAGE;
        goto fail;
    }
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    char host[64];
    snprintf(host, sizeof host, "%.*s", (int)(colon - conf->listen), conf->listen);
    if (strcmp(host, "localhost") == 0) {
        snprintf(host, sizeof host, "127.0.0.1");
    }
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        log_msg(LOG_ERROR, "--listen: '%s' is not an IPv4 address", host);
        status = EXIT_USAGE;
        goto fail;
    }
    m->httpd = MHD_start_daemon(MHD_USE_ERROR_LOG, (uint16_t)port, NULL, NULL, s_http, m,
                                MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                                MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
                                MHD_OPTION_CONNECTION_LIMIT, (unsigned)64, MHD_OPTION_END);
    if (m->httpd == NULL) {
        log_msg(LOG_ERROR, "--listen %s: cannot listen (%s)", conf->listen, strerror(errno));
        status = EXIT_UNAVAILABLE;
        goto fail;
    }
    log_msg(LOG_INFO, "serving http://%s/metrics, taps on %s", conf->listen, ep_name(m->taps));
    return 0;
fail:
    return status;
}

static void s_fini(void **state)
{
    struct metrics *m = *state;
    if (m->httpd != NULL) {
        MHD_stop_daemon(m->httpd);
    }
    ep_destroy(&m->taps);
    ep_destroy(&m->dead);
    env_destroy(&m->env);
    if (m->series != NULL) {
        for (size_t i = 0; i < MAX_SERIES; i++) {
            free(m->series[i].key);
        }
    }
    free(m->series);
    free(m->convs);
    free(m);
    *state = NULL;
}

/* Takes what the sockets hold, up to a batch each. */
static void s_drain(struct metrics *m)
{
    const void *p;
    size_t n;
    struct env_err err;
    char why[300];
    for (int i = 0; i < 1000; i++) {
        enum ep_status st = ep_recv(m->taps, &p, &n);
        if (st != EP_MSG) {
            break;
        }
        if (env_decode(m->env, p, n, &err) != 0) {
            /* A dead letter published on a tap, or garbage. */
            m->malformed++;
            log_limited(&m->bad_limit, LOG_WARN, "not an envelope on --taps: %s",
                        env_err_str(&err, why, sizeof why));
            continue;
        }
        s_envelope(m, m->env);
    }
    for (int i = 0; m->dead != NULL && i < 1000; i++) {
        if (ep_recv(m->dead, &p, &n) != EP_MSG) {
            break;
        }
        s_dead(m, p, n);
    }
}

static int s_run(void *state, struct stage_ctx *ctx)
{
    struct metrics *m = state;
    while (!stage_stopping(ctx)) {
        zmq_pollitem_t items[2 + FD_SETSIZE / 64];
        int n = 0;
        items[n++] = (zmq_pollitem_t){ ep_socket(m->taps), 0, ZMQ_POLLIN, 0 };
        if (m->dead != NULL) {
            items[n++] = (zmq_pollitem_t){ ep_socket(m->dead), 0, ZMQ_POLLIN, 0 };
        }
        /* libmicrohttpd's sockets, without a thread of its own. */
        fd_set rs, ws, es;
        FD_ZERO(&rs);
        FD_ZERO(&ws);
        FD_ZERO(&es);
        MHD_socket max = 0;
        if (MHD_get_fdset(m->httpd, &rs, &ws, &es, &max) == MHD_YES) {
            for (int fd = 0; fd <= (int)max && n < (int)(sizeof items / sizeof items[0]); fd++) {
                short ev = (short)((FD_ISSET(fd, &rs) ? ZMQ_POLLIN : 0) | (FD_ISSET(fd, &ws) ? ZMQ_POLLOUT : 0));
                if (ev != 0) {
                    items[n++] = (zmq_pollitem_t){ NULL, fd, ev, 0 };
                }
            }
        }
        if (zmq_poll(items, n, 200) < 0 && zmq_errno() != EINTR) {
            log_msg(LOG_ERROR, "poll: %s", zmq_strerror(zmq_errno()));
            return EXIT_SOFTWARE;
        }
        s_drain(m);
        MHD_run(m->httpd);
    }
    return 0;
}

const struct stage metrics_stage = {
    .name = "metrics",
    .summary = "Counts what the stages' taps publish and serves it as Prometheus text on HTTP /metrics.",
    .options = s_opts,
    .conf_size = sizeof(struct metrics_conf),
    .flags = STAGE_SOURCE | STAGE_SINK,
    .init = s_init,
    .run = s_run,
    .fini = s_fini,
};
