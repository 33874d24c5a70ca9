// SPDX-License-Identifier: MIT
// MiX: the trained experts (plus, as the paper does, the seed as a generalist) become one
// MoE model of their family: each layer's FFNs become its experts, every other tensor is
// averaged, and new routers start from `router_init`. The MoE routes tokens to
// active_experts(router) experts, which the checkpoint records as num_experts_per_tok.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/core/causal_lm.hpp>
#include <btx/core/moe_config.hpp>
#include <btx/merge/any_averaging.hpp>
#include <btx/merge/averaging.hpp>
#include <btx/merge/mixers.hpp>
#include <btx/merge/router_init.hpp>
#include <btx/merge/state_dict.hpp>
#include <btx/merge/trunk_merging.hpp>
#include <btx/merge/write_plan.hpp>
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
  RouterChoice router = "top2";        // any registered router (btx::router_names())
  std::string router_init = "normal";  // normal | zero | hidden (see merge/router_init.hpp)
  // How FFNs become experts: "btx" (expert j is source j's FFN, the paper's MiX), "blend"
  // (the paper's Blending ablation: expert n concatenates chunk n of every source's FFN, so
  // every expert holds a slice of every domain; merge/mixers.hpp BlendMix) or "split" (its
  // Splitting: each source's FFN cut into `chunks` experts of 1/chunks the width; SplitMix).
  std::string experts_from = "btx";
  int64_t chunks = 2;          // split: experts per source
  bool seed_as_expert = true;  // the seed joins as the last expert (the generalist)
  // Or the seed's FFN becomes the always-on shared expert, for families whose MoE has one
  // (Qwen2-MoE; merge/moe_plan.hpp: it and the routed mixture start at half weight each).
  bool seed_as_shared_expert = false;
  // Everything else about the MoE layers (load balancing, capacity, ...); mix sets its
  // num_experts and router.
  MoEConfig moe = {};
  uint64_t router_seed = 0;  // router_init "normal": RouterNormal's seed
  // How the shared (non-FFN) tensors combine: "uniform" (the paper's mean), or a task-vector merge
  // against the seed: "task_arithmetic" (lambda * mean task vector), "ties", "dare_linear",
  // "dare_ties" (merge/trunk_merging.hpp). density: ties/dare only.
  std::string averaging = "uniform";
  double density = 0.5;
  double lambda = 1.0;
  // router_init "hidden": token ids [B, S] per domain expert, in expert order. Expert j's
  // router row starts as its mean FFN input on router_samples[j]; the seed's on all.
  std::vector<torch::Tensor> router_samples;

  // The MoE layers' options for `num_experts` experts cut from FFNs `dense_ffn` wide.
  [[nodiscard]] MoEConfig moe_options(int64_t num_experts, int64_t dense_ffn) const {
    MoEConfig o = moe;
    o.num_experts = num_experts;
    o.router = router;
    if (experts_from == "split") o.expert_size = dense_ffn / chunks;
    return o;
  }
};

// The mixed model's experts in router order, from its sources' names: the sources, then
// "seed" when it joins; with blending, "blend-n" (each a slice of every source); split,
// "<source>.c" (chunk c of each).
inline std::vector<std::string> mixed_expert_names(std::vector<std::string> names,
                                                   const MixOptions& options) {
  if (options.seed_as_expert) names.push_back("seed");
  if (options.experts_from == "blend") {
    for (size_t n = 0; n < names.size(); ++n) names[n] = "blend-" + std::to_string(n);
  }
  if (options.experts_from == "split") {
    std::vector<std::string> split;
    for (const auto& name : names) {
      for (int64_t c = 0; c < options.chunks; ++c) split.push_back(name + "." + std::to_string(c));
    }
    return split;
  }
  return names;
}
inline std::vector<std::string> mixed_expert_names(const std::vector<Expert>& experts,
                                                   const MixOptions& options) {
  std::vector<std::string> names;
  for (const auto& e : experts) names.push_back(e.info.name);
  return mixed_expert_names(std::move(names), options);
}

namespace detail {
inline merge::AnyAveraging averaging_of(const MixOptions& o, size_t sources) {
  const std::vector<double> mean(sources, 1.0 / double(sources));
  if (o.averaging == "uniform") return merge::UniformMean{};
  if (o.averaging == "task_arithmetic") return merge::TaskArithmetic{mean, o.lambda};
  if (o.averaging == "ties") return merge::Ties{o.density, o.lambda};
  if (o.averaging == "dare_linear")
    return merge::Dare{o.density, o.lambda, o.router_seed, false, mean};
  if (o.averaging == "dare_ties") return merge::Dare{o.density, o.lambda, o.router_seed, true};
  throw std::invalid_argument("btx::recipe::mix: averaging '" + o.averaging +
                              "' is not one of uniform, task_arithmetic, ties, dare_linear, "
                              "dare_ties");
}

template <class RouterInitT>
merge::StateDict mix_tensors(const std::vector<merge::StateDictSource>& sources,
                             const merge::StateDictSource& base,
                             const merge::AnyAveraging& averaging, RouterInitT init,
                             int64_t experts_per_token, merge::SharedExpertChoice shared,
                             const std::string& experts_from, int64_t chunks) {
  if (experts_from == "split") {
    // SplitMix counts the unsplit k (the plan's k is chunks * it); the model's k is the
    // router's, recorded by the stage.
    merge::SplitMix<merge::AnyAveraging, RouterInitT> mixer{
        averaging, std::move(init), chunks, std::max<int64_t>(1, experts_per_token / chunks),
        false,     shared};
    return merge::materialize(mixer.plan(sources, &base));
  }
  if (experts_from == "blend") {
    merge::BlendMix<merge::AnyAveraging, RouterInitT> mixer{averaging, std::move(init),
                                                            experts_per_token, shared};
    return merge::materialize(mixer.plan(sources, &base));
  }
  if (experts_from != "btx") {
    throw std::invalid_argument("btx::recipe::mix: experts_from '" + experts_from +
                                "' is not one of btx, blend, split");
  }
  merge::BtxMix<merge::AnyAveraging, RouterInitT> mixer{averaging, std::move(init),
                                                        experts_per_token, shared};
  return merge::materialize(mixer.plan(sources, &base));
}
}  // namespace detail

// The MoE model mixed from `experts` (and `seed`, unused unless options.seed_as_expert).
inline CausalLM mix(const std::vector<Expert>& experts, const CausalLM& seed,
                    const MixOptions& options) {
  if (experts.empty()) throw std::invalid_argument("btx::recipe::mix: no experts to mix");
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
  if (options.seed_as_expert && options.seed_as_shared_expert) {
    throw std::invalid_argument(
        "btx::recipe::mix: the seed is either one more routed expert (seed_as_expert) or the "
        "shared expert (seed_as_shared_expert), not both");
  }
  const merge::SharedExpertChoice shared = merge::shared_expert_for(
      family_of(dense), options.seed_as_shared_expert ? merge::SharedExpertChoice::of_base()
                                                      : merge::SharedExpertChoice{});
  MoEConfig moe = options.moe_options(int64_t(names.size()), dense.shape.intermediate_size);
  if (shared.from != merge::SharedExpertChoice::From::none) {
    moe.shared_expert_size = shared.filled() ? dense.shape.intermediate_size : 0;
  }
  const int64_t k = active_experts(moe);
  const auto averaging = detail::averaging_of(options, sources.size());

  merge::StateDict tensors;
  if (options.router_init == "hidden") {
    if (options.experts_from == "blend") {
      throw std::invalid_argument(
          "btx::recipe::mix: router_init 'hidden' starts expert j's router row from source "
          "j's hidden states, but a blended expert holds a slice of every source");
    }
    if (options.router_samples.size() != experts.size()) {
      throw std::invalid_argument(
          "btx::recipe::mix: router_init 'hidden' needs one sample of "
          "token ids per expert (" +
          std::to_string(experts.size()) + "), got " +
          std::to_string(options.router_samples.size()));
    }
    std::vector<torch::Tensor> samples;
    for (const auto& ids : options.router_samples) samples.push_back(ids.to(torch::kInt64));
    merge::RouterFromHidden init;
    for (size_t j = 0; j < experts.size(); ++j) {
      CausalLM expert = experts[j].model;
      init.per_source.push_back(merge::mean_mlp_inputs(expert, {samples[j]}));
    }
    if (options.seed_as_expert) {
      CausalLM generalist = seed;
      init.per_source.push_back(merge::mean_mlp_inputs(generalist, samples));
    }
    tensors = detail::mix_tensors(sources, base, averaging, std::move(init), k, shared,
                                  options.experts_from, options.chunks);
  } else if (options.router_init == "zero") {
    tensors = detail::mix_tensors(sources, base, averaging, merge::RouterZero{}, k, shared,
                                  options.experts_from, options.chunks);
  } else if (options.router_init == "normal") {
    merge::RouterNormal init;
    init.seed = options.router_seed;
    tensors = detail::mix_tensors(sources, base, averaging, init, k, shared, options.experts_from,
                                  options.chunks);
  } else {
    throw std::invalid_argument("btx::recipe::mix: router_init '" + options.router_init +
                                "' is not one of normal, zero, hidden");
  }
  CausalLM mixed = make_stage_model(dense, moe);
  merge::load_state_dict(mixed.module(), tensors);
  return mixed;
}

// The Mix stage: mixes, saves <run>/mix/model/ and records the experts and their lineage;
// when finished, loads the mixed model routed by options.router instead.
inline CausalLM mix_stage(const Run& run, const std::vector<Expert>& experts, const CausalLM& seed,
                          const MixOptions& options) {
  const auto names = mixed_expert_names(experts, options);
  const MoEConfig moe =
      options.moe_options(int64_t(names.size()), seed.spec().shape.intermediate_size);
  if (run.skip_if_done(kMixStage)) return load_stage_model(run, kMixStage, moe);
  CausalLM mixed = mix(experts, seed, options);
  auto lineage = nlohmann::json::array();
  for (const auto& e : experts) lineage.push_back(e.info);
  finish_stage(run, kMixStage, mixed,
               {{"experts", names},
                {"router", options.router.name},
                {"router_init", options.router_init},
                {"experts_from", options.experts_from},
                {"averaging", options.averaging},
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
