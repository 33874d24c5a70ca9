// SPDX-License-Identifier: MIT
// The Granite family's expert layouts on disk. Dense Granite tensors keep btx's (Llama's)
// names. GraniteMoE stores its experts packed under names of its own; two namings exist,
// both with the prefix block_sparse_moe (not mlp):
//   btx                                     original (save_pretrained's default)      transformers
//   5 (save_original_format=False) mlp.gate.weight          [E, D]
//   block_sparse_moe.router.layer.weight      block_sparse_moe.router.weight mlp.experts.gate_proj
//   [E, F, D]      block_sparse_moe.input_linear.weight      block_sparse_moe.experts.gate_up_proj
//   mlp.experts.up_proj      [E, F, D]        (both [E, 2F, D]: gate rows, then up rows, along dim
//   1) mlp.experts.down_proj    [E, D, F]      block_sparse_moe.output_linear.weight
//   block_sparse_moe.experts.down_proj
// GraniteMoEShared's shared_mlp (ungated) has one naming in both formats:
//   mlp.shared_expert.gate_proj.weight [S, D]  shared_mlp.input_linear.weight [2S, D] (gate rows
//   mlp.shared_expert.up_proj.weight   [S, D]    first, then up, along dim 0)
//   mlp.shared_expert.down_proj.weight [D, S]  shared_mlp.output_linear.weight [D, S]
// (each under model.layers.{i}.). There is no per-expert layout: GraniteMoE checkpoints
// never hold one tensor per expert. Attention experts, which no Granite has, keep btx's
// names, packed.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <btx/core/sublayer_naming.hpp>
#include <btx/hf/name_map.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace hf {

// The on-disk names of one GraniteMoE format, relative to model.layers.{i}.block_sparse_moe.
struct GraniteMoeNames {
  std::string router, gate_up, down;
};
inline GraniteMoeNames granite_original_names() {
  return {"router.layer.weight", "input_linear.weight", "output_linear.weight"};
}
inline GraniteMoeNames granite_transformers5_names() {
  return {"router.weight", "experts.gate_up_proj", "experts.down_proj"};
}

// The pieces of btx tensor `param` in the format `names` gives: the FFN's experts, router
// and shared expert renamed (gate and up fused), everything else under its own name.
inline std::vector<HfPiece> granite_pieces(const GraniteMoeNames& names, const std::string& param) {
  const SublayerNaming ffn = SublayerNaming::ffn();
  if (const auto layer = ffn.layer_of(param); layer && ffn.is_sublayer_tensor(param)) {
    const std::string moe = ffn.layer_prefix(*layer) + "block_sparse_moe.";
    const std::string shared = ffn.layer_prefix(*layer) + "shared_mlp.";
    if (param == ffn.router_name(*layer)) return {{moe + names.router}};
    if (param == ffn.experts_name(*layer, "gate_proj")) return {{moe + names.gate_up, {}, 0, 2, 1}};
    if (param == ffn.experts_name(*layer, "up_proj")) return {{moe + names.gate_up, {}, 1, 2, 1}};
    if (param == ffn.experts_name(*layer, "down_proj")) return {{moe + names.down}};
    if (param == ffn.shared_expert_name(*layer, "gate_proj"))
      return {{shared + "input_linear.weight", {}, 0, 2, 0}};
    if (param == ffn.shared_expert_name(*layer, "up_proj"))
      return {{shared + "input_linear.weight", {}, 1, 2, 0}};
    if (param == ffn.shared_expert_name(*layer, "down_proj"))
      return {{shared + "output_linear.weight"}};
  }
  return {{param}};
}

// Both formats, the one transformers' save_pretrained writes by default first (what btx
// writes unless asked otherwise); a reader takes whichever a checkpoint holds.
inline std::vector<ExpertNaming> granite_expert_namings() {
  std::vector<ExpertNaming> out;
  for (const auto& names : {granite_original_names(), granite_transformers5_names()}) {
    out.push_back({ExpertLayout::packed, [names](const std::string& param, int64_t) {
                     return granite_pieces(names, param);
                   }});
  }
  return out;
}

}  // namespace hf
BTX_NAMESPACE_END
}  // namespace btx
