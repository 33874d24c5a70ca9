// SPDX-License-Identifier: MIT
// The Qwen3 family as a ModelFamily: dense Qwen3ForCausalLM (the shared decoder with
// per-head q/k norms) and MoE Qwen3MoeForCausalLM (btx's MoE layers in each FFN slot,
// routed as transformers' Qwen3-MoE), with transformers' per-expert names; the statics
// they share with Qwen2 come from DecoderFamily. Registered in models/registry.hpp.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include <btx/core/model_spec.hpp>
#include <btx/models/common/decoder_family.hpp>
#include <btx/models/family.hpp>
#include <btx/models/qwen3/hf_config.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

struct Qwen3Family : DecoderFamily<Qwen3Family> {
  static std::string name() { return "qwen3"; }
  static std::string dense_model_type() { return "qwen3"; }
  static std::string moe_model_type() { return "qwen3_moe"; }

  static hf::Qwen3Config parse(const nlohmann::json& j, const std::string& where) {
    return hf::qwen3_config_from_json(j, where);
  }
  static nlohmann::ordered_json dense_json(const DecoderConfig& c, const std::string& dtype) {
    return hf::qwen3_config_json(c, dtype);
  }
  static nlohmann::ordered_json moe_json(const DecoderConfig& c, const MoEConfig& moe,
                                         const std::string& dtype) {
    return hf::qwen3_moe_config_json(c, moe, dtype);
  }
};
static_assert(ModelFamily<Qwen3Family>);

BTX_NAMESPACE_END
}  // namespace btx
