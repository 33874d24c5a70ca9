// SPDX-License-Identifier: MIT
// Device and precision (train/precision.hpp) and the grouped-GEMM experts: devices this
// machine lacks are refused before any work; bf16 mixed precision tracks fp32 training;
// routing and aux losses stay fp32 under autocast; pure bf16 keeps bf16 weights and
// optimizer state, on disk too; the grouped kernel equals the per-expert loop.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include <btx/io/safetensors_reader.hpp>
#include <btx/models/auto.hpp>
#include <btx/models/llama/compat.hpp>
#include <btx/models/llama/family.hpp>
#include <btx/moe/experts/packed_swiglu.hpp>
#include <btx/moe/moe_layer.hpp>
#include <btx/moe/routers/top_k.hpp>
#include <btx/train/checkpoint.hpp>
#include <btx/train/precision.hpp>
#include <btx/train/trainer.hpp>

#include "../scratch.hpp"
#include "../test_support.hpp"

namespace {

btx::WindowSampler stream_sampler(int64_t vocab) {
  auto stream = torch::empty({4096}, torch::kInt32);
  for (int64_t i = 0; i < stream.numel(); ++i)
    stream.data_ptr<int32_t>()[i] = int32_t((i * 7 + i / 13) % vocab);
  return btx::WindowSampler({stream}, {}, 16, 5);
}

// The loss of every step of 50 on a tiny Llama (an MoE one when `moe`), in `precision`.
std::vector<double> losses(btx::Precision precision, bool moe) {
  torch::manual_seed(11);
  const auto config = btx::test::tiny_config();
  btx::LlamaForCausalLM model =
      moe ? btx::LlamaForCausalLM(config, btx::moe_feed_forward({.num_experts = 4}))
          : btx::LlamaForCausalLM(config);
  const auto sampler = stream_sampler(config.vocab_size);
  auto hooks = btx::placed({torch::kCPU, precision});
  if (moe) hooks.aux_loss = [&] { return btx::collect_aux_loss(*model); };
  return btx::train_causal_lm(model, sampler,
                              {.stage = "bf16", .steps = 50, .batch_size = 4, .log_every = 50},
                              hooks)
      .losses;
}

}  // namespace

TEST_CASE("precision: devices are checked when named, precisions parsed") {
  CHECK(btx::parse_device("cpu").is_cpu());
  if (!torch::cuda::is_available()) {
    CHECK_THROWS_WITH_AS(btx::parse_device("cuda"), doctest::Contains("has no CUDA device"),
                         std::invalid_argument);
    CHECK_THROWS_WITH_AS(btx::parse_device("cuda:1"), doctest::Contains("has no CUDA device"),
                         std::invalid_argument);
  }
  CHECK_THROWS_WITH_AS(btx::parse_device("gpu0"), doctest::Contains("not cpu, cuda or cuda:N"),
                       std::invalid_argument);
  CHECK((btx::parse_precision("bf16-mixed") == btx::Precision::bf16_mixed));
  CHECK(btx::precision_name(btx::parse_precision("bf16")) == "bf16");
  CHECK_THROWS_WITH_AS(btx::parse_precision("fp16"), doctest::Contains("fp32, bf16-mixed, bf16"),
                       std::invalid_argument);
}

TEST_CASE("precision: bf16 mixed precision tracks fp32 training over 50 steps, dense and MoE") {
  for (const bool moe : {false, true}) {
    const auto fp32 = losses(btx::Precision::fp32, moe);
    const auto mixed = losses(btx::Precision::bf16_mixed, moe);
    REQUIRE(fp32.size() == 50);
    REQUIRE(mixed.size() == 50);
    double worst = 0.0;
    for (size_t i = 0; i < fp32.size(); ++i) worst = std::max(worst, std::abs(fp32[i] - mixed[i]));
    MESSAGE(std::string(moe ? "MoE" : "dense")
            << ": largest |bf16-mixed - fp32| step loss " << worst << ", final " << mixed.back()
            << " vs " << fp32.back());
    CHECK(worst < 0.01);  // the stated tolerance, nats per token (measured: 5e-4 and 3e-3)
    CHECK(mixed.back() < mixed.front() - 0.5);  // and it trains
    CHECK(worst > 0.0);                         // it did compute in bf16
  }
}

TEST_CASE("precision: routing, its softmax and the aux losses stay fp32 under autocast") {
  torch::manual_seed(2);
  auto gate = std::make_shared<btx::TopK>(32, 4, 2);
  btx::MoE<btx::TopK, btx::PackedSwiGLU> layer(
      gate, std::make_shared<btx::PackedSwiGLU>(4, 32, 64),
      btx::AuxLossOptions{0.01, btx::LoadBalanceForm::btx, 1e-3});
  const auto x = torch::randn({2, 5, 32});
  auto hooks = btx::placed({torch::kCPU, btx::Precision::bf16_mixed});
  const auto scope = hooks.forward_scope();
  const auto r = gate->route(x.reshape({-1, 32}));
  CHECK((r.logits_TE.scalar_type() == torch::kFloat32));
  CHECK((r.probs_TE.scalar_type() == torch::kFloat32));
  CHECK((r.weights_TK.scalar_type() == torch::kFloat32));
  const auto y = layer->forward(x);
  CHECK((y.scalar_type() == torch::kFloat32));  // the residual stream's dtype
  CHECK((layer->aux_loss().scalar_type() == torch::kFloat32));
  // ... while the experts' matmuls ran in bf16.
  CHECK((torch::mm(x.reshape({-1, 32}), torch::randn({32, 8})).scalar_type() == torch::kBFloat16));
}

TEST_CASE("precision: pure bf16 keeps bf16 weights and optimizer state, on disk and on resume") {
  const auto dir = btx::test::scratch_dir("bf16-ckpt");
  const auto config = btx::test::tiny_config();
  const auto sampler = stream_sampler(config.vocab_size);
  const btx::TrainOptions options{.stage = "bf16",
                                  .steps = 6,
                                  .batch_size = 4,
                                  .checkpoint_dir = (dir / "ckpt").string(),
                                  .checkpoint_every = 3};
  torch::manual_seed(3);
  btx::LlamaForCausalLM model(config);
  const auto summary = btx::train_causal_lm(model, sampler, options,
                                            btx::placed({torch::kCPU, btx::Precision::bf16}));
  for (const auto& p : model->parameters()) CHECK((p.scalar_type() == torch::kBFloat16));
  CHECK(summary.losses.back() < summary.losses.front());
  const auto weights =
      btx::io::load_safetensors(dir / "ckpt" / "step-000006" / "model.safetensors");
  for (const auto& [name, t] : weights) CHECK((t.scalar_type() == torch::kBFloat16));
  const auto state =
      btx::io::load_safetensors(dir / "ckpt" / "step-000006" / "optimizer.safetensors");
  bool any_moment = false;
  for (const auto& [name, t] : state) {
    if (t.dim() > 0 && t.numel() > 1) {
      CHECK((t.scalar_type() == torch::kBFloat16));
      any_moment = true;
    }
  }
  CHECK(any_moment);
  // A resumed bf16 run continues from the bf16 checkpoint.
  btx::LlamaForCausalLM again(config);
  const auto resumed = btx::train_causal_lm(again, sampler, options,
                                            btx::placed({torch::kCPU, btx::Precision::bf16}));
  CHECK(resumed.resumed_from_step == 6);
  for (const auto& p : again->named_parameters())
    CHECK(torch::equal(p.value(), model->named_parameters()[p.key()]));
  // The HF checkpoint keeps bf16 on disk and loads in bf16 onto the device asked for.
  // (LibTorch's Module::to cannot move parameters to the meta device, so the CPU it is.)
  btx::save_hf_checkpoint(btx::LlamaFamily::wrap(model), dir / "hf");
  for (const auto& [name, t] : btx::io::load_safetensors(dir / "hf" / "model.safetensors"))
    CHECK((t.scalar_type() == torch::kBFloat16));
  const auto loaded = btx::load_causal_lm(dir / "hf", torch::kBFloat16, {}, torch::kCPU);
  for (const auto& p : loaded.named_parameters())
    CHECK(torch::equal(p.value(), model->named_parameters()[p.key()]));
}

TEST_CASE("grouped experts: grouped GEMMs equal the per-expert loop, values and gradients") {
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    torch::manual_seed(4);
    auto experts = btx::PackedSwiGLU(4, 16, 24);
    experts.to(dtype);
    const std::vector<int64_t> counts = {3, 0, 5, 2};  // an expert with no rows
    const auto x = torch::randn({10, 16}).to(dtype);
    const auto g = torch::randn({10, 16}).to(dtype);
    if (!btx::grouped_mm_supported(torch::kCPU, dtype)) {
      MESSAGE("at::_grouped_mm does not run " << c10::toString(dtype) << " on this CPU");
      continue;
    }
    const auto run = [&](btx::ExpertKernel kernel) {
      experts.set_kernel(kernel);
      experts.zero_grad();
      auto xi = x.clone().requires_grad_(true);
      auto y = experts.run_sorted(xi, counts);
      (y * g).sum().backward();
      return std::vector<torch::Tensor>{y.detach(), xi.grad(), experts.gate_proj.grad().clone(),
                                        experts.up_proj.grad().clone(),
                                        experts.down_proj.grad().clone()};
    };
    CHECK(experts.uses_grouped_mm(x));
    const auto grouped = run(btx::ExpertKernel::grouped);
    const auto loop = run(btx::ExpertKernel::loop);
    const double tolerance = dtype == torch::kFloat32 ? 1e-5 : 5e-2;
    for (size_t i = 0; i < grouped.size(); ++i) {
      CHECK((grouped[i].scalar_type() == dtype));
      CHECK(btx::test::max_abs_diff(grouped[i], loop[i]) <= tolerance);
    }
  }
}

TEST_CASE("grouped experts: the grouped kernel where it cannot run is refused, naming why") {
  auto experts = btx::PackedSwiGLU(2, 8, 8);
  experts.to(torch::kFloat64);
  const auto x = torch::randn({3, 8}, torch::kFloat64);
  if (btx::grouped_mm_supported(torch::kCPU, torch::kFloat64)) return;  // nothing to refuse
  experts.set_kernel(btx::ExpertKernel::grouped);
  CHECK_THROWS_WITH_AS(experts.run_sorted(x, {1, 2}), doctest::Contains("cannot run here"),
                       std::invalid_argument);
  experts.set_kernel(btx::ExpertKernel::automatic);  // falls back to the loop
  CHECK(experts.run_sorted(x, {1, 2}).sizes() == x.sizes());
}
