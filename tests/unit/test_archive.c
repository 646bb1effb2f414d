/* test_archive — unit tests of lib/archive.c below the stage: the status an
 * envelope implies, the row it becomes, the schema (refusing databases that
 * are not archives, before changing them), INSERT OR IGNORE, accent-folding
 * search, conversations whatever order their messages arrive in, and
 * retention in chunks. The stage and CLI run as real processes in
 * tests/integration/archive.sh. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "archive.h"
#include "buf.h"
#include "envelope.h"
#include "json.h"

/* A temporary directory per test, removed with what is in it. */
struct fixture {
    char dir[64];           /* the directory */
    char db[128];           /* dir/a.db */
    sqlite3 *conn;          /* a service connection, or NULL */
    sqlite3_stmt *ins;      /* archive_sql_insert */
    sqlite3_stmt *conv;     /* archive_sql_conversation */
};

static int s_setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/test-archive.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->db, sizeof f->db, "%s/a.db", f->dir);
    *state = f;
    return 0;
}

static int s_teardown(void **state)
{
    struct fixture *f = *state;
    sqlite3_finalize(f->ins);
    sqlite3_finalize(f->conv);
    sqlite3_close(f->conn);
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

/* Opens the fixture's archive as the service does, with its statements. */
static void s_open(struct fixture *f)
{
    char err[300];
    struct archive_db_opts o = { false, 1000 };
    assert_int_equal(archive_open(f->db, ARCHIVE_SERVICE, &o, &f->conn, err, sizeof err), 0);
    assert_int_equal(sqlite3_prepare_v2(f->conn, archive_sql_insert, -1, &f->ins, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(f->conn, archive_sql_conversation, -1, &f->conv, NULL), SQLITE_OK);
}

/* An envelope from JSON; v is filled. */
static struct env *s_env(const char *json)
{
    char err[200];
    struct env_err eerr;
    cJSON *j = json_parse(json, strlen(json), err, sizeof err);
    assert_non_null(j);
    struct env *e = env_new();
    assert_non_null(e);
    assert_int_equal(env_from_json(e, j, &eerr), 0);
    cJSON_Delete(j);
    env_set_uint(e, ENV_V, ENV_VERSION);
    assert_int_equal(env_check(e, &eerr), 0);
    return e;
}

/* Stores one envelope as the stage does; returns 1 when it was new. */
static int s_store(struct fixture *f, const char *json)
{
    struct env *e = s_env(json);
    struct buf b = { 0 };
    assert_int_equal(env_encode(e, &b), 0);
    struct archive_row row;
    archive_row_from_env(&row, e, b.data, b.len);
    assert_int_equal(archive_bind_insert(f->ins, &row), SQLITE_OK);
    assert_int_equal(sqlite3_step(f->ins), SQLITE_DONE);
    sqlite3_reset(f->ins);
    int added = sqlite3_changes(f->conn);
    if (added && row.conversation != NULL) {
        assert_int_equal(archive_bind_conversation(f->conv, &row), SQLITE_OK);
        assert_int_equal(sqlite3_step(f->conv), SQLITE_DONE);
        sqlite3_reset(f->conv);
    }
    buf_free(&b);
    env_destroy(&e);
    return added;
}

/* The first column of the first row of sql, as text ("" for none). */
static const char *s_one(sqlite3 *db, const char *sql)
{
    static char out[512];
    sqlite3_stmt *st = NULL;
    out[0] = '\0';
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0) != NULL) {
        snprintf(out, sizeof out, "%s", (const char *)sqlite3_column_text(st, 0));
    }
    sqlite3_finalize(st);
    return out;
}

#define ID(n) "\"id\":\"01JCZZZZZZZZZZZZZZZZZZZZ" n "\""

static void test_status(void **state)
{
    (void)state;
    static const struct {
        const char *json;       /* the envelope */
        const char *status;     /* what it implies, or NULL */
        bool close;             /* a close event */
    } cases[] = {
        { "{" ID("01") ",\"ts\":1,\"channel\":\"sms\",\"dir\":\"in\",\"from\":\"tel:+1\",\"text\":\"x\"}", NULL, false },
        { "{" ID("02") ",\"ts\":1,\"channel\":\"sms\",\"dir\":\"in\",\"from\":\"tel:+1\",\"text\":\"x\","
          "\"route\":{\"target\":\"bot\",\"priority\":1}}", "bot", false },
        { "{" ID("03") ",\"ts\":1,\"channel\":\"sms\",\"dir\":\"in\",\"from\":\"tel:+1\",\"text\":\"x\","
          "\"route\":{\"target\":\"vendas\",\"queue\":\"vendas\"}}", "queued", false },
        { "{" ID("04") ",\"ts\":1,\"channel\":\"sms\",\"dir\":\"in\",\"from\":\"tel:+1\",\"text\":\"x\","
          "\"route\":{\"queue\":\"vendas\",\"agent\":\"marina\"}}", "assigned", false },
        { "{" ID("05") ",\"ts\":1,\"channel\":\"sms\",\"dir\":\"in\",\"from\":\"tel:+1\",\"text\":\"x\","
          "\"route\":{\"agent\":\"\",\"target\":\"\"}}", NULL, false },
        { "{" ID("06") ",\"ts\":1,\"channel\":\"sms\",\"dir\":\"event\",\"meta\":{\"by\":\"x\",\"event\":\"close\"}}",
          "closed", true },
        { "{" ID("07") ",\"ts\":1,\"channel\":\"sms\",\"dir\":\"event\",\"meta\":{\"event\":\"link\"}}", NULL, false },
        { "{" ID("08") ",\"ts\":1,\"channel\":\"sms\",\"dir\":\"in\",\"from\":\"tel:+1\",\"text\":\"x\","
          "\"meta\":{\"event\":\"close\"}}", NULL, false },
        { "{" ID("09") ",\"ts\":1,\"channel\":\"sms\",\"dir\":\"in\",\"from\":\"tel:+1\",\"text\":\"x\","
          "\"route\":{\"target\":7,\"queue\":[1]}}", NULL, false },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct env *e = s_env(cases[i].json);
        bool close = true;
        const char *got = archive_status(e, &close);
        if (cases[i].status == NULL) {
            assert_null(got);
        } else {
            assert_non_null(got);
            assert_string_equal(got, cases[i].status);
        }
        assert_int_equal(close, cases[i].close);
        env_destroy(&e);
    }
}

static void test_row(void **state)
{
    (void)state;
    struct env *e = s_env("{" ID("01") ",\"ts\":42,\"channel\":\"email\",\"dir\":\"out\","
                          "\"to\":\"mailto:a@b.c\",\"subject\":\"S\",\"text\":\"T\",\"customer\":\"C\","
                          "\"conversation\":\"V\",\"reply_to\":\"R\"}");
    struct archive_row row;
    archive_row_from_env(&row, e, "xy", 2);
    assert_string_equal(row.id, "01JCZZZZZZZZZZZZZZZZZZZZ01");
    assert_int_equal(row.ts, 42);
    assert_string_equal(row.channel, "email");
    assert_string_equal(row.dir, "out");
    assert_null(row.from);
    assert_string_equal(row.to, "mailto:a@b.c");
    assert_string_equal(row.subject, "S");
    assert_string_equal(row.text, "T");
    assert_string_equal(row.customer, "C");
    assert_string_equal(row.conversation, "V");
    assert_string_equal(row.reply_to, "R");
    assert_int_equal(row.env_len, 2);
    assert_null(row.status);
    env_destroy(&e);
}

static void test_schema(void **state)
{
    struct fixture *f = *state;
    s_open(f);
    assert_string_equal(s_one(f->conn, "PRAGMA journal_mode"), "wal");
    assert_string_equal(s_one(f->conn, "PRAGMA user_version"), "1");
    sqlite3_finalize(f->ins);
    sqlite3_finalize(f->conv);
    f->ins = f->conv = NULL;
    sqlite3_close(f->conn);
    f->conn = NULL;
    /* Opening again is fine, read-only too. */
    char err[300];
    sqlite3 *db = NULL;
    struct archive_db_opts o = { true, 1000 };
    assert_int_equal(archive_open(f->db, ARCHIVE_SERVICE, &o, &db, err, sizeof err), 0);
    sqlite3_close(db);
    assert_int_equal(archive_open(f->db, ARCHIVE_READ, NULL, &db, err, sizeof err), 0);
    assert_int_not_equal(sqlite3_exec(db, "DELETE FROM messages", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    /* A missing file is 66 for the CLI. */
    char missing[160];
    snprintf(missing, sizeof missing, "%s/missing.db", f->dir);
    assert_int_equal(archive_open(missing, ARCHIVE_READ, NULL, &db, err, sizeof err), 66);
    assert_null(db);
}

static void test_foreign_db(void **state)
{
    struct fixture *f = *state;
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(f->db, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "CREATE TABLE notes (x)", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    char err[300];
    struct archive_db_opts o = { true, 1000 };
    assert_int_equal(archive_open(f->db, ARCHIVE_SERVICE, &o, &db, err, sizeof err), EXIT_CONFIG);
    assert_non_null(strstr(err, "not an omni-archive database"));
    assert_int_equal(archive_open(f->db, ARCHIVE_READ, NULL, &db, err, sizeof err), EXIT_CONFIG);
    /* Refused before anything changed: still a rollback-journal database. */
    assert_int_equal(sqlite3_open(f->db, &db), SQLITE_OK);
    assert_string_equal(s_one(db, "PRAGMA journal_mode"), "delete");
    sqlite3_close(db);
    /* A newer schema is refused too. */
    unlink(f->db);
    assert_int_equal(sqlite3_open(f->db, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 9", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(archive_open(f->db, ARCHIVE_SERVICE, &o, &db, err, sizeof err), EXIT_CONFIG);
    assert_non_null(strstr(err, "newer"));
}

static void test_insert_or_ignore_and_search(void **state)
{
    struct fixture *f = *state;
    s_open(f);
    const char *a = "{" ID("01") ",\"ts\":10,\"channel\":\"whatsapp\",\"dir\":\"in\",\"from\":\"whatsapp:+1\","
                    "\"text\":\"QUERO MEU REEMBOLSO, NÃO veio\"}";
    const char *b = "{" ID("02") ",\"ts\":11,\"channel\":\"email\",\"dir\":\"in\",\"from\":\"mailto:x@y.z\","
                    "\"subject\":\"Reembolso do pedido\",\"text\":\"ação\"}";
    assert_int_equal(s_store(f, a), 1);
    assert_int_equal(s_store(f, b), 1);
    assert_int_equal(s_store(f, a), 0);
    assert_string_equal(s_one(f->conn, "SELECT count(*) FROM messages"), "2");
    assert_string_equal(s_one(f->conn, "SELECT count(*) FROM messages_fts_docsize"), "2");
    assert_string_equal(s_one(f->conn, "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH 'reembolso'"), "2");
    assert_string_equal(s_one(f->conn, "SELECT m.id FROM messages_fts JOIN messages m ON m.seq = messages_fts.rowid"
                                       " WHERE messages_fts MATCH 'nao'"), "01JCZZZZZZZZZZZZZZZZZZZZ01");
    assert_string_equal(s_one(f->conn, "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH 'acao'"), "1");
    /* Messages are immutable; deleting keeps the index in step. */
    assert_int_not_equal(sqlite3_exec(f->conn, "UPDATE messages SET text = 'x'", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(f->conn, "DELETE FROM messages WHERE ts = 10", NULL, NULL, NULL), SQLITE_OK);
    assert_string_equal(s_one(f->conn, "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH 'reembolso'"), "1");
    assert_int_equal(sqlite3_exec(f->conn, "INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')",
                                  NULL, NULL, NULL), SQLITE_OK);
}

/* The messages of one conversation, to be stored in every order. */
static const char *const s_conv_msgs[] = {
    "{" ID("11") ",\"ts\":1000,\"channel\":\"whatsapp\",\"dir\":\"in\",\"from\":\"whatsapp:+1\",\"text\":\"oi\","
    "\"customer\":\"C\",\"conversation\":\"V\",\"route\":{\"target\":\"bot\"}}",
    "{" ID("12") ",\"ts\":900,\"channel\":\"whatsapp\",\"dir\":\"out\",\"to\":\"whatsapp:+1\",\"text\":\"promo\","
    "\"customer\":\"C\",\"conversation\":\"V\"}",
    "{" ID("13") ",\"ts\":1500,\"channel\":\"sms\",\"dir\":\"out\",\"to\":\"tel:+1\",\"text\":\"resposta\","
    "\"customer\":\"C\",\"conversation\":\"V\",\"route\":{\"queue\":\"q\",\"agent\":\"ana\"}}",
    "{" ID("14") ",\"ts\":1200,\"channel\":\"email\",\"dir\":\"in\",\"from\":\"mailto:c@d.e\",\"text\":\"mais\","
    "\"customer\":\"C\",\"conversation\":\"V\"}",
    "{" ID("15") ",\"ts\":2000,\"channel\":\"whatsapp\",\"dir\":\"out\",\"to\":\"whatsapp:+1\",\"text\":\"ok\","
    "\"customer\":\"C\",\"conversation\":\"V\"}",
    "{" ID("16") ",\"ts\":3000,\"channel\":\"whatsapp\",\"dir\":\"event\",\"customer\":\"C\",\"conversation\":\"V\","
    "\"meta\":{\"event\":\"close\"}}",
};

static void test_conversation_any_order(void **state)
{
    struct fixture *f = *state;
    s_open(f);
    const size_t n = sizeof s_conv_msgs / sizeof s_conv_msgs[0];
    /* Rotations and the reverse of the arrival order: the same result. */
    for (size_t round = 0; round <= n; round++) {
        assert_int_equal(sqlite3_exec(f->conn, "DELETE FROM messages; DELETE FROM conversations",
                                      NULL, NULL, NULL), SQLITE_OK);
        for (size_t k = 0; k < n; k++) {
            size_t i = round < n ? (k + round) % n : n - 1 - k;
            assert_int_equal(s_store(f, s_conv_msgs[i]), 1);
        }
        for (size_t k = 0; k < n; k++) {
            assert_int_equal(s_store(f, s_conv_msgs[k]), 0);    /* replays change nothing */
        }
        assert_string_equal(s_one(f->conn, "SELECT customer || '|' || status || '|' || first_inbound || '|' ||"
                                           " first_response || '|' || last_activity || '|' || messages || '|' ||"
                                           " closed_at FROM conversations WHERE id = 'V'"),
                            "C|closed|1000|1500|3000|5|3000");
        const char *ch = s_one(f->conn, "SELECT channels FROM conversations");
        assert_non_null(strstr(ch, "whatsapp"));
        assert_non_null(strstr(ch, "sms"));
        assert_non_null(strstr(ch, "email"));
        assert_int_equal(strlen(ch), strlen("whatsapp,sms,email"));
    }
}

static void test_status_newest_wins(void **state)
{
    struct fixture *f = *state;
    s_open(f);
    s_store(f, "{" ID("21") ",\"ts\":2000,\"channel\":\"sms\",\"dir\":\"in\",\"from\":\"tel:+1\",\"text\":\"a\","
               "\"conversation\":\"W\",\"route\":{\"queue\":\"q\",\"agent\":\"ana\"}}");
    s_store(f, "{" ID("22") ",\"ts\":1000,\"channel\":\"sms\",\"dir\":\"in\",\"from\":\"tel:+1\",\"text\":\"b\","
               "\"conversation\":\"W\",\"route\":{\"target\":\"bot\"}}");
    assert_string_equal(s_one(f->conn, "SELECT status FROM conversations WHERE id = 'W'"), "assigned");
    s_store(f, "{" ID("23") ",\"ts\":2500,\"channel\":\"sms\",\"dir\":\"in\",\"from\":\"tel:+1\",\"text\":\"c\","
               "\"conversation\":\"W\"}");
    assert_string_equal(s_one(f->conn, "SELECT status || '|' || ifnull(customer, '-') || '|' ||"
                                       " ifnull(first_response, '-') FROM conversations WHERE id = 'W'"),
                        "assigned|-|-");
    s_store(f, "{" ID("24") ",\"ts\":100,\"channel\":\"api\",\"dir\":\"in\",\"from\":\"api:x\",\"text\":\"d\","
               "\"conversation\":\"N\"}");
    assert_string_equal(s_one(f->conn, "SELECT status FROM conversations WHERE id = 'N'"), "open");
}

static void test_retain(void **state)
{
    struct fixture *f = *state;
    s_open(f);
    char json[400];
    for (int i = 0; i < 25; i++) {
        snprintf(json, sizeof json, "{\"id\":\"01JCZZZZZZZZZZZZZZZZZZZZ%02d\",\"ts\":%d,\"channel\":\"sms\","
                 "\"dir\":\"in\",\"from\":\"tel:+1\",\"text\":\"m%d\",\"conversation\":\"V%d\"}",
                 i, 1000 + i, i, i);
        assert_int_equal(s_store(f, json), 1);
    }
    int rc;
    int64_t convs = -1;
    /* One round of at most 4: four go, conversations wait for the last round. */
    assert_int_equal(archive_retain(f->conn, 1020, 4, 1, &convs, &rc), 4);
    assert_int_equal(convs, 0);
    assert_int_equal(archive_retain(f->conn, 1020, 4, 0, &convs, &rc), 16);
    assert_int_equal(rc, SQLITE_DONE);
    assert_int_equal(convs, 20);
    assert_string_equal(s_one(f->conn, "SELECT min(ts) || '|' || count(*) FROM messages"), "1020|5");
    assert_string_equal(s_one(f->conn, "SELECT count(*) FROM conversations"), "5");
    assert_string_equal(s_one(f->conn, "SELECT count(*) FROM messages_fts_docsize"), "5");
    assert_int_equal(archive_retain(f->conn, 1020, 4, 0, &convs, &rc), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status),
        cmocka_unit_test(test_row),
        cmocka_unit_test_setup_teardown(test_schema, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_foreign_db, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_insert_or_ignore_and_search, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_conversation_any_order, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_status_newest_wins, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_retain, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
