// SPDX-License-Identifier: MIT
// Gradient clipping by the global L2 norm, as torch::nn::utils::clip_grad_norm_ computes
// it (the same norms, the same 1e-6, so the same bits), but without reading the norm back
// to the host: the scale min(1, max_norm / (norm + 1e-6)) is applied on the gradients'
// device, and the norm is returned as a tensor for the trainer's one host read per step.
#pragma once

#include <torch/torch.h>

#include <vector>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// Scales the gradients of `parameters` so their global L2 norm is at most `max_norm`;
// returns that norm before scaling (a 0-dim tensor; undefined when no gradient exists).
inline torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& parameters, double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads, norms;
  for (const auto& p : parameters) {
    if (!p.grad().defined()) continue;
    grads.push_back(p.grad());
    norms.push_back(p.grad().norm(2.0));
  }
  if (grads.empty()) return {};
  const torch::Tensor total = norms.size() == 1 ? norms[0] : torch::stack(norms).norm(2.0);
  const torch::Tensor scale = torch::clamp(max_norm / (total + 1e-6), std::nullopt, 1.0);
  for (auto& g : grads) g.mul_(scale);
  return total;
}

BTX_NAMESPACE_END
}  // namespace btx
