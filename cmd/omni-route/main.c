/* omni-route — envelopes in, envelopes out with `route`: the bot or a human
 * queue by the rules file, an agent by the agents file; `explain` shows
 * why. The logic is lib/route.c, lib/rules.c and lib/agents.c. */
#include "route.h"

int main(int argc, char **argv)
{
    if (argc > 1 && route_is_command(argv[1])) {
        return route_explain(argc - 1, argv + 1);
    }
    return stage_main(&route_stage, argc, argv);
}
