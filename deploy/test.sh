#!/usr/bin/env bash
# README command 2: the same set-up as deploy/run.sh, then the whole test suite under ctest.
#   deploy/test.sh              normal build in build/
#   deploy/test.sh --sanitize   ASan+UBSan build in build-asan/ (TG_SANITIZE=ON)
# Integration tests start their own redis-server on free loopback ports and stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=build; args=()
if [ "${1:-}" = "--sanitize" ]; then dir=build-asan; args=(-DTG_SANITIZE=ON); shift; fi
deploy/install-deps.sh
deploy/build.sh "$dir" "${args[@]}"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
cd "$dir"
ctest --output-on-failure -j"$(nproc 2>/dev/null || echo 2)" "$@"
