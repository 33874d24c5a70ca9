// SPDX-License-Identifier: MIT
// Dense -> MoE and dense -> dense merges as state-dict transforms: BTX mix, splitting,
// blending, sparse upcycling, BTM merge, router initialisation, validation and plans.
#include <doctest/doctest.h>

#include <set>

#include <btx/merge/mixers.hpp>
#include <btx/models/llama/compat.hpp>

#include "../test_support.hpp"

using btx::test::max_abs_diff;
using btx::test::tiny_config;
namespace bm = btx::merge;

namespace {

std::vector<btx::LlamaForCausalLM> make_models(int n, uint64_t seed) {
  std::vector<btx::LlamaForCausalLM> out;
  for (int j = 0; j < n; ++j) {
    torch::manual_seed(seed + uint64_t(j));
    out.emplace_back(tiny_config());
  }
  return out;
}

std::vector<bm::StateDictSource> sources_of(const std::vector<btx::LlamaForCausalLM>& models) {
  std::vector<bm::StateDictSource> out;
  for (size_t j = 0; j < models.size(); ++j) {
    out.push_back(bm::source_of(models[j], "expert" + std::to_string(j)));
  }
  return out;
}

// SwiGLU by hand: down(silu(gate x) * up x); x [T, H], gate/up [I, H], down [H, I].
torch::Tensor swiglu(const torch::Tensor& x, const torch::Tensor& g, const torch::Tensor& u,
                     const torch::Tensor& d) {
  return torch::matmul(torch::silu(torch::matmul(x, g.t())) * torch::matmul(x, u.t()), d.t());
}

const std::string kGate = "model.layers.1.mlp.experts.gate_proj";
const std::string kUp = "model.layers.1.mlp.experts.up_proj";
const std::string kDown = "model.layers.1.mlp.experts.down_proj";

}  // namespace

TEST_CASE("merge mix: N identical models give the source's tensors and FFN experts") {
  auto one = make_models(1, 7);
  std::vector<bm::StateDictSource> srcs(3, bm::source_of(one[0], "same"));
  auto moe = bm::merge(bm::BtxMix<>{}, srcs);
  auto dense = bm::state_dict_of(one[0]);
  for (const auto& [name, t] : dense) {
    if (bm::is_ffn_tensor(name)) continue;
    CHECK_MESSAGE(torch::equal(moe.at(name), t), name);
  }
  for (int64_t i = 0; i < 2; ++i) {
    for (const auto& p : bm::ffn_projections()) {
      const auto& packed = moe.at(bm::experts_name(i, p));
      CHECK(packed.size(0) == 3);
      for (int64_t e = 0; e < 3; ++e)
        CHECK(torch::equal(packed[e], dense.at(bm::dense_ffn_name(i, p))));
    }
    CHECK(moe.at(bm::router_name(i)).sizes() == torch::IntArrayRef({3, 32}));
  }
  for (const auto& [name, t] : moe) CHECK_MESSAGE(torch::isfinite(t).all().item<bool>(), name);
}

TEST_CASE("merge mix: names follow the MoE contract and experts keep their source's FFN") {
  auto models = make_models(3, 1);
  auto srcs = sources_of(models);
  auto plan = bm::BtxMix<>{}.plan(srcs);
  auto moe = bm::materialize(plan);
  std::set<std::string> names;
  for (const auto& [n, t] : moe) names.insert(n);
  std::set<std::string> expected;
  for (const auto& [n, t] : srcs[0].tensors()) {
    if (!bm::is_ffn_tensor(n)) expected.insert(n);
  }
  for (int i = 0; i < 2; ++i) {
    const std::string l = "model.layers." + std::to_string(i) + ".mlp.";
    for (const char* s :
         {"gate.weight", "experts.gate_proj", "experts.up_proj", "experts.down_proj"})
      expected.insert(l + s);
  }
  CHECK(names == expected);
  CHECK(moe.at(kGate).sizes() == torch::IntArrayRef({3, 64, 32}));
  CHECK(moe.at(kDown).sizes() == torch::IntArrayRef({3, 32, 64}));
  for (size_t j = 0; j < 3; ++j) {
    CHECK(torch::equal(moe.at(kUp)[int64_t(j)], srcs[j].load("model.layers.1.mlp.up_proj.weight")));
  }
  const std::string attn = "model.layers.0.self_attn.q_proj.weight";
  auto mean = (srcs[0].load(attn) + srcs[1].load(attn) + srcs[2].load(attn)) / 3;
  CHECK(max_abs_diff(moe.at(attn), mean) < 1e-6);

  const auto& m = plan.manifest();
  CHECK(m.method == "btx_mix");
  CHECK(m.num_experts == 3);
  CHECK(m.sources == std::vector<std::string>{"expert0", "expert1", "expert2"});
  nlohmann::json j = m;
  CHECK(j.at("averaging").at("name") == "uniform_mean");
  CHECK(j.get<bm::MixManifest>().experts_per_token == 2);
  CHECK(nlohmann::json(nlohmann::json::parse(j.dump()).get<bm::MixManifest>()) == j);
  CHECK_THROWS_AS(nlohmann::json::array().get<bm::MixManifest>(), std::invalid_argument);
}

TEST_CASE("merge mix: weighted averaging uses the weights, keep-one copies the seed") {
  auto models = make_models(2, 3);
  auto srcs = sources_of(models);
  const std::string n = "model.embed_tokens.weight";
  auto w = bm::merge(bm::BtxMix<bm::WeightedMean>{{{3.0, 1.0}}, {}}, srcs);
  CHECK(max_abs_diff(w.at(n), 0.75 * srcs[0].load(n) + 0.25 * srcs[1].load(n)) < 1e-6);
  auto k = bm::merge(bm::BtxMix<bm::KeepOne>{{1}, {}}, srcs);
  CHECK(torch::equal(k.at(n), srcs[1].load(n)));
  CHECK_THROWS_AS((bm::BtxMix<bm::WeightedMean>{{{1.0}}, {}}.plan(srcs)), std::invalid_argument);
}

TEST_CASE("merge mix: sources that disagree are rejected, naming tensor and sources") {
  auto models = make_models(2, 5);
  auto srcs = sources_of(models);
  auto bad = srcs[1].tensors();
  bad["model.norm.weight"] = torch::ones({31});
  std::vector<bm::StateDictSource> shaped = {srcs[0], bm::StateDictSource(bad, "broken")};
  CHECK_THROWS_WITH_AS(bm::BtxMix<>{}.plan(shaped),
                       doctest::Contains("'model.norm.weight' is [32] Float in 'expert0' but [31] "
                                         "Float in 'broken'"),
                       std::invalid_argument);
  bad = srcs[1].tensors();
  bad.erase("lm_head.weight");
  std::vector<bm::StateDictSource> missing = {srcs[0], bm::StateDictSource(bad, "headless")};
  CHECK_THROWS_WITH_AS(bm::BtmMerge<>{}.plan(missing),
                       doctest::Contains("'lm_head.weight' is in 'expert0' but missing from "
                                         "'headless'"),
                       std::invalid_argument);
  bad = srcs[1].tensors();
  bad["model.layers.0.mlp.up_proj.weight"] =
      bad["model.layers.0.mlp.up_proj.weight"].to(torch::kBFloat16);
  std::vector<bm::StateDictSource> typed = {srcs[0], bm::StateDictSource(bad, "bf16")};
  CHECK_THROWS_WITH_AS(bm::SplitMix<>{}.plan(typed), doctest::Contains("in 'bf16'"),
                       std::invalid_argument);
  auto moe = bm::merge(bm::BtxMix<>{}, srcs);
  std::vector<bm::StateDictSource> already = {bm::StateDictSource(moe, "moe")};
  CHECK_THROWS_WITH_AS(bm::BtxMix<>{}.plan(already), doctest::Contains("MoE tensor"),
                       std::invalid_argument);
  CHECK_THROWS_AS(bm::BtxMix<>{}.plan(std::vector<bm::StateDictSource>{}), std::invalid_argument);
}

TEST_CASE("merge split: the chunk experts of a source sum to its dense FFN output") {
  auto models = make_models(2, 11);
  auto srcs = sources_of(models);
  auto plan = bm::SplitMix<>{{}, {}, /*chunks=*/4, /*experts_per_token=*/2}.plan(srcs);
  auto moe = bm::materialize(plan);
  CHECK(moe.at(kGate).sizes() == torch::IntArrayRef({8, 16, 32}));
  CHECK(moe.at(kDown).sizes() == torch::IntArrayRef({8, 32, 16}));
  CHECK(plan.manifest().experts_per_token == 8);  // C * k
  CHECK(plan.manifest().moe_intermediate_size == 16);
  CHECK(plan.manifest().experts[5] ==
        nlohmann::json::parse(R"([{"source":"expert1","rows":[16,32]}])"));
  auto x = torch::randn({5, 32});
  for (int64_t j = 0; j < 2; ++j) {
    const auto& d = srcs[size_t(j)];
    auto dense = swiglu(x, d.load("model.layers.1.mlp.gate_proj.weight"),
                        d.load("model.layers.1.mlp.up_proj.weight"),
                        d.load("model.layers.1.mlp.down_proj.weight"));
    auto sum = torch::zeros_like(dense);
    for (int64_t c = 0; c < 4; ++c) {
      const int64_t e = j * 4 + c;
      sum += swiglu(x, moe.at(kGate)[e], moe.at(kUp)[e], moe.at(kDown)[e]);
    }
    CHECK(max_abs_diff(sum, dense) < 1e-5);
  }
  CHECK_THROWS_WITH_AS((bm::SplitMix<>{{}, {}, 5, 2}.plan(srcs)), doctest::Contains("divide"),
                       std::invalid_argument);
}

namespace {
// Mixtral routing by hand for one layer: softmax over E logits, top-k, renormalise.
torch::Tensor moe_layer(const bm::StateDict& sd, int64_t layer, int64_t k, const torch::Tensor& x) {
  auto router = sd.at(bm::router_name(layer));
  auto g = sd.at(bm::experts_name(layer, "gate_proj"));
  auto u = sd.at(bm::experts_name(layer, "up_proj"));
  auto d = sd.at(bm::experts_name(layer, "down_proj"));
  auto probs = torch::softmax(torch::matmul(x, router.t()), -1);  // [T, E]
  auto [w, idx] = probs.topk(k, -1);
  w = w / w.sum(-1, true);
  auto out = torch::zeros_like(x);
  for (int64_t t = 0; t < x.size(0); ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = idx[t][j].item<int64_t>();
      out[t] += w[t][j] * swiglu(x[t].unsqueeze(0), g[e], u[e], d[e]).squeeze(0);
    }
  }
  return out;
}
}  // namespace

TEST_CASE("merge split: rescaled chunks with top-(C*k) reproduce the unsplit top-k MoE") {
  auto models = make_models(3, 37);
  auto srcs = sources_of(models);
  bm::RouterFromHidden rows{{torch::randn({2, 32}), torch::randn({2, 32}), torch::randn({2, 32})}};
  using Hidden = bm::RouterFromHidden;
  auto unsplit = bm::merge(bm::BtxMix<bm::UniformMean, Hidden>{{}, rows, 1}, srcs);
  bm::SplitMix<bm::UniformMean, Hidden> split{{}, rows, /*chunks=*/4, /*experts_per_token=*/1};
  split.rescale_down = true;
  auto plan = split.plan(srcs);
  auto moe = bm::materialize(plan);
  CHECK(plan.manifest().experts_per_token == 4);
  auto x = torch::randn({6, 32});
  for (int64_t layer = 0; layer < 2; ++layer) {
    CHECK(max_abs_diff(moe_layer(moe, layer, 4, x), moe_layer(unsplit, layer, 1, x)) < 1e-5);
  }
  // Without the rescale the split MoE gives 1/C of the unsplit output.
  split.rescale_down = false;
  auto plain = bm::merge(split, srcs);
  CHECK(max_abs_diff(4 * moe_layer(plain, 1, 4, x), moe_layer(unsplit, 1, 1, x)) < 1e-5);
}

TEST_CASE("merge blend: expert n is chunk n of every source, concatenated") {
  auto models = make_models(2, 13);
  auto srcs = sources_of(models);
  auto moe = bm::merge(bm::BlendMix<>{}, srcs);
  CHECK(moe.at(kGate).sizes() == torch::IntArrayRef({2, 64, 32}));
  const std::string g = "model.layers.1.mlp.gate_proj.weight";
  const std::string d = "model.layers.1.mlp.down_proj.weight";
  for (int64_t n = 0; n < 2; ++n) {
    auto expect_g =
        torch::cat({srcs[0].load(g).narrow(0, n * 32, 32), srcs[1].load(g).narrow(0, n * 32, 32)});
    auto expect_d = torch::cat(
        {srcs[0].load(d).narrow(1, n * 32, 32), srcs[1].load(d).narrow(1, n * 32, 32)}, 1);
    CHECK(torch::equal(moe.at(kGate)[n], expect_g));
    CHECK(torch::equal(moe.at(kDown)[n], expect_d));
  }
  nlohmann::json provenance = bm::BlendMix<>{}.plan(srcs).manifest().experts;
  CHECK(provenance[1] ==
        nlohmann::json::parse(
            R"([{"source":"expert0","rows":[32,64]},{"source":"expert1","rows":[32,64]}])"));
  // Blended experts have no single source: hidden-state routers cannot apply.
  bm::RouterFromHidden hidden{{torch::ones({2, 32}), torch::ones({2, 32})}};
  CHECK_THROWS_WITH_AS(
      (bm::merge(bm::BlendMix<bm::UniformMean, bm::RouterFromHidden>{{}, hidden}, srcs)),
      doctest::Contains("single source"), std::invalid_argument);
}

TEST_CASE("merge upcycle: copies of the seed FFN, with noise of the requested relative std") {
  auto seed = make_models(1, 17);
  auto srcs = sources_of(seed);
  auto plain = bm::merge(bm::Upcycle<>{4}, srcs);
  const auto dense_up = srcs[0].load("model.layers.1.mlp.up_proj.weight");
  for (int64_t e = 0; e < 4; ++e) CHECK(torch::equal(plain.at(kUp)[e], dense_up));
  CHECK(torch::equal(plain.at("model.norm.weight"), srcs[0].load("model.norm.weight")));

  bm::Upcycle<> noisy{4};
  noisy.noise_std = 0.1;
  noisy.noise_seed = 3;
  auto a = bm::merge(noisy, srcs), b = bm::merge(noisy, srcs);
  CHECK(torch::equal(a.at(kUp), b.at(kUp)));  // seeded
  CHECK_FALSE(torch::equal(a.at(kUp)[0], a.at(kUp)[1]));
  auto rel = (a.at(kUp) - dense_up).std().item<double>() / dense_up.std().item<double>();
  CHECK(rel == doctest::Approx(0.1).epsilon(0.05));
  CHECK(noisy.plan(srcs).manifest().options.at("noise_std") == 0.1);
  CHECK_THROWS_AS(bm::Upcycle<>{4}.plan(sources_of(make_models(2, 1))), std::invalid_argument);
}

TEST_CASE("merge btm: averaging identical models returns the model, and loads into a Llama") {
  auto one = make_models(1, 19);
  std::vector<bm::StateDictSource> srcs(2, bm::source_of(one[0], "same"));
  auto merged = bm::merge(bm::BtmMerge<>{}, srcs);
  btx::LlamaForCausalLM fresh(tiny_config());
  bm::load_state_dict(fresh, merged);
  auto ids = torch::randint(0, 64, {2, 6});
  CHECK(max_abs_diff(fresh->forward(ids), one[0]->forward(ids)) == 0.0);

  auto models = make_models(2, 23);
  auto two = bm::merge(bm::BtmMerge<>{}, sources_of(models));
  const std::string n = "model.layers.0.mlp.down_proj.weight";
  CHECK(max_abs_diff(
            two.at(n),
            (bm::state_dict_of(models[0]).at(n) + bm::state_dict_of(models[1]).at(n)) / 2) < 1e-6);
}

TEST_CASE("merge router init: seeded normal, zero, and unit-norm hidden-state rows") {
  auto models = make_models(2, 29);
  auto srcs = sources_of(models);
  auto a = bm::merge(bm::BtxMix<bm::UniformMean, bm::RouterNormal>{{}, {0.02, 5}}, srcs);
  auto b = bm::merge(bm::BtxMix<bm::UniformMean, bm::RouterNormal>{{}, {0.02, 5}}, srcs);
  CHECK(
      torch::equal(a.at("model.layers.0.mlp.gate.weight"), b.at("model.layers.0.mlp.gate.weight")));
  CHECK_FALSE(
      torch::equal(a.at("model.layers.0.mlp.gate.weight"), a.at("model.layers.1.mlp.gate.weight")));
  auto z = bm::merge(bm::BtxMix<bm::UniformMean, bm::RouterZero>{}, srcs);
  CHECK(z.at("model.layers.1.mlp.gate.weight").abs().sum().item<double>() == 0.0);

  std::vector<torch::Tensor> samples = {torch::randint(0, 64, {2, 8})};
  auto hidden = bm::hidden_router_init(models, samples);
  auto h = bm::merge(bm::BtxMix<bm::UniformMean, bm::RouterFromHidden>{{}, hidden}, srcs);
  auto router = h.at("model.layers.1.mlp.gate.weight");  // [E, H]
  CHECK(max_abs_diff(router.norm(2, 1), torch::ones({2})) < 1e-5);
  std::vector<torch::Tensor> mlp_inputs;
  models[1]->model->forward(samples[0], nullptr, &mlp_inputs);
  auto mean = mlp_inputs[1].reshape({-1, 32}).mean(0);
  CHECK(max_abs_diff(router[1], mean / mean.norm()) < 1e-5);
  // Split experts inherit their source's row.
  auto s = bm::merge(bm::SplitMix<bm::UniformMean, bm::RouterFromHidden>{{}, hidden, 2, 1}, srcs);
  CHECK(max_abs_diff(s.at("model.layers.1.mlp.gate.weight")[3], router[1]) < 1e-6);
  // A random init shares rows only through the adapter: chunks of one source tie.
  auto shared = bm::merge(
      bm::SplitMix<bm::UniformMean, bm::RouterRowPerSource<bm::RouterNormal>>{
          {}, {{0.02, 5}}, 2, 1},
      srcs);
  auto rows = shared.at("model.layers.0.mlp.gate.weight");  // [N*C=4, H], source-major
  CHECK(rows.size(0) == 4);
  CHECK(torch::equal(rows[0], rows[1]));
  CHECK(torch::equal(rows[2], rows[3]));
  CHECK_FALSE(torch::equal(rows[1], rows[2]));
  // mergekit's recipe: the base model on each expert's own prompts.
  std::vector<std::vector<torch::Tensor>> prompts = {{torch::randint(0, 32, {1, 6})},
                                                     {torch::randint(32, 64, {2, 5})}};
  auto from_prompts = bm::hidden_router_init_from_prompts(models[0], prompts, 2.0);
  auto p = bm::merge(bm::BtxMix<bm::UniformMean, bm::RouterFromHidden>{{}, from_prompts}, srcs);
  mlp_inputs.clear();
  models[0]->model->forward(prompts[1][0], nullptr, &mlp_inputs);
  auto code_mean = mlp_inputs[0].reshape({-1, 32}).mean(0);
  CHECK(max_abs_diff(p.at("model.layers.0.mlp.gate.weight")[1],
                     2.0 * code_mean / code_mean.norm()) < 1e-5);
  bm::RouterFromHidden wrong{{torch::ones({2, 31}), torch::ones({2, 31})}};
  CHECK_THROWS_WITH_AS(
      (bm::merge(bm::BtxMix<bm::UniformMean, bm::RouterFromHidden>{{}, wrong}, srcs)),
      doctest::Contains("[num_layers=2, hidden=32]"), std::invalid_argument);
}

TEST_CASE("merge plan: tensor-by-tensor computation in any order matches materialize") {
  auto models = make_models(3, 31);
  auto plan = bm::SplitMix<>{{}, {}, 2, 2}.plan(sources_of(models));
  auto all = bm::materialize(plan);
  CHECK(all.size() == plan.outputs().size());
  for (auto it = plan.outputs().rbegin(); it != plan.outputs().rend(); ++it) {
    auto t = plan.compute(it->name);
    CHECK(t.sizes().vec() == it->shape);
    CHECK_MESSAGE(torch::equal(t, all.at(it->name)), it->name);
  }
  CHECK_THROWS_AS((void)plan.compute("nope"), std::out_of_range);
}

TEST_CASE("merge plan: a recipe with down_scale and noise records both in the manifest") {
  auto srcs = sources_of(make_models(1, 29));
  const int64_t I = tiny_config().intermediate_size;
  bm::MoeRecipe recipe{"noisy_rescaled", {{{{0, 0, I}}}, {{{0, 0, I}}}}, 1, 2, 0.05, 7, 2.0};
  const auto plan = bm::moe_plan(srcs, bm::KeepOne{0}, bm::RouterZero{}, recipe);
  const auto& options = plan.manifest().options;
  CHECK(options.value("down_scale", 0.0) == 2.0);
  CHECK(options.value("noise_std", 0.0) == 0.05);
  CHECK(options.value("noise_seed", uint64_t{0}) == 7);
}
