/* mail — RFC 5322 / MIME -> envelope with GMime 3; see mail.h for what is
 * kept. The HTML-to-text converter, the quote trimmer and the charset
 * cleaner are plain C over UTF-8 bytes, so the unit tests can reach them. */
#include "mail.h"

#include <errno.h>
#include <iconv.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>
#include <gmime/gmime.h>

#include "handle.h"
#include "utf8.h"

#define S_MAX_DEPTH 32          /* MIME nesting walked */
#define S_MAX_NAME 255u         /* bytes of an attachment name kept */
#define S_MAX_REFS 20           /* message ids kept of References */
#define S_MAX_META 998u         /* bytes of a meta string (a header line) */
#define S_REPLACEMENT "\xef\xbf\xbd"

/* What the walk over the MIME tree collects. */
struct s_walk {
    struct buf plain;           /* text/plain body parts, UTF-8 */
    struct buf html;            /* text/html body parts as text, UTF-8 */
    struct buf tmp;             /* scratch for one part's bytes */
    struct buf conv;            /* scratch for one part in UTF-8 */
    cJSON *atts;                /* the attachments array */
    int n_atts;                 /* attachments listed */
    int omitted;                /* attachments over MAIL_MAX_ATTACHMENTS */
    bool oom;                   /* an allocation failed */
};

void mail_init(void)
{
    g_mime_init();
}

void mail_fini(void)
{
    g_mime_shutdown();
}

/* ---- UTF-8 ---------------------------------------------------------- */

/* Appends code point cp as UTF-8 (invalid ones as U+FFFD). */
static int s_put_cp(struct buf *out, uint32_t cp)
{
    char b[4];
    size_t n;
    if (cp == 0 || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) {
        return buf_puts(out, S_REPLACEMENT);
    }
    if (cp < 0x80) {
        b[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (char)(0xc0 | (cp >> 6));
        b[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (char)(0xe0 | (cp >> 12));
        b[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        b[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        b[0] = (char)(0xf0 | (cp >> 18));
        b[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        b[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        b[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    return buf_append(out, b, n);
}

/* Appends s[0..n) with invalid UTF-8 as U+FFFD, CRLF and CR as LF, and no
 * NUL bytes. */
static int s_clean(struct buf *out, const char *s, size_t n)
{
    int rc = 0;
    while (n > 0 && rc == 0) {
        size_t ok = utf8_valid_prefix(s, n);
        size_t start = 0;
        for (size_t i = 0; i < ok && rc == 0; i++) {
            if (s[i] == '\r' || s[i] == '\0') {
                rc |= buf_append(out, s + start, i - start);
                if (s[i] == '\r') {
                    rc |= buf_putc(out, '\n');
                    if (i + 1 < ok && s[i + 1] == '\n') {
                        i++;
                    }
                }
                start = i + 1;
            }
        }
        rc |= buf_append(out, s + start, ok - start);
        s += ok;
        n -= ok;
        if (n > 0) {
            rc |= buf_puts(out, S_REPLACEMENT);
            s++;
            n--;
        }
    }
    return rc;
}

/* Converts with iconv from charset; bytes it cannot read become U+FFFD.
 * Returns 0, 1 when iconv does not know the charset, -1 out of memory. */
static int s_iconv(const char *charset, const char *s, size_t n, struct buf *out)
{
    iconv_t cd = iconv_open("UTF-8", charset);
    if (cd == (iconv_t)-1) {
        return 1;
    }
    int rc = 0;
    char *in = (char *)s;
    size_t left = n;
    while (left > 0 && rc == 0) {
        if (buf_reserve(out, left * 4 + 16) != 0) {
            rc = -1;
            break;
        }
        char *o = out->data + out->len;
        size_t room = out->cap - out->len - 1;
        size_t r = iconv(cd, &in, &left, &o, &room);
        out->len = (size_t)(o - out->data);
        out->data[out->len] = '\0';
        if (r == (size_t)-1) {
            if (errno == E2BIG) {
                continue;
            }
            /* EILSEQ or EINVAL (truncated at the end): one byte is lost. */
            rc = buf_puts(out, S_REPLACEMENT);
            in++;
            left--;
            iconv(cd, NULL, NULL, NULL, NULL);
        }
    }
    iconv_close(cd);
    return rc;
}

int mail_to_utf8(const char *charset, const char *s, size_t n, struct buf *out)
{
    const char *cs = charset != NULL && charset[0] != '\0' ? g_mime_charset_canon_name(charset) : NULL;
    struct buf tmp = { 0 };
    int rc;
    bool utf8ish = cs == NULL || strcasecmp(cs, "us-ascii") == 0 || strcasecmp(cs, "utf-8") == 0;
    if (utf8ish && (utf8_is_valid(s, n) || (cs != NULL && strcasecmp(cs, "utf-8") == 0))) {
        return s_clean(out, s, n);
    }
    /* Undeclared 8-bit text that is not UTF-8, and iso-8859-1 (which
     * mailers mean as windows-1252, as browsers do). */
    const char *from = "WINDOWS-1252";
    if (!utf8ish && strcasecmp(cs, "iso-8859-1") != 0) {
        from = g_mime_charset_iconv_name(cs);
    }
    rc = s_iconv(from, s, n, &tmp);
    if (rc == 1) {
        /* A charset iconv does not know: the best guess. */
        buf_reset(&tmp);
        rc = utf8_is_valid(s, n) ? buf_append(&tmp, s, n) : s_iconv("WINDOWS-1252", s, n, &tmp);
    }
    if (rc == 0) {
        rc = s_clean(out, tmp.data ? tmp.data : "", tmp.len);
    }
    buf_free(&tmp);
    return rc < 0 ? -1 : 0;
}

/* A header string made fit for the envelope: valid UTF-8, control
 * characters as spaces, trimmed, at most max bytes (cut on a character). */
static char *s_field(const char *s, size_t max)
{
    if (s == NULL) {
        return NULL;
    }
    struct buf b = { 0 };
    if (s_clean(&b, s, strlen(s)) != 0) {
        buf_free(&b);
        return NULL;
    }
    if (b.data == NULL) {
        return strdup("");
    }
    for (size_t i = 0; i < b.len; i++) {
        if ((unsigned char)b.data[i] < 0x20 || b.data[i] == 0x7f) {
            b.data[i] = ' ';
        }
    }
    size_t start = 0;
    while (start < b.len && b.data[start] == ' ') {
        start++;
    }
    size_t end = b.len;
    while (end > start && b.data[end - 1] == ' ') {
        end--;
    }
    if (end - start > max) {
        end = start + max;
        while (end > start && ((unsigned char)b.data[end] & 0xc0) == 0x80) {
            end--;
        }
    }
    memmove(b.data, b.data + start, end - start);
    b.data[end - start] = '\0';
    return b.data;
}

/* ---- HTML to text --------------------------------------------------- */

/* Names of the code points 160..255 (HTML 4, in order). */
static const char *const s_latin1[96] = {
    "nbsp", "iexcl", "cent", "pound", "curren", "yen", "brvbar", "sect", "uml", "copy",
    "ordf", "laquo", "not", "shy", "reg", "macr", "deg", "plusmn", "sup2", "sup3",
    "acute", "micro", "para", "middot", "cedil", "sup1", "ordm", "raquo", "frac14",
    "frac12", "frac34", "iquest", "Agrave", "Aacute", "Acirc", "Atilde", "Auml", "Aring",
    "AElig", "Ccedil", "Egrave", "Eacute", "Ecirc", "Euml", "Igrave", "Iacute", "Icirc",
    "Iuml", "ETH", "Ntilde", "Ograve", "Oacute", "Ocirc", "Otilde", "Ouml", "times",
    "Oslash", "Ugrave", "Uacute", "Ucirc", "Uuml", "Yacute", "THORN", "szlig", "agrave",
    "aacute", "acirc", "atilde", "auml", "aring", "aelig", "ccedil", "egrave", "eacute",
    "ecirc", "euml", "igrave", "iacute", "icirc", "iuml", "eth", "ntilde", "ograve",
    "oacute", "ocirc", "otilde", "ouml", "divide", "oslash", "ugrave", "uacute", "ucirc",
    "uuml", "yacute", "thorn", "yuml"
};

/* Other named entities worth knowing. */
static const struct {
    const char *name;   /* without & and ; */
    uint32_t cp;        /* code point */
} s_entities[] = {
    { "amp", '&' }, { "lt", '<' }, { "gt", '>' }, { "quot", '"' }, { "apos", '\'' },
    { "ndash", 0x2013 }, { "mdash", 0x2014 }, { "lsquo", 0x2018 }, { "rsquo", 0x2019 },
    { "sbquo", 0x201a }, { "ldquo", 0x201c }, { "rdquo", 0x201d }, { "bdquo", 0x201e },
    { "hellip", 0x2026 }, { "bull", 0x2022 }, { "euro", 0x20ac }, { "trade", 0x2122 },
    { "dagger", 0x2020 }, { "Dagger", 0x2021 }, { "permil", 0x2030 }, { "lsaquo", 0x2039 },
    { "rsaquo", 0x203a }, { "OElig", 0x152 }, { "oelig", 0x153 }, { "Scaron", 0x160 },
    { "scaron", 0x161 }, { "Yuml", 0x178 }, { "fnof", 0x192 }, { "circ", 0x2c6 },
    { "tilde", 0x2dc }, { "ensp", ' ' }, { "emsp", ' ' }, { "thinsp", ' ' },
    { "larr", 0x2190 }, { "rarr", 0x2192 }, { "uarr", 0x2191 }, { "darr", 0x2193 },
    { "hearts", 0x2665 }, { "minus", 0x2212 },
};

/* windows-1252 for the C1 range, which &#128;..&#159; mean in practice. */
static const uint16_t s_cp1252[32] = {
    0x20ac, 0xfffd, 0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021, 0x02c6, 0x2030,
    0x0160, 0x2039, 0x0152, 0xfffd, 0x017d, 0xfffd, 0xfffd, 0x2018, 0x2019, 0x201c,
    0x201d, 0x2022, 0x2013, 0x2014, 0x02dc, 0x2122, 0x0161, 0x203a, 0x0153, 0xfffd,
    0x017e, 0x0178
};

/* Reads an entity at s[0..n) (s[0] == '&'). Returns the bytes it takes and
 * its code point in *cp (0: to be dropped), or 0 when it is not one. */
static size_t s_entity(const char *s, size_t n, uint32_t *cp)
{
    size_t i = 1;
    if (i < n && s[i] == '#') {
        i++;
        bool hex = i < n && (s[i] == 'x' || s[i] == 'X');
        i += hex;
        uint32_t v = 0;
        size_t digits = 0;
        while (i < n && digits < 8) {
            char c = s[i];
            int d = c >= '0' && c <= '9' ? c - '0'
                  : hex && c >= 'a' && c <= 'f' ? c - 'a' + 10
                  : hex && c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
            if (d < 0) {
                break;
            }
            v = v * (hex ? 16 : 10) + (uint32_t)d;
            i++;
            digits++;
        }
        if (digits == 0) {
            return 0;
        }
        if (i < n && s[i] == ';') {
            i++;
        }
        *cp = v >= 0x80 && v < 0xa0 ? s_cp1252[v - 0x80] : v == 0 ? 0xfffd : v;
        return i;
    }
    size_t len = 0;
    while (i + len < n && len < 10
           && ((s[i + len] >= 'a' && s[i + len] <= 'z') || (s[i + len] >= 'A' && s[i + len] <= 'Z')
               || (s[i + len] >= '0' && s[i + len] <= '9'))) {
        len++;
    }
    if (len == 0 || i + len >= n || s[i + len] != ';') {
        return 0;
    }
    for (size_t k = 0; k < 96; k++) {
        if (strlen(s_latin1[k]) == len && memcmp(s_latin1[k], s + i, len) == 0) {
            *cp = k == 0 ? ' ' : k == 13 ? 0 : (uint32_t)(160 + k);
            return i + len + 1;
        }
    }
    for (size_t k = 0; k < sizeof s_entities / sizeof s_entities[0]; k++) {
        if (strlen(s_entities[k].name) == len && memcmp(s_entities[k].name, s + i, len) == 0) {
            *cp = s_entities[k].cp;
            return i + len + 1;
        }
    }
    return 0;
}

/* The converter's output state. */
struct s_html {
    struct buf *out;        /* where the text goes */
    size_t start;           /* out->len when conversion began */
    int pending_nl;         /* line breaks owed before the next text */
    bool space;             /* a space owed before the next text */
    bool line_start;        /* nothing written on the current line yet */
    int quote;              /* blockquote depth */
    int pre;                /* inside <pre> */
    int skip;               /* inside script, style, head, title */
    int list_item;          /* a "- " owed at the next text */
    char href[512];         /* the open link's target, or "" */
    size_t link_text;       /* out->len where the link's text began */
    int rc;                 /* -1 once out of memory */
};

static void s_h_raw(struct s_html *h, const char *s, size_t n)
{
    h->rc |= buf_append(h->out, s, n);
}

/* Writes what is owed before text: line breaks, quote marks, a space. */
static void s_h_prepare(struct s_html *h)
{
    if (h->out->len > h->start) {
        for (int i = 0; i < h->pending_nl; i++) {
            s_h_raw(h, "\n", 1);
            h->line_start = true;
            h->space = false;
        }
    }
    h->pending_nl = 0;
    if (h->line_start) {
        for (int q = 0; q < h->quote; q++) {
            s_h_raw(h, "> ", 2);
        }
        if (h->list_item) {
            s_h_raw(h, "- ", 2);
            h->list_item = 0;
        }
        h->line_start = false;
        h->space = false;
    } else if (h->space) {
        s_h_raw(h, " ", 1);
        h->space = false;
    }
}

static void s_h_text(struct s_html *h, const char *s, size_t n)
{
    if (h->skip) {
        return;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (h->pre) {
            if (c == '\n') {
                h->pending_nl++;
                continue;
            }
            s_h_prepare(h);
            s_h_raw(h, &c, 1);
            continue;
        }
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f') {
            if (!h->line_start) {
                h->space = true;
            }
            continue;
        }
        size_t j = i;
        while (j < n && !(s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r'
                          || s[j] == '\f')) {
            j++;
        }
        s_h_prepare(h);
        s_h_raw(h, s + i, j - i);
        i = j - 1;
    }
}

/* Asks for n line breaks (1: a new line, 2: a blank line) before more text. */
static void s_h_break(struct s_html *h, int n)
{
    if (h->pending_nl < n) {
        h->pending_nl = n;
    }
    h->space = false;
}

/* Compares a tag name, case-insensitively. */
static bool s_tag_is(const char *name, size_t n, const char *want)
{
    return strlen(want) == n && strncasecmp(name, want, n) == 0;
}

static bool s_tag_in(const char *name, size_t n, const char *const *list)
{
    for (; *list != NULL; list++) {
        if (s_tag_is(name, n, *list)) {
            return true;
        }
    }
    return false;
}

/* Finds attribute attr in a tag's attribute text; copies its value,
 * entities decoded, into out[outn]. */
static bool s_tag_attr(const char *a, size_t n, const char *attr, char *out, size_t outn)
{
    size_t al = strlen(attr);
    for (size_t i = 0; i + al < n; i++) {
        bool boundary = i == 0 || a[i - 1] == ' ' || a[i - 1] == '\t' || a[i - 1] == '\n'
                        || a[i - 1] == '\r' || a[i - 1] == '"' || a[i - 1] == '\'';
        if (!boundary || strncasecmp(a + i, attr, al) != 0) {
            continue;
        }
        size_t j = i + al;
        while (j < n && (a[j] == ' ' || a[j] == '\t' || a[j] == '\n' || a[j] == '\r')) {
            j++;
        }
        if (j >= n || a[j] != '=') {
            continue;
        }
        j++;
        while (j < n && (a[j] == ' ' || a[j] == '\t' || a[j] == '\n' || a[j] == '\r')) {
            j++;
        }
        char q = j < n && (a[j] == '"' || a[j] == '\'') ? a[j++] : 0;
        size_t k = 0;
        while (j < n && (q ? a[j] != q : !(a[j] == ' ' || a[j] == '\t' || a[j] == '>'))) {
            uint32_t cp;
            size_t used = a[j] == '&' ? s_entity(a + j, n - j, &cp) : 0;
            if (used > 0 && cp < 0x80 && cp != 0) {
                if (k + 1 < outn) {
                    out[k++] = (char)cp;
                }
                j += used;
                continue;
            }
            if (k + 1 < outn) {
                out[k++] = a[j];
            }
            j++;
        }
        out[k] = '\0';
        return true;
    }
    return false;
}

static const char *const s_blocks[] = {
    "div", "ul", "ol", "dl", "dd", "dt", "table", "tr", "section", "article", "header",
    "footer", "nav", "aside", "form", "fieldset", "address", "center", "main", "figure",
    "figcaption", "caption", "tbody", "thead", "tfoot", NULL
};
static const char *const s_paras[] = {
    "p", "h1", "h2", "h3", "h4", "h5", "h6", NULL
};
/* Elements whose content is not text; head may hold tags. */
static const char *const s_skipped[] = { "head", "noscript", "template", NULL };
/* Elements of raw text, skipped up to their end tag unparsed. */
static const char *const s_raw[] = { "script", "style", "title", "textarea", NULL };

/* One tag: name[0..nn), attributes a[0..an), closing or not. */
static void s_h_tag(struct s_html *h, const char *name, size_t nn, const char *a, size_t an,
                    bool closing)
{
    if (s_tag_in(name, nn, s_skipped)) {
        h->skip += closing ? (h->skip > 0 ? -1 : 0) : 1;
        return;
    }
    if (s_tag_is(name, nn, "body")) {
        h->skip = 0;    /* a <head> left open ends here */
        return;
    }
    if (h->skip) {
        return;
    }
    if (s_tag_is(name, nn, "br")) {
        h->pending_nl = h->pending_nl < 2 ? h->pending_nl + 1 : 2;
        h->space = false;
    } else if (s_tag_in(name, nn, s_paras)) {
        s_h_break(h, 2);
    } else if (s_tag_is(name, nn, "blockquote")) {
        s_h_break(h, 1);
        if (closing) {
            if (h->quote > 0) {
                h->quote--;
            }
        } else {
            h->quote++;
        }
    } else if (s_tag_is(name, nn, "pre")) {
        s_h_break(h, 1);
        h->pre += closing ? (h->pre > 0 ? -1 : 0) : 1;
    } else if (s_tag_is(name, nn, "li")) {
        s_h_break(h, 1);
        h->list_item = !closing;
    } else if (s_tag_is(name, nn, "hr")) {
        s_h_break(h, 1);
    } else if (s_tag_is(name, nn, "td") || s_tag_is(name, nn, "th")) {
        if (!closing && !h->line_start && h->pending_nl == 0) {
            h->space = true;
        }
    } else if (s_tag_in(name, nn, s_blocks)) {
        s_h_break(h, 1);
    } else if (s_tag_is(name, nn, "a")) {
        if (!closing) {
            h->href[0] = '\0';
            if (!s_tag_attr(a, an, "href", h->href, sizeof h->href)
                || !(strncasecmp(h->href, "http://", 7) == 0 || strncasecmp(h->href, "https://", 8) == 0)) {
                h->href[0] = '\0';
            }
            h->link_text = h->out->len;
        } else if (h->href[0] != '\0') {
            size_t tl = h->out->len - h->link_text;
            bool same = h->out->len >= h->link_text
                        && memmem(h->out->data + h->link_text, tl, h->href, strlen(h->href)) != NULL;
            if (!same) {
                s_h_prepare(h);
                s_h_raw(h, tl > 0 ? " (" : "(", tl > 0 ? 2 : 1);
                s_h_raw(h, h->href, strlen(h->href));
                s_h_raw(h, ")", 1);
            }
            h->href[0] = '\0';
        }
    }
}

int mail_html_to_text(const char *s, size_t n, struct buf *out)
{
    struct s_html h;
    memset(&h, 0, sizeof h);
    h.out = out;
    h.start = out->len;
    h.line_start = true;
    size_t i = 0;
    while (i < n && h.rc == 0) {
        if (s[i] == '<') {
            /* A comment, a declaration, or a tag; a '<' that starts none
             * of them is text. */
            if (i + 3 < n && memcmp(s + i, "<!--", 4) == 0) {
                const char *end = memmem(s + i + 4, n - i - 4, "-->", 3);
                i = end ? (size_t)(end - s) + 3 : n;
                continue;
            }
            size_t j = i + 1;
            bool closing = j < n && s[j] == '/';
            j += closing;
            size_t name = j;
            while (j < n && ((s[j] >= 'a' && s[j] <= 'z') || (s[j] >= 'A' && s[j] <= 'Z')
                             || (s[j] >= '0' && s[j] <= '9') || s[j] == '!' || s[j] == '?')) {
                j++;
            }
            if (j == name) {
                s_h_text(&h, "<", 1);
                i++;
                continue;
            }
            size_t nn = j - name;
            size_t attrs = j;
            char q = 0;
            while (j < n && (q || s[j] != '>')) {
                if (q && s[j] == q) {
                    q = 0;
                } else if (!q && (s[j] == '"' || s[j] == '\'')) {
                    q = s[j];
                }
                j++;
            }
            i = j < n ? j + 1 : n;
            if (!closing && s_tag_in(s + name, nn, s_raw)) {
                /* <script>, <style>: nothing inside is markup or text. */
                char endtag[16];
                snprintf(endtag, sizeof endtag, "</%.*s", (int)nn, s + name);
                size_t el = strlen(endtag);
                size_t k = i;
                while (k + el <= n && strncasecmp(s + k, endtag, el) != 0) {
                    k++;
                }
                const char *gt = k + el <= n ? memchr(s + k, '>', n - k) : NULL;
                i = gt ? (size_t)(gt - s) + 1 : n;
                continue;
            }
            s_h_tag(&h, s + name, nn, s + attrs, j - attrs, closing);
            continue;
        }
        if (s[i] == '&' && !h.skip) {
            uint32_t cp = 0;
            size_t used = s_entity(s + i, n - i, &cp);
            if (used > 0) {
                if (cp == ' ') {
                    s_h_prepare(&h);
                    s_h_raw(&h, " ", 1);
                } else if (cp != 0) {
                    struct buf tmp = { 0 };
                    h.rc |= s_put_cp(&tmp, cp);
                    s_h_text(&h, tmp.data ? tmp.data : "", tmp.len);
                    buf_free(&tmp);
                }
                i += used;
                continue;
            }
        }
        size_t j = i + 1;
        while (j < n && s[j] != '<' && s[j] != '&') {
            j++;
        }
        s_h_text(&h, s + i, j - i);
        i = j;
    }
    return h.rc ? -1 : 0;
}

/* ---- quotes --------------------------------------------------------- */

/* One line of a text. */
struct s_line {
    const char *s;      /* first byte */
    size_t n;           /* bytes, without the LF */
    bool keep;          /* still part of the text */
};

static bool s_blank(const struct s_line *l)
{
    for (size_t i = 0; i < l->n; i++) {
        if (l->s[i] != ' ' && l->s[i] != '\t') {
            return false;
        }
    }
    return true;
}

/* True when the line starts with word (case-insensitive). */
static bool s_starts(const char *s, size_t n, const char *word)
{
    size_t wl = strlen(word);
    return n >= wl && strncasecmp(s, word, wl) == 0;
}

/* True when s[0..n), trailing spaces ignored, ends with word. */
static bool s_ends(const char *s, size_t n, const char *word)
{
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t')) {
        n--;
    }
    size_t wl = strlen(word);
    return n >= wl && strncasecmp(s + n - wl, word, wl) == 0;
}

/* The start of an attribution line ("On …", "Em …"). */
static bool s_attribution_start(const struct s_line *l)
{
    static const char *const starts[] = { "On ", "Em ", "El ", "Le ", "Am ", "Op ", "Il ", NULL };
    for (int i = 0; starts[i] != NULL; i++) {
        if (s_starts(l->s, l->n, starts[i])) {
            return true;
        }
    }
    return false;
}

/* The end of one ("… wrote:", "… escreveu:"). */
static bool s_attribution_end(const char *s, size_t n)
{
    static const char *const ends[] = {
        "wrote:", "escreveu:", "escribi\xc3\xb3:", "a \xc3\xa9" "crit :", "a \xc3\xa9" "crit:",
        "schrieb:", "ha scritto:", "schreef:", "wrote :", NULL
    };
    for (int i = 0; ends[i] != NULL; i++) {
        if (s_ends(s, n, ends[i])) {
            return true;
        }
    }
    return false;
}

/* A line that begins an unmarked copy of the message answered: Outlook's
 * "-----Original Message-----" (and its translations), or its header block
 * ("From: …" then "Sent: …" / "Enviado: …"). */
static bool s_original_start(const struct s_line *lines, size_t nl, size_t i)
{
    const struct s_line *l = &lines[i];
    static const char *const phrases[] = {
        "original message", "mensagem original", "mensaje original", "message d'origine",
        "urspr\xc3\xbcngliche nachricht", "messaggio originale", NULL
    };
    if (s_starts(l->s, l->n, "--")) {
        size_t a = 0, b = l->n;
        while (a < b && (l->s[a] == '-' || l->s[a] == ' ')) {
            a++;
        }
        while (b > a && (l->s[b - 1] == '-' || l->s[b - 1] == ' ')) {
            b--;
        }
        for (int k = 0; phrases[k] != NULL; k++) {
            if (strlen(phrases[k]) == b - a && strncasecmp(l->s + a, phrases[k], b - a) == 0) {
                return true;
            }
        }
    }
    bool rule = l->n >= 20;
    for (size_t k = 0; k < l->n && rule; k++) {
        rule = l->s[k] == '_';
    }
    static const char *const from[] = { "From:", "De:", "Von:", "Da:", NULL };
    static const char *const sent[] = { "Sent:", "Enviado:", "Enviada em:", "Enviado em:", "Date:",
                                        "Data:", "Gesendet:", "Fecha:", NULL };
    if (rule && i + 1 < nl) {
        for (int k = 0; from[k] != NULL; k++) {
            if (s_starts(lines[i + 1].s, lines[i + 1].n, from[k])) {
                return true;
            }
        }
    }
    for (int k = 0; from[k] != NULL; k++) {
        if (!s_starts(l->s, l->n, from[k])) {
            continue;
        }
        for (size_t j = i + 1; j < nl && j <= i + 4; j++) {
            for (int m = 0; sent[m] != NULL; m++) {
                if (s_starts(lines[j].s, lines[j].n, sent[m])) {
                    return true;
                }
            }
        }
    }
    return false;
}

/* Writes the kept lines into out, trailing spaces trimmed, runs of blank
 * lines as one, none at either end. Returns its length. */
static size_t s_join(const struct s_line *lines, size_t nl, char *out)
{
    size_t k = 0;
    bool owed_blank = false;
    for (size_t i = 0; i < nl; i++) {
        if (!lines[i].keep) {
            continue;
        }
        size_t n = lines[i].n;
        while (n > 0 && (lines[i].s[n - 1] == ' ' || lines[i].s[n - 1] == '\t')) {
            n--;
        }
        if (n == 0) {
            owed_blank = k > 0;
            continue;
        }
        if (k > 0) {
            out[k++] = '\n';
            if (owed_blank) {
                out[k++] = '\n';
            }
        }
        owed_blank = false;
        memmove(out + k, lines[i].s, n);
        k += n;
    }
    out[k] = '\0';
    return k;
}

size_t mail_trim_quotes(char *text, size_t n)
{
    size_t nl = 1;
    for (size_t i = 0; i < n; i++) {
        nl += text[i] == '\n';
    }
    struct s_line *lines = calloc(nl, sizeof *lines);
    char *copy = malloc(n + 1);
    char *out = malloc(n + 2);
    if (lines == NULL || copy == NULL || out == NULL) {
        free(lines);
        free(copy);
        free(out);
        return n;
    }
    memcpy(copy, text, n);
    copy[n] = '\0';
    size_t k = 0;
    const char *p = copy;
    const char *end = copy + n;
    while (k < nl) {
        const char *e = memchr(p, '\n', (size_t)(end - p));
        lines[k].s = p;
        lines[k].n = e ? (size_t)(e - p) : (size_t)(end - p);
        lines[k].keep = true;
        k++;
        if (e == NULL) {
            break;
        }
        p = e + 1;
    }
    nl = k;
    /* An unmarked copy of the message answered ends the reply. */
    size_t cut = nl;
    for (size_t i = 0; i < nl && cut == nl; i++) {
        if (lines[i].n > 0 && lines[i].s[0] != '>' && s_original_start(lines, nl, i)) {
            cut = i;
        }
    }
    for (size_t i = cut; i < nl; i++) {
        lines[i].keep = false;
    }
    /* Attributions: one to three lines. Followed by a quote, only they go;
     * followed by unmarked text (a client that quotes without '>'), all
     * from them on goes. */
    for (size_t i = 0; i < cut; i++) {
        if (!lines[i].keep || lines[i].s[0] == '>' || !s_attribution_start(&lines[i])) {
            continue;
        }
        char joined[1024];
        size_t jl = 0;
        size_t last = cut;
        for (size_t j = i; j < cut && j < i + 3; j++) {
            if (j > i && (s_blank(&lines[j]) || lines[j].s[0] == '>')) {
                break;
            }
            if (jl + 2 >= sizeof joined) {
                break;
            }
            if (jl > 0) {
                joined[jl++] = ' ';
            }
            size_t room = sizeof joined - jl - 1;
            size_t take = lines[j].n < room ? lines[j].n : room;
            memcpy(joined + jl, lines[j].s, take);
            jl += take;
            if (s_attribution_end(joined, jl)) {
                last = j;
                break;
            }
        }
        if (last == cut) {
            continue;
        }
        size_t next = last + 1;
        while (next < cut && s_blank(&lines[next])) {
            next++;
        }
        size_t upto = (next < cut && lines[next].s[0] == '>') ? last + 1 : cut;
        for (size_t j = i; j < upto; j++) {
            lines[j].keep = false;
        }
        i = upto - 1;
    }
    for (size_t i = 0; i < cut; i++) {
        if (lines[i].n > 0 && lines[i].s[0] == '>') {
            lines[i].keep = false;
        }
    }
    size_t len = s_join(lines, nl, out);
    if (len == 0) {
        /* All of it was quote: better the whole than nothing. */
        for (size_t i = 0; i < nl; i++) {
            lines[i].keep = true;
        }
        len = s_join(lines, nl, out);
    }
    memcpy(text, out, len);
    if (len < n) {
        text[len] = '\0';
    }
    free(lines);
    free(copy);
    free(out);
    return len;
}

/* ---- format=flowed -------------------------------------------------- */

/* Joins the soft line breaks of format=flowed text (RFC 3676) in b. */
static int s_unflow(struct buf *b, bool delsp)
{
    struct buf out = { 0 };
    int rc = 0;
    const char *p = b->data;
    const char *end = b->data + b->len;
    bool joining = false;       /* the previous line was flowed */
    int depth_prev = -1;
    while (p < end && rc == 0) {
        const char *e = memchr(p, '\n', (size_t)(end - p));
        size_t n = e ? (size_t)(e - p) : (size_t)(end - p);
        int depth = 0;
        while ((size_t)depth < n && p[depth] == '>') {
            depth++;
        }
        const char *c = p + depth;
        size_t cn = n - (size_t)depth;
        if (cn > 0 && c[0] == ' ') {
            c++;
            cn--;
        }
        bool sig = cn == 3 && memcmp(c, "-- ", 3) == 0;
        bool flowed = !sig && cn > 0 && c[cn - 1] == ' ';
        if (joining && depth != depth_prev) {
            rc |= buf_putc(&out, '\n');
            joining = false;
        }
        if (!joining) {
            for (int i = 0; i < depth; i++) {
                rc |= buf_putc(&out, '>');
            }
            if (depth > 0) {
                rc |= buf_putc(&out, ' ');
            }
        }
        size_t take = flowed && delsp ? cn - 1 : cn;
        rc |= buf_append(&out, c, take);
        if (!flowed) {
            if (e != NULL) {
                rc |= buf_putc(&out, '\n');
            }
        }
        joining = flowed;
        depth_prev = depth;
        p = e ? e + 1 : end;
    }
    if (rc == 0) {
        buf_reset(b);
        rc = buf_append(b, out.data ? out.data : "", out.len);
    }
    buf_free(&out);
    return rc;
}

/* ---- the MIME walk -------------------------------------------------- */

/* The decoded bytes of a leaf part into b. */
static int s_part_bytes(GMimePart *part, struct buf *b)
{
    buf_reset(b);
    GMimeDataWrapper *dw = g_mime_part_get_content(part);
    if (dw == NULL) {
        return 0;
    }
    GMimeStream *mem = g_mime_stream_mem_new();
    if (g_mime_data_wrapper_write_to_stream(dw, mem) < 0) {
        g_object_unref(mem);
        return 0;
    }
    GByteArray *ba = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(mem));
    int rc = buf_append(b, ba->data, ba->len);
    g_object_unref(mem);
    return rc;
}

/* Decoded bytes of a part without keeping them. */
static int64_t s_part_size(GMimeObject *o)
{
    GMimeStream *null = g_mime_stream_null_new();
    if (GMIME_IS_PART(o)) {
        GMimeDataWrapper *dw = g_mime_part_get_content(GMIME_PART(o));
        if (dw != NULL) {
            g_mime_data_wrapper_write_to_stream(dw, null);
        }
    } else if (GMIME_IS_MESSAGE_PART(o)) {
        GMimeMessage *m = g_mime_message_part_get_message(GMIME_MESSAGE_PART(o));
        if (m != NULL) {
            g_mime_object_write_to_stream(GMIME_OBJECT(m), NULL, null);
        }
    }
    int64_t n = (int64_t)GMIME_STREAM_NULL(null)->written;
    g_object_unref(null);
    return n;
}

static void s_attach(struct s_walk *w, GMimeObject *o, const char *name_hint)
{
    if (w->n_atts >= MAIL_MAX_ATTACHMENTS) {
        w->omitted++;
        return;
    }
    GMimeContentType *ct = g_mime_object_get_content_type(o);
    char *type = ct ? g_mime_content_type_get_mime_type(ct) : NULL;
    const char *fname = GMIME_IS_PART(o) ? g_mime_part_get_filename(GMIME_PART(o)) : NULL;
    char *name = s_field(fname ? fname : name_hint, S_MAX_NAME);
    char *ltype = s_field(type ? type : "application/octet-stream", 255);
    if (ltype != NULL) {
        for (char *c = ltype; *c; c++) {
            *c = (char)((*c >= 'A' && *c <= 'Z') ? *c + 32 : *c);
        }
    }
    GMimeContentDisposition *disp = g_mime_object_get_content_disposition(o);
    bool is_inline = disp != NULL && !g_mime_content_disposition_is_attachment(disp);
    /* The kind, as every channel gives it (image, audio, video, document),
     * and the MIME type. */
    const char *kind = "document";
    if (ltype != NULL && strncmp(ltype, "image/", 6) == 0) {
        kind = "image";
    } else if (ltype != NULL && strncmp(ltype, "audio/", 6) == 0) {
        kind = "audio";
    } else if (ltype != NULL && strncmp(ltype, "video/", 6) == 0) {
        kind = "video";
    }
    cJSON *a = cJSON_CreateObject();
    if (a == NULL || ltype == NULL || !cJSON_AddStringToObject(a, "type", kind)
        || !cJSON_AddStringToObject(a, "mime_type", ltype)
        || (name != NULL && name[0] != '\0' && !cJSON_AddStringToObject(a, "name", name))
        || !cJSON_AddNumberToObject(a, "size", (double)s_part_size(o))
        || (is_inline && !cJSON_AddTrueToObject(a, "inline"))
        || !cJSON_AddItemToArray(w->atts, a)) {
        cJSON_Delete(a);
        w->oom = true;
    } else {
        w->n_atts++;
    }
    g_free(type);
    free(name);
    free(ltype);
}

/* A text body part: converted, unflowed, added to plain or (as text) html. */
static void s_body(struct s_walk *w, GMimePart *part, bool html)
{
    GMimeObject *o = GMIME_OBJECT(part);
    GMimeContentType *ct = g_mime_object_get_content_type(o);
    const char *charset = g_mime_content_type_get_parameter(ct, "charset");
    buf_reset(&w->conv);
    int rc = s_part_bytes(part, &w->tmp);
    rc |= mail_to_utf8(charset, w->tmp.data ? w->tmp.data : "", w->tmp.len, &w->conv);
    const char *format = g_mime_content_type_get_parameter(ct, "format");
    if (rc == 0 && !html && format != NULL && strcasecmp(format, "flowed") == 0) {
        const char *delsp = g_mime_content_type_get_parameter(ct, "delsp");
        rc = s_unflow(&w->conv, delsp != NULL && strcasecmp(delsp, "yes") == 0);
    }
    struct buf *to = html ? &w->html : &w->plain;
    if (rc == 0 && to->len > 0 && w->conv.len > 0) {
        rc = buf_putc(to, '\n');
    }
    if (rc == 0) {
        rc = html ? mail_html_to_text(w->conv.data ? w->conv.data : "", w->conv.len, to)
                  : buf_append(to, w->conv.data ? w->conv.data : "", w->conv.len);
    }
    if (rc != 0) {
        w->oom = true;
    }
}

static bool s_is_text(GMimeObject *o, const char *sub)
{
    GMimeContentType *ct = g_mime_object_get_content_type(o);
    return ct != NULL && g_mime_content_type_is_type(ct, "text", sub);
}

/* A text part that is a body: not an attachment, no file name. */
static bool s_is_body(GMimeObject *o, const char *sub)
{
    if (!GMIME_IS_TEXT_PART(o) || !s_is_text(o, sub)) {
        return false;
    }
    GMimeContentDisposition *disp = g_mime_object_get_content_disposition(o);
    if (disp != NULL && g_mime_content_disposition_is_attachment(disp)) {
        return false;
    }
    return g_mime_part_get_filename(GMIME_PART(o)) == NULL;
}

static void s_walk(struct s_walk *w, GMimeObject *o, int depth)
{
    if (o == NULL || depth > S_MAX_DEPTH || w->oom) {
        return;
    }
    if (GMIME_IS_MULTIPART_ENCRYPTED(o)) {
        s_attach(w, o, "encrypted");
        return;
    }
    if (GMIME_IS_MULTIPART(o)) {
        GMimeMultipart *mp = GMIME_MULTIPART(o);
        int count = g_mime_multipart_get_count(mp);
        if (GMIME_IS_MULTIPART_SIGNED(o)) {
            if (count > 0) {
                s_walk(w, g_mime_multipart_get_part(mp, 0), depth + 1);
            }
            return;
        }
        GMimeContentType *ct = g_mime_object_get_content_type(o);
        if (ct != NULL && g_mime_content_type_is_type(ct, "multipart", "alternative")) {
            /* One of the versions: plain text preferred, then HTML, then
             * a structure holding one (multipart/related). */
            GMimeObject *plain = NULL, *html = NULL, *other = NULL;
            for (int i = 0; i < count; i++) {
                GMimeObject *c = g_mime_multipart_get_part(mp, i);
                if (plain == NULL && s_is_body(c, "plain")) {
                    plain = c;
                } else if (html == NULL && s_is_body(c, "html")) {
                    html = c;
                } else if (GMIME_IS_MULTIPART(c)) {
                    other = c;
                }
            }
            GMimeObject *best = plain ? plain : html ? html : other;
            if (best == NULL && count > 0) {
                best = g_mime_multipart_get_part(mp, 0);
            }
            s_walk(w, best, depth + 1);
            return;
        }
        for (int i = 0; i < count; i++) {
            s_walk(w, g_mime_multipart_get_part(mp, i), depth + 1);
        }
        return;
    }
    if (GMIME_IS_MESSAGE_PART(o)) {
        GMimeMessage *m = g_mime_message_part_get_message(GMIME_MESSAGE_PART(o));
        const char *subj = m ? g_mime_message_get_subject(m) : NULL;
        char hint[300];
        snprintf(hint, sizeof hint, "%.250s.eml", subj && subj[0] ? subj : "message");
        s_attach(w, o, hint);
        return;
    }
    if (!GMIME_IS_PART(o)) {
        return;
    }
    if (s_is_body(o, "plain")) {
        s_body(w, GMIME_PART(o), false);
        return;
    }
    if (s_is_body(o, "html")) {
        s_body(w, GMIME_PART(o), true);
        return;
    }
    GMimeContentType *ct = g_mime_object_get_content_type(o);
    if (ct != NULL && (g_mime_content_type_is_type(ct, "application", "pgp-signature")
                       || g_mime_content_type_is_type(ct, "application", "pkcs7-signature")
                       || g_mime_content_type_is_type(ct, "application", "x-pkcs7-signature"))) {
        return;
    }
    s_attach(w, o, NULL);
}

/* ---- headers -------------------------------------------------------- */

/* The first mailbox of an address list (looking inside groups). */
static InternetAddressMailbox *s_first_mailbox(InternetAddressList *list, int depth)
{
    int n = list ? internet_address_list_length(list) : 0;
    for (int i = 0; i < n && depth < 4; i++) {
        InternetAddress *a = internet_address_list_get_address(list, i);
        if (INTERNET_ADDRESS_IS_MAILBOX(a)) {
            return INTERNET_ADDRESS_MAILBOX(a);
        }
        if (INTERNET_ADDRESS_IS_GROUP(a)) {
            InternetAddressMailbox *m =
                s_first_mailbox(internet_address_group_get_members(INTERNET_ADDRESS_GROUP(a)), depth + 1);
            if (m != NULL) {
                return m;
            }
        }
    }
    return NULL;
}

/* "mailto:addr" normalised into out[n]; 0, or -1 with why. */
static int s_handle(const char *addr, char *out, size_t n, char *why, size_t whyn)
{
    char uri[HANDLE_MAX + 16];
    if (addr == NULL || addr[0] == '\0') {
        snprintf(why, whyn, "no address");
        return -1;
    }
    snprintf(uri, sizeof uri, "mailto:%s", addr);
    return handle_normalise(uri, 0, out, n, why, whyn);
}

/* A handle from a raw header holding one address (Delivered-To). */
static int s_handle_header(GMimeParserOptions *opts, const char *value, char *out, size_t n)
{
    char why[100];
    if (value == NULL) {
        return -1;
    }
    InternetAddressList *l = internet_address_list_parse(opts, value);
    InternetAddressMailbox *m = s_first_mailbox(l, 0);
    int rc = m ? s_handle(internet_address_mailbox_get_addr(m), out, n, why, sizeof why) : -1;
    if (l != NULL) {
        g_object_unref(l);
    }
    return rc;
}

/* Ids of a References or In-Reply-To value, as "<a> <b>" (at most max,
 * the first and the latest kept), or NULL. */
static char *s_refs(GMimeParserOptions *opts, const char *value, int max)
{
    if (value == NULL) {
        return NULL;
    }
    GMimeReferences *refs = g_mime_references_parse(opts, value);
    int n = refs ? g_mime_references_length(refs) : 0;
    struct buf b = { 0 };
    int rc = 0;
    for (int i = 0; i < n; i++) {
        if (n > max && i > 0 && i < n - (max - 1)) {
            continue;
        }
        const char *id = g_mime_references_get_message_id(refs, i);
        if (b.len + strlen(id) + 3 > 16384) {
            break;
        }
        rc |= buf_printf(&b, "%s<%s>", b.len ? " " : "", id);
    }
    if (refs != NULL) {
        g_mime_references_free(refs);
    }
    if (rc != 0 || b.len == 0) {
        buf_free(&b);
        return NULL;
    }
    char *s = s_field(b.data, 16384);
    buf_free(&b);
    return s;
}

/* Header fields that relays add: left out of the content hash. */
static bool s_trace_header(const char *name)
{
    static const char *const trace[] = {
        "Received", "Return-Path", "Delivered-To", "Envelope-To", "Authentication-Results",
        "Received-SPF", NULL
    };
    if (strncasecmp(name, "X-", 2) == 0 || strncasecmp(name, "ARC-", 4) == 0) {
        return true;
    }
    for (int i = 0; trace[i] != NULL; i++) {
        if (strcasecmp(name, trace[i]) == 0) {
            return true;
        }
    }
    return false;
}

/* "sha256:<hex>" of the header fields a relay does not touch and the raw
 * body, for a message without a usable Message-ID. */
static char *s_content_id(GMimeMessage *msg, const char *raw, size_t n)
{
    GChecksum *ck = g_checksum_new(G_CHECKSUM_SHA256);
    GMimeHeaderList *hl = g_mime_object_get_header_list(GMIME_OBJECT(msg));
    int count = g_mime_header_list_get_count(hl);
    for (int i = 0; i < count; i++) {
        GMimeHeader *h = g_mime_header_list_get_header_at(hl, i);
        const char *name = g_mime_header_get_name(h);
        const char *value = g_mime_header_get_raw_value(h);
        if (name == NULL || s_trace_header(name)) {
            continue;
        }
        g_checksum_update(ck, (const guchar *)name, (gssize)strlen(name));
        g_checksum_update(ck, (const guchar *)":", 1);
        if (value != NULL) {
            g_checksum_update(ck, (const guchar *)value, (gssize)strlen(value));
        }
    }
    const char *body = memmem(raw, n, "\n\n", 2);
    const char *crlf = memmem(raw, n, "\r\n\r\n", 4);
    if (crlf != NULL && (body == NULL || crlf < body)) {
        body = crlf + 2;
    }
    if (body != NULL) {
        g_checksum_update(ck, (const guchar *)body, (gssize)(n - (size_t)(body - raw)));
    }
    char *s = NULL;
    const char *hex = g_checksum_get_string(ck);
    if (asprintf(&s, "sha256:%s", hex) < 0) {
        s = NULL;
    }
    g_checksum_free(ck);
    return s;
}

/* Cuts s at max bytes on a character boundary; true when it did. */
static bool s_cut(struct buf *b, size_t max)
{
    if (b->len <= max) {
        return false;
    }
    size_t end = max;
    while (end > 0 && ((unsigned char)b->data[end] & 0xc0) == 0x80) {
        end--;
    }
    b->len = end;
    b->data[end] = '\0';
    return true;
}

/* Adds key: s (freed) to obj when s is not NULL. */
static bool s_add(cJSON *obj, const char *key, char *s)
{
    bool ok = s == NULL || cJSON_AddStringToObject(obj, key, s) != NULL;
    free(s);
    return ok;
}

int mail_to_env(const void *raw, size_t n, unsigned flags, struct env *e, char *err, size_t errn)
{
    const char *p = raw;
    int rc = -1;
    GMimeParserOptions *opts = NULL;
    GMimeStream *stream = NULL;
    GMimeParser *parser = NULL;
    GMimeMessage *msg = NULL;
    cJSON *j = NULL;
    struct s_walk w;
    memset(&w, 0, sizeof w);
    char from[HANDLE_MAX + 16], to[HANDLE_MAX + 16], why[160];
    struct env_err eerr;

    /* An mbox "From " line, as some MTAs put before the message. */
    if (n >= 5 && memcmp(p, "From ", 5) == 0) {
        const char *nl = memchr(p, '\n', n);
        size_t skip = nl ? (size_t)(nl - p) + 1 : n;
        p += skip;
        n -= skip;
    }
    if (n == 0) {
        snprintf(err, errn, "empty message");
        goto done;
    }
    opts = g_mime_parser_options_new();
    static const char *fallback[] = { "utf-8", "windows-1252", NULL };
    g_mime_parser_options_set_fallback_charsets(opts, fallback);
    g_mime_parser_options_set_rfc2047_compliance_mode(opts, GMIME_RFC_COMPLIANCE_LOOSE);
    g_mime_parser_options_set_address_compliance_mode(opts, GMIME_RFC_COMPLIANCE_LOOSE);
    g_mime_parser_options_set_parameter_compliance_mode(opts, GMIME_RFC_COMPLIANCE_LOOSE);
    stream = g_mime_stream_mem_new_with_buffer(p, n);
    parser = g_mime_parser_new_with_stream(stream);
    g_mime_parser_set_format(parser, GMIME_FORMAT_MESSAGE);
    msg = g_mime_parser_construct_message(parser, opts);
    if (msg == NULL
        || g_mime_header_list_get_count(g_mime_object_get_header_list(GMIME_OBJECT(msg))) == 0) {
        snprintf(err, errn, "not an RFC 5322 message: no header fields");
        goto done;
    }

    /* The sender: From, else Sender. */
    InternetAddressMailbox *fm = s_first_mailbox(g_mime_message_get_from(msg), 0);
    if (fm == NULL) {
        fm = s_first_mailbox(g_mime_message_get_sender(msg), 0);
    }
    if (fm == NULL) {
        snprintf(err, errn, "no sender: From has no address");
        goto done;
    }
    if (s_handle(internet_address_mailbox_get_addr(fm), from, sizeof from, why, sizeof why) != 0) {
        snprintf(err, errn, "sender address is not usable: %s", why);
        goto done;
    }
    InternetAddressMailbox *tm = s_first_mailbox(g_mime_message_get_to(msg), 0);
    bool have_to = tm != NULL
                   && s_handle(internet_address_mailbox_get_addr(tm), to, sizeof to, why, sizeof why) == 0;
    if (!have_to) {
        const char *dt = g_mime_object_get_header(GMIME_OBJECT(msg), "Delivered-To");
        have_to = s_handle_header(opts, dt, to, sizeof to) == 0;
    }

    /* The body and the attachments. */
    w.atts = cJSON_CreateArray();
    if (w.atts == NULL) {
        snprintf(err, errn, "out of memory");
        goto done;
    }
    s_walk(&w, g_mime_message_get_mime_part(msg), 0);
    struct buf *body = w.plain.len > 0 ? &w.plain : &w.html;
    if (body->data != NULL) {
        body->len = mail_trim_quotes(body->data, body->len);
    }
    bool truncated = s_cut(body, ENV_MAX_TEXT) || (flags & MAIL_CUT);

    j = cJSON_CreateObject();
    cJSON *meta = cJSON_CreateObject();
    if (j == NULL || meta == NULL || w.oom) {
        cJSON_Delete(meta);
        snprintf(err, errn, "out of memory");
        goto done;
    }
    cJSON_AddItemToObject(j, "meta", meta);
    bool ok = cJSON_AddStringToObject(j, "channel", "email") && cJSON_AddStringToObject(j, "dir", "in")
              && cJSON_AddStringToObject(j, "from", from)
              && (!have_to || cJSON_AddStringToObject(j, "to", to))
              && cJSON_AddStringToObject(j, "text", body->data ? body->data : "");
    const char *subject = g_mime_message_get_subject(msg);
    if (subject != NULL) {
        char *s = s_field(subject, ENV_MAX_SUBJECT);
        truncated |= s != NULL && strlen(s) < strlen(subject) && strlen(s) == ENV_MAX_SUBJECT;
        ok = ok && s_add(j, "subject", s);
    }
    if (w.n_atts > 0) {
        cJSON_AddItemToObject(j, "attachments", w.atts);
        w.atts = NULL;
    }

    /* The channel's id, and what threading needs. */
    const char *mid = g_mime_message_get_message_id(msg);
    char *mid_clean = mid ? s_field(mid, 900) : NULL;
    bool mid_ok = mid_clean != NULL && mid_clean[0] != '\0' && strlen(mid_clean) == strlen(mid)
                  && strchr(mid_clean, ' ') == NULL;
    if (mid_ok) {
        ok = ok && cJSON_AddStringToObject(j, "src_id", mid_clean);
        char *wire = NULL;
        ok = ok && asprintf(&wire, "<%s>", mid_clean) >= 0 && s_add(meta, "message_id", wire);
    } else {
        ok = ok && s_add(j, "src_id", s_content_id(msg, p, n));
    }
    free(mid_clean);
    GMimeObject *mo = GMIME_OBJECT(msg);
    ok = ok && s_add(meta, "in_reply_to", s_refs(opts, g_mime_object_get_header(mo, "In-Reply-To"), 1));
    ok = ok && s_add(meta, "references", s_refs(opts, g_mime_object_get_header(mo, "References"), S_MAX_REFS));
    const char *name = internet_address_get_name(INTERNET_ADDRESS(fm));
    if (name != NULL && name[0] != '\0') {
        ok = ok && s_add(meta, "name", s_field(name, S_MAX_META));
    }
    GDateTime *date = g_mime_message_get_date(msg);
    if (date != NULL) {
        gchar *iso = g_date_time_format_iso8601(date);
        ok = ok && s_add(meta, "date", iso ? strdup(iso) : NULL);
        g_free(iso);
    }
    if (truncated) {
        ok = ok && cJSON_AddTrueToObject(meta, "truncated");
    }
    if (w.omitted > 0) {
        ok = ok && cJSON_AddNumberToObject(meta, "attachments_omitted", w.omitted);
    }
    if (!ok) {
        snprintf(err, errn, "out of memory");
        goto done;
    }
    if (env_from_json(e, j, &eerr) != 0) {
        char s[300];
        snprintf(err, errn, "cannot make an envelope: %s", env_err_str(&eerr, s, sizeof s));
        goto done;
    }
    rc = 0;
done:
    cJSON_Delete(j);
    cJSON_Delete(w.atts);
    buf_free(&w.plain);
    buf_free(&w.html);
    buf_free(&w.tmp);
    buf_free(&w.conv);
    if (msg != NULL) {
        g_object_unref(msg);
    }
    if (parser != NULL) {
        g_object_unref(parser);
    }
    if (stream != NULL) {
        g_object_unref(stream);
    }
    if (opts != NULL) {
        g_mime_parser_options_free(opts);
    }
    return rc;
}

/* --- replies ------------------------------------------------------------ */

/* The subject of a reply: "Re: " before it, unless it already starts with
 * "Re:" (any case). Appends to out; returns 0 or -1 (out of memory). */
static int s_reply_subject(const char *subject, struct buf *out)
{
    if (subject == NULL) {
        return 0;
    }
    while (*subject == ' ' || *subject == '\t') {
        subject++;
    }
    if (*subject == '\0') {
        return 0;
    }
    if (strncasecmp(subject, "re:", 3) == 0) {
        return buf_puts(out, subject);
    }
    return buf_printf(out, "Re: %s", subject);
}

/* The References of a reply (RFC 5322 3.6.4): the parent's references (or,
 * without them, its in_reply_to) followed by its message_id; each may be
 * NULL. Appends to out; returns 0 or -1 (out of memory). */
static int s_references(const char *references, const char *in_reply_to, const char *message_id,
                        struct buf *out)
{
    const char *parts[2] = { references != NULL && references[0] != '\0' ? references : in_reply_to,
                             message_id };
    int rc = 0;
    for (size_t i = 0; i < 2; i++) {
        const char *s = parts[i];
        if (s == NULL) {
            continue;
        }
        /* Folded headers keep their line breaks: one space between ids. */
        for (; *s != '\0'; s++) {
            bool blank = *s == ' ' || *s == '\t' || *s == '\r' || *s == '\n';
            if (blank) {
                continue;
            }
            const char *start = s;
            while (s[1] != '\0' && s[1] != ' ' && s[1] != '\t' && s[1] != '\r' && s[1] != '\n') {
                s++;
            }
            if (out->len > 0) {
                rc |= buf_putc(out, ' ');
            }
            rc |= buf_append(out, start, (size_t)(s - start + 1));
        }
    }
    return rc == 0 ? 0 : -1;
}

int mail_reply_thread(const struct env *q, struct buf *subject, struct buf *mid, struct buf *refs)
{
    struct buf prefs = { 0 }, pirt = { 0 };
    buf_reset(subject);
    buf_reset(mid);
    buf_reset(refs);
    int rc = 0;
    if (env_map_buf(q, ENV_META, "message_id", mid) != 1 || mid->len == 0) {
        const char *src = env_get(q, ENV_SRC_ID);
        buf_reset(mid);
        if (src != NULL && src[0] == '<' && strchr(src, '>') != NULL) {
            rc |= buf_puts(mid, src);
        }
    }
    int has_refs = env_map_buf(q, ENV_META, "references", &prefs);
    int has_irt = env_map_buf(q, ENV_META, "in_reply_to", &pirt);
    rc |= has_refs < 0 || has_irt < 0;
    rc |= s_references(has_refs == 1 ? prefs.data : NULL, has_irt == 1 ? pirt.data : NULL,
                       mid->len > 0 ? mid->data : NULL, refs);
    rc |= s_reply_subject(env_get(q, ENV_SUBJECT), subject);
    buf_free(&prefs);
    buf_free(&pirt);
    return rc == 0 ? 0 : -1;
}
