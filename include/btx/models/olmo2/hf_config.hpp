// SPDX-License-Identifier: MIT
// Hugging Face config.json <-> DecoderConfig for the OLMo family: dense Olmo2ForCausalLM,
// dense Olmo3ForCausalLM (OLMo2's layer with a sliding window on the layers `layer_types`
// names and RoPE given per layer type) and the MoE FlexOlmoForCausalLM. All three norm each
// branch's output before the residual add (no input norm), norm q and k over every head's
// features at once before RoPE, and put `attention_bias` on q, k, v and o. FlexOlmo's
// `intermediate_size` is each expert's width; it routes top-k over the softmax, renormalised
// only when `norm_topk_prob`, has no shared expert and no sliding window. Reading refuses,
// naming the field, what btx cannot represent (OLMo3 layer types with different RoPE).
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
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

struct Olmo2Config {
  DecoderConfig decoder;          // the dense model's (FlexOlmo's: F = each expert's width)
  std::optional<MoEConfig> moe;   // set for FlexOlmoForCausalLM
  std::string dtype = "float32";  // the checkpoint's storage dtype
};

namespace detail {

// transformers' defaults where OLMo3 and FlexOlmo override the library's (RoPE theta 5e5).
inline constexpr double olmo3_default_theta = 500000.0;

// OLMo3's theta for the layer types its layers use. transformers (Olmo3Config.
// convert_rope_params_to_dict) fills each type's rope_parameters entry: full_attention
// takes a legacy `rope_scaling` and else the top-level `rope_theta`, which it pops, so
// sliding_attention falls back to 500000 even when `rope_theta` is set. btx's decoder has
// one RoPE for every layer, so the types in use must agree.
inline double olmo3_rope_theta(const ConfigFields& f, const std::vector<bool>& sliding) {
  const nlohmann::json& j = f.json();
  const std::string& where = f.where();
  const nlohmann::json rp =
      f.has("rope_parameters") ? j["rope_parameters"] : nlohmann::json::object();
  if (!rp.is_object()) throw config_error(where, "\"rope_parameters\" is not an object");
  for (const auto& [key, value] : rp.items()) {
    if (key != "full_attention" && key != "sliding_attention") {
      throw config_error(where,
                         "\"rope_parameters\" of an olmo3 config must be nested per layer "
                         "type (full_attention, sliding_attention); found \"" +
                             key + "\"");
    }
  }
  // A type's own entry: default RoPE only; its theta if it names one.
  const auto own_theta = [&](const std::string& type,
                             const nlohmann::json& entry) -> std::optional<double> {
    if (!entry.is_object()) throw config_error(where, "\"" + type + "\" is not an object");
    const std::string rope_type = entry.value("rope_type", entry.value("type", "default"));
    if (rope_type != "default") {
      throw config_error(where, "\"" + type + "\" with rope_type \"" + rope_type +
                                    "\" is not supported (btx implements default RoPE)");
    }
    if (!entry.contains("rope_theta")) return std::nullopt;
    if (!entry["rope_theta"].is_number())
      throw config_error(where, "\"" + type + ".rope_theta\" is not a number");
    return entry["rope_theta"].get<double>();
  };
  std::optional<double> full, slide;
  if (rp.contains("full_attention"))
    full = own_theta("rope_parameters.full_attention", rp["full_attention"]);
  if (rp.contains("sliding_attention"))
    slide = own_theta("rope_parameters.sliding_attention", rp["sliding_attention"]);
  if (f.has("rope_scaling")) {  // merged into full_attention's entry, over its own keys
    if (auto scaled = own_theta("rope_scaling", j["rope_scaling"])) full = scaled;
  }
  const double full_theta = full.value_or(f.optional_num("rope_theta", olmo3_default_theta));
  const double sliding_theta = slide.value_or(olmo3_default_theta);
  bool uses_full = false, uses_sliding = false;
  for (const bool s : sliding) (s ? uses_sliding : uses_full) = true;
  if (uses_full && uses_sliding && full_theta != sliding_theta) {
    throw config_error(
        where, "\"rope_parameters\": full_attention's rope_theta " + std::to_string(full_theta) +
                   " differs from sliding_attention's " + std::to_string(sliding_theta) +
                   " (btx's decoder has one RoPE for every layer; a top-level "
                   "\"rope_theta\" reaches full_attention only)");
  }
  return uses_full ? full_theta : sliding_theta;
}

// OLMo3's sliding layers: `layer_types`, else transformers' default (every 4th layer full).
inline std::vector<bool> olmo3_sliding_layers(const ConfigFields& f, int64_t layers) {
  if (auto given = read_layer_types(f, layers)) return *given;
  std::vector<bool> sliding(static_cast<size_t>(layers));
  for (int64_t i = 0; i < layers; ++i) sliding[size_t(i)] = (i + 1) % 4 != 0;
  return sliding;
}

// FlexOlmo's experts: `intermediate_size` wide, num_experts (alias num_local_experts),
// top-k over the softmax, renormalised only when norm_topk_prob; transformers' defaults.
inline MoEConfig parse_flex_olmo_moe(const ConfigFields& f, int64_t intermediate_size) {
  const int64_t experts =
      f.has("num_experts") ? f.required_int("num_experts") : f.optional_int("num_local_experts", 7);
  const int64_t k = f.optional_int("num_experts_per_tok", 5);
  if (experts < 1 || k < 1 || k > experts) {
    throw config_error(f.where(), "\"num_experts_per_tok\" must be in [1, num_experts] (got " +
                                      std::to_string(k) + " of " + std::to_string(experts) + ")");
  }
  MoEConfig m = top_k_moe_config(experts, k, f.optional_bool("norm_topk_prob", false),
                                 f.optional_num("router_aux_loss_coef", 0.01));
  m.expert_size = intermediate_size;
  return m;
}

inline Olmo2Config parse_olmo2_config(const nlohmann::json& j, const std::string& where) {
  const std::string model_type = declared_model_type(j, where);
  if (model_type != "olmo2" && model_type != "olmo3" && model_type != "flex_olmo") {
    throw config_error(where, "model_type \"" + model_type +
                                  "\" is not supported (the OLMo2 family reads olmo2, olmo3 "
                                  "and flex_olmo)");
  }
  const bool olmo3 = model_type == "olmo3", moe = model_type == "flex_olmo";
  const ConfigFields given(j, where);
  // OLMo3's per-type RoPE, resolved to the one theta btx's decoder uses, in a copy the
  // shared reader takes as a flat config.
  nlohmann::json flat = j;
  std::vector<bool> sliding;
  if (olmo3) {
    sliding = olmo3_sliding_layers(given, given.required_int("num_hidden_layers"));
    const double theta = olmo3_rope_theta(given, sliding);
    flat.erase("rope_parameters");
    flat.erase("rope_scaling");
    flat["rope_theta"] = theta;
  }
  const ConfigFields f(flat, where);
  Olmo2Config out;
  auto& c = out.decoder;
  c = read_decoder_fields(f, {.rms_norm_eps = moe ? 1e-6 : 1e-5,
                              .rope_theta = olmo3 || moe ? olmo3_default_theta : 10000.0,
                              .max_position_embeddings = moe ? 4096 : 2048});
  c.post_norms = true;
  c.qk_norm = c.qk_norm_full_width = true;
  c.qkv_bias = c.o_bias = f.optional_bool("attention_bias", false);
  if (olmo3 && std::find(sliding.begin(), sliding.end(), true) != sliding.end()) {
    if (j.contains("sliding_window") && j["sliding_window"].is_null()) {
      throw config_error(where,
                         "\"sliding_window\" is null but \"layer_types\" has "
                         "sliding_attention layers");
    }
    c.sliding_window = f.optional_int("sliding_window", 4096);
    if (c.sliding_window <= 0)
      throw config_error(where, "\"sliding_window\" must be > 0 for sliding_attention layers");
    c.sliding_layers = sliding;
  }
  out.dtype = f.dtype();
  if (moe) out.moe = parse_flex_olmo_moe(f, c.intermediate_size);
  validate_decoder(c, where);
  return out;
}

// `c` as an OLMo layer: post norms, full-width q/k norms, one bias flag for q, k, v and o,
// none of Granite's multipliers. `arch` names the architecture in the error.
inline void check_olmo_layer(const DecoderConfig& c, const std::string& arch) {
  if (!c.post_norms || !c.qk_norm || !c.qk_norm_full_width || c.qkv_bias != c.o_bias ||
      c.embedding_multiplier != 1.0 || c.residual_multiplier != 1.0 || c.attention_scale ||
      c.logits_divisor != 1.0) {
    throw std::invalid_argument(
        "btx: " + arch +
        " norms each branch's output (post_norms), norms q and k over all heads "
        "(qk_norm_full_width), has one bias setting for q, k, v and o and no multipliers");
  }
}

// The keys all three write alike. The token ids are left null: the class defaults
// (OLMo's tokenizers: pad 1 or 100277) may lie outside a btx model's vocabulary, where
// nn.Embedding refuses the padding_idx; a model written from a checkpoint carries that
// checkpoint's own ids (hf::token_ids_of) over these.
inline nlohmann::ordered_json olmo_config_json(const DecoderConfig& c, const std::string& arch,
                                               const std::string& model_type,
                                               const std::string& dtype) {
  check_olmo_layer(c, arch);
  auto j = decoder_config_json(c, arch, model_type, dtype);
  j["attention_bias"] = c.qkv_bias;
  j["bos_token_id"] = nullptr;
  j["eos_token_id"] = nullptr;
  j["pad_token_id"] = nullptr;
  return j;
}

}  // namespace detail

inline Olmo2Config olmo2_config_from_json(const nlohmann::json& j,
                                          const std::string& where = "config.json") {
  return parse_config_json(detail::parse_olmo2_config, j, where);
}

// True when some layer of `c` has a sliding window (an OLMo3, not an OLMo2).
inline bool olmo_slides(const DecoderConfig& c) {
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    if (c.window_of_layer(i) > 0) return true;
  return false;
}

// An Olmo2ForCausalLM config.json (no layer may slide: that is olmo3_config_json's).
inline nlohmann::ordered_json olmo2_config_json(const DecoderConfig& c,
                                                const std::string& dtype = "float32") {
  if (olmo_slides(c)) {
    throw std::invalid_argument("btx: Olmo2ForCausalLM has no sliding window (\"sliding_window\" " +
                                std::to_string(c.sliding_window) + "); write it as olmo3");
  }
  return detail::olmo_config_json(c, "Olmo2ForCausalLM", "olmo2", dtype);
}

// An Olmo3ForCausalLM config.json: every layer's type, the window, and the one RoPE theta
// under both layer types' rope_parameters (and at the top level for older readers).
inline nlohmann::ordered_json olmo3_config_json(const DecoderConfig& c,
                                                const std::string& dtype = "float32") {
  auto j = detail::olmo_config_json(c, "Olmo3ForCausalLM", "olmo3", dtype);
  const nlohmann::ordered_json rope = {{"rope_theta", c.rope_theta}, {"rope_type", "default"}};
  j["rope_parameters"] = {{"full_attention", rope}, {"sliding_attention", rope}};
  // transformers' default is 4096, so a model without sliding layers writes that.
  j["sliding_window"] = c.sliding_window > 0 ? c.sliding_window : 4096;
  j["layer_types"] = layer_types_json(c);
  return j;
}

// A FlexOlmoForCausalLM config.json: `c` is the dense model's config, `moe` the experts'
// (expert_size 0: the dense F). FlexOlmo's intermediate_size is each expert's width; it
// routes top-k over the softmax, renormalised when moe.renormalizes_top_k(). It has no
// shared expert and no sliding window: an OLMo3 with sliding layers has no FlexOlmo form.
inline nlohmann::ordered_json flex_olmo_config_json(const DecoderConfig& c, const MoEConfig& moe,
                                                    const std::string& dtype = "float32") {
  if (moe.shared_expert_size) {
    throw std::invalid_argument(
        "btx: FlexOlmoForCausalLM (flex_olmo) has no shared expert; merge without "
        "shared_experts");
  }
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    if (c.window_of_layer(i) > 0) {
      throw std::invalid_argument(
          "btx: FlexOlmoForCausalLM (flex_olmo) has no sliding window, but layer " +
          std::to_string(i) + " of this OLMo3 model slides (\"sliding_window\" " +
          std::to_string(c.window_of_layer(i)) +
          ", \"layer_types\"): it cannot be written as a FlexOlmo MoE");
    }
  }
  refuse_moe_variants(moe, "FlexOlmoForCausalLM");
  DecoderConfig experts = c;
  if (moe.expert_size > 0) experts.intermediate_size = moe.expert_size;
  auto j = detail::olmo_config_json(experts, "FlexOlmoForCausalLM", "flex_olmo", dtype);
  j["num_experts"] = moe.num_experts;
  j["num_experts_per_tok"] = active_experts(moe);
  j["norm_topk_prob"] = moe.renormalizes_top_k();
  j["router_aux_loss_coef"] = moe.load_balance_alpha;
  j["output_router_logits"] = false;
  return j;
}

}  // namespace hf
BTX_NAMESPACE_END
}  // namespace btx
