/* identity_stage — omni-identity, the filter: every envelope is given its
 * customer and conversation (identity_assign) inside a transaction that is
 * group committed (--batch envelopes or --batch-ms, whichever comes first);
 * envelopes are held until their commit and then passed on in order. A
 * lost commit assigns the held envelopes again. */
#include "identity.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include "log.h"

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
