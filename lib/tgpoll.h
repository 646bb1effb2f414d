/* tgpoll — omni-ingest-telegram: Telegram's getUpdates long poll (libcurl)
 * for bots on hosts with no public URL.
 *
 * Each update that carries a message becomes one envelope: channel
 * telegram, dir in, from telegram:<chat.id>, to telegram:<the bot's
 * username> ("telegram:bot" when getMe gave none), src_id the update_id,
 * text (or the caption), meta {username, first_name, last_name, chat_type,
 * message_id, date, edited, ...}, and photos, documents, voice, audio,
 * video, stickers and locations as attachments {type (image, document,
 * audio, video, sticker, location), mime_type, name, size, file_id, url}
 * -- the shapes omni-ingest-webhook gives the same updates. Service
 * messages (members joining, pins) carry nothing a customer wrote and are
 * passed over (the offset still moves past them).
 *
 * Delivery (DESIGN.md): a batch of updates is spooled together with the
 * next offset ("telegram.offset") in one transaction, and only after that
 * commit is the next getUpdates, which confirms them to Telegram, sent. A
 * crash before the commit makes Telegram deliver them again; the spool
 * knows their update_ids. While the spool is full the offset is held.
 * Network errors, 5xx, 409 and 429 (its retry_after honoured) are waited
 * out; a token Telegram refuses (401, 404) stops the tool with 78. */
#ifndef OMNI_TGPOLL_H
#define OMNI_TGPOLL_H

#include <stdbool.h>

#include <cjson/cJSON.h>

#include "envelope.h"
#include "stage.h"

/* The stage descriptor (its option table is completed on the first call). */
const struct stage *tgpoll_stage(void);

/* Makes e (cleared first) the envelope of one Update object u; to is the
 * bot's handle. Returns 1 built, 0 when the update carries no message (a
 * service message, a callback, an update type not handled), -1 when it is
 * malformed, with a reason in err[errn]. v, id and ts are left to the
 * spool. */
int tgpoll_update_to_env(const cJSON *u, const char *to, struct env *e, char *err, size_t errn);

#endif
