// SPDX-License-Identifier: MIT
// (f) evaluation: every arm of the recipe's graph on every domain's held-out tokens, greedy
// exact match on the math problems, and, for MoE models, the routing analysis (each
// expert's share of each domain's tokens, per layer).
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include <btx/core/causal_lm.hpp>
#include <btx/merge/btm_ensemble.hpp>
#include <btx/models/common/generate.hpp>
#include <btx/moe/moe_layer.hpp>
#include <btx/recipe/baselines.hpp>
#include <btx/recipe/btx_stages.hpp>
#include <btx/recipe/finetune.hpp>
#include <btx/recipe/lineage.hpp>
#include <btx/recipe/stage_model.hpp>
#include <btx/train/evaluate.hpp>
#include <btx/train/routing_shares.hpp>

#include "pipeline_run.hpp"
#include "report.hpp"

namespace btx::pipeline {

struct Evaluated {
  ModelResult result;
  RoutingShares routing;             // empty for dense models
  std::vector<std::string> experts;  // the arm's experts when not BTX's (routing labels)
};

// Greedy continuation of `prompt` by `sample_tokens` tokens, decoded (the context: the last
// seq_len tokens, the longest window the models trained on).
inline std::string greedy_sample(const PipelineRun& run, const LogitsFn& logits_fn,
                                 const std::string& prompt) {
  torch::NoGradGuard no_grad;
  auto ids = run.codec.encode(prompt);
  const size_t prompt_length = ids.size();
  for (int64_t t = 0; t < run.config.sample_tokens; ++t) {
    const size_t from =
        ids.size() > size_t(run.config.seq_len) ? ids.size() - run.config.seq_len : 0;
    const std::vector<int64_t> window(ids.begin() + ptrdiff_t(from), ids.end());
    auto logits = logits_fn(torch::tensor(window, torch::kLong).unsqueeze(0));
    ids.push_back(logits.select(1, logits.size(1) - 1).argmax(-1).item<int64_t>());
  }
  return run.codec.decode({ids.begin() + ptrdiff_t(prompt_length), ids.end()});
}

inline ModelResult score(const PipelineRun& run, const std::string& name, const std::string& kind,
                         const LogitsFn& logits_fn) {
  std::fprintf(stderr, "[eval] %s\n", name.c_str());
  ModelResult r;
  r.name = name;
  r.kind = kind;
  for (const auto& prompt : run.config.sample_prompts) {
    r.samples.push_back(greedy_sample(run, logits_fn, prompt));
  }
  for (const auto& d : run.corpus.domains) {
    r.loss[d.name] =
        evaluate_loss(logits_fn, d.eval_tokens, run.config.seq_len, run.config.eval_windows).loss;
    if (!d.eval_problems.empty()) {
      auto next = [&](const std::vector<int64_t>& ids) {
        auto logits = logits_fn(torch::tensor(ids, torch::kLong).unsqueeze(0));
        return logits.select(1, logits.size(1) - 1).argmax(-1).item<int64_t>();
      };
      r.math_exact_match =
          exact_match(next, d.eval_problems, size_t(run.config.math_problems), 8, run.codec);
    }
  }
  return r;
}

// The compute after the seed that the model of stage `stage` (or the arm made of stages
// `stages`) consumed: its own training and that of every stage it is made from, but the
// seed phase's (the budget every method shares starts after the seed).
inline void add_compute(ModelResult& r, const PipelineRun& p,
                        const std::vector<std::string>& stages) {
  for (const auto& s : stages) {
    const auto info = p.run().record(s);
    r.train_flops += info.value("flops", 0.0);
    r.train_tokens += info.value("tokens", int64_t{0});
    r.train_seconds += info.value("seconds", 0.0);
  }
}

// The stages whose training an arm's compute counts: its own (when it has one) and
// everything upstream of it, but the seed phase's.
inline std::vector<std::string> compute_stages(const recipe::BtxStage& d,
                                               const recipe::StageInstance& i,
                                               const PipelineRun& p) {
  const auto& graph = recipe::btx_graph();
  std::vector<std::string> out;
  if (d.run && d.phase != recipe::btx_phases().front()) out.push_back(i.stage);
  for (const auto& s : graph.upstream(i, p.domain_names(), p.routers())) {
    for (const auto& up : graph.declarations()) {
      for (const auto& ui : graph.instances_of(up, p.domain_names(), p.routers())) {
        if (ui.stage == s && up.phase != recipe::btx_phases().front()) out.push_back(s);
      }
    }
  }
  return out;
}

inline RoutingShares routing_analysis(const PipelineRun& run, const CausalLM& model) {
  std::vector<std::pair<std::string, torch::Tensor>> held_out;
  for (const auto& d : run.corpus.domains) held_out.emplace_back(d.name, d.eval_tokens);
  return routing_shares(model, held_out, run.config.seq_len, run.config.eval_windows);
}

// Every arm of the recipe's graph (recipe/btx_stages.hpp), in declaration order: its model
// (or, for an arm of other stages' models, its logits) scored on every domain, its compute
// counted, an MoE's routing analysed.
inline std::vector<Evaluated> evaluate_all(const PipelineRun& run) {
  std::vector<Evaluated> out;
  const auto device = placement(run.config).device;
  const auto& r = run.recipe;
  for (const auto& [d, i] :
       recipe::btx_graph().instances(run.domain_names(), run.routers(), r.selection())) {
    if (!d.arm) continue;
    const std::string name = recipe::instance_name(d.arm->label, i.domain, i.router);
    const std::string kind = recipe::instance_name(d.arm->describe, i.domain, i.router);
    Evaluated e;
    if (d.logits) {
      e.result = score(run, name, kind, d.logits(r, i, device));
    } else {
      const CausalLM m = d.load ? d.load(r, i) : recipe::load_stage_model(r.run, i.stage);
      m.eval();
      m.module().to(device);
      e.result = score(run, name, kind,
                       [m, device](const torch::Tensor& ids) { return m.forward(ids.to(device)); });
      if (d.arm->routing) e.routing = routing_analysis(run, m);
      if (d.expert_names) e.experts = d.expert_names(r);
    }
    add_compute(e.result, run, compute_stages(d, i, run));
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace btx::pipeline
