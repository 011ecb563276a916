/* Policy files: the shipped ones load; broken ones fail with exact "file:line: message". */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "tg/err.h"
#include "tg/router.h"

struct bad_row {
    const char *yaml;
    const char *err; /* exact message */
};

static const struct bad_row BAD[] = {
    {"name: x\nthreshold: 2\n", "bad.yaml:2: threshold must be between 0 and 1 (got 2)"},
    {"name: x\nfoo: 1\n",
     "bad.yaml:2: unknown key 'foo' in policy (expected one of: name, description, threshold, "
     "weights, supported_languages, rules, escalation)"},
    {"name: x\nweights:\n  kinds:\n    poetry: 0.3\n",
     "bad.yaml:4: unknown key 'poetry' in weights.kinds (expected one of: chat, classify, "
     "extract, closed_qa, summarize, rewrite, translate, math, code_snippet, code, proof, "
     "creative, roleplay, open_qa, current_events, expert, planning)"},
    {"name: x\nweights:\n  kinds:\n    code: high\n", "bad.yaml:4: code must be a number"},
    {"name: x\nweights:\n  kinds:\n    code: 1.5\n",
     "bad.yaml:4: code must be between 0 and 1 (got 1.5)"},
    {"name: x\nrules:\n  privacy:\n    pii: [email, passport]\n",
     "bad.yaml:4: pii: unknown type 'passport' (expected one of: email, phone, card, iban, ssn)"},
    {"name: x\nsupported_languages: [en, EN]\n",
     "bad.yaml:2: supported_languages: 'EN' is not an ISO 639 code (two or three lower-case "
     "letters)"},
    {"name: x\nrules:\n  pinned_model: maybe\n",
     "bad.yaml:3: pinned_model must be one of remote|ignore (got 'maybe')"},
    {"name: x\nrules:\n  force_remote:\n    max_local_turns: 0\n",
     "bad.yaml:4: max_local_turns must be between 1 and 100000 (got 0)"},
    {"name: x\nrules:\n  force_remote:\n    languages: sw\n",
     "bad.yaml:4: languages must be a list, not a scalar"},
    {"name: x\nrules:\n  force_remote:\n    max_context: 4096\n",
     "bad.yaml:4: unknown key 'max_context' in rules.force_remote (expected one of: "
     "max_local_context_tokens, described_context, max_local_turns, languages)"},
    {"name: x\nescalation:\n  enabled: maybe\n", "bad.yaml:3: enabled must be true or false"},
    {"name: x\nescalation:\n  min_confidence: -0.1\n",
     "bad.yaml:3: min_confidence must be between 0 and 1 (got -0.1)"},
    {"threshold: 0.5\n", "bad.yaml:1: policy: 'name' is required"},
    {"name: x\nname: y\n", "bad.yaml:2: duplicate key 'name' in policy"},
    {"- a\n- b\n",
     "bad.yaml:1: a policy must be a mapping with name, threshold, weights, rules, escalation"},
    {"", "bad.yaml:1: a policy must be a mapping with name, threshold, weights, rules, "
         "escalation"},
    {"name: x\nweights: [1, 2\n",
     "bad.yaml:3: did not find expected ',' or ']' while parsing a flow sequence"},
};

static void test_bad_policies(void **state)
{
    (void)state;
    int failures = 0;
    for (size_t i = 0; i < sizeof BAD / sizeof BAD[0]; i++) {
        char err[512] = "";
        struct tg_router_policy *p = NULL;
        int rc = tg_router_policy_load_string("bad.yaml", BAD[i].yaml, strlen(BAD[i].yaml), &p, err,
                                              sizeof err);
        if (rc != TG_CONFIG || p != NULL || strcmp(err, BAD[i].err) != 0) {
            print_error("row %zu: rc %d err '%s'\n  want '%s'\n", i, rc, err, BAD[i].err);
            failures++;
        }
        tg_router_policy_unref(p);
    }
    assert_int_equal(failures, 0);
}

/* The file name in messages is the path given. */
static void test_bad_file(void **state)
{
    (void)state;
    char path[] = "/tmp/tg-router-policy-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd != -1);
    const char *y = "# a comment\nname: broken\nthreshold: 0.4\nweights:\n  turn: lots\n";
    assert_int_equal(write(fd, y, strlen(y)), (ssize_t)strlen(y));
    assert_int_equal(close(fd), 0);
    char err[512], want[600];
    struct tg_router_policy *p = NULL;
    assert_int_equal(tg_router_policy_load(path, &p, err, sizeof err), TG_CONFIG);
    assert_null(p);
    snprintf(want, sizeof want, "%s:5: turn must be a number", path);
    assert_string_equal(err, want);
    assert_int_equal(unlink(path), 0);

    assert_int_equal(tg_router_policy_load(path, &p, err, sizeof err), TG_IO);
    assert_non_null(strstr(err, "cannot open"));
    assert_int_equal(tg_router_policy_load(NULL, &p, err, sizeof err), TG_INVAL);
    assert_null(p);
}

static void test_shipped_policies(void **state)
{
    (void)state;
    static const char *const NAMES[] = {"balanced", "cost-saver", "quality-first", "privacy-first"};
    for (size_t i = 0; i < 4; i++) {
        char path[512], err[512] = "";
        snprintf(path, sizeof path, TG_SOURCE_DIR "/policies/%s.yaml", NAMES[i]);
        struct tg_router_policy *p = NULL;
        int rc = tg_router_policy_load(path, &p, err, sizeof err);
        if (rc != TG_OK)
            fail_msg("%s: %s", path, err);
        assert_string_equal(tg_router_policy_name(p), NAMES[i]);
        tg_router_policy_unref(p);
    }
}

/* The built-in defaults decide like balanced.yaml (the header says they are the same). */
static void test_defaults_match_balanced(void **state)
{
    (void)state;
    struct tg_router_policy *def = NULL, *bal = NULL;
    char err[512];
    assert_int_equal(tg_router_policy_default(&def), TG_OK);
    assert_int_equal(
        tg_router_policy_load(TG_SOURCE_DIR "/policies/balanced.yaml", &bal, err, sizeof err),
        TG_OK);
    static const char *const PROMPTS[] = {
        "Classify as positive or negative: \"great\"",
        "Write a poem about rain.",
        "Who founded Carthage?",
        "Translate into Swahili: good morning",
        "Write a 3,000-word essay on the history of tea.",
        "Summarize this:\n\nThe meeting moved to Tuesday at 10am in room 4.",
    };
    for (size_t i = 0; i < sizeof PROMPTS / sizeof PROMPTS[0]; i++) {
        struct tg_route_message m = {"user", PROMPTS[i], strlen(PROMPTS[i])};
        struct tg_route_request req = tg_route_request_default();
        req.messages = &m;
        req.n_messages = 1;
        struct tg_route_decision a, b;
        assert_int_equal(tg_router_decide(def, &req, NULL, &a), TG_OK);
        assert_int_equal(tg_router_decide(bal, &req, NULL, &b), TG_OK);
        assert_int_equal(a.tier, b.tier);
        assert_string_equal(a.reason, b.reason);
        assert_true(a.score == b.score);
    }
    tg_router_policy_unref(def);
    tg_router_policy_unref(bal);
}

/* A snapshot outlives the swap while a request still holds it. */
static void test_refcount(void **state)
{
    (void)state;
    struct tg_router_policy *p = NULL;
    assert_int_equal(tg_router_policy_default(&p), TG_OK);
    struct tg_router_policy *held = tg_router_policy_ref(p);
    assert_ptr_equal(held, p);
    tg_router_policy_unref(p); /* the gateway swapped it out */
    assert_string_equal(tg_router_policy_name(held), "default");
    tg_router_policy_unref(held); /* the last request finished: freed (ASan checks) */
    tg_router_policy_unref(NULL);
    assert_null(tg_router_policy_ref(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_policies),     cmocka_unit_test(test_bad_file),
        cmocka_unit_test(test_shipped_policies), cmocka_unit_test(test_defaults_match_balanced),
        cmocka_unit_test(test_refcount),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
