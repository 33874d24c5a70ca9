// SPDX-License-Identifier: MIT
// Embarrassingly parallel experts as real OS processes: spawn one child per expert with
// its own log file, wait for all, and report each one's fate. A child that crashes or is
// killed costs only its own work; the others run to completion. (Not a c10d process group:
// these processes never communicate; btx/parallel/communicator.hpp is where synchronised
// training lives.)
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/version.hpp>

extern char** environ;

namespace btx {
BTX_NAMESPACE_BEGIN

struct ProcessOutcome {
  std::string name;
  pid_t pid = -1;
  int exit_code = -1;  // valid when !signaled
  int signal = 0;      // the terminating signal when signaled
  bool signaled = false;
  [[nodiscard]] bool ok() const { return !signaled && exit_code == 0; }
  [[nodiscard]] std::string describe() const {
    if (signaled)
      return name + " was killed by signal " + std::to_string(signal) + " (" + ::strsignal(signal) +
             ")";
    return name + " exited with code " + std::to_string(exit_code);
  }
};

class ExpertProcesses {
 public:
  ExpertProcesses() = default;
  ExpertProcesses(const ExpertProcesses&) = delete;
  ExpertProcesses& operator=(const ExpertProcesses&) = delete;
  ~ExpertProcesses() {
    for (auto& c : children_) {  // never leave orphans behind on an exception
      if (!c.reaped) {
        ::kill(c.outcome.pid, SIGTERM);
        ::waitpid(c.outcome.pid, nullptr, 0);
      }
    }
  }

  // Starts argv[0] with argv and the environment plus extra_env ("NAME=value", replacing
  // the parent's NAME); stdout and stderr go to log_path (appended). The descriptors of
  // keep_fds stay open in the child under the same numbers even if marked close-on-exec
  // (POSIX: a dup2 onto itself clears the flag; glibc >= 2.29).
  pid_t spawn(const std::string& name, const std::vector<std::string>& argv,
              const std::string& log_path, const std::vector<std::string>& extra_env = {},
              const std::vector<int>& keep_fds = {}) {
    if (argv.empty()) throw std::invalid_argument("ExpertProcesses::spawn: empty argv for " + name);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    for (int fd : keep_fds) posix_spawn_file_actions_adddup2(&actions, fd, fd);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_path.c_str(),
                                     O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    // The parent's environment with extra_env's variables replaced (getenv takes the first).
    const auto name_of = [](const std::string& entry) { return entry.substr(0, entry.find('=')); };
    std::vector<std::string> env_store;
    for (char** e = environ; *e != nullptr; ++e) {
      const std::string entry = *e;
      bool replaced = false;
      for (const auto& x : extra_env) replaced = replaced || name_of(x) == name_of(entry);
      if (!replaced) env_store.push_back(entry);
    }
    env_store.insert(env_store.end(), extra_env.begin(), extra_env.end());
    std::vector<char*> env;
    for (auto& e : env_store) env.push_back(e.data());
    env.push_back(nullptr);
    pid_t pid = -1;
    const int rc = ::posix_spawn(&pid, args[0], &actions, nullptr, args.data(), env.data());
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
      throw std::runtime_error("cannot start " + name + " (" + argv[0] + "): " + std::strerror(rc));
    }
    children_.push_back({{name, pid}, false});
    return pid;
  }

  // Reaps children that have ended, without blocking; true while any still runs.
  bool running() {
    bool any = false;
    for (auto& c : children_) {
      if (!c.reaped) any |= !reap(c, WNOHANG);
    }
    return any;
  }

  // Waits for every child; the outcomes come back in spawn order.
  std::vector<ProcessOutcome> wait_all() {
    std::vector<ProcessOutcome> out;
    for (auto& c : children_) {
      if (!c.reaped) reap(c, 0);
      out.push_back(c.outcome);
    }
    return out;
  }

 private:
  struct Child {
    ProcessOutcome outcome;
    bool reaped = false;
  };
  // waitpid with `flags`; records the outcome and returns true once the child has ended.
  static bool reap(Child& c, int flags) {
    int status = 0;
    pid_t r;
    while ((r = ::waitpid(c.outcome.pid, &status, flags)) < 0 && errno == EINTR) {
    }
    if (r == 0) return false;  // still running (WNOHANG)
    c.reaped = true;
    if (r > 0 && WIFSIGNALED(status)) {
      c.outcome.signaled = true;
      c.outcome.signal = WTERMSIG(status);
    } else if (r > 0) {
      c.outcome.exit_code = WEXITSTATUS(status);
    }
    return true;
  }
  std::vector<Child> children_;
};

// The running executable, for re-launching this program as a worker.
inline std::string self_executable() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) throw std::runtime_error("cannot resolve /proc/self/exe");
  return std::string(buf, size_t(n));
}

BTX_NAMESPACE_END
}  // namespace btx
