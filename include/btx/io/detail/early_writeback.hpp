// SPDX-License-Identifier: MIT
// Starts the disk writing a file's finished ranges while its writer goes on computing the
// next ones, so the fsync that makes the file durable waits for the last ranges only, not
// for the whole file. Without it the kernel holds a merge's output in the page cache until
// the fsync (it starts writing back only at its dirty threshold, 10% of memory), and the
// fsync then waited 0.6-0.8 s for 1.1 GB on the project's machine: half of a 1 GB bf16
// btx-merge (benchmarks/RESULTS.md, issue 14).
//
//   io::EarlyWriteback writeback(fd);
//   pwrite(fd, data, n, offset);
//   writeback.push(offset, n);   // returns at once
//   ...
//   writeback.stop();            // before fsync and close
//
// sync_file_range(SYNC_FILE_RANGE_WRITE) blocks when the disk's queue is full, which made
// the merge slower when it was called inline (RESULTS.md); here a thread of its own makes
// the calls, so only that thread waits. It is a hint: errors are left to the fsync, which
// reports them, and on systems without sync_file_range push() does nothing.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>

#include <fcntl.h>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace io {

class EarlyWriteback {
 public:
  explicit EarlyWriteback(int fd) : fd_(fd) {}
  EarlyWriteback(const EarlyWriteback&) = delete;
  EarlyWriteback& operator=(const EarlyWriteback&) = delete;
  ~EarlyWriteback() { stop(); }

  // `bytes` at `offset` are written (pwrite or copy_file_range returned): start them on
  // their way to the disk. Safe from several writer threads at once.
  void push(uint64_t offset, uint64_t bytes) {
#if defined(__linux__)
    if (bytes == 0) return;
    std::lock_guard lock(mutex_);
    if (stopped_) return;
    if (!thread_.joinable()) thread_ = std::thread([this] { run(); });  // on first use
    ranges_.emplace_back(offset, bytes);
    wake_.notify_one();
#else
    (void)offset;
    (void)bytes;
#endif
  }

  // Drops the ranges not yet handed to the kernel (the fsync writes them) and waits for
  // the thread. Call it before the file is fsynced or closed; push() does nothing after.
  void stop() {
    {
      std::lock_guard lock(mutex_);
      stopped_ = true;
      ranges_.clear();
    }
    wake_.notify_one();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void run() {
#if defined(__linux__)
    for (;;) {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [this] { return stopped_ || !ranges_.empty(); });
      if (stopped_) return;
      const auto [offset, bytes] = ranges_.front();
      ranges_.pop_front();
      lock.unlock();
      (void)::sync_file_range(fd_, off64_t(offset), off64_t(bytes), SYNC_FILE_RANGE_WRITE);
    }
#endif
  }

  int fd_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::pair<uint64_t, uint64_t>> ranges_;  // guarded by mutex_
  bool stopped_ = false;                              // guarded by mutex_
  std::thread thread_;
};

}  // namespace io
BTX_NAMESPACE_END
}  // namespace btx
