/* idenv — what an envelope says about identity (see idenv.h): the
 * customer's handle of a message, WhatsApp's channel facts, and the link,
 * close and other events, read from the envelope's fields and its meta
 * map. */
#include "idenv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idconv.h"
#include "iddb.h"
#include "idgraph.h"
#include "mp.h"
#include "utf8.h"

#define S_MAX_LINKED 8          /* handles one link event may name */

/* Positions r at the value of key in e's meta map; false when absent. */
static bool s_meta(const struct env *e, const char *key, struct mp_reader *r)
{
    size_t n;
    const void *p = env_raw(e, ENV_META, &n);
    if (p == NULL) {
        return false;
    }
    struct mp_val v;
    mp_reader_init(r, p, n);
    if (mp_read(r, &v) != 0 || v.type != MP_MAP) {
        return false;
    }
    size_t kl = strlen(key);
    for (uint32_t i = 0; i < v.n; i++) {
        struct mp_val k;
        if (mp_read(r, &k) != 0) {
            return false;
        }
        if (k.type == MP_STR && k.n == kl && memcmp(k.s, key, kl) == 0) {
            return true;
        }
        if (mp_skip(r) != 0) {
            return false;
        }
    }
    return false;
}

/* Copies a string value into out[n]: 1 done, -1 not a valid string. */
static int s_str_val(const struct mp_val *v, char *out, size_t n)
{
    if (v->type != MP_STR || v->n >= n || memchr(v->s, '\0', v->n) != NULL
        || !utf8_is_valid(v->s, v->n)) {
        return -1;
    }
    memcpy(out, v->s, v->n);
    out[v->n] = '\0';
    return 1;
}

/* meta.key as a string into out[n]: 1 found, 0 absent or nil, -1 not a
 * string (or too long). Unsigned integers are written in decimal. */
static int s_meta_str(const struct env *e, const char *key, char *out, size_t n)
{
    struct mp_reader r;
    struct mp_val v;
    if (!s_meta(e, key, &r) || mp_read(&r, &v) != 0 || v.type == MP_NIL) {
        return 0;
    }
    if (v.type == MP_UINT) {
        snprintf(out, n, "%llu", (unsigned long long)v.u);
        return 1;
    }
    return s_str_val(&v, out, n);
}

/* The customer's handle of a message: from (in), to (out); on api
 * envelopes meta.customer names the customer (a handle or a cus_ id). */
int idenv_message_handle(struct identity *id, const struct env *e, char h[HANDLE_MAX + 1],
                         enum env_key *key, bool *is_id, struct identity_result *r)
{
    *is_id = false;
    *key = ENV_NKEYS;
    const char *dir = env_get(e, ENV_DIR);
    const char *channel = env_get(e, ENV_CHANNEL);
    char why[160];
    if (strcmp(channel, "api") == 0) {
        char c[HANDLE_MAX + 1];
        int got = s_meta_str(e, "customer", c, sizeof c);
        if (got < 0) {
            return iddb_bad(r, "meta.customer", "not a string of at most %d bytes", HANDLE_MAX);
        }
        if (got > 0) {
            if (strncmp(c, "cus_", 4) == 0) {
                *is_id = true;
                snprintf(h, HANDLE_MAX + 1, "%s", c);
                return IDENTITY_OK;
            }
            if (handle_normalise(c, id->opts.country, h, HANDLE_MAX + 1, why, sizeof why) != 0) {
                return iddb_bad(r, "meta.customer", "'%.80s': %s", c, why);
            }
            return IDENTITY_OK;
        }
    }
    *key = strcmp(dir, "out") == 0 ? ENV_TO : ENV_FROM;
    const char *raw = env_get(e, *key);
    if (raw == NULL) {
        return iddb_bad(r, env_key_name(*key), "missing");
    }
    if (handle_normalise(raw, id->opts.country, h, HANDLE_MAX + 1, why, sizeof why) != 0) {
        return iddb_bad(r, env_key_name(*key), "'%.80s': %s", raw, why);
    }
    return IDENTITY_OK;
}

/* A channel fact: a and b are one person. Cheap when already known. */
static int s_fact(struct identity *id, const char *a, const char *b, const struct identity_prov *p)
{
    char c[IDENTITY_ID_LEN + 1];
    uint32_t flags = 0;
    int rc = iddb_customer_get(id, a, c, &flags);
    if (rc == IDENTITY_OK && (flags & IDDB_FACT)) {
        return IDENTITY_OK;
    }
    if (rc != IDENTITY_OK && rc != IDENTITY_NOT_FOUND) {
        return rc;
    }
    struct identity_result lr;
    memset(&lr, 0, sizeof lr);
    rc = idgraph_link(id, a, b, p, IDGRAPH_AUTO, false, &lr);
    if (rc == IDENTITY_CONFLICT) {
        rc = IDENTITY_OK;       /* refused, logged and counted */
    }
    if (rc == IDENTITY_OK) {
        iddb_cache_flag(id, a, IDDB_FACT);
    }
    return rc;
}

/* WhatsApp says: whatsapp:+N is the phone tel:+N; a business-scoped id
 * that comes with meta.wa_id is that phone's. */
static int s_whatsapp_facts(struct identity *id, const struct env *e, const char *h,
                            struct identity_result *r)
{
    struct identity_prov p = { "channel", "channel:whatsapp", NULL, true, e->ts,
                               env_get(e, ENV_ID) };
    const char *num;
    char tel[HANDLE_E164_MAX + 8], wa[HANDLE_E164_MAX + 16];
    if (handle_is_phone(h, "whatsapp", &num)) {
        snprintf(tel, sizeof tel, "tel:%s", num);
        return s_fact(id, h, tel, &p);
    }
    if (strncmp(h, "whatsapp:", 9) != 0) {
        return IDENTITY_OK;
    }
    char wa_id[64], plus[70], e164[HANDLE_E164_MAX], why[160];
    int got = s_meta_str(e, "wa_id", wa_id, sizeof wa_id);
    if (got == 0) {
        return IDENTITY_OK;     /* a business-scoped id alone: its own handle */
    }
    snprintf(plus, sizeof plus, "%s%s", wa_id[0] == '+' ? "" : "+", wa_id);
    if (got < 0 || handle_phone(plus, strlen(plus), 0, e164, why, sizeof why) != 0) {
        return iddb_bad(r, "meta.wa_id", "%s", got < 0 ? "not a phone number" : why);
    }
    snprintf(wa, sizeof wa, "whatsapp:%s", e164);
    snprintf(tel, sizeof tel, "tel:%s", e164);
    int rc = s_fact(id, h, wa, &p);
    return rc == IDENTITY_OK ? s_fact(id, wa, tel, &p) : rc;
}

int idenv_message(struct identity *id, struct env *e, char h[HANDLE_MAX + 1],
                  enum env_key *key, struct identity_result *r)
{
    bool is_id;
    int rc = idenv_message_handle(id, e, h, key, &is_id, r);
    if (rc != IDENTITY_OK) {
        return rc;
    }
    if (is_id) {
        rc = iddb_customer_live(id, h, r->customer);
        if (rc == IDENTITY_NOT_FOUND) {
            return iddb_bad(r, "meta.customer", "no customer %.40s", h);
        }
    } else {
        if (strcmp(env_get(e, ENV_CHANNEL), "whatsapp") == 0
            && strcmp(env_get(e, ENV_DIR), "in") == 0) {
            rc = s_whatsapp_facts(id, e, h, r);
        }
        if (rc == IDENTITY_OK) {
            rc = iddb_customer_ensure(id, h, e->ts, r->customer);
        }
    }
    return rc == IDENTITY_OK ? idconv_message(id, r->customer, e->ts, r->conversation) : rc;
}

/* Who an event says did it: meta.by, else from. */
static int s_event_by(const struct env *e, char *by, size_t n, char *reason, size_t rn,
                      struct identity_result *r)
{
    int got = s_meta_str(e, "by", by, n);
    if (got < 0) {
        return iddb_bad(r, "meta.by", "not a string of at most %zu bytes", n - 1);
    }
    if (got == 0) {
        snprintf(by, n, "%s", env_get(e, ENV_FROM) ? env_get(e, ENV_FROM) : "unknown");
    }
    got = s_meta_str(e, "reason", reason, rn);
    if (got < 0) {
        return iddb_bad(r, "meta.reason", "not a string of at most %zu bytes", rn - 1);
    }
    if (got == 0) {
        reason[0] = '\0';
    }
    return IDENTITY_OK;
}

/* meta.event = "link": meta.handles [h1, h2, ...] are one person. */
static int s_event_link(struct identity *id, struct env *e, struct identity_result *r)
{
    struct mp_reader mr;
    struct mp_val v;
    if (!s_meta(e, "handles", &mr) || mp_read(&mr, &v) != 0 || v.type != MP_ARRAY) {
        return iddb_bad(r, "meta.handles", "a link event needs an array of handles");
    }
    if (v.n < 2 || v.n > S_MAX_LINKED) {
        return iddb_bad(r, "meta.handles", "%u handles: a link names 2 to %d", v.n, S_MAX_LINKED);
    }
    char (*hs)[HANDLE_MAX + 1] = malloc(v.n * sizeof *hs);
    if (hs == NULL) {
        return IDENTITY_ERROR;
    }
    char raw[HANDLE_MAX + 1], why[160], field[40];
    int rc = IDENTITY_OK;
    for (uint32_t i = 0; i < v.n && rc == IDENTITY_OK; i++) {
        struct mp_val hv;
        snprintf(field, sizeof field, "meta.handles[%u]", i);
        if (mp_read(&mr, &hv) != 0 || s_str_val(&hv, raw, sizeof raw) < 0) {
            rc = iddb_bad(r, field, "not a string of at most %d bytes", HANDLE_MAX);
        } else if (handle_normalise(raw, id->opts.country, hs[i], sizeof hs[i], why, sizeof why) != 0) {
            rc = iddb_bad(r, field, "'%.80s': %s", raw, why);
        }
    }
    char by[ENV_MAX_SHORT + 1], reason[ENV_MAX_SHORT + 1];
    if (rc == IDENTITY_OK) {
        rc = s_event_by(e, by, sizeof by, reason, sizeof reason, r);
    }
    bool verified = false;
    if (rc == IDENTITY_OK && s_meta(e, "verified", &mr)) {
        struct mp_val b;
        if (mp_read(&mr, &b) != 0 || (b.type != MP_BOOL && b.type != MP_NIL)) {
            rc = iddb_bad(r, "meta.verified", "not true or false");
        }
        verified = b.type == MP_BOOL && b.b;
    }
    struct identity_prov p = { "event", by, reason[0] ? reason : NULL, verified, e->ts,
                               env_get(e, ENV_ID) };
    for (uint32_t i = 1; i < v.n && rc == IDENTITY_OK; i++) {
        struct identity_result lr;
        memset(&lr, 0, sizeof lr);
        rc = idgraph_link(id, hs[0], hs[i], &p, IDGRAPH_AUTO, false, &lr);
        if (rc == IDENTITY_CONFLICT) {
            rc = IDENTITY_OK;   /* refused, logged and counted; the event goes on */
        }
    }
    if (rc == IDENTITY_OK) {
        rc = iddb_customer_ensure(id, hs[0], e->ts, r->customer);
    }
    if (rc == IDENTITY_OK) {
        rc = idconv_current(id, r->customer, e->ts, r->conversation);
    }
    free(hs);
    return rc;
}

/* The customer an event names in meta.customer (a cus_ id or a handle),
 * without making one: r->customer stays "" when unknown. */
static int s_event_customer(struct identity *id, const struct env *e, struct identity_result *r,
                            bool *named)
{
    char c[HANDLE_MAX + 1], h[HANDLE_MAX + 1], why[160];
    int got = s_meta_str(e, "customer", c, sizeof c);
    *named = got != 0;
    if (got < 0) {
        return iddb_bad(r, "meta.customer", "not a string of at most %d bytes", HANDLE_MAX);
    }
    if (got == 0) {
        return IDENTITY_OK;
    }
    int rc;
    if (strncmp(c, "cus_", 4) == 0) {
        rc = iddb_customer_live(id, c, r->customer);
    } else if (handle_normalise(c, id->opts.country, h, sizeof h, why, sizeof why) != 0) {
        return iddb_bad(r, "meta.customer", "'%.80s': %s", c, why);
    } else {
        rc = iddb_customer_get(id, h, r->customer, NULL);
    }
    if (rc == IDENTITY_NOT_FOUND) {
        r->customer[0] = '\0';
        rc = IDENTITY_OK;
    }
    return rc;
}

/* meta.event = "close": ends the conversation named by meta.conversation,
 * or the open one of meta.conversation_of (a handle) or meta.customer. */
static int s_event_close(struct identity *id, struct env *e, struct identity_result *r)
{
    char by[ENV_MAX_SHORT + 1], reason[ENV_MAX_SHORT + 1];
    int rc = s_event_by(e, by, sizeof by, reason, sizeof reason, r);
    if (rc != IDENTITY_OK) {
        return rc;
    }
    char cnv[IDENTITY_ID_LEN + 1], h[HANDLE_MAX + 1], raw[HANDLE_MAX + 1], why[160];
    int got = s_meta_str(e, "conversation", cnv, sizeof cnv);
    if (got < 0) {
        return iddb_bad(r, "meta.conversation", "not a conversation id");
    }
    if (got > 0) {
        sqlite3_stmt *st = id->st[IDDB_Q_CNV_GET];
        iddb_text(st, 1, cnv);
        rc = iddb_row(id, IDDB_Q_CNV_GET);
        if (rc == IDENTITY_NOT_FOUND) {
            return IDENTITY_OK;     /* unknown (or forgotten): nothing to close */
        }
        if (rc != IDENTITY_OK) {
            return rc;
        }
        iddb_col(st, 0, r->customer, sizeof r->customer);
        sqlite3_reset(st);
        snprintf(r->conversation, sizeof r->conversation, "%s", cnv);
        rc = idconv_drop(id, r->customer);
        return rc == IDENTITY_OK
                   ? idconv_close(id, cnv, (int64_t)e->ts, 0, by, reason[0] ? reason : NULL) : rc;
    }
    got = s_meta_str(e, "conversation_of", raw, sizeof raw);
    if (got < 0) {
        return iddb_bad(r, "meta.conversation_of", "not a string of at most %d bytes", HANDLE_MAX);
    }
    bool named = got > 0;
    if (named) {
        if (handle_normalise(raw, id->opts.country, h, sizeof h, why, sizeof why) != 0) {
            return iddb_bad(r, "meta.conversation_of", "'%.80s': %s", raw, why);
        }
        rc = iddb_customer_get(id, h, r->customer, NULL);
        if (rc == IDENTITY_NOT_FOUND) {
            r->customer[0] = '\0';
            rc = IDENTITY_OK;
        }
    } else {
        rc = s_event_customer(id, e, r, &named);
    }
    if (rc != IDENTITY_OK) {
        return rc;
    }
    if (!named) {
        return iddb_bad(r, "meta", "a close event names conversation, conversation_of or customer");
    }
    if (r->customer[0] == '\0') {
        return IDENTITY_OK;
    }
    return idconv_end(id, r->customer, e->ts, by, reason[0] ? reason : NULL, r->conversation);
}

/* Any other event: the customer it names, or of its from or to handle when
 * known; never makes a customer. */
static int s_event_other(struct identity *id, struct env *e, struct identity_result *r)
{
    bool named;
    int rc = s_event_customer(id, e, r, &named);
    static const enum env_key keys[] = { ENV_FROM, ENV_TO };
    for (size_t i = 0; rc == IDENTITY_OK && !named && i < 2 && r->customer[0] == '\0'; i++) {
        const char *raw = env_get(e, keys[i]);
        char h[HANDLE_MAX + 1], why[160];
        if (raw == NULL || handle_normalise(raw, id->opts.country, h, sizeof h, why, sizeof why) != 0) {
            continue;
        }
        rc = iddb_customer_get(id, h, r->customer, NULL);
        if (rc == IDENTITY_NOT_FOUND) {
            r->customer[0] = '\0';
            rc = IDENTITY_OK;
        }
    }
    if (rc == IDENTITY_OK && r->customer[0] != '\0') {
        rc = idconv_current(id, r->customer, e->ts, r->conversation);
    }
    return rc;
}

int idenv_event(struct identity *id, struct env *e, struct identity_result *r)
{
    char ev[64];
    int got = s_meta_str(e, "event", ev, sizeof ev);
    if (got < 0) {
        return iddb_bad(r, "meta.event", "not a short string");
    }
    if (got > 0 && strcmp(ev, "link") == 0) {
        return s_event_link(id, e, r);
    }
    if (got > 0 && strcmp(ev, "close") == 0) {
        return s_event_close(id, e, r);
    }
    return s_event_other(id, e, r);
}
