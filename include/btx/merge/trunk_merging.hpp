// SPDX-License-Identifier: MIT
// Tensor-aware averaging policies for the trunk (the tensors the experts share): they
// merge task vectors tau_j = theta_j - theta_base, where the base is the seed the experts
// branched from. Each is an AveragingPolicy (averaging.hpp) and plugs into every mixer.
//
//   TaskArithmetic  base + lambda * sum_j w_j tau_j                  (Ilharco et al. 2023)
//   Ties            trim each tau_j to its `density` largest magnitudes, elect each
//                   element's sign by the summed trimmed mass, average the trimmed values
//                   that agree with it (disjoint mean); base + lambda * that
//                                                                    (Yadav et al. 2023)
//   Dare            drop each tau_j element with probability 1 - density, rescale the kept
//                   ones by 1/density; then linear (like TaskArithmetic) or TIES' sign
//                   election and disjoint mean                       (Yu et al. 2024)
//
// With weights 1/N and lambda 1, TaskArithmetic is the uniform mean. Every policy reads
// all N copies of a tensor at once (peak memory: N + 2 copies in the accumulator dtype).
#pragma once

#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/core/hash.hpp>
#include <btx/merge/averaging.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {
namespace detail {

inline void check_base(const std::string& policy, size_t n, bool has_base) {
  if (n == 0) throw std::invalid_argument("btx::merge::" + policy + ": no sources to merge");
  if (!has_base) {
    throw std::invalid_argument("btx::merge::" + policy +
                                " merges task vectors and needs a base: the seed the experts "
                                "branched from (btx-merge: base_model)");
  }
}

inline void check_finite(const std::string& policy, const char* what, double v) {
  if (!std::isfinite(v)) {
    throw std::invalid_argument("btx::merge::" + policy + ": " + what + " must be finite, got " +
                                std::to_string(v));
  }
}

inline void check_density(const std::string& policy, double density) {
  if (!(density > 0.0 && density <= 1.0)) {
    throw std::invalid_argument("btx::merge::" + policy + ": density must be in (0, 1], got " +
                                std::to_string(density));
  }
}

// One weight per source (empty: 1 each), finite.
inline std::vector<double> source_weights(const std::string& policy,
                                          const std::vector<double>& weights, size_t n) {
  if (weights.empty()) return std::vector<double>(n, 1.0);
  if (weights.size() != n) {
    throw std::invalid_argument("btx::merge::" + policy + ": " + std::to_string(weights.size()) +
                                " weights given for " + std::to_string(n) +
                                " sources; give one weight per source");
  }
  for (double w : weights) check_finite(policy, "every weight", w);
  return weights;
}

// The base and every tau_j, in the accumulator dtype (fp32 for 16-bit, fp64 for fp32).
struct TaskVectors {
  torch::Tensor base;
  std::vector<torch::Tensor> deltas;
  torch::ScalarType dtype = torch::kFloat32;  // the sources' dtype, for the result
};

inline TaskVectors task_vectors(const MergeInputs& in, const std::string& policy) {
  std::vector<torch::Tensor> sources = in.all_sources();
  TaskVectors tv;
  tv.dtype = sources.front().scalar_type();
  const auto acc = accumulator_dtype(tv.dtype);
  tv.base = in.base_tensor(policy, sources.front()).to(acc);
  for (auto& s : sources) tv.deltas.push_back(s.to(acc) - tv.base);
  return tv;
}

// tau with all but its `density` fraction of largest-magnitude elements zeroed
// (round(density * numel) of them; elements tied with the smallest kept one are kept too).
inline torch::Tensor trim_to_density(const torch::Tensor& tau, double density) {
  const int64_t n = tau.numel();
  const int64_t keep = std::llround(density * double(n));
  if (keep >= n) return tau;
  if (keep <= 0) return torch::zeros_like(tau);
  const auto magnitude = tau.abs();
  const auto threshold = std::get<0>(magnitude.reshape({-1}).kthvalue(n - keep + 1));
  return torch::where(magnitude >= threshold, tau, torch::zeros_like(tau));
}

// TIES: each element's sign is that of the summed deltas; the result is the mean of the
// deltas that are non-zero with that sign (0 where none is).
inline torch::Tensor disjoint_mean(const std::vector<torch::Tensor>& deltas) {
  const auto stacked = torch::stack(deltas);  // [N, ...]
  const auto elected = torch::sign(stacked.sum(0));
  const auto agree = (torch::sign(stacked) == elected) & (stacked != 0);
  const auto kept = torch::where(agree, stacked, torch::zeros_like(stacked));
  return kept.sum(0) / agree.sum(0).clamp_min(1).to(stacked.scalar_type());
}

// DARE's random drop, reproducible per (seed, tensor name, source).
inline torch::Tensor drop_and_rescale(const torch::Tensor& tau, double density, uint64_t seed,
                                      const std::string& name, size_t source) {
  if (density >= 1.0) return tau;
  auto gen =
      at::make_generator<at::CPUGeneratorImpl>(fnv1a64(name) ^ (seed * 0x9E3779B97F4A7C15ULL) ^
                                               (uint64_t(source) + 1) * 0xBF58476D1CE4E5B9ULL);
  // Drawn on the CPU whatever tau's device: the same merge drops the same entries anywhere.
  const auto keep = torch::rand(tau.sizes(), gen, torch::dtype(torch::kFloat32).device(torch::kCPU))
                        .lt(density)
                        .to(tau.device(), tau.scalar_type());
  return tau * keep / density;
}

// sum_j w_j tau_j.
inline torch::Tensor weighted_deltas(const std::vector<torch::Tensor>& deltas,
                                     const std::vector<double>& w) {
  auto sum = torch::zeros_like(deltas.front());
  for (size_t j = 0; j < deltas.size(); ++j) sum.add_(deltas[j], w[j]);
  return sum;
}

}  // namespace detail

// base + lambda * sum_j w_j (theta_j - base). weights: one per source, empty = 1 each.
struct TaskArithmetic {
  std::vector<double> weights;
  double lambda = 1.0;

  [[nodiscard]] std::string name() const { return "task_arithmetic"; }
  [[nodiscard]] nlohmann::json to_json() const {
    return {{"name", name()}, {"weights", weights}, {"lambda", lambda}};
  }
  void validate(size_t n, bool has_base) const {
    detail::check_base(name(), n, has_base);
    detail::check_finite(name(), "lambda", lambda);
    (void)detail::source_weights(name(), weights, n);
  }
  [[nodiscard]] torch::Tensor merge(const MergeInputs& in) const {
    const auto tv = detail::task_vectors(in, name());
    const auto w = detail::source_weights(name(), weights, tv.deltas.size());
    return (tv.base + lambda * detail::weighted_deltas(tv.deltas, w)).to(tv.dtype);
  }
};

// TIES-merging: trim, elect sign, disjoint mean; base + lambda * the merged task vector.
struct Ties {
  double density = 0.2;  // fraction of each task vector's elements kept (by magnitude)
  double lambda = 1.0;

  [[nodiscard]] std::string name() const { return "ties"; }
  [[nodiscard]] nlohmann::json to_json() const {
    return {{"name", name()}, {"density", density}, {"lambda", lambda}};
  }
  void validate(size_t n, bool has_base) const {
    detail::check_base(name(), n, has_base);
    detail::check_density(name(), density);
    detail::check_finite(name(), "lambda", lambda);
  }
  [[nodiscard]] torch::Tensor merge(const MergeInputs& in) const {
    auto tv = detail::task_vectors(in, name());
    for (auto& d : tv.deltas) d = detail::trim_to_density(d, density);
    return (tv.base + lambda * detail::disjoint_mean(tv.deltas)).to(tv.dtype);
  }
};

// DARE: random drop (keep probability `density`) and rescale of each task vector, then
// a weighted sum (dare_linear) or TIES' sign election and disjoint mean (dare_ties).
struct Dare {
  double density = 0.5;
  double lambda = 1.0;
  uint64_t seed = 0;
  bool ties_sign = false;       // false: dare_linear, true: dare_ties
  std::vector<double> weights;  // dare_linear: one per source, empty = 1 each

  [[nodiscard]] std::string name() const { return ties_sign ? "dare_ties" : "dare_linear"; }
  [[nodiscard]] nlohmann::json to_json() const {
    nlohmann::json j = {{"name", name()}, {"density", density}, {"lambda", lambda}, {"seed", seed}};
    if (!ties_sign) j["weights"] = weights;
    return j;
  }
  void validate(size_t n, bool has_base) const {
    detail::check_base(name(), n, has_base);
    detail::check_density(name(), density);
    detail::check_finite(name(), "lambda", lambda);
    if (ties_sign && !weights.empty()) {
      throw std::invalid_argument(
          "btx::merge::dare_ties: weights do not apply (TIES' disjoint "
          "mean weighs the agreeing sources equally)");
    }
    (void)detail::source_weights(name(), weights, n);
  }
  [[nodiscard]] torch::Tensor merge(const MergeInputs& in) const {
    auto tv = detail::task_vectors(in, name());
    for (size_t j = 0; j < tv.deltas.size(); ++j)
      tv.deltas[j] = detail::drop_and_rescale(tv.deltas[j], density, seed, in.name, j);
    if (ties_sign) return (tv.base + lambda * detail::disjoint_mean(tv.deltas)).to(tv.dtype);
    const auto w = detail::source_weights(name(), weights, tv.deltas.size());
    return (tv.base + lambda * detail::weighted_deltas(tv.deltas, w)).to(tv.dtype);
  }
};

static_assert(AveragingPolicy<TaskArithmetic>);
static_assert(AveragingPolicy<Ties>);
static_assert(AveragingPolicy<Dare>);

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
