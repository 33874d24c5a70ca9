// SPDX-License-Identifier: MIT
// OpTrace: every ATen operator btx calls while a trace is open, seen through LibTorch's
// TESTING_ONLY_GenericMode dispatch key (a mode key above autograd, so it sees the calls
// btx's code makes, not the kernels they decompose into). It records the two things that
// break or slow a GPU run and that a CPU run cannot show by itself:
//   - tensors created on the default device: a factory (zeros, rand, arange, ...) called
//     without a device and without a tensor to take one from lands on the CPU whatever
//     device the model is on;
//   - value-dependent ops: item(), or an op whose output size depends on values (nonzero,
//     masked_select, ...), each a synchronisation with the device. (A copy to the host
//     cannot be told here from a same-device .to() when the device is the CPU; btx counts
//     its own, core/host_read.hpp.)
// The fallback that does the recording is registered by trace_fallback_registration() in
// the one test file that uses it (a dispatch key takes one fallback per process).
#pragma once

#include <torch/library.h>
#include <torch/torch.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace btx::test {

struct OpTrace {
  std::vector<std::string> default_device_factories;  // op names, in call order
  std::vector<std::string> syncs;                     // value-dependent ops, in call order
  std::map<std::string, int64_t> calls;               // every op seen, with its count
  std::set<std::string> output_devices;               // devices of every tensor produced
};

namespace detail {

inline std::mutex& trace_mutex() {
  static std::mutex m;
  return m;
}
inline OpTrace*& current_trace() {
  static OpTrace* t = nullptr;
  return t;
}

// Ops whose result size depends on tensor values, so the host must wait for the device.
inline bool value_dependent(const std::string& name) {
  static const std::set<std::string> ops = {"aten::item",          "aten::_local_scalar_dense",
                                            "aten::is_nonzero",    "aten::equal",
                                            "aten::allclose",      "aten::nonzero",
                                            "aten::masked_select", "aten::unique",
                                            "aten::_unique2",      "aten::unique_consecutive",
                                            "aten::unique_dim",    "aten::tolist"};
  return ops.count(name) > 0;
}

inline void collect_devices(const c10::IValue& v, std::set<std::string>& out) {
  if (v.isTensor()) {
    if (v.toTensor().defined()) out.insert(v.toTensor().device().str());
  } else if (v.isTensorList()) {
    for (const at::Tensor& t : v.toTensorList().vec())
      if (t.defined()) out.insert(t.device().str());
  }
}

inline bool has_tensor(const c10::IValue& v) {
  if (v.isTensor()) return v.toTensor().defined();
  if (v.isTensorList()) return v.toTensorList().size() > 0;
  if (v.isList()) {
    for (const auto& e : v.toListRef())
      if (e.isTensor()) return true;
  }
  return false;
}

inline void trace_fallback(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  const std::string name = schema.name();
  const auto& arguments = schema.arguments();
  const size_t n = arguments.size();
  bool tensor_input = false;
  bool has_device_arg = false;
  std::optional<c10::Device> device;
  for (size_t i = 0; i < n; ++i) {
    const c10::IValue& v = (*stack)[stack->size() - n + i];
    tensor_input = tensor_input || has_tensor(v);
    if (arguments[i].name() == "device") {
      has_device_arg = true;
      if (!v.isNone()) device = v.toDevice();
    }
  }
  {
    c10::impl::ExcludeDispatchKeyGuard guard(c10::DispatchKey::TESTING_ONLY_GenericMode);
    op.callBoxed(stack);
  }
  std::lock_guard<std::mutex> lock(trace_mutex());
  OpTrace* trace = current_trace();
  if (trace == nullptr) return;
  ++trace->calls[name];
  for (size_t i = 0; i < schema.returns().size(); ++i)
    collect_devices((*stack)[stack->size() - schema.returns().size() + i], trace->output_devices);
  if (has_device_arg && !device && !tensor_input) trace->default_device_factories.push_back(name);
  if (value_dependent(name)) trace->syncs.push_back(name);
}

}  // namespace detail

// Records into `trace` while alive, on this thread and on the autograd threads it starts.
class TraceScope {
 public:
  explicit TraceScope(OpTrace& trace) : guard_(c10::DispatchKey::TESTING_ONLY_GenericMode) {
    std::lock_guard<std::mutex> lock(detail::trace_mutex());
    detail::current_trace() = &trace;
  }
  TraceScope(const TraceScope&) = delete;
  TraceScope& operator=(const TraceScope&) = delete;
  ~TraceScope() {
    std::lock_guard<std::mutex> lock(detail::trace_mutex());
    detail::current_trace() = nullptr;
  }

 private:
  c10::impl::IncludeDispatchKeyGuard guard_;
};

}  // namespace btx::test

// In exactly one translation unit.
#define BTX_TEST_REGISTER_OP_TRACE()                                                             \
  TORCH_LIBRARY_IMPL(_, TESTING_ONLY_GenericMode, m) {                                           \
    m.fallback(torch::CppFunction::makeFromBoxedFunction<&btx::test::detail::trace_fallback>()); \
  }
