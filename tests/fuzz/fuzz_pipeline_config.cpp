// SPDX-License-Identifier: MIT
// libFuzzer target. Any bytes as btx-pipeline's CONFIG (YAML or JSON), read and checked as
// its main() does: refused with std::invalid_argument, or accepted with a config.json that
// its workers read back to the same config. The body is btx::fuzz::pipeline_config_bytes
// (fuzz_tool_targets.hpp).
#include <cstddef>
#include <cstdint>

extern "C" void btx_fuzz_pipeline_config(const uint8_t* data, size_t size);  // fuzz_tool_bodies.cpp

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  btx_fuzz_pipeline_config(data, size);
  return 0;
}
