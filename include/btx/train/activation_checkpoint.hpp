// SPDX-License-Identifier: MIT
// Activation checkpointing per layer: a layer's forward runs without building its graph,
// keeping only its input; in backward the layer runs again with the graph (a
// recomputation), then backpropagates through it. Activation memory falls from every
// layer's intermediates to one input per layer plus one layer's intermediates, for about
// one more forward per step. LibTorch has no torch.utils.checkpoint, so this is its
// reentrant form as an autograd node of our own:
// - the recomputation sees btx::recomputing() (routers do not advance their state twice)
//   and the CPU generator as the first forward found it (dropout draws the same);
// - side outputs (btx::keep_side_output: the MoE aux loss, computed in the layer and added
//   to the loss later) become outputs of the node, so their gradient reaches the router.
// TrainOptions::activation_checkpointing applies it to every LayerStack of the model.
#pragma once

#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <btx/core/layer_stack.hpp>
#include <btx/core/recompute.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

namespace detail {

inline torch::Tensor cpu_generator_state() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}
inline void set_cpu_generator_state(const torch::Tensor& state) {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

// The backward of a checkpointed layer: inputs (gradients) are dL/dy then dL/d each side
// output; its one edge leads to the layer's input.
class RecomputeLayer : public torch::autograd::Node {
 public:
  RecomputeLayer(LayerForward forward, torch::Tensor x, torch::Tensor rng)
      : forward_(std::move(forward)), x_(std::move(x)), rng_(std::move(rng)) {}

  [[nodiscard]] std::string name() const override { return "btx::RecomputeLayer"; }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    TORCH_CHECK(forward_,
                "btx: a checkpointed layer was backpropagated twice (its recompute "
                "state is released after the first backward)");
    const bool input_grad = x_.requires_grad();
    torch::Tensor x = x_.detach().requires_grad_(input_grad);
    std::vector<torch::Tensor*> slots;
    torch::Tensor y;
    {
      const torch::Tensor now = cpu_generator_state();
      set_cpu_generator_state(rng_);
      RecomputeScope scope(/*recompute=*/true, &slots);
      torch::AutoGradMode grad_mode(true);
      y = forward_(x);
      set_cpu_generator_state(now);
    }
    std::vector<torch::Tensor> outputs = {y};
    std::vector<torch::Tensor> output_grads = {grads.at(0).defined() ? grads[0]
                                                                     : torch::zeros_like(y)};
    for (size_t k = 0; k + 1 < grads.size() && k < slots.size(); ++k) {
      const torch::Tensor& side = *slots[k];
      if (grads[k + 1].defined() && side.defined() && side.requires_grad()) {
        outputs.push_back(side);
        output_grads.push_back(grads[k + 1]);
      }
    }
    if (y.requires_grad()) torch::autograd::backward(outputs, output_grads);
    return {input_grad ? x.grad() : torch::Tensor()};
  }

  void release_variables() override {
    forward_ = nullptr;
    x_ = torch::Tensor();
    rng_ = torch::Tensor();
  }

 private:
  LayerForward forward_;
  torch::Tensor x_;  // the layer's input, detached: the one activation kept
  torch::Tensor rng_;
};

}  // namespace detail

// forward(x), recomputed in backward instead of keeping its intermediates; forward(x) as
// it is when no gradient is being recorded.
inline torch::Tensor checkpointed(const LayerForward& forward, const torch::Tensor& x) {
  if (!torch::GradMode::is_enabled()) return forward(x);
  const torch::Tensor rng = detail::cpu_generator_state();
  std::vector<torch::Tensor*> slots;
  torch::Tensor y;
  {
    torch::NoGradGuard no_grad;
    RecomputeScope scope(/*recompute=*/false, &slots);
    y = forward(x);
  }
  auto node = c10::make_intrusive<detail::RecomputeLayer>(
      forward, x.detach().requires_grad_(x.requires_grad()), rng);
  node->set_next_edges(torch::autograd::collect_next_edges(x));
  // Plain tensors (a no-grad forward may return views) given this node as their history.
  y = y.detach();
  torch::autograd::set_history(y, node);
  for (torch::Tensor* slot : slots) {
    if (!slot->defined() || !torch::autograd::isDifferentiableType(slot->scalar_type())) {
      node->add_input_metadata(torch::autograd::Node::undefined_input());
      continue;
    }
    *slot = slot->detach();
    torch::autograd::set_history(*slot, node);
  }
  return y;
}

// A LayerRunner that checkpoints every layer it runs.
inline LayerRunner checkpointing_runner() {
  return [](int64_t /*layer*/, const LayerForward& forward, const torch::Tensor& x) {
    return checkpointed(forward, x);
  };
}

BTX_NAMESPACE_END
}  // namespace btx
