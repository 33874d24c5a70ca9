// SPDX-License-Identifier: MIT
// Where the feed-forward block, the packed experts and the router live among a decoder's
// tensor names. btx's MoE naming contract hangs the MoE layer where the dense FFN was:
//   dense   {layers}{i}.{slot}.{gate,up,down}_proj.weight     [F, D] / [F, D] / [D, F]
//   experts {layers}{i}.{slot}.experts.{gate,up,down}_proj    [E, F, D] / [E, F, D] / [E, D, F]
//   router  {layers}{i}.{slot}.gate.weight                    [E, D]
//   shared  {layers}{i}.{slot}.shared_expert.{gate,up,down}_proj.weight, and its gate
//           {layers}{i}.{slot}.shared_expert_gate.weight      [1, D]   (when the layer has one)
// The defaults are transformers' decoder layout ("model.layers.", slot "mlp"); a model
// family with another layout gives its own FfnNaming.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

struct FfnNaming {
  std::string layers = "model.layers.";  // layer i's tensors start with layers + i + "."
  std::string slot = "mlp";              // the FFN's child name inside a layer
  // Gated FFN projections: the first two are [F, D] (gate, up), the last [D, F] (down).
  std::vector<std::string> projections = {"gate_proj", "up_proj", "down_proj"};

  [[nodiscard]] std::string layer_prefix(int64_t layer) const {
    return layers + std::to_string(layer) + ".";
  }
  [[nodiscard]] std::string ffn_prefix(int64_t layer) const {
    return layer_prefix(layer) + slot + ".";
  }
  [[nodiscard]] std::string dense_ffn_name(int64_t layer, const std::string& proj) const {
    return ffn_prefix(layer) + proj + ".weight";
  }
  [[nodiscard]] std::string experts_name(int64_t layer, const std::string& proj) const {
    return ffn_prefix(layer) + "experts." + proj;
  }
  [[nodiscard]] std::string router_name(int64_t layer) const {
    return ffn_prefix(layer) + "gate.weight";
  }
  [[nodiscard]] std::string shared_expert_name(int64_t layer, const std::string& proj) const {
    return ffn_prefix(layer) + "shared_expert." + proj + ".weight";
  }
  [[nodiscard]] std::string shared_expert_gate_name(int64_t layer) const {
    return ffn_prefix(layer) + "shared_expert_gate.weight";
  }
  [[nodiscard]] bool is_down(const std::string& proj) const { return proj == projections.back(); }

  // Layer index of a name under {layers}{i}., if any.
  [[nodiscard]] std::optional<int64_t> layer_of(const std::string& name) const {
    if (name.rfind(layers, 0) != 0) return std::nullopt;
    const auto dot = name.find('.', layers.size());
    if (dot == std::string::npos || dot == layers.size()) return std::nullopt;
    const std::string digits = name.substr(layers.size(), dot - layers.size());
    if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      return std::nullopt;
    }
    return std::stoll(digits);
  }
  [[nodiscard]] bool is_ffn_tensor(const std::string& name) const {
    const auto layer = layer_of(name);
    return layer && name.rfind(ffn_prefix(*layer), 0) == 0;
  }
  // A packed expert parameter [E, ...] of the MoE contract (one HF tensor per expert).
  [[nodiscard]] bool is_packed_experts(const std::string& name) const {
    const auto layer = layer_of(name);
    if (!layer) return false;
    for (const auto& p : projections) {
      if (name == experts_name(*layer, p)) return true;
    }
    return false;
  }
  [[nodiscard]] bool is_router(const std::string& name) const {
    const auto layer = layer_of(name);
    return layer && name == router_name(*layer);
  }
};

BTX_NAMESPACE_END
}  // namespace btx
