# Fuzz targets (libFuzzer) for parsers of untrusted input, and their corpus replays.
#
#   default suite: fuzz_replay_<t> feeds every file of tests/fuzz/corpus/<t>/ once through the
#                  target's entry point (no libFuzzer), so the corpus is a regression test;
#   TG_FUZZ=ON:    also builds fuzz_<t> with clang's -fsanitize=fuzzer,address, e.g.
#     CC=clang CXX=clang++ cmake -S . -B build-fuzz -DTG_FUZZ=ON
#     cmake --build build-fuzz --target fuzz_schema
#     build-fuzz/tests/fuzz_schema -max_total_time=60 tests/fuzz/corpus/schema
#   (new interesting inputs land in the corpus directory; commit the small ones).
option(TG_FUZZ "Build libFuzzer targets (needs clang)" OFF)

set(TG_FUZZ_DIR ${TG_TEST_DIR}/fuzz)
set(TG_FUZZ_TARGETS schema yaml labels)

foreach(t ${TG_FUZZ_TARGETS})
  add_executable(fuzz_replay_${t} ${TG_FUZZ_DIR}/fuzz_${t}.c ${TG_FUZZ_DIR}/replay.c)
  target_link_libraries(fuzz_replay_${t} PRIVATE tg_grammar tg_common)
  tg_target_defaults(fuzz_replay_${t})
  add_test(NAME fuzz_replay_${t} COMMAND fuzz_replay_${t} ${TG_FUZZ_DIR}/corpus/${t})
  set_tests_properties(fuzz_replay_${t} PROPERTIES LABELS "unit;fuzz" TIMEOUT 120)
endforeach()

if(TG_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "TG_FUZZ=ON needs clang (configure with CC=clang CXX=clang++)")
  endif()
  # The libraries under test are compiled again with coverage instrumentation: the regular
  # tg_common/tg_grammar are built without it and libFuzzer would fly blind inside them.
  file(GLOB fuzz_lib_src CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/common/*.c
       ${CMAKE_SOURCE_DIR}/local-engine/grammar/*.c)
  add_library(tg_fuzz_libs STATIC ${fuzz_lib_src})
  target_include_directories(tg_fuzz_libs PUBLIC ${CMAKE_SOURCE_DIR}/common/include
                             ${CMAKE_SOURCE_DIR}/local-engine/include)
  target_link_libraries(tg_fuzz_libs PUBLIC PkgConfig::JANSSON PkgConfig::YAML Threads::Threads m)
  target_compile_options(tg_fuzz_libs PRIVATE -fsanitize=fuzzer-no-link,address,undefined
                         -fno-omit-frame-pointer)
  tg_target_defaults(tg_fuzz_libs)
  foreach(t ${TG_FUZZ_TARGETS})
    add_executable(fuzz_${t} ${TG_FUZZ_DIR}/fuzz_${t}.c)
    target_link_libraries(fuzz_${t} PRIVATE tg_fuzz_libs)
    target_compile_options(fuzz_${t} PRIVATE -fsanitize=fuzzer,address,undefined
                           -fno-omit-frame-pointer)
    target_link_options(fuzz_${t} PRIVATE -fsanitize=fuzzer,address,undefined)
    tg_target_defaults(fuzz_${t})
  endforeach()
endif()
