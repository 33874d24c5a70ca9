// SPDX-License-Identifier: MIT
// One causal-LM training loop for every stage (seed, experts, dense baseline, MoE
// finetune): AdamW, warmup + cosine schedule, gradient clipping, an auxiliary loss hook
// (MoE load balancing), a guard that skips non-finite steps, progress and metrics, and
// checkpoints from which an interrupted run resumes bit for bit (same batches, same LR).
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/data/sampler.hpp>
#include <btx/train/checkpoint.hpp>
#include <btx/train/loss.hpp>
#include <btx/train/progress.hpp>
#include <btx/train/schedule.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

struct TrainOptions {
  std::string stage = "train";  // name in logs and metrics
  int64_t steps = 100;          // optimizer steps
  int64_t batch_size = 8;       // sequences per step
  double peak_lr = 3e-3;        // AdamW peak learning rate
  int64_t warmup_steps = 10;    // linear warmup
  double lr_floor_ratio = 0.1;  // cosine decays to this fraction of the peak
  double weight_decay = 0.1;    // AdamW decoupled weight decay (paper: 0.1)
  double grad_clip = 1.0;       // max global grad norm (<= 0: off)
  int64_t log_every = 10;       // progress/metrics interval
  int64_t max_bad_steps = 5;    // consecutive non-finite steps before giving up
  int64_t first_batch = 0;      // sampler index of step 0 (distinct streams per stage)
  // Checkpoints (btx/train/checkpoint.hpp): with a folder, training resumes from its
  // newest complete checkpoint and writes one every `checkpoint_every` steps and at the end.
  std::string checkpoint_dir;    // empty: no checkpoints
  int64_t checkpoint_every = 0;  // <= 0: only at the end (when checkpoint_dir is set)
  int64_t keep_checkpoints = 2;  // newest complete checkpoints kept
  // Called before step `step` (0-based) runs, e.g. for fault injection.
  std::function<void(int64_t step)> on_step;
  // Called with each metrics record at a log step before it is written; may add fields.
  std::function<void(int64_t step, nlohmann::json& record)> on_log;
};

struct TrainSummary {
  int64_t steps = 0, tokens = 0, skipped_steps = 0;
  double seconds = 0.0;  // wall time of training, time before a resume included
  double final_loss = 0.0;
  int64_t resumed_from_step = 0;  // 0: started fresh
  std::vector<double> losses;     // LM loss of every step, resumed ones included (NaN: skipped)
};

// model: a holder with forward(ids_BT) -> logits_BTV and parameters().
// aux_loss: added to the LM loss each step (e.g. btx::collect_aux_loss); may be empty.
// A skipped (non-finite) step changes neither the weights nor the optimizer state.
template <class Model>
TrainSummary train_causal_lm(Model& model, const WindowSampler& sampler,
                             const TrainOptions& options,
                             const std::function<torch::Tensor()>& aux_loss = {},
                             MetricsLog* metrics = nullptr) {
  if (options.steps <= 0) {
    throw std::invalid_argument("stage '" + options.stage + "': steps must be > 0, got " +
                                std::to_string(options.steps));
  }
  if (options.log_every <= 0) {
    throw std::invalid_argument("stage '" + options.stage + "': log_every must be > 0, got " +
                                std::to_string(options.log_every));
  }
  model->train();
  torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(options.peak_lr)
                                                   .weight_decay(options.weight_decay)
                                                   .betas({0.9, 0.95}));
  const CosineSchedule schedule{options.peak_lr, options.warmup_steps, options.steps,
                                options.lr_floor_ratio};
  const int64_t T = sampler.seq_len();
  TrainState state;
  state.next_batch = options.first_batch;
  TrainSummary summary;
  if (!options.checkpoint_dir.empty()) {
    if (auto resumed = resume_training_checkpoint(options.checkpoint_dir, *model, opt)) {
      state = resumed->second;
      if (state.step > options.steps || state.next_batch != options.first_batch + state.step ||
          int64_t(state.losses.size()) != state.step) {
        throw std::runtime_error(
            "stage '" + options.stage + "': checkpoint " + resumed->first.string() + " (step " +
            std::to_string(state.step) + ", next batch " + std::to_string(state.next_batch) +
            ") does not belong to this run of " + std::to_string(options.steps) +
            " steps from batch " + std::to_string(options.first_batch) + "; remove " +
            options.checkpoint_dir);
      }
      summary.resumed_from_step = state.step;
      std::fprintf(stderr, "[%s] resumed from checkpoint %s at step %lld\n", options.stage.c_str(),
                   resumed->first.c_str(), static_cast<long long>(state.step));
      if (metrics) {
        metrics->write(
            {{"stage", options.stage}, {"step", state.step}, {"resumed_from_step", state.step}});
      }
    }
  }
  // Wall time accumulates over resumes, so a stage's seconds mean the same after a crash.
  const double seconds_before = state.seconds;
  ProgressLine progress(options.stage, options.steps);
  const auto trained_seconds = [&] { return seconds_before + progress.seconds(); };
  const auto save = [&] {
    state.seconds = trained_seconds();
    save_training_checkpoint(options.checkpoint_dir, *model, opt, state, options.keep_checkpoints);
  };
  auto window_start = std::chrono::steady_clock::now();
  for (int64_t step = state.step; step < options.steps; ++step) {
    if (options.on_step) options.on_step(step);
    for (auto& group : opt.param_groups()) group.options().set_lr(schedule(step));
    auto batch = sampler.batch(state.next_batch, options.batch_size);
    opt.zero_grad();
    torch::Tensor logits = model->forward(batch.slice(1, 0, T));
    torch::Tensor loss = next_token_loss(logits, batch.slice(1, 1, T + 1));
    torch::Tensor total = loss;
    if (aux_loss) {
      auto aux = aux_loss();
      if (aux.defined()) total = total + aux;
    }
    const double loss_value = loss.item<double>();
    total.backward();
    const double grad_norm = options.grad_clip > 0 ? torch::nn::utils::clip_grad_norm_(
                                                         model->parameters(), options.grad_clip)
                                                   : 0.0;
    ++state.step;
    ++state.next_batch;
    if (!std::isfinite(total.item<double>()) || !std::isfinite(grad_norm)) {
      ++state.skipped_steps;
      state.losses.push_back(std::numeric_limits<double>::quiet_NaN());
      std::fprintf(stderr, "[%s] step %lld: non-finite loss or gradient, step skipped\n",
                   options.stage.c_str(), static_cast<long long>(step + 1));
      if (metrics)
        metrics->write({{"stage", options.stage}, {"step", step + 1}, {"skipped", true}});
      if (++state.bad_in_a_row >= options.max_bad_steps) {
        throw std::runtime_error("stage '" + options.stage +
                                 "': " + std::to_string(state.bad_in_a_row) +
                                 " consecutive non-finite steps; lower the learning rate");
      }
    } else {
      state.bad_in_a_row = 0;
      opt.step();
      state.losses.push_back(loss_value);
    }
    const int64_t done = step + 1;
    if (done % options.log_every == 0 || done == options.steps) {
      // The window's mean comes from the loss history, so a resumed run logs the same.
      double window_loss = 0.0;
      int64_t window_steps = 0;
      for (int64_t i = (done - 1) / options.log_every * options.log_every; i < done; ++i) {
        if (std::isfinite(state.losses[size_t(i)])) {
          window_loss += state.losses[size_t(i)];
          ++window_steps;
        }
      }
      const auto now = std::chrono::steady_clock::now();
      const double dt = std::chrono::duration<double>(now - window_start).count();
      const double tps = double(window_steps * options.batch_size * T) / std::max(dt, 1e-9);
      if (window_steps > 0) {
        const double mean_loss = window_loss / double(window_steps);
        progress.update(done, mean_loss, tps);
        if (metrics || options.on_log) {
          nlohmann::json record = {
              {"stage", options.stage},
              {"step", done},
              {"loss", mean_loss},
              {"lr", schedule(step)},
              {"tokens", (done - state.skipped_steps) * options.batch_size * T},
              {"tokens_per_s", tps},
              {"seconds", trained_seconds()}};
          if (options.on_log) options.on_log(done, record);
          if (metrics) metrics->write(record);
        }
      }
      window_start = now;
    }
    if (!options.checkpoint_dir.empty() &&
        ((options.checkpoint_every > 0 && done % options.checkpoint_every == 0) ||
         done == options.steps)) {
      save();
    }
  }
  summary.steps = options.steps;
  summary.skipped_steps = state.skipped_steps;
  summary.tokens = (options.steps - state.skipped_steps) * options.batch_size * T;
  for (double l : state.losses) {
    if (std::isfinite(l)) summary.final_loss = l;
  }
  summary.losses = std::move(state.losses);
  summary.seconds = trained_seconds();
  progress.finish("final loss " + std::to_string(summary.final_loss) + ", " +
                  std::to_string(summary.tokens) + " tokens");
  return summary;
}

BTX_NAMESPACE_END
}  // namespace btx
