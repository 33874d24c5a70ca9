# SPDX-License-Identifier: MIT
# The communication tax and the fragility of synchronised training, measured side by side in
# one run on this host (issue 11, item 6), with build/bin/btx-dist-bench:
#   1. tokens/s per worker: N independent workers (BTX's expert stage: no communication)
#      against an N-rank data-parallel job of the same model and per-rank batch, with the
#      gradient all-reduce overlapped with backward and without; its share of the step;
#   2. all-reduce bus bandwidth by message size on loopback, beside this host's memcpy rate;
#   3. from one killed (or frozen) rank to the whole synchronised job stopping, against
#      independent workers, where the others finish;
#   4. a projection to a cluster from the measured step time and a ring all-reduce model.
# Writes benchmarks/results/dist_bench.json, benchmarks/results/dist_projection.png and
# prints the Markdown tables for RESULTS.md.
#   python3 benchmarks/dist_bench.py [--bench build/bin/btx-dist-bench] [--repeats 3]
import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(bench, ranks, args, timeout_ms=None):
    """`ranks` processes of one world (torchrun's variables, as btx's launcher sets them)."""
    port = free_port()
    procs = []
    for r in range(ranks):
        env = {**ENV, "RANK": str(r), "WORLD_SIZE": str(ranks), "LOCAL_RANK": str(r),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        extra = ["--timeout-ms", str(timeout_ms)] if timeout_ms else []
        procs.append(subprocess.Popen([bench, *args, *extra], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


def start_independent(bench, workers, args):
    return [subprocess.Popen([bench, *args], env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(workers)]


def records(procs, check=True):
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=900)
        if check and p.returncode != 0:
            sys.exit(f"btx-dist-bench failed ({p.returncode}): {stderr[-2000:]}")
        out += [json.loads(l) for l in stdout.splitlines() if l.startswith("{")]
    return out


def throughput(bench, ranks, steps, repeats):
    """Median over repeats of each arm's per-worker tokens/s, the arms interleaved."""
    arms = {"independent": [], "data-parallel, overlapped": [], "data-parallel, after backward": []}
    train = ["train", "--steps", str(steps)]
    for _ in range(repeats):
        arms["independent"].append(records(start_independent(bench, ranks, train)))
        arms["data-parallel, overlapped"].append(records(start_ranks(bench, ranks, train)))
        arms["data-parallel, after backward"].append(
            records(start_ranks(bench, ranks, train + ["--no-overlap"])))
    rows = []
    for arm, runs in arms.items():
        tps = [statistics.mean(r["tokens_per_s_per_worker"] for r in run) for run in runs]
        step = [statistics.mean(r["step_s"] for r in run) for run in runs]
        hook = [statistics.mean(r["grad_hook_s"] for r in run) for run in runs]
        rows.append({"arm": arm, "workers": ranks, "tokens_per_s_per_worker": statistics.median(tps),
                     "runs": tps, "step_s": statistics.median(step),
                     "grad_hook_s": statistics.median(hook),
                     "gradient_bytes": runs[0][0]["gradient_bytes"],
                     "flops_per_token": runs[0][0]["flops_per_token"]})
    return rows


def time_to_stop(bench, ranks, steps):
    """Kill (SIGKILL) or freeze (SIGSTOP) rank 1 mid-run; when do the others stop?"""
    out = {}
    # Synchronised: every rank of the job stops.
    procs = start_ranks(bench, ranks, ["train", "--steps", str(steps), "--die-rank", "1",
                                       "--die-step", "6"], timeout_ms=20000)
    ends = wait_all(procs)
    recs = [json.loads(l) for l in procs[1].stdout.read().splitlines() if l.startswith("{")]
    killed_at = next(r["unix_s"] for r in recs if r["mode"] == "kill")
    out["sigkill, data-parallel"] = {
        "stop_s": max(ends.values()) - killed_at,
        "exit_codes": [p.returncode for p in procs],
        "finished": 0, "of": ranks,
        "error": procs[0].stderr.read().strip().splitlines()[-1][:300]}
    # Frozen rank: nothing resets a connection; the job stops at btx's timeout.
    procs = start_ranks(bench, ranks, ["train", "--steps", str(steps)], timeout_ms=10000)
    time.sleep(6)
    frozen_at = time.time()
    os.kill(procs[1].pid, signal.SIGSTOP)
    ends = wait_all(procs[:1] + procs[2:])
    os.kill(procs[1].pid, signal.SIGKILL)
    procs[1].wait()
    out["sigstop, data-parallel (10 s timeout)"] = {
        "stop_s": max(ends.values()) - frozen_at,
        "exit_codes": [p.returncode for p in procs],
        "finished": 0, "of": ranks,
        "error": procs[0].stderr.read().strip().splitlines()[-1][:300]}
    # Independent workers (BTX's experts): one is killed, the others run to the end.
    procs = [subprocess.Popen([bench, "train", "--steps", str(steps), *(
        ["--die-rank", "0", "--die-step", "6"] if i == 1 else [])], env=ENV,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(ranks)]
    start = time.time()
    ends = wait_all(procs)
    out["sigkill, independent workers"] = {
        "stop_s": None, "exit_codes": [p.returncode for p in procs],
        "finished": sum(p.returncode == 0 for p in procs), "of": ranks,
        "others_ran_s": max(t for i, t in ends.items() if procs[i].returncode == 0) - start}
    return out


def wait_all(procs):
    ends = {}
    while len(ends) < len(procs):
        for i, p in enumerate(procs):
            if i not in ends and p.poll() is not None:
                ends[i] = time.time()
        time.sleep(0.01)
    return ends


GPU_SPEEDUP = 100  # an assumption, labelled as one: a GPU computes the step ~100x faster


def projection(step_s, grad_bytes, workers=(8, 16, 32, 64, 128, 256, 512, 1024),
               links_gbps=(100, 400), latency_s=5e-6):
    """Ring all-reduce time 2(N-1)/N x bytes / bandwidth + 2(N-1) x latency, against the
    measured per-step compute time (no overlap): the share of a synchronised step spent
    communicating, which BTX's expert stage does not pay. Also with the compute assumed
    GPU_SPEEDUP times faster, since the tax is communication over compute."""
    rows = []
    for n in workers:
        row = {"workers": n}
        for g in links_gbps:
            comm = 2 * (n - 1) / n * grad_bytes / (g * 1e9 / 8) + 2 * (n - 1) * latency_s
            row[f"{g}Gbps_comm_s"] = comm
            row[f"{g}Gbps_tax"] = comm / (step_s + comm)
            row[f"{g}Gbps_tax_fast_compute"] = comm / (step_s / GPU_SPEEDUP + comm)
        rows.append(row)
    return rows


def plot(rows, path, label):
    data = path + ".dat"
    with open(data, "w") as f:
        for r in rows:
            f.write(f"{r['workers']} {r['100Gbps_tax'] * 100} {r['400Gbps_tax'] * 100} "
                    f"{r['100Gbps_tax_fast_compute'] * 100} {r['400Gbps_tax_fast_compute'] * 100}\n")
    script = f"""
set terminal pngcairo size 800,480
set output '{path}'
set title "Projected synchronised tax (ring all-reduce model; not measured on a cluster)\\n{label}"
set xlabel "data-parallel workers"
set ylabel "share of each step spent in the all-reduce (%)"
set logscale x 2
set key top left
set yrange [0:100]
set grid
plot '{data}' using 1:2 with linespoints title '100 Gb/s, measured compute', \
     '{data}' using 1:3 with linespoints title '400 Gb/s, measured compute', \
     '{data}' using 1:4 with linespoints dashtype 2 title '100 Gb/s, compute {GPU_SPEEDUP}x faster (assumed)', \
     '{data}' using 1:5 with linespoints dashtype 2 title '400 Gb/s, compute {GPU_SPEEDUP}x faster (assumed)'
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    os.remove(data)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default="build/bin/btx-dist-bench")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    results = {"date": time.strftime("%Y-%m-%d"), "host": socket.gethostname(),
               "cpus": os.cpu_count(), "command": " ".join(sys.argv)}
    results["throughput"] = throughput(a.bench, a.ranks, a.steps, a.repeats)
    results["allreduce"] = records(start_ranks(a.bench, a.ranks, ["allreduce", "--max-mb", "64"]))
    results["time_to_stop"] = time_to_stop(a.bench, a.ranks, a.steps + 16)
    single = results["throughput"][0]
    results["projection"] = projection(single["step_s"], single["gradient_bytes"])
    out_dir = os.path.join(HERE, "results")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "dist_bench.json"), "w") as f:
        json.dump(results, f, indent=1)
    label = (f"measured step {single['step_s'] * 1000:.0f} ms and "
             f"{single['gradient_bytes'] / 1e6:.1f} MB of fp32 gradients (btx-dist-bench's Llama)")
    plot(results["projection"], os.path.join(out_dir, "dist_projection.png"), label)
    report(results)


def report(r):
    print("| arm | workers | tokens/s per worker | step ms | gradient hook ms | vs independent |")
    print("|---|---|---|---|---|---|")
    base = r["throughput"][0]["tokens_per_s_per_worker"]
    for t in r["throughput"]:
        runs = ", ".join(f"{x:.0f}" for x in t["runs"])
        print(f"| {t['arm']} | {t['workers']} | {t['tokens_per_s_per_worker']:.0f} ({runs}) | "
              f"{t['step_s'] * 1000:.0f} | {t['grad_hook_s'] * 1000:.1f} | "
              f"{t['tokens_per_s_per_worker'] / base:.2f} |")
    print()
    print("| message | all-reduce ms | algbw GB/s | busbw GB/s | memcpy GB/s |")
    print("|---|---|---|---|---|")
    for a in r["allreduce"]:
        size = a["bytes"]
        name = f"{size / 1048576:.0f} MB" if size >= 1048576 else f"{size / 1024:.0f} KB"
        print(f"| {name} | {a['seconds'] * 1000:.2f} | {a['algbw_GBps']:.3f} | "
              f"{a['busbw_GBps']:.3f} | {a['memcpy_GBps']:.1f} |")
    print()
    print("| fault | workers that finished | exit codes | time to stop | what the survivors said |")
    print("|---|---|---|---|---|")
    for name, s in r["time_to_stop"].items():
        stop = f"{s['stop_s']:.2f} s" if s["stop_s"] is not None else \
            f"- (the others ran to the end, {s['others_ran_s']:.1f} s)"
        print(f"| {name} | {s['finished']} of {s['of']} | {s['exit_codes']} | {stop} | "
              f"{s.get('error', '').replace('|', '/')} |")
    print()
    print(f"| workers | 100 Gb/s: all-reduce ms | tax | tax, compute {GPU_SPEEDUP}x faster | "
          f"400 Gb/s: all-reduce ms | tax | tax, compute {GPU_SPEEDUP}x faster |")
    print("|---|---|---|---|---|---|---|")
    for p in r["projection"]:
        print(f"| {p['workers']} | {p['100Gbps_comm_s'] * 1000:.2f} | {p['100Gbps_tax'] * 100:.1f}% | "
              f"{p['100Gbps_tax_fast_compute'] * 100:.1f}% | {p['400Gbps_comm_s'] * 1000:.2f} | "
              f"{p['400Gbps_tax'] * 100:.1f}% | {p['400Gbps_tax_fast_compute'] * 100:.1f}% |")


if __name__ == "__main__":
    main()
