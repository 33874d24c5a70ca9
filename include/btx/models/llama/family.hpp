// SPDX-License-Identifier: MIT
// The Llama family as a ModelFamily: dense LlamaForCausalLM (MistralForCausalLM when it
// has a sliding window), MoE MixtralForCausalLM
// (btx's MoE layers in each FFN slot, routed as transformers' Mixtral), the Mixtral name
// table, and transformers' decoder layout for the FFN. Registered in models/registry.hpp.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

#include <btx/core/causal_lm.hpp>
#include <btx/core/ffn_naming.hpp>
#include <btx/core/model_spec.hpp>
#include <btx/models/family.hpp>
#include <btx/models/llama/hf_config.hpp>
#include <btx/models/llama/hf_names.hpp>
#include <btx/models/llama/model.hpp>
#include <btx/models/llama/moe.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

struct LlamaFamily {
  static std::string name() { return "llama"; }
  static std::string dense_model_type() { return "llama"; }
  static std::string moe_model_type() { return "mixtral"; }
  // Mistral is a Llama with a sliding window: read, and written for a windowed dense model.
  static std::vector<std::string> other_model_types() { return {"mistral"}; }

  // The dense LlamaConfig a spec describes (the MoE model's experts have the same F).
  static LlamaConfig llama_config(const ModelSpec& spec) {
    auto c = hf::config_from_json(spec.config, "model spec").llama;
    if (spec.moe && spec.moe->expert_intermediate_size > 0) {
      c.intermediate_size = spec.moe->expert_intermediate_size;
    }
    return c;
  }
  static ModelSpec spec(const LlamaConfig& c, std::optional<MoEConfig> moe = {},
                        const std::string& dtype = "float32") {
    ModelSpec s;
    s.family = name();
    s.config = nlohmann::json::parse(hf::llama_config_json(c, dtype).dump());
    s.shape = c;
    s.moe = moe;
    s.dtype = dtype;
    return s;
  }

  static ModelSpec read_config(const nlohmann::json& j, const std::string& where) {
    const auto hf = hf::config_from_json(j, where);
    return spec(hf.llama, hf.moe, hf.dtype);
  }
  static nlohmann::ordered_json config_json(const ModelSpec& s, const std::string& dtype) {
    const auto c = llama_config(s);
    return s.moe ? hf::mixtral_config_json(c, *s.moe, dtype) : hf::llama_config_json(c, dtype);
  }

  static CausalLM make_dense(const ModelSpec& s) {
    ModelSpec dense = s;
    dense.moe.reset();
    return CausalLM(LlamaForCausalLM(llama_config(dense)), dense);
  }
  static CausalLM make_moe(const ModelSpec& s, const MoEOptions& options) {
    const ModelSpec moe = with_moe_options(s, options);
    return CausalLM(LlamaForCausalLM(llama_config(moe), moe_feed_forward(options)), moe);
  }
  // A holder built by hand, as a CausalLM (`moe`: its MoE fields, when it has MoE layers).
  static CausalLM wrap(LlamaForCausalLM model, std::optional<MoEConfig> moe = {}) {
    auto s = spec(model->config(), moe);
    return CausalLM(std::move(model), std::move(s));
  }

  static std::vector<std::string> hf_names(const std::string& param, int64_t experts) {
    return hf::btx_to_hf_names(param, experts);
  }
  static hf::BtxSlot btx_slot(const std::string& hf_name) { return hf::hf_to_btx_slot(hf_name); }
  static FfnNaming ffn_naming() { return {}; }
  static MoEOptions hf_moe_options(const MoEConfig& moe) { return mixtral_moe_options(moe); }
};
static_assert(ModelFamily<LlamaFamily>);

BTX_NAMESPACE_END
}  // namespace btx
