// SPDX-License-Identifier: MIT
// Auxiliary router losses against hand-computed cases, and the effect of load balancing
// on routing in a short training run.
#include <doctest/doctest.h>

#include <cmath>

#include <btx/moe/aux_loss.hpp>
#include <btx/moe/experts/packed_swiglu.hpp>
#include <btx/moe/moe_layer.hpp>
#include <btx/moe/routers/top_k.hpp>

#include "../test_support.hpp"

namespace {

// Two tokens, two experts, top-1, logits chosen by hand.
btx::RoutingResult two_token_case() {
  btx::RoutingResult r;
  r.logits_TE = torch::tensor({{std::log(3.0), 0.0}, {0.0, 0.0}}, torch::kDouble);
  r.probs_TE = torch::softmax(r.logits_TE, 1);  // [[0.75, 0.25], [0.5, 0.5]]
  r.indices_TK = torch::tensor({{0}, {1}}, torch::kLong);
  r.weights_TK = torch::tensor({{0.75}, {0.5}}, torch::kDouble);
  return r;
}

}  // namespace

TEST_CASE("moe aux loss: load balancing in BTX form uses the mean routed weight") {
  auto r = two_token_case();
  // p = (0.625, 0.375); u = mean g = (0.375, 0.25); E * sum u p = 2 * (0.234375 + 0.09375)
  CHECK(btx::load_balancing_loss(r, btx::LoadBalanceForm::btx).item<double>() ==
        doctest::Approx(0.65625));
}

TEST_CASE("moe aux loss: load balancing in Switch form uses the fraction of tokens routed") {
  auto r = two_token_case();
  // f = (0.5, 0.5); E * sum f p = 2 * (0.3125 + 0.1875) = 1: balanced counts give 1.
  CHECK(btx::load_balancing_loss(r, btx::LoadBalanceForm::switch_).item<double>() ==
        doctest::Approx(1.0));
  r.indices_TK = torch::tensor({{0}, {0}}, torch::kLong);  // all on expert 0: 2 * 0.625
  CHECK(btx::load_balancing_loss(r, btx::LoadBalanceForm::switch_).item<double>() ==
        doctest::Approx(1.25));
}

TEST_CASE("moe aux loss: z-loss is the mean squared logsumexp, scaled by its own coefficient") {
  auto r = two_token_case();
  const double z0 = std::log(4.0), z1 = std::log(2.0);
  CHECK(btx::router_z_loss(r).item<double>() == doctest::Approx((z0 * z0 + z1 * z1) / 2));
  btx::AuxLossOptions o{0.1, btx::LoadBalanceForm::btx, 0.01};
  CHECK(btx::aux_loss(r, o).item<double>() ==
        doctest::Approx(0.1 * 0.65625 + 0.01 * (z0 * z0 + z1 * z1) / 2));
  CHECK_FALSE(btx::aux_loss(r, btx::AuxLossOptions{0.0, btx::LoadBalanceForm::btx, 0.0}).defined());
}

TEST_CASE("moe aux loss: collect_aux_loss sums every MoE layer of a model") {
  torch::manual_seed(0);
  using Layer = btx::MoE<btx::TopK, btx::PackedSwiGLU>;
  torch::nn::Sequential net(
      Layer(std::make_shared<btx::TopK>(8, 4, 2), std::make_shared<btx::PackedSwiGLU>(4, 8, 8)),
      Layer(std::make_shared<btx::TopK>(8, 4, 2), std::make_shared<btx::PackedSwiGLU>(4, 8, 8)));
  CHECK(btx::collect_aux_loss(*net).item<double>() == 0.0);  // nothing ran yet
  net->forward(torch::randn({6, 8}));
  auto layers = btx::moe_layers(*net);
  REQUIRE(layers.size() == 2);
  CHECK(layers[0].first == "0");
  const double sum =
      layers[0].second->aux_loss().item<double>() + layers[1].second->aux_loss().item<double>();
  CHECK(btx::collect_aux_loss(*net).item<double>() == doctest::Approx(sum));
  CHECK(sum > 0.0);
}

// Trains one top-1 layer to regress a target on inputs with a strong common direction
// (which sends most tokens to one expert) and returns the final share of the busiest expert.
static double busiest_share_after_training(double alpha, btx::LoadBalanceForm form) {
  torch::manual_seed(11);
  const int64_t H = 16, E = 4, T = 256;
  auto gate = std::make_shared<btx::TopK>(H, E, 1);
  btx::MoE<btx::TopK, btx::PackedSwiGLU> moe(gate, std::make_shared<btx::PackedSwiGLU>(E, H, 16),
                                             btx::AuxLossOptions{alpha, form, 0.0});
  {
    torch::NoGradGuard no_grad;
    gate->weight.zero_();
    gate->weight[0].fill_(0.3);  // expert 0 starts with most of the load
  }
  auto direction = torch::ones({1, H});
  torch::optim::Adam opt(moe->parameters(), torch::optim::AdamOptions(1e-2));
  double share = 1.0;
  for (int step = 0; step < 150; ++step) {
    auto x = torch::randn({T, H}) + direction;
    auto y = moe->forward(x);
    auto loss = (y - x.flip(1)).pow(2).mean() + btx::collect_aux_loss(*moe);
    opt.zero_grad();
    loss.backward();
    opt.step();
    const auto& s = moe->last_stats();
    share = s.tokens_per_expert.max().item<double>() / static_cast<double>(T);
  }
  return share;
}

TEST_CASE("moe aux loss: load balancing reduces load imbalance compared with alpha = 0") {
  const double none = busiest_share_after_training(0.0, btx::LoadBalanceForm::switch_);
  const double btx_form = busiest_share_after_training(0.1, btx::LoadBalanceForm::btx);
  const double switch_form = busiest_share_after_training(0.1, btx::LoadBalanceForm::switch_);
  MESSAGE("busiest expert share: alpha=0 ", none, ", btx form ", btx_form, ", switch form ",
          switch_form);
  CHECK(none > 0.9);
  CHECK(switch_form < none - 0.2);
  CHECK(btx_form < none - 0.2);
}

TEST_CASE("moe aux loss: switch form with top-2 equals HF Mixtral's load_balancing_loss_func") {
  torch::manual_seed(12);
  const int64_t T = 10, E = 4, K = 2;
  btx::RoutingResult r;
  r.logits_TE = torch::randn({T, E}, torch::kDouble);
  r.probs_TE = torch::softmax(r.logits_TE, 1);
  auto [top, idx] = r.probs_TE.topk(K, 1);
  r.indices_TK = idx;
  r.weights_TK = top / top.sum(1, true);
  // HF: mask [T, k, E]; tokens_per_expert = mean over tokens -> [k, E];
  // loss = E * sum(tokens_per_expert * mean_probs[None, :]).
  auto mask_TKE = torch::one_hot(idx, E).to(torch::kDouble);
  auto hf = E * (mask_TKE.mean(0) * r.probs_TE.mean(0).unsqueeze(0)).sum();
  CHECK(btx::load_balancing_loss(r, btx::LoadBalanceForm::switch_).item<double>() ==
        doctest::Approx(hf.item<double>()).epsilon(1e-12));
}
