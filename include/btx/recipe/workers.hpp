// SPDX-License-Identifier: MIT
// Stages as isolated OS processes. Experts never communicate, so each trains in a job of
// its own (ExpertProcesses): a crash, an abort or a SIGKILL costs only that stage, the
// others run to completion, and a rerun resumes the failed one from its checkpoints. A job
// is one process, or a data-parallel group of `ranks` processes on this host that btx
// starts as torchrun would (the same environment variables: parallel/dist_env.hpp), and
// that fails as a whole when one of its ranks dies. run_workers starts every unfinished
// job with each rank's output in <run>/<stage>/log.txt (rank 0) or log.rank-R.txt,
// relays the newest progress lines, and reports every stage's outcome; a stage succeeded
// only if every rank of its job exited 0 *and* the stage is finished (stage.json).
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <btx/parallel/dist_env.hpp>
#include <btx/parallel/expert_processes.hpp>
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
  // Added to each worker's environment. One thread per process: concurrent stages already
  // fill the cores, and OpenMP's spinning barriers crawl on a loaded machine.
  std::vector<std::string> env = {"OMP_NUM_THREADS=1"};
  std::chrono::milliseconds poll{500};  // how often logs are relayed
  // Jobs at once (0: all): unfinished jobs run in this many lanes, each lane's jobs one
  // after another. For stages that do not all fit in memory together (a 135M-parameter
  // seed's MoE stage takes ~9 GB in fp32 with AdamW).
  int64_t max_jobs = 0;
};

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

// Runs every job with an unfinished stage, all at once (or options.max_jobs at a time), and
// waits for all of them.
inline WorkersReport run_workers(const Run& run, const std::vector<WorkerJob>& jobs,
                                 const WorkerOptions& options = {}) {
  WorkersReport report;
  if (options.max_jobs < 0) {
    throw std::invalid_argument("btx::recipe::run_workers: max_jobs must be >= 0, got " +
                                std::to_string(options.max_jobs));
  }
  if (options.max_jobs > 0) {
    std::vector<WorkerJob> pending;  // a finished job takes no lane
    for (const auto& job : jobs) {
      bool all_done = true;
      for (const auto& stage : job.stages()) all_done = all_done && run.done(stage);
      if (all_done) {
        for (const auto& stage : job.stages()) {
          if (run.skip_if_done(stage)) report.skipped.push_back(stage);
        }
      } else {
        pending.push_back(job);
      }
    }
    if (pending.size() > size_t(options.max_jobs)) {
      // max_jobs lanes, job k in lane k % max_jobs, each lane one job after another: a
      // lane whose job ends early starts its next one while the others still run.
      WorkerOptions one = options;
      one.max_jobs = 0;
      std::vector<WorkersReport> lanes(size_t(options.max_jobs));
      std::vector<std::exception_ptr> errors(lanes.size());
      std::vector<std::thread> threads;
      for (size_t lane = 0; lane < lanes.size(); ++lane) {
        threads.emplace_back([&, lane] {
          try {
            for (size_t k = lane; k < pending.size(); k += lanes.size()) {
              const auto r = run_workers(run, {pending[k]}, one);
              lanes[lane].finished.insert(lanes[lane].finished.end(), r.finished.begin(),
                                          r.finished.end());
              lanes[lane].failed.insert(lanes[lane].failed.end(), r.failed.begin(), r.failed.end());
            }
          } catch (...) {
            errors[lane] = std::current_exception();
          }
        });
      }
      for (auto& t : threads) t.join();
      for (const auto& e : errors) {
        if (e) std::rethrow_exception(e);
      }
      for (const auto& l : lanes) {
        report.finished.insert(report.finished.end(), l.finished.begin(), l.finished.end());
        report.failed.insert(report.failed.end(), l.failed.begin(), l.failed.end());
      }
      return report;
    }
  }
  ExpertProcesses group;
  struct Started {
    const WorkerJob* job;
    std::vector<std::filesystem::path> logs;
  };
  std::vector<Started> started;
  for (const auto& job : jobs) {
    bool all_done = true;
    for (const auto& stage : job.stages()) all_done = all_done && run.done(stage);
    if (all_done) {
      for (const auto& stage : job.stages()) {
        (void)run.skip_if_done(stage);
        report.skipped.push_back(stage);
      }
      continue;
    }
    if (job.ranks < 1) {
      throw std::invalid_argument("btx::recipe::run_workers: job " + job.stage + " has " +
                                  std::to_string(job.ranks) + " ranks");
    }
    const auto dir = run.stage_dir(job.stage);
    std::filesystem::create_directories(dir);
    // The job's store socket, held here until rank 0 has inherited it.
    std::optional<dist::LocalStoreSocket> store;
    if (job.ranks > 1) store.emplace();
    Started s{&job, {}};
    for (int64_t r = 0; r < job.ranks; ++r) {
      auto env = options.env;
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

}  // namespace recipe
BTX_NAMESPACE_END
}  // namespace btx
