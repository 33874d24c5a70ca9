// SPDX-License-Identifier: MIT
// The config.json fields every family on the shared decoder reads and writes alike: sizes,
// norms, RoPE (theta at the top level or in rope_parameters/rope_scaling, default type
// only), the activation (silu only), tied embeddings and the storage dtype. A family adds
// its own fields (biases, q/k norm, windows, MoE) and its defaults where transformers'
// differ (rms_norm_eps, rope_theta, head_dim, max_position_embeddings).
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
#include <btx/moe/router_registry.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace hf {

// transformers' defaults for a key config.json leaves out.
struct DecoderDefaults {
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  int64_t max_position_embeddings = 2048;
  std::optional<int64_t> head_dim;  // empty: hidden_size / num_attention_heads
};

inline DecoderConfig read_decoder_fields(const ConfigFields& f, const DecoderDefaults& d) {
  const nlohmann::json& j = f.json();
  const std::string& where = f.where();
  DecoderConfig c;
  c.hidden_size = f.required_int("hidden_size");
  c.intermediate_size = f.required_int("intermediate_size");
  c.num_hidden_layers = f.required_int("num_hidden_layers");
  c.num_attention_heads = f.required_int("num_attention_heads");
  c.vocab_size = f.required_int("vocab_size");
  c.num_key_value_heads = f.optional_int("num_key_value_heads", c.num_attention_heads);
  c.head_dim =
      f.has("head_dim") ? std::optional<int64_t>(f.optional_int("head_dim", 0)) : d.head_dim;
  c.rms_norm_eps = f.optional_num("rms_norm_eps", d.rms_norm_eps);
  c.max_position_embeddings = f.optional_int("max_position_embeddings", d.max_position_embeddings);
  c.initializer_range = f.optional_num("initializer_range", 0.02);
  c.tie_word_embeddings = f.optional_bool("tie_word_embeddings", false);
  c.rope_theta = f.optional_num("rope_theta", d.rope_theta);
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (!f.has(key)) continue;
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
  const std::string act = f.optional_string("hidden_act", "silu");
  if (act != "silu") {
    throw detail::config_error(where,
                               "\"hidden_act\": \"" + act + "\" is not supported (silu only)");
  }
  return c;
}

// `layer_types` (transformers 5: "sliding_attention" or "full_attention" per layer) as
// which layers slide; empty when the config leaves it out.
inline std::optional<std::vector<bool>> read_layer_types(const ConfigFields& f, int64_t layers) {
  if (!f.has("layer_types")) return std::nullopt;
  const auto& types = f.json()["layer_types"];
  if (!types.is_array() || int64_t(types.size()) != layers) {
    throw detail::config_error(
        f.where(), "\"layer_types\" must list one type per layer (" + std::to_string(layers) + ")");
  }
  std::vector<bool> sliding(types.size());
  for (size_t i = 0; i < types.size(); ++i) {
    const std::string t = types[i].is_string() ? types[i].get<std::string>() : "?";
    if (t != "sliding_attention" && t != "full_attention") {
      throw detail::config_error(f.where(), "\"layer_types\"[" + std::to_string(i) + "] \"" + t +
                                                "\" is not sliding_attention or full_attention");
    }
    sliding[i] = t == "sliding_attention";
  }
  return sliding;
}

// Every layer's type, as `layer_types` lists them.
inline nlohmann::ordered_json layer_types_json(const DecoderConfig& c) {
  nlohmann::ordered_json types = nlohmann::ordered_json::array();
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    types.push_back(c.window_of_layer(i) > 0 ? "sliding_attention" : "full_attention");
  return types;
}

// config.json's model_type, which must be `dense` or `moe` (`family` names the family in
// the error); true for the MoE one.
inline bool read_family_model_type(const nlohmann::json& j, const std::string& where,
                                   const std::string& family, const std::string& dense,
                                   const std::string& moe) {
  const std::string model_type = declared_model_type(j, where);
  if (model_type != dense && model_type != moe) {
    throw detail::config_error(where, "model_type \"" + model_type + "\" is not supported (the " +
                                          family + " family reads " + dense + " and " + moe + ")");
  }
  return model_type == moe;
}

// The MoEConfig of an HF MoE checkpoint that routes top-k over the softmax (Mixtral;
// Qwen2-MoE and Qwen3-MoE, renormalised when norm_topk_prob), with Switch-form load
// balancing weighted by router_aux_loss_coef: what a family's config reader returns.
inline MoEConfig top_k_moe_config(int64_t num_experts, int64_t experts_per_token,
                                  bool norm_topk_prob, double router_aux_loss_coef) {
  MoEConfig moe;
  moe.num_experts = num_experts;
  moe.router = RouterChoice("topk", {{"k", experts_per_token}, {"renormalize", norm_topk_prob}});
  moe.load_balance_alpha = router_aux_loss_coef;
  moe.load_balance_form = LoadBalanceForm::switch_;
  return moe;
}

// The MoE keys transformers' Qwen-style MoE configs share (num_experts,
// num_experts_per_tok, moe_intermediate_size, norm_topk_prob with its default false,
// router_aux_loss_coef, mlp_only_layers as leading dense layers), refusing the per-layer
// sparsity btx does not build (decoder_sparse_step other than 1, dense layers after MoE ones).
inline MoEConfig read_moe_fields(const ConfigFields& f) {
  const std::string& where = f.where();
  const int64_t experts =
      f.has("num_experts") ? f.required_int("num_experts") : f.required_int("num_local_experts");
  const int64_t k = f.required_int("num_experts_per_tok");
  if (k < 1 || k > experts) {
    throw detail::config_error(where, "\"num_experts_per_tok\" must be in [1, num_experts]");
  }
  MoEConfig m = top_k_moe_config(experts, k, f.optional_bool("norm_topk_prob", false),
                                 f.optional_num("router_aux_loss_coef", 0.001));
  m.expert_size = f.required_int("moe_intermediate_size");
  if (m.expert_size <= 0)
    throw detail::config_error(where, "\"moe_intermediate_size\" must be > 0");
  if (f.optional_int("decoder_sparse_step", 1) != 1) {
    throw detail::config_error(where,
                               "\"decoder_sparse_step\" other than 1 is not supported (btx makes "
                               "every layer MoE)");
  }
  if (f.has("mlp_only_layers")) {  // leading dense layers: 0, 1, ..., k-1
    const auto& dense = f.json()["mlp_only_layers"];
    for (size_t i = 0; dense.is_array() && i < dense.size(); ++i) {
      if (!dense[i].is_number_integer() || dense[i].get<int64_t>() != int64_t(i)) {
        throw detail::config_error(where,
                                   "\"mlp_only_layers\" other than the leading layers [0, 1, ..., "
                                   "k-1] is not supported (btx keeps only leading layers dense)");
      }
    }
    m.dense_layers = dense.is_array() ? int64_t(dense.size()) : 0;
  }
  return m;
}

// Throws unless `moe` is one a softmax top-k MoE architecture (Mixtral, Qwen-MoE, FlexOlmo)
// can record: sigmoid routing with a balancing bias is GLM-4-MoE's, and leading dense
// layers are refused where `arch` has none (`dense_layers_ok`: Qwen-MoE's mlp_only_layers).
inline void refuse_moe_variants(const MoEConfig& moe, const std::string& arch,
                                bool dense_layers_ok = false) {
  if (moe.router.name == "sigmoid_topk") {
    throw std::invalid_argument("btx: " + arch + " routes by a softmax; router sigmoid_topk " +
                                "cannot be written (GLM-4-MoE routes so)");
  }
  if (moe.dense_layers > 0 && !dense_layers_ok) {
    throw std::invalid_argument("btx: " + arch + " makes every layer MoE; this model keeps " +
                                std::to_string(moe.dense_layers) +
                                " leading layers dense (dense_layers)");
  }
}

// The same keys written for `moe` over the dense config `c` (expert_size 0:
// the dense F); every layer MoE.
inline void write_moe_fields(nlohmann::ordered_json& j, const DecoderConfig& c,
                             const MoEConfig& moe) {
  refuse_moe_variants(moe, j["architectures"][0].get<std::string>(), /*dense_layers_ok=*/true);
  j["num_experts"] = moe.num_experts;
  j["num_experts_per_tok"] = active_experts(moe);
  j["moe_intermediate_size"] = moe.expert_size > 0 ? moe.expert_size : c.intermediate_size;
  j["norm_topk_prob"] = moe.renormalizes_top_k();
  j["decoder_sparse_step"] = 1;
  j["mlp_only_layers"] = nlohmann::ordered_json::array();
  for (int64_t i = 0; i < moe.dense_layers; ++i) j["mlp_only_layers"].push_back(i);
  j["router_aux_loss_coef"] = moe.load_balance_alpha;
  j["output_router_logits"] = false;
}

// parse(j, where), with a JSON type error turned into one naming `where`.
template <class Parse>
auto parse_config_json(Parse&& parse, const nlohmann::json& j, const std::string& where) {
  try {
    return parse(j, where);
  } catch (const nlohmann::json::exception& e) {
    throw detail::config_error(where,
                               std::string("a field has the wrong JSON type (") + e.what() + ")");
  }
}

// Validates `c`, naming `where` in the error.
inline void validate_decoder(const DecoderConfig& c, const std::string& where) {
  try {
    c.validate();
  } catch (const std::invalid_argument& e) {
    throw detail::config_error(where, e.what());
  }
}

// Throws, naming `arch` and the field, when `c` uses a layer variant of another family
// (OLMo2's post norms or full-width q/k norm, Granite's multipliers): what a family whose
// layer is Llama's must refuse rather than write a config that computes something else.
inline void refuse_layer_variants(const DecoderConfig& c, const std::string& arch) {
  const auto refuse = [&arch](const std::string& what) {
    throw std::invalid_argument("btx: " + arch + " cannot carry " + what);
  };
  if (c.post_norms) refuse("norms after attention and FFN (post_norms, OLMo2's layer)");
  if (c.qk_norm && c.qk_norm_full_width) refuse("a full-width q/k norm (OLMo2's)");
  if (c.embedding_multiplier != 1.0) refuse("an embedding multiplier (Granite's)");
  if (c.residual_multiplier != 1.0) refuse("a residual multiplier (Granite's)");
  if (c.attention_scale) refuse("an attention scale other than 1/sqrt(head_dim) (Granite's)");
  if (c.logits_divisor != 1.0) refuse("a logits divisor (Granite's logits_scaling)");
}

// The keys every family writes alike (transformers 5 reads rope_parameters, 4 rope_theta).
inline nlohmann::ordered_json decoder_config_json(const DecoderConfig& c, const std::string& arch,
                                                  const std::string& model_type,
                                                  const std::string& dtype) {
  nlohmann::ordered_json j;
  j["architectures"] = {arch};
  j["model_type"] = model_type;
  j["attention_dropout"] = 0.0;
  j["dtype"] = dtype;
  j["head_dim"] = c.resolved_head_dim();
  j["hidden_act"] = "silu";
  j["hidden_size"] = c.hidden_size;
  j["initializer_range"] = c.initializer_range;
  j["intermediate_size"] = c.intermediate_size;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_parameters"] = {{"rope_theta", c.rope_theta}, {"rope_type", "default"}};
  j["rope_theta"] = c.rope_theta;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["use_cache"] = true;
  j["vocab_size"] = c.vocab_size;
  return j;
}

}  // namespace hf
BTX_NAMESPACE_END
}  // namespace btx
