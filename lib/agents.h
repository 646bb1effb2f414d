/* agents — who answers the human queues, and the conversations omni-route
 * keeps: the agents file (names, queues, capacity, working hours; format at
 * the top of examples/agents.conf) and the assignment state built on it.
 *
 * A conversation routed to a queue waits there until an agent who serves
 * the queue, has free capacity and is present (online, or within working
 * hours when no presence was reported) takes it: the least loaded such
 * agent, ties broken round-robin. It then stays with that agent (sticky)
 * until it is closed. State lives in memory; omni-route --state keeps a
 * copy in sqlite (lib/routestate.c) through agents_watch, and puts it back
 * at start with agents_restore. */
#ifndef OMNI_AGENTS_H
#define OMNI_AGENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "rules.h"

#define AGENTS_ID_LEN 26        /* a ULID */

/* What an agent last said about being there. */
enum agents_presence {
    AGENTS_UNKNOWN,     /* nothing: working hours decide */
    AGENTS_ONLINE,      /* takes conversations, in hours or not */
    AGENTS_OFFLINE,     /* takes none (away, busy, offline) */
};

/* One conversation the stage knows. */
struct agents_conv {
    char *key;                      /* conversation id, or the customer's handle */
    bool by_handle;                 /* key is a handle (no conversation id upstream) */
    enum rules_state state;         /* bot, queued or assigned */
    char *queue;                    /* queued or assigned: the queue */
    int qidx;                       /* the queue's index in the agents file, or -1 */
    int agent;                      /* assigned: the agent's index, or -1 */
    int64_t priority;               /* queued: higher goes first */
    char *rule;                     /* the rule that queued it */
    char *reason;                   /* its reason, or NULL */
    char channel[16];               /* the channel it last wrote on */
    char *customer;                 /* the customer, when known, or NULL */
    char first_id[AGENTS_ID_LEN + 1];/* id of the message that queued it */
    unsigned assigns;               /* how often it was given an agent */
    uint64_t seq;                   /* when it joined its queue (order) */
    uint64_t last_ms;               /* ts of its last message */
    size_t wait_idx;                /* its place in the waiting list, while queued */
    bool unsaved;                   /* the watcher has it listed as changed (lib/routehold.c) */
    struct agents_conv *next;       /* hash chain */
};

/* A conversation as stored (lib/routestate.c), to put back with
 * agents_restore. Strings may be NULL (none); agent is a name. */
struct agents_saved {
    const char *key;                /* conversation id, or the customer's handle */
    bool by_handle;                 /* key is a handle */
    enum rules_state state;         /* bot, queued or assigned */
    const char *queue;              /* queued or assigned: the queue */
    const char *agent;              /* assigned: the agent's name */
    int64_t priority;               /* higher goes first */
    const char *rule;               /* the rule that queued it */
    const char *reason;             /* its reason */
    const char *channel;            /* the channel it last wrote on */
    const char *customer;           /* the customer */
    const char *first_id;           /* id of the message that queued it */
    unsigned assigns;               /* how often it was given an agent */
    uint64_t seq;                   /* when it joined its queue (order) */
    uint64_t last_ms;               /* ts of its last message */
};

/* What changed, for a watcher (agents_watch). */
enum agents_change {
    AGENTS_CONV,        /* the conversation c changed (or is new) */
    AGENTS_GONE,        /* the conversation c is closed; it is freed after the call */
    AGENTS_AGENTS,      /* an agent's presence or a queue's turn (c is NULL) */
};

struct agents_conf;
struct agents;

/* Parses an agents file's text (name prefixes messages). NULL when msgs
 * has at least one error. */
struct agents_conf *agents_conf_parse(const char *name, const char *text, size_t n, struct buf *msgs);
struct agents_conf *agents_conf_load(const char *path, struct buf *msgs);
void agents_conf_destroy(struct agents_conf **c);
/* True when some agent of c serves queue. */
bool agents_conf_serves(const struct agents_conf *c, const char *queue);
size_t agents_conf_count(const struct agents_conf *c);

struct agents *agents_new(void);
void agents_destroy(struct agents **a);
/* Puts *conf (may be NULL: no agents) in place of the current file and
 * takes it. Conversations stay; one whose agent is gone waits again.
 * Presence carries over by name. */
void agents_set_conf(struct agents *a, struct agents_conf **conf);

/* Calls fn after every change of the state (fn NULL: none), so that a store
 * can write what changed. agents_restore does not call it, except for a
 * conversation whose agent is gone. */
typedef void agents_changed_fn(void *arg, enum agents_change what, struct agents_conv *c);
void agents_watch(struct agents *a, agents_changed_fn *fn, void *arg);

/* Puts a stored conversation back: give them in the order of their seq,
 * then call agents_restore_end. An assigned conversation whose agent is no
 * longer in the file waits again, as agents_set_conf does. Returns 0, or -1
 * (out of memory, or the key is already known). */
int agents_restore(struct agents *a, const struct agents_saved *s);
/* Ends a restore: conversations whose agent is gone join their queue again,
 * after those waiting. Returns how many; -1 out of memory. */
long agents_restore_end(struct agents *a);

/* The conversation of key, or NULL. */
struct agents_conv *agents_find(struct agents *a, const char *key);
/* The conversation of key, made (state new) when unknown; NULL when out of
 * memory. */
struct agents_conv *agents_get(struct agents *a, const char *key, bool by_handle);
/* Notes what the conversation's latest message said about it: when, which
 * channel, which customer. */
void agents_touch(struct agents *a, struct agents_conv *c, uint64_t ms, const char *channel,
                  const char *customer);
/* Hands the conversation to the bot (leaving a queue or an agent). */
void agents_to_bot(struct agents *a, struct agents_conv *c);
/* Puts the conversation in queue to wait; id is the message's. Returns 0 or
 * -1 (out of memory). */
int agents_enqueue(struct agents *a, struct agents_conv *c, const char *queue, int64_t priority,
                   const char *rule, const char *reason, const char *id);
/* Changes the priority and reason of a queued or assigned conversation. */
int agents_update(struct agents *a, struct agents_conv *c, int64_t priority, const char *reason);
/* Closes the conversation: frees its agent, forgets it. */
void agents_close(struct agents *a, struct agents_conv **c);
/* Sets an agent's presence. Returns 0, or -1 when no agent has that name. */
int agents_presence(struct agents *a, const char *name, enum agents_presence p);

/* Called for each conversation given an agent. */
typedef void agents_assigned_fn(void *arg, const struct agents_conv *c);
/* Gives waiting conversations to free agents present at ms, the highest
 * priority and then the longest waiting first. Returns how many. */
size_t agents_drain(struct agents *a, uint64_t ms, agents_assigned_fn *cb, void *arg);
/* Closes conversations whose last message is older than before_ms. Returns
 * how many. */
size_t agents_expire(struct agents *a, uint64_t before_ms);

/* Agents in the file; an agent's presence as last reported. */
size_t agents_count(const struct agents *a);
enum agents_presence agents_status(const struct agents *a, int agent);
/* Queues the file names (q < agents_queue_count): the queue's name, and in
 * *agent the agent its last conversation went to (round robin), or NULL. */
size_t agents_queue_count(const struct agents *a);
const char *agents_turn(const struct agents *a, size_t q, const char **agent);
/* Puts a queue's turn back (by names; unknown names are ignored). */
void agents_set_turn(struct agents *a, const char *queue, const char *agent);
/* An agent's name, or NULL. */
const char *agents_name(const struct agents *a, int agent);
/* The agent's index by name ("marina" or "agent:marina"), or -1. */
int agents_find_agent(const struct agents *a, const char *name);
/* Conversations the agent has now. */
int agents_load(const struct agents *a, int agent);
int agents_capacity(const struct agents *a, int agent);
/* Conversations known, and those waiting in a queue. */
size_t agents_conversations(const struct agents *a);
size_t agents_waiting(const struct agents *a);

#endif
