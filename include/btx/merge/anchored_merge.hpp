// SPDX-License-Identifier: MIT
// Merging anchored experts (merge/anchored.hpp): concatenation, which averages nothing, and
// the edits of its result, each checking that every part was trained against one frozen
// anchor (the anchor's FFN and router row, and every shared tensor, equal in all):
//   concat_anchored(experts, moe)   experts [anchor, e_1 .. e_N], router rows stacked
//   remove_experts(moe, {j})        opt-out: expert j and its router row dropped
//   add_anchored(moe, expert)       opt-in: an expert trained later appended
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/core/causal_lm.hpp>
#include <btx/core/moe_config.hpp>
#include <btx/merge/anchored.hpp>
#include <btx/models/auto.hpp>
#include <btx/moe/router_registry.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

// What to do when the experts' shared tensors differ (they were not all frozen).
enum class SharedTensors { must_match, average };

// One MoE of anchored experts (each an MoE of two over one anchor): experts [anchor,
// e_1 .. e_N], router rows [anchor's, each expert's own]. The anchor's FFN and row must be
// the same in every expert, and so must every shared tensor unless `shared` is average;
// a difference is refused naming the tensor and the expert. `moe` routes the result (its
// num_experts is set to N + 1).
inline CausalLM concat_anchored(const std::vector<CausalLM>& experts, MoEConfig moe,
                                SharedTensors shared = SharedTensors::must_match) {
  const std::string where = "btx::merge::concat_anchored";
  if (experts.empty()) throw std::invalid_argument(where + ": no experts");
  for (size_t j = 0; j < experts.size(); ++j) {
    detail::require_moe(experts[j], where);
    if (experts[j].spec().moe->num_experts != 2 ||
        experts[j].spec().family != experts[0].spec().family ||
        experts[j].spec().config != experts[0].spec().config) {
      throw std::invalid_argument(where + ": expert " + std::to_string(j) +
                                  " is not an anchored expert (an MoE of 2) of the same "
                                  "architecture as expert 0");
    }
  }
  const int64_t L = experts[0].spec().shape.num_hidden_layers;
  const SublayerNaming naming = family_of(experts[0].spec()).ffn;
  std::vector<torch::OrderedDict<std::string, torch::Tensor>> params;
  for (const auto& e : experts) params.push_back(e.named_parameters());
  std::map<std::string, torch::Tensor> values;
  torch::NoGradGuard no_grad;
  for (const auto& p : params[0]) {
    const bool per_expert = detail::per_expert(naming, L, p.key());
    std::vector<torch::Tensor> parts;
    for (size_t j = 0; j < experts.size(); ++j) {
      const auto& t = params[j][p.key()];
      if (j > 0 && !torch::equal(detail::anchor_part(t, per_expert),
                                 detail::anchor_part(p.value(), per_expert))) {
        if (per_expert || shared == SharedTensors::must_match) {
          throw std::invalid_argument(
              where + ": expert " + std::to_string(j) + "'s " +
              (per_expert ? "anchor slot of " : "") + "'" + p.key() +
              "' differs from expert 0's: they were not trained against one frozen anchor" +
              (per_expert ? "" : " (average the shared tensors to merge anyway)"));
        }
      }
      parts.push_back(per_expert ? t.slice(0, 1, 2) : t);
    }
    if (per_expert) {
      parts.insert(parts.begin(), detail::anchor_part(p.value(), true));
      values[p.key()] = torch::cat(parts);
    } else {
      values[p.key()] =
          shared == SharedTensors::average
              ? (torch::stack(parts).to(torch::kFloat32).mean(0)).to(p.value().dtype())
              : p.value();
    }
  }
  ModelSpec spec = experts[0].spec();
  moe.num_experts = int64_t(experts.size()) + 1;
  spec.moe = resolved(moe);
  return detail::built_with(spec, experts[0], values);
}

// Opt-out: the MoE without the experts at `indices` (their FFNs and router rows); the
// rest computes as before wherever its routing picked none of them. At least one expert
// must stay, and top-k must still fit (k <= the experts left).
inline CausalLM remove_experts(const CausalLM& moe_model, const std::vector<int64_t>& indices) {
  const std::string where = "btx::merge::remove_experts";
  detail::require_moe(moe_model, where);
  const int64_t E = moe_model.spec().moe->num_experts;
  std::set<int64_t> drop;
  for (auto i : indices) {
    if (i < 0 || i >= E) {
      throw std::invalid_argument(where + ": expert " + std::to_string(i) + " is not among the " +
                                  std::to_string(E) + " experts");
    }
    if (!drop.insert(i).second) {
      throw std::invalid_argument(where + ": expert " + std::to_string(i) + " is named twice");
    }
  }
  if (drop.empty() || int64_t(drop.size()) >= E) {
    throw std::invalid_argument(where + ": remove at least one expert and keep at least one (" +
                                std::to_string(drop.size()) + " of " + std::to_string(E) + ")");
  }
  std::vector<int64_t> keep;
  for (int64_t e = 0; e < E; ++e) {
    if (!drop.count(e)) keep.push_back(e);
  }
  ModelSpec spec = moe_model.spec();
  spec.moe->num_experts = int64_t(keep.size());
  if (active_experts(*spec.moe) > spec.moe->num_experts) {
    throw std::invalid_argument(where + ": router '" + spec.moe->router.name + "' runs " +
                                std::to_string(active_experts(*moe_model.spec().moe)) +
                                " experts per token, more than the " + std::to_string(keep.size()) +
                                " left");
  }
  const int64_t L = spec.shape.num_hidden_layers;
  const SublayerNaming naming = family_of(spec).ffn;
  const auto index = torch::tensor(keep, torch::kLong);
  std::map<std::string, torch::Tensor> values;
  for (const auto& p : moe_model.named_parameters()) {
    values[p.key()] = detail::per_expert(naming, L, p.key())
                          ? p.value().index_select(0, index.to(p.value().device()))
                          : p.value();
  }
  return detail::built_with(spec, moe_model, values);
}

// Opt-in: `expert` (an anchored expert trained later against the same anchor) added as
// the last expert of `moe_model`, made by concat_anchored (expert 0 its anchor). Its
// anchor slot and every shared tensor must equal the merged model's.
inline CausalLM add_anchored(const CausalLM& moe_model, const CausalLM& expert) {
  const std::string where = "btx::merge::add_anchored";
  detail::require_moe(moe_model, where);
  detail::require_moe(expert, where);
  if (expert.spec().moe->num_experts != 2 || expert.spec().config != moe_model.spec().config ||
      expert.spec().family != moe_model.spec().family) {
    throw std::invalid_argument(where +
                                ": the expert is not an anchored expert (an MoE of 2) "
                                "of the merged model's architecture");
  }
  const int64_t L = moe_model.spec().shape.num_hidden_layers;
  const SublayerNaming naming = family_of(moe_model.spec()).ffn;
  auto adding = expert.named_parameters();
  std::map<std::string, torch::Tensor> values;
  torch::NoGradGuard no_grad;
  for (const auto& p : moe_model.named_parameters()) {
    const bool per_expert = detail::per_expert(naming, L, p.key());
    const auto& t = adding[p.key()];
    const auto mine = detail::anchor_part(p.value(), per_expert);
    if (!torch::equal(mine,
                      detail::anchor_part(t, per_expert).to(mine.device(), mine.scalar_type()))) {
      throw std::invalid_argument(where + ": the expert's " +
                                  (per_expert ? "anchor slot of " : "") + "'" + p.key() +
                                  "' differs from the merged model's: it was not trained against "
                                  "the same frozen anchor");
    }
    values[p.key()] =
        per_expert ? torch::cat({p.value(),
                                 t.slice(0, 1, 2).to(p.value().device(), p.value().scalar_type())})
                   : p.value();
  }
  ModelSpec spec = moe_model.spec();
  spec.moe->num_experts += 1;
  return detail::built_with(spec, moe_model, values);
}

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
