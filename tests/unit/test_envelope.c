/* test_envelope — unit tests of lib/envelope.c, the one msgpack encoder and
 * decoder of the envelope (DESIGN.md): round trips, unknown keys kept byte
 * for byte, every malformed input refused with the field to blame, env_check,
 * JSON in and out, trace stamps, self-referencing sets and copies.
 *
 * The msgpack here is written by hand, byte by byte, so that each test
 * chooses exactly the encodings the decoder sees. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "buf.h"
#include "envelope.h"
#include "json.h"
#include "mp.h"

/* A string literal and its length, NUL bytes inside included. */
#define LIT(s) (s), (sizeof(s) - 1)

/* ---- msgpack by hand ----------------------------------------------------- */

static void s_raw(struct buf *b, const void *p, size_t n)
{
    assert_int_equal(buf_append(b, p, n), 0);
}

static void s_byte(struct buf *b, unsigned c)
{
    assert_int_equal(buf_putc(b, (char)c), 0);
}

/* Big-endian n-byte integer. */
static void s_be(struct buf *b, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        s_byte(b, (unsigned)(v >> (8 * i)) & 0xff);
    }
}

/* Shortest str header for n bytes, then the bytes. */
static void s_strn(struct buf *b, const char *s, size_t n)
{
    if (n < 32) {
        s_byte(b, 0xa0 | (unsigned)n);
    } else if (n < 256) {
        s_byte(b, 0xd9);
        s_be(b, n, 1);
    } else if (n < 65536) {
        s_byte(b, 0xda);
        s_be(b, n, 2);
    } else {
        s_byte(b, 0xdb);
        s_be(b, n, 4);
    }
    s_raw(b, s, n);
}

static void s_str(struct buf *b, const char *s)
{
    s_strn(b, s, strlen(s));
}

/* Shortest uint encoding. */
static void s_uint(struct buf *b, uint64_t u)
{
    if (u < 128) {
        s_byte(b, (unsigned)u);
    } else if (u < 256) {
        s_byte(b, 0xcc);
        s_be(b, u, 1);
    } else if (u < 65536) {
        s_byte(b, 0xcd);
        s_be(b, u, 2);
    } else if (u <= 0xffffffffu) {
        s_byte(b, 0xce);
        s_be(b, u, 4);
    } else {
        s_byte(b, 0xcf);
        s_be(b, u, 8);
    }
}

static void s_map(struct buf *b, uint32_t n)
{
    if (n < 16) {
        s_byte(b, 0x80 | n);
    } else if (n < 65536) {
        s_byte(b, 0xde);
        s_be(b, n, 2);
    } else {
        s_byte(b, 0xdf);
        s_be(b, n, 4);
    }
}

static void s_arr(struct buf *b, uint32_t n)
{
    if (n < 16) {
        s_byte(b, 0x90 | n);
    } else {
        s_byte(b, 0xdc);
        s_be(b, n, 2);
    }
}

/* ---- the test envelope --------------------------------------------------- */

#define ID "01J9ZQ4X5K3M7N8P9QRSTVWXYZ"
#define TS 1794791647215ULL
#define TEXT "Oi, cad\xC3\xAA meu pedido? \xF0\x9F\x98\x95"

/* Every known key, in the order env_encode writes them. */
static const char *const s_order[ENV_NKEYS] = {
    "v", "id", "src_id", "ts", "channel", "dir", "from", "to", "subject", "text",
    "attachments", "customer", "conversation", "route", "reply_to", "bot", "meta", "trace"
};

/* The value of key in the canonical test envelope, shortest encodings. */
static void s_canon_value(struct buf *b, const char *key)
{
    if (strcmp(key, "v") == 0) {
        s_uint(b, 1);
    } else if (strcmp(key, "id") == 0) {
        s_str(b, ID);
    } else if (strcmp(key, "src_id") == 0) {
        s_str(b, "wamid.HBgN");
    } else if (strcmp(key, "ts") == 0) {
        s_uint(b, TS);
    } else if (strcmp(key, "channel") == 0) {
        s_str(b, "whatsapp");
    } else if (strcmp(key, "dir") == 0) {
        s_str(b, "in");
    } else if (strcmp(key, "from") == 0) {
        s_str(b, "whatsapp:+5511987654321");
    } else if (strcmp(key, "to") == 0) {
        s_str(b, "whatsapp:+551140041234");
    } else if (strcmp(key, "subject") == 0) {
        s_str(b, "Pedido 48213");
    } else if (strcmp(key, "text") == 0) {
        s_str(b, TEXT);
    } else if (strcmp(key, "attachments") == 0) {
        s_arr(b, 1);
        s_map(b, 4);
        s_str(b, "type");
        s_str(b, "image");
        s_str(b, "url");
        s_str(b, "https://cdn.example/a.jpg");
        s_str(b, "name");
        s_str(b, "a.jpg");
        s_str(b, "size");
        s_uint(b, 48213);
    } else if (strcmp(key, "customer") == 0) {
        s_str(b, "cus-01J9");
    } else if (strcmp(key, "conversation") == 0) {
        s_str(b, "conv-01J9");
    } else if (strcmp(key, "route") == 0) {
        s_map(b, 2);
        s_str(b, "target");
        s_str(b, "bot");
        s_str(b, "priority");
        s_uint(b, 2);
    } else if (strcmp(key, "reply_to") == 0) {
        s_str(b, "01J9ZQ4X5K3M7N8P9QRSTVWXY0");
    } else if (strcmp(key, "bot") == 0) {
        s_map(b, 2);
        s_str(b, "article");
        s_str(b, "kb-12");
        s_str(b, "score");
        s_raw(b, LIT("\xcb\x3f\xe8\x00\x00\x00\x00\x00\x00"));     /* 0.75 */
    } else if (strcmp(key, "meta") == 0) {
        s_map(b, 2);
        s_str(b, "wa_id");
        s_str(b, "5511987654321");
        s_str(b, "nested");
        s_map(b, 1);
        s_str(b, "a");
        s_arr(b, 3);
        s_uint(b, 1);
        s_uint(b, 2);
        s_uint(b, 3);
    } else if (strcmp(key, "trace") == 0) {
        s_arr(b, 2);
        s_arr(b, 2);
        s_str(b, "inject");
        s_uint(b, TS);
        s_arr(b, 2);
        s_str(b, "identity");
        s_uint(b, TS + 6);
    } else {
        fail_msg("no canonical value for %s", key);
    }
}

static const char s_canon_json[] =
    "{\"v\":1,\"id\":\"" ID "\",\"src_id\":\"wamid.HBgN\",\"ts\":1794791647215,"
    "\"channel\":\"whatsapp\",\"dir\":\"in\",\"from\":\"whatsapp:+5511987654321\","
    "\"to\":\"whatsapp:+551140041234\",\"subject\":\"Pedido 48213\",\"text\":\"" TEXT "\","
    "\"attachments\":[{\"type\":\"image\",\"url\":\"https://cdn.example/a.jpg\",\"name\":\"a.jpg\","
    "\"size\":48213}],\"customer\":\"cus-01J9\",\"conversation\":\"conv-01J9\","
    "\"route\":{\"target\":\"bot\",\"priority\":2},\"reply_to\":\"01J9ZQ4X5K3M7N8P9QRSTVWXY0\","
    "\"bot\":{\"article\":\"kb-12\",\"score\":0.75},"
    "\"meta\":{\"wa_id\":\"5511987654321\",\"nested\":{\"a\":[1,2,3]}},"
    "\"trace\":[[\"inject\",1794791647215],[\"identity\",1794791647221]]}";

/* A change to the canonical envelope. */
struct s_field {
    const char *key;    /* key name; NULL: val holds a whole key-value pair */
    const char *val;    /* msgpack bytes of the value; NULL: leave the key out */
    size_t len;         /* bytes of val */
};

static const struct s_field *s_change_for(const char *key, const struct s_field *ch, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (ch[i].key != NULL && strcmp(ch[i].key, key) == 0) {
            return &ch[i];
        }
    }
    return NULL;
}

/* Builds the canonical envelope into b with changes: a known key in ch gets
 * ch's value (or is left out); other entries of ch (unknown keys, raw pairs)
 * go in ch's order just before trace, where env_encode puts unknown keys. */
static void s_build(struct buf *b, const struct s_field *ch, size_t nch)
{
    uint32_t count = 0;
    for (int k = 0; k < ENV_NKEYS; k++) {
        const struct s_field *c = s_change_for(s_order[k], ch, nch);
        count += (c == NULL || c->val != NULL) ? 1 : 0;
    }
    for (size_t i = 0; i < nch; i++) {
        if (ch[i].key == NULL || env_key_find(ch[i].key, strlen(ch[i].key)) < 0) {
            count++;
        }
    }
    s_map(b, count);
    for (int k = 0; k < ENV_NKEYS; k++) {
        if (k == ENV_TRACE) {
            for (size_t i = 0; i < nch; i++) {
                if (ch[i].key == NULL) {
                    s_raw(b, ch[i].val, ch[i].len);
                } else if (env_key_find(ch[i].key, strlen(ch[i].key)) < 0) {
                    s_str(b, ch[i].key);
                    s_raw(b, ch[i].val, ch[i].len);
                }
            }
        }
        const struct s_field *c = s_change_for(s_order[k], ch, nch);
        if (c != NULL && c->val == NULL) {
            continue;
        }
        s_str(b, s_order[k]);
        if (c != NULL) {
            s_raw(b, c->val, c->len);
        } else {
            s_canon_value(b, s_order[k]);
        }
    }
}

/* Decodes p[0..n) into e, which must succeed. */
static void s_decode_ok(struct env *e, const void *p, size_t n)
{
    struct env_err err = { "", "" };
    int rc = env_decode(e, p, n, &err);
    if (rc != 0) {
        print_error("decode failed: field=%s reason=%s\n", err.field, err.reason);
    }
    assert_int_equal(rc, 0);
}

/* Decoding p[0..n) must fail and blame field. */
static void s_decode_fails(const void *p, size_t n, const char *field)
{
    struct env *e = env_new();
    assert_non_null(e);
    struct env_err err;
    memset(&err, 0, sizeof err);
    /* An exact-size copy, so reading one byte past the end is caught. */
    void *copy = malloc(n ? n : 1);
    assert_non_null(copy);
    memcpy(copy, p, n);
    int rc = env_decode(e, copy, n, &err);
    if (rc != -1 || strcmp(err.field, field) != 0) {
        print_error("want field=%s, got rc=%d field=%s reason=%s\n", field, rc, err.field, err.reason);
    }
    assert_int_equal(rc, -1);
    assert_string_equal(err.field, field);
    assert_true(err.reason[0] != '\0');
    free(copy);
    env_destroy(&e);
    assert_null(e);
}

/* The canonical envelope with one change must fail and blame field. */
static void s_change_fails(const char *key, const char *val, size_t len, const char *field)
{
    struct buf b = { 0 };
    struct s_field ch = { key, val, len };
    s_build(&b, &ch, 1);
    s_decode_fails(b.data, b.len, field);
    buf_free(&b);
}

/* Encodes e, which must succeed, into a fresh b. */
static void s_encode(const struct env *e, struct buf *b)
{
    buf_reset(b);
    assert_int_equal(env_encode(e, b), 0);
}

/* e must hold the canonical values of every known key. */
static void s_assert_canon(const struct env *e)
{
    assert_true(env_has(e, ENV_V));
    assert_int_equal(e->v, 1);
    assert_true(env_has(e, ENV_TS));
    assert_int_equal(e->ts, TS);
    assert_string_equal(env_get(e, ENV_ID), ID);
    assert_string_equal(env_get(e, ENV_SRC_ID), "wamid.HBgN");
    assert_string_equal(env_get(e, ENV_CHANNEL), "whatsapp");
    assert_string_equal(env_get(e, ENV_DIR), "in");
    assert_string_equal(env_get(e, ENV_FROM), "whatsapp:+5511987654321");
    assert_string_equal(env_get(e, ENV_TO), "whatsapp:+551140041234");
    assert_string_equal(env_get(e, ENV_SUBJECT), "Pedido 48213");
    assert_string_equal(env_get(e, ENV_TEXT), TEXT);
    assert_string_equal(env_get(e, ENV_CUSTOMER), "cus-01J9");
    assert_string_equal(env_get(e, ENV_CONVERSATION), "conv-01J9");
    assert_string_equal(env_get(e, ENV_REPLY_TO), "01J9ZQ4X5K3M7N8P9QRSTVWXY0");
    static const enum env_key raw[] = { ENV_ATTACHMENTS, ENV_ROUTE, ENV_BOT, ENV_META, ENV_TRACE };
    for (size_t i = 0; i < sizeof raw / sizeof raw[0]; i++) {
        struct buf want = { 0 };
        s_canon_value(&want, env_key_name(raw[i]));
        size_t n = 0;
        const void *p = env_raw(e, raw[i], &n);
        assert_non_null(p);
        assert_int_equal(n, want.len);
        assert_memory_equal(p, want.data, n);
        buf_free(&want);
    }
}

/* ---- round trips --------------------------------------------------------- */

static void test_round_trip_canonical(void **state)
{
    (void)state;
    struct buf in = { 0 }, out = { 0 }, again = { 0 }, json = { 0 };
    s_build(&in, NULL, 0);
    struct env *e = env_new();
    assert_non_null(e);
    s_decode_ok(e, in.data, in.len);
    s_assert_canon(e);
    assert_int_equal(e->n_extra, 0);
    struct env_err err;
    assert_int_equal(env_check(e, &err), 0);
    /* Keys in canonical order, shortest encodings: the very same bytes. */
    s_encode(e, &out);
    assert_int_equal(out.len, in.len);
    assert_memory_equal(out.data, in.data, in.len);
    /* And again from the output. */
    s_decode_ok(e, out.data, out.len);
    s_assert_canon(e);
    s_encode(e, &again);
    assert_int_equal(again.len, out.len);
    assert_memory_equal(again.data, out.data, out.len);
    /* JSON view. */
    assert_int_equal(env_to_json(e, &json), 0);
    assert_string_equal(json.data, s_canon_json);
    env_destroy(&e);
    buf_free(&in);
    buf_free(&out);
    buf_free(&again);
    buf_free(&json);
}

static void test_round_trip_normalises(void **state)
{
    (void)state;
    /* Keys backwards, scalars in longer encodings than needed. */
    struct buf in = { 0 }, canon = { 0 }, out = { 0 }, again = { 0 };
    s_map(&in, ENV_NKEYS);
    for (int k = ENV_NKEYS - 1; k >= 0; k--) {
        const char *key = s_order[k];
        s_byte(&in, 0xd9);                      /* str8 key */
        s_be(&in, strlen(key), 1);
        s_raw(&in, key, strlen(key));
        if (k == ENV_V) {
            s_raw(&in, LIT("\xcf\x00\x00\x00\x00\x00\x00\x00\x01"));   /* uint64 1 */
        } else if (k == ENV_TS) {
            s_byte(&in, 0xd3);                  /* int64, non-negative */
            s_be(&in, TS, 8);
        } else if (k == ENV_TEXT) {
            s_byte(&in, 0xdb);                  /* str32 */
            s_be(&in, strlen(TEXT), 4);
            s_raw(&in, TEXT, strlen(TEXT));
        } else if (k == ENV_CHANNEL) {
            s_raw(&in, LIT("\xda\x00\x08whatsapp"));                  /* str16 */
        } else {
            s_canon_value(&in, key);
        }
    }
    s_build(&canon, NULL, 0);
    struct env *e = env_new();
    s_decode_ok(e, in.data, in.len);
    s_assert_canon(e);
    s_encode(e, &out);
    /* Decode -> encode writes canonical order and shortest encodings. */
    assert_int_equal(out.len, canon.len);
    assert_memory_equal(out.data, canon.data, canon.len);
    s_decode_ok(e, out.data, out.len);
    s_assert_canon(e);
    s_encode(e, &again);
    assert_int_equal(again.len, out.len);
    assert_memory_equal(again.data, out.data, out.len);
    env_destroy(&e);
    buf_free(&in);
    buf_free(&canon);
    buf_free(&out);
    buf_free(&again);
}

static void test_minimal_envelope(void **state)
{
    (void)state;
    /* Only what env_check wants of an event. */
    struct buf in = { 0 }, out = { 0 };
    s_map(&in, 5);
    s_str(&in, "v");
    s_uint(&in, 1);
    s_str(&in, "id");
    s_str(&in, ID);
    s_str(&in, "ts");
    s_uint(&in, 0);
    s_str(&in, "channel");
    s_str(&in, "api");
    s_str(&in, "dir");
    s_str(&in, "event");
    struct env *e = env_new();
    s_decode_ok(e, in.data, in.len);
    assert_int_equal(env_check(e, NULL), 0);
    assert_false(env_has(e, ENV_TEXT));
    assert_null(env_get(e, ENV_TEXT));
    size_t n = 99;
    assert_null(env_raw(e, ENV_META, &n));
    assert_int_equal(n, 0);
    s_encode(e, &out);
    assert_int_equal(out.len, in.len);
    assert_memory_equal(out.data, in.data, in.len);
    /* An empty map decodes (env_check is what refuses it). */
    s_decode_ok(e, "\x80", 1);
    assert_int_equal(e->present, 0);
    struct env_err err;
    assert_int_equal(env_check(e, &err), -1);
    assert_string_equal(err.field, "v");
    s_encode(e, &out);
    assert_int_equal(out.len, 1);
    assert_memory_equal(out.data, "\x80", 1);
    env_destroy(&e);
    buf_free(&in);
    buf_free(&out);
}

static void test_encode_numbers_only(void **state)
{
    (void)state;
    /* A fresh envelope with no strings: nothing stored yet. */
    struct env *e = env_new();
    env_set_uint(e, ENV_V, 1);
    env_set_uint(e, ENV_TS, TS);
    struct buf out = { 0 }, want = { 0 };
    s_encode(e, &out);
    s_map(&want, 2);
    s_str(&want, "v");
    s_uint(&want, 1);
    s_str(&want, "ts");
    s_uint(&want, TS);
    assert_int_equal(out.len, want.len);
    assert_memory_equal(out.data, want.data, want.len);
    env_destroy(&e);
    buf_free(&out);
    buf_free(&want);
}

/* ---- unknown keys -------------------------------------------------------- */

/* Unknown key-value pairs in encodings env_encode would never choose. */
static const struct s_field s_unknowns[] = {
    { NULL, LIT("\xa5x_u16\xcd\x00\x05") },                     /* uint16 5 */
    { NULL, LIT("\xa6x_str8\xd9\x03" "abc") },                  /* str8 "abc" */
    { NULL, LIT("\xa5x_f32\xca\x3f\xc0\x00\x00") },             /* float32 1.5 */
    { NULL, LIT("\xa8x_nested\x82\xa1" "a\x92\x01\xc0\xa1" "b\x81\xa1" "c\xdc\x00\x01\xc3") },
    { NULL, LIT("\xa5x_bin\xc4\x03\x00\xff\x10") },             /* bin8 */
    { NULL, LIT("\xa5x_ext\xc7\x02\x05\xaa\xbb") },             /* ext8 of 2 bytes */
    { NULL, LIT("\xa6x_fext\xd6\x7f\x01\x02\x03\x04") },        /* fixext4 */
    { NULL, LIT("\xd9\x05x_key\x01") },                         /* str8-encoded key */
    { NULL, LIT("\xa5x_neg\xd1\xff\xfe") },                     /* int16 -2 */
    { NULL, LIT("\xa5x_nil\xc0") },
    { NULL, LIT("\xa7x_map16\xde\x00\x01\xa1k\xa1v") },         /* map16 of 1 */
    { NULL, LIT("\xa5x_i64\xd3\x00\x00\x00\x00\x00\x00\x00\x07") },  /* int64 7 */
    { NULL, LIT("\xa5x_f64\xcb\x40\x09\x21\xfb\x54\x44\x2d\x18") },  /* pi */
    { NULL, LIT("\xa6x_utf8\xa5\xC3\xA7\xC3\xA3o") },
};
#define N_UNKNOWNS (sizeof s_unknowns / sizeof s_unknowns[0])

static void test_unknown_keys_byte_for_byte(void **state)
{
    (void)state;
    struct buf in = { 0 }, out = { 0 }, again = { 0 };
    s_build(&in, s_unknowns, N_UNKNOWNS);
    struct env *e = env_new();
    s_decode_ok(e, in.data, in.len);
    s_assert_canon(e);
    assert_int_equal(e->n_extra, N_UNKNOWNS);
    struct env_err err;
    assert_int_equal(env_check(e, &err), 0);
    /* Input had them before trace, as env_encode writes them: same bytes. */
    s_encode(e, &out);
    assert_int_equal(out.len, in.len);
    assert_memory_equal(out.data, in.data, in.len);
    for (size_t i = 0; i < N_UNKNOWNS; i++) {
        assert_non_null(memmem(out.data, out.len, s_unknowns[i].val, s_unknowns[i].len));
    }
    /* Stable through another round. */
    s_decode_ok(e, out.data, out.len);
    assert_int_equal(e->n_extra, N_UNKNOWNS);
    s_encode(e, &again);
    assert_int_equal(again.len, out.len);
    assert_memory_equal(again.data, out.data, out.len);
    env_destroy(&e);
    buf_free(&in);
    buf_free(&out);
    buf_free(&again);
}

static void test_unknown_keys_anywhere(void **state)
{
    (void)state;
    /* Unknown keys first, then the known ones, then more unknown ones after
     * trace: the output has each pair intact, in its order, before trace. */
    struct buf in = { 0 }, out = { 0 }, trace = { 0 };
    s_map(&in, ENV_NKEYS + N_UNKNOWNS);
    for (size_t i = 0; i < N_UNKNOWNS / 2; i++) {
        s_raw(&in, s_unknowns[i].val, s_unknowns[i].len);
    }
    for (int k = 0; k < ENV_NKEYS; k++) {
        s_str(&in, s_order[k]);
        s_canon_value(&in, s_order[k]);
    }
    for (size_t i = N_UNKNOWNS / 2; i < N_UNKNOWNS; i++) {
        s_raw(&in, s_unknowns[i].val, s_unknowns[i].len);
    }
    struct env *e = env_new();
    s_decode_ok(e, in.data, in.len);
    s_assert_canon(e);
    s_encode(e, &out);
    assert_int_equal(out.len, in.len);
    const char *prev = out.data;
    for (size_t i = 0; i < N_UNKNOWNS; i++) {
        const char *at = memmem(out.data, out.len, s_unknowns[i].val, s_unknowns[i].len);
        assert_non_null(at);
        assert_true(at >= prev);        /* their order is kept */
        prev = at;
    }
    /* trace is the last key. */
    s_str(&trace, "trace");
    s_canon_value(&trace, "trace");
    assert_true(out.len > trace.len);
    assert_memory_equal(out.data + out.len - trace.len, trace.data, trace.len);
    /* Same as the canonical build with the unknowns before trace. */
    struct buf canon = { 0 };
    s_build(&canon, s_unknowns, N_UNKNOWNS);
    assert_int_equal(canon.len, out.len);
    assert_memory_equal(canon.data, out.data, out.len);
    env_destroy(&e);
    buf_free(&in);
    buf_free(&out);
    buf_free(&trace);
    buf_free(&canon);
}

static void test_unknown_keys_json(void **state)
{
    (void)state;
    struct buf in = { 0 }, json = { 0 };
    s_build(&in, s_unknowns, N_UNKNOWNS);
    struct env *e = env_new();
    s_decode_ok(e, in.data, in.len);
    assert_int_equal(env_to_json(e, &json), 0);
    static const char *const parts[] = {
        "\"x_u16\":5", "\"x_str8\":\"abc\"", "\"x_f32\":1.5",
        "\"x_nested\":{\"a\":[1,null],\"b\":{\"c\":[true]}}", "\"x_bin\":\"AP8Q\"",
        "\"x_ext\":{\"ext\":5,\"data\":\"qrs=\"}", "\"x_key\":1", "\"x_neg\":-2", "\"x_nil\":null",
        "\"x_map16\":{\"k\":\"v\"}", "\"x_i64\":7", "\"x_f64\":3.1415926535897931",
        "\"x_utf8\":\"\xC3\xA7\xC3\xA3o\"", "\"x_utf8\":\"\xC3\xA7\xC3\xA3o\",\"trace\":",
    };
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        if (strstr(json.data, parts[i]) == NULL) {
            print_error("'%s' not in %s\n", parts[i], json.data);
        }
        assert_non_null(strstr(json.data, parts[i]));
    }
    /* The JSON is a document json_parse reads back. */
    char err[200];
    cJSON *j = json_parse(json.data, json.len, err, sizeof err);
    assert_non_null(j);
    cJSON_Delete(j);
    env_destroy(&e);
    buf_free(&in);
    buf_free(&json);
}

static void test_unknown_odd_map_keys(void **state)
{
    (void)state;
    /* Unknown values are carried untouched, whatever their map keys are;
     * the JSON view still shows them (omni-tap must not choke on one). */
    static const struct s_field odd[] = {
        { "x_keys", LIT("\x85\x01\xa1" "a\xc0\xa1" "b\x92\x01\x02\xa1" "c\x81\xa1k\x01\xa1" "d"
                        "\xd4\x05\xff\xa1" "e") },
    };
    struct buf in = { 0 }, out = { 0 }, json = { 0 };
    s_build(&in, odd, 1);
    struct env *e = env_new();
    s_decode_ok(e, in.data, in.len);
    s_encode(e, &out);
    assert_int_equal(out.len, in.len);
    assert_memory_equal(out.data, in.data, in.len);
    assert_int_equal(env_to_json(e, &json), 0);
    const char *want = "\"x_keys\":{\"1\":\"a\",\"null\":\"b\",\"kgEC\":\"c\",\"gaFrAQ==\":\"d\","
                       "\"1AX/\":\"e\"}";
    if (strstr(json.data, want) == NULL) {
        print_error("'%s' not in %s\n", want, json.data);
    }
    assert_non_null(strstr(json.data, want));
    env_destroy(&e);
    buf_free(&in);
    buf_free(&out);
    buf_free(&json);
}

/* ---- malformed envelopes ------------------------------------------------- */

static void test_wrong_types(void **state)
{
    (void)state;
    static const struct {
        const char *key;    /* key given a wrong value */
        const char *val;    /* msgpack bytes */
        size_t len;         /* bytes */
    } bad[] = {
        /* uints */
        { "v", LIT("\xa1" "1") }, { "v", LIT("\xff") }, { "v", LIT("\xd0\x80") },
        { "v", LIT("\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00") }, { "v", LIT("\xc0") },
        { "v", LIT("\xc3") }, { "v", LIT("\x80") },
        { "ts", LIT("\xad" "1794791647215") }, { "ts", LIT("\xd3\xff\xff\xff\xff\xff\xff\xff\xff") },
        { "ts", LIT("\xca\x3f\xc0\x00\x00") }, { "ts", LIT("\x90") }, { "ts", LIT("\xc4\x01\x01") },
        /* strings */
        { "id", LIT("\x05") }, { "id", LIT("\xc4\x01" "a") }, { "src_id", LIT("\x90") },
        { "channel", LIT("\xc0") }, { "dir", LIT("\xc3") }, { "from", LIT("\x80") },
        { "to", LIT("\xcd\x01\x00") }, { "subject", LIT("\xd4\x01\x00") }, { "text", LIT("\x05") },
        { "text", LIT("\xc4\x02hi") }, { "text", LIT("\x91\xa2hi") }, { "customer", LIT("\xff") },
        { "conversation", LIT("\xca\x00\x00\x00\x00") }, { "reply_to", LIT("\xc2") },
        /* maps */
        { "route", LIT("\x90") }, { "route", LIT("\x91\x80") }, { "route", LIT("\xa3" "bot") },
        { "route", LIT("\x01") }, { "bot", LIT("\xc0") }, { "bot", LIT("\x92\x01\x02") },
        { "meta", LIT("\xa0") }, { "meta", LIT("\xc4\x00") },
        /* keys of known maps must be strings */
        { "route", LIT("\x81\x01\x01") }, { "bot", LIT("\x81\x80\x01") },
        { "meta", LIT("\x81\xc4\x01k\x01") }, { "meta", LIT("\x82\xa1k\x01\xc0\x01") },
        { "meta", LIT("\x81\xa2k\xff\x01") },                       /* key not UTF-8 */
        /* attachments: array of maps */
        { "attachments", LIT("\x80") }, { "attachments", LIT("\xa1" "a") },
        { "attachments", LIT("\x91\x01") }, { "attachments", LIT("\x92\x80\xa1x") },
        { "attachments", LIT("\x91\x90") }, { "attachments", LIT("\x92\x81\xa1t\xa1i\xc0") },
        /* trace: array of [str, uint] */
        { "trace", LIT("\x80") }, { "trace", LIT("\x05") }, { "trace", LIT("\x91\x01") },
        { "trace", LIT("\x91\x91\xa1" "a") },                       /* ["a"] */
        { "trace", LIT("\x91\x92\x01\x02") },                       /* [1, 2] */
        { "trace", LIT("\x91\x92\xa1" "a\xff") },                   /* ["a", -1] */
        { "trace", LIT("\x91\x93\xa1" "a\x01\x02") },               /* ["a", 1, 2] */
        { "trace", LIT("\x91\x92\xa1" "a\xa1" "1") },               /* ["a", "1"] */
        { "trace", LIT("\x91\x92\xa1" "a\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00") },  /* ["a", 1.5] */
        { "trace", LIT("\x91\x92\xc0\x01") },                       /* [nil, 1] */
        { "trace", LIT("\x91\x81\xa1" "a\x01") },                   /* {"a": 1} */
        { "trace", LIT("\x92\x92\xa1" "a\x01\x91\xa1" "b") },       /* second one bad */
        { "trace", LIT("\x91\x92\xa1\xff\x01") },                   /* stage not UTF-8 */
        { "trace", LIT("\x91\x92\xc4\x01" "a\x01") },               /* stage is bin */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s_change_fails(bad[i].key, bad[i].val, bad[i].len, bad[i].key);
    }
}

static void test_truncated(void **state)
{
    (void)state;
    struct buf in = { 0 };
    s_build(&in, s_unknowns, N_UNKNOWNS);
    /* Every proper prefix: refused, never read past. */
    for (size_t n = 0; n < in.len; n++) {
        struct env *e = env_new();
        struct env_err err;
        memset(&err, 0, sizeof err);
        void *copy = malloc(n ? n : 1);
        assert_non_null(copy);
        memcpy(copy, in.data, n);
        if (env_decode(e, copy, n, &err) != -1) {
            print_error("prefix of %zu bytes (of %zu) was accepted\n", n, in.len);
            fail();
        }
        assert_true(err.field[0] != '\0');
        assert_true(err.reason[0] != '\0');
        free(copy);
        env_destroy(&e);
    }
    /* A reused envelope is still fine after all that. */
    struct env *e = env_new();
    for (size_t n = 0; n < in.len; n += 7) {
        assert_int_equal(env_decode(e, in.data, n, NULL), -1);
    }
    s_decode_ok(e, in.data, in.len);
    s_assert_canon(e);
    env_destroy(&e);
    buf_free(&in);
}

static void test_corrupted_bytes(void **state)
{
    (void)state;
    /* Each byte replaced by a few troublesome values: whatever decodes must
     * re-encode stably, and nothing may crash. */
    static const unsigned subst[] = { 0x00, 0x7f, 0x80, 0x9f, 0xc1, 0xd9, 0xdb, 0xdf, 0xff };
    struct buf in = { 0 }, out = { 0 }, again = { 0 };
    s_build(&in, s_unknowns, N_UNKNOWNS);
    struct env *e = env_new();
    int decoded = 0;
    for (size_t i = 0; i < in.len; i++) {
        for (size_t s = 0; s < sizeof subst / sizeof subst[0] + 1; s++) {
            unsigned char *copy = malloc(in.len);
            assert_non_null(copy);
            memcpy(copy, in.data, in.len);
            copy[i] = s < sizeof subst / sizeof subst[0] ? (unsigned char)subst[s] : copy[i] ^ 1;
            struct env_err err;
            if (env_decode(e, copy, in.len, &err) == 0) {
                decoded++;
                (void)env_check(e, &err);
                s_encode(e, &out);
                s_decode_ok(e, out.data, out.len);
                s_encode(e, &again);
                assert_int_equal(again.len, out.len);
                assert_memory_equal(again.data, out.data, out.len);
            } else {
                assert_true(err.field[0] != '\0');
            }
            free(copy);
        }
    }
    assert_true(decoded > 0);   /* some changes are harmless (text bytes) */
    env_destroy(&e);
    buf_free(&in);
    buf_free(&out);
    buf_free(&again);
}

/* A string of n copies of c, NUL-terminated; the caller frees it. */
static char *s_filled(size_t n, char c)
{
    char *s = malloc(n + 1);
    assert_non_null(s);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

/* The canonical envelope with key set to the string s must decode (ok) or
 * fail blaming key. */
static void s_string_case(const char *key, const char *s, size_t n, bool ok)
{
    struct buf val = { 0 }, in = { 0 };
    s_strn(&val, s, n);
    struct s_field ch = { key, val.data, val.len };
    s_build(&in, &ch, 1);
    if (ok) {
        struct env *e = env_new();
        s_decode_ok(e, in.data, in.len);
        int k = env_key_find(key, strlen(key));
        assert_true(k >= 0);
        assert_int_equal(e->val[k].len, n);
        assert_memory_equal(env_get(e, (enum env_key)k), s, n);
        env_destroy(&e);
    } else {
        s_decode_fails(in.data, in.len, key);
    }
    buf_free(&val);
    buf_free(&in);
}

static void test_oversized(void **state)
{
    (void)state;
    char *s = s_filled(ENV_MAX_TEXT + 1, 'a');
    s_string_case("text", s, ENV_MAX_TEXT, true);
    s_string_case("text", s, ENV_MAX_TEXT + 1, false);
    s_string_case("subject", s, ENV_MAX_SUBJECT, true);
    s_string_case("subject", s, ENV_MAX_SUBJECT + 1, false);
    memcpy(s, "tel:", 4);
    s_string_case("from", s, ENV_MAX_SHORT, true);
    s_string_case("from", s, ENV_MAX_SHORT + 1, false);
    s_string_case("to", s, ENV_MAX_SHORT + 1, false);
    s_string_case("customer", s, ENV_MAX_SHORT + 1, false);
    s_string_case("src_id", s, ENV_MAX_SHORT + 1, false);

    /* Keys: ENV_MAX_KEY bytes at most. */
    struct buf in = { 0 }, pair = { 0 };
    s_strn(&pair, s + 4, ENV_MAX_KEY);
    s_byte(&pair, 0x01);
    struct s_field ch = { NULL, pair.data, pair.len };
    s_build(&in, &ch, 1);
    struct env *e = env_new();
    s_decode_ok(e, in.data, in.len);
    assert_int_equal(e->n_extra, 1);
    buf_reset(&in);
    buf_reset(&pair);
    s_strn(&pair, s + 4, ENV_MAX_KEY + 1);
    s_byte(&pair, 0x01);
    ch.val = pair.data;
    ch.len = pair.len;
    s_build(&in, &ch, 1);
    s_decode_fails(in.data, in.len, "envelope");

    /* The whole message: ENV_MAX_BYTES at most. */
    buf_reset(&in);
    buf_reset(&pair);
    s_str(&pair, "x_big");
    s_byte(&pair, 0xc6);
    s_be(&pair, ENV_MAX_BYTES, 4);
    assert_int_equal(buf_reserve(&pair, ENV_MAX_BYTES), 0);
    memset(pair.data + pair.len, 0, ENV_MAX_BYTES);
    pair.len += ENV_MAX_BYTES;
    ch.val = pair.data;
    ch.len = pair.len;
    s_build(&in, &ch, 1);
    assert_true(in.len > ENV_MAX_BYTES);
    s_decode_fails(in.data, in.len, "envelope");

    /* env_set checks sizes as decode does, and leaves the value alone. */
    s_decode_ok(e, LIT("\x81\xa4text\xa2hi"));
    struct env_err err;
    assert_int_equal(env_setn(e, ENV_TEXT, s, ENV_MAX_TEXT + 1, &err), -1);
    assert_string_equal(err.field, "text");
    assert_string_equal(env_get(e, ENV_TEXT), "hi");
    assert_int_equal(env_setn(e, ENV_SUBJECT, s, ENV_MAX_SUBJECT + 1, &err), -1);
    assert_string_equal(err.field, "subject");
    assert_false(env_has(e, ENV_SUBJECT));
    assert_int_equal(env_setn(e, ENV_FROM, s, ENV_MAX_SHORT + 1, NULL), -1);
    assert_int_equal(env_setn(e, ENV_FROM, s, ENV_MAX_SHORT, NULL), 0);
    env_destroy(&e);
    buf_free(&in);
    buf_free(&pair);
    free(s);
}

static void test_invalid_utf8(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "ok\xC0\xAF!",          /* overlong 2-byte */
        "ok\xE0\x80\xAF!",      /* overlong 3-byte */
        "ok\xF0\x80\x80\xAF!",  /* overlong 4-byte */
        "ok\xED\xA0\x80!",      /* surrogate */
        "ok\xED\xBF\xBF",       /* surrogate at the end */
        "\x80ok",               /* lone continuation */
        "ok\xBF",
        "ok\xE2\x82",           /* truncated */
        "ok\xF0\x9F\x98",
        "ok\xF4\x90\x80\x80",   /* above U+10FFFF */
        "ok\xFF",
    };
    static const char *const keys[] = { "text", "from", "id", "channel", "subject", "reply_to" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
            s_string_case(keys[k], bad[i], strlen(bad[i]), false);
        }
        /* In a key: unknown keys too must be UTF-8. */
        struct buf pair = { 0 }, in = { 0 };
        s_str(&pair, bad[i]);
        s_byte(&pair, 0x01);
        struct s_field ch = { NULL, pair.data, pair.len };
        s_build(&in, &ch, 1);
        s_decode_fails(in.data, in.len, "envelope");
        buf_free(&pair);
        buf_free(&in);
    }
    /* Valid multi-byte text at the limits of the ranges is fine. */
    s_string_case("text", LIT("\xC2\x80\xDF\xBF\xE0\xA0\x80\xED\x9F\xBF\xEE\x80\x80\xF4\x8F\xBF\xBF"),
                  true);
    /* Keys of the known maps, stages of trace (covered in wrong types) and
     * env_set. */
    struct env *e = env_new();
    s_decode_ok(e, LIT("\x81\xa4text\xa2hi"));
    struct env_err err;
    assert_int_equal(env_set(e, ENV_TEXT, "bad \xC3(", &err), -1);
    assert_string_equal(err.field, "text");
    assert_string_equal(env_get(e, ENV_TEXT), "hi");
    env_destroy(&e);
}

static void test_nul_in_text(void **state)
{
    (void)state;
    s_string_case("text", LIT("before\0after"), false);
    s_string_case("text", LIT("\0"), false);
    s_string_case("from", LIT("tel:+1\0"), false);
    struct buf val = { 0 }, in = { 0 };
    s_strn(&val, LIT("a\0b"));
    struct s_field ch = { "text", val.data, val.len };
    s_build(&in, &ch, 1);
    struct env *e = env_new();
    struct env_err err;
    assert_int_equal(env_decode(e, in.data, in.len, &err), -1);
    assert_string_equal(err.field, "text");
    assert_non_null(strstr(err.reason, "NUL"));
    /* env_setn refuses it as well. */
    s_decode_ok(e, LIT("\x80"));
    assert_int_equal(env_setn(e, ENV_TEXT, "a\0b", 3, &err), -1);
    assert_string_equal(err.field, "text");
    assert_false(env_has(e, ENV_TEXT));
    env_destroy(&e);
    buf_free(&val);
    buf_free(&in);
}

static void test_duplicate_keys(void **state)
{
    (void)state;
    static const struct {
        const char *pair;   /* a pair that repeats one already there */
        size_t len;         /* bytes */
        const char *field;  /* blamed */
    } dup[] = {
        { LIT("\xa4text\xa2hi"), "text" },
        { LIT("\xa1v\x01"), "v" },
        { LIT("\xa2ts\x05"), "ts" },
        { LIT("\xa5route\x80"), "route" },
        { LIT("\xa5trace\x90"), "trace" },
        { LIT("\xd9\x04text\xa2hi"), "text" },          /* same key, str8 */
        { LIT("\xa5x_u16\x01"), "envelope" },           /* unknown, again */
        { LIT("\xd9\x05x_u16\x01"), "envelope" },       /* unknown, again, str8 */
    };
    for (size_t i = 0; i < sizeof dup / sizeof dup[0]; i++) {
        struct s_field ch[] = { s_unknowns[0], { NULL, dup[i].pair, dup[i].len } };
        struct buf in = { 0 };
        s_build(&in, ch, 2);
        s_decode_fails(in.data, in.len, dup[i].field);
        struct env *e = env_new();
        struct env_err err;
        assert_int_equal(env_decode(e, in.data, in.len, &err), -1);
        assert_non_null(strstr(err.reason, "duplicate"));
        env_destroy(&e);
        buf_free(&in);
    }
}

static void test_bad_structure(void **state)
{
    (void)state;
    static const struct {
        const char *p;      /* message */
        size_t n;           /* bytes */
    } bad[] = {
        { LIT("") },
        { LIT("\x90") },                            /* array */
        { LIT("\x91\x81\xa1v\x01") },               /* array holding a map */
        { LIT("\xa1v") },                           /* str */
        { LIT("\x01") },                            /* int */
        { LIT("\xc0") },                            /* nil */
        { LIT("\xc1") },                            /* never used */
        { LIT("\x81\x01\x01") },                    /* int key */
        { LIT("\x81\xc0\x01") },                    /* nil key */
        { LIT("\x81\xc4\x01v\x01") },               /* bin key "v" */
        { LIT("\x81\x90\x01") },                    /* array key */
        { LIT("\x81\xc1\x01") },                    /* 0xc1 key */
        { LIT("\x81\xa1x\xc1") },                   /* 0xc1 unknown value */
        { LIT("\x81\xa1v\x01\xc0") },               /* trailing byte */
        { LIT("\x81\xa1v\x01\x81\xa1v\x01") },      /* two maps */
        { LIT("\x80\x80") },
        { LIT("\xdf\xff\xff\xff\xff\xa1v\x01") },   /* count past the end */
        { LIT("\x81\xa1x\xdd\xff\xff\xff\xff\x01") },
        { LIT("\x81\xa1x\xdb\xff\xff\xff\xff" "abc") },
        { LIT("\x81\xa1x\xc9\xff\xff\xff\xff\x01" "ab") },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s_decode_fails(bad[i].p, bad[i].n, "envelope");
    }
    /* A bad byte where a known key's value goes blames that key. */
    s_decode_fails(LIT("\x81\xa1v\xc1"), "v");
    s_decode_fails(LIT("\x81\xa4text\xc1"), "text");
    s_decode_fails(LIT("\x81\xa4meta\xc1"), "meta");
}

/* n nested one-element arrays around nil (n = 0: just nil). */
static void s_nested(struct buf *b, int n, bool maps)
{
    for (int i = 0; i < n; i++) {
        if (maps) {
            s_raw(b, LIT("\x81\xa1k"));
        } else {
            s_byte(b, 0x91);
        }
    }
    s_byte(b, 0xc0);
}

static void test_depth(void **state)
{
    (void)state;
    struct env *e = env_new();
    struct buf val = { 0 }, in = { 0 }, out = { 0 }, json = { 0 };
    for (int maps = 0; maps < 2; maps++) {
        /* Deep, but within MP_MAX_DEPTH: kept byte for byte. */
        buf_reset(&val);
        buf_reset(&in);
        s_nested(&val, MP_MAX_DEPTH / 2, maps);
        struct s_field ch = { "x_deep", val.data, val.len };
        s_build(&in, &ch, 1);
        s_decode_ok(e, in.data, in.len);
        s_encode(e, &out);
        assert_int_equal(out.len, in.len);
        assert_memory_equal(out.data, in.data, in.len);
        /* Deeper than MP_MAX_DEPTH: refused, unknown key or known map. */
        buf_reset(&val);
        s_nested(&val, MP_MAX_DEPTH + 10, maps);
        buf_reset(&in);
        ch.val = val.data;
        ch.len = val.len;
        s_build(&in, &ch, 1);
        s_decode_fails(in.data, in.len, "envelope");
        struct buf meta = { 0 };
        s_raw(&meta, LIT("\x81\xa1k"));
        s_raw(&meta, val.data, val.len);
        struct s_field m = { "meta", meta.data, meta.len };
        buf_reset(&in);
        s_build(&in, &m, 1);
        s_decode_fails(in.data, in.len, "meta");
        buf_reset(&meta);
        s_raw(&meta, LIT("\x91\x81\xa1k"));
        s_raw(&meta, val.data, val.len);
        m.key = "attachments";
        m.val = meta.data;
        m.len = meta.len;
        buf_reset(&in);
        s_build(&in, &m, 1);
        s_decode_fails(in.data, in.len, "attachments");
        buf_free(&meta);
    }
    /* Whatever depth decode accepts, the JSON view can show: an envelope
     * that passes must not be one omni-tap cannot print. */
    for (int d = MP_MAX_DEPTH - 3; d <= MP_MAX_DEPTH + 3; d++) {
        static const char *const where[] = { "x_deep", "meta", "route", "attachments" };
        for (size_t w = 0; w < sizeof where / sizeof where[0]; w++) {
            buf_reset(&val);
            if (w == 1 || w == 2) {
                s_raw(&val, LIT("\x81\xa1k"));
            } else if (w == 3) {
                s_raw(&val, LIT("\x91\x81\xa1k"));
            }
            s_nested(&val, d, false);
            struct s_field ch = { where[w], val.data, val.len };
            buf_reset(&in);
            s_build(&in, &ch, 1);
            if (env_decode(e, in.data, in.len, NULL) != 0) {
                continue;
            }
            buf_reset(&json);
            if (env_to_json(e, &json) != 0) {
                print_error("%s nested %d deep decodes but has no JSON\n", where[w], d);
                fail();
            }
        }
    }
    env_destroy(&e);
    buf_free(&val);
    buf_free(&in);
    buf_free(&out);
    buf_free(&json);
}

/* ---- env_check ----------------------------------------------------------- */

/* The canonical envelope with changes must decode, then fail env_check
 * blaming field (NULL: pass env_check). */
static void s_check_case(const struct s_field *ch, size_t nch, const char *field)
{
    struct buf in = { 0 };
    s_build(&in, ch, nch);
    struct env *e = env_new();
    s_decode_ok(e, in.data, in.len);
    struct env_err err;
    memset(&err, 0, sizeof err);
    int rc = env_check(e, &err);
    if (field == NULL) {
        if (rc != 0) {
            print_error("check failed: field=%s reason=%s\n", err.field, err.reason);
        }
        assert_int_equal(rc, 0);
    } else {
        if (rc != -1 || strcmp(err.field, field) != 0) {
            print_error("want field=%s, got rc=%d field=%s reason=%s\n", field, rc, err.field,
                        err.reason);
        }
        assert_int_equal(rc, -1);
        assert_string_equal(err.field, field);
        assert_true(err.reason[0] != '\0');
    }
    env_destroy(&e);
    buf_free(&in);
}

#define OMIT(k) { k, NULL, 0 }
#define SET(k, lit) { k, LIT(lit) }

static void test_check_required(void **state)
{
    (void)state;
    s_check_case(NULL, 0, NULL);
    /* Missing. */
    static const char *const required[] = { "v", "id", "ts", "channel", "dir", "from" };
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        struct s_field ch = OMIT(required[i]);
        s_check_case(&ch, 1, required[i]);
    }
    /* Not needed on an inbound message: to, and optional keys. */
    static const char *const optional[] = {
        "to", "src_id", "subject", "customer", "conversation", "route", "reply_to", "bot",
        "meta", "trace", "attachments"
    };
    for (size_t i = 0; i < sizeof optional / sizeof optional[0]; i++) {
        struct s_field ch = OMIT(optional[i]);
        s_check_case(&ch, 1, NULL);
    }
    /* Outbound needs to, not from. */
    struct s_field out_no_to[] = { SET("dir", "\xa3out"), OMIT("to") };
    s_check_case(out_no_to, 2, "to");
    struct s_field out_no_from[] = { SET("dir", "\xa3out"), OMIT("from") };
    s_check_case(out_no_from, 2, NULL);
    /* A message needs text or attachments; either will do. */
    struct s_field no_body[] = { OMIT("text"), OMIT("attachments") };
    s_check_case(no_body, 2, "text");
    struct s_field out_no_body[] = { SET("dir", "\xa3out"), OMIT("text"), OMIT("attachments") };
    s_check_case(out_no_body, 3, "text");
    struct s_field only_att[] = { OMIT("text") };
    s_check_case(only_att, 1, NULL);
    struct s_field empty_att[] = { OMIT("text"), SET("attachments", "\x90") };
    s_check_case(empty_att, 2, NULL);
    /* An event needs neither body nor handles. */
    struct s_field event[] = { SET("dir", "\xa5" "event"), OMIT("text"), OMIT("attachments"),
                               OMIT("from"), OMIT("to") };
    s_check_case(event, 5, NULL);
}

static void test_check_values(void **state)
{
    (void)state;
    static const struct s_field bad[] = {
        SET("v", "\x02"), SET("v", "\x00"), SET("v", "\xcf\x00\x00\x00\x00\x00\x00\x01\x01"),
        SET("id", "\xa9not-ulid!"),
        SET("id", "\xb9" "01J9ZQ4X5K3M7N8P9QRSTVWXY"),             /* 25 characters */
        SET("id", "\xbb" "01J9ZQ4X5K3M7N8P9QRSTVWXYZZ"),           /* 27 */
        SET("id", "\xba" "01j9zq4x5k3m7n8p9qrstvwxyz"),            /* lower case */
        SET("id", "\xba" "81J9ZQ4X5K3M7N8P9QRSTVWXYZ"),            /* time past 48 bits */
        SET("id", "\xba" "01J9ZQ4X5K3M7N8P9QRSTVWXYU"),            /* U is not Crockford */
        SET("id", "\xa0"),
        SET("ts", "\xcf\x00\x01\x00\x00\x00\x00\x00\x00"),         /* 2^48 ms */
        SET("channel", "\xa3" "fax"), SET("channel", "\xa8WhatsApp"), SET("channel", "\xa0"),
        SET("channel", "\xa9whatsapp "),
        SET("dir", "\xa8sideways"), SET("dir", "\xa2IN"), SET("dir", "\xa0"),
        SET("from", "\xa5" "alice"), SET("from", "\xa4tel:"), SET("from", "\xa6" "1tel:1"),
        SET("from", "\xa7" "a b:123"), SET("from", "\xa3:12"), SET("from", "\xa0"),
        SET("to", "\xa6mailto"),
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s_check_case(&bad[i], 1, bad[i].key);
    }
    static const struct s_field good[] = {
        SET("ts", "\xcf\x00\x00\xff\xff\xff\xff\xff\xff"),         /* the last 48-bit ms */
        SET("ts", "\x00"),
        SET("id", "\xba" "7ZZZZZZZZZZZZZZZZZZZZZZZZZ"),
        SET("from", "\xb6mailto:ana@example.com"), SET("from", "\xaftelegram:123456"),
        SET("from", "\xa9" "a+b-c.d:x"),
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        s_check_case(&good[i], 1, NULL);
    }
    static const char *const channels[] = {
        "whatsapp", "sms", "telegram", "messenger", "email", "webchat", "voice", "inperson", "api"
    };
    for (size_t i = 0; i < sizeof channels / sizeof channels[0]; i++) {
        assert_true(env_channel_valid(channels[i]));
        struct buf v = { 0 };
        s_str(&v, channels[i]);
        struct s_field ch = { "channel", v.data, v.len };
        s_check_case(&ch, 1, NULL);
        buf_free(&v);
    }
    assert_false(env_channel_valid(NULL));
    assert_false(env_channel_valid("irc"));
    assert_true(env_dir_valid("in"));
    assert_true(env_dir_valid("out"));
    assert_true(env_dir_valid("event"));
    assert_false(env_dir_valid("both"));
    assert_false(env_dir_valid(NULL));
}

/* ---- JSON in ------------------------------------------------------------- */

/* env_from_json of the JSON text doc into e; returns its result. */
static int s_from_json(struct env *e, const char *doc, struct env_err *err)
{
    char perr[200];
    cJSON *j = json_parse(doc, strlen(doc), perr, sizeof perr);
    if (j == NULL) {
        fail_msg("test JSON does not parse: %s: %s", perr, doc);
    }
    memset(err, 0, sizeof *err);
    int rc = env_from_json(e, j, err);
    cJSON_Delete(j);
    return rc;
}

static void test_from_json(void **state)
{
    (void)state;
    struct env *e = env_new();
    struct env_err err;
    const char *doc =
        "{\"v\":1,\"id\":\"" ID "\",\"ts\":1794791647215,\"channel\":\"sms\",\"dir\":\"in\","
        "\"from\":\"tel:+5511987654321\",\"text\":\"oi \\u00e9 \xF0\x9F\x98\x95\","
        "\"subject\":null,\"route\":null,\"customer\":null,"
        "\"meta\":{\"sid\":\"SM1\",\"n\":[1,-2,2.5,true,null]},"
        "\"attachments\":[{\"type\":\"image\",\"size\":12}],"
        "\"trace\":[[\"ingest\",5]],"
        "\"x_custom\":{\"a\":[1,2,\"z\"],\"b\":{}},\"x_num\":-3.5,\"x_null\":null,\"x_str\":\"s\"}";
    int rc = s_from_json(e, doc, &err);
    if (rc != 0) {
        print_error("field=%s reason=%s\n", err.field, err.reason);
    }
    assert_int_equal(rc, 0);
    assert_int_equal(env_check(e, &err), 0);
    assert_int_equal(e->v, 1);
    assert_int_equal(e->ts, TS);
    assert_string_equal(env_get(e, ENV_TEXT), "oi \xC3\xA9 \xF0\x9F\x98\x95");
    /* null is absent, for known keys. */
    assert_false(env_has(e, ENV_SUBJECT));
    assert_false(env_has(e, ENV_ROUTE));
    assert_false(env_has(e, ENV_CUSTOMER));
    assert_int_equal(e->n_extra, 4);
    /* Unknown keys come out in the JSON view as they went in. */
    struct buf json = { 0 };
    assert_int_equal(env_to_json(e, &json), 0);
    static const char *const parts[] = {
        "\"x_custom\":{\"a\":[1,2,\"z\"],\"b\":{}}", "\"x_num\":-3.5", "\"x_null\":null",
        "\"x_str\":\"s\"", "\"meta\":{\"sid\":\"SM1\",\"n\":[1,-2,2.5,true,null]}",
        "\"attachments\":[{\"type\":\"image\",\"size\":12}]", "\"trace\":[[\"ingest\",5]]}",
        "\"text\":\"oi \xC3\xA9 \xF0\x9F\x98\x95\"",
    };
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        if (strstr(json.data, parts[i]) == NULL) {
            print_error("'%s' not in %s\n", parts[i], json.data);
        }
        assert_non_null(strstr(json.data, parts[i]));
    }
    assert_null(strstr(json.data, "subject"));
    /* JSON -> envelope -> JSON -> envelope -> JSON is stable, and the
     * msgpack decodes to the same envelope. */
    struct env *e2 = env_new();
    assert_int_equal(s_from_json(e2, json.data, &err), 0);
    struct buf json2 = { 0 }, mp1 = { 0 }, mp2 = { 0 };
    assert_int_equal(env_to_json(e2, &json2), 0);
    assert_string_equal(json2.data, json.data);
    s_encode(e, &mp1);
    s_decode_ok(e2, mp1.data, mp1.len);
    s_encode(e2, &mp2);
    assert_int_equal(mp2.len, mp1.len);
    assert_memory_equal(mp2.data, mp1.data, mp1.len);
    env_destroy(&e);
    env_destroy(&e2);
    buf_free(&json);
    buf_free(&json2);
    buf_free(&mp1);
    buf_free(&mp2);
}

static void test_from_json_errors(void **state)
{
    (void)state;
    static const struct {
        const char *doc;    /* JSON */
        const char *field;  /* blamed */
    } bad[] = {
        { "{\"text\":5}", "text" },
        { "{\"text\":[\"a\"]}", "text" },
        { "{\"text\":true}", "text" },
        { "{\"from\":{}}", "from" },
        { "{\"id\":1}", "id" },
        { "{\"ts\":\"1794791647215\"}", "ts" },
        { "{\"ts\":-1}", "ts" },
        { "{\"ts\":1.5}", "ts" },
        { "{\"ts\":1e300}", "ts" },
        { "{\"v\":true}", "v" },
        { "{\"v\":[1]}", "v" },
        { "{\"route\":[1]}", "route" },
        { "{\"route\":\"bot\"}", "route" },
        { "{\"bot\":3}", "bot" },
        { "{\"meta\":\"x\"}", "meta" },
        { "{\"attachments\":{}}", "attachments" },
        { "{\"attachments\":[1]}", "attachments" },
        { "{\"attachments\":[{},[]]}", "attachments" },
        { "{\"trace\":[[\"a\",\"b\"]]}", "trace" },
        { "{\"trace\":[[\"a\",-1]]}", "trace" },
        { "{\"trace\":[\"a\"]}", "trace" },
        { "{\"trace\":{}}", "trace" },
        { "{\"text\":\"a\",\"text\":\"b\"}", "text" },
        { "{\"x\":1,\"x\":2}", "envelope" },
        { "[]", "envelope" },
        { "\"envelope\"", "envelope" },
        { "null", "envelope" },
    };
    struct env *e = env_new();
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct env_err err;
        int rc = s_from_json(e, bad[i].doc, &err);
        if (rc != -1 || strcmp(err.field, bad[i].field) != 0) {
            print_error("%s: want field=%s, got rc=%d field=%s reason=%s\n", bad[i].doc,
                        bad[i].field, rc, err.field, err.reason);
        }
        assert_int_equal(rc, -1);
        assert_string_equal(err.field, bad[i].field);
        assert_true(err.reason[0] != '\0');
    }
    /* Sizes, UTF-8 and NUL as decode checks them. */
    struct buf doc = { 0 };
    char *big = s_filled(ENV_MAX_TEXT + 1, 'a');
    buf_printf(&doc, "{\"text\":\"%s\"}", big);
    struct env_err err;
    assert_int_equal(s_from_json(e, doc.data, &err), -1);
    assert_string_equal(err.field, "text");
    buf_reset(&doc);
    big[ENV_MAX_KEY + 1] = '\0';
    buf_printf(&doc, "{\"%s\":1}", big);
    assert_int_equal(s_from_json(e, doc.data, &err), -1);
    assert_string_equal(err.field, "envelope");
    free(big);
    buf_free(&doc);
    env_destroy(&e);
}

static void test_from_json_deep(void **state)
{
    (void)state;
    /* Anything env_from_json accepts must encode to an envelope that
     * env_decode accepts: otherwise omni-inject would emit envelopes every
     * later stage refuses. */
    static const char *const keys[] = { "x_deep", "meta" };
    for (size_t k = 0; k < 2; k++) {
        for (int d = MP_MAX_DEPTH - 2; d <= MP_MAX_DEPTH + 40; d += 1) {
            struct buf doc = { 0 }, mp = { 0 };
            buf_printf(&doc, "{\"%s\":", keys[k]);
            int inner = k == 1 ? d - 1 : d;     /* meta: the map itself is one level */
            if (k == 1) {
                buf_puts(&doc, "{\"k\":");
            }
            for (int i = 0; i < inner; i++) {
                buf_putc(&doc, '[');
            }
            buf_puts(&doc, "null");
            for (int i = 0; i < inner; i++) {
                buf_putc(&doc, ']');
            }
            buf_puts(&doc, k == 1 ? "}}" : "}");
            struct env *e = env_new();
            struct env_err err;
            if (s_from_json(e, doc.data, &err) == 0) {
                s_encode(e, &mp);
                struct env *back = env_new();
                if (env_decode(back, mp.data, mp.len, &err) != 0) {
                    print_error("%s %d deep: from_json accepts, decode refuses: %s\n", keys[k], d,
                                err.reason);
                    fail();
                }
                env_destroy(&back);
            } else {
                assert_true(d > MP_MAX_DEPTH - 2);   /* shallow ones must pass */
                assert_string_equal(err.field, k == 1 ? "meta" : "envelope");
            }
            env_destroy(&e);
            buf_free(&doc);
            buf_free(&mp);
        }
    }
}

/* ---- setters, trace, copy ------------------------------------------------ */

static void test_trace_add(void **state)
{
    (void)state;
    struct env *e = env_new();
    s_decode_ok(e, LIT("\x81\xa4text\xa2hi"));
    assert_int_equal(env_trace_add(e, "inject", 5), 0);
    size_t n = 0;
    const char *p = env_raw(e, ENV_TRACE, &n);
    assert_non_null(p);
    assert_int_equal(n, 10);
    assert_memory_equal(p, "\x91\x92\xa6inject\x05", 10);
    assert_int_equal(env_trace_add(e, "route", 70000), 0);
    p = env_raw(e, ENV_TRACE, &n);
    assert_int_equal(n, 22);
    assert_memory_equal(p, "\x92\x92\xa6inject\x05\x92\xa5route\xce\x00\x01\x11\x70", 22);
    /* Past 15 elements the array header grows; every pair stays. */
    for (int i = 2; i < 40; i++) {
        char stage[16];
        snprintf(stage, sizeof stage, "s%d", i);
        assert_int_equal(env_trace_add(e, stage, TS + (uint64_t)i), 0);
    }
    struct buf out = { 0 }, json = { 0 };
    s_encode(e, &out);
    s_decode_ok(e, out.data, out.len);
    p = env_raw(e, ENV_TRACE, &n);
    struct mp_reader r;
    struct mp_val v;
    mp_reader_init(&r, p, n);
    assert_int_equal(mp_read(&r, &v), 0);
    assert_int_equal(v.type, MP_ARRAY);
    assert_int_equal(v.n, 40);
    for (uint32_t i = 0; i < 40; i++) {
        struct mp_val pair, st, ms;
        assert_int_equal(mp_read(&r, &pair), 0);
        assert_int_equal(pair.n, 2);
        assert_int_equal(mp_read(&r, &st), 0);
        assert_int_equal(st.type, MP_STR);
        assert_int_equal(mp_read(&r, &ms), 0);
        assert_int_equal(ms.type, MP_UINT);
        if (i >= 2) {
            char stage[16];
            snprintf(stage, sizeof stage, "s%u", i);
            assert_int_equal(st.n, strlen(stage));
            assert_memory_equal(st.s, stage, st.n);
            assert_int_equal(ms.u, TS + i);
        }
    }
    assert_ptr_equal(r.p, r.end);
    assert_int_equal(env_to_json(e, &json), 0);
    assert_non_null(strstr(json.data, "\"trace\":[[\"inject\",5],[\"route\",70000],[\"s2\","));
    /* On a decoded envelope with unknown keys: trace stays the last key. */
    struct buf in = { 0 };
    s_build(&in, s_unknowns, N_UNKNOWNS);
    s_decode_ok(e, in.data, in.len);
    assert_int_equal(env_trace_add(e, "archive", TS + 9), 0);
    s_encode(e, &out);
    struct buf tail = { 0 };
    s_str(&tail, "trace");
    s_arr(&tail, 3);
    s_raw(&tail, LIT("\x92\xa6inject"));
    s_uint(&tail, TS);
    s_raw(&tail, LIT("\x92\xa8identity"));
    s_uint(&tail, TS + 6);
    s_raw(&tail, LIT("\x92\xa7" "archive"));
    s_uint(&tail, TS + 9);
    assert_true(out.len > tail.len);
    assert_memory_equal(out.data + out.len - tail.len, tail.data, tail.len);
    s_decode_ok(e, out.data, out.len);
    assert_int_equal(e->n_extra, N_UNKNOWNS);
    env_destroy(&e);
    buf_free(&out);
    buf_free(&json);
    buf_free(&in);
    buf_free(&tail);
}

static void test_set_from_self(void **state)
{
    (void)state;
    struct env *e = env_new();
    struct buf in = { 0 };
    s_build(&in, NULL, 0);
    s_decode_ok(e, in.data, in.len);
    /* Values copied from the envelope into itself, while the store grows
     * (and moves) under them. */
    char *text = s_filled(3000, 't');
    assert_int_equal(env_set(e, ENV_TEXT, text, NULL), 0);
    for (int i = 0; i < 40; i++) {
        assert_int_equal(env_set(e, ENV_TEXT, env_get(e, ENV_TEXT), NULL), 0);
        assert_string_equal(env_get(e, ENV_TEXT), text);
        assert_int_equal(env_set(e, ENV_CONVERSATION, env_get(e, ENV_CUSTOMER), NULL), 0);
        assert_string_equal(env_get(e, ENV_CONVERSATION), "cus-01J9");
        assert_int_equal(env_setn(e, ENV_SUBJECT, env_get(e, ENV_TEXT) + 10, 100, NULL), 0);
        assert_int_equal(strlen(env_get(e, ENV_SUBJECT)), 100);
    }
    assert_string_equal(env_get(e, ENV_CUSTOMER), "cus-01J9");
    assert_string_equal(env_get(e, ENV_FROM), "whatsapp:+5511987654321");
    /* A raw value from itself, too. */
    size_t n;
    const void *meta = env_raw(e, ENV_META, &n);
    assert_int_equal(env_set_raw(e, ENV_BOT, meta, n, NULL), 0);
    struct buf want = { 0 };
    s_canon_value(&want, "meta");
    const void *bot = env_raw(e, ENV_BOT, &n);
    assert_int_equal(n, want.len);
    assert_memory_equal(bot, want.data, n);
    struct env_err err;
    assert_int_equal(env_check(e, &err), 0);
    env_destroy(&e);
    buf_free(&in);
    buf_free(&want);
    free(text);
}

static void test_set_raw(void **state)
{
    (void)state;
    struct env *e = env_new();
    struct env_err err;
    assert_int_equal(env_set_raw(e, ENV_ROUTE, LIT("\x81\xa6target\xa5queue"), &err), 0);
    size_t n;
    const void *p = env_raw(e, ENV_ROUTE, &n);
    assert_int_equal(n, 14);
    assert_memory_equal(p, "\x81\xa6target\xa5queue", 14);
    assert_int_equal(env_set_raw(e, ENV_ROUTE, LIT("\x91\x01"), &err), -1);
    assert_string_equal(err.field, "route");
    assert_int_equal(env_set_raw(e, ENV_ROUTE, LIT("\x80\x80"), &err), -1);     /* trailing */
    assert_string_equal(err.field, "route");
    assert_int_equal(env_set_raw(e, ENV_ROUTE, LIT("\x81\xa1k"), &err), -1);    /* truncated */
    assert_string_equal(err.field, "route");
    p = env_raw(e, ENV_ROUTE, &n);                  /* unchanged by the failures */
    assert_memory_equal(p, "\x81\xa6target\xa5queue", 14);
    assert_int_equal(env_set_raw(e, ENV_ATTACHMENTS, LIT("\x91\x80"), &err), 0);
    assert_int_equal(env_set_raw(e, ENV_ATTACHMENTS, LIT("\x91\x01"), &err), -1);
    assert_string_equal(err.field, "attachments");
    assert_int_equal(env_set_raw(e, ENV_TRACE, LIT("\x91\x92\xa1s\x01"), &err), 0);
    assert_int_equal(env_set_raw(e, ENV_TRACE, LIT("\x91\x92\x01\x01"), &err), -1);
    assert_string_equal(err.field, "trace");
    env_unset(e, ENV_ROUTE);
    assert_false(env_has(e, ENV_ROUTE));
    assert_null(env_raw(e, ENV_ROUTE, &n));
    struct buf out = { 0 };
    s_encode(e, &out);
    assert_int_equal(out.len, 1 + 12 + 2 + 6 + 5);
    assert_memory_equal(out.data, "\x82\xab" "attachments\x91\x80\xa5trace\x91\x92\xa1s\x01",
                        out.len);
    env_destroy(&e);
    buf_free(&out);
}

static void test_copy(void **state)
{
    (void)state;
    struct buf in = { 0 }, want = { 0 }, got = { 0 };
    s_build(&in, s_unknowns, N_UNKNOWNS);
    struct env *src = env_new();
    s_decode_ok(src, in.data, in.len);
    s_encode(src, &want);
    /* Into a fresh envelope (its extra array must grow) ... */
    struct env *dst = env_new();
    assert_int_equal(env_copy(dst, src), 0);
    s_assert_canon(dst);
    assert_int_equal(dst->n_extra, N_UNKNOWNS);
    s_encode(dst, &got);
    assert_int_equal(got.len, want.len);
    assert_memory_equal(got.data, want.data, want.len);
    /* ... independent of the source from then on ... */
    assert_int_equal(env_set(dst, ENV_TEXT, "changed", NULL), 0);
    assert_string_equal(env_get(src, ENV_TEXT), TEXT);
    s_decode_ok(src, LIT("\x81\xa4text\xa2hi"));   /* reuses src's memory */
    env_destroy(&src);
    assert_string_equal(env_get(dst, ENV_TEXT), "changed");
    assert_string_equal(env_get(dst, ENV_ID), ID);
    assert_int_equal(dst->n_extra, N_UNKNOWNS);
    /* ... and into one that held more than the source has. */
    struct env *small = env_new();
    s_decode_ok(small, LIT("\x81\xa1v\x01"));
    assert_int_equal(env_copy(dst, small), 0);
    assert_int_equal(dst->n_extra, 0);
    assert_false(env_has(dst, ENV_TEXT));
    assert_true(env_has(dst, ENV_V));
    s_encode(dst, &got);
    assert_int_equal(got.len, 4);
    assert_memory_equal(got.data, "\x81\xa1v\x01", 4);
    /* An empty source. */
    struct env *empty = env_new();
    assert_int_equal(env_copy(dst, empty), 0);
    assert_int_equal(dst->present, 0);
    s_encode(dst, &got);
    assert_int_equal(got.len, 1);
    env_destroy(&empty);
    env_destroy(&small);
    env_destroy(&dst);
    buf_free(&in);
    buf_free(&want);
    buf_free(&got);
}

static void test_reuse_and_names(void **state)
{
    (void)state;
    /* A second decode forgets everything of the first. */
    struct buf in = { 0 }, out = { 0 };
    s_build(&in, s_unknowns, N_UNKNOWNS);
    struct env *e = env_new();
    s_decode_ok(e, in.data, in.len);
    s_decode_ok(e, LIT("\x82\xa1v\x01\xa3x_y\x02"));
    assert_int_equal(e->present, 1u << ENV_V);
    assert_int_equal(e->n_extra, 1);
    assert_null(env_get(e, ENV_TEXT));
    s_encode(e, &out);
    assert_int_equal(out.len, 9);
    assert_memory_equal(out.data, "\x82\xa1v\x01\xa3x_y\x02", 9);
    /* After a failed decode the next one starts clean. */
    assert_int_equal(env_decode(e, LIT("\x82\xa4text\xa2hi\xa2ts\xa1x"), NULL), -1);
    s_decode_ok(e, LIT("\x81\xa2ts\x07"));
    assert_int_equal(e->present, 1u << ENV_TS);
    assert_int_equal(e->ts, 7);
    assert_int_equal(e->n_extra, 0);
    env_clear(e);
    assert_int_equal(e->present, 0);
    env_destroy(&e);
    env_destroy(&e);        /* NULL: nothing to do */
    /* Names. */
    for (int k = 0; k < ENV_NKEYS; k++) {
        assert_string_equal(env_key_name((enum env_key)k), s_order[k]);
        assert_int_equal(env_key_find(s_order[k], strlen(s_order[k])), k);
    }
    assert_int_equal(env_key_find("tex", 3), -1);
    assert_int_equal(env_key_find("texts", 5), -1);
    assert_int_equal(env_key_find("text", 3), -1);
    assert_int_equal(env_key_find("", 0), -1);
    struct env_err err = { "text", "too long" };
    char line[300];
    assert_string_equal(env_err_str(&err, line, sizeof line), "field=text reason=\"too long\"");
    buf_free(&in);
    buf_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_canonical),
        cmocka_unit_test(test_round_trip_normalises),
        cmocka_unit_test(test_minimal_envelope),
        cmocka_unit_test(test_encode_numbers_only),
        cmocka_unit_test(test_unknown_keys_byte_for_byte),
        cmocka_unit_test(test_unknown_keys_anywhere),
        cmocka_unit_test(test_unknown_keys_json),
        cmocka_unit_test(test_unknown_odd_map_keys),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_corrupted_bytes),
        cmocka_unit_test(test_oversized),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_nul_in_text),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_bad_structure),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_check_required),
        cmocka_unit_test(test_check_values),
        cmocka_unit_test(test_from_json),
        cmocka_unit_test(test_from_json_errors),
        cmocka_unit_test(test_from_json_deep),
        cmocka_unit_test(test_trace_add),
        cmocka_unit_test(test_set_from_self),
        cmocka_unit_test(test_set_raw),
        cmocka_unit_test(test_copy),
        cmocka_unit_test(test_reuse_and_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
