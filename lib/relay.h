/* relay — omni-relay: envelopes from one endpoint to another, validated.
 * The `cat` of the pipeline: bridges stdin/stdout and sockets, fans many
 * senders into one line, tees with --tap, and sends malformed input to
 * --dead. */
#ifndef OMNI_RELAY_H
#define OMNI_RELAY_H

#include "stage.h"

extern const struct stage relay_stage;

#endif
