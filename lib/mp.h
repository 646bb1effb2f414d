/* mp — a bounds-checked msgpack reader that knows where each value starts and
 * ends, plus generic msgpack <-> JSON conversion.
 *
 * msgpack-c packs (msgpack_packer);
 * this reader exists because the envelope must carry unknown keys byte for
 * byte, and msgpack-c's object tree does not say which bytes a value came
 * from. It knows nothing of envelopes: lib/envelope.c owns that schema. */
#ifndef OMNI_MP_H
#define OMNI_MP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <msgpack.h>

#include "buf.h"

#define MP_MAX_DEPTH 64

enum mp_type {
    MP_NIL, MP_BOOL, MP_UINT, MP_INT, MP_FLOAT, MP_STR, MP_BIN, MP_ARRAY, MP_MAP, MP_EXT
};

/* One decoded header: a scalar's value, or a container's element count. */
struct mp_val {
    enum mp_type type;      /* what was read */
    bool b;                 /* MP_BOOL */
    uint64_t u;             /* MP_UINT */
    int64_t i;              /* MP_INT (negative values only) */
    double f;               /* MP_FLOAT (float 32 widened) */
    const char *s;          /* MP_STR, MP_BIN, MP_EXT: the bytes, in place */
    uint32_t n;             /* bytes of s, or elements of an array / pairs of a map */
    int8_t ext;             /* MP_EXT: the type code */
};

/* A cursor over one buffer. */
struct mp_reader {
    const uint8_t *p;       /* next byte to read */
    const uint8_t *end;     /* one past the last byte */
};

static inline void mp_reader_init(struct mp_reader *r, const void *p, size_t n)
{
    r->p = p;
    r->end = (const uint8_t *)p + n;
}

/* Reads one header. Returns 0, or -1 when the buffer ends inside it or the
 * byte is not msgpack (0xc1). Strings are not UTF-8 checked here. */
int mp_read(struct mp_reader *r, struct mp_val *v);
/* Skips one whole value, nested ones included, at most MP_MAX_DEPTH deep.
 * Returns 0, or -1 when truncated, invalid or too deep. */
int mp_skip(struct mp_reader *r);
/* mp_skip for a value that sits depth levels inside another: what mp_skip
 * of the outer value would require of it. */
int mp_skip_at(struct mp_reader *r, int depth);
/* Length of the msgpack value at p[0..n), nested values included, at any
 * depth (it counts the values still due, it does not recurse): > 0, 0 when
 * the bytes end inside it, -1 when a value starts with 0xc1 (not msgpack). */
long mp_frame(const void *p, size_t n);
/* Name of a type, for error messages ("str", "map", ...). */
const char *mp_type_name(enum mp_type t);

/* Appends the value at p[0..n) (one whole value) as JSON text. Strings with
 * invalid UTF-8 get U+FFFD, bin and ext become base64, non-string map keys
 * are written as strings. Returns 0, or -1 on malformed msgpack. */
int mp_to_json(const void *p, size_t n, struct buf *out);

/* Packs a cJSON value as msgpack: integral numbers that fit become ints,
 * others float 64. Returns 0, or -1 when the packer fails. */
int mp_pack_json(msgpack_packer *pk, const cJSON *j);

/* A msgpack_packer write callback that appends to a struct buf. */
int mp_buf_write(void *data, const char *p, size_t n);

#endif
