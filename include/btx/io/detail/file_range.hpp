// SPDX-License-Identifier: MIT
// Byte ranges of files, and copying one into another file without passing the bytes
// through this process's memory: a merge moves tensors it does not change (a BTX expert's
// FFN, in the source's dtype) from source checkpoint to output with copy_file_range(2),
// which the kernel serves from the page cache (or by reflink where the filesystem can);
// where it cannot (across filesystems on old kernels, special files) it falls back to
// pread/pwrite through one reused buffer.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include <btx/io/detail/safetensors_header.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace io {

// `bytes` bytes of `file` from absolute offset `offset`.
struct FileRange {
  std::filesystem::path file;
  uint64_t offset = 0, bytes = 0;
};

namespace detail {

// An fd closed on scope exit.
struct OwnedFd {
  int fd = -1;
  explicit OwnedFd(int f) : fd(f) {}
  OwnedFd(const OwnedFd&) = delete;
  OwnedFd& operator=(const OwnedFd&) = delete;
  ~OwnedFd() {
    if (fd >= 0) ::close(fd);
  }
};

// pread/pwrite through a buffer kept across calls (per thread), for when the kernel
// cannot copy between the two files itself.
inline void copy_through_buffer(int in, uint64_t in_off, int out, uint64_t out_off, uint64_t n,
                                const std::string& what) {
  constexpr uint64_t kChunk = 8ull << 20;
  thread_local std::unique_ptr<uint8_t[]> buffer(new uint8_t[kChunk]);
  while (n > 0) {
    const ssize_t r = ::pread(in, buffer.get(), std::min(n, kChunk), off_t(in_off));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      throw std::runtime_error("copying " + what + ": " +
                               (r == 0 ? std::string("unexpected end of file (truncated?)")
                                       : std::string(std::strerror(errno))));
    }
    uint64_t done = 0;
    while (done < uint64_t(r)) {
      const ssize_t w =
          ::pwrite(out, buffer.get() + done, size_t(uint64_t(r) - done), off_t(out_off + done));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) throw std::runtime_error("copying " + what + ": " + std::strerror(errno));
      done += uint64_t(w);
    }
    in_off += uint64_t(r);
    out_off += uint64_t(r);
    n -= uint64_t(r);
  }
}

}  // namespace detail

namespace detail {

// Reads exactly n bytes at `offset` of the open `fd` (the file `file`) into `dst`; throws
// FormatError naming the file (a truncated checkpoint ends early).
inline void pread_exact(int fd, void* dst, uint64_t n, uint64_t offset, const std::string& file) {
  auto* p = static_cast<uint8_t*>(dst);
  while (n > 0) {
    const ssize_t r = ::pread(fd, p, std::min<uint64_t>(n, 1ull << 30), off_t(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      throw FormatError("reading " + file + " failed" +
                        (r == 0 ? std::string(": unexpected end of file (truncated?)")
                                : ": " + std::string(std::strerror(errno))));
    }
    p += r;
    n -= uint64_t(r);
    offset += uint64_t(r);
  }
}

// Writes all n bytes of `data` at `offset` of the open `fd` (the file `file`); throws naming
// the file. Where the fd has O_DIRECT and the kernel refuses a write under it (EINVAL:
// alignment), the flag is dropped from the fd for good and the write goes through the page
// cache (io/direct_writer.hpp).
inline void pwrite_all(int fd, const void* data, uint64_t n, uint64_t offset,
                       const std::string& file) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, p, std::min<uint64_t>(n, 1ull << 30), off_t(offset));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && errno == EINVAL) {
      const int flags = ::fcntl(fd, F_GETFL);
      if (flags >= 0 && (flags & O_DIRECT) != 0 && ::fcntl(fd, F_SETFL, flags & ~O_DIRECT) == 0)
        continue;
    }
    if (w <= 0) {
      throw std::runtime_error("writing " + file + " failed: " +
                               (w == 0 ? std::string("no progress") : std::strerror(errno)));
    }
    p += w;
    n -= uint64_t(w);
    offset += uint64_t(w);
  }
}

}  // namespace detail

// Reads exactly n bytes at `offset` of `file` into `dst`; throws FormatError naming the file
// (a truncated checkpoint ends early).
inline void read_exact(const std::filesystem::path& file, void* dst, uint64_t n, uint64_t offset) {
  detail::OwnedFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.fd < 0) throw FormatError("cannot open " + file.string() + ": " + std::strerror(errno));
  detail::pread_exact(fd.fd, dst, n, offset, file.string());
}

// Copies `range` into `out_fd` at `out_offset`; `what` names the copy in errors.
inline void copy_range_into(const FileRange& range, int out_fd, uint64_t out_offset,
                            const std::string& what) {
  detail::OwnedFd in(::open(range.file.c_str(), O_RDONLY | O_CLOEXEC));
  if (in.fd < 0) {
    throw std::runtime_error("copying " + what + ": cannot open " + range.file.string() + ": " +
                             std::strerror(errno));
  }
  loff_t in_off = loff_t(range.offset), out_off = loff_t(out_offset);
  uint64_t left = range.bytes;
  while (left > 0) {
    const ssize_t n = ::copy_file_range(in.fd, &in_off, out_fd, &out_off,
                                        size_t(std::min<uint64_t>(left, 1ull << 30)), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP ||
                  errno == EBADF)) {
      detail::copy_through_buffer(in.fd, uint64_t(in_off), out_fd, uint64_t(out_off), left, what);
      return;
    }
    if (n <= 0) {
      throw std::runtime_error("copying " + what + " from " + range.file.string() + ": " +
                               (n == 0 ? std::string("unexpected end of file (truncated?)")
                                       : std::string(std::strerror(errno))));
    }
    left -= uint64_t(n);
  }
}

}  // namespace io
BTX_NAMESPACE_END
}  // namespace btx
