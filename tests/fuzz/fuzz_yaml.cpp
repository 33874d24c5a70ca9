// SPDX-License-Identifier: MIT
// libFuzzer target. Any bytes as a tool's YAML or JSON config (tools/common/yaml_json.hpp):
// refused naming the file, or JSON within the alias and nesting limits that survives a JSON
// write/read round trip. The body is btx::fuzz::yaml_bytes (fuzz_tool_targets.hpp).
#include <cstddef>
#include <cstdint>

extern "C" void btx_fuzz_yaml(const uint8_t* data, size_t size);  // fuzz_tool_bodies.cpp

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  btx_fuzz_yaml(data, size);
  return 0;
}
