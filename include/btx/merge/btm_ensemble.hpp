// SPDX-License-Identifier: MIT
// BTM ensemble (Branch-Train-Merge, Li et al. 2022): the N dense experts stay separate and
// their next-token distributions are mixed, weighted by the domain posterior
//   P(e | x_0..x_t) ∝ prior_e * prod_{s=1..t} p_e(x_s | x_<s),
// computed in log space. Without top-k this is exactly the Bayesian mixture: the ensemble's
// probability of a whole sequence is sum_e prior_e * p_e(sequence).
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/core/causal_lm.hpp>
#include <btx/models/common/generate.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

struct BtmEnsembleOptions {
  std::vector<double> prior;     // one positive weight per expert (normalised); empty: uniform
  std::optional<int64_t> top_k;  // keep only the k most probable experts per position
};

// Model: any family's holder or a btx::CausalLM (forward(ids_BS) -> logits_BSV); experts
// must share one vocabulary (checked on the first forward, naming the expert).
template <class Model = CausalLM>
class BtmEnsemble {
 public:
  explicit BtmEnsemble(std::vector<Model> experts, BtmEnsembleOptions options = {})
      : experts_(std::move(experts)), options_(std::move(options)) {
    const size_t n = experts_.size();
    if (n == 0) throw std::invalid_argument("btx::merge::BtmEnsemble: no experts given");
    std::vector<double> prior =
        options_.prior.empty() ? std::vector<double>(n, 1.0) : options_.prior;
    if (prior.size() != n) {
      throw std::invalid_argument("btx::merge::BtmEnsemble: prior has " +
                                  std::to_string(prior.size()) + " entries for " +
                                  std::to_string(n) + " experts");
    }
    double sum = 0.0;
    for (size_t e = 0; e < n; ++e) {
      if (!std::isfinite(prior[e]) || prior[e] <= 0.0) {
        throw std::invalid_argument("btx::merge::BtmEnsemble: prior[" + std::to_string(e) +
                                    "] = " + std::to_string(prior[e]) + " must be finite and > 0");
      }
      sum += prior[e];
    }
    log_prior_.reserve(n);
    for (double p : prior) log_prior_.push_back(std::log(p / sum));
    if (options_.top_k && (*options_.top_k < 1 || *options_.top_k > int64_t(n))) {
      throw std::invalid_argument(
          "btx::merge::BtmEnsemble: top_k=" + std::to_string(*options_.top_k) + " must be in [1, " +
          std::to_string(n) + "]");
    }
  }

  [[nodiscard]] size_t num_experts() const { return experts_.size(); }
  [[nodiscard]] std::vector<Model>& experts() { return experts_; }

  // ids_BS [B, S] -> [B, S, E]: the log posterior used for the prediction at position t
  // (of token t+1): conditioned on x_0..x_t, i.e. log prior_e + sum_{s=1..t} log p_e(x_s |
  // x_<s), normalised over experts. x_0 has no prediction, so position 0 uses the prior.
  // With top_k, all but the k largest are -inf (ties with the k-th are kept) and the rest
  // renormalised.
  torch::Tensor log_posterior(const torch::Tensor& ids_BS) {
    return log_posterior_from(expert_log_probs(ids_BS), ids_BS);
  }

  // ids_BS [B, S] -> log-probs [B, S, V] (fp32) of token t+1 at position t:
  // logsumexp_e(log P(e | x_0..x_t) + log p_e(. | x_0..x_t)).
  torch::Tensor forward(const torch::Tensor& ids_BS) {
    torch::Tensor lp_EBSV = expert_log_probs(ids_BS);
    torch::Tensor post_BSE = log_posterior_from(lp_EBSV, ids_BS);
    auto post_EBS1 = post_BSE.permute({2, 0, 1}).unsqueeze(-1);
    return torch::logsumexp(post_EBS1 + lp_EBSV, 0);
  }

  // Greedy decoding of one prompt (no KV cache: each step re-reads the prefix, so the
  // posterior always sees the whole context).
  std::vector<int64_t> generate(const std::vector<int64_t>& prompt,
                                const GenerateOptions& options = {}) {
    if (prompt.empty()) {
      throw std::invalid_argument("btx::merge::BtmEnsemble::generate needs a non-empty prompt");
    }
    torch::NoGradGuard no_grad;
    auto ids = torch::tensor(prompt, torch::kLong).unsqueeze(0).to(device());
    std::vector<int64_t> out;
    for (int64_t n = 0; n < options.max_new_tokens; ++n) {
      torch::Tensor lp_BSV = forward(ids);
      const int64_t next = lp_BSV.select(1, lp_BSV.size(1) - 1).argmax(-1).item<int64_t>();
      out.push_back(next);
      if (options.stop_token && next == *options.stop_token) break;
      ids = torch::cat({ids, torch::full({1, 1}, next, ids.options())}, 1);
    }
    return out;
  }

 private:
  [[nodiscard]] torch::Device device() const {
    return experts_.front()->parameters().front().device();
  }

  // [E, B, S, V] fp32 log-softmax of every expert.
  torch::Tensor expert_log_probs(const torch::Tensor& ids_BS) {
    if (ids_BS.dim() != 2) {
      throw std::invalid_argument("btx::merge::BtmEnsemble expects token ids [batch, time]");
    }
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> lps;
    for (auto& m : experts_) {
      lps.push_back(torch::log_softmax(m->forward(ids_BS.to(device())).to(torch::kFloat32), -1));
      if (lps.back().size(-1) != lps.front().size(-1)) {
        throw std::invalid_argument("btx::merge::BtmEnsemble: expert " +
                                    std::to_string(lps.size() - 1) + " has vocab_size " +
                                    std::to_string(lps.back().size(-1)) + " but expert 0 has " +
                                    std::to_string(lps.front().size(-1)));
      }
    }
    return torch::stack(lps);
  }

  torch::Tensor log_posterior_from(const torch::Tensor& lp_EBSV, const torch::Tensor& ids_BS) {
    const int64_t E = lp_EBSV.size(0), B = lp_EBSV.size(1), S = lp_EBSV.size(2);
    auto ids = ids_BS.to(lp_EBSV.device());
    // ll_EBS[e, b, s] = log p_e(x_s | x_<s) for s >= 1, and 0 at s = 0.
    auto ll_EBS = torch::zeros({E, B, S}, lp_EBSV.options());
    if (S > 1) {
      auto next_EBS1 = ids.narrow(1, 1, S - 1).unsqueeze(0).unsqueeze(-1).expand({E, B, S - 1, 1});
      auto picked = lp_EBSV.narrow(2, 0, S - 1).gather(-1, next_EBS1).squeeze(-1);
      ll_EBS.narrow(2, 1, S - 1).copy_(picked);
    }
    auto prior_E = torch::tensor(log_prior_, lp_EBSV.options()).view({E, 1, 1});
    auto post_BSE = (prior_E + ll_EBS.cumsum(2)).permute({1, 2, 0});
    if (options_.top_k && *options_.top_k < E) {
      auto kth = std::get<0>(post_BSE.topk(*options_.top_k, -1)).narrow(-1, *options_.top_k - 1, 1);
      post_BSE = post_BSE.masked_fill(post_BSE < kth, -std::numeric_limits<float>::infinity());
    }
    return torch::log_softmax(post_BSE, -1);
  }

  std::vector<Model> experts_;
  BtmEnsembleOptions options_;
  std::vector<double> log_prior_;
};

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
