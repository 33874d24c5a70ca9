// SPDX-License-Identifier: MIT
// The flat buffers of sharded data parallelism. The trainable, replicated parameters of
// one decoder layer (or of everything outside the layers: embeddings, final norm, head),
// of one dtype, are one unit: one flat buffer [N x chunk] (zero-padded, so any size splits
// over N ranks) of which each parameter is a view. Rank r owns slice r: its `shard` is what
// the optimizer updates, as `pieces` (one per parameter overlapping the slice, so an
// optimizer sees per-parameter tensors and a parameter without a gradient on every rank is
// skipped as in one process), and its `grad_shard` receives its slice of the mean gradient
// (ZeRO-2/3). ZeRO-3 releases a layer unit's buffer between uses: the storage is freed and
// re-allocated in place, so the parameters and whatever autograd saved of them (views of
// the same storage) see the gathered values again.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <btx/core/layer_stack.hpp>
#include <btx/parallel/communicator.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace dist {
namespace detail {

// Frees the memory behind `t` (and every view of its storage) without touching any
// tensor's metadata or version counter.
inline void release_storage(const torch::Tensor& t) {
  c10::StorageImpl* s = t.storage().unsafeGetStorageImpl();
  s->set_data_ptr_noswap(at::DataPtr(nullptr, t.device()));
  s->set_nbytes(0);
}

// Gives `t`'s storage its memory back (uninitialised), in place.
inline void allocate_storage(const torch::Tensor& t) {
  c10::StorageImpl* s = t.storage().unsafeGetStorageImpl();
  const size_t bytes = size_t(t.numel()) * t.element_size();
  if (s->nbytes() == bytes) return;
  s->set_data_ptr_noswap(s->allocator()->allocate(bytes));
  s->set_nbytes(bytes);
}

struct FlatUnit {
  std::string name;                   // "model.layers.3 (float32)"
  int64_t layer = -1;                 // index in its stack; -1: the rest of the model
  std::vector<torch::Tensor> params;  // each a view of `flat`
  std::vector<std::string> names;     // their names in the model
  std::vector<int64_t> offsets;       // of each parameter in `flat`
  int64_t numel = 0, chunk = 0;       // parameters' elements; per-rank slice (padded)
  int64_t begin = 0;                  // where this rank's slice starts in `flat`
  torch::Tensor flat;                 // [N * chunk]
  torch::Tensor shard;                // [chunk]: this rank's slice
  torch::Tensor grad_shard;           // [chunk]: its mean gradient (ZeRO-2/3; made on first use)
  std::vector<torch::Tensor> pieces;  // views of shard, one per overlapping parameter
  std::vector<size_t> piece_param;    // the parameter of each piece
  std::vector<int64_t> piece_from;    // where the piece starts in its (flattened) parameter
  bool resident = true;               // flat holds the parameters
  bool reduced = false;               // this step's gradient is in grad_shard
  PendingCollective gathering;        // a prefetch under way
  bool gather_started = false;
};

// Trainable parameters of `model` not in `excluded` (expert-parallel shards), as units per
// layer of each LayerStack (in stack order) and one for the rest, each split per dtype;
// units in the order backward finishes them: the rest last.
inline std::vector<FlatUnit> build_units(torch::nn::Module& model, const Communicator& dp,
                                         const std::set<const void*>& excluded) {
  torch::NoGradGuard no_grad;
  std::map<const void*, int64_t> layer_of;
  std::map<const void*, std::string> layer_name;
  int64_t next_layer = 0;
  for (const auto& [path, stack] : layer_stacks(model)) {
    for (int64_t i = 0; i < stack->stacked_layers(); ++i, ++next_layer) {
      for (const auto& p : stack->stacked_layer(i)->parameters()) {
        layer_of.emplace(p.unsafeGetTensorImpl(), next_layer);
        layer_name.emplace(p.unsafeGetTensorImpl(),
                           (path.empty() ? "" : path + ".") + "layer " + std::to_string(i));
      }
    }
  }
  std::map<std::pair<int64_t, int>, size_t> index;  // (layer, dtype) -> unit
  std::vector<FlatUnit> units;
  for (const auto& named : model.named_parameters()) {
    const torch::Tensor& p = named.value();
    const void* key = p.unsafeGetTensorImpl();
    if (!p.requires_grad() || excluded.count(key)) continue;
    const auto found = layer_of.find(key);
    const int64_t layer = found == layer_of.end() ? -1 : found->second;
    const auto slot = std::make_pair(layer, int(p.scalar_type()));
    if (!index.count(slot)) {
      index[slot] = units.size();
      FlatUnit u;
      u.layer = layer;
      u.name = (layer < 0 ? std::string("the rest of the model") : layer_name.at(key)) + " (" +
               std::string(c10::toString(p.scalar_type())) + ")";
      units.push_back(std::move(u));
    }
    FlatUnit& u = units[index[slot]];
    u.params.push_back(p);
    u.names.push_back(named.key());
    u.offsets.push_back(u.numel);
    u.numel += p.numel();
  }
  const int64_t N = dp.size(), r = dp.rank();
  for (FlatUnit& u : units) {
    u.chunk = std::max<int64_t>(1, (u.numel + N - 1) / N);
    u.flat = torch::zeros({N * u.chunk}, u.params[0].options().requires_grad(false));
    for (size_t i = 0; i < u.params.size(); ++i) {
      auto& p = u.params[i];
      auto view = u.flat.narrow(0, u.offsets[i], p.numel());
      view.copy_(p.detach().reshape({-1}));
      p.set_data(view.view(p.sizes()));
    }
    u.shard = u.flat.narrow(0, r * u.chunk, u.chunk).clone();
    const int64_t lo = r * u.chunk, hi = lo + u.chunk;
    u.begin = lo;
    for (size_t i = 0; i < u.params.size(); ++i) {
      const int64_t from = std::max(lo, u.offsets[i]);
      const int64_t to = std::min(hi, u.offsets[i] + u.params[i].numel());
      if (from >= to) continue;
      u.pieces.push_back(u.shard.narrow(0, from - lo, to - from).detach().requires_grad_(true));
      u.piece_param.push_back(i);
      u.piece_from.push_back(from - u.offsets[i]);
    }
  }
  // The rest (embeddings, head) finishes its gradient last in backward.
  std::stable_partition(units.begin(), units.end(), [](const FlatUnit& u) { return u.layer >= 0; });
  return units;
}

}  // namespace detail
}  // namespace dist
BTX_NAMESPACE_END
}  // namespace btx
