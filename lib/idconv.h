/* idconv — conversations, part of the identity library (see identity.h,
 * iddb.h): a customer has at most one open conversation; a message
 * continues it unless it has been idle longer than --idle, when it is
 * closed and the next one starts. The open conversations of hot customers
 * are kept in memory (struct identity's conversation cache) and their
 * latest activity is written lazily. Every function here runs inside an
 * open transaction. */
#ifndef OMNI_IDCONV_H
#define OMNI_IDCONV_H

#include <stdint.h>

#include "identity.h"

/* A conversation's latest activity is kept in memory and written when it
 * has moved this far past what the database has (1% of --idle, at most
 * this), and always before a merge, split, close, forget or exit: a crash
 * can leave conversations.last this much behind, never an assignment. */
#define IDCONV_SLACK_MAX 60000

/* One conversation-cache slot: a customer's open conversation (its hash
 * in conv_tag). */
struct idconv_slot {
    uint32_t gen;                           /* valid while equal to the cache's */
    char customer[IDENTITY_ID_LEN + 1];     /* the customer */
    char cnv[IDENTITY_ID_LEN + 1];          /* its open conversation, "" when none */
    int64_t last;                           /* ts of the conversation's latest envelope */
    int64_t saved;                          /* last as the database has it */
};

/* The open conversation of customer c in the database: out ("" when none)
 * and its last ts. */
int idconv_open_of(struct identity *id, const char *c, char out[IDENTITY_ID_LEN + 1],
                   int64_t *last);
/* Ends conversation cnv at ts (closed_by by, close_reason reason); last is
 * its latest activity as known here. */
int idconv_close(struct identity *id, const char *cnv, int64_t ts, int64_t last,
                 const char *by, const char *reason);
/* Writes customer c's cached conversation and forgets it (before the
 * database changes its conversations under it: merge, split, close). */
int idconv_drop(struct identity *id, const char *c);
/* Forgets customer c's cached conversation without writing (its envelope
 * was undone). */
void idconv_forget(struct identity *id, const char *c);
/* Forgets every cached conversation without writing (rolled back). */
void idconv_clear(struct identity *id);
/* Writes every cached conversation that ran ahead of the database, and
 * forgets them all. */
int idconv_save_all(struct identity *id);
/* A message of customer c at ts: continues the open conversation, or
 * closes an idle one and starts the next; its id into out. */
int idconv_message(struct identity *id, const char *c, uint64_t ts,
                   char out[IDENTITY_ID_LEN + 1]);
/* The conversation an event at ts belongs to: the open one unless idle,
 * else "". */
int idconv_current(struct identity *id, const char *c, uint64_t ts,
                   char out[IDENTITY_ID_LEN + 1]);
/* Ends customer c's open conversation (a close event); its id into out,
 * "" when none was open. */
int idconv_end(struct identity *id, const char *c, uint64_t ts, const char *by,
               const char *reason, char out[IDENTITY_ID_LEN + 1]);

#endif
