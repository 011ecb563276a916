/* The cue lexicon: words and word pairs that are evidence for a task kind, stop words that
 * vote for a language, and a few words with a role (units, question words, language names).
 *
 * Lists are written as text so they read like a glossary: "word/weight", pairs joined by '_'
 * ("act_as/4" matches "act as", "act-as"). Words are matched lower-cased (ASCII and Latin-1),
 * apostrophes dropped ("what's" -> "whats"). Weights: 4 = decisive, 3 = strong, 2 = typical,
 * 1 = weak, 0.5 = hint. They were set from the Phi-3.5 Mini capability notes in DESIGN.md and
 * checked against bench/route-eval; keep them readable rather than tuned to the last decimal.
 */
#include <stdlib.h>
#include <string.h>

#include "router_internal.h"
#include "tg/err.h"

struct kind_cues {
    enum tg_route_kind kind;
    const char *cues;
};

static const struct kind_cues KIND_CUES[] = {
    {TG_ROUTE_KIND_CLASSIFY,
     "classify/4 classification/3 classifies/3 categorize/4 categorise/4 categorization/3 "
     "label_this/4 label_each/4 label_the/3 label/1 labels/1 label_only/2 just_the/1 "
     "sentiment/4 intent/3 intents/3 spam/2 ham/1 one_of/2 which_department/3 department/1.5 "
     "priority/1.5 assign_a/1.5 tag/1 moderate/2 allow_or/3 what_language/4 detect_the/2 "
     "route_this/3 determine_whether/2 positive/1.5 negative/1.5 neutral/2.5 category/2 "
     "categories/1.5 one_word/1.5 as_hot/2 clasifica/4 clasificar/4 classez/4 classifica/4 "
     "classifique/4 classifiez/4 ordne/3 zuordnen/3 einordnen/3 kategorisiere/4 "
     "klassifiziere/4 positif/1 negatif/1 neutre/2 positiva/1 negativa/1 neutra/2 "
     "etiqueta/2 auto_reply/2 iso/1 only_the/1 kategorie/4 kategorien/3 categoría/4 catégorie/4 "
     "categoria/4 which_team/2 right_team/2 urgency/3 rate_the/2 wähle/2 elige/2 choisis/2 "
     "scegli/2 contain_a/1.5 group_them/3 group/1.5 sort_into/3"},
    {TG_ROUTE_KIND_EXTRACT,
     "extract/4 extraction/3 extracts/3 parse/4 pull_the/2 pull_out/2 fields/2.5 field/1 "
     "json/2 key_value/2 fill_these/3 map_this/3 into_json/2 as_json/2 return_json/2 "
     "json_array/2 line_items/2 action_items/3 get_event/2 which_product/2 list_the/1.5 "
     "null/1.5 extrayez/4 extrae/4 extrahiere/4 estrai/4 extraia/4 keywords/3 keyword/3 "
     "hashtags/3 main_topics/3 entities/3 organizations/2 people/1 skills/1 "
     "deduplicated/2 record/0.5 mentioned/1.5 data_as/2 cada/0.5 devuelve/1 "
     "json_only/2 json_please/2 out_of_this/2 tracking_number/1 en_json/2 als_json/2 list_every/2 "
     "from_this/1.5 their_role/1"},
    {TG_ROUTE_KIND_CLOSED_QA,
     "based_on/2 according_to/2 using_only/4 only_from/3 strictly_from/4 from_the/1.5 "
     "per_the/3 the_passage/3 the_text/2 the_policy/2 the_recipe/2 read_the/2 using_the/1.5 "
     "answer_using/4 excerpt/3 does_the/1 is_the_claim/2 claim/1.5 supported_by/2 "
     "not_mentioned/4 true_false/3 yes_no/2 cite_the/2 anhand/3 lisez/3 texte/1.5 "
     "beantworte/3 match_the/1.5 the_manual/2 the_terms/2 the_transcript/2 the_table/2 "
     "rate_table/2 the_sla/2 press_release/2 not_specified/4 answer/1 handbook/2 "
     "statement/1 said/0.5 use_the/1 answer_yes/3 yes_or_no/3 question/1 snippet/2 the_contract/2 "
     "the_faq/3 faq/1.5 the_document/2 the_email/1.5 the_clause/2"},
    {TG_ROUTE_KIND_SUMMARIZE,
     "summarize/4 summarise/4 summary/4 summaries/3 condense/4 tl_dr/4 sum_up/4 "
     "bullet_points/2 one_sentence/2 single_sentence/2 two_sentences/2 sentences/1 "
     "crm_note/2 status_line/3 plain_english/2 pros_cons/2 resume/3 resumen/4 resumir/4 "
     "résume/4 résumez/4 résumer/4 zusammenfassung/4 zusammen/1 fasse/3 riassumi/4 "
     "riassunto/4 resuma/4 resumo/4 explain_this/1.5 gist/3 recap/3 key_points/2"},
    {TG_ROUTE_KIND_REWRITE,
     "rewrite/4 rephrase/4 reword/4 fix_grammar/4 grammar/3 spelling/3 punctuation/3 "
     "capitalization/3 proofread/4 polite/3 politely/2 formal/1.5 formally/3 shorten/4 "
     "make_this/2 less_harsh/3 tone/1 convert/4 conversion/2 format_these/4 format/2 "
     "formatted/1 normalize/4 normalise/4 title_case/4 camelcase/4 snake_case/4 csv/2 "
     "yaml/1.5 markdown_table/3 to_24h/3 to_metric/3 redact/4 redaction/4 anonymize/4 "
     "anonymise/4 mask/3 replace_names/3 replacing/1.5 remove_the/1 pii/3 redacted/3 "
     "combine_these/3 rename/3 split_this/3 korrigiere/4 korrigieren/4 corrigez/4 "
     "corrige/4 corrija/4 correggi/4 anonimiza/4 anonymisiere/4 reading_level/3 sms/1.5 "
     "reformat/4 e_164/3 iso_8601/2 uppercase/1.5 lowercase/1 clear_sentence/2 "
     "for_a_customer/1 fix_punctuation/4 turn_this_into/3 markdown/2 sorted/2 alphabetically/3 "
     "sort/2 replace/2.5 replace_every/3 professional/2 sound_more/3 more_professional/3 "
     "format_to/2 put_these/2 into_utc/3 utc/1.5 timezone/2 time_zone/2 passive_voice/3 "
     "active_voice/3 as_words/3 write_these/2 spell_out/3"},
    {TG_ROUTE_KIND_TRANSLATE,
     "translate/5 translation/4 translated/3 into_english/2 to_english/2 traduci/5 "
     "traduis/5 traduire/5 traduza/5 traduce/5 traduzca/5 traduzir/5 traducir/5 "
     "übersetze/5 übersetzen/5 übersetzung/4 tafsiri/5 in_french/1.5 in_spanish/1.5 "
     "in_german/1.5 do_you_say/4 into_french/3 into_german/3 into_spanish/3 into_italian/3 "
     "into_portuguese/3 into_japanese/3 into_chinese/3 in_italian/1.5 in_portuguese/1.5 "
     "in_japanese/1.5 in_chinese/1.5 se_dice/4 comment_dit_on/4 wie_sagt_man/4 come_si_dice/4"},
    {TG_ROUTE_KIND_MATH,
     "how_many/2 how_much/2.5 average/2.5 percentage/2.5 percent/1.5 total/1.5 discount/2.5 "
     "tax/1 interest/1.5 sale_price/3 per_liter/3 per_day/1.5 cheaper/2.5 what_time/2.5 "
     "arrive/1 ending/1 units/1.5 gross_pay/3 hourly_rate/3 each_pay/3 tip/1.5 "
     "show_the_steps/1 calculate/3 compute/2 combien/3 wie_viel/3 wie_viele/3 cuánto/3 "
     "cuántos/3 quanto/3 quantos/3 left/1 remain/1.5 remaining/1.5 increase/1.5 "
     "simple_interest/3 subtotal/2 final_total/2 split/1 shipments/1 sold/1.5 bouteilles/1"},
    {TG_ROUTE_KIND_CODE_SNIPPET,
     "regex/5 regexp/5 regular_expression/5 sql/4 query/2.5 one_liner/4 formula/3 "
     "google_sheets/3 excel/3 just_the_pattern/3 pattern/1.5 one_query/3 mysql/2 postgres/1.5 "
     "jq/3 awk/2 sed/1 cron_expression/4 sheets/1 vlookup/4 command/2 bash/2 shell/1.5 "
     "one_command/3 cells/3 column/1.5 crontab/3"},
    {TG_ROUTE_KIND_CODE,
     "implement/4 implementation/3 function/1 class/1 full_stack/4 backend/2 "
     "frontend/2 react/2 typescript/2.5 python/1.5 rust/3 golang/3 in_go/3 java/2 kotlin/2 "
     "node/1 flask/3 django/1.5 kubernetes/2 operator/1.5 crd/3 parser/3 evaluator/3 "
     "crawler/3 crdt/4 thread_safe/4 lru/3 cache/1 algorithm/3 efficient/2 complexity/1.5 "
     "dp/3 dynamic_programming/4 data_structure/3 bug/2.5 bugs/3 debug/4 debugging/4 "
     "whats_wrong/3 segfault/5 segfaults/5 deadlock/4 leak/3 leaks/4 race/2 hangs/3 "
     "freezes/3 oom/3 ooms/3 valgrind/4 exception/1.5 exceptions/1.5 stack_trace/3 "
     "traceback/4 rollback/2 fixed_version/3 refactor/4 unit_tests/3 module/1.5 "
     "community_node/3 oauth2/2 pagination/2 terraform/2 websocket/3 socket_io/3 prisma/3 "
     "sqlalchemy/3 alembic/3 jwt/3 tokio/4 reqwest/4 controller_runtime/4 cronjobs/2 "
     "goroutine/4 mutex/3 async/1.5 concurrency/3 concurrent/2 suffix/2 automaton/4 "
     "queries/1 script/1 go_test/3 compile/2 compiler/3 runtime/1.5 microservice/2 "
     "optimistic_updates/3 drag_drop/3 retries/1 backoff/2 robots_txt/3 c++/3 c#/3 cpp/3 "
     "intervals/2 10_5/3 10_6/3 explain_the_dp/4 network_tab/3 component/1.5 useeffect/4 "
     "transactional/3 plan_wants/3 replace_all/2 speed_up/2 slow/1.5 optimize/2 performance/1.5"},
    {TG_ROUTE_KIND_PROOF,
     "prove/5 proof/4 proofs/4 show_that/4 show_there/4 derive/4 rigorously/4 rigorous/4 "
     "irrational/3 infinitely_many/4 divisible/3 find_all/1 how_many_ways/3 integral/3 "
     "evaluate/1.5 "
     "theorem/4 lemma/4 for_all/1.5 for_every/1.5 congruent/3 expected_number/3 "
     "justify/3 hamiltonian/3 tournament/1 functions/1.5 pairs/1 positive_integers/3 "
     "primes/3 prime/2 induction/3 démontrer/5 montrer_que/4 beweise/5 demuestra/5"},
    {TG_ROUTE_KIND_CREATIVE,
     "poem/5 poems/4 poetry/4 haiku/5 story/3 stories/2.5 short_story/5 lyrics/5 song/3 "
     "screenplay/5 scene/2 speech/3 blog_post/4 slogan/4 slogans/4 tagline/4 taglines/4 "
     "copy/1.5 copywriter/4 landing_page/4 product_description/4 meta_description/2 brand/1.5 "
     "origin_story/4 narrative/2 fiction/3 novel/1 chapter/1.5 bedtime_story/5 riddles/4 "
     "riddle/4 jokes/3 make_up/2 come_up_with/3 farewell/2 letter/1.5 heartfelt/3 "
     "anthem/4 email_sequence/3 drip/3 write/1 write_a/1 draft_a/1.5 conversational/1.5 "
     "anecdotes/3 city_state/3 history/0.5 worldbuilding/4 tabletop/3 campaign/1 "
     "escape_room/3 poème/5 écris/3 écrire/2 gedicht/5 geschichte/2 poema/5 cuento/4 "
     "poesia/5 vers/2 verses/3 chorus/4 bridge/1 best_man/3 wedding/1.5 toast/2 "
     "creative/2 imaginative/3 vibe/2 cliches/2 catchy/3 whimsical/3 sensory/2 poetic/3 "
     "brand_voice/3 voice/1 engaging/1.5 names_for/2 name_ideas/3 cozy/1.5 melancholic/2 "
     "mélancolique/2 subtext/3 dialogue/1.5 words/0.5"},
    {TG_ROUTE_KIND_ROLEPLAY,
     "act_as/5 play_a/4 play_the/4 pretend/4 roleplay/5 role_play/5 in_character/5 "
     "character/1.5 stay_in/2 interview_me/4 socratic/4 dialogue/1.5 simulator/3 "
     "simulate/3 rôle/4 joue/4 le_rôle/4 improvise/4 at_a_time/2 being_an_ai/3 players/2 "
     "innkeeper/3 you_are_captain/4 sardonic/3 persona/3 pitching/2 skeptical/2 "
     "objections/2 be_tough/3 stay_in_character/5 conversation/1 reste/1 spiel/2 youre_a/2 "
     "youre_the/2 you_are_the/1.5 lets_play/3 dungeon_master/4 game_master/4 negotiation_partner/3 "
     "role_of/2"},
    {TG_ROUTE_KIND_OPEN_QA,
     "who/1.5 who_was/4 who_wrote/4 what_was/2.5 when_did/4 why_did/4 which_treaty/3 "
     "tell_me_about/4 history/2 historical/3 famous/3 key_differences/3 list_all/2.5 "
     "nobel/3 population/3 century/3 empire/3 ancient/3 war/2 known_for/3 best_month/3 "
     "unesco/3 rivers/2 river/1.5 invented/3 discovered/3 how_was/2.5 architecture/1 "
     "baroque/3 opera/3 roman/3 treaty/3 dynasty/3 kingdom/2 called_before/3 famous_for/3 "
     "what_did_he/3 what_did_she/3 based_on_what/2 philosopher/3 painter/3 composer/3 "
     "mechanism/1.5 what_exactly/2 capital_of/3 heritage/2 main_works/3 name_the/1.5 works_of/2 "
     "significance/2 influence/2 biography/3 explain_why/1.5 origins/2 origin_of/2 "
     "explain_the_difference/3 difference_between/2.5 how_the/1"},
    {TG_ROUTE_KIND_CURRENT_EVENTS,
     "right_now/4 today/2 todays/4 this_week/3 last_night/4 latest/1.5 news/2 "
     "headlines/4 any_update/4 update_this/3 trading_at/4 stock_price/4 markets/1.5 "
     "in_effect/2 strikes/2 fomc/3 this_morning/3 yesterday/2.5 won_the/2 "
     "current/1.5 currently/1.5 pricing_in/3 disruptions/2 this_season/2 election/2 "
     "at_the_moment/3 this_weekend/3 weather/3 forecast/3 standings/3 championship/1.5 "
     "leading_the/1.5"},
    {TG_ROUTE_KIND_EXPERT,
     "should/1 should_we/2 should_i/2 advice/3 advise/3 recommend/1.5 recommendation/1.5 "
     "strategy/2.5 decision_framework/4 framework/1 walk_me_through/3 trade_offs/3 "
     "tradeoffs/3 legal/3 law/2.5 lawyer/3 attorney/3 enforceable/4 non_compete/4 "
     "landlord/2 contract/1 liability/1 gdpr/3 sccs/3 scc/3 dpia/4 compliance/1.5 "
     "exposure/2 taxes/2 taxable/3 irs/3 401k/3 roth/4 ira/3 portfolio/4 rebalance/4 "
     "invest/3 investment/3 retire/3 mortgage/4 refinance/4 loan/1.5 term_sheet/4 "
     "valuation/3 founder/2 pricing/2 churn/3 expand/2 expansion/2 doctor/3 symptoms/4 "
     "medication/4 fever/4 rash/4 dose/3 mg/2 diagnosis/4 nsaids/4 ibuprofen/3 "
     "blood_pressure/3 kidneys/3 is_it_safe/3 my_options/3 what_are_my/3 supplier/2 "
     "landed_cost/4 tariffs/3 risk/1.5 risks/2 french_law/4 labor_law/4 employment_law/4 "
     "let_him_go/3 underperforming/3 what_should/2 darf_ich/4 was_passiert/3 steuer/3 "
     "umsatz/2 kleinunternehmerregelung/5 dois_je/3 debería/3 design/2.5 architecture/2 "
     "architect/2 distributed/3 scalable/3 scalability/3 high_availability/3 "
     "microservices/3 event_driven/3 consistency/3 exactly_once/3 rate_limiter/3 "
     "compare/2 throughput/2 latency/2 replication/3 sharding/3 monolith/3 strangler/3 "
     "tolerate/2 requirements/1 retention/1 downsampled/3 dashboards/1 regions/2 "
     "consider/2 frameworks/2 preferred/1.5 cap/1 ratchet/4 dilution/4 push_back/2 "
     "unfriendly/2 obligations/2 negotiate/2 deposit/1 itemized/3 california/2 "
     "massachusetts/2 rebalancing/4 contributions/2 bracket/2 whats_our/2 exposure/2 "
     "regulation/2 sales_cycle/3 hiring/1 localization/2 pediatrician/4 er/1 good_idea/2.5 debt/2 "
     "credit_card/1.5 apr/2 heloc/4 pay_off/1.5"},
    {TG_ROUTE_KIND_PLANNING,
     "plan/2.5 planning/3 itinerary/4 day_by_day/4 roadmap/4 timeline/2 migration/2 "
     "migration_plan/4 propose/2.5 sequencing/3 milestones/3 trip/2 study_plan/4 "
     "launch_plan/4 schedule_for/2 step_by_step_plan/4 10_days/2 phases/2 "
     "all_together/3"},
};

/* Stop words per language (Latin script). Ambiguous ones are listed under each language. */
static const char *const LANG_WORDS[LANG_N] = {
    [LANG_EN] = "the and to of is this that for with you your what are was be it in on my "
                "please can from have how which who when will me our we a an about write "
                "give make list tell all each as by at or not if do so than into out one two "
                "some any i its their them they these those here there should would could",
    [LANG_FR] = "le la les des est et pour une un vous ce du dans que qui au aux avec "
                "sur pas nous votre mon ma mes je sont ont cette leur",
    [LANG_DE] = "der die das und ist nicht mit sie ich bitte ein eine zu auf für den dem "
                "des im wir ihr sind von nur aus wie bei noch",
    [LANG_ES] = "el los las que y por para con una un del es se su lo como al muy pero "
                "esta este mi sus",
    [LANG_IT] = "il di che per una della alle tra sono non gli le del al nel si più come "
                "questo alla",
    [LANG_PT] = "o os da do não uma com que em seu sua foi um no na mas pelo para "
                "muito também",
    [LANG_SW] = "na kwa ya wa ni za katika kama sana lakini hii huu hiyo yako yangu wangu "
                "tafadhali naomba kuanzia siku tarehe sababu ilikuwa kuwa nini gani hapana "
                "ndiyo asante habari chakula maoni haya barua pepe fupi huduma nzuri",
    [LANG_YO] = "ni mo ti si sí ṣe lè kí wọn ó náà àti fún jọ̀wọ́ báwo mi rẹ ẹ",
    [LANG_VI] = "của và không là tôi bạn được cho một những đã có này với các người "
                "trong khi giúp mình",
};

/* Names of languages Phi-3.5 Mini handles poorly: naming one ("into Swahili") sets the target
 * language even when the text itself is English. */
static const char *const LANG_NAMES =
    "swahili/sw kiswahili/sw bengali/bn bangla/bn vietnamese/vi yoruba/yo hausa/ha igbo/ig "
    "amharic/am zulu/zu xhosa/xh somali/so nepali/ne sinhala/si khmer/km lao/lo burmese/my "
    "tagalog/tl filipino/tl malagasy/mg kinyarwanda/rw tigrinya/ti pashto/ps punjabi/pa "
    "gujarati/gu marathi/mr telugu/te tamil/ta kannada/kn malayalam/ml urdu/ur";

static const struct lex_substr CJK_CUES[] = {
    {"翻訳", TG_ROUTE_KIND_TRANSLATE, 5},   {"翻译", TG_ROUTE_KIND_TRANSLATE, 5},
    {"要約", TG_ROUTE_KIND_SUMMARIZE, 5},   {"总结", TG_ROUTE_KIND_SUMMARIZE, 5},
    {"摘要", TG_ROUTE_KIND_SUMMARIZE, 4},   {"分類", TG_ROUTE_KIND_CLASSIFY, 5},
    {"分类", TG_ROUTE_KIND_CLASSIFY, 5},    {"抜き出", TG_ROUTE_KIND_EXTRACT, 5},
    {"抽出", TG_ROUTE_KIND_EXTRACT, 5},     {"提取", TG_ROUTE_KIND_EXTRACT, 5},
    {"JSON", TG_ROUTE_KIND_EXTRACT, 1},     {"詩", TG_ROUTE_KIND_CREATIVE, 3},
    {"小説", TG_ROUTE_KIND_CREATIVE, 4},    {"物語", TG_ROUTE_KIND_CREATIVE, 4},
    {"写一首", TG_ROUTE_KIND_CREATIVE, 4},  {"故事", TG_ROUTE_KIND_CREATIVE, 4},
    {"証明", TG_ROUTE_KIND_PROOF, 5},       {"证明", TG_ROUTE_KIND_PROOF, 5},
    {"校正", TG_ROUTE_KIND_REWRITE, 4},     {"書き直", TG_ROUTE_KIND_REWRITE, 4},
    {"改写", TG_ROUTE_KIND_REWRITE, 4},     {"怎么说", TG_ROUTE_KIND_TRANSLATE, 4},
    {"英文", TG_ROUTE_KIND_TRANSLATE, 1.5}, {"英語で", TG_ROUTE_KIND_TRANSLATE, 3},
    {"いくら", TG_ROUTE_KIND_MATH, 3},      {"何個", TG_ROUTE_KIND_MATH, 3},
    {"多少", TG_ROUTE_KIND_MATH, 2},
};

const struct lex_substr *tg_router_lex_substrs(size_t *n)
{
    *n = sizeof CJK_CUES / sizeof CJK_CUES[0];
    return CJK_CUES;
}

const struct lex_slot *tg_router_lex_find(const struct lex_table *t, uint64_t hash)
{
    for (size_t i = (size_t)hash & (LEX_SLOTS - 1);; i = (i + 1) & (LEX_SLOTS - 1)) {
        const struct lex_slot *s = &t->slots[i];
        if (s->hash == hash)
            return s;
        if (s->hash == 0)
            return NULL;
    }
}

/* Hash of a lexicon entry: each '_'-separated word is hashed alone and the words combined,
 * exactly as the scanner combines consecutive words (lex_ngram). */
static uint64_t entry_hash(const char *w, size_t n)
{
    uint64_t h = 0;
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || w[i] == '_') {
            uint64_t wh = lex_word_hash(w + start, i - start);
            h = start == 0 ? wh : lex_ngram(h, wh);
            start = i + 1;
        }
    }
    return h;
}

static struct lex_slot *slot_get(struct lex_table *t, uint64_t hash)
{
    /* keep the load under a half so probes stay short */
    for (size_t i = (size_t)hash & (LEX_SLOTS - 1);; i = (i + 1) & (LEX_SLOTS - 1)) {
        struct lex_slot *s = &t->slots[i];
        if (s->hash == hash)
            return s;
        if (s->hash == 0) {
            if (t->n_entries >= LEX_SLOTS / 2)
                return NULL;
            t->n_entries++;
            s->hash = hash;
            return s;
        }
    }
}

/* Walk "word/weight word2/weight" (weight optional); calls back per entry. */
typedef int (*entry_fn)(struct lex_table *t, const char *w, size_t n, const char *arg, size_t argn,
                        const void *ctx);

static int walk(struct lex_table *t, const char *list, entry_fn fn, const void *ctx)
{
    const char *p = list;
    while (*p != '\0') {
        while (*p == ' ')
            p++;
        if (*p == '\0')
            break;
        const char *w = p;
        while (*p != '\0' && *p != ' ' && *p != '/')
            p++;
        size_t wn = (size_t)(p - w);
        const char *arg = NULL;
        size_t argn = 0;
        if (*p == '/') {
            arg = ++p;
            while (*p != '\0' && *p != ' ')
                p++;
            argn = (size_t)(p - arg);
        }
        int rc = fn(t, w, wn, arg, argn, ctx);
        if (rc != TG_OK)
            return rc;
    }
    return TG_OK;
}

static int add_cue(struct lex_table *t, const char *w, size_t n, const char *arg, size_t argn,
                   const void *ctx)
{
    enum tg_route_kind kind = *(const enum tg_route_kind *)ctx;
    char num[16] = "1";
    if (arg != NULL && argn > 0 && argn < sizeof num) {
        memcpy(num, arg, argn);
        num[argn] = '\0';
    }
    struct lex_slot *s = slot_get(t, entry_hash(w, n));
    if (s == NULL)
        return TG_INTERNAL;
    float weight = strtof(num, NULL);
    for (uint8_t i = 0; i < s->n_cues; i++) {
        if (s->kinds[i] == (uint8_t)kind) {
            /* listed twice for one kind: keep the larger weight */
            if (weight > s->weights[i])
                s->weights[i] = weight;
            return TG_OK;
        }
    }
    if (s->n_cues == LEX_MAX_CUES)
        return TG_INTERNAL;
    s->kinds[s->n_cues] = (uint8_t)kind;
    s->weights[s->n_cues] = weight;
    s->n_cues++;
    return TG_OK;
}

static int add_lang(struct lex_table *t, const char *w, size_t n, const char *arg, size_t argn,
                    const void *ctx)
{
    unsigned lang = *(const unsigned *)ctx;
    struct lex_slot *s = slot_get(t, entry_hash(w, n));
    if (s == NULL)
        return TG_INTERNAL;
    s->langs |= (uint16_t)(1u << lang);
    return TG_OK;
}

static int add_langname(struct lex_table *t, const char *w, size_t n, const char *arg, size_t argn,
                        const void *ctx)
{
    struct lex_slot *s = slot_get(t, entry_hash(w, n));
    if (s == NULL || arg == NULL || argn != 2)
        return TG_INTERNAL;
    s->role = ROLE_LANGNAME;
    memcpy(s->langname, arg, 2);
    s->langname[2] = '\0';
    return TG_OK;
}

static int add_role(struct lex_table *t, const char *w, size_t n, const char *arg, size_t argn,
                    const void *ctx)
{
    struct lex_slot *s = slot_get(t, entry_hash(w, n));
    if (s == NULL)
        return TG_INTERNAL;
    s->role = (uint8_t) * (const enum lex_role *)ctx;
    return TG_OK;
}

int tg_router_lex_build(struct lex_table *t)
{
    memset(t, 0, sizeof *t);
    int rc = TG_OK;
    for (size_t i = 0; rc == TG_OK && i < sizeof KIND_CUES / sizeof KIND_CUES[0]; i++)
        rc = walk(t, KIND_CUES[i].cues, add_cue, &KIND_CUES[i].kind);
    for (unsigned l = 0; rc == TG_OK && l < LANG_N; l++)
        rc = walk(t, LANG_WORDS[l], add_lang, &l);
    if (rc == TG_OK)
        rc = walk(t, LANG_NAMES, add_langname, NULL);
    static const struct {
        enum lex_role role;
        const char *words;
    } ROLES[] = {
        {ROLE_UNIT_WORDS, "words word"},
        {ROLE_UNIT_TOKENS, "tokens token"},
        {ROLE_UNIT_PAGES, "pages page"},
        {ROLE_UNIT_LINES, "lines loc"},
        {ROLE_WH, "who what when where why which how whats whos is are does do can "
                  "was were did"},
    };
    for (size_t i = 0; rc == TG_OK && i < sizeof ROLES / sizeof ROLES[0]; i++)
        rc = walk(t, ROLES[i].words, add_role, &ROLES[i].role);
    return rc;
}
