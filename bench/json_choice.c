/* json_choice — the measurement behind the project's JSON library: parse
 * one webhook many times with cJSON, yajl and jansson, and check that each
 * rejects invalid UTF-8 and says where a broken document breaks.
 * Built by `make bench` when all three libraries are installed. */
#include <cjson/cJSON.h>
#include <jansson.h>
#include <yajl/yajl_tree.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../lib/utf8.h"

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int s_cjson(const char *doc, size_t n, int validate)
{
    if (validate && !utf8_is_valid(doc, n)) {
        return -1;
    }
    cJSON *j = cJSON_ParseWithLength(doc, n);
    if (j == NULL) {
        return -1;
    }
    cJSON_Delete(j);
    return 0;
}

static int s_yajl(const char *doc, size_t n)
{
    (void)n;
    char err[256];
    yajl_val v = yajl_tree_parse(doc, err, sizeof err);
    if (v == NULL) {
        return -1;
    }
    yajl_tree_free(v);
    return 0;
}

static int s_jansson(const char *doc, size_t n)
{
    json_error_t e;
    json_t *j = json_loadb(doc, n, 0, &e);
    if (j == NULL) {
        return -1;
    }
    json_decref(j);
    return 0;
}

static double s_time(const char *doc, size_t n, int which, int iters)
{
    double t0 = s_now();
    for (int i = 0; i < iters; i++) {
        int rc = which == 0 ? s_cjson(doc, n, 0)
               : which == 1 ? s_cjson(doc, n, 1)
               : which == 2 ? s_yajl(doc, n)
               : s_jansson(doc, n);
        if (rc != 0) {
            fprintf(stderr, "json_choice: parser %d failed on the sample\n", which);
            exit(1);
        }
    }
    return (s_now() - t0) / iters * 1e6;
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "examples/webhooks/whatsapp-text.json";
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        return 66;
    }
    static char doc[1 << 16];
    size_t n = fread(doc, 1, sizeof doc - 1, f);
    fclose(f);
    doc[n] = '\0';
    int iters = argc > 2 ? atoi(argv[2]) : 200000;

    static const char *names[] = { "cJSON", "cJSON+utf8 check", "yajl", "jansson" };
    printf("json_choice: %zu-byte document, %d parses each\n", n, iters);
    for (int w = 0; w < 4; w++) {
        printf("  %-18s %6.2f us/parse\n", names[w], s_time(doc, n, w, iters));
    }

    /* Invalid UTF-8 (a lone continuation byte inside a string). */
    const char bad_utf8[] = "{\"text\":\"caf\x80\"}";
    size_t bn = sizeof bad_utf8 - 1;
    printf("  invalid UTF-8 rejected: cJSON %s, cJSON+check %s, yajl %s, jansson %s\n",
           s_cjson(bad_utf8, bn, 0) ? "yes" : "NO",
           s_cjson(bad_utf8, bn, 1) ? "yes" : "NO",
           s_yajl(bad_utf8, bn) ? "yes" : "NO",
           s_jansson(bad_utf8, bn) ? "yes" : "NO");

    /* Where a broken document breaks. */
    const char broken[] = "{\"a\":1,\n \"b\": [1, 2,, 3]}";
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithOpts(broken, &end, 0);
    printf("  broken document: cJSON stops at offset %ld", j ? -1L : (long)(end - broken));
    cJSON_Delete(j);
    json_error_t e;
    json_t *jj = json_loadb(broken, sizeof broken - 1, 0, &e);
    printf(", jansson line %d column %d (%s)", e.line, e.column, e.text);
    json_decref(jj);
    char err[512];
    yajl_val yv = yajl_tree_parse(broken, err, sizeof err);
    for (char *p = err; *p; p++) {
        if (*p == '\n') {
            *p = ' ';
        }
    }
    printf(", yajl \"%s\"\n", yv ? "parsed" : err);
    yajl_tree_free(yv);
    return 0;
}
