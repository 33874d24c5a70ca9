// SPDX-License-Identifier: MIT
// Where and in what precision training runs: a device (cpu, cuda, cuda:N) and a precision
// (fp32; bf16 mixed precision: fp32 master weights and optimizer state, matmuls in bf16
// under LibTorch's autocast; pure bf16: bf16 weights and optimizer state). placed() fills
// the trainer's seams with it. A device this machine does not have is refused when it is
// parsed (core/device.hpp), before any work starts. "auto" picks bf16-mixed where the
// hardware computes in bf16 (resolve_precision). Routing math stays fp32 under autocast
// (moe/router_helpers.hpp), as do the losses (autocast runs log_softmax in fp32).
#pragma once

#include <torch/torch.h>

#include <ATen/autocast_mode.h>
#include <ATen/cpu/Utils.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

#include <btx/core/device.hpp>
#include <btx/train/hooks.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

enum class Precision {
  fp32,        // everything fp32
  bf16_mixed,  // fp32 weights and optimizer state, bf16 matmuls (autocast)
  bf16         // bf16 weights, optimizer state and compute
};

inline Precision parse_precision(const std::string& name) {
  if (name == "fp32") return Precision::fp32;
  if (name == "bf16-mixed" || name == "bf16_mixed") return Precision::bf16_mixed;
  if (name == "bf16") return Precision::bf16;
  throw std::invalid_argument(
      "precision '" + name +
      "' is not one of fp32, bf16-mixed, bf16 (or auto where a config allows it)");
}

inline std::string precision_name(Precision p) {
  switch (p) {
    case Precision::fp32:
      return "fp32";
    case Precision::bf16_mixed:
      return "bf16-mixed";
    case Precision::bf16:
      return "bf16";
  }
  return "?";
}

// Whether this CPU computes in bf16 natively (AVX512-BF16, AMX-BF16, Arm's BF16 / SVE-BF16),
// where bf16 matmuls run at up to twice fp32's rate instead of being emulated.
inline bool cpu_has_bf16() {
  static const bool has = [] {
    const auto caps = at::cpu::get_cpu_capabilities();
    for (const char* key : {"avx512_bf16", "amx_bf16", "bf16", "sve_bf16"}) {
      const auto it = caps.find(key);
      if (it != caps.end() && it->second.isBool() && it->second.toBool()) return true;
    }
    return false;
  }();
  return has;
}

// A configured precision with "auto" resolved for `device`, and why (for the log).
struct PrecisionChoice {
  Precision precision = Precision::fp32;
  std::string why;
};

// "auto" is bf16-mixed where it pays: on a CPU with native bf16 (measured on AVX512-BF16:
// 2-2.5x fp32's training throughput, benchmarks/RESULTS.md) and on CUDA devices (bf16
// tensor cores since Ampere); fp32 on other CPUs, where bf16 is emulated and slower.
// Anything else is parse_precision's.
inline PrecisionChoice resolve_precision(const std::string& name, const torch::Device& device) {
  if (name != "auto") return {parse_precision(name), name};
  if (device.is_cuda()) return {Precision::bf16_mixed, "auto: bf16-mixed on CUDA"};
  if (cpu_has_bf16())
    return {Precision::bf16_mixed, "auto: bf16-mixed (this CPU computes in bf16)"};
  return {Precision::fp32, "auto: fp32 (this CPU has no native bf16)"};
}

struct Placement {
  torch::Device device = torch::kCPU;
  Precision precision = Precision::fp32;
};

namespace detail {

// Autocast to bf16 on `device`'s type for one forward (and the loss), restored after.
class AutocastRegion {
 public:
  explicit AutocastRegion(torch::DeviceType type)
      : type_(type),
        was_enabled_(at::autocast::is_autocast_enabled(type)),
        was_dtype_(at::autocast::get_autocast_dtype(type)) {
    at::autocast::set_autocast_dtype(type_, torch::kBFloat16);
    at::autocast::set_autocast_enabled(type_, true);
    at::autocast::increment_nesting();
  }
  AutocastRegion(const AutocastRegion&) = delete;
  AutocastRegion& operator=(const AutocastRegion&) = delete;
  ~AutocastRegion() {
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(type_, was_enabled_);
    at::autocast::set_autocast_dtype(type_, was_dtype_);
  }

 private:
  torch::DeviceType type_;
  bool was_enabled_;
  torch::ScalarType was_dtype_;
};

// A user's forward scope with an autocast region inside it (members are destroyed in
// reverse order: the region is left first).
struct NestedAutocast {
  NestedAutocast(std::shared_ptr<void> user_scope, torch::DeviceType type)
      : outer(std::move(user_scope)), region(type) {}
  std::shared_ptr<void> outer;
  AutocastRegion region;
};

}  // namespace detail

// `hooks` with the model and every batch moved to `placement.device` (the user's own
// placement runs first) and the precision applied: bf16 casts the model's weights (its
// optimizer then keeps bf16 state), bf16-mixed runs each forward under bf16 autocast.
inline TrainHooks placed(const Placement& placement, TrainHooks hooks = {}) {
  const auto device = placement.device;
  const auto precision = placement.precision;
  hooks.place_model = [device, precision,
                       user = std::move(hooks.place_model)](torch::nn::Module& m) {
    if (user) user(m);
    m.to(device);
    if (precision == Precision::bf16) m.to(torch::kBFloat16);
  };
  hooks.place_batch = [device, user = std::move(hooks.place_batch)](const torch::Tensor& ids_BS) {
    const auto mine = user ? user(ids_BS) : ids_BS;
    return mine.to(device);
  };
  if (precision == Precision::bf16_mixed) {
    // The user's scope (if any) is entered first and left last, around the autocast region.
    hooks.forward_scope = [type = device.type(), user = std::move(hooks.forward_scope)] {
      return std::shared_ptr<void>(
          std::make_shared<detail::NestedAutocast>(user ? user() : nullptr, type));
    };
  }
  return hooks;
}

BTX_NAMESPACE_END
}  // namespace btx
