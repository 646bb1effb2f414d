/* noop — a filter stage that does nothing: every envelope passes. It runs
 * on the real runner (stage_main: decode, check, trace stamp, encode, send),
 * so bench/run can compare a chain of these with a chain of raw ZeroMQ
 * relays; the difference is what the runner costs per hop. */
#include "stage.h"

static enum verdict s_handle(void *state, struct stage_ctx *ctx, struct env *e)
{
    (void)state;
    (void)ctx;
    (void)e;
    return STAGE_PASS;
}

static const struct stage s_noop_stage = {
    .name = "noop",
    .summary = "Passes every envelope on unchanged (but for its trace stamp): the runner's own cost.",
    .handle = s_handle,
};

int main(int argc, char **argv)
{
    return stage_main(&s_noop_stage, argc, argv);
}
