/* routestate — omni-route's database (--state FILE): one sqlite file in WAL
 * mode that omni-route alone writes (DESIGN.md "Storage"). It keeps
 *
 *   decisions      per envelope id decided: when (for pruning), and the
 *                  route map stamped on it, as the bytes that went out
 *                  (NULL: an event that was applied), so that a re-sent id
 *                  gets the same route and changes nothing a second time;
 *   conversations  what lib/agents.c keeps of each conversation (state,
 *                  queue, agent by name, priority, order in the queue, ...);
 *   agents         the presence agents reported, by name;
 *   turns          per queue, the agent its last conversation went to.
 *
 * Writes need a transaction (routestate_begin ... routestate_commit), which
 * lib/routehold.c opens per batch; routestate_prune makes its own. */
#ifndef OMNI_ROUTESTATE_H
#define OMNI_ROUTESTATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agents.h"
#include "buf.h"

/* What the functions below return. */
enum routestate_status {
    ROUTESTATE_OK,          /* done */
    ROUTESTATE_NOT_FOUND,   /* no decision for that id */
    ROUTESTATE_BUSY,        /* another connection holds the lock: try again */
    ROUTESTATE_ERROR,       /* sqlite failed (logged, rate limited) */
    ROUTESTATE_BAD,         /* the file is not a route state: not sqlite, corrupt, a newer schema */
};

struct routestate;

/* Opens (creating when missing) the database at path: WAL, the schema, the
 * statements. busy_ms: how long to wait for another connection's lock.
 * Returns ROUTESTATE_OK with *out, or _BAD / _ERROR with err[n] saying why,
 * the path first. */
int routestate_open(const char *path, int64_t busy_ms, struct routestate **out, char *err, size_t n);
void routestate_close(struct routestate **s);

/* What routestate_load found. */
struct routestate_loaded {
    size_t convs;           /* conversations put back */
    size_t requeued;        /* of those, waiting again: their agent left the agents file */
    uint64_t latest_ms;     /* the latest message's ts among them (the stream's clock), or 0 */
};

/* Puts the stored state into a, which has its agents file already:
 * presence, then conversations in the order they joined their queues
 * (agents_restore), then the queues' turns. Returns ROUTESTATE_OK or an
 * error. */
int routestate_load(struct routestate *s, struct agents *a, struct routestate_loaded *got);

bool routestate_in_transaction(const struct routestate *s);
int routestate_begin(struct routestate *s);
int routestate_commit(struct routestate *s);
/* Ends the open transaction, if any, keeping nothing of it. */
void routestate_rollback(struct routestate *s);

/* The decision stored for id: ROUTESTATE_OK with *routed true and the route
 * map's msgpack bytes in route (replacing what it held), or *routed false
 * for an event applied; ROUTESTATE_NOT_FOUND; or an error. Sees the open
 * transaction's own writes. */
int routestate_decision(struct routestate *s, const char *id, struct buf *route, bool *routed);
/* Stores the decision for id made at (ms since epoch): the route map's
 * bytes, or route NULL for an event applied. A second call for one id
 * keeps the first. */
int routestate_decide(struct routestate *s, const char *id, uint64_t at, const void *route, size_t n);
/* Deletes up to limit decisions made before before_ms, oldest first, in a
 * transaction of its own (none may be open). Returns how many, or -1 with
 * *status set. */
int64_t routestate_prune(struct routestate *s, uint64_t before_ms, int limit, int *status);

/* Writes conversation c as it is now. */
int routestate_save(struct routestate *s, const struct agents *a, const struct agents_conv *c);
/* Deletes the conversation of key (closed or forgotten). */
int routestate_drop(struct routestate *s, const char *key);
/* Writes every agent's presence and every queue's turn. */
int routestate_save_agents(struct routestate *s, const struct agents *a);

/* Rows now, for tests: decisions or conversations (a scan: not for big files). */
int64_t routestate_count(struct routestate *s, bool decisions);

#endif
