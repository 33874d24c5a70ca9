// SPDX-License-Identifier: MIT
// Hugging Face config.json <-> DecoderConfig for GraniteForCausalLM and its MoE forms
// GraniteMoeForCausalLM and GraniteMoeSharedForCausalLM (transformers 5.25). Granite is a
// Llama-shaped decoder with four multipliers, each a DecoderConfig option:
//   embedding_multiplier  embeddings scaled              -> embedding_multiplier
//   residual_multiplier   each branch scaled before add  -> residual_multiplier
//   attention_multiplier  the softmax scale (it replaces 1/sqrt(head_dim); 1.0 by default,
//                         i.e. no scaling)               -> attention_scale
//   logits_scaling        logits divided by it           -> logits_divisor
// and `attention_bias` on q, k, v and o. GraniteMoE routes top-k of the router logits, then
// a softmax over those k (= btx's top-k router, renormalised); its intermediate_size is the
// per-expert width. GraniteMoEShared adds `shared_mlp` of width shared_intermediate_size,
// added to the experts' output with no gate (btx's ungated shared expert). Reading refuses,
// naming the field, what btx's decoder cannot represent (mlp_bias: btx's FFNs have no bias).
#pragma once

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

#include <btx/core/model_spec.hpp>
#include <btx/core/moe_config.hpp>
#include <btx/hf/config_json.hpp>
#include <btx/models/common/decoder_config.hpp>
#include <btx/models/common/hf_decoder_config.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace hf {

struct GraniteConfig {
  DecoderConfig decoder;  // the dense model's (GraniteMoE: intermediate_size = each expert's)
  std::optional<MoEConfig> moe;   // set for granitemoe and granitemoeshared
  std::string dtype = "float32";  // the checkpoint's storage dtype
};

namespace detail {

// A multiplier Granite's config may carry: finite and > 0, named as config.json names it
// (DecoderConfig::validate would name btx's field instead).
inline double granite_multiplier(const ConfigFields& f, const char* key) {
  const double v = f.optional_num(key, 1.0);
  if (!(v > 0.0) || !std::isfinite(v)) {
    throw config_error(
        f.where(), std::string("\"") + key + "\" must be finite and > 0, got " + std::to_string(v));
  }
  return v;
}

inline GraniteConfig parse_granite_config(const nlohmann::json& j, const std::string& where) {
  const ConfigFields f(j, where);
  const std::string model_type = declared_model_type(j, where);
  if (model_type != "granite" && model_type != "granitemoe" && model_type != "granitemoeshared") {
    throw config_error(where, "model_type \"" + model_type +
                                  "\" is not supported (the Granite family reads granite, "
                                  "granitemoe and granitemoeshared)");
  }
  GraniteConfig out;
  auto& c = out.decoder;
  c = read_decoder_fields(
      f, {.rms_norm_eps = 1e-6, .rope_theta = 10000.0, .max_position_embeddings = 2048});
  c.qkv_bias = c.o_bias = f.optional_bool("attention_bias", false);
  // Granite's mlp_bias (granite only; GraniteMoE's experts have none).
  f.refuse_true("mlp_bias", "btx's feed-forward blocks have no bias");
  c.embedding_multiplier = granite_multiplier(f, "embedding_multiplier");
  c.residual_multiplier = granite_multiplier(f, "residual_multiplier");
  c.attention_scale = granite_multiplier(f, "attention_multiplier");
  c.logits_divisor = granite_multiplier(f, "logits_scaling");
  out.dtype = f.dtype();
  if (model_type != "granite") {
    // transformers' defaults: 8 experts, top 2.
    const int64_t experts = f.optional_int("num_local_experts", 8);
    const int64_t k = f.optional_int("num_experts_per_tok", 2);
    if (experts < 1) throw config_error(where, "\"num_local_experts\" must be >= 1");
    if (k < 1 || k > experts) {
      throw config_error(where, "\"num_experts_per_tok\" must be in [1, num_local_experts]");
    }
    // Top-k of the logits, then a softmax over those k: always renormalised.
    out.moe = top_k_moe_config(experts, k, /*norm_topk_prob=*/true,
                               f.optional_num("router_aux_loss_coef", 0.001));
    out.moe->expert_size = c.intermediate_size;
    if (model_type == "granitemoeshared") {
      const int64_t shared = f.optional_int("shared_intermediate_size", 0);
      if (shared < 0) throw config_error(where, "\"shared_intermediate_size\" must be >= 0");
      // 0: transformers builds no shared_mlp, so the model is a GraniteMoE.
      if (shared > 0) {
        out.moe->shared_expert_size = shared;
        out.moe->shared_expert_gated = false;
      }
    }
  }
  validate_decoder(c, where);
  return out;
}

// Throws naming what `arch` cannot carry of `c`.
inline void check_granite_representable(const DecoderConfig& c, const std::string& arch) {
  const auto refuse = [&arch](const std::string& what) {
    throw std::invalid_argument("btx: " + arch + " " + what);
  };
  if (c.qkv_bias != c.o_bias) refuse("biases all four attention projections or none");
  if (c.qk_norm || c.qk_norm_full_width) refuse("has no q/k norms");
  if (c.sliding_window > 0) refuse("has no sliding window");
  if (c.post_norms) refuse("normalises each branch's input, not its output (post_norms)");
}

}  // namespace detail

// Parses a granite, granitemoe or granitemoeshared config; `where` names the source.
inline GraniteConfig granite_config_from_json(const nlohmann::json& j,
                                              const std::string& where = "config.json") {
  return parse_config_json(detail::parse_granite_config, j, where);
}

// A GraniteForCausalLM config.json for `c`. attention_multiplier is written explicitly:
// btx's default softmax scale 1/sqrt(head_dim) when `c` leaves it unset.
inline nlohmann::ordered_json granite_config_json(const DecoderConfig& c,
                                                  const std::string& dtype = "float32") {
  detail::check_granite_representable(c, "GraniteForCausalLM");
  auto j = decoder_config_json(c, "GraniteForCausalLM", "granite", dtype);
  j["attention_bias"] = c.qkv_bias;
  j["mlp_bias"] = false;
  j["embedding_multiplier"] = c.embedding_multiplier;
  j["residual_multiplier"] = c.residual_multiplier;
  j["attention_multiplier"] =
      c.attention_scale.value_or(1.0 / std::sqrt(double(c.resolved_head_dim())));
  j["logits_scaling"] = c.logits_divisor;
  return j;
}

// The MoE config.json for `moe` over the dense config `c` (moe.expert_size, when set, is
// the experts' F, written as intermediate_size): GraniteMoeForCausalLM, or
// GraniteMoeSharedForCausalLM when `moe` has a shared expert (which must be ungated and of
// non-zero width: transformers' shared_mlp has no gate, and none at width 0).
inline nlohmann::ordered_json granitemoe_config_json(const DecoderConfig& c, const MoEConfig& moe,
                                                     const std::string& dtype = "float32") {
  const bool shared = moe.shared_expert_size.has_value();
  const std::string arch = shared ? "GraniteMoeSharedForCausalLM" : "GraniteMoeForCausalLM";
  detail::check_granite_representable(c, arch);
  refuse_moe_variants(moe, arch);
  if (shared && moe.shared_expert_gated) {
    throw std::invalid_argument("btx: " + arch +
                                " adds its shared expert (shared_mlp) without a gate; this "
                                "model's shared expert is gated (shared_expert_gated)");
  }
  if (shared && *moe.shared_expert_size <= 0) {
    throw std::invalid_argument("btx: " + arch +
                                " has no zero-width shared expert (shared_intermediate_size 0 "
                                "means no shared_mlp); this model has one");
  }
  if (!moe.renormalizes_top_k()) {
    throw std::invalid_argument(
        "btx: " + arch +
        " always renormalises its top-k weights (norm_topk_prob: false cannot be written)");
  }
  auto j = granite_config_json(c, dtype);
  j.erase("mlp_bias");  // GraniteMoE has no such field: its experts have no bias
  j["architectures"] = {arch};
  j["model_type"] = shared ? "granitemoeshared" : "granitemoe";
  // GraniteMoE's intermediate_size is each expert's F.
  if (moe.expert_size > 0) j["intermediate_size"] = moe.expert_size;
  j["num_local_experts"] = moe.num_experts;
  j["num_experts_per_tok"] = active_experts(moe);
  j["router_aux_loss_coef"] = moe.load_balance_alpha;
  j["output_router_logits"] = false;
  if (shared) j["shared_intermediate_size"] = *moe.shared_expert_size;
  return j;
}

}  // namespace hf
BTX_NAMESPACE_END
}  // namespace btx
