// SPDX-License-Identifier: MIT
// An MoE layer's aux loss and routing statistics over the global batch, when data-parallel
// ranks each hold a shard of it. The z-loss is a mean over tokens, so the mean over ranks
// of each rank's own z-loss is the global one; load balancing is not:
// L_LB = alpha E sum_i u_i p_i multiplies two batch means. So the per-expert sums are added
// up over the ranks in one (detached) all-reduce, giving the global means U and P, and each
// rank r minimises the first-order surrogate
//   L_r = alpha E [ c_r sum_i (u_ri P_i + U_i p_ri) - sum_i U_i P_i ],  c_r = N T_r / T,
// (u_r, p_r its own means over its T_r tokens; T tokens in all; N ranks). Its mean over the
// ranks is the global L_LB, and the mean of its gradients (what data parallelism applies)
// is the gradient of the global L_LB. The same all-reduce carries the routing statistics
// (tokens per expert, drops, entropy), so every rank records the global batch's.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include <btx/core/collectives.hpp>
#include <btx/core/detail/host_read.hpp>
#include <btx/core/routing.hpp>
#include <btx/moe/aux_loss.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// This call's aux loss (undefined when disabled) and statistics.
struct LayerRouting {
  torch::Tensor aux_loss;
  RoutingStats stats;
};

// The routing entropy -sum_e p_e log p_e of every token, summed (not averaged).
inline torch::Tensor routing_entropy_sum(const RoutingResult& r) {
  torch::NoGradGuard no_grad;
  return -(r.probs_TE * torch::log_softmax(r.logits_TE, 1)).sum();
}

// This process's batch is the whole batch.
inline LayerRouting local_routing(const RoutingResult& r, const std::vector<int64_t>& counts_E,
                                  int64_t dropped, const AuxLossOptions& aux) {
  LayerRouting out;
  const int64_t T = r.probs_TE.size(0);
  out.stats.tokens_per_expert = torch::tensor(counts_E, torch::kLong);
  out.stats.dropped = dropped;
  out.stats.tokens = T;
  if (T > 0) out.stats.entropy_sum = routing_entropy_sum(r);
  if (aux.enabled() && T > 0) out.aux_loss = btx::aux_loss(r, aux);
  return out;
}

// The global batch's, over `ranks` (a collective: every rank calls it once per forward).
inline LayerRouting global_routing(const RoutingResult& r, const std::vector<int64_t>& counts_E,
                                   int64_t dropped, const AuxLossOptions& aux, Collectives& ranks) {
  const int64_t E = r.probs_TE.size(1);
  const int64_t T = r.probs_TE.size(0);
  const auto [u_E, p_E] = balance_terms(r, aux.load_balance_form);
  // [sum u (E) | sum p (E) | tokens per expert (E) | T | dropped | entropy sum], in fp64.
  // On the routing's device (a CUDA layer all-reduces over NCCL), read back once.
  const auto f64 = r.probs_TE.options().dtype(torch::kFloat64);
  torch::Tensor sums;
  {
    torch::NoGradGuard no_grad;
    sums = torch::cat({u_E.detach().to(torch::kFloat64) * double(T),
                       p_E.detach().to(torch::kFloat64) * double(T),
                       torch::tensor(counts_E, torch::kLong).to(f64),
                       torch::tensor({double(T), double(dropped)}, f64),
                       T == 0 ? torch::zeros({1}, f64)
                              : routing_entropy_sum(r).to(torch::kFloat64).reshape({1})});
  }
  ranks.all_reduce_sum(sums, "routing statistics of an MoE layer");
  const torch::Tensor host = read_to_host(sums);
  const double* s = host.data_ptr<double>();
  const double T_all = s[3 * E];

  LayerRouting out;
  out.stats.tokens_per_expert = host.narrow(0, 2 * E, E).round().to(torch::kLong);
  out.stats.tokens = int64_t(T_all);
  out.stats.dropped = int64_t(s[3 * E + 1]);
  out.stats.entropy_sum = host.narrow(0, 3 * E + 2, 1).reshape({});
  if (!aux.enabled() || T_all == 0) return out;

  const double c = double(ranks.size()) * double(T) / T_all;
  torch::Tensor total = torch::zeros({}, r.probs_TE.options());
  if (aux.load_balance_alpha != 0.0) {
    const auto U_E = (sums.narrow(0, 0, E) / T_all).to(p_E.scalar_type());
    const auto P_E = (sums.narrow(0, E, E) / T_all).to(p_E.scalar_type());
    const auto lb = c * (u_E * P_E + U_E * p_E).sum() - (U_E * P_E).sum();
    total = total + aux.load_balance_alpha * double(E) * lb;
  }
  if (aux.z_loss_coef != 0.0 && T > 0) total = total + aux.z_loss_coef * c * router_z_loss(r);
  out.aux_loss = total;
  return out;
}

BTX_NAMESPACE_END
}  // namespace btx
