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
#include <btx/core/routing.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

struct DispatchOutput {
  torch::Tensor y_TD;                      // [T, D] combined expert outputs
  std::vector<int64_t> tokens_per_expert;  // [E] assignments each expert computed
  int64_t dropped = 0;                     // assignments dropped by the router
};

template <ExpertContainer X>
DispatchOutput dispatch_combine(const torch::Tensor& x_TD, const RoutingResult& r, X& experts) {
  const int64_t T = x_TD.size(0), E = experts.num_experts();
  if (r.indices_TK.dim() != 2 || r.indices_TK.size(0) != T ||
      r.weights_TK.sizes() != r.indices_TK.sizes()) {
    throw std::invalid_argument("btx::MoE: router returned indices_TK " +
                                c10::str(r.indices_TK.sizes()) + " and weights_TK " +
                                c10::str(r.weights_TK.sizes()) +
                                "; both must be [T=" + std::to_string(T) + ", k]");
  }
  const int64_t K = r.indices_TK.size(1);
  auto expert_N = r.indices_TK.reshape(-1);  // N = T*K assignment rows, token-major
  auto weight_N = r.weights_TK.reshape(-1);
  torch::Tensor slot_N;  // assignment id (token * K + j) of every kept assignment
  DispatchOutput out;
  if (r.dropped_TK.defined()) {
    slot_N = (~r.dropped_TK.reshape(-1)).nonzero().squeeze(1);
    out.dropped = T * K - slot_N.size(0);
    expert_N = expert_N.index_select(0, slot_N);
    weight_N = weight_N.index_select(0, slot_N);
  }
  if (expert_N.numel() > 0 && expert_N.min().item<int64_t>() < 0) {
    throw std::invalid_argument("btx::MoE: router returned a negative expert index");
  }
  auto counts_E = torch::bincount(expert_N, {}, E).to(torch::kCPU);
  if (counts_E.size(0) != E) {
    throw std::invalid_argument("btx::MoE: router returned an expert index >= num_experts=" +
                                std::to_string(E));
  }
  out.tokens_per_expert.assign(counts_E.data_ptr<int64_t>(), counts_E.data_ptr<int64_t>() + E);

  // Stable sort keeps token order inside each expert's block.
  auto order_N = std::get<1>(expert_N.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  auto source_N = slot_N.defined() ? slot_N.index_select(0, order_N) : order_N;
  auto token_N = source_N.div(K, "floor");
  auto x_ND = x_TD.index_select(0, token_N);
  torch::Tensor y_ND;
  if constexpr (runs_sorted_blocks<X>) {
    y_ND = experts.run_sorted(x_ND, out.tokens_per_expert);
  } else {
    std::vector<torch::Tensor> blocks;
    int64_t offset = 0;
    for (int64_t e = 0; e < E; ++e) {
      const int64_t n = out.tokens_per_expert[static_cast<size_t>(e)];
      if (n == 0) continue;
      blocks.push_back(experts.run_expert(e, x_ND.narrow(0, offset, n)));
      offset += n;
    }
    y_ND = blocks.empty() ? torch::zeros_like(x_ND) : torch::cat(blocks, 0);
  }
  auto w_N1 = weight_N.index_select(0, order_N).unsqueeze(1).to(y_ND.scalar_type());
  out.y_TD = torch::zeros_like(x_TD).index_add(0, token_N, y_ND * w_N1);
  return out;
}

BTX_NAMESPACE_END
}  // namespace btx
