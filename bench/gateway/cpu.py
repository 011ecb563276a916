#!/usr/bin/env python3
"""bench/gateway/cpu.py: tiergate's CPU and syscalls per proxied request (remote tier).

Wall-clock latency on a shared, loaded VM moves 2-5x between identical runs; CPU time per request
does not (much). This starts the same fake upstream + tiergate setup as run.py (1 I/O thread, open
mode, no model, no Redis, cache off, pinned remote model), drives it closed-loop with wrk, and
reports utime+stime (from /proc/PID/stat) of tiergate and of the fake divided by the requests wrk
completed. With --syscalls one more run is counted with `perf stat` on the syscall tracepoints
(kernel counters, no slow-down as with strace) and syscalls per request are printed. After the
measured runs it prints the p50/p99 of tiergate's in-process overhead per proxied request
(tiergate_gateway_overhead_seconds, from /metrics scraped before and after). --perf FILE records
one more run with `perf record --call-graph dwarf`; --env K=V (e.g. LD_PRELOAD=...) applies to
tiergate only; --io-threads sets server.io_threads.

  python3 bench/gateway/cpu.py --build build [--seconds 5] [--reps 3] [--conns 32] [--rate 5000] [--syscalls]
"""
import argparse
import os
import json
import re
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as gwrun  # noqa: E402  (free_port, wait_port, cpu_s, overhead histogram)


def config(tport, fport, io_threads=1):
    return f"""server:
  listen: 127.0.0.1:{tport}
  io_threads: {io_threads}
  open_mode: true
  idle_timeout_ms: 300000
  log_level: warn
redis:
  enabled: false
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
policy: {gwrun.ROOT}/policies/balanced.yaml
cache:
  enabled: false
metrics:
  reference_model: gpt-4o-mini
"""


def wrk_requests(url, seconds, conns):
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "-s", f"{HERE}/post.lua", url],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    m = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        sys.exit(f"wrk saw errors:\n{out}")
    return int(m.group(1)) if m else 0


def loadgen_requests(build, url, rate, seconds, conns):
    cmd = [f"{build}/bench/gateway/tg-loadgen", "--url", url, "--rate", str(rate), "--duration", str(seconds),
           "--warmup", "0", "--connections", str(conns), "--body", gwrun.BODY,
           "--header", "Authorization: Bearer sk-bench"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return r["sent"]


# tiergate_gateway_overhead_seconds scrape and quantile: run.py's (one copy)
overhead_buckets = gwrun.overhead_buckets
bucket_quantile = gwrun.bucket_quantile


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(gwrun.ROOT, "build"))
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--rate", type=int, default=0,
                    help="open loop at this rate with tg-loadgen (as run.py's 5 000 req/s phase) instead of wrk")
    ap.add_argument("--syscalls", action="store_true",
                    help="one more run with tiergate's syscalls per request counted (perf stat)")
    ap.add_argument("--io-threads", type=int, default=1, help="tiergate server.io_threads (run.py uses 1)")
    ap.add_argument("--env", action="append", default=[], metavar="K=V",
                    help="extra environment for tiergate only (e.g. LD_PRELOAD=... to try an allocator)")
    ap.add_argument("--perf", metavar="FILE",
                    help="one more run under `perf record --call-graph dwarf` on tiergate, written to FILE (perf report -i FILE)")
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    work = tempfile.mkdtemp(prefix="tg-bench-cpu-")
    procs = []
    try:
        fport, tport = gwrun.free_port(), gwrun.free_port()
        fake = subprocess.Popen([f"{build}/tests/tg-fake-upstream", "--port", str(fport), "--no-record"],
                                stdout=open(f"{work}/fake.log", "w"), stderr=subprocess.STDOUT)
        procs.append(fake)
        with open(f"{work}/routes.yaml", "w") as f:
            f.write(config(tport, fport, a.io_threads))
        env = dict(os.environ)
        env.update(kv.split("=", 1) for kv in a.env)
        tg = subprocess.Popen([f"{build}/gateway/tiergate", "--config", f"{work}/routes.yaml"], env=env,
                              stdout=open(f"{work}/tiergate.log", "w"), stderr=subprocess.STDOUT)
        procs.append(tg)
        assert gwrun.wait_port(fport) and gwrun.wait_port(tport), "fake upstream or tiergate did not start"
        url = f"http://127.0.0.1:{tport}/v1/chat/completions"
        if a.rate > 0:
            drive = lambda secs: loadgen_requests(build, url, a.rate, secs, a.conns)  # noqa: E731
            how = f"tg-loadgen --rate {a.rate} --connections {a.conns}"
        else:
            drive = lambda secs: wrk_requests(url, secs, a.conns)  # noqa: E731
            how = f"wrk -t1 -c{a.conns}"
        drive(1)  # warm: connections to the fake, caches
        rows = []
        ob = overhead_buckets(tport)
        for _ in range(a.reps):
            t0, f0 = gwrun.cpu_s(tg.pid), gwrun.cpu_s(fake.pid)
            n = drive(a.seconds)
            t1, f1 = gwrun.cpu_s(tg.pid), gwrun.cpu_s(fake.pid)
            rows.append((n / a.seconds, (t1 - t0) * 1e6 / n, (f1 - f0) * 1e6 / n))
        print(f"load average {open('/proc/loadavg').read().split()[0]}; {how} for {a.seconds}s, {a.reps} runs")
        for rps, t, f in rows:
            print(f"  {rps:9.0f} req/s   tiergate {t:6.1f} us CPU/req   fake {f:5.1f} us CPU/req")
        ts = sorted(r[1] for r in rows)
        print(f"median tiergate CPU/req {ts[len(ts) // 2]:.1f} us")
        oa = overhead_buckets(tport)
        if oa and ob:
            n = oa[-1][1] - ob[-1][1]
            p50, p99 = bucket_quantile(0.5, ob, oa), bucket_quantile(0.99, ob, oa)
            if p50 is not None:
                print(f"in-process overhead (tiergate_gateway_overhead_seconds, {n} requests): "
                      f"p50 {p50 * 1e6:.1f} us  p99 {p99 * 1e6:.1f} us")
        else:
            print("in-process overhead: this tiergate has no tiergate_gateway_overhead_seconds")
        if a.syscalls:
            # syscall tracepoints counted in the kernel (perf stat): no slow-down, unlike strace
            names = ["epoll_ctl", "epoll_wait", "poll", "ioctl", "readv", "recvfrom", "writev", "sendto",
                     "read", "write", "connect", "close"]
            ev = ",".join(["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{x}" for x in names])
            ps = subprocess.Popen(["perf", "stat", "-x", ";", "-e", ev, "-p", str(tg.pid), "-o", f"{work}/perf.txt"],
                                  stderr=subprocess.DEVNULL)
            time.sleep(0.3)
            n = drive(a.seconds)
            ps.send_signal(signal.SIGINT)
            ps.wait()
            print(f"tiergate syscalls per request ({n} requests, perf stat):")
            for line in open(f"{work}/perf.txt"):
                t = line.strip().split(";")
                if len(t) > 2 and t[0].replace(".", "").isdigit():
                    name = t[2].split(":")[-1].replace("sys_enter_", "").replace("sys_enter", "all syscalls")
                    print(f"  {name:14s} {float(t[0]) / n:6.2f}")
        if a.perf:
            ps = subprocess.Popen(["perf", "record", "--call-graph", "dwarf,16384", "-F", "2000", "-p", str(tg.pid), "-o", a.perf],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            n = drive(a.seconds)
            ps.send_signal(signal.SIGINT)
            ps.wait()
            print(f"perf profile of {n} requests in {a.perf}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
