// SPDX-License-Identifier: MIT
// Statistics over repeated runs (the same experiment under several random seeds): mean and
// spread of each arm, and orderings stated only where the evidence carries them. Arms of one
// repeat share its data split and, when the recipe shares a seed model, the seed: the
// comparison of two arms is made on their per-repeat differences (paired), whose spread is
// smaller than either arm's own when repeats move both arms together.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// Mean and sample standard deviation of n values (sd is NaN below two values: one run has
// no spread, and pretending it were zero would let any gap pass as significant).
struct Spread {
  double mean = std::nan("");
  double sd = std::nan("");
  int64_t n = 0;
};

inline Spread spread_of(const std::vector<double>& values) {
  Spread s;
  s.n = int64_t(values.size());
  if (values.empty()) return s;
  double sum = 0;
  for (double v : values) sum += v;
  s.mean = sum / double(values.size());
  if (values.size() < 2) return s;
  double squares = 0;
  for (double v : values) squares += (v - s.mean) * (v - s.mean);
  s.sd = std::sqrt(squares / double(values.size() - 1));
  return s;
}

// "1.234 ± 0.010" (one value: "1.234"; missing: "-").
inline std::string format_spread(const Spread& s, int digits = 3) {
  if (s.n == 0 || std::isnan(s.mean)) return "-";
  char buf[96];
  if (std::isnan(s.sd)) {
    std::snprintf(buf, sizeof buf, "%.*f", digits, s.mean);
  } else {
    std::snprintf(buf, sizeof buf, "%.*f ± %.*f", digits, s.mean, digits, s.sd);
  }
  return buf;
}

// Student's t quantile for a two-sided 95% interval with `df` degrees of freedom (df >= 1):
// tabulated to 30, then 2.0 (its limit is 1.96; a little wide is the safe side).
inline double t_quantile_95(int64_t df) {
  static constexpr double table[] = {12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306,
                                     2.262,  2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120,
                                     2.110,  2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
                                     2.060,  2.056, 2.052, 2.048, 2.045, 2.042};
  if (df < 1) throw std::invalid_argument("t_quantile_95: df must be >= 1");
  return df <= 30 ? table[df - 1] : 2.0;
}

// Arm B minus arm A, repeat by repeat. `separated` holds when the 95% confidence interval of
// the mean difference (Student's t, n - 1 degrees of freedom) excludes zero: the gap is
// larger than the repeats' noise. A single repeat separates nothing; two separate only
// gaps that barely move (t = 12.7), three need a mean above 2.5 standard deviations.
struct PairedGap {
  Spread difference;                 // of b[k] - a[k]
  double half_width = std::nan("");  // of the 95% interval around difference.mean
  bool separated = false;
};

inline PairedGap paired_gap(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) {
    throw std::invalid_argument("paired_gap: arms have " + std::to_string(a.size()) + " and " +
                                std::to_string(b.size()) + " repeats; pairs need equal counts");
  }
  std::vector<double> d(a.size());
  for (size_t k = 0; k < a.size(); ++k) d[k] = b[k] - a[k];
  PairedGap g;
  g.difference = spread_of(d);
  if (d.size() >= 2) {
    const auto n = int64_t(d.size());
    g.half_width = t_quantile_95(n - 1) * g.difference.sd / std::sqrt(double(n));
    g.separated = std::abs(g.difference.mean) > g.half_width;
  }
  return g;
}

// Arms ranked by mean (lowest first: losses), each step to the next marked "<" when the pair
// is separated (paired_gap) and "≈" when it is within the noise, e.g. "dense < BTX ≈ upcycling".
// Every arm must hold the same number of repeats, in the same repeat order.
inline std::string ordering_statement(const std::map<std::string, std::vector<double>>& arms) {
  std::vector<std::pair<double, std::string>> ranked;
  for (const auto& [name, values] : arms) ranked.emplace_back(spread_of(values).mean, name);
  std::sort(ranked.begin(), ranked.end());
  std::string out;
  for (size_t i = 0; i < ranked.size(); ++i) {
    if (i > 0) {
      const auto gap = paired_gap(arms.at(ranked[i - 1].second), arms.at(ranked[i].second));
      out += gap.separated ? " < " : " ≈ ";
    }
    out += ranked[i].second;
  }
  return out;
}

BTX_NAMESPACE_END
}  // namespace btx
