/* send_http — omni-send's HTTP providers, over one libcurl handle whose
 * connections stay open between replies:
 *
 *   telegram    POST {telegram-api}/bot{TOKEN}/sendMessage
 *               {"chat_id", "text"}; errors {"ok":false,"error_code",
 *               "description","parameters":{"retry_after"}}
 *   whatsapp    POST {graph-api}/{version}/{phone-id}/messages, Bearer
 *               {"messaging_product":"whatsapp","to":DIGITS,"type":"text",..}
 *   messenger   POST {graph-api}/{version}/me/messages, Bearer
 *               {"recipient":{"id"},"messaging_type":"RESPONSE","message"}
 *   sms, voice  POST {twilio-api}/2010-04-01/Accounts/{SID}/Messages.json,
 *               basic auth, form To, From | MessagingServiceSid, Body,
 *               MediaUrl
 *
 * None of these APIs takes an idempotency key (Telegram, Graph and Twilio
 * document none for sending), so a reply whose call may have reached the
 * provider is not sent again blindly (see send.c). Every request still
 * carries "Idempotency-Key: <reply id>" for gateways in front of them that
 * honour it; the providers ignore unknown headers.
 *
 * Outcomes: 2xx sent; 408, 429, 5xx and network errors temporary (with
 * Retry-After, Telegram's retry_after, or Graph's throttling codes, which
 * come as 400); any other 4xx permanent, with the provider's message. The
 * tokens never appear in a log line or a reason. */
#include "send.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "json.h"
#include "mp.h"

#define MAX_RESPONSE (1u << 20)     /* larger answers are cut (and fail) */
#define TELEGRAM_MAX_TEXT 4096      /* characters of one sendMessage */
#define WHATSAPP_MAX_TEXT 4096      /* characters of one text message */
#define MESSENGER_MAX_TEXT 2000     /* characters of one message */
#define TWILIO_MAX_TEXT 1600        /* characters of one Body */
#define TWILIO_MAX_MEDIA 10         /* MediaUrl parameters per message */

struct send_http {
    const struct send_conf *conf;   /* options, secrets resolved */
    CURL *curl;                     /* one handle: connections are reused */
    struct buf url;                 /* the request's URL */
    struct buf body;                /* the request's body */
    struct buf resp;                /* the answer's body */
    struct buf text;                /* the reply's text with attachment links */
    char retry_after[64];           /* the answer's Retry-After header, or "" */
    bool too_big;                   /* the answer passed MAX_RESPONSE */
};

static size_t s_write(char *p, size_t size, size_t nmemb, void *arg)
{
    struct send_http *h = arg;
    size_t n = size * nmemb;
    if (h->resp.len + n > MAX_RESPONSE) {
        h->too_big = true;
        return 0;
    }
    return buf_append(&h->resp, p, n) == 0 ? n : 0;
}

static size_t s_header(char *p, size_t size, size_t nmemb, void *arg)
{
    struct send_http *h = arg;
    size_t n = size * nmemb;
    static const char name[] = "retry-after:";
    if (n > sizeof name - 1 && strncasecmp(p, name, sizeof name - 1) == 0) {
        size_t vlen = n - (sizeof name - 1);
        if (vlen >= sizeof h->retry_after) {
            vlen = sizeof h->retry_after - 1;
        }
        memcpy(h->retry_after, p + sizeof name - 1, vlen);
        h->retry_after[vlen] = '\0';
    }
    return n;
}

struct send_http *send_http_new(const struct send_conf *conf, char *err, size_t n)
{
    struct send_http *h = calloc(1, sizeof *h);
    if (h == NULL) {
        snprintf(err, n, "out of memory");
        return NULL;
    }
    h->conf = conf;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        snprintf(err, n, "libcurl did not initialise");
        free(h);
        return NULL;
    }
    h->curl = curl_easy_init();
    if (h->curl == NULL) {
        snprintf(err, n, "libcurl: out of memory");
        send_http_destroy(&h);
        return NULL;
    }
    return h;
}

void send_http_destroy(struct send_http **hp)
{
    struct send_http *h = *hp;
    if (h == NULL) {
        return;
    }
    if (h->curl != NULL) {
        curl_easy_cleanup(h->curl);
    }
    curl_global_cleanup();
    buf_free(&h->url);
    buf_free(&h->body);
    buf_free(&h->resp);
    buf_free(&h->text);
    free(h);
    *hp = NULL;
}

/* The base URL without its trailing slashes, then fmt, into h->url. */
static int s_url(struct send_http *h, const char *base, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int s_url(struct send_http *h, const char *base, const char *fmt, ...)
{
    size_t n = strlen(base);
    while (n > 0 && base[n - 1] == '/') {
        n--;
    }
    buf_reset(&h->url);
    int rc = buf_append(&h->url, base, n);
    va_list ap;
    va_start(ap, fmt);
    rc |= buf_vprintf(&h->url, fmt, ap);
    va_end(ap);
    return rc;
}

/* How a request authenticates. */
struct s_auth {
    const char *bearer;     /* Authorization: Bearer, or NULL */
    const char *user;       /* basic auth user, or NULL */
    const char *password;   /* basic auth password */
};

/* Appends one header line to *l. */
static bool s_hdr(struct curl_slist **l, const char *line)
{
    struct curl_slist *t = curl_slist_append(*l, line);
    if (t == NULL) {
        return false;
    }
    *l = t;
    return true;
}

/* POSTs h->body to h->url. Returns the HTTP status, or 0 with r filled as
 * a temporary failure when no answer came. */
static long s_post(struct send_http *h, const char *ctype, const struct s_auth *auth,
                   const char *idem, struct send_result *r)
{
    CURL *c = h->curl;
    char line[1200];
    struct curl_slist *hdrs = NULL;
    long status = 0;
    bool ok = true;
    snprintf(line, sizeof line, "Content-Type: %s", ctype);
    ok = ok && s_hdr(&hdrs, line);
    ok = ok && s_hdr(&hdrs, "Accept: application/json");
    ok = ok && s_hdr(&hdrs, "Expect:");
    snprintf(line, sizeof line, "Idempotency-Key: %s", idem);
    ok = ok && s_hdr(&hdrs, line);
    if (ok && auth->bearer != NULL) {
        int k = snprintf(line, sizeof line, "Authorization: Bearer %s", auth->bearer);
        ok = k > 0 && (size_t)k < sizeof line && s_hdr(&hdrs, line);
    }
    explicit_bzero(line, sizeof line);
    if (!ok) {
        send_result_set(r, SEND_TEMP, 0, "out of memory building the request");
        goto done;
    }
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, h->url.data);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, h->body.data ? h->body.data : "");
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)h->body.len);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, s_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, h);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, s_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, h);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)h->conf->timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)h->conf->timeout_ms);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "omnibus-omni-send/0.1");
    if (auth->user != NULL) {
        curl_easy_setopt(c, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        curl_easy_setopt(c, CURLOPT_USERNAME, auth->user);
        curl_easy_setopt(c, CURLOPT_PASSWORD, auth->password);
    }
    buf_reset(&h->resp);
    h->too_big = false;
    h->retry_after[0] = '\0';
    CURLcode cc = curl_easy_perform(c);
    if (cc != CURLE_OK) {
        send_result_set(r, SEND_TEMP, 0, "%s", h->too_big ? "answer too large" : curl_easy_strerror(cc));
        goto done;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (h->retry_after[0] != '\0') {
        r->retry_after_ms = send_retry_after(h->retry_after, (int64_t)time(NULL));
    }
done:
    /* The options point at the list and the password: forget them. */
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(c, CURLOPT_PASSWORD, "");
    curl_slist_free_all(hdrs);
    return status;
}

/* The answer as JSON, or NULL. */
static cJSON *s_answer(struct send_http *h)
{
    char why[200];
    return json_parse(h->resp.data ? h->resp.data : "", h->resp.len, why, sizeof why);
}

/* Characters (code points) of UTF-8 s. */
static size_t s_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++) {
        n += ((unsigned char)*s & 0xC0) != 0x80;
    }
    return n;
}

/* The url of each attachment, in order, through fn. */
static void s_attachments(const struct env *e, void (*fn)(void *arg, const char *url, size_t n),
                          void *arg)
{
    size_t len;
    const void *raw = env_raw(e, ENV_ATTACHMENTS, &len);
    if (raw == NULL) {
        return;
    }
    struct mp_reader rd;
    struct mp_val v;
    mp_reader_init(&rd, raw, len);
    if (mp_read(&rd, &v) != 0 || v.type != MP_ARRAY) {
        return;
    }
    for (uint32_t i = 0; i < v.n; i++) {
        struct mp_val m;
        if (mp_read(&rd, &m) != 0) {
            return;
        }
        if (m.type != MP_MAP) {
            continue;   /* the envelope decoder checked the shape */
        }
        for (uint32_t j = 0; j < m.n; j++) {
            struct mp_val k, val;
            if (mp_read(&rd, &k) != 0) {
                return;
            }
            struct mp_reader peek = rd;
            if (k.type == MP_STR && k.n == 3 && memcmp(k.s, "url", 3) == 0
                && mp_read(&peek, &val) == 0 && val.type == MP_STR && val.n > 0) {
                fn(arg, val.s, val.n);
            }
            if (mp_skip(&rd) != 0) {
                return;
            }
        }
    }
}

static void s_add_link(void *arg, const char *url, size_t n)
{
    struct buf *b = arg;
    if (b->len > 0) {
        buf_putc(b, '\n');
    }
    buf_append(b, url, n);
}

/* The reply's text with its attachments' URLs on lines of their own (chat
 * APIs take one kind of content per message; a link keeps it one call),
 * into h->text. Returns it, or NULL when there is neither. */
static const char *s_text_links(struct send_http *h, const struct env *e)
{
    buf_reset(&h->text);
    const char *text = env_get(e, ENV_TEXT);
    if (text != NULL) {
        buf_puts(&h->text, text);
    }
    s_attachments(e, s_add_link, &h->text);
    return h->text.len > 0 ? h->text.data : NULL;
}

/* The id after "scheme:" in handle, or NULL when the scheme differs. */
static const char *s_handle_id(const char *handle, const char *scheme)
{
    size_t n = strlen(scheme);
    if (handle == NULL || strncmp(handle, scheme, n) != 0 || handle[n] != ':' || handle[n + 1] == '\0') {
        return NULL;
    }
    return handle + n + 1;
}

/* Builds h->body from a cJSON object (consumed). Returns 0 or -1. */
static int s_json_body(struct send_http *h, cJSON *doc)
{
    char *text = doc ? cJSON_PrintUnformatted(doc) : NULL;
    cJSON_Delete(doc);
    if (text == NULL) {
        return -1;
    }
    buf_reset(&h->body);
    int rc = buf_puts(&h->body, text);
    free(text);
    return rc;
}

/* --- Telegram --------------------------------------------------------------- */

static void s_telegram(struct send_http *h, const struct env *e, struct send_result *r)
{
    const struct send_conf *c = h->conf;
    const char *chat = s_handle_id(env_get(e, ENV_TO), "telegram");
    const char *text = s_text_links(h, e);
    cJSON *doc = NULL;
    if (c->telegram_token == NULL || c->telegram_token[0] == '\0') {
        send_result_set(r, SEND_PERM, 0, "Telegram is not configured (--telegram-token)");
        return;
    }
    if (chat == NULL) {
        send_result_set(r, SEND_PERM, 0, "to is not a telegram: handle");
        return;
    }
    if (text == NULL) {
        send_result_set(r, SEND_PERM, 0, "nothing to send (no text, no attachment URL)");
        return;
    }
    if (s_chars(text) > TELEGRAM_MAX_TEXT) {
        send_result_set(r, SEND_PERM, 0, "text of %zu characters: Telegram takes at most %d",
                        s_chars(text), TELEGRAM_MAX_TEXT);
        return;
    }
    doc = cJSON_CreateObject();
    char *end;
    long long num = strtoll(chat, &end, 10);
    bool numeric = *end == '\0' && end != chat;
    if (doc == NULL
        || (numeric ? cJSON_AddNumberToObject(doc, "chat_id", (double)num)
                    : cJSON_AddStringToObject(doc, "chat_id", chat)) == NULL
        || cJSON_AddStringToObject(doc, "text", text) == NULL) {
        cJSON_Delete(doc);
        send_result_set(r, SEND_TEMP, 0, "out of memory building the request");
        return;
    }
    if (numeric && (num > (1LL << 53) || num < -(1LL << 53))) {
        cJSON_ReplaceItemInObject(doc, "chat_id", cJSON_CreateString(chat));
    }
    if (s_json_body(h, doc) != 0
        || s_url(h, c->telegram_api, "/bot%s/sendMessage", c->telegram_token) != 0) {
        send_result_set(r, SEND_TEMP, 0, "out of memory building the request");
        return;
    }
    struct s_auth auth = { NULL, NULL, NULL };
    long status = s_post(h, "application/json", &auth, env_get(e, ENV_ID), r);
    explicit_bzero(h->url.data, h->url.len);
    if (status == 0) {
        return;
    }
    cJSON *ans = s_answer(h);
    const cJSON *ok = cJSON_GetObjectItemCaseSensitive(ans, "ok");
    enum send_outcome o = send_http_class(status);
    if (o == SEND_SENT && cJSON_IsTrue(ok)) {
        const cJSON *res = cJSON_GetObjectItemCaseSensitive(ans, "result");
        const cJSON *mid = cJSON_GetObjectItemCaseSensitive(res, "message_id");
        send_result_set(r, SEND_SENT, status, "ok");
        if (cJSON_IsNumber(mid)) {
            snprintf(r->provider_id, sizeof r->provider_id, "%.0f", mid->valuedouble);
        }
        cJSON_Delete(ans);
        return;
    }
    const cJSON *desc = cJSON_GetObjectItemCaseSensitive(ans, "description");
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(ans, "parameters");
    const cJSON *ra = cJSON_GetObjectItemCaseSensitive(params, "retry_after");
    if (cJSON_IsNumber(ra) && ra->valuedouble >= 0) {
        r->retry_after_ms = (int64_t)(ra->valuedouble * 1000);
        o = SEND_TEMP;
    }
    if (o == SEND_SENT) {
        o = SEND_TEMP;  /* 2xx without "ok": true is not an answer we know */
    }
    send_result_set(r, o, status, "telegram %ld: %.300s", status,
                    cJSON_IsString(desc) ? desc->valuestring : "no description");
    cJSON_Delete(ans);
}

/* --- Graph API (WhatsApp Cloud, Messenger) ---------------------------------- */

/* Graph's throttling and transient codes: retried even when they come as
 * HTTP 400. */
static bool s_graph_temporary(long code)
{
    static const long codes[] = {
        1, 2, 4, 17, 32, 341, 613, 1200, 80007, 130429, 131000, 131016, 131048, 131056, 133004,
    };
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        if (codes[i] == code) {
            return true;
        }
    }
    return false;
}

/* Reads a Graph answer: the id at (outer, inner) path when sent, the error
 * otherwise. */
static void s_graph_answer(struct send_http *h, long status, const char *who, bool whatsapp,
                           struct send_result *r)
{
    cJSON *ans = s_answer(h);
    enum send_outcome o = send_http_class(status);
    if (o == SEND_SENT) {
        const cJSON *id = NULL;
        if (whatsapp) {
            const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(ans, "messages");
            id = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(msgs, 0), "id");
        } else {
            id = cJSON_GetObjectItemCaseSensitive(ans, "message_id");
        }
        if (cJSON_IsString(id)) {
            send_result_set(r, SEND_SENT, status, "ok");
            snprintf(r->provider_id, sizeof r->provider_id, "%s", id->valuestring);
        } else {
            /* Accepted, but not in the shape documented: count it sent
             * (sending again could double it), say so. */
            send_result_set(r, SEND_SENT, status, "accepted without a message id");
        }
        cJSON_Delete(ans);
        return;
    }
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(ans, "error");
    const cJSON *msg = cJSON_GetObjectItemCaseSensitive(err, "message");
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(err, "code");
    long lcode = cJSON_IsNumber(code) ? (long)code->valuedouble : 0;
    if (lcode != 0 && s_graph_temporary(lcode)) {
        o = SEND_TEMP;
    }
    send_result_set(r, o, status, "%s %ld (code %ld): %.300s", who, status, lcode,
                    cJSON_IsString(msg) ? msg->valuestring : "no message");
    cJSON_Delete(ans);
}

static void s_whatsapp(struct send_http *h, const struct env *e, struct send_result *r)
{
    const struct send_conf *c = h->conf;
    const char *to = env_get(e, ENV_TO);
    const char *num = s_handle_id(to, "whatsapp");
    if (num == NULL) {
        num = s_handle_id(to, "tel");
    }
    if (c->whatsapp_token == NULL || c->whatsapp_phone_id == NULL) {
        send_result_set(r, SEND_PERM, 0, "WhatsApp is not configured (--whatsapp-phone-id, --whatsapp-token)");
        return;
    }
    char digits[20];
    size_t nd = 0;
    for (const char *p = num; p != NULL && *p && nd < sizeof digits - 1; p++) {
        if (*p >= '0' && *p <= '9') {
            digits[nd++] = *p;
        } else if (*p != '+' && *p != ' ' && *p != '-') {
            nd = 0;
            break;
        }
    }
    digits[nd] = '\0';
    if (nd < 6 || nd > 15) {
        send_result_set(r, SEND_PERM, 0, "to is not a whatsapp: phone number");
        return;
    }
    const char *text = s_text_links(h, e);
    if (text == NULL) {
        send_result_set(r, SEND_PERM, 0, "nothing to send (no text, no attachment URL)");
        return;
    }
    if (s_chars(text) > WHATSAPP_MAX_TEXT) {
        send_result_set(r, SEND_PERM, 0, "text of %zu characters: WhatsApp takes at most %d",
                        s_chars(text), WHATSAPP_MAX_TEXT);
        return;
    }
    cJSON *doc = cJSON_CreateObject();
    cJSON *body = cJSON_AddObjectToObject(doc, "text");
    if (doc == NULL || body == NULL || cJSON_AddStringToObject(doc, "messaging_product", "whatsapp") == NULL
        || cJSON_AddStringToObject(doc, "recipient_type", "individual") == NULL
        || cJSON_AddStringToObject(doc, "to", digits) == NULL
        || cJSON_AddStringToObject(doc, "type", "text") == NULL
        || cJSON_AddFalseToObject(body, "preview_url") == NULL
        || cJSON_AddStringToObject(body, "body", text) == NULL) {
        cJSON_Delete(doc);
        send_result_set(r, SEND_TEMP, 0, "out of memory building the request");
        return;
    }
    if (s_json_body(h, doc) != 0
        || s_url(h, c->graph_api, "/%s/%s/messages", c->graph_version, c->whatsapp_phone_id) != 0) {
        send_result_set(r, SEND_TEMP, 0, "out of memory building the request");
        return;
    }
    struct s_auth auth = { c->whatsapp_token, NULL, NULL };
    long status = s_post(h, "application/json", &auth, env_get(e, ENV_ID), r);
    if (status != 0) {
        s_graph_answer(h, status, "whatsapp", true, r);
    }
}

static void s_messenger(struct send_http *h, const struct env *e, struct send_result *r)
{
    const struct send_conf *c = h->conf;
    const char *psid = s_handle_id(env_get(e, ENV_TO), "messenger");
    if (c->messenger_token == NULL) {
        send_result_set(r, SEND_PERM, 0, "Messenger is not configured (--messenger-token)");
        return;
    }
    if (psid == NULL) {
        send_result_set(r, SEND_PERM, 0, "to is not a messenger: handle");
        return;
    }
    const char *text = s_text_links(h, e);
    if (text == NULL) {
        send_result_set(r, SEND_PERM, 0, "nothing to send (no text, no attachment URL)");
        return;
    }
    if (s_chars(text) > MESSENGER_MAX_TEXT) {
        send_result_set(r, SEND_PERM, 0, "text of %zu characters: Messenger takes at most %d",
                        s_chars(text), MESSENGER_MAX_TEXT);
        return;
    }
    cJSON *doc = cJSON_CreateObject();
    cJSON *rcpt = cJSON_AddObjectToObject(doc, "recipient");
    bool built = rcpt != NULL && cJSON_AddStringToObject(rcpt, "id", psid) != NULL
                 && cJSON_AddStringToObject(doc, "messaging_type", "RESPONSE") != NULL;
    cJSON *msg = built ? cJSON_AddObjectToObject(doc, "message") : NULL;
    if (msg == NULL || cJSON_AddStringToObject(msg, "text", text) == NULL) {
        cJSON_Delete(doc);
        send_result_set(r, SEND_TEMP, 0, "out of memory building the request");
        return;
    }
    if (s_json_body(h, doc) != 0 || s_url(h, c->graph_api, "/%s/me/messages", c->graph_version) != 0) {
        send_result_set(r, SEND_TEMP, 0, "out of memory building the request");
        return;
    }
    struct s_auth auth = { c->messenger_token, NULL, NULL };
    long status = s_post(h, "application/json", &auth, env_get(e, ENV_ID), r);
    if (status != 0) {
        s_graph_answer(h, status, "messenger", false, r);
    }
}

/* --- Twilio ------------------------------------------------------------------ */

/* Appends name=value, form-encoded, to h->body. */
static int s_form(struct send_http *h, const char *name, const char *value, size_t n)
{
    char *v = curl_easy_escape(h->curl, value, (int)n);
    if (v == NULL) {
        return -1;
    }
    int rc = buf_printf(&h->body, "%s%s=%s", h->body.len ? "&" : "", name, v);
    curl_free(v);
    return rc;
}

/* The state of MediaUrl parameters being added. */
struct s_media {
    struct send_http *h;    /* whose body */
    int n;                  /* added so far */
    int rc;                 /* non-zero once one failed */
};

static void s_add_media(void *arg, const char *url, size_t n)
{
    struct s_media *m = arg;
    if (m->n++ < TWILIO_MAX_MEDIA) {
        m->rc |= s_form(m->h, "MediaUrl", url, n);
    }
}

static void s_twilio(struct send_http *h, const struct env *e, struct send_result *r)
{
    const struct send_conf *c = h->conf;
    const char *to = s_handle_id(env_get(e, ENV_TO), "tel");
    if (to == NULL) {
        to = s_handle_id(env_get(e, ENV_TO), "sms");
    }
    if (c->twilio_sid == NULL || c->twilio_token == NULL) {
        send_result_set(r, SEND_PERM, 0, "Twilio is not configured (--twilio-sid, --twilio-token)");
        return;
    }
    if (to == NULL || to[0] != '+') {
        send_result_set(r, SEND_PERM, 0, "to is not a tel:+E.164 number");
        return;
    }
    const char *text = env_get(e, ENV_TEXT);
    if (text != NULL && s_chars(text) > TWILIO_MAX_TEXT) {
        send_result_set(r, SEND_PERM, 0, "text of %zu characters: Twilio takes at most %d",
                        s_chars(text), TWILIO_MAX_TEXT);
        return;
    }
    buf_reset(&h->body);
    int rc = s_form(h, "To", to, strlen(to));
    if (c->twilio_service != NULL && c->twilio_service[0] != '\0') {
        rc |= s_form(h, "MessagingServiceSid", c->twilio_service, strlen(c->twilio_service));
    } else {
        rc |= s_form(h, "From", c->twilio_from, strlen(c->twilio_from));
    }
    if (text != NULL) {
        rc |= s_form(h, "Body", text, strlen(text));
    }
    struct s_media media = { h, 0, 0 };
    s_attachments(e, s_add_media, &media);
    rc |= media.rc;
    if (text == NULL && media.n == 0) {
        send_result_set(r, SEND_PERM, 0, "nothing to send (no text, no attachment URL)");
        return;
    }
    if (c->twilio_callback != NULL && c->twilio_callback[0] != '\0') {
        rc |= s_form(h, "StatusCallback", c->twilio_callback, strlen(c->twilio_callback));
    }
    rc |= s_url(h, c->twilio_api, "/2010-04-01/Accounts/%s/Messages.json", c->twilio_sid);
    if (rc != 0) {
        send_result_set(r, SEND_TEMP, 0, "out of memory building the request");
        return;
    }
    struct s_auth auth = { NULL, c->twilio_sid, c->twilio_token };
    long status = s_post(h, "application/x-www-form-urlencoded", &auth, env_get(e, ENV_ID), r);
    if (status == 0) {
        return;
    }
    cJSON *ans = s_answer(h);
    enum send_outcome o = send_http_class(status);
    if (o == SEND_SENT) {
        const cJSON *sid = cJSON_GetObjectItemCaseSensitive(ans, "sid");
        send_result_set(r, SEND_SENT, status, cJSON_IsString(sid) ? "ok" : "accepted without a sid");
        if (cJSON_IsString(sid)) {
            snprintf(r->provider_id, sizeof r->provider_id, "%s", sid->valuestring);
        }
        cJSON_Delete(ans);
        return;
    }
    const cJSON *msg = cJSON_GetObjectItemCaseSensitive(ans, "message");
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(ans, "code");
    long lcode = cJSON_IsNumber(code) ? (long)code->valuedouble : 0;
    if (lcode == 20429) {
        o = SEND_TEMP;  /* Twilio's "too many requests" */
    }
    send_result_set(r, o, status, "twilio %ld (code %ld): %.300s", status, lcode,
                    cJSON_IsString(msg) ? msg->valuestring : "no message");
    cJSON_Delete(ans);
}

void send_http_deliver(struct send_http *h, const struct env *e, struct send_result *r)
{
    const char *ch = env_get(e, ENV_CHANNEL);
    if (strcmp(ch, "telegram") == 0) {
        s_telegram(h, e, r);
    } else if (strcmp(ch, "whatsapp") == 0) {
        s_whatsapp(h, e, r);
    } else if (strcmp(ch, "messenger") == 0) {
        s_messenger(h, e, r);
    } else if (strcmp(ch, "sms") == 0 || strcmp(ch, "voice") == 0) {
        s_twilio(h, e, r);
    } else {
        send_result_set(r, SEND_PERM, 0, "channel %s is not an HTTP provider", ch);
    }
}
