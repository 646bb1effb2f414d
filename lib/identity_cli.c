/* identity_cli — omni-identity's commands for people, on the database the
 * service writes (see identity.h):
 *
 *   link HANDLE HANDLE --by NAME     one person: merges their customers
 *   unlink LINK_ID | HANDLE HANDLE   not one person: splits the customer
 *   show HANDLE | CUSTOMER [--json]  the customer's graph with provenance
 *   forget CUSTOMER | HANDLE         erase a person (GDPR), log truncated
 *
 * Each takes the write lock for one short transaction (--busy waits for
 * the service's batch). */
#include "identity.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "opt.h"

struct identity_cli_conf {
    const char *db;         /* database file */
    int64_t country;        /* calling code of numbers written without one */
    const char *by;         /* who links or unlinks */
    const char *reason;     /* why */
    bool verified;          /* link: the person proved both handles are theirs */
    bool force;             /* link: merge despite a conflict of verified handles */
    bool json;              /* show: JSON */
    int64_t busy_ms;        /* wait for the service's batch this long */
    bool help;              /* --help */
};

#define C(f) offsetof(struct identity_cli_conf, f)
static const struct opt s_cli_opts[] = {
    { "db", OPT_STR, NULL, C(db), "the identity database (the service's --db)" },
    { "default-country", OPT_INT, "55", C(country), "calling code of phone numbers written without one" },
    { "by", OPT_STR, NULL, C(by), "link, unlink: who does it (agent:NAME)" },
    { "reason", OPT_STR, NULL, C(reason), "link, unlink: why" },
    { "verified", OPT_BOOL, "no", C(verified), "link: the person proved both handles are theirs" },
    { "force", OPT_BOOL, "no", C(force),
      "link: merge even when both customers hold a different verified handle of one scheme" },
    { "json", OPT_BOOL, "no", C(json), "show: one JSON object" },
    { "busy", OPT_MS, "5s", C(busy_ms), "how long to wait while the service writes" },
    { "help", OPT_BOOL, "no", C(help), "show this help and exit" },
    { NULL, 0, NULL, 0, NULL }
};
#undef C

static const char s_cli_usage[] =
    "usage: omni-identity link HANDLE HANDLE --by NAME [--reason TEXT] [--verified] [--force] --db PATH\n"
    "       omni-identity unlink LINK_ID | HANDLE HANDLE --by NAME [--reason TEXT] --db PATH\n"
    "       omni-identity show HANDLE | CUSTOMER [--json] --db PATH\n"
    "       omni-identity forget CUSTOMER | HANDLE --db PATH\n"
    "       omni-identity [OPTIONS]   (the filter; see omni-identity --help)\n\noptions:\n";

bool identity_is_command(const char *word)
{
    return strcmp(word, "link") == 0 || strcmp(word, "unlink") == 0 || strcmp(word, "show") == 0
           || strcmp(word, "forget") == 0;
}

static int s_exit(int status, const struct identity_result *r)
{
    switch (status) {
    case IDENTITY_OK:
        return 0;
    case IDENTITY_BAD:
        log_msg(LOG_ERROR, "%s: %s", r->field, r->reason);
        return EXIT_DATAERR;
    case IDENTITY_CONFLICT:
        log_msg(LOG_ERROR, "refused: %s; --force merges them", r->reason);
        return EXIT_DATAERR;
    case IDENTITY_NOT_FOUND:
        log_msg(LOG_ERROR, "%s", r->reason[0] ? r->reason : "not found");
        return EXIT_DATAERR;
    case IDENTITY_BUSY:
        log_msg(LOG_ERROR, "the database is busy: try again");
        return EXIT_TEMPFAIL;
    default:
        return EXIT_IOERR;
    }
}

static int s_cli_link(struct identity *id, const struct identity_cli_conf *c, char **pos, int npos)
{
    struct identity_result r;
    memset(&r, 0, sizeof r);
    if (npos != 2 || c->by == NULL || c->by[0] == '\0') {
        log_msg(LOG_ERROR, "link needs two handles and --by (try --help)");
        return EXIT_USAGE;
    }
    struct identity_prov p = { "cli", c->by, c->reason, c->verified, stage_now_ms(), NULL };
    int rc = identity_begin(id);
    if (rc == IDENTITY_OK) {
        rc = identity_link(id, pos[0], pos[1], &p, c->force, &r);
        /* A refusal is recorded too (state refused). */
        int crc = (rc == IDENTITY_OK || rc == IDENTITY_CONFLICT) ? identity_commit(id) : IDENTITY_OK;
        if (crc != IDENTITY_OK) {
            rc = crc;
        }
    }
    if (rc == IDENTITY_OK) {
        printf("link #%lld: customer %s", (long long)r.link, r.customer);
        if (r.merged) {
            printf(" (merged %s into it)", r.other);
        }
        printf("\n");
    }
    return s_exit(rc, &r);
}

static int s_cli_unlink(struct identity *id, const struct identity_cli_conf *c, char **pos, int npos)
{
    struct identity_result r;
    memset(&r, 0, sizeof r);
    int64_t link = 0;
    if (npos == 1) {
        const char *s = pos[0][0] == '#' ? pos[0] + 1 : pos[0];
        char *end;
        link = strtoll(s, &end, 10);
        if (*s == '\0' || *end != '\0' || link <= 0) {
            log_msg(LOG_ERROR, "unlink: '%s' is not a link id (see show)", pos[0]);
            return EXIT_USAGE;
        }
    }
    if ((npos != 1 && npos != 2) || c->by == NULL || c->by[0] == '\0') {
        log_msg(LOG_ERROR, "unlink needs a link id or two handles, and --by (try --help)");
        return EXIT_USAGE;
    }
    int rc = identity_begin(id);
    if (rc == IDENTITY_OK) {
        rc = identity_unlink(id, link, npos == 2 ? pos[0] : NULL, npos == 2 ? pos[1] : NULL, c->by,
                             c->reason, &r);
        rc = rc == IDENTITY_OK ? identity_commit(id) : rc;
    }
    if (rc == IDENTITY_OK) {
        printf("unlinked #%lld: %s is now %d customer%s\n", (long long)r.link, r.customer,
               r.parts, r.parts == 1 ? "" : "s");
    }
    return s_exit(rc, &r);
}

static int s_cli_show(struct identity *id, const struct identity_cli_conf *c, char **pos, int npos)
{
    struct identity_result r;
    memset(&r, 0, sizeof r);
    if (npos != 1) {
        log_msg(LOG_ERROR, "show needs one handle or customer id (try --help)");
        return EXIT_USAGE;
    }
    char cus[IDENTITY_ID_LEN + 1];
    struct buf out = { 0 };
    int rc = identity_resolve(id, pos[0], cus, &r);
    if (rc == IDENTITY_OK) {
        rc = identity_show(id, cus, c->json, &out);
    }
    if (rc == IDENTITY_OK && out.len > 0) {
        fwrite(out.data, 1, out.len, stdout);
    }
    buf_free(&out);
    return s_exit(rc, &r);
}

static int s_cli_forget(struct identity *id, const struct identity_cli_conf *c, char **pos, int npos)
{
    (void)c;
    struct identity_result r;
    memset(&r, 0, sizeof r);
    if (npos != 1) {
        log_msg(LOG_ERROR, "forget needs one customer id or handle (try --help)");
        return EXIT_USAGE;
    }
    char cus[IDENTITY_ID_LEN + 1];
    struct identity_forgot f;
    int rc = identity_begin(id);
    if (rc == IDENTITY_OK) {
        rc = identity_resolve(id, pos[0], cus, &r);
        rc = rc == IDENTITY_OK ? identity_forget(id, cus, &f) : rc;
        rc = rc == IDENTITY_OK ? identity_commit(id) : rc;
        if (rc != IDENTITY_OK && identity_in_transaction(id)) {
            identity_rollback(id);
        }
    }
    if (rc != IDENTITY_OK) {
        return s_exit(rc, &r);
    }
    rc = identity_checkpoint(id);
    printf("forgot %s: %d customer ids, %d handles, %d links, %d conversations, %d envelope ids\n",
           cus, f.customers, f.handles, f.links, f.conversations, f.envelopes);
    if (rc != IDENTITY_OK) {
        log_msg(LOG_ERROR, "erased, but the write-ahead log still holds old pages (a reader is"
                " busy): run `omni-identity forget` on any id again later, or checkpoint the database");
        return EXIT_TEMPFAIL;
    }
    return 0;
}

int identity_cli(int argc, char **argv)
{
    log_init("omni-identity", NULL);
    log_set_level(LOG_WARN);        /* what was done is printed on stdout */
    struct identity_cli_conf c;
    memset(&c, 0, sizeof c);
    struct opt_set set = { s_cli_opts, &c };
    struct opt_result res;
    int status;
    struct identity *id = NULL;
    if (opt_parse(&set, 1, argc, argv, NULL, &res) != 0) {
        log_msg(LOG_ERROR, "%s: %s (try --help)", argv[0], res.err);
        status = res.status;
        goto done;
    }
    if (c.help) {
        fputs(s_cli_usage, stdout);
        opt_help(&set, 1, stdout);
        status = 0;
        goto done;
    }
    if (c.db == NULL || c.db[0] == '\0') {
        log_msg(LOG_ERROR, "%s: --db is required (try --help)", argv[0]);
        status = EXIT_USAGE;
        goto done;
    }
    if (c.country < 1 || c.country > 999) {
        log_msg(LOG_ERROR, "--default-country: %lld is not a calling code (1..999)", (long long)c.country);
        status = EXIT_USAGE;
        goto done;
    }
    bool link = strcmp(argv[0], "link") == 0;
    struct identity_opts o = { (int)c.country, 24 * 3600 * 1000LL, 0, c.busy_ms, link };
    char err[512];
    id = identity_open(c.db, &o, err, sizeof err);
    if (id == NULL) {
        log_msg(LOG_ERROR, "%s", err);
        status = EXIT_UNAVAILABLE;
        goto done;
    }
    if (link) {
        status = s_cli_link(id, &c, res.pos, res.npos);
    } else if (strcmp(argv[0], "unlink") == 0) {
        status = s_cli_unlink(id, &c, res.pos, res.npos);
    } else if (strcmp(argv[0], "show") == 0) {
        status = s_cli_show(id, &c, res.pos, res.npos);
    } else {
        status = s_cli_forget(id, &c, res.pos, res.npos);
    }
done:
    identity_destroy(&id);
    free(res.pos);
    fflush(stdout);
    return status;
}
