/* json_lines — the JSON library's bare parse rate on a JSON-lines file: the
 * whole file is read into memory, then every non-empty line is parsed with
 * cJSON_ParseWithLength and freed, R times over. No UTF-8 check, no
 * envelope, no I/O in the timed part: the ceiling omni-inject is held to.
 *
 *   json_lines FILE [R]     prints "lines=N secs=S rate=R" (lines/s) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

/* One line of the file: where it starts and how long it is. */
struct s_line {
    size_t off;     /* byte offset in the file */
    size_t len;     /* bytes, without the newline */
    size_t no;      /* line number in the file, from 1 */
};

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Reads the whole file into *data (the caller frees it). Returns its size,
 * or -1 with a message. */
static long s_slurp(const char *path, char **data)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        return -1;
    }
    long n = -1;
    char *p = NULL;
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        perror(path);
        n = -1;
        goto done;
    }
    p = malloc((size_t)n + 1);
    if (p == NULL) {
        fprintf(stderr, "json_lines: out of memory\n");
        n = -1;
        goto done;
    }
    if (fread(p, 1, (size_t)n, f) != (size_t)n) {
        perror(path);
        free(p);
        p = NULL;
        n = -1;
        goto done;
    }
    p[n] = '\0';
done:
    fclose(f);
    *data = p;
    return n;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: json_lines FILE [R]\n");
        return 64;
    }
    int reps = argc > 2 ? atoi(argv[2]) : 3;
    if (reps < 1) {
        fprintf(stderr, "json_lines: R must be at least 1\n");
        return 64;
    }
    char *data = NULL;
    long size = s_slurp(argv[1], &data);
    if (size < 0) {
        return 66;
    }
    int status = 0;
    size_t cap = 1024, nlines = 0;
    struct s_line *lines = malloc(cap * sizeof *lines);
    if (lines == NULL) {
        fprintf(stderr, "json_lines: out of memory\n");
        free(data);
        return 70;
    }
    size_t off = 0, no = 0;
    while (off < (size_t)size) {
        no++;
        const char *nl = memchr(data + off, '\n', (size_t)size - off);
        size_t len = nl ? (size_t)(nl - (data + off)) : (size_t)size - off;
        if (len > 0) {
            if (nlines == cap) {
                struct s_line *x = realloc(lines, 2 * cap * sizeof *lines);
                if (x == NULL) {
                    fprintf(stderr, "json_lines: out of memory\n");
                    status = 70;
                    goto done;
                }
                lines = x;
                cap *= 2;
            }
            lines[nlines++] = (struct s_line){ off, len, no };
        }
        off += len + 1;
    }
    if (nlines == 0) {
        fprintf(stderr, "json_lines: %s has no lines\n", argv[1]);
        status = 65;
        goto done;
    }
    double t0 = s_now();
    for (int r = 0; r < reps && status == 0; r++) {
        for (size_t i = 0; i < nlines; i++) {
            cJSON *j = cJSON_ParseWithLength(data + lines[i].off, lines[i].len);
            if (j == NULL) {
                fprintf(stderr, "json_lines: %s: line %zu is not JSON\n", argv[1], lines[i].no);
                status = 65;
                break;
            }
            cJSON_Delete(j);
        }
    }
    double dt = s_now() - t0;
    if (status == 0) {
        double total = (double)nlines * reps;
        printf("lines=%.0f secs=%.3f rate=%.0f\n", total, dt, dt > 0 ? total / dt : 0.0);
    }
done:
    free(lines);
    free(data);
    return status;
}
