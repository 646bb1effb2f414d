/* acks — the ack wire format and its sockets (DESIGN.md, "Delivery"). A
 * stage that has made envelopes durable says so by publishing their ids:
 * omni-archive to the ingestors' spools, omni-send to omni-archive. One ack
 * message is a msgpack array of id strings; the publisher binds a PUB (a
 * bare URI binds), each holder of unacknowledged envelopes connects a SUB
 * (a bare URI connects) and re-sends, with the same id, what stays
 * unacknowledged. Acks may be lost (PUB drops what a slow reader cannot
 * take): the holder then re-sends and the publisher, idempotent on id,
 * acks again. This file is the only one that packs or reads an ack. */
#ifndef OMNI_ACKS_H
#define OMNI_ACKS_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "endpoint.h"
#include "log.h"
#include "stage.h"

#define ACKS_LINGER_MS 1000     /* how long the last acks get to leave at exit */

/* Packs ids[0..n) as one ack message into b (which is reset first).
 * Returns 0, or -1 when out of memory. */
int acks_pack(struct buf *b, const char *const *ids, size_t n);

/* Called for each id of an ack message (not NUL-terminated: n bytes);
 * a non-zero return stops the walk (acks_read returns ACKS_STOP). */
typedef int (*acks_fn)(void *arg, const char *id, size_t n);

/* Walks one ack message, calling fn for each id in order. Returns the
 * number of ids (>= 0), ACKS_STOP when fn stopped it, or ACKS_BAD with a
 * reason in *why when the message is not an array of strings (the ids
 * before the bad element were given to fn). */
#define ACKS_BAD (-1)
#define ACKS_STOP (-2)
int64_t acks_read(const void *p, size_t n, acks_fn fn, void *arg, const char **why);

/* Reads the ack messages waiting on ep (a reader), without waiting and at
 * most max of them, giving each id to fn in order. A message that is not
 * an ack, or a socket error, is logged (rate limited by lim, naming
 * --option) and passed over. Returns the messages read, or ACKS_STOP when
 * fn stopped the walk (the rest stay for the next call). */
int acks_drain(struct ep *ep, int max, acks_fn fn, void *arg, const char *option,
               struct log_limit *lim);

/* Parses an ack endpoint option for its role (EP_TAP for the publisher,
 * EP_SUB for a reader) and refuses '-'. Returns 0, or -1 with a reason
 * naming the option in err[n]. */
int acks_check(const char *option, const char *endpoint, enum ep_role role, char *err, size_t n);
/* Opens it (after acks_check): a publisher lingers ACKS_LINGER_MS at
 * exit; a reader keeps up to 100,000 messages. CurveZMQ as the stage's.
 * Returns NULL with a reason in err[n]. */
struct ep *acks_open(struct stage_ctx *ctx, const char *option, const char *endpoint,
                     enum ep_role role, char *err, size_t n);

#endif
