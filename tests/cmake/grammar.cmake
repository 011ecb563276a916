# grammar: JSON Schema subset (compile/validate/GBNF) and label grammars (tg_grammar).
tg_add_unit_test(test_schema SOURCES ${TG_TEST_DIR}/grammar/test_schema.c LIBS tg_grammar)
tg_add_unit_test(test_labels SOURCES ${TG_TEST_DIR}/grammar/test_labels.c LIBS tg_grammar)
# Only this test links llama.cpp (tg_grammar itself does not): it checks that every generated
# grammar parses in llama.cpp and that sampling under it from the tiny model yields valid JSON.
tg_add_unit_test(test_gbnf SOURCES ${TG_TEST_DIR}/grammar/test_gbnf.c LIBS tg_grammar tg_llama
    LABELS llama)
add_dependencies(test_gbnf model-tiny)
# 50 generations x 8 schemas + labels: ~40 s of CPU, several minutes of wall time when the
# machine is shared.
set_tests_properties(test_gbnf PROPERTIES TIMEOUT 900)
