/* omni-agent — the human agents' terminal: queue, claim, show, reply,
 * close, note on omni-archive's database, envelopes into the pipeline. The
 * logic is lib/agent.c. */
#include "agent.h"

int main(int argc, char **argv)
{
    return agent_main(argc, argv);
}
