/* test_sig — unit tests of lib/sig.c against published test vectors:
 * RFC 4231 (HMAC-SHA256), RFC 2202 (HMAC-SHA1), RFC 4648 (base64),
 * GitHub's X-Hub-Signature-256 example (the scheme Meta uses), and Twilio's
 * documented request-validation example. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "sig.h"

static void s_hex_of(const unsigned char *p, size_t n, char *out)
{
    sig_hex(p, n, out);
}

static void test_hmac_sha256_rfc4231(void **state)
{
    (void)state;
    unsigned char key[20];
    memset(key, 0x0b, sizeof key);
    unsigned char mac[SIG_SHA256_LEN];
    char hex[2 * SIG_SHA256_LEN + 1];
    assert_int_equal(sig_hmac_sha256(key, sizeof key, "Hi There", 8, mac), 0);
    s_hex_of(mac, sizeof mac, hex);
    assert_string_equal(hex, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    const char *d2 = "what do ya want for nothing?";
    assert_int_equal(sig_hmac_sha256("Jefe", 4, d2, strlen(d2), mac), 0);
    s_hex_of(mac, sizeof mac, hex);
    assert_string_equal(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

static void test_hmac_sha1_rfc2202(void **state)
{
    (void)state;
    unsigned char key[20];
    memset(key, 0x0b, sizeof key);
    unsigned char mac[SIG_SHA1_LEN];
    char hex[2 * SIG_SHA1_LEN + 1];
    assert_int_equal(sig_hmac_sha1(key, sizeof key, "Hi There", 8, mac), 0);
    s_hex_of(mac, sizeof mac, hex);
    assert_string_equal(hex, "b617318655057264e28bc0b6fb378c8ef146be00");
    const char *d2 = "what do ya want for nothing?";
    assert_int_equal(sig_hmac_sha1("Jefe", 4, d2, strlen(d2), mac), 0);
    s_hex_of(mac, sizeof mac, hex);
    assert_string_equal(hex, "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
}

static void test_base64_rfc4648(void **state)
{
    (void)state;
    static const char *const plain[] = { "", "f", "fo", "foo", "foob", "fooba", "foobar" };
    static const char *const coded[] = { "", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy" };
    for (size_t i = 0; i < 7; i++) {
        char out[16];
        assert_int_equal(sig_base64(plain[i], strlen(plain[i]), out, sizeof out), (long)strlen(coded[i]));
        assert_string_equal(out, coded[i]);
        unsigned char back[16];
        long n = sig_base64_decode(coded[i], strlen(coded[i]), back, sizeof back);
        assert_int_equal(n, (long)strlen(plain[i]));
        assert_memory_equal(back, plain[i], (size_t)n);
        /* Without padding, as base64url writes it. */
        size_t bare = strcspn(coded[i], "=");
        assert_int_equal(sig_base64_decode(coded[i], bare, back, sizeof back), (long)strlen(plain[i]));
    }
    unsigned char b[8];
    assert_int_equal(sig_base64_decode("-_8", 3, b, sizeof b), 2);    /* url alphabet */
    assert_int_equal(b[0], 0xfb);
    assert_int_equal(b[1], 0xff);
    assert_int_equal(sig_base64_decode("Zm9v!", 5, b, sizeof b), -1);
    assert_int_equal(sig_base64_decode("Z", 1, b, sizeof b), -1);
    assert_int_equal(sig_base64_decode("Zm9vYmFy", 8, b, 5), -1);     /* no room */
    char small[4];
    assert_int_equal(sig_base64("foo", 3, small, sizeof small), -1);
}

static void test_hex(void **state)
{
    (void)state;
    unsigned char b[3];
    assert_int_equal(sig_hex_decode("0aFf10", 6, b, 3), 0);
    assert_int_equal(b[0], 0x0a);
    assert_int_equal(b[1], 0xff);
    assert_int_equal(b[2], 0x10);
    assert_int_equal(sig_hex_decode("0aFf1", 5, b, 3), -1);
    assert_int_equal(sig_hex_decode("0aFg10", 6, b, 3), -1);
    char out[7];
    sig_hex(b, 3, out);
    assert_string_equal(out, "0aff10");
}

/* GitHub's documented example of X-Hub-Signature-256, the header Meta
 * sends for WhatsApp and Messenger. */
static void test_hub_signature(void **state)
{
    (void)state;
    const char *secret = "It's a Secret to Everybody";
    const char *body = "Hello, World!";
    const char *good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    const char *upper = "sha256=757107EA0EB2509FC211221CCE984B8A37570B6D7586C22C46F4379C8B043E17";
    assert_true(sig_check_sha256_header(secret, body, strlen(body), good));
    assert_true(sig_check_sha256_header(secret, body, strlen(body), upper));
    assert_false(sig_check_sha256_header(secret, body, strlen(body) - 1, good));
    assert_false(sig_check_sha256_header("another secret", body, strlen(body), good));
    assert_false(sig_check_sha256_header(secret, body, strlen(body), good + 7));   /* no "sha256=" */
    assert_false(sig_check_sha256_header(secret, body, strlen(body),
                 "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e1"));
    assert_false(sig_check_sha256_header(secret, body, strlen(body),
                 "sha1=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"));
    assert_false(sig_check_sha256_header(secret, body, strlen(body), NULL));
    assert_false(sig_check_sha256_header(secret, body, strlen(body), ""));
}

/* Twilio's documented example ("Validating Signatures from Twilio"). */
static void test_twilio_vector(void **state)
{
    (void)state;
    const char *url = "https://mycompany.com/myapp.php?foo=1&bar=2";
    /* Out of order on purpose: the signature sorts them. */
    struct sig_param p[] = {
        { "To", "+18005551212" },
        { "CallSid", "CA1234567890ABCDE" },
        { "Digits", "1234" },
        { "From", "+12349013030" },
        { "Caller", "+12349013030" },
    };
    char sig[SIG_TWILIO_LEN + 1];
    assert_int_equal(sig_twilio("12345", url, p, 5, sig), 0);
    assert_string_equal(sig, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
    assert_true(sig_check_twilio("12345", url, p, 5, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
    assert_false(sig_check_twilio("12346", url, p, 5, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
    assert_false(sig_check_twilio("12345", "https://mycompany.com/myapp.php", p, 5,
                                  "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
    assert_false(sig_check_twilio("12345", url, p, 4, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
    assert_false(sig_check_twilio("12345", url, p, 5, "0/KCTR6DLpKmkAf8muzZqo1nDgQ"));
    assert_false(sig_check_twilio("12345", url, p, 5, NULL));
    /* No parameters: the URL alone. */
    assert_int_equal(sig_twilio("12345", url, NULL, 0, sig), 0);
    assert_int_equal(strlen(sig), SIG_TWILIO_LEN);
}

static void test_equal_str(void **state)
{
    (void)state;
    assert_true(sig_equal_str("verify-me", "verify-me"));
    assert_false(sig_equal_str("verify-me", "verify-mE"));
    assert_false(sig_equal_str("verify-me", "verify-me2"));
    assert_false(sig_equal_str("", "x"));
    assert_true(sig_equal_str("", ""));
    assert_true(sig_equal("abc", "abc", 3));
    assert_false(sig_equal("abc", "abd", 3));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hmac_sha256_rfc4231),
        cmocka_unit_test(test_hmac_sha1_rfc2202),
        cmocka_unit_test(test_base64_rfc4648),
        cmocka_unit_test(test_hex),
        cmocka_unit_test(test_hub_signature),
        cmocka_unit_test(test_twilio_vector),
        cmocka_unit_test(test_equal_str),
    };
    return cmocka_run_group_tests_name("sig", tests, NULL, NULL);
}
