// SPDX-License-Identifier: MIT
// Anchored experts (FlexOlmo): frozen slices stay put through AdamW with weight decay; an
// anchored expert of a seed computes the seed exactly until it trains; training moves only
// its own FFN and router row; concatenation averages nothing and, wherever routing picks
// the anchor and one expert, computes that expert exactly; opt-out and opt-in are the
// inverse of each other; a trunk that moved is refused by name.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include <btx/data/sampler.hpp>
#include <btx/merge/anchored.hpp>
#include <btx/merge/anchored_merge.hpp>
#include <btx/models/auto.hpp>
#include <btx/models/llama/compat.hpp>
#include <btx/models/llama/family.hpp>
#include <btx/models/registry.hpp>
#include <btx/train/flops.hpp>
#include <btx/train/frozen_slices.hpp>
#include <btx/train/trainer.hpp>

#include "../test_support.hpp"

using btx::test::max_abs_diff;
using btx::test::tiny_config;
namespace bm = btx::merge;

namespace {

btx::CausalLM tiny_seed(uint64_t seed = 3, int64_t layers = 2) {
  torch::manual_seed(seed);
  auto config = tiny_config();
  config.num_hidden_layers = layers;
  return btx::make_model(btx::LlamaFamily::spec(config));
}

torch::Tensor rows_LD(uint64_t seed, int64_t layers = 2) {
  torch::manual_seed(seed);
  return torch::randn({layers, tiny_config().hidden_size});
}

// An anchored expert of `seed` whose own FFN and router row moved (as training would).
btx::CausalLM trained_expert(const btx::CausalLM& seed, uint64_t which) {
  const int64_t L = seed.spec().shape.num_hidden_layers;
  auto e = bm::anchored_expert(seed, rows_LD(100, L), rows_LD(200 + which, L));
  torch::NoGradGuard no_grad;
  torch::manual_seed(300 + which);
  for (auto& p : e.named_parameters()) {
    if (p.key().find(".mlp.experts.") != std::string::npos ||
        p.key().find(".mlp.gate.") != std::string::npos) {
      p.value().slice(0, 1, 2).add_(torch::randn_like(p.value().slice(0, 1, 2)) * 0.05);
    }
  }
  return e;
}

torch::Tensor ids_BS() {
  torch::manual_seed(7);
  return torch::randint(0, tiny_config().vocab_size, {2, 12});
}

}  // namespace

TEST_CASE("frozen slices: gradients masked and values kept through AdamW's weight decay") {
  auto p = torch::randn({4, 3}).set_requires_grad(true);
  const auto before = p.detach().clone();
  btx::FrozenSlices frozen;
  frozen.freeze(p, 0, 2, "p");
  torch::optim::AdamW opt({p}, torch::optim::AdamWOptions(0.1).weight_decay(0.5));
  for (int step = 0; step < 3; ++step) {
    opt.zero_grad();
    (p * torch::arange(12.0).view({4, 3})).sum().backward();
    CHECK(p.grad().slice(0, 0, 2).abs().sum().item<double>() == 0.0);
    CHECK(p.grad().slice(0, 2, 4).abs().sum().item<double>() > 0.0);
    opt.step();
    frozen.restore();
  }
  CHECK(p.detach().slice(0, 0, 2).equal(before.slice(0, 0, 2)));
  CHECK_FALSE(p.detach().slice(0, 2, 4).equal(before.slice(0, 2, 4)));
  CHECK_THROWS_AS(frozen.freeze(p, 3, 5, "p"), std::invalid_argument);
}

TEST_CASE(
    "anchored expert: the seed's function until it trains, and training moves only its own "
    "FFN and router row") {
  const auto seed = tiny_seed();
  auto expert = bm::anchored_expert(seed, rows_LD(100), rows_LD(201));
  CHECK(expert.spec().moe->num_experts == 2);
  torch::NoGradGuard no_grad_check;
  CHECK(max_abs_diff(expert.forward(ids_BS()), seed.forward(ids_BS())) < 1e-5);
  const auto before = expert.clone().named_parameters();
  {
    torch::AutoGradMode grad(true);
    const auto frozen = bm::freeze_anchored(expert, bm::AnchoredTrains::ffn);
    torch::manual_seed(11);
    btx::WindowSampler sampler({torch::randint(0, 64, {4000}, torch::kInt32)}, {}, 16, 1);
    btx::TrainOptions t;
    t.stage = "anchored";
    t.steps = 4;
    t.batch_size = 4;
    t.peak_lr = 1e-2;
    t.warmup_steps = 1;
    btx::TrainHooks hooks = frozen.applied_to({});
    hooks.aux_loss = [&] { return btx::collect_aux_loss(expert.module()); };
    struct Holder {
      btx::CausalLM lm;
      const btx::CausalLM* operator->() const { return &lm; }
      torch::nn::Module& operator*() const { return lm.module(); }
    } holder{expert};
    (void)btx::train_causal_lm(holder, sampler, t, hooks);
  }
  for (const auto& p : expert.named_parameters()) {
    CAPTURE(p.key());
    const auto& was = before[p.key()];
    const bool moe = p.key().find(".mlp.experts.") != std::string::npos ||
                     p.key().find(".mlp.gate.") != std::string::npos;
    if (moe) {
      CHECK(p.value().slice(0, 0, 1).equal(was.slice(0, 0, 1)));        // the anchor's slot
      CHECK_FALSE(p.value().slice(0, 1, 2).equal(was.slice(0, 1, 2)));  // its own
    } else {
      CHECK(p.value().equal(was));  // the trunk
    }
  }
}

TEST_CASE(
    "anchored merge: nothing averaged, and where routing picks the anchor and expert j, the "
    "merged model is expert j") {
  const auto seed = tiny_seed();
  const auto e1 = trained_expert(seed, 1), e2 = trained_expert(seed, 2);
  btx::MoEConfig top2;
  top2.router = btx::resolve_router("topk:2", {});
  top2.load_balance_alpha = 0;
  // One expert: the merged model of 2 experts, top-2, is that expert.
  const auto one = bm::concat_anchored({e1}, top2);
  torch::NoGradGuard no_grad;
  CHECK(max_abs_diff(one.forward(ids_BS()), e1.forward(ids_BS())) < 1e-5);

  const auto two = bm::concat_anchored({e1, e2}, top2);
  CHECK(two.spec().moe->num_experts == 3);
  auto p2 = two.named_parameters();
  CHECK(p2["model.embed_tokens.weight"].equal(e1.named_parameters()["model.embed_tokens.weight"]));
  CHECK(p2["model.layers.1.mlp.experts.up_proj"][2].equal(
      e2.named_parameters()["model.layers.1.mlp.experts.up_proj"][1]));
  CHECK(p2["model.layers.1.mlp.gate.weight"][1].equal(
      e1.named_parameters()["model.layers.1.mlp.gate.weight"][1]));
}

TEST_CASE(
    "anchored merge: tokens routed to the anchor and expert j get expert j's output exactly") {
  // One layer: a token's FFN input is the same in every model of one trunk, so the merged
  // router's choice can be read off it, and its logits depend on that one choice.
  const auto seed = tiny_seed(3, 1);
  const auto e1 = trained_expert(seed, 1), e2 = trained_expert(seed, 2);
  btx::MoEConfig top2;
  const auto merged = bm::concat_anchored({e1, e2}, top2);
  torch::NoGradGuard no_grad;
  const auto ids = ids_BS();
  const auto x_TD = merged.ffn_inputs(ids).at(0).reshape({-1, tiny_config().hidden_size});
  const auto l_TE =
      torch::matmul(x_TD, merged.named_parameters()["model.layers.0.mlp.gate.weight"].t());
  const auto picks_e1 =
      (l_TE.select(1, 2) < l_TE.select(1, 0)) & (l_TE.select(1, 2) < l_TE.select(1, 1));
  const auto diff_T = (merged.forward(ids) - e1.forward(ids)).abs().amax(-1).reshape({-1});
  const int64_t routed = picks_e1.sum().item<int64_t>();
  CAPTURE(routed);
  REQUIRE(routed > 0);
  REQUIRE(routed < picks_e1.numel());
  CHECK(diff_T.masked_select(picks_e1).max().item<double>() < 1e-5);
  CHECK(diff_T.masked_select(~picks_e1).max().item<double>() > 1e-3);  // elsewhere expert 2 acts
}

TEST_CASE(
    "anchored merge: concatenation refuses experts whose trunk or anchor slot moved, naming the "
    "tensor") {
  const auto seed = tiny_seed();
  const auto e1 = trained_expert(seed, 1);
  auto moved = trained_expert(seed, 2);
  {
    torch::NoGradGuard no_grad;
    moved.named_parameters()["model.layers.0.self_attn.q_proj.weight"].add_(1e-3);
  }
  btx::MoEConfig top2;
  CHECK_THROWS_WITH_AS(bm::concat_anchored({e1, moved}, top2),
                       doctest::Contains("model.layers.0.self_attn.q_proj.weight"),
                       std::invalid_argument);
  // Averaging the shared tensors instead (experts that trained attention too) merges them.
  CHECK(
      bm::concat_anchored({e1, moved}, top2, bm::SharedTensors::average).spec().moe->num_experts ==
      3);
  auto other_anchor = trained_expert(tiny_seed(4), 3);
  CHECK_THROWS_AS(bm::concat_anchored({e1, other_anchor}, top2), std::invalid_argument);
}

TEST_CASE(
    "anchored merge: opt-out and opt-in, removing an expert undoes adding it, tensor for tensor") {
  const auto seed = tiny_seed();
  const auto e1 = trained_expert(seed, 1), e2 = trained_expert(seed, 2),
             e3 = trained_expert(seed, 3);
  btx::MoEConfig top2;
  const auto all = bm::concat_anchored({e1, e2, e3}, top2);
  const auto without2 = bm::remove_experts(all, {2});  // expert 2 = e2 (0 is the anchor)
  const auto direct = bm::concat_anchored({e1, e3}, top2);
  const auto a = without2.named_parameters(), b = direct.named_parameters();
  REQUIRE(a.size() == b.size());
  for (const auto& p : a) {
    CAPTURE(p.key());
    CHECK(p.value().equal(b[p.key()]));
  }
  const auto readded = bm::add_anchored(bm::concat_anchored({e1, e3}, top2), e2);
  const auto c = readded.named_parameters(),
             d = bm::concat_anchored({e1, e3, e2}, top2).named_parameters();
  for (const auto& p : c) {
    CAPTURE(p.key());
    CHECK(p.value().equal(d[p.key()]));
  }
  CHECK_THROWS_AS(bm::remove_experts(all, {4}), std::invalid_argument);
  CHECK_THROWS_AS(bm::remove_experts(all, {0, 1, 2, 3}), std::invalid_argument);
  CHECK_THROWS_WITH_AS(bm::remove_experts(bm::concat_anchored({e1}, top2), {1}),
                       doctest::Contains("k=2"), std::invalid_argument);
  CHECK_THROWS_AS(bm::add_anchored(all, trained_expert(tiny_seed(4), 1)), std::invalid_argument);
}

TEST_CASE("anchored compute: frozen parts cost no weight gradients") {
  const auto shape = btx::LlamaFamily::spec(tiny_config()).shape;
  const double full = btx::training_flops_per_token(shape, 16, {2, 2});
  const auto [per_layer, head] = bm::anchored_trained_params(shape, bm::AnchoredTrains::ffn);
  const double frozen =
      btx::partly_frozen_training_flops_per_token(shape, 16, {2, 2}, per_layer, head);
  CHECK(frozen < full);
  // Everything trained: the full cost.
  const auto m = btx::matmul_params_per_token(shape, {2, 2});
  CHECK(btx::partly_frozen_training_flops_per_token(shape, 16, {2, 2},
                                                    m.attention + 2 * m.ffn + m.router,
                                                    m.head) == doctest::Approx(full));
  // The forward plus input gradients stay: at least two thirds of the full cost.
  CHECK(frozen > 2.0 / 3.0 * full);
}

TEST_CASE("anchored rows: separating rows score +1 on their domain's mean, -1 on the others'") {
  // As in the five-domain runs: one outlier domain (arithmetic) and three related ones
  // (code, code, prose) sharing a direction, so the mixture's mean sits between them.
  // Centered rows then score a related domain's row above the anchor's 0 on another
  // domain's mean; separating rows put the own domain first, the anchor second, every
  // other domain below it.
  torch::manual_seed(5);
  auto axis_LD = [](int64_t i, double v) {
    auto t = torch::zeros({3, 16});
    t.select(1, i).fill_(v);
    return t;
  };
  const auto common_LD = axis_LD(0, 4.0);
  std::vector<torch::Tensor> means = {common_LD + axis_LD(1, -3.0)};
  for (int d = 1; d < 4; ++d) {
    means.push_back(common_LD + axis_LD(1, 1.0) + 0.3 * torch::randn({3, 16}));
  }
  means[3] = means[2] + 0.2 * torch::randn({3, 16});  // two close domains (C and Python)
  const auto rows = bm::separating_rows(means, 1e-9);
  REQUIRE(rows.size() == 4);
  for (int d = 0; d < 4; ++d) {
    CHECK(rows[d].sizes() == means[d].sizes());
    for (int e = 0; e < 4; ++e) {
      const auto score_L = (rows[e] * means[d]).sum(-1);
      CHECK(torch::allclose(score_L, torch::full({3}, d == e ? 1.0 : -1.0), 1e-3, 1e-3));
    }
  }
  const auto mixture = torch::stack(means).mean(0);
  const auto centered_score = ((means[3] - mixture) * means[2]).sum(-1);
  CHECK((centered_score > 0).all().item<bool>());  // what separating rows fix
  CHECK_THROWS_WITH_AS(bm::separating_rows({}), doctest::Contains("no domains"),
                       std::invalid_argument);
}
