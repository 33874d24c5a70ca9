// SPDX-License-Identifier: MIT
// Activation checkpointing (train/activation_checkpoint.hpp) and gradient accumulation
// (TrainOptions::micro_batches): the same gradients as the plain forward, with every layer
// run a second time in backward; MoE aux losses keep their gradient; routers with state
// (sample_top1's noise step, sigmoid_topk's balancing bias) advance once per step.
#include <doctest/doctest.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <btx/core/extra_state.hpp>
#include <btx/core/layer_stack.hpp>
#include <btx/models/llama/compat.hpp>
#include <btx/moe/moe_layer.hpp>
#include <btx/train/activation_checkpoint.hpp>
#include <btx/train/trainer.hpp>

#include "../test_support.hpp"

namespace {

btx::LlamaForCausalLM checkpoint_test_model(const std::string& router) {
  torch::manual_seed(11);
  auto config = btx::test::tiny_config();
  config.max_position_embeddings = 64;
  if (router.empty()) return btx::LlamaForCausalLM(config);
  return btx::LlamaForCausalLM(
      config,
      btx::moe_feed_forward({.num_experts = 4, .router = router, .load_balance_alpha = 0.05}));
}

// Gradients of one LM + aux loss step, with or without checkpointing; counts layer calls.
std::map<std::string, torch::Tensor> checkpoint_test_grads(btx::LlamaForCausalLM& model,
                                                           bool checkpoint, int64_t* calls) {
  const auto ids = torch::arange(2 * 17).remainder(64).view({2, 17});
  btx::LayerRunnerOverride counting(*model, [&](const btx::LayerRunner& previous) {
    btx::LayerRunner inner = [calls](int64_t, const btx::LayerForward& f, const torch::Tensor& x) {
      ++*calls;
      return f(x);
    };
    return btx::nest_runners(
        previous, checkpoint ? btx::nest_runners(btx::checkpointing_runner(), inner) : inner);
  });
  model->zero_grad();
  model->train();
  auto logits = model->forward(ids.slice(1, 0, 16));
  auto loss = btx::next_token_loss(logits, ids.slice(1, 1, 17)) + btx::collect_aux_loss(*model);
  loss.backward();
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : model->named_parameters()) {
    if (p.value().grad().defined()) out[p.key()] = p.value().grad().clone();
  }
  return out;
}

}  // namespace

TEST_CASE("activation checkpointing: the same gradients, every layer run twice") {
  for (const std::string router : {"", "top2", "sample_top1", "sigmoid_topk"}) {
    CAPTURE(router);
    auto plain = checkpoint_test_model(router);
    auto ckpt = checkpoint_test_model(router);
    int64_t plain_calls = 0, ckpt_calls = 0;
    const auto expected = checkpoint_test_grads(plain, false, &plain_calls);
    const auto got = checkpoint_test_grads(ckpt, true, &ckpt_calls);
    const int64_t layers = btx::test::tiny_config().num_hidden_layers;
    CHECK(plain_calls == layers);
    CHECK(ckpt_calls == 2 * layers);  // the forward, then the recompute in backward
    REQUIRE(got.size() == expected.size());
    for (const auto& [name, g] : expected) {
      CAPTURE(name);
      REQUIRE(got.count(name));
      CHECK(btx::test::max_abs_diff(got.at(name), g) <= 1e-6);
    }
    if (router.empty()) continue;
    // The router's gradient includes the aux loss's (it reached the checkpointed layer).
    bool router_grad = false;
    for (const auto& [name, g] : got) router_grad |= name.find("gate") != std::string::npos;
    CHECK(router_grad);
    // Router state advanced once, as in the plain forward: sigmoid_topk's balancing bias
    // (a parameter without gradient), sample_top1's noise step (extra state).
    const auto plain_params = plain->named_parameters();
    for (const auto& p : ckpt->named_parameters()) {
      CAPTURE(p.key());
      CHECK(btx::test::max_abs_diff(p.value(), plain_params[p.key()]) == 0.0);
    }
    const auto plain_modules = plain->named_modules();
    for (const auto& m : ckpt->named_modules()) {
      const auto* state = dynamic_cast<const btx::ExtraState*>(m.value().get());
      if (!state) continue;
      const auto* reference = dynamic_cast<const btx::ExtraState*>(plain_modules[m.key()].get());
      for (const auto& [key, value] : state->extra_state()) {
        CAPTURE(key);
        CHECK(torch::equal(value, reference->extra_state().at(key)));
      }
    }
  }
}

TEST_CASE("activation checkpointing: without gradients the layer runs once") {
  auto model = checkpoint_test_model("");
  int64_t calls = 0;
  btx::LayerRunnerOverride counting(*model, [&](const btx::LayerRunner&) {
    return btx::nest_runners(btx::checkpointing_runner(),
                             [&calls](int64_t, const btx::LayerForward& f, const torch::Tensor& x) {
                               ++calls;
                               return f(x);
                             });
  });
  torch::NoGradGuard no_grad;
  (void)model->forward(torch::zeros({1, 8}, torch::kInt64));
  CHECK(calls == btx::test::tiny_config().num_hidden_layers);
}

TEST_CASE("train: activation checkpointing and micro-batches train as the plain loop does") {
  auto stream = torch::arange(4000).remainder(16).to(torch::kInt32);
  btx::WindowSampler sampler({stream}, {}, 16, 1);
  const auto run = [&](bool checkpoint, int64_t micro) {
    auto model = checkpoint_test_model("");
    btx::TrainOptions o{.stage = "ckpt",
                        .steps = 6,
                        .batch_size = 4,
                        .warmup_steps = 2,
                        .micro_batches = micro,
                        .activation_checkpointing = checkpoint,
                        .log_every = 100};
    auto summary = btx::train_causal_lm(model, sampler, o);
    CHECK(model->model->layer_runner() == nullptr);  // the loop put the runner back
    return std::make_pair(summary.losses, model->named_parameters()["model.norm.weight"].clone());
  };
  const auto [plain_losses, plain_w] = run(false, 1);
  for (const auto& [checkpoint, micro] :
       {std::pair{true, int64_t(1)}, {false, int64_t(2)}, {true, int64_t(4)}}) {
    CAPTURE(checkpoint);
    CAPTURE(micro);
    const auto [losses, w] = run(checkpoint, micro);
    REQUIRE(losses.size() == plain_losses.size());
    for (size_t i = 0; i < losses.size(); ++i) CHECK(std::abs(losses[i] - plain_losses[i]) < 1e-5);
    CHECK(btx::test::max_abs_diff(w, plain_w) < 1e-5);
  }
}

TEST_CASE("train: micro_batches that do not divide the batch are named") {
  auto stream = torch::arange(4000).remainder(16).to(torch::kInt32);
  btx::WindowSampler sampler({stream}, {}, 16, 1);
  auto model = checkpoint_test_model("");
  btx::TrainOptions o{
      .stage = "odd", .steps = 2, .batch_size = 4, .micro_batches = 3, .log_every = 100};
  CHECK_THROWS_WITH(btx::train_causal_lm(model, sampler, o),
                    doctest::Contains("4 sequences per step (on this rank) do not split into 3"));
  o.micro_batches = 0;
  CHECK_THROWS_WITH(btx::train_causal_lm(model, sampler, o),
                    doctest::Contains("micro_batches must be >= 1"));
}
