// SPDX-License-Identifier: MIT
// The language-modelling loss every stage trains with (any family).
#pragma once

#include <torch/torch.h>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// Mean next-token cross-entropy in fp32: logits_BSV predicts targets_BS (already shifted).
inline torch::Tensor next_token_loss(const torch::Tensor& logits_BSV,
                                     const torch::Tensor& targets_BS) {
  return torch::nn::functional::cross_entropy(
      logits_BSV.reshape({-1, logits_BSV.size(-1)}).to(torch::kFloat32), targets_BS.reshape({-1}));
}

BTX_NAMESPACE_END
}  // namespace btx
