// SPDX-License-Identifier: MIT
// TopK router (HF Mixtral's routing): weights = softmax over the k largest logits, which
// equals renormalising the top-k of the full softmax. With k = 1 the weight is 1. With
// renormalize = false the weights are the full softmax's probabilities of the k experts,
// summing to less than 1 (Qwen2-MoE and Qwen3-MoE with norm_topk_prob: false).
// Registered as "top1", "top2", "topk" (k = MoEOptions.k) and the family "topk:K".
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

#include <btx/moe/options.hpp>
#include <btx/moe/router_helpers.hpp>
#include <btx/moe/router_spec.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

class TopK : public torch::nn::Cloneable<TopK> {
 public:
  TopK(int64_t hidden_size, int64_t num_experts, int64_t k = 2, bool renormalize = true)
      : hidden_(hidden_size), experts_(num_experts), k_(k), renormalize_(renormalize) {
    if (k < 1 || k > num_experts) {
      throw std::invalid_argument("btx::TopK: k must be in [1, num_experts=" +
                                  std::to_string(num_experts) + "], got k=" + std::to_string(k));
    }
    reset();
  }
  void reset() override { weight = make_router_weight(*this, experts_, hidden_, "TopK"); }

  // x_TD [T, D] -> k assignments per token.
  RoutingResult route(const torch::Tensor& x_TD) {
    RoutingResult r;
    r.logits_TE = router_logits(x_TD, weight, "btx::TopK::route");
    r.probs_TE = torch::softmax(r.logits_TE, 1);
    auto [top_logits_TK, indices_TK] = r.logits_TE.topk(k_, 1);
    r.indices_TK = indices_TK;
    r.weights_TK =
        renormalize_ ? torch::softmax(top_logits_TK, 1) : r.probs_TE.gather(1, indices_TK);
    return r;
  }

  [[nodiscard]] int64_t num_experts() const { return experts_; }
  [[nodiscard]] int64_t hidden_size() const { return hidden_; }
  [[nodiscard]] int64_t k() const { return k_; }
  [[nodiscard]] bool renormalizes() const { return renormalize_; }

  torch::Tensor weight;  // [E, H]

 private:
  int64_t hidden_, experts_, k_;
  bool renormalize_;
};

// The k a top-k router name asks for: "top1" -> 1, "top2" -> 2, "topk" -> `k`,
// "topk:K" -> K; 0 when `name` is not a top-k name. Throws std::invalid_argument when
// "topk:" is not followed by a positive integer.
inline int64_t parse_top_k(const std::string& name, int64_t k) {
  if (name == "top1") return 1;
  if (name == "top2") return 2;
  if (name == "topk") return k;
  if (name.rfind("topk:", 0) == 0) {
    const std::string digits = name.substr(5);
    if (digits.empty() || digits.size() > 18 ||
        digits.find_first_not_of("0123456789") != std::string::npos) {
      throw std::invalid_argument("btx: router '" + name +
                                  "' needs a positive integer after "
                                  "'topk:' (e.g. topk:2)");
    }
    return std::stoll(digits);
  }
  return 0;
}

namespace detail {

// The k options.router asks for, checked against options.num_experts.
inline int64_t checked_top_k(const MoEOptions& options) {
  const int64_t k = parse_top_k(options.router, options.k);
  const int64_t E = options.num_experts;
  if (k < 1 || k > E) {
    throw std::invalid_argument(
        "btx: router '" + options.router + "' asks for k=" + std::to_string(k) +
        " but MoEOptions.num_experts=" + std::to_string(E) + "; k must be in [1, num_experts]");
  }
  return k;
}

}  // namespace detail

// The top-k names, for btx::router_registry().
inline void register_top_k_routers(RouterRegistry& registry) {
  const auto make = [](const MoEOptions& o, int64_t hidden, uint64_t /*layer*/) {
    return std::make_shared<TopK>(hidden, o.num_experts, detail::checked_top_k(o),
                                  o.renormalize_top_k);
  };
  const auto k = [](const MoEOptions& o) { return detail::checked_top_k(o); };
  registry.add<TopK>({.name = "top1",
                      .describe = "each token to its most likely expert, weight 1",
                      .make = make,
                      .active_experts = k});
  registry.add<TopK>({.name = "top2",
                      .describe = "Mixtral's routing: the 2 most likely experts, renormalised",
                      .make = make,
                      .active_experts = k});
  registry.add<TopK>(
      {.name = "topk",
       .describe = "the MoEOptions.k most likely experts, renormalised (renormalize_top_k)",
       .make = make,
       .active_experts = k});
  registry.add<TopK>(
      {.name = "topk:K",
       .describe = "the K most likely experts, renormalised (e.g. topk:3)",
       .make = make,
       .active_experts = k,
       .matches = [](const std::string& name) { return name.rfind("topk:", 0) == 0; }});
}

BTX_NAMESPACE_END
}  // namespace btx
