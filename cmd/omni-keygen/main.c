/* omni-keygen — writes a CurveZMQ key pair; see lib/curve.c. */
#include "curve.h"

int main(int argc, char **argv)
{
    return curve_keygen_main(argc, argv);
}
