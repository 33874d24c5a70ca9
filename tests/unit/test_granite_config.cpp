// SPDX-License-Identifier: MIT
// The Granite family: granite, granitemoe and granitemoeshared configs round-trip through
// the family with Granite's multipliers, the MoE form written follows the shared expert,
// what btx cannot represent is refused naming the field (and file), and GraniteMoE's packed
// tensors (input_linear: gate then up; shared_mlp's along dim 0) are written in the
// original format and read back from it and from transformers 5's names.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <btx/io/sharded_writer.hpp>
#include <btx/models/auto.hpp>
#include <btx/models/granite/family.hpp>
#include <btx/models/registry.hpp>
#include <btx/moe/moe_layer.hpp>

#include "../scratch.hpp"

namespace fs = std::filesystem;
using btx::test::scratch_dir;

namespace {

nlohmann::json granite_json() {
  return {{"architectures", {"GraniteForCausalLM"}},
          {"model_type", "granite"},
          {"hidden_size", 40},
          {"intermediate_size", 56},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 5},
          {"num_key_value_heads", 1},
          {"head_dim", 12},
          {"vocab_size", 67},
          {"tie_word_embeddings", true},
          {"attention_bias", true},
          {"embedding_multiplier", 3.0},
          {"residual_multiplier", 0.5},
          {"attention_multiplier", 0.3},
          {"logits_scaling", 2.5}};
}

nlohmann::json granitemoe_json(int64_t shared = -1) {
  auto j = granite_json();
  j["model_type"] = shared >= 0 ? "granitemoeshared" : "granitemoe";
  j["intermediate_size"] = 24;  // each expert's
  j["num_local_experts"] = 5;
  j["num_experts_per_tok"] = 2;
  j["router_aux_loss_coef"] = 0.02;
  if (shared >= 0) j["shared_intermediate_size"] = shared;
  return j;
}

std::string granite_error_of(const nlohmann::json& j) {
  try {
    (void)btx::hf::granite_config_from_json(j, "g/config.json");
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

std::map<std::string, std::vector<int64_t>> granite_tensors_in(const fs::path& dir) {
  std::map<std::string, std::vector<int64_t>> out;
  btx::io::CheckpointReader ckpt(dir);
  for (const auto& name : ckpt.names()) out[name] = ckpt.info(name).shape;
  return out;
}

}  // namespace

TEST_CASE("granite config: multipliers, attention biases and transformers' defaults") {
  const auto c = btx::hf::granite_config_from_json(granite_json()).decoder;
  CHECK(c.embedding_multiplier == 3.0);
  CHECK(c.residual_multiplier == 0.5);
  CHECK(c.attention_scale == 0.3);
  CHECK(c.logits_divisor == 2.5);
  CHECK((c.qkv_bias && c.o_bias && !c.qk_norm));
  CHECK(c.resolved_head_dim() == 12);
  CHECK(c.tie_word_embeddings);
  // Left out: no bias, eps 1e-6, and attention_multiplier 1.0 (no scaling, not 1/sqrt(hd)).
  auto j = granite_json();
  for (const char* key : {"attention_bias", "attention_multiplier", "embedding_multiplier",
                          "residual_multiplier", "logits_scaling", "tie_word_embeddings"})
    j.erase(key);
  const auto d = btx::hf::granite_config_from_json(j).decoder;
  CHECK_FALSE(d.qkv_bias);
  CHECK(d.rms_norm_eps == 1e-6);
  CHECK(d.attention_scale == 1.0);
  CHECK(d.embedding_multiplier == 1.0);
  CHECK(d.logits_divisor == 1.0);
  CHECK_FALSE(d.tie_word_embeddings);
}

TEST_CASE("granite config: granite, granitemoe and granitemoeshared round-trip") {
  const auto& family = btx::families().get("granite");
  CHECK(btx::families().for_model_type("granitemoe") == &family);
  CHECK(btx::families().for_model_type("granitemoeshared") == &family);
  CHECK_FALSE(family.moe_has_shared_expert);

  const auto dense = family.read_config(granite_json(), "g");
  CHECK_FALSE(dense.moe);
  const auto dense_json = family.config_json(dense, "float32");
  CHECK(dense_json["model_type"] == "granite");
  CHECK(dense_json["attention_multiplier"] == 0.3);
  CHECK(dense_json["mlp_bias"] == false);
  const auto dense_again = family.read_config(nlohmann::json::parse(dense_json.dump()), "g");
  CHECK(dense_again.shape == dense.shape);
  const auto c = btx::GraniteFamily::decoder_config(dense_again);
  CHECK(c.embedding_multiplier == 3.0);
  CHECK(c.residual_multiplier == 0.5);
  CHECK(c.attention_scale == 0.3);
  CHECK(c.logits_divisor == 2.5);
  CHECK(c.o_bias);

  // A config without attention_scale (btx's default 1/sqrt(hd)) is written explicitly.
  auto unscaled = c;
  unscaled.attention_scale.reset();
  CHECK(btx::hf::granite_config_json(unscaled)["attention_multiplier"].get<double>() ==
        doctest::Approx(1.0 / std::sqrt(12.0)));

  // GraniteMoE: intermediate_size is each expert's F; always renormalised.
  const auto moe = family.read_config(granitemoe_json(), "g");
  REQUIRE(moe.moe);
  CHECK(moe.moe->num_experts == 5);
  CHECK(btx::active_experts(*moe.moe) == 2);
  CHECK(moe.moe->expert_size == 24);
  CHECK(moe.moe->renormalizes_top_k());
  CHECK(moe.moe->load_balance_alpha == 0.02);
  CHECK_FALSE(moe.moe->shared_expert_size);
  const auto moe_json = family.config_json(moe, "bfloat16");
  CHECK(moe_json["model_type"] == "granitemoe");
  CHECK(moe_json["architectures"][0] == "GraniteMoeForCausalLM");
  CHECK(moe_json["intermediate_size"] == 24);
  CHECK(moe_json["num_local_experts"] == 5);
  CHECK(moe_json["num_experts_per_tok"] == 2);
  CHECK(moe_json["logits_scaling"] == 2.5);
  CHECK_FALSE(moe_json.contains("mlp_bias"));
  CHECK_FALSE(moe_json.contains("shared_intermediate_size"));
  const auto moe_again = family.read_config(nlohmann::json::parse(moe_json.dump()), "g");
  CHECK(moe_again.moe->expert_size == 24);
  CHECK(moe_again.dtype == "bfloat16");

  // GraniteMoEShared: an ungated shared expert of shared_intermediate_size.
  const auto shared = family.read_config(granitemoe_json(20), "g");
  REQUIRE(shared.moe);
  CHECK(shared.moe->shared_expert_size == 20);
  CHECK_FALSE(shared.moe->shared_expert_gated);
  const auto shared_json = family.config_json(shared, "float32");
  CHECK(shared_json["model_type"] == "granitemoeshared");
  CHECK(shared_json["architectures"][0] == "GraniteMoeSharedForCausalLM");
  CHECK(shared_json["shared_intermediate_size"] == 20);
  const auto shared_again = family.read_config(nlohmann::json::parse(shared_json.dump()), "g");
  CHECK(shared_again.moe->shared_expert_size == 20);
  CHECK_FALSE(shared_again.moe->shared_expert_gated);
  // Width 0: transformers builds no shared_mlp, so it is a GraniteMoE.
  const auto none = family.read_config(granitemoe_json(0), "g");
  CHECK_FALSE(none.moe->shared_expert_size);
  CHECK(family.config_json(none, "float32")["model_type"] == "granitemoe");

  // The model: every layer's shared expert ungated, no shared_expert_gate parameter.
  auto model = btx::make_model(shared);
  const auto layers = btx::moe_layers(model.module());
  REQUIRE(layers.size() == 2);
  REQUIRE(layers[0].second->shared_expert());
  CHECK_FALSE(layers[0].second->shared_expert().gated());
  const auto params = model.module().named_parameters();
  CHECK(params.contains("model.layers.1.mlp.shared_expert.up_proj.weight"));
  CHECK_FALSE(params.contains("model.layers.1.mlp.shared_expert_gate.weight"));
}

TEST_CASE("granite config: what btx cannot represent is refused, naming the field and file") {
  auto j = granite_json();
  j["mlp_bias"] = true;
  CHECK(btx::test::has(granite_error_of(j), "\"mlp_bias\": true is not supported"));
  CHECK(btx::test::has(granite_error_of(j), "g/config.json"));
  for (const char* key :
       {"attention_multiplier", "embedding_multiplier", "residual_multiplier", "logits_scaling"}) {
    CAPTURE(key);
    j = granite_json();
    j[key] = 0.0;
    CHECK(
        btx::test::has(granite_error_of(j), std::string("\"") + key + "\" must be finite and > 0"));
  }
  j = granite_json();
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}};
  CHECK(btx::test::has(granite_error_of(j), "rope_scaling"));
  j = granite_json();
  j["hidden_act"] = "gelu";
  CHECK(btx::test::has(granite_error_of(j), "hidden_act"));
  j = granite_json();
  j["model_type"] = "llama";
  CHECK(btx::test::has(granite_error_of(j), "model_type \"llama\""));
  j = granitemoe_json();
  j["num_experts_per_tok"] = 6;
  CHECK(btx::test::has(granite_error_of(j), "num_experts_per_tok"));
  j = granitemoe_json(-1);
  j["model_type"] = "granitemoeshared";
  j["shared_intermediate_size"] = -2;
  CHECK(btx::test::has(granite_error_of(j), "shared_intermediate_size"));

  // Writing: what GraniteMoE(Shared) cannot carry.
  const auto c = btx::hf::granite_config_from_json(granite_json()).decoder;
  btx::MoEConfig gated{.num_experts = 3, .shared_expert_size = 8};
  CHECK_THROWS_WITH_AS(btx::hf::granitemoe_config_json(c, gated),
                       doctest::Contains("without a gate"), std::invalid_argument);
  auto zero = gated;
  zero.shared_expert_size = 0;
  zero.shared_expert_gated = false;
  CHECK_THROWS_WITH_AS(btx::hf::granitemoe_config_json(c, zero),
                       doctest::Contains("zero-width shared expert"), std::invalid_argument);
  btx::MoEConfig unnormalised{.num_experts = 3};
  unnormalised.router = btx::RouterChoice("topk", {{"k", 2}, {"renormalize", false}});
  CHECK_THROWS_WITH_AS(btx::hf::granitemoe_config_json(c, unnormalised),
                       doctest::Contains("norm_topk_prob"), std::invalid_argument);
  auto normed = c;
  normed.qk_norm = true;
  CHECK_THROWS_WITH_AS(btx::hf::granite_config_json(normed), doctest::Contains("q/k norms"),
                       std::invalid_argument);
  auto windowed = c;
  windowed.sliding_window = 4;
  CHECK_THROWS_WITH_AS(btx::hf::granite_config_json(windowed), doctest::Contains("sliding window"),
                       std::invalid_argument);
  auto half_bias = c;
  half_bias.o_bias = false;
  CHECK_THROWS_WITH_AS(btx::hf::granite_config_json(half_bias), doctest::Contains("or none"),
                       std::invalid_argument);
}

TEST_CASE("granite names: the packed pieces of each btx tensor, in both formats") {
  using btx::hf::HfPiece;
  // Part `part` of two along `dim` of HF tensor `name`.
  const auto chunk = [](const std::string& name, int64_t part, int64_t dim) {
    return std::vector<HfPiece>{{name, std::nullopt, part, 2, dim}};
  };
  const auto namings = btx::hf::granite_expert_namings();
  REQUIRE(namings.size() == 2);
  const std::string l = "model.layers.3.";
  const auto& original = namings[0].pieces;
  const auto& v5 = namings[1].pieces;
  CHECK((original(l + "mlp.gate.weight", 0) ==
         std::vector<HfPiece>{{l + "block_sparse_moe.router.layer.weight"}}));
  CHECK((v5(l + "mlp.gate.weight", 0) ==
         std::vector<HfPiece>{{l + "block_sparse_moe.router.weight"}}));
  CHECK((original(l + "mlp.experts.gate_proj", 4) ==
         chunk(l + "block_sparse_moe.input_linear.weight", 0, 1)));
  CHECK((original(l + "mlp.experts.up_proj", 4) ==
         chunk(l + "block_sparse_moe.input_linear.weight", 1, 1)));
  CHECK((v5(l + "mlp.experts.up_proj", 4) ==
         chunk(l + "block_sparse_moe.experts.gate_up_proj", 1, 1)));
  CHECK((original(l + "mlp.experts.down_proj", 4) ==
         std::vector<HfPiece>{{l + "block_sparse_moe.output_linear.weight"}}));
  CHECK((v5(l + "mlp.experts.down_proj", 4) ==
         std::vector<HfPiece>{{l + "block_sparse_moe.experts.down_proj"}}));
  for (const auto* pieces : {&original, &v5}) {
    CHECK(((*pieces)(l + "mlp.shared_expert.gate_proj.weight", 0) ==
           chunk(l + "shared_mlp.input_linear.weight", 0, 0)));
    CHECK(((*pieces)(l + "mlp.shared_expert.up_proj.weight", 0) ==
           chunk(l + "shared_mlp.input_linear.weight", 1, 0)));
    CHECK(((*pieces)(l + "mlp.shared_expert.down_proj.weight", 0) ==
           std::vector<HfPiece>{{l + "shared_mlp.output_linear.weight"}}));
    // The trunk and a dense FFN keep btx's (Llama's) names.
    for (const std::string& same :
         std::vector<std::string>{l + "mlp.gate_proj.weight", l + "self_attn.o_proj.bias",
                                  l + "post_attention_layernorm.weight", "lm_head.weight"})
      CHECK(((*pieces)(same, 0) == std::vector<HfPiece>{{same}}));
  }
  // No per-expert layout: asking for one is refused, naming what the family has.
  const auto names = btx::families().get("granite").name_map();
  CHECK_THROWS_WITH_AS((void)names.layout(btx::hf::ExpertLayout::per_expert),
                       doctest::Contains("it has: packed"), std::invalid_argument);
}

TEST_CASE("granite names: a GraniteMoEShared round-trips through both formats on disk") {
  const auto& family = btx::families().get("granite");
  torch::manual_seed(3);
  auto lm = btx::make_model(family.read_config(granitemoe_json(20), "g"));
  const int64_t E = 5, F = 24, S = 20, D = 40;
  const auto dir = scratch_dir("granite_original");
  btx::hf::SaveOptions options;
  options.overwrite = true;
  btx::save_hf_checkpoint(lm, dir, options);
  const auto names = granite_tensors_in(dir);
  const std::string l = "model.layers.1.";
  CHECK(
      (names.at(l + "block_sparse_moe.input_linear.weight") == std::vector<int64_t>{E, 2 * F, D}));
  CHECK((names.at(l + "block_sparse_moe.output_linear.weight") == std::vector<int64_t>{E, D, F}));
  CHECK((names.at(l + "block_sparse_moe.router.layer.weight") == std::vector<int64_t>{E, D}));
  CHECK((names.at(l + "shared_mlp.input_linear.weight") == std::vector<int64_t>{2 * S, D}));
  CHECK((names.at(l + "shared_mlp.output_linear.weight") == std::vector<int64_t>{D, S}));
  CHECK(names.count(l + "self_attn.o_proj.bias"));
  for (const auto& [name, shape] : names) CHECK_MESSAGE(!btx::test::has(name, ".mlp."), name);
  CHECK_FALSE(names.count("lm_head.weight"));  // tied

  // input_linear: gate rows, then up rows (per expert; the shared one along dim 0).
  const auto params = lm.named_parameters();
  {
    btx::io::CheckpointReader ckpt(dir);
    const auto gate_up = ckpt.tensor(l + "block_sparse_moe.input_linear.weight");
    CHECK(torch::equal(gate_up.narrow(1, 0, F), params[l + "mlp.experts.gate_proj"]));
    CHECK(torch::equal(gate_up.narrow(1, F, F), params[l + "mlp.experts.up_proj"]));
    const auto shared = ckpt.tensor(l + "shared_mlp.input_linear.weight");
    CHECK(torch::equal(shared.narrow(0, 0, S), params[l + "mlp.shared_expert.gate_proj.weight"]));
    CHECK(torch::equal(shared.narrow(0, S, S), params[l + "mlp.shared_expert.up_proj.weight"]));
  }
  const auto check_equal = [&](const btx::CausalLM& back) {
    const auto got = back.named_parameters();
    REQUIRE(got.size() == params.size());
    for (const auto& p : params) CHECK_MESSAGE(torch::equal(got[p.key()], p.value()), p.key());
  };
  check_equal(btx::load_causal_lm(dir));

  // The same tensors under transformers 5's names (save_original_format=False).
  const auto v5 = scratch_dir("granite_v5");
  {
    std::map<std::string, torch::Tensor> renamed;
    btx::io::CheckpointReader ckpt(dir);
    const std::vector<std::pair<std::string, std::string>> to_v5 = {
        {"block_sparse_moe.router.layer.weight", "block_sparse_moe.router.weight"},
        {"block_sparse_moe.input_linear.weight", "block_sparse_moe.experts.gate_up_proj"},
        {"block_sparse_moe.output_linear.weight", "block_sparse_moe.experts.down_proj"}};
    for (const auto& name : ckpt.names()) {
      std::string out = name;
      for (const auto& [from, to] : to_v5) {
        if (const auto at = out.find(from); at != std::string::npos)
          out.replace(at, from.size(), to);
      }
      renamed.emplace(out, ckpt.tensor(name).clone());
    }
    CHECK(renamed.count(l + "block_sparse_moe.experts.gate_up_proj"));
    btx::io::save_sharded(v5, renamed);
    fs::copy_file(dir / "config.json", v5 / "config.json");
  }
  check_equal(btx::load_causal_lm(v5));
}
