// SPDX-License-Identifier: MIT
// The bodies of fuzz_yaml, fuzz_pipeline_config and fuzz_merge_config (fuzz_tool_targets.hpp)
// compiled once for all three: each entry point is a small file that calls its body here.
#include <cstddef>
#include <cstdint>

#include "fuzz_tool_targets.hpp"

extern "C" void btx_fuzz_yaml(const uint8_t* data, size_t size) {
  btx::fuzz::yaml_bytes(data, size);
}

extern "C" void btx_fuzz_pipeline_config(const uint8_t* data, size_t size) {
  btx::fuzz::pipeline_config_bytes(data, size);
}

extern "C" void btx_fuzz_merge_config(const uint8_t* data, size_t size) {
  btx::fuzz::merge_config_bytes(data, size);
}
