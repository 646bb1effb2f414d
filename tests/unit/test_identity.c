/* test_identity — unit tests of lib/handle.c (the normalisation table) and
 * lib/identity.c below the stage, on a temporary sqlite file: channel
 * facts, link events, merges, unlink splitting customers back into their
 * old ids, conflicts of verified handles, replays, idle and closed
 * conversations, forget. The stage and CLI run as real processes in
 * tests/integration/identity.sh. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "envelope.h"
#include "handle.h"
#include "identity.h"
#include "json.h"
#include "log.h"
#include "ulid.h"

#define HOUR (3600 * 1000LL)
#define T0 1794791647215ULL     /* a ts in the sample traffic */

/* -- handles ------------------------------------------------------------- */

static void test_normalise_table(void **state)
{
    (void)state;
    static const struct {
        const char *in;         /* as written */
        int country;            /* --default-country */
        const char *want;       /* normalised, or NULL: an error */
    } cases[] = {
        { "tel:(11) 98765-4321", 55, "tel:+5511987654321" },
        { "tel:+55 11 98765-4321", 55, "tel:+5511987654321" },
        { "tel:+5511987654321", 1, "tel:+5511987654321" },
        { "tel:0055 11 98765 4321", 55, "tel:+5511987654321" },
        { "tel:011 98765-4321", 55, "tel:+5511987654321" },         /* trunk 0 */
        { "tel:0 21 11 98765-4321", 55, "tel:+5511987654321" },     /* trunk 0 + carrier */
        { "tel:5511987654321", 55, "tel:+5511987654321" },          /* international, no + */
        { "tel:(11) 3456-7890", 55, "tel:+551134567890" },          /* landline */
        { "TEL:+1 (201) 555-0123", 55, "tel:+12015550123" },
        { "tel:201.555.0123", 1, "tel:+12015550123" },
        { "tel:06 1234 5678", 39, "tel:+390612345678" },            /* Italy keeps its 0 */
        { "sms:+5511987654321", 55, "tel:+5511987654321" },         /* sms is the phone */
        { "  tel:+5511987654321  ", 55, "tel:+5511987654321" },
        { "whatsapp:+5511987654321", 55, "whatsapp:+5511987654321" },
        { "whatsapp:(11) 98765-4321", 55, "whatsapp:+5511987654321" },
        { "whatsapp:BR.1234567890abcdef", 55, "whatsapp:BR.1234567890abcdef" },
        { "mailto: Ana.Souza@Example.COM ", 55, "mailto:ana.souza@example.com" },
        { "MAILTO:ana@example.com", 55, "mailto:ana@example.com" },
        { "telegram:120034785", 55, "telegram:120034785" },
        { "Messenger:7390128465730021", 55, "messenger:7390128465730021" },
        { "webchat:s-6b0f3e", 55, "webchat:s-6b0f3e" },
        { "inperson:retirada-pinheiros", 55, "inperson:retirada-pinheiros" },
        { "api:orders", 55, "api:orders" },
        { "agent:marina", 55, "agent:marina" },
        /* errors, not guesses */
        { "tel:98765-4321", 55, NULL },             /* no area code */
        { "tel:123", 1, NULL },                     /* too short */
        { "tel:+1234567890123456", 55, NULL },      /* 16 digits */
        { "tel:+0123456789", 55, NULL },            /* country code 0 */
        { "tel:+55 11 9876x-4321", 55, NULL },
        { "tel:55+11987654321", 55, NULL },
        { "tel:", 55, NULL },
        { "tel:+55;ext=1", 55, NULL },
        { "whatsapp:+55abc", 55, NULL },
        { "mailto:ana", 55, NULL },
        { "mailto:ana@@example.com", 55, NULL },
        { "mailto:Ana Souza <ana@example.com>", 55, NULL },
        { "mailto:ana@example..com", 55, NULL },
        { "mailto:@example.com", 55, NULL },
        { "ana@example.com", 55, NULL },            /* no scheme */
        { "5511987654321", 55, NULL },
        { ":x", 55, NULL },
        { "", 55, NULL },
        { "telegram:a\x01" "b", 55, NULL },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[HANDLE_MAX + 1], why[160] = "";
        int rc = handle_normalise(cases[i].in, cases[i].country, out, sizeof out, why, sizeof why);
        if (cases[i].want == NULL) {
            if (rc == 0) {
                fail_msg("'%s' became '%s', expected an error", cases[i].in, out);
            }
            assert_true(why[0] != '\0');
        } else {
            if (rc != 0) {
                fail_msg("'%s': %s", cases[i].in, why);
            }
            assert_string_equal(out, cases[i].want);
        }
    }
}

static void test_phone_reasons(void **state)
{
    (void)state;
    char e164[HANDLE_E164_MAX], why[160];
    assert_int_equal(handle_phone("(11) 98765-4321", 15, 55, e164, why, sizeof why), 0);
    assert_string_equal(e164, "+5511987654321");
    assert_int_equal(handle_phone("98765-4321", 10, 55, e164, why, sizeof why), -1);
    assert_non_null(strstr(why, "area code"));
    assert_int_equal(handle_phone("+1234567890123456", 17, 55, e164, why, sizeof why), -1);
    assert_non_null(strstr(why, "8 to 15"));
    assert_int_equal(handle_phone("12345678", 8, 0, e164, why, sizeof why), -1);
    assert_non_null(strstr(why, "no default country"));
    const char *num;
    assert_true(handle_is_phone("whatsapp:+5511987654321", "whatsapp", &num));
    assert_string_equal(num, "+5511987654321");
    assert_false(handle_is_phone("whatsapp:BR.123", "whatsapp", &num));
    assert_false(handle_is_phone("tel:+5511987654321", "whatsapp", &num));
    assert_int_equal(handle_scheme_len("mailto:a@b"), 6);
    assert_int_equal(handle_scheme_len("no scheme"), 0);
}

/* -- the store ----------------------------------------------------------- */

/* A temporary database per test. */
struct fixture {
    char dir[64];               /* the directory */
    char db[128];               /* dir/id.db */
    struct identity *id;        /* open on db */
    struct ulid_gen ids;        /* envelope ids */
    struct env *e;              /* the envelope of the test */
};

static struct identity *s_open(struct fixture *f, int64_t cache)
{
    struct identity_opts o = { 55, 24 * HOUR, cache, 1000, true };
    char err[300];
    struct identity *id = identity_open(f->db, &o, err, sizeof err);
    if (id == NULL) {
        fail_msg("identity_open: %s", err);
    }
    return id;
}

static int s_setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/test-identity.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->db, sizeof f->db, "%s/id.db", f->dir);
    f->id = s_open(f, 1000);
    f->e = env_new();
    *state = f;
    return 0;
}

/* The same tests with no cache: every lookup goes to the database. */
static int s_setup_nocache(void **state)
{
    s_setup(state);
    struct fixture *f = *state;
    identity_destroy(&f->id);
    f->id = s_open(f, 0);
    return 0;
}

static int s_teardown(void **state)
{
    struct fixture *f = *state;
    identity_destroy(&f->id);
    env_destroy(&f->e);
    static const char *const sfx[] = { "", "-wal", "-shm", "-journal" };
    for (int i = 0; i < 4; i++) {
        char p[160];
        snprintf(p, sizeof p, "%s%s", f->db, sfx[i]);
        unlink(p);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

/* Assigns the envelope in json (v, id filled when absent) in a transaction
 * of its own; returns the status, the result in r. */
static int s_assign(struct fixture *f, const char *json, uint64_t ts, struct identity_result *r)
{
    char err[200];
    cJSON *j = json_parse(json, strlen(json), err, sizeof err);
    if (j == NULL) {
        fail_msg("bad test JSON: %s", err);
    }
    struct env_err eerr;
    assert_int_equal(env_from_json(f->e, j, &eerr), 0);
    cJSON_Delete(j);
    env_set_uint(f->e, ENV_V, 1);
    env_set_uint(f->e, ENV_TS, ts);
    if (!env_has(f->e, ENV_ID)) {
        char id[ULID_LEN + 1];
        assert_int_equal(ulid_next(&f->ids, ts, id), 0);
        env_set(f->e, ENV_ID, id, NULL);
    }
    if (env_check(f->e, &eerr) != 0) {
        fail_msg("test envelope fails env_check: %s: %s", eerr.field, eerr.reason);
    }
    assert_int_equal(identity_begin(f->id), IDENTITY_OK);
    int rc = identity_assign(f->id, f->e, r);
    assert_int_equal(identity_commit(f->id), IDENTITY_OK);
    return rc;
}

static int s_link(struct fixture *f, const char *a, const char *b, bool verified, bool force,
                  struct identity_result *r)
{
    struct identity_prov p = { "cli", "agent:test", "unit test", verified, T0, NULL };
    assert_int_equal(identity_begin(f->id), IDENTITY_OK);
    int rc = identity_link(f->id, a, b, &p, force, r);
    assert_int_equal(identity_commit(f->id), IDENTITY_OK);
    return rc;
}

static int s_unlink(struct fixture *f, const char *a, const char *b, struct identity_result *r)
{
    assert_int_equal(identity_begin(f->id), IDENTITY_OK);
    int rc = identity_unlink(f->id, 0, a, b, "agent:test", "unit test", r);
    assert_int_equal(identity_commit(f->id), IDENTITY_OK);
    return rc;
}

/* The customer of a handle now ("" when unknown). */
static const char *s_who(struct fixture *f, const char *what)
{
    static char out[4][IDENTITY_ID_LEN + 1];
    static int turn;
    char *c = out[turn++ % 4];
    if (identity_resolve(f->id, what, c, NULL) != IDENTITY_OK) {
        c[0] = '\0';
    }
    return c;
}

/* One number from the database. */
static long long s_count(struct fixture *f, const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open(f->db, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    long long n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

#define WA(from, wa) "{\"channel\":\"whatsapp\",\"dir\":\"in\",\"from\":\"" from "\",\"text\":\"oi\"," \
    "\"meta\":{\"wa_id\":\"" wa "\"}}"
#define MSG(ch, from) "{\"channel\":\"" ch "\",\"dir\":\"in\",\"from\":\"" from "\",\"text\":\"oi\"}"

static void test_channel_facts(void **state)
{
    struct fixture *f = *state;
    struct identity_result wa, sms, mail;
    assert_int_equal(s_assign(f, WA("whatsapp:+5511987654321", "5511987654321"), T0, &wa), IDENTITY_OK);
    assert_int_equal(strncmp(wa.customer, "cus_", 4), 0);
    assert_int_equal(strncmp(wa.conversation, "cnv_", 4), 0);
    /* SMS from the same phone, written nationally: the same customer and
     * the same conversation; the envelope's from is normalised. */
    assert_int_equal(s_assign(f, MSG("sms", "tel:(11) 98765-4321"), T0 + 60000, &sms), IDENTITY_OK);
    assert_string_equal(sms.customer, wa.customer);
    assert_string_equal(sms.conversation, wa.conversation);
    assert_string_equal(env_get(f->e, ENV_FROM), "tel:+5511987654321");
    assert_string_equal(env_get(f->e, ENV_CUSTOMER), wa.customer);
    assert_string_equal(env_get(f->e, ENV_CONVERSATION), wa.conversation);
    /* E-mail, nothing links it: another customer. */
    assert_int_equal(s_assign(f, MSG("email", "mailto:Ana@Example.com"), T0 + 120000, &mail), IDENTITY_OK);
    assert_string_not_equal(mail.customer, wa.customer);
    assert_string_equal(env_get(f->e, ENV_FROM), "mailto:ana@example.com");
    assert_int_equal(s_count(f, "SELECT count(*) FROM links WHERE kind = 'channel' AND state = 'active'"), 1);
}

static void test_business_scoped_id(void **state)
{
    struct fixture *f = *state;
    struct identity_result a, b, c;
    /* Alone it is its own handle. */
    assert_int_equal(s_assign(f, MSG("whatsapp", "whatsapp:BR.77aa"), T0, &a), IDENTITY_OK);
    assert_int_equal(s_assign(f, MSG("sms", "tel:+5511912345678"), T0, &b), IDENTITY_OK);
    assert_string_not_equal(a.customer, b.customer);
    /* With the phone in meta.wa_id: the id, whatsapp:+N and tel:+N are one. */
    assert_int_equal(s_assign(f, WA("whatsapp:BR.77aa", "5511912345678"), T0 + 1000, &c), IDENTITY_OK);
    assert_string_equal(s_who(f, "whatsapp:BR.77aa"), s_who(f, "tel:+5511912345678"));
    assert_string_equal(s_who(f, "whatsapp:+5511912345678"), s_who(f, "tel:+5511912345678"));
    /* A bad wa_id is an error naming the field, and writes nothing. */
    long long before = s_count(f, "SELECT count(*) FROM processed");
    assert_int_equal(s_assign(f, WA("whatsapp:BR.88bb", "12ab"), T0 + 2000, &c), IDENTITY_BAD);
    assert_string_equal(c.field, "meta.wa_id");
    assert_int_equal(s_count(f, "SELECT count(*) FROM processed"), before);
    assert_string_equal(s_who(f, "whatsapp:BR.88bb"), "");
}

static void test_bad_handles(void **state)
{
    struct fixture *f = *state;
    struct identity_result r;
    assert_int_equal(s_assign(f, MSG("sms", "tel:12"), T0, &r), IDENTITY_BAD);
    assert_string_equal(r.field, "from");
    assert_non_null(strstr(r.reason, "tel:12"));
    assert_int_equal(s_assign(f, "{\"channel\":\"email\",\"dir\":\"out\",\"to\":\"mailto:nobody\","
                                 "\"text\":\"x\"}", T0, &r), IDENTITY_BAD);
    assert_string_equal(r.field, "to");
    assert_int_equal(s_assign(f, "{\"channel\":\"webchat\",\"dir\":\"event\",\"meta\":{\"event\":\"link\","
                                 "\"handles\":[\"webchat:s1\",\"mailto:x\"],\"by\":\"site\"}}", T0, &r),
                     IDENTITY_BAD);
    assert_string_equal(r.field, "meta.handles[1]");
    assert_int_equal(s_count(f, "SELECT count(*) FROM handles"), 0);
    assert_int_equal(s_count(f, "SELECT count(*) FROM processed"), 0);
}

static void test_link_event_and_replay(void **state)
{
    struct fixture *f = *state;
    struct identity_result a, b, ev, again;
    assert_int_equal(s_assign(f, MSG("webchat", "webchat:s-1"), T0, &a), IDENTITY_OK);
    assert_int_equal(s_assign(f, "{\"channel\":\"webchat\",\"dir\":\"event\",\"from\":\"webchat:s-1\","
                                 "\"meta\":{\"event\":\"link\",\"handles\":[\"webchat:s-1\",\"mailto:ana@example.com\"],"
                                 "\"by\":\"website-login\",\"verified\":true}}", T0 + 1000, &ev), IDENTITY_OK);
    assert_string_equal(ev.customer, a.customer);
    assert_string_equal(ev.conversation, a.conversation);
    assert_int_equal(s_assign(f, MSG("email", "mailto:ana@example.com"), T0 + 2000, &b), IDENTITY_OK);
    assert_string_equal(b.customer, a.customer);
    assert_string_equal(b.conversation, a.conversation);
    /* The same envelope again (same id): the same answer, nothing written. */
    long long rows = s_count(f, "SELECT (SELECT count(*) FROM processed) + (SELECT count(*) FROM handles)"
                                " + (SELECT count(*) FROM links) + (SELECT count(*) FROM conversations)");
    char id[ULID_LEN + 1];
    snprintf(id, sizeof id, "%s", env_get(f->e, ENV_ID));
    char json[300];
    snprintf(json, sizeof json, "{\"id\":\"%s\",\"channel\":\"email\",\"dir\":\"in\","
             "\"from\":\"mailto:ana@example.com\",\"text\":\"oi\"}", id);
    assert_int_equal(s_assign(f, json, T0 + 2000, &again), IDENTITY_OK);
    assert_true(again.replay);
    assert_string_equal(again.customer, b.customer);
    assert_string_equal(again.conversation, b.conversation);
    assert_int_equal(s_count(f, "SELECT (SELECT count(*) FROM processed) + (SELECT count(*) FROM handles)"
                                " + (SELECT count(*) FROM links) + (SELECT count(*) FROM conversations)"),
                     rows);
}

static void test_merge_and_unlink(void **state)
{
    struct fixture *f = *state;
    struct identity_result x, y, m, u;
    assert_int_equal(s_assign(f, WA("whatsapp:+5511900000001", "5511900000001"), T0, &x), IDENTITY_OK);
    assert_int_equal(s_assign(f, MSG("email", "mailto:bia@example.com"), T0 + HOUR, &y), IDENTITY_OK);
    assert_string_not_equal(x.customer, y.customer);
    /* An agent links them: the older id absorbs the other. */
    assert_int_equal(s_link(f, "tel:+5511900000001", "mailto:bia@example.com", false, false, &m), IDENTITY_OK);
    assert_true(m.merged);
    assert_string_equal(m.customer, x.customer);
    assert_string_equal(m.other, y.customer);
    assert_string_equal(s_who(f, "mailto:bia@example.com"), x.customer);
    assert_string_equal(s_who(f, y.customer), x.customer);     /* an absorbed id resolves */
    /* One open conversation: the latest continues, the other is closed. */
    assert_int_equal(s_count(f, "SELECT count(*) FROM conversations WHERE closed IS NULL"), 1);
    struct identity_result next;
    assert_int_equal(s_assign(f, MSG("sms", "tel:+5511900000001"), T0 + 2 * HOUR, &next), IDENTITY_OK);
    assert_string_equal(next.conversation, y.conversation);
    /* Unlink: the two come apart again, each with its old id. */
    assert_int_equal(s_unlink(f, "mailto:bia@example.com", "tel:+5511900000001", &u), IDENTITY_OK);
    assert_int_equal(u.parts, 2);
    assert_string_equal(s_who(f, "whatsapp:+5511900000001"), x.customer);
    assert_string_equal(s_who(f, "tel:+5511900000001"), x.customer);
    assert_string_equal(s_who(f, "mailto:bia@example.com"), y.customer);
    assert_int_equal(s_count(f, "SELECT count(*) FROM links WHERE state = 'removed'"), 1);
    /* Unlinking what is not linked is an error. */
    assert_int_equal(s_unlink(f, "mailto:bia@example.com", "tel:+5511900000001", &u), IDENTITY_NOT_FOUND);
    /* A link event does not undo a person's unlink; an agent may. */
    struct identity_result ev;
    assert_int_equal(s_assign(f, "{\"channel\":\"webchat\",\"dir\":\"event\",\"meta\":{\"event\":\"link\","
                                 "\"handles\":[\"mailto:bia@example.com\",\"tel:+5511900000001\"],\"by\":\"crm\"}}",
                              T0 + 3 * HOUR, &ev), IDENTITY_OK);
    assert_string_not_equal(s_who(f, "mailto:bia@example.com"), s_who(f, "tel:+5511900000001"));
    assert_int_equal(s_link(f, "tel:+5511900000001", "mailto:bia@example.com", false, false, &m), IDENTITY_OK);
    assert_string_equal(s_who(f, "mailto:bia@example.com"), s_who(f, "tel:+5511900000001"));
}

static void test_unlink_new_id(void **state)
{
    struct fixture *f = *state;
    struct identity_result r, u;
    /* Both handles came in one link: after unlink one keeps the id, the
     * other gets a new one. */
    assert_int_equal(s_link(f, "telegram:1", "mailto:c@example.com", false, false, &r), IDENTITY_OK);
    assert_int_equal(s_link(f, "telegram:1", "messenger:9", false, false, &r), IDENTITY_OK);
    assert_int_equal(s_unlink(f, "telegram:1", "mailto:c@example.com", &u), IDENTITY_OK);
    assert_int_equal(u.parts, 2);
    const char *keep = s_who(f, "telegram:1");
    assert_string_equal(s_who(f, "messenger:9"), keep);
    assert_string_not_equal(s_who(f, "mailto:c@example.com"), keep);
    assert_int_equal(strncmp(s_who(f, "mailto:c@example.com"), "cus_", 4), 0);
}

static void test_conflict(void **state)
{
    struct fixture *f = *state;
    struct identity_result r;
#define LOGIN(a, b) "{\"channel\":\"webchat\",\"dir\":\"event\",\"meta\":{\"event\":\"link\"," \
    "\"handles\":[\"" a "\",\"" b "\"],\"by\":\"website-login\",\"verified\":true}}"
    assert_int_equal(s_assign(f, LOGIN("webchat:s-a", "mailto:a@example.com"), T0, &r), IDENTITY_OK);
    assert_int_equal(s_assign(f, LOGIN("webchat:s-b", "mailto:b@example.com"), T0, &r), IDENTITY_OK);
    const char *ca = s_who(f, "mailto:a@example.com");
    const char *cb = s_who(f, "mailto:b@example.com");
    assert_string_not_equal(ca, cb);
    /* A link event joining them is refused, recorded, counted; the event
     * itself goes on with the first handle's customer. */
    uint64_t before = identity_counts(f->id)->conflicts;
    assert_int_equal(s_assign(f, "{\"channel\":\"webchat\",\"dir\":\"event\",\"meta\":{\"event\":\"link\","
                                 "\"handles\":[\"webchat:s-a\",\"webchat:s-b\"],\"by\":\"crm\"}}", T0 + 1, &r),
                     IDENTITY_OK);
    assert_string_equal(r.customer, ca);
    assert_int_equal(identity_counts(f->id)->conflicts, before + 1);
    assert_string_not_equal(s_who(f, "webchat:s-a"), s_who(f, "webchat:s-b"));
    assert_int_equal(s_count(f, "SELECT count(*) FROM links WHERE state = 'refused'"), 1);
    /* An agent without --force is refused too; with it, they merge. */
    assert_int_equal(s_link(f, "mailto:a@example.com", "mailto:b@example.com", false, false, &r),
                     IDENTITY_CONFLICT);
    assert_non_null(strstr(r.reason, "verified"));
    assert_int_equal(s_link(f, "mailto:a@example.com", "mailto:b@example.com", false, true, &r), IDENTITY_OK);
    assert_true(r.merged);
    assert_string_equal(s_who(f, "webchat:s-b"), s_who(f, "webchat:s-a"));
    /* Unverified handles of one scheme merge without complaint. */
    assert_int_equal(s_assign(f, MSG("email", "mailto:x@example.com"), T0, &r), IDENTITY_OK);
    assert_int_equal(s_assign(f, MSG("email", "mailto:y@example.com"), T0, &r), IDENTITY_OK);
    assert_int_equal(s_link(f, "mailto:x@example.com", "mailto:y@example.com", false, false, &r), IDENTITY_OK);
    assert_true(r.merged);
}

static void test_idle_and_close(void **state)
{
    struct fixture *f = *state;
    struct identity_result a, b, c, close, d, e2;
    assert_int_equal(s_assign(f, MSG("telegram", "telegram:42"), T0, &a), IDENTITY_OK);
    assert_int_equal(s_assign(f, MSG("telegram", "telegram:42"), T0 + 23 * HOUR, &b), IDENTITY_OK);
    assert_string_equal(a.conversation, b.conversation);
    /* Idle longer than 24 h since the last message: a new conversation. */
    assert_int_equal(s_assign(f, MSG("telegram", "telegram:42"), T0 + 48 * HOUR, &c), IDENTITY_OK);
    assert_string_not_equal(c.conversation, b.conversation);
    assert_string_equal(c.customer, a.customer);
    /* A close event ends it; the next message starts another. */
    assert_int_equal(s_assign(f, "{\"channel\":\"telegram\",\"dir\":\"event\",\"from\":\"agent:marina\","
                                 "\"meta\":{\"event\":\"close\",\"conversation_of\":\"telegram:42\","
                                 "\"by\":\"agent:marina\",\"reason\":\"resolvido\"}}", T0 + 48 * HOUR + 1, &close),
                     IDENTITY_OK);
    assert_string_equal(close.conversation, c.conversation);
    assert_string_equal(close.customer, a.customer);
    assert_int_equal(s_assign(f, MSG("telegram", "telegram:42"), T0 + 48 * HOUR + 2, &d), IDENTITY_OK);
    assert_string_not_equal(d.conversation, c.conversation);
    /* Closed by id, and by customer id. */
    char json[300];
    snprintf(json, sizeof json, "{\"channel\":\"api\",\"dir\":\"event\",\"meta\":{\"event\":\"close\","
             "\"conversation\":\"%s\"}}", d.conversation);
    assert_int_equal(s_assign(f, json, T0 + 49 * HOUR, &close), IDENTITY_OK);
    assert_string_equal(close.conversation, d.conversation);
    assert_int_equal(s_assign(f, MSG("telegram", "telegram:42"), T0 + 49 * HOUR + 1, &e2), IDENTITY_OK);
    snprintf(json, sizeof json, "{\"channel\":\"api\",\"dir\":\"event\",\"meta\":{\"event\":\"close\","
             "\"customer\":\"%s\"}}", a.customer);
    assert_int_equal(s_assign(f, json, T0 + 49 * HOUR + 2, &close), IDENTITY_OK);
    assert_string_equal(close.conversation, e2.conversation);
    assert_int_equal(s_count(f, "SELECT count(*) FROM conversations WHERE closed IS NULL"), 0);
    assert_int_equal(s_count(f, "SELECT count(*) FROM conversations WHERE close_reason = 'idle'"), 1);
    /* A close event naming nothing is bad data. */
    assert_int_equal(s_assign(f, "{\"channel\":\"api\",\"dir\":\"event\",\"meta\":{\"event\":\"close\"}}",
                              T0 + 50 * HOUR, &close), IDENTITY_BAD);
}

static void test_api_customer_and_events(void **state)
{
    struct fixture *f = *state;
    struct identity_result a, b, ev;
    assert_int_equal(s_assign(f, MSG("email", "mailto:m@example.com"), T0, &a), IDENTITY_OK);
    /* An integration speaks about a customer in meta.customer. */
    assert_int_equal(s_assign(f, "{\"channel\":\"api\",\"dir\":\"in\",\"from\":\"api:orders\",\"text\":\"x\","
                                 "\"meta\":{\"customer\":\"mailto:M@example.com\"}}", T0 + 1, &b), IDENTITY_OK);
    assert_string_equal(b.customer, a.customer);
    assert_string_equal(b.conversation, a.conversation);
    assert_string_equal(env_get(f->e, ENV_FROM), "api:orders");
    /* A status event from a known handle gets its customer; an unknown one
     * none, and no customer is made for it. */
    assert_int_equal(s_assign(f, "{\"channel\":\"email\",\"dir\":\"event\",\"from\":\"mailto:m@example.com\","
                                 "\"meta\":{\"event\":\"status\"}}", T0 + 2, &ev), IDENTITY_OK);
    assert_string_equal(ev.customer, a.customer);
    assert_int_equal(s_assign(f, "{\"channel\":\"email\",\"dir\":\"event\",\"from\":\"mailto:z@example.com\","
                                 "\"meta\":{\"event\":\"status\"}}", T0 + 3, &ev), IDENTITY_OK);
    assert_string_equal(ev.customer, "");
    assert_false(env_has(f->e, ENV_CUSTOMER));
    assert_string_equal(s_who(f, "mailto:z@example.com"), "");
}

static void test_forget(void **state)
{
    struct fixture *f = *state;
    struct identity_result a, b, m, other;
    assert_int_equal(s_assign(f, WA("whatsapp:+5511955554444", "5511955554444"), T0, &a), IDENTITY_OK);
    assert_int_equal(s_assign(f, MSG("email", "mailto:gone@example.com"), T0 + 1, &b), IDENTITY_OK);
    assert_int_equal(s_link(f, "tel:+5511955554444", "mailto:gone@example.com", false, false, &m), IDENTITY_OK);
    assert_int_equal(s_assign(f, MSG("email", "mailto:stays@example.com"), T0 + 2, &other), IDENTITY_OK);
    struct identity_forgot fg;
    char c[IDENTITY_ID_LEN + 1];
    assert_int_equal(identity_begin(f->id), IDENTITY_OK);
    assert_int_equal(identity_resolve(f->id, "mailto:gone@example.com", c, NULL), IDENTITY_OK);
    assert_int_equal(identity_forget(f->id, c, &fg), IDENTITY_OK);
    assert_int_equal(identity_commit(f->id), IDENTITY_OK);
    assert_int_equal(identity_checkpoint(f->id), IDENTITY_OK);
    assert_int_equal(fg.handles, 3);
    assert_int_equal(fg.links, 2);
    assert_int_equal(fg.customers, 2);
    assert_int_equal(fg.envelopes, 2);
    char sql[600];
    snprintf(sql, sizeof sql,
             "SELECT (SELECT count(*) FROM handles WHERE handle LIKE '%%5511955554444%%' OR handle LIKE '%%gone@%%')"
             " + (SELECT count(*) FROM links WHERE a LIKE '%%gone@%%' OR b LIKE '%%gone@%%' OR a LIKE '%%55554444%%')"
             " + (SELECT count(*) FROM customers WHERE id IN ('%s', '%s'))"
             " + (SELECT count(*) FROM conversations WHERE customer IN ('%s', '%s'))"
             " + (SELECT count(*) FROM processed WHERE customer IN ('%s', '%s'))",
             a.customer, b.customer, a.customer, b.customer, a.customer, b.customer);
    assert_int_equal(s_count(f, sql), 0);
    assert_string_equal(s_who(f, "mailto:stays@example.com"), other.customer);
    assert_string_equal(s_who(f, "mailto:gone@example.com"), "");
    /* Split off from a forgotten customer: the other part keeps no trace
     * of the forgotten id. */
    struct identity_result l, u;
    assert_int_equal(s_link(f, "telegram:9", "mailto:split@example.com", false, false, &l), IDENTITY_OK);
    assert_int_equal(s_unlink(f, "telegram:9", "mailto:split@example.com", &u), IDENTITY_OK);
    const char *part = strcmp(s_who(f, "telegram:9"), l.customer) == 0 ? "mailto:split@example.com"
                                                                        : "telegram:9";
    assert_int_equal(identity_begin(f->id), IDENTITY_OK);
    assert_int_equal(identity_forget(f->id, l.customer, &fg), IDENTITY_OK);
    assert_int_equal(identity_commit(f->id), IDENTITY_OK);
    snprintf(sql, sizeof sql, "SELECT (SELECT count(*) FROM handles WHERE origin = '%s')"
             " + (SELECT count(*) FROM customers WHERE id = '%s' OR merged_into = '%s')",
             l.customer, l.customer, l.customer);
    assert_int_equal(s_count(f, sql), 0);
    assert_int_equal(strncmp(s_who(f, part), "cus_", 4), 0);
}

static void test_show(void **state)
{
    struct fixture *f = *state;
    struct identity_result a;
    assert_int_equal(s_assign(f, WA("whatsapp:+5511987654321", "5511987654321"), T0, &a), IDENTITY_OK);
    struct buf out = { 0 };
    assert_int_equal(identity_show(f->id, a.customer, false, &out), IDENTITY_OK);
    assert_non_null(strstr(out.data, "whatsapp:+5511987654321"));
    assert_non_null(strstr(out.data, "channel by channel:whatsapp verified"));
    buf_reset(&out);
    assert_int_equal(identity_show(f->id, a.customer, true, &out), IDENTITY_OK);
    char err[100];
    cJSON *j = json_parse(out.data, out.len, err, sizeof err);
    assert_non_null(j);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "handles")), 2);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "links")), 1);
    cJSON_Delete(j);
    buf_reset(&out);
    assert_int_equal(identity_show(f->id, "cus_00000000000000000000000000", false, &out), IDENTITY_NOT_FOUND);
    buf_free(&out);
}

int main(void)
{
    log_set_level(LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_normalise_table),
        cmocka_unit_test(test_phone_reasons),
        cmocka_unit_test_setup_teardown(test_channel_facts, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_business_scoped_id, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_bad_handles, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_link_event_and_replay, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_merge_and_unlink, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_merge_and_unlink, s_setup_nocache, s_teardown),
        cmocka_unit_test_setup_teardown(test_unlink_new_id, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_conflict, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_idle_and_close, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_idle_and_close, s_setup_nocache, s_teardown),
        cmocka_unit_test_setup_teardown(test_api_customer_and_events, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_forget, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_show, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
