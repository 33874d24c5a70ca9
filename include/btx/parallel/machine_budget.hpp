// SPDX-License-Identifier: MIT
// What of the machine a process may use: its cores (and how a driver divides them among the
// processes it runs at once) and its memory. The cores a process is entitled to are the fewest of:
// its CPU affinity (what taskset, cpusets, Slurm's task binding leave it), its cgroup's CPU quota
// (a container's
// --cpus, Kubernetes' limits; cgroup v2 cpu.max or v1 cfs_quota_us, the tightest along the
// path) and Slurm's SLURM_CPUS_PER_TASK. A user's explicit count wins over all three: a
// `threads` option, else OMP_NUM_THREADS. A driver passes each worker its share in
// BTX_THREADS (and OMP_NUM_THREADS, for any OpenMP runtime it loads), which the worker uses
// as given. use_threads() sets LibTorch's intra-op pool and, once, its inter-op pool.
#pragma once

#include <sched.h>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// A number of cores and what decided it (said in logs, recorded in stage records).
struct ThreadBudget {
  int64_t threads = 1;
  std::string
      source;  // e.g. "affinity", "cgroup cpu.max", "SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS"
  bool chosen = false;  // given (a threads option, BTX_THREADS, OMP_NUM_THREADS), not detected
};

namespace detail {

// A positive integer from environment variable `name`; nullopt when unset or empty. Anything
// else (0, "4x", -2) is an error naming the variable: a typo must not silently mean "all".
inline std::optional<int64_t> positive_env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  // Slurm writes SLURM_CPUS_PER_TASK as a plain count; OpenMP allows "4,2" (nested levels):
  // the first level is the process's.
  std::string s(v);
  if (const auto comma = s.find(','); comma != std::string::npos) s.resize(comma);
  size_t used = 0;
  int64_t n = 0;
  try {
    n = std::stoll(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != s.size() || n < 1) {
    throw std::invalid_argument(std::string("environment variable ") + name + "='" + v +
                                "' is not a positive number of threads");
  }
  return n;
}

inline std::string read_first_line(const std::filesystem::path& file) {
  std::ifstream in(file);
  std::string line;
  std::getline(in, line);
  return line;
}

// Cores allowed by one cgroup folder's quota, if it sets one: v2 "cpu.max" ("max 100000" or
// "200000 100000"), v1 "cpu.cfs_quota_us" (-1: none) over "cpu.cfs_period_us".
inline std::optional<double> quota_in(const std::filesystem::path& dir) {
  if (std::filesystem::exists(dir / "cpu.max")) {
    std::istringstream in(read_first_line(dir / "cpu.max"));
    std::string quota;
    double period = 0;
    in >> quota >> period;
    if (quota == "max" || quota.empty() || period <= 0) return std::nullopt;
    return std::stod(quota) / period;
  }
  if (std::filesystem::exists(dir / "cpu.cfs_quota_us")) {
    const double quota = std::stod(read_first_line(dir / "cpu.cfs_quota_us"));
    const double period = std::stod(read_first_line(dir / "cpu.cfs_period_us"));
    if (quota <= 0 || period <= 0) return std::nullopt;
    return quota / period;
  }
  return std::nullopt;
}

// Calls f(controllers, path) for each line of a /proc/<pid>/cgroup file: "0::/path" (v2,
// no controllers) or "N:cpu,cpuacct:/path" (v1).
template <class F>
void for_each_cgroup(const std::filesystem::path& self_cgroup, F&& f) {
  std::ifstream in(self_cgroup);
  std::string line;
  while (std::getline(in, line)) {
    const auto a = line.find(':');
    const auto b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    f(line.substr(a + 1, b - a - 1), line.substr(b + 1));
  }
}

// Whether a v1 controller list ("cpu,cpuacct") names `controller`.
inline bool lists(const std::string& controllers, const std::string& controller) {
  return ("," + controllers + ",").find("," + controller + ",") != std::string::npos;
}

}  // namespace detail

// Cores this process's CPU affinity mask allows (sched_getaffinity; hardware_concurrency
// where that fails).
inline int64_t affinity_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  return std::max<int64_t>(1, std::thread::hardware_concurrency());
}

// The tightest CPU quota over the cgroup this process is in and its ancestors, in cores
// (fractional: 1.5 for --cpus=1.5); nullopt when none is set. `cgroup_root` is where the
// hierarchy is mounted and `self_cgroup` the process's /proc/self/cgroup (tests pass their own).
inline std::optional<double> cgroup_cpu_quota(
    const std::filesystem::path& cgroup_root = "/sys/fs/cgroup",
    const std::filesystem::path& self_cgroup = "/proc/self/cgroup") {
  std::optional<double> tightest;
  const auto consider = [&](const std::filesystem::path& mount, std::string path) {
    // From the process's own folder up to the mount point: a parent's limit binds too.
    for (;;) {
      const auto dir = path.empty() || path == "/" ? mount : mount / path.substr(1);
      if (const auto q = detail::quota_in(dir)) tightest = tightest ? std::min(*tightest, *q) : *q;
      if (path.empty() || path == "/") break;
      path = path.substr(0, path.rfind('/'));
    }
  };
  detail::for_each_cgroup(self_cgroup,
                          [&](const std::string& controllers, const std::string& path) {
                            if (controllers.empty()) {
                              consider(cgroup_root, path);
                              if (std::filesystem::exists(cgroup_root / "unified"))
                                consider(cgroup_root / "unified", path);
                            } else if (detail::lists(controllers, "cpu")) {
                              consider(cgroup_root / controllers, path);
                              if (std::filesystem::exists(cgroup_root / "cpu"))
                                consider(cgroup_root / "cpu", path);
                            }
                          });
  return tightest;
}

// The cores this process may use, with no explicit count given: the fewest of its affinity,
// its cgroup quota (rounded up: 1.5 cores keep two threads busy part of the time) and
// SLURM_CPUS_PER_TASK.
inline ThreadBudget detected_cores() {
  ThreadBudget b{affinity_cpus(), "affinity"};
  if (const auto q = cgroup_cpu_quota()) {
    const auto cores = std::max<int64_t>(1, int64_t(std::ceil(*q - 1e-9)));
    if (cores < b.threads) b = {cores, "cgroup cpu quota"};
  }
  if (const auto slurm = detail::positive_env("SLURM_CPUS_PER_TASK")) {
    if (*slurm < b.threads) b = {*slurm, "SLURM_CPUS_PER_TASK"};
  }
  return b;
}

// The threads one process uses: `requested` when > 0 (a config's `threads`), else its
// driver's share (BTX_THREADS), else the user's OMP_NUM_THREADS, else every core it may use.
inline ThreadBudget process_threads(int64_t requested = 0) {
  if (requested < 0) {
    throw std::invalid_argument("threads must be >= 0 (0: detected), got " +
                                std::to_string(requested));
  }
  if (requested > 0) return {requested, "threads option", true};
  if (const auto n = detail::positive_env("BTX_THREADS")) {
    return {*n, "BTX_THREADS (its driver's share)", true};
  }
  if (const auto n = detail::positive_env("OMP_NUM_THREADS")) return {*n, "OMP_NUM_THREADS", true};
  return detected_cores();
}

// The most threads a training step of `flops` floating-point operations keeps busy: one per
// 25 GFLOP, at least one. Smaller steps are too short for OpenMP's fork and join per op to
// pay (the quick demo's stages: 11.6 s at 2 threads each one after another, 7.8 s at one
// thread each side by side); SmolLM2-135M's 4 x 256-token step (~0.8 TFLOP) scales to 2
// threads at 1.8x.
inline int64_t useful_threads(double flops_per_step) {
  return std::max<int64_t>(1, int64_t(flops_per_step / 25e9));
}

// Sets LibTorch's intra-op pool to `threads` and, the first time only (LibTorch allows it
// once, before any inter-op work), its inter-op pool to 1: btx's training issues no
// inter-op parallel work, and an idle pool per core only adds threads to a loaded machine.
inline void use_threads(int64_t threads) {
  if (threads < 1) throw std::invalid_argument("use_threads: threads must be >= 1");
  torch::set_num_threads(int(threads));
  static const bool interop_once = [] {
    try {
      torch::set_num_interop_threads(1);
    } catch (const std::exception&) {
      // Already set by the program (or inter-op work already ran): keep what it chose.
    }
    return true;
  }();
  (void)interop_once;
}

// Bytes this process may still allocate: /proc/meminfo's MemAvailable, or less where its
// cgroup's memory limit leaves less (v2 memory.max - memory.current, v1 limit_in_bytes -
// usage_in_bytes). 0 when neither can be read.
inline int64_t available_memory_bytes(
    const std::filesystem::path& meminfo = "/proc/meminfo",
    const std::filesystem::path& cgroup_root = "/sys/fs/cgroup",
    const std::filesystem::path& self_cgroup = "/proc/self/cgroup") {
  int64_t available = 0;
  {
    std::ifstream in(meminfo);
    std::string key;
    int64_t kb = 0;
    std::string unit;
    while (in >> key >> kb) {
      std::getline(in, unit);
      if (key == "MemAvailable:") available = kb * 1024;
    }
  }
  const auto number = [](const std::filesystem::path& f) -> std::optional<int64_t> {
    const auto line = detail::read_first_line(f);
    if (line.empty() || line == "max") return std::nullopt;
    try {
      return std::stoll(line);
    } catch (const std::exception&) {
      return std::nullopt;
    }
  };
  const auto consider = [&](const std::filesystem::path& dir, const char* limit, const char* used) {
    const auto l = number(dir / limit);
    const auto u = number(dir / used);
    // v1 writes "no limit" as a page-rounded 2^63.
    if (!l || !u || *l >= (int64_t(1) << 60)) return;
    const int64_t left = std::max<int64_t>(0, *l - *u);
    available = available > 0 ? std::min(available, left) : left;
  };
  detail::for_each_cgroup(self_cgroup, [&](const std::string& controllers,
                                           const std::string& path) {
    const auto rel = path.size() > 1 ? path.substr(1) : std::string();
    if (controllers.empty()) {
      consider(cgroup_root / rel, "memory.max", "memory.current");
    } else if (detail::lists(controllers, "memory")) {
      consider(cgroup_root / controllers / rel, "memory.limit_in_bytes", "memory.usage_in_bytes");
    }
  });
  return available;
}

// One line for a log: "2 threads (affinity)".
inline std::string describe(const ThreadBudget& b) {
  return std::to_string(b.threads) + (b.threads == 1 ? " thread (" : " threads (") + b.source + ")";
}

BTX_NAMESPACE_END
}  // namespace btx
