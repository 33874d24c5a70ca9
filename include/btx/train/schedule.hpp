// SPDX-License-Identifier: MIT
// The paper's learning-rate schedule: linear warmup, then cosine decay to a floor
// (10% of the peak in BTX).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

struct CosineSchedule {
  double peak_lr = 3e-3;
  int64_t warmup_steps = 20;
  int64_t total_steps = 1000;
  double floor_ratio = 0.1;

  // step counts from 0.
  [[nodiscard]] double operator()(int64_t step) const {
    if (warmup_steps > 0 && step < warmup_steps) {
      return peak_lr * double(step + 1) / double(warmup_steps);
    }
    const double span = double(std::max<int64_t>(1, total_steps - warmup_steps));
    const double progress = std::clamp(double(step - warmup_steps) / span, 0.0, 1.0);
    const double cosine = 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
    return peak_lr * (floor_ratio + (1.0 - floor_ratio) * cosine);
  }
};

BTX_NAMESPACE_END
}  // namespace btx
