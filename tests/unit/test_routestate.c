/* test_routestate — unit tests of lib/routestate.c (omni-route's --state
 * database) and of what it needs from lib/agents.c (agents_watch,
 * agents_restore), on temporary sqlite files: files that are not a route
 * state are refused; decisions are found again, inside their transaction
 * and after a reopen, the first one kept, the old ones pruned a chunk at a
 * time; conversations, presence and turns come back as they were, queues
 * in their order, agents' loads counted; a conversation whose agent left
 * the file waits again, and the watcher hears of it. The stage runs as a
 * real process in tests/integration/routestate.sh. */
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

#include "agents.h"
#include "routestate.h"

#define MON_0930_SP 1794832200000ull    /* Monday 2026-11-16 09:30 in São Paulo */
#define TWO "agent ana queues geral capacity 2\nagent bia queues geral capacity 2\n"

/* A fresh path in a temporary directory (removed at the end). */
static char s_dir[64];

static const char *s_path(const char *name)
{
    static char p[128];
    snprintf(p, sizeof p, "%s/%s", s_dir, name);
    return p;
}

static int s_setup(void **state)
{
    (void)state;
    snprintf(s_dir, sizeof s_dir, "/tmp/test_routestate.XXXXXX");
    return mkdtemp(s_dir) != NULL ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static struct routestate *s_open(const char *name)
{
    char err[512];
    struct routestate *s = NULL;
    int rc = routestate_open(s_path(name), 100, &s, err, sizeof err);
    if (rc != ROUTESTATE_OK) {
        print_error("%s\n", err);
    }
    assert_int_equal(rc, ROUTESTATE_OK);
    return s;
}

/* Agents file text -> a new assignment state. */
static struct agents *s_agents(const char *text)
{
    struct buf msgs = { 0 };
    struct agents_conf *c = agents_conf_parse("a.conf", text, strlen(text), &msgs);
    assert_non_null(c);
    buf_free(&msgs);
    struct agents *a = agents_new();
    assert_non_null(a);
    agents_set_conf(a, &c);
    return a;
}

/* -- files ---------------------------------------------------------------- */

static void test_refuses_what_is_not_a_route_state(void **unused)
{
    (void)unused;
    char err[512];
    struct routestate *s = NULL;
    FILE *f = fopen(s_path("text.db"), "w");
    assert_non_null(f);
    for (int i = 0; i < 100; i++) {
        fputs("not a database, only text\n", f);
    }
    fclose(f);
    assert_int_equal(routestate_open(s_path("text.db"), 0, &s, err, sizeof err), ROUTESTATE_BAD);
    assert_null(s);
    assert_non_null(strstr(err, "text.db: file is not a database"));

    sqlite3 *db;
    assert_int_equal(sqlite3_open(s_path("other.db"), &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "CREATE TABLE handles (handle TEXT)", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(routestate_open(s_path("other.db"), 0, &s, err, sizeof err), ROUTESTATE_BAD);
    assert_non_null(strstr(err, "not an omni-route state"));

    assert_int_equal(routestate_open(s_path("no/such/dir.db"), 0, &s, err, sizeof err), ROUTESTATE_ERROR);
    assert_non_null(strstr(err, "no/such/dir.db: unable to open"));

    /* A newer build's file. */
    s = s_open("newer.db");
    routestate_close(&s);
    assert_null(s);
    assert_int_equal(sqlite3_open(s_path("newer.db"), &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(routestate_open(s_path("newer.db"), 0, &s, err, sizeof err), ROUTESTATE_BAD);
    assert_non_null(strstr(err, "schema version 99 is newer"));
}

/* -- decisions ------------------------------------------------------------ */

static void test_decisions_are_found_again(void **unused)
{
    (void)unused;
    struct routestate *s = s_open("decisions.db");
    struct buf route = { 0 };
    bool routed = true;
    const char r1[] = "\x81\xa6target\xa3" "bot";
    const char r2[] = "\x81\xa6target\xa5geral";
    assert_int_equal(routestate_decision(s, "01A", &route, &routed), ROUTESTATE_NOT_FOUND);
    assert_int_equal(routestate_begin(s), ROUTESTATE_OK);
    assert_true(routestate_in_transaction(s));
    assert_int_equal(routestate_decide(s, "01A", 1000, r1, sizeof r1 - 1), ROUTESTATE_OK);
    assert_int_equal(routestate_decide(s, "01E", 1000, NULL, 0), ROUTESTATE_OK);
    /* Seen inside the transaction; a second decision for one id keeps the first. */
    assert_int_equal(routestate_decide(s, "01A", 2000, r2, sizeof r2 - 1), ROUTESTATE_OK);
    assert_int_equal(routestate_decision(s, "01A", &route, &routed), ROUTESTATE_OK);
    assert_true(routed);
    assert_int_equal(route.len, sizeof r1 - 1);
    assert_memory_equal(route.data, r1, route.len);
    assert_int_equal(routestate_commit(s), ROUTESTATE_OK);
    assert_false(routestate_in_transaction(s));

    /* A rolled back decision is gone. */
    assert_int_equal(routestate_begin(s), ROUTESTATE_OK);
    assert_int_equal(routestate_decide(s, "01R", 1000, r2, sizeof r2 - 1), ROUTESTATE_OK);
    routestate_rollback(s);
    assert_int_equal(routestate_decision(s, "01R", &route, &routed), ROUTESTATE_NOT_FOUND);
    routestate_close(&s);

    s = s_open("decisions.db");
    assert_int_equal(routestate_decision(s, "01A", &route, &routed), ROUTESTATE_OK);
    assert_memory_equal(route.data, r1, sizeof r1 - 1);
    assert_int_equal(routestate_decision(s, "01E", &route, &routed), ROUTESTATE_OK);
    assert_false(routed);
    assert_int_equal(routestate_count(s, true), 2);
    routestate_close(&s);
    buf_free(&route);
}

static void test_old_decisions_are_pruned_in_chunks(void **unused)
{
    (void)unused;
    struct routestate *s = s_open("prune.db");
    char id[16];
    assert_int_equal(routestate_begin(s), ROUTESTATE_OK);
    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof id, "01P%d", i);
        assert_int_equal(routestate_decide(s, id, 100 * (uint64_t)(i + 1), NULL, 0), ROUTESTATE_OK);
    }
    assert_int_equal(routestate_commit(s), ROUTESTATE_OK);
    int status;
    /* Before 350: 100, 200, 300; two at a time. */
    assert_int_equal(routestate_prune(s, 350, 2, &status), 2);
    assert_int_equal(routestate_prune(s, 350, 2, &status), 1);
    assert_int_equal(routestate_prune(s, 350, 2, &status), 0);
    assert_int_equal(status, ROUTESTATE_OK);
    assert_int_equal(routestate_count(s, true), 2);
    struct buf route = { 0 };
    bool routed;
    assert_int_equal(routestate_decision(s, "01P2", &route, &routed), ROUTESTATE_NOT_FOUND);
    assert_int_equal(routestate_decision(s, "01P3", &route, &routed), ROUTESTATE_OK);
    buf_free(&route);
    routestate_close(&s);
}

/* -- conversations -------------------------------------------------------- */

/* A watcher that counts what it hears. */
struct heard {
    int convs;          /* AGENTS_CONV */
    int gone;           /* AGENTS_GONE */
    int agents;         /* AGENTS_AGENTS */
    char last[64];      /* key of the last conversation */
};

static void s_heard(void *arg, enum agents_change what, struct agents_conv *c)
{
    struct heard *h = arg;
    if (what == AGENTS_AGENTS) {
        h->agents++;
        return;
    }
    if (what == AGENTS_CONV) {
        h->convs++;
    } else {
        h->gone++;
    }
    snprintf(h->last, sizeof h->last, "%s", c->key);
}

/* Saves every conversation of keys[], and the agents, in one transaction. */
static void s_save(struct routestate *s, struct agents *a, const char *const *keys)
{
    assert_int_equal(routestate_begin(s), ROUTESTATE_OK);
    for (size_t i = 0; keys[i] != NULL; i++) {
        struct agents_conv *c = agents_find(a, keys[i]);
        if (c != NULL) {
            assert_int_equal(routestate_save(s, a, c), ROUTESTATE_OK);
        } else {
            assert_int_equal(routestate_drop(s, keys[i]), ROUTESTATE_OK);
        }
    }
    assert_int_equal(routestate_save_agents(s, a), ROUTESTATE_OK);
    assert_int_equal(routestate_commit(s), ROUTESTATE_OK);
}

static struct agents_conv *s_queue(struct agents *a, const char *key, int64_t prio)
{
    struct agents_conv *c = agents_get(a, key, true);
    assert_non_null(c);
    assert_int_equal(agents_enqueue(a, c, "geral", prio, "humano", "asked", "01JD50000000000000000000AA"), 0);
    agents_touch(a, c, MON_0930_SP, "whatsapp", "cus_1");
    return c;
}

static void test_conversations_come_back_as_they_were(void **unused)
{
    (void)unused;
    struct heard heard = { 0 };
    struct agents *a = s_agents(TWO);
    agents_watch(a, s_heard, &heard);
    s_queue(a, "c1", 0);
    assert_int_equal(agents_drain(a, MON_0930_SP, NULL, NULL), 1);     /* c1 -> ana */
    assert_int_equal(agents_presence(a, "bia", AGENTS_OFFLINE), 0);
    s_queue(a, "c2", 0);
    s_queue(a, "c3", 2);
    s_queue(a, "c4", 0);
    struct agents_conv *bot = agents_get(a, "c5", false);
    agents_to_bot(a, bot);
    agents_touch(a, bot, MON_0930_SP + 5000, "sms", NULL);
    assert_true(heard.convs >= 9 && heard.agents >= 2);
    struct agents_conv *c4 = agents_find(a, "c4");
    agents_close(a, &c4);
    assert_int_equal(heard.gone, 1);
    assert_string_equal(heard.last, "c4");
    assert_int_equal(agents_waiting(a), 2);

    struct routestate *s = s_open("convs.db");
    const char *const keys[] = { "c1", "c2", "c3", "c4", "c5", NULL };
    s_save(s, a, keys);
    agents_destroy(&a);
    routestate_close(&s);

    s = s_open("convs.db");
    a = s_agents(TWO);
    struct routestate_loaded got;
    assert_int_equal(routestate_load(s, a, &got), ROUTESTATE_OK);
    assert_int_equal(got.convs, 4);
    assert_int_equal(got.requeued, 0);
    assert_int_equal(got.latest_ms, MON_0930_SP + 5000);
    int ana = agents_find_agent(a, "ana"), bia = agents_find_agent(a, "bia");
    struct agents_conv *c1 = agents_find(a, "c1");
    assert_int_equal(c1->state, RULES_ASSIGNED);
    assert_int_equal(c1->agent, ana);
    assert_int_equal(c1->assigns, 1);
    assert_string_equal(c1->first_id, "01JD50000000000000000000AA");
    assert_string_equal(c1->customer, "cus_1");
    assert_string_equal(c1->channel, "whatsapp");
    assert_string_equal(c1->rule, "humano");
    assert_string_equal(c1->reason, "asked");
    assert_true(c1->by_handle);
    assert_int_equal(agents_load(a, ana), 1);
    assert_int_equal(agents_status(a, bia), AGENTS_OFFLINE);
    assert_int_equal(agents_find(a, "c5")->state, RULES_INBOT);
    assert_false(agents_find(a, "c5")->by_handle);
    assert_null(agents_find(a, "c4"));
    assert_int_equal(agents_waiting(a), 2);
    /* The queue's order holds: priority, then who joined first. ana takes
     * c3 (priority 2); bia, back online and the least loaded, takes c2. */
    assert_int_equal(agents_drain(a, MON_0930_SP, NULL, NULL), 1);
    assert_int_equal(agents_find(a, "c3")->agent, ana);
    assert_int_equal(agents_presence(a, "bia", AGENTS_ONLINE), 0);
    assert_int_equal(agents_drain(a, MON_0930_SP, NULL, NULL), 1);
    assert_int_equal(agents_find(a, "c2")->agent, bia);
    /* A conversation that joins now goes after those restored. */
    struct agents_conv *c6 = s_queue(a, "c6", 0);
    assert_true(c6->seq > agents_find(a, "c2")->seq && c6->seq > agents_find(a, "c3")->seq);
    agents_destroy(&a);
    routestate_close(&s);
}

static void test_turns_come_back(void **unused)
{
    (void)unused;
    const char *three = "agent ana queues geral\nagent bia queues geral\nagent caio queues geral\n";
    struct agents *a = s_agents(three);
    struct agents_conv *t1 = s_queue(a, "t1", 0);
    agents_drain(a, MON_0930_SP, NULL, NULL);       /* ana */
    const char *agent;
    assert_string_equal(agents_turn(a, 0, &agent), "geral");
    assert_string_equal(agent, "ana");
    agents_close(a, &t1);                           /* every agent free again */
    struct routestate *s = s_open("turns.db");
    const char *const keys[] = { "t1", NULL };
    s_save(s, a, keys);
    agents_destroy(&a);
    a = s_agents(three);
    struct routestate_loaded got;
    assert_int_equal(routestate_load(s, a, &got), ROUTESTATE_OK);
    s_queue(a, "t2", 0);
    agents_drain(a, MON_0930_SP, NULL, NULL);
    /* All three free: the turn after ana's is bia's (not ana's again). */
    assert_string_equal(agents_name(a, agents_find(a, "t2")->agent), "bia");
    agents_destroy(&a);
    routestate_close(&s);
}

static void test_an_agent_gone_gives_back_her_conversations(void **unused)
{
    (void)unused;
    struct agents *a = s_agents(TWO);
    s_queue(a, "g1", 0);
    s_queue(a, "g2", 0);
    assert_int_equal(agents_drain(a, MON_0930_SP, NULL, NULL), 2);    /* ana, bia */
    s_queue(a, "g3", 0);
    s_queue(a, "g4", 0);
    assert_int_equal(agents_drain(a, MON_0930_SP, NULL, NULL), 2);    /* both full now */
    assert_string_equal(agents_name(a, agents_find(a, "g3")->agent), "ana");
    s_queue(a, "g5", 0);
    s_queue(a, "g6", 0);
    assert_int_equal(agents_drain(a, MON_0930_SP, NULL, NULL), 0);
    struct routestate *s = s_open("gone.db");
    const char *const keys[] = { "g1", "g2", "g3", "g4", "g5", "g6", NULL };
    s_save(s, a, keys);
    agents_destroy(&a);

    /* ana leaves the file: g1 and g3 wait again, behind g5 and g6. */
    struct heard heard = { 0 };
    a = s_agents("agent bia queues geral capacity 2\nagent caio queues geral capacity 1\n");
    agents_watch(a, s_heard, &heard);
    struct routestate_loaded got;
    assert_int_equal(routestate_load(s, a, &got), ROUTESTATE_OK);
    assert_int_equal(got.convs, 6);
    assert_int_equal(got.requeued, 2);
    assert_int_equal(heard.convs, 2);               /* the watcher hears of those two only */
    assert_int_equal(agents_find(a, "g1")->state, RULES_QUEUED);
    assert_int_equal(agents_find(a, "g3")->state, RULES_QUEUED);
    assert_true(agents_find(a, "g1")->seq > agents_find(a, "g6")->seq);
    assert_true(agents_find(a, "g3")->seq > agents_find(a, "g1")->seq);
    assert_int_equal(agents_load(a, agents_find_agent(a, "bia")), 2);
    assert_int_equal(agents_waiting(a), 4);
    /* caio (capacity 1) takes the first in line. */
    assert_int_equal(agents_drain(a, MON_0930_SP, NULL, NULL), 1);
    assert_string_equal(agents_name(a, agents_find(a, "g5")->agent), "caio");
    agents_destroy(&a);
    routestate_close(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refuses_what_is_not_a_route_state),
        cmocka_unit_test(test_decisions_are_found_again),
        cmocka_unit_test(test_old_decisions_are_pruned_in_chunks),
        cmocka_unit_test(test_conversations_come_back_as_they_were),
        cmocka_unit_test(test_turns_come_back),
        cmocka_unit_test(test_an_agent_gone_gives_back_her_conversations),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
