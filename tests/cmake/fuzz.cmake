# Fuzz targets (libFuzzer) for parsers of untrusted input, and their corpus replays.
#
#   default suite: fuzz_replay_<t> feeds every file of tests/fuzz/corpus/<t>/ once through the
#                  target's entry point (any compiler, no libFuzzer), so each corpus is a
#                  regression test (and under TG_SANITIZE=ON an ASan/UBSan run);
#   TG_FUZZ=ON:    also builds fuzz_<t> with clang's libFuzzer. The top-level CMakeLists then
#                  compiles all of our code with coverage instrumentation and ASan+UBSan:
#     CC=clang CXX=clang++ cmake -S . -B build-fuzz -DTG_FUZZ=ON
#     cmake --build build-fuzz --target fuzz_http
#     build-fuzz/tests/fuzz_http -dict=tests/fuzz/http.dict -max_total_time=600 NEW tests/fuzz/corpus/http
#   then commit only what adds edges, minimised (tests/fuzz/RESULTS.md has the runs and figures):
#     cp -r tests/fuzz/corpus/http FRESH && fuzz_http -use_counters=0 -merge=1 FRESH NEW
#   The other areas' targets (fuzz-router, fuzz-upstream, fuzz_cache, fuzz_net_codec,
#   fuzz_usage_query) live next to their code and are built by the same TG_FUZZ=ON build.
#
# tg_fuzz_target(<t> LIBS ... [SOURCES extra.c ...]): tests/fuzz/fuzz_<t>.c is the entry point.
set(TG_FUZZ_DIR ${TG_TEST_DIR}/fuzz)

function(tg_fuzz_target t)
  cmake_parse_arguments(F "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(fuzz_replay_${t} ${TG_FUZZ_DIR}/fuzz_${t}.c ${F_SOURCES} ${TG_FUZZ_DIR}/replay.c)
  target_link_libraries(fuzz_replay_${t} PRIVATE ${F_LIBS})
  tg_target_defaults(fuzz_replay_${t})
  add_test(NAME fuzz_replay_${t} COMMAND fuzz_replay_${t} ${TG_FUZZ_DIR}/corpus/${t})
  set_tests_properties(fuzz_replay_${t} PROPERTIES LABELS "unit;fuzz" TIMEOUT 120)
  if(TG_FUZZ)
    add_executable(fuzz_${t} ${TG_FUZZ_DIR}/fuzz_${t}.c ${F_SOURCES})
    target_compile_definitions(fuzz_${t} PRIVATE TG_LIBFUZZER)
    target_link_libraries(fuzz_${t} PRIVATE ${F_LIBS})
    target_compile_options(fuzz_${t} PRIVATE -fsanitize=fuzzer)
    target_link_options(fuzz_${t} PRIVATE -fsanitize=fuzzer)
    tg_target_defaults(fuzz_${t})
  endif()
endfunction()

# JSON Schema -> grammar, YAML reader, classify labels -> grammar
tg_fuzz_target(schema LIBS tg_grammar tg_common)
tg_fuzz_target(yaml LIBS tg_grammar tg_common)
tg_fuzz_target(labels LIBS tg_grammar tg_common)
# upstream SSE parser + stream events; Anthropic translation both ways
tg_fuzz_target(sse LIBS tg_gw_upstream)
tg_fuzz_target(anthropic LIBS tg_gw_upstream)
# routes.yaml (gateway config loader) and routing policies (router)
tg_fuzz_target(config LIBS tg_config tg_router tg_common)
# the gateway in-process (fuzz_gw.c): raw HTTP into evhttp + our handlers, and request JSON ->
# canonical request through the pipeline
tg_fuzz_target(http SOURCES ${TG_FUZZ_DIR}/fuzz_gw.c LIBS tg_gateway)
tg_fuzz_target(request SOURCES ${TG_FUZZ_DIR}/fuzz_gw.c LIBS tg_gateway)
