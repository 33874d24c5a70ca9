// SPDX-License-Identifier: MIT
// TopK router (HF Mixtral's routing): weights = softmax over the k largest logits, which
// equals renormalising the top-k of the full softmax. With k = 1 the weight is 1.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include <btx/moe/routing.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

class TopK : public torch::nn::Cloneable<TopK> {
 public:
  TopK(int64_t hidden_size, int64_t num_experts, int64_t k = 2)
      : hidden_(hidden_size), experts_(num_experts), k_(k) {
    if (k < 1 || k > num_experts) {
      throw std::invalid_argument("btx::TopK: k must be in [1, num_experts=" +
                                  std::to_string(num_experts) + "], got k=" + std::to_string(k));
    }
    reset();
  }
  void reset() override { weight = detail::make_router_weight(*this, experts_, hidden_, "TopK"); }

  // x_TD [T, H] -> k assignments per token.
  RoutingResult route(const torch::Tensor& x_TD) {
    RoutingResult r;
    r.logits_TE = detail::router_logits(x_TD, weight, "btx::TopK::route");
    r.probs_TE = torch::softmax(r.logits_TE, 1);
    auto [top_logits_TK, indices_TK] = r.logits_TE.topk(k_, 1);
    r.indices_TK = indices_TK;
    r.weights_TK = torch::softmax(top_logits_TK, 1);
    return r;
  }

  [[nodiscard]] int64_t num_experts() const { return experts_; }
  [[nodiscard]] int64_t hidden_size() const { return hidden_; }
  [[nodiscard]] int64_t k() const { return k_; }

  torch::Tensor weight;  // [E, H]

 private:
  int64_t hidden_, experts_, k_;
};

BTX_NAMESPACE_END
}  // namespace btx
