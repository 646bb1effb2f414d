/* identity — the identity graph in sqlite, the omni-identity stage (group
 * commit), and its CLI (link, unlink, show, forget); see identity.h.
 *
 * Tables (one database, WAL):
 *   customers      id, created, merged_into (the customer that absorbed it)
 *   handles        handle -> customer, and origin: the customer it first had,
 *                  so that an unlink gives split customers their old ids back
 *   links          a < b, state (active, removed, refused), provenance
 *   conversations  per customer; open until closed or idle
 *   processed      envelope id -> customer, conversation: replays change nothing
 *
 * A customer is a connected component of the active links. A link that
 * joins two customers merges them into the older id; an unlink recomputes
 * the components of the customer's remaining links. */
#include "identity.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <sqlite3.h>

#include "log.h"
#include "mp.h"
#include "ulid.h"
#include "utf8.h"

#define S_KEY_MAX 79            /* longest handle kept in the cache */
#define S_WINDOW 8              /* slots a handle may live in */
#define S_FACT 0x1u             /* cache flag: this handle's channel fact is recorded */
#define S_MAX_LINKED 8          /* handles one link event may name */
#define S_SCHEMA 1              /* PRAGMA user_version of this schema */
/* A conversation's latest activity is kept in memory and written when it
 * has moved this far past what the database has (1% of --idle, at most
 * this), and always before a merge, split, close, forget or exit: a crash
 * can leave conversations.last this much behind, never an assignment. */
#define S_SLACK_MAX 60000

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
    "  last INTEGER NOT NULL,"          /* ts of its latest envelope (see S_SLACK_MAX) */
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

/* Prepared statements, kept for the life of the connection. */
enum s_q {
    Q_BEGIN, Q_COMMIT, Q_ROLLBACK, Q_SAVE, Q_RELEASE, Q_UNDO, Q_DATA_VERSION,
    Q_PROC_GET, Q_PROC_PUT,
    Q_HANDLE_GET, Q_HANDLE_PUT, Q_HANDLE_SET, Q_HANDLES_OF, Q_HANDLES_MOVE,
    Q_CUS_PUT, Q_CUS_GET, Q_CUS_MERGE, Q_CUS_SET_MERGED,
    Q_LINK_GET, Q_LINK_PUT, Q_LINK_BY_ID, Q_LINK_REMOVE, Q_LINKS_IN, Q_VERIFIED,
    Q_CNV_OPEN, Q_CNV_TOUCH, Q_CNV_NEW, Q_CNV_CLOSE, Q_CNV_GET, Q_CNV_MOVE, Q_CNV_MOVE_ORIGIN,
    Q_N
};

static const char *const s_sql[Q_N] = {
    [Q_BEGIN] = "BEGIN IMMEDIATE",
    [Q_COMMIT] = "COMMIT",
    [Q_ROLLBACK] = "ROLLBACK",
    [Q_SAVE] = "SAVEPOINT envelope",
    [Q_RELEASE] = "RELEASE envelope",
    [Q_UNDO] = "ROLLBACK TO envelope",
    [Q_DATA_VERSION] = "PRAGMA data_version",
    [Q_PROC_GET] = "SELECT customer, conversation FROM processed WHERE id = ?1",
    [Q_PROC_PUT] = "INSERT INTO processed (id, customer, conversation, ts) VALUES (?1, ?2, ?3, ?4)",
    [Q_HANDLE_GET] = "SELECT customer FROM handles WHERE handle = ?1",
    [Q_HANDLE_PUT] = "INSERT INTO handles (handle, customer, origin, first_seen) VALUES (?1, ?2, ?2, ?3)",
    [Q_HANDLE_SET] = "UPDATE handles SET customer = ?2 WHERE handle = ?1",
    [Q_HANDLES_OF] = "SELECT handle, origin FROM handles WHERE customer = ?1 ORDER BY first_seen, handle",
    [Q_HANDLES_MOVE] = "UPDATE handles SET customer = ?1 WHERE customer = ?2",
    [Q_CUS_PUT] = "INSERT INTO customers (id, created) VALUES (?1, ?2)",
    [Q_CUS_GET] = "SELECT merged_into FROM customers WHERE id = ?1",
    [Q_CUS_MERGE] = "UPDATE customers SET merged_into = ?1 WHERE id = ?2 OR merged_into = ?2",
    [Q_CUS_SET_MERGED] = "UPDATE customers SET merged_into = ?2 WHERE id = ?1",
    [Q_LINK_GET] = "SELECT id, state, verified FROM links WHERE a = ?1 AND b = ?2",
    [Q_LINK_PUT] =
        "INSERT INTO links (a, b, state, kind, made_by, verified, reason, ts, envelope)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        " ON CONFLICT (a, b) DO UPDATE SET state = excluded.state, kind = excluded.kind,"
        " made_by = excluded.made_by, verified = excluded.verified, reason = excluded.reason,"
        " ts = excluded.ts, envelope = excluded.envelope, removed_by = NULL,"
        " removed_reason = NULL, removed_ts = NULL"
        " RETURNING id",
    [Q_LINK_BY_ID] = "SELECT a, b, state FROM links WHERE id = ?1",
    [Q_LINK_REMOVE] =
        "UPDATE links SET state = 'removed', removed_by = ?2, removed_reason = ?3, removed_ts = ?4"
        " WHERE id = ?1",
    [Q_LINKS_IN] =
        "SELECT l.a, l.b FROM links l JOIN handles h ON h.handle = l.a"
        " WHERE h.customer = ?1 AND l.state = 'active'",
    [Q_VERIFIED] =
        "SELECT l.a FROM links l JOIN handles h ON h.handle = l.a"
        " WHERE h.customer = ?1 AND l.state = 'active' AND l.verified = 1"
        " UNION SELECT l.b FROM links l JOIN handles h ON h.handle = l.b"
        " WHERE h.customer = ?1 AND l.state = 'active' AND l.verified = 1",
    [Q_CNV_OPEN] =
        "SELECT id, last FROM conversations WHERE customer = ?1 AND closed IS NULL"
        " ORDER BY last DESC LIMIT 1",
    [Q_CNV_TOUCH] = "UPDATE conversations SET last = max(last, ?2) WHERE id = ?1",
    [Q_CNV_NEW] =
        "INSERT INTO conversations (id, customer, origin, opened, last) VALUES (?1, ?2, ?2, ?3, ?3)",
    [Q_CNV_CLOSE] =
        "UPDATE conversations SET last = max(last, ?5), closed = ?2, closed_by = ?3,"
        " close_reason = ?4 WHERE id = ?1 AND closed IS NULL",
    [Q_CNV_GET] = "SELECT customer, closed FROM conversations WHERE id = ?1",
    [Q_CNV_MOVE] = "UPDATE conversations SET customer = ?1 WHERE customer = ?2",
    [Q_CNV_MOVE_ORIGIN] = "UPDATE conversations SET customer = ?1 WHERE customer = ?2 AND origin = ?1",
};

/* Statements an envelope cannot leave half done: the first of them opens
 * the envelope's savepoint. (processed is one insert, last; a conversation's
 * latest activity only moves forward.) */
static const bool s_undoable[Q_N] = {
    [Q_HANDLE_PUT] = true, [Q_HANDLE_SET] = true, [Q_HANDLES_MOVE] = true,
    [Q_CUS_PUT] = true, [Q_CUS_MERGE] = true, [Q_CUS_SET_MERGED] = true,
    [Q_LINK_PUT] = true, [Q_LINK_REMOVE] = true,
    [Q_CNV_NEW] = true, [Q_CNV_CLOSE] = true, [Q_CNV_MOVE] = true, [Q_CNV_MOVE_ORIGIN] = true,
};

/* One cache slot: a hot handle and its customer. Its hash lives apart
 * (cache_tag), eight to a cache line, so a lookup touches one line until
 * it finds its key. */
struct s_slot {
    uint32_t gen;                           /* valid while equal to the cache's */
    uint32_t flags;                         /* S_FACT */
    char customer[IDENTITY_ID_LEN + 1];     /* the handle's customer */
    char key[S_KEY_MAX + 1];                /* the handle */
};

/* One conversation-cache slot: a customer's open conversation (its hash
 * in conv_tag). */
struct s_cslot {
    uint32_t gen;                           /* valid while equal to the cache's */
    char customer[IDENTITY_ID_LEN + 1];     /* the customer */
    char cnv[IDENTITY_ID_LEN + 1];          /* its open conversation, "" when none */
    int64_t last;                           /* ts of the conversation's latest envelope */
    int64_t saved;                          /* last as the database has it */
};

struct identity {
    sqlite3 *db;                    /* the connection */
    sqlite3_stmt *st[Q_N];          /* prepared statements */
    struct identity_opts opts;      /* options */
    struct ulid_gen ids;            /* customer and conversation ids */
    struct s_slot *cache;           /* hot handles, or NULL */
    uint64_t *cache_tag;            /* hash of each slot's handle; 0: empty */
    size_t cache_mask;              /* slots - 1 (a power of two) */
    uint32_t gen;                   /* cache generation: bumping it empties the cache */
    uint32_t evict;                 /* next victim in a full window */
    struct s_cslot *conv;           /* open conversations of hot customers, or NULL */
    uint64_t *conv_tag;             /* hash of each slot's customer id; 0: empty */
    size_t conv_mask;               /* slots - 1 (a power of two) */
    uint32_t conv_gen;              /* conversation-cache generation */
    uint32_t conv_evict;            /* next victim in a full window */
    struct s_cslot scratch;         /* the one slot used when there is no cache */
    int64_t slack_ms;               /* how far last may run ahead of the database */
    int64_t data_version;           /* PRAGMA data_version at the last begin */
    bool in_envelope;               /* inside identity_assign */
    bool savepoint;                 /* the envelope's savepoint is open */
    struct identity_counts counts;  /* counters */
    struct log_limit err_limit;     /* rate limit of database errors */
    struct log_limit warn_limit;    /* rate limit of refused links */
};

/* -- database helpers ---------------------------------------------------- */

static int s_dberr(struct identity *id, int rc, const char *what)
{
    if ((rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED) {
        return IDENTITY_BUSY;
    }
    log_limited(&id->err_limit, LOG_ERROR, "sqlite: %s: %s", what, sqlite3_errmsg(id->db));
    return IDENTITY_ERROR;
}

static void s_text(sqlite3_stmt *st, int i, const char *s)
{
    if (s == NULL || s[0] == '\0') {
        sqlite3_bind_null(st, i);
    } else {
        sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
    }
}

static void s_col(sqlite3_stmt *st, int i, char *out, size_t n)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    snprintf(out, n, "%s", t ? (const char *)t : "");
}

/* Opens the envelope's savepoint before its first undoable write. */
static int s_before(struct identity *id, enum s_q q)
{
    if (!s_undoable[q] || !id->in_envelope || id->savepoint) {
        return SQLITE_OK;
    }
    int rc = sqlite3_step(id->st[Q_SAVE]);
    sqlite3_reset(id->st[Q_SAVE]);
    id->savepoint = rc == SQLITE_DONE;
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Runs a statement whose rows are not needed, and resets it. */
static int s_run(struct identity *id, enum s_q q)
{
    sqlite3_stmt *st = id->st[q];
    int rc = s_before(id, q);
    if (rc != SQLITE_OK) {
        sqlite3_reset(st);
        return s_dberr(id, rc, s_sql[Q_SAVE]);
    }
    rc = sqlite3_step(st);
    while (rc == SQLITE_ROW) {
        rc = sqlite3_step(st);
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? IDENTITY_OK : s_dberr(id, rc, s_sql[q]);
}

/* Steps a query: IDENTITY_OK with a row (read it, then sqlite3_reset), or
 * _NOT_FOUND / an error, reset done. */
static int s_row(struct identity *id, enum s_q q)
{
    int rc = s_before(id, q);
    if (rc != SQLITE_OK) {
        sqlite3_reset(id->st[q]);
        return s_dberr(id, rc, s_sql[Q_SAVE]);
    }
    rc = sqlite3_step(id->st[q]);
    if (rc == SQLITE_ROW) {
        return IDENTITY_OK;
    }
    sqlite3_reset(id->st[q]);
    return rc == SQLITE_DONE ? IDENTITY_NOT_FOUND : s_dberr(id, rc, s_sql[q]);
}

static void s_iso(uint64_t ms, char *out, size_t n)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* -- the cache of hot handles -------------------------------------------- */

static uint64_t s_hash(const char *s, size_t n)
{
    uint64_t h = 14695981039346656037ULL;   /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    }
    return h | 1;
}

/* The first slot of h's window: S_WINDOW slots, aligned. */
static size_t s_window(uint64_t h, size_t mask)
{
    return (size_t)h & mask & ~(size_t)(S_WINDOW - 1);
}

static struct s_slot *s_cache_find(struct identity *id, const char *key, size_t n, uint64_t h)
{
    if (id->cache == NULL || n > S_KEY_MAX) {
        return NULL;
    }
    size_t w = s_window(h, id->cache_mask);
    for (size_t k = 0; k < S_WINDOW; k++) {
        if (id->cache_tag[w + k] == h) {
            struct s_slot *sl = &id->cache[w + k];
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
    if (id->cache == NULL || n > S_KEY_MAX) {
        return;
    }
    uint64_t h = s_hash(key, n);
    struct s_slot *sl = s_cache_find(id, key, n, h);
    size_t w = s_window(h, id->cache_mask);
    size_t at = SIZE_MAX;
    for (size_t k = 0; sl == NULL && at == SIZE_MAX && k < S_WINDOW; k++) {
        if (id->cache_tag[w + k] == 0 || id->cache[w + k].gen != id->gen) {
            at = w + k;
        }
    }
    if (sl == NULL) {
        at = at != SIZE_MAX ? at : w + id->evict++ % S_WINDOW;
        sl = &id->cache[at];
        id->cache_tag[at] = h;
    }
    sl->gen = id->gen;
    sl->flags = flags;
    snprintf(sl->customer, sizeof sl->customer, "%s", customer);
    memcpy(sl->key, key, n + 1);
}

static void s_cache_flag(struct identity *id, const char *key, uint32_t flag)
{
    size_t n = strlen(key);
    struct s_slot *sl = s_cache_find(id, key, n, s_hash(key, n));
    if (sl != NULL) {
        sl->flags |= flag;
    }
}

static void s_cache_clear(struct identity *id)
{
    id->gen++;
    if (id->gen == 0) {
        id->gen = 1;
        if (id->cache != NULL) {
            memset(id->cache_tag, 0, (id->cache_mask + 1) * sizeof *id->cache_tag);
        }
    }
}

/* -- open, close, transactions ------------------------------------------ */

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

static int64_t s_data_version(struct identity *id)
{
    int64_t v = -1;
    if (s_row(id, Q_DATA_VERSION) == IDENTITY_OK) {
        v = sqlite3_column_int64(id->st[Q_DATA_VERSION], 0);
        sqlite3_reset(id->st[Q_DATA_VERSION]);
    }
    return v;
}

struct identity *identity_open(const char *path, const struct identity_opts *o, char *err,
                               size_t n)
{
    struct identity *id = calloc(1, sizeof *id);
    if (id == NULL) {
        snprintf(err, n, "out of memory");
        return NULL;
    }
    id->opts = *o;
    id->gen = 1;
    id->conv_gen = 1;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (o->create ? SQLITE_OPEN_CREATE : 0);
    int rc = sqlite3_open_v2(path, &id->db, flags, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, n, "%s: %s", path,
                 rc == SQLITE_CANTOPEN && !o->create ? "no such database" : sqlite3_errmsg(id->db));
        goto fail;
    }
    sqlite3_busy_timeout(id->db, (int)(o->busy_ms > 0 ? o->busy_ms : 0));
    char mode[16] = "";
    rc = sqlite3_exec(id->db, "PRAGMA journal_mode=WAL", s_journal_cb, mode, NULL);
    if (rc != SQLITE_OK || strcmp(mode, "wal") != 0) {
        snprintf(err, n, "%s: cannot use WAL: %s", path, rc ? sqlite3_errmsg(id->db) : mode);
        goto fail;
    }
    /* secure_delete on every connection: no cell this tool frees (an
     * updated handle row too) leaves its bytes behind for forget to miss. */
    rc = sqlite3_exec(id->db, "PRAGMA synchronous=NORMAL; PRAGMA secure_delete=ON;"
                      " PRAGMA temp_store=MEMORY; PRAGMA cache_size=-32768", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, n, "%s: %s", path, sqlite3_errmsg(id->db));
        goto fail;
    }
    int version = s_user_version(id->db);
    if (version > S_SCHEMA) {
        snprintf(err, n, "%s: schema version %d is newer than this build's %d", path, version,
                 S_SCHEMA);
        goto fail;
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
            goto fail;
        }
    }
    for (int q = 0; q < Q_N; q++) {
        rc = sqlite3_prepare_v3(id->db, s_sql[q], -1, SQLITE_PREPARE_PERSISTENT, &id->st[q], NULL);
        if (rc != SQLITE_OK) {
            snprintf(err, n, "%s: preparing \"%.40s\": %s", path, s_sql[q], sqlite3_errmsg(id->db));
            goto fail;
        }
    }
    if (o->cache > 0) {
        size_t slots = 16;
        while (slots < (size_t)o->cache && slots < ((size_t)1 << 30)) {
            slots <<= 1;
        }
        id->cache = calloc(slots, sizeof *id->cache);
        id->cache_tag = calloc(slots, sizeof *id->cache_tag);
        id->conv = calloc(slots, sizeof *id->conv);
        id->conv_tag = calloc(slots, sizeof *id->conv_tag);
        if (id->cache == NULL || id->cache_tag == NULL || id->conv == NULL || id->conv_tag == NULL) {
            snprintf(err, n, "out of memory for a cache of %lld handles", (long long)o->cache);
            goto fail;
        }
        id->cache_mask = slots - 1;
        id->conv_mask = slots - 1;
        id->slack_ms = o->idle_ms / 100 < S_SLACK_MAX ? o->idle_ms / 100 : S_SLACK_MAX;
    }
    id->data_version = s_data_version(id);
    return id;
fail:
    identity_destroy(&id);
    return NULL;
}

void identity_destroy(struct identity **idp)
{
    struct identity *id = *idp;
    if (id == NULL) {
        return;
    }
    if (id->db != NULL && !sqlite3_get_autocommit(id->db)) {
        sqlite3_exec(id->db, "ROLLBACK", NULL, NULL, NULL);
    }
    for (int q = 0; q < Q_N; q++) {
        sqlite3_finalize(id->st[q]);
    }
    sqlite3_close(id->db);
    free(id->cache);
    free(id->cache_tag);
    free(id->conv);
    free(id->conv_tag);
    free(id);
    *idp = NULL;
}

bool identity_in_transaction(const struct identity *id)
{
    return !sqlite3_get_autocommit(id->db);
}

static int s_conv_save_all(struct identity *id);
static void s_conv_clear(struct identity *id);

int identity_begin(struct identity *id)
{
    assert(!identity_in_transaction(id));
    /* Another connection (the CLI) committed since our last look: what the
     * caches know may be stale. Asked inside the transaction, which holds
     * the write lock: nobody commits between the question and our work. */
    int rc = s_run(id, Q_BEGIN);
    int64_t v = rc == IDENTITY_OK ? s_data_version(id) : id->data_version;
    if (rc == IDENTITY_OK && v != id->data_version) {
        s_cache_clear(id);
        rc = s_conv_save_all(id);
        if (rc != IDENTITY_OK) {
            identity_rollback(id);
            return rc;
        }
        id->data_version = v;
    }
    return rc;
}

int identity_commit(struct identity *id)
{
    int rc = s_run(id, Q_COMMIT);
    if (rc != IDENTITY_OK && !identity_in_transaction(id)) {
        s_cache_clear(id);      /* rolled back: the caches may hold what was lost */
        s_conv_clear(id);
    }
    return rc;
}

void identity_rollback(struct identity *id)
{
    if (identity_in_transaction(id)) {
        s_run(id, Q_ROLLBACK);
    }
    s_cache_clear(id);
    s_conv_clear(id);
}

const struct identity_counts *identity_counts(const struct identity *id)
{
    return &id->counts;
}

/* -- customers and handles ----------------------------------------------- */

static int s_new_id(struct identity *id, const char *prefix, uint64_t ts, char out[IDENTITY_ID_LEN + 1])
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
static int s_customer_get(struct identity *id, const char *h, char out[IDENTITY_ID_LEN + 1],
                          uint32_t *flags)
{
    size_t n = strlen(h);
    struct s_slot *sl = s_cache_find(id, h, n, s_hash(h, n));
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
    sqlite3_stmt *st = id->st[Q_HANDLE_GET];
    s_text(st, 1, h);
    int rc = s_row(id, Q_HANDLE_GET);
    if (rc == IDENTITY_OK) {
        s_col(st, 0, out, IDENTITY_ID_LEN + 1);
        sqlite3_reset(st);
        s_cache_put(id, h, out, 0);
    }
    return rc;
}

static int s_customer_new(struct identity *id, uint64_t ts, char out[IDENTITY_ID_LEN + 1])
{
    int rc = s_new_id(id, "cus_", ts, out);
    if (rc != IDENTITY_OK) {
        return rc;
    }
    sqlite3_stmt *st = id->st[Q_CUS_PUT];
    s_text(st, 1, out);
    sqlite3_bind_int64(st, 2, (int64_t)ts);
    rc = s_run(id, Q_CUS_PUT);
    if (rc == IDENTITY_OK) {
        id->counts.customers++;
    }
    return rc;
}

/* Gives handle h (new) to customer c. */
static int s_handle_put(struct identity *id, const char *h, const char *c, uint64_t ts)
{
    sqlite3_stmt *st = id->st[Q_HANDLE_PUT];
    s_text(st, 1, h);
    s_text(st, 2, c);
    sqlite3_bind_int64(st, 3, (int64_t)ts);
    int rc = s_run(id, Q_HANDLE_PUT);
    if (rc == IDENTITY_OK) {
        s_cache_put(id, h, c, 0);
    }
    return rc;
}

/* The customer of h, made when h is new. */
static int s_customer_ensure(struct identity *id, const char *h, uint64_t ts,
                             char out[IDENTITY_ID_LEN + 1])
{
    int rc = s_customer_get(id, h, out, NULL);
    if (rc != IDENTITY_NOT_FOUND) {
        return rc;
    }
    rc = s_customer_new(id, ts, out);
    return rc == IDENTITY_OK ? s_handle_put(id, h, out, ts) : rc;
}

/* The live customer of a customer id, following merges. */
static int s_customer_live(struct identity *id, const char *c, char out[IDENTITY_ID_LEN + 1])
{
    char cur[IDENTITY_ID_LEN + 1];
    snprintf(cur, sizeof cur, "%s", c);
    for (int hop = 0; hop < 16; hop++) {
        sqlite3_stmt *st = id->st[Q_CUS_GET];
        s_text(st, 1, cur);
        int rc = s_row(id, Q_CUS_GET);
        if (rc != IDENTITY_OK) {
            return rc;
        }
        char next[IDENTITY_ID_LEN + 1];
        s_col(st, 0, next, sizeof next);
        sqlite3_reset(st);
        if (next[0] == '\0') {
            memcpy(out, cur, sizeof cur);
            return IDENTITY_OK;
        }
        memcpy(cur, next, sizeof cur);
    }
    return IDENTITY_NOT_FOUND;
}

/* -- conversations ------------------------------------------------------- */

/* The open conversation of customer c in the database: out ("" when none)
 * and its last ts. */
static int s_conv_open(struct identity *id, const char *c, char out[IDENTITY_ID_LEN + 1],
                       int64_t *last)
{
    out[0] = '\0';
    *last = 0;
    sqlite3_stmt *st = id->st[Q_CNV_OPEN];
    s_text(st, 1, c);
    int rc = s_row(id, Q_CNV_OPEN);
    if (rc == IDENTITY_OK) {
        s_col(st, 0, out, IDENTITY_ID_LEN + 1);
        *last = sqlite3_column_int64(st, 1);
        sqlite3_reset(st);
    }
    return rc == IDENTITY_NOT_FOUND ? IDENTITY_OK : rc;
}

/* Ends conversation cnv at ts; last is its latest activity as known here. */
static int s_conv_close(struct identity *id, const char *cnv, int64_t ts, int64_t last,
                        const char *by, const char *reason)
{
    sqlite3_stmt *st = id->st[Q_CNV_CLOSE];
    s_text(st, 1, cnv);
    sqlite3_bind_int64(st, 2, ts);
    s_text(st, 3, by);
    s_text(st, 4, reason);
    sqlite3_bind_int64(st, 5, last);
    return s_run(id, Q_CNV_CLOSE);
}

static bool s_idle(const struct identity *id, uint64_t ts, int64_t last)
{
    return (int64_t)ts - last > id->opts.idle_ms;
}

/* Writes a slot's latest activity to the database if it ran ahead. */
static int s_conv_save(struct identity *id, struct s_cslot *sl)
{
    if (sl->cnv[0] == '\0' || sl->last <= sl->saved) {
        return IDENTITY_OK;
    }
    sqlite3_stmt *st = id->st[Q_CNV_TOUCH];
    s_text(st, 1, sl->cnv);
    sqlite3_bind_int64(st, 2, sl->last);
    int rc = s_run(id, Q_CNV_TOUCH);
    if (rc == IDENTITY_OK) {
        sl->saved = sl->last;
    }
    return rc;
}

static struct s_cslot *s_conv_find(struct identity *id, const char *c, size_t n, uint64_t h,
                                   size_t *at)
{
    if (id->conv == NULL) {
        return NULL;
    }
    size_t w = s_window(h, id->conv_mask);
    for (size_t k = 0; k < S_WINDOW; k++) {
        if (id->conv_tag[w + k] == h) {
            struct s_cslot *sl = &id->conv[w + k];
            if (sl->gen == id->conv_gen && memcmp(sl->customer, c, n + 1) == 0) {
                *at = w + k;
                return sl;
            }
        }
    }
    return NULL;
}

/* The slot of customer c's open conversation, loaded when not cached. */
static int s_conv_load(struct identity *id, const char *c, struct s_cslot **out)
{
    size_t n = strlen(c);
    uint64_t h = s_hash(c, n);
    size_t at = SIZE_MAX;
    struct s_cslot *sl = s_conv_find(id, c, n, h, &at);
    if (sl != NULL) {
        *out = sl;
        return IDENTITY_OK;
    }
    if (id->conv == NULL) {
        sl = &id->scratch;
    } else {
        size_t w = s_window(h, id->conv_mask);
        for (size_t k = 0; at == SIZE_MAX && k < S_WINDOW; k++) {
            if (id->conv_tag[w + k] == 0 || id->conv[w + k].gen != id->conv_gen) {
                at = w + k;
            }
        }
        if (at == SIZE_MAX) {
            at = w + id->conv_evict++ % S_WINDOW;
            int rc = s_conv_save(id, &id->conv[at]);     /* evicted: written first */
            if (rc != IDENTITY_OK) {
                return rc;
            }
        }
        sl = &id->conv[at];
        id->conv_tag[at] = 0;
    }
    int64_t last;
    int rc = s_conv_open(id, c, sl->cnv, &last);
    if (rc != IDENTITY_OK) {
        return rc;
    }
    if (id->conv != NULL) {
        id->conv_tag[at] = h;
    }
    sl->gen = id->conv_gen;
    snprintf(sl->customer, sizeof sl->customer, "%s", c);
    sl->last = sl->saved = last;
    *out = sl;
    return IDENTITY_OK;
}

/* Writes customer c's slot and forgets it (before the database changes
 * its conversations under it). */
static int s_conv_drop(struct identity *id, const char *c)
{
    size_t n = strlen(c), at;
    struct s_cslot *sl = s_conv_find(id, c, n, s_hash(c, n), &at);
    if (sl == NULL) {
        return IDENTITY_OK;
    }
    int rc = s_conv_save(id, sl);
    id->conv_tag[at] = 0;
    return rc;
}

/* Forgets customer c's slot without writing (its envelope was undone). */
static void s_conv_forget(struct identity *id, const char *c)
{
    size_t n = strlen(c), at;
    if (s_conv_find(id, c, n, s_hash(c, n), &at) != NULL) {
        id->conv_tag[at] = 0;
    }
}

/* Forgets every slot without writing (the transaction was rolled back). */
static void s_conv_clear(struct identity *id)
{
    if (++id->conv_gen == 0) {
        id->conv_gen = 1;
        if (id->conv != NULL) {
            memset(id->conv_tag, 0, (id->conv_mask + 1) * sizeof *id->conv_tag);
        }
    }
}

/* Writes every slot that ran ahead of the database, and forgets them all. */
static int s_conv_save_all(struct identity *id)
{
    int rc = IDENTITY_OK;
    for (size_t i = 0; id->conv != NULL && i <= id->conv_mask && rc == IDENTITY_OK; i++) {
        if (id->conv_tag[i] != 0 && id->conv[i].gen == id->conv_gen) {
            rc = s_conv_save(id, &id->conv[i]);
        }
    }
    if (rc == IDENTITY_OK) {
        s_conv_clear(id);
    }
    return rc;
}

int identity_sync(struct identity *id)
{
    assert(identity_in_transaction(id));
    return s_conv_save_all(id);
}

/* A message of customer c at ts: continues the open conversation, or
 * closes an idle one and starts the next. */
static int s_conv_message(struct identity *id, const char *c, uint64_t ts,
                          char out[IDENTITY_ID_LEN + 1])
{
    struct s_cslot *sl;
    int rc = s_conv_load(id, c, &sl);
    if (rc != IDENTITY_OK) {
        return rc;
    }
    if (sl->cnv[0] != '\0' && !s_idle(id, ts, sl->last)) {
        if ((int64_t)ts > sl->last) {
            sl->last = (int64_t)ts;
        }
        memcpy(out, sl->cnv, sizeof sl->cnv);
        return sl->last - sl->saved > id->slack_ms ? s_conv_save(id, sl) : IDENTITY_OK;
    }
    if (sl->cnv[0] != '\0') {
        rc = s_conv_close(id, sl->cnv, sl->last + id->opts.idle_ms, sl->last, "identity", "idle");
        sl->cnv[0] = '\0';
        if (rc != IDENTITY_OK) {
            return rc;
        }
    }
    rc = s_new_id(id, "cnv_", ts, out);
    if (rc != IDENTITY_OK) {
        return rc;
    }
    sqlite3_stmt *st = id->st[Q_CNV_NEW];
    s_text(st, 1, out);
    s_text(st, 2, c);
    sqlite3_bind_int64(st, 3, (int64_t)ts);
    rc = s_run(id, Q_CNV_NEW);
    if (rc == IDENTITY_OK) {
        memcpy(sl->cnv, out, sizeof sl->cnv);
        sl->last = sl->saved = (int64_t)ts;
        id->counts.conversations++;
    }
    return rc;
}

/* The conversation an event at ts belongs to: the open one unless idle. */
static int s_conv_current(struct identity *id, const char *c, uint64_t ts,
                          char out[IDENTITY_ID_LEN + 1])
{
    struct s_cslot *sl;
    out[0] = '\0';
    int rc = s_conv_load(id, c, &sl);
    if (rc == IDENTITY_OK && sl->cnv[0] != '\0' && !s_idle(id, ts, sl->last)) {
        memcpy(out, sl->cnv, sizeof sl->cnv);
    }
    return rc;
}

/* Ends customer c's open conversation (a close event); its id into out. */
static int s_conv_end(struct identity *id, const char *c, uint64_t ts, const char *by,
                      const char *reason, char out[IDENTITY_ID_LEN + 1])
{
    struct s_cslot *sl;
    out[0] = '\0';
    int rc = s_conv_load(id, c, &sl);
    if (rc != IDENTITY_OK || sl->cnv[0] == '\0') {
        return rc;
    }
    memcpy(out, sl->cnv, sizeof sl->cnv);
    sl->cnv[0] = '\0';
    return s_conv_close(id, out, (int64_t)ts, sl->last, by, reason);
}

/* -- links, merges, conflicts -------------------------------------------- */

enum s_mode {
    S_AUTO,     /* a channel fact or a link event: never undoes a person's unlink */
    S_AGENT,    /* a person (CLI): may bring back a removed or refused link */
};

/* A list of strings owned by the list. */
struct s_strs {
    char **v;           /* the strings */
    size_t n;           /* how many */
    size_t cap;         /* room */
};

static int s_strs_add(struct s_strs *l, const char *s)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        char **v = realloc(l->v, cap * sizeof *v);
        if (v == NULL) {
            return -1;
        }
        l->v = v;
        l->cap = cap;
    }
    if ((l->v[l->n] = strdup(s)) == NULL) {
        return -1;
    }
    l->n++;
    return 0;
}

static void s_strs_free(struct s_strs *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i]);
    }
    free(l->v);
    *l = (struct s_strs){ 0 };
}

/* The handles of customer c that an active verified link names. */
static int s_verified(struct identity *id, const char *c, struct s_strs *out)
{
    sqlite3_stmt *st = id->st[Q_VERIFIED];
    s_text(st, 1, c);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const unsigned char *h = sqlite3_column_text(st, 0);
        if (h != NULL && s_strs_add(out, (const char *)h) != 0) {
            sqlite3_reset(st);
            return IDENTITY_ERROR;
        }
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? IDENTITY_OK : s_dberr(id, rc, s_sql[Q_VERIFIED]);
}

/* Would joining ca (holding a) and cb (holding b) put two different
 * verified handles of one scheme into one customer? scheme[n] names it. */
static int s_conflict(struct identity *id, const char *ca, const char *a, const char *cb,
                      const char *b, bool verified, bool *conflict, char *scheme, size_t n)
{
    struct s_strs va = { 0 }, vb = { 0 };
    *conflict = false;
    int rc = s_verified(id, ca, &va);
    if (rc == IDENTITY_OK) {
        rc = s_verified(id, cb, &vb);
    }
    if (rc == IDENTITY_OK && verified && (s_strs_add(&va, a) != 0 || s_strs_add(&vb, b) != 0)) {
        rc = IDENTITY_ERROR;
    }
    for (size_t i = 0; rc == IDENTITY_OK && i < va.n && !*conflict; i++) {
        size_t sl = handle_scheme_len(va.v[i]);
        for (size_t j = 0; j < vb.n; j++) {
            if (handle_scheme_len(vb.v[j]) == sl && memcmp(va.v[i], vb.v[j], sl) == 0
                && strcmp(va.v[i], vb.v[j]) != 0) {
                *conflict = true;
                snprintf(scheme, n, "%.*s:", (int)sl, va.v[i]);
                break;
            }
        }
    }
    s_strs_free(&va);
    s_strs_free(&vb);
    return rc;
}

/* Writes the link lo-hi with provenance p in state; its id into *lid. */
static int s_link_put(struct identity *id, const char *lo, const char *hi, const char *state,
                      const struct identity_prov *p, int64_t *lid)
{
    sqlite3_stmt *st = id->st[Q_LINK_PUT];
    s_text(st, 1, lo);
    s_text(st, 2, hi);
    s_text(st, 3, state);
    s_text(st, 4, p->kind);
    s_text(st, 5, p->by ? p->by : "unknown");
    sqlite3_bind_int(st, 6, p->verified ? 1 : 0);
    s_text(st, 7, p->reason);
    sqlite3_bind_int64(st, 8, (int64_t)p->ts);
    s_text(st, 9, p->envelope);
    int rc = s_row(id, Q_LINK_PUT);
    if (rc == IDENTITY_OK) {
        *lid = sqlite3_column_int64(st, 0);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        rc = rc == SQLITE_DONE ? IDENTITY_OK : s_dberr(id, rc, s_sql[Q_LINK_PUT]);
    }
    return rc;
}

/* Joins customers ca and cb into the older id. */
static int s_merge(struct identity *id, const char *ca, const char *cb, struct identity_result *r)
{
    char keep[IDENTITY_ID_LEN + 1], gone[IDENTITY_ID_LEN + 1];
    bool a_first = strcmp(ca, cb) < 0;
    snprintf(keep, sizeof keep, "%s", a_first ? ca : cb);
    snprintf(gone, sizeof gone, "%s", a_first ? cb : ca);
    char ok[IDENTITY_ID_LEN + 1], og[IDENTITY_ID_LEN + 1];
    int64_t lk = 0, lg = 0;
    int rc = s_conv_drop(id, keep);
    if (rc == IDENTITY_OK) {
        rc = s_conv_drop(id, gone);
    }
    if (rc == IDENTITY_OK) {
        rc = s_conv_open(id, keep, ok, &lk);
    }
    if (rc == IDENTITY_OK) {
        rc = s_conv_open(id, gone, og, &lg);
    }
    static const enum s_q moves[] = { Q_HANDLES_MOVE, Q_CUS_MERGE, Q_CNV_MOVE };
    for (size_t i = 0; rc == IDENTITY_OK && i < sizeof moves / sizeof moves[0]; i++) {
        s_text(id->st[moves[i]], 1, keep);
        s_text(id->st[moves[i]], 2, gone);
        rc = s_run(id, moves[i]);
    }
    if (rc == IDENTITY_OK && ok[0] != '\0' && og[0] != '\0') {
        /* One customer, one open conversation: the latest continues. */
        bool keep_ok = lk >= lg;
        char why[80];
        snprintf(why, sizeof why, "merged: continues in %s", keep_ok ? ok : og);
        rc = s_conv_close(id, keep_ok ? og : ok, keep_ok ? lg : lk, 0, "identity", why);
    }
    if (rc != IDENTITY_OK) {
        return rc;
    }
    s_cache_clear(id);
    id->counts.merges++;
    log_msg(LOG_INFO, "merged %s into %s", gone, keep);
    snprintf(r->customer, sizeof r->customer, "%s", keep);
    snprintf(r->other, sizeof r->other, "%s", gone);
    r->merged = true;
    return IDENTITY_OK;
}

/* Links normalised handles a and b. Returns IDENTITY_OK (r->customer is
 * theirs), _CONFLICT (refused and recorded), or an error. */
static int s_link(struct identity *id, const char *a, const char *b, const struct identity_prov *p,
                  enum s_mode mode, bool force, struct identity_result *r)
{
    if (strcmp(a, b) == 0) {
        return s_customer_ensure(id, a, p->ts, r->customer);
    }
    const char *lo = strcmp(a, b) < 0 ? a : b;
    const char *hi = lo == a ? b : a;
    sqlite3_stmt *st = id->st[Q_LINK_GET];
    s_text(st, 1, lo);
    s_text(st, 2, hi);
    int rc = s_row(id, Q_LINK_GET);
    int64_t lid = 0;
    char state[16] = "";
    bool verified = false;
    if (rc == IDENTITY_OK) {
        lid = sqlite3_column_int64(st, 0);
        s_col(st, 1, state, sizeof state);
        verified = sqlite3_column_int(st, 2) != 0;
        sqlite3_reset(st);
    } else if (rc != IDENTITY_NOT_FOUND) {
        return rc;
    }
    if (lid != 0 && strcmp(state, "active") == 0) {
        r->link = lid;
        if (p->verified && !verified) {
            rc = s_link_put(id, lo, hi, "active", p, &lid);     /* better provenance */
        }
        return rc == IDENTITY_OK ? s_customer_ensure(id, a, p->ts, r->customer) : rc;
    }
    if (lid != 0 && mode == S_AUTO) {
        /* Removed by a person, or refused: only a person brings it back. */
        r->link = lid;
        return s_customer_ensure(id, a, p->ts, r->customer);
    }
    char ca[IDENTITY_ID_LEN + 1], cb[IDENTITY_ID_LEN + 1];
    int ra = s_customer_get(id, a, ca, NULL);
    if (ra != IDENTITY_OK && ra != IDENTITY_NOT_FOUND) {
        return ra;
    }
    int rb = s_customer_get(id, b, cb, NULL);
    if (rb != IDENTITY_OK && rb != IDENTITY_NOT_FOUND) {
        return rb;
    }
    rc = IDENTITY_OK;
    if (ra == IDENTITY_NOT_FOUND && rb == IDENTITY_NOT_FOUND) {
        rc = s_customer_new(id, p->ts, r->customer);
        if (rc == IDENTITY_OK) {
            rc = s_handle_put(id, a, r->customer, p->ts);
        }
        if (rc == IDENTITY_OK) {
            rc = s_handle_put(id, b, r->customer, p->ts);
        }
    } else if (ra == IDENTITY_NOT_FOUND) {
        memcpy(r->customer, cb, sizeof cb);
        rc = s_handle_put(id, a, cb, p->ts);
    } else if (rb == IDENTITY_NOT_FOUND) {
        memcpy(r->customer, ca, sizeof ca);
        rc = s_handle_put(id, b, ca, p->ts);
    } else if (strcmp(ca, cb) == 0) {
        memcpy(r->customer, ca, sizeof ca);
    } else {
        bool conflict;
        char scheme[40] = "";
        rc = s_conflict(id, ca, a, cb, b, p->verified, &conflict, scheme, sizeof scheme);
        if (rc != IDENTITY_OK) {
            return rc;
        }
        if (conflict && !force) {
            memcpy(r->customer, ca, sizeof ca);
            memcpy(r->other, cb, sizeof cb);
            rc = s_link_put(id, lo, hi, "refused", p, &r->link);
            if (rc != IDENTITY_OK) {
                return rc;
            }
            id->counts.conflicts++;
            snprintf(r->reason, sizeof r->reason,
                     "%s and %s each hold a different verified %s handle", ca, cb, scheme);
            log_limited(&id->warn_limit, LOG_WARN,
                        "link refused: %s link=%lld by=\"%s\"%s%s", r->reason, (long long)r->link,
                        p->by ? p->by : "unknown", p->envelope ? " envelope=" : "",
                        p->envelope ? p->envelope : "");
            return IDENTITY_CONFLICT;
        }
        if (conflict) {
            log_msg(LOG_WARN, "forced merge of %s and %s (both hold a verified %s handle) by=\"%s\"",
                    ca, cb, scheme, p->by ? p->by : "unknown");
        }
        rc = s_merge(id, ca, cb, r);
    }
    if (rc == IDENTITY_OK) {
        rc = s_link_put(id, lo, hi, "active", p, &r->link);
    }
    if (rc == IDENTITY_OK) {
        id->counts.links++;
    }
    return rc;
}

static int s_bad(struct identity_result *r, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int s_bad(struct identity_result *r, const char *field, const char *fmt, ...)
{
    snprintf(r->field, sizeof r->field, "%s", field);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->reason, sizeof r->reason, fmt, ap);
    va_end(ap);
    return IDENTITY_BAD;
}

int identity_link(struct identity *id, const char *h1, const char *h2,
                  const struct identity_prov *p, bool force, struct identity_result *r)
{
    assert(identity_in_transaction(id));
    memset(r, 0, sizeof *r);
    char a[HANDLE_MAX + 1], b[HANDLE_MAX + 1], why[160];
    if (handle_normalise(h1, id->opts.country, a, sizeof a, why, sizeof why) != 0) {
        return s_bad(r, "handle", "'%.80s': %s", h1, why);
    }
    if (handle_normalise(h2, id->opts.country, b, sizeof b, why, sizeof why) != 0) {
        return s_bad(r, "handle", "'%.80s': %s", h2, why);
    }
    return s_link(id, a, b, p, S_AGENT, force, r);
}

/* -- unlink: split a customer along its remaining links ------------------ */

/* Union-find over the handles of one customer. */
struct s_graph {
    struct s_strs h;        /* handles, in first_seen order */
    struct s_strs origin;   /* their origins */
    size_t *parent;         /* union-find parents */
    size_t *by_name;        /* indices sorted by handle, for lookups */
};

static const struct s_strs *s_sort_strs;

static int s_by_name_cmp(const void *x, const void *y)
{
    return strcmp(s_sort_strs->v[*(const size_t *)x], s_sort_strs->v[*(const size_t *)y]);
}

static size_t s_find_root(size_t *parent, size_t i)
{
    while (parent[i] != i) {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    return i;
}

static bool s_graph_index(const struct s_graph *g, const char *h, size_t *out)
{
    size_t lo = 0, hi = g->h.n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(g->h.v[g->by_name[mid]], h);
        if (c == 0) {
            *out = g->by_name[mid];
            return true;
        }
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return false;
}

static void s_graph_free(struct s_graph *g)
{
    s_strs_free(&g->h);
    s_strs_free(&g->origin);
    free(g->parent);
    free(g->by_name);
}

/* Loads customer c's handles and active links into g. */
static int s_graph_load(struct identity *id, const char *c, struct s_graph *g)
{
    sqlite3_stmt *st = id->st[Q_HANDLES_OF];
    s_text(st, 1, c);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *h = (const char *)sqlite3_column_text(st, 0);
        const char *o = (const char *)sqlite3_column_text(st, 1);
        if (s_strs_add(&g->h, h ? h : "") != 0 || s_strs_add(&g->origin, o ? o : "") != 0) {
            sqlite3_reset(st);
            return IDENTITY_ERROR;
        }
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        return s_dberr(id, rc, s_sql[Q_HANDLES_OF]);
    }
    size_t n = g->h.n;
    g->parent = malloc((n ? n : 1) * sizeof *g->parent);
    g->by_name = malloc((n ? n : 1) * sizeof *g->by_name);
    if (g->parent == NULL || g->by_name == NULL) {
        return IDENTITY_ERROR;
    }
    for (size_t i = 0; i < n; i++) {
        g->parent[i] = i;
        g->by_name[i] = i;
    }
    s_sort_strs = &g->h;
    qsort(g->by_name, n, sizeof *g->by_name, s_by_name_cmp);
    st = id->st[Q_LINKS_IN];
    s_text(st, 1, c);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        size_t ia, ib;
        const char *a = (const char *)sqlite3_column_text(st, 0);
        const char *b = (const char *)sqlite3_column_text(st, 1);
        if (a != NULL && b != NULL && s_graph_index(g, a, &ia) && s_graph_index(g, b, &ib)) {
            size_t ra = s_find_root(g->parent, ia), rb = s_find_root(g->parent, ib);
            if (ra != rb) {
                g->parent[ra > rb ? ra : rb] = ra > rb ? rb : ra;
            }
        }
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? IDENTITY_OK : s_dberr(id, rc, s_sql[Q_LINKS_IN]);
}

/* Splits customer c into the connected components of its active links. The
 * component with c's own earliest handle keeps c; the others take back the
 * id their handles first had (a customer merged into c), or a new one. */
static int s_split(struct identity *id, const char *c, uint64_t ts, struct identity_result *r)
{
    struct s_graph g = { 0 };
    char (*names)[IDENTITY_ID_LEN + 1] = NULL;
    size_t *comp_of_root = NULL;
    int rc = s_conv_drop(id, c);
    if (rc == IDENTITY_OK) {
        rc = s_graph_load(id, c, &g);
    }
    size_t n = g.h.n;
    if (rc != IDENTITY_OK || n == 0) {
        goto done;
    }
    /* Number the components in the order of their earliest handle. */
    comp_of_root = malloc(n * sizeof *comp_of_root);
    names = calloc(n, sizeof *names);
    if (comp_of_root == NULL || names == NULL) {
        rc = IDENTITY_ERROR;
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        comp_of_root[i] = SIZE_MAX;
    }
    size_t ncomp = 0;
    size_t keeper = SIZE_MAX;
    for (size_t i = 0; i < n; i++) {
        size_t root = s_find_root(g.parent, i);
        if (comp_of_root[root] == SIZE_MAX) {
            comp_of_root[root] = ncomp++;
        }
        if (keeper == SIZE_MAX && strcmp(g.origin.v[i], c) == 0) {
            keeper = comp_of_root[root];
        }
    }
    r->parts = (int)ncomp;
    if (ncomp < 2) {
        goto done;
    }
    if (keeper == SIZE_MAX) {
        keeper = 0;
    }
    snprintf(names[keeper], sizeof names[keeper], "%s", c);
    for (size_t k = 0; k < ncomp && rc == IDENTITY_OK; k++) {
        if (k == keeper) {
            continue;
        }
        bool revived = false;
        for (size_t i = 0; i < n && !revived; i++) {
            const char *o = g.origin.v[i];
            if (comp_of_root[s_find_root(g.parent, i)] != k || strcmp(o, c) == 0) {
                continue;
            }
            bool taken = false;
            for (size_t j = 0; j < ncomp; j++) {
                taken = taken || strcmp(names[j], o) == 0;
            }
            char live[IDENTITY_ID_LEN + 1];
            if (!taken && s_customer_live(id, o, live) == IDENTITY_OK && strcmp(live, c) == 0) {
                snprintf(names[k], sizeof names[k], "%s", o);
                revived = true;
            }
        }
        if (revived) {
            sqlite3_stmt *st = id->st[Q_CUS_SET_MERGED];
            s_text(st, 1, names[k]);
            sqlite3_bind_null(st, 2);
            rc = s_run(id, Q_CUS_SET_MERGED);
            if (rc == IDENTITY_OK) {
                st = id->st[Q_CNV_MOVE_ORIGIN];
                s_text(st, 1, names[k]);
                s_text(st, 2, c);
                rc = s_run(id, Q_CNV_MOVE_ORIGIN);
            }
        } else {
            rc = s_customer_new(id, ts, names[k]);
        }
    }
    for (size_t i = 0; i < n && rc == IDENTITY_OK; i++) {
        const char *name = names[comp_of_root[s_find_root(g.parent, i)]];
        if (strcmp(name, c) != 0) {
            sqlite3_stmt *st = id->st[Q_HANDLE_SET];
            s_text(st, 1, g.h.v[i]);
            s_text(st, 2, name);
            rc = s_run(id, Q_HANDLE_SET);
        }
        /* An absorbed id now points at the part its handles went to. */
        const char *o = g.origin.v[i];
        bool is_name = false;
        for (size_t j = 0; j < ncomp; j++) {
            is_name = is_name || strcmp(names[j], o) == 0;
        }
        if (rc == IDENTITY_OK && !is_name) {
            sqlite3_stmt *st = id->st[Q_CUS_SET_MERGED];
            s_text(st, 1, o);
            s_text(st, 2, name);
            rc = s_run(id, Q_CUS_SET_MERGED);
        }
    }
    if (rc == IDENTITY_OK) {
        s_cache_clear(id);
        id->counts.splits++;
        log_msg(LOG_INFO, "split %s into %zu customers", c, ncomp);
    }
done:
    free(names);
    free(comp_of_root);
    s_graph_free(&g);
    return rc;
}

int identity_unlink(struct identity *id, int64_t link, const char *h1, const char *h2,
                    const char *by, const char *reason, struct identity_result *r)
{
    assert(identity_in_transaction(id));
    memset(r, 0, sizeof *r);
    char a[HANDLE_MAX + 1], b[HANDLE_MAX + 1], state[16] = "", why[160];
    int rc;
    if (link > 0) {
        sqlite3_stmt *st = id->st[Q_LINK_BY_ID];
        sqlite3_bind_int64(st, 1, link);
        rc = s_row(id, Q_LINK_BY_ID);
        if (rc == IDENTITY_OK) {
            s_col(st, 0, a, sizeof a);
            s_col(st, 1, b, sizeof b);
            s_col(st, 2, state, sizeof state);
            sqlite3_reset(st);
        }
    } else {
        if (handle_normalise(h1, id->opts.country, a, sizeof a, why, sizeof why) != 0) {
            return s_bad(r, "handle", "'%.80s': %s", h1, why);
        }
        if (handle_normalise(h2, id->opts.country, b, sizeof b, why, sizeof why) != 0) {
            return s_bad(r, "handle", "'%.80s': %s", h2, why);
        }
        sqlite3_stmt *st = id->st[Q_LINK_GET];
        bool ordered = strcmp(a, b) < 0;
        s_text(st, 1, ordered ? a : b);
        s_text(st, 2, ordered ? b : a);
        rc = s_row(id, Q_LINK_GET);
        if (rc == IDENTITY_OK) {
            link = sqlite3_column_int64(st, 0);
            s_col(st, 1, state, sizeof state);
            sqlite3_reset(st);
        }
    }
    if (rc == IDENTITY_NOT_FOUND) {
        snprintf(r->reason, sizeof r->reason, "no such link");
        return rc;
    }
    if (rc != IDENTITY_OK) {
        return rc;
    }
    r->link = link;
    if (strcmp(state, "active") != 0) {
        snprintf(r->reason, sizeof r->reason, "link #%lld is %s, not active", (long long)link, state);
        return IDENTITY_NOT_FOUND;
    }
    uint64_t now = stage_now_ms();
    sqlite3_stmt *st = id->st[Q_LINK_REMOVE];
    sqlite3_bind_int64(st, 1, link);
    s_text(st, 2, by ? by : "unknown");
    s_text(st, 3, reason);
    sqlite3_bind_int64(st, 4, (int64_t)now);
    rc = s_run(id, Q_LINK_REMOVE);
    if (rc == IDENTITY_OK) {
        rc = s_customer_get(id, a, r->customer, NULL);
    }
    if (rc == IDENTITY_OK) {
        rc = s_split(id, r->customer, now, r);
    }
    return rc;
}

/* -- envelopes ----------------------------------------------------------- */

/* Positions r at the value of key in e's meta map; false when absent. */
static bool s_meta(const struct env *e, const char *key, struct mp_reader *r)
{
    size_t n;
    const void *p = env_raw(e, ENV_META, &n);
    if (p == NULL) {
        return false;
    }
    struct mp_val v;
    mp_reader_init(r, p, n);
    if (mp_read(r, &v) != 0 || v.type != MP_MAP) {
        return false;
    }
    size_t kl = strlen(key);
    for (uint32_t i = 0; i < v.n; i++) {
        struct mp_val k;
        if (mp_read(r, &k) != 0) {
            return false;
        }
        if (k.type == MP_STR && k.n == kl && memcmp(k.s, key, kl) == 0) {
            return true;
        }
        if (mp_skip(r) != 0) {
            return false;
        }
    }
    return false;
}

/* Copies a string value into out[n]: 1 done, -1 not a valid string. */
static int s_str_val(const struct mp_val *v, char *out, size_t n)
{
    if (v->type != MP_STR || v->n >= n || memchr(v->s, '\0', v->n) != NULL
        || !utf8_is_valid(v->s, v->n)) {
        return -1;
    }
    memcpy(out, v->s, v->n);
    out[v->n] = '\0';
    return 1;
}

/* meta.key as a string into out[n]: 1 found, 0 absent or nil, -1 not a
 * string (or too long). Unsigned integers are written in decimal. */
static int s_meta_str(const struct env *e, const char *key, char *out, size_t n)
{
    struct mp_reader r;
    struct mp_val v;
    if (!s_meta(e, key, &r) || mp_read(&r, &v) != 0 || v.type == MP_NIL) {
        return 0;
    }
    if (v.type == MP_UINT) {
        snprintf(out, n, "%llu", (unsigned long long)v.u);
        return 1;
    }
    return s_str_val(&v, out, n);
}

/* The customer's handle of a message: from (in), to (out); on api
 * envelopes meta.customer names the customer (a handle or a cus_ id). */
static int s_message_handle(struct identity *id, const struct env *e, char h[HANDLE_MAX + 1],
                            enum env_key *key, bool *is_id, struct identity_result *r)
{
    *is_id = false;
    *key = ENV_NKEYS;
    const char *dir = env_get(e, ENV_DIR);
    const char *channel = env_get(e, ENV_CHANNEL);
    char why[160];
    if (strcmp(channel, "api") == 0) {
        char c[HANDLE_MAX + 1];
        int got = s_meta_str(e, "customer", c, sizeof c);
        if (got < 0) {
            return s_bad(r, "meta.customer", "not a string of at most %d bytes", HANDLE_MAX);
        }
        if (got > 0) {
            if (strncmp(c, "cus_", 4) == 0) {
                *is_id = true;
                snprintf(h, HANDLE_MAX + 1, "%s", c);
                return IDENTITY_OK;
            }
            if (handle_normalise(c, id->opts.country, h, HANDLE_MAX + 1, why, sizeof why) != 0) {
                return s_bad(r, "meta.customer", "'%.80s': %s", c, why);
            }
            return IDENTITY_OK;
        }
    }
    *key = strcmp(dir, "out") == 0 ? ENV_TO : ENV_FROM;
    const char *raw = env_get(e, *key);
    if (raw == NULL) {
        return s_bad(r, env_key_name(*key), "missing");
    }
    if (handle_normalise(raw, id->opts.country, h, HANDLE_MAX + 1, why, sizeof why) != 0) {
        return s_bad(r, env_key_name(*key), "'%.80s': %s", raw, why);
    }
    return IDENTITY_OK;
}

/* A channel fact: a and b are one person. Cheap when already known. */
static int s_fact(struct identity *id, const char *a, const char *b, const struct identity_prov *p)
{
    char c[IDENTITY_ID_LEN + 1];
    uint32_t flags = 0;
    int rc = s_customer_get(id, a, c, &flags);
    if (rc == IDENTITY_OK && (flags & S_FACT)) {
        return IDENTITY_OK;
    }
    if (rc != IDENTITY_OK && rc != IDENTITY_NOT_FOUND) {
        return rc;
    }
    struct identity_result lr;
    memset(&lr, 0, sizeof lr);
    rc = s_link(id, a, b, p, S_AUTO, false, &lr);
    if (rc == IDENTITY_CONFLICT) {
        rc = IDENTITY_OK;       /* refused, logged and counted */
    }
    if (rc == IDENTITY_OK) {
        s_cache_flag(id, a, S_FACT);
    }
    return rc;
}

/* WhatsApp says: whatsapp:+N is the phone tel:+N; a business-scoped id
 * that comes with meta.wa_id is that phone's. */
static int s_whatsapp_facts(struct identity *id, const struct env *e, const char *h,
                            struct identity_result *r)
{
    struct identity_prov p = { "channel", "channel:whatsapp", NULL, true, e->ts,
                               env_get(e, ENV_ID) };
    const char *num;
    char tel[HANDLE_E164_MAX + 8], wa[HANDLE_E164_MAX + 16];
    if (handle_is_phone(h, "whatsapp", &num)) {
        snprintf(tel, sizeof tel, "tel:%s", num);
        return s_fact(id, h, tel, &p);
    }
    if (strncmp(h, "whatsapp:", 9) != 0) {
        return IDENTITY_OK;
    }
    char wa_id[64], plus[70], e164[HANDLE_E164_MAX], why[160];
    int got = s_meta_str(e, "wa_id", wa_id, sizeof wa_id);
    if (got == 0) {
        return IDENTITY_OK;     /* a business-scoped id alone: its own handle */
    }
    snprintf(plus, sizeof plus, "%s%s", wa_id[0] == '+' ? "" : "+", wa_id);
    if (got < 0 || handle_phone(plus, strlen(plus), 0, e164, why, sizeof why) != 0) {
        return s_bad(r, "meta.wa_id", "%s", got < 0 ? "not a phone number" : why);
    }
    snprintf(wa, sizeof wa, "whatsapp:%s", e164);
    snprintf(tel, sizeof tel, "tel:%s", e164);
    int rc = s_fact(id, h, wa, &p);
    return rc == IDENTITY_OK ? s_fact(id, wa, tel, &p) : rc;
}

static int s_message(struct identity *id, struct env *e, char h[HANDLE_MAX + 1],
                     enum env_key *key, struct identity_result *r)
{
    bool is_id;
    int rc = s_message_handle(id, e, h, key, &is_id, r);
    if (rc != IDENTITY_OK) {
        return rc;
    }
    if (is_id) {
        rc = s_customer_live(id, h, r->customer);
        if (rc == IDENTITY_NOT_FOUND) {
            return s_bad(r, "meta.customer", "no customer %.40s", h);
        }
    } else {
        if (strcmp(env_get(e, ENV_CHANNEL), "whatsapp") == 0
            && strcmp(env_get(e, ENV_DIR), "in") == 0) {
            rc = s_whatsapp_facts(id, e, h, r);
        }
        if (rc == IDENTITY_OK) {
            rc = s_customer_ensure(id, h, e->ts, r->customer);
        }
    }
    return rc == IDENTITY_OK ? s_conv_message(id, r->customer, e->ts, r->conversation) : rc;
}

/* Who an event says did it: meta.by, else from. */
static int s_event_by(const struct env *e, char *by, size_t n, char *reason, size_t rn,
                      struct identity_result *r)
{
    int got = s_meta_str(e, "by", by, n);
    if (got < 0) {
        return s_bad(r, "meta.by", "not a string of at most %zu bytes", n - 1);
    }
    if (got == 0) {
        snprintf(by, n, "%s", env_get(e, ENV_FROM) ? env_get(e, ENV_FROM) : "unknown");
    }
    got = s_meta_str(e, "reason", reason, rn);
    if (got < 0) {
        return s_bad(r, "meta.reason", "not a string of at most %zu bytes", rn - 1);
    }
    if (got == 0) {
        reason[0] = '\0';
    }
    return IDENTITY_OK;
}

/* meta.event = "link": meta.handles [h1, h2, ...] are one person. */
static int s_event_link(struct identity *id, struct env *e, struct identity_result *r)
{
    struct mp_reader mr;
    struct mp_val v;
    if (!s_meta(e, "handles", &mr) || mp_read(&mr, &v) != 0 || v.type != MP_ARRAY) {
        return s_bad(r, "meta.handles", "a link event needs an array of handles");
    }
    if (v.n < 2 || v.n > S_MAX_LINKED) {
        return s_bad(r, "meta.handles", "%u handles: a link names 2 to %d", v.n, S_MAX_LINKED);
    }
    char (*hs)[HANDLE_MAX + 1] = malloc(v.n * sizeof *hs);
    if (hs == NULL) {
        return IDENTITY_ERROR;
    }
    char raw[HANDLE_MAX + 1], why[160], field[40];
    int rc = IDENTITY_OK;
    for (uint32_t i = 0; i < v.n && rc == IDENTITY_OK; i++) {
        struct mp_val hv;
        snprintf(field, sizeof field, "meta.handles[%u]", i);
        if (mp_read(&mr, &hv) != 0 || s_str_val(&hv, raw, sizeof raw) < 0) {
            rc = s_bad(r, field, "not a string of at most %d bytes", HANDLE_MAX);
        } else if (handle_normalise(raw, id->opts.country, hs[i], sizeof hs[i], why, sizeof why) != 0) {
            rc = s_bad(r, field, "'%.80s': %s", raw, why);
        }
    }
    char by[ENV_MAX_SHORT + 1], reason[ENV_MAX_SHORT + 1];
    if (rc == IDENTITY_OK) {
        rc = s_event_by(e, by, sizeof by, reason, sizeof reason, r);
    }
    bool verified = false;
    if (rc == IDENTITY_OK && s_meta(e, "verified", &mr)) {
        struct mp_val b;
        if (mp_read(&mr, &b) != 0 || (b.type != MP_BOOL && b.type != MP_NIL)) {
            rc = s_bad(r, "meta.verified", "not true or false");
        }
        verified = b.type == MP_BOOL && b.b;
    }
    struct identity_prov p = { "event", by, reason[0] ? reason : NULL, verified, e->ts,
                               env_get(e, ENV_ID) };
    for (uint32_t i = 1; i < v.n && rc == IDENTITY_OK; i++) {
        struct identity_result lr;
        memset(&lr, 0, sizeof lr);
        rc = s_link(id, hs[0], hs[i], &p, S_AUTO, false, &lr);
        if (rc == IDENTITY_CONFLICT) {
            rc = IDENTITY_OK;   /* refused, logged and counted; the event goes on */
        }
    }
    if (rc == IDENTITY_OK) {
        rc = s_customer_ensure(id, hs[0], e->ts, r->customer);
    }
    if (rc == IDENTITY_OK) {
        rc = s_conv_current(id, r->customer, e->ts, r->conversation);
    }
    free(hs);
    return rc;
}

/* The customer an event names in meta.customer (a cus_ id or a handle),
 * without making one: r->customer stays "" when unknown. */
static int s_event_customer(struct identity *id, const struct env *e, struct identity_result *r,
                            bool *named)
{
    char c[HANDLE_MAX + 1], h[HANDLE_MAX + 1], why[160];
    int got = s_meta_str(e, "customer", c, sizeof c);
    *named = got != 0;
    if (got < 0) {
        return s_bad(r, "meta.customer", "not a string of at most %d bytes", HANDLE_MAX);
    }
    if (got == 0) {
        return IDENTITY_OK;
    }
    int rc;
    if (strncmp(c, "cus_", 4) == 0) {
        rc = s_customer_live(id, c, r->customer);
    } else if (handle_normalise(c, id->opts.country, h, sizeof h, why, sizeof why) != 0) {
        return s_bad(r, "meta.customer", "'%.80s': %s", c, why);
    } else {
        rc = s_customer_get(id, h, r->customer, NULL);
    }
    if (rc == IDENTITY_NOT_FOUND) {
        r->customer[0] = '\0';
        rc = IDENTITY_OK;
    }
    return rc;
}

/* meta.event = "close": ends the conversation named by meta.conversation,
 * or the open one of meta.conversation_of (a handle) or meta.customer. */
static int s_event_close(struct identity *id, struct env *e, struct identity_result *r)
{
    char by[ENV_MAX_SHORT + 1], reason[ENV_MAX_SHORT + 1];
    int rc = s_event_by(e, by, sizeof by, reason, sizeof reason, r);
    if (rc != IDENTITY_OK) {
        return rc;
    }
    char cnv[IDENTITY_ID_LEN + 1], h[HANDLE_MAX + 1], raw[HANDLE_MAX + 1], why[160];
    int got = s_meta_str(e, "conversation", cnv, sizeof cnv);
    if (got < 0) {
        return s_bad(r, "meta.conversation", "not a conversation id");
    }
    if (got > 0) {
        sqlite3_stmt *st = id->st[Q_CNV_GET];
        s_text(st, 1, cnv);
        rc = s_row(id, Q_CNV_GET);
        if (rc == IDENTITY_NOT_FOUND) {
            return IDENTITY_OK;     /* unknown (or forgotten): nothing to close */
        }
        if (rc != IDENTITY_OK) {
            return rc;
        }
        s_col(st, 0, r->customer, sizeof r->customer);
        sqlite3_reset(st);
        snprintf(r->conversation, sizeof r->conversation, "%s", cnv);
        rc = s_conv_drop(id, r->customer);
        return rc == IDENTITY_OK
                   ? s_conv_close(id, cnv, (int64_t)e->ts, 0, by, reason[0] ? reason : NULL) : rc;
    }
    got = s_meta_str(e, "conversation_of", raw, sizeof raw);
    if (got < 0) {
        return s_bad(r, "meta.conversation_of", "not a string of at most %d bytes", HANDLE_MAX);
    }
    bool named = got > 0;
    if (named) {
        if (handle_normalise(raw, id->opts.country, h, sizeof h, why, sizeof why) != 0) {
            return s_bad(r, "meta.conversation_of", "'%.80s': %s", raw, why);
        }
        rc = s_customer_get(id, h, r->customer, NULL);
        if (rc == IDENTITY_NOT_FOUND) {
            r->customer[0] = '\0';
            rc = IDENTITY_OK;
        }
    } else {
        rc = s_event_customer(id, e, r, &named);
    }
    if (rc != IDENTITY_OK) {
        return rc;
    }
    if (!named) {
        return s_bad(r, "meta", "a close event names conversation, conversation_of or customer");
    }
    if (r->customer[0] == '\0') {
        return IDENTITY_OK;
    }
    return s_conv_end(id, r->customer, e->ts, by, reason[0] ? reason : NULL, r->conversation);
}

/* Any other event: the customer it names, or of its from or to handle when
 * known; never makes a customer. */
static int s_event_other(struct identity *id, struct env *e, struct identity_result *r)
{
    bool named;
    int rc = s_event_customer(id, e, r, &named);
    static const enum env_key keys[] = { ENV_FROM, ENV_TO };
    for (size_t i = 0; rc == IDENTITY_OK && !named && i < 2 && r->customer[0] == '\0'; i++) {
        const char *raw = env_get(e, keys[i]);
        char h[HANDLE_MAX + 1], why[160];
        if (raw == NULL || handle_normalise(raw, id->opts.country, h, sizeof h, why, sizeof why) != 0) {
            continue;
        }
        rc = s_customer_get(id, h, r->customer, NULL);
        if (rc == IDENTITY_NOT_FOUND) {
            r->customer[0] = '\0';
            rc = IDENTITY_OK;
        }
    }
    if (rc == IDENTITY_OK && r->customer[0] != '\0') {
        rc = s_conv_current(id, r->customer, e->ts, r->conversation);
    }
    return rc;
}

static int s_event(struct identity *id, struct env *e, struct identity_result *r)
{
    char ev[64];
    int got = s_meta_str(e, "event", ev, sizeof ev);
    if (got < 0) {
        return s_bad(r, "meta.event", "not a short string");
    }
    if (got > 0 && strcmp(ev, "link") == 0) {
        return s_event_link(id, e, r);
    }
    if (got > 0 && strcmp(ev, "close") == 0) {
        return s_event_close(id, e, r);
    }
    return s_event_other(id, e, r);
}

/* Writes the result into the envelope; IDENTITY_BAD when it has no room. */
static int s_stamp(struct env *e, struct identity_result *r, enum env_key key, const char *h)
{
    int rc = 0;
    if (key != ENV_NKEYS && h[0] != '\0' && strcmp(env_get(e, key), h) != 0) {
        rc |= env_set(e, key, h, NULL);
    }
    if (r->customer[0] != '\0') {
        rc |= env_set(e, ENV_CUSTOMER, r->customer, NULL);
    }
    if (r->conversation[0] != '\0') {
        rc |= env_set(e, ENV_CONVERSATION, r->conversation, NULL);
    }
    return rc == 0 ? IDENTITY_OK : s_bad(r, "envelope", "no room for customer and conversation");
}

int identity_assign(struct identity *id, struct env *e, struct identity_result *r)
{
    assert(identity_in_transaction(id));
    r->customer[0] = r->conversation[0] = r->other[0] = '\0';
    r->field[0] = r->reason[0] = '\0';
    r->link = 0;
    r->replay = r->merged = false;
    r->parts = 0;
    const char *eid = env_get(e, ENV_ID);
    bool event = strcmp(env_get(e, ENV_DIR), "event") == 0;
    char h[HANDLE_MAX + 1] = "";
    enum env_key key = ENV_NKEYS;

    /* Seen before: the same answer, nothing written. */
    sqlite3_stmt *st = id->st[Q_PROC_GET];
    s_text(st, 1, eid);
    int rc = s_row(id, Q_PROC_GET);
    if (rc == IDENTITY_OK) {
        s_col(st, 0, r->customer, sizeof r->customer);
        s_col(st, 1, r->conversation, sizeof r->conversation);
        sqlite3_reset(st);
        r->replay = true;
        id->counts.replays++;
        if (!event) {
            struct identity_result tmp;
            bool is_id;
            if (s_message_handle(id, e, h, &key, &is_id, &tmp) != IDENTITY_OK) {
                key = ENV_NKEYS;
            }
        }
        return s_stamp(e, r, key, h);
    }
    if (rc != IDENTITY_NOT_FOUND) {
        return rc;
    }
    id->in_envelope = true;
    id->savepoint = false;
    rc = event ? s_event(id, e, r) : s_message(id, e, h, &key, r);
    if (rc == IDENTITY_OK) {
        rc = s_stamp(e, r, key, h);
    }
    if (rc == IDENTITY_OK) {
        st = id->st[Q_PROC_PUT];
        s_text(st, 1, eid);
        s_text(st, 2, r->customer);
        s_text(st, 3, r->conversation);
        sqlite3_bind_int64(st, 4, (int64_t)e->ts);
        rc = s_run(id, Q_PROC_PUT);
    }
    id->in_envelope = false;
    if (rc != IDENTITY_OK) {
        /* Undone: what the caches learnt from this envelope goes too
         * (before its first write they learnt only what was there). */
        if (id->savepoint) {
            s_run(id, Q_UNDO);
            s_cache_clear(id);
        }
        s_conv_forget(id, r->customer);
    } else {
        id->counts.assigned++;
    }
    if (id->savepoint) {
        id->savepoint = false;
        int rel = s_run(id, Q_RELEASE);
        rc = rc != IDENTITY_OK ? rc : rel;
    }
    return rc;
}

/* -- resolve, show, forget ----------------------------------------------- */

int identity_resolve(struct identity *id, const char *what, char out[IDENTITY_ID_LEN + 1],
                     struct identity_result *r)
{
    struct identity_result tmp;
    if (r == NULL) {
        r = &tmp;
    }
    memset(r, 0, sizeof *r);
    int rc;
    if (strncmp(what, "cus_", 4) == 0) {
        rc = s_customer_live(id, what, out);
    } else {
        char h[HANDLE_MAX + 1], why[160];
        if (handle_normalise(what, id->opts.country, h, sizeof h, why, sizeof why) != 0) {
            return s_bad(r, "handle", "'%.80s': %s", what, why);
        }
        rc = s_customer_get(id, h, out, NULL);
    }
    if (rc == IDENTITY_NOT_FOUND) {
        snprintf(r->reason, sizeof r->reason, "no customer for %.80s", what);
    }
    return rc;
}

/* Prepares an ad-hoc statement (show, forget: rare). */
static sqlite3_stmt *s_prepare(struct identity *id, const char *sql, const char *c)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(id->db, sql, -1, &st, NULL) != SQLITE_OK) {
        log_msg(LOG_ERROR, "sqlite: %.60s: %s", sql, sqlite3_errmsg(id->db));
        return NULL;
    }
    if (c != NULL) {
        sqlite3_bind_text(st, 1, c, -1, SQLITE_STATIC);
    }
    return st;
}

static const char *s_coltext(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? (const char *)t : NULL;
}

static void s_json_str(cJSON *o, const char *key, const char *s)
{
    if (s == NULL) {
        cJSON_AddNullToObject(o, key);
    } else {
        cJSON_AddStringToObject(o, key, s);
    }
}

static void s_json_ts(cJSON *o, const char *key, sqlite3_stmt *st, int i)
{
    if (sqlite3_column_type(st, i) == SQLITE_NULL) {
        cJSON_AddNullToObject(o, key);
    } else {
        cJSON_AddNumberToObject(o, key, (double)sqlite3_column_int64(st, i));
    }
}

static const char *s_text_ts(sqlite3_stmt *st, int i, char *buf, size_t n)
{
    if (sqlite3_column_type(st, i) == SQLITE_NULL) {
        return "-";
    }
    s_iso((uint64_t)sqlite3_column_int64(st, i), buf, n);
    return buf;
}

int identity_show(struct identity *id, const char *c, bool json, struct buf *out)
{
    int rc = IDENTITY_OK;
    struct s_strs verified = { 0 };
    cJSON *root = json ? cJSON_CreateObject() : NULL;
    sqlite3_stmt *st = s_prepare(id, "SELECT created FROM customers WHERE id = ?1", c);
    if (st == NULL || (json && root == NULL)) {
        rc = IDENTITY_ERROR;
        goto done;
    }
    int step = sqlite3_step(st);
    if (step != SQLITE_ROW) {
        rc = step == SQLITE_DONE ? IDENTITY_NOT_FOUND : IDENTITY_ERROR;
        goto done;
    }
    char t1[32], t2[32], t3[32];
    if (json) {
        cJSON_AddStringToObject(root, "customer", c);
        s_json_ts(root, "created", st, 0);
    } else {
        buf_printf(out, "customer %s  created %s\n", c, s_text_ts(st, 0, t1, sizeof t1));
    }
    sqlite3_finalize(st);
    if ((rc = s_verified(id, c, &verified)) != IDENTITY_OK) {
        st = NULL;
        goto done;
    }

    st = s_prepare(id, "SELECT id FROM customers WHERE merged_into = ?1 ORDER BY id", c);
    cJSON *arr = json ? cJSON_AddArrayToObject(root, "absorbed") : NULL;
    bool any = false;
    while (st != NULL && sqlite3_step(st) == SQLITE_ROW) {
        if (json) {
            cJSON_AddItemToArray(arr, cJSON_CreateString(s_coltext(st, 0)));
        } else {
            buf_printf(out, "%s%s", any ? ", " : "  absorbed: ", s_coltext(st, 0));
        }
        any = true;
    }
    if (!json && any) {
        buf_puts(out, "\n");
    }
    sqlite3_finalize(st);

    st = s_prepare(id, "SELECT handle, origin, first_seen FROM handles WHERE customer = ?1"
                   " ORDER BY first_seen, handle", c);
    arr = json ? cJSON_AddArrayToObject(root, "handles") : NULL;
    if (!json) {
        buf_puts(out, "handles:\n");
    }
    while (st != NULL && sqlite3_step(st) == SQLITE_ROW) {
        const char *h = s_coltext(st, 0);
        bool ver = false;
        for (size_t i = 0; i < verified.n; i++) {
            ver = ver || strcmp(verified.v[i], h) == 0;
        }
        if (json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "handle", h);
            cJSON_AddStringToObject(o, "origin", s_coltext(st, 1));
            s_json_ts(o, "first_seen", st, 2);
            cJSON_AddBoolToObject(o, "verified", ver);
            cJSON_AddItemToArray(arr, o);
        } else {
            buf_printf(out, "  %-36s first seen %s%s\n", h, s_text_ts(st, 2, t1, sizeof t1),
                       ver ? "  verified" : "");
        }
    }
    sqlite3_finalize(st);

    st = s_prepare(id, "SELECT id, a, b, state, kind, made_by, verified, reason, ts, envelope,"
                   " removed_by, removed_reason, removed_ts FROM links"
                   " WHERE a IN (SELECT handle FROM handles WHERE customer = ?1)"
                   " OR b IN (SELECT handle FROM handles WHERE customer = ?1) ORDER BY id", c);
    arr = json ? cJSON_AddArrayToObject(root, "links") : NULL;
    if (!json) {
        buf_puts(out, "links:\n");
    }
    while (st != NULL && sqlite3_step(st) == SQLITE_ROW) {
        if (json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "id", (double)sqlite3_column_int64(st, 0));
            static const char *const keys[] = { NULL, "a", "b", "state", "kind", "by" };
            for (int i = 1; i <= 5; i++) {
                s_json_str(o, keys[i], s_coltext(st, i));
            }
            cJSON_AddBoolToObject(o, "verified", sqlite3_column_int(st, 6) != 0);
            s_json_str(o, "reason", s_coltext(st, 7));
            s_json_ts(o, "ts", st, 8);
            s_json_str(o, "envelope", s_coltext(st, 9));
            s_json_str(o, "removed_by", s_coltext(st, 10));
            s_json_str(o, "removed_reason", s_coltext(st, 11));
            s_json_ts(o, "removed_ts", st, 12);
            cJSON_AddItemToArray(arr, o);
            continue;
        }
        buf_printf(out, "  #%lld %s -- %s  %s  %s by %s%s  %s", (long long)sqlite3_column_int64(st, 0),
                   s_coltext(st, 1), s_coltext(st, 2), s_coltext(st, 3), s_coltext(st, 4),
                   s_coltext(st, 5), sqlite3_column_int(st, 6) ? " verified" : "",
                   s_text_ts(st, 8, t1, sizeof t1));
        if (s_coltext(st, 7) != NULL) {
            buf_printf(out, "  \"%s\"", s_coltext(st, 7));
        }
        if (s_coltext(st, 9) != NULL) {
            buf_printf(out, "  envelope %s", s_coltext(st, 9));
        }
        if (s_coltext(st, 10) != NULL) {
            buf_printf(out, "  removed by %s %s", s_coltext(st, 10), s_text_ts(st, 12, t2, sizeof t2));
            if (s_coltext(st, 11) != NULL) {
                buf_printf(out, " \"%s\"", s_coltext(st, 11));
            }
        }
        buf_puts(out, "\n");
    }
    sqlite3_finalize(st);

    st = s_prepare(id, "SELECT id, opened, last, closed, closed_by, close_reason"
                   " FROM conversations WHERE customer = ?1 ORDER BY opened, id", c);
    arr = json ? cJSON_AddArrayToObject(root, "conversations") : NULL;
    if (!json) {
        buf_puts(out, "conversations:\n");
    }
    while (st != NULL && sqlite3_step(st) == SQLITE_ROW) {
        bool open = sqlite3_column_type(st, 3) == SQLITE_NULL;
        if (json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "id", s_coltext(st, 0));
            s_json_ts(o, "opened", st, 1);
            s_json_ts(o, "last", st, 2);
            s_json_ts(o, "closed", st, 3);
            s_json_str(o, "closed_by", s_coltext(st, 4));
            s_json_str(o, "close_reason", s_coltext(st, 5));
            cJSON_AddItemToArray(arr, o);
            continue;
        }
        buf_printf(out, "  %s  %-6s opened %s  last %s", s_coltext(st, 0),
                   open ? "open" : "closed", s_text_ts(st, 1, t1, sizeof t1),
                   s_text_ts(st, 2, t2, sizeof t2));
        if (!open) {
            buf_printf(out, "  closed %s by %s", s_text_ts(st, 3, t3, sizeof t3),
                       s_coltext(st, 4) ? s_coltext(st, 4) : "-");
            if (s_coltext(st, 5) != NULL) {
                buf_printf(out, " \"%s\"", s_coltext(st, 5));
            }
        }
        buf_puts(out, "\n");
    }
    if (json) {
        char *text = cJSON_PrintUnformatted(root);
        if (text == NULL || buf_puts(out, text) != 0 || buf_puts(out, "\n") != 0) {
            rc = IDENTITY_ERROR;
        }
        free(text);
    }
done:
    sqlite3_finalize(st);
    cJSON_Delete(root);
    s_strs_free(&verified);
    return rc;
}

/* Runs an ad-hoc statement with ?1 = c; *changes gets the rows changed. */
static int s_adhoc(struct identity *id, const char *sql, const char *c, int *changes)
{
    sqlite3_stmt *st = s_prepare(id, sql, c);
    if (st == NULL) {
        return IDENTITY_ERROR;
    }
    int rc = sqlite3_step(st);
    while (rc == SQLITE_ROW) {
        rc = sqlite3_step(st);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        return s_dberr(id, rc, sql);
    }
    if (changes != NULL) {
        *changes = sqlite3_changes(id->db);
    }
    return IDENTITY_OK;
}

int identity_forget(struct identity *id, const char *c, struct identity_forgot *f)
{
    assert(identity_in_transaction(id));
    memset(f, 0, sizeof *f);
    int rc = s_conv_save_all(id);
    /* The ids to erase: the customer, those merged into it, and their
     * conversations, in a temporary table (temp_store=MEMORY: never on disk). */
    static const char *const steps[] = {
        "CREATE TEMP TABLE IF NOT EXISTS forget_ids (id TEXT PRIMARY KEY)",
        "DELETE FROM temp.forget_ids",
        "INSERT INTO temp.forget_ids SELECT id FROM customers WHERE id = ?1 OR merged_into = ?1",
        "INSERT OR IGNORE INTO temp.forget_ids SELECT id FROM conversations"
        " WHERE customer IN (SELECT id FROM temp.forget_ids)",
    };
    for (size_t i = 0; i < sizeof steps / sizeof steps[0] && rc == IDENTITY_OK; i++) {
        rc = s_adhoc(id, steps[i], c, NULL);
    }
    const struct {
        const char *sql;        /* the delete */
        int *count;             /* where its changes go */
    } dels[] = {
        { "DELETE FROM links WHERE a IN (SELECT handle FROM handles WHERE customer = ?1)"
          " OR b IN (SELECT handle FROM handles WHERE customer = ?1)", &f->links },
        { "DELETE FROM handles WHERE customer = ?1", &f->handles },
        { "DELETE FROM conversations WHERE id IN (SELECT id FROM temp.forget_ids)", &f->conversations },
        { "DELETE FROM processed WHERE customer IN (SELECT id FROM temp.forget_ids)"
          " OR conversation IN (SELECT id FROM temp.forget_ids)", &f->envelopes },
        { "DELETE FROM customers WHERE id IN (SELECT id FROM temp.forget_ids)", &f->customers },
        /* Handles and conversations split off from them keep no trace of
         * their ids: their origin becomes their own customer. */
        { "UPDATE handles SET origin = customer WHERE origin IN (SELECT id FROM temp.forget_ids)", NULL },
        { "UPDATE conversations SET origin = customer"
          " WHERE origin IN (SELECT id FROM temp.forget_ids)", NULL },
        { "DELETE FROM temp.forget_ids", NULL },
    };
    for (size_t i = 0; i < sizeof dels / sizeof dels[0] && rc == IDENTITY_OK; i++) {
        rc = s_adhoc(id, dels[i].sql, c, dels[i].count);
    }
    s_cache_clear(id);
    return rc;
}

int identity_checkpoint(struct identity *id)
{
    int nlog = 0, nckpt = 0;
    int rc = sqlite3_wal_checkpoint_v2(id->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, &nlog, &nckpt);
    if (rc == SQLITE_OK) {
        return IDENTITY_OK;
    }
    return s_dberr(id, rc, "wal_checkpoint(TRUNCATE)");
}

/* -- the stage ----------------------------------------------------------- */

struct identity_conf {
    const char *db;         /* database file */
    int64_t country;        /* calling code of numbers written without one */
    int64_t idle_ms;        /* a conversation idle this long is over */
    int64_t batch;          /* envelopes per commit */
    int64_t batch_ms;       /* longest an envelope waits for its commit */
    int64_t cache;          /* hot handles kept in memory */
    int64_t busy_ms;        /* wait for another writer (the CLI) this long */
};

struct identity_run {
    struct identity_conf *conf;     /* options */
    struct identity *id;            /* the database */
    struct env **held;              /* assigned, waiting for their commit (conf->batch) */
    size_t nheld;                   /* how many are waiting */
    bool redo;                      /* the transaction was lost: assign the held again */
    struct buf raw;                 /* an envelope encoded for --dead */
    uint64_t rejected;              /* envelopes refused for an unreadable handle */
    uint64_t commits;               /* batches committed */
    struct log_limit limit;         /* rate limit of database trouble */
};

#define C(f) offsetof(struct identity_conf, f)
static const struct opt s_opts[] = {
    { "db", OPT_STR, NULL, C(db), "sqlite database of customers, handles and links (required)" },
    { "default-country", OPT_INT, "55", C(country),
      "calling code of phone numbers written without one" },
    { "idle", OPT_MS, "24h", C(idle_ms),
      "a conversation idle this long is over; the next message starts a new one" },
    { "batch", OPT_INT, "256", C(batch), "envelopes per commit (group commit)" },
    { "batch-ms", OPT_MS, "20ms", C(batch_ms), "longest an envelope waits for its commit" },
    { "cache", OPT_INT, "100k", C(cache), "hot handles kept in memory (0: none)" },
    { "busy", OPT_MS, "2s", C(busy_ms), "how long to wait while another process writes the database" },
    { NULL, 0, NULL, 0, NULL }
};
#undef C

static int s_conf_check(const struct identity_conf *c)
{
    if (c->db == NULL || c->db[0] == '\0') {
        log_msg(LOG_ERROR, "--db is required (try --help)");
        return EXIT_USAGE;
    }
    if (c->country < 1 || c->country > 999) {
        log_msg(LOG_ERROR, "--default-country: %lld is not a calling code (1..999)", (long long)c->country);
        return EXIT_USAGE;
    }
    if (c->batch < 1 || c->batch > 100000 || c->batch_ms < 0 || c->batch_ms > 60000) {
        log_msg(LOG_ERROR, "--batch must be 1..100000 and --batch-ms at most 1m");
        return EXIT_USAGE;
    }
    if (c->idle_ms < 1 || c->cache < 0 || c->cache > 100000000 || c->busy_ms < 0) {
        log_msg(LOG_ERROR, "--idle must be positive, --cache 0..100M, --busy not negative");
        return EXIT_USAGE;
    }
    return 0;
}

static int s_check(struct stage_ctx *ctx, void *conf)
{
    (void)ctx;
    return s_conf_check(conf);
}

static void s_fini(void **state)
{
    struct identity_run *run = *state;
    if (run->nheld > 0) {
        log_msg(LOG_WARN, "%zu envelopes not passed on: their batch did not commit"
                " (the sender's spool sends them again)", run->nheld);
    }
    if (run->id != NULL && run->nheld == 0 && !identity_in_transaction(run->id)) {
        /* The conversations' latest activity, exact for the next start. */
        int rc = identity_begin(run->id);
        rc = rc == IDENTITY_OK ? identity_sync(run->id) : rc;
        rc = rc == IDENTITY_OK ? identity_commit(run->id) : rc;
        if (rc != IDENTITY_OK) {
            log_msg(LOG_WARN, "could not write the conversations' latest activity at exit");
        }
    }
    if (run->id != NULL) {
        const struct identity_counts *k = identity_counts(run->id);
        log_msg(LOG_INFO, "done: assigned=%llu replays=%llu rejected=%llu customers=%llu"
                " conversations=%llu links=%llu merges=%llu conflicts=%llu commits=%llu"
                " cache_hits=%llu cache_misses=%llu",
                (unsigned long long)k->assigned, (unsigned long long)k->replays,
                (unsigned long long)run->rejected, (unsigned long long)k->customers,
                (unsigned long long)k->conversations, (unsigned long long)k->links,
                (unsigned long long)k->merges, (unsigned long long)k->conflicts,
                (unsigned long long)run->commits, (unsigned long long)k->cache_hits,
                (unsigned long long)k->cache_misses);
    }
    for (int64_t i = 0; run->held != NULL && i < run->conf->batch; i++) {
        env_destroy(&run->held[i]);
    }
    free(run->held);
    identity_destroy(&run->id);
    buf_free(&run->raw);
    free(run);
    *state = NULL;
}

static int s_init(struct stage_ctx *ctx, void *conf, void **state)
{
    (void)ctx;
    struct identity_conf *c = conf;
    int status = s_conf_check(c);
    if (status != 0) {
        return status;
    }
    struct identity_run *run = calloc(1, sizeof *run);
    if (run == NULL) {
        return EXIT_SOFTWARE;
    }
    run->conf = c;
    *state = run;
    run->held = calloc((size_t)c->batch, sizeof *run->held);
    if (run->held == NULL) {
        goto oom;
    }
    for (int64_t i = 0; i < c->batch; i++) {
        if ((run->held[i] = env_new()) == NULL) {
            goto oom;
        }
    }
    struct identity_opts o = { (int)c->country, c->idle_ms, c->cache, c->busy_ms, true };
    char err[512];
    run->id = identity_open(c->db, &o, err, sizeof err);
    if (run->id == NULL) {
        log_msg(LOG_ERROR, "--db %s", err);
        s_fini(state);
        return EXIT_UNAVAILABLE;
    }
    return 0;
oom:
    log_msg(LOG_ERROR, "out of memory");
    s_fini(state);
    return EXIT_SOFTWARE;
}

static void s_reject(struct identity_run *run, struct stage_ctx *ctx, const struct env *e,
                     const struct identity_result *r)
{
    char label[64], reason[400];
    snprintf(label, sizeof label, "id=%.40s", env_get(e, ENV_ID));
    snprintf(reason, sizeof reason, "field=%s reason=\"%s\"", r->field, r->reason);
    buf_reset(&run->raw);
    if (env_encode(e, &run->raw) != 0) {
        buf_reset(&run->raw);
    }
    run->rejected++;
    stage_reject(ctx, run->raw.data, run->raw.len, label, reason);
}

/* Assigns the held envelopes again in a new transaction (the last one was
 * rolled back under them). Returns 0, or -1 to try later. */
static int s_redo(struct identity_run *run, struct stage_ctx *ctx)
{
    int rc = identity_begin(run->id);
    if (rc != IDENTITY_OK) {
        return -1;
    }
    size_t kept = 0;
    for (size_t i = 0; i < run->nheld; i++) {
        struct identity_result r;
        rc = identity_assign(run->id, run->held[i], &r);
        if (rc == IDENTITY_BUSY || rc == IDENTITY_ERROR) {
            identity_rollback(run->id);
            return -1;
        }
        if (rc == IDENTITY_BAD) {
            s_reject(run, ctx, run->held[i], &r);
            continue;
        }
        struct env *tmp = run->held[kept];
        run->held[kept++] = run->held[i];
        run->held[i] = tmp;
    }
    run->nheld = kept;
    run->redo = false;
    return 0;
}

/* Commits the open batch, then passes its envelopes on, in order. Returns
 * 0, or -1 when the commit must be tried again later. */
static int s_flush(struct identity_run *run, struct stage_ctx *ctx)
{
    if (run->redo && s_redo(run, ctx) != 0) {
        stage_wake_in(ctx, 100);
        return -1;
    }
    if (identity_in_transaction(run->id)) {
        int rc = identity_commit(run->id);
        if (rc != IDENTITY_OK) {
            if (!identity_in_transaction(run->id)) {
                run->redo = run->nheld > 0;
            }
            log_limited(&run->limit, LOG_WARN, "commit of %zu envelopes failed (%s): trying again",
                        run->nheld, rc == IDENTITY_BUSY ? "database busy" : "database error");
            stage_wake_in(ctx, 100);
            return -1;
        }
        run->commits++;
    }
    for (size_t i = 0; i < run->nheld; i++) {
        stage_emit(ctx, run->held[i]);
    }
    run->nheld = 0;
    return 0;
}

static enum verdict s_handle(void *state, struct stage_ctx *ctx, struct env *e)
{
    struct identity_run *run = state;
    if ((run->redo || run->nheld >= (size_t)run->conf->batch) && s_flush(run, ctx) != 0) {
        return STAGE_RETRY;
    }
    if (!identity_in_transaction(run->id)) {
        int rc = identity_begin(run->id);
        if (rc != IDENTITY_OK) {
            log_limited(&run->limit, LOG_WARN, "cannot begin a batch (%s): trying again",
                        rc == IDENTITY_BUSY ? "database busy" : "database error");
            return STAGE_RETRY;
        }
    }
    struct identity_result r;
    int rc = identity_assign(run->id, e, &r);
    if (rc == IDENTITY_BAD) {
        s_reject(run, ctx, e, &r);
        return STAGE_DROP;
    }
    if (rc != IDENTITY_OK) {
        return STAGE_RETRY;
    }
    /* Not passed on before its commit: keep a copy until then. A retry
     * after a failed copy finds the id processed and gets the same answer. */
    if (env_copy(run->held[run->nheld], e) != 0) {
        log_limited(&run->limit, LOG_ERROR, "out of memory holding id=%s", env_get(e, ENV_ID));
        return STAGE_RETRY;
    }
    if (++run->nheld == 1) {
        stage_wake_in(ctx, run->conf->batch_ms);
    }
    if (run->nheld >= (size_t)run->conf->batch) {
        s_flush(run, ctx);
    }
    return STAGE_HELD;
}

static void s_tick(void *state, struct stage_ctx *ctx)
{
    struct identity_run *run = state;
    if (run->nheld > 0 || run->redo || identity_in_transaction(run->id)) {
        s_flush(run, ctx);
    }
}

const struct stage identity_stage = {
    .name = "identity",
    .summary = "Gives every envelope its customer (one across channels) and conversation;"
               " subcommands link, unlink, show, forget edit the identity graph.",
    .options = s_opts,
    .conf_size = sizeof(struct identity_conf),
    .init = s_init,
    .check = s_check,
    .handle = s_handle,
    .tick = s_tick,
    .fini = s_fini,
};

/* -- the CLI ------------------------------------------------------------- */

struct identity_cli_conf {
    const char *db;         /* database file */
    int64_t country;        /* calling code of numbers written without one */
    const char *by;         /* who links or unlinks */
    const char *reason;     /* why */
    bool verified;          /* link: the person proved both handles are theirs */
    bool force;             /* link: merge despite a conflict of verified handles */
    bool json;              /* show: JSON */
    int64_t busy_ms;        /* wait for the service's batch this long */
    bool help;              /* --help */
};

#define C(f) offsetof(struct identity_cli_conf, f)
static const struct opt s_cli_opts[] = {
    { "db", OPT_STR, NULL, C(db), "the identity database (the service's --db)" },
    { "default-country", OPT_INT, "55", C(country), "calling code of phone numbers written without one" },
    { "by", OPT_STR, NULL, C(by), "link, unlink: who does it (agent:NAME)" },
    { "reason", OPT_STR, NULL, C(reason), "link, unlink: why" },
    { "verified", OPT_BOOL, "no", C(verified), "link: the person proved both handles are theirs" },
    { "force", OPT_BOOL, "no", C(force),
      "link: merge even when both customers hold a different verified handle of one scheme" },
    { "json", OPT_BOOL, "no", C(json), "show: one JSON object" },
    { "busy", OPT_MS, "5s", C(busy_ms), "how long to wait while the service writes" },
    { "help", OPT_BOOL, "no", C(help), "show this help and exit" },
    { NULL, 0, NULL, 0, NULL }
};
#undef C

static const char s_cli_usage[] =
    "usage: omni-identity link HANDLE HANDLE --by NAME [--reason TEXT] [--verified] [--force] --db PATH\n"
    "       omni-identity unlink LINK_ID | HANDLE HANDLE --by NAME [--reason TEXT] --db PATH\n"
    "       omni-identity show HANDLE | CUSTOMER [--json] --db PATH\n"
    "       omni-identity forget CUSTOMER | HANDLE --db PATH\n"
    "       omni-identity [OPTIONS]   (the filter; see omni-identity --help)\n\noptions:\n";

bool identity_is_command(const char *word)
{
    return strcmp(word, "link") == 0 || strcmp(word, "unlink") == 0 || strcmp(word, "show") == 0
           || strcmp(word, "forget") == 0;
}

static int s_exit(int status, const struct identity_result *r)
{
    switch (status) {
    case IDENTITY_OK:
        return 0;
    case IDENTITY_BAD:
        log_msg(LOG_ERROR, "%s: %s", r->field, r->reason);
        return EXIT_DATAERR;
    case IDENTITY_CONFLICT:
        log_msg(LOG_ERROR, "refused: %s; --force merges them", r->reason);
        return EXIT_DATAERR;
    case IDENTITY_NOT_FOUND:
        log_msg(LOG_ERROR, "%s", r->reason[0] ? r->reason : "not found");
        return EXIT_DATAERR;
    case IDENTITY_BUSY:
        log_msg(LOG_ERROR, "the database is busy: try again");
        return EXIT_TEMPFAIL;
    default:
        return EXIT_IOERR;
    }
}

static int s_cli_link(struct identity *id, const struct identity_cli_conf *c, char **pos, int npos)
{
    struct identity_result r;
    memset(&r, 0, sizeof r);
    if (npos != 2 || c->by == NULL || c->by[0] == '\0') {
        log_msg(LOG_ERROR, "link needs two handles and --by (try --help)");
        return EXIT_USAGE;
    }
    struct identity_prov p = { "cli", c->by, c->reason, c->verified, stage_now_ms(), NULL };
    int rc = identity_begin(id);
    if (rc == IDENTITY_OK) {
        rc = identity_link(id, pos[0], pos[1], &p, c->force, &r);
        /* A refusal is recorded too (state refused). */
        int crc = (rc == IDENTITY_OK || rc == IDENTITY_CONFLICT) ? identity_commit(id) : IDENTITY_OK;
        if (crc != IDENTITY_OK) {
            rc = crc;
        }
    }
    if (rc == IDENTITY_OK) {
        printf("link #%lld: customer %s", (long long)r.link, r.customer);
        if (r.merged) {
            printf(" (merged %s into it)", r.other);
        }
        printf("\n");
    }
    return s_exit(rc, &r);
}

static int s_cli_unlink(struct identity *id, const struct identity_cli_conf *c, char **pos, int npos)
{
    struct identity_result r;
    memset(&r, 0, sizeof r);
    int64_t link = 0;
    if (npos == 1) {
        const char *s = pos[0][0] == '#' ? pos[0] + 1 : pos[0];
        char *end;
        link = strtoll(s, &end, 10);
        if (*s == '\0' || *end != '\0' || link <= 0) {
            log_msg(LOG_ERROR, "unlink: '%s' is not a link id (see show)", pos[0]);
            return EXIT_USAGE;
        }
    }
    if ((npos != 1 && npos != 2) || c->by == NULL || c->by[0] == '\0') {
        log_msg(LOG_ERROR, "unlink needs a link id or two handles, and --by (try --help)");
        return EXIT_USAGE;
    }
    int rc = identity_begin(id);
    if (rc == IDENTITY_OK) {
        rc = identity_unlink(id, link, npos == 2 ? pos[0] : NULL, npos == 2 ? pos[1] : NULL, c->by,
                             c->reason, &r);
        rc = rc == IDENTITY_OK ? identity_commit(id) : rc;
    }
    if (rc == IDENTITY_OK) {
        printf("unlinked #%lld: %s is now %d customer%s\n", (long long)r.link, r.customer,
               r.parts, r.parts == 1 ? "" : "s");
    }
    return s_exit(rc, &r);
}

static int s_cli_show(struct identity *id, const struct identity_cli_conf *c, char **pos, int npos)
{
    struct identity_result r;
    memset(&r, 0, sizeof r);
    if (npos != 1) {
        log_msg(LOG_ERROR, "show needs one handle or customer id (try --help)");
        return EXIT_USAGE;
    }
    char cus[IDENTITY_ID_LEN + 1];
    struct buf out = { 0 };
    int rc = identity_resolve(id, pos[0], cus, &r);
    if (rc == IDENTITY_OK) {
        rc = identity_show(id, cus, c->json, &out);
    }
    if (rc == IDENTITY_OK && out.len > 0) {
        fwrite(out.data, 1, out.len, stdout);
    }
    buf_free(&out);
    return s_exit(rc, &r);
}

static int s_cli_forget(struct identity *id, const struct identity_cli_conf *c, char **pos, int npos)
{
    (void)c;
    struct identity_result r;
    memset(&r, 0, sizeof r);
    if (npos != 1) {
        log_msg(LOG_ERROR, "forget needs one customer id or handle (try --help)");
        return EXIT_USAGE;
    }
    char cus[IDENTITY_ID_LEN + 1];
    struct identity_forgot f;
    int rc = identity_begin(id);
    if (rc == IDENTITY_OK) {
        rc = identity_resolve(id, pos[0], cus, &r);
        rc = rc == IDENTITY_OK ? identity_forget(id, cus, &f) : rc;
        rc = rc == IDENTITY_OK ? identity_commit(id) : rc;
        if (rc != IDENTITY_OK && identity_in_transaction(id)) {
            identity_rollback(id);
        }
    }
    if (rc != IDENTITY_OK) {
        return s_exit(rc, &r);
    }
    rc = identity_checkpoint(id);
    printf("forgot %s: %d customer ids, %d handles, %d links, %d conversations, %d envelope ids\n",
           cus, f.customers, f.handles, f.links, f.conversations, f.envelopes);
    if (rc != IDENTITY_OK) {
        log_msg(LOG_ERROR, "erased, but the write-ahead log still holds old pages (a reader is"
                " busy): run `omni-identity forget` on any id again later, or checkpoint the database");
        return EXIT_TEMPFAIL;
    }
    return 0;
}

int identity_cli(int argc, char **argv)
{
    log_init("omni-identity", NULL);
    log_set_level(LOG_WARN);        /* what was done is printed on stdout */
    struct identity_cli_conf c;
    memset(&c, 0, sizeof c);
    struct opt_set set = { s_cli_opts, &c };
    struct opt_result res;
    int status;
    struct identity *id = NULL;
    if (opt_parse(&set, 1, argc, argv, NULL, &res) != 0) {
        log_msg(LOG_ERROR, "%s: %s (try --help)", argv[0], res.err);
        status = res.status;
        goto done;
    }
    if (c.help) {
        fputs(s_cli_usage, stdout);
        opt_help(&set, 1, stdout);
        status = 0;
        goto done;
    }
    if (c.db == NULL || c.db[0] == '\0') {
        log_msg(LOG_ERROR, "%s: --db is required (try --help)", argv[0]);
        status = EXIT_USAGE;
        goto done;
    }
    if (c.country < 1 || c.country > 999) {
        log_msg(LOG_ERROR, "--default-country: %lld is not a calling code (1..999)", (long long)c.country);
        status = EXIT_USAGE;
        goto done;
    }
    bool link = strcmp(argv[0], "link") == 0;
    struct identity_opts o = { (int)c.country, 24 * 3600 * 1000LL, 0, c.busy_ms, link };
    char err[512];
    id = identity_open(c.db, &o, err, sizeof err);
    if (id == NULL) {
        log_msg(LOG_ERROR, "%s", err);
        status = EXIT_UNAVAILABLE;
        goto done;
    }
    if (link) {
        status = s_cli_link(id, &c, res.pos, res.npos);
    } else if (strcmp(argv[0], "unlink") == 0) {
        status = s_cli_unlink(id, &c, res.pos, res.npos);
    } else if (strcmp(argv[0], "show") == 0) {
        status = s_cli_show(id, &c, res.pos, res.npos);
    } else {
        status = s_cli_forget(id, &c, res.pos, res.npos);
    }
done:
    identity_destroy(&id);
    free(res.pos);
    fflush(stdout);
    return status;
}
