#!/usr/bin/env python3
"""bench/cache: tiergate's cache-hit path at a fixed rate, with redis-benchmark on the same Redis
server in the same run as the reference.

Starts redis-server (no persistence), tg-fake-upstream and tiergate (remote tier only, cache on,
open mode) on free ports; warms one cacheable request (temperature 0); then:

  1. bench-cache: CPU cost of the key / codec and the Redis GET round trip via tg_redis
  2. redis-benchmark -t get (closed loop, -c 16) against the same server: the reference
  3. tg-loadgen (open loop, wrk2-style) at --rate req/s on the cached request through tiergate,
     --reps times; every response must carry x-tiergate-cache: hit (checked before and after)

  python3 bench/cache/run.py --build build-redis [--rate 5000] [--duration 10] [--reps 3]

Needs the targets tiergate, tg-fake-upstream, tg-loadgen, bench-cache. Prints a Markdown table
and the raw JSON.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BODY = ('{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":'
        '"Classify this ticket: my invoice for March is wrong, I was charged twice."}]}')


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cache_header(url):
    out = subprocess.run(["curl", "-s", "-D", "-", "-o", "/dev/null", url, "-H",
                          "Content-Type: application/json", "-d", BODY],
                         capture_output=True, text=True).stdout.lower()
    for line in out.splitlines():
        if line.startswith("x-tiergate-cache:"):
            return line.split(":", 1)[1].strip()
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--io-threads", type=int, default=1)
    ap.add_argument("--connections", type=int, default=32)
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    work = tempfile.mkdtemp(prefix="tg-bench-cache-")
    procs = []
    res = {"rate": a.rate, "duration_s": a.duration, "reps": a.reps, "io_threads": a.io_threads,
           "nproc": os.cpu_count(), "loadavg_before": os.getloadavg()[0]}

    def start(cmd, log):
        p = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    try:
        rport, fport, tport = free_port(), free_port(), free_port()
        start(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", work], f"{work}/redis.log")
        start([f"{build}/tests/tg-fake-upstream", "--port", str(fport), "--no-record"], f"{work}/fake.log")
        assert wait_port(rport) and wait_port(fport)
        cfg = f"""server:
  listen: 127.0.0.1:{tport}
  io_threads: {a.io_threads}
  open_mode: true
  idle_timeout_ms: 300000
  log_level: warn
redis:
  url: redis://127.0.0.1:{rport}/0
  command_timeout_ms: 1000
local:
  enabled: false
providers:
  fake:
    kind: openai
    base_url: http://127.0.0.1:{fport}/v1
    api_key: sk-bench
    retries: 0
models:
  - {{name: phi-3.5-mini, tier: local, target: engine}}
  - {{name: gpt-4o-mini, tier: remote, provider: fake, input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.60}}
policy: {ROOT}/policies/balanced.yaml
cache:
  enabled: true
  ttl_s: 3600
metrics:
  reference_model: gpt-4o-mini
"""
        with open(f"{work}/routes.yaml", "w") as f:
            f.write(cfg)
        tg = start([f"{build}/gateway/tiergate", "--config", f"{work}/routes.yaml"], f"{work}/tiergate.log")
        assert wait_port(tport), "tiergate did not start"
        url = f"http://127.0.0.1:{tport}/v1/chat/completions"
        time.sleep(0.5)
        first = cache_header(url)
        time.sleep(0.2)
        second = cache_header(url)
        assert second == "hit", f"cache not warm: {first} then {second}"
        res["warm"] = [first, second]

        mb = subprocess.run([f"{build}/bench/cache/bench-cache", "--iters", "100000", "--redis-port",
                             str(rport)], capture_output=True, text=True, timeout=300)
        res["micro"] = json.loads(mb.stdout.strip().splitlines()[-1])

        rb = subprocess.run(["redis-benchmark", "-p", str(rport), "-t", "get", "-n", "200000", "-c", "16",
                             "-d", "600", "--csv"], capture_output=True, text=True, timeout=300)
        lines = [l for l in rb.stdout.splitlines() if l.startswith('"GET"')]
        f = [x.strip('"') for x in lines[-1].split(",")]
        res["redis_benchmark_get"] = {"rps": float(f[1]), "avg_ms": float(f[2]), "p50_ms": float(f[4]),
                                      "p95_ms": float(f[5]), "p99_ms": float(f[6]), "max_ms": float(f[7])}

        runs = []
        for _ in range(a.reps):
            cmd = [f"{build}/bench/gateway/tg-loadgen", "--url", url, "--rate", str(a.rate),
                   "--duration", str(a.duration), "--warmup", "1", "--connections", str(a.connections),
                   "--body", BODY]
            c0 = cpu_s(tg.pid)
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.duration + 60)
            run = json.loads(out.stdout.strip().splitlines()[-1])
            # tiergate's CPU (user + system) per request, warm-up requests included
            run["tiergate_cpu_us_per_req"] = (cpu_s(tg.pid) - c0) * 1e6 / max(1.0, run["ok"] * (a.duration + 1) / a.duration)
            runs.append(run)
        res["loadgen"] = runs
        res["still_hit"] = cache_header(url)
        res["loadavg_after"] = os.getloadavg()[0]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)

    def med(key, sub, pct):
        return statistics.median(r[key][pct] if sub is None else r[key][pct] for r in res["loadgen"])

    rb = res["redis_benchmark_get"]
    m = res["micro"]
    print(json.dumps(res))
    print()
    print(f"| measurement (median of {a.reps} runs, {a.duration:g} s each) | p50 | p99 | achieved rate |")
    print("|---|---|---|---|")
    print(f"| tiergate cache hit @ {a.rate}/s, service time | {med('service_us', 1, 'p50'):.0f} µs | "
          f"{med('service_us', 1, 'p99'):.0f} µs | "
          f"{statistics.median(r['achieved_rate'] for r in res['loadgen']):.0f}/s |")
    print(f"| tiergate cache hit @ {a.rate}/s, corrected (incl. queueing) | {med('corrected_us', 1, 'p50'):.0f} µs | "
          f"{med('corrected_us', 1, 'p99'):.0f} µs | |")
    print(f"| redis-benchmark -t get -c 16 (same server, same run) | {rb['p50_ms']*1000:.0f} µs | "
          f"{rb['p99_ms']*1000:.0f} µs | {rb['rps']:.0f}/s |")
    if "get_roundtrip_us" in m:
        g = m["get_roundtrip_us"]
        print(f"| tg_redis GET of the entry, 1 in flight (bench-cache) | {g['p50']:.0f} µs | {g['p99']:.0f} µs | |")
    print(f"| tiergate CPU per cache hit (user + system) | "
          f"{statistics.median(r['tiergate_cpu_us_per_req'] for r in res['loadgen']):.0f} µs | | |")
    print(f"\nCPU per hit, in process: key {m['key_ns']/1000:.1f} µs (1 KB body), decode "
          f"{m['decode_json_ns']/1000:.2f} µs (1 KB JSON entry), {m['decode_stream40_ns']/1000:.1f} µs "
          f"(40-chunk stream); load average {res['loadavg_before']:.1f} → {res['loadavg_after']:.1f} on "
          f"{res['nproc']} CPUs")


if __name__ == "__main__":
    main()
