// SPDX-License-Identifier: MIT
// One causal-LM training loop for every stage (seed, experts, dense baseline, MoE
// finetune): an optimizer and a loss from btx::TrainHooks (AdamW and next-token loss by
// default), warmup + cosine schedule, gradient clipping, an auxiliary loss (MoE load
// balancing), a guard that skips non-finite steps, progress and metrics, and checkpoints
// from which an interrupted run resumes bit for bit (same batches, same LR). The hooks
// also mark where device/dtype placement and gradient synchronisation go.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/core/detail/host_read.hpp>
#include <btx/core/layer_stack.hpp>
#include <btx/data/sampler.hpp>
#include <btx/train/activation_checkpoint.hpp>
#include <btx/train/checkpoint.hpp>
#include <btx/train/grad_clip.hpp>
#include <btx/train/hooks.hpp>
#include <btx/train/loss.hpp>
#include <btx/train/optimizer.hpp>
#include <btx/train/options.hpp>
#include <btx/train/progress.hpp>
#include <btx/train/schedule.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

namespace detail {

inline void check_train_options(const TrainOptions& options) {
  if (options.steps <= 0) {
    throw std::invalid_argument("stage '" + options.stage + "': steps must be > 0, got " +
                                std::to_string(options.steps));
  }
  if (options.log_every <= 0) {
    throw std::invalid_argument("stage '" + options.stage + "': log_every must be > 0, got " +
                                std::to_string(options.log_every));
  }
  if (options.held_out_every < 0 || options.held_out_every % options.log_every != 0) {
    throw std::invalid_argument("stage '" + options.stage + "': held_out_every (" +
                                std::to_string(options.held_out_every) +
                                ") must be 0 or a positive multiple of log_every (" +
                                std::to_string(options.log_every) + ")");
  }
  if (options.micro_batches < 1) {
    throw std::invalid_argument("stage '" + options.stage + "': micro_batches must be >= 1, got " +
                                std::to_string(options.micro_batches));
  }
  if (options.held_out_every > 0 && !options.held_out) {
    throw std::invalid_argument("stage '" + options.stage +
                                "': held_out_every is set but held_out is empty");
  }
}

// The loop of train_causal_lm, in the order a step happens. Model: a holder with
// forward(ids_BS) -> logits_BSV, parameters(), train() and *model -> torch::nn::Module&.
template <class Model>
class TrainLoop {
 public:
  // Puts the model in training mode, places it, then builds the optimizer over its
  // parameters (so the optimizer's state lives where the parameters do).
  TrainLoop(Model& model, const WindowSampler& sampler, const TrainOptions& options,
            TrainHooks hooks, MetricsLog* metrics)
      : model_(model),
        sampler_(sampler),
        options_(options),
        hooks_(std::move(hooks)),
        metrics_(metrics),
        S_(sampler.seq_len()),
        schedule_{options.peak_lr, options.warmup_steps, options.steps, options.lr_floor_ratio} {
    check_train_options(options_);
    if (!hooks_.optimizer) throw std::invalid_argument(where() + "TrainHooks::optimizer is empty");
    if (!hooks_.loss) throw std::invalid_argument(where() + "TrainHooks::loss is empty");
    if (!hooks_.clip_gradients) hooks_.clip_gradients = clip_grad_norm;
    model_->train();
    // Innermost, so a runner that place_model installs (sharded parameters) wraps it.
    if (options_.activation_checkpointing) {
      checkpointing_ = LayerRunnerOverride(*model_, [](const LayerRunner& previous) {
        return nest_runners(previous, checkpointing_runner());
      });
      if (checkpointing_.stacks() == 0) {
        throw std::invalid_argument(where() +
                                    "activation_checkpointing: the model has no btx::LayerStack "
                                    "(core/layer_stack.hpp) whose layers could be recomputed");
      }
    }
    if (hooks_.place_model) hooks_.place_model(*model_);
    if (hooks_.check_options) hooks_.check_options(options_);
    parameters_ = model_->parameters();
    opt_ = hooks_.optimizer(parameters_, options_);
    if (!opt_) throw std::invalid_argument(where() + "TrainHooks::optimizer returned null");
    // An optimizer that checkpoints cannot hold fails now, not after the first stretch.
    if (!options_.checkpoint_dir.empty()) {
      (void)checkpointable_kind(*opt_, where() + "checkpoint_dir " + options_.checkpoint_dir);
    }
    state_.next_batch = options_.first_batch;
  }

  TrainSummary run() {
    resume_or_start();
    progress_.emplace(options_.stage, options_.steps);
    window_start_ = std::chrono::steady_clock::now();
    for (int64_t step = state_.step; step < options_.steps; ++step) {
      train_step(step);
      const int64_t done = step + 1;
      auto record = done % options_.log_every == 0 || done == options_.steps ? log_window(done)
                                                                             : std::nullopt;
      // After the record took the training batch's router statistics (on_log), which the
      // evaluation's forwards overwrite.
      if (auto held_out = evaluate_held_out(done); held_out && record) {
        (*record)["held_out"] = std::move(*held_out);
      }
      if (record && metrics_) metrics_->write(*record);
      if (checkpoint_due(done)) save_checkpoint();
    }
    return finish();
  }

 private:
  [[nodiscard]] std::string where() const { return "stage '" + options_.stage + "': "; }
  // Wall time accumulates over resumes, so a stage's seconds mean the same after a crash.
  [[nodiscard]] double trained_seconds() const { return seconds_before_ + progress_->seconds(); }

  // Continues from the newest checkpoint in checkpoint_dir, if there is one of this run.
  void resume_or_start() {
    if (options_.checkpoint_dir.empty()) return;
    auto resumed = hooks_.resume_checkpoint
                       ? hooks_.resume_checkpoint(options_.checkpoint_dir, *model_, *opt_)
                       : resume_training_checkpoint(options_.checkpoint_dir, *model_, *opt_);
    if (!resumed) return;
    state_ = resumed->second;
    if (state_.step > options_.steps || state_.next_batch != options_.first_batch + state_.step ||
        int64_t(state_.losses.size()) != state_.step) {
      throw std::runtime_error(
          where() + "checkpoint " + resumed->first.string() + " (step " +
          std::to_string(state_.step) + ", next batch " + std::to_string(state_.next_batch) +
          ") does not belong to this run of " + std::to_string(options_.steps) +
          " steps from batch " + std::to_string(options_.first_batch) + "; remove " +
          options_.checkpoint_dir);
    }
    resumed_from_step_ = state_.step;
    seconds_before_ = state_.seconds;
    std::fprintf(stderr, "[%s] resumed from checkpoint %s at step %lld\n", options_.stage.c_str(),
                 resumed->first.c_str(), static_cast<long long>(state_.step));
    if (metrics_ && hooks_.writes_files) {
      metrics_->write(
          {{"stage", options_.stage}, {"step", state_.step}, {"resumed_from_step", state_.step}});
    }
  }

  // One step: forward, loss, backward, the gradient hook, clipping, then the optimizer
  // step unless the loss or the gradient is non-finite (a skipped step changes neither
  // the weights nor the optimizer state).
  void train_step(int64_t step) {
    if (options_.on_step) options_.on_step(step);
    if (hooks_.before_step) hooks_.before_step(options_.stage, step);
    set_learning_rate(*opt_, schedule_(step));
    torch::Tensor batch = sampler_.batch(state_.next_batch, options_.batch_size);
    if (hooks_.place_batch) batch = hooks_.place_batch(batch);
    opt_->zero_grad();
    const int64_t M = options_.micro_batches;
    if (batch.size(0) % M != 0) {
      throw std::invalid_argument(where() + std::to_string(batch.size(0)) +
                                  " sequences per step (on this rank) do not split into " +
                                  std::to_string(M) + " equal micro_batches");
    }
    // Equal micro-batches: the mean of their mean losses is the batch's mean loss.
    torch::Tensor loss, total;
    for (int64_t m = 0; m < M; ++m) {
      if (hooks_.before_micro_batch) hooks_.before_micro_batch(m, M);
      const torch::Tensor micro = M == 1 ? batch : batch.chunk(M, 0)[size_t(m)];
      torch::Tensor micro_loss, micro_total;
      {
        const auto scope = hooks_.forward_scope ? hooks_.forward_scope() : nullptr;
        const torch::Tensor logits_BSV = model_->forward(micro.slice(1, 0, S_));
        micro_loss = hooks_.loss(logits_BSV, micro.slice(1, 1, S_ + 1));
        micro_total = micro_loss;
        if (hooks_.aux_loss) {
          auto aux = hooks_.aux_loss();
          if (aux.defined()) micro_total = micro_total + aux;
        }
      }
      if (M == 1) {
        micro_total.backward();
        loss = micro_loss, total = micro_total;
        break;
      }
      (micro_total / double(M)).backward();
      loss = m == 0 ? micro_loss.detach() : loss + micro_loss.detach();
      total = m == 0 ? micro_total.detach() : total + micro_total.detach();
    }
    if (M > 1) loss = loss / double(M), total = total / double(M);
    if (hooks_.after_backward) hooks_.after_backward(parameters_);
    const torch::Tensor norm = options_.grad_clip > 0
                                   ? hooks_.clip_gradients(parameters_, options_.grad_clip)
                                   : torch::Tensor();
    // The step's one host read: loss, total and gradient norm in one transfer.
    const auto f64 = loss.options().dtype(torch::kFloat64);
    const torch::Tensor host = read_to_host(
        torch::stack({loss.detach().to(torch::kFloat64).reshape({}),
                      total.detach().to(torch::kFloat64).reshape({}),
                      norm.defined() ? norm.to(torch::kFloat64) : torch::zeros({}, f64)}));
    double loss_value = host.data_ptr<double>()[0];
    double total_value = host.data_ptr<double>()[1];
    const double grad_norm = host.data_ptr<double>()[2];
    if (hooks_.reduce_values) {
      const auto reduced = hooks_.reduce_values({loss_value, total_value});
      loss_value = reduced.at(0);
      total_value = reduced.at(1);
    }
    ++state_.step;
    ++state_.next_batch;
    if (std::isfinite(total_value) && std::isfinite(grad_norm)) {
      state_.bad_in_a_row = 0;
      opt_->step();
      if (hooks_.after_step) hooks_.after_step();
      state_.losses.push_back(loss_value);
    } else {
      skip_step(step);
    }
  }

  void skip_step(int64_t step) {
    ++state_.skipped_steps;
    state_.losses.push_back(std::numeric_limits<double>::quiet_NaN());
    std::fprintf(stderr, "[%s] step %lld: non-finite loss or gradient, step skipped\n",
                 options_.stage.c_str(), static_cast<long long>(step + 1));
    if (metrics_ && hooks_.writes_files)
      metrics_->write({{"stage", options_.stage}, {"step", step + 1}, {"skipped", true}});
    if (++state_.bad_in_a_row >= options_.max_bad_steps) {
      throw std::runtime_error(where() + std::to_string(state_.bad_in_a_row) +
                               " consecutive non-finite steps; lower the learning rate");
    }
  }

  // TrainOptions::held_out after step `done` when due (always a log step: held_out_every is
  // a multiple of log_every, and the last step is both).
  std::optional<nlohmann::json> evaluate_held_out(int64_t done) {
    if (options_.held_out_every <= 0) return std::nullopt;
    if (done % options_.held_out_every != 0 && done != options_.steps) return std::nullopt;
    model_->eval();
    nlohmann::json result;
    {
      torch::NoGradGuard no_grad;
      result = options_.held_out();
    }
    model_->train();
    return result;
  }

  // Progress, and the metrics record (for the writer) of the log window that ends after
  // step `done`.
  std::optional<nlohmann::json> log_window(int64_t done) {
    // The window's mean comes from the loss history, so a resumed run logs the same.
    double window_loss = 0.0;
    int64_t window_steps = 0;
    for (int64_t i = (done - 1) / options_.log_every * options_.log_every; i < done; ++i) {
      if (std::isfinite(state_.losses[size_t(i)])) {
        window_loss += state_.losses[size_t(i)];
        ++window_steps;
      }
    }
    const auto now = std::chrono::steady_clock::now();
    const double dt = std::chrono::duration<double>(now - window_start_).count();
    const double tps = double(window_steps * options_.batch_size * S_) / std::max(dt, 1e-9);
    window_start_ = now;
    if (window_steps == 0) return std::nullopt;
    const double mean_loss = window_loss / double(window_steps);
    if (!hooks_.writes_files) return std::nullopt;
    progress_->update(done, mean_loss, tps);
    if (!metrics_ && !options_.on_log) return std::nullopt;
    nlohmann::json record = {{"stage", options_.stage},
                             {"step", done},
                             {"loss", mean_loss},
                             {"lr", schedule_(done - 1)},
                             {"tokens", (done - state_.skipped_steps) * options_.batch_size * S_},
                             {"tokens_per_s", tps},
                             {"seconds", trained_seconds()}};
    if (options_.on_log) options_.on_log(done, record);
    return record;
  }

  [[nodiscard]] bool checkpoint_due(int64_t done) const {
    // A checkpoint writer of the hooks' runs on every rank (a collective).
    if (options_.checkpoint_dir.empty() || (!hooks_.writes_files && !hooks_.save_checkpoint))
      return false;
    return (options_.checkpoint_every > 0 && done % options_.checkpoint_every == 0) ||
           done == options_.steps;
  }

  void save_checkpoint() {
    state_.seconds = trained_seconds();
    if (hooks_.save_checkpoint) {
      hooks_.save_checkpoint(options_.checkpoint_dir, *model_, *opt_, state_,
                             options_.keep_checkpoints);
      return;
    }
    save_training_checkpoint(options_.checkpoint_dir, *model_, *opt_, state_,
                             options_.keep_checkpoints);
  }

  TrainSummary finish() {
    if (hooks_.after_training) hooks_.after_training();
    TrainSummary summary;
    summary.steps = options_.steps;
    summary.skipped_steps = state_.skipped_steps;
    summary.tokens = (options_.steps - state_.skipped_steps) * options_.batch_size * S_;
    summary.resumed_from_step = resumed_from_step_;
    for (double l : state_.losses) {
      if (std::isfinite(l)) summary.final_loss = l;
    }
    summary.losses = std::move(state_.losses);
    summary.seconds = trained_seconds();
    if (hooks_.writes_files) {
      progress_->finish("final loss " + std::to_string(summary.final_loss) + ", " +
                        std::to_string(summary.tokens) + " tokens");
    }
    return summary;
  }

  Model& model_;
  const WindowSampler& sampler_;
  const TrainOptions& options_;
  TrainHooks hooks_;
  MetricsLog* metrics_;
  int64_t S_;  // sequence length: each batch is [B, S + 1]
  CosineSchedule schedule_;
  std::vector<torch::Tensor> parameters_;  // the placed model's, as the optimizer sees them
  std::unique_ptr<torch::optim::Optimizer> opt_;
  TrainState state_;
  int64_t resumed_from_step_ = 0;
  double seconds_before_ = 0.0;  // trained before this process, from the checkpoint
  std::optional<ProgressLine> progress_;
  std::chrono::steady_clock::time_point window_start_;
  LayerRunnerOverride checkpointing_;  // activation checkpointing, undone with the loop
};

}  // namespace detail

// Trains `model` (a holder with forward(ids_BS) -> logits_BSV and parameters()) on
// `sampler`'s batches from options.first_batch on. `hooks` choose the optimizer and the
// loss and plug in placement and gradient synchronisation (btx/train/hooks.hpp). A skipped
// (non-finite) step changes neither the weights nor the optimizer state.
template <class Model>
TrainSummary train_causal_lm(Model& model, const WindowSampler& sampler,
                             const TrainOptions& options, TrainHooks hooks,
                             MetricsLog* metrics = nullptr) {
  return detail::TrainLoop<Model>(model, sampler, options, std::move(hooks), metrics).run();
}

// The default hooks (AdamW, next-token loss) with an auxiliary loss added to the LM loss
// each step (e.g. btx::collect_aux_loss); `aux_loss` may be empty.
template <class Model>
TrainSummary train_causal_lm(Model& model, const WindowSampler& sampler,
                             const TrainOptions& options,
                             const std::function<torch::Tensor()>& aux_loss = {},
                             MetricsLog* metrics = nullptr) {
  TrainHooks hooks;
  hooks.aux_loss = aux_loss;
  return train_causal_lm(model, sampler, options, std::move(hooks), metrics);
}

BTX_NAMESPACE_END
}  // namespace btx
