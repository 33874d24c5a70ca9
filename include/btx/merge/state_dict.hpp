// SPDX-License-Identifier: MIT
// State dicts (name -> tensor) and the TensorSource concept: the one view of a model that
// every merge reads, whether the tensors live in a module in memory or in a checkpoint
// read one tensor at a time.
#pragma once

#include <torch/torch.h>

#include <concepts>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/io/detail/file_range.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

// Ordered, so iteration (and every merge's output) is deterministic.
using StateDict = std::map<std::string, torch::Tensor>;

// What a tensor will be, known before it is read or computed.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  torch::ScalarType dtype = torch::kFloat32;

  [[nodiscard]] int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
  friend bool operator==(const TensorSpec&, const TensorSpec&) = default;
};

inline std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

inline TensorSpec spec_of(const std::string& name, const torch::Tensor& t) {
  return {name, t.sizes().vec(), t.scalar_type()};
}

// ------------------------------------------------------------- TensorSource
// Small named requirements, so a failing type is told which one it misses.
template <class S>
concept labels_itself = requires(const S& s) {
  { s.label() } -> std::convertible_to<std::string>;  // used in error messages
};
template <class S>
concept lists_tensor_names = requires(const S& s) {
  { s.names() } -> std::convertible_to<std::vector<std::string>>;  // sorted
};
template <class S>
concept describes_tensors = requires(const S& s, const std::string& name) {
  { s.spec(name) } -> std::same_as<TensorSpec>;  // without reading the data
};
template <class S>
concept loads_tensors = requires(const S& s, const std::string& name) {
  { s.load(name) } -> std::same_as<torch::Tensor>;  // one tensor; throws if absent
};
// Plans keep a copy of their sources, so a source should be cheap to copy (share file
// handles or mappings through a shared_ptr).
template <class S>
concept TensorSource = labels_itself<S> && lists_tensor_names<S> && describes_tensors<S> &&
    loads_tensors<S> && std::copy_constructible<S>;

// Optional: `s.file_range(name)`, where a tensor's bytes lie in a file (std::nullopt when
// they do not), so a merge can copy a tensor it leaves unchanged file to file.
template <class S>
concept locates_tensor_bytes = requires(const S& s, const std::string& name) {
  { s.file_range(name) } -> std::same_as<std::optional<io::FileRange>>;
};

// A TensorSource over tensors already in memory (copies share storage: cheap).
class StateDictSource {
 public:
  StateDictSource(StateDict tensors, std::string label)
      : tensors_(std::move(tensors)), label_(std::move(label)) {}

  [[nodiscard]] std::string label() const { return label_; }
  [[nodiscard]] std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(tensors_.size());
    for (const auto& [name, t] : tensors_) out.push_back(name);
    return out;
  }
  [[nodiscard]] TensorSpec spec(const std::string& name) const { return spec_of(name, at(name)); }
  [[nodiscard]] torch::Tensor load(const std::string& name) const { return at(name); }
  [[nodiscard]] const StateDict& tensors() const { return tensors_; }

 private:
  [[nodiscard]] const torch::Tensor& at(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) {
      throw std::out_of_range("btx::merge: tensor '" + name + "' is not in source '" + label_ +
                              "' (" + std::to_string(tensors_.size()) + " tensors)");
    }
    return it->second;
  }
  StateDict tensors_;
  std::string label_;
};
static_assert(TensorSource<StateDictSource>);

// --------------------------------------------------------- modules <-> dicts
// Parameters and buffers by their qualified names. The tensors are detached aliases of
// the module's (as in PyTorch's state_dict()): clone them to keep a snapshot.
inline StateDict state_dict_of(const torch::nn::Module& module) {
  StateDict out;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) {
    out.emplace(p.key(), p.value().detach());
  }
  for (const auto& b : module.named_buffers(/*recurse=*/true)) {
    out.emplace(b.key(), b.value().detach());
  }
  return out;
}
template <class Holder>
requires requires(const Holder& h) {
  h.ptr();
}
StateDict state_dict_of(const Holder& holder) {
  return state_dict_of(*holder.ptr());
}

// A TensorSource over a module's current weights.
template <class Module>
StateDictSource source_of(const Module& module, std::string label) {
  return StateDictSource(state_dict_of(module), std::move(label));
}

// One source per module, labelled labels[j] (e.g. the experts' domains).
template <class Module>
std::vector<StateDictSource> sources_of(const std::vector<Module>& modules,
                                        const std::vector<std::string>& labels) {
  if (labels.size() != modules.size()) {
    throw std::invalid_argument("btx::merge::sources_of: " + std::to_string(labels.size()) +
                                " labels for " + std::to_string(modules.size()) + " modules");
  }
  std::vector<StateDictSource> out;
  for (size_t j = 0; j < modules.size(); ++j) out.push_back(source_of(modules[j], labels[j]));
  return out;
}

// Copies `tensors` into the module's parameters and buffers by name (dtype and device
// converted). Every problem is collected first and reported in one std::invalid_argument
// before anything is copied: mis-shaped tensors always, missing and unexpected names when
// `strict`. So a failed load leaves the module untouched.
inline void load_state_dict(torch::nn::Module& module, const StateDict& tensors,
                            bool strict = true) {
  StateDict targets;
  for (const auto& p : module.named_parameters(true)) targets.emplace(p.key(), p.value());
  for (const auto& b : module.named_buffers(true)) targets.emplace(b.key(), b.value());

  std::vector<std::string> missing, unexpected, misshaped;
  for (const auto& [name, target] : targets) {
    auto it = tensors.find(name);
    if (it == tensors.end()) {
      missing.push_back(name);
    } else if (it->second.sizes() != target.sizes()) {
      misshaped.push_back(name + " (module " + shape_string(target.sizes().vec()) + ", given " +
                          shape_string(it->second.sizes().vec()) + ")");
    }
  }
  for (const auto& [name, t] : tensors) {
    if (!targets.count(name)) unexpected.push_back(name);
  }
  const auto list = [](const std::vector<std::string>& names) {
    std::string s;
    for (const auto& n : names) s += "\n  " + n;
    return s;
  };
  std::string problems;
  if (!misshaped.empty()) problems += "\nmis-shaped tensors:" + list(misshaped);
  if (strict && !missing.empty()) problems += "\nmissing tensors:" + list(missing);
  if (strict && !unexpected.empty()) problems += "\nunexpected tensors:" + list(unexpected);
  if (!problems.empty()) {
    throw std::invalid_argument(
        "btx::merge::load_state_dict: the state dict does not fit the module" + problems +
        "\n(check the model config, or pass strict=false to skip missing/unexpected names)");
  }
  torch::NoGradGuard no_grad;
  for (auto& [name, target] : targets) {
    auto it = tensors.find(name);
    if (it != tensors.end()) target.copy_(it->second);
  }
}
template <class Holder>
requires requires(const Holder& h) {
  h.ptr();
}
void load_state_dict(const Holder& holder, const StateDict& tensors, bool strict = true) {
  load_state_dict(*holder.ptr(), tensors, strict);
}

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
