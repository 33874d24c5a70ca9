// SPDX-License-Identifier: MIT
// A command's output folder must not be, or contain, one of its inputs: writing it replaces
// the folder (io::AtomicDir renames the new one into place), so the input would be gone,
// and a user's experts are often their only copy. refuse_output_over_inputs throws naming
// both before anything is read or written; no --force overrides it.
#pragma once

#include <filesystem>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace io {

// Whether `inner` is `outer` or lies inside it, after resolving symlinks and "..".
inline bool is_same_or_inside(const std::filesystem::path& inner,
                              const std::filesystem::path& outer) {
  namespace fs = std::filesystem;
  const fs::path a = fs::weakly_canonical(fs::absolute(inner));
  const fs::path b = fs::weakly_canonical(fs::absolute(outer));
  const fs::path rel = a.lexically_relative(b);
  return !rel.empty() && *rel.begin() != "..";
}

// `inputs`: (what it is, e.g. "experts[1].source_model", its path); empty paths skipped.
inline void refuse_output_over_inputs(
    const std::filesystem::path& out, const std::string& out_name,
    const std::vector<std::pair<std::string, std::filesystem::path>>& inputs) {
  for (const auto& [what, path] : inputs) {
    if (path.empty() || !is_same_or_inside(path, out)) continue;
    throw std::invalid_argument(out_name + " " + out.string() + " is or contains " + what + " " +
                                path.string() +
                                ": writing it would destroy that input (refused, --force or "
                                "not); choose another output folder");
  }
}

}  // namespace io
BTX_NAMESPACE_END
}  // namespace btx
