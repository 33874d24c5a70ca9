// SPDX-License-Identifier: MIT
// A merge Plan: the list of output tensors (name, shape, dtype), known after validation
// and before any data is read, plus a function computing one output tensor. A streaming
// writer walks the specs and computes each tensor in turn, so peak memory stays near the
// largest output tensor plus the source tensors it needs; materialize() runs it all. A
// plan may also say which outputs are exact copies of source bytes (file_ranges), so a
// writer copies those file to file instead of computing them.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/merge/manifest.hpp>
#include <btx/merge/state_dict.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

class Plan {
 public:
  using Compute = std::function<torch::Tensor(const TensorSpec&)>;
  // The file ranges whose bytes, concatenated, are the output in its planned dtype: one
  // per expert for packed experts [E, ...], else one; std::nullopt where it is computed.
  using FileRanges = std::optional<std::vector<io::FileRange>>;
  using Locate = std::function<FileRanges(const TensorSpec&)>;

  Plan(std::vector<TensorSpec> outputs, Compute compute, MixManifest manifest, Locate locate = {})
      : outputs_(std::move(outputs)),
        compute_(std::move(compute)),
        manifest_(std::move(manifest)),
        locate_(std::move(locate)) {
    for (size_t i = 0; i < outputs_.size(); ++i) {
      if (!index_.emplace(outputs_[i].name, i).second) {
        throw std::logic_error("btx::merge::Plan: output '" + outputs_[i].name + "' planned twice");
      }
    }
  }

  [[nodiscard]] const std::vector<TensorSpec>& outputs() const { return outputs_; }
  [[nodiscard]] const MixManifest& manifest() const { return manifest_; }

  [[nodiscard]] const TensorSpec& spec(const std::string& name) const {
    auto it = index_.find(name);
    if (it != index_.end()) return outputs_[it->second];
    throw std::out_of_range("btx::merge::Plan: no output tensor named '" + name + "' (" +
                            manifest_.method + " plan with " + std::to_string(outputs_.size()) +
                            " outputs)");
  }

  // Computes one output tensor; checks that it is what the plan promised.
  [[nodiscard]] torch::Tensor compute(const std::string& name) const {
    const TensorSpec& s = spec(name);
    torch::Tensor t = compute_(s);
    if (t.sizes().vec() != s.shape || t.scalar_type() != s.dtype) {
      throw std::logic_error("btx::merge::Plan: '" + name + "' computed as " +
                             shape_string(t.sizes().vec()) + " " + c10::toString(t.scalar_type()) +
                             " but planned as " + shape_string(s.shape) + " " +
                             c10::toString(s.dtype) + " (a bug in the merger)");
    }
    return t;
  }

  // Where output `name` lies, byte for byte, in the sources (see Locate); std::nullopt
  // when it must be computed.
  [[nodiscard]] FileRanges file_ranges(const std::string& name) const {
    return locate_ ? locate_(spec(name)) : std::nullopt;
  }

 private:
  std::vector<TensorSpec> outputs_;
  Compute compute_;
  MixManifest manifest_;
  Locate locate_;
  std::map<std::string, size_t> index_;
};

// Every output at once. Nothing is returned unless every tensor was computed.
inline StateDict materialize(const Plan& plan) {
  StateDict out;
  for (const auto& s : plan.outputs()) out.emplace(s.name, plan.compute(s.name));
  return out;
}

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
