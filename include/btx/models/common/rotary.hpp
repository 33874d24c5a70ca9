// SPDX-License-Identifier: MIT
// Rotary position embeddings in Hugging Face's rotate-half convention: the first and
// second halves of each head dimension form the rotated pairs (not interleaved pairs),
// so weights trained by transformers keep their meaning here.
#pragma once

#include <torch/torch.h>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// cos/sin tables for positions [offset, offset + S): each [S, A], the frequency vector
// repeated twice (cat(freqs, freqs)) exactly as HF's LlamaRotaryEmbedding.
struct RotaryTables {
  torch::Tensor cos_SA;
  torch::Tensor sin_SA;
};

inline RotaryTables rotary_tables(int64_t head_dim, double theta, int64_t offset, int64_t length,
                                  const torch::Device& device, torch::Dtype dtype) {
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(device);
  // inv_freq_i = theta^(-2i/A) for i in [0, A/2), computed in fp32 as HF does.
  auto inv_freq =
      1.0 / torch::pow(torch::tensor(theta, f32),
                       torch::arange(0, head_dim, 2, f32.dtype(torch::kInt64)).to(torch::kFloat32) /
                           double(head_dim));
  auto pos_S = torch::arange(offset, offset + length, f32.dtype(torch::kInt64)).to(torch::kFloat32);
  auto freqs_SA2 = torch::outer(pos_S, inv_freq);
  auto emb_SA = torch::cat({freqs_SA2, freqs_SA2}, -1);
  return {emb_SA.cos().to(dtype), emb_SA.sin().to(dtype)};
}

// rotate_half(x) = cat(-x2, x1) over the last dimension.
inline torch::Tensor rotate_half(const torch::Tensor& x) {
  auto halves = x.chunk(2, -1);
  return torch::cat({-halves[1], halves[0]}, -1);
}

// x: [B, heads, S, A]; tables for the same S.
inline torch::Tensor apply_rotary(const torch::Tensor& x, const RotaryTables& rope) {
  return x * rope.cos_SA + rotate_half(x) * rope.sin_SA;
}

BTX_NAMESPACE_END
}  // namespace btx
