# enginenet: the engine's nng boundary (local-engine/net_*.c) and `tiergate engine`
# (gateway/cli_engine.c).
if(TARGET tg_engine)
  # Codec: pure JSON round trips and rejections, table-driven.
  tg_add_unit_test(test_enginenet_codec SOURCES ${TG_TEST_DIR}/enginenet/test_net_codec.c
      LIBS tg_engine tg_common PkgConfig::JANSSON m)
  if(TARGET test_enginenet_codec)
    target_include_directories(test_enginenet_codec PRIVATE ${CMAKE_SOURCE_DIR}/local-engine)
  endif()

  # A standalone engine worker built from the real CLI code (gateway/cli_engine.c), so the
  # tests do not depend on the rest of the gateway being buildable.
  add_executable(tg-test-engine-worker ${TG_TEST_DIR}/enginenet/worker_main.c
      ${CMAKE_SOURCE_DIR}/gateway/cli_engine.c)
  target_include_directories(tg-test-engine-worker PRIVATE ${CMAKE_SOURCE_DIR}/gateway)
  target_link_libraries(tg-test-engine-worker PRIVATE tg_engine tg_common Threads::Threads)
  tg_target_defaults(tg-test-engine-worker)

  tg_add_unit_test(test_enginenet SOURCES ${TG_TEST_DIR}/enginenet/test_engine_net.c
      LIBS tg_engine tg_common tg_testlib tg_nng Threads::Threads m LABELS llama)
  if(TARGET test_enginenet)
    target_compile_definitions(test_enginenet PRIVATE
        TG_ENGINE_WORKER_BIN="$<TARGET_FILE:tg-test-engine-worker>")
    add_dependencies(test_enginenet model-tiny tg-test-engine-worker)
  endif()

  # End to end: the real tiergate gateway with `tiergate engine` workers over ipc://.
  if(TARGET tiergate)
    tg_add_unit_test(test_enginenet_gateway SOURCES ${TG_TEST_DIR}/enginenet/test_enginenet_gateway.c
        LIBS tg_testlib LABELS "llama;e2e")
    if(TARGET test_enginenet_gateway)
      target_compile_definitions(test_enginenet_gateway PRIVATE
          TG_TIERGATE_BIN="$<TARGET_FILE:tiergate>")
      add_dependencies(test_enginenet_gateway tiergate model-tiny)
    endif()
  endif()
endif()

# Fuzz target for the wire codec (the parser of everything a peer sends); its corpus replays in
# the default suite. With TG_FUZZ=ON (clang) also the libFuzzer binary:
#   build-fuzz/tests/fuzz_net_codec -max_total_time=60 tests/enginenet/corpus/net
add_executable(fuzz_replay_net_codec ${TG_TEST_DIR}/enginenet/fuzz_net_codec.c
  ${CMAKE_SOURCE_DIR}/local-engine/net_codec.c ${TG_TEST_DIR}/fuzz/replay.c)
target_include_directories(fuzz_replay_net_codec PRIVATE ${CMAKE_SOURCE_DIR}/local-engine
  ${CMAKE_SOURCE_DIR}/local-engine/include)
target_link_libraries(fuzz_replay_net_codec PRIVATE tg_common PkgConfig::JANSSON m)
tg_target_defaults(fuzz_replay_net_codec)
add_test(NAME fuzz_replay_net_codec COMMAND fuzz_replay_net_codec
  ${TG_TEST_DIR}/enginenet/corpus/net)
set_tests_properties(fuzz_replay_net_codec PROPERTIES LABELS "unit;fuzz;enginenet" TIMEOUT 120)
if(TG_FUZZ)
  add_executable(fuzz_net_codec ${TG_TEST_DIR}/enginenet/fuzz_net_codec.c
    ${CMAKE_SOURCE_DIR}/local-engine/net_codec.c)
  target_include_directories(fuzz_net_codec PRIVATE ${CMAKE_SOURCE_DIR}/local-engine
    ${CMAKE_SOURCE_DIR}/local-engine/include)
  target_link_libraries(fuzz_net_codec PRIVATE tg_common PkgConfig::JANSSON m)
  target_compile_options(fuzz_net_codec PRIVATE -fsanitize=fuzzer,address,undefined
                         -fno-omit-frame-pointer)
  target_link_options(fuzz_net_codec PRIVATE -fsanitize=fuzzer,address,undefined)
  tg_target_defaults(fuzz_net_codec)
endif()
