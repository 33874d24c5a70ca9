// SPDX-License-Identifier: MIT
// The seams of the training loop (btx/train/trainer.hpp): what it optimizes with and what
// it minimizes, and the points where placement and precision (btx/train/precision.hpp) and
// gradient synchronisation (btx/parallel/data_parallel.hpp) plug in. Every field has a default that
// trains on the model's own device with AdamW and the next-token loss, in one process.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <btx/train/checkpoint.hpp>
#include <btx/train/grad_clip.hpp>
#include <btx/train/loss.hpp>
#include <btx/train/optimizer.hpp>
#include <btx/train/options.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// The LM loss of one step: logits_BSV predicts targets_BS (already shifted).
using LossFunction =
    std::function<torch::Tensor(const torch::Tensor& logits_BSV, const torch::Tensor& targets_BS)>;
// An extra loss added to the LM loss each step (MoE load balancing); may return undefined.
using AuxLoss = std::function<torch::Tensor()>;
// Moves or casts the model before the optimizer is built over its parameters.
using ModelPlacement = std::function<void(torch::nn::Module& model)>;
// Places one batch of token ids [B, S + 1] where the model runs (e.g. `.to(device)`).
using BatchPlacement = std::function<torch::Tensor(const torch::Tensor& ids_BS)>;
// Sees (and may change) every parameter's gradient after backward, before clipping and
// the non-finite check: where a data-parallel all-reduce goes.
using GradientHook = std::function<void(const std::vector<torch::Tensor>& parameters)>;

// Checks a run's options against what the hooks can do, after place_model; throws
// std::invalid_argument naming what does not fit.
using OptionsCheck = std::function<void(const TrainOptions& options)>;
// Entered before each forward and left (the returned object destroyed) after the loss,
// before backward: e.g. an autocast region (btx/train/precision.hpp).
using ForwardScope = std::function<std::shared_ptr<void>()>;
// Called before each step of `stage` (0-based `step`), before its batch is drawn.
using StepHook = std::function<void(const std::string& stage, int64_t step)>;
// Called before each micro-batch's forward (`index` of `count`; count 1 without gradient
// accumulation): a data-parallel reduction runs only after the last one's backward.
using MicroBatchHook = std::function<void(int64_t index, int64_t count)>;
// Clips the gradients of `parameters` to a global L2 norm of `max_norm` and returns the
// norm before clipping (a 0-dim tensor; undefined: no gradient): where sharded gradients
// take their norm over every rank's shard.
using GradientClip =
    std::function<torch::Tensor(const std::vector<torch::Tensor>& parameters, double max_norm)>;
// Called once when training ends (not when it throws): e.g. sharded parameters made whole.
using AfterTraining = std::function<void()>;
// Writes a training checkpoint of `state` into `dir` keeping the `keep` newest (set: every
// rank calls it, e.g. each writing its shard; empty: the ranks that write files call
// btx::save_training_checkpoint).
using CheckpointSave =
    std::function<void(const std::filesystem::path& dir, torch::nn::Module& model,
                       torch::optim::Optimizer& opt, const TrainState& state, int64_t keep)>;
// Loads the newest loadable checkpoint in `dir` into the model and optimizer (every rank);
// nullopt when there is none (btx::resume_training_checkpoint's contract).
using CheckpointResume = std::function<std::optional<std::pair<std::filesystem::path, TrainState>>(
    const std::filesystem::path& dir, torch::nn::Module& model, torch::optim::Optimizer& opt)>;
// Called after each optimizer step that was taken (not after a skipped one): e.g. to put
// back parameter slices that must not move (train/frozen_slices.hpp).
using AfterStep = std::function<void()>;

// The mean over data-parallel ranks of per-step values (the LM loss and the total loss),
// so logs, the loss history and the non-finite check agree on every rank.
using ValuesReduce = std::function<std::vector<double>(const std::vector<double>& values)>;

struct TrainHooks {
  OptimizerFactory optimizer = adamw_factory();  // built once, after place_model
  LossFunction loss = next_token_loss;           // the LM loss (recorded, logged)
  AuxLoss aux_loss;                              // empty: none
  ModelPlacement place_model;                    // empty: the model stays where it is
  BatchPlacement place_batch;                    // empty: batches stay on the CPU
  ForwardScope forward_scope;                    // empty: the forward as it is
  OptionsCheck check_options;                    // empty: everything fits
  StepHook before_step;                          // empty: nothing
  MicroBatchHook before_micro_batch;             // empty: nothing
  GradientHook after_backward;                   // empty: gradients as backward left them
  GradientClip clip_gradients = clip_grad_norm;  // over the parameters, in this process
  AfterStep after_step;                          // empty: nothing
  AfterTraining after_training;                  // empty: nothing
  CheckpointSave save_checkpoint;                // empty: save_training_checkpoint
  CheckpointResume resume_checkpoint;            // empty: resume_training_checkpoint
  ValuesReduce reduce_values;                    // empty: this process's values
  bool writes_files = true;  // metrics, progress and checkpoints (false: other DP ranks)
};

BTX_NAMESPACE_END
}  // namespace btx
