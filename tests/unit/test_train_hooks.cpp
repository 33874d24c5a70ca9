// SPDX-License-Identifier: MIT
// The training loop's seams (btx/train/hooks.hpp): the optimizer factory, the loss, model
// and batch placement, and the gradient hook after backward.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <btx/models/llama/compat.hpp>
#include <btx/train/hooks.hpp>
#include <btx/train/progress.hpp>
#include <btx/train/trainer.hpp>

#include "../scratch.hpp"
#include "../test_support.hpp"

namespace {

btx::WindowSampler repetitive_sampler() {
  auto stream = torch::arange(4000).remainder(16).to(torch::kInt32);
  return btx::WindowSampler({stream}, {}, 16, 1);
}

btx::TrainOptions short_run(int64_t steps) {
  return {.stage = "hooks", .steps = steps, .batch_size = 4, .warmup_steps = 2, .log_every = 100};
}

std::map<std::string, torch::Tensor> weights_of(btx::LlamaForCausalLM& model) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : model->named_parameters()) out[p.key()] = p.value().detach().clone();
  return out;
}

}  // namespace

TEST_CASE("hooks: SGD from sgd_factory trains, and its LR follows the schedule") {
  torch::manual_seed(0);
  btx::LlamaForCausalLM model(btx::test::tiny_config());
  btx::TrainHooks hooks;
  std::vector<double> lrs;
  torch::optim::Optimizer* seen = nullptr;  // lives as long as the loop
  bool is_sgd = false;
  const auto make_sgd = btx::sgd_factory(/*momentum=*/0.9);
  hooks.optimizer = [&](std::vector<torch::Tensor> params, const btx::TrainOptions& o) {
    auto opt = make_sgd(std::move(params), o);
    seen = opt.get();
    is_sgd = dynamic_cast<torch::optim::SGD*>(seen) != nullptr;
    return opt;
  };
  hooks.after_backward = [&](const std::vector<torch::Tensor>&) {
    lrs.push_back(seen->param_groups().front().options().get_lr());
  };
  auto opts = short_run(40);
  opts.peak_lr = 0.05;
  const auto summary = btx::train_causal_lm(model, repetitive_sampler(), opts, hooks);
  CHECK(is_sgd);
  CHECK(summary.skipped_steps == 0);
  CHECK(summary.final_loss < summary.losses.front() - 0.5);
  const btx::CosineSchedule schedule{0.05, 2, 40, 0.1};
  REQUIRE(lrs.size() == 40);
  for (int64_t s = 0; s < 40; ++s) CHECK(lrs[size_t(s)] == schedule(s));
}

TEST_CASE("hooks: the loss function replaces next_token_loss and is what gets recorded") {
  torch::manual_seed(0);
  btx::LlamaForCausalLM model(btx::test::tiny_config());
  btx::TrainHooks hooks;
  int64_t calls = 0;
  hooks.loss = [&](const torch::Tensor& logits_BSV, const torch::Tensor& targets_BS) {
    ++calls;
    CHECK(logits_BSV.sizes() == torch::IntArrayRef{4, 16, 64});
    CHECK(targets_BS.sizes() == torch::IntArrayRef{4, 16});
    return 0.0 * logits_BSV.sum() + 3.5;
  };
  const auto summary = btx::train_causal_lm(model, repetitive_sampler(), short_run(3), hooks);
  CHECK(calls == 3);
  CHECK(summary.losses == std::vector<double>{3.5, 3.5, 3.5});
  CHECK(summary.final_loss == 3.5);
}

TEST_CASE("hooks: after_backward runs once per step, sees gradients and can change them") {
  torch::manual_seed(0);
  btx::LlamaForCausalLM model(btx::test::tiny_config());
  const auto before = weights_of(model);
  btx::TrainHooks hooks;
  int64_t calls = 0;
  hooks.after_backward = [&](const std::vector<torch::Tensor>& params) {
    ++calls;
    CHECK(params.size() == model->parameters().size());
    double norm = 0.0;
    for (const auto& p : params) {
      REQUIRE(p.grad().defined());
      norm += p.grad().square().sum().item<double>();
      p.grad().zero_();
    }
    CHECK(norm > 0.0);
  };

  SUBCASE("SGD without weight decay: zeroed gradients leave every weight as it was") {
    hooks.optimizer = btx::sgd_factory(/*momentum=*/0.9, /*weight_decay=*/0.0);
    (void)btx::train_causal_lm(model, repetitive_sampler(), short_run(4), hooks);
    CHECK(calls == 4);
    for (const auto& [name, w] : weights_of(model)) {
      INFO(name);
      CHECK(torch::equal(w, before.at(name)));
    }
  }
  SUBCASE("AdamW: zeroed gradients leave only the decoupled weight decay") {
    auto opts = short_run(4);
    (void)btx::train_causal_lm(model, repetitive_sampler(), opts, hooks);
    CHECK(calls == 4);
    const btx::CosineSchedule schedule{opts.peak_lr, opts.warmup_steps, opts.steps,
                                       opts.lr_floor_ratio};
    double shrink = 1.0;
    for (int64_t s = 0; s < opts.steps; ++s) shrink *= 1.0 - schedule(s) * opts.weight_decay;
    for (const auto& [name, w] : weights_of(model)) {
      INFO(name);
      CHECK(torch::allclose(w, before.at(name) * shrink, 1e-5, 1e-7));
    }
  }
}

TEST_CASE("hooks: a gradient made non-finite in after_backward skips the step") {
  torch::manual_seed(0);
  btx::LlamaForCausalLM model(btx::test::tiny_config());
  btx::TrainHooks hooks;
  int64_t step = 0;
  hooks.after_backward = [&](const std::vector<torch::Tensor>& params) {
    if (++step == 2) params.front().grad().fill_(NAN);
  };
  const auto summary = btx::train_causal_lm(model, repetitive_sampler(), short_run(3), hooks);
  CHECK(summary.skipped_steps == 1);
  CHECK(std::isnan(summary.losses[1]));
  CHECK(std::isfinite(summary.losses[2]));
}

TEST_CASE("hooks: place_batch's tensor is the batch the model and the loss see") {
  torch::manual_seed(0);
  btx::LlamaForCausalLM model(btx::test::tiny_config());
  btx::TrainHooks hooks;
  int64_t placed = 0;
  hooks.place_batch = [&](const torch::Tensor& ids_BS) {
    ++placed;
    CHECK(ids_BS.sizes() == torch::IntArrayRef{4, 17});  // S + 1: inputs and shifted targets
    return torch::full_like(ids_BS, 7).to(torch::kLong);
  };
  hooks.loss = [&](const torch::Tensor& logits_BSV, const torch::Tensor& targets_BS) {
    CHECK((targets_BS.scalar_type() == torch::kLong));
    CHECK((targets_BS == 7).all().item<bool>());
    return btx::next_token_loss(logits_BSV, targets_BS);
  };
  const auto summary = btx::train_causal_lm(model, repetitive_sampler(), short_run(30), hooks);
  CHECK(placed == 30);
  CHECK(summary.final_loss < summary.losses.front() - 1.5);  // a constant stream is easy
}

TEST_CASE("hooks: place_model runs once, before the optimizer is built over its parameters") {
  torch::manual_seed(0);
  btx::LlamaForCausalLM model(btx::test::tiny_config());
  btx::TrainHooks hooks;
  std::vector<std::string> order;
  hooks.place_model = [&](torch::nn::Module& m) {
    order.push_back("place_model");
    CHECK((&m == model.get()));
    CHECK(m.is_training());
  };
  hooks.optimizer = [&](std::vector<torch::Tensor> params, const btx::TrainOptions& o) {
    order.push_back("optimizer");
    CHECK(params.size() == model->parameters().size());
    CHECK(o.stage == "hooks");
    return btx::adamw_factory()(std::move(params), o);
  };
  (void)btx::train_causal_lm(model, repetitive_sampler(), short_run(2), hooks);
  CHECK(order == std::vector<std::string>{"place_model", "optimizer"});
}

TEST_CASE("hooks: an empty optimizer factory or loss is refused before training") {
  btx::LlamaForCausalLM model(btx::test::tiny_config());
  btx::TrainHooks hooks;
  hooks.optimizer = nullptr;
  CHECK_THROWS_WITH_AS(btx::train_causal_lm(model, repetitive_sampler(), short_run(1), hooks),
                       doctest::Contains("TrainHooks::optimizer"), std::invalid_argument);
  hooks = {};
  hooks.loss = nullptr;
  CHECK_THROWS_WITH_AS(btx::train_causal_lm(model, repetitive_sampler(), short_run(1), hooks),
                       doctest::Contains("TrainHooks::loss"), std::invalid_argument);
}

TEST_CASE("held-out curves: evaluated when due, in eval mode without gradients, logged") {
  torch::manual_seed(0);
  btx::LlamaForCausalLM model(btx::test::tiny_config());
  auto opts = short_run(7);
  opts.log_every = 2;
  opts.held_out_every = 4;  // steps 4 and 7 (the last)
  std::vector<int64_t> evaluated_after;
  int64_t steps_seen = 0;
  opts.on_step = [&](int64_t) { ++steps_seen; };
  opts.held_out = [&]() -> nlohmann::json {
    CHECK_FALSE(model->is_training());
    CHECK_FALSE(torch::GradMode::is_enabled());
    evaluated_after.push_back(steps_seen);
    return {{"avg", double(steps_seen)}};
  };
  const auto dir = btx::test::scratch_dir("held_out_curves");
  {
    btx::MetricsLog log((dir / "metrics.jsonl").string());
    btx::train_causal_lm(model, repetitive_sampler(), opts, btx::TrainHooks{}, &log);
  }
  CHECK(evaluated_after == std::vector<int64_t>{4, 7});
  CHECK(model->is_training());  // back in training mode after each evaluation
  std::ifstream in(dir / "metrics.jsonl");
  std::map<int64_t, nlohmann::json> records;
  for (std::string line; std::getline(in, line);) {
    const auto r = nlohmann::json::parse(line);
    records[r["step"].get<int64_t>()] = r;
  }
  REQUIRE(records.size() == 4);  // log steps 2, 4, 6, 7
  CHECK_FALSE(records[2].contains("held_out"));
  CHECK(records[4]["held_out"]["avg"] == 4.0);
  CHECK_FALSE(records[6].contains("held_out"));
  CHECK(records[7]["held_out"]["avg"] == 7.0);

  opts.held_out_every = 3;  // not a multiple of log_every: its log record would not exist
  CHECK_THROWS_WITH_AS(btx::train_causal_lm(model, repetitive_sampler(), opts, btx::TrainHooks{}),
                       doctest::Contains("held_out_every (3) must be 0 or a positive multiple "
                                         "of log_every (2)"),
                       std::invalid_argument);
}
