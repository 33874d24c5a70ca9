// SPDX-License-Identifier: MIT
// btx's one content hash: 64-bit FNV-1a. Fast, dependency-free and stable across runs and
// machines, which is all a fingerprint in a manifest needs (it is not cryptographic).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// Incremental FNV-1a over any bytes; hex() is the 16-digit lower-case form manifests show.
class Fnv1a64 {
 public:
  void add(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) h_ = (h_ ^ p[i]) * kPrime;
  }
  void add(std::string_view bytes) { add(bytes.data(), bytes.size()); }
  [[nodiscard]] uint64_t value() const { return h_; }
  [[nodiscard]] std::string hex() const { return to_hex(h_); }

  static std::string to_hex(uint64_t h) {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
    return buf;
  }

 private:
  static constexpr uint64_t kOffset = 0xcbf29ce484222325ULL;
  static constexpr uint64_t kPrime = 0x100000001b3ULL;
  uint64_t h_ = kOffset;
};

inline uint64_t fnv1a64(std::string_view bytes) {
  Fnv1a64 h;
  h.add(bytes);
  return h.value();
}

BTX_NAMESPACE_END
}  // namespace btx
