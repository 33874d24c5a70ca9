// SPDX-License-Identifier: MIT
// The annealed Gumbel-softmax temperature of the Sample Top-1 router, on its own so that
// MoEOptions can carry it without pulling in the router (which registers itself by name
// and so depends on MoEOptions).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// tau(step) = max(floor, init * exp(-rate * step)); step counts training forwards.
struct TemperatureSchedule {
  double init = 1.0;
  double floor = 0.5;
  double rate = 1e-4;
  [[nodiscard]] double at(int64_t step) const {
    return std::max(floor, init * std::exp(-rate * static_cast<double>(step)));
  }
};

BTX_NAMESPACE_END
}  // namespace btx
