// SPDX-License-Identifier: MIT
// Hugging Face config.json <-> DecoderConfig for Qwen2ForCausalLM (Qwen2, Qwen2.5) and its
// MoE form Qwen2MoeForCausalLM: biases on q, k and v (Qwen2-MoE's `qkv_bias` must be
// true), none on o; head_dim hidden/heads unless given; a sliding window on the layers
// `layer_types` names, else (when `use_sliding_window`) on layers >= max_window_layers
// (Qwen2) or on even layers < max_window_layers (Qwen2-MoE). Qwen2-MoE adds an always-on
// shared expert gated by sigmoid(shared_expert_gate x), and routes top-k over the softmax,
// renormalised only when `norm_topk_prob`. Reading refuses, naming the field, what btx
// cannot represent.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <stdexcept>
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

struct Qwen2Config {
  DecoderConfig decoder;          // the dense model's (intermediate_size: the dense FFN's)
  std::optional<MoEConfig> moe;   // set for Qwen2MoeForCausalLM (always with a shared expert)
  std::string dtype = "float32";  // the checkpoint's storage dtype
};

namespace detail {

// Which layers slide: `layer_types` when given, else transformers' default rule for the
// architecture, applied when use_sliding_window.
inline std::vector<bool> qwen2_sliding_layers(const ConfigFields& f, int64_t layers, bool moe) {
  if (auto given = read_layer_types(f, layers)) return *given;
  std::vector<bool> sliding(size_t(layers), false);
  const int64_t bound = f.optional_int("max_window_layers", 28);
  for (int64_t i = 0; i < layers; ++i) {
    sliding[size_t(i)] = moe ? (i % 2 == 0 && i < bound) : i >= bound;
  }
  return sliding;
}

// The shared MoE keys, plus Qwen2-MoE's shared expert (transformers' default width 5632).
inline MoEConfig parse_qwen2_moe_fields(const ConfigFields& f) {
  MoEConfig m = read_moe_fields(f);
  m.shared_expert_size = f.optional_int("shared_expert_intermediate_size", 5632);
  if (*m.shared_expert_size < 0)
    throw config_error(f.where(), "\"shared_expert_intermediate_size\" must be >= 0");
  return m;
}

inline Qwen2Config parse_qwen2_config(const nlohmann::json& j, const std::string& where) {
  const ConfigFields f(j, where);
  const bool moe = read_family_model_type(j, where, "Qwen2", "qwen2", "qwen2_moe");
  Qwen2Config out;
  auto& c = out.decoder;
  c = read_decoder_fields(
      f, {.rms_norm_eps = 1e-6, .rope_theta = 10000.0, .max_position_embeddings = 32768});
  // Qwen2 always has q/k/v biases; Qwen2-MoE names them, and btx keeps the family's dense
  // and MoE forms one shape, so a bias-free Qwen2-MoE is refused.
  if (moe && !f.optional_bool("qkv_bias", true)) {
    throw config_error(where,
                       "\"qkv_bias\": false is not supported (Qwen2's q, k and v have biases)");
  }
  c.qkv_bias = true;
  c.o_bias = false;
  // Qwen2 leaves sliding_window null when unused; Qwen2-MoE writes 0.
  const bool windowed = f.optional_bool("use_sliding_window", false) &&
                        !(j.contains("sliding_window") && j["sliding_window"].is_null());
  if (windowed) {
    c.sliding_window = f.optional_int("sliding_window", 4096);
    c.sliding_layers = qwen2_sliding_layers(f, c.num_hidden_layers, moe);
  }
  out.dtype = f.dtype();
  if (moe) out.moe = parse_qwen2_moe_fields(f);
  validate_decoder(c, where);
  return out;
}

// The window fields both architectures write: every layer's type explicitly.
inline void write_qwen2_windows(const DecoderConfig& c, nlohmann::ordered_json& j, bool moe) {
  const bool windowed = c.sliding_window > 0;
  j["use_sliding_window"] = windowed;
  j["sliding_window"] = windowed ? nlohmann::ordered_json(c.sliding_window)
                                 : (moe ? nlohmann::ordered_json(0) : nlohmann::ordered_json());
  j["max_window_layers"] = c.num_hidden_layers;
  j["layer_types"] = layer_types_json(c);
}

}  // namespace detail

inline Qwen2Config qwen2_config_from_json(const nlohmann::json& j,
                                          const std::string& where = "config.json") {
  return parse_config_json(detail::parse_qwen2_config, j, where);
}

// A Qwen2ForCausalLM config.json: `c` must have q/k/v biases and no o bias nor q/k norms.
inline nlohmann::ordered_json qwen2_config_json(const DecoderConfig& c,
                                                const std::string& dtype = "float32") {
  if (!c.qkv_bias || c.o_bias || c.qk_norm) {
    throw std::invalid_argument(
        "btx: Qwen2ForCausalLM has biases on q, k and v, none on o, and no q/k norms");
  }
  refuse_layer_variants(c, "Qwen2ForCausalLM");
  auto j = decoder_config_json(c, "Qwen2ForCausalLM", "qwen2", dtype);
  detail::write_qwen2_windows(c, j, /*moe=*/false);
  return j;
}

// A Qwen2MoeForCausalLM config.json: `c` is the dense model's config, `moe` the experts'
// (expert_size: moe_intermediate_size, 0 meaning the dense F; the shared
// expert's F, 0 when unset: the architecture always has the slot).
inline nlohmann::ordered_json qwen2_moe_config_json(const DecoderConfig& c, const MoEConfig& moe,
                                                    const std::string& dtype = "float32") {
  if (!c.qkv_bias || c.o_bias || c.qk_norm) {
    throw std::invalid_argument(
        "btx: Qwen2MoeForCausalLM has biases on q, k and v, none on o, and no q/k norms");
  }
  refuse_layer_variants(c, "Qwen2MoeForCausalLM");
  if (moe.shared_expert_size.value_or(0) > 0 && !moe.shared_expert_gated) {
    throw std::invalid_argument(
        "btx: Qwen2MoeForCausalLM gates its shared expert (sigmoid(shared_expert_gate x)); this "
        "model's is ungated");
  }
  auto j = decoder_config_json(c, "Qwen2MoeForCausalLM", "qwen2_moe", dtype);
  j["qkv_bias"] = true;
  detail::write_qwen2_windows(c, j, /*moe=*/true);
  write_moe_fields(j, c, moe);
  j["shared_expert_intermediate_size"] = moe.shared_expert_size.value_or(0);
  return j;
}

}  // namespace hf
BTX_NAMESPACE_END
}  // namespace btx
