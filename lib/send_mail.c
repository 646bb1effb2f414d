/* send_mail — omni-send's e-mail: a threaded RFC 5322 reply, sent with
 * libcurl's SMTP (smtp:// or smtps://, STARTTLS when asked, AUTH when a
 * user is given; libcurl dot-stuffs the data).
 *
 * Threading: In-Reply-To is meta.in_reply_to of the reply (the customer's
 * last Message-ID, put there by omni-agent and omni-bot; meta.message_id is
 * read when in_reply_to is absent, as older envelopes had it), References is
 * meta.references (a string or an array of strings) followed by it, and
 * Subject is the reply's subject (or meta.subject) with one "Re: ".
 * Message-ID is <REPLY-ID@domain of --smtp-from>: the same for every
 * attempt, which is what makes re-sending after a crash harmless (mail
 * systems and clients drop a second copy of one Message-ID).
 *
 * SMTP replies 5xx are permanent; 4xx and network errors are temporary. */
#include "send.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>

#include "mp.h"

#define MAX_ID 998              /* longest Message-ID taken from meta */
#define QP_LINE 76              /* longest quoted-printable line */
#define WORD_BYTES 45           /* UTF-8 bytes per encoded-word (60 base64 chars) */

struct send_mail {
    const struct send_conf *conf;   /* options, secrets resolved */
    CURL *curl;                     /* the SMTP handle */
    char from_addr[320];            /* the address in --smtp-from */
    struct buf msg;                 /* the message being sent */
    size_t off;                     /* bytes of msg handed to libcurl */
    char reply[300];                /* the server's last reply line */
};

int send_mail_addr(const char *from, char *out, size_t n)
{
    const char *b = strchr(from, '<');
    const char *e = b ? strchr(b, '>') : NULL;
    if (b != NULL && e == NULL) {
        return -1;
    }
    if (b == NULL) {
        b = from;
        e = from + strlen(from);
    } else {
        b++;
    }
    while (b < e && (*b == ' ' || *b == '\t')) {
        b++;
    }
    while (e > b && (e[-1] == ' ' || e[-1] == '\t')) {
        e--;
    }
    size_t len = (size_t)(e - b);
    if (len == 0 || len >= n || memchr(b, '@', len) == NULL) {
        return -1;
    }
    for (const char *p = b; p < e; p++) {
        if (*p == ' ' || *p == '<' || *p == '>' || *p == '\r' || *p == '\n' || *p == '"') {
            return -1;
        }
    }
    memcpy(out, b, len);
    out[len] = '\0';
    return 0;
}

struct send_mail *send_mail_new(const struct send_conf *conf, char *err, size_t n)
{
    struct send_mail *m = calloc(1, sizeof *m);
    if (m == NULL) {
        snprintf(err, n, "out of memory");
        return NULL;
    }
    m->conf = conf;
    if (send_mail_addr(conf->smtp_from, m->from_addr, sizeof m->from_addr) != 0) {
        snprintf(err, n, "--smtp-from '%s' has no address", conf->smtp_from);
        free(m);
        return NULL;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        snprintf(err, n, "libcurl did not initialise");
        free(m);
        return NULL;
    }
    m->curl = curl_easy_init();
    if (m->curl == NULL) {
        snprintf(err, n, "libcurl: out of memory");
        send_mail_destroy(&m);
        return NULL;
    }
    return m;
}

void send_mail_destroy(struct send_mail **mp)
{
    struct send_mail *m = *mp;
    if (m == NULL) {
        return;
    }
    if (m->curl != NULL) {
        curl_easy_cleanup(m->curl);
    }
    curl_global_cleanup();
    buf_free(&m->msg);
    free(m);
    *mp = NULL;
}

/* --- building the message ----------------------------------------------------- */

/* Appends s[0..n) with CR and LF turned into spaces (no header injection). */
static int s_put_clean(struct buf *b, const char *s, size_t n)
{
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        rc = buf_putc(b, s[i] == '\r' || s[i] == '\n' ? ' ' : s[i]);
    }
    return rc;
}

static bool s_ascii(const char *s)
{
    for (; *s; s++) {
        if ((unsigned char)*s >= 0x80) {
            return false;
        }
    }
    return true;
}

/* Appends "Name: value" for an unstructured header: as is when ASCII,
 * else as RFC 2047 encoded-words, folded. */
static int s_header_text(struct buf *b, const char *name, const char *value)
{
    int rc = buf_printf(b, "%s: ", name);
    if (s_ascii(value)) {
        rc |= s_put_clean(b, value, strlen(value));
        return rc | buf_puts(b, "\r\n");
    }
    size_t n = strlen(value);
    size_t i = 0;
    bool first = true;
    while (i < n && rc == 0) {
        size_t j = i;
        /* Whole characters only, up to WORD_BYTES. */
        while (j < n) {
            size_t k = j + 1;
            while (k < n && ((unsigned char)value[k] & 0xC0) == 0x80) {
                k++;
            }
            if (k - i > WORD_BYTES) {
                break;
            }
            j = k;
        }
        if (j == i) {
            j = i + 1;
        }
        char chunk[WORD_BYTES + 8];
        size_t cn = 0;
        for (size_t k = i; k < j && cn < sizeof chunk; k++) {
            chunk[cn++] = value[k] == '\r' || value[k] == '\n' ? ' ' : value[k];
        }
        rc |= buf_puts(b, first ? "=?UTF-8?B?" : "\r\n =?UTF-8?B?");
        rc |= buf_base64(b, chunk, cn);
        rc |= buf_puts(b, "?=");
        first = false;
        i = j;
    }
    return rc | buf_puts(b, "\r\n");
}

/* Appends one msg-id token ("<x@y>", brackets added when missing) from
 * s[0..n) to b, after a space when b already holds some; skips junk. */
static void s_put_id(struct buf *b, const char *s, size_t n)
{
    while (n > 0 && (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n')) {
        s++;
        n--;
    }
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n')) {
        n--;
    }
    if (n > 0 && s[0] == '<') {
        s++;
        n--;
    }
    if (n > 0 && s[n - 1] == '>') {
        n--;
    }
    if (n == 0 || n > MAX_ID || memchr(s, '@', n) == NULL) {
        return;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c >= 0x7f || c == '<' || c == '>') {
            return;
        }
    }
    if (b->len > 0) {
        buf_putc(b, ' ');
    }
    buf_putc(b, '<');
    buf_append(b, s, n);
    buf_putc(b, '>');
}

/* Splits a References-style string into ids. */
static void s_put_ids(struct buf *b, const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n' || s[i] == ',')) {
            i++;
        }
        size_t j = i;
        while (j < n && s[j] != ' ' && s[j] != '\t' && s[j] != '\r' && s[j] != '\n' && s[j] != ',') {
            j++;
        }
        if (j > i) {
            s_put_id(b, s + i, j - i);
        }
        i = j;
    }
}

/* meta.references (string or array of strings) as ids into b. */
static void s_references(const struct env *e, struct buf *b)
{
    char one[4096];
    int found = env_map_str(e, ENV_META, "references", one, sizeof one);
    if (found == 1) {
        s_put_ids(b, one, strlen(one));
        return;
    }
    size_t n;
    const void *raw = env_map_raw(e, ENV_META, "references", &n);
    if (raw == NULL) {
        return;
    }
    struct mp_reader r;
    struct mp_val v;
    mp_reader_init(&r, raw, n);
    if (mp_read(&r, &v) != 0 || v.type != MP_ARRAY) {
        return;
    }
    for (uint32_t i = 0; i < v.n; i++) {
        struct mp_reader peek = r;
        struct mp_val item;
        if (mp_read(&peek, &item) == 0 && item.type == MP_STR) {
            s_put_ids(b, item.s, item.n);
        }
        if (mp_skip(&r) != 0) {
            return;
        }
    }
}

/* Appends "Name: id id id", folded before 78 columns. */
static int s_header_ids(struct buf *b, const char *name, const char *ids)
{
    int rc = buf_printf(b, "%s:", name);
    size_t col = strlen(name) + 1;
    const char *p = ids;
    while (*p != '\0' && rc == 0) {
        const char *sp = strchr(p, ' ');
        size_t n = sp ? (size_t)(sp - p) : strlen(p);
        if (col + 1 + n > 78 && col > strlen(name) + 1) {
            rc |= buf_puts(b, "\r\n");
            col = 0;
        }
        rc |= buf_putc(b, ' ');
        rc |= buf_append(b, p, n);
        col += 1 + n;
        p += n;
        while (*p == ' ') {
            p++;
        }
    }
    return rc | buf_puts(b, "\r\n");
}

/* Appends text as quoted-printable (RFC 2045), lines ending in CRLF. */
static int s_qp(struct buf *b, const char *text)
{
    static const char hex[] = "0123456789ABCDEF";
    int rc = 0;
    size_t col = 0;
    for (const char *p = text; *p != '\0' && rc == 0; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '\r' && p[1] == '\n') {
            continue;
        }
        if (c == '\n' || c == '\r') {
            rc |= buf_puts(b, "\r\n");
            col = 0;
            continue;
        }
        bool at_end = p[1] == '\0' || p[1] == '\n' || p[1] == '\r';
        bool literal = (c >= 33 && c <= 126 && c != '=' && !(c == '.' && col == 0))
                    || ((c == ' ' || c == '\t') && !at_end);
        size_t w = literal ? 1 : 3;
        /* Room for a soft break "=" after this one, unless the line ends. */
        if (col + w > QP_LINE - (at_end ? 0 : 1)) {
            rc |= buf_puts(b, "=\r\n");
            col = 0;
        }
        if (literal) {
            rc |= buf_putc(b, (char)c);
        } else {
            char enc[3] = { '=', hex[c >> 4], hex[c & 15] };
            rc |= buf_append(b, enc, 3);
        }
        col += w;
    }
    if (col > 0) {
        rc |= buf_puts(b, "\r\n");
    }
    return rc;
}

int send_mail_build(const struct env *e, const char *from, uint64_t now_ms, struct buf *out,
                    char *err, size_t n)
{
    char from_addr[320];
    const char *to = env_get(e, ENV_TO);
    const char *id = env_get(e, ENV_ID);
    char to_addr[320];
    struct buf ids = { 0 };
    int rc = -1;
    if (send_mail_addr(from, from_addr, sizeof from_addr) != 0) {
        snprintf(err, n, "--smtp-from has no address");
        goto done;
    }
    if (to == NULL || strncmp(to, "mailto:", 7) != 0
        || send_mail_addr(to + 7, to_addr, sizeof to_addr) != 0 || strchr(to + 7, '<') != NULL) {
        snprintf(err, n, "to is not a mailto: address");
        goto done;
    }
    const char *text = env_get(e, ENV_TEXT);
    if (text == NULL) {
        snprintf(err, n, "nothing to send (no text)");
        goto done;
    }
    /* Subject: the reply's, else the customer's from meta, with one "Re:". */
    char subj[ENV_MAX_SUBJECT + 8];
    const char *s = env_get(e, ENV_SUBJECT);
    char meta_subj[ENV_MAX_SUBJECT];
    if (s == NULL && env_map_str(e, ENV_META, "subject", meta_subj, sizeof meta_subj) == 1) {
        s = meta_subj;
    }
    if (s == NULL || s[0] == '\0') {
        s = "your message";
    }
    snprintf(subj, sizeof subj, "%s%s", strncasecmp(s, "re:", 3) == 0 ? "" : "Re: ", s);

    const char *at = strchr(from_addr, '@');
    time_t t = (time_t)(now_ms / 1000);
    struct tm tm;
    char date[64];
    gmtime_r(&t, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S +0000", &tm);

    buf_reset(out);
    rc = buf_puts(out, "From: ");
    rc |= s_put_clean(out, from, strlen(from));
    rc |= buf_printf(out, "\r\nTo: <%s>\r\n", to_addr);
    rc |= s_header_text(out, "Subject", subj);
    rc |= buf_printf(out, "Date: %s\r\nMessage-ID: <%s%s>\r\n", date, id, at);

    char parent[MAX_ID + 3];
    struct buf pid = { 0 };
    if (env_map_str(e, ENV_META, "in_reply_to", parent, sizeof parent) == 1
        || env_map_str(e, ENV_META, "message_id", parent, sizeof parent) == 1) {
        s_put_id(&pid, parent, strlen(parent));
    }
    s_references(e, &ids);
    if (pid.len > 0) {
        rc |= buf_printf(out, "In-Reply-To: %s\r\n", pid.data);
        /* The parent's id ends References, once. */
        size_t pl = pid.len;
        if (ids.len < pl || memcmp(ids.data + ids.len - pl, pid.data, pl) != 0) {
            if (ids.len > 0) {
                buf_putc(&ids, ' ');
            }
            buf_append(&ids, pid.data, pid.len);
        }
    }
    buf_free(&pid);
    if (ids.len > 0) {
        rc |= s_header_ids(out, "References", ids.data);
    }
    rc |= buf_printf(out, "X-Omnibus-Id: %s\r\n", id);
    rc |= buf_puts(out, "MIME-Version: 1.0\r\n"
                        "Content-Type: text/plain; charset=utf-8\r\n"
                        "Content-Transfer-Encoding: quoted-printable\r\n\r\n");
    rc |= s_qp(out, text);
    if (rc != 0) {
        snprintf(err, n, "out of memory building the message");
        rc = -1;
    }
done:
    buf_free(&ids);
    return rc;
}

/* --- sending ------------------------------------------------------------------ */

static size_t s_read(char *p, size_t size, size_t nmemb, void *arg)
{
    struct send_mail *m = arg;
    size_t room = size * nmemb;
    size_t left = m->msg.len - m->off;
    size_t n = left < room ? left : room;
    memcpy(p, m->msg.data + m->off, n);
    m->off += n;
    return n;
}

/* Keeps the server's last reply line (what it said when it refused). Only
 * what comes in is looked at: what goes out holds AUTH. */
static int s_debug(CURL *h, curl_infotype type, char *p, size_t n, void *arg)
{
    (void)h;
    struct send_mail *m = arg;
    if (type != CURLINFO_HEADER_IN) {
        return 0;
    }
    while (n > 0 && (p[n - 1] == '\r' || p[n - 1] == '\n')) {
        n--;
    }
    if (n >= sizeof m->reply) {
        n = sizeof m->reply - 1;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        m->reply[i] = c < ' ' || c == 0x7f ? ' ' : (char)c;
    }
    m->reply[n] = '\0';
    return 0;
}

void send_mail_deliver(struct send_mail *m, const struct env *e, struct send_result *r)
{
    const struct send_conf *c = m->conf;
    char err[CURL_ERROR_SIZE];
    char to_addr[330];
    char rcpt[340];
    char from[340];
    struct curl_slist *rcpts = NULL;
    if (send_mail_build(e, c->smtp_from, stage_now_ms(), &m->msg, err, sizeof err) != 0) {
        send_result_set(r, SEND_PERM, 0, "%s", err);
        return;
    }
    /* send_mail_build checked it. */
    send_mail_addr(env_get(e, ENV_TO) + 7, to_addr, sizeof to_addr);
    snprintf(rcpt, sizeof rcpt, "<%s>", to_addr);
    snprintf(from, sizeof from, "<%s>", m->from_addr);
    rcpts = curl_slist_append(NULL, rcpt);
    if (rcpts == NULL) {
        send_result_set(r, SEND_TEMP, 0, "out of memory");
        return;
    }
    CURL *h = m->curl;
    err[0] = '\0';
    m->reply[0] = '\0';
    m->off = 0;
    curl_easy_reset(h);
    curl_easy_setopt(h, CURLOPT_URL, c->smtp_url);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
    curl_easy_setopt(h, CURLOPT_MAIL_FROM, from);
    curl_easy_setopt(h, CURLOPT_MAIL_RCPT, rcpts);
    curl_easy_setopt(h, CURLOPT_READFUNCTION, s_read);
    curl_easy_setopt(h, CURLOPT_READDATA, m);
    curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)m->msg.len);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, err);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_DEBUGFUNCTION, s_debug);
    curl_easy_setopt(h, CURLOPT_DEBUGDATA, m);
    curl_easy_setopt(h, CURLOPT_VERBOSE, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)c->timeout_ms);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)c->timeout_ms);
    if (c->smtp_starttls) {
        curl_easy_setopt(h, CURLOPT_USE_SSL, (long)CURLUSESSL_ALL);
    }
    if (c->smtp_user != NULL && c->smtp_user[0] != '\0') {
        curl_easy_setopt(h, CURLOPT_USERNAME, c->smtp_user);
        curl_easy_setopt(h, CURLOPT_PASSWORD, c->smtp_password ? c->smtp_password : "");
    }
    CURLcode cc = curl_easy_perform(h);
    long code = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_setopt(h, CURLOPT_MAIL_RCPT, NULL);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
    curl_easy_setopt(h, CURLOPT_PASSWORD, "");
    curl_slist_free_all(rcpts);
    if (cc == CURLE_OK) {
        send_result_set(r, SEND_SENT, code, "ok");
        const char *at = strchr(m->from_addr, '@');
        snprintf(r->provider_id, sizeof r->provider_id, "<%s%s>", env_get(e, ENV_ID), at);
        return;
    }
    enum send_outcome o = code >= 500 && code <= 599 ? SEND_PERM : SEND_TEMP;
    if (code >= 400 && m->reply[0] != '\0') {
        send_result_set(r, o, code, "smtp %ld: %s", code, m->reply);
    } else {
        send_result_set(r, o, code, "smtp %ld: %.300s", code, err[0] ? err : curl_easy_strerror(cc));
    }
}
