// SPDX-License-Identifier: MIT
// Compute accounting of the recipe, so BTX and its baselines compare at equal compute:
// how many experts a router runs per token (the one place that decides it), training
// FLOPs per token of a model from its ArchShape (train/flops.hpp), and budget matching:
// BTX's total after the seed (every expert's training plus the MoE finetune) and the
// number of steps that spends it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/core/model_spec.hpp>
#include <btx/core/moe_config.hpp>
#include <btx/merge/expert_info.hpp>
#include <btx/moe/router_registry.hpp>
#include <btx/train/flops.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace recipe {

// Experts run per token by the router of an MoE config, as its registration declares (k
// for a top-k router, every expert for Soft, 1 for Switch and Sample Top-1). Checkpoints
// record it as num_experts_per_tok and FLOP counting reads it from the same config.
using btx::active_experts;

// Experts per layer and experts run per token: 1/1 for a dense spec.
inline ComputeShape compute_shape(const ModelSpec& spec) {
  ComputeShape c;
  if (spec.moe) c = {spec.moe->num_experts, active_experts(*spec.moe)};
  if (spec.attention_moe) c.attention_experts = spec.attention_moe->num_experts;
  return c;
}
inline ComputeShape compute_shape(const MoEConfig& moe) {
  return {moe.num_experts, active_experts(moe)};
}

// The shape FLOPs are counted on: an MoE's experts may be narrower than the dense FFN.
inline ArchShape counted_shape(const ModelSpec& spec) {
  ArchShape shape = spec.shape;
  if (spec.moe && spec.moe->expert_size > 0) shape.intermediate_size = spec.moe->expert_size;
  return shape;
}

// Training FLOPs per token of a model (dense, or MoE as its spec's router runs it).
inline double flops_per_token(const ModelSpec& spec, int64_t seq_len) {
  return training_flops_per_token(counted_shape(spec), seq_len, compute_shape(spec));
}
// ... of `dense` made into the MoE `moe` describes (before that model exists).
inline double flops_per_token(const ModelSpec& dense, int64_t seq_len, const MoEConfig& moe) {
  ArchShape shape = counted_shape(dense);
  if (moe.expert_size > 0) shape.intermediate_size = moe.expert_size;
  return training_flops_per_token(shape, seq_len, compute_shape(moe));
}

// FLOPs of `steps` steps of `tokens_per_step` tokens each.
inline double planned_flops(int64_t steps, int64_t tokens_per_step, double flops_per_token) {
  return double(steps) * double(tokens_per_step) * flops_per_token;
}

// BTX's compute after the seed: every expert's recorded training plus the MoE finetune.
// The baselines at equal compute (dense continued training, sparse upcycling) spend this.
inline double btx_budget_flops(const std::vector<merge::ExpertInfo>& experts,
                               double finetune_flops) {
  if (experts.empty()) throw std::invalid_argument("btx::recipe::btx_budget_flops: no experts");
  double flops = finetune_flops;
  for (const auto& e : experts) {
    if (!(e.flops >= 0.0)) {
      throw std::invalid_argument("btx::recipe::btx_budget_flops: expert '" + e.name +
                                  "' has flops " + std::to_string(e.flops));
    }
    flops += e.flops;
  }
  return flops;
}

// The whole number of steps (at least 1) that comes nearest to spending `budget_flops`
// at `tokens_per_step` tokens of `flops_per_token` each.
inline int64_t steps_for_budget(double budget_flops, double flops_per_token,
                                int64_t tokens_per_step) {
  const double per_step = double(tokens_per_step) * flops_per_token;
  if (!(per_step > 0.0) || !std::isfinite(per_step) || !(budget_flops >= 0.0) ||
      !std::isfinite(budget_flops)) {
    throw std::invalid_argument(
        "btx::recipe::steps_for_budget: need a finite budget >= 0 and a positive cost per "
        "step; got budget " +
        std::to_string(budget_flops) + " FLOPs, " + std::to_string(tokens_per_step) +
        " tokens/step x " + std::to_string(flops_per_token) + " FLOPs/token");
  }
  return std::max<int64_t>(1, std::llround(budget_flops / per_step));
}

}  // namespace recipe
BTX_NAMESPACE_END
}  // namespace btx
