/* omni-inject — JSON lines in, envelopes out; the logic is lib/inject.c. */
#include "inject.h"

int main(int argc, char **argv)
{
    return stage_main(&inject_stage, argc, argv);
}
