/* mail — one RFC 5322 message becomes one envelope (channel email, dir in),
 * with GMime 3. What omni-ingest-mail keeps of a message:
 *
 *   from      mailto:<the From address, lower-cased> (Sender when From has none)
 *   to        mailto:<the first To address> (Delivered-To when To has none)
 *   subject   decoded (RFC 2047), UTF-8
 *   text      the body: text/plain preferred, else text/html turned to text;
 *             every charset converted to UTF-8 (iso-8859-1 read as
 *             windows-1252, undeclared 8-bit text that is not UTF-8 too);
 *             format=flowed joined; quoted replies trimmed (lines starting
 *             with '>', "On … wrote:" / "Em … escreveu:" attributions, and
 *             "-----Original Message-----" blocks and what follows them)
 *   attachments  [{type, mime_type, name, size, inline?}] for every part
 *             that is not the body: type is image, audio, video or document
 *             as on every channel, size is decoded bytes (the bytes
 *             themselves are not carried)
 *   src_id    the Message-ID without its angle brackets; a message without
 *             a usable one gets "sha256:<hex>" of its headers and content,
 *             so that the same message delivered twice is still one
 *   meta      {message_id, in_reply_to, references} in their wire form
 *             ("<id@host>", references space-separated) for threading,
 *             plus name (the sender's display name), date, and truncated /
 *             attachments_omitted when limits cut something
 *
 * v, id and ts are the caller's (the ingestor's) to set. */
#ifndef OMNI_MAIL_H
#define OMNI_MAIL_H

#include <stdbool.h>
#include <stddef.h>

#include "buf.h"
#include "envelope.h"

#define MAIL_MAX_ATTACHMENTS 100    /* attachments listed; the rest are counted */

#define MAIL_CUT 0x1u               /* raw is only the first bytes of a longer message */

/* Sets up GMime; once per process before mail_to_env. Pairs with mail_fini. */
void mail_init(void);
void mail_fini(void);

/* Replaces e with the envelope of the message raw[0..n) (a leading mbox
 * "From " line is skipped); flags: MAIL_CUT (meta.truncated is set).
 * Returns 0, or -1 with a reason in err[errn] when it is not a message at
 * all (no header fields) or names no usable sender. */
int mail_to_env(const void *raw, size_t n, unsigned flags, struct env *e, char *err, size_t errn);

/* Appends the text of HTML html[0..n) to out: tags dropped (script, style
 * and head with their content), blocks and <br> as line breaks, list items
 * as "- ", links as "text (url)", entities decoded, blockquotes as "> "
 * lines. Returns 0 or -1 (out of memory). */
int mail_html_to_text(const char *html, size_t n, struct buf *out);

/* Trims quoted replies from a UTF-8 text with LF line ends, in place (see
 * the top of this file), and tidies blank lines. Returns the new length
 * (the text stays NUL-terminated when it was). When everything would go
 * (a message that is all quote), the text is left as it was. */
size_t mail_trim_quotes(char *text, size_t n);

/* Appends s[0..n) in charset (NULL: undeclared) to out as UTF-8: line ends
 * become LF, NUL bytes are dropped, what cannot be converted becomes U+FFFD.
 * Returns 0 or -1 (out of memory). */
int mail_to_utf8(const char *charset, const char *s, size_t n, struct buf *out);

/* What a reply to q needs to thread under it (RFC 5322 3.6.4), each buf
 * reset first and left empty when q gives nothing for it: subject "Re: …"
 * of q's; mid, q's Message-ID (meta.message_id, else a src_id that is
 * one); refs, q's chain (meta.references, else meta.in_reply_to) then mid.
 * Returns 0 or -1 (out of memory). */
int mail_reply_thread(const struct env *q, struct buf *subject, struct buf *mid, struct buf *refs);

#endif
