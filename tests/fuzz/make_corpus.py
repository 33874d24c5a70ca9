#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Writes the fuzzers' seed corpora into tests/fuzz/corpus/<target>/ (standard library only):
# small valid inputs plus a few edge cases each. Re-run after changing it and commit the output.
import json
import pathlib
import shutil
import struct

ROOT = pathlib.Path(__file__).resolve().parent / "corpus"


def safetensors(tensors, metadata=None, pad_to=8, raw_header=None):
    """tensors: [(name, dtype, shape, data bytes)] laid out in order."""
    header, data, offset = {}, b"", 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, blob in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        data += blob
        offset += len(blob)
    text = raw_header if raw_header is not None else json.dumps(header, separators=(",", ":"))
    text = text.encode()
    text += b" " * (-len(text) % pad_to)
    return struct.pack("<Q", len(text)) + text + data


def config(kind, **extra):
    model_type = kind
    c = {
        "architectures": ["MixtralForCausalLM" if model_type == "mixtral" else "LlamaForCausalLM"],
        "model_type": model_type, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 64, "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu",
        "dtype": "float32",
    }
    if model_type == "mixtral":
        c.update(num_local_experts=4, num_experts_per_tok=2, router_aux_loss_coef=0.01,
                 sliding_window=None)
    c.update(extra)
    return json.dumps(c, indent=1).encode()


def index(weight_map):
    return json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}, indent=1).encode()


corpora = {
    "safetensors": {
        "two_f32": safetensors([("a", "F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)),
                                ("b", "F32", [1], struct.pack("<f", 5))]),
        "dtypes": safetensors([("bf16", "BF16", [2], b"\x80\x3f\x00\x40"),
                               ("i64", "I64", [1], struct.pack("<q", -7)),
                               ("u8", "U8", [3], b"\x01\x02\x03"),
                               ("bool", "BOOL", [2], b"\x01\x00"),
                               ("f16", "F16", [1], b"\x00\x3c")], metadata={"format": "pt"}),
        "scalar_and_empty": safetensors([("s", "F64", [], struct.pack("<d", 0.5)),
                                         ("e", "F32", [0, 3], b"")]),
        "unaligned": safetensors([("u", "I32", [1], struct.pack("<i", 9))], pad_to=1),
        "empty_header": safetensors([]),
        "truncated": safetensors([("a", "F32", [4], struct.pack("<4f", 1, 2, 3, 4))])[:-3],
        "overlap": safetensors([], raw_header='{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},'
                                              '"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}')
        + b"abc",
        "huge_shape": safetensors([], raw_header='{"a":{"dtype":"F64","shape":[4294967296,'
                                                 '4294967296],"data_offsets":[0,0]}}'),
        "duplicate_key": safetensors([], raw_header='{"a":{"dtype":"U8","shape":[1],"data_offsets"'
                                                    ':[0,1]},"a":{"dtype":"U8","shape":[1],'
                                                    '"data_offsets":[0,1]}}') + b"x",
    },
    "index": {
        "two_shards": index({"x": "a.safetensors", "y": "a.safetensors", "z": "b.safetensors"}),
        "subdir": index({"w": "sub/c.safetensors", "z": "./b.safetensors"}),
        "dotdot": index({"o": "../outside/o.safetensors"}),
        "symlink_escape": index({"o": "escape.safetensors"}),
        "symlink_dir": index({"o": "up/outside/o.safetensors"}),
        "absolute": index({"x": "/etc/passwd"}),
        "duplicate_tensor": index({"x": "a.safetensors", "y": "a.safetensors", "x2": "dup.safetensors"}),
        "missing": index({"x": "nope.safetensors"}),
        "empty_shard": index({"x": "empty.safetensors"}),
        "not_string": index({"x": 3}),
    },
    "config": {
        "llama": config("llama"),
        "llama_tied_head_dim": config("llama", tie_word_embeddings=True, head_dim=16,
                                      rope_parameters={"rope_type": "default", "rope_theta": 5e5}),
        "mixtral": config("mixtral"),
        "arch_only": config("llama", **{"model_type": "", "num_key_value_heads": None}),
        "bad_rope": config("llama", rope_scaling={"type": "linear", "factor": 2.0}),
        "bad_experts": config("mixtral", num_experts_per_tok=9),
        "wrong_type": config("llama", hidden_size="32"),
    },
}


def text(s):
    return s.encode()


def alias_bomb():
    """Ten lines whose aliases name 10^10 values (tests/python/test_pipeline.py's)."""
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for prev, cur in zip("abcdefghi", "bcdefghij"):
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 10) + "]")
    return text("\n".join(lines) + "\n")


def merge_yaml(base, experts, **keys):
    """tests/python/test_merge.py's yaml_config."""
    lines = [f"base_model: {base}", "experts:"] + [f"  - source_model: {e}" for e in experts]
    lines += [f"{k}: {v}" for k, v in keys.items()]
    return text("\n".join(lines) + "\n")


MERGE_EXPERTS = ["/models/llama", "/models/copy0", "/models/copy1"]

# The tools' configs: YAML (or JSON) as users and the Python tests write them.
corpora["yaml"] = {
    "mergekit_moe": text("""# mergekit-moe style
base_model: mistralai/Mistral-7B-v0.1
gate_mode: hidden
dtype: bfloat16
experts:
  - source_model: ./experts/math
    positive_prompts:
      - "Solve for x: 3x + 5 = 20"
      - 'What is 12 * 7?'
    negative_prompts: ["Write a poem"]
  - source_model: ./experts/code
    positive_prompts:
      - |
        def fib(n):
            return n if n < 2 else fib(n - 1) + fib(n - 2)
      - >
        folded text
        on two lines
"""),
    "anchors": text("""defaults: &stage {steps: 40, lr: 2.0e-3, warmup: 5}
seed_stage: *stage
expert_stage:
  <<: *stage
  steps: 80
domains: &d [{name: math, generator: arithmetic}, {name: code, paths: [/usr/include]}]
again: *d
"""),
    "scalars": text("""int: 42
negative: -7
leading_zero: 012
hex: 0x1F
float: 3.0
exp: 1e-5
big: 123456789012345678901234567890
quoted_number: "42"
single_quoted: '3.5'
bools: [true, false, yes, no, on, off, True, FALSE]
nulls: [null, ~, ]
empty_string: ""
unicode: "h\\u00e9llo \\U0001F600 café"
tagged: !!str 12
dates: 2024-01-02
"""),
    "json": text(json.dumps({"base_model": "/m", "experts": [{"source_model": "/m"}],
                             "gate_mode": "random", "weights": [1, 2.5], "seed": 3,
                             "nested": {"a": [None, True, "x", -1e-3]}}, indent=1)),
    "multi_document": text("a: 1\n---\nb: 2\n"),
    "alias_bomb": alias_bomb(),
    "deep": text("[" * 40 + "]" * 40 + "\n"),
    "bad_indent": text("experts:\n  - source_model: a\n - source_model: b\n"),
    "unclosed": text("experts: [\n"),
    "complex_key": text("? [a, b]\n: value\n"),
}

corpora["pipeline_config"] = {
    "bf16_mixed": text("precision: bf16-mixed\n"),  # test_pipeline.py
    "faults": text(json.dumps({"baselines": False, "eval_windows": 4, "math_problems": 5,
                               "fail_expert": 1, "fail_step": 25})),  # test_faults.py
    "topology": text("ranks_per_expert: 2\nexpert_worlds: shared\nranks_per_stage: 2\n"
                     "dist_timeout_s: 30\nbatch_size: 8\n"),  # test_pipeline_dist.py
    "full": text("""run_dir: runs/mine
seed: 7
model:
  hidden_size: 64
  intermediate_size: 128
  num_hidden_layers: 2
  num_attention_heads: 4
  num_key_value_heads: 2
  head_dim: 16
  rope_theta: 10000.0
  rms_norm_eps: 1.0e-5
  max_position_embeddings: 256
  tie_word_embeddings: false
seq_len: 64
batch_size: 8
domains:
  - {name: math, generator: arithmetic, max_train_tokens: 131072, max_eval_tokens: 8192, seed: 5}
  - name: code
    paths: [/usr/include]
    extensions: [.h]
    recursive: true
    eval_every: 5
  - {name: prose, paths: [/usr/share/common-licenses]}
tokenizer: sentencepiece
tokenizer_vocab_size: 512
seed_stage: {steps: 60, lr: 3.0e-3, warmup: 5}
expert_stage: {steps: 40, lr: 2.0e-3, warmup: 5}
finetune_stage: {steps: 20, lr: 1.0e-3, warmup: 5}
router: top2
extra_routers: [switch, soft]
load_balance_alpha: 0.01
load_balance_form: switch
seed_as_expert: true
router_init: hidden
averaging: ties
averaging_density: 0.3
averaging_lambda: 0.8
baselines: false
eval_windows: 8
math_problems: 20
log_every: 10
checkpoint_every: 10
device: cpu
"""),
    "seed_checkpoint": text("seed_checkpoint: /checkpoints/qwen2-0.5b\ntokenizer: bytes\n"
                            "seed_as_expert: false\nseed_as_shared_expert: true\n"),  # test_families.py
    "token_files": text("tokenizer: bytes\nmodel: {vocab_size: 50304}\ndomains:\n"
                        "  - {name: web, token_file: data/train.bin, eval_token_file: data/val.bin,"
                        " token_dtype: uint32}\n"),
    "budget_too_small": text("expert_stage: {steps: 0}\n"),  # test_pipeline.py's refusals
    "typo": text("finetune_stage: {stpes: 10}\n"),
    "tokenizer_unknown": text("tokenizer: wordpiece\n"),
    "vocab_mismatch": text("model: {vocab_size: 256}\n"),
    "cuda": text("device: cuda:1\n"),
    "precision_unknown": text("precision: fp8\n"),
    "alias_bomb": alias_bomb(),
}

corpora["merge_config"] = {
    "random_top2": merge_yaml(MERGE_EXPERTS[0], MERGE_EXPERTS, gate_mode="random",
                              experts_per_token=2, seed=3, max_shard_size="30KB"),
    "include_base": merge_yaml(MERGE_EXPERTS[0], MERGE_EXPERTS, gate_mode="random",
                               include_base_as_expert="true", experts_per_token=2),
    "split": merge_yaml(MERGE_EXPERTS[0], MERGE_EXPERTS, gate_mode="random", split=2,
                        experts_per_token=1),
    "ties": merge_yaml(MERGE_EXPERTS[0], MERGE_EXPERTS, gate_mode="random", averaging="ties",
                       density=0.3, **{"lambda": 0.8}),
    "weighted": merge_yaml(MERGE_EXPERTS[0], MERGE_EXPERTS[:2], gate_mode="zero",
                           weights="[1, 2]", dtype="float16", device="cpu",
                           router_aux_loss_coef=0.001, max_shard_size=2000000),
    "dare": merge_yaml(MERGE_EXPERTS[0], MERGE_EXPERTS, gate_mode="random",
                       averaging="dare_ties", density=0.5, seed=11, method="btx"),
    "upcycle": text("base_model: /models/llama\nmethod: upcycle\ngate_mode: zero\n"
                    "experts: [{}, {}, {}, {}]\nexperts_per_token: 2\n"),
    "blend": merge_yaml(MERGE_EXPERTS[0], MERGE_EXPERTS, method="blend", gate_mode="random"),
    "shared_expert": merge_yaml("/models/qwen2", ["/models/qwen2"] * 3, gate_mode="random",
                                tokenizer_source="base")
    + text("shared_experts:\n  - source_model: /models/qwen2\n"),  # test_families.py
    "hidden_token_ids": text("base_model: /models/llama\nexperts:\n"
                             + "".join(f"  - source_model: {e}\n    positive_prompts: [[1, 2, 3],"
                                       " [4, 5]]\n" for e in MERGE_EXPERTS)
                             + "averaging: keep_base\n"),  # test_merge.py
    "hidden_text_json": text(json.dumps({  # test_prompts.py's hidden_config
        "base_model": "/models/llama0", "gate_mode": "hidden", "dtype": "float32",
        "experts_per_token": 2,
        "experts": [{"source_model": f"/models/llama{j}",
                     "positive_prompts": ["2+2=4", "12*3=36"],
                     **({"negative_prompts": ["Once upon a time"]} if j else {})}
                    for j in range(3)]})),
    "tokenizer_folder": merge_yaml(MERGE_EXPERTS[0], MERGE_EXPERTS[:2], gate_mode="random",
                                   tokenizer_source="/models/copy1", max_shard_size="1GiB"),
    "unknown_key": merge_yaml(MERGE_EXPERTS[0], MERGE_EXPERTS[:1], gate_mode="random",
                              mystery_key=1),  # test_merge.py's refusals
    "bad_density": merge_yaml(MERGE_EXPERTS[0], MERGE_EXPERTS[:1], gate_mode="random",
                              averaging="ties", density=1.5),
    "union": merge_yaml(MERGE_EXPERTS[0], MERGE_EXPERTS[:1], gate_mode="random",
                        tokenizer_source="union"),
    "no_base": text("experts:\n  - source_model: /models/llama\n"),
}

for target, files in corpora.items():
    shutil.rmtree(ROOT / target, ignore_errors=True)
    (ROOT / target).mkdir(parents=True)
    for name, blob in files.items():
        (ROOT / target / name).write_bytes(blob)
print(f"wrote {sum(len(f) for f in corpora.values())} seeds under {ROOT}")
