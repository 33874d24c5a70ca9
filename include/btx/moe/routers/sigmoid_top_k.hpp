// SPDX-License-Identifier: MIT
// DeepSeek-V3's routing (arXiv 2412.19437; GLM-4-MoE's in transformers), as router
// "sigmoid_topk":
//   s_TE = sigmoid(x W^T)                           affinities, each in (0, 1)
//   c_TE = s_TE + b_E                               the bias only chooses experts
//   groups: the E experts in G contiguous groups; a group scores the sum of its top-2 c;
//           only the topk_groups best groups stay selectable (G = 1: all)
//   K experts = top-k of c among selectable ones; weights = their s (not c),
//   renormalised to sum 1 (+1e-20) when `renormalize`, then times `scaling`.
// b_E (e_score_correction_bias, transformers' name) is the auxiliary-loss-free balancing
// of Wang et al. 2024 (arXiv 2408.15664): while training, after each routed batch, every
// expert's bias moves by bias_update_rate toward balance (up when it got fewer than the
// mean assignments, down when more: b += rate * sign(mean - load)), with no gradient and
// no loss term. It is a parameter that never has a gradient, so checkpoints and resumes
// carry it; rate 0 freezes it. probs_TE (load balancing, if asked) are the affinities
// normalised per token.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/core/moe_config.hpp>
#include <btx/core/recompute.hpp>
#include <btx/core/schema.hpp>
#include <btx/moe/router_helpers.hpp>
#include <btx/moe/router_spec.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

struct SigmoidTopKOptions {
  int64_t k = 2;
  bool renormalize = true;          // norm_topk_prob
  int64_t groups = 1;               // n_group
  int64_t topk_groups = 1;          // topk_group: groups a token may use
  double scaling = 1.0;             // routed_scaling_factor
  double bias_update_rate = 0.001;  // aux-loss-free balancing step (0: bias frozen)
};

class SigmoidTopK : public torch::nn::Cloneable<SigmoidTopK> {
 public:
  SigmoidTopK(int64_t hidden_size, int64_t num_experts, SigmoidTopKOptions options = {})
      : hidden_(hidden_size), experts_(num_experts), o_(options) {
    check(num_experts, o_);
    reset();
  }
  void reset() override {
    weight = make_router_weight(*this, experts_, hidden_, "SigmoidTopK");
    e_score_correction_bias =
        register_parameter("e_score_correction_bias", torch::zeros({experts_}), false);
  }

  // x_TD [T, D] -> k assignments per token.
  RoutingResult route(const torch::Tensor& x_TD) {
    RoutingResult r;
    r.logits_TE = router_logits(x_TD, weight, "btx::SigmoidTopK::route");
    const auto s_TE = torch::sigmoid(r.logits_TE);
    // A recomputed forward (activation checkpointing) chooses with the bias the first one
    // chose with, before that one moved it.
    const bool again = recomputing() && bias_before_.defined();
    const auto& bias_E = again ? bias_before_ : e_score_correction_bias;
    auto c_TE = s_TE.detach() + bias_E.detach().to(s_TE.scalar_type());
    const int64_t T = c_TE.size(0), G = o_.groups;
    if (G > 1) {
      const auto group_TG = std::get<0>(c_TE.view({T, G, experts_ / G}).topk(2, -1)).sum(-1);
      const auto keep_TG = torch::zeros_like(group_TG).scatter_(
          1, std::get<1>(group_TG.topk(o_.topk_groups, -1)), 1.0);
      const auto keep_TE =
          keep_TG.unsqueeze(-1).expand({T, G, experts_ / G}).reshape({T, experts_});
      c_TE = c_TE.masked_fill(keep_TE == 0, -std::numeric_limits<double>::infinity());
    }
    r.indices_TK = std::get<1>(c_TE.topk(o_.k, -1));
    auto w_TK = s_TE.gather(1, r.indices_TK);
    if (o_.renormalize) w_TK = w_TK / (w_TK.sum(-1, true) + 1e-20);
    r.weights_TK = o_.scaling == 1.0 ? w_TK : w_TK * o_.scaling;
    r.probs_TE = s_TE / s_TE.sum(-1, true);
    if (is_training() && o_.bias_update_rate > 0.0 && !recomputing()) {
      bias_before_ = e_score_correction_bias.detach().clone();
      balance(r.indices_TK);
    }
    return r;
  }

  [[nodiscard]] int64_t num_experts() const { return experts_; }
  [[nodiscard]] int64_t hidden_size() const { return hidden_; }
  [[nodiscard]] const SigmoidTopKOptions& options() const { return o_; }

  // Throws std::invalid_argument naming the option `o` cannot have over `num_experts`.
  static void check(int64_t num_experts, const SigmoidTopKOptions& o) {
    const auto refuse = [](const std::string& what) {
      throw std::invalid_argument("btx: router 'sigmoid_topk': " + what);
    };
    if (o.k < 1 || o.k > num_experts)
      refuse("k=" + std::to_string(o.k) +
             " must be in [1, num_experts=" + std::to_string(num_experts) + "]");
    if (o.groups < 1 || num_experts % o.groups != 0)
      refuse("groups=" + std::to_string(o.groups) +
             " must divide num_experts=" + std::to_string(num_experts));
    if (o.topk_groups < 1 || o.topk_groups > o.groups)
      refuse("topk_groups must be in [1, groups=" + std::to_string(o.groups) + "]");
    if (o.groups > 1 && num_experts / o.groups < 2)
      refuse("each group needs at least 2 experts (a group scores its top 2)");
    if (o.k > o.topk_groups * (num_experts / o.groups))
      refuse("k=" + std::to_string(o.k) + " exceeds the experts of topk_groups groups");
    if (!(o.scaling > 0.0)) refuse("scaling must be > 0");
    if (!(o.bias_update_rate >= 0.0)) refuse("bias_update_rate must be >= 0");
  }

  torch::Tensor weight;                   // [E, D]
  torch::Tensor e_score_correction_bias;  // [E], no gradient

 private:
  // b += rate * sign(mean load - load): the step of the auxiliary-loss-free balancing.
  void balance(const torch::Tensor& indices_TK) {
    torch::NoGradGuard no_grad;
    const auto load_E =
        torch::zeros({experts_}, weight_options(indices_TK))
            .index_add_(0, indices_TK.reshape(-1),
                        torch::ones({indices_TK.numel()}, weight_options(indices_TK)));
    const auto step_E = torch::sign(load_E.mean() - load_E) * o_.bias_update_rate;
    e_score_correction_bias.add_(step_E.to(e_score_correction_bias.scalar_type()));
  }

  torch::Tensor bias_before_;  // the bias the last training forward chose with
  int64_t hidden_, experts_;
  SigmoidTopKOptions o_;
};

inline const schema::Schema<SigmoidTopKOptions>& sigmoid_top_k_options_schema() {
  using O = SigmoidTopKOptions;
  static const auto s =
      schema::Schema<O>("sigmoid top-k router options")
          .key("k", &O::k, "experts per token")
          .key("renormalize", &O::renormalize,
               "the k affinities renormalised to sum 1 (norm_topk_prob)")
          .key("groups", &O::groups, "expert groups (n_group; 1: none)")
          .key("topk_groups", &O::topk_groups, "groups a token may use (topk_group)")
          .key("scaling", &O::scaling, "routed weights times this (routed_scaling_factor)")
          .key("bias_update_rate", &O::bias_update_rate,
               "auxiliary-loss-free balancing: each expert's bias step per routed batch "
               "(0: frozen)");
  return s;
}

// Whether `router` carries sigmoid_topk's balancing bias (gate.e_score_correction_bias),
// which a merge plan must then produce beside the router weight.
inline bool has_balancing_bias(const RouterChoice& router) {
  return router.name == "sigmoid_topk";
}

inline RouterSpec sigmoid_top_k_router_spec() {
  const auto options_of = [](const RouterBuild& b) {
    auto o = b.read(sigmoid_top_k_options_schema());
    SigmoidTopK::check(b.num_experts, o);
    return o;
  };
  return {.name = "sigmoid_topk",
          .describe = "DeepSeek-V3's: sigmoid affinities, a balancing bias, group-limited top-k",
          .make =
              [options_of](const RouterBuild& b) {
                return std::make_shared<SigmoidTopK>(b.hidden_size, b.num_experts, options_of(b));
              },
          .active_experts = [options_of](const RouterBuild& b) { return options_of(b).k; },
          .options = router_options(sigmoid_top_k_options_schema()),
          .options_help = sigmoid_top_k_options_schema().help({}, "               ")};
}

BTX_NAMESPACE_END
}  // namespace btx
