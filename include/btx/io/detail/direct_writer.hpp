// SPDX-License-Identifier: MIT
// Writing a file that will be fsynced with O_DIRECT: its bytes go from a few reused
// buffers to the disk, never through the page cache. A buffered write copies every byte
// into page-cache pages the kernel allocates for it and the disk gets them only at
// writeback; on the project's VM that was most of btx-merge's time (a 3 GB fp32 merge
// through the page cache: 1.8 s user, 10-16 s system, 9-15 s wall; with O_DIRECT: 1.8 s
// user, 2.1 s system, 3.3-4.6 s wall; benchmarks/RESULTS.md, issue 14).
//
//   auto engine = std::make_shared<io::DirectWriteEngine>();
//   const int fd = io::open_direct("out.tmp", O_WRONLY | O_CREAT | O_TRUNC);  // -1: no O_DIRECT
//   io::DirectFile file(fd, "out.tmp", total_size, engine);
//   file.write(header.data(), header.size(), 0);     // any order, any alignment,
//   file.copy({"src.safetensors", 4096, n}, 8 + h);   // from several threads
//   file.finish();                                   // then ftruncate(total_size), fsync
//
// O_DIRECT needs offsets, lengths and memory aligned to the device's block (4096 covers
// 512- and 4096-byte devices), and a stream writer's tensors start anywhere. So the
// aligned middle of each piece is staged into an aligned buffer and written by the
// engine's threads while the caller fills the next one; the at most two partial blocks at
// a piece's ends wait in memory until the neighbouring pieces complete them, and are
// then written whole (the file's last block padded; the caller truncates). Where the
// kernel still refuses a direct write the file drops O_DIRECT and the write goes through
// the page cache, so the bytes are the same either way.
#pragma once

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <btx/io/detail/file_range.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace io {

inline constexpr uint64_t kDirectAlign = 4096;

namespace detail {

struct FreeAligned {
  void operator()(uint8_t* p) const { std::free(p); }
};
using AlignedBytes = std::unique_ptr<uint8_t[], FreeAligned>;

inline AlignedBytes aligned_bytes(size_t n) {
  auto* p = static_cast<uint8_t*>(std::aligned_alloc(kDirectAlign, n));
  if (p == nullptr) throw std::bad_alloc();
  return AlignedBytes(p);
}

}  // namespace detail

// `file` opened with `flags | O_DIRECT` where its filesystem takes direct writes aligned
// to kDirectAlign (statx says so where the kernel reports it), else -1: the caller then
// writes through the page cache.
inline int open_direct(const std::filesystem::path& file, int flags, mode_t mode = 0644) {
  const int fd = ::open(file.c_str(), flags | O_DIRECT, mode);
  if (fd < 0) return -1;
#ifdef STATX_DIOALIGN
  struct statx st {};
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &st) == 0 &&
      (st.stx_mask & STATX_DIOALIGN) != 0 &&
      (st.stx_dio_offset_align == 0 || st.stx_dio_offset_align > kDirectAlign ||
       st.stx_dio_mem_align > kDirectAlign)) {
    ::close(fd);
    return -1;
  }
#endif
  return fd;
}

// Threads that write aligned buffers to files, and the few buffers they write from
// (allocated on first use, reused after). One engine can serve several files (the shards
// of a checkpoint), so their memory is `buffers x buffer_bytes` in all. Thread-safe.
class DirectWriteEngine {
 public:
  // Two writes in flight keep the disk's queue from draining between them.
  explicit DirectWriteEngine(size_t buffers = 3, size_t buffer_bytes = 8u << 20, size_t threads = 2)
      : max_buffers_(std::max<size_t>(buffers, 1)),
        buffer_bytes_(std::max<uint64_t>(buffer_bytes / kDirectAlign, 1) * kDirectAlign),
        threads_(std::max<size_t>(threads, 1)) {}
  DirectWriteEngine(const DirectWriteEngine&) = delete;
  DirectWriteEngine& operator=(const DirectWriteEngine&) = delete;
  ~DirectWriteEngine() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : writers_) t.join();  // each finishes its write in flight; the rest drop
  }

  [[nodiscard]] uint64_t buffer_bytes() const { return buffer_bytes_; }

  // A buffer of buffer_bytes() to fill, waiting for one while all are being written.
  // Throws the error of a write that failed since the last drain().
  uint8_t* acquire() {
    std::unique_lock lock(mutex_);
    throw_if_failed(lock);
    if (free_.empty() && owned_.size() < max_buffers_) {
      owned_.push_back(detail::aligned_bytes(buffer_bytes_));
      return owned_.back().get();
    }
    done_.wait(lock, [this] { return !free_.empty() || !error_.empty(); });
    throw_if_failed(lock);
    uint8_t* b = free_.back();
    free_.pop_back();
    return b;
  }
  // Hands back a buffer that was not submitted.
  void release(uint8_t* buffer) {
    {
      std::lock_guard lock(mutex_);
      free_.push_back(buffer);
    }
    done_.notify_all();
  }

  // Queues `n` bytes of an acquired buffer for `fd` at `offset` (both multiples of
  // kDirectAlign, or `offset` where the file ends); the buffer returns to the pool once
  // written. `file` names it in errors and must outlive the write (drain()).
  void submit(uint8_t* buffer, int fd, uint64_t offset, uint64_t n, const std::string* file) {
    {
      std::lock_guard lock(mutex_);
      while (writers_.size() < threads_) writers_.emplace_back([this] { run(); });
      jobs_.push_back({buffer, fd, offset, n, file});
      ++pending_;
    }
    wake_.notify_one();
  }

  // Waits until every submitted write is done; throws the first one that failed.
  void drain() {
    std::unique_lock lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
    throw_if_failed(lock);
  }

 private:
  struct Job {
    uint8_t* buffer;
    int fd;
    uint64_t offset, n;
    const std::string* file;
  };

  void throw_if_failed(std::unique_lock<std::mutex>& lock) {
    if (error_.empty()) return;
    std::string e = std::exchange(error_, std::string());
    lock.unlock();
    throw std::runtime_error(e);
  }

  void run() {
    for (;;) {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // stopping
      Job job = jobs_.front();
      jobs_.pop_front();
      const bool skip = stopping_ || !error_.empty();  // the file is being given up
      lock.unlock();
      std::string failed;
      if (!skip) {
        try {
          detail::pwrite_all(job.fd, job.buffer, job.n, job.offset, *job.file);
        } catch (const std::exception& e) {
          failed = e.what();
        }
      }
      lock.lock();
      if (!failed.empty() && error_.empty()) error_ = failed;
      free_.push_back(job.buffer);
      --pending_;
      lock.unlock();
      done_.notify_all();
    }
  }

  const size_t max_buffers_;
  const uint64_t buffer_bytes_;
  const size_t threads_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<detail::AlignedBytes> owned_;  // guarded by mutex_, as is all below
  std::vector<uint8_t*> free_;
  std::deque<Job> jobs_;
  size_t pending_ = 0;
  std::string error_;
  bool stopping_ = false;
  std::vector<std::thread> writers_;  // started by the first submit()
};

// One file of `size` bytes written in pieces, in any order and from any thread, through
// a DirectWriteEngine. Every byte of [0, size) must be written exactly once before
// finish(); the file may then be up to one block longer than `size` (its padded last
// block), which the caller truncates.
class DirectFile {
 public:
  // Copies `n` bytes of a piece, from `at` bytes into it, to `dst`.
  using Fill = std::function<void(uint8_t* dst, uint64_t at, uint64_t n)>;

  DirectFile(int fd, std::string name, uint64_t size, std::shared_ptr<DirectWriteEngine> engine)
      : fd_(fd), name_(std::move(name)), size_(size), engine_(std::move(engine)) {}
  DirectFile(const DirectFile&) = delete;
  DirectFile& operator=(const DirectFile&) = delete;
  ~DirectFile() {
    try {
      engine_->drain();  // nothing may still write to the fd its owner is about to close
    } catch (...) {      // the file is being given up; its owner reports what went wrong
    }
  }

  // Bytes [offset, offset + n) of the file, from memory.
  void write(const void* data, uint64_t n, uint64_t offset) {
    const auto* bytes = static_cast<const uint8_t*>(data);
    piece(n, offset,
          [bytes](uint8_t* dst, uint64_t at, uint64_t k) { std::memcpy(dst, bytes + at, k); });
  }

  // Bytes [offset, offset + range.bytes) of the file, read from `range` (page cache to the
  // staging buffer, one copy).
  void copy(const FileRange& range, uint64_t offset) {
    detail::OwnedFd in(::open(range.file.c_str(), O_RDONLY | O_CLOEXEC));
    if (in.fd < 0) {
      throw std::runtime_error("copying into " + name_ + ": cannot open " + range.file.string() +
                               ": " + std::strerror(errno));
    }
    piece(range.bytes, offset, [&](uint8_t* dst, uint64_t at, uint64_t k) {
      detail::pread_exact(in.fd, dst, k, range.offset + at, range.file.string());
    });
  }

  // Waits for every write; throws the first that failed, or names a block some byte of
  // which was never written.
  void finish() {
    engine_->drain();
    std::lock_guard lock(partial_mutex_);
    if (!partial_.empty()) {
      throw std::logic_error("btx::io::DirectFile: bytes from " +
                             std::to_string(partial_.begin()->first * kDirectAlign) + " of " +
                             name_ + " were never written");
    }
  }

 private:
  struct Partial {
    detail::AlignedBytes block;
    uint64_t filled = 0;
  };

  // The whole blocks inside [offset, offset + n) through the engine's buffers, the bytes
  // of the blocks it only partly covers into those blocks' waiting copies.
  void piece(uint64_t n, uint64_t offset, const Fill& fill) {
    if (n == 0) return;
    if (offset + n > size_) {
      throw std::logic_error("btx::io::DirectFile: a piece ends after " + name_ + "'s " +
                             std::to_string(size_) + " bytes");
    }
    const uint64_t end = offset + n;
    const uint64_t first_whole = (offset + kDirectAlign - 1) / kDirectAlign * kDirectAlign;
    uint64_t last_whole = end / kDirectAlign * kDirectAlign;
    if (end == size_) last_whole = end;  // the file's last block, short or not, is whole
    if (first_whole >= last_whole) {     // no whole block: a block's middle, or two blocks' ends
      partial(offset, end, offset, fill);
      return;
    }
    if (offset < first_whole) partial(offset, first_whole, offset, fill);
    if (last_whole < end) partial(last_whole, end, offset, fill);
    const uint64_t step = engine_->buffer_bytes();
    for (uint64_t at = first_whole; at < last_whole; at += step) {
      const uint64_t k = std::min(step, last_whole - at);
      uint8_t* buffer = engine_->acquire();
      try {
        fill(buffer, at - offset, k);
      } catch (...) {
        engine_->release(buffer);
        throw;
      }
      const uint64_t padded = (k + kDirectAlign - 1) / kDirectAlign * kDirectAlign;
      std::memset(buffer + k, 0, padded - k);  // only the file's last block is short
      engine_->submit(buffer, fd_, at, padded, &name_);
    }
  }

  // Bytes [from, to) of the file (inside the piece starting at `piece_start`), block by
  // block; a block whose every byte has arrived is written, padded where the file ends.
  void partial(uint64_t from, uint64_t to, uint64_t piece_start, const Fill& fill) {
    for (uint64_t at = from; at < to;) {
      const uint64_t index = at / kDirectAlign, block_start = index * kDirectAlign;
      const uint64_t k = std::min(to, block_start + kDirectAlign) - at;
      const uint64_t block_bytes = std::min(kDirectAlign, size_ - block_start);
      detail::AlignedBytes complete;
      {
        std::lock_guard lock(partial_mutex_);
        auto& p = partial_[index];
        if (!p.block) {
          p.block = detail::aligned_bytes(kDirectAlign);
          std::memset(p.block.get(), 0, kDirectAlign);
        }
        fill(p.block.get() + (at - block_start), at - piece_start, k);
        p.filled += k;
        if (p.filled == block_bytes) {
          complete = std::move(p.block);
          partial_.erase(index);
        }
      }
      if (complete) detail::pwrite_all(fd_, complete.get(), kDirectAlign, block_start, name_);
      at += k;
    }
  }

  int fd_;
  std::string name_;
  uint64_t size_;
  std::shared_ptr<DirectWriteEngine> engine_;
  std::mutex partial_mutex_;
  std::map<uint64_t, Partial> partial_;  // block index -> its bytes so far
};

}  // namespace io
BTX_NAMESPACE_END
}  // namespace btx
