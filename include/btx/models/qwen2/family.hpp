// SPDX-License-Identifier: MIT
// The Qwen2 family (Qwen2, Qwen2.5) as a ModelFamily: dense Qwen2ForCausalLM (the shared
// decoder with q/k/v biases) and MoE Qwen2MoeForCausalLM (btx's MoE layers in each FFN
// slot, routed as transformers' Qwen2-MoE, with its always-on shared expert: zero-width
// unless one is asked for), with transformers' per-expert names; the statics it shares
// with Qwen3 come from DecoderFamily. Registered in models/registry.hpp.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include <btx/core/model_spec.hpp>
#include <btx/models/common/decoder_family.hpp>
#include <btx/models/family.hpp>
#include <btx/models/qwen2/hf_config.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

struct Qwen2Family : DecoderFamily<Qwen2Family> {
  static std::string name() { return "qwen2"; }
  static std::string dense_model_type() { return "qwen2"; }
  static std::string moe_model_type() { return "qwen2_moe"; }
  static bool moe_has_shared_expert() { return true; }

  static hf::Qwen2Config parse(const nlohmann::json& j, const std::string& where) {
    return hf::qwen2_config_from_json(j, where);
  }
  static nlohmann::ordered_json dense_json(const DecoderConfig& c, const std::string& dtype) {
    return hf::qwen2_config_json(c, dtype);
  }
  static nlohmann::ordered_json moe_json(const DecoderConfig& c, const MoEConfig& moe,
                                         const std::string& dtype) {
    return hf::qwen2_moe_config_json(c, moe, dtype);
  }
};
static_assert(ModelFamily<Qwen2Family>);

BTX_NAMESPACE_END
}  // namespace btx
