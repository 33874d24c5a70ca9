// SPDX-License-Identifier: MIT
// Hugging Face config.json <-> btx::LlamaConfig, for LlamaForCausalLM and its MoE form
// MixtralForCausalLM. Reading refuses, naming the field, anything btx's Llama cannot
// represent, rather than loading a model that silently computes something else.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>

#include <btx/core/model_spec.hpp>
#include <btx/hf/config_json.hpp>
#include <btx/models/llama/config.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace hf {

using btx::MoEConfig;

struct HFConfig {
  LlamaConfig llama;
  std::optional<MoEConfig> moe;   // set for MixtralForCausalLM
  std::string dtype = "float32";  // torch_dtype / dtype: the checkpoint's storage dtype
};

namespace detail {
inline HFConfig parse_llama_config(const nlohmann::json& j, const std::string& where) {
  const ConfigFields f(j, where);
  const std::string model_type = declared_model_type(j, where);
  if (model_type != "llama" && model_type != "mixtral") {
    throw config_error(where, "model_type \"" + model_type +
                                  "\" is not supported (the Llama family reads llama and mixtral)");
  }
  const bool mixtral = model_type == "mixtral";
  HFConfig out;
  auto& c = out.llama;
  c.hidden_size = f.required_int("hidden_size");
  c.intermediate_size = f.required_int("intermediate_size");
  c.num_hidden_layers = f.required_int("num_hidden_layers");
  c.num_attention_heads = f.required_int("num_attention_heads");
  c.vocab_size = f.required_int("vocab_size");
  c.num_key_value_heads = f.optional_int("num_key_value_heads", c.num_attention_heads);
  if (f.has("head_dim")) c.head_dim = f.optional_int("head_dim", 0);
  // transformers' defaults where a key is absent.
  c.rms_norm_eps = f.optional_num("rms_norm_eps", mixtral ? 1e-5 : 1e-6);
  c.max_position_embeddings = f.optional_int("max_position_embeddings", mixtral ? 131072 : 2048);
  c.initializer_range = f.optional_num("initializer_range", 0.02);
  c.tie_word_embeddings = j.value("tie_word_embeddings", false);
  c.rope_theta = f.optional_num("rope_theta", mixtral ? 1e6 : 10000.0);
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (!f.has(key)) continue;
    const auto& rope = j[key];
    const std::string type = rope.is_object()
                                 ? rope.value("rope_type", rope.value("type", "default"))
                                 : std::string("?");
    if (type != "default") {
      throw config_error(where, std::string("\"") + key + "\" with rope_type \"" + type +
                                    "\" is not supported (btx implements default RoPE)");
    }
    if (rope.contains("rope_theta")) c.rope_theta = rope["rope_theta"].get<double>();
  }
  f.refuse_true("attention_bias", "btx layers have no bias");
  f.refuse_true("mlp_bias", "btx layers have no bias");
  const std::string act = j.value("hidden_act", "silu");
  if (act != "silu") {
    throw config_error(where, "\"hidden_act\": \"" + act + "\" is not supported (silu only)");
  }
  out.dtype = f.dtype();
  if (mixtral) {
    MoEConfig moe;
    moe.num_local_experts = f.required_int("num_local_experts");
    moe.num_experts_per_tok = f.required_int("num_experts_per_tok");
    moe.router_aux_loss_coef = f.optional_num("router_aux_loss_coef", 0.001);
    if (moe.num_experts_per_tok < 1 || moe.num_experts_per_tok > moe.num_local_experts) {
      throw config_error(where, "\"num_experts_per_tok\" must be in [1, num_local_experts]");
    }
    const int64_t window = f.optional_int("sliding_window", c.max_position_embeddings);
    if (window < c.max_position_embeddings) {
      throw config_error(where, "\"sliding_window\": " + std::to_string(window) +
                                    " is not supported (btx attends to the full context)");
    }
    out.moe = moe;
  }
  try {
    c.validate();
  } catch (const std::invalid_argument& e) {
    throw config_error(where, e.what());
  }
  return out;
}
}  // namespace detail

// Parses a LlamaForCausalLM or MixtralForCausalLM config; `where` names the source.
// Throws std::runtime_error naming `where` and the offending field.
inline HFConfig config_from_json(const nlohmann::json& j,
                                 const std::string& where = "config.json") {
  try {
    return detail::parse_llama_config(j, where);
  } catch (const nlohmann::json::exception& e) {
    throw detail::config_error(where,
                               std::string("a field has the wrong JSON type (") + e.what() + ")");
  }
}

inline HFConfig read_config_json(const std::filesystem::path& file) {
  return config_from_json(read_json_file(file), file.string());
}

// A LlamaForCausalLM config.json that transformers 5 loads; `dtype` is a torch dtype name
// ("float32", "bfloat16", "float16").
inline nlohmann::ordered_json llama_config_json(const LlamaConfig& c,
                                                const std::string& dtype = "float32") {
  nlohmann::ordered_json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["dtype"] = dtype;
  j["head_dim"] = c.resolved_head_dim();
  j["hidden_act"] = "silu";
  j["hidden_size"] = c.hidden_size;
  j["initializer_range"] = c.initializer_range;
  j["intermediate_size"] = c.intermediate_size;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["mlp_bias"] = false;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_parameters"] = {{"rope_theta", c.rope_theta}, {"rope_type", "default"}};
  j["rope_theta"] = c.rope_theta;  // for transformers 4 readers
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["use_cache"] = true;
  j["vocab_size"] = c.vocab_size;
  return j;
}

// A MixtralForCausalLM config.json (classic per-expert layout on disk). `c` is the MoE
// model's own config: its intermediate_size is each expert's F.
inline nlohmann::ordered_json mixtral_config_json(const LlamaConfig& c, const MoEConfig& moe,
                                                  const std::string& dtype = "float32") {
  auto j = llama_config_json(c, dtype);
  j.erase("attention_bias");
  j.erase("mlp_bias");
  j["architectures"] = {"MixtralForCausalLM"};
  j["model_type"] = "mixtral";
  j["num_local_experts"] = moe.num_local_experts;
  j["num_experts_per_tok"] = moe.num_experts_per_tok;
  j["router_aux_loss_coef"] = moe.router_aux_loss_coef;
  j["router_jitter_noise"] = 0.0;
  j["output_router_logits"] = false;
  j["sliding_window"] = nullptr;
  return j;
}

}  // namespace hf
BTX_NAMESPACE_END
}  // namespace btx
