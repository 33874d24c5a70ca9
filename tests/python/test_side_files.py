# SPDX-License-Identifier: MIT
# What a user ships besides the weights: every tokenizer, chat-template and generation file
# of the base model survives btx-merge and every pipeline stage byte for byte, transformers'
# apply_chat_template works on the merged folder as on the base, tokenizers that give
# different ids or special tokens are refused (unless tokenizer_source picks one), and the
# merge's model card records the method, the sources with their hashes, and the config.
# Run: BTX_MERGE=build/bin/btx-merge BTX_PIPELINE=build/bin/btx-pipeline \
#      python tests/python/test_side_files.py [TestClass]
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

# btx-pipeline encodes a seed checkpoint's text with its tokenizer.json through Python's
# `tokenizers` ($BTX_PYTHON, else python3): this interpreter has it.
os.environ.setdefault("BTX_PYTHON", sys.executable)

import yaml
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, MixtralForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_interop import tiny_llama  # noqa: E402
from test_merge import merge, yaml_config  # noqa: E402

PIPELINE = os.environ.get("BTX_PIPELINE", "build/bin/btx-pipeline")
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
TOOL_TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}"
# Every side file btx keeps; additional_chat_templates is a folder.
SIDE_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
              "chat_template.jinja", "generation_config.json",
              os.path.join("additional_chat_templates", "tool_use.jinja")]


def write_tokenizer(folder, vocab_size, template=TEMPLATE, eos="</s>"):
    """A real BPE tokenizer (trained here) saved by transformers, plus every other side file
    a checkpoint may carry: a SentencePiece-style tokenizer.model (bytes only: btx copies it),
    BPE's vocab.json + merges.txt, added_tokens.json, a generation config and a second
    template in additional_chat_templates/."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    text = ["the quick brown fox jumps over the lazy dog"] * 20 + ["def add(a, b): return a + b"]
    tok.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<|user|>",
                                               "<|assistant|>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token=eos,
                                   unk_token="<unk>")
    fast.chat_template = template
    fast.save_pretrained(folder)
    tok.model.save(folder)  # vocab.json + merges.txt
    with open(os.path.join(folder, "tokenizer.model"), "wb") as f:
        f.write(bytes(range(256)) * 3)
    with open(os.path.join(folder, "added_tokens.json"), "w") as f:
        json.dump({"<|user|>": 3, "<|assistant|>": 4}, f)
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2, "max_new_tokens": 7}, f)
    if not os.path.exists(os.path.join(folder, "chat_template.jinja")):  # transformers 4
        with open(os.path.join(folder, "chat_template.jinja"), "w") as f:
            f.write(template)
    os.makedirs(os.path.join(folder, "additional_chat_templates"), exist_ok=True)
    with open(os.path.join(folder, "additional_chat_templates", "tool_use.jinja"), "w") as f:
        f.write(TOOL_TEMPLATE)
    if not os.path.exists(os.path.join(folder, "special_tokens_map.json")):
        with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
            json.dump({"bos_token": "<s>", "eos_token": eos, "unk_token": "<unk>"}, f)


def checkpoint(folder, seed, vocab_size=64, **tok):
    tiny_llama(seed, vocab_size=vocab_size).save_pretrained(folder)
    write_tokenizer(folder, vocab_size, **tok)
    return folder


def read(path):
    with open(path, "rb") as f:
        return f.read()


class MergeKeepsSideFiles(unittest.TestCase):
    """btx-merge of three checkpoints carrying every side file."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="btx-side-")
        cls.dirs = [checkpoint(os.path.join(cls.tmp, f"m{j}"), 70 + j) for j in range(3)]
        with open(os.path.join(cls.dirs[0], "README.md"), "w") as f:
            f.write("---\nlicense: apache-2.0\ntags:\n- text\n---\n# the base\n")
        cls.config = yaml_config(cls.dirs[0], cls.dirs, gate_mode="random", experts_per_token=2)
        cls.result, cls.out = merge(cls.tmp, cls.config)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_every_side_file_is_the_base_models_byte_for_byte(self):
        self.assertEqual(self.result.returncode, 0, self.result.stderr)
        for name in SIDE_FILES:
            with self.subTest(name=name):
                self.assertEqual(read(os.path.join(self.out, name)),
                                 read(os.path.join(self.dirs[0], name)))

    def test_chat_template_applies_in_transformers_as_on_the_base(self):
        messages = [{"role": "user", "content": "the quick fox"}]
        want = AutoTokenizer.from_pretrained(self.dirs[0]).apply_chat_template(
            messages, add_generation_prompt=True)
        tok = AutoTokenizer.from_pretrained(self.out)
        self.assertIsNotNone(tok.chat_template)
        got = tok.apply_chat_template(messages, add_generation_prompt=True)
        if hasattr(got, "input_ids") or isinstance(got, dict):  # transformers 5: a BatchEncoding
            got, want = got["input_ids"], want["input_ids"]
        self.assertEqual(got, want)
        self.assertIn(tok.convert_tokens_to_ids("<|assistant|>"), got)
        # ... and the merged model runs on those ids.
        import torch
        model = MixtralForCausalLM.from_pretrained(self.out).eval()
        with torch.no_grad():
            logits = model(torch.tensor([got])).logits
        self.assertEqual(tuple(logits.shape), (1, len(got), 64))

    def test_model_card(self):
        text = read(os.path.join(self.out, "README.md")).decode()
        m = re.match(r"---\n(.*?)\n---\n", text, re.S)
        self.assertIsNotNone(m, text[:300])
        front = yaml.safe_load(m.group(1))
        self.assertEqual(front["license"], "apache-2.0")  # the base's card declares it
        self.assertEqual(front["base_model"], self.dirs)  # base first, then the other sources
        for tag in ("btx", "merge", "moe", "mixtral"):
            self.assertIn(tag, front["tags"])
        self.assertEqual(front["library_name"], "transformers")
        for needle in ("Branch-Train-MiX", "| experts per token (top-k) | 2 |",
                       "| experts per MoE layer | 3 |", "uniform_mean", "normal",
                       "## Checks btx ran", "## Configuration", "gate_mode: random"):
            self.assertIn(needle, text)
        # One row per source file with its XXH3-128: different weights, different hashes.
        rows = re.findall(r"\| (expert \d|base) \| ([^|]+) \| model\.safetensors \| `([0-9a-f]{32})`",
                          text)
        by_role = {role: (path.strip(), h) for role, path, h in rows}
        self.assertEqual(sorted(by_role), ["base", "expert 0", "expert 1", "expert 2"])
        self.assertEqual(by_role["base"][1], by_role["expert 0"][1])  # the same folder
        self.assertEqual(len({by_role[f"expert {j}"][1] for j in range(3)}), 3)


class TokenizersThatDiffer(unittest.TestCase):
    """Sources whose tokenizers mean different things are refused; cosmetic differences
    are not; tokenizer_source picks the folder to keep."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="btx-side-diff-")
        self.a = checkpoint(os.path.join(self.tmp, "a"), 80)

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def refused(self, config, *needles):
        result, out = merge(self.tmp, config, out="refused")
        self.assertEqual(result.returncode, 1, result.stderr)
        for n in needles:
            self.assertIn(n, result.stderr)
        self.assertFalse(os.path.exists(out))
        return result.stderr

    def test_a_different_vocabulary_is_refused_naming_the_file(self):
        b = checkpoint(os.path.join(self.tmp, "b"), 81)
        tj = json.loads(read(os.path.join(b, "tokenizer.json")))
        vocab = tj["model"]["vocab"]
        first, second = sorted(vocab, key=vocab.get)[10:12]
        vocab[first], vocab[second] = vocab[second], vocab[first]  # two ids swapped
        with open(os.path.join(b, "tokenizer.json"), "w") as f:
            json.dump(tj, f)
        self.refused(yaml_config(self.a, [self.a, b], gate_mode="random"),
                     "tokenizer.json", '"model"', self.a, b, "tokenizer_source")

    def test_a_different_special_token_is_refused_naming_it(self):
        b = checkpoint(os.path.join(self.tmp, "b"), 81, eos="<|assistant|>")
        # tokenizer.json and vocab files agree; only which token ends a turn differs.
        for name in ("tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json"):
            shutil.copyfile(os.path.join(self.a, name), os.path.join(b, name))
        self.refused(yaml_config(self.a, [self.a, b], gate_mode="random"), "eos_token")

    def test_only_a_different_chat_template_is_accepted_keeping_the_bases(self):
        b = checkpoint(os.path.join(self.tmp, "b"), 81, template=TOOL_TEMPLATE)
        for name in ("tokenizer.json", "vocab.json", "merges.txt"):
            shutil.copyfile(os.path.join(self.a, name), os.path.join(b, name))
        # Padding settings in tokenizer.json are runtime options, not vocabulary.
        tj = json.loads(read(os.path.join(b, "tokenizer.json")))
        tj["padding"] = {"strategy": "BatchLongest", "direction": "Left", "pad_to_multiple_of":
                         None, "pad_id": 0, "pad_type_id": 0, "pad_token": "<unk>"}
        with open(os.path.join(b, "tokenizer.json"), "w") as f:
            json.dump(tj, f)
        result, out = merge(self.tmp, yaml_config(self.a, [self.a, b], gate_mode="random"))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(read(os.path.join(out, "chat_template.jinja")),
                         read(os.path.join(self.a, "chat_template.jinja")))

    def test_tokenizer_source_picks_the_folder_and_union_is_refused(self):
        b = checkpoint(os.path.join(self.tmp, "b"), 81, eos="<|assistant|>",
                       template=TOOL_TEMPLATE)
        config = yaml_config(self.a, [self.a, b], gate_mode="random")
        result, out = merge(self.tmp, config + f"tokenizer_source: {b}\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        for name in SIDE_FILES:
            self.assertEqual(read(os.path.join(out, name)), read(os.path.join(b, name)), name)
        self.assertIn("tokenizer_source names", read(os.path.join(out, "README.md")).decode())
        self.refused(config + "tokenizer_source: union\n", "tokenizer_source", "union")
        self.refused(config + f"tokenizer_source: {self.tmp}/nowhere\n", "tokenizer_source",
                     "nowhere")


class PipelineStagesKeepSideFiles(unittest.TestCase):
    """btx-pipeline --quick from a seed checkpoint carrying every side file: each stage's
    model folder carries them byte for byte, and the final MoE's chat template applies."""

    def test_quick_pipeline(self):
        with tempfile.TemporaryDirectory() as tmp:
            seed = checkpoint(os.path.join(tmp, "seed"), 90, vocab_size=256)
            config = os.path.join(tmp, "run.yaml")
            with open(config, "w") as f:
                f.write(f"seed_checkpoint: {seed}\n")
            run_dir = os.path.join(tmp, "run")
            r = subprocess.run([PIPELINE, config, "--quick", "--run-dir", run_dir],
                               capture_output=True, text=True, timeout=900)
            self.assertEqual(r.returncode, 0, r.stderr[-3000:])
            stages = sorted(d for d in os.listdir(run_dir)
                            if os.path.exists(os.path.join(run_dir, d, "model", "config.json")))
            self.assertIn("btx-top2", stages)
            self.assertGreaterEqual(len(stages), 5, stages)
            for stage in stages:
                for name in SIDE_FILES:
                    with self.subTest(stage=stage, name=name):
                        self.assertEqual(read(os.path.join(run_dir, stage, "model", name)),
                                         read(os.path.join(seed, name)))
            tok = AutoTokenizer.from_pretrained(os.path.join(run_dir, "btx-top2", "model"))
            self.assertIn("<|assistant|>", tok.apply_chat_template(
                [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False))


if __name__ == "__main__":
    unittest.main()
