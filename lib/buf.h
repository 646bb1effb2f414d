/* buf — a growable byte buffer, reused across messages so that the hot path
 * allocates nothing once it has warmed up. */
#ifndef OMNI_BUF_H
#define OMNI_BUF_H

#include <stdarg.h>
#include <stddef.h>

struct buf {
    char *data;     /* bytes; NUL-terminated after every append */
    size_t len;     /* bytes in use, not counting the NUL */
    size_t cap;     /* bytes allocated */
};

/* Makes room for n more bytes (plus the NUL). Returns 0, or -1 when out of
 * memory (the buffer is unchanged). */
int buf_reserve(struct buf *b, size_t n);
int buf_append(struct buf *b, const void *p, size_t n);
int buf_putc(struct buf *b, char c);
int buf_puts(struct buf *b, const char *s);
int buf_printf(struct buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int buf_vprintf(struct buf *b, const char *fmt, va_list ap);
/* Forgets the contents, keeps the memory. */
void buf_reset(struct buf *b);
/* Frees the memory; the buffer may be used again afterwards. */
void buf_free(struct buf *b);
/* Appends s as a JSON string literal, quotes included; invalid UTF-8 becomes
 * U+FFFD so the output is always valid JSON. */
int buf_json_str(struct buf *b, const char *s, size_t n);
/* Appends the base64 (RFC 4648, padded) encoding of p[0..n). */
int buf_base64(struct buf *b, const void *p, size_t n);

#endif
