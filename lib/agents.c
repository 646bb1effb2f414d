/* agents — the agents file and the assignment of queued conversations to
 * agents; see agents.h and the format at the top of examples/agents.conf. */
#include "agents.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_QUEUES 64           /* queues an agents file may name (a bit each) */
#define MAX_CAPACITY 1000       /* conversations one agent may hold */

/* One agent, as the file says. */
struct agent {
    char *name;                 /* "marina" */
    uint64_t queues;            /* a bit per queue of the file */
    int capacity;               /* conversations at once */
    struct rules_hours *hours;  /* working hours, or NULL: any time */
    bool owns_hours;            /* hours were written inline */
    int line;                   /* where it was written */
};

struct agents_conf {
    struct rules_cal cal;       /* zone, holidays, named hours */
    struct agent *agent;        /* agents in file order */
    size_t nagent;              /* how many */
    char *queue[MAX_QUEUES];    /* queue names, in order of first mention */
    size_t nqueue;              /* how many */
};

struct agents {
    struct agents_conf *conf;   /* the file, or NULL */
    int *load;                  /* conversations per agent */
    enum agents_presence *presence;/* per agent */
    int rr[MAX_QUEUES];         /* per queue: the agent it went to last (round robin) */
    struct agents_conv **bucket;/* hash of conversations by key */
    size_t nbucket;             /* a power of two */
    size_t nconv;               /* conversations */
    struct agents_conv **wait;  /* queued conversations, in no order */
    size_t nwait;               /* how many */
    size_t capwait;             /* allocated */
    struct agents_conv **scratch;/* a copy of wait, sorted while draining */
    uint64_t seq;               /* next join order */
    agents_changed_fn *watch;   /* told of every change, or NULL */
    void *watch_arg;            /* its argument */
};

/* ---- the file ------------------------------------------------------------ */

static int s_queue_index(struct agents_conf *c, const char *name, bool add)
{
    for (size_t i = 0; i < c->nqueue; i++) {
        if (strcmp(c->queue[i], name) == 0) {
            return (int)i;
        }
    }
    if (!add || c->nqueue == MAX_QUEUES) {
        return -1;
    }
    if ((c->queue[c->nqueue] = strdup(name)) == NULL) {
        return -1;
    }
    return (int)c->nqueue++;
}

void agents_conf_destroy(struct agents_conf **cp)
{
    if (cp == NULL || *cp == NULL) {
        return;
    }
    struct agents_conf *c = *cp;
    for (size_t i = 0; i < c->nagent; i++) {
        free(c->agent[i].name);
        if (c->agent[i].owns_hours) {
            rules_hours_destroy(&c->agent[i].hours);
        }
    }
    free(c->agent);
    for (size_t i = 0; i < c->nqueue; i++) {
        free(c->queue[i]);
    }
    rules_cal_free(&c->cal);
    free(c);
    *cp = NULL;
}

/* queues a, b, c */
static int s_queues(struct agents_conf *c, struct rules_file *f, const struct rules_stmt *st,
                    size_t *i, struct agent *ag)
{
    for (;;) {
        const struct rules_tok *t = *i < st->n ? &st->tok[*i] : NULL;
        if (t == NULL || t->kind != RULES_WORD || !rules_name_valid(t->s)) {
            rules_file_error(f, st, t, 0, "queues needs queue names (e.g. queues financeiro, geral)");
            return -1;
        }
        int q = s_queue_index(c, t->s, true);
        if (q < 0) {
            rules_file_error(f, st, t, 0, "more than %d queues", MAX_QUEUES);
            return -1;
        }
        ag->queues |= 1ull << q;
        (*i)++;
        if (*i >= st->n || !rules_tok_is(&st->tok[*i], ",")) {
            return 0;
        }
        (*i)++;
    }
}

/* agent NAME queues Q[, Q...] [capacity N] [hours NAME|"SPEC"] */
static void s_agent(struct agents_conf *c, struct rules_file *f, const struct rules_stmt *st)
{
    struct agent ag = { 0 };
    ag.capacity = 1;
    const struct rules_tok *t = st->n > 1 ? &st->tok[1] : NULL;
    if (t == NULL || t->kind != RULES_WORD || !rules_name_valid(t->s)) {
        rules_file_error(f, st, t, 0, "agent needs a name (letters, digits, _ - .)");
        return;
    }
    for (size_t k = 0; k < c->nagent; k++) {
        if (strcmp(c->agent[k].name, t->s) == 0) {
            rules_file_error(f, st, t, 0, "a second agent named '%s' (the first is on line %d)", t->s,
                             c->agent[k].line);
            return;
        }
    }
    ag.line = t->line;
    bool queues = false, capacity = false;
    size_t i = 2;
    while (i < st->n) {
        const struct rules_tok *k = &st->tok[i];
        const struct rules_tok *v = i + 1 < st->n ? &st->tok[i + 1] : NULL;
        const char *w = k->kind == RULES_WORD ? k->s : "";
        if (strcmp(w, "queues") == 0 || strcmp(w, "skills") == 0) {
            i++;
            if (queues) {
                rules_file_error(f, st, k, 0, "queues given twice");
                goto fail;
            }
            if (s_queues(c, f, st, &i, &ag) != 0) {
                goto fail;
            }
            queues = true;
        } else if (strcmp(w, "capacity") == 0) {
            char *end = NULL;
            long n = v && v->kind == RULES_WORD ? strtol(v->s, &end, 10) : 0;
            if (v == NULL || end == NULL || end == v->s || *end != '\0' || n < 1 || n > MAX_CAPACITY) {
                rules_file_error(f, st, v, 0, "capacity needs a number 1..%d", MAX_CAPACITY);
                goto fail;
            }
            if (capacity) {
                rules_file_error(f, st, k, 0, "capacity given twice");
                goto fail;
            }
            ag.capacity = (int)n;
            capacity = true;
            i += 2;
        } else if (strcmp(w, "hours") == 0) {
            if (ag.hours != NULL) {
                rules_file_error(f, st, k, 0, "hours given twice");
                goto fail;
            }
            ag.hours = rules_cal_hours(&c->cal, f, st, v, &ag.owns_hours);
            if (ag.hours == NULL) {
                goto fail;
            }
            i += 2;
        } else {
            rules_file_error(f, st, k, 0, "unexpected '%s' (expected queues, capacity or hours)", k->s);
            goto fail;
        }
    }
    if (!queues) {
        rules_file_error(f, st, NULL, 0, "agent %s needs its queues (e.g. queues geral)", t->s);
        goto fail;
    }
    struct agent *grown = realloc(c->agent, (c->nagent + 1) * sizeof *grown);
    if (grown == NULL || (ag.name = strdup(t->s)) == NULL) {
        if (grown != NULL) {
            c->agent = grown;
        }
        rules_file_error(f, st, t, 0, "out of memory");
        goto fail;
    }
    c->agent = grown;
    c->agent[c->nagent++] = ag;
    return;
fail:
    if (ag.owns_hours) {
        rules_hours_destroy(&ag.hours);
    }
}

static struct agents_conf *s_conf_build(struct rules_file *f)
{
    struct agents_conf *c = calloc(1, sizeof *c);
    if (c == NULL) {
        buf_printf(f->msgs, "%s: out of memory\n", f->name);
        f->errors++;
        return NULL;
    }
    rules_cal_read(&c->cal, f);
    for (size_t i = 0; i < f->nstmt; i++) {
        const struct rules_stmt *st = &f->stmt[i];
        if (rules_cal_is_stmt(st)) {
            continue;
        }
        const struct rules_tok *t = &st->tok[0];
        if (t->kind == RULES_WORD && strcmp(t->s, "agent") == 0) {
            s_agent(c, f, st);
        } else {
            rules_file_error(f, st, t, 0, "unknown statement '%s' (expected agent, hours, holiday or timezone)",
                             t->s);
        }
    }
    if (f->errors > 0) {
        agents_conf_destroy(&c);
    }
    return c;
}

struct agents_conf *agents_conf_parse(const char *name, const char *text, size_t n, struct buf *msgs)
{
    struct rules_file f;
    struct agents_conf *c = NULL;
    if (rules_file_parse(&f, name, text, n, msgs) == 0) {
        c = s_conf_build(&f);
    }
    rules_file_free(&f);
    return c;
}

struct agents_conf *agents_conf_load(const char *path, struct buf *msgs)
{
    struct rules_file f;
    struct agents_conf *c = NULL;
    if (rules_file_read(&f, path, msgs) == 0) {
        c = s_conf_build(&f);
    }
    rules_file_free(&f);
    return c;
}

bool agents_conf_serves(const struct agents_conf *c, const char *queue)
{
    for (size_t q = 0; c != NULL && q < c->nqueue; q++) {
        if (strcmp(c->queue[q], queue) == 0) {
            for (size_t i = 0; i < c->nagent; i++) {
                if (c->agent[i].queues >> q & 1) {
                    return true;
                }
            }
        }
    }
    return false;
}

size_t agents_conf_count(const struct agents_conf *c)
{
    return c ? c->nagent : 0;
}

/* ---- conversations ------------------------------------------------------- */

static void s_changed(struct agents *a, enum agents_change what, struct agents_conv *c)
{
    if (a->watch != NULL) {
        a->watch(a->watch_arg, what, c);
    }
}

void agents_watch(struct agents *a, agents_changed_fn *fn, void *arg)
{
    a->watch = fn;
    a->watch_arg = arg;
}

struct agents *agents_new(void)
{
    struct agents *a = calloc(1, sizeof *a);
    if (a == NULL) {
        return NULL;
    }
    a->nbucket = 1024;
    a->bucket = calloc(a->nbucket, sizeof *a->bucket);
    if (a->bucket == NULL) {
        free(a);
        return NULL;
    }
    for (size_t q = 0; q < MAX_QUEUES; q++) {
        a->rr[q] = -1;
    }
    return a;
}

static void s_conv_free(struct agents_conv *c)
{
    free(c->key);
    free(c->queue);
    free(c->rule);
    free(c->reason);
    free(c->customer);
    free(c);
}

void agents_destroy(struct agents **ap)
{
    if (ap == NULL || *ap == NULL) {
        return;
    }
    struct agents *a = *ap;
    for (size_t b = 0; b < a->nbucket; b++) {
        struct agents_conv *c = a->bucket[b];
        while (c != NULL) {
            struct agents_conv *next = c->next;
            s_conv_free(c);
            c = next;
        }
    }
    free(a->bucket);
    free(a->wait);
    free(a->scratch);
    free(a->load);
    free(a->presence);
    agents_conf_destroy(&a->conf);
    free(a);
    *ap = NULL;
}

/* FNV-1a. */
static size_t s_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s != '\0'; s++) {
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    }
    return (size_t)h;
}

struct agents_conv *agents_find(struct agents *a, const char *key)
{
    for (struct agents_conv *c = a->bucket[s_hash(key) & (a->nbucket - 1)]; c != NULL; c = c->next) {
        if (strcmp(c->key, key) == 0) {
            return c;
        }
    }
    return NULL;
}

static void s_grow(struct agents *a)
{
    size_t nb = a->nbucket * 2;
    struct agents_conv **b = calloc(nb, sizeof *b);
    if (b == NULL) {
        return;                 /* longer chains, still correct */
    }
    for (size_t i = 0; i < a->nbucket; i++) {
        struct agents_conv *c = a->bucket[i];
        while (c != NULL) {
            struct agents_conv *next = c->next;
            size_t k = s_hash(c->key) & (nb - 1);
            c->next = b[k];
            b[k] = c;
            c = next;
        }
    }
    free(a->bucket);
    a->bucket = b;
    a->nbucket = nb;
}

/* A new conversation of key, in state new; NULL when out of memory. */
static struct agents_conv *s_conv_new(struct agents *a, const char *key, bool by_handle)
{
    struct agents_conv *c = calloc(1, sizeof *c);
    if (c == NULL || (c->key = strdup(key)) == NULL) {
        free(c);
        return NULL;
    }
    c->by_handle = by_handle;
    c->state = RULES_NEW;
    c->agent = -1;
    c->qidx = -1;
    if (a->nconv >= a->nbucket) {
        s_grow(a);
    }
    size_t k = s_hash(key) & (a->nbucket - 1);
    c->next = a->bucket[k];
    a->bucket[k] = c;
    a->nconv++;
    return c;
}

struct agents_conv *agents_get(struct agents *a, const char *key, bool by_handle)
{
    struct agents_conv *c = agents_find(a, key);
    if (c != NULL) {
        return c;
    }
    c = s_conv_new(a, key, by_handle);
    if (c != NULL) {
        s_changed(a, AGENTS_CONV, c);
    }
    return c;
}

void agents_touch(struct agents *a, struct agents_conv *c, uint64_t ms, const char *channel,
                  const char *customer)
{
    if (ms > c->last_ms) {
        c->last_ms = ms;
    }
    if (channel != NULL && strncmp(c->channel, channel, sizeof c->channel) != 0) {
        snprintf(c->channel, sizeof c->channel, "%s", channel);
    }
    if (customer != NULL && (c->customer == NULL || strcmp(c->customer, customer) != 0)) {
        char *s = strdup(customer);
        if (s != NULL) {
            free(c->customer);
            c->customer = s;
        }
    }
    s_changed(a, AGENTS_CONV, c);
}

static void s_unwait(struct agents *a, struct agents_conv *c)
{
    if (c->state != RULES_QUEUED) {
        return;
    }
    assert(c->wait_idx < a->nwait && a->wait[c->wait_idx] == c);
    a->wait[c->wait_idx] = a->wait[--a->nwait];
    a->wait[c->wait_idx]->wait_idx = c->wait_idx;
}

/* Takes the conversation out of its queue or off its agent. */
static void s_leave(struct agents *a, struct agents_conv *c)
{
    s_unwait(a, c);
    if (c->state == RULES_ASSIGNED && c->agent >= 0 && a->load != NULL) {
        a->load[c->agent]--;
    }
    c->agent = -1;
    c->qidx = -1;
    free(c->queue);
    c->queue = NULL;
}

void agents_to_bot(struct agents *a, struct agents_conv *c)
{
    s_leave(a, c);
    c->state = RULES_INBOT;
    s_changed(a, AGENTS_CONV, c);
}

/* Replaces *dst with a copy of s (NULL: none). */
static int s_dup(char **dst, const char *s)
{
    char *d = NULL;
    if (s != NULL && (d = strdup(s)) == NULL) {
        return -1;
    }
    free(*dst);
    *dst = d;
    return 0;
}

/* Puts c in the waiting list, joined at seq. */
static int s_wait_at(struct agents *a, struct agents_conv *c, uint64_t seq)
{
    if (a->nwait == a->capwait) {
        size_t cap = a->capwait ? a->capwait * 2 : 64;
        struct agents_conv **w = realloc(a->wait, cap * sizeof *w);
        struct agents_conv **s = realloc(a->scratch, cap * sizeof *s);
        if (w != NULL) {
            a->wait = w;
        }
        if (s != NULL) {
            a->scratch = s;
        }
        if (w == NULL || s == NULL) {
            return -1;
        }
        a->capwait = cap;
    }
    c->wait_idx = a->nwait;
    a->wait[a->nwait++] = c;
    c->state = RULES_QUEUED;
    c->seq = seq;
    if (seq >= a->seq) {
        a->seq = seq + 1;
    }
    return 0;
}

/* Puts c at the end of the waiting list. */
static int s_wait(struct agents *a, struct agents_conv *c)
{
    return s_wait_at(a, c, a->seq);
}

int agents_enqueue(struct agents *a, struct agents_conv *c, const char *queue, int64_t priority,
                   const char *rule, const char *reason, const char *id)
{
    s_leave(a, c);
    c->state = RULES_NEW;
    if (s_dup(&c->queue, queue) != 0 || s_dup(&c->rule, rule) != 0 || s_dup(&c->reason, reason) != 0) {
        return -1;
    }
    c->priority = priority;
    c->qidx = a->conf ? s_queue_index(a->conf, queue, false) : -1;
    snprintf(c->first_id, sizeof c->first_id, "%s", id ? id : "");
    c->assigns = 0;
    int rc = s_wait(a, c);
    s_changed(a, AGENTS_CONV, c);
    return rc;
}

int agents_update(struct agents *a, struct agents_conv *c, int64_t priority, const char *reason)
{
    c->priority = priority;
    int rc = reason != NULL ? s_dup(&c->reason, reason) : 0;
    s_changed(a, AGENTS_CONV, c);
    return rc;
}

void agents_close(struct agents *a, struct agents_conv **cp)
{
    struct agents_conv *c = *cp;
    if (c == NULL) {
        return;
    }
    s_leave(a, c);
    s_changed(a, AGENTS_GONE, c);
    struct agents_conv **pp = &a->bucket[s_hash(c->key) & (a->nbucket - 1)];
    while (*pp != c) {
        pp = &(*pp)->next;
    }
    *pp = c->next;
    a->nconv--;
    s_conv_free(c);
    *cp = NULL;
}

size_t agents_expire(struct agents *a, uint64_t before_ms)
{
    size_t n = 0;
    for (size_t b = 0; b < a->nbucket; b++) {
        struct agents_conv *c = a->bucket[b];
        while (c != NULL) {
            struct agents_conv *next = c->next;
            if (c->last_ms < before_ms) {
                agents_close(a, &c);
                n++;
            }
            c = next;
        }
    }
    return n;
}

/* ---- the file in force --------------------------------------------------- */

void agents_set_conf(struct agents *a, struct agents_conf **confp)
{
    struct agents_conf *conf = confp ? *confp : NULL;
    size_t n = conf ? conf->nagent : 0;
    size_t nold = a->conf ? a->conf->nagent : 0;
    int *load = calloc(n + 1, sizeof *load);
    enum agents_presence *presence = calloc(n + 1, sizeof *presence);
    int *map = calloc(nold + 1, sizeof *map);
    if (load == NULL || presence == NULL || map == NULL) {
        free(load);
        free(presence);
        free(map);
        agents_conf_destroy(confp);     /* keep the old file */
        return;
    }
    /* Presence by name; the new index of each old agent. */
    for (size_t i = 0; i < nold; i++) {
        map[i] = -1;
        for (size_t k = 0; k < n; k++) {
            if (strcmp(a->conf->agent[i].name, conf->agent[k].name) == 0) {
                map[i] = (int)k;
                presence[k] = a->presence[i];
            }
        }
    }
    /* Conversations follow their agent, or wait again. */
    for (size_t b = 0; b < a->nbucket; b++) {
        for (struct agents_conv *c = a->bucket[b]; c != NULL; c = c->next) {
            if (c->queue != NULL) {
                c->qidx = conf ? s_queue_index(conf, c->queue, false) : -1;
            }
            if (c->state != RULES_ASSIGNED) {
                continue;
            }
            int k = c->agent >= 0 && (size_t)c->agent < nold ? map[c->agent] : -1;
            c->agent = k;
            if (k >= 0) {
                load[k]++;
                continue;
            }
            if (s_wait(a, c) != 0) {
                c->state = RULES_QUEUED;    /* out of memory: at least not assigned */
            }
            s_changed(a, AGENTS_CONV, c);
        }
    }
    free(map);
    free(a->load);
    free(a->presence);
    agents_conf_destroy(&a->conf);
    a->load = load;
    a->presence = presence;
    a->conf = conf;
    for (size_t q = 0; q < MAX_QUEUES; q++) {
        a->rr[q] = -1;
    }
    if (confp != NULL) {
        *confp = NULL;
    }
    s_changed(a, AGENTS_AGENTS, NULL);
}

/* ---- restoring ----------------------------------------------------------- */

int agents_restore(struct agents *a, const struct agents_saved *s)
{
    if (agents_find(a, s->key) != NULL) {
        return -1;
    }
    struct agents_conv *c = s_conv_new(a, s->key, s->by_handle);
    if (c == NULL) {
        return -1;
    }
    if (s_dup(&c->queue, s->queue) != 0 || s_dup(&c->rule, s->rule) != 0 || s_dup(&c->reason, s->reason) != 0
        || s_dup(&c->customer, s->customer) != 0) {
        agents_close(a, &c);
        return -1;
    }
    c->priority = s->priority;
    snprintf(c->channel, sizeof c->channel, "%s", s->channel ? s->channel : "");
    snprintf(c->first_id, sizeof c->first_id, "%s", s->first_id ? s->first_id : "");
    c->assigns = s->assigns;
    c->last_ms = s->last_ms;
    c->seq = s->seq;
    if (s->seq >= a->seq) {
        a->seq = s->seq + 1;
    }
    if (c->queue == NULL || (s->state != RULES_QUEUED && s->state != RULES_ASSIGNED)) {
        c->state = s->state == RULES_INBOT ? RULES_INBOT : RULES_NEW;
        free(c->queue);
        c->queue = NULL;
        return 0;
    }
    c->qidx = a->conf ? s_queue_index(a->conf, c->queue, false) : -1;
    int k = s->state == RULES_ASSIGNED && s->agent != NULL ? agents_find_agent(a, s->agent) : -1;
    if (s->state == RULES_ASSIGNED) {
        /* Its agent, or a stranded one agents_restore_end puts in line. */
        c->state = RULES_ASSIGNED;
        c->agent = k;
        if (k >= 0) {
            a->load[k]++;
        }
        return 0;
    }
    if (s_wait_at(a, c, s->seq) != 0) {
        agents_close(a, &c);
        return -1;
    }
    return 0;
}

/* Earlier seq first. */
static int s_cmp_seq(const void *x, const void *y)
{
    const struct agents_conv *a = *(struct agents_conv *const *)x;
    const struct agents_conv *b = *(struct agents_conv *const *)y;
    return (a->seq > b->seq) - (a->seq < b->seq);
}

long agents_restore_end(struct agents *a)
{
    size_t n = 0, cap = 0;
    struct agents_conv **v = NULL;
    for (size_t b = 0; b < a->nbucket; b++) {
        for (struct agents_conv *c = a->bucket[b]; c != NULL; c = c->next) {
            if (c->state != RULES_ASSIGNED || c->agent >= 0) {
                continue;
            }
            if (n == cap) {
                cap = cap ? cap * 2 : 16;
                struct agents_conv **g = realloc(v, cap * sizeof *g);
                if (g == NULL) {
                    free(v);
                    return -1;
                }
                v = g;
            }
            v[n++] = c;
        }
    }
    if (n > 0) {
        qsort(v, n, sizeof *v, s_cmp_seq);
    }
    long rc = (long)n;
    for (size_t i = 0; i < n; i++) {
        if (s_wait(a, v[i]) != 0) {
            v[i]->state = RULES_QUEUED;    /* out of memory: at least not assigned */
            rc = -1;
        }
        s_changed(a, AGENTS_CONV, v[i]);
    }
    free(v);
    return rc;
}

/* ---- agents -------------------------------------------------------------- */

int agents_find_agent(const struct agents *a, const char *name)
{
    if (strncmp(name, "agent:", 6) == 0) {
        name += 6;
    }
    for (size_t i = 0; a->conf != NULL && i < a->conf->nagent; i++) {
        if (strcmp(a->conf->agent[i].name, name) == 0) {
            return (int)i;
        }
    }
    return -1;
}

int agents_presence(struct agents *a, const char *name, enum agents_presence p)
{
    int i = agents_find_agent(a, name);
    if (i < 0) {
        return -1;
    }
    a->presence[i] = p;
    s_changed(a, AGENTS_AGENTS, NULL);
    return 0;
}

const char *agents_name(const struct agents *a, int agent)
{
    if (a->conf == NULL || agent < 0 || (size_t)agent >= a->conf->nagent) {
        return NULL;
    }
    return a->conf->agent[agent].name;
}

int agents_load(const struct agents *a, int agent)
{
    return agents_name(a, agent) ? a->load[agent] : 0;
}

int agents_capacity(const struct agents *a, int agent)
{
    return agents_name(a, agent) ? a->conf->agent[agent].capacity : 0;
}

size_t agents_count(const struct agents *a)
{
    return a->conf ? a->conf->nagent : 0;
}

enum agents_presence agents_status(const struct agents *a, int agent)
{
    return agents_name(a, agent) ? a->presence[agent] : AGENTS_UNKNOWN;
}

size_t agents_queue_count(const struct agents *a)
{
    return a->conf ? a->conf->nqueue : 0;
}

const char *agents_turn(const struct agents *a, size_t q, const char **agent)
{
    *agent = NULL;
    if (q >= agents_queue_count(a)) {
        return NULL;
    }
    *agent = agents_name(a, a->rr[q]);
    return a->conf->queue[q];
}

void agents_set_turn(struct agents *a, const char *queue, const char *agent)
{
    int q = a->conf ? s_queue_index(a->conf, queue, false) : -1;
    int k = agents_find_agent(a, agent);
    if (q >= 0 && k >= 0) {
        a->rr[q] = k;
    }
}

size_t agents_conversations(const struct agents *a)
{
    return a->nconv;
}

size_t agents_waiting(const struct agents *a)
{
    return a->nwait;
}

static bool s_present(struct agents *a, size_t i, uint64_t ms)
{
    switch (a->presence[i]) {
    case AGENTS_ONLINE:
        return true;
    case AGENTS_OFFLINE:
        return false;
    case AGENTS_UNKNOWN:
        break;
    }
    struct rules_hours *h = a->conf->agent[i].hours;
    return h == NULL || rules_hours_open(h, ms, NULL);
}

/* The least loaded agent free for queue q at ms, ties to the first after
 * the queue's last pick; -1 when none. */
static int s_pick(struct agents *a, int q, uint64_t ms)
{
    size_t n = a->conf->nagent;
    int best = -1;
    for (size_t k = 0; k < n; k++) {
        size_t i = ((size_t)(a->rr[q] + 1) + k) % n;
        const struct agent *ag = &a->conf->agent[i];
        if (!(ag->queues >> q & 1) || a->load[i] >= ag->capacity) {
            continue;
        }
        if (best >= 0 && a->load[i] >= a->load[best]) {
            continue;
        }
        if (s_present(a, i, ms)) {
            best = (int)i;
        }
    }
    if (best >= 0) {
        a->rr[q] = best;
    }
    return best;
}

/* Higher priority first, then the earlier to join. */
static int s_cmp_wait(const void *x, const void *y)
{
    const struct agents_conv *a = *(struct agents_conv *const *)x;
    const struct agents_conv *b = *(struct agents_conv *const *)y;
    if (a->priority != b->priority) {
        return a->priority > b->priority ? -1 : 1;
    }
    return (a->seq > b->seq) - (a->seq < b->seq);
}

size_t agents_drain(struct agents *a, uint64_t ms, agents_assigned_fn *cb, void *arg)
{
    if (a->nwait == 0 || a->conf == NULL || a->conf->nagent == 0) {
        return 0;
    }
    size_t n = a->nwait, given = 0;
    memcpy(a->scratch, a->wait, n * sizeof *a->scratch);
    qsort(a->scratch, n, sizeof *a->scratch, s_cmp_wait);
    uint64_t full = 0;          /* queues found without a free agent */
    for (size_t i = 0; i < n; i++) {
        struct agents_conv *c = a->scratch[i];
        if (c->qidx < 0 || (full >> c->qidx & 1)) {
            continue;
        }
        int ag = s_pick(a, c->qidx, ms);
        if (ag < 0) {
            full |= 1ull << c->qidx;
            continue;
        }
        s_unwait(a, c);
        c->state = RULES_ASSIGNED;
        c->agent = ag;
        c->assigns++;
        a->load[ag]++;
        given++;
        s_changed(a, AGENTS_CONV, c);
        if (cb != NULL) {
            cb(arg, c);
        }
    }
    if (given > 0) {
        s_changed(a, AGENTS_AGENTS, NULL);     /* the queues' turns moved */
    }
    return given;
}
