/* opt — argv and OMNI_* environment from one table; see opt.h. */
#include "opt.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

int opt_parse_ms(const char *s, int64_t *ms)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno != 0 || !(v >= 0)) {     /* NaN fails too */
        return -1;
    }
    double mult = 1;
    if (*end == '\0' || strcmp(end, "ms") == 0) {
        mult = 1;
    } else if (strcmp(end, "s") == 0) {
        mult = 1e3;
    } else if (strcmp(end, "m") == 0 || strcmp(end, "min") == 0) {
        mult = 60e3;
    } else if (strcmp(end, "h") == 0) {
        mult = 3600e3;
    } else if (strcmp(end, "d") == 0) {
        mult = 86400e3;
    } else {
        return -1;
    }
    v *= mult;
    if (v > 9.2e18) {
        return -1;
    }
    *ms = (int64_t)v;
    return 0;
}

int opt_value(enum opt_type t, const char *text, void *out, char *err, size_t n)
{
    switch (t) {
    case OPT_STR:
        *(const char **)out = text;
        return 0;
    case OPT_INT: {
        char *end;
        errno = 0;
        long long v = strtoll(text, &end, 10);
        bool digits = end != text;
        long long mult = 1;
        if (*end == 'k') {
            mult = 1000;
            end++;
        } else if (*end == 'M') {
            mult = 1000000;
            end++;
        } else if (*end == 'G') {
            mult = 1000000000;
            end++;
        }
        if (!digits || *end != '\0' || errno != 0) {
            snprintf(err, n, "'%s' is not an integer", text);
            return -1;
        }
        if (v > LLONG_MAX / mult || v < LLONG_MIN / mult) {
            snprintf(err, n, "'%s' is too large", text);
            return -1;
        }
        *(int64_t *)out = v * mult;
        return 0;
    }
    case OPT_BOOL:
        if (!strcmp(text, "1") || !strcmp(text, "yes") || !strcmp(text, "true") || !strcmp(text, "on")) {
            *(bool *)out = true;
        } else if (!strcmp(text, "0") || !strcmp(text, "no") || !strcmp(text, "false") || !strcmp(text, "off")) {
            *(bool *)out = false;
        } else {
            snprintf(err, n, "'%s' is not yes or no", text);
            return -1;
        }
        return 0;
    case OPT_MS:
        if (opt_parse_ms(text, out) != 0) {
            snprintf(err, n, "'%s' is not a duration (e.g. 500ms, 10s, 5m, 24h)", text);
            return -1;
        }
        return 0;
    }
    return -1;
}

static const struct opt *s_find(const struct opt_set *sets, int nsets, const char *name,
                                size_t len, void **base)
{
    for (int s = 0; s < nsets; s++) {
        for (const struct opt *o = sets[s].table; o->name != NULL; o++) {
            if (strlen(o->name) == len && memcmp(o->name, name, len) == 0) {
                *base = sets[s].base;
                return o;
            }
        }
    }
    return NULL;
}

/* "OMNI_LOG_LEVEL" -> "log-level" into out; -1 when not ours. */
static int s_env_name(const char *var, char *out, size_t n)
{
    if (strncmp(var, "OMNI_", 5) != 0) {
        return -1;
    }
    const char *eq = strchr(var, '=');
    if (eq == NULL) {
        return -1;
    }
    size_t len = (size_t)(eq - var) - 5;
    if (len == 0 || len >= n) {
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        char c = var[5 + i];
        out[i] = c == '_' ? '-' : (char)tolower((unsigned char)c);
    }
    out[len] = '\0';
    return 0;
}

int opt_parse(const struct opt_set *sets, int nsets, int argc, char **argv,
              void (*warn)(const char *msg), struct opt_result *res)
{
    memset(res, 0, sizeof *res);
    res->pos = calloc((size_t)argc + 1, sizeof(char *));
    if (res->pos == NULL) {
        snprintf(res->err, sizeof res->err, "out of memory");
        res->status = 71;
        return -1;
    }
    char why[200];
    for (int s = 0; s < nsets; s++) {
        for (const struct opt *o = sets[s].table; o->name != NULL; o++) {
            void *field = (char *)sets[s].base + o->offset;
            if (o->def == NULL) {
                continue;
            }
            if (opt_value(o->type, o->def, field, why, sizeof why) != 0) {
                snprintf(res->err, sizeof res->err, "default of --%s: %s", o->name, why);
                res->status = 78;
                return -1;
            }
        }
    }
    for (char **ev = environ; ev != NULL && *ev != NULL; ev++) {
        char name[128];
        if (s_env_name(*ev, name, sizeof name) != 0) {
            continue;
        }
        void *base;
        const struct opt *o = s_find(sets, nsets, name, strlen(name), &base);
        if (o == NULL) {
            if (warn != NULL) {
                char msg[200];
                snprintf(msg, sizeof msg, "ignoring %.*s: no option --%s",
                         (int)(strchr(*ev, '=') - *ev), *ev, name);
                warn(msg);
            }
            continue;
        }
        const char *val = strchr(*ev, '=') + 1;
        if (opt_value(o->type, val, (char *)base + o->offset, why, sizeof why) != 0) {
            snprintf(res->err, sizeof res->err, "%.*s: %s", (int)(strchr(*ev, '=') - *ev), *ev, why);
            res->status = 78;
            return -1;
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            for (i++; i < argc; i++) {
                res->pos[res->npos++] = argv[i];
            }
            break;
        }
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
            res->pos[res->npos++] = argv[i];
            continue;
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        void *base;
        const struct opt *o = s_find(sets, nsets, name, len, &base);
        bool negated = false;
        if (o == NULL && len > 3 && strncmp(name, "no-", 3) == 0) {
            o = s_find(sets, nsets, name + 3, len - 3, &base);
            negated = o != NULL && o->type == OPT_BOOL && eq == NULL;
            if (!negated) {
                o = NULL;
            }
        }
        if (o == NULL) {
            snprintf(res->err, sizeof res->err, "unknown option --%.*s", (int)len, name);
            res->status = 64;
            return -1;
        }
        void *field = (char *)base + o->offset;
        if (o->type == OPT_BOOL && eq == NULL) {
            *(bool *)field = !negated;
            continue;
        }
        const char *val = eq ? eq + 1 : NULL;
        if (val == NULL) {
            if (i + 1 >= argc) {
                snprintf(res->err, sizeof res->err, "--%s needs a value", o->name);
                res->status = 64;
                return -1;
            }
            val = argv[++i];
        }
        if (opt_value(o->type, val, field, why, sizeof why) != 0) {
            snprintf(res->err, sizeof res->err, "--%s: %s", o->name, why);
            res->status = 64;
            return -1;
        }
    }
    return 0;
}

void opt_help(const struct opt_set *sets, int nsets, void *fp)
{
    static const char *const meta[] = { "TEXT", "N", "", "DURATION" };
    for (int s = 0; s < nsets; s++) {
        for (const struct opt *o = sets[s].table; o->name != NULL; o++) {
            char left[64];
            snprintf(left, sizeof left, "--%s%s%s", o->name, o->type == OPT_BOOL ? "" : " ",
                     meta[o->type]);
            fprintf(fp, "  %-24s %s", left, o->help);
            if (o->def != NULL && o->type != OPT_BOOL) {
                fprintf(fp, " (default %s)", o->def[0] ? o->def : "none");
            } else if (o->def != NULL && strcmp(o->def, "yes") == 0) {
                fprintf(fp, " (default on)");
            }
            fputc('\n', fp);
        }
    }
}
