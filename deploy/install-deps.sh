#!/usr/bin/env bash
# Install what tiergate needs to build, test and run on Debian 12 / Ubuntu 22.04+.
# Idempotent and quiet when nothing is missing. Run as root (or with sudo available).
#   deploy/install-deps.sh            build + run + test dependencies
#   TG_DEPS_EXTRA="chromium" deploy/install-deps.sh   also install optional extras
set -euo pipefail
pkgs=(build-essential cmake pkg-config git ca-certificates curl openssl
      libevent-dev libcurl4-openssl-dev libnng-dev libhiredis-dev libssl-dev
      libjansson-dev libyaml-dev libcmocka-dev redis-server redis-tools
      libmimalloc-dev        # tiergate's malloc (gateway/CMakeLists.txt TG_ALLOCATOR): ~10 % less CPU per proxied request
      libyajl-dev            # provider responses checked without a jansson tree (gateway/upstream/openai.c)
      json-schema-test-suite
      valgrind               # test_security_valgrind: leak-free shutdown under memcheck
      chromium prometheus)   # chromium: dashboard test (headless); prometheus: promtool checks
command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
command -v npm  >/dev/null 2>&1 || pkgs+=(npm)
# shellcheck disable=SC2206
[ -n "${TG_DEPS_EXTRA:-}" ] && pkgs+=(${TG_DEPS_EXTRA})

missing=()
for p in "${pkgs[@]}"; do
    st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$st" = installed ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "tiergate: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq >/dev/null
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# llama.cpp, pinned, from the npm registry (prints nothing when cached)
"$(dirname "$0")/fetch-llama.sh"
