// SPDX-License-Identifier: MIT
// The MoE layer and its routers: equivalences with dense blocks and naive references,
// capacity dropping, Sample Top-1 reproducibility, statistics and bad input.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <set>

#include <btx/models/llama/compat.hpp>
#include <btx/moe/experts/module_experts.hpp>
#include <btx/moe/experts/packed_swiglu.hpp>
#include <btx/moe/moe_layer.hpp>
#include <btx/moe/routers/sample_top1.hpp>
#include <btx/moe/routers/soft.hpp>
#include <btx/moe/routers/switch.hpp>
#include <btx/moe/routers/top_k.hpp>

#include "../test_support.hpp"

using btx::test::max_abs_diff;

namespace {

constexpr int64_t H = 16, I = 24, E = 4;

// A packed container whose every expert is `dense`.
std::shared_ptr<btx::PackedSwiGLU> same_experts(const btx::LlamaMLP& dense) {
  return btx::PackedSwiGLU::copies_of(*dense, E);
}

// A user's own feed-forward block, unknown to btx: Linear-tanh-Linear.
struct TanhMLPImpl : torch::nn::Cloneable<TanhMLPImpl> {
  TanhMLPImpl() { reset(); }
  void reset() override {
    fc1 = register_module("fc1", torch::nn::Linear(H, 8));
    fc2 = register_module("fc2", torch::nn::Linear(8, H));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(torch::tanh(fc1(x))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(TanhMLP);

template <class R>
torch::Tensor run_identical(std::shared_ptr<R> gate, const btx::LlamaMLP& dense,
                            const torch::Tensor& x) {
  btx::MoE<R, btx::PackedSwiGLU> moe(gate, same_experts(dense));
  return moe->forward(x);
}

}  // namespace

static_assert(btx::Router<btx::TopK> && btx::Router<btx::Switch> && btx::Router<btx::SampleTop1> &&
              btx::Router<btx::Soft>);
static_assert(btx::ExpertContainer<btx::PackedSwiGLU> && btx::ExpertContainer<btx::ModuleExperts>);
static_assert(!btx::Router<btx::PackedSwiGLU> && !btx::has_route<btx::PackedSwiGLU>);
static_assert(!btx::ExpertContainer<btx::TopK> && !btx::runs_expert_block<btx::TopK>);

TEST_CASE("moe: identical experts equal the dense block for every router") {
  torch::manual_seed(0);
  btx::LlamaMLP dense(H, I);
  auto x = torch::randn({2, 5, H});
  auto y = dense->forward(x);
  CHECK(max_abs_diff(run_identical(std::make_shared<btx::TopK>(H, E, 1), dense, x), y) < 1e-5);
  CHECK(max_abs_diff(run_identical(std::make_shared<btx::TopK>(H, E, 2), dense, x), y) < 1e-5);
  CHECK(max_abs_diff(run_identical(std::make_shared<btx::TopK>(H, E, E), dense, x), y) < 1e-5);
  // Capacity E * T: nothing can be dropped.
  CHECK(max_abs_diff(run_identical(std::make_shared<btx::Switch>(H, E, double(E)), dense, x), y) <
        1e-5);
  auto sample = std::make_shared<btx::SampleTop1>(H, E);
  CHECK(max_abs_diff(run_identical(sample, dense, x), y) < 1e-5);  // training: sampled
  sample->eval();
  CHECK(max_abs_diff(run_identical(sample, dense, x), y) < 1e-5);  // eval: argmax
  CHECK(max_abs_diff(run_identical(std::make_shared<btx::Soft>(H, E), dense, x), y) < 1e-5);
}

TEST_CASE("moe: identical module experts equal the block they copy") {
  torch::manual_seed(1);
  torch::nn::AnyModule block(TanhMLP{});
  auto x = torch::randn({7, H});
  btx::MoE<btx::TopK, btx::ModuleExperts> moe(std::make_shared<btx::TopK>(H, E, 2),
                                              btx::ModuleExperts::copies_of(block, E, H));
  CHECK(max_abs_diff(moe->forward(x), block.forward(x)) < 1e-5);
}

TEST_CASE("moe: soft routing equals the explicit softmax-weighted sum of all experts") {
  torch::manual_seed(2);
  auto gate = std::make_shared<btx::Soft>(H, E);
  auto experts = std::make_shared<btx::PackedSwiGLU>(E, H, I);
  btx::MoE<btx::Soft, btx::PackedSwiGLU> moe(gate, experts);
  auto x = torch::randn({9, H});
  auto p = torch::softmax(x.mm(gate->weight.t()), 1);
  auto expected = torch::zeros_like(x);
  for (int64_t e = 0; e < E; ++e) {
    expected += p.select(1, e).unsqueeze(1) * experts->run_expert(e, x);
  }
  CHECK(max_abs_diff(moe->forward(x), expected) < 1e-5);
}

TEST_CASE("moe: top-k matches a naive per-token reference in values and gradients (fp64)") {
  torch::manual_seed(3);
  // Renormalised (Mixtral); then unnormalised with a shared expert (Qwen2-MoE's routing).
  for (const bool qwen2_moe : {false, true}) {
    for (int64_t k : {1, 2, 3}) {
      CAPTURE(qwen2_moe);
      CAPTURE(k);
      auto gate = std::make_shared<btx::TopK>(H, E, k, /*renormalize=*/!qwen2_moe);
      auto experts = std::make_shared<btx::PackedSwiGLU>(E, H, I);
      gate->to(torch::kDouble);
      experts->to(torch::kDouble);
      btx::MoE<btx::TopK, btx::PackedSwiGLU> moe(gate, experts);
      if (qwen2_moe) {
        moe->add_shared_expert(btx::SharedExpertSlot::make(H, 6, btx::GateActivation::silu));
      }
      const auto& shared = moe->shared_expert();
      auto x = torch::randn({13, H}, torch::kDouble).requires_grad_(true);
      auto x_ref = x.detach().clone().requires_grad_(true);
      auto y = moe->forward(x);
      // Naive: softmax, top-k, renormalised or not, one token at a time; plus
      // sigmoid(shared_gate x) * shared_expert(x).
      std::vector<torch::Tensor> rows;
      for (int64_t t = 0; t < x.size(0); ++t) {
        auto xt = x_ref.narrow(0, t, 1);
        auto p = torch::softmax(xt.mm(gate->weight.t()), 1).squeeze(0);
        auto [vals, idx] = p.topk(k);
        auto w = qwen2_moe ? vals : vals / vals.sum();
        auto row = torch::zeros({1, H}, torch::kDouble);
        for (int64_t j = 0; j < k; ++j) {
          row = row + w[j] * experts->run_expert(idx[j].item<int64_t>(), xt);
        }
        if (qwen2_moe) {
          const auto& s_ = shared.expert;
          auto h = torch::silu(xt.mm(s_->gate_proj->weight.t())) * xt.mm(s_->up_proj->weight.t());
          row = row +
                torch::sigmoid(xt.mm(shared.gate->weight.t())) * h.mm(s_->down_proj->weight.t());
        }
        rows.push_back(row);
      }
      auto y_ref = torch::cat(rows, 0);
      CHECK(max_abs_diff(y, y_ref) < 1e-12);
      auto up = torch::randn_like(y);
      auto params = std::vector<torch::Tensor>{gate->weight, experts->gate_proj, experts->up_proj,
                                               experts->down_proj};
      if (qwen2_moe) {
        params.push_back(shared.gate->weight);
        params.push_back(shared.expert->down_proj->weight);
      }
      auto params_x = params;
      params_x.push_back(x);
      auto g = torch::autograd::grad({(y * up).sum()}, params_x);
      params.push_back(x_ref);
      auto g_ref = torch::autograd::grad({(y_ref * up).sum()}, params);
      for (size_t i = 0; i < g.size(); ++i) {
        CAPTURE(i);
        CHECK(max_abs_diff(g[i], g_ref[i]) < 1e-12);
      }
      // The router learns from the loss (with k = 1 and no renormalisation too).
      if (k > 1 || qwen2_moe) CHECK(g[0].abs().sum().item<double>() > 0);
    }
  }
}

TEST_CASE(
    "moe: a shared expert is named as transformers names it, cloned deeply, zero-width adds 0") {
  torch::manual_seed(8);
  auto make = [](int64_t width) {
    btx::MoE<btx::TopK, btx::PackedSwiGLU> moe(std::make_shared<btx::TopK>(H, E, 2),
                                               std::make_shared<btx::PackedSwiGLU>(E, H, I));
    moe->add_shared_expert(btx::SharedExpertSlot::make(H, width, btx::GateActivation::silu));
    return moe;
  };
  auto moe = make(6);
  const auto names = moe->named_parameters();
  CHECK(names.contains("shared_expert.gate_proj.weight"));
  CHECK(names.contains("shared_expert.down_proj.weight"));
  CHECK(names["shared_expert_gate.weight"].sizes() == torch::IntArrayRef({1, H}));
  CHECK_THROWS_WITH_AS(
      moe->add_shared_expert(btx::SharedExpertSlot::make(H, 6, btx::GateActivation::silu)),
      doctest::Contains("has one already"), std::logic_error);
  auto copy = std::dynamic_pointer_cast<btx::MoEImpl<btx::TopK, btx::PackedSwiGLU>>(moe->clone());
  REQUIRE(copy);
  auto x = torch::randn({5, H});
  CHECK(max_abs_diff(copy->forward(x), moe->forward(x)) == 0.0);
  {
    torch::NoGradGuard no_grad;
    copy->shared_expert().expert->down_proj->weight.add_(1.0);
  }
  CHECK(max_abs_diff(copy->forward(x), moe->forward(x)) > 0.1);
  // Zero width: exactly the routed output.
  auto zero = make(0);
  btx::MoE<btx::TopK, btx::PackedSwiGLU> routed(zero->gate_ptr(), zero->experts_ptr());
  CHECK(max_abs_diff(zero->forward(x), routed->forward(x)) == 0.0);
}

TEST_CASE("moe: switch drops exactly the assignments over capacity, in token order") {
  torch::manual_seed(4);
  auto gate = std::make_shared<btx::Switch>(H, E, 1.0);
  {
    torch::NoGradGuard no_grad;
    gate->weight.zero_();
    gate->weight[2].fill_(1.0);  // positive inputs all prefer expert 2
  }
  auto experts = std::make_shared<btx::PackedSwiGLU>(E, H, I);
  btx::MoE<btx::Switch, btx::PackedSwiGLU> moe(gate, experts);
  const int64_t T = 10;  // capacity = ceil(1.0 * 10 / 4) = 3
  auto x = torch::rand({T, H}) + 0.1;
  CHECK(gate->capacity(T) == 3);
  auto r = gate->route(x);
  auto dropped = r.dropped_TK.squeeze(1);
  CHECK(dropped.sum().item<int64_t>() == T - 3);
  CHECK_FALSE(dropped.slice(0, 0, 3).any().item<bool>());
  CHECK(dropped.slice(0, 3).all().item<bool>());
  auto y = moe->forward(x);
  CHECK(max_abs_diff(y.slice(0, 0, 3), experts->run_expert(2, x.slice(0, 0, 3))) < 1e-5);
  CHECK(y.slice(0, 3).abs().max().item<double>() == 0.0);
  CHECK(moe->last_stats().dropped == T - 3);
  CHECK(moe->last_stats().tokens_per_expert[2].item<int64_t>() == 3);
}

TEST_CASE("moe: sample top-1 reproduces with a seed, anneals, and is argmax at eval") {
  torch::manual_seed(5);
  auto x = torch::randn({64, H});
  btx::TemperatureSchedule schedule{2.0, 0.5, 0.5};
  auto a = std::make_shared<btx::SampleTop1>(H, E, schedule, 7);
  auto b = std::make_shared<btx::SampleTop1>(H, E, schedule, 7);
  {
    torch::NoGradGuard no_grad;
    b->weight.copy_(a->weight);
  }
  auto ra1 = a->route(x), ra2 = a->route(x), rb1 = b->route(x);
  CHECK(torch::equal(ra1.indices_TK, rb1.indices_TK));
  CHECK_FALSE(torch::equal(ra1.indices_TK, ra2.indices_TK));  // fresh noise each call
  CHECK(ra1.indices_TK.ne(ra1.logits_TE.argmax(1, true)).any().item<bool>());  // it samples
  CHECK(a->step() == 2);
  CHECK(a->temperature() == doctest::Approx(2.0 * std::exp(-1.0)));
  for (int i = 0; i < 10; ++i) a->route(x);
  CHECK(a->temperature() == 0.5);  // the floor
  CHECK(max_abs_diff(ra1.weights_TK, torch::ones_like(ra1.weights_TK)) == 0.0);
  a->eval();
  auto re = a->route(x);
  CHECK(torch::equal(re.indices_TK, re.logits_TE.argmax(1, true)));
  CHECK(a->step() == 12);  // eval calls do not advance the schedule
}

TEST_CASE("moe: forward keeps [B, T, H], records statistics and flows gradients") {
  torch::manual_seed(6);
  btx::MoE<btx::TopK, btx::PackedSwiGLU> moe(std::make_shared<btx::TopK>(H, E, 2),
                                             std::make_shared<btx::PackedSwiGLU>(E, H, I));
  auto x = torch::randn({3, 4, H});
  auto y = moe->forward(x);
  CHECK(y.sizes() == x.sizes());
  const auto& s = moe->last_stats();
  CHECK(s.tokens == 12);
  CHECK(s.tokens_per_expert.sum().item<int64_t>() == 24);
  CHECK(s.entropy() > 0.0);
  CHECK(s.entropy() <= std::log(double(E)) + 1e-9);
  (y.sum() + btx::collect_aux_loss(*moe)).backward();
  CHECK(moe->gate().weight.grad().defined());
  CHECK(moe->experts().down_proj.grad().defined());
  std::set<std::string> names;
  for (const auto& p : moe->named_parameters()) names.insert(p.key());
  CHECK(names == std::set<std::string>{"gate.weight", "experts.gate_proj", "experts.up_proj",
                                       "experts.down_proj"});
}

TEST_CASE("moe: bf16 hidden states route in fp32 and compute experts in bf16") {
  torch::manual_seed(9);
  auto gate = std::make_shared<btx::TopK>(H, E, 2);
  auto experts = std::make_shared<btx::PackedSwiGLU>(E, H, I);
  btx::MoE<btx::TopK, btx::PackedSwiGLU> moe(gate, experts);
  auto x = torch::randn({6, H});
  auto y32 = moe->forward(x);
  moe->to(torch::kBFloat16);
  auto r = gate->route(x.to(torch::kBFloat16));
  CHECK((r.logits_TE.scalar_type() == torch::kFloat32));
  CHECK((r.weights_TK.scalar_type() == torch::kFloat32));
  auto y16 = moe->forward(x.to(torch::kBFloat16));
  CHECK((y16.scalar_type() == torch::kBFloat16));
  CHECK(max_abs_diff(y16, y32) < 0.05 * y32.abs().max().item<double>() + 1e-2);
}

TEST_CASE("moe: an empty batch gives an empty output for every router") {
  torch::manual_seed(8);
  btx::LlamaMLP dense(H, I);
  auto x = torch::randn({0, 3, H});
  CHECK(run_identical(std::make_shared<btx::TopK>(H, E, 2), dense, x).sizes() == x.sizes());
  CHECK(run_identical(std::make_shared<btx::Switch>(H, E), dense, x).sizes() == x.sizes());
  CHECK(run_identical(std::make_shared<btx::SampleTop1>(H, E), dense, x).sizes() == x.sizes());
  CHECK(run_identical(std::make_shared<btx::Soft>(H, E), dense, x).sizes() == x.sizes());
}

TEST_CASE("moe: clone is a deep copy with equal outputs") {
  torch::manual_seed(7);
  torch::nn::AnyModule block(torch::nn::Linear(H, H));
  btx::MoE<btx::TopK, btx::ModuleExperts> moe(std::make_shared<btx::TopK>(H, E, 2),
                                              btx::ModuleExperts::copies_of(block, E, H));
  auto copy = std::dynamic_pointer_cast<btx::MoEImpl<btx::TopK, btx::ModuleExperts>>(moe->clone());
  REQUIRE(copy);
  auto x = torch::randn({5, H});
  CHECK(max_abs_diff(copy->forward(x), moe->forward(x)) == 0.0);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : copy->parameters()) p.add_(1.0);
  }
  CHECK(max_abs_diff(copy->forward(x), moe->forward(x)) > 0.1);
}

TEST_CASE("moe: bad input throws a message naming the problem") {
  auto msg = [](auto&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("no exception");
  };
  CHECK(msg([] { btx::TopK(H, E, E + 1); }).find("k must be in") != std::string::npos);
  CHECK(msg([] { btx::Switch(H, E, 0.0); }).find("capacity_factor") != std::string::npos);
  CHECK(msg([] { btx::TopK(H, 0, 1); }).find("k must be in") != std::string::npos);
  CHECK(msg([] { btx::Soft(H, 0); }).find("num_experts") != std::string::npos);
  CHECK(msg([] { btx::PackedSwiGLU(0, H, I); }).find("num_experts") != std::string::npos);
  CHECK(msg([] {
          btx::MoE<btx::TopK, btx::PackedSwiGLU>(std::make_shared<btx::TopK>(H + 1, E, 2),
                                                 std::make_shared<btx::PackedSwiGLU>(E, H, I));
        }).find("hidden_size") != std::string::npos);
  CHECK(msg([] {
          btx::MoE<btx::TopK, btx::PackedSwiGLU>(std::make_shared<btx::TopK>(H, E + 1, 2),
                                                 std::make_shared<btx::PackedSwiGLU>(E, H, I));
        }).find("num_experts") != std::string::npos);
  btx::MoE<btx::TopK, btx::PackedSwiGLU> moe(std::make_shared<btx::TopK>(H, E, 2),
                                             std::make_shared<btx::PackedSwiGLU>(E, H, I));
  CHECK(msg([&] {
          moe->forward(torch::randn({3, H + 1}));
        }).find("hidden_size") != std::string::npos);
  auto x = torch::randn({3, H});
  x[1][2] = std::numeric_limits<float>::quiet_NaN();
  CHECK(msg([&] { moe->forward(x); }).find("non-finite router logits") != std::string::npos);
}
