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
    /* 16 characters of randomness: 80 bits, 5 at a time, most significant
     * first: 12 from the first 8 bytes (60 bits), 4 from the 20 left. */
    uint64_t hi = 0;
    for (int i = 0; i < 8; i++) {
        hi = hi << 8 | rand[i];
    }
    for (int i = 0; i < 12; i++) {
        out[10 + i] = s_alphabet[(hi >> (59 - 5 * i)) & 31];
    }
    uint32_t lo = (uint32_t)(hi & 15) << 16 | (uint32_t)rand[8] << 8 | rand[9];
    for (int i = 0; i < 4; i++) {
        out[22 + i] = s_alphabet[(lo >> (15 - 5 * i)) & 31];
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

/* One more than the value of each character of the alphabet; 0 for every
 * other byte. */
static const uint8_t s_values[256] = {
    ['0'] = 1, ['1'] = 2, ['2'] = 3, ['3'] = 4, ['4'] = 5,
    ['5'] = 6, ['6'] = 7, ['7'] = 8, ['8'] = 9, ['9'] = 10,
    ['A'] = 11, ['B'] = 12, ['C'] = 13, ['D'] = 14, ['E'] = 15, ['F'] = 16,
    ['G'] = 17, ['H'] = 18, ['J'] = 19, ['K'] = 20, ['M'] = 21, ['N'] = 22,
    ['P'] = 23, ['Q'] = 24, ['R'] = 25, ['S'] = 26, ['T'] = 27, ['V'] = 28,
    ['W'] = 29, ['X'] = 30, ['Y'] = 31, ['Z'] = 32,
};

static int s_value(char c)
{
    return (int)s_values[(unsigned char)c] - 1;
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
