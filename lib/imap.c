/* imap — omni-ingest-mail (stdin and IMAP modes) and one IMAP mailbox
 * through libcurl; see imap.h.
 *
 * libcurl's IMAP: a URL with a mailbox and a custom request ("UID SEARCH
 * UID n:*") SELECTs first and hands the untagged answers of the SELECT to
 * the header callback (where UIDVALIDITY is read) and the SEARCH line to
 * the write callback; ".../MAILBOX;UIDVALIDITY=v/;UID=n" fetches BODY[] of
 * one UID and fails when the selected mailbox has another UIDVALIDITY. */
#include "imap.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <curl/curl.h>

#include "endpoint.h"
#include "log.h"
#include "mail.h"
#include "spool.h"

#define S_CURSOR_KEY "imap.cursor"  /* spool state: "UIDVALIDITY UID" */
#define S_WAIT_SLICE_MS 1000        /* longest sleep before the spool is looked at again */
#define S_STUCK_MAX 3               /* polls a listed UID may fail to fetch before it is skipped */

struct imap {
    struct imap_conf conf;      /* settings (strings are the caller's) */
    CURL *easy;                 /* the session; NULL between polls */
    char *url;                  /* "imaps://host/MAILBOX", no trailing slash */
    char errbuf[CURL_ERROR_SIZE]; /* curl's reason for a failure */
    struct buf head;            /* server lines of the SELECT (header callback) */
    struct buf body;            /* what the command wrote */
    struct buf *out;            /* where a fetch goes */
    size_t kept;                /* bytes kept of a fetch */
    bool truncated;             /* a fetch passed max_bytes */
    bool curl_up;               /* curl_global_init succeeded */
};

static size_t s_head(char *p, size_t size, size_t n, void *arg)
{
    struct imap *im = arg;
    size_t len = size * n;
    /* Only the SELECT's lines matter; keep a bounded amount. */
    if (im->head.len + len <= 65536 && buf_append(&im->head, p, len) != 0) {
        return 0;
    }
    return len;
}

static size_t s_body(char *p, size_t size, size_t n, void *arg)
{
    struct imap *im = arg;
    size_t len = size * n;
    struct buf *b = im->out ? im->out : &im->body;
    size_t max = im->out ? im->conf.max_bytes : (16u << 20);
    size_t take = len;
    if (b->len + take > max) {
        take = b->len < max ? max - b->len : 0;
        im->truncated = true;
    }
    if (take > 0 && buf_append(b, p, take) != 0) {
        return 0;
    }
    return len;
}

static int s_progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    (void)dt;
    (void)dn;
    (void)ut;
    (void)un;
    struct imap *im = arg;
    return im->conf.cancel != NULL && im->conf.cancel(im->conf.cancel_arg) ? 1 : 0;
}

const char *imap_name(const struct imap *im)
{
    return im->url;
}

struct imap *imap_new(const struct imap_conf *conf, char *err, size_t n)
{
    const char *u = conf->url;
    if (u == NULL || (strncmp(u, "imap://", 7) != 0 && strncmp(u, "imaps://", 8) != 0)) {
        snprintf(err, n, "--imap must be an imaps:// (or imap://) URL");
        return NULL;
    }
    const char *host = strstr(u, "://") + 3;
    const char *slash = strchr(host, '/');
    if (memchr(host, '@', slash ? (size_t)(slash - host) : strlen(host)) != NULL) {
        snprintf(err, n, "--imap: give the user with --user and the password with --password-file, "
                         "not in the URL");
        return NULL;
    }
    if (strpbrk(u, ";?#") != NULL) {
        snprintf(err, n, "--imap: the URL names a mailbox only (no ;UID=, ?query or #)");
        return NULL;
    }
    struct imap *im = calloc(1, sizeof *im);
    if (im == NULL) {
        snprintf(err, n, "out of memory");
        return NULL;
    }
    im->conf = *conf;
    size_t len = strlen(u);
    while (len > 0 && u[len - 1] == '/') {
        len--;
    }
    bool no_box = slash == NULL || (size_t)(slash - u) >= len;
    if (asprintf(&im->url, "%.*s%s", (int)len, u, no_box ? "/INBOX" : "") < 0) {
        im->url = NULL;
        free(im);
        snprintf(err, n, "out of memory");
        return NULL;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        snprintf(err, n, "cannot initialise libcurl");
        imap_destroy(&im);
        return NULL;
    }
    im->curl_up = true;
    return im;
}

void imap_destroy(struct imap **imp)
{
    struct imap *im = *imp;
    if (im == NULL) {
        return;
    }
    imap_close(im);
    if (im->curl_up) {
        curl_global_cleanup();
    }
    buf_free(&im->head);
    buf_free(&im->body);
    free(im->url);
    free(im);
    *imp = NULL;
}

void imap_close(struct imap *im)
{
    if (im->easy != NULL) {
        /* Cleaning up the last handle of a connection sends LOGOUT. */
        curl_easy_cleanup(im->easy);
        im->easy = NULL;
    }
}

/* The session's handle, made when there is none. */
static CURL *s_session(struct imap *im)
{
    if (im->easy != NULL) {
        return im->easy;
    }
    CURL *c = curl_easy_init();
    if (c == NULL) {
        return NULL;
    }
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "imap,imaps");
    /* imap:// upgrades with STARTTLS when the server offers it. */
    curl_easy_setopt(c, CURLOPT_USE_SSL, (long)CURLUSESSL_TRY);
    if (im->conf.user != NULL) {
        curl_easy_setopt(c, CURLOPT_USERNAME, im->conf.user);
    }
    if (im->conf.password != NULL) {
        curl_easy_setopt(c, CURLOPT_PASSWORD, im->conf.password);
    }
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, s_head);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, im);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, s_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, im);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, s_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, im);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, im->errbuf);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 15000L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)im->conf.timeout_ms);
    curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
    im->easy = c;
    return c;
}

/* Runs the request set up on the session. Returns an enum imap_status. */
static int s_perform(struct imap *im, const char *what, char *err, size_t errn, bool gone_ok)
{
    im->errbuf[0] = '\0';
    CURLcode rc = curl_easy_perform(im->easy);
    if (rc == CURLE_OK) {
        return IMAP_OK;
    }
    if (rc == CURLE_ABORTED_BY_CALLBACK) {
        snprintf(err, errn, "%s: cancelled", what);
        imap_close(im);
        return IMAP_CANCELLED;
    }
    snprintf(err, errn, "%s %s: %s", what, im->url, im->errbuf[0] ? im->errbuf : curl_easy_strerror(rc));
    if (gone_ok && rc == CURLE_REMOTE_FILE_NOT_FOUND) {
        return IMAP_GONE;
    }
    /* The session may be in any state: the next command starts afresh. */
    imap_close(im);
    return IMAP_ERROR;
}

/* Reads "* OK [UIDVALIDITY n]" from the server lines of the SELECT. */
static bool s_uidvalidity(const struct buf *head, uint64_t *out)
{
    const char *p = head->data;
    const char *end = head->data + head->len;
    static const char key[] = "[UIDVALIDITY ";
    while (p != NULL && p < end) {
        const char *hit = memmem(p, (size_t)(end - p), key, sizeof key - 1);
        if (hit == NULL) {
            return false;
        }
        const char *d = hit + sizeof key - 1;
        char *stop;
        unsigned long long v = strtoull(d, &stop, 10);
        if (stop > d && *stop == ']') {
            *out = v;
            return true;
        }
        p = d;
    }
    return false;
}

/* Reads the UIDs of "* SEARCH 1 2 3" lines above after, ascending. */
static int s_search_uids(const struct buf *body, uint64_t after, uint64_t **uids, size_t *n)
{
    size_t cap = 0;
    *uids = NULL;
    *n = 0;
    const char *p = body->data;
    const char *end = body->data + body->len;
    while (p != NULL && p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        if ((size_t)(le - p) >= 8 && strncasecmp(p, "* SEARCH", 8) == 0) {
            const char *q = p + 8;
            while (q < le) {
                while (q < le && (*q == ' ' || *q == '\r')) {
                    q++;
                }
                if (q >= le) {
                    break;
                }
                char *stop;
                unsigned long long v = strtoull(q, &stop, 10);
                if (stop == q) {
                    break;      /* a (MODSEQ n) or anything else: not a UID */
                }
                q = stop;
                if (v <= after) {
                    continue;   /* "n:*" answers the highest UID even below n */
                }
                if (*n == cap) {
                    cap = cap ? cap * 2 : 64;
                    uint64_t *g = realloc(*uids, cap * sizeof *g);
                    if (g == NULL) {
                        return -1;
                    }
                    *uids = g;
                }
                (*uids)[(*n)++] = v;
            }
        }
        p = nl ? nl + 1 : end;
    }
    /* Servers answer in ascending order; make sure. */
    for (size_t i = 1; i < *n; i++) {
        uint64_t v = (*uids)[i];
        size_t j = i;
        while (j > 0 && (*uids)[j - 1] > v) {
            (*uids)[j] = (*uids)[j - 1];
            j--;
        }
        (*uids)[j] = v;
    }
    size_t k = 0;
    for (size_t i = 0; i < *n; i++) {
        if (k == 0 || (*uids)[k - 1] != (*uids)[i]) {
            (*uids)[k++] = (*uids)[i];
        }
    }
    *n = k;
    return 0;
}

int imap_search(struct imap *im, uint64_t after, uint64_t *uidvalidity, uint64_t **uids, size_t *n,
                char *err, size_t errn)
{
    *uids = NULL;
    *n = 0;
    /* A new session: the SELECT shows the mailbox as it is now. */
    imap_close(im);
    CURL *c = s_session(im);
    if (c == NULL) {
        snprintf(err, errn, "out of memory");
        return IMAP_ERROR;
    }
    char cmd[64];
    snprintf(cmd, sizeof cmd, "UID SEARCH UID %" PRIu64 ":*", after + 1);
    buf_reset(&im->head);
    buf_reset(&im->body);
    im->out = NULL;
    curl_easy_setopt(c, CURLOPT_URL, im->url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, cmd);
    int rc = s_perform(im, "UID SEARCH", err, errn, false);
    if (rc != IMAP_OK) {
        return rc;
    }
    if (!s_uidvalidity(&im->head, uidvalidity)) {
        snprintf(err, errn, "SELECT %s: the server did not say UIDVALIDITY", im->url);
        imap_close(im);
        return IMAP_ERROR;
    }
    if (s_search_uids(&im->body, after, uids, n) != 0) {
        free(*uids);
        *uids = NULL;
        *n = 0;
        snprintf(err, errn, "out of memory");
        return IMAP_ERROR;
    }
    return IMAP_OK;
}

int imap_fetch(struct imap *im, uint64_t uidvalidity, uint64_t uid, struct buf *out, bool *truncated,
               char *err, size_t errn)
{
    CURL *c = s_session(im);
    if (c == NULL) {
        snprintf(err, errn, "out of memory");
        return IMAP_ERROR;
    }
    char *url = NULL;
    if (asprintf(&url, "%s;UIDVALIDITY=%" PRIu64 "/;UID=%" PRIu64, im->url, uidvalidity, uid) < 0) {
        snprintf(err, errn, "out of memory");
        return IMAP_ERROR;
    }
    buf_reset(out);
    buf_reset(&im->head);
    im->out = out;
    im->truncated = false;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, NULL);
    char what[48];
    snprintf(what, sizeof what, "UID FETCH %" PRIu64, uid);
    int rc = s_perform(im, what, err, errn, true);
    im->out = NULL;
    free(url);
    *truncated = im->truncated;
    if (rc == IMAP_OK && out->len == 0) {
        /* OK without a FETCH answer: the UID is not there (any more). */
        snprintf(err, errn, "%s %s: no such message", what, im->url);
        return IMAP_GONE;
    }
    return rc;
}

/* ---- omni-ingest-mail ------------------------------------------------- */

struct imap_stage_conf {
    const char *imap;           /* --imap: mailbox URL; without it, one message on stdin */
    const char *user;           /* --user */
    const char *password_file;  /* --password-file */
    int64_t interval_ms;        /* --interval: between polls */
    int64_t timeout_ms;         /* --imap-timeout: longest one IMAP command */
    int64_t backoff_max_ms;     /* --backoff-max: longest wait after failures */
    int64_t max_size;           /* --max-size: bytes of a message kept */
    int64_t batch;              /* --batch: messages per spool commit */
    const char *out;            /* --out: where envelopes go */
    const char *tap;            /* --tap: a PUB copy of them */
    struct spool_conf spool;    /* --spool, --acks, ... */
};

/* The stage's state. */
struct s_in {
    struct imap_stage_conf *conf;   /* options */
    struct stage_ctx *ctx;          /* the runner (for cancel) */
    struct spool *spool;            /* the durable queue */
    struct ep *out;                 /* --out */
    struct ep *tap;                 /* --tap, or NULL */
    struct imap *imap;              /* the mailbox, in IMAP mode */
    char *password;                 /* from --password-file */
    struct env *env;                /* the envelope being built */
    struct buf raw;                 /* the message being read */
    uint64_t validity;              /* cursor: UIDVALIDITY (0: none yet) */
    uint64_t uid;                   /* cursor: last UID spooled or skipped */
    uint64_t saved_validity;        /* the cursor as last committed */
    uint64_t saved_uid;             /* ditto */
    uint64_t stuck_uid;             /* a listed UID that did not fetch */
    int stuck;                      /* polls it failed in a row */
    int64_t backoff_ms;             /* the next wait after a failure */
    bool full;                      /* the spool was full at the last look */
    uint64_t spooled;               /* messages spooled */
    uint64_t dups;                  /* messages the spool had already */
    uint64_t bad;                   /* messages that are not messages */
    struct log_limit limit;         /* rate limit of repeated errors */
};

static struct opt s_opts[24];

#define C(f) offsetof(struct imap_stage_conf, f)
static const struct opt s_own_opts[] = {
    { "imap", OPT_STR, NULL, C(imap),
      "poll this mailbox (imaps://host/INBOX); without it, read one message on stdin" },
    { "user", OPT_STR, NULL, C(user), "IMAP login" },
    { "password-file", OPT_STR, NULL, C(password_file), "file holding the IMAP password" },
    { "interval", OPT_MS, "60s", C(interval_ms), "time between two polls of the mailbox" },
    { "imap-timeout", OPT_MS, "2m", C(timeout_ms), "longest one IMAP command may take" },
    { "backoff-max", OPT_MS, "5m", C(backoff_max_ms), "longest wait after repeated failures" },
    { "max-size", OPT_INT, "25M", C(max_size), "bytes of a message read; the rest is dropped (meta.truncated)" },
    { "batch", OPT_INT, "50", C(batch), "messages per spool commit while reading a mailbox" },
    { "out", OPT_STR, "-", C(out), "where envelopes go: -, @uri (bind), >uri (connect)" },
    { "tap", OPT_STR, NULL, C(tap), "also publish a copy of the output here (PUB)" },
    { NULL, 0, NULL, 0, NULL }
};
#undef C

static int s_init(struct stage_ctx *ctx, void *conf, void **state);
static int s_check(struct stage_ctx *ctx, void *conf);
static int s_run(void *state, struct stage_ctx *ctx);
static void s_fini(void **state);

static const struct stage s_stage = {
    .name = "ingest-mail",
    .summary = "Reads e-mail (one message on stdin, from an MTA, or an IMAP mailbox) "
               "and writes each message as an envelope, spooled first.",
    .options = s_opts,
    .conf_size = sizeof(struct imap_stage_conf),
    .flags = STAGE_SOURCE | STAGE_SINK,
    .init = s_init,
    .check = s_check,
    .run = s_run,
    .fini = s_fini,
};

const struct stage *imap_stage(void)
{
    if (s_opts[0].name == NULL) {
        size_t n = sizeof s_own_opts / sizeof s_own_opts[0] - 1;
        memcpy(s_opts, s_own_opts, n * sizeof s_opts[0]);
        size_t k = spool_opts_into(s_opts + n, sizeof s_opts / sizeof s_opts[0] - n,
                                   offsetof(struct imap_stage_conf, spool));
        /* A mailbox is read again from its first UID when UIDVALIDITY
         * changes: remember Message-IDs for longer than other channels. */
        for (size_t i = n; i < n + k; i++) {
            if (strcmp(s_opts[i].name, "dedupe-window") == 0) {
                s_opts[i].def = "400d";
            }
        }
    }
    return &s_stage;
}

static bool s_cancel(void *arg)
{
    return stage_stopping(arg);
}

/* Sends what the spool has due (never waiting, so that the mailbox is
 * read into the spool, up to --spool-max, while the next stage is away).
 * Returns -1 when something failed. */
static int s_pump(struct s_in *in)
{
    int rc;
    while ((rc = spool_pump(in->spool, in->ctx)) == SPOOL_PUMP_BATCH) {
    }
    return rc < 0 ? -1 : 0;
}

/* Waits ms (or until SIGTERM), sending the spool's due envelopes. Returns
 * -1 when stopping. */
static int s_sleep(struct s_in *in, struct stage_ctx *ctx, int64_t ms)
{
    uint64_t end = stage_mono_ms() + (uint64_t)(ms > 0 ? ms : 0);
    for (;;) {
        if (spool_next_ms(in->spool) == 0) {
            s_pump(in);
        }
        uint64_t now = stage_mono_ms();
        if (now >= end) {
            return stage_stopping(ctx) ? -1 : 0;
        }
        int64_t wait = (int64_t)(end - now);
        int64_t due = spool_next_ms(in->spool);
        if (wait > S_WAIT_SLICE_MS) {
            wait = S_WAIT_SLICE_MS;
        }
        if (due >= 0 && due < wait) {
            wait = due;
        }
        if (stage_wait_fd(ctx, -1, (int)wait) < 0) {
            return -1;
        }
    }
}

/* Parses one message and puts it in the open transaction. Returns 0 (put,
 * a duplicate, or rejected as not a message), 1 rejected, -1 spool error. */
static int s_put(struct s_in *in, struct stage_ctx *ctx, const char *label, bool cut)
{
    char err[300];
    if (mail_to_env(in->raw.data ? in->raw.data : "", in->raw.len, cut ? MAIL_CUT : 0, in->env,
                    err, sizeof err) != 0) {
        char reason[400];
        snprintf(reason, sizeof reason, "reason=\"%s\"", err);
        stage_reject(ctx, in->raw.data ? in->raw.data : "", in->raw.len, label, reason);
        in->bad++;
        return 1;
    }
    int rc = spool_put(in->spool, in->env);
    if (rc < 0) {
        return -1;
    }
    if (rc == 1) {
        in->dups++;
        log_msg(LOG_INFO, "%s src_id=%s is spooled already as id=%s", label,
                env_get(in->env, ENV_SRC_ID), env_get(in->env, ENV_ID));
    } else {
        in->spooled++;
        log_msg(LOG_DEBUG, "%s spooled id=%s src_id=%s from=%s", label, env_get(in->env, ENV_ID),
                env_get(in->env, ENV_SRC_ID), env_get(in->env, ENV_FROM));
    }
    return 0;
}

/* ---- stdin ---- */

/* Reads stdin into in->raw, at most max bytes kept. Returns 0, 1 cut,
 * -1 failed (stopping, or a read error). */
static int s_read_stdin(struct s_in *in, struct stage_ctx *ctx)
{
    size_t max = (size_t)in->conf->max_size;
    bool cut = false;
    char chunk[1 << 16];
    for (;;) {
        ssize_t r = read(STDIN_FILENO, chunk, sizeof chunk);
        if (r < 0 && errno == EINTR) {
            if (stage_stopping(ctx)) {
                return -1;
            }
            continue;
        }
        if (r < 0) {
            log_msg(LOG_ERROR, "stdin: %s", strerror(errno));
            return -1;
        }
        if (r == 0) {
            break;
        }
        size_t take = (size_t)r;
        if (in->raw.len + take > max) {
            take = in->raw.len < max ? max - in->raw.len : 0;
            cut = true;
        }
        if (take > 0 && buf_append(&in->raw, chunk, take) != 0) {
            log_msg(LOG_ERROR, "out of memory reading a message");
            return -1;
        }
    }
    return cut ? 1 : 0;
}

static int s_run_stdin(struct s_in *in, struct stage_ctx *ctx)
{
    int rd = s_read_stdin(in, ctx);
    if (rd < 0) {
        return EXIT_TEMPFAIL;
    }
    if (rd == 1) {
        log_msg(LOG_WARN, "message longer than --max-size %lld bytes: the rest is dropped",
                (long long)in->conf->max_size);
    }
    if (spool_full(in->spool)) {
        log_msg(LOG_WARN, "spool full (%lld unacknowledged, --spool-max %lld): try again later",
                (long long)spool_backlog(in->spool), (long long)in->conf->spool.max);
        return EXIT_TEMPFAIL;
    }
    int rc = s_put(in, ctx, "stdin", rd == 1);
    if (rc == 1) {
        return EXIT_DATAERR;
    }
    if (rc < 0) {
        spool_rollback(in->spool);
        log_msg(LOG_ERROR, "cannot store the message in the spool: try again later");
        return EXIT_TEMPFAIL;
    }
    if (spool_commit(in->spool) != 0) {
        log_msg(LOG_ERROR, "cannot commit the message to the spool: try again later");
        return EXIT_TEMPFAIL;
    }
    log_msg(LOG_INFO, "spooled id=%s src_id=%s from=%s", env_get(in->env, ENV_ID),
            env_get(in->env, ENV_SRC_ID), env_get(in->env, ENV_FROM));
    /* It is safe now; sending it on is the spool's job from here (this
     * run's, or the next one's). */
    if (s_pump(in) < 0) {
        log_msg(LOG_WARN, "spooled but not sent on: a later run sends it");
    }
    return 0;
}

/* ---- IMAP ---- */

/* Commits the open transaction with the cursor. Returns 0 or -1 (rolled
 * back: the cursor is where it was last committed). */
static int s_commit(struct s_in *in)
{
    char cur[64];
    snprintf(cur, sizeof cur, "%" PRIu64 " %" PRIu64, in->validity, in->uid);
    if (spool_state_set(in->spool, S_CURSOR_KEY, cur) != 0 || spool_commit(in->spool) != 0) {
        spool_rollback(in->spool);
        in->validity = in->saved_validity;
        in->uid = in->saved_uid;
        log_limited(&in->limit, LOG_ERROR, "cannot commit to the spool; the cursor stays at "
                    "UIDVALIDITY %" PRIu64 " UID %" PRIu64, in->validity, in->uid);
        return -1;
    }
    in->saved_validity = in->validity;
    in->saved_uid = in->uid;
    s_pump(in);
    return 0;
}

/* One poll: the UIDs above the cursor, each fetched and spooled. Returns
 * 0 done, 1 failed (wait, then again), 2 stopped early with more to read
 * (the spool filled up), -1 stopping. */
static int s_poll(struct s_in *in, struct stage_ctx *ctx)
{
    char err[600];
    uint64_t validity = 0;
    uint64_t *uids = NULL;
    size_t n = 0;
    int status = 0;
    int rc = imap_search(in->imap, in->uid, &validity, &uids, &n, err, sizeof err);
    if (rc == IMAP_OK && in->validity != 0 && validity != in->validity) {
        log_msg(LOG_WARN, "UIDVALIDITY of %s changed from %" PRIu64 " to %" PRIu64 ": reading the "
                "mailbox again from its first UID (messages spooled before are known by their "
                "Message-ID)", imap_name(in->imap), in->validity, validity);
        free(uids);
        uids = NULL;
        in->validity = validity;
        in->uid = 0;
        rc = imap_search(in->imap, 0, &validity, &uids, &n, err, sizeof err);
        if (rc == IMAP_OK && validity != in->validity) {
            rc = IMAP_ERROR;
            snprintf(err, sizeof err, "UIDVALIDITY of %s changed again", imap_name(in->imap));
        }
    }
    if (rc != IMAP_OK) {
        in->validity = in->saved_validity;
        in->uid = in->saved_uid;
        status = rc == IMAP_CANCELLED ? -1 : 1;
        if (status == 1) {
            log_limited(&in->limit, LOG_WARN, "%s", err);
        }
        goto done;
    }
    if (in->validity == 0) {
        in->validity = validity;
        in->uid = 0;
        log_msg(LOG_INFO, "%s: UIDVALIDITY %" PRIu64 ", reading from its first UID",
                imap_name(in->imap), validity);
    }
    bool changed = in->validity != in->saved_validity || in->uid != in->saved_uid;
    int64_t pending = 0;
    for (size_t i = 0; i < n; i++) {
        if (stage_stopping(ctx)) {
            status = -1;
            break;
        }
        if (spool_full(in->spool)) {
            status = 2;
            break;
        }
        bool cut = false;
        rc = imap_fetch(in->imap, validity, uids[i], &in->raw, &cut, err, sizeof err);
        if (rc == IMAP_CANCELLED) {
            status = -1;
            break;
        }
        if (rc == IMAP_GONE && !(uids[i] == in->stuck_uid && in->stuck + 1 >= S_STUCK_MAX)) {
            /* Expunged since the search, or the mailbox changed under
             * us: the next poll's search tells which. */
            in->stuck = uids[i] == in->stuck_uid ? in->stuck + 1 : 1;
            in->stuck_uid = uids[i];
            log_limited(&in->limit, LOG_WARN, "%s", err);
            status = 1;
            break;
        }
        if (rc == IMAP_ERROR) {
            log_limited(&in->limit, LOG_WARN, "%s", err);
            status = 1;
            break;
        }
        char label[80];
        snprintf(label, sizeof label, "uidvalidity=%" PRIu64 " uid=%" PRIu64, validity, uids[i]);
        if (rc == IMAP_GONE) {
            log_msg(LOG_ERROR, "%s listed %d polls in a row and never fetched: skipped (%s)", label,
                    S_STUCK_MAX, err);
        } else {
            if (cut) {
                log_msg(LOG_WARN, "%s longer than --max-size %lld bytes: the rest is dropped", label,
                        (long long)in->conf->max_size);
            }
            if (s_put(in, ctx, label, cut) < 0) {
                spool_rollback(in->spool);
                in->validity = in->saved_validity;
                in->uid = in->saved_uid;
                status = 1;
                pending = 0;
                changed = false;
                log_limited(&in->limit, LOG_ERROR, "cannot store %s in the spool", label);
                break;
            }
        }
        in->stuck = 0;
        in->uid = uids[i];
        changed = true;
        if (++pending >= in->conf->batch) {
            if (s_commit(in) != 0) {
                status = 1;
                changed = false;
                break;
            }
            pending = 0;
            changed = false;
        }
    }
    if (changed && s_commit(in) != 0 && status >= 0) {
        status = 1;
    }
done:
    free(uids);
    imap_close(in->imap);
    return status;
}

/* The next wait after a failure, doubling up to --backoff-max. */
static int64_t s_backoff(struct s_in *in)
{
    int64_t ms = in->backoff_ms;
    in->backoff_ms = ms * 2 > in->conf->backoff_max_ms ? in->conf->backoff_max_ms : ms * 2;
    return ms;
}

static int s_run_imap(struct s_in *in, struct stage_ctx *ctx)
{
    log_msg(LOG_INFO, "polling %s every %lld ms from UIDVALIDITY %" PRIu64 " UID %" PRIu64,
            imap_name(in->imap), (long long)in->conf->interval_ms, in->validity, in->uid);
    for (;;) {
        if (stage_stopping(ctx)) {
            break;
        }
        if (spool_next_ms(in->spool) == 0) {
            s_pump(in);
        }
        if (spool_full(in->spool)) {
            if (!in->full) {
                log_msg(LOG_WARN, "spool full (%lld unacknowledged, --spool-max %lld): "
                        "the mailbox waits until it drains", (long long)spool_backlog(in->spool),
                        (long long)in->conf->spool.max);
                in->full = true;
            }
            if (s_sleep(in, ctx, 500) < 0) {
                break;
            }
            continue;
        }
        if (in->full) {
            log_msg(LOG_INFO, "spool below --spool-max again: reading the mailbox");
            in->full = false;
        }
        int rc = s_poll(in, ctx);
        if (rc < 0) {
            break;
        }
        int64_t wait = in->conf->interval_ms;
        if (rc == 1) {
            wait = s_backoff(in);
        } else {
            in->backoff_ms = 1000;
            if (rc == 2) {
                wait = 0;   /* the spool-full check above waits */
            }
        }
        if (s_sleep(in, ctx, wait) < 0) {
            break;
        }
    }
    s_pump(in);
    log_msg(LOG_INFO, "stopped at UIDVALIDITY %" PRIu64 " UID %" PRIu64 ": %llu spooled, "
            "%llu already spooled, %llu not messages, %llu sent on", in->saved_validity,
            in->saved_uid, (unsigned long long)in->spooled, (unsigned long long)in->dups,
            (unsigned long long)in->bad, (unsigned long long)spool_sent(in->spool));
    return 0;
}

static int s_run(void *state, struct stage_ctx *ctx)
{
    struct s_in *in = state;
    return in->imap != NULL ? s_run_imap(in, ctx) : s_run_stdin(in, ctx);
}

/* ---- setup ---- */

/* The password from --password-file (its line end dropped), or NULL. */
static char *s_password(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        log_msg(LOG_ERROR, "--password-file %s: %s", path, strerror(errno));
        return NULL;
    }
    char line[1024];
    char *pw = fgets(line, sizeof line, f) ? strdup(line) : strdup("");
    fclose(f);
    memset(line, 0, sizeof line);
    if (pw != NULL) {
        size_t n = strlen(pw);
        while (n > 0 && (pw[n - 1] == '\n' || pw[n - 1] == '\r')) {
            pw[--n] = '\0';
        }
    }
    return pw;
}

/* The configuration, for --check and init. Returns 0 or an exit code. */
static int s_validate(const struct imap_stage_conf *c)
{
    /* From an MTA, a mistake in the pipe's options is better deferred (the
     * mail waits in the queue) than bounced. */
    int bad = c->imap != NULL ? EXIT_CONFIG : EXIT_TEMPFAIL;
    if (c->spool.path == NULL || c->spool.path[0] == '\0') {
        log_msg(LOG_ERROR, "--spool is required: mail is stored there before it is acknowledged");
        return bad;
    }
    if (c->max_size < 1024 || c->max_size > (1LL << 30)) {
        log_msg(LOG_ERROR, "--max-size must be 1k..1G");
        return bad;
    }
    if (c->imap != NULL) {
        if (c->interval_ms < 100 || c->timeout_ms < 1000 || c->backoff_max_ms < 1000 || c->batch < 1) {
            log_msg(LOG_ERROR, "--interval must be at least 100ms, --imap-timeout and --backoff-max "
                    "at least 1s, --batch at least 1");
            return bad;
        }
        if (c->password_file != NULL && access(c->password_file, R_OK) != 0) {
            log_msg(LOG_ERROR, "--password-file %s: %s", c->password_file, strerror(errno));
            return bad;
        }
        struct imap_conf ic = { .url = c->imap };
        char err[300];
        struct imap *im = imap_new(&ic, err, sizeof err);
        if (im == NULL) {
            log_msg(LOG_ERROR, "%s", err);
            return bad;
        }
        imap_destroy(&im);
    } else if (c->user != NULL || c->password_file != NULL) {
        log_msg(LOG_ERROR, "--user and --password-file go with --imap");
        return bad;
    }
    return 0;
}

static int s_check(struct stage_ctx *ctx, void *conf)
{
    (void)ctx;
    struct imap_stage_conf *c = conf;
    int rc = s_validate(c);
    if (rc == 0 && (stage_open_ep(NULL, "out", c->out, EP_OUT, NULL) != 0
                    || stage_open_ep(NULL, "tap", c->tap, EP_TAP, NULL) != 0)) {
        rc = c->imap != NULL ? EXIT_CONFIG : EXIT_TEMPFAIL;
    }
    return rc;
}

static int s_init(struct stage_ctx *ctx, void *conf, void **state)
{
    struct imap_stage_conf *c = conf;
    int rc = s_validate(c);
    if (rc != 0) {
        return rc;
    }
    int unavailable = c->imap != NULL ? EXIT_UNAVAILABLE : EXIT_TEMPFAIL;
    struct s_in *in = calloc(1, sizeof *in);
    if (in == NULL) {
        return unavailable;
    }
    *state = in;
    in->conf = c;
    in->ctx = ctx;
    in->backoff_ms = 1000;
    mail_init();
    if ((in->env = env_new()) == NULL) {
        rc = unavailable;
        goto fail;
    }
    if ((rc = stage_open_ep(ctx, "out", c->out, EP_OUT, &in->out)) != 0
        || (rc = stage_open_ep(ctx, "tap", c->tap, EP_TAP, &in->tap)) != 0) {
        rc = c->imap != NULL ? rc : EXIT_TEMPFAIL;
        goto fail;
    }
    char err[300];
    in->spool = spool_open(ctx, &c->spool, err, sizeof err);
    if (in->spool == NULL) {
        log_msg(LOG_ERROR, "%s", err);
        rc = unavailable;
        goto fail;
    }
    spool_set_output(in->spool, in->out, in->tap);
    if (c->imap == NULL) {
        return 0;
    }
    if (c->password_file != NULL && (in->password = s_password(c->password_file)) == NULL) {
        rc = EXIT_CONFIG;
        goto fail;
    }
    struct imap_conf ic = {
        .url = c->imap, .user = c->user, .password = in->password, .timeout_ms = c->timeout_ms,
        .max_bytes = (size_t)c->max_size, .cancel = s_cancel, .cancel_arg = ctx,
    };
    if ((in->imap = imap_new(&ic, err, sizeof err)) == NULL) {
        log_msg(LOG_ERROR, "%s", err);
        rc = EXIT_CONFIG;
        goto fail;
    }
    char cur[64];
    int got = spool_state_get(in->spool, S_CURSOR_KEY, cur, sizeof cur);
    if (got < 0) {
        rc = EXIT_UNAVAILABLE;
        goto fail;
    }
    unsigned long long v = 0, u = 0;
    if (got == 1 && sscanf(cur, "%llu %llu", &v, &u) != 2) {
        log_msg(LOG_ERROR, "spool %s: the IMAP cursor '%s' is not \"UIDVALIDITY UID\"", c->spool.path, cur);
        rc = EXIT_CONFIG;
        goto fail;
    }
    in->validity = in->saved_validity = v;
    in->uid = in->saved_uid = u;
    return 0;
fail:
    s_fini(state);
    return rc;
}

static void s_fini(void **state)
{
    struct s_in *in = *state;
    if (in == NULL) {
        return;
    }
    imap_destroy(&in->imap);
    spool_destroy(&in->spool);
    if (in->out != NULL && ep_is_stdio(in->out)) {
        ep_flush(in->out);
    }
    ep_destroy(&in->out);
    ep_destroy(&in->tap);
    env_destroy(&in->env);
    buf_free(&in->raw);
    if (in->password != NULL) {
        memset(in->password, 0, strlen(in->password));
        free(in->password);
    }
    mail_fini();
    free(in);
    *state = NULL;
}
