#!/usr/bin/env bash
# Configure and build tiergate (and the tiny generated model) into BUILD_DIR.
#   deploy/build.sh [BUILD_DIR] [extra cmake args...]     default BUILD_DIR: build
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build}
shift || true
jobs=$(nproc 2>/dev/null || echo 2)
if [ ! -f "$dir/CMakeCache.txt" ]; then
    cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
elif [ $# -gt 0 ]; then
    cmake -S . -B "$dir" "$@" >/dev/null
fi
cmake --build "$dir" -j"$jobs" 2>&1 | grep -Ev '^\[ *[0-9]+%\]|^-- |Consolidate compiler generated' || true
test "${PIPESTATUS[0]}" -eq 0
