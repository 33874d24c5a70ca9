// SPDX-License-Identifier: MIT
// The pieces a tool is declared from: option schemas, the merge registries and the recipe's
// stage graph. Keys are read, checked and refused naming them; a merge choice's options go
// to the entry that takes them, with one default per entry; the graph's upstream, compute
// and sweep-sharing follow from the declarations; a pipeline config's router is resolved
// once, from its YAML key to the built layers.
#include <doctest/doctest.h>

#include <set>
#include <string>
#include <vector>

#include <btx/core/schema.hpp>
#include <btx/merge/merge_choice.hpp>
#include <btx/merge/mixers.hpp>
#include <btx/models/llama/compat.hpp>
#include <btx/recipe/btx_stages.hpp>

#include "../../tools/btx-pipeline/config.hpp"
#include "../test_support.hpp"

namespace bm = btx::merge;
namespace recipe = btx::recipe;

namespace {

struct Small {
  int64_t n = 3;
  double rate = 0.5;
  std::vector<std::string> names;
};

btx::schema::Schema<Small> small_schema() {
  return btx::schema::Schema<Small>("small")
      .key("n", &Small::n, "a count", btx::schema::positive<int64_t>())
      .key("rate", &Small::rate, "a rate", btx::schema::in_range(0.0, 1.0, false))
      .key("names", &Small::names, "names");
}

std::string what_refused(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "no exception";
}

}  // namespace

TEST_CASE("schema: keys are read over a base, checked, written back and refused naming them") {
  const auto s = small_schema();
  const auto got = s.read(nlohmann::json::parse(R"({"n": 1e3, "names": ["a"]})"), {}, "sec");
  CHECK(got.n == 1000);
  CHECK(got.rate == 0.5);  // the base's
  CHECK(s.read(s.write(got)).names == std::vector<std::string>{"a"});
  CHECK(what_refused([&] {
          (void)s.read({{"m", 1}}, {}, "sec");
        }) == "config: unknown key 'm' in sec (known: n, rate, names)");
  CHECK(what_refused([&] {
          (void)s.read({{"n", 0}}, {}, "sec");
        }) == "config: sec.n must be > 0, got 0");
  CHECK(what_refused([&] {
          (void)s.read({{"n", 2.5}});
        }).find("n must be a whole number") != std::string::npos);
  CHECK(what_refused([&] {
          (void)s.read({{"rate", 1}});
        }) == "config: rate must be in [0, 1), got 1");
  CHECK(what_refused([&] {
          (void)s.read({{"names", "a"}});
        }) == "config: names must be a list, got \"a\"");
  CHECK(s.help().find("  n (3): a count") != std::string::npos);
}

TEST_CASE("merge registries: names, options and their defaults come from one registration each") {
  const auto c = bm::read_merge_choice({{"averaging", "ties"}});
  CHECK(c.method.name() == "btx");
  CHECK(c.router_init.name() == "normal");
  CHECK(c.averaging.options.at("density") == 0.2);  // TIES' default, wherever it is read
  CHECK(bm::read_merge_choice({{"averaging", "dare_ties"}}).averaging.options.at("density") == 0.5);
  CHECK(bm::read_merge_choice({{"router_init", "random"}}).router_init.name() == "normal");
  // An option goes to the entry that takes it; given for another, it is refused naming the
  // entries that would take it (under the tool's own key names).
  bm::MergeKeys keys;
  keys.method = "experts_from";
  keys.options = {{"density", "averaging_density"}, {"chunks", "split_chunks"}};
  CHECK(what_refused([&] {
          (void)bm::read_merge_choice({{"averaging_density", 0.3}}, keys);
        }).find("averaging_density applies to averaging ties, dare_linear, dare_ties only") !=
        std::string::npos);
  CHECK(what_refused([&] {
          (void)bm::read_merge_choice({{"experts_from", "split"}, {"split_chunks", 0}}, keys);
        }) == "config: split_chunks (experts_from split) must be > 0, got 0");
  CHECK(what_refused([&] {
          (void)bm::read_merge_choice({{"experts_from", "mystery"}}, keys);
        }).find("merge method 'mystery' is not one of btx, split, blend, upcycle") !=
        std::string::npos);
  CHECK(what_refused([&] {
          (void)bm::read_merge_choice({{"router_init", "hidden"}, {"method", "blend"}});
        }).find("does not make each expert from one source") != std::string::npos);
}

TEST_CASE("merge registries: plan_merge plans a registered method as its mixer does") {
  std::vector<bm::StateDictSource> sources;
  for (int j = 0; j < 4; ++j) {  // four: blending cuts F=64 into one chunk per source
    torch::manual_seed(60 + j);
    btx::LlamaForCausalLM m(btx::test::tiny_config());
    sources.push_back(bm::source_of(m, "e" + std::to_string(j)));
  }
  bm::MergeContext ctx;
  ctx.seed = 4;
  for (const auto& [keys, mixer] : std::vector<std::pair<nlohmann::json, bm::Plan>>{
           {{{"method", "btx"}}, bm::BtxMix<>{{}, {0.02, 4}, 2}.plan(sources)},
           {{{"method", "blend"}}, bm::BlendMix<>{{}, {0.02, 4}, 2}.plan(sources)}}) {
    CAPTURE(keys.dump());
    const auto ours =
        bm::materialize(bm::plan_merge(bm::read_merge_choice(keys), sources,
                                       static_cast<const bm::StateDictSource*>(nullptr), ctx));
    const auto theirs = bm::materialize(mixer);
    REQUIRE(ours.size() == theirs.size());
    for (const auto& [name, t] : theirs) CHECK(ours.at(name).equal(t));
  }
}

TEST_CASE("stage graph: what each BTX stage is made from, and what a sweep may share") {
  const auto& g = recipe::btx_graph();
  const std::vector<std::string> domains = {"math", "code"}, routers = {"top2", "soft"};
  const auto instance = [&](const std::string& stage) {
    for (const auto& [d, i] : g.instances(domains, routers, true)) {
      if (i.stage == stage) return i;
    }
    FAIL("no instance " << stage);
    return recipe::StageInstance{};
  };
  const auto up = [&](const std::string& stage) {
    const auto v = g.upstream(instance(stage), domains, routers);
    return std::set<std::string>(v.begin(), v.end());
  };
  CHECK(up("btx-soft") ==
        std::set<std::string>{"mix", "expert-math", "expert-code", "branch", "seed"});
  CHECK(up("dense") == std::set<std::string>{"seed"});  // waits for the experts, not made of them
  CHECK(up("expert-code") == std::set<std::string>{"branch", "seed"});
  CHECK(up("btm-ensemble") ==
        std::set<std::string>{"expert-math", "expert-code", "branch", "seed"});
  // Sweep sharing: a key reaches a stage only from upstream; keys no stage owns reach all.
  const nlohmann::json base = {{"seed_stage", 1},  {"expert_stage", 1}, {"finetune_stage", 1},
                               {"router", "top2"}, {"eval_windows", 8}, {"seq_len", 64}};
  auto with = [&](const char* key, nlohmann::json v) {
    auto j = base;
    j[key] = std::move(v);
    return j;
  };
  const auto same = [&](const nlohmann::json& a, const std::string& decl) {
    return g.upstream_config(a, decl) == g.upstream_config(base, decl);
  };
  CHECK(same(with("finetune_stage", 2), "expert-{domain}"));
  CHECK_FALSE(same(with("finetune_stage", 2), "btx-{router}"));
  CHECK_FALSE(same(with("finetune_stage", 2), "dense"));  // it sets BTX's budget
  CHECK(same(with("expert_stage", 2), "seed"));
  CHECK_FALSE(same(with("expert_stage", 2), "mix"));
  CHECK(same(with("router", "soft"), "upcycle") == false);  // the budget's router
  CHECK(same(with("eval_windows", 9), "btx-{router}"));     // the report's alone
  CHECK_FALSE(same(with("seq_len", 32), "seed"));           // owned by none: reaches all
  // Declarations are checked as they are added.
  recipe::BtxGraph copy = g;
  CHECK(what_refused([&] { copy.add({.name = "x", .phase = "later"}); }).find("phase 'later'") !=
        std::string::npos);
  CHECK(what_refused([&] {
          copy.add({.name = "x", .phase = "mix", .inputs = {"nothing"}});
        }).find("needs 'nothing'") != std::string::npos);
  CHECK(what_refused([&] { copy.add({.name = "mix", .phase = "mix"}); }).find("declared twice") !=
        std::string::npos);
}

TEST_CASE("pipeline config: the router is resolved once, from its YAML key to the built layers") {
  const auto& registry = btx::router_registry();
  auto base = btx::pipeline::quick_config();
  base.tokenizer = "bytes";
  const uint64_t before = registry.lookups();
  const auto c = btx::pipeline::apply_config(
      base, {{"router", "switch"}, {"router_options", {{"capacity_factor", 2.0}}}});
  // The key `router` resolves the name; router_options is read by the same registration.
  CHECK(registry.lookups() == before + 1);
  CHECK(c.router.options == nlohmann::json({{"capacity_factor", 2.0}}));
  btx::MoEConfig moe{.num_experts = 4, .router = c.router};
  const auto spec = recipe::moe_spec(btx::LlamaFamily::spec(btx::test::tiny_config()), moe);
  const auto model = btx::make_model(spec);
  CHECK(btx::moe_layers(model.module()).size() == 2);
  CHECK(recipe::flops_per_token(spec, 16) > 0);
  CHECK(registry.lookups() == before + 1);
  // The options travel in config.json and come back the same.
  const auto again = btx::pipeline::apply_config(base, btx::pipeline::to_json(c));
  CHECK(again.router.options == c.router.options);
  CHECK(what_refused([] {
          (void)btx::pipeline::apply_config(btx::pipeline::quick_config(),
                                            {{"router_options", {{"capacity", 2}}}});
        }).find("unknown key 'capacity'") != std::string::npos);
}

TEST_CASE("stage graph: optional arms run only when selected, each with its own options") {
  const auto& g = recipe::btx_graph();
  const std::vector<std::string> domains = {"math", "code"}, routers = {"top2"};
  const auto stages = [&](const recipe::Selection& s) {
    std::set<std::string> out;
    for (const auto& [d, i] : g.instances(domains, routers, s)) out.insert(i.stage);
    return out;
  };
  const auto plain = stages(true);
  CHECK(plain.count("mix"));
  CHECK_FALSE(plain.count("flexolmo"));
  CHECK_FALSE(plain.count("bam-mix"));
  const auto with = stages(recipe::Selection(true, {"flexolmo", "bam", "ceiling"}));
  for (const char* s : {"anchored-expert-math", "anchored-expert-code", "flexolmo",
                        "flexolmo-tuned", "bam-mix", "bam", "dense-experts"}) {
    CAPTURE(s);
    CHECK(with.count(s));
  }
  const auto up = g.upstream(recipe::StageInstance{"flexolmo-tuned", "flexolmo-tuned", "", "", 0},
                             domains, routers);
  CHECK(std::set<std::string>(up.begin(), up.end()) ==
        std::set<std::string>{"flexolmo", "anchored-expert-code", "seed", "anchored-expert-math"});
  // Options are the arm's own: unknown keys and bad values refused naming them.
  const auto flex = g.option("flexolmo");
  CHECK(flex.options.read(nlohmann::json::object(), "arms.flexolmo").at("trains") == "ffn");
  CHECK_THROWS_WITH_AS(flex.options.read({{"trains", "everything"}}, "arms.flexolmo"),
                       doctest::Contains("trains"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(g.option("nope"), doctest::Contains("flexolmo"), std::invalid_argument);
  // An arm's stage must name a declared option.
  recipe::BtxGraph copy = g;
  CHECK_THROWS_AS(copy.add({.name = "x", .phase = "mix", .option = "undeclared"}),
                  std::invalid_argument);
}
