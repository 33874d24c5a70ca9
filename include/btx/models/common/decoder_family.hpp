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
// A family overrides any static by declaring its own (Llama's Mixtral names, Qwen2's
// make_moe adding the shared-expert slot).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/core/causal_lm.hpp>
#include <btx/core/model_spec.hpp>
#include <btx/core/sublayer_naming.hpp>
#include <btx/hf/name_map.hpp>
#include <btx/models/common/attention_experts.hpp>
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
    if (spec.moe && spec.moe->expert_size > 0) c.intermediate_size = spec.moe->expert_size;
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

  // The dense decoder `s` describes, and this family's dense spec of a decoder (its
  // dense_json refuses, naming the field, what the architecture cannot carry).
  static DecoderConfig decoder_of(const ModelSpec& s) {
    return F::parse(s.config, "model spec").decoder;
  }
  static ModelSpec from_decoder(const DecoderConfig& c, const std::string& dtype) {
    return F::spec(c, std::nullopt, dtype);
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
    const auto attention = attention_factory(dense);
    return CausalLM(DecoderForCausalLM(decoder_config(dense), FeedForwardFactory{}, attention),
                    dense);
  }
  // The MoE model spec.moe describes, its router resolved once (the model's spec keeps it).
  static CausalLM make_moe(const ModelSpec& s) {
    if (!s.moe) throw std::invalid_argument("btx: make_moe needs a spec with MoE fields");
    ModelSpec moe = s;
    // An MoE architecture that always has the shared-expert slot (Qwen2-MoE, GLM-4-MoE):
    // zero-width when nothing fills it, gated as the architecture gates it.
    if constexpr (requires { F::moe_has_shared_expert(); }) {
      if (F::moe_has_shared_expert() && !moe.moe->shared_expert_size)
        moe.moe->shared_expert_size = 0;
    }
    if constexpr (requires { F::moe_shared_expert_gated(); })
      moe.moe->shared_expert_gated = F::moe_shared_expert_gated();
    moe.moe = resolved(*moe.moe);
    const auto attention = attention_factory(moe);
    // Leading dense layers (moe.dense_layers) keep the dense model's FFN width.
    const int64_t dense_F = F::parse(s.config, "model spec").decoder.intermediate_size;
    return CausalLM(
        DecoderForCausalLM(decoder_config(moe),
                           moe_feed_forward(*moe.moe, GateActivation::silu, dense_F), attention),
        moe);
  }
  // Attention experts in every layer when spec.attention_moe asks (its router resolved
  // here, kept in `s`); empty otherwise (grouped-query attention).
  static AttentionFactory attention_factory(ModelSpec& s) {
    if (!s.attention_moe) return {};
    s.attention_moe = resolved(*s.attention_moe);
    return [moe = *s.attention_moe](const DecoderConfig& c, int64_t layer) {
      return torch::nn::AnyModule(AttentionExperts(c, layer, moe));
    };
  }
  // A model built by hand (a DecoderForCausalLM, with MoE layers when `moe` is given) as a
  // CausalLM of this family.
  static CausalLM wrap(DecoderForCausalLM model, std::optional<MoEConfig> moe = {}) {
    auto s = F::spec(model->config(), std::move(moe));
    return CausalLM(std::move(model), std::move(s));
  }

  static std::vector<std::string> hf_names(const std::string& param, int64_t experts) {
    return hf::per_expert_hf_names(param, experts);
  }
  static hf::BtxSlot btx_slot(const std::string& hf_name) {
    return hf::per_expert_btx_slot(hf_name);
  }
  static SublayerNaming ffn_naming() { return SublayerNaming::ffn(); }
  static SublayerNaming attention_naming() { return SublayerNaming::attention(); }
};

BTX_NAMESPACE_END
}  // namespace btx
