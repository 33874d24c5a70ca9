// SPDX-License-Identifier: MIT
// Where btx tensors sit in a Hugging Face checkpoint's tensors under a family's NameMap:
// the placements of each btx tensor (whole, one expert's row, or a chunk of a fused HF
// tensor such as gate_up_proj) in one expert layout, the layout a checkpoint holds for a
// tensor, and the groups of btx tensors a writer must produce together. The machinery of
// hf/checkpoint.hpp's reader and writer.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/hf/name_map.hpp>
#include <btx/io/checkpoint_reader.hpp>
#include <btx/io/safetensors_writer.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace hf {
namespace detail {

// One HF tensor's place in a btx parameter: `param` (its row `expert` for packed experts)
// is chunk `part` of `parts` along `dim` of the HF tensor `hf_name`, whose shape is `shape`.
struct Placement {
  std::string hf_name;
  std::string param;
  std::optional<int64_t> expert;
  int64_t part = 0, parts = 1, dim = 0;
  std::vector<int64_t> shape;  // the HF tensor's shape

  // The part of the HF tensor `hf` that is this placement's btx tensor (or row).
  [[nodiscard]] torch::Tensor piece_of(const torch::Tensor& hf) const {
    if (parts == 1) return hf;
    const int64_t len = hf.size(dim) / parts;
    return hf.narrow(dim, part * len, len);
  }
};

// The HF tensors btx tensor `t` maps to under `naming`.
inline std::vector<Placement> placements(const io::TensorDecl& t, const NameMap& names,
                                         const ExpertNaming& naming) {
  const bool packed = names.is_packed_experts(t.name);
  if (packed && t.shape.empty()) {
    throw std::invalid_argument("MoE parameter " + t.name + " must be packed [E, ...]");
  }
  const auto pieces = naming.pieces(t.name, packed ? t.shape[0] : 0);
  if (pieces.empty()) {
    throw std::logic_error("btx::hf: the " + to_string(naming.layout) +
                           " name map gives no HF tensor for " + t.name);
  }
  std::vector<Placement> out;
  for (const auto& piece : pieces) {
    if (piece.expert.has_value() != packed && !(packed && pieces.size() == 1 && !piece.expert)) {
      throw std::logic_error("btx::hf: the " + to_string(naming.layout) + " name map gives " +
                             std::to_string(pieces.size()) + " HF names for " + t.name);
    }
    auto shape = piece.expert ? std::vector<int64_t>(t.shape.begin() + 1, t.shape.end()) : t.shape;
    if (piece.parts > 1) {
      if (piece.dim < 0 || piece.dim >= int64_t(shape.size())) {
        throw std::logic_error("btx::hf: chunk dim " + std::to_string(piece.dim) + " of " +
                               piece.name + " is outside " + t.name);
      }
      shape[size_t(piece.dim)] *= piece.parts;
    }
    out.push_back(
        {piece.name, t.name, piece.expert, piece.part, piece.parts, piece.dim, std::move(shape)});
  }
  return out;
}

// Every HF tensor the named tensors map to under `naming`, in order.
inline std::vector<Placement> placements(const std::vector<io::TensorDecl>& tensors,
                                         const NameMap& names, const ExpertNaming& naming) {
  std::vector<Placement> out;
  for (const auto& t : tensors) {
    auto more = placements(t, names, naming);
    out.insert(out.end(), std::make_move_iterator(more.begin()),
               std::make_move_iterator(more.end()));
  }
  return out;
}

// The placements of `t` in the first layout whose every HF tensor the checkpoint holds
// (per tensor: a checkpoint is read in whichever layout it was written); when none fits,
// a FormatError naming the tensor the default layout lacks (and the other layouts' names).
inline std::vector<Placement> found_placements(const io::TensorDecl& t, const NameMap& names,
                                               const io::CheckpointReader& ckpt) {
  const auto layouts = names.layouts();
  std::string lacking, alternatives;
  for (size_t l = 0; l < layouts.size(); ++l) {
    auto pls = placements(t, names, layouts[l]);
    const auto missing = std::find_if(
        pls.begin(), pls.end(), [&](const Placement& p) { return !ckpt.contains(p.hf_name); });
    if (missing == pls.end()) return pls;
    if (l == 0) {
      lacking = missing->hf_name;
    } else if (missing->hf_name != lacking) {
      alternatives +=
          ", nor \"" + missing->hf_name + "\" (" + to_string(layouts[l].layout) + " experts)";
    }
  }
  throw io::FormatError("checkpoint " + ckpt.dir().string() + " lacks tensor \"" + lacking + "\"" +
                        alternatives + " (for btx parameter " + t.name + ")");
}

// btx tensors that must be produced together because they share an HF tensor (gate_proj
// and up_proj in a packed gate_up_proj), as index lists in order of first member.
inline std::vector<std::vector<size_t>> write_groups(
    const std::vector<std::vector<Placement>>& placed) {
  std::vector<size_t> parent(placed.size());
  for (size_t i = 0; i < parent.size(); ++i) parent[i] = i;
  const auto root = [&parent](size_t i) {
    while (parent[i] != i) i = parent[i] = parent[parent[i]];
    return i;
  };
  std::map<std::string, size_t> owner;
  for (size_t i = 0; i < placed.size(); ++i) {
    for (const auto& pl : placed[i]) {
      const auto [it, fresh] = owner.emplace(pl.hf_name, i);
      if (!fresh) parent[root(i)] = root(it->second);
    }
  }
  std::map<size_t, size_t> group_of_root;
  std::vector<std::vector<size_t>> groups;
  for (size_t i = 0; i < placed.size(); ++i) {
    const auto [it, fresh] = group_of_root.emplace(root(i), groups.size());
    if (fresh) groups.emplace_back();
    groups[it->second].push_back(i);
  }
  return groups;
}

}  // namespace detail
}  // namespace hf
BTX_NAMESPACE_END
}  // namespace btx
