// SPDX-License-Identifier: MIT
// Token dispatch and combine for MoE layers: group the (token, expert) assignments by
// expert with one stable sort, gather the tokens once, run every expert on its own
// contiguous block, and scatter-add the weighted outputs back. No expert ever sees more
// than its own tokens and nothing of size [T, E, ...] is materialised.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/core/concepts.hpp>
#include <btx/core/detail/host_read.hpp>
#include <btx/core/routing.hpp>
#include <btx/kernels/dispatch.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

struct DispatchOutput {
  torch::Tensor y_TD;                      // [T, D] combined expert outputs
  std::vector<int64_t> tokens_per_expert;  // [E] assignments each expert computed
  int64_t dropped = 0;                     // assignments dropped by the router
};

// Every expert of `experts` on its block of x_ND (rows sorted by expert, counts[e] rows
// for expert e) -> [N, D]; the container's run_sorted fast path when it has one.
template <ExpertContainer X>
torch::Tensor run_expert_blocks(X& experts, const torch::Tensor& x_ND,
                                const std::vector<int64_t>& counts) {
  if constexpr (runs_sorted_blocks<X>) {
    return experts.run_sorted(x_ND, counts);
  } else {
    std::vector<torch::Tensor> blocks;
    int64_t offset = 0;
    for (size_t e = 0; e < counts.size(); ++e) {
      if (counts[e] == 0) continue;
      blocks.push_back(experts.run_expert(int64_t(e), x_ND.narrow(0, offset, counts[e])));
      offset += counts[e];
    }
    return blocks.empty() ? torch::zeros_like(x_ND) : torch::cat(blocks, 0);
  }
}

// Routes x_TD's assignments to E experts: `run_blocks(x_ND, counts_E)` computes the rows
// sorted by expert (the local experts, or an exchange with the ranks holding them).
template <class RunBlocks>
DispatchOutput dispatch_combine(const torch::Tensor& x_TD, const RoutingResult& r, int64_t E,
                                RunBlocks&& run_blocks) {
  const int64_t T = x_TD.size(0);
  if (r.indices_TK.dim() != 2 || r.indices_TK.size(0) != T ||
      r.weights_TK.sizes() != r.indices_TK.sizes()) {
    throw std::invalid_argument("btx::MoE: router returned indices_TK " +
                                c10::str(r.indices_TK.sizes()) + " and weights_TK " +
                                c10::str(r.weights_TK.sizes()) +
                                "; both must be [T=" + std::to_string(T) + ", k]");
  }
  const int64_t K = r.indices_TK.size(1);
  const auto expert_N = r.indices_TK.reshape(-1);  // N = T*K assignment rows, token-major
  // Dropped assignments sort after every expert's (key E), so the kept rows are a prefix.
  const auto key_N =
      r.dropped_TK.defined() ? expert_N.masked_fill(r.dropped_TK.reshape(-1), E) : expert_N;

  // The forward's one host read: the block sizes the experts need and the number dropped,
  // with the checks of the router's output (indices in range, finite logits) folded into
  // the same transfer.
  const auto long_options = expert_N.options().dtype(torch::kLong);
  const auto zero = torch::zeros({1}, long_options);
  const bool any = expert_N.numel() > 0;
  const auto host = read_to_host(torch::cat(
      {torch::zeros({E + 1}, long_options)
           .index_add_(0, key_N.clamp(0, E), torch::ones_like(key_N)),
       any ? expert_N.min().reshape({1}) : zero, any ? expert_N.max().reshape({1}) : zero,
       r.logits_TE.defined() ? (~torch::isfinite(r.logits_TE)).any().reshape({1}).to(torch::kLong)
                             : zero}));
  const int64_t* h = host.data_ptr<int64_t>();
  if (h[E + 3] != 0) {
    throw std::runtime_error(
        "btx::MoE: non-finite router logits (NaN or Inf); check the hidden states and the "
        "router weight `gate.weight` for NaN/Inf");
  }
  if (h[E + 1] < 0)
    throw std::invalid_argument("btx::MoE: router returned a negative expert index");
  if (h[E + 2] >= E) {
    throw std::invalid_argument("btx::MoE: router returned an expert index >= num_experts=" +
                                std::to_string(E));
  }
  DispatchOutput out;
  out.tokens_per_expert.assign(h, h + E);
  out.dropped = h[E];

  // Stable sort keeps token order inside each expert's block.
  const auto order_N = std::get<1>(key_N.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false))
                           .narrow(0, 0, T * K - out.dropped);
  const auto token_N = order_N.div(K, "floor");
  const auto x_ND = x_TD.index_select(0, token_N);
  torch::Tensor y_ND = run_blocks(x_ND, out.tokens_per_expert);
  // The experts may compute in another dtype than x_TD's (bf16 under autocast): the
  // weighted sum is taken in x_TD's.
  const auto dtype = x_TD.scalar_type();
  const auto w_N1 = r.weights_TK.reshape(-1).index_select(0, order_N).unsqueeze(1).to(dtype);
  out.y_TD = kernels::combine(y_ND.to(dtype), token_N, w_N1, T);
  return out;
}

// Every expert local: the experts run in this process.
template <ExpertContainer X>
DispatchOutput dispatch_combine(const torch::Tensor& x_TD, const RoutingResult& r, X& experts) {
  return dispatch_combine(x_TD, r, experts.num_experts(),
                          [&](const torch::Tensor& x_ND, const std::vector<int64_t>& counts_E) {
                            return run_expert_blocks(experts, x_ND, counts_E);
                          });
}

BTX_NAMESPACE_END
}  // namespace btx
