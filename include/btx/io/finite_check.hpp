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
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/io/file_range.hpp>
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
// IEEE-style float format: `mask` selects the exponent), or -1. Blocks of OR-ed tests
// vectorise, so this runs at memory speed with no tensor ops (and no device syncs).
template <typename Bits>
int64_t first_non_finite(const void* data, int64_t n, Bits mask) {
  const auto* x = static_cast<const Bits*>(data);
  constexpr int64_t kBlock = 4096;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    bool any = false;
    for (int64_t i = b; i < e; ++i) any |= (x[i] & mask) == mask;
    if (!any) continue;
    for (int64_t i = b; i < e; ++i)
      if ((x[i] & mask) == mask) return i;
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

}  // namespace io
BTX_NAMESPACE_END
}  // namespace btx
