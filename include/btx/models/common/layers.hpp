// SPDX-License-Identifier: MIT
// Building blocks every decoder family shares: RMSNorm (normalised in fp32 like HF's) and
// bias-free linear layers.
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// ------------------------------------------------------------------------- RMSNorm
class RMSNormImpl : public torch::nn::Cloneable<RMSNormImpl> {
 public:
  RMSNormImpl(int64_t dim, double eps) : dim_(dim), eps_(eps) { reset(); }
  void reset() override { weight = register_parameter("weight", torch::ones({dim_})); }

  // Normalises in fp32 and casts back before the scale, like HF's LlamaRMSNorm.
  torch::Tensor forward(const torch::Tensor& x) {
    auto x32 = x.to(torch::kFloat32);
    auto inv_rms = torch::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps_);
    return weight * (x32 * inv_rms).to(x.scalar_type());
  }

  torch::Tensor weight;

 private:
  int64_t dim_;
  double eps_;
};
TORCH_MODULE(RMSNorm);

inline torch::nn::Linear make_linear(int64_t in, int64_t out) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false));
}

BTX_NAMESPACE_END
}  // namespace btx
