#!/usr/bin/env bash
# README command 1: install what is missing, build, generate the tiny model, make sure a local
# Redis answers, and run tiergate with routes.yaml (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
deploy/build.sh build
deploy/ensure-redis.sh
exec build/gateway/tiergate --config "${TIERGATE_CONFIG:-routes.yaml}" "$@"
