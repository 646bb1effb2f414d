/* ulid — ULIDs (26 characters of Crockford base32: 48-bit ms time, 80 random
 * bits), monotonic within a millisecond, and ids derived from other ids. */
#ifndef OMNI_ULID_H
#define OMNI_ULID_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ULID_LEN 26

/* A generator; one per thread. Zero-initialise it. */
struct ulid_gen {
    uint64_t last_ms;       /* time part of the last id made */
    uint8_t rand[10];       /* random part of the last id made */
};

/* Writes a new id for time ms (ms since epoch) into out[27], NUL-terminated.
 * Ids from one generator sort in the order they were made, also within one
 * millisecond and when the clock steps back. Returns 0, or -1 when the
 * system has no randomness to give. */
int ulid_next(struct ulid_gen *g, uint64_t ms, char out[ULID_LEN + 1]);
/* True when s is 26 Crockford base32 characters with a time that fits. */
bool ulid_valid(const char *s, size_t n);
/* The ms timestamp of a valid ULID. */
uint64_t ulid_time(const char *s);
/* A deterministic id derived from a parent id and a salt (e.g. "reply"):
 * the parent's time with bits from SHA-256(parent || salt), so replaying
 * the parent yields the same child. */
void ulid_derive(const char *parent, const char *salt, char out[ULID_LEN + 1]);

#endif
