// SPDX-License-Identifier: MIT
// The Qwen3 family's config.json and name table: Qwen3 and Qwen3-MoE configs round-trip,
// transformers' defaults apply where keys are absent (head_dim 128), what btx cannot
// represent is refused naming the field, and the MoE names map both ways.
#include <doctest/doctest.h>

#include <string>

#include <btx/models/auto.hpp>
#include <btx/models/qwen3/family.hpp>
#include <btx/models/registry.hpp>

namespace {

nlohmann::json qwen3_json() {
  return {{"architectures", {"Qwen3ForCausalLM"}},
          {"model_type", "qwen3"},
          {"hidden_size", 40},
          {"intermediate_size", 56},
          {"num_hidden_layers", 3},
          {"num_attention_heads", 5},
          {"num_key_value_heads", 1},
          {"head_dim", 12},
          {"vocab_size", 67},
          {"rms_norm_eps", 1e-6},
          {"rope_theta", 1e6},
          {"use_sliding_window", true},
          {"sliding_window", 4},
          {"max_window_layers", 1}};
}

std::string error_of(const nlohmann::json& j) {
  try {
    (void)btx::hf::qwen3_config_from_json(j, "q/config.json");
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("qwen3 config: reads q/k norm, head_dim, biases and which layers slide") {
  const auto c = btx::hf::qwen3_config_from_json(qwen3_json()).decoder;
  CHECK(c.qk_norm);
  CHECK_FALSE(c.qkv_bias);
  CHECK(c.resolved_head_dim() == 12);
  CHECK(c.rope_theta == 1e6);
  CHECK(c.window_of_layer(0) == 0);  // layers below max_window_layers attend fully
  CHECK(c.window_of_layer(1) == 4);
  CHECK(c.window_of_layer(2) == 4);
  auto j = qwen3_json();
  j.erase("head_dim");  // transformers' Qwen3 default, not hidden / heads
  CHECK(btx::hf::qwen3_config_from_json(j).decoder.resolved_head_dim() == 128);
  j = qwen3_json();
  j["layer_types"] = {"sliding_attention", "full_attention", "sliding_attention"};
  const auto typed = btx::hf::qwen3_config_from_json(j).decoder;
  CHECK(typed.window_of_layer(0) == 4);
  CHECK(typed.window_of_layer(1) == 0);
  j["use_sliding_window"] = false;
  CHECK(btx::hf::qwen3_config_from_json(j).decoder.window_of_layer(0) == 0);
  j = qwen3_json();
  j["attention_bias"] = true;
  const auto biased = btx::hf::qwen3_config_from_json(j).decoder;
  CHECK((biased.qkv_bias && biased.o_bias));
}

TEST_CASE("qwen3 config: Qwen3 and Qwen3-MoE round-trip through the family") {
  const auto& family = btx::families().get("qwen3");
  CHECK(btx::families().for_model_type("qwen3_moe") == &family);
  auto spec = family.read_config(qwen3_json(), "q");
  const auto dense = family.config_json(spec, "bfloat16");
  CHECK(dense["model_type"] == "qwen3");
  CHECK(dense["layer_types"] ==
        nlohmann::json({"full_attention", "sliding_attention", "sliding_attention"}));
  const auto again = btx::hf::qwen3_config_from_json(nlohmann::json::parse(dense.dump())).decoder;
  CHECK(again.window_of_layer(1) == 4);
  CHECK(again.resolved_head_dim() == 12);
  auto j = qwen3_json();
  j.erase("max_window_layers");
  j["use_sliding_window"] = false;
  spec = family.read_config(j, "q");
  spec.moe = btx::MoEConfig{.num_experts = 5, .expert_size = 24, .load_balance_alpha = 0.001};
  const auto moe = family.config_json(spec, "float32");
  CHECK(moe["model_type"] == "qwen3_moe");
  CHECK(moe["num_experts"] == 5);
  CHECK(moe["moe_intermediate_size"] == 24);
  CHECK(moe["intermediate_size"] == 56);
  CHECK(moe["norm_topk_prob"] == true);
  const auto read = family.read_config(nlohmann::json::parse(moe.dump()), "q");
  REQUIRE(read.moe.has_value());
  CHECK(read.moe->num_experts == 5);
  CHECK(read.moe->expert_size == 24);
  CHECK(btx::active_experts(*read.moe) == 2);
  // A window on some layers only has no Qwen3-MoE form.
  spec = family.read_config(qwen3_json(), "q");
  spec.moe = btx::MoEConfig{.num_experts = 5, .expert_size = 24, .load_balance_alpha = 0.001};
  CHECK_THROWS_WITH_AS(family.config_json(spec, "float32"), doctest::Contains("every layer"),
                       std::invalid_argument);
}

TEST_CASE("qwen3 config: what btx cannot represent is refused, naming the field and file") {
  auto moe = qwen3_json();
  moe["model_type"] = "qwen3_moe";
  moe["num_experts"] = 4;
  moe["num_experts_per_tok"] = 2;
  moe["moe_intermediate_size"] = 24;
  // norm_topk_prob false (transformers' default): the top-k probabilities as they are.
  CHECK(error_of(moe).empty());
  CHECK_FALSE(btx::hf::qwen3_config_from_json(moe).moe->renormalizes_top_k());
  // ... and the model built from it routes so: its top-k router does not renormalise.
  auto spec = btx::Qwen3Family::read_config(moe, "q");
  spec.shape.num_hidden_layers = 1;
  const auto built = btx::make_model(spec);
  const auto gate = built.module().named_modules()["model.layers.0.mlp.gate"];
  const auto* topk = dynamic_cast<const btx::TopK*>(gate.get());
  REQUIRE(topk != nullptr);
  CHECK_FALSE(topk->renormalizes());
  CHECK(topk->k() == 2);
  moe["num_experts"] = 1;
  CHECK(error_of(moe).find("num_experts_per_tok") != std::string::npos);
  CHECK(error_of(moe).find("q/config.json") != std::string::npos);
  moe["num_experts"] = 4;
  moe["decoder_sparse_step"] = 2;
  CHECK(error_of(moe).find("decoder_sparse_step") != std::string::npos);
  moe["decoder_sparse_step"] = 1;
  moe["mlp_only_layers"] = {1};  // only leading layers may stay dense
  CHECK(error_of(moe).find("mlp_only_layers") != std::string::npos);
  moe["mlp_only_layers"] = {0};  // read as one leading dense layer
  CHECK(btx::hf::qwen3_config_from_json(moe, "q/config.json").moe->dense_layers == 1);
  moe.erase("mlp_only_layers");
  auto j = qwen3_json();
  j["layer_types"] = {"full_attention"};
  CHECK(error_of(j).find("layer_types") != std::string::npos);
  j = qwen3_json();
  j["hidden_act"] = "gelu";
  CHECK(error_of(j).find("hidden_act") != std::string::npos);
  j = qwen3_json();
  j["model_type"] = "qwen2";
  CHECK(error_of(j).find("model_type \"qwen2\"") != std::string::npos);
}

TEST_CASE("qwen3 names: packed experts map to Qwen3-MoE's per-expert tensors and back") {
  const auto names = btx::Qwen3Family::hf_names("model.layers.1.mlp.experts.up_proj", 3);
  REQUIRE(names.size() == 3);
  CHECK(names[2] == "model.layers.1.mlp.experts.2.up_proj.weight");
  CHECK(btx::Qwen3Family::hf_names("model.layers.1.mlp.gate.weight", 3) ==
        std::vector<std::string>{"model.layers.1.mlp.gate.weight"});
  CHECK(btx::Qwen3Family::hf_names("model.layers.0.self_attn.q_norm.weight", 3) ==
        std::vector<std::string>{"model.layers.0.self_attn.q_norm.weight"});
  for (int64_t e = 0; e < 12; ++e) {
    for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
      const auto slot = btx::Qwen3Family::btx_slot("model.layers.4.mlp.experts." +
                                                   std::to_string(e) + "." + proj + ".weight");
      CHECK(slot.param == std::string("model.layers.4.mlp.experts.") + proj);
      CHECK(slot.expert == e);
    }
  }
}
