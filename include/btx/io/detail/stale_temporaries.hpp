// SPDX-License-Identifier: MIT
// Collecting what killed writers leave behind. btx's atomic writers work beside their
// target under "<name>.tmp-<pid>[-<random>]" (and move a replaced target aside as
// "<name>.old-<pid>-<random>"); a SIGKILL between creating and renaming leaves such an
// entry forever. The next writer in the same place removes every one whose owner is gone
// and says so on stderr; an owner that is alive is never touched.
//
// An owner counts as alive when its PID names a live process on this host, or when the
// entry is flock()ed: AtomicDir holds a lock on its temp folder while it writes, which the
// kernel drops when the writer dies, and which covers writers on other hosts of a shared
// file system (where a PID means nothing). A PID reused by an unrelated process only keeps
// a dead writer's leftovers one run longer.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace io {

// The markers between a target's name and its writer's PID.
inline constexpr const char* kTempMarker = ".tmp-";
inline constexpr const char* kAsideMarker = ".old-";

// One leftover that was collected: removed, or moved back to its target when the target
// was missing (a writer killed between moving the old folder aside and renaming the new
// one into place: the old one is then the only complete copy).
struct CollectedTemporary {
  std::filesystem::path path;
  int64_t owner_pid = 0;
  bool restored = false;
};

namespace detail {

// The writer PID in "<base><marker><pid>[-...]" when `name` has that form, else -1.
inline int64_t owner_pid_of(const std::string& name, const std::string& base,
                            const std::string& marker) {
  const std::string head = base + marker;
  if (name.size() <= head.size() || name.compare(0, head.size(), head) != 0) return -1;
  const auto digits = name.substr(head.size(), name.find('-', head.size()) - head.size());
  if (digits.empty() || digits.size() > 9 ||
      digits.find_first_not_of("0123456789") != std::string::npos)
    return -1;
  return std::stoll(digits);
}

inline bool process_alive(int64_t pid) {
  if (pid <= 0) return false;
  if (pid == ::getpid()) return true;
  return ::kill(pid_t(pid), 0) == 0 || errno == EPERM;
}

// Whether some process holds a flock on `path` (a writer on this or another host).
inline bool locked_by_another(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return false;
  const bool held = ::flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK;
  ::close(fd);  // drops the lock if this probe took it
  return held;
}

}  // namespace detail

// Collects the leftovers of `target`'s dead writers: entries beside it named
// "<target name>.tmp-<pid>..." or "<target name>.old-<pid>...". Reports each on stderr.
inline std::vector<CollectedTemporary> collect_stale_temporaries(
    const std::filesystem::path& target) {
  std::vector<CollectedTemporary> out;
  const auto dir = target.parent_path().empty() ? std::filesystem::path(".") : target.parent_path();
  const std::string base = target.filename().string();
  std::error_code ec;
  if (base.empty() || !std::filesystem::is_directory(dir, ec)) return out;
  std::vector<std::filesystem::path> entries;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    entries.push_back(entry.path());
  }
  for (const auto& path : entries) {
    const std::string name = path.filename().string();
    const int64_t aside_pid = detail::owner_pid_of(name, base, kAsideMarker);
    const bool aside = aside_pid >= 0;
    const int64_t pid = aside ? aside_pid : detail::owner_pid_of(name, base, kTempMarker);
    if (pid < 0 || detail::process_alive(pid) || detail::locked_by_another(path)) continue;
    CollectedTemporary c{path, pid, false};
    if (aside && !std::filesystem::exists(std::filesystem::symlink_status(target, ec))) {
      std::filesystem::rename(path, target, ec);
      c.restored = !ec;
    }
    if (!c.restored) {
      std::filesystem::remove_all(path, ec);
      if (ec) {
        std::fprintf(stderr, "btx: cannot remove stale temporary %s: %s\n", path.c_str(),
                     ec.message().c_str());
        continue;
      }
    }
    std::fprintf(stderr, "btx: %s %s (left by process %lld, which is gone)\n",
                 c.restored ? "restored the interrupted replacement's original as"
                            : "removed stale temporary",
                 (c.restored ? target : path).c_str(), static_cast<long long>(pid));
    out.push_back(std::move(c));
  }
  return out;
}

// The same for every target in `dir` whose name starts with `prefix` (a checkpoint
// folder's "step-*"), e.g. after pruning old checkpoints.
inline std::vector<CollectedTemporary> collect_stale_temporaries_in(
    const std::filesystem::path& dir, const std::string& prefix) {
  std::vector<CollectedTemporary> out;
  std::error_code ec;
  std::vector<std::filesystem::path> targets;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) != 0) continue;
    for (const char* marker : {kTempMarker, kAsideMarker}) {
      const auto at = name.find(marker);
      if (at != std::string::npos) targets.push_back(dir / name.substr(0, at));
    }
  }
  std::sort(targets.begin(), targets.end());
  targets.erase(std::unique(targets.begin(), targets.end()), targets.end());
  for (const auto& t : targets) {
    auto c = collect_stale_temporaries(t);
    out.insert(out.end(), c.begin(), c.end());
  }
  return out;
}

}  // namespace io
BTX_NAMESPACE_END
}  // namespace btx
