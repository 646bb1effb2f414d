/* test_endpoint — unit tests of lib/endpoint.c: parsing endpoint text
 * ("-", "@uri", ">uri", bare uri per role), a real PUSH -> PULL round trip
 * over ipc:// in a temporary directory, and framing of msgpack on stdin. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <zmq.h>

#include "buf.h"
#include "endpoint.h"
#include "envelope.h"

/* A string literal and its length, NUL bytes inside included. */
#define LIT(s) (s), (sizeof(s) - 1)

/* ---- ep_parse ------------------------------------------------------------ */

static void test_parse_ok(void **state)
{
    (void)state;
    static const struct {
        const char *text;       /* as given on the command line */
        enum ep_role role;      /* --in, --out, --tap, --sub */
        enum ep_mode mode;      /* what it must mean */
        const char *uri;        /* and where */
    } ok[] = {
        { "-", EP_IN, EP_STDIO, "" },
        { "-", EP_OUT, EP_STDIO, "" },
        { "@ipc://x", EP_IN, EP_BIND, "ipc://x" },
        { "@ipc://x", EP_OUT, EP_BIND, "ipc://x" },
        { "@ipc://x", EP_TAP, EP_BIND, "ipc://x" },
        { ">tcp://h:1", EP_IN, EP_CONNECT, "tcp://h:1" },
        { ">tcp://h:1", EP_OUT, EP_CONNECT, "tcp://h:1" },
        { ">tcp://h:1", EP_SUB, EP_CONNECT, "tcp://h:1" },
        /* Bare: binds for input and tap, connects for output. */
        { "ipc:///run/omni/route.sock", EP_IN, EP_BIND, "ipc:///run/omni/route.sock" },
        { "ipc:///run/omni/route.sock", EP_TAP, EP_BIND, "ipc:///run/omni/route.sock" },
        { "ipc:///run/omni/route.sock", EP_OUT, EP_CONNECT, "ipc:///run/omni/route.sock" },
        { "tcp://127.0.0.1:5551", EP_IN, EP_BIND, "tcp://127.0.0.1:5551" },
        { "tcp://127.0.0.1:5551", EP_OUT, EP_CONNECT, "tcp://127.0.0.1:5551" },
        { "tcp://*:5551", EP_TAP, EP_BIND, "tcp://*:5551" },
        { "inproc://stage", EP_OUT, EP_CONNECT, "inproc://stage" },
        { "inproc://stage", EP_IN, EP_BIND, "inproc://stage" },
        /* "*" for the port: only when binding. */
        { "@tcp://127.0.0.1:*", EP_OUT, EP_BIND, "tcp://127.0.0.1:*" },
        { "tcp://*:*", EP_IN, EP_BIND, "tcp://*:*" },
        { "tcp://[::1]:5551", EP_OUT, EP_CONNECT, "tcp://[::1]:5551" },
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        struct ep_spec spec;
        char err[300] = "";
        memset(&spec, 0x55, sizeof spec);
        int rc = ep_parse(ok[i].text, ok[i].role, &spec, err, sizeof err);
        if (rc != 0) {
            print_error("'%s' (role %d): %s\n", ok[i].text, (int)ok[i].role, err);
        }
        assert_int_equal(rc, 0);
        assert_int_equal(spec.mode, ok[i].mode);
        assert_string_equal(spec.uri, ok[i].uri);
    }
    /* An ipc path of 107 bytes is the longest a socket address holds. */
    char text[200];
    snprintf(text, sizeof text, "ipc://%0107d", 7);
    struct ep_spec spec;
    char err[300];
    assert_int_equal(ep_parse(text, EP_IN, &spec, err, sizeof err), 0);
    assert_string_equal(spec.uri, text);
}

static void test_parse_errors(void **state)
{
    (void)state;
    static const struct {
        const char *text;       /* as given on the command line */
        enum ep_role role;      /* --in, --out, --tap, --sub */
    } bad[] = {
        { "", EP_IN },
        { "-", EP_TAP },            /* stdio is for --in and --out only */
        { "-", EP_SUB },
        { "@", EP_IN },
        { ">", EP_OUT },
        { "@-", EP_IN },
        { "x", EP_IN },
        { "route.sock", EP_OUT },
        { "udp://h:1", EP_OUT },    /* transports */
        { "http://h:1", EP_OUT },
        { "tcpx://h:1", EP_OUT },
        { "TCP://h:1", EP_OUT },
        { "ipcs://x", EP_IN },
        { "://x", EP_IN },
        { "tcp:/h:1", EP_OUT },
        { "ipc://", EP_IN },        /* nothing after :// */
        { "tcp://", EP_IN },
        { "tcp://h", EP_OUT },      /* ports */
        { "tcp://h:", EP_OUT },
        { ">tcp://h:", EP_OUT },
        { "tcp://:5551", EP_IN },
        { "tcp://h:55a1", EP_OUT },
        { "tcp://h:port", EP_IN },
        { "tcp://h:-1", EP_OUT },
        { "tcp://h:5551 ", EP_OUT },
        { "tcp://h:*", EP_OUT },    /* "*" when connecting */
        { ">tcp://h:*", EP_IN },
        { "tcp://h:*", EP_SUB },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct ep_spec spec;
        char err[300] = "";
        int rc = ep_parse(bad[i].text, bad[i].role, &spec, err, sizeof err);
        if (rc != -1 || err[0] == '\0') {
            print_error("'%s' (role %d): rc %d err '%s'\n", bad[i].text, (int)bad[i].role, rc, err);
        }
        assert_int_equal(rc, -1);
        assert_true(err[0] != '\0');
    }
    /* Over-long ipc path (108 bytes) and over-long uri. */
    char text[400];
    snprintf(text, sizeof text, "ipc://%0108d", 7);
    struct ep_spec spec;
    char err[300] = "";
    assert_int_equal(ep_parse(text, EP_IN, &spec, err, sizeof err), -1);
    assert_non_null(strstr(err, "107"));
    snprintf(text, sizeof text, "inproc://%0300d", 7);
    err[0] = '\0';
    assert_int_equal(ep_parse(text, EP_IN, &spec, err, sizeof err), -1);
    assert_true(err[0] != '\0');
    /* NULL is empty too. */
    err[0] = '\0';
    assert_int_equal(ep_parse(NULL, EP_IN, &spec, err, sizeof err), -1);
    assert_true(err[0] != '\0');
    /* The message names what was wrong. */
    assert_int_equal(ep_parse("udp://h:1", EP_OUT, &spec, err, sizeof err), -1);
    assert_non_null(strstr(err, "udp://h:1"));
    /* A short err buffer is not overrun. */
    char tiny[8];
    memset(tiny, 'x', sizeof tiny);
    assert_int_equal(ep_parse("tcp://h:port", EP_OUT, &spec, tiny, 4), -1);
    assert_int_equal(tiny[3], '\0');
    assert_int_equal(tiny[4], 'x');
}

/* ---- a real PUSH -> PULL round trip ---------------------------------------- */

/* A temporary directory for ipc sockets. */
struct s_tmp {
    char dir[64];       /* the directory */
    char uri[128];      /* ipc://dir/s */
};

static void s_tmp_make(struct s_tmp *t)
{
    snprintf(t->dir, sizeof t->dir, "/tmp/omni-ep.XXXXXX");
    assert_non_null(mkdtemp(t->dir));
    snprintf(t->uri, sizeof t->uri, "ipc://%s/s", t->dir);
}

static void s_tmp_remove(struct s_tmp *t)
{
    char path[128];
    snprintf(path, sizeof path, "%s/s", t->dir);
    unlink(path);
    assert_int_equal(rmdir(t->dir), 0);
}

/* Opens text for role, which must work. */
static struct ep *s_open(void *ctx, const char *text, enum ep_role role, int hwm)
{
    struct ep_spec spec;
    char err[300] = "";
    assert_int_equal(ep_parse(text, role, &spec, err, sizeof err), 0);
    struct ep_opts opts = { .hwm = hwm, .linger_ms = 1000, .curve = NULL };
    struct ep *ep = ep_open(ctx, &spec, role, &opts, err, sizeof err);
    if (ep == NULL) {
        print_error("open %s: %s\n", text, err);
    }
    assert_non_null(ep);
    return ep;
}

/* Waits (at most limit_ms) until ep has input; true when it has. */
static bool s_wait_in(struct ep *ep, int limit_ms)
{
    zmq_pollitem_t it = { ep_socket(ep), 0, ZMQ_POLLIN, 0 };
    int rc = zmq_poll(&it, 1, limit_ms);
    assert_true(rc >= 0);
    return rc > 0 && (it.revents & ZMQ_POLLIN);
}

#define N_MSGS 1000

static void test_push_pull_round_trip(void **state)
{
    (void)state;
    struct s_tmp t;
    s_tmp_make(&t);
    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    /* Small high-water marks, so the sender meets backpressure. */
    struct ep *in = s_open(ctx, t.uri, EP_IN, 50);
    char out_text[160];
    snprintf(out_text, sizeof out_text, ">%s", t.uri);
    struct ep *out = s_open(ctx, out_text, EP_OUT, 50);
    assert_false(ep_is_stdio(in));
    assert_false(ep_is_stdio(out));
    assert_non_null(ep_socket(in));
    assert_int_equal(ep_fd(in), -1);
    char name[200];
    snprintf(name, sizeof name, "@%s", t.uri);
    assert_string_equal(ep_name(in), name);
    assert_string_equal(ep_name(out), out_text);

    /* Each message is an envelope whose ts is its sequence number, with
     * 8 kB of text: 8 MB in all, more than queues and socket buffers hold. */
    struct env *e = env_new();
    struct buf msg = { 0 };
    char pad[8001];
    memset(pad, 'x', sizeof pad - 1);
    pad[sizeof pad - 1] = '\0';
    int sent = 0, got = 0, idle = 0, backpressure = 0;
    while (got < N_MSGS) {
        while (sent < N_MSGS) {
            env_clear(e);
            env_set_uint(e, ENV_V, 1);
            env_set_uint(e, ENV_TS, (uint64_t)sent);
            char text[8100];
            snprintf(text, sizeof text, "message %d %s", sent, pad);
            assert_int_equal(env_set(e, ENV_TEXT, text, NULL), 0);
            buf_reset(&msg);
            assert_int_equal(env_encode(e, &msg), 0);
            int rc = ep_send(out, msg.data, msg.len, 0);
            if (rc == EP_AGAIN) {
                backpressure++;
                break;
            }
            assert_int_equal(rc, 0);
            sent++;
        }
        if (!s_wait_in(in, 100)) {
            /* Nothing for 100 ms: give up after 30 s without progress. */
            assert_true(++idle < 300);
            continue;
        }
        idle = 0;
        for (;;) {
            const void *p;
            size_t n;
            enum ep_status st = ep_recv(in, &p, &n);
            if (st == EP_AGAIN) {
                break;
            }
            assert_int_equal(st, EP_MSG);
            struct env_err err;
            assert_int_equal(env_decode(e, p, n, &err), 0);
            if (got >= sent) {
                print_error("received #%d, but only %d were sent\n", got, sent);
            }
            assert_true(got < sent);    /* EP_AGAIN from ep_send means not sent */
            assert_int_equal(e->ts, (uint64_t)got);     /* in order */
            char text[8100];
            snprintf(text, sizeof text, "message %d %s", got, pad);
            assert_string_equal(env_get(e, ENV_TEXT), text);
            got++;
        }
    }
    assert_int_equal(sent, N_MSGS);
    assert_int_equal(got, N_MSGS);
    assert_true(backpressure > 0);      /* the sender had to wait */
    const void *p;
    size_t n;
    assert_int_equal(ep_recv(in, &p, &n), EP_AGAIN);

    /* A multipart message is not an envelope: EP_BAD with its first frame,
     * and the line goes on. */
    assert_int_equal(zmq_send(ep_socket(out), "first", 5, ZMQ_SNDMORE), 5);
    assert_int_equal(zmq_send(ep_socket(out), "second", 6, 0), 6);
    assert_int_equal(ep_send(out, "\x80", 1, 5000), 0);
    int seen = 0;
    for (int tries = 0; seen < 2 && tries < 300; tries++) {
        if (!s_wait_in(in, 100)) {
            continue;
        }
        enum ep_status st;
        while ((st = ep_recv(in, &p, &n)) != EP_AGAIN) {
            if (seen == 0) {
                assert_int_equal(st, EP_BAD);
                assert_int_equal(n, 5);
                assert_memory_equal(p, "first", 5);
                assert_string_equal(ep_bad_reason(in), "multipart message");
            } else {
                assert_int_equal(st, EP_MSG);
                assert_int_equal(n, 1);
                assert_memory_equal(p, "\x80", 1);
            }
            seen++;
        }
    }
    assert_int_equal(seen, 2);

    env_destroy(&e);
    buf_free(&msg);
    ep_destroy(&out);
    ep_destroy(&in);
    assert_null(out);
    assert_null(in);
    ep_destroy(&in);        /* NULL: nothing to do */
    assert_int_equal(zmq_ctx_term(ctx), 0);
    s_tmp_remove(&t);
}

static void test_open_errors(void **state)
{
    (void)state;
    struct s_tmp t;
    s_tmp_make(&t);
    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    struct ep_opts opts = { .hwm = 100, .linger_ms = 0, .curve = NULL };
    struct ep_spec spec;
    char err[300] = "";
    /* Binding where there is no directory. */
    char text[200];
    snprintf(text, sizeof text, "@ipc://%s/no/such/dir/s", t.dir);
    assert_int_equal(ep_parse(text, EP_IN, &spec, err, sizeof err), 0);
    assert_null(ep_open(ctx, &spec, EP_IN, &opts, err, sizeof err));
    assert_non_null(strstr(err, "bind"));
    /* Binding one address twice. */
    struct ep *first = s_open(ctx, "inproc://twice", EP_IN, 100);
    err[0] = '\0';
    assert_int_equal(ep_parse("inproc://twice", EP_IN, &spec, err, sizeof err), 0);
    assert_null(ep_open(ctx, &spec, EP_IN, &opts, err, sizeof err));
    assert_true(err[0] != '\0');
    ep_destroy(&first);
    assert_int_equal(zmq_ctx_term(ctx), 0);
    s_tmp_remove(&t);
}

/* ---- stdin framing ------------------------------------------------------- */

/* What ep_recv made of stdin. */
struct s_got {
    enum ep_status st;  /* EP_MSG or EP_BAD */
    size_t off;         /* offset of p in the bytes written */
    size_t n;           /* bytes */
};

/* Feeds data to an EP_IN "-" endpoint through a pipe on fd 0 and collects
 * up to max results until EP_EOF (or an error, which is recorded). */
static int s_stdin_run(const void *data, size_t len, struct s_got *got, int max,
                       enum ep_status *last)
{
    int fds[2];
    int saved = dup(STDIN_FILENO);
    assert_true(saved >= 0);
    assert_int_equal(pipe(fds), 0);
    assert_true(len < 60000);               /* fits the pipe: no reader needed */
    assert_int_equal(write(fds[1], data, len), (ssize_t)len);
    close(fds[1]);
    assert_int_equal(dup2(fds[0], STDIN_FILENO), STDIN_FILENO);
    close(fds[0]);

    struct ep_spec spec;
    char err[300];
    assert_int_equal(ep_parse("-", EP_IN, &spec, err, sizeof err), 0);
    struct ep_opts opts = { .hwm = 100, .linger_ms = 0, .curve = NULL };
    struct ep *ep = ep_open(NULL, &spec, EP_IN, &opts, err, sizeof err);
    assert_non_null(ep);
    assert_true(ep_is_stdio(ep));
    assert_null(ep_socket(ep));
    assert_int_equal(ep_fd(ep), STDIN_FILENO);
    assert_string_equal(ep_name(ep), "stdin");
    /* The bytes handed out point into ep's buffer; record where they came
     * from by matching them against the input. */
    int k = 0;
    size_t consumed = 0;
    for (int guard = 0; guard < 10000; guard++) {
        const void *p;
        size_t n;
        enum ep_status st = ep_recv(ep, &p, &n);
        if (st == EP_AGAIN) {
            long r = ep_fill(ep);
            assert_true(r >= 0);
            continue;
        }
        *last = st;
        if (st != EP_MSG && st != EP_BAD) {
            break;
        }
        assert_true(k < max);
        assert_true(consumed + n <= len);
        assert_memory_equal(p, (const char *)data + consumed, n);
        got[k].st = st;
        got[k].off = consumed;
        got[k].n = n;
        k++;
        /* Where the next one starts: a message is consumed whole, a bad
         * run up to where msgpack may start again (found by the caller). */
        consumed += st == EP_MSG ? n : 0;
        if (st == EP_BAD) {
            break;
        }
    }
    ep_destroy(&ep);
    assert_int_equal(dup2(saved, STDIN_FILENO), STDIN_FILENO);
    close(saved);
    return k;
}

static void test_stdin_framing(void **state)
{
    (void)state;
    /* Envelopes back to back, one of them with deep (but allowed) nesting
     * in an unknown key: each comes out whole, in order, then EOF. */
    struct buf in = { 0 };
    size_t starts[5], lens[5];
    for (int i = 0; i < 5; i++) {
        starts[i] = in.len;
        buf_puts(&in, "\x83\xa1v\x01\xa4text");
        char text[16];
        snprintf(text, sizeof text, "m%d", i);
        buf_putc(&in, (char)(0xa0 | strlen(text)));
        buf_puts(&in, text);
        buf_puts(&in, "\xa6x_deep");
        int depth = i == 2 ? 60 : i;
        for (int d = 0; d < depth; d++) {
            buf_putc(&in, (char)0x91);
        }
        buf_putc(&in, (char)0xc0);
        lens[i] = in.len - starts[i];
    }
    struct s_got got[8];
    enum ep_status last = EP_AGAIN;
    int k = s_stdin_run(in.data, in.len, got, 8, &last);
    if (last != EP_EOF) {
        print_error("stdin ended with status %d after %d messages: %s\n", (int)last, k,
                    strerror(errno));
    }
    assert_int_equal(last, EP_EOF);
    assert_int_equal(k, 5);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(got[i].st, EP_MSG);
        assert_int_equal(got[i].off, starts[i]);
        assert_int_equal(got[i].n, lens[i]);
    }
    buf_free(&in);
}

static void test_stdin_bad_input(void **state)
{
    (void)state;
    struct s_got got[8];
    enum ep_status last;
    /* Truncated at the end of input. */
    int k = s_stdin_run(LIT("\x81\xa1v\x01\x82\xa1v"), got, 8, &last);
    assert_int_equal(k, 2);
    assert_int_equal(got[0].st, EP_MSG);
    assert_int_equal(got[0].n, 4);
    assert_int_equal(got[1].st, EP_BAD);
    assert_int_equal(got[1].off, 4);

    /* Not msgpack: reported, then the stream picks up again. */
    int saved = dup(STDIN_FILENO);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    assert_int_equal(write(fds[1], LIT("\x81\xa1v\x01\xc1\xc1\x81\xa1v\x02")), 10);
    close(fds[1]);
    assert_int_equal(dup2(fds[0], STDIN_FILENO), STDIN_FILENO);
    close(fds[0]);
    struct ep_spec spec;
    char err[300];
    assert_int_equal(ep_parse("-", EP_IN, &spec, err, sizeof err), 0);
    struct ep_opts opts = { .hwm = 100, .linger_ms = 0, .curve = NULL };
    struct ep *ep = ep_open(NULL, &spec, EP_IN, &opts, err, sizeof err);
    assert_non_null(ep);
    static const struct {
        enum ep_status st;  /* expected */
        const char *p;      /* bytes */
        size_t n;           /* length */
    } want[] = {
        { EP_MSG, LIT("\x81\xa1v\x01") },
        { EP_BAD, LIT("\xc1\xc1\x81\xa1v\x02") },   /* one report for the run */
        { EP_MSG, LIT("\x81\xa1v\x02") },
        { EP_EOF, NULL, 0 },
    };
    size_t w = 0;
    for (int guard = 0; guard < 1000 && w < sizeof want / sizeof want[0]; guard++) {
        const void *p;
        size_t n;
        enum ep_status st = ep_recv(ep, &p, &n);
        if (st == EP_AGAIN) {
            assert_true(ep_fill(ep) >= 0);
            continue;
        }
        assert_int_equal(st, want[w].st);
        if (st == EP_BAD) {
            assert_string_equal(ep_bad_reason(ep), "not msgpack");
        }
        if (want[w].p != NULL) {
            assert_int_equal(n, want[w].n);
            assert_memory_equal(p, want[w].p, n);
        }
        w++;
    }
    assert_int_equal(w, sizeof want / sizeof want[0]);
    ep_destroy(&ep);
    assert_int_equal(dup2(saved, STDIN_FILENO), STDIN_FILENO);
    close(saved);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_ok),
        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_push_pull_round_trip),
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_stdin_framing),
        cmocka_unit_test(test_stdin_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
