#!/usr/bin/env bash
# Opt-in n8n test (`cmake --build BUILD --target test-n8n`): installs n8n 1.123.x from npm into
# BUILD/n8n, starts tiergate (tiny model, open mode, the fake upstream as its remote tier) on a free
# port behind tests/ecosystem/n8n/record-proxy.mjs, imports the credentials and the deploy/n8n
# workflows with `n8n import:credentials` / `n8n import:workflow`, runs each with
# `n8n execute --id`, and checks the results. The requests n8n sent are kept in
# BUILD/n8n/requests.jsonl; with TG_N8N_RECORD=1 they replace tests/ecosystem/n8n/requests.jsonl,
# the fixture the default suite replays (test_n8n_replay).
#
#   run-n8n.sh SOURCE_DIR BUILD_DIR TIERGATE FAKE_UPSTREAM TINY_MODEL
set -euo pipefail
SRC=$1 BUILD=$2 TIERGATE=$3 FAKE=$4 MODEL=$5
N8N_VERSION=${TG_N8N_VERSION:-1.123.81}
WORK=$BUILD/n8n
HERE=$SRC/tests/ecosystem/n8n
mkdir -p "$WORK"
cd "$WORK"

log() { printf 'test-n8n: %s\n' "$*" >&2; }
free_port() { node -e "const s=require('net').createServer();s.listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"; }

# --- install ---------------------------------------------------------------------------------
if [ ! -x node_modules/n8n/bin/n8n ] || [ ! -e node_modules/sqlite3/build/Release/node_sqlite3.node ] || ! grep -q "\"version\": \"$N8N_VERSION\"" node_modules/n8n/package.json; then
  log "installing n8n@$N8N_VERSION (npm; several minutes)"
  # xlsx: n8n-nodes-base pins a tarball on cdn.sheetjs.com; the registry's xlsx is used instead so
  # only the npm registry is needed. --ignore-scripts: isolated-vm@6 (n8n's optional expression
  # sandbox) needs Node 22 to compile; n8n 1.123 runs on Node 20 without it. sqlite3 is built next.
  cat > package.json <<JSON
{"name":"tg-n8n-scratch","private":true,"overrides":{"xlsx":"0.18.5"}}
JSON
  if ! out=$(npm install --no-audit --no-fund --omit=dev --ignore-scripts "n8n@$N8N_VERSION" 2>&1); then
    if grep -qE 'ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ETIMEDOUT|ENETUNREACH' <<<"$out"; then
      log "SKIP: npm cannot reach its registry"; echo "$out" | tail -5 >&2; exit 0
    fi
    echo "$out" | tail -30 >&2; exit 1
  fi
  log "building sqlite3 (native)"
  npm rebuild sqlite3 >/dev/null 2>&1 || npm rebuild sqlite3
fi
N8N=$WORK/node_modules/n8n/bin/n8n

# --- tiergate + fake upstream + recording proxy ----------------------------------------------
FAKE_PORT=$(free_port); TG_PORT=$(free_port); PROXY_PORT=$(free_port)
PIDS=()
# Own sessions: n8n signals its whole process group when a command ends, which must not reach these.
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
setsid "$FAKE" --port "$FAKE_PORT" >"$WORK/fake.log" 2>&1 & PIDS+=($!)
cat >"$WORK/routes.yaml" <<YAML
server:
  listen: 127.0.0.1:$TG_PORT
  open_mode: true
  io_threads: 2
redis:
  enabled: false
local:
  model: $MODEL
  slots: 2
  context: 4096
  price_per_mtok_usd: 0.02
providers:
  fake:
    kind: openai
    base_url: http://127.0.0.1:$FAKE_PORT/v1
    api_key: sk-fake
models:
  - {name: phi-3.5-mini, tier: local, target: engine, fallbacks: [gpt-fake]}
  - {name: gpt-fake, tier: remote, provider: fake, input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.6}
aliases:
  auto: {local: phi-3.5-mini, remote: gpt-fake}
cache:
  enabled: false
metrics:
  reference_model: gpt-fake
YAML
setsid "$TIERGATE" --config "$WORK/routes.yaml" >"$WORK/tiergate.log" 2>&1 & PIDS+=($!)
rm -f "$WORK/requests.jsonl"
setsid node "$HERE/record-proxy.mjs" "$PROXY_PORT" "http://127.0.0.1:$TG_PORT" "$WORK/requests.jsonl" >"$WORK/proxy.log" 2>&1 & PIDS+=($!)
for i in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$TG_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -sf "http://127.0.0.1:$TG_PORT/readyz" >/dev/null || { log "tiergate did not become ready"; cat "$WORK/tiergate.log" >&2; exit 1; }
BASE=http://127.0.0.1:$PROXY_PORT

# --- n8n: import and execute ----------------------------------------------------------------
export N8N_USER_FOLDER=$WORK/home N8N_DIAGNOSTICS_ENABLED=false N8N_VERSION_NOTIFICATIONS_ENABLED=false \
  N8N_ENCRYPTION_KEY=tiergate-n8n-test N8N_RUNNERS_ENABLED=false N8N_LOG_LEVEL=info \
  N8N_ENFORCE_SETTINGS_FILE_PERMISSIONS=false DB_SQLITE_POOL_SIZE=0 \
  N8N_EXPRESSION_ENGINE=legacy  # "vm" needs isolated-vm, which needs Node 22 (see the install step)
rm -rf "$WORK/home"; mkdir -p "$WORK/home" "$WORK/import"
sed -e "s#http://localhost:8080/v1#$BASE/v1#" -e "s#REPLACE_WITH_YOUR_TIERGATE_KEY#tg-n8n-test-key#g" \
  "$SRC/deploy/n8n/credentials.example.json" >"$WORK/import/credentials.json"
"$N8N" import:credentials --input="$WORK/import/credentials.json"
status=0
for wf in tiergate-classify tiergate-extract tiergate-chat-model; do
  sed -e "s#http://localhost:8080#$BASE#g" "$SRC/deploy/n8n/$wf.json" >"$WORK/import/$wf.json"
  "$N8N" import:workflow --input="$WORK/import/$wf.json"
  id=$(node -e "console.log(JSON.parse(require('fs').readFileSync('$WORK/import/$wf.json','utf8')).id)")
  log "n8n execute --id $id ($wf)"
  if "$N8N" execute --id "$id" --rawOutput >"$WORK/$wf.out" 2>"$WORK/$wf.err"; then
    if node "$HERE/check-result.mjs" "$wf" "$WORK/$wf.out"; then
      log "ok   $wf"
    else
      log "FAIL $wf (result above)"; status=1
    fi
  else
    log "FAIL $wf: n8n execute failed"; tail -n 40 "$WORK/$wf.out" "$WORK/$wf.err" >&2; status=1
  fi
done
log "requests n8n sent: $WORK/requests.jsonl ($(wc -l <"$WORK/requests.jsonl" 2>/dev/null || echo 0) lines)"
if [ "$status" = 0 ] && [ "${TG_N8N_RECORD:-0}" = 1 ]; then
  cp "$WORK/requests.jsonl" "$HERE/requests.jsonl"
  log "fixture updated: $HERE/requests.jsonl"
fi
exit $status
