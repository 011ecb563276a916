#!/bin/sh
# bench/gateway/install-refs.sh: the reference proxies bench/gateway/run.py can measure next to
# tiergate (--refs nginx,haproxy), and the Portkey gateway it compares against. Benchmark-only:
# CI and deploy/install-deps.sh do not need any of this.
#
#   sudo sh bench/gateway/install-refs.sh          # nginx-light + haproxy (Debian 12), Portkey (npm)
#
# run.py starts its own nginx/haproxy as the current user on free ports; the system services the
# packages install are stopped again here (nothing should listen on :80 or steal CPU in a run).
set -eu

PORTKEY_DIR=${PORTKEY_DIR:-/tmp/upstream-portkey}
PORTKEY_VERSION=${PORTKEY_VERSION:-1.15.2}

SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get install -y --no-install-recommends nginx-light haproxy
for svc in nginx haproxy; do
    $SUDO service "$svc" stop >/dev/null 2>&1 || true
done

# Portkey: npm into a scratch directory (run.py's --portkey default points there)
if [ ! -f "$PORTKEY_DIR/node_modules/@portkey-ai/gateway/build/start-server.js" ] && command -v npm >/dev/null; then
    mkdir -p "$PORTKEY_DIR"
    (cd "$PORTKEY_DIR" && { [ -f package.json ] || npm init -y >/dev/null; } &&
        npm install --no-audit --no-fund "@portkey-ai/gateway@$PORTKEY_VERSION")
fi

nginx -v
haproxy -v | head -1
