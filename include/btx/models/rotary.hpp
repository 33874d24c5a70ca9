// SPDX-License-Identifier: MIT
// Rotary position embeddings in Hugging Face's rotate-half convention: the first and
// second halves of each head dimension form the rotated pairs (not interleaved pairs),
// so weights trained by transformers keep their meaning here.
#pragma once

#include <torch/torch.h>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// cos/sin tables for positions [offset, offset + T): each [T, hd], the frequency vector
// repeated twice (cat(freqs, freqs)) exactly as HF's LlamaRotaryEmbedding.
struct RotaryTables {
  torch::Tensor cos_TH;
  torch::Tensor sin_TH;
};

inline RotaryTables rotary_tables(int64_t head_dim, double theta, int64_t offset, int64_t length,
                                  const torch::Device& device, torch::Dtype dtype) {
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(device);
  // inv_freq_h = theta^(-2h/hd) for h in [0, hd/2), computed in fp32 as HF does.
  auto inv_freq =
      1.0 / torch::pow(torch::tensor(theta, f32),
                       torch::arange(0, head_dim, 2, f32.dtype(torch::kInt64)).to(torch::kFloat32) /
                           double(head_dim));
  auto pos_T = torch::arange(offset, offset + length, f32.dtype(torch::kInt64)).to(torch::kFloat32);
  auto freqs_TH2 = torch::outer(pos_T, inv_freq);
  auto emb_TH = torch::cat({freqs_TH2, freqs_TH2}, -1);
  return {emb_TH.cos().to(dtype), emb_TH.sin().to(dtype)};
}

// rotate_half(x) = cat(-x2, x1) over the last dimension.
inline torch::Tensor rotate_half(const torch::Tensor& x) {
  auto halves = x.chunk(2, -1);
  return torch::cat({-halves[1], halves[0]}, -1);
}

// x: [B, heads, T, hd]; tables for the same T.
inline torch::Tensor apply_rotary(const torch::Tensor& x, const RotaryTables& rope) {
  return x * rope.cos_TH + rotate_half(x) * rope.sin_TH;
}

BTX_NAMESPACE_END
}  // namespace btx
