// SPDX-License-Identifier: MIT
// PackedSwiGLU: E SwiGLU experts with their weights stacked along a leading expert axis
// (the fast path). Names and layouts follow btx's MoE contract, = HF Mixtral's experts:
//   gate_proj [E, I, H] (w1), up_proj [E, I, H] (w3), down_proj [E, H, I] (w2).
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/models/llama_layers.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

class PackedSwiGLU : public torch::nn::Cloneable<PackedSwiGLU> {
 public:
  PackedSwiGLU(int64_t num_experts, int64_t hidden_size, int64_t intermediate_size)
      : experts_(num_experts), hidden_(hidden_size), inter_(intermediate_size) {
    if (num_experts <= 0) {
      throw std::invalid_argument("btx::PackedSwiGLU: num_experts must be >= 1, got " +
                                  std::to_string(num_experts));
    }
    if (hidden_size <= 0 || intermediate_size <= 0) {
      throw std::invalid_argument(
          "btx::PackedSwiGLU: hidden_size and intermediate_size must be "
          ">= 1, got " +
          std::to_string(hidden_size) + ", " + std::to_string(intermediate_size));
    }
    reset();
  }
  // nn.Linear's default init per expert: uniform +-1/sqrt(fan_in).
  void reset() override {
    const double bh = 1.0 / std::sqrt(static_cast<double>(hidden_));
    const double bi = 1.0 / std::sqrt(static_cast<double>(inter_));
    gate_proj = register_parameter("gate_proj",
                                   torch::empty({experts_, inter_, hidden_}).uniform_(-bh, bh));
    up_proj =
        register_parameter("up_proj", torch::empty({experts_, inter_, hidden_}).uniform_(-bh, bh));
    down_proj = register_parameter("down_proj",
                                   torch::empty({experts_, hidden_, inter_}).uniform_(-bi, bi));
  }

  // E experts that all start as copies of `dense` (sparse upcycling).
  static std::shared_ptr<PackedSwiGLU> copies_of(const LlamaMLPImpl& dense, int64_t num_experts) {
    auto packed =
        std::make_shared<PackedSwiGLU>(num_experts, dense.hidden_size(), dense.intermediate_size());
    torch::NoGradGuard no_grad;
    packed->to(dense.gate_proj->weight.device(), dense.gate_proj->weight.scalar_type());
    for (int64_t e = 0; e < num_experts; ++e) packed->set_expert(e, dense);
    return packed;
  }
  // Copies a dense SwiGLU block into expert e.
  void set_expert(int64_t e, const LlamaMLPImpl& dense) {
    torch::NoGradGuard no_grad;
    gate_proj[e].copy_(dense.gate_proj->weight);
    up_proj[e].copy_(dense.up_proj->weight);
    down_proj[e].copy_(dense.down_proj->weight);
  }

  // Expert e on a contiguous block x_NH [N, H] -> [N, H].
  torch::Tensor run_expert(int64_t e, const torch::Tensor& x_NH) {
    return swiglu(x_NH, gate_proj[e], up_proj[e], down_proj[e]);
  }

  // x_NH sorted by expert, counts[e] rows for expert e -> [N, H]. The weights are unbound
  // once per call, so the backward stacks E gradients instead of adding E full-size ones.
  torch::Tensor run_sorted(const torch::Tensor& x_NH, const std::vector<int64_t>& counts) {
    auto g = gate_proj.unbind(0), u = up_proj.unbind(0), d = down_proj.unbind(0);
    std::vector<torch::Tensor> out;
    out.reserve(counts.size());
    int64_t offset = 0;
    for (size_t e = 0; e < counts.size(); ++e) {
      if (counts[e] == 0) continue;
      out.push_back(swiglu(x_NH.narrow(0, offset, counts[e]), g[e], u[e], d[e]));
      offset += counts[e];
    }
    if (out.empty()) return torch::zeros_like(x_NH);
    return out.size() == 1 ? out[0] : torch::cat(out, 0);
  }

  [[nodiscard]] int64_t num_experts() const { return experts_; }
  [[nodiscard]] int64_t hidden_size() const { return hidden_; }
  [[nodiscard]] int64_t intermediate_size() const { return inter_; }

  torch::Tensor gate_proj, up_proj, down_proj;

 private:
  static torch::Tensor swiglu(const torch::Tensor& x_NH, const torch::Tensor& w1_IH,
                              const torch::Tensor& w3_IH, const torch::Tensor& w2_HI) {
    auto h_NI = torch::silu(torch::mm(x_NH, w1_IH.t())) * torch::mm(x_NH, w3_IH.t());
    return torch::mm(h_NI, w2_HI.t());
  }

  int64_t experts_, hidden_, inter_;
};

BTX_NAMESPACE_END
}  // namespace btx
