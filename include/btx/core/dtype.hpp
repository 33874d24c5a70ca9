// SPDX-License-Identifier: MIT
// btx's one table of weight dtype names: the strings Hugging Face config.json files use for
// `torch_dtype`/`dtype`, and the ones btx-merge and the pipeline accept, both ways.
#pragma once

#include <c10/core/ScalarType.h>

#include <array>
#include <stdexcept>
#include <string>
#include <utility>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

namespace detail {
inline const std::array<std::pair<const char*, c10::ScalarType>, 4>& weight_dtypes() {
  static const std::array<std::pair<const char*, c10::ScalarType>, 4> table = {{
      {"float32", c10::kFloat},
      {"bfloat16", c10::kBFloat16},
      {"float16", c10::kHalf},
      {"float64", c10::kDouble},
  }};
  return table;
}
}  // namespace detail

// "float32", "bfloat16", ...; throws std::invalid_argument for a dtype weights never have.
inline std::string dtype_name(c10::ScalarType t) {
  for (const auto& [name, type] : detail::weight_dtypes()) {
    if (type == t) return name;
  }
  throw std::invalid_argument(std::string("no Hugging Face dtype name for weights of dtype ") +
                              c10::toString(t));
}

// The inverse of dtype_name; the error lists the accepted names.
inline c10::ScalarType dtype_from_name(const std::string& name) {
  for (const auto& [n, type] : detail::weight_dtypes()) {
    if (name == n) return type;
  }
  throw std::invalid_argument("unknown dtype '" + name +
                              "'; use float32, bfloat16, float16 or float64");
}

BTX_NAMESPACE_END
}  // namespace btx
