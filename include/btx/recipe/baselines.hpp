// SPDX-License-Identifier: MIT
// The baselines the BTX paper compares with, at BTX's compute: dense continued training of
// the seed, sparse upcycling (an MoE of seed copies, then finetuned), each given as many
// steps as spend `budget_flops` (compute.hpp: btx_budget_flops, steps_for_budget); and
// Branch-Train-Merge's parameter average of the experts (no training beyond theirs).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/core/causal_lm.hpp>
#include <btx/core/moe_config.hpp>
#include <btx/data/sampler.hpp>
#include <btx/merge/averaging.hpp>
#include <btx/merge/mixers.hpp>
#include <btx/merge/router_init.hpp>
#include <btx/merge/state_dict.hpp>
#include <btx/merge/write_plan.hpp>
#include <btx/recipe/branch.hpp>
#include <btx/recipe/compute.hpp>
#include <btx/recipe/run.hpp>
#include <btx/recipe/stage_model.hpp>
#include <btx/recipe/train_stage.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace recipe {

inline constexpr const char* kDenseStage = "dense";
inline constexpr const char* kUpcycleStage = "upcycle";
inline constexpr const char* kBtmMergeStage = "btm-merge";

// `budget` with its steps replaced by those that spend `budget_flops` on `model`.
inline StageBudget matched_budget(StageBudget budget, const CausalLM& model,
                                  const WindowSampler& sampler, const Run& run,
                                  double budget_flops) {
  budget.steps = steps_for_budget(budget_flops, flops_per_token(model.spec(), sampler.seq_len()),
                                  run.train().batch_size * sampler.seq_len());
  return budget;
}

// Dense continued training of a copy of `seed` (stage `stage`, "dense" by default),
// spending `budget_flops` at budget's learning rate and warmup (its steps are replaced).
inline StageResult dense_baseline(const Run& run, const CausalLM& seed,
                                  const WindowSampler& sampler, const StageBudget& budget,
                                  double budget_flops, const StageOptions& options = {},
                                  const std::string& stage = kDenseStage) {
  if (run.skip_if_done(stage)) return {load_stage_model(run, stage), run.record(stage)};
  CausalLM model = seed.clone();
  const auto matched = matched_budget(budget, model, sampler, run, budget_flops);
  return {model, train_stage(run, stage, model, sampler, matched, options)};
}

// The sparse-upcycled MoE of `seed`: every expert a copy of its FFN, routed by `moe`,
// routers drawn from RouterNormal(router_seed).
inline CausalLM upcycle(const CausalLM& seed, const MoEConfig& moe, uint64_t router_seed = 0) {
  if (seed.is_moe())
    throw std::invalid_argument("btx::recipe::upcycle: the seed is already an MoE");
  merge::Upcycle<merge::RouterNormal> up;
  up.num_experts = moe.num_experts;
  up.router.seed = router_seed;
  up.experts_per_token = active_experts(moe);
  up.shared = merge::shared_expert_for(family_of(seed.spec()), {});  // Qwen2-MoE: zero-width
  up.router_bias = has_balancing_bias(moe.router);
  up.dense_layers = moe.dense_layers;
  const std::vector<merge::StateDictSource> source{merge::source_of(seed.module(), "seed")};
  CausalLM model = make_stage_model(seed.spec(), moe);
  merge::load_state_dict(model.module(), merge::materialize(up.plan(source)));
  return model;
}

// Sparse upcycling finetuned at `budget_flops` (stage "upcycle").
inline StageResult upcycle_baseline(const Run& run, const CausalLM& seed, const MoEConfig& moe,
                                    const WindowSampler& sampler, const StageBudget& budget,
                                    double budget_flops, uint64_t router_seed = 0,
                                    const StageOptions& options = {}) {
  if (run.skip_if_done(kUpcycleStage)) {
    return {load_stage_model(run, kUpcycleStage, moe), run.record(kUpcycleStage)};
  }
  CausalLM model = upcycle(seed, moe, router_seed);
  const auto matched = matched_budget(budget, model, sampler, run, budget_flops);
  return {model, train_stage(run, kUpcycleStage, model, sampler, matched, options)};
}

// Branch-Train-Merge: one dense model, every tensor the uniform mean of the experts'
// (stage "btm-merge"; its compute is the experts').
inline StageResult btm_merge(const Run& run, const std::vector<Expert>& experts) {
  if (run.skip_if_done(kBtmMergeStage)) {
    return {load_stage_model(run, kBtmMergeStage), run.record(kBtmMergeStage)};
  }
  if (experts.empty()) throw std::invalid_argument("btx::recipe::btm_merge: no experts");
  std::vector<merge::StateDictSource> sources;
  std::vector<std::string> names;
  for (const auto& e : experts) {
    sources.push_back(merge::source_of(e.model.module(), e.info.name));
    names.push_back(e.info.name);
  }
  CausalLM merged = make_stage_model(experts.front().model.spec());
  merge::load_state_dict(merged.module(), merge::materialize(merge::BtmMerge<>{}.plan(sources)));
  nlohmann::json record = {{"experts", names}, {"flops", 0.0}, {"tokens", 0}, {"seconds", 0.0}};
  finish_stage(run, kBtmMergeStage, merged, record);
  return {merged, run.record(kBtmMergeStage)};
}

}  // namespace recipe
BTX_NAMESPACE_END
}  // namespace btx
