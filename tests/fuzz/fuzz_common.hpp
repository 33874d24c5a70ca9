// SPDX-License-Identifier: MIT
// What every fuzz target body shares (tests/fuzz/fuzz_targets.hpp, fuzz_tool_targets.hpp).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

namespace btx::fuzz {

// A broken promise (not a refused input): report and abort so libFuzzer saves the input.
[[noreturn]] inline void broken(const std::string& what) {
  std::fprintf(stderr, "btx fuzz: broken promise: %s\n", what.c_str());
  std::abort();
}

}  // namespace btx::fuzz
