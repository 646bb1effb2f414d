/* omni-tap — envelopes in, JSON lines out; the logic is lib/tap.c. */
#include "tap.h"

int main(int argc, char **argv)
{
    return stage_main(&tap_stage, argc, argv);
}
