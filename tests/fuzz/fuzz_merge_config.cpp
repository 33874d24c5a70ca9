// SPDX-License-Identifier: MIT
// libFuzzer target. Any bytes as btx-merge's CONFIG (YAML or JSON) through parse_merge_config:
// refused with std::invalid_argument, or a config that keeps the promises the merge relies
// on. The body is btx::fuzz::merge_config_bytes (fuzz_tool_targets.hpp).
#include <cstddef>
#include <cstdint>

extern "C" void btx_fuzz_merge_config(const uint8_t* data, size_t size);  // fuzz_tool_bodies.cpp

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  btx_fuzz_merge_config(data, size);
  return 0;
}
