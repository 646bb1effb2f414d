/* bot — the omni-bot stage and its eval command; see bot.h. */
#include "bot.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "endpoint.h"
#include "envelope.h"
#include "json.h"
#include "kb.h"
#include "llm.h"
#include "log.h"
#include "mail.h"
#include "ulid.h"

#define BOT_TOP 5               /* hits looked at per question */
#define HOURS_PER_DAY 4         /* opening intervals per weekday */
#define LLM_MARKER "HANDOFF"    /* what the model says when the articles do not answer */

static const char s_default_min_score[] = "6";
static const char s_default_min_margin[] = "1.5";

/* Options. */
struct bot_conf {
    const char *kb;             /* knowledge base file */
    const char *min_score;      /* best score needed to answer (text, a number) */
    const char *min_margin;     /* lead over the runner-up needed (text, a number) */
    const char *hours;          /* business hours, e.g. "mon-fri 08:00-20:00, sat 09:00-14:00" */
    const char *tz;             /* time zone of --hours */
    const char *handoff_queue;  /* the human queue handoffs go to */
    bool all;                   /* also answer envelopes without a route */
    const char *llm;            /* base URL of an OpenAI-compatible server, or NULL */
    const char *llm_model;      /* model name sent to it */
    int64_t llm_timeout_ms;     /* whole request */
    int64_t llm_articles;       /* top articles given as context */
    bool llm_unsure;            /* also ask the model when the KB is not sure */
    const char *handoffs;       /* PUSH a copy of each handoff event here, or NULL */
};

#define C(f) offsetof(struct bot_conf, f)
static const struct opt s_opts[] = {
    { "kb", OPT_STR, NULL, C(kb), "the knowledge base (omni-kb import; required)" },
    { "min-score", OPT_STR, s_default_min_score, C(min_score),
      "best article's score (-bm25) needed to answer" },
    { "min-margin", OPT_STR, s_default_min_margin, C(min_margin),
      "lead of the best article over the runner-up needed to answer" },
    { "hours", OPT_STR, NULL, C(hours),
      "when people answer, e.g. \"mon-fri 08:00-20:00, sat 09:00-14:00\" (unset: always)" },
    { "tz", OPT_STR, "America/Sao_Paulo", C(tz), "time zone of --hours" },
    { "handoff-queue", OPT_STR, "geral", C(handoff_queue), "the human queue handoffs go to" },
    { "all", OPT_BOOL, "no", C(all), "also answer inbound envelopes that have no route" },
    { "llm", OPT_STR, NULL, C(llm),
      "OpenAI-compatible server (llama.cpp, Ollama, vLLM) that phrases answers, e.g. http://127.0.0.1:8080" },
    { "llm-model", OPT_STR, "local", C(llm_model), "model name sent to --llm" },
    { "llm-timeout", OPT_MS, "5s", C(llm_timeout_ms), "longest an --llm request may take" },
    { "llm-articles", OPT_INT, "3", C(llm_articles), "top articles given to --llm as context" },
    { "llm-unsure", OPT_BOOL, "no", C(llm_unsure),
      "also ask --llm when the KB alone would hand off (it may answer or say HANDOFF)" },
    { "handoffs", OPT_STR, NULL, C(handoffs),
      "also send each handoff event here (PUSH; a bare URI connects): omni-route's --in, so that "
      "it queues the conversation and assigns an agent" },
    { NULL, 0, NULL, 0, NULL }
};
#undef C

#define HANDOFFS_WAIT_MS 1000   /* a copy to --handoffs waits this long for room */

/* The thresholds of the decision. */
struct bot_params {
    double min_score;           /* best score needed */
    double min_margin;          /* lead over the runner-up needed */
};

/* Business hours: opening intervals per weekday, minutes since midnight. */
struct bot_hours {
    bool set;                                   /* false: always open */
    int n[7];                                   /* intervals per weekday (0 = Sunday) */
    int start[7][HOURS_PER_DAY];                /* opening minute */
    int end[7][HOURS_PER_DAY];                  /* closing minute (exclusive) */
};

/* What the bot decided about one question. */
struct bot_decision {
    bool answer;                /* answer with hits[0]; otherwise hand off */
    const char *reason;         /* handoff: asked-for-human, escalation, low-confidence, no-text */
    struct kb_hit hits[BOT_TOP]; /* best first */
    int nhits;                  /* hits filled */
    double margin;              /* hits[0].score - hits[1].score (or hits[0].score) */
};

struct bot {
    struct bot_conf *conf;      /* options */
    struct bot_params params;   /* parsed thresholds */
    struct bot_hours hours;     /* parsed --hours */
    struct kb *kb;              /* the knowledge base */
    struct llm_conf llm_conf;   /* --llm settings */
    struct llm *llm;            /* client, or NULL */
    struct env *reply;          /* reply being built */
    struct env *event;          /* handoff event being built */
    struct ep *handoffs;        /* --handoffs, or NULL */
    struct buf enc;             /* a handoff event encoded for --handoffs */
    uint64_t handoffs_lost;     /* copies --handoffs could not take */
    struct buf text;            /* the question's searchable text */
    struct buf answer;          /* the article's answer */
    struct buf title;           /* an article's title */
    struct buf prompt;          /* the system message for --llm */
    struct buf generated;       /* what --llm answered */
    struct buf trace;           /* the question's trace, before this stage's stamp */
    struct buf words;           /* the question's folded words */
    struct buf thread;          /* an e-mail reply's References */
    struct buf mid;             /* the question's Message-ID */
    struct buf subject;         /* a reply's subject */
    uint64_t answered;          /* replies sent */
    uint64_t handed_off;        /* handoffs */
    uint64_t llm_used;          /* answers phrased by --llm */
    uint64_t llm_failed;        /* --llm failures (fell back) */
    struct log_limit llm_limit; /* rate limit of --llm failure lines */
    struct log_limit err_limit; /* rate limit of other per-message errors */
};

/* --- words ----------------------------------------------------------- */

/* Phrases that ask for a person, folded, between spaces. */
static const char *const s_human[] = {
    " atendente ", " atendentes ", " humano ", " humana ", " operador ", " operadora ",
    " falar com alguem ", " falar com uma pessoa ", " falar com pessoa ", " pessoa de verdade ",
    " pessoa real ", " falar com gente ", " nao quero falar com robo ", " nao quero robo ",
    " agent ", " human ", " real person ", " talk to a person ", " talk to someone ",
    " speak to someone ", " speak to a person ", " talk to a human ", " speak to a human ",
    " representative ", " live agent ", " falar com o suporte ", " transferir para ",
};

/* Complaints a bot must not answer with an article: legal threats and
 * "nobody answers me" go straight to people. */
static const char *const s_escalate[] = {
    " procon ", " reclame aqui ", " reclameaqui ", " advogado ", " processar ", " processo judicial ",
    " ninguem responde ", " ninguem me responde ", " ninguem respondeu ", " ninguem vai responder ",
    " ninguem vai me responder ", " ninguem atende ", " nobody answers ", " no one answers ",
};

/* Folds text into out as its words separated by single spaces, with a
 * space before and after. */
static int s_words(const char *text, struct buf *out)
{
    size_t n = strlen(text);
    char *folded = malloc(n + 1);
    if (folded == NULL) {
        return -1;
    }
    kb_fold(text, folded);
    buf_reset(out);
    buf_putc(out, ' ');
    for (char *p = folded; *p != '\0'; p++) {
        if (isalnum((unsigned char)*p)) {
            buf_putc(out, *p);
        } else if (out->data[out->len - 1] != ' ') {
            buf_putc(out, ' ');
        }
    }
    if (out->data[out->len - 1] != ' ') {
        buf_putc(out, ' ');
    }
    free(folded);
    return 0;
}

static bool s_has_phrase(const char *words, const char *const *phrases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (strstr(words, phrases[i]) != NULL) {
            return true;
        }
    }
    return false;
}

/* True when the words look English rather than Portuguese. */
static bool s_english(const char *words)
{
    static const char *const en[] = {
        " the ", " you ", " your ", " is ", " are ", " do ", " does ", " what ", " how ",
        " my ", " i ", " please ", " can ", " order ", " thanks ", " hi ", " hello ", " want ",
        " when ", " where ", " ship ", " it ",
    };
    static const char *const pt[] = {
        " o ", " de ", " que ", " voce ", " vcs ", " meu ", " minha ", " pedido ", " quero ",
        " como ", " qual ", " nao ", " obrigado ", " oi ", " tem ", " para ", " pra ", " com ",
        " e ", " um ", " uma ", " quando ", " onde ",
    };
    int ne = 0;
    int np = 0;
    for (size_t i = 0; i < sizeof en / sizeof en[0]; i++) {
        ne += strstr(words, en[i]) != NULL;
    }
    for (size_t i = 0; i < sizeof pt / sizeof pt[0]; i++) {
        np += strstr(words, pt[i]) != NULL;
    }
    return ne > np;
}

/* --- the decision ---------------------------------------------------- */

/* Decides about text. words is scratch. Returns 0, or -1 on a KB error. */
static int s_decide(struct kb *kb, const struct bot_params *p, const char *text, struct buf *words,
                    struct bot_decision *d, char *err, size_t n)
{
    memset(d, 0, sizeof *d);
    d->reason = "low-confidence";
    if (s_words(text, words) != 0) {
        snprintf(err, n, "out of memory");
        return -1;
    }
    if (words->len <= 1) {
        d->reason = "no-text";
        return 0;
    }
    if (s_has_phrase(words->data, s_human, sizeof s_human / sizeof s_human[0])) {
        d->reason = "asked-for-human";
        return 0;
    }
    if (s_has_phrase(words->data, s_escalate, sizeof s_escalate / sizeof s_escalate[0])) {
        d->reason = "escalation";
        return 0;
    }
    int found = kb_search(kb, text, d->hits, BOT_TOP, NULL, err, n);
    if (found < 0) {
        return -1;
    }
    d->nhits = found;
    if (found == 0) {
        return 0;
    }
    d->margin = d->hits[0].score - (found > 1 ? d->hits[1].score : 0.0);
    if (d->hits[0].score >= p->min_score && d->margin >= p->min_margin) {
        d->answer = true;
        d->reason = NULL;
    }
    return 0;
}

static int s_parse_number(const char *name, const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s ? s : "", &end);
    if (s == NULL || end == s || *end != '\0' || errno != 0 || !isfinite(v) || v < 0) {
        log_msg(LOG_ERROR, "--%s: '%s' is not a number >= 0", name, s ? s : "");
        return -1;
    }
    *out = v;
    return 0;
}

/* --- business hours ------------------------------------------------ */

static const char *const s_days_en[7] = { "sun", "mon", "tue", "wed", "thu", "fri", "sat" };
static const char *const s_days_pt[7] = { "dom", "seg", "ter", "qua", "qui", "sex", "sab" };

static int s_day(const char *s, size_t n)
{
    char w[8];
    if (n < 3 || n >= sizeof w) {
        return -1;
    }
    memcpy(w, s, n);
    w[n] = '\0';
    for (size_t i = 0; i < n; i++) {
        w[i] = (char)tolower((unsigned char)w[i]);
    }
    for (int d = 0; d < 7; d++) {
        if (strncmp(w, s_days_en[d], 3) == 0 || strncmp(w, s_days_pt[d], 3) == 0) {
            return d;
        }
    }
    return -1;
}

/* "8", "08:30", "8h", "8h30", "24:00" -> minutes; -1 when bad. */
static int s_clock(const char *s, size_t n)
{
    int h = 0;
    int m = 0;
    size_t i = 0;
    size_t digits = 0;
    while (i < n && isdigit((unsigned char)s[i]) && digits < 2) {
        h = h * 10 + (s[i++] - '0');
        digits++;
    }
    if (digits == 0) {
        return -1;
    }
    if (i < n && (s[i] == ':' || s[i] == 'h')) {
        i++;
        digits = 0;
        while (i < n && isdigit((unsigned char)s[i]) && digits < 2) {
            m = m * 10 + (s[i++] - '0');
            digits++;
        }
        if (digits == 1) {
            return -1;
        }
    }
    if (i != n || h > 24 || m > 59 || (h == 24 && m != 0)) {
        return -1;
    }
    return h * 60 + m;
}

/* Parses --hours into h. Returns 0, or -1 with why[n]. */
static int s_hours_parse(const char *spec, struct bot_hours *h, char *why, size_t n)
{
    memset(h, 0, sizeof *h);
    if (spec == NULL || spec[0] == '\0') {
        return 0;
    }
    h->set = true;
    const char *p = spec;
    while (*p != '\0') {
        while (*p == ' ' || *p == ',' || *p == ';') {
            p++;
        }
        if (*p == '\0') {
            break;
        }
        /* Days: "mon" or "mon-fri". */
        const char *ds = p;
        while (isalpha((unsigned char)*p)) {
            p++;
        }
        int d1 = s_day(ds, (size_t)(p - ds));
        int d2 = d1;
        if (*p == '-') {
            const char *d2s = ++p;
            while (isalpha((unsigned char)*p)) {
                p++;
            }
            d2 = s_day(d2s, (size_t)(p - d2s));
        }
        if (d1 < 0 || d2 < 0) {
            snprintf(why, n, "'%.20s': expected days (mon-fri, sat, seg-sex) before the hours", ds);
            return -1;
        }
        int ranges = 0;
        for (;;) {
            while (*p == ' ') {
                p++;
            }
            if (!isdigit((unsigned char)*p)) {
                break;
            }
            const char *ts = p;
            p += strcspn(p, "-");
            int t1 = s_clock(ts, (size_t)(p - ts));
            if (*p != '-') {
                snprintf(why, n, "'%.20s': expected a range like 08:00-20:00", ts);
                return -1;
            }
            const char *te = ++p;
            p += strcspn(p, " ,;");
            int t2 = s_clock(te, (size_t)(p - te));
            if (t1 < 0 || t2 < 0 || t2 <= t1) {
                snprintf(why, n, "'%.20s': expected a range like 08:00-20:00", ts);
                return -1;
            }
            for (int d = d1;; d = (d + 1) % 7) {
                if (h->n[d] >= HOURS_PER_DAY) {
                    snprintf(why, n, "more than %d ranges on %s", HOURS_PER_DAY, s_days_en[d]);
                    return -1;
                }
                h->start[d][h->n[d]] = t1;
                h->end[d][h->n[d]] = t2;
                h->n[d]++;
                if (d == d2) {
                    break;
                }
            }
            ranges++;
        }
        if (ranges == 0) {
            snprintf(why, n, "'%.20s': days without hours", ds);
            return -1;
        }
    }
    return 0;
}

/* Whether people are in at ms (local time of --tz). When not, the next
 * opening: *days ahead (0 today), at *minute. */
static bool s_hours_open(const struct bot_hours *h, uint64_t ms, int *days, int *minute)
{
    if (!h->set) {
        return true;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    localtime_r(&t, &tm);
    int now = tm.tm_hour * 60 + tm.tm_min;
    int wd = tm.tm_wday;
    for (int i = 0; i < h->n[wd]; i++) {
        if (h->start[wd][i] <= now && now < h->end[wd][i]) {
            return true;
        }
    }
    *days = -1;
    for (int ahead = 0; ahead <= 7 && *days < 0; ahead++) {
        int d = (wd + ahead) % 7;
        int best = -1;
        for (int i = 0; i < h->n[d]; i++) {
            int s = h->start[d][i];
            if ((ahead > 0 || s > now) && (best < 0 || s < best)) {
                best = s;
            }
        }
        if (best >= 0) {
            *days = ahead;
            *minute = best;
        }
    }
    return *days < 0;
}

/* The off-hours message into out. */
static void s_closed_text(struct buf *out, bool english, uint64_t ms, int days, int minute)
{
    static const char *const pt_days[7] = { "domingo", "segunda-feira", "terça-feira",
                                            "quarta-feira", "quinta-feira", "sexta-feira", "sábado" };
    static const char *const en_days[7] = { "Sunday", "Monday", "Tuesday", "Wednesday",
                                            "Thursday", "Friday", "Saturday" };
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    localtime_r(&t, &tm);
    int wd = (tm.tm_wday + days) % 7;
    char when[64];
    buf_reset(out);
    if (english) {
        if (days == 0) {
            snprintf(when, sizeof when, "today at %02d:%02d", minute / 60, minute % 60);
        } else if (days == 1) {
            snprintf(when, sizeof when, "tomorrow at %02d:%02d", minute / 60, minute % 60);
        } else {
            snprintf(when, sizeof when, "on %s at %02d:%02d", en_days[wd], minute / 60, minute % 60);
        }
        buf_printf(out, "Our team is offline right now. Your message is in the queue and a person "
                        "will answer it when we are back, %s.", when);
    } else {
        if (days == 0) {
            snprintf(when, sizeof when, "hoje às %02d:%02d", minute / 60, minute % 60);
        } else if (days == 1) {
            snprintf(when, sizeof when, "amanhã às %02d:%02d", minute / 60, minute % 60);
        } else {
            snprintf(when, sizeof when, "%s às %02d:%02d", pt_days[wd], minute / 60, minute % 60);
        }
        buf_printf(out, "Nossa equipe está fora do horário de atendimento agora. Sua mensagem já "
                        "está na fila e uma pessoa vai responder quando voltarmos: %s.", when);
    }
}

static int s_tz_check(const char *tz)
{
    if (strcmp(tz, "UTC") == 0 || strcmp(tz, "GMT") == 0) {
        return 0;
    }
    const char *dir = getenv("TZDIR");
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir ? dir : "/usr/share/zoneinfo", tz[0] == ':' ? tz + 1 : tz);
    if (strstr(tz, "..") != NULL || access(path, R_OK) != 0) {
        log_msg(LOG_ERROR, "--tz %s: no such time zone (%s)", tz, path);
        return -1;
    }
    return 0;
}

/* --- the stage ----------------------------------------------------- */

/* Validates the options into params and hours. Returns 0 or EXIT_CONFIG. */
static int s_conf_parse(const struct bot_conf *c, struct bot_params *p, struct bot_hours *h)
{
    char why[200];
    if (c->kb == NULL || c->kb[0] == '\0') {
        log_msg(LOG_ERROR, "--kb is required (a knowledge base made by omni-kb import)");
        return EXIT_CONFIG;
    }
    if (s_parse_number("min-score", c->min_score, &p->min_score) != 0
        || s_parse_number("min-margin", c->min_margin, &p->min_margin) != 0) {
        return EXIT_CONFIG;
    }
    if (c->handoffs != NULL && c->handoffs[0] != '\0') {
        struct ep_spec spec;
        char err[300];
        if (ep_parse(c->handoffs, EP_OUT, &spec, err, sizeof err) != 0 || spec.mode == EP_STDIO) {
            log_msg(LOG_ERROR, "--handoffs: %s", spec.mode == EP_STDIO ? "needs an endpoint, not '-'" : err);
            return EXIT_USAGE;
        }
    }
    if (s_hours_parse(c->hours, h, why, sizeof why) != 0) {
        log_msg(LOG_ERROR, "--hours: %s", why);
        return EXIT_CONFIG;
    }
    if (h->set && s_tz_check(c->tz) != 0) {
        return EXIT_CONFIG;
    }
    if (c->handoff_queue == NULL || c->handoff_queue[0] == '\0') {
        log_msg(LOG_ERROR, "--handoff-queue must name a queue");
        return EXIT_CONFIG;
    }
    if (c->llm != NULL && (c->llm_timeout_ms < 1 || c->llm_articles < 1 || c->llm_articles > BOT_TOP)) {
        log_msg(LOG_ERROR, "--llm-timeout must be positive and --llm-articles 1 to %d", BOT_TOP);
        return EXIT_CONFIG;
    }
    return 0;
}

static int s_check(struct stage_ctx *ctx, void *conf)
{
    (void)ctx;
    struct bot_params p;
    struct bot_hours h;
    int rc = s_conf_parse(conf, &p, &h);
    if (rc != 0) {
        return rc;
    }
    char err[512];
    struct kb *kb = kb_new(((struct bot_conf *)conf)->kb, false, err, sizeof err);
    if (kb == NULL) {
        log_msg(LOG_ERROR, "%s", err);
        return EXIT_CONFIG;
    }
    int count = kb_count(kb);
    kb_destroy(&kb);
    if (count <= 0) {
        log_msg(LOG_ERROR, "--kb %s has no articles", ((struct bot_conf *)conf)->kb);
        return EXIT_CONFIG;
    }
    return 0;
}

static void s_fini(void **state)
{
    struct bot *b = *state;
    if (b == NULL) {
        return;
    }
    log_msg(LOG_INFO, "answered=%llu handed_off=%llu llm_used=%llu llm_failed=%llu handoffs_lost=%llu",
            (unsigned long long)b->answered, (unsigned long long)b->handed_off,
            (unsigned long long)b->llm_used, (unsigned long long)b->llm_failed,
            (unsigned long long)b->handoffs_lost);
    ep_destroy(&b->handoffs);
    buf_free(&b->enc);
    kb_destroy(&b->kb);
    llm_destroy(&b->llm);
    env_destroy(&b->reply);
    env_destroy(&b->event);
    buf_free(&b->text);
    buf_free(&b->answer);
    buf_free(&b->title);
    buf_free(&b->prompt);
    buf_free(&b->generated);
    buf_free(&b->trace);
    buf_free(&b->words);
    buf_free(&b->thread);
    buf_free(&b->mid);
    buf_free(&b->subject);
    free(b);
    *state = NULL;
}

static int s_init(struct stage_ctx *ctx, void *conf, void **state)
{
    struct bot *b = calloc(1, sizeof *b);
    if (b == NULL) {
        return EXIT_SOFTWARE;
    }
    b->conf = conf;
    int rc = s_conf_parse(conf, &b->params, &b->hours);
    if (rc != 0) {
        goto fail;
    }
    if (b->hours.set) {
        /* localtime_r reads TZ: the one process-wide setting this stage
         * makes, before it handles anything. */
        setenv("TZ", b->conf->tz, 1);
        tzset();
    }
    char err[512];
    rc = EXIT_UNAVAILABLE;
    b->kb = kb_new(b->conf->kb, false, err, sizeof err);
    if (b->kb == NULL) {
        log_msg(LOG_ERROR, "%s", err);
        goto fail;
    }
    if (kb_count(b->kb) <= 0) {
        log_msg(LOG_ERROR, "--kb %s has no articles", b->conf->kb);
        rc = EXIT_CONFIG;
        goto fail;
    }
    if (b->conf->llm != NULL) {
        b->llm_conf = (struct llm_conf){
            .url = b->conf->llm,
            .model = b->conf->llm_model,
            .timeout_ms = b->conf->llm_timeout_ms,
            .temperature = 0.2,
            .max_tokens = 400,
        };
        b->llm = llm_new(&b->llm_conf, err, sizeof err);
        if (b->llm == NULL) {
            log_msg(LOG_ERROR, "%s", err);
            rc = EXIT_CONFIG;
            goto fail;
        }
    }
    b->reply = env_new();
    b->event = env_new();
    if (b->reply == NULL || b->event == NULL) {
        rc = EXIT_SOFTWARE;
        goto fail;
    }
    rc = stage_open_ep(ctx, "handoffs", b->conf->handoffs, EP_OUT, &b->handoffs);
    if (rc != 0) {
        goto fail;
    }
    log_msg(LOG_INFO, "knowledge base %s: %d articles; answering at score >= %g, margin >= %g%s%s",
            b->conf->kb, kb_count(b->kb), b->params.min_score, b->params.min_margin,
            b->llm ? "; phrasing with " : "", b->llm ? b->conf->llm : "");
    *state = b;
    return 0;
fail:
    s_fini((void **)&b);
    return rc;
}

static void s_tick(void *state, struct stage_ctx *ctx)
{
    (void)ctx;
    struct bot *b = state;
    if (kb_refresh(b->kb) > 0) {
        log_msg(LOG_INFO, "knowledge base %s changed: %d articles", b->conf->kb, kb_count(b->kb));
    }
}

static void s_reload(void *state, struct stage_ctx *ctx)
{
    (void)ctx;
    struct bot *b = state;
    char err[512];
    struct kb *kb = kb_new(b->conf->kb, false, err, sizeof err);
    if (kb == NULL || kb_count(kb) <= 0) {
        log_msg(LOG_ERROR, "reload: keeping the old knowledge base: %s", kb ? "no articles" : err);
        kb_destroy(&kb);
        return;
    }
    kb_destroy(&b->kb);
    b->kb = kb;
    log_msg(LOG_INFO, "reloaded %s: %d articles", b->conf->kb, kb_count(kb));
}

/* The searchable text of a question: subject and text, without quoted
 * lines ("> ...") of e-mail replies. */
static void s_question_text(const struct env *e, struct buf *out)
{
    buf_reset(out);
    const char *subject = env_get(e, ENV_SUBJECT);
    const char *text = env_get(e, ENV_TEXT);
    if (subject != NULL) {
        buf_printf(out, "%s\n", subject);
    }
    const char *p = text;
    while (p != NULL && *p != '\0') {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        size_t lead = 0;
        while (lead < len && (p[lead] == ' ' || p[lead] == '\t')) {
            lead++;
        }
        if (lead >= len || p[lead] != '>') {
            buf_append(out, p, len);
            buf_putc(out, '\n');
        }
        p = nl ? nl + 1 : NULL;
    }
}

/* Copies string key k of src to dst when present. */
static void s_copy_str(struct env *dst, const struct env *src, enum env_key k, enum env_key to)
{
    const char *s = env_get(src, k);
    if (s != NULL) {
        env_set(dst, to, s, NULL);
    }
}

/* Builds the reply to q (not yet stamped) in b->reply. */
/* A reply threads under the question (RFC 5322 3.6.4): "Re: " its
 * subject; on e-mail, meta.in_reply_to is its Message-ID and
 * meta.references its chain then that id, for omni-send's In-Reply-To and
 * References. */
static int s_thread(struct bot *b, const struct env *q, struct env *r, struct env_err *err)
{
    if (mail_reply_thread(q, &b->subject, &b->mid, &b->thread) != 0) {
        return -1;
    }
    if (b->subject.len > 0 && env_set(r, ENV_SUBJECT, b->subject.data, err) != 0) {
        return -1;
    }
    if (strcmp(env_get(q, ENV_CHANNEL), "email") != 0 || b->mid.len == 0) {
        return 0;
    }
    const struct env_kv meta[] = {
        { .key = "in_reply_to", .type = ENV_KV_STR, .s = b->mid.data },
        { .key = "references", .type = ENV_KV_STR, .s = b->thread.data },
    };
    return env_set_map(r, ENV_META, meta, 2, err);
}

static int s_build_reply(struct bot *b, const struct env *q, const char *text,
                         const struct env_kv *botkv, size_t nbot, struct env_err *err)
{
    struct env *r = b->reply;
    char id[ULID_LEN + 1];
    ulid_derive(env_get(q, ENV_ID), "bot-reply", id);
    env_clear(r);
    env_set_uint(r, ENV_V, ENV_VERSION);
    env_set(r, ENV_ID, id, NULL);
    env_set_uint(r, ENV_TS, stage_now_ms());
    s_copy_str(r, q, ENV_CHANNEL, ENV_CHANNEL);
    env_set(r, ENV_DIR, "out", NULL);
    s_copy_str(r, q, ENV_TO, ENV_FROM);
    s_copy_str(r, q, ENV_FROM, ENV_TO);
    s_copy_str(r, q, ENV_CUSTOMER, ENV_CUSTOMER);
    s_copy_str(r, q, ENV_CONVERSATION, ENV_CONVERSATION);
    env_set(r, ENV_REPLY_TO, env_get(q, ENV_ID), NULL);
    if (env_set(r, ENV_TEXT, text, err) != 0 || env_set_map(r, ENV_BOT, botkv, nbot, err) != 0) {
        return -1;
    }
    if (b->trace.len > 0) {
        env_set_raw(r, ENV_TRACE, b->trace.data, b->trace.len, NULL);
    }
    return s_thread(b, q, r, err);
}

/* Builds the handoff event for q (route and bot already set) in b->event. */
static int s_build_event(struct bot *b, const struct env *q, const char *reason, const char *article,
                         struct env_err *err)
{
    struct env *ev = b->event;
    char id[ULID_LEN + 1];
    ulid_derive(env_get(q, ENV_ID), "bot-handoff", id);
    env_clear(ev);
    env_set_uint(ev, ENV_V, ENV_VERSION);
    env_set(ev, ENV_ID, id, NULL);
    env_set_uint(ev, ENV_TS, stage_now_ms());
    s_copy_str(ev, q, ENV_CHANNEL, ENV_CHANNEL);
    env_set(ev, ENV_DIR, "event", NULL);
    s_copy_str(ev, q, ENV_FROM, ENV_FROM);
    s_copy_str(ev, q, ENV_TO, ENV_TO);
    s_copy_str(ev, q, ENV_CUSTOMER, ENV_CUSTOMER);
    s_copy_str(ev, q, ENV_CONVERSATION, ENV_CONVERSATION);
    env_set(ev, ENV_REPLY_TO, env_get(q, ENV_ID), NULL);
    size_t n;
    const void *raw = env_raw(q, ENV_ROUTE, &n);
    if (raw != NULL) {
        env_set_raw(ev, ENV_ROUTE, raw, n, NULL);
    }
    raw = env_raw(q, ENV_BOT, &n);
    if (raw != NULL) {
        env_set_raw(ev, ENV_BOT, raw, n, NULL);
    }
    const struct env_kv meta[] = {
        { .key = "event", .type = ENV_KV_STR, .s = "handoff" },
        { .key = "reason", .type = ENV_KV_STR, .s = reason },
        { .key = "queue", .type = ENV_KV_STR, .s = b->conf->handoff_queue },
        { .key = "article", .type = ENV_KV_STR, .s = article },
    };
    if (b->trace.len > 0) {
        env_set_raw(ev, ENV_TRACE, b->trace.data, b->trace.len, NULL);
    }
    return env_set_map(ev, ENV_META, meta, sizeof meta / sizeof meta[0], err);
}

/* Asks --llm to phrase an answer to question from the top hits. Returns 0
 * with b->generated filled, 1 when the model says the articles do not
 * answer, -1 on failure (counted and logged). */
static int s_llm_answer(struct bot *b, const struct env *q, const char *question,
                        const struct bot_decision *d)
{
    struct buf *p = &b->prompt;
    buf_reset(p);
    buf_puts(p, "You are the customer service assistant of an online store. Answer the customer's "
                "message using ONLY the knowledge base articles below. Reply in the customer's "
                "language, briefly (at most five sentences) and kindly. Do not invent prices, "
                "deadlines, addresses or policies that the articles do not state. If the articles "
                "do not answer the message, reply with exactly: " LLM_MARKER "\n");
    int top = d->nhits < (int)b->conf->llm_articles ? d->nhits : (int)b->conf->llm_articles;
    for (int i = 0; i < top; i++) {
        if (kb_get(b->kb, d->hits[i].id, &b->title, &b->answer) != 0) {
            continue;
        }
        buf_printf(p, "\n### Article %d: %s (%s)\n%s\n", i + 1, b->title.data, d->hits[i].slug,
                   b->answer.data);
    }
    char err[300];
    uint64_t t0 = stage_mono_ms();
    if (llm_ask(b->llm, p->data, question, &b->generated, err, sizeof err) != 0) {
        b->llm_failed++;
        log_limited(&b->llm_limit, LOG_WARN,
                    "llm failed id=%s after %llu ms, falling back to the knowledge base: %s "
                    "(failures so far: %llu)", env_get(q, ENV_ID),
                    (unsigned long long)(stage_mono_ms() - t0), err,
                    (unsigned long long)b->llm_failed);
        return -1;
    }
    if (strncmp(b->generated.data, LLM_MARKER, strlen(LLM_MARKER)) == 0) {
        return 1;
    }
    if (b->generated.len > ENV_MAX_TEXT) {
        b->llm_failed++;
        log_limited(&b->llm_limit, LOG_WARN, "llm answer too long id=%s, falling back", env_get(q, ENV_ID));
        return -1;
    }
    return 0;
}

/* Sends a copy of the handoff event (stamped by stage_emit) to
 * --handoffs. Routing it is the router's business: when the router is
 * away or full for HANDOFFS_WAIT_MS the copy is counted and logged, and
 * the event itself still reaches the archive. */
static void s_copy_handoff(struct bot *b)
{
    if (b->handoffs == NULL) {
        return;
    }
    buf_reset(&b->enc);
    int rc = env_encode(b->event, &b->enc) == 0 ? ep_send(b->handoffs, b->enc.data, b->enc.len, HANDOFFS_WAIT_MS)
                                                : EP_ERROR;
    if (rc != 0) {
        b->handoffs_lost++;
        log_limited(&b->err_limit, LOG_WARN, "handoff id=%s not sent to --handoffs %s: %s",
                    env_get(b->event, ENV_ID), ep_name(b->handoffs),
                    rc == EP_AGAIN ? "the router is away or full" : strerror(errno));
    }
}

static enum verdict s_handle(void *state, struct stage_ctx *ctx, struct env *e)
{
    struct bot *b = state;
    const char *dir = env_get(e, ENV_DIR);
    if (dir == NULL || strcmp(dir, "in") != 0) {
        return STAGE_PASS;
    }
    char target[128];
    int has_target = env_map_str(e, ENV_ROUTE, "target", target, sizeof target);
    if (has_target == 1 ? strcmp(target, "bot") != 0 : !b->conf->all) {
        return STAGE_PASS;
    }
    const char *qid = env_get(e, ENV_ID);
    s_question_text(e, &b->text);
    struct bot_decision d;
    char err[300];
    int rc = s_decide(b->kb, &b->params, b->text.data ? b->text.data : "", &b->words, &d, err,
                      sizeof err);
    bool english = b->words.data != NULL && s_english(b->words.data);
    if (rc != 0) {
        log_limited(&b->err_limit, LOG_ERROR, "knowledge base failed id=%s: %s; retrying", qid, err);
        return STAGE_RETRY;
    }
    /* --llm phrases confident answers (and, with --llm-unsure, tries the
     * others); any failure leaves the KB's decision standing. */
    const char *text = NULL;
    bool llm_used = false;
    bool wants_llm = d.answer || (b->conf->llm_unsure && d.nhits > 0 && d.reason != NULL
                                  && strcmp(d.reason, "low-confidence") == 0);
    if (b->llm != NULL && wants_llm) {
        int lr = s_llm_answer(b, e, b->text.data, &d);
        if (lr == 0) {
            text = b->generated.data;
            llm_used = true;
            d.answer = true;
            d.reason = NULL;
        } else if (lr == 1) {
            d.answer = false;
            d.reason = "llm-declined";
        }
    }
    if (d.answer && text == NULL) {
        if (kb_get(b->kb, d.hits[0].id, NULL, &b->answer) != 0) {
            log_limited(&b->err_limit, LOG_ERROR, "article %s vanished id=%s; retrying", d.hits[0].slug, qid);
            return STAGE_RETRY;
        }
        text = b->answer.data;
    }
    /* The question's trace before this stage stamps it, for the reply. */
    size_t tn = 0;
    const void *traw = env_raw(e, ENV_TRACE, &tn);
    buf_reset(&b->trace);
    if (traw != NULL) {
        buf_append(&b->trace, traw, tn);
    }
    const char *article = d.nhits > 0 ? d.hits[0].slug : NULL;
    double score = d.nhits > 0 ? round(d.hits[0].score * 1000) / 1000 : 0.0;
    struct env_err eerr = { .field = "bot", .reason = "out of memory" };
    char why[300];
    if (d.answer) {
        const struct env_kv botkv[] = {
            { .key = "article", .type = ENV_KV_STR, .s = article },
            { .key = "score", .type = ENV_KV_FLOAT, .f = score },
            { .key = "llm", .type = ENV_KV_BOOL, .b = true },
        };
        size_t nbot = llm_used ? 3 : 2;
        if (env_set_map(e, ENV_BOT, botkv, nbot, &eerr) != 0
            || s_build_reply(b, e, text, botkv, nbot, &eerr) != 0) {
            log_limited(&b->err_limit, LOG_ERROR, "cannot build the reply id=%s: %s", qid,
                        env_err_str(&eerr, why, sizeof why));
            return STAGE_PASS;
        }
        b->answered++;
        b->llm_used += llm_used;
        /* The reply first: once the archive has the question (and acks it)
         * its reply must already be on its way; a replayed question makes
         * the same reply id, which the archive and omni-send ignore. */
        stage_emit(ctx, b->reply);
        stage_emit(ctx, e);
        return STAGE_HELD;
    }
    /* Handoff: to the human queue, keeping the router's priority and rule. */
    int64_t priority = 0;
    bool has_priority = env_map_int(e, ENV_ROUTE, "priority", &priority) == 1;
    char rule[128];
    bool has_rule = env_map_str(e, ENV_ROUTE, "rule", rule, sizeof rule) == 1;
    struct env_kv route[5] = {
        { .key = "target", .type = ENV_KV_STR, .s = b->conf->handoff_queue },
        { .key = "queue", .type = ENV_KV_STR, .s = b->conf->handoff_queue },
        { .key = "rule", .type = ENV_KV_STR, .s = has_rule ? rule : NULL },
        { .key = "reason", .type = ENV_KV_STR, .s = d.reason },
        { .key = "priority", .type = ENV_KV_INT, .i = priority },
    };
    const struct env_kv botkv[] = {
        { .key = "handoff", .type = ENV_KV_STR, .s = d.reason },
        { .key = "article", .type = ENV_KV_STR, .s = article },
        { .key = "score", .type = ENV_KV_FLOAT, .f = score },
    };
    if (env_set_map(e, ENV_ROUTE, route, has_priority ? 5 : 4, &eerr) != 0
        || env_set_map(e, ENV_BOT, botkv, article != NULL ? 3 : 1, &eerr) != 0
        || s_build_event(b, e, d.reason, article, &eerr) != 0) {
        log_limited(&b->err_limit, LOG_ERROR, "cannot mark the handoff id=%s: %s", qid,
                    env_err_str(&eerr, why, sizeof why));
        return STAGE_PASS;
    }
    int days = 0;
    int minute = 0;
    uint64_t asked = env_has(e, ENV_TS) ? e->ts : stage_now_ms();
    bool closed = !s_hours_open(&b->hours, asked, &days, &minute);
    if (closed) {
        s_closed_text(&b->generated, english, asked, days, minute);
        const struct env_kv rkv2[] = {
            { .key = "handoff", .type = ENV_KV_STR, .s = d.reason },
            { .key = "closed", .type = ENV_KV_BOOL, .b = true },
        };
        if (s_build_reply(b, e, b->generated.data, rkv2, 2, &eerr) != 0) {
            log_limited(&b->err_limit, LOG_ERROR, "cannot build the off-hours reply id=%s: %s", qid,
                        env_err_str(&eerr, why, sizeof why));
            closed = false;
        }
    }
    b->handed_off++;
    /* Reply and event before the question, for the reason given above. */
    if (closed) {
        stage_emit(ctx, b->reply);
    }
    stage_emit(ctx, b->event);
    s_copy_handoff(b);
    stage_emit(ctx, e);
    return STAGE_HELD;
}

const struct stage bot_stage = {
    .name = "bot",
    .summary = "Answers questions routed to the bot (route.target = bot) from the knowledge base "
               "and hands the rest to a human queue; `omni-bot eval FILE --kb KB` measures it.",
    .options = s_opts,
    .conf_size = sizeof(struct bot_conf),
    .init = s_init,
    .check = s_check,
    .handle = s_handle,
    .tick = s_tick,
    .reload = s_reload,
    .fini = s_fini,
};

/* --- omni-bot eval ------------------------------------------------- */

/* Options of eval. */
struct eval_conf {
    const char *kb;             /* knowledge base */
    const char *min_score;      /* as the stage's */
    const char *min_margin;     /* as the stage's */
    bool quiet;                 /* no list of mistakes */
    bool help;                  /* --help */
};

#define C(f) offsetof(struct eval_conf, f)
static const struct opt s_eval_opts[] = {
    { "kb", OPT_STR, NULL, C(kb), "the knowledge base (required)" },
    { "min-score", OPT_STR, s_default_min_score, C(min_score), "as omni-bot --min-score" },
    { "min-margin", OPT_STR, s_default_min_margin, C(min_margin), "as omni-bot --min-margin" },
    { "quiet", OPT_BOOL, "no", C(quiet), "print the numbers only, not the mistakes" },
    { "help", OPT_BOOL, "no", C(help), "show this help and exit" },
    { NULL, 0, NULL, 0, NULL }
};
#undef C

/* Tallies of an evaluation. */
struct eval_stats {
    int questions;              /* labelled questions read */
    int in_scope;               /* expecting an article */
    int out_scope;              /* expecting a handoff */
    int answered;               /* answered (any article) */
    int correct;                /* answered with the expected article */
    int answered_in_scope;      /* in-scope questions answered */
    int handed_expected;        /* expected handoffs handed off */
    int bad_lines;              /* lines that were not labelled questions */
};

static int s_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a;
    uint64_t y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t s_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* One line of the mistakes list. */
static void s_mistake(struct buf *out, int line, const char *kind, const char *q, const char *expect,
                      const struct bot_decision *d)
{
    buf_printf(out, "  line %d: %s: ", line, kind);
    buf_json_str(out, q, strlen(q) > 120 ? 120 : strlen(q));
    buf_printf(out, " expected %s, ", expect);
    if (d->answer) {
        buf_printf(out, "answered %s (score %.2f, margin %.2f)\n", d->hits[0].slug, d->hits[0].score,
                   d->margin);
    } else if (d->nhits > 0) {
        buf_printf(out, "handed off %s (best %s, score %.2f, margin %.2f)\n", d->reason,
                   d->hits[0].slug, d->hits[0].score, d->margin);
    } else {
        buf_printf(out, "handed off %s (no match)\n", d->reason);
    }
}

static int s_eval(int argc, char **argv)
{
    struct eval_conf conf;
    memset(&conf, 0, sizeof conf);
    struct opt_set set = { s_eval_opts, &conf };
    struct opt_result res;
    struct kb *kb = NULL;
    FILE *f = NULL;
    char *line = NULL;
    size_t cap = 0;
    uint64_t *lat = NULL;
    size_t nlat = 0;
    size_t latcap = 0;
    struct buf words = { 0 };
    struct buf mistakes = { 0 };
    int status = EXIT_USAGE;
    res.pos = NULL;
    if (opt_parse(&set, 1, argc, argv, NULL, &res) != 0) {
        log_msg(LOG_ERROR, "eval: %s (try omni-bot eval --help)", res.err);
        status = res.status;
        goto done;
    }
    if (conf.help) {
        printf("usage: omni-bot eval FILE --kb KB [OPTIONS]\n"
               "Runs labelled questions (JSON lines {\"q\": TEXT, \"expect\": SLUG or \"handoff\"})\n"
               "through the bot's decision; prints precision, containment, handoff recall and the\n"
               "mistakes.\n\noptions:\n");
        opt_help(&set, 1, stdout);
        status = 0;
        goto done;
    }
    struct bot_params p;
    if (res.npos != 1 || conf.kb == NULL) {
        log_msg(LOG_ERROR, "eval: expected FILE and --kb KB (try omni-bot eval --help)");
        goto done;
    }
    if (s_parse_number("min-score", conf.min_score, &p.min_score) != 0
        || s_parse_number("min-margin", conf.min_margin, &p.min_margin) != 0) {
        goto done;
    }
    char err[512];
    kb = kb_new(conf.kb, false, err, sizeof err);
    if (kb == NULL) {
        log_msg(LOG_ERROR, "%s", err);
        status = 66;
        goto done;
    }
    f = strcmp(res.pos[0], "-") == 0 ? stdin : fopen(res.pos[0], "r");
    if (f == NULL) {
        log_msg(LOG_ERROR, "%s: %s", res.pos[0], strerror(errno));
        status = 66;
        goto done;
    }
    struct eval_stats s;
    memset(&s, 0, sizeof s);
    int lineno = 0;
    ssize_t len;
    uint64_t total_ns = 0;
    status = EXIT_SOFTWARE;
    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        size_t l = (size_t)len;
        while (l > 0 && isspace((unsigned char)line[l - 1])) {
            line[--l] = '\0';
        }
        if (l == 0 || line[0] == '#') {
            continue;
        }
        char why[200];
        cJSON *doc = json_parse(line, l, why, sizeof why);
        const cJSON *q = doc ? cJSON_GetObjectItemCaseSensitive(doc, "q") : NULL;
        const cJSON *x = doc ? cJSON_GetObjectItemCaseSensitive(doc, "expect") : NULL;
        if (!cJSON_IsString(q) || !cJSON_IsString(x)) {
            log_msg(LOG_WARN, "%s:%d: %s", res.pos[0], lineno,
                    doc ? "expected {\"q\": TEXT, \"expect\": SLUG or \"handoff\"}" : why);
            s.bad_lines++;
            cJSON_Delete(doc);
            continue;
        }
        struct bot_decision d;
        uint64_t t0 = s_now_ns();
        int rc = s_decide(kb, &p, q->valuestring, &words, &d, err, sizeof err);
        uint64_t dt = s_now_ns() - t0;
        if (rc != 0) {
            log_msg(LOG_ERROR, "%s:%d: %s", res.pos[0], lineno, err);
            cJSON_Delete(doc);
            goto done;
        }
        total_ns += dt;
        if (nlat == latcap) {
            size_t ncap = latcap ? latcap * 2 : 256;
            uint64_t *nl = realloc(lat, ncap * sizeof *nl);
            if (nl == NULL) {
                cJSON_Delete(doc);
                goto done;
            }
            lat = nl;
            latcap = ncap;
        }
        lat[nlat++] = dt;
        bool expect_handoff = strcmp(x->valuestring, "handoff") == 0;
        s.questions++;
        if (expect_handoff) {
            s.out_scope++;
            if (!d.answer) {
                s.handed_expected++;
            } else {
                s.answered++;
                s_mistake(&mistakes, lineno, "answered, should hand off", q->valuestring,
                          x->valuestring, &d);
            }
        } else {
            s.in_scope++;
            if (d.answer) {
                s.answered++;
                s.answered_in_scope++;
                if (strcmp(d.hits[0].slug, x->valuestring) == 0) {
                    s.correct++;
                } else {
                    s_mistake(&mistakes, lineno, "wrong article", q->valuestring, x->valuestring, &d);
                }
            } else {
                s_mistake(&mistakes, lineno, "not answered", q->valuestring, x->valuestring, &d);
            }
        }
        cJSON_Delete(doc);
    }
    if (s.questions == 0) {
        log_msg(LOG_ERROR, "%s: no labelled questions", res.pos[0]);
        status = 65;
        goto done;
    }
    qsort(lat, nlat, sizeof *lat, s_cmp_u64);
    double precision = s.answered ? (double)s.correct / s.answered : 0.0;
    double containment = s.in_scope ? (double)s.answered_in_scope / s.in_scope : 0.0;
    double recall = s.out_scope ? (double)s.handed_expected / s.out_scope : 1.0;
    printf("questions: %d (%d in scope, %d expecting a handoff) at --min-score %g --min-margin %g\n",
           s.questions, s.in_scope, s.out_scope, p.min_score, p.min_margin);
    printf("answered: %d (%d with the expected article); handed off: %d\n", s.answered, s.correct,
           s.questions - s.answered);
    printf("precision: %.3f (%d/%d answers with the expected article)\n", precision, s.correct,
           s.answered);
    printf("containment: %.3f (%d/%d in-scope questions answered)\n", containment,
           s.answered_in_scope, s.in_scope);
    printf("handoff recall: %.3f (%d/%d expected handoffs handed off)\n", recall, s.handed_expected,
           s.out_scope);
    printf("speed: %.0f decisions/s, p50 %.0f us, p99 %.0f us\n",
           total_ns ? (double)nlat * 1e9 / (double)total_ns : 0.0, lat[nlat / 2] / 1e3,
           lat[(nlat * 99) / 100 < nlat ? (nlat * 99) / 100 : nlat - 1] / 1e3);
    if (!conf.quiet) {
        int count = 0;
        for (size_t i = 0; i < mistakes.len; i++) {
            count += mistakes.data[i] == '\n';
        }
        printf("mistakes (%d):\n%s", count, mistakes.data ? mistakes.data : "");
    }
    status = s.bad_lines > 0 ? 65 : 0;
done:
    if (f != NULL && f != stdin) {
        fclose(f);
    }
    free(line);
    free(lat);
    buf_free(&words);
    buf_free(&mistakes);
    kb_destroy(&kb);
    free(res.pos);
    return status;
}

bool bot_is_command(const char *arg)
{
    return strcmp(arg, "eval") == 0;
}

int bot_cli(int argc, char **argv)
{
    log_init("omni-bot", NULL);
    if (strcmp(argv[0], "eval") == 0) {
        return s_eval(argc, argv);
    }
    log_msg(LOG_ERROR, "unknown command '%s'", argv[0]);
    return EXIT_USAGE;
}
