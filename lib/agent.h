/* agent — omni-agent, the human side of the handoff, for the terminal. It
 * reads omni-archive's database through a read-only connection (--archive)
 * and writes envelopes into the pipeline (--out: an endpoint, or `-` for
 * msgpack on stdout, so `omni-agent reply … --out - | omni-archive --db a.db`
 * composes):
 *
 *   queue [--queue NAME] [--json]     conversations waiting for a person,
 *                                     highest route.priority first, then the
 *                                     longest waiting (first unanswered inbound)
 *   claim CONVERSATION --as AGENT     an `assign` event (route.agent set, so
 *                                     the archive marks it assigned)
 *   show CONVERSATION|CUSTOMER|HANDLE the customer's whole history on every
 *                                     channel, in time order, notes included
 *   reply CONVERSATION TEXT --as AGENT  dir=out on the channel of the
 *                                     customer's last inbound message, to the
 *                                     handle it came from (e-mail: "Re:" and
 *                                     In-Reply-To/References in meta)
 *   close CONVERSATION --as AGENT [--reason TEXT]   a `close` event
 *   note CONVERSATION TEXT --as AGENT an internal `note` event, never sent
 *
 * Every envelope passes env_check before it leaves. Exit codes: 0, 64 usage,
 * 65 unknown conversation (or nothing to answer), 69 archive missing or
 * endpoint unavailable. */
#ifndef OMNI_AGENT_H
#define OMNI_AGENT_H

#include "buf.h"

/* Runs omni-agent: argv[1] is the subcommand. Returns the exit code. */
int agent_main(int argc, char **argv);

#endif
