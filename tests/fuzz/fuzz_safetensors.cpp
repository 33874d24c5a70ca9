// SPDX-License-Identifier: MIT
// libFuzzer target. Any bytes as a safetensors file: io::SafetensorsFile refuses them with
// io::FormatError or reads every tensor consistently with its header.
#include <cstddef>
#include <cstdint>

#include "fuzz_targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  btx::fuzz::safetensors_bytes(data, size);
  return 0;
}
