# SPDX-License-Identifier: MIT
# btx-merge's text prompts (mergekit-moe's gate_mode hidden with positive_prompts and
# negative_prompts) are tokenised with the base model's own tokenizer exactly as
# transformers' AutoTokenizer does: tokenizer.json through Python's `tokenizers`,
# tokenizer.model through SentencePiece. The check is end to end: each router row of the
# written Mixtral equals the row computed here from transformers' token ids and the base
# Llama's FFN inputs (mean over the positive prompts' tokens minus the mean over the
# negative ones, unit norm), which a single differing id would change.
# Run: BTX_MERGE=build/bin/btx-merge python tests/python/test_prompts.py [TestClass]
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import sentencepiece as spm
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_interop import tiny_llama  # noqa: E402
from test_merge import merge  # noqa: E402

CORPUS = [line for line in open("/usr/share/common-licenses/GPL-3", encoding="utf-8")
          .read().splitlines() if line.strip()]
# Code, arithmetic, prose; a leading space and runs of whitespace, where transformers'
# Llama conversion and plain SentencePiece disagree unless btx follows transformers.
POSITIVE = [["def add(a, b):\n    return a + b", "for (int i = 0; i < n; ++i) x += i;"],
            ["12 + 30 = 42", " 7 * 6 = 42", "What is 19 - 4?"],
            ["The licence grants you the freedom to share.", "Copyright  (C)  2007"]]
NEGATIVE = [["The licence grants you"], [], ["return a + b"]]


def write_bpe_tokenizer(folder):
    """tokenizer.json: a byte-level BPE trained here whose post-processor adds <s>."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)
    return tok.get_vocab_size()


def write_sentencepiece_tokenizer(folder):
    """tokenizer.model only, Llama-style (identity normalisation, whitespace kept, byte
    fallback), with the tokenizer_config.json transformers' LlamaTokenizer reads."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=600, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, byte_fallback=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", minloglevel=2)
    with open(os.path.join(folder, "tokenizer.model"), "wb") as f:
        f.write(model.getvalue())
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                   "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False}, f)
    return 600


def make_sources(tmp, write_tokenizer):
    """Three tiny Llamas (different weights) sharing one tokenizer."""
    tok_dir = os.path.join(tmp, "tokenizer")
    os.makedirs(tok_dir)
    vocab = write_tokenizer(tok_dir)
    dirs = []
    for j in range(3):
        d = os.path.join(tmp, f"llama{j}")
        tiny_llama(60 + j, vocab_size=vocab).save_pretrained(d)
        for name in os.listdir(tok_dir):
            shutil.copy(os.path.join(tok_dir, name), d)
        dirs.append(d)
    return dirs


def hidden_config(dirs, positive=POSITIVE, negative=NEGATIVE):
    """A mergekit-moe config: gate_mode hidden, text prompts, the first model as base."""
    config = {"base_model": dirs[0], "gate_mode": "hidden", "dtype": "float32",
              "experts_per_token": 2, "experts": []}
    for d, pos, neg in zip(dirs, positive, negative):
        e = {"source_model": d, "positive_prompts": pos}
        if neg:
            e["negative_prompts"] = neg
        config["experts"].append(e)
    return json.dumps(config)


def mean_ffn_inputs(model, tokenizer, prompts):
    """[L, H]: the mean over every prompt token of each layer's post-attention norm output
    (the FFN's input, which the router sees), with transformers' token ids."""
    sums, tokens = None, 0
    for p in prompts:
        ids = torch.tensor([tokenizer(p).input_ids])
        captured = []
        hooks = [layer.post_attention_layernorm.register_forward_hook(
            lambda _m, _i, out: captured.append(out[0].sum(0))) for layer in model.model.layers]
        with torch.no_grad():
            model(ids)
        for h in hooks:
            h.remove()
        s = torch.stack(captured)
        sums = s if sums is None else sums + s
        tokens += ids.numel()
    return sums / tokens


def expected_router(base_dir, positive=POSITIVE, negative=NEGATIVE):
    from transformers import LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(base_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    rows = []
    for pos, neg in zip(positive, negative):
        h = mean_ffn_inputs(model, tokenizer, pos)
        if neg:
            h = h - mean_ffn_inputs(model, tokenizer, neg)
        rows.append(h / h.norm(dim=-1, keepdim=True))
    return torch.stack(rows, dim=1)  # [L, E, H]


def env_with(**kw):
    env = dict(os.environ, BTX_PYTHON=sys.executable)
    env.update(kw)
    return env


class TextPromptsTokeniseAsTransformers(unittest.TestCase):
    def check(self, write_tokenizer, reader):
        with tempfile.TemporaryDirectory() as tmp:
            dirs = make_sources(tmp, write_tokenizer)
            result, out = merge(tmp, hidden_config(dirs))
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn(reader, result.stderr)
            weights = load_file(os.path.join(out, "model.safetensors"))
            expected = expected_router(dirs[0])
            for layer in range(expected.shape[0]):
                got = weights[f"model.layers.{layer}.block_sparse_moe.gate.weight"]
                diff = (got - expected[layer]).abs().max().item()
                self.assertLess(diff, 1e-5, f"layer {layer}: router rows differ by {diff}")
            # The negative prompts count: without them expert 0's row changes.
            result, out2 = merge(tmp, hidden_config(dirs, negative=[[], [], []]), out="plain")
            self.assertEqual(result.returncode, 0, result.stderr)
            plain = load_file(os.path.join(out2, "model.safetensors"))
            name = "model.layers.0.block_sparse_moe.gate.weight"
            self.assertGreater((plain[name][0] - weights[name][0]).abs().max().item(), 1e-3)
            self.assertEqual((plain[name][1] - weights[name][1]).abs().max().item(), 0.0)

    def test_tokenizer_json_through_python_tokenizers(self):
        os.environ["BTX_PYTHON"] = sys.executable
        self.check(write_bpe_tokenizer, "tokenizer.json via Python tokenizers")

    def test_tokenizer_model_through_sentencepiece(self):
        os.environ["BTX_PYTHON"] = sys.executable
        # The leading-space prompt is one where plain SentencePiece disagrees with
        # transformers; btx must side with transformers.
        with tempfile.TemporaryDirectory() as tmp:
            write_sentencepiece_tokenizer(tmp)
            sp = spm.SentencePieceProcessor(model_file=os.path.join(tmp, "tokenizer.model"))
            hf = AutoTokenizer.from_pretrained(tmp)
            self.assertNotEqual(hf(" 7 * 6 = 42").input_ids, [1] + sp.encode(" 7 * 6 = 42"))
        self.check(write_sentencepiece_tokenizer, "tokenizer.model via SentencePiece")


class MissingTokenizerReaders(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="btx-prompts-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def run_merge(self, dirs, python):
        path = os.path.join(self.tmp, "merge.json")
        with open(path, "w") as f:
            f.write(hidden_config(dirs))
        out = os.path.join(self.tmp, "out")
        r = subprocess.run([os.environ.get("BTX_MERGE", "build/bin/btx-merge"), path, out],
                           capture_output=True, text=True, env=env_with(BTX_PYTHON=python))
        return r, out

    def test_no_python_for_tokenizer_json_is_a_clear_error(self):
        dirs = make_sources(self.tmp, write_bpe_tokenizer)
        r, out = self.run_merge(dirs, "/nonexistent/python3")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("experts[0].positive_prompts", r.stderr)
        self.assertIn("tokenizer.json", r.stderr)
        self.assertIn("BTX_PYTHON", r.stderr)
        self.assertFalse(os.path.exists(out))

    def test_python_without_tokenizers_names_the_package(self):
        bare = os.path.join(self.tmp, "bare-python")
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", bare], check=True)
        dirs = make_sources(self.tmp, write_bpe_tokenizer)
        r, out = self.run_merge(dirs, os.path.join(bare, "bin", "python"))
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("pip install tokenizers", r.stderr)
        self.assertFalse(os.path.exists(out))

    def test_tokenizer_model_is_used_when_python_cannot_read_tokenizer_json(self):
        dirs = make_sources(self.tmp, write_sentencepiece_tokenizer)
        for d in dirs:  # an unreadable tokenizer.json beside a good tokenizer.model
            with open(os.path.join(d, "tokenizer.json"), "w") as f:
                f.write('{"version": "1.0"}')
        r, out = self.run_merge(dirs, sys.executable)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("SentencePiece instead of tokenizer.json", r.stderr)
        self.assertTrue(os.path.exists(os.path.join(out, "model.safetensors")))


if __name__ == "__main__":
    unittest.main()
