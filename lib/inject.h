/* inject — omni-inject: JSON lines in, envelopes out. The generic ingestor
 * for scripts and integrators. */
#ifndef OMNI_INJECT_H
#define OMNI_INJECT_H

#include "stage.h"

extern const struct stage inject_stage;

#endif
