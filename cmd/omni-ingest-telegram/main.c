/* omni-ingest-telegram — Telegram getUpdates long polling into the spool,
 * then envelopes out; the logic is lib/tgpoll.c. */
#include "tgpoll.h"

int main(int argc, char **argv)
{
    return stage_main(tgpoll_stage(), argc, argv);
}
