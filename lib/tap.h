/* tap — omni-tap: envelopes in, JSON lines out. Look at any stream. */
#ifndef OMNI_TAP_H
#define OMNI_TAP_H

#include "stage.h"

extern const struct stage tap_stage;

#endif
