// SPDX-License-Identifier: MIT
// The two small types a model family's name table is made of: where an HF tensor goes in
// btx (BtxSlot) and a family's btx -> HF naming (NameMap). Light on purpose: every family
// header includes it, while the checkpoint reader and writer (hf/checkpoint.hpp) that use
// them are included only where checkpoints are read or written.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
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

// One family's btx -> HF naming: to_hf(param, E) gives E names (expert order) for a packed
// expert parameter (is_packed_experts), else one name.
struct NameMap {
  std::function<std::vector<std::string>(const std::string& param, int64_t num_experts)> to_hf;
  SublayerNaming ffn;                       // the FFN, where MoE experts sit
  std::optional<SublayerNaming> attention;  // attention, when it can hold experts too

  [[nodiscard]] bool is_packed_experts(const std::string& param) const {
    return ffn.is_packed_experts(param) || (attention && attention->is_packed_experts(param));
  }
};

}  // namespace hf
BTX_NAMESPACE_END
}  // namespace btx
