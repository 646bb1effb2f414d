/* webhook_conf — omni-ingest-webhook's options (the spool's among them),
 * the secrets (given as values or read from files, for systemd's
 * LoadCredential=) and the checks of both. See webhook.h. */
#include "webhook.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "endpoint.h"
#include "log.h"

#define SECRET_MAX 4096         /* bytes of a secret file */

#define C(f) offsetof(struct webhook_conf, f)
#define SECRET(i, name, what) \
    { name, OPT_STR, NULL, C(secret[i]), what }, \
    { name "-file", OPT_STR, NULL, C(secret_file[i]), "the same, read from a file (systemd LoadCredential=)" }
static const struct opt s_own_opts[] = {
    { "listen", OPT_STR, "127.0.0.1:8080", C(listen), "address to serve HTTP on: host:port, [v6]:port or :port" },
    { "out", OPT_STR, "-", C(out), "where envelopes go: -, @uri (bind), >uri (connect)" },
    { "tap", OPT_STR, NULL, C(tap), "also publish a copy of the output here (PUB)" },
    { "max-body", OPT_INT, "1M", C(max_body), "largest request body, bytes (larger: 413)" },
    { "http-timeout", OPT_MS, "30s", C(http_timeout_ms), "close an idle HTTP connection after this" },
    SECRET(WEBHOOK_WA_APP, "whatsapp-app-secret", "Meta app secret: enables POST /whatsapp (X-Hub-Signature-256)"),
    SECRET(WEBHOOK_WA_VERIFY, "whatsapp-verify-token", "token of GET /whatsapp's verification handshake"),
    SECRET(WEBHOOK_MS_APP, "messenger-app-secret", "Meta app secret: enables POST /messenger"),
    SECRET(WEBHOOK_MS_VERIFY, "messenger-verify-token", "token of GET /messenger's verification handshake"),
    SECRET(WEBHOOK_TWILIO, "twilio-auth-token", "Twilio auth token: enables POST /twilio (X-Twilio-Signature)"),
    { "twilio-public-url", OPT_STR, NULL, C(twilio_url),
      "the URL Twilio calls, exactly as configured there (it signs it)" },
    SECRET(WEBHOOK_TELEGRAM, "telegram-secret", "setWebhook's secret_token: enables POST /telegram"),
    { "telegram-bot", OPT_STR, NULL, C(telegram_bot), "the bot's username, for `to` (telegram:NAME)" },
    SECRET(WEBHOOK_GENERIC, "generic-secret", "shared secret: enables POST /generic (X-Omnibus-Signature)"),
    { "webchat", OPT_BOOL, "no", C(webchat), "serve the web chat: POST /chat, GET /chat/stream" },
    SECRET(WEBHOOK_WEBCHAT, "webchat-secret", "key of the website's signed identity tokens"),
    { "webchat-origin", OPT_STR, NULL, C(webchat_origin), "origin allowed to call /chat from a browser (CORS)" },
    { "replies", OPT_STR, NULL, C(replies), "web chat replies come in here (PULL; a bare URI binds)" },
    { "chat-history", OPT_INT, "100", C(chat_history), "replies kept per web chat session" },
    { "chat-sessions", OPT_INT, "10000", C(chat_sessions), "web chat sessions kept (least recently used go)" },
};
#undef SECRET
#undef C

#define NOWN (sizeof s_own_opts / sizeof s_own_opts[0])
static struct opt s_opts[NOWN + 8];    /* the tool's options and the spool's */
static const char *const s_secret_opt[WEBHOOK_NSECRETS] = {
    "whatsapp-app-secret", "whatsapp-verify-token", "messenger-app-secret",
    "messenger-verify-token", "twilio-auth-token", "telegram-secret", "generic-secret",
    "webchat-secret"
};

/* Reads a secret file: its first line, without the newline. */
static int s_read_secret(const char *path, char **out)
{
    char buf[SECRET_MAX + 1];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    ssize_t n = read(fd, buf, SECRET_MAX);
    int e = errno;
    close(fd);
    if (n < 0) {
        errno = e;
        return -1;
    }
    buf[n] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
    *out = strdup(buf);
    explicit_bzero(buf, sizeof buf);
    return *out ? 0 : -1;
}

static int s_secrets(char **secret, const struct webhook_conf *c)
{
    for (int i = 0; i < WEBHOOK_NSECRETS; i++) {
        bool val = c->secret[i] != NULL && c->secret[i][0] != '\0';
        bool file = c->secret_file[i] != NULL && c->secret_file[i][0] != '\0';
        if (val && file) {
            log_msg(LOG_ERROR, "--%s and --%s-file: give one", s_secret_opt[i], s_secret_opt[i]);
            return EXIT_USAGE;
        }
        if (file && s_read_secret(c->secret_file[i], &secret[i]) != 0) {
            log_msg(LOG_ERROR, "--%s-file %s: %s", s_secret_opt[i], c->secret_file[i], strerror(errno));
            return EXIT_CONFIG;
        }
        if (val && (secret[i] = strdup(c->secret[i])) == NULL) {
            return EXIT_SOFTWARE;
        }
        if (secret[i] != NULL && secret[i][0] == '\0') {
            log_msg(LOG_ERROR, "--%s-file %s is empty", s_secret_opt[i], c->secret_file[i]);
            return EXIT_CONFIG;
        }
    }
    return 0;
}

int webhook_conf_listen(const char *listen, struct sockaddr_storage *addr, char *err, size_t n)
{
    char host[256];
    const char *colon = strrchr(listen, ':');
    if (colon == NULL || colon[1] == '\0' || (size_t)(colon - listen) >= sizeof host) {
        snprintf(err, n, "--listen '%s' is not host:port", listen);
        return -1;
    }
    const char *h = listen;
    size_t hl = (size_t)(colon - listen);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    memcpy(host, h, hl);
    host[hl] = '\0';
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(hl ? host : NULL, colon + 1, &hints, &res);
    if (rc != 0 || res == NULL) {
        snprintf(err, n, "--listen '%s': %s", listen, rc ? gai_strerror(rc) : "no address");
        return -1;
    }
    memset(addr, 0, sizeof *addr);
    memcpy(addr, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return 0;
}

int webhook_conf_check(const struct webhook_conf *c, char *secret[WEBHOOK_NSECRETS])
{
    char err[300];
    struct sockaddr_storage addr;
    struct ep_spec spec;
    if (webhook_conf_listen(c->listen, &addr, err, sizeof err) != 0) {
        log_msg(LOG_ERROR, "%s", err);
        return EXIT_USAGE;
    }
    if (c->spool.path == NULL || c->spool.path[0] == '\0') {
        log_msg(LOG_ERROR, "--spool is required (try --help)");
        return EXIT_USAGE;
    }
    if (c->max_body < 1024 || c->max_body > (64 << 20) || c->http_timeout_ms < 1000
        || c->chat_history < 1 || c->chat_history > 100000 || c->chat_sessions < 1
        || c->chat_sessions > 10000000 || c->spool.max < 1 || c->spool.resend_after_ms < 100) {
        log_msg(LOG_ERROR, "--max-body must be 1k..64M, --http-timeout at least 1s, --chat-history "
                "1..100000, --chat-sessions 1..10M, --spool-max at least 1, --resend-after at least 100ms");
        return EXIT_USAGE;
    }
    const char *eps[] = { c->out, c->tap, c->replies };
    const enum ep_role roles[] = { EP_OUT, EP_TAP, EP_IN };
    const char *names[] = { "out", "tap", "replies" };
    for (int i = 0; i < 3; i++) {
        if (eps[i] != NULL && eps[i][0] != '\0' && ep_parse(eps[i], roles[i], &spec, err, sizeof err) != 0) {
            log_msg(LOG_ERROR, "--%s: %s", names[i], err);
            return EXIT_USAGE;
        }
        if (i == 2 && eps[i] != NULL && spec.mode == EP_STDIO) {
            log_msg(LOG_ERROR, "--replies needs an endpoint, not '-'");
            return EXIT_USAGE;
        }
    }
    if (c->replies != NULL && !c->webchat) {
        log_msg(LOG_ERROR, "--replies is for the web chat: add --webchat");
        return EXIT_USAGE;
    }
    bool tw_token = c->secret[WEBHOOK_TWILIO] != NULL || c->secret_file[WEBHOOK_TWILIO] != NULL;
    if (tw_token != (c->twilio_url != NULL && c->twilio_url[0] != '\0')) {
        log_msg(LOG_ERROR, "--twilio-auth-token and --twilio-public-url go together");
        return EXIT_USAGE;
    }
    char *tmp[WEBHOOK_NSECRETS] = { NULL };
    char **sec = secret ? secret : tmp;
    int rc = s_secrets(sec, c);
    bool any = c->webchat;
    static const enum webhook_secret enabling[] = {
        WEBHOOK_WA_APP, WEBHOOK_MS_APP, WEBHOOK_TWILIO, WEBHOOK_TELEGRAM, WEBHOOK_GENERIC
    };
    for (size_t i = 0; i < sizeof enabling / sizeof enabling[0]; i++) {
        any = any || sec[enabling[i]] != NULL;
    }
    webhook_conf_secrets_free(tmp);
    if (rc == 0 && !any) {
        log_msg(LOG_ERROR, "nothing to serve: give a channel's secret (--whatsapp-app-secret, "
                "--messenger-app-secret, --twilio-auth-token, --telegram-secret, --generic-secret) "
                "or --webchat");
        return EXIT_USAGE;
    }
    return rc;
}

void webhook_conf_secrets_free(char *secret[WEBHOOK_NSECRETS])
{
    for (int i = 0; i < WEBHOOK_NSECRETS; i++) {
        if (secret[i] != NULL) {
            explicit_bzero(secret[i], strlen(secret[i]));
            free(secret[i]);
            secret[i] = NULL;
        }
    }
}

const struct opt *webhook_conf_options(void)
{
    if (s_opts[0].name == NULL) {
        memcpy(s_opts, s_own_opts, sizeof s_own_opts);
        spool_opts_into(s_opts + NOWN, sizeof s_opts / sizeof s_opts[0] - NOWN,
                        offsetof(struct webhook_conf, spool));
    }
    return s_opts;
}
