// SPDX-License-Identifier: MIT
// Shared fixtures for btx's tests: tiny configs (torchtitan/mergekit style) and helpers.
#pragma once

#include <torch/torch.h>

#include <btx/models/llama/compat.hpp>

namespace btx::test {

// hidden 32, 2 layers, vocab 64, GQA 4:2: small enough for exact CPU tests.
inline LlamaConfig tiny_config() {
  LlamaConfig c;
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 128;
  return c;
}

inline double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

}  // namespace btx::test
