// SPDX-License-Identifier: MIT
// Stages as isolated OS processes. Experts never communicate, so each trains in a job of
// its own (ExpertProcesses): a crash, an abort or a SIGKILL costs only that stage, the
// others run to completion, and a rerun resumes the failed one from its checkpoints. A job
// is one process, or a data-parallel group of `ranks` processes on this host that btx
// starts as torchrun would (the same environment variables: parallel/dist_env.hpp), and
// that fails as a whole when one of its ranks dies. run_workers starts every unfinished
// job (as many at once as the cores and memory allow, each on its share of the cores) with each
// rank's output in <run>/<stage>/log.txt (rank 0) or log.rank-R.txt, relays the newest progress
// lines, and reports every stage's outcome; a stage succeeded only if every rank of its job exited
// 0 *and* the stage is finished (stage.json).
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <btx/parallel/dist_env.hpp>
#include <btx/parallel/expert_processes.hpp>
#include <btx/parallel/machine_budget.hpp>
#include <btx/recipe/run.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace recipe {

// One stage run as a job: argv[0] is the executable (worker_dispatch.hpp builds the argv
// of this program's own worker kinds).
struct WorkerJob {
  std::string stage;  // the stage it finishes; <run>/<stage>/ holds its logs
  std::vector<std::string> argv;
  int64_t ranks = 1;  // processes of one data-parallel job (RANK 0 .. ranks-1)
  // When the job finishes several stages (one world split into a group per expert): those
  // stages; `stage` then only names the job's folder.
  std::vector<std::string> finishes = {};

  [[nodiscard]] std::vector<std::string> stages() const {
    return finishes.empty() ? std::vector<std::string>{stage} : finishes;
  }
};

struct WorkerOptions {
  std::vector<std::string> env = {};    // added to each worker's environment
  std::chrono::milliseconds poll{500};  // how often logs are relayed
  // Jobs at once: > 0 runs the unfinished jobs in that many lanes, each lane's jobs one after
  // another; 0 plans the lanes: as many jobs at once as the cores (a thread per process at
  // least) and the memory (bytes_per_process each) allow.
  int64_t max_jobs = 0;
  // Threads of each worker process: > 0 gives every process that many (a config's
  // `threads`, the user's OMP_NUM_THREADS); 0 divides `cores` among the processes that run
  // at once. Passed as BTX_THREADS and OMP_NUM_THREADS (parallel/machine_budget.hpp).
  int64_t threads = 0;
  int64_t cores = 0;  // the cores to divide (0: detected_cores(): affinity, cgroup, Slurm)
  // The most threads one process uses well (0: no limit): a small model's steps are too
  // short for OpenMP's fork and join to pay (useful_threads), so its stages run side by side.
  int64_t max_threads = 0;
  // A worker's peak memory, estimated by the caller (0: unknown; memory then plans nothing).
  // A 135M-parameter seed's MoE stage takes ~9 GB in fp32 with AdamW.
  int64_t bytes_per_process = 0;
  // A job whose worker failed runs again, up to this many times (torchrun's --max-restarts
  // for btx's own launcher); it resumes from its last complete checkpoint. Each attempt's
  // workers see BTX_RESTART_COUNT (0 first).
  int64_t max_restarts = 0;
};

// How run_workers runs a set of pending jobs: in `lanes` lanes (as many as jobs: all at
// once), each process with `threads` threads when all start together.
struct LanePlan {
  int64_t lanes = 1;
  int64_t threads = 1;  // per process, when every lane runs (the first round)
  int64_t cores = 1;    // the cores divided
  std::string why;      // for the log: what limited the lanes
};

inline LanePlan plan_lanes(const std::vector<WorkerJob>& pending, const WorkerOptions& o) {
  LanePlan plan;
  const int64_t n = std::max<int64_t>(1, int64_t(pending.size()));
  int64_t ranks = 1;  // the widest job's processes
  for (const auto& j : pending) ranks = std::max(ranks, j.ranks);
  plan.cores = o.cores > 0 ? o.cores : detected_cores().threads;
  if (o.max_jobs > 0) {
    plan.lanes = std::min(n, o.max_jobs);
    plan.why = "stage_jobs " + std::to_string(o.max_jobs);
  } else {
    // The most lanes the cores allow (a thread per process at least, or `threads`) and the
    // memory allows; of those, the count that finishes soonest: rounds of jobs (ceil(n / L))
    // times a round's time, 1 / t^0.85 for t threads a job (training scales sublinearly:
    // 1.8x from 1 to 2 threads, measured for SmolLM2-135M). Ties go to more lanes.
    const int64_t per_process = o.threads > 0 ? o.threads : 1;
    const int64_t cap = o.max_threads > 0 ? o.max_threads : plan.cores;
    int64_t most = std::min(n, std::max<int64_t>(1, plan.cores / (ranks * per_process)));
    // A model too small for a second thread: every stage at once, as the memory allows.
    // Its steps leave a core idle often enough (small ops, logging, checkpoints) that more
    // single-thread processes than cores finish sooner: the demo's three experts took 26 s
    // side by side on 2 cores, 46 s in two lanes.
    if (o.threads == 0 && o.max_threads == 1) most = n;
    plan.why = std::to_string(plan.cores) + " cores";
    if (o.bytes_per_process > 0) {
      const int64_t available = available_memory_bytes();
      if (available > 0) {
        const int64_t by_memory = std::max<int64_t>(1, available / (ranks * o.bytes_per_process));
        if (by_memory < most) {
          most = by_memory;
          plan.why = std::to_string(available >> 20) + " MB free, ~" +
                     std::to_string(o.bytes_per_process >> 20) + " MB per process";
        }
      }
    }
    plan.lanes = most;
    if (o.threads == 0) {
      double best = 0;
      for (int64_t lanes = 1; lanes <= most; ++lanes) {
        const double rounds = double((n + lanes - 1) / lanes);
        const double threads =
            double(std::min(cap, std::max<int64_t>(1, plan.cores / (lanes * ranks))));
        const double time = rounds / std::pow(threads, 0.85);
        if (lanes == 1 || time <= best) {
          best = time;
          plan.lanes = lanes;
        }
      }
    }
  }
  int64_t processes = 0;  // of the first round
  for (size_t k = 0; k < size_t(plan.lanes) && k < pending.size(); ++k)
    processes += pending[k].ranks;
  plan.threads = o.threads > 0 ? o.threads
                               : std::max<int64_t>(1, plan.cores / std::max<int64_t>(1, processes));
  if (o.threads == 0 && o.max_threads > 0) plan.threads = std::min(plan.threads, o.max_threads);
  return plan;
}

struct WorkersReport {
  std::vector<std::string> finished;  // stages finished by this call
  std::vector<std::string> skipped;   // stages already finished before it
  std::vector<std::string> failed;    // one line per failed stage: what happened, where its log is
  [[nodiscard]] bool ok() const { return failed.empty(); }
};

// The last "[stage] step ..." or "[stage] done ..." line of a worker's log, if any.
inline std::string last_progress_line(const std::filesystem::path& log) {
  std::ifstream in(log);
  std::string line, last;
  while (std::getline(in, line)) {
    if (line.size() > 1 && line[0] == '[' &&
        (line.find("] step ") != std::string::npos || line.find("] done ") != std::string::npos)) {
      last = line;
    }
  }
  return last;
}

// The last line of a worker's log that says "error", if any (why a rank gave up).
inline std::string last_error_line(const std::filesystem::path& log) {
  std::ifstream in(log);
  std::string line, last;
  while (std::getline(in, line)) {
    if (line.find("error") != std::string::npos) last = line;
  }
  return last;
}

// Rank `rank`'s log of a job whose folder is `dir`.
inline std::filesystem::path rank_log(const std::filesystem::path& dir, int64_t rank) {
  return dir / (rank == 0 ? std::string("log.txt") : "log.rank-" + std::to_string(rank) + ".txt");
}

namespace detail {

// Starts every job of `jobs` at once, each of its processes with `threads` threads (0: as
// the environment has it), and waits for all of them.
inline WorkersReport run_together(const Run& run, const std::vector<WorkerJob>& jobs,
                                  const WorkerOptions& options, int64_t threads) {
  WorkersReport report;
  ExpertProcesses group;
  struct Started {
    const WorkerJob* job;
    std::vector<std::filesystem::path> logs;
  };
  std::vector<Started> started;
  for (const auto& job : jobs) {
    const auto dir = run.stage_dir(job.stage);
    std::filesystem::create_directories(dir);
    // The job's store socket, held here until rank 0 has inherited it.
    std::optional<dist::LocalStoreSocket> store;
    if (job.ranks > 1) store.emplace();
    Started s{&job, {}};
    for (int64_t r = 0; r < job.ranks; ++r) {
      auto env = options.env;
      if (threads > 0) {
        env.push_back("BTX_THREADS=" + std::to_string(threads));
        env.push_back("OMP_NUM_THREADS=" + std::to_string(threads));
      }
      std::vector<int> keep_fds;
      if (store) {
        const auto dist_env = dist::launcher_env(r, job.ranks, *store);
        env.insert(env.end(), dist_env.begin(), dist_env.end());
        if (r == 0) keep_fds.push_back(store->fd());
      }
      s.logs.push_back(rank_log(dir, r));
      const std::string name = job.ranks > 1 ? job.stage + " rank " + std::to_string(r) : job.stage;
      group.spawn(name, job.argv, s.logs.back().string(), env, keep_fds);
    }
    run.log("started " + job.stage +
            (store ? " (" + std::to_string(job.ranks) +
                         " ranks, 127.0.0.1:" + std::to_string(store->port()) + ")"
                   : "") +
            (threads > 0
                 ? " on " + std::to_string(threads) + (threads == 1 ? " thread" : " threads") +
                       (job.ranks > 1 ? " each" : "")
                 : "") +
            " (log: " + s.logs.front().string() + ")");
    started.push_back(std::move(s));
  }
  std::map<std::string, std::string> shown;
  const auto relay = [&] {
    for (const auto& s : started) {
      for (const auto& log : s.logs) {
        const auto line = last_progress_line(log);
        if (!line.empty() && shown[log.string()] != line) {
          std::fprintf(stderr, "%s\n", line.c_str());
          shown[log.string()] = line;
        }
      }
    }
  };
  while (group.running()) {
    std::this_thread::sleep_for(options.poll);
    relay();
  }
  relay();
  const auto outcomes = group.wait_all();  // in spawn order: job by job, rank by rank
  size_t next = 0;
  for (const auto& s : started) {
    std::string failures;
    for (size_t r = 0; r < s.logs.size(); ++r) {
      const auto& outcome = outcomes[next++];
      if (outcome.ok()) continue;
      const auto why = last_error_line(s.logs[r]);
      failures += (failures.empty() ? "" : "; ") + outcome.describe() +
                  (why.empty() ? "" : " (" + why + ")");
    }
    for (const auto& stage : s.job->stages()) {
      if (run.done(stage)) {
        report.finished.push_back(stage);
        run.log(stage + " finished");
        continue;
      }
      const bool alone = s.job->finishes.empty();  // the job is this stage's own
      std::string what =
          failures.empty() ? s.job->stage + " exited 0 without finishing its stage" : failures;
      if (!alone) what = stage + " (in job " + s.job->stage + "): " + what;
      report.failed.push_back(what + "; see " + s.logs.front().string());
      run.log("FAILED: " + report.failed.back() + ". Run again to resume.");
    }
  }
  return report;
}

}  // namespace detail

namespace detail {

// One attempt of run_workers.
inline WorkersReport run_workers_once(const Run& run, const std::vector<WorkerJob>& jobs,
                                      const WorkerOptions& options) {
  WorkersReport report;
  if (options.max_jobs < 0 || options.threads < 0 || options.cores < 0) {
    throw std::invalid_argument(
        "btx::recipe::run_workers: max_jobs, threads and cores must be "
        ">= 0, got " +
        std::to_string(options.max_jobs) + ", " + std::to_string(options.threads) + ", " +
        std::to_string(options.cores));
  }
  std::vector<WorkerJob> pending;  // a finished job takes no lane
  for (const auto& job : jobs) {
    if (job.ranks < 1) {
      throw std::invalid_argument("btx::recipe::run_workers: job " + job.stage + " has " +
                                  std::to_string(job.ranks) + " ranks");
    }
    bool all_done = true;
    for (const auto& stage : job.stages()) all_done = all_done && run.done(stage);
    if (!all_done) {
      pending.push_back(job);
      continue;
    }
    for (const auto& stage : job.stages()) {
      (void)run.skip_if_done(stage);
      report.skipped.push_back(stage);
    }
  }
  if (pending.empty()) return report;
  const auto plan = plan_lanes(pending, options);
  const auto add = [&report](const WorkersReport& r) {
    report.finished.insert(report.finished.end(), r.finished.begin(), r.finished.end());
    report.failed.insert(report.failed.end(), r.failed.begin(), r.failed.end());
  };
  if (plan.lanes >= int64_t(pending.size())) {
    if (pending.size() > 1) {
      run.log(std::to_string(pending.size()) + " jobs at once, " + std::to_string(plan.threads) +
              " thread(s) per process (" + plan.why + ")");
    }
    add(detail::run_together(run, pending, options, plan.threads));
    return report;
  }
  run.log(std::to_string(pending.size()) + " jobs in " + std::to_string(plan.lanes) + " lanes (" +
          plan.why + ")");
  // Lanes: job k in lane k % lanes, each lane one job after another. A job takes the cores
  // no running job holds, up to a fair share of the lanes that still have work, so a lane
  // left alone at the end gets the whole machine for its next job.
  std::mutex m;
  int64_t busy = 0;  // cores held by running jobs
  int64_t lanes_with_work = plan.lanes;
  std::vector<WorkersReport> per_job(pending.size());
  std::vector<std::exception_ptr> errors(size_t(plan.lanes));
  std::vector<std::thread> threads;
  for (size_t lane = 0; lane < size_t(plan.lanes); ++lane) {
    threads.emplace_back([&, lane] {
      try {
        for (size_t k = lane; k < pending.size(); k += size_t(plan.lanes)) {
          int64_t each = options.threads;
          int64_t held = 0;
          if (each == 0) {
            const std::lock_guard lock(m);
            const int64_t share = std::min(plan.cores / lanes_with_work, plan.cores - busy);
            each = std::max<int64_t>(1, share / pending[k].ranks);
            if (options.max_threads > 0) each = std::min(each, options.max_threads);
            held = each * pending[k].ranks;
            busy += held;
          }
          per_job[k] = detail::run_together(run, {pending[k]}, options, each);
          const std::lock_guard lock(m);
          busy -= held;
          if (k + size_t(plan.lanes) >= pending.size()) --lanes_with_work;
        }
      } catch (...) {
        errors[lane] = std::current_exception();
        const std::lock_guard lock(m);
        --lanes_with_work;
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
  for (const auto& r : per_job) add(r);
  return report;
}

}  // namespace detail

// Runs every job with an unfinished stage, in the lanes plan_lanes gives (options.max_jobs,
// or as the cores and memory allow), each worker on its share of the cores, and waits for
// all of them; failed jobs run again up to options.max_restarts times. Reports list stages
// in job order whatever the lanes; `failed` holds what still failed after the last attempt.
inline WorkersReport run_workers(const Run& run, const std::vector<WorkerJob>& jobs,
                                 const WorkerOptions& options = {}) {
  if (options.max_restarts < 0) {
    throw std::invalid_argument("btx::recipe::run_workers: max_restarts must be >= 0, got " +
                                std::to_string(options.max_restarts));
  }
  WorkerOptions attempt = options;
  attempt.env.push_back("BTX_RESTART_COUNT=0");
  WorkersReport report = detail::run_workers_once(run, jobs, attempt);
  for (int64_t k = 1; k <= options.max_restarts && !report.ok(); ++k) {
    run.log("restarting " + std::to_string(report.failed.size()) + " failed stage(s) (restart " +
            std::to_string(k) + " of max_restarts " + std::to_string(options.max_restarts) + ")");
    attempt.env.back() = "BTX_RESTART_COUNT=" + std::to_string(k);
    const WorkersReport again = detail::run_workers_once(run, jobs, attempt);
    report.finished.insert(report.finished.end(), again.finished.begin(), again.finished.end());
    report.failed = again.failed;
  }
  return report;
}

}  // namespace recipe
BTX_NAMESPACE_END
}  // namespace btx
