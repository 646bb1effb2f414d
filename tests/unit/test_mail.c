/* test_mail — unit tests of lib/mail.c on the sample messages in
 * examples/mail: charsets to UTF-8, HTML to text, plain text preferred,
 * quoted replies trimmed, attachments listed, threading headers kept, and
 * what is not a message refused with a reason. omni-ingest-mail runs as a
 * real process in tests/integration/mail.sh. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "buf.h"
#include "envelope.h"
#include "mail.h"
#include "mp.h"

/* The contents of examples/mail/NAME (tests run from the repository). */
static char *s_load(const char *name, size_t *n)
{
    char path[256];
    snprintf(path, sizeof path, "examples/mail/%s", name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    struct buf b = { 0 };
    char chunk[4096];
    size_t r;
    while ((r = fread(chunk, 1, sizeof chunk, f)) > 0) {
        assert_int_equal(buf_append(&b, chunk, r), 0);
    }
    fclose(f);
    *n = b.len;
    return b.data;
}

/* The envelope of a sample, which must parse. */
static struct env *s_parse(const char *name)
{
    size_t n;
    char *raw = s_load(name, &n);
    struct env *e = env_new();
    assert_non_null(e);
    char err[300] = "";
    int rc = mail_to_env(raw, n, 0, e, err, sizeof err);
    if (rc != 0) {
        fail_msg("%s: %s", name, err);
    }
    free(raw);
    return e;
}

/* A meta entry, or "" when absent. */
static const char *s_meta(const struct env *e, const char *key)
{
    static char out[2048];
    out[0] = '\0';
    if (env_map_str(e, ENV_META, key, out, sizeof out) != 1) {
        out[0] = '\0';
    }
    return out;
}

/* The attachments as JSON, or "" when none. */
static char *s_attachments(const struct env *e)
{
    size_t n;
    const void *p = env_raw(e, ENV_ATTACHMENTS, &n);
    struct buf b = { 0 };
    if (p == NULL) {
        return strdup("");
    }
    assert_int_equal(mp_to_json(p, n, &b), 0);
    return b.data;
}

static int s_group_setup(void **state)
{
    (void)state;
    mail_init();
    return 0;
}

static int s_group_teardown(void **state)
{
    (void)state;
    mail_fini();
    return 0;
}

static void test_plain(void **state)
{
    (void)state;
    struct env *e = s_parse("plain.eml");
    assert_string_equal(env_get(e, ENV_CHANNEL), "email");
    assert_string_equal(env_get(e, ENV_DIR), "in");
    /* The address lower-cased, the name kept in meta. */
    assert_string_equal(env_get(e, ENV_FROM), "mailto:ana.souza@example.com");
    assert_string_equal(env_get(e, ENV_TO), "mailto:atendimento@loja.example");
    assert_string_equal(env_get(e, ENV_SUBJECT), "Pedido 48213 ainda não chegou");
    assert_string_equal(env_get(e, ENV_SRC_ID), "CAF1x9k2pQ@mail.example.com");
    assert_string_equal(s_meta(e, "message_id"), "<CAF1x9k2pQ@mail.example.com>");
    assert_string_equal(s_meta(e, "name"), "Ana Souza");
    assert_string_equal(s_meta(e, "date"), "2025-03-03T09:14:02-03");
    assert_string_equal(s_meta(e, "in_reply_to"), "");
    assert_false(env_has(e, ENV_ATTACHMENTS));
    assert_string_equal(env_get(e, ENV_TEXT),
                        "Olá,\n\nFiz o pedido 48213 no dia 20/02 (uma panela de ferro fundido e uma\n"
                        "frigideira antiaderente) e o prazo de entrega era até sexta-feira.\n"
                        "O rastreio não atualiza desde o dia 25.\n\n"
                        "Vocês podem verificar o que aconteceu?\n\nObrigada,\nAna Souza\n(11) 98765-4321");
    /* What the ingestor adds (v, id, ts) makes it a valid envelope. */
    env_set_uint(e, ENV_V, ENV_VERSION);
    env_set_uint(e, ENV_TS, 1741004042000);
    struct env_err err;
    env_set(e, ENV_ID, "01JNHX1Q2W3E4R5T6Y7V8W9X0Z", NULL);
    assert_int_equal(env_check(e, &err), 0);
    env_destroy(&e);
}

static void test_html_only(void **state)
{
    (void)state;
    struct env *e = s_parse("html-only.eml");
    assert_string_equal(env_get(e, ENV_FROM), "mailto:carlos.pereira@example.net");
    assert_string_equal(env_get(e, ENV_TEXT),
                        "Boa tarde,\n\n"
                        "Recebi a faca do chef com a lâmina lascada e gostaria de trocar. "
                        "Os itens do pedido 50117 foram:\n\n"
                        "- Faca do chef 20 cm\n"
                        "- Chaira de aço – 25 cm\n\n"
                        "Segue o link da foto: foto da lâmina (https://fotos.example.net/p/8812)\n\n"
                        "Pedido 50117\nValor R$ 389,90\n\n"
                        "Fico no aguardo & obrigado!\n\n"
                        "--\nCarlos Pereira");
    env_destroy(&e);
}

static void test_alternative_prefers_plain(void **state)
{
    (void)state;
    struct env *e = s_parse("alternative.eml");
    const char *t = env_get(e, ENV_TEXT);
    assert_null(strstr(t, "HTML VERSION"));
    assert_non_null(strstr(t, "cartão final 4411. Podem estornar a segunda cobrança?"));
    assert_string_equal(env_get(e, ENV_SUBJECT), "Cobrança duplicada no cartão");
    assert_string_equal(env_get(e, ENV_TO), "mailto:atendimento@loja.example");
    assert_false(env_has(e, ENV_ATTACHMENTS));
    env_destroy(&e);
}

static void test_latin1_quoted_printable(void **state)
{
    (void)state;
    struct env *e = s_parse("latin1-qp.eml");
    assert_string_equal(env_get(e, ENV_FROM), "mailto:joao.goncalves@example.com.br");
    assert_string_equal(s_meta(e, "name"), "João Gonçalves");
    assert_string_equal(env_get(e, ENV_SUBJECT), "Garantia do fogão de indução");
    assert_string_equal(env_get(e, ENV_TEXT),
                        "Prezados,\n\nGostaria de saber se o fogão de indução que comprei (pedido 47730) tem\n"
                        "garantia estendida. A nota fiscal diz \"garantia de 12 meses\", mas no\n"
                        "site aparece 24 meses.\n\nAtenciosamente,\nJoão Gonçalves\nSão José dos Campos");
    env_destroy(&e);
}

static void test_base64_utf8(void **state)
{
    (void)state;
    struct env *e = s_parse("base64-utf8.eml");
    assert_string_equal(env_get(e, ENV_SUBJECT), "Dúvida sobre a air fryer \xf0\x9f\x8d\x9f");
    const char *t = env_get(e, ENV_TEXT);
    assert_true(strncmp(t, "Oi! \xf0\x9f\x98\x8a\n\nQuero agradecer", 24) == 0);
    assert_non_null(strstr(t, "muito bem — só fiquei"));
    assert_non_null(strstr(t, "Mariana Tanaka \xf0\x9f\x8d\xb3"));
    env_destroy(&e);
}

static void test_attachments_listed(void **state)
{
    (void)state;
    struct env *e = s_parse("attachment.eml");
    char *a = s_attachments(e);
    assert_string_equal(a, "[{\"type\":\"document\",\"mime_type\":\"application/pdf\","
                           "\"name\":\"nota-fiscal-52290.pdf\",\"size\":1090},"
                           "{\"type\":\"image\",\"mime_type\":\"image/jpeg\",\"name\":\"etiqueta.jpg\","
                           "\"size\":2013,\"inline\":true}]");
    free(a);
    /* format=flowed: soft line breaks joined. */
    assert_non_null(strstr(env_get(e, ENV_TEXT), "O correto é 12.345.678/0001-90."));
    assert_non_null(strstr(env_get(e, ENV_TEXT), "(anexo a nota e uma foto da etiqueta da caixa)"));
    env_destroy(&e);
}

static void test_reply_quotes_trimmed(void **state)
{
    (void)state;
    struct env *e = s_parse("reply-quoted.eml");
    /* The customer's inline answer between quotes stays; the quotes and
     * the two-line "Em … escreveu:" go. */
    assert_string_equal(env_get(e, ENV_TEXT),
                        "Oi Marina,\n\nRecebi hoje de manhã, obrigada! Só a tampa da panela veio com um\n"
                        "amassado pequeno.\n\nMando ainda hoje.");
    assert_string_equal(s_meta(e, "in_reply_to"), "<8812.2.1741006000@loja.example>");
    assert_string_equal(s_meta(e, "references"),
                        "<CAF1x9k2pQ@mail.example.com> <8812.1.1741003000@loja.example> "
                        "<CAF1x9k4zZ@mail.example.com> <8812.2.1741006000@loja.example>");
    assert_string_equal(env_get(e, ENV_SUBJECT), "Re: [Chamado #8812] Pedido 48213 ainda não chegou");
    env_destroy(&e);
}

static void test_reply_outlook_windows1252(void **state)
{
    (void)state;
    struct env *e = s_parse("reply-en.eml");
    /* windows-1252 quotes and dashes; "On … wrote:" on two lines; the
     * "-----Original Message-----" block and all after it gone. */
    assert_string_equal(env_get(e, ENV_TEXT),
                        "Thanks \xe2\x80\x93 that\xe2\x80\x99s great news. I\xe2\x80\x99ll place the order today.\n\nTom");
    assert_string_equal(s_meta(e, "in_reply_to"), "<9911.1.1741700000@loja.example>");
    env_destroy(&e);
}

static void test_malformed_rejected(void **state)
{
    (void)state;
    size_t n;
    char *raw = s_load("malformed.eml", &n);
    struct env *e = env_new();
    char err[300] = "";
    assert_int_equal(mail_to_env(raw, n, 0, e, err, sizeof err), -1);
    assert_string_equal(err, "not an RFC 5322 message: no header fields");
    assert_int_equal(mail_to_env("", 0, 0, e, err, sizeof err), -1);
    assert_string_equal(err, "empty message");
    /* Headers, but nobody to answer. */
    static const char nofrom[] = "To: atendimento@loja.example\r\nSubject: oi\r\n\r\ncorpo\r\n";
    assert_int_equal(mail_to_env(nofrom, sizeof nofrom - 1, 0, e, err, sizeof err), -1);
    assert_string_equal(err, "no sender: From has no address");
    static const char badfrom[] = "From: Ana <ana@@example..com>\nSubject: oi\n\ncorpo\n";
    assert_int_equal(mail_to_env(badfrom, sizeof badfrom - 1, 0, e, err, sizeof err), -1);
    assert_non_null(strstr(err, "sender"));
    env_destroy(&e);
    free(raw);
}

static void test_no_message_id(void **state)
{
    (void)state;
    /* The same message relayed twice (other Received lines) is one. */
    static const char a[] = "Received: from a by b; Mon, 3 Mar 2025 10:00:00 +0000\n"
                            "From: ana@example.com\nTo: loja@example.com\nSubject: oi\n"
                            "Date: Mon, 3 Mar 2025 09:59:00 +0000\n\nsem Message-ID\n";
    static const char b[] = "Received: from c by d; Mon, 3 Mar 2025 10:05:00 +0000\n"
                            "Received: from a by c; Mon, 3 Mar 2025 10:04:00 +0000\n"
                            "From: ana@example.com\nTo: loja@example.com\nSubject: oi\n"
                            "Date: Mon, 3 Mar 2025 09:59:00 +0000\n\nsem Message-ID\n";
    struct env *e1 = env_new(), *e2 = env_new();
    char err[300];
    assert_int_equal(mail_to_env(a, sizeof a - 1, 0, e1, err, sizeof err), 0);
    assert_int_equal(mail_to_env(b, sizeof b - 1, 0, e2, err, sizeof err), 0);
    assert_true(strncmp(env_get(e1, ENV_SRC_ID), "sha256:", 7) == 0);
    assert_int_equal(strlen(env_get(e1, ENV_SRC_ID)), 7 + 64);
    assert_string_equal(env_get(e1, ENV_SRC_ID), env_get(e2, ENV_SRC_ID));
    assert_string_equal(s_meta(e1, "message_id"), "");
    env_destroy(&e1);
    env_destroy(&e2);
}

static void test_mbox_line_and_cut(void **state)
{
    (void)state;
    static const char m[] = "From ana@example.com Mon Mar  3 10:00:00 2025\n"
                            "From: Ana <ana@example.com>\nMessage-ID: <x1@example.com>\n\ncorpo\n";
    struct env *e = env_new();
    char err[300];
    assert_int_equal(mail_to_env(m, sizeof m - 1, MAIL_CUT, e, err, sizeof err), 0);
    assert_string_equal(env_get(e, ENV_FROM), "mailto:ana@example.com");
    assert_string_equal(env_get(e, ENV_TEXT), "corpo");
    assert_false(env_has(e, ENV_TO));
    bool cut = false;
    assert_int_equal(env_map_bool(e, ENV_META, "truncated", &cut), 1);
    assert_true(cut);
    env_destroy(&e);
}

/* Runs mail_trim_quotes on a copy of s. */
static char *s_trim(const char *s)
{
    char *t = strdup(s);
    size_t n = mail_trim_quotes(t, strlen(t));
    assert_int_equal(n, strlen(t));
    return t;
}

static void test_trim_quotes(void **state)
{
    (void)state;
    char *t = s_trim("Sim, pode trocar.\n\nOn Mon, 3 Mar 2025, Ana <ana@x.com> wrote:\n> quero trocar\n> obrigada\n");
    assert_string_equal(t, "Sim, pode trocar.");
    free(t);
    /* Answers between quotes are the reply. */
    t = s_trim("> pergunta 1\nresposta 1\n\n> pergunta 2\n>\nresposta 2\n");
    assert_string_equal(t, "resposta 1\n\nresposta 2");
    free(t);
    /* An attribution followed by an unmarked copy: all of it goes. */
    t = s_trim("Obrigado!\n\nEl lun, 3 mar 2025 a las 10:00, Loja escribió:\nHola Ana,\nya lo vemos.\n");
    assert_string_equal(t, "Obrigado!");
    free(t);
    t = s_trim("Ok.\n\n----- Mensagem original -----\nDe: Loja\nPara: Ana\n\ntexto antigo\n");
    assert_string_equal(t, "Ok.");
    free(t);
    t = s_trim("Certo.\n\nDe: Loja <l@x.com>\nEnviado: segunda-feira, 3 de março de 2025 10:00\n"
               "Para: Ana\nAssunto: pedido\n\ntexto antigo\n");
    assert_string_equal(t, "Certo.");
    free(t);
    t = s_trim("Feito.\n\n________________________________\nFrom: Loja\nSent: Monday\n\nold\n");
    assert_string_equal(t, "Feito.");
    free(t);
    /* A line that only starts like an attribution stays. */
    t = s_trim("On Monday I wrote to you already.\nStill waiting.\n");
    assert_string_equal(t, "On Monday I wrote to you already.\nStill waiting.");
    free(t);
    /* All quote (a forward without a word): kept rather than emptied. */
    t = s_trim("> only\n> quoted\n");
    assert_string_equal(t, "> only\n> quoted");
    free(t);
    /* Blank lines: trailing spaces trimmed, runs made one, ends trimmed. */
    t = s_trim("\n\na  \n\n\n\nb\t\n\n");
    assert_string_equal(t, "a\n\nb");
    free(t);
}

/* mail_html_to_text of s into a string. */
static char *s_html(const char *s)
{
    struct buf b = { 0 };
    assert_int_equal(mail_html_to_text(s, strlen(s), &b), 0);
    return b.data ? b.data : strdup("");
}

static void test_html_to_text(void **state)
{
    (void)state;
    char *t = s_html("<p>a<br>b<br><br>c</p><script>if (a<b) { x = \"</p>\"; }</script>"
                     "<STYLE>p{}</STYLE><p>d &amp; e &#233; &#x1F600; &#150; &nbsp;f &bogus; 1 < 2</p>");
    assert_string_equal(t, "a\nb\n\nc\n\nd & e é \xf0\x9f\x98\x80 \xe2\x80\x93  f &bogus; 1 < 2");
    free(t);
    t = s_html("<div>Ok, obrigado.</div><div class=\"gmail_quote\"><div>On Mon, Ana wrote:</div>"
               "<blockquote type=\"cite\"><div>pergunta</div><blockquote>antiga</blockquote></blockquote></div>");
    assert_string_equal(t, "Ok, obrigado.\nOn Mon, Ana wrote:\n> pergunta\n> > antiga");
    size_t n = mail_trim_quotes(t, strlen(t));
    assert_string_equal(t, "Ok, obrigado.");
    assert_int_equal(n, strlen("Ok, obrigado."));
    free(t);
    t = s_html("<ol><li>um</li><li>dois</li></ol><pre>  x\n  y</pre><a href=\"https://x.example/a?b=1&amp;c=2\">link</a>"
               "<a href=\"https://x.example/\">https://x.example/</a><a href=\"mailto:a@b\">mail</a>");
    assert_string_equal(t, "- um\n- dois\n  x\n  y\nlink (https://x.example/a?b=1&c=2)https://x.example/mail");
    free(t);
    /* A <head> left open ends at <body>; comments go. */
    t = s_html("<html><head><title>t</title><body><!-- c -->texto</body>");
    assert_string_equal(t, "texto");
    free(t);
}

/* mail_to_utf8 of s[0..n) in charset into a string. */
static char *s_utf8(const char *charset, const char *s, size_t n)
{
    struct buf b = { 0 };
    assert_int_equal(mail_to_utf8(charset, s, n, &b), 0);
    return b.data ? b.data : strdup("");
}

static void test_charsets(void **state)
{
    (void)state;
    char *t = s_utf8("iso-8859-1", "S\xe3o \x93x\x94\r\n", 9);
    assert_string_equal(t, "São “x”\n");
    free(t);
    /* Undeclared 8-bit text: UTF-8 when it is, windows-1252 when not. */
    t = s_utf8(NULL, "ol\xc3\xa1", 4);
    assert_string_equal(t, "olá");
    free(t);
    t = s_utf8(NULL, "ol\xe1", 3);
    assert_string_equal(t, "olá");
    free(t);
    t = s_utf8("us-ascii", "ol\xe1", 3);
    assert_string_equal(t, "olá");
    free(t);
    /* Declared UTF-8 that is not: bad bytes become U+FFFD. NULs go. */
    t = s_utf8("utf-8", "a\xff" "b\0c\rd", 7);
    assert_string_equal(t, "a\xef\xbf\xbd" "bc\nd");
    free(t);
    t = s_utf8("koi8-r", "\xf0\xd2\xc9\xd7\xc5\xd4", 6);
    assert_string_equal(t, "Привет");
    free(t);
    t = s_utf8("x-no-such-charset", "caf\xe9", 4);
    assert_string_equal(t, "café");
    free(t);
    t = s_utf8("shift_jis", "\x82\xa0\xff", 3);
    assert_string_equal(t, "あ\xef\xbf\xbd");
    free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain),
        cmocka_unit_test(test_html_only),
        cmocka_unit_test(test_alternative_prefers_plain),
        cmocka_unit_test(test_latin1_quoted_printable),
        cmocka_unit_test(test_base64_utf8),
        cmocka_unit_test(test_attachments_listed),
        cmocka_unit_test(test_reply_quotes_trimmed),
        cmocka_unit_test(test_reply_outlook_windows1252),
        cmocka_unit_test(test_malformed_rejected),
        cmocka_unit_test(test_no_message_id),
        cmocka_unit_test(test_mbox_line_and_cut),
        cmocka_unit_test(test_trim_quotes),
        cmocka_unit_test(test_html_to_text),
        cmocka_unit_test(test_charsets),
    };
    return cmocka_run_group_tests(tests, s_group_setup, s_group_teardown);
}
