// SPDX-License-Identifier: MIT
// Data-parallel training over a Communicator, through the trainer's seams (train/hooks.hpp):
// rank 0's weights on every rank before the optimizer is built, each rank trains on its
// rows of the one global batch, gradients are averaged in buckets after backward, the
// logged losses are the global batch's, and only rank 0 writes metrics and checkpoints.
// Every rank resumes from the same checkpoint folder, so a rerun on the same world size
// continues bit for bit. With equal shards, the mean of the ranks' shard gradients is the
// global batch's gradient: N ranks train as one process on the same global batch.
//
//   auto comm = btx::dist::Communicator::connect(btx::dist::dist_env_from_environment());
//   btx::train_causal_lm(model, sampler, options, btx::dist::data_parallel(comm));
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/parallel/communicator.hpp>
#include <btx/train/hooks.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace dist {

inline constexpr int64_t kDefaultBucketBytes = 25 << 20;  // torch DDP's default bucket

namespace detail {

// Consecutive runs of same-dtype tensors of at most `bucket_bytes` (a larger tensor alone).
inline std::vector<std::vector<size_t>> buckets_of(const std::vector<torch::Tensor>& tensors,
                                                   int64_t bucket_bytes) {
  std::vector<std::vector<size_t>> out;
  int64_t bytes = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int64_t b = tensors[i].numel() * int64_t(tensors[i].element_size());
    if (out.empty() || bytes + b > bucket_bytes ||
        tensors[out.back().front()].scalar_type() != tensors[i].scalar_type()) {
      out.emplace_back();
      bytes = 0;
    }
    out.back().push_back(i);
    bytes += b;
  }
  return out;
}

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

}  // namespace detail

// Rank 0's parameters and buffers, copied into `module` on every rank.
inline void broadcast_module(Communicator& comm, torch::nn::Module& module,
                             int64_t bucket_bytes = kDefaultBucketBytes) {
  if (comm.size() == 1) return;
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> tensors;
  for (const auto& p : module.parameters()) tensors.push_back(p.detach());
  for (const auto& b : module.buffers()) tensors.push_back(b.detach());
  detail::over_buckets(tensors, bucket_bytes, [&](std::vector<torch::Tensor>& flat, size_t b) {
    comm.broadcast(flat, 0, "the model's weights (bucket " + std::to_string(b) + ")");
  });
}

// The mean over ranks of every parameter's gradient, bucketed. A gradient that no rank
// has (an expert no token reached anywhere) stays undefined, as in one process; one that
// only some ranks have counts as zero on the others.
class GradientAllReduce {
 public:
  explicit GradientAllReduce(Communicator& comm, int64_t bucket_bytes = kDefaultBucketBytes)
      : comm_(&comm), bucket_bytes_(bucket_bytes) {}

  void operator()(const std::vector<torch::Tensor>& parameters) const {
    if (comm_->size() == 1) return;
    torch::NoGradGuard no_grad;
    // One small all-reduce says which gradients some rank has; no per-element tensor ops.
    std::vector<int64_t> defined(parameters.size());
    for (size_t i = 0; i < parameters.size(); ++i) defined[i] = parameters[i].grad().defined();
    std::vector<torch::Tensor> has = {torch::tensor(defined, torch::kInt64)};
    comm_->all_reduce(has, Reduce::sum, "which parameters have gradients");
    const int64_t* any = has[0].data_ptr<int64_t>();
    std::vector<torch::Tensor> grads;
    for (size_t i = 0; i < parameters.size(); ++i) {
      if (any[i] == 0) continue;
      auto& p = const_cast<torch::Tensor&>(parameters[i]);
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      grads.push_back(p.grad());
    }
    detail::over_buckets(grads, bucket_bytes_, [&](std::vector<torch::Tensor>& flat, size_t b) {
      comm_->all_reduce(flat, Reduce::mean, "gradients (bucket " + std::to_string(b) + ")");
    });
  }

 private:
  Communicator* comm_;
  int64_t bucket_bytes_;
};

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
// placement, gradient hook and values reduction still run (placement first, the gradient
// hook after the all-reduce).
inline TrainHooks data_parallel(Communicator& comm, TrainHooks hooks = {},
                                int64_t bucket_bytes = kDefaultBucketBytes) {
  Communicator* c = &comm;
  hooks.place_model = [c, bucket_bytes, user = std::move(hooks.place_model)](torch::nn::Module& m) {
    if (user) user(m);
    broadcast_module(*c, m, bucket_bytes);
  };
  hooks.place_batch = [c, user = std::move(hooks.place_batch)](const torch::Tensor& ids_BS) {
    const torch::Tensor mine = shard_rows(ids_BS, c->rank(), c->size());
    return user ? user(mine) : mine;
  };
  hooks.after_backward =
      [sync = GradientAllReduce(comm, bucket_bytes),
       user = std::move(hooks.after_backward)](const std::vector<torch::Tensor>& parameters) {
        sync(parameters);
        if (user) user(parameters);
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
