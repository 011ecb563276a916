#!/usr/bin/env python3
"""bench/gateway: tiergate's remote-tier overhead against the fake upstream, in one run.

Starts tg-fake-upstream (no recording), tiergate (remote tier only: no model, no Redis, cache
off), when installed the Portkey gateway (@portkey-ai/gateway from npm) and, when installed,
reference reverse proxies in front of the same fake (--refs, default nginx,haproxy):

  nginx         1 worker, no master, upstream keepalive pool (64), HTTP/1.1 to the fake, no access log
  haproxy-http  mode http, nbthread 1, http-reuse always (pooled server connections)
  haproxy-tcp   mode tcp, nbthread 1: bytes relayed, no HTTP parsing, one server connection per
                client connection: the cost of the extra hop alone (the L4 floor)

all on free ports and run as the current user, then:

  1. idle RSS of tiergate (no model loaded) and of each reference proxy
  2. fixed-rate latency (tg-loadgen, open loop) at --rate req/s: direct, through tiergate and
     through each reference, alternating, --reps times; added latency = proxy - direct per
     percentile (median of reps); CPU per request of each process (utime+stime / requests sent)
  3. the same at --portkey-rate (a rate Portkey sustains here), Portkey included, --low-reps times; then, unless
     --no-syscalls, syscalls and context switches per request of each server process at --rate,
     counted by `perf stat -p` during one more 3 s fixed-rate run per target
  4. one connection, closed loop (wrk -c1): every request alone in the pipeline
  5. closed-loop throughput with wrk (-t1 -c32): every target, share of direct
  6. RSS of tiergate holding --idle-conns idle keep-alive connections

  sh bench/gateway/install-refs.sh        # nginx-light + haproxy (apt), Portkey (npm, /tmp/upstream-portkey)
  python3 bench/gateway/run.py --build build --nice -20 --rt [--refs nginx,haproxy | --refs none]
      [--busy-poll-us 0:0,0,100:0]

--busy-poll-us sets tiergate's server.busy_poll_us and, after a colon, server.busy_poll_upstream_us
(docs/config.md; without a colon the upstream window keeps its default); with several values one
tiergate per value runs beside the others and every phase visits each (the first is "tiergate",
the others "tiergate-bpN" or "tiergate-bpN-upM"), alternating like the references, so the values
are compared under the same machine state. --idle-conns 0 skips phase 6.

A reference that is not installed (or does not start) is skipped with a note. Prints Markdown
tables (for bench/RESULTS.md) ending in "tiergate / reference" ratios and the issue's targets
checked for tiergate and for each reference, and writes the raw JSON next to them.
"""
import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BODY = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one short sentence."}]}'


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


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def cpu_s(pid):
    """user + system CPU seconds of a process and its threads (children included for node)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / tck


def measured(pids, fn):
    """Run fn() and add the CPU microseconds per request each pid spent (requests = sent_total)."""
    before = {k: cpu_s(p) for k, p in pids.items()}
    r = fn()
    n = max(1, r.get("sent_total") or 0)
    r["cpu_us_per_req"] = {k: round((cpu_s(p) - before[k]) * 1e6 / n, 1) for k, p in pids.items()}
    return r


RT = {"on": False}


def set_rt(pids, on):
    """SCHED_FIFO (on) or back to SCHED_OTHER for every thread of the server processes."""
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue  # a process that died: its absence shows up as failed runs
        for tid in tids:
            try:
                if on:
                    os.sched_setscheduler(int(tid), os.SCHED_FIFO, os.sched_param(10))
                else:
                    os.sched_setscheduler(int(tid), os.SCHED_OTHER, os.sched_param(0))
            except OSError:
                pass


def loadgen(build, url, rate, duration, warmup, headers=(), conns=32):
    cmd = [f"{build}/bench/gateway/tg-loadgen", "--url", url, "--rate", str(rate), "--duration",
           str(duration), "--warmup", str(warmup), "--connections", str(conns), "--body", BODY,
           "--header", "Authorization: Bearer sk-bench"]
    for h in headers:
        cmd += ["--header", h]
    if RT["on"]:
        cmd = ["chrt", "-f", "10"] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + warmup + 60)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"tg-loadgen {url} exited {out.returncode}: {out.stderr.strip()[-300:]}")
    r = json.loads(lines[-1])
    r["sent_total"] = r["sent"]  # everything sent, warm-up included
    r["failed"] = r.get("errors", 0) + r.get("non2xx", 0)
    return r


def us(v):
    """wrk latency text (e.g. 49.00us, 1.23ms, 2.00s) -> microseconds"""
    for suf, mul in (("us", 1), ("ms", 1e3), ("s", 1e6)):
        if v.endswith(suf):
            return float(v[:-len(suf)]) * mul
    return float(v)


def wrk(url, seconds, extra_headers="", conns=32):
    env = dict(os.environ)
    if extra_headers:
        env["EXTRA_HEADERS"] = extra_headers
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", f"{HERE}/post.lua", url],
                         capture_output=True, text=True, env=env, timeout=seconds + 30)
    r = {"rps": None, "errors": 0, "failed": 0, "sent_total": 0, "raw": out.stdout}
    for line in out.stdout.splitlines():
        t = line.split()
        if line.startswith("Requests/sec:"):
            r["rps"] = float(t[1])
        elif len(t) == 2 and t[0] in ("50%", "90%", "99%"):
            r["p" + t[0][:-1]] = us(t[1])
        elif " requests in " in line:
            r["sent_total"] = int(t[0])
        if "Non-2xx" in line or "Socket errors" in line:
            r["errors"] += 1
            r["failed"] += sum(int(x.rstrip(",")) for x in t if x.rstrip(",").isdigit())
    if r["rps"] is None:
        raise RuntimeError(f"wrk {url}: no result: {out.stdout.strip()[-300:]} {out.stderr.strip()[-300:]}")
    return r


def perf_counts(pid, fn):
    """Run fn() with the kernel counting pid's syscalls and context switches (perf stat on
    tracepoints: no slow-down, unlike strace). Returns (fn()'s result, {event: count})."""
    fd, log = tempfile.mkstemp(prefix="tg-perf-")
    os.close(fd)
    ps = subprocess.Popen(["perf", "stat", "-x", ";", "-e", "raw_syscalls:sys_enter,context-switches", "-p", str(pid),
                           "-o", log], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)  # perf attached before the first request
    try:
        r = fn()
    finally:
        ps.send_signal(signal.SIGINT)
        ps.wait(10)
    counts = {}
    if os.path.exists(log):
        for line in open(log):
            t = line.strip().split(";")
            if len(t) > 2 and t[0].isdigit():
                counts[t[2].split(":")[-1]] = int(t[0])
        os.unlink(log)
    if not counts:
        raise RuntimeError("perf stat counted nothing (perf missing or kernel.perf_event_paranoid too high?)")
    return r, counts


def overhead_buckets(port):
    """tiergate_gateway_overhead_seconds from /metrics: [(le, cumulative count)], +Inf last
    (the in-process time per proxied remote reply, provider wait excluded; docs/metrics.md)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    except OSError:
        return []
    return [(float(m.group(1)), int(m.group(2))) for m in
            re.finditer(r'^tiergate_gateway_overhead_seconds_bucket\{le="([^"]+)"\} (\d+)$', text, re.M)]


def bucket_quantile(q, before, after):
    """histogram_quantile() over the buckets observed between two scrapes (linear in a bucket)."""
    if not before or len(before) != len(after):
        return None
    cum = [(le, x - y) for (le, x), (_, y) in zip(after, before)]
    total = cum[-1][1]
    if total == 0:
        return None
    rank, prev_le, prev_c = q * total, 0.0, 0
    for le, c in cum:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(1, c - prev_c)
        prev_le, prev_c = le, c
    return prev_le


def allocator(exe):
    """The malloc a binary links (tiergate picks mimalloc when found: TG_ALLOCATOR)."""
    out = subprocess.run(["ldd", exe], capture_output=True, text=True).stdout
    for name in ("mimalloc", "jemalloc", "tcmalloc"):
        if name in out:
            return name
    return "glibc"


def attempt(fn):
    """fn() or {"error": why}: one failed reference run must not lose the rest of the benchmark."""
    try:
        return fn()
    except (RuntimeError, ValueError, KeyError, subprocess.TimeoutExpired) as e:
        print(f"note: run failed: {e}", file=sys.stderr)
        return {"error": str(e)}


# ---- reference proxies -------------------------------------------------------------------------

REF_NAMES = ("nginx", "haproxy-http", "haproxy-tcp")


def nginx_conf(d, port, fport):
    # The upstream pool mirrors what tiergate does with libcurl: persistent HTTP/1.1 connections to
    # the provider. keepalive_requests/timeouts raised so neither side ever recycles a connection
    # mid-run (tiergate's and the fake's keep-alive do not expire either).
    return f"""# written by bench/gateway/run.py
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    upstream fake {{
        server 127.0.0.1:{fport};
        keepalive 64;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def haproxy_conf(port, fport, mode):
    reuse = "    http-reuse always\n" if mode == "http" else ""
    return f"""# written by bench/gateway/run.py
global
    nbthread 1
    maxconn 4096
defaults
    mode {mode}
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
frontend fe
    bind 127.0.0.1:{port}
    default_backend fake
backend fake
{reuse}    server fake 127.0.0.1:{fport}
"""


def ref_command(name, work, port, fport):
    """(argv, version text) for a reference proxy, or (None, why not) when it is not installed."""
    if name == "nginx":
        exe = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
        if not exe:
            return None, "nginx not installed (sh bench/gateway/install-refs.sh)"
        d = f"{work}/nginx"
        os.makedirs(d, exist_ok=True)
        with open(f"{d}/nginx.conf", "w") as f:
            f.write(nginx_conf(d, port, fport))
        ver = subprocess.run([exe, "-v"], capture_output=True, text=True).stderr.strip()
        # -e: the startup error log too (the compiled-in default may not be writable)
        return [exe, "-p", f"{d}/", "-c", f"{d}/nginx.conf", "-e", f"{d}/error.log"], ver
    exe = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
    if not exe:
        return None, "haproxy not installed (sh bench/gateway/install-refs.sh)"
    mode = name.split("-")[1]
    cfg = f"{work}/{name}.cfg"
    with open(cfg, "w") as f:
        f.write(haproxy_conf(port, fport, mode))
    ver = subprocess.run([exe, "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    return [exe, "-db", "-f", cfg], ver  # -db: foreground, one process


def parse_refs(text):
    out = []
    for t in (x.strip() for x in text.split(",")):
        if t in ("", "none"):
            continue
        if t == "haproxy":
            out += ["haproxy-http", "haproxy-tcp"]
        elif t in REF_NAMES:
            out.append(t)
        else:
            sys.exit(f"--refs: unknown reference {t!r} (nginx, haproxy, haproxy-http, haproxy-tcp, none)")
    return [n for n in REF_NAMES if n in out]


def forwards(url, headers=()):
    """One request: (HTTP status, response headers + body) -- the target really reaches the fake."""
    cmd = ["curl", "-s", "-m", "10", "-D", "-", url, "-H", "Content-Type: application/json",
           "-H", "Authorization: Bearer sk-bench", "-d", BODY]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    status = out.split(None, 2)[1] if out.startswith("HTTP/") else "none"
    return status, out


# ---- output ------------------------------------------------------------------------------------

def fmt(v, nd=0):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:,.{nd}f}".replace(",", " ")


def signed(v):
    return "–" if v is None else (("+" if v >= 0 else "−") + fmt(abs(v)))


def ratio(a, b):
    """a / b as 'N.Nx', or n/a when b is not a positive measurement (noise can make it <= 0)."""
    if a is None or b is None or b <= 0:
        return "n/a"
    return f"{a / b:.1f}x"


def ok_runs(runs):
    return [r for r in runs if not r.get("error")]


def med(runs, get):
    vals = [get(r) for r in ok_runs(runs)]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def with_overhead(tgs, name, run):
    """run() for one target; for a tiergate also its own view of the run: the in-process time per
    proxied reply (tiergate_gateway_overhead_seconds scraped before and after), as overhead_us"""
    port = tgs[name][1] if name in tgs else None
    before = overhead_buckets(port) if port else None
    r = run()
    if before is not None:
        after = overhead_buckets(port)
        r["overhead_us"] = {k: (None if v is None else round(v * 1e6, 1)) for k, v in
                            (("p50", bucket_quantile(0.5, before, after)),
                             ("p99", bucket_quantile(0.99, before, after)))}
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--io-threads", type=int, default=1)
    ap.add_argument("--portkey", default="/tmp/upstream-portkey/node_modules/@portkey-ai/gateway/build/start-server.js",
                    help="Portkey's start-server.js (bench/gateway/install-refs.sh puts it there); skipped if absent")
    ap.add_argument("--portkey-rate", type=int, default=200)
    ap.add_argument("--low-reps", type=int, default=None, help="repetitions at --portkey-rate (default --reps)")
    ap.add_argument("--refs", default="nginx,haproxy",
                    help="reference proxies measured beside tiergate: nginx, haproxy (= haproxy-http + "
                         "haproxy-tcp), haproxy-http, haproxy-tcp, or none; those not installed are skipped")
    ap.add_argument("--no-syscalls", dest="syscalls", action="store_false",
                    help="skip counting syscalls and context switches per request (perf stat) of each server")
    ap.add_argument("--idle-conns", type=int, default=10000, help="phase 6's connections; 0 skips it")
    ap.add_argument("--busy-poll-us", default="0",
                    help="tiergate's server.busy_poll_us[:busy_poll_upstream_us]; a comma-separated list "
                         "runs one tiergate per value (the first named tiergate, the others "
                         "tiergate-bpN[-upM]), all measured alike")
    ap.add_argument("--out", default=None)
    ap.add_argument("--rt", action="store_true",
                    help="fixed-rate phases (paced, < 1 core in all) under SCHED_FIFO: load generator, "
                         "fake, tiergate, the reference proxies and Portkey then run when they are ready "
                         "instead of queueing behind a shared VM's other work; closed-loop phases stay "
                         "SCHED_OTHER")
    ap.add_argument("--nice", type=int, default=None,
                    help="run everything at this nice value (e.g. -20 on a shared VM: the other "
                         "tenants' builds then take CPU only when the benchmark leaves it idle)")
    a = ap.parse_args()
    want_refs = parse_refs(a.refs)
    try:
        polls = [tuple(int(y) for y in x.split(":")) if ":" in x else (int(x), None)
                 for x in a.busy_poll_us.split(",")]
    except ValueError:
        sys.exit(f"--busy-poll-us: a comma-separated list of N or N:M integers (got {a.busy_poll_us!r})")
    if len(set(polls)) != len(polls) or any(len(v) != 2 or any(y is not None and not 0 <= y <= 10000
                                                               for y in v) for v in polls):
        sys.exit("--busy-poll-us: distinct values, each N or N:M with N and M in 0..10000")
    if a.low_reps is None:
        a.low_reps = a.reps
    if a.nice is not None:
        os.setpriority(os.PRIO_PROCESS, 0, a.nice)  # inherited by every process started below
    build = os.path.abspath(a.build)
    work = tempfile.mkdtemp(prefix="tg-bench-gw-")
    procs = []
    res = {"argv": sys.argv[1:], "rate": a.rate, "duration_s": a.duration, "reps": a.reps, "low_reps": a.low_reps,
           "io_threads": a.io_threads, "nice": a.nice, "rt": a.rt, "busy_poll_us": [list(v) for v in polls],
           "started_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "loadavg_before": open("/proc/loadavg").read().split()[:3], "refs": {}, "notes": []}

    def note(text):
        res["notes"].append(text)
        print(f"note: {text}", file=sys.stderr)

    def start(cmd, log, **kw):
        p = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, **kw)
        procs.append(p)
        return p

    try:
        fport, pport = free_port(), free_port()
        fake = start([f"{build}/tests/tg-fake-upstream", "--port", str(fport), "--no-record"], f"{work}/fake.log")
        tgs = {}  # target name -> (process, port, busy_poll_us)
        for i, (poll, up) in enumerate(polls):
            tname = ("tiergate" if i == 0 else f"tiergate-bp{poll}" + ("" if up is None else f"-up{up}"))
            up_line = "" if up is None else f"\n  busy_poll_upstream_us: {up}"
            tport = free_port()
            cfg = f"""server:
  listen: 127.0.0.1:{tport}
  io_threads: {a.io_threads}
  busy_poll_us: {poll}{up_line}
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
policy: {ROOT}/policies/balanced.yaml
cache:
  enabled: false
metrics:
  reference_model: gpt-4o-mini
"""
            with open(f"{work}/{tname}.yaml", "w") as f:
                f.write(cfg)
            tgs[tname] = (start([f"{build}/gateway/tiergate", "--config", f"{work}/{tname}.yaml"],
                                f"{work}/{tname}.log"), tport, (poll, up))
        tg, tport = tgs["tiergate"][0], tgs["tiergate"][1]
        res["build"], res["tiergate_allocator"] = build, allocator(f"{build}/gateway/tiergate")
        pk_proc = None
        if os.path.exists(a.portkey):
            pk_proc = start(["node", a.portkey, f"--port={pport}", "--headless"], f"{work}/portkey.log",
                            cwd=os.path.dirname(a.portkey))
        else:
            note(f"Portkey not found at {a.portkey}: skipped (sh bench/gateway/install-refs.sh installs it)")
        refs = {}  # name -> (process, url)
        for name in want_refs:
            port = free_port()
            cmd, ver = ref_command(name, work, port, fport)
            if cmd is None:
                note(f"{name}: skipped, {ver}")
                continue
            refs[name] = (start(cmd, f"{work}/{name}.log"), f"http://127.0.0.1:{port}/v1/chat/completions", port)
            res["refs"][name] = {"version": ver, "cmd": " ".join(cmd)}
        assert wait_port(fport) and all(wait_port(t[1]) for t in tgs.values()), \
            "fake upstream or tiergate did not start"
        if pk_proc and not wait_port(pport, 40):
            note(f"Portkey did not listen within 40 s: skipped (log {work}/portkey.log)")
            pk_proc = None
        for name in list(refs):
            p, url, port = refs[name]
            status, out = "none", ""
            if wait_port(port, 10):
                status, out = forwards(url)
            if status != "200" or '"choices"' not in out:
                log = open(f"{work}/{name}.log").read()[-400:]
                note(f"{name}: skipped, it did not forward a chat request (HTTP {status}); log: {log!r}")
                p.terminate()
                del refs[name], res["refs"][name]
        time.sleep(1.0)
        res["tiergate_idle_rss_kb"] = rss_kb(tg.pid)
        for name, (p, _, _) in refs.items():
            res["refs"][name]["idle_rss_kb"] = rss_kb(p.pid)
        if pk_proc:
            res["portkey_idle_rss_kb"] = rss_kb(pk_proc.pid)

        direct = f"http://127.0.0.1:{fport}/v1/chat/completions"
        through = f"http://127.0.0.1:{tport}/v1/chat/completions"
        pk = f"http://127.0.0.1:{pport}/v1/chat/completions"
        pk_headers = ["x-portkey-provider: openai", f"x-portkey-custom-host: http://127.0.0.1:{fport}/v1"]

        # sanity: every tiergate really forwards to the fake upstream
        for tname, (_, port, _) in tgs.items():
            status, chk = forwards(f"http://127.0.0.1:{port}/v1/chat/completions")
            assert status == "200" and "x-tiergate-tier: remote" in chk.lower(), (tname, chk)

        pids = {"fake": fake.pid}
        pids.update({tname: t[0].pid for tname, t in tgs.items()})
        for name, (p, _, _) in refs.items():
            pids[name] = p.pid
        if pk_proc:
            pids["portkey"] = pk_proc.pid
        # (name, url, headers) in the order each phase visits them
        targets = ([("direct", direct, ())] +
                   [(tname, f"http://127.0.0.1:{t[1]}/v1/chat/completions", ()) for tname, t in tgs.items()] +
                   [(n, refs[n][1], ()) for n in refs])
        res["targets"] = [t[0] for t in targets]
        res["tiergates"] = {tname: {"busy_poll_us": t[2][0], "busy_poll_upstream_us": t[2][1],
                                    "idle_rss_kb": rss_kb(t[0].pid)} for tname, t in tgs.items()}

        RT["on"] = a.rt
        if a.rt:
            set_rt(pids.values(), True)
        runs = {t[0]: [] for t in targets}
        for _ in range(a.reps):  # alternating, so that drift in the machine's state hits every target alike
            for name, url, hdr in targets:
                runs[name].append(with_overhead(tgs, name, lambda: attempt(lambda: measured(
                    pids, lambda: loadgen(build, url, a.rate, a.duration, 1, hdr)))))
        res["fixed_rate"] = runs
        if pk_proc:
            # Portkey at the same fixed rate, once (the "10x below Portkey's" at --rate): it
            # does not sustain it here, so the run shows what a client of Portkey sees at that load
            # (achieved rate, service and corrected latency); then a pause for its backlog to clear
            res["portkey_at_rate"] = attempt(lambda: measured(pids, lambda: loadgen(
                build, pk, a.rate, a.duration, 2, pk_headers)))
            time.sleep(3)

        # repeated and alternating like the 5 000 req/s phase: one 10 s run at 200 req/s has only
        # ~20 samples above its p99, and one slow direct run made every "added p99" negative
        low_targets = targets + ([("portkey", pk, pk_headers)] if pk_proc else [])
        low = {t[0]: [] for t in low_targets}
        for _ in range(a.low_reps):
            for name, url, hdr in low_targets:
                warm = 2 if name == "portkey" else 1
                low[name].append(with_overhead(tgs, name, lambda: attempt(lambda: measured(
                    pids, lambda: loadgen(build, url, a.portkey_rate, a.duration, warm, hdr, conns=16)))))
        res["low_rate"] = low

        if a.syscalls and shutil.which("perf"):
            # syscalls and context switches per request of each server process at the fixed rate
            # (counts, not times: a loaded machine does not change them much)
            sc = {}
            for name, url, hdr in targets:
                who = "fake" if name == "direct" else name

                def one():
                    r, c = perf_counts(pids[who], lambda: loadgen(build, url, a.rate, 3, 0, hdr))
                    n = max(1, r["sent_total"])
                    return {"who": who, "requests": r["sent_total"], "failed": r["failed"],
                            "syscalls_per_req": c.get("sys_enter", 0) / n,
                            "ctx_switches_per_req": c.get("context-switches", 0) / n}
                sc[name] = attempt(one)
            res["syscalls"] = sc
        elif a.syscalls:
            note("perf not installed: syscalls per request not counted (apt-get install linux-perf)")
        if a.rt:
            set_rt(pids.values(), False)
        RT["on"] = False

        # one connection, closed loop: every request alone in the pipeline (the least contended
        # view of the per-request overhead on a shared machine)
        seq = {}
        for _ in range(a.reps):
            for name, url, hdr in targets:
                seq.setdefault(name, []).append(attempt(lambda: wrk(url, 5, conns=1)))
        if pk_proc:
            seq["portkey"] = [attempt(lambda: wrk(pk, 5, "|".join(pk_headers), conns=1))]
        res["sequential"] = {k: [{x: r.get(x) for x in ("rps", "p50", "p90", "p99", "failed", "error")} for r in v]
                             for k, v in seq.items()}

        thr = {}
        for name, url, hdr in low_targets:
            thr[name] = attempt(lambda: measured(pids, lambda: wrk(url, 10, "|".join(hdr))))
        res["throughput"] = {k: v.get("rps") for k, v in thr.items()}
        res["throughput_detail"] = {k: {x: v.get(x) for x in ("rps", "p50", "p99", "sent_total", "failed",
                                                              "cpu_us_per_req", "error")} for k, v in thr.items()}

        if a.idle_conns > 0:
            idle = subprocess.Popen([f"{build}/bench/gateway/tg-loadgen", "--idle-conns", str(a.idle_conns), "--url",
                                     f"http://127.0.0.1:{tport}/v1/models", "--hold", "20"],
                                    stdout=subprocess.PIPE, text=True)
            line = idle.stdout.readline()
            time.sleep(1.0)
            res["idle_conns"] = json.loads(line) if line.strip() else {"error": "no output"}
            res["tiergate_rss_idle_conns_kb"] = rss_kb(tg.pid)
            idle.send_signal(signal.SIGTERM)
            idle.wait()
        for name, (p, _, _) in refs.items():
            if p.poll() is not None:
                note(f"{name} exited during the run (status {p.returncode}); log {work}/{name}.log")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    res["loadavg_after"] = open("/proc/loadavg").read().split()[:3]

    out = a.out or os.path.join(work, "results.json")
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    report(res, a, out)
    return 0


def report(res, a, out):
    fr, low, seq, thr = res["fixed_rate"], res["low_rate"], res["sequential"], res["throughput"]
    names = res["targets"]
    proxies = [n for n in names if n != "direct"]
    tgs = res.get("tiergates") or {"tiergate": {"busy_poll_us": 0}}
    refs = [n for n in proxies if n not in tgs]
    print(f"raw results: {out}\n")
    print(f"Run {res['started_utc']}: `python3 bench/gateway/run.py {' '.join(res['argv'])}`; load average "
          f"{' / '.join(res['loadavg_before'])} before, {' / '.join(res['loadavg_after'])} after (1/5/15 min).")
    for n in refs:
        print(f"- {n}: {res['refs'][n]['version']}")
    print(f"- tiergate: {res['build']}/gateway/tiergate, malloc: {res.get('tiergate_allocator', '?')}, "
          + ", ".join(f"{n} server.busy_poll_us {t['busy_poll_us']}, busy_poll_upstream_us "
                      f"{'default' if t.get('busy_poll_upstream_us') is None else t['busy_poll_upstream_us']}"
                      for n, t in tgs.items()))
    for t in res["notes"]:
        print(f"- note: {t}")
    print("\nadded = through the proxy minus direct to the fake, same percentile; CPU/req = utime+stime of the "
          "process / requests sent in that run (the fake's own CPU in a separate column).\n")

    def fixed(name, key, pct):
        return med(fr[name], lambda r: r[key][pct])

    def cpu(runs, who):
        return med(runs, lambda r: r["cpu_us_per_req"].get(who))

    print(f"| {a.rate} req/s fixed rate, 32 conns ({a.duration:.0f} s × {a.reps}, medians) | service p50 | p90 | p99 "
          f"| added p50 | added p90 | added p99 | corrected p50 / p99 | proxy CPU/req (µs) | fake CPU/req (µs) "
          f"| achieved req/s | failed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    added = {}
    for n in names:
        p = {q: fixed(n, "service_us", q) for q in ("p50", "p90", "p99")}
        d = {q: fixed("direct", "service_us", q) for q in ("p50", "p90", "p99")}
        added[n] = {q: (p[q] - d[q] if p[q] is not None and d[q] is not None else None) for q in p}
        failed = sum(r.get("failed", 0) for r in ok_runs(fr[n]))
        errs = len(fr[n]) - len(ok_runs(fr[n]))
        print(f"| {n} | {fmt(p['p50'])} | {fmt(p['p90'])} | {fmt(p['p99'])} "
              + ("| | | " if n == "direct" else
                 f"| **{signed(added[n]['p50'])}** | {signed(added[n]['p90'])} | **{signed(added[n]['p99'])}** ")
              + f"| {fmt(fixed(n, 'corrected_us', 'p50'))} / {fmt(fixed(n, 'corrected_us', 'p99'))} "
              f"| {'' if n == 'direct' else fmt(cpu(fr[n], n))} | {fmt(cpu(fr[n], 'fake'))} "
              f"| {fmt(med(fr[n], lambda r: r['achieved_rate']))} | {failed}{f' ({errs} runs failed)' if errs else ''} |")
    for tn in tgs:
        o50 = med(fr[tn], lambda r: (r.get("overhead_us") or {}).get("p50"))
        o99 = med(fr[tn], lambda r: (r.get("overhead_us") or {}).get("p99"))
        if o50 is None:
            continue
        rest = signed(added[tn]["p50"] - o50) if added[tn]["p50"] is not None else "–"
        print(f"\n{tn}'s in-process overhead at {a.rate} req/s (tiergate_gateway_overhead_seconds between scrapes, "
              f"provider wait excluded; median of runs): p50 {fmt(o50)} µs, p99 {fmt(o99)} µs; added p50 minus "
              f"in-process p50: {rest} µs (the extra hop's wake-ups and socket I/O outside that window).")
    print()

    print(f"| {a.portkey_rate} req/s fixed rate, 16 conns ({a.duration:.0f} s × {a.low_reps}, medians; service latency, "
          f"µs) | p50 | p99 | added p50 | added p99 "
          f"| proxy CPU/req (µs) |")
    print("|---|---|---|---|---|---|")
    def low_p(n, pct):
        return med(low[n], lambda r: r["service_us"][pct])

    low_added = {}
    for n, runs_n in low.items():
        if not ok_runs(runs_n):
            print(f"| {n} | failed: {runs_n[0].get('error', '')[:60]} | | | | |")
            continue
        p50, p99 = low_p(n, "p50"), low_p(n, "p99")
        if n != "direct" and low_p("direct", "p50") is not None:
            low_added[n] = (p50 - low_p("direct", "p50"), p99 - low_p("direct", "p99"))
        ad = low_added.get(n)
        print(f"| {n} | {fmt(p50)} | {fmt(p99)} | {signed(ad[0]) if ad else ''} | {signed(ad[1]) if ad else ''} "
              f"| {'' if n == 'direct' else fmt(cpu(runs_n, n))} |")
    for tn in tgs:
        o50 = med(low.get(tn) or [], lambda r: (r.get("overhead_us") or {}).get("p50"))
        if o50 is None or tn not in low_added:
            continue
        print(f"\n{tn}'s in-process overhead at {a.portkey_rate} req/s (median of runs): p50 {fmt(o50)} µs; added p50 "
              f"minus in-process p50: {signed(low_added[tn][0] - o50)} µs.")
    print()

    print(f"| one connection, closed loop (wrk -t1 -c1 5 s, median of {a.reps}) | p50 (µs) | p99 (µs) | added p50 | req/s |")
    print("|---|---|---|---|---|")
    seq_p50 = {n: med(v, lambda r: r["p50"]) for n, v in seq.items()}
    for n, v in seq.items():
        ad = None if n == "direct" or seq_p50[n] is None or seq_p50.get("direct") is None else seq_p50[n] - seq_p50["direct"]
        print(f"| {n} | {fmt(seq_p50[n])} | {fmt(med(v, lambda r: r['p99']))} | {'' if n == 'direct' else signed(ad)} "
              f"| {fmt(med(v, lambda r: r['rps']))} |")
    seq_added = {n: seq_p50[n] - seq_p50["direct"] for n in seq
                 if n != "direct" and seq_p50[n] is not None and seq_p50.get("direct") is not None}
    print()

    det = res["throughput_detail"]
    print("| closed-loop throughput (wrk -t1 -c32 10 s, not RT) | req/s | vs direct | p50 / p99 (µs) | proxy CPU/req (µs) "
          "| fake CPU/req (µs) | failed |")
    print("|---|---|---|---|---|---|---|")
    share = {}
    for n, rps in thr.items():
        dd = det[n]
        if rps is None:
            print(f"| {n} | failed: {(dd.get('error') or '')[:60]} | | | | | |")
            continue
        share[n] = 100.0 * rps / thr["direct"] if thr.get("direct") else None
        c = dd.get("cpu_us_per_req") or {}
        print(f"| {n} | {fmt(rps)} | {fmt(share[n])} % | {fmt(dd.get('p50'))} / {fmt(dd.get('p99'))} "
              f"| {'' if n == 'direct' else fmt(c.get(n))} | {fmt(c.get('fake'))} | {dd.get('failed', 0)} |")
    print()

    if res.get("syscalls"):
        print(f"| per request at {a.rate} req/s, 3 s, kernel counters (perf stat -p) | process | syscalls | "
              "context switches |")
        print("|---|---|---|---|")
        for n, r in res["syscalls"].items():
            if r.get("error"):
                print(f"| {n} | | failed: {r['error'][:60]} | |")
            else:
                print(f"| {n} | {r['who']} | {r['syscalls_per_req']:.1f} | {r['ctx_switches_per_req']:.2f} |")
        print()

    print("| memory (VmRSS) | |")
    print("|---|---|")
    print(f"| tiergate idle, no model | {res['tiergate_idle_rss_kb'] / 1024:.1f} MiB |")
    for n in refs:
        print(f"| {n} idle | {res['refs'][n]['idle_rss_kb'] / 1024:.1f} MiB |")
    if "portkey_idle_rss_kb" in res:
        print(f"| portkey (node) idle | {res['portkey_idle_rss_kb'] / 1024:.1f} MiB |")
    if "tiergate_rss_idle_conns_kb" in res:
        print(f"| tiergate with {res['idle_conns'].get('idle_connections')} idle keep-alive connections | "
              f"{res['tiergate_rss_idle_conns_kb'] / 1024:.1f} MiB |")
    print()

    if refs:
        cpu5k = {n: cpu(fr[n], n) for n in proxies}
        print("| tiergate / reference (> 1: tiergate costs more) | " + " | ".join(f"tiergate / {n}" for n in refs) + " |")
        print("|---|" + "---|" * len(refs))
        rows = [
            (f"added p50 at {a.rate} req/s", lambda n: ratio(added["tiergate"]["p50"], added[n]["p50"])),
            (f"added p99 at {a.rate} req/s", lambda n: ratio(added["tiergate"]["p99"], added[n]["p99"])),
            (f"added p50 at {a.portkey_rate} req/s",
             lambda n: ratio((low_added.get("tiergate") or (None,))[0], (low_added.get(n) or (None,))[0])),
            ("added p50, one connection", lambda n: ratio(seq_added.get("tiergate"), seq_added.get(n))),
            (f"proxy CPU per request at {a.rate} req/s", lambda n: ratio(cpu5k["tiergate"], cpu5k[n])),
            ("wrk -c32 throughput (tiergate's req/s / the reference's)",
             lambda n: ratio(thr.get("tiergate"), thr.get(n))),
            ("idle RSS", lambda n: ratio(res["tiergate_idle_rss_kb"], res["refs"][n]["idle_rss_kb"])),
        ]
        for label, f in rows:
            print(f"| {label} | " + " | ".join(f(n) for n in refs) + " |")
        print()

    def mark(v, ok):
        return "–" if v is None else ("✓" if ok(v) else "✗")

    pk_low = (low_added.get("portkey") or (None,))[0]
    pk_seq = seq_added.get("portkey")
    pk_rate = res.get("portkey_at_rate") or {}
    pk_rate_added = None
    if pk_rate.get("service_us"):
        d = fixed("direct", "service_us", "p50")
        pk_rate_added = pk_rate["service_us"]["p50"] - d
        print(f"| Portkey at {a.rate} req/s, 32 conns, one run | achieved req/s | service p50 | p99 | added p50 "
              "| corrected p50 / p99 | failed |")
        print("|---|---|---|---|---|---|---|")
        print(f"| portkey | {fmt(pk_rate.get('achieved_rate'))} | {fmt(pk_rate['service_us']['p50'])} | "
              f"{fmt(pk_rate['service_us']['p99'])} | {signed(pk_rate_added)} | "
              f"{fmt(pk_rate['corrected_us']['p50'])} / {fmt(pk_rate['corrected_us']['p99'])} | "
              f"{pk_rate.get('failed', 0)} |\n")
    print("| issue 4 target, applied to each proxy in this run | " + " | ".join(proxies) + " |")
    print("|---|" + "---|" * len(proxies))
    print(f"| added p50 ≤ 50 µs at {a.rate} req/s | "
          + " | ".join(f"{signed(added[n]['p50'])} {mark(added[n]['p50'], lambda v: v <= 50)}" for n in proxies) + " |")
    print(f"| added p99 ≤ 300 µs at {a.rate} req/s | "
          + " | ".join(f"{signed(added[n]['p99'])} {mark(added[n]['p99'], lambda v: v <= 300)}" for n in proxies) + " |")
    print("| throughput ≥ 50 % of direct (wrk -c32) | "
          + " | ".join(f"{fmt(share.get(n))} % {mark(share.get(n), lambda v: v >= 50)}" for n in proxies) + " |")
    if pk_rate_added is not None:
        print(f"| Portkey's added p50 / this one's ≥ 10x at {a.rate} req/s (Portkey achieved "
              f"{fmt(pk_rate.get('achieved_rate'))} req/s) | "
              + " | ".join(f"{ratio(pk_rate_added, added[n]['p50'])} "
                           f"{mark(added[n]['p50'], lambda v: v > 0 and pk_rate_added / v >= 10)}"
                           for n in proxies) + " |")
    if pk_low is not None:
        print(f"| Portkey's added p50 / this one's ≥ 10x at {a.portkey_rate} req/s | "
              + " | ".join(f"{ratio(pk_low, (low_added.get(n) or (None,))[0])} "
                           f"{mark((low_added.get(n) or (None,))[0], lambda v: v > 0 and pk_low / v >= 10)}"
                           for n in proxies) + " |")
    if pk_seq is not None:
        print("| Portkey's added p50 / this one's ≥ 10x, one connection | "
              + " | ".join(f"{ratio(pk_seq, seq_added.get(n))} "
                           f"{mark(seq_added.get(n), lambda v: v > 0 and pk_seq / v >= 10)}" for n in proxies) + " |")


if __name__ == "__main__":
    sys.exit(main())
