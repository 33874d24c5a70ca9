// SPDX-License-Identifier: MIT
// One causal-LM training loop for every stage (seed, experts, dense baseline, MoE
// finetune): AdamW, warmup + cosine schedule, gradient clipping, an auxiliary loss hook
// (MoE load balancing), a guard that skips non-finite steps, progress and metrics.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <stdexcept>
#include <string>

#include <btx/data/sampler.hpp>
#include <btx/models/llama.hpp>
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
};

struct TrainSummary {
  int64_t steps = 0, tokens = 0, skipped_steps = 0;
  double seconds = 0.0, final_loss = 0.0;
};

// model: a holder with forward(ids_BT) -> logits_BTV and parameters().
// aux_loss: added to the LM loss each step (e.g. btx::collect_aux_loss); may be empty.
template <class Model>
TrainSummary train_causal_lm(Model& model, const WindowSampler& sampler,
                             const TrainOptions& options,
                             const std::function<torch::Tensor()>& aux_loss = {},
                             MetricsLog* metrics = nullptr) {
  if (options.steps <= 0) {
    throw std::invalid_argument("stage '" + options.stage + "': steps must be > 0, got " +
                                std::to_string(options.steps));
  }
  model->train();
  torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(options.peak_lr)
                                                   .weight_decay(options.weight_decay)
                                                   .betas({0.9, 0.95}));
  const CosineSchedule schedule{options.peak_lr, options.warmup_steps, options.steps,
                                options.lr_floor_ratio};
  const int64_t T = sampler.seq_len();
  ProgressLine progress(options.stage, options.steps);
  TrainSummary summary;
  int64_t bad_in_a_row = 0;
  double window_loss = 0.0;
  int64_t window_steps = 0;
  auto window_start = std::chrono::steady_clock::now();
  for (int64_t step = 0; step < options.steps; ++step) {
    for (auto& group : opt.param_groups()) group.options().set_lr(schedule(step));
    auto batch = sampler.batch(options.first_batch + step, options.batch_size);
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
    if (!std::isfinite(total.item<double>()) || !std::isfinite(grad_norm)) {
      ++summary.skipped_steps;
      std::fprintf(stderr, "[%s] step %lld: non-finite loss or gradient, step skipped\n",
                   options.stage.c_str(), static_cast<long long>(step + 1));
      if (metrics)
        metrics->write({{"stage", options.stage}, {"step", step + 1}, {"skipped", true}});
      if (++bad_in_a_row >= options.max_bad_steps) {
        throw std::runtime_error("stage '" + options.stage + "': " + std::to_string(bad_in_a_row) +
                                 " consecutive non-finite steps; lower the learning rate");
      }
      continue;
    }
    bad_in_a_row = 0;
    opt.step();
    summary.tokens += options.batch_size * T;
    summary.final_loss = loss_value;
    window_loss += loss_value;
    ++window_steps;
    const bool last = step + 1 == options.steps;
    if ((step + 1) % options.log_every == 0 || last) {
      const auto now = std::chrono::steady_clock::now();
      const double dt = std::chrono::duration<double>(now - window_start).count();
      const double tps = double(window_steps * options.batch_size * T) / std::max(dt, 1e-9);
      const double mean_loss = window_loss / double(window_steps);
      progress.update(step + 1, mean_loss, tps);
      if (metrics) {
        metrics->write({{"stage", options.stage},
                        {"step", step + 1},
                        {"loss", mean_loss},
                        {"lr", schedule(step)},
                        {"tokens", summary.tokens},
                        {"tokens_per_s", tps},
                        {"seconds", progress.seconds()}});
      }
      window_loss = 0.0;
      window_steps = 0;
      window_start = now;
    }
  }
  summary.steps = options.steps;
  summary.seconds = progress.seconds();
  progress.finish("final loss " + std::to_string(summary.final_loss) + ", " +
                  std::to_string(summary.tokens) + " tokens");
  return summary;
}

BTX_NAMESPACE_END
}  // namespace btx
