// SPDX-License-Identifier: MIT
// Branch (independent deep copies with lineage metadata) and expert surgery on MoE state
// dicts (adding and removing experts).
#include <doctest/doctest.h>

#include <btx/merge/branch.hpp>
#include <btx/merge/expert_surgery.hpp>
#include <btx/merge/mixers.hpp>
#include <btx/models/llama/compat.hpp>

#include "../test_support.hpp"

using btx::test::max_abs_diff;
using btx::test::tiny_config;
namespace bm = btx::merge;

TEST_CASE("merge branch: experts are independent deep copies of the seed") {
  torch::manual_seed(0);
  btx::LlamaForCausalLM seed(tiny_config());
  const auto seed_hash = bm::weights_fingerprint(*seed);
  auto experts = bm::branch(seed, {"math", "code", "wiki"});
  REQUIRE(experts.size() == 3);
  auto ids = torch::randint(0, 64, {1, 6});
  for (auto& e : experts) CHECK(max_abs_diff(e.model->forward(ids), seed->forward(ids)) == 0.0);
  {
    torch::NoGradGuard no_grad;
    experts[1].model->named_parameters()["model.norm.weight"].add_(1.0);
  }
  CHECK(bm::weights_fingerprint(*seed) == seed_hash);
  CHECK(bm::weights_fingerprint(*experts[0].model) == seed_hash);
  CHECK(bm::weights_fingerprint(*experts[1].model) != seed_hash);
  CHECK(experts[1].model->named_parameters()["model.norm.weight"].data_ptr() !=
        seed->named_parameters()["model.norm.weight"].data_ptr());
  CHECK(experts[2].info.name == "wiki");
  CHECK(experts[2].info.branch_index == 2);
  CHECK(experts[2].info.parent == "seed");
  CHECK(experts[2].info.seed_hash == seed_hash);
  CHECK_THROWS_AS(bm::branch(seed, {"math", "math"}), std::invalid_argument);
  CHECK_THROWS_AS(bm::branch(seed, {}), std::invalid_argument);
}

TEST_CASE("merge branch: ExpertInfo survives a JSON round trip and bad JSON is named") {
  bm::ExpertInfo info{"code", "code", "seed", "0123456789abcdef", 1, 5000, 20, {{"lr", 1e-4}}};
  nlohmann::json j = info;
  auto back = nlohmann::json::parse(j.dump()).get<bm::ExpertInfo>();
  CHECK(back == info);
  CHECK_THROWS_WITH_AS(nlohmann::json({{"name", "x"}}).get<bm::ExpertInfo>(),
                       doctest::Contains("missing field 'domain'"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(nlohmann::json({{"name", "x"}, {"domain", "y"}, {"tokens_trained", "many"}})
                           .get<bm::ExpertInfo>(),
                       doctest::Contains("'tokens_trained' has the wrong type"),
                       std::invalid_argument);
}

TEST_CASE("merge branch: branch, diverge, then mix the seed and the experts") {
  torch::manual_seed(1);
  btx::LlamaForCausalLM seed(tiny_config());
  auto branches = bm::branch(seed, {"math", "code", "wiki"});
  std::vector<btx::LlamaForCausalLM> models = {seed};
  std::vector<std::string> labels = {"seed"};
  std::vector<bm::ExpertInfo> infos;
  for (auto& b : branches) {  // stand-in for training: each expert drifts its own way
    torch::NoGradGuard no_grad;
    for (auto& p : b.model->parameters()) p.add_(torch::randn_like(p) * 0.01);
    b.info.tokens_trained = 1000 * (b.info.branch_index + 1);
    models.push_back(b.model);
    labels.push_back(b.info.name);
    infos.push_back(b.info);
  }
  auto srcs = bm::sources_of(models, labels);
  auto plan = bm::BtxMix<>{}.plan(srcs);
  auto moe = bm::materialize(plan);
  CHECK(plan.manifest().sources == labels);
  const std::string down = "model.layers.1.mlp.down_proj.weight";
  for (int64_t e = 0; e < 4; ++e) {
    CHECK(torch::equal(moe.at(bm::experts_name(1, "down_proj"))[e], srcs[size_t(e)].load(down)));
  }
  const std::string q = "model.layers.0.self_attn.q_proj.weight";
  auto mean = (srcs[0].load(q) + srcs[1].load(q) + srcs[2].load(q) + srcs[3].load(q)) / 4;
  CHECK(max_abs_diff(moe.at(q), mean) < 1e-7);

  // BTM-style weighting of the domain experts by tokens trained: 1:2:3.
  std::vector<bm::StateDictSource> domains(srcs.begin() + 1, srcs.end());
  auto weighted = bm::merge(bm::BtmMerge<bm::WeightedMean>{bm::weighted_by_tokens(infos)}, domains);
  auto expect = (srcs[1].load(down) + 2 * srcs[2].load(down) + 3 * srcs[3].load(down)) / 6;
  CHECK(max_abs_diff(weighted.at(down), expect) < 1e-7);
}

namespace {
std::vector<bm::StateDictSource> three_sources() {
  std::vector<bm::StateDictSource> out;
  const std::vector<std::string> names = {"e0", "e1", "e2"};
  for (int j = 0; j < 3; ++j) {
    torch::manual_seed(100 + j);
    btx::LlamaForCausalLM m(tiny_config());
    out.push_back(bm::source_of(m, names[size_t(j)]));
  }
  return out;
}
}  // namespace

TEST_CASE("merge surgery: adding then removing an expert round-trips the MoE") {
  auto srcs = three_sources();
  using Mix = bm::BtxMix<bm::UniformMean, bm::RouterZero>;
  std::vector<bm::StateDictSource> first_two = {srcs[0], srcs[1]};
  auto plan = Mix{}.plan(first_two);
  auto moe2 = bm::materialize(plan);
  auto manifest = plan.manifest();
  auto moe3 = bm::add_expert(moe2, srcs[2].tensors(), bm::RouterZero{}, "e2", &manifest);
  CHECK(manifest.num_experts == 3);
  CHECK(manifest.sources.back() == "e2");
  CHECK(manifest.experts[2] == nlohmann::json::parse(R"([{"source":"e2","rows":[0,64]}])"));
  auto direct = bm::merge(Mix{}, srcs);
  for (int64_t i = 0; i < 2; ++i) {
    for (const auto& p : bm::ffn_projections()) {
      CHECK(torch::equal(moe3.at(bm::experts_name(i, p)), direct.at(bm::experts_name(i, p))));
    }
    CHECK(moe3.at(bm::router_name(i)).sizes() == torch::IntArrayRef({3, 32}));
  }
  CHECK(torch::equal(moe3.at("model.norm.weight"), moe2.at("model.norm.weight")));
  auto back = bm::remove_expert(moe3, 2, &manifest);
  CHECK(manifest.num_experts == 2);
  CHECK(manifest.sources == std::vector<std::string>{"e0", "e1"});
  CHECK(manifest.experts.size() == 2);
  REQUIRE(back.size() == moe2.size());
  for (const auto& [name, t] : moe2) CHECK_MESSAGE(torch::equal(back.at(name), t), name);
  // Removing the middle expert keeps the others in order.
  auto mid = bm::remove_expert(direct, 1);
  CHECK(torch::equal(mid.at(bm::experts_name(1, "up_proj"))[1],
                     direct.at(bm::experts_name(1, "up_proj"))[2]));
}

TEST_CASE("merge surgery: bad indices, shapes and router inputs are rejected") {
  auto srcs = three_sources();
  auto moe = bm::merge(bm::BtxMix<>{}, srcs);
  CHECK_THROWS_WITH_AS(bm::remove_expert(moe, 3), doctest::Contains("out of range"),
                       std::invalid_argument);
  CHECK_THROWS_AS(bm::remove_expert(moe, -1), std::invalid_argument);
  auto one = bm::remove_expert(bm::remove_expert(moe, 0), 0);
  CHECK_THROWS_WITH_AS(bm::remove_expert(one, 0), doctest::Contains("only expert"),
                       std::invalid_argument);
  auto wrong = srcs[0].tensors();
  wrong["model.layers.1.mlp.down_proj.weight"] = torch::zeros({32, 32});
  CHECK_THROWS_WITH_AS(bm::add_expert(moe, wrong, bm::RouterZero{}, "narrow"),
                       doctest::Contains("'model.layers.1.mlp.down_proj.weight' of 'narrow' is "
                                         "[32, 32] but the MoE's experts need [32, 64]"),
                       std::invalid_argument);
  bm::RouterFromHidden two_tables{{torch::ones({2, 32}), torch::ones({2, 32})}};
  CHECK_THROWS_AS(bm::add_expert(moe, srcs[0].tensors(), two_tables), std::invalid_argument);
  auto broken = moe;
  broken[bm::experts_name(1, "gate_proj")] = torch::zeros({2, 64, 32});
  CHECK_THROWS_WITH_AS(bm::inspect_moe(broken),
                       doctest::Contains("'model.layers.1.mlp.experts.gate_proj' is [2, 64, 32]"),
                       std::invalid_argument);
  bm::RouterFromHidden hidden{{torch::randn({2, 32})}};
  auto added = bm::add_expert(moe, srcs[0].tensors(), hidden);
  auto row = added.at(bm::router_name(1))[3];
  CHECK(row.norm().item<double>() == doctest::Approx(1.0));
}
