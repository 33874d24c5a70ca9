// SPDX-License-Identifier: MIT
// Frozen experts: the routed experts' parameters stop taking gradients, so an MoE stage
// trains only the routers and the rest (the paper's Table 5 ablation: BTX's MoE stage with
// its experts fixed). The optimizer skips a parameter without a gradient, gradient clipping
// and data-parallel averaging leave it out, so no other code needs to know. Shared experts
// (always on, outside the routing) keep training.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <stdexcept>

#include <btx/moe/moe_layer.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// Freezes every MoE layer's routed experts in `model`; returns how many parameter tensors it
// froze. A model without MoE layers is an error (freezing nothing is never what was meant).
inline int64_t freeze_experts(torch::nn::Module& model) {
  const auto layers = moe_layers(model);
  if (layers.empty()) {
    throw std::invalid_argument("btx::freeze_experts: the model has no MoE layer to freeze");
  }
  int64_t frozen = 0;
  for (const auto& [name, layer] : layers) {
    for (auto p : layer->expert_parameters()) {
      p.set_requires_grad(false);
      ++frozen;
    }
  }
  return frozen;
}

BTX_NAMESPACE_END
}  // namespace btx
