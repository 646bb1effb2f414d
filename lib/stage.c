/* stage — the runner; see stage.h. */
#include "stage.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <msgpack.h>
#include <systemd/sd-daemon.h>
#include <zmq.h>

#include "buf.h"
#include "curve.h"
#include "endpoint.h"
#include "log.h"
#include "mp.h"

#define VERSION "0.1.0"
#define BATCH 512               /* messages handled per wake-up before polling again */
#define SEND_WAIT_MS 200        /* a blocked send re-checks signals this often */

/* Options every tool has. */
struct stage_conf {
    const char *in;             /* input endpoint */
    const char *out;            /* output endpoint */
    const char *tap;            /* PUB copy of the output */
    const char *dead;           /* where malformed input goes */
    const char *instance;       /* instance name in log lines */
    const char *log_level;      /* debug, info, warn, error */
    int64_t hwm;                /* socket high-water mark */
    int64_t linger_ms;          /* how long output may take at exit */
    int64_t drain_ms;           /* how long SIGTERM drains input */
    int64_t tick_ms;            /* how often tick() runs */
    bool sub;                   /* --in is a SUB of a tap */
    const char *curve_key;      /* own CurveZMQ key pair file */
    const char *curve_server;   /* the server's public key file, for connecting */
    const char *curve_peers;    /* admitted clients' public keys, for binding */
    bool check;                 /* --check */
    bool help;                  /* --help */
    bool version;               /* --version */
};

#define C(f) offsetof(struct stage_conf, f)
static const struct opt s_io_in[] = {
    { "in", OPT_STR, "-", C(in), "where envelopes come from: -, @uri (bind), >uri (connect)" },
    { NULL, 0, NULL, 0, NULL }
};
static const struct opt s_io_out[] = {
    { "out", OPT_STR, "-", C(out), "where envelopes go: -, @uri, >uri, or none (the end of the line)" },
    { "tap", OPT_STR, NULL, C(tap), "also publish a copy of the output here (PUB)" },
    { NULL, 0, NULL, 0, NULL }
};
static const struct opt s_io_sub[] = {
    { "sub", OPT_BOOL, "no", C(sub), "read --in as a subscriber of another tool's --tap" },
    { NULL, 0, NULL, 0, NULL }
};
static const struct opt s_common[] = {
    { "dead", OPT_STR, NULL, C(dead), "where malformed input goes: a file, or an endpoint" },
    { "instance", OPT_STR, NULL, C(instance), "instance name for log lines (systemd %i)" },
    { "log-level", OPT_STR, "info", C(log_level), "debug, info, warn or error" },
    { "hwm", OPT_INT, "10000", C(hwm), "messages queued per socket before backpressure" },
    { "linger", OPT_MS, "5s", C(linger_ms), "time to deliver queued output at exit" },
    { "drain", OPT_MS, "2s", C(drain_ms), "time SIGTERM spends finishing queued input" },
    { "tick", OPT_MS, "1s", C(tick_ms), "period of housekeeping and watchdog" },
    { "curve-key", OPT_STR, NULL, C(curve_key), "CurveZMQ key pair (omni-keygen): encrypt tcp:// endpoints" },
    { "curve-server", OPT_STR, NULL, C(curve_server), "public key file of the server that tcp:// outputs connect to" },
    { "curve-peers", OPT_STR, NULL, C(curve_peers), "public keys admitted to bound tcp:// endpoints (others refused)" },
    { "check", OPT_BOOL, "no", C(check), "check the configuration and exit" },
    { "help", OPT_BOOL, "no", C(help), "show this help and exit" },
    { "version", OPT_BOOL, "no", C(version), "show the version and exit" },
    { NULL, 0, NULL, 0, NULL }
};
#undef C

struct stage_ctx {
    const struct stage *st;     /* the tool */
    struct stage_conf conf;     /* common options */
    void *stage_conf;           /* the stage's own options */
    void *state;                /* what init() made */
    char prog[64];              /* "omni-route" */
    char **pos;                 /* positional arguments */
    int npos;                   /* how many */
    void *zctx;                 /* ZeroMQ context */
    struct ep *in;              /* input, or NULL for sources */
    struct ep *out;             /* output, or NULL for sinks */
    struct ep *tap;             /* PUB copy, or NULL */
    struct ep *dead_ep;         /* dead endpoint, or NULL */
    FILE *dead_file;            /* dead file, or NULL */
    struct env *env;            /* the envelope being handled */
    struct buf obuf;            /* encoded output */
    struct buf retry;           /* raw bytes of an envelope to retry */
    bool retrying;              /* retry holds an envelope */
    int64_t retry_wait;         /* current backoff, ms */
    uint64_t retry_at;          /* monotonic ms of the next attempt */
    bool stopping;              /* SIGTERM or SIGINT seen */
    uint64_t stop_deadline;     /* monotonic ms when draining gives up */
    bool out_closed;            /* stdout reader went away */
    bool out_none;              /* --out none: the end of the line */
    uint64_t next_tick;         /* monotonic ms of the next tick() */
    uint64_t last_watchdog;     /* monotonic ms of the last WATCHDOG=1 */
    struct curve *curve;        /* CurveZMQ, or NULL */
    struct stage_stats stats;   /* counters */
    struct log_limit bad_limit; /* rate limit of bad-input lines */
    struct log_limit out_limit; /* rate limit of output errors */
};

/* The self-pipe: the only state a signal handler may touch. */
static int s_sigpipe[2] = { -1, -1 };
static volatile sig_atomic_t s_term;

static void s_on_signal(int sig)
{
    int saved = errno;
    if (sig == SIGTERM || sig == SIGINT) {
        s_term = 1;
    }
    unsigned char c = (unsigned char)sig;
    ssize_t w = write(s_sigpipe[1], &c, 1);
    (void)w;
    errno = saved;
}

static int s_signals_init(void)
{
    if (pipe2(s_sigpipe, O_NONBLOCK | O_CLOEXEC) != 0) {
        return -1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigemptyset(&sa.sa_mask);
    /* No SA_RESTART: a blocked read or write returns EINTR so the loop
     * sees the signal. */
    sa.sa_flags = 0;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

uint64_t stage_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

uint64_t stage_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void s_begin_stop(struct stage_ctx *ctx)
{
    if (!ctx->stopping) {
        ctx->stopping = true;
        ctx->stop_deadline = stage_mono_ms() + (uint64_t)ctx->conf.drain_ms;
        sd_notify(0, "STOPPING=1");
        log_msg(s_term ? LOG_INFO : LOG_DEBUG, "stopping: draining for up to %lld ms",
                (long long)ctx->conf.drain_ms);
    }
}

/* Reads pending signals; returns true if SIGHUP came. */
static bool s_read_signals(struct stage_ctx *ctx)
{
    bool hup = false;
    unsigned char c[32];
    ssize_t r;
    while ((r = read(s_sigpipe[0], c, sizeof c)) > 0) {
        for (ssize_t i = 0; i < r; i++) {
            if (c[i] == SIGHUP) {
                hup = true;
            }
        }
    }
    if (s_term) {
        s_begin_stop(ctx);
    }
    return hup;
}

void stage_wake_in(struct stage_ctx *ctx, int64_t ms)
{
    uint64_t at = stage_mono_ms() + (uint64_t)(ms > 0 ? ms : 0);
    if (ctx->next_tick == 0 || at < ctx->next_tick) {
        ctx->next_tick = at;
    }
}

void stage_stop(struct stage_ctx *ctx)
{
    if (!ctx->stopping) {
        s_begin_stop(ctx);
    }
    ctx->stop_deadline = 0;
}

/* Tells systemd's watchdog the process is alive, at most every 500 ms:
 * from ticks, and from every loop that asks stage_stopping() (sources with
 * loops of their own, and sends waiting for a slow next stage). */
static void s_watchdog(struct stage_ctx *ctx)
{
    uint64_t now = stage_mono_ms();
    if (now - ctx->last_watchdog >= 500) {
        ctx->last_watchdog = now;
        sd_notify(0, "WATCHDOG=1");
    }
}

bool stage_stopping(struct stage_ctx *ctx)
{
    s_watchdog(ctx);
    if (ctx->st->reload != NULL) {
        if (s_read_signals(ctx)) {
            log_msg(LOG_INFO, "SIGHUP: reloading");
            ctx->st->reload(ctx->state, ctx);
        }
    } else {
        s_read_signals(ctx);
    }
    return ctx->stopping;
}

int stage_wait_fd(struct stage_ctx *ctx, int fd, int timeout_ms)
{
    if (stage_stopping(ctx)) {
        return -1;
    }
    struct pollfd p[2] = { { s_sigpipe[0], POLLIN, 0 }, { fd, POLLIN, 0 } };
    int rc = poll(p, 2, timeout_ms);
    if (stage_stopping(ctx)) {
        return -1;
    }
    if (rc > 0 && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
        return 1;
    }
    return 0;
}

char **stage_args(struct stage_ctx *ctx, int *n)
{
    *n = ctx->npos;
    return ctx->pos;
}

void *stage_zctx(struct stage_ctx *ctx)
{
    return ctx->zctx;
}

const struct curve *stage_curve(const struct stage_ctx *ctx)
{
    return ctx != NULL ? ctx->curve : NULL;
}

const char *stage_name(const struct stage_ctx *ctx)
{
    return ctx->st->name;
}

const struct stage_stats *stage_stats(const struct stage_ctx *ctx)
{
    return &ctx->stats;
}

/* Shows up to 24 bytes as hex, for a log line. */
static void s_hex(const void *p, size_t n, char *out, size_t outn)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *b = p;
    size_t k = 0;
    for (size_t i = 0; i < n && i < 24 && k + 3 < outn; i++) {
        out[k++] = hex[b[i] >> 4];
        out[k++] = hex[b[i] & 15];
    }
    out[k] = '\0';
}

void stage_reject(struct stage_ctx *ctx, const void *raw, size_t n, const char *label,
                  const char *reason)
{
    ctx->stats.bad++;
    if (label != NULL) {
        log_limited(&ctx->bad_limit, LOG_WARN, "rejected %s %s", label, reason);
    } else {
        char hex[64];
        s_hex(raw, n, hex, sizeof hex);
        log_limited(&ctx->bad_limit, LOG_WARN, "rejected input bytes=%s len=%zu reason=\"%s\"",
                    hex, n, reason);
    }
    if (ctx->dead_ep == NULL && ctx->dead_file == NULL) {
        return;
    }
    /* A dead letter: {stage, ts, reason, id, raw} as msgpack. */
    struct buf b = { 0 };
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, mp_buf_write);
    int rc = msgpack_pack_map(&pk, label ? 5 : 4);
    const char *stage = ctx->st->name;
    rc |= msgpack_pack_str_with_body(&pk, "stage", 5);
    rc |= msgpack_pack_str_with_body(&pk, stage, strlen(stage));
    rc |= msgpack_pack_str_with_body(&pk, "ts", 2);
    rc |= msgpack_pack_uint64(&pk, stage_now_ms());
    rc |= msgpack_pack_str_with_body(&pk, "reason", 6);
    rc |= msgpack_pack_str_with_body(&pk, reason, strlen(reason));
    if (label != NULL) {
        rc |= msgpack_pack_str_with_body(&pk, "label", 5);
        rc |= msgpack_pack_str_with_body(&pk, label, strlen(label));
    }
    rc |= msgpack_pack_str_with_body(&pk, "raw", 3);
    rc |= msgpack_pack_bin_with_body(&pk, raw, n);
    if (rc == 0 && ctx->dead_file != NULL) {
        if (fwrite(b.data, 1, b.len, ctx->dead_file) != b.len || fflush(ctx->dead_file) != 0) {
            log_limited(&ctx->out_limit, LOG_ERROR, "cannot write dead letter: %s", strerror(errno));
        }
    } else if (rc == 0) {
        if (ep_send(ctx->dead_ep, b.data, b.len, SEND_WAIT_MS) != 0) {
            log_limited(&ctx->out_limit, LOG_ERROR, "dead letter endpoint %s is not taking messages",
                        ep_name(ctx->dead_ep));
        }
    }
    buf_free(&b);
}

/* Sends the encoded bytes in ctx->obuf to out, waiting for room. */
static int s_send_out(struct stage_ctx *ctx)
{
    for (;;) {
        int rc = ep_send(ctx->out, ctx->obuf.data, ctx->obuf.len, SEND_WAIT_MS);
        if (rc == 0) {
            ctx->stats.out++;
            return 0;
        }
        if (rc == EP_ERROR) {
            if (errno == EPIPE) {
                /* The reader of stdout is gone: like a filter killed by
                 * SIGPIPE, stop, quietly. */
                ctx->out_closed = true;
                s_begin_stop(ctx);
                ctx->stop_deadline = 0;
            } else {
                log_limited(&ctx->out_limit, LOG_ERROR, "output %s failed: %s",
                            ep_name(ctx->out), strerror(errno));
            }
            ctx->stats.lost++;
            return -1;
        }
        /* Full: the next stage is slow or away. Wait, unless stopping has
         * used up its time. */
        if (stage_stopping(ctx) && stage_mono_ms() >= ctx->stop_deadline) {
            ctx->stats.lost++;
            return -1;
        }
    }
}

/* Stamps e and encodes it into ctx->obuf. Returns 0 or -1 (logged). */
static int s_stamp_encode(struct stage_ctx *ctx, struct env *e)
{
    if (env_trace_add(e, ctx->st->name, stage_now_ms()) != 0) {
        log_limited(&ctx->out_limit, LOG_ERROR, "cannot stamp trace id=%s: envelope too large",
                    env_get(e, ENV_ID) ? env_get(e, ENV_ID) : "-");
    }
    buf_reset(&ctx->obuf);
    if (env_encode(e, &ctx->obuf) != 0) {
        log_limited(&ctx->out_limit, LOG_ERROR, "cannot encode envelope id=%s: out of memory",
                    env_get(e, ENV_ID) ? env_get(e, ENV_ID) : "-");
        return -1;
    }
    return 0;
}

int stage_emit_to(struct stage_ctx *ctx, struct ep *out, struct ep *tap, struct env *e)
{
    if (s_stamp_encode(ctx, e) != 0) {
        return -1;
    }
    int rc = ep_send(out, ctx->obuf.data, ctx->obuf.len, 0);
    if (rc == EP_AGAIN) {
        return 1;
    }
    if (rc != 0) {
        log_limited(&ctx->out_limit, LOG_ERROR, "output %s failed: %s", ep_name(out), strerror(errno));
        if (errno == EPIPE) {
            stage_stop(ctx);
        }
        return -1;
    }
    if (tap != NULL) {
        ep_send(tap, ctx->obuf.data, ctx->obuf.len, 0);
    }
    ctx->stats.out++;
    return 0;
}

int stage_open_ep(struct stage_ctx *ctx, const char *option, const char *text, enum ep_role role,
                  struct ep **ep)
{
    if (ep != NULL) {
        *ep = NULL;
    }
    if (text == NULL || text[0] == '\0') {
        return 0;
    }
    struct ep_spec spec;
    char err[300];
    if (ep_parse(text, role, &spec, err, sizeof err) != 0) {
        log_msg(LOG_ERROR, "--%s: %s", option, err);
        return EXIT_USAGE;
    }
    if (ctx == NULL) {
        return 0;
    }
    struct ep_opts eo = { (int)ctx->conf.hwm, (int)ctx->conf.linger_ms, ctx->curve };
    *ep = ep_open(ctx->zctx, &spec, role, &eo, err, sizeof err);
    if (*ep == NULL) {
        log_msg(LOG_ERROR, "--%s: %s", option, err);
        return EXIT_UNAVAILABLE;
    }
    return 0;
}

int stage_emit(struct stage_ctx *ctx, struct env *e)
{
    if ((ctx->out == NULL && !ctx->out_none) || ctx->out_closed) {
        return -1;
    }
    if (s_stamp_encode(ctx, e) != 0) {
        ctx->stats.lost++;
        return -1;
    }
    if (ctx->out_none) {
        ctx->stats.out++;
    } else if (s_send_out(ctx) != 0) {
        return -1;
    }
    if (ctx->tap != NULL) {
        ep_send(ctx->tap, ctx->obuf.data, ctx->obuf.len, 0);
    }
    return 0;
}

/* One message from the input. Returns false when it must be retried. */
static bool s_process(struct stage_ctx *ctx, const void *p, size_t n)
{
    struct env_err err;
    char why[300];
    if (env_decode(ctx->env, p, n, &err) != 0 || env_check(ctx->env, &err) != 0) {
        const char *id = env_get(ctx->env, ENV_ID);
        char label[64];
        if (id != NULL) {
            snprintf(label, sizeof label, "id=%.40s", id);
        }
        stage_reject(ctx, p, n, id ? label : NULL, env_err_str(&err, why, sizeof why));
        return true;
    }
    enum verdict v = ctx->st->handle ? ctx->st->handle(ctx->state, ctx, ctx->env) : STAGE_PASS;
    switch (v) {
    case STAGE_PASS:
        if (ctx->out != NULL || ctx->out_none) {
            stage_emit(ctx, ctx->env);
        }
        break;
    case STAGE_DROP:
        ctx->stats.dropped++;
        break;
    case STAGE_HELD:
        ctx->stats.held++;
        break;
    case STAGE_RETRY:
        ctx->stats.retried++;
        if (!ctx->retrying) {
            buf_reset(&ctx->retry);
            if (buf_append(&ctx->retry, p, n) != 0) {
                log_msg(LOG_ERROR, "out of memory keeping an envelope to retry");
                ctx->stats.lost++;
                return true;
            }
            ctx->retrying = true;
            ctx->retry_wait = 50;
        } else {
            ctx->retry_wait = ctx->retry_wait * 2 > 5000 ? 5000 : ctx->retry_wait * 2;
        }
        ctx->retry_at = stage_mono_ms() + (uint64_t)ctx->retry_wait;
        return false;
    }
    return true;
}

/* Handles what the input has ready, up to a batch. Returns EP_EOF at the end
 * of stdin, EP_ERROR when the input failed, otherwise EP_AGAIN. */
static int s_drain_input(struct stage_ctx *ctx, int limit)
{
    for (int i = 0; i < limit; i++) {
        if (ctx->stopping && stage_mono_ms() >= ctx->stop_deadline) {
            return EP_AGAIN;
        }
        if (ctx->retrying) {
            if (stage_mono_ms() < ctx->retry_at) {
                return EP_AGAIN;
            }
            /* The handler may keep the bytes; process a copy. */
            struct buf raw = ctx->retry;
            ctx->retry = (struct buf){ 0 };
            ctx->retrying = false;
            bool done = s_process(ctx, raw.data, raw.len);
            if (!done) {
                buf_free(&ctx->retry);
                ctx->retry = raw;
                return EP_AGAIN;
            }
            buf_free(&raw);
            continue;
        }
        const void *p;
        size_t n;
        enum ep_status st = ep_recv(ctx->in, &p, &n);
        if (st == EP_MSG) {
            ctx->stats.in++;
            if (!s_process(ctx, p, n)) {
                return EP_AGAIN;
            }
            if (ctx->out_closed) {
                return EP_EOF;
            }
            continue;
        }
        if (st == EP_BAD) {
            ctx->stats.in++;
            stage_reject(ctx, p, n, NULL, ep_bad_reason(ctx->in));
            continue;
        }
        if (st == EP_ERROR) {
            log_msg(LOG_ERROR, "input %s failed: %s", ep_name(ctx->in), strerror(errno));
        }
        return st;
    }
    return EP_AGAIN;
}

static void s_flush_out(struct stage_ctx *ctx)
{
    if (ctx->out != NULL && ep_is_stdio(ctx->out) && !ctx->out_closed) {
        if (ep_flush(ctx->out) != 0) {
            if (errno == EPIPE) {
                ctx->out_closed = true;
                s_begin_stop(ctx);
            } else {
                log_limited(&ctx->out_limit, LOG_ERROR, "stdout: %s", strerror(errno));
            }
        }
    }
}

static void s_tick(struct stage_ctx *ctx)
{
    if (ctx->st->tick != NULL) {
        ctx->st->tick(ctx->state, ctx);
    }
    s_watchdog(ctx);
}

/* The loop of filters and sinks. */
static int s_run_filter(struct stage_ctx *ctx)
{
    zmq_pollitem_t items[2];
    memset(items, 0, sizeof items);
    items[0].fd = s_sigpipe[0];
    items[0].events = ZMQ_POLLIN;
    items[1].socket = ep_socket(ctx->in);
    items[1].fd = ep_fd(ctx->in);
    items[1].events = ZMQ_POLLIN;
    bool stdin_in = ep_is_stdio(ctx->in);
    /* init() may have asked for an earlier tick with stage_wake_in(). */
    uint64_t first = stage_mono_ms() + (uint64_t)ctx->conf.tick_ms;
    if (ctx->next_tick == 0 || ctx->next_tick > first) {
        ctx->next_tick = first;
    }
    int status = 0;

    while (!ctx->stopping) {
        uint64_t now = stage_mono_ms();
        long timeout = (long)(ctx->next_tick > now ? ctx->next_tick - now : 0);
        if (ctx->retrying) {
            long r = (long)(ctx->retry_at > now ? ctx->retry_at - now : 0);
            timeout = r < timeout ? r : timeout;
        }
        /* While an envelope waits for its retry, input waits too. */
        int nitems = ctx->retrying ? 1 : 2;
        int rc = zmq_poll(items, nitems, timeout);
        if (rc < 0 && zmq_errno() != EINTR) {
            log_msg(LOG_ERROR, "poll: %s", zmq_strerror(zmq_errno()));
            status = EXIT_SOFTWARE;
            break;
        }
        if (s_read_signals(ctx) && ctx->st->reload != NULL) {
            log_msg(LOG_INFO, "SIGHUP: reloading");
            ctx->st->reload(ctx->state, ctx);
        }
        if (ctx->stopping) {
            break;
        }
        bool eof = false;
        if (stdin_in && rc > 0 && (items[1].revents & (ZMQ_POLLIN | ZMQ_POLLERR))) {
            long r = ep_fill(ctx->in);
            if (r < 0 && errno != EINTR && errno != EAGAIN) {
                log_msg(LOG_ERROR, "stdin: %s", strerror(errno));
                status = EXIT_IOERR;
                break;
            }
        }
        if (ctx->retrying || rc > 0) {
            int st = s_drain_input(ctx, BATCH);
            if (st == EP_EOF) {
                eof = true;
            } else if (st == EP_ERROR) {
                status = EXIT_IOERR;
                break;
            } else if (!stdin_in && st == EP_AGAIN) {
                /* A zmq socket may hold more than one batch; poll says so. */
            }
        }
        s_flush_out(ctx);
        if (eof) {
            break;
        }
        now = stage_mono_ms();
        if (now >= ctx->next_tick) {
            /* Set first: tick() may ask to be woken sooner. */
            ctx->next_tick = now + (uint64_t)ctx->conf.tick_ms;
            s_tick(ctx);
        }
    }

    if (ctx->stopping && !ctx->out_closed && !stdin_in) {
        /* Finish what has already arrived, within the drain time. */
        while (stage_mono_ms() < ctx->stop_deadline) {
            int st = s_drain_input(ctx, BATCH);
            if (st != EP_AGAIN || ctx->retrying) {
                break;
            }
            zmq_pollitem_t it = items[1];
            if (zmq_poll(&it, 1, 0) <= 0) {
                break;
            }
        }
    }
    /* A last tick lets stages flush what they hold (open batches); it sees
     * stage_stopping() true, and gets the drain time to send it on. */
    if (ctx->st->tick != NULL && !ctx->out_closed) {
        ctx->stopping = true;
        ctx->stop_deadline = stage_mono_ms() + (uint64_t)ctx->conf.drain_ms;
        ctx->st->tick(ctx->state, ctx);
    }
    if (ctx->retrying) {
        log_msg(LOG_WARN, "stopping with one envelope not handled (it was waiting for a retry)");
        ctx->stats.lost++;
    }
    return status;
}

static void s_warn_env(const char *msg)
{
    log_msg(LOG_WARN, "%s", msg);
}

static void s_usage(const struct stage *st, const struct opt_set *sets, int nsets, FILE *fp)
{
    fprintf(fp, "usage: omni-%s [OPTIONS]%s%s\n%s\n\noptions (also as OMNI_NAME environment, e.g. --log-level as OMNI_LOG_LEVEL):\n",
            st->name, st->args ? " " : "", st->args ? st->args : "", st->summary);
    opt_help(sets, nsets, fp);
}

static int s_open_dead(struct stage_ctx *ctx, struct ep_opts *eo)
{
    const char *d = ctx->conf.dead;
    if (d == NULL || d[0] == '\0') {
        return 0;
    }
    char err[300];
    if (d[0] == '@' || d[0] == '>' || strstr(d, "://") != NULL) {
        struct ep_spec spec;
        if (ep_parse(d, EP_OUT, &spec, err, sizeof err) != 0) {
            log_msg(LOG_ERROR, "--dead: %s", err);
            return EXIT_USAGE;
        }
        ctx->dead_ep = ep_open(ctx->zctx, &spec, EP_OUT, eo, err, sizeof err);
        if (ctx->dead_ep == NULL) {
            log_msg(LOG_ERROR, "--dead: %s", err);
            return EXIT_UNAVAILABLE;
        }
        return 0;
    }
    if (strcmp(d, "-") == 0) {
        log_msg(LOG_ERROR, "--dead: '-' is not allowed (stdout carries the main line); name a file");
        return EXIT_USAGE;
    }
    ctx->dead_file = fopen(d, "ab");
    if (ctx->dead_file == NULL) {
        log_msg(LOG_ERROR, "--dead %s: %s", d, strerror(errno));
        return EXIT_CONFIG;
    }
    return 0;
}

static int s_open_endpoints(struct stage_ctx *ctx)
{
    const struct stage *st = ctx->st;
    struct ep_opts eo = { (int)ctx->conf.hwm, (int)ctx->conf.linger_ms, NULL };
    struct ep_spec spec;
    char err[300];
    if (ctx->conf.curve_key != NULL && ctx->conf.curve_key[0] != '\0') {
        ctx->curve = curve_start(ctx->zctx, ctx->conf.curve_key, ctx->conf.curve_server,
                                 ctx->conf.curve_peers, err, sizeof err);
        if (ctx->curve == NULL) {
            log_msg(LOG_ERROR, "--curve-key: %s", err);
            return EXIT_CONFIG;
        }
        eo.curve = ctx->curve;
    } else if ((ctx->conf.curve_peers != NULL && ctx->conf.curve_peers[0] != '\0')
               || (ctx->conf.curve_server != NULL && ctx->conf.curve_server[0] != '\0')) {
        log_msg(LOG_ERROR, "--curve-peers and --curve-server need --curve-key (this tool's own keys)");
        return EXIT_USAGE;
    }
    if (!(st->flags & STAGE_SOURCE)) {
        enum ep_role role = ctx->conf.sub ? EP_SUB : EP_IN;
        if (ep_parse(ctx->conf.in, role, &spec, err, sizeof err) != 0) {
            log_msg(LOG_ERROR, "--in: %s", err);
            return EXIT_USAGE;
        }
        if (ctx->conf.sub && spec.mode == EP_STDIO) {
            log_msg(LOG_ERROR, "--sub needs an endpoint in --in, not '-'");
            return EXIT_USAGE;
        }
        if ((ctx->in = ep_open(ctx->zctx, &spec, role, &eo, err, sizeof err)) == NULL) {
            log_msg(LOG_ERROR, "--in: %s", err);
            return EXIT_UNAVAILABLE;
        }
    }
    if (!(st->flags & STAGE_SINK) && strcmp(ctx->conf.out, "none") == 0) {
        ctx->out_none = true;
    }
    if (!(st->flags & STAGE_SINK) && !ctx->out_none) {
        if (ep_parse(ctx->conf.out, EP_OUT, &spec, err, sizeof err) != 0) {
            log_msg(LOG_ERROR, "--out: %s", err);
            return EXIT_USAGE;
        }
        if ((ctx->out = ep_open(ctx->zctx, &spec, EP_OUT, &eo, err, sizeof err)) == NULL) {
            log_msg(LOG_ERROR, "--out: %s", err);
            return EXIT_UNAVAILABLE;
        }
    }
    if (!(st->flags & STAGE_SINK) && ctx->conf.tap != NULL && ctx->conf.tap[0] != '\0') {
        if (ep_parse(ctx->conf.tap, EP_TAP, &spec, err, sizeof err) != 0) {
            log_msg(LOG_ERROR, "--tap: %s", err);
            return EXIT_USAGE;
        }
        if ((ctx->tap = ep_open(ctx->zctx, &spec, EP_TAP, &eo, err, sizeof err)) == NULL) {
            log_msg(LOG_ERROR, "--tap: %s", err);
            return EXIT_UNAVAILABLE;
        }
    }
    return s_open_dead(ctx, &eo);
}

/* --check: options parse, endpoints parse, the stage's own check passes. */
static int s_check(struct stage_ctx *ctx)
{
    const struct stage *st = ctx->st;
    struct ep_spec spec;
    char err[300];
    const char *names[] = { "in", "out", "tap" };
    const char *vals[] = { (st->flags & STAGE_SOURCE) ? NULL : ctx->conf.in,
                           (st->flags & STAGE_SINK) || strcmp(ctx->conf.out, "none") == 0 ? NULL : ctx->conf.out,
                           (st->flags & STAGE_SINK) ? NULL : ctx->conf.tap };
    const enum ep_role roles[] = { ctx->conf.sub ? EP_SUB : EP_IN, EP_OUT, EP_TAP };
    for (int i = 0; i < 3; i++) {
        if (vals[i] != NULL && ep_parse(vals[i], roles[i], &spec, err, sizeof err) != 0) {
            log_msg(LOG_ERROR, "--%s: %s", names[i], err);
            return EXIT_CONFIG;
        }
    }
    bool has_key = ctx->conf.curve_key != NULL && ctx->conf.curve_key[0] != '\0';
    if (!has_key && ((ctx->conf.curve_peers != NULL && ctx->conf.curve_peers[0] != '\0')
                     || (ctx->conf.curve_server != NULL && ctx->conf.curve_server[0] != '\0'))) {
        log_msg(LOG_ERROR, "--curve-peers and --curve-server need --curve-key (this tool's own keys)");
        return EXIT_USAGE;
    }
    if (has_key) {
        /* The keys are read as serving would read them; no socket is opened. */
        void *z = zmq_ctx_new();
        snprintf(err, sizeof err, "out of memory");
        struct curve *cv = z ? curve_start(z, ctx->conf.curve_key, ctx->conf.curve_server,
                                           ctx->conf.curve_peers, err, sizeof err) : NULL;
        bool ok = cv != NULL;
        curve_stop(&cv);
        if (z != NULL) {
            zmq_ctx_term(z);
        }
        if (!ok) {
            log_msg(LOG_ERROR, "--curve-key: %s", err);
            return EXIT_CONFIG;
        }
    }
    if (st->check != NULL) {
        int rc = st->check(ctx, ctx->stage_conf);
        if (rc != 0) {
            return rc;
        }
    }
    printf("%s: configuration ok\n", ctx->prog);
    return 0;
}

static void s_close(struct stage_ctx *ctx)
{
    if (ctx->st->fini != NULL && ctx->state != NULL) {
        ctx->st->fini(&ctx->state);
    }
    if (ctx->out != NULL && !ctx->out_closed) {
        s_flush_out(ctx);
    }
    ep_destroy(&ctx->in);
    ep_destroy(&ctx->out);
    ep_destroy(&ctx->tap);
    ep_destroy(&ctx->dead_ep);
    if (ctx->dead_file != NULL) {
        fclose(ctx->dead_file);
        ctx->dead_file = NULL;
    }
    curve_stop(&ctx->curve);
    if (ctx->zctx != NULL) {
        zmq_ctx_term(ctx->zctx);
        ctx->zctx = NULL;
    }
    env_destroy(&ctx->env);
    buf_free(&ctx->obuf);
    buf_free(&ctx->retry);
}

int stage_main(const struct stage *st, int argc, char **argv)
{
    assert(st->name != NULL && st->summary != NULL);
    assert((st->flags & STAGE_SOURCE) ? st->run != NULL : 1);
    struct stage_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.st = st;
    snprintf(ctx.prog, sizeof ctx.prog, "omni-%s", st->name);
    log_init(ctx.prog, NULL);
    ctx.stage_conf = calloc(1, st->conf_size ? st->conf_size : 1);
    if (ctx.stage_conf == NULL) {
        log_msg(LOG_ERROR, "out of memory");
        return EXIT_SOFTWARE;
    }

    struct opt_set sets[6];
    int nsets = 0;
    if (st->options != NULL) {
        sets[nsets++] = (struct opt_set){ st->options, ctx.stage_conf };
    }
    if (!(st->flags & STAGE_SOURCE)) {
        sets[nsets++] = (struct opt_set){ s_io_in, &ctx.conf };
    }
    if (!(st->flags & STAGE_SINK)) {
        sets[nsets++] = (struct opt_set){ s_io_out, &ctx.conf };
    }
    if (st->flags & STAGE_SUB) {
        sets[nsets++] = (struct opt_set){ s_io_sub, &ctx.conf };
    }
    sets[nsets++] = (struct opt_set){ s_common, &ctx.conf };

    struct opt_result res;
    int status = 0;
    if (opt_parse(sets, nsets, argc, argv, s_warn_env, &res) != 0) {
        log_msg(LOG_ERROR, "%s (try --help)", res.err);
        status = res.status;
        goto done;
    }
    ctx.pos = res.pos;
    ctx.npos = res.npos;
    if (ctx.conf.help) {
        s_usage(st, sets, nsets, stdout);
        goto done;
    }
    if (ctx.conf.version) {
        printf("%s %s\n", ctx.prog, VERSION);
        goto done;
    }
    log_init(ctx.prog, ctx.conf.instance);
    int level = log_level_parse(ctx.conf.log_level);
    if (level < 0) {
        log_msg(LOG_ERROR, "--log-level: '%s' is not debug, info, warn or error", ctx.conf.log_level);
        status = EXIT_USAGE;
        goto done;
    }
    log_set_level((enum log_level)level);
    if (ctx.npos > 0 && !(st->flags & STAGE_ARGS)) {
        log_msg(LOG_ERROR, "unexpected argument '%s' (try --help)", ctx.pos[0]);
        status = EXIT_USAGE;
        goto done;
    }
    /* Below ~100, libzmq 4.3 drops what a closing ipc peer still had
     * queued for us, linger or not (zeromq/libzmq#4660): refuse it. */
    if (ctx.conf.hwm < 100 || ctx.conf.hwm > 10000000 || ctx.conf.tick_ms < 10
        || ctx.conf.linger_ms > 3600000 || ctx.conf.drain_ms > 3600000) {
        log_msg(LOG_ERROR, "--hwm must be 100..10M, --tick at least 10ms, --linger and --drain at most 1h");
        status = EXIT_USAGE;
        goto done;
    }
    if (ctx.conf.check) {
        status = s_check(&ctx);
        goto done;
    }
    if (s_signals_init() != 0) {
        log_msg(LOG_ERROR, "cannot set up signals: %s", strerror(errno));
        status = EXIT_SOFTWARE;
        goto done;
    }
    ctx.env = env_new();
    ctx.zctx = zmq_ctx_new();
    if (ctx.env == NULL || ctx.zctx == NULL) {
        log_msg(LOG_ERROR, "out of memory");
        status = EXIT_SOFTWARE;
        goto done;
    }
    status = s_open_endpoints(&ctx);
    if (status != 0) {
        goto done;
    }
    if (st->init != NULL) {
        status = st->init(&ctx, ctx.stage_conf, &ctx.state);
        if (status != 0) {
            goto done;
        }
    }
    sd_notify(0, "READY=1");
    log_msg(LOG_DEBUG, "ready");
    if (st->flags & STAGE_SOURCE) {
        status = st->run(ctx.state, &ctx);
    } else {
        status = s_run_filter(&ctx);
    }
    log_msg(ctx.stats.lost ? LOG_WARN : LOG_DEBUG,
            "done in=%llu out=%llu bad=%llu dropped=%llu held=%llu retried=%llu lost=%llu",
            (unsigned long long)ctx.stats.in, (unsigned long long)ctx.stats.out,
            (unsigned long long)ctx.stats.bad, (unsigned long long)ctx.stats.dropped,
            (unsigned long long)ctx.stats.held, (unsigned long long)ctx.stats.retried, (unsigned long long)ctx.stats.lost);
done:
    s_close(&ctx);
    free(ctx.stage_conf);
    free(res.pos);
    return status;
}
