// SPDX-License-Identifier: MIT
// Content hashes of whole files: XXH3-128 (xxHash, Debian libxxhash-dev, used header-only),
// which hashes at memory speed, so recording every source's hash costs a merge a fraction
// of reading it once. It identifies contents (two checkpoints that differ anywhere get
// different hashes), it is not cryptographic.
//
//   const std::string h = btx::io::xxh3_128_file("expert0/model.safetensors");  // 32 hex digits
#pragma once

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <btx/io/detail/file_range.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace io {

inline constexpr const char* kFileHashName = "xxh3-128";

// Sees the bytes of a file being hashed, in order, a cache-sized piece at a time (just
// hashed, so still in cache): another check rides the same read (io/finite_check.hpp).
using ByteVisitor = std::function<void(uint64_t offset, const uint8_t* data, size_t n)>;

// XXH3-128 of `file`'s bytes as 32 lower-case hex digits (high half first, as xxhsum
// --tag -H2 prints it). Throws FormatError naming the file when it cannot be read; what
// `visit` throws passes through.
inline std::string xxh3_128_file(const std::filesystem::path& file, const ByteVisitor& visit = {}) {
  detail::OwnedFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.fd < 0) throw FormatError("cannot open " + file.string() + ": " + std::strerror(errno));
  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> state(XXH3_createState(),
                                                                 &XXH3_freeState);
  if (!state || XXH3_128bits_reset(state.get()) != XXH_OK) {
    throw std::runtime_error("btx::io: cannot start an XXH3 hash of " + file.string());
  }
  // Hashed straight from the page cache through a mapping, a window at a time so the
  // file's pages never all count as this process's (read() into a buffer cost more than
  // the hash itself); read() where a file cannot be mapped.
  struct stat st {};
  if (::fstat(fd.fd, &st) != 0) {
    throw FormatError("cannot stat " + file.string() + ": " + std::strerror(errno));
  }
  const auto size = uint64_t(st.st_size);
  // Hash, then visit, one piece at a time: the visitor reads it from cache.
  const auto update = [&](const uint8_t* data, size_t n, uint64_t offset) {
    constexpr size_t kPiece = 256u << 10;
    for (size_t k = 0; k < n; k += kPiece) {
      const size_t m = std::min(kPiece, n - k);
      (void)XXH3_128bits_update(state.get(), data + k, m);
      if (visit) visit(offset + k, data + k, m);
    }
  };
  // 16 MB: its pages count in the process's RSS while mapped (btx-merge's memory bound).
  constexpr uint64_t kWindow = 16ull << 20;
  bool mapped = size > 0;
  for (uint64_t at = 0; mapped && at < size; at += kWindow) {
    const auto n = size_t(std::min(kWindow, size - at));
    void* map = ::mmap(nullptr, n, PROT_READ, MAP_PRIVATE, fd.fd, off_t(at));
    if (map == MAP_FAILED) {
      if (at > 0) throw FormatError("cannot map " + file.string() + ": " + std::strerror(errno));
      mapped = false;
      break;
    }
    (void)::madvise(map, n, MADV_SEQUENTIAL);
    const auto unmap = [&] { ::munmap(map, n); };
    try {
      update(static_cast<const uint8_t*>(map), n, at);
    } catch (...) {
      unmap();
      throw;
    }
    unmap();
  }
  if (!mapped) {
    constexpr size_t kChunk = 8u << 20;
    thread_local std::unique_ptr<uint8_t[]> buffer(new uint8_t[kChunk]);
    for (uint64_t offset = 0;;) {
      const ssize_t r = ::pread(fd.fd, buffer.get(), kChunk, off_t(offset));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) throw FormatError("reading " + file.string() + " failed: " + std::strerror(errno));
      if (r == 0) break;
      update(buffer.get(), size_t(r), offset);
      offset += uint64_t(r);
    }
  }
  const XXH128_hash_t h = XXH3_128bits_digest(state.get());
  char hex[33];
  std::snprintf(hex, sizeof hex, "%016llx%016llx", static_cast<unsigned long long>(h.high64),
                static_cast<unsigned long long>(h.low64));
  return hex;
}

// XXH3-128 of every regular file under `dir`, keyed by its path relative to `dir` (with
// '/' separators), so a record of a folder's contents can be checked later.
inline std::map<std::string, std::string> xxh3_128_folder(const std::filesystem::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (e.is_regular_file())
      out[e.path().lexically_relative(dir).generic_string()] = xxh3_128_file(e.path());
  }
  return out;
}

// The first difference between a folder's contents now and `recorded` (from
// xxh3_128_folder), as "FILE is missing" or "FILE has changed ...", or "" when every
// recorded file is as it was (files added since are not the record's concern).
inline std::string folder_mismatch(const std::filesystem::path& dir,
                                   const std::map<std::string, std::string>& recorded) {
  std::error_code ec;
  for (const auto& [name, hash] : recorded) {
    const auto file = dir / name;
    if (!std::filesystem::is_regular_file(file, ec)) return file.string() + " is missing";
    if (xxh3_128_file(file) != hash) return file.string() + " has changed since it was written";
  }
  return "";
}

}  // namespace io
BTX_NAMESPACE_END
}  // namespace btx
