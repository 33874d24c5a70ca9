// SPDX-License-Identifier: MIT
// The mean over data-parallel ranks of every parameter's gradient, in buckets of about
// bucket_bytes (torch DDP's default: 25 MB). A bucket is one flat buffer holding its
// parameters' gradients plus one "has a gradient" flag per parameter, all-reduced in one
// collective. With `overlap`, hooks on the parameters copy each gradient into its bucket as
// backward produces it, and a bucket's all-reduce starts on the backend's threads as soon
// as it is full, while backward goes on with the layers below; buckets start in bucket
// order on every rank (as in DDP), so the ranks' collectives pair up. The rest start when
// backward ends. A gradient that no rank has (an expert no token reached anywhere) stays
// undefined, as in one process; one that only some ranks have counts as zero on the others.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/parallel/communicator.hpp>
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

}  // namespace detail

class GradientReducer : public std::enable_shared_from_this<GradientReducer> {
 public:
  // `parameters`: those whose gradients are averaged (every rank passes the same list).
  // Call attach() once before training when overlapping.
  GradientReducer(Communicator comm, std::vector<torch::Tensor> parameters, int64_t bucket_bytes,
                  bool overlap)
      : comm_(std::move(comm)), params_(std::move(parameters)), overlap_(overlap) {
    // Reverse registration order: the order backward produces gradients in, roughly.
    std::vector<torch::Tensor> reversed(params_.rbegin(), params_.rend());
    slot_.resize(params_.size());
    for (const auto& members : detail::buckets_of(reversed, bucket_bytes)) {
      Bucket b;
      int64_t numel = 0;
      for (size_t j : members) {
        const size_t i = params_.size() - 1 - j;
        slot_[i] = {buckets_.size(), b.params.size()};
        b.params.push_back(i);
        b.offsets.push_back(numel);
        numel += params_[i].numel();
      }
      // [gradients | one flag per parameter], in the parameters' dtype (flags are 0 or 1).
      b.flat = torch::zeros({numel + int64_t(b.params.size())}, params_[b.params[0]].options());
      b.have.assign(b.params.size(), 0);
      buckets_.push_back(std::move(b));
    }
  }

  // Registers the gradient hooks that start buckets early (with overlap).
  void attach() {
    if (!overlap_) return;
    std::weak_ptr<GradientReducer> self = weak_from_this();
    for (size_t i = 0; i < params_.size(); ++i) {
      params_[i].register_hook([self, i](const torch::Tensor& grad) {
        if (auto r = self.lock()) r->arrived(i, grad);
      });
    }
  }

  // Before a step's backward: hooks may fill the buckets from now on.
  void arm() {
    for (auto& b : buckets_) {
      b.flat.zero_();
      b.have.assign(b.have.size(), 0);
      b.arrived = 0;
      b.started = false;
    }
    next_ = 0;
    armed_ = true;
  }

  // After backward: starts what is left, waits, and writes the averaged gradients back.
  void finish() {
    torch::NoGradGuard no_grad;
    if (!armed_) arm();  // no overlap, or hooks never fired
    armed_ = false;
    for (size_t i = 0; i < params_.size(); ++i) {
      const auto& g = params_[i].grad();
      auto [b, j] = slot_[i];
      if (g.defined() && !buckets_[b].have[j]) copy_in(i, g);  // made without a hook
    }
    for (; next_ < buckets_.size(); ++next_) start(next_);
    for (size_t b = 0; b < buckets_.size(); ++b) {
      Bucket& bucket = buckets_[b];
      bucket.work.wait();
      const int64_t n = int64_t(bucket.params.size());
      const int64_t grads = bucket.flat.numel() - n;
      const auto flags = bucket.flat.narrow(0, grads, n).to(torch::kFloat64);
      for (int64_t j = 0; j < n; ++j) {
        auto& p = params_[bucket.params[size_t(j)]];
        if (flags.data_ptr<double>()[j] == 0.0) {
          p.mutable_grad() = torch::Tensor();  // no rank has it: undefined, as in one process
          continue;
        }
        auto mean = bucket.flat.narrow(0, bucket.offsets[size_t(j)], p.numel()).view_as(p);
        if (p.grad().defined()) {
          p.mutable_grad().copy_(mean);
        } else {
          p.mutable_grad() = mean.clone();
        }
      }
    }
  }

 private:
  struct Bucket {
    std::vector<size_t> params;    // indices into params_
    std::vector<int64_t> offsets;  // of each parameter's gradient in flat
    torch::Tensor flat;
    std::vector<char> have;  // this rank has parameter j's gradient
    size_t arrived = 0;
    bool started = false;
    PendingCollective work;
  };
  struct Slot {
    size_t bucket = 0, index = 0;
  };

  void copy_in(size_t i, const torch::Tensor& grad) {
    auto [b, j] = slot_[i];
    Bucket& bucket = buckets_[b];
    const int64_t n = int64_t(bucket.params.size());
    auto slot = bucket.flat.narrow(0, bucket.offsets[j], params_[i].numel());
    if (bucket.have[j]) {
      throw std::logic_error(
          "btx::dist: a second backward before the gradients were averaged; data-parallel "
          "training runs one backward per step");
    }
    slot.copy_(grad.reshape({-1}));
    bucket.flat.narrow(0, bucket.flat.numel() - n + int64_t(j), 1).fill_(1);
    bucket.have[j] = 1;
    ++bucket.arrived;
  }

  // Hook: parameter i's gradient of this backward (a leaf's hook fires once, with the sum).
  void arrived(size_t i, const torch::Tensor& grad) {
    if (!armed_) return;
    torch::NoGradGuard no_grad;
    copy_in(i, grad);
    // Start every full bucket in order; a bucket waits for the ones before it.
    while (next_ < buckets_.size() && buckets_[next_].arrived == buckets_[next_].params.size()) {
      start(next_++);
    }
  }

  void start(size_t b) {
    Bucket& bucket = buckets_[b];
    if (bucket.started) return;
    bucket.started = true;
    std::vector<torch::Tensor> flat = {bucket.flat};
    bucket.work =
        comm_.all_reduce_async(flat, Reduce::mean, "gradients (bucket " + std::to_string(b) + ")");
  }

  Communicator comm_;
  std::vector<torch::Tensor> params_;
  bool overlap_;
  std::vector<Bucket> buckets_;
  std::vector<Slot> slot_;
  size_t next_ = 0;  // the first bucket not started
  bool armed_ = false;
};

}  // namespace dist
BTX_NAMESPACE_END
}  // namespace btx
