/* handle — normalises customer handles (URIs) to the one spelling identity
 * stores and compares:
 *
 *   tel:, sms:, whatsapp: phones  -> E.164 ("tel:(11) 98765-4321" with
 *                                    country 55 -> tel:+5511987654321);
 *                                    sms: becomes tel: (one phone, one handle)
 *   mailto:                       -> trimmed and lower-cased
 *   whatsapp:<business-scoped id> -> as given (not a phone: it has letters)
 *   any other scheme              -> as given (the scheme lower-cased)
 *
 * What cannot be read is an error with a reason, never a guess. */
#ifndef OMNI_HANDLE_H
#define OMNI_HANDLE_H

#include <stdbool.h>
#include <stddef.h>

#define HANDLE_MAX 1024         /* longest handle accepted, bytes */
#define HANDLE_E164_MAX 17      /* "+" and 15 digits and the NUL */

/* Writes the normalised form of s into out[n] (n >= HANDLE_MAX + 1 is always
 * enough). country is the calling code numbers without one belong to (55).
 * Returns 0, or -1 with why[whyn] saying what is wrong. */
int handle_normalise(const char *s, int country, char *out, size_t n, char *why, size_t whyn);

/* Reads a phone number (digits with optional "+", "00", spaces, dots,
 * dashes and parentheses) into E.164, out[HANDLE_E164_MAX]. Numbers without
 * "+" or "00" are national numbers of country (a leading trunk 0 is
 * dropped). Returns 0, or -1 with why. */
int handle_phone(const char *s, size_t len, int country, char out[HANDLE_E164_MAX],
                 char *why, size_t whyn);

/* True when s is a normalised phone handle of the scheme ("tel", "whatsapp"),
 * i.e. "scheme:+digits"; *e164 then points at the "+". */
bool handle_is_phone(const char *s, const char *scheme, const char **e164);

/* The length of the scheme of a handle (the bytes before ':'), 0 if none. */
size_t handle_scheme_len(const char *s);

#endif
