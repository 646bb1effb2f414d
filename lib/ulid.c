/* ulid — see ulid.h. */
#include "ulid.h"

#include <assert.h>
#include <errno.h>
#include <string.h>
#include <sys/random.h>

#include <openssl/evp.h>

static const char s_alphabet[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

static void s_encode(uint64_t ms, const uint8_t rand[10], char out[ULID_LEN + 1])
{
    /* 10 characters of time (50 bits, top 2 always 0 for 48-bit times). */
    for (int i = 9; i >= 0; i--) {
        out[i] = s_alphabet[ms & 31];
        ms >>= 5;
    }
    /* 16 characters of randomness: 80 bits, 5 at a time. */
    int bit = 0;
    for (int i = 0; i < 16; i++) {
        unsigned v = 0;
        for (int k = 0; k < 5; k++, bit++) {
            v = v << 1 | ((rand[bit / 8] >> (7 - bit % 8)) & 1);
        }
        out[10 + i] = s_alphabet[v];
    }
    out[ULID_LEN] = '\0';
}

int ulid_next(struct ulid_gen *g, uint64_t ms, char out[ULID_LEN + 1])
{
    ms &= 0xFFFFFFFFFFFFULL;
    if (ms > g->last_ms) {
        size_t got = 0;
        while (got < sizeof g->rand) {
            ssize_t n = getrandom(g->rand + got, sizeof g->rand - got, 0);
            if (n < 0) {
                if (errno == EINTR) {
                    continue;
                }
                return -1;
            }
            got += (size_t)n;
        }
        /* Leave headroom so increments within one ms do not overflow. */
        g->rand[0] &= 0x7F;
        g->last_ms = ms;
    } else {
        /* Same ms or the clock stepped back: keep the time, count up. */
        for (int i = 9; i >= 0; i--) {
            if (++g->rand[i] != 0) {
                break;
            }
        }
    }
    s_encode(g->last_ms, g->rand, out);
    return 0;
}

static int s_value(char c)
{
    const char *p = strchr(s_alphabet, c);
    return (c != '\0' && p != NULL) ? (int)(p - s_alphabet) : -1;
}

bool ulid_valid(const char *s, size_t n)
{
    if (n != ULID_LEN) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (s_value(s[i]) < 0) {
            return false;
        }
    }
    return s[0] <= '7';     /* 48-bit time: first character at most 7 */
}

uint64_t ulid_time(const char *s)
{
    uint64_t ms = 0;
    for (int i = 0; i < 10; i++) {
        ms = ms << 5 | (uint64_t)s_value(s[i]);
    }
    return ms;
}

void ulid_derive(const char *parent, const char *salt, char out[ULID_LEN + 1])
{
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    assert(c != NULL);      /* only out of memory */
    EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    EVP_DigestUpdate(c, parent, strlen(parent));
    EVP_DigestUpdate(c, "", 1);
    EVP_DigestUpdate(c, salt, strlen(salt));
    EVP_DigestFinal_ex(c, md, &mdlen);
    EVP_MD_CTX_free(c);
    uint64_t ms = ulid_valid(parent, strlen(parent)) ? ulid_time(parent) : 0;
    s_encode(ms, md, out);
}
