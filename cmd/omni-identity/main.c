/* omni-identity — envelopes in, envelopes out with customer and
 * conversation; `link`, `unlink`, `show` and `forget` edit and show the
 * identity graph. The logic is lib/identity.c. */
#include "identity.h"

int main(int argc, char **argv)
{
    if (argc > 1 && identity_is_command(argv[1])) {
        return identity_cli(argc - 1, argv + 1);
    }
    return stage_main(&identity_stage, argc, argv);
}
