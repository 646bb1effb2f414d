/* archive_raw — how close omni-archive comes to sqlite's own limit. In one
 * run, on the same envelopes:
 *
 *   raw      the rows inserted straight into the archive's schema (FTS5 and
 *            conversations included) with the archive's prepared statements,
 *            --batch per transaction, same pragmas: sqlite alone;
 *   archive  bin/omni-archive --db X < envelopes.msgpack > /dev/null, timed
 *            from spawn to exit: decode, store, commit, re-encode, write.
 *
 * and prints both rates and their ratio (goal >= 0.7). The two alternate
 * for --rounds rounds on fresh databases; the medians are printed, and the
 * median of the rounds' ratios, so that other load on the machine weighs on
 * both sides alike. The envelopes come
 * from --input (a msgpack stream), or are made from --json lines
 * (examples/traffic.jsonl) repeated to --n, each copy with new ids, later
 * timestamps, a customer per handle and a conversation per copy. */
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "archive.h"
#include "buf.h"
#include "envelope.h"
#include "json.h"
#include "mp.h"
#include "ulid.h"

extern char **environ;

#define WEEK_MS (7ull * 86400000ull)

struct bench_conf {
    const char *json;       /* JSON lines to make envelopes from */
    const char *input;      /* or a msgpack stream of envelopes */
    const char *archive;    /* bin/omni-archive, or NULL: raw only */
    const char *dir;        /* where the databases go */
    int64_t n;              /* envelopes to make from --json */
    int64_t batch;          /* rows per transaction */
    int64_t rounds;         /* raw and archive runs, alternating */
    const char *sync;       /* full or normal */
    bool keep;              /* keep the databases */
    bool help;              /* --help */
};

#define C(f) offsetof(struct bench_conf, f)
static const struct opt s_opts[] = {
    { "json", OPT_STR, "examples/traffic.jsonl", C(json), "JSON lines to make the envelopes from" },
    { "input", OPT_STR, NULL, C(input), "use this msgpack stream of envelopes instead" },
    { "n", OPT_INT, "50000", C(n), "envelopes to make from --json" },
    { "rounds", OPT_INT, "3", C(rounds), "runs of each, alternating; medians are shown" },
    { "archive", OPT_STR, NULL, C(archive), "omni-archive binary to time on the same envelopes" },
    { "dir", OPT_STR, NULL, C(dir), "directory for the databases (default: a new one in /tmp)" },
    { "batch", OPT_INT, "256", C(batch), "rows per transaction, for both" },
    { "sync", OPT_STR, "full", C(sync), "synchronous pragma for both: full or normal" },
    { "keep", OPT_BOOL, "no", C(keep), "keep the databases and the input" },
    { "help", OPT_BOOL, "no", C(help), "show this help" },
    { NULL, 0, NULL, 0, NULL }
};
#undef C

static double s_tv(struct timeval tv)
{
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

/* CPU seconds (user + system) in ru. */
static double s_cpu(const struct rusage *ru)
{
    return s_tv(ru->ru_utime) + s_tv(ru->ru_stime);
}

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int s_read_file(const char *path, struct buf *b)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "archive_raw: %s: %s\n", path, strerror(errno));
        return -1;
    }
    char chunk[1 << 16];
    size_t r;
    while ((r = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (buf_append(b, chunk, r) != 0) {
            fclose(f);
            return -1;
        }
    }
    fclose(f);
    return 0;
}

/* A customer id for a handle: the same handle, the same customer. */
static void s_customer(const char *handle, char out[32])
{
    uint64_t h = 1469598103934665603ull;
    for (const char *c = handle; *c != '\0'; c++) {
        h = (h ^ (unsigned char)*c) * 1099511628211ull;
    }
    snprintf(out, 32, "cus-%016llx", (unsigned long long)h);
}

/* Makes n envelopes from the JSON lines in path, as one msgpack stream. */
static int s_make(const char *path, int64_t n, struct buf *out)
{
    struct buf text = { 0 };
    struct env *e = env_new();
    struct ulid_gen ids = { 0 };
    int status = -1;
    if (e == NULL || s_read_file(path, &text) != 0) {
        goto done;
    }
    /* The lines, as offsets into text. */
    size_t nlines = 0, cap = 0;
    size_t *starts = NULL;
    for (size_t i = 0; i < text.len;) {
        char *nl = memchr(text.data + i, '\n', text.len - i);
        size_t end = nl ? (size_t)(nl - text.data) : text.len;
        if (end > i) {
            if (nlines == cap) {
                cap = cap ? cap * 2 : 512;
                size_t *x = realloc(starts, cap * sizeof *x);
                if (x == NULL) {
                    free(starts);
                    goto done;
                }
                starts = x;
            }
            starts[nlines++] = i;
        }
        text.data[end] = '\0';
        i = end + 1;
    }
    uint64_t base = stage_now_ms();
    for (int64_t k = 0; k < n && nlines > 0; k++) {
        uint64_t copy = (uint64_t)k / nlines;
        const char *line = text.data + starts[(uint64_t)k % nlines];
        char err[300];
        struct env_err eerr;
        cJSON *j = json_parse(line, strlen(line), err, sizeof err);
        if (j == NULL || env_from_json(e, j, &eerr) != 0) {
            fprintf(stderr, "archive_raw: %s line %llu: not an envelope\n", path,
                    (unsigned long long)((uint64_t)k % nlines + 1));
            cJSON_Delete(j);
            free(starts);
            goto done;
        }
        cJSON_Delete(j);
        char id[ULID_LEN + 1], cus[32], conv[64];
        ulid_next(&ids, base, id);
        env_set(e, ENV_ID, id, NULL);
        env_set_uint(e, ENV_V, ENV_VERSION);
        env_set_uint(e, ENV_TS, e->ts + copy * WEEK_MS);
        const char *dir = env_get(e, ENV_DIR);
        const char *h = strcmp(dir, "out") == 0 ? env_get(e, ENV_TO) : env_get(e, ENV_FROM);
        s_customer(h ? h : "-", cus);
        snprintf(conv, sizeof conv, "%s-%llu", cus, (unsigned long long)copy);
        env_set(e, ENV_CUSTOMER, cus, NULL);
        env_set(e, ENV_CONVERSATION, conv, NULL);
        if (env_check(e, &eerr) != 0 || env_encode(e, out) != 0) {
            fprintf(stderr, "archive_raw: line %llu: %s %s\n",
                    (unsigned long long)((uint64_t)k % nlines + 1), eerr.field, eerr.reason);
            free(starts);
            goto done;
        }
    }
    free(starts);
    status = 0;
done:
    env_destroy(&e);
    buf_free(&text);
    return status;
}

/* (a): the rows straight into sqlite. Returns seconds, or -1. */
static double s_raw(const char *path, const struct archive_row *rows, int64_t n,
                    const struct bench_conf *conf, double *cpu)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *ins = NULL, *conv = NULL, *begin = NULL, *commit = NULL;
    char err[512];
    double t = -1;
    struct archive_db_opts o = { strcmp(conf->sync, "full") == 0, 5000 };
    if (archive_open(path, ARCHIVE_SERVICE, &o, &db, err, sizeof err) != 0) {
        fprintf(stderr, "archive_raw: %s\n", err);
        return -1;
    }
    if (sqlite3_prepare_v3(db, archive_sql_insert, -1, SQLITE_PREPARE_PERSISTENT, &ins, NULL) != SQLITE_OK
        || sqlite3_prepare_v3(db, archive_sql_conversation, -1, SQLITE_PREPARE_PERSISTENT, &conv, NULL) != SQLITE_OK
        || sqlite3_prepare_v3(db, "BEGIN IMMEDIATE", -1, SQLITE_PREPARE_PERSISTENT, &begin, NULL) != SQLITE_OK
        || sqlite3_prepare_v3(db, "COMMIT", -1, SQLITE_PREPARE_PERSISTENT, &commit, NULL) != SQLITE_OK) {
        fprintf(stderr, "archive_raw: %s\n", sqlite3_errmsg(db));
        goto done;
    }
    struct rusage r0, r1;
    getrusage(RUSAGE_SELF, &r0);
    double t0 = s_now();
    for (int64_t i = 0; i < n; i += conf->batch) {
        if (sqlite3_step(begin) != SQLITE_DONE) {
            fprintf(stderr, "archive_raw: begin: %s\n", sqlite3_errmsg(db));
            goto done;
        }
        sqlite3_reset(begin);
        for (int64_t k = i; k < n && k < i + conf->batch; k++) {
            archive_bind_insert(ins, &rows[k]);
            int rc = sqlite3_step(ins);
            sqlite3_reset(ins);
            if (rc != SQLITE_DONE) {
                fprintf(stderr, "archive_raw: insert: %s\n", sqlite3_errmsg(db));
                goto done;
            }
            if (sqlite3_changes(db) == 1 && rows[k].conversation != NULL) {
                archive_bind_conversation(conv, &rows[k]);
                rc = sqlite3_step(conv);
                sqlite3_reset(conv);
                if (rc != SQLITE_DONE) {
                    fprintf(stderr, "archive_raw: conversation: %s\n", sqlite3_errmsg(db));
                    goto done;
                }
            }
        }
        if (sqlite3_step(commit) != SQLITE_DONE) {
            fprintf(stderr, "archive_raw: commit: %s\n", sqlite3_errmsg(db));
            goto done;
        }
        sqlite3_reset(commit);
    }
    t = s_now() - t0;
    getrusage(RUSAGE_SELF, &r1);
    *cpu = s_cpu(&r1) - s_cpu(&r0);
done:
    sqlite3_finalize(ins);
    sqlite3_finalize(conv);
    sqlite3_finalize(begin);
    sqlite3_finalize(commit);
    sqlite3_close(db);
    return t;
}

/* (b): omni-archive as a filter from the file to /dev/null. Returns seconds,
 * or -1; *cpu gets its CPU seconds. */
static double s_stage(const struct bench_conf *conf, const char *input, const char *db, double *cpu)
{
    char batch[32];
    snprintf(batch, sizeof batch, "%lld", (long long)conf->batch);
    char *argv[] = { (char *)conf->archive, "--db", (char *)db, "--batch", batch,
                     "--sync", (char *)conf->sync, "--log-level", "warn", NULL };
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, input, O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    double t0 = s_now();
    int rc = posix_spawn(&pid, conf->archive, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        fprintf(stderr, "archive_raw: %s: %s\n", conf->archive, strerror(rc));
        return -1;
    }
    int st;
    struct rusage ru;
    while (wait4(pid, &st, 0, &ru) < 0 && errno == EINTR) {
    }
    double t = s_now() - t0;
    *cpu = s_cpu(&ru);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "archive_raw: %s failed (status %d)\n", conf->archive, st);
        return -1;
    }
    return t;
}

/* Removes a database and its WAL files. */
static void s_remove_db(const char *path)
{
    static const char *const sfx[] = { "", "-wal", "-shm" };
    for (int i = 0; i < 3; i++) {
        char p[700];
        snprintf(p, sizeof p, "%s%s", path, sfx[i]);
        unlink(p);
    }
}

static int s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The median of v[0..n) (sorts v). */
static double s_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, s_cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static int64_t s_count(const char *path)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t n = -1;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK
        && sqlite3_prepare_v2(db, "SELECT count(*) FROM messages", -1, &st, NULL) == SQLITE_OK
        && sqlite3_step(st) == SQLITE_ROW) {
        n = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

int main(int argc, char **argv)
{
    struct bench_conf conf;
    memset(&conf, 0, sizeof conf);
    struct opt_set set = { s_opts, &conf };
    struct opt_result res;
    if (opt_parse(&set, 1, argc, argv, NULL, &res) != 0) {
        fprintf(stderr, "archive_raw: %s\n", res.err);
        return res.status;
    }
    free(res.pos);
    if (conf.help) {
        printf("usage: archive_raw [OPTIONS]\nraw batched sqlite inserts vs omni-archive on the same envelopes\n\n");
        opt_help(&set, 1, stdout);
        return 0;
    }
    if (conf.batch < 1 || conf.n < 1 || conf.rounds < 1 || conf.rounds > 99) {
        fprintf(stderr, "archive_raw: --batch and --n must be positive, --rounds 1..99\n");
        return 64;
    }
    int status = 1;
    char dir[512], input[600], raw_db[600], stage_db[600];
    struct buf in = { 0 };
    struct env **envs = NULL;
    struct archive_row *rows = NULL;
    int64_t n = 0;
    if (conf.dir != NULL) {
        snprintf(dir, sizeof dir, "%s", conf.dir);
        mkdir(dir, 0700);
    } else {
        snprintf(dir, sizeof dir, "/tmp/archive-bench.XXXXXX");
        if (mkdtemp(dir) == NULL) {
            fprintf(stderr, "archive_raw: mkdtemp: %s\n", strerror(errno));
            return 1;
        }
    }
    snprintf(input, sizeof input, "%s/input.msgpack", dir);
    snprintf(raw_db, sizeof raw_db, "%s/raw.db", dir);
    snprintf(stage_db, sizeof stage_db, "%s/archive.db", dir);
    if (conf.input != NULL) {
        if (s_read_file(conf.input, &in) != 0) {
            goto done;
        }
        snprintf(input, sizeof input, "%s", conf.input);
    } else {
        if (s_make(conf.json, conf.n, &in) != 0) {
            goto done;
        }
        FILE *f = fopen(input, "wb");
        if (f == NULL || fwrite(in.data, 1, in.len, f) != in.len || fclose(f) != 0) {
            fprintf(stderr, "archive_raw: %s: %s\n", input, strerror(errno));
            goto done;
        }
    }
    /* The rows, decoded before the clock starts. */
    size_t cap = 1024;
    envs = calloc(cap, sizeof *envs);
    for (struct mp_reader r = { (const uint8_t *)in.data, (const uint8_t *)in.data + in.len };
         envs != NULL && r.p < r.end;) {
        const uint8_t *start = r.p;
        struct env_err err;
        if (mp_skip(&r) != 0) {
            fprintf(stderr, "archive_raw: input is not a msgpack stream at byte %zu\n",
                    (size_t)(start - (const uint8_t *)in.data));
            goto done;
        }
        if ((size_t)n == cap) {
            cap *= 2;
            struct env **x = realloc(envs, cap * sizeof *x);
            if (x == NULL) {
                goto done;
            }
            envs = x;
        }
        envs[n] = env_new();
        if (envs[n] == NULL || env_decode(envs[n], start, (size_t)(r.p - start), &err) != 0) {
            fprintf(stderr, "archive_raw: envelope #%lld: %s %s\n", (long long)n + 1, err.field, err.reason);
            n += envs[n] != NULL;
            goto done;
        }
        n++;
    }
    rows = calloc((size_t)n + 1, sizeof *rows);
    if (envs == NULL || rows == NULL) {
        fprintf(stderr, "archive_raw: out of memory\n");
        goto done;
    }
    for (int64_t i = 0; i < n; i++) {
        /* Stored as the stage stores it: the envelope re-encoded. */
        struct buf b = { 0 };
        env_encode(envs[i], &b);
        archive_row_from_env(&rows[i], envs[i], b.data, b.len);
        rows[i].env = b.data;   /* owned by rows[i] until the end */
    }
    double raw_t[100], arc_t[100], ratio[100], raw_cpu[100], arc_cpu[100], cpu_ratio[100];
    int r;
    for (r = 0; r < conf.rounds; r++) {
        s_remove_db(raw_db);
        s_remove_db(stage_db);
        raw_t[r] = s_raw(raw_db, rows, n, &conf, &raw_cpu[r]);
        if (raw_t[r] < 0) {
            goto done;
        }
        printf("archive round %d: raw %.0f rows/s (cpu %.2f s)", r + 1, (double)n / raw_t[r], raw_cpu[r]);
        if (conf.archive != NULL) {
            arc_t[r] = s_stage(&conf, input, stage_db, &arc_cpu[r]);
            if (arc_t[r] < 0) {
                goto done;
            }
            int64_t stored = s_count(stage_db);
            if (stored != n) {
                fprintf(stderr, "archive_raw: omni-archive stored %lld of %lld\n", (long long)stored, (long long)n);
                goto done;
            }
            ratio[r] = raw_t[r] / arc_t[r];
            cpu_ratio[r] = raw_cpu[r] / arc_cpu[r];
            printf(", omni-archive %.0f envelopes/s (cpu %.2f s), ratio %.2f, cpu ratio %.2f",
                   (double)n / arc_t[r], arc_cpu[r], ratio[r], cpu_ratio[r]);
        }
        printf("\n");
        fflush(stdout);
    }
    double raw_rate = (double)n / s_median(raw_t, r);
    printf("archive raw sqlite (batch %lld, sync %s, FTS5 + conversations): rows=%lld raw_rate=%.0f\n",
           (long long)conf.batch, conf.sync, (long long)n, raw_rate);
    if (conf.archive != NULL) {
        double rate = (double)n / s_median(arc_t, r);
        double q = s_median(ratio, r);
        double qc = s_median(cpu_ratio, r);
        printf("archive omni-archive (stdin -> /dev/null): envelopes=%lld archive_rate=%.0f\n", (long long)n, rate);
        printf("archive omni-archive/raw: ratio=%.2f cpu_ratio=%.2f goal=0.70 %s\n", q, qc,
               q >= 0.7 ? "ok" : "BELOW GOAL");
    }
    status = 0;
done:
    for (int64_t i = 0; i < n; i++) {
        if (rows != NULL) {
            free((void *)rows[i].env);
        }
        env_destroy(&envs[i]);
    }
    free(rows);
    free(envs);
    buf_free(&in);
    if (!conf.keep) {
        s_remove_db(raw_db);
        s_remove_db(stage_db);
        if (conf.input == NULL) {
            unlink(input);
        }
        if (conf.dir == NULL) {
            rmdir(dir);
        }
    }
    return status;
}
