/* webhook_parse — request bodies become envelopes: the helpers every
 * provider's parser uses, and Telegram, generic JSON and web chat
 * (webhook_meta.c has WhatsApp and Messenger, webhook_twilio.c Twilio).
 * Envelopes are built as JSON objects and made by env_from_json
 * (envelope.c stays the only writer of envelope msgpack).
 *
 * A body that is not what the provider sends (not JSON, no entry array)
 * is refused whole (HTTP 400, the provider will not fix it by retrying but
 * it is logged and dead-lettered). One bad item among good ones (a message
 * without an id) is refused alone through b->reject and the rest is taken:
 * answering 400 to the whole would make the provider retry, or drop, the
 * good ones with it. */
#include "webhook.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

#define MAX_ITEMS 10000     /* envelopes one request may carry */

void webhook_batch_clear(struct webhook_batch *b)
{
    for (size_t i = 0; i < b->n; i++) {
        env_destroy(&b->env[i]);
    }
    b->n = 0;
    b->skipped = 0;
    b->reason[0] = '\0';
}

void webhook_batch_free(struct webhook_batch *b)
{
    webhook_batch_clear(b);
    free(b->env);
    b->env = NULL;
    b->cap = 0;
}

int webhook_parse_fail(struct webhook_batch *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->reason, sizeof b->reason, fmt, ap);
    va_end(ap);
    return -1;
}

/* --- JSON helpers -------------------------------------------------------- */

const cJSON *webhook_parse_get(const cJSON *o, const char *k)
{
    return cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL;
}

/* A string member, or NULL (absent, or not a string). */
const char *webhook_parse_gets(const cJSON *o, const char *k)
{
    const cJSON *v = webhook_parse_get(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* A string or integral number member as text in out[n], or NULL. */
const char *webhook_parse_id(const cJSON *o, const char *k, char *out, size_t n)
{
    const cJSON *v = webhook_parse_get(o, k);
    if (cJSON_IsString(v) && v->valuestring[0] != '\0') {
        snprintf(out, n, "%s", v->valuestring);
        return out;
    }
    if (cJSON_IsNumber(v) && v->valuedouble == (double)(int64_t)v->valuedouble
        && v->valuedouble < 9007199254740992.0 && v->valuedouble > -9007199254740992.0) {
        snprintf(out, n, "%" PRId64, (int64_t)v->valuedouble);
        return out;
    }
    return NULL;
}

void webhook_parse_str(cJSON *o, const char *k, const char *v)
{
    if (v != NULL && v[0] != '\0') {
        cJSON_AddStringToObject(o, k, v);
    }
}

/* An item's JSON, for a dead letter. */
void webhook_parse_reject(struct webhook_batch *b, const cJSON *item, const char *reason)
{
    if (b->reject == NULL) {
        return;
    }
    char *raw = item ? cJSON_PrintUnformatted(item) : NULL;
    b->reject(b->reject_arg, raw ? raw : "", raw ? strlen(raw) : 0, reason);
    cJSON_free(raw);
}

/* Makes the envelope of j (consumed): fills v, ts and id, checks it, and
 * adds it to b. An envelope that does not pass is refused alone (item is
 * the provider's JSON it came from). Returns 0, or -1 out of memory. */
int webhook_parse_add(struct webhook_batch *b, cJSON *j, const cJSON *item)
{
    if (j == NULL) {
        return -1;
    }
    if (b->n >= MAX_ITEMS) {
        cJSON_Delete(j);
        webhook_parse_reject(b, item, "reason=\"more items than one request may carry\"");
        return 0;
    }
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 8;
        struct env **v = realloc(b->env, cap * sizeof *v);
        if (v == NULL) {
            cJSON_Delete(j);
            return -1;
        }
        b->env = v;
        b->cap = cap;
    }
    struct env *e = env_new();
    if (e == NULL) {
        cJSON_Delete(j);
        return -1;
    }
    struct env_err err;
    char id[ULID_LEN + 1];
    int rc = env_from_json(e, j, &err);
    cJSON_Delete(j);
    if (rc == 0) {
        env_set_uint(e, ENV_V, ENV_VERSION);
        env_set_uint(e, ENV_TS, b->now);
        if (ulid_next(b->ids, b->now, id) != 0 || env_set(e, ENV_ID, id, NULL) != 0) {
            env_destroy(&e);
            return -1;
        }
        rc = env_check(e, &err);
    }
    if (rc != 0) {
        char why[300];
        webhook_parse_reject(b, item, env_err_str(&err, why, sizeof why));
        env_destroy(&e);
        return 0;
    }
    b->env[b->n++] = e;
    return 0;
}

/* "scheme:+digits" from a phone number in any format, in out[n]; NULL
 * when it has no digits. */
const char *webhook_parse_phone(const char *scheme, const char *num, char *out, size_t n)
{
    if (num == NULL) {
        return NULL;
    }
    size_t k = (size_t)snprintf(out, n, "%s:+", scheme);
    size_t digits = 0;
    for (const char *c = num; *c != '\0' && k + 1 < n; c++) {
        if (*c >= '0' && *c <= '9') {
            out[k++] = *c;
            digits++;
        }
    }
    out[k] = '\0';
    return digits > 0 ? out : NULL;
}

cJSON *webhook_parse_root(struct webhook_batch *b, const char *body, size_t n)
{
    char err[200];
    cJSON *root = json_parse(body, n, err, sizeof err);
    if (root == NULL) {
        webhook_parse_fail(b, "bad JSON: %s", err);
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        webhook_parse_fail(b, "expected a JSON object");
        return NULL;
    }
    return root;
}

/* --- Telegram ------------------------------------------------------------ */

/* The attachment of a Telegram message, if it has one. */
static void s_tg_attachment(const cJSON *msg, cJSON *env)
{
    static const struct { const char *key, *type; } kinds[] = {
        { "document", "document" }, { "audio", "audio" }, { "voice", "audio" },
        { "video", "video" }, { "video_note", "video" }, { "animation", "video" },
        { "sticker", "sticker" },
    };
    const cJSON *f = NULL;
    const char *type = NULL;
    const cJSON *photo = webhook_parse_get(msg, "photo");
    if (cJSON_IsArray(photo) && cJSON_GetArraySize(photo) > 0) {
        /* Sizes, smallest first: the last is the original. */
        f = cJSON_GetArrayItem(photo, cJSON_GetArraySize(photo) - 1);
        type = "image";
    }
    for (size_t i = 0; f == NULL && i < sizeof kinds / sizeof kinds[0]; i++) {
        if (cJSON_IsObject(webhook_parse_get(msg, kinds[i].key))) {
            f = webhook_parse_get(msg, kinds[i].key);
            type = kinds[i].type;
        }
    }
    const cJSON *loc = webhook_parse_get(msg, "location");
    if (f == NULL && cJSON_IsObject(loc)) {
        const cJSON *lat = webhook_parse_get(loc, "latitude");
        const cJSON *lon = webhook_parse_get(loc, "longitude");
        if (cJSON_IsNumber(lat) && cJSON_IsNumber(lon)) {
            char geo[96];
            snprintf(geo, sizeof geo, "geo:%.7g,%.7g", lat->valuedouble, lon->valuedouble);
            cJSON *a = cJSON_CreateObject();
            webhook_parse_str(a, "type", "location");
            webhook_parse_str(a, "url", geo);
            cJSON_AddItemToArray(cJSON_AddArrayToObject(env, "attachments"), a);
        }
        return;
    }
    if (f == NULL) {
        return;
    }
    cJSON *a = cJSON_CreateObject();
    webhook_parse_str(a, "type", type);
    webhook_parse_str(a, "file_id", webhook_parse_gets(f, "file_id"));
    webhook_parse_str(a, "name", webhook_parse_gets(f, "file_name"));
    webhook_parse_str(a, "mime_type", webhook_parse_gets(f, "mime_type"));
    const cJSON *size = webhook_parse_get(f, "file_size");
    if (cJSON_IsNumber(size)) {
        cJSON_AddNumberToObject(a, "size", size->valuedouble);
    }
    cJSON_AddItemToArray(cJSON_AddArrayToObject(env, "attachments"), a);
}

int webhook_parse_telegram(struct webhook_batch *b, const char *body, size_t n)
{
    cJSON *root = webhook_parse_root(b, body, n);
    if (root == NULL) {
        return -1;
    }
    int rc = 0;
    char update[32], chat[32], mid[32];
    if (webhook_parse_id(root, "update_id", update, sizeof update) == NULL) {
        rc = webhook_parse_fail(b, "no update_id");
        goto done;
    }
    bool edited = false;
    const cJSON *msg = webhook_parse_get(root, "message");
    if (msg == NULL) {
        msg = webhook_parse_get(root, "edited_message");
        edited = msg != NULL;
    }
    if (msg == NULL) {
        b->skipped++;       /* callback queries, member updates, ... */
        goto done;
    }
    if (webhook_parse_id(webhook_parse_get(msg, "chat"), "id", chat, sizeof chat) == NULL) {
        webhook_parse_reject(b, root, "reason=\"a Telegram message without chat.id\"");
        goto done;
    }
    cJSON *env = cJSON_CreateObject();
    cJSON *meta = cJSON_CreateObject();
    char from[64], to[300];
    snprintf(from, sizeof from, "telegram:%s", chat);
    webhook_parse_str(env, "channel", "telegram");
    webhook_parse_str(env, "dir", "in");
    webhook_parse_str(env, "from", from);
    if (b->telegram_bot != NULL && b->telegram_bot[0] != '\0') {
        snprintf(to, sizeof to, "telegram:%s", b->telegram_bot);
        webhook_parse_str(env, "to", to);
    }
    webhook_parse_str(env, "src_id", update);
    const char *text = webhook_parse_gets(msg, "text");
    webhook_parse_str(env, "text", text ? text : webhook_parse_gets(msg, "caption"));
    s_tg_attachment(msg, env);
    const cJSON *contact = webhook_parse_get(msg, "contact");
    if (webhook_parse_get(env, "text") == NULL && contact != NULL) {
        char t[400];
        const char *first = webhook_parse_gets(contact, "first_name");
        const char *phone = webhook_parse_gets(contact, "phone_number");
        snprintf(t, sizeof t, "%s %s", first ? first : "", phone ? phone : "");
        webhook_parse_str(env, "text", t);
    }
    if (webhook_parse_get(env, "text") == NULL && webhook_parse_get(env, "attachments") == NULL) {
        cJSON_AddStringToObject(env, "text", "");
    }
    const cJSON *user = webhook_parse_get(msg, "from");
    webhook_parse_str(meta, "username", webhook_parse_gets(user, "username"));
    webhook_parse_str(meta, "first_name", webhook_parse_gets(user, "first_name"));
    webhook_parse_str(meta, "last_name", webhook_parse_gets(user, "last_name"));
    webhook_parse_str(meta, "chat_type", webhook_parse_gets(webhook_parse_get(msg, "chat"), "type"));
    webhook_parse_str(meta, "message_id", webhook_parse_id(msg, "message_id", mid, sizeof mid));
    if (edited) {
        cJSON_AddBoolToObject(meta, "edited", 1);
    }
    cJSON_AddItemToObject(env, "meta", meta);
    rc = webhook_parse_add(b, env, root);
    if (rc != 0) {
        webhook_parse_fail(b, "out of memory");
    }
done:
    cJSON_Delete(root);
    return rc;
}

/* --- generic ------------------------------------------------------------- */

static int s_generic_one(struct webhook_batch *b, const cJSON *obj, int index)
{
    struct env_err err;
    char why[300];
    char where[32] = "";
    if (index >= 0) {
        snprintf(where, sizeof where, "item %d: ", index);
    }
    if (b->n >= MAX_ITEMS) {
        snprintf(b->reason, sizeof b->reason, "more than %d envelopes in one request", MAX_ITEMS);
        return -1;
    }
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 8;
        struct env **v = realloc(b->env, cap * sizeof *v);
        if (v == NULL) {
            return webhook_parse_fail(b, "out of memory");
        }
        b->env = v;
        b->cap = cap;
    }
    struct env *e = env_new();
    if (e == NULL) {
        return webhook_parse_fail(b, "out of memory");
    }
    int rc = env_from_json(e, obj, &err);
    if (rc == 0) {
        if (!env_has(e, ENV_V)) {
            env_set_uint(e, ENV_V, ENV_VERSION);
        }
        if (!env_has(e, ENV_TS)) {
            env_set_uint(e, ENV_TS, b->now);
        }
        char id[ULID_LEN + 1];
        if (!env_has(e, ENV_ID) && (ulid_next(b->ids, b->now, id) != 0 || env_set(e, ENV_ID, id, NULL) != 0)) {
            env_destroy(&e);
            return webhook_parse_fail(b, "no randomness for ids");
        }
        rc = env_check(e, &err);
    }
    if (rc != 0) {
        snprintf(b->reason, sizeof b->reason, "%s%s", where, env_err_str(&err, why, sizeof why));
        env_destroy(&e);
        return -1;
    }
    b->env[b->n++] = e;
    return 0;
}

int webhook_parse_generic(struct webhook_batch *b, const char *body, size_t n)
{
    char err[200];
    cJSON *root = json_parse(body, n, err, sizeof err);
    if (root == NULL) {
        return webhook_parse_fail(b, "bad JSON: %s", err);
    }
    int rc = 0;
    if (cJSON_IsArray(root)) {
        int i = 0;
        const cJSON *o;
        cJSON_ArrayForEach(o, root) {
            if (rc == 0) {
                rc = s_generic_one(b, o, i++);
            }
        }
    } else {
        rc = s_generic_one(b, root, -1);
    }
    cJSON_Delete(root);
    if (rc != 0) {
        /* All or nothing: an integrator fixes the request and sends it again. */
        char reason[sizeof b->reason];
        memcpy(reason, b->reason, sizeof reason);
        webhook_batch_clear(b);
        memcpy(b->reason, reason, sizeof reason);
    }
    return rc;
}

/* --- web chat ------------------------------------------------------------ */

bool webhook_parse_session(const char *s)
{
    size_t n = 0;
    for (; s[n] != '\0'; n++) {
        char c = s[n];
        if (!(isalnum((unsigned char)c) || c == '.' || c == '_' || c == '-') || n >= 128) {
            return false;
        }
    }
    return n > 0;
}

int webhook_parse_identity(const char *token, const char *secret, uint64_t now_ms, char *email,
                           size_t n, char *why, size_t whyn)
{
    const char *dot = strrchr(token, '.');
    if (secret == NULL || secret[0] == '\0') {
        snprintf(why, whyn, "identity tokens are not accepted (no --webchat-secret)");
        return -1;
    }
    unsigned char mac[SIG_SHA256_LEN], want[SIG_SHA256_LEN];
    if (dot == NULL || sig_hex_decode(dot + 1, strlen(dot + 1), mac, sizeof mac) != 0) {
        snprintf(why, whyn, "identity is not base64(payload).hex(hmac)");
        return -1;
    }
    unsigned char payload[2048];
    long len = sig_base64_decode(token, (size_t)(dot - token), payload, sizeof payload - 1);
    if (len <= 0) {
        snprintf(why, whyn, "identity payload is not base64 (or longer than 2 KB)");
        return -1;
    }
    if (sig_hmac_sha256(secret, strlen(secret), payload, (size_t)len, want) != 0
        || !sig_equal(mac, want, sizeof mac)) {
        snprintf(why, whyn, "identity signature does not match");
        return -1;
    }
    char err[200];
    cJSON *j = json_parse((const char *)payload, (size_t)len, err, sizeof err);
    const char *mail = webhook_parse_gets(j, "email");
    const cJSON *exp = webhook_parse_get(j, "exp");
    int rc = -1;
    if (mail == NULL || strchr(mail, '@') == NULL || strlen(mail) >= n || strlen(mail) > 254) {
        snprintf(why, whyn, "identity has no usable email");
    } else if (!cJSON_IsNumber(exp)) {
        snprintf(why, whyn, "identity has no exp");
    } else if (exp->valuedouble * 1000.0 < (double)now_ms) {
        snprintf(why, whyn, "identity expired");
    } else {
        size_t i = 0;
        for (; mail[i] != '\0'; i++) {
            email[i] = (char)tolower((unsigned char)mail[i]);
        }
        email[i] = '\0';
        rc = 0;
    }
    cJSON_Delete(j);
    return rc;
}

int webhook_parse_chat(struct webhook_batch *b, const char *body, size_t n, const char *secret)
{
    cJSON *root = webhook_parse_root(b, body, n);
    if (root == NULL) {
        return -1;
    }
    int rc = 0;
    const char *session = webhook_parse_gets(root, "session");
    const char *text = webhook_parse_gets(root, "text");
    const char *identity = webhook_parse_gets(root, "identity");
    const char *mid = webhook_parse_gets(root, "message_id");
    char handle[160], email[256], why[200], src[300], mail[300];
    if (session == NULL || !webhook_parse_session(session)) {
        rc = webhook_parse_fail(b, "session must be 1 to 128 of A-Z a-z 0-9 . _ -");
        goto done;
    }
    if (text == NULL || text[0] == '\0') {
        rc = webhook_parse_fail(b, "text is missing");
        goto done;
    }
    if (mid != NULL && (mid[0] == '\0' || strlen(mid) > 128)) {
        rc = webhook_parse_fail(b, "message_id must be 1 to 128 bytes");
        goto done;
    }
    const cJSON *ident = webhook_parse_get(root, "identity");
    if (ident != NULL && !cJSON_IsNull(ident) && identity == NULL) {
        rc = webhook_parse_fail(b, "identity must be a string");
        goto done;
    }
    snprintf(handle, sizeof handle, "webchat:%s", session);
    if (identity != NULL) {
        if (webhook_parse_identity(identity, secret, b->now, email, sizeof email, why, sizeof why) != 0) {
            webhook_parse_fail(b, "%s", why);
            rc = -2;
            goto done;
        }
        cJSON *ev = cJSON_CreateObject();
        cJSON *meta = cJSON_CreateObject();
        snprintf(src, sizeof src, "link:%s:%s", session, email);
        snprintf(mail, sizeof mail, "mailto:%s", email);
        webhook_parse_str(ev, "channel", "webchat");
        webhook_parse_str(ev, "dir", "event");
        webhook_parse_str(ev, "from", handle);
        webhook_parse_str(ev, "src_id", src);
        webhook_parse_str(meta, "event", "link");
        cJSON *hs = cJSON_AddArrayToObject(meta, "handles");
        cJSON_AddItemToArray(hs, cJSON_CreateString(handle));
        cJSON_AddItemToArray(hs, cJSON_CreateString(mail));
        webhook_parse_str(meta, "by", "website-login");
        cJSON_AddBoolToObject(meta, "verified", 1);
        cJSON_AddItemToObject(ev, "meta", meta);
        if (webhook_parse_add(b, ev, root) != 0) {
            rc = webhook_parse_fail(b, "out of memory");
            goto done;
        }
    }
    cJSON *env = cJSON_CreateObject();
    webhook_parse_str(env, "channel", "webchat");
    webhook_parse_str(env, "dir", "in");
    webhook_parse_str(env, "from", handle);
    webhook_parse_str(env, "text", text);
    if (mid != NULL) {
        snprintf(src, sizeof src, "%s:%s", session, mid);
        webhook_parse_str(env, "src_id", src);
    }
    const char *page = webhook_parse_gets(root, "page");
    if (page != NULL) {
        cJSON *meta = cJSON_CreateObject();
        webhook_parse_str(meta, "page", page);
        cJSON_AddItemToObject(env, "meta", meta);
    }
    size_t before = b->n;
    if (webhook_parse_add(b, env, root) != 0) {
        rc = webhook_parse_fail(b, "out of memory");
    } else if (b->n == before) {
        webhook_batch_clear(b);
        rc = webhook_parse_fail(b, "the message is not usable (too long, or bad fields)");
    }
done:
    cJSON_Delete(root);
    return rc;
}
