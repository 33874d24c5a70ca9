// SPDX-License-Identifier: MIT
// Experts beyond FFNs: the merge engine makes experts of whichever sublayer a recipe names
// (the FFN by default; attention here), located by the family as the FFN is, and the
// checkpoint name tables carry packed attention experts like FFN ones.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include <btx/merge/mixers.hpp>
#include <btx/merge/moe_plan.hpp>
#include <btx/models/llama/compat.hpp>
#include <btx/models/registry.hpp>

#include "../test_support.hpp"

using btx::test::max_abs_diff;
using btx::test::tiny_config;
namespace bm = btx::merge;

namespace {

std::vector<bm::StateDictSource> two_sources() {
  std::vector<bm::StateDictSource> out;
  for (int j = 0; j < 2; ++j) {
    torch::manual_seed(40 + j);
    btx::LlamaForCausalLM m(tiny_config());
    out.push_back(bm::source_of(m, "expert" + std::to_string(j)));
  }
  return out;
}

bm::MoeRecipe attention_recipe(std::vector<bm::ExpertRecipe> experts) {
  bm::MoeRecipe r;
  r.method = "btx_mix";
  r.experts = std::move(experts);
  r.experts_per_token = 1;
  r.sublayer = btx::SublayerNaming::attention();
  return r;
}

}  // namespace

TEST_CASE("sublayers: attention projections become experts, the FFNs are averaged") {
  const auto sources = two_sources();
  const int64_t W = 32;  // q's width: 4 heads x head dim 8 (k and v: 2 KV heads, 16)
  const auto plan = bm::moe_plan(sources, bm::UniformMean{}, bm::RouterZero{},
                                 attention_recipe({{{{0, 0, W}}}, {{{1, 0, W}}}}));
  const auto out = bm::materialize(plan);
  const auto dense = [&](size_t j, const std::string& name) { return sources[j].load(name); };
  for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
    CAPTURE(proj);
    const auto name = "model.layers.1.self_attn.experts." + std::string(proj);
    const auto expected =
        torch::stack({dense(0, "model.layers.1.self_attn." + std::string(proj) + ".weight"),
                      dense(1, "model.layers.1.self_attn." + std::string(proj) + ".weight")});
    REQUIRE(out.count(name));
    CHECK(out.at(name).equal(expected));
  }
  CHECK(out.at("model.layers.0.self_attn.experts.k_proj").sizes() ==
        torch::IntArrayRef({2, 16, 32}));
  CHECK(out.at("model.layers.0.self_attn.experts.o_proj").sizes() ==
        torch::IntArrayRef({2, 32, 32}));
  CHECK(out.at("model.layers.0.self_attn.gate.weight").sizes() == torch::IntArrayRef({2, 32}));
  // Nothing of the dense attention is left; the FFN is now shared and averaged.
  CHECK_FALSE(out.count("model.layers.0.self_attn.q_proj.weight"));
  const auto mean = (dense(0, "model.layers.0.mlp.up_proj.weight") +
                     dense(1, "model.layers.0.mlp.up_proj.weight")) /
                    2;
  CHECK(max_abs_diff(out.at("model.layers.0.mlp.up_proj.weight"), mean) < 1e-6);
  CHECK(plan.manifest().options.at("sublayer") == "attention");
}

TEST_CASE("sublayers: splitting attention cuts every projection at the same share of heads") {
  const auto sources = two_sources();
  // Two heads of q (rows [0, 16)) take one KV head of k and v (rows [0, 8)), and o's
  // columns [0, 16).
  const auto out = bm::materialize(bm::moe_plan(
      sources, bm::UniformMean{}, bm::RouterZero{},
      attention_recipe({{{{0, 0, 16}}}, {{{0, 16, 32}}}, {{{1, 0, 16}}}, {{{1, 16, 32}}}})));
  const auto q = sources[1].load("model.layers.0.self_attn.q_proj.weight");
  const auto k = sources[1].load("model.layers.0.self_attn.k_proj.weight");
  const auto o = sources[1].load("model.layers.0.self_attn.o_proj.weight");
  CHECK(out.at("model.layers.0.self_attn.experts.q_proj")[3].equal(q.narrow(0, 16, 16)));
  CHECK(out.at("model.layers.0.self_attn.experts.k_proj")[3].equal(k.narrow(0, 8, 8)));
  CHECK(out.at("model.layers.0.self_attn.experts.o_proj")[3].equal(o.narrow(1, 16, 16)));
  // A cut that k's narrower rows cannot follow (9 of q's 32 rows: 4.5 of k's 16) is
  // refused, naming the projection.
  CHECK_THROWS_WITH_AS((void)bm::moe_plan(sources, bm::UniformMean{}, bm::RouterZero{},
                                          attention_recipe({{{{0, 0, 9}}}, {{{0, 9, 18}}}})),
                       doctest::Contains("k_proj"), std::invalid_argument);
}

TEST_CASE("sublayers: families locate attention, and name tables carry its packed experts") {
  for (const char* family : {"llama", "qwen3", "qwen2"}) {
    CAPTURE(family);
    const auto& f = btx::families().get(family);
    CHECK(f.naming(btx::Sublayer::ffn).slot == "mlp");
    REQUIRE(f.attention.has_value());
    CHECK(f.naming(btx::Sublayer::attention).slot == "self_attn");
    const auto names = f.name_map();
    const std::string param = "model.layers.3.self_attn.experts.v_proj";
    CHECK(names.is_packed_experts(param));
    const auto hf = names.to_hf(param, 3);
    REQUIRE(hf.size() == 3);
    CHECK(hf[2] == "model.layers.3.self_attn.experts.2.v_proj.weight");
    const auto slot = f.btx_slot(hf[2]);
    CHECK(slot.param == param);
    CHECK(slot.expert == 2);
  }
  // The FFN's experts keep their architecture's names (Mixtral's w1/w2/w3 for Llama).
  CHECK(
      btx::families().get("llama").name_map().to_hf("model.layers.0.mlp.experts.down_proj", 2)[1] ==
      "model.layers.0.block_sparse_moe.experts.1.w2.weight");
}
