// SPDX-License-Identifier: MIT
// Train: one training stage of the recipe on any family's model and the caller's sampler.
// The stage logs to <stage>/metrics.jsonl, checkpoints into <stage>/checkpoints/ (a killed
// stage resumes there), saves <stage>/model/ and finishes with stage.json, which records
// steps, tokens, seconds and FLOPs (FLOPs per token from the model's ArchShape). An MoE
// model adds its load-balancing loss and logs each layer's expert load (router health).
// A finished stage is not trained again: its weights are loaded into the model instead.
// A stage can train data-parallel (StageOptions::hooks = btx::dist::data_parallel(comm)):
// every rank trains, only the rank that writes files (rank 0) logs and finishes it.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/core/causal_lm.hpp>
#include <btx/data/sampler.hpp>
#include <btx/moe/freeze_experts.hpp>
#include <btx/moe/moe_layer.hpp>
#include <btx/recipe/compute.hpp>
#include <btx/recipe/run.hpp>
#include <btx/recipe/stage_model.hpp>
#include <btx/train/progress.hpp>
#include <btx/train/trainer.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace recipe {

// How long and how fast one stage trains.
struct StageBudget {
  int64_t steps = 100;          // optimizer steps
  double lr = 3e-3;             // peak learning rate (warmup, then cosine decay)
  int64_t warmup = 10;          // warmup steps (at most half the stage)
  double lr_floor_ratio = 0.1;  // cosine decay to this fraction of lr (1: constant after warmup)
  double weight_decay = 0.1;    // AdamW's decoupled weight decay
};

struct StageOptions {
  std::function<void(int64_t step)> on_step;         // before each step (fault injection)
  nlohmann::json record = nlohmann::json::object();  // extra stage.json fields
  // What the stage trains with: optimizer, placement, data parallelism. The stage adds
  // an MoE model's aux loss (unless set) and its expert-load log.
  TrainHooks hooks = {};
  // Learning curves: evaluated every `held_out_every` steps (a multiple of the run's
  // log_every; 0: never) and logged as metrics.jsonl's "held_out" beside the step's
  // cumulative "flops" (see TrainOptions::held_out).
  std::function<nlohmann::json(const CausalLM&)> held_out;
  int64_t held_out_every = 0;
  // An MoE model's routed experts stay as they are (btx::freeze_experts); recorded in
  // stage.json. FLOPs are still counted as for a full backward: the experts' weight
  // gradients, a third of their training FLOPs, are not actually spent.
  bool freeze_experts = false;
  // Training FLOPs per token to count; 0: the model's full training cost (its spec). A
  // stage that freezes parts of its model says what its steps really cost
  // (train/flops.hpp: partly_frozen_training_flops_per_token).
  double flops_per_token = 0.0;
  // Memory for compute (TrainOptions): micro-batches per step (gradient accumulation) and
  // layers recomputed in backward. Sharding is a choice of the hooks (recipe::stage_hooks).
  int64_t micro_batches = 1;
  bool activation_checkpointing = false;
};

// A model and the record (stage.json) of the stage that made it.
struct StageResult {
  CausalLM model;
  nlohmann::json record;
};

// Router health: each MoE layer's share of routed tokens per expert in the last batch,
// [layer][expert]; warns on stderr when a share falls below 1/(4N) (a dead expert?).
inline nlohmann::json expert_load(torch::nn::Module& model, const std::string& stage,
                                  int64_t step) {
  auto load = nlohmann::json::array();
  for (const auto& [name, layer] : moe_layers(model)) {
    const auto counts = layer->last_stats().tokens_per_expert.to(torch::kDouble);
    const double total = counts.sum().item<double>();
    const int64_t n = counts.numel();
    std::vector<double> shares;
    for (int64_t e = 0; e < n; ++e) {
      shares.push_back(total > 0 ? counts[e].item<double>() / total : 0.0);
      if (shares.back() < 1.0 / double(4 * n)) {
        std::fprintf(stderr,
                     "[%s] step %lld: warning: expert %lld of %s got %.1f%% of the routed "
                     "tokens, below 1/(4N) = %.1f%%: a dead expert?\n",
                     stage.c_str(), static_cast<long long>(step), static_cast<long long>(e),
                     name.c_str(), 100.0 * shares.back(), 100.0 / double(4 * n));
      }
    }
    load.push_back(shares);
  }
  return load;
}

namespace detail {
// train_causal_lm takes a torch holder (model->..., *model); this one forwards to a CausalLM.
struct TrainableLM {
  CausalLM lm;
  const CausalLM* operator->() const { return &lm; }
  torch::nn::Module& operator*() const { return lm.module(); }
};
}  // namespace detail

// Trains `model` in place as stage `stage` and returns its record (nothing saved yet).
inline nlohmann::json train(const Run& run, const std::string& stage, const CausalLM& model,
                            const WindowSampler& sampler, const StageBudget& budget,
                            const StageOptions& options = {}) {
  TrainHooks hooks = options.hooks;
  if (options.freeze_experts) {
    if (!model.is_moe()) {
      throw std::invalid_argument("btx::recipe: stage '" + stage +
                                  "' freezes experts, but its model is dense");
    }
    (void)freeze_experts(model.module());
  }
  std::filesystem::create_directories(run.stage_dir(stage));
  std::optional<MetricsLog> metrics;  // rank 0's alone under data parallelism
  if (hooks.writes_files) metrics.emplace((run.stage_dir(stage) / "metrics.jsonl").string());
  TrainOptions t;
  t.stage = stage;
  t.steps = budget.steps;
  t.batch_size = run.train().batch_size;
  t.peak_lr = budget.lr;
  t.warmup_steps = std::min(budget.warmup, budget.steps / 2);
  t.lr_floor_ratio = budget.lr_floor_ratio;
  t.weight_decay = budget.weight_decay;
  t.log_every = run.train().log_every;
  if (run.train().checkpoint_every > 0) {
    t.checkpoint_dir = run.checkpoint_dir(stage).string();
    t.checkpoint_every = run.train().checkpoint_every;
  }
  t.on_step = options.on_step;
  t.micro_batches = options.micro_batches;
  t.activation_checkpointing = options.activation_checkpointing;
  if (options.held_out) {
    t.held_out = [model, held_out = options.held_out] { return held_out(model); };
  }
  t.held_out_every = options.held_out_every;  // the trainer checks the pair
  // Each record's compute so far, for curves against training FLOPs; an MoE's router health.
  const double flops_per_tok = options.flops_per_token > 0.0
                                   ? options.flops_per_token
                                   : flops_per_token(model.spec(), sampler.seq_len());
  t.on_log = [model, stage, flops_per_tok](int64_t step, nlohmann::json& record) {
    record["flops"] = record["tokens"].get<double>() * flops_per_tok;
    if (model.is_moe()) record["expert_load"] = expert_load(model.module(), stage, step);
  };
  if (model.is_moe()) {
    if (!hooks.aux_loss) {
      hooks.aux_loss = [model]() -> torch::Tensor { return collect_aux_loss(model.module()); };
    }
  }
  detail::TrainableLM trainable{model};
  const auto summary =
      train_causal_lm(trainable, sampler, t, std::move(hooks), metrics ? &*metrics : nullptr);
  nlohmann::json record = {{"stage", stage},
                           {"steps", summary.steps},
                           {"tokens", summary.tokens},
                           {"skipped_steps", summary.skipped_steps},
                           {"resumed_from_step", summary.resumed_from_step},
                           {"seconds", summary.seconds},
                           {"final_loss", summary.final_loss},
                           {"flops", double(summary.tokens) * flops_per_tok}};
  if (options.freeze_experts) record["frozen_experts"] = true;
  for (const auto& [key, value] : options.record.items()) record[key] = value;
  return record;
}

// Saves `model` as the stage's result and finishes the stage with `record`.
inline void finish_stage(const Run& run, const std::string& stage, const CausalLM& model,
                         const nlohmann::json& record) {
  save_stage_model(run, stage, model);
  run.mark_done(stage, record);
}

// finish_stage where this process writes files (every process, or rank 0 of a data-parallel
// stage); the stage's record either way.
inline nlohmann::json finish_if_writer(const Run& run, const std::string& stage,
                                       const CausalLM& model, nlohmann::json record,
                                       const StageOptions& options) {
  record["stage"] = stage;
  if (!options.hooks.writes_files) return record;
  finish_stage(run, stage, model, record);
  return run.record(stage);
}

// The Train stage: trains, saves and finishes `stage`, or, when it is already finished,
// loads its weights into `model`. Returns stage.json either way.
inline nlohmann::json train_stage(const Run& run, const std::string& stage, const CausalLM& model,
                                  const WindowSampler& sampler, const StageBudget& budget,
                                  const StageOptions& options = {}) {
  // Claimed before the check, so a stage finished by another worker meanwhile is seen.
  const auto claim = run.claim(stage, options.hooks.writes_files);
  if (run.skip_if_done(stage)) {
    load_stage_weights(run, stage, model);
    return run.record(stage);
  }
  return finish_if_writer(run, stage, model, train(run, stage, model, sampler, budget, options),
                          options);
}

}  // namespace recipe
BTX_NAMESPACE_END
}  // namespace btx
