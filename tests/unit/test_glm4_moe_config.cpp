// SPDX-License-Identifier: MIT
// The GLM-4-MoE family's config.json reader and writers: its dense form (every layer dense),
// the MoE's DeepSeek-V3-style routing read as router sigmoid_topk, ungated shared experts
// and leading dense layers, round trips, and refusals naming the field; a Llama spec
// converted to it through the shared decoder.
#include <doctest/doctest.h>

#include <string>

#include <btx/models/auto.hpp>
#include <btx/models/glm4_moe/family.hpp>
#include <btx/models/registry.hpp>

#include "../test_support.hpp"

namespace {

nlohmann::json glm4_moe_json() {
  return {{"model_type", "glm4_moe"},
          {"hidden_size", 32},
          {"intermediate_size", 64},
          {"num_hidden_layers", 3},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"vocab_size", 64},
          {"partial_rotary_factor", 1.0},
          {"attention_bias", true},
          {"use_qk_norm", true},
          {"first_k_dense_replace", 1},
          {"n_routed_experts", 8},
          {"num_experts_per_tok", 3},
          {"moe_intermediate_size", 16},
          {"n_shared_experts", 2},
          {"n_group", 4},
          {"topk_group", 2},
          {"routed_scaling_factor", 2.5}};
}

}  // namespace

TEST_CASE("glm4_moe config: DeepSeek-V3 routing, shared experts and dense layers are read") {
  const auto spec = btx::spec_from_json(glm4_moe_json(), "glm/config.json");
  CHECK(spec.family == "glm4_moe");
  REQUIRE(spec.moe);
  const auto& m = *spec.moe;
  CHECK(m.num_experts == 8);
  CHECK(m.router.name == "sigmoid_topk");
  CHECK(m.router.options.at("k").get<int64_t>() == 3);
  CHECK(m.router.options.at("groups").get<int64_t>() == 4);
  CHECK(m.router.options.at("topk_groups").get<int64_t>() == 2);
  CHECK(m.router.options.at("scaling").get<double>() == 2.5);
  CHECK(m.expert_size == 16);
  CHECK(m.shared_expert_size.value_or(-1) == 32);
  CHECK_FALSE(m.shared_expert_gated);
  CHECK(m.dense_layers == 1);
  // Written back: the same keys.
  const auto j = btx::config_json_of(spec, "float32");
  for (const char* key : {"first_k_dense_replace", "n_routed_experts", "num_experts_per_tok",
                          "moe_intermediate_size", "n_shared_experts", "n_group", "topk_group",
                          "routed_scaling_factor", "attention_bias", "use_qk_norm"}) {
    CAPTURE(key);
    CHECK(j.at(key).dump() == glm4_moe_json().at(key).dump());
  }
  CHECK(j.at("rope_parameters").at("partial_rotary_factor").get<double>() == 1.0);
  // The model it builds: a dense first layer, MoE after, the bias and the shared experts.
  const auto lm = btx::make_model(spec);
  const auto params = lm.named_parameters();
  CHECK(params.contains("model.layers.0.mlp.gate_proj.weight"));
  CHECK(params["model.layers.0.mlp.gate_proj.weight"].size(0) == 64);
  CHECK(params.contains("model.layers.1.mlp.gate.e_score_correction_bias"));
  CHECK(params["model.layers.1.mlp.shared_expert.gate_proj.weight"].size(0) == 32);
  CHECK_FALSE(params.contains("model.layers.1.mlp.shared_expert_gate.weight"));
  const auto& family = btx::families().get("glm4_moe");
  CHECK(family.hf_names("model.layers.1.mlp.shared_expert.up_proj.weight", 0).front() ==
        "model.layers.1.mlp.shared_experts.up_proj.weight");
  CHECK(family.btx_slot("model.layers.1.mlp.shared_experts.up_proj.weight").param ==
        "model.layers.1.mlp.shared_expert.up_proj.weight");
}

TEST_CASE("glm4_moe config: every layer dense is the dense form") {
  auto j = glm4_moe_json();
  j["first_k_dense_replace"] = 3;
  const auto spec = btx::spec_from_json(j, "glm/config.json");
  CHECK_FALSE(spec.moe);
  const auto back = btx::config_json_of(spec, "float32");
  CHECK(back.at("first_k_dense_replace").get<int64_t>() == 3);
  CHECK(back.at("model_type").get<std::string>() == "glm4_moe");
}

TEST_CASE("glm4_moe config: partial rotary and what the layer lacks are refused by name") {
  auto j = glm4_moe_json();
  j.erase("partial_rotary_factor");  // transformers' default: 0.5
  CHECK_THROWS_WITH_AS(btx::spec_from_json(j, "glm/config.json"),
                       doctest::Contains("\"partial_rotary_factor\" 0.5 is not supported"),
                       std::runtime_error);
  // A Llama with an o_proj bias, or a window, cannot be written as GLM-4-MoE.
  auto c = btx::test::tiny_config();
  const auto& glm = btx::families().get("glm4_moe");
  CHECK(btx::convert_spec(btx::LlamaFamily::spec(c), glm).family == "glm4_moe");
  c.qkv_bias = c.o_bias = true;
  CHECK_THROWS_WITH_AS(btx::convert_spec(btx::LlamaFamily::spec(c), glm),
                       doctest::Contains("o_proj bias"), std::invalid_argument);
  c.qkv_bias = c.o_bias = false;
  c.sliding_window = 4;
  CHECK_THROWS_WITH_AS(btx::convert_spec(btx::LlamaFamily::spec(c), glm),
                       doctest::Contains("sliding window"), std::invalid_argument);
  // A softmax router cannot be written as GLM-4-MoE, nor sigmoid_topk as Qwen3-MoE.
  auto spec = btx::spec_from_json(glm4_moe_json(), "glm/config.json");
  auto softmax = spec;
  softmax.moe->router = "top2";
  CHECK_THROWS_WITH_AS(btx::config_json_of(softmax, "float32"), doctest::Contains("sigmoid_topk"),
                       std::invalid_argument);
  auto q = btx::test::tiny_config();
  q.qk_norm = true;
  auto qwen = btx::Qwen3Family::spec(
      q, btx::MoEConfig{.num_experts = 4, .router = btx::RouterChoice("sigmoid_topk", {{"k", 2}})});
  CHECK_THROWS_WITH_AS(btx::config_json_of(qwen, "float32"),
                       doctest::Contains("router sigmoid_topk cannot be written"),
                       std::invalid_argument);
}
