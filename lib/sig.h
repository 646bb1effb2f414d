/* sig — request signatures as the channels make them: HMAC-SHA256 and
 * HMAC-SHA1 (OpenSSL), compared in constant time, hex and base64, Meta's
 * "X-Hub-Signature-256: sha256=<hex>" and Twilio's "X-Twilio-Signature"
 * (base64 HMAC-SHA1 of the public URL followed by every POST parameter,
 * sorted by name, as name then value). */
#ifndef OMNI_SIG_H
#define OMNI_SIG_H

#include <stdbool.h>
#include <stddef.h>

#define SIG_SHA256_LEN 32   /* bytes of an HMAC-SHA256 */
#define SIG_SHA1_LEN 20     /* bytes of an HMAC-SHA1 */
#define SIG_TWILIO_LEN 28   /* characters of a Twilio signature (base64 of 20 bytes) */

/* HMAC-SHA256 / HMAC-SHA1 of msg[0..n) with key[0..keylen). Return 0, or -1
 * when OpenSSL fails. */
int sig_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t n,
                    unsigned char out[SIG_SHA256_LEN]);
int sig_hmac_sha1(const void *key, size_t keylen, const void *msg, size_t n,
                  unsigned char out[SIG_SHA1_LEN]);

/* Compares a[0..n) and b[0..n) in time that depends only on n. */
bool sig_equal(const void *a, const void *b, size_t n);
/* Compares two secrets (NUL-terminated) without leaking where they differ;
 * the time depends on the lengths only. */
bool sig_equal_str(const char *a, const char *b);

/* Writes p[0..n) as lower-case hex into out[2n + 1]. */
void sig_hex(const unsigned char *p, size_t n, char *out);
/* Decodes exactly outn bytes of hex (either case) from s[0..slen).
 * Returns 0, or -1 when s is not 2 * outn hex digits. */
int sig_hex_decode(const char *s, size_t slen, unsigned char *out, size_t outn);
/* Writes the padded base64 (RFC 4648) of p[0..n) into out[outn], NUL-
 * terminated. Returns its length, or -1 when out is too small. */
long sig_base64(const void *p, size_t n, char *out, size_t outn);
/* Decodes base64 in either alphabet (+/ or -_), padding optional, into
 * out[outn]. Returns the bytes written, or -1 when s is not base64 or out
 * is too small. */
long sig_base64_decode(const char *s, size_t n, unsigned char *out, size_t outn);

/* True when header is "sha256=<hex of HMAC-SHA256(body, secret)>" (Meta's
 * X-Hub-Signature-256; the generic endpoint's X-Omnibus-Signature). */
bool sig_check_sha256_header(const char *secret, const void *body, size_t n, const char *header);

/* One form parameter, already percent-decoded. */
struct sig_param {
    const char *key;        /* parameter name */
    const char *value;      /* its value */
};

/* Twilio's signature of a request to url with the given POST parameters
 * (in any order; they are sorted here, by name and then value), written
 * NUL-terminated into out. Returns 0, or -1 (out of memory, OpenSSL). */
int sig_twilio(const char *token, const char *url, const struct sig_param *params, size_t n,
               char out[SIG_TWILIO_LEN + 1]);
/* True when header is that signature. */
bool sig_check_twilio(const char *token, const char *url, const struct sig_param *params,
                      size_t n, const char *header);

#endif
