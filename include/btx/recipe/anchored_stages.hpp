// SPDX-License-Identifier: MIT
// FlexOlmo's arms in the recipe's graph (`arms: {flexolmo: {...}}`), beside BTX at equal
// training FLOPs after the seed:
//   anchored-expert-{domain}  each domain's expert trained as an MoE of two beside the
//                             seed's frozen FFN (merge/anchored.hpp), shared tensors frozen
//   flexolmo                  the experts concatenated: [seed FFN, e_1 .. e_N], router rows
//                             stacked, nothing averaged, no training after (scored)
//   flexolmo-tuned            its routers alone trained on the mixture (scored)
// The experts' steps spend what BTX's experts and MoE stage spend, less the router tuning's
// share; their FLOPs count what the frozen parts really cost (no weight gradients).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include <btx/core/schema.hpp>
#include <btx/merge/anchored.hpp>
#include <btx/merge/anchored_merge.hpp>
#include <btx/merge/router_init.hpp>
#include <btx/models/auto.hpp>
#include <btx/recipe/recipe.hpp>
#include <btx/recipe/stage_graph.hpp>
#include <btx/recipe/train_stage.hpp>
#include <btx/train/flops.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace recipe {

struct AnchoredArmOptions {
  std::string trains = "ffn";  // ffn | ffn+norms | ffn+attention
  int64_t top_k = 2;           // experts per token in the merged model
  double tuning_share = 0.05;  // of BTX's compute, for the router tuning
  double tuning_lr = 1e-3;     // its peak learning rate
  int64_t row_samples = 8;     // windows per domain for the router rows (domain embeddings)
  // The router rows: centered (each domain's mean FFN input minus the mixture's, the
  // anchor's row zero: a domain's expert outscores the anchor on its own text and loses
  // elsewhere) or mean (each domain's mean FFN input, the anchor's the mixture's, as
  // mergekit's hidden gate) or separating (least-norm rows scoring +1 on their domain's
  // mean and -1 on the others', merge::separating_rows), each scaled to unit norm.
  std::string rows = "centered";
};

inline schema::Schema<AnchoredArmOptions> anchored_arm_schema() {
  namespace s = schema;
  using O = AnchoredArmOptions;
  return s::Schema<O>("flexolmo options")
      .key("trains", &O::trains, "what each expert trains besides its FFN and router row",
           s::one_of({"ffn", "ffn+norms", "ffn+attention"}))
      .key("top_k", &O::top_k, "experts per token in the merged model", s::positive<int64_t>())
      .key("tuning_share", &O::tuning_share, "share of BTX's compute for the router tuning",
           s::in_range(0.0, 1.0, /*include_high=*/false))
      .key("tuning_lr", &O::tuning_lr, "the router tuning's peak learning rate",
           s::above_at_most(0.0, 1.0))
      .key("row_samples", &O::row_samples, "windows per domain for the router rows",
           s::positive<int64_t>())
      .key("rows", &O::rows,
           "router rows: centered (domain mean - mixture mean; anchor 0), mean (mergekit's) "
           "or separating (+1 on their domain's mean, -1 on the others'; anchor 0)",
           s::one_of({"centered", "mean", "separating"}));
}

inline AnchoredArmOptions anchored_options(const Recipe& r) {
  return anchored_arm_schema().read(r.arm_options("flexolmo"), AnchoredArmOptions{},
                                    "arms: flexolmo");
}

namespace detail {

// Mean FFN input per layer [L, D] of the seed on the first windows of each domain: the
// domains' router rows, and their mean, the anchor's (the public data is the mixture).
inline std::vector<torch::Tensor> domain_rows(const Recipe& r, const CausalLM& seed,
                                              int64_t windows) {
  std::vector<torch::Tensor> rows;
  for (const auto& d : r.domains) {
    const int64_t n = std::min<int64_t>(windows, d.train_tokens.numel() / r.seq_len);
    auto ids = d.train_tokens.slice(0, 0, n * r.seq_len).view({n, r.seq_len}).to(torch::kInt64);
    rows.push_back(merge::mean_mlp_inputs(seed, {ids}));
  }
  return rows;
}

// Domain `index`'s anchored expert of the seed, its router rows as `o.rows` says.
inline CausalLM anchored_expert_of(const Recipe& r, const CausalLM& seed,
                                   const AnchoredArmOptions& o, size_t index) {
  const auto rows = domain_rows(r, seed, o.row_samples);
  const auto mixture = torch::stack(rows).mean(0);
  if (o.rows == "mean") return merge::anchored_expert(seed, mixture, rows.at(index));
  const auto domain_row = o.rows == "separating" ? merge::separating_rows(rows).at(index)
                                                 : rows.at(index) - mixture;  // centered
  return merge::anchored_expert(seed, torch::zeros_like(mixture), domain_row);
}

// Training FLOPs per token of an anchored expert of the seed.
inline double anchored_flops_per_token(const Recipe& r, merge::AnchoredTrains trains) {
  const auto [per_layer, head] = merge::anchored_trained_params(r.seed_spec.shape, trains);
  return partly_frozen_training_flops_per_token(r.seed_spec.shape, r.seq_len, {2, 2}, per_layer,
                                                head);
}

// The merged model's MoE: top-k over the anchor and every expert, no load balancing.
inline MoEConfig anchored_merged_moe(const Recipe& r, const AnchoredArmOptions& o) {
  MoEConfig m = r.moe;
  m.num_experts = int64_t(r.domains.size()) + 1;
  m.router = resolve_router("topk:" + std::to_string(o.top_k), {{"renormalize", true}});
  m.load_balance_alpha = 0.0;
  m.expert_size = 0;
  return m;
}

// Training FLOPs per token of router tuning: every weight frozen but the routers'.
inline double router_tuning_flops_per_token(const Recipe& r, const MoEConfig& moe) {
  const double D = double(r.seed_spec.shape.hidden_size);
  return partly_frozen_training_flops_per_token(r.seed_spec.shape, r.seq_len, compute_shape(moe),
                                                D * double(moe.num_experts), 0.0);
}

// The merged model's experts in router order: the seed's FFN (the anchor), then each domain's.
inline std::vector<std::string> anchored_expert_names(const Recipe& r) {
  std::vector<std::string> names = {"seed (anchor)"};
  for (const auto& d : r.domain_names()) names.push_back(d);
  return names;
}

}  // namespace detail

inline void add_anchored_arms(StageGraph<Recipe>& g) {
  g.add_option({.name = "flexolmo",
                .describe = "FlexOlmo: experts trained beside the seed's frozen FFN, "
                            "concatenated (and with routers tuned)",
                .options = OptionSchema::of(anchored_arm_schema())});
  g.add({.name = "anchored-expert-{domain}",
         .phase = "experts",
         .each = Each::domain,
         .inputs = {"seed"},
         .worker = "anchored-expert",
         .ranks = Ranks::expert,
         .option = "flexolmo",
         .arm = Arm{"FlexOlmo expert {domain}", "the {domain} expert beside the frozen seed FFN"},
         .keys = {"arms"},
         .run =
             [](const Recipe& r, const StageInstance& i, dist::Communicator& ranks) {
               const auto o = anchored_options(r);
               const auto trains = merge::parse_anchored_trains(o.trains);
               const CausalLM seed = load_stage_model(r.run, "seed");
               CausalLM expert = detail::anchored_expert_of(r, seed, o, i.index);
               const auto frozen = merge::freeze_anchored(expert, trains);
               StageOptions options = r.options(i.stage, ranks);
               options.hooks = frozen.applied_to(options.hooks);
               options.flops_per_token = detail::anchored_flops_per_token(r, trains);
               options.record["trains"] = o.trains;
               const double budget = r.btx_planned_budget_flops() * (1.0 - o.tuning_share);
               StageBudget b = r.expert_stage;
               b.steps = steps_for_budget(budget / double(r.domains.size()),
                                          options.flops_per_token, r.tokens_per_step());
               (void)train_stage(r.run, i.stage, expert, r.domain_sampler(i.index, 1 + i.index), b,
                                 options);
             },
         .group_worker = "anchored-experts",
         .expert_names =
             [](const Recipe&) {
               return std::vector<std::string>{"seed (anchor)", "expert"};
             }});
  g.add({.name = "flexolmo",
         .phase = "mix",
         .inputs = {"anchored-expert-{domain}"},
         .option = "flexolmo",
         .arm = Arm{"FlexOlmo", "anchored experts concatenated, nothing averaged or trained after",
                    true, "FlexOlmo expert {domain}"},
         .run =
             [](const Recipe& r, const StageInstance& i, dist::Communicator&) {
               if (r.run.skip_if_done(i.stage)) return;
               const auto o = anchored_options(r);
               std::vector<CausalLM> experts;
               for (const auto& d : r.domain_names()) {
                 experts.push_back(load_stage_model(r.run, "anchored-expert-" + d));
               }
               const auto shared =
                   merge::parse_anchored_trains(o.trains) == merge::AnchoredTrains::ffn_attention
                       ? merge::SharedTensors::average
                       : merge::SharedTensors::must_match;
               auto merged =
                   merge::concat_anchored(experts, detail::anchored_merged_moe(r, o), shared);
               finish_stage(r.run, i.stage, merged,
                            {{"stage", i.stage},
                             {"experts", nlohmann::json(r.domain_names())},
                             {"anchor", "seed"},
                             {"flops", 0.0},
                             {"tokens", 0},
                             {"seconds", 0.0}});
             },
         .expert_names = detail::anchored_expert_names});
  g.add({.name = "flexolmo-tuned",
         .phase = "finetune",
         .inputs = {"flexolmo"},
         .worker = "anchored-tune",
         .ranks = Ranks::stage,
         .option = "flexolmo",
         .arm = Arm{"FlexOlmo tuned", "FlexOlmo with its routers trained on the mixture", true},
         .run =
             [](const Recipe& r, const StageInstance& i, dist::Communicator& ranks) {
               const auto o = anchored_options(r);
               const MoEConfig moe = detail::anchored_merged_moe(r, o);
               CausalLM model = load_stage_model(r.run, "flexolmo");
               const SublayerNaming naming = family_of(model.spec()).ffn;
               std::set<std::string> routers;
               for (int64_t l = 0; l < model.spec().shape.num_hidden_layers; ++l) {
                 routers.insert(naming.router_name(l));
               }
               for (auto& p : model.named_parameters()) {
                 p.value().set_requires_grad(routers.count(p.key()) > 0);
               }
               StageOptions options = r.options(i.stage, ranks);
               options.flops_per_token = detail::router_tuning_flops_per_token(r, moe);
               options.record["trains"] = "routers";
               StageBudget b{0, o.tuning_lr, r.finetune_stage.warmup};
               b.steps = steps_for_budget(r.btx_planned_budget_flops() * o.tuning_share,
                                          options.flops_per_token, r.tokens_per_step());
               (void)train_stage(r.run, i.stage, model, r.mixture_sampler(400), b, options);
             },
         .expert_names = detail::anchored_expert_names});
}

}  // namespace recipe
BTX_NAMESPACE_END
}  // namespace btx
