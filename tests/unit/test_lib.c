/* test_lib — unit tests of the small lib/ pieces every tool leans on:
 * utf8 (strict validation), ulid (ids), opt (options from argv and OMNI_*),
 * json (located parse errors), buf (JSON strings, base64) and mp_to_json. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "buf.h"
#include "json.h"
#include "mp.h"
#include "opt.h"
#include "ulid.h"
#include "utf8.h"

/* A string literal and its length, NUL bytes inside included. */
#define LIT(s) (s), (sizeof(s) - 1)

/* ---- utf8 ---------------------------------------------------------------- */

static void test_utf8_valid(void **state)
{
    (void)state;
    static const struct {
        const char *s;  /* bytes */
        size_t n;       /* length */
    } ok[] = {
        { LIT("") },
        { LIT("a") },
        { LIT("plain ASCII, long enough for the eight-byte fast path") },
        { LIT("a\0b") },                    /* NUL is valid UTF-8 */
        { LIT("\xC2\x80") },                /* U+0080, first 2-byte */
        { LIT("\xDF\xBF") },                /* U+07FF, last 2-byte */
        { LIT("\xE0\xA0\x80") },            /* U+0800, first 3-byte */
        { LIT("\xED\x9F\xBF") },            /* U+D7FF, just below the surrogates */
        { LIT("\xEE\x80\x80") },            /* U+E000, just above them */
        { LIT("\xEF\xBF\xBF") },            /* U+FFFF */
        { LIT("\xF0\x90\x80\x80") },        /* U+10000, first 4-byte */
        { LIT("\xF4\x8F\xBF\xBF") },        /* U+10FFFF, the last code point */
        { LIT("Cad\xC3\xAA meu pedido? \xF0\x9F\x98\x95") },
        { LIT("1234567\xC3\xA9" "abcdefgh\xE2\x82\xAC") },  /* across the fast path */
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        assert_int_equal(utf8_valid_prefix(ok[i].s, ok[i].n), ok[i].n);
        assert_true(utf8_is_valid(ok[i].s, ok[i].n));
    }
}

static void test_utf8_invalid(void **state)
{
    (void)state;
    static const struct {
        const char *s;  /* bytes */
        size_t n;       /* length */
        size_t at;      /* offset of the first bad sequence */
    } bad[] = {
        { LIT("\x80"), 0 },                         /* lone continuation */
        { LIT("ab\xBF" "cd"), 2 },                  /* lone continuation, later */
        { LIT("12345678\x80"), 8 },                 /* right after the fast path */
        { LIT("\xC0\xAF"), 0 },                     /* overlong '/' (2 bytes) */
        { LIT("\xC1\xBF"), 0 },                     /* overlong (2 bytes) */
        { LIT("x\xE0\x80\xAF"), 1 },                /* overlong '/' (3 bytes) */
        { LIT("\xE0\x9F\xBF"), 0 },                 /* overlong U+07FF */
        { LIT("\xF0\x80\x80\xAF"), 0 },             /* overlong '/' (4 bytes) */
        { LIT("\xF0\x8F\xBF\xBF"), 0 },             /* overlong U+FFFF */
        { LIT("ok\xED\xA0\x80"), 2 },               /* high surrogate U+D800 */
        { LIT("\xED\xBF\xBF"), 0 },                 /* low surrogate U+DFFF */
        { LIT("\xF4\x90\x80\x80"), 0 },             /* U+110000 */
        { LIT("\xF5\x80\x80\x80"), 0 },             /* lead byte past U+10FFFF */
        { LIT("\xF8\x88\x80\x80\x80"), 0 },         /* 5-byte form */
        { LIT("\xFE"), 0 },
        { LIT("\xFF"), 0 },
        { LIT("abc\xE2\x82"), 3 },                  /* truncated 3-byte */
        { LIT("\xF0\x9F\x98"), 0 },                 /* truncated 4-byte */
        { LIT("\xC3"), 0 },                         /* truncated 2-byte */
        { LIT("\xC3" "a"), 0 },                     /* 2-byte, bad second */
        { LIT("\xE2\x82" "A"), 0 },                 /* 3-byte, bad third */
        { LIT("\xF0\x9F\x98" "A"), 0 },             /* 4-byte, bad fourth */
        { LIT("\xE2\xC3\xA9"), 0 },                 /* lead where a continuation goes */
        { LIT("\xC3\xA9\xC3\xA9\xC3"), 4 },         /* valid, valid, truncated */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t got = utf8_valid_prefix(bad[i].s, bad[i].n);
        if (got != bad[i].at) {
            print_error("case %zu: offset %zu, want %zu\n", i, got, bad[i].at);
        }
        assert_int_equal(got, bad[i].at);
        assert_false(utf8_is_valid(bad[i].s, bad[i].n));
    }
    /* n bounds the check: a sequence cut by n is truncated. */
    assert_int_equal(utf8_valid_prefix("\xC3\xA9", 1), 0);
    assert_int_equal(utf8_valid_prefix("a\xE2\x82\xAC", 3), 1);
}

/* Reference decoder, by code point arithmetic rather than byte ranges: the
 * length of the sequence at s[0..n), or 0 when it is not valid UTF-8. */
static size_t s_ref_seq(const unsigned char *s, size_t n)
{
    static const uint32_t least[] = { 0, 0, 0x80, 0x800, 0x10000 };
    unsigned c = s[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
        return 1;
    } else if ((c & 0xE0) == 0xC0) {
        len = 2;
        cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3;
        cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (len > n) {
        return 0;
    }
    for (size_t k = 1; k < len; k++) {
        if ((s[k] & 0xC0) != 0x80) {
            return 0;
        }
        cp = cp << 6 | (s[k] & 0x3F);
    }
    if (cp < least[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
        return 0;
    }
    return len;
}

/* Fills s[0..n) with bytes from a palette of interesting ones (a fixed
 * sequence, the same on every run). */
static void s_random_bytes(uint32_t *seed, unsigned char *s, size_t n)
{
    static const unsigned char palette[] = {
        0x00, 0x01, 0x1f, '"', '\\', 'a', 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0,
        0xc1, 0xc2, 0xc3, 0xdf, 0xe0, 0xe1, 0xec, 0xed, 0xee, 0xef, 0xf0, 0xf1, 0xf3, 0xf4,
        0xf5, 0xf8, 0xfe, 0xff,
    };
    for (size_t i = 0; i < n; i++) {
        *seed = *seed * 1103515245u + 12345u;
        s[i] = palette[(*seed >> 16) % sizeof palette];
    }
}

static void test_utf8_reference(void **state)
{
    (void)state;
    uint32_t seed = 1;
    unsigned char s[16];
    for (int round = 0; round < 200000; round++) {
        size_t n = (size_t)(round % 13);
        s_random_bytes(&seed, s, n);
        size_t want = 0;
        while (want < n) {
            size_t len = s_ref_seq(s + want, n - want);
            if (len == 0) {
                break;
            }
            want += len;
        }
        size_t got = utf8_valid_prefix((const char *)s, n);
        if (got != want) {
            print_error("round %d: got %zu, want %zu\n", round, got, want);
        }
        assert_int_equal(got, want);
    }
}

/* ---- ulid ---------------------------------------------------------------- */

static void s_assert_ulid_shape(const char *id)
{
    static const char alphabet[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    assert_int_equal(strlen(id), ULID_LEN);
    for (size_t i = 0; i < ULID_LEN; i++) {
        assert_non_null(strchr(alphabet, id[i]));
    }
    assert_true(ulid_valid(id, ULID_LEN));
}

static void test_ulid_next(void **state)
{
    (void)state;
    struct ulid_gen g = { 0 };
    const uint64_t ms = 1794791647215ULL;
    char prev[ULID_LEN + 1];
    char id[ULID_LEN + 1];
    assert_int_equal(ulid_next(&g, ms, prev), 0);
    s_assert_ulid_shape(prev);
    assert_int_equal(ulid_time(prev), ms);
    /* Within one ms: strictly increasing, same time part. */
    for (int i = 0; i < 10000; i++) {
        assert_int_equal(ulid_next(&g, ms, id), 0);
        s_assert_ulid_shape(id);
        assert_int_equal(ulid_time(id), ms);
        if (strcmp(prev, id) >= 0) {
            print_error("not increasing at %d: %s then %s\n", i, prev, id);
        }
        assert_true(strcmp(prev, id) < 0);
        memcpy(prev, id, sizeof id);
    }
    /* The clock stepping back keeps the order. */
    assert_int_equal(ulid_next(&g, ms - 5000, id), 0);
    assert_true(strcmp(prev, id) < 0);
    assert_int_equal(ulid_time(id), ms);
    memcpy(prev, id, sizeof id);
    /* A later ms sorts after everything before it. */
    assert_int_equal(ulid_next(&g, ms + 1, id), 0);
    assert_true(strcmp(prev, id) < 0);
    assert_int_equal(ulid_time(id), ms + 1);
    /* Two generators at one ms: random parts differ. */
    struct ulid_gen g2 = { 0 };
    char other[ULID_LEN + 1];
    assert_int_equal(ulid_next(&g2, ms + 1, other), 0);
    assert_string_not_equal(id, other);
    assert_memory_equal(id, other, 10);     /* same time characters */
}

static void test_ulid_time_round_trip(void **state)
{
    (void)state;
    static const uint64_t times[] = {
        1, 1000, 1794791647215ULL, 0x7FFFFFFFFFFFULL, 0xFFFFFFFFFFFFULL
    };
    for (size_t i = 0; i < sizeof times / sizeof times[0]; i++) {
        struct ulid_gen g = { 0 };
        char id[ULID_LEN + 1];
        assert_int_equal(ulid_next(&g, times[i], id), 0);
        s_assert_ulid_shape(id);
        assert_int_equal(ulid_time(id), times[i]);
    }
    assert_int_equal(ulid_time("0000000001AAAAAAAAAAAAAAAA"), 1);
    assert_int_equal(ulid_time("7ZZZZZZZZZ0000000000000000"), 0xFFFFFFFFFFFFULL);
}

static void test_ulid_valid(void **state)
{
    (void)state;
    assert_true(ulid_valid("01J9ZQ4X5K3M7N8P9QRSTVWXYZ", 26));
    assert_true(ulid_valid("7ZZZZZZZZZZZZZZZZZZZZZZZZZ", 26));
    assert_false(ulid_valid("01J9ZQ4X5K3M7N8P9QRSTVWXY", 25));     /* short */
    assert_false(ulid_valid("01J9ZQ4X5K3M7N8P9QRSTVWXYZZ", 27));   /* long */
    assert_false(ulid_valid("81J9ZQ4X5K3M7N8P9QRSTVWXYZ", 26));    /* time > 48 bits */
    assert_false(ulid_valid("01J9ZQ4X5K3M7N8P9QRSTVWXYI", 26));    /* I */
    assert_false(ulid_valid("01J9ZQ4X5K3M7N8P9QRSTVWXYL", 26));    /* L */
    assert_false(ulid_valid("01J9ZQ4X5K3M7N8P9QRSTVWXYO", 26));    /* O */
    assert_false(ulid_valid("01J9ZQ4X5K3M7N8P9QRSTVWXYU", 26));    /* U */
    assert_false(ulid_valid("01J9ZQ4X5K3M7N8P9QRSTVWXY-", 26));
    assert_false(ulid_valid("01J9ZQ4X5K3M7N8P9QRSTVWXY\0", 26));
}

static void test_ulid_derive(void **state)
{
    (void)state;
    const char *parent = "01J9ZQ4X5K3M7N8P9QRSTVWXYZ";
    char a[ULID_LEN + 1], b[ULID_LEN + 1], c[ULID_LEN + 1], d[ULID_LEN + 1];
    ulid_derive(parent, "reply", a);
    ulid_derive(parent, "reply", b);
    ulid_derive(parent, "receipt", c);
    ulid_derive("01J9ZQ4X5K3M7N8P9QRSTVWXY0", "reply", d);
    s_assert_ulid_shape(a);
    s_assert_ulid_shape(c);
    s_assert_ulid_shape(d);
    assert_string_equal(a, b);              /* deterministic */
    assert_string_not_equal(a, c);          /* salt matters */
    assert_string_not_equal(a, d);          /* parent matters */
    assert_string_not_equal(a, parent);
    assert_int_equal(ulid_time(a), ulid_time(parent));  /* parent's time */
    assert_int_equal(ulid_time(d), ulid_time(parent));
    /* Salts are not simply concatenated to the parent. */
    char e[ULID_LEN + 1], f[ULID_LEN + 1];
    ulid_derive("01J9ZQ4X5K3M7N8P9QRSTVWXYZ", "ab", e);
    ulid_derive("01J9ZQ4X5K3M7N8P9QRSTVWXYZa", "b", f);
    assert_string_not_equal(e, f);
}

/* ---- opt ----------------------------------------------------------------- */

struct s_conf {
    const char *name;   /* OPT_STR */
    int64_t batch;      /* OPT_INT */
    bool flag;          /* OPT_BOOL */
    int64_t wait;       /* OPT_MS */
    const char *none;   /* OPT_STR without a default */
};

static const struct opt s_table[] = {
    { "name", OPT_STR, "def", offsetof(struct s_conf, name), "a name" },
    { "batch-size", OPT_INT, "10", offsetof(struct s_conf, batch), "a count" },
    { "flag", OPT_BOOL, "yes", offsetof(struct s_conf, flag), "a switch" },
    { "wait", OPT_MS, "5s", offsetof(struct s_conf, wait), "a duration" },
    { "none", OPT_STR, NULL, offsetof(struct s_conf, none), "no default" },
    { NULL, 0, NULL, 0, NULL }
};

static int s_warned;    /* warnings about OMNI_TEST_NO_SUCH */

static void s_warn(const char *msg)
{
    assert_non_null(msg);
    if (strstr(msg, "OMNI_TEST_NO_SUCH") != NULL) {
        s_warned++;
    }
}

static const char *const s_env_vars[] = {
    "OMNI_NAME", "OMNI_BATCH_SIZE", "OMNI_FLAG", "OMNI_WAIT", "OMNI_NONE", "OMNI_TEST_NO_SUCH"
};

/* Runs opt_parse over a NULL-terminated argv into c. */
static int s_parse(struct s_conf *c, struct opt_result *res, char **argv)
{
    int argc = 0;
    while (argv[argc] != NULL) {
        argc++;
    }
    memset(c, 0, sizeof *c);
    struct opt_set set = { s_table, c };
    return opt_parse(&set, 1, argc, argv, s_warn, res);
}

static int s_opt_setup(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof s_env_vars / sizeof s_env_vars[0]; i++) {
        unsetenv(s_env_vars[i]);
    }
    s_warned = 0;
    return 0;
}

static void test_opt_defaults(void **state)
{
    (void)state;
    struct s_conf c;
    struct opt_result res;
    char *argv[] = { "prog", NULL };
    assert_int_equal(s_parse(&c, &res, argv), 0);
    assert_int_equal(res.status, 0);
    assert_string_equal(c.name, "def");
    assert_int_equal(c.batch, 10);
    assert_true(c.flag);
    assert_int_equal(c.wait, 5000);
    assert_null(c.none);
    assert_int_equal(res.npos, 0);
    free(res.pos);
}

static void test_opt_env_over_default(void **state)
{
    (void)state;
    struct s_conf c;
    struct opt_result res;
    char *argv[] = { "prog", NULL };
    setenv("OMNI_NAME", "from-env", 1);
    setenv("OMNI_BATCH_SIZE", "2k", 1);     /* dashes are underscores */
    setenv("OMNI_FLAG", "no", 1);
    setenv("OMNI_WAIT", "250ms", 1);
    setenv("OMNI_TEST_NO_SUCH", "1", 1);    /* someone else's: warned, not fatal */
    assert_int_equal(s_parse(&c, &res, argv), 0);
    assert_string_equal(c.name, "from-env");
    assert_int_equal(c.batch, 2000);
    assert_false(c.flag);
    assert_int_equal(c.wait, 250);
    assert_int_equal(s_warned, 1);
    free(res.pos);
    s_opt_setup(NULL);
}

static void test_opt_argv_over_env(void **state)
{
    (void)state;
    struct s_conf c;
    struct opt_result res;
    setenv("OMNI_NAME", "from-env", 1);
    setenv("OMNI_BATCH_SIZE", "7", 1);
    setenv("OMNI_FLAG", "no", 1);
    char *argv[] = { "prog", "--name", "from-argv", "--batch-size=3M", "--flag", "--wait=10s",
                     "--none", "", NULL };
    assert_int_equal(s_parse(&c, &res, argv), 0);
    assert_string_equal(c.name, "from-argv");
    assert_int_equal(c.batch, 3000000);
    assert_true(c.flag);
    assert_int_equal(c.wait, 10000);
    assert_string_equal(c.none, "");
    assert_int_equal(res.npos, 0);
    free(res.pos);
    s_opt_setup(NULL);
}

static void test_opt_bool_forms(void **state)
{
    (void)state;
    struct s_conf c;
    struct opt_result res;
    char *a1[] = { "prog", "--no-flag", NULL };
    assert_int_equal(s_parse(&c, &res, a1), 0);
    assert_false(c.flag);
    free(res.pos);
    char *a2[] = { "prog", "--no-flag", "--flag", NULL };     /* last one wins */
    assert_int_equal(s_parse(&c, &res, a2), 0);
    assert_true(c.flag);
    free(res.pos);
    static const char *const yes[] = { "yes", "true", "1", "on" };
    static const char *const no[] = { "no", "false", "0", "off" };
    for (size_t i = 0; i < 4; i++) {
        char arg[32];
        snprintf(arg, sizeof arg, "--flag=%s", no[i]);
        char *a3[] = { "prog", arg, NULL };
        assert_int_equal(s_parse(&c, &res, a3), 0);
        assert_false(c.flag);
        free(res.pos);
        snprintf(arg, sizeof arg, "--flag=%s", yes[i]);
        setenv("OMNI_FLAG", "no", 1);
        char *a4[] = { "prog", arg, NULL };
        assert_int_equal(s_parse(&c, &res, a4), 0);
        assert_true(c.flag);
        free(res.pos);
        unsetenv("OMNI_FLAG");
    }
    /* --no- only negates booleans, and takes no value. */
    char *a5[] = { "prog", "--no-name", NULL };
    assert_int_equal(s_parse(&c, &res, a5), -1);
    assert_int_equal(res.status, 64);
    free(res.pos);
    char *a6[] = { "prog", "--no-flag=yes", NULL };
    assert_int_equal(s_parse(&c, &res, a6), -1);
    assert_int_equal(res.status, 64);
    free(res.pos);
}

static void test_opt_errors(void **state)
{
    (void)state;
    struct s_conf c;
    struct opt_result res;
    static const struct {
        const char *args[4];    /* after argv[0] */
        const char *says;       /* in res.err */
    } bad[] = {
        { { "--bogus" }, "bogus" },
        { { "--bogus=1" }, "bogus" },
        { { "--batch-size", "abc" }, "batch-size" },
        { { "--batch-size=12x" }, "batch-size" },
        { { "--batch-size=" }, "batch-size" },
        { { "--batch-size=k" }, "batch-size" },         /* a suffix alone is no number */
        { { "--batch-size=5kk" }, "batch-size" },
        { { "--batch-size=99999999999999999999" }, "batch-size" },
        { { "--batch-size=9223372036854775807k" }, "batch-size" },  /* overflows */
        { { "--batch-size=-9223372036854775807G" }, "batch-size" },
        { { "--flag=maybe" }, "flag" },
        { { "--wait=5x" }, "wait" },
        { { "--wait=-1s" }, "wait" },
        { { "--wait" }, "wait" },                       /* no value left */
        { { "a", "--name" }, "name" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *argv[6] = { "prog" };
        for (int k = 0; k < 4 && bad[i].args[k] != NULL; k++) {
            argv[k + 1] = (char *)bad[i].args[k];
        }
        int rc = s_parse(&c, &res, argv);
        if (rc != -1 || res.status != 64) {
            print_error("case %zu (%s): rc %d status %d\n", i, bad[i].args[0], rc, res.status);
        }
        assert_int_equal(rc, -1);
        assert_int_equal(res.status, 64);
        assert_non_null(strstr(res.err, bad[i].says));
        free(res.pos);
    }
}

static void test_opt_bad_env(void **state)
{
    (void)state;
    static const char *const bad[][2] = {
        { "OMNI_BATCH_SIZE", "lots" },
        { "OMNI_FLAG", "maybe" },
        { "OMNI_FLAG", "" },
        { "OMNI_WAIT", "soon" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct s_conf c;
        struct opt_result res;
        char *argv[] = { "prog", NULL };
        setenv(bad[i][0], bad[i][1], 1);
        assert_int_equal(s_parse(&c, &res, argv), -1);
        assert_int_equal(res.status, 78);
        assert_non_null(strstr(res.err, bad[i][0]));
        free(res.pos);
        unsetenv(bad[i][0]);
    }
}

static void test_opt_durations(void **state)
{
    (void)state;
    static const struct {
        const char *s;  /* text */
        int64_t ms;     /* value */
    } ok[] = {
        { "500ms", 500 }, { "10s", 10000 }, { "5m", 300000 }, { "5min", 300000 },
        { "24h", 86400000 }, { "7d", 604800000 }, { "250", 250 }, { "0", 0 },
        { "1.5s", 1500 },
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        int64_t ms = -1;
        assert_int_equal(opt_parse_ms(ok[i].s, &ms), 0);
        assert_int_equal(ms, ok[i].ms);
    }
    static const char *const bad[] = {
        "", "s", "ms", "-1", "-5s", "5x", "5 s", "10sec", "nan", "nans", "inf", "1e30d",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t ms = 0;
        if (opt_parse_ms(bad[i], &ms) != -1) {
            print_error("'%s' was accepted as %lld ms\n", bad[i], (long long)ms);
        }
        assert_int_equal(opt_parse_ms(bad[i], &ms), -1);
    }
    /* Through the table, as each tool sees it. */
    int64_t v = 0;
    char err[200];
    assert_int_equal(opt_value(OPT_MS, "24h", &v, err, sizeof err), 0);
    assert_int_equal(v, 86400000);
    assert_int_equal(opt_value(OPT_MS, "later", &v, err, sizeof err), -1);
    assert_non_null(strstr(err, "later"));
}

static void test_opt_int_suffixes(void **state)
{
    (void)state;
    static const struct {
        const char *s;  /* text */
        int64_t v;      /* value */
    } ok[] = {
        { "0", 0 }, { "42", 42 }, { "-3", -3 }, { "1k", 1000 }, { "64k", 64000 },
        { "4M", 4000000 }, { "2G", 2000000000 }, { "-2k", -2000 },
        { "9223372036854775807", INT64_MAX },
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        int64_t v = -1;
        char err[200];
        assert_int_equal(opt_value(OPT_INT, ok[i].s, &v, err, sizeof err), 0);
        assert_int_equal(v, ok[i].v);
    }
}

static void test_opt_positional(void **state)
{
    (void)state;
    struct s_conf c;
    struct opt_result res;
    char *argv[] = { "prog", "a.jsonl", "--name", "x", "-", "b.jsonl", "--", "--flag", "--no-flag",
                     "c", NULL };
    assert_int_equal(s_parse(&c, &res, argv), 0);
    assert_string_equal(c.name, "x");
    assert_true(c.flag);    /* after "--": not an option */
    assert_int_equal(res.npos, 6);
    assert_string_equal(res.pos[0], "a.jsonl");
    assert_string_equal(res.pos[1], "-");
    assert_string_equal(res.pos[2], "b.jsonl");
    assert_string_equal(res.pos[3], "--flag");
    assert_string_equal(res.pos[4], "--no-flag");
    assert_string_equal(res.pos[5], "c");
    free(res.pos);
    char *argv2[] = { "prog", "--", NULL };
    assert_int_equal(s_parse(&c, &res, argv2), 0);
    assert_int_equal(res.npos, 0);
    free(res.pos);
}

static void test_opt_two_sets_and_help(void **state)
{
    (void)state;
    struct s_conf c = { 0 };
    struct { int64_t hwm; } other = { 0 };
    static const struct opt t2[] = {
        { "hwm", OPT_INT, "1k", 0, "queue bound" },
        { NULL, 0, NULL, 0, NULL }
    };
    struct opt_set sets[] = { { s_table, &c }, { t2, &other } };
    char *argv[] = { "prog", "--hwm=5", "--name=n", NULL };
    struct opt_result res;
    assert_int_equal(opt_parse(sets, 2, 3, argv, NULL, &res), 0);
    assert_int_equal(other.hwm, 5);
    assert_string_equal(c.name, "n");
    free(res.pos);

    char *text = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&text, &len);
    assert_non_null(fp);
    opt_help(sets, 2, fp);
    fclose(fp);
    assert_non_null(strstr(text, "--name"));
    assert_non_null(strstr(text, "a name"));
    assert_non_null(strstr(text, "--batch-size"));
    assert_non_null(strstr(text, "--hwm"));
    assert_non_null(strstr(text, "queue bound"));
    assert_non_null(strstr(text, "5s"));
    free(text);
}

/* ---- json ---------------------------------------------------------------- */

static void test_json_valid(void **state)
{
    (void)state;
    char err[200] = "";
    const char doc[] = "{\"a\": [1, 2.5, {\"b\": \"c\\u00e9\"}], \"t\": true, \"n\": null}\n";
    cJSON *j = json_parse(doc, sizeof doc - 1, err, sizeof err);
    assert_non_null(j);
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "a");
    assert_true(cJSON_IsArray(a));
    assert_int_equal(cJSON_GetArraySize(a), 3);
    assert_int_equal(cJSON_GetArrayItem(a, 0)->valueint, 1);
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(a, 2), "b");
    assert_string_equal(b->valuestring, "c\xC3\xA9");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "t")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j, "n")));
    cJSON_Delete(j);
    /* Not NUL-terminated: only n bytes count. */
    j = json_parse("[1]]]]", 3, err, sizeof err);
    assert_non_null(j);
    cJSON_Delete(j);
    /* Raw UTF-8 is fine. */
    j = json_parse(LIT("{\"t\":\"a\xC3\xA7\xC3\xA3o \xF0\x9F\x98\x95\"}"), err, sizeof err);
    assert_non_null(j);
    cJSON_Delete(j);
    /* Trailing whitespace, and one terminating NUL, are not garbage. */
    j = json_parse(LIT("{}\n \t\r\n"), err, sizeof err);
    assert_non_null(j);
    cJSON_Delete(j);
    j = json_parse(LIT("{}\0"), err, sizeof err);
    assert_non_null(j);
    cJSON_Delete(j);
}

/* json_parse must fail and say want in err. */
static void s_json_bad(const char *s, size_t n, const char *want)
{
    char err[200] = "";
    cJSON *j = json_parse(s, n, err, sizeof err);
    if (j != NULL || strstr(err, want) == NULL) {
        print_error("parsing '%.*s': err '%s', want '%s'\n", (int)n, s, err, want);
    }
    assert_null(j);
    assert_non_null(strstr(err, want));
}

static void test_json_errors(void **state)
{
    (void)state;
    /* Invalid UTF-8: the line and byte column of the bad byte. */
    s_json_bad(LIT("{\n  \"a\": \"x\xC3(\"\n}"), "line 2, column 10: invalid UTF-8");
    s_json_bad(LIT("\xFF"), "line 1, column 1: invalid UTF-8");
    s_json_bad(LIT("[\"\xED\xA0\x80\"]"), "line 1, column 3: invalid UTF-8");
    s_json_bad(LIT("[\"\xC0\xAF\"]"), "line 1, column 3: invalid UTF-8");
    /* Broken documents: where it breaks. */
    s_json_bad(LIT("{\n\"a\": 1,\n\"b\": tru\n}"), "line 3, column 6");
    s_json_bad(LIT("[1,\n 2,\n ,3]"), "line 3, column 2");
    s_json_bad(LIT("{\"a\" 1}"), "line 1, column ");
    /* A document that ends early: cJSON points at its last byte. */
    s_json_bad(LIT("{\"a\": [1, 2"), "line 1, column 11");
    s_json_bad(LIT("{\n\"a\": \"abc"), "line 2, column ");
    s_json_bad(LIT(""), "line 1, column 1");
    /* Trailing garbage. */
    s_json_bad(LIT("{\"a\":1} x"), "line 1, column 9: text after the JSON value");
    s_json_bad(LIT("[1]\n\n  ]"), "line 3, column 3: text after the JSON value");
    s_json_bad(LIT("{}{}"), "line 1, column 3: text after the JSON value");
    /* A NUL does not end the document early: what follows it counts. */
    s_json_bad(LIT("{}\0{\"b\":2}"), "text after the JSON value");
    s_json_bad(LIT("{}\0\0"), "text after the JSON value");
}

/* ---- buf ----------------------------------------------------------------- */

/* buf_json_str of s[0..n) must be exactly want. */
static void s_json_str_is(const char *s, size_t n, const char *want)
{
    struct buf b = { 0 };
    assert_int_equal(buf_puts(&b, "x="), 0);     /* appends, keeps what was there */
    assert_int_equal(buf_json_str(&b, s, n), 0);
    assert_string_equal(b.data + 2, want);
    assert_int_equal(b.len, 2 + strlen(want));
    assert_true(utf8_is_valid(b.data, b.len));
    buf_free(&b);
}

static void test_buf_json_str(void **state)
{
    (void)state;
    s_json_str_is(LIT(""), "\"\"");
    s_json_str_is(LIT("plain"), "\"plain\"");
    s_json_str_is(LIT("q\"b\\s/"), "\"q\\\"b\\\\s/\"");
    s_json_str_is(LIT("\n\r\t\b\f"), "\"\\n\\r\\t\\b\\f\"");
    s_json_str_is(LIT("\x01\x1f\x7f"), "\"\\u0001\\u001f\x7f\"");
    s_json_str_is(LIT("a\0b"), "\"a\\u0000b\"");
    s_json_str_is(LIT("a\xC3\xA7\xC3\xA3o \xF0\x9F\x98\x95!"), "\"a\xC3\xA7\xC3\xA3o \xF0\x9F\x98\x95!\"");
    /* Invalid UTF-8: each bad byte becomes U+FFFD, the rest is kept. */
    s_json_str_is(LIT("a\xC3(b"), "\"a\xEF\xBF\xBD(b\"");
    s_json_str_is(LIT("\x80"), "\"\xEF\xBF\xBD\"");
    s_json_str_is(LIT("\xC0\xAF"), "\"\xEF\xBF\xBD\xEF\xBF\xBD\"");
    s_json_str_is(LIT("\xED\xA0\x80"), "\"\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\"");
    s_json_str_is(LIT("\xC3\xA9\xE2\x82"), "\"\xC3\xA9\xEF\xBF\xBD\xEF\xBF\xBD\"");
    s_json_str_is(LIT("\xFF\xC3\xA9\""), "\"\xEF\xBF\xBD\xC3\xA9\\\"\"");
    s_json_str_is(LIT("\xC3\xA9\xC3\xA9\xFF\xC3\xA9x"), "\"\xC3\xA9\xC3\xA9\xEF\xBF\xBD\xC3\xA9x\"");

    /* A long mix: valid runs between ASCII, and a bad byte near the end. */
    struct buf in = { 0 }, want = { 0 };
    buf_putc(&want, '"');
    for (int i = 0; i < 2000; i++) {
        buf_puts(&in, "\xC3\xA9 ");
        buf_puts(&want, "\xC3\xA9 ");
    }
    buf_puts(&in, "\xE9!");
    buf_puts(&want, "\xEF\xBF\xBD!\"");
    s_json_str_is(in.data, in.len, want.data);
    buf_free(&in);
    buf_free(&want);
}

static void test_buf_json_str_reference(void **state)
{
    (void)state;
    /* Against a plain reference: valid sequences copied, each byte of an
     * invalid one U+FFFD, control characters escaped. */
    uint32_t seed = 7;
    unsigned char s[24];
    struct buf got = { 0 }, want = { 0 };
    for (int round = 0; round < 50000; round++) {
        size_t n = (size_t)(round % 25);
        s_random_bytes(&seed, s, n);
        buf_reset(&want);
        buf_putc(&want, '"');
        for (size_t i = 0; i < n;) {
            size_t len = s_ref_seq(s + i, n - i);
            if (len == 0) {
                buf_puts(&want, "\xEF\xBF\xBD");
                i++;
            } else if (len > 1) {
                buf_append(&want, s + i, len);
                i += len;
            } else {
                unsigned char c = s[i++];
                if (c == '"' || c == '\\') {
                    buf_printf(&want, "\\%c", c);
                } else if (c < 0x20) {
                    buf_printf(&want, "\\u%04x", c);
                } else {
                    buf_putc(&want, (char)c);
                }
            }
        }
        buf_putc(&want, '"');
        buf_reset(&got);
        assert_int_equal(buf_json_str(&got, (const char *)s, n), 0);
        assert_true(utf8_is_valid(got.data, got.len));
        assert_int_equal(got.len, want.len);
        assert_memory_equal(got.data, want.data, want.len);
    }
    buf_free(&got);
    buf_free(&want);
}

static void test_buf_base64(void **state)
{
    (void)state;
    /* RFC 4648, section 10. */
    static const char *const vec[][2] = {
        { "", "" }, { "f", "Zg==" }, { "fo", "Zm8=" }, { "foo", "Zm9v" },
        { "foob", "Zm9vYg==" }, { "fooba", "Zm9vYmE=" }, { "foobar", "Zm9vYmFy" },
    };
    for (size_t i = 0; i < sizeof vec / sizeof vec[0]; i++) {
        struct buf b = { 0 };
        assert_int_equal(buf_base64(&b, vec[i][0], strlen(vec[i][0])), 0);
        if (b.data == NULL) {
            assert_int_equal(b.len, 0);
            assert_string_equal(vec[i][1], "");
        } else {
            assert_string_equal(b.data, vec[i][1]);
            assert_int_equal(b.len, strlen(vec[i][1]));
        }
        buf_free(&b);
    }
    /* The two characters past the letters and digits, and NUL bytes. */
    struct buf b = { 0 };
    assert_int_equal(buf_base64(&b, "\xFB\xFF\xBF", 3), 0);
    assert_string_equal(b.data, "+/+/");
    buf_reset(&b);
    assert_int_equal(buf_base64(&b, "\0\0\0\0", 4), 0);
    assert_string_equal(b.data, "AAAAAA==");
    buf_free(&b);
}

static void test_buf_basics(void **state)
{
    (void)state;
    struct buf b = { 0 };
    assert_int_equal(buf_printf(&b, "%s-%d", "n", 7), 0);
    assert_string_equal(b.data, "n-7");
    /* Longer than the small stack buffer buf_vprintf tries first. */
    char big[1000];
    memset(big, 'z', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(buf_printf(&b, "[%s]", big), 0);
    assert_int_equal(b.len, 3 + 2 + 999);
    assert_int_equal(b.data[3], '[');
    assert_int_equal(b.data[b.len - 1], ']');
    assert_int_equal(b.data[b.len], '\0');
    buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");
    assert_int_equal(buf_append(&b, "ab\0c", 4), 0);
    assert_int_equal(b.len, 4);
    assert_memory_equal(b.data, "ab\0c", 5);
    buf_free(&b);
    assert_null(b.data);
    assert_int_equal(buf_putc(&b, 'x'), 0);     /* usable again */
    assert_string_equal(b.data, "x");
    buf_free(&b);
}

/* ---- mp_to_json ---------------------------------------------------------- */

/* mp_to_json of p[0..n) must be exactly want, or fail when want is NULL. */
static void s_mp_json_is(const char *p, size_t n, const char *want)
{
    struct buf b = { 0 };
    int rc = mp_to_json(p, n, &b);
    if (want == NULL) {
        assert_int_equal(rc, -1);
    } else {
        if (rc != 0 || b.data == NULL || strcmp(b.data, want) != 0) {
            print_error("got rc %d '%s', want '%s'\n", rc, b.data ? b.data : "", want);
        }
        assert_int_equal(rc, 0);
        assert_string_equal(b.data, want);
    }
    buf_free(&b);
}

static void test_mp_to_json(void **state)
{
    (void)state;
    static const char msg[] =
        "\x8e"                                  /* map of 14 */
        "\xa1s" "\xa4hi\n\""                    /* fixstr with escapes */
        "\xa1u" "\xcd\x01\x00"                  /* uint16 256 */
        "\xa1U" "\xcf\xff\xff\xff\xff\xff\xff\xff\xff"  /* uint64 max */
        "\xa1i" "\xd0\xfb"                      /* int8 -5 */
        "\xa1p" "\xd1\x00\x07"                  /* int16 7: non-negative, still a number */
        "\xa1n" "\xe0"                          /* negative fixint -32 */
        "\xa1" "f" "\xca\x3f\xc0\x00\x00"       /* float32 1.5 */
        "\xa1" "d" "\xcb\x40\x09\x21\xfb\x54\x44\x2d\x18"  /* float64 pi */
        "\xa3nil" "\xc0"
        "\xa1t" "\xc3"
        "\xa3" "bin" "\xc4\x03\x01\x02\x03"
        "\xa3" "ext" "\xd4\x05\xff"
        "\xa1" "a" "\x93\x01\xd9\x01x\x90"      /* [1, str8 "x", []] */
        "\xa1m" "\x84\x01\xa1" "a" "\xff\xa1" "b" "\xc2\xa1" "c" "\xc0\x80";  /* non-str keys */
    s_mp_json_is(msg, sizeof msg - 1,
                 "{\"s\":\"hi\\n\\\"\",\"u\":256,\"U\":18446744073709551615,\"i\":-5,\"p\":7,"
                 "\"n\":-32,\"f\":1.5,\"d\":3.1415926535897931,\"nil\":null,\"t\":true,"
                 "\"bin\":\"AQID\",\"ext\":{\"ext\":5,\"data\":\"/w==\"},\"a\":[1,\"x\",[]],"
                 "\"m\":{\"1\":\"a\",\"-1\":\"b\",\"false\":\"c\",\"null\":{}}}");
    /* Invalid UTF-8 in a string value and in a key: U+FFFD. */
    s_mp_json_is(LIT("\x81\xa2k\xff\xa2v\xc0"), "{\"k\xEF\xBF\xBD\":\"v\xEF\xBF\xBD\"}");
    /* Infinity and NaN have no JSON: null. */
    s_mp_json_is(LIT("\x92\xca\x7f\x80\x00\x00\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00"), "[null,null]");
    /* Keys that are containers or ext: their msgpack in base64, as strings
     * (with keys inside keys, JSON text would double at every level). */
    s_mp_json_is(LIT("\x83\x92\x01\x02\xa1" "a\x81\xa1k\x01\xa1" "b\xd4\x05\xff\xa1" "c"),
                 "{\"kgEC\":\"a\",\"gaFrAQ==\":\"b\",\"1AX/\":\"c\"}");
    s_mp_json_is(LIT("\x81\x81\x81\x81\xa1\"\x01\x02\x03\x04"), "{\"gYGBoSIBAgM=\":4}");
    /* Scalars at the top. */
    s_mp_json_is(LIT("\x05"), "5");
    s_mp_json_is(LIT("\xdb\x00\x00\x00\x02ok"), "\"ok\"");

    /* Malformed: truncated, 0xc1, trailing bytes, container keys, counts past the end. */
    s_mp_json_is(LIT(""), NULL);
    s_mp_json_is(LIT("\xc1"), NULL);
    s_mp_json_is(LIT("\x92\x01"), NULL);
    s_mp_json_is(LIT("\xa5" "abc"), NULL);
    s_mp_json_is(LIT("\xcd\x01"), NULL);
    s_mp_json_is(LIT("\x01\x02"), NULL);
    s_mp_json_is(LIT("\x81\x92\x01"), NULL);                /* truncated container key */
    s_mp_json_is(LIT("\xdd\xff\xff\xff\xff\x01"), NULL);
    s_mp_json_is(LIT("\xdf\xff\xff\xff\xff\x01\x01"), NULL);
    s_mp_json_is(LIT("\xc6\xff\xff\xff\xff"), NULL);

    /* Every prefix of the big message is rejected, never read past. */
    for (size_t n = 0; n < sizeof msg - 1; n++) {
        char *copy = malloc(n ? n : 1);
        assert_non_null(copy);
        memcpy(copy, msg, n);
        s_mp_json_is(copy, n, NULL);
        free(copy);
    }

    /* Nesting: MP_MAX_DEPTH levels below the top are fine, deeper is refused. */
    char deep[MP_MAX_DEPTH + 3];
    memset(deep, '\x91', MP_MAX_DEPTH + 2);
    deep[MP_MAX_DEPTH] = '\x90';                        /* depth 0..MP_MAX_DEPTH */
    struct buf b = { 0 };
    assert_int_equal(mp_to_json(deep, MP_MAX_DEPTH + 1, &b), 0);
    buf_free(&b);
    memset(deep, '\x91', MP_MAX_DEPTH + 2);
    deep[MP_MAX_DEPTH + 2] = '\x90';
    s_mp_json_is(deep, MP_MAX_DEPTH + 3, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8_valid),
        cmocka_unit_test(test_utf8_invalid),
        cmocka_unit_test(test_utf8_reference),
        cmocka_unit_test(test_ulid_next),
        cmocka_unit_test(test_ulid_time_round_trip),
        cmocka_unit_test(test_ulid_valid),
        cmocka_unit_test(test_ulid_derive),
        cmocka_unit_test_setup(test_opt_defaults, s_opt_setup),
        cmocka_unit_test_setup(test_opt_env_over_default, s_opt_setup),
        cmocka_unit_test_setup(test_opt_argv_over_env, s_opt_setup),
        cmocka_unit_test_setup(test_opt_bool_forms, s_opt_setup),
        cmocka_unit_test_setup(test_opt_errors, s_opt_setup),
        cmocka_unit_test_setup(test_opt_bad_env, s_opt_setup),
        cmocka_unit_test(test_opt_durations),
        cmocka_unit_test(test_opt_int_suffixes),
        cmocka_unit_test_setup(test_opt_positional, s_opt_setup),
        cmocka_unit_test_setup(test_opt_two_sets_and_help, s_opt_setup),
        cmocka_unit_test(test_json_valid),
        cmocka_unit_test(test_json_errors),
        cmocka_unit_test(test_buf_json_str),
        cmocka_unit_test(test_buf_json_str_reference),
        cmocka_unit_test(test_buf_base64),
        cmocka_unit_test(test_buf_basics),
        cmocka_unit_test(test_mp_to_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
