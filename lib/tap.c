/* tap — envelopes -> JSON lines, one per envelope with every key (unknown
 * ones too), or with --count only the total. Reads stdin, a PULL endpoint,
 * or with --sub another tool's --tap. */
#include "tap.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "buf.h"
#include "log.h"

struct tap_conf {
    bool count;             /* print only the total */
    int64_t max;            /* stop after this many (0: no limit) */
    int64_t idle_exit_ms;   /* stop after this long without input (0: never) */
};

struct tap {
    struct tap_conf *conf;  /* options */
    struct buf json;        /* one line being built */
    uint64_t n;             /* envelopes seen */
    uint64_t last_ms;       /* when input last arrived (or the start) */
    bool tty;               /* stdout is a terminal: flush every line */
};

static const struct opt s_opts[] = {
    { "count", OPT_BOOL, "no", offsetof(struct tap_conf, count),
      "print only the number of envelopes, at the end" },
    { "max", OPT_INT, "0", offsetof(struct tap_conf, max),
      "stop after this many envelopes (0: no limit)" },
    { "idle-exit", OPT_MS, "0", offsetof(struct tap_conf, idle_exit_ms),
      "stop when nothing has arrived for this long (0: never)" },
    { NULL, 0, NULL, 0, NULL }
};

static int s_init(struct stage_ctx *ctx, void *conf, void **state)
{
    (void)ctx;
    struct tap *t = calloc(1, sizeof *t);
    if (t == NULL) {
        return EXIT_SOFTWARE;
    }
    t->conf = conf;
    t->last_ms = stage_mono_ms();
    t->tty = isatty(STDOUT_FILENO);
    if (!t->tty) {
        static char obuf[1 << 16];
        setvbuf(stdout, obuf, _IOFBF, sizeof obuf);
    }
    *state = t;
    return 0;
}

static enum verdict s_handle(void *state, struct stage_ctx *ctx, struct env *e)
{
    struct tap *t = state;
    t->n++;
    t->last_ms = stage_mono_ms();
    if (!t->conf->count) {
        buf_reset(&t->json);
        if (env_to_json(e, &t->json) != 0 || buf_putc(&t->json, '\n') != 0) {
            log_msg(LOG_ERROR, "out of memory printing id=%s", env_get(e, ENV_ID));
        } else if (fwrite(t->json.data, 1, t->json.len, stdout) != t->json.len) {
            log_msg(LOG_DEBUG, "stdout closed");
            stage_stop(ctx);
        } else if (t->tty) {
            fflush(stdout);
        }
    }
    if (t->conf->max > 0 && t->n >= (uint64_t)t->conf->max) {
        stage_stop(ctx);
    }
    return STAGE_DROP;
}

static void s_tick(void *state, struct stage_ctx *ctx)
{
    struct tap *t = state;
    fflush(stdout);
    if (t->conf->idle_exit_ms > 0 && stage_mono_ms() - t->last_ms >= (uint64_t)t->conf->idle_exit_ms) {
        log_msg(LOG_DEBUG, "idle for %lld ms: stopping", (long long)t->conf->idle_exit_ms);
        stage_stop(ctx);
    }
}

static void s_fini(void **state)
{
    struct tap *t = *state;
    if (t->conf->count) {
        printf("%llu\n", (unsigned long long)t->n);
    }
    fflush(stdout);
    buf_free(&t->json);
    free(t);
    *state = NULL;
}

const struct stage tap_stage = {
    .name = "tap",
    .summary = "Prints envelopes as JSON lines, one per envelope with every key; --count prints only a total.",
    .options = s_opts,
    .conf_size = sizeof(struct tap_conf),
    .flags = STAGE_SINK | STAGE_SUB,
    .init = s_init,
    .handle = s_handle,
    .tick = s_tick,
    .fini = s_fini,
};
