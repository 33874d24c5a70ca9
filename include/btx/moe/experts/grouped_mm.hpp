// SPDX-License-Identifier: MIT
// Grouped GEMMs for packed experts: at::_grouped_mm multiplies each expert's block of the
// sorted token rows by that expert's weight in one call, instead of one matmul per expert.
// Which LibTorch builds, devices and dtypes support it differs (CPU in recent torch; CUDA
// on sm90+, with 16-byte aligned widths), so support is probed once per (device type,
// dtype) with a tiny forward and backward, and callers fall back to the per-expert loop.
#pragma once

#include <torch/torch.h>

#include <ATen/autocast_mode.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/core/moe_config.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// Whether at::_grouped_mm runs forward and backward for `dtype` on `type` devices here.
inline bool grouped_mm_supported(torch::Device device, torch::ScalarType dtype) {
  static std::mutex mu;
  static std::map<std::pair<int, int>, bool> known;
  const std::pair<int, int> key{int(device.type()), int(dtype)};
  std::lock_guard<std::mutex> lock(mu);
  if (const auto it = known.find(key); it != known.end()) return it->second;
  bool ok = false;
  try {
    torch::AutoGradMode grad(true);
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const auto o = torch::TensorOptions().device(device).dtype(dtype);
    auto x = torch::ones({3, 16}, o).requires_grad_(true);
    auto w = torch::ones({2, 16, 16}, o).requires_grad_(true);
    const auto offs = torch::tensor({1, 3}, torch::kInt32).to(device);
    auto y = at::_grouped_mm(x, w, offs);
    (y * torch::ones_like(y)).sum().backward();
    ok = y.size(0) == 3 && x.grad().defined() && w.grad().defined();
  } catch (const std::exception&) {
    ok = false;
  }
  known[key] = ok;
  return ok;
}

// The dtype the experts compute in: autocast's when it is on for x's device, else x's.
inline torch::ScalarType expert_compute_dtype(const torch::Tensor& x) {
  const auto type = x.device().type();
  return at::autocast::is_autocast_enabled(type) ? at::autocast::get_autocast_dtype(type)
                                                 : x.scalar_type();
}

// Whether a grouped GEMM over experts of widths D and F can run for x's device and dtype
// (CUDA's kernels want 16-byte aligned widths).
inline bool grouped_mm_usable(const torch::Tensor& x, int64_t D, int64_t F) {
  const auto dtype = expert_compute_dtype(x);
  if (x.is_cuda()) {
    const int64_t per_16_bytes = 16 / int64_t(c10::elementSize(dtype));
    if (D % per_16_bytes != 0 || F % per_16_bytes != 0) return false;
  }
  return grouped_mm_supported(x.device(), dtype);
}

// End offsets of each expert's block (int32, on `device`), as at::_grouped_mm wants them.
inline torch::Tensor group_offsets(const std::vector<int64_t>& counts, torch::Device device) {
  std::vector<int32_t> ends(counts.size());
  int64_t end = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    end += counts[e];
    ends[e] = int32_t(end);
  }
  return torch::tensor(ends, torch::kInt32).to(device);
}

BTX_NAMESPACE_END
}  // namespace btx
