// SPDX-License-Identifier: MIT
// Worker dispatch: a program registers its worker kinds once, by name, with the options
// each takes, and the same table both builds the command lines of its worker jobs and
// runs the kind a command line names. The command line is
//   PROGRAM --worker KIND [--OPTION VALUE ...] --run-dir DIR
// e.g. `btx-pipeline --worker expert --expert 1 --run-dir runs/x`, which a Slurm array
// job can start directly (an index option may come from SLURM_ARRAY_TASK_ID instead).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/parallel/expert_processes.hpp>
#include <btx/recipe/run.hpp>
#include <btx/recipe/workers.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace recipe {

// A parsed worker command line.
struct WorkerArgs {
  std::string kind;
  std::filesystem::path run_dir;
  std::map<std::string, std::string> options;  // "--expert 1" -> {"expert", "1"}

  [[nodiscard]] std::optional<std::string> get(const std::string& name) const {
    const auto it = options.find(name);
    if (it == options.end()) return std::nullopt;
    return it->second;
  }
  [[nodiscard]] std::string value_or(const std::string& name, const std::string& fallback) const {
    return get(name).value_or(fallback);
  }
  // A non-negative integer option, else the environment variable `env` (when given).
  [[nodiscard]] int64_t index(const std::string& name, const char* env = nullptr) const {
    std::string text;
    std::string from = "--" + name;
    if (auto v = get(name)) {
      text = *v;
    } else if (const char* e = env ? std::getenv(env) : nullptr) {
      text = e;
      from = std::string("$") + env;
    } else {
      throw std::invalid_argument("worker '" + kind + "' needs --" + name + " I" +
                                  (env ? std::string(" or ") + env : std::string()));
    }
    if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos) {
      throw std::invalid_argument("worker '" + kind + "': " + from +
                                  " must be a non-negative integer, got '" + text + "'");
    }
    return std::stoll(text);
  }
};

// The worker command line in argv, or nullopt when argv has no --worker. Every argument
// of a worker command line is an `--option value` pair.
inline std::optional<WorkerArgs> parse_worker_args(int argc, const char* const* argv) {
  bool is_worker = false;
  for (int i = 1; i < argc; ++i) is_worker = is_worker || std::string(argv[i]) == "--worker";
  if (!is_worker) return std::nullopt;
  WorkerArgs a;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    if (s.size() < 3 || s.rfind("--", 0) != 0) {
      throw std::invalid_argument("worker command line: expected --option VALUE, got '" + s + "'");
    }
    if (i + 1 >= argc) throw std::invalid_argument("worker command line: missing value after " + s);
    const std::string value = argv[++i];
    const std::string name = s.substr(2);
    if (name == "worker") {
      a.kind = value;
    } else if (name == "run-dir") {
      a.run_dir = value;
    } else if (!a.options.emplace(name, value).second) {
      throw std::invalid_argument("worker command line: " + s + " given twice");
    }
  }
  if (a.run_dir.empty()) throw std::invalid_argument("--worker " + a.kind + " needs --run-dir");
  return a;
}

class WorkerTable {
 public:
  using Fn = std::function<void(const WorkerArgs&)>;

  // Registers worker `kind`, which accepts exactly the options named in `options`.
  WorkerTable& add(const std::string& kind, std::set<std::string> options, Fn fn) {
    if (kind.empty()) throw std::invalid_argument("btx::recipe::WorkerTable: empty worker kind");
    if (!fn)
      throw std::invalid_argument("btx::recipe::WorkerTable: worker '" + kind +
                                  "' has no function");
    if (!kinds_.emplace(kind, Kind{std::move(options), std::move(fn)}).second) {
      throw std::invalid_argument("btx::recipe::WorkerTable: worker '" + kind +
                                  "' is registered twice");
    }
    return *this;
  }

  [[nodiscard]] std::vector<std::string> kinds() const {
    std::vector<std::string> out;
    for (const auto& [kind, _] : kinds_) out.push_back(kind);
    return out;
  }

  // Every option any kind takes, once each (for a command-line parser to declare).
  [[nodiscard]] std::set<std::string> option_names() const {
    std::set<std::string> out;
    for (const auto& [_, k] : kinds_) out.insert(k.options.begin(), k.options.end());
    return out;
  }

  // Runs the worker `args` names; an unknown kind or option fails naming what is known.
  void run(const WorkerArgs& args) const {
    const Kind& k = find(args.kind);
    check_options(args.kind, k, args.options);
    k.fn(args);
  }

  // The job that finishes `stage` by running worker `kind` of this very program.
  [[nodiscard]] WorkerJob job(const Run& run, const std::string& stage, const std::string& kind,
                              const std::map<std::string, std::string>& options = {}) const {
    check_options(kind, find(kind), options);
    std::vector<std::string> argv{self_executable(), "--worker", kind};
    for (const auto& [name, value] : options) argv.insert(argv.end(), {"--" + name, value});
    argv.insert(argv.end(), {"--run-dir", run.dir().string()});
    return {stage, std::move(argv)};
  }

 private:
  struct Kind {
    std::set<std::string> options;
    Fn fn;
  };
  [[nodiscard]] const Kind& find(const std::string& kind) const {
    const auto it = kinds_.find(kind);
    if (it == kinds_.end()) {
      std::string known;
      for (const auto& k : kinds()) known += (known.empty() ? "" : ", ") + k;
      throw std::invalid_argument("unknown worker '" + kind + "' (known: " + known + ")");
    }
    return it->second;
  }
  static void check_options(const std::string& kind, const Kind& k,
                            const std::map<std::string, std::string>& given) {
    for (const auto& [name, value] : given) {
      if (k.options.count(name)) continue;
      std::string takes;
      for (const auto& o : k.options) takes += (takes.empty() ? "" : ", ") + ("--" + o);
      throw std::invalid_argument("worker '" + kind + "' takes no option --" + name + " (" +
                                  (takes.empty() ? "it takes none" : "it takes " + takes) + ")");
    }
  }
  std::map<std::string, Kind> kinds_;
};

}  // namespace recipe
BTX_NAMESPACE_END
}  // namespace btx
