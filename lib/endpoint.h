/* endpoint — where envelopes come from and go to.
 *
 *   -                 stdin / stdout, a stream of msgpack maps
 *   @tcp://0.0.0.0:5551  bind
 *   >tcp://host:5551     connect
 *   ipc://path           bare URI: binds for input and tap, connects for output
 *
 * The main line is PUSH -> PULL (N copies of a stage connected to one bound
 * endpoint share its load); --tap is PUB for observers that may lose; a
 * reader of a tap uses SUB. One message is one ZeroMQ frame holding one
 * msgpack map. */
#ifndef OMNI_ENDPOINT_H
#define OMNI_ENDPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum ep_mode {
    EP_STDIO,       /* "-" */
    EP_BIND,        /* "@uri", or a bare uri for in and tap */
    EP_CONNECT,     /* ">uri", or a bare uri for out and dead */
};

enum ep_role {
    EP_IN,          /* PULL, or stdin */
    EP_OUT,         /* PUSH, or stdout */
    EP_TAP,         /* PUB: copies for observers */
    EP_SUB,         /* SUB of everything: reading someone's tap */
};

struct ep_spec {
    enum ep_mode mode;      /* stdio, bind or connect */
    char uri[256];          /* tcp://…, ipc://…, inproc://…; empty for stdio */
};

/* Socket settings shared by all endpoints of a process. */
struct curve;

struct ep_opts {
    int hwm;                /* high-water mark, messages queued per socket */
    int linger_ms;          /* how long close waits to deliver queued output */
    const struct curve *curve;  /* CurveZMQ for tcp:// endpoints, or NULL */
};

/* Results of ep_recv. */
enum ep_status {
    EP_MSG = 1,     /* a message is in *p, *n */
    EP_AGAIN = 2,   /* nothing ready now (not 0: ep_send returns 0 for sent) */
    EP_EOF = -1,    /* stdin ended, nothing left */
    EP_ERROR = -2,  /* the endpoint failed (errno set) */
    EP_BAD = -3,    /* bytes that are not msgpack; *p, *n hold (the start of) them */
};

struct ep;

/* Parses text for role. Returns 0, or -1 with a reason in err[n]. */
int ep_parse(const char *text, enum ep_role role, struct ep_spec *spec, char *err, size_t n);
/* Opens the endpoint (binds, connects or takes the stdio fd). zctx may be
 * NULL for stdio. Returns NULL with a reason in err[n]. */
struct ep *ep_open(void *zctx, const struct ep_spec *spec, enum ep_role role,
                   const struct ep_opts *opts, char *err, size_t n);
/* Flushes stdout (or lets ZeroMQ linger) and closes. */
void ep_destroy(struct ep **ep);

/* Takes one message without blocking. For stdin, call ep_fill when ep_recv
 * says EP_AGAIN and the fd is readable. The message stays valid until the
 * next ep_recv. */
enum ep_status ep_recv(struct ep *ep, const void **p, size_t *n);
/* Reads what stdin has (one read). Returns >0 bytes, 0 at EOF, -1 on error
 * (EAGAIN / EINTR included, errno set). */
long ep_fill(struct ep *ep);
/* Sends one message. Stdout: buffered, never EP_AGAIN. PUSH: waits up to
 * timeout_ms for room (0 = not at all) and returns EP_AGAIN when there is
 * none. PUB: never waits, drops when full (counted). Returns 0, EP_AGAIN, or
 * EP_ERROR (errno set; EPIPE when stdout is closed). */
int ep_send(struct ep *ep, const void *p, size_t n, int timeout_ms);
/* Writes buffered stdout. Returns 0 or -1 (errno set). */
int ep_flush(struct ep *ep);

/* For polling: the ZeroMQ socket (or NULL) and the fd (or -1). */
void *ep_socket(const struct ep *ep);
int ep_fd(const struct ep *ep);
bool ep_is_stdio(const struct ep *ep);
/* Why the last EP_BAD was bad ("not msgpack", ...). */
const char *ep_bad_reason(const struct ep *ep);
/* Messages a PUB endpoint dropped because its observers were slow. */
uint64_t ep_dropped(const struct ep *ep);
/* The endpoint as text, for logs. */
const char *ep_name(const struct ep *ep);

#endif
