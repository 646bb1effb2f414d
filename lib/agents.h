/* agents — who answers the human queues, and the conversations omni-route
 * keeps: the agents file (names, queues, capacity, working hours; format at
 * the top of examples/agents.conf) and the assignment state built on it.
 *
 * A conversation routed to a queue waits there until an agent who serves
 * the queue, has free capacity and is present (online, or within working
 * hours when no presence was reported) takes it: the least loaded such
 * agent, ties broken round-robin. It then stays with that agent (sticky)
 * until it is closed. State lives in memory; a restart begins empty. */
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
    struct agents_conv *next;       /* hash chain */
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

/* The conversation of key, or NULL. */
struct agents_conv *agents_find(struct agents *a, const char *key);
/* The conversation of key, made (state new) when unknown; NULL when out of
 * memory. */
struct agents_conv *agents_get(struct agents *a, const char *key, bool by_handle);
/* Notes what the conversation's latest message said about it: when, which
 * channel, which customer. */
void agents_touch(struct agents_conv *c, uint64_t ms, const char *channel, const char *customer);
/* Hands the conversation to the bot (leaving a queue or an agent). */
void agents_to_bot(struct agents *a, struct agents_conv *c);
/* Puts the conversation in queue to wait; id is the message's. Returns 0 or
 * -1 (out of memory). */
int agents_enqueue(struct agents *a, struct agents_conv *c, const char *queue, int64_t priority,
                   const char *rule, const char *reason, const char *id);
/* Changes the priority and reason of a queued or assigned conversation. */
int agents_update(struct agents_conv *c, int64_t priority, const char *reason);
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
