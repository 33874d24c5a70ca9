// SPDX-License-Identifier: MIT
// Training FLOPs per token of a decoder (any family, dense or MoE), for comparing methods at equal
// compute. Kaplan et al.'s estimate: forward = 2 x (matmul parameters touched per token)
// + 2 x layers x context x attention width; training = 3 x forward (backward ~ 2 x).
// For an MoE only the k routed experts' FFNs count, plus the router.
#pragma once

#include <cstdint>

#include <btx/core/model_spec.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

struct ComputeShape {
  int64_t experts = 1;         // experts per MoE layer (1: dense)
  int64_t active_experts = 1;  // experts run per token (k); dense: 1
};

inline double training_flops_per_token(const ArchShape& c, int64_t seq_len,
                                       ComputeShape shape = {}) {
  const double D = double(c.hidden_size), F = double(c.intermediate_size);
  const double A = double(c.head_dim);
  const double attn_params = D * A * double(2 * c.num_attention_heads + 2 * c.num_key_value_heads);
  const double ffn_params = 3.0 * D * F * double(shape.active_experts);
  const double router_params = shape.experts > 1 ? D * double(shape.experts) : 0.0;
  const double per_layer = attn_params + ffn_params + router_params;
  const double matmul_params = double(c.num_hidden_layers) * per_layer + double(c.vocab_size) * D;
  // Attention scores and weighted values: Kaplan's 2 x layers x context x width.
  const double attention =
      2.0 * double(c.num_hidden_layers) * double(seq_len) * double(c.num_attention_heads) * A;
  return 3.0 * (2.0 * matmul_params + attention);
}

BTX_NAMESPACE_END
}  // namespace btx
