/* stage — the runner every tool uses. A tool describes itself with one
 * struct stage; stage_main() parses options (argv and OMNI_*), opens the
 * endpoints, handles signals (SIGTERM drains and exits 0, SIGHUP reloads),
 * tells systemd when it is ready, and runs the loop:
 *
 *   filters (identity, route, bot, archive): envelopes in -> handle() ->
 *     envelopes out, each stamped in `trace`, copied to --tap;
 *   sources (inject, ingestors): run() produces envelopes with stage_emit();
 *   sinks (tap, metrics): handle() consumes, nothing goes out.
 *
 * Malformed input is never dropped silently: it is counted, logged (rate
 * limited) with its id or first bytes, and written to --dead if given. */
#ifndef OMNI_STAGE_H
#define OMNI_STAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "envelope.h"
#include "endpoint.h"
#include "opt.h"

/* Exit codes, from <sysexits.h>. */
#define EXIT_USAGE 64       /* bad command line */
#define EXIT_DATAERR 65     /* bad input data (--strict) */
#define EXIT_UNAVAILABLE 69 /* a service or endpoint is not there */
#define EXIT_SOFTWARE 70    /* internal error */
#define EXIT_IOERR 74       /* input/output error */
#define EXIT_TEMPFAIL 75    /* try again later */
#define EXIT_CONFIG 78      /* bad configuration */

/* What handle() decided about one envelope. */
enum verdict {
    STAGE_PASS,     /* send it on (after a trace stamp) */
    STAGE_DROP,     /* consumed here; nothing goes on */
    STAGE_RETRY,    /* cannot now (e.g. SQLITE_BUSY): try again after a backoff */
    STAGE_HELD,     /* the stage keeps a copy and stage_emit()s it later
                       (e.g. once its batch has committed) */
};

#define STAGE_SOURCE 0x1u   /* no --in: run() produces the envelopes */
#define STAGE_SINK 0x2u     /* no --out: handle() consumes them */
#define STAGE_ARGS 0x4u     /* takes positional arguments (files) */
#define STAGE_SUB 0x8u      /* offers --sub: read --in as a subscriber of a tap */

struct stage_ctx;

struct stage {
    const char *name;           /* "route": the binary is omni-route */
    const char *summary;        /* one line for --help */
    const char *args;           /* positional arguments for --help, e.g. "[FILE...]" */
    const struct opt *options;  /* the stage's own options, or NULL */
    size_t conf_size;           /* bytes of the struct its options fill */
    unsigned flags;             /* STAGE_* */
    /* Opens what the stage needs; *state is handed to every call. Returns
     * 0, or an exit code (EXIT_CONFIG, EXIT_UNAVAILABLE, ...). */
    int (*init)(struct stage_ctx *ctx, void *conf, void **state);
    /* For --check: validates the configuration without serving. */
    int (*check)(struct stage_ctx *ctx, void *conf);
    /* One envelope, already decoded and checked. May change it, and may
     * stage_emit() others (replies). */
    enum verdict (*handle)(void *state, struct stage_ctx *ctx, struct env *e);
    /* Sources: the whole loop; returns the exit code. */
    int (*run)(void *state, struct stage_ctx *ctx);
    /* Called about every --tick (sooner after stage_wake_in), and once more
     * at the end, with stage_stopping() true, to flush what is held. */
    void (*tick)(void *state, struct stage_ctx *ctx);
    /* SIGHUP. */
    void (*reload)(void *state, struct stage_ctx *ctx);
    /* Closes what init opened; NULLs *state. */
    void (*fini)(void **state);
};

/* Runs the tool; returns its exit code. */
int stage_main(const struct stage *st, int argc, char **argv);

/* Stamps e in trace, encodes it, and sends it to --out (waiting while the
 * next stage is full) and a copy to --tap. Returns 0, or -1 when it could
 * not be delivered (stopping past the drain time, or the output failed). */
int stage_emit(struct stage_ctx *ctx, struct env *e);
/* Like stage_emit, but to a source's own endpoints (out, and tap when not
 * NULL), and never waiting: for sources that keep what cannot go now (a
 * spool). Returns 0 sent, 1 not now (the next stage is full or away), -1
 * failed (logged; stdout closed also stops the stage). */
int stage_emit_to(struct stage_ctx *ctx, struct ep *out, struct ep *tap, struct env *e);
/* Opens an endpoint a stage keeps itself (a source's --out and --tap,
 * omni-bot's --handoffs...) as the runner opens its own: with --hwm,
 * --linger and CurveZMQ. NULL or empty text: nothing (*ep stays NULL).
 * ctx NULL: only checks the text, for --check. Errors are logged with
 * --option. Returns 0, EXIT_USAGE (bad text) or EXIT_UNAVAILABLE. */
int stage_open_ep(struct stage_ctx *ctx, const char *option, const char *text, enum ep_role role,
                  struct ep **ep);
/* Reports bad input: counts it, logs it (rate limited) and writes it to
 * --dead. label says which input ("id=01J…", "line=17"); when NULL the
 * first bytes are shown. raw is what came in (or its first bytes). */
void stage_reject(struct stage_ctx *ctx, const void *raw, size_t n, const char *label,
                  const char *reason);
/* Asks for tick() within ms (sooner than --tick), e.g. to close a batch. */
void stage_wake_in(struct stage_ctx *ctx, int64_t ms);
/* Asks the loop to stop after the current envelope (no drain). */
void stage_stop(struct stage_ctx *ctx);
/* True once SIGTERM or SIGINT has arrived (checks without blocking). */
bool stage_stopping(struct stage_ctx *ctx);
/* Sources: waits until fd is readable, a signal arrives, or timeout_ms
 * passes. Returns 1 readable, 0 timeout, -1 stopping. */
int stage_wait_fd(struct stage_ctx *ctx, int fd, int timeout_ms);
/* Positional arguments (STAGE_ARGS). */
char **stage_args(struct stage_ctx *ctx, int *n);
/* The process's ZeroMQ context, for stages with sockets of their own. */
void *stage_zctx(struct stage_ctx *ctx);
/* The process's CurveZMQ settings (--curve-key ...), or NULL: for stages
 * that open sockets of their own, to put in their struct ep_opts. */
const struct curve *stage_curve(const struct stage_ctx *ctx);
/* Wall-clock ms since epoch. */
uint64_t stage_now_ms(void);
/* Monotonic ms, for intervals. */
uint64_t stage_mono_ms(void);
/* "route", as in the descriptor. */
const char *stage_name(const struct stage_ctx *ctx);
/* Counters, for logs and metrics. */
struct stage_stats {
    uint64_t in;            /* envelopes read */
    uint64_t out;           /* envelopes written to --out */
    uint64_t bad;           /* malformed input rejected */
    uint64_t dropped;       /* verdict DROP */
    uint64_t retried;       /* verdict RETRY */
    uint64_t held;          /* verdict HELD */
    uint64_t lost;          /* could not be delivered at shutdown */
};
const struct stage_stats *stage_stats(const struct stage_ctx *ctx);

#endif
