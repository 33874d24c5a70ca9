// SPDX-License-Identifier: MIT
// An MoE layer's aux loss over data-parallel shards (moe/global_batch.hpp), with the ranks
// simulated in one process: the mean over shards of each shard's surrogate loss, and of
// its gradient, is the whole batch's aux loss and gradient, for equal and unequal shards;
// the statistics are the whole batch's. (The real multi-process runs: tests/python/test_dist.py.)
#include <doctest/doctest.h>

#include <cmath>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/moe/global_batch.hpp>
#include <btx/moe/routers/top_k.hpp>

#include "../test_support.hpp"

namespace {

// One rank of `ranks` in one process: all_reduce_sum adds its input to *total (first pass,
// every rank) or returns *total, every rank's sum (second pass: `summed`).
class SimulatedRanks : public btx::Collectives {
 public:
  SimulatedRanks(int64_t rank, int64_t ranks, torch::Tensor* total, bool summed)
      : rank_(rank), ranks_(ranks), total_(total), summed_(summed) {}
  [[nodiscard]] int64_t rank() const override { return rank_; }
  [[nodiscard]] int64_t size() const override { return ranks_; }
  [[nodiscard]] std::string group_name() const override { return "simulated"; }
  void all_reduce_sum(torch::Tensor& t, const std::string&) override {
    if (summed_) {
      t.copy_(*total_);
    } else {
      *total_ = total_->defined() ? *total_ + t : t.clone();
    }
  }
  [[nodiscard]] torch::Tensor all_to_all(const torch::Tensor&, const std::vector<int64_t>&,
                                         const std::vector<int64_t>&, const std::string&) override {
    throw std::logic_error("not used");
  }

 private:
  int64_t rank_, ranks_;
  torch::Tensor* total_;
  bool summed_;
};

std::vector<int64_t> counts_of(const btx::RoutingResult& r, int64_t E) {
  auto c = torch::bincount(r.indices_TK.reshape(-1), {}, E);
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + E);
}

void check_shards(const std::vector<int64_t>& sizes, btx::LoadBalanceForm form) {
  const int64_t E = 4, D = 8, T = 12;
  torch::manual_seed(3);
  btx::TopK router(D, E, 2);
  const auto x_TD = torch::randn({T, D});
  const btx::AuxLossOptions aux{0.1, form, 0.01};

  // The whole batch in one process.
  const auto whole = router.route(x_TD);
  const auto global = btx::local_routing(whole, counts_of(whole, E), 0, aux);
  global.aux_loss.backward();
  const auto grad_whole = router.weight.grad().clone();
  router.weight.mutable_grad() = torch::Tensor();

  // Pass 1: every shard's sums; pass 2: each shard's surrogate against the total.
  const int64_t N = int64_t(sizes.size());
  torch::Tensor total;
  std::vector<int64_t> offsets;
  for (int64_t s = 0, offset = 0; s < N; offset += sizes[size_t(s)], ++s) offsets.push_back(offset);
  for (int64_t s = 0; s < N; ++s) {
    SimulatedRanks ranks(s, N, &total, /*summed=*/false);
    const auto r = router.route(x_TD.narrow(0, offsets[size_t(s)], sizes[size_t(s)]));
    (void)btx::global_routing(r, counts_of(r, E), 0, aux, ranks);
  }
  double mean_loss = 0.0;
  torch::Tensor mean_grad = torch::zeros_like(grad_whole);
  for (int64_t s = 0; s < N; ++s) {
    SimulatedRanks ranks(s, N, &total, /*summed=*/true);
    const auto r = router.route(x_TD.narrow(0, offsets[size_t(s)], sizes[size_t(s)]));
    const auto shard = btx::global_routing(r, counts_of(r, E), 0, aux, ranks);
    // Every shard records the whole batch's statistics.
    CHECK(torch::equal(shard.stats.tokens_per_expert, global.stats.tokens_per_expert));
    CHECK(shard.stats.tokens == T);
    CHECK(shard.stats.entropy() == doctest::Approx(global.stats.entropy()).epsilon(1e-6));
    mean_loss += shard.aux_loss.item<double>() / double(N);
    shard.aux_loss.backward();
    mean_grad += router.weight.grad() / double(N);  // what data parallelism applies
    router.weight.mutable_grad() = torch::Tensor();
  }
  CHECK(mean_loss == doctest::Approx(global.aux_loss.item<double>()).epsilon(1e-6));
  CHECK(btx::test::max_abs_diff(mean_grad, grad_whole) < 1e-6);
}

}  // namespace

TEST_CASE("moe global batch: shard surrogates average to the whole batch's aux loss and gradient") {
  check_shards({6, 6}, btx::LoadBalanceForm::btx);
  check_shards({4, 4, 4}, btx::LoadBalanceForm::btx);
  check_shards({5, 7}, btx::LoadBalanceForm::btx);  // unequal shards are weighted by tokens
  check_shards({6, 6}, btx::LoadBalanceForm::switch_);
}

TEST_CASE(
    "moe global batch: the mean of each shard's own load-balancing loss is not the whole batch's") {
  // Why global_routing exists: L_LB multiplies two batch means.
  const int64_t E = 4, D = 8;
  torch::manual_seed(5);
  btx::TopK router(D, E, 2);
  const auto x_TD = torch::randn({12, D});
  const double whole =
      btx::load_balancing_loss(router.route(x_TD), btx::LoadBalanceForm::btx).item<double>();
  const double shards =
      0.5 * (btx::load_balancing_loss(router.route(x_TD.narrow(0, 0, 6)), btx::LoadBalanceForm::btx)
                 .item<double>() +
             btx::load_balancing_loss(router.route(x_TD.narrow(0, 6, 6)), btx::LoadBalanceForm::btx)
                 .item<double>());
  CHECK(std::abs(whole - shards) > 1e-4);
}
