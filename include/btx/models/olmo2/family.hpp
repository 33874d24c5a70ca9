// SPDX-License-Identifier: MIT
// The OLMo family as a ModelFamily: dense Olmo2ForCausalLM and Olmo3ForCausalLM (the shared
// decoder with post-branch norms, full-width q/k norms and, for OLMo3, a sliding window on
// some layers) and MoE FlexOlmoForCausalLM (btx's MoE layers in each FFN slot, routed as
// transformers' FlexOlmo), with transformers' per-expert names (FlexOlmo converts through
// Qwen2-MoE's rules); the statics it shares with Qwen come from DecoderFamily. A dense model
// is written as olmo3 when some layer slides, else as olmo2. Registered in
// models/registry.hpp.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include <btx/core/model_spec.hpp>
#include <btx/models/common/decoder_family.hpp>
#include <btx/models/family.hpp>
#include <btx/models/olmo2/hf_config.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

struct Olmo2Family : DecoderFamily<Olmo2Family> {
  static std::string name() { return "olmo2"; }
  static std::string dense_model_type() { return "olmo2"; }
  static std::string moe_model_type() { return "flex_olmo"; }
  static std::vector<std::string> other_model_types() { return {"olmo3"}; }

  static hf::Olmo2Config parse(const nlohmann::json& j, const std::string& where) {
    return hf::olmo2_config_from_json(j, where);
  }
  static nlohmann::ordered_json dense_json(const DecoderConfig& c, const std::string& dtype) {
    return hf::olmo_slides(c) ? hf::olmo3_config_json(c, dtype) : hf::olmo2_config_json(c, dtype);
  }
  static nlohmann::ordered_json moe_json(const DecoderConfig& c, const MoEConfig& moe,
                                         const std::string& dtype) {
    return hf::flex_olmo_config_json(c, moe, dtype);
  }
};
static_assert(ModelFamily<Olmo2Family>);

BTX_NAMESPACE_END
}  // namespace btx
