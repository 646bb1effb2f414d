/* omni-relay — envelopes from one endpoint to another; see lib/relay.c. */
#include "relay.h"

int main(int argc, char **argv)
{
    return stage_main(&relay_stage, argc, argv);
}
