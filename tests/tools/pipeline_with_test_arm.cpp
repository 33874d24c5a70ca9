// SPDX-License-Identifier: MIT
// btx-pipeline with one more arm, declared here and nowhere else: dense continued training
// at half BTX's compute ("dense half"). tests/python/test_pipeline.py's TestOnlyArm runs it
// and finds the arm trained by a worker of its own, scored in the report and counted at its
// compute, without an edit to the pipeline, its workers, evaluation or report.
#include <btx/recipe/baselines.hpp>
#include <btx/recipe/btx_stages.hpp>

#include "../../tools/btx-pipeline/pipeline_main.hpp"

int main(int argc, char** argv) {
  namespace recipe = btx::recipe;
  recipe::btx_graph().add(
      {.name = "dense-half",
       .phase = "finetune",
       .inputs = {"seed"},
       .after = {"expert-{domain}"},
       .worker = "dense-half",
       .ranks = recipe::Ranks::stage,
       .baseline = true,
       .arm = recipe::Arm{"dense half", "dense continued training at half BTX's compute"},
       .keys = {"moe_share", "finetune_stage", "router", "router_options", "seed_as_expert",
                "experts_from", "split_chunks", "ranks_per_stage"},
       .run = [](const recipe::Recipe& r, const recipe::StageInstance& i,
                 btx::dist::Communicator& ranks) {
         (void)recipe::dense_baseline(r.run, recipe::load_stage_model(r.run, "seed"),
                                      r.mixture_sampler(400), r.expert_stage,
                                      r.btx_budget_flops() / 2, r.options(i.stage, ranks), i.stage);
       }});
  return btx::pipeline::main(argc, argv);
}
