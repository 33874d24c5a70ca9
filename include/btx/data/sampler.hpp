// SPDX-License-Identifier: MIT
// Random training windows from one or several token streams (a domain or a mixture).
// Counter-based: batch n depends only on (seed, n), so a resumed run that knows its step
// draws exactly the batches an uninterrupted run would have drawn.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

class WindowSampler {
 public:
  // sources: [N_i] int32 token streams; weights: mixture probabilities (any positive scale).
  WindowSampler(std::vector<torch::Tensor> sources, std::vector<double> weights, int64_t seq_len,
                uint64_t seed, std::vector<std::string> names = {})
      : sources_(std::move(sources)), weights_(std::move(weights)), seq_len_(seq_len), seed_(seed) {
    if (sources_.empty()) throw std::invalid_argument("WindowSampler: no token sources");
    if (weights_.empty()) weights_.assign(sources_.size(), 1.0);
    if (weights_.size() != sources_.size()) {
      throw std::invalid_argument("WindowSampler: " + std::to_string(weights_.size()) +
                                  " weights for " + std::to_string(sources_.size()) + " sources");
    }
    if (seq_len_ <= 0) throw std::invalid_argument("WindowSampler: seq_len must be > 0");
    for (size_t i = 0; i < sources_.size(); ++i) {
      std::string name = "#";  // appended, not operator+: avoids a GCC 12 false positive
      if (i < names.size()) {
        name = names[i];
      } else {
        name += std::to_string(i);
      }
      if (sources_[i].numel() < seq_len_ + 1) {
        throw std::invalid_argument(
            "source '" + name + "' has " + std::to_string(sources_[i].numel()) +
            " tokens, fewer than seq_len + 1 = " + std::to_string(seq_len_ + 1));
      }
      if (!(weights_[i] >= 0.0)) {
        throw std::invalid_argument("source '" + name + "' has a negative mixture weight");
      }
      sources_[i] = sources_[i].to(torch::kInt32).contiguous();
    }
  }

  // Batch number `index`: [B, seq_len + 1] int64 (inputs are [:, :-1], targets [:, 1:]).
  [[nodiscard]] torch::Tensor batch(int64_t index, int64_t batch_size) const {
    std::mt19937_64 rng(seed_ * 0x9E3779B97F4A7C15ull + uint64_t(index));
    std::discrete_distribution<size_t> pick(weights_.begin(), weights_.end());
    auto out = torch::empty({batch_size, seq_len_ + 1}, torch::kInt64);
    auto* dst = out.data_ptr<int64_t>();
    for (int64_t b = 0; b < batch_size; ++b) {
      const auto& src = sources_[pick(rng)];
      std::uniform_int_distribution<int64_t> start(0, src.numel() - seq_len_ - 1);
      const int64_t s = start(rng);
      const auto* p = src.data_ptr<int32_t>() + s;
      for (int64_t t = 0; t <= seq_len_; ++t) dst[b * (seq_len_ + 1) + t] = p[t];
    }
    return out;
  }

  [[nodiscard]] int64_t seq_len() const { return seq_len_; }

 private:
  std::vector<torch::Tensor> sources_;
  std::vector<double> weights_;
  int64_t seq_len_;
  uint64_t seed_;
};

BTX_NAMESPACE_END
}  // namespace btx
