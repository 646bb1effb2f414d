/* endpoint — stdio and ZeroMQ endpoints; see endpoint.h. */
#include "endpoint.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zmq.h>

#include "buf.h"
#include "curve.h"
#include "envelope.h"
#include "mp.h"

#define STDOUT_FLUSH_AT (64u << 10)     /* flush stdout once this much waits */
#define STDIN_READ (64u << 10)          /* bytes asked of one read(2) */
#define BAD_SHOWN 64u                   /* bytes of a bad run handed back */

struct ep {
    enum ep_role role;          /* what it is for */
    struct ep_spec spec;        /* where */
    char name[272];             /* spec as text, for logs */
    void *sock;                 /* ZeroMQ socket, or NULL for stdio */
    int fd;                     /* stdio fd, or -1 */
    zmq_msg_t msg;              /* last message received */
    bool have_msg;              /* msg needs closing */
    struct buf in;              /* stdin bytes not yet handed out */
    size_t in_off;              /* start of the next message in `in` */
    bool eof;                   /* stdin has ended */
    struct buf out;             /* stdout bytes not yet written */
    uint64_t dropped;           /* PUB messages dropped at the HWM */
    const char *bad_reason;     /* why the last EP_BAD was bad */
};

static int s_fail(char *err, size_t n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int s_fail(char *err, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
    return -1;
}

int ep_parse(const char *text, enum ep_role role, struct ep_spec *spec, char *err, size_t n)
{
    memset(spec, 0, sizeof *spec);
    if (text == NULL || text[0] == '\0') {
        return s_fail(err, n, "empty endpoint");
    }
    if (strcmp(text, "-") == 0) {
        if (role != EP_IN && role != EP_OUT) {
            return s_fail(err, n, "'-' (stdin/stdout) is only for --in and --out");
        }
        spec->mode = EP_STDIO;
        return 0;
    }
    const char *uri = text;
    if (text[0] == '@') {
        spec->mode = EP_BIND;
        uri++;
    } else if (text[0] == '>') {
        spec->mode = EP_CONNECT;
        uri++;
    } else {
        spec->mode = (role == EP_IN || role == EP_TAP) ? EP_BIND : EP_CONNECT;
    }
    const char *sep = strstr(uri, "://");
    if (sep == NULL) {
        return s_fail(err, n, "'%s' is not an endpoint (-, @uri, >uri; uri is tcp://, ipc:// or inproc://)",
                      text);
    }
    size_t slen = (size_t)(sep - uri);
    const char *rest = sep + 3;
    if (!((slen == 3 && !strncmp(uri, "tcp", 3)) || (slen == 3 && !strncmp(uri, "ipc", 3))
          || (slen == 6 && !strncmp(uri, "inproc", 6)))) {
        return s_fail(err, n, "'%s': unknown transport (tcp, ipc or inproc)", text);
    }
    if (rest[0] == '\0') {
        return s_fail(err, n, "'%s': nothing after ://", text);
    }
    if (slen == 3 && !strncmp(uri, "tcp", 3)) {
        const char *colon = strrchr(rest, ':');
        if (colon == NULL || colon[1] == '\0' || colon == rest) {
            return s_fail(err, n, "'%s': tcp needs host:port", text);
        }
        for (const char *c = colon + 1; *c; c++) {
            if ((*c < '0' || *c > '9') && !(*c == '*' && spec->mode == EP_BIND)) {
                return s_fail(err, n, "'%s': port '%s' is not a number", text, colon + 1);
            }
        }
    }
    if (slen == 3 && !strncmp(uri, "ipc", 3) && strlen(rest) > 107) {
        return s_fail(err, n, "'%s': ipc path longer than 107 bytes", text);
    }
    if (strlen(uri) >= sizeof spec->uri) {
        return s_fail(err, n, "'%s': longer than 255 bytes", text);
    }
    memcpy(spec->uri, uri, strlen(uri) + 1);
    return 0;
}

static int s_setint(void *sock, int opt, int v)
{
    return zmq_setsockopt(sock, opt, &v, sizeof v);
}

struct ep *ep_open(void *zctx, const struct ep_spec *spec, enum ep_role role,
                   const struct ep_opts *opts, char *err, size_t n)
{
    struct ep *ep = calloc(1, sizeof *ep);
    if (ep == NULL) {
        snprintf(err, n, "out of memory");
        return NULL;
    }
    ep->role = role;
    ep->spec = *spec;
    ep->fd = -1;
    if (spec->mode == EP_STDIO) {
        snprintf(ep->name, sizeof ep->name, "%s", role == EP_IN ? "stdin" : "stdout");
        ep->fd = role == EP_IN ? STDIN_FILENO : STDOUT_FILENO;
        return ep;
    }
    snprintf(ep->name, sizeof ep->name, "%s%s", spec->mode == EP_BIND ? "@" : ">", spec->uri);
    assert(zctx != NULL);
    static const int types[] = { [EP_IN] = ZMQ_PULL, [EP_OUT] = ZMQ_PUSH,
                                 [EP_TAP] = ZMQ_PUB, [EP_SUB] = ZMQ_SUB };
    ep->sock = zmq_socket(zctx, types[role]);
    if (ep->sock == NULL) {
        snprintf(err, n, "%s: %s", ep->name, zmq_strerror(zmq_errno()));
        free(ep);
        return NULL;
    }
    /* HWM: bounds memory per socket; past it PUSH blocks (backpressure up
     * the line) and PUB drops (observers must never slow the main line). */
    s_setint(ep->sock, role == EP_IN || role == EP_SUB ? ZMQ_RCVHWM : ZMQ_SNDHWM, opts->hwm);
    /* Linger: output gets a bounded time to deliver what is queued when the
     * process closes; input and taps have nothing worth waiting for. */
    s_setint(ep->sock, ZMQ_LINGER, role == EP_OUT ? opts->linger_ms : 0);
    /* Immediate: queue only to peers whose connection is complete, so a
     * message never waits on a peer that is not there while another is. */
    if (role == EP_OUT) {
        s_setint(ep->sock, ZMQ_IMMEDIATE, 1);
    }
    /* Reconnect fast after a peer restarts, back off to 5 s when it stays down. */
    s_setint(ep->sock, ZMQ_RECONNECT_IVL, 100);
    s_setint(ep->sock, ZMQ_RECONNECT_IVL_MAX, 5000);
    /* TCP keepalive: notice a peer host that vanished without a FIN. */
    s_setint(ep->sock, ZMQ_TCP_KEEPALIVE, 1);
    s_setint(ep->sock, ZMQ_TCP_KEEPALIVE_IDLE, 60);
    if (role == EP_SUB) {
        zmq_setsockopt(ep->sock, ZMQ_SUBSCRIBE, "", 0);
    }
    /* CurveZMQ on tcp (between hosts); ipc and inproc stay on this host. */
    if (opts->curve != NULL && strncmp(spec->uri, "tcp://", 6) == 0
        && curve_apply(opts->curve, ep->sock, spec->mode == EP_BIND, err, n) != 0) {
        zmq_close(ep->sock);
        free(ep);
        return NULL;
    }
    int rc = spec->mode == EP_BIND ? zmq_bind(ep->sock, spec->uri) : zmq_connect(ep->sock, spec->uri);
    if (rc != 0) {
        snprintf(err, n, "%s %s: %s", spec->mode == EP_BIND ? "bind" : "connect", ep->name,
                 zmq_strerror(zmq_errno()));
        zmq_close(ep->sock);
        free(ep);
        return NULL;
    }
    return ep;
}

void ep_destroy(struct ep **epp)
{
    struct ep *ep = *epp;
    if (ep == NULL) {
        return;
    }
    if (ep->sock != NULL) {
        if (ep->have_msg) {
            zmq_msg_close(&ep->msg);
        }
        zmq_close(ep->sock);
    } else {
        if (ep->role == EP_OUT) {
            ep_flush(ep);
        }
    }
    buf_free(&ep->in);
    buf_free(&ep->out);
    free(ep);
    *epp = NULL;
}

long ep_fill(struct ep *ep)
{
    assert(ep->fd >= 0 && ep->role == EP_IN);
    /* Drop what was handed out before reading more. */
    if (ep->in_off > 0) {
        memmove(ep->in.data, ep->in.data + ep->in_off, ep->in.len - ep->in_off);
        ep->in.len -= ep->in_off;
        ep->in_off = 0;
    }
    if (buf_reserve(&ep->in, STDIN_READ) != 0) {
        errno = ENOMEM;
        return -1;
    }
    ssize_t r = read(ep->fd, ep->in.data + ep->in.len, STDIN_READ);
    if (r < 0) {
        return -1;
    }
    if (r == 0) {
        ep->eof = true;
        return 0;
    }
    ep->in.len += (size_t)r;
    return (long)r;
}

static enum ep_status s_recv_stdin(struct ep *ep, const void **p, size_t *n)
{
    const char *base = ep->in.data + ep->in_off;
    size_t avail = ep->in.len - ep->in_off;
    if (avail == 0) {
        return ep->eof ? EP_EOF : EP_AGAIN;
    }
    /* mp_frame counts the elements still due instead of recursing, so
     * nesting is no limit here (msgpack-c's unpacker stops at 32 levels,
     * with an out-of-memory error); env_decode judges depth. */
    long len = mp_frame(base, avail);
    if (len > 0) {
        *p = base;
        *n = (size_t)len;
        ep->in_off += (size_t)len;
        return EP_MSG;
    }
    if (len == 0 && !ep->eof && avail <= ENV_MAX_BYTES + 16) {
        return EP_AGAIN;
    }
    *p = base;
    *n = avail < BAD_SHOWN ? avail : BAD_SHOWN;
    if (len == 0 && ep->eof) {
        ep->bad_reason = "truncated msgpack at end of input";
        ep->in_off += avail;
        return EP_BAD;
    }
    /* Not msgpack, or larger than any envelope: skip to the next offset
     * where msgpack could begin, and report the run once. */
    ep->bad_reason = len == 0 ? "message larger than the envelope limit" : "not msgpack";
    size_t skip = 1;
    while (skip < avail) {
        long l2 = mp_frame(base + skip, avail - skip);
        if (l2 > 0 || (l2 == 0 && avail - skip <= ENV_MAX_BYTES + 16)) {
            break;
        }
        skip++;
    }
    ep->in_off += skip;
    return EP_BAD;
}

enum ep_status ep_recv(struct ep *ep, const void **p, size_t *n)
{
    assert(ep->role == EP_IN || ep->role == EP_SUB);
    if (ep->sock == NULL) {
        return s_recv_stdin(ep, p, n);
    }
    for (;;) {
        if (ep->have_msg) {
            zmq_msg_close(&ep->msg);
            ep->have_msg = false;
        }
        zmq_msg_init(&ep->msg);
        ep->have_msg = true;
        if (zmq_msg_recv(&ep->msg, ep->sock, ZMQ_DONTWAIT) < 0) {
            int e = zmq_errno();
            if (e == EAGAIN || e == EINTR) {
                return EP_AGAIN;
            }
            errno = e;
            return EP_ERROR;
        }
        if (!zmq_msg_more(&ep->msg)) {
            *p = zmq_msg_data(&ep->msg);
            *n = zmq_msg_size(&ep->msg);
            return EP_MSG;
        }
        /* A multipart message is not ours: report its first frame, drop the rest. */
        zmq_msg_t rest;
        zmq_msg_init(&rest);
        int more = 1;
        while (more && zmq_msg_recv(&rest, ep->sock, 0) >= 0) {
            more = zmq_msg_more(&rest);
        }
        zmq_msg_close(&rest);
        *p = zmq_msg_data(&ep->msg);
        *n = zmq_msg_size(&ep->msg) < BAD_SHOWN ? zmq_msg_size(&ep->msg) : BAD_SHOWN;
        ep->bad_reason = "multipart message";
        return EP_BAD;
    }
}

int ep_flush(struct ep *ep)
{
    if (ep->fd < 0 || ep->role != EP_OUT) {
        return 0;
    }
    size_t done = 0;
    int rc = 0;
    while (done < ep->out.len) {
        ssize_t w = write(ep->fd, ep->out.data + done, ep->out.len - done);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            rc = -1;
            break;
        }
        done += (size_t)w;
    }
    if (rc != 0) {
        int e = errno;
        /* What could not be written is gone with the reader. */
        buf_reset(&ep->out);
        errno = e;
        return -1;
    }
    buf_reset(&ep->out);
    return 0;
}

int ep_send(struct ep *ep, const void *p, size_t n, int timeout_ms)
{
    assert(ep->role == EP_OUT || ep->role == EP_TAP);
    if (ep->sock == NULL) {
        if (buf_append(&ep->out, p, n) != 0) {
            errno = ENOMEM;
            return EP_ERROR;
        }
        if (ep->out.len >= STDOUT_FLUSH_AT) {
            return ep_flush(ep) == 0 ? 0 : EP_ERROR;
        }
        return 0;
    }
    if (zmq_send(ep->sock, p, n, ZMQ_DONTWAIT) >= 0) {
        return 0;
    }
    int e = zmq_errno();
    if (e != EAGAIN && e != EINTR) {
        errno = e;
        return EP_ERROR;
    }
    if (ep->role == EP_TAP) {
        ep->dropped++;
        return 0;
    }
    if (timeout_ms <= 0) {
        return EP_AGAIN;
    }
    zmq_pollitem_t it = { ep->sock, 0, ZMQ_POLLOUT, 0 };
    if (zmq_poll(&it, 1, timeout_ms) <= 0 || !(it.revents & ZMQ_POLLOUT)) {
        return EP_AGAIN;
    }
    if (zmq_send(ep->sock, p, n, ZMQ_DONTWAIT) >= 0) {
        return 0;
    }
    e = zmq_errno();
    if (e == EAGAIN || e == EINTR) {
        return EP_AGAIN;
    }
    errno = e;
    return EP_ERROR;
}

void *ep_socket(const struct ep *ep)
{
    return ep->sock;
}

int ep_fd(const struct ep *ep)
{
    return ep->fd;
}

bool ep_is_stdio(const struct ep *ep)
{
    return ep->sock == NULL;
}

uint64_t ep_dropped(const struct ep *ep)
{
    return ep->dropped;
}

const char *ep_name(const struct ep *ep)
{
    return ep->name;
}

const char *ep_bad_reason(const struct ep *ep)
{
    return ep->bad_reason ? ep->bad_reason : "bad input";
}
