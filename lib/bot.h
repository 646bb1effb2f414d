/* bot — omni-bot: answers the questions routed to it from the knowledge
 * base (lib/kb.h), and hands the rest to people.
 *
 * For each envelope with dir=in whose route.target is "bot" (or without a
 * route, with --all) it searches the KB with the subject and text:
 *
 *   - a request for a person ("quero falar com um atendente", "agent
 *     please") hands off at once, reason "asked-for-human";
 *   - the best article answers when its score clears --min-score and beats
 *     the runner-up by --min-margin: the question passes on with
 *     bot = {article, score}, then a reply envelope (dir=out, id derived
 *     from the question's, reply_to, the article's answer as text);
 *   - otherwise it hands off, reason "low-confidence": route.target and
 *     route.queue become --handoff-queue, bot = {handoff, article, score},
 *     and an event envelope (dir=event, meta.event = "handoff") follows the
 *     question for metrics. Outside --hours a reply says when people are
 *     back.
 *
 * With --llm URL an OpenAI-compatible server phrases the answer from the
 * top articles (lib/llm.h); on any failure the KB's own answer (or the
 * handoff) stands, counted and logged.
 *
 * `omni-bot eval FILE --kb KB` runs labelled questions through the same
 * decision and prints precision, containment, handoff recall, speed, and
 * the mistakes. */
#ifndef OMNI_BOT_H
#define OMNI_BOT_H

#include <stdbool.h>

#include "stage.h"

extern const struct stage bot_stage;

/* True when arg names a subcommand of omni-bot ("eval"). */
bool bot_is_command(const char *arg);
/* Runs a subcommand; argv[0] is its name. Returns the exit code. */
int bot_cli(int argc, char **argv);

#endif
