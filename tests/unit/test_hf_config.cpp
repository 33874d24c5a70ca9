// SPDX-License-Identifier: MIT
// config.json: reading transformers' Llama/Mixtral configs, refusing what btx cannot
// represent (naming the field), and write -> read round trips.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <btx/models/llama/hf_config.hpp>
#include <btx/models/llama/hf_names.hpp>

#include "../scratch.hpp"
#include "../test_support.hpp"

using btx::test::has;

namespace {

// What transformers 5.23's LlamaForCausalLM.save_pretrained writes for the tiny model.
const char* kLlamaJson = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 1, "dtype": "float32", "eos_token_id": 2, "head_dim": 8, "hidden_act": "silu",
  "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 64,
  "max_position_embeddings": 128, "mlp_bias": false, "model_type": "llama",
  "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
  "pad_token_id": null, "pretraining_tp": 1, "rms_norm_eps": 1e-06,
  "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
  "tie_word_embeddings": false, "transformers_version": "5.23.0", "use_cache": true,
  "vocab_size": 64})";

nlohmann::json llama_json() {
  return nlohmann::json::parse(kLlamaJson);
}

std::string config_error(const nlohmann::json& j) {
  try {
    btx::hf::config_from_json(j, "test/config.json");
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("hf config: reads a transformers 5 Llama config with rope_parameters") {
  auto c = btx::hf::config_from_json(llama_json());
  CHECK(c.decoder.hidden_size == 32);
  CHECK(c.decoder.num_key_value_heads == 2);
  CHECK(c.decoder.head_dim.value() == 8);
  CHECK(c.decoder.rope_theta == 500000.0);
  CHECK(c.decoder.rms_norm_eps == 1e-6);
  CHECK(c.decoder.max_position_embeddings == 128);
  CHECK_FALSE(c.moe.has_value());
  CHECK(c.dtype == "float32");
}

TEST_CASE("hf config: reads transformers 4 rope_theta and torch_dtype") {
  auto j = llama_json();
  j.erase("rope_parameters");
  j.erase("dtype");
  j["rope_theta"] = 1234.0;
  j["torch_dtype"] = "bfloat16";
  j["rope_scaling"] = nullptr;
  auto c = btx::hf::config_from_json(j);
  CHECK(c.decoder.rope_theta == 1234.0);
  CHECK(c.dtype == "bfloat16");
}

TEST_CASE("hf config: refuses what btx cannot represent, naming the field") {
  auto j = llama_json();
  j["rope_parameters"]["rope_type"] = "llama3";
  CHECK(has(config_error(j), "\"rope_parameters\" with rope_type \"llama3\""));
  j = llama_json();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  CHECK(has(config_error(j), "\"rope_scaling\""));
  j = llama_json();
  j["mlp_bias"] = true;
  CHECK(has(config_error(j), "\"mlp_bias\""));
  j = llama_json();
  j["hidden_act"] = "gelu";
  CHECK(has(config_error(j), "\"hidden_act\": \"gelu\""));
  j = llama_json();
  j.erase("hidden_size");
  CHECK(has(config_error(j), "\"hidden_size\""));
  CHECK(has(config_error(j), "test/config.json"));
  j = llama_json();
  j["model_type"] = "gpt2";
  CHECK(has(config_error(j), "model_type \"gpt2\""));
  j = llama_json();
  j["num_key_value_heads"] = 3;
  CHECK(has(config_error(j), "num_key_value_heads=3"));
}

TEST_CASE("hf config: reads a Mixtral config with its MoE fields") {
  auto j = llama_json();
  j["architectures"] = {"MixtralForCausalLM"};
  j["model_type"] = "mixtral";
  j["num_local_experts"] = 4;
  j["num_experts_per_tok"] = 2;
  j["router_aux_loss_coef"] = 0.01;
  j["sliding_window"] = nullptr;
  auto c = btx::hf::config_from_json(j);
  REQUIRE(c.moe.has_value());
  CHECK(c.moe->num_experts == 4);
  CHECK(btx::active_experts(*c.moe) == 2);
  CHECK(c.moe->load_balance_alpha == 0.01);
  CHECK(c.moe->load_balance_form == btx::LoadBalanceForm::switch_);  // Mixtral's
  CHECK(c.decoder.sliding_window == 0);
  j["sliding_window"] = 16;  // every layer's window, as transformers' Mixtral
  CHECK(btx::hf::config_from_json(j).decoder.window_of_layer(1) == 16);
  CHECK(btx::hf::mixtral_config_json(btx::hf::config_from_json(j).decoder,
                                     *c.moe)["sliding_window"] == 16);
  j["sliding_window"] = -1;
  CHECK(has(config_error(j), "sliding_window"));
  j["sliding_window"] = nullptr;
  j.erase("num_local_experts");
  CHECK(has(config_error(j), "\"num_local_experts\""));
}

TEST_CASE("hf config: Llama's attention_bias puts a bias on q, k, v and o") {
  auto j = llama_json();
  j["attention_bias"] = true;
  const auto c = btx::hf::config_from_json(j).decoder;
  CHECK(c.qkv_bias);
  CHECK(c.o_bias);
  CHECK(btx::hf::llama_config_json(c)["attention_bias"] == true);
}

TEST_CASE(
    "hf config: a windowed Llama is written as a Mistral, and what a type cannot carry is "
    "refused") {
  auto c = btx::test::tiny_config();
  c.sliding_window = 5;
  const auto j = btx::hf::llama_config_json(c);
  CHECK(j["model_type"] == "mistral");
  CHECK(j["sliding_window"] == 5);
  const auto back = btx::hf::config_from_json(j).decoder;
  CHECK(back.window_of_layer(0) == 5);
  CHECK(back.window_of_layer(1) == 5);
  auto mistral = nlohmann::json::parse(j.dump());
  mistral.erase("sliding_window");  // transformers' Mistral default
  CHECK(btx::hf::config_from_json(mistral).decoder.sliding_window == 4096);
  c.sliding_layers = {true, false};
  CHECK_THROWS_WITH_AS(btx::hf::llama_config_json(c), doctest::Contains("every layer"),
                       std::invalid_argument);
  auto biased = btx::test::tiny_config();
  biased.qkv_bias = biased.o_bias = true;
  CHECK_THROWS_WITH_AS(btx::hf::mixtral_config_json(biased, btx::MoEConfig{}),
                       doctest::Contains("no attention biases"), std::invalid_argument);
  auto normed = btx::test::tiny_config();
  normed.qk_norm = true;
  CHECK_THROWS_WITH_AS(btx::hf::llama_config_json(normed), doctest::Contains("q/k norms"),
                       std::invalid_argument);
}

TEST_CASE("hf config: Llama and Mixtral configs round-trip through JSON") {
  auto c = btx::test::tiny_config();
  c.rope_theta = 77777.0;
  c.tie_word_embeddings = true;
  auto back = btx::hf::config_from_json(btx::hf::llama_config_json(c, "bfloat16"));
  CHECK(back.decoder.hidden_size == c.hidden_size);
  CHECK(back.decoder.num_key_value_heads == c.num_key_value_heads);
  CHECK(back.decoder.rope_theta == c.rope_theta);
  CHECK(back.decoder.tie_word_embeddings);
  CHECK(back.dtype == "bfloat16");
  btx::MoEConfig moe{.num_experts = 4, .load_balance_alpha = 0.05};
  auto mj = btx::hf::mixtral_config_json(c, moe);
  CHECK(mj["architectures"][0] == "MixtralForCausalLM");
  CHECK(mj["sliding_window"].is_null());
  CHECK(mj["output_router_logits"] == false);
  auto m = btx::hf::config_from_json(mj);
  REQUIRE(m.moe.has_value());
  CHECK(m.moe->num_experts == 4);
  CHECK(m.moe->load_balance_alpha == 0.05);
}

TEST_CASE("hf config: read_config_json rejects duplicate keys naming the file") {
  const auto dir = btx::test::scratch_dir("hf-config-dup");
  std::ofstream(dir / "dup.json") << R"({"hidden_size": 32, "hidden_size": 64})";
  CHECK_THROWS_WITH_AS(btx::hf::read_config_json(dir / "dup.json"),
                       doctest::Contains("duplicate key \"hidden_size\""), std::runtime_error);
}

TEST_CASE("hf names: Mixtral names round-trip and dense names are unchanged") {
  using btx::hf::btx_to_hf_names;
  using btx::hf::hf_to_btx_slot;
  CHECK(btx_to_hf_names("model.layers.3.self_attn.q_proj.weight", 4) ==
        std::vector<std::string>{"model.layers.3.self_attn.q_proj.weight"});
  CHECK(btx_to_hf_names("model.layers.1.mlp.gate.weight", 4) ==
        std::vector<std::string>{"model.layers.1.block_sparse_moe.gate.weight"});
  auto w2 = btx_to_hf_names("model.layers.1.mlp.experts.down_proj", 3);
  CHECK(w2 == std::vector<std::string>{"model.layers.1.block_sparse_moe.experts.0.w2.weight",
                                       "model.layers.1.block_sparse_moe.experts.1.w2.weight",
                                       "model.layers.1.block_sparse_moe.experts.2.w2.weight"});
  for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
    const std::string name = std::string("model.layers.12.mlp.experts.") + proj;
    const auto hf = btx_to_hf_names(name, 5);
    for (int64_t j = 0; j < 5; ++j) {
      CHECK(hf_to_btx_slot(hf[size_t(j)]) == btx::hf::BtxSlot{name, j});
    }
  }
  CHECK(btx_to_hf_names("model.layers.12.mlp.experts.gate_proj", 1)[0] ==
        "model.layers.12.block_sparse_moe.experts.0.w1.weight");
  CHECK(btx_to_hf_names("model.layers.12.mlp.experts.up_proj", 1)[0] ==
        "model.layers.12.block_sparse_moe.experts.0.w3.weight");
  CHECK(hf_to_btx_slot("model.layers.0.block_sparse_moe.gate.weight") ==
        btx::hf::BtxSlot{"model.layers.0.mlp.gate.weight", std::nullopt});
  CHECK(hf_to_btx_slot("lm_head.weight") == btx::hf::BtxSlot{"lm_head.weight", std::nullopt});
}

TEST_CASE("hf config: wrongly typed fields are reported as config errors, not JSON crashes") {
  auto j = llama_json();
  j["model_type"] = 7;
  CHECK(has(config_error(j), "test/config.json"));
  j = llama_json();
  j["rope_parameters"]["rope_theta"] = "big";
  CHECK(has(config_error(j), "wrong JSON type"));
  j = llama_json();
  j["hidden_size"] = 32.5;
  CHECK(has(config_error(j), "\"hidden_size\""));
}
