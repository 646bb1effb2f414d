/* mp — bounded msgpack reader and msgpack <-> JSON; see mp.h. */
#include "mp.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static inline uint16_t s_be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t s_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t s_be64(const uint8_t *p)
{
    return (uint64_t)s_be32(p) << 32 | s_be32(p + 4);
}

/* Takes n header bytes after the type byte; -1 when they are not there. */
#define NEED(n) do { if ((size_t)(r->end - p) < (size_t)(n)) { return -1; } } while (0)

static int s_bytes(struct mp_reader *r, const uint8_t *p, uint32_t n, struct mp_val *v)
{
    if ((size_t)(r->end - p) < n) {
        return -1;
    }
    v->s = (const char *)p;
    v->n = n;
    r->p = p + n;
    return 0;
}

int mp_read(struct mp_reader *r, struct mp_val *v)
{
    const uint8_t *p = r->p;
    if (p >= r->end) {
        return -1;
    }
    uint8_t c = *p++;
    memset(v, 0, sizeof *v);
    if (c <= 0x7f) {
        v->type = MP_UINT;
        v->u = c;
    } else if (c <= 0x8f) {
        v->type = MP_MAP;
        v->n = c & 0x0f;
    } else if (c <= 0x9f) {
        v->type = MP_ARRAY;
        v->n = c & 0x0f;
    } else if (c <= 0xbf) {
        v->type = MP_STR;
        return s_bytes(r, p, c & 0x1f, v);
    } else if (c >= 0xe0) {
        v->type = MP_INT;
        v->i = (int8_t)c;
    } else {
        switch (c) {
        case 0xc0: v->type = MP_NIL; break;
        case 0xc2: v->type = MP_BOOL; v->b = false; break;
        case 0xc3: v->type = MP_BOOL; v->b = true; break;
        case 0xc4: NEED(1); v->type = MP_BIN; return s_bytes(r, p + 1, p[0], v);
        case 0xc5: NEED(2); v->type = MP_BIN; return s_bytes(r, p + 2, s_be16(p), v);
        case 0xc6: NEED(4); v->type = MP_BIN; return s_bytes(r, p + 4, s_be32(p), v);
        case 0xc7: NEED(2); v->type = MP_EXT; v->ext = (int8_t)p[1]; return s_bytes(r, p + 2, p[0], v);
        case 0xc8: NEED(3); v->type = MP_EXT; v->ext = (int8_t)p[2]; return s_bytes(r, p + 3, s_be16(p), v);
        case 0xc9: NEED(5); v->type = MP_EXT; v->ext = (int8_t)p[4]; return s_bytes(r, p + 5, s_be32(p), v);
        case 0xca: {
            NEED(4);
            uint32_t u = s_be32(p);
            float f;
            memcpy(&f, &u, 4);
            v->type = MP_FLOAT;
            v->f = f;
            p += 4;
            break;
        }
        case 0xcb: {
            NEED(8);
            uint64_t u = s_be64(p);
            memcpy(&v->f, &u, 8);
            v->type = MP_FLOAT;
            p += 8;
            break;
        }
        case 0xcc: NEED(1); v->type = MP_UINT; v->u = p[0]; p += 1; break;
        case 0xcd: NEED(2); v->type = MP_UINT; v->u = s_be16(p); p += 2; break;
        case 0xce: NEED(4); v->type = MP_UINT; v->u = s_be32(p); p += 4; break;
        case 0xcf: NEED(8); v->type = MP_UINT; v->u = s_be64(p); p += 8; break;
        case 0xd0: NEED(1); v->i = (int8_t)p[0]; p += 1; goto sint;
        case 0xd1: NEED(2); v->i = (int16_t)s_be16(p); p += 2; goto sint;
        case 0xd2: NEED(4); v->i = (int32_t)s_be32(p); p += 4; goto sint;
        case 0xd3: NEED(8); v->i = (int64_t)s_be64(p); p += 8; goto sint;
        case 0xd4: NEED(1); v->type = MP_EXT; v->ext = (int8_t)p[0]; return s_bytes(r, p + 1, 1, v);
        case 0xd5: NEED(1); v->type = MP_EXT; v->ext = (int8_t)p[0]; return s_bytes(r, p + 1, 2, v);
        case 0xd6: NEED(1); v->type = MP_EXT; v->ext = (int8_t)p[0]; return s_bytes(r, p + 1, 4, v);
        case 0xd7: NEED(1); v->type = MP_EXT; v->ext = (int8_t)p[0]; return s_bytes(r, p + 1, 8, v);
        case 0xd8: NEED(1); v->type = MP_EXT; v->ext = (int8_t)p[0]; return s_bytes(r, p + 1, 16, v);
        case 0xd9: NEED(1); v->type = MP_STR; return s_bytes(r, p + 1, p[0], v);
        case 0xda: NEED(2); v->type = MP_STR; return s_bytes(r, p + 2, s_be16(p), v);
        case 0xdb: NEED(4); v->type = MP_STR; return s_bytes(r, p + 4, s_be32(p), v);
        case 0xdc: NEED(2); v->type = MP_ARRAY; v->n = s_be16(p); p += 2; break;
        case 0xdd: NEED(4); v->type = MP_ARRAY; v->n = s_be32(p); p += 4; break;
        case 0xde: NEED(2); v->type = MP_MAP; v->n = s_be16(p); p += 2; break;
        case 0xdf: NEED(4); v->type = MP_MAP; v->n = s_be32(p); p += 4; break;
        default:
            return -1;      /* 0xc1: never used */
        }
    }
    r->p = p;
    return 0;
sint:
    /* Signed encodings of non-negative numbers are still numbers. */
    if (v->i >= 0) {
        v->type = MP_UINT;
        v->u = (uint64_t)v->i;
    } else {
        v->type = MP_INT;
    }
    r->p = p;
    return 0;
}

/* The value starting at p (p < end), header only: sets *next past the header
 * and, for everything but arrays and maps, past the payload too, and *items
 * to the values nested right inside (elements, or keys and values; 0 for
 * scalars). Returns 0, -1 when the bytes end inside it, 1 for 0xc1. Reads
 * what mp_read reads, without filling a struct mp_val; inlined, so that
 * next and items stay in registers. */
static inline __attribute__((always_inline))
int s_head(const uint8_t *p, const uint8_t *end, const uint8_t **next, uint64_t *items)
{
    uint8_t c = *p++;
    uint64_t len = 0;       /* payload bytes after the header */
    *items = 0;
    if (c <= 0x7f || c >= 0xe0) {
        *next = p;
        return 0;
    }
    if (c <= 0x9f) {
        *items = c <= 0x8f ? 2u * (c & 0x0f) : (c & 0x0f);
        *next = p;
        return 0;
    }
    if (c <= 0xbf) {
        len = c & 0x1f;
    } else {
        size_t avail = (size_t)(end - p);
        switch (c) {
        case 0xc0: case 0xc2: case 0xc3: break;
        case 0xc1: return 1;
        case 0xc4: case 0xd9: if (avail < 1) { return -1; } len = p[0]; p += 1; break;
        case 0xc5: case 0xda: if (avail < 2) { return -1; } len = s_be16(p); p += 2; break;
        case 0xc6: case 0xdb: if (avail < 4) { return -1; } len = s_be32(p); p += 4; break;
        case 0xc7: if (avail < 2) { return -1; } len = p[0]; p += 2; break;
        case 0xc8: if (avail < 3) { return -1; } len = s_be16(p); p += 3; break;
        case 0xc9: if (avail < 5) { return -1; } len = s_be32(p); p += 5; break;
        case 0xcc: case 0xd0: len = 1; break;
        case 0xcd: case 0xd1: len = 2; break;
        case 0xca: case 0xce: case 0xd2: len = 4; break;
        case 0xcb: case 0xcf: case 0xd3: len = 8; break;
        case 0xd4: len = 2; break;
        case 0xd5: len = 3; break;
        case 0xd6: len = 5; break;
        case 0xd7: len = 9; break;
        case 0xd8: len = 17; break;
        case 0xdc: if (avail < 2) { return -1; } *items = s_be16(p); p += 2; break;
        case 0xdd: if (avail < 4) { return -1; } *items = s_be32(p); p += 4; break;
        case 0xde: if (avail < 2) { return -1; } *items = 2u * s_be16(p); p += 2; break;
        default:   if (avail < 4) { return -1; } *items = 2u * (uint64_t)s_be32(p); p += 4; break;
        }
    }
    if (len > (uint64_t)(end - p)) {
        return -1;
    }
    *next = p + len;
    return 0;
}

/* Skips n values that sit depth levels down. */
static int s_skip_n(struct mp_reader *r, uint64_t n, int depth)
{
    if (n > 0 && depth > MP_MAX_DEPTH) {
        return -1;
    }
    const uint8_t *p = r->p;
    for (; n > 0; n--) {
        uint64_t items;
        if (p >= r->end || s_head(p, r->end, &p, &items) != 0) {
            return -1;
        }
        if (items > 0) {
            /* Every element takes at least one byte: a cheap bound on bogus
             * counts. */
            if (items > (uint64_t)(r->end - p)) {
                return -1;
            }
            r->p = p;
            if (s_skip_n(r, items, depth + 1) != 0) {
                return -1;
            }
            p = r->p;
        }
    }
    r->p = p;
    return 0;
}

int mp_skip(struct mp_reader *r)
{
    return s_skip_n(r, 1, 0);
}

int mp_skip_at(struct mp_reader *r, int depth)
{
    assert(depth >= 0);
    return s_skip_n(r, 1, depth);
}

long mp_frame(const void *p, size_t n)
{
    const uint8_t *c = p;
    const uint8_t *end = c + n;
    uint64_t due = 1;
    while (due > 0) {
        uint64_t items;
        if (c >= end) {
            return 0;
        }
        int rc = s_head(c, end, &c, &items);
        if (rc != 0) {
            return rc > 0 ? -1 : 0;
        }
        due = due - 1 + items;
    }
    return (long)(c - (const uint8_t *)p);
}

const char *mp_type_name(enum mp_type t)
{
    static const char *const names[] = {
        "nil", "bool", "uint", "int", "float", "str", "bin", "array", "map", "ext"
    };
    return names[t];
}

static int s_to_json(struct mp_reader *r, struct buf *out, int depth, bool as_key)
{
    struct mp_val v;
    struct mp_reader peek = *r;
    if (depth > MP_MAX_DEPTH) {
        return -1;
    }
    if (as_key && mp_read(&peek, &v) == 0
        && (v.type == MP_ARRAY || v.type == MP_MAP || v.type == MP_EXT)) {
        /* A container or ext as a key: its msgpack bytes in base64, as a
         * string. (Its JSON text, escaped, would double in size with every
         * level of keys inside keys.) */
        const uint8_t *start = r->p;
        if (mp_skip(r) != 0) {
            return -1;
        }
        int rc = buf_putc(out, '"');
        rc |= buf_base64(out, start, (size_t)(r->p - start));
        return rc | buf_putc(out, '"');
    }
    if (mp_read(r, &v) != 0) {
        return -1;
    }
    char num[40];
    int rc = 0;
    switch (v.type) {
    case MP_STR:
        return buf_json_str(out, v.s, v.n);
    case MP_NIL:
        snprintf(num, sizeof num, "null");
        break;
    case MP_BOOL:
        snprintf(num, sizeof num, "%s", v.b ? "true" : "false");
        break;
    case MP_UINT:
        snprintf(num, sizeof num, "%llu", (unsigned long long)v.u);
        break;
    case MP_INT:
        snprintf(num, sizeof num, "%lld", (long long)v.i);
        break;
    case MP_FLOAT:
        if (!isfinite(v.f)) {
            snprintf(num, sizeof num, "null");
        } else {
            snprintf(num, sizeof num, "%.17g", v.f);
        }
        break;
    case MP_BIN:
        rc |= buf_putc(out, '"');
        rc |= buf_base64(out, v.s, v.n);
        return rc | buf_putc(out, '"');
    case MP_EXT:
        rc |= buf_printf(out, "{\"ext\":%d,\"data\":\"", v.ext);
        rc |= buf_base64(out, v.s, v.n);
        return rc | buf_puts(out, "\"}");
    case MP_ARRAY:
    case MP_MAP:
        if ((uint64_t)v.n > (uint64_t)(r->end - r->p)) {
            return -1;
        }
        rc |= buf_putc(out, v.type == MP_MAP ? '{' : '[');
        for (uint32_t k = 0; k < v.n && rc == 0; k++) {
            if (k > 0) {
                rc |= buf_putc(out, ',');
            }
            if (v.type == MP_MAP) {
                if (s_to_json(r, out, depth + 1, true) != 0) {
                    return -1;
                }
                rc |= buf_putc(out, ':');
            }
            if (s_to_json(r, out, depth + 1, false) != 0) {
                return -1;
            }
        }
        return rc | buf_putc(out, v.type == MP_MAP ? '}' : ']');
    }
    if (as_key) {
        return buf_json_str(out, num, strlen(num));
    }
    return buf_puts(out, num);
}

int mp_to_json(const void *p, size_t n, struct buf *out)
{
    struct mp_reader r;
    mp_reader_init(&r, p, n);
    if (s_to_json(&r, out, 0, false) != 0 || r.p != r.end) {
        return -1;
    }
    return 0;
}

int mp_pack_json(msgpack_packer *pk, const cJSON *j)
{
    int rc = 0;
    if (cJSON_IsObject(j)) {
        int n = cJSON_GetArraySize(j);
        rc |= msgpack_pack_map(pk, (size_t)n);
        for (const cJSON *c = j->child; c != NULL && rc == 0; c = c->next) {
            size_t kl = strlen(c->string);
            rc |= msgpack_pack_str(pk, kl);
            rc |= msgpack_pack_str_body(pk, c->string, kl);
            rc |= mp_pack_json(pk, c);
        }
    } else if (cJSON_IsArray(j)) {
        rc |= msgpack_pack_array(pk, (size_t)cJSON_GetArraySize(j));
        for (const cJSON *c = j->child; c != NULL && rc == 0; c = c->next) {
            rc |= mp_pack_json(pk, c);
        }
    } else if (cJSON_IsString(j)) {
        size_t n = strlen(j->valuestring);
        rc |= msgpack_pack_str(pk, n);
        rc |= msgpack_pack_str_body(pk, j->valuestring, n);
    } else if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        if (d == floor(d) && d >= -9007199254740992.0 && d <= 9007199254740992.0) {
            if (d >= 0) {
                rc |= msgpack_pack_uint64(pk, (uint64_t)d);
            } else {
                rc |= msgpack_pack_int64(pk, (int64_t)d);
            }
        } else {
            rc |= msgpack_pack_double(pk, d);
        }
    } else if (cJSON_IsTrue(j)) {
        rc |= msgpack_pack_true(pk);
    } else if (cJSON_IsFalse(j)) {
        rc |= msgpack_pack_false(pk);
    } else {
        rc |= msgpack_pack_nil(pk);
    }
    return rc == 0 ? 0 : -1;
}

int mp_buf_write(void *data, const char *p, size_t n)
{
    return buf_append(data, p, n);
}
