/* kb — the knowledge base: article parsing, import into sqlite FTS5,
 * search, and the omni-kb command line; see kb.h. */
#include "kb.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include <sqlite3.h>

#include "log.h"
#include "opt.h"
#include "utf8.h"

#define EXIT_USAGE 64           /* bad command line */
#define EXIT_DATAERR 65         /* some articles were refused */
#define EXIT_NOINPUT 66         /* the directory or database is not there */
#define EXIT_UNAVAILABLE 69     /* the database failed */
#define MAX_FILE (1u << 20)     /* bytes of one article file */
#define MAX_TERM 40             /* bytes of one query word */

/* bm25 weights of the FTS5 columns, in table order: slug, lang and file
 * are not indexed; a hit in a question variant counts four times one in
 * the answer's body, the title three times, a tag twice. */
#define BM25_ARGS "0.0, 0.0, 0.0, 3.0, 4.0, 2.0, 1.0"

static const char s_schema[] =
    "CREATE TABLE IF NOT EXISTS kb_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);\n"
    "CREATE VIRTUAL TABLE IF NOT EXISTS articles_fts USING fts5("
    " slug UNINDEXED, lang UNINDEXED, file UNINDEXED, title, questions, tags, answer,"
    " tokenize='unicode61 remove_diacritics 2');\n";

/* A word of the index's vocabulary, for spelling correction. */
struct kb_term {
    char *text;                 /* the folded term */
    int docs;                   /* articles that have it */
    int len;                    /* strlen(text) */
};

struct kb {
    sqlite3 *db;                /* the database */
    bool write;                 /* opened for import */
    sqlite3_stmt *search;       /* the ranked search */
    sqlite3_stmt *get;          /* one article by rowid */
    struct kb_term *vocab;      /* the index's terms, sorted */
    size_t nvocab;              /* entries in vocab */
    int64_t data_version;       /* PRAGMA data_version when vocab was loaded */
};

/* Words too common in questions to tell articles apart: Portuguese and
 * English function words, greetings and politeness, all folded. "nao" and
 * "cade" are kept on purpose (not arrived, where is it). */
static const char *const s_stop[] = {
    /* Portuguese */
    "a", "o", "as", "os", "um", "uma", "uns", "umas", "de", "do", "da", "dos", "das", "dum",
    "duma", "em", "no", "na", "nos", "nas", "num", "numa", "por", "pelo", "pela", "pelos",
    "pelas", "pra", "pro", "pras", "pros", "para", "com", "e", "ou", "que", "q", "se", "me",
    "te", "lhe", "eu", "tu", "voce", "voces", "vc", "vcs", "ce", "ele", "ela", "eles", "elas",
    "meu", "minha", "meus", "minhas", "seu", "sua", "seus", "suas", "teu", "tua", "esse",
    "essa", "isso", "este", "esta", "isto", "aquele", "aquela", "aquilo", "ai", "aqui", "la",
    "ja", "so", "tambem", "tb", "tbm", "mais", "muito", "muita", "bem", "entao", "ate",
    "sobre", "ao", "aos", "eh", "era", "foi", "ser", "sou", "sao", "estou", "estao", "tem",
    "ter", "tenho", "temos", "ha", "vai", "vou", "queria", "gostaria", "quero", "preciso",
    "precisava", "posso", "pode", "podem", "poderia", "consigo", "consegue", "fazer", "faco",
    "faz", "saber", "sei", "favor", "pf", "pfv", "pls", "oi", "ola", "ei", "opa", "bom", "boa",
    "dia", "tarde", "noite", "obrigado", "obrigada", "obg", "obgd", "brigado", "valeu", "vlw",
    "blz", "beleza", "tudo", "td", "ok", "ah", "hm", "hum", "gente", "pessoal", "como",
    "qual", "quais", "quando", "onde", "quanto", "quanta", "quantos", "quantas", "porque",
    "pq", "oque", "ainda", "sim", "mesmo", "outro", "outra", "cada", "todo", "toda", "todos",
    "algum", "alguma", "nenhum", "qualquer", "coisa", "dizer", "mim", "comigo", "agora",
    "estava", "fiz", "feito", "ta", "to", "sera", "seria", "tenha", "ne", "fica",
    /* English */
    "the", "an", "is", "are", "was", "were", "be", "been", "am", "does", "did", "you",
    "your", "yours", "i", "im", "my", "we", "our", "us", "they", "their", "it", "its", "this",
    "that", "these", "those", "of", "in", "on", "at", "for", "from", "with", "and", "or",
    "but", "if", "can", "could", "would", "should", "will", "shall", "may", "might", "must",
    "how", "what", "when", "where", "which", "who", "why", "there", "here", "have", "has",
    "had", "get", "got", "want", "need", "like", "know", "please", "thanks", "thank", "hi",
    "hello", "hey", "okay", "some", "any", "much", "many", "just", "also", "about", "by",
    "not", "dont", "didnt", "doesnt", "ive", "id", "good", "morning", "afternoon",
    "evening", "s", "t",
};

/* Endings cut to reach a stem matched as a prefix, longest first. */
static const char *const s_suffixes[] = {
    "amentos", "imentos", "amento", "imento", "adoras", "adores", "acoes", "icoes", "mente",
    "adora", "aveis", "iveis", "acao", "icao", "coes", "avel", "ivel", "ando", "endo",
    "indo", "aram", "eram", "iram", "avam", "ados", "adas", "idos", "idas", "cao", "oes",
    "ado", "ada", "ido", "ida", "ing", "ies", "ar", "er", "ir", "am", "em", "as", "es", "os",
    "is", "ed", "ao", "a", "e", "o", "s", "y",
};

#define MIN_STEM 4              /* shortest stem kept; shorter words match exactly */

/* --- folding and words ------------------------------------------------- */

/* The letter an accented Latin-1 letter (second byte after 0xC3) folds
 * to, or 0. */
static char s_fold_c3(unsigned char b)
{
    static const char map[64] = {
        'a', 'a', 'a', 'a', 'a', 'a', 0, 'c', 'e', 'e', 'e', 'e', 'i', 'i', 'i', 'i',
        0, 'n', 'o', 'o', 'o', 'o', 'o', 0, 0, 'u', 'u', 'u', 'u', 'y', 0, 0,
        'a', 'a', 'a', 'a', 'a', 'a', 0, 'c', 'e', 'e', 'e', 'e', 'i', 'i', 'i', 'i',
        0, 'n', 'o', 'o', 'o', 'o', 'o', 0, 0, 'u', 'u', 'u', 'u', 'y', 0, 'y',
    };
    if (b < 0x80 || b > 0xBF) {
        return 0;
    }
    return map[b - 0x80];
}

void kb_fold(const char *s, char *out)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t k = 0;
    while (*p != '\0') {
        if (*p < 0x80) {
            out[k++] = (char)tolower(*p);
            p++;
            continue;
        }
        char c = 0;
        if (*p == 0xC3 && p[1] != '\0') {
            c = s_fold_c3(p[1]);
        }
        out[k++] = c != 0 ? c : ' ';
        /* Skip the rest of the sequence. */
        p++;
        while ((*p & 0xC0) == 0x80) {
            p++;
        }
    }
    out[k] = '\0';
}

static bool s_is_stop(const char *w)
{
    for (size_t i = 0; i < sizeof s_stop / sizeof s_stop[0]; i++) {
        if (strcmp(s_stop[i], w) == 0) {
            return true;
        }
    }
    return false;
}

/* Cuts w (folded) to its stem in place; returns its length. */
static size_t s_stem(char *w)
{
    size_t n = strlen(w);
    for (size_t i = 0; i < sizeof s_suffixes / sizeof s_suffixes[0]; i++) {
        size_t sl = strlen(s_suffixes[i]);
        if (n >= sl + MIN_STEM && memcmp(w + n - sl, s_suffixes[i], sl) == 0) {
            w[n - sl] = '\0';
            return n - sl;
        }
    }
    return n;
}

static bool s_all_digits(const char *w)
{
    for (; *w != '\0'; w++) {
        if (!isdigit((unsigned char)*w)) {
            return false;
        }
    }
    return true;
}

/* --- vocabulary and spelling ---------------------------------------- */

static void s_vocab_free(struct kb *kb)
{
    for (size_t i = 0; i < kb->nvocab; i++) {
        free(kb->vocab[i].text);
    }
    free(kb->vocab);
    kb->vocab = NULL;
    kb->nvocab = 0;
}

static int64_t s_data_version(sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    if (sqlite3_prepare_v2(db, "PRAGMA data_version", -1, &st, NULL) == SQLITE_OK
        && sqlite3_step(st) == SQLITE_ROW) {
        v = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    return v;
}

/* Loads the index's terms (sorted by the vocabulary table). */
static int s_vocab_load(struct kb *kb)
{
    sqlite3_stmt *st = NULL;
    int rc = -1;
    s_vocab_free(kb);
    kb->data_version = s_data_version(kb->db);
    if (sqlite3_exec(kb->db, "CREATE VIRTUAL TABLE IF NOT EXISTS temp.kb_vocab "
                             "USING fts5vocab(main, articles_fts, row)", NULL, NULL, NULL) != SQLITE_OK
        || sqlite3_prepare_v2(kb->db, "SELECT term, doc FROM temp.kb_vocab ORDER BY term", -1, &st,
                              NULL) != SQLITE_OK) {
        goto done;
    }
    size_t cap = 0;
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        const char *t = (const char *)sqlite3_column_text(st, 0);
        if (t == NULL) {
            continue;
        }
        if (kb->nvocab == cap) {
            size_t ncap = cap ? cap * 2 : 1024;
            struct kb_term *nv = realloc(kb->vocab, ncap * sizeof *nv);
            if (nv == NULL) {
                goto done;
            }
            kb->vocab = nv;
            cap = ncap;
        }
        struct kb_term *term = &kb->vocab[kb->nvocab];
        term->text = strdup(t);
        if (term->text == NULL) {
            goto done;
        }
        term->len = (int)strlen(t);
        term->docs = sqlite3_column_int(st, 1);
        kb->nvocab++;
    }
    rc = step == SQLITE_DONE ? 0 : -1;
done:
    sqlite3_finalize(st);
    return rc;
}

/* True when some term of the vocabulary starts with prefix (of length n). */
static bool s_vocab_has_prefix(const struct kb *kb, const char *prefix, size_t n)
{
    size_t lo = 0;
    size_t hi = kb->nvocab;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strncmp(kb->vocab[mid].text, prefix, n) < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo < kb->nvocab && strncmp(kb->vocab[lo].text, prefix, n) == 0;
}

/* Edit distance with adjacent transpositions (optimal string alignment),
 * giving up above max. */
static int s_distance(const char *a, int la, const char *b, int lb, int max)
{
    int d[MAX_TERM + 1][MAX_TERM + 1];
    if (la > MAX_TERM || lb > MAX_TERM || abs(la - lb) > max) {
        return max + 1;
    }
    for (int i = 0; i <= la; i++) {
        d[i][0] = i;
    }
    for (int j = 0; j <= lb; j++) {
        d[0][j] = j;
    }
    for (int i = 1; i <= la; i++) {
        int row_min = max + 1;
        for (int j = 1; j <= lb; j++) {
            int cost = a[i - 1] != b[j - 1];
            int v = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < v) {
                v = d[i][j - 1] + 1;
            }
            if (d[i - 1][j - 1] + cost < v) {
                v = d[i - 1][j - 1] + cost;
            }
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]
                && d[i - 2][j - 2] + 1 < v) {
                v = d[i - 2][j - 2] + 1;
            }
            d[i][j] = v;
            if (v < row_min) {
                row_min = v;
            }
        }
        if (row_min > max) {
            return max + 1;
        }
    }
    return d[la][lb];
}

/* Replaces w (folded, unknown to the index) with the nearest term of the
 * vocabulary within one edit (two for long words); keeps w when none. */
static void s_correct(const struct kb *kb, char *w)
{
    int n = (int)strlen(w);
    int max = n >= 9 ? 2 : 1;
    const struct kb_term *best = NULL;
    int best_d = max + 1;
    for (size_t i = 0; i < kb->nvocab; i++) {
        const struct kb_term *t = &kb->vocab[i];
        /* Typos seldom hit the first letter; names ("Campinas") would
         * otherwise turn into words of the KB. */
        if (abs(t->len - n) > max || t->len < 4 || t->text[0] != w[0]) {
            continue;
        }
        int d = s_distance(w, n, t->text, t->len, max);
        if (d < best_d || (d == best_d && best != NULL && t->docs > best->docs)) {
            best = t;
            best_d = d;
        }
    }
    if (best != NULL && best_d <= max && best->len <= MAX_TERM) {
        memcpy(w, best->text, (size_t)best->len + 1);
    }
}

/* True when w is a term of the vocabulary. */
static bool s_vocab_has(const struct kb *kb, const char *w)
{
    size_t n = strlen(w);
    return s_vocab_has_prefix(kb, w, n + 1);
}

/* The terms of one query being built. */
struct kb_terms {
    char t[KB_MAX_TERMS][MAX_TERM + 4];     /* "stem"* or "word", quoted */
    int n;                                  /* entries used */
};

/* Adds word w (folded, a stem unless exact) to the terms, once. */
static void s_add_term(struct kb_terms *terms, const char *w, bool prefix)
{
    char term[MAX_TERM + 4];
    if (terms->n >= KB_MAX_TERMS || strlen(w) > MAX_TERM) {
        return;
    }
    snprintf(term, sizeof term, "\"%s\"%s", w, prefix ? "*" : "");
    for (int i = 0; i < terms->n; i++) {
        if (strcmp(terms->t[i], term) == 0) {
            return;
        }
    }
    memcpy(terms->t[terms->n++], term, strlen(term) + 1);
}

/* Adds one word of the text: a stem matched as a prefix; a word the index
 * does not know is corrected, or split in two words it knows ("airfryer"). */
static void s_add_word(const struct kb *kb, char *w, struct kb_terms *terms)
{
    size_t len = strlen(w);
    bool digits = s_all_digits(w);
    if ((digits && len > 3) || (!digits && len < 2) || s_is_stop(w)) {
        return;
    }
    if (digits || len < MIN_STEM) {
        s_add_term(terms, w, false);
        return;
    }
    char stem[MAX_TERM + 2];
    memcpy(stem, w, len + 1);
    size_t sl = s_stem(stem);
    if (kb->nvocab == 0 || len < 5 || s_vocab_has_prefix(kb, stem, sl)) {
        s_add_term(terms, stem, true);
        return;
    }
    for (size_t cut = 3; cut + 3 <= len; cut++) {
        char a[MAX_TERM + 2];
        memcpy(a, w, cut);
        a[cut] = '\0';
        if (s_vocab_has(kb, a) && s_vocab_has(kb, w + cut)) {
            s_add_term(terms, a, false);
            s_add_term(terms, w + cut, false);
            return;
        }
    }
    s_correct(kb, w);
    memcpy(stem, w, strlen(w) + 1);
    s_stem(stem);
    s_add_term(terms, stem, true);
}

/* Builds the FTS5 query for text into q: the kept words, each a quoted
 * term or a stem prefix, OR-ed. Returns the number of terms. */
static int s_build_query(const struct kb *kb, const char *text, struct buf *q)
{
    buf_reset(q);
    size_t tn = strlen(text);
    char *folded = malloc(tn + 1);
    struct kb_terms *terms = malloc(sizeof *terms);
    if (folded == NULL || terms == NULL) {
        free(folded);
        free(terms);
        return -1;
    }
    kb_fold(text, folded);
    terms->n = 0;
    char *p = folded;
    while (*p != '\0' && terms->n < KB_MAX_TERMS) {
        while (*p != '\0' && !isalnum((unsigned char)*p)) {
            p++;
        }
        char *start = p;
        while (isalnum((unsigned char)*p)) {
            p++;
        }
        size_t len = (size_t)(p - start);
        if (len == 0 || len > MAX_TERM) {
            continue;
        }
        char w[MAX_TERM + 2];
        memcpy(w, start, len);
        w[len] = '\0';
        s_add_word(kb, w, terms);
    }
    for (int i = 0; i < terms->n; i++) {
        buf_printf(q, "%s%s", i ? " OR " : "", terms->t[i]);
    }
    int n = terms->n;
    free(terms);
    free(folded);
    return n;
}

/* --- opening --------------------------------------------------------- */

struct kb *kb_new(const char *path, bool write, char *err, size_t n)
{
    struct kb *kb = calloc(1, sizeof *kb);
    if (kb == NULL) {
        snprintf(err, n, "out of memory");
        return NULL;
    }
    kb->write = write;
    struct stat sb;
    if (!write && stat(path, &sb) != 0) {
        snprintf(err, n, "%s: %s (import one with omni-kb import DIR --db %s)", path, strerror(errno),
                 path);
        goto fail;
    }
    int flags = write ? SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE : SQLITE_OPEN_READONLY;
    if (sqlite3_open_v2(path, &kb->db, flags | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        snprintf(err, n, "%s: %s", path, kb->db ? sqlite3_errmsg(kb->db) : "cannot open");
        goto fail;
    }
    sqlite3_busy_timeout(kb->db, 5000);
    if (write) {
        if (sqlite3_exec(kb->db, "PRAGMA journal_mode = WAL", NULL, NULL, NULL) != SQLITE_OK
            || sqlite3_exec(kb->db, s_schema, NULL, NULL, NULL) != SQLITE_OK) {
            snprintf(err, n, "%s: %s", path, sqlite3_errmsg(kb->db));
            goto fail;
        }
    }
    if (sqlite3_prepare_v2(kb->db,
                           "SELECT rowid, slug, lang, title, bm25(articles_fts, " BM25_ARGS ") AS r"
                           " FROM articles_fts WHERE articles_fts MATCH ?1 ORDER BY r LIMIT ?2",
                           -1, &kb->search, NULL) != SQLITE_OK
        || sqlite3_prepare_v2(kb->db, "SELECT title, answer FROM articles_fts WHERE rowid = ?1", -1,
                              &kb->get, NULL) != SQLITE_OK) {
        snprintf(err, n, "%s: not a knowledge base (%s); import one with omni-kb import DIR --db %s",
                 path, sqlite3_errmsg(kb->db), path);
        goto fail;
    }
    if (s_vocab_load(kb) != 0) {
        snprintf(err, n, "%s: cannot read the vocabulary: %s", path, sqlite3_errmsg(kb->db));
        goto fail;
    }
    return kb;
fail:
    kb_destroy(&kb);
    return NULL;
}

void kb_destroy(struct kb **kbp)
{
    struct kb *kb = *kbp;
    if (kb == NULL) {
        return;
    }
    s_vocab_free(kb);
    sqlite3_finalize(kb->search);
    sqlite3_finalize(kb->get);
    sqlite3_close(kb->db);
    free(kb);
    *kbp = NULL;
}

int kb_refresh(struct kb *kb)
{
    int64_t v = s_data_version(kb->db);
    if (v < 0) {
        return -1;
    }
    if (v == kb->data_version) {
        return 0;
    }
    return s_vocab_load(kb) == 0 ? 1 : -1;
}

int kb_count(struct kb *kb)
{
    sqlite3_stmt *st = NULL;
    int count = -1;
    if (sqlite3_prepare_v2(kb->db, "SELECT count(*) FROM articles_fts", -1, &st, NULL) == SQLITE_OK
        && sqlite3_step(st) == SQLITE_ROW) {
        count = sqlite3_column_int(st, 0);
    }
    sqlite3_finalize(st);
    return count;
}

/* --- search -------------------------------------------------------- */

int kb_search(struct kb *kb, const char *text, struct kb_hit *hits, int max, struct buf *query,
              char *err, size_t n)
{
    struct buf local = { 0 };
    struct buf *q = query != NULL ? query : &local;
    int found = -1;
    int nterms = s_build_query(kb, text, q);
    if (nterms < 0) {
        snprintf(err, n, "out of memory");
        goto done;
    }
    found = 0;
    if (nterms == 0 || max <= 0) {
        goto done;
    }
    sqlite3_stmt *st = kb->search;
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, q->data, (int)q->len, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, max);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && found < max) {
        struct kb_hit *h = &hits[found++];
        h->id = sqlite3_column_int64(st, 0);
        snprintf(h->slug, sizeof h->slug, "%s", (const char *)sqlite3_column_text(st, 1));
        snprintf(h->lang, sizeof h->lang, "%s", (const char *)sqlite3_column_text(st, 2));
        snprintf(h->title, sizeof h->title, "%s", (const char *)sqlite3_column_text(st, 3));
        h->score = -sqlite3_column_double(st, 4);
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        snprintf(err, n, "search failed: %s", sqlite3_errmsg(kb->db));
        found = -1;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
done:
    buf_free(&local);
    return found;
}

int kb_get(struct kb *kb, int64_t id, struct buf *title, struct buf *answer)
{
    sqlite3_stmt *st = kb->get;
    int rc = -1;
    sqlite3_reset(st);
    sqlite3_bind_int64(st, 1, id);
    if (sqlite3_step(st) == SQLITE_ROW) {
        rc = 0;
        if (title != NULL) {
            buf_reset(title);
            rc |= buf_puts(title, (const char *)sqlite3_column_text(st, 0));
        }
        buf_reset(answer);
        rc |= buf_puts(answer, (const char *)sqlite3_column_text(st, 1));
    }
    sqlite3_reset(st);
    return rc;
}

/* --- parsing articles -------------------------------------------- */

/* Copies the trimmed s[0..n) into out[outn]; returns its length. */
static size_t s_trim_copy(const char *s, size_t n, char *out, size_t outn)
{
    while (n > 0 && isspace((unsigned char)*s)) {
        s++;
        n--;
    }
    while (n > 0 && isspace((unsigned char)s[n - 1])) {
        n--;
    }
    size_t len = n < outn - 1 ? n : outn - 1;
    memcpy(out, s, len);
    out[len] = '\0';
    return n;
}

/* Copies s into out[n], cut to fit. */
static void s_copy(char *out, size_t n, const char *s)
{
    size_t len = strlen(s);
    if (len >= n) {
        len = n - 1;
    }
    memcpy(out, s, len);
    out[len] = '\0';
}

/* Reports through the callback with printf formatting. */
static void s_report(kb_report_fn *report, void *arg, const char *file, int line, const char *fmt,
                     ...) __attribute__((format(printf, 5, 6)));
static void s_report(kb_report_fn *report, void *arg, const char *file, int line, const char *fmt,
                     ...)
{
    char msg[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (report != NULL) {
        report(arg, file, line, msg);
    }
}

static bool s_slug_valid(const char *s)
{
    if (!islower((unsigned char)s[0]) && !isdigit((unsigned char)s[0])) {
        return false;
    }
    for (; *s != '\0'; s++) {
        if (!islower((unsigned char)*s) && !isdigit((unsigned char)*s) && *s != '-') {
            return false;
        }
    }
    return true;
}

static bool s_lang_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 2 || n > 5) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (!isalpha((unsigned char)s[i]) && s[i] != '-') {
            return false;
        }
    }
    return true;
}

/* Which front-matter key a line sets. */
enum fm_key { FM_SLUG, FM_TITLE, FM_LANG, FM_TAGS, FM_QUESTIONS, FM_NKEYS };
static const char *const s_fm_names[FM_NKEYS] = { "slug", "title", "lang", "tags", "questions" };

/* One front-matter line: a key, or an item of the questions list. */
static int s_parse_fm_line(const char *file, int lineno, const char *line, size_t len,
                           struct kb_article *a, int seen[FM_NKEYS], bool *in_questions,
                           kb_report_fn *report, void *arg)
{
    const char *p = line;
    size_t n = len;
    while (n > 0 && (*p == ' ' || *p == '\t')) {
        p++;
        n--;
    }
    if (n == 0 || *p == '#') {
        return 0;
    }
    if (*p == '-' && (n == 1 || p[1] == ' ' || p[1] == '\t')) {
        if (!*in_questions) {
            s_report(report, arg, file, lineno, "list item outside of 'questions:'");
            return -1;
        }
        char q[1024];
        size_t qn = s_trim_copy(p + 1, n - 1, q, sizeof q);
        if (qn == 0) {
            s_report(report, arg, file, lineno, "empty question variant");
            return -1;
        }
        if (qn >= sizeof q) {
            s_report(report, arg, file, lineno, "question variant longer than %zu bytes", sizeof q - 1);
            return -1;
        }
        int count = 0;
        for (size_t i = 0; i < a->questions.len; i++) {
            count += a->questions.data[i] == '\n';
        }
        if (count >= KB_MAX_QUESTIONS) {
            s_report(report, arg, file, lineno, "more than %d question variants", KB_MAX_QUESTIONS);
            return -1;
        }
        buf_printf(&a->questions, "%s\n", q);
        return 0;
    }
    *in_questions = false;
    const char *colon = memchr(p, ':', n);
    if (colon == NULL) {
        s_report(report, arg, file, lineno, "expected 'key: value' or '- question' in the front matter");
        return -1;
    }
    char key[32];
    s_trim_copy(p, (size_t)(colon - p), key, sizeof key);
    int k = -1;
    for (int i = 0; i < FM_NKEYS; i++) {
        if (strcmp(key, s_fm_names[i]) == 0) {
            k = i;
        }
    }
    if (k < 0) {
        s_report(report, arg, file, lineno, "unknown key '%s' (slug, title, lang, tags, questions)", key);
        return -1;
    }
    if (seen[k] != 0) {
        s_report(report, arg, file, lineno, "'%s' set twice (first on line %d)", key, seen[k]);
        return -1;
    }
    seen[k] = lineno;
    const char *v = colon + 1;
    size_t vn = n - (size_t)(v - p);
    char value[KB_TITLE_MAX + 1];
    size_t full = s_trim_copy(v, vn, value, sizeof value);
    switch ((enum fm_key)k) {
    case FM_SLUG:
        if (full == 0 || full >= KB_SLUG_MAX || !s_slug_valid(value)) {
            s_report(report, arg, file, lineno,
                     "bad slug '%.60s' (lower-case letters, digits and '-', at most %d)", value,
                     KB_SLUG_MAX - 1);
            return -1;
        }
        s_copy(a->slug, sizeof a->slug, value);
        a->slug_line = lineno;
        break;
    case FM_TITLE:
        if (full == 0 || full >= KB_TITLE_MAX) {
            s_report(report, arg, file, lineno, "title must have 1 to %d bytes", KB_TITLE_MAX - 1);
            return -1;
        }
        s_copy(a->title, sizeof a->title, value);
        break;
    case FM_LANG:
        if (!s_lang_valid(value)) {
            s_report(report, arg, file, lineno, "bad lang '%.20s' (a language code: pt, en)", value);
            return -1;
        }
        s_copy(a->lang, sizeof a->lang, value);
        break;
    case FM_TAGS: {
        buf_reset(&a->tags);
        const char *t = v;
        while (vn > 0 && isspace((unsigned char)*t)) {
            t++;
            vn--;
        }
        while (vn > 0 && isspace((unsigned char)t[vn - 1])) {
            vn--;
        }
        buf_append(&a->tags, t, vn);
        break;
    }
    case FM_QUESTIONS:
        if (full != 0) {
            s_report(report, arg, file, lineno, "'questions:' takes a list of '- question' lines below it");
            return -1;
        }
        *in_questions = true;
        break;
    case FM_NKEYS:
        break;
    }
    return 0;
}

int kb_parse(const char *file, const char *text, size_t n, struct kb_article *a,
             kb_report_fn *report, void *arg)
{
    memset(a, 0, sizeof *a);
    int bad = 0;
    size_t valid = utf8_valid_prefix(text, n);
    if (valid != n) {
        int line = 1;
        for (size_t i = 0; i < valid; i++) {
            line += text[i] == '\n';
        }
        s_report(report, arg, file, line, "not valid UTF-8 (byte %zu)", valid);
        return -1;
    }
    if (memchr(text, '\0', n) != NULL) {
        s_report(report, arg, file, 1, "contains a NUL byte");
        return -1;
    }
    const char *p = text;
    const char *end = text + n;
    if (n >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) {
        p += 3;
    }
    int lineno = 0;
    int seen[FM_NKEYS] = { 0 };
    bool in_questions = false;
    bool opened = false;
    bool closed = false;
    int close_line = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        size_t len = (size_t)(le - p);
        if (len > 0 && p[len - 1] == '\r') {
            len--;
        }
        lineno++;
        bool fence = len >= 3 && strspn(p, "-") == 3 && (len == 3 || strspn(p + 3, " \t") == len - 3);
        if (!opened) {
            if (!fence) {
                s_report(report, arg, file, lineno, "expected '---' to open the front matter");
                goto fail;
            }
            opened = true;
        } else if (fence) {
            closed = true;
            close_line = lineno;
            p = nl ? nl + 1 : end;
            break;
        } else if (s_parse_fm_line(file, lineno, p, len, a, seen, &in_questions, report, arg) != 0) {
            bad++;
        }
        p = nl ? nl + 1 : end;
    }
    if (!closed) {
        s_report(report, arg, file, lineno > 0 ? lineno : 1, "front matter not closed with '---'");
        goto fail;
    }
    for (int k = 0; k < FM_NKEYS; k++) {
        if (k == FM_TAGS || seen[k] != 0) {
            continue;
        }
        s_report(report, arg, file, close_line, "missing '%s' in the front matter", s_fm_names[k]);
        bad++;
    }
    if (seen[FM_QUESTIONS] != 0 && a->questions.len == 0) {
        s_report(report, arg, file, seen[FM_QUESTIONS], "'questions:' has no '- question' lines");
        bad++;
    }
    /* The answer: the rest, trimmed. */
    while (p < end && isspace((unsigned char)*p)) {
        p++;
    }
    const char *ae = end;
    while (ae > p && isspace((unsigned char)ae[-1])) {
        ae--;
    }
    if (ae == p) {
        s_report(report, arg, file, close_line, "no answer text after the front matter");
        bad++;
    } else {
        buf_append(&a->answer, p, (size_t)(ae - p));
    }
    if (a->tags.data == NULL) {
        buf_puts(&a->tags, "");
    }
    if (bad > 0) {
        goto fail;
    }
    return 0;
fail:
    kb_article_free(a);
    return -1;
}

void kb_article_free(struct kb_article *a)
{
    buf_free(&a->tags);
    buf_free(&a->questions);
    buf_free(&a->answer);
}

/* --- import -------------------------------------------------------- */

static int s_cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reads path whole into b. Returns 0, or -1 with errno. */
static int s_read_file(const char *path, struct buf *b)
{
    buf_reset(b);
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return -1;
    }
    int rc = 0;
    char chunk[8192];
    size_t r;
    while ((r = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (b->len + r > MAX_FILE) {
            errno = EFBIG;
            rc = -1;
            break;
        }
        if (buf_append(b, chunk, r) != 0) {
            errno = ENOMEM;
            rc = -1;
            break;
        }
    }
    if (rc == 0 && ferror(f)) {
        rc = -1;
    }
    fclose(f);
    return rc;
}

/* The *.md names of dir but README.md, sorted; NULL-terminated. */
static char **s_list_md(const char *dir, int *count)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        return NULL;
    }
    char **names = NULL;
    int n = 0;
    int cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        if (len < 4 || strcmp(de->d_name + len - 3, ".md") != 0 || de->d_name[0] == '.'
            || strcasecmp(de->d_name, "README.md") == 0) {
            continue;
        }
        if (n + 1 >= cap) {
            int ncap = cap ? cap * 2 : 64;
            char **nn = realloc(names, (size_t)ncap * sizeof *nn);
            if (nn == NULL) {
                goto oom;
            }
            names = nn;
            cap = ncap;
        }
        names[n] = strdup(de->d_name);
        if (names[n] == NULL) {
            goto oom;
        }
        n++;
    }
    closedir(d);
    if (names == NULL) {
        names = calloc(1, sizeof *names);
        if (names == NULL) {
            return NULL;
        }
    }
    names[n] = NULL;
    qsort(names, (size_t)n, sizeof *names, s_cmp_names);
    *count = n;
    return names;
oom:
    closedir(d);
    for (int i = 0; i < n; i++) {
        free(names[i]);
    }
    free(names);
    errno = ENOMEM;
    return NULL;
}

int kb_import_dir(struct kb *kb, const char *dir, kb_report_fn *report, void *arg,
                  struct kb_import_stats *stats, char *err, size_t n)
{
    if (!kb->write) {
        snprintf(err, n, "the knowledge base was opened read-only");
        return -1;
    }
    memset(stats, 0, sizeof *stats);
    int count = 0;
    char **names = s_list_md(dir, &count);
    if (names == NULL) {
        snprintf(err, n, "%s: %s", dir, strerror(errno));
        return -1;
    }
    sqlite3_stmt *ins = NULL;
    struct buf text = { 0 };
    struct buf path = { 0 };
    /* Slugs stored so far and the file of each, for duplicate reports. */
    char (*slugs)[KB_SLUG_MAX] = calloc((size_t)count + 1, KB_SLUG_MAX);
    int *slug_file = calloc((size_t)count + 1, sizeof *slug_file);
    int nslugs = 0;
    int rc = -1;
    bool began = false;
    if (slugs == NULL || slug_file == NULL) {
        snprintf(err, n, "out of memory");
        goto done;
    }
    if (sqlite3_exec(kb->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(err, n, "cannot begin: %s", sqlite3_errmsg(kb->db));
        goto done;
    }
    began = true;
    if (sqlite3_exec(kb->db, "DELETE FROM articles_fts", NULL, NULL, NULL) != SQLITE_OK
        || sqlite3_prepare_v2(kb->db,
                              "INSERT INTO articles_fts (slug, lang, file, title, questions, tags, answer)"
                              " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)", -1, &ins, NULL) != SQLITE_OK) {
        snprintf(err, n, "%s", sqlite3_errmsg(kb->db));
        goto done;
    }
    for (int i = 0; i < count; i++) {
        buf_reset(&path);
        buf_printf(&path, "%s/%s", dir, names[i]);
        stats->files++;
        if (s_read_file(path.data, &text) != 0) {
            s_report(report, arg, path.data, 1, "cannot read: %s", strerror(errno));
            stats->bad++;
            continue;
        }
        struct kb_article a;
        if (kb_parse(path.data, text.data ? text.data : "", text.len, &a, report, arg) != 0) {
            stats->bad++;
            continue;
        }
        int dup = -1;
        for (int s = 0; s < nslugs; s++) {
            if (strcmp(slugs[s], a.slug) == 0) {
                dup = s;
            }
        }
        if (dup >= 0) {
            s_report(report, arg, path.data, a.slug_line, "duplicate slug '%s' (already in %s)", a.slug,
                     names[slug_file[dup]]);
            stats->bad++;
            kb_article_free(&a);
            continue;
        }
        sqlite3_reset(ins);
        sqlite3_bind_text(ins, 1, a.slug, -1, SQLITE_STATIC);
        sqlite3_bind_text(ins, 2, a.lang, -1, SQLITE_STATIC);
        sqlite3_bind_text(ins, 3, names[i], -1, SQLITE_STATIC);
        sqlite3_bind_text(ins, 4, a.title, -1, SQLITE_STATIC);
        sqlite3_bind_text(ins, 5, a.questions.data, (int)a.questions.len, SQLITE_STATIC);
        sqlite3_bind_text(ins, 6, a.tags.data, (int)a.tags.len, SQLITE_STATIC);
        sqlite3_bind_text(ins, 7, a.answer.data, (int)a.answer.len, SQLITE_STATIC);
        int step = sqlite3_step(ins);
        sqlite3_reset(ins);
        if (step != SQLITE_DONE) {
            snprintf(err, n, "%s: cannot store: %s", path.data, sqlite3_errmsg(kb->db));
            kb_article_free(&a);
            goto done;
        }
        memcpy(slugs[nslugs], a.slug, KB_SLUG_MAX);
        slug_file[nslugs] = i;
        nslugs++;
        stats->imported++;
        kb_article_free(&a);
    }
    char meta[64];
    snprintf(meta, sizeof meta, "%lld", (long long)time(NULL));
    sqlite3_stmt *m = NULL;
    int mrc = sqlite3_prepare_v2(kb->db, "INSERT OR REPLACE INTO kb_meta (key, value) VALUES"
                                         " ('imported_at', ?1), ('source', ?2)", -1, &m, NULL);
    if (mrc == SQLITE_OK) {
        sqlite3_bind_text(m, 1, meta, -1, SQLITE_STATIC);
        sqlite3_bind_text(m, 2, dir, -1, SQLITE_STATIC);
        mrc = sqlite3_step(m) == SQLITE_DONE ? SQLITE_OK : SQLITE_ERROR;
    }
    sqlite3_finalize(m);
    if (mrc != SQLITE_OK
        || sqlite3_exec(kb->db, "INSERT INTO articles_fts (articles_fts) VALUES ('optimize')", NULL,
                        NULL, NULL) != SQLITE_OK
        || sqlite3_exec(kb->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(err, n, "cannot commit: %s", sqlite3_errmsg(kb->db));
        goto done;
    }
    began = false;
    /* The vocabulary only speeds up spelling; a search works without. */
    s_vocab_load(kb);
    rc = 0;
done:
    if (began) {
        sqlite3_exec(kb->db, "ROLLBACK", NULL, NULL, NULL);
    }
    sqlite3_finalize(ins);
    buf_free(&text);
    buf_free(&path);
    free(slugs);
    free(slug_file);
    for (int i = 0; i < count; i++) {
        free(names[i]);
    }
    free(names);
    return rc;
}

/* --- omni-kb ------------------------------------------------------- */

/* Options of the subcommands. */
struct kb_cli_conf {
    const char *db;             /* the knowledge base file */
    bool json;                  /* search: JSON lines */
    int64_t limit;              /* search: most results */
    bool help;                  /* --help */
};

#define C(f) offsetof(struct kb_cli_conf, f)
static const struct opt s_import_opts[] = {
    { "db", OPT_STR, NULL, C(db), "the knowledge base file, created when missing (required)" },
    { "help", OPT_BOOL, "no", C(help), "show this help and exit" },
    { NULL, 0, NULL, 0, NULL }
};
static const struct opt s_search_opts[] = {
    { "db", OPT_STR, NULL, C(db), "the knowledge base file (required)" },
    { "json", OPT_BOOL, "no", C(json), "one JSON object per match" },
    { "limit", OPT_INT, "5", C(limit), "most matches shown" },
    { "help", OPT_BOOL, "no", C(help), "show this help and exit" },
    { NULL, 0, NULL, 0, NULL }
};
#undef C

static void s_cli_report(void *arg, const char *file, int line, const char *msg)
{
    (void)arg;
    log_msg(LOG_WARN, "%s:%d: %s", file, line, msg);
}

static void s_usage(FILE *f)
{
    fprintf(f, "usage: omni-kb import DIR --db KB      load the Markdown articles of DIR (replaces the KB)\n"
               "       omni-kb search TEXT... --db KB [--json] [--limit N]\n"
               "                                        ranked matches and their scores\n"
               "       omni-kb COMMAND --help\n");
}

/* Parses a subcommand's options. Returns -1 to go on, or an exit code. */
static int s_cli_parse(const char *name, const struct opt *opts, int argc, char **argv,
                       struct kb_cli_conf *conf, struct opt_result *res, int min_args, int max_args,
                       const char *args)
{
    memset(conf, 0, sizeof *conf);
    struct opt_set set = { opts, conf };
    if (opt_parse(&set, 1, argc, argv, NULL, res) != 0) {
        log_msg(LOG_ERROR, "%s: %s (try omni-kb %s --help)", name, res->err, name);
        return res->status;
    }
    if (conf->help) {
        printf("usage: omni-kb %s %s [OPTIONS]\n\noptions:\n", name, args);
        opt_help(&set, 1, stdout);
        return 0;
    }
    if (res->npos < min_args || (max_args >= 0 && res->npos > max_args)) {
        log_msg(LOG_ERROR, "%s: expected %s (try omni-kb %s --help)", name, args, name);
        return EXIT_USAGE;
    }
    if (conf->db == NULL || conf->db[0] == '\0') {
        log_msg(LOG_ERROR, "%s: --db is required (try omni-kb %s --help)", name, name);
        return EXIT_USAGE;
    }
    return -1;
}

static int s_cmd_import(int argc, char **argv)
{
    struct kb_cli_conf conf;
    struct opt_result res;
    int status = s_cli_parse("import", s_import_opts, argc, argv, &conf, &res, 1, 1, "DIR");
    struct kb *kb = NULL;
    char err[512];
    if (status >= 0) {
        goto done;
    }
    struct stat sb;
    if (stat(res.pos[0], &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        log_msg(LOG_ERROR, "import: %s: %s", res.pos[0], errno ? strerror(errno) : "not a directory");
        status = EXIT_NOINPUT;
        goto done;
    }
    kb = kb_new(conf.db, true, err, sizeof err);
    if (kb == NULL) {
        log_msg(LOG_ERROR, "%s", err);
        status = EXIT_UNAVAILABLE;
        goto done;
    }
    struct kb_import_stats stats;
    if (kb_import_dir(kb, res.pos[0], s_cli_report, NULL, &stats, err, sizeof err) != 0) {
        log_msg(LOG_ERROR, "import failed, nothing changed: %s", err);
        status = EXIT_UNAVAILABLE;
        goto done;
    }
    printf("imported %d articles from %s into %s (%d files, %d refused)\n", stats.imported,
           res.pos[0], conf.db, stats.files, stats.bad);
    status = stats.bad > 0 ? EXIT_DATAERR : 0;
done:
    kb_destroy(&kb);
    free(res.pos);
    return status;
}

static int s_cmd_search(int argc, char **argv)
{
    struct kb_cli_conf conf;
    struct opt_result res;
    int status = s_cli_parse("search", s_search_opts, argc, argv, &conf, &res, 1, -1, "TEXT...");
    struct kb *kb = NULL;
    struct kb_hit *hits = NULL;
    struct buf text = { 0 };
    struct buf query = { 0 };
    struct buf line = { 0 };
    char err[512];
    if (status >= 0) {
        goto done;
    }
    if (conf.limit < 1 || conf.limit > 1000) {
        log_msg(LOG_ERROR, "search: --limit must be 1 to 1000");
        status = EXIT_USAGE;
        goto done;
    }
    kb = kb_new(conf.db, false, err, sizeof err);
    if (kb == NULL) {
        log_msg(LOG_ERROR, "%s", err);
        status = EXIT_NOINPUT;
        goto done;
    }
    for (int i = 0; i < res.npos; i++) {
        buf_printf(&text, "%s%s", i ? " " : "", res.pos[i]);
    }
    hits = calloc((size_t)conf.limit, sizeof *hits);
    if (hits == NULL) {
        status = EXIT_UNAVAILABLE;
        goto done;
    }
    int found = kb_search(kb, text.data, hits, (int)conf.limit, &query, err, sizeof err);
    if (found < 0) {
        log_msg(LOG_ERROR, "%s", err);
        status = EXIT_UNAVAILABLE;
        goto done;
    }
    if (!conf.json) {
        printf("query: %s\n", query.len ? query.data : "(no words to search)");
    }
    for (int i = 0; i < found; i++) {
        if (conf.json) {
            buf_reset(&line);
            buf_printf(&line, "{\"rank\":%d,\"slug\":", i + 1);
            buf_json_str(&line, hits[i].slug, strlen(hits[i].slug));
            buf_puts(&line, ",\"title\":");
            buf_json_str(&line, hits[i].title, strlen(hits[i].title));
            buf_puts(&line, ",\"lang\":");
            buf_json_str(&line, hits[i].lang, strlen(hits[i].lang));
            buf_printf(&line, ",\"score\":%.3f}\n", hits[i].score);
            fwrite(line.data, 1, line.len, stdout);
        } else {
            printf("%2d  %7.3f  %-32s %s\n", i + 1, hits[i].score, hits[i].slug, hits[i].title);
        }
    }
    status = found > 0 ? 0 : 1;
done:
    free(hits);
    buf_free(&text);
    buf_free(&query);
    buf_free(&line);
    kb_destroy(&kb);
    free(res.pos);
    return status;
}

int kb_cli(int argc, char **argv)
{
    log_init("omni-kb", NULL);
    if (argc < 1 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0
        || strcmp(argv[0], "help") == 0) {
        s_usage(argc < 1 ? stderr : stdout);
        return argc < 1 ? EXIT_USAGE : 0;
    }
    if (strcmp(argv[0], "import") == 0) {
        return s_cmd_import(argc, argv);
    }
    if (strcmp(argv[0], "search") == 0) {
        return s_cmd_search(argc, argv);
    }
    log_msg(LOG_ERROR, "unknown command '%s'", argv[0]);
    s_usage(stderr);
    return EXIT_USAGE;
}
