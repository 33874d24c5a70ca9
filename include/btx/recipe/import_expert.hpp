// SPDX-License-Identifier: MIT
// Experts from outside: a domain's expert stage takes a finetune the user already has (an
// HF checkpoint of the seed's architecture) instead of training one, so the mix, the MoE
// stage and the baselines run on the user's own experts. The checkpoint is read as the
// run's models are kept (fp32: an fp32 and a bf16 finetune of one base meet in one dtype)
// and written as the stage's model; stage.json says where it came from and what its
// training cost, which is unknown (counted as 0) unless the user gives it.
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

#include <btx/core/model_spec.hpp>
#include <btx/models/auto.hpp>
#include <btx/recipe/branch.hpp>
#include <btx/recipe/lineage.hpp>
#include <btx/recipe/run.hpp>
#include <btx/recipe/train_stage.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace recipe {

struct ExternalExpert {
  std::filesystem::path checkpoint;  // an HF folder: a dense finetune of the seed
  std::optional<double> flops;       // its training FLOPs after the seed, when known
};

// Refuses, naming the field, a checkpoint that is not a dense model of the seed's family
// and architecture; returns its spec.
inline ModelSpec check_external_expert(const std::string& name, const ModelSpec& seed_spec,
                                       const ExternalExpert& external) {
  const auto where = "expert '" + name + "' (" + external.checkpoint.string() + ")";
  const auto spec = read_model_spec(external.checkpoint / "config.json");
  if (spec.moe || spec.attention_moe) {
    throw std::invalid_argument(where +
                                " is an MoE model; an expert is a dense finetune of the seed");
  }
  if (const auto diff = architecture_difference(seed_spec, spec); !diff.empty()) {
    throw std::invalid_argument(where + " has another architecture than the seed (" + diff +
                                "); an expert must be a finetune of the seed");
  }
  return spec;
}

// Stage expert-<name> from `external` instead of training (checked as above).
inline nlohmann::json import_expert(const Run& run, const std::string& name,
                                    const ModelSpec& seed_spec, const ExternalExpert& external) {
  const std::string stage = expert_stage(name);
  const auto claim = run.claim(stage);
  if (run.skip_if_done(stage)) return run.record(stage);
  const auto spec = check_external_expert(name, seed_spec, external);
  CausalLM model =
      load_causal_lm(external.checkpoint, torch::kFloat32, {}, torch::kCPU, run.non_finite());
  merge::ExpertInfo info = branch_record(run).expert(name);
  info.flops = external.flops.value_or(0.0);
  info.extra["imported_from"] = external.checkpoint.string();
  info.extra["flops_known"] = external.flops.has_value();
  run.log("expert-" + name + " imported from " + external.checkpoint.string() +
          (external.flops ? "" : " (its training cost unknown: counted as 0)"));
  finish_stage(run, stage, model,
               {{"expert", info},
                {"domain", info.domain},
                {"imported_from", external.checkpoint.string()},
                {"source_dtype", spec.dtype},
                {"flops_known", external.flops.has_value()},
                {"flops", info.flops},
                {"steps", 0},
                {"tokens", 0},
                {"seconds", 0.0}});
  return run.record(stage);
}

}  // namespace recipe
BTX_NAMESPACE_END
}  // namespace btx
