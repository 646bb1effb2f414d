/* archive — omni-archive, the durable sink of the pipeline (DESIGN.md,
 * "Delivery"). Every envelope (in, out, event) is stored in sqlite as the
 * msgpack it came as, plus indexed columns, an FTS5 index over text and
 * subject, and a conversations table kept from the stream. Rows are group
 * committed (--batch envelopes or --batch-ms, whichever comes first); after
 * each commit the ids are published on --acks and the envelopes passed on.
 *
 * The CLI for people (history, search, export, forget, retain, acks) is in
 * archive_cli.c; it reads through a read-only connection while the service
 * writes. */
#ifndef OMNI_ARCHIVE_H
#define OMNI_ARCHIVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "envelope.h"
#include "stage.h"

#define ARCHIVE_SCHEMA_VERSION 1    /* PRAGMA user_version of the database */

extern const struct stage archive_stage;

/* The tables, indexes and triggers (CREATE ... IF NOT EXISTS). */
extern const char archive_sql_schema[];
/* INSERT OR IGNORE of one message: ?1 id, ?2 ts, ?3 channel, ?4 dir,
 * ?5 customer, ?6 conversation, ?7 from, ?8 to, ?9 text, ?10 subject,
 * ?11 reply_to, ?12 the envelope's msgpack. */
extern const char archive_sql_insert[];
/* Upsert of a conversation from one newly stored message: ?1 conversation,
 * ?2 customer, ?3 status or NULL, ?4 ts, ?5 channel, ?6 ts when dir=in,
 * ?7 1 for a message (in, out) and 0 for an event, ?8 ts of a close event,
 * ?9 ts when dir=out. */
extern const char archive_sql_conversation[];

/* How a connection is opened. */
enum archive_mode {
    ARCHIVE_SERVICE,    /* read-write, created when missing, schema made */
    ARCHIVE_READ,       /* read-only, for the CLI while the service writes */
    ARCHIVE_WRITE,      /* read-write on an existing archive (forget, retain) */
};

/* Options of a service connection. */
struct archive_db_opts {
    bool sync_full;         /* synchronous=FULL (else NORMAL) */
    int busy_ms;            /* busy_timeout */
};

/* The columns of one message, pointing into its envelope. */
struct archive_row {
    const char *id;             /* ULID, the key */
    uint64_t ts;                /* ms since epoch */
    const char *channel;        /* whatsapp, sms, ... */
    const char *dir;            /* in, out, event */
    const char *customer;       /* or NULL */
    const char *conversation;   /* or NULL */
    const char *from;           /* or NULL */
    const char *to;             /* or NULL */
    const char *text;           /* or NULL */
    const char *subject;        /* or NULL */
    const char *reply_to;       /* or NULL */
    const void *env;            /* the envelope's msgpack */
    size_t env_len;             /* its bytes */
    const char *status;         /* conversation status it implies, or NULL */
    bool close;                 /* a close event (meta.event = "close") */
};

/* Opens path as mode says (opts only for ARCHIVE_SERVICE; may be NULL
 * otherwise). Returns 0, or an exit code with a reason in err[n]:
 * 66 when the file is missing, EXIT_CONFIG when it is not an archive or
 * its schema is newer, EXIT_UNAVAILABLE when sqlite fails. */
int archive_open(const char *path, enum archive_mode mode, const struct archive_db_opts *opts,
                 sqlite3 **db, char *err, size_t n);
/* Fills row from e; env/env_len is its encoded msgpack (e's bytes). */
void archive_row_from_env(struct archive_row *row, const struct env *e, const void *env,
                          size_t env_len);
/* The conversation status an envelope implies: "closed" for a close event,
 * else from route: "assigned" (agent), "bot" (target bot), "queued"
 * (queue or another target); NULL when it says nothing. */
const char *archive_status(const struct env *e, bool *close);
/* Binds row to a statement prepared from archive_sql_insert. */
int archive_bind_insert(sqlite3_stmt *st, const struct archive_row *row);
/* Binds row to a statement prepared from archive_sql_conversation. */
int archive_bind_conversation(sqlite3_stmt *st, const struct archive_row *row);
/* Deletes messages with ts < cutoff_ms and conversations idle since before
 * it, at most limit messages per transaction, until done (max_rounds > 0:
 * at most that many transactions). Returns the messages deleted, or -1 with
 * *rc the sqlite result (SQLITE_BUSY: try again). *convs gets the
 * conversations deleted (may be NULL). */
int64_t archive_retain(sqlite3 *db, uint64_t cutoff_ms, int limit, int max_rounds,
                       int64_t *convs, int *rc);

/* A CLI subcommand: argv[0] is its name. Returns the exit code. */
typedef int archive_cmd(int argc, char **argv);
/* The subcommand called name (history, search, export, forget, retain,
 * acks), or NULL. */
archive_cmd *archive_cli_find(const char *name);

#endif
