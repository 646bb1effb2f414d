/* spool — an ingestor's durable queue (DESIGN.md, "Delivery"). An ingestor
 * puts each message here and commits BEFORE it acknowledges the channel
 * (HTTP 200, IMAP cursor, Telegram offset); the spool sends what is
 * committed on to the pipeline, drops what omni-archive acknowledges, and
 * re-sends, with the same id, what stays unacknowledged past a timeout.
 *
 * One sqlite database per ingestor (WAL, synchronous=FULL: an ack to a
 * channel is a promise), with the channel's own id (channel, src_id) unique,
 * so a duplicate delivery of one message gets the id of the first. A small
 * key/value table keeps cursors (Telegram offset, IMAP UIDVALIDITY/UID) in
 * the same transaction as the messages they cover.
 *
 * Typical source loop:
 *     parse request -> spool_put() each message -> spool_commit() -> answer 200
 *     spool_pump() from the stage's tick and after each commit
 *     spool_full() -> answer 503 (or hold the cursor) so the provider retries */
#ifndef OMNI_SPOOL_H
#define OMNI_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "envelope.h"
#include "opt.h"
#include "stage.h"

/* Settings; spool_options lists them for a stage's option table. */
struct spool_conf {
    const char *path;           /* --spool: the sqlite file */
    const char *acks;           /* --acks: omni-archive's ack endpoint (SUB connects) */
    int64_t resend_after_ms;    /* --resend-after: re-send unacked after this long */
    int64_t max;                /* --spool-max: backlog at which the ingestor refuses work */
    int64_t dedupe_ms;          /* --dedupe-window: how long (channel, src_id) is remembered */
};

struct spool;

/* Options for a stage that spools, filling a struct spool_conf at offset
 * `base` of the stage's conf struct: --spool, --acks, --resend-after,
 * --spool-max, --dedupe-window. Copy them into the stage's table with
 * spool_opts_into(): it writes them at table[0..] followed by the { NULL }
 * that ends a table (max must leave room for both; asserted) and returns
 * how many it wrote, the terminator not counted. */
size_t spool_opts_into(struct opt *table, size_t max, size_t base);

/* Opens (creates) the spool. ctx gives the ZeroMQ context for --acks (it
 * may be NULL when there is no --acks and a sender is set before
 * spool_pump). What was sent and not acknowledged before a restart is due
 * again at once: the last process may have died with it in its queues.
 * Returns NULL with a reason in err[n]. */
struct spool *spool_open(struct stage_ctx *ctx, const struct spool_conf *conf,
                         char *err, size_t n);
void spool_destroy(struct spool **sp);

/* Adds e to the open transaction (opening one when none is). e needs a
 * channel; v, ts and id are filled when absent. When (channel, src_id) is
 * already spooled, or was within --dedupe-window (acknowledged rows are
 * deleted, their channel ids remembered), e's id is replaced by the first
 * one's and 1 is returned (a duplicate: nothing new is stored); otherwise
 * 0. -1 on a database error (roll back). */
int spool_put(struct spool *sp, struct env *e);
/* Sets a cursor in the open transaction (e.g. "telegram.offset"). */
int spool_state_set(struct spool *sp, const char *key, const char *value);
/* Reads a cursor into out[n]; 1 found, 0 absent, -1 error. */
int spool_state_get(struct spool *sp, const char *key, char *out, size_t n);
/* Commits the open transaction durably. Only after this returns 0 may the
 * channel be acknowledged. Returns 0, or -1 (the transaction is rolled
 * back: answer the channel with an error so that it retries). */
int spool_commit(struct spool *sp);
/* Drops the open transaction. */
void spool_rollback(struct spool *sp);

/* Sends (stage_emit) what is committed and not yet sent, then what is
 * unacknowledged past resend_after, and reads pending acks. Call it after
 * each commit and from tick(); it does nothing while a transaction is open
 * (what is in it is not committed). Without --acks a row is deleted once
 * sent. A row re-sent again and again waits longer each time (twice, up to
 * eight times resend_after). Returns envelopes sent (at most a batch of
 * SPOOL_PUMP_BATCH: call again when it returns that many), or -1. */
#define SPOOL_PUMP_BATCH 256
int spool_pump(struct spool *sp, struct stage_ctx *ctx);
/* How spool_pump hands an envelope on: 0 sent, 1 not now (the next stage
 * is full or not there: the row stays due), -1 failed. */
typedef int (*spool_send_fn)(void *arg, struct env *e);
/* Replaces stage_emit, spool_pump's default sender (tests give one that
 * captures; sources use spool_set_output). */
void spool_set_sender(struct spool *sp, spool_send_fn fn, void *arg);
/* A source's own endpoints (stage_open_ep): spool_pump then sends with
 * stage_emit_to, never waiting, flushes out when it is stdout (a closed
 * stdout stops the stage), and publishes the backlog on tap (may be NULL)
 * about once a second, as a stats event for omni-metrics. */
void spool_set_output(struct spool *sp, struct ep *out, struct ep *tap);
/* Envelopes spool_pump has sent (re-sends included), for the log. */
uint64_t spool_sent(const struct spool *sp);
/* Milliseconds until spool_pump has something to send (0: now), or -1 when
 * nothing is waiting, for a source's poll timeout. */
int64_t spool_next_ms(const struct spool *sp);
/* Marks ids as acknowledged (what arrives on --acks goes here too). */
int spool_ack(struct spool *sp, const char *const *ids, size_t n);
/* Envelopes spooled and not yet acknowledged. */
int64_t spool_backlog(const struct spool *sp);
/* True when the backlog has reached --spool-max: refuse new work. */
bool spool_full(const struct spool *sp);
/* The ZeroMQ socket of --acks (or NULL), for a source's own poll loop. */
void *spool_acks_socket(const struct spool *sp);

#endif
