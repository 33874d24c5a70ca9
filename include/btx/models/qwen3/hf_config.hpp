// SPDX-License-Identifier: MIT
// Hugging Face config.json <-> DecoderConfig for Qwen3ForCausalLM and its MoE form
// Qwen3MoeForCausalLM: per-head q/k RMSNorm always, `head_dim` explicit (transformers'
// Qwen3 default is 128, not hidden/heads), `attention_bias` on q, k, v and o, and a
// sliding window on the layers `layer_types` (or `max_window_layers`) names when
// `use_sliding_window`. Reading refuses, naming the field, what btx cannot represent.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <btx/core/model_spec.hpp>
#include <btx/hf/config_json.hpp>
#include <btx/models/common/decoder_config.hpp>
#include <btx/models/common/hf_decoder_config.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace hf {

struct Qwen3Config {
  DecoderConfig decoder;          // the dense model's (intermediate_size: the dense FFN's)
  std::optional<MoEConfig> moe;   // set for Qwen3MoeForCausalLM
  std::string dtype = "float32";  // the checkpoint's storage dtype
};

namespace detail {

// Which layers slide: `layer_types` when given, else layers >= max_window_layers (Qwen3);
// every layer (Qwen3-MoE).
inline std::vector<bool> qwen3_sliding_layers(const ConfigFields& f, int64_t layers, bool moe) {
  if (auto given = read_layer_types(f, layers)) return *given;
  std::vector<bool> sliding(size_t(layers), moe);
  if (!moe) {
    const int64_t first = f.optional_int("max_window_layers", 28);
    for (int64_t i = 0; i < layers; ++i) sliding[size_t(i)] = i >= first;
  }
  return sliding;
}

inline Qwen3Config parse_qwen3_config(const nlohmann::json& j, const std::string& where) {
  const ConfigFields f(j, where);
  const bool moe = read_family_model_type(j, where, "Qwen3", "qwen3", "qwen3_moe");
  Qwen3Config out;
  auto& c = out.decoder;
  c = read_decoder_fields(f, {.rms_norm_eps = 1e-6,
                              .rope_theta = 10000.0,
                              .max_position_embeddings = 32768,
                              .head_dim = moe ? std::nullopt : std::optional<int64_t>(128)});
  c.qk_norm = true;
  c.qkv_bias = c.o_bias = f.optional_bool("attention_bias", false);
  if (f.optional_bool("use_sliding_window", false)) {
    c.sliding_window = f.optional_int("sliding_window", 4096);
    c.sliding_layers = qwen3_sliding_layers(f, c.num_hidden_layers, moe);
  }
  out.dtype = f.dtype();
  if (moe) out.moe = read_moe_fields(f);
  validate_decoder(c, where);
  return out;
}

}  // namespace detail

inline Qwen3Config qwen3_config_from_json(const nlohmann::json& j,
                                          const std::string& where = "config.json") {
  return parse_config_json(detail::parse_qwen3_config, j, where);
}

// A Qwen3ForCausalLM config.json; c.qk_norm must be set (Qwen3 always normalises q and k).
inline nlohmann::ordered_json qwen3_config_json(const DecoderConfig& c,
                                                const std::string& dtype = "float32") {
  if (!c.qk_norm || c.qkv_bias != c.o_bias) {
    throw std::invalid_argument(
        "btx: a Qwen3 config needs q/k norms and one bias setting for q, k, v and o");
  }
  refuse_layer_variants(c, "Qwen3ForCausalLM");
  auto j = decoder_config_json(c, "Qwen3ForCausalLM", "qwen3", dtype);
  j["attention_bias"] = c.qkv_bias;
  j["use_sliding_window"] = c.sliding_window > 0;
  j["sliding_window"] = c.sliding_window > 0 ? nlohmann::ordered_json(c.sliding_window) : nullptr;
  j["max_window_layers"] = c.num_hidden_layers;
  j["layer_types"] = layer_types_json(c);
  return j;
}

// A Qwen3MoeForCausalLM config.json: `c` is the dense model's config, `moe` the experts'
// (expert_size: moe_intermediate_size; 0 means the dense F). Routing: top-k
// over the softmax, renormalised when moe.renormalizes_top_k(), as btx's top-k router.
inline nlohmann::ordered_json qwen3_moe_config_json(const DecoderConfig& c, const MoEConfig& moe,
                                                    const std::string& dtype = "float32") {
  if (moe.shared_expert_size) {
    throw std::invalid_argument(
        "btx: Qwen3MoeForCausalLM has no shared expert (Qwen2-MoE has one); merge without "
        "shared_experts");
  }
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    if (c.window_of_layer(i) != c.window_of_layer(0)) {
      throw std::invalid_argument(
          "btx: Qwen3-MoE applies a sliding window to every layer or none; layer " +
          std::to_string(i) + " differs from layer 0");
    }
  }
  auto j = qwen3_config_json(c, dtype);
  j.erase("layer_types");
  j.erase("max_window_layers");
  j["architectures"] = {"Qwen3MoeForCausalLM"};
  j["model_type"] = "qwen3_moe";
  write_moe_fields(j, c, moe);
  return j;
}

}  // namespace hf
BTX_NAMESPACE_END
}  // namespace btx
