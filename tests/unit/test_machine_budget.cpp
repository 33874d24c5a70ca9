// SPDX-License-Identifier: MIT
// What of the machine a process may use (parallel/machine_budget.hpp): cgroup CPU quotas and
// memory limits read from fake hierarchies, the precedence of the explicit counts, the lanes
// a driver plans from cores and memory (recipe/workers.hpp), each worker's share, and the
// training memory estimate against the parameter count it rests on.
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <btx/parallel/machine_budget.hpp>
#include <btx/recipe/run.hpp>
#include <btx/recipe/workers.hpp>
#include <btx/train/memory_estimate.hpp>
#include <btx/train/precision.hpp>

namespace fs = std::filesystem;

namespace {

fs::path budget_dir(const std::string& name) {
  const auto dir = fs::temp_directory_path() / ("btx-test-" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void write_text(const fs::path& file, const std::string& text) {
  fs::create_directories(file.parent_path());
  std::ofstream(file) << text;
}

// Sets (or, with nullopt, clears) environment variables for one scope.
class ScopedVars {
 public:
  explicit ScopedVars(std::vector<std::pair<std::string, std::optional<std::string>>> vars) {
    for (const auto& [k, v] : vars) {
      const char* old = std::getenv(k.c_str());
      saved_.emplace_back(k, old ? std::optional<std::string>(old) : std::nullopt);
      if (v) {
        ::setenv(k.c_str(), v->c_str(), 1);
      } else {
        ::unsetenv(k.c_str());
      }
    }
  }
  ~ScopedVars() {
    for (const auto& [k, v] : saved_) {
      if (v) {
        ::setenv(k.c_str(), v->c_str(), 1);
      } else {
        ::unsetenv(k.c_str());
      }
    }
  }
  ScopedVars(const ScopedVars&) = delete;
  ScopedVars& operator=(const ScopedVars&) = delete;

 private:
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

btx::recipe::WorkerJob lane_job(const std::string& stage, int64_t ranks = 1) {
  return {stage, {"/bin/true"}, ranks};
}

}  // namespace

TEST_CASE("machine budget: cgroup v2 cpu.max, the tightest along the path") {
  const auto root = budget_dir("cgroup-v2");
  write_text(root / "self", "0::/job/step\n");
  write_text(root / "fs/cpu.max", "max 100000\n");
  write_text(root / "fs/job/cpu.max", "300000 100000\n");    // 3 cores for the job
  write_text(root / "fs/job/step/cpu.max", "max 100000\n");  // none of its own
  auto q = btx::cgroup_cpu_quota(root / "fs", root / "self");
  REQUIRE(q.has_value());
  CHECK(*q == doctest::Approx(3.0));
  write_text(root / "fs/job/step/cpu.max", "150000 100000\n");  // 1.5 cores: tighter
  q = btx::cgroup_cpu_quota(root / "fs", root / "self");
  REQUIRE(q.has_value());
  CHECK(*q == doctest::Approx(1.5));
  // No limit anywhere: none.
  write_text(root / "fs/job/cpu.max", "max 100000\n");
  write_text(root / "fs/job/step/cpu.max", "max 100000\n");
  CHECK_FALSE(btx::cgroup_cpu_quota(root / "fs", root / "self").has_value());
}

TEST_CASE("machine budget: cgroup v1 cfs quota and memory limit") {
  const auto root = budget_dir("cgroup-v1");
  write_text(root / "self", "4:memory:/box\n3:cpu,cpuacct:/box\n0::/\n");
  write_text(root / "fs/cpu,cpuacct/box/cpu.cfs_quota_us", "200000\n");
  write_text(root / "fs/cpu,cpuacct/box/cpu.cfs_period_us", "100000\n");
  const auto q = btx::cgroup_cpu_quota(root / "fs", root / "self");
  REQUIRE(q.has_value());
  CHECK(*q == doctest::Approx(2.0));
  write_text(root / "fs/cpu,cpuacct/box/cpu.cfs_quota_us", "-1\n");
  CHECK_FALSE(btx::cgroup_cpu_quota(root / "fs", root / "self").has_value());

  write_text(root / "meminfo", "MemTotal: 16000000 kB\nMemAvailable: 8000000 kB\n");
  CHECK(btx::available_memory_bytes(root / "meminfo", root / "fs", root / "self") ==
        8000000LL * 1024);
  // A 3 GB limit with 1 GB used leaves 2 GB, less than MemAvailable.
  write_text(root / "fs/memory/box/memory.limit_in_bytes", std::to_string(3LL << 30) + "\n");
  write_text(root / "fs/memory/box/memory.usage_in_bytes", std::to_string(1LL << 30) + "\n");
  CHECK(btx::available_memory_bytes(root / "meminfo", root / "fs", root / "self") == (2LL << 30));
  // v1's "no limit" (a page-rounded 2^63) limits nothing.
  write_text(root / "fs/memory/box/memory.limit_in_bytes", "9223372036854771712\n");
  CHECK(btx::available_memory_bytes(root / "meminfo", root / "fs", root / "self") ==
        8000000LL * 1024);
}

TEST_CASE("machine budget: explicit counts win in order, bad values are named") {
  const int64_t cores = btx::affinity_cpus();
  CHECK(cores >= 1);
  {
    const ScopedVars env({{"BTX_THREADS", std::nullopt},
                          {"OMP_NUM_THREADS", std::nullopt},
                          {"SLURM_CPUS_PER_TASK", std::nullopt}});
    const auto b = btx::process_threads();
    CHECK(b.threads >= 1);
    CHECK(b.threads <= cores);
    CHECK(btx::process_threads(3).threads == 3);
    CHECK(btx::process_threads(3).source == "threads option");
    CHECK(btx::process_threads(3).chosen);
    CHECK_FALSE(b.chosen);
  }
  {
    const ScopedVars env({{"BTX_THREADS", std::nullopt},
                          {"OMP_NUM_THREADS", "5"},
                          {"SLURM_CPUS_PER_TASK", std::nullopt}});
    CHECK(btx::process_threads().threads == 5);
    CHECK(btx::process_threads().source == "OMP_NUM_THREADS");
  }
  {
    // The driver's share beats the user's OMP_NUM_THREADS (the driver already honoured it).
    const ScopedVars env({{"BTX_THREADS", "2"}, {"OMP_NUM_THREADS", "5"}});
    CHECK(btx::process_threads().threads == 2);
  }
  {
    // Slurm's CPUs per task bound the detected cores.
    const ScopedVars env({{"BTX_THREADS", std::nullopt},
                          {"OMP_NUM_THREADS", std::nullopt},
                          {"SLURM_CPUS_PER_TASK", "1"}});
    CHECK(btx::detected_cores().threads == 1);
    CHECK(btx::process_threads().source == "SLURM_CPUS_PER_TASK");
  }
  {
    const ScopedVars env({{"BTX_THREADS", std::nullopt}, {"OMP_NUM_THREADS", "4,2"}});
    CHECK(btx::process_threads().threads == 4);  // OpenMP's nested list: the first level
  }
  for (const char* bad : {"0", "four", "-2", "3x"}) {
    const ScopedVars env({{"BTX_THREADS", std::nullopt}, {"OMP_NUM_THREADS", bad}});
    std::string what;
    try {
      (void)btx::process_threads();
    } catch (const std::invalid_argument& e) {
      what = e.what();
    }
    CHECK(what.find("OMP_NUM_THREADS='" + std::string(bad) + "'") != std::string::npos);
  }
  CHECK_THROWS_AS(btx::process_threads(-1), std::invalid_argument);
}

TEST_CASE("machine budget: use_threads sets the intra-op pool") {
  const int before = torch::get_num_threads();
  btx::use_threads(2);
  CHECK(torch::get_num_threads() == 2);
  btx::use_threads(1);
  CHECK(torch::get_num_threads() == 1);
  CHECK(torch::get_num_interop_threads() == 1);
  CHECK_THROWS_AS(btx::use_threads(0), std::invalid_argument);
  torch::set_num_threads(before);
}

TEST_CASE("workers: lanes planned from cores and memory, threads shared out") {
  namespace recipe = btx::recipe;
  const std::vector<recipe::WorkerJob> two = {lane_job("a"), lane_job("b")};
  const std::vector<recipe::WorkerJob> three = {lane_job("a"), lane_job("b"), lane_job("c")};
  const std::vector<recipe::WorkerJob> six = {lane_job("a"), lane_job("b"), lane_job("c"),
                                              lane_job("d"), lane_job("e"), lane_job("f")};
  // Two jobs, two cores: both at once, a thread each.
  auto p = recipe::plan_lanes(two, {.cores = 2});
  CHECK(p.lanes == 2);
  CHECK(p.threads == 1);
  // Three on two cores: one after another on both cores (1.5 rounds of work) beats two
  // lanes of one thread (two rounds).
  p = recipe::plan_lanes(three, {.cores = 2});
  CHECK(p.lanes == 1);
  CHECK(p.threads == 2);
  // Three on 64 cores: all at once, 21 threads each (one after another on 64 would scale worse).
  p = recipe::plan_lanes(three, {.cores = 64});
  CHECK(p.lanes == 3);
  CHECK(p.threads == 21);
  // Six on four cores: two lanes of two threads (three rounds at half speed).
  p = recipe::plan_lanes(six, {.cores = 4});
  CHECK(p.lanes == 2);
  CHECK(p.threads == 2);
  // An explicit per-process count: as many lanes as the cores hold at that count.
  p = recipe::plan_lanes(six, {.threads = 2, .cores = 8});
  CHECK(p.lanes == 4);
  CHECK(p.threads == 2);
  // A model too small for more than a thread a process: all side by side instead.
  p = recipe::plan_lanes(three, {.cores = 2, .max_threads = 1});
  CHECK(p.lanes == 3);
  CHECK(p.threads == 1);
  p = recipe::plan_lanes(three, {.cores = 64, .max_threads = 4});
  CHECK(p.lanes == 3);
  CHECK(p.threads == 4);
  CHECK(btx::useful_threads(8e9) == 1);
  CHECK(btx::useful_threads(8e11) == 32);
  // stage_jobs wins.
  p = recipe::plan_lanes(six, {.max_jobs = 3, .cores = 64});
  CHECK(p.lanes == 3);
  CHECK(p.threads == 21);
  // Data-parallel jobs of 4 ranks on 8 cores: two at once, a thread per rank.
  p = recipe::plan_lanes({lane_job("x", 4), lane_job("y", 4)}, {.cores = 8});
  CHECK(p.lanes == 2);
  CHECK(p.threads == 1);
  // Memory: what the machine has free, per process, leaves one lane; under half of it, two.
  const int64_t free = btx::available_memory_bytes();
  REQUIRE(free > 0);
  p = recipe::plan_lanes(three, {.cores = 64, .bytes_per_process = free});
  CHECK(p.lanes == 1);
  CHECK(p.threads == 64);
  CHECK(p.why.find("MB free") != std::string::npos);
  // (0.45 of it: two fit while what is free stays within -10% and +35% of this reading.)
  p = recipe::plan_lanes(six, {.cores = 64, .bytes_per_process = free / 20 * 9});
  CHECK(p.lanes == 2);
  CHECK(p.threads == 32);
}

TEST_CASE("workers: each worker gets its share in BTX_THREADS and OMP_NUM_THREADS") {
  namespace recipe = btx::recipe;
  const auto dir = budget_dir("worker-threads");
  const recipe::Run run(dir);
  const auto finish = [&](const std::string& stage) {
    return "echo \"threads $BTX_THREADS $OMP_NUM_THREADS\" > " + (dir / (stage + ".txt")).string() +
           " && echo '{}' > " + run.record_path(stage).string();
  };
  const std::vector<recipe::WorkerJob> jobs = {{"a", {"/bin/sh", "-c", finish("a")}},
                                               {"b", {"/bin/sh", "-c", finish("b")}},
                                               {"c", {"/bin/sh", "-c", finish("c")}}};
  const std::vector<std::string> abc = {"a", "b", "c"};
  const auto read = [&](const std::string& stage) {
    std::ifstream in(dir / (stage + ".txt"));
    std::string line;
    std::getline(in, line);
    return line;
  };
  // Three cores, three jobs: all at once, a thread each.
  auto report = recipe::run_workers(run, jobs, {.poll = std::chrono::milliseconds(10), .cores = 3});
  CHECK(report.ok());
  CHECK(report.finished == abc);
  for (const char* s : {"a", "b", "c"}) CHECK(read(s) == "threads 1 1");
  // Four cores: one after another on all four (better than a thread each and one idle).
  for (const char* s : {"a", "b", "c"}) fs::remove(run.record_path(s));
  report = recipe::run_workers(run, jobs, {.poll = std::chrono::milliseconds(10), .cores = 4});
  CHECK(report.ok());
  for (const char* s : {"a", "b", "c"}) CHECK(read(s) == "threads 4 4");
  // Two lanes forced on four cores: the first round gets two threads each; job c, left
  // alone in its lane while b may still run, gets what is free.
  for (const char* s : {"a", "b", "c"}) fs::remove(run.record_path(s));
  report = recipe::run_workers(run, jobs,
                               {.poll = std::chrono::milliseconds(10), .max_jobs = 2, .cores = 4});
  CHECK(report.ok());
  CHECK(report.finished == abc);  // job order
  CHECK(read("a") == "threads 2 2");
  CHECK(read("b") == "threads 2 2");
  CHECK((read("c") == "threads 2 2" || read("c") == "threads 4 4"));
  // An explicit count goes to every worker as it is.
  for (const char* s : {"a", "b", "c"}) fs::remove(run.record_path(s));
  report = recipe::run_workers(run, jobs,
                               {.poll = std::chrono::milliseconds(10), .threads = 3, .cores = 4});
  CHECK(report.ok());
  for (const char* s : {"a", "b", "c"}) CHECK(read(s) == "threads 3 3");
}

TEST_CASE("memory estimate: parameters exact, the peak of the right size") {
  // SmolLM2-135M's shape: 134,515,008 parameters (tied embeddings), as transformers counts.
  const btx::ArchShape smol{.vocab_size = 49152,
                            .hidden_size = 576,
                            .intermediate_size = 1536,
                            .num_hidden_layers = 30,
                            .num_attention_heads = 9,
                            .num_key_value_heads = 3,
                            .head_dim = 64,
                            .max_position_embeddings = 8192,
                            .tie_word_embeddings = true};
  CHECK(btx::parameter_count(smol) == doctest::Approx(134515008.0));
  const double dense = double(btx::training_memory_estimate(smol, {}, 4 * 256));
  const double moe =
      double(btx::training_memory_estimate(smol, {.experts = 4, .active_experts = 2}, 4 * 256));
  // Measured peaks (benchmarks/RESULTS.md): 4.2 GB dense, 9-10 GB for the 4-expert MoE.
  CHECK(dense > 3.5e9);
  CHECK(dense < 5.5e9);
  CHECK(moe > 8e9);
  CHECK(moe < 11e9);
}

TEST_CASE("precision auto: bf16-mixed where the hardware computes in bf16") {
  const auto cpu = btx::resolve_precision("auto", torch::kCPU);
  CHECK(
      (cpu.precision == (btx::cpu_has_bf16() ? btx::Precision::bf16_mixed : btx::Precision::fp32)));
  CHECK(cpu.why.find("auto") == 0);
  CHECK((btx::resolve_precision("fp32", torch::kCPU).precision == btx::Precision::fp32));
  CHECK(
      (btx::resolve_precision("bf16-mixed", torch::kCPU).precision == btx::Precision::bf16_mixed));
  CHECK_THROWS_AS(btx::resolve_precision("fp16", torch::kCPU), std::invalid_argument);
}
