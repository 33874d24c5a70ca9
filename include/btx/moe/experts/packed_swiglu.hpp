// SPDX-License-Identifier: MIT
// PackedSwiGLU: E gated-FFN experts with their weights stacked along a leading expert axis
// (the fast path). SwiGLU by default; GeGLU (tanh GELU) for families that use it. Names and
// layouts follow btx's MoE contract (= HF Mixtral's experts):
//   gate_proj [E, F, D] (w1), up_proj [E, F, D] (w3), down_proj [E, D, F] (w2).
// The sorted blocks run as three grouped GEMMs where this LibTorch supports them for the
// device and dtype (experts/grouped_mm.hpp), else as one matmul chain per expert; the
// kernel is selectable (set_kernel), and both give the same values and gradients.
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/core/gated_ffn.hpp>
#include <btx/moe/experts/grouped_mm.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

class PackedSwiGLU : public torch::nn::Cloneable<PackedSwiGLU> {
 public:
  PackedSwiGLU(int64_t num_experts, int64_t hidden_size, int64_t intermediate_size,
               GateActivation activation = GateActivation::silu)
      : experts_(num_experts), hidden_(hidden_size), inter_(intermediate_size), act_(activation) {
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
    const double bound_D = 1.0 / std::sqrt(static_cast<double>(hidden_));
    const double bound_F = 1.0 / std::sqrt(static_cast<double>(inter_));
    gate_proj = register_parameter(
        "gate_proj", torch::empty({experts_, inter_, hidden_}).uniform_(-bound_D, bound_D));
    up_proj = register_parameter(
        "up_proj", torch::empty({experts_, inter_, hidden_}).uniform_(-bound_D, bound_D));
    down_proj = register_parameter(
        "down_proj", torch::empty({experts_, hidden_, inter_}).uniform_(-bound_F, bound_F));
  }

  // E experts that all start as copies of `dense` (sparse upcycling).
  static std::shared_ptr<PackedSwiGLU> copies_of(const GatedFfnSource& dense, int64_t num_experts) {
    const auto gate_FD = dense.gate_weight_FD();
    auto packed = std::make_shared<PackedSwiGLU>(num_experts, gate_FD.size(1), gate_FD.size(0),
                                                 dense.activation());
    torch::NoGradGuard no_grad;
    packed->to(gate_FD.device(), gate_FD.scalar_type());
    for (int64_t e = 0; e < num_experts; ++e) packed->set_expert(e, dense);
    return packed;
  }
  // Copies a dense gated FFN into expert e (its activation must match the experts').
  void set_expert(int64_t e, const GatedFfnSource& dense) {
    if (dense.activation() != act_) {
      throw std::invalid_argument("btx::PackedSwiGLU::set_expert: the dense block's activation (" +
                                  gate_activation_name(dense.activation()) +
                                  ") differs from the experts' (" + gate_activation_name(act_) +
                                  ")");
    }
    torch::NoGradGuard no_grad;
    gate_proj[e].copy_(dense.gate_weight_FD());
    up_proj[e].copy_(dense.up_weight_FD());
    down_proj[e].copy_(dense.down_weight_DF());
  }

  // Keeps experts [first, first + count) only (expert parallelism: this rank's shard). The
  // parameters stay the same registered tensors, so optimizers and hooks still see them.
  void keep_experts(int64_t first, int64_t count) {
    if (first < 0 || count < 1 || first + count > num_experts()) {
      throw std::invalid_argument("btx::PackedSwiGLU::keep_experts: [" + std::to_string(first) +
                                  ", " + std::to_string(first + count) + ") is not within its " +
                                  std::to_string(num_experts()) + " experts");
    }
    torch::NoGradGuard no_grad;
    for (auto* w : {&gate_proj, &up_proj, &down_proj})
      w->set_data(w->narrow(0, first, count).clone());
  }

  // Expert e on a contiguous block x_ND [N, D] -> [N, D].
  torch::Tensor run_expert(int64_t e, const torch::Tensor& x_ND) {
    return gated(x_ND, gate_proj[e], up_proj[e], down_proj[e]);
  }

  // x_ND sorted by expert, counts[e] rows for expert e -> [N, D], by the kernel chosen.
  torch::Tensor run_sorted(const torch::Tensor& x_ND, const std::vector<int64_t>& counts) {
    return uses_grouped_mm(x_ND) && x_ND.size(0) > 0 ? run_grouped(x_ND, counts)
                                                     : run_loop(x_ND, counts);
  }

  // Grouped GEMMs where supported (automatic, the default), always, or never.
  void set_kernel(ExpertKernel kernel) { kernel_ = kernel; }
  [[nodiscard]] ExpertKernel kernel() const { return kernel_; }
  // Whether run_sorted would use grouped GEMMs for x_ND's device and dtype; the grouped
  // kernel where it cannot run is a std::invalid_argument naming why.
  [[nodiscard]] bool uses_grouped_mm(const torch::Tensor& x_ND) const {
    if (kernel_ == ExpertKernel::loop) return false;
    const bool usable = grouped_mm_usable(x_ND, hidden_, inter_);
    if (kernel_ == ExpertKernel::grouped && !usable) {
      throw std::invalid_argument(
          "btx::PackedSwiGLU: the grouped kernel cannot run here (at::_grouped_mm of " +
          std::string(c10::toString(expert_compute_dtype(x_ND))) + " on " + x_ND.device().str() +
          ", hidden " + std::to_string(hidden_) + ", intermediate " + std::to_string(inter_) +
          "); use ExpertKernel::automatic or loop");
    }
    return usable;
  }

  // One grouped GEMM per projection over every expert's block.
  torch::Tensor run_grouped(const torch::Tensor& x_ND, const std::vector<int64_t>& counts) {
    const auto dtype = expert_compute_dtype(x_ND);
    const auto offs = group_offsets(counts, x_ND.device());
    const auto x = x_ND.to(dtype);
    const auto w1_EDF = gate_proj.to(dtype).transpose(1, 2);
    const auto w3_EDF = up_proj.to(dtype).transpose(1, 2);
    const auto w2_EFD = down_proj.to(dtype).transpose(1, 2);
    const auto h_NF = apply_gate_activation(at::_grouped_mm(x, w1_EDF, offs), act_) *
                      at::_grouped_mm(x, w3_EDF, offs);
    return at::_grouped_mm(h_NF, w2_EFD, offs);
  }

  // One matmul chain per expert. The weights are unbound once per call, so the backward
  // stacks E gradients instead of adding E full-size ones.
  torch::Tensor run_loop(const torch::Tensor& x_ND, const std::vector<int64_t>& counts) {
    auto g = gate_proj.unbind(0), u = up_proj.unbind(0), d = down_proj.unbind(0);
    std::vector<torch::Tensor> out;
    out.reserve(counts.size());
    int64_t offset = 0;
    for (size_t e = 0; e < counts.size(); ++e) {
      if (counts[e] == 0) continue;
      out.push_back(gated(x_ND.narrow(0, offset, counts[e]), g[e], u[e], d[e]));
      offset += counts[e];
    }
    if (out.empty()) return torch::zeros_like(x_ND);
    return out.size() == 1 ? out[0] : torch::cat(out, 0);
  }

  // The experts held (after keep_experts, this rank's shard).
  [[nodiscard]] int64_t num_experts() const { return gate_proj.size(0); }
  [[nodiscard]] int64_t hidden_size() const { return hidden_; }
  [[nodiscard]] int64_t intermediate_size() const { return inter_; }
  [[nodiscard]] GateActivation activation() const { return act_; }

  torch::Tensor gate_proj, up_proj, down_proj;

 private:
  torch::Tensor gated(const torch::Tensor& x_ND, const torch::Tensor& w1_FD,
                      const torch::Tensor& w3_FD, const torch::Tensor& w2_DF) const {
    auto h_NF =
        apply_gate_activation(torch::mm(x_ND, w1_FD.t()), act_) * torch::mm(x_ND, w3_FD.t());
    return torch::mm(h_NF, w2_DF.t());
  }

  int64_t experts_;  // at construction (reset() builds this many)
  int64_t hidden_, inter_;
  GateActivation act_;
  ExpertKernel kernel_ = ExpertKernel::automatic;
};

BTX_NAMESPACE_END
}  // namespace btx
