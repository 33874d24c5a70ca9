// SPDX-License-Identifier: MIT
// MoEOptions: everything that configures an MoE layer, with the router chosen at run time
// by name (as a pipeline config file names it). The names are those in btx's router
// registry (btx/moe/router_registry.hpp): the shipped ones and any a program registers.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <btx/moe/aux_loss.hpp>
#include <btx/moe/experts/grouped_mm.hpp>
#include <btx/moe/routers/temperature_schedule.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

struct MoEOptions {
  int64_t num_experts = 4;      // E (BTX: 3 domain experts + the seed as generalist)
  std::string router = "top2";  // a registered router name (btx::router_names())
  int64_t k = 2;                // k for router "topk"
  // Top-k routers: the k weights renormalised to sum to 1 (Mixtral), or the full softmax's
  // probabilities of the k experts as they are (Qwen2-MoE's default norm_topk_prob: false).
  bool renormalize_top_k = true;
  // An always-on shared expert of this F beside the routed ones, its output gated by
  // sigmoid(shared_expert_gate x) (Qwen2-MoE; moe/shared_expert.hpp); empty: none.
  std::optional<int64_t> shared_expert_size;
  // F of each routed expert; 0: the dense FFN's (split experts are narrower).
  int64_t expert_size = 0;
  double capacity_factor = 1.5;      // Switch only
  double load_balance_alpha = 0.01;  // alpha of L_LB (paper: 0.01); 0 disables it
  LoadBalanceForm load_balance_form = LoadBalanceForm::btx;
  double z_loss_coef = 0.0;              // router z-loss coefficient; 0 disables it
  TemperatureSchedule temperature = {};  // Sample Top-1: init 1, floor 0.5, rate 1e-4
  uint64_t seed = 0;                     // Sample Top-1 noise; layer l uses seed + l
  bool soft_first_layer = false;         // Sample Top-1 only: layer 0 routes softly (BTX paper)
  int64_t hidden_size = 0;               // D, needed only when upcycling modules of unknown width
  ExpertKernel expert_kernel = ExpertKernel::automatic;  // packed experts: grouped GEMMs or loop

  [[nodiscard]] AuxLossOptions aux() const {
    return AuxLossOptions{load_balance_alpha, load_balance_form, z_loss_coef};
  }
};

BTX_NAMESPACE_END
}  // namespace btx
