// SPDX-License-Identifier: MIT
// Averaging policies and state-dict plumbing: uniform/weighted/keep-one arithmetic on
// hand-made tensors, weight validation, dtype handling, and load_state_dict's checks.
#include <doctest/doctest.h>

#include <btx/merge/averaging.hpp>
#include <btx/merge/state_dict.hpp>
#include <btx/models/llama/compat.hpp>

#include "../test_support.hpp"

using btx::test::max_abs_diff;
using btx::test::tiny_config;
namespace bm = btx::merge;

TEST_CASE("merge averaging: uniform mean is the elementwise mean") {
  std::vector<torch::Tensor> ts = {torch::tensor({1.0f, 2.0f}), torch::tensor({3.0f, 6.0f}),
                                   torch::tensor({5.0f, 1.0f})};
  auto avg = bm::average(bm::UniformMean{}, "w", ts);
  CHECK(max_abs_diff(avg, torch::tensor({3.0f, 3.0f})) < 1e-6);
}

TEST_CASE("merge averaging: weighted mean normalises the weights (tokens trained)") {
  std::vector<torch::Tensor> ts = {torch::tensor({0.0f, 10.0f}), torch::tensor({4.0f, 2.0f})};
  auto avg = bm::average(bm::WeightedMean{{300.0, 100.0}}, "w", ts);
  CHECK(max_abs_diff(avg, torch::tensor({1.0f, 8.0f})) < 1e-6);
  CHECK(bm::WeightedMean{{1, 3}}.weights(2) == std::vector<double>{0.25, 0.75});
}

TEST_CASE("merge averaging: keep-one returns that source bit for bit") {
  std::vector<torch::Tensor> ts = {torch::randn({3, 4}).to(torch::kBFloat16),
                                   torch::randn({3, 4}).to(torch::kBFloat16)};
  auto kept = bm::average(bm::KeepOne{1}, "w", ts);
  CHECK(torch::equal(kept, ts[1]));
  CHECK_THROWS_AS(bm::KeepOne{2}.weights(2), std::invalid_argument);
}

TEST_CASE("merge averaging: bad weights are rejected with a reason") {
  const auto weigh = [](std::vector<double> w) {
    return bm::WeightedMean{std::move(w)}.weights(2);
  };
  CHECK_THROWS_WITH_AS(weigh({1.0, -1.0}), doctest::Contains("non-negative"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(weigh({1.0, NAN}), doctest::Contains("finite"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(weigh({0.0, 0.0}), doctest::Contains("positive"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(weigh({1.0}), doctest::Contains("one weight per"), std::invalid_argument);
  CHECK_THROWS_AS(bm::UniformMean{}.weights(0), std::invalid_argument);
}

TEST_CASE("merge averaging: bf16 sources average in fp32 and come back as bf16") {
  auto a = torch::full({8}, 1.0, torch::kBFloat16);
  auto b = torch::full({8}, 1.0 + 1.0 / 128, torch::kBFloat16);  // one bf16 ulp above 1
  auto c = torch::full({8}, 1.0 + 2.0 / 128, torch::kBFloat16);
  auto avg = bm::average(bm::UniformMean{}, "w", {a, b, c});
  CHECK((avg.scalar_type() == torch::kBFloat16));
  CHECK(torch::equal(avg, b));
}

TEST_CASE("merge averaging: mismatched shapes name the tensor and both sources") {
  std::vector<torch::Tensor> ts = {torch::zeros({2, 3}), torch::zeros({3, 2})};
  CHECK_THROWS_WITH_AS(bm::average(bm::UniformMean{}, "model.norm.weight", ts, {"math", "code"}),
                       doctest::Contains("'model.norm.weight' is [2, 3] Float in 'math' but [3, "
                                         "2] Float in 'code'"),
                       std::invalid_argument);
}

TEST_CASE("merge state dict: round trip through a module, and strict load errors") {
  torch::manual_seed(0);
  btx::LlamaForCausalLM a(tiny_config()), b(tiny_config());
  auto sd = bm::state_dict_of(a);
  CHECK(sd.size() == a->named_parameters().size());
  bm::load_state_dict(b, sd);
  auto ids = torch::randint(0, 64, {1, 5});
  CHECK(max_abs_diff(a->forward(ids), b->forward(ids)) == 0.0);

  auto bad = sd;
  bad.erase("model.norm.weight");
  bad["model.layers.0.mlp.up_proj.weight"] = torch::zeros({3, 3});
  bad["extra.weight"] = torch::zeros({1});
  auto before = b->named_parameters()["model.layers.1.mlp.up_proj.weight"].clone();
  try {
    bm::load_state_dict(b, bad);
    FAIL("expected load_state_dict to throw");
  } catch (const std::invalid_argument& e) {
    const std::string msg = e.what();
    CHECK(msg.find("missing tensors:\n  model.norm.weight") != std::string::npos);
    CHECK(msg.find("unexpected tensors:\n  extra.weight") != std::string::npos);
    CHECK(msg.find("model.layers.0.mlp.up_proj.weight (module [64, 32], given [3, 3])") !=
          std::string::npos);
  }
  // Nothing was copied by the failed load.
  CHECK(torch::equal(b->named_parameters()["model.layers.1.mlp.up_proj.weight"], before));
  bad.erase("model.layers.0.mlp.up_proj.weight");
  bm::load_state_dict(b, bad, /*strict=*/false);  // missing/unexpected tolerated
}

TEST_CASE("merge state dict: StateDictSource describes and loads by name") {
  bm::StateDictSource s({{"a", torch::zeros({2, 3}, torch::kBFloat16)}}, "src");
  CHECK(s.names() == std::vector<std::string>{"a"});
  CHECK((s.spec("a") == bm::TensorSpec{"a", {2, 3}, torch::kBFloat16}));
  CHECK_THROWS_WITH_AS((void)s.load("b"), doctest::Contains("'b' is not in source 'src'"),
                       std::out_of_range);
}
