/* omni-metrics — Prometheus metrics of the pipeline; see lib/metrics.c. */
#include "metrics.h"

int main(int argc, char **argv)
{
    return stage_main(&metrics_stage, argc, argv);
}
