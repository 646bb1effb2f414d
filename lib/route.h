/* route — omni-route: envelopes in, envelopes out with `route` set, the
 * rules of --rules deciding (first match wins) between the bot and a human
 * queue, and --agents saying who in a queue takes the conversation. A
 * conversation with a human stays there (sticky) until a close event; agent
 * presence arrives as events too. `omni-route explain` replays JSON lines
 * through the same decisions and prints why each one was made. */
#ifndef OMNI_ROUTE_H
#define OMNI_ROUTE_H

#include "stage.h"

extern const struct stage route_stage;

/* `omni-route explain [FILE|-] --rules R [--agents A]`: argv[0] is
 * "explain". Returns the exit code. */
int route_explain(int argc, char **argv);
/* True when argv[1] of omni-route names a subcommand. */
bool route_is_command(const char *arg);

#endif
