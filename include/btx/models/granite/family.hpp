// SPDX-License-Identifier: MIT
// The Granite family (IBM Granite 3.x) as a ModelFamily, on the shared decoder with
// Granite's multipliers (hf_config.hpp): dense GraniteForCausalLM, MoE
// GraniteMoeForCausalLM, or GraniteMoeSharedForCausalLM when the MoE has a shared expert
// (ungated, as its shared_mlp; the slot is optional, so moe_has_shared_expert stays
// false). Its experts are stored packed under GraniteMoE's own names (hf_names.hpp), in
// the original format by default and read in transformers 5's too; there is no per-expert
// layout. Registered in models/registry.hpp.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include <btx/hf/name_map.hpp>
#include <btx/models/common/decoder_family.hpp>
#include <btx/models/family.hpp>
#include <btx/models/granite/hf_config.hpp>
#include <btx/models/granite/hf_names.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

struct GraniteFamily : DecoderFamily<GraniteFamily> {
  static std::string name() { return "granite"; }
  static std::string dense_model_type() { return "granite"; }
  static std::string moe_model_type() { return "granitemoe"; }
  // The MoE with a shared expert: read, and written for an MoE spec that has one.
  static std::vector<std::string> other_model_types() { return {"granitemoeshared"}; }
  // GraniteMoEShared's shared_mlp: optional (granitemoe has none), added ungated.
  static bool moe_may_have_shared_expert() { return true; }
  static bool moe_shared_expert_gated() { return false; }

  static hf::GraniteConfig parse(const nlohmann::json& j, const std::string& where) {
    return hf::granite_config_from_json(j, where);
  }
  static nlohmann::ordered_json dense_json(const DecoderConfig& c, const std::string& dtype) {
    return hf::granite_config_json(c, dtype);
  }
  static nlohmann::ordered_json moe_json(const DecoderConfig& c, const MoEConfig& moe,
                                         const std::string& dtype) {
    return hf::granitemoe_config_json(c, moe, dtype);
  }

  // The truth for checkpoint I/O: GraniteMoE's packed names, original format first.
  // (hf_names/btx_slot stay DecoderFamily's per-expert view, which no Granite file uses.)
  static std::vector<hf::ExpertNaming> expert_namings() { return hf::granite_expert_namings(); }
};
static_assert(ModelFamily<GraniteFamily>);

BTX_NAMESPACE_END
}  // namespace btx
