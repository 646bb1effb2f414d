/* sig — HMACs, constant-time comparison, hex, base64, and the channels'
 * signature schemes; see sig.h. */
#include "sig.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "buf.h"

int sig_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t n,
                    unsigned char out[SIG_SHA256_LEN])
{
    unsigned len = 0;
    if (keylen > 0x7fffffff || HMAC(EVP_sha256(), key, (int)keylen, msg, n, out, &len) == NULL
        || len != SIG_SHA256_LEN) {
        return -1;
    }
    return 0;
}

int sig_hmac_sha1(const void *key, size_t keylen, const void *msg, size_t n,
                  unsigned char out[SIG_SHA1_LEN])
{
    unsigned len = 0;
    if (keylen > 0x7fffffff || HMAC(EVP_sha1(), key, (int)keylen, msg, n, out, &len) == NULL
        || len != SIG_SHA1_LEN) {
        return -1;
    }
    return 0;
}

bool sig_equal(const void *a, const void *b, size_t n)
{
    return CRYPTO_memcmp(a, b, n) == 0;
}

bool sig_equal_str(const char *a, const char *b)
{
    /* Digests first: equal length, so the comparison says nothing about
     * where (or whether in length) the two differ. */
    unsigned char da[32], db[32];
    unsigned la = 0, lb = 0;
    if (EVP_Digest(a, strlen(a), da, &la, EVP_sha256(), NULL) != 1
        || EVP_Digest(b, strlen(b), db, &lb, EVP_sha256(), NULL) != 1 || la != 32 || lb != 32) {
        return false;
    }
    bool same = CRYPTO_memcmp(da, db, sizeof da) == 0;
    /* And the real strings, so that a digest collision is no way in. */
    return same && strcmp(a, b) == 0;
}

void sig_hex(const unsigned char *p, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[p[i] >> 4];
        out[2 * i + 1] = hex[p[i] & 15];
    }
    out[2 * n] = '\0';
}

static int s_hexval(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

int sig_hex_decode(const char *s, size_t slen, unsigned char *out, size_t outn)
{
    if (slen != 2 * outn) {
        return -1;
    }
    for (size_t i = 0; i < outn; i++) {
        int hi = s_hexval(s[2 * i]);
        int lo = s_hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            return -1;
        }
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

long sig_base64(const void *p, size_t n, char *out, size_t outn)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *b = p;
    size_t need = (n + 2) / 3 * 4;
    if (outn < need + 1) {
        return -1;
    }
    size_t k = 0;
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        unsigned v = (unsigned)b[i] << 16 | (unsigned)b[i + 1] << 8 | b[i + 2];
        out[k++] = tab[v >> 18];
        out[k++] = tab[(v >> 12) & 63];
        out[k++] = tab[(v >> 6) & 63];
        out[k++] = tab[v & 63];
    }
    if (i < n) {
        unsigned v = (unsigned)b[i] << 16 | (i + 1 < n ? (unsigned)b[i + 1] << 8 : 0);
        out[k++] = tab[v >> 18];
        out[k++] = tab[(v >> 12) & 63];
        out[k++] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        out[k++] = '=';
    }
    out[k] = '\0';
    return (long)k;
}

static int s_b64val(char c)
{
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }
    if (c == '+' || c == '-') {
        return 62;
    }
    if (c == '/' || c == '_') {
        return 63;
    }
    return -1;
}

long sig_base64_decode(const char *s, size_t n, unsigned char *out, size_t outn)
{
    while (n > 0 && s[n - 1] == '=') {
        n--;
    }
    if (n % 4 == 1) {
        return -1;
    }
    size_t k = 0;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = s_b64val(s[i]);
        if (v < 0) {
            return -1;
        }
        acc = (acc << 6 | (unsigned)v) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (k >= outn) {
                return -1;
            }
            out[k++] = (unsigned char)(acc >> bits);
        }
    }
    return (long)k;
}

bool sig_check_sha256_header(const char *secret, const void *body, size_t n, const char *header)
{
    if (secret == NULL || header == NULL || strncmp(header, "sha256=", 7) != 0) {
        return false;
    }
    unsigned char want[SIG_SHA256_LEN], got[SIG_SHA256_LEN];
    const char *hex = header + 7;
    if (sig_hex_decode(hex, strlen(hex), got, sizeof got) != 0) {
        return false;
    }
    if (sig_hmac_sha256(secret, strlen(secret), body, n, want) != 0) {
        return false;
    }
    return sig_equal(want, got, sizeof want);
}

static int s_param_cmp(const void *a, const void *b)
{
    const struct sig_param *x = a;
    const struct sig_param *y = b;
    int c = strcmp(x->key, y->key);
    return c != 0 ? c : strcmp(x->value, y->value);
}

int sig_twilio(const char *token, const char *url, const struct sig_param *params, size_t n,
               char out[SIG_TWILIO_LEN + 1])
{
    int rc = -1;
    struct buf s = { 0 };
    struct sig_param *sorted = NULL;
    if (n > 0) {
        sorted = malloc(n * sizeof *sorted);
        if (sorted == NULL) {
            goto done;
        }
        memcpy(sorted, params, n * sizeof *sorted);
        qsort(sorted, n, sizeof *sorted, s_param_cmp);
    }
    if (buf_reserve(&s, 256) != 0 || buf_puts(&s, url) != 0) {
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        if (buf_puts(&s, sorted[i].key) != 0 || buf_puts(&s, sorted[i].value) != 0) {
            goto done;
        }
    }
    unsigned char mac[SIG_SHA1_LEN];
    if (sig_hmac_sha1(token, strlen(token), s.data, s.len, mac) != 0) {
        goto done;
    }
    if (sig_base64(mac, sizeof mac, out, SIG_TWILIO_LEN + 1) != SIG_TWILIO_LEN) {
        goto done;
    }
    rc = 0;
done:
    free(sorted);
    buf_free(&s);
    return rc;
}

bool sig_check_twilio(const char *token, const char *url, const struct sig_param *params,
                      size_t n, const char *header)
{
    if (token == NULL || url == NULL || header == NULL) {
        return false;
    }
    char want[SIG_TWILIO_LEN + 1];
    if (sig_twilio(token, url, params, n, want) != 0 || strlen(header) != SIG_TWILIO_LEN) {
        return false;
    }
    return sig_equal(want, header, SIG_TWILIO_LEN);
}
