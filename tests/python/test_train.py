# SPDX-License-Identifier: MIT
"""btx-train (tools/btx-train) on a checkpoint and documents of the user's own.

The same documents as JSONL, Parquet and a text folder give identical token files, equal to
transformers' own tokenizer's ids packed with EOS; bad data fails naming file, line/row and
field with nothing trained or written; router-only training of a btx-merge MoE changes the
router weights and nothing else, tensor by tensor, and the result loads in transformers; a
SIGKILLed run resumes to the unbroken run's weights bit for bit; two ranks under torchrun
equal one within tolerance. transformers and pyarrow are only independent references.
Run: BTX_TRAIN=build/bin/btx-train BTX_MERGE=build/bin/btx-merge python tests/python/test_train.py
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import torch
from safetensors.torch import load_file

os.environ.setdefault("BTX_PYTHON", sys.executable)  # btx reads tokenizer.json through it

TRAIN = os.environ.get("BTX_TRAIN", "build/bin/btx-train")
# btx-train reads Parquet only when built with Arrow (CMake BTX_PARQUET, on in the README's
# test command); built without it, the Parquet cases say they are skipped.
PARQUET = os.environ.get("BTX_TRAIN_PARQUET", "1") not in ("0", "OFF", "")
MERGE = os.environ.get("BTX_MERGE", "build/bin/btx-merge")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_interop import tiny_llama  # noqa: E402

EOS = "<|endoftext|>"


def documents(domain, n=30):
    """n small documents of one domain, with newlines, quotes and non-ASCII text."""
    out = []
    for i in range(n):
        if domain == "math":
            out.append(f"{i} + {2 * i} = {3 * i}\n{i} * 3 = {3 * i}")
        elif domain == "code":
            out.append(f'def f{i}(x):\n    return x * {i}  # "twice" {i}\n')
        else:
            out.append(f"Café número {i}: the quick brown fox — jumps over {i} lazy dogs.")
    return out


def make_tokenizer(folder, texts, special=()):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=[EOS, *special],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS,
                   "bos_token": EOS}, f)
    return tok.get_vocab_size()


def make_model(folder, seed=0, special=()):
    """A tiny Llama with a real BPE tokenizer trained on the test's documents (and `special`
    tokens, as a chat model's template uses)."""
    os.makedirs(folder, exist_ok=True)
    texts = [d for dom in ("math", "code", "prose") for d in documents(dom)]
    vocab = make_tokenizer(folder, texts, special)
    model = tiny_llama(seed, vocab_size=vocab, eos_token_id=0, bos_token_id=0)
    model.save_pretrained(folder)
    return folder


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def read_text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def read_json(path):
    return json.loads(read_text(path))


def write_config(path, **keys):
    with open(path, "w") as f:
        json.dump(keys, f)
    return path


def train(config, *extra, timeout=600, env=None):
    return subprocess.run([TRAIN, config, *extra], capture_output=True, text=True,
                          timeout=timeout, env=env)


def tiny_run(**overrides):
    keys = dict(steps=6, lr=3e-3, warmup=1, batch_size=4, seq_len=16, log_every=2,
                held_out_windows=2, routing_windows=2)
    keys.update(overrides)
    return keys


class DataFormats(unittest.TestCase):
    """JSONL, Parquet and a text folder of the same documents: the same token files."""

    def test_same_documents_same_tokens_as_transformers(self):
        import pyarrow as pa
        import pyarrow.parquet as pq
        from transformers import AutoTokenizer
        with tempfile.TemporaryDirectory() as tmp:
            model = make_model(os.path.join(tmp, "model"))
            docs = documents("code") + ["", "ünïcode 😀 漢字"]
            folder = os.path.join(tmp, "text")
            os.makedirs(folder)
            for i, d in enumerate(docs):
                with open(os.path.join(folder, f"doc{i:03d}.txt"), "w", encoding="utf-8") as f:
                    f.write(d)
            with open(os.path.join(tmp, "docs.jsonl"), "w", encoding="utf-8") as f:
                for d in docs:
                    f.write(json.dumps({"id": 1, "content": d}, ensure_ascii=False) + "\n")
            pq.write_table(pa.table({"content": docs}), os.path.join(tmp, "docs.parquet"))
            sources = {"text": {"paths": [folder]},
                       "jsonl": {"paths": [os.path.join(tmp, "docs.jsonl")], "field": "content"},
                       "parquet": {"paths": [os.path.join(tmp, "docs.parquet")],
                                   "field": "content"}}
            if not PARQUET:
                del sources["parquet"]
            got = {}
            for name, domain in sources.items():
                run_dir = os.path.join(tmp, "run-" + name)
                cfg = write_config(os.path.join(tmp, name + ".json"), model=model, run_dir=run_dir,
                                   domains=[{"name": "code", **domain}])
                r = train(cfg, "--data-only")
                self.assertEqual(r.returncode, 0, r.stderr)
                cache = os.path.join(run_dir, "token-cache")
                files = sorted(os.listdir(cache))
                self.assertEqual(len([f for f in files if f.endswith(".json")]), 1, files)
                got[name] = {split: read_bytes(os.path.join(cache, f))
                             for f in files for split in ("train", "eval")
                             if f.endswith(f".{split}.bin")}
            self.assertEqual(got["jsonl"], got["text"])
            if PARQUET:
                self.assertEqual(got["parquet"], got["text"])
            # The ids transformers' tokenizer gives, EOS after each document, every 10th
            # document from the 5th held out.
            tok = AutoTokenizer.from_pretrained(model)
            want = {"train": [], "eval": []}
            for i, d in enumerate(docs):
                split = "eval" if i % 10 == 5 else "train"
                want[split] += tok(d, add_special_tokens=False).input_ids + [0]
            for split in ("train", "eval"):
                ids = torch.frombuffer(bytearray(got["text"][split]), dtype=torch.int32).tolist()
                self.assertEqual(ids, want[split], split)


# SmolLM2-Instruct's template (ChatML with a default system prompt).
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
# Real models' templates (llama.cpp's test set, fetched with minja by the test command).
TEMPLATES = os.environ.get("BTX_CHAT_TEMPLATES_DIR", "")
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Héllo \"quoted\" <b>x</b> 漢字\nline two"},
     {"role": "assistant", "content": "  Hi!  "}, {"role": "user", "content": "again"},
     {"role": "assistant", "content": "ok"}],
    [{"role": "user", "content": "think"},
     {"role": "assistant", "content": "42", "reasoning_content": "6 * 7"}],
]


class ChatData(unittest.TestCase):
    """Chat JSONL rendered by the checkpoint's own template exactly as transformers'
    apply_chat_template renders and tokenises it, for SmolLM2's template and real models'."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="btx-train-chat-")
        cls.model = make_model(os.path.join(cls.tmp, "model"),
                               special=("<|im_start|>", "<|im_end|>"))
        cls.chat = os.path.join(cls.tmp, "chat.jsonl")
        with open(cls.chat, "w", encoding="utf-8") as f:
            for c in CONVERSATIONS:
                f.write(json.dumps({"id": 7, "messages": c}, ensure_ascii=False) + "\n")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def with_template(self, name, template):
        folder = os.path.join(self.tmp, "with-" + name)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(self.model, folder)
        with open(os.path.join(folder, "chat_template.jinja"), "w", encoding="utf-8") as f:
            f.write(template)
        return folder

    def shown(self, model, conversations=None):
        chat = self.chat
        if conversations is not None:
            chat = os.path.join(self.tmp, "some.jsonl")
            with open(chat, "w", encoding="utf-8") as f:
                for c in conversations:
                    f.write(json.dumps({"messages": c}, ensure_ascii=False) + "\n")
        cfg = write_config(os.path.join(self.tmp, "show.json"), model=model,
                           run_dir=os.path.join(self.tmp, "run-show"),
                           domains=[{"name": "chat", "paths": [chat], "format": "chat"}])
        r = train(cfg, "--show-documents", "10")
        return r, [json.loads(line) for line in r.stdout.splitlines() if line.strip()]

    def transformers_render(self, model, conversation):
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(model)
        text = tok.apply_chat_template(conversation, tokenize=False)
        ids = tok.apply_chat_template(conversation, tokenize=True)
        if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        return text, list(ids)

    def test_smollm2_template_renders_and_tokenises_as_transformers(self):
        model = self.with_template("smollm2", SMOLLM2_TEMPLATE)
        r, docs = self.shown(model)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(docs), len(CONVERSATIONS))
        for doc, conv in zip(docs, CONVERSATIONS):
            text, ids = self.transformers_render(model, conv)
            self.assertEqual(doc["text"], text)
            self.assertEqual(doc["ids"], ids)
            from transformers import AutoTokenizer
            im_end = AutoTokenizer.from_pretrained(model).convert_tokens_to_ids("<|im_end|>")
            self.assertIn(im_end, ids)  # one token, as in transformers
        # The token files pack those ids with EOS after each conversation.
        run_dir = os.path.join(self.tmp, "run-data")
        cfg = write_config(os.path.join(self.tmp, "data.json"), model=model, run_dir=run_dir,
                           domains=[{"name": "chat", "paths": [self.chat], "format": "chat",
                                     "eval_every": 2}])
        r = train(cfg, "--data-only")
        self.assertEqual(r.returncode, 0, r.stderr)
        cache = os.path.join(run_dir, "token-cache")
        train_bin = [f for f in os.listdir(cache) if f.endswith(".train.bin")]
        got = torch.frombuffer(bytearray(read_bytes(os.path.join(cache, train_bin[0]))),
                               dtype=torch.int32).tolist()
        self.assertEqual(got, docs[0]["ids"] + [0] + docs[2]["ids"] + [0])  # doc 1 held out

    def test_real_models_templates_render_as_transformers(self):
        if not TEMPLATES:
            self.skipTest("BTX_CHAT_TEMPLATES_DIR not set (cmake/fetch_minja.sh fetches them)")
        import jinja2
        names = sorted(n for n in os.listdir(TEMPLATES) if n.endswith(".jinja"))
        compared, needs_tools, refusals = [], [], 0
        for name in names:
            model = self.with_template(name[:-6], read_text(os.path.join(TEMPLATES, name)))
            rendered, raised = [], []
            for conv in CONVERSATIONS:
                try:
                    rendered.append((conv, self.transformers_render(model, conv)))
                except Exception as e:  # noqa: BLE001 (what transformers refuses, and why)
                    raised.append((conv, e))
            if any(type(e) is not jinja2.exceptions.TemplateError for _, e in raised):
                # Not the template's own raise_exception: it needs tools, which transformers
                # passes as None and these templates iterate (minja takes None as empty).
                needs_tools.append(name)
                continue
            r, docs = self.shown(model, [c for c, _ in rendered])
            self.assertEqual(r.returncode, 0, name + ": " + r.stderr)
            self.assertEqual(len(docs), len(rendered), name)
            for doc, (_, (text, ids)) in zip(docs, rendered):
                self.assertEqual(doc["text"], text, name)
                self.assertEqual(doc["ids"], ids, name)
            for conv, e in raised:  # what the template refuses, btx refuses with its words
                r, _ = self.shown(model, [conv])
                self.assertEqual(r.returncode, 1, name)
                self.assertIn("the chat template cannot render it", r.stderr, name)
                self.assertIn(str(e), r.stderr, name)
                refusals += 1
            compared.append(name)
            shutil.rmtree(model)
        # Of llama.cpp's 25 templates only the tool-calling ones need tools; every other one
        # must have been compared.
        self.assertGreaterEqual(len(compared), 20, (compared, needs_tools))
        self.assertGreaterEqual(refusals, 1)  # Gemma refuses a system message
        for name in needs_tools:
            self.assertRegex(name, "tool_use|firefunction", needs_tools)

    def refused(self, model, line, *needles):
        path = os.path.join(self.tmp, "bad.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps({"messages": CONVERSATIONS[0]}) + "\n" + line + "\n")
        run_dir = os.path.join(self.tmp, "run-bad")
        cfg = write_config(os.path.join(self.tmp, "bad.json"), model=model, run_dir=run_dir,
                           domains=[{"name": "chat", "paths": [path], "format": "chat"}],
                           **tiny_run())
        r = train(cfg)
        self.assertEqual(r.returncode, 1, r.stderr)
        for n in needles:
            self.assertIn(n, r.stderr)
        self.assertFalse(os.path.exists(run_dir))

    def test_bad_chat_data_is_refused_naming_file_and_line(self):
        model = self.with_template("smollm2-bad", SMOLLM2_TEMPLATE)
        self.refused(model, '{"messages": "hi"}', "bad.jsonl:2: field 'messages' is string")
        self.refused(model, '{"messages": [{"content": "x"}]}',
                     "bad.jsonl:2: field 'messages', message 0 has no string 'role'")
        self.refused(model, '{"text": "x"}', "bad.jsonl:2: no field 'messages'")
        # What the template itself refuses (raise_exception), with its words.
        strict = self.with_template(
            "strict", "{% for m in messages %}{% if m['role'] == 'system' %}"
            "{{ raise_exception('System role not supported') }}{% endif %}"
            "{{ m['content'] }}{% endfor %}")
        self.refused(strict, json.dumps({"messages": CONVERSATIONS[1]}),
                     "bad.jsonl:2: field 'messages': the chat template cannot render it",
                     "System role not supported")
        # A checkpoint without a template.
        self.refused(self.model, "", "has no chat template")


class BadData(unittest.TestCase):
    """Each bad input: exit 1, a message naming file, line/row and field; nothing written."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="btx-train-bad-")
        cls.model = make_model(os.path.join(cls.tmp, "model"))
        cls.good = os.path.join(cls.tmp, "good.jsonl")
        with open(cls.good, "w") as f:
            for d in documents("math"):
                f.write(json.dumps({"text": d}) + "\n")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def refused(self, name, content, *needles, **domain):
        path = os.path.join(self.tmp, name)
        with open(path, "wb") as f:
            f.write(content)
        run_dir = os.path.join(self.tmp, "run-" + name.replace(".", "-"))
        domains = [{"name": "good", "paths": [self.good]}, {"name": "bad", "paths": [path], **domain}]
        cfg = write_config(os.path.join(self.tmp, name + ".json"), model=self.model,
                           run_dir=run_dir, domains=domains, **tiny_run())
        r = train(cfg)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("btx-train: error:", r.stderr)
        for n in needles:
            self.assertIn(n, r.stderr)
        self.assertNotIn("step ", r.stderr)
        self.assertFalse(os.path.exists(run_dir), os.listdir(run_dir) if os.path.exists(run_dir) else "")
        return r.stderr

    def test_missing_field(self):
        self.refused("missing.jsonl", b'{"text": "a"}\n{"body": "b"}\n', "missing.jsonl:2",
                     "no field 'text'", "body")

    def test_field_not_a_string(self):
        self.refused("number.jsonl", b'{"text": "a"}\n\n{"text": 7}\n', "number.jsonl:3",
                     "field 'text' is number")

    def test_invalid_utf8(self):
        self.refused("latin1.jsonl", b'{"text": "a"}\n{"text": "caf\xe9"}\n', "latin1.jsonl:2",
                     "invalid UTF-8")
        self.refused("latin1.txt", b"line one\ncaf\xe9\n", "latin1.txt:2", "invalid UTF-8")

    def test_not_what_its_extension_says(self):
        self.refused("notjson.jsonl", b"just text\n", "notjson.jsonl:1", "not a JSON line")
        self.refused("parquet.jsonl", b"PAR1\x00\x00", "parquet.jsonl", "a Parquet file read as jsonl")
        self.refused("fake.parquet", b"{}\n", "fake.parquet", "not a Parquet file")

    def test_parquet_column_and_null_row(self):
        if not PARQUET:
            self.skipTest("btx-train built without Arrow (BTX_PARQUET=OFF)")
        import pyarrow as pa
        import pyarrow.parquet as pq
        path = os.path.join(self.tmp, "nulls.parquet")
        pq.write_table(pa.table({"text": ["a", None], "n": [1, 2]}), path)
        with open(path, "rb") as f:
            content = f.read()
        self.refused("nulls.parquet", content, "nulls.parquet: row 1, column 'text': null")
        self.refused("nulls2.parquet", content, "no column 'body'", "text, n", field="body")

    def test_empty_domain(self):
        self.refused("empty.jsonl", b"\n\n", "domain 'bad' has no training documents")

    def test_run_dir_over_an_input(self):
        cfg = write_config(os.path.join(self.tmp, "over.json"), model=self.model,
                           run_dir=self.tmp, domains=[{"name": "good", "paths": [self.good]}])
        r = train(cfg)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("is or contains model " + self.model, r.stderr)

    def test_router_training_of_a_dense_model(self):
        run_dir = os.path.join(self.tmp, "run-dense-router")
        cfg = write_config(os.path.join(self.tmp, "dense.json"), model=self.model, run_dir=run_dir,
                           trains="router", domains=[{"name": "good", "paths": [self.good]}])
        r = train(cfg)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("trains: router needs an MoE model", r.stderr)
        self.assertFalse(os.path.exists(run_dir))


class TrainedModels(unittest.TestCase):
    """Router-only training, exact resume and two ranks, on an MoE btx-merge made."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="btx-train-")
        base = make_model(os.path.join(cls.tmp, "base"))
        other = os.path.join(cls.tmp, "other")
        shutil.copytree(base, other)
        tiny_llama(7, vocab_size=read_json(os.path.join(base, "config.json"))["vocab_size"],
                   eos_token_id=0, bos_token_id=0).save_pretrained(other)
        merge_cfg = os.path.join(cls.tmp, "merge.yaml")
        with open(merge_cfg, "w") as f:
            f.write(f"base_model: {base}\nexperts:\n  - source_model: {base}\n"
                    f"  - source_model: {other}\ngate_mode: random\nexperts_per_token: 1\n")
        cls.moe = os.path.join(cls.tmp, "moe")
        r = subprocess.run([MERGE, merge_cfg, cls.moe], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        cls.data = {}
        for domain in ("math", "code", "prose"):
            path = os.path.join(cls.tmp, domain + ".jsonl")
            with open(path, "w") as f:
                for d in documents(domain):
                    f.write(json.dumps({"text": d}) + "\n")
            cls.data[domain] = path

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def config(self, name, **keys):
        domains = [{"name": d, "paths": [p], "weight": w}
                   for (d, p), w in zip(self.data.items(), (1.0, 2.0, 1.0))]
        return write_config(os.path.join(self.tmp, name + ".json"), model=self.moe,
                            run_dir=os.path.join(self.tmp, name), domains=domains,
                            **tiny_run(**keys))

    def weights(self, name):
        return load_file(os.path.join(self.tmp, name, "train", "model", "model.safetensors"))

    def test_router_only_changes_routers_alone(self):
        from transformers import AutoTokenizer, MixtralForCausalLM
        r = train(self.config("router", trains="router", held_out_every=2))
        self.assertEqual(r.returncode, 0, r.stderr)
        before = load_file(os.path.join(self.moe, "model.safetensors"))
        after = self.weights("router")
        self.assertEqual(sorted(before), sorted(after))
        changed = [n for n in before if not torch.equal(before[n], after[n])]
        self.assertTrue(changed)
        # The special-token ids of the checkpoint it started from are carried on.
        written = read_json(os.path.join(self.tmp, "router", "train", "model", "config.json"))
        source = read_json(os.path.join(self.moe, "config.json"))
        for key in ("bos_token_id", "eos_token_id"):
            self.assertIn(key, source)
            self.assertEqual(written.get(key), source[key], key)
        self.assertTrue(all(n.endswith("block_sparse_moe.gate.weight") for n in changed), changed)
        self.assertEqual(len(changed), 2)  # both layers' routers moved
        out = os.path.join(self.tmp, "router", "train")
        model = MixtralForCausalLM.from_pretrained(os.path.join(out, "model"))
        self.assertEqual(model.config.num_local_experts, 2)
        tok = AutoTokenizer.from_pretrained(os.path.join(out, "model"))
        self.assertTrue(tok("1 + 2 = 3").input_ids)
        card = read_text(os.path.join(out, "model", "README.md"))
        for needle in ("trained: **router**", self.data["math"], "loss before", "held-out"):
            self.assertIn(needle, card)
        report = read_text(os.path.join(out, "report.md"))
        self.assertIn("routing_code.png", report)
        routing = read_json(os.path.join(out, "routing.json"))
        self.assertEqual(sorted(routing), ["code", "math", "prose"])
        self.assertAlmostEqual(sum(routing["math"][0]), 1.0, places=6)
        metrics = [json.loads(l) for l in read_text(os.path.join(out, "metrics.jsonl")).splitlines()]
        self.assertTrue(any("held_out" in m for m in metrics))
        stage = read_json(os.path.join(out, "stage.json"))
        self.assertEqual(stage["trains"], "router")
        self.assertLess(stage["trainable_values"], stage["frozen_values"])
        # A rerun skips the finished stage.
        r = train(self.config("router", trains="router", held_out_every=2))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("already finished", r.stderr)

    def test_evaluate_reproduces_the_held_out_numbers(self):
        # --evaluate scores checkpoints on the config's data: the MoE as given equals the
        # "before" numbers a training run recorded; a generated arithmetic domain needs no
        # files.
        cfg = self.config("evaluated", steps=2)
        r = train(cfg)
        self.assertEqual(r.returncode, 0, r.stderr)
        stage = read_json(os.path.join(self.tmp, "evaluated", "train", "stage.json"))
        trained = os.path.join(self.tmp, "evaluated", "train", "model")
        r = train(cfg, "--evaluate", self.moe, trained)
        self.assertEqual(r.returncode, 0, r.stderr)
        scores = json.loads(r.stdout)
        self.assertEqual(list(scores), [self.moe, trained])
        self.assertEqual(scores[self.moe], stage["held_out_before"])
        self.assertEqual(scores[trained], stage["held_out_after"])
        config = read_json(cfg)
        config["domains"].append({"name": "sums", "generator": "arithmetic",
                                  "max_train_tokens": 4000, "max_eval_tokens": 800})
        with open(cfg, "w") as f:
            json.dump(config, f)
        r = train(cfg, "--evaluate", trained)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("sums", json.loads(r.stdout)[trained]["loss"])

    def test_sigkill_then_resume_equals_the_unbroken_run(self):
        keys = dict(steps=200, checkpoint_every=4)
        r = train(self.config("unbroken", **keys))
        self.assertEqual(r.returncode, 0, r.stderr)
        cfg = self.config("killed", **keys)
        ckpts = os.path.join(self.tmp, "killed", "train", "checkpoints")
        p = subprocess.Popen([TRAIN, cfg], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 300
        # Killed once a checkpoint is complete ("latest" names it) and well before the end.
        while time.time() < deadline and p.poll() is None:
            if os.path.exists(os.path.join(ckpts, "latest")):
                break
            time.sleep(0.02)
        self.assertIsNone(p.poll(), "the run ended before it could be killed")
        p.send_signal(signal.SIGKILL)
        p.communicate()
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "killed", "train", "stage.json")))
        r = train(cfg)
        self.assertEqual(r.returncode, 0, r.stderr)
        stage = read_json(os.path.join(self.tmp, "killed", "train", "stage.json"))
        self.assertGreater(stage["resumed_from_step"], 0)
        a, b = self.weights("unbroken"), self.weights("killed")
        for n in a:
            self.assertTrue(torch.equal(a[n], b[n]), n)

    def test_threads_and_auto_precision_are_used_and_recorded(self):
        # `threads` wins over OMP_NUM_THREADS; OMP_NUM_THREADS counts when there is none;
        # precision auto is bf16-mixed on a CPU that computes in bf16 (else fp32) and says so;
        # a bad OMP_NUM_THREADS is refused, naming it, before anything is written.
        with open("/proc/cpuinfo") as f:
            flags = f.read().split()
        bf16 = any(x in flags for x in ("avx512_bf16", "amx_bf16", "bf16"))
        expected = "bf16-mixed" if bf16 else "fp32"
        r = train(self.config("threads", steps=2, threads=2, precision="auto"),
                  env=dict(os.environ, OMP_NUM_THREADS="1"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("2 threads (threads option)", r.stderr)
        self.assertIn("precision auto: " + expected, r.stderr)
        out = os.path.join(self.tmp, "threads", "train")
        stage = read_json(os.path.join(out, "stage.json"))
        self.assertEqual((stage["threads"], stage["precision"]), (2, expected))
        self.assertIn(f"of 2 thread(s), {expected} on cpu",
                      read_text(os.path.join(out, "model", "README.md")))
        r = train(self.config("omp", steps=2), env=dict(os.environ, OMP_NUM_THREADS="3"))
        self.assertEqual(r.returncode, 0, r.stderr)
        stage = read_json(os.path.join(self.tmp, "omp", "train", "stage.json"))
        self.assertEqual((stage["threads"], stage["precision"]), (3, "fp32"))
        r = train(self.config("bad-omp", steps=2), env=dict(os.environ, OMP_NUM_THREADS="two"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("OMP_NUM_THREADS='two' is not a positive number of threads", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "bad-omp")))

    def test_two_ranks_equal_one(self):
        self.check_two_ranks("two")

    def test_two_ranks_fully_sharded_and_recomputed_equal_one(self):
        # ZeRO-3 and activation checkpointing from the config, saved as one HF checkpoint.
        self.check_two_ranks("two-sharded", sharding="full", activation_checkpointing=True)

    def check_two_ranks(self, name, **keys):
        if not os.path.exists(os.path.join(self.tmp, "one", "train", "model")):
            r = train(self.config("one", steps=4))
            self.assertEqual(r.returncode, 0, r.stderr)
        cfg = self.config(name, steps=4, **keys)
        env = dict(os.environ, OMP_NUM_THREADS="1")
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                            "--no-python", TRAIN, cfg], capture_output=True, text=True,
                           timeout=600, env=env)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        stage = read_json(os.path.join(self.tmp, name, "train", "stage.json"))
        self.assertEqual(stage["ranks"], 2)
        a, b = self.weights("one"), self.weights(name)
        worst = max((a[n] - b[n]).abs().max().item() for n in a)
        self.assertLess(worst, 1e-4)
        self.assertTrue(any(not torch.equal(a[n], load_file(os.path.join(
            self.moe, "model.safetensors"))[n]) for n in a))


if __name__ == "__main__":
    unittest.main(verbosity=2)
