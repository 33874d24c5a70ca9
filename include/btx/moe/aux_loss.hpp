// SPDX-License-Identifier: MIT
// Auxiliary router losses of one MoE layer: load balancing (BTX's form or the
// Switch/Mixtral form) and the router z-loss. The model's total is the sum over layers
// (btx::collect_aux_loss in moe_layer.hpp).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include <btx/core/moe_config.hpp>
#include <btx/core/routing.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// This batch's u_E and p_E of L_LB (both [E]; zeros for an empty batch).
struct BalanceTerms {
  torch::Tensor u_E, p_E;
};

inline BalanceTerms balance_terms(const RoutingResult& r, LoadBalanceForm form) {
  const int64_t E = r.probs_TE.size(1);
  const int64_t T = r.probs_TE.size(0);
  if (T == 0)
    return {torch::zeros({E}, r.probs_TE.options()), torch::zeros({E}, r.probs_TE.options())};
  auto p_E = r.probs_TE.mean(0);
  torch::Tensor u_E;
  if (form == LoadBalanceForm::btx) {
    // Scatter the routed weights [T, k] into [T, E]; dropped assignments carry weight 0.
    auto g_TE = torch::zeros_like(r.probs_TE).scatter_add(1, r.indices_TK, r.weights_TK);
    u_E = g_TE.mean(0);
  } else {
    // Counting is not differentiable: the gradient flows through p only, as in Switch.
    auto counts_E = torch::zeros({E}, r.probs_TE.options())
                        .index_add_(0, r.indices_TK.reshape(-1),
                                    torch::ones({r.indices_TK.numel()}, r.probs_TE.options()));
    u_E = counts_E / static_cast<double>(T);
  }
  return {u_E, p_E};
}

// E * sum_i u_i p_i (without alpha). With balanced routing it is 1 (btx form) or k
// (switch form, u sums to k); all tokens on one confident expert gives E (or E*k).
inline torch::Tensor load_balancing_loss(const RoutingResult& r, LoadBalanceForm form) {
  if (r.probs_TE.size(0) == 0) return torch::zeros({}, r.probs_TE.options());
  const auto [u_E, p_E] = balance_terms(r, form);
  return static_cast<double>(r.probs_TE.size(1)) * (u_E * p_E).sum();
}

// mean_t (logsumexp_e logits_te)^2 (ST-MoE's router z-loss, without its coefficient).
inline torch::Tensor router_z_loss(const RoutingResult& r) {
  if (r.logits_TE.size(0) == 0) return torch::zeros({}, r.logits_TE.options());
  return torch::logsumexp(r.logits_TE, 1).pow(2).mean();
}

// alpha * load balancing + z_coef * z-loss; undefined when both coefficients are 0.
inline torch::Tensor aux_loss(const RoutingResult& r, const AuxLossOptions& o) {
  torch::Tensor total;
  if (o.load_balance_alpha != 0.0) {
    total = o.load_balance_alpha * load_balancing_loss(r, o.load_balance_form);
  }
  if (o.z_loss_coef != 0.0) {
    auto z = o.z_loss_coef * router_z_loss(r);
    total = total.defined() ? total + z : z;
  }
  return total;
}

BTX_NAMESPACE_END
}  // namespace btx
