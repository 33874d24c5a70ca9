// SPDX-License-Identifier: MIT
// The small types a model family's name table is made of: where an HF tensor goes in btx
// (BtxSlot), the layouts an MoE checkpoint stores its experts in (ExpertLayout, HfPiece)
// and a family's btx -> HF naming (NameMap). Light on purpose: every family header
// includes it, while the checkpoint reader and writer (hf/checkpoint.hpp) that use them
// are included only where checkpoints are read or written.
//
// Two expert layouts exist on disk. `per_expert`: one tensor per expert and projection
// (Mixtral's block_sparse_moe.experts.{j}.w1.weight, Qwen-MoE's mlp.experts.{j}.gate_proj.weight),
// what transformers' save_pretrained writes by default for those families. `packed`: the
// 3-D tensors transformers 5 keeps in memory and writes with save_original_format=False
// (and newer models always): mlp.experts.gate_up_proj [E, 2F, D] (gate rows, then up rows)
// and mlp.experts.down_proj [E, D, F]; GraniteMoE's own format is packed too.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/core/sublayer_naming.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace hf {

// Where one HF tensor lives in btx: a parameter, and for packed experts the row `expert`.
struct BtxSlot {
  std::string param;
  std::optional<int64_t> expert;  // index into dim 0 of a packed [E, ...] parameter
  bool operator==(const BtxSlot&) const = default;
};

enum class ExpertLayout { per_expert, packed };

inline ExpertLayout parse_expert_layout(const std::string& name) {
  if (name == "per_expert") return ExpertLayout::per_expert;
  if (name == "packed") return ExpertLayout::packed;
  throw std::invalid_argument("expert layout '" + name + "' is not one of per_expert, packed");
}
inline std::string to_string(ExpertLayout l) {
  return l == ExpertLayout::per_expert ? "per_expert" : "packed";
}

// Where a btx tensor, or expert `expert`'s row of a packed [E, ...] one, sits in the HF
// tensor `name`: all of it, or chunk `part` of `parts` equal chunks along `dim`
// (transformers' gate_up_proj [E, 2F, D] holds gate_proj as chunk 0 and up_proj as chunk 1
// along dim 1).
struct HfPiece {
  std::string name;
  std::optional<int64_t> expert;
  int64_t part = 0, parts = 1, dim = 0;
  bool operator==(const HfPiece&) const = default;
};

// A layout's naming: the pieces of btx tensor `param` (`num_experts` rows when it is a
// packed expert parameter, else 0).
using PieceNaming =
    std::function<std::vector<HfPiece>(const std::string& param, int64_t num_experts)>;

struct ExpertNaming {
  ExpertLayout layout = ExpertLayout::per_expert;
  PieceNaming pieces;
};

// One family's btx -> HF naming: to_hf(param, E) gives E names (expert order) for a packed
// expert parameter (is_packed_experts), else one name: its per-expert layout. `namings`
// lists the layouts its checkpoints come in, the one it writes by default first; empty:
// per_expert from to_hf, then packed as transformers 5 names it (packed_pieces below).
struct NameMap {
  std::function<std::vector<std::string>(const std::string& param, int64_t num_experts)> to_hf;
  SublayerNaming ffn;                       // the FFN, where MoE experts sit
  std::optional<SublayerNaming> attention;  // attention, when it can hold experts too
  std::vector<ExpertNaming> namings;

  [[nodiscard]] bool is_packed_experts(const std::string& param) const {
    return ffn.is_packed_experts(param) || (attention && attention->is_packed_experts(param));
  }
  // Every layout the family reads, in the order a reader tries them.
  [[nodiscard]] std::vector<ExpertNaming> layouts() const;
  // The naming a writer uses for `layout` (the family's default when empty); throws naming
  // the layouts the family has when it has not this one.
  [[nodiscard]] ExpertNaming layout(std::optional<ExpertLayout> layout) const {
    const auto all = layouts();
    if (!layout) return all.front();
    for (const auto& n : all)
      if (n.layout == *layout) return n;
    std::string have;
    for (const auto& n : all) {
      const std::string name = to_string(n.layout);
      if (have.find(name) == std::string::npos) have += (have.empty() ? "" : ", ") + name;
    }
    throw std::invalid_argument("expert_layout '" + to_string(*layout) +
                                "' is not one this model family writes (it has: " + have + ")");
  }
};

// The per-expert layout of `to_hf`: one whole tensor, or expert j's row as its j-th name.
inline PieceNaming per_expert_pieces(
    std::function<std::vector<std::string>(const std::string&, int64_t)> to_hf) {
  return [to_hf = std::move(to_hf)](const std::string& param, int64_t experts) {
    std::vector<HfPiece> out;
    const auto names = to_hf(param, experts);
    for (size_t j = 0; j < names.size(); ++j)
      out.push_back({names[j], experts > 0 ? std::optional<int64_t>(int64_t(j)) : std::nullopt});
    return out;
  };
}

// transformers 5's packed layout over a family whose MoE tensors otherwise keep btx's
// names (Mixtral, Qwen2-MoE, Qwen3-MoE, FlexOlmo, GLM-4-MoE): the FFN experts' gate_proj
// and up_proj as the two halves of {slot}.experts.gate_up_proj along dim 1, down_proj whole,
// every other tensor of an FFN (router, shared experts, dense layers) and any other packed
// experts under btx's name (as `to_hf` names them with `ffn_as_to_hf`: GLM-4-MoE's
// shared_experts), the rest as `to_hf` names it.
inline PieceNaming packed_pieces(
    SublayerNaming ffn, std::function<std::vector<std::string>(const std::string&, int64_t)> to_hf,
    bool ffn_as_to_hf = false) {
  return [ffn = std::move(ffn), to_hf = std::move(to_hf), ffn_as_to_hf](
             const std::string& param, int64_t experts) -> std::vector<HfPiece> {
    if (const auto layer = ffn.layer_of(param)) {
      const std::string gate_up = ffn.prefix(*layer) + "experts.gate_up_proj";
      if (param == ffn.experts_name(*layer, "gate_proj")) return {{gate_up, {}, 0, 2, 1}};
      if (param == ffn.experts_name(*layer, "up_proj")) return {{gate_up, {}, 1, 2, 1}};
      if (ffn.is_sublayer_tensor(param) && (experts > 0 || !ffn_as_to_hf)) return {{param}};
    }
    if (experts > 0) return {{param}};
    return {{to_hf(param, 0).front()}};
  };
}

inline std::vector<ExpertNaming> NameMap::layouts() const {
  if (!namings.empty()) return namings;
  return {{ExpertLayout::per_expert, per_expert_pieces(to_hf)},
          {ExpertLayout::packed, packed_pieces(ffn, to_hf)}};
}

}  // namespace hf
BTX_NAMESPACE_END
}  // namespace btx
