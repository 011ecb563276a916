#!/usr/bin/env bash
# Start a local redis-server (daemonized, data under build/redis) unless one already answers at
# the URL the config uses ($TIERGATE_REDIS_URL, default redis://127.0.0.1:6379/0).
set -euo pipefail
cd "$(dirname "$0")/.."
url=${TIERGATE_REDIS_URL:-redis://127.0.0.1:6379/0}
hostport=${url#redis://}; hostport=${hostport%%/*}
host=${hostport%%:*}; port=${hostport##*:}
if redis-cli -h "$host" -p "$port" ping >/dev/null 2>&1; then exit 0; fi
if [ "$host" != 127.0.0.1 ] && [ "$host" != localhost ]; then
    echo "tiergate: Redis at $host:$port does not answer (not starting one for a remote host)" >&2
    exit 0
fi
mkdir -p build/redis
redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --dir "$PWD/build/redis" \
    --logfile "$PWD/build/redis/redis.log" --save "" --appendonly yes >/dev/null
for _ in $(seq 50); do
    redis-cli -h "$host" -p "$port" ping >/dev/null 2>&1 && { echo "tiergate: started redis-server on $host:$port" >&2; exit 0; }
    sleep 0.1
done
echo "tiergate: redis-server did not start (see build/redis/redis.log)" >&2
exit 1
