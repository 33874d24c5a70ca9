// SPDX-License-Identifier: MIT
// The sigmoid_topk router (DeepSeek-V3 / GLM-4-MoE routing): weights against a per-token
// reference, group-limited selection, the bias choosing without weighting, the
// auxiliary-loss-free balancing evening out a skewed router, and the registry building it
// into an MoE layer that trains.
#include <doctest/doctest.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include <btx/models/common/decoder_moe.hpp>
#include <btx/moe/router_registry.hpp>
#include <btx/moe/routers/sigmoid_top_k.hpp>

namespace {

// The routing of one token written out: affinities, corrected scores, group mask, top-k.
std::vector<std::pair<int64_t, double>> sigmoid_reference(const std::vector<double>& logits,
                                                          const std::vector<double>& bias,
                                                          const btx::SigmoidTopKOptions& o) {
  const int64_t E = int64_t(logits.size()), per = E / o.groups;
  std::vector<double> s(E), c(E);
  for (int64_t e = 0; e < E; ++e) {
    s[e] = 1.0 / (1.0 + std::exp(-logits[e]));
    c[e] = s[e] + bias[e];
  }
  std::vector<std::pair<double, int64_t>> group_scores;
  for (int64_t g = 0; g < o.groups; ++g) {
    std::vector<double> in(c.begin() + g * per, c.begin() + (g + 1) * per);
    std::sort(in.rbegin(), in.rend());
    group_scores.push_back({in[0] + in[1], g});
  }
  std::sort(group_scores.rbegin(), group_scores.rend());
  std::vector<std::pair<double, int64_t>> selectable;
  for (int64_t i = 0; i < o.topk_groups; ++i)
    for (int64_t e = group_scores[i].second * per; e < (group_scores[i].second + 1) * per; ++e)
      selectable.push_back({c[e], e});
  std::sort(selectable.rbegin(), selectable.rend());
  std::vector<std::pair<int64_t, double>> out;
  double sum = 0;
  for (int64_t i = 0; i < o.k; ++i) {
    out.push_back({selectable[i].second, s[selectable[i].second]});
    sum += s[selectable[i].second];
  }
  for (auto& [e, w] : out) w = (o.renormalize ? w / (sum + 1e-20) : w) * o.scaling;
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST_CASE("sigmoid_topk: weights and experts equal a per-token reference, groups and bias too") {
  torch::manual_seed(0);
  const int64_t D = 16, E = 8, T = 40;
  for (const auto& o : {btx::SigmoidTopKOptions{.k = 2},
                        btx::SigmoidTopKOptions{.k = 3, .renormalize = false, .scaling = 2.5},
                        btx::SigmoidTopKOptions{.k = 3, .groups = 4, .topk_groups = 2},
                        btx::SigmoidTopKOptions{.k = 2, .groups = 4, .topk_groups = 1}}) {
    CAPTURE(o.k);
    CAPTURE(o.groups);
    btx::SigmoidTopK router(D, E, o);
    router.eval();
    {
      torch::NoGradGuard no_grad;
      router.weight.normal_(0, 1);
      router.e_score_correction_bias.uniform_(-0.3, 0.3);
    }
    const auto x_TD = torch::randn({T, D});
    const auto r = router.route(x_TD);
    const auto logits = r.logits_TE.to(torch::kDouble);
    const auto bias = router.e_score_correction_bias.to(torch::kDouble);
    std::vector<double> b(bias.data_ptr<double>(), bias.data_ptr<double>() + E);
    for (int64_t t = 0; t < T; ++t) {
      const auto row = logits[t].contiguous();
      const auto want = sigmoid_reference(
          std::vector<double>(row.data_ptr<double>(), row.data_ptr<double>() + E), b, o);
      std::vector<std::pair<int64_t, double>> got;
      for (int64_t k = 0; k < o.k; ++k)
        got.push_back({r.indices_TK[t][k].item<int64_t>(), r.weights_TK[t][k].item<double>()});
      std::sort(got.begin(), got.end());
      for (int64_t k = 0; k < o.k; ++k) {
        CHECK(got[k].first == want[k].first);
        CHECK(got[k].second == doctest::Approx(want[k].second).epsilon(1e-5));
      }
      if (o.groups > 1 && o.topk_groups == 1) {  // every expert from one group
        CHECK(got.front().first / (E / o.groups) == got.back().first / (E / o.groups));
      }
    }
  }
}

TEST_CASE("sigmoid_topk: the balancing bias evens out a skewed router without a gradient") {
  torch::manual_seed(1);
  const int64_t D = 8, E = 4, T = 256;
  btx::SigmoidTopK router(D, E, {.k = 1, .bias_update_rate = 0.01});
  {
    torch::NoGradGuard no_grad;
    router.weight.normal_(0, 0.1);
    router.weight[0].add_(1.0);  // expert 0 wins every token at first
  }
  const auto x_TD = torch::rand({T, D}) + 0.5;
  const auto load = [&] {
    router.eval();
    const auto r = router.route(x_TD);
    router.train();
    return torch::bincount(r.indices_TK.reshape(-1), {}, E);
  };
  CHECK(load()[0].item<int64_t>() == T);
  for (int step = 0; step < 400; ++step) (void)router.route(x_TD);
  const auto balanced = load();
  CHECK(balanced.max().item<int64_t>() < T / 2);  // no expert keeps most tokens
  CHECK(router.e_score_correction_bias[0].item<double>() < 0.0);
  CHECK(!router.e_score_correction_bias.requires_grad());
  // Inference leaves the bias alone.
  router.eval();
  const auto before = router.e_score_correction_bias.clone();
  (void)router.route(x_TD);
  CHECK(torch::equal(before, router.e_score_correction_bias));
}

TEST_CASE("sigmoid_topk: registered, with options, and trains inside an MoE layer") {
  const auto choice = btx::resolve_router("sigmoid_topk", {{"k", 2}, {"groups", 2}});
  CHECK(choice.options.at("topk_groups").get<int64_t>() == 1);
  CHECK(btx::active_experts({.num_experts = 4, .router = choice}) == 2);
  CHECK_THROWS_WITH_AS(
      btx::check_router({.num_experts = 6,
                         .router = btx::RouterChoice("sigmoid_topk", {{"k", 2}, {"groups", 4}})}),
      doctest::Contains("must divide num_experts=6"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(btx::resolve_router("sigmoid_topk", {{"gruops", 2}}),
                       doctest::Contains("gruops"), std::invalid_argument);
  btx::DecoderConfig c;
  auto factory = btx::moe_feed_forward({.num_experts = 4, .router = choice});
  auto layer = factory(c, 0);
  auto x = torch::randn({2, 5, c.hidden_size});
  auto y = layer.forward<torch::Tensor>(x);
  y.square().mean().backward();
  const auto params = layer.ptr()->named_parameters();
  CHECK(params["gate.weight"].grad().defined());
  CHECK(!params["gate.e_score_correction_bias"].grad().defined());
}
