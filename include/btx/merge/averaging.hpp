// SPDX-License-Identifier: MIT
// Averaging policies: how the Mix stage combines the tensors that the N experts share
// (attention, embeddings, norms, LM head). The arithmetic runs in fp32 for 16-bit sources
// (fp64 for fp32/fp64 ones) and the result is cast back to the sources' dtype.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/merge/state_dict.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

// ---------------------------------------------------------------- the concept
template <class P>
concept names_itself = requires(const P& p) {
  { p.name() } -> std::convertible_to<std::string>;
};
template <class P>
concept describes_itself_in_json = requires(const P& p) {
  { p.to_json() } -> std::same_as<nlohmann::json>;
};
// weights(n): one weight per source, summing to 1; throws std::invalid_argument when the
// policy cannot weigh n sources. Zero-weight sources are never read.
template <class P>
concept weighs_sources = requires(const P& p, size_t n) {
  { p.weights(n) } -> std::same_as<std::vector<double>>;
};
template <class P>
concept AveragingPolicy = names_itself<P> && describes_itself_in_json<P> && weighs_sources<P> &&
    std::copy_constructible<P>;

// -------------------------------------------------------------- the policies
// The paper's choice: the plain mean of every expert's copy.
struct UniformMean {
  [[nodiscard]] std::string name() const { return "uniform_mean"; }
  [[nodiscard]] nlohmann::json to_json() const { return {{"name", name()}}; }
  [[nodiscard]] std::vector<double> weights(size_t n) const {
    if (n == 0) throw std::invalid_argument("btx::merge::UniformMean: no sources to average");
    return std::vector<double>(n, 1.0 / double(n));
  }
};

// Weights proportional to `raw` (tokens trained per expert, say): non-negative, finite,
// positive sum, one per source.
struct WeightedMean {
  std::vector<double> raw;

  [[nodiscard]] std::string name() const { return "weighted_mean"; }
  [[nodiscard]] nlohmann::json to_json() const { return {{"name", name()}, {"weights", raw}}; }
  [[nodiscard]] std::vector<double> weights(size_t n) const {
    if (raw.size() != n) {
      throw std::invalid_argument("btx::merge::WeightedMean: " + std::to_string(raw.size()) +
                                  " weights given for " + std::to_string(n) +
                                  " sources; give one weight per source");
    }
    double sum = 0.0;
    for (size_t i = 0; i < n; ++i) {
      if (!std::isfinite(raw[i]) || raw[i] < 0.0) {
        throw std::invalid_argument("btx::merge::WeightedMean: weight " + std::to_string(i) +
                                    " is " + std::to_string(raw[i]) +
                                    "; weights must be finite and non-negative");
      }
      sum += raw[i];
    }
    if (!(sum > 0.0) || !std::isfinite(sum)) {
      throw std::invalid_argument("btx::merge::WeightedMean: weights sum to " +
                                  std::to_string(sum) + "; at least one must be positive");
    }
    std::vector<double> w(n);
    for (size_t i = 0; i < n; ++i) w[i] = raw[i] / sum;
    return w;
  }
};

// Takes source `index`'s tensors unchanged (the seed's, say), bit for bit.
struct KeepOne {
  size_t index = 0;

  [[nodiscard]] std::string name() const { return "keep_one"; }
  [[nodiscard]] nlohmann::json to_json() const { return {{"name", name()}, {"index", index}}; }
  [[nodiscard]] std::vector<double> weights(size_t n) const {
    if (index >= n) {
      throw std::invalid_argument("btx::merge::KeepOne: index " + std::to_string(index) +
                                  " is out of range for " + std::to_string(n) + " sources");
    }
    std::vector<double> w(n, 0.0);
    w[index] = 1.0;
    return w;
  }
};

static_assert(AveragingPolicy<UniformMean>);
static_assert(AveragingPolicy<WeightedMean>);
static_assert(AveragingPolicy<KeepOne>);

// ------------------------------------------------------------------ averaging
// Accumulate in a type wider than the source: fp32 for bf16/fp16, fp64 for fp32. So the
// average of N identical tensors rounds back to exactly that tensor.
inline torch::ScalarType accumulator_dtype(torch::ScalarType source) {
  return c10::elementSize(source) < 4 ? torch::kFloat32 : torch::kFloat64;
}

// sum_j weights[j] * load(j), reading one source at a time (peak memory: the accumulator
// plus one tensor). Every loaded tensor must match source 0's spec; the error names the
// tensor and both sources. `labels` names the sources for messages.
inline torch::Tensor weighted_sum(const std::string& name, const std::vector<double>& weights,
                                  const std::function<torch::Tensor(size_t)>& load,
                                  const std::vector<std::string>& labels) {
  torch::Tensor acc;
  torch::ScalarType dtype = torch::kFloat32;
  std::vector<int64_t> shape;
  size_t first = 0;
  const auto contributors =
      std::count_if(weights.begin(), weights.end(), [](double w) { return w != 0.0; });
  for (size_t j = 0; j < weights.size(); ++j) {
    if (weights[j] == 0.0) continue;
    torch::Tensor t = load(j);
    if (!acc.defined()) {
      if (!torch::isFloatingType(t.scalar_type())) {
        throw std::invalid_argument("btx::merge: cannot average tensor '" + name + "' of dtype " +
                                    std::string(c10::toString(t.scalar_type())) + " from '" +
                                    labels.at(j) + "'; only floating-point tensors average");
      }
      dtype = t.scalar_type();
      shape = t.sizes().vec();
      first = j;
      // Exactly one contributor with weight 1: copy, no arithmetic at all.
      if (contributors == 1 && weights[j] == 1.0) return t.detach().clone();
      acc = t.detach().to(accumulator_dtype(dtype)) * weights[j];
      continue;
    }
    if (t.sizes().vec() != shape || t.scalar_type() != dtype) {
      throw std::invalid_argument("btx::merge: tensor '" + name + "' is " + shape_string(shape) +
                                  " " + c10::toString(dtype) + " in '" + labels.at(first) +
                                  "' but " + shape_string(t.sizes().vec()) + " " +
                                  c10::toString(t.scalar_type()) + " in '" + labels.at(j) +
                                  "'; merged sources must share architecture and dtype");
    }
    acc.add_(t.detach().to(acc.scalar_type()), weights[j]);
  }
  if (!acc.defined()) {
    throw std::invalid_argument("btx::merge: no source has a positive weight for '" + name + "'");
  }
  return acc.to(dtype);
}

// Averages one tensor over in-memory copies with `policy`.
template <AveragingPolicy Policy>
torch::Tensor average(const Policy& policy, const std::string& name,
                      const std::vector<torch::Tensor>& tensors,
                      const std::vector<std::string>& labels = {}) {
  std::vector<std::string> l = labels;
  for (size_t j = l.size(); j < tensors.size(); ++j) l.push_back("source " + std::to_string(j));
  return weighted_sum(
      name, policy.weights(tensors.size()), [&](size_t j) { return tensors[j]; }, l);
}

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
