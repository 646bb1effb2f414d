/* archive_cli — omni-archive's commands for people, on the database the
 * service writes (see archive.h):
 *
 *   history CUSTOMER|HANDLE   the customer's timeline across channels
 *   search TEXT...            full-text search, accents folded, best first
 *   export [--since] [--until] stored envelopes as msgpack, in ts order
 *   forget CUSTOMER           erase a person (GDPR): rows, index, free pages
 *   retain --older-than DAYS  delete what is older
 *   acks ENDPOINT             print the ids a running archive acks
 *
 * history, search and export open the database read-only, so they run while
 * the service writes; forget and retain take the write lock briefly per
 * transaction. */
#include "archive.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#include "acks.h"
#include "buf.h"
#include "endpoint.h"
#include "log.h"
#include "utf8.h"

#define EXIT_NOINPUT 66         /* the database file is not there */
#define EXCERPT_CHARS 80        /* characters of text on a readable line */
#define HANDLE_WIDTH 24         /* column of handles on a readable line */

/* Options of the subcommands; each uses the fields its table names. */
struct cli_conf {
    const char *db;         /* the archive database */
    bool json;              /* JSON lines instead of readable lines */
    bool fts;               /* search: TEXT is an FTS5 query */
    int64_t limit;          /* search: most results */
    const char *since;      /* export: from this time (inclusive) */
    const char *until;      /* export: to this time (exclusive) */
    int64_t older_than;     /* retain: days */
    int64_t max;            /* acks: stop after this many ids (0: never) */
    int64_t idle_ms;        /* acks: stop after this long without acks (0: never) */
    bool help;              /* --help */
};

/* What a subcommand is and takes. */
struct cli_cmd {
    const char *name;           /* "history" */
    const char *args;           /* positional arguments, for usage */
    const char *summary;        /* one line for --help */
    const struct opt *opts;     /* its options */
    int min_args;               /* positional arguments needed */
    int max_args;               /* positional arguments allowed (-1: any) */
};

#define C(f) offsetof(struct cli_conf, f)
#define O_DB { "db", OPT_STR, NULL, C(db), "the archive database (required)" }
#define O_HELP { "help", OPT_BOOL, "no", C(help), "show this help and exit" }
#define O_END { NULL, 0, NULL, 0, NULL }
static const struct opt s_history_opts[] = {
    O_DB,
    { "json", OPT_BOOL, "no", C(json), "one JSON envelope per line" },
    O_HELP, O_END
};
static const struct opt s_search_opts[] = {
    O_DB,
    { "json", OPT_BOOL, "no", C(json), "one JSON envelope per line" },
    { "limit", OPT_INT, "20", C(limit), "most results shown" },
    { "fts", OPT_BOOL, "no", C(fts), "TEXT is an FTS5 query (AND, OR, NOT, \"phrase\", prefix*)" },
    O_HELP, O_END
};
static const struct opt s_export_opts[] = {
    O_DB,
    { "since", OPT_STR, NULL, C(since), "from this time: ms since epoch or ISO date (2026-11-16, 2026-11-16T21:00[Z])" },
    { "until", OPT_STR, NULL, C(until), "up to (not including) this time, as --since" },
    O_HELP, O_END
};
static const struct opt s_forget_opts[] = { O_DB, O_HELP, O_END };
static const struct opt s_retain_opts[] = {
    O_DB,
    { "older-than", OPT_INT, NULL, C(older_than), "delete messages older than this many days (required)" },
    O_HELP, O_END
};
static const struct opt s_acks_opts[] = {
    { "max", OPT_INT, "0", C(max), "stop after this many ids (0: never)" },
    { "idle-exit", OPT_MS, "0", C(idle_ms), "stop when no ack came for this long (0: never)" },
    O_HELP, O_END
};
#undef C

static const struct cli_cmd s_cmds[] = {
    { "history", "CUSTOMER|HANDLE", "the customer's messages on every channel, in time order "
      "(a handle stands for the customers on its messages)", s_history_opts, 1, 1 },
    { "search", "TEXT...", "messages whose text or subject has every word (case and accents "
      "ignored), best first; exits 1 when none", s_search_opts, 1, -1 },
    { "export", "", "stored envelopes as a msgpack stream on stdout, in time order "
      "(to replay through any stage)", s_export_opts, 0, 0 },
    { "forget", "CUSTOMER", "erase a person: their messages, search index, conversations, "
      "and the freed pages (GDPR)", s_forget_opts, 1, 1 },
    { "retain", "", "delete messages and conversations older than --older-than days",
      s_retain_opts, 0, 0 },
    { "acks", "ENDPOINT", "print the ids a running omni-archive acks on ENDPOINT (its --acks), "
      "one per line", s_acks_opts, 1, 1 },
};

static const struct cli_cmd *s_find_cmd(const char *name)
{
    for (size_t i = 0; i < sizeof s_cmds / sizeof s_cmds[0]; i++) {
        if (strcmp(s_cmds[i].name, name) == 0) {
            return &s_cmds[i];
        }
    }
    return NULL;
}

/* Parses a subcommand's argv. Returns -1 to go on (res->pos filled, the
 * caller frees it), or an exit code to return now. */
static int s_parse(const char *name, int argc, char **argv, struct cli_conf *conf,
                   struct opt_result *res)
{
    const struct cli_cmd *cmd = s_find_cmd(name);
    log_init("omni-archive", NULL);
    memset(conf, 0, sizeof *conf);
    struct opt_set set = { cmd->opts, conf };
    if (opt_parse(&set, 1, argc, argv, NULL, res) != 0) {
        log_msg(LOG_ERROR, "%s: %s (try omni-archive %s --help)", name, res->err, name);
        free(res->pos);
        res->pos = NULL;
        return res->status;
    }
    if (conf->help) {
        printf("usage: omni-archive %s [OPTIONS]%s%s\n%s\n\noptions:\n", name,
               cmd->args[0] ? " " : "", cmd->args, cmd->summary);
        opt_help(&set, 1, stdout);
        free(res->pos);
        res->pos = NULL;
        return 0;
    }
    bool needs_db = strcmp(cmd->opts[0].name, "db") == 0;
    if (res->npos < cmd->min_args || (cmd->max_args >= 0 && res->npos > cmd->max_args)) {
        log_msg(LOG_ERROR, "%s: expected %s (try omni-archive %s --help)", name,
                cmd->args[0] ? cmd->args : "no arguments", name);
    } else if (needs_db && (conf->db == NULL || conf->db[0] == '\0')) {
        log_msg(LOG_ERROR, "%s: --db is required (try omni-archive %s --help)", name, name);
    } else {
        return -1;
    }
    free(res->pos);
    res->pos = NULL;
    return EXIT_USAGE;
}

/* --- output ----------------------------------------------------------- */

/* "2026-11-16 21:12" in local time. */
static void s_when(int64_t ms, char *out, size_t n)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (localtime_r(&t, &tm) == NULL || strftime(out, n, "%Y-%m-%d %H:%M", &tm) == 0) {
        snprintf(out, n, "%lld", (long long)ms);
    }
}

/* Appends s to b on one line: control characters and runs of blanks become
 * one space; stops after *left characters, with an ellipsis. */
static void s_excerpt(struct buf *b, const char *s, int *left)
{
    bool space = b->len > 0 && b->data[b->len - 1] == ' ';
    size_t n = strlen(s);
    size_t i = 0;
    while (i < n && *left > 0) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == ' ' || c == 0x7f) {
            if (!space && b->len > 0) {
                buf_putc(b, ' ');
                (*left)--;
            }
            space = true;
            i++;
            continue;
        }
        size_t len = 1;
        while (i + len < n && ((unsigned char)s[i + len] & 0xC0) == 0x80) {
            len++;
        }
        buf_append(b, s + i, len);
        (*left)--;
        space = false;
        i += len;
    }
    while (b->len > 0 && b->data[b->len - 1] == ' ') {
        b->len--;
        b->data[b->len] = '\0';
    }
    if (i < n) {
        buf_puts(b, "…");
        *left = 0;
    }
}

/* The columns of a message row as history and search select them. */
enum { COL_TS, COL_CHANNEL, COL_DIR, COL_FROM, COL_TO, COL_SUBJECT, COL_TEXT, COL_ENV };

/* Writes one row as a readable line, or (json) its envelope as JSON. */
static int s_print_row(sqlite3_stmt *st, bool json, struct env *e, struct buf *line)
{
    buf_reset(line);
    if (json) {
        struct env_err err;
        const void *p = sqlite3_column_blob(st, COL_ENV);
        int n = sqlite3_column_bytes(st, COL_ENV);
        if (env_decode(e, p, (size_t)n, &err) != 0 || env_to_json(e, line) != 0) {
            char why[300];
            log_msg(LOG_WARN, "stored envelope unreadable: %s", env_err_str(&err, why, sizeof why));
            return 0;
        }
    } else {
        char when[32];
        s_when(sqlite3_column_int64(st, COL_TS), when, sizeof when);
        const char *dir = (const char *)sqlite3_column_text(st, COL_DIR);
        const char *from = (const char *)sqlite3_column_text(st, COL_FROM);
        const char *to = (const char *)sqlite3_column_text(st, COL_TO);
        const char *handle = strcmp(dir, "out") == 0 ? to : from ? from : to;
        const char *subject = (const char *)sqlite3_column_text(st, COL_SUBJECT);
        const char *text = (const char *)sqlite3_column_text(st, COL_TEXT);
        buf_printf(line, "%s  %-9s %-4s %-*s  ", when, (const char *)sqlite3_column_text(st, COL_CHANNEL),
                   dir, HANDLE_WIDTH, handle ? handle : "-");
        size_t start = line->len;
        int left = EXCERPT_CHARS;
        if (subject != NULL) {
            buf_putc(line, '[');
            s_excerpt(line, subject, &left);
            buf_puts(line, "] ");
        }
        if (text != NULL) {
            s_excerpt(line, text, &left);
        }
        if (line->len == start) {
            buf_puts(line, strcmp(dir, "event") == 0 ? "(event)" : "(attachment)");
        }
        while (line->len > 0 && line->data[line->len - 1] == ' ') {
            line->data[--line->len] = '\0';
        }
    }
    buf_putc(line, '\n');
    if (fwrite(line->data, 1, line->len, stdout) != line->len) {
        return -1;
    }
    return 0;
}

/* Steps st and prints every row. Returns rows printed, or -1. */
static int64_t s_print_rows(sqlite3 *db, sqlite3_stmt *st, bool json)
{
    struct env *e = env_new();
    struct buf line = { 0 };
    int64_t rows = 0;
    int rc;
    if (e == NULL) {
        log_msg(LOG_ERROR, "out of memory");
        return -1;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (s_print_row(st, json, e, &line) != 0) {
            rc = SQLITE_DONE;
            break;
        }
        rows++;
    }
    if (rc != SQLITE_DONE) {
        log_msg(LOG_ERROR, "reading the archive: %s", sqlite3_errmsg(db));
        rows = -1;
    }
    env_destroy(&e);
    buf_free(&line);
    fflush(stdout);
    return rows;
}

static int s_open(const struct cli_conf *conf, enum archive_mode mode, sqlite3 **db)
{
    char err[512];
    int status = archive_open(conf->db, mode, NULL, db, err, sizeof err);
    if (status != 0) {
        log_msg(LOG_ERROR, "--db %s", err);
    }
    return status;
}

/* Runs sql; returns 0, or -1 with sqlite's reason in err[n]. */
static int s_exec_cli(sqlite3 *db, const char *sql, char *err, size_t n)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        snprintf(err, n, "%s", msg ? msg : sqlite3_errstr(rc));
    }
    sqlite3_free(msg);
    return rc == SQLITE_OK ? 0 : -1;
}

static int64_t s_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int s_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st)
{
    if (sqlite3_prepare_v2(db, sql, -1, st, NULL) != SQLITE_OK) {
        log_msg(LOG_ERROR, "%s", sqlite3_errmsg(db));
        return EXIT_SOFTWARE;
    }
    return 0;
}

/* --- history ---------------------------------------------------------- */

static int s_history(int argc, char **argv)
{
    static const char who_sql[] =
        "SELECT CASE WHEN EXISTS (SELECT 1 FROM messages WHERE customer = ?1)"
        " THEN json_array(?1)"
        " ELSE (SELECT json_group_array(DISTINCT customer) FROM messages"
        "  WHERE (\"from\" = ?1 OR \"to\" = ?1) AND customer IS NOT NULL) END";
    static const char rows_sql[] =
        "SELECT ts, channel, dir, \"from\", \"to\", subject, text, env, seq FROM messages"
        " WHERE customer IN (SELECT value FROM json_each(?2))"
        " UNION ALL"
        " SELECT ts, channel, dir, \"from\", \"to\", subject, text, env, seq FROM messages"
        " WHERE customer IS NULL AND (\"from\" = ?1 OR \"to\" = ?1)"
        " ORDER BY 1, 9";
    struct cli_conf conf;
    struct opt_result res;
    int status = s_parse("history", argc, argv, &conf, &res);
    if (status >= 0) {
        return status;
    }
    const char *who = res.pos[0];
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    char *customers = NULL;
    status = s_open(&conf, ARCHIVE_READ, &db);
    if (status != 0) {
        goto done;
    }
    status = s_prepare(db, who_sql, &st);
    if (status != 0) {
        goto done;
    }
    sqlite3_bind_text(st, 1, who, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_ROW) {
        log_msg(LOG_ERROR, "history: %s", sqlite3_errmsg(db));
        status = EXIT_UNAVAILABLE;
        goto done;
    }
    customers = strdup((const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    st = NULL;
    if (customers == NULL) {
        status = EXIT_SOFTWARE;
        goto done;
    }
    status = s_prepare(db, rows_sql, &st);
    if (status != 0) {
        goto done;
    }
    sqlite3_bind_text(st, 1, who, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, customers, -1, SQLITE_STATIC);
    int64_t rows = s_print_rows(db, st, conf.json);
    if (rows < 0) {
        status = EXIT_UNAVAILABLE;
    } else if (rows == 0) {
        log_msg(LOG_INFO, "no messages for %s", who);
        status = 1;
    }
done:
    sqlite3_finalize(st);
    sqlite3_close(db);
    free(customers);
    free(res.pos);
    return status;
}

/* --- search ----------------------------------------------------------- */

/* Words as an FTS5 query: each a quoted string, all required. */
static int s_fts_query(char **words, int n, struct buf *q)
{
    for (int w = 0; w < n; w++) {
        const char *s = words[w];
        while (*s != '\0') {
            while (*s != '\0' && isspace((unsigned char)*s)) {
                s++;
            }
            const char *start = s;
            bool word = false;
            while (*s != '\0' && !isspace((unsigned char)*s)) {
                word |= isalnum((unsigned char)*s) || (unsigned char)*s >= 0x80;
                s++;
            }
            if (!word) {
                continue;       /* punctuation alone matches nothing */
            }
            if (q->len > 0) {
                buf_putc(q, ' ');
            }
            buf_putc(q, '"');
            for (const char *c = start; c < s; c++) {
                buf_append(q, *c == '"' ? "\"\"" : c, *c == '"' ? 2 : 1);
            }
            buf_putc(q, '"');
        }
    }
    return q->len > 0 ? 0 : -1;
}

static int s_search(int argc, char **argv)
{
    static const char sql[] =
        "SELECT m.ts, m.channel, m.dir, m.\"from\", m.\"to\", m.subject,"
        " snippet(messages_fts, -1, '', '', '…', 24), m.env"
        " FROM messages_fts JOIN messages m ON m.seq = messages_fts.rowid"
        " WHERE messages_fts MATCH ?1 ORDER BY rank LIMIT ?2";
    struct cli_conf conf;
    struct opt_result res;
    int status = s_parse("search", argc, argv, &conf, &res);
    if (status >= 0) {
        return status;
    }
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    struct buf q = { 0 };
    if (conf.fts) {
        for (int i = 0; i < res.npos; i++) {
            buf_printf(&q, "%s%s", i ? " " : "", res.pos[i]);
        }
    } else if (s_fts_query(res.pos, res.npos, &q) != 0) {
        log_msg(LOG_ERROR, "search: no words to look for");
        status = EXIT_USAGE;
        goto done;
    }
    status = s_open(&conf, ARCHIVE_READ, &db);
    if (status != 0) {
        goto done;
    }
    status = s_prepare(db, sql, &st);
    if (status != 0) {
        goto done;
    }
    sqlite3_bind_text(st, 1, q.data, (int)q.len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, conf.limit > 0 ? conf.limit : -1);
    int64_t rows = s_print_rows(db, st, conf.json);
    if (rows < 0) {
        status = conf.fts ? EXIT_USAGE : EXIT_UNAVAILABLE;
    } else if (rows == 0) {
        status = 1;
    }
done:
    sqlite3_finalize(st);
    sqlite3_close(db);
    buf_free(&q);
    free(res.pos);
    return status;
}

/* --- export ----------------------------------------------------------- */

/* Ms since epoch from digits, or from an ISO date in local time
 * (2026-11-16, 2026-11-16T21:00, 2026-11-16 21:00:05), UTC with a Z. */
static int s_parse_time(const char *s, int64_t *ms)
{
    char *end;
    if (isdigit((unsigned char)s[0]) && strspn(s, "0123456789") == strlen(s)) {
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (errno != 0) {
            return -1;
        }
        *ms = (int64_t)v;
        return 0;
    }
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    int used = 0;
    if (sscanf(s, "%4d-%2d-%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &used) != 3 || used != 10) {
        return -1;
    }
    const char *p = s + used;
    if (*p == 'T' || *p == ' ') {
        int n = 0;
        if (sscanf(p + 1, "%2d:%2d%n", &tm.tm_hour, &tm.tm_min, &n) != 2 || n != 5) {
            return -1;
        }
        p += 1 + n;
        if (*p == ':') {
            if (sscanf(p + 1, "%2d%n", &tm.tm_sec, &n) != 1 || n != 2) {
                return -1;
            }
            p += 1 + n;
        }
    }
    bool utc = *p == 'Z';
    if (utc) {
        p++;
    }
    if (*p != '\0' || tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 || tm.tm_mday > 31
        || tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 60) {
        return -1;
    }
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    tm.tm_isdst = -1;
    time_t t = utc ? timegm(&tm) : mktime(&tm);
    if (t == (time_t)-1) {
        return -1;
    }
    *ms = (int64_t)t * 1000;
    return 0;
}

static int s_export(int argc, char **argv)
{
    static const char sql[] =
        "SELECT env FROM messages WHERE ts >= ?1 AND ts < ?2 ORDER BY ts, seq";
    struct cli_conf conf;
    struct opt_result res;
    int status = s_parse("export", argc, argv, &conf, &res);
    if (status >= 0) {
        return status;
    }
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t since = 0, until = INT64_MAX;
    const char *bad = conf.since != NULL && s_parse_time(conf.since, &since) != 0 ? conf.since
                    : conf.until != NULL && s_parse_time(conf.until, &until) != 0 ? conf.until : NULL;
    if (bad != NULL) {
        log_msg(LOG_ERROR, "export: '%s' is not a time (ms since epoch, 2026-11-16, 2026-11-16T21:00[Z])", bad);
        status = EXIT_USAGE;
        goto done;
    }
    status = s_open(&conf, ARCHIVE_READ, &db);
    if (status != 0) {
        goto done;
    }
    status = s_prepare(db, sql, &st);
    if (status != 0) {
        goto done;
    }
    sqlite3_bind_int64(st, 1, since);
    sqlite3_bind_int64(st, 2, until);
    static char obuf[1 << 16];
    setvbuf(stdout, obuf, _IOFBF, sizeof obuf);
    int rc;
    uint64_t n = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const void *p = sqlite3_column_blob(st, 0);
        size_t len = (size_t)sqlite3_column_bytes(st, 0);
        if (fwrite(p, 1, len, stdout) != len) {
            rc = SQLITE_DONE;   /* the reader went away: like any filter, stop */
            break;
        }
        n++;
    }
    if (rc != SQLITE_DONE) {
        log_msg(LOG_ERROR, "export: %s", sqlite3_errmsg(db));
        status = EXIT_UNAVAILABLE;
    } else if (fflush(stdout) != 0 && errno != EPIPE) {
        log_msg(LOG_ERROR, "export: stdout: %s", strerror(errno));
        status = EXIT_IOERR;
    }
    log_msg(LOG_DEBUG, "exported %llu envelopes", (unsigned long long)n);
done:
    sqlite3_finalize(st);
    sqlite3_close(db);
    free(res.pos);
    return status;
}

/* --- forget and retain ------------------------------------------------ */

/* Runs sql with ?1 = text; returns the rows it changed, or -1. */
static int64_t s_run1(sqlite3 *db, const char *sql, const char *text)
{
    sqlite3_stmt *st = NULL;
    int64_t changed = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
        if (text != NULL) {
            sqlite3_bind_text(st, 1, text, -1, SQLITE_STATIC);
        }
        if (sqlite3_step(st) == SQLITE_DONE) {
            changed = sqlite3_changes(db);
        }
    }
    sqlite3_finalize(st);
    return changed;
}

/* Copies what is committed into the database file and empties the WAL, so
 * that deleted content survives in neither. Returns 0, or EXIT_TEMPFAIL
 * when a reader kept it from finishing. */
static int s_checkpoint(sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    int status = EXIT_UNAVAILABLE;
    if (sqlite3_prepare_v2(db, "PRAGMA wal_checkpoint(TRUNCATE)", -1, &st, NULL) == SQLITE_OK
        && sqlite3_step(st) == SQLITE_ROW) {
        status = sqlite3_column_int(st, 0) == 0 ? 0 : EXIT_TEMPFAIL;
    }
    if (status != 0) {
        log_msg(LOG_WARN, "checkpoint not complete (%s): run the command again when readers are done",
                status == EXIT_TEMPFAIL ? "a reader is busy" : sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
    return status;
}

static int s_forget(int argc, char **argv)
{
    /* The person's own handles: senders of what they sent, recipients of
     * what was sent to them. Messages archived without a customer (before
     * identity ran) are theirs when they come from or go to one of them. */
    static const char handles_sql[] =
        "INSERT OR IGNORE INTO temp.forget_handles"
        " SELECT \"from\" FROM messages WHERE customer = ?1 AND dir <> 'out' AND \"from\" IS NOT NULL"
        " UNION SELECT \"to\" FROM messages WHERE customer = ?1 AND dir = 'out' AND \"to\" IS NOT NULL";
    static const char convs_sql[] =
        "DELETE FROM conversations WHERE customer = ?1 OR id IN"
        " (SELECT conversation FROM messages WHERE customer = ?1 AND conversation IS NOT NULL)";
    static const char msgs_sql[] =
        "DELETE FROM messages WHERE customer = ?1 OR (customer IS NULL AND"
        " (\"from\" IN (SELECT h FROM temp.forget_handles) OR \"to\" IN (SELECT h FROM temp.forget_handles)))";
    struct cli_conf conf;
    struct opt_result res;
    int status = s_parse("forget", argc, argv, &conf, &res);
    if (status >= 0) {
        return status;
    }
    const char *who = res.pos[0];
    sqlite3 *db = NULL;
    char err[300];
    status = s_open(&conf, ARCHIVE_WRITE, &db);
    if (status != 0) {
        goto done;
    }
    /* Deleted content is overwritten with zeros, not just unlinked. */
    if (s_exec_cli(db, "PRAGMA secure_delete = ON", err, sizeof err) != 0
        || s_exec_cli(db, "CREATE TEMP TABLE forget_handles (h TEXT PRIMARY KEY)", err, sizeof err) != 0) {
        log_msg(LOG_ERROR, "forget: %s", err);
        status = EXIT_UNAVAILABLE;
        goto done;
    }
    if (s_exec_cli(db, "BEGIN IMMEDIATE", err, sizeof err) != 0) {
        log_msg(LOG_ERROR, "forget: cannot lock the archive: %s", err);
        status = EXIT_TEMPFAIL;
        goto done;
    }
    int64_t convs = -1, msgs = -1;
    if (s_run1(db, handles_sql, who) >= 0 && (convs = s_run1(db, convs_sql, who)) >= 0) {
        msgs = s_run1(db, msgs_sql, who);
    }
    if (msgs < 0 || s_exec_cli(db, "COMMIT", err, sizeof err) != 0) {
        log_msg(LOG_ERROR, "forget: %s; nothing was deleted", msgs < 0 ? sqlite3_errmsg(db) : err);
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        status = EXIT_UNAVAILABLE;
        goto done;
    }
    /* The full-text index keeps deleted terms in old segments until they
     * merge: merge them all now. */
    if (s_exec_cli(db, "INSERT INTO messages_fts(messages_fts) VALUES ('optimize')", err, sizeof err) != 0) {
        log_msg(LOG_ERROR, "forget: rows deleted, but the search index was not rebuilt: %s "
                "(run forget again)", err);
        status = EXIT_TEMPFAIL;
        goto done;
    }
    status = s_checkpoint(db);
    printf("forgot %s: %lld messages, %lld conversations\n", who, (long long)msgs, (long long)convs);
done:
    sqlite3_close(db);
    free(res.pos);
    return status;
}

static int s_retain_cmd(int argc, char **argv)
{
    struct cli_conf conf;
    struct opt_result res;
    int status = s_parse("retain", argc, argv, &conf, &res);
    if (status >= 0) {
        return status;
    }
    sqlite3 *db = NULL;
    if (conf.older_than <= 0 || conf.older_than > 100000) {
        log_msg(LOG_ERROR, "retain: --older-than DAYS (1..100000) is required");
        status = EXIT_USAGE;
        goto done;
    }
    status = s_open(&conf, ARCHIVE_WRITE, &db);
    if (status != 0) {
        goto done;
    }
    uint64_t now = (uint64_t)time(NULL) * 1000;
    uint64_t cutoff = now - (uint64_t)conf.older_than * 86400000u;
    int64_t convs = 0;
    int rc;
    int64_t n = archive_retain(db, cutoff, 10000, 0, &convs, &rc);
    if (n < 0) {
        log_msg(LOG_ERROR, "retain: %s", sqlite3_errstr(rc));
        status = rc == SQLITE_BUSY ? EXIT_TEMPFAIL : EXIT_UNAVAILABLE;
        goto done;
    }
    printf("deleted %lld messages and %lld conversations older than %lld days\n",
           (long long)n, (long long)convs, (long long)conf.older_than);
done:
    sqlite3_close(db);
    free(res.pos);
    return status;
}

/* --- acks ------------------------------------------------------------- */

/* acks_read's callback: prints one id. */
static int s_print_ack(void *arg, const char *id, size_t n)
{
    (void)arg;
    printf("%.*s\n", (int)n, id);
    return 0;
}

static int s_acks(int argc, char **argv)
{
    struct cli_conf conf;
    struct opt_result res;
    int status = s_parse("acks", argc, argv, &conf, &res);
    if (status >= 0) {
        return status;
    }
    void *zctx = NULL;
    struct ep *ep = NULL;
    struct ep_spec spec;
    char err[300];
    if (ep_parse(res.pos[0], EP_SUB, &spec, err, sizeof err) != 0) {
        log_msg(LOG_ERROR, "acks: %s", err);
        status = EXIT_USAGE;
        goto done;
    }
    if (spec.mode == EP_STDIO) {
        log_msg(LOG_ERROR, "acks: needs an endpoint, not '-'");
        status = EXIT_USAGE;
        goto done;
    }
    struct ep_opts eo = { .hwm = 100000, .linger_ms = 0, .curve = NULL };
    zctx = zmq_ctx_new();
    ep = zctx ? ep_open(zctx, &spec, EP_SUB, &eo, err, sizeof err) : NULL;
    if (ep == NULL) {
        log_msg(LOG_ERROR, "acks: %s", zctx ? err : "no ZeroMQ context");
        status = EXIT_UNAVAILABLE;
        goto done;
    }
    int64_t seen = 0;
    int64_t idle_since = s_mono_ms();
    while (conf.max <= 0 || seen < conf.max) {
        zmq_pollitem_t it = { ep_socket(ep), 0, ZMQ_POLLIN, 0 };
        int rc = zmq_poll(&it, 1, 100);
        if (rc < 0 && zmq_errno() != EINTR) {
            log_msg(LOG_ERROR, "acks: poll: %s", zmq_strerror(zmq_errno()));
            status = EXIT_UNAVAILABLE;
            break;
        }
        int64_t now = s_mono_ms();
        const void *p;
        size_t n;
        enum ep_status got;
        while ((got = ep_recv(ep, &p, &n)) == EP_MSG) {
            const char *why;
            int64_t k = acks_read(p, n, s_print_ack, NULL, &why);
            fflush(stdout);
            if (k < 0) {
                log_msg(LOG_WARN, "acks: %s (%zu bytes)", why, n);
                continue;
            }
            seen += k;
            idle_since = now;
        }
        if (got == EP_ERROR) {
            log_msg(LOG_ERROR, "acks: %s", strerror(errno));
            status = EXIT_UNAVAILABLE;
            break;
        }
        if (conf.idle_ms > 0 && now - idle_since >= conf.idle_ms) {
            break;
        }
    }
done:
    ep_destroy(&ep);
    if (zctx != NULL) {
        zmq_ctx_term(zctx);
    }
    free(res.pos);
    return status;
}

archive_cmd *archive_cli_find(const char *name)
{
    static const struct {
        const char *name;   /* subcommand */
        archive_cmd *fn;    /* its function */
    } fns[] = {
        { "history", s_history }, { "search", s_search }, { "export", s_export },
        { "forget", s_forget }, { "retain", s_retain_cmd }, { "acks", s_acks },
    };
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
        if (strcmp(fns[i].name, name) == 0) {
            return fns[i].fn;
        }
    }
    return NULL;
}
