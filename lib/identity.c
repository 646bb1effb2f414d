/* identity — the identity graph's library (see identity.h, which maps its
 * files): open and close, transactions, an envelope's customer and
 * conversation, link, unlink, resolve, show and forget. The work is done
 * by iddb.c (statements, customers, handles), idconv.c (conversations),
 * idgraph.c (links, merges, splits) and idenv.c (what an envelope says).
 *
 * A customer is a connected component of the active links. A link that
 * joins two customers merges them into the older id; an unlink recomputes
 * the components of the customer's remaining links. A processed table maps
 * every envelope id to what it was given, so a replay changes nothing. */
#include "identity.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "idconv.h"
#include "iddb.h"
#include "idenv.h"
#include "idgraph.h"
#include "log.h"

/* -- open, close, transactions ------------------------------------------- */

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
    if (iddb_connect(id, path, err, n) != 0) {
        goto fail;
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
        id->slack_ms = o->idle_ms / 100 < IDCONV_SLACK_MAX ? o->idle_ms / 100 : IDCONV_SLACK_MAX;
    }
    id->data_version = iddb_data_version(id);
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
    iddb_disconnect(id);
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

int identity_begin(struct identity *id)
{
    assert(!identity_in_transaction(id));
    /* Another connection (the CLI) committed since our last look: what the
     * caches know may be stale. Asked inside the transaction, which holds
     * the write lock: nobody commits between the question and our work. */
    int rc = iddb_run(id, IDDB_Q_BEGIN);
    int64_t v = rc == IDENTITY_OK ? iddb_data_version(id) : id->data_version;
    if (rc == IDENTITY_OK && v != id->data_version) {
        iddb_cache_clear(id);
        rc = idconv_save_all(id);
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
    int rc = iddb_run(id, IDDB_Q_COMMIT);
    if (rc != IDENTITY_OK && !identity_in_transaction(id)) {
        iddb_cache_clear(id);   /* rolled back: the caches may hold what was lost */
        idconv_clear(id);
    }
    return rc;
}

void identity_rollback(struct identity *id)
{
    if (identity_in_transaction(id)) {
        iddb_run(id, IDDB_Q_ROLLBACK);
    }
    iddb_cache_clear(id);
    idconv_clear(id);
}

const struct identity_counts *identity_counts(const struct identity *id)
{
    return &id->counts;
}

int identity_sync(struct identity *id)
{
    assert(identity_in_transaction(id));
    return idconv_save_all(id);
}

int identity_checkpoint(struct identity *id)
{
    int nlog = 0, nckpt = 0;
    int rc = sqlite3_wal_checkpoint_v2(id->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, &nlog, &nckpt);
    if (rc == SQLITE_OK) {
        return IDENTITY_OK;
    }
    return iddb_dberr(id, rc, "wal_checkpoint(TRUNCATE)");
}

/* -- link, unlink -------------------------------------------------------- */

int identity_link(struct identity *id, const char *h1, const char *h2,
                  const struct identity_prov *p, bool force, struct identity_result *r)
{
    assert(identity_in_transaction(id));
    memset(r, 0, sizeof *r);
    char a[HANDLE_MAX + 1], b[HANDLE_MAX + 1], why[160];
    if (handle_normalise(h1, id->opts.country, a, sizeof a, why, sizeof why) != 0) {
        return iddb_bad(r, "handle", "'%.80s': %s", h1, why);
    }
    if (handle_normalise(h2, id->opts.country, b, sizeof b, why, sizeof why) != 0) {
        return iddb_bad(r, "handle", "'%.80s': %s", h2, why);
    }
    return idgraph_link(id, a, b, p, IDGRAPH_AGENT, force, r);
}

int identity_unlink(struct identity *id, int64_t link, const char *h1, const char *h2,
                    const char *by, const char *reason, struct identity_result *r)
{
    assert(identity_in_transaction(id));
    memset(r, 0, sizeof *r);
    char a[HANDLE_MAX + 1], b[HANDLE_MAX + 1], state[16] = "", why[160];
    int rc;
    if (link > 0) {
        sqlite3_stmt *st = id->st[IDDB_Q_LINK_BY_ID];
        sqlite3_bind_int64(st, 1, link);
        rc = iddb_row(id, IDDB_Q_LINK_BY_ID);
        if (rc == IDENTITY_OK) {
            iddb_col(st, 0, a, sizeof a);
            iddb_col(st, 1, b, sizeof b);
            iddb_col(st, 2, state, sizeof state);
            sqlite3_reset(st);
        }
    } else {
        if (handle_normalise(h1, id->opts.country, a, sizeof a, why, sizeof why) != 0) {
            return iddb_bad(r, "handle", "'%.80s': %s", h1, why);
        }
        if (handle_normalise(h2, id->opts.country, b, sizeof b, why, sizeof why) != 0) {
            return iddb_bad(r, "handle", "'%.80s': %s", h2, why);
        }
        sqlite3_stmt *st = id->st[IDDB_Q_LINK_GET];
        bool ordered = strcmp(a, b) < 0;
        iddb_text(st, 1, ordered ? a : b);
        iddb_text(st, 2, ordered ? b : a);
        rc = iddb_row(id, IDDB_Q_LINK_GET);
        if (rc == IDENTITY_OK) {
            link = sqlite3_column_int64(st, 0);
            iddb_col(st, 1, state, sizeof state);
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
    sqlite3_stmt *st = id->st[IDDB_Q_LINK_REMOVE];
    sqlite3_bind_int64(st, 1, link);
    iddb_text(st, 2, by ? by : "unknown");
    iddb_text(st, 3, reason);
    sqlite3_bind_int64(st, 4, (int64_t)now);
    rc = iddb_run(id, IDDB_Q_LINK_REMOVE);
    if (rc == IDENTITY_OK) {
        rc = iddb_customer_get(id, a, r->customer, NULL);
    }
    if (rc == IDENTITY_OK) {
        rc = idgraph_split(id, r->customer, now, r);
    }
    return rc;
}

/* -- envelopes ----------------------------------------------------------- */

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
    return rc == 0 ? IDENTITY_OK : iddb_bad(r, "envelope", "no room for customer and conversation");
}

int identity_assign(struct identity *id, struct env *e, struct identity_result *r)
{
    assert(identity_in_transaction(id));
    r->customer[0] = r->conversation[0] = r->other[0] = '\0';
    r->field[0] = r->reason[0] = '\0';
    r->link = 0;
    r->replay = r->merged = false;
    r->parts = 0;
    /* A copy: stamping the envelope may move its strings. */
    char eid[ENV_MAX_SHORT + 1];
    snprintf(eid, sizeof eid, "%s", env_get(e, ENV_ID));
    bool event = strcmp(env_get(e, ENV_DIR), "event") == 0;
    char h[HANDLE_MAX + 1] = "";
    enum env_key key = ENV_NKEYS;

    /* Seen before: the same answer, nothing written. */
    sqlite3_stmt *st = id->st[IDDB_Q_PROC_GET];
    iddb_text(st, 1, eid);
    int rc = iddb_row(id, IDDB_Q_PROC_GET);
    if (rc == IDENTITY_OK) {
        iddb_col(st, 0, r->customer, sizeof r->customer);
        iddb_col(st, 1, r->conversation, sizeof r->conversation);
        sqlite3_reset(st);
        r->replay = true;
        id->counts.replays++;
        if (!event) {
            struct identity_result tmp;
            bool is_id;
            if (idenv_message_handle(id, e, h, &key, &is_id, &tmp) != IDENTITY_OK) {
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
    rc = event ? idenv_event(id, e, r) : idenv_message(id, e, h, &key, r);
    if (rc == IDENTITY_OK) {
        rc = s_stamp(e, r, key, h);
    }
    if (rc == IDENTITY_OK) {
        st = id->st[IDDB_Q_PROC_PUT];
        iddb_text(st, 1, eid);
        iddb_text(st, 2, r->customer);
        iddb_text(st, 3, r->conversation);
        sqlite3_bind_int64(st, 4, (int64_t)e->ts);
        rc = iddb_run(id, IDDB_Q_PROC_PUT);
    }
    id->in_envelope = false;
    if (rc != IDENTITY_OK) {
        /* Undone: what the caches learnt from this envelope goes too
         * (before its first write they learnt only what was there). */
        if (id->savepoint) {
            iddb_run(id, IDDB_Q_UNDO);
            iddb_cache_clear(id);
        }
        idconv_forget(id, r->customer);
    } else {
        id->counts.assigned++;
    }
    if (id->savepoint) {
        id->savepoint = false;
        int rel = iddb_run(id, IDDB_Q_RELEASE);
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
        rc = iddb_customer_live(id, what, out);
    } else {
        char h[HANDLE_MAX + 1], why[160];
        if (handle_normalise(what, id->opts.country, h, sizeof h, why, sizeof why) != 0) {
            return iddb_bad(r, "handle", "'%.80s': %s", what, why);
        }
        rc = iddb_customer_get(id, h, out, NULL);
    }
    if (rc == IDENTITY_NOT_FOUND) {
        snprintf(r->reason, sizeof r->reason, "no customer for %.80s", what);
    }
    return rc;
}

static void s_iso(uint64_t ms, char *out, size_t n)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
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
    struct idgraph_strs verified = { 0 };
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
    if ((rc = idgraph_verified(id, c, &verified)) != IDENTITY_OK) {
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
    idgraph_strs_free(&verified);
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
        return iddb_dberr(id, rc, sql);
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
    int rc = idconv_save_all(id);
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
    iddb_cache_clear(id);
    return rc;
}
