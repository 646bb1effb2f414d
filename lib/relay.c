/* relay — a pass-through stage: the runner does the work (decode, check,
 * trace stamp, encode, send); handle() only says pass. */
#include "relay.h"

static enum verdict s_handle(void *state, struct stage_ctx *ctx, struct env *e)
{
    (void)state;
    (void)ctx;
    (void)e;
    return STAGE_PASS;
}

const struct stage relay_stage = {
    .name = "relay",
    .summary = "Passes envelopes from --in to --out, checking each one: bridges stdin/stdout "
               "and sockets, fans in, tees with --tap, rejects malformed input to --dead.",
    .handle = s_handle,
};
