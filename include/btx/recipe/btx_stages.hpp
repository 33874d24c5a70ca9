// SPDX-License-Identifier: MIT
// The BTX recipe's stages, declared once (recipe/stage_graph.hpp): the seed, Branch, one
// expert per domain, the baselines at BTX's compute (dense continued training, sparse
// upcycling, BTM's merge and ensemble), MiX, and one MoE stage per router. btx_graph() is
// the process-wide graph every part of a program iterates (driver, workers, evaluation,
// report, sweeps); a program adds an arm with one btx_graph().add({...}) before it runs.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <btx/core/causal_lm.hpp>
#include <btx/merge/btm_ensemble.hpp>
#include <btx/models/auto.hpp>
#include <btx/recipe/anchored_stages.hpp>
#include <btx/recipe/attention_stages.hpp>
#include <btx/recipe/baselines.hpp>
#include <btx/recipe/branch.hpp>
#include <btx/recipe/finetune.hpp>
#include <btx/recipe/mix.hpp>
#include <btx/recipe/recipe.hpp>
#include <btx/recipe/stage_graph.hpp>
#include <btx/recipe/train_stage.hpp>
#include <btx/train/evaluate.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace recipe {

using BtxGraph = StageGraph<Recipe>;
using BtxStage = StageDecl<Recipe>;

// The phases the driver runs in order; --until stops after one.
inline const std::vector<std::string>& btx_phases() {
  static const std::vector<std::string> phases = {"seed", "experts", "mix", "finetune"};
  return phases;
}

// The MoE config a finished stage's model is loaded with: BTX's for its router, sparse
// upcycling's, or none (dense, or as its checkpoint routes).
inline CausalLM load_arm_model(const Recipe& r, const StageInstance& i) {
  if (!i.router.empty()) return load_stage_model(r.run, i.stage, r.moe_for(i.router));
  if (i.stage == kUpcycleStage) {
    return load_stage_model(r.run, i.stage, r.upcycle_moe(r.moe.router.name));
  }
  return load_stage_model(r.run, i.stage);
}

// Mix's options from the recipe: its merge choice, BTX's MoE, where the seed goes, and
// (router init hidden) each domain's first windows as its router samples.
inline MixOptions mix_options(const Recipe& r) {
  MixOptions m;
  m.choice = r.mix;
  m.moe = r.moe_for(r.moe.router.name);
  m.seed_as_expert = r.seed_as_expert;
  m.seed_as_shared_expert = r.seed_as_shared_expert;
  m.seed = r.seed;
  if (r.mix.router_init.spec->per_source) {
    for (const auto& d : r.domains) {
      m.router_samples.push_back(
          d.train_tokens.slice(0, 0, 8 * r.seq_len).view({8, r.seq_len}).to(torch::kInt64));
    }
  }
  return m;
}

namespace detail {

// The config keys each stage reads itself (recipe/stage_graph.hpp: sweeps share a stage
// whose upstream keys are unchanged). Keys no stage owns reach every stage.
inline const std::vector<std::string>& expert_keys() {
  static const std::vector<std::string> k = {"expert_stage", "ranks_per_expert", "expert_worlds",
                                             "fail_expert",  "fail_step",        "fail_rank",
                                             "fail_signal",  "experts"};
  return k;
}
// What sets BTX's budget, which the baselines spend: the MoE stage's steps and cost.
inline const std::vector<std::string>& budget_keys() {
  static const std::vector<std::string> k = {
      "moe_share",      "finetune_stage", "router",
      "router_options", "seed_as_expert", "seed_as_shared_expert",
      "experts_from",   "split_chunks",   "ranks_per_stage"};
  return k;
}
inline std::vector<std::string> with(std::vector<std::string> a,
                                     const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// The ceiling's reference (`arms: [ceiling]`): dense continued training at the experts'
// compute alone, beside the experts on their own domains (perfect routing).
inline void add_ceiling_arm(BtxGraph& g) {
  g.add_option({.name = "ceiling",
                .describe = "dense training at the experts' compute, for the experts' ceiling"});
  g.add({.name = "dense-experts",
         .phase = "finetune",
         .inputs = {"seed"},
         .after = {"expert-{domain}"},
         .worker = "dense-experts",
         .ranks = Ranks::stage,
         .option = "ceiling",
         .arm = Arm{"dense at the experts' compute",
                    "dense continued training at the experts' compute alone"},
         .keys = {"arms"},
         .run = [](const Recipe& r, const StageInstance& i, dist::Communicator& ranks) {
           double experts = 0.0;
           for (const auto& e : expert_infos(r.run)) experts += e.flops;
           (void)dense_baseline(r.run, load_stage_model(r.run, "seed"), r.mixture_sampler(200),
                                r.expert_stage, experts, r.options(i.stage, ranks), i.stage);
         }});
}

inline BtxGraph seeded_btx_graph() {
  BtxGraph g(btx_phases());
  g.add({.name = "seed",
         .phase = "seed",
         .arm = Arm{"seed", "the seed model alone"},
         .run = [](const Recipe& r, const StageInstance&, dist::Communicator& ranks) {
           if (r.seed_checkpoint.empty()) {
             CausalLM seed = make_stage_model(r.seed_spec);
             train_stage(r.run, "seed", seed, r.mixture_sampler(0), r.seed_stage,
                         r.options("seed", ranks));
             return;
           }
           if (r.run.skip_if_done("seed")) return;
           CausalLM seed = load_causal_lm(r.seed_checkpoint, torch::kFloat32, {}, torch::kCPU,
                                          r.run.non_finite());
           finish_stage(r.run, "seed", seed,
                        {{"source", r.seed_checkpoint.string()},
                         {"flops", 0.0},
                         {"tokens", 0},
                         {"seconds", 0.0}});
         }});
  g.add({.name = kBranchStage,
         .phase = "seed",
         .inputs = {"seed"},
         .run = [](const Recipe& r, const StageInstance&, dist::Communicator&) {
           (void)branch_stage(r.run, load_stage_model(r.run, "seed"), r.domain_names());
         }});
  g.add({.name = "expert-{domain}",
         .phase = "experts",
         .each = Each::domain,
         .inputs = {kBranchStage},
         .worker = "expert",
         .ranks = Ranks::expert,
         .arm = Arm{"expert {domain}", "the {domain} expert alone"},
         .keys = expert_keys(),
         .run =
             [](const Recipe& r, const StageInstance& i, dist::Communicator& ranks) {
               if (!r.run.done(kBranchStage)) {
                 throw std::runtime_error("the branch stage is not finished in " +
                                          r.run.dir().string() + ": run the seed phase first");
               }
               if (const auto it = r.external_experts.find(i.domain);
                   it != r.external_experts.end()) {
                 if (ranks.rank() == 0)
                   (void)import_expert(r.run, i.domain, r.seed_spec, it->second);
                 if (ranks.size() > 1) ranks.barrier("import expert " + i.domain);
                 return;
               }
               auto expert = branched_expert(r.run, load_stage_model(r.run, "seed"), i.domain);
               train_expert(r.run, expert, r.domain_sampler(i.index, 1 + i.index), r.expert_stage,
                            r.options(i.stage, ranks));
             },
         .worker_option = "expert",
         .group_worker = "experts"});
  g.add({.name = kDenseStage,
         .phase = "finetune",
         .inputs = {"seed"},
         .after = {"expert-{domain}"},
         .worker = "dense",
         .ranks = Ranks::stage,
         .baseline = true,
         .arm = Arm{"dense", "dense continued training at BTX's compute"},
         .keys = budget_keys(),
         .run = [](const Recipe& r, const StageInstance& i, dist::Communicator& ranks) {
           (void)dense_baseline(r.run, load_stage_model(r.run, "seed"), r.mixture_sampler(200),
                                r.expert_stage, r.btx_budget_flops(), r.options(i.stage, ranks));
         }});
  g.add({.name = kBtmMergeStage,
         .phase = "mix",
         .inputs = {"expert-{domain}"},
         .baseline = true,
         .arm = Arm{"BTM merge", "parameter average of the experts"},
         .run = [](const Recipe& r, const StageInstance&, dist::Communicator&) {
           (void)btm_merge(r.run, load_experts(r.run));
         }});
  g.add({.name = "btm-ensemble",
         .phase = "mix",
         .inputs = {"expert-{domain}", "seed"},
         .baseline = true,
         .arm = Arm{"BTM ensemble", "experts + seed, domain-posterior weighted"},
         .logits = [](const Recipe& r, const StageInstance&, torch::Device device) -> LogitsFn {
           std::vector<CausalLM> members;
           for (const auto& d : r.domain_names()) {
             members.push_back(load_stage_model(r.run, expert_stage(d)));
           }
           members.push_back(load_stage_model(r.run, "seed"));
           for (auto& m : members) m.module().to(device);
           auto ensemble = std::make_shared<merge::BtmEnsemble<CausalLM>>(members);
           return [ensemble, device](const torch::Tensor& ids) {
             return ensemble->forward(ids.to(device));
           };
         }});
  g.add({.name = kUpcycleStage,
         .phase = "finetune",
         .inputs = {"seed"},
         .after = {"expert-{domain}"},
         .worker = "upcycle",
         .ranks = Ranks::stage,
         .baseline = true,
         .arm = Arm{"sparse upcycling", "MoE of seed copies, finetuned at BTX's compute", true},
         .keys = with(budget_keys(), {"load_balance_alpha", "load_balance_form"}),
         .run =
             [](const Recipe& r, const StageInstance& i, dist::Communicator& ranks) {
               (void)upcycle_baseline(r.run, load_stage_model(r.run, "seed"),
                                      r.upcycle_moe(r.moe.router.name), r.mixture_sampler(300),
                                      r.finetune_stage, r.btx_budget_flops(), r.seed + 17,
                                      r.options(i.stage, ranks));
             },
         .load = load_arm_model});
  g.add({.name = kMixStage,
         .phase = "mix",
         .inputs = {"expert-{domain}", "seed"},
         .arm = Arm{"BTX at step 0", "BTX's mix before its MoE stage", true, "expert {domain}"},
         .keys = {"router", "router_options", "load_balance_alpha", "load_balance_form",
                  "seed_as_expert", "seed_as_shared_expert", "router_init", "experts_from",
                  "split_chunks", "averaging", "averaging_density", "averaging_lambda",
                  "curve_every", "curve_windows", "log_every", "checkpoint_every",
                  "ranks_per_stage", "dist_timeout_s"},
         .run =
             [](const Recipe& r, const StageInstance&, dist::Communicator&) {
               (void)mix_stage(r.run, load_experts(r.run), load_stage_model(r.run, "seed"),
                               mix_options(r));
             },
         .load =
             [](const Recipe& r, const StageInstance&) {
               return load_stage_model(r.run, kMixStage, r.moe_for(r.moe.router.name));
             }});
  g.add({.name = "btx-{router}",
         .phase = "finetune",
         .each = Each::router,
         .inputs = {kMixStage},
         .worker = "finetune",
         .ranks = Ranks::stage,
         .arm = Arm{"BTX {router}", "BTX: experts mixed, MoE-finetuned with {router}", true},
         .keys = {"finetune_stage", "moe_share", "freeze_experts"},
         .run =
             [](const Recipe& r, const StageInstance& i, dist::Communicator& ranks) {
               auto options = r.options(i.stage, ranks);
               options.freeze_experts = r.freeze_experts;
               (void)finetune_mix(r.run, r.moe_for(i.router), r.mixture_sampler(100),
                                  r.finetune_stage, options);
             },
         .load = load_arm_model});
  add_ceiling_arm(g);
  add_anchored_arms(g);
  add_attention_arms(g);
  g.report_keys({"baselines", "eval_windows", "math_problems", "extra_routers", "sample_prompts",
                 "sample_tokens"});
  return g;
}

}  // namespace detail

// The BTX recipe's graph, shared by every part of this process.
inline BtxGraph& btx_graph() {
  static BtxGraph graph = detail::seeded_btx_graph();
  return graph;
}

}  // namespace recipe
BTX_NAMESPACE_END
}  // namespace btx
