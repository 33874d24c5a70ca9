// SPDX-License-Identifier: MIT
// What a forward that may be recomputed in backward (activation checkpointing,
// train/activation_checkpoint.hpp) needs from the modules inside it:
// - recomputing(): true while a forward runs a second time to rebuild its graph. State that
//   a forward advances (a balancing bias, a noise step counter) must not advance again.
// - keep_side_output(slot): a module that keeps a tensor from its forward for a loss taken
//   later (the MoE layer's aux loss) names the slot, so a checkpointed layer, whose forward
//   runs without a graph, can hand the slot a tensor that carries gradient back to it.
#pragma once

#include <torch/torch.h>

#include <vector>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

namespace detail {
struct RecomputeContext {
  bool recomputing = false;
  std::vector<torch::Tensor*>* side_slots = nullptr;  // collecting, inside a checkpointed forward
};
inline RecomputeContext& recompute_context() {
  thread_local RecomputeContext context;
  return context;
}
}  // namespace detail

[[nodiscard]] inline bool recomputing() {
  return detail::recompute_context().recomputing;
}

inline void keep_side_output(torch::Tensor& slot) {
  if (auto* slots = detail::recompute_context().side_slots) slots->push_back(&slot);
}

// While alive: forwards on this thread are recomputations (when `recompute`) and side
// outputs are collected into `slots` (when not null); the previous context comes back after.
class RecomputeScope {
 public:
  RecomputeScope(bool recompute, std::vector<torch::Tensor*>* slots)
      : saved_(detail::recompute_context()) {
    detail::recompute_context() = {recompute, slots};
  }
  RecomputeScope(const RecomputeScope&) = delete;
  RecomputeScope& operator=(const RecomputeScope&) = delete;
  ~RecomputeScope() { detail::recompute_context() = saved_; }

 private:
  detail::RecomputeContext saved_;
};

BTX_NAMESPACE_END
}  // namespace btx
