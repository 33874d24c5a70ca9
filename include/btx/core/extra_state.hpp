// SPDX-License-Identifier: MIT
// ExtraState: the hook through which a module exposes state that is neither a parameter
// nor a buffer (a random generator, a step counter) to training checkpoints, so a resumed
// run continues exactly where the interrupted one stopped.
#pragma once

#include <torch/torch.h>

#include <map>
#include <mutex>
#include <stdexcept>
#include <string>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

class ExtraState {
 public:
  virtual ~ExtraState() = default;
  // Named CPU tensors (any dtype); load_extra_state() receives exactly these names back.
  [[nodiscard]] virtual std::map<std::string, torch::Tensor> extra_state() const = 0;
  virtual void load_extra_state(const std::map<std::string, torch::Tensor>& state) = 0;

 protected:
  ExtraState() = default;
  ExtraState(const ExtraState&) = default;
  ExtraState(ExtraState&&) = default;
  ExtraState& operator=(const ExtraState&) = default;
  ExtraState& operator=(ExtraState&&) = default;
};

// A generator's state as a uint8 tensor (a copy), and back.
inline torch::Tensor generator_state(at::Generator generator) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  return generator.get_state().clone();
}
inline void set_generator_state(at::Generator generator, const torch::Tensor& state) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(state.to(torch::kCPU, torch::kUInt8).contiguous());
}

// state.at(name) with an error that says which module's state lacks it.
inline const torch::Tensor& extra_state_entry(const std::map<std::string, torch::Tensor>& state,
                                              const std::string& name, const std::string& owner) {
  auto it = state.find(name);
  if (it == state.end()) {
    throw std::invalid_argument(owner + ": extra state has no entry '" + name +
                                "'; the checkpoint was written by a different module type");
  }
  return it->second;
}

BTX_NAMESPACE_END
}  // namespace btx
