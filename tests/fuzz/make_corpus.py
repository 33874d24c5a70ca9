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

for target, files in corpora.items():
    shutil.rmtree(ROOT / target, ignore_errors=True)
    (ROOT / target).mkdir(parents=True)
    for name, blob in files.items():
        (ROOT / target / name).write_bytes(blob)
print(f"wrote {sum(len(f) for f in corpora.values())} seeds under {ROOT}")
