// SPDX-License-Identifier: MIT
// Taking over another run's finished stage instead of training the same thing again: the
// variants of a sweep that differ only downstream of a stage (the MoE stage's length, the
// router), share that stage's result. Files are hard links where the file system allows
// and copies where it does not; sharing is safe because btx never modifies a finished
// file in place (every write goes to a temporary and is renamed over the target).
#pragma once

#include <filesystem>
#include <set>
#include <string>
#include <system_error>

#include <btx/io/atomic_dir.hpp>
#include <btx/recipe/run.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace recipe {

// Fills `to` (an empty folder) with `from`'s tree, leaving out the top-level entries in
// `skip`: each file a hard link to the original, or a copy across file systems.
inline void link_tree(const std::filesystem::path& from, const std::filesystem::path& to,
                      const std::set<std::string>& skip = {}) {
  namespace fs = std::filesystem;
  for (auto it = fs::recursive_directory_iterator(from); it != fs::recursive_directory_iterator();
       ++it) {
    const auto rel = fs::relative(it->path(), from);
    if (it.depth() == 0 && skip.count(rel.string())) {
      if (it->is_directory()) it.disable_recursion_pending();
      continue;
    }
    if (it->is_directory()) {
      fs::create_directories(to / rel);
    } else if (it->is_regular_file()) {
      std::error_code ec;
      fs::create_hard_link(it->path(), to / rel, ec);
      if (ec) fs::copy_file(it->path(), to / rel);
    }
  }
}

// `from`'s folder `name` as `to`'s, committed whole (io::AtomicDir), when `to` has none;
// false (nothing done) when `to` already has the folder or `from` lacks it.
inline bool adopt_folder(const Run& from, const Run& to, const std::string& name) {
  const auto source = from.dir() / name, target = to.dir() / name;
  if (std::filesystem::exists(target) || !std::filesystem::is_directory(source)) return false;
  io::AtomicDir out(target);
  link_tree(source, out.path(), {".lock"});
  out.commit();
  return true;
}

// Finished stage `stage` of `from` (verified intact: Run::done checks its files' hashes) as
// `to`'s, when `to` has not started it (no folder: a stage this run began is left to
// resume). Its training checkpoints are not taken. Says so, and returns whether it did.
inline bool adopt_stage(const Run& from, const Run& to, const std::string& stage) {
  if (std::filesystem::exists(to.stage_dir(stage)) || !from.done(stage)) return false;
  io::AtomicDir out(to.stage_dir(stage));
  link_tree(from.stage_dir(stage), out.path(), {".lock", "checkpoints"});
  out.commit();
  to.log(stage + " taken over from " + from.stage_dir(stage).string() + " (the same stage)");
  return true;
}

}  // namespace recipe
BTX_NAMESPACE_END
}  // namespace btx
