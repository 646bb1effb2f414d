/* routestate — omni-route's database; see routestate.h. */
#include "routestate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "db.h"
#include "log.h"

#define S_SCHEMA 1                  /* PRAGMA user_version of this schema */
#define S_APP_ID 0x6f6d7274         /* PRAGMA application_id: "omrt", an omni-route state */

static const char s_schema[] =
    "CREATE TABLE IF NOT EXISTS decisions ("
    "  id TEXT PRIMARY KEY,"            /* envelope id */
    "  at INTEGER NOT NULL,"            /* ms since epoch when decided */
    "  route BLOB"                      /* the route map stamped (msgpack); NULL: an event applied */
    ") WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS decisions_at ON decisions (at);"
    "CREATE TABLE IF NOT EXISTS conversations ("
    "  key TEXT PRIMARY KEY,"           /* conversation id, or the customer's handle */
    "  by_handle INTEGER NOT NULL,"     /* key is a handle */
    "  state TEXT NOT NULL,"            /* new, bot, queued, assigned */
    "  queue TEXT,"                     /* queued or assigned: the queue */
    "  agent TEXT,"                     /* assigned: the agent's name */
    "  priority INTEGER NOT NULL,"      /* higher goes first */
    "  rule TEXT,"                      /* the rule that queued it */
    "  reason TEXT,"                    /* its reason */
    "  channel TEXT,"                   /* the channel it last wrote on */
    "  customer TEXT,"                  /* the customer */
    "  first_id TEXT,"                  /* id of the message that queued it */
    "  seq INTEGER NOT NULL,"           /* when it joined its queue (order) */
    "  last_ms INTEGER NOT NULL,"       /* ts of its last message */
    "  assigns INTEGER NOT NULL"        /* how often it was given an agent */
    ") WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS agents ("
    "  name TEXT PRIMARY KEY,"          /* as in the agents file */
    "  presence TEXT NOT NULL"          /* online or offline (hours: no row) */
    ") WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS turns ("
    "  queue TEXT PRIMARY KEY,"         /* as in the agents file */
    "  agent TEXT NOT NULL"             /* its last conversation went to */
    ") WITHOUT ROWID;";

enum q {
    Q_BEGIN,
    Q_COMMIT,
    Q_ROLLBACK,
    Q_DECISION_GET,
    Q_DECISION_PUT,
    Q_PRUNE,
    Q_CONV_PUT,
    Q_CONV_DEL,
    Q_CONV_ALL,
    Q_AGENTS_CLEAR,
    Q_AGENT_PUT,
    Q_AGENTS_ALL,
    Q_TURNS_CLEAR,
    Q_TURN_PUT,
    Q_TURNS_ALL,
    Q_N
};

static const char *const s_sql[Q_N] = {
    [Q_BEGIN] = "BEGIN IMMEDIATE",
    [Q_COMMIT] = "COMMIT",
    [Q_ROLLBACK] = "ROLLBACK",
    [Q_DECISION_GET] = "SELECT route FROM decisions WHERE id = ?1",
    [Q_DECISION_PUT] = "INSERT OR IGNORE INTO decisions (id, at, route) VALUES (?1, ?2, ?3)",
    [Q_PRUNE] = "DELETE FROM decisions WHERE id IN"
                " (SELECT id FROM decisions WHERE at < ?1 ORDER BY at LIMIT ?2)",
    [Q_CONV_PUT] =
        "INSERT INTO conversations (key, by_handle, state, queue, agent, priority, rule, reason,"
        " channel, customer, first_id, seq, last_ms, assigns)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
        " ON CONFLICT (key) DO UPDATE SET by_handle = ?2, state = ?3, queue = ?4, agent = ?5, priority = ?6,"
        " rule = ?7, reason = ?8, channel = ?9, customer = ?10, first_id = ?11, seq = ?12, last_ms = ?13,"
        " assigns = ?14",
    [Q_CONV_DEL] = "DELETE FROM conversations WHERE key = ?1",
    [Q_CONV_ALL] =
        "SELECT key, by_handle, state, queue, agent, priority, rule, reason, channel, customer, first_id,"
        " seq, last_ms, assigns FROM conversations ORDER BY seq, key",
    [Q_AGENTS_CLEAR] = "DELETE FROM agents",
    [Q_AGENT_PUT] = "INSERT OR REPLACE INTO agents (name, presence) VALUES (?1, ?2)",
    [Q_AGENTS_ALL] = "SELECT name, presence FROM agents",
    [Q_TURNS_CLEAR] = "DELETE FROM turns",
    [Q_TURN_PUT] = "INSERT OR REPLACE INTO turns (queue, agent) VALUES (?1, ?2)",
    [Q_TURNS_ALL] = "SELECT queue, agent FROM turns",
};

struct routestate {
    sqlite3 *db;                    /* the connection */
    sqlite3_stmt *st[Q_N];          /* prepared statements */
    char *path;                     /* the file, for messages */
    struct log_limit limit;         /* rate limit of database errors */
};

/* -- errors and statements ------------------------------------------------ */

/* Maps a sqlite result code; logs what is not a lock. */
static int s_err(struct routestate *s, int rc, enum q q)
{
    int base = rc & 0xff;
    if (base == SQLITE_BUSY || base == SQLITE_LOCKED) {
        return ROUTESTATE_BUSY;
    }
    log_limited(&s->limit, LOG_ERROR, "%s: \"%.40s\": %s", s->path, s_sql[q], sqlite3_errmsg(s->db));
    return base == SQLITE_CORRUPT || base == SQLITE_NOTADB ? ROUTESTATE_BAD : ROUTESTATE_ERROR;
}

/* Steps a statement whose rows are not needed, and resets it. */
static int s_run(struct routestate *s, enum q q)
{
    sqlite3_stmt *st = s->st[q];
    int rc = sqlite3_step(st);
    while (rc == SQLITE_ROW) {
        rc = sqlite3_step(st);
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? ROUTESTATE_OK : s_err(s, rc, q);
}

/* Binds s, or NULL when it is NULL or empty. */
static void s_text(sqlite3_stmt *st, int i, const char *s)
{
    if (s == NULL || s[0] == '\0') {
        sqlite3_bind_null(st, i);
    } else {
        sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
    }
}

/* Column i as a string, or NULL. */
static const char *s_col(sqlite3_stmt *st, int i)
{
    return (const char *)sqlite3_column_text(st, i);
}

/* -- open and close ------------------------------------------------------- */

static int s_journal_cb(void *arg, int n, char **vals, char **names)
{
    (void)names;
    if (n > 0 && vals[0] != NULL) {
        snprintf(arg, 16, "%s", vals[0]);
    }
    return 0;
}

/* The status an open-time failure means: the file is not ours, or it could
 * not be used. */
static int s_open_status(int rc)
{
    int base = rc & 0xff;
    return base == SQLITE_NOTADB || base == SQLITE_CORRUPT || base == SQLITE_FORMAT ? ROUTESTATE_BAD
                                                                                     : ROUTESTATE_ERROR;
}

/* Creates the schema in a new file, or checks that an old one is ours. */
static int s_schema_ready(struct routestate *s, char *err, size_t n)
{
    int64_t app = db_query_int(s->db, "PRAGMA application_id");
    int64_t version = db_query_int(s->db, "PRAGMA user_version");
    int64_t tables = db_query_int(s->db, "SELECT count(*) FROM sqlite_master");
    if (app < 0 || version < 0 || tables < 0) {
        int rc = sqlite3_errcode(s->db);
        snprintf(err, n, "%s: %s", s->path, sqlite3_errmsg(s->db));
        return s_open_status(rc) == ROUTESTATE_BAD ? ROUTESTATE_BAD : ROUTESTATE_ERROR;
    }
    if (app != S_APP_ID && (app != 0 || tables > 0)) {
        snprintf(err, n, "%s: not an omni-route state (a database of another tool?)", s->path);
        return ROUTESTATE_BAD;
    }
    if (version > S_SCHEMA) {
        snprintf(err, n, "%s: schema version %lld is newer than this build's %d", s->path,
                 (long long)version, S_SCHEMA);
        return ROUTESTATE_BAD;
    }
    if (version == S_SCHEMA) {
        return ROUTESTATE_OK;
    }
    char sql[sizeof s_schema + 128];
    snprintf(sql, sizeof sql, "BEGIN IMMEDIATE; %s PRAGMA application_id=%d; PRAGMA user_version=%d; COMMIT;",
             s_schema, S_APP_ID, S_SCHEMA);
    char why[256];
    int rc = db_exec(s->db, sql, why, sizeof why);
    if (rc != SQLITE_OK) {
        snprintf(err, n, "%s: creating the schema: %s", s->path, why);
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return s_open_status(rc);
    }
    return ROUTESTATE_OK;
}

int routestate_open(const char *path, int64_t busy_ms, struct routestate **out, char *err, size_t n)
{
    *out = NULL;
    struct routestate *s = calloc(1, sizeof *s);
    if (s == NULL || (s->path = strdup(path)) == NULL) {
        free(s);
        snprintf(err, n, "%s: out of memory", path);
        return ROUTESTATE_ERROR;
    }
    int status = ROUTESTATE_ERROR;
    int rc = sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, n, "%s: %s", path, s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        status = s_open_status(rc);
        goto fail;
    }
    sqlite3_busy_timeout(s->db, (int)(busy_ms > 0 ? busy_ms : 0));
    char mode[16] = "";
    rc = sqlite3_exec(s->db, "PRAGMA journal_mode=WAL", s_journal_cb, mode, NULL);
    if (rc != SQLITE_OK || strcmp(mode, "wal") != 0) {
        if (rc != SQLITE_OK) {
            snprintf(err, n, "%s: %s", path, sqlite3_errmsg(s->db));
        } else {
            snprintf(err, n, "%s: cannot use WAL (journal mode %s)", path, mode);
        }
        status = rc != SQLITE_OK ? s_open_status(rc) : ROUTESTATE_ERROR;
        goto fail;
    }
    /* NORMAL in WAL: a commit is in the log (the OS's page cache) when
     * COMMIT returns, and fsync'd at checkpoints. That survives kill -9 of
     * this process, the failure that matters here; only a power cut or a
     * kernel crash can lose the last commits, never corrupt the file, and
     * a lost commit's envelopes were not passed on either (they were held
     * until it). FULL would fsync every batch for that case alone. */
    char why[256];
    rc = db_exec(s->db, "PRAGMA synchronous=NORMAL; PRAGMA temp_store=MEMORY", why, sizeof why);
    if (rc != SQLITE_OK) {
        snprintf(err, n, "%s: %s", path, why);
        status = s_open_status(rc);
        goto fail;
    }
    status = s_schema_ready(s, err, n);
    if (status != ROUTESTATE_OK) {
        goto fail;
    }
    for (int q = 0; q < Q_N; q++) {
        rc = sqlite3_prepare_v3(s->db, s_sql[q], -1, SQLITE_PREPARE_PERSISTENT, &s->st[q], NULL);
        if (rc != SQLITE_OK) {
            /* The tables are there but not as this build made them. */
            snprintf(err, n, "%s: preparing \"%.40s\": %s", path, s_sql[q], sqlite3_errmsg(s->db));
            status = rc == SQLITE_ERROR ? ROUTESTATE_BAD : s_open_status(rc);
            goto fail;
        }
    }
    *out = s;
    return ROUTESTATE_OK;
fail:
    routestate_close(&s);
    return status;
}

void routestate_close(struct routestate **sp)
{
    struct routestate *s = *sp;
    if (s == NULL) {
        return;
    }
    if (s->db != NULL && !sqlite3_get_autocommit(s->db)) {
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    }
    for (int q = 0; q < Q_N; q++) {
        sqlite3_finalize(s->st[q]);
    }
    if (s->db != NULL && sqlite3_close(s->db) != SQLITE_OK) {
        log_msg(LOG_WARN, "closing %s: %s", s->path, sqlite3_errmsg(s->db));
    }
    free(s->path);
    free(s);
    *sp = NULL;
}

/* -- loading -------------------------------------------------------------- */

static enum rules_state s_state(const char *name)
{
    for (int i = 0; i < RULES_NSTATES; i++) {
        if (name != NULL && strcmp(rules_state_name((enum rules_state)i), name) == 0) {
            return (enum rules_state)i;
        }
    }
    return RULES_NEW;
}

static int s_load_agents(struct routestate *s, struct agents *a)
{
    sqlite3_stmt *st = s->st[Q_AGENTS_ALL];
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *p = s_col(st, 1);
        enum agents_presence pr = p && strcmp(p, "online") == 0    ? AGENTS_ONLINE
                                  : p && strcmp(p, "offline") == 0 ? AGENTS_OFFLINE
                                                                   : AGENTS_UNKNOWN;
        if (s_col(st, 0) != NULL) {
            agents_presence(a, s_col(st, 0), pr);   /* an agent no longer in the file: ignored */
        }
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? ROUTESTATE_OK : s_err(s, rc, Q_AGENTS_ALL);
}

static int s_load_turns(struct routestate *s, struct agents *a)
{
    sqlite3_stmt *st = s->st[Q_TURNS_ALL];
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (s_col(st, 0) != NULL && s_col(st, 1) != NULL) {
            agents_set_turn(a, s_col(st, 0), s_col(st, 1));
        }
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? ROUTESTATE_OK : s_err(s, rc, Q_TURNS_ALL);
}

int routestate_load(struct routestate *s, struct agents *a, struct routestate_loaded *got)
{
    memset(got, 0, sizeof *got);
    int status = s_load_agents(s, a);
    if (status != ROUTESTATE_OK) {
        return status;
    }
    sqlite3_stmt *st = s->st[Q_CONV_ALL];
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct agents_saved sv = {
            .key = s_col(st, 0),
            .by_handle = sqlite3_column_int(st, 1) != 0,
            .state = s_state(s_col(st, 2)),
            .queue = s_col(st, 3),
            .agent = s_col(st, 4),
            .priority = sqlite3_column_int64(st, 5),
            .rule = s_col(st, 6),
            .reason = s_col(st, 7),
            .channel = s_col(st, 8),
            .customer = s_col(st, 9),
            .first_id = s_col(st, 10),
            .seq = (uint64_t)sqlite3_column_int64(st, 11),
            .last_ms = (uint64_t)sqlite3_column_int64(st, 12),
            .assigns = (unsigned)sqlite3_column_int64(st, 13),
        };
        if (sv.key == NULL) {
            continue;
        }
        if (agents_restore(a, &sv) != 0) {
            sqlite3_reset(st);
            log_msg(LOG_ERROR, "%s: out of memory restoring conversation %s", s->path, sv.key);
            return ROUTESTATE_ERROR;
        }
        got->convs++;
        if (sv.last_ms > got->latest_ms) {
            got->latest_ms = sv.last_ms;
        }
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        return s_err(s, rc, Q_CONV_ALL);
    }
    long n = agents_restore_end(a);
    if (n < 0) {
        log_msg(LOG_ERROR, "%s: out of memory putting conversations back in line", s->path);
        return ROUTESTATE_ERROR;
    }
    got->requeued = (size_t)n;
    return s_load_turns(s, a);
}

/* -- transactions --------------------------------------------------------- */

bool routestate_in_transaction(const struct routestate *s)
{
    return !sqlite3_get_autocommit(s->db);
}

int routestate_begin(struct routestate *s)
{
    return s_run(s, Q_BEGIN);
}

int routestate_commit(struct routestate *s)
{
    return s_run(s, Q_COMMIT);
}

void routestate_rollback(struct routestate *s)
{
    if (routestate_in_transaction(s)) {
        s_run(s, Q_ROLLBACK);
    }
}

/* -- decisions ------------------------------------------------------------ */

int routestate_decision(struct routestate *s, const char *id, struct buf *route, bool *routed)
{
    sqlite3_stmt *st = s->st[Q_DECISION_GET];
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    int status = ROUTESTATE_OK;
    if (rc == SQLITE_ROW) {
        const void *p = sqlite3_column_blob(st, 0);
        int n = sqlite3_column_bytes(st, 0);
        *routed = p != NULL;
        buf_reset(route);
        if (p != NULL && buf_append(route, p, (size_t)n) != 0) {
            log_limited(&s->limit, LOG_ERROR, "%s: out of memory reading the decision of %s", s->path, id);
            status = ROUTESTATE_ERROR;
        }
    } else {
        status = rc == SQLITE_DONE ? ROUTESTATE_NOT_FOUND : s_err(s, rc, Q_DECISION_GET);
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return status;
}

int routestate_decide(struct routestate *s, const char *id, uint64_t at, const void *route, size_t n)
{
    sqlite3_stmt *st = s->st[Q_DECISION_PUT];
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (int64_t)at);
    if (route != NULL) {
        sqlite3_bind_blob(st, 3, route, (int)n, SQLITE_STATIC);
    }
    return s_run(s, Q_DECISION_PUT);
}

int64_t routestate_prune(struct routestate *s, uint64_t before_ms, int limit, int *status)
{
    if ((*status = routestate_begin(s)) != ROUTESTATE_OK) {
        return -1;
    }
    sqlite3_stmt *st = s->st[Q_PRUNE];
    sqlite3_bind_int64(st, 1, (int64_t)before_ms);
    sqlite3_bind_int(st, 2, limit);
    *status = s_run(s, Q_PRUNE);
    int64_t n = *status == ROUTESTATE_OK ? sqlite3_changes(s->db) : -1;
    if (*status == ROUTESTATE_OK) {
        *status = routestate_commit(s);
    }
    if (*status != ROUTESTATE_OK) {
        routestate_rollback(s);
        return -1;
    }
    return n;
}

/* -- conversations and agents --------------------------------------------- */

int routestate_save(struct routestate *s, const struct agents *a, const struct agents_conv *c)
{
    sqlite3_stmt *st = s->st[Q_CONV_PUT];
    bool queued = c->state == RULES_QUEUED || c->state == RULES_ASSIGNED;
    sqlite3_bind_text(st, 1, c->key, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, c->by_handle);
    sqlite3_bind_text(st, 3, rules_state_name(c->state), -1, SQLITE_STATIC);
    s_text(st, 4, queued ? c->queue : NULL);
    s_text(st, 5, c->state == RULES_ASSIGNED ? agents_name(a, c->agent) : NULL);
    sqlite3_bind_int64(st, 6, c->priority);
    s_text(st, 7, c->rule);
    s_text(st, 8, c->reason);
    s_text(st, 9, c->channel);
    s_text(st, 10, c->customer);
    s_text(st, 11, c->first_id);
    sqlite3_bind_int64(st, 12, (int64_t)c->seq);
    sqlite3_bind_int64(st, 13, (int64_t)c->last_ms);
    sqlite3_bind_int64(st, 14, c->assigns);
    return s_run(s, Q_CONV_PUT);
}

int routestate_drop(struct routestate *s, const char *key)
{
    sqlite3_bind_text(s->st[Q_CONV_DEL], 1, key, -1, SQLITE_STATIC);
    return s_run(s, Q_CONV_DEL);
}

int routestate_save_agents(struct routestate *s, const struct agents *a)
{
    int rc = s_run(s, Q_AGENTS_CLEAR);
    for (size_t i = 0; rc == ROUTESTATE_OK && i < agents_count(a); i++) {
        enum agents_presence p = agents_status(a, (int)i);
        if (p == AGENTS_UNKNOWN) {
            continue;
        }
        sqlite3_stmt *st = s->st[Q_AGENT_PUT];
        sqlite3_bind_text(st, 1, agents_name(a, (int)i), -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, p == AGENTS_ONLINE ? "online" : "offline", -1, SQLITE_STATIC);
        rc = s_run(s, Q_AGENT_PUT);
    }
    rc = rc == ROUTESTATE_OK ? s_run(s, Q_TURNS_CLEAR) : rc;
    for (size_t q = 0; rc == ROUTESTATE_OK && q < agents_queue_count(a); q++) {
        const char *agent;
        const char *queue = agents_turn(a, q, &agent);
        if (agent == NULL) {
            continue;
        }
        sqlite3_stmt *st = s->st[Q_TURN_PUT];
        sqlite3_bind_text(st, 1, queue, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, agent, -1, SQLITE_STATIC);
        rc = s_run(s, Q_TURN_PUT);
    }
    return rc;
}

int64_t routestate_count(struct routestate *s, bool decisions)
{
    return db_query_int(s->db, decisions ? "SELECT count(*) FROM decisions" : "SELECT count(*) FROM conversations");
}
