// SPDX-License-Identifier: MIT
// Device placement and host reads, seen op by op (tests/op_trace.hpp): the MoE layer,
// the trainer and the merge create every tensor on their inputs' device (none on the
// default device, where a GPU run would find them), and the MoE forward reads the host
// once, for the block sizes its dispatch needs; statistics stay on the device.
#include <doctest/doctest.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <btx/core/detail/host_read.hpp>
#include <btx/merge/checkpoint_source.hpp>
#include <btx/merge/mixers.hpp>
#include <btx/merge/trunk_merging.hpp>
#include <btx/models/llama/compat.hpp>
#include <btx/moe/moe_layer.hpp>
#include <btx/moe/router_registry.hpp>
#include <btx/train/loss.hpp>
#include <btx/train/precision.hpp>
#include <btx/train/trainer.hpp>

#include "../op_trace.hpp"
#include "../scratch.hpp"
#include "../test_support.hpp"

BTX_TEST_REGISTER_OP_TRACE()

namespace {

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

}  // namespace

TEST_CASE(
    "device placement: every router's MoE forward creates nothing on the default device "
    "and reads the host once per layer") {
  const auto config = btx::test::tiny_config();
  for (std::string router : btx::router_names()) {
    // Families of routers ("topk:K", a test's "first:N") with a member.
    if (router.ends_with(":K") || router.ends_with(":N")) router.replace(router.size() - 1, 1, "2");
    CAPTURE(router);
    torch::manual_seed(3);
    btx::LlamaForCausalLM model(config,
                                btx::moe_feed_forward({.num_experts = 4, .router = router}));
    const auto ids = torch::randint(config.vocab_size, {2, 9}, torch::kLong);
    btx::test::OpTrace forward, backward;
    torch::Tensor loss;
    const int64_t before = btx::host_reads();
    {
      btx::test::TraceScope scope(forward);
      loss = btx::next_token_loss(model->forward(ids.slice(1, 0, 8)), ids.slice(1, 1, 9)) +
             btx::collect_aux_loss(*model);
    }
    const int64_t forward_reads = btx::host_reads() - before;
    {
      btx::test::TraceScope scope(backward);
      loss.backward();
    }
    CHECK_MESSAGE(forward.default_device_factories.empty(),
                  joined(forward.default_device_factories));
    CHECK_MESSAGE(backward.default_device_factories.empty(),
                  joined(backward.default_device_factories));
    CHECK(forward_reads == 2);  // one per MoE layer: the dispatch's block sizes
    CHECK(btx::host_reads() - before == forward_reads);
    CHECK_MESSAGE(forward.syncs.empty(), joined(forward.syncs));
    CHECK_MESSAGE(backward.syncs.empty(), joined(backward.syncs));
    CHECK(forward.calls.size() > 10);  // the trace saw the forward
    CHECK(forward.output_devices == std::set<std::string>{"cpu"});
  }
}

TEST_CASE(
    "device placement: a training step creates nothing on the default device and reads "
    "the host once, plus once per MoE layer") {
  torch::manual_seed(5);
  const auto config = btx::test::tiny_config();
  btx::LlamaForCausalLM model(config, btx::moe_feed_forward({.num_experts = 4}));
  auto stream = torch::arange(2048, torch::kInt32).remainder(config.vocab_size);
  const btx::WindowSampler sampler({stream}, {}, 16, 5);
  // Traced from after each batch is drawn (the sampler's windows are host data by design)
  // to the start of the next step: forward, loss, backward, clipping, the optimizer step.
  btx::test::OpTrace trace;
  std::optional<btx::test::TraceScope> scope;
  std::vector<int64_t> reads_at_batch, reads_at_step;
  auto hooks = btx::placed({torch::kCPU, btx::Precision::fp32});
  hooks.aux_loss = [&] { return btx::collect_aux_loss(*model); };
  hooks.before_step = [&](const std::string&, int64_t) {
    scope.reset();
    reads_at_step.push_back(btx::host_reads());
  };
  hooks.place_batch = [&, place = hooks.place_batch](const torch::Tensor& ids_BS) {
    reads_at_batch.push_back(btx::host_reads());
    scope.emplace(trace);
    return place(ids_BS);
  };
  const int64_t steps = 4;
  btx::train_causal_lm(model, sampler, {.stage = "trace", .steps = steps, .batch_size = 2}, hooks);
  scope.reset();
  CHECK_MESSAGE(trace.default_device_factories.empty(), joined(trace.default_device_factories));
  CHECK_MESSAGE(trace.syncs.empty(), joined(trace.syncs));
  CHECK(trace.calls.count("aten::_fused_adamw_") + trace.calls.count("aten::add_") > 0);
  REQUIRE(reads_at_step.size() == size_t(steps));
  for (int64_t s = 0; s + 1 < steps; ++s)  // 2 MoE layers + the step's loss/total/norm read
    CHECK(reads_at_step[size_t(s + 1)] - reads_at_batch[size_t(s)] == 3);
}

// Reads from disk and seeded draws (DARE masks, router init, upcycling noise) are made on
// the CPU by name, so a merge gives the same bits on every compute device.
TEST_CASE(
    "device placement: merges create nothing on the default device, only on the compute "
    "device or, by name, on the CPU") {
  const auto root = btx::test::scratch_dir("placement-merge");
  const auto config = btx::test::tiny_config();
  std::vector<std::filesystem::path> dirs;
  for (int j = 0; j < 3; ++j) {
    torch::manual_seed(20 + j);
    btx::LlamaForCausalLM model(config);
    dirs.push_back(root / std::to_string(j));
    btx::hf::save_hf_checkpoint(*model, config, dirs.back());
  }
  const auto sources = btx::merge::checkpoint_sources(dirs, torch::kCPU);
  const std::vector<btx::merge::CheckpointSource> seed = {sources.front()};
  btx::test::OpTrace trace;
  {
    btx::test::TraceScope scope(trace);
    (void)btx::merge::materialize(btx::merge::BtxMix<>{}.plan(sources));
    (void)btx::merge::materialize(
        btx::merge::BtxMix<btx::merge::Dare>{{.density = 0.5}}.plan(sources, &seed.front()));
    (void)btx::merge::materialize(
        btx::merge::Upcycle<>{.num_experts = 2, .noise_std = 0.01}.plan(seed));
    (void)btx::merge::materialize(btx::merge::BtmMerge<>{}.plan(sources));
  }
  CHECK_MESSAGE(trace.default_device_factories.empty(), joined(trace.default_device_factories));
  CHECK_MESSAGE(trace.syncs.empty(), joined(trace.syncs));
  CHECK(trace.calls.size() > 5);
}
