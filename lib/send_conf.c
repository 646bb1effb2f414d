/* send_conf — omni-send's options (one table: argv, OMNI_*, --help), their
 * checks, the secrets read from files (systemd LoadCredential=), and the
 * retry policy every provider shares: which answers are temporary, how long
 * to wait before the next attempt, Retry-After. */
#include "send.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "acks.h"
#include "endpoint.h"
#include "log.h"

#define C(f) offsetof(struct send_conf, f)
const struct opt send_options[] = {
    { "db", OPT_STR, NULL, C(db), "the outbox database (sqlite; created when missing) (required)" },
    { "telegram-api", OPT_STR, "https://api.telegram.org", C(telegram_api), "Telegram Bot API base URL" },
    { "telegram-token", OPT_STR, NULL, C(telegram_token), "Telegram bot token" },
    { "telegram-token-file", OPT_STR, NULL, C(telegram_token_file), "file holding the bot token (systemd LoadCredential=)" },
    { "graph-api", OPT_STR, "https://graph.facebook.com", C(graph_api), "Graph API base URL (WhatsApp Cloud, Messenger)" },
    { "graph-version", OPT_STR, "v19.0", C(graph_version), "Graph API version in the path" },
    { "whatsapp-phone-id", OPT_STR, NULL, C(whatsapp_phone_id), "WhatsApp Cloud phone number id" },
    { "whatsapp-token", OPT_STR, NULL, C(whatsapp_token), "WhatsApp Cloud access token" },
    { "whatsapp-token-file", OPT_STR, NULL, C(whatsapp_token_file), "file holding the WhatsApp token" },
    { "messenger-token", OPT_STR, NULL, C(messenger_token), "Messenger page access token" },
    { "messenger-token-file", OPT_STR, NULL, C(messenger_token_file), "file holding the page token" },
    { "twilio-api", OPT_STR, "https://api.twilio.com", C(twilio_api), "Twilio REST base URL (sms, voice follow-ups)" },
    { "twilio-sid", OPT_STR, NULL, C(twilio_sid), "Twilio account SID" },
    { "twilio-token", OPT_STR, NULL, C(twilio_token), "Twilio auth token" },
    { "twilio-token-file", OPT_STR, NULL, C(twilio_token_file), "file holding the Twilio auth token" },
    { "twilio-from", OPT_STR, NULL, C(twilio_from), "Twilio sender number (E.164)" },
    { "twilio-service", OPT_STR, NULL, C(twilio_service), "Twilio messaging service SID (instead of --twilio-from)" },
    { "twilio-callback", OPT_STR, NULL, C(twilio_callback), "StatusCallback URL for Twilio's delivery reports" },
    { "smtp-url", OPT_STR, NULL, C(smtp_url), "mail server: smtp://host:port or smtps://host:port" },
    { "smtp-from", OPT_STR, NULL, C(smtp_from), "From of replies: addr or \"Name <addr>\"" },
    { "smtp-user", OPT_STR, NULL, C(smtp_user), "SMTP AUTH user" },
    { "smtp-password", OPT_STR, NULL, C(smtp_password), "SMTP AUTH password" },
    { "smtp-password-file", OPT_STR, NULL, C(smtp_password_file), "file holding the SMTP password" },
    { "smtp-starttls", OPT_BOOL, "no", C(smtp_starttls), "require STARTTLS on smtp://" },
    { "webchat", OPT_STR, NULL, C(webchat), "the webhook gateway's --replies endpoint (PUSH; a bare URI connects)" },
    { "timeout", OPT_MS, "15s", C(timeout_ms), "longest one API call may take" },
    { "retry-min", OPT_MS, "2s", C(retry_min_ms), "first backoff after a temporary failure" },
    { "retry-max", OPT_MS, "10m", C(retry_max_ms), "longest backoff" },
    { "give-up", OPT_MS, "24h", C(give_up_ms), "a reply not delivered after this goes to the dead table" },
    { "acks", OPT_STR, NULL, C(acks), "publish the id of each reply stored in the outbox here, for "
      "omni-archive's --out-acks (PUB; a bare URI binds)" },
    { "batch", OPT_INT, "64", C(batch), "replies delivered per tick before input is read again" },
    { NULL, 0, NULL, 0, NULL }
};
#undef C

/* --- the retry policy, shared by every provider ------------------------- */

void send_result_set(struct send_result *r, enum send_outcome o, long status, const char *fmt, ...)
{
    r->outcome = o;
    r->status = status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->reason, sizeof r->reason, fmt, ap);
    va_end(ap);
}

enum send_outcome send_http_class(long status)
{
    if (status >= 200 && status <= 299) {
        return SEND_SENT;
    }
    if (status == 408 || status == 429 || status >= 500 || status < 100) {
        return SEND_TEMP;
    }
    return SEND_PERM;
}

int64_t send_backoff(int attempts, int64_t min_ms, int64_t max_ms, int64_t retry_after_ms,
                     uint32_t rnd)
{
    int64_t d = min_ms > 0 ? min_ms : 1;
    for (int i = 1; i < attempts && d < max_ms; i++) {
        d *= 2;
    }
    if (d > max_ms) {
        d = max_ms;
    }
    /* Jitter in the upper half: replies that failed together spread out. */
    d = d / 2 + (int64_t)(rnd % (uint32_t)(d / 2 + 1));
    if (retry_after_ms >= 0) {
        int64_t spread = retry_after_ms / 10 < 1000 ? retry_after_ms / 10 : 1000;
        int64_t ra = retry_after_ms + (int64_t)(rnd % (uint32_t)(spread + 1));
        if (ra > d) {
            d = ra;
        }
    }
    return d;
}

int64_t send_retry_after(const char *value, int64_t now_s)
{
    while (*value == ' ' || *value == '\t') {
        value++;
    }
    if (*value == '\0') {
        return -1;
    }
    char *end;
    errno = 0;
    long long s = strtoll(value, &end, 10);
    if (end != value && errno == 0) {
        while (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n') {
            end++;
        }
        if (*end == '\0') {
            return s < 0 ? 0 : (s > 86400 * 7 ? 86400LL * 7 * 1000 : s * 1000);
        }
    }
    /* An HTTP date: "Wed, 21 Oct 2015 07:28:00 GMT". */
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *p = strptime(value, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (p == NULL) {
        return -1;
    }
    int64_t at = (int64_t)timegm(&tm);
    return at <= now_s ? 0 : (at - now_s) * 1000;
}

char *send_read_secret(const char *path, char *err, size_t n)
{
    FILE *fp = fopen(path, "r");
    if (fp == NULL) {
        snprintf(err, n, "%s: %s", path, strerror(errno));
        return NULL;
    }
    char line[4096];
    char *s = NULL;
    if (fgets(line, sizeof line, fp) == NULL) {
        snprintf(err, n, "%s: empty", path);
        goto done;
    }
    size_t len = strlen(line);
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r' || line[len - 1] == ' '
                       || line[len - 1] == '\t')) {
        line[--len] = '\0';
    }
    const char *b = line;
    while (*b == ' ' || *b == '\t') {
        b++;
    }
    if (*b == '\0') {
        snprintf(err, n, "%s: empty", path);
        goto done;
    }
    s = strdup(b);
    if (s == NULL) {
        snprintf(err, n, "out of memory");
    }
done:
    explicit_bzero(line, sizeof line);
    fclose(fp);
    return s;
}

/* --- configuration ------------------------------------------------------ */

static bool s_set(const char *s)
{
    return s != NULL && s[0] != '\0';
}

static bool s_http_url(const char *s)
{
    return strncmp(s, "http://", 7) == 0 || strncmp(s, "https://", 8) == 0;
}

int send_conf_check(const struct send_conf *c)
{
    if (!s_set(c->db)) {
        log_msg(LOG_ERROR, "--db is required (try --help)");
        return EXIT_USAGE;
    }
    const char *urls[] = { c->telegram_api, c->graph_api, c->twilio_api };
    const char *names[] = { "telegram-api", "graph-api", "twilio-api" };
    for (size_t i = 0; i < 3; i++) {
        if (!s_set(urls[i]) || !s_http_url(urls[i])) {
            log_msg(LOG_ERROR, "--%s: '%s' is not an http:// or https:// URL", names[i],
                    urls[i] ? urls[i] : "");
            return EXIT_USAGE;
        }
    }
    const char *pairs[][4] = {
        { "telegram-token", c->telegram_token, "telegram-token-file", c->telegram_token_file },
        { "whatsapp-token", c->whatsapp_token, "whatsapp-token-file", c->whatsapp_token_file },
        { "messenger-token", c->messenger_token, "messenger-token-file", c->messenger_token_file },
        { "twilio-token", c->twilio_token, "twilio-token-file", c->twilio_token_file },
        { "smtp-password", c->smtp_password, "smtp-password-file", c->smtp_password_file },
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        if (s_set(pairs[i][1]) && s_set(pairs[i][3])) {
            log_msg(LOG_ERROR, "--%s and --%s: give one", pairs[i][0], pairs[i][2]);
            return EXIT_USAGE;
        }
    }
    bool wa_token = s_set(c->whatsapp_token) || s_set(c->whatsapp_token_file);
    if (wa_token != s_set(c->whatsapp_phone_id)) {
        log_msg(LOG_ERROR, "WhatsApp needs both --whatsapp-phone-id and --whatsapp-token[-file]");
        return EXIT_USAGE;
    }
    bool tw_token = s_set(c->twilio_token) || s_set(c->twilio_token_file);
    bool tw_any = tw_token || s_set(c->twilio_sid) || s_set(c->twilio_from) || s_set(c->twilio_service);
    if (tw_any && (!tw_token || !s_set(c->twilio_sid)
                   || (!s_set(c->twilio_from) && !s_set(c->twilio_service)))) {
        log_msg(LOG_ERROR, "Twilio needs --twilio-sid, --twilio-token[-file] and --twilio-from "
                "or --twilio-service");
        return EXIT_USAGE;
    }
    if (s_set(c->smtp_url)) {
        if (strncmp(c->smtp_url, "smtp://", 7) != 0 && strncmp(c->smtp_url, "smtps://", 8) != 0) {
            log_msg(LOG_ERROR, "--smtp-url: '%s' is not smtp:// or smtps://", c->smtp_url);
            return EXIT_USAGE;
        }
        char addr[320];
        if (!s_set(c->smtp_from) || send_mail_addr(c->smtp_from, addr, sizeof addr) != 0) {
            log_msg(LOG_ERROR, "--smtp-url needs --smtp-from with an address (addr or \"Name <addr>\")");
            return EXIT_USAGE;
        }
    }
    if (s_set(c->webchat)) {
        struct ep_spec spec;
        char err[300];
        if (ep_parse(c->webchat, EP_OUT, &spec, err, sizeof err) != 0 || spec.mode == EP_STDIO) {
            log_msg(LOG_ERROR, "--webchat: %s", spec.mode == EP_STDIO ? "needs an endpoint, not '-'" : err);
            return EXIT_USAGE;
        }
    }
    if (s_set(c->acks)) {
        char err[300];
        if (acks_check("acks", c->acks, EP_TAP, err, sizeof err) != 0) {
            log_msg(LOG_ERROR, "%s", err);
            return EXIT_USAGE;
        }
    }
    if (c->timeout_ms < 100 || c->retry_min_ms < 10 || c->retry_max_ms < c->retry_min_ms
        || c->give_up_ms < c->retry_min_ms || c->batch < 1 || c->batch > 10000) {
        log_msg(LOG_ERROR, "--timeout at least 100ms, --retry-min at least 10ms, --retry-max and "
                "--give-up at least --retry-min, --batch 1..10000");
        return EXIT_USAGE;
    }
    return 0;
}

int send_conf_secrets(const struct send_conf *c, struct send_conf *rc, char *secrets[SEND_SECRETS])
{
    struct {
        const char *file;       /* the --X-file option */
        const char **dst;       /* the secret it fills in rc */
        const char *name;       /* the option's name, for errors */
    } f[SEND_SECRETS] = {
        { c->telegram_token_file, &rc->telegram_token, "telegram-token-file" },
        { c->whatsapp_token_file, &rc->whatsapp_token, "whatsapp-token-file" },
        { c->messenger_token_file, &rc->messenger_token, "messenger-token-file" },
        { c->twilio_token_file, &rc->twilio_token, "twilio-token-file" },
        { c->smtp_password_file, &rc->smtp_password, "smtp-password-file" },
    };
    *rc = *c;
    for (size_t i = 0; i < SEND_SECRETS; i++) {
        secrets[i] = NULL;
    }
    for (size_t i = 0; i < SEND_SECRETS; i++) {
        if (!s_set(f[i].file)) {
            continue;
        }
        char err[300];
        secrets[i] = send_read_secret(f[i].file, err, sizeof err);
        if (secrets[i] == NULL) {
            log_msg(LOG_ERROR, "--%s %s", f[i].name, err);
            send_conf_forget(secrets);
            return EXIT_CONFIG;
        }
        *f[i].dst = secrets[i];
    }
    return 0;
}

void send_conf_forget(char *secrets[SEND_SECRETS])
{
    for (size_t i = 0; i < SEND_SECRETS; i++) {
        if (secrets[i] != NULL) {
            explicit_bzero(secrets[i], strlen(secrets[i]));
            free(secrets[i]);
            secrets[i] = NULL;
        }
    }
}
