// SPDX-License-Identifier: MIT
// Hugging Face config.json <-> btx::LlamaConfig (+ Mixtral's MoE fields). Reading refuses,
// naming the field, anything btx's model cannot represent, rather than loading a model
// that silently computes something else.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>

#include <btx/io/safetensors_header.hpp>
#include <btx/models/llama_config.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace hf {

// Mixtral's MoE fields (kept apart from btx's MoE module so config I/O stands alone).
// The `torch_dtype` string transformers writes for a weight dtype ("float32", ...).
inline std::string dtype_name(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32:
      return "float32";
    case torch::kBFloat16:
      return "bfloat16";
    case torch::kFloat16:
      return "float16";
    case torch::kFloat64:
      return "float64";
    default:
      throw std::invalid_argument(std::string("no Hugging Face dtype name for weights of dtype ") +
                                  c10::toString(t));
  }
}

struct MoEConfig {
  int64_t num_local_experts = 8;       // experts per layer E
  int64_t num_experts_per_tok = 2;     // top-k
  double router_aux_loss_coef = 0.02;  // load-balancing loss weight
};

struct HFConfig {
  LlamaConfig llama;
  std::optional<MoEConfig> moe;   // set for MixtralForCausalLM
  std::string dtype = "float32";  // torch_dtype / dtype: the checkpoint's storage dtype
};

namespace detail {

inline std::runtime_error config_error(const std::string& where, const std::string& what) {
  return std::runtime_error(where + ": " + what);
}

}  // namespace detail

namespace detail {
inline HFConfig parse_config(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object()) throw detail::config_error(where, "not a JSON object");
  std::string model_type = j.value("model_type", "");
  if (model_type.empty() && j.contains("architectures") && j["architectures"].is_array() &&
      !j["architectures"].empty()) {
    const auto arch = j["architectures"][0].get<std::string>();
    model_type = arch == "MixtralForCausalLM" ? "mixtral"
                 : arch == "LlamaForCausalLM" ? "llama"
                                              : arch;
  }
  if (model_type != "llama" && model_type != "mixtral") {
    throw detail::config_error(
        where, "model_type \"" + model_type + "\" is not supported (btx reads llama and mixtral)");
  }
  const bool mixtral = model_type == "mixtral";
  const auto required_int = [&](const char* key) -> int64_t {
    if (!j.contains(key) || !j[key].is_number_integer()) {
      throw detail::config_error(where, std::string("required integer field \"") + key +
                                            "\" is missing or not an integer");
    }
    return j[key].get<int64_t>();
  };
  const auto optional_int = [&](const char* key, int64_t fallback) -> int64_t {
    if (!j.contains(key) || j[key].is_null()) return fallback;
    if (!j[key].is_number_integer()) {
      throw detail::config_error(where, std::string("field \"") + key + "\" is not an integer");
    }
    return j[key].get<int64_t>();
  };
  const auto optional_num = [&](const char* key, double fallback) -> double {
    if (!j.contains(key) || j[key].is_null()) return fallback;
    if (!j[key].is_number()) {
      throw detail::config_error(where, std::string("field \"") + key + "\" is not a number");
    }
    return j[key].get<double>();
  };
  const auto refuse_true = [&](const char* key) {
    if (j.contains(key) && j[key].is_boolean() && j[key].get<bool>()) {
      throw detail::config_error(
          where, std::string("\"") + key + "\": true is not supported (btx layers have no bias)");
    }
  };

  HFConfig out;
  auto& c = out.llama;
  c.hidden_size = required_int("hidden_size");
  c.intermediate_size = required_int("intermediate_size");
  c.num_hidden_layers = required_int("num_hidden_layers");
  c.num_attention_heads = required_int("num_attention_heads");
  c.vocab_size = required_int("vocab_size");
  c.num_key_value_heads = optional_int("num_key_value_heads", c.num_attention_heads);
  if (j.contains("head_dim") && !j["head_dim"].is_null()) c.head_dim = optional_int("head_dim", 0);
  // transformers' defaults where a key is absent.
  c.rms_norm_eps = optional_num("rms_norm_eps", mixtral ? 1e-5 : 1e-6);
  c.max_position_embeddings = optional_int("max_position_embeddings", mixtral ? 131072 : 2048);
  c.initializer_range = optional_num("initializer_range", 0.02);
  c.tie_word_embeddings = j.value("tie_word_embeddings", false);
  c.rope_theta = optional_num("rope_theta", mixtral ? 1e6 : 10000.0);
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (!j.contains(key) || j[key].is_null()) continue;
    const auto& rope = j[key];
    const std::string type = rope.is_object()
                                 ? rope.value("rope_type", rope.value("type", "default"))
                                 : std::string("?");
    if (type != "default") {
      throw detail::config_error(where, std::string("\"") + key + "\" with rope_type \"" + type +
                                            "\" is not supported (btx implements default RoPE)");
    }
    if (rope.contains("rope_theta")) c.rope_theta = rope["rope_theta"].get<double>();
  }
  refuse_true("attention_bias");
  refuse_true("mlp_bias");
  const std::string act = j.value("hidden_act", "silu");
  if (act != "silu") {
    throw detail::config_error(where,
                               "\"hidden_act\": \"" + act + "\" is not supported (silu only)");
  }
  if (j.contains("torch_dtype") && j["torch_dtype"].is_string())
    out.dtype = j["torch_dtype"].get<std::string>();
  if (j.contains("dtype") && j["dtype"].is_string()) out.dtype = j["dtype"].get<std::string>();
  if (mixtral) {
    MoEConfig moe;
    moe.num_local_experts = required_int("num_local_experts");
    moe.num_experts_per_tok = required_int("num_experts_per_tok");
    moe.router_aux_loss_coef = optional_num("router_aux_loss_coef", 0.001);
    if (moe.num_experts_per_tok < 1 || moe.num_experts_per_tok > moe.num_local_experts) {
      throw detail::config_error(where,
                                 "\"num_experts_per_tok\" must be in [1, num_local_experts]");
    }
    const int64_t window = optional_int("sliding_window", c.max_position_embeddings);
    if (window < c.max_position_embeddings) {
      throw detail::config_error(where, "\"sliding_window\": " + std::to_string(window) +
                                            " is not supported (btx attends to the full context)");
    }
    out.moe = moe;
  }
  try {
    c.validate();
  } catch (const std::invalid_argument& e) {
    throw detail::config_error(where, e.what());
  }
  return out;
}
}  // namespace detail

// Parses a LlamaForCausalLM or MixtralForCausalLM config; `where` names the source.
// Throws std::runtime_error naming `where` and the offending field.
inline HFConfig config_from_json(const nlohmann::json& j,
                                 const std::string& where = "config.json") {
  try {
    return detail::parse_config(j, where);
  } catch (const nlohmann::json::exception& e) {
    throw detail::config_error(where,
                               std::string("a field has the wrong JSON type (") + e.what() + ")");
  }
}

inline HFConfig read_config_json(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) throw std::runtime_error("cannot read " + file.string());
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return config_from_json(io::detail::parse_json_strict(text, file.string()), file.string());
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

// A MixtralForCausalLM config.json (classic per-expert layout on disk).
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
