/* webhook — omni-ingest-webhook's server; see webhook.h.
 *
 * One thread. libmicrohttpd runs in external polling mode (its epoll fd is
 * one of the fds the loop polls, with the spool's --acks socket and
 * --replies); a request whose body is complete is checked (signature), parsed
 * and put in the spool's open transaction, and its connection suspended;
 * after each round of MHD_run the transaction commits once for all of them
 * and they are resumed with 200 (or 503 when the commit failed). So a 2xx
 * always follows a durable commit, and a burst costs one fsync.
 *
 * Output: the runner's stage_emit waits while the next stage is full or
 * away, which would stop an HTTP server from answering (503 when the spool
 * is full is how a channel learns to retry). So this stage opens --out and
 * --tap itself (flags SOURCE | SINK: the runner opens neither) and hands
 * the spool a sender that never waits; what it cannot send stays in the
 * spool, due. */
#include "webhook.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>
#include <systemd/sd-daemon.h>
#include <zmq.h>

#include "endpoint.h"
#include "log.h"
#include "spool.h"

#define LOOP_MAX_MS 1000        /* longest poll; also the watchdog period */
#define STOP_MS 1000            /* time given at exit to answer what is committed */
#define REPLIES_PER_ROUND 256   /* replies read per loop round */

enum route { R_WHATSAPP, R_MESSENGER, R_TWILIO, R_TELEGRAM, R_GENERIC, R_CHAT, R_STREAM, R_N };
static const char *const s_paths[R_N] = {
    "/whatsapp", "/messenger", "/twilio", "/telegram", "/generic", "/chat", "/chat/stream"
};

/* Why a request was refused, counted. */
enum reject { RJ_SIGNATURE, RJ_BODY, RJ_TOO_LARGE, RJ_NOT_FOUND, RJ_METHOD, RJ_FULL, RJ_SPOOL,
              RJ_VERIFY, RJ_IDENTITY, RJ_N };
static const char *const s_reject_names[RJ_N] = {
    "signature", "malformed", "too_large", "not_found", "method", "spool_full", "spool_error",
    "verification", "identity"
};

enum req_state { REQ_READING, REQ_WAITING, REQ_DONE };

/* One POST being served. */
struct req {
    enum route route;               /* which endpoint */
    struct MHD_Connection *conn;    /* its connection */
    struct buf body;                /* the body so far */
    bool too_large;                 /* the body passed --max-body */
    enum req_state state;           /* reading, waiting for the commit, answered */
    unsigned status;                /* HTTP status to answer */
    struct buf answer;              /* the answer's body */
    const char *ctype;              /* its Content-Type */
    struct req *next;               /* next waiting for the commit */
};

struct webhook {
    struct webhook_conf *conf;      /* options */
    struct stage_ctx *ctx;          /* the runner */
    char *secret[WEBHOOK_NSECRETS]; /* the secrets in use (owned), or NULL */
    struct spool *spool;            /* the durable queue */
    struct MHD_Daemon *mhd;         /* the HTTP server */
    int epoll_fd;                   /* its fd, for our poll */
    struct ep *out;                 /* --out */
    struct ep *tap;                 /* --tap, or NULL */
    struct ep *replies;             /* --replies, or NULL */
    struct ulid_gen ids;            /* envelope ids */
    struct webhook_batch batch;     /* the envelopes of the request at hand */
    const char *cur_path;           /* its path, for dead letters */
    struct env *env;                /* a reply being read */
    struct webhook_chat *chat;      /* replies kept for the streams, or NULL */
    struct req *waiting;            /* requests waiting for the commit */
    bool resumed;                   /* connections were resumed this round */
    uint64_t next_keepalive;        /* monotonic ms of the next stream keepalive */
    uint64_t rejects[RJ_N];         /* refused requests by reason */
    uint64_t accepted;              /* envelopes committed */
    uint64_t round_new;             /* new envelopes in the open transaction */
    uint64_t duplicates;            /* deliveries of a channel id already spooled */
    struct log_limit reject_limit;  /* rate limit of refusals */
    struct log_limit out_limit;     /* rate limit of output errors */
    struct log_limit http_limit;    /* rate limit of libmicrohttpd's messages */
};

static bool s_enabled(const struct webhook *wh, enum route r)
{
    switch (r) {
    case R_WHATSAPP: return wh->secret[WEBHOOK_WA_APP] != NULL;
    case R_MESSENGER: return wh->secret[WEBHOOK_MS_APP] != NULL;
    case R_TWILIO: return wh->secret[WEBHOOK_TWILIO] != NULL;
    case R_TELEGRAM: return wh->secret[WEBHOOK_TELEGRAM] != NULL;
    case R_GENERIC: return wh->secret[WEBHOOK_GENERIC] != NULL;
    case R_CHAT:
    case R_STREAM: return wh->conf->webchat;
    default: return false;
    }
}

/* --- answers ---------------------------------------------------------------- */

static void s_cors(const struct webhook *wh, struct MHD_Response *resp)
{
    if (wh->conf->webchat_origin != NULL) {
        MHD_add_response_header(resp, "Access-Control-Allow-Origin", wh->conf->webchat_origin);
        MHD_add_response_header(resp, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
        MHD_add_response_header(resp, "Access-Control-Allow-Headers", "Content-Type, Last-Event-ID");
    }
}

static enum MHD_Result s_respond(struct webhook *wh, struct MHD_Connection *conn, enum route route,
                                 unsigned status, const char *ctype, const char *body, size_t n)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(n, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (resp == NULL) {
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (status == MHD_HTTP_SERVICE_UNAVAILABLE) {
        char ra[32];
        snprintf(ra, sizeof ra, "%lld", (long long)(wh->conf->spool.resend_after_ms + 999) / 1000);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, ra);
    }
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, route == R_STREAM ? "GET"
                                : route == R_WHATSAPP || route == R_MESSENGER ? "GET, POST" : "POST");
    }
    if (route == R_CHAT || route == R_STREAM) {
        s_cors(wh, resp);
    }
    enum MHD_Result ret = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* Counts and logs a refusal (rate limited). what is a path, maybe the
 * client's: shown printable and short. */
static void s_count(struct webhook *wh, const char *what, enum reject why, unsigned status,
                    const char *detail)
{
    char path[81];
    size_t i = 0;
    for (; what[i] != '\0' && i + 1 < sizeof path; i++) {
        unsigned char c = (unsigned char)what[i];
        path[i] = c >= 0x20 && c < 0x7f && c != '"' ? (char)c : '?';
    }
    path[i] = '\0';
    wh->rejects[why]++;
    log_limited(&wh->reject_limit, LOG_WARN, "rejected %s status=%u reason=\"%s\" %s=%llu", path,
                status, detail, s_reject_names[why], (unsigned long long)wh->rejects[why]);
}

/* Answers an error at once (before the body, or instead of it). */
static enum MHD_Result s_refuse(struct webhook *wh, struct MHD_Connection *conn, const char *what,
                                enum route route, enum reject why, unsigned status, const char *detail)
{
    s_count(wh, what, why, status, detail);
    char body[400];
    int n = snprintf(body, sizeof body, "%s\n", detail);
    return s_respond(wh, conn, route, status, "text/plain; charset=utf-8", body,
                     (size_t)n < sizeof body ? (size_t)n : sizeof body - 1);
}

/* Sets a request's answer (it goes out when the handler next runs). */
static void s_done(struct req *r, unsigned status, const char *ctype, const char *body)
{
    r->state = REQ_DONE;
    r->status = status;
    r->ctype = ctype;
    buf_reset(&r->answer);
    buf_puts(&r->answer, body);
}

static void s_fail(struct webhook *wh, struct req *r, enum reject why, unsigned status, const char *detail)
{
    if (why != RJ_BODY) {
        s_count(wh, s_paths[r->route], why, status, detail);
    } else {
        wh->rejects[why]++;
    }
    char body[400];
    snprintf(body, sizeof body, "%s\n", detail);
    s_done(r, status, "text/plain; charset=utf-8", body);
}

/* --- requests --------------------------------------------------------------- */

/* A parser's refusal of one item: a dead letter. */
static void s_item_reject(void *arg, const char *raw, size_t n, const char *reason)
{
    struct webhook *wh = arg;
    char label[64];
    snprintf(label, sizeof label, "path=%s item", wh->cur_path);
    stage_reject(wh->ctx, raw, n, label, reason);
}

/* Answers every request waiting for the commit with why (503). */
static void s_fail_waiting(struct webhook *wh, const char *why)
{
    wh->round_new = 0;
    for (struct req *r = wh->waiting; r != NULL; r = r->next) {
        s_fail(wh, r, RJ_SPOOL, MHD_HTTP_SERVICE_UNAVAILABLE, why);
        MHD_resume_connection(r->conn);
    }
    wh->waiting = NULL;
    wh->resumed = true;
}

static const char *s_header(struct MHD_Connection *conn, const char *name)
{
    return MHD_lookup_connection_value(conn, MHD_HEADER_KIND, name);
}

/* Checks the request's signature; returns NULL when good, else why not. */
static const char *s_verify_sig(struct webhook *wh, struct req *r, const struct webhook_twilio_form *f)
{
    const char *h;
    switch (r->route) {
    case R_WHATSAPP:
    case R_MESSENGER:
    case R_GENERIC: {
        const char *name = r->route == R_GENERIC ? "X-Omnibus-Signature" : "X-Hub-Signature-256";
        const char *secret = wh->secret[r->route == R_WHATSAPP ? WEBHOOK_WA_APP
                                        : r->route == R_MESSENGER ? WEBHOOK_MS_APP : WEBHOOK_GENERIC];
        h = s_header(r->conn, name);
        if (h == NULL) {
            return r->route == R_GENERIC ? "missing X-Omnibus-Signature" : "missing X-Hub-Signature-256";
        }
        return sig_check_sha256_header(secret, r->body.data, r->body.len, h) ? NULL : "bad signature";
    }
    case R_TWILIO:
        h = s_header(r->conn, "X-Twilio-Signature");
        if (h == NULL) {
            return "missing X-Twilio-Signature";
        }
        return sig_check_twilio(wh->secret[WEBHOOK_TWILIO], wh->conf->twilio_url, f->p, f->n, h)
            ? NULL : "bad signature";
    case R_TELEGRAM:
        h = s_header(r->conn, "X-Telegram-Bot-Api-Secret-Token");
        if (h == NULL) {
            return "missing X-Telegram-Bot-Api-Secret-Token";
        }
        return sig_equal_str(h, wh->secret[WEBHOOK_TELEGRAM]) ? NULL : "bad secret token";
    default:
        return NULL;
    }
}

/* Spools the batch's envelopes in the open transaction and suspends the
 * request until the round's commit. */
static void s_spool(struct webhook *wh, struct req *r)
{
    struct webhook_batch *b = &wh->batch;
    if (spool_full(wh->spool)) {
        s_fail(wh, r, RJ_FULL, MHD_HTTP_SERVICE_UNAVAILABLE, "spool full, try again later");
        return;
    }
    struct buf *a = &r->answer;
    buf_reset(a);
    buf_puts(a, r->route == R_CHAT ? "{\"id\":" : "{\"ids\":[");
    for (size_t i = 0; i < b->n; i++) {
        int rc = spool_put(wh->spool, b->env[i]);
        if (rc < 0) {
            spool_rollback(wh->spool);
            s_fail_waiting(wh, "spool error, try again later");
            s_fail(wh, r, RJ_SPOOL, MHD_HTTP_SERVICE_UNAVAILABLE, "spool error, try again later");
            return;
        }
        wh->duplicates += (uint64_t)rc;
        wh->round_new += rc == 0;
        const char *id = env_get(b->env[i], ENV_ID);
        if (r->route != R_CHAT || i + 1 == b->n) {
            if (r->route != R_CHAT && i > 0) {
                buf_putc(a, ',');
            }
            buf_json_str(a, id, strlen(id));
        }
    }
    buf_puts(a, r->route == R_CHAT ? "}\n" : "]}\n");
    r->state = REQ_WAITING;
    r->next = wh->waiting;
    wh->waiting = r;
    MHD_suspend_connection(r->conn);
}

/* A whole request is in: check, parse, spool. */
static void s_process(struct webhook *wh, struct req *r)
{
    if (r->too_large) {
        s_fail(wh, r, RJ_TOO_LARGE, MHD_HTTP_CONTENT_TOO_LARGE, "body larger than --max-body");
        return;
    }
    struct webhook_batch *b = &wh->batch;
    webhook_batch_clear(b);
    b->now = stage_now_ms();
    wh->cur_path = s_paths[r->route];
    struct webhook_twilio_form form = { 0 };
    const char *bad = NULL;
    int rc = 0;
    const char *body = r->body.data ? r->body.data : "";
    if (r->route == R_TWILIO && webhook_twilio_form(body, r->body.len, &form) != 0) {
        rc = -1;
        snprintf(b->reason, sizeof b->reason, "bad form encoding");
    } else if ((bad = s_verify_sig(wh, r, &form)) != NULL) {
        s_fail(wh, r, RJ_SIGNATURE, MHD_HTTP_UNAUTHORIZED, bad);
        webhook_twilio_form_free(&form);
        return;
    }
    if (rc == 0) {
        switch (r->route) {
        case R_WHATSAPP: rc = webhook_meta_whatsapp(b, body, r->body.len); break;
        case R_MESSENGER: rc = webhook_meta_messenger(b, body, r->body.len); break;
        case R_TWILIO: rc = webhook_twilio_parse(b, &form); break;
        case R_TELEGRAM: rc = webhook_parse_telegram(b, body, r->body.len); break;
        case R_GENERIC: rc = webhook_parse_generic(b, body, r->body.len); break;
        case R_CHAT: rc = webhook_parse_chat(b, body, r->body.len, wh->secret[WEBHOOK_WEBCHAT]); break;
        default: rc = -1; break;
        }
    }
    webhook_twilio_form_free(&form);
    if (rc == -2) {
        s_fail(wh, r, RJ_IDENTITY, MHD_HTTP_UNAUTHORIZED, b->reason);
        return;
    }
    if (rc != 0) {
        char label[64], reason[300];
        snprintf(label, sizeof label, "path=%s", s_paths[r->route]);
        snprintf(reason, sizeof reason, "reason=\"%s\"", b->reason);
        if (r->route != R_CHAT && r->route != R_TWILIO) {
            /* A signed body the provider sent: a dead letter. (Web chat is
             * anyone's, and a Twilio form that does not decode was not
             * checked: counted and logged only.) */
            stage_reject(wh->ctx, body, r->body.len, label, reason);
        } else {
            s_count(wh, s_paths[r->route], RJ_BODY, MHD_HTTP_BAD_REQUEST, b->reason);
            wh->rejects[RJ_BODY]--;     /* s_fail counts it */
        }
        s_fail(wh, r, RJ_BODY, MHD_HTTP_BAD_REQUEST, b->reason);
        return;
    }
    if (b->n == 0) {
        s_done(r, MHD_HTTP_OK, "text/plain; charset=utf-8", "ok\n");
        return;
    }
    s_spool(wh, r);
}

/* After a round of MHD_run: commits what the round put, answers it. */
static void s_commit(struct webhook *wh)
{
    if (wh->waiting == NULL) {
        return;
    }
    if (spool_commit(wh->spool) != 0) {
        s_fail_waiting(wh, "spool error, try again later");
        return;
    }
    wh->accepted += wh->round_new;
    wh->round_new = 0;
    for (struct req *r = wh->waiting; r != NULL; r = r->next) {
        r->state = REQ_DONE;
        r->status = MHD_HTTP_OK;
        if (r->route == R_TWILIO) {
            buf_reset(&r->answer);
            buf_puts(&r->answer, "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>");
            r->ctype = "text/xml";
        } else if (r->route == R_GENERIC || r->route == R_CHAT) {
            r->ctype = "application/json";
        } else {
            buf_reset(&r->answer);
            buf_puts(&r->answer, "ok\n");
            r->ctype = "text/plain; charset=utf-8";
        }
        MHD_resume_connection(r->conn);
    }
    wh->waiting = NULL;
    wh->resumed = true;
}

/* GET /whatsapp, GET /messenger: Meta's verification handshake. */
static enum MHD_Result s_handshake(struct webhook *wh, struct MHD_Connection *conn, enum route route)
{
    const char *mode = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "hub.mode");
    const char *token = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "hub.verify_token");
    const char *challenge = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "hub.challenge");
    const char *want = wh->secret[route == R_WHATSAPP ? WEBHOOK_WA_VERIFY : WEBHOOK_MS_VERIFY];
    if (want == NULL || mode == NULL || token == NULL || challenge == NULL
        || strcmp(mode, "subscribe") != 0 || !sig_equal_str(token, want)) {
        return s_refuse(wh, conn, s_paths[route], route, RJ_VERIFY, MHD_HTTP_FORBIDDEN,
                        "verification failed");
    }
    return s_respond(wh, conn, route, MHD_HTTP_OK, "text/plain", challenge, strlen(challenge));
}

/* GET /chat/stream?session=S: the session's replies as Server-Sent Events,
 * from after Last-Event-ID (or ?last_event_id=) when given. */
static enum MHD_Result s_stream_open(struct webhook *wh, struct MHD_Connection *conn)
{
    const char *session = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "session");
    if (session == NULL || !webhook_parse_session(session)) {
        return s_refuse(wh, conn, s_paths[R_STREAM], R_STREAM, RJ_BODY, MHD_HTTP_BAD_REQUEST,
                        "session must be 1 to 128 of A-Z a-z 0-9 . _ -");
    }
    const char *last = s_header(conn, "Last-Event-ID");
    last = last ? last : MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "last_event_id");
    return webhook_chat_open(wh->chat, conn, session, last ? strtoull(last, NULL, 10) : 0) ? MHD_YES : MHD_NO;
}

/* Reads the replies that came in; their streams wake up. */
static void s_read_replies(struct webhook *wh)
{
    for (int i = 0; wh->replies != NULL && i < REPLIES_PER_ROUND; i++) {
        const void *p;
        size_t n;
        enum ep_status st = ep_recv(wh->replies, &p, &n);
        if (st != EP_MSG) {
            if (st == EP_BAD) {
                stage_reject(wh->ctx, p, n, "replies", "reason=\"not msgpack\"");
                continue;
            }
            break;
        }
        struct env_err err;
        char why[300];
        if (env_decode(wh->env, p, n, &err) != 0) {
            stage_reject(wh->ctx, p, n, "replies", env_err_str(&err, why, sizeof why));
            continue;
        }
        int rc = webhook_chat_add(wh->chat, wh->env);
        if (rc > 0) {
            wh->resumed = true;
        } else if (rc < 0) {
            log_limited(&wh->out_limit, LOG_ERROR, "out of memory keeping a web chat reply");
        }
    }
}

/* --- libmicrohttpd callbacks -------------------------------------------------------- */

static enum MHD_Result s_access(void *cls, struct MHD_Connection *conn, const char *url,
                                const char *method, const char *version, const char *upload,
                                size_t *upload_size, void **con_cls)
{
    (void)version;
    struct webhook *wh = cls;
    struct req *r = *con_cls;
    if (r == NULL) {
        int route = -1;
        for (int i = 0; i < R_N; i++) {
            if (strcmp(url, s_paths[i]) == 0) {
                route = i;
            }
        }
        if (route < 0 || !s_enabled(wh, (enum route)route)) {
            return s_refuse(wh, conn, url, R_N, RJ_NOT_FOUND, MHD_HTTP_NOT_FOUND, "not found");
        }
        bool get = strcmp(method, "GET") == 0;
        if (strcmp(method, "OPTIONS") == 0 && (route == R_CHAT || route == R_STREAM)) {
            return s_respond(wh, conn, (enum route)route, MHD_HTTP_NO_CONTENT, "text/plain", "", 0);
        }
        if (route == R_STREAM) {
            return get ? s_stream_open(wh, conn)
                       : s_refuse(wh, conn, url, R_STREAM, RJ_METHOD, MHD_HTTP_METHOD_NOT_ALLOWED,
                                  "method not allowed");
        }
        if (get && (route == R_WHATSAPP || route == R_MESSENGER)) {
            return s_handshake(wh, conn, (enum route)route);
        }
        if (strcmp(method, "POST") != 0) {
            return s_refuse(wh, conn, url, (enum route)route, RJ_METHOD, MHD_HTTP_METHOD_NOT_ALLOWED,
                            "method not allowed");
        }
        const char *cl = s_header(conn, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl != NULL && strtoull(cl, NULL, 10) > (unsigned long long)wh->conf->max_body) {
            return s_refuse(wh, conn, url, (enum route)route, RJ_TOO_LARGE, MHD_HTTP_CONTENT_TOO_LARGE,
                            "body larger than --max-body");
        }
        if ((r = calloc(1, sizeof *r)) == NULL) {
            return MHD_NO;
        }
        r->route = (enum route)route;
        r->conn = conn;
        *con_cls = r;
        return MHD_YES;
    }
    if (*upload_size > 0) {
        if (!r->too_large && r->body.len + *upload_size > (size_t)wh->conf->max_body) {
            r->too_large = true;
            buf_free(&r->body);
        }
        if (!r->too_large && buf_append(&r->body, upload, *upload_size) != 0) {
            r->too_large = true;    /* out of memory: refused like an oversized body */
            buf_free(&r->body);
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (r->state == REQ_READING) {
        s_process(wh, r);
    }
    if (r->state != REQ_DONE) {
        return MHD_YES;
    }
    return s_respond(wh, conn, r->route, r->status, r->ctype, r->answer.data ? r->answer.data : "",
                     r->answer.len);
}

static void s_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                        enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    struct req *r = *con_cls;
    if (r != NULL) {
        buf_free(&r->body);
        buf_free(&r->answer);
        free(r);
        *con_cls = NULL;
    }
}

static void s_mhd_log(void *cls, const char *fmt, va_list ap)
{
    struct webhook *wh = cls;
    char msg[300];
    vsnprintf(msg, sizeof msg, fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    log_limited(&wh->http_limit, LOG_WARN, "http: %s", msg);
}

/* --- the stage ------------------------------------------------------------------- */

static void s_fini(void **state);

static int s_start_http(struct webhook *wh)
{
    char err[300];
    static struct sockaddr_storage addr;
    webhook_conf_listen(wh->conf->listen, &addr, err, sizeof err);
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (addr.ss_family == AF_INET6) {
        flags |= MHD_USE_IPv6;
    }
    wh->mhd = MHD_start_daemon(flags, 0, NULL, NULL, s_access, wh,
                               MHD_OPTION_EXTERNAL_LOGGER, s_mhd_log, wh,
                               MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                               MHD_OPTION_NOTIFY_COMPLETED, s_completed, wh,
                               MHD_OPTION_CONNECTION_TIMEOUT,
                               (unsigned)((wh->conf->http_timeout_ms + 999) / 1000),
                               MHD_OPTION_END);
    if (wh->mhd == NULL) {
        log_msg(LOG_ERROR, "cannot serve HTTP on %s: %s", wh->conf->listen, strerror(errno));
        return EXIT_UNAVAILABLE;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(wh->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (info == NULL) {
        log_msg(LOG_ERROR, "libmicrohttpd has no epoll fd");
        return EXIT_SOFTWARE;
    }
    wh->epoll_fd = info->epoll_fd;
    return 0;
}

static int s_init(struct stage_ctx *ctx, void *conf, void **state)
{
    struct webhook_conf *c = conf;
    struct webhook *wh = calloc(1, sizeof *wh);
    if (wh == NULL) {
        return EXIT_SOFTWARE;
    }
    *state = wh;
    wh->conf = c;
    wh->ctx = ctx;
    int status = webhook_conf_check(c, wh->secret);
    if (status != 0) {
        goto fail;
    }
    char err[400];
    status = EXIT_SOFTWARE;
    wh->batch.ids = &wh->ids;
    wh->batch.telegram_bot = c->telegram_bot;
    wh->batch.reject = s_item_reject;
    wh->batch.reject_arg = wh;
    if ((wh->env = env_new()) == NULL
        || (c->webchat && (wh->chat = webhook_chat_new((size_t)c->chat_history, (size_t)c->chat_sessions,
                                                       c->webchat_origin)) == NULL)) {
        log_msg(LOG_ERROR, "out of memory");
        goto fail;
    }
    if ((status = stage_open_ep(ctx, "out", c->out, EP_OUT, &wh->out)) != 0
        || (status = stage_open_ep(ctx, "tap", c->tap, EP_TAP, &wh->tap)) != 0
        || (status = stage_open_ep(ctx, "replies", c->replies, EP_IN, &wh->replies)) != 0) {
        goto fail;
    }
    wh->spool = spool_open(ctx, &c->spool, err, sizeof err);
    if (wh->spool == NULL) {
        log_msg(LOG_ERROR, "%s", err);
        status = EXIT_UNAVAILABLE;
        goto fail;
    }
    spool_set_output(wh->spool, wh->out, wh->tap);
    if ((status = s_start_http(wh)) != 0) {
        goto fail;
    }
    log_msg(LOG_DEBUG, "serving http://%s", c->listen);
    return 0;
fail:
    s_fini(state);
    return status;
}

/* SIGHUP: reads the secrets again (a rotated secret file); on any error
 * the old ones stay. */
static void s_reload(void *state, struct stage_ctx *ctx)
{
    (void)ctx;
    struct webhook *wh = state;
    char *fresh[WEBHOOK_NSECRETS] = { NULL };
    if (webhook_conf_check(wh->conf, fresh) != 0) {
        webhook_conf_secrets_free(fresh);
        log_msg(LOG_WARN, "SIGHUP: the secrets could not be read again; the old ones stay");
        return;
    }
    for (int i = 0; i < WEBHOOK_NSECRETS; i++) {
        if ((fresh[i] == NULL) != (wh->secret[i] == NULL)) {
            webhook_conf_secrets_free(fresh);
            log_msg(LOG_WARN, "SIGHUP: a secret appeared or went; restart to change the endpoints served");
            return;
        }
    }
    webhook_conf_secrets_free(wh->secret);
    memcpy(wh->secret, fresh, sizeof fresh);
    log_msg(LOG_INFO, "SIGHUP: secrets read again");
}

static int s_check(struct stage_ctx *ctx, void *conf)
{
    (void)ctx;
    return webhook_conf_check(conf, NULL);
}

/* Commits and answers what is waiting, ends the streams, gives the
 * answers a moment to leave. */
static void s_shutdown(struct webhook *wh)
{
    s_commit(wh);
    if (wh->chat != NULL) {
        webhook_chat_wake(wh->chat, true);
    }
    uint64_t end = stage_mono_ms() + STOP_MS;
    while (stage_mono_ms() < end) {
        MHD_run(wh->mhd);
        s_commit(wh);
        const union MHD_DaemonInfo *info = MHD_get_daemon_info(wh->mhd, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
        if (wh->waiting == NULL && (wh->chat == NULL || webhook_chat_streams(wh->chat) == 0)
            && (info == NULL || info->num_connections == 0)) {
            break;
        }
        zmq_pollitem_t it = { NULL, wh->epoll_fd, ZMQ_POLLIN, 0 };
        zmq_poll(&it, 1, 10);
    }
    spool_pump(wh->spool, wh->ctx);
}

static int s_run(void *state, struct stage_ctx *ctx)
{
    struct webhook *wh = state;
    wh->ctx = ctx;
    zmq_pollitem_t items[3];
    int n = 0;
    items[n++] = (zmq_pollitem_t){ NULL, wh->epoll_fd, ZMQ_POLLIN, 0 };
    if (spool_acks_socket(wh->spool) != NULL) {
        items[n++] = (zmq_pollitem_t){ spool_acks_socket(wh->spool), -1, ZMQ_POLLIN, 0 };
    }
    if (wh->replies != NULL) {
        items[n++] = (zmq_pollitem_t){ ep_socket(wh->replies), -1, ZMQ_POLLIN, 0 };
    }
    uint64_t next_watchdog = 0;
    wh->next_keepalive = stage_mono_ms() + WEBHOOK_KEEPALIVE_MS;
    while (!stage_stopping(ctx)) {
        wh->resumed = false;
        MHD_run(wh->mhd);
        s_commit(wh);
        s_read_replies(wh);
        int sent = spool_pump(wh->spool, ctx);
        uint64_t now = stage_mono_ms();
        if (now >= wh->next_keepalive) {
            wh->next_keepalive = now + WEBHOOK_KEEPALIVE_MS;
            if (wh->chat != NULL && webhook_chat_wake(wh->chat, false) > 0) {
                wh->resumed = true;
            }
        }
        if (now >= next_watchdog) {
            sd_notify(0, "WATCHDOG=1");
            next_watchdog = now + LOOP_MAX_MS;
        }
        long timeout = (long)(wh->next_keepalive - now);
        timeout = timeout < LOOP_MAX_MS ? timeout : LOOP_MAX_MS;
        MHD_UNSIGNED_LONG_LONG mt;
        if (MHD_get_timeout(wh->mhd, &mt) == MHD_YES && (long long)mt < timeout) {
            timeout = (long)mt;
        }
        int64_t due = spool_next_ms(wh->spool);
        if (due >= 0 && due < timeout) {
            timeout = (long)due;
        }
        if (wh->resumed || sent >= SPOOL_PUMP_BATCH) {
            timeout = 0;
        }
        if (zmq_poll(items, n, timeout) < 0 && zmq_errno() != EINTR) {
            log_msg(LOG_ERROR, "poll: %s", zmq_strerror(zmq_errno()));
            s_shutdown(wh);
            return EXIT_SOFTWARE;
        }
    }
    s_shutdown(wh);
    log_msg(LOG_DEBUG, "accepted %llu, duplicates %llu, sent %llu, backlog %lld",
            (unsigned long long)wh->accepted, (unsigned long long)wh->duplicates,
            (unsigned long long)spool_sent(wh->spool), (long long)spool_backlog(wh->spool));
    return 0;
}

static void s_fini(void **state)
{
    struct webhook *wh = *state;
    if (wh == NULL) {
        return;
    }
    uint64_t total = 0;
    for (int i = 0; i < RJ_N; i++) {
        total += wh->rejects[i];
    }
    if (total > 0) {
        char line[400];
        size_t k = 0;
        for (int i = 0; i < RJ_N && k < sizeof line; i++) {
            if (wh->rejects[i] > 0) {
                k += (size_t)snprintf(line + k, sizeof line - k, " %s=%llu", s_reject_names[i],
                                      (unsigned long long)wh->rejects[i]);
            }
        }
        log_msg(LOG_INFO, "rejected requests:%s", line);
    }
    if (wh->mhd != NULL) {
        MHD_stop_daemon(wh->mhd);
    }
    spool_destroy(&wh->spool);
    ep_destroy(&wh->out);
    ep_destroy(&wh->tap);
    ep_destroy(&wh->replies);
    webhook_chat_destroy(&wh->chat);
    webhook_batch_free(&wh->batch);
    env_destroy(&wh->env);
    webhook_conf_secrets_free(wh->secret);
    free(wh);
    *state = NULL;
}

static struct stage s_stage = {
    .name = "ingest-webhook",
    .summary = "Serves the channels' webhooks (WhatsApp, Messenger, Twilio SMS, Telegram, generic "
               "JSON, web chat), checks their signatures, spools every message durably before "
               "answering 200, and sends them on; re-sends what omni-archive does not acknowledge.",
    .conf_size = sizeof(struct webhook_conf),
    .flags = STAGE_SOURCE | STAGE_SINK,
    .init = s_init,
    .check = s_check,
    .run = s_run,
    .reload = s_reload,
    .fini = s_fini,
};

int webhook_main(int argc, char **argv)
{
    s_stage.options = webhook_conf_options();
    return stage_main(&s_stage, argc, argv);
}
