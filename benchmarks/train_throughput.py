#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Training throughput at real scale: btx-train against transformers, side by side in one run.

SmolLM2-135M (the real seed, tools/btx-pipeline/presets/real_seed/fetch_seed.py) dense, and
a 4-expert top-2 Mixtral of it (btx-merge: four copies of its FFN, a random router), each in
fp32 and in bf16 mixed precision (fp32 weights and AdamW state, bf16 autocast), trained on
the same token windows (batch x seq_len, default 4 x 256) with the same optimizer (AdamW,
betas 0.9/0.95, weight decay 0.1, grad-norm clip 1.0, the MoE's load-balancing loss) at the
same thread count, each in its own process:

  btx           build/bin/btx-train with OMP_NUM_THREADS=T and log_every 1
  transformers  AutoModelForCausalLM in a plain loop, torch.set_num_threads(T), and
                torch.autocast("cpu", bfloat16) for bf16-mixed

For each it reports tokens/s (the median step after --warmup steps), peak RSS (the child's
ru_maxrss), and achieved FLOP/s (btx's training-FLOPs-per-token estimate, Kaplan's
6N + attention, times tokens/s) against the machine's peak measured by a matmul probe
(the best of square fp32 / bf16 matmuls at T threads). Cases rotate per repeat so machine
load falls on all alike; ratios are btx over transformers.

  python3 benchmarks/train_throughput.py [--threads 1,2] [--models dense,moe]
      [--precisions fp32,bf16-mixed] [--steps 8] [--warmup 3] [--repeats 1]
      [--btx-train build/bin/btx-train] [--btx-merge build/bin/btx-merge]
      [--seed build/real-seed/SmolLM2-135M-Instruct] [--work /tmp/btx-train-throughput]
      [--json OUT.json] [--label NAME=PATH ...]
--label NAME=PATH adds another btx-train binary (e.g. an older build) as a column.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def timed_child(argv, env=None):
    """Like run_child, with the child's own peak RSS from wait4 (not the running maximum)."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    # Read both pipes until EOF without deadlocking, then reap with wait4 for its rusage.
    chunks = {"out": [], "err": []}

    def pump(stream, key):
        for block in iter(lambda: stream.read(65536), b""):
            chunks[key].append(block)

    threads = [threading.Thread(target=pump, args=(p.stdout, "out")),
               threading.Thread(target=pump, args=(p.stderr, "err"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _, status, usage = os.wait4(p.pid, 0)
    out = b"".join(chunks["out"]).decode()
    err = b"".join(chunks["err"]).decode()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({code}):\n{err[-3000:]}")
    return out, err, usage.ru_maxrss / 1024


def thread_env(threads):
    # BTX_PYTHON: btx-train reads tokenizer.json through the `tokenizers` of this Python.
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               BTX_PYTHON=os.environ.get("BTX_PYTHON", sys.executable))
    env.pop("BTX_THREADS", None)
    return env


# ---------------------------------------------------------------- preparation

def data_config(args, work):
    return {"name": "text", "paths": [os.path.join(work, "docs")], "extensions": [".txt"]}


def write_documents(work):
    """Real text both sides train on: the machine's licence texts and C headers."""
    docs = os.path.join(work, "docs")
    if os.path.isdir(docs):
        return
    os.makedirs(docs + ".tmp", exist_ok=True)
    sources = sorted(os.path.join("/usr/share/common-licenses", f)
                     for f in os.listdir("/usr/share/common-licenses"))
    sources += sorted(os.path.join("/usr/include", f) for f in os.listdir("/usr/include")
                      if f.endswith(".h"))[:150]
    for k, path in enumerate(sources):
        if not os.path.isfile(path):
            continue
        with open(path, errors="replace") as f, open(os.path.join(docs + ".tmp", f"{k:04d}.txt"), "w") as g:
            g.write(f.read())
    os.rename(docs + ".tmp", docs)


def write_yaml_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def prepare(args):
    """The MoE checkpoint (btx-merge, once) and the token windows both sides train on."""
    os.makedirs(args.work, exist_ok=True)
    moe = os.path.join(args.work, "moe-4x2")
    if not os.path.exists(os.path.join(moe, "config.json")):
        cfg = os.path.join(args.work, "merge.json")
        write_yaml_json(cfg, {"base_model": args.seed,
                              "experts": [{"source_model": args.seed}] * 4,
                              "experts_per_token": 2, "gate_mode": "random"})
        log(f"[bench] btx-merge: 4-expert top-2 Mixtral of the seed -> {moe}")
        subprocess.run([args.btx_merge, cfg, moe], check=True, stdout=subprocess.DEVNULL)
    # The windows: the documents btx-train reads, as its tokenizer ids.
    write_documents(args.work)
    windows = os.path.join(args.work, "windows.json")
    if not os.path.exists(windows):
        cfg = os.path.join(args.work, "show.json")
        write_yaml_json(cfg, {"model": args.seed, "run_dir": os.path.join(args.work, "show"),
                              "domains": [data_config(args, args.work)]})
        out = subprocess.run([args.btx_train, cfg, "--show-documents", "400"], check=True,
                             capture_output=True, text=True, env=thread_env(1)).stdout
        ids = []
        for line in out.splitlines():
            line = line.strip()
            if line.startswith("{"):
                ids.extend(json.loads(line)["ids"])
        need = (args.steps + 1) * args.batch * (args.seq_len + 1)
        if not ids:
            sys.exit("btx-train --show-documents printed no documents")
        while len(ids) < need:
            ids = ids + ids
        with open(windows, "w") as f:
            json.dump(ids, f)
    return {"dense": args.seed, "moe": moe}


# ---------------------------------------------------------------- the two sides

def btx_case(binary, model, precision, threads, args, tag):
    run_dir = os.path.join(args.work, f"run-{tag}-{os.path.basename(model)}-{precision}-{threads}")
    subprocess.run(["rm", "-rf", run_dir], check=True)
    cfg = os.path.join(args.work, f"train-{tag}.json")
    write_yaml_json(cfg, {
        "model": model, "run_dir": run_dir, "domains": [data_config(args, args.work)],
        "cache_dir": os.path.join(args.work, "token-cache"),
        "steps": args.steps, "lr": 1e-4, "warmup": 1, "batch_size": args.batch,
        "seq_len": args.seq_len, "precision": precision, "log_every": 1,
        "held_out_windows": 1, "routing_windows": 1})
    _, err, rss = timed_child([binary, cfg], env=thread_env(threads))
    rates = []
    with open(os.path.join(run_dir, "train", "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "tokens_per_s" in r:
                rates.append(r["tokens_per_s"])
    subprocess.run(["rm", "-rf", run_dir], check=True)
    return rates, rss


HF_WORKER = r"""
import json, sys, time, torch
from transformers import AutoModelForCausalLM
model_dir, precision, threads, steps, batch, seq, windows = sys.argv[1:8]
threads, steps, batch, seq = int(threads), int(steps), int(batch), int(seq)
torch.set_num_threads(threads)
torch.manual_seed(0)
ids = torch.tensor(json.load(open(windows)), dtype=torch.long)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
model.train()
moe = hasattr(model.config, "num_local_experts")
decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
other = [p for n, p in model.named_parameters() if p.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                         {"params": other, "weight_decay": 0.0}], lr=1e-4, betas=(0.9, 0.95))
per = batch * (seq + 1)
rates = []
for step in range(steps):
    chunk = ids[step * per:(step + 1) * per].view(batch, seq + 1)
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
        out = model(input_ids=chunk[:, :-1], output_router_logits=moe) if moe else \
            model(input_ids=chunk[:, :-1])
        loss = torch.nn.functional.cross_entropy(
            out.logits.float().reshape(-1, out.logits.shape[-1]), chunk[:, 1:].reshape(-1))
        if moe:  # the load-balancing loss, as btx adds it
            loss = loss + model.config.router_aux_loss_coef * out.aux_loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    float(loss)
    rates.append(batch * seq / (time.perf_counter() - t0))
print(json.dumps(rates))
"""


def hf_case(model, precision, threads, args):
    out, _, rss = timed_child([sys.executable, "-c", HF_WORKER, model, precision, str(threads),
                               str(args.steps), str(args.batch), str(args.seq_len),
                               os.path.join(args.work, "windows.json")],
                              env=thread_env(threads))
    return json.loads(out.strip().splitlines()[-1]), rss


PROBE = r"""
import sys, time, torch
threads = int(sys.argv[1])
torch.set_num_threads(threads)
best = {}
for dtype in (torch.float32, torch.bfloat16):
    for n in (1024, 2048):
        a = torch.randn(n, n, dtype=dtype); b = torch.randn(n, n, dtype=dtype)
        for _ in range(2): a @ b
        reps = 8 if n == 1024 else 3
        t0 = time.perf_counter()
        for _ in range(reps): a @ b
        rate = 2 * n ** 3 * reps / (time.perf_counter() - t0)
        key = str(dtype).split(".")[-1]
        best[key] = max(best.get(key, 0.0), rate)
print(best["float32"], best["bfloat16"])
"""


def matmul_peak(threads):
    out, _, _ = timed_child([sys.executable, "-c", PROBE, str(threads)], env=thread_env(threads))
    fp32, bf16 = map(float, out.split())
    return {"fp32": fp32, "bf16-mixed": bf16}


def flops_per_token(config, seq_len):
    """btx's train/flops.hpp estimate: 3 x (2 x matmul params + attention) per token."""
    D, F, L = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    H, G, V = config["num_attention_heads"], config["num_key_value_heads"], config["vocab_size"]
    A = config.get("head_dim") or D // H
    E = config.get("num_local_experts", 1)
    k = config.get("num_experts_per_tok", 1)
    per_layer = D * A * (2 * H + 2 * G) + 3 * D * F * k + (D * E if E > 1 else 0)
    matmul = L * per_layer + V * D
    attention = 2 * L * seq_len * H * A
    return 3 * (2 * matmul + attention)


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--models", default="dense,moe")
    ap.add_argument("--precisions", default="fp32,bf16-mixed")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3, help="steps left out of the median")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--btx-train", default=os.path.join(ROOT, "build/bin/btx-train"))
    ap.add_argument("--btx-merge", default=os.path.join(ROOT, "build/bin/btx-merge"))
    ap.add_argument("--seed", default=os.path.join(ROOT, "build/real-seed/SmolLM2-135M-Instruct"))
    ap.add_argument("--work", default="/tmp/btx-train-throughput")
    ap.add_argument("--json", help="write every measurement here")
    ap.add_argument("--label", action="append", default=[],
                    help="NAME=PATH: another btx-train binary to time as well")
    ap.add_argument("--no-transformers", action="store_true")
    args = ap.parse_args()
    if args.warmup >= args.steps:
        sys.exit("--warmup must be below --steps")
    if not os.path.exists(os.path.join(args.seed, "config.json")):
        sys.exit(f"no seed at {args.seed}: run tools/btx-pipeline/presets/real_seed/fetch_seed.py "
                 f"{args.seed} --btx-interop build/bin/btx-interop (or cmake/quickstart.sh real-seed)")
    models = prepare(args)
    sides = [("btx", args.btx_train)] + [tuple(l.split("=", 1)) for l in args.label]
    if not args.no_transformers:
        sides.append(("transformers", None))
    threads_list = [int(t) for t in args.threads.split(",")]
    cases = [(m, p, t) for t in threads_list for m in args.models.split(",")
             for p in args.precisions.split(",")]
    peaks = {t: matmul_peak(t) for t in threads_list}
    results = {}
    for rep in range(args.repeats):
        for ci, (m, p, t) in enumerate(cases):
            order = sides[ci % len(sides):] + sides[:ci % len(sides)]  # rotate who goes first
            for name, binary in order:
                log(f"[bench] repeat {rep + 1}: {name} {m} {p} {t} thread(s)")
                if binary is None:
                    rates, rss = hf_case(models[m], p, t, args)
                else:
                    rates, rss = btx_case(binary, models[m], p, t, args, name)
                r = results.setdefault((m, p, t, name), {"tok_s": [], "rss_mb": []})
                r["tok_s"].append(statistics.median(rates[args.warmup:]))
                r["rss_mb"].append(rss)
                log(f"[bench]   {r['tok_s'][-1]:.0f} tok/s, peak RSS {rss:.0f} MB")

    configs = {m: json.load(open(os.path.join(models[m], "config.json"))) for m in models}
    names = [n for n, _ in sides]
    # Ratios: btx over each other side (transformers, and any --label binary).
    others = [n for n in names if n != "btx"]
    header = (["model", "precision", "threads"] + [f"{n} tok/s" for n in names] +
              [f"btx/{n}" for n in others] + [f"{n} RSS MB" for n in names] +
              ["btx TFLOP/s (of matmul peak)"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table = []
    for (m, p, t) in cases:
        tok = {n: statistics.median(results[(m, p, t, n)]["tok_s"]) for n in names}
        rss = {n: max(results[(m, p, t, n)]["rss_mb"]) for n in names}
        fpt = flops_per_token(configs[m], args.seq_len)
        achieved = tok["btx"] * fpt
        table.append({"model": m, "precision": p, "threads": t, "tok_s": tok, "rss_mb": rss,
                      "all_tok_s": {n: results[(m, p, t, n)]["tok_s"] for n in names},
                      "flops_per_token": fpt, "btx_flop_s": achieved,
                      "peak_flop_s": peaks[t][p]})
        cells = ([m, p, str(t)] + [f"{tok[n]:.0f}" for n in names] +
                 [f"{tok['btx'] / tok[n]:.2f}x" for n in others] +
                 [f"{rss[n]:.0f}" for n in names] +
                 [f"{achieved / 1e12:.3f} ({achieved / peaks[t][p]:.0%})"])
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    print()
    for t in threads_list:
        print(f"matmul peak at {t} thread(s): fp32 {peaks[t]['fp32'] / 1e9:.0f} GFLOP/s, "
              f"bf16 {peaks[t]['bf16-mixed'] / 1e9:.0f} GFLOP/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cases": table, "peaks": {str(k): v for k, v in peaks.items()},
                       "steps": args.steps, "warmup": args.warmup, "batch": args.batch,
                       "seq_len": args.seq_len, "date": time.strftime("%Y-%m-%d %H:%M")}, f,
                      indent=1)


if __name__ == "__main__":
    main()
