/* test_spool — unit tests of lib/spool.c: dedupe on (channel, src_id), also
 * after the ack; a cursor in the same transaction as its messages; rollback;
 * committed rows sent in order; acks (by call and on the --acks socket)
 * delete; what stays unacknowledged is sent again with the same id; a
 * restart sends again what was not acknowledged; the backlog bound; a
 * sender that says "not now". Each test runs inside a real runner
 * (stage_main, a source whose run() is the test), so stage_emit, the
 * ZeroMQ context and --acks are the real ones, on inproc. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <msgpack.h>
#include <sqlite3.h>
#include <zmq.h>

#include "envelope.h"
#include "mp.h"
#include "spool.h"
#include "stage.h"
#include "ulid.h"

#define MAX_SENT 64

/* What a test has: its directory, the spool, what the capture sender got. */
struct fixture {
    char dir[64];               /* temporary directory */
    char path[128];             /* dir/s.db */
    struct spool_conf conf;     /* the spool's settings */
    struct spool *sp;           /* the spool, or NULL */
    char sent[MAX_SENT][ULID_LEN + 1]; /* ids sent, in order */
    char sent_src[MAX_SENT][64]; /* their src_id ("" when none) */
    int nsent;                  /* how many */
    int answer;                 /* what the capture sender says (0, 1, -1) */
    struct stage_ctx *ctx;      /* the runner of the running test */
};

static struct fixture *s_fx;            /* the running test's fixture */
static void (*s_body)(struct fixture *); /* the running test's body */

static void s_sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

static int s_capture(void *arg, struct env *e)
{
    struct fixture *f = arg;
    if (f->answer != 0) {
        return f->answer;
    }
    assert_true(f->nsent < MAX_SENT);
    snprintf(f->sent[f->nsent], sizeof f->sent[0], "%s", env_get(e, ENV_ID));
    const char *src = env_get(e, ENV_SRC_ID);
    snprintf(f->sent_src[f->nsent], sizeof f->sent_src[0], "%s", src ? src : "");
    f->nsent++;
    return 0;
}

static void s_open(struct fixture *f, bool capture)
{
    char err[300];
    f->sp = spool_open(f->ctx, &f->conf, err, sizeof err);
    if (f->sp == NULL) {
        fail_msg("spool_open: %s", err);
    }
    if (capture) {
        spool_set_sender(f->sp, s_capture, f);
    }
}

static int s_run(void *state, struct stage_ctx *ctx)
{
    (void)state;
    s_fx->ctx = ctx;
    s_body(s_fx);
    spool_destroy(&s_fx->sp);
    return 0;
}

static const struct stage s_test_stage = {
    .name = "test-spool",
    .summary = "runs one spool test",
    .flags = STAGE_SOURCE,
    .run = s_run,
};

/* Runs body inside the runner, with --out on inproc (nobody reads it
 * unless the test connects). */
static void s_in_stage(void **state, void (*body)(struct fixture *))
{
    static int n;
    char out[64];
    snprintf(out, sizeof out, "@inproc://spool-out-%d", n++);
    char *argv[] = { "test-spool", "--out", out, "--linger", "0", "--log-level", "error", NULL };
    s_fx = *state;
    s_body = body;
    assert_int_equal(stage_main(&s_test_stage, 7, argv), 0);
}

static int s_setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/test-spool.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/s.db", f->dir);
    f->conf.path = f->path;
    f->conf.resend_after_ms = 30000;
    f->conf.max = 100000;
    f->conf.dedupe_ms = 7LL * 24 * 3600 * 1000;
    *state = f;
    return 0;
}

static int s_teardown(void **state)
{
    struct fixture *f = *state;
    static const char *const sfx[] = { "", "-wal", "-shm", "-journal" };
    for (int i = 0; i < 4; i++) {
        char p[160];
        snprintf(p, sizeof p, "%s%s", f->path, sfx[i]);
        unlink(p);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

/* A new inbound message of channel with src_id (NULL: none). */
static struct env *s_msg(const char *channel, const char *src, const char *text)
{
    struct env *e = env_new();
    assert_non_null(e);
    assert_int_equal(env_set(e, ENV_CHANNEL, channel, NULL), 0);
    assert_int_equal(env_set(e, ENV_DIR, "in", NULL), 0);
    assert_int_equal(env_set(e, ENV_FROM, "tel:+5511987654321", NULL), 0);
    assert_int_equal(env_set(e, ENV_TEXT, text, NULL), 0);
    if (src != NULL) {
        assert_int_equal(env_set(e, ENV_SRC_ID, src, NULL), 0);
    }
    return e;
}

/* Puts one message; returns spool_put's answer and its id in id. */
static int s_put(struct fixture *f, const char *channel, const char *src, char id[ULID_LEN + 1])
{
    struct env *e = s_msg(channel, src, "olá");
    int rc = spool_put(f->sp, e);
    struct env_err err;
    assert_int_equal(env_check(e, &err), 0);
    snprintf(id, ULID_LEN + 1, "%s", env_get(e, ENV_ID));
    env_destroy(&e);
    return rc;
}

static int64_t s_count(const struct fixture *f, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    assert_int_equal(sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
        v = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* --- the tests ---------------------------------------------------------- */

static void s_dedupe(struct fixture *f)
{
    s_open(f, true);
    char a[ULID_LEN + 1], b[ULID_LEN + 1], c[ULID_LEN + 1], d[ULID_LEN + 1];
    assert_int_equal(s_put(f, "whatsapp", "wamid.1", a), 0);
    assert_int_equal(s_put(f, "whatsapp", "wamid.1", b), 1);     /* same transaction */
    assert_string_equal(a, b);
    assert_int_equal(s_put(f, "sms", "wamid.1", c), 0);          /* another channel */
    assert_string_not_equal(a, c);
    assert_int_equal(s_put(f, "whatsapp", NULL, d), 0);          /* no src_id: never a duplicate */
    assert_int_equal(spool_commit(f->sp), 0);
    assert_int_equal(s_put(f, "whatsapp", "wamid.1", b), 1);     /* a later delivery */
    assert_string_equal(a, b);
    assert_int_equal(spool_commit(f->sp), 0);
    assert_int_equal(spool_backlog(f->sp), 3);
    assert_int_equal(s_count(f, "SELECT count(*) FROM spool"), 3);
}

static void test_dedupe(void **state)
{
    s_in_stage(state, s_dedupe);
}

static void s_cursor(struct fixture *f)
{
    s_open(f, true);
    char id[ULID_LEN + 1], v[32];
    assert_int_equal(spool_state_get(f->sp, "telegram.offset", v, sizeof v), 0);
    assert_int_equal(s_put(f, "telegram", "100", id), 0);
    assert_int_equal(spool_state_set(f->sp, "telegram.offset", "101"), 0);
    spool_rollback(f->sp);
    assert_int_equal(spool_state_get(f->sp, "telegram.offset", v, sizeof v), 0);
    assert_int_equal(spool_backlog(f->sp), 0);
    assert_int_equal(s_put(f, "telegram", "100", id), 0);
    assert_int_equal(spool_state_set(f->sp, "telegram.offset", "101"), 0);
    assert_int_equal(spool_commit(f->sp), 0);
    assert_int_equal(spool_state_get(f->sp, "telegram.offset", v, sizeof v), 1);
    assert_string_equal(v, "101");
    /* Durable: another process (here, a reopen) sees both. */
    spool_destroy(&f->sp);
    s_open(f, true);
    assert_int_equal(spool_state_get(f->sp, "telegram.offset", v, sizeof v), 1);
    assert_string_equal(v, "101");
    assert_int_equal(spool_backlog(f->sp), 1);
    assert_int_equal(spool_state_set(f->sp, "telegram.offset", "102"), 0);
    assert_int_equal(spool_commit(f->sp), 0);
    assert_int_equal(spool_state_get(f->sp, "telegram.offset", v, sizeof v), 1);
    assert_string_equal(v, "102");
}

static void test_cursor_in_same_transaction(void **state)
{
    s_in_stage(state, s_cursor);
}

static void s_rollback(struct fixture *f)
{
    s_open(f, true);
    char a[ULID_LEN + 1], b[ULID_LEN + 1];
    assert_int_equal(s_put(f, "whatsapp", "wamid.r", a), 0);
    assert_int_equal(spool_backlog(f->sp), 1);                   /* pending counts */
    assert_int_equal(spool_pump(f->sp, f->ctx), 0);              /* nothing while open */
    spool_rollback(f->sp);
    assert_int_equal(spool_backlog(f->sp), 0);
    assert_int_equal(spool_pump(f->sp, f->ctx), 0);
    assert_int_equal(f->nsent, 0);
    assert_int_equal(s_put(f, "whatsapp", "wamid.r", b), 0);     /* not a duplicate now */
    assert_string_not_equal(a, b);
    assert_int_equal(spool_commit(f->sp), 0);
    assert_int_equal(spool_pump(f->sp, f->ctx), 1);
    assert_string_equal(f->sent[0], b);
    assert_int_equal(spool_commit(f->sp), 0);                    /* nothing open: fine */
}

static void test_rollback(void **state)
{
    s_in_stage(state, s_rollback);
}

/* Without --acks: sent in order, and gone once sent. */
static void s_order(struct fixture *f)
{
    s_open(f, true);
    char ids[5][ULID_LEN + 1];
    for (int i = 0; i < 5; i++) {
        char src[16];
        snprintf(src, sizeof src, "m%d", i);
        assert_int_equal(s_put(f, "whatsapp", src, ids[i]), 0);
    }
    assert_int_equal(spool_pump(f->sp, f->ctx), 0);              /* not committed yet */
    assert_int_equal(spool_commit(f->sp), 0);
    assert_int_equal(spool_next_ms(f->sp), 0);
    assert_int_equal(spool_pump(f->sp, f->ctx), 5);
    for (int i = 0; i < 5; i++) {
        assert_string_equal(f->sent[i], ids[i]);
    }
    assert_int_equal(spool_backlog(f->sp), 0);
    assert_int_equal(spool_next_ms(f->sp), -1);
    assert_int_equal(s_count(f, "SELECT count(*) FROM spool"), 0);
    assert_int_equal(spool_pump(f->sp, f->ctx), 0);
    /* The channel ids are remembered past the send. */
    char again[ULID_LEN + 1];
    assert_int_equal(s_put(f, "whatsapp", "m3", again), 1);
    assert_string_equal(again, ids[3]);
    spool_rollback(f->sp);
}

static void test_sent_in_order(void **state)
{
    s_in_stage(state, s_order);
}

/* With acks: a sent row stays until acknowledged; the ack deletes it; a
 * re-delivery after the ack still gets the first id. */
static void s_acks(struct fixture *f)
{
    f->conf.acks = "inproc://test-acks-unused";
    s_open(f, true);
    char a[ULID_LEN + 1], b[ULID_LEN + 1], c[ULID_LEN + 1];
    assert_int_equal(s_put(f, "messenger", "mid.1", a), 0);
    assert_int_equal(s_put(f, "messenger", "mid.2", b), 0);
    assert_int_equal(spool_commit(f->sp), 0);
    assert_int_equal(spool_pump(f->sp, f->ctx), 2);
    assert_int_equal(spool_backlog(f->sp), 2);
    assert_int_equal(s_count(f, "SELECT count(*) FROM spool WHERE sent_at IS NOT NULL AND attempts = 1"), 2);
    const char *ids[] = { a, "01ARZ3NDEKTSV4RRFFQ69G5FAV" };    /* the second is not ours */
    assert_int_equal(spool_ack(f->sp, ids, 2), 0);
    assert_int_equal(spool_backlog(f->sp), 1);
    assert_int_equal(s_count(f, "SELECT count(*) FROM spool"), 1);
    assert_int_equal(spool_ack(f->sp, ids, 1), 0);               /* acked twice: no change */
    assert_int_equal(spool_backlog(f->sp), 1);
    assert_int_equal(s_put(f, "messenger", "mid.1", c), 1);
    assert_string_equal(c, a);
    assert_int_equal(spool_commit(f->sp), 0);
    assert_int_equal(spool_pump(f->sp, f->ctx), 0);              /* nothing new, nothing due */
    assert_int_equal(f->nsent, 2);
}

static void test_ack_deletes(void **state)
{
    s_in_stage(state, s_acks);
}

/* What stays unacknowledged past --resend-after goes again, same id. */
static void s_resend(struct fixture *f)
{
    f->conf.acks = "inproc://test-acks-unused";
    f->conf.resend_after_ms = 40;
    s_open(f, true);
    char a[ULID_LEN + 1], b[ULID_LEN + 1];
    assert_int_equal(s_put(f, "sms", "SM1", a), 0);
    assert_int_equal(s_put(f, "sms", "SM2", b), 0);
    assert_int_equal(spool_commit(f->sp), 0);
    assert_int_equal(spool_pump(f->sp, f->ctx), 2);
    assert_int_equal(spool_pump(f->sp, f->ctx), 0);              /* not yet */
    assert_true(spool_next_ms(f->sp) > 0);
    const char *ack[] = { a };
    assert_int_equal(spool_ack(f->sp, ack, 1), 0);
    int got = 0;
    for (int i = 0; i < 200 && got == 0; i++) {
        s_sleep_ms(5);
        got = spool_pump(f->sp, f->ctx);
    }
    assert_int_equal(got, 1);
    assert_int_equal(f->nsent, 3);
    assert_string_equal(f->sent[2], b);                          /* the same id */
    assert_int_equal(s_count(f, "SELECT attempts FROM spool"), 2);
    /* The next re-send waits longer (backoff); acked, it never comes. */
    assert_true(spool_next_ms(f->sp) > 0);
    const char *ack2[] = { b };
    assert_int_equal(spool_ack(f->sp, ack2, 1), 0);
    assert_int_equal(spool_backlog(f->sp), 0);
    assert_int_equal(spool_next_ms(f->sp), -1);
}

static void test_resend_same_id(void **state)
{
    s_in_stage(state, s_resend);
}

/* A restart sends again at once what was sent and not acknowledged. */
static void s_restart(struct fixture *f)
{
    f->conf.acks = "inproc://test-acks-unused";
    s_open(f, true);
    char a[ULID_LEN + 1];
    assert_int_equal(s_put(f, "whatsapp", "wamid.x", a), 0);
    assert_int_equal(spool_commit(f->sp), 0);
    assert_int_equal(spool_pump(f->sp, f->ctx), 1);
    assert_int_equal(spool_pump(f->sp, f->ctx), 0);
    spool_destroy(&f->sp);
    s_open(f, true);
    assert_int_equal(spool_backlog(f->sp), 1);
    assert_int_equal(spool_next_ms(f->sp), 0);
    assert_int_equal(spool_pump(f->sp, f->ctx), 1);
    assert_string_equal(f->sent[1], a);
    assert_string_equal(f->sent_src[1], "wamid.x");
}

static void test_restart_resends(void **state)
{
    s_in_stage(state, s_restart);
}

static void s_bound(struct fixture *f)
{
    f->conf.acks = "inproc://test-acks-unused";
    f->conf.max = 3;
    s_open(f, true);
    char id[3][ULID_LEN + 1];
    assert_false(spool_full(f->sp));
    assert_int_equal(s_put(f, "telegram", "1", id[0]), 0);
    assert_int_equal(s_put(f, "telegram", "2", id[1]), 0);
    assert_false(spool_full(f->sp));
    assert_int_equal(s_put(f, "telegram", "3", id[2]), 0);
    assert_true(spool_full(f->sp));                              /* pending counts */
    assert_int_equal(spool_commit(f->sp), 0);
    assert_true(spool_full(f->sp));
    assert_int_equal(spool_pump(f->sp, f->ctx), 3);
    assert_true(spool_full(f->sp));                              /* sent is not acknowledged */
    const char *ack[] = { id[1] };
    assert_int_equal(spool_ack(f->sp, ack, 1), 0);
    assert_false(spool_full(f->sp));
    assert_int_equal(spool_backlog(f->sp), 2);
}

static void test_backlog_bound(void **state)
{
    s_in_stage(state, s_bound);
}

/* A sender that says "not now" keeps the row due; it is asked again later. */
static void s_not_now(struct fixture *f)
{
    s_open(f, true);
    char a[ULID_LEN + 1];
    assert_int_equal(s_put(f, "webchat", NULL, a), 0);
    assert_int_equal(spool_commit(f->sp), 0);
    f->answer = 1;
    assert_int_equal(spool_pump(f->sp, f->ctx), 0);
    assert_int_equal(spool_backlog(f->sp), 1);
    assert_true(spool_next_ms(f->sp) > 0);                       /* no busy loop */
    f->answer = 0;
    int got = 0;
    for (int i = 0; i < 200 && got == 0; i++) {
        s_sleep_ms(5);
        got = spool_pump(f->sp, f->ctx);
    }
    assert_int_equal(got, 1);
    assert_string_equal(f->sent[0], a);
    assert_int_equal(spool_backlog(f->sp), 0);
}

static void test_sender_not_now(void **state)
{
    s_in_stage(state, s_not_now);
}

/* Acks from a PUB as omni-archive publishes them: one msgpack array of
 * ids per committed batch. */
static void s_real(struct fixture *f)
{
    void *pub = zmq_socket(stage_zctx(f->ctx), ZMQ_PUB);
    assert_int_equal(zmq_bind(pub, "inproc://test-acks-real"), 0);
    f->conf.acks = "inproc://test-acks-real";
    s_open(f, true);
    assert_non_null(spool_acks_socket(f->sp));
    char a[ULID_LEN + 1], b[ULID_LEN + 1];
    assert_int_equal(s_put(f, "whatsapp", "wamid.real1", a), 0);
    assert_int_equal(s_put(f, "whatsapp", "wamid.real2", b), 0);
    assert_int_equal(spool_commit(f->sp), 0);
    assert_int_equal(spool_pump(f->sp, f->ctx), 2);
    /* Ack both in one message, again and again until the subscription has
     * reached the publisher (PUB/SUB drops what comes before). */
    struct buf msg = { 0 };
    msgpack_packer pk;
    msgpack_packer_init(&pk, &msg, mp_buf_write);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_str_with_body(&pk, a, strlen(a));
    msgpack_pack_str_with_body(&pk, b, strlen(b));
    for (int i = 0; i < 400 && spool_backlog(f->sp) > 0; i++) {
        zmq_send(pub, msg.data, msg.len, ZMQ_DONTWAIT);
        s_sleep_ms(5);
        assert_true(spool_pump(f->sp, f->ctx) >= 0);
    }
    assert_int_equal(spool_backlog(f->sp), 0);
    assert_int_equal(s_count(f, "SELECT count(*) FROM spool"), 0);
    /* Junk on the ack socket is logged and skipped. */
    zmq_send(pub, "\xc1", 1, 0);
    zmq_send(pub, "\x91\x01", 2, 0);
    assert_true(spool_pump(f->sp, f->ctx) >= 0);
    buf_free(&msg);
    zmq_close(pub);
}

static void test_acks_socket(void **state)
{
    s_in_stage(state, s_real);
}

/* stage_emit, the default sender, to the runner's --out. */
static void s_emit(struct fixture *f)
{
    void *pull = zmq_socket(stage_zctx(f->ctx), ZMQ_PULL);
    assert_int_equal(zmq_connect(pull, "inproc://spool-emit"), 0);
    s_open(f, false);
    char a[ULID_LEN + 1];
    assert_int_equal(s_put(f, "email", "<x@example.com>", a), 0);
    assert_int_equal(spool_commit(f->sp), 0);
    assert_int_equal(spool_pump(f->sp, f->ctx), 1);
    char raw[4096];
    int n = zmq_recv(pull, raw, sizeof raw, 0);
    assert_true(n > 0);
    struct env *e = env_new();
    struct env_err err;
    assert_int_equal(env_decode(e, raw, (size_t)n, &err), 0);
    assert_int_equal(env_check(e, &err), 0);
    assert_string_equal(env_get(e, ENV_ID), a);
    assert_string_equal(env_get(e, ENV_SRC_ID), "<x@example.com>");
    assert_non_null(env_raw(e, ENV_TRACE, &(size_t){ 0 }));
    env_destroy(&e);
    zmq_close(pull);
}

static void test_stage_emit(void **state)
{
    char *argv[] = { "test-spool", "--out", "@inproc://spool-emit", "--linger", "0",
                     "--log-level", "error", NULL };
    s_fx = *state;
    s_body = s_emit;
    assert_int_equal(stage_main(&s_test_stage, 7, argv), 0);
}

static void test_refuses_other_databases(void **state)
{
    struct fixture *f = *state;
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "CREATE TABLE customers (x)", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    char err[300];
    assert_null(spool_open(NULL, &f->conf, err, sizeof err));
    assert_non_null(strstr(err, "not a spool"));
    struct spool_conf none = f->conf;
    none.path = NULL;
    assert_null(spool_open(NULL, &none, err, sizeof err));
}

static void test_options(void **state)
{
    (void)state;
    struct opt t[8];
    struct conf {
        int other;              /* a stage's own field */
        struct spool_conf sp;   /* the spool's settings */
    };
    size_t n = spool_opts_into(t, 8, offsetof(struct conf, sp));
    assert_int_equal(n, 5);
    assert_null(t[n].name);
    assert_string_equal(t[0].name, "spool");
    assert_int_equal(t[0].offset, offsetof(struct conf, sp) + offsetof(struct spool_conf, path));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_dedupe, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_cursor_in_same_transaction, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_rollback, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sent_in_order, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_ack_deletes, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_resend_same_id, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_restart_resends, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_backlog_bound, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sender_not_now, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_acks_socket, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_stage_emit, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_refuses_other_databases, s_setup, s_teardown),
        cmocka_unit_test(test_options),
    };
    return cmocka_run_group_tests_name("spool", tests, NULL, NULL);
}
