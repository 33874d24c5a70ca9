// SPDX-License-Identifier: MIT
// The seam between btx's header-only kernels and compiled ones (the optional btx::kernels
// target, built from kernels/ where CUDA is found, as fmt builds its compiled part beside
// its header-only one). A routing or expert step asks for its operation by name; a compiled
// implementation registered for the tensors' device type runs it, else the header-only
// path does. set_header_only(true) (or BTX_KERNELS=header in the environment) forces the
// header-only path everywhere, to compare or to rule a kernel out.
//
//   auto g = btx::kernels::top_k_gating(logits_TE, /*k=*/2, /*renormalize=*/true);
#pragma once

#include <torch/torch.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace kernels {

// Softmax, top-k and (optionally) renormalisation of router logits [T, E].
struct TopKGating {
  torch::Tensor probs_TE;    // softmax over every expert
  torch::Tensor weights_TK;  // the k chosen experts' weights
  torch::Tensor indices_TK;  // the k chosen experts, most likely first
};
using TopKGatingFn =
    std::function<TopKGating(const torch::Tensor& logits_TE, int64_t k, bool renormalize)>;
// The weighted sum of expert outputs back onto their tokens: y_TD[token_N[n]] += w_N1[n] *
// y_ND[n], into [T, D] zeros of y_ND's dtype.
using CombineFn = std::function<torch::Tensor(
    const torch::Tensor& y_ND, const torch::Tensor& token_N, const torch::Tensor& w_N1, int64_t T)>;

// Compiled implementations, by operation and device type. Thread-safe; a later
// registration for the same pair replaces the earlier one.
class KernelRegistry {
 public:
  void provide_top_k_gating(c10::DeviceType device, TopKGatingFn fn) {
    std::lock_guard<std::mutex> lock(mutex_);
    top_k_[device] = std::move(fn);
  }
  void provide_combine(c10::DeviceType device, CombineFn fn) {
    std::lock_guard<std::mutex> lock(mutex_);
    combine_[device] = std::move(fn);
  }
  // The compiled implementation for `device`, or an empty function (the header-only path).
  [[nodiscard]] TopKGatingFn top_k_gating(c10::DeviceType device) const {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = top_k_.find(device);
    return it == top_k_.end() ? TopKGatingFn{} : it->second;
  }
  [[nodiscard]] CombineFn combine(c10::DeviceType device) const {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = combine_.find(device);
    return it == combine_.end() ? CombineFn{} : it->second;
  }
  void clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    top_k_.clear();
    combine_.clear();
  }

 private:
  mutable std::mutex mutex_;
  std::map<c10::DeviceType, TopKGatingFn> top_k_;
  std::map<c10::DeviceType, CombineFn> combine_;
};

// The process-wide registry the compiled unit fills (btx::kernels::register_compiled_kernels
// in kernels/, when the program links btx::kernels and calls it).
inline KernelRegistry& registry() {
  static KernelRegistry r;
  return r;
}

namespace detail {
inline std::atomic<int>& header_only_flag() {
  // -1: not decided yet (the environment decides on first use).
  static std::atomic<int> flag{-1};
  return flag;
}
}  // namespace detail

// Forces (or releases) the header-only path for every operation.
inline void set_header_only(bool on) {
  detail::header_only_flag().store(on ? 1 : 0);
}
[[nodiscard]] inline bool header_only() {
  auto& flag = detail::header_only_flag();
  int v = flag.load();
  if (v < 0) {
    const char* env = std::getenv("BTX_KERNELS");
    v = env != nullptr && std::string(env) == "header" ? 1 : 0;
    flag.store(v);
  }
  return v == 1;
}

// The header-only implementations, in LibTorch ops.
inline TopKGating top_k_gating_reference(const torch::Tensor& logits_TE, int64_t k,
                                         bool renormalize) {
  TopKGating g;
  g.probs_TE = torch::softmax(logits_TE, 1);
  auto [top_logits_TK, indices_TK] = logits_TE.topk(k, 1);
  g.indices_TK = indices_TK;
  // Softmax over the k largest logits equals renormalising the top-k of the full softmax.
  g.weights_TK = renormalize ? torch::softmax(top_logits_TK, 1) : g.probs_TE.gather(1, indices_TK);
  return g;
}
inline torch::Tensor combine_reference(const torch::Tensor& y_ND, const torch::Tensor& token_N,
                                       const torch::Tensor& w_N1, int64_t T) {
  return torch::zeros({T, y_ND.size(1)}, y_ND.options()).index_add(0, token_N, y_ND * w_N1);
}

// Which implementation an operation takes for `device` now: "compiled" or "header-only".
[[nodiscard]] inline std::string implementation(const std::string& op, c10::DeviceType device) {
  if (header_only()) return "header-only";
  const bool compiled = op == "top_k_gating" ? bool(registry().top_k_gating(device))
                        : op == "combine"    ? bool(registry().combine(device))
                                             : false;
  return compiled ? "compiled" : "header-only";
}

// The operations, each taking the compiled implementation for its tensors' device when
// there is one and it is not forced off.
inline TopKGating top_k_gating(const torch::Tensor& logits_TE, int64_t k, bool renormalize) {
  if (!header_only()) {
    if (auto fn = registry().top_k_gating(logits_TE.device().type())) {
      return fn(logits_TE, k, renormalize);
    }
  }
  return top_k_gating_reference(logits_TE, k, renormalize);
}
inline torch::Tensor combine(const torch::Tensor& y_ND, const torch::Tensor& token_N,
                             const torch::Tensor& w_N1, int64_t T) {
  if (!header_only()) {
    if (auto fn = registry().combine(y_ND.device().type())) return fn(y_ND, token_N, w_N1, T);
  }
  return combine_reference(y_ND, token_N, w_N1, T);
}

}  // namespace kernels
BTX_NAMESPACE_END
}  // namespace btx
