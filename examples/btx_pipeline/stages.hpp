// SPDX-License-Identifier: MIT
// The pipeline's stages: seed, one expert per domain, MiX, MoE finetune (BTX, any router),
// and the baselines at BTX's compute: dense continued training, sparse upcycling, BTM
// merge. Each reads earlier stages from disk and writes its own folder (see run.hpp).
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include <btx/models/llama/hf_config.hpp>
#include <btx/merge/mixers.hpp>
#include <btx/merge/router_init.hpp>
#include <btx/merge/state_dict.hpp>

#include "run.hpp"

namespace btx::pipeline {

inline std::string expert_stage(const std::string& domain) {
  return "expert-" + domain;
}
inline std::string finetune_stage(const std::string& router) {
  return "btx-" + router;
}

// (a) the seed: an HF checkpoint named in the config, or pretraining on the mixture.
inline void run_seed(const Run& run) {
  const std::string stage = "seed";
  if (run.done(stage)) return;
  fs::create_directories(run.stage_dir(stage));
  auto model = run.make_dense();
  nlohmann::json info;
  if (!run.config.seed_checkpoint.empty()) {
    hf::load_hf_weights(*model, run.config.seed_checkpoint);
    info = {{"stage", stage},
            {"source", run.config.seed_checkpoint},
            {"flops", 0.0},
            {"tokens", 0},
            {"seconds", 0.0}};
  } else {
    info = train_stage(run, stage, model, run.mixture_sampler(0), run.config.seed_stage,
                       run.config.seed_stage.steps, run.flops_per_token(1, 1), false);
  }
  run.save(stage, model, false);
  run.mark_done(stage, info);
}

// (c) one domain expert, branched from the seed; runs in its own process.
inline void run_expert(const Run& run, size_t domain) {
  const auto& name = run.corpus.domains.at(domain).name;
  const std::string stage = expert_stage(name);
  if (run.done(stage)) return;
  auto model = run.load_dense("seed");
  std::function<void(int64_t)> fault;
  if (run.config.fail_expert == int64_t(domain)) {
    fault = [&run, name](int64_t step) {  // fault injection for the isolation tests
      if (step == run.config.fail_step) {
        std::fprintf(stderr, "[%s] fault injected at step %lld: aborting\n", name.c_str(),
                     static_cast<long long>(step));
        std::abort();
      }
    };
  }
  auto info = train_stage(run, stage, model, run.domain_sampler(domain, 1 + domain),
                          run.config.expert_stage, run.config.expert_stage.steps,
                          run.flops_per_token(1, 1), false, fault);
  info["domain"] = name;
  info["parent"] = "seed";
  run.save(stage, model, false);
  run.mark_done(stage, info);
}

inline std::vector<merge::StateDictSource> expert_sources(const Run& run, bool with_seed) {
  std::vector<merge::StateDictSource> sources;
  for (const auto& d : run.domain_names()) {
    sources.push_back(merge::source_of(*run.load_dense(expert_stage(d)), d));
  }
  if (with_seed) sources.push_back(merge::source_of(*run.load_dense("seed"), "seed"));
  return sources;
}

// (d) MiX: FFNs become experts, everything else averaged, routers added.
inline void run_mix(const Run& run) {
  const std::string stage = "mix";
  if (run.done(stage)) return;
  fs::create_directories(run.stage_dir(stage));
  auto sources = expert_sources(run, run.config.seed_as_expert);
  merge::StateDict mixed;
  if (run.config.router_init == "hidden") {
    // Row j: expert j's mean FFN input on its own domain's text (the seed: on all domains),
    // so a token that looks like domain j starts out routed to expert j.
    merge::RouterFromHidden init;
    const auto sample = [&](size_t d) {
      return run.corpus.domains[d]
          .train_tokens.slice(0, 0, 8 * run.config.seq_len)
          .view({8, run.config.seq_len})
          .to(torch::kInt64);
    };
    std::vector<torch::Tensor> all;
    for (size_t d = 0; d < run.corpus.domains.size(); ++d) {
      auto expert = run.load_dense(expert_stage(run.corpus.domains[d].name));
      init.per_source.push_back(merge::mean_mlp_inputs(expert, {sample(d)}));
      all.push_back(sample(d));
    }
    if (run.config.seed_as_expert) {
      auto seed = run.load_dense("seed");
      init.per_source.push_back(merge::mean_mlp_inputs(seed, all));
    }
    mixed = merge::materialize(
        merge::BtxMix<merge::UniformMean, merge::RouterFromHidden>{{}, init, 2}.plan(sources));
  } else if (run.config.router_init == "zero") {
    mixed =
        merge::materialize(merge::BtxMix<merge::UniformMean, merge::RouterZero>{}.plan(sources));
  } else {
    merge::RouterNormal init;
    init.seed = run.config.seed;
    mixed = merge::materialize(
        merge::BtxMix<merge::UniformMean, merge::RouterNormal>{{}, init, 2}.plan(sources));
  }
  auto model = run.make_moe(run.config.router);
  merge::load_state_dict(*model, mixed);
  run.save(stage, model, true, run.config.router);
  run.mark_done(stage, {{"stage", stage}, {"experts", run.expert_names()}, {"flops", 0.0}});
}

// Total compute of BTX after the seed: every expert's training plus the MoE finetune.
inline double btx_budget_flops(const Run& run) {
  double flops = 0;
  for (const auto& d : run.domain_names())
    flops += run.stage_info(expert_stage(d))["flops"].get<double>();
  flops += double(run.config.finetune_stage.steps * run.tokens_per_step()) *
           run.flops_per_token(run.num_experts(), run.active_experts(run.config.router));
  return flops;
}

// (e) MoE finetune of the mixed model with `router`.
inline void run_finetune(const Run& run, const std::string& router) {
  const std::string stage = finetune_stage(router);
  if (run.done(stage)) return;
  auto model = run.load_moe("mix", router);
  auto info = train_stage(run, stage, model, run.mixture_sampler(100), run.config.finetune_stage,
                          run.config.finetune_stage.steps,
                          run.flops_per_token(run.num_experts(), run.active_experts(router)), true);
  info["router"] = router;
  run.save(stage, model, true, router);
  run.mark_done(stage, info);
}

// Baseline: dense continued training of the seed on the mixture at BTX's compute.
inline void run_dense(const Run& run) {
  const std::string stage = "dense";
  if (run.done(stage)) return;
  const double per_step = double(run.tokens_per_step()) * run.flops_per_token(1, 1);
  const int64_t steps = std::max<int64_t>(1, std::llround(btx_budget_flops(run) / per_step));
  auto model = run.load_dense("seed");
  auto info = train_stage(run, stage, model, run.mixture_sampler(200), run.config.expert_stage,
                          steps, run.flops_per_token(1, 1), false);
  run.save(stage, model, false);
  run.mark_done(stage, info);
}

// Baseline: sparse upcycling (MoE of seed copies) finetuned with BTX's whole budget.
inline void run_upcycle(const Run& run) {
  const std::string stage = "upcycle";
  if (run.done(stage)) return;
  const double f = run.flops_per_token(run.num_experts(), run.active_experts(run.config.router));
  const int64_t steps = std::max<int64_t>(
      1, std::llround(btx_budget_flops(run) / (double(run.tokens_per_step()) * f)));
  merge::Upcycle<merge::RouterNormal> up;
  up.num_experts = run.num_experts();
  up.router.seed = run.config.seed + 17;
  std::vector<merge::StateDictSource> seed{merge::source_of(*run.load_dense("seed"), "seed")};
  auto model = run.make_moe(run.config.router);
  merge::load_state_dict(*model, merge::materialize(up.plan(seed)));
  auto info = train_stage(run, stage, model, run.mixture_sampler(300), run.config.finetune_stage,
                          steps, f, true);
  run.save(stage, model, true, run.config.router);
  run.mark_done(stage, info);
}

// Baseline: Branch-Train-Merge's parameter average of the domain experts (no training).
inline void run_btm_merge(const Run& run) {
  const std::string stage = "btm-merge";
  if (run.done(stage)) return;
  fs::create_directories(run.stage_dir(stage));
  auto merged = merge::materialize(merge::BtmMerge<>{}.plan(expert_sources(run, false)));
  auto model = run.make_dense();
  merge::load_state_dict(*model, merged);
  run.save(stage, model, false);
  run.mark_done(stage, {{"stage", stage}, {"flops", 0.0}, {"tokens", 0}, {"seconds", 0.0}});
}

}  // namespace btx::pipeline
