/* webhook_twilio — Twilio's form-encoded webhooks: an SMS (or WhatsApp via
 * Twilio) message, or a status callback of one we sent. See webhook.h. */
#include "webhook.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- Twilio -------------------------------------------------------------- */

static int s_hex1(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Percent-decodes s[0..n) (and '+' as space) to out; returns its length, or -1. */
static long s_urldecode(const char *s, size_t n, char *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '+') {
            out[k++] = ' ';
        } else if (s[i] == '%') {
            if (i + 2 >= n) {
                return -1;
            }
            int hi = s_hex1(s[i + 1]);
            int lo = s_hex1(s[i + 2]);
            if (hi < 0 || lo < 0) {
                return -1;
            }
            out[k++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            out[k++] = s[i];
        }
    }
    out[k] = '\0';
    return (long)k;
}

int webhook_twilio_form(const char *body, size_t n, struct webhook_twilio_form *f)
{
    memset(f, 0, sizeof *f);
    size_t pairs = 1;
    for (size_t i = 0; i < n; i++) {
        pairs += body[i] == '&';
    }
    /* Decoded text is never longer; a NUL for each key and value. */
    f->mem = malloc(n + 2 * pairs + 1);
    f->p = calloc(pairs, sizeof *f->p);
    if (f->mem == NULL || f->p == NULL) {
        webhook_twilio_form_free(f);
        return -1;
    }
    char *w = f->mem;
    size_t i = 0;
    while (i < n) {
        size_t end = i;
        while (end < n && body[end] != '&') {
            end++;
        }
        if (end > i) {
            size_t eq = i;
            while (eq < end && body[eq] != '=') {
                eq++;
            }
            long kl = s_urldecode(body + i, eq - i, w);
            if (kl < 0) {
                webhook_twilio_form_free(f);
                return -1;
            }
            f->p[f->n].key = w;
            w += kl + 1;
            long vl = eq < end ? s_urldecode(body + eq + 1, end - eq - 1, w) : s_urldecode("", 0, w);
            if (vl < 0 || strlen(f->p[f->n].key) != (size_t)kl || strlen(w) != (size_t)vl) {
                webhook_twilio_form_free(f);     /* bad escapes, or a NUL inside */
                return -1;
            }
            f->p[f->n].value = w;
            w += vl + 1;
            f->n++;
        }
        i = end + 1;
    }
    return 0;
}

void webhook_twilio_form_free(struct webhook_twilio_form *f)
{
    free(f->p);
    free(f->mem);
    memset(f, 0, sizeof *f);
}

const char *webhook_twilio_get(const struct webhook_twilio_form *f, const char *key)
{
    for (size_t i = 0; i < f->n; i++) {
        if (strcmp(f->p[i].key, key) == 0) {
            return f->p[i].value;
        }
    }
    return NULL;
}

/* tel:+E164 from Twilio's From/To, or whatsapp:+E164 for WhatsApp via Twilio. */
static const char *s_tw_handle(const char *v, bool *whatsapp, char *out, size_t n)
{
    if (v == NULL || v[0] == '\0') {
        return NULL;
    }
    if (strncmp(v, "whatsapp:", 9) == 0) {
        *whatsapp = true;
        return webhook_parse_phone("whatsapp", v + 9, out, n);
    }
    if (v[0] == '+') {
        return webhook_parse_phone("tel", v, out, n);
    }
    /* Short codes and alphanumeric senders: as given. */
    snprintf(out, n, "tel:%s", v);
    return out;
}

int webhook_twilio_parse(struct webhook_batch *b, const struct webhook_twilio_form *f)
{
    const char *sid = webhook_twilio_get(f, "MessageSid");
    sid = sid ? sid : webhook_twilio_get(f, "SmsSid");
    if (sid == NULL || sid[0] == '\0') {
        return webhook_parse_fail(b, "no MessageSid");
    }
    bool wa = false;
    char from[160], to[160];
    const char *hf = s_tw_handle(webhook_twilio_get(f, "From"), &wa, from, sizeof from);
    const char *ht = s_tw_handle(webhook_twilio_get(f, "To"), &wa, to, sizeof to);
    const char *body = webhook_twilio_get(f, "Body");
    const char *status = webhook_twilio_get(f, "MessageStatus");
    cJSON *env = cJSON_CreateObject();
    cJSON *meta = cJSON_CreateObject();
    webhook_parse_str(env, "channel", wa ? "whatsapp" : "sms");
    if (body == NULL && status != NULL) {
        /* A status callback of a message we sent. */
        char src[200];
        snprintf(src, sizeof src, "%s:%s", sid, status);
        webhook_parse_str(env, "dir", "event");
        webhook_parse_str(env, "from", hf);
        webhook_parse_str(env, "to", ht);
        webhook_parse_str(env, "src_id", src);
        webhook_parse_str(meta, "event", "receipt");
        webhook_parse_str(meta, "status", status);
        webhook_parse_str(meta, "message", sid);
        webhook_parse_str(meta, "error", webhook_twilio_get(f, "ErrorCode"));
    } else {
        if (hf == NULL) {
            cJSON_Delete(env);
            cJSON_Delete(meta);
            return webhook_parse_fail(b, "no From");
        }
        webhook_parse_str(env, "dir", "in");
        webhook_parse_str(env, "from", hf);
        webhook_parse_str(env, "to", ht);
        webhook_parse_str(env, "src_id", sid);
        cJSON_AddStringToObject(env, "text", body ? body : "");
        const char *nm = webhook_twilio_get(f, "NumMedia");
        long nmedia = nm ? strtol(nm, NULL, 10) : 0;
        int media = nmedia < 0 ? 0 : nmedia > 10 ? 10 : (int)nmedia;
        cJSON *arr = NULL;
        for (int i = 0; i < media; i++) {
            char k[32];
            snprintf(k, sizeof k, "MediaUrl%d", i);
            const char *url = webhook_twilio_get(f, k);
            snprintf(k, sizeof k, "MediaContentType%d", i);
            const char *ct = webhook_twilio_get(f, k);
            if (url == NULL) {
                continue;
            }
            cJSON *a = cJSON_CreateObject();
            char type[32];
            snprintf(type, sizeof type, "%s", ct && strncmp(ct, "image/", 6) == 0 ? "image"
                     : ct && strncmp(ct, "video/", 6) == 0 ? "video"
                     : ct && strncmp(ct, "audio/", 6) == 0 ? "audio" : "document");
            webhook_parse_str(a, "type", type);
            webhook_parse_str(a, "url", url);
            webhook_parse_str(a, "mime_type", ct);
            arr = arr ? arr : cJSON_AddArrayToObject(env, "attachments");
            cJSON_AddItemToArray(arr, a);
        }
        webhook_parse_str(meta, "num_segments", webhook_twilio_get(f, "NumSegments"));
        webhook_parse_str(meta, "profile_name", webhook_twilio_get(f, "ProfileName"));
    }
    webhook_parse_str(meta, "account_sid", webhook_twilio_get(f, "AccountSid"));
    cJSON_AddItemToObject(env, "meta", meta);
    /* A form has no item JSON: a refusal shows the envelope's fields. */
    cJSON *copy = cJSON_Duplicate(env, 1);
    int rc = webhook_parse_add(b, env, copy);
    cJSON_Delete(copy);
    if (rc != 0) {
        return webhook_parse_fail(b, "out of memory");
    }
    if (b->n == 0) {
        return webhook_parse_fail(b, "the message is not usable (bad UTF-8 or fields)");
    }
    return 0;
}

