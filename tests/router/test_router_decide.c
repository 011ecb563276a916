/* Router decisions, features, escalation and explain: table-driven, a row per case. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tg/err.h"
#include "tg/router.h"

#define POLICY(name) TG_SOURCE_DIR "/policies/" name ".yaml"

struct row {
    const char *name;
    const char *policy; /* NULL = balanced */
    const char *system;
    const char *user[3]; /* user/assistant alternate; NULL ends */
    /* request facts */
    enum tg_route_endpoint ep;
    size_t n_labels;
    bool privacy, budget, circuit, no_local, no_remote;
    int tier_override;
    const char *pinned;
    double wait_ms;
    int32_t ctx;
    int64_t max_tokens; /* 0 = not given */
    /* expectations */
    enum tg_route_tier tier;
    const char *reason; /* must appear among the reasons */
    int hard;           /* -1 don't care */
};

static const struct row ROWS[] = {
    /* capability-aware defaults */
    {"classify spam",
     NULL,
     NULL,
     {"Classify the following email as SPAM or NOT_SPAM. Reply with the label only.\n\n"
      "Subject: You won!\nClaim your prize at http://example.net/claim now."},
     .tier = TG_ROUTE_LOCAL,
     .reason = "kind.classify",
     .hard = 0},
    {"extract json",
     NULL,
     NULL,
     {"Extract date, time, provider and location from this reminder. Return as JSON.\n\n"
      "\"Your appt with Dr. Alvarez is on Wed Jan 15 at 9:40 AM at Cedar Grove Clinic.\""},
     .tier = TG_ROUTE_LOCAL,
     .reason = "kind.extract",
     .hard = 0},
    {"closed qa",
     NULL,
     NULL,
     {"Answer using only the policy below.\n\nPolicy: Unopened items may be returned within "
      "30 days for a full refund. Opened items get store credit.\n\nCan I get cash back for an "
      "opened item?"},
     .tier = TG_ROUTE_LOCAL,
     .reason = "kind.closed_qa",
     .hard = 0},
    {"summary",
     NULL,
     NULL,
     {"Summarize this memo in exactly 3 bullet points.\n\nStarting Monday, Lots B and C will be "
      "closed for resurfacing. Staff should park in Lot A or the garage. Shuttles run every 10 "
      "minutes from 7am."},
     .tier = TG_ROUTE_LOCAL,
     .reason = "kind.summarize",
     .hard = 0},
    {"rewrite",
     NULL,
     NULL,
     {"Fix grammar and spelling, keep the tone:\n\n\"i wanted to follow up on are call "
      "yesterday, it include the installation\""},
     .tier = TG_ROUTE_LOCAL,
     .reason = "kind.rewrite",
     .hard = 0},
    {"translate de-en",
     NULL,
     NULL,
     {"Translate to English:\n\n„Leider können wir die Lieferung erst in der KW 32 zusagen.“"},
     .tier = TG_ROUTE_LOCAL,
     .reason = "kind.translate",
     .hard = 0},
    {"word problem",
     NULL,
     NULL,
     {"A bakery made 240 cupcakes. They sold 3/4 of them in the morning and half of the rest in "
      "the afternoon. How many are left?"},
     .tier = TG_ROUTE_LOCAL,
     .reason = "kind.math",
     .hard = 0},
    {"regex",
     NULL,
     NULL,
     {"Regex to match US ZIP codes (12345 or 12345-6789). Just the pattern."},
     .tier = TG_ROUTE_LOCAL,
     .reason = "kind.code_snippet",
     .hard = 0},
    {"japanese translation",
     NULL,
     NULL,
     {"英語に翻訳してください：「商品は現在在庫切れで、再入荷は来月中旬の予定です。」"},
     .tier = TG_ROUTE_LOCAL,
     .reason = "kind.translate",
     .hard = 0},
    {"poem",
     NULL,
     NULL,
     {"Write a poem about autumn in Montreal, about twenty lines."},
     .tier = TG_ROUTE_REMOTE,
     .reason = "kind.creative",
     .hard = 0},
    {"world knowledge",
     NULL,
     NULL,
     {"Who was Hatshepsut's chief steward?"},
     .tier = TG_ROUTE_REMOTE,
     .reason = "kind.open_qa",
     .hard = 0},
    {"proof",
     NULL,
     NULL,
     {"Prove that √2 + √3 is irrational."},
     .tier = TG_ROUTE_REMOTE,
     .reason = "kind.proof",
     .hard = 0},
    {"roleplay",
     NULL,
     NULL,
     {"Act as a skeptical CFO. Stay in character and raise objections to my pitch."},
     .tier = TG_ROUTE_REMOTE,
     .reason = "kind.roleplay",
     .hard = 0},
    {"current events",
     NULL,
     NULL,
     {"What's NVDA trading at right now and why is it moving today?"},
     .tier = TG_ROUTE_REMOTE,
     .reason = "kind.current_events",
     .hard = 0},
    {"expert advice",
     NULL,
     NULL,
     {"I signed a 2-year non-compete in Massachusetts and got an offer from a competitor. Is it "
      "likely enforceable? What are my options?"},
     .tier = TG_ROUTE_REMOTE,
     .reason = "kind.expert",
     .hard = 0},
    {"debugging with code",
     NULL,
     NULL,
     {"This segfaults only sometimes. What's wrong?\n\n```c\nvoid f(Node *n) { free(n); "
      "n->next = 0; }\n```"},
     .tier = TG_ROUTE_REMOTE,
     .reason = "feature.code_block",
     .hard = 0},
    /* force remote */
    {"swahili text",
     NULL,
     NULL,
     {"Tafadhali ainisha maoni haya kama chanya, hasi au ya kati: \"Huduma ilikuwa nzuri sana "
      "lakini chakula kilichelewa.\""},
     .tier = TG_ROUTE_REMOTE,
     .reason = "force_remote.language",
     .hard = 1},
    {"into swahili",
     NULL,
     NULL,
     {"Translate this notice into Swahili: \"All forklift operators must sign the checklist.\""},
     .tier = TG_ROUTE_REMOTE,
     .reason = "force_remote.language",
     .hard = 1},
    {"bengali script",
     NULL,
     NULL,
     {"একটি দোকানে ১২০টি কলম ছিল। সকালে ৪৫টি এবং বিকেলে ৩০টি বিক্রি হয়েছে। দোকানে এখন কতটি কলম "
      "আছে?"},
     .tier = TG_ROUTE_REMOTE,
     .reason = "force_remote.language",
     .hard = 1},
    {"vietnamese",
     NULL,
     NULL,
     {"Trích xuất tên khách hàng và số điện thoại từ tin nhắn sau: \"Chào shop, mình là Nguyễn "
      "Thị Lan, sđt 0903 456 789.\""},
     .tier = TG_ROUTE_REMOTE,
     .reason = "force_remote.language",
     .hard = 1},
    {"described context",
     NULL,
     NULL,
     {"Here's my complete novel manuscript (94,000 words). List the plot holes.\n\nCHAPTER ONE"},
     .tier = TG_ROUTE_REMOTE,
     .reason = "force_remote.described_context",
     .hard = 1},
    {"small engine context",
     NULL,
     NULL,
     {"Summarize this text in one sentence:\n\nThe quick brown fox jumps over the lazy dog. The "
      "quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog."},
     .ctx = 40,
     .tier = TG_ROUTE_REMOTE,
     .reason = "force_remote.context",
     .hard = 1},
    {"pinned model",
     NULL,
     NULL,
     {"Classify as positive or negative: \"great product\""},
     .pinned = "gpt-4o",
     .tier = TG_ROUTE_REMOTE,
     .reason = "force_remote.pinned_model",
     .hard = 1},
    {"max_tokens is a ceiling, not a request",
     NULL,
     NULL,
     {"Classify as positive or negative: \"great product\""},
     .max_tokens = 16000,
     .tier = TG_ROUTE_LOCAL,
     .reason = "kind.classify",
     .hard = 0},
    {"max_tokens still needs room",
     NULL,
     NULL,
     {"Classify as positive or negative: \"great product\""},
     .max_tokens = 1000,
     .ctx = 512,
     .tier = TG_ROUTE_REMOTE,
     .reason = "force_remote.context",
     .hard = 1},
    /* privacy */
    {"card number",
     NULL,
     NULL,
     {"Write a heartfelt poem for my bank; my card is 4111 1111 1111 1111."},
     .tier = TG_ROUTE_LOCAL,
     .reason = "force_local.pii.card",
     .hard = 1},
    {"iban",
     NULL,
     NULL,
     {"Write a short story that mentions IBAN DE89 3704 0044 0532 0130 00."},
     .tier = TG_ROUTE_LOCAL,
     .reason = "force_local.pii.iban",
     .hard = 1},
    {"ssn",
     NULL,
     NULL,
     {"Tell me about the history of Rome. My SSN is 123-45-6789."},
     .tier = TG_ROUTE_LOCAL,
     .reason = "force_local.pii.ssn",
     .hard = 1},
    {"email allowed by balanced",
     NULL,
     NULL,
     {"Write a poem for ana.ilic@proton.me about the sea."},
     .tier = TG_ROUTE_REMOTE,
     .reason = "kind.creative",
     .hard = 0},
    {"email kept by privacy-first",
     "privacy-first",
     NULL,
     {"Write a poem for ana.ilic@proton.me about the sea."},
     .tier = TG_ROUTE_LOCAL,
     .reason = "force_local.pii.email",
     .hard = 1},
    {"key privacy flag",
     NULL,
     NULL,
     {"Write a 1,500-word short story about a lighthouse."},
     .privacy = true,
     .tier = TG_ROUTE_LOCAL,
     .reason = "force_local.key_privacy",
     .hard = 1},
    {"privacy beats header",
     NULL,
     NULL,
     {"Write a poem."},
     .privacy = true,
     .tier_override = 2,
     .tier = TG_ROUTE_LOCAL,
     .reason = "force_local.key_privacy",
     .hard = 1},
    /* header */
    {"header local",
     NULL,
     NULL,
     {"Write a poem about autumn."},
     .tier_override = 1,
     .tier = TG_ROUTE_LOCAL,
     .reason = "override.header",
     .hard = 1},
    {"header remote",
     NULL,
     NULL,
     {"Classify as positive or negative: \"great product\""},
     .tier_override = 2,
     .tier = TG_ROUTE_REMOTE,
     .reason = "override.header",
     .hard = 1},
    {"header ignored by privacy-first",
     "privacy-first",
     NULL,
     {"Classify as positive or negative: \"great product\""},
     .tier_override = 2,
     .tier = TG_ROUTE_LOCAL,
     .reason = "kind.classify",
     .hard = 0},
    /* constraints */
    {"budget exhausted",
     NULL,
     NULL,
     {"Write a poem about autumn in Montreal."},
     .budget = true,
     .tier = TG_ROUTE_LOCAL,
     .reason = "budget.exhausted",
     .hard = 0},
    {"circuit open",
     NULL,
     NULL,
     {"Write a poem about autumn in Montreal."},
     .circuit = true,
     .tier = TG_ROUTE_LOCAL,
     .reason = "load.circuit_open",
     .hard = 0},
    {"remote unavailable",
     NULL,
     NULL,
     {"Write a poem about autumn in Montreal."},
     .no_remote = true,
     .tier = TG_ROUTE_LOCAL,
     .reason = "unavailable.remote",
     .hard = 0},
    {"engine busy",
     NULL,
     NULL,
     {"Classify as positive or negative: \"great product\""},
     .wait_ms = 5000,
     .tier = TG_ROUTE_REMOTE,
     .reason = "load.engine_wait",
     .hard = 0},
    {"engine busy but budget gone",
     NULL,
     NULL,
     {"Classify as positive or negative: \"great product\""},
     .wait_ms = 5000,
     .budget = true,
     .tier = TG_ROUTE_LOCAL,
     .reason = "kind.classify",
     .hard = 0},
    {"local unavailable",
     NULL,
     NULL,
     {"Classify as positive or negative: \"great product\""},
     .no_local = true,
     .tier = TG_ROUTE_REMOTE,
     .reason = "unavailable.local",
     .hard = 0},
    /* endpoints */
    {"classify endpoint",
     NULL,
     NULL,
     {"The delivery was late and the box was crushed."},
     .ep = TG_ROUTE_EP_CLASSIFY,
     .n_labels = 3,
     .tier = TG_ROUTE_LOCAL,
     .reason = "kind.classify",
     .hard = 0},
    {"embeddings",
     NULL,
     NULL,
     {"some text to embed"},
     .ep = TG_ROUTE_EP_EMBEDDINGS,
     .tier = TG_ROUTE_LOCAL,
     .reason = "endpoint.embeddings",
     .hard = 1},
    /* system prompt carries the task */
    {"system classifier",
     NULL,
     "You are a sentiment classifier. Respond with exactly one word: positive, negative, or "
     "neutral.",
     {"Review: The blender arrived early and crushes ice fine, but the lid cracked after a "
      "week."},
     .tier = TG_ROUTE_LOCAL,
     .reason = "kind.classify",
     .hard = 0},
    /* other policies move the line */
    {"quality-first sends code snippets remote? no",
     "quality-first",
     NULL,
     {"Regex to match US ZIP codes. Just the pattern."},
     .tier = TG_ROUTE_LOCAL,
     .reason = "kind.code_snippet",
     .hard = 0},
};

static bool has_reason(const struct tg_route_decision *d, const char *code)
{
    for (size_t i = 0; i < d->n_reasons; i++)
        if (strcmp(d->reasons[i].code, code) == 0)
            return true;
    return false;
}

static struct tg_router_policy *load(const char *name)
{
    char path[512];
    snprintf(path, sizeof path, TG_SOURCE_DIR "/policies/%s.yaml",
             name != NULL ? name : "balanced");
    char err[512] = "";
    struct tg_router_policy *p = NULL;
    int rc = tg_router_policy_load(path, &p, err, sizeof err);
    if (rc != TG_OK)
        fail_msg("%s", err);
    return p;
}

static void build(const struct row *r, struct tg_route_message *msgs, struct tg_route_request *req)
{
    size_t n = 0;
    if (r->system != NULL)
        msgs[n++] = (struct tg_route_message){"system", r->system, strlen(r->system)};
    for (size_t i = 0; i < 3 && r->user[i] != NULL; i++)
        msgs[n++] = (struct tg_route_message){i % 2 == 0 ? "user" : "assistant", r->user[i],
                                              strlen(r->user[i])};
    *req = tg_route_request_default();
    req->messages = msgs;
    req->n_messages = n;
    req->endpoint = r->ep;
    req->n_labels = r->n_labels;
    req->key_privacy = r->privacy;
    req->remote_budget_exhausted = r->budget;
    req->remote_circuit_open = r->circuit;
    req->local_available = !r->no_local;
    req->remote_available = !r->no_remote;
    req->tier_override = r->tier_override;
    req->pinned_model = r->pinned;
    req->engine_wait_ms = r->wait_ms;
    req->local_context_tokens = r->ctx;
    if (r->max_tokens != 0)
        req->max_tokens = r->max_tokens;
}

static void test_table(void **state)
{
    (void)state;
    int failures = 0;
    for (size_t i = 0; i < sizeof ROWS / sizeof ROWS[0]; i++) {
        const struct row *r = &ROWS[i];
        struct tg_router_policy *p = load(r->policy);
        struct tg_route_message msgs[4];
        struct tg_route_request req;
        build(r, msgs, &req);
        struct tg_route_decision d;
        int rc = tg_router_decide(p, &req, NULL, &d);
        if (rc != TG_OK) {
            print_error("row '%s': decide returned %s\n", r->name, tg_strerror(rc));
            failures++;
        } else if (d.tier != r->tier || !has_reason(&d, r->reason) ||
                   (r->hard >= 0 && d.hard != (r->hard == 1))) {
            print_error("row '%s': got tier %s hard %d reason %s score %.2f kind %s; want tier %s "
                        "reason %s hard %d\n",
                        r->name, tg_route_tier_name(d.tier), d.hard, d.reason, d.score,
                        tg_route_kind_name(d.kind), tg_route_tier_name(r->tier), r->reason,
                        r->hard);
            failures++;
        }
        tg_router_policy_unref(p);
    }
    assert_int_equal(failures, 0);
}

/* A prompt over the local context is forced remote by counted tokens. */
static void test_long_context(void **state)
{
    (void)state;
    struct tg_router_policy *p = load(NULL);
    size_t n = 200000;
    char *text = malloc(n + 1);
    assert_non_null(text);
    const char *head = "Classify this log as OK or ERROR.\n\n";
    size_t hl = strlen(head);
    memcpy(text, head, hl);
    for (size_t i = hl; i < n; i++)
        text[i] = "log line 12:00:01 service ok\n"[(i - hl) % 29];
    text[n] = '\0';
    struct tg_route_message m = {"user", text, n};
    struct tg_route_request req = tg_route_request_default();
    req.messages = &m;
    req.n_messages = 1;
    struct tg_route_decision d;
    assert_int_equal(tg_router_decide(p, &req, NULL, &d), TG_OK);
    assert_int_equal(d.tier, TG_ROUTE_REMOTE);
    assert_string_equal(d.reason, "force_remote.context");
    assert_true(d.hard);
    free(text);
    tg_router_policy_unref(p);
}

/* 11 messages: past the local model's comfortable conversation length. */
static void test_turns(void **state)
{
    (void)state;
    struct tg_router_policy *p = load(NULL);
    struct tg_route_message msgs[11];
    for (size_t i = 0; i < 11; i++)
        msgs[i] = (struct tg_route_message){i % 2 == 0 ? "user" : "assistant", "ok, and then?", 13};
    struct tg_route_request req = tg_route_request_default();
    req.messages = msgs;
    req.n_messages = 11;
    struct tg_route_decision d;
    assert_int_equal(tg_router_decide(p, &req, NULL, &d), TG_OK);
    assert_int_equal(d.tier, TG_ROUTE_REMOTE);
    assert_string_equal(d.reason, "force_remote.turns");
    /* 9 messages stay with the score */
    req.n_messages = 9;
    assert_int_equal(tg_router_decide(p, &req, NULL, &d), TG_OK);
    assert_string_not_equal(d.reason, "force_remote.turns");
    tg_router_policy_unref(p);
}

/* Targets are echoed: local decisions list the remote chain as fallbacks, privacy ones none. */
static void test_targets(void **state)
{
    (void)state;
    struct tg_router_policy *p = load(NULL);
    const char *fb[] = {"claude-sonnet", "gpt-4o-mini"};
    struct tg_route_targets t = {"phi-3.5-mini", "gpt-4o", fb, 2};
    const char *text = "Write a poem about autumn in Montreal.";
    struct tg_route_message m = {"user", text, strlen(text)};
    struct tg_route_request req = tg_route_request_default();
    req.messages = &m;
    req.n_messages = 1;
    struct tg_route_decision d;
    assert_int_equal(tg_router_decide(p, &req, &t, &d), TG_OK);
    assert_int_equal(d.tier, TG_ROUTE_REMOTE);
    assert_string_equal(d.target, "gpt-4o");
    assert_int_equal(d.n_fallbacks, 3);
    assert_string_equal(d.fallbacks[0], "claude-sonnet");
    assert_string_equal(d.fallbacks[2], "phi-3.5-mini"); /* remote_fallback_local */
    assert_false(d.escalation_allowed);

    req.tier_override = 1;
    assert_int_equal(tg_router_decide(p, &req, &t, &d), TG_OK);
    assert_string_equal(d.target, "phi-3.5-mini");
    assert_int_equal(d.n_fallbacks, 3);
    assert_string_equal(d.fallbacks[0], "gpt-4o");
    assert_true(d.escalation_allowed);

    req.tier_override = 0;
    req.key_privacy = true;
    assert_int_equal(tg_router_decide(p, &req, &t, &d), TG_OK);
    assert_string_equal(d.target, "phi-3.5-mini");
    assert_int_equal(d.n_fallbacks, 0);
    assert_false(d.escalation_allowed);

    /* privacy with no local tier cannot be served */
    req.local_available = false;
    assert_int_equal(tg_router_decide(p, &req, &t, &d), TG_INVAL);
    tg_router_policy_unref(p);
}

static void test_bad_input(void **state)
{
    (void)state;
    struct tg_router_policy *p = load(NULL);
    struct tg_route_request req = tg_route_request_default();
    struct tg_route_decision d;
    /* no messages at all: still a decision */
    assert_int_equal(tg_router_decide(p, &req, NULL, &d), TG_OK);
    assert_true(d.score >= 0 && d.score <= 1);
    /* NULL content, NULL role, invalid UTF-8, embedded NUL */
    const char junk[] = "\xff\xfe\xc3(\xe2\x82 classify\0 this \xf0\x9f";
    struct tg_route_message msgs[3] = {
        {NULL, NULL, 5}, {NULL, junk, sizeof junk - 1}, {"tool", "", 0}};
    req.messages = msgs;
    req.n_messages = 3;
    assert_int_equal(tg_router_decide(p, &req, NULL, &d), TG_OK);
    assert_int_equal(tg_router_decide(NULL, &req, NULL, &d), TG_INVAL);
    assert_int_equal(tg_router_decide(p, NULL, NULL, &d), TG_INVAL);
    req.local_available = req.remote_available = false;
    assert_int_equal(tg_router_decide(p, &req, NULL, &d), TG_INVAL);
    assert_null(tg_router_explain(NULL, &req, NULL));
    tg_router_policy_unref(p);
}

/* ---- features ---- */

static void test_tokens(void **state)
{
    (void)state;
    assert_int_equal(tg_router_estimate_tokens("abcdefgh", 8), 2);
    assert_int_equal(tg_router_estimate_tokens("abcdefghi", 9), 3);             /* ceil */
    assert_int_equal(tg_router_estimate_tokens("日本語", strlen("日本語")), 3); /* 3-byte: 1 */
    assert_int_equal(tg_router_estimate_tokens("éé", strlen("éé")), 1);         /* 2-byte: 1/2 */
    assert_int_equal(tg_router_estimate_tokens("😀", strlen("😀")), 2);           /* 4-byte: 2 */
    assert_int_equal(tg_router_estimate_tokens(NULL, 10), 0);
}

struct lang_row {
    const char *text;
    const char *lang;
};

static void test_language(void **state)
{
    (void)state;
    static const struct lang_row LANGS[] = {
        {"Please summarize the following report for the team and list the main risks.", "en"},
        {"Pouvez-vous me dire pour quelle raison la commande est en retard dans votre système ?",
         "fr"},
        {"Bitte korrigiere die Rechtschreibung und die Grammatik in dem folgenden Text.", "de"},
        {"Clasifica la siguiente reseña de un hotel como positiva o negativa por favor.", "es"},
        {"次のお問い合わせ内容を分類して、カテゴリ名だけを答えてください。", "ja"},
        {"请把下面的句子翻译成英文，谢谢。", "zh"},
        {"নিচের অনুচ্ছেদটি দুই বাক্যে সারাংশ করুন", "bn"},
        {"Tôi đã đặt một chiếc máy lọc không khí từ tuần trước nhưng vẫn chưa nhận được.", "vi"},
        {"Naomba uniandikie barua pepe fupi kwa meneja wangu kwa sababu ya harusi.", "sw"},
        {"Ẹ káàárọ̀. Jọ̀wọ́, báwo ni mo ṣe lè san owó iná mànàmáná mi?", "yo"},
        {"Здравствуйте, подскажите, пожалуйста, где мой заказ?", "ru"},
    };
    struct tg_router_policy *p = load(NULL);
    int failures = 0;
    for (size_t i = 0; i < sizeof LANGS / sizeof LANGS[0]; i++) {
        struct tg_route_message m = {"user", LANGS[i].text, strlen(LANGS[i].text)};
        struct tg_route_request req = tg_route_request_default();
        req.messages = &m;
        req.n_messages = 1;
        struct tg_route_features f;
        tg_router_features(p, &req, &f);
        if (strcmp(f.lang, LANGS[i].lang) != 0) {
            print_error("'%s': language %s, want %s\n", LANGS[i].text, f.lang, LANGS[i].lang);
            failures++;
        }
    }
    tg_router_policy_unref(p);
    assert_int_equal(failures, 0);
}

struct pii_row {
    const char *text;
    unsigned want;
};

static void test_pii(void **state)
{
    (void)state;
    static const struct pii_row PII[] = {
        {"write to olivia.brandt77@gmail.com today", TG_ROUTE_PII_EMAIL},
        {"contact priya.n@halvorsen-freight.com.", TG_ROUTE_PII_EMAIL},
        {"user@localhost is not an address here", 0},
        {"an @ sign alone @", 0},
        {"card 4111 1111 1111 1111 exp 09/27", TG_ROUTE_PII_CARD},
        {"card 5500-0000-0000-0004", TG_ROUTE_PII_CARD},
        {"not a card 4111 1111 1111 1112", 0}, /* Luhn fails */
        {"IBAN GB82 WEST 1234 5698 7654 32 please", TG_ROUTE_PII_IBAN},
        {"IBAN DE89370400440532013000", TG_ROUTE_PII_IBAN},
        {"IBAN DE89370400440532013001", 0}, /* mod 97 fails */
        {"SSN 123-45-6789", TG_ROUTE_PII_SSN},
        {"call 612-555-0199 tomorrow", TG_ROUTE_PII_PHONE},
        {"call +44 20 7946 0958", TG_ROUTE_PII_PHONE},
        {"order 2024-05-03T11:02:17Z and total 1,250 units", 0},
    };
    struct tg_router_policy *p = load(NULL);
    int failures = 0;
    for (size_t i = 0; i < sizeof PII / sizeof PII[0]; i++) {
        struct tg_route_message m = {"user", PII[i].text, strlen(PII[i].text)};
        struct tg_route_request req = tg_route_request_default();
        req.messages = &m;
        req.n_messages = 1;
        struct tg_route_features f;
        tg_router_features(p, &req, &f);
        if (f.pii != PII[i].want) {
            print_error("'%s': pii %#x, want %#x\n", PII[i].text, f.pii, PII[i].want);
            failures++;
        }
    }
    tg_router_policy_unref(p);
    assert_int_equal(failures, 0);
}

static void test_sizes(void **state)
{
    (void)state;
    struct tg_router_policy *p = load(NULL);
    static const struct {
        const char *text;
        int64_t described, output;
    } SIZES[] = {
        {"Write a 1,500-word short story.", 0, 2000},
        {"Below are 340 transcripts (roughly 180k tokens total). Cluster them.", 180000, 0},
        {"The full agreement (218 pages) follows.", 109000, 0},
        {"Summarize in <= 50 words.", 0, 66},
    };
    for (size_t i = 0; i < sizeof SIZES / sizeof SIZES[0]; i++) {
        struct tg_route_message m = {"user", SIZES[i].text, strlen(SIZES[i].text)};
        struct tg_route_request req = tg_route_request_default();
        req.messages = &m;
        req.n_messages = 1;
        struct tg_route_features f;
        tg_router_features(p, &req, &f);
        assert_int_equal(f.n_described_tokens, SIZES[i].described);
        assert_int_equal(f.n_output_tokens, SIZES[i].output);
    }
    tg_router_policy_unref(p);
}

/* ---- escalation ---- */

struct esc_row {
    const char *name;
    enum tg_route_endpoint ep;
    const char *text;
    int schema_valid;
    double confidence;
    const char *finish;
    const char *want; /* reason */
    bool escalate;
};

static void test_escalation(void **state)
{
    (void)state;
    static char loop[2048];
    for (size_t i = 0; i + 1 < sizeof loop; i++)
        loop[i] = "Thank you for your order. "[i % 26];
    static char loop2[4096];
    size_t off = 0;
    off += (size_t)snprintf(loop2, sizeof loop2, "Here is the answer you asked for. ");
    for (int i = 0; i < 60 && off + 64 < sizeof loop2; i++)
        off += (size_t)snprintf(loop2 + off, sizeof loop2 - off, "the cat sat on the mat %s ",
                                i % 2 ? "and" : "then");
    static const struct esc_row ESC[] = {
        {"empty", TG_ROUTE_EP_CHAT, "", -1, -1, "stop", "escalate.empty", true},
        {"blank", TG_ROUTE_EP_CHAT, "  \n\t ", -1, -1, "stop", "escalate.empty", true},
        {"schema invalid", TG_ROUTE_EP_EXTRACT, "{\"name\": 3}", 0, -1, "stop",
         "escalate.schema_invalid", true},
        {"truncated json", TG_ROUTE_EP_EXTRACT, "{\"name\": \"Ana", 0, -1, "length",
         "escalate.truncated", true},
        {"schema valid", TG_ROUTE_EP_EXTRACT, "{\"name\": \"Ana\"}", 1, 0.9, "stop", "ok", false},
        {"low confidence", TG_ROUTE_EP_CLASSIFY, "billing", -1, 0.31, "stop",
         "escalate.low_confidence", true},
        {"confident", TG_ROUTE_EP_CLASSIFY, "billing", -1, 0.93, "stop", "ok", false},
        {"tail loop", TG_ROUTE_EP_CHAT, loop, -1, -1, "length", "escalate.repetition", true},
        {"4-gram loop", TG_ROUTE_EP_CHAT, loop2, -1, -1, "stop", "escalate.repetition", true},
        {"normal prose", TG_ROUTE_EP_CHAT,
         "The shipment left Rotterdam on Monday and should reach Antwerp by Wednesday. Customs "
         "paperwork is complete; the only open item is the pallet count, which the warehouse "
         "will confirm on arrival. No action is needed from you.",
         -1, -1, "stop", "ok", false},
    };
    struct tg_router_policy *p = load(NULL);
    struct tg_route_decision allowed;
    memset(&allowed, 0, sizeof allowed);
    allowed.escalation_allowed = true;
    int failures = 0;
    for (size_t i = 0; i < sizeof ESC / sizeof ESC[0]; i++) {
        const struct esc_row *e = &ESC[i];
        struct tg_route_local_result r = {e->ep,           e->text,       strlen(e->text),
                                          e->schema_valid, e->confidence, e->finish};
        struct tg_route_escalation out;
        assert_int_equal(tg_router_check_local_result(p, &allowed, &r, &out), TG_OK);
        if (out.escalate != e->escalate || strcmp(out.reason, e->want) != 0) {
            print_error("row '%s': escalate %d reason %s (%s); want %d %s\n", e->name, out.escalate,
                        out.reason, out.text, e->escalate, e->want);
            failures++;
        }
    }
    assert_int_equal(failures, 0);

    /* a privacy decision is never escalated, whatever the result */
    struct tg_route_decision priv;
    memset(&priv, 0, sizeof priv);
    struct tg_route_local_result empty = {TG_ROUTE_EP_CHAT, "", 0, -1, -1, "stop"};
    struct tg_route_escalation out;
    assert_int_equal(tg_router_check_local_result(p, &priv, &empty, &out), TG_OK);
    assert_false(out.escalate);
    assert_string_equal(out.reason, "escalation.not_allowed");
    assert_int_equal(tg_router_check_local_result(p, NULL, NULL, &out), TG_INVAL);
    assert_false(out.escalate);
    tg_router_policy_unref(p);

    /* a policy with escalation off reports it */
    const char *y = "name: off\nescalation:\n  enabled: false\n";
    struct tg_router_policy *offp = NULL;
    char err[256];
    assert_int_equal(tg_router_policy_load_string("off.yaml", y, strlen(y), &offp, err, sizeof err),
                     TG_OK);
    assert_int_equal(tg_router_check_local_result(offp, NULL, &empty, &out), TG_OK);
    assert_false(out.escalate);
    assert_string_equal(out.reason, "escalation.disabled");
    tg_router_policy_unref(offp);
}

/* A full decide -> local result -> escalate round: the cascade the gateway runs. */
static void test_cascade(void **state)
{
    (void)state;
    struct tg_router_policy *p = load(NULL);
    const char *text = "Extract name and email from: \"Hi, I'm Ana (ana@example.org)\". JSON.";
    struct tg_route_message m = {"user", text, strlen(text)};
    struct tg_route_request req = tg_route_request_default();
    req.messages = &m;
    req.n_messages = 1;
    req.endpoint = TG_ROUTE_EP_EXTRACT;
    req.has_schema = true;
    struct tg_route_decision d;
    assert_int_equal(tg_router_decide(p, &req, NULL, &d), TG_OK);
    assert_int_equal(d.tier, TG_ROUTE_LOCAL);
    assert_true(d.escalation_allowed);
    struct tg_route_local_result r = {TG_ROUTE_EP_EXTRACT, "{\"name\":", 8, 0, -1, "stop"};
    struct tg_route_escalation e;
    assert_int_equal(tg_router_check_local_result(p, &d, &r, &e), TG_OK);
    assert_true(e.escalate);
    assert_string_equal(e.reason, "escalate.schema_invalid");
    /* budget gone: the same failure cannot go remote */
    req.remote_budget_exhausted = true;
    assert_int_equal(tg_router_decide(p, &req, NULL, &d), TG_OK);
    assert_false(d.escalation_allowed);
    assert_int_equal(tg_router_check_local_result(p, &d, &r, &e), TG_OK);
    assert_false(e.escalate);
    tg_router_policy_unref(p);
}

/* ---- explain ---- */

static void test_explain(void **state)
{
    (void)state;
    struct tg_router_policy *p = load(NULL);
    const char *text = "Write song lyrics (two verses, chorus, bridge) for our sales kickoff.";
    struct tg_route_message m = {"user", text, strlen(text)};
    struct tg_route_request req = tg_route_request_default();
    req.messages = &m;
    req.n_messages = 1;
    const char *fb[] = {"claude-sonnet"};
    struct tg_route_targets t = {"phi", "gpt-4o", fb, 1};
    json_t *ex = tg_router_explain(p, &req, &t);
    assert_non_null(ex);
    assert_string_equal(json_string_value(json_object_get(ex, "policy")), "balanced");
    json_t *f = json_object_get(ex, "features");
    assert_string_equal(json_string_value(json_object_get(f, "kind")), "creative");
    assert_string_equal(json_string_value(json_object_get(f, "language")), "en");
    double score = json_real_value(json_object_get(ex, "score"));
    assert_true(score >= 0.5 && score <= 1.0);
    json_t *rules = json_object_get(ex, "rules_fired");
    assert_true(json_array_size(rules) >= 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(rules, 0), "code")),
                        "kind.creative");
    json_t *d = json_object_get(ex, "decision");
    assert_string_equal(json_string_value(json_object_get(d, "tier")), "remote");
    assert_string_equal(json_string_value(json_object_get(d, "target")), "gpt-4o");
    assert_string_equal(json_string_value(json_array_get(json_object_get(d, "fallbacks"), 0)),
                        "claude-sonnet");
    assert_false(json_is_true(json_object_get(d, "hard")));
    json_decref(ex);
    tg_router_policy_unref(p);
}

/* ---- JSON bodies ---- */

static void test_parse_json(void **state)
{
    (void)state;
    static const struct {
        const char *body;
        int rc;
        size_t n_messages;
        enum tg_route_endpoint ep;
        int64_t max_tokens;
    } BODIES[] = {
        {"{\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},{\"role\":\"user\","
         "\"content\":\"hi\"}],\"max_tokens\":64}",
         TG_OK, 2, TG_ROUTE_EP_CHAT, 64},
        {"{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
         "{\"type\":\"image_url\",\"image_url\":{}},{\"type\":\"text\",\"text\":\"b\"}]}]}",
         TG_OK, 1, TG_ROUTE_EP_CHAT, -1},
        {"{\"prompt\":\"once upon\"}", TG_OK, 1, TG_ROUTE_EP_CHAT, -1},
        {"{\"input\":\"hello\",\"instructions\":\"be nice\",\"max_output_tokens\":9}", TG_OK, 2,
         TG_ROUTE_EP_CHAT, 9},
        {"{\"text\":\"late delivery\",\"labels\":[\"a\",\"b\"]}", TG_OK, 1, TG_ROUTE_EP_CLASSIFY,
         -1},
        {"{\"text\":\"Ana, 34\",\"schema\":{\"type\":\"object\"}}", TG_OK, 1, TG_ROUTE_EP_EXTRACT,
         -1},
        {"{\"model\":\"x\"}", TG_INVAL, 0, TG_ROUTE_EP_CHAT, -1},
        {"{\"messages\":[{\"role\":\"user\",\"content\":42}]}", TG_INVAL, 0, TG_ROUTE_EP_CHAT, -1},
        {"{\"messages\":[7]}", TG_INVAL, 0, TG_ROUTE_EP_CHAT, -1},
        {"[1,2]", TG_INVAL, 0, TG_ROUTE_EP_CHAT, -1},
    };
    for (size_t i = 0; i < sizeof BODIES / sizeof BODIES[0]; i++) {
        json_error_t je;
        json_t *b = json_loads(BODIES[i].body, 0, &je);
        assert_non_null(b);
        struct tg_route_parsed pr;
        char err[128] = "";
        int rc = tg_router_parse_json(b, TG_ROUTE_EP_CHAT, &pr, err, sizeof err);
        assert_int_equal(rc, BODIES[i].rc);
        if (rc == TG_OK) {
            assert_int_equal(pr.req.n_messages, BODIES[i].n_messages);
            assert_int_equal(pr.req.endpoint, BODIES[i].ep);
            assert_int_equal(pr.req.max_tokens, BODIES[i].max_tokens);
            if (i == 1) {
                assert_int_equal(pr.req.messages[0].content_len, 3);
                assert_memory_equal(pr.req.messages[0].content, "a\nb", 3);
            }
            tg_router_parsed_free(&pr);
        } else {
            assert_true(strlen(err) > 0);
        }
        json_decref(b);
    }
}

/* Every deciding reason is from the documented, bounded set (it becomes a metric label). */
static bool reason_allowed(const char *code)
{
    static const char *const FIXED[] = {"force_local.key_privacy",
                                        "force_local.pii.email",
                                        "force_local.pii.phone",
                                        "force_local.pii.card",
                                        "force_local.pii.iban",
                                        "force_local.pii.ssn",
                                        "override.header",
                                        "force_remote.pinned_model",
                                        "endpoint.embeddings",
                                        "force_remote.context",
                                        "force_remote.described_context",
                                        "force_remote.turns",
                                        "force_remote.language",
                                        "budget.exhausted",
                                        "load.engine_wait",
                                        "load.circuit_open",
                                        "unavailable.local",
                                        "unavailable.remote",
                                        NULL};
    for (size_t i = 0; FIXED[i] != NULL; i++)
        if (strcmp(code, FIXED[i]) == 0)
            return true;
    for (int k = 0; k < TG_ROUTE_N_KINDS; k++) {
        char buf[64];
        snprintf(buf, sizeof buf, "kind.%s", tg_route_kind_name((enum tg_route_kind)k));
        if (strcmp(code, buf) == 0)
            return true;
    }
    return false;
}

static void test_reason_codes_bounded(void **state)
{
    (void)state;
    struct tg_router_policy *p = load(NULL);
    FILE *f = fopen(TG_SOURCE_DIR "/bench/route-eval/route-dev.jsonl", "r");
    assert_non_null(f);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    size_t rows = 0;
    while ((len = getline(&line, &cap, f)) != -1) {
        json_t *row = json_loadb(line, (size_t)len, 0, NULL);
        assert_non_null(row);
        struct tg_route_parsed pr;
        char err[128];
        assert_int_equal(tg_router_parse_json(row, TG_ROUTE_EP_CHAT, &pr, err, sizeof err), TG_OK);
        /* the same request under each set of circumstances the gateway can report */
        for (int v = 0; v < 6; v++) {
            struct tg_route_request req = pr.req;
            req.key_privacy = v == 1;
            req.remote_budget_exhausted = v == 2;
            req.engine_wait_ms = v == 3 ? 1e5 : 0;
            req.tier_override = v == 4 ? 2 : 0;
            req.remote_circuit_open = v == 5;
            struct tg_route_decision d;
            assert_int_equal(tg_router_decide(p, &req, NULL, &d), TG_OK);
            if (!reason_allowed(d.reason))
                fail_msg("row %zu variant %d: reason '%s' is not in the bounded set", rows, v,
                         d.reason);
            assert_true(d.score >= 0 && d.score <= 1);
        }
        tg_router_parsed_free(&pr);
        json_decref(row);
        rows++;
    }
    free(line);
    fclose(f);
    assert_int_equal(rows, 240);
    tg_router_policy_unref(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),      cmocka_unit_test(test_long_context),
        cmocka_unit_test(test_turns),      cmocka_unit_test(test_targets),
        cmocka_unit_test(test_bad_input),  cmocka_unit_test(test_tokens),
        cmocka_unit_test(test_language),   cmocka_unit_test(test_pii),
        cmocka_unit_test(test_sizes),      cmocka_unit_test(test_escalation),
        cmocka_unit_test(test_cascade),    cmocka_unit_test(test_explain),
        cmocka_unit_test(test_parse_json), cmocka_unit_test(test_reason_codes_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
