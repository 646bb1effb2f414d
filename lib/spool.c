/* spool — an ingestor's durable queue; see spool.h.
 *
 * Tables: spool (one row per message not yet acknowledged, in arrival order
 * by seq; due_at is when it is next to be sent: 0 = not sent yet), seen
 * (channel ids and the id they got, kept past the ack for --dedupe-window so
 * that a late re-delivery still gets the first id), state (cursors).
 *
 * Commits of the caller's transactions are synchronous=FULL (the channel is
 * acknowledged after them). The spool's own bookkeeping (sent marks, acked
 * rows deleted) commits with synchronous=NORMAL: losing it in a power cut
 * only sends a message again under its own id, which every stage ignores. */
#include "db.h"
#include "spool.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>
#include <zmq.h>

#include "acks.h"
#include "buf.h"
#include "endpoint.h"
#include "log.h"
#include "mp.h"
#include "ulid.h"

#define SCHEMA_VERSION 1
#define BUSY_MS 2000            /* wait this long for a lock (a reader with the sqlite3 shell) */
#define ACK_MSGS 256            /* ack messages read per pump */
#define REPORT_EVERY_MS 1000    /* the backlog goes to the tap this often */
#define PRUNE_EVERY_MS 60000    /* how often old channel ids are forgotten */
#define PRUNE_CHUNK 1000        /* channel ids forgotten per round */
#define BACKOFF_MAX 8           /* a re-send waits at most this many resend_after */
#define NEVER INT64_MAX         /* due_at of a row that is not to be sent again */
#define NOT_NOW_MS 50           /* a sender that said "not now" is asked again after this */

static const char s_schema[] =
    "CREATE TABLE IF NOT EXISTS spool ("
    " seq INTEGER PRIMARY KEY,"
    " id TEXT NOT NULL UNIQUE,"
    " channel TEXT NOT NULL,"
    " src_id TEXT,"
    " env BLOB NOT NULL,"
    " spooled_at INTEGER NOT NULL,"
    " sent_at INTEGER,"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " due_at INTEGER NOT NULL DEFAULT 0);\n"
    "CREATE UNIQUE INDEX IF NOT EXISTS spool_src ON spool(channel, src_id)"
    " WHERE src_id IS NOT NULL;\n"
    "CREATE INDEX IF NOT EXISTS spool_due ON spool(due_at);\n"
    "CREATE TABLE IF NOT EXISTS seen ("
    " channel TEXT NOT NULL,"
    " src_id TEXT NOT NULL,"
    " id TEXT NOT NULL,"
    " at INTEGER NOT NULL,"
    " PRIMARY KEY (channel, src_id)) WITHOUT ROWID;\n"
    "CREATE INDEX IF NOT EXISTS seen_at ON seen(at);\n"
    "CREATE TABLE IF NOT EXISTS state ("
    " key TEXT PRIMARY KEY,"
    " value TEXT NOT NULL) WITHOUT ROWID;\n";

/* The prepared statements, by use. */
enum {
    Q_BEGIN, Q_COMMIT, Q_ROLLBACK, Q_SYNC_FULL, Q_SYNC_NORMAL,
    Q_SEEN_GET, Q_SEEN_PUT, Q_INSERT, Q_DUE, Q_SENT, Q_DELETE_SEQ, Q_ACK,
    Q_NEXT, Q_COUNT, Q_STATE_SET, Q_STATE_GET, Q_PRUNE,
    Q_N
};

static const char *const s_sql[Q_N] = {
    [Q_BEGIN] = "BEGIN IMMEDIATE",
    [Q_COMMIT] = "COMMIT",
    [Q_ROLLBACK] = "ROLLBACK",
    [Q_SYNC_FULL] = "PRAGMA synchronous = FULL",
    [Q_SYNC_NORMAL] = "PRAGMA synchronous = NORMAL",
    [Q_SEEN_GET] = "SELECT id FROM seen WHERE channel = ?1 AND src_id = ?2",
    [Q_SEEN_PUT] = "INSERT OR IGNORE INTO seen (channel, src_id, id, at) VALUES (?1, ?2, ?3, ?4)",
    [Q_INSERT] = "INSERT OR IGNORE INTO spool (id, channel, src_id, env, spooled_at)"
                 " VALUES (?1, ?2, ?3, ?4, ?5)",
    [Q_DUE] = "SELECT seq, env, attempts, id FROM spool WHERE due_at <= ?1"
              " ORDER BY due_at, seq LIMIT 1",
    [Q_SENT] = "UPDATE spool SET sent_at = ?2, attempts = attempts + 1, due_at = ?3 WHERE seq = ?1",
    [Q_DELETE_SEQ] = "DELETE FROM spool WHERE seq = ?1",
    [Q_ACK] = "DELETE FROM spool WHERE id = ?1",
    [Q_NEXT] = "SELECT min(due_at) FROM spool",
    [Q_COUNT] = "SELECT count(*) FROM spool",
    [Q_STATE_SET] = "INSERT INTO state (key, value) VALUES (?1, ?2)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    [Q_STATE_GET] = "SELECT value FROM state WHERE key = ?1",
    [Q_PRUNE] = "DELETE FROM seen WHERE (channel, src_id) IN"
                " (SELECT s.channel, s.src_id FROM seen s WHERE s.at < ?1 AND NOT EXISTS"
                "  (SELECT 1 FROM spool p WHERE p.channel = s.channel AND p.src_id = s.src_id)"
                "  LIMIT 1000)",
};

struct spool {
    struct spool_conf conf;     /* settings (strings borrowed from the caller) */
    sqlite3 *db;                /* the spool database */
    sqlite3_stmt *st[Q_N];      /* prepared statements */
    struct ep *acks;            /* SUB of omni-archive's acks, or NULL */
    struct ulid_gen ids;        /* ids for envelopes put without one */
    struct ep *out;             /* spool_set_output: where envelopes go, or NULL */
    struct ep *tap;             /* spool_set_output: a copy, and the backlog, or NULL */
    uint64_t sent;              /* envelopes sent, for the log */
    struct env *report;         /* the stats event being built */
    uint64_t next_report;       /* monotonic ms of the next report */
    struct env *env;            /* a stored envelope being sent */
    struct buf enc;             /* an envelope being stored, encoded */
    spool_send_fn send;         /* sender, or NULL for stage_emit */
    void *send_arg;             /* its argument */
    bool in_txn;                /* the caller's transaction is open */
    bool sync_full;             /* synchronous is FULL now */
    int64_t backlog;            /* committed rows not acknowledged */
    int64_t pending;            /* rows added by the open transaction */
    int64_t next_due;           /* wall ms the earliest row is due, or -1 for none */
    int64_t retry_at;           /* wall ms before which a sender that said "not now" rests */
    uint64_t next_prune;        /* monotonic ms of the next forgetting round */
    uint64_t acked;             /* rows acknowledged, for the log */
    uint64_t resent;            /* rows sent more than once, for the log */
    struct log_limit limit;     /* rate limit of errors */
    struct log_limit resend_limit; /* rate limit of "not acknowledged" warnings */
};

#define C(f) offsetof(struct spool_conf, f)
static const struct opt s_opts[] = {
    { "spool", OPT_STR, NULL, C(path), "the spool database (sqlite; created when missing) (required)" },
    { "acks", OPT_STR, NULL, C(acks),
      "omni-archive's --acks endpoint (SUB; a bare URI connects); without it a message leaves the spool once sent" },
    { "resend-after", OPT_MS, "30s", C(resend_after_ms),
      "send again, with the same id, what stays unacknowledged this long" },
    { "spool-max", OPT_INT, "100000", C(max), "unacknowledged messages at which new work is refused" },
    { "dedupe-window", OPT_MS, "7d", C(dedupe_ms),
      "how long a channel's message id is remembered after its ack, to dedupe re-deliveries" },
    { NULL, 0, NULL, 0, NULL }
};
#undef C

size_t spool_opts_into(struct opt *table, size_t max, size_t base)
{
    size_t n = sizeof s_opts / sizeof s_opts[0] - 1;
    assert(max >= n + 1);
    for (size_t i = 0; i < n; i++) {
        table[i] = s_opts[i];
        table[i].offset += base;
    }
    table[n] = s_opts[n];
    return n;
}

/* Runs one prepared statement to its end. Returns SQLITE_OK or the error. */
static int s_run(struct spool *sp, int q)
{
    int rc = sqlite3_step(sp->st[q]);
    sqlite3_reset(sp->st[q]);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

static int64_t s_int(struct spool *sp, int q, int64_t none)
{
    int64_t v = none;
    if (sqlite3_step(sp->st[q]) == SQLITE_ROW && sqlite3_column_type(sp->st[q], 0) != SQLITE_NULL) {
        v = sqlite3_column_int64(sp->st[q], 0);
    }
    sqlite3_reset(sp->st[q]);
    return v;
}

static void s_refresh_next(struct spool *sp)
{
    sp->next_due = s_int(sp, Q_NEXT, -1);
    if (sp->next_due == NEVER) {
        sp->next_due = -1;
    }
}

static int s_sync(struct spool *sp, bool full)
{
    if (sp->sync_full == full) {
        return SQLITE_OK;
    }
    int rc = s_run(sp, full ? Q_SYNC_FULL : Q_SYNC_NORMAL);
    if (rc == SQLITE_OK) {
        sp->sync_full = full;
    }
    return rc;
}

/* Opens a transaction of the spool's own. Returns SQLITE_OK, or the error. */
static int s_own_begin(struct spool *sp)
{
    assert(!sp->in_txn);
    int rc = s_sync(sp, false);
    return rc == SQLITE_OK ? s_run(sp, Q_BEGIN) : rc;
}

static int s_own_end(struct spool *sp, int rc)
{
    if (rc == SQLITE_OK) {
        rc = s_run(sp, Q_COMMIT);
    }
    if (rc != SQLITE_OK && !sqlite3_get_autocommit(sp->db)) {
        s_run(sp, Q_ROLLBACK);
    }
    return rc;
}

static void s_db_error(struct spool *sp, const char *what, int rc)
{
    log_limited(&sp->limit, LOG_ERROR, "spool %s: %s: %s", sp->conf.path, what,
                rc == SQLITE_BUSY ? "database is locked" : sqlite3_errmsg(sp->db));
}

/* Creates the schema, refusing a database that is something else. */
static int s_schema_make(sqlite3 *db, char *err, size_t n)
{
    char why[300];
    if (db_exec(db, "BEGIN IMMEDIATE", why, sizeof why) != SQLITE_OK) {
        snprintf(err, n, "cannot lock: %.200s", why);
        return -1;
    }
    int rc = -1;
    sqlite3_stmt *st = NULL;
    int64_t version = -1, tables = -1;
    if (sqlite3_prepare_v2(db, "SELECT (SELECT user_version FROM pragma_user_version),"
                           " (SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%')",
                           -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
        version = sqlite3_column_int64(st, 0);
        tables = sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    if (version < 0) {
        snprintf(err, n, "%s", sqlite3_errmsg(db));
        goto done;
    }
    if (version > SCHEMA_VERSION) {
        snprintf(err, n, "schema version %lld is newer than this build's %d", (long long)version,
                 SCHEMA_VERSION);
        goto done;
    }
    if (version == 0 && tables > 0) {
        snprintf(err, n, "the database holds other tables: not a spool");
        goto done;
    }
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d", SCHEMA_VERSION);
    if (db_exec(db, s_schema, why, sizeof why) != SQLITE_OK
        || db_exec(db, sql, why, sizeof why) != SQLITE_OK) {
        snprintf(err, n, "cannot create the schema: %.200s", why);
        goto done;
    }
    rc = 0;
done:
    db_exec(db, rc == 0 ? "COMMIT" : "ROLLBACK", why, sizeof why);
    return rc;
}

struct spool *spool_open(struct stage_ctx *ctx, const struct spool_conf *conf, char *err, size_t n)
{
    assert(conf != NULL);
    if (conf->path == NULL || conf->path[0] == '\0') {
        snprintf(err, n, "--spool is required");
        return NULL;
    }
    struct spool *sp = calloc(1, sizeof *sp);
    if (sp == NULL || (sp->env = env_new()) == NULL) {
        snprintf(err, n, "out of memory");
        free(sp);
        return NULL;
    }
    sp->conf = *conf;
    sp->next_due = -1;
    sp->next_prune = stage_mono_ms();
    char why[300];
    const char *path = conf->path;
    int rc = sqlite3_open_v2(path, &sp->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                             NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, n, "%s: %s", path, sp->db ? sqlite3_errmsg(sp->db) : sqlite3_errstr(rc));
        goto fail;
    }
    sqlite3_busy_timeout(sp->db, BUSY_MS);
    if (db_exec(sp->db, "PRAGMA journal_mode = WAL", why, sizeof why) != SQLITE_OK
        || db_exec(sp->db, "PRAGMA synchronous = FULL", why, sizeof why) != SQLITE_OK) {
        snprintf(err, n, "%.200s: %.200s", path, why);
        goto fail;
    }
    sp->sync_full = true;
    sqlite3_stmt *jm = NULL;
    bool wal = false;
    if (sqlite3_prepare_v2(sp->db, "PRAGMA journal_mode", -1, &jm, NULL) == SQLITE_OK
        && sqlite3_step(jm) == SQLITE_ROW) {
        const char *m = (const char *)sqlite3_column_text(jm, 0);
        wal = m != NULL && strcmp(m, "wal") == 0;
    }
    sqlite3_finalize(jm);
    if (!wal) {
        snprintf(err, n, "%s: cannot use WAL", path);
        goto fail;
    }
    if (s_schema_make(sp->db, why, sizeof why) != 0) {
        snprintf(err, n, "%.200s: %.200s", path, why);
        goto fail;
    }
    for (int q = 0; q < Q_N; q++) {
        if (sqlite3_prepare_v3(sp->db, s_sql[q], -1, SQLITE_PREPARE_PERSISTENT, &sp->st[q], NULL)
            != SQLITE_OK) {
            snprintf(err, n, "%s: %s", path, sqlite3_errmsg(sp->db));
            goto fail;
        }
    }
    /* What the last process sent may have died in its queues: due now. */
    if (db_exec(sp->db, "UPDATE spool SET due_at = 0 WHERE due_at > 0", why, sizeof why) != SQLITE_OK) {
        snprintf(err, n, "%.200s: %.200s", path, why);
        goto fail;
    }
    sp->backlog = s_int(sp, Q_COUNT, 0);
    s_refresh_next(sp);
    if (conf->acks != NULL && conf->acks[0] != '\0') {
        sp->acks = acks_open(ctx, "acks", conf->acks, EP_SUB, err, n);
        if (sp->acks == NULL) {
            goto fail;
        }
    }
    if (sp->backlog > 0) {
        log_msg(LOG_INFO, "spool %s: %lld messages not acknowledged, sending them again", path,
                (long long)sp->backlog);
    }
    return sp;
fail:
    spool_destroy(&sp);
    return NULL;
}

void spool_destroy(struct spool **spp)
{
    struct spool *sp = *spp;
    if (sp == NULL) {
        return;
    }
    if (sp->in_txn) {
        spool_rollback(sp);
    }
    if (sp->acked > 0 || sp->resent > 0) {
        log_msg(LOG_DEBUG, "spool %s: %llu acknowledged, %llu sent again, %lld waiting",
                sp->conf.path, (unsigned long long)sp->acked, (unsigned long long)sp->resent,
                (long long)sp->backlog);
    }
    ep_destroy(&sp->acks);
    env_destroy(&sp->report);
    for (int q = 0; q < Q_N; q++) {
        sqlite3_finalize(sp->st[q]);
    }
    if (sp->db != NULL && sqlite3_close(sp->db) != SQLITE_OK) {
        log_msg(LOG_WARN, "closing %s: %s", sp->conf.path, sqlite3_errmsg(sp->db));
    }
    env_destroy(&sp->env);
    buf_free(&sp->enc);
    free(sp);
    *spp = NULL;
}

/* Opens the caller's transaction when none is. */
static int s_begin(struct spool *sp)
{
    if (sp->in_txn) {
        return 0;
    }
    int rc = s_sync(sp, true);
    if (rc == SQLITE_OK) {
        rc = s_run(sp, Q_BEGIN);
    }
    if (rc != SQLITE_OK) {
        s_db_error(sp, "cannot begin", rc);
        return -1;
    }
    sp->in_txn = true;
    sp->pending = 0;
    return 0;
}

int spool_put(struct spool *sp, struct env *e)
{
    const char *channel = env_get(e, ENV_CHANNEL);
    assert(channel != NULL);
    if (s_begin(sp) != 0) {
        return -1;
    }
    uint64_t now = stage_now_ms();
    if (!env_has(e, ENV_V)) {
        env_set_uint(e, ENV_V, ENV_VERSION);
    }
    if (!env_has(e, ENV_TS)) {
        env_set_uint(e, ENV_TS, now);
    }
    const char *src = env_get(e, ENV_SRC_ID);
    int rc;
    if (src != NULL) {
        sqlite3_stmt *st = sp->st[Q_SEEN_GET];
        sqlite3_bind_text(st, 1, channel, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, src, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            int set = env_set(e, ENV_ID, (const char *)sqlite3_column_text(st, 0), NULL);
            sqlite3_reset(st);
            if (set != 0) {
                log_limited(&sp->limit, LOG_ERROR, "spool %s: stored id of %s/%s is not usable",
                            sp->conf.path, channel, src);
                return -1;
            }
            return 1;
        }
        sqlite3_reset(st);
        if (rc != SQLITE_DONE) {
            s_db_error(sp, "cannot look up a channel id", rc);
            return -1;
        }
    }
    if (!env_has(e, ENV_ID)) {
        char id[ULID_LEN + 1];
        if (ulid_next(&sp->ids, now, id) != 0 || env_set(e, ENV_ID, id, NULL) != 0) {
            log_limited(&sp->limit, LOG_ERROR, "no randomness for ids: %s", strerror(errno));
            return -1;
        }
    }
    /* env_set above may have moved the strings: look them up again. */
    channel = env_get(e, ENV_CHANNEL);
    src = env_get(e, ENV_SRC_ID);
    const char *id = env_get(e, ENV_ID);
    buf_reset(&sp->enc);
    if (env_encode(e, &sp->enc) != 0) {
        log_limited(&sp->limit, LOG_ERROR, "out of memory encoding id=%s", id);
        return -1;
    }
    sqlite3_stmt *st = sp->st[Q_INSERT];
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, channel, -1, SQLITE_STATIC);
    if (src != NULL) {
        sqlite3_bind_text(st, 3, src, -1, SQLITE_STATIC);
    } else {
        sqlite3_bind_null(st, 3);
    }
    sqlite3_bind_blob(st, 4, sp->enc.data, (int)sp->enc.len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, (int64_t)now);
    rc = s_run(sp, Q_INSERT);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_OK) {
        s_db_error(sp, "cannot store", rc);
        return -1;
    }
    if (sqlite3_changes(sp->db) == 0) {
        return 1;       /* this id is spooled already: sent again by its source */
    }
    if (src != NULL) {
        st = sp->st[Q_SEEN_PUT];
        sqlite3_bind_text(st, 1, channel, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, src, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, (int64_t)now);
        rc = s_run(sp, Q_SEEN_PUT);
        sqlite3_clear_bindings(st);
        if (rc != SQLITE_OK) {
            s_db_error(sp, "cannot store a channel id", rc);
            return -1;
        }
    }
    sp->pending++;
    return 0;
}

int spool_state_set(struct spool *sp, const char *key, const char *value)
{
    if (s_begin(sp) != 0) {
        return -1;
    }
    sqlite3_stmt *st = sp->st[Q_STATE_SET];
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
    int rc = s_run(sp, Q_STATE_SET);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_OK) {
        s_db_error(sp, "cannot set a cursor", rc);
        return -1;
    }
    return 0;
}

int spool_state_get(struct spool *sp, const char *key, char *out, size_t n)
{
    sqlite3_stmt *st = sp->st[Q_STATE_GET];
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    int found = 0;
    if (rc == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(st, 0);
        snprintf(out, n, "%s", v ? v : "");
        found = 1;
    } else if (rc != SQLITE_DONE) {
        s_db_error(sp, "cannot read a cursor", rc);
        found = -1;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return found;
}

int spool_commit(struct spool *sp)
{
    if (!sp->in_txn) {
        return 0;
    }
    int rc = s_run(sp, Q_COMMIT);
    if (rc != SQLITE_OK) {
        s_db_error(sp, "cannot commit", rc);
        spool_rollback(sp);
        return -1;
    }
    sp->in_txn = false;
    sp->backlog += sp->pending;
    if (sp->pending > 0) {
        sp->next_due = 0;
    }
    sp->pending = 0;
    return 0;
}

void spool_rollback(struct spool *sp)
{
    if (!sp->in_txn) {
        return;
    }
    if (!sqlite3_get_autocommit(sp->db)) {
        s_run(sp, Q_ROLLBACK);
    }
    sp->in_txn = false;
    sp->pending = 0;
    /* Acks applied inside the transaction went with it. */
    sp->backlog = s_int(sp, Q_COUNT, sp->backlog);
    s_refresh_next(sp);
}

/* Deletes the row of one acknowledged id, inside a transaction. */
static int s_ack_one(struct spool *sp, const char *id, size_t n, int64_t *deleted)
{
    sqlite3_stmt *st = sp->st[Q_ACK];
    sqlite3_bind_text(st, 1, id, (int)n, SQLITE_STATIC);
    int rc = s_run(sp, Q_ACK);
    sqlite3_clear_bindings(st);
    if (rc == SQLITE_OK) {
        *deleted += sqlite3_changes(sp->db);
    }
    return rc;
}

int spool_ack(struct spool *sp, const char *const *ids, size_t n)
{
    bool own = !sp->in_txn;
    int rc = own ? s_own_begin(sp) : SQLITE_OK;
    int64_t deleted = 0;
    for (size_t i = 0; i < n && rc == SQLITE_OK; i++) {
        rc = s_ack_one(sp, ids[i], strlen(ids[i]), &deleted);
    }
    if (own) {
        rc = s_own_end(sp, rc);
    }
    if (rc != SQLITE_OK) {
        s_db_error(sp, "cannot drop acknowledged messages", rc);
        return -1;
    }
    sp->backlog -= deleted;
    sp->acked += (uint64_t)deleted;
    if (own) {
        s_refresh_next(sp);
    }
    return 0;
}

/* acks_drain's callback: the ack of one id, in a transaction opened at
 * the first one. */
struct s_ack_walk {
    struct spool *sp;           /* the spool */
    bool open;                  /* the transaction is open */
    int64_t deleted;            /* rows deleted */
    int rc;                     /* SQLITE_OK, or the error that stopped the walk */
};

static int s_ack_id(void *arg, const char *id, size_t n)
{
    struct s_ack_walk *w = arg;
    if (!w->open) {
        w->rc = s_own_begin(w->sp);
        w->open = w->rc == SQLITE_OK;
    }
    if (w->rc == SQLITE_OK) {
        w->rc = s_ack_one(w->sp, id, n, &w->deleted);
    }
    return w->rc != SQLITE_OK;
}

/* Reads what has arrived on --acks, without waiting. */
static int s_read_acks(struct spool *sp)
{
    if (sp->acks == NULL) {
        return 0;
    }
    struct s_ack_walk w = { sp, false, 0, SQLITE_OK };
    acks_drain(sp->acks, ACK_MSGS, s_ack_id, &w, "acks", &sp->limit);
    int rc = w.open ? s_own_end(sp, w.rc) : w.rc;
    if (rc != SQLITE_OK) {
        /* The ids are lost with the transaction; their rows are sent again
         * and acknowledged again. */
        s_db_error(sp, "cannot drop acknowledged messages", rc);
        return -1;
    }
    sp->backlog -= w.deleted;
    sp->acked += (uint64_t)w.deleted;
    return 0;
}

/* Forgets channel ids older than --dedupe-window, a chunk at a time. */
static void s_prune(struct spool *sp)
{
    uint64_t mono = stage_mono_ms();
    if (mono < sp->next_prune || sp->conf.dedupe_ms < 0) {
        return;
    }
    sp->next_prune = mono + PRUNE_EVERY_MS;
    int64_t cutoff = (int64_t)stage_now_ms() - sp->conf.dedupe_ms;
    int rc = s_own_begin(sp);
    if (rc == SQLITE_OK) {
        sqlite3_bind_int64(sp->st[Q_PRUNE], 1, cutoff);
        rc = s_run(sp, Q_PRUNE);
    }
    int changed = rc == SQLITE_OK ? sqlite3_changes(sp->db) : 0;
    rc = s_own_end(sp, rc);
    if (rc != SQLITE_OK) {
        s_db_error(sp, "cannot forget old channel ids", rc);
    } else if (changed >= PRUNE_CHUNK) {
        sp->next_prune = mono;      /* more to forget: next pump */
    }
}

static int s_send(struct spool *sp, struct stage_ctx *ctx, struct env *e)
{
    int rc;
    if (sp->send != NULL) {
        rc = sp->send(sp->send_arg, e);
    } else if (sp->out != NULL) {
        rc = stage_emit_to(ctx, sp->out, sp->tap, e);
    } else {
        assert(ctx != NULL);
        rc = stage_emit(ctx, e) == 0 ? 0 : -1;
    }
    sp->sent += rc == 0;
    return rc;
}

/* Flushes a stdout output; a closed one stops the stage. Returns 0 or -1. */
static int s_flush_out(struct spool *sp, struct stage_ctx *ctx)
{
    if (sp->out == NULL || !ep_is_stdio(sp->out) || ep_flush(sp->out) == 0) {
        return 0;
    }
    log_limited(&sp->limit, LOG_ERROR, "stdout: %s", strerror(errno));
    if (errno == EPIPE) {
        stage_stop(ctx);
    }
    return -1;
}

/* Sends what is due, up to a batch. Returns envelopes sent, or -1. */
static int s_send_due(struct spool *sp, struct stage_ctx *ctx)
{
    int64_t now = (int64_t)stage_now_ms();
    if (sp->next_due < 0 || sp->next_due > now || now < sp->retry_at) {
        return 0;
    }
    int rc = s_own_begin(sp);
    int sent = 0;
    bool failed = false;
    while (rc == SQLITE_OK && sent < SPOOL_PUMP_BATCH) {
        sqlite3_stmt *st = sp->st[Q_DUE];
        sqlite3_bind_int64(st, 1, now);
        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW) {
            sqlite3_reset(st);
            rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
            break;
        }
        rc = SQLITE_OK;
        int64_t seq = sqlite3_column_int64(st, 0);
        const void *blob = sqlite3_column_blob(st, 1);
        size_t len = (size_t)sqlite3_column_bytes(st, 1);
        int64_t attempts = sqlite3_column_int64(st, 2);
        struct env_err err;
        int dec = env_decode(sp->env, blob, len, &err);
        if (dec != 0) {
            char why[300];
            log_limited(&sp->limit, LOG_ERROR, "spool %s: stored id=%s does not decode (%s): dropped",
                        sp->conf.path, (const char *)sqlite3_column_text(st, 3),
                        env_err_str(&err, why, sizeof why));
        }
        sqlite3_reset(st);
        if (dec != 0) {
            sqlite3_bind_int64(sp->st[Q_DELETE_SEQ], 1, seq);
            rc = s_run(sp, Q_DELETE_SEQ);
            sp->backlog--;
            continue;
        }
        int s = s_send(sp, ctx, sp->env);
        if (s != 0) {
            failed = s < 0;
            sp->retry_at = now + NOT_NOW_MS;
            break;
        }
        sent++;
        if (attempts > 0) {
            sp->resent++;
        }
        if (sp->acks == NULL) {
            sqlite3_bind_int64(sp->st[Q_DELETE_SEQ], 1, seq);
            rc = s_run(sp, Q_DELETE_SEQ);
            sp->backlog--;
            continue;
        }
        int64_t due = NEVER;
        if (sp->conf.resend_after_ms > 0) {
            int64_t factor = attempts >= 3 ? BACKOFF_MAX : (int64_t)1 << attempts;
            due = now + sp->conf.resend_after_ms * factor;
        }
        if (attempts + 1 >= 3) {
            log_limited(&sp->resend_limit, LOG_WARN,
                        "id=%s sent %lld times without an ack: is --acks %s omni-archive's --acks?",
                        env_get(sp->env, ENV_ID), (long long)attempts + 1, sp->conf.acks);
        }
        st = sp->st[Q_SENT];
        sqlite3_bind_int64(st, 1, seq);
        sqlite3_bind_int64(st, 2, now);
        sqlite3_bind_int64(st, 3, due);
        rc = s_run(sp, Q_SENT);
    }
    rc = s_own_end(sp, rc);
    if (rc != SQLITE_OK) {
        /* Sent but not marked: they are sent again, under their ids. */
        s_db_error(sp, "cannot mark messages sent", rc);
        sp->backlog = s_int(sp, Q_COUNT, sp->backlog);
        return -1;
    }
    return failed && sent == 0 ? -1 : sent;
}

/* Publishes the backlog on the tap, at most every REPORT_EVERY_MS, as a
 * stats event {meta: {event: "stats", spool_backlog: N}} that omni-metrics
 * turns into omnibus_spool_backlog. Only the tap sees it. */
static void s_report(struct spool *sp, struct stage_ctx *ctx)
{
    uint64_t mono = stage_mono_ms();
    if (sp->tap == NULL || ctx == NULL || mono < sp->next_report) {
        return;
    }
    sp->next_report = mono + REPORT_EVERY_MS;
    if (sp->report == NULL && (sp->report = env_new()) == NULL) {
        return;
    }
    struct env *e = sp->report;
    uint64_t now = stage_now_ms();
    char id[ULID_LEN + 1];
    if (ulid_next(&sp->ids, now, id) != 0) {
        return;
    }
    const struct env_kv meta[] = {
        { .key = "event", .type = ENV_KV_STR, .s = "stats" },
        { .key = "spool_backlog", .type = ENV_KV_INT, .i = sp->backlog },
    };
    env_clear(e);
    env_set_uint(e, ENV_V, ENV_VERSION);
    env_set_uint(e, ENV_TS, now);
    if (env_set(e, ENV_ID, id, NULL) == 0 && env_set(e, ENV_CHANNEL, "api", NULL) == 0
        && env_set(e, ENV_DIR, "event", NULL) == 0 && env_set_map(e, ENV_META, meta, 2, NULL) == 0) {
        stage_emit_to(ctx, sp->tap, NULL, e);
    }
}

void spool_set_output(struct spool *sp, struct ep *out, struct ep *tap)
{
    sp->out = out;
    sp->tap = tap;
}

uint64_t spool_sent(const struct spool *sp)
{
    return sp->sent;
}

int spool_pump(struct spool *sp, struct stage_ctx *ctx)
{
    if (sp->in_txn) {
        return 0;
    }
    int rc = s_read_acks(sp);
    int sent = s_send_due(sp, ctx);
    if (s_flush_out(sp, ctx) != 0) {
        rc = -1;
    }
    s_report(sp, ctx);
    s_prune(sp);
    s_refresh_next(sp);
    return rc < 0 || sent < 0 ? -1 : sent;
}

void spool_set_sender(struct spool *sp, spool_send_fn fn, void *arg)
{
    sp->send = fn;
    sp->send_arg = arg;
}

int64_t spool_next_ms(const struct spool *sp)
{
    if (sp->next_due < 0) {
        return -1;
    }
    int64_t now = (int64_t)stage_now_ms();
    int64_t at = sp->next_due > sp->retry_at ? sp->next_due : sp->retry_at;
    return at > now ? at - now : 0;
}

int64_t spool_backlog(const struct spool *sp)
{
    return sp->backlog + sp->pending;
}

bool spool_full(const struct spool *sp)
{
    return sp->conf.max > 0 && spool_backlog(sp) >= sp->conf.max;
}

void *spool_acks_socket(const struct spool *sp)
{
    return sp->acks ? ep_socket(sp->acks) : NULL;
}
