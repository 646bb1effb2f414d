/* omni-ingest-webhook — the channels' webhooks in, envelopes out; the logic
 * is lib/webhook.c. */
#include "webhook.h"

int main(int argc, char **argv)
{
    return webhook_main(argc, argv);
}
