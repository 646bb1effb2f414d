/* webhook_meta — Meta's webhooks: WhatsApp Cloud API and Messenger
 * (entry[].changes[].value and entry[].messaging[]); every message of every
 * entry and change becomes an envelope, statuses and deliveries become
 * receipt events. See webhook.h. */
#include "webhook.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* --- WhatsApp Cloud API -------------------------------------------------- */

/* True for a phone number as WhatsApp writes it: digits, maybe a '+'. */
static bool s_is_phone(const char *s)
{
    if (s == NULL) {
        return false;
    }
    s += *s == '+';
    if (*s == '\0') {
        return false;
    }
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9') {
            return false;
        }
    }
    return true;
}

/* The contact of a message: the one with its wa_id, or its user id. */
static const cJSON *s_wa_contact(const cJSON *contacts, const char *from, const char *user)
{
    const cJSON *c;
    cJSON_ArrayForEach(c, contacts) {
        const char *wa = webhook_parse_gets(c, "wa_id");
        const char *uid = webhook_parse_gets(c, "user_id");
        if ((from != NULL && wa != NULL && strcmp(wa, from) == 0)
            || (user != NULL && uid != NULL && strcmp(uid, user) == 0)) {
            return c;
        }
    }
    /* A message that names nobody: the contact, when there is only one. */
    bool anonymous = from == NULL && user == NULL;
    return anonymous && cJSON_GetArraySize(contacts) == 1 ? cJSON_GetArrayItem(contacts, 0) : NULL;
}

/* Text and attachments of one WhatsApp message by its type. */
static void s_wa_content(const cJSON *msg, const char *type, cJSON *env, cJSON *meta)
{
    static const char *const media[] = { "image", "video", "audio", "document", "sticker", "voice" };
    const cJSON *body = webhook_parse_get(msg, type);
    if (strcmp(type, "text") == 0) {
        webhook_parse_str(env, "text", webhook_parse_gets(body, "body"));
        return;
    }
    if (strcmp(type, "button") == 0) {
        webhook_parse_str(env, "text", webhook_parse_gets(body, "text"));
        webhook_parse_str(meta, "payload", webhook_parse_gets(body, "payload"));
        return;
    }
    if (strcmp(type, "interactive") == 0) {
        const cJSON *r = webhook_parse_get(body, "button_reply");
        r = r ? r : webhook_parse_get(body, "list_reply");
        webhook_parse_str(env, "text", webhook_parse_gets(r, "title"));
        webhook_parse_str(meta, "reply_id", webhook_parse_gets(r, "id"));
        if (r == NULL) {
            const cJSON *flow = webhook_parse_get(body, "nfm_reply");
            webhook_parse_str(env, "text", webhook_parse_gets(flow, "body"));
        }
        return;
    }
    for (size_t i = 0; i < sizeof media / sizeof media[0]; i++) {
        if (strcmp(type, media[i]) == 0) {
            webhook_parse_str(env, "text", webhook_parse_gets(body, "caption"));
            cJSON *a = cJSON_CreateObject();
            webhook_parse_str(a, "type", strcmp(type, "voice") == 0 ? "audio" : type);
            webhook_parse_str(a, "media_id", webhook_parse_gets(body, "id"));
            webhook_parse_str(a, "mime_type", webhook_parse_gets(body, "mime_type"));
            webhook_parse_str(a, "name", webhook_parse_gets(body, "filename"));
            webhook_parse_str(a, "sha256", webhook_parse_gets(body, "sha256"));
            cJSON *arr = cJSON_AddArrayToObject(env, "attachments");
            cJSON_AddItemToArray(arr, a);
            return;
        }
    }
    if (strcmp(type, "location") == 0) {
        const cJSON *lat = webhook_parse_get(body, "latitude");
        const cJSON *lon = webhook_parse_get(body, "longitude");
        if (cJSON_IsNumber(lat) && cJSON_IsNumber(lon)) {
            char geo[96];
            snprintf(geo, sizeof geo, "geo:%.7g,%.7g", lat->valuedouble, lon->valuedouble);
            cJSON *a = cJSON_CreateObject();
            webhook_parse_str(a, "type", "location");
            webhook_parse_str(a, "url", geo);
            webhook_parse_str(a, "name", webhook_parse_gets(body, "name"));
            cJSON_AddItemToArray(cJSON_AddArrayToObject(env, "attachments"), a);
        }
        const char *name = webhook_parse_gets(body, "name");
        const char *addr = webhook_parse_gets(body, "address");
        char text[600];
        snprintf(text, sizeof text, "%s%s%s", name ? name : "", name && addr ? ", " : "",
                 addr ? addr : "");
        webhook_parse_str(env, "text", text);
        return;
    }
    if (strcmp(type, "contacts") == 0) {
        struct buf t = { 0 };
        const cJSON *c;
        cJSON_ArrayForEach(c, webhook_parse_get(msg, "contacts")) {
            const char *name = webhook_parse_gets(webhook_parse_get(c, "name"), "formatted_name");
            const cJSON *ph = cJSON_GetArrayItem(webhook_parse_get(c, "phones"), 0);
            buf_printf(&t, "%s%s%s%s", t.len ? "\n" : "", name ? name : "", ph ? " " : "",
                       ph && webhook_parse_gets(ph, "phone") ? webhook_parse_gets(ph, "phone") : "");
        }
        webhook_parse_str(env, "text", t.data);
        buf_free(&t);
        return;
    }
    /* order, system, unsupported, ...: kept, with what WhatsApp says. */
    const cJSON *e0 = cJSON_GetArrayItem(webhook_parse_get(msg, "errors"), 0);
    webhook_parse_str(meta, "error", webhook_parse_gets(e0, "title"));
}

static int s_wa_message(struct webhook_batch *b, const cJSON *msg, const cJSON *value,
                        const char *to)
{
    const char *id = webhook_parse_gets(msg, "id");
    if (id == NULL || id[0] == '\0') {
        webhook_parse_reject(b, msg, "reason=\"a WhatsApp message without an id\"");
        return 0;
    }
    const char *type = webhook_parse_gets(msg, "type");
    type = type ? type : "unknown";
    const char *from = webhook_parse_gets(msg, "from");
    const char *user = webhook_parse_gets(msg, "from_user_id");
    user = user ? user : webhook_parse_gets(msg, "user_id");
    const cJSON *contact = s_wa_contact(webhook_parse_get(value, "contacts"), from, user);
    const char *wa_id = webhook_parse_gets(contact, "wa_id");
    wa_id = s_is_phone(wa_id) ? wa_id : s_is_phone(from) ? from : NULL;
    if (user == NULL) {
        user = webhook_parse_gets(contact, "user_id");
    }
    if (user == NULL && from != NULL && from[0] != '\0' && !s_is_phone(from)) {
        user = from;        /* a user id where the phone would be */
    }
    char handle[160];
    const char *h = webhook_parse_phone("whatsapp", wa_id, handle, sizeof handle);
    if (h == NULL && user != NULL && user[0] != '\0') {
        /* A business-scoped user id, no phone: the id as it is. */
        snprintf(handle, sizeof handle, "whatsapp:%s", user);
        h = handle;
    }
    if (h == NULL) {
        webhook_parse_reject(b, msg, "reason=\"a WhatsApp message without a sender\"");
        return 0;
    }
    bool reaction = strcmp(type, "reaction") == 0;
    cJSON *env = cJSON_CreateObject();
    cJSON *meta = cJSON_CreateObject();
    webhook_parse_str(env, "channel", "whatsapp");
    webhook_parse_str(env, "dir", reaction ? "event" : "in");
    webhook_parse_str(env, "from", h);
    webhook_parse_str(env, "to", to);
    webhook_parse_str(env, "src_id", id);
    if (reaction) {
        const cJSON *r = webhook_parse_get(msg, "reaction");
        webhook_parse_str(meta, "event", "reaction");
        webhook_parse_str(meta, "emoji", webhook_parse_gets(r, "emoji"));
        webhook_parse_str(meta, "message", webhook_parse_gets(r, "message_id"));
    } else {
        s_wa_content(msg, type, env, meta);
        if (webhook_parse_get(env, "text") == NULL && webhook_parse_get(env, "attachments") == NULL) {
            cJSON_AddStringToObject(env, "text", "");
        }
    }
    const cJSON *profile = webhook_parse_get(contact, "profile");
    const cJSON *metadata = webhook_parse_get(value, "metadata");
    webhook_parse_str(meta, "wa_id", wa_id);
    webhook_parse_str(meta, "user_id", user);
    webhook_parse_str(meta, "profile_name", webhook_parse_gets(profile, "name"));
    webhook_parse_str(meta, "phone_number_id", webhook_parse_gets(metadata, "phone_number_id"));
    webhook_parse_str(meta, "type", type);
    webhook_parse_str(meta, "context", webhook_parse_gets(webhook_parse_get(msg, "context"), "id"));
    cJSON_AddItemToObject(env, "meta", meta);
    return webhook_parse_add(b, env, msg);
}

static int s_wa_status(struct webhook_batch *b, const cJSON *st, const cJSON *value, const char *biz)
{
    const char *id = webhook_parse_gets(st, "id");
    const char *status = webhook_parse_gets(st, "status");
    if (id == NULL || status == NULL) {
        webhook_parse_reject(b, st, "reason=\"a WhatsApp status without id or status\"");
        return 0;
    }
    char src[600], to[160];
    snprintf(src, sizeof src, "%s:%s", id, status);
    const char *rcpt = webhook_parse_gets(st, "recipient_id");
    const char *h = webhook_parse_phone("whatsapp", rcpt, to, sizeof to);
    const char *ruser = webhook_parse_gets(st, "recipient_user_id");
    if (h == NULL && ruser != NULL) {
        snprintf(to, sizeof to, "whatsapp:%s", ruser);
        h = to;
    }
    cJSON *env = cJSON_CreateObject();
    cJSON *meta = cJSON_CreateObject();
    webhook_parse_str(env, "channel", "whatsapp");
    webhook_parse_str(env, "dir", "event");
    webhook_parse_str(env, "from", biz);
    webhook_parse_str(env, "to", h);
    webhook_parse_str(env, "src_id", src);
    webhook_parse_str(meta, "event", "receipt");
    webhook_parse_str(meta, "status", status);
    webhook_parse_str(meta, "message", id);
    const cJSON *metadata = webhook_parse_get(value, "metadata");
    webhook_parse_str(meta, "phone_number_id", webhook_parse_gets(metadata, "phone_number_id"));
    const cJSON *e0 = cJSON_GetArrayItem(webhook_parse_get(st, "errors"), 0);
    webhook_parse_str(meta, "error", webhook_parse_gets(e0, "title"));
    cJSON_AddItemToObject(env, "meta", meta);
    return webhook_parse_add(b, env, st);
}

/* The entry array of a Meta webhook whose object is `object`; NULL (the
 * request refused, with the reason) when the body is not one. *root is the
 * parsed document, for cJSON_Delete either way. */
static const cJSON *s_entries(struct webhook_batch *b, const char *body, size_t n, const char *object,
                              cJSON **root)
{
    *root = webhook_parse_root(b, body, n);
    if (*root == NULL) {
        return NULL;
    }
    const char *got = webhook_parse_gets(*root, "object");
    const cJSON *entries = webhook_parse_get(*root, "entry");
    if (got != NULL && strcmp(got, object) != 0) {
        webhook_parse_fail(b, "object is '%.60s', not %s", got, object);
        return NULL;
    }
    if (!cJSON_IsArray(entries)) {
        webhook_parse_fail(b, "no entry array");
        return NULL;
    }
    return entries;
}

int webhook_meta_whatsapp(struct webhook_batch *b, const char *body, size_t n)
{
    cJSON *root = NULL;
    const cJSON *entries = s_entries(b, body, n, "whatsapp_business_account", &root);
    if (entries == NULL) {
        cJSON_Delete(root);
        return -1;
    }
    int rc = 0;
    const cJSON *entry;
    cJSON_ArrayForEach(entry, entries) {
        const cJSON *change;
        cJSON_ArrayForEach(change, webhook_parse_get(entry, "changes")) {
            const char *field = webhook_parse_gets(change, "field");
            const cJSON *value = webhook_parse_get(change, "value");
            if ((field != NULL && strcmp(field, "messages") != 0) || !cJSON_IsObject(value)) {
                b->skipped++;
                continue;
            }
            char to[160];
            const cJSON *metadata = webhook_parse_get(value, "metadata");
            const char *display = webhook_parse_gets(metadata, "display_phone_number");
            const char *biz = webhook_parse_phone("whatsapp", display, to, sizeof to);
            const cJSON *item;
            cJSON_ArrayForEach(item, webhook_parse_get(value, "messages")) {
                if (rc == 0) {
                    rc = s_wa_message(b, item, value, biz);
                }
            }
            cJSON_ArrayForEach(item, webhook_parse_get(value, "statuses")) {
                if (rc == 0) {
                    rc = s_wa_status(b, item, value, biz);
                }
            }
        }
    }
    if (rc != 0) {
        webhook_parse_fail(b, "out of memory");
    }
    cJSON_Delete(root);
    return rc;
}

/* --- Messenger ----------------------------------------------------------- */

static int s_ms_message(struct webhook_batch *b, const cJSON *ev, const char *from, const char *to)
{
    const cJSON *m = webhook_parse_get(ev, "message");
    if (cJSON_IsTrue(webhook_parse_get(m, "is_echo"))) {
        b->skipped++;       /* our own message, sent back to us */
        return 0;
    }
    const char *mid = webhook_parse_gets(m, "mid");
    if (mid == NULL || mid[0] == '\0') {
        webhook_parse_reject(b, ev, "reason=\"a Messenger message without a mid\"");
        return 0;
    }
    cJSON *env = cJSON_CreateObject();
    cJSON *meta = cJSON_CreateObject();
    webhook_parse_str(env, "channel", "messenger");
    webhook_parse_str(env, "dir", "in");
    webhook_parse_str(env, "from", from);
    webhook_parse_str(env, "to", to);
    webhook_parse_str(env, "src_id", mid);
    webhook_parse_str(env, "text", webhook_parse_gets(m, "text"));
    const cJSON *att;
    cJSON *arr = NULL;
    cJSON_ArrayForEach(att, webhook_parse_get(m, "attachments")) {
        const cJSON *p = webhook_parse_get(att, "payload");
        cJSON *a = cJSON_CreateObject();
        webhook_parse_str(a, "type", webhook_parse_gets(att, "type"));
        webhook_parse_str(a, "url", webhook_parse_gets(p, "url"));
        const char *title = webhook_parse_gets(p, "title");
        webhook_parse_str(a, "name", title ? title : webhook_parse_gets(att, "title"));
        char sticker[32];
        webhook_parse_str(a, "sticker_id", webhook_parse_id(p, "sticker_id", sticker, sizeof sticker));
        arr = arr ? arr : cJSON_AddArrayToObject(env, "attachments");
        cJSON_AddItemToArray(arr, a);
    }
    if (webhook_parse_get(env, "text") == NULL && arr == NULL) {
        cJSON_AddStringToObject(env, "text", "");
    }
    webhook_parse_str(meta, "quick_reply", webhook_parse_gets(webhook_parse_get(m, "quick_reply"), "payload"));
    webhook_parse_str(meta, "reply_to", webhook_parse_gets(webhook_parse_get(m, "reply_to"), "mid"));
    cJSON_AddItemToObject(env, "meta", meta);
    return webhook_parse_add(b, env, ev);
}

static int s_ms_postback(struct webhook_batch *b, const cJSON *ev, const char *from, const char *to)
{
    const cJSON *p = webhook_parse_get(ev, "postback");
    char ts[32], src[300];
    const char *mid = webhook_parse_gets(p, "mid");
    if (mid == NULL) {
        /* Older postbacks carry no mid: the user and the time name it. */
        const char *when = webhook_parse_id(ev, "timestamp", ts, sizeof ts);
        snprintf(src, sizeof src, "postback:%s:%s", from, when ? when : "0");
        mid = src;
    }
    cJSON *env = cJSON_CreateObject();
    cJSON *meta = cJSON_CreateObject();
    webhook_parse_str(env, "channel", "messenger");
    webhook_parse_str(env, "dir", "in");
    webhook_parse_str(env, "from", from);
    webhook_parse_str(env, "to", to);
    webhook_parse_str(env, "src_id", mid);
    const char *title = webhook_parse_gets(p, "title");
    cJSON_AddStringToObject(env, "text", title ? title : "");
    webhook_parse_str(meta, "postback", webhook_parse_gets(p, "payload"));
    cJSON_AddItemToObject(env, "meta", meta);
    return webhook_parse_add(b, env, ev);
}

/* Delivery and read receipts of what the page sent: from the page, to the user. */
static int s_ms_receipt(struct webhook_batch *b, const cJSON *ev, const char *user, const char *page)
{
    const cJSON *d = webhook_parse_get(ev, "delivery");
    const cJSON *r = webhook_parse_get(ev, "read");
    char wm[32], src[400];
    const char *watermark = webhook_parse_id(d ? d : r, "watermark", wm, sizeof wm);
    const cJSON *mids = webhook_parse_get(d, "mids");
    int count = d && cJSON_GetArraySize(mids) > 0 ? cJSON_GetArraySize(mids) : 1;
    for (int i = 0; i < count; i++) {
        const cJSON *mi = d ? cJSON_GetArrayItem(mids, i) : NULL;
        const char *mid = cJSON_IsString(mi) ? mi->valuestring : NULL;
        if (mid != NULL) {
            snprintf(src, sizeof src, "%s:%s", mid, d ? "delivered" : "read");
        } else {
            snprintf(src, sizeof src, "%s:%s:%s", d ? "delivered" : "read", user, watermark ? watermark : "0");
        }
        cJSON *env = cJSON_CreateObject();
        cJSON *meta = cJSON_CreateObject();
        webhook_parse_str(env, "channel", "messenger");
        webhook_parse_str(env, "dir", "event");
        webhook_parse_str(env, "from", page);
        webhook_parse_str(env, "to", user);
        webhook_parse_str(env, "src_id", src);
        webhook_parse_str(meta, "event", "receipt");
        webhook_parse_str(meta, "status", d ? "delivered" : "read");
        webhook_parse_str(meta, "message", mid);
        webhook_parse_str(meta, "watermark", watermark);
        cJSON_AddItemToObject(env, "meta", meta);
        if (webhook_parse_add(b, env, ev) != 0) {
            return -1;
        }
    }
    return 0;
}

int webhook_meta_messenger(struct webhook_batch *b, const char *body, size_t n)
{
    cJSON *root = NULL;
    const cJSON *entries = s_entries(b, body, n, "page", &root);
    if (entries == NULL) {
        cJSON_Delete(root);
        return -1;
    }
    int rc = 0;
    const cJSON *entry;
    cJSON_ArrayForEach(entry, entries) {
        const cJSON *ev;
        cJSON_ArrayForEach(ev, webhook_parse_get(entry, "messaging")) {
            if (rc != 0) {
                break;
            }
            char sid[64], rid[64], from[96], to[96];
            if (webhook_parse_id(webhook_parse_get(ev, "sender"), "id", sid, sizeof sid) == NULL
                || webhook_parse_id(webhook_parse_get(ev, "recipient"), "id", rid, sizeof rid) == NULL) {
                webhook_parse_reject(b, ev, "reason=\"a Messenger event without sender or recipient\"");
                continue;
            }
            snprintf(from, sizeof from, "messenger:%s", sid);
            snprintf(to, sizeof to, "messenger:%s", rid);
            if (webhook_parse_get(ev, "message") != NULL) {
                rc = s_ms_message(b, ev, from, to);
            } else if (webhook_parse_get(ev, "postback") != NULL) {
                rc = s_ms_postback(b, ev, from, to);
            } else if (webhook_parse_get(ev, "delivery") != NULL || webhook_parse_get(ev, "read") != NULL) {
                rc = s_ms_receipt(b, ev, from, to);
            } else {
                b->skipped++;
            }
        }
    }
    if (rc != 0) {
        webhook_parse_fail(b, "out of memory");
    }
    cJSON_Delete(root);
    return rc;
}

