// SPDX-License-Identifier: MIT
// Stages as isolated OS processes. Experts never communicate, so each trains in a process
// of its own (ExpertProcesses): a crash, an abort or a SIGKILL costs only that stage,
// the others run to completion, and a rerun resumes the failed one from its checkpoints.
// run_workers starts one process per unfinished stage with its output in
// <run>/<stage>/log.txt, relays each one's newest progress line, and reports every job's
// outcome; a job succeeded only if it exited 0 *and* finished its stage (stage.json).
#pragma once

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <btx/parallel/expert_processes.hpp>
#include <btx/recipe/run.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace recipe {

// One stage run as a process: argv[0] is the executable (worker_dispatch.hpp builds the
// argv of this program's own worker kinds).
struct WorkerJob {
  std::string stage;
  std::vector<std::string> argv;
};

struct WorkerOptions {
  // Added to each worker's environment. One thread per process: concurrent stages already
  // fill the cores, and OpenMP's spinning barriers crawl on a loaded machine.
  std::vector<std::string> env = {"OMP_NUM_THREADS=1"};
  std::chrono::milliseconds poll{500};  // how often logs are relayed
};

struct WorkersReport {
  std::vector<std::string> finished;  // stages finished by this call
  std::vector<std::string> skipped;   // stages already finished before it
  std::vector<std::string> failed;    // one line per failed job: what happened, where its log is
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

// Runs every job whose stage is unfinished, all at once, and waits for all of them.
inline WorkersReport run_workers(const Run& run, const std::vector<WorkerJob>& jobs,
                                 const WorkerOptions& options = {}) {
  WorkersReport report;
  ExpertProcesses group;
  std::vector<std::string> started;
  for (const auto& job : jobs) {
    if (run.skip_if_done(job.stage)) {
      report.skipped.push_back(job.stage);
      continue;
    }
    std::filesystem::create_directories(run.stage_dir(job.stage));
    const auto log = run.stage_dir(job.stage) / "log.txt";
    group.spawn(job.stage, job.argv, log.string(), options.env);
    started.push_back(job.stage);
    run.log("started " + job.stage + " (log: " + log.string() + ")");
  }
  std::map<std::string, std::string> shown;
  const auto relay = [&] {
    for (const auto& stage : started) {
      const auto line = last_progress_line(run.stage_dir(stage) / "log.txt");
      if (!line.empty() && shown[stage] != line) {
        std::fprintf(stderr, "%s\n", line.c_str());
        shown[stage] = line;
      }
    }
  };
  while (group.running()) {
    std::this_thread::sleep_for(options.poll);
    relay();
  }
  relay();
  for (const auto& outcome : group.wait_all()) {
    const auto log = run.stage_dir(outcome.name) / "log.txt";
    if (outcome.ok() && run.done(outcome.name)) {
      report.finished.push_back(outcome.name);
      run.log(outcome.name + " finished");
      continue;
    }
    const std::string what =
        outcome.ok() ? outcome.name + " exited 0 without finishing its stage" : outcome.describe();
    report.failed.push_back(what + "; see " + log.string());
    run.log("FAILED: " + report.failed.back() + ". Run again to resume.");
  }
  return report;
}

}  // namespace recipe
BTX_NAMESPACE_END
}  // namespace btx
