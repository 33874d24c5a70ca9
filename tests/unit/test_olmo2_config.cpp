// SPDX-License-Identifier: MIT
// The OLMo family's config.json: OLMo2, OLMo3 and FlexOlmo configs read as the shared
// decoder's post-norm, full-width q/k norm layer with transformers' defaults where keys are
// absent; dense models round-trip as olmo2 (or olmo3 when some layer slides) and MoE ones as
// flex_olmo (intermediate_size: each expert's width); what btx cannot represent is refused
// naming the field.
#include <doctest/doctest.h>

#include <string>

#include <btx/models/auto.hpp>
#include <btx/models/olmo2/family.hpp>
#include <btx/models/registry.hpp>

namespace {

nlohmann::json olmo2_json() {
  return {{"architectures", {"Olmo2ForCausalLM"}},
          {"model_type", "olmo2"},
          {"hidden_size", 40},
          {"intermediate_size", 56},
          {"num_hidden_layers", 3},
          {"num_attention_heads", 5},
          {"num_key_value_heads", 1},
          {"head_dim", 12},
          {"vocab_size", 67},
          {"rope_parameters", {{"rope_theta", 1e6}, {"rope_type", "default"}}}};
}

nlohmann::json olmo3_json() {
  auto j = olmo2_json();
  j["architectures"] = {"Olmo3ForCausalLM"};
  j["model_type"] = "olmo3";
  j.erase("rope_parameters");
  j["sliding_window"] = 4;
  j["layer_types"] = {"sliding_attention", "full_attention", "sliding_attention"};
  return j;
}

nlohmann::json flex_olmo_json() {
  auto j = olmo2_json();
  j["architectures"] = {"FlexOlmoForCausalLM"};
  j["model_type"] = "flex_olmo";
  j["num_experts"] = 4;
  j["num_experts_per_tok"] = 2;
  return j;
}

std::string olmo_error_of(const nlohmann::json& j) {
  try {
    (void)btx::hf::olmo2_config_from_json(j, "o/config.json");
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("olmo2 config: reads post norms, full-width q/k norms and one attention bias") {
  const auto c = btx::hf::olmo2_config_from_json(olmo2_json()).decoder;
  CHECK(c.post_norms);
  CHECK((c.qk_norm && c.qk_norm_full_width));
  CHECK_FALSE((c.qkv_bias || c.o_bias));
  CHECK(c.resolved_head_dim() == 12);
  CHECK(c.rope_theta == 1e6);
  CHECK(c.window_of_layer(0) == 0);
  // transformers' Olmo2Config defaults.
  auto j = olmo2_json();
  j.erase("rope_parameters");
  const auto defaults = btx::hf::olmo2_config_from_json(j).decoder;
  CHECK(defaults.rms_norm_eps == 1e-5);
  CHECK(defaults.rope_theta == 10000.0);
  CHECK(defaults.max_position_embeddings == 2048);
  CHECK_FALSE(defaults.tie_word_embeddings);
  j["attention_bias"] = true;
  const auto biased = btx::hf::olmo2_config_from_json(j).decoder;
  CHECK((biased.qkv_bias && biased.o_bias));
}

TEST_CASE("olmo2 config: OLMo3 reads its sliding layers and one RoPE for both layer types") {
  const auto c = btx::hf::olmo2_config_from_json(olmo3_json()).decoder;
  CHECK(c.window_of_layer(0) == 4);
  CHECK(c.window_of_layer(1) == 0);
  CHECK(c.window_of_layer(2) == 4);
  CHECK(c.rope_theta == 500000.0);  // Olmo3Config's default_theta
  CHECK(c.post_norms);
  // transformers' default layer_types: every 4th layer full; default window 4096.
  auto j = olmo3_json();
  j.erase("layer_types");
  j.erase("sliding_window");
  j["num_hidden_layers"] = 5;
  const auto d = btx::hf::olmo2_config_from_json(j).decoder;
  CHECK(d.window_of_layer(0) == 4096);
  CHECK(d.window_of_layer(3) == 0);
  CHECK(d.window_of_layer(4) == 4096);
  // Nested rope_parameters, equal thetas.
  j = olmo3_json();
  j["rope_parameters"] = {{"full_attention", {{"rope_type", "default"}, {"rope_theta", 1e4}}},
                          {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 1e4}}}};
  CHECK(btx::hf::olmo2_config_from_json(j).decoder.rope_theta == 1e4);
}

TEST_CASE("olmo2 config: OLMo3 layer types with different RoPE are refused, naming the field") {
  auto j = olmo3_json();
  j["rope_parameters"] = {{"full_attention", {{"rope_type", "default"}, {"rope_theta", 1e4}}},
                          {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 5e5}}}};
  CHECK(olmo_error_of(j).find("rope_parameters") != std::string::npos);
  CHECK(olmo_error_of(j).find("o/config.json") != std::string::npos);
  // A top-level rope_theta reaches full_attention only (sliding keeps 500000) ...
  j = olmo3_json();
  j["rope_theta"] = 1e4;
  CHECK(olmo_error_of(j).find("rope_theta") != std::string::npos);
  // ... which is harmless when no layer slides.
  j["layer_types"] = {"full_attention", "full_attention", "full_attention"};
  CHECK(btx::hf::olmo2_config_from_json(j).decoder.rope_theta == 1e4);
  j = olmo3_json();
  j["rope_parameters"] = {{"rope_theta", 1e4}, {"rope_type", "default"}};
  CHECK(olmo_error_of(j).find("nested per layer type") != std::string::npos);
  j = olmo3_json();
  j["rope_parameters"] = {{"full_attention", {{"rope_type", "yarn"}, {"factor", 2.0}}}};
  CHECK(olmo_error_of(j).find("rope_parameters.full_attention") != std::string::npos);
  j = olmo3_json();
  j["sliding_window"] = nullptr;
  CHECK(olmo_error_of(j).find("sliding_window") != std::string::npos);
}

TEST_CASE("olmo2 config: FlexOlmo reads each expert's width from intermediate_size") {
  const auto hf = btx::hf::olmo2_config_from_json(flex_olmo_json());
  REQUIRE(hf.moe.has_value());
  CHECK(hf.moe->num_experts == 4);
  CHECK(btx::active_experts(*hf.moe) == 2);
  CHECK(hf.moe->expert_size == 56);
  CHECK_FALSE(hf.moe->renormalizes_top_k());  // norm_topk_prob's default
  CHECK(hf.moe->load_balance_alpha == 0.01);
  CHECK(hf.decoder.post_norms);
  auto j = flex_olmo_json();
  j.erase("rope_parameters");
  j["norm_topk_prob"] = true;
  const auto d = btx::hf::olmo2_config_from_json(j);
  CHECK(d.moe->renormalizes_top_k());
  CHECK(d.decoder.rms_norm_eps == 1e-6);
  CHECK(d.decoder.rope_theta == 500000.0);
  CHECK(d.decoder.max_position_embeddings == 4096);
  j.erase("num_experts");
  j["num_local_experts"] = 3;  // the attribute_map alias
  CHECK(btx::hf::olmo2_config_from_json(j).moe->num_experts == 3);
  j["num_experts_per_tok"] = 4;
  CHECK(olmo_error_of(j).find("num_experts_per_tok") != std::string::npos);
  // Its model routes so: a top-k router that does not renormalise.
  auto spec = btx::Olmo2Family::read_config(flex_olmo_json(), "o");
  spec.shape.num_hidden_layers = 1;
  const auto built = btx::make_model(spec);
  const auto gate = built.module().named_modules()["model.layers.0.mlp.gate"];
  const auto* topk = dynamic_cast<const btx::TopK*>(gate.get());
  REQUIRE(topk != nullptr);
  CHECK_FALSE(topk->renormalizes());
  CHECK(topk->k() == 2);
}

TEST_CASE("olmo2 config: dense models round-trip as olmo2 or olmo3, MoE ones as flex_olmo") {
  const auto& family = btx::families().get("olmo2");
  CHECK(btx::families().for_model_type("olmo3") == &family);
  CHECK(btx::families().for_model_type("flex_olmo") == &family);
  auto spec = family.read_config(olmo2_json(), "o");
  auto dense = family.config_json(spec, "bfloat16");
  CHECK(dense["model_type"] == "olmo2");
  CHECK(dense["architectures"] == nlohmann::json({"Olmo2ForCausalLM"}));
  CHECK(dense["attention_bias"] == false);
  CHECK(dense["pad_token_id"].is_null());  // class default 1 may lie outside the vocabulary
  CHECK_FALSE(dense.contains("layer_types"));
  auto again = btx::hf::olmo2_config_from_json(nlohmann::json::parse(dense.dump())).decoder;
  CHECK(again.rope_theta == 1e6);
  CHECK(again.resolved_head_dim() == 12);

  spec = family.read_config(olmo3_json(), "o");
  dense = family.config_json(spec, "float32");
  CHECK(dense["model_type"] == "olmo3");
  CHECK(dense["layer_types"] ==
        nlohmann::json({"sliding_attention", "full_attention", "sliding_attention"}));
  CHECK(dense["sliding_window"] == 4);
  CHECK(dense["rope_parameters"]["sliding_attention"]["rope_theta"] == 500000.0);
  CHECK(dense["rope_parameters"]["full_attention"]["rope_theta"] == 500000.0);
  again = btx::hf::olmo2_config_from_json(nlohmann::json::parse(dense.dump())).decoder;
  CHECK(again.window_of_layer(0) == 4);
  CHECK(again.window_of_layer(1) == 0);
  CHECK(again.rope_theta == 500000.0);

  auto j = olmo2_json();
  j["attention_bias"] = true;
  j["tie_word_embeddings"] = true;
  spec = family.read_config(j, "o");
  spec.moe = btx::MoEConfig{.num_experts = 5, .expert_size = 24, .load_balance_alpha = 0.02};
  const auto moe = family.config_json(spec, "float32");
  CHECK(moe["model_type"] == "flex_olmo");
  CHECK(moe["architectures"] == nlohmann::json({"FlexOlmoForCausalLM"}));
  CHECK(moe["num_experts"] == 5);
  CHECK(moe["num_experts_per_tok"] == 2);
  CHECK(moe["intermediate_size"] == 24);  // each expert's width
  CHECK_FALSE(moe.contains("moe_intermediate_size"));
  CHECK(moe["norm_topk_prob"] == true);
  CHECK(moe["router_aux_loss_coef"] == 0.02);
  CHECK(moe["attention_bias"] == true);
  CHECK(moe["tie_word_embeddings"] == true);
  const auto read = family.read_config(nlohmann::json::parse(moe.dump()), "o");
  REQUIRE(read.moe.has_value());
  CHECK(read.moe->num_experts == 5);
  CHECK(read.moe->expert_size == 24);
  CHECK(read.moe->renormalizes_top_k());
  CHECK(btx::active_experts(*read.moe) == 2);
  CHECK(read.shape.tie_word_embeddings);
}

TEST_CASE("olmo2 config: what FlexOlmo cannot carry is refused when writing, naming it") {
  const auto& family = btx::families().get("olmo2");
  // An OLMo3 with sliding layers has no FlexOlmo form.
  auto spec = family.read_config(olmo3_json(), "o");
  spec.moe = btx::MoEConfig{.num_experts = 3, .expert_size = 24};
  CHECK_THROWS_WITH_AS(family.config_json(spec, "float32"), doctest::Contains("sliding_window"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(family.config_json(spec, "float32"), doctest::Contains("flex_olmo"),
                       std::invalid_argument);
  // ... while an OLMo3 whose layers all attend fully does (as olmo2 when dense).
  auto full = olmo3_json();
  full["layer_types"] = {"full_attention", "full_attention", "full_attention"};
  spec = family.read_config(full, "o");
  CHECK(family.config_json(spec, "float32")["model_type"] == "olmo2");
  spec.moe = btx::MoEConfig{.num_experts = 3, .expert_size = 24};
  CHECK(family.config_json(spec, "float32")["model_type"] == "flex_olmo");
  spec.moe->shared_expert_size = 16;
  CHECK_THROWS_WITH_AS(family.config_json(spec, "float32"), doctest::Contains("shared expert"),
                       std::invalid_argument);
  // A layer OLMo2 does not have (pre-norm Llama) is refused by the writers.
  btx::DecoderConfig llama;
  CHECK_THROWS_AS(btx::hf::olmo2_config_json(llama), std::invalid_argument);
}

TEST_CASE("olmo2 config: other refusals name the field and the file") {
  auto j = olmo2_json();
  j["model_type"] = "olmo";
  CHECK(olmo_error_of(j).find("model_type \"olmo\"") != std::string::npos);
  j = olmo2_json();
  j["hidden_act"] = "gelu";
  CHECK(olmo_error_of(j).find("hidden_act") != std::string::npos);
  j = olmo2_json();
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 2.0}};
  CHECK(olmo_error_of(j).find("rope_parameters") != std::string::npos);
  j = olmo3_json();
  j["layer_types"] = {"full_attention"};
  CHECK(olmo_error_of(j).find("layer_types") != std::string::npos);
  j = olmo2_json();
  j["attention_bias"] = "yes";
  CHECK(olmo_error_of(j).find("attention_bias") != std::string::npos);
}

TEST_CASE("olmo2 names: FlexOlmo's experts map to per-expert tensors and back") {
  const auto names = btx::Olmo2Family::hf_names("model.layers.1.mlp.experts.up_proj", 3);
  REQUIRE(names.size() == 3);
  CHECK(names[2] == "model.layers.1.mlp.experts.2.up_proj.weight");
  CHECK(btx::Olmo2Family::hf_names("model.layers.0.post_feedforward_layernorm.weight", 3) ==
        std::vector<std::string>{"model.layers.0.post_feedforward_layernorm.weight"});
  const auto slot = btx::Olmo2Family::btx_slot("model.layers.4.mlp.experts.7.down_proj.weight");
  CHECK(slot.param == "model.layers.4.mlp.experts.down_proj");
  CHECK(slot.expert == 7);
}
