/* test_envmap — the map-value API of the envelope (route, bot, meta). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "envelope.h"

static void test_set_and_get(void **unused)
{
    (void)unused;
    struct env *e = env_new();
    struct env_err err;
    const struct env_kv route[] = {
        { .key = "target", .type = ENV_KV_STR, .s = "queue" },
        { .key = "queue", .type = ENV_KV_STR, .s = "financeiro" },
        { .key = "agent", .type = ENV_KV_STR, .s = NULL },
        { .key = "priority", .type = ENV_KV_INT, .i = -2 },
        { .key = "sticky", .type = ENV_KV_BOOL, .b = true },
        { .key = "score", .type = ENV_KV_FLOAT, .f = 0.75 },
    };
    assert_int_equal(env_set_map(e, ENV_ROUTE, route, 6, &err), 0);
    char s[32];
    int64_t i = 0;
    bool b = false;
    assert_int_equal(env_map_str(e, ENV_ROUTE, "queue", s, sizeof s), 1);
    assert_string_equal(s, "financeiro");
    assert_int_equal(env_map_str(e, ENV_ROUTE, "agent", s, sizeof s), 0);
    assert_int_equal(env_map_int(e, ENV_ROUTE, "priority", &i), 1);
    assert_int_equal(i, -2);
    assert_int_equal(env_map_bool(e, ENV_ROUTE, "sticky", &b), 1);
    assert_true(b);
    assert_int_equal(env_map_int(e, ENV_ROUTE, "queue", &i), -1);
    assert_int_equal(env_map_str(e, ENV_BOT, "queue", s, sizeof s), 0);
    assert_int_equal(env_map_str(e, ENV_ROUTE, "target", s, 3), 1);
    assert_string_equal(s, "qu");
    size_t n = 0;
    const unsigned char *raw = env_map_raw(e, ENV_ROUTE, "score", &n);
    assert_non_null(raw);
    assert_int_equal(n, 9);
    assert_int_equal(raw[0], 0xcb);
    env_destroy(&e);
    assert_null(e);
}

static void test_survives_round_trip(void **unused)
{
    (void)unused;
    struct env *e = env_new();
    struct env *d = env_new();
    struct env_err err;
    struct buf b = { 0 };
    const struct env_kv bot[] = {
        { .key = "article", .type = ENV_KV_STR, .s = "prazo-de-entrega" },
        { .key = "handoff", .type = ENV_KV_STR, .s = "low-confidence" },
    };
    assert_int_equal(env_set(e, ENV_ID, "01JD8X3Q6W4W0V1M2N3P4Q5R6S", &err), 0);
    assert_int_equal(env_set_map(e, ENV_BOT, bot, 2, &err), 0);
    assert_int_equal(env_encode(e, &b), 0);
    assert_int_equal(env_decode(d, b.data, b.len, &err), 0);
    char s[32];
    assert_int_equal(env_map_str(d, ENV_BOT, "handoff", s, sizeof s), 1);
    assert_string_equal(s, "low-confidence");
    buf_free(&b);
    env_destroy(&e);
    env_destroy(&d);
}

static void test_rejects_bad_utf8(void **unused)
{
    (void)unused;
    struct env *e = env_new();
    struct env_err err;
    const struct env_kv bad = { .key = "queue", .type = ENV_KV_STR, .s = "fin\xc3" };
    assert_int_equal(env_set_map(e, ENV_ROUTE, &bad, 1, &err), -1);
    assert_string_equal(err.field, "route");
    assert_false(env_has(e, ENV_ROUTE));
    env_destroy(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_and_get),
        cmocka_unit_test(test_survives_round_trip),
        cmocka_unit_test(test_rejects_bad_utf8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
