// SPDX-License-Identifier: MIT
// Hugging Face config.json <-> DecoderConfig + MoEConfig for Glm4MoeForCausalLM (GLM-4.5's
// architecture in transformers): Llama's pre-norm layer with q/k/v biases (attention_bias;
// never on o_proj) and optional per-head q/k norms (use_qk_norm), DeepSeek-V3's MoE
// (sigmoid routing with a balancing bias, group-limited top-k, a routed scaling factor,
// ungated shared experts of n_shared_experts * moe_intermediate_size, leading dense layers:
// first_k_dense_replace). btx's router "sigmoid_topk" routes exactly so. A model whose
// every layer is dense (first_k_dense_replace >= num_hidden_layers) is GLM-4-MoE's dense
// form, which btx reads and writes as the family's dense model.
// Refused, naming the field: partial rotary (transformers' default partial_rotary_factor is
// 0.5 when config.json leaves it out; btx rotates every head dimension), an o_proj bias, a
// sliding window, another family's layer variants, a router other than sigmoid_topk.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

#include <btx/core/model_spec.hpp>
#include <btx/hf/config_json.hpp>
#include <btx/models/common/decoder_config.hpp>
#include <btx/models/common/hf_decoder_config.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace hf {

struct Glm4MoeConfig {
  DecoderConfig decoder;          // the dense model's (intermediate_size: dense layers' F)
  std::optional<MoEConfig> moe;   // set unless every layer is dense
  std::string dtype = "float32";  // the checkpoint's storage dtype
};

namespace detail {

// The partial_rotary_factor transformers applies: rope_parameters' or the top level's,
// else its default 0.5.
inline double glm4_rotary_factor(const ConfigFields& f) {
  const auto& j = f.json();
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object() &&
      j["rope_parameters"].contains("partial_rotary_factor")) {
    return j["rope_parameters"]["partial_rotary_factor"].get<double>();
  }
  return f.optional_num("partial_rotary_factor", 0.5);
}

inline Glm4MoeConfig parse_glm4_moe_config(const nlohmann::json& j, const std::string& where) {
  const ConfigFields f(j, where);
  const std::string type = declared_model_type(j, where);
  if (type != "glm4_moe") {
    throw config_error(where, "model_type \"" + type +
                                  "\" is not supported (the GLM-4-MoE family reads glm4_moe)");
  }
  Glm4MoeConfig out;
  auto& c = out.decoder;
  c = read_decoder_fields(f, {.rms_norm_eps = 1e-5,
                              .rope_theta = 10000.0,
                              .max_position_embeddings = 131072,
                              .head_dim = std::nullopt});
  if (const double factor = glm4_rotary_factor(f); factor != 1.0) {
    throw config_error(where, "\"partial_rotary_factor\" " + nlohmann::json(factor).dump() +
                                  " is not supported (btx rotates every head dimension: 1.0; "
                                  "transformers' default when absent is 0.5)");
  }
  c.qkv_bias = f.optional_bool("attention_bias", false);  // q, k, v; never o
  c.qk_norm = f.optional_bool("use_qk_norm", false);      // per head
  out.dtype = f.dtype();
  validate_decoder(c, where);
  const int64_t dense_layers = f.optional_int("first_k_dense_replace", 1);
  if (dense_layers < 0) throw config_error(where, "\"first_k_dense_replace\" must be >= 0");
  if (dense_layers >= c.num_hidden_layers) return out;  // every layer dense
  MoEConfig m;
  m.num_experts = f.optional_int("n_routed_experts", 128);
  const int64_t k = f.optional_int("num_experts_per_tok", 8);
  if (m.num_experts < 1 || k < 1 || k > m.num_experts) {
    throw config_error(where, "\"num_experts_per_tok\" must be in [1, n_routed_experts]");
  }
  m.router =
      RouterChoice("sigmoid_topk", {{"k", k},
                                    {"renormalize", f.optional_bool("norm_topk_prob", true)},
                                    {"groups", f.optional_int("n_group", 1)},
                                    {"topk_groups", f.optional_int("topk_group", 1)},
                                    {"scaling", f.optional_num("routed_scaling_factor", 1.0)}});
  m.expert_size = f.optional_int("moe_intermediate_size", 1408);
  if (m.expert_size <= 0) throw config_error(where, "\"moe_intermediate_size\" must be > 0");
  const int64_t shared = f.optional_int("n_shared_experts", 1);
  if (shared < 0) throw config_error(where, "\"n_shared_experts\" must be >= 0");
  m.shared_expert_size = shared * m.expert_size;
  m.shared_expert_gated = false;
  m.dense_layers = dense_layers;
  m.load_balance_alpha = 0.0;  // GLM-4-MoE balances by the router's bias, not a loss
  out.moe = m;
  return out;
}

}  // namespace detail

inline Glm4MoeConfig glm4_moe_config_from_json(const nlohmann::json& j,
                                               const std::string& where = "config.json") {
  return parse_config_json(detail::parse_glm4_moe_config, j, where);
}

// GLM-4-MoE's dense form: every layer dense (first_k_dense_replace = num_hidden_layers).
inline nlohmann::ordered_json glm4_moe_dense_config_json(const DecoderConfig& c,
                                                         const std::string& dtype = "float32") {
  const std::string arch = "Glm4MoeForCausalLM";
  refuse_layer_variants(c, arch);
  if (c.o_bias) throw std::invalid_argument("btx: " + arch + " has no o_proj bias");
  if (c.sliding_window > 0) throw std::invalid_argument("btx: " + arch + " has no sliding window");
  auto j = decoder_config_json(c, arch, "glm4_moe", dtype);
  j["rope_parameters"]["partial_rotary_factor"] = 1.0;
  j["partial_rotary_factor"] = 1.0;
  j["attention_bias"] = c.qkv_bias;
  j["use_qk_norm"] = c.qk_norm;
  j["first_k_dense_replace"] = c.num_hidden_layers;
  j["n_routed_experts"] = 1;
  j["num_experts_per_tok"] = 1;
  j["moe_intermediate_size"] = c.intermediate_size;
  j["n_shared_experts"] = 0;
  j["n_group"] = 1;
  j["topk_group"] = 1;
  j["norm_topk_prob"] = true;
  j["routed_scaling_factor"] = 1.0;
  j["num_nextn_predict_layers"] = 0;
  return j;
}

// A Glm4MoeForCausalLM config.json: `c` is the dense model's config, `moe` the experts'
// (expert_size: moe_intermediate_size, 0 meaning the dense F), routed by sigmoid_topk.
inline nlohmann::ordered_json glm4_moe_config_json(const DecoderConfig& c, const MoEConfig& moe,
                                                   const std::string& dtype = "float32") {
  const std::string arch = "Glm4MoeForCausalLM";
  if (moe.router.name != "sigmoid_topk") {
    throw std::invalid_argument("btx: " + arch + " routes by sigmoid scores with a balancing " +
                                "bias (router sigmoid_topk); this model's router is '" +
                                moe.router.name + "'");
  }
  const int64_t F = moe.expert_size > 0 ? moe.expert_size : c.intermediate_size;
  const int64_t shared = moe.shared_expert_size.value_or(0);
  if (shared > 0 && moe.shared_expert_gated) {
    throw std::invalid_argument("btx: " + arch + " adds its shared experts ungated; this " +
                                "model's shared expert has a gate");
  }
  if (shared % F != 0) {
    throw std::invalid_argument("btx: " + arch + "'s shared experts are n_shared_experts * " +
                                "moe_intermediate_size wide; " + std::to_string(shared) +
                                " is not a multiple of " + std::to_string(F));
  }
  if (moe.dense_layers >= c.num_hidden_layers) {
    throw std::invalid_argument("btx: an MoE needs a layer after its dense_layers");
  }
  auto j = glm4_moe_dense_config_json(c, dtype);
  j["first_k_dense_replace"] = moe.dense_layers;
  j["n_routed_experts"] = moe.num_experts;
  j["num_experts_per_tok"] = moe.router.option_or<int64_t>("k", 2);
  j["moe_intermediate_size"] = F;
  j["n_shared_experts"] = shared / F;
  j["n_group"] = moe.router.option_or<int64_t>("groups", 1);
  j["topk_group"] = moe.router.option_or<int64_t>("topk_groups", 1);
  j["norm_topk_prob"] = moe.router.option_or("renormalize", true);
  j["routed_scaling_factor"] = moe.router.option_or("scaling", 1.0);
  return j;
}

}  // namespace hf
BTX_NAMESPACE_END
}  // namespace btx
