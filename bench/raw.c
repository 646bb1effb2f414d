/* raw — bare ZeroMQ, the limit bench/run measures the runner against. The
 * sockets are set up as lib/endpoint.c sets them (HWM, immediate on connect,
 * linger on output), and nothing looks inside a message:
 *
 *   raw push ENDPOINT N SIZE [noend] [rate=R]
 *                                      connect PUSH; send N copies of one real
 *                                      envelope of about SIZE bytes as fast as
 *                                      possible (with rate=R: R a second, on a
 *                                      fixed schedule), then an empty end frame
 *                                      (not with noend: the runner would
 *                                      reject it as a malformed envelope)
 *   raw relay IN OUT                   bind PULL on IN, connect PUSH to OUT;
 *                                      forward frames verbatim, stop after
 *                                      forwarding the end frame
 *   raw sink ENDPOINT N                bind PULL; receive N messages (and the
 *                                      end frame, when one follows); print
 *                                      msg/s from the first to the last
 *
 * Each envelope's text begins with "seq=NNNNNNNNNN", its number from 0; the
 * sink checks that every number arrives once and in order (one PUSH -> PULL
 * line keeps order), so a chain that loses or reorders is caught. With
 * rate=R the number is followed by "t=" and the time (CLOCK_MONOTONIC, ns)
 * the envelope was due to be sent, and the sink measures each one's latency
 * from then to its arrival (the clock is the machine's, not the process's).
 * Endpoints are plain URIs (ipc://path, tcp://host:port). The sink prints one
 * line "msgs=N secs=S rate=R" on stdout, followed by " p50_us=P p99_us=Q"
 * when the envelopes carried times; the rest goes to stderr. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <zmq.h>

#include "buf.h"
#include "envelope.h"

#define HWM 10000               /* as the runner's --hwm default */
#define LINGER_MS 10000         /* output may take this long at exit */
#define FIRST_WAIT_MS 10000     /* sink: how long the first message may take */
#define IDLE_WAIT_MS 5000       /* sink: a stall this long is a failure */
#define END_WAIT_MS 300         /* sink: how long to wait for the end frame after N */

/* A WhatsApp message as omni-inject makes it; text is filled to reach SIZE. */
static const char s_sample[] =
    "{\"v\":1,\"id\":\"01J9ZQ4X5T8Y2B3C4D5E6F7G8H\","
    "\"src_id\":\"wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFjNFQjBBOThBQkMzQkMyMTZCNTk4QUYA\","
    "\"ts\":1794791647215,\"channel\":\"whatsapp\",\"dir\":\"in\","
    "\"from\":\"whatsapp:+5511987654321\",\"to\":\"whatsapp:+551140041234\","
    "\"meta\":{\"wa_id\":\"5511987654321\",\"profile_name\":\"Ana Souza\"}}";
#define SEQ_TAG "seq="          /* starts the text, before the number */
#define SEQ_DIGITS 10           /* digits of the number */
#define SEQ_LEN (sizeof SEQ_TAG - 1 + SEQ_DIGITS)
#define STAMP_TAG "t="          /* follows the number when the push is paced */
#define STAMP_DIGITS 20         /* digits of the time, ns */
#define STAMP_LEN (sizeof STAMP_TAG - 1 + STAMP_DIGITS)

static const char s_filler[] =
    "Oi, boa noite! Fiz o pedido 48213 dia 9 e ate agora nada. Cade meu pedido? ";

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CLOCK_MONOTONIC in ns. */
static long long s_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int s_usage(void)
{
    fprintf(stderr, "usage: raw push ENDPOINT N SIZE [noend] [rate=R]\n"
                    "       raw relay IN OUT\n"
                    "       raw sink ENDPOINT N\n");
    return 64;
}

static int s_setint(void *sock, int opt, int v)
{
    return zmq_setsockopt(sock, opt, &v, sizeof v);
}

/* A socket set up like lib/endpoint.c's; NULL with a message on failure. */
static void *s_socket(void *zctx, int type, const char *uri)
{
    void *s = zmq_socket(zctx, type);
    if (s == NULL) {
        fprintf(stderr, "raw: socket: %s\n", zmq_strerror(zmq_errno()));
        return NULL;
    }
    int rc;
    if (type == ZMQ_PUSH) {
        s_setint(s, ZMQ_SNDHWM, HWM);
        s_setint(s, ZMQ_LINGER, LINGER_MS);
        s_setint(s, ZMQ_IMMEDIATE, 1);
        s_setint(s, ZMQ_RECONNECT_IVL, 100);
        rc = zmq_connect(s, uri);
    } else {
        s_setint(s, ZMQ_RCVHWM, HWM);
        s_setint(s, ZMQ_LINGER, 0);
        rc = zmq_bind(s, uri);
    }
    if (rc != 0) {
        fprintf(stderr, "raw: %s %s: %s\n", type == ZMQ_PUSH ? "connect" : "bind", uri,
                zmq_strerror(zmq_errno()));
        zmq_close(s);
        return NULL;
    }
    return s;
}

static long long s_count(const char *s)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < 0) {
        return -1;
    }
    return v;
}

/* Encodes the sample envelope with its text filled so that the whole is
 * about size bytes, and sets *seq to the offset of the number's digits
 * (followed by STAMP_TAG and room for the time when stamped).
 * Returns 0, or -1 with a message. */
static int s_envelope(size_t size, bool stamped, struct buf *out, size_t *seq)
{
    int rc = -1;
    struct env_err err;
    char why[300];
    char *text = NULL;
    struct env *e = env_new();
    cJSON *j = cJSON_Parse(s_sample);
    if (e == NULL || j == NULL) {
        fprintf(stderr, "raw: out of memory\n");
        goto done;
    }
    if (env_from_json(e, j, &err) != 0) {
        fprintf(stderr, "raw: sample envelope: %s\n", env_err_str(&err, why, sizeof why));
        goto done;
    }
    size_t head = SEQ_LEN + (stamped ? STAMP_LEN : 0);
    size_t cap = size > head ? size : head;
    text = malloc(cap + 1);
    if (text == NULL) {
        fprintf(stderr, "raw: out of memory\n");
        goto done;
    }
    memcpy(text, SEQ_TAG, sizeof SEQ_TAG - 1);
    memset(text + sizeof SEQ_TAG - 1, '0', SEQ_DIGITS);
    if (stamped) {
        memcpy(text + SEQ_LEN, STAMP_TAG, sizeof STAMP_TAG - 1);
        memset(text + SEQ_LEN + sizeof STAMP_TAG - 1, '0', STAMP_DIGITS);
    }
    for (size_t i = head; i < cap; i++) {
        text[i] = s_filler[(i - head) % (sizeof s_filler - 1)];
    }
    /* The text's msgpack header grows with its length: a few rounds settle. */
    size_t len = head;
    for (int round = 0; round < 8; round++) {
        if (env_setn(e, ENV_TEXT, text, len, &err) != 0) {
            fprintf(stderr, "raw: text: %s\n", env_err_str(&err, why, sizeof why));
            goto done;
        }
        buf_reset(out);
        if (env_encode(e, out) != 0) {
            fprintf(stderr, "raw: out of memory\n");
            goto done;
        }
        if (out->len == size) {
            break;
        }
        long long want = (long long)len + (long long)size - (long long)out->len;
        if (want < (long long)head) {
            want = (long long)head;
        }
        if ((size_t)want > cap) {
            want = (long long)cap;
        }
        if ((size_t)want == len) {
            break;
        }
        len = (size_t)want;
    }
    if (env_check(e, &err) != 0) {
        fprintf(stderr, "raw: sample envelope: %s\n", env_err_str(&err, why, sizeof why));
        goto done;
    }
    const char *tag = memmem(out->data, out->len, SEQ_TAG, sizeof SEQ_TAG - 1);
    if (tag == NULL) {
        fprintf(stderr, "raw: no sequence number in the envelope\n");
        goto done;
    }
    *seq = (size_t)(tag - out->data) + sizeof SEQ_TAG - 1;
    rc = 0;
done:
    free(text);
    cJSON_Delete(j);
    env_destroy(&e);
    return rc;
}

/* Writes v as width decimal digits at p. */
static void s_put_digits(char *p, unsigned long long v, int width)
{
    for (int i = width - 1; i >= 0; i--) {
        p[i] = (char)('0' + v % 10);
        v /= 10;
    }
}

/* The width decimal digits at p[0..n) as a number, or -1 when they are not. */
static long long s_get_digits(const char *p, size_t n, int width)
{
    if (n < (size_t)width) {
        return -1;
    }
    long long v = 0;
    for (int i = 0; i < width; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return -1;
        }
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

/* The number after SEQ_TAG in a message, or -1 when there is none; *stamp
 * is the time after it, or -1 when there is none. */
static long long s_get_seq(const char *p, size_t n, long long *stamp)
{
    *stamp = -1;
    const char *tag = memmem(p, n, SEQ_TAG, sizeof SEQ_TAG - 1);
    if (tag == NULL) {
        return -1;
    }
    size_t at = (size_t)(tag - p) + sizeof SEQ_TAG - 1;
    long long v = s_get_digits(p + at, n - at, SEQ_DIGITS);
    at += SEQ_DIGITS;
    if (v >= 0 && n - at >= STAMP_LEN && memcmp(p + at, STAMP_TAG, sizeof STAMP_TAG - 1) == 0) {
        at += sizeof STAMP_TAG - 1;
        *stamp = s_get_digits(p + at, n - at, STAMP_DIGITS);
    }
    return v;
}

/* Sends n envelopes, as fast as possible when rate is 0 and otherwise on a
 * fixed schedule of rate a second, each stamped with the time it was due. */
static int s_push(void *zctx, const char *uri, long long n, size_t size, int end, double rate)
{
    struct buf env = { 0 };
    size_t seq = 0;
    if (s_envelope(size, rate > 0, &env, &seq) != 0) {
        return 70;
    }
    void *s = s_socket(zctx, ZMQ_PUSH, uri);
    if (s == NULL) {
        buf_free(&env);
        return 69;
    }
    if (rate > 0) {
        /* Time for the chain to connect, so the first latencies are not of that. */
        struct timespec settle = { 0, 200 * 1000000L };
        nanosleep(&settle, NULL);
    }
    int status = 0;
    double t0 = s_now();
    long long start_ns = s_now_ns();
    for (long long i = 0; i < n; i++) {
        s_put_digits(env.data + seq, (unsigned long long)i, SEQ_DIGITS);
        if (rate > 0) {
            long long due = start_ns + (long long)((double)i * 1e9 / rate);
            struct timespec ts = { (time_t)(due / 1000000000LL), (long)(due % 1000000000LL) };
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
            }
            s_put_digits(env.data + seq + SEQ_DIGITS + sizeof STAMP_TAG - 1, (unsigned long long)due,
                         STAMP_DIGITS);
        }
        if (zmq_send(s, env.data, env.len, 0) < 0) {
            if (zmq_errno() == EINTR) {
                i--;
                continue;
            }
            fprintf(stderr, "raw push: send: %s\n", zmq_strerror(zmq_errno()));
            status = 74;
            break;
        }
    }
    double dt = s_now() - t0;
    if (status == 0 && end && zmq_send(s, "", 0, 0) < 0) {
        fprintf(stderr, "raw push: end frame: %s\n", zmq_strerror(zmq_errno()));
        status = 74;
    }
    fprintf(stderr, "raw push: %lld envelopes of %zu bytes queued in %.3f s (%.0f msg/s)\n", n,
            env.len, dt, dt > 0 ? (double)n / dt : 0.0);
    zmq_close(s);
    buf_free(&env);
    return status;
}

static int s_relay(void *zctx, const char *in_uri, const char *out_uri)
{
    void *in = s_socket(zctx, ZMQ_PULL, in_uri);
    void *out = in ? s_socket(zctx, ZMQ_PUSH, out_uri) : NULL;
    if (in == NULL || out == NULL) {
        if (in != NULL) {
            zmq_close(in);
        }
        return 69;
    }
    int status = 0;
    long long n = 0;
    zmq_msg_t m;
    zmq_msg_init(&m);
    for (;;) {
        if (zmq_msg_recv(&m, in, 0) < 0) {
            if (zmq_errno() == EINTR) {
                continue;
            }
            fprintf(stderr, "raw relay: recv: %s\n", zmq_strerror(zmq_errno()));
            status = 74;
            break;
        }
        size_t len = zmq_msg_size(&m);
        /* zmq_msg_send hands the frame over and leaves m empty. */
        while (zmq_msg_send(&m, out, 0) < 0) {
            if (zmq_errno() != EINTR) {
                fprintf(stderr, "raw relay: send: %s\n", zmq_strerror(zmq_errno()));
                status = 74;
                break;
            }
        }
        if (status != 0 || len == 0) {
            break;
        }
        n++;
    }
    zmq_msg_close(&m);
    zmq_close(in);
    zmq_close(out);
    if (status == 0) {
        fprintf(stderr, "raw relay: forwarded %lld messages and the end frame\n", n);
    }
    return status;
}

static int s_cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

/* The q-quantile (nearest rank) of v[0..n), sorted; 0 when n is 0. */
static long long s_quantile(const long long *v, long long n, double q)
{
    if (n == 0) {
        return 0;
    }
    long long r = (long long)(q * (double)n + 0.999999);
    return v[(r < 1 ? 1 : r > n ? n : r) - 1];
}

static int s_sink(void *zctx, const char *uri, long long n)
{
    void *s = s_socket(zctx, ZMQ_PULL, uri);
    if (s == NULL) {
        return 69;
    }
    s_setint(s, ZMQ_RCVTIMEO, FIRST_WAIT_MS);
    long long got = 0;
    long long disorder = 0;     /* messages whose number was not the next one */
    long long want = 0;         /* the next number expected */
    long long *lat = NULL;      /* latencies (ns) of stamped messages */
    long long nlat = 0;         /* entries used in lat */
    double first = 0, last = 0;
    int status = 0;
    zmq_msg_t m;
    zmq_msg_init(&m);
    while (got < n) {
        if (zmq_msg_recv(&m, s, 0) < 0) {
            if (zmq_errno() == EINTR) {
                continue;
            }
            fprintf(stderr, "raw sink: %s after %lld of %lld messages\n",
                    zmq_errno() == EAGAIN ? "stalled" : zmq_strerror(zmq_errno()), got, n);
            status = 1;
            break;
        }
        if (zmq_msg_size(&m) == 0) {
            fprintf(stderr, "raw sink: end frame after only %lld of %lld messages\n", got, n);
            status = 1;
            break;
        }
        long long arrived = s_now_ns();
        last = s_now();
        if (got == 0) {
            first = last;
            s_setint(s, ZMQ_RCVTIMEO, IDLE_WAIT_MS);
        }
        got++;
        long long stamp;
        long long seq = s_get_seq(zmq_msg_data(&m), zmq_msg_size(&m), &stamp);
        if (seq != want) {
            if (disorder++ == 0) {
                fprintf(stderr, "raw sink: message #%lld has number %lld, not %lld (lost or reordered)\n",
                        got, seq, want);
            }
        }
        want = seq + 1;
        if (stamp >= 0) {
            if (lat == NULL && (lat = malloc((size_t)n * sizeof *lat)) == NULL) {
                fprintf(stderr, "raw sink: out of memory\n");
                status = 70;
                break;
            }
            lat[nlat++] = arrived - stamp;
        }
    }
    if (status == 0) {
        /* Take the end frame if one follows, so the last relay can finish. */
        s_setint(s, ZMQ_RCVTIMEO, END_WAIT_MS);
        long long extra = 0;
        while (zmq_msg_recv(&m, s, 0) >= 0 && zmq_msg_size(&m) != 0) {
            extra++;
        }
        if (extra > 0) {
            fprintf(stderr, "raw sink: %lld messages more than the %lld sent\n", extra, n);
            status = 1;
        }
    }
    zmq_msg_close(&m);
    zmq_close(s);
    if (disorder > 0) {
        fprintf(stderr, "raw sink: %lld messages out of sequence; the last number seen was %lld\n",
                disorder, want - 1);
        status = 1;
    } else if (got < n) {
        fprintf(stderr, "raw sink: numbers 0..%lld arrived in order; %lld..%lld did not arrive\n",
                want - 1, want, n - 1);
    }
    double dt = last - first;
    printf("msgs=%lld secs=%.3f rate=%.0f", got, dt, got > 1 && dt > 0 ? (double)(got - 1) / dt : 0.0);
    if (nlat > 0) {
        qsort(lat, (size_t)nlat, sizeof *lat, s_cmp_ll);
        printf(" p50_us=%.1f p99_us=%.1f max_us=%.1f", (double)s_quantile(lat, nlat, 0.5) / 1e3,
               (double)s_quantile(lat, nlat, 0.99) / 1e3, (double)lat[nlat - 1] / 1e3);
    }
    printf("\n");
    free(lat);
    return status;
}

/* The R of "rate=R" (a positive number), or -1 when s is not that. */
static double s_rate(const char *s)
{
    if (strncmp(s, "rate=", 5) != 0) {
        return -1;
    }
    char *end = NULL;
    errno = 0;
    double r = strtod(s + 5, &end);
    if (errno != 0 || end == s + 5 || *end != '\0' || !(r > 0)) {
        return -1;
    }
    return r;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        return s_usage();
    }
    const char *mode = argv[1];
    bool push = strcmp(mode, "push") == 0 && argc >= 5 && argc <= 7;
    bool relay = strcmp(mode, "relay") == 0 && argc == 4;
    bool sink = strcmp(mode, "sink") == 0 && argc == 4;
    if (!push && !relay && !sink) {
        return s_usage();
    }
    long long n = relay ? 0 : s_count(argv[3]);
    long long size = push ? s_count(argv[4]) : 0;
    bool end = true;
    double rate = 0;
    for (int i = 5; push && i < argc; i++) {
        if (strcmp(argv[i], "noend") == 0 && end) {
            end = false;
        } else if (rate == 0 && (rate = s_rate(argv[i])) > 0) {
            continue;
        } else {
            return s_usage();
        }
    }
    if (n < 0 || size < 0 || size > (long long)ENV_MAX_TEXT) {
        return s_usage();
    }
    void *zctx = zmq_ctx_new();
    if (zctx == NULL) {
        fprintf(stderr, "raw: zmq_ctx_new: %s\n", zmq_strerror(zmq_errno()));
        return 70;
    }
    int status = push    ? s_push(zctx, argv[2], n, (size_t)size, end, rate)
                 : relay ? s_relay(zctx, argv[2], argv[3])
                         : s_sink(zctx, argv[2], n);
    zmq_ctx_term(zctx);
    return status;
}
