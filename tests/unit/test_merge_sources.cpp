// SPDX-License-Identifier: MIT
// Merges over a TensorSource that is not in memory: tensors are read one at a time, only
// when needed, and a failing read leaves no partial result.
#include <doctest/doctest.h>

#include <memory>

#include <btx/merge/mixers.hpp>
#include <btx/models/llama/compat.hpp>

#include "../test_support.hpp"

using btx::test::tiny_config;
namespace bm = btx::merge;

namespace {
// Stands in for a checkpoint on disk: counts reads and can fail on one tensor.
class LazySource {
 public:
  LazySource(bm::StateDict tensors, std::string label, std::shared_ptr<int> reads,
             std::string fail_on = "")
      : inner_(std::move(tensors), std::move(label)),
        reads_(std::move(reads)),
        fail_on_(std::move(fail_on)) {}
  [[nodiscard]] std::string label() const { return inner_.label(); }
  [[nodiscard]] std::vector<std::string> names() const { return inner_.names(); }
  [[nodiscard]] bm::TensorSpec spec(const std::string& n) const { return inner_.spec(n); }
  [[nodiscard]] torch::Tensor load(const std::string& n) const {
    if (n == fail_on_) throw std::runtime_error("read error in " + n);
    ++*reads_;
    return inner_.load(n).clone();
  }

 private:
  bm::StateDictSource inner_;
  std::shared_ptr<int> reads_;
  std::string fail_on_;
};
static_assert(bm::TensorSource<LazySource>);

std::vector<LazySource> lazy_sources(int n, const std::shared_ptr<int>& reads,
                                     const std::string& fail_on = "") {
  std::vector<LazySource> out;
  const std::vector<std::string> labels = {"math", "code", "wiki"};
  for (int j = 0; j < n; ++j) {
    torch::manual_seed(40 + j);
    btx::LlamaForCausalLM m(tiny_config());
    out.emplace_back(bm::state_dict_of(m), labels[size_t(j)], reads, fail_on);
  }
  return out;
}
}  // namespace

TEST_CASE("merge sources: planning reads no data, computing reads only what it needs") {
  auto reads = std::make_shared<int>(0);
  auto srcs = lazy_sources(3, reads);
  auto plan = bm::BtxMix<>{}.plan(srcs);
  CHECK(*reads == 0);
  (void)plan.compute("model.norm.weight");
  CHECK(*reads == 3);  // one read per source
  (void)plan.compute("model.layers.0.mlp.gate.weight");
  CHECK(*reads == 3);  // routers read nothing
  (void)plan.compute("model.layers.0.mlp.experts.up_proj");
  CHECK(*reads == 6);
  auto keep = bm::BtxMix<bm::KeepOne>{{2}, {}}.plan(srcs);
  (void)keep.compute("model.embed_tokens.weight");
  CHECK(*reads == 7);  // keep-one reads only the kept source
}

TEST_CASE("merge sources: a failing read aborts the merge with no partial output") {
  auto reads = std::make_shared<int>(0);
  auto srcs = lazy_sources(2, reads, "model.layers.1.self_attn.v_proj.weight");
  bm::StateDict out;
  CHECK_THROWS_WITH_AS(out = bm::merge(bm::BtxMix<>{}, srcs),
                       doctest::Contains("read error in model.layers.1.self_attn.v_proj.weight"),
                       std::runtime_error);
  CHECK(out.empty());
}

TEST_CASE("merge sources: sources_of labels each module") {
  std::vector<btx::LlamaForCausalLM> models = {btx::LlamaForCausalLM(tiny_config()),
                                               btx::LlamaForCausalLM(tiny_config())};
  auto srcs = bm::sources_of(models, {"a", "b"});
  CHECK(srcs[1].label() == "b");
  CHECK(bm::merge(bm::BtxMix<>{}, srcs).at(bm::experts_name(0, "up_proj")).size(0) == 2);
  CHECK_THROWS_AS(bm::sources_of(models, {"a"}), std::invalid_argument);
}
