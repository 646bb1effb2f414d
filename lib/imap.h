/* imap — omni-ingest-mail's stage, and the IMAP client it polls with.
 *
 * The stage (imap_stage) has two modes:
 *   - without --imap, one RFC 5322 message on stdin, for an MTA pipe
 *     (Postfix: `| omni-ingest-mail --spool …`): exit 0 once it is
 *     committed to the spool, 75 (EX_TEMPFAIL: the MTA retries) when it
 *     could not be stored or the spool is full, 65 when it is not a
 *     message at all (the MTA bounces it);
 *   - with --imap imaps://host/INBOX, the mailbox polled every --interval:
 *     the UIDs above a (UIDVALIDITY, UID) cursor, in order, each parsed
 *     (lib/mail.c) and spooled, the cursor advanced in the same
 *     transaction ("imap.cursor"). Never "unread only", never a re-read
 *     window. When UIDVALIDITY changes the mailbox is read again from its
 *     first UID; what was spooled before is known by its Message-ID
 *     (src_id) and not doubled. A message that cannot be parsed goes to
 *     --dead and the cursor moves past it.
 *
 * The client reads one mailbox with libcurl: the UIDs above a cursor,
 * then each message by UID, checked against the mailbox's UIDVALIDITY.
 * It keeps no cursor itself.
 *
 * One session per poll: imap_search logs in and SELECTs (so a new
 * UIDVALIDITY or new mail is always seen), imap_fetch reuses that
 * connection, imap_close logs out. A message fetched is marked \Seen by
 * the server, as by any mail client; what was ingested is the cursor's
 * business, never the flag's. */
#ifndef OMNI_IMAP_H
#define OMNI_IMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "stage.h"

/* The stage descriptor (its option table is completed on the first call). */
const struct stage *imap_stage(void);

/* Settings. */
struct imap_conf {
    const char *url;            /* imaps://host[:port]/MAILBOX (imap:// for loopback tests) */
    const char *user;           /* login, or NULL */
    const char *password;       /* its password, or NULL */
    int64_t timeout_ms;         /* longest one command may take */
    size_t max_bytes;           /* bytes of a message kept; the rest is read and dropped */
    /* Asked about once a second during a transfer; true aborts it. */
    bool (*cancel)(void *arg);
    void *cancel_arg;           /* its argument */
};

/* What imap_fetch found. */
enum imap_status {
    IMAP_OK = 0,        /* the message is in out */
    IMAP_GONE = 1,      /* no such UID under this UIDVALIDITY (expunged, or the mailbox changed) */
    IMAP_ERROR = -1,    /* the server or the network failed: try again later */
    IMAP_CANCELLED = -2 /* cancel() said so */
};

struct imap;

/* Checks the URL (imap:// or imaps://, a mailbox, INBOX when none) and
 * sets up a handle. Returns NULL with a reason in err[n]. */
struct imap *imap_new(const struct imap_conf *conf, char *err, size_t n);
void imap_destroy(struct imap **im);

/* Logs in, selects the mailbox, and lists the UIDs above `after` in
 * ascending order into *uids (*n of them; the caller frees *uids). The
 * mailbox's UIDVALIDITY goes to *uidvalidity. Returns IMAP_OK,
 * IMAP_ERROR or IMAP_CANCELLED, with a reason in err[errn]. */
int imap_search(struct imap *im, uint64_t after, uint64_t *uidvalidity, uint64_t **uids, size_t *n,
                char *err, size_t errn);
/* Fetches message uid into out (reset first), provided the mailbox still
 * has uidvalidity. *truncated says whether it was longer than max_bytes.
 * Returns an enum imap_status, with a reason in err[errn]. */
int imap_fetch(struct imap *im, uint64_t uidvalidity, uint64_t uid, struct buf *out, bool *truncated,
               char *err, size_t errn);
/* Ends the session (LOGOUT); the next imap_search starts a new one. */
void imap_close(struct imap *im);

/* The URL without credentials, for log lines. */
const char *imap_name(const struct imap *im);

#endif
