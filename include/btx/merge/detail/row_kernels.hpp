// SPDX-License-Identifier: MIT
// The inner loops of a streamed weighted average (averaging.hpp's weighted_sum_in_chunks):
// widen a source's elements to the accumulator dtype, scale and add them, and narrow the
// sum back, over raw bytes read from the sources' files.
//
//   accumulate_rows<c10::BFloat16, float>(src, acc, n, 0.5, /*first=*/true);  // acc = src * w
//   accumulate_rows<c10::BFloat16, float>(src2, acc, n, 0.5, false);          // acc += src2 * w
//   narrow_rows<c10::BFloat16, float>(acc, dst, n);                           // dst = bf16(acc)
//
// Written with GCC/Clang vector extensions for bf16 (fp32 accumulator) and fp32 (fp64
// accumulator): btx's own programs build at -O1, where the plain loops stay scalar and
// c10's per-element bf16 conversions are calls; these were 30% of btx-merge's CPU time on
// a 1 GB bf16 merge (benchmarks/RESULTS.md, issue 14). Every result is bit-for-bit what the
// scalar loops give: widening is exact, each product and sum is one IEEE operation (no
// FMA: vector extensions do not contract), and narrowing rounds to nearest-even as c10's
// BFloat16 and a float cast do. Other dtype pairs (fp16) take the scalar loops.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {
namespace detail {

// The bf16 lane shuffles below take a 32-bit lane's upper half to be its odd 16-bit lane.
static_assert(std::endian::native == std::endian::little, "row kernels assume little-endian");

// 16-byte vectors only: SSE2 is every x86-64's baseline, and wider ones would change the
// calling convention of these helpers where AVX is off (GCC's -Wpsabi).
typedef uint16_t U16x8 __attribute__((vector_size(16)));
typedef uint32_t U32x4 __attribute__((vector_size(16)));
typedef float F32x4 __attribute__((vector_size(16)));
typedef float F32x2 __attribute__((vector_size(8)));
typedef double F64x2 __attribute__((vector_size(16)));

template <typename V>
inline V load_vector(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof v);  // unaligned loads: rows start anywhere in a file's bytes
  return v;
}
template <typename V>
inline void store_vector(void* p, const V& v) {
  std::memcpy(p, &v, sizeof v);
}

// Eight bf16 -> two fp32 x4: each bf16 is its fp32's upper half (exact). `half` 0 or 1.
inline F32x4 widen_bf16(U16x8 h, int half) {
  const U16x8 zero = {};
  return half == 0 ? (F32x4)__builtin_shufflevector(zero, h, 0, 8, 1, 9, 2, 10, 3, 11)
                   : (F32x4)__builtin_shufflevector(zero, h, 4, 12, 5, 13, 6, 14, 7, 15);
}

// fp32 bits rounded so that their upper half is the bf16 value: round to nearest-even,
// NaN -> 0x7FC0 (c10::BFloat16's conversion).
inline U16x8 rounded_for_bf16(F32x4 f) {
  const U32x4 u = (U32x4)f;
  const U32x4 rounded = u + (((u >> 16) & 1u) + 0x7FFFu);
  const U32x4 nan = (U32x4)(f != f);  // all ones in NaN lanes
  return (U16x8)((rounded & ~nan) | (0x7FC00000u & nan));
}

// Two fp32 x4 -> eight bf16 (each lane's upper half).
inline U16x8 narrow_to_bf16(F32x4 lo, F32x4 hi) {
  return __builtin_shufflevector(rounded_for_bf16(lo), rounded_for_bf16(hi), 1, 3, 5, 7, 9, 11, 13,
                                 15);
}

// acc = widen(src) * w (first) or acc += widen(src) * w, over n elements; src unaligned.
template <typename T, typename Acc>
void accumulate_rows(const void* src, Acc* acc, size_t n, double weight, bool first) {
  const auto* s = static_cast<const T*>(src);
  const Acc w = static_cast<Acc>(weight);  // as torch casts the scalar to the accumulator
  size_t i = 0;
  if constexpr (std::is_same_v<T, c10::BFloat16> && std::is_same_v<Acc, float>) {
    for (; i + 8 <= n; i += 8) {
      const U16x8 h = load_vector<U16x8>(s + i);
      for (int half = 0; half < 2; ++half) {
        Acc* a = acc + i + 4 * half;
        const F32x4 x = widen_bf16(h, half) * w;
        store_vector(a, first ? x : load_vector<F32x4>(a) + x);
      }
    }
  } else if constexpr (std::is_same_v<T, float> && std::is_same_v<Acc, double>) {
    for (; i + 2 <= n; i += 2) {
      const F64x2 x = __builtin_convertvector(load_vector<F32x2>(s + i), F64x2) * w;
      store_vector(acc + i, first ? x : load_vector<F64x2>(acc + i) + x);
    }
  }
  for (; i < n; ++i) {
    const Acc x = static_cast<Acc>(s[i]) * w;
    acc[i] = first ? x : acc[i] + x;
  }
}

// dst = narrow(acc) over n elements; dst unaligned.
template <typename T, typename Acc>
void narrow_rows(const Acc* acc, void* dst, size_t n) {
  auto* d = static_cast<T*>(dst);
  size_t i = 0;
  if constexpr (std::is_same_v<T, c10::BFloat16> && std::is_same_v<Acc, float>) {
    for (; i + 8 <= n; i += 8) {
      store_vector(d + i,
                   narrow_to_bf16(load_vector<F32x4>(acc + i), load_vector<F32x4>(acc + i + 4)));
    }
  } else if constexpr (std::is_same_v<T, float> && std::is_same_v<Acc, double>) {
    for (; i + 2 <= n; i += 2)
      store_vector(d + i, __builtin_convertvector(load_vector<F64x2>(acc + i), F32x2));
  }
  for (; i < n; ++i) d[i] = static_cast<T>(acc[i]);
}

}  // namespace detail
}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
