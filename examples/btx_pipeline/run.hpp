// SPDX-License-Identifier: MIT
// The run folder and its stages. Every stage writes into <run>/<stage>/: `model/` (a
// Hugging Face checkpoint: Llama when dense, Mixtral when MoE), `metrics.jsonl`, and
// `stage.json` last, so a stage is finished exactly when its stage.json exists and a
// second run skips it. Training stages checkpoint into `checkpoints/` until then, so a
// killed stage resumes from its last checkpoint.
#pragma once

#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/data/corpus.hpp>
#include <btx/data/sampler.hpp>
#include <btx/hf/llama_checkpoint.hpp>
#include <btx/moe/llama_moe.hpp>
#include <btx/moe/moe_layer.hpp>
#include <btx/train/flops.hpp>
#include <btx/train/progress.hpp>
#include <btx/train/trainer.hpp>

#include "config.hpp"

namespace btx::pipeline {

namespace fs = std::filesystem;

struct Run {
  PipelineConfig config;
  fs::path dir;
  Corpus corpus;

  [[nodiscard]] fs::path stage_dir(const std::string& stage) const { return dir / stage; }
  [[nodiscard]] bool done(const std::string& stage) const {
    return fs::exists(stage_dir(stage) / "stage.json");
  }
  [[nodiscard]] nlohmann::json stage_info(const std::string& stage) const {
    std::ifstream in(stage_dir(stage) / "stage.json");
    return nlohmann::json::parse(in);
  }
  // Written last, through a rename, so a killed stage never looks finished.
  void mark_done(const std::string& stage, const nlohmann::json& info) const {
    const auto final_path = stage_dir(stage) / "stage.json";
    const auto tmp = stage_dir(stage) / "stage.json.tmp";
    {
      std::ofstream out(tmp);
      out << info.dump(2) << "\n";
      if (!out) throw std::runtime_error("cannot write " + tmp.string());
    }
    fs::rename(tmp, final_path);
    std::error_code ec;  // a finished stage is never resumed: its checkpoints are spent
    fs::remove_all(stage_dir(stage) / "checkpoints", ec);
  }

  [[nodiscard]] std::vector<std::string> domain_names() const {
    std::vector<std::string> names;
    for (const auto& d : corpus.domains) names.push_back(d.name);
    return names;
  }
  // Experts of the mixed model in router order: one per domain, then the seed.
  [[nodiscard]] std::vector<std::string> expert_names() const {
    auto names = domain_names();
    if (config.seed_as_expert) names.push_back("seed");
    return names;
  }
  [[nodiscard]] int64_t num_experts() const { return int64_t(expert_names().size()); }

  [[nodiscard]] MoEOptions moe_options(const std::string& router) const {
    MoEOptions o;
    o.num_experts = num_experts();
    o.router = router;
    o.load_balance_alpha = config.load_balance_alpha;
    o.load_balance_form = parse_load_balance_form(config.load_balance_form);
    o.seed = config.seed;
    return o;
  }
  // Experts run per token by `router` (for FLOP counting).
  [[nodiscard]] int64_t active_experts(const std::string& router) const {
    return btx::active_experts(moe_options(router));  // as the router's registration states
  }

  [[nodiscard]] LlamaForCausalLM make_dense() const { return LlamaForCausalLM(config.model); }
  [[nodiscard]] LlamaForCausalLM make_moe(const std::string& router) const {
    return LlamaForCausalLM(config.model, moe_feed_forward(moe_options(router)));
  }
  [[nodiscard]] LlamaForCausalLM load_dense(const std::string& stage) const {
    auto model = make_dense();
    hf::load_hf_weights(*model, stage_dir(stage) / "model");
    return model;
  }
  [[nodiscard]] LlamaForCausalLM load_moe(const std::string& stage,
                                          const std::string& router) const {
    auto model = make_moe(router);
    hf::load_hf_weights(*model, stage_dir(stage) / "model");
    return model;
  }
  void save(const std::string& stage, LlamaForCausalLM& model, bool moe,
            const std::string& router = "top2") const {
    hf::SaveOptions options;
    options.overwrite = true;  // a half-finished earlier attempt may have left one
    if (moe) {
      options.moe = hf::MoEConfig{num_experts(), active_experts(router), config.load_balance_alpha};
    }
    hf::save_hf_checkpoint(*model, config.model, stage_dir(stage) / "model", options);
  }

  [[nodiscard]] WindowSampler mixture_sampler(uint64_t stream) const {
    std::vector<torch::Tensor> sources;
    for (const auto& d : corpus.domains) sources.push_back(d.train_tokens);
    return WindowSampler(sources, {}, config.seq_len, config.seed * 1000 + stream, domain_names());
  }
  [[nodiscard]] WindowSampler domain_sampler(size_t domain, uint64_t stream) const {
    return WindowSampler({corpus.domains.at(domain).train_tokens}, {}, config.seq_len,
                         config.seed * 1000 + stream, {corpus.domains.at(domain).name});
  }

  [[nodiscard]] double flops_per_token(int64_t experts, int64_t active) const {
    return training_flops_per_token(config.model, config.seq_len, {experts, active});
  }
  [[nodiscard]] int64_t tokens_per_step() const { return config.batch_size * config.seq_len; }
};

// Router health: each MoE layer's share of routed tokens per expert in the last batch,
// [layer][expert]; warns on stderr when a share falls below 1/(4N) (a dead expert).
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

// Trains `model` as stage `stage`, logging to <stage>/metrics.jsonl and checkpointing into
// <stage>/checkpoints/ (a rerun resumes there); returns stage.json. on_step(step) runs
// before every step (fault injection).
inline nlohmann::json train_stage(const Run& run, const std::string& stage, LlamaForCausalLM& model,
                                  const WindowSampler& sampler, const StageBudget& budget,
                                  int64_t steps, double flops_per_token, bool moe,
                                  std::function<void(int64_t)> on_step = {}) {
  fs::create_directories(run.stage_dir(stage));
  MetricsLog metrics((run.stage_dir(stage) / "metrics.jsonl").string());
  TrainOptions options;
  options.stage = stage;
  options.steps = steps;
  options.batch_size = run.config.batch_size;
  options.peak_lr = budget.lr;
  options.warmup_steps = std::min(budget.warmup, steps / 2);
  options.log_every = run.config.log_every;
  if (run.config.checkpoint_every > 0) {
    options.checkpoint_dir = (run.stage_dir(stage) / "checkpoints").string();
    options.checkpoint_every = run.config.checkpoint_every;
  }
  options.on_step = std::move(on_step);
  if (moe) {
    options.on_log = [&model, stage](int64_t step, nlohmann::json& record) {
      record["expert_load"] = expert_load(*model, stage, step);
    };
  }
  std::function<torch::Tensor()> aux;
  if (moe) aux = [&]() -> torch::Tensor { return collect_aux_loss(*model); };
  const auto summary = train_causal_lm(model, sampler, options, aux, &metrics);
  return {{"stage", stage},
          {"steps", summary.steps},
          {"tokens", summary.tokens},
          {"skipped_steps", summary.skipped_steps},
          {"resumed_from_step", summary.resumed_from_step},
          {"seconds", summary.seconds},
          {"final_loss", summary.final_loss},
          {"flops", double(summary.tokens) * flops_per_token}};
}

}  // namespace btx::pipeline
