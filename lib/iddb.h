/* iddb — the identity database, shared by the files of the identity
 * library (identity.c, idconv.c, idgraph.c, idenv.c) and by no one else:
 * callers use identity.h. What struct identity is, the prepared statements
 * and the helpers that run them, the cache of hot handles, and the
 * customers and handles tables.
 *
 * Tables (one database, WAL):
 *   customers      id, created, merged_into (the customer that absorbed it)
 *   handles        handle -> customer, and origin: the customer it first had,
 *                  so that an unlink gives split customers their old ids back
 *   links          a < b, state (active, removed, refused), provenance
 *   conversations  per customer; open until closed or idle
 *   processed      envelope id -> customer, conversation: replays change nothing
 *
 * Writes inside identity_assign are undone together: the first undoable
 * statement opens the envelope's savepoint (iddb_run, iddb_row). */
#ifndef OMNI_IDDB_H
#define OMNI_IDDB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "idconv.h"
#include "identity.h"
#include "log.h"
#include "ulid.h"

#define IDDB_KEY_MAX 79         /* longest handle kept in the cache */
#define IDDB_WINDOW 8           /* slots a handle (or a customer) may live in */
#define IDDB_FACT 0x1u          /* cache flag: this handle's channel fact is recorded */

/* Prepared statements, kept for the life of the connection. */
enum iddb_q {
    IDDB_Q_BEGIN, IDDB_Q_COMMIT, IDDB_Q_ROLLBACK, IDDB_Q_SAVE, IDDB_Q_RELEASE, IDDB_Q_UNDO,
    IDDB_Q_DATA_VERSION,
    IDDB_Q_PROC_GET, IDDB_Q_PROC_PUT,
    IDDB_Q_HANDLE_GET, IDDB_Q_HANDLE_PUT, IDDB_Q_HANDLE_SET, IDDB_Q_HANDLES_OF, IDDB_Q_HANDLES_MOVE,
    IDDB_Q_CUS_PUT, IDDB_Q_CUS_GET, IDDB_Q_CUS_MERGE, IDDB_Q_CUS_SET_MERGED,
    IDDB_Q_LINK_GET, IDDB_Q_LINK_PUT, IDDB_Q_LINK_BY_ID, IDDB_Q_LINK_REMOVE, IDDB_Q_LINKS_IN,
    IDDB_Q_VERIFIED,
    IDDB_Q_CNV_OPEN, IDDB_Q_CNV_TOUCH, IDDB_Q_CNV_NEW, IDDB_Q_CNV_CLOSE, IDDB_Q_CNV_GET,
    IDDB_Q_CNV_MOVE, IDDB_Q_CNV_MOVE_ORIGIN,
    IDDB_Q_N
};

/* One cache slot: a hot handle and its customer. Its hash lives apart
 * (cache_tag), eight to a cache line, so a lookup touches one line until
 * it finds its key. */
struct iddb_slot {
    uint32_t gen;                           /* valid while equal to the cache's */
    uint32_t flags;                         /* IDDB_FACT */
    char customer[IDENTITY_ID_LEN + 1];     /* the handle's customer */
    char key[IDDB_KEY_MAX + 1];             /* the handle */
};

/* What identity.h's struct identity is. */
struct identity {
    sqlite3 *db;                    /* the connection */
    sqlite3_stmt *st[IDDB_Q_N];     /* prepared statements */
    struct identity_opts opts;      /* options */
    struct ulid_gen ids;            /* customer and conversation ids */
    struct iddb_slot *cache;        /* hot handles, or NULL */
    uint64_t *cache_tag;            /* hash of each slot's handle; 0: empty */
    size_t cache_mask;              /* slots - 1 (a power of two) */
    uint32_t gen;                   /* cache generation: bumping it empties the cache */
    uint32_t evict;                 /* next victim in a full window */
    struct idconv_slot *conv;       /* open conversations of hot customers, or NULL */
    uint64_t *conv_tag;             /* hash of each slot's customer id; 0: empty */
    size_t conv_mask;               /* slots - 1 (a power of two) */
    uint32_t conv_gen;              /* conversation-cache generation */
    uint32_t conv_evict;            /* next victim in a full window */
    struct idconv_slot scratch;     /* the one slot used when there is no cache */
    int64_t slack_ms;               /* how far last may run ahead of the database */
    int64_t data_version;           /* PRAGMA data_version at the last begin */
    bool in_envelope;               /* inside identity_assign */
    bool savepoint;                 /* the envelope's savepoint is open */
    struct identity_counts counts;  /* counters */
    struct log_limit err_limit;     /* rate limit of database errors */
    struct log_limit warn_limit;    /* rate limit of refused links */
};

/* -- the connection ------------------------------------------------------ */

/* Opens path with id->opts (create, busy_ms): WAL, synchronous=NORMAL,
 * secure_delete, the schema, and every prepared statement. Returns 0, or
 * -1 with err[n]; identity_destroy cleans up either way. */
int iddb_connect(struct identity *id, const char *path, char *err, size_t n);
/* Rolls back what is not committed, finalises the statements, closes. */
void iddb_disconnect(struct identity *id);
/* PRAGMA data_version (changes when another connection commits), or -1. */
int64_t iddb_data_version(struct identity *id);

/* -- statements and shared helpers --------------------------------------- */

/* The SQL of statement q, for messages. */
const char *iddb_sql(enum iddb_q q);
/* A failed sqlite call (rc) while doing what: IDENTITY_BUSY, or
 * IDENTITY_ERROR logged (rate-limited). */
int iddb_dberr(struct identity *id, int rc, const char *what);
/* Binds s to parameter i, NULL when s is NULL or ""; s must outlive the step. */
void iddb_text(sqlite3_stmt *st, int i, const char *s);
/* Column i as text into out[n], "" when NULL. */
void iddb_col(sqlite3_stmt *st, int i, char *out, size_t n);
/* Runs statement q (bound by the caller) whose rows are not needed, and
 * resets it: IDENTITY_OK or an error. */
int iddb_run(struct identity *id, enum iddb_q q);
/* Steps query q: IDENTITY_OK with a row (read it, then sqlite3_reset), or
 * _NOT_FOUND / an error, reset done. */
int iddb_row(struct identity *id, enum iddb_q q);
/* Fills r->field and r->reason; returns IDENTITY_BAD. */
int iddb_bad(struct identity_result *r, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* -- the cache of hot handles -------------------------------------------- */

/* FNV-1a of s[n], never 0 (0 marks an empty slot). */
uint64_t iddb_hash(const char *s, size_t n);
/* The first slot of h's window of IDDB_WINDOW slots in a table of mask + 1. */
size_t iddb_window(uint64_t h, size_t mask);
/* Sets flag (IDDB_FACT) on handle key when it is cached. */
void iddb_cache_flag(struct identity *id, const char *key, uint32_t flag);
/* Empties the handle cache. */
void iddb_cache_clear(struct identity *id);

/* -- customers and handles ----------------------------------------------- */

/* A new id "prefix" + ULID at ts into out. */
int iddb_new_id(struct identity *id, const char *prefix, uint64_t ts,
                char out[IDENTITY_ID_LEN + 1]);
/* The customer of handle h: IDENTITY_OK with out (and the cache flags, when
 * flags is not NULL), _NOT_FOUND, or an error. */
int iddb_customer_get(struct identity *id, const char *h, char out[IDENTITY_ID_LEN + 1],
                      uint32_t *flags);
/* A new customer created at ts; its id into out. */
int iddb_customer_new(struct identity *id, uint64_t ts, char out[IDENTITY_ID_LEN + 1]);
/* Gives handle h (new) to customer c. */
int iddb_handle_put(struct identity *id, const char *h, const char *c, uint64_t ts);
/* The customer of h, made when h is new. */
int iddb_customer_ensure(struct identity *id, const char *h, uint64_t ts,
                         char out[IDENTITY_ID_LEN + 1]);
/* The live customer of a customer id, following merges: IDENTITY_OK,
 * _NOT_FOUND, or an error. */
int iddb_customer_live(struct identity *id, const char *c, char out[IDENTITY_ID_LEN + 1]);

#endif
