/* send — the omni-send stage and its outbox; see send.h.
 *
 * handle() stores a dir=out envelope in the outbox (INSERT OR IGNORE on its
 * id) and, when nothing older to the same recipient waits, delivers it at
 * once; tick() delivers what is due (retries, and what waited behind an
 * older reply to the same person) and emits the receipts not yet emitted.
 * Each row moves pending -> sending -> sent | pending (retry) | dead, one
 * committed transaction per step, so a crash leaves at most one row
 * "sending": at start it is sent again where that is harmless (email,
 * webchat) and otherwise marked "maybe" (delivered or not, nobody knows),
 * logged and counted. Receipts are derived from the reply id, so a receipt
 * emitted twice (a crash between emit and its mark) is one receipt
 * downstream. */
#include "db.h"
#include "send.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <sqlite3.h>

#include "acks.h"
#include "endpoint.h"
#include "log.h"
#include "ulid.h"

#define BUSY_MS 1000            /* the service waits this long for the CLI's lock */
#define WEBCHAT_WAIT_MS 1000    /* a PUSH to the gateway waits this long for room */
#define RECEIPTS_PER_TICK 256   /* receipts emitted per pass */

static const char s_schema[] =
    /* seq: arrival order (replies to one person go out in it); state:
     * pending, sending, sent, maybe, dead; next_at: when a pending row is
     * due (ms since epoch); receipt: 0 while a receipt is owed. */
    "CREATE TABLE IF NOT EXISTS outbox ("
    " seq INTEGER PRIMARY KEY,"
    " id TEXT NOT NULL UNIQUE,"
    " channel TEXT NOT NULL,"
    " \"to\" TEXT NOT NULL,"
    " state TEXT NOT NULL,"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " created INTEGER NOT NULL,"
    " next_at INTEGER NOT NULL,"
    " updated INTEGER NOT NULL,"
    " status INTEGER,"
    " last_error TEXT,"
    " provider_id TEXT,"
    " receipt INTEGER NOT NULL DEFAULT 1,"
    " env BLOB NOT NULL);\n"
    "CREATE INDEX IF NOT EXISTS outbox_due ON outbox(next_at) WHERE state = 'pending';\n"
    "CREATE INDEX IF NOT EXISTS outbox_queue ON outbox(\"to\", seq) WHERE state = 'pending';\n"
    "CREATE INDEX IF NOT EXISTS outbox_receipt ON outbox(seq) WHERE receipt = 0;\n"
    /* The delivered-log: the provider's id of every reply it accepted. */
    "CREATE TABLE IF NOT EXISTS delivered ("
    " id TEXT PRIMARY KEY,"
    " channel TEXT NOT NULL,"
    " provider_id TEXT,"
    " attempts INTEGER NOT NULL,"
    " ts INTEGER NOT NULL) WITHOUT ROWID;\n"
    /* Dead letters: replies that will not be delivered, and why. */
    "CREATE TABLE IF NOT EXISTS dead ("
    " id TEXT PRIMARY KEY,"
    " channel TEXT NOT NULL,"
    " status INTEGER,"
    " reason TEXT NOT NULL,"
    " attempts INTEGER NOT NULL,"
    " ts INTEGER NOT NULL) WITHOUT ROWID;\n";

/* The prepared statements, in the order of s_sql. */
enum {
    Q_INSERT,       /* store a new reply */
    Q_REPLAYED,     /* a replayed finished reply owes its receipt again */
    Q_ROW,          /* one row by id */
    Q_BLOCKED,      /* an older pending reply to the same recipient */
    Q_DUE,          /* due rows nothing older blocks */
    Q_NEXT,         /* when the next unblocked row is due */
    Q_SENDING,      /* pending -> sending */
    Q_SENT,         /* sending -> sent */
    Q_DELIVERED,    /* the delivered-log row */
    Q_RETRY,        /* sending -> pending, later */
    Q_DEAD,         /* -> dead */
    Q_DEADLOG,      /* the dead table row */
    Q_OWED,         /* rows whose receipt is owed */
    Q_RECEIPTED,    /* receipt emitted */
    Q_BEGIN,
    Q_COMMIT,
    Q_ROLLBACK,
    Q_N
};

static const char *const s_sql[Q_N] = {
    [Q_INSERT] = "INSERT OR IGNORE INTO outbox (id, channel, \"to\", state, created, next_at, updated, env)"
                 " VALUES (?1, ?2, ?3, 'pending', ?4, ?4, ?4, ?5)",
    [Q_REPLAYED] = "UPDATE outbox SET receipt = 0 WHERE id = ?1 AND state IN ('sent', 'dead', 'maybe')",
    [Q_ROW] = "SELECT state, attempts, created, env FROM outbox WHERE id = ?1",
    [Q_BLOCKED] = "SELECT 1 FROM outbox o, outbox p WHERE o.id = ?1 AND p.\"to\" = o.\"to\""
                  " AND p.state = 'pending' AND p.seq < o.seq LIMIT 1",
    [Q_DUE] = "SELECT id FROM outbox o WHERE state = 'pending' AND next_at <= ?1"
              " AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.\"to\" = o.\"to\""
              "  AND p.state = 'pending' AND p.seq < o.seq)"
              " ORDER BY next_at, seq LIMIT ?2",
    [Q_NEXT] = "SELECT min(next_at) FROM outbox o WHERE state = 'pending'"
               " AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.\"to\" = o.\"to\""
               "  AND p.state = 'pending' AND p.seq < o.seq)",
    [Q_SENDING] = "UPDATE outbox SET state = 'sending', attempts = attempts + 1, updated = ?2"
                  " WHERE id = ?1 AND state = 'pending'",
    [Q_SENT] = "UPDATE outbox SET state = 'sent', updated = ?2, status = ?3, provider_id = ?4,"
               " last_error = NULL, receipt = 0 WHERE id = ?1",
    [Q_DELIVERED] = "INSERT OR REPLACE INTO delivered (id, channel, provider_id, attempts, ts)"
                    " SELECT id, channel, provider_id, attempts, ?2 FROM outbox WHERE id = ?1",
    [Q_RETRY] = "UPDATE outbox SET state = 'pending', next_at = ?2, updated = ?3, status = ?4,"
                " last_error = ?5 WHERE id = ?1",
    [Q_DEAD] = "UPDATE outbox SET state = 'dead', updated = ?2, status = ?3, last_error = ?4,"
               " receipt = 0 WHERE id = ?1",
    [Q_DEADLOG] = "INSERT OR REPLACE INTO dead (id, channel, status, reason, attempts, ts)"
                  " SELECT id, channel, status, last_error, attempts, ?2 FROM outbox WHERE id = ?1",
    [Q_OWED] = "SELECT id, state, attempts, provider_id, last_error, env FROM outbox"
               " WHERE receipt = 0 ORDER BY seq LIMIT ?1",
    [Q_RECEIPTED] = "UPDATE outbox SET receipt = 1 WHERE id = ?1",
    [Q_BEGIN] = "BEGIN IMMEDIATE",
    [Q_COMMIT] = "COMMIT",
    [Q_ROLLBACK] = "ROLLBACK",
};

struct send {
    struct send_conf *conf;         /* options as given */
    struct send_conf rconf;         /* options with secrets read from their files */
    char *secrets[SEND_SECRETS];    /* the secrets read from files (owned) */
    sqlite3 *db;                    /* the outbox */
    sqlite3_stmt *q[Q_N];           /* prepared statements */
    struct send_http *http;         /* Telegram, Graph, Twilio */
    struct send_mail *mail;         /* SMTP, or NULL when --smtp-url is not set */
    struct ep *webchat;             /* PUSH to the gateway, or NULL */
    struct ep *acks;                /* PUB of stored ids (--acks), or NULL */
    struct buf ack;                 /* an ack message being built */
    struct env *reply;              /* the reply being delivered, decoded from its row */
    struct env *receipt;            /* the receipt being built */
    struct buf enc;                 /* an envelope encoded for its row */
    uint32_t rnd;                   /* xorshift state for jitter */
    uint64_t sent;                  /* replies the providers accepted */
    uint64_t retries;               /* temporary failures, retried later */
    uint64_t dead;                  /* replies dead-lettered */
    uint64_t maybe;                 /* replies found "sending" at start, not re-sent */
    uint64_t replays;               /* replies already in the outbox */
    struct log_limit limit;         /* rate limit of per-reply log lines */
};

static bool s_set(const char *s)
{
    return s != NULL && s[0] != '\0';
}

static int s_check(struct stage_ctx *ctx, void *conf)
{
    (void)ctx;
    int status = send_conf_check(conf);
    if (status != 0) {
        return status;
    }
    struct send_conf rc;
    char *secrets[SEND_SECRETS];
    status = send_conf_secrets(conf, &rc, secrets);
    send_conf_forget(secrets);
    return status;
}

/* --- the outbox ------------------------------------------------------------ */

/* Opens (creates) the outbox: WAL, synchronous=FULL, the schema. */
static int s_open_db(struct send *s)
{
    const char *path = s->conf->db;
    char why[300];
    int rc = sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        log_msg(LOG_ERROR, "--db %s: %s", path, s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        return EXIT_UNAVAILABLE;
    }
    sqlite3_busy_timeout(s->db, 5000);
    int64_t version = db_query_int(s->db, "PRAGMA user_version");
    int64_t tables = db_query_int(s->db, "SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'");
    if (version < 0 || tables < 0) {
        log_msg(LOG_ERROR, "--db %s: %s", path, sqlite3_errmsg(s->db));
        return EXIT_UNAVAILABLE;
    }
    if (version > SEND_SCHEMA_VERSION || (version == 0 && tables > 0)) {
        log_msg(LOG_ERROR, "--db %s: not an omni-send outbox (schema version %lld, tables %lld)",
                path, (long long)version, (long long)tables);
        return EXIT_CONFIG;
    }
    sqlite3_stmt *st = NULL;
    bool wal = false;
    if (sqlite3_prepare_v2(s->db, "PRAGMA journal_mode = WAL", -1, &st, NULL) == SQLITE_OK
        && sqlite3_step(st) == SQLITE_ROW) {
        const char *jm = (const char *)sqlite3_column_text(st, 0);
        wal = jm != NULL && strcmp(jm, "wal") == 0;
    }
    sqlite3_finalize(st);
    if (!wal) {
        log_msg(LOG_ERROR, "--db %s: cannot use WAL", path);
        return EXIT_UNAVAILABLE;
    }
    char version_sql[64];
    snprintf(version_sql, sizeof version_sql, "PRAGMA user_version = %d", SEND_SCHEMA_VERSION);
    if (db_exec(s->db, "PRAGMA synchronous = FULL", why, sizeof why) != SQLITE_OK
        || db_exec(s->db, "BEGIN IMMEDIATE", why, sizeof why) != SQLITE_OK) {
        log_msg(LOG_ERROR, "--db %s: %s", path, why);
        return EXIT_UNAVAILABLE;
    }
    if (db_exec(s->db, s_schema, why, sizeof why) != SQLITE_OK
        || db_exec(s->db, version_sql, why, sizeof why) != SQLITE_OK
        || db_exec(s->db, "COMMIT", why, sizeof why) != SQLITE_OK) {
        log_msg(LOG_ERROR, "--db %s: cannot create the schema: %s", path, why);
        db_exec(s->db, "ROLLBACK", why, sizeof why);
        return EXIT_UNAVAILABLE;
    }
    for (int i = 0; i < Q_N; i++) {
        if (sqlite3_prepare_v3(s->db, s_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->q[i], NULL) != SQLITE_OK) {
            log_msg(LOG_ERROR, "--db %s: %s", path, sqlite3_errmsg(s->db));
            return EXIT_UNAVAILABLE;
        }
    }
    sqlite3_busy_timeout(s->db, BUSY_MS);
    return 0;
}

/* Steps a statement that returns no rows and resets it. */
static int s_run(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

static void s_bind_text(sqlite3_stmt *st, int i, const char *v)
{
    if (v != NULL) {
        sqlite3_bind_text(st, i, v, -1, SQLITE_TRANSIENT);
    } else {
        sqlite3_bind_null(st, i);
    }
}

static uint32_t s_rand(struct send *s)
{
    uint32_t x = s->rnd;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    s->rnd = x;
    return x;
}

/* Runs one transaction of two statements bound to id (and ts as ?2). */
static int s_txn2(struct send *s, int first, int second, const char *id, int64_t ts)
{
    int rc = s_run(s->q[Q_BEGIN]);
    if (rc != SQLITE_OK) {
        return rc;
    }
    s_bind_text(s->q[second], 1, id);
    sqlite3_bind_int64(s->q[second], 2, ts);
    rc = s_run(s->q[first]);
    if (rc == SQLITE_OK) {
        rc = s_run(s->q[second]);
    }
    if (rc == SQLITE_OK) {
        rc = s_run(s->q[Q_COMMIT]);
    }
    if (rc != SQLITE_OK && !sqlite3_get_autocommit(s->db)) {
        s_run(s->q[Q_ROLLBACK]);
    }
    return rc;
}

/* --- receipts ------------------------------------------------------------ */

/* Which provider a channel goes through, for receipts and logs. */
static const char *s_provider(const char *channel)
{
    static const char *const map[][2] = {
        { "telegram", "telegram" }, { "whatsapp", "whatsapp-cloud" }, { "messenger", "messenger" },
        { "sms", "twilio" }, { "voice", "twilio" }, { "email", "smtp" }, { "webchat", "webchat" },
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        if (strcmp(map[i][0], channel) == 0) {
            return map[i][1];
        }
    }
    return "none";
}

static void s_copy(struct env *dst, const struct env *src, enum env_key k)
{
    const char *v = env_get(src, k);
    if (v != NULL) {
        env_set(dst, k, v, NULL);
    }
}

/* Emits the receipt of reply r: status "sent", "failed" or "unknown".
 * Returns 0, or -1 when it could not go out (it stays owed). */
static int s_emit_receipt(struct send *s, struct stage_ctx *ctx, const struct env *r,
                          const char *state, int64_t attempts, const char *provider_id,
                          const char *reason)
{
    const char *status = strcmp(state, "sent") == 0 ? "sent"
                       : strcmp(state, "dead") == 0 ? "failed" : "unknown";
    const char *rid = env_get(r, ENV_ID);
    char id[ULID_LEN + 1];
    ulid_derive(rid, "receipt", id);
    struct env *e = s->receipt;
    struct env_err err;
    env_clear(e);
    env_set_uint(e, ENV_V, ENV_VERSION);
    env_set(e, ENV_ID, id, NULL);
    env_set_uint(e, ENV_TS, stage_now_ms());
    s_copy(e, r, ENV_CHANNEL);
    env_set(e, ENV_DIR, "event", NULL);
    s_copy(e, r, ENV_FROM);
    s_copy(e, r, ENV_TO);
    s_copy(e, r, ENV_CUSTOMER);
    s_copy(e, r, ENV_CONVERSATION);
    const struct env_kv meta[] = {
        { .key = "event", .type = ENV_KV_STR, .s = "receipt" },
        { .key = "status", .type = ENV_KV_STR, .s = status },
        { .key = "reply", .type = ENV_KV_STR, .s = rid },
        { .key = "provider", .type = ENV_KV_STR, .s = s_provider(env_get(r, ENV_CHANNEL)) },
        { .key = "provider_id", .type = ENV_KV_STR, .s = provider_id },
        { .key = "attempts", .type = ENV_KV_INT, .i = attempts },
        { .key = "reason", .type = ENV_KV_STR, .s = strcmp(status, "sent") == 0 ? NULL : reason },
    };
    if (env_set_map(e, ENV_META, meta, sizeof meta / sizeof meta[0], &err) != 0) {
        char why[300];
        log_limited(&s->limit, LOG_ERROR, "cannot build the receipt of id=%s: %s", rid,
                    env_err_str(&err, why, sizeof why));
        return 0;   /* it would fail again: not owed any more */
    }
    return stage_emit(ctx, e);
}

static void s_receipted(struct send *s, const char *id)
{
    s_bind_text(s->q[Q_RECEIPTED], 1, id);
    int rc = s_run(s->q[Q_RECEIPTED]);
    if (rc != SQLITE_OK) {
        log_limited(&s->limit, LOG_WARN, "cannot mark the receipt of id=%s: %s (it may go out twice)",
                    id, sqlite3_errstr(rc));
    }
}

/* Emits the receipts still owed (a crash or a full output kept them). */
static void s_owed_receipts(struct send *s, struct stage_ctx *ctx)
{
    sqlite3_stmt *st = s->q[Q_OWED];
    sqlite3_bind_int(st, 1, RECEIPTS_PER_TICK);
    char done[RECEIPTS_PER_TICK][ULID_LEN + 1];
    int n = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && n < RECEIPTS_PER_TICK) {
        const char *id = (const char *)sqlite3_column_text(st, 0);
        const char *state = (const char *)sqlite3_column_text(st, 1);
        int64_t attempts = sqlite3_column_int64(st, 2);
        const char *pid = (const char *)sqlite3_column_text(st, 3);
        const char *why = (const char *)sqlite3_column_text(st, 4);
        const void *blob = sqlite3_column_blob(st, 5);
        int len = sqlite3_column_bytes(st, 5);
        struct env_err err;
        if (id == NULL || state == NULL || strlen(id) != ULID_LEN) {
            continue;
        }
        if (strcmp(state, "sent") != 0 && strcmp(state, "dead") != 0 && strcmp(state, "maybe") != 0) {
            /* Owed only once the row is final; pending rows wait. */
            continue;
        }
        if (env_decode(s->reply, blob, (size_t)len, &err) == 0
            && s_emit_receipt(s, ctx, s->reply, state, attempts, pid, why) != 0) {
            break;  /* the output is not taking them: next tick */
        }
        memcpy(done[n++], id, ULID_LEN + 1);
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        log_limited(&s->limit, LOG_WARN, "reading owed receipts: %s", sqlite3_errmsg(s->db));
    }
    for (int i = 0; i < n; i++) {
        s_receipted(s, done[i]);
    }
}

/* --- delivery -------------------------------------------------------------- */

/* Web chat: the envelope goes to the gateway, which serves it on the
 * session's stream, once per envelope id. */
static void s_webchat(struct send *s, const void *blob, size_t len, const char *id,
                      struct send_result *r)
{
    if (s->webchat == NULL) {
        send_result_set(r, SEND_PERM, 0, "web chat is not configured (--webchat)");
        return;
    }
    int rc = ep_send(s->webchat, blob, len, WEBCHAT_WAIT_MS);
    if (rc == 0) {
        send_result_set(r, SEND_SENT, 0, "queued to the gateway");
        snprintf(r->provider_id, sizeof r->provider_id, "%s", id);
    } else if (rc == EP_AGAIN) {
        send_result_set(r, SEND_TEMP, 0, "the web chat gateway is not taking messages");
    } else {
        send_result_set(r, SEND_TEMP, 0, "--webchat %s: %s", ep_name(s->webchat), strerror(errno));
    }
}

/* Calls the provider of the reply in s->reply. */
static void s_call(struct send *s, const void *blob, size_t len, struct send_result *r)
{
    const char *ch = env_get(s->reply, ENV_CHANNEL);
    memset(r, 0, sizeof *r);
    r->retry_after_ms = -1;
    if (strcmp(ch, "telegram") == 0 || strcmp(ch, "whatsapp") == 0 || strcmp(ch, "messenger") == 0
        || strcmp(ch, "sms") == 0 || strcmp(ch, "voice") == 0) {
        send_http_deliver(s->http, s->reply, r);
    } else if (strcmp(ch, "email") == 0) {
        if (s->mail == NULL) {
            send_result_set(r, SEND_PERM, 0, "e-mail is not configured (--smtp-url)");
        } else {
            send_mail_deliver(s->mail, s->reply, r);
        }
    } else if (strcmp(ch, "webchat") == 0) {
        s_webchat(s, blob, len, env_get(s->reply, ENV_ID), r);
    } else {
        send_result_set(r, SEND_PERM, 0, "channel %s has no delivery", ch);
    }
}

/* Records the outcome of one attempt on row id. attempts: made so far,
 * created: when the row was stored. */
static void s_record(struct send *s, struct stage_ctx *ctx, const char *id, int64_t attempts,
                     int64_t created, struct send_result *r)
{
    int64_t now = (int64_t)stage_now_ms();
    const char *ch = env_get(s->reply, ENV_CHANNEL);
    int rc;
    if (r->outcome == SEND_TEMP) {
        int64_t delay = send_backoff((int)attempts, s->conf->retry_min_ms, s->conf->retry_max_ms,
                                     r->retry_after_ms, s_rand(s));
        if (now + delay - created > s->conf->give_up_ms) {
            char why[sizeof r->reason];
            snprintf(why, sizeof why, "%s", r->reason);
            send_result_set(r, SEND_PERM, r->status, "gave up after %lld attempts over %llds: %s",
                            (long long)attempts, (long long)((now - created) / 1000), why);
        } else {
            sqlite3_stmt *st = s->q[Q_RETRY];
            s_bind_text(st, 1, id);
            sqlite3_bind_int64(st, 2, now + delay);
            sqlite3_bind_int64(st, 3, now);
            sqlite3_bind_int64(st, 4, r->status);
            s_bind_text(st, 5, r->reason);
            rc = s_run(st);
            s->retries++;
            log_limited(&s->limit, LOG_INFO, "retry id=%s channel=%s attempt=%lld in=%lldms reason=\"%s\"",
                        id, ch, (long long)attempts, (long long)delay, r->reason);
            if (rc != SQLITE_OK) {
                log_limited(&s->limit, LOG_ERROR, "cannot record the retry of id=%s: %s", id,
                            sqlite3_errstr(rc));
            }
            return;
        }
    }
    const char *state;
    if (r->outcome == SEND_SENT) {
        sqlite3_stmt *st = s->q[Q_SENT];
        s_bind_text(st, 1, id);
        sqlite3_bind_int64(st, 2, now);
        sqlite3_bind_int64(st, 3, r->status);
        s_bind_text(st, 4, r->provider_id[0] ? r->provider_id : NULL);
        rc = s_txn2(s, Q_SENT, Q_DELIVERED, id, now);
        state = "sent";
        s->sent++;
        log_msg(LOG_DEBUG, "sent id=%s channel=%s provider_id=%s attempts=%lld", id, ch,
                r->provider_id, (long long)attempts);
    } else {
        sqlite3_stmt *st = s->q[Q_DEAD];
        s_bind_text(st, 1, id);
        sqlite3_bind_int64(st, 2, now);
        sqlite3_bind_int64(st, 3, r->status);
        s_bind_text(st, 4, r->reason);
        rc = s_txn2(s, Q_DEAD, Q_DEADLOG, id, now);
        state = "dead";
        s->dead++;
        log_limited(&s->limit, LOG_WARN, "dead id=%s channel=%s status=%ld attempts=%lld reason=\"%s\"",
                    id, ch, r->status, (long long)attempts, r->reason);
    }
    if (rc != SQLITE_OK) {
        /* The row stays "sending": at the next start it counts as maybe
         * delivered (or is re-sent where that is harmless). */
        log_limited(&s->limit, LOG_ERROR, "id=%s is %s but the outbox could not record it: %s",
                    id, state, sqlite3_errstr(rc));
        return;
    }
    if (s_emit_receipt(s, ctx, s->reply, state, attempts, r->provider_id[0] ? r->provider_id : NULL,
                       r->reason) == 0) {
        s_receipted(s, id);
    }
}

/* One attempt at row id, if it is pending. */
static void s_deliver(struct send *s, struct stage_ctx *ctx, const char *id)
{
    sqlite3_stmt *st = s->q[Q_ROW];
    s_bind_text(st, 1, id);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        if (rc != SQLITE_DONE) {
            log_limited(&s->limit, LOG_WARN, "reading id=%s: %s", id, sqlite3_errmsg(s->db));
        }
        return;
    }
    const char *state = (const char *)sqlite3_column_text(st, 0);
    int64_t attempts = sqlite3_column_int64(st, 1) + 1;
    int64_t created = sqlite3_column_int64(st, 2);
    bool pending = state != NULL && strcmp(state, "pending") == 0;
    buf_reset(&s->enc);
    int len = sqlite3_column_bytes(st, 3);
    const void *blob = sqlite3_column_blob(st, 3);
    if (pending && buf_append(&s->enc, blob, (size_t)len) != 0) {
        pending = false;
        log_limited(&s->limit, LOG_ERROR, "out of memory reading id=%s", id);
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (!pending) {
        return;
    }
    struct send_result r;
    struct env_err err;
    if (env_decode(s->reply, s->enc.data, s->enc.len, &err) != 0) {
        /* Never happens to bytes env_encode wrote; if it does, the row
         * must not come back every tick. */
        char why[300];
        env_err_str(&err, why, sizeof why);
        log_limited(&s->limit, LOG_ERROR, "dead id=%s: the stored envelope does not decode: %s", id, why);
        st = s->q[Q_DEAD];
        s_bind_text(st, 1, id);
        sqlite3_bind_int64(st, 2, (int64_t)stage_now_ms());
        sqlite3_bind_null(st, 3);
        s_bind_text(st, 4, "the stored envelope does not decode");
        s_txn2(s, Q_DEAD, Q_DEADLOG, id, (int64_t)stage_now_ms());
        return;
    }
    /* The crash window opens: "sending" is committed before the call. */
    st = s->q[Q_SENDING];
    s_bind_text(st, 1, id);
    sqlite3_bind_int64(st, 2, (int64_t)stage_now_ms());
    rc = s_run(st);
    if (rc != SQLITE_OK || sqlite3_changes(s->db) != 1) {
        log_limited(&s->limit, LOG_WARN, "cannot mark id=%s sending: %s (not sent now)", id,
                    rc != SQLITE_OK ? sqlite3_errstr(rc) : "row changed");
        return;
    }
    s_call(s, s->enc.data, s->enc.len, &r);
    s_record(s, ctx, id, attempts, created, &r);
}

/* True when an older reply to the same recipient is still pending. */
static bool s_blocked(struct send *s, const char *id)
{
    sqlite3_stmt *st = s->q[Q_BLOCKED];
    s_bind_text(st, 1, id);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_ROW;
}

/* Delivers what is due, up to --batch; asks for the next wake-up. */
static void s_pump(struct send *s, struct stage_ctx *ctx)
{
    int64_t budget = s->conf->batch;
    while (budget > 0 && !stage_stopping(ctx)) {
        char ids[64][ULID_LEN + 1];
        int n = 0;
        sqlite3_stmt *st = s->q[Q_DUE];
        sqlite3_bind_int64(st, 1, (int64_t)stage_now_ms());
        sqlite3_bind_int64(st, 2, budget < 64 ? budget : 64);
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW && n < 64) {
            const char *id = (const char *)sqlite3_column_text(st, 0);
            if (id != NULL && strlen(id) == ULID_LEN) {
                memcpy(ids[n++], id, ULID_LEN + 1);
            }
        }
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
            log_limited(&s->limit, LOG_WARN, "reading due replies: %s", sqlite3_errmsg(s->db));
            stage_wake_in(ctx, 500);
            return;
        }
        if (n == 0) {
            break;
        }
        for (int i = 0; i < n && !stage_stopping(ctx); i++) {
            s_deliver(s, ctx, ids[i]);
        }
        budget -= n;
    }
    if (budget <= 0) {
        stage_wake_in(ctx, 0);     /* more may be due: after the input */
        return;
    }
    sqlite3_stmt *st = s->q[Q_NEXT];
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) {
        int64_t at = sqlite3_column_int64(st, 0);
        int64_t now = (int64_t)stage_now_ms();
        stage_wake_in(ctx, at > now ? at - now : 0);
    }
    sqlite3_reset(st);
}

/* At start: rows a crash left "sending". */
static int s_recover(struct send *s)
{
    static const char sel[] = "SELECT id, channel, attempts FROM outbox WHERE state = 'sending'";
    static const char resend[] = "UPDATE outbox SET state = 'pending', next_at = ?2, updated = ?2"
                                 " WHERE id = ?1";
    static const char maybe[] = "UPDATE outbox SET state = 'maybe', updated = ?2, receipt = 0,"
                                " last_error = 'omni-send stopped during the API call: delivered or not,"
                                " nobody knows; not sent again (the provider takes no idempotency key)'"
                                " WHERE id = ?1";
    sqlite3_stmt *st = NULL, *up_resend = NULL, *up_maybe = NULL;
    int status = EXIT_UNAVAILABLE;
    int64_t now = (int64_t)stage_now_ms();
    if (sqlite3_prepare_v2(s->db, sel, -1, &st, NULL) != SQLITE_OK
        || sqlite3_prepare_v2(s->db, resend, -1, &up_resend, NULL) != SQLITE_OK
        || sqlite3_prepare_v2(s->db, maybe, -1, &up_maybe, NULL) != SQLITE_OK) {
        log_msg(LOG_ERROR, "--db %s: %s", s->conf->db, sqlite3_errmsg(s->db));
        goto done;
    }
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(st, 0);
        const char *ch = (const char *)sqlite3_column_text(st, 1);
        /* SMTP: the same Message-ID, which receivers and MUAs dedupe on;
         * web chat: the gateway shows one envelope id once. */
        bool again = strcmp(ch, "email") == 0 || strcmp(ch, "webchat") == 0;
        sqlite3_stmt *up = again ? up_resend : up_maybe;
        sqlite3_bind_text(up, 1, id, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(up, 2, now);
        if (s_run(up) != SQLITE_OK) {
            log_msg(LOG_ERROR, "--db %s: %s", s->conf->db, sqlite3_errmsg(s->db));
            goto done;
        }
        if (again) {
            log_msg(LOG_INFO, "id=%s channel=%s was being sent when omni-send stopped: sending it "
                    "again (idempotent on %s)", id, ch, strcmp(ch, "email") == 0 ? "Message-ID" : "id");
        } else {
            s->maybe++;
            log_msg(LOG_WARN, "id=%s channel=%s was being sent when omni-send stopped: maybe "
                    "delivered, not sent again (%s takes no idempotency key)", id, ch, s_provider(ch));
        }
    }
    if (rc != SQLITE_DONE) {
        log_msg(LOG_ERROR, "--db %s: %s", s->conf->db, sqlite3_errmsg(s->db));
        goto done;
    }
    status = 0;
done:
    sqlite3_finalize(st);
    sqlite3_finalize(up_resend);
    sqlite3_finalize(up_maybe);
    return status;
}

/* --- the stage ------------------------------------------------------------- */

static void s_fini(void **state);

static int s_init(struct stage_ctx *ctx, void *conf, void **state)
{
    struct send_conf *c = conf;
    int status = send_conf_check(c);
    if (status != 0) {
        return status;
    }
    struct send *s = calloc(1, sizeof *s);
    if (s == NULL) {
        log_msg(LOG_ERROR, "out of memory");
        return EXIT_SOFTWARE;
    }
    *state = s;
    s->conf = c;
    if (getrandom(&s->rnd, sizeof s->rnd, 0) != (ssize_t)sizeof s->rnd || s->rnd == 0) {
        s->rnd = (uint32_t)stage_now_ms() | 1u;
    }
    status = send_conf_secrets(c, &s->rconf, s->secrets);
    if (status != 0) {
        goto fail;
    }
    s->reply = env_new();
    s->receipt = env_new();
    if (s->reply == NULL || s->receipt == NULL) {
        log_msg(LOG_ERROR, "out of memory");
        status = EXIT_SOFTWARE;
        goto fail;
    }
    status = s_open_db(s);
    if (status != 0) {
        goto fail;
    }
    status = s_recover(s);
    if (status != 0) {
        goto fail;
    }
    char err[400];
    s->http = send_http_new(&s->rconf, err, sizeof err);
    if (s->http == NULL) {
        log_msg(LOG_ERROR, "%s", err);
        status = EXIT_SOFTWARE;
        goto fail;
    }
    if (s_set(c->smtp_url)) {
        s->mail = send_mail_new(&s->rconf, err, sizeof err);
        if (s->mail == NULL) {
            log_msg(LOG_ERROR, "%s", err);
            status = EXIT_CONFIG;
            goto fail;
        }
    }
    status = stage_open_ep(ctx, "webchat", c->webchat, EP_OUT, &s->webchat);
    if (status != 0) {
        goto fail;
    }
    if (s_set(c->acks)) {
        s->acks = acks_open(ctx, "acks", c->acks, EP_TAP, err, sizeof err);
        if (s->acks == NULL) {
            log_msg(LOG_ERROR, "%s", err);
            status = EXIT_UNAVAILABLE;
            goto fail;
        }
    }
    log_msg(LOG_DEBUG, "outbox %s open", c->db);
    return 0;
fail:
    s_fini(state);
    return status;
}

/* Tells --acks that id is in the outbox (committed): whoever passed it on
 * need not pass it on again. A lost ack costs only a replay. */
static void s_ack(struct send *s, const char *id)
{
    if (s->acks == NULL) {
        return;
    }
    if (acks_pack(&s->ack, &id, 1) != 0) {
        log_limited(&s->limit, LOG_ERROR, "out of memory building the ack of id=%s", id);
        return;
    }
    if (ep_send(s->acks, s->ack.data, s->ack.len, 0) != 0) {
        log_limited(&s->limit, LOG_ERROR, "--acks %s: %s", ep_name(s->acks), strerror(errno));
    }
}

static enum verdict s_handle(void *state, struct stage_ctx *ctx, struct env *e)
{
    struct send *s = state;
    const char *dir = env_get(e, ENV_DIR);
    if (strcmp(dir, "out") != 0) {
        return STAGE_PASS;
    }
    const char *id = env_get(e, ENV_ID);
    buf_reset(&s->enc);
    if (env_encode(e, &s->enc) != 0) {
        log_limited(&s->limit, LOG_ERROR, "out of memory storing id=%s", id);
        return STAGE_RETRY;
    }
    sqlite3_stmt *st = s->q[Q_INSERT];
    s_bind_text(st, 1, id);
    s_bind_text(st, 2, env_get(e, ENV_CHANNEL));
    s_bind_text(st, 3, env_get(e, ENV_TO));
    sqlite3_bind_int64(st, 4, (int64_t)stage_now_ms());
    sqlite3_bind_blob(st, 5, s->enc.data, (int)s->enc.len, SQLITE_STATIC);
    int rc = s_run(st);
    if (rc != SQLITE_OK) {
        log_limited(&s->limit, LOG_WARN, "cannot store id=%s: %s (will retry)", id,
                    rc == SQLITE_BUSY ? "database is locked" : sqlite3_errmsg(s->db));
        return STAGE_RETRY;
    }
    s_ack(s, id);
    if (sqlite3_changes(s->db) == 0) {
        /* A replay: delivered (or being delivered) once already. Its
         * receipt is owed again, in case the first one was lost. */
        s->replays++;
        log_msg(LOG_DEBUG, "id=%s is already in the outbox: not sent again", id);
        st = s->q[Q_REPLAYED];
        s_bind_text(st, 1, id);
        s_run(st);
        s_owed_receipts(s, ctx);
        return STAGE_DROP;
    }
    /* The fast path, unless an older reply to this person waits. */
    if (!s_blocked(s, id)) {
        s_deliver(s, ctx, id);
    }
    s_pump(s, ctx);
    return STAGE_DROP;
}

static void s_tick(void *state, struct stage_ctx *ctx)
{
    struct send *s = state;
    if (!stage_stopping(ctx)) {
        s_pump(s, ctx);
    }
    s_owed_receipts(s, ctx);
}

static void s_fini(void **state)
{
    struct send *s = *state;
    if (s == NULL) {
        return;
    }
    if (s->db != NULL) {
        log_msg(LOG_DEBUG, "sent %llu, retried %llu, dead %llu, maybe delivered %llu, replays %llu",
                (unsigned long long)s->sent, (unsigned long long)s->retries,
                (unsigned long long)s->dead, (unsigned long long)s->maybe,
                (unsigned long long)s->replays);
    }
    for (int i = 0; i < Q_N; i++) {
        sqlite3_finalize(s->q[i]);
    }
    if (s->db != NULL && sqlite3_close(s->db) != SQLITE_OK) {
        log_msg(LOG_WARN, "closing %s: %s", s->conf->db, sqlite3_errmsg(s->db));
    }
    send_http_destroy(&s->http);
    send_mail_destroy(&s->mail);
    ep_destroy(&s->webchat);
    ep_destroy(&s->acks);
    buf_free(&s->ack);
    env_destroy(&s->reply);
    env_destroy(&s->receipt);
    buf_free(&s->enc);
    send_conf_forget(s->secrets);
    free(s);
    *state = NULL;
}

const struct stage send_stage = {
    .name = "send",
    .summary = "Delivers dir=out envelopes to Telegram, WhatsApp Cloud, Messenger, Twilio (sms, voice), "
               "SMTP (email) and the web chat gateway through a durable outbox; emits receipt events "
               "and passes other envelopes on.\n"
               "Also: omni-send status [ID] | dead | retry ID --db PATH (--help on each)",
    .options = send_options,
    .conf_size = sizeof(struct send_conf),
    .flags = 0,
    .init = s_init,
    .check = s_check,
    .handle = s_handle,
    .tick = s_tick,
    .fini = s_fini,
};
