// SPDX-License-Identifier: MIT
// Held-out evaluation: mean next-token loss over non-overlapping windows of a domain's
// eval tokens, and exact-match accuracy of greedy answers on generated math problems.
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include <btx/data/arithmetic.hpp>
#include <btx/data/text_codec.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// Any causal LM as a function: ids_BT -> log-probabilities or logits [B, T, V].
using LogitsFn = std::function<torch::Tensor(const torch::Tensor& ids_BT)>;

struct EvalResult {
  double loss = 0.0;        // mean nats per token
  double perplexity = 0.0;  // exp(loss)
  int64_t tokens = 0;
};

inline EvalResult evaluate_loss(const LogitsFn& logits_fn, const torch::Tensor& tokens,
                                int64_t seq_len, int64_t max_windows = 64, int64_t batch = 8) {
  torch::NoGradGuard no_grad;
  const int64_t windows = std::min<int64_t>(max_windows, (tokens.numel() - 1) / seq_len);
  TORCH_CHECK(windows > 0, "evaluation needs more than seq_len=", seq_len, " tokens, got ",
              tokens.numel());
  double total = 0.0;
  int64_t count = 0;
  for (int64_t w0 = 0; w0 < windows; w0 += batch) {
    const int64_t nb = std::min(batch, windows - w0);
    std::vector<torch::Tensor> rows;
    for (int64_t w = w0; w < w0 + nb; ++w)
      rows.push_back(tokens.slice(0, w * seq_len, w * seq_len + seq_len + 1));
    auto ids = torch::stack(rows).to(torch::kInt64);
    auto logits = logits_fn(ids.slice(1, 0, seq_len)).to(torch::kFloat32);
    auto nll = torch::nn::functional::cross_entropy(
        logits.reshape({-1, logits.size(-1)}), ids.slice(1, 1).reshape({-1}).to(logits.device()),
        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
    total += nll.item<double>();
    count += nb * seq_len;
  }
  const double loss = total / double(count);
  return {loss, std::exp(loss), count};
}

// Greedy answers until a newline (or max_answer_tokens); returns the fraction exactly
// right. `next_token` maps a prefix to its greedy next token; `codec` is the corpus's.
inline double exact_match(const std::function<int64_t(const std::vector<int64_t>&)>& next_token,
                          const std::vector<ArithmeticProblem>& problems, size_t max_problems = 200,
                          int64_t max_answer_tokens = 8,
                          const TextCodec& codec = TextCodec::bytes()) {
  const size_t n = std::min(max_problems, problems.size());
  if (n == 0) return 0.0;
  size_t right = 0;
  for (size_t i = 0; i < n; ++i) {
    auto ids = codec.encode("\n" + problems[i].prompt);
    const size_t prompt_length = ids.size();
    std::string answer;
    for (int64_t t = 0; t < max_answer_tokens; ++t) {
      ids.push_back(next_token(ids));
      // Decoded as a whole: a subword piece may carry the newline and more.
      answer = codec.decode({ids.begin() + ptrdiff_t(prompt_length), ids.end()});
      if (answer.find('\n') != std::string::npos) break;
    }
    answer = answer.substr(0, answer.find('\n'));
    right += answer == problems[i].answer ? 1 : 0;
  }
  return double(right) / double(n);
}

BTX_NAMESPACE_END
}  // namespace btx
