/* json — the project's JSON parser: cJSON (the fastest of cJSON, yajl and
 * jansson on a WhatsApp webhook; see bench/json_choice.c) behind a strict
 * UTF-8 check, with errors that say where the document breaks. */
#ifndef OMNI_JSON_H
#define OMNI_JSON_H

#include <stddef.h>

#include <cjson/cJSON.h>

/* Parses s[0..n) (need not be NUL-terminated). Returns the tree (free with
 * cJSON_Delete), or NULL with "line L, column C: what" in err[errn]. */
cJSON *json_parse(const char *s, size_t n, char *err, size_t errn);

#endif
