// SPDX-License-Identifier: MIT
// TopK router (HF Mixtral's routing): weights = softmax over the k largest logits, which
// equals renormalising the top-k of the full softmax. With k = 1 the weight is 1. With
// renormalize = false the weights are the full softmax's probabilities of the k experts,
// summing to less than 1 (Qwen2-MoE and Qwen3-MoE with norm_topk_prob: false).
// Registered as "top1", "top2", "topk" (k an option) and the family "topk:K".
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/kernels/dispatch.hpp>
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
    // Softmax, top-k, renormalise: one fused kernel where one is compiled for this device.
    auto gating = kernels::top_k_gating(r.logits_TE, k_, renormalize_);
    r.probs_TE = std::move(gating.probs_TE);
    r.indices_TK = std::move(gating.indices_TK);
    r.weights_TK = std::move(gating.weights_TK);
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

// The options of the top-k routers: k (fixed by the name for top1, top2 and topk:K; an
// option of "topk") and whether the k weights are renormalised (Mixtral: true; Qwen-MoE's
// norm_topk_prob may be false).
struct TopKOptions {
  int64_t k = 2;
  bool renormalize = true;
};

inline const schema::Schema<TopKOptions>& top_k_options_schema() {
  static const auto s =
      schema::Schema<TopKOptions>("top-k router options")
          .key("k", &TopKOptions::k,
               "experts per token (router topk only; top1, top2 and "
               "topk:K fix it)")
          .key("renormalize", &TopKOptions::renormalize,
               "the k weights renormalised to sum to 1 (false: the full softmax's, as "
               "Qwen-MoE's norm_topk_prob: false)");
  return s;
}

// The k a top-k router name fixes: "top1" -> 1, "top2" -> 2, "topk:K" -> K; none for
// "topk" (k is its option). Throws std::invalid_argument when "topk:" is not followed by
// digits.
inline std::optional<int64_t> top_k_of_name(const std::string& name) {
  if (name == "top1") return 1;
  if (name == "top2") return 2;
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
  return std::nullopt;
}

namespace detail {

// The k router `b.name` asks for, checked against b.num_experts.
inline int64_t checked_top_k(const RouterBuild& b) {
  const int64_t k = b.read(top_k_options_schema()).k;
  if (k < 1 || k > b.num_experts) {
    throw std::invalid_argument("btx: router '" + b.name + "' asks for k=" + std::to_string(k) +
                                " but num_experts=" + std::to_string(b.num_experts) +
                                "; k must be in [1, num_experts]");
  }
  return k;
}

}  // namespace detail

// The top-k names, for btx::router_registry().
inline std::vector<RouterSpec> top_k_router_specs() {
  const auto make = [](const RouterBuild& b) {
    return std::make_shared<TopK>(b.hidden_size, b.num_experts, detail::checked_top_k(b),
                                  b.read(top_k_options_schema()).renormalize);
  };
  const auto k = [](const RouterBuild& b) { return detail::checked_top_k(b); };
  // The name fixes k (top1, top2, topk:K): a k option must agree with it.
  const auto options = router_options(
      top_k_options_schema(),
      [](const std::string& router, const nlohmann::json& given, TopKOptions& o) {
        const auto fixed = top_k_of_name(router);
        if (!fixed) return;
        if (given.contains("k") && !(given["k"].is_number_integer() && given["k"] == *fixed)) {
          throw std::invalid_argument("config: router '" + router +
                                      "' fixes k=" + std::to_string(*fixed) + "; option k " +
                                      given["k"].dump() + " belongs to router topk");
        }
        o.k = *fixed;
      });
  const std::string help = top_k_options_schema().help({}, "               ");
  std::vector<RouterSpec> specs;
  specs.push_back({.name = "top1",
                   .describe = "each token to its most likely expert, weight 1",
                   .make = make,
                   .active_experts = k,
                   .options = options});
  specs.push_back({.name = "top2",
                   .describe = "Mixtral's routing: the 2 most likely experts, renormalised",
                   .make = make,
                   .active_experts = k,
                   .options = options});
  specs.push_back({.name = "topk",
                   .describe = "the k most likely experts (options below)",
                   .make = make,
                   .active_experts = k,
                   .options = options,
                   .options_help = help});
  specs.push_back({.name = "topk:K",
                   .describe = "the K most likely experts, renormalised (e.g. topk:3)",
                   .make = make,
                   .active_experts = k,
                   .matches = [](const std::string& name) { return name.rfind("topk:", 0) == 0; },
                   .options = options});
  return specs;
}

BTX_NAMESPACE_END
}  // namespace btx
