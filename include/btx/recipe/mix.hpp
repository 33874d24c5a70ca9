// SPDX-License-Identifier: MIT
// MiX: the trained experts (plus, as the paper does, the seed as a generalist) become one
// MoE model of their family, as a merge choice says (merge/merge_choice.hpp): the method
// makes each layer's FFNs into experts (the paper's: expert j is expert j's FFN), the
// averaging combines every other tensor, the router init starts the new routers. The MoE
// routes tokens to active_experts(moe) experts, which the checkpoint records as
// num_experts_per_tok.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/core/causal_lm.hpp>
#include <btx/merge/merge_choice.hpp>
#include <btx/merge/router_init.hpp>
#include <btx/merge/state_dict.hpp>
#include <btx/merge/write_plan.hpp>
#include <btx/moe/router_registry.hpp>
#include <btx/recipe/branch.hpp>
#include <btx/recipe/compute.hpp>
#include <btx/recipe/run.hpp>
#include <btx/recipe/stage_model.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace recipe {

inline constexpr const char* kMixStage = "mix";

struct MixOptions {
  // How FFNs become experts, how the rest is averaged, how routers start (default: the
  // paper's: btx, uniform, normal). merge::read_merge_choice reads one from config keys.
  merge::MergeChoice choice = merge::read_merge_choice(nlohmann::json::object());
  // The mixed model's MoE layers: router (default top2) and aux loss; mix sets the expert
  // count and width from the choice.
  MoEConfig moe = {};
  bool seed_as_expert = true;  // the seed joins as the last expert (the generalist)
  // Or the seed's FFN becomes the always-on shared expert, for families whose MoE has one
  // (Qwen2-MoE; merge/moe_plan.hpp: it and the routed mixture start at half weight each).
  bool seed_as_shared_expert = false;
  uint64_t seed = 0;  // router init normal's seed, DARE's drops
  // Router init hidden: token ids [B, S] per domain expert, in expert order. Expert j's
  // router row starts as its mean FFN input on router_samples[j]; the seed's on all.
  std::vector<torch::Tensor> router_samples;
};

// The mixed model's experts in router order, from the experts' names (and "seed").
inline std::vector<std::string> mixed_expert_names(std::vector<std::string> names,
                                                   const MixOptions& options) {
  if (options.seed_as_expert) names.push_back("seed");
  return options.choice.expert_names(names);
}
inline std::vector<std::string> mixed_expert_names(const std::vector<Expert>& experts,
                                                   const MixOptions& options) {
  std::vector<std::string> names;
  for (const auto& e : experts) names.push_back(e.info.name);
  return mixed_expert_names(std::move(names), options);
}

// The mixed model's MoE config: options.moe with the choice's expert count and width, for
// `sources` FFNs (the experts', and the seed's when it joins) `dense_ffn` wide.
inline MoEConfig mixed_moe(const MixOptions& options, size_t sources, int64_t num_experts,
                           int64_t dense_ffn) {
  MoEConfig moe = options.moe;
  moe.num_experts = num_experts;
  const auto& method = *options.choice.method.spec;
  if (method.recipe) {
    const auto r =
        method.recipe(options.choice.method.options, {sources, dense_ffn, 1, int64_t(sources), {}});
    const int64_t width = r.experts.front().intermediate();
    moe.expert_size = width == dense_ffn ? 0 : width;
  }
  return moe;
}

// The MoE model mixed from `experts` (and `seed`, unused unless options.seed_as_expert).
inline CausalLM mix(const std::vector<Expert>& experts, const CausalLM& seed,
                    const MixOptions& options) {
  if (experts.empty()) throw std::invalid_argument("btx::recipe::mix: no experts to mix");
  const auto& method = *options.choice.method.spec;
  if (method.dense_output || method.copies_one_source) {
    throw std::invalid_argument("btx::recipe::mix: method '" + method.name +
                                "' does not make an MoE of the experts");
  }
  if (options.seed_as_expert && options.seed_as_shared_expert) {
    throw std::invalid_argument(
        "btx::recipe::mix: the seed is either one more routed expert (seed_as_expert) or the "
        "shared expert (seed_as_shared_expert), not both");
  }
  const auto names = mixed_expert_names(experts, options);
  const ModelSpec& dense = experts.front().model.spec();
  std::vector<merge::StateDictSource> sources;
  for (const auto& e : experts) {
    if (e.model.is_moe() || e.model.spec().family != dense.family ||
        e.model.spec().shape != dense.shape) {
      throw std::invalid_argument("btx::recipe::mix: expert '" + e.info.name + "' is not a dense " +
                                  dense.family + " model of the first expert's shape");
    }
    sources.push_back(merge::source_of(e.model.module(), e.info.name));
  }
  const auto base = merge::source_of(seed.module(), "seed");
  if (options.seed_as_expert) sources.push_back(base);
  MoEConfig moe = resolved(
      mixed_moe(options, sources.size(), int64_t(names.size()), dense.shape.intermediate_size));
  merge::MergeContext ctx;
  ctx.experts_per_token = active_experts(moe);
  ctx.shared = merge::shared_expert_for(family_of(dense), options.seed_as_shared_expert
                                                              ? merge::SharedExpertChoice::of_base()
                                                              : merge::SharedExpertChoice{});
  if (ctx.shared.from != merge::SharedExpertChoice::From::none) {
    moe.shared_expert_size = ctx.shared.filled() ? dense.shape.intermediate_size : 0;
    moe.shared_expert_gated = ctx.shared.gated;
  }
  // Parameters the MoE's own router and layers have beyond the contract's.
  ctx.router_bias = has_balancing_bias(moe.router);
  ctx.dense_layers = moe.dense_layers;
  if (options.seed_as_expert) ctx.base_source = sources.size() - 1;
  ctx.seed = options.seed;
  ctx.hidden_states = [&] {
    if (options.router_samples.size() != experts.size()) {
      throw std::invalid_argument(
          "btx::recipe::mix: router init '" + options.choice.router_init.name() +
          "' needs one sample of token ids per expert (" + std::to_string(experts.size()) +
          "), got " + std::to_string(options.router_samples.size()));
    }
    std::vector<torch::Tensor> samples, per_source;
    for (const auto& ids : options.router_samples) samples.push_back(ids.to(torch::kInt64));
    for (size_t j = 0; j < experts.size(); ++j) {
      CausalLM expert = experts[j].model;
      per_source.push_back(merge::mean_mlp_inputs(expert, {samples[j]}));
    }
    if (options.seed_as_expert) {
      CausalLM generalist = seed;
      per_source.push_back(merge::mean_mlp_inputs(generalist, samples));
    }
    return per_source;
  };
  const auto tensors = merge::materialize(merge::plan_merge(options.choice, sources, &base, ctx));
  CausalLM mixed = make_stage_model(dense, moe);
  merge::load_state_dict(mixed.module(), tensors);
  return mixed;
}

// The Mix stage: mixes, saves <run>/mix/model/ and records the experts and their lineage;
// when finished, loads the mixed model routed by options.moe's router instead.
inline CausalLM mix_stage(const Run& run, const std::vector<Expert>& experts, const CausalLM& seed,
                          const MixOptions& options) {
  const auto names = mixed_expert_names(experts, options);
  const MoEConfig moe = mixed_moe(options, experts.size() + (options.seed_as_expert ? 1 : 0),
                                  int64_t(names.size()), seed.spec().shape.intermediate_size);
  if (run.skip_if_done(kMixStage)) return load_stage_model(run, kMixStage, moe);
  CausalLM mixed = mix(experts, seed, options);
  auto lineage = nlohmann::json::array();
  for (const auto& e : experts) lineage.push_back(e.info);
  finish_stage(run, kMixStage, mixed,
               {{"experts", names},
                {"router", moe.router.name},
                {"router_init", options.choice.router_init.name()},
                {"experts_from", options.choice.method.name()},
                {"averaging", options.choice.averaging.name()},
                {"merge", options.choice.to_json()},
                {"experts_per_token", active_experts(moe)},
                {"lineage", lineage},
                {"flops", 0.0},
                {"tokens", 0},
                {"seconds", 0.0}});
  return mixed;
}

}  // namespace recipe
BTX_NAMESPACE_END
}  // namespace btx
