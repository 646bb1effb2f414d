/* routehold — omni-route --state: the group commit, as omni-identity and
 * omni-archive do it. An envelope is held (verdict STAGE_HELD) from its
 * decision until the commit of the batch that stores the decision, and
 * then passed on with the batch, in order; assign events made meanwhile
 * are held in their place among them. The conversations and agents that
 * changed (lib/agents.c says so through agents_watch) are written in the
 * same transaction, so nothing leaves the stage before the state it comes
 * from is on disk.
 *
 * The memory (lib/agents.c) decides; the database follows it by at most
 * one batch. A transaction that fails is written again from the held
 * copies and the list of changes, never decided again, and a crash loses
 * only decisions that nobody downstream has seen: their envelopes are sent
 * again by the spool and decided afresh. A re-sent id found in the log
 * gets the route it had (routehold_recall) and changes nothing. */
#ifndef OMNI_ROUTEHOLD_H
#define OMNI_ROUTEHOLD_H

#include <stddef.h>
#include <stdint.h>

#include "agents.h"
#include "routestate.h"
#include "stage.h"

/* What a held envelope stands for in the decision log. */
enum routehold_kind {
    ROUTEHOLD_PLAIN,        /* nothing to log: passes through, an assign event, a recalled one */
    ROUTEHOLD_ROUTED,       /* an inbound message: its id and the route stamped */
    ROUTEHOLD_APPLIED,      /* an event that changed the state (close, presence, handoff): its id */
};

struct routehold_opts {
    int64_t batch;          /* envelopes per commit */
    int64_t batch_ms;       /* longest an envelope waits for its commit */
    int64_t keep_ms;        /* decisions are kept this long */
};

struct routehold;

/* Watches a (agents_watch) for changes to write to s. Neither is taken;
 * both must outlive the hold. NULL when out of memory. */
struct routehold *routehold_new(struct routestate *s, struct agents *a, const struct routehold_opts *o);
/* Stops watching and frees what is held, without passing it on. */
void routehold_destroy(struct routehold **h);

/* Before an envelope is decided: commits a full batch, and opens the
 * transaction its decision goes in. Returns 0, or -1 to retry it later
 * (STAGE_RETRY; logged, rate limited). */
int routehold_begin(struct routehold *h, struct stage_ctx *ctx);
/* The decision log, after routehold_begin: 1 when e's id was decided
 * before (an inbound message gets the route it had, stamped again; an
 * event was applied), 0 when not, -1 on a database error (retry). */
int routehold_recall(struct routehold *h, struct env *e);
/* Keeps a copy of e until its batch commits, and logs its id as kind says
 * (ROUTED and APPLIED need routehold_begin first). Returns STAGE_HELD, or
 * STAGE_RETRY when the copy failed (out of memory; the decision is logged,
 * so the retry recalls it). */
enum verdict routehold_hold(struct routehold *h, struct stage_ctx *ctx, const struct env *e,
                            enum routehold_kind kind);
/* After a decision and all it emitted are held: commits a full batch. */
void routehold_done(struct routehold *h, struct stage_ctx *ctx);
/* From tick(): commits a batch older than --batch-ms (at once when
 * stopping), and between batches prunes decisions older than keep_ms. */
void routehold_tick(struct routehold *h, struct stage_ctx *ctx);
/* Commits what is open and passes the held envelopes on. Returns 0, or -1
 * (logged; everything stays held for the next try). */
int routehold_flush(struct routehold *h, struct stage_ctx *ctx);

/* Envelopes held now. */
size_t routehold_held(const struct routehold *h);
/* Counters, for the log line at exit. */
struct routehold_counts {
    uint64_t recalled;      /* re-sent ids that got their logged decision */
    uint64_t commits;       /* batches committed */
    uint64_t pruned;        /* decisions deleted past keep_ms */
};
const struct routehold_counts *routehold_counts(const struct routehold *h);

#endif
