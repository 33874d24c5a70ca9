// SPDX-License-Identifier: MIT
// Command lines of btx's programs, parsed by CLI11: --help is generated from the options,
// a bad value is rejected naming its option, and every usage error exits with status 2
// (input errors found later exit 1), the convention of the POSIX utilities.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <optional>
#include <string>

#include <btx/recipe/worker_dispatch.hpp>

namespace btx::tools {

inline constexpr int kUsageError = 2;

// Parses argv into `app`. Returns the status to exit with now (0 after --help, kUsageError
// after a usage error, both already printed by CLI11), or nullopt to go on.
inline std::optional<int> parse_command_line(CLI::App& app, int argc, const char* const* argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::fprintf(stderr, "%s: error: %s\nRun with --help for more information.\n",
                 app.get_name().c_str(), e.what());
    return kUsageError;
  }
  return std::nullopt;
}

// Ends the program with `status` once its work is done, without running static
// destructors: LibTorch's tear down its operator registry, 0.1-0.15 s at the end of every
// btx-merge (a tenth of a 1 GB merge; benchmarks/RESULTS.md, issue 14). Call it only where
// nothing is left to clean up (outputs committed or removed); C and C++ streams are
// flushed first. Sanitizer builds exit normally, so that their leak check still runs.
[[noreturn]] inline void exit_now(int status) {
#if defined(__SANITIZE_ADDRESS__)
  std::exit(status);
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(leak_sanitizer)
  std::exit(status);
#endif
#endif
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  std::_Exit(status);
}

// The worker side of a program's command line (recipe/worker_dispatch.hpp):
// `--worker KIND [--OPTION VALUE ...] --run-dir DIR`, where KIND and the options come from
// the program's WorkerTable, so CLI11 lists and checks them like any other option.
class WorkerOptions {
 public:
  // `run_dir` is the program's own --run-dir option, which a worker needs.
  WorkerOptions(CLI::App& app, const recipe::WorkerTable& table, CLI::Option* run_dir)
      : run_dir_(run_dir) {
    worker_ = app.add_option("--worker", kind_, "run one stage of a run as a worker (KIND)")
                  ->check(CLI::IsMember(table.kinds()))
                  ->needs(run_dir)
                  ->group("Workers");
    for (const auto& name : table.option_names()) {
      app.add_option("--" + name, values_[name],
                     "an option of the worker kinds that take it (below)")
          ->needs(worker_)
          ->group("Workers");
    }
  }

  WorkerOptions(const WorkerOptions&) = delete;  // CLI11 holds pointers into this object
  WorkerOptions& operator=(const WorkerOptions&) = delete;

  // The worker command line given, or nullopt when there is no --worker.
  [[nodiscard]] std::optional<recipe::WorkerArgs> args(const CLI::App& app) const {
    if (worker_->count() == 0) return std::nullopt;
    recipe::WorkerArgs a{.kind = kind_, .run_dir = run_dir_->as<std::string>(), .options = {}};
    for (const auto& [name, value] : values_) {
      if (app.count("--" + name) > 0) a.options.emplace(name, value);
    }
    return a;
  }

 private:
  CLI::Option* run_dir_;
  std::string kind_;
  std::map<std::string, std::string> values_;
  CLI::Option* worker_ = nullptr;
};

}  // namespace btx::tools
