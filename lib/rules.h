/* rules — the rules file of omni-route: a small line-oriented language
 * (documented at the top of examples/rules.conf), parsed with messages that
 * name file:line:column, and matched against envelopes, first match wins.
 *
 *   rule reembolso: text ~ "reembolso|estorno" -> queue financeiro priority 2
 *
 * The file reader (statements of tokens), business hours with a time zone
 * and holidays are shared with the agents file (lib/agents.c). */
#ifndef OMNI_RULES_H
#define OMNI_RULES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "envelope.h"

#define RULES_ZONE_MAX 64           /* bytes of a time zone name */
#define RULES_MATCH_LIMIT 100000    /* default PCRE2 match limit */

/* ---- the file reader ---------------------------------------------------- */

/* What a token is. */
enum rules_tok_kind {
    RULES_WORD,     /* a bare word: rule, financeiro, meta.vip, 2026-12-25 */
    RULES_STR,      /* a "string": \" is a quote, everything else as written */
    RULES_PUNCT,    /* ( ) , : ~ = != -> * */
};

/* One token, with where it was written. */
struct rules_tok {
    enum rules_tok_kind kind;   /* word, string or punctuation */
    char *s;                    /* its text, NUL-terminated (strings without quotes) */
    int line;                   /* 1-based line */
    int col;                    /* 1-based column, in characters */
    const char *at;             /* where it starts in the file's text */
    size_t len;                 /* bytes it takes in the text */
};

/* A statement: a line, and the indented lines after it. */
struct rules_stmt {
    struct rules_tok *tok;      /* its tokens */
    size_t n;                   /* how many */
};

/* A file split into statements, and the messages about it. */
struct rules_file {
    const char *name;           /* as given, the prefix of every message */
    char *text;                 /* the file's bytes, NUL-terminated */
    size_t len;                 /* bytes of text */
    struct rules_tok *toks;     /* every token of the file */
    size_t ntoks;               /* tokens used */
    size_t cap;                 /* tokens allocated */
    struct rules_stmt *stmt;    /* statements, pointing into toks */
    size_t nstmt;               /* how many */
    struct buf *msgs;           /* "name:line:col: ..." lines go here */
    int errors;                 /* errors reported */
    int warnings;               /* warnings reported */
};

/* Splits text[0..n) into statements (a copy is kept). Reports lexical
 * errors to msgs. Returns 0, or -1 when out of memory. */
int rules_file_parse(struct rules_file *f, const char *name, const char *text, size_t n,
                     struct buf *msgs);
/* Reads path and splits it. Returns 0, or -1 (message in msgs) when the file
 * cannot be read. */
int rules_file_read(struct rules_file *f, const char *path, struct buf *msgs);
void rules_file_free(struct rules_file *f);
/* Reports an error at token t (off: 0, or 1 + a byte offset into the text
 * of a string token), or, when t is NULL, at the end of statement st. */
void rules_file_error(struct rules_file *f, const struct rules_stmt *st, const struct rules_tok *t,
                      size_t off, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
void rules_file_warn(struct rules_file *f, const struct rules_stmt *st, const struct rules_tok *t,
                     const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* True when t is punctuation p. */
bool rules_tok_is(const struct rules_tok *t, const char *p);
/* True when s is a name: letters, digits, '_', '-', '.'; 1..63 bytes. */
bool rules_name_valid(const char *s);

/* ---- calendars and business hours --------------------------------------- */

struct rules_hours;

/* A named set of hours, `hours comercial "seg-sex 09:00-18:00"`. */
struct rules_named_hours {
    char *name;                 /* as written */
    struct rules_hours *hours;  /* owned */
};

/* What a file says about time: its zone, holidays and named hours. */
struct rules_cal {
    char zone[RULES_ZONE_MAX];      /* default zone ("UTC" unless `timezone`) */
    int32_t *holidays;              /* yyyymmdd, sorted */
    size_t nholidays;               /* how many */
    struct rules_named_hours *named;/* named hours */
    size_t nnamed;                  /* how many */
    struct rules_hours *clock;      /* always open, in zone: local dates of holidays */
};

/* The local time at an instant, as an hours check saw it (for explain). */
struct rules_when {
    int year, month, day;           /* local date */
    int wday;                       /* 0 Sunday .. 6 Saturday */
    int minute;                     /* minutes since local midnight */
    int32_t offset_s;               /* UTC offset, seconds */
    bool holiday;                   /* the date is a holiday */
    const char *zone;               /* the zone looked at */
};

/* Reads the statements every file shares into cal, whatever their order:
 * `timezone ZONE` first, then `holiday DATE[, DATE...] ["name"]` and
 * `hours NAME "SPEC"`. Errors are reported to f. */
void rules_cal_read(struct rules_cal *cal, struct rules_file *f);
/* True when st is one of the statements rules_cal_read reads. */
bool rules_cal_is_stmt(const struct rules_stmt *st);
/* The hours token t names (a name of cal's, or a "SPEC" string); *owned
 * says whether the caller must destroy them. NULL on error (reported). */
struct rules_hours *rules_cal_hours(struct rules_cal *cal, struct rules_file *f,
                                    const struct rules_stmt *st, const struct rules_tok *t,
                                    bool *owned);
void rules_cal_free(struct rules_cal *cal);

/* Parses "seg-sex 09:00-18:00, sab 09:00-13:00 America/Sao_Paulo" (days in
 * Portuguese or English, ranges, several clauses; the zone is optional and
 * defaults to cal's). Holidays of cal close the hours all day. Returns the
 * hours, or NULL with the reason in err and its byte offset in *at. */
struct rules_hours *rules_hours_parse(const char *spec, const struct rules_cal *cal, char *err,
                                      size_t errn, size_t *at);
void rules_hours_destroy(struct rules_hours **h);
/* True when ms (since epoch) falls within the hours; w (may be NULL) says
 * what local time that was. */
bool rules_hours_open(struct rules_hours *h, uint64_t ms, struct rules_when *w);
/* True when the local date of ms in cal's zone is a holiday. */
bool rules_cal_holiday(struct rules_cal *cal, uint64_t ms, struct rules_when *w);
/* True when zone names a zone of the TZ database (or is UTC). */
bool rules_zone_valid(const char *zone);

/* ---- rules --------------------------------------------------------------- */

/* What a rule does with a message. */
enum rules_action {
    RULES_BOT,      /* to the bot */
    RULES_QUEUE,    /* to a human queue */
    RULES_KEEP,     /* stays where it is (a conversation already queued) */
};

/* Where a conversation stands, as the stage knows it. */
enum rules_state {
    RULES_NEW,      /* never seen, or closed */
    RULES_INBOT,    /* last routed to the bot */
    RULES_QUEUED,   /* in a queue, waiting for an agent */
    RULES_ASSIGNED, /* with an agent */
    RULES_NSTATES
};

struct rules_cond;

/* One rule, as parsed. */
struct rules_rule {
    char *name;                 /* as written after `rule` */
    int line;                   /* where it was written */
    struct rules_cond *cond;    /* its condition */
    enum rules_action action;   /* what it does */
    char *queue;                /* RULES_QUEUE: the queue */
    int64_t priority;           /* priority (0 unless given) */
    bool has_priority;          /* priority was given */
    char *reason;               /* reason, or NULL */
};

/* How rules are compiled. */
struct rules_opts {
    uint32_t match_limit;       /* PCRE2 match limit per regex (0: the default) */
};

/* Everything a match looks at besides the envelope. */
struct rules_input {
    const struct env *env;      /* the message */
    enum rules_state state;     /* its conversation's state */
    uint64_t ms;                /* the instant hours are checked at (its ts) */
};

struct rules;

/* Parses a rules file's text; name prefixes messages. Returns the rules, or
 * NULL when msgs has at least one error (or out of memory). Warnings are
 * appended to msgs either way. */
struct rules *rules_parse(const char *name, const char *text, size_t n, const struct rules_opts *o,
                          struct buf *msgs);
/* Reads and parses a rules file. */
struct rules *rules_load(const char *path, const struct rules_opts *o, struct buf *msgs);
void rules_destroy(struct rules **r);

size_t rules_count(const struct rules *r);
const struct rules_rule *rules_get(const struct rules *r, size_t i);
const char *rules_name(const struct rules *r);
/* The state's name: new, bot, queued, assigned. */
const char *rules_state_name(enum rules_state s);

/* The first rule that matches in, among the `keep` rules (keep = true) or
 * the others. With why, every rule tried and each of its conditions is
 * evaluated and written there, one per line, for `omni-route explain`.
 * Returns the rule, or NULL when none matched. */
const struct rules_rule *rules_match(struct rules *r, const struct rules_input *in, bool keep,
                                     struct buf *why);
/* Regex matches that gave up at the match limit, since the start. */
uint64_t rules_gave_up(const struct rules *r);

#endif
