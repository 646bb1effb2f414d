/* webhook — omni-ingest-webhook: the channels that call us over HTTP.
 *
 *   POST /whatsapp   WhatsApp Cloud API (X-Hub-Signature-256); GET: Meta's handshake
 *   POST /messenger  Messenger (X-Hub-Signature-256); GET: Meta's handshake
 *   POST /twilio     Twilio SMS, form-encoded (X-Twilio-Signature); answers empty TwiML
 *   POST /telegram   Telegram Bot API updates (X-Telegram-Bot-Api-Secret-Token)
 *   POST /generic    envelopes as JSON, omni-inject's shape (X-Omnibus-Signature)
 *   POST /chat       web chat: {session, text, identity?}; GET /chat/stream: replies (SSE)
 *
 * A request is answered 2xx only once what it carries is committed to the
 * spool (lib/spool.h); the spool sends it on and re-sends what omni-archive
 * does not acknowledge. The server is one thread: libmicrohttpd in external
 * polling mode, requests of one loop round committed together (group
 * commit) while their connections are suspended.
 *
 * webhook.c is the server; webhook_parse.c, webhook_meta.c (WhatsApp,
 * Messenger) and webhook_twilio.c turn each provider's body into envelopes;
 * webhook_chat.c keeps the web chat replies for the streams. */
#ifndef OMNI_WEBHOOK_H
#define OMNI_WEBHOOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "buf.h"
#include "envelope.h"
#include "sig.h"
#include "spool.h"
#include "stage.h"
#include "ulid.h"

/* Runs omni-ingest-webhook. Returns the exit code. */
int webhook_main(int argc, char **argv);

/* --- webhook_conf.c: options and secrets ------------------------------------ */

/* The secrets, each an option --NAME and --NAME-file. */
enum webhook_secret {
    WEBHOOK_WA_APP,             /* --whatsapp-app-secret: enables /whatsapp */
    WEBHOOK_WA_VERIFY,          /* --whatsapp-verify-token */
    WEBHOOK_MS_APP,             /* --messenger-app-secret: enables /messenger */
    WEBHOOK_MS_VERIFY,          /* --messenger-verify-token */
    WEBHOOK_TWILIO,             /* --twilio-auth-token: enables /twilio */
    WEBHOOK_TELEGRAM,           /* --telegram-secret: enables /telegram */
    WEBHOOK_GENERIC,            /* --generic-secret: enables /generic */
    WEBHOOK_WEBCHAT,            /* --webchat-secret: identity tokens */
    WEBHOOK_NSECRETS
};

struct webhook_conf {
    const char *listen;             /* host:port */
    const char *out;                /* where envelopes go */
    const char *tap;                /* PUB copy of the output */
    const char *replies;            /* PULL of dir=out web chat envelopes */
    int64_t max_body;               /* largest request body */
    int64_t http_timeout_ms;        /* idle HTTP connections close after this */
    bool webchat;                   /* serve /chat and /chat/stream */
    const char *webchat_origin;     /* CORS origin allowed for /chat */
    int64_t chat_history;           /* events kept per web chat session */
    int64_t chat_sessions;          /* web chat sessions kept */
    const char *twilio_url;         /* the URL Twilio signs */
    const char *telegram_bot;       /* the bot's name, for `to` */
    const char *secret[WEBHOOK_NSECRETS];      /* secrets given as values */
    const char *secret_file[WEBHOOK_NSECRETS]; /* secrets given as files */
    struct spool_conf spool;        /* the spool's settings */
};

/* The options table (built once: the tool's and the spool's). */
const struct opt *webhook_conf_options(void);
/* Checks c. Reads the secrets (values or files) into secret[] when it is
 * not NULL (free with webhook_conf_secrets_free). Returns 0 or an exit code. */
int webhook_conf_check(const struct webhook_conf *c, char *secret[WEBHOOK_NSECRETS]);
/* Wipes and frees the secrets, NULLing them. */
void webhook_conf_secrets_free(char *secret[WEBHOOK_NSECRETS]);
/* Parses --listen (host:port, [v6]:port, :port) into addr. Returns 0, or -1
 * with err. */
int webhook_conf_listen(const char *listen, struct sockaddr_storage *addr, char *err, size_t n);

/* --- webhook_parse.c, webhook_meta.c, webhook_twilio.c: bodies -> envelopes */

/* What one request body becomes. */
struct webhook_batch {
    struct env **env;           /* envelopes made, owned, in order */
    size_t n;                   /* envelopes in use */
    size_t cap;                 /* slots allocated */
    struct ulid_gen *ids;       /* makes the envelopes' ids */
    uint64_t now;               /* ts of the envelopes, ms since epoch */
    const char *telegram_bot;   /* `to` of Telegram messages (telegram:NAME), or NULL */
    unsigned skipped;           /* items left out on purpose (echoes, kinds not taken) */
    /* An item refused on its own (the rest of the body is taken): raw is
     * its JSON, reason says why. May be NULL. */
    void (*reject)(void *arg, const char *raw, size_t n, const char *reason);
    void *reject_arg;           /* reject's argument */
    char reason[256];           /* why the whole body was refused (parse returned -1) */
};

/* Empties the batch (destroying its envelopes), keeping its memory. */
void webhook_batch_clear(struct webhook_batch *b);
void webhook_batch_free(struct webhook_batch *b);

/* Each parser returns 0 (the envelopes are in b; none is fine), or -1 with
 * b->reason set: the body is malformed (HTTP 400). */
int webhook_meta_whatsapp(struct webhook_batch *b, const char *body, size_t n);
int webhook_meta_messenger(struct webhook_batch *b, const char *body, size_t n);
int webhook_parse_telegram(struct webhook_batch *b, const char *body, size_t n);
/* One envelope object or an array of them; v, ts and id filled when
 * absent; every one must pass env_check, or nothing is taken. */
int webhook_parse_generic(struct webhook_batch *b, const char *body, size_t n);
/* A web chat message {session, text, identity?, message_id?, page?}. A
 * valid identity token (webhook_parse_identity) adds a link event first.
 * Returns 0, -1 malformed (400), or -2 a bad or expired identity (401);
 * b->reason says why. */
int webhook_parse_chat(struct webhook_batch *b, const char *body, size_t n, const char *secret);
/* Checks a website's identity token: base64(payload) "." hex(HMAC-SHA256(
 * payload, secret)), payload {"email": ..., "exp": seconds since epoch}.
 * Writes the e-mail, lower-cased, to email[n]. Returns 0, or -1 with why. */
int webhook_parse_identity(const char *token, const char *secret, uint64_t now_ms, char *email,
                           size_t n, char *why, size_t whyn);
/* True for a session id we take: 1..128 of [A-Za-z0-9._-]. */
bool webhook_parse_session(const char *s);

/* A form-encoded body (application/x-www-form-urlencoded), decoded. */
struct webhook_twilio_form {
    struct sig_param *p;        /* parameters, in body order */
    size_t n;                   /* how many */
    char *mem;                  /* the decoded strings p points into */
};
/* Returns 0, or -1 (bad percent-encoding, a NUL, out of memory). */
int webhook_twilio_form(const char *body, size_t n, struct webhook_twilio_form *f);
void webhook_twilio_form_free(struct webhook_twilio_form *f);
/* The first value of key, or NULL. */
const char *webhook_twilio_get(const struct webhook_twilio_form *f, const char *key);
/* A Twilio SMS (or WhatsApp-via-Twilio) message, or a status callback. */
int webhook_twilio_parse(struct webhook_batch *b, const struct webhook_twilio_form *f);

/* Helpers the parsers share (webhook_parse.c). */
/* The object member k, or NULL. */
const cJSON *webhook_parse_get(const cJSON *o, const char *k);
/* A string member, or NULL (absent, or not a string). */
const char *webhook_parse_gets(const cJSON *o, const char *k);
/* A non-empty string or integral number member as text in out[n], or NULL. */
const char *webhook_parse_id(const cJSON *o, const char *k, char *out, size_t n);
/* Adds k: v to o when v is a non-empty string. */
void webhook_parse_str(cJSON *o, const char *k, const char *v);
/* Refuses one item alone (b->reject), with its JSON. */
void webhook_parse_reject(struct webhook_batch *b, const cJSON *item, const char *reason);
/* Makes the envelope of JSON j (consumed): v, ts and id filled, checked,
 * added to b; one that does not pass is refused alone (item is what it
 * came from). Returns 0, or -1 out of memory. */
int webhook_parse_add(struct webhook_batch *b, cJSON *j, const cJSON *item);
/* "scheme:+digits" of a phone number in any format, in out[n]; NULL when
 * it has no digits. */
const char *webhook_parse_phone(const char *scheme, const char *num, char *out, size_t n);
/* The body as a JSON object, or NULL with b->reason set. */
cJSON *webhook_parse_root(struct webhook_batch *b, const char *body, size_t n);
/* Sets b->reason; returns -1. */
int webhook_parse_fail(struct webhook_batch *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* --- webhook_chat.c: web chat replies and their event streams ------------ */

#define WEBHOOK_KEEPALIVE_MS 15000  /* an idle event stream gets a comment this often */

struct webhook_chat;
struct MHD_Connection;

/* Keeps per_session replies for up to sessions sessions (the least
 * recently used is forgotten first); origin, when not NULL, is allowed
 * (CORS). Event ids grow across restarts (they start from the clock). */
struct webhook_chat *webhook_chat_new(size_t per_session, size_t sessions, const char *origin);
void webhook_chat_destroy(struct webhook_chat **c);
/* Takes a reply: dir=out with `to` webchat:SESSION becomes the session's
 * next event and wakes its streams. Returns 1 when added, 0 when it is not
 * for the web chat (or an id already kept: omni-send sent it again), -1
 * out of memory. */
int webhook_chat_add(struct webhook_chat *c, const struct env *e);
/* Answers GET /chat/stream for conn: the session's events with ids above
 * last, then each new one as it comes, as Server-Sent Events. A stream
 * with nothing to send is suspended until webhook_chat_add or
 * webhook_chat_wake. Returns 1, or 0 when the response could not be made. */
int webhook_chat_open(struct webhook_chat *c, struct MHD_Connection *conn, const char *session,
                      uint64_t last);
/* Resumes every suspended stream: for a keepalive comment, or, with stop,
 * to end them (at exit; libmicrohttpd must not stop with suspended
 * connections). Returns how many were resumed. */
size_t webhook_chat_wake(struct webhook_chat *c, bool stop);
/* Streams open. */
size_t webhook_chat_streams(const struct webhook_chat *c);

#endif
