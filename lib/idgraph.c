/* idgraph — links between handles and what they make of customers (see
 * idgraph.h): a link that joins two customers merges them into the older
 * id, or is refused when both hold a different verified handle of one
 * scheme; an unlink splits a customer into the connected components of
 * the links that remain. */
#include "idgraph.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idconv.h"
#include "iddb.h"
#include "log.h"

/* -- links, merges, conflicts -------------------------------------------- */

static int s_strs_add(struct idgraph_strs *l, const char *s)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        char **v = realloc(l->v, cap * sizeof *v);
        if (v == NULL) {
            return -1;
        }
        l->v = v;
        l->cap = cap;
    }
    if ((l->v[l->n] = strdup(s)) == NULL) {
        return -1;
    }
    l->n++;
    return 0;
}

void idgraph_strs_free(struct idgraph_strs *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i]);
    }
    free(l->v);
    *l = (struct idgraph_strs){ 0 };
}

/* The handles of customer c that an active verified link names. */
int idgraph_verified(struct identity *id, const char *c, struct idgraph_strs *out)
{
    sqlite3_stmt *st = id->st[IDDB_Q_VERIFIED];
    iddb_text(st, 1, c);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const unsigned char *h = sqlite3_column_text(st, 0);
        if (h != NULL && s_strs_add(out, (const char *)h) != 0) {
            sqlite3_reset(st);
            return IDENTITY_ERROR;
        }
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? IDENTITY_OK : iddb_dberr(id, rc, iddb_sql(IDDB_Q_VERIFIED));
}

/* Would joining ca (holding a) and cb (holding b) put two different
 * verified handles of one scheme into one customer? scheme[n] names it. */
static int s_conflict(struct identity *id, const char *ca, const char *a, const char *cb,
                      const char *b, bool verified, bool *conflict, char *scheme, size_t n)
{
    struct idgraph_strs va = { 0 }, vb = { 0 };
    *conflict = false;
    int rc = idgraph_verified(id, ca, &va);
    if (rc == IDENTITY_OK) {
        rc = idgraph_verified(id, cb, &vb);
    }
    if (rc == IDENTITY_OK && verified && (s_strs_add(&va, a) != 0 || s_strs_add(&vb, b) != 0)) {
        rc = IDENTITY_ERROR;
    }
    for (size_t i = 0; rc == IDENTITY_OK && i < va.n && !*conflict; i++) {
        size_t sl = handle_scheme_len(va.v[i]);
        for (size_t j = 0; j < vb.n; j++) {
            if (handle_scheme_len(vb.v[j]) == sl && memcmp(va.v[i], vb.v[j], sl) == 0
                && strcmp(va.v[i], vb.v[j]) != 0) {
                *conflict = true;
                snprintf(scheme, n, "%.*s:", (int)sl, va.v[i]);
                break;
            }
        }
    }
    idgraph_strs_free(&va);
    idgraph_strs_free(&vb);
    return rc;
}

/* Writes the link lo-hi with provenance p in state; its id into *lid. */
static int s_link_put(struct identity *id, const char *lo, const char *hi, const char *state,
                      const struct identity_prov *p, int64_t *lid)
{
    sqlite3_stmt *st = id->st[IDDB_Q_LINK_PUT];
    iddb_text(st, 1, lo);
    iddb_text(st, 2, hi);
    iddb_text(st, 3, state);
    iddb_text(st, 4, p->kind);
    iddb_text(st, 5, p->by ? p->by : "unknown");
    sqlite3_bind_int(st, 6, p->verified ? 1 : 0);
    iddb_text(st, 7, p->reason);
    sqlite3_bind_int64(st, 8, (int64_t)p->ts);
    iddb_text(st, 9, p->envelope);
    int rc = iddb_row(id, IDDB_Q_LINK_PUT);
    if (rc == IDENTITY_OK) {
        *lid = sqlite3_column_int64(st, 0);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        rc = rc == SQLITE_DONE ? IDENTITY_OK : iddb_dberr(id, rc, iddb_sql(IDDB_Q_LINK_PUT));
    }
    return rc;
}

/* Joins customers ca and cb into the older id. */
static int s_merge(struct identity *id, const char *ca, const char *cb, struct identity_result *r)
{
    char keep[IDENTITY_ID_LEN + 1], gone[IDENTITY_ID_LEN + 1];
    bool a_first = strcmp(ca, cb) < 0;
    snprintf(keep, sizeof keep, "%s", a_first ? ca : cb);
    snprintf(gone, sizeof gone, "%s", a_first ? cb : ca);
    char ok[IDENTITY_ID_LEN + 1], og[IDENTITY_ID_LEN + 1];
    int64_t lk = 0, lg = 0;
    int rc = idconv_drop(id, keep);
    if (rc == IDENTITY_OK) {
        rc = idconv_drop(id, gone);
    }
    if (rc == IDENTITY_OK) {
        rc = idconv_open_of(id, keep, ok, &lk);
    }
    if (rc == IDENTITY_OK) {
        rc = idconv_open_of(id, gone, og, &lg);
    }
    static const enum iddb_q moves[] = { IDDB_Q_HANDLES_MOVE, IDDB_Q_CUS_MERGE, IDDB_Q_CNV_MOVE };
    for (size_t i = 0; rc == IDENTITY_OK && i < sizeof moves / sizeof moves[0]; i++) {
        iddb_text(id->st[moves[i]], 1, keep);
        iddb_text(id->st[moves[i]], 2, gone);
        rc = iddb_run(id, moves[i]);
    }
    if (rc == IDENTITY_OK && ok[0] != '\0' && og[0] != '\0') {
        /* One customer, one open conversation: the latest continues. */
        bool keep_ok = lk >= lg;
        char why[80];
        snprintf(why, sizeof why, "merged: continues in %s", keep_ok ? ok : og);
        rc = idconv_close(id, keep_ok ? og : ok, keep_ok ? lg : lk, 0, "identity", why);
    }
    if (rc != IDENTITY_OK) {
        return rc;
    }
    iddb_cache_clear(id);
    id->counts.merges++;
    log_msg(LOG_INFO, "merged %s into %s", gone, keep);
    snprintf(r->customer, sizeof r->customer, "%s", keep);
    snprintf(r->other, sizeof r->other, "%s", gone);
    r->merged = true;
    return IDENTITY_OK;
}

/* Links normalised handles a and b. Returns IDENTITY_OK (r->customer is
 * theirs), _CONFLICT (refused and recorded), or an error. */
int idgraph_link(struct identity *id, const char *a, const char *b, const struct identity_prov *p,
                 enum idgraph_mode mode, bool force, struct identity_result *r)
{
    if (strcmp(a, b) == 0) {
        return iddb_customer_ensure(id, a, p->ts, r->customer);
    }
    const char *lo = strcmp(a, b) < 0 ? a : b;
    const char *hi = lo == a ? b : a;
    sqlite3_stmt *st = id->st[IDDB_Q_LINK_GET];
    iddb_text(st, 1, lo);
    iddb_text(st, 2, hi);
    int rc = iddb_row(id, IDDB_Q_LINK_GET);
    int64_t lid = 0;
    char state[16] = "";
    bool verified = false;
    if (rc == IDENTITY_OK) {
        lid = sqlite3_column_int64(st, 0);
        iddb_col(st, 1, state, sizeof state);
        verified = sqlite3_column_int(st, 2) != 0;
        sqlite3_reset(st);
    } else if (rc != IDENTITY_NOT_FOUND) {
        return rc;
    }
    if (lid != 0 && strcmp(state, "active") == 0) {
        r->link = lid;
        if (p->verified && !verified) {
            rc = s_link_put(id, lo, hi, "active", p, &lid);     /* better provenance */
        }
        return rc == IDENTITY_OK ? iddb_customer_ensure(id, a, p->ts, r->customer) : rc;
    }
    if (lid != 0 && mode == IDGRAPH_AUTO) {
        /* Removed by a person, or refused: only a person brings it back. */
        r->link = lid;
        return iddb_customer_ensure(id, a, p->ts, r->customer);
    }
    char ca[IDENTITY_ID_LEN + 1], cb[IDENTITY_ID_LEN + 1];
    int ra = iddb_customer_get(id, a, ca, NULL);
    if (ra != IDENTITY_OK && ra != IDENTITY_NOT_FOUND) {
        return ra;
    }
    int rb = iddb_customer_get(id, b, cb, NULL);
    if (rb != IDENTITY_OK && rb != IDENTITY_NOT_FOUND) {
        return rb;
    }
    rc = IDENTITY_OK;
    if (ra == IDENTITY_NOT_FOUND && rb == IDENTITY_NOT_FOUND) {
        rc = iddb_customer_new(id, p->ts, r->customer);
        if (rc == IDENTITY_OK) {
            rc = iddb_handle_put(id, a, r->customer, p->ts);
        }
        if (rc == IDENTITY_OK) {
            rc = iddb_handle_put(id, b, r->customer, p->ts);
        }
    } else if (ra == IDENTITY_NOT_FOUND) {
        memcpy(r->customer, cb, sizeof cb);
        rc = iddb_handle_put(id, a, cb, p->ts);
    } else if (rb == IDENTITY_NOT_FOUND) {
        memcpy(r->customer, ca, sizeof ca);
        rc = iddb_handle_put(id, b, ca, p->ts);
    } else if (strcmp(ca, cb) == 0) {
        memcpy(r->customer, ca, sizeof ca);
    } else {
        bool conflict;
        char scheme[40] = "";
        rc = s_conflict(id, ca, a, cb, b, p->verified, &conflict, scheme, sizeof scheme);
        if (rc != IDENTITY_OK) {
            return rc;
        }
        if (conflict && !force) {
            memcpy(r->customer, ca, sizeof ca);
            memcpy(r->other, cb, sizeof cb);
            rc = s_link_put(id, lo, hi, "refused", p, &r->link);
            if (rc != IDENTITY_OK) {
                return rc;
            }
            id->counts.conflicts++;
            snprintf(r->reason, sizeof r->reason,
                     "%s and %s each hold a different verified %s handle", ca, cb, scheme);
            log_limited(&id->warn_limit, LOG_WARN,
                        "link refused: %s link=%lld by=\"%s\"%s%s", r->reason, (long long)r->link,
                        p->by ? p->by : "unknown", p->envelope ? " envelope=" : "",
                        p->envelope ? p->envelope : "");
            return IDENTITY_CONFLICT;
        }
        if (conflict) {
            log_msg(LOG_WARN, "forced merge of %s and %s (both hold a verified %s handle) by=\"%s\"",
                    ca, cb, scheme, p->by ? p->by : "unknown");
        }
        rc = s_merge(id, ca, cb, r);
    }
    if (rc == IDENTITY_OK) {
        rc = s_link_put(id, lo, hi, "active", p, &r->link);
    }
    if (rc == IDENTITY_OK) {
        id->counts.links++;
    }
    return rc;
}
/* -- unlink: split a customer along its remaining links ------------------ */

/* Union-find over the handles of one customer. */
struct s_graph {
    struct idgraph_strs h;        /* handles, in first_seen order */
    struct idgraph_strs origin;   /* their origins */
    size_t *parent;               /* union-find parents */
    size_t *by_name;              /* indices sorted by handle, for lookups */
};

static const struct idgraph_strs *s_sort_strs;

static int s_by_name_cmp(const void *x, const void *y)
{
    return strcmp(s_sort_strs->v[*(const size_t *)x], s_sort_strs->v[*(const size_t *)y]);
}

static size_t s_find_root(size_t *parent, size_t i)
{
    while (parent[i] != i) {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    return i;
}

static bool s_graph_index(const struct s_graph *g, const char *h, size_t *out)
{
    size_t lo = 0, hi = g->h.n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(g->h.v[g->by_name[mid]], h);
        if (c == 0) {
            *out = g->by_name[mid];
            return true;
        }
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return false;
}

static void s_graph_free(struct s_graph *g)
{
    idgraph_strs_free(&g->h);
    idgraph_strs_free(&g->origin);
    free(g->parent);
    free(g->by_name);
}

/* Loads customer c's handles and active links into g. */
static int s_graph_load(struct identity *id, const char *c, struct s_graph *g)
{
    sqlite3_stmt *st = id->st[IDDB_Q_HANDLES_OF];
    iddb_text(st, 1, c);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *h = (const char *)sqlite3_column_text(st, 0);
        const char *o = (const char *)sqlite3_column_text(st, 1);
        if (s_strs_add(&g->h, h ? h : "") != 0 || s_strs_add(&g->origin, o ? o : "") != 0) {
            sqlite3_reset(st);
            return IDENTITY_ERROR;
        }
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        return iddb_dberr(id, rc, iddb_sql(IDDB_Q_HANDLES_OF));
    }
    size_t n = g->h.n;
    g->parent = malloc((n ? n : 1) * sizeof *g->parent);
    g->by_name = malloc((n ? n : 1) * sizeof *g->by_name);
    if (g->parent == NULL || g->by_name == NULL) {
        return IDENTITY_ERROR;
    }
    for (size_t i = 0; i < n; i++) {
        g->parent[i] = i;
        g->by_name[i] = i;
    }
    s_sort_strs = &g->h;
    qsort(g->by_name, n, sizeof *g->by_name, s_by_name_cmp);
    st = id->st[IDDB_Q_LINKS_IN];
    iddb_text(st, 1, c);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        size_t ia, ib;
        const char *a = (const char *)sqlite3_column_text(st, 0);
        const char *b = (const char *)sqlite3_column_text(st, 1);
        if (a != NULL && b != NULL && s_graph_index(g, a, &ia) && s_graph_index(g, b, &ib)) {
            size_t ra = s_find_root(g->parent, ia), rb = s_find_root(g->parent, ib);
            if (ra != rb) {
                g->parent[ra > rb ? ra : rb] = ra > rb ? rb : ra;
            }
        }
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? IDENTITY_OK : iddb_dberr(id, rc, iddb_sql(IDDB_Q_LINKS_IN));
}

/* Splits customer c into the connected components of its active links. The
 * component with c's own earliest handle keeps c; the others take back the
 * id their handles first had (a customer merged into c), or a new one. */
int idgraph_split(struct identity *id, const char *c, uint64_t ts, struct identity_result *r)
{
    struct s_graph g = { 0 };
    char (*names)[IDENTITY_ID_LEN + 1] = NULL;
    size_t *comp_of_root = NULL;
    int rc = idconv_drop(id, c);
    if (rc == IDENTITY_OK) {
        rc = s_graph_load(id, c, &g);
    }
    size_t n = g.h.n;
    if (rc != IDENTITY_OK || n == 0) {
        goto done;
    }
    /* Number the components in the order of their earliest handle. */
    comp_of_root = malloc(n * sizeof *comp_of_root);
    names = calloc(n, sizeof *names);
    if (comp_of_root == NULL || names == NULL) {
        rc = IDENTITY_ERROR;
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        comp_of_root[i] = SIZE_MAX;
    }
    size_t ncomp = 0;
    size_t keeper = SIZE_MAX;
    for (size_t i = 0; i < n; i++) {
        size_t root = s_find_root(g.parent, i);
        if (comp_of_root[root] == SIZE_MAX) {
            comp_of_root[root] = ncomp++;
        }
        if (keeper == SIZE_MAX && strcmp(g.origin.v[i], c) == 0) {
            keeper = comp_of_root[root];
        }
    }
    r->parts = (int)ncomp;
    if (ncomp < 2) {
        goto done;
    }
    if (keeper == SIZE_MAX) {
        keeper = 0;
    }
    snprintf(names[keeper], sizeof names[keeper], "%s", c);
    for (size_t k = 0; k < ncomp && rc == IDENTITY_OK; k++) {
        if (k == keeper) {
            continue;
        }
        bool revived = false;
        for (size_t i = 0; i < n && !revived; i++) {
            const char *o = g.origin.v[i];
            if (comp_of_root[s_find_root(g.parent, i)] != k || strcmp(o, c) == 0) {
                continue;
            }
            bool taken = false;
            for (size_t j = 0; j < ncomp; j++) {
                taken = taken || strcmp(names[j], o) == 0;
            }
            char live[IDENTITY_ID_LEN + 1];
            if (!taken && iddb_customer_live(id, o, live) == IDENTITY_OK && strcmp(live, c) == 0) {
                snprintf(names[k], sizeof names[k], "%s", o);
                revived = true;
            }
        }
        if (revived) {
            sqlite3_stmt *st = id->st[IDDB_Q_CUS_SET_MERGED];
            iddb_text(st, 1, names[k]);
            sqlite3_bind_null(st, 2);
            rc = iddb_run(id, IDDB_Q_CUS_SET_MERGED);
            if (rc == IDENTITY_OK) {
                st = id->st[IDDB_Q_CNV_MOVE_ORIGIN];
                iddb_text(st, 1, names[k]);
                iddb_text(st, 2, c);
                rc = iddb_run(id, IDDB_Q_CNV_MOVE_ORIGIN);
            }
        } else {
            rc = iddb_customer_new(id, ts, names[k]);
        }
    }
    for (size_t i = 0; i < n && rc == IDENTITY_OK; i++) {
        const char *name = names[comp_of_root[s_find_root(g.parent, i)]];
        if (strcmp(name, c) != 0) {
            sqlite3_stmt *st = id->st[IDDB_Q_HANDLE_SET];
            iddb_text(st, 1, g.h.v[i]);
            iddb_text(st, 2, name);
            rc = iddb_run(id, IDDB_Q_HANDLE_SET);
        }
        /* An absorbed id now points at the part its handles went to. */
        const char *o = g.origin.v[i];
        bool is_name = false;
        for (size_t j = 0; j < ncomp; j++) {
            is_name = is_name || strcmp(names[j], o) == 0;
        }
        if (rc == IDENTITY_OK && !is_name) {
            sqlite3_stmt *st = id->st[IDDB_Q_CUS_SET_MERGED];
            iddb_text(st, 1, o);
            iddb_text(st, 2, name);
            rc = iddb_run(id, IDDB_Q_CUS_SET_MERGED);
        }
    }
    if (rc == IDENTITY_OK) {
        iddb_cache_clear(id);
        id->counts.splits++;
        log_msg(LOG_INFO, "split %s into %zu customers", c, ncomp);
    }
done:
    free(names);
    free(comp_of_root);
    s_graph_free(&g);
    return rc;
}
