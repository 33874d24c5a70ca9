#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""btx-merge against a plain copy and mergekit-moe, side by side in one run.

For each size (about 1 GB and 3 GB per input) and dtype (float32, bfloat16) it writes three
random HF Llama checkpoints, warms them into the page cache, and then, repeats times in
turn, times
  copy        read every input byte and write as many bytes as the merged output has, fsync
  btx-merge   BTX mix into a 3-expert top-2 Mixtral (gate_mode random)
  mergekit    mergekit-moe on the same config (installed into its own venv, torch first)
reporting the median seconds, peak RSS (/usr/bin/time -v; goal for btx-merge: 2 x the
largest output tensor + 200 MB) and the ratios copy/btx (goal >= 0.7) and mergekit/btx
(goal >= 3). Inputs stay in --work for the next run; outputs are deleted.

  python3 benchmarks/merge_throughput.py [--sizes 1,3] [--dtypes float32,bfloat16]
      [--repeats 3] [--work DIR] [--btx-merge build/bin/btx-merge] [--no-mergekit]
      [--write-threads 1,0,2] [--no-fsync-variant] [--buffered-variant] [--unchecked-variant]
      [--max-shard-size 5GB]
--write-threads times btx-merge once per value in each repeat; the first is the headline
(compared with copy and mergekit), the others are reported as seconds and as ratios to it.
--no-fsync-variant also times btx-merge --no-fsync (headline threads): like mergekit-moe,
it then returns before the disk has the data, which is where a slow disk dominates. It adds
the like-for-like pairs too: the copy without its fsync, and mergekit-moe followed by an
fsync of every file it wrote (the time until its output is as durable as btx-merge's), and
the disk's own time for the output's bytes (written from memory, fsync; the faster of page
cache and O_DIRECT): no tool whose output is durable finishes sooner, so mergekit/disk is
the highest mergekit/btx the machine allows; the second table prints it. (The plain copy
is no such bound: it leaves the disk idle until its fsync, which btx-merge does not.)
--buffered-variant also times btx-merge --no-direct-io: its output through the page cache,
each tensor started to disk as written, instead of O_DIRECT writes.
--unchecked-variant also times btx-merge --allow-non-finite: the cost of the NaN/Inf scan
is the headline's time over this one's (goal: under 5%).
"""
import argparse
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Llama shapes whose fp32 checkpoint is about 1 GB / 3 GB (bf16: half).
SHAPES = {
    1: dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16,
            num_attention_heads=16, num_key_value_heads=16, vocab_size=32000),
    3: dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=12,
            num_attention_heads=16, num_key_value_heads=16, vocab_size=32000),
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def mergekit_venv(work):
    """A venv with torch==2.13.0 (first, so pip takes the CPU wheel) and mergekit."""
    venv = os.path.join(work, "mergekit-venv")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(os.path.join(venv, "bin", "mergekit-moe")):
        log("installing mergekit into", venv)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "mergekit"], check=True)
    return os.path.join(venv, "bin", "mergekit-moe"), py


def write_checkpoint(path, shape, dtype, seed, py):
    """A random HF Llama folder (config.json, model.safetensors, a word-level tokenizer)."""
    script = r"""
import json, os, sys, torch
from safetensors.torch import save_file
path, shape, dtype, seed = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
os.makedirs(path, exist_ok=True)
D, F, L, V = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"], shape["vocab_size"]
g = torch.Generator().manual_seed(seed)
dt = getattr(torch, dtype)
def w(*s): return (torch.randn(*s, generator=g) * 0.02).to(dt)
t = {"model.embed_tokens.weight": w(V, D), "lm_head.weight": w(V, D), "model.norm.weight": torch.ones(D, dtype=dt)}
for i in range(L):
    p = f"model.layers.{i}."
    for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
        t[p + f"self_attn.{n}.weight"] = w(D, D)
    t[p + "mlp.gate_proj.weight"] = w(F, D)
    t[p + "mlp.up_proj.weight"] = w(F, D)
    t[p + "mlp.down_proj.weight"] = w(D, F)
    t[p + "input_layernorm.weight"] = torch.ones(D, dtype=dt)
    t[p + "post_attention_layernorm.weight"] = torch.ones(D, dtype=dt)
save_file(t, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
config = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
              max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
              tie_word_embeddings=False, torch_dtype=dtype, bos_token_id=1, eos_token_id=2, **shape)
json.dump(config, open(os.path.join(path, "config.json"), "w"), indent=2)
from tokenizers import Tokenizer, models, pre_tokenizers
vocab = {f"t{i}": i for i in range(V)}
vocab["<unk>"] = 0
tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
tok.save(os.path.join(path, "tokenizer.json"))
json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>",
           "bos_token": "t1", "eos_token": "t2"},
          open(os.path.join(path, "tokenizer_config.json"), "w"))
"""
    subprocess.run([py, "-c", script, path, json.dumps(shape), dtype, str(seed)], check=True)


def largest_tensor_bytes(path):
    """The largest tensor of a folder's safetensors files (from their headers)."""
    import struct
    largest = 0
    for f in os.listdir(path):
        if f.endswith(".safetensors"):
            with open(os.path.join(path, f), "rb") as fh:
                n = struct.unpack("<Q", fh.read(8))[0]
                header = json.loads(fh.read(n))
            for name, info in header.items():
                if name != "__metadata__":
                    largest = max(largest, info["data_offsets"][1] - info["data_offsets"][0])
    return largest


def folder_bytes(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
               if f.endswith(".safetensors"))


def warm(paths):
    for p in paths:
        for f in os.listdir(p):
            with open(os.path.join(p, f), "rb") as fh:
                while fh.read(64 << 20):
                    pass


def timed(cmd, env=None):
    """(seconds, peak RSS MB) of cmd under /usr/bin/time -v."""
    start = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed:\n{r.stderr[-3000:]}")
    rss = next(int(line.split()[-1]) for line in r.stderr.splitlines()
               if "Maximum resident set size" in line)
    return seconds, rss / 1024


def fsync_folder(path):
    """Seconds to fsync every file under path and path itself."""
    start = time.perf_counter()
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def disk_write_buffered(out_file, out_bytes):
    """Seconds to put out_bytes on the disk through the page cache: 64 MB writes from
    memory, each started to disk at once (sync_file_range), then fsync."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    sync_file_range_write = 2  # SYNC_FILE_RANGE_WRITE
    chunk = b"\1" * (64 << 20)
    start = time.perf_counter()
    fd = os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        done = 0
        while done < out_bytes:
            n = os.write(fd, memoryview(chunk)[:min(len(chunk), out_bytes - done)])
            libc.sync_file_range(fd, done, n, sync_file_range_write)
            done += n
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def disk_write_direct(out_file, out_bytes):
    """Seconds to put out_bytes on the disk with O_DIRECT: 64 MB writes from one aligned
    buffer (the last one padded, then truncated), then fsync. None where the filesystem
    refuses O_DIRECT."""
    import mmap
    chunk = mmap.mmap(-1, 64 << 20)  # page-aligned, as O_DIRECT needs
    chunk.write(b"\1" * len(chunk))
    start = time.perf_counter()
    try:
        fd = os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    except OSError:
        return None
    try:
        done = 0
        while done < out_bytes:
            n = min(len(chunk), -(-(out_bytes - done) // 4096) * 4096)
            done += os.write(fd, memoryview(chunk)[:n])
        os.ftruncate(fd, out_bytes)
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def disk_write(out_file, out_bytes):
    """Seconds to put out_bytes on the disk with nothing to read or compute, the faster of
    the two ways (through the page cache, or O_DIRECT; which one wins depends on the
    machine: O_DIRECT was 2x slower on one, 1.5-2x faster on another), and both."""
    both = {}
    for name, way in (("buffered", disk_write_buffered), ("direct", disk_write_direct)):
        seconds = way(out_file, out_bytes)
        os.remove(out_file) if os.path.exists(out_file) else None
        if seconds is not None:
            both[name] = seconds
    return min(both.values()), both


def plain_copy(inputs, out_file, out_bytes, durable=True):
    """Read every input byte; write out_bytes of them to out_file; fsync (if durable)."""
    start = time.perf_counter()
    left = out_bytes
    fd = os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for p in inputs:
            with open(os.path.join(p, "model.safetensors"), "rb") as fh:
                while True:
                    chunk = fh.read(16 << 20)
                    if not chunk:
                        break
                    if left > 0:
                        n = min(left, len(chunk))
                        os.write(fd, chunk[:n])
                        left -= n
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="1,3")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", default=os.path.join(ROOT, "build", "merge-throughput"))
    ap.add_argument("--btx-merge", default=os.path.join(ROOT, "build", "bin", "btx-merge"))
    ap.add_argument("--no-mergekit", action="store_true")
    ap.add_argument("--write-threads", default="1",
                    help="btx-merge --write-threads values, headline first")
    ap.add_argument("--no-fsync-variant", action="store_true")
    ap.add_argument("--buffered-variant", action="store_true",
                    help="also time btx-merge --no-direct-io (page-cache writes)")
    ap.add_argument("--unchecked-variant", action="store_true",
                    help="also time btx-merge --allow-non-finite (no NaN/Inf scan)")
    ap.add_argument("--max-shard-size", default="",
                    help="btx-merge and mergekit max_shard_size (default: theirs)")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    mergekit, py = (None, sys.executable) if args.no_mergekit else mergekit_venv(args.work)
    env = dict(os.environ, OMP_NUM_THREADS=str(os.cpu_count()))
    variants = [int(v) for v in args.write_threads.split(",")]
    label = {v: "btx-merge" if k == 0 else f"btx-merge wt={v}" for k, v in enumerate(variants)}
    flags = {v: [] for v in variants}
    if args.no_fsync_variant:
        variants.append("no-fsync")
        label["no-fsync"] = "btx-merge no-fsync"
        flags["no-fsync"] = ["--no-fsync"]
    if args.buffered_variant:
        variants.append("buffered")
        label["buffered"] = "btx-merge buffered"
        flags["buffered"] = ["--no-direct-io"]
    if args.unchecked_variant:
        variants.append("unchecked")
        label["unchecked"] = "btx-merge unchecked"
        flags["unchecked"] = ["--allow-non-finite"]
    threads = {v: (variants[0] if isinstance(v, str) else v) for v in variants}
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        for dtype in args.dtypes.split(","):
            case = os.path.join(args.work, f"{size}gb-{dtype}")
            inputs = [os.path.join(case, f"expert{j}") for j in range(3)]
            for j, p in enumerate(inputs):
                if not os.path.exists(os.path.join(p, "model.safetensors")):
                    log("writing", p)
                    write_checkpoint(p, SHAPES[size], dtype, j, py)
                for f in ("tokenizer.json", "tokenizer_config.json"):  # one tokenizer for all
                    shutil.copyfile(os.path.join(inputs[0], f), os.path.join(p, f)) if j else None
            config = os.path.join(case, "merge.yaml")
            with open(config, "w") as f:
                f.write(f"base_model: {inputs[0]}\ngate_mode: random\nexperts_per_token: 2\n"
                        f"dtype: {dtype}\nexperts:\n")
                if args.max_shard_size:
                    f.write(f"max_shard_size: {args.max_shard_size}\n")
                for p in inputs:
                    f.write(f"  - source_model: {p}\n")
            out = os.path.join(case, "out")
            times = {"copy": [], **{label[v]: [] for v in variants}, "mergekit": []}
            if args.no_fsync_variant:
                times.update({"copy no-fsync": [], "mergekit + fsync": [], "disk write": []})
            rss = {**{label[v]: [] for v in variants}, "mergekit": []}
            out_bytes = None
            for rep in range(args.repeats):
                for v in variants:
                    warm(inputs)
                    shutil.rmtree(out, ignore_errors=True)
                    s, m = timed([args.btx_merge, "--write-threads", str(threads[v]), *flags[v],
                                  config, out], env)
                    times[label[v]].append(s)
                    rss[label[v]].append(m)
                    out_bytes = folder_bytes(out)
                    largest = largest_tensor_bytes(out)
                    shutil.rmtree(out)
                warm(inputs)
                times["copy"].append(plain_copy(inputs, os.path.join(case, "copy.bin"), out_bytes))
                os.remove(os.path.join(case, "copy.bin"))
                if args.no_fsync_variant:
                    best, both = disk_write(os.path.join(case, "disk.bin"), out_bytes)
                    times["disk write"].append(best)
                    for way, seconds in both.items():
                        times.setdefault(f"disk write {way}", []).append(seconds)
                    warm(inputs)
                    times["copy no-fsync"].append(
                        plain_copy(inputs, os.path.join(case, "copy.bin"), out_bytes, durable=False))
                    os.remove(os.path.join(case, "copy.bin"))
                if mergekit:
                    warm(inputs)
                    s, m = timed([mergekit, config, out, "--device", "cpu", "--lazy-unpickle"],
                                 env)
                    times["mergekit"].append(s)
                    rss["mergekit"].append(m)
                    if args.no_fsync_variant:
                        times["mergekit + fsync"].append(s + fsync_folder(out))
                    shutil.rmtree(out, ignore_errors=True)
                log(f"{size} GB {dtype} run {rep + 1}: " +
                    ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items() if v))
            med = {k: statistics.median(v) for k, v in times.items() if v}
            row = dict(size_gb=size, dtype=dtype, input_mb=folder_bytes(inputs[0]) / 1e6,
                       output_mb=out_bytes / 1e6, repeats=args.repeats,
                       seconds=med, peak_rss_mb={k: max(v) for k, v in rss.items() if v},
                       copy_over_btx=med["copy"] / med["btx-merge"],
                       rss_goal_mb=(2 * largest + 200e6) / 1e6, write_threads=variants,
                       max_shard_size=args.max_shard_size or None,
                       variant_over_headline={label[v]: med[label[v]] / med["btx-merge"]
                                              for v in variants[1:]})
            if "mergekit" in med:
                row["mergekit_over_btx"] = med["mergekit"] / med["btx-merge"]
            if args.no_fsync_variant and "mergekit" in med:
                nf = label["no-fsync"]
                row["like_for_like"] = {
                    "durable": {"copy_over_btx": med["copy"] / med["btx-merge"],
                                "mergekit_fsync_over_btx": med["mergekit + fsync"] / med["btx-merge"],
                                "mergekit_fsync_over_copy": med["mergekit + fsync"] / med["copy"],
                                "disk_over_btx": med["disk write"] / med["btx-merge"],
                                "bound_mergekit_over_disk": med["mergekit"] / med["disk write"]},
                    "not_durable": {"copy_over_btx": med["copy no-fsync"] / med[nf],
                                    "mergekit_over_btx": med["mergekit"] / med[nf],
                                    "mergekit_over_copy": med["mergekit"] / med["copy no-fsync"]}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| input | dtype | output MB | copy s | btx-merge s | mergekit-moe s | copy/btx "
          "(goal >= 0.7) | mergekit/btx (goal >= 3) | btx peak RSS MB (goal) | mergekit peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["seconds"]
        print(f"| {r['input_mb']:.0f} MB | {r['dtype']} | {r['output_mb']:.0f} | {s['copy']:.2f} | "
              f"{s['btx-merge']:.2f} | {s.get('mergekit', float('nan')):.2f} | "
              f"{r['copy_over_btx']:.2f} | {r.get('mergekit_over_btx', float('nan')):.2f} | "
              f"{r['peak_rss_mb'].get('btx-merge', 0):.0f} (<= {r['rss_goal_mb']:.0f}) | "
              f"{r['peak_rss_mb'].get('mergekit', 0):.0f} |")
    if any("like_for_like" in r for r in rows):
        print("\nLike for like (medians): durable = fsync before returning (btx-merge's default; "
              "mergekit-moe + an fsync of its output), not durable = without (btx-merge "
              "--no-fsync; mergekit-moe as it is). disk = the output's bytes written from memory "
              "and fsynced (benchmarks' disk_write): no durable output is complete much sooner, "
              "so mergekit/disk bounds the headline mergekit/btx on this machine.\n")
        print("| input | dtype | disk s | durable: copy/btx | durable: disk/btx | "
              "durable: mergekit+fsync/btx | mergekit/disk (bound of mergekit/btx) | "
              "not durable: copy/btx | not durable: mergekit/btx |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            if "like_for_like" not in r:
                continue
            d, n = r["like_for_like"]["durable"], r["like_for_like"]["not_durable"]
            print(f"| {r['input_mb']:.0f} MB | {r['dtype']} | {r['seconds']['disk write']:.2f} | "
                  f"{d['copy_over_btx']:.2f} | {d['disk_over_btx']:.2f} | "
                  f"{d['mergekit_fsync_over_btx']:.2f} | {d['bound_mergekit_over_disk']:.2f} | "
                  f"{n['copy_over_btx']:.2f} | {n['mergekit_over_btx']:.2f} |")


if __name__ == "__main__":
    main()
