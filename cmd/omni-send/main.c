/* omni-send — replies out to the customer's channel through a durable
 * outbox, receipts back as events; `status`, `dead` and `retry` look at and
 * fix the outbox. The logic is lib/send.c, lib/send_http.c,
 * lib/send_mail.c and lib/send_cli.c. */
#include "send.h"

int main(int argc, char **argv)
{
    if (argc > 1 && send_is_command(argv[1])) {
        return send_cli(argc - 1, argv + 1);
    }
    return stage_main(&send_stage, argc, argv);
}
