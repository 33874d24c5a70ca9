// SPDX-License-Identifier: MIT
// FusedAdamW (train/fused_adamw.hpp) takes the same steps as LibTorch's AdamW, keeps the
// same state (so checkpoints and resumption see an AdamW), and falls back where the fused
// kernel does not apply.
#include <doctest/doctest.h>

#include <vector>

#include <btx/train/fused_adamw.hpp>
#include <btx/train/optimizer.hpp>
#include <btx/train/optimizer_state.hpp>

namespace {

// Parameters of a few shapes (a matrix, a vector, a 3-D expert stack), one without a grad.
std::vector<torch::Tensor> adamw_params(torch::ScalarType dtype) {
  torch::manual_seed(7);
  std::vector<torch::Tensor> out;
  for (const auto& shape : std::vector<std::vector<int64_t>>{{16, 8}, {8}, {3, 4, 5}, {2}}) {
    out.push_back(torch::randn(shape).to(dtype).requires_grad_(true));
  }
  return out;
}

void give_grads(std::vector<torch::Tensor>& ps, int step) {
  for (size_t i = 0; i + 1 < ps.size(); ++i) {  // the last one gets none
    torch::manual_seed(100 * step + int(i));
    ps[i].mutable_grad() = torch::randn_like(ps[i]);
  }
}

}  // namespace

TEST_CASE("FusedAdamW: the steps and state of LibTorch's AdamW") {
  for (const bool amsgrad : {false, true}) {
    auto a = adamw_params(torch::kFloat32), b = adamw_params(torch::kFloat32);
    const auto options =
        torch::optim::AdamWOptions(1e-2).weight_decay(0.1).betas({0.9, 0.95}).amsgrad(amsgrad);
    torch::optim::AdamW plain(a, options);
    btx::FusedAdamW fused(b, options);
    for (int step = 0; step < 6; ++step) {
      give_grads(a, step);
      give_grads(b, step);
      if (step == 3) {  // the schedule changes the rate between steps
        for (auto* o : std::vector<torch::optim::Optimizer*>{&plain, &fused})
          btx::set_learning_rate(*o, 3e-3);
      }
      plain.step();
      fused.step();
    }
    for (size_t i = 0; i < a.size(); ++i) {
      CHECK(torch::allclose(a[i], b[i], 1e-5, 1e-6));
    }
    CHECK(torch::equal(a.back(), b.back()));  // no grad: untouched by both
    // The state is an AdamW's: what the checkpoint code reads.
    CHECK((btx::optimizer_state_kind(fused) == btx::OptimizerStateKind::adamw));
    const auto& s = static_cast<const torch::optim::AdamWParamState&>(
        *fused.state().at(b[0].unsafeGetTensorImpl()));
    const auto& t = static_cast<const torch::optim::AdamWParamState&>(
        *plain.state().at(a[0].unsafeGetTensorImpl()));
    CHECK(s.step() == 6);
    CHECK(torch::allclose(s.exp_avg(), t.exp_avg(), 1e-5, 1e-7));
    CHECK(torch::allclose(s.exp_avg_sq(), t.exp_avg_sq(), 1e-5, 1e-9));
    CHECK(fused.state().count(b.back().unsafeGetTensorImpl()) == 0);
  }
}

TEST_CASE("FusedAdamW: state resumed from a plain AdamW continues the same") {
  auto a = adamw_params(torch::kFloat32), b = adamw_params(torch::kFloat32);
  const auto options = torch::optim::AdamWOptions(1e-2).weight_decay(0.1);
  torch::optim::AdamW plain(a, options);
  torch::optim::AdamW first(b, options);
  for (int step = 0; step < 2; ++step) {
    give_grads(a, step);
    give_grads(b, step);
    plain.step();
    first.step();
  }
  // A fused optimizer over b taking over first's state, as a resumed run loads it.
  btx::FusedAdamW fused(b, options);
  for (const auto& [key, value] : first.state()) fused.state()[key] = value->clone();
  for (int step = 2; step < 4; ++step) {
    give_grads(a, step);
    give_grads(b, step);
    plain.step();
    fused.step();
  }
  for (size_t i = 0; i < a.size(); ++i) CHECK(torch::allclose(a[i], b[i], 1e-5, 1e-6));
}

TEST_CASE("FusedAdamW: bf16 parameters step like LibTorch's AdamW in bf16") {
  auto a = adamw_params(torch::kBFloat16), b = adamw_params(torch::kBFloat16);
  const auto options = torch::optim::AdamWOptions(1e-2).weight_decay(0.1);
  torch::optim::AdamW plain(a, options);
  btx::FusedAdamW fused(b, options);
  for (int step = 0; step < 3; ++step) {
    give_grads(a, step);
    give_grads(b, step);
    plain.step();
    fused.step();
  }
  for (size_t i = 0; i < a.size(); ++i) {
    CHECK((b[i].scalar_type() == torch::kBFloat16));
    CHECK(torch::allclose(a[i].to(torch::kFloat32), b[i].to(torch::kFloat32), 2e-2, 2e-2));
  }
}
