// SPDX-License-Identifier: MIT
// Training FLOPs per token of a decoder (any family, dense or MoE), for comparing methods at equal
// compute. Kaplan et al.'s estimate: forward = 2 x (matmul parameters touched per token)
// + 2 x layers x context x attention width; training = 3 x forward (backward ~ 2 x).
// For an MoE only the k routed experts' FFNs count, plus the router; attention experts all
// count (each computes keys and values for every token).
#pragma once

#include <cstdint>

#include <btx/core/model_spec.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

struct ComputeShape {
  int64_t experts = 1;            // experts per MoE layer (1: dense)
  int64_t active_experts = 1;     // experts run per token (k); dense: 1
  int64_t attention_experts = 1;  // attention experts per layer, all of them run (1: none)
};

// Matmul parameters a token touches per layer, by part (also for counting what frozen parts
// save): the attention projections (every attention expert's), one FFN, the routers of
// `shape`, and (outside the layers) the LM head.
struct MatmulParams {
  double attention = 0, ffn = 0, router = 0, head = 0;
  // Per layer, with the k routed experts' FFNs.
  [[nodiscard]] double per_layer(const ComputeShape& shape) const {
    return attention + ffn * double(shape.active_experts) + router;
  }
};
inline MatmulParams matmul_params_per_token(const ArchShape& c, ComputeShape shape = {}) {
  const double D = double(c.hidden_size), F = double(c.intermediate_size);
  const double A = double(c.head_dim);
  const double Ea = double(shape.attention_experts);
  return {Ea * D * A * double(2 * c.num_attention_heads + 2 * c.num_key_value_heads), 3.0 * D * F,
          (shape.experts > 1 ? D * double(shape.experts) : 0.0) +
              (shape.attention_experts > 1 ? D * Ea : 0.0),
          double(c.vocab_size) * D};
}

inline double training_flops_per_token(const ArchShape& c, int64_t seq_len,
                                       ComputeShape shape = {}) {
  const MatmulParams m = matmul_params_per_token(c, shape);
  const double matmul_params = double(c.num_hidden_layers) * m.per_layer(shape) + m.head;
  // Attention scores and weighted values: Kaplan's 2 x layers x context x width (per
  // attention expert: each attends over every token).
  const double attention = 2.0 * double(shape.attention_experts) * double(c.num_hidden_layers) *
                           double(seq_len) * double(c.num_attention_heads) * double(c.head_dim);
  return 3.0 * (2.0 * matmul_params + attention);
}

// Training FLOPs per token when only some weights train: the forward (2 per matmul
// parameter), the backward's input gradients (as much again: they still flow through the
// frozen parts down to the lowest trainable weight), and weight gradients (2 per matmul
// parameter) only for the `trained` ones, per layer and for the LM head. Counting input
// gradients through every layer makes this an upper bound (the first layer's attention
// needs none when only FFNs train).
inline double partly_frozen_training_flops_per_token(const ArchShape& c, int64_t seq_len,
                                                     ComputeShape shape, double trained_per_layer,
                                                     double trained_head) {
  const double all = training_flops_per_token(c, seq_len, shape);
  const MatmulParams m = matmul_params_per_token(c, shape);
  const double frozen = double(c.num_hidden_layers) * (m.per_layer(shape) - trained_per_layer) +
                        (m.head - trained_head);
  return all - 2.0 * frozen;
}

BTX_NAMESPACE_END
}  // namespace btx
