/* opt — options as a table: one table per tool parses argv and OMNI_*
 * environment, rejects unknown keys, and prints --help.
 *
 *   static const struct opt s_opts[] = {
 *       { "rules", OPT_STR, "rules.conf", offsetof(struct conf, rules), "rules file" },
 *       { NULL }
 *   };
 *
 * Precedence: default < environment (OMNI_RULES) < command line (--rules). */
#ifndef OMNI_OPT_H
#define OMNI_OPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum opt_type {
    OPT_STR,        /* const char *: points into argv, environ or the default */
    OPT_INT,        /* int64_t: decimal, with an optional k/M/G suffix */
    OPT_BOOL,       /* bool: --name, --no-name, --name=yes|no|true|false|1|0 */
    OPT_MS,         /* int64_t milliseconds: 500ms, 10s, 5m, 24h, 7d (bare = ms) */
};

struct opt {
    const char *name;       /* long name, without the dashes; NULL ends a table */
    enum opt_type type;     /* how the value is parsed and stored */
    const char *def;        /* default as text, or NULL (OPT_STR: stays NULL) */
    size_t offset;          /* where the value lives in the config struct */
    const char *help;       /* one line for --help */
};

/* One table and the struct it writes into. */
struct opt_set {
    const struct opt *table;    /* options, ended by { NULL } */
    void *base;                 /* the config struct */
};

/* What came of parsing. */
struct opt_result {
    int npos;               /* positional arguments left in pos */
    char **pos;             /* positional arguments (argv order) */
    char err[256];          /* why parsing failed */
    int status;             /* 0, or 64 (bad command line) / 78 (bad environment) */
};

/* Applies defaults, then OMNI_* variables, then argv[1..]. Positional
 * arguments and everything after "--" are collected in res->pos (allocated,
 * the caller frees res->pos). Unknown OMNI_* variables are reported through
 * warn (may be NULL) and not fatal, since a shared environment may hold
 * other tools' settings; unknown command-line options are errors. Returns 0
 * or -1 with res->err and res->status set. */
int opt_parse(const struct opt_set *sets, int nsets, int argc, char **argv,
              void (*warn)(const char *msg), struct opt_result *res);
/* Parses one value of type t into out (the field's address). Returns 0 or -1
 * with a reason in err[n]. */
int opt_value(enum opt_type t, const char *text, void *out, char *err, size_t n);
/* Writes the options of the sets as a --help listing to fp. */
void opt_help(const struct opt_set *sets, int nsets, void *fp);
/* Parses a duration ("500ms", "10s", "24h"; bare = ms) into ms. */
int opt_parse_ms(const char *s, int64_t *ms);

#endif
