/* idenv — what an envelope says about identity, part of the identity
 * library (see identity.h, iddb.h): the customer's handle of a message
 * (from for in, to for out, meta.customer on api), WhatsApp's channel
 * facts, and the events link (meta.handles), close (meta.conversation,
 * conversation_of or customer) and any other. identity_assign calls these
 * inside the envelope's savepoint; bad input is IDENTITY_BAD with r->field
 * and r->reason saying why. */
#ifndef OMNI_IDENV_H
#define OMNI_IDENV_H

#include <stdbool.h>

#include "envelope.h"
#include "handle.h"
#include "identity.h"

/* The customer's handle of message e, normalised, into h and the field it
 * came from into *key (ENV_NKEYS for meta.customer); *is_id when
 * meta.customer is a cus_ id rather than a handle. */
int idenv_message_handle(struct identity *id, const struct env *e, char h[HANDLE_MAX + 1],
                         enum env_key *key, bool *is_id, struct identity_result *r);
/* A message (in, out): its channel facts, its customer (made when new) and
 * its conversation into r; h and *key as idenv_message_handle. */
int idenv_message(struct identity *id, struct env *e, char h[HANDLE_MAX + 1],
                  enum env_key *key, struct identity_result *r);
/* An event (dir=event): meta.event link, close, or any other; the customer
 * and conversation it concerns into r (empty when unknown). */
int idenv_event(struct identity *id, struct env *e, struct identity_result *r);

#endif
