/* omni-archive — the durable sink: envelopes in, stored, acked, passed on;
 * with a subcommand (history, search, export, forget, retain, acks), the
 * CLI on its database. The logic is lib/archive.c and lib/archive_cli.c. */
#include "archive.h"

int main(int argc, char **argv)
{
    if (argc > 1) {
        archive_cmd *cmd = archive_cli_find(argv[1]);
        if (cmd != NULL) {
            return cmd(argc - 1, argv + 1);
        }
    }
    return stage_main(&archive_stage, argc, argv);
}
