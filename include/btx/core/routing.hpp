// SPDX-License-Identifier: MIT
// What a router hands to an MoE layer (RoutingResult) and what the layer records about each
// call (RoutingStats): the routing types every router, MoE layer and aux loss shares.
// Shape suffixes follow btx/core/shapes.hpp.
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// One routing decision for T tokens over E experts, K assignments per token.
struct RoutingResult {
  torch::Tensor indices_TK;  // [T, K] int64, expert of each assignment
  torch::Tensor weights_TK;  // [T, K] combine weight of each assignment (0 when dropped)
  torch::Tensor logits_TE;   // [T, E] router logits (for the z-loss)
  torch::Tensor probs_TE;    // [T, E] softmax of the logits (for load balancing)
  // weights, logits and probs are fp32 (fp64 when the hidden states are fp64).
  torch::Tensor dropped_TK;  // [T, K] bool, assignments over capacity; undefined: none dropped
};

// Per-call statistics of one MoE layer, for routing analysis. The counts come with the one
// host read the dispatch needs anyway; the entropy stays on the routing's device until it
// is asked for, so recording it costs the forward no synchronisation.
struct RoutingStats {
  torch::Tensor tokens_per_expert;  // [E] int64 on CPU: assignments computed by each expert
  int64_t dropped = 0;              // assignments dropped (over capacity)
  int64_t tokens = 0;               // tokens routed in the call
  torch::Tensor entropy_sum;        // [] sum over tokens of -sum_e p_e log p_e (lazy)

  // Mean over tokens of -sum_e p_e log p_e (nats); reads entropy_sum back (a host sync).
  [[nodiscard]] double entropy() const {
    return tokens == 0 || !entropy_sum.defined() ? 0.0
                                                 : entropy_sum.item<double>() / double(tokens);
  }
};

BTX_NAMESPACE_END
}  // namespace btx
