// SPDX-License-Identifier: MIT
// libFuzzer target. Any bytes as a Hugging Face config.json: refused with std::runtime_error, or a
// config that validates and survives a write/read round trip.
#include <cstddef>
#include <cstdint>

#include "fuzz_targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  btx::fuzz::config_bytes(data, size);
  return 0;
}
