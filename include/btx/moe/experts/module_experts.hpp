// SPDX-License-Identifier: MIT
// ModuleExperts: experts that are arbitrary LibTorch modules with forward(Tensor) ->
// Tensor (they may differ from each other). Expert j's parameters are named
// `{j}.<its own names>`, e.g. `experts.0.fc1.weight` inside an MoE layer.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

class ModuleExperts : public torch::nn::Cloneable<ModuleExperts> {
 public:
  // `hidden_size` is the width every expert maps [N, D] -> [N, D] over; the layer checks
  // it against the router's.
  ModuleExperts(std::vector<torch::nn::AnyModule> experts, int64_t hidden_size)
      : experts_(std::move(experts)), hidden_(hidden_size) {
    if (experts_.empty()) {
      throw std::invalid_argument("btx::ModuleExperts: needs at least one expert, got zero");
    }
    if (hidden_size <= 0) {
      throw std::invalid_argument("btx::ModuleExperts: hidden_size must be >= 1, got " +
                                  std::to_string(hidden_size));
    }
    for (size_t j = 0; j < experts_.size(); ++j) {
      if (experts_[j].is_empty()) {
        throw std::invalid_argument("btx::ModuleExperts: expert " + std::to_string(j) +
                                    " is an empty AnyModule");
      }
      register_module(std::to_string(j), experts_[j].ptr());
    }
  }
  // N deep copies of one module (sparse upcycling).
  static std::shared_ptr<ModuleExperts> copies_of(const torch::nn::AnyModule& block,
                                                  int64_t num_experts, int64_t hidden_size) {
    if (num_experts <= 0) {
      throw std::invalid_argument("btx::ModuleExperts: num_experts must be >= 1, got " +
                                  std::to_string(num_experts));
    }
    std::vector<torch::nn::AnyModule> experts;
    for (int64_t j = 0; j < num_experts; ++j) experts.push_back(block.clone());
    return std::make_shared<ModuleExperts>(std::move(experts), hidden_size);
  }

  // Called on the copy inside clone(): gives it its own deep copies of the experts, so the
  // clone never shares (or overwrites) the original's modules. Experts must be Cloneable.
  void reset() override {
    for (size_t j = 0; j < experts_.size(); ++j) {
      experts_[j] = experts_[j].clone();
      register_module(std::to_string(j), experts_[j].ptr());
    }
  }

  torch::Tensor run_expert(int64_t e, const torch::Tensor& x_ND) {
    return experts_.at(static_cast<size_t>(e)).forward<torch::Tensor>(x_ND);
  }

  [[nodiscard]] int64_t num_experts() const { return static_cast<int64_t>(experts_.size()); }
  [[nodiscard]] int64_t hidden_size() const { return hidden_; }
  [[nodiscard]] torch::nn::AnyModule& expert(size_t j) { return experts_.at(j); }

 private:
  std::vector<torch::nn::AnyModule> experts_;
  int64_t hidden_;
};

BTX_NAMESPACE_END
}  // namespace btx
