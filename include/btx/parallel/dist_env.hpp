// SPDX-License-Identifier: MIT
// Where this process stands in a distributed job, read from the launcher's environment:
// torchrun / TorchElastic (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), Slurm
// (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; MASTER_ADDR/MASTER_PORT from the batch
// script), or neither: one process. And the same variables written for btx's own launcher
// (one host: recipe/workers.hpp), so its workers read them exactly as torchrun's, plus one
// of btx's own: BTX_STORE_LISTEN_FD, a listening socket the launcher bound for rank 0's
// store and rank 0 inherited. Picking a free port and letting rank 0 bind it later races
// with every other process on the host (an outgoing connection may take the port in
// between); handing over the bound socket cannot (torchrun does the same for its store).
// No c10d here, so every build can read it.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace dist {

struct DistEnv {
  int64_t rank = 0;
  int64_t world_size = 1;
  int64_t local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 29500;
  std::string launcher = "none";  // "torchrun", "slurm" or "none"
  // torchrun's agent already serves the TCPStore at MASTER_ADDR:MASTER_PORT; rank 0 then
  // connects to it instead of serving its own.
  bool agent_store = false;
  // torchrun's restarts of this job so far (TORCHELASTIC_RESTART_COUNT): every attempt uses
  // store keys of its own, as the agent's store outlives the workers of the last one.
  int64_t restart_count = 0;
  // Rank 0 of btx's launcher: the store's socket, already bound and listening; else -1.
  int store_listen_fd = -1;

  [[nodiscard]] bool distributed() const { return world_size > 1; }
  [[nodiscard]] std::string describe() const {
    return "rank " + std::to_string(rank) + " of " + std::to_string(world_size) + " (" + launcher +
           ", store " + master_addr + ":" + std::to_string(master_port) + ")";
  }
};

namespace detail {

inline std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::nullopt;
  return std::string(v);
}

inline int64_t env_int(const char* name, int64_t min, int64_t fallback) {
  const auto v = env(name);
  if (!v) return fallback;
  size_t used = 0;
  int64_t out = 0;
  try {
    out = std::stoll(*v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != v->size() || out < min) {
    throw std::invalid_argument("btx::dist: environment variable " + std::string(name) + "='" + *v +
                                "' is not an integer >= " + std::to_string(min));
  }
  return out;
}

}  // namespace detail

// Reads the launcher's variables; throws std::invalid_argument naming the variable that is
// malformed or inconsistent (RANK >= WORLD_SIZE, a port out of range).
inline DistEnv dist_env_from_environment() {
  using detail::env;
  using detail::env_int;
  DistEnv e;
  if (env("RANK") || env("WORLD_SIZE")) {
    e.launcher = "torchrun";
    if (!env("RANK") || !env("WORLD_SIZE")) {
      throw std::invalid_argument(
          "btx::dist: RANK and WORLD_SIZE must be set together (torchrun sets both)");
    }
    e.rank = env_int("RANK", 0, 0);
    e.world_size = env_int("WORLD_SIZE", 1, 1);
    e.local_rank = env_int("LOCAL_RANK", 0, e.rank);
    e.agent_store = env("TORCHELASTIC_USE_AGENT_STORE").value_or("") == "True";
    e.restart_count = env_int("TORCHELASTIC_RESTART_COUNT", 0, 0);
  } else if (env("SLURM_PROCID") && env("SLURM_NTASKS")) {
    e.launcher = "slurm";
    e.rank = env_int("SLURM_PROCID", 0, 0);
    e.world_size = env_int("SLURM_NTASKS", 1, 1);
    e.local_rank = env_int("SLURM_LOCALID", 0, 0);
    if (!env("MASTER_ADDR") && e.world_size > 1) {
      throw std::invalid_argument(
          "btx::dist: under Slurm, export MASTER_ADDR (e.g. the first host of "
          "`scontrol show hostnames $SLURM_JOB_NODELIST`) and MASTER_PORT");
    }
  } else {
    return e;  // one process
  }
  if (e.rank >= e.world_size) {
    throw std::invalid_argument("btx::dist: rank " + std::to_string(e.rank) +
                                " is not below the world size " + std::to_string(e.world_size));
  }
  if (e.rank == 0 && !e.agent_store) {
    e.store_listen_fd = static_cast<int>(env_int("BTX_STORE_LISTEN_FD", 0, -1));
  }
  e.master_addr = env("MASTER_ADDR").value_or(e.master_addr);
  e.master_port = env_int("MASTER_PORT", 1, e.master_port);
  if (e.master_port > 65535) {
    throw std::invalid_argument("btx::dist: MASTER_PORT=" + std::to_string(e.master_port) +
                                " is not a TCP port");
  }
  return e;
}

// A listening TCP socket on 127.0.0.1 at a port the kernel picked, for the store of a job
// btx launches on this host; closed on exec except in the child it is handed to (rank 0).
class LocalStoreSocket {
 public:
  LocalStoreSocket() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0)
      throw std::runtime_error(std::string("btx::dist: socket: ") + std::strerror(errno));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    const bool ok = ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
                    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0 &&
                    ::listen(fd_, SOMAXCONN) == 0;
    const int err = errno;
    if (!ok) {
      ::close(fd_);
      throw std::runtime_error(std::string("btx::dist: no port for a store on 127.0.0.1: ") +
                               std::strerror(err));
    }
    port_ = ntohs(addr.sin_port);
  }
  LocalStoreSocket(const LocalStoreSocket&) = delete;
  LocalStoreSocket& operator=(const LocalStoreSocket&) = delete;
  ~LocalStoreSocket() { ::close(fd_); }

  [[nodiscard]] int fd() const { return fd_; }
  [[nodiscard]] int64_t port() const { return port_; }

 private:
  int fd_ = -1;
  int64_t port_ = 0;
};

// torchrun's variables for rank `rank` of a `world_size`-process job on this host whose
// store listens on `store` ("NAME=value" entries for a child's environment); rank 0 must
// inherit store.fd() (ExpertProcesses::spawn's keep_fds).
inline std::vector<std::string> launcher_env(int64_t rank, int64_t world_size,
                                             const LocalStoreSocket& store) {
  const auto s = [](int64_t v) { return std::to_string(v); };
  std::vector<std::string> out = {"RANK=" + s(rank),
                                  "WORLD_SIZE=" + s(world_size),
                                  "LOCAL_RANK=" + s(rank),
                                  "LOCAL_WORLD_SIZE=" + s(world_size),
                                  "GROUP_RANK=0",
                                  "MASTER_ADDR=127.0.0.1",
                                  "MASTER_PORT=" + s(store.port()),
                                  "TORCHELASTIC_USE_AGENT_STORE=False"};
  if (rank == 0) out.push_back("BTX_STORE_LISTEN_FD=" + s(store.fd()));
  return out;
}

}  // namespace dist
BTX_NAMESPACE_END
}  // namespace btx
