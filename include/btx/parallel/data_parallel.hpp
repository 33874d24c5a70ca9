// SPDX-License-Identifier: MIT
// Data-parallel training over a Communicator, through the trainer's seams (train/hooks.hpp):
// rank 0's weights on every rank before the optimizer is built, each rank trains on its
// rows of the one global batch, gradients are averaged in buckets (gradient_reducer.hpp,
// overlapped with backward by default), MoE layers compute their aux loss and routing
// statistics over the global batch (moe/global_batch.hpp), the logged losses are the
// global batch's, and only rank 0 writes metrics and checkpoints. Every rank resumes from
// the same checkpoint folder, so a rerun on the same world size continues bit for bit.
// With equal shards, the mean of the ranks' shard gradients is the global batch's
// gradient: N ranks train as one process on the same global batch.
//
// Expert-parallel layers (expert_parallel.hpp) keep their own experts: those are not
// broadcast, and their gradients, which the token exchange's backward already summed over
// every rank's tokens, are divided by the ranks instead of averaged with other experts'.
//
//   auto comm = btx::dist::Communicator::connect(btx::dist::dist_env_from_environment());
//   btx::train_causal_lm(model, sampler, options, btx::dist::data_parallel(comm));
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/moe/moe_layer.hpp>
#include <btx/parallel/communicator.hpp>
#include <btx/parallel/detail/gradient_reducer.hpp>
#include <btx/train/hooks.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace dist {

// What each data-parallel rank holds whole (parallel/sharded_data_parallel.hpp): none
// (plain data parallelism), or 1/N of the optimizer state (ZeRO-1), also of the gradients
// (ZeRO-2), also of the parameters outside the layer running (ZeRO-3, FSDP-style).
enum class Sharding { none, optimizer, gradients, full };

struct DataParallelOptions {
  Sharding sharding = Sharding::none;          // honoured by sharded_data_parallel()
  int64_t bucket_bytes = kDefaultBucketBytes;  // gradients per all-reduce
  // Start each bucket's all-reduce during backward (on a group of its own, so it never
  // interleaves with an expert-parallel exchange); false: all after backward.
  bool overlap = true;
};

namespace detail {

// Runs `op` on one flat copy of each bucket and copies the result back.
template <class Op>
void over_buckets(std::vector<torch::Tensor>& tensors, int64_t bucket_bytes, Op op) {
  const auto buckets = buckets_of(tensors, bucket_bytes);
  for (size_t b = 0; b < buckets.size(); ++b) {
    std::vector<torch::Tensor> flat_parts;
    for (size_t i : buckets[b]) flat_parts.push_back(tensors[i].reshape({-1}));
    std::vector<torch::Tensor> flat = {torch::cat(flat_parts)};
    op(flat, b);
    int64_t offset = 0;
    for (size_t i : buckets[b]) {
      const int64_t n = tensors[i].numel();
      tensors[i].copy_(flat[0].narrow(0, offset, n).view_as(tensors[i]));
      offset += n;
    }
  }
}

// The parameters of every expert-parallel shard in `module`.
inline std::set<const void*> sharded_expert_tensors(torch::nn::Module& module) {
  std::set<const void*> out;
  for (const auto& [name, layer] : moe_layers(module)) {
    if (!layer->expert_shard()) continue;
    for (const auto& p : layer->expert_parameters()) out.insert(p.unsafeGetTensorImpl());
  }
  return out;
}

// Gradients of expert-parallel shards: already summed over every rank's tokens by the
// exchange's backward, so divided by the data-parallel ranks; ranks that hold the same
// shard (expert groups smaller than the data-parallel world) add theirs up first.
class ShardedExpertGradients {
 public:
  ShardedExpertGradients(Communicator& dp, torch::nn::Module& module) : ranks_(dp.size()) {
    int64_t group_size = 0, group_rank = 0;
    for (const auto& [name, layer] : moe_layers(module)) {
      const ExpertShard* shard = layer->expert_shard();
      if (!shard) continue;
      if (group_size != 0 && shard->group->size() != group_size) {
        throw std::invalid_argument("btx::dist::data_parallel: MoE layer " + name +
                                    " shards its experts over a group of another size");
      }
      group_size = shard->group->size();
      group_rank = shard->group->rank();
      for (const auto& p : layer->expert_parameters()) params_.push_back(p);
    }
    if (group_size != 0 && dp.size() % group_size != 0) {
      throw std::invalid_argument("btx::dist::data_parallel: expert groups of " +
                                  std::to_string(group_size) + " ranks do not tile the " +
                                  std::to_string(dp.size()) + " data-parallel ranks");
    }
    if (group_size != 0 && group_size != dp.size())
      replicas_ = dp.split(group_rank, dp.name() + "/expert-replicas");
  }

  [[nodiscard]] bool any() const { return !params_.empty(); }
  [[nodiscard]] const std::vector<torch::Tensor>& parameters() const { return params_; }
  // Data-parallel ranks holding the same experts (1: every rank its own).
  [[nodiscard]] int64_t copies() const { return replicas_ ? replicas_->size() : 1; }

  void operator()() {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> grads;
    for (auto& p : params_) {
      if (p.grad().defined()) grads.push_back(p.grad());
    }
    if (replicas_) {
      over_buckets(grads, kDefaultBucketBytes, [&](std::vector<torch::Tensor>& flat, size_t b) {
        replicas_->all_reduce(flat, Reduce::sum,
                              "expert gradients (bucket " + std::to_string(b) + ")");
      });
    }
    for (auto& g : grads) g.div_(double(ranks_));
  }

 private:
  std::vector<torch::Tensor> params_;
  int64_t ranks_;
  std::optional<Communicator> replicas_;
};

// Scales `grads` by min(1, max_norm / (norm + 1e-6)), as clip_grad_norm does, for a
// global `norm` (float64, 0-dim) taken over more than this rank's gradients; returns the
// norm in the gradients' dtype (float32 when this rank has none).
inline torch::Tensor scale_to_max_norm(std::vector<torch::Tensor>& grads, const torch::Tensor& norm,
                                       double max_norm) {
  const double scale = std::min(1.0, max_norm / (norm.item<double>() + 1e-6));
  if (scale < 1.0) {
    for (auto& g : grads) g.mul_(scale);
  }
  return norm.to(grads.empty() ? torch::kFloat32 : grads[0].scalar_type());
}

// Clipping by the global norm when experts are sharded: each rank holds other experts, so
// the norm is the replicated gradients' (the same on every rank) plus every expert's once.
inline torch::Tensor clip_with_sharded_experts(Communicator& dp, const ShardedExpertGradients& ex,
                                               const std::vector<torch::Tensor>& parameters,
                                               double max_norm) {
  torch::NoGradGuard no_grad;
  std::set<const void*> experts;
  for (const auto& p : ex.parameters()) experts.insert(p.unsafeGetTensorImpl());
  torch::Tensor replicated = torch::zeros({1}, torch::kFloat64);
  torch::Tensor sharded = torch::zeros({1}, torch::kFloat64);
  std::vector<torch::Tensor> grads;
  for (const auto& p : parameters) {
    if (!p.grad().defined()) continue;
    grads.push_back(p.grad());
    const auto square = p.grad().to(torch::kFloat64).pow(2).sum();
    (experts.count(p.unsafeGetTensorImpl()) ? sharded : replicated) += square;
  }
  std::vector<torch::Tensor> t = {sharded / double(ex.copies())};
  dp.all_reduce(t, Reduce::sum, "the experts' gradient norm");
  if (grads.empty()) return {};
  return scale_to_max_norm(grads, (replicated + t[0]).sqrt().reshape({}), max_norm);
}

}  // namespace detail

// Rank 0's parameters and buffers, copied into `module` on every rank (expert-parallel
// shards excepted: each rank keeps its own experts).
inline void broadcast_module(Communicator& comm, torch::nn::Module& module,
                             int64_t bucket_bytes = kDefaultBucketBytes) {
  if (comm.size() == 1) return;
  torch::NoGradGuard no_grad;
  const auto sharded = detail::sharded_expert_tensors(module);
  std::vector<torch::Tensor> tensors;
  for (const auto& p : module.parameters()) {
    if (!sharded.count(p.unsafeGetTensorImpl())) tensors.push_back(p.detach());
  }
  for (const auto& b : module.buffers()) tensors.push_back(b.detach());
  detail::over_buckets(tensors, bucket_bytes, [&](std::vector<torch::Tensor>& flat, size_t b) {
    comm.broadcast(flat, 0, "the model's weights (bucket " + std::to_string(b) + ")");
  });
}

// This rank's rows of a global batch [B, S + 1]: B must divide evenly among the ranks.
inline torch::Tensor shard_rows(const torch::Tensor& ids_BS, int64_t rank, int64_t ranks) {
  const int64_t B = ids_BS.size(0);
  if (B % ranks != 0) {
    throw std::invalid_argument("btx::dist: a global batch of " + std::to_string(B) +
                                " sequences does not split evenly over " + std::to_string(ranks) +
                                " data-parallel ranks; make batch_size a multiple of the ranks");
  }
  return ids_BS.narrow(0, rank * (B / ranks), B / ranks);
}

// `hooks` made data-parallel over `comm` (which must outlive training): the user's own
// placement, gradient hook and step hook still run (placement first, the gradient hook
// after the averaging).
inline TrainHooks data_parallel(Communicator& comm, TrainHooks hooks = {},
                                DataParallelOptions options = {}) {
  if (options.sharding != Sharding::none) {
    throw std::invalid_argument(
        "btx::dist::data_parallel: sharding is chosen by btx::dist::sharded_data_parallel "
        "(btx/parallel/sharded_data_parallel.hpp)");
  }
  struct State {
    std::shared_ptr<GradientReducer> reducer;
    std::optional<detail::ShardedExpertGradients> experts;
  };
  auto state = std::make_shared<State>();
  Communicator* c = &comm;
  hooks.place_model = [c, state, options,
                       user = std::move(hooks.place_model)](torch::nn::Module& m) {
    if (user) user(m);
    if (c->size() == 1) return;
    const auto ranks = std::make_shared<Communicator>(*c);
    for (const auto& [name, layer] : moe_layers(m)) layer->set_batch_ranks(ranks);
    broadcast_module(*c, m, options.bucket_bytes);
    const auto sharded = detail::sharded_expert_tensors(m);
    std::vector<torch::Tensor> replicated;
    for (const auto& p : m.parameters()) {
      if (p.requires_grad() && !sharded.count(p.unsafeGetTensorImpl())) replicated.push_back(p);
    }
    state->reducer = std::make_shared<GradientReducer>(
        options.overlap ? c->split(0, c->name() + "/gradients") : *c, std::move(replicated),
        options.bucket_bytes, options.overlap);
    state->reducer->attach();
    state->experts.emplace(*c, m);
  };
  hooks.check_options = [state, user = std::move(hooks.check_options)](const TrainOptions& o) {
    if (state->experts && state->experts->any() && !o.checkpoint_dir.empty()) {
      throw std::invalid_argument(
          "btx::dist: stage '" + o.stage + "': checkpoint_dir " + o.checkpoint_dir +
          " with expert-parallel layers: rank 0 writes checkpoints alone and holds only its "
          "own experts, so they could not resume the others; train expert-parallel without "
          "checkpoints (or data-parallel only)");
    }
    if (user) user(o);
  };
  hooks.before_step = [c, state, user = std::move(hooks.before_step)](const std::string& stage,
                                                                      int64_t step) {
    c->set_activity("step " + std::to_string(step + 1) + " of stage '" + stage + "'");
    if (user) user(stage, step);
  };
  // Overlap needs one backward per step: with micro-batches the hooks would see each one's
  // gradient, so the reduction runs after the last backward from the accumulated ones.
  hooks.before_micro_batch = [state, user = std::move(hooks.before_micro_batch)](int64_t index,
                                                                                 int64_t count) {
    if (state->reducer && index == 0 && count == 1) state->reducer->arm();
    if (user) user(index, count);
  };
  hooks.place_batch = [c, user = std::move(hooks.place_batch)](const torch::Tensor& ids_BS) {
    const torch::Tensor mine = shard_rows(ids_BS, c->rank(), c->size());
    return user ? user(mine) : mine;
  };
  hooks.after_backward = [state, user = std::move(hooks.after_backward)](
                             const std::vector<torch::Tensor>& parameters) {
    if (state->reducer) state->reducer->finish();
    if (state->experts) (*state->experts)();
    if (user) user(parameters);
  };
  hooks.clip_gradients = [c, state, user = std::move(hooks.clip_gradients)](
                             const std::vector<torch::Tensor>& parameters, double max_norm) {
    if (state->experts && state->experts->any())
      return detail::clip_with_sharded_experts(*c, *state->experts, parameters, max_norm);
    return user ? user(parameters, max_norm) : clip_grad_norm(parameters, max_norm);
  };
  hooks.reduce_values = [c](const std::vector<double>& values) {
    return c->mean(values, "the step's losses");
  };
  hooks.writes_files = hooks.writes_files && comm.is_root();
  return hooks;
}

}  // namespace dist
BTX_NAMESPACE_END
}  // namespace btx
