/* test_rules — the rules file of omni-route (lib/rules.c): messages that
 * name line and column, matching (accents, case, meta, state, and/or/not),
 * business hours across time zones and holidays, first match wins, a regex
 * that cannot hang the stage; and the assignment of lib/agents.c: least
 * loaded, round-robin ties, capacity, presence, priority, close. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "agents.h"
#include "buf.h"
#include "envelope.h"
#include "rules.h"

/* Times (ms since epoch) the tests look at. */
#define MON_0830_SP 1794828600000ull    /* Mon 2026-11-16 11:30Z = 08:30 in São Paulo */
#define MON_0930_SP 1794832200000ull    /* 12:30Z = 09:30 */
#define MON_1759_SP 1794862740000ull    /* 20:59Z = 17:59 */
#define MON_1800_SP 1794862800000ull    /* 21:00Z = 18:00 */
#define THU_1200_SP 1795100400000ull    /* Thu 2026-11-19 15:00Z = 12:00 */
#define FRI_1200_SP 1795186800000ull    /* Fri 2026-11-20 15:00Z = 12:00, a holiday */
#define FRI_2200_SP 1795222800000ull    /* Sat 2026-11-21 01:00Z = Fri 22:00, still the holiday */
#define SAT_2330_SP 1795314600000ull    /* Sun 2026-11-22 02:30Z = Sat 23:30 */
#define JUL_0830_UTC 1783326600000ull   /* Mon 2026-07-06 08:30Z = 09:30 in Lisbon (summer) */
#define JAN_0830_UTC 1767601800000ull   /* Mon 2026-01-05 08:30Z = 08:30 in Lisbon (winter) */

/* Parses text as "t.conf"; the messages land in *msgs. */
static struct rules *s_parse(const char *text, struct buf *msgs)
{
    buf_reset(msgs);
    return rules_parse("t.conf", text, strlen(text), NULL, msgs);
}

/* The first line of the messages of a file that must fail. */
static void s_fails(const char *text, const char *want)
{
    struct buf msgs = { 0 };
    struct rules *r = s_parse(text, &msgs);
    if (r != NULL || msgs.data == NULL || strncmp(msgs.data, want, strlen(want)) != 0) {
        print_error("for:  %s\nwant: %s\ngot:  %s\n", text, want, msgs.data ? msgs.data : "(nothing)");
        fail();
    }
    rules_destroy(&r);
    buf_free(&msgs);
}

/* An inbound envelope with text (and meta entries k=v, strings). */
static struct env *s_msg(const char *channel, const char *text, uint64_t ts)
{
    struct env *e = env_new();
    assert_non_null(e);
    assert_int_equal(env_set(e, ENV_CHANNEL, channel, NULL), 0);
    assert_int_equal(env_set(e, ENV_DIR, "in", NULL), 0);
    assert_int_equal(env_set(e, ENV_FROM, "whatsapp:+5511987654321", NULL), 0);
    if (text != NULL) {
        assert_int_equal(env_set(e, ENV_TEXT, text, NULL), 0);
    }
    env_set_uint(e, ENV_TS, ts);
    return e;
}

/* The name of the rule that matches e in state, or "-". */
static const char *s_match(struct rules *r, const struct env *e, enum rules_state state, bool keep)
{
    struct rules_input in = { e, state, e->ts };
    const struct rules_rule *ru = rules_match(r, &in, keep, NULL);
    return ru ? ru->name : "-";
}

/* ---- messages ------------------------------------------------------------ */

static void test_errors_name_line_and_column(void **unused)
{
    (void)unused;
    s_fails("rule a: * -> bot\n\nrule b: chanel sms -> bot\n",
            "t.conf:3:9: unknown condition 'chanel' (did you mean 'channel'?)");
    s_fails("rule a: channel smss -> bot\n", "t.conf:1:17: unknown channel 'smss' (did you mean 'sms'?)");
    s_fails("rule a: text ~ \"abc -> bot\n", "t.conf:1:16: unterminated string");
    s_fails("rule a: text ~ \"ab(c\" -> bot\n", "t.conf:1:21: bad regex: missing closing parenthesis");
    s_fails("rule a: dir in bot\n", "t.conf:1:16: unknown condition 'bot'");
    s_fails("rule a: dir in\n", "t.conf:1:15: expected '->' and an action");
    s_fails("rule a: * -> quee x\n", "t.conf:1:14: unknown action 'quee' (did you mean 'queue'?)");
    s_fails("rule a: * -> bot priority 2\n", "t.conf:1:18: priority orders a queue");
    s_fails("rule a: * -> queue geral priority alta\n", "t.conf:1:35: priority needs a number");
    s_fails("rul a: * -> bot\n", "t.conf:1:1: unknown statement 'rul' (did you mean 'rule'?)");
    s_fails("rule a: * -> bot\nrule a: * -> bot\n", "t.conf:2:6: a second rule named 'a' (the first is on line 1)");
    s_fails("rule a: (dir in -> bot\n", "t.conf:1:17: expected ')' to close the '(' at column 9");
    s_fails("rule a: meta.vip = -> bot\n", "t.conf:1:20: = needs a \"value\"");
    s_fails("rule a: dir in and -> bot\n", "t.conf:1:20: expected a condition, not '->'");
    s_fails("", "t.conf:1:1: no rules");
    /* A continuation line keeps its own line numbers; columns count characters. */
    s_fails("rule reembolso: text ~ \"reembolso\"\n    and chanel sms -> bot\n",
            "t.conf:2:9: unknown condition 'chanel'");
    s_fails("rule ç: * -> bot\n", "t.conf:1:6: 'ç' is not a rule name");
    s_fails("# ação\nrule a: text ~ \"ação(\" -> bot\n", "t.conf:2:22: bad regex: missing closing parenthesis");
    /* Inside hours: the column of the bad part of the string. */
    s_fails("rule a: hours \"seg-sex 09:00-18:00, sab 9h-13h\" -> bot\n",
            "t.conf:1:41: '9h-13h' is not a time range");
    s_fails("rule a: hours \"seg-sex 09:00-18:00 America/Sao_Pablo\" -> bot\n",
            "t.conf:1:36: unknown time zone 'America/Sao_Pablo'");
    s_fails("timezone Mars/Olympus\nrule a: * -> bot\n", "t.conf:1:10: unknown time zone 'Mars/Olympus'");
    s_fails("holiday 2026-02-30\nrule a: * -> bot\n", "t.conf:1:9: '2026-02-30' is not a date");
    s_fails("rule a: hours comercial -> bot\n", "t.conf:1:15: unknown hours 'comercial'");
}

static void test_every_error_is_reported(void **unused)
{
    (void)unused;
    struct buf msgs = { 0 };
    struct rules *r = s_parse("rule a: chanel sms -> bot\nrule b: * -> quee\nrule c: * -> bot\n", &msgs);
    assert_null(r);
    assert_non_null(strstr(msgs.data, "t.conf:1:9: unknown condition 'chanel'"));
    assert_non_null(strstr(msgs.data, "t.conf:2:14: unknown action 'quee'"));
    /* Warnings do not fail a file. */
    r = s_parse("rule a: * -> bot\nrule b: dir in -> bot\n", &msgs);
    assert_non_null(r);
    assert_non_null(strstr(msgs.data, "t.conf:2:1: warning: rule b is never reached: rule a (line 1)"));
    rules_destroy(&r);
    assert_null(r);
    buf_free(&msgs);
}

static void test_sample_files_parse(void **unused)
{
    (void)unused;
    struct buf msgs = { 0 };
    struct rules *r = rules_load("examples/rules.conf", NULL, &msgs);
    if (r == NULL) {
        print_error("%s", msgs.data);
    }
    assert_non_null(r);
    assert_null(msgs.data);
    assert_true(rules_count(r) >= 5);
    struct agents_conf *ac = agents_conf_load("examples/agents.conf", &msgs);
    if (ac == NULL) {
        print_error("%s", msgs.data);
    }
    assert_non_null(ac);
    assert_int_equal(agents_conf_count(ac), 5);
    for (size_t i = 0; i < rules_count(r); i++) {
        const struct rules_rule *ru = rules_get(r, i);
        if (ru->action == RULES_QUEUE) {
            assert_true(agents_conf_serves(ac, ru->queue));
        }
    }
    agents_conf_destroy(&ac);
    rules_destroy(&r);
    buf_free(&msgs);
}

/* ---- matching ------------------------------------------------------------ */

static void test_text_ignores_case_and_knows_accents(void **unused)
{
    (void)unused;
    struct buf msgs = { 0 };
    struct rules *r = s_parse("rule reembolso: text ~ \"reembolso|estorno|devolu[cç][aã]o\" -> queue financeiro\n"
                              "rule nao: text ~ \"\\bnão\\b\" -> queue geral\n"
                              "rule padrao: * -> bot\n",
                              &msgs);
    assert_non_null(r);
    static const struct {
        const char *text;       /* message */
        const char *rule;       /* the rule it meets */
    } cases[] = {
        { "QUERO MEU REEMBOLSO", "reembolso" },
        { "quero meu reembolso", "reembolso" },
        { "Cadê o ESTORNO?", "reembolso" },
        { "pedi a DEVOLUÇÃO ontem", "reembolso" },
        { "pedi a devolucao ontem", "reembolso" },
        { "NÃO quero falar com robô", "nao" },
        { "não", "nao" },
        { "Não!", "nao" },
        { "canção", "padrao" },     /* \b is Unicode-aware: "não" is not inside "canção" */
        { "qual o prazo?", "padrao" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct env *e = s_msg("whatsapp", cases[i].text, MON_0930_SP);
        const char *got = s_match(r, e, RULES_NEW, false);
        if (strcmp(got, cases[i].rule) != 0) {
            print_error("'%s': got rule %s, want %s\n", cases[i].text, got, cases[i].rule);
            fail();
        }
        env_destroy(&e);
    }
    /* The subject of an e-mail counts as text. */
    struct env *e = s_msg("email", "segue o print", MON_0930_SP);
    assert_int_equal(env_set(e, ENV_SUBJECT, "Estorno em duplicidade", NULL), 0);
    assert_string_equal(s_match(r, e, RULES_NEW, false), "reembolso");
    env_destroy(&e);
    rules_destroy(&r);
    buf_free(&msgs);
}

static void test_first_match_wins(void **unused)
{
    (void)unused;
    struct buf msgs = { 0 };
    struct rules *r = s_parse("rule humano: text ~ \"atendente\" -> queue geral priority 1\n"
                              "rule reembolso: text ~ \"reembolso\" -> queue financeiro priority 2\n"
                              "rule padrao: * -> bot reason \"default\"\n",
                              &msgs);
    assert_non_null(r);
    struct env *e = s_msg("sms", "quero um atendente pro meu reembolso", MON_0930_SP);
    struct rules_input in = { e, RULES_NEW, e->ts };
    const struct rules_rule *ru = rules_match(r, &in, false, NULL);
    assert_non_null(ru);
    assert_string_equal(ru->name, "humano");
    assert_int_equal(ru->action, RULES_QUEUE);
    assert_string_equal(ru->queue, "geral");
    assert_int_equal(ru->priority, 1);
    assert_int_equal(env_set(e, ENV_TEXT, "meu reembolso", NULL), 0);
    ru = rules_match(r, &in, false, NULL);
    assert_string_equal(ru->name, "reembolso");
    assert_int_equal(ru->priority, 2);
    assert_int_equal(env_set(e, ENV_TEXT, "oi", NULL), 0);
    ru = rules_match(r, &in, false, NULL);
    assert_string_equal(ru->name, "padrao");
    assert_int_equal(ru->action, RULES_BOT);
    assert_string_equal(ru->reason, "default");
    env_destroy(&e);
    rules_destroy(&r);
    /* No rule matches: NULL (omni-route then sends it to the bot). */
    r = s_parse("rule so-sms: channel sms -> bot\n", &msgs);
    e = s_msg("whatsapp", "oi", MON_0930_SP);
    assert_string_equal(s_match(r, e, RULES_NEW, false), "-");
    env_destroy(&e);
    rules_destroy(&r);
    buf_free(&msgs);
}

static void test_conditions_combine(void **unused)
{
    (void)unused;
    struct buf msgs = { 0 };
    struct rules *r = s_parse(
        "rule vip: meta.vip = \"true\" and not channel email -> queue geral priority 3\n"
        "rule tier: meta.tier ~ \"^(gold|platinum)$\" or meta.orders = \"10\" -> queue geral\n"
        "rule anexo: channel whatsapp, telegram and (attachments or text ~ \"foto\") -> queue trocas\n"
        "rule b2b: customer = \"cus_b2b\" and meta.cnpj -> queue b2b\n"
        "rule not-bob: meta.name != \"Bob\" and dir in and from ~ \"^tel:\" -> queue geral\n"
        "rule padrao: * -> bot\n",
        &msgs);
    assert_non_null(r);
    struct env *e = s_msg("whatsapp", "oi", MON_0930_SP);
    const struct env_kv vip[] = { { .key = "vip", .type = ENV_KV_STR, .s = "true" } };
    assert_int_equal(env_set_map(e, ENV_META, vip, 1, NULL), 0);
    assert_string_equal(s_match(r, e, RULES_NEW, false), "vip");
    assert_int_equal(env_set(e, ENV_CHANNEL, "email", NULL), 0);
    assert_string_equal(s_match(r, e, RULES_NEW, false), "padrao");
    /* A boolean or a number in meta reads as its text. */
    const struct env_kv typed[] = { { .key = "vip", .type = ENV_KV_BOOL, .b = true },
                                    { .key = "orders", .type = ENV_KV_INT, .i = 10 } };
    assert_int_equal(env_set_map(e, ENV_META, typed, 2, NULL), 0);
    assert_int_equal(env_set(e, ENV_CHANNEL, "sms", NULL), 0);
    assert_string_equal(s_match(r, e, RULES_NEW, false), "vip");
    assert_int_equal(env_set(e, ENV_CHANNEL, "email", NULL), 0);
    assert_string_equal(s_match(r, e, RULES_NEW, false), "tier");
    const struct env_kv gold[] = { { .key = "tier", .type = ENV_KV_STR, .s = "GOLD" } };
    assert_int_equal(env_set_map(e, ENV_META, gold, 1, NULL), 0);
    assert_string_equal(s_match(r, e, RULES_NEW, false), "tier");
    env_unset(e, ENV_META);
    assert_int_equal(env_set(e, ENV_CHANNEL, "telegram", NULL), 0);
    assert_int_equal(env_set(e, ENV_TEXT, "segue a FOTO", NULL), 0);
    assert_string_equal(s_match(r, e, RULES_NEW, false), "anexo");
    assert_int_equal(env_set(e, ENV_CHANNEL, "sms", NULL), 0);
    assert_string_equal(s_match(r, e, RULES_NEW, false), "padrao");
    assert_int_equal(env_set(e, ENV_CUSTOMER, "cus_b2b", NULL), 0);
    const struct env_kv cnpj[] = { { .key = "cnpj", .type = ENV_KV_STR, .s = "12.345.678/0001-90" } };
    assert_int_equal(env_set_map(e, ENV_META, cnpj, 1, NULL), 0);
    assert_string_equal(s_match(r, e, RULES_NEW, false), "b2b");
    /* != holds when the key is absent too. */
    env_unset(e, ENV_CUSTOMER);
    env_unset(e, ENV_META);
    assert_int_equal(env_set(e, ENV_FROM, "tel:+5511987654321", NULL), 0);
    assert_string_equal(s_match(r, e, RULES_NEW, false), "not-bob");
    const struct env_kv bob[] = { { .key = "name", .type = ENV_KV_STR, .s = "Bob" } };
    assert_int_equal(env_set_map(e, ENV_META, bob, 1, NULL), 0);
    assert_string_equal(s_match(r, e, RULES_NEW, false), "padrao");
    env_destroy(&e);
    rules_destroy(&r);
    buf_free(&msgs);
}

static void test_state_and_keep_rules(void **unused)
{
    (void)unused;
    struct buf msgs = { 0 };
    struct rules *r = s_parse("rule urgente: state queued, assigned and text ~ \"procon\" -> keep priority 3\n"
                              "rule escalar: state bot and text ~ \"ningu[eé]m\" -> queue geral\n"
                              "rule padrao: * -> bot\n",
                              &msgs);
    assert_non_null(r);
    struct env *e = s_msg("whatsapp", "NINGUÉM responde, vou no PROCON", MON_0930_SP);
    /* Keep rules are for conversations with people; the rest for the others. */
    assert_string_equal(s_match(r, e, RULES_NEW, false), "padrao");
    assert_string_equal(s_match(r, e, RULES_INBOT, false), "escalar");
    assert_string_equal(s_match(r, e, RULES_QUEUED, true), "urgente");
    assert_string_equal(s_match(r, e, RULES_ASSIGNED, true), "urgente");
    assert_string_equal(s_match(r, e, RULES_NEW, true), "-");
    const struct rules_rule *ru = rules_get(r, 0);
    assert_int_equal(ru->action, RULES_KEEP);
    assert_true(ru->has_priority);
    assert_int_equal(ru->priority, 3);
    env_destroy(&e);
    rules_destroy(&r);
    buf_free(&msgs);
}

static void test_pathological_regex_gives_up(void **unused)
{
    (void)unused;
    struct buf msgs = { 0 };
    struct rules_opts o = { 10000 };
    const char *text = "rule mau: text ~ \"^(a+)+$\" -> queue geral\nrule padrao: * -> bot\n";
    struct rules *r = rules_parse("t.conf", text, strlen(text), &o, &msgs);
    assert_non_null(r);
    char s[64];
    memset(s, 'a', 40);
    s[40] = '!';
    s[41] = '\0';
    struct env *e = s_msg("sms", s, MON_0930_SP);
    /* Without the limit this takes 2^40 steps; with it, it counts as no match. */
    assert_string_equal(s_match(r, e, RULES_NEW, false), "padrao");
    assert_int_equal(rules_gave_up(r), 1);
    assert_int_equal(env_set(e, ENV_TEXT, "aaaa", NULL), 0);
    assert_string_equal(s_match(r, e, RULES_NEW, false), "mau");
    env_destroy(&e);
    rules_destroy(&r);
    buf_free(&msgs);
}

/* ---- hours --------------------------------------------------------------- */

static void test_hours_in_a_time_zone(void **unused)
{
    (void)unused;
    struct buf msgs = { 0 };
    struct rules *r = s_parse("holiday 2026-11-20 \"Consciência Negra\"\n"
                              "rule aberto: hours \"seg-sex 09:00-18:00, sáb 09:00-13:00 America/Sao_Paulo\" -> queue geral\n"
                              "rule padrao: * -> bot\n",
                              &msgs);
    assert_non_null(r);
    static const struct {
        uint64_t ts;            /* when */
        const char *rule;       /* open or not */
    } cases[] = {
        { MON_0830_SP, "padrao" },  /* 11:30Z is 08:30 in São Paulo: before opening */
        { MON_0930_SP, "aberto" },
        { MON_1759_SP, "aberto" },
        { MON_1800_SP, "padrao" },  /* the end is not included */
        { THU_1200_SP, "aberto" },
        { FRI_1200_SP, "padrao" },  /* a holiday */
        { SAT_2330_SP, "padrao" },  /* Sunday already in UTC, Saturday night in São Paulo */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct env *e = s_msg("sms", "oi", cases[i].ts);
        const char *got = s_match(r, e, RULES_NEW, false);
        if (strcmp(got, cases[i].rule) != 0) {
            print_error("ts %llu: got %s, want %s\n", (unsigned long long)cases[i].ts, got, cases[i].rule);
            fail();
        }
        env_destroy(&e);
    }
    rules_destroy(&r);
    buf_free(&msgs);
}

static void test_hours_follow_daylight_saving(void **unused)
{
    (void)unused;
    struct rules_cal cal = { 0 };
    snprintf(cal.zone, sizeof cal.zone, "Europe/Lisbon");
    char err[160];
    size_t at = 0;
    struct rules_hours *h = rules_hours_parse("mon-fri 09:00-18:00", &cal, err, sizeof err, &at);
    assert_non_null(h);
    struct rules_when w;
    /* 08:30Z is 09:30 in a Lisbon summer (UTC+1), 08:30 in its winter. */
    assert_true(rules_hours_open(h, JUL_0830_UTC, &w));
    assert_int_equal(w.offset_s, 3600);
    assert_int_equal(w.minute, 9 * 60 + 30);
    assert_int_equal(w.wday, 1);
    assert_false(rules_hours_open(h, JAN_0830_UTC, &w));
    assert_int_equal(w.offset_s, 0);
    /* Asked again: the cached offsets say the same. */
    assert_true(rules_hours_open(h, JUL_0830_UTC, NULL));
    assert_false(rules_hours_open(h, JAN_0830_UTC, NULL));
    rules_hours_destroy(&h);
    assert_null(h);
    /* The default zone is UTC; a range past midnight runs into the next day. */
    memset(&cal, 0, sizeof cal);
    h = rules_hours_parse("sex 22:00-02:00", &cal, err, sizeof err, &at);
    assert_non_null(h);
    assert_true(rules_hours_open(h, FRI_2200_SP + 60000, NULL));    /* Sat 01:01Z */
    assert_false(rules_hours_open(h, FRI_2200_SP + 3600000, NULL)); /* Sat 02:00Z */
    rules_hours_destroy(&h);
    assert_null(rules_hours_parse("sab", &cal, err, sizeof err, &at));
    assert_string_equal(err, "days without a time range (e.g. sab 09:00-13:00)");
    assert_null(rules_hours_parse("seg-sex 18:00-18:00", &cal, err, sizeof err, &at));
    assert_int_equal(at, 8);
}

static void test_holidays_by_local_date(void **unused)
{
    (void)unused;
    struct buf msgs = { 0 };
    struct rules *r = s_parse("timezone America/Sao_Paulo\n"
                              "holiday 2026-12-25, 2026-11-20 \"feriados\"\n"
                              "hours comercial \"seg-sex 09:00-23:00\"\n"
                              "rule feriado: holiday -> bot reason \"holiday\"\n"
                              "rule aberto: hours comercial -> queue geral\n"
                              "rule padrao: * -> bot\n",
                              &msgs);
    assert_non_null(r);
    struct env *e = s_msg("sms", "oi", THU_1200_SP);
    assert_string_equal(s_match(r, e, RULES_NEW, false), "aberto");
    env_set_uint(e, ENV_TS, FRI_1200_SP);
    assert_string_equal(s_match(r, e, RULES_NEW, false), "feriado");
    /* Saturday 01:00 in UTC is still Friday the 20th in São Paulo. */
    env_set_uint(e, ENV_TS, FRI_2200_SP);
    assert_string_equal(s_match(r, e, RULES_NEW, false), "feriado");
    env_destroy(&e);
    rules_destroy(&r);
    buf_free(&msgs);
}

static void test_explain_says_why(void **unused)
{
    (void)unused;
    struct buf msgs = { 0 }, why = { 0 };
    struct rules *r = s_parse("rule humano: text ~ \"atendente\" and not channel email -> queue geral\n"
                              "rule reembolso: text ~ \"reembolso\" -> queue financeiro\n"
                              "rule padrao: * -> bot\n",
                              &msgs);
    assert_non_null(r);
    struct env *e = s_msg("whatsapp", "QUERO MEU REEMBOLSO", MON_0930_SP);
    struct rules_input in = { e, RULES_NEW, e->ts };
    const struct rules_rule *ru = rules_match(r, &in, false, &why);
    assert_string_equal(ru->name, "reembolso");
    const char *want[] = {
        "    rule humano (t.conf:1): no match\n",
        "      false  and\n",
        "      false    text ~ \"atendente\"",
        "      true     not\n",
        "      false      channel email  (channel whatsapp)\n",
        "    rule reembolso (t.conf:2): MATCH\n",
        "      true   text ~ \"reembolso\"  (text has \"REEMBOLSO\")\n",
        "    (1 later rule not tried: first match wins)\n",
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        if (strstr(why.data, want[i]) == NULL) {
            print_error("missing: %s\nin:\n%s", want[i], why.data);
            fail();
        }
    }
    env_destroy(&e);
    rules_destroy(&r);
    buf_free(&why);
    buf_free(&msgs);
}

/* ---- agents -------------------------------------------------------------- */

/* Agents file text -> a new assignment state. */
static struct agents *s_agents(const char *text)
{
    struct buf msgs = { 0 };
    struct agents_conf *c = agents_conf_parse("a.conf", text, strlen(text), &msgs);
    if (c == NULL) {
        print_error("%s", msgs.data);
    }
    assert_non_null(c);
    buf_free(&msgs);
    struct agents *a = agents_new();
    assert_non_null(a);
    agents_set_conf(a, &c);
    assert_null(c);
    return a;
}

/* Queues conversation key in queue; the agent it got, or "-". */
static const char *s_queue(struct agents *a, const char *key, const char *queue, int64_t prio,
                           uint64_t ts)
{
    struct agents_conv *c = agents_get(a, key, true);
    assert_non_null(c);
    assert_int_equal(agents_enqueue(a, c, queue, prio, "r", NULL, NULL), 0);
    agents_drain(a, ts, NULL, NULL);
    const char *n = agents_name(a, c->agent);
    return n ? n : "-";
}

static void test_agents_file_errors(void **unused)
{
    (void)unused;
    struct buf msgs = { 0 };
    const char *bad = "agent ana queues geral capacity x\nagent bia capacity 2\nagente caio queues geral\n";
    assert_null(agents_conf_parse("a.conf", bad, strlen(bad), &msgs));
    assert_non_null(strstr(msgs.data, "a.conf:1:33: capacity needs a number 1..1000\n"));
    assert_non_null(strstr(msgs.data, "a.conf:2:21: agent bia needs its queues"));
    assert_non_null(strstr(msgs.data, "a.conf:3:1: unknown statement 'agente'"));
    buf_free(&msgs);
}

static void test_least_loaded_with_round_robin_ties(void **unused)
{
    (void)unused;
    struct agents *a = s_agents("agent ana queues geral capacity 2\n"
                                "agent bia queues geral, financeiro capacity 2\n"
                                "agent caio queues geral capacity 2\n");
    /* All free: in turn. */
    assert_string_equal(s_queue(a, "c1", "geral", 0, MON_0930_SP), "ana");
    assert_string_equal(s_queue(a, "c2", "geral", 0, MON_0930_SP), "bia");
    assert_string_equal(s_queue(a, "c3", "geral", 0, MON_0930_SP), "caio");
    /* All with one: in turn again, from after caio. */
    assert_string_equal(s_queue(a, "c4", "geral", 0, MON_0930_SP), "ana");
    /* bia frees up: she is the least loaded. */
    struct agents_conv *c2 = agents_find(a, "c2");
    agents_close(a, &c2);
    assert_null(c2);
    assert_null(agents_find(a, "c2"));
    assert_string_equal(s_queue(a, "c5", "geral", 0, MON_0930_SP), "bia");
    /* bia and caio tie with one each; bia had the last, so caio. */
    assert_string_equal(s_queue(a, "c6", "geral", 0, MON_0930_SP), "caio");
    assert_string_equal(s_queue(a, "c7", "geral", 0, MON_0930_SP), "bia");
    /* Everybody full: it waits. */
    assert_string_equal(s_queue(a, "c8", "geral", 0, MON_0930_SP), "-");
    assert_int_equal(agents_waiting(a), 1);
    assert_int_equal(agents_load(a, agents_find_agent(a, "agent:ana")), 2);
    /* A queue nobody serves waits too. */
    assert_string_equal(s_queue(a, "c9", "b2b", 0, MON_0930_SP), "-");
    /* A close gives the freed place to the one waiting. */
    struct agents_conv *c1 = agents_find(a, "c1");
    agents_close(a, &c1);
    assert_int_equal(agents_drain(a, MON_0930_SP, NULL, NULL), 1);
    assert_string_equal(agents_name(a, agents_find(a, "c8")->agent), "ana");
    assert_int_equal(agents_find(a, "c8")->state, RULES_ASSIGNED);
    agents_destroy(&a);
    assert_null(a);
}

static void test_priority_presence_and_hours(void **unused)
{
    (void)unused;
    struct agents *a = s_agents("timezone America/Sao_Paulo\n"
                                "agent ana queues geral capacity 1 hours \"seg-sex 09:00-18:00\"\n"
                                "agent bia queues geral capacity 1\n");
    int ana = agents_find_agent(a, "ana"), bia = agents_find_agent(a, "bia");
    /* Before hours only bia, who has no hours, is there. */
    assert_int_equal(agents_presence(a, "bia", AGENTS_OFFLINE), 0);
    assert_string_equal(s_queue(a, "low", "geral", 0, MON_0830_SP), "-");
    assert_string_equal(s_queue(a, "high", "geral", 5, MON_0830_SP), "-");
    assert_string_equal(s_queue(a, "mid", "geral", 1, MON_0830_SP), "-");
    assert_int_equal(agents_waiting(a), 3);
    /* ana's hours begin: the highest priority goes first. */
    assert_int_equal(agents_drain(a, MON_0930_SP, NULL, NULL), 1);
    assert_int_equal(agents_find(a, "high")->agent, ana);
    /* bia comes online: the next in priority. */
    assert_int_equal(agents_presence(a, "agent:bia", AGENTS_ONLINE), 0);
    assert_int_equal(agents_presence(a, "nobody", AGENTS_ONLINE), -1);
    assert_int_equal(agents_drain(a, MON_0930_SP, NULL, NULL), 1);
    assert_int_equal(agents_find(a, "mid")->agent, bia);
    assert_int_equal(agents_find(a, "low")->state, RULES_QUEUED);
    /* Offline takes nothing new; what the agent has stays. */
    assert_int_equal(agents_presence(a, "ana", AGENTS_OFFLINE), 0);
    struct agents_conv *c = agents_find(a, "high");
    agents_close(a, &c);
    assert_int_equal(agents_drain(a, MON_0930_SP, NULL, NULL), 0);
    assert_int_equal(agents_find(a, "mid")->agent, bia);
    /* Idle conversations are forgotten, freeing their agents. */
    agents_touch(a, agents_find(a, "mid"), MON_0930_SP, "sms", NULL);
    agents_touch(a, agents_find(a, "low"), MON_1759_SP, "sms", NULL);
    assert_int_equal(agents_expire(a, MON_1759_SP), 1);
    assert_null(agents_find(a, "mid"));
    assert_int_equal(agents_load(a, bia), 0);
    assert_int_equal(agents_drain(a, MON_1759_SP, NULL, NULL), 1);
    assert_int_equal(agents_find(a, "low")->agent, bia);
    agents_destroy(&a);
}

static void test_agents_reload_keeps_conversations(void **unused)
{
    (void)unused;
    struct agents *a = s_agents("agent ana queues geral capacity 2\nagent bia queues geral capacity 2\n");
    assert_string_equal(s_queue(a, "c1", "geral", 0, MON_0930_SP), "ana");
    assert_string_equal(s_queue(a, "c2", "geral", 0, MON_0930_SP), "bia");
    assert_int_equal(agents_presence(a, "bia", AGENTS_OFFLINE), 0);
    /* ana leaves the file: her conversation waits again; bia stays offline. */
    struct buf msgs = { 0 };
    const char *text = "agent bia queues geral capacity 2\nagent caio queues geral capacity 1\n";
    struct agents_conf *c = agents_conf_parse("a.conf", text, strlen(text), &msgs);
    assert_non_null(c);
    agents_set_conf(a, &c);
    assert_int_equal(agents_find(a, "c2")->agent, agents_find_agent(a, "bia"));
    assert_int_equal(agents_find(a, "c1")->state, RULES_QUEUED);
    assert_int_equal(agents_drain(a, MON_0930_SP, NULL, NULL), 1);
    assert_string_equal(agents_name(a, agents_find(a, "c1")->agent), "caio");
    buf_free(&msgs);
    agents_destroy(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errors_name_line_and_column),
        cmocka_unit_test(test_every_error_is_reported),
        cmocka_unit_test(test_sample_files_parse),
        cmocka_unit_test(test_text_ignores_case_and_knows_accents),
        cmocka_unit_test(test_first_match_wins),
        cmocka_unit_test(test_conditions_combine),
        cmocka_unit_test(test_state_and_keep_rules),
        cmocka_unit_test(test_pathological_regex_gives_up),
        cmocka_unit_test(test_hours_in_a_time_zone),
        cmocka_unit_test(test_hours_follow_daylight_saving),
        cmocka_unit_test(test_holidays_by_local_date),
        cmocka_unit_test(test_explain_says_why),
        cmocka_unit_test(test_agents_file_errors),
        cmocka_unit_test(test_least_loaded_with_round_robin_ties),
        cmocka_unit_test(test_priority_presence_and_hours),
        cmocka_unit_test(test_agents_reload_keeps_conversations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
