// SPDX-License-Identifier: MIT
// What one run of the training loop does (steps, batch, schedule, clipping, logging,
// checkpoints) and what it reports back. The pluggable parts (optimizer, loss, placement,
// gradient hook) are in btx/train/hooks.hpp.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

struct TrainOptions {
  std::string stage = "train";  // name in logs and metrics
  int64_t steps = 100;          // optimizer steps
  int64_t batch_size = 8;       // sequences per step
  double peak_lr = 3e-3;        // peak learning rate (any optimizer)
  int64_t warmup_steps = 10;    // linear warmup
  double lr_floor_ratio = 0.1;  // cosine decays to this fraction of the peak
  double weight_decay = 0.1;    // decoupled weight decay of the default AdamW (paper: 0.1)
  double grad_clip = 1.0;       // max global grad norm (<= 0: off)
  // Gradient accumulation: each step's batch (this rank's rows of it) runs as this many
  // equal micro-batches, one forward and backward each, then one gradient reduction and
  // one optimizer step. The LM loss is the same; an aux loss is each micro-batch's.
  int64_t micro_batches = 1;
  // Every LayerStack layer recomputed in backward instead of keeping its activations
  // (train/activation_checkpoint.hpp): less memory for about one more forward.
  bool activation_checkpointing = false;
  int64_t log_every = 10;     // progress/metrics interval
  int64_t max_bad_steps = 5;  // consecutive non-finite steps before giving up
  int64_t first_batch = 0;    // sampler index of step 0 (distinct streams per stage)
  // Checkpoints (btx/train/checkpoint.hpp): with a folder, training resumes from its
  // newest complete checkpoint and writes one every `checkpoint_every` steps and at the end.
  std::string checkpoint_dir;    // empty: no checkpoints
  int64_t checkpoint_every = 0;  // <= 0: only at the end (when checkpoint_dir is set)
  int64_t keep_checkpoints = 2;  // newest complete checkpoints kept
  // Called before step `step` (0-based) runs, e.g. for fault injection.
  std::function<void(int64_t step)> on_step;
  // Called with each metrics record at a log step before it is written; may add fields.
  std::function<void(int64_t step, nlohmann::json& record)> on_log;
  // Held-out evaluation during training, for learning curves: every `held_out_every` steps
  // (a multiple of log_every) and after the last, on every rank (so an evaluation whose
  // forward runs collectives stays in step), with the model in eval mode and no gradients;
  // its result is that step's metrics record's "held_out". Its time counts in the stage's.
  std::function<nlohmann::json()> held_out;
  int64_t held_out_every = 0;  // 0: never
};

struct TrainSummary {
  int64_t steps = 0, tokens = 0, skipped_steps = 0;
  double seconds = 0.0;  // wall time of training, time before a resume included
  double final_loss = 0.0;
  int64_t resumed_from_step = 0;  // 0: started fresh
  std::vector<double> losses;     // LM loss of every step, resumed ones included (NaN: skipped)
};

BTX_NAMESPACE_END
}  // namespace btx
