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

static const struct {
    const char *name;   /* the key on the wire */
    enum s_kind kind;   /* how its value is read */
    uint32_t max;       /* longest string accepted */
} s_keys[ENV_NKEYS] = {
    [ENV_V]            = { "v", K_UINT, 0 },
    [ENV_ID]           = { "id", K_STR, ENV_MAX_SHORT },
    [ENV_SRC_ID]       = { "src_id", K_STR, ENV_MAX_SHORT },
    [ENV_TS]           = { "ts", K_UINT, 0 },
    [ENV_CHANNEL]      = { "channel", K_STR, ENV_MAX_SHORT },
    [ENV_DIR]          = { "dir", K_STR, ENV_MAX_SHORT },
    [ENV_FROM]         = { "from", K_STR, ENV_MAX_SHORT },
    [ENV_TO]           = { "to", K_STR, ENV_MAX_SHORT },
    [ENV_SUBJECT]      = { "subject", K_STR, ENV_MAX_SUBJECT },
    [ENV_TEXT]         = { "text", K_STR, ENV_MAX_TEXT },
    [ENV_ATTACHMENTS]  = { "attachments", K_ARRAY, 0 },
    [ENV_CUSTOMER]     = { "customer", K_STR, ENV_MAX_SHORT },
    [ENV_CONVERSATION] = { "conversation", K_STR, ENV_MAX_SHORT },
    [ENV_ROUTE]        = { "route", K_MAP, 0 },
    [ENV_REPLY_TO]     = { "reply_to", K_STR, ENV_MAX_SHORT },
    [ENV_BOT]          = { "bot", K_MAP, 0 },
    [ENV_META]         = { "meta", K_MAP, 0 },
    [ENV_TRACE]        = { "trace", K_TRACE, 0 },
};

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
    buf_reset(&e->store);
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
    for (int k = 0; k < ENV_NKEYS; k++) {
        if (strlen(s_keys[k].name) == n && memcmp(s_keys[k].name, name, n) == 0) {
            return k;
        }
    }
    return -1;
}

static bool s_in_list(const char *const *list, const char *s)
{
    for (; *list != NULL; list++) {
        if (strcmp(*list, s) == 0) {
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

/* Appends bytes to the store; -1 when the envelope would pass its bound. */
static int s_store(struct env *e, const void *p, size_t n, bool nul, struct env_span *out)
{
    if (e->store.len + n + 1 > ENV_MAX_BYTES * 2u) {
        return -1;
    }
    /* p may point into the store itself: keep its offset across a realloc. */
    const char *base = e->store.data;
    bool inside = base != NULL && (const char *)p >= base
                  && (const char *)p < base + e->store.len;
    size_t off = inside ? (size_t)((const char *)p - base) : 0;
    if (buf_reserve(&e->store, n + 1) != 0) {
        return -1;
    }
    if (inside) {
        p = e->store.data + off;
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

static int s_check_str(enum env_key k, const char *s, size_t n, struct env_err *err)
{
    const char *name = s_keys[k].name;
    if (n > s_keys[k].max) {
        return s_fail(err, name, "string of %zu bytes is longer than %u", n, s_keys[k].max);
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

int env_setn(struct env *e, enum env_key k, const char *s, size_t n, struct env_err *err)
{
    assert(k < ENV_NKEYS && s_keys[k].kind == K_STR);
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
}

void env_set_uint(struct env *e, enum env_key k, uint64_t value)
{
    assert(k == ENV_V || k == ENV_TS);
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

/* Checks that a map/array value in r (one whole value) has the shape its key
 * wants, and advances r past it. */
static int s_check_raw(enum env_key k, struct mp_reader *r, struct env_err *err)
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

int env_set_raw(struct env *e, enum env_key k, const void *p, size_t n, struct env_err *err)
{
    struct mp_reader r;
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
    for (uint32_t i = 0; i < v.n; i++) {
        const uint8_t *kstart = r.p;
        struct mp_val key;
        if (mp_read(&r, &key) != 0) {
            return s_fail(err, "envelope", "truncated msgpack at key #%u", i + 1);
        }
        if (key.type != MP_STR) {
            return s_fail(err, "envelope", "key #%u is %s, not str", i + 1, mp_type_name(key.type));
        }
        if (key.n > ENV_MAX_KEY) {
            return s_fail(err, "envelope", "key #%u is longer than %u bytes", i + 1, ENV_MAX_KEY);
        }
        if (!utf8_is_valid(key.s, key.n)) {
            return s_fail(err, "envelope", "key #%u is not valid UTF-8", i + 1);
        }
        int k = env_key_find(key.s, key.n);
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
            continue;
        }
        const char *name = s_keys[k].name;
        if (env_has(e, (enum env_key)k)) {
            return s_fail(err, name, "duplicate key");
        }
        const uint8_t *vstart = r.p;
        switch (s_keys[k].kind) {
        case K_STR: {
            struct mp_val sv;
            if (mp_read(&r, &sv) != 0) {
                return s_fail(err, name, "truncated msgpack");
            }
            if (sv.type != MP_STR) {
                return s_fail(err, name, "expected str, found %s", mp_type_name(sv.type));
            }
            if (env_setn(e, (enum env_key)k, sv.s, sv.n, err) != 0) {
                return -1;
            }
            break;
        }
        case K_UINT: {
            struct mp_val uv;
            if (mp_read(&r, &uv) != 0) {
                return s_fail(err, name, "truncated msgpack");
            }
            if (uv.type != MP_UINT) {
                return s_fail(err, name, "expected uint, found %s", mp_type_name(uv.type));
            }
            env_set_uint(e, (enum env_key)k, uv.u);
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
    bool message = strcmp(dir, "event") != 0;
    if (strcmp(dir, "in") == 0 && !env_has(e, ENV_FROM)) {
        return s_fail(err, "from", "missing on an inbound message");
    }
    if (strcmp(dir, "out") == 0 && !env_has(e, ENV_TO)) {
        return s_fail(err, "to", "missing on an outbound message");
    }
    if (message && !env_has(e, ENV_TEXT) && !env_has(e, ENV_ATTACHMENTS)) {
        return s_fail(err, "text", "missing (a message needs text or attachments)");
    }
    return 0;
}

int env_encode(const struct env *e, struct buf *out)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, mp_buf_write);
    unsigned count = (unsigned)__builtin_popcount(e->present) + e->n_extra;
    int rc = msgpack_pack_map(&pk, count);
    for (int k = 0; k < ENV_NKEYS && rc == 0; k++) {
        if (k == ENV_TRACE) {
            /* Unknown keys go before trace, which stays last. */
            for (uint32_t x = 0; x < e->n_extra && rc == 0; x++) {
                rc |= buf_append(out, e->store.data + e->extra[x].off, e->extra[x].len);
            }
        }
        if (!env_has(e, (enum env_key)k)) {
            continue;
        }
        size_t kl = strlen(s_keys[k].name);
        rc |= msgpack_pack_str(&pk, kl);
        rc |= msgpack_pack_str_body(&pk, s_keys[k].name, kl);
        /* Numbers live outside the store, which may still be unallocated. */
        const char *p = s_keys[k].kind == K_UINT ? NULL : e->store.data + e->val[k].off;
        switch (s_keys[k].kind) {
        case K_STR:
            rc |= msgpack_pack_str(&pk, e->val[k].len);
            rc |= msgpack_pack_str_body(&pk, p, e->val[k].len);
            break;
        case K_UINT:
            rc |= msgpack_pack_uint64(&pk, k == ENV_V ? e->v : e->ts);
            break;
        default:
            rc |= buf_append(out, p, e->val[k].len);
        }
    }
    return rc == 0 ? 0 : -1;
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
    /* Reserve first, so the old elements do not move while they are copied. */
    if (e->store.len + elems_len + sl + 32 > ENV_MAX_BYTES * 2u
        || buf_reserve(&e->store, elems_len + sl + 32) != 0) {
        return -1;
    }
    size_t start = e->store.len;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &e->store, mp_buf_write);
    int rc = msgpack_pack_array(&pk, count + 1);
    rc |= buf_append(&e->store, e->store.data + elems_off, elems_len);
    rc |= msgpack_pack_array(&pk, 2);
    rc |= msgpack_pack_str(&pk, sl);
    rc |= msgpack_pack_str_body(&pk, stage, sl);
    rc |= msgpack_pack_uint64(&pk, ms);
    if (rc != 0) {
        e->store.len = start;
        return -1;
    }
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
    struct buf tmp = { 0 };
    msgpack_packer pk;
    msgpack_packer_init(&pk, &tmp, mp_buf_write);
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
            buf_reset(&tmp);
            rc = msgpack_pack_str(&pk, kn) | msgpack_pack_str_body(&pk, c->string, kn);
            rc |= mp_pack_json(&pk, c);
            /* Held to the depth env_decode allows, so that what is built
             * here decodes downstream. */
            struct mp_reader vr;
            struct mp_val kv;
            mp_reader_init(&vr, tmp.data, tmp.len);
            if (rc != 0) {
                rc = s_fail(err, c->string, "out of memory or envelope too large");
            } else if (mp_read(&vr, &kv) != 0 || mp_skip(&vr) != 0) {
                rc = s_fail(err, "envelope", "value of key '%.32s' is nested deeper than %d",
                            c->string, MP_MAX_DEPTH);
            } else if (s_add_extra(e, tmp.data, tmp.len) != 0) {
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
            buf_reset(&tmp);
            if (mp_pack_json(&pk, c) != 0) {
                rc = s_fail(err, name, "out of memory");
            } else {
                rc = env_set_raw(e, (enum env_key)k, tmp.data, tmp.len, err);
            }
        }
    }
    buf_free(&tmp);
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
    struct buf tmp = { 0 };
    msgpack_packer pk;
    msgpack_packer_init(&pk, &tmp, mp_buf_write);
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
                buf_free(&tmp);
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
        buf_free(&tmp);
        return s_fail(err, s_keys[k].name, "out of memory");
    }
    rc = env_set_raw(e, k, tmp.data, tmp.len, err);
    buf_free(&tmp);
    return rc;
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
