// SPDX-License-Identifier: MIT
// The Qwen2 family's config.json: Qwen2 and Qwen2-MoE configs round-trip through the
// family, transformers' window rules apply per architecture, the shared expert and
// norm_topk_prob reach the MoE layers, and what btx cannot represent is refused naming
// the field and the file.
#include <doctest/doctest.h>

#include <string>

#include <btx/models/auto.hpp>
#include <btx/models/qwen2/family.hpp>
#include <btx/models/registry.hpp>
#include <btx/moe/moe_layer.hpp>

namespace {

nlohmann::json qwen2_json() {
  return {{"architectures", {"Qwen2ForCausalLM"}},
          {"model_type", "qwen2"},
          {"hidden_size", 40},
          {"intermediate_size", 56},
          {"num_hidden_layers", 4},
          {"num_attention_heads", 5},
          {"num_key_value_heads", 1},
          {"vocab_size", 67},
          {"tie_word_embeddings", true},
          {"use_sliding_window", true},
          {"sliding_window", 4},
          {"max_window_layers", 2}};
}

nlohmann::json qwen2_moe_json() {
  auto j = qwen2_json();
  j["model_type"] = "qwen2_moe";
  j["num_experts"] = 5;
  j["num_experts_per_tok"] = 2;
  j["moe_intermediate_size"] = 24;
  j["shared_expert_intermediate_size"] = 20;
  return j;
}

std::string qwen2_error_of(const nlohmann::json& j) {
  try {
    (void)btx::hf::qwen2_config_from_json(j, "q2/config.json");
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("qwen2 config: q/k/v biases, head_dim hidden/heads, each architecture's windows") {
  const auto c = btx::hf::qwen2_config_from_json(qwen2_json()).decoder;
  CHECK((c.qkv_bias && !c.o_bias && !c.qk_norm));
  CHECK(c.resolved_head_dim() == 8);
  CHECK(c.tie_word_embeddings);
  // Qwen2: layers >= max_window_layers slide.
  CHECK(c.window_of_layer(1) == 0);
  CHECK(c.window_of_layer(2) == 4);
  CHECK(c.window_of_layer(3) == 4);
  // Qwen2-MoE: even layers below max_window_layers slide.
  const auto m = btx::hf::qwen2_config_from_json(qwen2_moe_json()).decoder;
  CHECK(m.window_of_layer(0) == 4);
  CHECK(m.window_of_layer(1) == 0);
  CHECK(m.window_of_layer(2) == 0);
  auto j = qwen2_json();
  j["sliding_window"] = nullptr;  // Qwen2's "unused"
  CHECK(btx::hf::qwen2_config_from_json(j).decoder.sliding_window == 0);
  j = qwen2_json();
  j["head_dim"] = 12;
  CHECK(btx::hf::qwen2_config_from_json(j).decoder.resolved_head_dim() == 12);
}

TEST_CASE("qwen2 config: Qwen2 and Qwen2-MoE round-trip, shared expert and norm_topk_prob") {
  const auto& family = btx::families().get("qwen2");
  CHECK(btx::families().for_model_type("qwen2_moe") == &family);
  CHECK(family.moe_has_shared_expert);
  CHECK_FALSE(btx::families().get("qwen3").moe_has_shared_expert);
  const auto spec = family.read_config(qwen2_moe_json(), "q2");
  REQUIRE(spec.moe.has_value());
  CHECK(spec.moe->shared_expert_size == 20);
  CHECK_FALSE(spec.moe->renormalizes_top_k());  // transformers' Qwen2-MoE default
  const auto written = family.config_json(spec, "float32");
  CHECK(written["model_type"] == "qwen2_moe");
  CHECK(written["shared_expert_intermediate_size"] == 20);
  CHECK(written["norm_topk_prob"] == false);
  CHECK(written["qkv_bias"] == true);
  CHECK(written["layer_types"] == nlohmann::json({"sliding_attention", "full_attention",
                                                  "full_attention", "full_attention"}));
  const auto again = family.read_config(nlohmann::json::parse(written.dump()), "q2");
  CHECK(again.shape == spec.shape);
  CHECK(again.moe->shared_expert_size == 20);
  const auto dense = family.read_config(qwen2_json(), "q2");
  const auto dense_json = family.config_json(dense, "float32");
  CHECK(dense_json["model_type"] == "qwen2");
  CHECK(family.read_config(nlohmann::json::parse(dense_json.dump()), "q2").shape == dense.shape);

  // The model: every MoE layer has the shared expert and routes without renormalising.
  auto model = btx::make_model(spec);
  const auto layers = btx::moe_layers(model.module());
  REQUIRE(layers.size() == 4);
  REQUIRE(layers[0].second->shared_expert());
  CHECK(layers[0].second->shared_expert().expert->intermediate_size() == 20);
  const auto params = model.module().named_parameters();
  CHECK(params.contains("model.layers.3.mlp.shared_expert.down_proj.weight"));
  CHECK(params["model.layers.3.mlp.shared_expert_gate.weight"].sizes() ==
        torch::IntArrayRef({1, 40}));
  // Without a shared expert asked for, a Qwen2 MoE still has the (zero-width) slot.
  auto plain_spec = dense;
  plain_spec.moe = btx::MoEConfig{.num_experts = 3, .router = "top2"};
  auto plain = btx::Qwen2Family::make_moe(plain_spec);
  const auto plain_layers = btx::moe_layers(plain.module());
  REQUIRE(plain_layers.size() == 4);
  REQUIRE(plain_layers[0].second->shared_expert());
  CHECK(plain.spec().moe->shared_expert_size == 0);
  CHECK(plain_layers[0].second->shared_expert().expert->intermediate_size() == 0);
  torch::NoGradGuard no_grad;
  const auto out = plain.forward(torch::randint(0, 67, {2, 5}));
  CHECK(out.sizes() == torch::IntArrayRef({2, 5, 67}));
}

TEST_CASE("qwen2 config: what btx cannot represent is refused, naming the field and file") {
  auto j = qwen2_moe_json();
  j["qkv_bias"] = false;
  CHECK(qwen2_error_of(j).find("qkv_bias") != std::string::npos);
  CHECK(qwen2_error_of(j).find("q2/config.json") != std::string::npos);
  j = qwen2_moe_json();
  j["decoder_sparse_step"] = 2;
  CHECK(qwen2_error_of(j).find("decoder_sparse_step") != std::string::npos);
  j = qwen2_moe_json();
  j["shared_expert_intermediate_size"] = -1;
  CHECK(qwen2_error_of(j).find("shared_expert_intermediate_size") != std::string::npos);
  j = qwen2_json();
  j["model_type"] = "qwen3";
  CHECK(qwen2_error_of(j).find("model_type \"qwen3\"") != std::string::npos);
  // A shared expert has no place in a Mixtral or a Qwen3-MoE.
  btx::MoEConfig shared{.num_experts = 3, .shared_expert_size = 8, .load_balance_alpha = 0.01};
  for (const char* type : {"llama", "qwen3"}) {
    const nlohmann::json small = {{"model_type", type},       {"hidden_size", 16},
                                  {"intermediate_size", 24},  {"num_hidden_layers", 1},
                                  {"num_attention_heads", 2}, {"head_dim", 8},
                                  {"vocab_size", 32}};
    const auto& family = *btx::families().for_model_type(type);
    auto spec = family.read_config(small, "x");
    spec.moe = shared;
    CHECK_THROWS_WITH_AS(family.config_json(spec, "float32"), doctest::Contains("shared expert"),
                         std::invalid_argument);
  }
}
