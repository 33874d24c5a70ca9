// SPDX-License-Identifier: MIT
// FolderLock: one writer at a time for a folder (a pipeline's run folder, a stage). An
// advisory flock() on "<folder>/<name>", taken without waiting: a second taker is refused
// at once with FolderBusy naming the holder's PID, host and start time (which the holder
// writes into the lock file). The kernel drops the lock when its holder dies, however it
// dies, so a crashed run never needs a lock file removed by hand; the file itself stays
// and is simply taken again.
//
//   auto lock = btx::io::FolderLock::acquire(run_dir, ".lock", "pipeline run " + run_dir);
#pragma once

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace io {

// Another live process holds the lock.
class FolderBusy : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class FolderLock {
 public:
  FolderLock() = default;
  FolderLock(FolderLock&& o) noexcept : fd_(std::exchange(o.fd_, -1)), file_(std::move(o.file_)) {}
  FolderLock& operator=(FolderLock&& o) noexcept {
    if (this != &o) {
      release();
      fd_ = std::exchange(o.fd_, -1);
      file_ = std::move(o.file_);
    }
    return *this;
  }
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;
  ~FolderLock() { release(); }

  // Locks `folder`/`name` (creating the folder and file); `what` names the folder in the
  // refusal ("run folder runs/x"). Throws FolderBusy when another holder has it; the same
  // process taking it twice is refused too (flock locks belong to open files).
  static FolderLock acquire(const std::filesystem::path& folder, const std::string& name,
                            const std::string& what) {
    std::filesystem::create_directories(folder);
    FolderLock lock;
    lock.file_ = folder / name;
    lock.fd_ = ::open(lock.file_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock.fd_ < 0) {
      throw std::runtime_error("cannot open lock file " + lock.file_.string() + ": " +
                               std::strerror(errno));
    }
    if (::flock(lock.fd_, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      if (err != EWOULDBLOCK) {
        throw std::runtime_error("cannot lock " + lock.file_.string() + ": " + std::strerror(err));
      }
      std::string holder = read_holder(lock.file_);
      throw FolderBusy(what + " is in use by " +
                       (holder.empty() ? std::string("another process") : holder) + " (lock file " +
                       lock.file_.string() + "); wait for it to finish or stop it, then rerun");
    }
    lock.write_holder();
    return lock;
  }

  [[nodiscard]] bool held() const { return fd_ >= 0; }
  [[nodiscard]] const std::filesystem::path& file() const { return file_; }

  // Who holds the lock now, as its holder wrote it ("process 123 on host h since ...").
  static std::string read_holder(const std::filesystem::path& file) {
    std::ifstream in(file);
    std::string line;
    std::getline(in, line);
    return line;
  }

 private:
  void write_holder() const {
    char host[256] = {};
    if (::gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "?");
    char since[64] = {};
    const std::time_t now = std::time(nullptr);
    std::tm utc{};
    ::gmtime_r(&now, &utc);
    std::strftime(since, sizeof since, "%Y-%m-%dT%H:%M:%SZ", &utc);
    std::ostringstream text;
    text << "process " << ::getpid() << " on host " << host << " since " << since << "\n";
    const std::string s = text.str();
    if (::ftruncate(fd_, 0) == 0) (void)!::pwrite(fd_, s.data(), s.size(), 0);
  }
  void release() {
    if (fd_ >= 0) ::close(fd_);  // closing drops the lock; the file stays for the next taker
    fd_ = -1;
  }

  int fd_ = -1;
  std::filesystem::path file_;
};

}  // namespace io
BTX_NAMESPACE_END
}  // namespace btx
