/* routehold — omni-route --state: envelopes held until their decisions
 * commit; see routehold.h. */
#include "routehold.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"

#define PRUNE_CHUNK 1000        /* decisions deleted per transaction */
#define PRUNE_EVERY_MAX 60000   /* ms between prunes, at most (keep_ms / 10 when shorter) */
#define PRUNE_EVERY_MIN 100     /* ms between prunes, at least */
#define RETRY_MS 100            /* a failed commit is tried again after this */

/* One held envelope. */
struct slot {
    struct env *e;              /* the copy (allocated once, reused) */
    enum routehold_kind kind;   /* what the decision log says of it */
};

struct routehold {
    struct routestate *s;       /* the database */
    struct agents *a;           /* the state it follows */
    struct routehold_opts o;    /* batch, batch_ms, keep_ms */
    struct slot *held;          /* the batch, in order */
    size_t nheld;               /* in use */
    size_t capheld;             /* allocated */
    char **changed;             /* keys of conversations changed since the last commit */
    size_t nchanged;            /* in use */
    size_t capchanged;          /* allocated */
    bool agents_changed;        /* presence or turns changed since the last commit */
    uint64_t since;             /* monotonic ms of the batch's first envelope or change */
    uint64_t next_prune;        /* monotonic ms of the next prune */
    struct buf route;           /* a recalled route map */
    struct stage_ctx *ctx;      /* the last one seen, for routehold_flush from fini */
    struct routehold_counts n;  /* counters */
    struct log_limit limit;     /* rate limit of database trouble */
};

static bool s_empty(const struct routehold *h)
{
    return h->nheld == 0 && h->nchanged == 0 && !h->agents_changed;
}

/* agents_watch's callback: lists what changed, for the next commit. */
static void s_changed(void *arg, enum agents_change what, struct agents_conv *c)
{
    struct routehold *h = arg;
    if (s_empty(h)) {
        h->since = stage_mono_ms();
    }
    if (what == AGENTS_AGENTS) {
        h->agents_changed = true;
        return;
    }
    if (c->unsaved) {
        return;                 /* listed already (a closed one: its key is) */
    }
    if (h->nchanged == h->capchanged) {
        size_t cap = h->capchanged ? h->capchanged * 2 : 256;
        char **g = realloc(h->changed, cap * sizeof *g);
        if (g == NULL) {
            log_limited(&h->limit, LOG_ERROR, "out of memory: conversation %s not saved", c->key);
            return;
        }
        h->changed = g;
        h->capchanged = cap;
    }
    if ((h->changed[h->nchanged] = strdup(c->key)) == NULL) {
        log_limited(&h->limit, LOG_ERROR, "out of memory: conversation %s not saved", c->key);
        return;
    }
    h->nchanged++;
    c->unsaved = true;
}

struct routehold *routehold_new(struct routestate *s, struct agents *a, const struct routehold_opts *o)
{
    struct routehold *h = calloc(1, sizeof *h);
    if (h == NULL) {
        return NULL;
    }
    h->s = s;
    h->a = a;
    h->o = *o;
    agents_watch(a, s_changed, h);
    return h;
}

void routehold_destroy(struct routehold **hp)
{
    struct routehold *h = *hp;
    if (h == NULL) {
        return;
    }
    agents_watch(h->a, NULL, NULL);
    for (size_t i = 0; i < h->capheld; i++) {
        env_destroy(&h->held[i].e);
    }
    free(h->held);
    for (size_t i = 0; i < h->nchanged; i++) {
        free(h->changed[i]);
    }
    free(h->changed);
    buf_free(&h->route);
    free(h);
    *hp = NULL;
}

/* Logs the decision of a held envelope. */
static int s_log(struct routehold *h, const struct slot *sl)
{
    size_t n = 0;
    const void *route = sl->kind == ROUTEHOLD_ROUTED ? env_raw(sl->e, ENV_ROUTE, &n) : NULL;
    return routestate_decide(h->s, env_get(sl->e, ENV_ID), stage_now_ms(), route, n);
}

/* Opens the batch's transaction. After one was lost (rolled back), the
 * decisions of what is held are logged again first. */
static int s_open(struct routehold *h)
{
    if (routestate_in_transaction(h->s)) {
        return ROUTESTATE_OK;
    }
    int rc = routestate_begin(h->s);
    for (size_t i = 0; rc == ROUTESTATE_OK && i < h->nheld; i++) {
        if (h->held[i].kind != ROUTEHOLD_PLAIN) {
            rc = s_log(h, &h->held[i]);
        }
    }
    if (rc != ROUTESTATE_OK) {
        routestate_rollback(h->s);
    }
    return rc;
}

static void s_trouble(struct routehold *h, const char *what, int rc)
{
    log_limited(&h->limit, LOG_WARN, "%s (%s; %zu envelopes held): trying again", what,
                rc == ROUTESTATE_BUSY ? "database busy" : "database error", h->nheld);
}

int routehold_flush(struct routehold *h, struct stage_ctx *ctx)
{
    if (s_empty(h) && !routestate_in_transaction(h->s)) {
        return 0;
    }
    int rc = s_open(h);
    for (size_t i = 0; rc == ROUTESTATE_OK && i < h->nchanged; i++) {
        struct agents_conv *c = agents_find(h->a, h->changed[i]);
        rc = c != NULL ? routestate_save(h->s, h->a, c) : routestate_drop(h->s, h->changed[i]);
    }
    if (rc == ROUTESTATE_OK && h->agents_changed) {
        rc = routestate_save_agents(h->s, h->a);
    }
    if (rc == ROUTESTATE_OK) {
        rc = routestate_commit(h->s);
    }
    if (rc != ROUTESTATE_OK) {
        /* Start over from the copies and the list rather than trust a
         * half-failed transaction. */
        routestate_rollback(h->s);
        s_trouble(h, "cannot commit the batch", rc);
        if (ctx != NULL) {
            stage_wake_in(ctx, RETRY_MS);
        }
        return -1;
    }
    h->n.commits++;
    for (size_t i = 0; i < h->nchanged; i++) {
        struct agents_conv *c = agents_find(h->a, h->changed[i]);
        if (c != NULL) {
            c->unsaved = false;
        }
        free(h->changed[i]);
    }
    h->nchanged = 0;
    h->agents_changed = false;
    for (size_t i = 0; i < h->nheld; i++) {
        if (ctx != NULL) {
            stage_emit(ctx, h->held[i].e);
        }
        env_clear(h->held[i].e);
    }
    h->nheld = 0;
    return 0;
}

int routehold_begin(struct routehold *h, struct stage_ctx *ctx)
{
    h->ctx = ctx;
    if (h->nheld >= (size_t)h->o.batch && routehold_flush(h, ctx) != 0) {
        return -1;              /* a full batch could not commit: wait */
    }
    int rc = s_open(h);
    if (rc != ROUTESTATE_OK) {
        s_trouble(h, "cannot begin a batch", rc);
        return -1;
    }
    return 0;
}

int routehold_recall(struct routehold *h, struct env *e)
{
    const char *id = env_get(e, ENV_ID);
    bool routed = false;
    if (id == NULL) {
        return 0;
    }
    int rc = routestate_decision(h->s, id, &h->route, &routed);
    if (rc == ROUTESTATE_NOT_FOUND) {
        return 0;
    }
    if (rc != ROUTESTATE_OK) {
        s_trouble(h, "cannot read the decision log", rc);
        return -1;
    }
    struct env_err err;
    if (routed && env_set_raw(e, ENV_ROUTE, h->route.data, h->route.len, &err) != 0) {
        char why[300];
        log_limited(&h->limit, LOG_ERROR, "the logged route of id=%s does not decode (%s): deciding again", id,
                    env_err_str(&err, why, sizeof why));
        return 0;
    }
    h->n.recalled++;
    return 1;
}

enum verdict routehold_hold(struct routehold *h, struct stage_ctx *ctx, const struct env *e,
                            enum routehold_kind kind)
{
    h->ctx = ctx;
    if (env_get(e, ENV_ID) == NULL) {
        kind = ROUTEHOLD_PLAIN;
    }
    if (h->nheld == h->capheld) {
        size_t cap = h->capheld ? h->capheld * 2 : (size_t)h->o.batch + 16;
        struct slot *g = realloc(h->held, cap * sizeof *g);
        if (g == NULL) {
            log_limited(&h->limit, LOG_ERROR, "out of memory holding id=%s", env_get(e, ENV_ID));
            return STAGE_RETRY;
        }
        memset(g + h->capheld, 0, (cap - h->capheld) * sizeof *g);
        h->held = g;
        h->capheld = cap;
    }
    struct slot *sl = &h->held[h->nheld];
    if (sl->e == NULL && (sl->e = env_new()) == NULL) {
        log_limited(&h->limit, LOG_ERROR, "out of memory holding id=%s", env_get(e, ENV_ID));
        return STAGE_RETRY;
    }
    if (kind != ROUTEHOLD_PLAIN && routestate_in_transaction(h->s)) {
        /* Logged first: when the copy below fails, the retry recalls it. */
        size_t n = 0;
        const void *route = kind == ROUTEHOLD_ROUTED ? env_raw(e, ENV_ROUTE, &n) : NULL;
        int rc = routestate_decide(h->s, env_get(e, ENV_ID), stage_now_ms(), route, n);
        if (rc != ROUTESTATE_OK) {
            /* Lost with its transaction: s_open logs it again from the copy. */
            routestate_rollback(h->s);
            s_trouble(h, "cannot log a decision", rc);
        }
    }
    if (env_copy(sl->e, e) != 0) {
        env_clear(sl->e);
        log_limited(&h->limit, LOG_ERROR, "out of memory holding id=%s", env_get(e, ENV_ID));
        return STAGE_RETRY;
    }
    if (s_empty(h)) {
        h->since = stage_mono_ms();
    }
    sl->kind = kind;
    if (h->nheld++ == 0 && ctx != NULL) {
        stage_wake_in(ctx, h->o.batch_ms);
    }
    return STAGE_HELD;
}

void routehold_done(struct routehold *h, struct stage_ctx *ctx)
{
    if (h->nheld >= (size_t)h->o.batch) {
        routehold_flush(h, ctx);    /* when it fails, the next envelope or tick tries again */
    }
}

/* Deletes decisions past keep_ms, a chunk at a time, between batches. */
static void s_prune(struct routehold *h, struct stage_ctx *ctx)
{
    uint64_t mono = stage_mono_ms();
    if (mono < h->next_prune || !s_empty(h) || routestate_in_transaction(h->s)) {
        return;
    }
    int64_t every = h->o.keep_ms / 10;
    every = every > PRUNE_EVERY_MAX ? PRUNE_EVERY_MAX : every < PRUNE_EVERY_MIN ? PRUNE_EVERY_MIN : every;
    uint64_t now = stage_now_ms();
    uint64_t before = now > (uint64_t)h->o.keep_ms ? now - (uint64_t)h->o.keep_ms : 0;
    int rc;
    int64_t n = routestate_prune(h->s, before, PRUNE_CHUNK, &rc);
    if (n < 0) {
        log_limited(&h->limit, LOG_WARN, "cannot prune old decisions (%s): trying later",
                    rc == ROUTESTATE_BUSY ? "database busy" : "database error");
        h->next_prune = mono + 1000;
        return;
    }
    h->n.pruned += (uint64_t)n;
    if (n >= PRUNE_CHUNK) {
        h->next_prune = mono + 50;  /* more to do: soon, input goes first */
        stage_wake_in(ctx, 50);
    } else {
        h->next_prune = mono + (uint64_t)every;
    }
}

void routehold_tick(struct routehold *h, struct stage_ctx *ctx)
{
    h->ctx = ctx;
    if (s_empty(h) && !routestate_in_transaction(h->s)) {
        s_prune(h, ctx);
        return;
    }
    uint64_t age = stage_mono_ms() - h->since;
    if (age >= (uint64_t)h->o.batch_ms || stage_stopping(ctx) || h->nheld >= (size_t)h->o.batch) {
        routehold_flush(h, ctx);    /* asks for its own retry when it fails */
    } else {
        stage_wake_in(ctx, h->o.batch_ms - (int64_t)age);
    }
}

size_t routehold_held(const struct routehold *h)
{
    return h->nheld;
}

const struct routehold_counts *routehold_counts(const struct routehold *h)
{
    return &h->n;
}
