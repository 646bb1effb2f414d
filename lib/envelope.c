/* envelope — the one msgpack encoder/decoder of the envelope; see
 * envelope.h for the rules and DESIGN.md for the schema. */
#include "envelope.h"

#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "mp.h"
#include "ulid.h"
#include "utf8.h"

enum s_kind {
    K_STR,      /* UTF-8 string, copied NUL-terminated */
    K_UINT,     /* unsigned integer */
    K_MAP,      /* map, kept as bytes */
    K_ARRAY,    /* array of maps, kept as bytes */
    K_TRACE     /* array of [str, uint], kept as bytes */
};

/* A key's name and its length, for the table below. */
#define KEY(name) name, sizeof(name) - 1

static const struct {
    char name[16];      /* the key on the wire, NUL-padded: copied 16 at a time */
    uint8_t len;        /* strlen(name) */
    enum s_kind kind;   /* how its value is read */
    uint32_t max;       /* longest string accepted */
} s_keys[ENV_NKEYS] = {
    [ENV_V]            = { KEY("v"), K_UINT, 0 },
    [ENV_ID]           = { KEY("id"), K_STR, ENV_MAX_SHORT },
    [ENV_SRC_ID]       = { KEY("src_id"), K_STR, ENV_MAX_SHORT },
    [ENV_TS]           = { KEY("ts"), K_UINT, 0 },
    [ENV_CHANNEL]      = { KEY("channel"), K_STR, ENV_MAX_SHORT },
    [ENV_DIR]          = { KEY("dir"), K_STR, ENV_MAX_SHORT },
    [ENV_FROM]         = { KEY("from"), K_STR, ENV_MAX_SHORT },
    [ENV_TO]           = { KEY("to"), K_STR, ENV_MAX_SHORT },
    [ENV_SUBJECT]      = { KEY("subject"), K_STR, ENV_MAX_SUBJECT },
    [ENV_TEXT]         = { KEY("text"), K_STR, ENV_MAX_TEXT },
    [ENV_ATTACHMENTS]  = { KEY("attachments"), K_ARRAY, 0 },
    [ENV_CUSTOMER]     = { KEY("customer"), K_STR, ENV_MAX_SHORT },
    [ENV_CONVERSATION] = { KEY("conversation"), K_STR, ENV_MAX_SHORT },
    [ENV_ROUTE]        = { KEY("route"), K_MAP, 0 },
    [ENV_REPLY_TO]     = { KEY("reply_to"), K_STR, ENV_MAX_SHORT },
    [ENV_BOT]          = { KEY("bot"), K_MAP, 0 },
    [ENV_META]         = { KEY("meta"), K_MAP, 0 },
    [ENV_TRACE]        = { KEY("trace"), K_TRACE, 0 },
};

#undef KEY

static const char *const s_channels[] = {
    "whatsapp", "sms", "telegram", "messenger", "email", "webchat", "voice",
    "inperson", "api", NULL
};

static const char *const s_dirs[] = { "in", "out", "event", NULL };

static int s_fail(struct env_err *err, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int s_fail(struct env_err *err, const char *field, const char *fmt, ...)
{
    if (err != NULL) {
        snprintf(err->field, sizeof err->field, "%s", field);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->reason, sizeof err->reason, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* The shortest msgpack headers, byte for byte as msgpack-c packs them.
 * Each writes at o and returns the end. */
static inline uint8_t *s_put_be(uint8_t *o, uint64_t v, int bytes)
{
    if (bytes == 2) {
        uint16_t x = __builtin_bswap16((uint16_t)v);
        memcpy(o, &x, 2);
    } else if (bytes == 4) {
        uint32_t x = __builtin_bswap32((uint32_t)v);
        memcpy(o, &x, 4);
    } else {
        uint64_t x = __builtin_bswap64(v);
        memcpy(o, &x, 8);
    }
    return o + bytes;
}

static inline uint8_t *s_put_map(uint8_t *o, uint32_t n)
{
    if (n < 16) {
        *o++ = (uint8_t)(0x80 | n);
        return o;
    }
    if (n < 65536) {
        *o++ = 0xde;
        return s_put_be(o, n, 2);
    }
    *o++ = 0xdf;
    return s_put_be(o, n, 4);
}

static inline uint8_t *s_put_array(uint8_t *o, uint32_t n)
{
    if (n < 16) {
        *o++ = (uint8_t)(0x90 | n);
        return o;
    }
    if (n < 65536) {
        *o++ = 0xdc;
        return s_put_be(o, n, 2);
    }
    *o++ = 0xdd;
    return s_put_be(o, n, 4);
}

static inline uint8_t *s_put_str(uint8_t *o, uint32_t n)
{
    if (n < 32) {
        *o++ = (uint8_t)(0xa0 | n);
        return o;
    }
    if (n < 256) {
        *o++ = 0xd9;
        *o++ = (uint8_t)n;
        return o;
    }
    if (n < 65536) {
        *o++ = 0xda;
        return s_put_be(o, n, 2);
    }
    *o++ = 0xdb;
    return s_put_be(o, n, 4);
}

static inline uint8_t *s_put_uint(uint8_t *o, uint64_t u)
{
    if (u < 128) {
        *o++ = (uint8_t)u;
        return o;
    }
    if (u < 256) {
        *o++ = 0xcc;
        *o++ = (uint8_t)u;
        return o;
    }
    if (u < 65536) {
        *o++ = 0xcd;
        return s_put_be(o, u, 2);
    }
    if (u <= 0xFFFFFFFFu) {
        *o++ = 0xce;
        return s_put_be(o, u, 4);
    }
    *o++ = 0xcf;
    return s_put_be(o, u, 8);
}

struct env *env_new(void)
{
    return calloc(1, sizeof(struct env));
}

void env_destroy(struct env **e)
{
    if (*e == NULL) {
        return;
    }
    buf_free(&(*e)->store);
    buf_free(&(*e)->wire);
    buf_free(&(*e)->scratch);
    free((*e)->extra);
    free(*e);
    *e = NULL;
}

void env_clear(struct env *e)
{
    e->v = 0;
    e->ts = 0;
    e->present = 0;
    e->n_extra = 0;
    e->wire_ok = false;
    buf_reset(&e->store);
    buf_reset(&e->wire);
}

int env_copy(struct env *dst, const struct env *src)
{
    assert(dst != src);
    env_clear(dst);
    if (buf_append(&dst->store, src->store.data, src->store.len) != 0) {
        return -1;
    }
    if (src->n_extra > dst->cap_extra) {
        struct env_span *x = realloc(dst->extra, src->n_extra * sizeof *x);
        if (x == NULL) {
            return -1;
        }
        dst->extra = x;
        dst->cap_extra = src->n_extra;
    }
    if (src->n_extra > 0) {
        memcpy(dst->extra, src->extra, src->n_extra * sizeof *dst->extra);
    }
    if (src->wire_ok) {
        if (buf_append(&dst->wire, src->wire.data, src->wire.len) != 0) {
            return -1;
        }
        dst->wire_ok = true;
    }
    dst->n_extra = src->n_extra;
    dst->v = src->v;
    dst->ts = src->ts;
    dst->present = src->present;
    memcpy(dst->val, src->val, sizeof dst->val);
    return 0;
}

const char *env_key_name(enum env_key k)
{
    assert(k < ENV_NKEYS);
    return s_keys[k].name;
}

int env_key_find(const char *name, size_t n)
{
    /* By length, then memcmp of a constant length, which compilers do
     * inline. Every name in s_keys must be here (test_envelope checks). */
    switch (n) {
    case 1:
        if (memcmp(name, "v", 1) == 0) {
            return ENV_V;
        }
        break;
    case 2:
        if (memcmp(name, "id", 2) == 0) {
            return ENV_ID;
        }
        if (memcmp(name, "ts", 2) == 0) {
            return ENV_TS;
        }
        if (memcmp(name, "to", 2) == 0) {
            return ENV_TO;
        }
        break;
    case 3:
        if (memcmp(name, "dir", 3) == 0) {
            return ENV_DIR;
        }
        if (memcmp(name, "bot", 3) == 0) {
            return ENV_BOT;
        }
        break;
    case 4:
        if (memcmp(name, "from", 4) == 0) {
            return ENV_FROM;
        }
        if (memcmp(name, "text", 4) == 0) {
            return ENV_TEXT;
        }
        if (memcmp(name, "meta", 4) == 0) {
            return ENV_META;
        }
        break;
    case 5:
        if (memcmp(name, "route", 5) == 0) {
            return ENV_ROUTE;
        }
        if (memcmp(name, "trace", 5) == 0) {
            return ENV_TRACE;
        }
        break;
    case 6:
        if (memcmp(name, "src_id", 6) == 0) {
            return ENV_SRC_ID;
        }
        break;
    case 7:
        if (memcmp(name, "channel", 7) == 0) {
            return ENV_CHANNEL;
        }
        if (memcmp(name, "subject", 7) == 0) {
            return ENV_SUBJECT;
        }
        break;
    case 8:
        if (memcmp(name, "customer", 8) == 0) {
            return ENV_CUSTOMER;
        }
        if (memcmp(name, "reply_to", 8) == 0) {
            return ENV_REPLY_TO;
        }
        break;
    case 11:
        if (memcmp(name, "attachments", 11) == 0) {
            return ENV_ATTACHMENTS;
        }
        break;
    case 12:
        if (memcmp(name, "conversation", 12) == 0) {
            return ENV_CONVERSATION;
        }
        break;
    }
    return -1;
}

static bool s_in_list(const char *const *list, const char *s)
{
    for (; *list != NULL; list++) {
        if ((*list)[0] == s[0] && strcmp(*list, s) == 0) {
            return true;
        }
    }
    return false;
}

bool env_channel_valid(const char *s)
{
    return s != NULL && s_in_list(s_channels, s);
}

bool env_dir_valid(const char *s)
{
    return s != NULL && s_in_list(s_dirs, s);
}

/* Makes room in the store for n bytes and a NUL; *p may point into the
 * store itself, and is kept pointing at the same bytes. */
static int s_store_grow(struct env *e, const void **p, size_t n)
{
    const char *base = e->store.data;
    bool inside = base != NULL && (const char *)*p >= base
                  && (const char *)*p < base + e->store.len;
    size_t off = inside ? (size_t)((const char *)*p - base) : 0;
    if (buf_reserve(&e->store, n + 1) != 0) {
        return -1;
    }
    if (inside) {
        *p = e->store.data + off;
    }
    return 0;
}

/* Appends bytes to the store; -1 when the envelope would pass its bound. */
static inline int s_store(struct env *e, const void *p, size_t n, bool nul, struct env_span *out)
{
    if (e->store.len + n + 1 > ENV_MAX_BYTES * 2u) {
        return -1;
    }
    /* n bytes, the NUL, and the NUL buf keeps after them. */
    if (e->store.len + n + 2 > e->store.cap && s_store_grow(e, &p, n) != 0) {
        return -1;
    }
    out->off = (uint32_t)e->store.len;
    out->len = (uint32_t)n;
    memmove(e->store.data + e->store.len, p, n);
    e->store.len += n;
    if (nul) {
        e->store.data[e->store.len++] = '\0';
    }
    e->store.data[e->store.len] = '\0';
    return 0;
}

/* True when the 8 bytes at s hold a byte that is not ASCII, or a NUL (the
 * classic has-zero test). */
static inline bool s_word_odd(const char *s)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    uint64_t w;
    memcpy(&w, s, 8);
    return ((w | ((w - ones) & ~w)) & highs) != 0;
}

/* True when s[0..n) is ASCII without NUL bytes. */
static inline bool s_plain(const char *s, size_t n)
{
    if (n < 8) {
        for (size_t i = 0; i < n; i++) {
            if ((unsigned char)s[i] - 1u >= 0x7fu) {
                return false;
            }
        }
        return true;
    }
    for (size_t i = 0; i + 8 < n; i += 8) {
        if (s_word_odd(s + i)) {
            return false;
        }
    }
    /* The last 8 bytes, overlapping what the loop saw. */
    return !s_word_odd(s + n - 8);
}

static int s_check_str(enum env_key k, const char *s, size_t n, struct env_err *err)
{
    const char *name = s_keys[k].name;
    if (n > s_keys[k].max) {
        return s_fail(err, name, "string of %zu bytes is longer than %u", n, s_keys[k].max);
    }
    /* Most strings are plain ASCII: one pass, and no calls, settles them. */
    if (s_plain(s, n)) {
        return 0;
    }
    size_t ok = utf8_valid_prefix(s, n);
    if (ok != n) {
        return s_fail(err, name, "invalid UTF-8 at byte %zu", ok);
    }
    if (memchr(s, '\0', n) != NULL) {
        return s_fail(err, name, "contains a NUL byte");
    }
    return 0;
}

/* env_setn without its checks of the caller. */
static int s_setn(struct env *e, enum env_key k, const char *s, size_t n, struct env_err *err)
{
    if (s_check_str(k, s, n, err) != 0) {
        return -1;
    }
    if (s_store(e, s, n, true, &e->val[k]) != 0) {
        return s_fail(err, s_keys[k].name, "envelope larger than %u bytes", ENV_MAX_BYTES);
    }
    e->present |= 1u << k;
    return 0;
}

int env_setn(struct env *e, enum env_key k, const char *s, size_t n, struct env_err *err)
{
    assert(k < ENV_NKEYS && s_keys[k].kind == K_STR);
    e->wire_ok = false;
    if (s_check_str(k, s, n, err) != 0) {
        return -1;
    }
    if (s_store(e, s, n, true, &e->val[k]) != 0) {
        return s_fail(err, s_keys[k].name, "envelope larger than %u bytes", ENV_MAX_BYTES);
    }
    e->present |= 1u << k;
    return 0;
}

int env_set(struct env *e, enum env_key k, const char *s, struct env_err *err)
{
    return env_setn(e, k, s, strlen(s), err);
}

void env_unset(struct env *e, enum env_key k)
{
    assert(k < ENV_NKEYS);
    e->present &= ~(1u << k);
    e->wire_ok = false;
}

void env_set_uint(struct env *e, enum env_key k, uint64_t value)
{
    assert(k == ENV_V || k == ENV_TS);
    e->wire_ok = false;
    if (k == ENV_V) {
        e->v = value;
    } else {
        e->ts = value;
    }
    e->present |= 1u << k;
}

const char *env_get(const struct env *e, enum env_key k)
{
    assert(k < ENV_NKEYS && s_keys[k].kind == K_STR);
    if (!env_has(e, k)) {
        return NULL;
    }
    return e->store.data + e->val[k].off;
}

const void *env_raw(const struct env *e, enum env_key k, size_t *n)
{
    assert(k < ENV_NKEYS);
    assert(s_keys[k].kind == K_MAP || s_keys[k].kind == K_ARRAY || s_keys[k].kind == K_TRACE);
    if (!env_has(e, k)) {
        *n = 0;
        return NULL;
    }
    *n = e->val[k].len;
    return e->store.data + e->val[k].off;
}

/* s_check_raw, the long way: two walks, the first for depth, and the
 * precise reason when the value is refused. */
static int s_check_raw_slow(enum env_key k, struct mp_reader *r, struct env_err *err)
{
    const char *name = s_keys[k].name;
    struct mp_reader peek = *r;
    struct mp_val v;
    if (mp_read(&peek, &v) != 0) {
        return s_fail(err, name, "truncated or invalid msgpack");
    }
    enum s_kind kind = s_keys[k].kind;
    if (kind == K_MAP && v.type != MP_MAP) {
        return s_fail(err, name, "expected map, found %s", mp_type_name(v.type));
    }
    if ((kind == K_ARRAY || kind == K_TRACE) && v.type != MP_ARRAY) {
        return s_fail(err, name, "expected array, found %s", mp_type_name(v.type));
    }
    /* Depth counts from the value itself, as for unknown keys and in
     * env_to_json, so that whatever decodes can also be shown. */
    struct mp_reader whole = *r;
    if (mp_skip(&whole) != 0) {
        return s_fail(err, name, "truncated, invalid or too deeply nested msgpack");
    }
    if (kind == K_MAP) {
        /* Keys of known maps must be strings, so JSON can show them. */
        for (uint32_t i = 0; i < v.n; i++) {
            struct mp_val key;
            if (mp_read(&peek, &key) != 0) {
                return s_fail(err, name, "truncated or invalid msgpack");
            }
            if (key.type != MP_STR) {
                return s_fail(err, name, "key #%u is %s, not str", i + 1, mp_type_name(key.type));
            }
            if (!utf8_is_valid(key.s, key.n)) {
                return s_fail(err, name, "key #%u is not valid UTF-8", i + 1);
            }
            if (mp_skip(&peek) != 0) {
                return s_fail(err, name, "truncated, invalid or too deeply nested msgpack");
            }
        }
    } else {
        for (uint32_t i = 0; i < v.n; i++) {
            struct mp_reader el = peek;
            struct mp_val ev;
            if (mp_read(&el, &ev) != 0) {
                return s_fail(err, name, "truncated or invalid msgpack");
            }
            if (kind == K_ARRAY && ev.type != MP_MAP) {
                return s_fail(err, name, "element #%u is %s, not map", i + 1, mp_type_name(ev.type));
            }
            if (kind == K_TRACE) {
                struct mp_val st, ms;
                if (ev.type != MP_ARRAY || ev.n != 2 || mp_read(&el, &st) != 0
                    || st.type != MP_STR || mp_read(&el, &ms) != 0 || ms.type != MP_UINT) {
                    return s_fail(err, name, "element #%u is not a [stage, ms] pair", i + 1);
                }
                if (!utf8_is_valid(st.s, st.n)) {
                    return s_fail(err, name, "element #%u: stage is not valid UTF-8", i + 1);
                }
            }
            if (mp_skip(&peek) != 0) {
                return s_fail(err, name, "truncated, invalid or too deeply nested msgpack");
            }
        }
    }
    *r = peek;
    return 0;
}

/* True when the value at r is a whole fixstr: reads it into v. */
static inline bool s_read_fixstr(struct mp_reader *r, struct mp_val *v)
{
    const uint8_t *p = r->p;
    if (p >= r->end || (*p & 0xe0) != 0xa0 || (size_t)(r->end - p) <= (*p & 0x1fu)) {
        return false;
    }
    v->type = MP_STR;
    v->s = (const char *)p + 1;
    v->n = *p & 0x1fu;
    r->p = p + 1 + v->n;
    return true;
}

/* True when the value at r is a uint (as mp_read has it: signed encodings of
 * non-negative numbers too): reads it into u. Otherwise r stays. */
static inline bool s_read_uint(struct mp_reader *r, uint64_t *u)
{
    const uint8_t *p = r->p;
    if (p < r->end && *p <= 0x7f) {
        *u = *p;
        r->p = p + 1;
        return true;
    }
    if (r->end - p >= 9 && *p == 0xcf) {
        uint64_t x;
        memcpy(&x, p + 1, 8);
        *u = __builtin_bswap64(x);
        r->p = p + 9;
        return true;
    }
    struct mp_reader t = *r;
    struct mp_val v;
    if (mp_read(&t, &v) != 0 || v.type != MP_UINT) {
        return false;
    }
    *u = v.u;
    *r = t;
    return true;
}

/* utf8_is_valid, with plain ASCII settled inline. */
static inline bool s_utf8(const char *s, size_t n)
{
    return s_plain(s, n) || utf8_is_valid(s, n);
}

/* True when the value at r is a str: reads it into v. Otherwise r stays. */
static inline bool s_read_str(struct mp_reader *r, struct mp_val *v)
{
    if (s_read_fixstr(r, v)) {
        return true;
    }
    struct mp_reader t = *r;
    if (mp_read(&t, v) != 0 || v->type != MP_STR) {
        return false;
    }
    *r = t;
    return true;
}

/* Checks that a map/array value in r (one whole value) has the shape its key
 * wants, and advances r past it. One walk does it all for values that pass;
 * a value refused is walked again by s_check_raw_slow, which says why (and
 * refuses exactly what this refuses). */
static int s_check_raw(enum env_key k, struct mp_reader *r, struct env_err *err)
{
    struct mp_reader w = *r;
    enum s_kind kind = s_keys[k].kind;
    /* Fixmap or fixarray here; longer headers take the long way. */
    if (w.p >= w.end || (*w.p & 0xf0) != (kind == K_MAP ? 0x80 : 0x90)) {
        return s_check_raw_slow(k, r, err);
    }
    uint32_t n = *w.p++ & 0x0f;
    /* Inside, everything sits one level down: the depth mp_skip of the
     * whole value gives it, and its bound on bogus counts. */
    uint64_t items = kind == K_MAP ? 2 * (uint64_t)n : n;
    if (items > (uint64_t)(w.end - w.p)) {
        return s_check_raw_slow(k, r, err);
    }
    for (uint32_t i = 0; i < n; i++) {
        if (kind == K_MAP) {
            /* Keys of known maps must be strings, so JSON can show them.
             * Values are often short strings: read, they are skipped. */
            struct mp_val key, val;
            if (!s_read_str(&w, &key) || !s_utf8(key.s, key.n)
                || (!s_read_fixstr(&w, &val) && mp_skip_at(&w, 1) != 0)) {
                return s_check_raw_slow(k, r, err);
            }
        } else if (kind == K_ARRAY) {
            /* Elements are maps: fixmap, map 16 or map 32. */
            if (w.p >= w.end || !((*w.p >= 0x80 && *w.p <= 0x8f) || *w.p == 0xde || *w.p == 0xdf)
                || mp_skip_at(&w, 1) != 0) {
                return s_check_raw_slow(k, r, err);
            }
        } else {
            /* [stage, ms]: two scalars, so reading them skips the pair. */
            struct mp_val st;
            uint64_t ms;
            if (w.p >= w.end || *w.p != 0x92) {
                return s_check_raw_slow(k, r, err);
            }
            w.p++;
            if (!s_read_str(&w, &st) || !s_read_uint(&w, &ms) || !s_utf8(st.s, st.n)) {
                return s_check_raw_slow(k, r, err);
            }
        }
    }
    *r = w;
    return 0;
}

int env_set_raw(struct env *e, enum env_key k, const void *p, size_t n, struct env_err *err)
{
    struct mp_reader r;
    e->wire_ok = false;
    mp_reader_init(&r, p, n);
    if (s_check_raw(k, &r, err) != 0) {
        return -1;
    }
    if (r.p != r.end) {
        return s_fail(err, s_keys[k].name, "%zu bytes after the value", (size_t)(r.end - r.p));
    }
    if (s_store(e, p, n, false, &e->val[k]) != 0) {
        return s_fail(err, s_keys[k].name, "envelope larger than %u bytes", ENV_MAX_BYTES);
    }
    e->present |= 1u << k;
    return 0;
}

static int s_add_extra(struct env *e, const void *p, size_t n)
{
    e->wire_ok = false;
    if (e->n_extra == e->cap_extra) {
        uint32_t cap = e->cap_extra ? e->cap_extra * 2 : 8;
        struct env_span *x = realloc(e->extra, cap * sizeof *x);
        if (x == NULL) {
            return -1;
        }
        e->extra = x;
        e->cap_extra = cap;
    }
    if (s_store(e, p, n, false, &e->extra[e->n_extra]) != 0) {
        return -1;
    }
    e->n_extra++;
    return 0;
}

int env_decode(struct env *e, const void *p, size_t n, struct env_err *err)
{
    env_clear(e);
    if (n > ENV_MAX_BYTES) {
        return s_fail(err, "envelope", "%zu bytes is larger than %u", n, ENV_MAX_BYTES);
    }
    struct mp_reader r;
    mp_reader_init(&r, p, n);
    struct mp_val v;
    if (n == 0) {
        return s_fail(err, "envelope", "empty message");
    }
    if (mp_read(&r, &v) != 0) {
        return s_fail(err, "envelope", "truncated or invalid msgpack");
    }
    if (v.type != MP_MAP) {
        return s_fail(err, "envelope", "not a map (found %s)", mp_type_name(v.type));
    }
    /* Whether the input is already what env_encode would write (the
     * shortest headers; known keys in their order, then unknown keys, then
     * trace). If so it is kept up to trace, and sent on as it came while
     * only trace changes. Tracked in locals: fields would be reloaded after
     * every copy into the store. */
    uint8_t head[9];
    const uint8_t *body = r.p;
    const uint8_t *trace_at = r.end;    /* where trace starts, or the end */
    unsigned odd = s_put_map(head, v.n) - head != body - (const uint8_t *)p;  /* 1: not in that form */
    int last = -1;                      /* the last known key; ENV_NKEYS after an unknown one */
    for (uint32_t i = 0; i < v.n; i++) {
        const uint8_t *kstart = r.p;
        struct mp_val key;
        if (!s_read_fixstr(&r, &key)) {
            /* Known keys are fixstrs when written the shortest way (long
             * unknown keys are not, but never mind them). */
            odd = 1;
            if (!s_read_str(&r, &key)) {
                if (mp_read(&r, &key) != 0) {
                    return s_fail(err, "envelope", "truncated msgpack at key #%u", i + 1);
                }
                return s_fail(err, "envelope", "key #%u is %s, not str", i + 1, mp_type_name(key.type));
            }
        }
        if (key.n > ENV_MAX_KEY) {
            return s_fail(err, "envelope", "key #%u is longer than %u bytes", i + 1, ENV_MAX_KEY);
        }
        int k = env_key_find(key.s, key.n);
        /* Known keys are ASCII: only unknown ones need the UTF-8 check. */
        if (k < 0 && !s_utf8(key.s, key.n)) {
            return s_fail(err, "envelope", "key #%u is not valid UTF-8", i + 1);
        }
        if (k < 0) {
            /* Unknown: keep key and value bytes exactly as they came. */
            if (mp_skip(&r) != 0) {
                return s_fail(err, "envelope", "truncated, invalid or too deeply nested value of key '%.*s'",
                              (int)(key.n > 32 ? 32 : key.n), key.s);
            }
            for (uint32_t x = 0; x < e->n_extra; x++) {
                struct mp_reader kr;
                struct mp_val xk;
                mp_reader_init(&kr, e->store.data + e->extra[x].off, e->extra[x].len);
                if (mp_read(&kr, &xk) == 0 && xk.n == key.n && memcmp(xk.s, key.s, key.n) == 0) {
                    return s_fail(err, "envelope", "duplicate key '%.*s'",
                                  (int)(key.n > 32 ? 32 : key.n), key.s);
                }
            }
            if (s_add_extra(e, kstart, (size_t)(r.p - kstart)) != 0) {
                return s_fail(err, "envelope", "out of memory");
            }
            last = ENV_NKEYS;
            continue;
        }
        const char *name = s_keys[k].name;
        if (env_has(e, (enum env_key)k)) {
            return s_fail(err, name, "duplicate key");
        }
        /* Trace comes last; the others in their order, before unknown keys. */
        if (k == ENV_TRACE) {
            odd |= i + 1 != v.n;
            trace_at = kstart;
        } else {
            odd |= k < last;
            last = k;
        }
        const uint8_t *vstart = r.p;
        switch (s_keys[k].kind) {
        case K_STR: {
            struct mp_val sv;
            if (!s_read_str(&r, &sv)) {
                if (mp_read(&r, &sv) != 0) {
                    return s_fail(err, name, "truncated msgpack");
                }
                return s_fail(err, name, "expected str, found %s", mp_type_name(sv.type));
            }
            /* str 8, 16 or 32 where a shorter header would do. */
            size_t hl = (size_t)(sv.s - (const char *)vstart);
            if (hl > 1) {
                odd |= sv.n < (hl == 2 ? 32u : hl == 3 ? 256u : 65536u);
            }
            if (s_setn(e, (enum env_key)k, sv.s, sv.n, err) != 0) {
                return -1;
            }
            break;
        }
        case K_UINT: {
            uint64_t u;
            if (!s_read_uint(&r, &u)) {
                struct mp_val uv;
                if (mp_read(&r, &uv) != 0) {
                    return s_fail(err, name, "truncated msgpack");
                }
                return s_fail(err, name, "expected uint, found %s", mp_type_name(uv.type));
            }
            if (k == ENV_V) {
                e->v = u;
            } else {
                e->ts = u;
            }
            e->present |= 1u << k;
            /* A uint's form needs its type byte too: 0xd1 is as long as 0xcd. */
            odd |= (s_put_uint(head, u) - head != r.p - vstart) | (*vstart != head[0]);
            break;
        }
        default:
            if (s_check_raw((enum env_key)k, &r, err) != 0) {
                return -1;
            }
            if (s_store(e, vstart, (size_t)(r.p - vstart), false, &e->val[k]) != 0) {
                return s_fail(err, name, "out of memory");
            }
            e->present |= 1u << k;
        }
    }
    if (r.p != r.end) {
        return s_fail(err, "envelope", "%zu bytes after the map", (size_t)(r.end - r.p));
    }
    if (!odd && buf_append(&e->wire, body, (size_t)(trace_at - body)) == 0) {
        e->wire_ok = true;
    }
    return 0;
}

static bool s_handle_valid(const char *s)
{
    /* scheme ":" rest, scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) */
    const char *c = s;
    if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z'))) {
        return false;
    }
    for (c++; *c != ':'; c++) {
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9')
              || *c == '+' || *c == '-' || *c == '.')) {
            return false;
        }
    }
    return c[1] != '\0';
}

int env_check(const struct env *e, struct env_err *err)
{
    if (!env_has(e, ENV_V)) {
        return s_fail(err, "v", "missing");
    }
    if (e->v != ENV_VERSION) {
        return s_fail(err, "v", "unsupported version %llu (this build reads %d)",
                      (unsigned long long)e->v, ENV_VERSION);
    }
    const char *id = env_get(e, ENV_ID);
    if (id == NULL) {
        return s_fail(err, "id", "missing");
    }
    if (!ulid_valid(id, e->val[ENV_ID].len)) {
        return s_fail(err, "id", "not a ULID (26 characters of Crockford base32)");
    }
    if (!env_has(e, ENV_TS)) {
        return s_fail(err, "ts", "missing");
    }
    if (e->ts > 0xFFFFFFFFFFFFULL) {
        return s_fail(err, "ts", "%llu is not a time in ms since epoch", (unsigned long long)e->ts);
    }
    const char *ch = env_get(e, ENV_CHANNEL);
    if (ch == NULL) {
        return s_fail(err, "channel", "missing");
    }
    if (!env_channel_valid(ch)) {
        return s_fail(err, "channel", "unknown channel '%.40s'", ch);
    }
    const char *dir = env_get(e, ENV_DIR);
    if (dir == NULL) {
        return s_fail(err, "dir", "missing");
    }
    if (!env_dir_valid(dir)) {
        return s_fail(err, "dir", "'%.40s' is not in, out or event", dir);
    }
    static const enum env_key handles[] = { ENV_FROM, ENV_TO };
    for (size_t i = 0; i < 2; i++) {
        const char *h = env_get(e, handles[i]);
        if (h != NULL && !s_handle_valid(h)) {
            return s_fail(err, s_keys[handles[i]].name,
                          "'%.60s' is not a handle URI (scheme:id, e.g. tel:+5511987654321)", h);
        }
    }
    /* dir is in, out or event: its first letter says which. */
    bool message = dir[0] != 'e';
    if (dir[0] == 'i' && !env_has(e, ENV_FROM)) {
        return s_fail(err, "from", "missing on an inbound message");
    }
    if (dir[0] == 'o' && !env_has(e, ENV_TO)) {
        return s_fail(err, "to", "missing on an outbound message");
    }
    if (message && !env_has(e, ENV_TEXT) && !env_has(e, ENV_ATTACHMENTS)) {
        return s_fail(err, "text", "missing (a message needs text or attachments)");
    }
    return 0;
}

/* A known key as a fixstr. Writes 17 bytes (the name's padding too): the
 * caller reserves them. */
static inline uint8_t *s_put_key(uint8_t *o, enum env_key k)
{
    *o++ = (uint8_t)(0xa0 | s_keys[k].len);
    memcpy(o, s_keys[k].name, sizeof s_keys[k].name);
    return o + s_keys[k].len;
}

int env_encode(const struct env *e, struct buf *out)
{
    /* Room for it all first: then every byte is written in place. */
    uint32_t known = e->present & ~(1u << ENV_TRACE);
    size_t need = 5 + 1 + sizeof s_keys[ENV_TRACE].name;    /* map header, trace key */
    if (env_has(e, ENV_TRACE)) {
        need += e->val[ENV_TRACE].len;
    }
    if (e->wire_ok) {
        need += e->wire.len;
    } else {
        for (uint32_t bits = known; bits != 0; bits &= bits - 1) {
            int k = __builtin_ctz(bits);
            need += 1 + sizeof s_keys[k].name + 9 + (s_keys[k].kind == K_UINT ? 0 : e->val[k].len);
        }
        for (uint32_t x = 0; x < e->n_extra; x++) {
            need += e->extra[x].len;
        }
    }
    if (buf_reserve(out, need) != 0) {
        return -1;
    }
    const char *store = e->store.data;
    uint8_t *o = (uint8_t *)out->data + out->len;
    o = s_put_map(o, (uint32_t)__builtin_popcount(e->present) + e->n_extra);
    if (e->wire_ok) {
        /* It came in this form, and only trace has changed since. */
        memcpy(o, e->wire.data, e->wire.len);
        o += e->wire.len;
    } else {
        /* Known keys in their order, then unknown keys. */
        for (uint32_t bits = known; bits != 0; bits &= bits - 1) {
            int k = __builtin_ctz(bits);
            o = s_put_key(o, (enum env_key)k);
            switch (s_keys[k].kind) {
            case K_STR:
                o = s_put_str(o, e->val[k].len);
                memcpy(o, store + e->val[k].off, e->val[k].len);
                o += e->val[k].len;
                break;
            case K_UINT:
                /* Numbers live outside the store, which may be unallocated. */
                o = s_put_uint(o, k == ENV_V ? e->v : e->ts);
                break;
            default:
                memcpy(o, store + e->val[k].off, e->val[k].len);
                o += e->val[k].len;
            }
        }
        for (uint32_t x = 0; x < e->n_extra; x++) {
            memcpy(o, store + e->extra[x].off, e->extra[x].len);
            o += e->extra[x].len;
        }
    }
    /* Trace, last. */
    if (env_has(e, ENV_TRACE)) {
        o = s_put_key(o, ENV_TRACE);
        memcpy(o, store + e->val[ENV_TRACE].off, e->val[ENV_TRACE].len);
        o += e->val[ENV_TRACE].len;
    }
    out->len = (size_t)((char *)o - out->data);
    out->data[out->len] = '\0';
    return 0;
}

int env_trace_add(struct env *e, const char *stage, uint64_t ms)
{
    /* Elements of the old trace, as an offset into the store. */
    size_t elems_off = 0, elems_len = 0;
    uint32_t count = 0;
    if (env_has(e, ENV_TRACE)) {
        struct mp_reader r;
        struct mp_val v;
        mp_reader_init(&r, e->store.data + e->val[ENV_TRACE].off, e->val[ENV_TRACE].len);
        int rc = mp_read(&r, &v);
        assert(rc == 0 && v.type == MP_ARRAY);  /* validated when set */
        (void)rc;
        count = v.n;
        elems_off = (size_t)((const char *)r.p - e->store.data);
        elems_len = (size_t)((const char *)r.end - (const char *)r.p);
    }
    size_t sl = strlen(stage);
    /* Reserve first, so the old elements do not move while they are copied;
     * 32 covers the headers (5 + 1 + 5 + 9). */
    if (e->store.len + elems_len + sl + 32 > ENV_MAX_BYTES * 2u
        || buf_reserve(&e->store, elems_len + sl + 32) != 0) {
        return -1;
    }
    size_t start = e->store.len;
    uint8_t *o = (uint8_t *)e->store.data + start;
    o = s_put_array(o, count + 1);
    memcpy(o, e->store.data + elems_off, elems_len);
    o += elems_len;
    *o++ = 0x92;                        /* [stage, ms] */
    o = s_put_str(o, (uint32_t)sl);
    memcpy(o, stage, sl);
    o += sl;
    o = s_put_uint(o, ms);
    e->store.len = (size_t)((char *)o - e->store.data);
    e->store.data[e->store.len] = '\0';
    e->val[ENV_TRACE].off = (uint32_t)start;
    e->val[ENV_TRACE].len = (uint32_t)(e->store.len - start);
    e->present |= 1u << ENV_TRACE;
    return 0;
}

static const char *s_json_type(const cJSON *j)
{
    if (cJSON_IsString(j)) {
        return "string";
    }
    if (cJSON_IsNumber(j)) {
        return "number";
    }
    if (cJSON_IsBool(j)) {
        return "boolean";
    }
    if (cJSON_IsArray(j)) {
        return "array";
    }
    if (cJSON_IsObject(j)) {
        return "object";
    }
    return "null";
}

int env_from_json(struct env *e, const cJSON *obj, struct env_err *err)
{
    env_clear(e);
    if (!cJSON_IsObject(obj)) {
        return s_fail(err, "envelope", "expected a JSON object, found %s", s_json_type(obj));
    }
    struct buf *tmp = &e->scratch;
    msgpack_packer pk;
    msgpack_packer_init(&pk, tmp, mp_buf_write);
    int rc = 0;
    for (const cJSON *c = obj->child; c != NULL && rc == 0; c = c->next) {
        size_t kn = strlen(c->string);
        int k = env_key_find(c->string, kn);
        if (k < 0) {
            if (kn > ENV_MAX_KEY) {
                rc = s_fail(err, "envelope", "key '%.32s…' is longer than %u bytes", c->string, ENV_MAX_KEY);
                break;
            }
            for (const cJSON *d = obj->child; d != c; d = d->next) {
                if (strcmp(d->string, c->string) == 0) {
                    rc = s_fail(err, "envelope", "duplicate key '%.32s'", c->string);
                    break;
                }
            }
            if (rc != 0) {
                break;
            }
            buf_reset(tmp);
            rc = msgpack_pack_str(&pk, kn) | msgpack_pack_str_body(&pk, c->string, kn);
            rc |= mp_pack_json(&pk, c);
            /* Held to the depth env_decode allows, so that what is built
             * here decodes downstream. */
            struct mp_reader vr;
            struct mp_val kv;
            mp_reader_init(&vr, tmp->data, tmp->len);
            if (rc != 0) {
                rc = s_fail(err, c->string, "out of memory or envelope too large");
            } else if (mp_read(&vr, &kv) != 0 || mp_skip(&vr) != 0) {
                rc = s_fail(err, "envelope", "value of key '%.32s' is nested deeper than %d",
                            c->string, MP_MAX_DEPTH);
            } else if (s_add_extra(e, tmp->data, tmp->len) != 0) {
                rc = s_fail(err, c->string, "out of memory or envelope too large");
            }
            continue;
        }
        const char *name = s_keys[k].name;
        if (env_has(e, (enum env_key)k)) {
            rc = s_fail(err, name, "duplicate key");
            break;
        }
        if (cJSON_IsNull(c)) {
            continue;
        }
        switch (s_keys[k].kind) {
        case K_STR:
            if (!cJSON_IsString(c)) {
                rc = s_fail(err, name, "expected string, found %s", s_json_type(c));
            } else {
                rc = env_set(e, (enum env_key)k, c->valuestring, err);
            }
            break;
        case K_UINT: {
            double d = c->valuedouble;
            if (!cJSON_IsNumber(c)) {
                rc = s_fail(err, name, "expected integer, found %s", s_json_type(c));
            } else if (d < 0 || d != floor(d) || d > 9007199254740992.0) {
                rc = s_fail(err, name, "expected a non-negative integer, found %g", d);
            } else {
                env_set_uint(e, (enum env_key)k, (uint64_t)d);
            }
            break;
        }
        default:
            buf_reset(tmp);
            if (mp_pack_json(&pk, c) != 0) {
                rc = s_fail(err, name, "out of memory");
            } else {
                rc = env_set_raw(e, (enum env_key)k, tmp->data, tmp->len, err);
            }
        }
    }
    return rc;
}

int env_to_json(const struct env *e, struct buf *out)
{
    /* Value by value: each is held to MP_MAX_DEPTH from itself, as
     * env_decode holds it, not from the top of the envelope. */
    struct buf tmp = { 0 };
    struct mp_reader r;
    struct mp_val map;
    int rc = env_encode(e, &tmp);
    if (rc != 0) {
        goto done;
    }
    mp_reader_init(&r, tmp.data, tmp.len);
    if (mp_read(&r, &map) != 0) {
        rc = -1;
        goto done;
    }
    rc = buf_putc(out, '{');
    for (uint32_t i = 0; rc == 0 && i < map.n; i++) {
        struct mp_val key;
        if (mp_read(&r, &key) != 0) {
            rc = -1;
            goto done;
        }
        struct mp_reader end = r;
        if (mp_skip(&end) != 0) {
            rc = -1;
            goto done;
        }
        if (i > 0) {
            rc |= buf_putc(out, ',');
        }
        rc |= buf_json_str(out, key.s, key.n);
        rc |= buf_putc(out, ':');
        rc |= mp_to_json(r.p, (size_t)(end.p - r.p), out);
        r = end;
    }
    rc |= buf_putc(out, '}');
done:
    buf_free(&tmp);
    return rc == 0 ? 0 : -1;
}

const char *env_err_str(const struct env_err *err, char *out, size_t n)
{
    snprintf(out, n, "field=%s reason=\"%s\"", err->field, err->reason);
    return out;
}

int env_set_map(struct env *e, enum env_key k, const struct env_kv *kv, size_t n,
                struct env_err *err)
{
    assert(k < ENV_NKEYS && s_keys[k].kind == K_MAP);
    struct buf *tmp = &e->scratch;
    buf_reset(tmp);
    msgpack_packer pk;
    msgpack_packer_init(&pk, tmp, mp_buf_write);
    size_t count = 0;
    for (size_t i = 0; i < n; i++) {
        count += !(kv[i].type == ENV_KV_STR && kv[i].s == NULL);
    }
    int rc = msgpack_pack_map(&pk, count);
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (kv[i].type == ENV_KV_STR && kv[i].s == NULL) {
            continue;
        }
        size_t kl = strlen(kv[i].key);
        rc |= msgpack_pack_str_with_body(&pk, kv[i].key, kl);
        switch (kv[i].type) {
        case ENV_KV_STR:
            if (!utf8_is_valid(kv[i].s, strlen(kv[i].s))) {
                return s_fail(err, s_keys[k].name, "entry '%s' is not valid UTF-8", kv[i].key);
            }
            rc |= msgpack_pack_str_with_body(&pk, kv[i].s, strlen(kv[i].s));
            break;
        case ENV_KV_INT:
            rc |= msgpack_pack_int64(&pk, kv[i].i);
            break;
        case ENV_KV_BOOL:
            rc |= kv[i].b ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk);
            break;
        case ENV_KV_FLOAT:
            rc |= msgpack_pack_double(&pk, kv[i].f);
            break;
        }
    }
    if (rc != 0) {
        return s_fail(err, s_keys[k].name, "out of memory");
    }
    return env_set_raw(e, k, tmp->data, tmp->len, err);
}

/* Finds entry name in map key k; leaves r at its value. */
static int s_map_find(const struct env *e, enum env_key k, const char *name, struct mp_reader *r)
{
    assert(k < ENV_NKEYS && s_keys[k].kind == K_MAP);
    size_t n;
    const void *p = env_raw(e, k, &n);
    if (p == NULL) {
        return 0;
    }
    mp_reader_init(r, p, n);
    struct mp_val m;
    if (mp_read(r, &m) != 0 || m.type != MP_MAP) {
        return 0;
    }
    size_t nl = strlen(name);
    for (uint32_t i = 0; i < m.n; i++) {
        struct mp_val key;
        if (mp_read(r, &key) != 0) {
            return 0;
        }
        if (key.type == MP_STR && key.n == nl && memcmp(key.s, name, nl) == 0) {
            return 1;
        }
        if (mp_skip(r) != 0) {
            return 0;
        }
    }
    return 0;
}

int env_map_str(const struct env *e, enum env_key k, const char *name, char *out, size_t n)
{
    struct mp_reader r;
    struct mp_val v;
    if (s_map_find(e, k, name, &r) == 0) {
        return 0;
    }
    if (mp_read(&r, &v) != 0 || v.type != MP_STR) {
        return -1;
    }
    if (n > 0) {
        size_t len = v.n < n - 1 ? v.n : n - 1;
        memcpy(out, v.s, len);
        out[len] = '\0';
    }
    return 1;
}

int env_map_buf(const struct env *e, enum env_key k, const char *name, struct buf *out)
{
    buf_reset(out);
    size_t n;
    const void *p = env_map_raw(e, k, name, &n);
    struct mp_reader r;
    struct mp_val v;
    if (p == NULL) {
        return 0;
    }
    mp_reader_init(&r, p, n);
    if (mp_read(&r, &v) != 0 || v.type != MP_STR) {
        return 0;
    }
    return buf_append(out, v.s, v.n) == 0 ? 1 : -1;
}

int env_map_int(const struct env *e, enum env_key k, const char *name, int64_t *out)
{
    struct mp_reader r;
    struct mp_val v;
    if (s_map_find(e, k, name, &r) == 0) {
        return 0;
    }
    if (mp_read(&r, &v) != 0) {
        return -1;
    }
    if (v.type == MP_UINT && v.u <= INT64_MAX) {
        *out = (int64_t)v.u;
        return 1;
    }
    if (v.type == MP_INT) {
        *out = v.i;
        return 1;
    }
    return -1;
}

int env_map_bool(const struct env *e, enum env_key k, const char *name, bool *out)
{
    struct mp_reader r;
    struct mp_val v;
    if (s_map_find(e, k, name, &r) == 0) {
        return 0;
    }
    if (mp_read(&r, &v) != 0 || v.type != MP_BOOL) {
        return -1;
    }
    *out = v.b;
    return 1;
}

const void *env_map_raw(const struct env *e, enum env_key k, const char *name, size_t *n)
{
    struct mp_reader r;
    if (s_map_find(e, k, name, &r) == 0) {
        *n = 0;
        return NULL;
    }
    const uint8_t *start = r.p;
    if (mp_skip(&r) != 0) {
        *n = 0;
        return NULL;
    }
    *n = (size_t)(r.p - start);
    return start;
}
