// SPDX-License-Identifier: MIT
// A device named in a config or on a command line ("cpu", "cuda", "cuda:N"), checked against
// this machine when it is parsed, so a device it lacks is an error before any work starts.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// "cpu", "cuda" or "cuda:N", checked against this machine: a CUDA device on a machine
// without CUDA (or without device N) is a std::invalid_argument naming it.
inline torch::Device parse_device(const std::string& name) {
  std::optional<torch::Device> device;
  try {
    device.emplace(name);
  } catch (const std::exception&) {
    throw std::invalid_argument("device '" + name + "' is not cpu, cuda or cuda:N");
  }
  if (device->is_cpu()) return *device;
  if (!device->is_cuda()) {
    throw std::invalid_argument("device '" + name + "': btx trains on cpu or cuda devices");
  }
  if (!torch::cuda::is_available()) {
    throw std::invalid_argument("device '" + name +
                                "': this machine has no CUDA device (or this LibTorch has no "
                                "CUDA support); use device cpu");
  }
  const int64_t n = int64_t(torch::cuda::device_count());
  if (device->has_index() && device->index() >= n) {
    throw std::invalid_argument("device '" + name + "': this machine has " + std::to_string(n) +
                                " CUDA device(s)");
  }
  return *device;
}

BTX_NAMESPACE_END
}  // namespace btx
