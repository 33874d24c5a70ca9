# SPDX-License-Identifier: MIT
# Memory and time of sharded data parallelism (issue 39, item 5), measured side by side in
# one run with build/bin/btx-sharding-bench: peak resident memory per rank against world
# size 1/2/4 for each sharding mode (none, optimizer = ZeRO-1, gradients = ZeRO-2,
# full = ZeRO-3) on SmolLM2-135M's shape and its 4-expert top-2 MoE, step time against plain
# data parallelism at the same world size, and what activation checkpointing saves against
# what its recompute costs. Ranks are real processes over Gloo on this host (torchrun's
# variables), one thread each. A configuration whose replicated state alone would not fit
# this host's memory is not started, and the table says so.
# Writes benchmarks/results/sharding_bench.json and prints the Markdown for RESULTS.md.
#   python3 benchmarks/sharding_bench.py [--bench build/bin/btx-sharding-bench] [--steps 4]
import argparse
import json
import os
import socket
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = ["none", "optimizer", "gradients", "full"]
PARAMS = {"dense": 134.5e6, "moe": 373.4e6}  # SmolLM2-135M; with 4 experts per layer


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_memory_mb():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024
    return 0


def run(bench, world, args):
    port = free_port()
    procs = []
    for r in range(world):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(r), "WORLD_SIZE": str(world),
               "LOCAL_RANK": str(r), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        if world == 1:
            for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
                env.pop(k)
        procs.append(subprocess.Popen([bench, *args], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    lines = []
    for p in procs:
        out, err = p.communicate(timeout=3600)
        if p.returncode != 0:
            raise RuntimeError(f"{bench} {' '.join(args)} (world {world}) failed:\n{err[-3000:]}")
        lines += [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default=os.path.join("build", "bin", "btx-sharding-bench"))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--worlds", default="1,2,4")
    ap.add_argument("--models", default="dense,moe")
    opts = ap.parse_args()
    memory_mb = host_memory_mb()
    results = []
    common = ["--steps", str(opts.steps), "--seq", str(opts.seq)]
    for model in opts.models.split(","):
        flags = ["--moe"] if model == "moe" else []
        for world in [int(w) for w in opts.worlds.split(",")]:
            for mode in (["none"] if world == 1 else MODES):
                # fp32 weights, gradients and two AdamW moments: 16 bytes a parameter.
                replicated_mb = PARAMS[model] * 16 / 2**20
                state_mb = {"none": 16, "optimizer": 8 + 8 / world, "gradients": 4 + 12 / world,
                            "full": 16 / world}[mode] * PARAMS[model] / 2**20
                if world * (state_mb + 2 * PARAMS[model] * 4 / 2**20) > 0.85 * memory_mb:
                    results.append({"model": model, "world": world, "sharding": mode,
                                    "skipped": f"~{world * state_mb / 1024:.0f} GB of state "
                                               f"alone on a {memory_mb / 1024:.0f} GB host"})
                    print(f"{model} world {world} {mode}: skipped", file=sys.stderr)
                    continue
                lines = run(opts.bench, world, [*flags, "--sharding", mode, *common])
                peak = max(l["peak_rss_mb"] for l in lines)
                step = max(l["median_step_s"] for l in lines)
                results.append({"model": model, "world": world, "sharding": mode,
                                "peak_rss_mb": peak, "median_step_s": step,
                                "rss_before_model_mb": lines[0]["rss_before_model_mb"],
                                "parameters": lines[0]["parameters"],
                                "replicated_state_mb": replicated_mb, "ranks": lines})
                print(f"{model} world {world} {mode}: peak {peak:.0f} MB, step {step:.2f} s",
                      file=sys.stderr)
    checkpointing = []
    for ac in (False, True):
        args = ["--sharding", "none", "--steps", str(opts.steps), "--seq", str(4 * opts.seq),
                "--batch", "2"] + (["--checkpoint-activations"] if ac else [])
        line = run(opts.bench, 1, args)[0]
        checkpointing.append(line)
        print(f"activation checkpointing {ac}: peak {line['peak_rss_mb']:.0f} MB, step "
              f"{line['median_step_s']:.2f} s", file=sys.stderr)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "sharding_bench.json"), "w") as f:
        json.dump({"runs": results, "activation_checkpointing": checkpointing}, f, indent=1)

    print("| model | world | sharding | peak RSS per rank (MB) | vs none | step (s) | vs none |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        if "skipped" in r:
            print(f"| {r['model']} | {r['world']} | {r['sharding']} | not run: {r['skipped']} "
                  "| | | |")
            continue
        base = next((b for b in results if b["model"] == r["model"] and b["world"] == r["world"]
                     and b["sharding"] == "none" and "skipped" not in b), None)
        mem = f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}" if base else "n/a"
        time = f"{r['median_step_s'] / base['median_step_s']:.2f}" if base else "n/a"
        print(f"| {r['model']} | {r['world']} | {r['sharding']} | {r['peak_rss_mb']:.0f} | {mem} "
              f"| {r['median_step_s']:.2f} | {time} |")
    off, on = checkpointing
    print(f"\nActivation checkpointing (world 1, {off['batch_per_rank']} x {off['seq']} tokens): "
          f"peak {off['peak_rss_mb']:.0f} -> {on['peak_rss_mb']:.0f} MB "
          f"({on['peak_rss_mb'] / off['peak_rss_mb']:.2f}x), step {off['median_step_s']:.2f} -> "
          f"{on['median_step_s']:.2f} s ({on['median_step_s'] / off['median_step_s']:.2f}x)")


if __name__ == "__main__":
    main()
