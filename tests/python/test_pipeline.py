# SPDX-License-Identifier: MIT
"""btx-pipeline --quick end to end (ctest pipeline.quick_end_to_end).

Checks that every stage ran, every row of the table is present and finite, the routing
analysis covers every layer and domain, the final Mixtral loads in btx and in
transformers with the same logits, a second run skips every finished stage, and bad
configs fail before any training starts. transformers is only an independent reference.
"""
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

# btx-pipeline encodes a seed checkpoint's text with its tokenizer.json through Python's
# `tokenizers` ($BTX_PYTHON, else python3): this interpreter has it.
os.environ.setdefault("BTX_PYTHON", sys.executable)

import torch
from safetensors.torch import load_file, save_file

PIPELINE = os.environ["BTX_PIPELINE"]
INTEROP = os.environ["BTX_INTEROP"]


def run(args, **kw):
    return subprocess.run([PIPELINE, *args], capture_output=True, text=True, **kw)


class QuickPipeline(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="btx-pipeline-")
        cls.run_dir = os.path.join(cls.tmp, "run")
        cls.first = run(["--quick", "--run-dir", cls.run_dir])
        sys.stderr.write(cls.first.stderr[-4000:])

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_every_stage_ran_and_every_row_is_finite(self):
        self.assertEqual(self.first.returncode, 0, self.first.stderr[-3000:])
        stages = ["seed", "expert-math", "expert-code", "expert-prose", "mix", "btx-top2",
                  "dense", "upcycle", "btm-merge", "eval"]
        for s in stages:
            self.assertTrue(os.path.exists(os.path.join(self.run_dir, s, "stage.json")), s)
        with open(os.path.join(self.run_dir, "eval", "results.json")) as f:
            results = json.load(f)
        names = [r["name"] for r in results]
        for expected in ["seed", "expert math", "expert code", "expert prose", "dense",
                         "BTM merge", "BTM ensemble", "sparse upcycling", "BTX top2"]:
            self.assertIn(expected, names)
        for r in results:
            self.assertEqual(sorted(r["loss"]), ["code", "math", "prose"], r["name"])
            for d, loss in r["loss"].items():
                self.assertTrue(math.isfinite(loss) and 0 < loss < 10, (r["name"], d, loss))
            self.assertIsNotNone(r["math_exact_match"], r["name"])
        # Equal compute: dense and upcycling spend BTX's FLOPs (within one step's rounding).
        by = {r["name"]: r for r in results}
        btx = by["BTX top2"]["train_flops"]
        for base in ["dense", "sparse upcycling"]:
            self.assertAlmostEqual(by[base]["train_flops"] / btx, 1.0, delta=0.05)
        report = open(os.path.join(self.run_dir, "report.md")).read()
        for n in names:
            self.assertIn("| " + n + " |", report)
        for picture in ["loss_curves.png"]:
            with open(os.path.join(self.run_dir, picture), "rb") as f:
                self.assertEqual(f.read(4)[1:], b"PNG")
        self.assertTrue(os.path.getsize(os.path.join(self.run_dir, "metrics.jsonl")) > 0)
        manifest = json.load(open(os.path.join(self.run_dir, "manifest.json")))
        self.assertTrue(any(m["split"] == "eval" for m in manifest["files"]))

    def test_routing_analysis_covers_every_layer_and_domain(self):
        with open(os.path.join(self.run_dir, "eval", "results.json")) as f:
            results = {r["name"]: r for r in json.load(f)}
        routing = results["BTX top2"]["routing"]
        self.assertEqual(sorted(routing), ["code", "math", "prose"])
        for domain, layers in routing.items():
            self.assertEqual(len(layers), 2)
            for shares in layers:
                self.assertEqual(len(shares), 4)  # 3 domain experts + the seed
                self.assertAlmostEqual(sum(shares), 1.0, places=6)
        # Each layer its own router: the shares differ between layers (a shared accumulator
        # once made them equal).
        self.assertNotEqual(routing["code"][0], routing["code"][1])
        for layer in range(2):
            self.assertTrue(os.path.exists(
                os.path.join(self.run_dir, f"routing_BTX_top2_layer{layer}.png")))

    def test_final_mixtral_loads_in_transformers_with_btx_logits(self):
        from transformers import MixtralForCausalLM
        ckpt = os.path.join(self.run_dir, "btx-top2", "model")
        model, info = MixtralForCausalLM.from_pretrained(ckpt, output_loading_info=True)
        self.assertFalse(info["missing_keys"])
        self.assertFalse(info["unexpected_keys"])
        model.eval()
        from transformers import AutoTokenizer
        ids = AutoTokenizer.from_pretrained(ckpt)("int main(void) { return 1+2; }\n",
                                                  return_tensors="pt").input_ids
        ids_file = os.path.join(self.tmp, "ids.safetensors")
        out_file = os.path.join(self.tmp, "logits.safetensors")
        save_file({"ids": ids.to(torch.int64)}, ids_file)
        r = subprocess.run([INTEROP, "logits", ckpt, ids_file, out_file], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        with torch.no_grad():
            ref = model(ids).logits
        ours = load_file(out_file)["logits"]
        self.assertLess((ours - ref).abs().max().item(), 1e-4)

    def test_every_stage_generates_text_through_its_own_tokenizer(self):
        """The run's SentencePiece tokenizer is in every checkpoint; AutoTokenizer reads it
        with the ids SentencePiece itself gives, and each model generates from text."""
        import sentencepiece as spm
        from transformers import AutoModelForCausalLM, AutoTokenizer
        manifest = json.load(open(os.path.join(self.run_dir, "manifest.json")))
        self.assertEqual(manifest["tokenizer"]["kind"], "sentencepiece")
        self.assertEqual(manifest["tokenizer"]["vocab_size"], 512)
        sp = spm.SentencePieceProcessor(
            model_file=os.path.join(self.run_dir, "tokenizer", "tokenizer.model"))
        self.assertEqual(sp.get_piece_size(), 512)
        texts = ["12 + 30 = 42\n7 * 6 = 42", "int main(void) {\n    return 0;\n}",
                 "Everyone is permitted to copy and distribute verbatim copies."]
        for stage in ["seed", "expert-math", "btx-top2", "dense", "upcycle", "btm-merge"]:
            ckpt = os.path.join(self.run_dir, stage, "model")
            with open(os.path.join(ckpt, "config.json")) as f:
                self.assertEqual(json.load(f)["vocab_size"], 512, stage)
            tok = AutoTokenizer.from_pretrained(ckpt)
            for t in texts:
                self.assertEqual(tok(t).input_ids, [1] + sp.encode(t), (stage, t))
            model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
            prompt = tok("12 + 30 =", return_tensors="pt")
            out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
            self.assertEqual(out.shape[1], prompt.input_ids.shape[1] + 8, stage)
            self.assertTrue(tok.decode(out[0], skip_special_tokens=True).startswith("12 + 30 ="))

    def test_tokenizer_json_equals_transformers_conversion_and_needs_no_sentencepiece(self):
        """Every checkpoint carries tokenizer.json beside tokenizer.model: the same ids and
        text as transformers' own conversion of tokenizer.model (sentencepiece + protobuf),
        read by `tokenizers` alone, and loaded by transformers without sentencepiece."""
        from tokenizers import Tokenizer
        from transformers import AutoTokenizer
        ckpt = os.path.join(self.run_dir, "btx-top2", "model")
        self.assertIn("tokenizer.json", os.listdir(ckpt))
        texts = ["12 + 30 = 42\n7 * 6 = 42", " leading", "  two\n\tindent\n    code();",
                 "naïve café — 😀 漢字", "", " ", "\n", "<s> literal </s>", "x" * 40]
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
                shutil.copy(os.path.join(ckpt, name), tmp)
            converted = AutoTokenizer.from_pretrained(tmp)  # transformers' conversion
        ours = AutoTokenizer.from_pretrained(ckpt)
        raw = Tokenizer.from_file(os.path.join(ckpt, "tokenizer.json"))
        for t in texts:
            ids = converted(t).input_ids
            self.assertEqual(ours(t).input_ids, ids, t)
            self.assertEqual(raw.encode(t).ids, ids, t)
            self.assertEqual(ours.decode(ids), converted.decode(ids), t)
        probe = ("import sys; sys.modules['sentencepiece'] = None\n"
                 "from transformers import AutoTokenizer\n"
                 f"print(AutoTokenizer.from_pretrained({ckpt!r})('12 + 30').input_ids)\n")
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        self.assertEqual(json.loads(r.stdout.strip().splitlines()[-1]), converted("12 + 30").input_ids)

    def test_second_run_skips_finished_stages(self):
        second = run(["--quick", "--run-dir", self.run_dir])
        self.assertEqual(second.returncode, 0, second.stderr[-3000:])
        self.assertNotIn("step 1/", second.stderr)  # nothing trained again
        for s in ["expert-math", "btx-top2", "dense", "upcycle", "eval"]:
            self.assertIn(f"{s} already finished, skipped", second.stderr)


class Bf16MixedPipeline(unittest.TestCase):
    """Every stage in bf16 mixed precision: fp32 master weights, bf16 autocast forwards."""

    def test_every_stage_trains_in_bf16_mixed_and_saves_fp32_masters(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "bf16.yaml")
            with open(path, "w") as f:
                f.write("precision: bf16-mixed\n")
            run_dir = os.path.join(tmp, "run")
            r = run([path, "--quick", "--run-dir", run_dir], timeout=600)
            self.assertEqual(r.returncode, 0, r.stderr[-3000:])
            with open(os.path.join(run_dir, "eval", "results.json")) as f:
                results = {x["name"]: x for x in json.load(f)}
            for name, row in results.items():
                for d, loss in row["loss"].items():
                    self.assertTrue(math.isfinite(loss) and 0 < loss < 10, (name, d, loss))
            # Training lowered every domain's loss below the untrained seed's log(vocab).
            with open(os.path.join(run_dir, "config.json")) as f:
                vocab = json.load(f)["model"]["vocab_size"]
            self.assertLess(results["BTX top2"]["loss"]["prose"], math.log(vocab))
            ckpt = os.path.join(run_dir, "btx-top2", "model")
            dtypes = set()
            for name in os.listdir(ckpt):
                if name.endswith(".safetensors"):
                    dtypes |= {t.dtype for t in load_file(os.path.join(ckpt, name)).values()}
            self.assertEqual(dtypes, {torch.float32})


class RepeatsReport(unittest.TestCase):
    """repeats: 2 runs the pipeline with two seeds; report.md gives mean ± sd per model and
    states an ordering only where the per-seed gaps' 95% interval excludes zero."""

    T_95_ONE_DF = 12.706  # Student's t, two-sided 95%, one degree of freedom

    def test_two_seeds_mean_spread_and_orderings_match_the_repeats(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "repeats.yaml")
            with open(path, "w") as f:
                f.write("repeats: 2\nseed: 5\nseed_stage: {steps: 10}\nexpert_stage: {steps: 6}\n"
                        "finetune_stage: {steps: 4}\neval_windows: 2\nmath_problems: 4\n"
                        "checkpoint_every: 0\n")
            run_dir = os.path.join(tmp, "run")
            r = run([path, "--quick", "--run-dir", run_dir], timeout=600)
            self.assertEqual(r.returncode, 0, r.stderr[-3000:])
            per_seed = {}
            for seed in (5, 6):
                sub = os.path.join(run_dir, f"seed-{seed}")
                with open(os.path.join(sub, "config.json")) as f:
                    config = json.load(f)
                self.assertEqual((config["seed"], config["repeats"]), (seed, 1))
                with open(os.path.join(sub, "eval", "results.json")) as f:
                    per_seed[seed] = {x["name"]: sum(x["loss"].values()) / len(x["loss"])
                                      for x in json.load(f)}
            # Different seeds, different models: the repeats are not copies of one run.
            self.assertNotEqual(per_seed[5]["BTX top2"], per_seed[6]["BTX top2"])
            with open(os.path.join(run_dir, "repeats.json")) as f:
                summary = json.load(f)
            self.assertEqual(summary["seeds"], [5, 6])
            with open(os.path.join(run_dir, "report.md")) as f:
                report = f.read()
            means_table = report.split("## Held-out loss per domain")[1].split("## Ordering")[0]
            rows = {line.split("|")[1].strip(): line.split("|")
                    for line in means_table.splitlines() if line.startswith("| ")}
            btx = [per_seed[s]["BTX top2"] for s in (5, 6)]
            for name in per_seed[5]:
                values = [per_seed[s][name] for s in (5, 6)]
                self.assertAlmostEqual(summary["models"][name]["avg_loss"][0], values[0], places=9)
                mean, sd = sum(values) / 2, abs(values[0] - values[1]) / math.sqrt(2)
                self.assertIn(f"{mean:.3f} ± {sd:.3f}", rows[name][-4], name)  # the avg column
                if name == "BTX top2":
                    continue
                d = [values[k] - btx[k] for k in range(2)]
                d_mean, d_sd = sum(d) / 2, abs(d[0] - d[1]) / math.sqrt(2)
                separated = abs(d_mean) > self.T_95_ONE_DF * d_sd / math.sqrt(2)
                gaps_table = report.split("against every other model")[1].split("\n## ")[0]
                gap_row = [line for line in gaps_table.splitlines()
                           if line.startswith(f"| {name} | ")]
                self.assertEqual(len(gap_row), 1, name)
                self.assertIn(f"{d_mean:.3f} ± {d_sd:.3f}", gap_row[0])
                self.assertIn("| yes" if separated else "| no", gap_row[0], name)
            self.assertIn("## Ordering by average held-out loss", report)
            self.assertIn("[seed-6](seed-6/report.md)", report)


class SweepReport(unittest.TestCase):
    """sweep: two variants of the MoE stage's share of BTX's compute, two seeds each."""

    TINY = ("seed_stage: {steps: 10}\nexpert_stage: {steps: 6}\neval_windows: 2\n"
            "math_problems: 4\ncheckpoint_every: 0\n")

    def test_variants_get_their_share_and_one_report_compares_them(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "sweep.yaml")
            with open(path, "w") as f:
                f.write(self.TINY + "repeats: 2\nsweep:\n  axis: MoE-stage share\n  variants:\n"
                        "    - {name: share10, x: 0.1, moe_share: 0.1}\n"
                        "    - {name: share40, x: 0.4, moe_share: 0.4}\n"
                        "    - {name: longer, x: 0.5, moe_share: 0.4, expert_stage: {steps: 8}}\n")
            run_dir = os.path.join(tmp, "run")
            r = run([path, "--quick", "--run-dir", run_dir], timeout=900)
            self.assertEqual(r.returncode, 0, r.stderr[-3000:])
            for name, share in (("share10", 0.1), ("share40", 0.4), ("longer", 0.4)):
                for seed in (0, 1):
                    sub = os.path.join(run_dir, name, f"seed-{seed}")
                    flops = {}
                    for stage in os.listdir(sub):
                        record = os.path.join(sub, stage, "stage.json")
                        if os.path.exists(record):
                            with open(record) as f:
                                flops[stage] = json.load(f).get("flops", 0.0)
                    experts = sum(v for k, v in flops.items() if k.startswith("expert-"))
                    moe = flops["btx-top2"]
                    with open(os.path.join(sub, "config.json")) as f:
                        steps = json.load(f)["finetune_stage"]["steps"]
                    # Whole steps: the share is met to within one step's compute.
                    per_step = moe / steps
                    self.assertLessEqual(abs(moe - share / (1 - share) * experts), per_step / 2 + 1,
                                         (name, seed, steps))
            # Stages with the same config up to them are shared, not retrained: share40 takes
            # share10's seed, experts, BTM merge and mix (hard links); longer, with other
            # experts, the seed.
            def adopted(name, seed):
                with open(os.path.join(run_dir, name, f"seed-{seed}", "adopted.json")) as f:
                    return json.load(f)
            self.assertEqual(set(adopted("share40", 1)),
                             {"seed", "branch", "expert-math", "expert-code", "expert-prose",
                              "btm-merge", "mix"})
            self.assertEqual(set(adopted("longer", 0)), {"seed", "branch"})
            self.assertFalse(os.path.exists(os.path.join(run_dir, "share10", "seed-0", "adopted.json")))
            def inode(*parts):
                model = os.path.join(run_dir, *parts, "model")
                shard = sorted(f for f in os.listdir(model) if f.endswith(".safetensors"))[0]
                return os.stat(os.path.join(model, shard)).st_ino
            self.assertEqual(inode("share10", "seed-1", "expert-code"),
                             inode("share40", "seed-1", "expert-code"))
            self.assertNotEqual(inode("share10", "seed-1", "expert-code"),
                                inode("longer", "seed-1", "expert-code"))
            with open(os.path.join(run_dir, "sweep.json")) as f:
                sweep = json.load(f)
            self.assertEqual([v["name"] for v in sweep["variants"]], ["share10", "share40", "longer"])
            self.assertEqual(sweep["variants"][0]["models"]["expert code"]["avg_loss"],
                             sweep["variants"][1]["models"]["expert code"]["avg_loss"])
            self.assertNotEqual(sweep["variants"][1]["models"]["expert code"]["avg_loss"],
                                sweep["variants"][2]["models"]["expert code"]["avg_loss"])
            self.assertLess(sweep["variants"][0]["finetune_steps"],
                            sweep["variants"][1]["finetune_steps"])
            with open(os.path.join(run_dir, "share40", "seed-1", "eval", "results.json")) as f:
                btx = [x for x in json.load(f) if x["name"] == "BTX top2"][0]
            self.assertAlmostEqual(sweep["variants"][1]["models"]["BTX top2"]["avg_loss"][1],
                                   sum(btx["loss"].values()) / len(btx["loss"]), places=9)
            with open(os.path.join(run_dir, "report.md")) as f:
                report = f.read()
            self.assertIn("| model | share10 (0.1) | share40 (0.4) | longer (0.5) |", report)
            self.assertIn("14 finished stages taken over from earlier variants", report)
            self.assertIn("trunk penalty", report)
            self.assertTrue(os.path.exists(os.path.join(run_dir, "share40", "report.md")))

    def test_a_list_of_sweeps_shares_every_stage_it_can_and_reports_all(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "sweeps.yaml")
            with open(path, "w") as f:
                f.write(self.TINY + "sweep:\n"
                        "  - name: share\n    axis: MoE-stage share\n    variants:\n"
                        "      - {name: base, x: 0.2, moe_share: 0.2}\n"
                        "      - {name: more, x: 0.4, moe_share: 0.4}\n"
                        "  - name: mix\n    axis: router init\n    variants:\n"
                        "      - {name: base, moe_share: 0.2}\n"
                        "      - {name: zero, moe_share: 0.2, router_init: zero}\n")
            run_dir = os.path.join(tmp, "run")
            r = run([path, "--quick", "--run-dir", run_dir], timeout=900)
            self.assertEqual(r.returncode, 0, r.stderr[-3000:])
            def adopted(*parts):
                with open(os.path.join(run_dir, *parts, "adopted.json")) as f:
                    return set(json.load(f))
            experts = {"expert-math", "expert-code", "expert-prose"}
            # Another share: the MoE stage and both baselines (BTX's budget) are trained anew.
            self.assertEqual(adopted("share", "more"),
                             {"seed", "branch", "btm-merge", "mix"} | experts)
            # The same config in another sweep: every stage, its evaluation included.
            self.assertEqual(adopted("mix", "base"),
                             {"seed", "branch", "btm-merge", "dense", "upcycle", "mix", "btx-top2",
                              "eval"} | experts)
            # Another router init: the mix and the MoE stage anew, the baselines taken over.
            self.assertEqual(adopted("mix", "zero"),
                             {"seed", "branch", "btm-merge", "dense", "upcycle"} | experts)
            with open(os.path.join(run_dir, "mix", "sweep.json")) as f:
                variants = json.load(f)["variants"]
            self.assertEqual(variants[0]["models"]["dense"], variants[1]["models"]["dense"])
            self.assertNotEqual(variants[0]["models"]["BTX top2"],
                                variants[1]["models"]["BTX top2"])
            with open(os.path.join(run_dir, "report.md")) as f:
                report = f.read()
            self.assertIn("## share: MoE-stage share", report)
            self.assertIn("## mix: router init", report)
            self.assertIn("![router init](mix/sweep.png)", report)
            self.assertIn("[zero](mix/zero/report.md)", report)
            self.assertIn("| BTX − base BTX |", report)
            self.assertTrue(os.path.exists(os.path.join(run_dir, "share", "report.md")))

    def test_the_faithful_miniature_preset_is_valid(self):
        preset = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "btx-pipeline",
                              "presets", "sweeps.yaml")
        r = run([preset, "--check", "--run-dir", "/nonexistent/btx-check"], timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertIn("share/share23: 3 runs in /nonexistent/btx-check/share/share23", r.stdout)
        self.assertIn("ablations/frozen-nolb: 3 runs", r.stdout)
        self.assertRegex(r.stdout, r"config OK: \d+ runs")
        self.assertFalse(os.path.exists("/nonexistent/btx-check"))

    def test_a_sweep_of_a_list_needs_names(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "sweep.yaml")
            with open(path, "w") as f:
                f.write(self.TINY + "sweep:\n  - axis: share\n    variants: [{name: a}]\n")
            r = run([path, "--quick", "--run-dir", os.path.join(tmp, "run")], timeout=300)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("every sweep of a list needs a name (its folder)", r.stderr)

    def test_a_bad_variant_fails_before_any_training(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "sweep.yaml")
            with open(path, "w") as f:
                f.write(self.TINY + "sweep:\n  variants:\n    - {name: good, moe_share: 0.2}\n"
                        "    - {name: bad, moe_share: 1.5}\n")
            r = run([path, "--quick", "--run-dir", os.path.join(tmp, "run")], timeout=300)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("sweep variant 'bad': config: moe_share must be in [0, 1)", r.stderr)
            self.assertNotIn("step ", r.stderr)
            self.assertFalse(os.path.exists(os.path.join(tmp, "run", "good", "seed")))


class BadInputFailsBeforeTraining(unittest.TestCase):
    def check(self, config, needle):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "bad.yaml")
            with open(path, "w") as f:
                f.write(config)
            r = run([path, "--quick", "--run-dir", os.path.join(tmp, "run")], timeout=300)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn(needle, r.stderr)
            self.assertNotIn("step ", r.stderr)
            self.assertFalse(os.path.exists(os.path.join(tmp, "run", "seed")))

    def test_missing_data_path(self):
        self.check("domains:\n  - {name: code, paths: [/nonexistent/btx-data]}\n", "/nonexistent/btx-data")

    def test_run_dir_over_an_input_is_refused(self):
        # The run folder would hold (and could replace) the user's only copy of its data.
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = os.path.join(tmp, "run")
            data = os.path.join(run_dir, "mine")
            os.makedirs(data)
            with open(os.path.join(data, "a.txt"), "w") as f:
                f.write("some text\n" * 100)
            path = os.path.join(tmp, "c.yaml")
            with open(path, "w") as f:
                f.write(f"domains:\n  - {{name: prose, paths: [{data}]}}\n")
            r = run([path, "--quick", "--run-dir", run_dir], timeout=300)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("run_dir " + run_dir + " is or contains domains[0] (prose) path " + data,
                          r.stderr)
            self.assertEqual(sorted(os.listdir(run_dir)), ["mine"])  # no lock, no stage

    def test_empty_domain(self):
        with tempfile.TemporaryDirectory() as empty:
            self.check(f"domains:\n  - {{name: code, paths: [{empty}], extensions: [.h]}}\n",
                       "domain 'code' is empty")

    def test_unknown_router(self):
        self.check("router: top-3\n", "unknown router 'top-3'")

    def test_budget_too_small(self):
        self.check("expert_stage: {steps: 0}\n", "expert_stage.steps must be > 0")

    def test_no_repeats(self):
        self.check("repeats: 0\n", "repeats must be > 0")

    def test_typo_in_a_key(self):
        self.check("finetune_stage: {stpes: 10}\n", "unknown key 'stpes'")

    @unittest.skipIf(torch.cuda.is_available(), "this machine has a GPU")
    def test_cuda_device_without_a_gpu(self):
        self.check("device: cuda\n", "has no CUDA device")

    def test_tokenizer_settings(self):
        self.check("tokenizer: wordpiece\n", "tokenizer 'wordpiece' is not one of")
        self.check("tokenizer_vocab_size: 100\n", "tokenizer_vocab_size must be in")
        self.check("model: {vocab_size: 256}\n", "differs from tokenizer_vocab_size 512")
        with tempfile.TemporaryDirectory() as tmp:
            ids = os.path.join(tmp, "train.bin")
            with open(ids, "wb") as f:
                f.write(bytes(4000))
            self.check(f"tokenizer: sentencepiece\ndomains:\n  - {{name: t, token_file: {ids}}}\n",
                       "reads ids from a token_file")
        self.check("tokenizer: seed\n", "tokenizer seed needs a seed_checkpoint")
        with tempfile.TemporaryDirectory() as tmp:  # a seed without tokenizer files
            with open(os.path.join(tmp, "config.json"), "w") as f:
                json.dump({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                           "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
                           "num_hidden_layers": 2, "num_attention_heads": 4,
                           "num_key_value_heads": 2, "max_position_embeddings": 512,
                           "rms_norm_eps": 1e-5, "hidden_act": "silu",
                           "tie_word_embeddings": False, "rope_theta": 10000.0}, f)
            self.check(f"tokenizer: seed\nseed_checkpoint: {tmp}\n",
                       f"seed_checkpoint {tmp} has no tokenizer.json or tokenizer.model")

    def test_unknown_precision(self):
        self.check("precision: fp8\n", "precision 'fp8' is not one of")

    def test_yaml_alias_bomb(self):
        # Ten lines whose aliases name 10^10 values: refused quickly, not expanded.
        lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
        for prev, cur in zip("abcdefghi", "bcdefghij"):
            lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 10) + "]")
        self.check("\n".join(lines) + "\n", "more than 1000000 values")

    def test_hf_seed_btx_cannot_represent(self):
        with tempfile.TemporaryDirectory() as seed:
            with open(os.path.join(seed, "config.json"), "w") as f:
                json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                           "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256,
                           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "gelu",
                           "max_position_embeddings": 512}, f)
            self.check(f"seed_checkpoint: {seed}\n", "hidden_act")

    def test_nan_in_the_seed_checkpoint(self):
        import torch
        from safetensors.torch import load_file, save_file
        from transformers import LlamaConfig, LlamaForCausalLM
        with tempfile.TemporaryDirectory() as seed:
            torch.manual_seed(0)
            LlamaForCausalLM(LlamaConfig(
                hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=256)).save_pretrained(seed)
            f = os.path.join(seed, "model.safetensors")
            tensors = load_file(f)
            tensors["model.norm.weight"][7] = float("inf")
            save_file(tensors, f, metadata={"format": "pt"})
            self.check(f"seed_checkpoint: {seed}\n",
                       f'tensor "model.norm.weight" in {f} holds +Inf at [7]')



class AsyncArms(unittest.TestCase):
    """The optional arms (arms: [flexolmo, bam, ceiling]) end to end at --quick scale: each
    trains, is scored at its compute and reported, with how much each mix forgot; the
    FlexOlmo merge is a Mixtral transformers loads with btx's logits and btx-merge makes it
    again from the run's anchored experts, removes an expert (opt-out) and adds it back
    (opt-in); BAM's checkpoint is btx's own type, which transformers refuses by name."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="btx-arms-")
        cls.run_dir = os.path.join(cls.tmp, "run")
        config = os.path.join(cls.tmp, "arms.json")
        with open(config, "w") as f:
            json.dump({"arms": ["flexolmo", "bam", "ceiling"]}, f)
        cls.first = run([config, "--quick", "--run-dir", cls.run_dir])
        sys.stderr.write(cls.first.stderr[-3000:])
        with open(os.path.join(cls.run_dir, "eval", "results.json")) as f:
            cls.results = {r["name"]: r for r in json.load(f)}

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def logits_match(self, ckpt, text="x = 12 + 7;\n"):
        from transformers import AutoTokenizer, MixtralForCausalLM
        model, info = MixtralForCausalLM.from_pretrained(ckpt, output_loading_info=True)
        self.assertFalse(info["missing_keys"])
        self.assertFalse(info["unexpected_keys"])
        model.eval()
        ids = AutoTokenizer.from_pretrained(ckpt)(text, return_tensors="pt").input_ids
        ids_file = os.path.join(self.tmp, "ids.safetensors")
        out_file = os.path.join(self.tmp, "logits.safetensors")
        save_file({"ids": ids.to(torch.int64)}, ids_file)
        r = subprocess.run([INTEROP, "logits", ckpt, ids_file, out_file], capture_output=True,
                           text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        with torch.no_grad():
            ref = model(ids).logits
        self.assertLess((load_file(out_file)["logits"] - ref).abs().max().item(), 1e-4)
        return model

    def merge(self, config, out):
        path = os.path.join(self.tmp, os.path.basename(out) + ".json")
        with open(path, "w") as f:
            json.dump(config, f)
        return subprocess.run([os.environ["BTX_MERGE"], path, out], capture_output=True,
                              text=True)

    def test_every_arm_is_trained_and_scored_at_its_compute(self):
        self.assertEqual(self.first.returncode, 0, self.first.stderr[-3000:])
        r = self.results
        for name in ["FlexOlmo expert math", "FlexOlmo", "FlexOlmo tuned", "BTX at step 0",
                     "BAM at step 0", "BAM", "dense at the experts' compute"]:
            self.assertIn(name, r)
            for d, loss in r[name]["loss"].items():
                self.assertTrue(math.isfinite(loss) and 0 < loss < 10, (name, d, loss))
        btx = r["BTX top2"]["train_flops"]
        for arm in ["FlexOlmo tuned", "BAM"]:
            self.assertAlmostEqual(r[arm]["train_flops"] / btx, 1.0, delta=0.05, msg=arm)
        self.assertAlmostEqual(r["FlexOlmo"]["train_flops"] / btx, 0.95, delta=0.05)
        experts = sum(r["expert " + d]["train_flops"] for d in ["math", "code", "prose"])
        self.assertAlmostEqual(r["dense at the experts' compute"]["train_flops"] / experts, 1.0,
                               delta=0.05)
        # Router tuning trains the routers alone; the experts' FLOPs count frozen parts as
        # forward and input gradients only.
        with open(os.path.join(self.run_dir, "flexolmo-tuned", "stage.json")) as f:
            tuned = json.load(f)
        self.assertEqual(tuned["trains"], "routers")
        with open(os.path.join(self.run_dir, "report.md")) as f:
            report = f.read()
        self.assertIn("## What the mix forgets", report)
        for row in ["| BTX at step 0 |", "| FlexOlmo |", "| BAM at step 0 |"]:
            self.assertIn(row, report)

    def test_flexolmo_forgets_nothing_at_step_0(self):
        own = [self.results["FlexOlmo expert " + d]["loss"][d] for d in ["math", "code", "prose"]]
        mixed = self.results["FlexOlmo"]["loss"]
        forgotten = sum(mixed.values()) / 3 - sum(own) / 3
        self.assertLess(abs(forgotten), 0.02, forgotten)

    def test_flexolmo_merge_and_its_experts_load_in_transformers(self):
        self.logits_match(os.path.join(self.run_dir, "flexolmo", "model"))
        self.logits_match(os.path.join(self.run_dir, "anchored-expert-code", "model"))

    def test_btx_merge_opt_out_and_opt_in(self):
        experts = [{"source_model": os.path.join(self.run_dir, f"anchored-expert-{d}", "model")}
                   for d in ["math", "code", "prose"]]
        seed = os.path.join(self.run_dir, "seed", "model")
        merged = os.path.join(self.tmp, "merged")
        r = self.merge({"operation": "flexolmo", "base_model": seed, "experts": experts}, merged)
        self.assertEqual(r.returncode, 0, r.stderr)
        ours = load_file(os.path.join(merged, "model.safetensors"))
        pipeline = load_file(os.path.join(self.run_dir, "flexolmo", "model", "model.safetensors"))
        self.assertEqual(sorted(ours), sorted(pipeline))
        for k in ours:
            self.assertTrue(torch.equal(ours[k], pipeline[k]), k)

        # Opt-out: code (expert 2; 0 is the anchor) removed. Where no layer routes to it,
        # nothing changes on math text: position t is untouched when layer 0 picked code at
        # no position up to t (layer 1 attends to them) and layer 1 did not at t.
        without = os.path.join(self.tmp, "without-code")
        r = self.merge({"operation": "remove_experts", "base_model": merged, "remove": [2]},
                       without)
        self.assertEqual(r.returncode, 0, r.stderr)
        full = self.logits_match(merged, "12+30=42\n7*6=42\n")
        reduced = self.logits_match(without, "12+30=42\n7*6=42\n")
        from transformers import AutoTokenizer
        ids = AutoTokenizer.from_pretrained(merged)("12+30=42\n7*6=42\n",
                                                    return_tensors="pt").input_ids
        with torch.no_grad():
            out = full(ids, output_router_logits=True)
            small = reduced(ids).logits
        k = full.config.num_experts_per_tok
        picked = [torch.topk(l, k, dim=-1).indices.eq(2).any(-1) for l in out.router_logits]
        untouched = (~picked[0]).long().cumprod(0).bool() & ~picked[1]
        self.assertGreater(int(untouched.sum()), 0, "every position routed to code")
        diff = (out.logits[0] - small[0]).abs().amax(-1)
        self.assertLess(diff[untouched].max().item(), 1e-4)

        # Opt-in: code added back to the merged model of math and prose is the merge of
        # math, prose and code (expert order: the order of joining).
        readded = os.path.join(self.tmp, "readded")
        r = self.merge({"operation": "add_experts", "base_model": without,
                        "experts": [experts[1]]}, readded)
        self.assertEqual(r.returncode, 0, r.stderr)
        reordered = os.path.join(self.tmp, "reordered")
        r = self.merge({"operation": "flexolmo", "base_model": seed,
                        "experts": [experts[0], experts[2], experts[1]]}, reordered)
        self.assertEqual(r.returncode, 0, r.stderr)
        back = load_file(os.path.join(readded, "model.safetensors"))
        expected = load_file(os.path.join(reordered, "model.safetensors"))
        for k2 in expected:
            self.assertTrue(torch.equal(back[k2], expected[k2]), k2)

        # A dense expert is not an anchored one: refused by name, nothing written.
        bad = os.path.join(self.tmp, "bad")
        r = self.merge({"operation": "flexolmo", "base_model": seed, "experts": [
            {"source_model": os.path.join(self.run_dir, "expert-math", "model")}]}, bad)
        self.assertEqual(r.returncode, 1)
        self.assertIn("expert-math", r.stderr)
        self.assertFalse(os.path.exists(bad))

    def test_bam_checkpoint_is_btx_own_and_transformers_refuses_it(self):
        ckpt = os.path.join(self.run_dir, "bam", "model")
        with open(os.path.join(ckpt, "config.json")) as f:
            config = json.load(f)
        self.assertEqual(config["model_type"], "btx_attention_experts")
        self.assertEqual(config["btx_attention_experts"]["router"], "soft")
        from transformers import AutoConfig
        with self.assertRaises(Exception) as refused:
            AutoConfig.from_pretrained(ckpt)
        self.assertIn("btx_attention_experts", str(refused.exception))
        ids_file = os.path.join(self.tmp, "bam-ids.safetensors")
        out_file = os.path.join(self.tmp, "bam-logits.safetensors")
        save_file({"ids": torch.tensor([[1, 5, 9, 4]], dtype=torch.int64)}, ids_file)
        r = subprocess.run([INTEROP, "logits", ckpt, ids_file, out_file], capture_output=True,
                           text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(torch.isfinite(load_file(out_file)["logits"]).all())


class ExternalExperts(unittest.TestCase):
    """The pipeline from experts the user already has: two domains' experts are finetunes
    of the seed made elsewhere (one stored in bf16), the third is trained here; the mix
    takes their FFNs as experts, lineage and report say where they came from and that an
    unknown cost counts as 0, and an expert of another architecture is refused before
    anything trains."""

    def test_mix_and_moe_stage_from_the_users_experts(self):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from test_interop import tiny_llama
        with tempfile.TemporaryDirectory() as tmp:
            shape = dict(vocab_size=256, hidden_size=64, intermediate_size=128,
                         num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512)
            seed = os.path.join(tmp, "seed")
            tiny_llama(1, **shape).save_pretrained(seed)
            math_dir, code_dir = os.path.join(tmp, "mine-math"), os.path.join(tmp, "mine-code")
            tiny_llama(2, **shape).save_pretrained(math_dir)
            tiny_llama(3, **shape).to(torch.bfloat16).save_pretrained(code_dir)
            config = os.path.join(tmp, "run.yaml")
            with open(config, "w") as f:
                f.write(f"seed_checkpoint: {seed}\nexperts:\n"
                        f"  - {{domain: math, checkpoint: {math_dir}}}\n"
                        f"  - {{domain: code, checkpoint: {code_dir}, flops: 1.0e9}}\n")
            run_dir = os.path.join(tmp, "run")
            r = run([config, "--quick", "--run-dir", run_dir], timeout=900)
            self.assertEqual(r.returncode, 0, r.stderr[-3000:])
            with open(os.path.join(run_dir, "expert-math", "log.txt")) as f:
                self.assertIn("expert-math imported from " + math_dir, f.read())
            with open(os.path.join(run_dir, "expert-math", "stage.json")) as f:
                math_stage = json.load(f)
            self.assertEqual(math_stage["imported_from"], math_dir)
            self.assertFalse(math_stage["flops_known"])
            self.assertEqual(math_stage["flops"], 0.0)
            with open(os.path.join(run_dir, "expert-code", "stage.json")) as f:
                code_stage = json.load(f)
            self.assertEqual(code_stage["flops"], 1.0e9)
            self.assertEqual(code_stage["source_dtype"], "bfloat16")
            with open(os.path.join(run_dir, "expert-prose", "stage.json")) as f:
                self.assertGreater(json.load(f)["steps"], 0)  # trained here
            # The mix's experts are the users' FFNs (the bf16 one upcast), in branch order:
            # math, code, prose, then the seed.
            mix = load_file(os.path.join(run_dir, "mix", "model", "model.safetensors"))
            mine = {"math": load_file(os.path.join(math_dir, "model.safetensors")),
                    "code": load_file(os.path.join(code_dir, "model.safetensors"))}
            for e, domain in ((0, "math"), (1, "code")):
                got = mix[f"model.layers.0.block_sparse_moe.experts.{e}.w1.weight"]
                want = mine[domain]["model.layers.0.mlp.gate_proj.weight"].float()
                self.assertTrue(torch.equal(got, want), domain)
            with open(os.path.join(run_dir, "report.md")) as f:
                report = f.read()
            self.assertIn("**expert math** was not trained here", report)
            self.assertIn("its training cost is unknown and counted as 0", report)
            # Another architecture: refused naming the field, before the seed stage.
            other = os.path.join(tmp, "other")
            tiny_llama(4, **dict(shape, intermediate_size=96)).save_pretrained(other)
            with open(config, "w") as f:
                f.write(f"seed_checkpoint: {seed}\nexperts:\n"
                        f"  - {{domain: math, checkpoint: {other}}}\n")
            bad_dir = os.path.join(tmp, "bad")
            r = run([config, "--quick", "--run-dir", bad_dir], timeout=300)
            self.assertEqual(r.returncode, 1, r.stderr[-3000:])
            self.assertIn("intermediate_size: 128 vs 96", r.stderr)
            self.assertFalse(os.path.exists(os.path.join(bad_dir, "seed")))


class TestOnlyArm(unittest.TestCase):
    """An arm declared in a test program alone (tests/tools/pipeline_with_test_arm.cpp: dense
    continued training at half BTX's compute) runs end to end: a worker of its own trains
    it, the report scores it at its compute, --help lists it; btx-pipeline has no such arm."""

    def test_dense_half_is_trained_scored_and_reported(self):
        program = os.environ["BTX_PIPELINE_WITH_ARM"]
        helped = subprocess.run([program, "--help"], capture_output=True, text=True)
        self.assertIn("dense half (baseline)", helped.stdout)
        self.assertNotIn("dense half", run(["--help"]).stdout)
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = os.path.join(tmp, "run")
            r = subprocess.run([program, "--quick", "--run-dir", run_dir], capture_output=True,
                               text=True)
            self.assertEqual(r.returncode, 0, r.stderr[-3000:])
            self.assertIn("started dense-half", r.stderr)
            with open(os.path.join(run_dir, "eval", "results.json")) as f:
                results = {m["name"]: m for m in json.load(f)}
            self.assertIn("dense half", results)
            half, dense = results["dense half"], results["dense"]
            for d, loss in half["loss"].items():
                self.assertTrue(math.isfinite(loss) and 0 < loss < 10, (d, loss))
            # Half the FLOPs of dense at BTX's compute, to a step's rounding.
            self.assertAlmostEqual(half["train_flops"] / dense["train_flops"], 0.5, delta=0.05)
            with open(os.path.join(run_dir, "report.md")) as f:
                self.assertIn("| dense half |", f.read())


if __name__ == "__main__":
    unittest.main(verbosity=2)
