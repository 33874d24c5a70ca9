// SPDX-License-Identifier: MIT
// Refusing NaN and Inf in weights that btx reads to build something (a merge, a mix, a
// loaded model). safetensors stores any bit pattern, and one NaN in an expert's FFN, once
// averaged into the trunk, poisons every token of the merged model without a word; a tool
// that reads every tensor anyway can say where it was instead.
//
//   io::check_finite(t, "model.layers.0.mlp.up_proj.weight", "expert1/model.safetensors");
//
// The test reads each element's exponent bits once, at memory speed and without tensor
// ops, so it can ride along wherever btx already reads the bytes.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/io/detail/file_range.hpp>
#include <btx/io/detail/safetensors_header.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace io {

// What a reader does with a non-finite value: refuse it (the default), or take it, for
// users who must (a checkpoint whose NaN sits in a tensor they are about to replace).
enum class NonFinite { refuse, allow };

// A weight holds NaN or Inf. Names the tensor, the file and the first bad element.
class NonFiniteError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

// Index of the first element of `n` whose exponent bits are all ones (Inf or NaN in every
// IEEE-style float format: `mask` selects the exponent), or -1. Written with GCC/Clang
// vector extensions, so it runs at memory speed (19 GB/s from cache on this machine's
// SSE2) even where btx's own programs build at -O1, which does not vectorise plain loops
// (a scalar loop: 5 GB/s). Unaligned data is fine (memcpy loads).
template <typename Bits>
int64_t first_non_finite(const void* data, int64_t n, Bits mask) {
  typedef Bits Vec __attribute__((vector_size(16)));  // a typedef: GCC drops it on a using
  constexpr int64_t kLanes = 16 / int64_t(sizeof(Bits)), kBlock = 4096;
  const auto* bytes = static_cast<const uint8_t*>(data);
  const auto at = [bytes](int64_t i) {
    Bits x;
    std::memcpy(&x, bytes + i * int64_t(sizeof(Bits)), sizeof x);
    return x;
  };
  Vec m;
  for (int64_t k = 0; k < kLanes; ++k) m[k] = mask;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    Vec any = {};
    int64_t i = b;
    for (; i + 4 * kLanes <= e; i += 4 * kLanes) {
      Vec w[4];
      std::memcpy(w, bytes + i * int64_t(sizeof(Bits)), sizeof w);
      any |= ((w[0] & m) == m) | ((w[1] & m) == m) | ((w[2] & m) == m) | ((w[3] & m) == m);
    }
    bool bad = false;
    for (int64_t k = 0; k < kLanes; ++k) bad = bad || any[k] != 0;
    for (; i < e; ++i) bad = bad || (at(i) & mask) == mask;
    if (!bad) continue;
    for (i = b; i < e; ++i)
      if ((at(i) & mask) == mask) return i;
  }
  return -1;
}

// first_non_finite for the float dtypes btx stores; -2 for a dtype it cannot test by bits.
inline int64_t first_non_finite(const void* data, int64_t n, torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat32:
      return first_non_finite<uint32_t>(data, n, 0x7F800000u);
    case torch::kBFloat16:
      return first_non_finite<uint16_t>(data, n, uint16_t(0x7F80));
    case torch::kHalf:
      return first_non_finite<uint16_t>(data, n, uint16_t(0x7C00));
    case torch::kFloat64:
      return first_non_finite<uint64_t>(data, n, 0x7FF0000000000000ull);
    default:
      return -2;
  }
}

[[noreturn]] inline void throw_non_finite(const torch::Tensor& t, int64_t flat, int64_t count,
                                          const std::string& tensor, const std::string& file) {
  std::string index;
  int64_t rest = flat;
  for (int64_t d = t.dim() - 1; d >= 0; --d) {
    const int64_t size = t.size(d);
    index = std::to_string(rest % size) + (index.empty() ? "" : ", ") + index;
    rest /= size;
  }
  const double value = t.flatten()[flat].to(torch::kFloat64).item<double>();
  const std::string what = std::isnan(value) ? "NaN" : value > 0 ? "+Inf" : "-Inf";
  throw NonFiniteError("tensor \"" + tensor + "\" in " + file + " holds " + what + " at [" + index +
                       "] (" + std::to_string(count) + " of " + std::to_string(t.numel()) +
                       " elements are not finite); refusing to build on it (allow it with the "
                       "tool's allow_non_finite option)");
}

}  // namespace detail

// Throws NonFiniteError unless every element of `t` is finite (integer tensors always are).
// `tensor` and `file` name where `t` came from in the message. A contiguous CPU tensor is
// tested by its bits; any other goes through tensor ops.
inline void check_finite(const torch::Tensor& t, const std::string& tensor, const std::string& file,
                         NonFinite policy = NonFinite::refuse) {
  if (policy == NonFinite::allow || !t.defined() || t.numel() == 0) return;
  if (!t.is_floating_point()) return;
  if (t.device().is_cpu() && t.is_contiguous()) {
    const int64_t at = detail::first_non_finite(t.data_ptr(), t.numel(), t.scalar_type());
    if (at == -1) return;
    if (at >= 0) {
      const int64_t count = torch::logical_not(torch::isfinite(t)).sum().item<int64_t>();
      detail::throw_non_finite(t, at, count, tensor, file);
    }
  }
  const auto bad = torch::logical_not(torch::isfinite(t)).flatten().nonzero();
  if (bad.numel() == 0) return;
  detail::throw_non_finite(t, bad[0].item<int64_t>(), bad.size(0), tensor, file);
}

// The same check for a tensor whose bytes a merge copies without reading (`range` of a
// safetensors file, `dtype` and `shape` as its header says): read in chunks through one
// buffer, so memory stays flat; a chunk with a bad value rereads the whole tensor to name
// the element.
inline void check_finite(const FileRange& range, torch::ScalarType dtype,
                         const std::vector<int64_t>& shape, const std::string& tensor,
                         NonFinite policy = NonFinite::refuse) {
  if (policy == NonFinite::allow || range.bytes == 0) return;
  if (!c10::isFloatingType(dtype)) return;
  const uint64_t element = c10::elementSize(dtype);
  const uint64_t chunk = (4ull << 20) / element * element;
  thread_local std::vector<uint8_t> buffer;
  buffer.resize(chunk);
  for (uint64_t at = 0; at < range.bytes; at += chunk) {
    const uint64_t n = std::min(chunk, range.bytes - at);
    read_exact(range.file, buffer.data(), n, range.offset + at);
    if (detail::first_non_finite(buffer.data(), int64_t(n / element), dtype) == -1) continue;
    auto whole = torch::empty(shape, dtype);
    read_exact(range.file, whole.data_ptr(), range.bytes, range.offset);
    check_finite(whole, tensor, range.file.string(), policy);
    return;
  }
}

// The check riding another pass over a safetensors file's bytes (the XXH3 hash btx-merge
// computes of every source for its model card: io::xxh3_128_file's visitor), so a merge
// scans each source byte while it is in cache anyway. Pieces must arrive in file order.
// `tensors` are the file's (SafetensorsFile::tensors()), `data_start` where its data
// section begins.
class FiniteScan {
 public:
  FiniteScan(std::filesystem::path file, std::vector<TensorInfo> tensors, uint64_t data_start)
      : file_(std::move(file)), data_start_(data_start) {
    for (auto& t : tensors)
      if (c10::isFloatingType(t.dtype.type) && t.end > t.begin) tensors_.push_back(std::move(t));
    std::sort(tensors_.begin(), tensors_.end(),
              [](const TensorInfo& a, const TensorInfo& b) { return a.begin < b.begin; });
  }

  void operator()(uint64_t offset, const uint8_t* data, size_t n) {
    const uint64_t end = offset + n;
    while (next_ < tensors_.size() && data_start_ + tensors_[next_].end <= offset) ++next_;
    for (size_t i = next_; i < tensors_.size(); ++i) {
      const TensorInfo& t = tensors_[i];
      const uint64_t tb = data_start_ + t.begin, te = data_start_ + t.end;
      if (tb >= end) break;
      const uint64_t s = c10::elementSize(t.dtype.type);
      const uint64_t lo = std::max(offset, tb), hi = std::min(end, te);
      const uint64_t first = (lo - tb + s - 1) / s, last = (hi - tb) / s;  // whole elements
      if (first < last && detail::first_non_finite(data + (tb + first * s - offset),
                                                   int64_t(last - first), t.dtype.type) >= 0) {
        refuse(t);
      }
      // An element split by this piece's start: read on its own.
      if ((lo - tb) % s != 0 && lo == offset) {
        uint8_t element[16] = {};
        const uint64_t at = tb + (lo - tb) / s * s;
        read_exact(file_, element, s, at);
        if (detail::first_non_finite(element, 1, t.dtype.type) >= 0) refuse(t);
      }
    }
  }

 private:
  // The chunked check of the whole tensor names the element and counts them.
  [[noreturn]] void refuse(const TensorInfo& t) const {
    check_finite(FileRange{file_, data_start_ + t.begin, t.end - t.begin}, t.dtype.type, t.shape,
                 t.name);
    throw NonFiniteError("tensor \"" + t.name + "\" in " + file_.string() +
                         " changed while it was read");
  }

  std::filesystem::path file_;
  uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  size_t next_ = 0;
};

}  // namespace io
BTX_NAMESPACE_END
}  // namespace btx
