// SPDX-License-Identifier: MIT
// Soft router: every token goes to every expert with its softmax weight (a dense mixture).
// Registered as "soft".
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>

#include <btx/moe/router_helpers.hpp>
#include <btx/moe/router_spec.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

class Soft : public torch::nn::Cloneable<Soft> {
 public:
  Soft(int64_t hidden_size, int64_t num_experts) : hidden_(hidden_size), experts_(num_experts) {
    reset();
  }
  void reset() override { weight = make_router_weight(*this, experts_, hidden_, "Soft"); }

  // x_TD [T, D] -> E assignments per token, weights = softmax over all logits.
  RoutingResult route(const torch::Tensor& x_TD) {
    RoutingResult r;
    r.logits_TE = router_logits(x_TD, weight, "btx::Soft::route");
    r.probs_TE = torch::softmax(r.logits_TE, 1);
    r.indices_TK = every_expert_TE(x_TD.size(0), experts_, x_TD);
    r.weights_TK = r.probs_TE;
    return r;
  }

  [[nodiscard]] int64_t num_experts() const { return experts_; }
  [[nodiscard]] int64_t hidden_size() const { return hidden_; }

  torch::Tensor weight;  // [E, H]

 private:
  int64_t hidden_, experts_;
};

// "soft", for btx::router_registry().
inline RouterSpec soft_router_spec() {
  return {
      .name = "soft",
      .describe = "every token to every expert with its softmax weight (dense)",
      .make =
          [](const RouterBuild& b) { return std::make_shared<Soft>(b.hidden_size, b.num_experts); },
      .active_experts = [](const RouterBuild& b) { return b.num_experts; }};
}

BTX_NAMESPACE_END
}  // namespace btx
