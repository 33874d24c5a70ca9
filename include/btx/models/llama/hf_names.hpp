// SPDX-License-Identifier: MIT
// The Llama family's two-way name table between btx parameter names and Hugging Face
// tensor names. Dense Llama names are identical; btx's packed MoE parameters (the naming
// contract) map to Mixtral's classic per-expert tensors:
//   model.layers.{i}.mlp.gate.weight          [E, D]    <-> block_sparse_moe.gate.weight
//   model.layers.{i}.mlp.experts.gate_proj    [E, F, D] <-> block_sparse_moe.experts.{j}.w1.weight
//   model.layers.{i}.mlp.experts.up_proj      [E, F, D] <-> block_sparse_moe.experts.{j}.w3.weight
//   model.layers.{i}.mlp.experts.down_proj    [E, D, F] <-> block_sparse_moe.experts.{j}.w2.weight
#pragma once

#include <cstdint>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include <btx/hf/name_map.hpp>
#include <btx/models/common/hf_expert_names.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace hf {

namespace detail {
inline const std::regex& btx_moe_pattern() {
  static const std::regex re(
      R"(^model\.layers\.(\d+)\.mlp\.(gate\.weight|experts\.(gate_proj|up_proj|down_proj))$)");
  return re;
}
inline const std::regex& hf_moe_pattern() {
  static const std::regex re(
      R"(^model\.layers\.(\d+)\.block_sparse_moe\.(gate\.weight|experts\.(\d+)\.(w1|w2|w3)\.weight)$)");
  return re;
}
inline std::string hf_expert_suffix(const std::string& btx_proj) {
  return btx_proj == "gate_proj" ? "w1" : btx_proj == "up_proj" ? "w3" : "w2";
}
inline std::string btx_expert_proj(const std::string& hf_w) {
  return hf_w == "w1" ? "gate_proj" : hf_w == "w3" ? "up_proj" : "down_proj";
}
}  // namespace detail

// True for a btx parameter name that follows the MoE naming contract.
inline bool is_btx_moe_name(const std::string& param) {
  return std::regex_match(param, detail::btx_moe_pattern());
}

// The HF tensor names of a btx parameter: one name, or `num_experts` names (expert order)
// for a packed expert parameter (Mixtral's for the FFN's; attention experts, which Mixtral
// has none of, as in btx's own per-expert layout).
inline std::vector<std::string> btx_to_hf_names(const std::string& param, int64_t num_experts) {
  std::smatch m;
  if (!std::regex_match(param, m, detail::btx_moe_pattern())) {
    return per_expert_hf_names(param, num_experts);
  }
  const std::string prefix = "model.layers." + m[1].str() + ".block_sparse_moe.";
  if (m[2] == "gate.weight") return {prefix + "gate.weight"};
  std::vector<std::string> out;
  for (int64_t j = 0; j < num_experts; ++j) {
    out.push_back(prefix + "experts." + std::to_string(j) + "." +
                  detail::hf_expert_suffix(m[3].str()) + ".weight");
  }
  return out;
}

// The btx slot an HF tensor name loads into.
inline BtxSlot hf_to_btx_slot(const std::string& hf_name) {
  std::smatch m;
  if (!std::regex_match(hf_name, m, detail::hf_moe_pattern())) return per_expert_btx_slot(hf_name);
  const std::string prefix = "model.layers." + m[1].str() + ".mlp.";
  if (m[2] == "gate.weight") return {prefix + "gate.weight", std::nullopt};
  return {prefix + "experts." + detail::btx_expert_proj(m[4].str()), std::stoll(m[3].str())};
}

}  // namespace hf
BTX_NAMESPACE_END
}  // namespace btx
