/* test_kb — unit tests of lib/kb.c on temporary directories and sqlite
 * files: article parsing and its file:line reports, import that keeps going
 * past bad articles and replaces on re-import, and search with accent and
 * case folding, stems, typos and the bm25 weighting of question variants
 * over the body. omni-kb and omni-bot run as processes in
 * tests/integration/bot.sh. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "buf.h"
#include "kb.h"

/* A temporary directory for articles and the database beside it. */
struct fixture {
    char dir[64];               /* articles */
    char db[96];                /* knowledge base file */
    struct buf reports;         /* "file:line: msg\n" of every report */
};

static void s_collect(void *arg, const char *file, int line, const char *msg)
{
    struct buf *b = arg;
    const char *base = strrchr(file, '/');
    buf_printf(b, "%s:%d: %s\n", base ? base + 1 : file, line, msg);
}

static void s_write(const struct fixture *f, const char *name, const char *text)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", f->dir, name);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
}

static void s_remove(const struct fixture *f, const char *name)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", f->dir, name);
    unlink(path);
}

static int s_setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/test_kb.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->db, sizeof f->db, "%s.db", f->dir);
    *state = f;
    return 0;
}

static int s_teardown(void **state)
{
    struct fixture *f = *state;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s' '%s-wal' '%s-shm'", f->dir, f->db, f->db, f->db);
    if (system(cmd) != 0) {
        fprintf(stderr, "# cleanup of %s failed\n", f->dir);
    }
    buf_free(&f->reports);
    free(f);
    return 0;
}

static const char s_refund[] =
    "---\n"
    "slug: reembolso\n"
    "title: Prazos de reembolso\n"
    "lang: pt\n"
    "tags: estorno, dinheiro de volta\n"
    "questions:\n"
    "- Quando o dinheiro volta?\n"
    "- Em quanto tempo cai o estorno no cartão?\n"
    "---\n"
    "O reembolso sai pela mesma forma de pagamento.\n";

static const char s_late[] =
    "---\n"
    "slug: pedido-atrasado\n"
    "title: Pedido atrasado\n"
    "lang: pt\n"
    "questions:\n"
    "- Meu pedido não chegou\n"
    "- Passou do prazo de entrega\n"
    "---\n"
    "Se o prazo passou, abrimos uma investigação com a transportadora.\n";

static const char s_fryer[] =
    "---\n"
    "slug: air-fryer\n"
    "title: Limpeza da air fryer\n"
    "lang: pt\n"
    "questions:\n"
    "- Como limpar o cesto da air fryer?\n"
    "---\n"
    "Lave o cesto com detergente neutro. Não cobre reembolso.\n";

/* -- parsing ------------------------------------------------------------ */

static void test_parse_article(void **state)
{
    struct fixture *f = *state;
    struct kb_article a;
    assert_int_equal(kb_parse("x.md", s_refund, strlen(s_refund), &a, s_collect, &f->reports), 0);
    assert_string_equal(a.slug, "reembolso");
    assert_string_equal(a.title, "Prazos de reembolso");
    assert_string_equal(a.lang, "pt");
    assert_string_equal(a.tags.data, "estorno, dinheiro de volta");
    assert_string_equal(a.questions.data,
                        "Quando o dinheiro volta?\nEm quanto tempo cai o estorno no cartão?\n");
    assert_string_equal(a.answer.data, "O reembolso sai pela mesma forma de pagamento.");
    assert_int_equal(a.slug_line, 2);
    assert_null(f->reports.data);
    kb_article_free(&a);
}

/* Parses text; returns the reports it made. */
static const char *s_parse_bad(struct fixture *f, const char *text)
{
    struct kb_article a;
    buf_reset(&f->reports);
    assert_int_equal(kb_parse("bad.md", text, strlen(text), &a, s_collect, &f->reports), -1);
    assert_non_null(f->reports.data);
    return f->reports.data;
}

static void test_parse_errors_name_the_line(void **state)
{
    struct fixture *f = *state;
    assert_string_equal(s_parse_bad(f, "slug: x\n"),
                        "bad.md:1: expected '---' to open the front matter\n");
    assert_string_equal(s_parse_bad(f, "---\nslug: a\ntitle: A\nlang: pt\ncolor: red\nquestions:\n- q\n---\nbody\n"),
                        "bad.md:5: unknown key 'color' (slug, title, lang, tags, questions)\n");
    assert_string_equal(s_parse_bad(f, "---\nslug: a\nlang: pt\nquestions:\n- q\n---\nbody\n"),
                        "bad.md:6: missing 'title' in the front matter\n");
    assert_string_equal(s_parse_bad(f, "---\nslug: Bad Slug\ntitle: A\nlang: pt\nquestions:\n- q\n---\nbody\n"),
                        "bad.md:2: bad slug 'Bad Slug' (lower-case letters, digits and '-', at most 63)\n");
    assert_string_equal(s_parse_bad(f, "---\nslug: a\ntitle: A\nlang: pt\nquestions:\n- q\n---\n\n  \n"),
                        "bad.md:7: no answer text after the front matter\n");
    assert_string_equal(s_parse_bad(f, "---\nslug: a\ntitle: A\nlang: pt\n- q\nquestions:\n- q\n---\nb\n"),
                        "bad.md:5: list item outside of 'questions:'\n");
    assert_string_equal(s_parse_bad(f, "---\nslug: a\ntitle: A\nlang: pt\nquestions:\n---\nbody\n"),
                        "bad.md:5: 'questions:' has no '- question' lines\n");
    assert_string_equal(s_parse_bad(f, "---\nslug: a\ntitle: A\nslug: b\nlang: pt\nquestions:\n- q\n---\nb\n"),
                        "bad.md:4: 'slug' set twice (first on line 2)\n");
    assert_string_equal(s_parse_bad(f, "---\nslug: a\ntitle: A\nlang: pt\nquestions:\n- q\n"),
                        "bad.md:6: front matter not closed with '---'\n");
    assert_string_equal(s_parse_bad(f, "---\nslug: a\ntitle: A\xff\n"),
                        "bad.md:3: not valid UTF-8 (byte 20)\n");
    /* Every problem of an article is reported, not only the first. */
    assert_string_equal(s_parse_bad(f, "---\nslug: a\nfoo: 1\nquestions:\n- q\n---\nb\n"),
                        "bad.md:3: unknown key 'foo' (slug, title, lang, tags, questions)\n"
                        "bad.md:6: missing 'title' in the front matter\n"
                        "bad.md:6: missing 'lang' in the front matter\n");
}

/* -- import ------------------------------------------------------------- */

static struct kb *s_import(struct fixture *f, struct kb_import_stats *st)
{
    char err[256];
    struct kb *kb = kb_new(f->db, true, err, sizeof err);
    assert_non_null(kb);
    buf_reset(&f->reports);
    assert_int_equal(kb_import_dir(kb, f->dir, s_collect, &f->reports, st, err, sizeof err), 0);
    return kb;
}

static void test_import_keeps_going_and_replaces(void **state)
{
    struct fixture *f = *state;
    s_write(f, "a-reembolso.md", s_refund);
    s_write(f, "b-atrasado.md", s_late);
    s_write(f, "c-bad.md", "---\nslug: c\ntitle: C\nlang: pt\nquestions:\n- q\n- \n---\nbody\n");
    s_write(f, "d-dup.md", s_refund);
    s_write(f, "README.md", "# not an article\n");
    s_write(f, "notes.txt", "not an article either\n");
    struct kb_import_stats st;
    struct kb *kb = s_import(f, &st);
    assert_int_equal(st.files, 4);
    assert_int_equal(st.imported, 2);
    assert_int_equal(st.bad, 2);
    assert_string_equal(f->reports.data, "c-bad.md:7: empty question variant\n"
                                         "d-dup.md:2: duplicate slug 'reembolso' (already in a-reembolso.md)\n");
    assert_int_equal(kb_count(kb), 2);
    kb_destroy(&kb);
    assert_null(kb);

    /* Re-import replaces the whole knowledge base. */
    s_remove(f, "a-reembolso.md");
    s_remove(f, "c-bad.md");
    s_remove(f, "d-dup.md");
    s_write(f, "e-fryer.md", s_fryer);
    kb = s_import(f, &st);
    assert_int_equal(st.imported, 2);
    assert_int_equal(st.bad, 0);
    assert_int_equal(f->reports.len, 0);
    assert_int_equal(kb_count(kb), 2);
    struct kb_hit hits[4];
    char err[256];
    assert_int_equal(kb_search(kb, "estorno", hits, 4, NULL, err, sizeof err), 0);
    kb_destroy(&kb);
}

static void test_import_of_a_missing_dir_fails(void **state)
{
    struct fixture *f = *state;
    char err[256];
    struct kb *kb = kb_new(f->db, true, err, sizeof err);
    assert_non_null(kb);
    struct kb_import_stats st;
    assert_int_equal(kb_import_dir(kb, "/nonexistent/kb", s_collect, &f->reports, &st, err, sizeof err), -1);
    assert_non_null(strstr(err, "/nonexistent/kb"));
    kb_destroy(&kb);
    /* Reading a file that is no knowledge base is refused with a reason. */
    assert_null(kb_new("/nonexistent/kb.db", false, err, sizeof err));
    assert_non_null(strstr(err, "omni-kb import"));
}

/* -- search ------------------------------------------------------------- */

/* The slug of the best match for text, or "" when none. */
static const char *s_best(struct kb *kb, const char *text)
{
    static struct kb_hit hits[4];
    char err[256];
    int n = kb_search(kb, text, hits, 4, NULL, err, sizeof err);
    assert_true(n >= 0);
    return n > 0 ? hits[0].slug : "";
}

static void test_search_folds_accents_and_case(void **state)
{
    struct fixture *f = *state;
    s_write(f, "a.md", s_refund);
    s_write(f, "b.md", s_late);
    s_write(f, "c.md", s_fryer);
    struct kb_import_stats st;
    struct kb *kb = s_import(f, &st);
    assert_int_equal(st.imported, 3);
    /* "nao" finds "não" (folded on both sides), "REEMBOLSO" "reembolso". */
    assert_string_equal(s_best(kb, "nao chegou"), "pedido-atrasado");
    assert_string_equal(s_best(kb, "NÃO CHEGOU"), "pedido-atrasado");
    assert_string_equal(s_best(kb, "REEMBOLSO"), "reembolso");
    assert_string_equal(s_best(kb, "Reembólso!!"), "reembolso");
    assert_string_equal(s_best(kb, "cartao"), "reembolso");
    /* Stems match as prefixes: "atrasada" finds "atrasado". */
    assert_string_equal(s_best(kb, "encomenda atrasada"), "pedido-atrasado");
    /* One-letter typos are corrected against the index's words, and a
     * word glued from two known ones is split. */
    assert_string_equal(s_best(kb, "reembolco"), "reembolso");
    assert_string_equal(s_best(kb, "airfryer"), "air-fryer");
    /* Stop words and greetings alone match nothing. */
    assert_string_equal(s_best(kb, "oi, bom dia! tudo bem?"), "");
    assert_string_equal(s_best(kb, ""), "");
    assert_string_equal(s_best(kb, "xyzzy plugh"), "");
    kb_destroy(&kb);
}

static void test_search_weights_questions_over_body(void **state)
{
    struct fixture *f = *state;
    /* "reembolso" is in the fryer article's body and in the refund
     * article's title: the title wins. */
    s_write(f, "a.md", s_refund);
    s_write(f, "c.md", s_fryer);
    struct kb_import_stats st;
    struct kb *kb = s_import(f, &st);
    struct kb_hit hits[4];
    struct buf q = { 0 };
    char err[256];
    int n = kb_search(kb, "reembolso", hits, 4, &q, err, sizeof err);
    assert_int_equal(n, 2);
    assert_string_equal(hits[0].slug, "reembolso");
    assert_string_equal(hits[1].slug, "air-fryer");
    assert_true(hits[0].score > hits[1].score);
    assert_true(hits[1].score > 0);
    assert_string_equal(q.data, "\"reembols\"*");
    assert_string_equal(hits[0].lang, "pt");
    assert_string_equal(hits[0].title, "Prazos de reembolso");
    struct buf title = { 0 };
    struct buf answer = { 0 };
    assert_int_equal(kb_get(kb, hits[0].id, &title, &answer), 0);
    assert_string_equal(title.data, "Prazos de reembolso");
    assert_string_equal(answer.data, "O reembolso sai pela mesma forma de pagamento.");
    assert_int_equal(kb_get(kb, 9999, &title, &answer), -1);
    buf_free(&q);
    buf_free(&title);
    buf_free(&answer);
    kb_destroy(&kb);
}

static void test_fold(void **state)
{
    (void)state;
    char out[64];
    kb_fold("NÃO Ação É çà über", out);
    assert_string_equal(out, "nao acao e ca uber");
    kb_fold("ok 👍!", out);
    assert_string_equal(out, "ok  !");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_parse_article, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_parse_errors_name_the_line, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_import_keeps_going_and_replaces, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_import_of_a_missing_dir_fails, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_search_folds_accents_and_case, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_search_weights_questions_over_body, s_setup, s_teardown),
        cmocka_unit_test(test_fold),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
