/* handle — handle normalisation; see handle.h. */
#include "handle.h"

#include <stdio.h>
#include <string.h>

#define MAX_DIGITS 20           /* digits read before a number is too long */

static bool s_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static char s_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

static int s_fail(char *why, size_t whyn, const char *reason)
{
    if (why != NULL && whyn > 0) {
        snprintf(why, whyn, "%s", reason);
    }
    return -1;
}

size_t handle_scheme_len(const char *s)
{
    /* scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) */
    const char *c = s;
    if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z'))) {
        return 0;
    }
    for (c++; *c != ':'; c++) {
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9')
              || *c == '+' || *c == '-' || *c == '.')) {
            return 0;
        }
    }
    return (size_t)(c - s);
}

int handle_phone(const char *s, size_t len, int country, char out[HANDLE_E164_MAX],
                 char *why, size_t whyn)
{
    char digits[MAX_DIGITS + 1];
    size_t nd = 0;
    bool plus = false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c >= '0' && c <= '9') {
            if (nd == MAX_DIGITS) {
                return s_fail(why, whyn, "too many digits for a phone number");
            }
            digits[nd++] = c;
        } else if (c == '+') {
            if (plus || nd > 0) {
                return s_fail(why, whyn, "'+' only at the start of a phone number");
            }
            plus = true;
        } else if (c == ' ' || c == '-' || c == '.' || c == '(' || c == ')' || c == '\t') {
            continue;
        } else {
            char msg[80];
            if ((unsigned char)c >= 0x20 && (unsigned char)c < 0x7f) {
                snprintf(msg, sizeof msg, "unexpected '%c' in a phone number", c);
            } else {
                snprintf(msg, sizeof msg, "unexpected byte 0x%02x in a phone number", (unsigned char)c);
            }
            return s_fail(why, whyn, msg);
        }
    }
    digits[nd] = '\0';
    if (nd == 0) {
        return s_fail(why, whyn, "no digits in a phone number");
    }
    char intl[MAX_DIGITS + 8];
    if (plus) {
        snprintf(intl, sizeof intl, "%s", digits);
    } else if (nd >= 2 && digits[0] == '0' && digits[1] == '0') {
        snprintf(intl, sizeof intl, "%s", digits + 2);      /* 00: international prefix */
    } else {
        if (country < 1 || country > 999) {
            return s_fail(why, whyn, "a national number, and no default country");
        }
        const char *nat = digits;
        bool trunk = false;
        /* The trunk prefix 0 (ITU-T's common one) is not part of the number;
         * Italy (39) keeps its 0. */
        if (nat[0] == '0' && country != 39) {
            nat++;
            trunk = true;
        }
        size_t nl = strlen(nat);
        bool international = false;
        if (country == 55) {
            /* Brazil: area code + 8 or 9 digits. After the trunk 0 may come a
             * two-digit carrier selection code (0 21 11 98765-4321); without
             * it, 12 or 13 digits starting 55 are an international number
             * written without its "+". */
            if (trunk && (nl == 12 || nl == 13)) {
                nat += 2;
                nl -= 2;
            } else if (!trunk && (nl == 12 || nl == 13) && nat[0] == '5' && nat[1] == '5') {
                international = true;
            }
            if (!international && (nl < 10 || nl > 11)) {
                return s_fail(why, whyn,
                              "a Brazilian number has 10 or 11 digits with its area code");
            }
        }
        if (international) {
            snprintf(intl, sizeof intl, "%s", nat);
        } else {
            snprintf(intl, sizeof intl, "%d%s", country, nat);
        }
    }
    size_t il = strlen(intl);
    if (il == 0 || intl[0] == '0') {
        return s_fail(why, whyn, "a country code never starts with 0");
    }
    if (il < 8 || il > 15) {
        char msg[80];
        snprintf(msg, sizeof msg, "%zu digits: an E.164 number has 8 to 15", il);
        return s_fail(why, whyn, msg);
    }
    out[0] = '+';
    memcpy(out + 1, intl, il + 1);
    return 0;
}

/* local@domain, lower-cased into out. */
static int s_mail(const char *s, size_t len, char *out, size_t n, char *why, size_t whyn)
{
    const char *at = NULL;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f || s_space((char)c)) {
            return s_fail(why, whyn, "spaces or control characters in an e-mail address");
        }
        if (strchr("<>()[],;:\"\\?%", (char)c) != NULL) {
            char msg[80];
            snprintf(msg, sizeof msg, "unexpected '%c' in an e-mail address", c);
            return s_fail(why, whyn, msg);
        }
        if (c == '@') {
            if (at != NULL) {
                return s_fail(why, whyn, "more than one '@' in an e-mail address");
            }
            at = s + i;
        }
    }
    if (at == NULL) {
        return s_fail(why, whyn, "no '@' in an e-mail address");
    }
    size_t local = (size_t)(at - s);
    size_t dlen = len - local - 1;
    const char *dom = at + 1;
    if (local == 0 || local > 64) {
        return s_fail(why, whyn, "the part before '@' must have 1 to 64 bytes");
    }
    if (dlen == 0 || dlen > 255 || dom[0] == '.' || dom[dlen - 1] == '.'
        || memmem(dom, dlen, "..", 2) != NULL) {
        return s_fail(why, whyn, "not a domain after '@'");
    }
    for (size_t i = 0; i < dlen; i++) {
        unsigned char c = (unsigned char)dom[i];
        if (!(c >= 0x80 || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
              || (c >= '0' && c <= '9') || c == '-' || c == '.')) {
            return s_fail(why, whyn, "not a domain after '@'");
        }
    }
    if (len + 8 > n) {
        return s_fail(why, whyn, "too long");
    }
    memcpy(out, "mailto:", 7);
    for (size_t i = 0; i < len; i++) {
        out[7 + i] = s_lower(s[i]);
    }
    out[7 + len] = '\0';
    return 0;
}

/* Only phone characters: digits, "+", and visual separators. */
static bool s_phoneish(const char *s, size_t len)
{
    bool digit = false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c >= '0' && c <= '9') {
            digit = true;
        } else if (!strchr("+ -.()\t", c)) {
            return false;
        }
    }
    return digit;
}

int handle_normalise(const char *s, int country, char *out, size_t n, char *why, size_t whyn)
{
    while (s_space(*s)) {
        s++;
    }
    size_t len = strlen(s);
    while (len > 0 && s_space(s[len - 1])) {
        len--;
    }
    if (len == 0) {
        return s_fail(why, whyn, "empty handle");
    }
    if (len > HANDLE_MAX) {
        return s_fail(why, whyn, "handle longer than 1024 bytes");
    }
    size_t sl = handle_scheme_len(s);
    if (sl == 0 || sl >= len || sl > 32) {
        return s_fail(why, whyn, "not a handle URI (scheme:id, e.g. tel:+5511987654321)");
    }
    char scheme[40];
    for (size_t i = 0; i < sl; i++) {
        scheme[i] = s_lower(s[i]);
    }
    scheme[sl] = '\0';
    const char *rest = s + sl + 1;
    size_t rl = len - sl - 1;
    for (size_t i = 0; i < rl; i++) {
        unsigned char c = (unsigned char)rest[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            return s_fail(why, whyn, "control character in a handle");
        }
    }
    bool phone = strcmp(scheme, "tel") == 0 || strcmp(scheme, "sms") == 0;
    bool whatsapp = strcmp(scheme, "whatsapp") == 0;
    if (phone || whatsapp || strcmp(scheme, "mailto") == 0) {
        while (rl > 0 && s_space(*rest)) {
            rest++;
            rl--;
        }
        if (rl == 0) {
            return s_fail(why, whyn, "nothing after the scheme");
        }
    }
    if (phone || (whatsapp && (rest[0] == '+' || s_phoneish(rest, rl)))) {
        char e164[HANDLE_E164_MAX];
        if (handle_phone(rest, rl, country, e164, why, whyn) != 0) {
            return -1;
        }
        snprintf(out, n, "%s:%s", whatsapp ? "whatsapp" : "tel", e164);
        return 0;
    }
    if (strcmp(scheme, "mailto") == 0) {
        return s_mail(rest, rl, out, n, why, whyn);
    }
    /* Channel ids as given, the scheme lower-cased; a business-scoped
     * WhatsApp id ("BR.1234…") is its own handle. */
    if (len + 1 > n) {
        return s_fail(why, whyn, "too long");
    }
    memcpy(out, scheme, sl);
    out[sl] = ':';
    memcpy(out + sl + 1, rest, rl);
    out[sl + 1 + rl] = '\0';
    return 0;
}

bool handle_is_phone(const char *s, const char *scheme, const char **e164)
{
    size_t sl = strlen(scheme);
    if (strncmp(s, scheme, sl) != 0 || s[sl] != ':' || s[sl + 1] != '+') {
        return false;
    }
    const char *p = s + sl + 2;
    if (*p == '\0') {
        return false;
    }
    for (const char *c = p; *c != '\0'; c++) {
        if (*c < '0' || *c > '9') {
            return false;
        }
    }
    *e164 = s + sl + 1;
    return true;
}
