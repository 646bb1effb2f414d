/* utf8 — strict UTF-8 validation (RFC 3629: no overlongs, no surrogates,
 * nothing above U+10FFFF), shared by the envelope and JSON parsers. */
#ifndef OMNI_UTF8_H
#define OMNI_UTF8_H

#include <stddef.h>

/* Returns the length of the valid prefix of s[0..n): n when all of it is
 * valid UTF-8, otherwise the byte offset of the first bad sequence. */
size_t utf8_valid_prefix(const char *s, size_t n);

/* True when s[0..n) is valid UTF-8. */
static inline int utf8_is_valid(const char *s, size_t n)
{
    return utf8_valid_prefix(s, n) == n;
}

#endif
