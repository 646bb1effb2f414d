/* send_cli — omni-send's commands for people, on the outbox the service
 * writes (see send.h):
 *
 *   status [ID]   the outbox: every reply's state, attempts, next try,
 *                 provider id and last error (one reply with ID)
 *   dead          the dead letters, with their reasons
 *   retry ID      puts a dead or maybe-delivered reply back in the queue
 *
 * status and dead open the database read-only, so they run while the
 * service writes; retry takes the write lock for one statement, and the
 * running service picks the reply up at its next tick. */
#include "send.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <sqlite3.h>

#include "buf.h"
#include "log.h"
#include "opt.h"

#define EXIT_NOINPUT 66     /* the database file is not there */

struct send_cli_conf {
    const char *db;         /* the outbox database */
    bool json;              /* JSON lines */
    int64_t limit;          /* most rows shown (0: all) */
    const char *state;      /* status: only rows in this state */
    bool help;              /* --help */
};

#define C(f) offsetof(struct send_cli_conf, f)
static const struct opt s_cli_opts[] = {
    { "db", OPT_STR, NULL, C(db), "the outbox database (the service's --db) (required)" },
    { "json", OPT_BOOL, "no", C(json), "one JSON object per line" },
    { "limit", OPT_INT, "0", C(limit), "most rows shown, newest first (0: all)" },
    { "state", OPT_STR, NULL, C(state), "status: only pending, sending, sent, maybe or dead" },
    { "help", OPT_BOOL, "no", C(help), "show this help and exit" },
    { NULL, 0, NULL, 0, NULL }
};
#undef C

static const char s_usage[] =
    "usage: omni-send status [ID] [--state S] [--json] [--limit N] --db PATH\n"
    "       omni-send dead [--json] [--limit N] --db PATH\n"
    "       omni-send retry ID --db PATH\n"
    "       omni-send [OPTIONS]   (the service; see omni-send --help)\n\noptions:\n";

bool send_is_command(const char *word)
{
    return strcmp(word, "status") == 0 || strcmp(word, "dead") == 0 || strcmp(word, "retry") == 0;
}

/* "2026-11-16T21:00:00Z" for ms since epoch, or "-" for 0. */
static const char *s_time(int64_t ms, char *out, size_t n)
{
    if (ms <= 0) {
        return "-";
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return out;
}

static const char *s_col(sqlite3_stmt *st, int i)
{
    const char *v = (const char *)sqlite3_column_text(st, i);
    return v ? v : "";
}

/* Writes the current row as one JSON object of its columns. */
static void s_json_row(sqlite3_stmt *st, struct buf *b)
{
    buf_reset(b);
    buf_putc(b, '{');
    for (int i = 0; i < sqlite3_column_count(st); i++) {
        const char *name = sqlite3_column_name(st, i);
        buf_printf(b, "%s", i ? "," : "");
        buf_json_str(b, name, strlen(name));
        buf_putc(b, ':');
        switch (sqlite3_column_type(st, i)) {
        case SQLITE_NULL:
            buf_puts(b, "null");
            break;
        case SQLITE_INTEGER:
            buf_printf(b, "%lld", (long long)sqlite3_column_int64(st, i));
            break;
        default: {
            const char *v = s_col(st, i);
            buf_json_str(b, v, strlen(v));
            break;
        }
        }
    }
    buf_putc(b, '}');
    puts(b->data);
}

static int s_open(const char *path, bool write, sqlite3 **db)
{
    struct stat sb;
    if (stat(path, &sb) != 0) {
        log_msg(LOG_ERROR, "--db %s: no such file", path);
        return EXIT_NOINPUT;
    }
    int rc = sqlite3_open_v2(path, db, write ? SQLITE_OPEN_READWRITE : SQLITE_OPEN_READONLY, NULL);
    if (rc != SQLITE_OK) {
        log_msg(LOG_ERROR, "--db %s: %s", path, *db ? sqlite3_errmsg(*db) : sqlite3_errstr(rc));
        return EXIT_UNAVAILABLE;
    }
    sqlite3_busy_timeout(*db, 5000);
    sqlite3_stmt *st = NULL;
    int64_t version = -1;
    if (sqlite3_prepare_v2(*db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK
        && sqlite3_step(st) == SQLITE_ROW) {
        version = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    if (version != SEND_SCHEMA_VERSION) {
        log_msg(LOG_ERROR, "--db %s: not an omni-send outbox", path);
        return EXIT_CONFIG;
    }
    return 0;
}

static int s_status(sqlite3 *db, const struct send_cli_conf *c, const char *id)
{
    static const char sql[] =
        "SELECT id, channel, \"to\", state, attempts, created, updated,"
        " CASE WHEN state = 'pending' THEN next_at END AS next_at, status, provider_id, last_error"
        " FROM outbox WHERE (?1 IS NULL OR id = ?1) AND (?2 IS NULL OR state = ?2)"
        " ORDER BY seq DESC LIMIT ?3";
    sqlite3_stmt *st = NULL;
    struct buf b = { 0 };
    int status = EXIT_UNAVAILABLE;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) {
        log_msg(LOG_ERROR, "%s", sqlite3_errmsg(db));
        goto done;
    }
    if (id != NULL) {
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    }
    if (c->state != NULL) {
        sqlite3_bind_text(st, 2, c->state, -1, SQLITE_STATIC);
    }
    sqlite3_bind_int64(st, 3, c->limit > 0 ? c->limit : -1);
    int rows = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        rows++;
        if (c->json) {
            s_json_row(st, &b);
            continue;
        }
        char t1[32], t2[32];
        printf("%s %-9s %-8s attempts=%lld updated=%s next=%s to=%s",
               s_col(st, 0), s_col(st, 1), s_col(st, 3), (long long)sqlite3_column_int64(st, 4),
               s_time(sqlite3_column_int64(st, 6), t1, sizeof t1),
               s_time(sqlite3_column_int64(st, 7), t2, sizeof t2), s_col(st, 2));
        if (sqlite3_column_type(st, 9) != SQLITE_NULL) {
            printf(" provider_id=%s", s_col(st, 9));
        }
        if (sqlite3_column_type(st, 10) != SQLITE_NULL) {
            printf(" status=%lld error=\"%s\"", (long long)sqlite3_column_int64(st, 8), s_col(st, 10));
        }
        putchar('\n');
    }
    if (rc != SQLITE_DONE) {
        log_msg(LOG_ERROR, "%s", sqlite3_errmsg(db));
        goto done;
    }
    if (id != NULL && rows == 0) {
        log_msg(LOG_ERROR, "id %s is not in the outbox", id);
        status = 1;
        goto done;
    }
    status = 0;
done:
    sqlite3_finalize(st);
    buf_free(&b);
    return status;
}

static int s_dead(sqlite3 *db, const struct send_cli_conf *c)
{
    static const char sql[] =
        "SELECT d.id, d.channel, o.\"to\", d.status, d.attempts, d.ts, d.reason"
        " FROM dead d LEFT JOIN outbox o ON o.id = d.id ORDER BY d.ts DESC LIMIT ?1";
    sqlite3_stmt *st = NULL;
    struct buf b = { 0 };
    int status = EXIT_UNAVAILABLE;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) {
        log_msg(LOG_ERROR, "%s", sqlite3_errmsg(db));
        goto done;
    }
    sqlite3_bind_int64(st, 1, c->limit > 0 ? c->limit : -1);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (c->json) {
            s_json_row(st, &b);
            continue;
        }
        char t[32];
        printf("%s %-9s status=%lld attempts=%lld at=%s to=%s reason=\"%s\"\n", s_col(st, 0),
               s_col(st, 1), (long long)sqlite3_column_int64(st, 3),
               (long long)sqlite3_column_int64(st, 4), s_time(sqlite3_column_int64(st, 5), t, sizeof t),
               s_col(st, 2), s_col(st, 6));
    }
    if (rc != SQLITE_DONE) {
        log_msg(LOG_ERROR, "%s", sqlite3_errmsg(db));
        goto done;
    }
    status = 0;
done:
    sqlite3_finalize(st);
    buf_free(&b);
    return status;
}

static int s_retry(sqlite3 *db, const char *id)
{
    static const char sql[] =
        "UPDATE outbox SET state = 'pending', next_at = ?2, updated = ?2, attempts = 0, created = ?2,"
        " receipt = 1, last_error = NULL, status = NULL WHERE id = ?1 AND state IN ('dead', 'maybe');"
        "DELETE FROM dead WHERE id = ?1";
    sqlite3_stmt *up = NULL, *del = NULL;
    const char *tail = NULL;
    int status = EXIT_UNAVAILABLE;
    int64_t now = (int64_t)stage_now_ms();
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK
        || sqlite3_prepare_v2(db, sql, -1, &up, &tail) != SQLITE_OK
        || sqlite3_prepare_v2(db, tail, -1, &del, NULL) != SQLITE_OK) {
        log_msg(LOG_ERROR, "%s", sqlite3_errmsg(db));
        goto done;
    }
    sqlite3_bind_text(up, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(up, 2, now);
    sqlite3_bind_text(del, 1, id, -1, SQLITE_STATIC);
    if (sqlite3_step(up) != SQLITE_DONE) {
        log_msg(LOG_ERROR, "%s", sqlite3_errmsg(db));
        goto done;
    }
    if (sqlite3_changes(db) != 1) {
        log_msg(LOG_ERROR, "id %s is not a dead or maybe-delivered reply in the outbox", id);
        status = 1;
        goto done;
    }
    if (sqlite3_step(del) != SQLITE_DONE || sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        log_msg(LOG_ERROR, "%s", sqlite3_errmsg(db));
        goto done;
    }
    printf("%s queued again\n", id);
    status = 0;
done:
    sqlite3_finalize(up);
    sqlite3_finalize(del);
    if (!sqlite3_get_autocommit(db)) {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    }
    return status;
}

int send_cli(int argc, char **argv)
{
    struct send_cli_conf c;
    memset(&c, 0, sizeof c);
    struct opt_set set = { s_cli_opts, &c };
    struct opt_result res;
    sqlite3 *db = NULL;
    const char *cmd = argv[0];
    int status = 0;
    log_init("omni-send", NULL);
    if (opt_parse(&set, 1, argc, argv, NULL, &res) != 0) {
        log_msg(LOG_ERROR, "%s: %s (try --help)", cmd, res.err);
        status = res.status;
        goto done;
    }
    if (c.help) {
        fputs(s_usage, stdout);
        opt_help(&set, 1, stdout);
        goto done;
    }
    int want_min = strcmp(cmd, "retry") == 0 ? 1 : 0;
    int want_max = strcmp(cmd, "dead") == 0 ? 0 : 1;
    if (res.npos < want_min || res.npos > want_max) {
        log_msg(LOG_ERROR, "%s: wrong number of arguments (try --help)", cmd);
        status = EXIT_USAGE;
        goto done;
    }
    if (c.db == NULL || c.db[0] == '\0') {
        log_msg(LOG_ERROR, "%s: --db is required", cmd);
        status = EXIT_USAGE;
        goto done;
    }
    if (c.state != NULL && strcmp(c.state, "pending") != 0 && strcmp(c.state, "sending") != 0
        && strcmp(c.state, "sent") != 0 && strcmp(c.state, "maybe") != 0 && strcmp(c.state, "dead") != 0) {
        log_msg(LOG_ERROR, "%s: --state must be pending, sending, sent, maybe or dead", cmd);
        status = EXIT_USAGE;
        goto done;
    }
    bool write = strcmp(cmd, "retry") == 0;
    status = s_open(c.db, write, &db);
    if (status != 0) {
        goto done;
    }
    if (strcmp(cmd, "status") == 0) {
        status = s_status(db, &c, res.npos > 0 ? res.pos[0] : NULL);
    } else if (strcmp(cmd, "dead") == 0) {
        status = s_dead(db, &c);
    } else {
        status = s_retry(db, res.pos[0]);
    }
done:
    sqlite3_close(db);
    free(res.pos);
    return status;
}
