#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""One AdamW step over SmolLM2-135M's parameters (and its 4-expert MoE's), three ways:

  loop   torch.optim.AdamW(foreach=False): one parameter at a time, six element-wise ops
         each, the algorithm of LibTorch's C++ torch::optim::AdamW (btx's optimizer before
         issue 37)
  fused  torch.optim.AdamW(fused=True): at::_fused_adamw_, what btx::FusedAdamW calls

at --threads threads, median seconds of --repeats steps after one warm-up step.
  python3 benchmarks/adamw_step.py [--threads 2] [--repeats 5]
"""
import argparse
import statistics
import time

import torch

# SmolLM2-135M's matrices (tied embedding), and the MoE's: 4 copies of every FFN + routers.
D, F, L, V, H, G, A = 576, 1536, 30, 49152, 9, 3, 64


def shapes(experts):
    out = [(V, D), (D,)]
    for _ in range(L):
        out += [(H * A, D), (G * A, D), (G * A, D), (D, H * A), (D,), (D,)]
        if experts == 1:
            out += [(F, D), (F, D), (D, F)]
        else:
            out += [(experts, F, D), (experts, F, D), (experts, D, F), (experts, D)]
    return out


def step_seconds(experts, kind, repeats):
    params = [torch.randn(s, requires_grad=True) for s in shapes(experts)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            **({"fused": True} if kind == "fused" else {"foreach": False}))
    opt.step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), sum(p.numel() for p in params)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | parameters | loop s | fused s | loop / fused |")
    print("|---|---|---|---|---|")
    for name, experts in (("dense", 1), ("4-expert MoE", 4)):
        loop, n = step_seconds(experts, "loop", args.repeats)
        fused, _ = step_seconds(experts, "fused", args.repeats)
        print(f"| {name} | {n / 1e6:.0f}M | {loop:.3f} | {fused:.3f} | {loop / fused:.2f}x |")


if __name__ == "__main__":
    main()
