/* archive — the omni-archive stage and its database; see archive.h.
 *
 * One batch is one transaction. handle() stores the envelope's row in the
 * open transaction, keeps a copy and says HELD; when the batch is full or
 * --batch-ms has passed, s_flush() commits, publishes the ids on --acks and
 * only then emits the copies, in order. Nothing is acked or passed on
 * before its commit; a batch whose transaction was lost (an error rolled it
 * back) is stored again from the copies before it commits.
 *
 * With --out-acks, the hop to omni-send is durable too: each new reply
 * (dir=out) gets a row in `owed` in the transaction that stores it; the
 * ids omni-send publishes once its outbox has them delete those rows; a
 * reply still owed --resend-after after it was passed on is passed on
 * again from its stored bytes (same id: the outbox ignores a copy), and at
 * start every owed reply is due at once. So a reply the archive has stored
 * reaches the outbox even when either process dies with it in a queue. */
#include "db.h"
#include "archive.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <msgpack.h>
#include <zmq.h>

#include "acks.h"
#include "buf.h"
#include "endpoint.h"
#include "log.h"
#include "mp.h"

#define BUSY_MS 250             /* the service waits this long for a lock, then retries */
#define RETAIN_CHUNK 2000       /* messages deleted per retention transaction */
#define RETAIN_EVERY_MS 3600000 /* a finished retention pass runs again after this */
#define OWED_CHUNK 256          /* owed replies passed on again per round */
#define OWED_ACK_MSGS 1024      /* ack messages from omni-send read per round */

const char archive_sql_schema[] =
    /* seq is the stable rowid the FTS index refers to (VACUUM may renumber
     * an implicit rowid); id is the key every INSERT OR IGNORE is on. */
    "CREATE TABLE IF NOT EXISTS messages ("
    " seq INTEGER PRIMARY KEY,"
    " id TEXT NOT NULL UNIQUE,"
    " ts INTEGER NOT NULL,"
    " channel TEXT NOT NULL,"
    " dir TEXT NOT NULL,"
    " customer TEXT,"
    " conversation TEXT,"
    " \"from\" TEXT,"
    " \"to\" TEXT,"
    " text TEXT,"
    " subject TEXT,"
    " reply_to TEXT,"
    " env BLOB NOT NULL);\n"
    "CREATE INDEX IF NOT EXISTS messages_ts ON messages(ts);\n"
    "CREATE INDEX IF NOT EXISTS messages_customer ON messages(customer, ts)"
    " WHERE customer IS NOT NULL;\n"
    "CREATE INDEX IF NOT EXISTS messages_conversation ON messages(conversation, ts)"
    " WHERE conversation IS NOT NULL;\n"
    "CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5("
    " text, subject, content='messages', content_rowid='seq',"
    " tokenize='unicode61 remove_diacritics 2');\n"
    "CREATE TRIGGER IF NOT EXISTS messages_fts_insert AFTER INSERT ON messages"
    " WHEN new.text IS NOT NULL OR new.subject IS NOT NULL BEGIN"
    " INSERT INTO messages_fts(rowid, text, subject) VALUES (new.seq, new.text, new.subject);"
    " END;\n"
    "CREATE TRIGGER IF NOT EXISTS messages_fts_delete AFTER DELETE ON messages"
    " WHEN old.text IS NOT NULL OR old.subject IS NOT NULL BEGIN"
    " INSERT INTO messages_fts(messages_fts, rowid, text, subject)"
    " VALUES ('delete', old.seq, old.text, old.subject);"
    " END;\n"
    "CREATE TRIGGER IF NOT EXISTS messages_immutable BEFORE UPDATE ON messages BEGIN"
    " SELECT RAISE(ABORT, 'archived messages are not changed');"
    " END;\n"
    /* status_ts: ts of the envelope that set status, so a late one does not
     * undo a newer decision; closed_at: ts of the last close event. */
    "CREATE TABLE IF NOT EXISTS conversations ("
    " id TEXT PRIMARY KEY,"
    " customer TEXT,"
    " status TEXT NOT NULL,"
    " status_ts INTEGER NOT NULL,"
    " channels TEXT NOT NULL,"
    " first_inbound INTEGER,"
    " first_response INTEGER,"
    " last_activity INTEGER NOT NULL,"
    " messages INTEGER NOT NULL,"
    " closed_at INTEGER) WITHOUT ROWID;\n"
    "CREATE INDEX IF NOT EXISTS conversations_customer ON conversations(customer);\n"
    /* owed: replies (dir=out) passed on to omni-send and not yet in its
     * outbox, by its acks (--out-acks); due: when to pass one on again (ms
     * since epoch); tries: times passed on. Written only by the service. */
    "CREATE TABLE IF NOT EXISTS owed ("
    " id TEXT PRIMARY KEY,"
    " due INTEGER NOT NULL,"
    " tries INTEGER NOT NULL) WITHOUT ROWID;\n"
    "CREATE INDEX IF NOT EXISTS owed_due ON owed(due);\n"
    "CREATE INDEX IF NOT EXISTS conversations_activity ON conversations(last_activity);\n";

const char archive_sql_insert[] =
    "INSERT OR IGNORE INTO messages"
    " (id, ts, channel, dir, customer, conversation, \"from\", \"to\", text, subject, reply_to, env)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";

/* Arrival order need not be ts order: first_inbound is the least inbound
 * ts, and first_response the least outbound ts after it, looked up again
 * whenever first_inbound moves. */
const char archive_sql_conversation[] =
    "INSERT INTO conversations"
    " (id, customer, status, status_ts, channels, first_inbound, first_response,"
    "  last_activity, messages, closed_at)"
    " VALUES (?1, ?2, coalesce(?3, 'open'), CASE WHEN ?3 IS NULL THEN 0 ELSE ?4 END, ?5, ?6,"
    "  NULL, ?4, ?7, ?8)"
    " ON CONFLICT(id) DO UPDATE SET"
    " customer = coalesce(customer, ?2),"
    " status = CASE WHEN ?3 IS NOT NULL AND ?4 >= status_ts THEN ?3 ELSE status END,"
    " status_ts = CASE WHEN ?3 IS NOT NULL AND ?4 >= status_ts THEN ?4 ELSE status_ts END,"
    " channels = CASE WHEN instr(',' || channels || ',', ',' || ?5 || ',') > 0 THEN channels"
    "  ELSE channels || ',' || ?5 END,"
    " first_response = CASE"
    "  WHEN ?6 IS NOT NULL AND (first_inbound IS NULL OR ?6 < first_inbound) THEN"
    "   (SELECT min(m.ts) FROM messages m WHERE m.conversation = ?1 AND m.dir = 'out' AND m.ts > ?6)"
    "  WHEN ?9 IS NOT NULL AND first_inbound IS NOT NULL AND ?9 > first_inbound"
    "   AND (first_response IS NULL OR ?9 < first_response) THEN ?9"
    "  ELSE first_response END,"
    " first_inbound = CASE WHEN ?6 IS NOT NULL AND (first_inbound IS NULL OR ?6 < first_inbound)"
    "  THEN ?6 ELSE first_inbound END,"
    " last_activity = max(last_activity, ?4),"
    " messages = messages + ?7,"
    " closed_at = CASE WHEN ?8 IS NOT NULL AND (closed_at IS NULL OR ?8 > closed_at) THEN ?8"
    "  ELSE closed_at END";

/* --- the database ------------------------------------------------------ */

/* Refuses a database that is not an archive of this schema (or older):
 * checked before anything in it is changed. */
static int s_schema_check(sqlite3 *db, char *err, size_t n)
{
    int64_t version = db_query_int(db, "PRAGMA user_version");
    int64_t tables = db_query_int(db, "SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'");
    if (version < 0 || tables < 0) {
        snprintf(err, n, "%.200s", sqlite3_errmsg(db));
        return EXIT_UNAVAILABLE;
    }
    if (version > ARCHIVE_SCHEMA_VERSION) {
        snprintf(err, n, "schema version %lld is newer than this build's %d",
                 (long long)version, ARCHIVE_SCHEMA_VERSION);
        return EXIT_CONFIG;
    }
    if (version == 0 && tables > 0) {
        snprintf(err, n, "the database holds other tables: not an omni-archive database");
        return EXIT_CONFIG;
    }
    return 0;
}

/* Creates what is missing of the schema, in one transaction. */
static int s_schema(sqlite3 *db, char *err, size_t n)
{
    char why[300];
    int status = 0;
    if (db_exec(db, "BEGIN IMMEDIATE", why, sizeof why) != SQLITE_OK) {
        snprintf(err, n, "cannot lock the database: %.200s", why);
        return EXIT_TEMPFAIL;
    }
    status = s_schema_check(db, err, n);
    if (status != 0) {
        goto done;
    }
    if (db_exec(db, archive_sql_schema, why, sizeof why) != SQLITE_OK) {
        snprintf(err, n, "cannot create the schema: %.200s", why);
        status = EXIT_UNAVAILABLE;
        goto done;
    }
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d", ARCHIVE_SCHEMA_VERSION);
    if (db_exec(db, sql, why, sizeof why) != SQLITE_OK) {
        snprintf(err, n, "cannot set the schema version: %.200s", why);
        status = EXIT_UNAVAILABLE;
        goto done;
    }
done:
    db_exec(db, status == 0 ? "COMMIT" : "ROLLBACK", why, sizeof why);
    return status;
}

int archive_open(const char *path, enum archive_mode mode, const struct archive_db_opts *opts,
                 sqlite3 **dbp, char *err, size_t n)
{
    *dbp = NULL;
    struct stat sb;
    if (mode != ARCHIVE_SERVICE && stat(path, &sb) != 0) {
        snprintf(err, n, "%s: %s", path, strerror(errno));
        return 66;      /* EX_NOINPUT */
    }
    int flags = mode == ARCHIVE_READ ? SQLITE_OPEN_READONLY
              : mode == ARCHIVE_WRITE ? SQLITE_OPEN_READWRITE
              : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
    sqlite3 *db = NULL;
    char why[300];
    int status = EXIT_UNAVAILABLE;
    int rc = sqlite3_open_v2(path, &db, flags | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, n, "%s: %s", path, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        goto fail;
    }
    sqlite3_extended_result_codes(db, 0);
    /* Opening may wait for a writer (forget, retain) to finish. */
    sqlite3_busy_timeout(db, 5000);
    if (mode == ARCHIVE_SERVICE) {
        status = s_schema_check(db, why, sizeof why);
        if (status != 0) {
            snprintf(err, n, "%.200s: %.200s", path, why);
            goto fail;
        }
        status = EXIT_UNAVAILABLE;
        sqlite3_stmt *st = NULL;
        const char *jm = NULL;
        if (sqlite3_prepare_v2(db, "PRAGMA journal_mode = WAL", -1, &st, NULL) == SQLITE_OK
            && sqlite3_step(st) == SQLITE_ROW) {
            jm = (const char *)sqlite3_column_text(st, 0);
        }
        bool wal = jm != NULL && strcmp(jm, "wal") == 0;
        snprintf(why, sizeof why, "%s", jm ? jm : sqlite3_errmsg(db));
        sqlite3_finalize(st);
        if (!wal) {
            snprintf(err, n, "%s: cannot use WAL (journal mode is %s)", path, why);
            goto fail;
        }
        const char *sync = opts && !opts->sync_full ? "PRAGMA synchronous = NORMAL"
                                                    : "PRAGMA synchronous = FULL";
        if (db_exec(db, sync, why, sizeof why) != SQLITE_OK
            || db_exec(db, "PRAGMA cache_size = -32768", why, sizeof why) != SQLITE_OK
            || db_exec(db, "PRAGMA temp_store = MEMORY", why, sizeof why) != SQLITE_OK) {
            snprintf(err, n, "%.200s: %.200s", path, why);
            goto fail;
        }
        status = s_schema(db, why, sizeof why);
        if (status != 0) {
            snprintf(err, n, "%.200s: %.200s", path, why);
            goto fail;
        }
        if (opts != NULL) {
            sqlite3_busy_timeout(db, opts->busy_ms);
        }
    } else {
        if (db_exec(db, "PRAGMA temp_store = MEMORY", why, sizeof why) != SQLITE_OK) {
            snprintf(err, n, "%.200s: %.200s", path, why);
            goto fail;
        }
        int64_t version = db_query_int(db, "PRAGMA user_version");
        if (version < 0) {
            snprintf(err, n, "%s: %s", path, sqlite3_errmsg(db));
            goto fail;
        }
        if (version != ARCHIVE_SCHEMA_VERSION) {
            snprintf(err, n, "%s: not an omni-archive database (schema version %lld, want %d)",
                     path, (long long)version, ARCHIVE_SCHEMA_VERSION);
            status = EXIT_CONFIG;
            goto fail;
        }
    }
    *dbp = db;
    return 0;
fail:
    sqlite3_close(db);
    return status;
}

/* The string value of key in the msgpack map p[0..n), or NULL; *len its bytes. */
static const char *s_map_str(const void *p, size_t n, const char *key, uint32_t *len)
{
    struct mp_reader r;
    struct mp_val v;
    mp_reader_init(&r, p, n);
    if (mp_read(&r, &v) != 0 || v.type != MP_MAP) {
        return NULL;
    }
    size_t kl = strlen(key);
    for (uint32_t i = 0; i < v.n; i++) {
        struct mp_val k, val;
        if (mp_read(&r, &k) != 0) {
            return NULL;
        }
        if (k.type == MP_STR && k.n == kl && memcmp(k.s, key, kl) == 0) {
            struct mp_reader peek = r;
            if (mp_read(&peek, &val) == 0 && val.type == MP_STR) {
                *len = val.n;
                return val.s;
            }
            return NULL;
        }
        if (mp_skip(&r) != 0) {
            return NULL;
        }
    }
    return NULL;
}

const char *archive_status(const struct env *e, bool *close)
{
    size_t n;
    uint32_t len = 0;
    *close = false;
    const void *meta = env_raw(e, ENV_META, &n);
    const char *dir = env_get(e, ENV_DIR);
    if (meta != NULL && dir != NULL && strcmp(dir, "event") == 0) {
        const char *ev = s_map_str(meta, n, "event", &len);
        if (ev != NULL && len == 5 && memcmp(ev, "close", 5) == 0) {
            *close = true;
            return "closed";
        }
    }
    const void *route = env_raw(e, ENV_ROUTE, &n);
    if (route == NULL) {
        return NULL;
    }
    if (s_map_str(route, n, "agent", &len) != NULL && len > 0) {
        return "assigned";
    }
    const char *target = s_map_str(route, n, "target", &len);
    if (target != NULL && len == 3 && memcmp(target, "bot", 3) == 0) {
        return "bot";
    }
    if ((target != NULL && len > 0) || (s_map_str(route, n, "queue", &len) != NULL && len > 0)) {
        return "queued";
    }
    return NULL;
}

void archive_row_from_env(struct archive_row *row, const struct env *e, const void *env,
                          size_t env_len)
{
    row->id = env_get(e, ENV_ID);
    row->ts = e->ts;
    row->channel = env_get(e, ENV_CHANNEL);
    row->dir = env_get(e, ENV_DIR);
    row->customer = env_get(e, ENV_CUSTOMER);
    row->conversation = env_get(e, ENV_CONVERSATION);
    row->from = env_get(e, ENV_FROM);
    row->to = env_get(e, ENV_TO);
    row->text = env_get(e, ENV_TEXT);
    row->subject = env_get(e, ENV_SUBJECT);
    row->reply_to = env_get(e, ENV_REPLY_TO);
    row->env = env;
    row->env_len = env_len;
    row->status = archive_status(e, &row->close);
}

static int s_bind_text(sqlite3_stmt *st, int i, const char *s)
{
    return s ? sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i);
}

int archive_bind_insert(sqlite3_stmt *st, const struct archive_row *row)
{
    int rc = s_bind_text(st, 1, row->id);
    rc |= sqlite3_bind_int64(st, 2, (sqlite3_int64)row->ts);
    rc |= s_bind_text(st, 3, row->channel);
    rc |= s_bind_text(st, 4, row->dir);
    rc |= s_bind_text(st, 5, row->customer);
    rc |= s_bind_text(st, 6, row->conversation);
    rc |= s_bind_text(st, 7, row->from);
    rc |= s_bind_text(st, 8, row->to);
    rc |= s_bind_text(st, 9, row->text);
    rc |= s_bind_text(st, 10, row->subject);
    rc |= s_bind_text(st, 11, row->reply_to);
    rc |= sqlite3_bind_blob(st, 12, row->env, (int)row->env_len, SQLITE_STATIC);
    return rc;
}

int archive_bind_conversation(sqlite3_stmt *st, const struct archive_row *row)
{
    bool in = row->dir != NULL && strcmp(row->dir, "in") == 0;
    bool out = row->dir != NULL && strcmp(row->dir, "out") == 0;
    sqlite3_int64 ts = (sqlite3_int64)row->ts;
    int rc = s_bind_text(st, 1, row->conversation);
    rc |= s_bind_text(st, 2, row->customer);
    rc |= s_bind_text(st, 3, row->status);
    rc |= sqlite3_bind_int64(st, 4, ts);
    rc |= s_bind_text(st, 5, row->channel);
    rc |= in ? sqlite3_bind_int64(st, 6, ts) : sqlite3_bind_null(st, 6);
    rc |= sqlite3_bind_int(st, 7, in || out ? 1 : 0);
    rc |= row->close ? sqlite3_bind_int64(st, 8, ts) : sqlite3_bind_null(st, 8);
    rc |= out ? sqlite3_bind_int64(st, 9, ts) : sqlite3_bind_null(st, 9);
    return rc;
}

int64_t archive_retain(sqlite3 *db, uint64_t cutoff_ms, int limit, int max_rounds,
                       int64_t *convs, int *rcp)
{
    static const char del_msg[] =
        "DELETE FROM messages WHERE seq IN"
        " (SELECT seq FROM messages WHERE ts < ?1 ORDER BY ts LIMIT ?2)";
    static const char del_conv[] = "DELETE FROM conversations WHERE last_activity < ?1";
    sqlite3_stmt *dm = NULL, *dc = NULL;
    int64_t total = 0;
    int rc = sqlite3_prepare_v2(db, del_msg, -1, &dm, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_prepare_v2(db, del_conv, -1, &dc, NULL);
    }
    if (convs != NULL) {
        *convs = 0;
    }
    for (int round = 0; rc == SQLITE_OK && (max_rounds <= 0 || round < max_rounds); round++) {
        rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
        if (rc != SQLITE_OK) {
            break;
        }
        sqlite3_bind_int64(dm, 1, (sqlite3_int64)cutoff_ms);
        sqlite3_bind_int(dm, 2, limit);
        rc = sqlite3_step(dm);
        sqlite3_reset(dm);
        int n = rc == SQLITE_DONE ? sqlite3_changes(db) : 0;
        if (rc == SQLITE_DONE && n < limit) {
            /* The last round: the conversations idle since before the cutoff. */
            sqlite3_bind_int64(dc, 1, (sqlite3_int64)cutoff_ms);
            rc = sqlite3_step(dc);
            sqlite3_reset(dc);
            if (rc == SQLITE_DONE && convs != NULL) {
                *convs += sqlite3_changes(db);
            }
        }
        if (rc != SQLITE_DONE) {
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
            break;
        }
        rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
        if (rc != SQLITE_OK) {
            if (!sqlite3_get_autocommit(db)) {
                sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
            }
            break;
        }
        total += n;
        if (n < limit) {
            rc = SQLITE_DONE;
            break;
        }
    }
    sqlite3_finalize(dm);
    sqlite3_finalize(dc);
    *rcp = rc == SQLITE_OK ? SQLITE_DONE : rc;
    return rc == SQLITE_DONE || rc == SQLITE_OK ? total : -1;
}

/* --- the stage --------------------------------------------------------- */

struct archive_conf {
    const char *db;         /* database path */
    int64_t batch;          /* envelopes per transaction */
    int64_t batch_ms;       /* longest a batch stays open */
    const char *acks;       /* PUB endpoint for committed ids, or NULL */
    const char *out_acks;   /* SUB of omni-send's acks, or NULL */
    int64_t resend_after_ms; /* pass an owed reply on again after this long */
    int64_t retain_ms;      /* delete messages older than this (0: keep all) */
    const char *sync;       /* "full" or "normal" */
};

struct archive {
    struct archive_conf *conf;  /* options */
    struct stage_ctx *ctx;      /* the runner, for the last flush in fini */
    sqlite3 *db;                /* the archive */
    sqlite3_stmt *ins;          /* archive_sql_insert */
    sqlite3_stmt *conv;         /* archive_sql_conversation */
    sqlite3_stmt *begin;        /* BEGIN IMMEDIATE */
    sqlite3_stmt *commit;       /* COMMIT */
    sqlite3_stmt *rollback;     /* ROLLBACK */
    struct ep *acks;            /* PUB of committed ids, or NULL */
    struct ep *out_acks;        /* SUB of omni-send's acks, or NULL */
    sqlite3_stmt *owe;          /* a new reply is owed */
    sqlite3_stmt *paid;         /* omni-send has it */
    sqlite3_stmt *due;          /* owed replies due, with their bytes */
    sqlite3_stmt *later;        /* an owed reply passed on again: when next */
    const char **ids;           /* the batch's ids, for its ack */
    struct env *again;          /* an owed reply being passed on again */
    uint64_t next_owed;         /* monotonic ms of the next look for due replies */
    uint64_t owed_new;          /* replies made owed (committed) */
    uint64_t owed_paid;         /* owed replies acked by omni-send */
    uint64_t owed_again;        /* owed replies passed on again */
    struct buf again_bytes;     /* the stored bytes of the owed replies due */
    struct log_limit owed_limit; /* rate limit of "passing on again" */
    int paid_rc;                /* the error that stopped s_paid, or SQLITE_OK */
    struct env **held;          /* copies of the batch's envelopes, in order */
    size_t n_held;              /* envelopes in the batch */
    uint64_t batch_start;       /* monotonic ms the batch opened */
    struct buf enc;             /* the envelope being stored, encoded */
    struct buf ack;             /* the ack message being built */
    uint64_t next_retain;       /* monotonic ms of the next retention round */
    uint64_t b_stored;          /* rows inserted in the open transaction */
    uint64_t b_present;         /* ids already stored, in the open transaction */
    uint64_t b_owed;            /* replies made owed, in the open transaction */
    uint64_t b_paid;            /* owed replies acked, in the open transaction */
    uint64_t stored;            /* rows inserted and committed */
    uint64_t present;           /* envelopes whose id was already stored */
    uint64_t batches;           /* transactions committed */
    struct log_limit db_limit;  /* rate limit of database errors */
};

#define C(f) offsetof(struct archive_conf, f)
static const struct opt s_opts[] = {
    { "db", OPT_STR, NULL, C(db), "the archive database (sqlite; created when missing) (required)" },
    { "batch", OPT_INT, "256", C(batch), "envelopes per transaction (group commit)" },
    { "batch-ms", OPT_MS, "20ms", C(batch_ms), "longest a batch waits for its commit" },
    { "acks", OPT_STR, NULL, C(acks), "publish the ids of each committed batch here (PUB; a bare URI binds)" },
    { "out-acks", OPT_STR, NULL, C(out_acks), "omni-send's --acks (SUB; a bare URI connects): keep each reply "
      "passed on until omni-send acks it, and pass it on again when it does not" },
    { "resend-after", OPT_MS, "5s", C(resend_after_ms), "with --out-acks: pass a reply on again when "
      "unacked this long (then twice, up to 8 times as long)" },
    { "retain", OPT_MS, NULL, C(retain_ms), "delete messages older than this, e.g. 730d (default: keep all)" },
    { "sync", OPT_STR, "full", C(sync), "full: fsync every commit (an ack survives power loss); normal: only crashes" },
    { NULL, 0, NULL, 0, NULL }
};
#undef C

static int s_conf_check(const struct archive_conf *c)
{
    if (c->db == NULL || c->db[0] == '\0') {
        log_msg(LOG_ERROR, "--db is required (try --help)");
        return EXIT_USAGE;
    }
    if (c->batch < 1 || c->batch > 100000) {
        log_msg(LOG_ERROR, "--batch must be 1..100000");
        return EXIT_USAGE;
    }
    if (c->batch_ms < 1 || c->batch_ms > 60000) {
        log_msg(LOG_ERROR, "--batch-ms must be 1ms..60s");
        return EXIT_USAGE;
    }
    if (c->retain_ms < 0 || (c->retain_ms > 0 && c->retain_ms < 3600000)) {
        log_msg(LOG_ERROR, "--retain must be at least 1h");
        return EXIT_USAGE;
    }
    if (strcmp(c->sync, "full") != 0 && strcmp(c->sync, "normal") != 0) {
        log_msg(LOG_ERROR, "--sync must be full or normal");
        return EXIT_USAGE;
    }
    char err[300];
    if (c->acks != NULL && c->acks[0] != '\0'
        && acks_check("acks", c->acks, EP_TAP, err, sizeof err) != 0) {
        log_msg(LOG_ERROR, "%s", err);
        return EXIT_USAGE;
    }
    if (c->out_acks != NULL && c->out_acks[0] != '\0'
        && acks_check("out-acks", c->out_acks, EP_SUB, err, sizeof err) != 0) {
        log_msg(LOG_ERROR, "%s", err);
        return EXIT_USAGE;
    }
    if (c->resend_after_ms < 100 || c->resend_after_ms > 3600000) {
        log_msg(LOG_ERROR, "--resend-after must be 100ms..1h");
        return EXIT_USAGE;
    }
    return 0;
}

static int s_check(struct stage_ctx *ctx, void *conf)
{
    (void)ctx;
    return s_conf_check(conf);
}

static void s_fini(void **state);

/* --out-acks: the statements, the socket, and every owed reply due now
 * (the last process may have died with them in its queues). */
static int s_owed_open(struct archive *a, struct stage_ctx *ctx)
{
    char err[400];
    if (sqlite3_prepare_v3(a->db, "INSERT OR IGNORE INTO owed (id, due, tries) VALUES (?1, ?2, 1)", -1,
                           SQLITE_PREPARE_PERSISTENT, &a->owe, NULL) != SQLITE_OK
        || sqlite3_prepare_v3(a->db, "DELETE FROM owed WHERE id = ?1", -1,
                              SQLITE_PREPARE_PERSISTENT, &a->paid, NULL) != SQLITE_OK
        || sqlite3_prepare_v3(a->db, "SELECT o.id, o.tries, m.env FROM owed o"
                              " LEFT JOIN messages m ON m.id = o.id"
                              " WHERE o.due <= ?1 ORDER BY o.due LIMIT ?2", -1,
                              SQLITE_PREPARE_PERSISTENT, &a->due, NULL) != SQLITE_OK
        || sqlite3_prepare_v3(a->db, "UPDATE owed SET due = ?2, tries = tries + 1 WHERE id = ?1", -1,
                              SQLITE_PREPARE_PERSISTENT, &a->later, NULL) != SQLITE_OK) {
        log_msg(LOG_ERROR, "--db %s: %s", a->conf->db, sqlite3_errmsg(a->db));
        return EXIT_UNAVAILABLE;
    }
    if (db_exec(a->db, "UPDATE owed SET due = 0", err, sizeof err) != SQLITE_OK) {
        log_msg(LOG_ERROR, "--db %s: %s", a->conf->db, err);
        return EXIT_UNAVAILABLE;
    }
    int64_t owed = db_query_int(a->db, "SELECT count(*) FROM owed");
    if (owed > 0) {
        log_msg(LOG_INFO, "%lld replies not acknowledged by omni-send: passing them on again",
                (long long)owed);
    }
    a->again = env_new();
    if (a->again == NULL) {
        log_msg(LOG_ERROR, "out of memory");
        return EXIT_SOFTWARE;
    }
    a->out_acks = acks_open(ctx, "out-acks", a->conf->out_acks, EP_SUB, err, sizeof err);
    if (a->out_acks == NULL) {
        log_msg(LOG_ERROR, "%s", err);
        return EXIT_UNAVAILABLE;
    }
    return 0;
}

static int s_init(struct stage_ctx *ctx, void *conf, void **state)
{
    struct archive_conf *c = conf;
    int status = s_conf_check(c);
    if (status != 0) {
        return status;
    }
    struct archive *a = calloc(1, sizeof *a);
    if (a == NULL) {
        log_msg(LOG_ERROR, "out of memory");
        return EXIT_SOFTWARE;
    }
    a->conf = c;
    a->ctx = ctx;
    *state = a;
    char err[512];
    struct archive_db_opts dbo = { strcmp(c->sync, "full") == 0, BUSY_MS };
    status = archive_open(c->db, ARCHIVE_SERVICE, &dbo, &a->db, err, sizeof err);
    if (status != 0) {
        log_msg(LOG_ERROR, "--db %s", err);
        goto fail;
    }
    status = EXIT_UNAVAILABLE;
    if (sqlite3_prepare_v3(a->db, archive_sql_insert, -1, SQLITE_PREPARE_PERSISTENT, &a->ins, NULL) != SQLITE_OK
        || sqlite3_prepare_v3(a->db, archive_sql_conversation, -1, SQLITE_PREPARE_PERSISTENT, &a->conv, NULL) != SQLITE_OK
        || sqlite3_prepare_v3(a->db, "BEGIN IMMEDIATE", -1, SQLITE_PREPARE_PERSISTENT, &a->begin, NULL) != SQLITE_OK
        || sqlite3_prepare_v3(a->db, "COMMIT", -1, SQLITE_PREPARE_PERSISTENT, &a->commit, NULL) != SQLITE_OK
        || sqlite3_prepare_v3(a->db, "ROLLBACK", -1, SQLITE_PREPARE_PERSISTENT, &a->rollback, NULL) != SQLITE_OK) {
        log_msg(LOG_ERROR, "--db %s: %s", c->db, sqlite3_errmsg(a->db));
        goto fail;
    }
    a->held = calloc((size_t)c->batch, sizeof *a->held);
    a->ids = calloc((size_t)c->batch, sizeof *a->ids);
    if (a->held == NULL || a->ids == NULL) {
        log_msg(LOG_ERROR, "out of memory");
        status = EXIT_SOFTWARE;
        goto fail;
    }
    if (c->acks != NULL && c->acks[0] != '\0') {
        a->acks = acks_open(ctx, "acks", c->acks, EP_TAP, err, sizeof err);
        if (a->acks == NULL) {
            log_msg(LOG_ERROR, "%s", err);
            goto fail;
        }
    }
    if (c->out_acks != NULL && c->out_acks[0] != '\0') {
        status = s_owed_open(a, ctx);
        if (status != 0) {
            goto fail;
        }
    }
    a->next_retain = stage_mono_ms();
    log_msg(LOG_DEBUG, "archive %s open: batch %lld, %lld ms, sync %s", c->db,
            (long long)c->batch, (long long)c->batch_ms, c->sync);
    return 0;
fail:
    s_fini(state);
    return status;
}

/* Rolls back whatever is open; the batch stays held, to be stored again. */
static void s_rollback(struct archive *a)
{
    if (!sqlite3_get_autocommit(a->db)) {
        sqlite3_step(a->rollback);
        sqlite3_reset(a->rollback);
    }
    a->b_stored = 0;
    a->b_present = 0;
    a->b_owed = 0;
    a->b_paid = 0;
}

/* Stores one envelope in the open transaction. Returns SQLITE_OK or the
 * error; on error the caller rolls back. */
static int s_store(struct archive *a, const struct env *e)
{
    buf_reset(&a->enc);
    if (env_encode(e, &a->enc) != 0) {
        return SQLITE_NOMEM;
    }
    struct archive_row row;
    archive_row_from_env(&row, e, a->enc.data, a->enc.len);
    int rc = archive_bind_insert(a->ins, &row);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(a->ins);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    sqlite3_reset(a->ins);
    sqlite3_clear_bindings(a->ins);
    if (rc != SQLITE_OK) {
        return rc;
    }
    if (sqlite3_changes(a->db) == 0) {
        a->b_present++;     /* already archived: a re-sent message */
        return SQLITE_OK;
    }
    a->b_stored++;
    if (a->owe != NULL && strcmp(row.dir, "out") == 0) {
        sqlite3_bind_text(a->owe, 1, row.id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(a->owe, 2, (int64_t)stage_now_ms() + a->conf->resend_after_ms);
        rc = sqlite3_step(a->owe);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
        sqlite3_reset(a->owe);
        sqlite3_clear_bindings(a->owe);
        if (rc != SQLITE_OK) {
            return rc;
        }
        a->b_owed += (uint64_t)sqlite3_changes(a->db);
    }
    if (row.conversation == NULL) {
        return SQLITE_OK;
    }
    rc = archive_bind_conversation(a->conv, &row);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(a->conv);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    sqlite3_reset(a->conv);
    sqlite3_clear_bindings(a->conv);
    return rc;
}

/* Makes sure a transaction is open and holds every held envelope's row:
 * after a rollback the batch is stored again from the copies. */
static int s_begin(struct archive *a)
{
    if (!sqlite3_get_autocommit(a->db)) {
        return SQLITE_OK;
    }
    int rc = sqlite3_step(a->begin);
    sqlite3_reset(a->begin);
    if (rc != SQLITE_DONE) {
        return rc;
    }
    a->b_stored = 0;
    a->b_present = 0;
    a->b_owed = 0;
    a->b_paid = 0;
    for (size_t i = 0; i < a->n_held; i++) {
        rc = s_store(a, a->held[i]);
        if (rc != SQLITE_OK) {
            s_rollback(a);
            return rc;
        }
    }
    return SQLITE_OK;
}

static void s_db_error(struct archive *a, const char *what, int rc)
{
    log_limited(&a->db_limit, rc == SQLITE_BUSY ? LOG_WARN : LOG_ERROR,
                "%s: %s (%d envelopes held, will retry)", what,
                rc == SQLITE_BUSY ? "database is locked" : sqlite3_errmsg(a->db), (int)a->n_held);
}

/* Publishes the ids of the held batch as one ack message. */
static void s_ack(struct archive *a)
{
    if (a->acks == NULL) {
        return;
    }
    for (size_t i = 0; i < a->n_held; i++) {
        a->ids[i] = env_get(a->held[i], ENV_ID);
    }
    if (acks_pack(&a->ack, a->ids, a->n_held) != 0) {
        log_limited(&a->db_limit, LOG_ERROR, "out of memory building acks for %zu ids", a->n_held);
        return;
    }
    if (ep_send(a->acks, a->ack.data, a->ack.len, 0) != 0) {
        log_limited(&a->db_limit, LOG_ERROR, "--acks %s: %s", ep_name(a->acks), strerror(errno));
    }
}

/* acks_read's callback: omni-send has the reply id; its row goes, in the
 * open transaction. */
static int s_paid(void *arg, const char *id, size_t n)
{
    struct archive *a = arg;
    sqlite3_bind_text(a->paid, 1, id, (int)n, SQLITE_STATIC);
    int rc = sqlite3_step(a->paid);
    sqlite3_reset(a->paid);
    sqlite3_clear_bindings(a->paid);
    if (rc != SQLITE_DONE) {
        a->paid_rc = rc;
        return 1;
    }
    a->b_paid += (uint64_t)sqlite3_changes(a->db);
    return 0;
}

/* Reads what omni-send acked, without waiting, into the open transaction.
 * Returns SQLITE_OK or the error (the caller rolls back: the ids are lost,
 * their replies are passed on again and acked again). */
static int s_read_out_acks(struct archive *a)
{
    if (a->out_acks == NULL) {
        return SQLITE_OK;
    }
    a->paid_rc = SQLITE_OK;
    acks_drain(a->out_acks, OWED_ACK_MSGS, s_paid, a, "out-acks", &a->db_limit);
    return a->paid_rc;
}

/* Whether something waits on --out-acks. */
static bool s_out_acks_waiting(struct archive *a)
{
    int events = 0;
    size_t len = sizeof events;
    return a->out_acks != NULL
        && zmq_getsockopt(ep_socket(a->out_acks), ZMQ_EVENTS, &events, &len) == 0
        && (events & ZMQ_POLLIN) != 0;
}

/* Commits the batch, acks it, then passes the envelopes on. Returns 0, or
 * -1 when it could not commit (the batch stays held). */
static int s_flush(struct archive *a, struct stage_ctx *ctx)
{
    if (a->n_held == 0) {
        return 0;
    }
    int rc = s_begin(a);
    if (rc != SQLITE_OK) {
        s_db_error(a, "cannot store the batch", rc);
        return -1;
    }
    rc = s_read_out_acks(a);
    if (rc != SQLITE_OK) {
        s_db_error(a, "cannot note omni-send's acks", rc);
        s_rollback(a);
        return -1;
    }
    rc = sqlite3_step(a->commit);
    sqlite3_reset(a->commit);
    if (rc != SQLITE_DONE) {
        s_db_error(a, "cannot commit", rc);
        if (rc != SQLITE_BUSY) {
            /* Start over from the copies rather than trust a half-failed
             * transaction. */
            s_rollback(a);
        }
        return -1;
    }
    a->batches++;
    a->stored += a->b_stored;
    a->present += a->b_present;
    a->owed_new += a->b_owed;
    a->owed_paid += a->b_paid;
    a->b_stored = 0;
    a->b_present = 0;
    a->b_owed = 0;
    a->b_paid = 0;
    s_ack(a);
    for (size_t i = 0; i < a->n_held; i++) {
        if (ctx != NULL) {
            stage_emit(ctx, a->held[i]);
        }
        env_clear(a->held[i]);
    }
    a->n_held = 0;
    return 0;
}

/* Collects, in the open transaction, the owed replies that are due: their
 * stored bytes go to a->again_bytes ([u32 length][bytes]...), their next
 * due time is set further off; an owed row whose message is gone (forget,
 * --retain) is dropped. Returns SQLITE_OK or the error; *n the replies. */
static int s_owed_due(struct archive *a, size_t *n)
{
    int64_t now = (int64_t)stage_now_ms();
    buf_reset(&a->again_bytes);
    *n = 0;
    /* The ids first: the rows change after the walk. */
    size_t ids = 0;
    struct buf idb = { 0 };
    sqlite3_bind_int64(a->due, 1, now);
    sqlite3_bind_int(a->due, 2, OWED_CHUNK);
    int rc;
    while ((rc = sqlite3_step(a->due)) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(a->due, 0);
        int64_t tries = sqlite3_column_int64(a->due, 1);
        const void *env = sqlite3_column_blob(a->due, 2);
        uint32_t len = (uint32_t)sqlite3_column_bytes(a->due, 2);
        if (env != NULL) {
            if (buf_append(&a->again_bytes, &len, sizeof len) != 0 || buf_append(&a->again_bytes, env, len) != 0) {
                rc = SQLITE_NOMEM;
                break;
            }
        }
        int64_t wait = a->conf->resend_after_ms << (tries < 3 ? tries : 3);
        int64_t due = env != NULL ? now + wait : -1;      /* -1: drop the row */
        if (buf_append(&idb, &due, sizeof due) != 0 || buf_append(&idb, id, strlen(id) + 1) != 0) {
            rc = SQLITE_NOMEM;
            break;
        }
        ids++;
    }
    sqlite3_reset(a->due);
    if (rc != SQLITE_DONE) {
        buf_free(&idb);
        return rc;
    }
    rc = SQLITE_OK;
    for (size_t i = 0, at = 0; i < ids && rc == SQLITE_OK; i++) {
        int64_t due;
        memcpy(&due, idb.data + at, sizeof due);
        const char *id = (const char *)idb.data + at + sizeof due;
        at += sizeof due + strlen(id) + 1;
        if (due < 0) {
            rc = s_paid(a, id, strlen(id)) == 0 ? SQLITE_OK : a->paid_rc;
            log_msg(LOG_INFO, "id=%s was owed to omni-send but is no longer archived: dropped", id);
            continue;
        }
        sqlite3_bind_text(a->later, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(a->later, 2, due);
        rc = sqlite3_step(a->later);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
        sqlite3_reset(a->later);
        sqlite3_clear_bindings(a->later);
        (*n)++;
    }
    buf_free(&idb);
    return rc;
}

/* One round of --out-acks between batches: notes what omni-send acked and
 * passes on again, after the commit, the owed replies that are due. */
static void s_owed_round(struct archive *a, struct stage_ctx *ctx)
{
    uint64_t mono = stage_mono_ms();
    bool look = mono >= a->next_owed;
    if (a->out_acks == NULL || a->n_held > 0 || (!look && !s_out_acks_waiting(a))) {
        return;
    }
    size_t n = 0;
    int rc = s_begin(a);
    if (rc == SQLITE_OK) {
        rc = s_read_out_acks(a);
    }
    if (rc == SQLITE_OK && look) {
        int64_t every = a->conf->resend_after_ms / 2;
        a->next_owed = mono + (uint64_t)(every < 1000 ? every : 1000);
        rc = s_owed_due(a, &n);
    }
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(a->commit);
        sqlite3_reset(a->commit);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    if (rc != SQLITE_OK) {
        s_db_error(a, "cannot note omni-send's acks", rc);
        s_rollback(a);
        a->next_owed = mono + 250;
        return;
    }
    a->owed_paid += a->b_paid;
    a->b_paid = 0;
    if (n == 0) {
        return;
    }
    log_limited(&a->owed_limit, LOG_INFO, "passing on again %zu replies omni-send has not acknowledged", n);
    for (size_t at = 0; at < a->again_bytes.len;) {
        uint32_t len;
        memcpy(&len, a->again_bytes.data + at, sizeof len);
        struct env_err err;
        if (env_decode(a->again, a->again_bytes.data + at + sizeof len, len, &err) != 0) {
            log_limited(&a->db_limit, LOG_ERROR, "an owed reply does not decode: %s: %s", err.field, err.reason);
        } else if (stage_emit(ctx, a->again) == 0) {
            a->owed_again++;
        }
        env_clear(a->again);
        at += sizeof len + len;
    }
    if (n >= OWED_CHUNK) {
        a->next_owed = mono;        /* more are due: again soon, input first */
        stage_wake_in(ctx, 10);
    }
}

static enum verdict s_handle(void *state, struct stage_ctx *ctx, struct env *e)
{
    struct archive *a = state;
    if (a->n_held >= (size_t)a->conf->batch && s_flush(a, ctx) != 0) {
        return STAGE_RETRY;     /* a full batch could not commit: wait */
    }
    size_t i = a->n_held;
    if (a->held[i] == NULL && (a->held[i] = env_new()) == NULL) {
        log_limited(&a->db_limit, LOG_ERROR, "out of memory holding id=%s", env_get(e, ENV_ID));
        return STAGE_RETRY;
    }
    if (env_copy(a->held[i], e) != 0) {
        log_limited(&a->db_limit, LOG_ERROR, "out of memory holding id=%s", env_get(e, ENV_ID));
        return STAGE_RETRY;
    }
    int rc = s_begin(a);
    if (rc == SQLITE_OK) {
        rc = s_store(a, a->held[i]);
        if (rc != SQLITE_OK) {
            /* Part of this envelope may be in: drop the transaction, the
             * held ones are stored again on the next try. */
            s_rollback(a);
        }
    }
    if (rc != SQLITE_OK) {
        env_clear(a->held[i]);
        s_db_error(a, "cannot store", rc);
        return STAGE_RETRY;
    }
    a->n_held++;
    if (a->n_held == 1) {
        a->batch_start = stage_mono_ms();
        stage_wake_in(ctx, a->conf->batch_ms);
    }
    if (a->n_held >= (size_t)a->conf->batch) {
        s_flush(a, ctx);        /* when it fails, the next envelope or tick retries */
    }
    return STAGE_HELD;
}

/* One round of --retain, between batches. */
static void s_retain(struct archive *a, struct stage_ctx *ctx)
{
    uint64_t now = stage_mono_ms();
    if (a->conf->retain_ms <= 0 || now < a->next_retain || a->n_held > 0) {
        return;
    }
    uint64_t cutoff = stage_now_ms() - (uint64_t)a->conf->retain_ms;
    int rc;
    int64_t convs = 0;
    int64_t n = archive_retain(a->db, cutoff, RETAIN_CHUNK, 1, &convs, &rc);
    if (n < 0) {
        log_limited(&a->db_limit, LOG_WARN, "retention: %s", sqlite3_errstr(rc));
        a->next_retain = now + 1000;
        return;
    }
    if (n > 0 || convs > 0) {
        log_msg(LOG_INFO, "retention: deleted %lld messages and %lld conversations older than %lld ms",
                (long long)n, (long long)convs, (long long)a->conf->retain_ms);
    }
    if (n >= RETAIN_CHUNK) {
        /* More to do: another round soon, input goes first. */
        a->next_retain = now + 50;
        stage_wake_in(ctx, 50);
    } else {
        a->next_retain = now + RETAIN_EVERY_MS;
    }
}

static void s_tick(void *state, struct stage_ctx *ctx)
{
    struct archive *a = state;
    if (a->n_held > 0) {
        uint64_t age = stage_mono_ms() - a->batch_start;
        if (age >= (uint64_t)a->conf->batch_ms || stage_stopping(ctx)) {
            if (s_flush(a, ctx) != 0) {
                stage_wake_in(ctx, 50);
            }
        } else {
            stage_wake_in(ctx, a->conf->batch_ms - (int64_t)age);
        }
    }
    if (!stage_stopping(ctx)) {
        s_owed_round(a, ctx);
    }
    s_retain(a, ctx);
}

static void s_fini(void **state)
{
    struct archive *a = *state;
    if (a == NULL) {
        return;
    }
    if (a->n_held > 0 && a->db != NULL) {
        /* What the last tick did not flush (input ended, or the reader of
         * our output went away): store it, ack it, pass it on if we can. */
        size_t n = a->n_held;
        if (s_flush(a, a->ctx) != 0 && s_flush(a, a->ctx) != 0) {
            s_rollback(a);
            log_msg(LOG_WARN, "stopping with %zu envelopes not stored; they were not acked, "
                    "so their sources send them again", n);
        }
    }
    log_msg(LOG_DEBUG, "stored %llu, already present %llu, in %llu batches",
            (unsigned long long)a->stored, (unsigned long long)a->present,
            (unsigned long long)a->batches);
    if (a->out_acks != NULL) {
        log_msg(LOG_DEBUG, "replies owed to omni-send %llu, acked %llu, passed on again %llu",
                (unsigned long long)a->owed_new, (unsigned long long)a->owed_paid,
                (unsigned long long)a->owed_again);
    }
    ep_destroy(&a->acks);
    ep_destroy(&a->out_acks);
    sqlite3_finalize(a->owe);
    sqlite3_finalize(a->paid);
    sqlite3_finalize(a->due);
    sqlite3_finalize(a->later);
    env_destroy(&a->again);
    buf_free(&a->again_bytes);
    free(a->ids);
    sqlite3_finalize(a->ins);
    sqlite3_finalize(a->conv);
    sqlite3_finalize(a->begin);
    sqlite3_finalize(a->commit);
    sqlite3_finalize(a->rollback);
    if (a->db != NULL && sqlite3_close(a->db) != SQLITE_OK) {
        log_msg(LOG_WARN, "closing %s: %s", a->conf->db, sqlite3_errmsg(a->db));
    }
    for (size_t i = 0; i < (size_t)a->conf->batch && a->held != NULL; i++) {
        env_destroy(&a->held[i]);
    }
    free(a->held);
    buf_free(&a->enc);
    buf_free(&a->ack);
    free(a);
    *state = NULL;
}

const struct stage archive_stage = {
    .name = "archive",
    .summary = "Stores every envelope in sqlite (messages, full-text index, conversations), "
               "acks each committed batch on --acks and passes the envelopes on; with --out-acks, "
               "passes replies on again until omni-send acks them.\n"
               "Also: omni-archive history|search|export|forget|retain|acks ... (--help on each)",
    .options = s_opts,
    .conf_size = sizeof(struct archive_conf),
    .flags = 0,
    .init = s_init,
    .check = s_check,
    .handle = s_handle,
    .tick = s_tick,
    .fini = s_fini,
};
