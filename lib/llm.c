/* llm — OpenAI-compatible chat completions over libcurl; see llm.h. */
#include "llm.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "json.h"

struct llm {
    const struct llm_conf *conf;    /* options */
    CURL *curl;                     /* one handle: the connection is reused */
    struct curl_slist *headers;     /* Content-Type, Accept */
    struct buf endpoint;            /* {url}/v1/chat/completions */
    struct buf body;                /* the request being sent */
    struct buf resp;                /* the response being received */
    bool too_big;                   /* the response passed LLM_MAX_RESPONSE */
};

static size_t s_write(char *p, size_t size, size_t nmemb, void *arg)
{
    struct llm *l = arg;
    size_t n = size * nmemb;
    if (l->resp.len + n > LLM_MAX_RESPONSE) {
        l->too_big = true;
        return 0;
    }
    if (buf_append(&l->resp, p, n) != 0) {
        return 0;
    }
    return n;
}

struct llm *llm_new(const struct llm_conf *conf, char *err, size_t n)
{
    struct llm *l = calloc(1, sizeof *l);
    if (l == NULL) {
        snprintf(err, n, "out of memory");
        return NULL;
    }
    l->conf = conf;
    size_t ulen = strlen(conf->url);
    while (ulen > 0 && conf->url[ulen - 1] == '/') {
        ulen--;
    }
    if (strncmp(conf->url, "http://", 7) != 0 && strncmp(conf->url, "https://", 8) != 0) {
        snprintf(err, n, "--llm %s: not an http:// or https:// URL", conf->url);
        goto fail;
    }
    buf_append(&l->endpoint, conf->url, ulen);
    if (buf_puts(&l->endpoint, "/v1/chat/completions") != 0) {
        snprintf(err, n, "out of memory");
        goto fail;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        snprintf(err, n, "libcurl did not initialise");
        goto fail;
    }
    l->curl = curl_easy_init();
    l->headers = curl_slist_append(NULL, "Content-Type: application/json");
    struct curl_slist *h2 = l->headers ? curl_slist_append(l->headers, "Accept: application/json") : NULL;
    if (l->curl == NULL || h2 == NULL) {
        snprintf(err, n, "libcurl: out of memory");
        goto fail;
    }
    l->headers = h2;
    CURL *c = l->curl;
    curl_easy_setopt(c, CURLOPT_URL, l->endpoint.data);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, l->headers);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, s_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, l);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)conf->timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)conf->timeout_ms);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "omnibus-omni-bot/0.1");
    return l;
fail:
    llm_destroy(&l);
    return NULL;
}

void llm_destroy(struct llm **lp)
{
    struct llm *l = *lp;
    if (l == NULL) {
        return;
    }
    if (l->curl != NULL) {
        curl_easy_cleanup(l->curl);
        curl_global_cleanup();
    }
    curl_slist_free_all(l->headers);
    buf_free(&l->endpoint);
    buf_free(&l->body);
    buf_free(&l->resp);
    free(l);
    *lp = NULL;
}

/* Builds the request body into l->body. */
static int s_request(struct llm *l, const char *system, const char *user)
{
    int rc = -1;
    cJSON *req = cJSON_CreateObject();
    cJSON *msgs = cJSON_AddArrayToObject(req, "messages");
    cJSON *sys = cJSON_CreateObject();
    cJSON *usr = cJSON_CreateObject();
    char *text = NULL;
    if (req == NULL || msgs == NULL || sys == NULL || usr == NULL) {
        cJSON_Delete(sys);
        cJSON_Delete(usr);
        goto done;
    }
    cJSON_AddItemToArray(msgs, sys);
    cJSON_AddItemToArray(msgs, usr);
    if (cJSON_AddStringToObject(req, "model", l->conf->model) == NULL
        || cJSON_AddNumberToObject(req, "temperature", l->conf->temperature) == NULL
        || cJSON_AddNumberToObject(req, "max_tokens", (double)l->conf->max_tokens) == NULL
        || cJSON_AddFalseToObject(req, "stream") == NULL
        || cJSON_AddStringToObject(sys, "role", "system") == NULL
        || cJSON_AddStringToObject(sys, "content", system) == NULL
        || cJSON_AddStringToObject(usr, "role", "user") == NULL
        || cJSON_AddStringToObject(usr, "content", user) == NULL) {
        goto done;
    }
    text = cJSON_PrintUnformatted(req);
    if (text == NULL) {
        goto done;
    }
    buf_reset(&l->body);
    rc = buf_puts(&l->body, text);
done:
    free(text);
    cJSON_Delete(req);
    return rc;
}

int llm_ask(struct llm *l, const char *system, const char *user, struct buf *out, char *err,
            size_t n)
{
    cJSON *doc = NULL;
    int rc = -1;
    if (s_request(l, system, user) != 0) {
        snprintf(err, n, "out of memory building the request");
        goto done;
    }
    buf_reset(&l->resp);
    l->too_big = false;
    curl_easy_setopt(l->curl, CURLOPT_POSTFIELDS, l->body.data);
    curl_easy_setopt(l->curl, CURLOPT_POSTFIELDSIZE, (long)l->body.len);
    CURLcode cc = curl_easy_perform(l->curl);
    if (cc != CURLE_OK) {
        snprintf(err, n, "%s", l->too_big ? "response too large" : curl_easy_strerror(cc));
        goto done;
    }
    long status = 0;
    curl_easy_getinfo(l->curl, CURLINFO_RESPONSE_CODE, &status);
    if (status < 200 || status > 299) {
        snprintf(err, n, "HTTP status %ld", status);
        goto done;
    }
    char why[200];
    doc = json_parse(l->resp.data ? l->resp.data : "", l->resp.len, why, sizeof why);
    if (doc == NULL) {
        snprintf(err, n, "response is not JSON: %s", why);
        goto done;
    }
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(doc, "choices");
    const cJSON *first = cJSON_IsArray(choices) ? cJSON_GetArrayItem(choices, 0) : NULL;
    const cJSON *msg = first ? cJSON_GetObjectItemCaseSensitive(first, "message") : NULL;
    const cJSON *content = msg ? cJSON_GetObjectItemCaseSensitive(msg, "content") : NULL;
    if (!cJSON_IsString(content)) {
        snprintf(err, n, "response has no choices[0].message.content string");
        goto done;
    }
    const char *s = content->valuestring;
    size_t len = strlen(s);
    while (len > 0 && isspace((unsigned char)*s)) {
        s++;
        len--;
    }
    while (len > 0 && isspace((unsigned char)s[len - 1])) {
        len--;
    }
    if (len == 0) {
        snprintf(err, n, "empty answer");
        goto done;
    }
    buf_reset(out);
    if (buf_append(out, s, len) != 0) {
        snprintf(err, n, "out of memory");
        goto done;
    }
    rc = 0;
done:
    cJSON_Delete(doc);
    return rc;
}
