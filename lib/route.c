/* route — omni-route, the stage and its `explain` command; see route.h.
 *
 * For each inbound message: the conversation's key (its `conversation`,
 * or `from` when identity did not run) finds what the stage knows of it.
 * A conversation in a queue or with an agent stays there (only `keep`
 * rules may change its priority and reason); any other goes through the
 * rules, first match wins, to the bot or a queue. Queued conversations are
 * given to agents (lib/agents.c) as soon as one is free; one given an agent
 * later than its message gets an `assign` event of its own. Close,
 * presence and handoff (from omni-bot, when its events come back to --in)
 * events change the state and pass through; everything else passes
 * untouched. Hours are checked at the envelope's ts, so a replay
 * decides as the original run did.
 *
 * With --state the conversations, agents' presence and every decision are
 * kept in sqlite (lib/routestate.c) and loaded at start; envelopes are held
 * until their decision commits (lib/routehold.c), and an id decided before
 * (a re-send after a crash) gets the route it had, without going through
 * the rules or changing the state again. Without --state the state lives
 * in memory only. */
#include "route.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agents.h"
#include "buf.h"
#include "json.h"
#include "log.h"
#include "mp.h"
#include "routehold.h"
#include "routestate.h"
#include "rules.h"
#include "ulid.h"

#define EXPIRE_EVERY_MS 60000   /* how often idle conversations are looked for */
#define BUSY_MS 250             /* --state: wait this long for a lock, then retry */

struct route_conf {
    const char *rules;          /* --rules */
    const char *agents;         /* --agents */
    int64_t idle_ms;            /* --idle */
    int64_t match_limit;        /* --match-limit */
    const char *state;          /* --state: the sqlite file, or NULL (memory only) */
    int64_t batch;              /* --batch: envelopes per commit */
    int64_t batch_ms;           /* --batch-ms: longest an envelope waits for its commit */
    int64_t keep_ms;            /* --decisions-keep */
    bool help;                  /* explain --help */
};

/* Counters, for the log line at exit. */
struct route_counts {
    uint64_t bot;               /* messages to the bot */
    uint64_t queued;            /* messages to a queue, no agent free */
    uint64_t assigned;          /* messages to a queue with an agent */
    uint64_t sticky;            /* of those, conversations already there */
    uint64_t later;             /* assign events for conversations that waited */
    uint64_t closed;            /* conversations closed by events */
    uint64_t expired;           /* conversations forgotten when idle */
};

struct route {
    const struct route_conf *conf;  /* options */
    struct rules *rules;            /* the rules in force */
    struct agents *agents;          /* agents and conversations */
    struct routestate *store;       /* --state, or NULL */
    struct routehold *hold;         /* with --state: the batch held until it commits */
    struct stage_ctx *ctx;          /* while handling: where assign events go (NULL: explain) */
    struct buf *why;                /* explain: the story of the envelope */
    const struct agents_conv *current;/* the conversation being routed */
    struct env *ev;                 /* an assign event being built */
    struct ulid_gen ids;            /* ids of events with no parent */
    uint64_t clock_ts;              /* latest envelope ts seen */
    uint64_t clock_mono;            /* monotonic ms when it was seen */
    uint64_t next_expire;           /* stream ms of the next idle sweep */
    bool dirty;                     /* agents may have become free */
    struct route_counts n;          /* counters */
    struct log_limit limit;         /* rate limit of per-message warnings */
};

/* ---- loading ------------------------------------------------------------- */

/* Logs the lines of msgs: warnings as such, the rest as errors. */
static void s_log_msgs(const struct buf *msgs)
{
    const char *p = msgs->data;
    while (p != NULL && *p != '\0') {
        const char *nl = strchr(p, '\n');
        int n = nl ? (int)(nl - p) : (int)strlen(p);
        bool warn = memmem(p, (size_t)n, ": warning: ", 11) != NULL;
        log_msg(warn ? LOG_WARN : LOG_ERROR, "%.*s", n, p);
        p = nl ? nl + 1 : NULL;
    }
}

static struct rules *s_load_rules(const struct route_conf *conf)
{
    struct buf msgs = { 0 };
    struct rules_opts o = { (uint32_t)conf->match_limit };
    struct rules *r = rules_load(conf->rules, &o, &msgs);
    s_log_msgs(&msgs);
    buf_free(&msgs);
    return r;
}

/* Loads the agents file; *ok is false when it has errors. NULL without
 * --agents. */
static struct agents_conf *s_load_agents(const struct route_conf *conf, bool *ok)
{
    *ok = true;
    if (conf->agents == NULL || conf->agents[0] == '\0') {
        return NULL;
    }
    struct buf msgs = { 0 };
    struct agents_conf *c = agents_conf_load(conf->agents, &msgs);
    s_log_msgs(&msgs);
    buf_free(&msgs);
    *ok = c != NULL;
    return c;
}

/* Warns about queues of the rules no agent serves. */
static void s_cross_check(const struct rules *r, const struct agents_conf *ac, const char *agents)
{
    for (size_t i = 0; ac != NULL && i < rules_count(r); i++) {
        const struct rules_rule *ru = rules_get(r, i);
        if (ru->action == RULES_QUEUE && !agents_conf_serves(ac, ru->queue)) {
            log_msg(LOG_WARN, "%s:%d:1: warning: no agent in %s serves queue '%s': its conversations will wait",
                    rules_name(r), ru->line, agents, ru->queue);
        }
    }
}

static int s_validate(const struct route_conf *conf)
{
    if (conf->rules == NULL || conf->rules[0] == '\0') {
        log_msg(LOG_ERROR, "no rules: give --rules FILE (see examples/rules.conf)");
        return EXIT_USAGE;
    }
    if (conf->match_limit < 1000 || conf->match_limit > 100000000 || conf->idle_ms < 1000) {
        log_msg(LOG_ERROR, "--match-limit must be 1000..100M and --idle at least 1s");
        return EXIT_USAGE;
    }
    return 0;
}

/* The stage's options beyond explain's. */
static int s_validate_stage(const struct route_conf *conf)
{
    int rc = s_validate(conf);
    if (rc == 0 && (conf->batch < 1 || conf->batch > 100000 || conf->batch_ms < 0 || conf->batch_ms > 60000
                    || conf->keep_ms < 1000)) {
        log_msg(LOG_ERROR, "--batch must be 1..100000, --batch-ms at most 1m and --decisions-keep at least 1s");
        rc = EXIT_USAGE;
    }
    return rc;
}

/* ---- decisions ----------------------------------------------------------- */

/* The stream's clock: the latest ts, moved on by the time since. */
static uint64_t s_now(const struct route *r)
{
    if (r->clock_ts == 0) {
        return stage_now_ms();
    }
    return r->clock_ts + (stage_mono_ms() - r->clock_mono);
}

/* Sets route from what c is now (a queue, maybe an agent). */
static int s_set_route(struct route *r, struct env *e, const char *target, const struct agents_conv *c,
                       const char *rule, const char *reason, bool sticky)
{
    struct env_kv kv[7];
    size_t n = 0;
    kv[n++] = (struct env_kv){ .key = "target", .type = ENV_KV_STR, .s = target };
    if (c != NULL && c->queue != NULL) {
        kv[n++] = (struct env_kv){ .key = "queue", .type = ENV_KV_STR, .s = c->queue };
        kv[n++] = (struct env_kv){ .key = "agent", .type = ENV_KV_STR, .s = agents_name(r->agents, c->agent) };
        kv[n++] = (struct env_kv){ .key = "priority", .type = ENV_KV_INT, .i = c->priority };
    }
    kv[n++] = (struct env_kv){ .key = "rule", .type = ENV_KV_STR, .s = rule };
    kv[n++] = (struct env_kv){ .key = "reason", .type = ENV_KV_STR, .s = reason };
    if (sticky) {
        kv[n++] = (struct env_kv){ .key = "sticky", .type = ENV_KV_BOOL, .b = true };
    }
    struct env_err err;
    if (env_set_map(e, ENV_ROUTE, kv, n, &err) != 0) {
        char why[300];
        log_limited(&r->limit, LOG_ERROR, "cannot set route id=%s: %s", env_get(e, ENV_ID) ? env_get(e, ENV_ID) : "-",
                    env_err_str(&err, why, sizeof why));
        return -1;
    }
    return 0;
}

/* An `assign` event for c, which waited and now has an agent. */
static void s_emit_assign(struct route *r, const struct agents_conv *c)
{
    struct env *ev = r->ev;
    const char *agent = agents_name(r->agents, c->agent);
    uint64_t now = s_now(r);
    char id[ULID_LEN + 1], salt[128];
    env_clear(ev);
    if (ulid_valid(c->first_id, strlen(c->first_id))) {
        snprintf(salt, sizeof salt, "assign:%u:%s", c->assigns, agent);
        ulid_derive(c->first_id, salt, id);
    } else if (ulid_next(&r->ids, now, id) != 0) {
        log_limited(&r->limit, LOG_ERROR, "no randomness for an event id: %s", strerror(errno));
        return;
    }
    const struct env_kv meta[] = {
        { .key = "event", .type = ENV_KV_STR, .s = "assign" },
        { .key = "agent", .type = ENV_KV_STR, .s = agent },
        { .key = "queue", .type = ENV_KV_STR, .s = c->queue },
        { .key = "conversation_of", .type = ENV_KV_STR, .s = c->by_handle ? c->key : NULL },
    };
    int rc = 0;
    env_set_uint(ev, ENV_V, ENV_VERSION);
    env_set_uint(ev, ENV_TS, now);
    rc |= env_set(ev, ENV_ID, id, NULL);
    rc |= env_set(ev, ENV_CHANNEL, c->channel[0] ? c->channel : "api", NULL);
    rc |= env_set(ev, ENV_DIR, "event", NULL);
    if (!c->by_handle) {
        rc |= env_set(ev, ENV_CONVERSATION, c->key, NULL);
    }
    if (c->customer != NULL) {
        rc |= env_set(ev, ENV_CUSTOMER, c->customer, NULL);
    }
    rc |= env_set_map(ev, ENV_META, meta, 4, NULL);
    rc |= s_set_route(r, ev, c->queue, c, c->rule, c->reason, true);
    if (rc != 0) {
        log_limited(&r->limit, LOG_ERROR, "cannot build the assign event of %s", c->key);
        return;
    }
    r->n.later++;
    if (r->hold != NULL) {
        if (routehold_hold(r->hold, r->ctx, ev, ROUTEHOLD_PLAIN) != STAGE_HELD) {
            log_limited(&r->limit, LOG_WARN, "assign event of %s to %s not kept", c->key, agent);
        }
    } else if (stage_emit(r->ctx, ev) != 0) {
        log_limited(&r->limit, LOG_WARN, "assign event of %s to %s not delivered", c->key, agent);
    }
}

/* agents_drain's callback. */
static void s_assigned(void *arg, const struct agents_conv *c)
{
    struct route *r = arg;
    if (c == r->current) {
        return;                 /* its own route says so */
    }
    if (r->why != NULL) {
        buf_printf(r->why, "    assign: conversation %s -> agent %s (queue %s; it waited)\n", c->key,
                   agents_name(r->agents, c->agent), c->queue);
    }
    if (r->ctx != NULL) {
        s_emit_assign(r, c);
    }
}

static void s_drain(struct route *r, uint64_t ms)
{
    agents_drain(r->agents, ms, s_assigned, r);
    r->dirty = false;
}

/* An inbound message: decides, and sets route. */
static int s_route_in(struct route *r, struct env *e)
{
    const char *cnv = env_get(e, ENV_CONVERSATION);
    const char *key = cnv ? cnv : env_get(e, ENV_FROM);
    const char *id = env_get(e, ENV_ID);
    struct agents_conv *c = key ? agents_find(r->agents, key) : NULL;
    enum rules_state state = c ? c->state : RULES_NEW;
    struct rules_input in = { e, state, e->ts };
    if (r->why != NULL) {
        buf_printf(r->why, "    conversation %s%s, state %s\n", key ? key : "(none)",
                   cnv ? "" : " (from: no conversation id)", rules_state_name(state));
    }
    if (state == RULES_QUEUED || state == RULES_ASSIGNED) {
        /* Sticky: only keep rules may change priority and reason. */
        const struct rules_rule *ru = rules_match(r->rules, &in, true, r->why);
        int64_t priority = ru != NULL && ru->has_priority ? ru->priority : c->priority;
        if (ru != NULL && agents_update(r->agents, c, priority, ru->reason) != 0) {
            log_limited(&r->limit, LOG_ERROR, "out of memory updating %s", key);
        }
        agents_touch(r->agents, c, e->ts, env_get(e, ENV_CHANNEL), env_get(e, ENV_CUSTOMER));
        if (state == RULES_QUEUED) {
            r->current = c;
            s_drain(r, e->ts);
            r->current = NULL;
        }
        if (r->why != NULL && ru == NULL) {
            buf_printf(r->why, "    sticky: stays %s %s\n", c->state == RULES_ASSIGNED ? "with" : "in queue",
                       c->state == RULES_ASSIGNED ? agents_name(r->agents, c->agent) : c->queue);
        }
        r->n.sticky++;
        if (c->state == RULES_ASSIGNED) {
            r->n.assigned++;
        } else {
            r->n.queued++;
        }
        return s_set_route(r, e, c->queue, c, ru ? ru->name : c->rule, c->reason, true);
    }
    const struct rules_rule *ru = rules_match(r->rules, &in, false, r->why);
    if (key != NULL && (c = agents_get(r->agents, key, cnv == NULL)) == NULL) {
        log_limited(&r->limit, LOG_ERROR, "out of memory: conversation %s not kept", key);
    }
    if (c != NULL) {
        agents_touch(r->agents, c, e->ts, env_get(e, ENV_CHANNEL), env_get(e, ENV_CUSTOMER));
    }
    if (ru == NULL || ru->action != RULES_QUEUE) {
        if (c != NULL) {
            agents_to_bot(r->agents, c);
        }
        r->n.bot++;
        return s_set_route(r, e, "bot", NULL, ru ? ru->name : NULL, ru ? ru->reason : "no rule matched",
                           false);
    }
    if (c == NULL || agents_enqueue(r->agents, c, ru->queue, ru->priority, ru->name, ru->reason, id) != 0) {
        log_limited(&r->limit, LOG_ERROR, "out of memory: %s not queued", key ? key : "-");
        struct agents_conv tmp = { .queue = ru->queue, .agent = -1, .priority = ru->priority };
        r->n.queued++;
        return s_set_route(r, e, ru->queue, &tmp, ru->name, ru->reason, false);
    }
    r->current = c;
    s_drain(r, e->ts);
    r->current = NULL;
    if (c->state == RULES_ASSIGNED) {
        r->n.assigned++;
    } else {
        r->n.queued++;
    }
    return s_set_route(r, e, ru->queue, c, ru->name, ru->reason, false);
}

/* meta.NAME as a string into out, or "" when absent (or not a string). */
static const char *s_meta(const struct env *e, const char *name, char *out, size_t n)
{
    if (env_map_str(e, ENV_META, name, out, n) <= 0) {
        out[0] = '\0';
    }
    return out;
}

/* meta.event = close: ends the conversation named by conversation,
 * meta.conversation or meta.conversation_of. */
static void s_close(struct route *r, const struct env *e)
{
    char mc[ENV_MAX_SHORT + 1], mo[ENV_MAX_SHORT + 1];
    const char *keys[] = { env_get(e, ENV_CONVERSATION), s_meta(e, "conversation", mc, sizeof mc),
                           s_meta(e, "conversation_of", mo, sizeof mo) };
    bool found = false;
    for (size_t i = 0; i < 3; i++) {
        if (keys[i] == NULL || keys[i][0] == '\0') {
            continue;
        }
        struct agents_conv *c = agents_find(r->agents, keys[i]);
        if (c == NULL) {
            continue;
        }
        const char *agent = agents_name(r->agents, c->agent);
        if (r->why != NULL) {
            buf_printf(r->why, "    close: conversation %s (%s%s%s%s%s) closed\n", c->key,
                       rules_state_name(c->state), c->queue ? ", queue " : "", c->queue ? c->queue : "",
                       agent ? ", agent " : "", agent ? agent : "");
        }
        log_msg(LOG_DEBUG, "closed conversation %s%s%s", c->key, agent ? ", freeing " : "", agent ? agent : "");
        agents_close(r->agents, &c);
        r->n.closed++;
        found = true;
    }
    if (!found && r->why != NULL) {
        buf_printf(r->why, "    close: no conversation known by that name\n");
    }
    r->dirty = true;
}

/* meta.event = presence: meta.agent (or from agent:NAME) is meta.status. */
static void s_presence(struct route *r, const struct env *e)
{
    char agent[128], status[32];
    s_meta(e, "agent", agent, sizeof agent);
    const char *from = env_get(e, ENV_FROM);
    if (agent[0] == '\0' && from != NULL && strncmp(from, "agent:", 6) == 0) {
        snprintf(agent, sizeof agent, "%s", from);
    }
    s_meta(e, "status", status, sizeof status);
    enum agents_presence p;
    if (strcmp(status, "online") == 0) {
        p = AGENTS_ONLINE;
    } else if (strcmp(status, "offline") == 0 || strcmp(status, "away") == 0 || strcmp(status, "busy") == 0) {
        p = AGENTS_OFFLINE;
    } else if (strcmp(status, "hours") == 0) {
        p = AGENTS_UNKNOWN;
    } else {
        log_limited(&r->limit, LOG_WARN, "presence id=%s: status '%s' is not online, offline, away, busy or hours",
                    env_get(e, ENV_ID) ? env_get(e, ENV_ID) : "-", status);
        if (r->why != NULL) {
            buf_printf(r->why, "    presence: status '%s' is not online, offline, away, busy or hours\n", status);
        }
        return;
    }
    if (agents_presence(r->agents, agent, p) != 0) {
        log_limited(&r->limit, LOG_WARN, "presence id=%s: no agent '%s' in the agents file",
                    env_get(e, ENV_ID) ? env_get(e, ENV_ID) : "-", agent);
        if (r->why != NULL) {
            buf_printf(r->why, "    presence: no agent '%s' in the agents file\n", agent);
        }
        return;
    }
    if (r->why != NULL) {
        buf_printf(r->why, "    presence: %s is %s\n", agent, status);
    }
    r->dirty = true;
}

/* Forgets conversations idle past --idle, once a minute of the stream's
 * clock. */
static void s_expire(struct route *r, uint64_t now)
{
    if (now < r->next_expire) {
        return;
    }
    r->next_expire = now + EXPIRE_EVERY_MS;
    size_t n = now > (uint64_t)r->conf->idle_ms ? agents_expire(r->agents, now - (uint64_t)r->conf->idle_ms) : 0;
    if (n > 0) {
        r->n.expired += n;
        r->dirty = true;
        log_msg(LOG_DEBUG, "forgot %zu conversations idle for %llds (--idle)", n, (long long)(r->conf->idle_ms / 1000));
        if (r->why != NULL) {
            buf_printf(r->why, "    idle: forgot %zu conversation%s without a message for --idle\n", n, n == 1 ? "" : "s");
        }
    }
}

/* meta.event = handoff (omni-bot gave up on a message, when its events
 * are sent back to omni-route's --in): the conversation joins meta.queue,
 * unless it is already with people. */
static void s_handoff(struct route *r, const struct env *e)
{
    char queue[128], reason[256], rule[128];
    const char *cnv = env_get(e, ENV_CONVERSATION);
    const char *key = cnv ? cnv : env_get(e, ENV_FROM);
    s_meta(e, "queue", queue, sizeof queue);
    if (key == NULL || !rules_name_valid(queue) || strcmp(queue, "bot") == 0) {
        log_limited(&r->limit, LOG_WARN, "handoff id=%s: needs conversation or from, and meta.queue",
                    env_get(e, ENV_ID) ? env_get(e, ENV_ID) : "-");
        return;
    }
    struct agents_conv *c = agents_get(r->agents, key, cnv == NULL);
    if (c == NULL) {
        log_limited(&r->limit, LOG_ERROR, "out of memory: handoff of %s not queued", key);
        return;
    }
    if (c->state == RULES_QUEUED || c->state == RULES_ASSIGNED) {
        if (r->why != NULL) {
            buf_printf(r->why, "    handoff: conversation %s is already in queue %s\n", key, c->queue);
        }
        return;
    }
    int64_t priority = 0;
    if (env_map_int(e, ENV_ROUTE, "priority", &priority) != 1) {
        priority = 0;
    }
    if (env_map_str(e, ENV_ROUTE, "rule", rule, sizeof rule) != 1) {
        snprintf(rule, sizeof rule, "bot-handoff");
    }
    s_meta(e, "reason", reason, sizeof reason);
    const char *parent = env_get(e, ENV_REPLY_TO) ? env_get(e, ENV_REPLY_TO) : env_get(e, ENV_ID);
    agents_touch(r->agents, c, e->ts, env_get(e, ENV_CHANNEL), env_get(e, ENV_CUSTOMER));
    if (agents_enqueue(r->agents, c, queue, priority, rule, reason[0] ? reason : NULL, parent) != 0) {
        log_limited(&r->limit, LOG_ERROR, "out of memory: handoff of %s not queued", key);
        return;
    }
    if (r->why != NULL) {
        buf_printf(r->why, "    handoff: conversation %s joins queue %s\n", key, queue);
    }
    r->dirty = true;
}

/* One envelope, for the stage and for explain alike. */
static int s_decide(struct route *r, struct env *e)
{
    if (e->ts > r->clock_ts) {
        r->clock_ts = e->ts;
        r->clock_mono = stage_mono_ms();
    }
    s_expire(r, r->clock_ts);
    const char *dir = env_get(e, ENV_DIR);
    if (dir != NULL && strcmp(dir, "in") == 0) {
        return s_route_in(r, e);
    }
    char ev[32];
    if (dir == NULL || strcmp(dir, "event") != 0 || env_map_str(e, ENV_META, "event", ev, sizeof ev) <= 0) {
        if (r->why != NULL) {
            buf_printf(r->why, "    passes through untouched (dir %s)\n", dir ? dir : "absent");
        }
        return 0;
    }
    if (strcmp(ev, "close") == 0) {
        s_close(r, e);
    } else if (strcmp(ev, "presence") == 0) {
        s_presence(r, e);
    } else if (strcmp(ev, "handoff") == 0) {
        s_handoff(r, e);
    } else if (r->why != NULL) {
        buf_printf(r->why, "    event %s: passes through untouched\n", ev);
    }
    if (r->dirty && r->ctx == NULL) {
        s_drain(r, e->ts);      /* explain: show at once who takes what */
    }
    return 0;
}

static struct route *s_route_new(const struct route_conf *conf, struct rules *rules,
                                 struct agents_conf **ac)
{
    struct route *r = calloc(1, sizeof *r);
    if (r == NULL || (r->agents = agents_new()) == NULL || (r->ev = env_new()) == NULL) {
        if (r != NULL) {
            agents_destroy(&r->agents);
            free(r);
        }
        return NULL;
    }
    r->conf = conf;
    r->rules = rules;
    agents_set_conf(r->agents, ac);
    return r;
}

static void s_route_destroy(struct route **rp)
{
    struct route *r = *rp;
    if (r == NULL) {
        return;
    }
    routehold_destroy(&r->hold);
    rules_destroy(&r->rules);
    agents_destroy(&r->agents);
    routestate_close(&r->store);
    env_destroy(&r->ev);
    free(r);
    *rp = NULL;
}

/* --state: opens the database, watches the state for changes and puts
 * back what was stored. Returns 0 or an exit code. */
static int s_open_state(struct route *r)
{
    const struct route_conf *conf = r->conf;
    char err[512];
    int rc = routestate_open(conf->state, BUSY_MS, &r->store, err, sizeof err);
    if (rc != ROUTESTATE_OK) {
        log_msg(LOG_ERROR, "--state %s", err);
        return rc == ROUTESTATE_BAD ? EXIT_CONFIG : EXIT_UNAVAILABLE;
    }
    struct routehold_opts o = { conf->batch, conf->batch_ms, conf->keep_ms };
    if ((r->hold = routehold_new(r->store, r->agents, &o)) == NULL) {
        log_msg(LOG_ERROR, "out of memory");
        return EXIT_SOFTWARE;
    }
    struct routestate_loaded got;
    rc = routestate_load(r->store, r->agents, &got);
    if (rc != ROUTESTATE_OK) {
        log_msg(LOG_ERROR, "--state %s: cannot read the stored conversations%s", conf->state,
                rc == ROUTESTATE_BAD ? ": the file is damaged" : "");
        return rc == ROUTESTATE_BAD ? EXIT_CONFIG : EXIT_UNAVAILABLE;
    }
    log_msg(LOG_INFO, "--state %s: %zu conversations (%zu waiting)", conf->state, got.convs,
            agents_waiting(r->agents));
    if (got.requeued > 0) {
        log_msg(LOG_INFO, "%zu conversations wait again: their agent is no longer in %s", got.requeued,
                conf->agents ? conf->agents : "the agents file");
    }
    /* The stream's clock goes on from its latest message, not from the
     * wall clock: a replay of old traffic must not find every conversation
     * idle past --idle at the first tick. The next envelope moves it. */
    r->clock_ts = got.latest_ms;
    r->clock_mono = stage_mono_ms();
    r->dirty = true;            /* the first tick gives waiting conversations to free agents */
    return 0;
}

/* ---- the stage ----------------------------------------------------------- */

#define C(f) offsetof(struct route_conf, f)
static const struct opt s_opts[] = {
    { "rules", OPT_STR, NULL, C(rules), "the rules file (see examples/rules.conf)" },
    { "agents", OPT_STR, NULL, C(agents), "the agents file (see examples/agents.conf); without it no agent is assigned" },
    { "idle", OPT_MS, "24h", C(idle_ms), "forget a conversation (freeing its agent) after this long without a message" },
    { "match-limit", OPT_INT, "100000", C(match_limit), "PCRE2 match limit: a regex that needs more counts as no match" },
    { "state", OPT_STR, NULL, C(state),
      "sqlite file (WAL) of conversations, agents' presence and decisions: a restart continues where it "
      "stopped, a re-sent id gets the route it had, and envelopes wait for their decision's commit. "
      "Without it the state lives in memory only and a restart begins empty" },
    { "batch", OPT_INT, "256", C(batch), "--state: envelopes per commit (group commit)" },
    { "batch-ms", OPT_MS, "20ms", C(batch_ms), "--state: longest an envelope waits for its commit" },
    { "decisions-keep", OPT_MS, "7d", C(keep_ms),
      "--state: how long a decision is remembered for re-sent ids (as the ingestors' --dedupe-window)" },
    { NULL, 0, NULL, 0, NULL }
};
#undef C

static int s_init(struct stage_ctx *ctx, void *confp, void **state)
{
    (void)ctx;
    const struct route_conf *conf = confp;
    int rc = s_validate_stage(conf);
    if (rc != 0) {
        return rc;
    }
    struct rules *rules = s_load_rules(conf);
    bool ok;
    struct agents_conf *ac = s_load_agents(conf, &ok);
    if (rules == NULL || !ok) {
        rules_destroy(&rules);
        agents_conf_destroy(&ac);
        return EXIT_CONFIG;
    }
    s_cross_check(rules, ac, conf->agents);
    size_t nagents = agents_conf_count(ac);
    struct route *r = s_route_new(conf, rules, &ac);
    if (r == NULL) {
        rules_destroy(&rules);
        agents_conf_destroy(&ac);
        log_msg(LOG_ERROR, "out of memory");
        return EXIT_SOFTWARE;
    }
    if (conf->state != NULL && conf->state[0] != '\0' && (rc = s_open_state(r)) != 0) {
        s_route_destroy(&r);
        return rc;
    }
    log_msg(LOG_DEBUG, "%zu rules from %s, %zu agents%s%s; conversations are kept %s%s",
            rules_count(r->rules), conf->rules, nagents, conf->agents ? " from " : "",
            conf->agents ? conf->agents : "", r->store ? "in " : "in memory only",
            r->store ? conf->state : "");
    *state = r;
    return 0;
}

static int s_check(struct stage_ctx *ctx, void *confp)
{
    (void)ctx;
    const struct route_conf *conf = confp;
    int rc = s_validate_stage(conf);
    if (rc != 0) {
        return rc;
    }
    struct rules *rules = s_load_rules(conf);
    bool ok;
    struct agents_conf *ac = s_load_agents(conf, &ok);
    if (rules != NULL && ok) {
        s_cross_check(rules, ac, conf->agents);
    }
    rc = rules != NULL && ok ? 0 : EXIT_CONFIG;
    rules_destroy(&rules);
    agents_conf_destroy(&ac);
    return rc;
}

/* What the decision log keeps of e: an inbound message's route, an
 * event's having changed the state, or nothing. */
static enum routehold_kind s_kind(const struct env *e)
{
    const char *dir = env_get(e, ENV_DIR);
    char ev[32];
    if (dir == NULL) {
        return ROUTEHOLD_PLAIN;
    }
    if (strcmp(dir, "in") == 0) {
        return ROUTEHOLD_ROUTED;
    }
    if (strcmp(dir, "event") != 0 || env_map_str(e, ENV_META, "event", ev, sizeof ev) <= 0) {
        return ROUTEHOLD_PLAIN;
    }
    bool changes = strcmp(ev, "close") == 0 || strcmp(ev, "presence") == 0 || strcmp(ev, "handoff") == 0;
    return changes ? ROUTEHOLD_APPLIED : ROUTEHOLD_PLAIN;
}

/* With --state: an id decided before gets that decision again; any other
 * is decided, logged and held until its batch commits. */
static enum verdict s_handle_held(struct route *r, struct stage_ctx *ctx, struct env *e)
{
    if (routehold_begin(r->hold, ctx) != 0) {
        return STAGE_RETRY;
    }
    enum routehold_kind kind = s_kind(e);
    if (kind != ROUTEHOLD_PLAIN) {
        int got = routehold_recall(r->hold, e);
        if (got < 0) {
            return STAGE_RETRY;
        }
        if (got > 0) {
            kind = ROUTEHOLD_PLAIN; /* as it was the first time; the state stays */
            goto hold;
        }
    }
    s_decide(r, e);
    if (r->dirty) {
        stage_wake_in(ctx, 0);  /* assign freed agents after this envelope */
    }
hold:;
    enum verdict v = routehold_hold(r->hold, ctx, e, kind);
    if (v == STAGE_HELD) {
        routehold_done(r->hold, ctx);
    }
    return v;
}

static enum verdict s_handle(void *state, struct stage_ctx *ctx, struct env *e)
{
    struct route *r = state;
    r->ctx = ctx;
    if (r->hold != NULL) {
        return s_handle_held(r, ctx, e);
    }
    s_decide(r, e);
    if (r->dirty) {
        stage_wake_in(ctx, 0);  /* assign freed agents after this envelope goes */
    }
    return STAGE_PASS;
}

static void s_tick(void *state, struct stage_ctx *ctx)
{
    struct route *r = state;
    r->ctx = ctx;
    uint64_t now = s_now(r);
    s_expire(r, now);
    if (r->dirty || agents_waiting(r->agents) > 0) {
        s_drain(r, now);        /* also: agents whose hours began */
    }
    if (r->hold != NULL) {
        routehold_tick(r->hold, ctx);
    }
}

static void s_reload(void *state, struct stage_ctx *ctx)
{
    struct route *r = state;
    struct rules *rules = s_load_rules(r->conf);
    if (rules == NULL) {
        log_msg(LOG_ERROR, "reload: %s has errors; the rules loaded before stay in force", r->conf->rules);
    } else {
        rules_destroy(&r->rules);
        r->rules = rules;
        log_msg(LOG_INFO, "reload: %zu rules from %s", rules_count(rules), r->conf->rules);
    }
    bool ok;
    struct agents_conf *ac = s_load_agents(r->conf, &ok);
    if (!ok) {
        log_msg(LOG_ERROR, "reload: %s has errors; the agents loaded before stay", r->conf->agents);
    } else if (ac != NULL) {
        s_cross_check(r->rules, ac, r->conf->agents);
        size_t n = agents_conf_count(ac);
        agents_set_conf(r->agents, &ac);
        r->dirty = true;
        stage_wake_in(ctx, 0);
        log_msg(LOG_INFO, "reload: %zu agents from %s", n, r->conf->agents);
    }
}

static void s_fini(void **state)
{
    struct route *r = *state;
    if (r->hold != NULL && routehold_held(r->hold) > 0) {
        /* What the last tick did not commit (input ended, or the reader
         * of our output went away): commit it and pass it on if we can. */
        size_t n = routehold_held(r->hold);
        if (routehold_flush(r->hold, r->ctx) != 0 && routehold_flush(r->hold, r->ctx) != 0) {
            log_msg(LOG_WARN, "stopping with %zu envelopes not passed on: their decisions did not commit "
                    "(the sender's spool sends them again)", n);
        }
    }
    if (r->hold != NULL) {
        const struct routehold_counts *k = routehold_counts(r->hold);
        log_msg(LOG_DEBUG, "--state: recalled=%llu commits=%llu pruned=%llu", (unsigned long long)k->recalled,
                (unsigned long long)k->commits, (unsigned long long)k->pruned);
    }
    log_msg(LOG_DEBUG, "routed bot=%llu queued=%llu assigned=%llu sticky=%llu assigned-later=%llu "
            "closed=%llu expired=%llu regex-gave-up=%llu",
            (unsigned long long)r->n.bot, (unsigned long long)r->n.queued,
            (unsigned long long)r->n.assigned, (unsigned long long)r->n.sticky,
            (unsigned long long)r->n.later, (unsigned long long)r->n.closed,
            (unsigned long long)r->n.expired, (unsigned long long)rules_gave_up(r->rules));
    s_route_destroy(&r);
    *state = NULL;
}

const struct stage route_stage = {
    .name = "route",
    .summary = "Sets `route` on inbound envelopes: the bot or a human queue by the first matching rule "
               "of --rules, an agent from --agents; sticky until a close event. With --state the "
               "conversations and every decision survive a restart; without it they live in memory only. "
               "`omni-route explain [FILE|-] --rules R [--agents A]` shows why.",
    .options = s_opts,
    .conf_size = sizeof(struct route_conf),
    .init = s_init,
    .check = s_check,
    .handle = s_handle,
    .tick = s_tick,
    .reload = s_reload,
    .fini = s_fini,
};

/* ---- explain ------------------------------------------------------------- */

bool route_is_command(const char *arg)
{
    return strcmp(arg, "explain") == 0;
}

static const struct opt s_explain_opts[] = {
    { "rules", OPT_STR, NULL, offsetof(struct route_conf, rules), "the rules file" },
    { "agents", OPT_STR, NULL, offsetof(struct route_conf, agents), "the agents file" },
    { "idle", OPT_MS, "24h", offsetof(struct route_conf, idle_ms), "as omni-route --idle" },
    { "match-limit", OPT_INT, "100000", offsetof(struct route_conf, match_limit), "as omni-route --match-limit" },
    { "help", OPT_BOOL, "no", offsetof(struct route_conf, help), "show this help and exit" },
    { NULL, 0, NULL, 0, NULL }
};

/* "[3] 2026-11-14 14:32:11Z whatsapp in whatsapp:+55…  "text…"" */
static void s_explain_head(struct buf *b, size_t line, const struct env *e)
{
    time_t t = (time_t)(e->ts / 1000);
    struct tm tm;
    char when[32] = "-";
    if (gmtime_r(&t, &tm) != NULL) {
        strftime(when, sizeof when, "%Y-%m-%d %H:%M:%SZ", &tm);
    }
    const char *from = env_get(e, ENV_FROM);
    const char *text = env_get(e, ENV_TEXT);
    const char *subject = env_get(e, ENV_SUBJECT);
    buf_printf(b, "[%zu] %s %s %s %s", line, when, env_get(e, ENV_CHANNEL) ? env_get(e, ENV_CHANNEL) : "-",
               env_get(e, ENV_DIR) ? env_get(e, ENV_DIR) : "-", from ? from : "-");
    const char *show = text && text[0] ? text : subject;
    if (show != NULL) {
        buf_puts(b, "  \"");
        int chars = 0;
        const char *p = show;
        for (; *p != '\0' && chars < 70; p++) {
            chars += ((unsigned char)*p & 0xC0) != 0x80;
            buf_putc(b, *p == '\n' || *p == '\r' || *p == '\t' ? ' ' : *p);
        }
        while (((unsigned char)*p & 0xC0) == 0x80) {
            buf_putc(b, *p++);
        }
        buf_puts(b, *p ? "…\"" : "\"");
    }
    buf_putc(b, '\n');
}

static int s_explain_run(struct route *r, FILE *in, const char *name)
{
    struct buf out = { 0 };
    struct env *e = env_new();
    char *line = NULL;
    size_t cap = 0, n = 0;
    ssize_t len;
    int bad = 0, rc = 0;
    if (e == NULL) {
        log_msg(LOG_ERROR, "out of memory");
        rc = EXIT_SOFTWARE;
        goto done;
    }
    r->why = &out;
    while ((len = getline(&line, &cap, in)) >= 0) {
        n++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) {
            line[--len] = '\0';
        }
        if (strspn(line, " \t") == (size_t)len) {
            continue;
        }
        char err[256];
        struct env_err eerr;
        cJSON *j = json_parse(line, (size_t)len, err, sizeof err);
        if (j == NULL) {
            log_msg(LOG_ERROR, "%s:%zu: bad JSON: %s", name, n, err);
            bad++;
            continue;
        }
        int got = env_from_json(e, j, &eerr);
        cJSON_Delete(j);
        if (got != 0) {
            log_msg(LOG_ERROR, "%s:%zu: not an envelope: %s", name, n, env_err_str(&eerr, err, sizeof err));
            bad++;
            continue;
        }
        if (!env_has(e, ENV_V)) {
            env_set_uint(e, ENV_V, ENV_VERSION);
        }
        if (!env_has(e, ENV_TS)) {
            env_set_uint(e, ENV_TS, stage_now_ms());
        }
        buf_reset(&out);
        s_explain_head(&out, n, e);
        s_decide(r, e);
        size_t rn;
        const void *route = env_raw(e, ENV_ROUTE, &rn);
        if (route != NULL && env_get(e, ENV_DIR) != NULL && strcmp(env_get(e, ENV_DIR), "in") == 0) {
            buf_puts(&out, "    => route ");
            mp_to_json(route, rn, &out);
            buf_putc(&out, '\n');
        }
        buf_putc(&out, '\n');
        if (fwrite(out.data, 1, out.len, stdout) != out.len) {
            rc = EXIT_IOERR;
            break;
        }
    }
    if (ferror(in)) {
        log_msg(LOG_ERROR, "%s: %s", name, strerror(errno));
        rc = EXIT_IOERR;
    }
    if (rc == 0 && bad > 0) {
        rc = EXIT_DATAERR;
    }
done:
    r->why = NULL;
    free(line);
    env_destroy(&e);
    buf_free(&out);
    return rc;
}

int route_explain(int argc, char **argv)
{
    log_init("omni-route", NULL);
    struct route_conf conf = { 0 };
    struct opt_set set = { s_explain_opts, &conf };
    struct opt_result res;
    struct route *r = NULL;
    FILE *in = NULL;
    int rc = 0;
    if (opt_parse(&set, 1, argc, argv, NULL, &res) != 0) {
        log_msg(LOG_ERROR, "explain: %s (try explain --help)", res.err);
        rc = res.status;
        goto done;
    }
    if (conf.help) {
        printf("usage: omni-route explain [FILE|-] --rules R [--agents A]\n"
               "Reads envelopes as JSON lines (as omni-inject does) and routes them in order, as\n"
               "omni-route would, printing for each which rules were tried, each condition true or\n"
               "false, and the route set. Events (close, presence) change the state as they go.\n\n");
        opt_help(&set, 1, stdout);
        goto done;
    }
    if (res.npos > 1) {
        log_msg(LOG_ERROR, "explain: one input at most, not '%s'", res.pos[1]);
        rc = EXIT_USAGE;
        goto done;
    }
    if ((rc = s_validate(&conf)) != 0) {
        goto done;
    }
    const char *name = res.npos == 1 ? res.pos[0] : "-";
    in = strcmp(name, "-") == 0 ? stdin : fopen(name, "r");
    if (in == NULL) {
        log_msg(LOG_ERROR, "explain: %s: %s", name, strerror(errno));
        rc = EXIT_USAGE;
        goto done;
    }
    struct rules *rules = s_load_rules(&conf);
    bool ok;
    struct agents_conf *ac = s_load_agents(&conf, &ok);
    if (rules == NULL || !ok) {
        rules_destroy(&rules);
        agents_conf_destroy(&ac);
        rc = EXIT_CONFIG;
        goto done;
    }
    if ((r = s_route_new(&conf, rules, &ac)) == NULL) {
        rules_destroy(&rules);
        agents_conf_destroy(&ac);
        rc = EXIT_SOFTWARE;
        goto done;
    }
    rc = s_explain_run(r, in, name);
done:
    if (in != NULL && in != stdin) {
        fclose(in);
    }
    s_route_destroy(&r);
    free(res.pos);
    fflush(stdout);
    return rc;
}
