/* log — the one log line format, on stderr, for journald:
 *   omni-route[@instance]: warn: dropped envelope id=01J… reason="no channel"
 * Repeated per-message errors go through a log_limit so that a flood is
 * summarised, never silent. */
#ifndef OMNI_LOG_H
#define OMNI_LOG_H

#include <stdint.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* A rate limiter a caller keeps per kind of message. */
struct log_limit {
    int64_t window_ms;      /* start of the current window (monotonic ms) */
    unsigned emitted;       /* lines emitted in this window */
    unsigned suppressed;    /* lines held back since the last one emitted */
};

/* Sets the program name ("omni-route") and optional instance ("2"). The
 * strings must outlive the process's logging. */
void log_init(const char *prog, const char *instance);
void log_set_level(enum log_level level);
/* Parses "debug", "info", "warn", "error"; returns -1 when unknown. */
int log_level_parse(const char *s);
const char *log_prog(void);
void log_msg(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Like log_msg, at most 10 lines per 10 s per limiter; the next line let
 * through after a pause says how many were held back. */
void log_limited(struct log_limit *lim, enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
