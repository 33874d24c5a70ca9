// SPDX-License-Identifier: MIT
// libFuzzer target. Any bytes as model.safetensors.index.json beside fixed shards:
// io::CheckpointReader refuses them or reads only shards inside the folder (no path traversal,
// symlinks included).
#include <cstddef>
#include <cstdint>

#include "fuzz_targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  btx::fuzz::index_bytes(data, size);
  return 0;
}
