# SPDX-License-Identifier: MIT
# llama.cpp as a tested client: a Mixtral written by btx-merge (3 and 5 different tiny
# Llamas, top-2, a real SentencePiece tokenizer) goes through llama.cpp's own converter
# (convert_hf_to_gguf.py) to an f32 and an f16 GGUF, runs in llama.cpp (llama-cpp-python),
# and gives btx's next-token logits (btx-interop logits) on the same ids, BOS first, at every
# position; transformers' MixtralForCausalLM is checked alongside as a third reference.
# Opt-in, as llama.cpp is built from source the first time (~10 min on 2 cores, then the
# test itself ~30 s):
#   BTX_LLAMA_CPP=1 BTX_MERGE=build/bin/btx-merge BTX_INTEROP=build/bin/btx-interop \
#     python tests/python/test_llama_cpp.py [TestClass]
# Without BTX_LLAMA_CPP=1 it prints a skip and exits 0. With it, any python3 will do: the
# script runs tests/python/llama_cpp_env.sh (idempotent set-up of build/llama-cpp-venv and
# the pinned llama-cpp-python sdist whose vendor/llama.cpp holds the converter) and re-runs
# itself in that venv.
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
VERSION = os.environ.get("BTX_LLAMA_CPP_PYTHON_VERSION", "0.3.36")
VENV = os.environ.get("BTX_LLAMA_CPP_VENV", os.path.join(ROOT, "build", "llama-cpp-venv"))
WORK = os.environ.get("BTX_LLAMA_CPP_WORK", os.path.join(ROOT, "build", "llama-cpp-work"))
LLAMA_CPP = os.path.join(WORK, f"llama_cpp_python-{VERSION}", "vendor", "llama.cpp")
CONVERTER = os.path.join(LLAMA_CPP, "convert_hf_to_gguf.py")


def _tool(var, name):
    path = os.environ.get(var, os.path.join("build", "bin", name))
    return path if os.path.isabs(path) or os.path.exists(path) else os.path.join(ROOT, path)


MERGE = _tool("BTX_MERGE", "btx-merge")
INTEROP = _tool("BTX_INTEROP", "btx-interop")

# Tolerances on |logits - btx's logits|, the max over every position and vocab entry.
# The tiny models' logits span about +-2.5 (initializer_range 0.1). Measured with
# llama-cpp-python 0.3.36 (llama.cpp 0c1e57098, CPU, -march=native, x86-64 AVX-512):
#                      f32 GGUF   f16 GGUF   transformers
#   ThreeExpertsTop2   1.4e-6     3.4e-3     7.2e-7
#   FiveExpertsTop2    1.2e-6     1.7e-3     6.0e-7
# - f32 GGUF (and an f32 KV cache): both sides compute in fp32 and differ only in summation
#   order (ggml's SIMD dot products vs ATen's GEMM), ~1e-6; 1e-4 leaves ~70x margin.
# - f16 GGUF: every 2-D weight but the router (kept f32 by the converter) is rounded to f16
#   (rel. error 2^-11) and ggml rounds activations to f16 before those matmuls: ~3e-3 at this
#   scale; 2e-2 leaves ~6x margin.
# A routing mistake (two router rows swapped in the last layer) moves these logits by
# 1.0-1.6, far above both tolerances (test_tolerance_sees_a_routing_mistake checks it), and
# the ids route to every expert (test_every_expert_is_routed_to).
F32_TOLERANCE = 1e-4
F16_TOLERANCE = 2e-2
TRANSFORMERS_TOLERANCE = 1e-4  # transformers vs btx, both fp32 ATen (as test_merge.py)


def _llama_eval(gguf_path, ids_json, out_npz):
    """Child process: llama.cpp's logits for each id sequence (a GGML_ASSERT in llama.cpp
    aborts the process, so the test runs llama.cpp out of process)."""
    import numpy as np
    from llama_cpp import Llama

    with open(ids_json) as f:
        job = json.load(f)
    n_ctx = max(len(s) for s in job["ids"]) + 16
    # f32 KV cache (the default is f16, which would round K and V even for an f32 GGUF);
    # no flash attention; one batch holds a whole sequence.
    llm = Llama(model_path=gguf_path, logits_all=True, n_ctx=n_ctx, n_batch=n_ctx,
                n_ubatch=n_ctx, n_threads=2, n_threads_batch=2, type_k=0, type_v=0,
                flash_attn=False, seed=0, verbose=False)
    out = {}
    for i, ids in enumerate(job["ids"]):
        llm.reset()
        llm.eval(ids)
        out[f"logits{i}"] = np.array(llm.scores[: len(ids)], dtype=np.float32)
    out["tokens"] = np.array(llm.tokenize(job["text"].encode(), add_bos=True), dtype=np.int64)
    meta = llm.metadata
    out["n_expert"] = np.array(int(meta.get("llama.expert_count", 0)))
    out["n_expert_used"] = np.array(int(meta.get("llama.expert_used_count", 0)))
    np.savez(out_npz, **out)


def _skip_or_reexec():
    if os.environ.get("BTX_LLAMA_CPP") != "1":
        print("test_llama_cpp: skipped (set BTX_LLAMA_CPP=1 to build llama.cpp and run it)")
        sys.exit(77)  # ctest's SKIP_RETURN_CODE: reported as skipped, not passed
    if os.environ.get("BTX_LLAMA_CPP_READY") != "1":
        subprocess.run(["bash", os.path.join(HERE, "llama_cpp_env.sh")], check=True)
        os.environ["BTX_LLAMA_CPP_READY"] = "1"
        py = os.path.join(VENV, "bin", "python")
        os.execv(py, [py, os.path.abspath(__file__), *sys.argv[1:]])


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--llama-eval":
        _llama_eval(*sys.argv[2:])
        sys.exit(0)
    _skip_or_reexec()

# ---- the tests proper (in the llama.cpp venv) -------------------------------------------
import glob  # noqa: E402
import io  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import unittest  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import MixtralForCausalLM  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

sys.path.insert(0, HERE)
from test_interop import tiny_llama  # noqa: E402
from test_merge import yaml_config  # noqa: E402

hf_logging.disable_progress_bar()
VOCAB = 512
TEXT = "Everyone is permitted to copy and distribute verbatim copies of this license document."
MEASURED = {}  # case -> {reference: max abs diff}, printed at the end


def sentencepiece_model():
    """A real SentencePiece BPE model (unk 0, bos 1, eos 2), trained here on the license
    texts every Debian has, so the converter reads tokenizer.model as for a real Llama."""
    import sentencepiece as spm
    text = []
    for path in sorted(glob.glob("/usr/share/common-licenses/*")):
        if os.path.isfile(path):
            with open(path, errors="ignore") as f:
                text += [line.strip() for line in f if line.strip()]
    if len(text) < 1000:  # not Debian: some text of our own
        text += [f"{w} number {i} of the btx merge test" for i, w in
                 enumerate(TEXT.split() * 200)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_writer=model, vocab_size=VOCAB, model_type="bpe",
        character_coverage=1.0, num_threads=1, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        minloglevel=2)
    return model.getvalue()


def write_tokenizer(folder, sp_model):
    with open(os.path.join(folder, "tokenizer.model"), "wb") as f:
        f.write(sp_model)
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True,
                   "add_eos_token": False, "model_max_length": 128, "legacy": False,
                   **special}, f, indent=1)
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=1)


def run(cmd, what, **kwargs):
    start = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if r.returncode != 0:
        raise AssertionError(f"{what} failed (exit {r.returncode}):\n{r.stdout[-3000:]}\n"
                             f"{r.stderr[-6000:]}")
    return r, time.time() - start


class MixtralRunsInLlamaCpp:
    """A btx-merge Mixtral of N different tiny Llamas, top-2, through llama.cpp."""

    experts = None  # set by the subclasses

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="btx-llama-cpp-")
        cls.ckpt, cls.sp = cls.build_mixtral(cls.tmp)
        assert cls.sp.vocab_size() == VOCAB
        # The ids: BOS + the text as SentencePiece tokenizes it, and BOS + random ids.
        gen = torch.Generator().manual_seed(cls.experts)
        cls.ids = [[1] + cls.sp.encode(TEXT),
                   [1] + torch.randint(3, VOCAB, (23,), generator=gen).tolist()]
        cls.ggufs, cls.llama = {}, {}
        for outtype in ("f32", "f16"):
            gguf = os.path.join(cls.tmp, f"mixtral-{outtype}.gguf")
            env = dict(os.environ, PYTHONPATH=os.path.join(LLAMA_CPP, "gguf-py"))
            run([sys.executable, CONVERTER, cls.ckpt, "--outtype", outtype,
                           "--outfile", gguf], f"convert_hf_to_gguf.py --outtype {outtype}",
                          env=env)
            cls.ggufs[outtype] = gguf
            cls.llama[outtype] = cls.llama_logits(gguf)

    @classmethod
    def build_mixtral(cls, tmp):
        """btx-merge of `experts` different tiny Llamas sharing a SentencePiece tokenizer;
        returns the Mixtral folder and its tokenizer."""
        import sentencepiece as spm
        sp_model = sentencepiece_model()
        dirs = []
        for j in range(cls.experts):
            d = os.path.join(tmp, f"llama{j}")
            # hidden 64, 4 heads of 16 (GQA 2 KV heads), FFN 96, 2 layers, fp32; a wider
            # init than HF's 0.02 so logits (and router scores) are O(1), not O(0.1).
            tiny_llama(100 * cls.experts + j, hidden_size=64, intermediate_size=96,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                       initializer_range=0.1).save_pretrained(d)
            write_tokenizer(d, sp_model)
            dirs.append(d)
        config = os.path.join(tmp, "merge.yaml")
        with open(config, "w") as f:
            f.write(yaml_config(dirs[0], dirs, gate_mode="random", experts_per_token=2,
                                seed=7, dtype="float32"))
        ckpt = os.path.join(tmp, "mixtral")
        run([MERGE, config, ckpt], "btx-merge")
        return ckpt, spm.SentencePieceProcessor(model_proto=sp_model)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def llama_logits(cls, gguf):
        job, out = os.path.join(cls.tmp, "job.json"), os.path.join(cls.tmp, "llama.npz")
        with open(job, "w") as f:
            json.dump({"ids": cls.ids, "text": TEXT}, f)
        run([sys.executable, os.path.abspath(__file__), "--llama-eval", gguf, job, out],
            "llama.cpp (llama-cpp-python) eval")
        with np.load(out) as z:
            return {k: z[k] for k in z.files}

    def btx_logits(self, ids):
        ids_file = os.path.join(self.tmp, "ids.safetensors")
        out = os.path.join(self.tmp, "btx-logits.safetensors")
        save_file({"ids": torch.tensor([ids])}, ids_file)
        run([INTEROP, "logits", self.ckpt, ids_file, out], "btx-interop logits")
        return load_file(out)["logits"][0].float()

    def record(self, what, diff):
        MEASURED.setdefault(type(self).__name__, {})[what] = max(
            diff, MEASURED.get(type(self).__name__, {}).get(what, 0.0))

    def test_merged_config_and_gguf_metadata(self):
        with open(os.path.join(self.ckpt, "config.json")) as f:
            config = json.load(f)
        self.assertEqual(config["num_local_experts"], self.experts)
        self.assertEqual(config["num_experts_per_tok"], 2)
        self.assertIn("tokenizer.model", os.listdir(self.ckpt))
        for outtype, got in self.llama.items():
            self.assertEqual(int(got["n_expert"]), self.experts, outtype)
            self.assertEqual(int(got["n_expert_used"]), 2, outtype)

    def test_llama_cpp_tokenizes_like_sentencepiece(self):
        # The tokenizer.model btx-merge copied from the base is the one llama.cpp uses.
        for outtype, got in self.llama.items():
            self.assertEqual(got["tokens"].tolist(), self.ids[0], outtype)

    def transformers_mixtral(self):
        return MixtralForCausalLM.from_pretrained(self.ckpt, dtype=torch.float32).eval()

    def test_logits_match_btx_and_transformers(self):
        model = self.transformers_mixtral()
        for i, ids in enumerate(self.ids):
            btx = self.btx_logits(ids)
            with torch.no_grad():
                hf = model(torch.tensor([ids])).logits[0].float()
            self.assertEqual(tuple(btx.shape), (len(ids), VOCAB))
            self.record("max |logit|", btx.abs().max().item())
            diff = (hf - btx).abs().max().item()
            self.record("transformers", diff)
            self.assertLessEqual(diff, TRANSFORMERS_TOLERANCE, f"transformers, sequence {i}")
            top2 = btx.topk(2, -1).values
            decided = (top2[:, 0] - top2[:, 1]) > 2 * F16_TOLERANCE
            for outtype, tol in (("f32", F32_TOLERANCE), ("f16", F16_TOLERANCE)):
                got = torch.from_numpy(self.llama[outtype][f"logits{i}"])
                self.assertEqual(tuple(got.shape), tuple(btx.shape))
                diff = (got - btx).abs().max().item()
                self.record(f"llama.cpp {outtype}", diff)
                self.assertLessEqual(diff, tol, f"llama.cpp {outtype} GGUF, sequence {i}")
                # The same next token wherever btx's top two are further apart than 2 tol.
                self.assertEqual(got.argmax(-1)[decided].tolist(), btx.argmax(-1)[decided].tolist(),
                                 f"llama.cpp {outtype} GGUF, sequence {i}")

    def test_every_expert_is_routed_to(self):
        # The ids reach every expert (top-2 of the random router), so a wrong expert
        # (order, packing, transposition) in the GGUF changes the compared logits.
        model = self.transformers_mixtral()
        used = set()
        for ids in self.ids:
            with torch.no_grad():
                out = model(torch.tensor([ids]), output_router_logits=True)
            for layer in out.router_logits:
                used |= set(layer.reshape(-1, self.experts).topk(2, -1).indices.flatten().tolist())
        self.assertEqual(used, set(range(self.experts)))

    def test_tolerance_sees_a_routing_mistake(self):
        model = self.transformers_mixtral()
        ids = torch.tensor([self.ids[0]])
        with torch.no_grad():
            good = model(ids).logits[0]
            gate = model.model.layers[-1].mlp.gate.weight
            gate.copy_(gate[[1, 0, *range(2, self.experts)]])  # experts 0 and 1 swapped
            bad = model(ids).logits[0]
        diff = (good - bad).abs().max().item()
        self.record("router rows 0,1 swapped (transformers)", diff)
        self.assertGreater(diff, 5 * F16_TOLERANCE)


class ThreeExpertsTop2(MixtralRunsInLlamaCpp, unittest.TestCase):
    experts = 3


class FiveExpertsTop2(MixtralRunsInLlamaCpp, unittest.TestCase):
    experts = 5


class PipelineFinalStage(MixtralRunsInLlamaCpp, unittest.TestCase):
    """The Mixtral of `btx-pipeline --quick` (3 domain experts + the seed, top-2, trained),
    with the SentencePiece tokenizer the pipeline trained and wrote into it."""
    experts = 4

    @classmethod
    def build_mixtral(cls, tmp):
        import sentencepiece as spm
        run_dir = os.path.join(tmp, "run")
        run([_tool("BTX_PIPELINE", "btx-pipeline"), "--quick", "--run-dir", run_dir,
             "--until", "finetune"], "btx-pipeline --quick",
            env=dict(os.environ, OMP_NUM_THREADS="1"))
        ckpt = os.path.join(run_dir, "btx-top2", "model")
        return ckpt, spm.SentencePieceProcessor(
            model_file=os.path.join(ckpt, "tokenizer.model"))


if __name__ == "__main__":
    result = unittest.main(exit=False).result
    for case, diffs in sorted(MEASURED.items()):
        print(f"{case}: " + ", ".join(f"{k} {v:.3g}" for k, v in sorted(diffs.items())),
              file=sys.stderr)
    sys.exit(0 if result.wasSuccessful() else 1)
