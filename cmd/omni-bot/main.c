/* omni-bot — answers questions from the knowledge base and hands the rest
 * to people; `omni-bot eval FILE --kb KB` measures it on labelled
 * questions. The logic is lib/bot.c. */
#include "bot.h"

int main(int argc, char **argv)
{
    if (argc > 1 && bot_is_command(argv[1])) {
        return bot_cli(argc - 1, argv + 1);
    }
    return stage_main(&bot_stage, argc, argv);
}
