/* metrics — omni-metrics: subscribes to the stages' taps (and takes dead
 * letters) and serves Prometheus text on HTTP /metrics. */
#ifndef OMNI_METRICS_H
#define OMNI_METRICS_H

#include "stage.h"

extern const struct stage metrics_stage;

#endif
