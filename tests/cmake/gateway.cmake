# gateway: the real tiergate binary against the tiny generated model and the fake upstream.
add_library(tg_gw_testenv STATIC ${TG_TEST_DIR}/gateway/gw_testenv.c)
target_link_libraries(tg_gw_testenv PUBLIC tg_testlib)
target_include_directories(tg_gw_testenv PUBLIC ${TG_TEST_DIR}/gateway ${TG_TEST_DIR}/lib)
target_compile_definitions(tg_gw_testenv PRIVATE TG_BINARY_DIR="${CMAKE_BINARY_DIR}"
    TG_TINY_MODEL="${TG_TINY_MODEL}")
if(TARGET tg-fake-upstream)
  target_compile_definitions(tg_gw_testenv PRIVATE TG_FAKE_UPSTREAM="$<TARGET_FILE:tg-fake-upstream>")
endif()
tg_target_defaults(tg_gw_testenv)

tg_add_gateway_test(test_gateway SOURCES ${TG_TEST_DIR}/gateway/test_gateway.c
  LIBS tg_grammar PkgConfig::JANSSON)

# Conformance with the official openai@6 npm client (tests/conformance).
tg_add_gateway_test(test_conformance SOURCES ${TG_TEST_DIR}/conformance/test_conformance.c)

# Data-driven proxy cases: tests/gateway/cases/*.json
tg_add_gateway_test(test_gateway_cases SOURCES ${TG_TEST_DIR}/gateway/test_gateway_cases.c
  LIBS PkgConfig::JANSSON)

# Random-mutation HTTP fuzzing of the JSON endpoints (python3, fixed seed).
tg_add_gateway_test(test_gateway_fuzz SOURCES ${TG_TEST_DIR}/gateway/test_gateway_fuzz.c)
