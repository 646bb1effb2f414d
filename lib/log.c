/* log — one line format on stderr; see log.h. The program name is process
 * state set once by the runner, like a program's argv[0]. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"

static const char *s_prog = "omni";
static const char *s_instance;
static enum log_level s_level = LOG_INFO;

static const char *const s_names[] = { "debug", "info", "warn", "error" };

void log_init(const char *prog, const char *instance)
{
    s_prog = prog;
    s_instance = (instance != NULL && instance[0] != '\0') ? instance : NULL;
}

void log_set_level(enum log_level level)
{
    s_level = level;
}

int log_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, s_names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

const char *log_prog(void)
{
    return s_prog;
}

static void s_vlog(enum log_level level, const char *suffix, const char *fmt, va_list ap)
{
    char line[2048];
    int n;
    if (s_instance != NULL) {
        n = snprintf(line, sizeof line, "%s@%s: %s: ", s_prog, s_instance, s_names[level]);
    } else {
        n = snprintf(line, sizeof line, "%s: %s: ", s_prog, s_names[level]);
    }
    if (n < 0 || (size_t)n >= sizeof line) {
        return;
    }
    int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2) {
        len = sizeof line - 2;
    }
    if (suffix != NULL) {
        int k = snprintf(line + len, sizeof line - len, "%s", suffix);
        len += k > 0 ? (size_t)k : 0;
        if (len > sizeof line - 2) {
            len = sizeof line - 2;
        }
    }
    /* One line per message, even when the text carried a newline. */
    for (size_t i = 0; i < len; i++) {
        if (line[i] == '\n' || line[i] == '\r') {
            line[i] = ' ';
        }
    }
    line[len++] = '\n';
    /* One write(2) so that concurrent writers do not interleave lines. */
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    if (level < s_level) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    s_vlog(level, NULL, fmt, ap);
    va_end(ap);
}

static int64_t s_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void log_limited(struct log_limit *lim, enum log_level level, const char *fmt, ...)
{
    if (level < s_level) {
        return;
    }
    int64_t now = s_mono_ms();
    if (now - lim->window_ms >= 10000) {
        lim->window_ms = now;
        lim->emitted = 0;
    }
    if (lim->emitted >= 10) {
        lim->suppressed++;
        return;
    }
    lim->emitted++;
    char suffix[64] = "";
    if (lim->suppressed > 0) {
        snprintf(suffix, sizeof suffix, " (%u similar suppressed)", lim->suppressed);
        lim->suppressed = 0;
    }
    va_list ap;
    va_start(ap, fmt);
    s_vlog(level, suffix[0] ? suffix : NULL, fmt, ap);
    va_end(ap);
}
