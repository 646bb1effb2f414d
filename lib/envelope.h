/* envelope — the one msgpack encoder/decoder of the envelope in DESIGN.md.
 * Every tool reads and writes envelopes through this file only.
 *
 * An envelope is a msgpack map with string keys. Known keys are decoded into
 * fields and validated (type, size, UTF-8); map and array values (route,
 * bot, meta, attachments, trace) are kept as their msgpack bytes; unknown
 * keys are carried through byte for byte. Strings handed out are
 * NUL-terminated and stay valid until the envelope is next changed.
 *
 * Change an envelope through these functions only, never its fields: an
 * envelope that comes in already in env_encode's form and changes only by
 * env_trace_add is encoded by copying what came in (struct env's wire). */
#ifndef OMNI_ENVELOPE_H
#define OMNI_ENVELOPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "buf.h"

#define ENV_VERSION 1
#define ENV_MAX_BYTES (4u << 20)    /* a whole envelope */
#define ENV_MAX_TEXT (512u << 10)   /* text */
#define ENV_MAX_SUBJECT 2048u       /* subject */
#define ENV_MAX_SHORT 1024u         /* every other string field */
#define ENV_MAX_KEY 256u            /* a key, unknown ones included */

/* Known keys, in the order they are written. */
enum env_key {
    ENV_V,              /* uint: schema version */
    ENV_ID,             /* str: ULID of this message */
    ENV_SRC_ID,         /* str: the channel's own id */
    ENV_TS,             /* uint: ms since epoch */
    ENV_CHANNEL,        /* str: whatsapp, sms, ... */
    ENV_DIR,            /* str: in, out, event */
    ENV_FROM,           /* str: handle URI */
    ENV_TO,             /* str: handle URI */
    ENV_SUBJECT,        /* str: e-mail subject */
    ENV_TEXT,           /* str: body */
    ENV_ATTACHMENTS,    /* array of maps */
    ENV_CUSTOMER,       /* str: unified customer id */
    ENV_CONVERSATION,   /* str: conversation id */
    ENV_ROUTE,          /* map: routing decision */
    ENV_REPLY_TO,       /* str: id answered */
    ENV_BOT,            /* map: bot decision */
    ENV_META,           /* map: channel extras */
    ENV_TRACE,          /* array of [stage, ms] */
    ENV_NKEYS
};

/* Why an envelope was refused: the field, and what was wrong with it. */
struct env_err {
    char field[40];     /* key name, or "envelope" for the whole */
    char reason[200];   /* human-readable, no trailing period */
};

/* Where a value lives in the envelope's store. */
struct env_span {
    uint32_t off;       /* byte offset into store */
    uint32_t len;       /* bytes (strings: without their NUL) */
};

struct env {
    uint64_t v;                     /* ENV_V when present */
    uint64_t ts;                    /* ENV_TS when present */
    uint32_t present;               /* bit (1 << key) per known key set */
    struct env_span val[ENV_NKEYS]; /* strings and msgpack values */
    struct env_span *extra;         /* unknown keys: key and value bytes */
    uint32_t n_extra;               /* entries used in extra */
    uint32_t cap_extra;             /* entries allocated in extra */
    struct buf store;               /* the bytes every span points into */
    struct buf wire;                /* the decoded input up to trace, when wire_ok */
    bool wire_ok;                   /* wire is what env_encode would write before
                                     * trace: the input was in its form, and
                                     * nothing but trace changed since */
    struct buf scratch;             /* where env_from_json and env_set_map pack
                                     * values, kept for the next call */
};

struct env *env_new(void);
void env_destroy(struct env **e);
/* Empties the envelope, keeping its memory for the next one. */
void env_clear(struct env *e);
/* Makes dst an independent copy of src. Returns 0 or -1 (out of memory). */
int env_copy(struct env *dst, const struct env *src);

/* Replaces e with the envelope in p[0..n). Checks structure, types, sizes
 * and UTF-8, not which fields are required (see env_check). Returns 0, or
 * -1 with err filled. */
int env_decode(struct env *e, const void *p, size_t n, struct env_err *err);
/* Checks what every envelope on the stream must have: v = 1, a ULID id, ts,
 * a known channel and dir, handles that are URIs, from on inbound, to on
 * outbound, text or attachments on messages. */
int env_check(const struct env *e, struct env_err *err);
/* Appends e as msgpack to out. Returns 0 or -1 (out of memory). */
int env_encode(const struct env *e, struct buf *out);

/* Builds e from a JSON object: known keys become fields (null = absent),
 * others are carried as unknown keys. Returns 0, or -1 with err filled. */
int env_from_json(struct env *e, const cJSON *obj, struct env_err *err);
/* Appends e as one JSON object (no newline) to out. */
int env_to_json(const struct env *e, struct buf *out);

static inline bool env_has(const struct env *e, enum env_key k)
{
    return (e->present >> k) & 1u;
}

/* The string value of a string key, or NULL when absent. */
const char *env_get(const struct env *e, enum env_key k);
/* Sets a string key, checking size, UTF-8 and NUL bytes. s may point into
 * e itself. Returns 0, or -1 with err filled (err may be NULL). */
int env_set(struct env *e, enum env_key k, const char *s, struct env_err *err);
int env_setn(struct env *e, enum env_key k, const char *s, size_t n, struct env_err *err);
void env_unset(struct env *e, enum env_key k);
void env_set_uint(struct env *e, enum env_key k, uint64_t value);

/* The msgpack bytes of a map or array key, or NULL when absent. */
const void *env_raw(const struct env *e, enum env_key k, size_t *n);
/* Sets a map or array key from msgpack bytes, validated as decode does. */
int env_set_raw(struct env *e, enum env_key k, const void *p, size_t n, struct env_err *err);
/* Appends [stage, ms] to trace. */
int env_trace_add(struct env *e, const char *stage, uint64_t ms);

/* One entry of a small map value (route, bot, meta), for env_set_map. */
enum env_kv_type { ENV_KV_STR, ENV_KV_INT, ENV_KV_BOOL, ENV_KV_FLOAT };
struct env_kv {
    const char *key;        /* entry name */
    enum env_kv_type type;  /* which value below is meant */
    const char *s;          /* ENV_KV_STR (NULL: the entry is left out) */
    int64_t i;              /* ENV_KV_INT */
    bool b;                 /* ENV_KV_BOOL */
    double f;               /* ENV_KV_FLOAT */
};

/* Sets a map key (route, bot, meta) to a map of these entries, replacing
 * what was there. Returns 0, or -1 with err filled. */
int env_set_map(struct env *e, enum env_key k, const struct env_kv *kv, size_t n,
                struct env_err *err);
/* Looks up entry name in a map key. Strings: copied NUL-terminated into
 * out[n] (truncated to fit). Return 1 found, 0 absent (or the key is
 * absent), -1 present with another type. */
int env_map_str(const struct env *e, enum env_key k, const char *name, char *out, size_t n);
/* env_map_str for a string of any length: copied into out (reset first,
 * NUL-terminated). Returns 1 found, 0 absent or not a string (out empty),
 * -1 out of memory. */
int env_map_buf(const struct env *e, enum env_key k, const char *name, struct buf *out);
int env_map_int(const struct env *e, enum env_key k, const char *name, int64_t *out);
int env_map_bool(const struct env *e, enum env_key k, const char *name, bool *out);
/* The msgpack bytes of entry name's value (e.g. an array), or NULL. */
const void *env_map_raw(const struct env *e, enum env_key k, const char *name, size_t *n);

/* The key's name ("id"), and the key for a name, or -1. */
const char *env_key_name(enum env_key k);
int env_key_find(const char *name, size_t n);
/* True for the channels and directions DESIGN.md lists. */
bool env_channel_valid(const char *s);
bool env_dir_valid(const char *s);

/* "field=text reason=\"...\"" for a log line, into out[n]. */
const char *env_err_str(const struct env_err *err, char *out, size_t n);

#endif
