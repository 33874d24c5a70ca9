// SPDX-License-Identifier: MIT
// The GLM-4-MoE family as a ModelFamily: Glm4MoeForCausalLM, dense (every layer dense, its
// dense form) or MoE (leading dense layers, then btx's MoE layers routed by sigmoid_topk,
// with ungated shared experts: the slot is always there, zero-width when unfilled). Its
// names are transformers' per-expert ones but for the shared experts
// (mlp.shared_experts.*); packed experts are read and written too. Seeds of other families
// whose layer GLM-4-MoE's can express exactly (Llama, Qwen2, Qwen3 without an o_proj bias
// or a window) are written as it through from_decoder (btx-merge's `architecture`).
// Registered in models/registry.hpp.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include <btx/core/model_spec.hpp>
#include <btx/hf/name_map.hpp>
#include <btx/models/common/decoder_family.hpp>
#include <btx/models/family.hpp>
#include <btx/models/glm4_moe/hf_config.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

struct Glm4MoeFamily : DecoderFamily<Glm4MoeFamily> {
  static std::string name() { return "glm4_moe"; }
  // One model_type for both: the dense form is a GLM-4-MoE whose every layer is dense.
  static std::string dense_model_type() { return "glm4_moe"; }
  static std::string moe_model_type() { return "glm4_moe"; }
  static bool moe_has_shared_expert() { return true; }
  static bool moe_shared_expert_gated() { return false; }
  static RouterChoice merge_router(int64_t k) { return RouterChoice("sigmoid_topk", {{"k", k}}); }

  static hf::Glm4MoeConfig parse(const nlohmann::json& j, const std::string& where) {
    return hf::glm4_moe_config_from_json(j, where);
  }
  static nlohmann::ordered_json dense_json(const DecoderConfig& c, const std::string& dtype) {
    return hf::glm4_moe_dense_config_json(c, dtype);
  }
  static nlohmann::ordered_json moe_json(const DecoderConfig& c, const MoEConfig& moe,
                                         const std::string& dtype) {
    return hf::glm4_moe_config_json(c, moe, dtype);
  }

  // btx's mlp.shared_expert.* is GLM-4-MoE's mlp.shared_experts.*.
  static std::vector<std::string> hf_names(const std::string& param, int64_t experts) {
    auto names = hf::per_expert_hf_names(param, experts);
    for (auto& n : names) replace(n, ".mlp.shared_expert.", ".mlp.shared_experts.");
    return names;
  }
  static hf::BtxSlot btx_slot(const std::string& hf_name) {
    std::string n = hf_name;
    replace(n, ".mlp.shared_experts.", ".mlp.shared_expert.");
    return hf::per_expert_btx_slot(n);
  }
  static std::vector<hf::ExpertNaming> expert_namings() {
    return {{hf::ExpertLayout::per_expert, hf::per_expert_pieces(&hf_names)},
            {hf::ExpertLayout::packed,
             hf::packed_pieces(ffn_naming(), &hf_names, /*ffn_as_to_hf=*/true)}};
  }

 private:
  static void replace(std::string& s, const std::string& from, const std::string& to) {
    if (const auto at = s.find(from); at != std::string::npos) s.replace(at, from.size(), to);
  }
};
static_assert(ModelFamily<Glm4MoeFamily>);

BTX_NAMESPACE_END
}  // namespace btx
