// SPDX-License-Identifier: MIT
// The public helpers routers are written with (the shipped ones use them; so can yours):
// the fp32 router logits with their non-finite check, the router weight, and tensors on
// the input's device. The types they produce are in btx/core/routing.hpp.
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include <btx/core/routing.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// Throws std::invalid_argument naming `where` unless x_TD is [T, hidden].
inline void check_hidden(const torch::Tensor& x_TD, int64_t hidden, const char* where) {
  if (x_TD.dim() != 2 || x_TD.size(1) != hidden) {
    throw std::invalid_argument(std::string(where) + ": expected hidden states [tokens, " +
                                std::to_string(hidden) + "], got " + c10::str(x_TD.sizes()) +
                                "; router and model must agree on hidden_size");
  }
}

// The dtype routing math runs in: fp32, or fp64 for fp64 inputs (never bf16/fp16, whose
// rounding would reorder near-tied experts).
inline torch::ScalarType routing_dtype(const torch::Tensor& x) {
  return x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

// logits_TE = x_TD W^T in routing_dtype(x_TD), for a router weight w_ED [E, D]; throws
// std::invalid_argument naming `where` on a width mismatch. NaN/Inf logits are refused by
// the MoE layer's dispatch, in the one host read of its forward (moe/dispatch.hpp).
// Autocast (bf16 mixed precision) is off inside: routing decisions and the softmax stay in
// fp32 whatever the rest of the forward computes in.
inline torch::Tensor router_logits(const torch::Tensor& x_TD, const torch::Tensor& w_ED,
                                   const char* where) {
  check_hidden(x_TD, w_ED.size(1), where);
  const auto dtype = routing_dtype(x_TD);
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  return torch::mm(x_TD.to(dtype), w_ED.to(dtype).t());
}

// Registers the router weight "weight" [E, D] of `m` with nn.Linear's default init
// (uniform +-1/sqrt(D)), so it is saved as `gate.weight` like HF Mixtral's router.
inline torch::Tensor make_router_weight(torch::nn::Module& m, int64_t experts, int64_t hidden,
                                        const char* where) {
  if (experts <= 0) {
    throw std::invalid_argument(std::string(where) + ": num_experts must be >= 1, got " +
                                std::to_string(experts));
  }
  if (hidden <= 0) {
    throw std::invalid_argument(std::string(where) + ": hidden_size must be >= 1, got " +
                                std::to_string(hidden));
  }
  const double bound = 1.0 / std::sqrt(static_cast<double>(hidden));
  return m.register_parameter("weight", torch::empty({experts, hidden}).uniform_(-bound, bound));
}

// Tensors a router creates itself must live on its input's device (a CPU-made index
// tensor fails, or silently syncs, once the model runs on a GPU). These build them there.

// int64 on x's device: for expert indices (RoutingResult::indices_TK).
inline torch::TensorOptions index_options(const torch::Tensor& x) {
  return torch::TensorOptions().dtype(torch::kLong).device(x.device());
}

// bool on x's device: for masks (RoutingResult::dropped_TK).
inline torch::TensorOptions mask_options(const torch::Tensor& x) {
  return torch::TensorOptions().dtype(torch::kBool).device(x.device());
}

// routing_dtype(x) on x's device: for weights a router makes up (e.g. constant ones).
inline torch::TensorOptions weight_options(const torch::Tensor& x) {
  return torch::TensorOptions().dtype(routing_dtype(x)).device(x.device());
}

// [tokens, experts] int64 on x's device whose every row is 0, 1, ..., experts - 1: the
// indices of a router that lists every expert for every token (soft, expert choice).
inline torch::Tensor every_expert_TE(int64_t tokens, int64_t experts, const torch::Tensor& x) {
  return torch::arange(experts, index_options(x)).unsqueeze(0).expand({tokens, experts});
}

BTX_NAMESPACE_END
}  // namespace btx
