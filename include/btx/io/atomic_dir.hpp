// SPDX-License-Identifier: MIT
// AtomicDir: write an output folder under "<target>.tmp-<pid>-<random>" beside the target,
// then commit() fsyncs it and renames it into place. Without commit() the temp folder is
// removed, so nothing half-written ever appears at the target path. The writer holds a
// flock on its temp folder while it works, and a new AtomicDir first collects the temp
// folders of earlier writers to the same target that were killed (stale_temporaries.hpp).
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <btx/io/detail/stale_temporaries.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace io {

namespace detail {

inline std::string random_suffix() {
  std::random_device rd;
  std::uniform_int_distribution<uint32_t> dist;
  char buf[16];
  std::snprintf(buf, sizeof buf, "%08x", dist(rd));
  return std::to_string(::getpid()) + "-" + buf;
}

inline void fsync_path(const std::filesystem::path& p) {
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 || ::fsync(fd) != 0) {
    const int err = errno;
    if (fd >= 0) ::close(fd);
    throw std::runtime_error("cannot fsync " + p.string() + ": " + std::strerror(err));
  }
  ::close(fd);
}

inline bool exists_non_empty(const std::filesystem::path& p) {
  std::error_code ec;
  const auto st = std::filesystem::symlink_status(p, ec);
  if (ec || !std::filesystem::exists(st)) return false;
  return !std::filesystem::is_directory(st) || !std::filesystem::is_empty(p);
}

}  // namespace detail

class AtomicDir {
 public:
  // Creates the temp folder. Throws if `target` exists and is not an empty folder, unless
  // `overwrite` (then commit() moves the old one aside and removes it after the rename).
  explicit AtomicDir(std::filesystem::path target, bool overwrite = false)
      : target_(std::filesystem::absolute(std::move(target)).lexically_normal()),
        overwrite_(overwrite) {
    if (target_.filename().empty()) target_ = target_.parent_path();
    std::filesystem::create_directories(target_.parent_path());
    (void)collect_stale_temporaries(target_);  // first: it may restore the target
    check_target();
    tmp_ = target_;
    tmp_ += kTempMarker + detail::random_suffix();
    std::filesystem::create_directory(tmp_);
    // Blocking: a collector's probe holds the lock for an instant at most.
    lock_fd_ = ::open(tmp_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (lock_fd_ >= 0) (void)::flock(lock_fd_, LOCK_EX);
  }
  AtomicDir(const AtomicDir&) = delete;
  AtomicDir& operator=(const AtomicDir&) = delete;
  ~AtomicDir() {
    if (!committed_) {
      std::error_code ec;
      std::filesystem::remove_all(tmp_, ec);
    }
    if (lock_fd_ >= 0) ::close(lock_fd_);
  }

  // Where callers write; becomes target() on commit().
  [[nodiscard]] const std::filesystem::path& path() const { return tmp_; }
  [[nodiscard]] const std::filesystem::path& target() const { return target_; }
  [[nodiscard]] bool committed() const { return committed_; }

  // durable = false skips the fsyncs: faster, and a crash (not a kill) may then leave
  // files at the target whose data never reached the disk.
  void commit(bool durable = true) {
    if (committed_)
      throw std::logic_error("AtomicDir for " + target_.string() + " committed twice");
    if (durable) {
      for (const auto& entry : std::filesystem::recursive_directory_iterator(tmp_)) {
        if (entry.is_regular_file() || entry.is_directory()) detail::fsync_path(entry.path());
      }
      detail::fsync_path(tmp_);
    }
    check_target();
    std::filesystem::path old;
    std::error_code ec;
    if (detail::exists_non_empty(target_)) {
      old = target_;
      old += kAsideMarker + detail::random_suffix();
      std::filesystem::rename(target_, old);
    } else if (std::filesystem::is_directory(target_, ec)) {
      std::filesystem::remove(target_, ec);  // an empty folder: replace it
    }
    try {
      std::filesystem::rename(tmp_, target_);
    } catch (...) {
      if (!old.empty()) std::filesystem::rename(old, target_, ec);  // put the old one back
      throw;
    }
    committed_ = true;
    if (durable) detail::fsync_path(target_.parent_path());
    if (!old.empty()) std::filesystem::remove_all(old, ec);
  }

 private:
  void check_target() const {
    if (!overwrite_ && detail::exists_non_empty(target_)) {
      throw std::runtime_error("output folder " + target_.string() +
                               " already exists and is not empty; choose another path or allow "
                               "overwriting");
    }
  }

  std::filesystem::path target_, tmp_;
  bool overwrite_ = false;
  bool committed_ = false;
  int lock_fd_ = -1;  // flock on the temp folder: this writer is alive
};

}  // namespace io
BTX_NAMESPACE_END
}  // namespace btx
