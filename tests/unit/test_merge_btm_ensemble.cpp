// SPDX-License-Identifier: MIT
// BTM ensemble: mixture of expert next-token distributions under a domain posterior.
#include <doctest/doctest.h>

#include <btx/merge/branch.hpp>
#include <btx/merge/btm_ensemble.hpp>
#include <btx/models/common/generate.hpp>
#include <btx/models/llama/compat.hpp>

#include "../test_support.hpp"

using btx::test::max_abs_diff;
using btx::test::tiny_config;
namespace bm = btx::merge;

namespace {
// A random tiny Llama with a sharpened head, so experts disagree clearly about text.
btx::LlamaForCausalLM sharp_model(uint64_t seed) {
  torch::manual_seed(seed);
  btx::LlamaForCausalLM m(tiny_config());
  torch::NoGradGuard no_grad;
  m->lm_head->weight.mul_(100.0);
  return m;
}
// log p(x_1..x_{T-1} | x_0) under one model: [B].
torch::Tensor sequence_log_prob(btx::LlamaForCausalLM& m, const torch::Tensor& ids) {
  torch::NoGradGuard no_grad;
  auto lp = torch::log_softmax(m->forward(ids), -1);
  const int64_t T = ids.size(1);
  return lp.narrow(1, 0, T - 1).gather(-1, ids.narrow(1, 1, T - 1).unsqueeze(-1)).sum({1, 2});
}
}  // namespace

TEST_CASE("merge btm ensemble: identical experts give the single expert's log-probs") {
  auto seed = sharp_model(1);
  auto copies = bm::branch(seed, {"a", "b", "c"});
  std::vector<btx::LlamaForCausalLM> experts;
  for (auto& c : copies) experts.push_back(c.model);
  bm::BtmEnsemble ens(experts, {{1.0, 2.0, 5.0}, std::nullopt});
  auto ids = torch::randint(0, 64, {2, 9});
  torch::NoGradGuard no_grad;
  CHECK(max_abs_diff(ens.forward(ids), torch::log_softmax(seed->forward(ids), -1)) < 1e-4);
  auto prior = torch::tensor({1.0 / 8, 2.0 / 8, 5.0 / 8});
  CHECK(max_abs_diff(ens.log_posterior(ids).exp()[1][8], prior) < 1e-5);
  CHECK(ens.generate({3, 4, 5}, {8, std::nullopt, false}) ==
        btx::generate_greedy(seed, {3, 4, 5}, {8, std::nullopt, false}));
}

TEST_CASE("merge btm ensemble: a sequence's probability is the prior-weighted mixture") {
  std::vector<btx::LlamaForCausalLM> experts = {sharp_model(2), sharp_model(3)};
  bm::BtmEnsemble ens(experts, {{0.3, 0.7}, std::nullopt});
  auto ids = torch::randint(0, 64, {2, 7});
  auto lp = ens.forward(ids);
  auto total = lp.narrow(1, 0, 6).gather(-1, ids.narrow(1, 1, 6).unsqueeze(-1)).sum({1, 2});
  auto mixture =
      torch::logsumexp(torch::stack({std::log(0.3) + sequence_log_prob(experts[0], ids),
                                     std::log(0.7) + sequence_log_prob(experts[1], ids)}),
                       0);
  CHECK(max_abs_diff(total, mixture) < 1e-3);
}

TEST_CASE("merge btm ensemble: the posterior moves to the expert whose text it reads") {
  std::vector<btx::LlamaForCausalLM> experts = {sharp_model(4), sharp_model(5)};
  bm::BtmEnsemble ens(experts);
  for (int64_t e = 0; e < 2; ++e) {
    // "Domain text" of expert e: its own greedy continuation.
    auto text = btx::generate_greedy(experts[size_t(e)], {7}, {24, std::nullopt, true});
    text.insert(text.begin(), 7);
    auto ids = torch::tensor(text, torch::kLong).unsqueeze(0);
    auto post = ens.log_posterior(ids).exp()[0];  // [T, E]
    CHECK(post[0][e].item<double>() == doctest::Approx(0.5));
    CHECK(post[-1][e].item<double>() > 0.99);
    // Top-1 then follows that expert alone at the end of its text.
    bm::BtmEnsemble top1(experts, {{}, 1});
    torch::NoGradGuard no_grad;
    auto own = torch::log_softmax(experts[size_t(e)]->forward(ids), -1);
    CHECK(max_abs_diff(top1.forward(ids)[0][-1], own[0][-1]) < 1e-5);
  }
}

TEST_CASE("merge btm ensemble: bad priors and top-k are rejected") {
  std::vector<btx::LlamaForCausalLM> experts = {sharp_model(6), sharp_model(7)};
  CHECK_THROWS_AS(bm::BtmEnsemble(experts, {{1.0}, std::nullopt}), std::invalid_argument);
  CHECK_THROWS_AS(bm::BtmEnsemble(experts, {{1.0, 0.0}, std::nullopt}), std::invalid_argument);
  CHECK_THROWS_AS(bm::BtmEnsemble(experts, {{}, 3}), std::invalid_argument);
  CHECK_THROWS_AS(bm::BtmEnsemble({}), std::invalid_argument);
}
