// SPDX-License-Identifier: MIT
// Keys and values of the positions decoded so far, one pair per layer, for incremental
// decoding. Family-agnostic: every attention layer appends [B, G, P, A] tensors.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// Per layer: keys/values [B, G, P, A]; empty tensors before the first step.
struct KVCache {
  std::vector<torch::Tensor> keys;
  std::vector<torch::Tensor> values;
  explicit KVCache(size_t layers = 0) : keys(layers), values(layers) {}
  [[nodiscard]] int64_t length() const {
    return keys.empty() || !keys[0].defined() ? 0 : keys[0].size(2);
  }
};

BTX_NAMESPACE_END
}  // namespace btx
