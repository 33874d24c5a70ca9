// SPDX-License-Identifier: MIT
// Branch and the expert half of Train. Branch copies the seed once per domain (any
// family: CausalLM::clone()) and records the lineage in <run>/branch/stage.json; each
// expert then trains as its own stage "expert-<name>", in this process or in a worker
// process of its own (branched_expert() rebuilds it there from the seed on disk, after
// checking that the seed is still the parent Branch recorded).
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/core/causal_lm.hpp>
#include <btx/data/sampler.hpp>
#include <btx/merge/branch.hpp>
#include <btx/merge/expert_info.hpp>
#include <btx/recipe/lineage.hpp>
#include <btx/recipe/run.hpp>
#include <btx/recipe/stage_model.hpp>
#include <btx/recipe/train_stage.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace recipe {

// A branched expert: its own copy of the model and its lineage.
using Expert = merge::Branched<CausalLM>;

// One deep copy of `seed` per domain, expert j named domains[j] (no run folder involved).
inline std::vector<Expert> branch(const CausalLM& seed, const std::vector<std::string>& domains,
                                  const std::string& seed_name = "seed") {
  return merge::branch(seed, domains, seed_name);
}

namespace detail {
inline void check_parent(const BranchRecord& record, const CausalLM& seed, const Run& run) {
  const auto now = merge::weights_fingerprint(seed.module());
  if (now != record.parent_fingerprint) {
    throw std::runtime_error("btx::recipe: the weights of '" + record.parent +
                             "' changed since the Branch stage of " + run.dir().string() +
                             " (fingerprint " + record.parent_fingerprint + ", now " + now +
                             "); remove its branch/ and expert-*/ folders to branch again");
  }
}
}  // namespace detail

// The Branch stage: branches `seed` and records the lineage. On a rerun it branches
// again and checks that the seed and the domains are the ones recorded.
inline std::vector<Expert> branch_stage(const Run& run, const CausalLM& seed,
                                        const std::vector<std::string>& domains,
                                        const std::string& seed_name = "seed") {
  auto experts = branch(seed, domains, seed_name);
  if (run.skip_if_done(kBranchStage)) {
    const auto record = branch_record(run);
    if (record.names() != domains) {
      throw std::runtime_error("btx::recipe: the Branch stage of " + run.dir().string() +
                               " made other experts than the domains given now");
    }
    detail::check_parent(record, seed, run);
    return experts;
  }
  BranchRecord record;
  record.parent = seed_name;
  record.parent_fingerprint = experts.front().info.seed_hash;
  for (const auto& e : experts) record.experts.push_back(e.info);
  nlohmann::json j = record;
  j["flops"] = 0.0;
  run.mark_done(kBranchStage, j);
  return experts;
}

// Expert `name` of the finished Branch stage, as a fresh copy of `seed` (in a worker
// process, `seed` is the seed stage's model loaded from disk).
inline Expert branched_expert(const Run& run, const CausalLM& seed, const std::string& name) {
  const auto record = branch_record(run);
  Expert e{seed.clone(), record.expert(name)};
  detail::check_parent(record, seed, run);
  return e;
}

// Train for an expert: stage "expert-<name>" on `sampler`; fills expert.info's counters
// (steps, tokens, FLOPs since branching) and records it in stage.json under "expert".
inline nlohmann::json train_expert(const Run& run, Expert& expert, const WindowSampler& sampler,
                                   const StageBudget& budget, StageOptions options = {}) {
  const std::string stage = expert_stage(expert.info.name);
  const auto claim = run.claim(stage, options.hooks.writes_files);  // before the check
  if (run.skip_if_done(stage)) {
    load_stage_weights(run, stage, expert.model);
    expert.info = expert_info(run, expert.info.name);
    return run.record(stage);
  }
  options.record["domain"] = expert.info.domain;
  options.record["parent"] = expert.info.parent;
  auto record = train(run, stage, expert.model, sampler, budget, options);
  expert.info.steps_trained = record.at("steps").get<int64_t>();
  expert.info.tokens_trained = record.at("tokens").get<int64_t>();
  expert.info.flops = record.at("flops").get<double>();
  record["expert"] = expert.info;
  return finish_if_writer(run, stage, expert.model, record, options);
}

// The trained experts of a run, in branch order, loaded from their stages.
inline std::vector<Expert> load_experts(const Run& run) {
  std::vector<Expert> out;
  for (const auto& name : branch_record(run).names()) {
    out.push_back({load_stage_model(run, expert_stage(name)), expert_info(run, name)});
  }
  return out;
}

}  // namespace recipe
BTX_NAMESPACE_END
}  // namespace btx
