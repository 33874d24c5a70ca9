// SPDX-License-Identifier: MIT
// Where an MoE model sends each domain's tokens: per MoE layer, the share of a domain's
// held-out tokens routed to each expert (top-k picks counted once each, so a layer's shares
// sum to 1), over the first `windows` windows of seq_len tokens. The routing heatmaps of
// btx-pipeline's report and btx-train's come from it.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <btx/core/causal_lm.hpp>
#include <btx/moe/moe_layer.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// domain -> [layer][expert] share of that domain's routed tokens.
using RoutingShares = std::map<std::string, std::vector<std::vector<double>>>;

// `held_out`: (domain name, [N] token ids). The model is put in eval mode.
inline RoutingShares routing_shares(
    const CausalLM& model, const std::vector<std::pair<std::string, torch::Tensor>>& held_out,
    int64_t seq_len, int64_t windows) {
  RoutingShares shares;
  torch::NoGradGuard no_grad;
  model->eval();
  const auto device = model.module().parameters().front().device();
  const auto layers = moe_layers(model.module());
  for (const auto& [name, tokens_N] : held_out) {
    std::vector<torch::Tensor> counts;  // per layer [E]
    const int64_t T = seq_len;
    const int64_t n = std::min<int64_t>(windows, (tokens_N.numel() - 1) / T);
    for (int64_t w = 0; w < n; ++w) {
      auto ids = tokens_N.slice(0, w * T, w * T + T).to(torch::kInt64).unsqueeze(0);
      (void)model.forward(ids.to(device));
      // One tensor per layer: assign(n, t) would copy one handle n times, and the in-place
      // sums below would then add every layer into the same storage.
      for (size_t l = 0; l < layers.size(); ++l) {
        const auto tokens_E =
            layers[l].second->last_stats().tokens_per_expert.to(torch::kCPU, torch::kDouble);
        if (counts.size() <= l) counts.push_back(torch::zeros_like(tokens_E));
        counts[l] += tokens_E;
      }
    }
    auto& per_layer = shares[name];
    for (auto& c : counts) {
      c = (c / c.sum().clamp_min(1.0)).contiguous();
      per_layer.emplace_back(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
    }
  }
  return shares;
}

BTX_NAMESPACE_END
}  // namespace btx
