// SPDX-License-Identifier: MIT
// The ModelFamily statics every family on the shared decoder with transformers' own MoE
// names (per-expert mlp.experts.{j}.*) implements alike, as a CRTP base:
//   struct Qwen3Family : DecoderFamily<Qwen3Family> {
//     static std::string name(), dense_model_type(), moe_model_type();
//     static auto parse(const nlohmann::json&, const std::string& where);  // .decoder .moe .dtype
//     static nlohmann::ordered_json dense_json(const DecoderConfig&, const std::string& dtype);
//     static nlohmann::ordered_json moe_json(const DecoderConfig&, const MoEConfig&,
//                                            const std::string& dtype);
//   };
// A family overrides any static by declaring its own (Qwen2's make_moe adds the shared
// expert slot).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <btx/core/causal_lm.hpp>
#include <btx/core/ffn_naming.hpp>
#include <btx/core/model_spec.hpp>
#include <btx/hf/name_map.hpp>
#include <btx/models/common/decoder.hpp>
#include <btx/models/common/decoder_moe.hpp>
#include <btx/models/common/hf_expert_names.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

template <class F>
struct DecoderFamily {
  // The decoder config a spec describes (an MoE spec's experts have F = its expert size).
  static DecoderConfig decoder_config(const ModelSpec& spec) {
    auto c = F::parse(spec.config, "model spec").decoder;
    if (spec.moe && spec.moe->expert_intermediate_size > 0) {
      c.intermediate_size = spec.moe->expert_intermediate_size;
    }
    return c;
  }
  static ModelSpec spec(const DecoderConfig& c, std::optional<MoEConfig> moe = {},
                        const std::string& dtype = "float32") {
    ModelSpec s;
    s.family = F::name();
    s.config = nlohmann::json::parse(F::dense_json(c, dtype).dump());
    s.shape = c;
    s.moe = moe;
    s.dtype = dtype;
    return s;
  }

  static ModelSpec read_config(const nlohmann::json& j, const std::string& where) {
    const auto hf = F::parse(j, where);
    return spec(hf.decoder, hf.moe, hf.dtype);
  }
  static nlohmann::ordered_json config_json(const ModelSpec& s, const std::string& dtype) {
    const auto dense = F::parse(s.config, "model spec").decoder;
    return s.moe ? F::moe_json(dense, *s.moe, dtype) : F::dense_json(dense, dtype);
  }

  static CausalLM make_dense(const ModelSpec& s) {
    ModelSpec dense = s;
    dense.moe.reset();
    return CausalLM(DecoderForCausalLM(decoder_config(dense)), dense);
  }
  static CausalLM make_moe(const ModelSpec& s, const MoEOptions& options) {
    const ModelSpec moe = with_moe_options(s, options);
    return CausalLM(DecoderForCausalLM(decoder_config(moe), moe_feed_forward(options)), moe);
  }

  static std::vector<std::string> hf_names(const std::string& param, int64_t experts) {
    return hf::per_expert_hf_names(param, experts);
  }
  static hf::BtxSlot btx_slot(const std::string& hf_name) {
    return hf::per_expert_btx_slot(hf_name);
  }
  static FfnNaming ffn_naming() {
    FfnNaming naming;  // not `return {}`: GCC 12 fails on it inside a class template
    return naming;
  }
  // Top-k over the softmax, renormalised when norm_topk_prob, the config's shared expert;
  // Switch-form load balancing weighted by router_aux_loss_coef.
  static MoEOptions hf_moe_options(const MoEConfig& moe) { return hf_top_k_options(moe); }
};

BTX_NAMESPACE_END
}  // namespace btx
