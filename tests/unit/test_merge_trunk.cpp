// SPDX-License-Identifier: MIT
// Tensor-aware trunk merging (task arithmetic, TIES, DARE) on hand-computed cases, and
// the mixers planning with a base (the seed the experts branched from).
#include <doctest/doctest.h>

#include <btx/merge/any_averaging.hpp>
#include <btx/merge/averaging_registry.hpp>
#include <btx/merge/mixers.hpp>
#include <btx/merge/trunk_merging.hpp>
#include <btx/models/llama/compat.hpp>

#include "../test_support.hpp"

using btx::test::max_abs_diff;
using btx::test::tiny_config;
namespace bm = btx::merge;

namespace {
torch::Tensor vec(std::vector<float> v) {
  return torch::tensor(v);
}
}  // namespace

TEST_CASE("trunk merging: task arithmetic adds the weighted task vectors to the base") {
  const auto base = vec({1, 1, 1});
  const std::vector<torch::Tensor> ts = {vec({2, 0, 1}), vec({4, 1, 1})};  // tau: (1,-1,0) (3,0,0)
  const auto half = bm::average(bm::TaskArithmetic{{}, 0.5}, "w", ts, {}, base);
  CHECK(max_abs_diff(half, vec({3, 0.5, 1})) < 1e-6);
  const auto weighted = bm::average(bm::TaskArithmetic{{1.0, -1.0}, 1.0}, "w", ts, {}, base);
  CHECK(max_abs_diff(weighted, vec({-1, 0, 1})) < 1e-6);  // base + tau0 - tau1
  // weights 1/N, lambda 1: the uniform mean, whatever the base.
  const auto mean = bm::average(bm::TaskArithmetic{{0.5, 0.5}, 1.0}, "w", ts, {}, vec({7, -3, 2}));
  CHECK(max_abs_diff(mean, bm::average(bm::UniformMean{}, "w", ts)) < 1e-6);
}

TEST_CASE("trunk merging: TIES trims, elects signs by mass and takes the disjoint mean") {
  const auto base = vec({1, 1, 1, 1});
  // Task vectors (3,-1,2,.5) (-4,-2,1,.1) (2,3,-1,.2). Density .5 keeps two per source:
  // (3,0,2,0) (-4,-2,0,0) (2,3,0,0); summed (1,1,2,0) elects (+,+,+,none); the agreeing
  // values average to (2.5, 3, 2, 0).
  const std::vector<torch::Tensor> ts = {base + vec({3, -1, 2, .5}), base + vec({-4, -2, 1, .1}),
                                         base + vec({2, 3, -1, .2})};
  const auto merged = bm::average(bm::Ties{0.5, 1.0}, "w", ts, {}, base);
  CHECK(max_abs_diff(merged, vec({3.5, 4, 3, 1})) < 1e-6);
  const auto scaled = bm::average(bm::Ties{0.5, 0.5}, "w", ts, {}, base);
  CHECK(max_abs_diff(scaled, vec({2.25, 2.5, 2, 1})) < 1e-6);
  // Density 1 keeps everything. Sums (1, 0, 2, .8): element 1 elects no sign and stays
  // at the base; the others average their agreeing values.
  const auto full = bm::average(bm::Ties{1.0, 1.0}, "w", ts, {}, base);
  CHECK(max_abs_diff(full, base + vec({2.5, 0, 1.5, (.5f + .1f + .2f) / 3})) < 1e-6);
}

TEST_CASE("trunk merging: TIES keeps the source dtype and rejects impossible inputs") {
  const auto base = torch::zeros({6}, torch::kBFloat16);
  const std::vector<torch::Tensor> ts = {torch::ones({6}, torch::kBFloat16),
                                         torch::full({6}, 3.0, torch::kBFloat16)};
  const auto merged = bm::average(bm::Ties{1.0, 1.0}, "w", ts, {}, base);
  CHECK((merged.scalar_type() == torch::kBFloat16));
  CHECK(torch::equal(merged, torch::full({6}, 2.0, torch::kBFloat16)));
  CHECK_THROWS_WITH_AS(bm::average(bm::Ties{}, "model.norm.weight", ts),
                       doctest::Contains("needs a base"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(bm::average(bm::Ties{0.0, 1.0}, "w", ts, {}, base),
                       doctest::Contains("density must be in (0, 1]"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(bm::average(bm::Ties{}, "w", ts, {}, torch::zeros({5}, torch::kBFloat16)),
                       doctest::Contains("in the base"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(bm::average(bm::TaskArithmetic{{1.0}, 1.0}, "w", ts, {}, base),
                       doctest::Contains("one weight per source"), std::invalid_argument);
}

TEST_CASE("trunk merging: DARE drops with probability 1 - density and rescales the rest") {
  torch::manual_seed(3);
  const auto base = torch::randn({4000});
  const auto tau = torch::randn({4000});
  const std::vector<torch::Tensor> one = {base + tau};
  const bm::Dare dare{0.25, 1.0, /*seed=*/11};
  const auto merged = bm::average(dare, "layer.w", one, {}, base);
  const auto got = merged - base;
  const auto kept = got.abs() > 1e-5;
  // Every kept element is tau / density, every other one 0; about a quarter are kept.
  CHECK(max_abs_diff(torch::where(kept, got, torch::zeros_like(got)),
                     torch::where(kept, tau * 4, torch::zeros_like(tau))) < 1e-4);
  const double share = kept.to(torch::kFloat64).mean().item<double>();
  CHECK(share > 0.2);
  CHECK(share < 0.3);
  // Reproducible per (seed, name); another name or seed draws another mask.
  CHECK(torch::equal(merged, bm::average(dare, "layer.w", one, {}, base)));
  CHECK_FALSE(torch::equal(merged, bm::average(dare, "layer.v", one, {}, base)));
  CHECK_FALSE(torch::equal(merged, bm::average(bm::Dare{0.25, 1.0, 12}, "layer.w", one, {}, base)));
  // Density 1 drops nothing: dare_linear is task arithmetic, dare_ties is TIES at density 1.
  const std::vector<torch::Tensor> ts = {base + tau, base - 0.5 * tau};
  CHECK(max_abs_diff(bm::average(bm::Dare{1.0, 0.7}, "w", ts, {}, base),
                     bm::average(bm::TaskArithmetic{{}, 0.7}, "w", ts, {}, base)) < 1e-5);
  CHECK(max_abs_diff(bm::average(bm::Dare{1.0, 1.0, 0, true}, "w", ts, {}, base),
                     bm::average(bm::Ties{1.0, 1.0}, "w", ts, {}, base)) < 1e-6);
  CHECK_THROWS_WITH_AS(bm::average(bm::Dare{0.5, 1.0, 0, true, {1, 2}}, "w", ts, {}, base),
                       doctest::Contains("weights do not apply"), std::invalid_argument);
}

TEST_CASE("trunk merging: mixers plan with the seed as base and record it") {
  torch::manual_seed(21);
  btx::LlamaForCausalLM seed(tiny_config());
  std::vector<bm::StateDictSource> experts;
  std::vector<btx::LlamaForCausalLM> models;
  for (int j = 0; j < 2; ++j) {
    models.emplace_back(tiny_config());
    experts.push_back(bm::source_of(models.back(), "expert" + std::to_string(j)));
  }
  const auto base = bm::source_of(seed, "seed");

  // BTM merge with TIES touches every tensor, the FFNs included.
  CHECK_THROWS_WITH_AS((void)bm::BtmMerge<bm::Ties>{}.plan(experts),
                       doctest::Contains("needs a base"), std::invalid_argument);
  const auto plan = bm::BtmMerge<bm::Ties>{{0.5, 1.0}}.plan(experts, &base);
  CHECK(plan.manifest().base == "seed");
  CHECK(plan.manifest().weights.empty());
  CHECK(plan.manifest().averaging["name"] == "ties");
  const std::string w = "model.layers.0.mlp.up_proj.weight";
  const auto expect = bm::average(bm::Ties{0.5, 1.0}, w, {experts[0].load(w), experts[1].load(w)},
                                  {}, base.load(w));
  CHECK(torch::equal(plan.compute(w), expect));

  // BTX mix: experts stay each source's FFN; task arithmetic with weights 1/N is the mean.
  const auto ta = bm::BtxMix<bm::TaskArithmetic>{{{0.5, 0.5}, 1.0}}.plan(experts, &base);
  const auto mean = bm::BtxMix<>{}.plan(experts);
  for (const auto& s : mean.outputs()) {
    if (s.name.find(".mlp.gate.") != std::string::npos) continue;  // routers: random init
    CHECK_MESSAGE(max_abs_diff(ta.compute(s.name), mean.compute(s.name)) < 1e-5, s.name);
  }
  // A base that is not the experts' architecture is refused before anything is read.
  auto other_config = tiny_config();
  other_config.intermediate_size *= 2;
  btx::LlamaForCausalLM other(other_config);
  const auto wrong = bm::source_of(other, "wrong-seed");
  CHECK_THROWS_WITH_AS((void)bm::BtxMix<bm::Ties>{}.plan(experts, &wrong),
                       doctest::Contains("wrong-seed"), std::invalid_argument);
}

TEST_CASE("trunk merging: AnyAveraging holds any policy and rebuilds from its JSON") {
  const auto base = vec({1, 1, 1, 1});
  const std::vector<torch::Tensor> ts = {base + vec({3, -1, 2, .5}), base + vec({-4, -2, 1, .1}),
                                         base + vec({2, 3, -1, .2})};
  const bm::AnyAveraging ties = bm::Ties{0.5, 1.0};
  CHECK(ties.name() == "ties");
  CHECK(torch::equal(bm::average(ties, "w", ts, {}, base),
                     bm::average(bm::Ties{0.5, 1.0}, "w", ts, {}, base)));
  // A linear policy underneath still reports its weights (for the manifest).
  const bm::AnyAveraging weighted = bm::WeightedMean{{1, 1, 2}};
  const std::vector<double> quarter_quarter_half = {0.25, 0.25, 0.5};
  CHECK(bm::plan_averaging(weighted, 3, false) == quarter_quarter_half);
  CHECK(max_abs_diff(bm::average(weighted, "w", ts),
                     bm::average(bm::WeightedMean{{1, 1, 2}}, "w", ts)) < 1e-7);
  for (const bm::AnyAveraging& a :
       {bm::AnyAveraging(bm::UniformMean{}), bm::AnyAveraging(bm::KeepOne{2}),
        bm::AnyAveraging(bm::TaskArithmetic{{0.2, 0.3, 0.5}, 0.9}), ties,
        bm::AnyAveraging(bm::Dare{0.7, 1.1, 5, false, {1, 2, 3}}),
        bm::AnyAveraging(bm::Dare{0.7, 1.1, 5, true})}) {
    const auto again = bm::averaging_from_json(a.to_json());
    CHECK(again.to_json() == a.to_json());
    CHECK(torch::equal(bm::average(again, "w", ts, {}, base), bm::average(a, "w", ts, {}, base)));
  }
  CHECK_THROWS_WITH_AS(bm::averaging_from_json({{"name", "median"}}),
                       doctest::Contains("unknown averaging 'median'"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(bm::averaging_from_json({{"name", "weighted_mean"}}),
                       doctest::Contains("weighted_mean"), std::invalid_argument);
  // The mixers take it like any policy; the manifest records what it holds.
  torch::manual_seed(4);
  btx::LlamaForCausalLM a(tiny_config()), b(tiny_config());
  const std::vector<bm::StateDictSource> srcs = {bm::source_of(a, "a"), bm::source_of(b, "b")};
  const auto plan = bm::BtmMerge<bm::AnyAveraging>{bm::WeightedMean{{1, 3}}}.plan(srcs);
  const std::vector<double> quarter_three_quarters = {0.25, 0.75};
  CHECK(plan.manifest().weights == quarter_three_quarters);
  CHECK(plan.manifest().averaging["name"] == "weighted_mean");
}
