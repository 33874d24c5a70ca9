// SPDX-License-Identifier: MIT
// Greedy decoding for evaluation (exact-match answers on the math domain, say). With a
// KV cache each step feeds one token; without, each step re-reads the whole prefix.
// Both give the same tokens; the cache is only faster.
#pragma once

#include <torch/torch.h>

#include <optional>
#include <vector>

#include <btx/core/kv_cache.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

struct GenerateOptions {
  int64_t max_new_tokens = 32;
  std::optional<int64_t> stop_token;  // generation ends after emitting this token
  bool use_cache = true;
};

// Works for any causal LM holder (or btx::CausalLM) with forward(ids_BS, KVCache*) ->
// logits_BSV.
template <class Model>
std::vector<int64_t> generate_greedy(Model& model, const std::vector<int64_t>& prompt,
                                     const GenerateOptions& options = {}) {
  TORCH_CHECK(!prompt.empty(), "btx::generate_greedy needs a non-empty prompt");
  torch::NoGradGuard no_grad;
  const auto device = model->parameters().front().device();
  auto ids = torch::tensor(prompt, torch::kLong).unsqueeze(0).to(device);
  KVCache cache;
  std::vector<int64_t> out;
  torch::Tensor step_input = ids;
  for (int64_t n = 0; n < options.max_new_tokens; ++n) {
    torch::Tensor logits_BSV =
        options.use_cache ? model->forward(step_input, &cache) : model->forward(ids, nullptr);
    const int64_t next = logits_BSV.select(1, logits_BSV.size(1) - 1).argmax(-1).item<int64_t>();
    out.push_back(next);
    if (options.stop_token && next == *options.stop_token) break;
    auto next_t = torch::full({1, 1}, next, torch::TensorOptions(torch::kLong).device(device));
    ids = torch::cat({ids, next_t}, 1);
    step_input = next_t;
  }
  return out;
}

BTX_NAMESPACE_END
}  // namespace btx
