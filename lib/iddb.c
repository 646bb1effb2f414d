/* iddb — the identity database (see iddb.h): the connection, the schema
 * (versioned with PRAGMA user_version), the prepared statements and the
 * helpers that run them, the cache of hot handles, and the customers and
 * handles tables. identity_open (identity.c) calls iddb_connect; the
 * conversations are idconv.c's, links, merges and splits idgraph.c's. */
#include "iddb.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_SCHEMA 1              /* PRAGMA user_version of this schema */

static const char s_schema[] =
    "CREATE TABLE IF NOT EXISTS customers ("
    "  id TEXT PRIMARY KEY,"            /* cus_ULID */
    "  created INTEGER NOT NULL,"       /* ms since epoch */
    "  merged_into TEXT"                /* the customer that absorbed this one */
    ") WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS customers_merged ON customers (merged_into)"
    "  WHERE merged_into IS NOT NULL;"
    "CREATE TABLE IF NOT EXISTS handles ("
    "  handle TEXT PRIMARY KEY,"        /* normalised URI */
    "  customer TEXT NOT NULL,"         /* the customer now */
    "  origin TEXT NOT NULL,"           /* the customer it was first given */
    "  first_seen INTEGER NOT NULL"     /* ms since epoch */
    ") WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS handles_customer ON handles (customer);"
    "CREATE TABLE IF NOT EXISTS links ("
    "  id INTEGER PRIMARY KEY,"
    "  a TEXT NOT NULL,"                /* handle, a < b */
    "  b TEXT NOT NULL,"                /* handle */
    "  state TEXT NOT NULL,"            /* active, removed, refused */
    "  kind TEXT NOT NULL,"             /* channel, event, cli */
    "  made_by TEXT NOT NULL,"          /* who said so */
    "  verified INTEGER NOT NULL,"      /* the source vouches for both handles */
    "  reason TEXT,"                    /* why */
    "  ts INTEGER NOT NULL,"            /* when */
    "  envelope TEXT,"                  /* the envelope that said so */
    "  removed_by TEXT,"                /* unlink: who */
    "  removed_reason TEXT,"            /* unlink: why */
    "  removed_ts INTEGER,"             /* unlink: when */
    "  UNIQUE (a, b)"
    ");"
    "CREATE INDEX IF NOT EXISTS links_b ON links (b);"
    "CREATE TABLE IF NOT EXISTS conversations ("
    "  id TEXT PRIMARY KEY,"            /* cnv_ULID */
    "  customer TEXT NOT NULL,"         /* the customer now */
    "  origin TEXT NOT NULL,"           /* the customer it started with */
    "  opened INTEGER NOT NULL,"        /* ts of its first envelope */
    "  last INTEGER NOT NULL,"          /* ts of its latest envelope (see IDCONV_SLACK_MAX) */
    "  closed INTEGER,"                 /* when it ended, or NULL while open */
    "  closed_by TEXT,"                 /* who ended it ("identity": idle, merged) */
    "  close_reason TEXT"               /* why */
    ") WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS conversations_customer ON conversations (customer);"
    "CREATE TABLE IF NOT EXISTS processed ("
    "  id TEXT PRIMARY KEY,"            /* envelope id */
    "  customer TEXT,"                  /* what it was given */
    "  conversation TEXT,"
    "  ts INTEGER NOT NULL"             /* the envelope's ts */
    ") WITHOUT ROWID;";

static const char *const s_sql[IDDB_Q_N] = {
    [IDDB_Q_BEGIN] = "BEGIN IMMEDIATE",
    [IDDB_Q_COMMIT] = "COMMIT",
    [IDDB_Q_ROLLBACK] = "ROLLBACK",
    [IDDB_Q_SAVE] = "SAVEPOINT envelope",
    [IDDB_Q_RELEASE] = "RELEASE envelope",
    [IDDB_Q_UNDO] = "ROLLBACK TO envelope",
    [IDDB_Q_DATA_VERSION] = "PRAGMA data_version",
    [IDDB_Q_PROC_GET] = "SELECT customer, conversation FROM processed WHERE id = ?1",
    [IDDB_Q_PROC_PUT] =
        "INSERT INTO processed (id, customer, conversation, ts) VALUES (?1, ?2, ?3, ?4)",
    [IDDB_Q_HANDLE_GET] = "SELECT customer FROM handles WHERE handle = ?1",
    [IDDB_Q_HANDLE_PUT] =
        "INSERT INTO handles (handle, customer, origin, first_seen) VALUES (?1, ?2, ?2, ?3)",
    [IDDB_Q_HANDLE_SET] = "UPDATE handles SET customer = ?2 WHERE handle = ?1",
    [IDDB_Q_HANDLES_OF] =
        "SELECT handle, origin FROM handles WHERE customer = ?1 ORDER BY first_seen, handle",
    [IDDB_Q_HANDLES_MOVE] = "UPDATE handles SET customer = ?1 WHERE customer = ?2",
    [IDDB_Q_CUS_PUT] = "INSERT INTO customers (id, created) VALUES (?1, ?2)",
    [IDDB_Q_CUS_GET] = "SELECT merged_into FROM customers WHERE id = ?1",
    [IDDB_Q_CUS_MERGE] = "UPDATE customers SET merged_into = ?1 WHERE id = ?2 OR merged_into = ?2",
    [IDDB_Q_CUS_SET_MERGED] = "UPDATE customers SET merged_into = ?2 WHERE id = ?1",
    [IDDB_Q_LINK_GET] = "SELECT id, state, verified FROM links WHERE a = ?1 AND b = ?2",
    [IDDB_Q_LINK_PUT] =
        "INSERT INTO links (a, b, state, kind, made_by, verified, reason, ts, envelope)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        " ON CONFLICT (a, b) DO UPDATE SET state = excluded.state, kind = excluded.kind,"
        " made_by = excluded.made_by, verified = excluded.verified, reason = excluded.reason,"
        " ts = excluded.ts, envelope = excluded.envelope, removed_by = NULL,"
        " removed_reason = NULL, removed_ts = NULL"
        " RETURNING id",
    [IDDB_Q_LINK_BY_ID] = "SELECT a, b, state FROM links WHERE id = ?1",
    [IDDB_Q_LINK_REMOVE] =
        "UPDATE links SET state = 'removed', removed_by = ?2, removed_reason = ?3, removed_ts = ?4"
        " WHERE id = ?1",
    [IDDB_Q_LINKS_IN] =
        "SELECT l.a, l.b FROM links l JOIN handles h ON h.handle = l.a"
        " WHERE h.customer = ?1 AND l.state = 'active'",
    [IDDB_Q_VERIFIED] =
        "SELECT l.a FROM links l JOIN handles h ON h.handle = l.a"
        " WHERE h.customer = ?1 AND l.state = 'active' AND l.verified = 1"
        " UNION SELECT l.b FROM links l JOIN handles h ON h.handle = l.b"
        " WHERE h.customer = ?1 AND l.state = 'active' AND l.verified = 1",
    [IDDB_Q_CNV_OPEN] =
        "SELECT id, last FROM conversations WHERE customer = ?1 AND closed IS NULL"
        " ORDER BY last DESC LIMIT 1",
    [IDDB_Q_CNV_TOUCH] = "UPDATE conversations SET last = max(last, ?2) WHERE id = ?1",
    [IDDB_Q_CNV_NEW] =
        "INSERT INTO conversations (id, customer, origin, opened, last) VALUES (?1, ?2, ?2, ?3, ?3)",
    [IDDB_Q_CNV_CLOSE] =
        "UPDATE conversations SET last = max(last, ?5), closed = ?2, closed_by = ?3,"
        " close_reason = ?4 WHERE id = ?1 AND closed IS NULL",
    [IDDB_Q_CNV_GET] = "SELECT customer, closed FROM conversations WHERE id = ?1",
    [IDDB_Q_CNV_MOVE] = "UPDATE conversations SET customer = ?1 WHERE customer = ?2",
    [IDDB_Q_CNV_MOVE_ORIGIN] =
        "UPDATE conversations SET customer = ?1 WHERE customer = ?2 AND origin = ?1",
};

/* Statements an envelope cannot leave half done: the first of them opens
 * the envelope's savepoint. (processed is one insert, last; a conversation's
 * latest activity only moves forward.) */
static const bool s_undoable[IDDB_Q_N] = {
    [IDDB_Q_HANDLE_PUT] = true, [IDDB_Q_HANDLE_SET] = true, [IDDB_Q_HANDLES_MOVE] = true,
    [IDDB_Q_CUS_PUT] = true, [IDDB_Q_CUS_MERGE] = true, [IDDB_Q_CUS_SET_MERGED] = true,
    [IDDB_Q_LINK_PUT] = true, [IDDB_Q_LINK_REMOVE] = true,
    [IDDB_Q_CNV_NEW] = true, [IDDB_Q_CNV_CLOSE] = true, [IDDB_Q_CNV_MOVE] = true,
    [IDDB_Q_CNV_MOVE_ORIGIN] = true,
};

const char *iddb_sql(enum iddb_q q)
{
    return s_sql[q];
}

/* -- statements and shared helpers --------------------------------------- */

int iddb_dberr(struct identity *id, int rc, const char *what)
{
    if ((rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED) {
        return IDENTITY_BUSY;
    }
    log_limited(&id->err_limit, LOG_ERROR, "sqlite: %s: %s", what, sqlite3_errmsg(id->db));
    return IDENTITY_ERROR;
}

void iddb_text(sqlite3_stmt *st, int i, const char *s)
{
    if (s == NULL || s[0] == '\0') {
        sqlite3_bind_null(st, i);
    } else {
        sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
    }
}

void iddb_col(sqlite3_stmt *st, int i, char *out, size_t n)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    snprintf(out, n, "%s", t ? (const char *)t : "");
}

/* Opens the envelope's savepoint before its first undoable write. */
static int s_before(struct identity *id, enum iddb_q q)
{
    if (!s_undoable[q] || !id->in_envelope || id->savepoint) {
        return SQLITE_OK;
    }
    int rc = sqlite3_step(id->st[IDDB_Q_SAVE]);
    sqlite3_reset(id->st[IDDB_Q_SAVE]);
    id->savepoint = rc == SQLITE_DONE;
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Runs a statement whose rows are not needed, and resets it. */
int iddb_run(struct identity *id, enum iddb_q q)
{
    sqlite3_stmt *st = id->st[q];
    int rc = s_before(id, q);
    if (rc != SQLITE_OK) {
        sqlite3_reset(st);
        return iddb_dberr(id, rc, s_sql[IDDB_Q_SAVE]);
    }
    rc = sqlite3_step(st);
    while (rc == SQLITE_ROW) {
        rc = sqlite3_step(st);
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? IDENTITY_OK : iddb_dberr(id, rc, s_sql[q]);
}

/* Steps a query: IDENTITY_OK with a row (read it, then sqlite3_reset), or
 * _NOT_FOUND / an error, reset done. */
int iddb_row(struct identity *id, enum iddb_q q)
{
    int rc = s_before(id, q);
    if (rc != SQLITE_OK) {
        sqlite3_reset(id->st[q]);
        return iddb_dberr(id, rc, s_sql[IDDB_Q_SAVE]);
    }
    rc = sqlite3_step(id->st[q]);
    if (rc == SQLITE_ROW) {
        return IDENTITY_OK;
    }
    sqlite3_reset(id->st[q]);
    return rc == SQLITE_DONE ? IDENTITY_NOT_FOUND : iddb_dberr(id, rc, s_sql[q]);
}

int iddb_bad(struct identity_result *r, const char *field, const char *fmt, ...)
{
    snprintf(r->field, sizeof r->field, "%s", field);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->reason, sizeof r->reason, fmt, ap);
    va_end(ap);
    return IDENTITY_BAD;
}

/* -- the cache of hot handles -------------------------------------------- */

uint64_t iddb_hash(const char *s, size_t n)
{
    uint64_t h = 14695981039346656037ULL;   /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    }
    return h | 1;
}

/* The first slot of h's window: IDDB_WINDOW slots, aligned. */
size_t iddb_window(uint64_t h, size_t mask)
{
    return (size_t)h & mask & ~(size_t)(IDDB_WINDOW - 1);
}

static struct iddb_slot *s_cache_find(struct identity *id, const char *key, size_t n, uint64_t h)
{
    if (id->cache == NULL || n > IDDB_KEY_MAX) {
        return NULL;
    }
    size_t w = iddb_window(h, id->cache_mask);
    for (size_t k = 0; k < IDDB_WINDOW; k++) {
        if (id->cache_tag[w + k] == h) {
            struct iddb_slot *sl = &id->cache[w + k];
            if (sl->gen == id->gen && memcmp(sl->key, key, n + 1) == 0) {
                return sl;
            }
        }
    }
    return NULL;
}

static void s_cache_put(struct identity *id, const char *key, const char *customer, uint32_t flags)
{
    size_t n = strlen(key);
    if (id->cache == NULL || n > IDDB_KEY_MAX) {
        return;
    }
    uint64_t h = iddb_hash(key, n);
    struct iddb_slot *sl = s_cache_find(id, key, n, h);
    size_t w = iddb_window(h, id->cache_mask);
    size_t at = SIZE_MAX;
    for (size_t k = 0; sl == NULL && at == SIZE_MAX && k < IDDB_WINDOW; k++) {
        if (id->cache_tag[w + k] == 0 || id->cache[w + k].gen != id->gen) {
            at = w + k;
        }
    }
    if (sl == NULL) {
        at = at != SIZE_MAX ? at : w + id->evict++ % IDDB_WINDOW;
        sl = &id->cache[at];
        id->cache_tag[at] = h;
    }
    sl->gen = id->gen;
    sl->flags = flags;
    snprintf(sl->customer, sizeof sl->customer, "%s", customer);
    memcpy(sl->key, key, n + 1);
}

void iddb_cache_flag(struct identity *id, const char *key, uint32_t flag)
{
    size_t n = strlen(key);
    struct iddb_slot *sl = s_cache_find(id, key, n, iddb_hash(key, n));
    if (sl != NULL) {
        sl->flags |= flag;
    }
}

void iddb_cache_clear(struct identity *id)
{
    id->gen++;
    if (id->gen == 0) {
        id->gen = 1;
        if (id->cache != NULL) {
            memset(id->cache_tag, 0, (id->cache_mask + 1) * sizeof *id->cache_tag);
        }
    }
}

/* -- the connection ------------------------------------------------------ */

static int s_journal_cb(void *arg, int n, char **vals, char **names)
{
    (void)names;
    if (n > 0 && vals[0] != NULL) {
        snprintf(arg, 16, "%s", vals[0]);
    }
    return 0;
}

static int s_user_version(sqlite3 *db)
{
    sqlite3_stmt *st;
    int v = -1;
    if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW) {
            v = sqlite3_column_int(st, 0);
        }
        sqlite3_finalize(st);
    }
    return v;
}

int64_t iddb_data_version(struct identity *id)
{
    int64_t v = -1;
    if (iddb_row(id, IDDB_Q_DATA_VERSION) == IDENTITY_OK) {
        v = sqlite3_column_int64(id->st[IDDB_Q_DATA_VERSION], 0);
        sqlite3_reset(id->st[IDDB_Q_DATA_VERSION]);
    }
    return v;
}

/* Opens the connection and readies it: WAL, the pragmas, the schema,
 * every prepared statement. */
int iddb_connect(struct identity *id, const char *path, char *err, size_t n)
{
    const struct identity_opts *o = &id->opts;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (o->create ? SQLITE_OPEN_CREATE : 0);
    int rc = sqlite3_open_v2(path, &id->db, flags, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, n, "%s: %s", path,
                 rc == SQLITE_CANTOPEN && !o->create ? "no such database" : sqlite3_errmsg(id->db));
        return -1;
    }
    sqlite3_busy_timeout(id->db, (int)(o->busy_ms > 0 ? o->busy_ms : 0));
    char mode[16] = "";
    rc = sqlite3_exec(id->db, "PRAGMA journal_mode=WAL", s_journal_cb, mode, NULL);
    if (rc != SQLITE_OK || strcmp(mode, "wal") != 0) {
        snprintf(err, n, "%s: cannot use WAL: %s", path, rc ? sqlite3_errmsg(id->db) : mode);
        return -1;
    }
    /* secure_delete on every connection: no cell this tool frees (an
     * updated handle row too) leaves its bytes behind for forget to miss. */
    rc = sqlite3_exec(id->db, "PRAGMA synchronous=NORMAL; PRAGMA secure_delete=ON;"
                      " PRAGMA temp_store=MEMORY; PRAGMA cache_size=-32768", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, n, "%s: %s", path, sqlite3_errmsg(id->db));
        return -1;
    }
    int version = s_user_version(id->db);
    if (version > S_SCHEMA) {
        snprintf(err, n, "%s: schema version %d is newer than this build's %d", path, version,
                 S_SCHEMA);
        return -1;
    }
    if (version < S_SCHEMA) {
        char *msg = NULL;
        char sql[sizeof s_schema + 64];
        snprintf(sql, sizeof sql, "BEGIN IMMEDIATE; %s PRAGMA user_version=%d; COMMIT;", s_schema,
                 S_SCHEMA);
        rc = sqlite3_exec(id->db, sql, NULL, NULL, &msg);
        if (rc != SQLITE_OK) {
            snprintf(err, n, "%s: creating the schema: %s", path, msg ? msg : "?");
            sqlite3_free(msg);
            sqlite3_exec(id->db, "ROLLBACK", NULL, NULL, NULL);
            return -1;
        }
    }
    for (int q = 0; q < IDDB_Q_N; q++) {
        rc = sqlite3_prepare_v3(id->db, s_sql[q], -1, SQLITE_PREPARE_PERSISTENT, &id->st[q], NULL);
        if (rc != SQLITE_OK) {
            snprintf(err, n, "%s: preparing \"%.40s\": %s", path, s_sql[q], sqlite3_errmsg(id->db));
            return -1;
        }
    }
    return 0;
}

void iddb_disconnect(struct identity *id)
{
    if (id->db != NULL && !sqlite3_get_autocommit(id->db)) {
        sqlite3_exec(id->db, "ROLLBACK", NULL, NULL, NULL);
    }
    for (int q = 0; q < IDDB_Q_N; q++) {
        sqlite3_finalize(id->st[q]);
    }
    sqlite3_close(id->db);
    id->db = NULL;
}

/* -- customers and handles ----------------------------------------------- */

int iddb_new_id(struct identity *id, const char *prefix, uint64_t ts, char out[IDENTITY_ID_LEN + 1])
{
    char u[ULID_LEN + 1];
    if (ulid_next(&id->ids, ts, u) != 0) {
        log_limited(&id->err_limit, LOG_ERROR, "no randomness for ids: %s", strerror(errno));
        return IDENTITY_ERROR;
    }
    snprintf(out, IDENTITY_ID_LEN + 1, "%s%s", prefix, u);
    return IDENTITY_OK;
}

/* The customer of handle h: IDENTITY_OK with out (and the cache flags),
 * _NOT_FOUND, or an error. */
int iddb_customer_get(struct identity *id, const char *h, char out[IDENTITY_ID_LEN + 1],
                      uint32_t *flags)
{
    size_t n = strlen(h);
    struct iddb_slot *sl = s_cache_find(id, h, n, iddb_hash(h, n));
    if (sl != NULL) {
        id->counts.cache_hits++;
        memcpy(out, sl->customer, sizeof sl->customer);
        if (flags != NULL) {
            *flags = sl->flags;
        }
        return IDENTITY_OK;
    }
    id->counts.cache_misses++;
    if (flags != NULL) {
        *flags = 0;
    }
    sqlite3_stmt *st = id->st[IDDB_Q_HANDLE_GET];
    iddb_text(st, 1, h);
    int rc = iddb_row(id, IDDB_Q_HANDLE_GET);
    if (rc == IDENTITY_OK) {
        iddb_col(st, 0, out, IDENTITY_ID_LEN + 1);
        sqlite3_reset(st);
        s_cache_put(id, h, out, 0);
    }
    return rc;
}

int iddb_customer_new(struct identity *id, uint64_t ts, char out[IDENTITY_ID_LEN + 1])
{
    int rc = iddb_new_id(id, "cus_", ts, out);
    if (rc != IDENTITY_OK) {
        return rc;
    }
    sqlite3_stmt *st = id->st[IDDB_Q_CUS_PUT];
    iddb_text(st, 1, out);
    sqlite3_bind_int64(st, 2, (int64_t)ts);
    rc = iddb_run(id, IDDB_Q_CUS_PUT);
    if (rc == IDENTITY_OK) {
        id->counts.customers++;
    }
    return rc;
}

/* Gives handle h (new) to customer c. */
int iddb_handle_put(struct identity *id, const char *h, const char *c, uint64_t ts)
{
    sqlite3_stmt *st = id->st[IDDB_Q_HANDLE_PUT];
    iddb_text(st, 1, h);
    iddb_text(st, 2, c);
    sqlite3_bind_int64(st, 3, (int64_t)ts);
    int rc = iddb_run(id, IDDB_Q_HANDLE_PUT);
    if (rc == IDENTITY_OK) {
        s_cache_put(id, h, c, 0);
    }
    return rc;
}

/* The customer of h, made when h is new. */
int iddb_customer_ensure(struct identity *id, const char *h, uint64_t ts,
                         char out[IDENTITY_ID_LEN + 1])
{
    int rc = iddb_customer_get(id, h, out, NULL);
    if (rc != IDENTITY_NOT_FOUND) {
        return rc;
    }
    rc = iddb_customer_new(id, ts, out);
    return rc == IDENTITY_OK ? iddb_handle_put(id, h, out, ts) : rc;
}

/* The live customer of a customer id, following merges. */
int iddb_customer_live(struct identity *id, const char *c, char out[IDENTITY_ID_LEN + 1])
{
    char cur[IDENTITY_ID_LEN + 1];
    snprintf(cur, sizeof cur, "%s", c);
    for (int hop = 0; hop < 16; hop++) {
        sqlite3_stmt *st = id->st[IDDB_Q_CUS_GET];
        iddb_text(st, 1, cur);
        int rc = iddb_row(id, IDDB_Q_CUS_GET);
        if (rc != IDENTITY_OK) {
            return rc;
        }
        char next[IDENTITY_ID_LEN + 1];
        iddb_col(st, 0, next, sizeof next);
        sqlite3_reset(st);
        if (next[0] == '\0') {
            memcpy(out, cur, sizeof cur);
            return IDENTITY_OK;
        }
        memcpy(cur, next, sizeof cur);
    }
    return IDENTITY_NOT_FOUND;
}
