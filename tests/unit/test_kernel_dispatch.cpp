// SPDX-License-Identifier: MIT
// The compiled-kernel seam on the CPU: with nothing compiled registered, routing and
// combining take the header-only path; an implementation registered for a device type is
// what the router and the MoE layer then run; set_header_only forces the header-only path.
#include <doctest/doctest.h>

#include <btx/kernels/dispatch.hpp>
#include <btx/moe/experts/packed_swiglu.hpp>
#include <btx/moe/router_registry.hpp>

#include "../test_support.hpp"

using btx::test::max_abs_diff;
namespace kernels = btx::kernels;

TEST_CASE("kernel dispatch: falls back to the header-only path, picks a registered one") {
  kernels::registry().clear();
  kernels::set_header_only(false);
  torch::manual_seed(3);
  const auto logits_TE = torch::randn({7, 5});
  CHECK(kernels::implementation("top_k_gating", torch::kCPU) == "header-only");
  const auto ref = kernels::top_k_gating(logits_TE, 2, true);
  CHECK(ref.indices_TK.equal(std::get<1>(logits_TE.topk(2, 1))));
  CHECK(max_abs_diff(ref.weights_TK.sum(1), torch::ones({7})) < 1e-6);

  // A "compiled" CPU implementation (here: the reference, counting its calls) is picked by
  // the top-k router and by the MoE layer's combine.
  int gating_calls = 0, combine_calls = 0;
  kernels::registry().provide_top_k_gating(
      torch::kCPU, [&](const torch::Tensor& l, int64_t k, bool renormalize) {
        ++gating_calls;
        return kernels::top_k_gating_reference(l, k, renormalize);
      });
  kernels::registry().provide_combine(
      torch::kCPU,
      [&](const torch::Tensor& y, const torch::Tensor& token, const torch::Tensor& w, int64_t T) {
        ++combine_calls;
        return kernels::combine_reference(y, token, w, T);
      });
  CHECK(kernels::implementation("top_k_gating", torch::kCPU) == "compiled");
  CHECK(kernels::implementation("top_k_gating", torch::kCUDA) == "header-only");
  auto experts = std::make_shared<btx::PackedSwiGLU>(4, 16, 8);
  auto layer = btx::make_moe_layer({.num_experts = 4, .router = "top2"}, 0, experts);
  const auto x = torch::randn({6, 16});
  const auto with_seam = layer.forward(x);
  CHECK(gating_calls == 1);
  CHECK(combine_calls == 1);

  // Forced off: the same layer gives the same output without calling them.
  kernels::set_header_only(true);
  CHECK(kernels::implementation("combine", torch::kCPU) == "header-only");
  CHECK(max_abs_diff(layer.forward(x), with_seam) == 0.0);
  CHECK(gating_calls == 1);
  CHECK(combine_calls == 1);
  kernels::set_header_only(false);
  kernels::registry().clear();
}
