#!/usr/bin/env python3
"""tg_engine side by side with llama-bench and llama-server, same source build, same threads.

    cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DTG_LLAMA=source -DTG_LLAMA_TOOLS=ON
    cmake --build build-bench -j2 --target bench-engine llama-bench llama-server model-small
    bench/engine/run.py --build build-bench [--model build-bench/models/small.gguf] [--threads 2]

Each round runs every tool once (interleaved, so a neighbour's load hits them alike); each
figure is its best round (--rounds, default 3). Prints the figures and the ratios the issue
asks for:
  single-stream decode  bench-engine / llama-bench tg<gen>            (target >= 0.95)
  K-stream aggregate    bench-engine / llama-server -np K, K = 4 and 8 (target >= 1.0)
  cached-prefix TTFT    cold / warm inside bench-engine                (target >= 5)
  peak RSS of each process (ru_maxrss from wait4, VmHWM for the server)
llama-server is driven like bench-engine: K concurrent /completion requests (greedy, n_predict
<gen>, cache_prompt false) with the same Phi-3 chat-formatted prompts; aggregate =
sum(tokens_predicted) / wall time from the first request to the last reply.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

TOPICS = ["the weather", "a recipe", "a bicycle", "the ocean", "a small town",
          "a lost letter", "an old clock", "a garden"]


def find_exe(build, name):
    for root, _dirs, files in os.walk(build):
        if name in files:
            p = os.path.join(root, name)
            if os.access(p, os.X_OK):
                return p
    sys.exit(f"{name} not found under {build} (configure with -DTG_LLAMA=source "
             f"-DTG_LLAMA_TOOLS=ON and build it)")


def run_measured(cmd):
    """Run cmd, return (stdout, peak RSS MiB)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out_chunks = []
    t = threading.Thread(target=lambda: out_chunks.append(p.stdout.read()))
    t.start()
    err = p.stderr.read()
    t.join()
    _pid, status, ru = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[0]} failed:\n{err[-2000:]}")
    return out_chunks[0], ru.ru_maxrss / 1024.0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def post(port, body, timeout=600):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/completion",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def server_aggregate(exe, model, threads, np_, gen, reps, ctx):
    port = free_port()
    cmd = [exe, "-m", model, "-t", str(threads), "-tb", str(threads), "-np", str(np_),
           "-c", str(ctx), "--host", "127.0.0.1", "--port", str(port)]
    srv = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:
                pass
            if srv.poll() is not None or time.time() > deadline:
                sys.exit(f"llama-server did not start: {' '.join(cmd)}")
            time.sleep(0.2)
        post(port, {"prompt": "<|user|>\nHello.<|end|>\n<|assistant|>\n", "n_predict": 8,
                    "temperature": 0})
        results = []
        short = 0
        for r in range(reps):
            toks = [0] * np_

            def one(i):
                body = {"prompt": f"<|user|>\nStream {i}: write about "
                                  f"{TOPICS[(i + r) % 8]}.<|end|>\n<|assistant|>\n",
                        "n_predict": gen, "temperature": 0, "cache_prompt": False}
                toks[i] = post(port, body)["tokens_predicted"]

            ts = [threading.Thread(target=one, args=(i,)) for i in range(np_)]
            t0 = time.monotonic()
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            results.append(sum(toks) / (time.monotonic() - t0))
            short += sum(1 for t in toks if t < gen)
        if short:
            print(f"note: llama-server -np {np_}: {short} replies stopped before {gen} tokens "
                  f"(end of generation); the aggregate counts the tokens actually produced")
        hwm = 0.0
        with open(f"/proc/{srv.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) / 1024.0
        return statistics.median(results), hwm
    finally:
        srv.terminate()
        srv.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build-bench")
    ap.add_argument("--model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prefix", type=int, default=1000)
    ap.add_argument("--streams", default="4,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kv-split", action="store_true",
                    help="also run bench-engine with kv_split (per-slot KV slices)")
    a = ap.parse_args()
    model = a.model or os.path.join(a.build, "models", "small.gguf")
    if not os.path.exists(model):
        sys.exit(f"{model} missing: cmake --build {a.build} --target model-small")
    streams = [int(x) for x in a.streams.split(",")]
    ctx = 8192

    be = find_exe(a.build, "bench-engine")
    lb = find_exe(a.build, "llama-bench")
    ls = find_exe(a.build, "llama-server")

    # The build VM's cores are shared: load from neighbours comes and goes. Every tool runs
    # once per round, rounds interleave the tools, and each figure is the best round.
    eng, eng_rss, lb_tg, lb_rss, srv, split = None, 0.0, 0.0, 0.0, {}, {}
    for rnd in range(a.rounds):
        out, rss = run_measured([be, "--model", model, "--threads", str(a.threads), "--gen",
                                 str(a.gen), "--reps", str(a.reps), "--prefix", str(a.prefix),
                                 "--ctx", str(ctx), "--streams", a.streams])
        print(f"round {rnd + 1}:")
        print(out, end="")
        cur = json.loads([l for l in out.splitlines() if l.startswith("json ")][0][5:])
        if eng is None:
            eng = cur
        else:
            for k, v in cur.items():
                if "_tps" in k:
                    eng[k] = max(eng[k], v)
            if cur["ttft_cold_ms"] / cur["ttft_warm_ms"] > eng["ttft_cold_ms"] / eng["ttft_warm_ms"]:
                eng["ttft_cold_ms"], eng["ttft_warm_ms"] = cur["ttft_cold_ms"], cur["ttft_warm_ms"]
        eng_rss = max(eng_rss, rss)

        if a.kv_split:
            out, _ = run_measured([be, "--model", model, "--threads", str(a.threads), "--gen",
                                   str(a.gen), "--reps", str(a.reps), "--ctx", str(ctx),
                                   "--streams", a.streams, "--kv-split", "1"])
            cur = json.loads([l for l in out.splitlines() if l.startswith("json ")][0][5:])
            print("bench-engine kv_split: " + ", ".join(
                f"{k} {v:.1f}" for k, v in cur.items() if "_tps" in k))
            for k, v in cur.items():
                if "_tps" in k:
                    split[k] = max(split.get(k, 0.0), v)

        out, rss = run_measured([lb, "-m", model, "-t", str(a.threads), "-p", "0", "-n",
                                 str(a.gen), "-r", str(a.reps), "-o", "json"])
        tg = [x["avg_ts"] for x in json.loads(out) if x.get("n_gen") == a.gen][0]
        print(f"llama-bench tg{a.gen}: {tg:.1f} tok/s (peak RSS {rss:.0f} MiB)")
        lb_tg, lb_rss = max(lb_tg, tg), max(lb_rss, rss)

        for k in streams:
            tps, hwm = server_aggregate(ls, model, a.threads, k, a.gen, a.reps, ctx)
            print(f"llama-server -np {k}: {tps:.1f} tok/s aggregate (VmHWM {hwm:.0f} MiB)")
            old = srv.get(k, (0.0, 0.0))
            srv[k] = (max(old[0], tps), max(old[1], hwm))

    print()
    print(f"best of {a.rounds} rounds")
    print(f"| measure ({os.path.basename(model)}, {a.threads} threads) | tg_engine | reference "
          f"| ratio | target |")
    print("|---|---|---|---|---|")
    print(f"| single-stream decode tok/s | {eng['single_decode_tps']:.1f} | llama-bench "
          f"{lb_tg:.1f} | {eng['single_decode_tps'] / lb_tg:.2f} | >= 0.95 |")
    for k in streams:
        e = eng[f"aggregate_tps_{k}"]
        print(f"| aggregate tok/s, {k} streams | {e:.1f} | llama-server -np {k} "
              f"{srv[k][0]:.1f} | {e / srv[k][0]:.2f} | >= 1.0 |")
    if split:
        print(f"| single-stream decode tok/s, kv_split | {split['single_decode_tps']:.1f} | "
              f"llama-bench {lb_tg:.1f} | {split['single_decode_tps'] / lb_tg:.2f} | >= 0.95 |")
        for k in streams:
            e = split[f"aggregate_tps_{k}"]
            print(f"| aggregate tok/s, {k} streams, kv_split | {e:.1f} | llama-server -np {k} "
                  f"{srv[k][0]:.1f} | {e / srv[k][0]:.2f} | >= 1.0 |")
    print(f"| TTFT, {eng['prefix_tokens']}-token prefix: cold / cached ms | "
          f"{eng['ttft_cold_ms']:.1f} / {eng['ttft_warm_ms']:.1f} | - | "
          f"{eng['ttft_cold_ms'] / eng['ttft_warm_ms']:.1f}x | >= 5x |")
    print(f"| peak RSS MiB | {eng_rss:.0f} | llama-bench {lb_rss:.0f}; llama-server "
          + "; ".join(f"-np {k} {srv[k][1]:.0f}" for k in streams) + " | - | - |")


if __name__ == "__main__":
    main()
