// SPDX-License-Identifier: MIT
// Generated arithmetic problems with answers: the default math domain. A problem is
// "a+b=c\n" (also -, *); exact-match evaluation prompts "a+b=" and compares the greedy
// continuation up to the newline with "c".
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

struct ArithmeticProblem {
  std::string prompt;  // "37+48="
  std::string answer;  // "85"
  [[nodiscard]] std::string text() const { return prompt + answer + "\n"; }
};

// Deterministic for a seed: the same problems on every machine.
inline std::vector<ArithmeticProblem> arithmetic_problems(size_t count, uint64_t seed,
                                                          int64_t max_operand = 99) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> operand(0, max_operand);
  std::uniform_int_distribution<int> op(0, 2);
  std::vector<ArithmeticProblem> out;
  out.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    const int64_t a = operand(rng), b = operand(rng);
    const int o = op(rng);
    const char sym = "+-*"[o];
    const int64_t c = o == 0 ? a + b : o == 1 ? a - b : a * b;
    out.push_back({std::to_string(a) + sym + std::to_string(b) + "=", std::to_string(c)});
  }
  return out;
}

inline std::string arithmetic_text(const std::vector<ArithmeticProblem>& problems) {
  std::string text;
  for (const auto& p : problems) text += p.text();
  return text;
}

BTX_NAMESPACE_END
}  // namespace btx
