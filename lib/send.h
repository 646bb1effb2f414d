/* send — omni-send: delivers dir=out envelopes to the customer's channel
 * and answers with receipt events (DESIGN.md, "Delivery", point 3).
 *
 *   telegram             Bot API sendMessage            (send_http.c)
 *   whatsapp             Graph API, WhatsApp Cloud       (send_http.c)
 *   messenger            Graph API, Send API             (send_http.c)
 *   sms, voice           Twilio Messages REST            (send_http.c)
 *   email                SMTP, threaded                  (send_mail.c)
 *   webchat              PUSH to the webhook gateway     (send.c)
 *
 * Every reply goes through a durable outbox (sqlite, WAL, synchronous=FULL)
 * keyed on its id, so a reply is delivered once even when it is replayed or
 * omni-send restarts. A row is marked "sending" before the provider is
 * called and "sent" after; a row found "sending" at start is sent again
 * only where the provider makes that harmless (SMTP: the same Message-ID;
 * web chat: the gateway shows one envelope id once), otherwise it is
 * counted and logged as "maybe" delivered. Temporary failures are retried
 * with exponential backoff and jitter, honouring Retry-After and
 * Telegram's retry_after; permanent ones go to the dead table with their
 * reason. Options and the retry policy are send_conf.c; the CLI (status,
 * dead, retry) is send_cli.c. */
#ifndef OMNI_SEND_H
#define OMNI_SEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "envelope.h"
#include "stage.h"

#define SEND_SCHEMA_VERSION 1   /* PRAGMA user_version of the outbox */

extern const struct stage send_stage;

/* The options of the service. Tokens given as files are read at start. */
struct send_conf {
    const char *db;                 /* the outbox database */
    const char *telegram_api;       /* Bot API base URL */
    const char *telegram_token;     /* bot token */
    const char *telegram_token_file; /* file holding it */
    const char *graph_api;          /* Graph API base URL */
    const char *graph_version;      /* "v19.0" */
    const char *whatsapp_phone_id;  /* WhatsApp Cloud phone number id */
    const char *whatsapp_token;     /* its access token */
    const char *whatsapp_token_file; /* file holding it */
    const char *messenger_token;    /* page access token */
    const char *messenger_token_file; /* file holding it */
    const char *twilio_api;         /* Twilio REST base URL */
    const char *twilio_sid;         /* account SID */
    const char *twilio_token;       /* auth token */
    const char *twilio_token_file;  /* file holding it */
    const char *twilio_from;        /* sender number (E.164) */
    const char *twilio_service;     /* or a messaging service SID */
    const char *twilio_callback;    /* StatusCallback URL, or NULL */
    const char *smtp_url;           /* smtp://host:port or smtps:// */
    const char *smtp_from;          /* "Name <addr>" or addr */
    const char *smtp_user;          /* AUTH user, or NULL */
    const char *smtp_password;      /* AUTH password */
    const char *smtp_password_file; /* file holding it */
    bool smtp_starttls;             /* require STARTTLS on smtp:// */
    const char *webchat;            /* PUSH endpoint of the gateway's --replies */
    const char *acks;               /* PUB of the ids stored in the outbox, or NULL */
    int64_t timeout_ms;             /* one API call, connect included */
    int64_t retry_min_ms;           /* first backoff */
    int64_t retry_max_ms;           /* longest backoff */
    int64_t give_up_ms;             /* a reply not delivered after this is dead */
    int64_t batch;                  /* rows delivered per tick */
};

/* The options table (send_conf.c). */
extern const struct opt send_options[];
/* Checks the options; logs what is wrong. Returns 0 or an exit code. */
int send_conf_check(const struct send_conf *conf);
#define SEND_SECRETS 5      /* token and password files */
/* Makes *resolved a copy of conf with the secrets of the --X-file options
 * read into secrets[] (the caller's; free with send_conf_forget). Returns
 * 0, or EXIT_CONFIG when a file cannot be read (logged). */
int send_conf_secrets(const struct send_conf *conf, struct send_conf *resolved,
                      char *secrets[SEND_SECRETS]);
/* Wipes and frees the secrets. */
void send_conf_forget(char *secrets[SEND_SECRETS]);

/* What came of one delivery attempt. */
enum send_outcome {
    SEND_SENT,      /* the provider accepted it */
    SEND_TEMP,      /* try again later (5xx, 408, 429, network) */
    SEND_PERM,      /* will never work (other 4xx, SMTP 5xx, bad handle) */
};

struct send_result {
    enum send_outcome outcome;  /* sent, temporary or permanent failure */
    long status;                /* HTTP status or SMTP reply code; 0 when none */
    int64_t retry_after_ms;     /* the provider asked to wait this long; -1 when not */
    char provider_id[256];      /* the provider's message id, when sent */
    char reason[512];           /* why not, for logs and the dead table */
};

/* Fills r as one outcome with a formatted reason. */
void send_result_set(struct send_result *r, enum send_outcome o, long status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The temporary/permanent split of an HTTP status: 2xx sent, 408, 429 and
 * 5xx temporary, every other status permanent. */
enum send_outcome send_http_class(long status);
/* The delay before attempt number attempts+1 (attempts >= 1 made): the
 * backoff min * 2^(attempts-1), capped at max, with jitter in its upper
 * half; at least retry_after_ms when the provider gave one (plus up to 10%).
 * rnd is a random 32-bit value. */
int64_t send_backoff(int attempts, int64_t min_ms, int64_t max_ms, int64_t retry_after_ms,
                     uint32_t rnd);
/* A Retry-After value (delta seconds or an HTTP date) as ms from now_s,
 * or -1 when it is neither. */
int64_t send_retry_after(const char *value, int64_t now_s);

/* The HTTP providers (send_http.c): one libcurl handle, kept alive. */
struct send_http;
struct send_http *send_http_new(const struct send_conf *conf, char *err, size_t n);
void send_http_destroy(struct send_http **h);
/* One delivery of reply e to its channel's API (telegram, whatsapp,
 * messenger, sms, voice). */
void send_http_deliver(struct send_http *h, const struct env *e, struct send_result *r);

/* E-mail (send_mail.c). */
struct send_mail;
struct send_mail *send_mail_new(const struct send_conf *conf, char *err, size_t n);
void send_mail_destroy(struct send_mail **m);
void send_mail_deliver(struct send_mail *m, const struct env *e, struct send_result *r);
/* The RFC 5322 message for reply e into out (CRLF line ends): From, To,
 * Subject ("Re: ..."), Date (now_ms), Message-ID <ID@domain>, In-Reply-To
 * and References from meta.message_id / meta.references, a quoted-printable
 * UTF-8 body. from is --smtp-from. Returns 0, or -1 with a reason. */
int send_mail_build(const struct env *e, const char *from, uint64_t now_ms, struct buf *out,
                    char *err, size_t n);

/* The address inside "Name <addr>" (or addr itself) into out[n]; -1 when
 * there is none. */
int send_mail_addr(const char *from, char *out, size_t n);

/* Reads a secret from a file (a systemd credential): the first line, with
 * its line end and surrounding blanks removed, as a string the caller
 * frees; NULL with a reason in err[n]. */
char *send_read_secret(const char *path, char *err, size_t n);

/* The CLI on the outbox: status [ID], dead, retry ID (send_cli.c). */
bool send_is_command(const char *word);
int send_cli(int argc, char **argv);

#endif
