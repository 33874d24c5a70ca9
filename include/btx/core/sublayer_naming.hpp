// SPDX-License-Identifier: MIT
// Where a sublayer that can become experts sits among a decoder's tensor names. btx's
// MoE naming contract hangs the MoE layer where the dense sublayer was; for the FFN:
//   dense   {layers}{i}.{slot}.{gate,up,down}_proj.weight     [F, D] / [F, D] / [D, F]
//   experts {layers}{i}.{slot}.experts.{gate,up,down}_proj    [E, F, D] / [E, F, D] / [E, D, F]
//   router  {layers}{i}.{slot}.gate.weight                    [E, D]
//   shared  {layers}{i}.{slot}.shared_expert.{gate,up,down}_proj.weight, and its gate
//           {layers}{i}.{slot}.shared_expert_gate.weight      [1, D]   (when the layer has one)
// and the same shapes for any other sublayer: its projections produce its width W ([W, D])
// or, for its output projections, read it ([D, W]); experts stack them along a new dim 0.
// An FFN (slot "mlp") is the sublayer every family has; attention (slot "self_attn",
// q/k/v -> o) is the next. The defaults are transformers' decoder layout; a model family
// with another layout gives its own namings.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// The sublayers of a decoder layer that an MoE can hold as experts.
enum class Sublayer { ffn, attention };

inline const char* to_string(Sublayer s) {
  return s == Sublayer::ffn ? "ffn" : "attention";
}

struct SublayerNaming {
  Sublayer kind = Sublayer::ffn;
  std::string layers = "model.layers.";  // layer i's tensors start with layers + i + "."
  std::string slot = "mlp";              // the sublayer's child name inside a layer
  // Its weight matrices: each [W, D] (W: the sublayer's width, e.g. the FFN's F), but for
  // the output projections, [D, W].
  std::vector<std::string> projections = {"gate_proj", "up_proj", "down_proj"};
  std::vector<std::string> output_projections = {"down_proj"};

  // The FFN (the default) and attention in transformers' decoder layout.
  [[nodiscard]] static SublayerNaming ffn() { return {}; }
  [[nodiscard]] static SublayerNaming attention() {
    return {Sublayer::attention,
            "model.layers.",
            "self_attn",
            {"q_proj", "k_proj", "v_proj", "o_proj"},
            {"o_proj"}};
  }

  [[nodiscard]] std::string layer_prefix(int64_t layer) const {
    return layers + std::to_string(layer) + ".";
  }
  [[nodiscard]] std::string prefix(int64_t layer) const { return layer_prefix(layer) + slot + "."; }
  [[nodiscard]] std::string ffn_prefix(int64_t layer) const { return prefix(layer); }
  [[nodiscard]] std::string dense_name(int64_t layer, const std::string& proj) const {
    return prefix(layer) + proj + ".weight";
  }
  [[nodiscard]] std::string dense_ffn_name(int64_t layer, const std::string& proj) const {
    return dense_name(layer, proj);
  }
  [[nodiscard]] std::string experts_name(int64_t layer, const std::string& proj) const {
    return prefix(layer) + "experts." + proj;
  }
  [[nodiscard]] std::string router_name(int64_t layer) const {
    return prefix(layer) + "gate.weight";
  }
  [[nodiscard]] std::string shared_expert_name(int64_t layer, const std::string& proj) const {
    return prefix(layer) + "shared_expert." + proj + ".weight";
  }
  [[nodiscard]] std::string shared_expert_gate_name(int64_t layer) const {
    return prefix(layer) + "shared_expert_gate.weight";
  }
  // Whether `proj` reads the width ([D, W]) rather than producing it ([W, D]).
  [[nodiscard]] bool is_output(const std::string& proj) const {
    return std::find(output_projections.begin(), output_projections.end(), proj) !=
           output_projections.end();
  }
  // The dim of `proj`'s dense weight along which its experts' width runs.
  [[nodiscard]] int64_t width_dim(const std::string& proj) const { return is_output(proj) ? 1 : 0; }

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
  // Any tensor of this sublayer (dense, experts, router, shared expert, biases, norms).
  [[nodiscard]] bool is_sublayer_tensor(const std::string& name) const {
    const auto layer = layer_of(name);
    return layer && name.rfind(prefix(*layer), 0) == 0;
  }
  [[nodiscard]] bool is_ffn_tensor(const std::string& name) const {
    return is_sublayer_tensor(name);
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

// The FFN's naming: the sublayer every MoE in btx holds today.
using FfnNaming = SublayerNaming;

BTX_NAMESPACE_END
}  // namespace btx
