# SPDX-License-Identifier: MIT
# btx-merge against the real transformers (an independent reference): the Mixtral it
# writes loads in MixtralForCausalLM with no missing/unexpected keys and the same logits
# as btx's own MoE module; N identical experts reproduce the dense Llama; bad inputs fail
# with exit 1, a message naming the tensor/file/key, and nothing at OUT_DIR.
# Run: BTX_MERGE=build/bin/btx-merge BTX_INTEROP=build/bin/btx-interop \
#      python tests/python/test_merge.py [TestClass]
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM, MixtralForCausalLM

MERGE = os.environ.get("BTX_MERGE", "build/bin/btx-merge")
INTEROP = os.environ.get("BTX_INTEROP", "build/bin/btx-interop")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_interop import tiny_llama  # noqa: E402  (one fixture for both suites)
TOLERANCE = 1e-4


def merge(tmp, config, out="out", extra=()):
    path = os.path.join(tmp, "merge.yaml")
    with open(path, "w") as f:
        f.write(config)
    out_dir = os.path.join(tmp, out)
    result = subprocess.run([MERGE, *extra, path, out_dir], capture_output=True, text=True)
    return result, out_dir


def yaml_config(base, experts, **keys):
    lines = [f"base_model: {base}", "experts:"]
    for e in experts:
        lines.append(f"  - source_model: {e}")
    for k, v in keys.items():
        lines.append(f"{k}: {v}")
    return "\n".join(lines) + "\n"


def btx_logits(tmp, ckpt, ids):
    ids_file, out = os.path.join(tmp, "ids.safetensors"), os.path.join(tmp, "logits.safetensors")
    save_file({"ids": ids}, ids_file)
    r = subprocess.run([INTEROP, "logits", ckpt, ids_file, out], capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"btx-interop logits failed:\n{r.stderr}")
    return load_file(out)["logits"]


def load_mixtral(test, ckpt):
    model, info = MixtralForCausalLM.from_pretrained(ckpt, output_loading_info=True)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        test.assertFalse(info.get(key), f"{key}: {info.get(key)}")
    return model.eval()


class MixtralFromBtxMergeMatchesTransformers(unittest.TestCase):
    """(b) different experts, top-2 of 3: transformers' Mixtral == btx's MoE module."""

    def test_btx_mix_of_three_different_llamas(self):
        with tempfile.TemporaryDirectory() as tmp:
            dirs = []
            for j in range(3):
                d = os.path.join(tmp, f"expert{j}")
                tiny_llama(30 + j).save_pretrained(d)
                dirs.append(d)
            # A strong random router so the top-2 choice really differs between tokens.
            result, out = merge(tmp, yaml_config(dirs[0], dirs, gate_mode="random",
                                                 experts_per_token=2, seed=5,
                                                 max_shard_size="30KB"))
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn("tensor", result.stderr)  # progress
            self.assertIn("model.safetensors.index.json", os.listdir(out))
            model = load_mixtral(self, out)
            self.assertEqual(model.config.num_local_experts, 3)
            self.assertEqual(model.config.num_experts_per_tok, 2)
            with open(os.path.join(out, "btx_merge.json")) as f:
                self.assertEqual(json.load(f)["method"], "btx_mix")
            ids = torch.randint(0, 64, (2, 13))
            with torch.no_grad():
                expected = model(ids).logits
            got = btx_logits(tmp, out, ids)
            self.assertLessEqual((got - expected).abs().max().item(), TOLERANCE)
            # The experts really differ: the MoE is not any one dense expert.
            with torch.no_grad():
                dense = LlamaForCausalLM.from_pretrained(dirs[0]).eval()(ids).logits
            self.assertGreater((dense - expected).abs().max().item(), 1e-3)


class ExpertsInDifferentDtypesAreCast(unittest.TestCase):
    """An fp32 and a bf16 finetune of one base merge, cast to the output dtype (mergekit's
    behaviour): the same output as merging the bf16 expert's values upcast by hand."""

    def test_fp32_and_bf16_experts(self):
        with tempfile.TemporaryDirectory() as tmp:
            a, b, b32 = (os.path.join(tmp, n) for n in ("a", "b_bf16", "b_fp32"))
            tiny_llama(60).save_pretrained(a)
            tiny_llama(61).to(torch.bfloat16).save_pretrained(b)
            upcast = tiny_llama(61).to(torch.bfloat16).to(torch.float32)
            upcast.save_pretrained(b32)
            config = yaml_config(a, [a, b], gate_mode="random", seed=3)
            result, out = merge(tmp, config, out="mixed")
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn("BFloat16 in '" + b + "'", result.stderr)
            self.assertIn("read as float32", result.stderr)
            result, ref = merge(tmp, yaml_config(a, [a, b32], gate_mode="random", seed=3),
                                out="upcast")
            self.assertEqual(result.returncode, 0, result.stderr)
            got, want = (load_file(os.path.join(d, "model.safetensors")) for d in (out, ref))
            self.assertEqual(sorted(got), sorted(want))
            for name in want:
                self.assertTrue(torch.equal(got[name], want[name]), name)
            load_mixtral(self, out)
            # Asked for bf16, both are read as bf16 and the output loads in transformers.
            result, out16 = merge(tmp, config + "dtype: bfloat16\n", out="bf16")
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn("read as bfloat16", result.stderr)
            model = load_mixtral(self, out16)
            self.assertEqual(next(model.parameters()).dtype, torch.bfloat16)


class IdenticalExpertsReproduceTheLlama(unittest.TestCase):
    """(c) N copies of one transformers Llama -> a Mixtral with that Llama's logits."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="btx-merge-")
        cls.base = os.path.join(cls.tmp, "llama")
        cls.model = tiny_llama(40)
        cls.model.save_pretrained(cls.base)
        with open(os.path.join(cls.base, "tokenizer.json"), "w") as f:
            f.write('{"version": "1.0"}')
        cls.copies = []
        for j in range(2):
            d = os.path.join(cls.tmp, f"copy{j}")
            shutil.copytree(cls.base, d)
            cls.copies.append(d)
        cls.ids = torch.randint(0, 64, (2, 11))
        with torch.no_grad():
            cls.expected = cls.model(cls.ids).logits

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def check(self, out_name, experts=None, **keys):
        experts = experts or [self.base, *self.copies]
        with tempfile.TemporaryDirectory() as tmp:
            result, out = merge(tmp, yaml_config(self.base, experts, **keys))
            self.assertEqual(result.returncode, 0, result.stderr)
            model = load_mixtral(self, out)
            with torch.no_grad():
                got = model(self.ids).logits
            self.assertLessEqual((got - self.expected).abs().max().item(), TOLERANCE, out_name)
            self.assertLessEqual((btx_logits(tmp, out, self.ids) - self.expected).abs().max().item(),
                                 TOLERANCE, out_name)
            files = os.listdir(out)
            self.assertIn("tokenizer.json", files)
            self.assertIn("btx_merge.json", files)
            return model.config

    def test_top1_and_top2_and_top3(self):
        for k in (1, 2, 3):
            self.check(f"top{k}", gate_mode="random", experts_per_token=k, seed=k)

    def test_include_base_as_expert(self):
        config = self.check("base", gate_mode="random", include_base_as_expert="true",
                            experts_per_token=2)
        self.assertEqual(config.num_local_experts, 4)

    def test_split_two_rescaled(self):
        config = self.check("split", gate_mode="random", split=2, experts_per_token=1)
        self.assertEqual(config.num_local_experts, 6)
        self.assertEqual(config.num_experts_per_tok, 2)
        self.assertEqual(config.intermediate_size, 32)

    def test_hidden_gate_from_token_id_prompts_and_keep_base_and_bf16_config(self):
        experts = "\n".join(f"  - source_model: {d}\n    positive_prompts: [[1, 2, 3], [4, 5]]"
                            for d in [self.base, *self.copies])
        config = f"base_model: {self.base}\nexperts:\n{experts}\naveraging: keep_base\n"
        with tempfile.TemporaryDirectory() as tmp:
            result, out = merge(tmp, config)
            self.assertEqual(result.returncode, 0, result.stderr)
            with torch.no_grad():
                got = load_mixtral(self, out)(self.ids).logits
            self.assertLessEqual((got - self.expected).abs().max().item(), TOLERANCE)
            result, out = merge(tmp, config + "dtype: bfloat16\n", out="bf16")
            self.assertEqual(result.returncode, 0, result.stderr)
            with open(os.path.join(out, "config.json")) as f:
                self.assertEqual(json.load(f)["dtype"], "bfloat16")
            self.assertEqual(load_file(os.path.join(out, "model.safetensors"))[
                "model.norm.weight"].dtype, torch.bfloat16)

    def test_upcycle(self):
        self.check("upcycle", experts=[self.base] * 4, method="upcycle", gate_mode="zero",
                   experts_per_token=2)


def ties_reference(base, tensors, density, lam):
    """TIES-merging (Yadav et al. 2023) written out independently of btx: trim each task
    vector to its round(density * n) largest magnitudes (ties at the cut kept), elect each
    element's sign by the trimmed sum, average the agreeing non-zero values."""
    base64 = base.double()
    trimmed = []
    for t in tensors:
        tau = t.double() - base64
        n = tau.numel()
        keep = int(math.floor(density * n + 0.5))
        if keep >= n:
            trimmed.append(tau)
            continue
        cut = tau.abs().flatten().sort(descending=True).values[keep - 1]
        trimmed.append(torch.where(tau.abs() >= cut, tau, torch.zeros_like(tau)))
    stacked = torch.stack(trimmed)
    sign = stacked.sum(0).sign()
    agree = (stacked.sign() == sign) & (stacked != 0)
    merged = (stacked * agree).sum(0) / agree.sum(0).clamp(min=1)
    return (base64 + lam * merged).to(base.dtype)


class TiesTrunkMatchesAReference(unittest.TestCase):
    """averaging: ties merges the shared tensors against base_model as a Python TIES does;
    the experts stay each source's FFN; the result loads in transformers."""

    def test_ties_trunk(self):
        with tempfile.TemporaryDirectory() as tmp:
            seed = tiny_llama(60)
            base = os.path.join(tmp, "seed")
            seed.save_pretrained(base)
            dirs = []
            for j in range(3):  # experts branched from the seed: seed + a task vector
                expert = tiny_llama(60)
                torch.manual_seed(70 + j)
                with torch.no_grad():
                    for p in expert.parameters():
                        p.add_(0.05 * torch.randn_like(p))
                d = os.path.join(tmp, f"expert{j}")
                expert.save_pretrained(d)
                dirs.append(d)
            result, out = merge(tmp, yaml_config(base, dirs, gate_mode="random", averaging="ties",
                                                 density=0.3, **{"lambda": 0.8}))
            self.assertEqual(result.returncode, 0, result.stderr)
            load_mixtral(self, out)
            got = {}
            for f in os.listdir(out):
                if f.endswith(".safetensors"):
                    got.update(load_file(os.path.join(out, f)))
            seed_t = load_file(os.path.join(base, "model.safetensors"))
            experts_t = [load_file(os.path.join(d, "model.safetensors")) for d in dirs]
            shared = [n for n in seed_t if ".mlp." not in n]
            self.assertIn("model.embed_tokens.weight", shared)
            for name in shared:
                expected = ties_reference(seed_t[name], [e[name] for e in experts_t], 0.3, 0.8)
                self.assertLessEqual((got[name] - expected).abs().max().item(), 1e-6, name)
                mean = sum(e[name] for e in experts_t) / 3
                self.assertGreater((got[name] - mean).abs().max().item(), 1e-3, name)
            w1 = got["model.layers.1.block_sparse_moe.experts.2.w1.weight"]
            self.assertTrue(torch.equal(w1, experts_t[2]["model.layers.1.mlp.gate_proj.weight"]))
            with open(os.path.join(out, "btx_merge.json")) as f:
                manifest = json.load(f)
            self.assertEqual(manifest["averaging"], {"name": "ties", "density": 0.3, "lambda": 0.8})
            self.assertEqual(manifest["base"], base)


class BadInputLeavesNothing(unittest.TestCase):
    """Mismatches fail before writing: exit 1, a message naming what, no OUT_DIR."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="btx-merge-bad-")
        self.a = os.path.join(self.tmp, "a")
        tiny_llama(50).save_pretrained(self.a)

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def other(self, name, seed=51, **overrides):
        d = os.path.join(self.tmp, name)
        tiny_llama(seed, **overrides).save_pretrained(d)
        return d

    def refused(self, config, *needles, extra=()):
        result, out = merge(self.tmp, config, extra=extra)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn("btx-merge: error:", result.stderr)
        for n in needles:
            self.assertIn(n, result.stderr)
        self.assertFalse(os.path.exists(out))
        self.assertFalse([f for f in os.listdir(self.tmp) if f.startswith("out")])
        return result.stderr

    def test_output_over_an_input_is_refused_even_with_force(self):
        # A user's experts are often their only copy: an OUT_DIR that is an input, contains
        # one or leads to one through a symlink is refused whatever --force says.
        b = self.other("b")
        before = {f: open(os.path.join(b, f), "rb").read() for f in os.listdir(b)}
        os.symlink(b, os.path.join(self.tmp, "link"))
        config = yaml_config(self.a, [self.a, b], gate_mode="random")
        for out in ("b", "", "link"):
            result, _ = merge(self.tmp, config, out=out, extra=("--force",))
            self.assertEqual(result.returncode, 1, result.stderr)
            self.assertIn("would destroy that input", result.stderr)
            self.assertIn("base_model " + self.a if out == "" else b, result.stderr)
        self.assertEqual({f: open(os.path.join(b, f), "rb").read() for f in os.listdir(b)},
                         before)
        self.assertTrue(os.path.exists(os.path.join(self.a, "config.json")))

    def test_mismatched_tensor_shape(self):
        b = self.other("b")
        name = "model.layers.1.mlp.up_proj.weight"
        tensors = load_file(os.path.join(b, "model.safetensors"))
        tensors[name] = torch.zeros(65, 32)
        save_file(tensors, os.path.join(b, "model.safetensors"), metadata={"format": "pt"})
        self.refused(yaml_config(self.a, [self.a, b], gate_mode="random"), name, self.a, b)

    def test_different_vocab_sizes(self):
        b = self.other("b", vocab_size=80)
        self.refused(yaml_config(self.a, [self.a, b], gate_mode="random"), "vocab_size", self.a, b)

    def test_different_tokenizer_files(self):
        b = self.other("b")
        for d, text in ((self.a, '{"a": 1}'), (b, '{"a": 2}')):
            with open(os.path.join(d, "tokenizer.json"), "w") as f:
                f.write(text)
        self.refused(yaml_config(self.a, [self.a, b], gate_mode="random"), "tokenizer.json",
                     self.a, b)

    def test_truncated_safetensors_in_one_expert(self):
        b = self.other("b")
        f = os.path.join(b, "model.safetensors")
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) - 100)
        self.refused(yaml_config(self.a, [self.a, b], gate_mode="random"), f)

    def test_nan_in_one_expert_is_refused_unless_allowed(self):
        b = self.other("b")
        f = os.path.join(b, "model.safetensors")
        for name, where in (("model.layers.1.mlp.up_proj.weight", "[3, 4]"),  # copied unread
                            ("model.layers.0.self_attn.q_proj.weight", "[3, 4]")):  # averaged
            tensors = load_file(f)
            clean = tensors[name].clone()
            tensors[name][3, 4] = float("nan")
            save_file(tensors, f, metadata={"format": "pt"})
            config = yaml_config(self.a, [self.a, b], gate_mode="random")
            self.refused(config, f'tensor "{name}" in {f} holds NaN at {where}', "allow_non_finite")
            result, out = merge(self.tmp, config + "allow_non_finite: true\n")
            self.assertEqual(result.returncode, 0, result.stderr)
            shutil.rmtree(out)
            tensors[name] = clean
            save_file(tensors, f, metadata={"format": "pt"})

    def test_config_errors_name_the_key(self):
        base = yaml_config(self.a, [self.a], gate_mode="random")
        self.refused(base + "mystery_key: 1\n", "mystery_key")
        self.refused(base + "dtype: float8\n", "dtype", "float8")
        self.refused(base + "averaging: ties\ndensity: 1.5\n", "density", "(0, 1]")
        self.refused(base + "lambda: 0.5\n", "lambda", "averaging task_arithmetic, ties")
        self.refused(base + "averaging: ties\nweights: [1]\n", "weights", "ties")
        self.refused("experts: [\n", "not valid YAML")
        self.refused(f"experts:\n  - source_model: {self.a}\n", "base_model")
        self.refused(yaml_config(self.a, [self.a]), "positive_prompts")  # hidden without prompts
        # Without a tokenizer, text prompts are byte-tokenised, which needs vocab_size >= 256.
        self.refused(f"base_model: {self.a}\nexperts:\n  - source_model: {self.a}\n"
                     "    positive_prompts: [\"2+2=4\"]\nexperts_per_token: 1\n",
                     "experts[0].positive_prompts", "no tokenizer", "token ids")

    def test_non_empty_out_dir_needs_force(self):
        out = os.path.join(self.tmp, "out")
        os.makedirs(out)
        with open(os.path.join(out, "keep.txt"), "w") as f:
            f.write("mine")
        config = yaml_config(self.a, [self.a], gate_mode="zero", experts_per_token=1)
        result, _ = merge(self.tmp, config)
        self.assertEqual(result.returncode, 1)
        self.assertIn("--force", result.stderr)
        self.assertTrue(os.path.exists(os.path.join(out, "keep.txt")))
        result, _ = merge(self.tmp, config, extra=("--force",))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertFalse(os.path.exists(os.path.join(out, "keep.txt")))
        self.assertTrue(os.path.exists(os.path.join(out, "config.json")))


class KilledMergeLeavesNothing(unittest.TestCase):
    """SIGKILL of btx-merge at random moments never leaves a partial model at OUT_DIR."""

    def test_repeated_sigkills(self):
        import random
        import signal
        import time
        with tempfile.TemporaryDirectory() as tmp:
            # Big enough (a few MB per model, many tensors) that a merge takes a while.
            paths = []
            for seed in range(3):
                path = os.path.join(tmp, f"m{seed}")
                tiny_llama(seed, hidden_size=256, intermediate_size=512, num_hidden_layers=6,
                           vocab_size=512).save_pretrained(path)
                paths.append(path)
            cfg = os.path.join(tmp, "merge.yaml")
            with open(cfg, "w") as f:
                f.write(yaml_config(paths[0], paths, gate_mode="random", max_shard_size=2000000))
            out_dir = os.path.join(tmp, "out")
            start = time.time()
            done = subprocess.run([MERGE, cfg, out_dir], capture_output=True, text=True)
            full = time.time() - start
            self.assertEqual(done.returncode, 0, done.stderr)
            shutil.rmtree(out_dir)
            rng = random.Random(7)
            killed = 0
            for _ in range(12):
                p = subprocess.Popen([MERGE, cfg, out_dir], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
                time.sleep(rng.uniform(0.0, full))
                if p.poll() is None:
                    p.send_signal(signal.SIGKILL)
                    killed += 1
                p.wait()
                # Absent, or (finished, or killed after the atomic rename) complete.
                if os.path.exists(out_dir):
                    model, info = MixtralForCausalLM.from_pretrained(out_dir, output_loading_info=True)
                    self.assertFalse(info["missing_keys"], "partial output after SIGKILL")
                    shutil.rmtree(out_dir)
                else:
                    self.assertNotEqual(p.returncode, 0)
                # Temp folders of killed runs may remain beside OUT_DIR, never at it, until
                # the next run in the same place collects them.
            self.assertGreater(killed, 3)
            # One leftover for certain: a temp folder whose owner has exited.
            gone = subprocess.Popen(["true"])
            gone.wait()
            os.makedirs(os.path.join(tmp, f"out.tmp-{gone.pid}-dead"))
            leftovers = [f for f in os.listdir(tmp) if f.startswith("out.")]
            # A live writer's temp folder is never collected: this one's owner is this test.
            live = os.path.join(tmp, f"out.tmp-{os.getpid()}-live")
            os.makedirs(live)
            done = subprocess.run([MERGE, cfg, out_dir], capture_output=True, text=True)
            self.assertEqual(done.returncode, 0, done.stderr)
            for f in leftovers:
                self.assertIn(f"removed stale temporary {os.path.join(tmp, f)}", done.stderr)
            self.assertEqual(sorted(f for f in os.listdir(tmp) if f.startswith("out")),
                             ["out", os.path.basename(live)])


class TestOnlyMethod(unittest.TestCase):
    """A merge method registered in a test program alone (tests/tools/merge_with_test_method.cpp:
    "rotate", expert j from source j + by) plugs into btx-merge: its name and option in
    --help, its option read from the config and checked, its experts in a Mixtral that
    transformers loads."""

    def test_rotate_takes_expert_j_from_source_j_plus_by(self):
        program = os.environ["BTX_MERGE_WITH_METHOD"]
        helped = subprocess.run([program, "--help"], capture_output=True, text=True)
        self.assertEqual(helped.returncode, 0)
        self.assertIn("rotate", helped.stdout)
        self.assertIn("sources to skip", helped.stdout)
        with tempfile.TemporaryDirectory() as tmp:
            dirs = []
            for j in range(3):
                d = os.path.join(tmp, f"expert{j}")
                tiny_llama(70 + j).save_pretrained(d)
                dirs.append(d)
            path = os.path.join(tmp, "merge.yaml")
            with open(path, "w") as f:
                f.write(yaml_config(dirs[0], dirs, gate_mode="random", method="rotate", by=2))
            out = os.path.join(tmp, "out")
            r = subprocess.run([program, path, out], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            model = load_mixtral(self, out)
            sd = model.state_dict()
            for j in range(3):
                source = load_file(os.path.join(dirs[(j + 2) % 3], "model.safetensors"))
                got = sd[f"model.layers.1.mlp.experts.gate_up_proj"][j][:64]
                want = source["model.layers.1.mlp.gate_proj.weight"]
                self.assertTrue(torch.equal(got, want), j)
            # Its option is checked by its own schema, named by its config key.
            with open(path, "w") as f:
                f.write(yaml_config(dirs[0], dirs, gate_mode="random", method="rotate", by=-1))
            r = subprocess.run([program, path, os.path.join(tmp, "bad")], capture_output=True,
                               text=True)
            self.assertEqual(r.returncode, 1)
            self.assertIn("by (method rotate) must be >= 0", r.stderr)
            # The plain btx-merge knows no such method.
            with open(path, "w") as f:
                f.write(yaml_config(dirs[0], dirs, gate_mode="random", method="rotate"))
            r = subprocess.run([MERGE, path, os.path.join(tmp, "plain")], capture_output=True,
                               text=True)
            self.assertEqual(r.returncode, 1)
            self.assertIn("method 'rotate' is not one of", r.stderr)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], *sys.argv[1:]], verbosity=2)
