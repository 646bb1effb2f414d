/* llm — a client of OpenAI-compatible chat completions servers (llama.cpp
 * server, Ollama, vLLM): POST {URL}/v1/chat/completions with a system and a
 * user message, over libcurl, with a timeout; the answer is
 * choices[0].message.content. Every failure (refused, timed out, HTTP
 * status not 2xx, a body that is not the expected JSON) is a return value
 * with a reason, never a crash or a wait past the timeout. */
#ifndef OMNI_LLM_H
#define OMNI_LLM_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define LLM_MAX_RESPONSE (1u << 20)     /* bytes of a response body accepted */

/* Where and how to ask. */
struct llm_conf {
    const char *url;            /* base URL, e.g. http://127.0.0.1:8080 */
    const char *model;          /* "model" of the request */
    int64_t timeout_ms;         /* whole request, connect included */
    double temperature;         /* sampling temperature */
    int64_t max_tokens;         /* most tokens of the answer */
};

struct llm;

/* Returns a client (one connection kept alive), or NULL with err[n]. The
 * strings of conf must outlive the client. */
struct llm *llm_new(const struct llm_conf *conf, char *err, size_t n);
void llm_destroy(struct llm **l);

/* Asks: system and user messages. Returns 0 with the answer (trimmed, not
 * empty) in out, or -1 with the reason in err[n]. */
int llm_ask(struct llm *l, const char *system, const char *user, struct buf *out, char *err,
            size_t n);

#endif
