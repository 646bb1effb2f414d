/* inject — JSON lines -> envelopes. Each line is one JSON object with the
 * envelope's keys (DESIGN.md); v, id and ts are filled when absent, and the
 * result must pass env_check. A bad line is reported with its file and line
 * number, counted, and skipped (--strict: stops with exit 65). */
#include "inject.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "buf.h"
#include "envelope.h"
#include "json.h"
#include "log.h"
#include "ulid.h"

struct inject_conf {
    bool strict;            /* stop at the first bad line */
    int64_t max_line;       /* longest line accepted, bytes */
};

struct inject {
    struct inject_conf *conf;   /* options */
    struct ulid_gen ids;        /* id generator */
    struct env *env;            /* the envelope being built */
    struct buf line;            /* bytes of the current, unfinished line */
    bool skipping;              /* inside an over-long line */
    uint64_t lines;             /* lines read, all files */
    uint64_t sent;              /* envelopes sent */
    uint64_t bad;               /* lines rejected */
};

static const struct opt s_opts[] = {
    { "strict", OPT_BOOL, "no", offsetof(struct inject_conf, strict),
      "stop at the first bad line (exit 65)" },
    { "max-line", OPT_INT, "4M", offsetof(struct inject_conf, max_line),
      "longest line accepted, in bytes" },
    { NULL, 0, NULL, 0, NULL }
};

static int s_init(struct stage_ctx *ctx, void *conf, void **state)
{
    (void)ctx;
    struct inject *in = calloc(1, sizeof *in);
    if (in == NULL || (in->env = env_new()) == NULL) {
        free(in);
        return EXIT_SOFTWARE;
    }
    in->conf = conf;
    *state = in;
    return 0;
}

static void s_fini(void **state)
{
    struct inject *in = *state;
    env_destroy(&in->env);
    buf_free(&in->line);
    free(in);
    *state = NULL;
}

/* One line: returns 0, 1 when rejected, -1 when the output failed. */
static int s_line(struct inject *in, struct stage_ctx *ctx, const char *file, uint64_t lineno,
                  const char *s, size_t n)
{
    in->lines++;
    while (n > 0 && (s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t')) {
        n--;
    }
    size_t lead = 0;
    while (lead < n && (s[lead] == ' ' || s[lead] == '\t')) {
        lead++;
    }
    if (lead == n) {
        return 0;       /* blank lines carry nothing */
    }
    char err[300];
    char reason[400];
    struct env_err eerr;
    cJSON *j = json_parse(s, n, err, sizeof err);
    if (j == NULL) {
        /* One line is one document: its line number is the file's. */
        const char *where = strncmp(err, "line 1, ", 8) == 0 ? err + 8 : err;
        snprintf(reason, sizeof reason, "reason=\"bad JSON at %s\"", where);
        goto bad;
    }
    int rc = env_from_json(in->env, j, &eerr);
    cJSON_Delete(j);
    if (rc != 0) {
        env_err_str(&eerr, reason, sizeof reason);
        goto bad;
    }
    uint64_t now = stage_now_ms();
    if (!env_has(in->env, ENV_V)) {
        env_set_uint(in->env, ENV_V, ENV_VERSION);
    }
    if (!env_has(in->env, ENV_TS)) {
        env_set_uint(in->env, ENV_TS, now);
    }
    if (!env_has(in->env, ENV_ID)) {
        char id[ULID_LEN + 1];
        if (ulid_next(&in->ids, now, id) != 0) {
            log_msg(LOG_ERROR, "no randomness for ids: %s", strerror(errno));
            return -1;
        }
        env_set(in->env, ENV_ID, id, NULL);
    }
    if (env_check(in->env, &eerr) != 0) {
        env_err_str(&eerr, reason, sizeof reason);
        goto bad;
    }
    if (stage_emit(ctx, in->env) != 0) {
        return -1;
    }
    in->sent++;
    return 0;
bad:
    in->bad++;
    char label[300];
    snprintf(label, sizeof label, "line=%llu file=%s", (unsigned long long)lineno, file);
    stage_reject(ctx, s, n, label, reason);
    return 1;
}

/* Reads one file (or stdin) line by line. Returns 0, or an exit code. */
static int s_file(struct inject *in, struct stage_ctx *ctx, const char *path)
{
    bool is_stdin = strcmp(path, "-") == 0;
    const char *name = is_stdin ? "stdin" : path;
    int fd = is_stdin ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        log_msg(LOG_ERROR, "%s: %s", path, strerror(errno));
        return 66;      /* EX_NOINPUT */
    }
    static char chunk[1 << 16];
    uint64_t lineno = 0;
    int status = 0;
    buf_reset(&in->line);
    in->skipping = false;
    while (status == 0) {
        if (stage_stopping(ctx)) {
            break;
        }
        ssize_t r = read(fd, chunk, sizeof chunk);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            log_msg(LOG_ERROR, "%s: %s", name, strerror(errno));
            status = 74;
            break;
        }
        if (r == 0) {
            if (in->line.len > 0 && !in->skipping) {
                lineno++;
                int rc = s_line(in, ctx, name, lineno, in->line.data, in->line.len);
                status = rc < 0 ? EXIT_IOERR : (rc > 0 && in->conf->strict) ? EXIT_DATAERR : 0;
            }
            break;
        }
        const char *p = chunk;
        const char *end = chunk + r;
        while (p < end && status == 0) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            const char *stop = nl ? nl : end;
            if (in->skipping) {
                if (nl != NULL) {
                    in->skipping = false;
                }
                p = nl ? nl + 1 : end;
                continue;
            }
            if ((int64_t)(in->line.len + (size_t)(stop - p)) > in->conf->max_line) {
                lineno++;
                char label[300], reason[100];
                snprintf(label, sizeof label, "line=%llu file=%s", (unsigned long long)lineno, name);
                snprintf(reason, sizeof reason, "reason=\"longer than %lld bytes (--max-line)\"",
                         (long long)in->conf->max_line);
                in->lines++;
                in->bad++;
                stage_reject(ctx, in->line.len ? in->line.data : p, 64, label, reason);
                buf_reset(&in->line);
                in->skipping = nl == NULL;
                status = in->conf->strict ? EXIT_DATAERR : 0;
                p = nl ? nl + 1 : end;
                continue;
            }
            if (nl == NULL) {
                buf_append(&in->line, p, (size_t)(end - p));
                break;
            }
            lineno++;
            int rc;
            if (in->line.len == 0) {
                /* The whole line is in this chunk: parse it in place. */
                rc = s_line(in, ctx, name, lineno, p, (size_t)(nl - p));
            } else {
                buf_append(&in->line, p, (size_t)(nl - p));
                rc = s_line(in, ctx, name, lineno, in->line.data, in->line.len);
                buf_reset(&in->line);
            }
            if (rc < 0) {
                status = EXIT_IOERR;
            } else if (rc > 0 && in->conf->strict) {
                status = EXIT_DATAERR;
            }
            p = nl + 1;
        }
    }
    if (!is_stdin) {
        close(fd);
    }
    return status;
}

static int s_run(void *state, struct stage_ctx *ctx)
{
    struct inject *in = state;
    int n;
    char **files = stage_args(ctx, &n);
    static char *dash[] = { "-" };
    if (n == 0) {
        files = dash;
        n = 1;
    }
    int status = 0;
    for (int i = 0; i < n && status == 0 && !stage_stopping(ctx); i++) {
        status = s_file(in, ctx, files[i]);
    }
    if (status == EXIT_IOERR && stage_stopping(ctx)) {
        status = 0;     /* stopped while the next stage was not taking more */
    }
    log_msg(in->bad ? LOG_WARN : LOG_INFO, "read %llu lines: sent %llu, rejected %llu",
            (unsigned long long)in->lines, (unsigned long long)in->sent,
            (unsigned long long)in->bad);
    return status;
}

const struct stage inject_stage = {
    .name = "inject",
    .summary = "Reads JSON lines (files, or stdin) and writes envelopes; fills v, id and ts.",
    .args = "[FILE...]",
    .options = s_opts,
    .conf_size = sizeof(struct inject_conf),
    .flags = STAGE_SOURCE | STAGE_ARGS,
    .init = s_init,
    .run = s_run,
    .fini = s_fini,
};
