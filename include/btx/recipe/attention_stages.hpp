// SPDX-License-Identifier: MIT
// BAM's arms in the recipe's graph (`arms: {bam: {router: soft}}`), from BTX's own experts:
//   bam-mix  BTX's MiX, with every source's attention kept as an attention expert of each
//            layer (merge/attention_experts.hpp) instead of averaged (scored: at step 0)
//   bam      its MoE stage on the mixture, at the compute BTX's MoE stage spends
//            (fewer steps: every attention expert runs on every token) (scored)
// The checkpoints are btx's own architecture (models/attention_experts_config.hpp): no
// transformers class has attention experts.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include <btx/core/schema.hpp>
#include <btx/merge/attention_experts.hpp>
#include <btx/recipe/branch.hpp>
#include <btx/recipe/mix.hpp>
#include <btx/recipe/recipe.hpp>
#include <btx/recipe/stage_graph.hpp>
#include <btx/recipe/stage_model.hpp>
#include <btx/recipe/train_stage.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace recipe {

struct AttentionArmOptions {
  std::string router = "soft";  // the attention experts' router (BAM: soft)
};

inline schema::Schema<AttentionArmOptions> attention_arm_schema() {
  using O = AttentionArmOptions;
  return schema::Schema<O>("bam options")
      .key("router", &O::router, "the attention experts' router (soft: all, softmax-weighted)");
}

inline MoEConfig attention_experts_moe(const Recipe& r) {
  const auto o =
      attention_arm_schema().read(r.arm_options("bam"), AttentionArmOptions{}, "arms: bam");
  MoEConfig m;
  m.router = resolve_router(o.router, {});
  m.num_experts = int64_t(r.domains.size()) + (r.seed_as_expert ? 1 : 0);
  m.load_balance_alpha = 0.0;
  m.seed = r.seed;
  return m;
}

// Declares BAM's arms; bam-mix starts from BTX's finished mix.
inline void add_attention_arms(StageGraph<Recipe>& g) {
  g.add_option({.name = "bam",
                .describe = "BAM: BTX with each expert's attention kept as attention experts",
                .options = OptionSchema::of(attention_arm_schema())});
  g.add({.name = "bam-mix",
         .phase = "mix",
         .inputs = {kMixStage, "expert-{domain}", "seed"},
         .option = "bam",
         .arm = Arm{"BAM at step 0", "BTX's mix with attention experts, before its MoE stage", true,
                    "expert {domain}"},
         .keys = {"arms"},
         .run = [](const Recipe& r, const StageInstance& i, dist::Communicator&) {
           if (r.run.skip_if_done(i.stage)) return;
           const CausalLM mixed = load_stage_model(r.run, kMixStage, r.moe_for(r.moe.router.name));
           std::vector<CausalLM> sources;
           for (const auto& e : load_experts(r.run)) sources.push_back(e.model);
           if (r.seed_as_expert) sources.push_back(load_stage_model(r.run, "seed"));
           auto bam = merge::attention_experts_from(mixed, sources, attention_experts_moe(r));
           finish_stage(r.run, i.stage, bam,
                        {{"stage", i.stage},
                         {"attention_experts", int64_t(sources.size())},
                         {"attention_router", bam.spec().attention_moe->router.name},
                         {"flops", 0.0},
                         {"tokens", 0},
                         {"seconds", 0.0}});
         }});
  g.add({.name = "bam",
         .phase = "finetune",
         .inputs = {"bam-mix"},
         .worker = "bam",
         .ranks = Ranks::stage,
         .option = "bam",
         .arm = Arm{"BAM", "BAM: attention and FFN experts, MoE-finetuned at BTX's compute", true},
         .keys = {"finetune_stage", "moe_share"},
         .run =
             [](const Recipe& r, const StageInstance& i, dist::Communicator& ranks) {
               CausalLM model = load_stage_model(r.run, "bam-mix", r.moe_for(r.moe.router.name));
               // What BTX's MoE stage spends, in steps of this model.
               const double budget = planned_flops(
                   r.finetune_stage.steps, r.tokens_per_step(),
                   flops_per_token(r.seed_spec, r.seq_len, r.moe_for(r.moe.router.name)));
               StageBudget b = r.finetune_stage;
               b.steps = steps_for_budget(budget, flops_per_token(model.spec(), r.seq_len),
                                          r.tokens_per_step());
               (void)train_stage(r.run, i.stage, model, r.mixture_sampler(100), b,
                                 r.options(i.stage, ranks));
             },
         .load =
             [](const Recipe& r, const StageInstance& i) {
               return load_stage_model(r.run, i.stage, r.moe_for(r.moe.router.name));
             }});
}

}  // namespace recipe
BTX_NAMESPACE_END
}  // namespace btx
