// SPDX-License-Identifier: MIT
// Switch router: top-1 with a capacity of ceil(capacity_factor * T / E) tokens per expert;
// the assignments beyond it (in token order) are dropped, so those tokens pass through
// the decoder layer's residual only. Registered as "switch".
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

#include <btx/moe/router_helpers.hpp>
#include <btx/moe/router_spec.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

class Switch : public torch::nn::Cloneable<Switch> {
 public:
  Switch(int64_t hidden_size, int64_t num_experts, double capacity_factor = 1.5)
      : hidden_(hidden_size), experts_(num_experts), capacity_factor_(capacity_factor) {
    if (!(capacity_factor > 0.0) || !std::isfinite(capacity_factor)) {
      throw std::invalid_argument("btx::Switch: capacity_factor must be a finite number > 0, got " +
                                  std::to_string(capacity_factor));
    }
    reset();
  }
  void reset() override { weight = make_router_weight(*this, experts_, hidden_, "Switch"); }

  // Tokens each expert may take in a call over `tokens` tokens.
  [[nodiscard]] int64_t capacity(int64_t tokens) const {
    return static_cast<int64_t>(
        std::ceil(capacity_factor_ * static_cast<double>(tokens) / static_cast<double>(experts_)));
  }

  // x_TD [T, D] -> one assignment per token. Its weight is 1 in value with the gradient of
  // the chosen softmax probability (straight-through), so the router learns from the task
  // loss while an MoE of identical experts still equals one expert.
  RoutingResult route(const torch::Tensor& x_TD) {
    RoutingResult r;
    r.logits_TE = router_logits(x_TD, weight, "btx::Switch::route");
    r.probs_TE = torch::softmax(r.logits_TE, 1);
    auto [p_T1, indices_T1] = r.probs_TE.max(1, /*keepdim=*/true);
    r.indices_TK = indices_T1;
    // Position of each token in its expert's queue, in token order.
    auto onehot_TE = torch::zeros_like(r.probs_TE, torch::kLong).scatter_(1, indices_T1, 1);
    auto position_T1 = onehot_TE.cumsum(0).gather(1, indices_T1) - 1;
    r.dropped_TK = position_T1 >= capacity(x_TD.size(0));
    auto w_T1 = (p_T1 - p_T1.detach()) + 1.0;
    r.weights_TK = w_T1.masked_fill(r.dropped_TK, 0.0);
    return r;
  }

  [[nodiscard]] int64_t num_experts() const { return experts_; }
  [[nodiscard]] int64_t hidden_size() const { return hidden_; }
  [[nodiscard]] double capacity_factor() const { return capacity_factor_; }

  torch::Tensor weight;  // [E, H]

 private:
  int64_t hidden_, experts_;
  double capacity_factor_;
};

// Switch's own option: how many tokens an expert may take, relative to an even share.
struct SwitchOptions {
  double capacity_factor = 1.5;
};

inline const schema::Schema<SwitchOptions>& switch_options_schema() {
  static const auto s = schema::Schema<SwitchOptions>("switch router options")
                            .key("capacity_factor", &SwitchOptions::capacity_factor,
                                 "capacity per expert: ceil(capacity_factor * T / E) tokens",
                                 schema::positive<double>());
  return s;
}

// "switch", for btx::router_registry().
inline RouterSpec switch_router_spec() {
  return {.name = "switch",
          .describe = "top-1 with a capacity of ceil(capacity_factor * T / E) tokens per expert",
          .make =
              [](const RouterBuild& b) {
                return std::make_shared<Switch>(b.hidden_size, b.num_experts,
                                                b.read(switch_options_schema()).capacity_factor);
              },
          .active_experts = [](const RouterBuild&) -> int64_t { return 1; },
          .options = router_options(switch_options_schema()),
          .options_help = switch_options_schema().help({}, "               ")};
}

BTX_NAMESPACE_END
}  // namespace btx
