// SPDX-License-Identifier: MIT
// Scratch folders and error-text checks shared by the unit tests that touch files.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>
#include <system_error>

namespace btx::test {

// Every test's scratch folders live under <tmp>/btx-test-<pid>/, removed when the test
// binary exits.
inline std::filesystem::path scratch_root() {
  return std::filesystem::temp_directory_path() / ("btx-test-" + std::to_string(::getpid()));
}

inline const struct RemoveScratchAtExit {
  ~RemoveScratchAtExit() {
    std::error_code ec;
    std::filesystem::remove_all(scratch_root(), ec);
  }
} remove_scratch_at_exit;

// A fresh, empty folder <tmp>/btx-test-<pid>/<name>.
inline std::filesystem::path scratch_dir(const std::string& name) {
  auto dir = scratch_root() / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// Whether an error message mentions `part`.
inline bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace btx::test
