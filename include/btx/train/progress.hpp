// SPDX-License-Identifier: MIT
// Progress on stderr (step, loss, tokens/s, ETA; a summary line at the end) and a JSON
// Lines metrics log with every logged step.
#pragma once

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

inline std::string format_duration(double seconds) {
  const auto s = static_cast<long long>(seconds + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%lld:%02lld", s / 60, s % 60);
  return buf;
}

class ProgressLine {
 public:
  ProgressLine(std::string stage, int64_t total_steps)
      : stage_(std::move(stage)), total_(total_steps), start_(clock::now()) {}

  void update(int64_t step, double loss, double tokens_per_s) const {
    const double elapsed = seconds();
    const double eta = step > 0 ? elapsed / double(step) * double(total_ - step) : 0.0;
    std::fprintf(stderr, "[%s] step %lld/%lld loss %.4f %.0f tok/s ETA %s\n", stage_.c_str(),
                 static_cast<long long>(step), static_cast<long long>(total_), loss, tokens_per_s,
                 format_duration(eta).c_str());
  }
  void finish(const std::string& summary) const {
    std::fprintf(stderr, "[%s] done in %s: %s\n", stage_.c_str(),
                 format_duration(seconds()).c_str(), summary.c_str());
  }
  [[nodiscard]] double seconds() const {
    return std::chrono::duration<double>(clock::now() - start_).count();
  }

 private:
  using clock = std::chrono::steady_clock;
  std::string stage_;
  int64_t total_;
  clock::time_point start_;
};

// Appends one JSON object per line; flushed per line so a killed run keeps its log.
class MetricsLog {
 public:
  MetricsLog() = default;
  explicit MetricsLog(const std::string& path) : out_(path, std::ios::app) {
    if (!out_) throw std::runtime_error("cannot open metrics log '" + path + "' for appending");
  }
  void write(const nlohmann::json& record) {
    if (!out_.is_open()) return;
    std::lock_guard lock(mutex_);
    out_ << record.dump() << '\n';
    out_.flush();
  }

 private:
  std::ofstream out_;
  std::mutex mutex_;
};

BTX_NAMESPACE_END
}  // namespace btx
