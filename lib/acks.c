/* acks — the ack wire format and its sockets; see acks.h. */
#include "acks.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <msgpack.h>
#include <zmq.h>

#include "mp.h"

int acks_pack(struct buf *b, const char *const *ids, size_t n)
{
    buf_reset(b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, b, mp_buf_write);
    int rc = msgpack_pack_array(&pk, n);
    for (size_t i = 0; i < n && rc == 0; i++) {
        rc = msgpack_pack_str_with_body(&pk, ids[i], strlen(ids[i]));
    }
    return rc == 0 ? 0 : -1;
}

int64_t acks_read(const void *p, size_t n, acks_fn fn, void *arg, const char **why)
{
    struct mp_reader r;
    struct mp_val v;
    mp_reader_init(&r, p, n);
    if (mp_read(&r, &v) != 0 || v.type != MP_ARRAY) {
        *why = "a message that is not an array of ids";
        return ACKS_BAD;
    }
    uint32_t count = v.n;
    for (uint32_t i = 0; i < count; i++) {
        struct mp_val s;
        if (mp_read(&r, &s) != 0) {
            *why = "a truncated ack message";
            return ACKS_BAD;
        }
        if (s.type != MP_STR || s.n == 0) {
            *why = "an ack that is not an id";
            return ACKS_BAD;
        }
        if (fn(arg, s.s, s.n) != 0) {
            return ACKS_STOP;
        }
    }
    return count;
}

int acks_drain(struct ep *ep, int max, acks_fn fn, void *arg, const char *option,
               struct log_limit *lim)
{
    int got = 0;
    for (; got < max; got++) {
        const void *p;
        size_t n;
        enum ep_status st = ep_recv(ep, &p, &n);
        if (st == EP_AGAIN) {
            break;
        }
        if (st == EP_ERROR) {
            log_limited(lim, LOG_ERROR, "--%s %s: %s", option, ep_name(ep), strerror(errno));
            break;
        }
        const char *why;
        int64_t rc = st == EP_MSG ? acks_read(p, n, fn, arg, &why) : 0;
        if (rc == ACKS_STOP) {
            return ACKS_STOP;
        }
        if (rc == ACKS_BAD) {
            log_limited(lim, LOG_WARN, "--%s %s: %s", option, ep_name(ep), why);
        }
    }
    return got;
}

int acks_check(const char *option, const char *endpoint, enum ep_role role, char *err, size_t n)
{
    assert(role == EP_TAP || role == EP_SUB);
    struct ep_spec spec;
    char why[300];
    if (ep_parse(endpoint, role, &spec, why, sizeof why) != 0) {
        snprintf(err, n, "--%s: %s", option, why);
        return -1;
    }
    if (spec.mode == EP_STDIO) {
        snprintf(err, n, "--%s needs an endpoint, not '-'", option);
        return -1;
    }
    return 0;
}

struct ep *acks_open(struct stage_ctx *ctx, const char *option, const char *endpoint,
                     enum ep_role role, char *err, size_t n)
{
    assert(ctx != NULL);
    if (acks_check(option, endpoint, role, err, n) != 0) {
        return NULL;
    }
    struct ep_spec spec;
    char why[300];
    ep_parse(endpoint, role, &spec, why, sizeof why);
    struct ep_opts eo = {
        .hwm = role == EP_SUB ? 100000 : 10000,
        .linger_ms = role == EP_SUB ? 0 : ACKS_LINGER_MS,
        .curve = stage_curve(ctx),
    };
    struct ep *ep = ep_open(stage_zctx(ctx), &spec, role, &eo, why, sizeof why);
    if (ep == NULL) {
        snprintf(err, n, "--%s: %s", option, why);
        return NULL;
    }
    if (role == EP_TAP) {
        /* The last acks are worth a moment at exit (ep_open lingers only
         * on a PUSH). */
        int linger = ACKS_LINGER_MS;
        zmq_setsockopt(ep_socket(ep), ZMQ_LINGER, &linger, sizeof linger);
    }
    return ep;
}
