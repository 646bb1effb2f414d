/* identity — omni-identity: who is this customer, and which conversation is
 * this. A filter: envelopes in, the same envelopes out with `customer` and
 * `conversation` set, and the customer's handle normalised (lib/handle.h).
 *
 * The graph lives in one sqlite database (WAL): handles belong to customers;
 * links between handles (channel facts, link events, agents) keep their
 * provenance; a customer is a connected component of the active links, so
 * removing a link splits the customer again. A processed table maps every
 * envelope id to what it was given, so a replay changes nothing.
 *
 * The functions below are the library the stage and the CLI (link, unlink,
 * show, forget) share. Every function that writes needs an open transaction
 * (identity_begin ... identity_commit).
 *
 *   identity.c        these functions (open, transactions, assign, link,
 *                     unlink, resolve, show, forget)
 *   iddb.c            the schema, statements, handle cache, customers and
 *                     handles (iddb.h: what struct identity is)
 *   idconv.c          conversations: open, idle, closed, lazily written
 *   idgraph.c         links, merges, conflicts, splits
 *   idenv.c           what an envelope says: its handle, channel facts, events
 *   identity_stage.c  the stage: group commit of assigned envelopes
 *   identity_cli.c    the subcommands link, unlink, show, forget */
#ifndef OMNI_IDENTITY_H
#define OMNI_IDENTITY_H

#include <stdbool.h>
#include <stdint.h>

#include "buf.h"
#include "envelope.h"
#include "handle.h"
#include "stage.h"

#define IDENTITY_ID_LEN 30      /* "cus_" or "cnv_" and a ULID */

/* The stage: omni-identity. */
extern const struct stage identity_stage;

/* True when word is a subcommand (link, unlink, show, forget). */
bool identity_is_command(const char *word);
/* Runs a subcommand; argv[0] is its name. Returns the exit code. */
int identity_cli(int argc, char **argv);

/* What a caller gets back from the functions below. */
enum identity_status {
    IDENTITY_OK,            /* done */
    IDENTITY_BAD,           /* bad input: result field and reason say what */
    IDENTITY_CONFLICT,      /* link refused: both customers hold a verified handle of one scheme */
    IDENTITY_NOT_FOUND,     /* no such handle, customer or link */
    IDENTITY_BUSY,          /* another process holds the database: try again */
    IDENTITY_ERROR,         /* the database failed (logged) */
};

struct identity;

struct identity_opts {
    int country;            /* calling code of numbers written without one (55) */
    int64_t idle_ms;        /* a conversation idle this long is over */
    int64_t cache;          /* hot handles kept in memory (0: none) */
    int64_t busy_ms;        /* how long to wait for another writer's lock */
    bool create;            /* create the database when it is missing */
};

/* Where a link comes from. */
struct identity_prov {
    const char *kind;       /* "channel", "event" or "cli" */
    const char *by;         /* who says so: "channel:whatsapp", "agent:marina" */
    const char *reason;     /* why, or NULL */
    bool verified;          /* the source vouches that one person holds both handles */
    uint64_t ts;            /* when, ms since epoch */
    const char *envelope;   /* id of the envelope that said so, or NULL */
};

/* The outcome of one call. */
struct identity_result {
    char customer[IDENTITY_ID_LEN + 1];     /* the customer concerned, or "" */
    char conversation[IDENTITY_ID_LEN + 1]; /* the conversation, or "" */
    char other[IDENTITY_ID_LEN + 1];        /* the other customer of a conflict or merge */
    int64_t link;                           /* link made, refused or removed (0: none) */
    bool replay;                            /* the envelope had been processed before */
    bool merged;                            /* a link joined two customers */
    int parts;                              /* unlink: customers the old one is now */
    char field[40];                         /* IDENTITY_BAD: which field */
    char reason[240];                       /* IDENTITY_BAD, _CONFLICT, _NOT_FOUND: why */
};

/* Counters since the database was opened. */
struct identity_counts {
    uint64_t assigned;      /* envelopes given a customer for the first time */
    uint64_t replays;       /* envelopes seen before (answered from processed) */
    uint64_t customers;     /* customers created */
    uint64_t conversations; /* conversations started */
    uint64_t links;         /* links made */
    uint64_t merges;        /* customers joined by a link */
    uint64_t splits;        /* customers split by an unlink */
    uint64_t conflicts;     /* links refused */
    uint64_t cache_hits;    /* handle lookups answered from memory */
    uint64_t cache_misses;  /* handle lookups that went to the database */
};

/* What forget erased. */
struct identity_forgot {
    int handles;            /* handles */
    int links;              /* links */
    int conversations;      /* conversations */
    int customers;          /* customer ids (the live one and those merged into it) */
    int envelopes;          /* processed envelope ids */
    bool truncated;         /* the write-ahead log was emptied afterwards */
};

/* Opens (or creates) the database: WAL, synchronous=NORMAL, secure_delete,
 * the schema, and every prepared statement. Returns NULL with err[n]. */
struct identity *identity_open(const char *path, const struct identity_opts *o, char *err,
                               size_t n);
/* Rolls back what is not committed, and closes. */
void identity_destroy(struct identity **id);

/* BEGIN IMMEDIATE; drops the handle cache when another process has written
 * the database since the last transaction (PRAGMA data_version). */
int identity_begin(struct identity *id);
int identity_commit(struct identity *id);
void identity_rollback(struct identity *id);
/* True while a transaction is open. */
bool identity_in_transaction(const struct identity *id);

/* One envelope (already env_check'ed): sets customer and conversation (and
 * the normalised customer handle) in e, applies channel facts, link and
 * close events, records the id. On IDENTITY_BAD nothing was written and the
 * result says which field is wrong; on _BUSY/_ERROR nothing was written. */
int identity_assign(struct identity *id, struct env *e, struct identity_result *r);

/* Links two handles (normalised here). Without force, a link that would
 * join two customers each holding a different verified handle of one
 * scheme is refused (IDENTITY_CONFLICT, recorded as a refused link). */
int identity_link(struct identity *id, const char *h1, const char *h2,
                  const struct identity_prov *p, bool force, struct identity_result *r);
/* Removes link number link, or (link 0) the link between h1 and h2, and
 * splits the customer along the links that remain. */
int identity_unlink(struct identity *id, int64_t link, const char *h1, const char *h2,
                    const char *by, const char *reason, struct identity_result *r);
/* The live customer of a handle or a customer id (following merges), into
 * out. Returns IDENTITY_OK, _NOT_FOUND, _BAD (handle unreadable; r says why,
 * r may be NULL). */
int identity_resolve(struct identity *id, const char *what, char out[IDENTITY_ID_LEN + 1],
                     struct identity_result *r);
/* The identity graph of a customer: handles, links with provenance,
 * conversations, as text or one JSON object, appended to out. */
int identity_show(struct identity *id, const char *customer, bool json, struct buf *out);
/* Erases a customer (and the ids merged into it): handles, links,
 * conversations, processed ids. Needs a transaction; after the commit call
 * identity_checkpoint so that nothing of them stays in the log. */
int identity_forget(struct identity *id, const char *customer, struct identity_forgot *f);
/* Writes the latest activity of every conversation kept in memory (the
 * stage writes it lazily; see IDCONV_SLACK_MAX). Needs a transaction. */
int identity_sync(struct identity *id);
/* PRAGMA wal_checkpoint(TRUNCATE). Returns IDENTITY_OK or _BUSY (readers
 * kept part of the log). */
int identity_checkpoint(struct identity *id);

const struct identity_counts *identity_counts(const struct identity *id);

#endif
