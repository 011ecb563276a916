# Deployment files: parse them and check they agree (ports, paths, probes, names, embedded config).
tg_add_unit_test(test_deploy SOURCES ${TG_TEST_DIR}/deploy/test_deploy.c LIBS tg_config tg_common tg_testlib)
