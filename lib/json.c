/* json — cJSON with strict UTF-8 and located errors; see json.h. */
#include "json.h"

#include <stdio.h>
#include <string.h>

#include "utf8.h"

/* Line and column (1-based, columns in bytes) of offset off. */
static void s_locate(const char *s, size_t off, size_t *line, size_t *col)
{
    *line = 1;
    size_t start = 0;
    for (size_t i = 0; i < off; i++) {
        if (s[i] == '\n') {
            (*line)++;
            start = i + 1;
        }
    }
    *col = off - start + 1;
}

cJSON *json_parse(const char *s, size_t n, char *err, size_t errn)
{
    size_t line, col;
    size_t ok = utf8_valid_prefix(s, n);
    if (ok != n) {
        s_locate(s, ok, &line, &col);
        snprintf(err, errn, "line %zu, column %zu: invalid UTF-8", line, col);
        return NULL;
    }
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(s, n, &end, 0);
    if (j == NULL) {
        size_t off = (end != NULL && end >= s && end <= s + n) ? (size_t)(end - s) : 0;
        s_locate(s, off, &line, &col);
        if (off >= n) {
            snprintf(err, errn, "line %zu, column %zu: unexpected end of document", line, col);
        } else {
            /* Show a little of what follows, up to the end of that line. */
            int shown = 0;
            while (shown < 12 && off + (size_t)shown < n && s[off + (size_t)shown] != '\n') {
                shown++;
            }
            snprintf(err, errn, "line %zu, column %zu: syntax error near '%.*s'", line, col, shown, s + off);
        }
        return NULL;
    }
    size_t off = (size_t)(end - s);
    while (off < n && (s[off] == ' ' || s[off] == '\t' || s[off] == '\r' || s[off] == '\n')) {
        off++;
    }
    /* One NUL may end the text (a C string passed with its terminator);
     * anything else after the value, a NUL followed by more included, is
     * garbage. */
    if (off < n && !(s[off] == '\0' && off + 1 == n)) {
        s_locate(s, off, &line, &col);
        snprintf(err, errn, "line %zu, column %zu: text after the JSON value", line, col);
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}
