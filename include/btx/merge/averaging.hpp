// SPDX-License-Identifier: MIT
// Averaging policies: how the Mix stage combines the tensors that the N experts share
// (attention, embeddings, norms, LM head). The arithmetic runs in fp32 for 16-bit sources
// (fp64 for fp32/fp64 ones) and the result is cast back to the sources' dtype.
//
// A policy either weighs sources (weights(n): a linear average, streamed one source at a time) or
// merges tensors (merge(inputs): sees every source's tensor and the seed's, the common parent, so
// task arithmetic, TIES and DARE fit; see trunk_merging.hpp).
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/merge/detail/row_kernels.hpp>
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

// What a tensor-aware policy sees of one shared tensor: its name, the N sources' copies (loaded on
// demand) and, when the merge has one, the seed's copy (the common parent).
// Where one source's copy of a tensor lies in a file, with its shape and dtype.
struct SourceBytes {
  io::FileRange range;
  std::vector<int64_t> shape;
  torch::ScalarType dtype = torch::kFloat32;
};

struct MergeInputs {
  std::string name;
  size_t count = 0;
  std::function<torch::Tensor(size_t)> load;  // source j's tensor
  // Optional: where source j's copy lies in a file (std::nullopt: it does not), so a
  // weighted sum can read it in row chunks instead of whole (merge peak memory).
  std::function<std::optional<SourceBytes>(size_t)> bytes;
  std::function<torch::Tensor()> base;  // the seed's tensor; empty when no base is given
  std::vector<std::string> labels;      // source names for messages

  [[nodiscard]] bool has_base() const { return bool(base); }
  // Every source's tensor, detached, checked to be floating point of one shape and dtype.
  [[nodiscard]] std::vector<torch::Tensor> all_sources() const;
  // The seed's tensor, checked against `like` (a source's); throws when there is no base.
  [[nodiscard]] torch::Tensor base_tensor(const std::string& policy,
                                          const torch::Tensor& like) const;
};

// merge(inputs): the merged tensor, same shape and dtype as the sources'.
template <class P>
concept merges_tensors = requires(const P& p, const MergeInputs& in) {
  { p.merge(in) } -> std::same_as<torch::Tensor>;
};
// validate(n, has_base): throws std::invalid_argument when the policy cannot merge n sources (with
// or without a base), before any tensor is read.
template <class P>
concept validates_merge_inputs = requires(const P& p, size_t n, bool has_base) {
  p.validate(n, has_base);
};
// Optional, for a tensor-aware policy that may be linear underneath (AnyAveraging):
// linear_weights(n, has_base) -> the weights a manifest records (empty: not linear).
template <class P>
concept reports_linear_weights = requires(const P& p, size_t n, bool has_base) {
  { p.linear_weights(n, has_base) } -> std::same_as<std::vector<double>>;
};
template <class P>
concept AveragingPolicy = names_itself<P> && describes_itself_in_json<P> &&
                          (weighs_sources<P> || (merges_tensors<P> && validates_merge_inputs<P>)) &&
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

namespace detail {
// The checks every merge of one tensor makes: the first source's copy is floating point,
// and every other copy has its shape and dtype. Errors name the tensor and the sources.
inline void check_floating(const std::string& name, const torch::Tensor& t,
                           const std::string& label, const char* verb) {
  if (!torch::isFloatingType(t.scalar_type())) {
    throw std::invalid_argument("btx::merge: cannot " + std::string(verb) + " tensor '" + name +
                                "' of dtype " + std::string(c10::toString(t.scalar_type())) +
                                " from '" + label + "'; only floating-point tensors " + verb);
  }
}
inline void check_same_spec(const std::string& name, const std::vector<int64_t>& first_shape,
                            torch::ScalarType first_dtype, const std::string& first_label,
                            const torch::Tensor& t, const std::string& label) {
  if (t.sizes().vec() != first_shape || t.scalar_type() != first_dtype) {
    throw std::invalid_argument("btx::merge: tensor '" + name + "' is " +
                                shape_string(first_shape) + " " + c10::toString(first_dtype) +
                                " in '" + first_label + "' but " + shape_string(t.sizes().vec()) +
                                " " + c10::toString(t.scalar_type()) + " in '" + label +
                                "'; merged sources must share architecture and dtype");
  }
}
}  // namespace detail

// sum_j weights[j] * load(j), reading one source at a time (peak memory: the accumulator
// plus one tensor). Every loaded tensor must match source 0's spec; the error names the
// tensor and both sources. `labels` names the sources for messages.
namespace detail {

// weighted_sum computed in row chunks read straight from the sources' files, holding the
// result and a chunk buffer instead of whole widened copies: the same sum in the same
// order per element, in the same accumulator dtype, so the same result to within one unit
// in the last place of the output dtype (torch's add_ may fuse the multiply-add; these
// loops may not). std::nullopt where a contributor has no file bytes, the copies disagree
// or the dtype is not fp32/bf16/fp16 (weighted_sum then loads them and says why).
inline std::optional<torch::Tensor> weighted_sum_in_chunks(const MergeInputs& in,
                                                           const std::vector<double>& weights,
                                                           uint64_t chunk_bytes = 1ull << 20) {
  if (!in.bytes) return std::nullopt;
  std::vector<std::pair<SourceBytes, double>> parts;
  for (size_t j = 0; j < weights.size(); ++j) {
    if (weights[j] == 0.0) continue;
    auto b = in.bytes(j);
    if (!b) return std::nullopt;
    parts.emplace_back(std::move(*b), weights[j]);
  }
  if (parts.empty() || (parts.size() == 1 && parts.front().second == 1.0)) return std::nullopt;
  const SourceBytes& first = parts.front().first;
  const auto dtype = first.dtype;
  if ((dtype != torch::kFloat32 && dtype != torch::kBFloat16 && dtype != torch::kHalf) ||
      first.shape.empty()) {
    return std::nullopt;
  }
  for (const auto& [b, w] : parts) {
    if (b.shape != first.shape || b.dtype != dtype) return std::nullopt;
  }
  auto out = torch::empty(first.shape, torch::dtype(dtype).device(torch::kCPU));
  const int64_t rows = first.shape[0];
  if (out.numel() == 0) return out;
  const int64_t row_elems = out.numel() / rows;
  const uint64_t row_bytes = uint64_t(row_elems) * c10::elementSize(dtype);
  if (row_bytes * uint64_t(rows) != first.range.bytes) return std::nullopt;
  const int64_t chunk = std::max<int64_t>(1, int64_t(chunk_bytes / row_bytes));
  const size_t max_elems = size_t(std::min(chunk, rows) * row_elems);
  std::vector<uint8_t> buffer(max_elems * c10::elementSize(dtype));
  auto* out_bytes = static_cast<uint8_t*>(out.data_ptr());
  const auto run = [&]<typename T, typename Acc>() {
    std::vector<Acc> acc(max_elems);
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
      const int64_t n = std::min(chunk, rows - r0);
      const size_t elems = size_t(n * row_elems);
      for (size_t k = 0; k < parts.size(); ++k) {
        const auto& [b, w] = parts[k];
        io::read_exact(b.range.file, buffer.data(), uint64_t(n) * row_bytes,
                       b.range.offset + uint64_t(r0) * row_bytes);
        accumulate_rows<T, Acc>(buffer.data(), acc.data(), elems, w, k == 0);
      }
      narrow_rows<T, Acc>(acc.data(), out_bytes + uint64_t(r0) * row_bytes, elems);
    }
  };
  if (dtype == torch::kFloat32) {
    run.template operator()<float, double>();
  } else if (dtype == torch::kBFloat16) {
    run.template operator()<c10::BFloat16, float>();
  } else {
    run.template operator()<c10::Half, float>();
  }
  return out;
}

}  // namespace detail

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
    torch::Tensor t = load(j).detach();
    if (!acc.defined()) {
      detail::check_floating(name, t, labels.at(j), "average");
      // Exactly one contributor with weight 1: copy, no arithmetic at all.
      if (contributors == 1 && weights[j] == 1.0) return t.clone();
      dtype = t.scalar_type();
      shape = t.sizes().vec();
      first = j;
      acc = t.to(accumulator_dtype(dtype)) * weights[j];
      continue;
    }
    detail::check_same_spec(name, shape, dtype, labels.at(first), t, labels.at(j));
    acc.add_(t.to(acc.scalar_type()), weights[j]);
  }
  if (!acc.defined()) {
    throw std::invalid_argument("btx::merge: no source has a positive weight for '" + name + "'");
  }
  return acc.to(dtype);
}

inline std::vector<torch::Tensor> MergeInputs::all_sources() const {
  std::vector<torch::Tensor> out;
  for (size_t j = 0; j < count; ++j) {
    torch::Tensor t = load(j).detach();
    if (j == 0) detail::check_floating(name, t, labels.at(0), "merge");
    if (j > 0) {
      detail::check_same_spec(name, out[0].sizes().vec(), out[0].scalar_type(), labels.at(0), t,
                              labels.at(j));
    }
    out.push_back(std::move(t));
  }
  if (out.empty()) throw std::invalid_argument("btx::merge: no sources for '" + name + "'");
  return out;
}

inline torch::Tensor MergeInputs::base_tensor(const std::string& policy,
                                              const torch::Tensor& like) const {
  if (!base) {
    throw std::invalid_argument("btx::merge::" + policy + ": merging tensor '" + name +
                                "' needs the seed (the experts' common parent) as base");
  }
  torch::Tensor t = base().detach();
  if (t.sizes() != like.sizes() || t.scalar_type() != like.scalar_type()) {
    throw std::invalid_argument(
        "btx::merge::" + policy + ": tensor '" + name + "' is " + shape_string(t.sizes().vec()) +
        " " + c10::toString(t.scalar_type()) + " in the base but " +
        shape_string(like.sizes().vec()) + " " + c10::toString(like.scalar_type()) + " in '" +
        labels.at(0) + "'; the base must be the experts' common parent");
  }
  return t;
}

// ------------------------------------------------ one entry for both kinds of policy
// Checks, before anything is read, that `policy` can merge n sources (with/without a base).
// Returns the linear weights of a weighing policy, empty for a tensor-aware one.
template <AveragingPolicy Policy>
std::vector<double> plan_averaging(const Policy& policy, size_t n, bool has_base) {
  if constexpr (weighs_sources<Policy>) {
    return policy.weights(n);
  } else {
    policy.validate(n, has_base);
    if constexpr (reports_linear_weights<Policy>) return policy.linear_weights(n, has_base);
    return {};
  }
}

// One merged tensor. `weights` is plan_averaging's result (ignored by tensor-aware policies).
template <AveragingPolicy Policy>
torch::Tensor merge_tensor(const Policy& policy, const std::vector<double>& weights,
                           const MergeInputs& in) {
  if constexpr (weighs_sources<Policy>) {
    if (auto chunked = detail::weighted_sum_in_chunks(in, weights)) return *chunked;
    return weighted_sum(in.name, weights, in.load, in.labels);
  } else {
    return policy.merge(in);  // Plan::compute checks it against the planned spec
  }
}

// The inputs for shared tensor `name` of `sources` (and `base`, when not null).
template <TensorSource S>
MergeInputs shared_tensor_inputs(const std::string& name, const std::vector<S>& sources,
                                 const S* base, std::vector<std::string> labels) {
  MergeInputs in;
  in.name = name;
  in.count = sources.size();
  in.labels = std::move(labels);
  in.load = [&sources, name](size_t j) { return sources.at(j).load(name); };
  if (base) in.base = [base, name] { return base->load(name); };
  // Sources on the CPU whose bytes lie in files are read in chunks (weighted sums).
  if constexpr (locates_tensor_bytes<S> && requires(const S& s) { s.device(); }) {
    in.bytes = [&sources, name](size_t j) -> std::optional<SourceBytes> {
      const S& s = sources.at(j);
      if (!s.device().is_cpu()) return std::nullopt;
      auto range = s.file_range(name);
      if (!range) return std::nullopt;
      const auto spec = s.spec(name);
      return SourceBytes{*range, spec.shape, spec.dtype};
    };
  }
  return in;
}

// Averages one tensor over in-memory copies with `policy` (and the seed's copy `base`, which
// tensor-aware policies need).
template <AveragingPolicy Policy>
torch::Tensor average(const Policy& policy, const std::string& name,
                      const std::vector<torch::Tensor>& tensors,
                      const std::vector<std::string>& labels = {}, const torch::Tensor& base = {}) {
  MergeInputs in;
  in.name = name;
  in.count = tensors.size();
  in.labels = labels;
  for (size_t j = in.labels.size(); j < tensors.size(); ++j)
    in.labels.push_back("source " + std::to_string(j));
  in.load = [&tensors](size_t j) { return tensors.at(j); };
  if (base.defined()) in.base = [base] { return base; };
  const auto weights = plan_averaging(policy, tensors.size(), base.defined());
  return merge_tensor(policy, weights, in);
}

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
