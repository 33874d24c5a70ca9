// SPDX-License-Identifier: MIT
// The two-way name table of the families whose HF names are btx's own but for the
// experts (Qwen2, Qwen3): btx's packed MoE parameters map to per-expert tensors, the
// layout transformers' save_pretrained writes for Qwen2-MoE and Qwen3-MoE:
//   model.layers.{i}.mlp.gate.weight          [E, D]    <-> model.layers.{i}.mlp.gate.weight
//   model.layers.{i}.mlp.experts.gate_proj    [E, F, D] <-> mlp.experts.{j}.gate_proj.weight
//   model.layers.{i}.mlp.experts.up_proj      [E, F, D] <-> mlp.experts.{j}.up_proj.weight
//   model.layers.{i}.mlp.experts.down_proj    [E, D, F] <-> mlp.experts.{j}.down_proj.weight
// and attention experts, which no transformers architecture has (btx's own checkpoints),
// the same way: self_attn.experts.{q,k,v,o}_proj <-> self_attn.experts.{j}.{q,...}_proj.weight.
// Everything else (the trunk, q/k norms, biases, a shared expert and its gate) keeps its name.
#pragma once

#include <cstdint>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include <btx/hf/name_map.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace hf {

namespace detail {
inline const std::regex& per_expert_btx_pattern() {
  static const std::regex re(
      R"(^model\.layers\.(\d+)\.(mlp|self_attn)\.experts\.(gate_proj|up_proj|down_proj|q_proj|k_proj|v_proj|o_proj)$)");
  return re;
}
inline const std::regex& per_expert_hf_pattern() {
  static const std::regex re(
      R"(^model\.layers\.(\d+)\.(mlp|self_attn)\.experts\.(\d+)\.(gate_proj|up_proj|down_proj|q_proj|k_proj|v_proj|o_proj)\.weight$)");
  return re;
}
}  // namespace detail

// The HF tensor names of a btx parameter: one name, or `num_experts` names (expert order)
// for a packed expert parameter.
inline std::vector<std::string> per_expert_hf_names(const std::string& param, int64_t num_experts) {
  std::smatch m;
  if (!std::regex_match(param, m, detail::per_expert_btx_pattern())) return {param};
  std::vector<std::string> out;
  for (int64_t j = 0; j < num_experts; ++j) {
    out.push_back("model.layers." + m[1].str() + "." + m[2].str() + ".experts." +
                  std::to_string(j) + "." + m[3].str() + ".weight");
  }
  return out;
}

// The btx slot an HF tensor name loads into.
inline BtxSlot per_expert_btx_slot(const std::string& hf_name) {
  std::smatch m;
  if (!std::regex_match(hf_name, m, detail::per_expert_hf_pattern()))
    return {hf_name, std::nullopt};
  return {"model.layers." + m[1].str() + "." + m[2].str() + ".experts." + m[4].str(),
          std::stoll(m[3].str())};
}

}  // namespace hf
BTX_NAMESPACE_END
}  // namespace btx
