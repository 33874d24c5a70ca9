// SPDX-License-Identifier: MIT
// What every stage of the BTX recipe draws on, filled once by the program that runs it
// (btx-pipeline from its config, examples/btx_recipe from its own code): the run folder,
// the domains' token streams, the seed, each stage's budget, how MiX makes its MoE (a
// merge choice: method, averaging, router init) and how the MoE routes, which routers to
// compare, and how a stage trains on its ranks. The stages themselves are declared in
// recipe/btx_stages.hpp; from a Recipe they derive their samplers, MoE configs and BTX's
// compute budget, so every stage and every worker process derives them the same way.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/core/model_spec.hpp>
#include <btx/core/moe_config.hpp>
#include <btx/data/corpus.hpp>
#include <btx/data/sampler.hpp>
#include <btx/merge/merge_choice.hpp>
#include <btx/merge/write_plan.hpp>
#include <btx/moe/router_registry.hpp>
#include <btx/recipe/compute.hpp>
#include <btx/recipe/import_expert.hpp>
#include <btx/recipe/lineage.hpp>
#include <btx/recipe/run.hpp>
#include <btx/recipe/stage_graph.hpp>
#include <btx/recipe/topology.hpp>
#include <btx/recipe/train_stage.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace recipe {

struct Recipe {
  Run run;
  std::vector<Domain> domains;  // one expert each, in router order
  int64_t seq_len = 128;
  uint64_t seed = 0;
  ModelSpec seed_spec;                    // the seed's architecture (dense)
  std::filesystem::path seed_checkpoint;  // an HF checkpoint to start from; empty: pretrain
  StageBudget seed_stage{1000, 3e-3, 20};
  StageBudget expert_stage{150, 1e-3, 10};
  StageBudget finetune_stage{100, 3e-4, 10};
  // Domains whose expert is the user's own finetune of the seed instead of one trained here.
  std::map<std::string, ExternalExpert> external_experts;
  MoEConfig moe;                            // BTX's MoE: its router, aux loss, seed
  std::vector<RouterChoice> extra_routers;  // finetuned from the same mix, to compare
  merge::MergeChoice mix = merge::read_merge_choice(nlohmann::json::object());
  bool seed_as_expert = true;          // the seed joins as the generalist expert
  bool seed_as_shared_expert = false;  // or, where the family has one, the shared expert
  bool freeze_experts = false;         // the MoE stage trains routers and trunk only
  bool baselines = true;               // dense, upcycling, BTM merge and ensemble
  // Optional arms to run too (StageGraph::add_option), each with its options resolved.
  std::map<std::string, nlohmann::json> arms;
  Topology topology;           // ranks per expert and per synchronous stage
  int64_t stage_jobs = 0;      // worker jobs at once (0: planned by cores and memory)
  int64_t threads = 0;         // threads per worker process (0: a share of the cores)
  int64_t worker_bytes = 0;    // a worker's peak memory estimate, for planning (0: unknown)
  int64_t useful_threads = 0;  // the most threads a stage uses well (0: no limit; useful_threads())
  int64_t max_restarts = 0;    // a failed worker job runs again this many times (resuming)
  // How a stage trains on `ranks`: placement, data parallelism, learning curves, fault
  // injection. Unset: one process on the CPU in fp32 (stage_hooks only).
  std::function<StageOptions(const std::string& stage, dist::Communicator& ranks)> stage_options =
      {};

  // Which of the graph's declarations this recipe runs.
  [[nodiscard]] Selection selection() const {
    std::set<std::string> names;
    for (const auto& [name, options] : arms) names.insert(name);
    return {baselines, names};
  }
  // The options of optional arm `name` (it must be one of this recipe's arms).
  [[nodiscard]] const nlohmann::json& arm_options(const std::string& name) const {
    auto it = arms.find(name);
    if (it == arms.end()) {
      throw std::logic_error("btx::recipe: optional arm '" + name + "' is not in this recipe");
    }
    return it->second;
  }

  [[nodiscard]] std::vector<std::string> domain_names() const {
    std::vector<std::string> names;
    for (const auto& d : domains) names.push_back(d.name);
    return names;
  }
  // BTX's router first, then the ones to compare.
  [[nodiscard]] std::vector<RouterChoice> router_choices() const {
    std::vector<RouterChoice> out = {moe.router};
    out.insert(out.end(), extra_routers.begin(), extra_routers.end());
    return out;
  }
  [[nodiscard]] std::vector<std::string> routers() const {
    std::vector<std::string> out;
    for (const auto& r : router_choices()) out.push_back(r.name);
    return out;
  }
  [[nodiscard]] const RouterChoice& router(const std::string& name) const {
    for (const auto& r : extra_routers) {
      if (r.name == name) return r;
    }
    if (moe.router.name == name) return moe.router;
    throw std::invalid_argument("btx::recipe: router '" + name + "' is not one of the recipe's");
  }

  // The mixed model's experts in router order: the mix method's names of the domains'
  // experts (and the seed's, when it joins).
  [[nodiscard]] std::vector<std::string> expert_names() const {
    auto sources = domain_names();
    if (seed_as_expert) sources.push_back("seed");
    return mix.expert_names(sources);
  }
  // The experts' width: the mix method's recipe for the seed's FFN.
  [[nodiscard]] int64_t expert_width() const {
    const size_t n = domains.size() + (seed_as_expert ? 1 : 0);
    if (mix.method.spec->dense_output) return seed_spec.shape.intermediate_size;
    merge::MethodContext c{n, seed_spec.shape.intermediate_size, 2, int64_t(n), {}};
    return mix.method.spec->recipe(mix.method.options, c).experts.front().intermediate();
  }
  // BTX's MoE (mix, MoE stage, evaluation) routed by `router`.
  [[nodiscard]] MoEConfig moe_for(const std::string& router_name) const {
    MoEConfig m = moe;
    m.router = router(router_name);
    m.num_experts = int64_t(expert_names().size());
    const int64_t width = expert_width();
    m.expert_size = width == seed_spec.shape.intermediate_size ? 0 : width;
    return m;
  }
  // Sparse upcycling's MoE: one copy of the seed's FFN per domain (and the seed's own).
  [[nodiscard]] MoEConfig upcycle_moe(const std::string& router_name) const {
    MoEConfig m = moe;
    m.router = router(router_name);
    m.num_experts = int64_t(domains.size()) + (seed_as_expert ? 1 : 0);
    m.expert_size = 0;
    return m;
  }

  // Samplers: the mixture of every domain, or one domain (stream: which random stream).
  [[nodiscard]] WindowSampler mixture_sampler(uint64_t stream) const {
    std::vector<torch::Tensor> sources;
    std::vector<double> weights;  // each domain's configured share (equal by default)
    for (const auto& d : domains) {
      sources.push_back(d.train_tokens);
      weights.push_back(d.weight);
    }
    return WindowSampler(sources, weights, seq_len, seed * 1000 + stream, domain_names());
  }
  [[nodiscard]] WindowSampler domain_sampler(size_t domain, uint64_t stream) const {
    return WindowSampler({domains.at(domain).train_tokens}, {}, seq_len, seed * 1000 + stream,
                         {domains.at(domain).name});
  }
  [[nodiscard]] size_t domain_index(const std::string& name) const {
    for (size_t i = 0; i < domains.size(); ++i) {
      if (domains[i].name == name) return i;
    }
    throw std::invalid_argument("btx::recipe: no domain '" + name + "'");
  }
  [[nodiscard]] int64_t tokens_per_step() const { return run.train().batch_size * seq_len; }

  // How stage `stage` trains on `ranks`.
  [[nodiscard]] StageOptions options(const std::string& stage, dist::Communicator& ranks) const {
    if (stage_options) return stage_options(stage, ranks);
    StageOptions o;
    o.hooks = stage_hooks(ranks);
    return o;
  }

  // BTX's compute after the seed: the experts' recorded FLOPs plus the planned MoE stage
  // with BTX's router (the baselines run beside it, so it is not done yet).
  [[nodiscard]] double btx_budget_flops() const {
    const double finetune =
        planned_flops(finetune_stage.steps, tokens_per_step(),
                      flops_per_token(seed_spec, seq_len, moe_for(moe.router.name)));
    return recipe::btx_budget_flops(expert_infos(run), finetune);
  }
  // BTX's compute after the seed as planned (the experts' steps as configured), for
  // stages that must know it before the experts have finished.
  [[nodiscard]] double btx_planned_budget_flops() const {
    return double(domains.size()) * planned_flops(expert_stage.steps, tokens_per_step(),
                                                  flops_per_token(seed_spec, seq_len)) +
           planned_flops(finetune_stage.steps, tokens_per_step(),
                         flops_per_token(seed_spec, seq_len, moe_for(moe.router.name)));
  }
  // The MoE stage's steps for a `share` of BTX's compute after the seed (the paper's 23%):
  // share / (1 - share) x the experts' planned compute.
  [[nodiscard]] int64_t moe_steps_for_share(double share) const {
    const double experts =
        double(domains.size()) *
        planned_flops(expert_stage.steps, tokens_per_step(), flops_per_token(seed_spec, seq_len));
    return steps_for_budget(share / (1.0 - share) * experts,
                            flops_per_token(seed_spec, seq_len, moe_for(moe.router.name)),
                            tokens_per_step());
  }
};

}  // namespace recipe
BTX_NAMESPACE_END
}  // namespace btx
