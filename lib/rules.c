/* rules — the rules file of omni-route: reader, calendar, parser and
 * matcher; see rules.h and the format at the top of examples/rules.conf. */
#include "rules.h"

#define PCRE2_CODE_UNIT_WIDTH 8

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <pcre2.h>

#include "log.h"

#define MAX_FILE (4u << 20)     /* bytes of a rules or agents file */
#define ZONE_SLOTS 256          /* cached UTC offsets per hours, one per day */
#define META_MAX 8192           /* bytes of a meta value a condition looks at */
#define MAX_DEPTH 64            /* nesting of parentheses and `not` */

/* ---- the file reader ---------------------------------------------------- */

/* Characters (not bytes) in p[0..n). */
static int s_chars(const char *p, size_t n)
{
    int c = 0;
    for (size_t i = 0; i < n; i++) {
        c += ((unsigned char)p[i] & 0xC0) != 0x80;
    }
    return c;
}

static void s_msg(struct rules_file *f, int line, int col, const char *kind, const char *fmt,
                  va_list ap) __attribute__((format(printf, 5, 0)));
static void s_msg(struct rules_file *f, int line, int col, const char *kind, const char *fmt,
                  va_list ap)
{
    if (f->msgs == NULL) {
        return;
    }
    buf_printf(f->msgs, "%s:%d:%d: %s", f->name, line, col, kind);
    buf_vprintf(f->msgs, fmt, ap);
    buf_putc(f->msgs, '\n');
}

/* Where a message about t (or the end of st) points: line and column. */
static void s_where(const struct rules_stmt *st, const struct rules_tok *t, size_t off, int *line,
                    int *col)
{
    if (t == NULL) {
        assert(st != NULL && st->n > 0);
        const struct rules_tok *last = &st->tok[st->n - 1];
        *line = last->line;
        *col = last->col + s_chars(last->at, last->len);
        return;
    }
    *line = t->line;
    *col = t->col;
    if (t->kind == RULES_STR && off > 0) {
        /* Byte off - 1 of the string: walk the source, where \" took two
         * bytes for one. */
        const char *p = t->at + 1;
        for (size_t out = 0; out + 1 < off && *p != '\0' && *p != '\n'; out++) {
            p += (p[0] == '\\' && p[1] == '"') ? 2 : 1;
        }
        *col += s_chars(t->at, (size_t)(p - t->at));
    }
}

void rules_file_error(struct rules_file *f, const struct rules_stmt *st, const struct rules_tok *t,
                      size_t off, const char *fmt, ...)
{
    int line, col;
    s_where(st, t, off, &line, &col);
    va_list ap;
    va_start(ap, fmt);
    s_msg(f, line, col, "", fmt, ap);
    va_end(ap);
    f->errors++;
}

void rules_file_warn(struct rules_file *f, const struct rules_stmt *st, const struct rules_tok *t,
                     const char *fmt, ...)
{
    int line, col;
    s_where(st, t, 0, &line, &col);
    va_list ap;
    va_start(ap, fmt);
    s_msg(f, line, col, "warning: ", fmt, ap);
    va_end(ap);
    f->warnings++;
}

/* A lexical error, before statements exist. */
static void s_lex_error(struct rules_file *f, int line, int col, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void s_lex_error(struct rules_file *f, int line, int col, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    s_msg(f, line, col, "", fmt, ap);
    va_end(ap);
    f->errors++;
}

bool rules_tok_is(const struct rules_tok *t, const char *p)
{
    return t != NULL && t->kind == RULES_PUNCT && strcmp(t->s, p) == 0;
}

bool rules_name_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'
              || c == '-' || c == '.')) {
            return false;
        }
    }
    return true;
}

static int s_push(struct rules_file *f, enum rules_tok_kind kind, char *s, int line, int col,
                  const char *at, size_t len)
{
    if (f->ntoks == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 64;
        struct rules_tok *t = realloc(f->toks, cap * sizeof *t);
        if (t == NULL) {
            free(s);
            return -1;
        }
        f->toks = t;
        f->cap = cap;
    }
    f->toks[f->ntoks++] = (struct rules_tok){ kind, s, line, col, at, len };
    return 0;
}

/* Ends a word: blanks, quotes, punctuation, a comment. */
static bool s_word_end(const char *p, const char *eol)
{
    return p >= eol || *p == ' ' || *p == '\t' || *p == '\r' || *p == '"' || *p == '#'
           || strchr("(),:~=*!", *p) != NULL || (p[0] == '-' && p + 1 < eol && p[1] == '>');
}

int rules_file_parse(struct rules_file *f, const char *name, const char *text, size_t n,
                     struct buf *msgs)
{
    memset(f, 0, sizeof *f);
    f->name = name;
    f->msgs = msgs;
    size_t *starts = NULL;      /* first token of each statement */
    size_t nstarts = 0;
    int rc = -1;
    f->text = malloc(n + 1);
    starts = malloc((n / 2 + 2) * sizeof *starts);
    if (f->text == NULL || starts == NULL) {
        goto done;
    }
    memcpy(f->text, text, n);
    f->text[n] = '\0';
    f->len = n;
    const char *p = f->text;
    const char *end = f->text + n;
    for (int line = 1; p < end; line++) {
        const char *ls = p;
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        eol = eol ? eol : end;
        bool indented = *p == ' ' || *p == '\t';
        bool first = true;
        if (memchr(p, '\0', (size_t)(eol - p)) != NULL) {
            s_lex_error(f, line, 1, "NUL byte in the line");
            p = eol + 1;
            continue;
        }
        while (p < eol) {
            if (*p == ' ' || *p == '\t' || *p == '\r') {
                p++;
                continue;
            }
            if (*p == '#') {
                break;
            }
            int col = s_chars(ls, (size_t)(p - ls)) + 1;
            if (first && (!indented || nstarts == 0)) {
                starts[nstarts++] = f->ntoks;
            }
            first = false;
            const char *at = p;
            if (*p == '"') {
                const char *q = p + 1;
                while (q < eol && *q != '"') {
                    q += (q[0] == '\\' && q + 1 < eol && (q[1] == '"' || q[1] == '\\')) ? 2 : 1;
                }
                if (q >= eol) {
                    s_lex_error(f, line, col, "unterminated string (a string ends on its line)");
                    break;
                }
                char *s = malloc((size_t)(q - p));
                if (s == NULL) {
                    goto done;
                }
                size_t k = 0;
                for (const char *c = p + 1; c < q; c++) {
                    if (c[0] == '\\' && c[1] == '"') {
                        c++;
                    } else if (c[0] == '\\' && c[1] == '\\') {
                        s[k++] = *c++;
                    }
                    s[k++] = *c;
                }
                s[k] = '\0';
                if (s_push(f, RULES_STR, s, line, col, at, (size_t)(q + 1 - p)) != 0) {
                    goto done;
                }
                p = q + 1;
                continue;
            }
            size_t len = 0;
            if ((p[0] == '-' || p[0] == '!') && p + 1 < eol && p[1] == (p[0] == '-' ? '>' : '=')) {
                len = 2;
            } else if (strchr("(),:~=*", *p) != NULL) {
                len = 1;
            } else if (*p == '!') {
                s_lex_error(f, line, col, "unexpected '!' (did you mean '!=' or `not`?)");
                p++;
                continue;
            }
            enum rules_tok_kind kind = RULES_PUNCT;
            if (len == 0) {
                kind = RULES_WORD;
                while (!s_word_end(p + len, eol)) {
                    len++;
                }
            }
            char *s = strndup(p, len);
            if (s == NULL || s_push(f, kind, s, line, col, at, len) != 0) {
                goto done;
            }
            p += len;
        }
        p = eol + 1;
    }
    f->stmt = calloc(nstarts + 1, sizeof *f->stmt);
    if (f->stmt == NULL) {
        goto done;
    }
    for (size_t i = 0; i < nstarts; i++) {
        size_t next = i + 1 < nstarts ? starts[i + 1] : f->ntoks;
        if (next > starts[i]) {
            f->stmt[f->nstmt++] = (struct rules_stmt){ f->toks + starts[i], next - starts[i] };
        }
    }
    rc = 0;
done:
    free(starts);
    if (rc != 0 && msgs != NULL) {
        buf_printf(msgs, "%s: out of memory\n", name);
        f->errors++;
    }
    return rc;
}

int rules_file_read(struct rules_file *f, const char *path, struct buf *msgs)
{
    struct buf b = { 0 };
    int rc = -1;
    FILE *fp = fopen(path, "rb");
    memset(f, 0, sizeof *f);
    f->name = path;
    f->msgs = msgs;
    if (fp == NULL) {
        buf_printf(msgs, "%s: cannot open: %s\n", path, strerror(errno));
        f->errors++;
        goto done;
    }
    char chunk[65536];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, fp)) > 0) {
        if (b.len + got > MAX_FILE) {
            buf_printf(msgs, "%s: larger than %u bytes\n", path, MAX_FILE);
            f->errors++;
            goto done;
        }
        if (buf_append(&b, chunk, got) != 0) {
            buf_printf(msgs, "%s: out of memory\n", path);
            f->errors++;
            goto done;
        }
    }
    if (ferror(fp)) {
        buf_printf(msgs, "%s: cannot read: %s\n", path, strerror(errno));
        f->errors++;
        goto done;
    }
    rc = rules_file_parse(f, path, b.data ? b.data : "", b.len, msgs);
done:
    if (fp != NULL) {
        fclose(fp);
    }
    buf_free(&b);
    return rc;
}

void rules_file_free(struct rules_file *f)
{
    for (size_t i = 0; i < f->ntoks; i++) {
        free(f->toks[i].s);
    }
    free(f->toks);
    free(f->stmt);
    free(f->text);
    f->toks = NULL;
    f->stmt = NULL;
    f->text = NULL;
    f->ntoks = f->nstmt = f->cap = 0;
}

/* ---- time zones ---------------------------------------------------------- */

struct rules_hours {
    uint8_t open[7][180];               /* a bit per minute of each weekday */
    char zone[RULES_ZONE_MAX];          /* the zone the minutes are in */
    const struct rules_cal *cal;        /* holidays, or NULL */
    int64_t day_key[ZONE_SLOTS];        /* UTC day + 1 whose offset is cached, 0: none */
    int32_t day_off[ZONE_SLOTS];        /* that day's UTC offset, seconds */
};

bool rules_zone_valid(const char *zone)
{
    if (strcmp(zone, "UTC") == 0) {
        return true;
    }
    size_t n = strlen(zone);
    if (n == 0 || n >= RULES_ZONE_MAX || zone[0] == '/' || strstr(zone, "..") != NULL) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = zone[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
              || strchr("/_+-", c) != NULL)) {
            return false;
        }
    }
    const char *dir = getenv("TZDIR");
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir && dir[0] ? dir : "/usr/share/zoneinfo", zone);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return false;
    }
    char magic[4];
    bool ok = read(fd, magic, 4) == 4 && memcmp(magic, "TZif", 4) == 0;
    close(fd);
    return ok;
}

/* UTC offsets of zone at each of t[0..n), from the TZ database through
 * localtime_r. TZ is set for the call and restored: the stage is one
 * thread, and this runs once per zone and day (see s_offset). */
static void s_tz_offsets(const char *zone, const time_t *t, int32_t *off, size_t n)
{
    const char *old = getenv("TZ");
    char *saved = old ? strdup(old) : NULL;
    setenv("TZ", zone, 1);
    tzset();
    for (size_t i = 0; i < n; i++) {
        struct tm tm;
        off[i] = localtime_r(&t[i], &tm) ? (int32_t)tm.tm_gmtoff : 0;
    }
    if (saved != NULL) {
        setenv("TZ", saved, 1);
        free(saved);
    } else {
        unsetenv("TZ");
    }
    tzset();
}

static int64_t s_floordiv(int64_t a, int64_t b)
{
    return a / b - (a % b != 0 && (a < 0) != (b < 0));
}

/* The zone's UTC offset at sec, cached per UTC day: when the offset at the
 * day's start and end agree (every day but a transition's), the day's
 * offset is kept. */
static int32_t s_offset(struct rules_hours *h, int64_t sec)
{
    if (strcmp(h->zone, "UTC") == 0) {
        return 0;
    }
    int64_t day = s_floordiv(sec, 86400);
    size_t slot = (size_t)(day & (ZONE_SLOTS - 1));
    if (h->day_key[slot] == day + 1) {
        return h->day_off[slot];
    }
    time_t t[3] = { (time_t)(day * 86400), (time_t)(day * 86400 + 86399), (time_t)sec };
    int32_t off[3];
    s_tz_offsets(h->zone, t, off, 3);
    if (off[0] == off[1]) {
        h->day_key[slot] = day + 1;
        h->day_off[slot] = off[0];
    }
    return off[2];
}

/* Days since 1970-01-01 -> civil date (H. Hinnant's algorithm). */
static void s_civil(int64_t z, int *y, int *m, int *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    unsigned dd = doy - (153 * mp + 2) / 5 + 1;
    unsigned mm = mp < 10 ? mp + 3 : mp - 9;
    *y = (int)((int64_t)yoe + era * 400 + (mm <= 2));
    *m = (int)mm;
    *d = (int)dd;
}

static bool s_is_holiday(const struct rules_cal *cal, int y, int m, int d)
{
    if (cal == NULL || cal->nholidays == 0) {
        return false;
    }
    int32_t key = y * 10000 + m * 100 + d;
    size_t lo = 0, hi = cal->nholidays;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cal->holidays[mid] < key) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo < cal->nholidays && cal->holidays[lo] == key;
}

/* The local time of ms in h's zone. */
static void s_local(struct rules_hours *h, uint64_t ms, struct rules_when *w)
{
    int64_t sec = (int64_t)(ms / 1000);
    int32_t off = s_offset(h, sec);
    int64_t local = sec + off;
    int64_t days = s_floordiv(local, 86400);
    w->minute = (int)((local - days * 86400) / 60);
    w->wday = (int)(((days % 7) + 11) % 7);     /* 1970-01-01 was a Thursday */
    s_civil(days, &w->year, &w->month, &w->day);
    w->offset_s = off;
    w->zone = h->zone;
    w->holiday = s_is_holiday(h->cal, w->year, w->month, w->day);
}

bool rules_hours_open(struct rules_hours *h, uint64_t ms, struct rules_when *w)
{
    struct rules_when tmp;
    w = w ? w : &tmp;
    s_local(h, ms, w);
    if (w->holiday) {
        return false;
    }
    return (h->open[w->wday][w->minute >> 3] >> (w->minute & 7)) & 1;
}

bool rules_cal_holiday(struct rules_cal *cal, uint64_t ms, struct rules_when *w)
{
    struct rules_when tmp;
    w = w ? w : &tmp;
    memset(w, 0, sizeof *w);
    if (cal->clock == NULL) {
        return false;
    }
    s_local(cal->clock, ms, w);
    return w->holiday;
}

void rules_hours_destroy(struct rules_hours **h)
{
    if (h != NULL && *h != NULL) {
        free(*h);
        *h = NULL;
    }
}

/* ---- business hours ------------------------------------------------------ */

static const char *const s_days[2][7] = {
    { "dom", "seg", "ter", "qua", "qui", "sex", "sab" },
    { "sun", "mon", "tue", "wed", "thu", "fri", "sat" },
};

/* A day name ("sab", "sáb", "Mon") -> 0..6, or -1. */
static int s_day(const char *s, size_t n)
{
    char low[8];
    if (n == 4 && strncasecmp(s, "s\xc3\xa1" "b", 4) == 0) {
        return 6;
    }
    if (n != 3) {
        return -1;
    }
    for (size_t i = 0; i < 3; i++) {
        low[i] = (char)((s[i] >= 'A' && s[i] <= 'Z') ? s[i] + 32 : s[i]);
    }
    for (int l = 0; l < 2; l++) {
        for (int d = 0; d < 7; d++) {
            if (memcmp(low, s_days[l][d], 3) == 0) {
                return d;
            }
        }
    }
    return -1;
}

/* "9:00" / "09:00" / "24:00" -> minutes, or -1. */
static int s_clock(const char *s, size_t n)
{
    if (n < 4 || n > 5 || s[n - 3] != ':') {
        return -1;
    }
    int h = 0;
    for (size_t i = 0; i + 3 < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
        h = h * 10 + (s[i] - '0');
    }
    if (s[n - 2] < '0' || s[n - 2] > '5' || s[n - 1] < '0' || s[n - 1] > '9') {
        return -1;
    }
    int m = (s[n - 2] - '0') * 10 + (s[n - 1] - '0');
    if (h > 24 || (h == 24 && m != 0)) {
        return -1;
    }
    return h * 60 + m;
}

static void s_set(struct rules_hours *h, int day, int from, int to)
{
    for (int m = from; m < to; m++) {
        h->open[day][m >> 3] |= (uint8_t)(1u << (m & 7));
    }
}

struct rules_hours *rules_hours_parse(const char *spec, const struct rules_cal *cal, char *err,
                                      size_t errn, size_t *at)
{
    struct rules_hours *h = calloc(1, sizeof *h);
    if (h == NULL) {
        snprintf(err, errn, "out of memory");
        *at = 0;
        return NULL;
    }
    h->cal = cal;
    snprintf(h->zone, sizeof h->zone, "%s", cal && cal->zone[0] ? cal->zone : "UTC");
    unsigned days = 0;          /* days of the clause being read */
    bool ranged = false;        /* the clause has had a time range */
    bool any = false;           /* some range was read */
    bool zoned = false;         /* the zone was given */
    size_t last_days = 0;       /* where the clause's days began */
    const char *p = spec;
    while (*p != '\0') {
        if (*p == ' ' || *p == ',' || *p == '\t') {
            p++;
            continue;
        }
        const char *w = p;
        while (*p != '\0' && *p != ' ' && *p != ',' && *p != '\t') {
            p++;
        }
        size_t n = (size_t)(p - w);
        *at = (size_t)(w - spec);
        if (zoned) {
            snprintf(err, errn, "'%.*s' after the time zone (the zone comes last)", (int)n, w);
            goto fail;
        }
        const char *dash = memchr(w, '-', n);
        if (w[0] >= '0' && w[0] <= '9') {
            int from = dash ? s_clock(w, (size_t)(dash - w)) : -1;
            int to = dash ? s_clock(dash + 1, n - (size_t)(dash + 1 - w)) : -1;
            if (from < 0 || to < 0 || from >= 1440) {
                snprintf(err, errn, "'%.*s' is not a time range (e.g. 09:00-18:00)", (int)n, w);
                goto fail;
            }
            if (from == to) {
                snprintf(err, errn, "'%.*s' is an empty range", (int)n, w);
                goto fail;
            }
            unsigned d = days ? days : 0x7Fu;
            for (int k = 0; k < 7; k++) {
                if (!(d >> k & 1)) {
                    continue;
                }
                if (to > from) {
                    s_set(h, k, from, to);
                } else {            /* over midnight: into the next day */
                    s_set(h, k, from, 1440);
                    s_set(h, (k + 1) % 7, 0, to);
                }
            }
            ranged = any = true;
            continue;
        }
        int d1 = s_day(w, dash ? (size_t)(dash - w) : n);
        int d2 = dash ? s_day(dash + 1, n - (size_t)(dash + 1 - w)) : d1;
        if (d1 >= 0 && d2 >= 0) {
            if (ranged || days == 0) {
                days = 0;
                ranged = false;
                last_days = *at;
            }
            for (int k = d1;; k = (k + 1) % 7) {
                days |= 1u << k;
                if (k == d2) {
                    break;
                }
            }
            continue;
        }
        if (memchr(w, '/', n) != NULL || (n == 3 && memcmp(w, "UTC", 3) == 0)) {
            char zone[RULES_ZONE_MAX];
            snprintf(zone, sizeof zone, "%.*s", (int)n, w);
            if (n >= sizeof zone || !rules_zone_valid(zone)) {
                snprintf(err, errn, "unknown time zone '%.*s'", (int)n, w);
                goto fail;
            }
            memcpy(h->zone, zone, sizeof zone);
            zoned = true;
            continue;
        }
        snprintf(err, errn, "'%.*s' is not a day (seg..dom, mon..sun), a time range or a time zone",
                 (int)n, w);
        goto fail;
    }
    if (days != 0 && !ranged) {
        *at = last_days;
        snprintf(err, errn, "days without a time range (e.g. sab 09:00-13:00)");
        goto fail;
    }
    if (!any) {
        *at = 0;
        snprintf(err, errn, "no time range (e.g. \"seg-sex 09:00-18:00\")");
        goto fail;
    }
    return h;
fail:
    free(h);
    return NULL;
}

/* ---- calendars ----------------------------------------------------------- */

static bool s_stmt_is(const struct rules_stmt *st, const char *word)
{
    return st->n > 0 && st->tok[0].kind == RULES_WORD && strcmp(st->tok[0].s, word) == 0;
}

bool rules_cal_is_stmt(const struct rules_stmt *st)
{
    return s_stmt_is(st, "timezone") || s_stmt_is(st, "holiday") || s_stmt_is(st, "hours");
}

/* "2026-12-25" -> 20261225, or -1. */
static int32_t s_date(const char *s)
{
    int y, m, d, n = 0;
    if (strlen(s) != 10 || sscanf(s, "%4d-%2d-%2d%n", &y, &m, &d, &n) != 3 || n != 10) {
        return -1;
    }
    static const int mdays[] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (y < 1970 || m < 1 || m > 12 || d < 1 || d > mdays[m - 1] || (m == 2 && d == 29 && !leap)) {
        return -1;
    }
    return y * 10000 + m * 100 + d;
}

static int s_cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static void s_cal_timezone(struct rules_cal *cal, struct rules_file *f, const struct rules_stmt *st,
                           bool *seen)
{
    const struct rules_tok *t = st->n > 1 ? &st->tok[1] : NULL;
    if (t == NULL || t->kind == RULES_PUNCT) {
        rules_file_error(f, st, t, 0, "timezone needs a zone of the TZ database (e.g. America/Sao_Paulo)");
    } else if (*seen) {
        rules_file_error(f, st, &st->tok[0], 0, "a second timezone (one per file)");
    } else if (strlen(t->s) >= RULES_ZONE_MAX || !rules_zone_valid(t->s)) {
        rules_file_error(f, st, t, 0, "unknown time zone '%s'", t->s);
    } else if (st->n > 2) {
        rules_file_error(f, st, &st->tok[2], 0, "unexpected '%s' after the time zone", st->tok[2].s);
    } else {
        snprintf(cal->zone, sizeof cal->zone, "%s", t->s);
        *seen = true;
    }
}

static void s_cal_holiday(struct rules_cal *cal, struct rules_file *f, const struct rules_stmt *st)
{
    size_t i = 1;
    bool want = true;           /* a date is due */
    for (; i < st->n; i++) {
        const struct rules_tok *t = &st->tok[i];
        if (!want && rules_tok_is(t, ",")) {
            want = true;
            continue;
        }
        if (!want && t->kind == RULES_STR && i + 1 == st->n) {
            return;             /* the holiday's name, for people */
        }
        int32_t d = t->kind == RULES_WORD ? s_date(t->s) : -1;
        if (!want || d < 0) {
            rules_file_error(f, st, t, 0, "'%s' is not a date (YYYY-MM-DD)%s", t->s,
                             want ? "" : "; dates are separated by commas, a \"name\" comes last");
            return;
        }
        int32_t *h = realloc(cal->holidays, (cal->nholidays + 1) * sizeof *h);
        if (h == NULL) {
            rules_file_error(f, st, t, 0, "out of memory");
            return;
        }
        cal->holidays = h;
        cal->holidays[cal->nholidays++] = d;
        want = false;
    }
    if (want) {
        rules_file_error(f, st, NULL, 0, "holiday needs a date (YYYY-MM-DD)");
    }
}

static void s_cal_hours(struct rules_cal *cal, struct rules_file *f, const struct rules_stmt *st)
{
    if (st->n < 3 || st->tok[1].kind != RULES_WORD || st->tok[2].kind != RULES_STR) {
        rules_file_error(f, st, st->n > 1 ? &st->tok[1] : NULL, 0,
                         "expected hours NAME \"SPEC\" (e.g. hours comercial \"seg-sex 09:00-18:00\")");
        return;
    }
    if (st->n > 3) {
        rules_file_error(f, st, &st->tok[3], 0, "unexpected '%s' after the hours", st->tok[3].s);
        return;
    }
    const struct rules_tok *nt = &st->tok[1];
    if (!rules_name_valid(nt->s)) {
        rules_file_error(f, st, nt, 0, "'%s' is not a name (letters, digits, _ - .)", nt->s);
        return;
    }
    for (size_t i = 0; i < cal->nnamed; i++) {
        if (strcmp(cal->named[i].name, nt->s) == 0) {
            rules_file_error(f, st, nt, 0, "hours '%s' are defined twice", nt->s);
            return;
        }
    }
    bool owned;
    struct rules_hours *h = rules_cal_hours(cal, f, st, &st->tok[2], &owned);
    if (h == NULL) {
        return;
    }
    struct rules_named_hours *nh = realloc(cal->named, (cal->nnamed + 1) * sizeof *nh);
    char *name = strdup(nt->s);
    if (nh == NULL || name == NULL) {
        free(name);
        if (nh != NULL) {
            cal->named = nh;
        }
        rules_hours_destroy(&h);
        rules_file_error(f, st, nt, 0, "out of memory");
        return;
    }
    cal->named = nh;
    cal->named[cal->nnamed++] = (struct rules_named_hours){ name, h };
}

void rules_cal_read(struct rules_cal *cal, struct rules_file *f)
{
    if (cal->zone[0] == '\0') {
        snprintf(cal->zone, sizeof cal->zone, "UTC");
    }
    bool seen = false;
    for (size_t i = 0; i < f->nstmt; i++) {
        if (s_stmt_is(&f->stmt[i], "timezone")) {
            s_cal_timezone(cal, f, &f->stmt[i], &seen);
        }
    }
    for (size_t i = 0; i < f->nstmt; i++) {
        if (s_stmt_is(&f->stmt[i], "holiday")) {
            s_cal_holiday(cal, f, &f->stmt[i]);
        }
    }
    if (cal->nholidays > 1) {
        qsort(cal->holidays, cal->nholidays, sizeof *cal->holidays, s_cmp_i32);
    }
    if (cal->clock == NULL) {
        char err[160];
        size_t at;
        cal->clock = rules_hours_parse("00:00-24:00", cal, err, sizeof err, &at);
    }
    for (size_t i = 0; i < f->nstmt; i++) {
        if (s_stmt_is(&f->stmt[i], "hours")) {
            s_cal_hours(cal, f, &f->stmt[i]);
        }
    }
}

struct rules_hours *rules_cal_hours(struct rules_cal *cal, struct rules_file *f,
                                    const struct rules_stmt *st, const struct rules_tok *t,
                                    bool *owned)
{
    *owned = false;
    if (t == NULL || t->kind == RULES_PUNCT) {
        rules_file_error(f, st, t, 0, "expected hours: a name or a \"SPEC\" (e.g. \"seg-sex 09:00-18:00\")");
        return NULL;
    }
    if (t->kind == RULES_WORD) {
        for (size_t i = 0; i < cal->nnamed; i++) {
            if (strcmp(cal->named[i].name, t->s) == 0) {
                return cal->named[i].hours;
            }
        }
        rules_file_error(f, st, t, 0, "unknown hours '%s' (define them: hours %s \"seg-sex 09:00-18:00\")",
                         t->s, t->s);
        return NULL;
    }
    char err[200];
    size_t at = 0;
    struct rules_hours *h = rules_hours_parse(t->s, cal, err, sizeof err, &at);
    if (h == NULL) {
        rules_file_error(f, st, t, at + 1, "%s", err);
        return NULL;
    }
    *owned = true;
    return h;
}

void rules_cal_free(struct rules_cal *cal)
{
    for (size_t i = 0; i < cal->nnamed; i++) {
        free(cal->named[i].name);
        rules_hours_destroy(&cal->named[i].hours);
    }
    free(cal->named);
    free(cal->holidays);
    rules_hours_destroy(&cal->clock);
    memset(cal, 0, sizeof *cal);
}

/* ---- conditions ---------------------------------------------------------- */

enum cond_kind {
    C_ALWAYS,       /* * */
    C_AND,          /* a and b */
    C_OR,           /* a or b */
    C_NOT,          /* not a */
    C_CHANNEL,      /* channel whatsapp, sms */
    C_DIR,          /* dir in */
    C_STATE,        /* state queued */
    C_HOURS,        /* hours comercial */
    C_HOLIDAY,      /* holiday */
    C_FIELD,        /* text ~ "...", meta.vip = "true", customer */
};

/* The envelope values a field condition reads. */
enum field {
    F_TEXT,         /* text (and, for ~, the subject too) */
    F_SUBJECT,      /* subject */
    F_FROM,         /* from */
    F_TO,           /* to */
    F_CUSTOMER,     /* customer */
    F_CONVERSATION, /* conversation */
    F_ATTACHMENTS,  /* attachments (presence only) */
    F_META,         /* meta.KEY */
};

enum field_op {
    OP_HAS,         /* present and not empty */
    OP_EQ,          /* = "value" */
    OP_NE,          /* != "value" */
    OP_RE,          /* ~ "regex" */
};

struct rules_cond {
    enum cond_kind kind;        /* what it tests */
    struct rules_cond *a;       /* and/or/not: first operand */
    struct rules_cond *b;       /* and/or: second operand */
    uint32_t set;               /* channel/dir/state: a bit per member */
    enum field field;           /* C_FIELD: which value */
    enum field_op op;           /* C_FIELD: how */
    char *key;                  /* F_META: the key after "meta." */
    char *value;                /* OP_EQ, OP_NE: the value */
    pcre2_code *re;             /* OP_RE: compiled */
    struct rules_hours *hours;  /* C_HOURS */
    bool owns_hours;            /* hours were written inline, not named */
    char *src;                  /* as written, for explain */
};

static const char *const s_channels[] = {
    "whatsapp", "sms", "telegram", "messenger", "email", "webchat", "voice", "inperson", "api", NULL
};
static const char *const s_dirs[] = { "in", "out", "event", NULL };
static const char *const s_states[] = { "new", "bot", "queued", "assigned", NULL };
static const struct {
    const char *name;           /* as written */
    enum field field;           /* which */
} s_fields[] = {
    { "text", F_TEXT }, { "subject", F_SUBJECT }, { "from", F_FROM }, { "to", F_TO },
    { "customer", F_CUSTOMER }, { "conversation", F_CONVERSATION },
    { "attachments", F_ATTACHMENTS },
};
static const char *const s_keywords[] = {
    "channel", "dir", "state", "hours", "holiday", "always", "text", "subject", "from", "to",
    "customer", "conversation", "attachments", "meta", "not", NULL
};

static void s_cond_free(struct rules_cond *c)
{
    if (c == NULL) {
        return;
    }
    s_cond_free(c->a);
    s_cond_free(c->b);
    free(c->key);
    free(c->value);
    pcre2_code_free(c->re);
    if (c->owns_hours) {
        rules_hours_destroy(&c->hours);
    }
    free(c->src);
    free(c);
}

struct rules {
    char *name;                 /* the file, as given */
    struct rules_cal cal;       /* zone, holidays, named hours */
    struct rules_rule *rule;    /* rules in order */
    size_t nrule;               /* how many */
    pcre2_match_context *mctx;  /* match limit */
    pcre2_match_data *md;       /* one match's offsets, reused */
    char *meta;                 /* a meta value being tested (META_MAX bytes) */
    uint64_t gave_up;           /* regex matches stopped by the limit */
    int nojit;                  /* regexes the JIT could not compile */
    struct log_limit limit;     /* rate limit of their log lines */
};

/* A recursive-descent parser over one statement. */
struct parser {
    struct rules *r;            /* what is being built */
    struct rules_file *f;       /* for messages */
    const struct rules_stmt *st;/* the statement */
    size_t i;                   /* next token */
    int depth;                  /* nesting */
};

static const struct rules_tok *s_peek(struct parser *p)
{
    return p->i < p->st->n ? &p->st->tok[p->i] : NULL;
}

static bool s_peek_word(struct parser *p, const char *w)
{
    const struct rules_tok *t = s_peek(p);
    return t != NULL && t->kind == RULES_WORD && strcmp(t->s, w) == 0;
}

/* Edit distance of two short words, for "did you mean". */
static int s_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 30 || lb > 30) {
        return 99;
    }
    int prev[32], cur[32];
    for (size_t j = 0; j <= lb; j++) {
        prev[j] = (int)j;
    }
    for (size_t i = 1; i <= la; i++) {
        cur[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            int del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, (lb + 1) * sizeof *cur);
    }
    return prev[lb];
}

/* " (did you mean 'x'?)" for the nearest of list, or "". */
static const char *s_suggest(const char *w, const char *const *list, char *out, size_t n)
{
    int best = 3;
    const char *pick = NULL;
    for (size_t i = 0; list[i] != NULL; i++) {
        int d = s_distance(w, list[i]);
        if (d < best) {
            best = d;
            pick = list[i];
        }
    }
    if (pick == NULL) {
        return "";
    }
    snprintf(out, n, " (did you mean '%s'?)", pick);
    return out;
}

/* The tokens [from, to) as written, for explain. */
static char *s_source(const struct rules_stmt *st, size_t from, size_t to)
{
    struct buf b = { 0 };
    for (size_t i = from; i < to; i++) {
        const struct rules_tok *t = &st->tok[i];
        bool tight = i == from || rules_tok_is(t, ",") || rules_tok_is(t, ")")
                     || rules_tok_is(&st->tok[i - 1], "(");
        if (!tight) {
            buf_putc(&b, ' ');
        }
        if (t->kind == RULES_STR) {
            buf_putc(&b, '"');
            for (const char *c = t->s; *c != '\0'; c++) {
                if (*c == '"') {
                    buf_putc(&b, '\\');
                }
                buf_putc(&b, *c);
            }
            buf_putc(&b, '"');
        } else {
            buf_puts(&b, t->s);
        }
    }
    if (b.data == NULL) {
        return strdup("");
    }
    return b.data;
}

static struct rules_cond *s_new(struct parser *p, enum cond_kind kind)
{
    struct rules_cond *c = calloc(1, sizeof *c);
    if (c == NULL) {
        rules_file_error(p->f, p->st, s_peek(p), 0, "out of memory");
        return NULL;
    }
    c->kind = kind;
    return c;
}

/* Reads "a, b, c" of names in list into a bit set. */
static int s_set_list(struct parser *p, const char *what, const char *const *list, uint32_t *set)
{
    *set = 0;
    for (;;) {
        const struct rules_tok *t = s_peek(p);
        if (t == NULL || t->kind != RULES_WORD) {
            rules_file_error(p->f, p->st, t, 0, "%s needs a name (%s, ...)", what, list[0]);
            return -1;
        }
        int k = -1;
        for (int i = 0; list[i] != NULL; i++) {
            if (strcmp(list[i], t->s) == 0) {
                k = i;
            }
        }
        if (k < 0) {
            char hint[80];
            rules_file_error(p->f, p->st, t, 0, "unknown %s '%s'%s", what, t->s,
                             s_suggest(t->s, list, hint, sizeof hint));
            return -1;
        }
        *set |= 1u << k;
        p->i++;
        if (!rules_tok_is(s_peek(p), ",")) {
            return 0;
        }
        p->i++;
    }
}

static int s_compile(struct parser *p, struct rules_cond *c, const struct rules_tok *t)
{
    int code;
    PCRE2_SIZE off;
    c->re = pcre2_compile((PCRE2_SPTR)t->s, PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP | PCRE2_CASELESS, &code, &off, NULL);
    if (c->re == NULL) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(code, msg, sizeof msg);
        rules_file_error(p->f, p->st, t, (size_t)off + 1, "bad regex: %s", (const char *)msg);
        return -1;
    }
    int jit = pcre2_jit_compile(c->re, PCRE2_JIT_COMPLETE);
    if (jit != 0 && p->r->nojit++ == 0) {
        /* Works on, interpreted: slower (a systemd unit with
         * MemoryDenyWriteExecute=yes forbids the JIT's executable memory). */
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(jit, msg, sizeof msg);
        log_msg(LOG_WARN, "%s: no PCRE2 JIT (%s): regexes run interpreted, about 3 times slower",
                p->f->name, (const char *)msg);
    }
    return 0;
}

static struct rules_cond *s_leaf(struct parser *p)
{
    const struct rules_tok *t = s_peek(p);
    size_t from = p->i;
    struct rules_cond *c = NULL;
    if (t == NULL) {
        rules_file_error(p->f, p->st, NULL, 0, "expected a condition");
        return NULL;
    }
    if (rules_tok_is(t, "*") || (t->kind == RULES_WORD && strcmp(t->s, "always") == 0)) {
        p->i++;
        c = s_new(p, C_ALWAYS);
        goto done;
    }
    if (t->kind != RULES_WORD) {
        rules_file_error(p->f, p->st, t, 0, "expected a condition, not '%s'", t->s);
        return NULL;
    }
    const char *w = t->s;
    static const struct {
        const char *word;               /* keyword */
        enum cond_kind kind;            /* what it makes */
        const char *const *list;        /* its names */
    } sets[] = {
        { "channel", C_CHANNEL, s_channels }, { "dir", C_DIR, s_dirs }, { "state", C_STATE, s_states },
    };
    for (size_t k = 0; k < sizeof sets / sizeof *sets; k++) {
        if (strcmp(w, sets[k].word) == 0) {
            p->i++;
            if (rules_tok_is(s_peek(p), "=")) {
                p->i++;                 /* `channel = sms` reads as `channel sms` */
            }
            c = s_new(p, sets[k].kind);
            if (c == NULL || s_set_list(p, w, sets[k].list, &c->set) != 0) {
                s_cond_free(c);
                return NULL;
            }
            goto done;
        }
    }
    if (strcmp(w, "hours") == 0) {
        p->i++;
        c = s_new(p, C_HOURS);
        if (c == NULL) {
            return NULL;
        }
        c->hours = rules_cal_hours(&p->r->cal, p->f, p->st, s_peek(p), &c->owns_hours);
        if (c->hours == NULL) {
            s_cond_free(c);
            return NULL;
        }
        p->i++;
        goto done;
    }
    if (strcmp(w, "holiday") == 0) {
        p->i++;
        c = s_new(p, C_HOLIDAY);
        goto done;
    }
    int field = -1;
    for (size_t k = 0; k < sizeof s_fields / sizeof *s_fields; k++) {
        if (strcmp(w, s_fields[k].name) == 0) {
            field = (int)s_fields[k].field;
        }
    }
    if (strncmp(w, "meta.", 5) == 0) {
        if (w[5] == '\0') {
            rules_file_error(p->f, p->st, t, 5, "meta. needs a key (e.g. meta.vip)");
            return NULL;
        }
        field = F_META;
    }
    if (field < 0) {
        char hint[80];
        rules_file_error(p->f, p->st, t, 0, "unknown condition '%s'%s", w,
                         s_suggest(w, s_keywords, hint, sizeof hint));
        return NULL;
    }
    p->i++;
    c = s_new(p, C_FIELD);
    if (c == NULL) {
        return NULL;
    }
    c->field = (enum field)field;
    if (field == F_META && (c->key = strdup(w + 5)) == NULL) {
        s_cond_free(c);
        return NULL;
    }
    const struct rules_tok *op = s_peek(p);
    if (rules_tok_is(op, "~") || rules_tok_is(op, "=") || rules_tok_is(op, "!=")) {
        if (field == F_ATTACHMENTS) {
            rules_file_error(p->f, p->st, op, 0, "attachments can only be tested for presence");
            s_cond_free(c);
            return NULL;
        }
        p->i++;
        const struct rules_tok *v = s_peek(p);
        bool re = rules_tok_is(op, "~");
        if (v == NULL || (v->kind != RULES_STR && (re || v->kind != RULES_WORD))) {
            rules_file_error(p->f, p->st, v, 0, re ? "~ needs a \"regex\"" : "%s needs a \"value\"",
                             op->s);
            s_cond_free(c);
            return NULL;
        }
        p->i++;
        c->op = re ? OP_RE : rules_tok_is(op, "=") ? OP_EQ : OP_NE;
        if (re ? s_compile(p, c, v) != 0 : (c->value = strdup(v->s)) == NULL) {
            s_cond_free(c);
            return NULL;
        }
    } else {
        c->op = OP_HAS;
    }
done:
    if (c != NULL && (c->src = s_source(p->st, from, p->i)) == NULL) {
        s_cond_free(c);
        return NULL;
    }
    return c;
}

static struct rules_cond *s_or(struct parser *p);

static struct rules_cond *s_factor(struct parser *p)
{
    if (++p->depth > MAX_DEPTH) {
        rules_file_error(p->f, p->st, s_peek(p), 0, "conditions nested too deep");
        return NULL;
    }
    struct rules_cond *c = NULL;
    size_t from = p->i;
    if (s_peek_word(p, "not")) {
        p->i++;
        struct rules_cond *a = s_factor(p);
        if (a != NULL && (c = s_new(p, C_NOT)) == NULL) {
            s_cond_free(a);
        } else if (c != NULL) {
            c->a = a;
        }
    } else if (rules_tok_is(s_peek(p), "(")) {
        const struct rules_tok *open = s_peek(p);
        p->i++;
        c = s_or(p);
        if (c != NULL && !rules_tok_is(s_peek(p), ")")) {
            rules_file_error(p->f, p->st, s_peek(p), 0, "expected ')' to close the '(' at column %d",
                             open->col);
            s_cond_free(c);
            c = NULL;
        } else if (c != NULL) {
            p->i++;
        }
    } else {
        c = s_leaf(p);
    }
    if (c != NULL && c->src == NULL && (c->src = s_source(p->st, from, p->i)) == NULL) {
        s_cond_free(c);
        c = NULL;
    }
    p->depth--;
    return c;
}

/* term ('and' term)* or factor ('or' ...)*: the same loop, two levels. */
static struct rules_cond *s_chain(struct parser *p, const char *word, enum cond_kind kind,
                                  struct rules_cond *(*next)(struct parser *))
{
    size_t from = p->i;
    struct rules_cond *c = next(p);
    while (c != NULL && s_peek_word(p, word)) {
        p->i++;
        struct rules_cond *b = next(p);
        struct rules_cond *n = b ? s_new(p, kind) : NULL;
        if (n == NULL) {
            s_cond_free(b);
            s_cond_free(c);
            return NULL;
        }
        n->a = c;
        n->b = b;
        if ((n->src = s_source(p->st, from, p->i)) == NULL) {
            s_cond_free(n);
            return NULL;
        }
        c = n;
    }
    return c;
}

static struct rules_cond *s_and(struct parser *p)
{
    return s_chain(p, "and", C_AND, s_factor);
}

static struct rules_cond *s_or(struct parser *p)
{
    return s_chain(p, "or", C_OR, s_and);
}

/* True when c matches everything (a `*`, or `always`). */
static bool s_catch_all(const struct rules_cond *c)
{
    return c->kind == C_ALWAYS;
}

/* -> bot | queue NAME | keep, then priority N and reason "...". */
static int s_action(struct parser *p, struct rules_rule *rule)
{
    const struct rules_tok *t = s_peek(p);
    static const char *const actions[] = { "bot", "queue", "keep", NULL };
    if (t == NULL || t->kind != RULES_WORD) {
        rules_file_error(p->f, p->st, t, 0, "expected an action after '->': bot, queue NAME or keep");
        return -1;
    }
    p->i++;
    if (strcmp(t->s, "bot") == 0) {
        rule->action = RULES_BOT;
    } else if (strcmp(t->s, "keep") == 0) {
        rule->action = RULES_KEEP;
    } else if (strcmp(t->s, "queue") == 0) {
        rule->action = RULES_QUEUE;
        const struct rules_tok *q = s_peek(p);
        if (q == NULL || q->kind != RULES_WORD || !rules_name_valid(q->s)) {
            rules_file_error(p->f, p->st, q, 0, "queue needs a name (letters, digits, _ - .)");
            return -1;
        }
        if (strcmp(q->s, "bot") == 0) {
            rules_file_error(p->f, p->st, q, 0, "a queue cannot be named 'bot' (write `-> bot`)");
            return -1;
        }
        if ((rule->queue = strdup(q->s)) == NULL) {
            return -1;
        }
        p->i++;
    } else {
        char hint[80];
        rules_file_error(p->f, p->st, t, 0, "unknown action '%s'%s; expected bot, queue NAME or keep",
                         t->s, s_suggest(t->s, actions, hint, sizeof hint));
        return -1;
    }
    while ((t = s_peek(p)) != NULL) {
        static const char *const mods[] = { "priority", "reason", NULL };
        const struct rules_tok *v = p->i + 1 < p->st->n ? &p->st->tok[p->i + 1] : NULL;
        if (t->kind == RULES_WORD && strcmp(t->s, "priority") == 0) {
            char *end = NULL;
            long long n = v && v->kind == RULES_WORD ? strtoll(v->s, &end, 10) : -1;
            if (v == NULL || end == NULL || *end != '\0' || end == v->s || n < 0 || n > 1000) {
                rules_file_error(p->f, p->st, v, 0, "priority needs a number 0..1000");
                return -1;
            }
            if (rule->action == RULES_BOT) {
                rules_file_error(p->f, p->st, t, 0, "priority orders a queue; the bot has none");
                return -1;
            }
            if (rule->has_priority) {
                rules_file_error(p->f, p->st, t, 0, "priority given twice");
                return -1;
            }
            rule->priority = n;
            rule->has_priority = true;
        } else if (t->kind == RULES_WORD && strcmp(t->s, "reason") == 0) {
            if (v == NULL || v->kind != RULES_STR) {
                rules_file_error(p->f, p->st, v, 0, "reason needs a \"string\"");
                return -1;
            }
            if (rule->reason != NULL) {
                rules_file_error(p->f, p->st, t, 0, "reason given twice");
                return -1;
            }
            if ((rule->reason = strdup(v->s)) == NULL) {
                return -1;
            }
        } else {
            char hint[80];
            rules_file_error(p->f, p->st, t, 0, "unexpected '%s' after the action (priority N or reason \"...\")%s",
                             t->s, t->kind == RULES_WORD ? s_suggest(t->s, mods, hint, sizeof hint) : "");
            return -1;
        }
        p->i += 2;
    }
    return 0;
}

static void s_rule_free(struct rules_rule *rule)
{
    free(rule->name);
    s_cond_free(rule->cond);
    free(rule->queue);
    free(rule->reason);
}

/* rule NAME: CONDITION -> ACTION */
static void s_rule(struct rules *r, struct rules_file *f, const struct rules_stmt *st)
{
    struct parser p = { r, f, st, 1, 0 };
    struct rules_rule rule = { 0 };
    const struct rules_tok *t = s_peek(&p);
    if (t == NULL || t->kind != RULES_WORD) {
        rules_file_error(f, st, t, 0, "rule needs a name: rule NAME: CONDITION -> ACTION");
        return;
    }
    if (!rules_name_valid(t->s)) {
        rules_file_error(f, st, t, 0, "'%s' is not a rule name (letters, digits, _ - .)", t->s);
        return;
    }
    for (size_t i = 0; i < r->nrule; i++) {
        if (strcmp(r->rule[i].name, t->s) == 0) {
            rules_file_error(f, st, t, 0, "a second rule named '%s' (the first is on line %d)", t->s,
                             r->rule[i].line);
            return;
        }
    }
    rule.line = t->line;
    p.i++;
    if (!rules_tok_is(s_peek(&p), ":")) {
        rules_file_error(f, st, s_peek(&p), 0, "expected ':' after the rule's name");
        return;
    }
    p.i++;
    if ((rule.name = strdup(t->s)) == NULL) {
        goto fail;
    }
    if ((rule.cond = s_or(&p)) == NULL) {
        goto fail;
    }
    const struct rules_tok *arrow = s_peek(&p);
    if (!rules_tok_is(arrow, "->")) {
        if (arrow != NULL && arrow->kind == RULES_WORD) {
            char hint[80];
            rules_file_error(f, st, arrow, 0, "unknown condition '%s'%s, or a missing 'and', 'or' or '->'",
                             arrow->s, s_suggest(arrow->s, s_keywords, hint, sizeof hint));
        } else {
            rules_file_error(f, st, arrow, 0, "expected '->' and an action after the condition");
        }
        goto fail;
    }
    p.i++;
    if (s_action(&p, &rule) != 0) {
        goto fail;
    }
    struct rules_rule *grown = realloc(r->rule, (r->nrule + 1) * sizeof *grown);
    if (grown == NULL) {
        rules_file_error(f, st, t, 0, "out of memory");
        goto fail;
    }
    r->rule = grown;
    r->rule[r->nrule++] = rule;
    return;
fail:
    s_rule_free(&rule);
}

void rules_destroy(struct rules **rp)
{
    if (rp == NULL || *rp == NULL) {
        return;
    }
    struct rules *r = *rp;
    for (size_t i = 0; i < r->nrule; i++) {
        s_rule_free(&r->rule[i]);
    }
    free(r->rule);
    rules_cal_free(&r->cal);
    pcre2_match_context_free(r->mctx);
    pcre2_match_data_free(r->md);
    free(r->meta);
    free(r->name);
    free(r);
    *rp = NULL;
}

/* Reads the statements of f into a new rules. */
static struct rules *s_build(struct rules_file *f, const struct rules_opts *o)
{
    struct rules *r = calloc(1, sizeof *r);
    if (r == NULL || (r->name = strdup(f->name)) == NULL || (r->meta = malloc(META_MAX)) == NULL
        || (r->mctx = pcre2_match_context_create(NULL)) == NULL
        || (r->md = pcre2_match_data_create(1, NULL)) == NULL) {
        buf_printf(f->msgs, "%s: out of memory\n", f->name);
        f->errors++;
        rules_destroy(&r);
        return NULL;
    }
    pcre2_set_match_limit(r->mctx, o && o->match_limit ? o->match_limit : RULES_MATCH_LIMIT);
    rules_cal_read(&r->cal, f);
    for (size_t i = 0; i < f->nstmt; i++) {
        const struct rules_stmt *st = &f->stmt[i];
        if (rules_cal_is_stmt(st)) {
            continue;
        }
        const struct rules_tok *t = &st->tok[0];
        if (t->kind == RULES_WORD && strcmp(t->s, "rule") == 0) {
            s_rule(r, f, st);
        } else {
            static const char *const stmts[] = { "rule", "hours", "holiday", "timezone", NULL };
            char hint[80];
            rules_file_error(f, st, t, 0, "unknown statement '%s'%s (expected rule, hours, holiday or timezone)",
                             t->s, t->kind == RULES_WORD ? s_suggest(t->s, stmts, hint, sizeof hint) : "");
        }
    }
    if (f->errors == 0 && r->nrule == 0) {
        buf_printf(f->msgs, "%s:1:1: no rules (the last is usually `rule padrao: * -> bot`)\n", f->name);
        f->errors++;
    }
    /* Rules after a catch-all of their kind are never reached. */
    for (int keep = 0; keep < 2 && f->errors == 0; keep++) {
        const struct rules_rule *all = NULL;
        for (size_t i = 0; i < r->nrule; i++) {
            const struct rules_rule *ru = &r->rule[i];
            if ((ru->action == RULES_KEEP) != keep) {
                continue;
            }
            if (all != NULL) {
                buf_printf(f->msgs, "%s:%d:1: warning: rule %s is never reached: rule %s (line %d) matches everything\n",
                           f->name, ru->line, ru->name, all->name, all->line);
                f->warnings++;
            } else if (s_catch_all(ru->cond)) {
                all = ru;
            }
        }
    }
    if (f->errors > 0) {
        rules_destroy(&r);
    }
    return r;
}

struct rules *rules_parse(const char *name, const char *text, size_t n, const struct rules_opts *o,
                          struct buf *msgs)
{
    struct rules_file f;
    struct rules *r = NULL;
    if (rules_file_parse(&f, name, text, n, msgs) == 0) {
        r = s_build(&f, o);
    }
    rules_file_free(&f);
    return r;
}

struct rules *rules_load(const char *path, const struct rules_opts *o, struct buf *msgs)
{
    struct rules_file f;
    struct rules *r = NULL;
    if (rules_file_read(&f, path, msgs) == 0) {
        r = s_build(&f, o);
    }
    rules_file_free(&f);
    return r;
}

size_t rules_count(const struct rules *r)
{
    return r->nrule;
}

const struct rules_rule *rules_get(const struct rules *r, size_t i)
{
    return i < r->nrule ? &r->rule[i] : NULL;
}

const char *rules_name(const struct rules *r)
{
    return r->name;
}

const char *rules_state_name(enum rules_state s)
{
    return s < RULES_NSTATES ? s_states[s] : "?";
}

uint64_t rules_gave_up(const struct rules *r)
{
    return r->gave_up;
}

/* ---- matching ------------------------------------------------------------ */

/* A regex against s[0..n). Returns 1, 0, or -1 when PCRE2 gave up (match
 * limit) or failed; *mo and *ml locate the match. */
static int s_re(struct rules *r, const struct rules_cond *c, const char *s, size_t n, bool valid,
                size_t *mo, size_t *ml)
{
    int rc = pcre2_match(c->re, (PCRE2_SPTR)s, n, 0, valid ? PCRE2_NO_UTF_CHECK : 0, r->md, r->mctx);
    if (rc >= 0) {
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(r->md);
        *mo = ov[0];
        *ml = ov[1] >= ov[0] ? ov[1] - ov[0] : 0;
        return 1;
    }
    if (rc == PCRE2_ERROR_NOMATCH) {
        return 0;
    }
    r->gave_up++;
    PCRE2_UCHAR msg[120];
    pcre2_get_error_message(rc, msg, sizeof msg);
    log_limited(&r->limit, LOG_WARN, "regex %s gave up: %s (counted as no match)", c->src,
                (const char *)msg);
    return -1;
}

/* A string value of the envelope for field c, or NULL when absent. */
static const char *s_value(struct rules *r, const struct rules_cond *c, const struct env *e,
                           char *why, size_t whyn)
{
    static const enum env_key keys[] = {
        [F_TEXT] = ENV_TEXT, [F_SUBJECT] = ENV_SUBJECT, [F_FROM] = ENV_FROM, [F_TO] = ENV_TO,
        [F_CUSTOMER] = ENV_CUSTOMER, [F_CONVERSATION] = ENV_CONVERSATION,
    };
    if (c->field != F_META) {
        return env_get(e, keys[c->field]);
    }
    int got = env_map_str(e, ENV_META, c->key, r->meta, META_MAX);
    if (got > 0) {
        return r->meta;
    }
    if (got == 0) {
        return NULL;
    }
    int64_t i;
    bool b;
    if (env_map_int(e, ENV_META, c->key, &i) > 0) {
        snprintf(r->meta, META_MAX, "%lld", (long long)i);
        return r->meta;
    }
    if (env_map_bool(e, ENV_META, c->key, &b) > 0) {
        snprintf(r->meta, META_MAX, "%s", b ? "true" : "false");
        return r->meta;
    }
    snprintf(why, whyn, "meta.%s is not a string, number or boolean", c->key);
    return NULL;
}

/* Appends " (...)" with up to 40 characters of s for explain. */
static void s_quote(struct buf *b, const char *label, const char *s, size_t n)
{
    buf_printf(b, "  (%s \"", label);
    size_t k = 0;
    int chars = 0;
    while (k < n && chars < 40) {
        unsigned char ch = (unsigned char)s[k];
        size_t l = ch < 0x80 ? 1 : ch < 0xE0 ? 2 : ch < 0xF0 ? 3 : 4;
        if (k + l > n) {
            break;
        }
        if (ch == '\n' || ch == '\r' || ch == '\t') {
            buf_putc(b, ' ');
        } else if (ch == '"' || ch == '\\') {
            buf_putc(b, '\\');
            buf_putc(b, (char)ch);
        } else {
            buf_append(b, s + k, l);
        }
        k += l;
        chars++;
    }
    buf_printf(b, "%s\")", k < n ? "…" : "");
}

static const char *const s_wdays[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };

static void s_when(struct buf *b, const struct rules_when *w)
{
    buf_printf(b, "  (%s %04d-%02d-%02d %02d:%02d %s%s)", s_wdays[w->wday], w->year, w->month,
               w->day, w->minute / 60, w->minute % 60, w->zone, w->holiday ? ", a holiday" : "");
}

static bool s_eval(struct rules *r, const struct rules_cond *c, const struct rules_input *in,
                   struct buf *why, int depth);

/* A field condition; detail (explain) says what was seen. */
static bool s_field(struct rules *r, const struct rules_cond *c, const struct env *e, struct buf *d)
{
    char why[120] = "";
    if (c->field == F_ATTACHMENTS) {
        bool has = env_has(e, ENV_ATTACHMENTS);
        if (d != NULL) {
            buf_printf(d, "  (%s)", has ? "present" : "absent");
        }
        return has;
    }
    if (c->op == OP_RE && c->field == F_TEXT) {
        /* text ~ looks at the subject too: an e-mail often says it there. */
        static const enum env_key keys[] = { ENV_SUBJECT, ENV_TEXT };
        bool seen = false;
        for (size_t k = 0; k < 2; k++) {
            const char *s = env_get(e, keys[k]);
            size_t mo, ml;
            if (s == NULL) {
                continue;
            }
            seen = true;
            int m = s_re(r, c, s, strlen(s), true, &mo, &ml);
            if (m > 0) {
                if (d != NULL) {
                    s_quote(d, keys[k] == ENV_TEXT ? "text has" : "subject has", s + mo, ml);
                }
                return true;
            }
            if (m < 0 && d != NULL) {
                buf_printf(d, "  (gave up: match limit)");
            }
        }
        if (d != NULL && !seen) {
            buf_printf(d, "  (no text)");
        }
        return false;
    }
    const char *v = s_value(r, c, e, why, sizeof why);
    const char *label = c->field == F_META ? "meta" : s_fields[c->field].name;
    if (v == NULL) {
        if (d != NULL) {
            if (why[0] != '\0') {
                buf_printf(d, "  (%s)", why);
            } else if (c->field == F_META) {
                buf_printf(d, "  (meta.%s absent)", c->key);
            } else {
                buf_printf(d, "  (%s absent)", label);
            }
        }
        return c->op == OP_NE;
    }
    bool res = false;
    size_t mo = 0, ml = strlen(v);
    switch (c->op) {
    case OP_HAS:
        res = v[0] != '\0' && strcmp(v, "false") != 0 && strcmp(v, "0") != 0;
        break;
    case OP_EQ:
        res = strcmp(v, c->value) == 0;
        break;
    case OP_NE:
        res = strcmp(v, c->value) != 0;
        break;
    case OP_RE: {
        int m = s_re(r, c, v, strlen(v), c->field != F_META, &mo, &ml);
        if (m < 0 && d != NULL) {
            buf_printf(d, "  (gave up: match limit)");
            return false;
        }
        res = m > 0;
        if (!res) {
            mo = 0;
            ml = strlen(v);
        }
        break;
    }
    }
    if (d != NULL) {
        s_quote(d, c->op == OP_RE && res ? "has" : "is", v + mo, ml);
    }
    return res;
}

static bool s_eval(struct rules *r, const struct rules_cond *c, const struct rules_input *in,
                   struct buf *why, int depth)
{
    bool res = false;
    size_t line = 0;                /* where this node's line starts in why */
    if (why != NULL) {
        line = why->len;
        buf_printf(why, "      %-5s  %*s", "", depth * 2, "");
        if (c->kind == C_AND || c->kind == C_OR || c->kind == C_NOT) {
            buf_puts(why, c->kind == C_AND ? "and" : c->kind == C_OR ? "or" : "not");
            buf_putc(why, '\n');
        } else {
            buf_puts(why, c->src);
        }
    }
    const struct env *e = in->env;
    switch (c->kind) {
    case C_ALWAYS:
        res = true;
        break;
    case C_AND:
    case C_OR: {
        bool a = s_eval(r, c->a, in, why, depth + 1);
        bool b;
        if (why == NULL && (c->kind == C_AND ? !a : a)) {
            b = a;                  /* decided: no need for the other side */
        } else {
            b = s_eval(r, c->b, in, why, depth + 1);
        }
        res = c->kind == C_AND ? a && b : a || b;
        break;
    }
    case C_NOT:
        res = !s_eval(r, c->a, in, why, depth + 1);
        break;
    case C_CHANNEL:
    case C_DIR: {
        const char *const *list = c->kind == C_CHANNEL ? s_channels : s_dirs;
        const char *v = env_get(e, c->kind == C_CHANNEL ? ENV_CHANNEL : ENV_DIR);
        for (int k = 0; v != NULL && list[k] != NULL; k++) {
            if ((c->set >> k & 1) && strcmp(list[k], v) == 0) {
                res = true;
            }
        }
        if (why != NULL) {
            buf_printf(why, "  (%s %s)", c->kind == C_CHANNEL ? "channel" : "dir", v ? v : "absent");
        }
        break;
    }
    case C_STATE:
        res = (c->set >> in->state) & 1;
        if (why != NULL) {
            buf_printf(why, "  (state %s)", rules_state_name(in->state));
        }
        break;
    case C_HOURS: {
        struct rules_when w;
        res = rules_hours_open(c->hours, in->ms, &w);
        if (why != NULL) {
            s_when(why, &w);
        }
        break;
    }
    case C_HOLIDAY: {
        struct rules_when w;
        res = rules_cal_holiday(&r->cal, in->ms, &w);
        if (why != NULL && w.zone != NULL) {
            s_when(why, &w);
        }
        break;
    }
    case C_FIELD:
        res = s_field(r, c, e, why);
        break;
    }
    if (why != NULL) {
        /* The result goes in the column left for it. */
        memcpy(why->data + line + 6, res ? "true " : "false", 5);
        if (c->kind != C_AND && c->kind != C_OR && c->kind != C_NOT) {
            buf_putc(why, '\n');
        }
    }
    return res;
}

const struct rules_rule *rules_match(struct rules *r, const struct rules_input *in, bool keep,
                                     struct buf *why)
{
    for (size_t i = 0; i < r->nrule; i++) {
        const struct rules_rule *ru = &r->rule[i];
        if ((ru->action == RULES_KEEP) != keep) {
            continue;
        }
        size_t head = 0;
        if (why != NULL) {
            buf_printf(why, "    rule %s (%s:%d): ", ru->name, r->name, ru->line);
            head = why->len;
            buf_puts(why, "no match\n");
        }
        bool m = s_eval(r, ru->cond, in, why, 0);
        if (m) {
            if (why != NULL) {
                /* "no match\n" -> "MATCH\n", and the rest of the lines follow. */
                struct buf tail = { 0 };
                buf_append(&tail, why->data + head + 9, why->len - head - 9);
                why->len = head;
                buf_puts(why, "MATCH\n");
                buf_append(why, tail.data ? tail.data : "", tail.len);
                buf_free(&tail);
                size_t later = 0;
                for (size_t k = i + 1; k < r->nrule; k++) {
                    later += (r->rule[k].action == RULES_KEEP) == keep;
                }
                if (later > 0) {
                    buf_printf(why, "    (%zu later rule%s not tried: first match wins)\n", later,
                               later == 1 ? "" : "s");
                }
            }
            return ru;
        }
    }
    return NULL;
}
