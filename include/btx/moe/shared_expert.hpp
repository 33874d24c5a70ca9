// SPDX-License-Identifier: MIT
// The always-on shared expert an MoE layer may carry beside its routed experts (Qwen2-MoE):
//   y_TD = routed_TD + sigmoid(shared_expert_gate x_TD) * shared_expert(x_TD)
// or, ungated (GLM-4-MoE's and DeepSeek-V3's shared experts, GraniteMoEShared's shared_mlp),
//   y_TD = routed_TD + shared_expert(x_TD)
// where shared_expert is a gated FFN of its own width F_s. In BTX it is a natural home for
// the seed's FFN, the paper's generalist expert, always on instead of routed. F_s may be 0:
// Qwen2-MoE's architecture always has the slot, and a zero-width expert adds exactly 0.
// Parameter names follow transformers': shared_expert.{gate,up,down}_proj.weight and
// shared_expert_gate.weight (child modules of the MoE layer).
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

#include <btx/core/gated_ffn.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// A bias-free projection [out, in] that may have zero rows or columns (nn::Linear's
// default init divides by fan_in, which is 0 for a zero-width expert's down_proj).
class ProjectionImpl : public torch::nn::Cloneable<ProjectionImpl> {
 public:
  ProjectionImpl(int64_t in_features, int64_t out_features) : in_(in_features), out_(out_features) {
    if (in_ < 0 || out_ < 0) throw std::invalid_argument("btx::Projection: negative size");
    reset();
  }
  // nn.Linear's default: uniform +-1/sqrt(fan_in); nothing to draw when it is empty.
  void reset() override {
    weight = register_parameter("weight", torch::empty({out_, in_}));
    if (weight.numel() > 0) {
      torch::NoGradGuard no_grad;
      const double bound = 1.0 / std::sqrt(double(in_));
      weight.uniform_(-bound, bound);
    }
  }
  torch::Tensor forward(const torch::Tensor& x) { return torch::matmul(x, weight.t()); }

  torch::Tensor weight;  // [out, in]

 private:
  int64_t in_, out_;
};
TORCH_MODULE(Projection);

// One gated FFN: down_DF(act(gate_FD x) * up_FD x), F possibly 0.
class SharedExpertImpl : public torch::nn::Cloneable<SharedExpertImpl>, public GatedFfnSource {
 public:
  SharedExpertImpl(int64_t hidden_size, int64_t intermediate_size,
                   GateActivation activation = GateActivation::silu)
      : D_(hidden_size), F_(intermediate_size), activation_(activation) {
    if (D_ < 1 || F_ < 0) {
      throw std::invalid_argument(
          "btx::SharedExpert: hidden_size must be >= 1 and the width >= 0, "
          "got " +
          std::to_string(D_) + " and " + std::to_string(F_));
    }
    reset();
  }
  void reset() override {
    gate_proj = register_module("gate_proj", Projection(D_, F_));
    up_proj = register_module("up_proj", Projection(D_, F_));
    down_proj = register_module("down_proj", Projection(F_, D_));
  }
  // x_TD [T, D] -> [T, D].
  torch::Tensor forward(const torch::Tensor& x_TD) {
    return down_proj(apply_gate_activation(gate_proj(x_TD), activation_) * up_proj(x_TD));
  }

  [[nodiscard]] torch::Tensor gate_weight_FD() const override { return gate_proj->weight; }
  [[nodiscard]] torch::Tensor up_weight_FD() const override { return up_proj->weight; }
  [[nodiscard]] torch::Tensor down_weight_DF() const override { return down_proj->weight; }
  [[nodiscard]] GateActivation activation() const override { return activation_; }
  [[nodiscard]] int64_t intermediate_size() const { return F_; }
  [[nodiscard]] int64_t hidden_size() const { return D_; }

  Projection gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};

 private:
  int64_t D_, F_;
  GateActivation activation_;
};
TORCH_MODULE(SharedExpert);

// The shared expert with its scalar gate (none when ungated): what an MoE layer adds to its
// routed output.
struct SharedExpertSlot {
  SharedExpert expert{nullptr};
  Projection gate{nullptr};  // [1, D]; empty: ungated

  [[nodiscard]] static SharedExpertSlot make(int64_t hidden_size, int64_t intermediate_size,
                                             GateActivation activation, bool gated = true) {
    return {SharedExpert(hidden_size, intermediate_size, activation),
            gated ? Projection(hidden_size, 1) : Projection(nullptr)};
  }
  [[nodiscard]] explicit operator bool() const { return !expert.is_empty(); }
  [[nodiscard]] bool gated() const { return !gate.is_empty(); }
  // x_TD [T, D] -> sigmoid(gate x) * expert(x) (gated) or expert(x), [T, D].
  [[nodiscard]] torch::Tensor forward(const torch::Tensor& x_TD) {
    return gated() ? torch::sigmoid(gate(x_TD)) * expert(x_TD) : expert(x_TD);
  }
  [[nodiscard]] SharedExpertSlot clone() const {
    if (!*this) return {};
    return {SharedExpert(std::dynamic_pointer_cast<SharedExpertImpl>(expert->clone())),
            gated() ? Projection(std::dynamic_pointer_cast<ProjectionImpl>(gate->clone()))
                    : Projection(nullptr)};
  }
};

BTX_NAMESPACE_END
}  // namespace btx
