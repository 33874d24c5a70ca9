# SPDX-License-Identifier: MIT
# Model families against the real transformers (an independent reference), on tiny random
# models with odd shapes (GQA 5:1, vocab 67, head_dim not hidden/heads, tied embeddings,
# biases, a sliding window on some layers):
#   - the family's dense HF checkpoint -> btx logits within 1e-4 (fp32);
#   - btx-merge of N copies -> the family's HF MoE model, loading in transformers with no
#     missing/unexpected keys, logits equal to the dense model's;
#   - btx-merge of three distinct models -> attention and norms averaged, expert j equal
#     to source j's FFN, and transformers' logits equal to btx's.
# Run: BTX_MERGE=build/bin/btx-merge BTX_INTEROP=build/bin/btx-interop \
#      python tests/python/test_families.py [TestClass]
import os
import sys
import tempfile
import unittest

# btx-pipeline encodes a seed checkpoint's text with its tokenizer.json through Python's
# `tokenizers` ($BTX_PYTHON, else python3): this interpreter has it.
os.environ.setdefault("BTX_PYTHON", sys.executable)

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_merge import btx_logits, merge, yaml_config  # noqa: E402

TOLERANCE = 1e-4


def randomise(model, seed):
    """Norm weights and biases away from transformers' ones and zeros, so a skipped or
    swapped one shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif name.endswith(".bias"):
                p.copy_(torch.rand(p.shape, generator=g) - 0.5)
    return model


# GQA 5:1, a vocabulary not a multiple of 8, head_dim 12 where hidden/heads is 8.
ODD_SHAPES = dict(vocab_size=67, hidden_size=40, intermediate_size=56, num_hidden_layers=2,
                  num_attention_heads=5, num_key_value_heads=1, head_dim=12,
                  max_position_embeddings=128)


def tiny(config_class, model_class, seed, **overrides):
    """A randomised transformers model of ODD_SHAPES (as overridden)."""
    torch.manual_seed(seed)
    return randomise(model_class(config_class(**{**ODD_SHAPES, **overrides})).eval(), seed)


def state_of(ckpt):
    out = {}
    for name in os.listdir(ckpt):
        if name.endswith(".safetensors"):
            out.update(load_file(os.path.join(ckpt, name)))
    return out


class FamilyChecks:
    """What every family is held to; a subclass supplies dense(), moe_class and names."""

    def load_moe(self, ckpt):
        model, info = self.moe_class.from_pretrained(ckpt, output_loading_info=True)
        for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
            self.assertFalse(info.get(key), f"{key}: {info.get(key)}")
        return model.eval()

    def check_dense(self, model, length=11, **save_kwargs):
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = os.path.join(tmp, "ckpt")
            model.save_pretrained(ckpt, **save_kwargs)
            ids = torch.randint(0, model.config.vocab_size, (2, length))
            with torch.no_grad():
                expected = model(ids).logits
            got = btx_logits(tmp, ckpt, ids)
            self.assertEqual(tuple(got.shape), tuple(expected.shape))
            self.assertLessEqual((got - expected).abs().max().item(), TOLERANCE)

    def test_dense_checkpoints_load_in_btx_with_transformers_logits(self):
        for variant in self.dense_variants():
            with self.subTest(variant=variant):
                self.check_dense(self.dense(seed=len(variant), **self.dense_variants()[variant]))

    def test_copies_merge_into_a_moe_equal_to_the_dense_model(self):
        model = self.dense(seed=21)
        with tempfile.TemporaryDirectory() as tmp:
            base = os.path.join(tmp, "base")
            model.save_pretrained(base)
            ids = torch.randint(0, model.config.vocab_size, (2, 11))
            with torch.no_grad():
                expected = model(ids).logits
            for n, k in ((3, 2), (5, 1)):
                result, out = merge(tmp, yaml_config(base, [base] * n, gate_mode="random",
                                                     experts_per_token=k, seed=n),
                                    out=f"moe{n}")
                self.assertEqual(result.returncode, 0, result.stderr)
                moe = self.load_moe(out)
                self.assertEqual(self.experts_of(moe.config), n)
                with torch.no_grad():
                    got = moe(ids).logits
                self.assertLessEqual((got - expected).abs().max().item(), TOLERANCE)
                self.assertLessEqual((btx_logits(tmp, out, ids) - expected).abs().max().item(),
                                     TOLERANCE)

    def test_three_distinct_models_mix_into_averaged_trunk_and_source_experts(self):
        with tempfile.TemporaryDirectory() as tmp:
            dirs = []
            for j in range(3):
                dirs.append(os.path.join(tmp, f"expert{j}"))
                self.dense(seed=30 + j).save_pretrained(dirs[-1])
            result, out = merge(tmp, yaml_config(dirs[0], dirs, gate_mode="random",
                                                 experts_per_token=2, seed=7))
            self.assertEqual(result.returncode, 0, result.stderr)
            sources = [state_of(d) for d in dirs]
            merged = state_of(out)
            for name, t in sources[0].items():
                if ".mlp." in name:
                    continue  # the FFNs become experts
                mean = sum(s[name] for s in sources) / 3
                self.assertLessEqual((merged[name] - mean).abs().max().item(), 1e-6, name)
            layers = self.dense(seed=0).config.num_hidden_layers
            for layer in range(layers):
                for j in range(3):
                    for proj in ("gate_proj", "up_proj", "down_proj"):
                        src = sources[j][f"model.layers.{layer}.mlp.{proj}.weight"]
                        got = self.merged_expert(merged, layer, j, proj)
                        self.assertTrue(torch.equal(got, src), (layer, j, proj))
            moe = self.load_moe(out)
            ids = torch.randint(0, moe.config.vocab_size, (2, 13))
            with torch.no_grad():
                expected = moe(ids).logits
            self.assertLessEqual((btx_logits(tmp, out, ids) - expected).abs().max().item(),
                                 TOLERANCE)

    def merged_expert(self, merged, layer, j, proj):
        """Expert j's `proj` weight in a merged checkpoint's tensors (one tensor per expert
        unless a family packs them)."""
        return merged[self.expert_name(layer, j, proj)]


class PerExpertNames:
    """transformers' per-expert MoE names (Qwen2-MoE, Qwen3-MoE)."""

    @staticmethod
    def experts_of(config):
        return config.num_experts

    @staticmethod
    def expert_name(layer, j, proj):
        return f"model.layers.{layer}.mlp.experts.{j}.{proj}.weight"


class Qwen3InTransformers(PerExpertNames, FamilyChecks, unittest.TestCase):
    from transformers import Qwen3MoeForCausalLM as moe_class

    @staticmethod
    def dense(seed, **overrides):
        from transformers import Qwen3Config, Qwen3ForCausalLM
        return tiny(Qwen3Config, Qwen3ForCausalLM, seed, **{"rope_theta": 1e6, **overrides})

    @staticmethod
    def dense_variants():
        return {"plain": {}, "tied": {"tie_word_embeddings": True},
                "attention_bias": {"attention_bias": True},
                "sliding_on_layer_1": {"use_sliding_window": True, "sliding_window": 4,
                                       "max_window_layers": 1}}

    def test_leading_dense_layers_are_written_as_mlp_only_layers(self):
        """btx-merge dense_layers: the first layers' FFNs averaged, written as Qwen3-MoE's
        mlp_only_layers; copies of one model still equal it."""
        model = self.dense(seed=24, num_hidden_layers=3)
        with tempfile.TemporaryDirectory() as tmp:
            base = os.path.join(tmp, "base")
            model.save_pretrained(base)
            ids = torch.randint(0, model.config.vocab_size, (2, 11))
            with torch.no_grad():
                expected = model(ids).logits
            result, out = merge(tmp, yaml_config(base, [base] * 3, gate_mode="random",
                                                 dense_layers=2))
            self.assertEqual(result.returncode, 0, result.stderr)
            moe = self.load_moe(out)
            self.assertEqual(moe.config.mlp_only_layers, [0, 1])
            self.assertIn("model.layers.1.mlp.gate_proj.weight", state_of(out))
            with torch.no_grad():
                got = moe(ids).logits
            self.assertLessEqual((got - expected).abs().max().item(), TOLERANCE)
            self.assertLessEqual((btx_logits(tmp, out, ids) - expected).abs().max().item(),
                                 TOLERANCE)


class Qwen2InTransformers(PerExpertNames, FamilyChecks, unittest.TestCase):
    """Qwen2 dense in (q/k/v biases, no o bias), Qwen2-MoE out: its shared expert
    zero-width by default, or the base model's FFN with `shared_experts`."""
    from transformers import Qwen2MoeForCausalLM as moe_class

    @staticmethod
    def dense(seed, **overrides):
        from transformers import Qwen2Config, Qwen2ForCausalLM
        return tiny(Qwen2Config, Qwen2ForCausalLM, seed, **{"rope_theta": 1e6, **overrides})

    @staticmethod
    def dense_variants():
        return {"plain": {}, "tied": {"tie_word_embeddings": True},
                "sliding_on_layer_1": {"use_sliding_window": True, "sliding_window": 4,
                                       "max_window_layers": 1}}

    @staticmethod
    def with_shared(config_text, source):
        return config_text + f"shared_experts:\n  - source_model: {source}\n"

    def test_copies_with_the_base_as_shared_expert_equal_the_dense_model(self):
        model = self.dense(seed=41)
        with tempfile.TemporaryDirectory() as tmp:
            base = os.path.join(tmp, "base")
            model.save_pretrained(base)
            ids = torch.randint(0, model.config.vocab_size, (2, 11))
            with torch.no_grad():
                expected = model(ids).logits
            result, out = merge(tmp, self.with_shared(
                yaml_config(base, [base] * 3, gate_mode="random", seed=3), base))
            self.assertEqual(result.returncode, 0, result.stderr)
            moe = self.load_moe(out)
            self.assertEqual(moe.config.shared_expert_intermediate_size,
                             model.config.intermediate_size)
            with torch.no_grad():
                got = moe(ids).logits
            self.assertLessEqual((got - expected).abs().max().item(), TOLERANCE)
            self.assertLessEqual((btx_logits(tmp, out, ids) - expected).abs().max().item(),
                                 TOLERANCE)

    def test_two_shared_expert_sources_make_one_twice_as_wide(self):
        """shared_experts listing the base and a different expert: one Qwen2-MoE shared
        expert of both FFNs (each at 1/2), loading in transformers with btx's logits."""
        with tempfile.TemporaryDirectory() as tmp:
            base, other = os.path.join(tmp, "base"), os.path.join(tmp, "other")
            self.dense(seed=42).save_pretrained(base)
            self.dense(seed=43).save_pretrained(other)
            config = yaml_config(base, [base, other], gate_mode="random", seed=4)
            config += f"shared_experts:\n  - source_model: {base}\n  - source_model: {other}\n"
            result, out = merge(tmp, config)
            self.assertEqual(result.returncode, 0, result.stderr)
            moe = self.load_moe(out)
            F = moe.config.intermediate_size
            self.assertEqual(moe.config.shared_expert_intermediate_size, 2 * F)
            merged, b, o = state_of(out), state_of(base), state_of(other)
            up = merged["model.layers.1.mlp.shared_expert.up_proj.weight"]
            self.assertTrue(torch.equal(up[:F], b["model.layers.1.mlp.up_proj.weight"]))
            self.assertTrue(torch.equal(up[F:], o["model.layers.1.mlp.up_proj.weight"]))
            down = merged["model.layers.1.mlp.shared_expert.down_proj.weight"]
            self.assertTrue(torch.allclose(down[:, F:], o["model.layers.1.mlp.down_proj.weight"] / 2))
            ids = torch.randint(0, moe.config.vocab_size, (2, 11))
            with torch.no_grad():
                expected = moe(ids).logits
            self.assertLessEqual((btx_logits(tmp, out, ids) - expected).abs().max().item(),
                                 TOLERANCE)

    def test_the_base_as_shared_expert_beside_three_routed_experts(self):
        with tempfile.TemporaryDirectory() as tmp:
            base = os.path.join(tmp, "base")
            self.dense(seed=50).save_pretrained(base)
            dirs = []
            for j in range(3):
                dirs.append(os.path.join(tmp, f"expert{j}"))
                self.dense(seed=51 + j).save_pretrained(dirs[-1])
            result, out = merge(tmp, self.with_shared(
                yaml_config(base, dirs, gate_mode="random", seed=5), base))
            self.assertEqual(result.returncode, 0, result.stderr)
            seed, sources, merged = state_of(base), [state_of(d) for d in dirs], state_of(out)
            for layer in range(2):
                mlp = f"model.layers.{layer}.mlp"
                for proj in ("gate_proj", "up_proj", "down_proj"):
                    self.assertTrue(torch.equal(merged[f"{mlp}.shared_expert.{proj}.weight"],
                                                seed[f"{mlp}.{proj}.weight"]))
                    for j in range(3):
                        # Routed experts at half weight: their down_proj halved.
                        scale = 0.5 if proj == "down_proj" else 1.0
                        self.assertTrue(torch.equal(merged[self.expert_name(layer, j, proj)],
                                                    sources[j][f"{mlp}.{proj}.weight"] * scale))
                self.assertEqual(merged[f"{mlp}.shared_expert_gate.weight"].abs().max().item(), 0)
            moe = self.load_moe(out)
            ids = torch.randint(0, moe.config.vocab_size, (2, 13))
            with torch.no_grad():
                expected = moe(ids).logits
            self.assertLessEqual((btx_logits(tmp, out, ids) - expected).abs().max().item(),
                                 TOLERANCE)

    def test_a_trained_qwen2_moe_loads_in_btx_with_transformers_logits(self):
        """A Qwen2-MoE as transformers makes one: unnormalised top-k (its default), a
        shared expert of its own width and a non-zero shared-expert gate."""
        from transformers import Qwen2MoeConfig
        for norm in (False, True):
            with self.subTest(norm_topk_prob=norm):
                model = tiny(Qwen2MoeConfig, self.moe_class, 60, num_experts=5,
                             num_experts_per_tok=2, moe_intermediate_size=24,
                             shared_expert_intermediate_size=20, norm_topk_prob=norm)
                with torch.no_grad():
                    for layer in model.model.layers:
                        layer.mlp.gate.weight.normal_(0, 0.5)
                        layer.mlp.shared_expert_gate.weight.normal_(0, 0.5)
                self.check_dense(model)

    def test_a_shared_expert_is_refused_where_the_family_has_none(self):
        from transformers import Qwen3Config, Qwen3ForCausalLM
        with tempfile.TemporaryDirectory() as tmp:
            base = os.path.join(tmp, "base")
            tiny(Qwen3Config, Qwen3ForCausalLM, 3).save_pretrained(base)
            result, out = merge(tmp, self.with_shared(
                yaml_config(base, [base, base], gate_mode="random"), base))
            self.assertNotEqual(result.returncode, 0)
            self.assertIn("qwen3_moe", result.stderr)
            self.assertIn("shared expert", result.stderr)
            self.assertFalse(os.path.exists(out))


class Qwen3MoeUnnormalised(unittest.TestCase):
    """Qwen3-MoE with norm_topk_prob false (top-k probabilities as they are) in btx."""

    def test_unnormalised_qwen3_moe_loads_with_transformers_logits(self):
        from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
        model = tiny(Qwen3MoeConfig, Qwen3MoeForCausalLM, 61, num_experts=3,
                     num_experts_per_tok=2, moe_intermediate_size=24, norm_topk_prob=False)
        with torch.no_grad():
            for layer in model.model.layers:
                layer.mlp.gate.weight.normal_(0, 0.5)
        FamilyChecks.check_dense(self, model)


class PipelineOnQwenSeeds(unittest.TestCase):
    """btx-pipeline --quick from a transformers seed of each Qwen family: every stage runs
    on the family, and the final model is the family's MoE, which transformers loads with
    btx's logits. The Qwen2 run puts the seed's FFN in Qwen2-MoE's shared expert."""

    load_moe = FamilyChecks.load_moe

    def run_pipeline(self, seed_model, moe_class, model_type, extra_keys="", arm="btx-top2"):
        import subprocess
        self.moe_class = moe_class
        with tempfile.TemporaryDirectory() as tmp:
            seed = os.path.join(tmp, "seed")
            seed_model.save_pretrained(seed)
            config = os.path.join(tmp, "run.yaml")
            with open(config, "w") as f:
                f.write(f"seed_checkpoint: {seed}\n{extra_keys}")
            run_dir = os.path.join(tmp, "run")
            r = subprocess.run([os.environ["BTX_PIPELINE"], config, "--quick", "--run-dir", run_dir],
                               capture_output=True, text=True, timeout=600)
            self.assertEqual(r.returncode, 0, r.stderr[-3000:])
            final = os.path.join(run_dir, arm, "model")
            moe = self.load_moe(final)
            self.assertEqual(moe.config.model_type, model_type)
            ids = torch.randint(0, 256, (2, 12))
            with torch.no_grad():
                expected = moe(ids).logits
            self.assertLessEqual((btx_logits(tmp, final, ids) - expected).abs().max().item(),
                                 TOLERANCE)
            return moe

    # Byte-level, as the demo's corpus is; wide enough to train.
    SEED_SHAPE = dict(vocab_size=256, hidden_size=64, intermediate_size=128,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      max_position_embeddings=512)

    def test_quick_pipeline_from_a_qwen3_seed(self):
        from transformers import Qwen3MoeForCausalLM
        self.run_pipeline(Qwen3InTransformers.dense(1, **self.SEED_SHAPE), Qwen3MoeForCausalLM,
                          "qwen3_moe")

    def test_quick_pipeline_from_a_qwen2_seed_with_the_seed_as_shared_expert(self):
        from transformers import Qwen2MoeForCausalLM
        moe = self.run_pipeline(Qwen2InTransformers.dense(1, **self.SEED_SHAPE),
                                Qwen2MoeForCausalLM, "qwen2_moe",
                                "seed_as_expert: false\nseed_as_shared_expert: true\n")
        self.assertEqual(moe.config.shared_expert_intermediate_size, 128)
        self.assertEqual(moe.config.num_experts, 3)  # the domain experts, routed


class Olmo2InTransformers(PerExpertNames, FamilyChecks, unittest.TestCase):
    """OLMo2 dense in (norms on each branch's output, q/k norms over all heads, one bias
    flag for q, k, v and o), FlexOlmo out: its experts under transformers' per-expert names
    (FlexOlmo converts through Qwen2-MoE's rules). OLMo3 reads as OLMo2 with a sliding
    window on some layers, which FlexOlmo cannot carry."""
    from transformers import FlexOlmoForCausalLM as moe_class

    @staticmethod
    def dense(seed, **overrides):
        from transformers import Olmo2Config, Olmo2ForCausalLM
        return tiny(Olmo2Config, Olmo2ForCausalLM, seed, **{"rope_theta": 1e6, **overrides})

    @staticmethod
    def olmo3(seed, **overrides):
        from transformers import Olmo3Config, Olmo3ForCausalLM
        return tiny(Olmo3Config, Olmo3ForCausalLM, seed,
                    **{"sliding_window": 4,
                       "layer_types": ["sliding_attention", "full_attention"], **overrides})

    @staticmethod
    def dense_variants():
        return {"plain": {}, "tied": {"tie_word_embeddings": True},
                "attention_bias": {"attention_bias": True},
                "gqa_2_of_6": {"num_attention_heads": 6, "num_key_value_heads": 2,
                               "head_dim": 10, "attention_bias": True}}

    def test_olmo3_with_sliding_layers_loads_in_btx_with_transformers_logits(self):
        for variant, overrides in {"sliding_then_full": {},
                                   "all_sliding_tied": {
                                       "layer_types": ["sliding_attention"] * 2,
                                       "tie_word_embeddings": True, "attention_bias": True}
                                   }.items():
            with self.subTest(variant=variant):
                self.check_dense(self.olmo3(seed=70, **overrides), length=13)

    def test_olmo3_sliding_layers_are_refused_as_a_flex_olmo(self):
        with tempfile.TemporaryDirectory() as tmp:
            base = os.path.join(tmp, "base")
            self.olmo3(seed=71).save_pretrained(base)
            result, out = merge(tmp, yaml_config(base, [base, base], gate_mode="random"))
            self.assertNotEqual(result.returncode, 0)
            self.assertIn("flex_olmo", result.stderr)
            self.assertIn("sliding_window", result.stderr)
            self.assertFalse(os.path.exists(out))

    def test_olmo3_without_sliding_layers_merges_into_a_flex_olmo(self):
        model = self.olmo3(seed=72, layer_types=["full_attention"] * 2)
        with tempfile.TemporaryDirectory() as tmp:
            base = os.path.join(tmp, "base")
            model.save_pretrained(base)
            ids = torch.randint(0, model.config.vocab_size, (2, 11))
            with torch.no_grad():
                expected = model(ids).logits
            result, out = merge(tmp, yaml_config(base, [base] * 3, gate_mode="random",
                                                 experts_per_token=2, seed=3))
            self.assertEqual(result.returncode, 0, result.stderr)
            moe = self.load_moe(out)
            with torch.no_grad():
                got = moe(ids).logits
            self.assertLessEqual((got - expected).abs().max().item(), TOLERANCE)


class FlexOlmoInBtx(unittest.TestCase):
    """FlexOlmo as transformers makes one (softmax then top-k, renormalised only with
    norm_topk_prob; intermediate_size is each expert's width) loads in btx with
    transformers' logits, from per-expert names and from the packed layout."""

    @staticmethod
    def flex_olmo(seed, norm):
        from transformers import FlexOlmoConfig, FlexOlmoForCausalLM
        # pad_token_id: FlexOlmo's default 100277 lies outside a 67-token vocabulary.
        model = tiny(FlexOlmoConfig, FlexOlmoForCausalLM, seed, num_experts=5,
                     num_experts_per_tok=2, norm_topk_prob=norm, attention_bias=True,
                     pad_token_id=None)
        with torch.no_grad():
            for layer in model.model.layers:
                layer.mlp.gate.weight.normal_(0, 0.5)
        return model

    def test_a_trained_flex_olmo_loads_in_btx_with_transformers_logits(self):
        for norm in (False, True):
            with self.subTest(norm_topk_prob=norm):
                FamilyChecks.check_dense(self, self.flex_olmo(80 + norm, norm))

    def test_a_packed_flex_olmo_loads_in_btx_with_identical_logits(self):
        for norm in (False, True):
            with self.subTest(norm_topk_prob=norm), tempfile.TemporaryDirectory() as tmp:
                model = self.flex_olmo(82 + norm, norm)
                per_expert, packed = os.path.join(tmp, "per_expert"), os.path.join(tmp, "packed")
                model.save_pretrained(per_expert)
                model.save_pretrained(packed, save_original_format=False)
                self.assertIn("model.layers.0.mlp.experts.gate_up_proj", state_of(packed))
                self.assertIn("model.layers.0.mlp.experts.0.gate_proj.weight",
                              state_of(per_expert))
                ids = torch.randint(0, model.config.vocab_size, (2, 11))
                with torch.no_grad():
                    expected = model(ids).logits
                from_packed = btx_logits(tmp, packed, ids)
                self.assertTrue(torch.equal(from_packed, btx_logits(tmp, per_expert, ids)))
                self.assertLessEqual((from_packed - expected).abs().max().item(), TOLERANCE)


class PipelineOnOlmoSeed(unittest.TestCase):
    """btx-pipeline --quick from an OLMo2 seed ends in a FlexOlmo that transformers loads
    with btx's logits."""

    load_moe = FamilyChecks.load_moe
    run_pipeline = PipelineOnQwenSeeds.run_pipeline

    def test_quick_pipeline_from_an_olmo2_seed(self):
        from transformers import FlexOlmoForCausalLM
        moe = self.run_pipeline(
            Olmo2InTransformers.dense(1, **PipelineOnQwenSeeds.SEED_SHAPE), FlexOlmoForCausalLM,
            "flex_olmo")
        self.assertEqual(moe.config.intermediate_size, 128)

    def test_the_flexolmo_arm_from_an_olmo2_seed_writes_flex_olmo(self):
        """The FlexOlmo-style merge (anchored experts, arms: [flexolmo]) of an OLMo2 seed is
        written natively as a FlexOlmo."""
        from transformers import FlexOlmoForCausalLM
        moe = self.run_pipeline(
            Olmo2InTransformers.dense(2, **PipelineOnQwenSeeds.SEED_SHAPE), FlexOlmoForCausalLM,
            "flex_olmo", "arms: [flexolmo]\n", arm="flexolmo")
        self.assertEqual(moe.config.num_experts, 4)  # the seed as anchor, three domain experts


# Granite's four multipliers away from 1 (attention_multiplier replaces 1/sqrt(head_dim)),
# and its attention_bias (q, k, v and o).
GRANITE = dict(embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.3,
               logits_scaling=2.5, attention_bias=True)


class GraniteInTransformers(FamilyChecks, unittest.TestCase):
    """Granite dense in, GraniteMoE out (its experts packed: block_sparse_moe.input_linear
    [E, 2F, D], gate rows then up rows; output_linear [E, D, F]); GraniteMoE in both save
    formats and GraniteMoEShared (an ungated shared_mlp) in; a btx MoE with an ungated
    shared expert out as GraniteMoEShared."""
    from transformers import GraniteMoeForCausalLM as moe_class

    @staticmethod
    def dense(seed, **overrides):
        from transformers import GraniteConfig, GraniteForCausalLM
        return tiny(GraniteConfig, GraniteForCausalLM, seed, **{**GRANITE, **overrides})

    @staticmethod
    def dense_variants():
        return {"untied": {}, "tied": {"tie_word_embeddings": True},
                "defaults": {"embedding_multiplier": 1.0, "residual_multiplier": 1.0,
                             "attention_multiplier": 1.0, "logits_scaling": 1.0,
                             "attention_bias": False}}

    @staticmethod
    def experts_of(config):
        return config.num_local_experts

    def merged_expert(self, merged, layer, j, proj):
        moe = f"model.layers.{layer}.block_sparse_moe"
        if proj == "down_proj":
            return merged[f"{moe}.output_linear.weight"][j]
        gate, up = merged[f"{moe}.input_linear.weight"][j].chunk(2, dim=0)
        return gate if proj == "gate_proj" else up

    @staticmethod
    def trained_moe(seed, config_class, model_class, **overrides):
        """A GraniteMoE(Shared) as transformers makes one, its routers away from zero."""
        model = tiny(config_class, model_class, seed, num_local_experts=5, num_experts_per_tok=2,
                     intermediate_size=24, **{**GRANITE, **overrides})
        with torch.no_grad():
            for layer in model.model.layers:
                layer.block_sparse_moe.router.weight.normal_(0, 0.5)
        return model

    def test_a_granitemoe_loads_in_btx_with_transformers_logits_in_both_save_formats(self):
        from transformers import GraniteMoeConfig
        model = self.trained_moe(60, GraniteMoeConfig, self.moe_class)
        for original in (True, False):
            with self.subTest(save_original_format=original):
                self.check_dense(model, save_original_format=original)

    def test_a_granitemoeshared_loads_in_btx_with_transformers_logits(self):
        from transformers import GraniteMoeSharedConfig, GraniteMoeSharedForCausalLM
        for tied in (False, True):
            with self.subTest(tie_word_embeddings=tied):
                model = self.trained_moe(62, GraniteMoeSharedConfig, GraniteMoeSharedForCausalLM,
                                         shared_intermediate_size=20, tie_word_embeddings=tied)
                self.check_dense(model)

    def save_btx_moe(self, tmp, shared, seed=5):
        """btx-interop's random MoE over a dense Granite's config (an ungated shared expert
        of width `shared` when > 0): its folder and btx's logits."""
        import subprocess
        from safetensors.torch import save_file
        base = os.path.join(tmp, "base")
        self.dense(seed=seed).save_pretrained(base)
        out = os.path.join(tmp, f"moe{shared}")
        ids = torch.randint(0, 67, (2, 11))
        ids_file, logits = os.path.join(tmp, "ids.safetensors"), os.path.join(tmp, "l.safetensors")
        save_file({"ids": ids}, ids_file)
        r = subprocess.run([os.environ["BTX_INTEROP"], "save-family-moe",
                            os.path.join(base, "config.json"), "3", "2", str(shared), str(seed),
                            out, ids_file, logits], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        return out, ids, load_file(logits)["logits"]

    def test_a_btx_moe_with_an_ungated_shared_expert_is_a_granitemoeshared(self):
        from transformers import GraniteMoeSharedForCausalLM
        with tempfile.TemporaryDirectory() as tmp:
            out, ids, expected = self.save_btx_moe(tmp, shared=20)
            names = state_of(out)
            self.assertEqual(tuple(names["model.layers.0.shared_mlp.input_linear.weight"].shape),
                             (40, 40))
            self.moe_class = GraniteMoeSharedForCausalLM
            moe = self.load_moe(out)
            self.assertEqual(moe.config.model_type, "granitemoeshared")
            self.assertEqual(moe.config.shared_intermediate_size, 20)
            with torch.no_grad():
                got = moe(ids).logits
            self.assertLessEqual((got - expected).abs().max().item(), TOLERANCE)

    def test_a_btx_moe_without_a_shared_expert_is_a_granitemoe(self):
        with tempfile.TemporaryDirectory() as tmp:
            out, ids, expected = self.save_btx_moe(tmp, shared=0)
            moe = self.load_moe(out)
            self.assertEqual(moe.config.model_type, "granitemoe")
            with torch.no_grad():
                got = moe(ids).logits
            self.assertLessEqual((got - expected).abs().max().item(), TOLERANCE)

    def test_btx_merge_writes_granitemoeshared_from_several_shared_experts(self):
        """Copies of a Granite with two shared-expert sources (each at 1/2, the shared
        expert ungated and halved, the routed experts halved) equal the dense model."""
        from transformers import GraniteMoeSharedForCausalLM
        model = self.dense(seed=23)
        with tempfile.TemporaryDirectory() as tmp:
            base = os.path.join(tmp, "base")
            model.save_pretrained(base)
            ids = torch.randint(0, model.config.vocab_size, (2, 11))
            with torch.no_grad():
                expected = model(ids).logits
            config = yaml_config(base, [base] * 3, gate_mode="random", experts_per_token=2)
            config += f"shared_experts:\n  - source_model: {base}\n  - source_model: {base}\n"
            result, out = merge(tmp, config, out="shared")
            self.assertEqual(result.returncode, 0, result.stderr)
            self.moe_class = GraniteMoeSharedForCausalLM
            moe = self.load_moe(out)
            self.assertEqual(moe.config.model_type, "granitemoeshared")
            self.assertEqual(moe.config.shared_intermediate_size, 2 * ODD_SHAPES["intermediate_size"])
            with torch.no_grad():
                got = moe(ids).logits
            self.assertLessEqual((got - expected).abs().max().item(), TOLERANCE)
            self.assertLessEqual((btx_logits(tmp, out, ids) - expected).abs().max().item(),
                                 TOLERANCE)

    def test_a_per_expert_layout_is_refused(self):
        with tempfile.TemporaryDirectory() as tmp:
            base = os.path.join(tmp, "base")
            self.dense(seed=3).save_pretrained(base)
            result, out = merge(tmp, yaml_config(base, [base, base], gate_mode="random",
                                                 expert_layout="per_expert"))
            self.assertNotEqual(result.returncode, 0)
            self.assertIn("expert_layout 'per_expert'", result.stderr)
            self.assertIn("it has: packed", result.stderr)
            self.assertFalse(os.path.exists(out))


class PipelineOnGraniteSeed(unittest.TestCase):
    """btx-pipeline --quick from a Granite seed (multipliers away from 1): the final model
    is a GraniteMoE, which transformers loads with btx's logits."""

    load_moe = FamilyChecks.load_moe
    run_pipeline = PipelineOnQwenSeeds.run_pipeline

    def test_quick_pipeline_from_a_granite_seed(self):
        from transformers import GraniteMoeForCausalLM
        moe = self.run_pipeline(GraniteInTransformers.dense(1, **PipelineOnQwenSeeds.SEED_SHAPE),
                                GraniteMoeForCausalLM, "granitemoe")
        self.assertEqual(moe.config.embedding_multiplier, 3.0)
        self.assertEqual(moe.config.logits_scaling, 2.5)


class MistralInTransformers(FamilyChecks, unittest.TestCase):
    from transformers import MixtralForCausalLM as moe_class

    @staticmethod
    def dense(seed, **overrides):
        from transformers import MistralConfig, MistralForCausalLM
        return tiny(MistralConfig, MistralForCausalLM, seed, **{"sliding_window": 4, **overrides})

    @staticmethod
    def dense_variants():
        return {"window_4": {}, "tied": {"tie_word_embeddings": True},
                "no_window": {"sliding_window": None}}

    @staticmethod
    def experts_of(config):
        return config.num_local_experts

    @staticmethod
    def expert_name(layer, j, proj):
        w = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}[proj]
        return f"model.layers.{layer}.block_sparse_moe.experts.{j}.{w}.weight"

    def test_the_mixtral_keeps_the_window(self):
        with tempfile.TemporaryDirectory() as tmp:
            base = os.path.join(tmp, "base")
            self.dense(seed=3).save_pretrained(base)
            result, out = merge(tmp, yaml_config(base, [base, base], gate_mode="random"))
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(self.load_moe(out).config.sliding_window, 4)


class Glm4MoeInTransformers(PerExpertNames, FamilyChecks, unittest.TestCase):
    """GLM-4-MoE: its dense form (every layer dense) and DeepSeek-V3-style MoE (sigmoid
    routing with a balancing bias, group-limited top-k, routed scaling, ungated shared
    experts, leading dense layers); Llama and Qwen seeds merged into it (`architecture`)."""
    from transformers import Glm4MoeForCausalLM as moe_class

    @staticmethod
    def dense(seed, **overrides):
        from transformers import Glm4MoeConfig, Glm4MoeForCausalLM
        layers = overrides.get("num_hidden_layers", ODD_SHAPES["num_hidden_layers"])
        return tiny(Glm4MoeConfig, Glm4MoeForCausalLM, seed, partial_rotary_factor=1.0,
                    first_k_dense_replace=layers, n_shared_experts=0, **overrides)

    @staticmethod
    def dense_variants():
        return {"plain": {}, "qk_norm": {"use_qk_norm": True}, "qkv_bias": {"attention_bias": True},
                "tied": {"tie_word_embeddings": True}}

    @staticmethod
    def experts_of(config):
        return config.n_routed_experts

    def moe(self, seed, **overrides):
        from transformers import Glm4MoeConfig, Glm4MoeForCausalLM
        keys = dict(partial_rotary_factor=1.0, num_hidden_layers=3, first_k_dense_replace=1,
                    n_routed_experts=8, num_experts_per_tok=3, moe_intermediate_size=20,
                    n_shared_experts=2, n_group=4, topk_group=2, routed_scaling_factor=2.5,
                    use_qk_norm=True, attention_bias=True)
        model = tiny(Glm4MoeConfig, Glm4MoeForCausalLM, seed, **{**keys, **overrides})
        with torch.no_grad():
            for layer in model.model.layers[keys["first_k_dense_replace"]:]:
                layer.mlp.gate.weight.normal_(0, 0.5)
                layer.mlp.gate.e_score_correction_bias.uniform_(-0.2, 0.2)
        return model

    def test_a_trained_glm4_moe_loads_in_btx_in_both_layouts(self):
        for norm in (True, False):
            model = self.moe(90, norm_topk_prob=norm)
            with self.subTest(norm_topk_prob=norm), tempfile.TemporaryDirectory() as tmp:
                ids = torch.randint(0, model.config.vocab_size, (2, 11))
                with torch.no_grad():
                    expected = model(ids).logits
                for kw in ({}, {"save_original_format": False}):
                    ckpt = os.path.join(tmp, f"ckpt{len(kw)}")
                    model.save_pretrained(ckpt, **kw)
                    got = btx_logits(tmp, ckpt, ids)
                    self.assertLessEqual((got - expected).abs().max().item(), TOLERANCE, kw)

    def test_llama_and_qwen_seeds_merge_into_glm4_moe(self):
        """Copies of a seed, with two shared experts and a dense first layer, equal the
        seed; three distinct Llamas mixed load in transformers with btx's logits."""
        from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                                  Qwen3Config, Qwen3ForCausalLM)
        seeds = {"llama": (LlamaConfig, LlamaForCausalLM, {}),
                 "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
                 "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"num_hidden_layers": 3})}
        for name, (config_class, model_class, extra) in seeds.items():
            with self.subTest(seed=name), tempfile.TemporaryDirectory() as tmp:
                base = os.path.join(tmp, "base")
                model = tiny(config_class, model_class, 91, **extra)
                model.save_pretrained(base)
                ids = torch.randint(0, 67, (2, 11))
                with torch.no_grad():
                    expected = model(ids).logits
                config = yaml_config(base, [base] * 4, gate_mode="random", experts_per_token=2,
                                     architecture="glm4_moe", dense_layers=1)
                config += f"shared_experts:\n  - source_model: {base}\n  - source_model: {base}\n"
                result, out = merge(tmp, config, out="glm")
                self.assertEqual(result.returncode, 0, result.stderr)
                moe = self.load_moe(out)
                self.assertEqual(moe.config.model_type, "glm4_moe")
                self.assertEqual(moe.config.n_shared_experts, 2)
                self.assertEqual(moe.config.first_k_dense_replace, 1)
                with torch.no_grad():
                    got = moe(ids).logits
                self.assertLessEqual((got - expected).abs().max().item(), TOLERANCE)
                self.assertLessEqual((btx_logits(tmp, out, ids) - expected).abs().max().item(),
                                     TOLERANCE)
        with tempfile.TemporaryDirectory() as tmp:
            dirs = []
            for j in range(3):
                dirs.append(os.path.join(tmp, f"expert{j}"))
                tiny(LlamaConfig, LlamaForCausalLM, 92 + j).save_pretrained(dirs[-1])
            result, out = merge(tmp, yaml_config(dirs[0], dirs, gate_mode="random", seed=5,
                                                 architecture="glm4_moe", expert_layout="packed"))
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn("model.layers.1.mlp.experts.gate_up_proj", state_of(out))
            moe = self.load_moe(out)
            ids = torch.randint(0, 67, (2, 13))
            with torch.no_grad():
                expected = moe(ids).logits
            self.assertLessEqual((btx_logits(tmp, out, ids) - expected).abs().max().item(),
                                 TOLERANCE)

    def test_what_glm4_moe_cannot_carry_is_refused(self):
        from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM
        cases = {"o_proj bias": (LlamaConfig, LlamaForCausalLM, {"attention_bias": True}),
                 "sliding window": (MistralConfig, MistralForCausalLM, {"sliding_window": 4})}
        for needle, (config_class, model_class, keys) in cases.items():
            with self.subTest(needle), tempfile.TemporaryDirectory() as tmp:
                base = os.path.join(tmp, "base")
                tiny(config_class, model_class, 93, **keys).save_pretrained(base)
                result, out = merge(tmp, yaml_config(base, [base, base], gate_mode="random",
                                                     architecture="glm4_moe"))
                self.assertNotEqual(result.returncode, 0)
                self.assertIn("architecture", result.stderr)
                self.assertIn(needle, result.stderr)
                self.assertFalse(os.path.exists(out))


class PipelineOnGlm4MoeSeed(unittest.TestCase):
    """btx-pipeline --quick from GLM-4-MoE's dense form, routed by sigmoid_topk (its
    balancing bias moving while the MoE trains): the final model is a glm4_moe that
    transformers loads with btx's logits."""

    load_moe = FamilyChecks.load_moe
    run_pipeline = PipelineOnQwenSeeds.run_pipeline

    def test_quick_pipeline_from_a_glm4_moe_seed(self):
        from transformers import Glm4MoeForCausalLM
        shape = {k: v for k, v in PipelineOnQwenSeeds.SEED_SHAPE.items()}
        moe = self.run_pipeline(Glm4MoeInTransformers.dense(1, use_qk_norm=True, **shape),
                                Glm4MoeForCausalLM, "glm4_moe",
                                "router: sigmoid_topk\nrouter_options: {k: 2}\n",
                                arm="btx-sigmoid_topk")
        biases = [layer.mlp.gate.e_score_correction_bias for layer in moe.model.layers]
        self.assertTrue(any(b.abs().max().item() > 0 for b in biases))  # balancing moved them


class PackedExperts(unittest.TestCase):
    """transformers 5's packed experts (experts.gate_up_proj [E, 2F, D], gate rows first;
    experts.down_proj [E, D, F]), which save_pretrained(save_original_format=False) writes:
    btx reads them into the same model as the per-expert files, and btx-merge writes them
    (expert_layout: packed) for transformers to load."""

    load_moe = FamilyChecks.load_moe

    def moes(self):
        from transformers import (MixtralConfig, MixtralForCausalLM, Qwen2MoeConfig,
                                  Qwen2MoeForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM)
        yield "mixtral", tiny(MixtralConfig, MixtralForCausalLM, 70, num_local_experts=4,
                              num_experts_per_tok=2)
        yield "qwen2_moe", tiny(Qwen2MoeConfig, Qwen2MoeForCausalLM, 71, num_experts=4,
                                num_experts_per_tok=2, moe_intermediate_size=24,
                                shared_expert_intermediate_size=20, norm_topk_prob=False)
        yield "qwen3_moe", tiny(Qwen3MoeConfig, Qwen3MoeForCausalLM, 72, num_experts=3,
                                num_experts_per_tok=2, moe_intermediate_size=24,
                                norm_topk_prob=True)

    def test_packed_and_per_expert_files_load_in_btx_with_identical_logits(self):
        for name, model in self.moes():
            with self.subTest(model=name), tempfile.TemporaryDirectory() as tmp:
                with torch.no_grad():
                    for layer in model.model.layers:
                        layer.mlp.gate.weight.normal_(0, 0.5)
                per_expert, packed = os.path.join(tmp, "per_expert"), os.path.join(tmp, "packed")
                model.save_pretrained(per_expert)
                model.save_pretrained(packed, save_original_format=False)
                self.assertIn("model.layers.0.mlp.experts.gate_up_proj", state_of(packed))
                self.assertNotIn("model.layers.0.mlp.experts.gate_up_proj", state_of(per_expert))
                ids = torch.randint(0, model.config.vocab_size, (2, 9))
                with torch.no_grad():
                    expected = model(ids).logits
                a, b = btx_logits(tmp, per_expert, ids), btx_logits(tmp, packed, ids)
                self.assertTrue(torch.equal(a, b), (a - b).abs().max().item())
                self.assertLessEqual((a - expected).abs().max().item(), TOLERANCE)

    def test_btx_merge_writes_packed_experts_that_transformers_loads(self):
        from transformers import Qwen3MoeForCausalLM
        for family, moe_class in ((MistralInTransformers, None), (Qwen3InTransformers,
                                                                  Qwen3MoeForCausalLM)):
            with self.subTest(family=family.__name__), tempfile.TemporaryDirectory() as tmp:
                self.moe_class = moe_class or MistralInTransformers.moe_class
                dirs = []
                for j in range(3):
                    dirs.append(os.path.join(tmp, f"expert{j}"))
                    family.dense(seed=80 + j).save_pretrained(dirs[-1])
                outs = {}
                for layout in ("per_expert", "packed"):
                    result, outs[layout] = merge(
                        tmp, yaml_config(dirs[0], dirs, gate_mode="random", seed=3,
                                         expert_layout=layout), out=layout)
                    self.assertEqual(result.returncode, 0, result.stderr)
                packed = state_of(outs["packed"])
                per_expert = state_of(outs["per_expert"])
                gate_up = packed["model.layers.1.mlp.experts.gate_up_proj"]
                F = gate_up.shape[1] // 2
                for j in range(3):
                    self.assertTrue(torch.equal(gate_up[j, :F], per_expert[family.expert_name(
                        1, j, "gate_proj")]))
                    self.assertTrue(torch.equal(gate_up[j, F:], per_expert[family.expert_name(
                        1, j, "up_proj")]))
                ids = torch.randint(0, 67, (2, 10))
                with torch.no_grad():
                    want = self.load_moe(outs["per_expert"])(ids).logits
                    got = self.load_moe(outs["packed"])(ids).logits
                self.assertLessEqual((got - want).abs().max().item(), 1e-6)
                self.assertLessEqual((btx_logits(tmp, outs["packed"], ids) - want).abs().max()
                                     .item(), TOLERANCE)


if __name__ == "__main__":
    unittest.main()
