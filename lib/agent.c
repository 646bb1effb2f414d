/* agent — omni-agent, the terminal of the people behind the queues; see
 * agent.h.
 *
 * Reading: one read-only connection to omni-archive's database, one read
 * transaction per command (a consistent view while the service writes).
 * What a conversation "is" comes from the archive's conversations table
 * (status, channels) and from its messages: the last route map says its
 * queue and priority, the last inbound message who and where to answer.
 *
 * Writing: each command builds one envelope with env_* (never msgpack by
 * hand), stamps trace, checks it with env_check and sends it to --out: a
 * PUSH socket that lingers until the envelope is delivered (or --timeout
 * passes), or msgpack on stdout. */
#include "agent.h"

#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>
#include <zmq.h>

#include "archive.h"
#include "endpoint.h"
#include "envelope.h"
#include "log.h"
#include "mail.h"
#include "mp.h"
#include "opt.h"
#include "stage.h"
#include "ulid.h"
#include "utf8.h"

#define AGENT_NAME_MAX 64       /* bytes of an agent's name */
#define PREVIEW_CHARS 60        /* characters of the last message in `queue` */
#define HANDLE_WIDTH 26         /* column of handles in `queue` and `show` */
#define EXIT_NOINPUT 66         /* archive_open: the file is not there */

/* Options of the subcommands; each uses the fields its table names. */
struct agent_conf {
    const char *archive;    /* omni-archive's database */
    const char *out;        /* where envelopes go */
    const char *as;         /* the agent doing it */
    const char *queue;      /* queue: only this queue */
    const char *reason;     /* close: why */
    bool json;              /* queue, show: JSON lines */
    int64_t limit;          /* queue: most conversations listed (0: all) */
    int64_t timeout_ms;     /* how long --out gets to take the envelope */
    bool help;              /* --help */
};

/* One command being run. */
struct agent_run {
    struct agent_conf conf;     /* its options */
    char **pos;                 /* positional arguments (after the subcommand) */
    int npos;                   /* how many */
    sqlite3 *db;                /* the archive, read-only */
    char name[AGENT_NAME_MAX + 1];      /* --as without "agent:" */
    char by[AGENT_NAME_MAX + 7];        /* "agent:" and the name */
    struct ep_spec out;         /* --out, parsed */
};

/* What a command is and takes. */
struct agent_cmd {
    const char *name;               /* "reply" */
    const char *args;               /* positional arguments, for usage */
    const char *summary;            /* one paragraph for --help */
    const struct opt *opts;         /* its options */
    int min_args;                   /* positional arguments needed */
    int max_args;                   /* allowed (-1: any) */
    bool writes;                    /* needs --out and --as */
    int (*fn)(struct agent_run *r); /* runs it; returns the exit code */
};

/* A conversation as the archive knows it. */
struct agent_conv {
    char id[ENV_MAX_SHORT + 1];         /* conversation id */
    char customer[ENV_MAX_SHORT + 1];   /* its customer, or "" */
    char status[16];                    /* open, bot, queued, assigned, closed */
    char channels[256];                 /* "whatsapp,email" */
};

/* The last route map of a conversation's messages. */
struct agent_route {
    bool found;                 /* some message had one */
    char queue[256];            /* route.queue, else a target other than bot, or "" */
    char agent[256];            /* route.agent, or "" */
    int64_t priority;           /* route.priority, 0 when absent */
    bool has_priority;          /* route.priority was there */
};

#define C(f) offsetof(struct agent_conf, f)
#define O_ARCHIVE { "archive", OPT_STR, NULL, C(archive), "omni-archive's database, read-only (required)" }
#define O_OUT { "out", OPT_STR, NULL, C(out), \
    "where the envelope goes: >ipc://…, >tcp://host:port, or - for msgpack on stdout (required)" }
#define O_AS { "as", OPT_STR, NULL, C(as), "the agent doing it: NAME or agent:NAME (required)" }
#define O_TIMEOUT { "timeout", OPT_MS, "5s", C(timeout_ms), \
    "how long the endpoint gets to take the envelope before exit 69" }
#define O_HELP { "help", OPT_BOOL, "no", C(help), "show this help and exit" }
#define O_END { NULL, 0, NULL, 0, NULL }
static const struct opt s_queue_opts[] = {
    O_ARCHIVE,
    { "queue", OPT_STR, NULL, C(queue), "only conversations in this queue" },
    { "json", OPT_BOOL, "no", C(json), "one JSON object per conversation" },
    { "limit", OPT_INT, "0", C(limit), "most conversations listed (0: all)" },
    O_HELP, O_END
};
static const struct opt s_show_opts[] = {
    O_ARCHIVE,
    { "json", OPT_BOOL, "no", C(json), "the stored envelopes, one JSON object per line" },
    O_HELP, O_END
};
static const struct opt s_event_opts[] = { O_ARCHIVE, O_OUT, O_AS, O_TIMEOUT, O_HELP, O_END };
static const struct opt s_close_opts[] = {
    O_ARCHIVE, O_OUT, O_AS,
    { "reason", OPT_STR, NULL, C(reason), "why it is closed (kept in meta.reason)" },
    O_TIMEOUT, O_HELP, O_END
};
#undef C

static int s_queue(struct agent_run *r);
static int s_claim(struct agent_run *r);
static int s_show(struct agent_run *r);
static int s_reply(struct agent_run *r);
static int s_close(struct agent_run *r);
static int s_note(struct agent_run *r);

static const struct agent_cmd s_cmds[] = {
    { "queue", "", "Conversations waiting for a person: in a queue and given to no agent (or, "
      "where nothing routed them, with an unanswered inbound message). Highest route.priority "
      "first, then the longest waiting since the first unanswered inbound message.",
      s_queue_opts, 0, 0, false, s_queue },
    { "claim", "CONVERSATION", "Takes the conversation: an assign event (meta.event=assign, "
      "meta.agent, route.agent) that omni-route and omni-archive see.",
      s_event_opts, 1, 1, true, s_claim },
    { "show", "CONVERSATION|CUSTOMER|HANDLE", "The customer's whole history: every conversation "
      "on every channel, in time order, with notes and events.",
      s_show_opts, 1, 1, false, s_show },
    { "reply", "CONVERSATION TEXT...", "Answers the customer on the channel of their last inbound "
      "message, to the handle it came from (e-mail: Re: subject, meta.in_reply_to and "
      "meta.references). TEXT - reads the text from stdin.",
      s_event_opts, 2, -1, true, s_reply },
    { "close", "CONVERSATION", "Closes the conversation: a close event (meta.by, meta.reason).",
      s_close_opts, 1, 1, true, s_close },
    { "note", "CONVERSATION TEXT...", "An internal note on the conversation (meta.event=note, "
      "meta.text): shown by show, never sent to the customer. TEXT - reads stdin.",
      s_event_opts, 2, -1, true, s_note },
};
#define N_CMDS (sizeof s_cmds / sizeof s_cmds[0])

/* --- small helpers ---------------------------------------------------- */

/* Copies at most n-1 bytes of s (NULL: "") into out. */
static void s_copy(char *out, size_t n, const char *s)
{
    snprintf(out, n, "%s", s != NULL ? s : "");
}

/* Appends s for a terminal: control characters (C0 but newline and tab, DEL,
 * C1) cannot move the cursor or recolour it. one_line: every run of blanks
 * and line breaks becomes one space, and at most *left characters go,
 * then an ellipsis (left may be NULL: no limit). */
static void s_clean(struct buf *b, const char *s, bool one_line, int *left)
{
    bool space = one_line && (b->len == 0 || b->data[b->len - 1] == ' ');
    size_t n = strlen(s);
    size_t i = 0;
    while (i < n && (left == NULL || *left > 0)) {
        unsigned char c = (unsigned char)s[i];
        size_t len = 1;
        while (i + len < n && ((unsigned char)s[i + len] & 0xC0) == 0x80) {
            len++;
        }
        bool c1 = c == 0xC2 && len == 2 && (unsigned char)s[i + 1] < 0xA0;
        bool ctl = c < 0x20 || c == 0x7f || c1;
        if (one_line && (ctl || c == ' ')) {
            if (!space) {
                buf_putc(b, ' ');
                if (left != NULL) {
                    (*left)--;
                }
            }
            space = true;
            i += len;
            continue;
        }
        if (ctl && c != '\n' && c != '\t') {
            if (c != '\r') {
                buf_puts(b, "\xEF\xBF\xBD");    /* U+FFFD */
            }
        } else {
            buf_append(b, s + i, len);
        }
        if (left != NULL) {
            (*left)--;
        }
        space = false;
        i += len;
    }
    if (one_line) {
        while (b->len > 0 && b->data[b->len - 1] == ' ') {
            b->data[--b->len] = '\0';
        }
    }
    if (i < n) {
        buf_puts(b, "…");
    }
}

/* "2026-11-16 21:12" in local time. */
static void s_when(int64_t ms, char *out, size_t n)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (localtime_r(&t, &tm) == NULL || strftime(out, n, "%Y-%m-%d %H:%M", &tm) == 0) {
        snprintf(out, n, "%lld", (long long)ms);
    }
}

/* A wait as "45s", "12m", "3h05m", "2d04h"; "-" when since < 0. */
static void s_wait(int64_t now, int64_t since, char *out, size_t n)
{
    if (since < 0) {
        snprintf(out, n, "-");
        return;
    }
    int64_t s = now > since ? (now - since) / 1000 : 0;
    if (s < 60) {
        snprintf(out, n, "%llds", (long long)s);
    } else if (s < 3600) {
        snprintf(out, n, "%lldm", (long long)(s / 60));
    } else if (s < 86400) {
        snprintf(out, n, "%lldh%02lldm", (long long)(s / 3600), (long long)(s % 3600 / 60));
    } else {
        snprintf(out, n, "%lldd%02lldh", (long long)(s / 86400), (long long)(s % 86400 / 3600));
    }
}

/* A JSON string, or null for NULL. */
static void s_json_str(struct buf *b, const char *s)
{
    if (s == NULL) {
        buf_puts(b, "null");
    } else {
        buf_json_str(b, s, strlen(s));
    }
}

/* Reads all of stdin into out (at most max bytes). Returns 0, or -1 with a
 * reason logged. */
static int s_read_stdin(struct buf *out, size_t max)
{
    char chunk[8192];
    for (;;) {
        ssize_t n = read(STDIN_FILENO, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            log_msg(LOG_ERROR, "reading stdin: %s", strerror(errno));
            return -1;
        }
        if (n == 0) {
            return 0;
        }
        if (out->len + (size_t)n > max) {
            log_msg(LOG_ERROR, "the text on stdin is longer than %zu bytes", max);
            return -1;
        }
        if (buf_append(out, chunk, (size_t)n) != 0) {
            log_msg(LOG_ERROR, "out of memory");
            return -1;
        }
    }
}

/* The TEXT arguments from pos[first..]: joined by spaces, or stdin for a
 * lone "-"; trailing blank lines dropped. Returns 0, or EXIT_USAGE. */
static int s_text_arg(const struct agent_run *r, int first, struct buf *text)
{
    if (r->npos == first + 1 && strcmp(r->pos[first], "-") == 0) {
        if (s_read_stdin(text, ENV_MAX_TEXT) != 0) {
            return EXIT_USAGE;
        }
    } else {
        for (int i = first; i < r->npos; i++) {
            buf_printf(text, "%s%s", i > first ? " " : "", r->pos[i]);
        }
    }
    while (text->len > 0 && strchr(" \t\r\n", text->data[text->len - 1]) != NULL) {
        text->data[--text->len] = '\0';
    }
    if (text->len == 0) {
        log_msg(LOG_ERROR, "the text is empty");
        return EXIT_USAGE;
    }
    return 0;
}

/* --- the archive ------------------------------------------------------ */

static int s_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st)
{
    if (sqlite3_prepare_v2(db, sql, -1, st, NULL) != SQLITE_OK) {
        log_msg(LOG_ERROR, "reading the archive: %s", sqlite3_errmsg(db));
        return EXIT_UNAVAILABLE;
    }
    return 0;
}

/* Opens --archive read-only, in one read transaction. */
static int s_open(struct agent_run *r)
{
    char err[512];
    if (r->conf.archive == NULL || r->conf.archive[0] == '\0') {
        log_msg(LOG_ERROR, "--archive is required (omni-archive's --db)");
        return EXIT_USAGE;
    }
    int status = archive_open(r->conf.archive, ARCHIVE_READ, NULL, &r->db, err, sizeof err);
    if (status != 0) {
        log_msg(LOG_ERROR, "--archive %s", err);
        return status == EXIT_NOINPUT ? EXIT_UNAVAILABLE : status;
    }
    /* A read-only connection cannot make the tables: check they are there. */
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db, "SELECT 1 FROM conversations, messages LIMIT 0", -1, &st, NULL) != SQLITE_OK) {
        log_msg(LOG_ERROR, "--archive %s: not an omni-archive database (%s)", r->conf.archive,
                sqlite3_errmsg(r->db));
        sqlite3_finalize(st);
        return EXIT_UNAVAILABLE;
    }
    sqlite3_finalize(st);
    if (sqlite3_exec(r->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
        log_msg(LOG_ERROR, "--archive %s: %s", r->conf.archive, sqlite3_errmsg(r->db));
        return EXIT_UNAVAILABLE;
    }
    return 0;
}

/* Finds conversation id. Returns 0, EXIT_DATAERR when the archive has no
 * such conversation (logged), or EXIT_UNAVAILABLE. */
static int s_conv(struct agent_run *r, const char *id, struct agent_conv *c)
{
    static const char sql[] =
        "SELECT id, customer, status, channels FROM conversations WHERE id = ?1";
    sqlite3_stmt *st = NULL;
    int status = s_prepare(r->db, sql, &st);
    if (status != 0) {
        return status;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        s_copy(c->id, sizeof c->id, (const char *)sqlite3_column_text(st, 0));
        s_copy(c->customer, sizeof c->customer, (const char *)sqlite3_column_text(st, 1));
        s_copy(c->status, sizeof c->status, (const char *)sqlite3_column_text(st, 2));
        s_copy(c->channels, sizeof c->channels, (const char *)sqlite3_column_text(st, 3));
    } else if (rc == SQLITE_DONE) {
        log_msg(LOG_ERROR, "no conversation %s in %s", id, r->conf.archive);
        status = EXIT_DATAERR;
    } else {
        log_msg(LOG_ERROR, "reading the archive: %s", sqlite3_errmsg(r->db));
        status = EXIT_UNAVAILABLE;
    }
    sqlite3_finalize(st);
    return status;
}

/* Decodes the envelope in column col of st into e. Returns 0 or -1 (logged). */
static int s_decode(sqlite3_stmt *st, int col, struct env *e)
{
    struct env_err err;
    const void *p = sqlite3_column_blob(st, col);
    int n = sqlite3_column_bytes(st, col);
    if (p == NULL || env_decode(e, p, (size_t)n, &err) != 0) {
        char why[300];
        log_msg(LOG_WARN, "a stored envelope is unreadable: %s", env_err_str(&err, why, sizeof why));
        return -1;
    }
    return 0;
}

/* The last route map of the conversation's messages into *rt. Returns 0 or
 * EXIT_UNAVAILABLE. */
static int s_last_route(sqlite3 *db, const char *conv, struct env *e, struct buf *tmp,
                        struct agent_route *rt)
{
    /* x'a5726f757465' is the key "route" as msgpack: rows without it are
     * skipped without decoding them. */
    static const char sql[] =
        "SELECT env FROM messages WHERE conversation = ?1 AND instr(env, x'a5726f757465') > 0"
        " ORDER BY ts DESC, seq DESC";
    sqlite3_stmt *st = NULL;
    memset(rt, 0, sizeof *rt);
    int status = s_prepare(db, sql, &st);
    if (status != 0) {
        return status;
    }
    sqlite3_bind_text(st, 1, conv, -1, SQLITE_STATIC);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        size_t n;
        if (s_decode(st, 0, e) != 0 || env_raw(e, ENV_ROUTE, &n) == NULL) {
            continue;
        }
        rt->found = true;
        if (env_map_buf(e, ENV_ROUTE, "queue", tmp) == 1 && tmp->len > 0) {
            s_copy(rt->queue, sizeof rt->queue, tmp->data);
        } else if (env_map_buf(e, ENV_ROUTE, "target", tmp) == 1 && strcmp(tmp->data, "bot") != 0) {
            s_copy(rt->queue, sizeof rt->queue, tmp->data);
        }
        if (env_map_buf(e, ENV_ROUTE, "agent", tmp) == 1) {
            s_copy(rt->agent, sizeof rt->agent, tmp->data);
        }
        rt->has_priority = env_map_int(e, ENV_ROUTE, "priority", &rt->priority) == 1;
        if (!rt->has_priority) {
            rt->priority = 0;
        }
        break;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        log_msg(LOG_ERROR, "reading the archive: %s", sqlite3_errmsg(db));
        status = EXIT_UNAVAILABLE;
    }
    sqlite3_finalize(st);
    return status;
}

/* The newest message of the conversation matching dirs ("in", or "in,out")
 * into e. Returns 1 found, 0 none, -1 error (logged). */
static int s_last_msg(sqlite3 *db, const char *conv, const char *dirs, struct env *e)
{
    static const char sql[] =
        "SELECT env FROM messages WHERE conversation = ?1"
        " AND instr(',' || ?2 || ',', ',' || dir || ',') > 0 ORDER BY ts DESC, seq DESC";
    sqlite3_stmt *st = NULL;
    if (s_prepare(db, sql, &st) != 0) {
        return -1;
    }
    sqlite3_bind_text(st, 1, conv, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, dirs, -1, SQLITE_STATIC);
    int rc;
    int found = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (s_decode(st, 0, e) == 0) {
            found = 1;
            break;
        }
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        log_msg(LOG_ERROR, "reading the archive: %s", sqlite3_errmsg(db));
        found = -1;
    }
    sqlite3_finalize(st);
    return found;
}

/* --- output of envelopes ---------------------------------------------- */

/* Checks, encodes and sends e to --out. Returns 0, or an exit code. */
static int s_send(struct agent_run *r, struct env *e)
{
    struct env_err err;
    char why[300];
    struct buf enc = { 0 };
    void *zctx = NULL;
    struct ep *ep = NULL;
    int status = EXIT_SOFTWARE;
    if (env_trace_add(e, "agent", stage_now_ms()) != 0) {
        log_msg(LOG_ERROR, "cannot stamp trace: envelope too large");
        goto done;
    }
    if (env_check(e, &err) != 0) {
        log_msg(LOG_ERROR, "refusing to send an invalid envelope: %s", env_err_str(&err, why, sizeof why));
        status = EXIT_DATAERR;
        goto done;
    }
    if (env_encode(e, &enc) != 0) {
        log_msg(LOG_ERROR, "out of memory");
        goto done;
    }
    status = EXIT_UNAVAILABLE;
    int64_t timeout = r->conf.timeout_ms;
    struct ep_opts eo = { .hwm = 1000, .linger_ms = timeout > 60000 ? 60000 : (int)timeout, .curve = NULL };
    if (r->out.mode != EP_STDIO && (zctx = zmq_ctx_new()) == NULL) {
        log_msg(LOG_ERROR, "--out: no ZeroMQ context: %s", zmq_strerror(zmq_errno()));
        goto done;
    }
    ep = ep_open(zctx, &r->out, EP_OUT, &eo, why, sizeof why);
    if (ep == NULL) {
        log_msg(LOG_ERROR, "--out %s", why);
        goto done;
    }
    int rc = ep_send(ep, enc.data, enc.len, eo.linger_ms);
    if (rc == 0 && ep_is_stdio(ep)) {
        rc = ep_flush(ep);
    }
    if (rc == EP_AGAIN) {
        log_msg(LOG_ERROR, "--out %s: nobody took the envelope within %lld ms (is the pipeline up?)",
                ep_name(ep), (long long)timeout);
        goto done;
    }
    if (rc != 0) {
        log_msg(LOG_ERROR, "--out %s: %s", ep_name(ep), strerror(errno));
        goto done;
    }
    status = 0;
done:
    /* Closing lingers (--timeout) so that what was queued is delivered. */
    ep_destroy(&ep);
    if (zctx != NULL) {
        zmq_ctx_term(zctx);
    }
    buf_free(&enc);
    return status;
}

/* v, id (a new ULID), ts now, channel and dir. Returns 0 or -1. */
static int s_env_base(struct env *e, const char *channel, const char *dir)
{
    static struct ulid_gen gen;
    char id[ULID_LEN + 1];
    uint64_t now = stage_now_ms();
    if (ulid_next(&gen, now, id) != 0) {
        log_msg(LOG_ERROR, "no randomness for an id: %s", strerror(errno));
        return -1;
    }
    env_clear(e);
    env_set_uint(e, ENV_V, ENV_VERSION);
    env_set_uint(e, ENV_TS, now);
    int rc = env_set(e, ENV_ID, id, NULL);
    rc |= env_set(e, ENV_CHANNEL, env_channel_valid(channel) ? channel : "api", NULL);
    rc |= env_set(e, ENV_DIR, dir, NULL);
    return rc;
}

/* The channel an event about the conversation goes on: that of its last
 * inbound message, else of its last message, else api. */
static int s_event_channel(struct agent_run *r, const char *conv, char *out, size_t n)
{
    static const char sql[] =
        "SELECT channel FROM messages WHERE conversation = ?1"
        " ORDER BY dir = 'in' DESC, ts DESC, seq DESC LIMIT 1";
    sqlite3_stmt *st = NULL;
    int status = s_prepare(r->db, sql, &st);
    if (status != 0) {
        return status;
    }
    sqlite3_bind_text(st, 1, conv, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    s_copy(out, n, rc == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : "api");
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        log_msg(LOG_ERROR, "reading the archive: %s", sqlite3_errmsg(r->db));
        status = EXIT_UNAVAILABLE;
    }
    sqlite3_finalize(st);
    return status;
}

/* An event about conversation c by the agent, meta from kv, into e (route
 * from rkv when nr > 0). Returns 0, or an exit code. */
static int s_event(struct agent_run *r, const struct agent_conv *c, struct env *e,
                   const struct env_kv *kv, size_t n, const struct env_kv *rkv, size_t nr)
{
    char channel[32];
    struct env_err err;
    char why[300];
    int status = s_event_channel(r, c->id, channel, sizeof channel);
    if (status != 0) {
        return status;
    }
    if (s_env_base(e, channel, "event") != 0) {
        return EXIT_SOFTWARE;
    }
    int rc = env_set(e, ENV_FROM, r->by, &err);
    if (rc == 0 && c->customer[0] != '\0') {
        rc = env_set(e, ENV_CUSTOMER, c->customer, &err);
    }
    if (rc == 0) {
        rc = env_set(e, ENV_CONVERSATION, c->id, &err);
    }
    if (rc == 0) {
        rc = env_set_map(e, ENV_META, kv, n, &err);
    }
    if (rc == 0 && nr > 0) {
        rc = env_set_map(e, ENV_ROUTE, rkv, nr, &err);
    }
    if (rc != 0) {
        log_msg(LOG_ERROR, "cannot build the event: %s", env_err_str(&err, why, sizeof why));
        return EXIT_USAGE;
    }
    return 0;
}

/* --- queue ------------------------------------------------------------ */

/* One waiting conversation, its line already written. */
struct agent_waiting {
    int64_t priority;           /* route.priority (0 when none) */
    int64_t since;              /* first unanswered inbound ts, or -1 */
    int64_t activity;           /* last activity, a tie breaker */
    char *conv;                 /* conversation id, the last tie breaker */
    char *line;                 /* the output line, newline included */
};

static int s_waiting_cmp(const void *pa, const void *pb)
{
    const struct agent_waiting *a = pa, *b = pb;
    if (a->priority != b->priority) {
        return a->priority > b->priority ? -1 : 1;
    }
    if (a->since != b->since) {
        if (a->since < 0 || b->since < 0) {
            return a->since < 0 ? 1 : -1;       /* answered ones after */
        }
        return a->since < b->since ? -1 : 1;
    }
    if (a->activity != b->activity) {
        return a->activity < b->activity ? -1 : 1;
    }
    return strcmp(a->conv, b->conv);
}

/* Writes the line of one waiting conversation into line. */
static void s_queue_line(struct buf *line, bool json, int64_t now, const char *conv,
                         const char *customer, const char *status, const char *channels,
                         const struct agent_route *rt, int64_t since, const struct env *in,
                         const struct env *last, bool have_in, bool have_last, struct buf *tmp)
{
    const char *handle = have_in ? env_get(in, ENV_FROM) : NULL;
    const char *queue = rt->queue[0] != '\0' ? rt->queue : NULL;
    buf_reset(line);
    if (!json) {
        char wait[32];
        s_wait(now, since, wait, sizeof wait);
        buf_printf(line, "%4lld  %-7s %-12s %-30s %-16s %-*s ", (long long)rt->priority, wait,
                   queue ? queue : "-", conv, channels, HANDLE_WIDTH, handle ? handle : "-");
        if (have_last) {
            const char *text = env_get(last, ENV_TEXT);
            const char *subject = env_get(last, ENV_SUBJECT);
            int left = PREVIEW_CHARS;
            buf_puts(line, strcmp(env_get(last, ENV_DIR), "out") == 0 ? "» " : "« ");
            if (text != NULL && text[0] != '\0') {
                s_clean(line, text, true, &left);
            } else if (subject != NULL) {
                s_clean(line, subject, true, &left);
            } else {
                buf_puts(line, "(attachment)");
            }
        }
        while (line->len > 0 && line->data[line->len - 1] == ' ') {
            line->data[--line->len] = '\0';
        }
        buf_putc(line, '\n');
        return;
    }
    buf_puts(line, "{\"conversation\":");
    s_json_str(line, conv);
    buf_puts(line, ",\"customer\":");
    s_json_str(line, customer);
    buf_puts(line, ",\"status\":");
    s_json_str(line, status);
    buf_puts(line, ",\"queue\":");
    s_json_str(line, queue);
    buf_printf(line, ",\"priority\":%lld,\"waiting_since\":", (long long)rt->priority);
    if (since >= 0) {
        buf_printf(line, "%lld,\"wait_ms\":%lld", (long long)since,
                   (long long)(now > since ? now - since : 0));
    } else {
        buf_puts(line, "null,\"wait_ms\":null");
    }
    buf_puts(line, ",\"channels\":[");
    const char *p = channels;
    while (*p != '\0') {
        size_t n = strcspn(p, ",");
        if (n > 0) {
            if (line->data[line->len - 1] != '[') {
                buf_putc(line, ',');
            }
            buf_json_str(line, p, n);
        }
        p += n + (p[n] == ',' ? 1 : 0);
    }
    buf_puts(line, "],\"handle\":");
    s_json_str(line, handle);
    buf_puts(line, ",\"name\":");
    const char *name = NULL;
    static const char *const name_keys[] = { "profile_name", "name", "first_name" };
    for (size_t i = 0; have_in && name == NULL && i < 3; i++) {
        if (env_map_buf(in, ENV_META, name_keys[i], tmp) == 1 && tmp->len > 0) {
            name = tmp->data;
        }
    }
    s_json_str(line, name);
    buf_puts(line, ",\"last\":");
    if (have_last) {
        buf_puts(line, "{\"id\":");
        s_json_str(line, env_get(last, ENV_ID));
        buf_printf(line, ",\"ts\":%llu,\"dir\":", (unsigned long long)last->ts);
        s_json_str(line, env_get(last, ENV_DIR));
        buf_puts(line, ",\"channel\":");
        s_json_str(line, env_get(last, ENV_CHANNEL));
        buf_puts(line, ",\"subject\":");
        s_json_str(line, env_get(last, ENV_SUBJECT));
        buf_puts(line, ",\"text\":");
        s_json_str(line, env_get(last, ENV_TEXT));
        buf_putc(line, '}');
    } else {
        buf_puts(line, "null");
    }
    buf_puts(line, "}\n");
}

static int s_queue(struct agent_run *r)
{
    /* Waiting: queued (routed to a queue, no agent), or open (nothing
     * routed it) with an inbound message nobody answered. since is the
     * first inbound after the last outbound. */
    static const char sql[] =
        "SELECT c.id, c.customer, c.status, c.channels, c.last_activity,"
        " (SELECT min(m.ts) FROM messages m WHERE m.conversation = c.id AND m.dir = 'in'"
        "  AND m.ts > coalesce((SELECT max(o.ts) FROM messages o"
        "   WHERE o.conversation = c.id AND o.dir = 'out'), -1))"
        " FROM conversations c WHERE c.status IN ('queued', 'open')";
    sqlite3_stmt *st = NULL;
    struct env *in = env_new(), *last = env_new(), *tmp_env = env_new();
    struct buf line = { 0 }, tmp = { 0 };
    struct agent_waiting *list = NULL;
    size_t n = 0, cap = 0;
    int64_t now = (int64_t)stage_now_ms();
    int status = EXIT_SOFTWARE;
    if (in == NULL || last == NULL || tmp_env == NULL) {
        log_msg(LOG_ERROR, "out of memory");
        goto done;
    }
    status = s_prepare(r->db, sql, &st);
    if (status != 0) {
        goto done;
    }
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *conv = (const char *)sqlite3_column_text(st, 0);
        const char *customer = (const char *)sqlite3_column_text(st, 1);
        const char *cstatus = (const char *)sqlite3_column_text(st, 2);
        const char *channels = (const char *)sqlite3_column_text(st, 3);
        int64_t since = sqlite3_column_type(st, 5) == SQLITE_NULL ? -1 : sqlite3_column_int64(st, 5);
        if (strcmp(cstatus, "open") == 0 && since < 0) {
            continue;       /* nothing routed it, and nothing waits for an answer */
        }
        struct agent_route rt;
        status = s_last_route(r->db, conv, tmp_env, &tmp, &rt);
        if (status != 0) {
            goto done;
        }
        if (r->conf.queue != NULL && strcmp(rt.queue, r->conf.queue) != 0) {
            continue;
        }
        int have_in = s_last_msg(r->db, conv, "in", in);
        int have_last = s_last_msg(r->db, conv, "in,out", last);
        if (have_in < 0 || have_last < 0) {
            status = EXIT_UNAVAILABLE;
            goto done;
        }
        s_queue_line(&line, r->conf.json, now, conv, customer, cstatus, channels, &rt, since, in, last,
                     have_in == 1, have_last == 1, &tmp);
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            struct agent_waiting *nl = realloc(list, ncap * sizeof *nl);
            if (nl == NULL) {
                log_msg(LOG_ERROR, "out of memory");
                status = EXIT_SOFTWARE;
                goto done;
            }
            list = nl;
            cap = ncap;
        }
        struct agent_waiting *w = &list[n];
        w->priority = rt.priority;
        w->since = since;
        w->activity = sqlite3_column_int64(st, 4);
        w->conv = strdup(conv);
        w->line = strdup(line.data);
        if (w->conv == NULL || w->line == NULL) {
            free(w->conv);
            free(w->line);
            log_msg(LOG_ERROR, "out of memory");
            status = EXIT_SOFTWARE;
            goto done;
        }
        n++;
    }
    if (rc != SQLITE_DONE) {
        log_msg(LOG_ERROR, "reading the archive: %s", sqlite3_errmsg(r->db));
        status = EXIT_UNAVAILABLE;
        goto done;
    }
    status = 0;
    qsort(list, n, sizeof *list, s_waiting_cmp);
    size_t shown = r->conf.limit > 0 && (size_t)r->conf.limit < n ? (size_t)r->conf.limit : n;
    if (!r->conf.json && shown > 0) {
        printf(" PRI  WAIT    QUEUE        CONVERSATION                   CHANNELS         %-*s LAST MESSAGE\n",
               HANDLE_WIDTH, "CUSTOMER");
    }
    for (size_t i = 0; i < shown; i++) {
        fputs(list[i].line, stdout);
    }
    if (fflush(stdout) != 0) {
        status = EXIT_IOERR;
    }
    log_msg(shown > 0 ? LOG_DEBUG : LOG_INFO, "%zu conversation%s waiting%s%s", n, n == 1 ? "" : "s",
            r->conf.queue ? " in queue " : "", r->conf.queue ? r->conf.queue : "");
done:
    for (size_t i = 0; i < n; i++) {
        free(list[i].conv);
        free(list[i].line);
    }
    free(list);
    sqlite3_finalize(st);
    env_destroy(&in);
    env_destroy(&last);
    env_destroy(&tmp_env);
    buf_free(&line);
    buf_free(&tmp);
    return status;
}

/* --- claim, close, note ----------------------------------------------- */

static int s_claim(struct agent_run *r)
{
    struct agent_conv c;
    struct agent_route rt;
    struct buf tmp = { 0 };
    struct env *e = env_new();
    int status = EXIT_SOFTWARE;
    if (e == NULL) {
        log_msg(LOG_ERROR, "out of memory");
        goto done;
    }
    status = s_conv(r, r->pos[0], &c);
    if (status == 0) {
        status = s_last_route(r->db, c.id, e, &tmp, &rt);
    }
    if (status != 0) {
        goto done;
    }
    if (strcmp(c.status, "closed") == 0) {
        log_msg(LOG_WARN, "conversation %s is closed; claiming it anyway", c.id);
    } else if (strcmp(c.status, "assigned") == 0 && rt.agent[0] != '\0'
               && strcmp(rt.agent, r->name) != 0 && strcmp(rt.agent, r->by) != 0) {
        log_msg(LOG_WARN, "conversation %s was with %s; %s takes it over", c.id, rt.agent, r->name);
    }
    const char *queue = rt.queue[0] != '\0' ? rt.queue : NULL;
    const struct env_kv meta[] = {
        { .key = "event", .type = ENV_KV_STR, .s = "assign" },
        { .key = "agent", .type = ENV_KV_STR, .s = r->name },
        { .key = "conversation", .type = ENV_KV_STR, .s = c.id },
        { .key = "queue", .type = ENV_KV_STR, .s = queue },
        { .key = "by", .type = ENV_KV_STR, .s = r->by },
    };
    /* route.agent: the archive marks the conversation assigned, as it does
     * for omni-route's own assign events. */
    const struct env_kv route[] = {
        { .key = "target", .type = ENV_KV_STR, .s = queue },
        { .key = "queue", .type = ENV_KV_STR, .s = queue },
        { .key = "agent", .type = ENV_KV_STR, .s = r->name },
        { .key = "priority", .type = ENV_KV_INT, .i = rt.priority },
        { .key = "rule", .type = ENV_KV_STR, .s = "claim" },
        { .key = "sticky", .type = ENV_KV_BOOL, .b = true },
    };
    status = s_event(r, &c, e, meta, sizeof meta / sizeof meta[0], route, sizeof route / sizeof route[0]);
    if (status == 0) {
        status = s_send(r, e);
    }
    if (status == 0) {
        log_msg(LOG_INFO, "claimed %s for %s (id=%s)", c.id, r->name, env_get(e, ENV_ID));
    }
done:
    env_destroy(&e);
    buf_free(&tmp);
    return status;
}

static int s_close(struct agent_run *r)
{
    struct agent_conv c;
    struct env *e = env_new();
    int status = EXIT_SOFTWARE;
    if (e == NULL) {
        log_msg(LOG_ERROR, "out of memory");
        goto done;
    }
    status = s_conv(r, r->pos[0], &c);
    if (status != 0) {
        goto done;
    }
    if (strcmp(c.status, "closed") == 0) {
        log_msg(LOG_WARN, "conversation %s is already closed; closing it again", c.id);
    }
    const char *reason = r->conf.reason != NULL && r->conf.reason[0] != '\0' ? r->conf.reason : NULL;
    const struct env_kv meta[] = {
        { .key = "event", .type = ENV_KV_STR, .s = "close" },
        { .key = "conversation", .type = ENV_KV_STR, .s = c.id },
        { .key = "by", .type = ENV_KV_STR, .s = r->by },
        { .key = "agent", .type = ENV_KV_STR, .s = r->name },
        { .key = "reason", .type = ENV_KV_STR, .s = reason },
    };
    status = s_event(r, &c, e, meta, sizeof meta / sizeof meta[0], NULL, 0);
    if (status == 0) {
        status = s_send(r, e);
    }
    if (status == 0) {
        log_msg(LOG_INFO, "closed %s (id=%s)", c.id, env_get(e, ENV_ID));
    }
done:
    env_destroy(&e);
    return status;
}

static int s_note(struct agent_run *r)
{
    struct agent_conv c;
    struct buf text = { 0 };
    struct env *e = env_new();
    int status = EXIT_SOFTWARE;
    if (e == NULL) {
        log_msg(LOG_ERROR, "out of memory");
        goto done;
    }
    status = s_text_arg(r, 1, &text);
    if (status == 0) {
        status = s_conv(r, r->pos[0], &c);
    }
    if (status != 0) {
        goto done;
    }
    const struct env_kv meta[] = {
        { .key = "event", .type = ENV_KV_STR, .s = "note" },
        { .key = "conversation", .type = ENV_KV_STR, .s = c.id },
        { .key = "agent", .type = ENV_KV_STR, .s = r->name },
        { .key = "by", .type = ENV_KV_STR, .s = r->by },
        { .key = "text", .type = ENV_KV_STR, .s = text.data },
    };
    status = s_event(r, &c, e, meta, sizeof meta / sizeof meta[0], NULL, 0);
    if (status == 0) {
        status = s_send(r, e);
    }
    if (status == 0) {
        log_msg(LOG_INFO, "noted on %s (id=%s)", c.id, env_get(e, ENV_ID));
    }
done:
    env_destroy(&e);
    buf_free(&text);
    return status;
}

/* --- reply ------------------------------------------------------------ */

/* True for the channels a text can be sent back on. An inbound message on
 * another (a call summary, a note from the shop counter, a system's API
 * call) says something about the customer but cannot be answered there. */
static bool s_replyable(const char *channel)
{
    static const char *const ok[] = { "whatsapp", "sms", "telegram", "messenger", "email", "webchat", NULL };
    for (size_t i = 0; ok[i] != NULL; i++) {
        if (strcmp(ok[i], channel) == 0) {
            return true;
        }
    }
    return false;
}

/* The customer's last inbound message of the conversation on a channel a
 * reply can take, into e. Returns 0, EXIT_DATAERR when there is none, or
 * EXIT_UNAVAILABLE. */
static int s_reply_target(struct agent_run *r, const char *conv, struct env *e)
{
    static const char sql[] =
        "SELECT env, channel FROM messages WHERE conversation = ?1 AND dir = 'in'"
        " ORDER BY ts DESC, seq DESC";
    sqlite3_stmt *st = NULL;
    int status = s_prepare(r->db, sql, &st);
    if (status != 0) {
        return status;
    }
    sqlite3_bind_text(st, 1, conv, -1, SQLITE_STATIC);
    int rc;
    status = EXIT_DATAERR;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *channel = (const char *)sqlite3_column_text(st, 1);
        if (channel == NULL || !s_replyable(channel)) {
            log_msg(LOG_DEBUG, "skipping an inbound %s message: no reply goes by %s", channel, channel);
            continue;
        }
        if (s_decode(st, 0, e) == 0 && env_get(e, ENV_FROM) != NULL) {
            status = 0;
            break;
        }
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        log_msg(LOG_ERROR, "reading the archive: %s", sqlite3_errmsg(r->db));
        status = EXIT_UNAVAILABLE;
    } else if (status == EXIT_DATAERR) {
        log_msg(LOG_ERROR, "conversation %s has no inbound message to answer (on a channel a reply can take)",
                conv);
    }
    sqlite3_finalize(st);
    return status;
}

/* An e-mail reply to q: its subject ("Re: …") into e; the parent's
 * Message-ID into mid and the References chain into refs
 * (mail_reply_thread). Returns 0, or -1 with err filled. */
static int s_reply_email(const struct env *q, struct env *e, struct buf *mid, struct buf *refs,
                         struct env_err *err)
{
    struct buf subject = { 0 };
    int rc = mail_reply_thread(q, &subject, mid, refs);
    if (rc != 0) {
        snprintf(err->field, sizeof err->field, "envelope");
        snprintf(err->reason, sizeof err->reason, "out of memory");
    } else if (subject.len > 0) {
        rc = env_set(e, ENV_SUBJECT, subject.data, err);
    }
    buf_free(&subject);
    return rc;
}

static int s_reply(struct agent_run *r)
{
    struct agent_conv c;
    struct buf text = { 0 }, mid = { 0 }, refs = { 0 };
    struct env *q = env_new(), *e = env_new();
    struct env_err err;
    char why[300];
    int status = EXIT_SOFTWARE;
    if (q == NULL || e == NULL) {
        log_msg(LOG_ERROR, "out of memory");
        goto done;
    }
    status = s_text_arg(r, 1, &text);
    if (status == 0) {
        status = s_conv(r, r->pos[0], &c);
    }
    if (status == 0) {
        status = s_reply_target(r, c.id, q);
    }
    if (status != 0) {
        goto done;
    }
    if (strcmp(c.status, "closed") == 0) {
        log_msg(LOG_WARN, "conversation %s is closed; replying anyway", c.id);
    }
    const char *channel = env_get(q, ENV_CHANNEL);
    status = EXIT_SOFTWARE;
    if (s_env_base(e, channel, "out") != 0) {
        goto done;
    }
    status = EXIT_USAGE;
    /* From where the customer wrote to, to where they wrote from. */
    int rc = env_set(e, ENV_TO, env_get(q, ENV_FROM), &err);
    if (rc == 0 && env_get(q, ENV_TO) != NULL) {
        rc = env_set(e, ENV_FROM, env_get(q, ENV_TO), &err);
    }
    if (rc == 0) {
        rc = env_set(e, ENV_TEXT, text.data, &err);
    }
    if (rc == 0 && c.customer[0] != '\0') {
        rc = env_set(e, ENV_CUSTOMER, c.customer, &err);
    }
    if (rc == 0) {
        rc = env_set(e, ENV_CONVERSATION, c.id, &err);
    }
    if (rc == 0) {
        rc = env_set(e, ENV_REPLY_TO, env_get(q, ENV_ID), &err);
    }
    if (rc == 0 && strcmp(channel, "email") == 0) {
        rc = s_reply_email(q, e, &mid, &refs, &err);
    }
    if (rc == 0) {
        const struct env_kv meta[] = {
            { .key = "agent", .type = ENV_KV_STR, .s = r->name },
            { .key = "in_reply_to", .type = ENV_KV_STR, .s = mid.len > 0 ? mid.data : NULL },
            { .key = "references", .type = ENV_KV_STR, .s = refs.len > 0 ? refs.data : NULL },
        };
        rc = env_set_map(e, ENV_META, meta, sizeof meta / sizeof meta[0], &err);
    }
    if (rc != 0) {
        log_msg(LOG_ERROR, "cannot build the reply: %s", env_err_str(&err, why, sizeof why));
        goto done;
    }
    status = s_send(r, e);
    if (status == 0) {
        log_msg(LOG_INFO, "reply id=%s to %s by %s (conversation %s, answering id=%s)", env_get(e, ENV_ID),
                env_get(e, ENV_TO), channel, c.id, env_get(q, ENV_ID));
    }
done:
    env_destroy(&q);
    env_destroy(&e);
    buf_free(&text);
    buf_free(&mid);
    buf_free(&refs);
    return status;
}

/* --- show ------------------------------------------------------------- */

/* Runs sql with ?1 = arg; the first column of the first row into out (NULL
 * becomes ""). Returns 1 row, 0 none, -1 error (logged). */
static int s_query_text(sqlite3 *db, const char *sql, const char *arg, struct buf *out)
{
    sqlite3_stmt *st = NULL;
    buf_reset(out);
    if (s_prepare(db, sql, &st) != 0) {
        return -1;
    }
    sqlite3_bind_text(st, 1, arg, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    int found = 0;
    if (rc == SQLITE_ROW) {
        const char *s = (const char *)sqlite3_column_text(st, 0);
        found = buf_puts(out, s != NULL ? s : "") == 0 ? 1 : -1;
    } else if (rc != SQLITE_DONE) {
        log_msg(LOG_ERROR, "reading the archive: %s", sqlite3_errmsg(db));
        found = -1;
    }
    sqlite3_finalize(st);
    return found;
}

/* Whose history `show who` is: customers (a JSON array), a conversation
 * with no customer (conv), or a handle's messages with no customer
 * (handle). Returns 0, EXIT_DATAERR when who is unknown, or an exit code. */
static int s_show_who(struct agent_run *r, const char *who, struct buf *customers, const char **conv,
                      const char **handle)
{
    static const char conv_sql[] =
        "SELECT customer FROM conversations WHERE id = ?1"
        " UNION ALL SELECT customer FROM messages WHERE conversation = ?1 LIMIT 1";
    static const char customer_sql[] =
        "SELECT json_array(?1) WHERE EXISTS (SELECT 1 FROM messages WHERE customer = ?1)"
        " OR EXISTS (SELECT 1 FROM conversations WHERE customer = ?1)";
    static const char handle_sql[] =
        "SELECT json_group_array(DISTINCT customer), count(*) FROM messages"
        " WHERE (\"from\" = ?1 OR \"to\" = ?1)";
    struct buf tmp = { 0 };
    int status = EXIT_UNAVAILABLE;
    *conv = NULL;
    *handle = NULL;
    int got = s_query_text(r->db, conv_sql, who, &tmp);
    if (got < 0) {
        goto done;
    }
    if (got == 1) {
        buf_reset(customers);
        if (tmp.len == 0) {
            *conv = who;
            buf_puts(customers, "[]");
        } else {
            buf_puts(customers, "[");
            buf_json_str(customers, tmp.data, tmp.len);
            buf_puts(customers, "]");
        }
        status = 0;
        goto done;
    }
    got = s_query_text(r->db, customer_sql, who, customers);
    if (got < 0) {
        goto done;
    }
    if (got == 1) {
        status = 0;
        goto done;
    }
    /* json_group_array of NULLs only is "[]"; a handle nobody used: "[]" with count 0. */
    got = s_query_text(r->db, handle_sql, who, customers);
    if (got < 0) {
        goto done;
    }
    sqlite3_stmt *st = NULL;
    int64_t count = 0;
    if (s_prepare(r->db, "SELECT count(*) FROM messages WHERE \"from\" = ?1 OR \"to\" = ?1", &st) == 0) {
        sqlite3_bind_text(st, 1, who, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) {
            count = sqlite3_column_int64(st, 0);
        }
    }
    sqlite3_finalize(st);
    if (count == 0) {
        log_msg(LOG_ERROR, "no conversation, customer or handle %s in %s", who, r->conf.archive);
        status = EXIT_DATAERR;
        goto done;
    }
    /* json_group_array keeps NULL: drop it. */
    got = s_query_text(r->db, "SELECT json_group_array(value) FROM json_each(?1) WHERE value IS NOT NULL",
                       customers->data, &tmp);
    if (got != 1) {
        goto done;
    }
    buf_reset(customers);
    buf_append(customers, tmp.data, tmp.len);
    *handle = who;
    status = 0;
done:
    buf_free(&tmp);
    return status;
}

/* Appends the strings of an array entry of a map key (meta.handles) to out,
 * separated by ", ". */
static void s_map_strings(const struct env *e, enum env_key k, const char *name, struct buf *out)
{
    size_t n;
    const void *p = env_map_raw(e, k, name, &n);
    struct mp_reader r;
    struct mp_val v;
    if (p == NULL) {
        return;
    }
    mp_reader_init(&r, p, n);
    if (mp_read(&r, &v) != 0 || v.type != MP_ARRAY) {
        return;
    }
    uint32_t count = v.n;
    for (uint32_t i = 0; i < count; i++) {
        if (mp_read(&r, &v) != 0 || v.type != MP_STR) {
            return;
        }
        struct buf s = { 0 };
        if (buf_append(&s, v.s, v.n) == 0) {
            if (i > 0) {
                buf_puts(out, ", ");
            }
            s_clean(out, s.data, true, NULL);
        }
        buf_free(&s);
    }
}

/* Appends one line per attachment: "[image faca.jpg, 984333 bytes] URL". */
static void s_attachments(const struct env *e, struct buf *out)
{
    size_t n;
    const void *p = env_raw(e, ENV_ATTACHMENTS, &n);
    struct mp_reader r;
    struct mp_val v;
    if (p == NULL) {
        return;
    }
    mp_reader_init(&r, p, n);
    if (mp_read(&r, &v) != 0 || v.type != MP_ARRAY) {
        return;
    }
    uint32_t count = v.n;
    struct buf s = { 0 }, type = { 0 }, name = { 0 }, url = { 0 };
    for (uint32_t i = 0; i < count; i++) {
        struct mp_val m;
        if (mp_read(&r, &m) != 0 || m.type != MP_MAP) {
            break;
        }
        uint64_t size = 0;
        buf_reset(&type);
        buf_reset(&name);
        buf_reset(&url);
        bool bad = false;
        for (uint32_t j = 0; j < m.n && !bad; j++) {
            struct mp_val key, val;
            if (mp_read(&r, &key) != 0 || key.type != MP_STR) {
                bad = true;
                break;
            }
            struct mp_reader peek = r;
            if (mp_read(&peek, &val) != 0) {
                bad = true;
                break;
            }
            struct buf *dst = key.n == 4 && memcmp(key.s, "type", 4) == 0 ? &type
                            : key.n == 4 && memcmp(key.s, "name", 4) == 0 ? &name
                            : key.n == 3 && memcmp(key.s, "url", 3) == 0 ? &url : NULL;
            if (dst != NULL && val.type == MP_STR) {
                buf_reset(&s);
                buf_append(&s, val.s, val.n);
                s_clean(dst, s.data, true, NULL);
            } else if (key.n == 4 && memcmp(key.s, "size", 4) == 0 && val.type == MP_UINT) {
                size = val.u;
            }
            bad = mp_skip(&r) != 0;
        }
        if (bad) {
            break;
        }
        buf_printf(out, "    [%s%s%s", type.len ? type.data : "attachment", name.len ? " " : "",
                   name.len ? name.data : "");
        if (size > 0) {
            buf_printf(out, ", %llu bytes", (unsigned long long)size);
        }
        buf_printf(out, "]%s%s\n", url.len ? " " : "", url.len ? url.data : "");
    }
    buf_free(&s);
    buf_free(&type);
    buf_free(&name);
    buf_free(&url);
}

/* Appends text as indented lines, cleaned for the terminal; a run of
 * quoted lines ("> …", an e-mail's history) becomes one line saying so. */
static void s_body(struct buf *out, const char *text)
{
    struct buf line = { 0 };
    int quoted = 0;
    size_t pending_blank = 0;
    const char *p = text;
    while (*p != '\0') {
        size_t n = strcspn(p, "\n");
        buf_reset(&line);
        buf_append(&line, p, n);
        p += n + (p[n] == '\n' ? 1 : 0);
        while (line.len > 0 && strchr(" \t\r", line.data[line.len - 1]) != NULL) {
            line.data[--line.len] = '\0';
        }
        const char *s = line.data != NULL ? line.data : "";
        s += strspn(s, " \t");
        if (*s == '>') {
            quoted++;
            continue;
        }
        if (quoted > 0) {
            buf_printf(out, "    > (%d quoted line%s)\n", quoted, quoted == 1 ? "" : "s");
            quoted = 0;
        }
        if (line.len == 0) {
            pending_blank++;
            continue;
        }
        for (; pending_blank > 0; pending_blank--) {
            buf_putc(out, '\n');
        }
        buf_puts(out, "    ");
        s_clean(out, line.data, false, NULL);
        buf_putc(out, '\n');
    }
    if (quoted > 0) {
        buf_printf(out, "    > (%d quoted line%s)\n", quoted, quoted == 1 ? "" : "s");
    }
    buf_free(&line);
}

/* Appends one message or event of the history, readable. */
static void s_show_env(struct buf *out, const struct env *e, struct buf *tmp)
{
    char when[32];
    const char *dir = env_get(e, ENV_DIR);
    const char *channel = env_get(e, ENV_CHANNEL);
    const char *from = env_get(e, ENV_FROM);
    const char *to = env_get(e, ENV_TO);
    const char *text = env_get(e, ENV_TEXT);
    const char *subject = env_get(e, ENV_SUBJECT);
    s_when((int64_t)e->ts, when, sizeof when);
    buf_printf(out, "%s  %-9s ", when, channel ? channel : "-");
    bool event = dir != NULL && strcmp(dir, "event") == 0;
    char ev[32] = "event";
    if (event) {
        if (env_map_buf(e, ENV_META, "event", tmp) == 1 && tmp->len > 0) {
            s_copy(ev, sizeof ev, tmp->data);
        }
        buf_reset(tmp);
        s_clean(tmp, ev, true, NULL);
        buf_printf(out, "%-6s", tmp->data);
        const char *who = NULL;
        struct buf name = { 0 };
        if (env_map_buf(e, ENV_META, "agent", &name) == 1 && name.len > 0) {
            who = name.data;
        } else if (env_map_buf(e, ENV_META, "by", &name) == 1 && name.len > 0) {
            who = name.data;
        } else {
            who = from;
        }
        if (who != NULL) {
            buf_puts(out, " by ");
            s_clean(out, who, true, NULL);
        }
        buf_free(&name);
        buf_putc(out, '\n');
        if (strcmp(ev, "note") == 0 && env_map_buf(e, ENV_META, "text", tmp) == 1) {
            struct buf t = { 0 };
            buf_append(&t, tmp->data, tmp->len);
            s_body(out, t.data != NULL ? t.data : "");
            buf_free(&t);
        } else if (strcmp(ev, "link") == 0 || strcmp(ev, "unlink") == 0) {
            buf_puts(out, "    ");
            size_t before = out->len;
            s_map_strings(e, ENV_META, "handles", out);
            if (out->len == before) {
                out->len -= 4;
                out->data[out->len] = '\0';
            } else {
                buf_putc(out, '\n');
            }
        } else if (strcmp(ev, "assign") == 0) {
            struct buf q = { 0 };
            if (env_map_buf(e, ENV_META, "queue", &q) == 1 && q.len > 0) {
                buf_puts(out, "    queue ");
                s_clean(out, q.data, true, NULL);
                buf_putc(out, '\n');
            }
            buf_free(&q);
        }
        if (env_map_buf(e, ENV_META, "reason", tmp) == 1 && tmp->len > 0) {
            struct buf t = { 0 };
            buf_puts(&t, "reason: ");
            buf_append(&t, tmp->data, tmp->len);
            s_body(out, t.data);
            buf_free(&t);
        }
        return;
    }
    bool outbound = dir != NULL && strcmp(dir, "out") == 0;
    buf_printf(out, "%-6s ", dir ? dir : "-");
    const char *handle = outbound ? to : from;
    s_clean(out, handle ? handle : "-", true, NULL);
    if (outbound) {
        size_t n;
        if (env_map_buf(e, ENV_META, "agent", tmp) == 1 && tmp->len > 0) {
            buf_puts(out, "  by ");
            struct buf t = { 0 };
            buf_append(&t, tmp->data, tmp->len);
            s_clean(out, t.data, true, NULL);
            buf_free(&t);
        } else if (env_raw(e, ENV_BOT, &n) != NULL) {
            buf_puts(out, "  by the bot");
        }
    } else {
        static const char *const name_keys[] = { "profile_name", "name", "first_name" };
        for (size_t i = 0; i < 3; i++) {
            if (env_map_buf(e, ENV_META, name_keys[i], tmp) == 1 && tmp->len > 0) {
                struct buf t = { 0 };
                buf_append(&t, tmp->data, tmp->len);
                buf_puts(out, "  (");
                s_clean(out, t.data, true, NULL);
                buf_putc(out, ')');
                buf_free(&t);
                break;
            }
        }
    }
    buf_putc(out, '\n');
    if (subject != NULL && subject[0] != '\0') {
        buf_puts(out, "    Subject: ");
        s_clean(out, subject, true, NULL);
        buf_putc(out, '\n');
    }
    if (text != NULL) {
        s_body(out, text);
    }
    s_attachments(e, out);
}

/* Appends the header of a conversation in the history. */
static int s_show_conv(struct agent_run *r, const char *conv, struct env *tmp_env, struct buf *tmp,
                       struct buf *out)
{
    struct agent_conv c;
    struct agent_route rt;
    if (conv == NULL) {
        buf_puts(out, "\n── no conversation ──\n");
        return 0;
    }
    memset(&c, 0, sizeof c);
    sqlite3_stmt *st = NULL;
    int status = s_prepare(r->db, "SELECT status, channels FROM conversations WHERE id = ?1", &st);
    if (status != 0) {
        return status;
    }
    sqlite3_bind_text(st, 1, conv, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) {
        s_copy(c.status, sizeof c.status, (const char *)sqlite3_column_text(st, 0));
        s_copy(c.channels, sizeof c.channels, (const char *)sqlite3_column_text(st, 1));
    }
    sqlite3_finalize(st);
    status = s_last_route(r->db, conv, tmp_env, tmp, &rt);
    if (status != 0) {
        return status;
    }
    buf_puts(out, "\n── conversation ");
    s_clean(out, conv, true, NULL);
    if (c.status[0] != '\0') {
        buf_printf(out, " · %s", c.status);
    }
    if (rt.queue[0] != '\0') {
        buf_printf(out, " · queue %s", rt.queue);
    }
    if (rt.agent[0] != '\0' && strcmp(c.status, "assigned") == 0) {
        buf_printf(out, " · agent %s", rt.agent);
    }
    if (rt.has_priority) {
        buf_printf(out, " · priority %lld", (long long)rt.priority);
    }
    if (c.channels[0] != '\0') {
        buf_printf(out, " · %s", c.channels);
    }
    buf_puts(out, " ──\n");
    return 0;
}

/* Appends the first line of the history: who, their handles, how many
 * conversations. */
static int s_show_head(struct agent_run *r, const char *who, const char *customers, struct buf *out)
{
    static const char handles_sql[] =
        "SELECT h FROM (SELECT CASE WHEN dir = 'out' THEN \"to\" ELSE \"from\" END h, ts FROM messages"
        "  WHERE customer IN (SELECT value FROM json_each(?1)) AND dir IN ('in', 'out'))"
        " WHERE h IS NOT NULL AND h NOT LIKE 'api:%' AND h NOT LIKE 'agent:%'"
        " GROUP BY h ORDER BY min(ts), h";
    static const char convs_sql[] =
        "SELECT count(DISTINCT conversation) FROM messages"
        " WHERE customer IN (SELECT value FROM json_each(?1)) AND conversation IS NOT NULL";
    sqlite3_stmt *st = NULL;
    struct buf list = { 0 };
    int64_t convs = 0;
    int status = s_query_text(r->db, "SELECT group_concat(value, ', ') FROM json_each(?1)", customers, &list);
    if (status < 0) {
        status = EXIT_UNAVAILABLE;
        goto done;
    }
    if (list.len > 0) {
        buf_printf(out, "customer%s ", strchr(list.data, ',') ? "s" : "");
        s_clean(out, list.data, true, NULL);
    } else {
        buf_puts(out, "no customer: ");
        s_clean(out, who, true, NULL);
    }
    status = s_prepare(r->db, convs_sql, &st);
    if (status != 0) {
        goto done;
    }
    sqlite3_bind_text(st, 1, customers, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) {
        convs = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    st = NULL;
    if (list.len > 0) {
        buf_printf(out, " · %lld conversation%s", (long long)convs, convs == 1 ? "" : "s");
    }
    status = s_prepare(r->db, handles_sql, &st);
    if (status != 0) {
        goto done;
    }
    sqlite3_bind_text(st, 1, customers, -1, SQLITE_STATIC);
    int n = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        buf_puts(out, n++ == 0 ? " · " : ", ");
        s_clean(out, (const char *)sqlite3_column_text(st, 0), true, NULL);
    }
    buf_putc(out, '\n');
done:
    sqlite3_finalize(st);
    buf_free(&list);
    return status;
}

static int s_show(struct agent_run *r)
{
    static const char rows_sql[] =
        "SELECT ts, seq, env, conversation FROM messages WHERE customer IN (SELECT value FROM json_each(?1))"
        " UNION SELECT ts, seq, env, conversation FROM messages WHERE ?2 IS NOT NULL AND conversation = ?2"
        " UNION SELECT ts, seq, env, conversation FROM messages WHERE ?3 IS NOT NULL AND customer IS NULL"
        "  AND (\"from\" = ?3 OR \"to\" = ?3)"
        " ORDER BY 1, 2";
    const char *who = r->pos[0];
    const char *conv = NULL, *handle = NULL;
    struct buf customers = { 0 }, out = { 0 }, tmp = { 0 }, last_conv = { 0 };
    struct env *e = env_new(), *tmp_env = env_new();
    sqlite3_stmt *st = NULL;
    int status = EXIT_SOFTWARE;
    if (e == NULL || tmp_env == NULL) {
        log_msg(LOG_ERROR, "out of memory");
        goto done;
    }
    status = s_show_who(r, who, &customers, &conv, &handle);
    if (status != 0) {
        goto done;
    }
    if (!r->conf.json) {
        status = s_show_head(r, who, customers.data, &out);
        if (status != 0) {
            goto done;
        }
    }
    status = s_prepare(r->db, rows_sql, &st);
    if (status != 0) {
        goto done;
    }
    sqlite3_bind_text(st, 1, customers.data, -1, SQLITE_STATIC);
    if (conv != NULL) {
        sqlite3_bind_text(st, 2, conv, -1, SQLITE_STATIC);
    }
    if (handle != NULL) {
        sqlite3_bind_text(st, 3, handle, -1, SQLITE_STATIC);
    }
    bool first = true;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (s_decode(st, 2, e) != 0) {
            continue;
        }
        if (r->conf.json) {
            if (env_to_json(e, &out) != 0) {
                status = EXIT_SOFTWARE;
                goto done;
            }
            buf_putc(&out, '\n');
        } else {
            const char *c = (const char *)sqlite3_column_text(st, 3);
            bool same = first ? false
                      : c == NULL ? last_conv.data == NULL
                      : last_conv.data != NULL && strcmp(c, last_conv.data) == 0;
            if (!same) {
                status = s_show_conv(r, c, tmp_env, &tmp, &out);
                if (status != 0) {
                    goto done;
                }
                buf_free(&last_conv);
                if (c != NULL) {
                    buf_puts(&last_conv, c);
                }
            }
            first = false;
            s_show_env(&out, e, &tmp);
        }
        if (out.len >= 1 << 16) {
            fwrite(out.data, 1, out.len, stdout);
            buf_reset(&out);
        }
    }
    if (rc != SQLITE_DONE) {
        log_msg(LOG_ERROR, "reading the archive: %s", sqlite3_errmsg(r->db));
        status = EXIT_UNAVAILABLE;
        goto done;
    }
    fwrite(out.data != NULL ? out.data : "", 1, out.len, stdout);
    status = fflush(stdout) == 0 ? 0 : EXIT_IOERR;
done:
    sqlite3_finalize(st);
    env_destroy(&e);
    env_destroy(&tmp_env);
    buf_free(&customers);
    buf_free(&out);
    buf_free(&tmp);
    buf_free(&last_conv);
    return status;
}

/* --- the command line ------------------------------------------------- */

static void s_usage(FILE *fp)
{
    fprintf(fp, "usage: omni-agent COMMAND [OPTIONS] [ARGS]\n"
                "The human side of the handoff: reads omni-archive's database (--archive, read-only),\n"
                "writes envelopes into the pipeline (--out).\n\ncommands:\n");
    for (size_t i = 0; i < N_CMDS; i++) {
        fprintf(fp, "  %-6s %s\n", s_cmds[i].name, s_cmds[i].args);
    }
    fprintf(fp, "\nOptions also come from the environment (OMNI_ARCHIVE, OMNI_OUT, OMNI_AS).\n"
                "`omni-agent COMMAND --help` shows a command's options.\n"
                "Exit status: 0 done, 64 usage, 65 unknown conversation (or nothing to answer),\n"
                "69 archive missing or endpoint unavailable.\n");
}

/* --as into r->name and r->by. Returns 0 or EXIT_USAGE. */
static int s_agent_name(struct agent_run *r)
{
    const char *as = r->conf.as;
    if (as == NULL || as[0] == '\0') {
        log_msg(LOG_ERROR, "--as AGENT is required");
        return EXIT_USAGE;
    }
    if (strncmp(as, "agent:", 6) == 0) {
        as += 6;
    }
    size_t n = strlen(as);
    bool ok = n > 0 && n <= AGENT_NAME_MAX;
    for (size_t i = 0; ok && i < n; i++) {
        unsigned char c = (unsigned char)as[i];
        ok = isalnum(c) || c >= 0x80 || strchr("._-@+", c) != NULL;
    }
    if (!ok || !utf8_is_valid(as, n)) {
        log_msg(LOG_ERROR, "--as '%s': an agent name is 1..%d letters, digits or ._-@+",
                r->conf.as, AGENT_NAME_MAX);
        return EXIT_USAGE;
    }
    snprintf(r->name, sizeof r->name, "%s", as);
    snprintf(r->by, sizeof r->by, "agent:%s", as);
    return 0;
}

/* --out into r->out. Returns 0 or EXIT_USAGE. */
static int s_out(struct agent_run *r)
{
    char err[300];
    if (r->conf.out == NULL || r->conf.out[0] == '\0') {
        log_msg(LOG_ERROR, "--out ENDPOINT is required (>ipc://…, >tcp://host:port, or - for stdout)");
        return EXIT_USAGE;
    }
    if (ep_parse(r->conf.out, EP_OUT, &r->out, err, sizeof err) != 0) {
        log_msg(LOG_ERROR, "--out: %s", err);
        return EXIT_USAGE;
    }
    if (r->out.mode == EP_STDIO && isatty(STDOUT_FILENO)) {
        log_msg(LOG_ERROR, "--out - writes msgpack: pipe it (| omni-tap, | omni-archive --db …)");
        return EXIT_USAGE;
    }
    if (r->conf.timeout_ms <= 0) {
        log_msg(LOG_ERROR, "--timeout must be more than 0");
        return EXIT_USAGE;
    }
    return 0;
}

int agent_main(int argc, char **argv)
{
    log_init("omni-agent", NULL);
    /* A reader that goes away is an error of the write, not a signal. */
    signal(SIGPIPE, SIG_IGN);
    if (argc < 2) {
        s_usage(stderr);
        return EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        s_usage(stdout);
        return 0;
    }
    const struct agent_cmd *cmd = NULL;
    for (size_t i = 0; i < N_CMDS; i++) {
        if (strcmp(s_cmds[i].name, argv[1]) == 0) {
            cmd = &s_cmds[i];
        }
    }
    if (cmd == NULL) {
        log_msg(LOG_ERROR, "unknown command '%s' (try omni-agent --help)", argv[1]);
        return EXIT_USAGE;
    }
    struct agent_run r;
    struct opt_result res;
    memset(&r, 0, sizeof r);
    struct opt_set set = { cmd->opts, &r.conf };
    int status = EXIT_USAGE;
    if (opt_parse(&set, 1, argc - 1, argv + 1, NULL, &res) != 0) {
        log_msg(LOG_ERROR, "%s: %s (try omni-agent %s --help)", cmd->name, res.err, cmd->name);
        status = res.status;
        goto done;
    }
    r.pos = res.pos;
    r.npos = res.npos;
    if (r.conf.help) {
        printf("usage: omni-agent %s%s%s [OPTIONS]\n%s\n\noptions:\n", cmd->name, cmd->args[0] ? " " : "",
               cmd->args, cmd->summary);
        opt_help(&set, 1, stdout);
        status = 0;
        goto done;
    }
    if (r.npos < cmd->min_args || (cmd->max_args >= 0 && r.npos > cmd->max_args)) {
        log_msg(LOG_ERROR, "%s: expected %s (try omni-agent %s --help)", cmd->name,
                cmd->args[0] ? cmd->args : "no arguments", cmd->name);
        goto done;
    }
    if (cmd->writes && ((status = s_agent_name(&r)) != 0 || (status = s_out(&r)) != 0)) {
        goto done;
    }
    status = s_open(&r);
    if (status == 0) {
        status = cmd->fn(&r);
    }
done:
    if (r.db != NULL) {
        sqlite3_exec(r.db, "COMMIT", NULL, NULL, NULL);
        sqlite3_close(r.db);
    }
    free(res.pos);
    return status;
}
