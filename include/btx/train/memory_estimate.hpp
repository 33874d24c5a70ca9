// SPDX-License-Identifier: MIT
// A training process's peak memory, estimated from the architecture, for planning how many
// stages fit on a machine at once (recipe/workers.hpp). AdamW in fp32 keeps four numbers
// per parameter (weight, gradient, two moments: 16 bytes); the activations autograd keeps
// for backward grow with the tokens of a batch: per layer and token about 12 hidden-width
// and 5 FFN-width values per active expert, and at the top the logits, their softmax and
// its gradient (3 x vocabulary). Checked against measured peaks (SmolLM2-135M: dense 3.9 GB
// estimated vs 4.2 GB measured at 4 x 256 tokens, its 4-expert MoE ~9 GB), it is a
// planning figure, not a bound: the allocator's slack comes on top.
#pragma once

#include <cstdint>

#include <btx/core/model_spec.hpp>
#include <btx/train/flops.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// Parameters of a decoder of shape `c` with `shape.experts` FFN experts per layer.
inline double parameter_count(const ArchShape& c, ComputeShape shape = {}) {
  const double D = double(c.hidden_size), F = double(c.intermediate_size);
  const double A = double(c.head_dim), E = double(shape.experts);
  const double attention = double(shape.attention_experts) * D * A *
                           double(2 * c.num_attention_heads + 2 * c.num_key_value_heads);
  const double per_layer = attention + E * 3.0 * D * F + (shape.experts > 1 ? D * E : 0.0) + 2 * D;
  const double embeddings = double(c.vocab_size) * D * (c.tie_word_embeddings ? 1.0 : 2.0);
  return double(c.num_hidden_layers) * per_layer + embeddings + D;
}

// Peak bytes of one process training `c` (fp32 weights and AdamW state) on `tokens` tokens
// per step (its share of a batch: windows x sequence length).
inline int64_t training_memory_estimate(const ArchShape& c, ComputeShape shape, int64_t tokens) {
  const double D = double(c.hidden_size), F = double(c.intermediate_size);
  const double state = 16.0 * parameter_count(c, shape);
  const double per_token_layer =
      12.0 * D * double(shape.attention_experts) + 5.0 * F * double(shape.active_experts);
  const double per_token =
      4.0 * (double(c.num_hidden_layers) * per_token_layer + 3.0 * double(c.vocab_size));
  return int64_t(state + per_token * double(tokens));
}

BTX_NAMESPACE_END
}  // namespace btx
