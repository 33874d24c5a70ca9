// SPDX-License-Identifier: MIT
// The Qwen3 family as a ModelFamily: dense Qwen3ForCausalLM (the shared decoder with
// per-head q/k norms), MoE Qwen3MoeForCausalLM (btx's MoE layers in each FFN slot, routed
// as transformers' Qwen3-MoE with norm_topk_prob), its name table, and transformers'
// decoder layout for the FFN. Registered in models/registry.hpp.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

#include <btx/core/causal_lm.hpp>
#include <btx/core/ffn_naming.hpp>
#include <btx/core/model_spec.hpp>
#include <btx/models/common/decoder.hpp>
#include <btx/models/common/decoder_moe.hpp>
#include <btx/models/family.hpp>
#include <btx/models/qwen3/hf_config.hpp>
#include <btx/models/qwen3/hf_names.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

struct Qwen3Family {
  static std::string name() { return "qwen3"; }
  static std::string dense_model_type() { return "qwen3"; }
  static std::string moe_model_type() { return "qwen3_moe"; }

  // The decoder config a spec describes (an MoE spec's experts have F = its expert size).
  static DecoderConfig decoder_config(const ModelSpec& spec) {
    auto c = hf::qwen3_config_from_json(spec.config, "model spec").decoder;
    if (spec.moe && spec.moe->expert_intermediate_size > 0) {
      c.intermediate_size = spec.moe->expert_intermediate_size;
    }
    return c;
  }
  static ModelSpec spec(const DecoderConfig& c, std::optional<MoEConfig> moe = {},
                        const std::string& dtype = "float32") {
    ModelSpec s;
    s.family = name();
    s.config = nlohmann::json::parse(hf::qwen3_config_json(c, dtype).dump());
    s.shape = c;
    s.moe = moe;
    s.dtype = dtype;
    return s;
  }

  static ModelSpec read_config(const nlohmann::json& j, const std::string& where) {
    const auto hf = hf::qwen3_config_from_json(j, where);
    return spec(hf.decoder, hf.moe, hf.dtype);
  }
  static nlohmann::ordered_json config_json(const ModelSpec& s, const std::string& dtype) {
    const auto dense = hf::qwen3_config_from_json(s.config, "model spec").decoder;
    return s.moe ? hf::qwen3_moe_config_json(dense, *s.moe, dtype)
                 : hf::qwen3_config_json(dense, dtype);
  }

  static CausalLM make_dense(const ModelSpec& s) {
    ModelSpec dense = s;
    dense.moe.reset();
    return CausalLM(DecoderForCausalLM(decoder_config(dense)), dense);
  }
  static CausalLM make_moe(const ModelSpec& s, const MoEOptions& options) {
    ModelSpec moe = s;
    if (!moe.moe) moe.moe = MoEConfig{options.num_experts, 2, options.load_balance_alpha};
    moe.moe->num_local_experts = options.num_experts;
    return CausalLM(DecoderForCausalLM(decoder_config(moe), moe_feed_forward(options)), moe);
  }

  static std::vector<std::string> hf_names(const std::string& param, int64_t experts) {
    return hf::qwen3_hf_names(param, experts);
  }
  static hf::BtxSlot btx_slot(const std::string& hf_name) { return hf::qwen3_btx_slot(hf_name); }
  static FfnNaming ffn_naming() { return {}; }
  // Qwen3-MoE with norm_topk_prob: top-k over the softmax, renormalised; Switch-form
  // load balancing weighted by router_aux_loss_coef.
  static MoEOptions hf_moe_options(const MoEConfig& moe) { return renormalised_top_k_options(moe); }
};
static_assert(ModelFamily<Qwen3Family>);

BTX_NAMESPACE_END
}  // namespace btx
