#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The real-seed preset's final model, as its users would load it.

  .venv/bin/python tools/btx-pipeline/presets/real_seed/check_final.py RUN_DIR [--stage btx-top2] [--llama-cpp]
  .venv/bin/python tools/btx-pipeline/presets/real_seed/check_final.py RUN_DIR --model DIR --prompts FILE [--llama-cpp]

transformers: AutoModelForCausalLM and AutoTokenizer from RUN_DIR/<stage>/model (or --model,
any HF folder, e.g. btx-train's), a greedy continuation of each of the run's sample
prompts (or of --prompts, a JSON list). --llama-cpp: also converts the model with
llama.cpp's convert_hf_to_gguf.py (f16 GGUF) and generates with llama.cpp
(llama-cpp-python), set up by tests/python/llama_cpp_env.sh (~10 min the first time).
Writes RUN_DIR/final_checks.md and .json; exits 1 when a load fails or a model generates
nothing.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", "..", ".."))  # the checkout
LLAMA_VENV = os.path.join(ROOT, "build", "llama-cpp-venv")
LLAMA_WORK = os.path.join(ROOT, "build", "llama-cpp-work")
NEW_TOKENS = 24


def log(*a):
    print("[check_final]", *a, file=sys.stderr, flush=True)


def transformers_samples(model_dir, prompts):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = {"class": type(model).__name__, "model_type": model.config.model_type,
           "experts": getattr(model.config, "num_local_experts", None),
           "experts_per_token": getattr(model.config, "num_experts_per_tok", None),
           "parameters": sum(p.numel() for p in model.parameters()), "samples": []}
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
        out["samples"].append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
    return out


def llama_cpp_samples(model_dir, prompts, tmp):
    subprocess.run(["bash", os.path.join(ROOT, "tests", "python", "llama_cpp_env.sh")],
                   check=True)
    py = os.path.join(LLAMA_VENV, "bin", "python")
    version = os.environ.get("BTX_LLAMA_CPP_PYTHON_VERSION", "0.3.36")
    llama_cpp = os.path.join(LLAMA_WORK, f"llama_cpp_python-{version}", "vendor", "llama.cpp")
    gguf = os.path.join(tmp, "model-f16.gguf")
    env = dict(os.environ, PYTHONPATH=os.path.join(llama_cpp, "gguf-py"))
    r = subprocess.run([py, os.path.join(llama_cpp, "convert_hf_to_gguf.py"), model_dir,
                        "--outtype", "f16", "--outfile", gguf], capture_output=True, text=True,
                       env=env)
    if r.returncode != 0:
        raise SystemExit("check_final: convert_hf_to_gguf.py failed:\n" + r.stderr[-3000:])
    code = (
        "import json, sys\n"
        "from llama_cpp import Llama\n"
        "llm = Llama(model_path=sys.argv[1], n_ctx=512, n_threads=2, seed=0, verbose=False)\n"
        "prompts = json.loads(sys.argv[2])\n"
        "meta = llm.metadata\n"
        "out = {'arch': meta.get('general.architecture'),\n"
        "       'experts': int(meta.get('llama.expert_count', 0)),\n"
        "       'experts_per_token': int(meta.get('llama.expert_used_count', 0)), 'samples': []}\n"
        f"for p in prompts:\n"
        f"    r = llm.create_completion(p, max_tokens={NEW_TOKENS}, temperature=0.0, top_k=1)\n"
        "    out['samples'].append(r['choices'][0]['text'])\n"
        "print(json.dumps(out))\n")
    r = subprocess.run([py, "-c", code, gguf, json.dumps(prompts)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise SystemExit("check_final: llama.cpp failed:\n" + r.stderr[-3000:])
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["gguf_bytes"] = os.path.getsize(gguf)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--stage", default=None, help="default: btx-<the run's router>")
    ap.add_argument("--model", default=None, help="an HF folder instead of a pipeline stage's")
    ap.add_argument("--prompts", default=None, help="a JSON file with a list of prompts")
    ap.add_argument("--llama-cpp", action="store_true")
    args = ap.parse_args()
    if args.model:
        model_dir = os.path.abspath(args.model)
        stage = os.path.relpath(model_dir, os.path.abspath(args.run_dir))
        prompts = ["The capital of France is"]
    else:
        with open(os.path.join(args.run_dir, "config.json")) as f:
            config = json.load(f)
        stage = args.stage or "btx-" + config["router"]
        model_dir = os.path.join(args.run_dir, stage, "model")
        prompts = config.get("sample_prompts") or ["The capital of France is"]
    if args.prompts:
        with open(args.prompts) as f:
            prompts = json.load(f)
    result = {"model": model_dir, "prompts": prompts}
    log("transformers:", model_dir)
    result["transformers"] = transformers_samples(model_dir, prompts)
    if args.llama_cpp:
        log("llama.cpp: converting and generating")
        with tempfile.TemporaryDirectory() as tmp:
            result["llama_cpp"] = llama_cpp_samples(model_dir, prompts, tmp)
    with open(os.path.join(args.run_dir, "final_checks.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = [f"# {stage}: loaded by its users' tools\n",
             f"Model `{model_dir}`; greedy, {NEW_TOKENS} new tokens per prompt.\n"]
    t = result["transformers"]
    lines.append(f"- transformers: `{t['class']}` ({t['model_type']}, {t['experts']} experts, "
                 f"top-{t['experts_per_token']}, {t['parameters'] / 1e6:.1f}M parameters)")
    if "llama_cpp" in result:
        l = result["llama_cpp"]
        lines.append(f"- llama.cpp: convert_hf_to_gguf.py f16 GGUF ({l['gguf_bytes'] / 1e6:.0f} MB),"
                     f" architecture `{l['arch']}`, {l['experts']} experts, top-"
                     f"{l['experts_per_token']}")
    lines.append("")
    for i, p in enumerate(prompts):
        lines.append(f"## Prompt {i + 1}\n\n```text\n{p}\n```\n")
        lines.append(f"transformers:\n\n```text\n{p}{t['samples'][i]}\n```\n")
        if "llama_cpp" in result:
            lines.append(f"llama.cpp:\n\n```text\n{p}{result['llama_cpp']['samples'][i]}\n```\n")
    with open(os.path.join(args.run_dir, "final_checks.md"), "w") as f:
        f.write("\n".join(lines))
    empty = [k for k in ("transformers", "llama_cpp") if k in result
             and not any(s.strip() for s in result[k]["samples"])]
    if empty:
        raise SystemExit(f"check_final: {', '.join(empty)} generated nothing")
    log("wrote", os.path.join(args.run_dir, "final_checks.md"))


if __name__ == "__main__":
    main()
