// SPDX-License-Identifier: MIT
// The state of one sharded data-parallel run on one rank (parallel/sharded_data_parallel.hpp
// says what each mode does): the flat units, the layer runner that gathers and frees them
// around each layer (ZeRO-3) and reduces each layer's gradient as backward leaves it
// (ZeRO-2/3), the global-norm clip, the all-gather after a step, and sharded checkpoints.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/core/layer_stack.hpp>
#include <btx/moe/moe_layer.hpp>
#include <btx/parallel/communicator.hpp>
#include <btx/parallel/data_parallel.hpp>
#include <btx/parallel/detail/flat_units.hpp>
#include <btx/parallel/detail/gradient_reducer.hpp>
#include <btx/parallel/sharded_checkpoint.hpp>
#include <btx/train/checkpoint.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace dist {
namespace detail {

// The state of one sharded training run on one rank.
class ShardedState {
 public:
  ShardedState(Communicator& dp, Sharding mode, DataParallelOptions options)
      : dp_(dp), mode_(mode), options_(options) {}
  ShardedState(const ShardedState&) = delete;
  ShardedState& operator=(const ShardedState&) = delete;
  // Training that threw never reached after_training: the model keeps no runner of ours.
  ~ShardedState() {
    for (auto& [stack, runner] : saved_) stack->set_layer_runner(std::move(runner));
  }

  void place(torch::nn::Module& model) {
    if (dp_.size() > 1) {
      const auto ranks = std::make_shared<Communicator>(dp_);
      for (const auto& [name, layer] : moe_layers(model)) layer->set_batch_ranks(ranks);
    }
    broadcast_module(dp_, model, options_.bucket_bytes);
    // The sharding collectives (prefetches among them) on a group of their own, so they
    // never interleave with an expert-parallel exchange or the MoE's global statistics.
    shards_ = dp_.size() > 1 ? dp_.split(0, dp_.name() + "/shards") : dp_;
    const auto excluded = sharded_expert_tensors(model);
    units_ = build_units(model, dp_, excluded);
    for (const auto& p : model.parameters()) {
      if (p.requires_grad() && excluded.count(p.unsafeGetTensorImpl())) experts_.push_back(p);
    }
    for (size_t u = 0; u < units_.size(); ++u) {
      if (units_[u].layer >= 0) layer_units_.resize(size_t(units_[u].layer) + 1);
    }
    for (size_t u = 0; u < units_.size(); ++u) {
      if (units_[u].layer >= 0) layer_units_[size_t(units_[u].layer)].push_back(u);
    }
    expert_grads_.emplace(dp_, model);
    expert_group_ = expert_group_size(model);
    if (mode_ == Sharding::optimizer) {
      std::vector<torch::Tensor> replicated;
      for (auto& u : units_) replicated.insert(replicated.end(), u.params.begin(), u.params.end());
      reducer_ = std::make_shared<GradientReducer>(dp_, std::move(replicated),
                                                   options_.bucket_bytes, /*overlap=*/false);
    }
    if (mode_ == Sharding::full) {
      for (auto& u : units_) {
        if (u.layer >= 0) release(u);
      }
    }
    if (mode_ != Sharding::optimizer) {
      // Layer stacks numbered as build_units numbered their layers.
      int64_t first = 0;
      for (const auto& [path, stack] : layer_stacks(model)) {
        const int64_t base = first;
        saved_.emplace_back(stack, stack->layer_runner());
        stack->set_layer_runner(nest_runners(
            [this, base](int64_t layer, const LayerForward& f, const torch::Tensor& x) {
              return run_layer(base + layer, f, x);
            },
            stack->layer_runner()));
        first += stack->stacked_layers();
      }
    }
  }

  // What the optimizer is built over: this rank's slices, and the expert-parallel shards.
  [[nodiscard]] std::vector<torch::Tensor> optimizer_parameters() const {
    std::vector<torch::Tensor> out;
    for (const auto& u : units_) out.insert(out.end(), u.pieces.begin(), u.pieces.end());
    out.insert(out.end(), experts_.begin(), experts_.end());
    return out;
  }

  void before_step() {
    for (auto& u : units_) {
      u.reduced = false;
      for (auto& p : u.params) p.mutable_grad() = torch::Tensor();
    }
  }
  void before_micro_batch(int64_t index, int64_t count) { last_micro_ = index + 1 == count; }

  void after_backward() {
    torch::NoGradGuard no_grad;
    if (mode_ == Sharding::optimizer) {
      reducer_->finish();
      for (auto& u : units_) slices_of_whole_gradients(u);
    } else {
      for (auto& u : units_) {
        if (!u.reduced) reduce(u);
        if (mode_ == Sharding::full && u.layer >= 0) release(u);
      }
    }
    (*expert_grads_)();
  }

  // The global L2 norm over every rank's slices (or the whole averaged gradients, ZeRO-1)
  // and every expert once; the gradients scaled to at most max_norm.
  torch::Tensor clip(double max_norm) {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> grads, squares;
    for (auto& u : units_) {
      for (auto& piece : u.pieces) {
        if (piece.grad().defined()) grads.push_back(piece.grad());
      }
    }
    for (auto& g : grads) squares.push_back(g.to(torch::kFloat64).pow(2).sum());
    std::vector<torch::Tensor> expert_squares;
    for (auto& p : experts_) {
      if (p.grad().defined()) {
        expert_squares.push_back(p.grad().to(torch::kFloat64).pow(2).sum());
        grads.push_back(p.grad());
      }
    }
    // Ranks with the same experts (expert groups smaller than the world) count them once.
    const double expert_weight = double(expert_group_) / double(dp_.size());
    torch::Tensor total = torch::zeros({1}, torch::kFloat64);
    if (!squares.empty()) total += torch::stack(squares).sum();
    if (!expert_squares.empty()) total += torch::stack(expert_squares).sum() * expert_weight;
    std::vector<torch::Tensor> t = {total};
    dp_.all_reduce(t, Reduce::sum, "the gradient norm");
    return scale_to_max_norm(grads, t[0].sqrt().reshape({}), max_norm);
  }

  // After an optimizer step: every unit whole again on every rank (ZeRO-3: the rest only;
  // its layers are gathered when they run).
  void after_step() {
    torch::NoGradGuard no_grad;
    for (auto& u : units_) {
      if (mode_ == Sharding::full && u.layer >= 0) continue;
      shards_.all_gather_async(u.flat, u.shard, "parameters of " + u.name).wait();
    }
  }

  // Training is over: every unit whole and the layer runners back as they were.
  void after_training() {
    torch::NoGradGuard no_grad;
    for (auto& u : units_) gather(u);
    for (auto& [stack, runner] : saved_) stack->set_layer_runner(std::move(runner));
    saved_.clear();
  }

  [[nodiscard]] bool any_experts() const { return !experts_.empty(); }

  void save(const std::filesystem::path& dir, torch::nn::Module& model,
            torch::optim::Optimizer& opt, const TrainState& state, int64_t keep) {
    save_sharded_checkpoint(dp_, dir, model, units_, opt, state, keep);
  }
  std::optional<std::pair<std::filesystem::path, TrainState>> resume(
      const std::filesystem::path& dir, torch::nn::Module& model, torch::optim::Optimizer& opt) {
    return resume_sharded_checkpoint(dp_, dir, model, units_, opt);
  }

 private:
  static int64_t expert_group_size(torch::nn::Module& model) {
    for (const auto& [name, layer] : moe_layers(model)) {
      if (const ExpertShard* shard = layer->expert_shard()) return shard->group->size();
    }
    return 1;
  }

  torch::Tensor run_layer(int64_t layer, const LayerForward& f, const torch::Tensor& x) {
    const std::vector<size_t>& mine = layer_units_.at(size_t(layer));
    const bool full = mode_ == Sharding::full;
    if (full) {
      for (size_t u : mine) gather(units_[u]);
      if (size_t(layer) + 1 < layer_units_.size()) {
        for (size_t u : layer_units_[size_t(layer) + 1]) prefetch(units_[u]);
      }
    }
    torch::Tensor y = f(x);
    if (!torch::GradMode::is_enabled() || !y.requires_grad()) {
      if (full) {
        for (size_t u : mine) release(units_[u]);
      }
      return y;
    }
    if (full) {
      for (size_t u : mine) release(units_[u]);
      // Backward reaches this layer: its parameters back (and the layer below prefetched).
      y.register_hook([this, layer](const torch::Tensor& grad) {
        for (size_t u : layer_units_[size_t(layer)]) gather(units_[u]);
        if (layer > 0) {
          for (size_t u : layer_units_[size_t(layer) - 1]) prefetch(units_[u]);
        }
        return grad;
      });
    }
    // Backward has left this layer (its input's gradient exists only after every one of
    // its parameters' gradients): reduce-scatter them, free them and (ZeRO-3) the layer.
    if (x.requires_grad()) {
      torch::Tensor input = x;
      input.register_hook([this, layer](const torch::Tensor& grad) {
        torch::NoGradGuard no_grad;
        for (size_t u : layer_units_[size_t(layer)]) {
          if (last_micro_) reduce(units_[u]);
          if (mode_ == Sharding::full) release(units_[u]);
        }
        return grad;
      });
    }
    return y;
  }

  void gather(FlatUnit& u) {
    if (u.resident) return;
    prefetch(u);
    u.gathering.wait();
    u.gather_started = false;
    u.resident = true;
  }
  void prefetch(FlatUnit& u) {
    if (u.resident || u.gather_started) return;
    allocate_storage(u.flat);
    u.gathering = shards_.all_gather_async(u.flat, u.shard, "parameters of " + u.name);
    u.gather_started = true;
  }
  void release(FlatUnit& u) {
    if (u.gather_started) gather(u);
    if (!u.resident) return;
    release_storage(u.flat);
    u.resident = false;
  }

  // ZeRO-2/3: the mean gradient's slice of this rank into grad_shard, the pieces' gradients
  // (undefined where no rank had one), and the parameters' whole gradients freed as they
  // are copied: one unit-sized buffer reduce-scattered, and a flag per parameter ("had a
  // gradient") summed over the ranks.
  void reduce(FlatUnit& u) {
    if (u.reduced) return;
    u.reduced = true;
    const int64_t N = dp_.size(), F = int64_t(u.params.size());
    if (!u.grad_shard.defined()) u.grad_shard = torch::zeros_like(u.shard);
    torch::Tensor flat_grad = torch::zeros({N * u.chunk}, u.grad_shard.options());
    std::vector<torch::Tensor> had = {torch::zeros({F}, torch::kFloat32)};
    for (int64_t i = 0; i < F; ++i) {
      auto& p = u.params[size_t(i)];
      if (!p.grad().defined()) continue;
      flat_grad.narrow(0, u.offsets[size_t(i)], p.numel()).copy_(p.grad().reshape({-1}));
      had[0].data_ptr<float>()[i] = 1.0f;
      p.mutable_grad() = torch::Tensor();
    }
    shards_.reduce_scatter(u.grad_shard, flat_grad, "gradients of " + u.name);
    flat_grad = torch::Tensor();
    u.grad_shard.div_(double(N));
    shards_.all_reduce(had, Reduce::sum, "which parameters of " + u.name + " had gradients");
    for (size_t k = 0; k < u.pieces.size(); ++k) {
      auto& piece = u.pieces[k];
      if (had[0].data_ptr<float>()[u.piece_param[k]] == 0.0f) {
        piece.mutable_grad() = torch::Tensor();
        continue;
      }
      const int64_t from = u.offsets[u.piece_param[k]] + u.piece_from[k] - u.begin;
      // detach(): not a view to autograd, so zero_grad() may detach_() it.
      piece.mutable_grad() = u.grad_shard.narrow(0, from, piece.numel()).detach();
    }
  }

  // ZeRO-1: the pieces' gradients are views of the whole averaged gradients (so clipping
  // them in place clips the pieces).
  void slices_of_whole_gradients(FlatUnit& u) {
    for (size_t k = 0; k < u.pieces.size(); ++k) {
      const auto& g = u.params[u.piece_param[k]].grad();
      u.pieces[k].mutable_grad() =
          g.defined() ? g.reshape({-1}).narrow(0, u.piece_from[k], u.pieces[k].numel()).detach()
                      : torch::Tensor();
    }
  }

  Communicator& dp_;
  Communicator shards_;
  Sharding mode_;
  DataParallelOptions options_;
  std::vector<FlatUnit> units_;
  std::vector<std::vector<size_t>> layer_units_;  // layer -> its units
  std::vector<torch::Tensor> experts_;            // expert-parallel shards: not in units
  std::optional<ShardedExpertGradients> expert_grads_;
  int64_t expert_group_ = 1;
  std::shared_ptr<GradientReducer> reducer_;  // ZeRO-1
  std::vector<std::pair<LayerStack*, LayerRunner>> saved_;
  bool last_micro_ = true;
};

}  // namespace detail

}  // namespace dist
BTX_NAMESPACE_END
}  // namespace btx
