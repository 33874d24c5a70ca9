// SPDX-License-Identifier: MIT
// MoE-finetune: the mixed model trained further on the mixture of all domains, its
// routers learning alongside the experts (with the load-balancing loss the router's
// MoEConfig asks for). One stage per router, "btx-<router>", so several routers can be
// compared from one Mix.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include <btx/core/causal_lm.hpp>
#include <btx/core/moe_config.hpp>
#include <btx/data/sampler.hpp>
#include <btx/recipe/mix.hpp>
#include <btx/recipe/run.hpp>
#include <btx/recipe/stage_model.hpp>
#include <btx/recipe/train_stage.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace recipe {

inline std::string finetune_stage(const std::string& router) {
  return "btx-" + router;
}

// Finetunes the MoE model `moe` in place as stage `stage` (a Train stage that refuses a
// dense model, so a forgotten Mix fails here rather than training the wrong thing).
inline nlohmann::json finetune(const Run& run, const std::string& stage, const CausalLM& moe,
                               const WindowSampler& sampler, const StageBudget& budget,
                               const StageOptions& options = {}) {
  if (!moe.is_moe()) {
    throw std::invalid_argument("btx::recipe::finetune: stage '" + stage +
                                "' got a dense model; finetune the output of mix()");
  }
  return train_stage(run, stage, moe, sampler, budget, options);
}

// The Mix stage's model built as `router_options` says, finetuned as stage btx-<router>
// (a worker process's whole job).
inline StageResult finetune_mix(const Run& run, const MoEConfig& router_options,
                                const WindowSampler& sampler, const StageBudget& budget,
                                StageOptions options = {}) {
  const std::string stage = finetune_stage(router_options.router.name);
  if (run.skip_if_done(stage)) {
    return {load_stage_model(run, stage, router_options), run.record(stage)};
  }
  CausalLM moe = load_stage_model(run, kMixStage, router_options);
  options.record["router"] = router_options.router.name;
  auto record = finetune(run, stage, moe, sampler, budget, options);
  return {moe, record};
}

}  // namespace recipe
BTX_NAMESPACE_END
}  // namespace btx
