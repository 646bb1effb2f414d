/* test_send — unit tests of omni-send's pure parts: the HTTP status split,
 * backoff with jitter and Retry-After, Retry-After parsing, the From
 * address, and the e-mail a reply becomes (threading headers, Subject,
 * encoded-words, quoted-printable, no header injection). */
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
#include "json.h"
#include "send.h"

/* Builds an envelope from a JSON text. */
static struct env *s_env(const char *json)
{
    char err[200];
    cJSON *doc = json_parse(json, strlen(json), err, sizeof err);
    assert_non_null(doc);
    struct env *e = env_new();
    struct env_err eerr;
    assert_int_equal(env_from_json(e, doc, &eerr), 0);
    cJSON_Delete(doc);
    return e;
}

/* The value of header name in the message, unfolded, into out. */
static const char *s_header(const char *msg, const char *name, char *out, size_t n)
{
    size_t nl = strlen(name);
    const char *end = strstr(msg, "\r\n\r\n");
    for (const char *p = msg; p != NULL && p < end; p = strstr(p, "\r\n") + 2) {
        if (strncmp(p, name, nl) == 0 && p[nl] == ':') {
            size_t k = 0;
            const char *v = p + nl + 1;
            while (*v == ' ') {
                v++;
            }
            for (; v < end && k + 1 < n; v++) {
                if (v[0] == '\r' && v[1] == '\n' && (v[2] == ' ' || v[2] == '\t')) {
                    v += 1;     /* a fold: keep the blank that follows */
                    continue;
                }
                if (v[0] == '\r') {
                    break;
                }
                out[k++] = *v;
            }
            out[k] = '\0';
            return out;
        }
    }
    return NULL;
}

static void test_http_class(void **state)
{
    (void)state;
    assert_int_equal(send_http_class(200), SEND_SENT);
    assert_int_equal(send_http_class(201), SEND_SENT);
    assert_int_equal(send_http_class(408), SEND_TEMP);
    assert_int_equal(send_http_class(429), SEND_TEMP);
    assert_int_equal(send_http_class(500), SEND_TEMP);
    assert_int_equal(send_http_class(503), SEND_TEMP);
    assert_int_equal(send_http_class(400), SEND_PERM);
    assert_int_equal(send_http_class(401), SEND_PERM);
    assert_int_equal(send_http_class(403), SEND_PERM);
    assert_int_equal(send_http_class(404), SEND_PERM);
    assert_int_equal(send_http_class(302), SEND_PERM);
}

static void test_backoff(void **state)
{
    (void)state;
    /* Doubling from min, capped at max, jitter in the upper half. */
    for (uint32_t rnd = 0; rnd < 5000; rnd += 37) {
        int64_t d1 = send_backoff(1, 1000, 60000, -1, rnd);
        int64_t d3 = send_backoff(3, 1000, 60000, -1, rnd);
        int64_t d20 = send_backoff(20, 1000, 60000, -1, rnd);
        assert_true(d1 >= 500 && d1 <= 1000);
        assert_true(d3 >= 2000 && d3 <= 4000);
        assert_true(d20 >= 30000 && d20 <= 60000);
        /* Retry-After wins when longer, with at most 10% (1 s) more. */
        int64_t ra = send_backoff(1, 1000, 60000, 5000, rnd);
        assert_true(ra >= 5000 && ra <= 5500);
        int64_t big = send_backoff(1, 1000, 60000, 120000, rnd);
        assert_true(big >= 120000 && big <= 121000);
        /* ... and never shortens the backoff. */
        assert_true(send_backoff(3, 1000, 60000, 0, rnd) >= 2000);
    }
    /* Huge attempt counts do not overflow. */
    assert_true(send_backoff(1000000, 100, 600000, -1, 7) <= 600000);
}

static void test_retry_after(void **state)
{
    (void)state;
    assert_int_equal(send_retry_after("2", 0), 2000);
    assert_int_equal(send_retry_after(" 30\r\n", 0), 30000);
    assert_int_equal(send_retry_after("0", 0), 0);
    assert_int_equal(send_retry_after("", 0), -1);
    assert_int_equal(send_retry_after("soon", 0), -1);
    /* An HTTP date: 2015-10-21 07:28:00 UTC is 1445412480. */
    assert_int_equal(send_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470), 10000);
    assert_int_equal(send_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412490), 0);
}

static void test_mail_addr(void **state)
{
    (void)state;
    char a[100];
    assert_int_equal(send_mail_addr("Jabuti <help@jabuti.example>", a, sizeof a), 0);
    assert_string_equal(a, "help@jabuti.example");
    assert_int_equal(send_mail_addr("  help@jabuti.example ", a, sizeof a), 0);
    assert_string_equal(a, "help@jabuti.example");
    assert_int_equal(send_mail_addr("Jabuti", a, sizeof a), -1);
    assert_int_equal(send_mail_addr("Jabuti <help@x", a, sizeof a), -1);
    assert_int_equal(send_mail_addr("a b@x", a, sizeof a), -1);
}

static void test_mail_threading(void **state)
{
    (void)state;
    struct env *e = s_env("{\"v\":1,\"id\":\"01JSEND0000000000000000001\",\"ts\":1,\"channel\":\"email\","
                          "\"dir\":\"out\",\"to\":\"mailto:ana@example.com\",\"subject\":\"Pedido 1\","
                          "\"text\":\"ok\",\"meta\":{\"message_id\":\"p2@m.example\","
                          "\"references\":[\"<p0@m.example>\",\"<p1@m.example> <p2@m.example>\"]}}");
    struct buf out = { 0 };
    char err[200], h[2000];
    assert_int_equal(send_mail_build(e, "Help <help@jabuti.example>", 1445412480000ULL, &out, err, sizeof err), 0);
    assert_string_equal(s_header(out.data, "From", h, sizeof h), "Help <help@jabuti.example>");
    assert_string_equal(s_header(out.data, "To", h, sizeof h), "<ana@example.com>");
    assert_string_equal(s_header(out.data, "Subject", h, sizeof h), "Re: Pedido 1");
    assert_string_equal(s_header(out.data, "Date", h, sizeof h), "Wed, 21 Oct 2015 07:28:00 +0000");
    assert_string_equal(s_header(out.data, "Message-ID", h, sizeof h),
                        "<01JSEND0000000000000000001@jabuti.example>");
    assert_string_equal(s_header(out.data, "In-Reply-To", h, sizeof h), "<p2@m.example>");
    /* The parent ends References once, though meta already had it. */
    assert_string_equal(s_header(out.data, "References", h, sizeof h),
                        "<p0@m.example> <p1@m.example> <p2@m.example>");
    env_destroy(&e);

    /* No parent: no In-Reply-To, no References; "Re:" is not doubled. */
    e = s_env("{\"v\":1,\"id\":\"01JSEND0000000000000000002\",\"ts\":1,\"channel\":\"email\","
              "\"dir\":\"out\",\"to\":\"mailto:ana@example.com\",\"subject\":\"RE: x\",\"text\":\"ok\"}");
    assert_int_equal(send_mail_build(e, "help@jabuti.example", 0, &out, err, sizeof err), 0);
    assert_null(s_header(out.data, "In-Reply-To", h, sizeof h));
    assert_null(s_header(out.data, "References", h, sizeof h));
    assert_string_equal(s_header(out.data, "Subject", h, sizeof h), "RE: x");
    env_destroy(&e);
    buf_free(&out);
}

static void test_mail_encoding(void **state)
{
    (void)state;
    /* A subject with CR LF cannot add a header; UTF-8 is encoded-words. */
    struct env *e = s_env("{\"v\":1,\"id\":\"01JSEND0000000000000000003\",\"ts\":1,\"channel\":\"email\","
                          "\"dir\":\"out\",\"to\":\"mailto:ana@example.com\","
                          "\"subject\":\"Ol\\u00e1\\r\\nBcc: evil@example.com\","
                          "\"text\":\".start\\nlinha com acentua\\u00e7\\u00e3o = sinal \\n"
                          "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890\"}");
    struct buf out = { 0 };
    char err[200], h[2000];
    assert_int_equal(send_mail_build(e, "help@jabuti.example", 0, &out, err, sizeof err), 0);
    assert_null(s_header(out.data, "Bcc", h, sizeof h));
    assert_non_null(s_header(out.data, "Subject", h, sizeof h));
    assert_non_null(strstr(h, "=?UTF-8?B?"));
    const char *body = strstr(out.data, "\r\n\r\n") + 4;
    /* A leading dot is encoded, '=' and non-ASCII are =XX, trailing
     * blanks are encoded, and no line passes 76 characters. */
    assert_true(strncmp(body, "=2Estart\r\n", 10) == 0);
    assert_non_null(strstr(body, "acentua=C3=A7=C3=A3o =3D sinal=20\r\n"));
    for (const char *p = body; *p != '\0';) {
        const char *eol = strstr(p, "\r\n");
        assert_non_null(eol);
        assert_true(eol - p <= 76);
        p = eol + 2;
    }
    env_destroy(&e);

    /* Not a mailto: handle: refused with a reason. */
    e = s_env("{\"v\":1,\"id\":\"01JSEND0000000000000000004\",\"ts\":1,\"channel\":\"email\","
              "\"dir\":\"out\",\"to\":\"tel:+5511987654321\",\"text\":\"x\"}");
    assert_int_equal(send_mail_build(e, "help@jabuti.example", 0, &out, err, sizeof err), -1);
    assert_string_equal(err, "to is not a mailto: address");
    env_destroy(&e);
    buf_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_http_class),
        cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_mail_addr),
        cmocka_unit_test(test_mail_threading),
        cmocka_unit_test(test_mail_encoding),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
