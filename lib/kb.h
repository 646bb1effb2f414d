/* kb — the knowledge base: Markdown articles (examples/kb/README.md says
 * their format) imported into a sqlite FTS5 index with accent folding
 * (unicode61 remove_diacritics 2), and searched with bm25 weighted so that
 * an article's question variants and title count more than its body.
 *
 * A search turns free text ("vcs entregam no sabado??") into an FTS5 query:
 * words are folded (case, accents), stop words and greetings dropped,
 * misspelt words corrected against the index's own vocabulary (one or two
 * edits), and longer words cut to a light Portuguese/English stem and
 * matched as prefixes ("entregam" -> entreg*), the terms OR-ed together.
 * The score is -bm25: higher is better, 0 is no match.
 *
 * omni-kb (kb_cli) is the command line: `import DIR --db KB` and
 * `search TEXT --db KB [--json]`. */
#ifndef OMNI_KB_H
#define OMNI_KB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define KB_SLUG_MAX 64          /* bytes of a slug, NUL included */
#define KB_LANG_MAX 8           /* bytes of a language code, NUL included */
#define KB_TITLE_MAX 200        /* bytes of a title, NUL included */
#define KB_MAX_QUESTIONS 64     /* question variants per article */
#define KB_MAX_TERMS 48         /* query terms kept from one text */

struct kb;

/* One article as parsed from its Markdown file. The strings point into the
 * text given to kb_parse, or into the article's own buffers. */
struct kb_article {
    char slug[KB_SLUG_MAX];     /* unique name: [a-z0-9-], e.g. "prazo-de-entrega" */
    char title[KB_TITLE_MAX];   /* one line */
    char lang[KB_LANG_MAX];     /* "pt" or "en" */
    struct buf tags;            /* comma-separated words */
    struct buf questions;       /* question variants, one per line */
    struct buf answer;          /* the answer text (Markdown), trimmed */
    int slug_line;              /* line of the slug key, for duplicate reports */
};

/* Reports one problem of one article: file, line (1-based), what. */
typedef void kb_report_fn(void *arg, const char *file, int line, const char *msg);

/* What an import did. */
struct kb_import_stats {
    int files;                  /* .md files read (README.md excepted) */
    int imported;               /* articles stored */
    int bad;                    /* articles refused */
};

/* One search result. */
struct kb_hit {
    int64_t id;                 /* the article's row */
    char slug[KB_SLUG_MAX];     /* its slug */
    char lang[KB_LANG_MAX];     /* its language */
    char title[KB_TITLE_MAX];   /* its title */
    double score;               /* -bm25, weighted: higher is better */
};

/* Opens the knowledge base at path. write: creates it (WAL, schema) for
 * import; otherwise read-only, and it must have been imported. Returns the
 * handle, or NULL with the reason in err[n]. */
struct kb *kb_new(const char *path, bool write, char *err, size_t n);
void kb_destroy(struct kb **kb);

/* Parses one article from text[0..n) (file names it in reports). Returns 0,
 * or -1 after calling report (once per problem; at least once). */
int kb_parse(const char *file, const char *text, size_t n, struct kb_article *a,
             kb_report_fn *report, void *arg);
/* Frees an article's buffers. */
void kb_article_free(struct kb_article *a);

/* Replaces the whole knowledge base with the articles in dir (*.md but
 * README.md, in name order), in one transaction. Bad articles and
 * duplicate slugs are reported and skipped. Returns 0 (stats filled), or -1
 * when the import itself failed (nothing changed; err[n] says why). */
int kb_import_dir(struct kb *kb, const char *dir, kb_report_fn *report, void *arg,
                  struct kb_import_stats *stats, char *err, size_t n);

/* Searches text; fills up to max hits, best first, and returns how many
 * (0: nothing matched), or -1 on a database error (err[n]). When query is
 * not NULL, the FTS5 query used is written there. */
int kb_search(struct kb *kb, const char *text, struct kb_hit *hits, int max, struct buf *query,
              char *err, size_t n);
/* Replaces title and answer with article id's. Returns 0, or -1 when it is
 * not there (or the database failed). title may be NULL. */
int kb_get(struct kb *kb, int64_t id, struct buf *title, struct buf *answer);
/* Picks up a re-import done by another process (the index vocabulary is
 * cached): cheap when nothing changed. Returns 1 reloaded, 0 unchanged, -1
 * on error. */
int kb_refresh(struct kb *kb);
/* Articles in the knowledge base. */
int kb_count(struct kb *kb);

/* Lowercases ASCII and folds Latin accents (á -> a, Ç -> c) of s into out,
 * which must hold strlen(s) + 1 bytes; other non-ASCII characters become
 * spaces. For matching people's words, not for display. */
void kb_fold(const char *s, char *out);

/* omni-kb: `import DIR --db KB`, `search TEXT... --db KB [--json]`.
 * argv[0] is the subcommand. Returns the exit code. */
int kb_cli(int argc, char **argv);

#endif
