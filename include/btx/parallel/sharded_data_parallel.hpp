// SPDX-License-Identifier: MIT
// Sharded data parallelism (ZeRO, FSDP) over a Communicator, through the trainer's seams.
// The trainable parameters are flat units (detail/flat_units.hpp: one per decoder layer
// and one for the rest, each padded to split over the N ranks); rank r owns slice r of
// each and the optimizer is built over those slices only, so its state is 1/N:
//   optimizer  (ZeRO-1) gradients are averaged whole, as plain data parallelism does; each
//              rank steps its slices, then every unit is all-gathered.
//   gradients  (ZeRO-2) each layer's gradient is reduce-scattered as soon as backward has
//              finished that layer, and the full gradients are freed: a rank keeps 1/N.
//   full       (ZeRO-3) also the parameters: a layer's unit is all-gathered just before
//              the layer runs (the next layer's gather prefetched while it does) and freed
//              after, gathered again when backward reaches it, then freed with its
//              gradient reduced. The rest of the model (embeddings, final norm, head) stays
//              whole; its gradient and optimizer state are sharded.
// Expert-parallel shards (parallel/expert_parallel.hpp) stay outside the units: experts
// are sharded by their expert group, everything else by the data-parallel group. Gradient
// clipping takes the global norm over every rank's slices and every expert once.
// Checkpoints are sharded (parallel/sharded_checkpoint.hpp) and reshard on resume. With
// elementwise optimizers (AdamW, Adam, SGD) N ranks train as plain data parallelism does.
//
//   auto hooks = btx::dist::sharded_data_parallel(comm, {}, {.sharding = Sharding::full});
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/parallel/communicator.hpp>
#include <btx/parallel/data_parallel.hpp>
#include <btx/parallel/detail/sharded_state.hpp>
#include <btx/train/hooks.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace dist {

inline std::string sharding_name(Sharding s) {
  switch (s) {
    case Sharding::none:
      return "none";
    case Sharding::optimizer:
      return "optimizer";
    case Sharding::gradients:
      return "gradients";
    case Sharding::full:
      return "full";
  }
  return "?";
}

inline Sharding sharding_from_name(const std::string& name) {
  for (Sharding s : {Sharding::none, Sharding::optimizer, Sharding::gradients, Sharding::full}) {
    if (sharding_name(s) == name) return s;
  }
  throw std::invalid_argument("sharding '" + name +
                              "' is not one of none, optimizer, gradients, full");
}

// `hooks` made data-parallel over `comm` with `options.sharding` (none: data_parallel()).
// The user's placement, step and gradient hooks still run; the optimizer factory is called
// with this rank's parameter slices instead of the model's parameters.
inline TrainHooks sharded_data_parallel(Communicator& comm, TrainHooks hooks = {},
                                        DataParallelOptions options = {}) {
  const Sharding mode = options.sharding;
  if (mode == Sharding::none) return data_parallel(comm, std::move(hooks), options);
  auto state = std::make_shared<detail::ShardedState>(comm, mode, options);
  Communicator* c = &comm;
  hooks.place_model = [state, user = std::move(hooks.place_model)](torch::nn::Module& m) {
    if (user) user(m);
    state->place(m);
  };
  hooks.optimizer = [state, user = std::move(hooks.optimizer)](
                        std::vector<torch::Tensor> /*model parameters*/, const TrainOptions& o) {
    return user(state->optimizer_parameters(), o);
  };
  hooks.check_options = [state, user = std::move(hooks.check_options)](const TrainOptions& o) {
    if (state->any_experts() && !o.checkpoint_dir.empty()) {
      throw std::invalid_argument(
          "btx::dist: stage '" + o.stage + "': checkpoint_dir " + o.checkpoint_dir +
          " with expert-parallel layers: sharded checkpoints hold the data-parallel units, not "
          "the experts each rank keeps; train expert-parallel without checkpoints");
    }
    if (user) user(o);
  };
  hooks.save_checkpoint = [state](const std::filesystem::path& dir, torch::nn::Module& model,
                                  torch::optim::Optimizer& opt, const TrainState& s,
                                  int64_t keep) { state->save(dir, model, opt, s, keep); };
  hooks.resume_checkpoint = [state](const std::filesystem::path& dir, torch::nn::Module& model,
                                    torch::optim::Optimizer& opt) {
    return state->resume(dir, model, opt);
  };
  hooks.before_step = [c, state, user = std::move(hooks.before_step)](const std::string& stage,
                                                                      int64_t step) {
    c->set_activity("step " + std::to_string(step + 1) + " of stage '" + stage + "'");
    state->before_step();
    if (user) user(stage, step);
  };
  hooks.before_micro_batch = [state, user = std::move(hooks.before_micro_batch)](int64_t index,
                                                                                 int64_t count) {
    state->before_micro_batch(index, count);
    if (user) user(index, count);
  };
  hooks.place_batch = [c, user = std::move(hooks.place_batch)](const torch::Tensor& ids_BS) {
    const torch::Tensor mine = shard_rows(ids_BS, c->rank(), c->size());
    return user ? user(mine) : mine;
  };
  hooks.after_backward = [state, user = std::move(hooks.after_backward)](
                             const std::vector<torch::Tensor>& parameters) {
    state->after_backward();
    if (user) user(parameters);
  };
  hooks.clip_gradients = [state](const std::vector<torch::Tensor>& /*model parameters*/,
                                 double max_norm) { return state->clip(max_norm); };
  hooks.after_step = [state, user = std::move(hooks.after_step)] {
    state->after_step();
    if (user) user();
  };
  hooks.after_training = [state, user = std::move(hooks.after_training)] {
    state->after_training();
    if (user) user();
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
