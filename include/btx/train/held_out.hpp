// SPDX-License-Identifier: MIT
// Held-out loss per domain for learning curves and model cards: the mean next-token loss of
// each domain's first `windows` held-out windows, evaluated where the model lives, and their
// average: {"loss": {domain: nats}, "avg": nats}.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/core/causal_lm.hpp>
#include <btx/train/evaluate.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// (domain name, [N] held-out token ids), in report order.
using HeldOutSet = std::vector<std::pair<std::string, torch::Tensor>>;

inline nlohmann::json held_out_losses(const CausalLM& model, const HeldOutSet& held_out,
                                      int64_t seq_len, int64_t windows) {
  const auto device = model.module().parameters().front().device();
  const LogitsFn logits = [&](const torch::Tensor& ids) { return model.forward(ids.to(device)); };
  nlohmann::json out = {{"loss", nlohmann::json::object()}};
  double sum = 0;
  for (const auto& [name, tokens] : held_out) {
    const double l = evaluate_loss(logits, tokens, seq_len, windows).loss;
    out["loss"][name] = l;
    sum += l;
  }
  out["avg"] = held_out.empty() ? 0.0 : sum / double(held_out.size());
  return out;
}

BTX_NAMESPACE_END
}  // namespace btx
