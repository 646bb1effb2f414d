/* tgpoll — omni-ingest-telegram: getUpdates long polling into the spool;
 * see tgpoll.h. One curl easy handle (its connection kept between polls)
 * driven by a curl multi handle in short waits, so that SIGTERM ends even
 * a long poll at once.
 *
 * The stage opens --out and --tap itself (STAGE_SINK keeps the runner's
 * away) so that the spool's sender never waits: while the next stage is
 * away, updates go on into the spool up to --spool-max; and stdout is
 * flushed after each send, so nothing sits in a buffer. */
#include "tgpoll.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "buf.h"
#include "endpoint.h"
#include "json.h"
#include "log.h"
#include "spool.h"

#define S_WAIT_SLICE_MS 200         /* longest wait before signals are looked at again */
#define S_MAX_BODY (32u << 20)      /* largest answer read */
#define S_BACKOFF_MIN_MS 1000       /* first wait after a failure */
#define S_OFFSET_KEY "telegram.offset"

struct tgpoll_conf {
    const char *api;            /* --api: base URL of the Bot API */
    const char *token;          /* --token */
    const char *token_file;     /* --token-file */
    int64_t poll_timeout_ms;    /* --poll-timeout: how long one getUpdates is held */
    int64_t limit;              /* --limit: updates asked for at once */
    int64_t backoff_max_ms;     /* --backoff-max: longest wait after failures */
    const char *bot;            /* --bot-username: skips getMe */
    const char *out;            /* --out: where envelopes go */
    const char *tap;            /* --tap: a PUB copy of them */
    struct spool_conf spool;    /* --spool, --acks, --resend-after, --spool-max, ... */
};

/* What one request came back with. */
enum s_outcome {
    S_DONE,         /* an answer (any HTTP status) */
    S_NETWORK,      /* no answer: connection, timeout, ... */
    S_STOPPED,      /* SIGTERM while waiting */
};

struct tgpoll {
    struct tgpoll_conf *conf;   /* options */
    struct stage_ctx *ctx;      /* the runner */
    struct spool *spool;        /* the durable queue */
    struct ep *out;             /* --out */
    struct ep *tap;             /* --tap, or NULL */
    CURLM *multi;               /* drives the easy handle */
    CURL *easy;                 /* the one connection to the API */
    struct curl_slist *headers; /* Content-Type: application/json */
    char *token;                /* the bot token (never logged) */
    char *base;                 /* "<api>/bot<token>/" */
    char to[300];               /* the bot's handle, telegram:<username> */
    char errbuf[CURL_ERROR_SIZE]; /* curl's reason for a failure */
    struct buf url;             /* the URL being requested */
    struct buf req;             /* the request body */
    struct buf body;            /* the answer */
    long status;                /* its HTTP status */
    bool too_big;               /* the answer passed S_MAX_BODY */
    struct env *env;            /* the envelope being built */
    int64_t offset;             /* the next update_id to ask for (0: none yet) */
    int64_t backoff_ms;         /* the next wait after a failure */
    bool full;                  /* the spool was full at the last look */
    bool curl_up;               /* curl_global_init succeeded */
    uint64_t updates;           /* updates received */
    uint64_t spooled;           /* envelopes spooled */
    uint64_t dups;              /* updates the spool had already */
    uint64_t skipped;           /* updates without a message */
    struct log_limit limit;     /* rate limit of repeated errors */
};

/* The option table: the stage's own options, then the spool's. */
static struct opt s_opts[24];

#define C(f) offsetof(struct tgpoll_conf, f)
static const struct opt s_own_opts[] = {
    { "api", OPT_STR, "https://api.telegram.org", C(api), "base URL of the Telegram Bot API" },
    { "token", OPT_STR, NULL, C(token), "the bot token (prefer --token-file: argv is visible to all)" },
    { "token-file", OPT_STR, NULL, C(token_file), "file holding the bot token" },
    { "poll-timeout", OPT_MS, "25s", C(poll_timeout_ms), "how long Telegram may hold one getUpdates" },
    { "limit", OPT_INT, "100", C(limit), "updates asked for at once (1..100)" },
    { "backoff-max", OPT_MS, "60s", C(backoff_max_ms), "longest wait after repeated failures" },
    { "bot-username", OPT_STR, NULL, C(bot), "the bot's username for `to` (default: ask getMe)" },
    { "out", OPT_STR, "-", C(out), "where envelopes go: -, @uri (bind), >uri (connect)" },
    { "tap", OPT_STR, NULL, C(tap), "also publish a copy of the output here (PUB)" },
    { NULL, 0, NULL, 0, NULL }
};
#undef C

static int s_init(struct stage_ctx *ctx, void *conf, void **state);
static int s_check(struct stage_ctx *ctx, void *conf);
static int s_run(void *state, struct stage_ctx *ctx);
static void s_fini(void **state);

static const struct stage s_stage = {
    .name = "ingest-telegram",
    .summary = "Long-polls Telegram's getUpdates and writes each message as an envelope, "
               "spooled before the offset moves on.",
    .options = s_opts,
    .conf_size = sizeof(struct tgpoll_conf),
    .flags = STAGE_SOURCE | STAGE_SINK,
    .init = s_init,
    .check = s_check,
    .run = s_run,
    .fini = s_fini,
};

const struct stage *tgpoll_stage(void)
{
    if (s_opts[0].name == NULL) {
        size_t n = sizeof s_own_opts / sizeof s_own_opts[0] - 1;
        memcpy(s_opts, s_own_opts, n * sizeof s_opts[0]);
        spool_opts_into(s_opts + n, sizeof s_opts / sizeof s_opts[0] - n,
                        offsetof(struct tgpoll_conf, spool));
    }
    return &s_stage;
}

/* ---- updates to envelopes ------------------------------------------- */

static const char *s_str(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* An integer member, or false when absent or not an integral number. */
static bool s_int(const cJSON *o, const char *name, int64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int64_t)v->valuedouble) {
        return false;
    }
    *out = (int64_t)v->valuedouble;
    return true;
}

/* Copies string member name of from into to (when present). */
static bool s_copy_str(cJSON *to, const char *key, const cJSON *from, const char *name)
{
    const char *s = s_str(from, name);
    return s == NULL || cJSON_AddStringToObject(to, key, s) != NULL;
}

static bool s_copy_int(cJSON *to, const char *key, const cJSON *from, const char *name)
{
    int64_t v;
    return !s_int(from, name, &v) || cJSON_AddNumberToObject(to, key, (double)v) != NULL;
}

/* An id as a string, as omni-ingest-webhook writes Telegram's ids. */
static bool s_add_id(cJSON *to, const char *key, int64_t v)
{
    char s[32];
    snprintf(s, sizeof s, "%" PRId64, v);
    return cJSON_AddStringToObject(to, key, s) != NULL;
}

/* One attachment from file object f (a PhotoSize, Document, Voice, ...),
 * shaped as the other channels' are (omni-ingest-webhook's too): type is
 * image, audio, video, document or sticker; mime_type when known. */
static bool s_attach(cJSON *atts, const char *type, const cJSON *f, const char *mime_default)
{
    if (!cJSON_IsObject(f)) {
        return true;
    }
    cJSON *a = cJSON_CreateObject();
    const char *mime = s_str(f, "mime_type");
    const char *name = s_str(f, "file_name");
    if (name == NULL) {
        name = s_str(f, "title");
    }
    if (mime == NULL) {
        mime = mime_default;
    }
    bool ok = a != NULL && cJSON_AddStringToObject(a, "type", type)
              && s_copy_str(a, "file_id", f, "file_id")
              && (name == NULL || cJSON_AddStringToObject(a, "name", name))
              && (mime == NULL || cJSON_AddStringToObject(a, "mime_type", mime))
              && s_copy_int(a, "size", f, "file_size")
              && s_copy_int(a, "width", f, "width") && s_copy_int(a, "height", f, "height")
              && s_copy_int(a, "duration", f, "duration");
    if (!ok || !cJSON_AddItemToArray(atts, a)) {
        cJSON_Delete(a);
        return false;
    }
    return true;
}

/* A location as an attachment with a geo: URI. */
static bool s_location(cJSON *atts, const cJSON *m)
{
    const cJSON *loc = cJSON_GetObjectItemCaseSensitive(m, "location");
    const cJSON *lat = cJSON_GetObjectItemCaseSensitive(loc, "latitude");
    const cJSON *lon = cJSON_GetObjectItemCaseSensitive(loc, "longitude");
    if (!cJSON_IsNumber(lat) || !cJSON_IsNumber(lon)) {
        return true;
    }
    char geo[96];
    snprintf(geo, sizeof geo, "geo:%.7g,%.7g", lat->valuedouble, lon->valuedouble);
    cJSON *a = cJSON_CreateObject();
    const cJSON *venue = cJSON_GetObjectItemCaseSensitive(m, "venue");
    bool ok = a != NULL && cJSON_AddStringToObject(a, "type", "location")
              && cJSON_AddStringToObject(a, "url", geo) && s_copy_str(a, "name", venue, "title");
    if (!ok || !cJSON_AddItemToArray(atts, a)) {
        cJSON_Delete(a);
        return false;
    }
    return true;
}

/* Every file a message carries, as attachments. */
static bool s_attachments(cJSON *atts, const cJSON *m)
{
    const cJSON *photo = cJSON_GetObjectItemCaseSensitive(m, "photo");
    if (cJSON_IsArray(photo) && cJSON_GetArraySize(photo) > 0) {
        /* The sizes of one photo, smallest first: the largest is the photo. */
        const cJSON *best = cJSON_GetArrayItem(photo, cJSON_GetArraySize(photo) - 1);
        if (!s_attach(atts, "image", best, "image/jpeg")) {
            return false;
        }
    }
    const cJSON *sticker = cJSON_GetObjectItemCaseSensitive(m, "sticker");
    const char *smime = "image/webp";
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(sticker, "is_animated"))) {
        smime = "application/x-tgsticker";
    } else if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(sticker, "is_video"))) {
        smime = "video/webm";
    }
    return s_attach(atts, "document", cJSON_GetObjectItemCaseSensitive(m, "document"), NULL)
           && s_attach(atts, "audio", cJSON_GetObjectItemCaseSensitive(m, "voice"), "audio/ogg")
           && s_attach(atts, "audio", cJSON_GetObjectItemCaseSensitive(m, "audio"), NULL)
           && s_attach(atts, "video", cJSON_GetObjectItemCaseSensitive(m, "video"), NULL)
           && s_attach(atts, "video", cJSON_GetObjectItemCaseSensitive(m, "video_note"), "video/mp4")
           && s_attach(atts, "video", cJSON_GetObjectItemCaseSensitive(m, "animation"), NULL)
           && s_attach(atts, "sticker", sticker, smime)
           && s_location(atts, m);
}

/* The text of a message: its text or caption, else what a contact or a
 * sticker says. Returns a malloc'ed string or NULL. */
static char *s_text(const cJSON *m)
{
    const char *t = s_str(m, "text");
    if (t == NULL) {
        t = s_str(m, "caption");
    }
    if (t != NULL) {
        return strdup(t);
    }
    char *s = NULL;
    const cJSON *contact = cJSON_GetObjectItemCaseSensitive(m, "contact");
    const cJSON *sticker = cJSON_GetObjectItemCaseSensitive(m, "sticker");
    if (cJSON_IsObject(contact) && s_str(contact, "phone_number") != NULL) {
        const char *first = s_str(contact, "first_name");
        if (asprintf(&s, "%s %s", first ? first : "", s_str(contact, "phone_number")) < 0) {
            s = NULL;
        }
    } else if (cJSON_IsObject(sticker) && s_str(sticker, "emoji") != NULL) {
        s = strdup(s_str(sticker, "emoji"));
    }
    return s;
}

int tgpoll_update_to_env(const cJSON *u, const char *to, struct env *e, char *err, size_t errn)
{
    int rc = -1;
    cJSON *j = NULL;
    char *text = NULL;
    int64_t update_id, chat_id, v;
    if (!cJSON_IsObject(u) || !s_int(u, "update_id", &update_id) || update_id < 0) {
        snprintf(err, errn, "no update_id");
        goto done;
    }
    bool edited = false;
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(u, "message");
    if (m == NULL) {
        m = cJSON_GetObjectItemCaseSensitive(u, "business_message");
    }
    if (m == NULL && (m = cJSON_GetObjectItemCaseSensitive(u, "edited_message")) != NULL) {
        edited = true;
    }
    if (m == NULL) {
        rc = 0;         /* a callback, a member change, ...: nothing a customer wrote */
        goto done;
    }
    const cJSON *chat = cJSON_GetObjectItemCaseSensitive(m, "chat");
    if (!cJSON_IsObject(m) || !s_int(chat, "id", &chat_id)) {
        snprintf(err, errn, "update_id=%" PRId64 ": a message without chat.id", update_id);
        goto done;
    }
    j = cJSON_CreateObject();
    cJSON *meta = cJSON_CreateObject();
    cJSON *atts = cJSON_CreateArray();
    if (j == NULL || meta == NULL || atts == NULL) {
        cJSON_Delete(meta);
        cJSON_Delete(atts);
        snprintf(err, errn, "out of memory");
        goto done;
    }
    cJSON_AddItemToObject(j, "meta", meta);
    text = s_text(m);
    bool ok = s_attachments(atts, m);
    if (cJSON_GetArraySize(atts) > 0) {
        cJSON_AddItemToObject(j, "attachments", atts);
    } else {
        cJSON_Delete(atts);
        if (text == NULL) {
            rc = 0;     /* a service message: a member joined, a pin, ... */
            goto done;
        }
    }
    char id[32], from[64];
    snprintf(id, sizeof id, "%" PRId64, update_id);
    snprintf(from, sizeof from, "telegram:%" PRId64, chat_id);
    const cJSON *sender = cJSON_GetObjectItemCaseSensitive(m, "from");
    const cJSON *contact = cJSON_GetObjectItemCaseSensitive(m, "contact");
    const cJSON *reply = cJSON_GetObjectItemCaseSensitive(m, "reply_to_message");
    ok = ok && cJSON_AddStringToObject(j, "channel", "telegram") && cJSON_AddStringToObject(j, "dir", "in")
         && cJSON_AddStringToObject(j, "src_id", id) && cJSON_AddStringToObject(j, "from", from)
         && cJSON_AddStringToObject(j, "to", to)
         && (text == NULL || cJSON_AddStringToObject(j, "text", text))
         && s_copy_str(meta, "username", sender, "username")
         && s_copy_str(meta, "first_name", sender, "first_name")
         && s_copy_str(meta, "last_name", sender, "last_name")
         && s_copy_str(meta, "language_code", sender, "language_code")
         && s_copy_int(meta, "user_id", sender, "id")
         && s_copy_str(meta, "chat_type", chat, "type") && s_copy_str(meta, "chat_title", chat, "title")
         && (!s_int(m, "message_id", &v) || s_add_id(meta, "message_id", v))
         && s_copy_int(meta, "date", m, "date")
         && s_copy_int(meta, "reply_to_message_id", reply, "message_id")
         && (!edited || (cJSON_AddTrueToObject(meta, "edited") && s_copy_int(meta, "edit_date", m, "edit_date")));
    /* A contact the user shares of themselves names their phone: identity
     * may link it. */
    if (ok && cJSON_IsObject(contact) && s_int(contact, "user_id", &v)) {
        int64_t uid;
        if (s_int(sender, "id", &uid) && uid == v) {
            ok = s_copy_str(meta, "phone", contact, "phone_number");
        }
    }
    if (!ok) {
        snprintf(err, errn, "out of memory");
        goto done;
    }
    struct env_err eerr;
    if (env_from_json(e, j, &eerr) != 0) {
        char why[300];
        snprintf(err, errn, "update_id=%" PRId64 ": %s", update_id, env_err_str(&eerr, why, sizeof why));
        goto done;
    }
    rc = 1;
done:
    cJSON_Delete(j);
    free(text);
    return rc;
}

/* ---- output ----------------------------------------------------------- */

/* Sends what the spool has due. */
static void s_pump(struct tgpoll *t)
{
    while (spool_pump(t->spool, t->ctx) == SPOOL_PUMP_BATCH) {
    }
}

/* s_pump when something is due. */
static void s_pump_due(struct tgpoll *t)
{
    if (spool_next_ms(t->spool) == 0) {
        s_pump(t);
    }
}

/* ---- HTTP ------------------------------------------------------------- */

static size_t s_write(char *p, size_t size, size_t n, void *arg)
{
    struct tgpoll *t = arg;
    size_t len = size * n;
    if (t->body.len + len > S_MAX_BODY) {
        t->too_big = true;
        return 0;
    }
    return buf_append(&t->body, p, len) == 0 ? len : 0;
}

/* Sends POST <base><method> with the JSON body in t->req, waiting in short
 * slices so that a signal is seen at once, and sending the spool's due
 * envelopes meanwhile. */
static enum s_outcome s_request(struct tgpoll *t, struct stage_ctx *ctx, const char *method,
                                int64_t timeout_ms)
{
    buf_reset(&t->url);
    buf_reset(&t->body);
    t->too_big = false;
    t->status = 0;
    t->errbuf[0] = '\0';
    if (buf_printf(&t->url, "%s%s", t->base, method) != 0) {
        snprintf(t->errbuf, sizeof t->errbuf, "out of memory");
        return S_NETWORK;
    }
    curl_easy_setopt(t->easy, CURLOPT_URL, t->url.data);
    curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, t->req.data ? t->req.data : "{}");
    curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE, (long)t->req.len);
    curl_easy_setopt(t->easy, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    if (curl_multi_add_handle(t->multi, t->easy) != CURLM_OK) {
        snprintf(t->errbuf, sizeof t->errbuf, "cannot start a request");
        return S_NETWORK;
    }
    enum s_outcome out = S_NETWORK;
    int running = 1;
    for (;;) {
        if (curl_multi_perform(t->multi, &running) != CURLM_OK) {
            snprintf(t->errbuf, sizeof t->errbuf, "curl multi failed");
            break;
        }
        if (running == 0) {
            int left;
            CURLMsg *msg = curl_multi_info_read(t->multi, &left);
            CURLcode rc = msg != NULL && msg->msg == CURLMSG_DONE ? msg->data.result : CURLE_OK;
            if (rc == CURLE_OK) {
                curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->status);
                out = S_DONE;
            } else if (t->too_big) {
                snprintf(t->errbuf, sizeof t->errbuf, "answer larger than %u bytes", S_MAX_BODY);
            } else if (t->errbuf[0] == '\0') {
                snprintf(t->errbuf, sizeof t->errbuf, "%s", curl_easy_strerror(rc));
            }
            break;
        }
        if (stage_stopping(ctx)) {
            out = S_STOPPED;
            break;
        }
        s_pump_due(t);
        int64_t due = spool_next_ms(t->spool);
        int wait = due >= 0 && due < S_WAIT_SLICE_MS ? (int)due : S_WAIT_SLICE_MS;
        curl_multi_poll(t->multi, NULL, 0, wait, NULL);
    }
    curl_multi_remove_handle(t->multi, t->easy);
    return out;
}

/* Waits ms (or until SIGTERM), sending the spool's due envelopes. Returns
 * -1 when stopping. */
static int s_sleep(struct tgpoll *t, struct stage_ctx *ctx, int64_t ms)
{
    uint64_t end = stage_mono_ms() + (uint64_t)(ms > 0 ? ms : 0);
    for (;;) {
        s_pump_due(t);
        uint64_t now = stage_mono_ms();
        if (now >= end) {
            return stage_stopping(ctx) ? -1 : 0;
        }
        int64_t due = spool_next_ms(t->spool);
        int64_t wait = (int64_t)(end - now);
        if (wait > S_WAIT_SLICE_MS * 5) {
            wait = S_WAIT_SLICE_MS * 5;
        }
        if (due >= 0 && due < wait) {
            wait = due;
        }
        if (stage_wait_fd(ctx, -1, (int)wait) < 0) {
            return -1;
        }
    }
}

/* The next wait after a failure, doubling up to --backoff-max. */
static int64_t s_backoff(struct tgpoll *t)
{
    int64_t ms = t->backoff_ms;
    t->backoff_ms = ms * 2 > t->conf->backoff_max_ms ? t->conf->backoff_max_ms : ms * 2;
    return ms;
}

/* What an answer that is not ok means. Returns 0 to go on (after waiting
 * *wait_ms), or an exit code. */
static int s_failure(struct tgpoll *t, const char *method, enum s_outcome out, const cJSON *j,
                     int64_t *wait_ms)
{
    if (out == S_NETWORK) {
        *wait_ms = s_backoff(t);
        log_limited(&t->limit, LOG_WARN, "%s: %s; again in %lld ms", method, t->errbuf,
                    (long long)*wait_ms);
        return 0;
    }
    int64_t code = t->status;
    const cJSON *ec = cJSON_GetObjectItemCaseSensitive(j, "error_code");
    if (cJSON_IsNumber(ec)) {
        code = (int64_t)ec->valuedouble;
    }
    const char *desc = s_str(j, "description");
    if (desc == NULL) {
        desc = j == NULL ? "the answer is not JSON" : "no description";
    }
    if (code == 401 || code == 404) {
        log_msg(LOG_ERROR, "%s: Telegram refuses the token (%lld %s); check --token-file", method,
                (long long)code, desc);
        return EXIT_CONFIG;
    }
    if (code == 429) {
        int64_t after = 0;
        const cJSON *params = cJSON_GetObjectItemCaseSensitive(j, "parameters");
        if (!s_int(params, "retry_after", &after) || after < 0) {
            after = 1;
        }
        *wait_ms = after * 1000;
        log_msg(LOG_WARN, "%s: rate limited (429 %s); again in %lld s", method, desc, (long long)after);
        return 0;
    }
    *wait_ms = s_backoff(t);
    log_limited(&t->limit, LOG_WARN, "%s: %lld %s; again in %lld ms", method, (long long)code, desc,
                (long long)*wait_ms);
    return 0;
}

/* Parses t->body: the document, or NULL. Sets *ok to its "ok". */
static cJSON *s_answer(struct tgpoll *t, bool *ok)
{
    char err[200];
    *ok = false;
    if (t->body.len == 0) {
        return NULL;
    }
    cJSON *j = json_parse(t->body.data, t->body.len, err, sizeof err);
    if (j != NULL) {
        *ok = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "ok"));
    }
    return j;
}

/* getMe, until it answers: the bot's username for `to`. Returns 0, or an
 * exit code (-1 when stopping). */
static int s_get_me(struct tgpoll *t, struct stage_ctx *ctx)
{
    if (t->conf->bot != NULL && t->conf->bot[0] != '\0') {
        snprintf(t->to, sizeof t->to, "telegram:%s", t->conf->bot);
        return 0;
    }
    for (;;) {
        buf_reset(&t->req);
        buf_puts(&t->req, "{}");
        enum s_outcome out = s_request(t, ctx, "getMe", 30000);
        if (out == S_STOPPED) {
            return -1;
        }
        bool ok = false;
        cJSON *j = out == S_DONE ? s_answer(t, &ok) : NULL;
        if (ok) {
            const char *user = s_str(cJSON_GetObjectItemCaseSensitive(j, "result"), "username");
            snprintf(t->to, sizeof t->to, "telegram:%s", user && user[0] ? user : "bot");
            cJSON_Delete(j);
            log_msg(LOG_INFO, "polling as %s from offset %lld", t->to, (long long)t->offset);
            t->backoff_ms = S_BACKOFF_MIN_MS;
            return 0;
        }
        int64_t wait = 0;
        int rc = s_failure(t, "getMe", out, j, &wait);
        cJSON_Delete(j);
        if (rc != 0) {
            return rc;
        }
        if (s_sleep(t, ctx, wait) < 0) {
            return -1;
        }
    }
}

/* Spools the updates of one answer with the offset after them, in one
 * transaction. Once the spool is full the rest are left with Telegram: the
 * offset stops below the first of them. Returns 0, or -1 (rolled back:
 * they come again). */
static int s_spool_updates(struct tgpoll *t, struct stage_ctx *ctx, const cJSON *result)
{
    int64_t last = -1;
    int64_t held = -1;      /* the lowest update_id left with Telegram, or -1 */
    int64_t put = 0, dup = 0, skip = 0;
    const cJSON *u;
    cJSON_ArrayForEach(u, result) {
        int64_t id;
        if (!s_int(u, "update_id", &id)) {
            log_limited(&t->limit, LOG_WARN, "getUpdates: an update without update_id: ignored");
            continue;
        }
        if (id < t->offset) {
            continue;   /* confirmed already: Telegram should not send it */
        }
        if (held >= 0 || spool_full(t->spool)) {
            held = held < 0 || id < held ? id : held;
            continue;
        }
        char err[300];
        int rc = tgpoll_update_to_env(u, t->to, t->env, err, sizeof err);
        if (rc < 0) {
            char *raw = cJSON_PrintUnformatted(u);
            char label[64];
            snprintf(label, sizeof label, "update_id=%lld", (long long)id);
            char reason[400];
            snprintf(reason, sizeof reason, "reason=\"%s\"", err);
            stage_reject(ctx, raw ? raw : "", raw ? strlen(raw) : 0, label, reason);
            free(raw);
            skip++;
        } else if (rc == 0) {
            skip++;
        } else {
            int p = spool_put(t->spool, t->env);
            if (p < 0) {
                spool_rollback(t->spool);
                return -1;
            }
            put += p == 0;
            dup += p == 1;
        }
        if (id > last) {
            last = id;
        }
    }
    if (held >= 0 && held <= last) {
        last = held - 1;    /* updates out of order: the offset may not pass one held */
    }
    if (last < 0 || last + 1 <= t->offset) {
        if (spool_commit(t->spool) != 0) {
            return -1;
        }
        return 0;
    }
    char off[32];
    snprintf(off, sizeof off, "%lld", (long long)(last + 1));
    if (spool_state_set(t->spool, S_OFFSET_KEY, off) != 0) {
        spool_rollback(t->spool);
        return -1;
    }
    if (spool_commit(t->spool) != 0) {
        return -1;
    }
    /* Committed: now, and only now, may Telegram forget them. */
    t->offset = last + 1;
    t->updates += (uint64_t)(put + dup + skip);
    t->spooled += (uint64_t)put;
    t->dups += (uint64_t)dup;
    t->skipped += (uint64_t)skip;
    log_msg(LOG_DEBUG, "spooled %lld updates (%lld already spooled, %lld without a message); offset %s",
            (long long)put, (long long)dup, (long long)skip, off);
    return 0;
}

/* One getUpdates and what follows. Returns 0 to go on, or an exit code
 * (-1 when stopping). */
static int s_poll(struct tgpoll *t, struct stage_ctx *ctx)
{
    /* No more than the spool has room for: what does not fit stays with
     * Telegram, unconfirmed, and the spool stays within --spool-max. */
    int64_t limit = t->conf->limit;
    int64_t room = t->conf->spool.max - spool_backlog(t->spool);
    if (t->conf->spool.max > 0 && room < limit) {
        limit = room > 1 ? room : 1;
    }
    buf_reset(&t->req);
    int rc = buf_printf(&t->req, "{\"timeout\":%lld,\"limit\":%lld,"
                        "\"allowed_updates\":[\"message\",\"edited_message\",\"business_message\"]",
                        (long long)(t->conf->poll_timeout_ms / 1000), (long long)limit);
    if (t->offset > 0) {
        rc |= buf_printf(&t->req, ",\"offset\":%lld", (long long)t->offset);
    }
    rc |= buf_putc(&t->req, '}');
    if (rc != 0) {
        log_msg(LOG_ERROR, "out of memory");
        return EXIT_SOFTWARE;
    }
    /* The long poll plus room for a slow network. */
    enum s_outcome out = s_request(t, ctx, "getUpdates", t->conf->poll_timeout_ms + 15000);
    if (out == S_STOPPED) {
        return -1;
    }
    bool ok = false;
    cJSON *j = out == S_DONE ? s_answer(t, &ok) : NULL;
    const cJSON *result = cJSON_GetObjectItemCaseSensitive(j, "result");
    int64_t wait = 0;
    if (ok && cJSON_IsArray(result)) {
        if (s_spool_updates(t, ctx, result) == 0) {
            t->backoff_ms = S_BACKOFF_MIN_MS;
            cJSON_Delete(j);
            s_pump(t);
            return 0;
        }
        wait = s_backoff(t);
        log_limited(&t->limit, LOG_ERROR, "cannot spool updates (offset stays %lld); again in %lld ms",
                    (long long)t->offset, (long long)wait);
    } else if (ok) {
        wait = s_backoff(t);
        log_limited(&t->limit, LOG_WARN, "getUpdates: ok without a result array; again in %lld ms",
                    (long long)wait);
    } else {
        rc = s_failure(t, "getUpdates", out, j, &wait);
        if (rc != 0) {
            cJSON_Delete(j);
            return rc;
        }
    }
    cJSON_Delete(j);
    return s_sleep(t, ctx, wait);
}

static int s_run(void *state, struct stage_ctx *ctx)
{
    struct tgpoll *t = state;
    int rc = s_get_me(t, ctx);
    while (rc == 0) {
        if (stage_stopping(ctx)) {
            break;
        }
        s_pump_due(t);
        if (spool_full(t->spool)) {
            if (!t->full) {
                log_msg(LOG_WARN, "spool full (%lld unacknowledged, --spool-max %lld): "
                        "holding offset %lld until it drains",
                        (long long)spool_backlog(t->spool), (long long)t->conf->spool.max,
                        (long long)t->offset);
                t->full = true;
            }
            rc = s_sleep(t, ctx, 500);
            continue;
        }
        if (t->full) {
            log_msg(LOG_INFO, "spool below --spool-max again: polling");
            t->full = false;
        }
        rc = s_poll(t, ctx);
    }
    /* A last send of what is committed (what the next stage does not take
     * now stays in the spool for the next run). */
    s_pump(t);
    log_msg(LOG_INFO, "stopped at offset %lld: %llu updates, %llu spooled, %llu already spooled, "
            "%llu without a message, %llu sent on", (long long)t->offset,
            (unsigned long long)t->updates, (unsigned long long)t->spooled,
            (unsigned long long)t->dups, (unsigned long long)t->skipped, (unsigned long long)spool_sent(t->spool));
    return rc < 0 ? 0 : rc;
}

/* ---- setup ------------------------------------------------------------ */

/* The token from --token-file or --token, whitespace trimmed, or NULL
 * with the reason logged. */
static char *s_token(const struct tgpoll_conf *c)
{
    char *tok = NULL;
    if (c->token_file != NULL && c->token_file[0] != '\0') {
        FILE *f = fopen(c->token_file, "r");
        if (f == NULL) {
            log_msg(LOG_ERROR, "--token-file %s: %s", c->token_file, strerror(errno));
            return NULL;
        }
        char line[512];
        tok = fgets(line, sizeof line, f) ? strdup(line) : NULL;
        fclose(f);
    } else if (c->token != NULL) {
        tok = strdup(c->token);
    } else {
        log_msg(LOG_ERROR, "no bot token: give --token-file (or --token)");
        return NULL;
    }
    if (tok == NULL) {
        log_msg(LOG_ERROR, "--token-file %s is empty", c->token_file);
        return NULL;
    }
    size_t n = strlen(tok);
    while (n > 0 && isspace((unsigned char)tok[n - 1])) {
        tok[--n] = '\0';
    }
    for (size_t i = 0; i < n; i++) {
        if (!isgraph((unsigned char)tok[i]) || tok[i] == '/' || tok[i] == '?' || tok[i] == '#') {
            log_msg(LOG_ERROR, "the bot token has a character a token cannot have");
            free(tok);
            return NULL;
        }
    }
    if (n == 0) {
        log_msg(LOG_ERROR, "the bot token is empty");
        free(tok);
        return NULL;
    }
    return tok;
}

/* The configuration, for --check and init. Returns 0 or EXIT_CONFIG. */
static int s_validate(const struct tgpoll_conf *c)
{
    if (c->api == NULL || (strncmp(c->api, "http://", 7) != 0 && strncmp(c->api, "https://", 8) != 0)) {
        log_msg(LOG_ERROR, "--api must be an http:// or https:// URL");
        return EXIT_CONFIG;
    }
    if (c->limit < 1 || c->limit > 100) {
        log_msg(LOG_ERROR, "--limit must be 1..100");
        return EXIT_CONFIG;
    }
    if (c->poll_timeout_ms < 0 || c->poll_timeout_ms > 600000) {
        log_msg(LOG_ERROR, "--poll-timeout must be 0..10m");
        return EXIT_CONFIG;
    }
    if (c->backoff_max_ms < S_BACKOFF_MIN_MS) {
        log_msg(LOG_ERROR, "--backoff-max must be at least 1s");
        return EXIT_CONFIG;
    }
    if (c->spool.path == NULL || c->spool.path[0] == '\0') {
        log_msg(LOG_ERROR, "--spool is required: updates are stored there before Telegram is told");
        return EXIT_CONFIG;
    }
    return 0;
}

static int s_check(struct stage_ctx *ctx, void *conf)
{
    (void)ctx;
    struct tgpoll_conf *c = conf;
    int rc = s_validate(c);
    if (rc == 0 && (stage_open_ep(NULL, "out", c->out, EP_OUT, NULL) != 0
                    || stage_open_ep(NULL, "tap", c->tap, EP_TAP, NULL) != 0)) {
        rc = EXIT_CONFIG;
    }
    char *tok = rc == 0 ? s_token(conf) : NULL;
    if (rc == 0 && tok == NULL) {
        rc = EXIT_CONFIG;
    }
    free(tok);
    return rc;
}

static int s_init(struct stage_ctx *ctx, void *conf, void **state)
{
    struct tgpoll_conf *c = conf;
    int rc = s_validate(c);
    if (rc != 0) {
        return rc;
    }
    struct tgpoll *t = calloc(1, sizeof *t);
    if (t == NULL) {
        return EXIT_SOFTWARE;
    }
    t->conf = c;
    t->ctx = ctx;
    t->backoff_ms = S_BACKOFF_MIN_MS;
    *state = t;
    if ((rc = stage_open_ep(ctx, "out", c->out, EP_OUT, &t->out)) != 0
        || (rc = stage_open_ep(ctx, "tap", c->tap, EP_TAP, &t->tap)) != 0) {
        goto fail;
    }
    if ((t->token = s_token(c)) == NULL) {
        rc = EXIT_CONFIG;
        goto fail;
    }
    size_t al = strlen(c->api);
    while (al > 0 && c->api[al - 1] == '/') {
        al--;
    }
    if (asprintf(&t->base, "%.*s/bot%s/", (int)al, c->api, t->token) < 0) {
        t->base = NULL;
        rc = EXIT_SOFTWARE;
        goto fail;
    }
    char err[300];
    t->spool = spool_open(ctx, &c->spool, err, sizeof err);
    if (t->spool == NULL) {
        log_msg(LOG_ERROR, "%s", err);
        rc = EXIT_UNAVAILABLE;
        goto fail;
    }
    spool_set_output(t->spool, t->out, t->tap);
    char off[32];
    int got = spool_state_get(t->spool, S_OFFSET_KEY, off, sizeof off);
    if (got < 0) {
        rc = EXIT_UNAVAILABLE;
        goto fail;
    }
    t->offset = got == 1 ? strtoll(off, NULL, 10) : 0;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        log_msg(LOG_ERROR, "cannot initialise libcurl");
        rc = EXIT_SOFTWARE;
        goto fail;
    }
    t->curl_up = true;
    t->env = env_new();
    t->multi = curl_multi_init();
    t->easy = curl_easy_init();
    t->headers = curl_slist_append(NULL, "Content-Type: application/json");
    if (t->env == NULL || t->multi == NULL || t->easy == NULL || t->headers == NULL) {
        rc = EXIT_SOFTWARE;
        goto fail;
    }
    curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, t->headers);
    curl_easy_setopt(t->easy, CURLOPT_WRITEFUNCTION, s_write);
    curl_easy_setopt(t->easy, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(t->easy, CURLOPT_ERRORBUFFER, t->errbuf);
    curl_easy_setopt(t->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(t->easy, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    curl_easy_setopt(t->easy, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(t->easy, CURLOPT_USERAGENT, "omnibus omni-ingest-telegram");
    curl_easy_setopt(t->easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(t->easy, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    return 0;
fail:
    s_fini(state);
    return rc;
}

static void s_fini(void **state)
{
    struct tgpoll *t = *state;
    if (t == NULL) {
        return;
    }
    if (t->easy != NULL) {
        curl_easy_cleanup(t->easy);
    }
    if (t->multi != NULL) {
        curl_multi_cleanup(t->multi);
    }
    if (t->curl_up) {
        curl_global_cleanup();
    }
    curl_slist_free_all(t->headers);
    spool_destroy(&t->spool);
    if (t->out != NULL && ep_is_stdio(t->out)) {
        ep_flush(t->out);
    }
    ep_destroy(&t->out);
    ep_destroy(&t->tap);
    env_destroy(&t->env);
    buf_free(&t->url);
    buf_free(&t->req);
    buf_free(&t->body);
    if (t->token != NULL) {
        memset(t->token, 0, strlen(t->token));
    }
    if (t->base != NULL) {
        memset(t->base, 0, strlen(t->base));
    }
    free(t->token);
    free(t->base);
    free(t);
    *state = NULL;
}
