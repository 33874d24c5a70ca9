// SPDX-License-Identifier: MIT
// The Qwen3 family's two-way name table between btx parameter names and Hugging Face
// tensor names. Dense Qwen3 names are identical (q_norm/k_norm included); btx's packed MoE
// parameters map to Qwen3-MoE's per-expert tensors, the layout transformers writes:
//   model.layers.{i}.mlp.gate.weight          [E, D]    <-> model.layers.{i}.mlp.gate.weight
//   model.layers.{i}.mlp.experts.gate_proj    [E, F, D] <-> mlp.experts.{j}.gate_proj.weight
//   model.layers.{i}.mlp.experts.up_proj      [E, F, D] <-> mlp.experts.{j}.up_proj.weight
//   model.layers.{i}.mlp.experts.down_proj    [E, D, F] <-> mlp.experts.{j}.down_proj.weight
#pragma once

#include <cstdint>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include <btx/hf/checkpoint.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace hf {

namespace detail {
inline const std::regex& qwen3_btx_experts_pattern() {
  static const std::regex re(
      R"(^model\.layers\.(\d+)\.mlp\.experts\.(gate_proj|up_proj|down_proj)$)");
  return re;
}
inline const std::regex& qwen3_hf_expert_pattern() {
  static const std::regex re(
      R"(^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$)");
  return re;
}
}  // namespace detail

// The HF tensor names of a btx parameter: one name, or `num_experts` names (expert order)
// for a packed expert parameter.
inline std::vector<std::string> qwen3_hf_names(const std::string& param, int64_t num_experts) {
  std::smatch m;
  if (!std::regex_match(param, m, detail::qwen3_btx_experts_pattern())) return {param};
  std::vector<std::string> out;
  for (int64_t j = 0; j < num_experts; ++j) {
    out.push_back("model.layers." + m[1].str() + ".mlp.experts." + std::to_string(j) + "." +
                  m[2].str() + ".weight");
  }
  return out;
}

// The btx slot an HF tensor name loads into.
inline BtxSlot qwen3_btx_slot(const std::string& hf_name) {
  std::smatch m;
  if (!std::regex_match(hf_name, m, detail::qwen3_hf_expert_pattern()))
    return {hf_name, std::nullopt};
  return {"model.layers." + m[1].str() + ".mlp.experts." + m[3].str(), std::stoll(m[2].str())};
}

}  // namespace hf
BTX_NAMESPACE_END
}  // namespace btx
