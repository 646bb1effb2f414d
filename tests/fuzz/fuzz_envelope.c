/* fuzz_envelope — libFuzzer target for the envelope decoder (lib/envelope.c)
 * and the msgpack reader under it (lib/mp.c).
 *
 * For every input: mp_to_json must not crash; env_decode either refuses it
 * with a field named, or accepts it, and then env_check must not crash,
 * env_encode must give bytes that decode again, and encoding those gives
 * the very same bytes (the encoder is stable), and the JSON view of the
 * envelope must succeed. Any broken promise aborts, which libFuzzer
 * reports with the input. One envelope and a few buffers are reused across
 * inputs, as the tools reuse theirs. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "envelope.h"
#include "mp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct env s_env;        /* reused for every decode */
static struct buf s_first;      /* encoding of the input's envelope */
static struct buf s_second;     /* encoding of that encoding's envelope */
static struct buf s_json;       /* JSON views */

static void s_die(const char *what, const struct env_err *err)
{
    fprintf(stderr, "fuzz_envelope: %s", what);
    if (err != NULL) {
        fprintf(stderr, ": field=%s reason=%s", err->field, err->reason);
    }
    fputc('\n', stderr);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct env_err err;

    /* Any bytes: converted or refused, never a crash. */
    buf_reset(&s_json);
    (void)mp_to_json(data, size, &s_json);

    memset(&err, 0, sizeof err);
    if (env_decode(&s_env, data, size, &err) != 0) {
        if (err.field[0] == '\0' || err.reason[0] == '\0') {
            s_die("refused without saying why", NULL);
        }
        return 0;
    }
    int checked = env_check(&s_env, &err);

    buf_reset(&s_first);
    if (env_encode(&s_env, &s_first) != 0) {
        s_die("encode failed", NULL);
    }
    if (s_first.len > size) {
        s_die("encoding is longer than the input", NULL);
    }
    /* Whatever decodes, the JSON view can show (omni-tap relies on it). */
    buf_reset(&s_json);
    if (env_to_json(&s_env, &s_json) != 0) {
        s_die("decoded envelope has no JSON view", NULL);
    }

    /* The encoding is an envelope too, with the same verdict from env_check. */
    if (env_decode(&s_env, s_first.data, s_first.len, &err) != 0) {
        s_die("own encoding does not decode", &err);
    }
    if (env_check(&s_env, &err) != checked) {
        s_die("env_check changed its mind after a round trip", &err);
    }
    buf_reset(&s_second);
    if (env_encode(&s_env, &s_second) != 0) {
        s_die("second encode failed", NULL);
    }
    if (s_second.len != s_first.len || memcmp(s_second.data, s_first.data, s_first.len) != 0) {
        s_die("encoding is not stable", NULL);
    }
    return 0;
}
