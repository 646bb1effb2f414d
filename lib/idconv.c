/* idconv — conversations (see idconv.h): a customer's open conversation,
 * kept in a cache of hot customers so that a message costs no query, and
 * its latest activity written lazily, at most IDCONV_SLACK_MAX behind. */
#include "idconv.h"

#include <stdio.h>
#include <string.h>

#include "iddb.h"

/* The open conversation of customer c in the database: out ("" when none)
 * and its last ts. */
int idconv_open_of(struct identity *id, const char *c, char out[IDENTITY_ID_LEN + 1],
                   int64_t *last)
{
    out[0] = '\0';
    *last = 0;
    sqlite3_stmt *st = id->st[IDDB_Q_CNV_OPEN];
    iddb_text(st, 1, c);
    int rc = iddb_row(id, IDDB_Q_CNV_OPEN);
    if (rc == IDENTITY_OK) {
        iddb_col(st, 0, out, IDENTITY_ID_LEN + 1);
        *last = sqlite3_column_int64(st, 1);
        sqlite3_reset(st);
    }
    return rc == IDENTITY_NOT_FOUND ? IDENTITY_OK : rc;
}

/* Ends conversation cnv at ts; last is its latest activity as known here. */
int idconv_close(struct identity *id, const char *cnv, int64_t ts, int64_t last,
                 const char *by, const char *reason)
{
    sqlite3_stmt *st = id->st[IDDB_Q_CNV_CLOSE];
    iddb_text(st, 1, cnv);
    sqlite3_bind_int64(st, 2, ts);
    iddb_text(st, 3, by);
    iddb_text(st, 4, reason);
    sqlite3_bind_int64(st, 5, last);
    return iddb_run(id, IDDB_Q_CNV_CLOSE);
}

static bool s_idle(const struct identity *id, uint64_t ts, int64_t last)
{
    return (int64_t)ts - last > id->opts.idle_ms;
}

/* Writes a slot's latest activity to the database if it ran ahead. */
static int s_conv_save(struct identity *id, struct idconv_slot *sl)
{
    if (sl->cnv[0] == '\0' || sl->last <= sl->saved) {
        return IDENTITY_OK;
    }
    sqlite3_stmt *st = id->st[IDDB_Q_CNV_TOUCH];
    iddb_text(st, 1, sl->cnv);
    sqlite3_bind_int64(st, 2, sl->last);
    int rc = iddb_run(id, IDDB_Q_CNV_TOUCH);
    if (rc == IDENTITY_OK) {
        sl->saved = sl->last;
    }
    return rc;
}

static struct idconv_slot *s_conv_find(struct identity *id, const char *c, size_t n, uint64_t h,
                                       size_t *at)
{
    if (id->conv == NULL) {
        return NULL;
    }
    size_t w = iddb_window(h, id->conv_mask);
    for (size_t k = 0; k < IDDB_WINDOW; k++) {
        if (id->conv_tag[w + k] == h) {
            struct idconv_slot *sl = &id->conv[w + k];
            if (sl->gen == id->conv_gen && memcmp(sl->customer, c, n + 1) == 0) {
                *at = w + k;
                return sl;
            }
        }
    }
    return NULL;
}

/* The slot of customer c's open conversation, loaded when not cached. */
static int s_conv_load(struct identity *id, const char *c, struct idconv_slot **out)
{
    size_t n = strlen(c);
    uint64_t h = iddb_hash(c, n);
    size_t at = SIZE_MAX;
    struct idconv_slot *sl = s_conv_find(id, c, n, h, &at);
    if (sl != NULL) {
        *out = sl;
        return IDENTITY_OK;
    }
    if (id->conv == NULL) {
        sl = &id->scratch;
    } else {
        size_t w = iddb_window(h, id->conv_mask);
        for (size_t k = 0; at == SIZE_MAX && k < IDDB_WINDOW; k++) {
            if (id->conv_tag[w + k] == 0 || id->conv[w + k].gen != id->conv_gen) {
                at = w + k;
            }
        }
        if (at == SIZE_MAX) {
            at = w + id->conv_evict++ % IDDB_WINDOW;
            int rc = s_conv_save(id, &id->conv[at]);     /* evicted: written first */
            if (rc != IDENTITY_OK) {
                return rc;
            }
        }
        sl = &id->conv[at];
        id->conv_tag[at] = 0;
    }
    int64_t last;
    int rc = idconv_open_of(id, c, sl->cnv, &last);
    if (rc != IDENTITY_OK) {
        return rc;
    }
    if (id->conv != NULL) {
        id->conv_tag[at] = h;
    }
    sl->gen = id->conv_gen;
    snprintf(sl->customer, sizeof sl->customer, "%s", c);
    sl->last = sl->saved = last;
    *out = sl;
    return IDENTITY_OK;
}

/* Writes customer c's slot and forgets it (before the database changes
 * its conversations under it). */
int idconv_drop(struct identity *id, const char *c)
{
    size_t n = strlen(c), at;
    struct idconv_slot *sl = s_conv_find(id, c, n, iddb_hash(c, n), &at);
    if (sl == NULL) {
        return IDENTITY_OK;
    }
    int rc = s_conv_save(id, sl);
    id->conv_tag[at] = 0;
    return rc;
}

/* Forgets customer c's slot without writing (its envelope was undone). */
void idconv_forget(struct identity *id, const char *c)
{
    size_t n = strlen(c), at;
    if (s_conv_find(id, c, n, iddb_hash(c, n), &at) != NULL) {
        id->conv_tag[at] = 0;
    }
}

/* Forgets every slot without writing (the transaction was rolled back). */
void idconv_clear(struct identity *id)
{
    if (++id->conv_gen == 0) {
        id->conv_gen = 1;
        if (id->conv != NULL) {
            memset(id->conv_tag, 0, (id->conv_mask + 1) * sizeof *id->conv_tag);
        }
    }
}

/* Writes every slot that ran ahead of the database, and forgets them all. */
int idconv_save_all(struct identity *id)
{
    int rc = IDENTITY_OK;
    for (size_t i = 0; id->conv != NULL && i <= id->conv_mask && rc == IDENTITY_OK; i++) {
        if (id->conv_tag[i] != 0 && id->conv[i].gen == id->conv_gen) {
            rc = s_conv_save(id, &id->conv[i]);
        }
    }
    if (rc == IDENTITY_OK) {
        idconv_clear(id);
    }
    return rc;
}
/* A message of customer c at ts: continues the open conversation, or
 * closes an idle one and starts the next. */
int idconv_message(struct identity *id, const char *c, uint64_t ts,
                   char out[IDENTITY_ID_LEN + 1])
{
    struct idconv_slot *sl;
    int rc = s_conv_load(id, c, &sl);
    if (rc != IDENTITY_OK) {
        return rc;
    }
    if (sl->cnv[0] != '\0' && !s_idle(id, ts, sl->last)) {
        if ((int64_t)ts > sl->last) {
            sl->last = (int64_t)ts;
        }
        memcpy(out, sl->cnv, sizeof sl->cnv);
        return sl->last - sl->saved > id->slack_ms ? s_conv_save(id, sl) : IDENTITY_OK;
    }
    if (sl->cnv[0] != '\0') {
        rc = idconv_close(id, sl->cnv, sl->last + id->opts.idle_ms, sl->last, "identity", "idle");
        sl->cnv[0] = '\0';
        if (rc != IDENTITY_OK) {
            return rc;
        }
    }
    rc = iddb_new_id(id, "cnv_", ts, out);
    if (rc != IDENTITY_OK) {
        return rc;
    }
    sqlite3_stmt *st = id->st[IDDB_Q_CNV_NEW];
    iddb_text(st, 1, out);
    iddb_text(st, 2, c);
    sqlite3_bind_int64(st, 3, (int64_t)ts);
    rc = iddb_run(id, IDDB_Q_CNV_NEW);
    if (rc == IDENTITY_OK) {
        memcpy(sl->cnv, out, sizeof sl->cnv);
        sl->last = sl->saved = (int64_t)ts;
        id->counts.conversations++;
    }
    return rc;
}

/* The conversation an event at ts belongs to: the open one unless idle. */
int idconv_current(struct identity *id, const char *c, uint64_t ts,
                   char out[IDENTITY_ID_LEN + 1])
{
    struct idconv_slot *sl;
    out[0] = '\0';
    int rc = s_conv_load(id, c, &sl);
    if (rc == IDENTITY_OK && sl->cnv[0] != '\0' && !s_idle(id, ts, sl->last)) {
        memcpy(out, sl->cnv, sizeof sl->cnv);
    }
    return rc;
}

/* Ends customer c's open conversation (a close event); its id into out. */
int idconv_end(struct identity *id, const char *c, uint64_t ts, const char *by,
               const char *reason, char out[IDENTITY_ID_LEN + 1])
{
    struct idconv_slot *sl;
    out[0] = '\0';
    int rc = s_conv_load(id, c, &sl);
    if (rc != IDENTITY_OK || sl->cnv[0] == '\0') {
        return rc;
    }
    memcpy(out, sl->cnv, sizeof sl->cnv);
    sl->cnv[0] = '\0';
    return idconv_close(id, out, (int64_t)ts, sl->last, by, reason);
}
