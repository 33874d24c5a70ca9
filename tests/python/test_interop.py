# SPDX-License-Identifier: MIT
# Interop with the real transformers and safetensors packages (independent references):
# HF checkpoints load in btx with equal logits, btx checkpoints load in transformers, and
# safetensors files cross between btx and Python with equal values.
# Run: BTX_INTEROP=build/bin/btx-interop python tests/python/test_interop.py [TestClass]
import json
import os
import subprocess
import sys
import tempfile
import unittest

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

TOOL = os.environ.get("BTX_INTEROP", "build/bin/btx-interop")
TOLERANCE = 1e-4


def btx(*args):
    result = subprocess.run([TOOL, *map(str, args)], capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"btx-interop {' '.join(map(str, args))} failed:\n{result.stderr}")


def tiny_llama(seed=0, **overrides):
    torch.manual_seed(seed)
    kwargs = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                  max_position_embeddings=128)
    kwargs.update(overrides)
    model = LlamaForCausalLM(LlamaConfig(**kwargs)).eval()
    # Non-trivial norms so a skipped or swapped norm weight shows up in the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def btx_logits(tmp, ckpt, ids):
    save_file({"ids": ids}, os.path.join(tmp, "ids.safetensors"))
    out = os.path.join(tmp, "logits.safetensors")
    btx("logits", ckpt, os.path.join(tmp, "ids.safetensors"), out)
    return load_file(out)["logits"]


class HfLlamaLoadsInBtx(unittest.TestCase):
    """(a) and (d): transformers' save_pretrained -> btx, same logits (fp32)."""

    def check(self, model, **save_kwargs):
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = os.path.join(tmp, "ckpt")
            model.save_pretrained(ckpt, **save_kwargs)
            ids = torch.randint(0, model.config.vocab_size, (2, 11))
            with torch.no_grad():
                expected = model(ids).logits
            got = btx_logits(tmp, ckpt, ids)
            self.assertEqual(tuple(got.shape), tuple(expected.shape))
            self.assertLessEqual((got - expected).abs().max().item(), TOLERANCE)
            return os.listdir(ckpt)

    def test_single_file(self):
        files = self.check(tiny_llama(1))
        self.assertIn("model.safetensors", files)

    def test_sharded(self):
        files = self.check(tiny_llama(2), max_shard_size="20KB")
        self.assertIn("model.safetensors.index.json", files)
        self.assertGreater(len([f for f in files if f.startswith("model-000")]), 1)

    def test_tied_embeddings(self):
        self.check(tiny_llama(3, tie_word_embeddings=True))

    def test_gqa_variants_and_rope_theta(self):
        self.check(tiny_llama(4, num_key_value_heads=1))  # MQA
        self.check(tiny_llama(5, num_key_value_heads=4))  # MHA
        self.check(tiny_llama(6, rope_theta=500000.0, head_dim=16))

    def test_attention_bias(self):
        model = tiny_llama(7, attention_bias=True)
        with torch.no_grad():  # transformers initialises biases to zero
            for name, p in model.named_parameters():
                if name.endswith(".bias"):
                    p.uniform_(-0.5, 0.5)
        self.check(model)

    def test_mixtral_sliding_window(self):
        from transformers import MixtralConfig, MixtralForCausalLM
        kwargs = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=67,
                      max_position_embeddings=128, num_local_experts=3, num_experts_per_tok=2)
        torch.manual_seed(8)
        windowed = MixtralForCausalLM(MixtralConfig(**kwargs, sliding_window=4)).eval()
        full = MixtralForCausalLM(MixtralConfig(**kwargs, sliding_window=None)).eval()
        full.load_state_dict(windowed.state_dict())
        ids = torch.randint(0, 67, (2, 11))
        with torch.no_grad():  # the window changes what positions >= 4 see
            self.assertGreater((windowed(ids).logits - full(ids).logits).abs().max().item(), 1e-3)
        self.check(windowed)
        self.check(full)


class BtxCheckpointLoadsInTransformers(unittest.TestCase):
    """(e): btx's save_hf_checkpoint -> LlamaForCausalLM.from_pretrained, no missing keys."""

    def check(self, tied, max_shard_bytes):
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = os.path.join(tmp, "ckpt")
            btx("save-llama", ckpt, 11, int(tied), max_shard_bytes)
            with open(os.path.join(ckpt, "config.json")) as f:
                self.assertEqual(json.load(f)["architectures"], ["LlamaForCausalLM"])
            model, info = LlamaForCausalLM.from_pretrained(ckpt, output_loading_info=True)
            model.eval()
            for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
                self.assertFalse(info.get(key), f"{key}: {info.get(key)}")
            self.assertEqual(model.config.tie_word_embeddings, tied)
            ids = torch.randint(0, 64, (2, 9))
            with torch.no_grad():
                expected = model(ids).logits
            got = btx_logits(tmp, ckpt, ids)
            self.assertLessEqual((got - expected).abs().max().item(), TOLERANCE)

    def test_untied_single_file(self):
        self.check(tied=False, max_shard_bytes=10**9)

    def test_tied_sharded(self):
        self.check(tied=True, max_shard_bytes=16384)


class Bf16CheckpointLoadsInTransformers(unittest.TestCase):
    """A model btx trained in bf16 mixed precision and saved in bf16 loads in transformers in
    bf16, and its logits there are btx's bf16 logits up to bf16 rounding."""

    def check(self, moe):
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = os.path.join(tmp, "ckpt")
            ids = torch.randint(0, 64, (2, 9))
            save_file({"ids": ids}, os.path.join(tmp, "ids.safetensors"))
            out = os.path.join(tmp, "logits.safetensors")
            btx("train-bf16", ckpt, int(moe), os.path.join(tmp, "ids.safetensors"), out)
            got = load_file(out)["logits"]
            self.assertEqual(got.dtype, torch.bfloat16)
            cls = MixtralForCausalLM if moe else LlamaForCausalLM
            model = cls.from_pretrained(ckpt, dtype=torch.bfloat16).eval()
            self.assertEqual(next(model.parameters()).dtype, torch.bfloat16)
            with torch.no_grad():
                expected = model(ids).logits
                exact = cls.from_pretrained(ckpt, dtype=torch.float32).eval()(ids).logits
            diff = (got.float() - expected.float()).abs().max().item()
            # bf16 keeps 8 bits of mantissa: two bf16 implementations differ by a few units in
            # the last place of logits of magnitude ~1; both stay near the fp32 reference.
            self.assertLessEqual(diff, 0.05, diff)
            self.assertLessEqual((got.float() - exact).abs().max().item(), 0.05)
            self.assertGreater((got.float() - exact).abs().max().item(), 0.0)  # it is bf16

    def test_llama(self):
        self.check(moe=False)

    def test_mixtral(self):
        self.check(moe=True)


class SafetensorsCrossesBetweenBtxAndPython(unittest.TestCase):
    """(f): Python-written files read by btx, btx-written files read by Python."""

    def test_python_to_btx_to_python(self):
        torch.manual_seed(0)
        tensors = {
            "f32": torch.randn(3, 5),
            "f16": torch.randn(7).half(),
            "bf16": torch.randn(2, 3, 4).bfloat16(),
            "i64": torch.arange(-5, 6, dtype=torch.int64).reshape(11, 1),
            "scalar": torch.tensor(2.5),
            "empty": torch.zeros(0, 3),
        }
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = os.path.join(tmp, "py.safetensors"), os.path.join(tmp, "btx.safetensors")
            save_file(tensors, src, metadata={"format": "pt"})
            btx("copy", src, dst)
            back = load_file(dst)
            self.assertEqual(set(back), set(tensors))
            for name, t in tensors.items():
                self.assertEqual(back[name].dtype, t.dtype, name)
                self.assertTrue(torch.equal(back[name], t), name)
            with open(dst, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(n))
            self.assertEqual(n % 8, 0)
            self.assertEqual(header["__metadata__"], {"format": "pt"})

    def test_btx_refuses_a_truncated_python_file(self):
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "py.safetensors")
            save_file({"w": torch.ones(16)}, src)
            with open(src, "r+b") as f:
                f.truncate(os.path.getsize(src) - 4)
            result = subprocess.run([TOOL, "copy", src, os.path.join(tmp, "out.safetensors")],
                                    capture_output=True, text=True)
            self.assertNotEqual(result.returncode, 0)
            self.assertIn("py.safetensors", result.stderr)
            self.assertFalse(os.path.exists(os.path.join(tmp, "out.safetensors")))


class MixtralNamesMatchTransformers(unittest.TestCase):
    """btx's MoE naming contract <-> transformers' Mixtral (packed experts in memory)."""

    def assert_experts_match(self, packed, hf_state, layers, experts, inter):
        # packed: btx name -> tensor; hf_state: transformers 5 in-memory state dict.
        for i in range(layers):
            btx_l, hf_l = f"model.layers.{i}.mlp.", f"model.layers.{i}.mlp."
            gate_up = hf_state[hf_l + "experts.gate_up_proj"]  # [E, 2I, H], gate first
            self.assertEqual(gate_up.shape[0], experts)
            self.assertTrue(torch.equal(packed[btx_l + "gate.weight"], hf_state[hf_l + "gate.weight"]))
            self.assertTrue(torch.equal(packed[btx_l + "experts.gate_proj"], gate_up[:, :inter]))
            self.assertTrue(torch.equal(packed[btx_l + "experts.up_proj"], gate_up[:, inter:]))
            self.assertTrue(torch.equal(packed[btx_l + "experts.down_proj"],
                                        hf_state[hf_l + "experts.down_proj"]))

    def test_btx_moe_checkpoint_loads_in_transformers(self):
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = os.path.join(tmp, "ckpt")
            btx("save-moe", ckpt, 21, 3, 2)
            model, info = MixtralForCausalLM.from_pretrained(ckpt, output_loading_info=True)
            for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
                self.assertFalse(info.get(key), f"{key}: {info.get(key)}")
            self.assertEqual(model.config.num_local_experts, 3)
            self.assertEqual(model.config.num_experts_per_tok, 2)
            self.assertIsNone(model.config.sliding_window)
            dumped = os.path.join(tmp, "btx.safetensors")
            btx("load-moe", ckpt, dumped)  # btx reloads what it wrote
            self.assert_experts_match(load_file(dumped), model.state_dict(), 2, 3, 64)

    def test_transformers_mixtral_loads_into_btx_packed_experts(self):
        torch.manual_seed(22)
        config = MixtralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                               num_local_experts=3, max_position_embeddings=128)
        model = MixtralForCausalLM(config)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = os.path.join(tmp, "ckpt")
            model.save_pretrained(ckpt, max_shard_size="40KB")
            dumped = os.path.join(tmp, "btx.safetensors")
            btx("load-moe", ckpt, dumped)
            btx_params = load_file(dumped)
            state = model.state_dict()
            self.assert_experts_match(btx_params, state, 2, 3, 64)
            for name in ("model.embed_tokens.weight", "lm_head.weight",
                         "model.layers.1.self_attn.k_proj.weight", "model.norm.weight"):
                self.assertTrue(torch.equal(btx_params[name], state[name]), name)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], *sys.argv[1:]], verbosity=2)
