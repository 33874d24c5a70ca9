// SPDX-License-Identifier: MIT
// An averaging policy chosen at run time: any AveragingPolicy behind one type, so a tool that takes
// the policy from a config (btx-merge, the pipeline) instantiates each mixer once instead of once
// per policy (merge/averaging_registry.hpp makes one from a config's name and options, and
// rebuilds one from the to_json() a merge manifest records).
//
//   merge::AnyAveraging a = merge::Ties{0.2, 1.0};
//   auto plan = merge::BtxMix<merge::AnyAveraging>{a}.plan(sources, &seed);
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <concepts>
#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <btx/merge/averaging.hpp>
#include <btx/merge/trunk_merging.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

class AnyAveraging {
 public:
  AnyAveraging() : AnyAveraging(UniformMean{}) {}
  template <class P>
  requires(!std::same_as<std::decay_t<P>, AnyAveraging> && AveragingPolicy<P>)
      AnyAveraging(P policy)  // NOLINT: implicit, like std::function
      : impl_(std::make_shared<Model<P>>(std::move(policy))) {}

  [[nodiscard]] std::string name() const { return impl_->name(); }
  [[nodiscard]] nlohmann::json to_json() const { return impl_->to_json(); }
  void validate(size_t n, bool has_base) const { (void)impl_->plan(n, has_base); }
  [[nodiscard]] std::vector<double> linear_weights(size_t n, bool has_base) const {
    return impl_->plan(n, has_base);
  }
  // A linear policy underneath still streams: one source tensor at a time.
  [[nodiscard]] torch::Tensor merge(const MergeInputs& in) const {
    return impl_->merge(impl_->plan(in.count, in.has_base()), in);
  }

 private:
  struct Concept {
    virtual ~Concept() = default;
    [[nodiscard]] virtual std::string name() const = 0;
    [[nodiscard]] virtual nlohmann::json to_json() const = 0;
    [[nodiscard]] virtual std::vector<double> plan(size_t n, bool has_base) const = 0;
    [[nodiscard]] virtual torch::Tensor merge(const std::vector<double>& weights,
                                              const MergeInputs& in) const = 0;
  };
  template <class P>
  struct Model final : Concept {
    explicit Model(P p) : policy(std::move(p)) {}
    [[nodiscard]] std::string name() const override { return policy.name(); }
    [[nodiscard]] nlohmann::json to_json() const override { return policy.to_json(); }
    [[nodiscard]] std::vector<double> plan(size_t n, bool has_base) const override {
      return plan_averaging(policy, n, has_base);
    }
    [[nodiscard]] torch::Tensor merge(const std::vector<double>& weights,
                                      const MergeInputs& in) const override {
      return merge_tensor(policy, weights, in);
    }
    P policy;
  };
  std::shared_ptr<const Concept> impl_;
};

static_assert(AveragingPolicy<AnyAveraging>);

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
