// SPDX-License-Identifier: MIT
// LayerStack: a model's stack of repeated layers (a decoder's `layers`), exposed so training
// machinery can wrap each layer's forward without knowing the model: activation
// checkpointing (train/activation_checkpoint.hpp) recomputes a layer in backward, and fully
// sharded data parallelism (parallel/sharded_data_parallel.hpp) gathers a layer's
// parameters just before it runs and frees them after. A runner sees the layer's index, a
// function that runs the layer, and its input; it must return what that function returns
// (or the same values). The KV-cached generation path never goes through the runner.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// One layer's forward, hidden states in -> hidden states out. It holds what it needs by
// value, so a runner may keep it past the call (recompute in backward).
using LayerForward = std::function<torch::Tensor(const torch::Tensor& x)>;
using LayerRunner = std::function<torch::Tensor(int64_t layer, const LayerForward& forward,
                                                const torch::Tensor& x)>;

// `outer` wrapped around `inner` (either may be empty).
inline LayerRunner nest_runners(LayerRunner outer, LayerRunner inner) {
  if (!outer) return inner;
  if (!inner) return outer;
  return [outer = std::move(outer), inner = std::move(inner)](
             int64_t layer, const LayerForward& forward, const torch::Tensor& x) {
    return outer(
        layer, [inner, layer, forward](const torch::Tensor& y) { return inner(layer, forward, y); },
        x);
  };
}

class LayerStack {
 public:
  virtual ~LayerStack() = default;
  [[nodiscard]] virtual int64_t stacked_layers() const = 0;
  // Layer `i` as a module (its parameters are the layer's).
  [[nodiscard]] virtual std::shared_ptr<torch::nn::Module> stacked_layer(int64_t i) const = 0;
  [[nodiscard]] virtual const LayerRunner& layer_runner() const = 0;
  // Empty: each layer's forward is called directly.
  virtual void set_layer_runner(LayerRunner runner) = 0;

 protected:
  LayerStack() = default;
  LayerStack(const LayerStack&) = default;
  LayerStack(LayerStack&&) = default;
  LayerStack& operator=(const LayerStack&) = default;
  LayerStack& operator=(LayerStack&&) = default;
};

// A runner slot that a module's copy (torch's Cloneable::clone) does not inherit: a runner
// belongs to the training of one model instance.
class LayerRunnerSlot {
 public:
  LayerRunnerSlot() = default;
  LayerRunnerSlot(const LayerRunnerSlot& /*other*/) {}
  LayerRunnerSlot& operator=(const LayerRunnerSlot& /*other*/) { return *this; }
  LayerRunner runner;
};

// Every LayerStack in `model` (itself included), with its module path.
inline std::vector<std::pair<std::string, LayerStack*>> layer_stacks(torch::nn::Module& model) {
  std::vector<std::pair<std::string, LayerStack*>> out;
  for (const auto& m : model.named_modules("", /*include_self=*/true)) {
    if (auto* stack = dynamic_cast<LayerStack*>(m.value().get())) out.emplace_back(m.key(), stack);
  }
  return out;
}

// Sets each stack's runner to `wrap(previous runner)` and puts the previous ones back when
// destroyed (RAII), so training machinery leaves the model as it found it.
class LayerRunnerOverride {
 public:
  LayerRunnerOverride() = default;
  LayerRunnerOverride(torch::nn::Module& model,
                      const std::function<LayerRunner(const LayerRunner& previous)>& wrap) {
    for (const auto& [name, stack] : layer_stacks(model)) {
      saved_.emplace_back(stack, stack->layer_runner());
      stack->set_layer_runner(wrap(stack->layer_runner()));
    }
  }
  LayerRunnerOverride(const LayerRunnerOverride&) = delete;
  LayerRunnerOverride& operator=(const LayerRunnerOverride&) = delete;
  LayerRunnerOverride(LayerRunnerOverride&& o) noexcept : saved_(std::exchange(o.saved_, {})) {}
  LayerRunnerOverride& operator=(LayerRunnerOverride&& o) noexcept {
    restore();
    saved_ = std::exchange(o.saved_, {});
    return *this;
  }
  ~LayerRunnerOverride() { restore(); }
  [[nodiscard]] size_t stacks() const { return saved_.size(); }
  void restore() {
    for (auto& [stack, runner] : saved_) stack->set_layer_runner(std::move(runner));
    saved_.clear();
  }

 private:
  std::vector<std::pair<LayerStack*, LayerRunner>> saved_;
};

BTX_NAMESPACE_END
}  // namespace btx
