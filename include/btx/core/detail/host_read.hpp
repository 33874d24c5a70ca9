// SPDX-License-Identifier: MIT
// Host reads: every copy btx makes from a tensor's device to the host while training (the
// MoE dispatch's block sizes, the trainer's step values, the global-batch statistics) goes
// through read_to_host, which counts it. On a GPU each is a synchronisation that stalls
// the launch queue, so they are kept to the ones the work needs, and a test or a user's
// profiler can tell how many a step made (host_reads() before and after).
#pragma once

#include <torch/torch.h>

#include <atomic>
#include <cstdint>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

namespace detail {
inline std::atomic<int64_t>& host_read_counter() {
  static std::atomic<int64_t> count{0};
  return count;
}
}  // namespace detail

// How many host reads btx has made in this process so far (every thread).
inline int64_t host_reads() {
  return detail::host_read_counter().load(std::memory_order_relaxed);
}

// `t` copied to the host (contiguous, so its data can be read directly), counted.
inline torch::Tensor read_to_host(const torch::Tensor& t) {
  detail::host_read_counter().fetch_add(1, std::memory_order_relaxed);
  return t.to(torch::kCPU).contiguous();
}

BTX_NAMESPACE_END
}  // namespace btx
