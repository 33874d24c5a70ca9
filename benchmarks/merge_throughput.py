# SPDX-License-Identifier: MIT
"""btx-merge throughput and peak memory against a plain copy of the same bytes.

Generates N dense Llama checkpoints of about SIZE GB each (random fp32 weights, one
model.safetensors each), then, in one run:
  (i)  plain copy: reads every input byte once and writes output-sized bytes once (fsync'd),
  (ii) btx-merge: the N checkpoints -> one Mixtral (BTX mix, random router), fsync'd by the
       tool's atomic commit;
and reports the throughput ratio copy_time / merge_time (goal >= 0.5) and btx-merge's peak
RSS (goal <= 2 x the largest tensor it holds + 200 MB). Everything is deleted afterwards.

  /work/main/.venv/bin/python benchmarks/merge_throughput.py --merge build/bin/btx-merge
Needs torch and safetensors (the interop tests' Python).
"""
import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import time

import torch
from safetensors.torch import save_file


def llama_config(hidden, inter, layers, vocab):
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
            "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": 16,
            "num_key_value_heads": 4, "head_dim": hidden // 16, "vocab_size": vocab,
            "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "tie_word_embeddings": False, "hidden_act": "silu", "dtype": "float32"}


def generate(path, seed, hidden, inter, layers, vocab):
    g = torch.Generator().manual_seed(seed)
    kv = hidden // 4
    t = {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden),
         "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t.update({p + "input_layernorm.weight": (hidden,),
                  p + "post_attention_layernorm.weight": (hidden,),
                  p + "self_attn.q_proj.weight": (hidden, hidden),
                  p + "self_attn.k_proj.weight": (kv, hidden),
                  p + "self_attn.v_proj.weight": (kv, hidden),
                  p + "self_attn.o_proj.weight": (hidden, hidden),
                  p + "mlp.gate_proj.weight": (inter, hidden),
                  p + "mlp.up_proj.weight": (inter, hidden),
                  p + "mlp.down_proj.weight": (hidden, inter)})
    tensors = {n: torch.randn(s, generator=g) * 0.02 for n, s in t.items()}
    os.makedirs(path)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(llama_config(hidden, inter, layers, vocab), f, indent=2)


def header(file):
    with open(file, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return h


def expected_output(file, experts):
    """(bytes of the merged tensors, largest tensor btx holds: the packed [E, I, H] stack)."""
    total, largest_ffn, hidden = 0, 0, 0
    for name, t in header(file).items():
        n = t["data_offsets"][1] - t["data_offsets"][0]
        if ".mlp." in name:
            total += experts * n
            largest_ffn = max(largest_ffn, n)
            if name.endswith("down_proj.weight"):
                hidden = t["shape"][0]
                total += experts * hidden * 4 // 3  # one router [E, H] per layer, /3 projections
        else:
            total += n
    return total, experts * largest_ffn


def plain_copy(inputs, out, out_bytes, chunk=16 << 20):
    left = out_bytes
    with open(out, "wb") as w:
        for f in inputs:
            with open(f, "rb", buffering=0) as r:
                while True:
                    b = r.read(chunk)
                    if not b:
                        break
                    if left > 0:
                        w.write(b[:left])
                        left -= min(left, len(b))
        while left > 0:  # output larger than all inputs: write the rest
            n = min(left, chunk)
            w.write(b"\0" * n)
            left -= n
        w.flush()
        os.fsync(w.fileno())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--merge", default="build/bin/btx-merge")
    ap.add_argument("--dir", default="/tmp/btx-bench-merge")
    ap.add_argument("--experts", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--keep", action="store_true", help="do not delete the files")
    a = ap.parse_args()

    if os.path.exists(a.dir):
        sys.exit(f"{a.dir} exists; remove it first")
    per_model = 4 * (2 * a.vocab * a.hidden + a.layers * (
        2 * a.hidden * a.hidden + 2 * (a.hidden // 4) * a.hidden + 3 * a.hidden * a.intermediate))
    need = 2 * per_model * a.experts  # inputs + the larger output (copy or merge, in turn)
    free = shutil.disk_usage(os.path.dirname(a.dir.rstrip("/")) or ".").free
    print(f"inputs: {a.experts} x {per_model / 1e9:.2f} GB; disk needed ~{need / 1e9:.1f} GB, "
          f"free {free / 1e9:.1f} GB", flush=True)
    if need + (1 << 30) > free:
        sys.exit("not enough free disk")
    try:
        inputs = []
        t0 = time.time()
        for j in range(a.experts):
            d = os.path.join(a.dir, f"expert{j}")
            generate(d, j, a.hidden, a.intermediate, a.layers, a.vocab)
            inputs.append(os.path.join(d, "model.safetensors"))
        in_bytes = sum(os.path.getsize(f) for f in inputs)
        out_bytes, largest = expected_output(inputs[0], a.experts)
        print(f"generated {in_bytes / 1e9:.2f} GB in {time.time() - t0:.0f} s; "
              f"output ~{out_bytes / 1e9:.2f} GB", flush=True)

        # (i) plain copy
        copy_out = os.path.join(a.dir, "copy.bin")
        t0 = time.time()
        plain_copy(inputs, copy_out, out_bytes)
        copy_s = time.time() - t0
        os.remove(copy_out)

        # (ii) btx-merge
        cfg = os.path.join(a.dir, "merge.yaml")
        with open(cfg, "w") as f:
            f.write(f"base_model: {os.path.dirname(inputs[0])}\nexperts:\n")
            for i in inputs:
                f.write(f"  - source_model: {os.path.dirname(i)}\n")
            f.write("gate_mode: random\nexperts_per_token: 2\n")
        out = os.path.join(a.dir, "moe")
        t0 = time.time()
        # Peak RSS through /usr/bin/time: getrusage(RUSAGE_CHILDREN) would also count the
        # forked Python's pages before exec (Linux keeps maxrss across execve).
        rss_file = os.path.join(a.dir, "rss.txt")
        timer = ["/usr/bin/time", "-f", "%M", "-o", rss_file] if os.path.exists("/usr/bin/time") else []
        r = subprocess.run([*timer, a.merge, cfg, out], capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
        merge_s = time.time() - t0
        if r.returncode != 0:
            sys.exit(f"btx-merge failed:\n{r.stderr}")
        if timer:
            with open(rss_file) as f:
                rss = int(f.read().split()[-1]) * 1024
        else:
            rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        merged = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))

        goal_rss = 2 * largest + 200e6
        ratio = copy_s / merge_s
        print(r.stderr.strip().splitlines()[-1])
        print(f"\n| run | seconds | MB/s (output bytes) |\n|---|---|---|")
        print(f"| plain copy (read {in_bytes / 1e9:.2f} GB, write {out_bytes / 1e9:.2f} GB) | "
              f"{copy_s:.1f} | {out_bytes / 1e6 / copy_s:.0f} |")
        print(f"| btx-merge (wrote {merged / 1e9:.2f} GB) | {merge_s:.1f} | "
              f"{merged / 1e6 / merge_s:.0f} |")
        print(f"\nthroughput ratio copy/merge = {ratio:.2f} (goal >= 0.5: "
              f"{'met' if ratio >= 0.5 else 'MISSED'})")
        print(f"peak RSS of btx-merge = {rss / 1e6:.0f} MB; largest tensor held = packed experts "
              f"{largest / 1e6:.0f} MB; goal <= {goal_rss / 1e6:.0f} MB: "
              f"{'met' if rss <= goal_rss else 'MISSED'}")
    finally:
        if not a.keep:
            shutil.rmtree(a.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
