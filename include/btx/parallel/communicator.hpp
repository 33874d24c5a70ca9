// SPDX-License-Identifier: MIT
// A c10d process group for btx's synchronous stages: the store (TCPStore at the launcher's
// MASTER_ADDR:MASTER_PORT), a Gloo backend for CPU tensors, sub-groups, and the collectives
// data parallelism needs. Every collective waits with btx's timeout (not Gloo's 30 minutes)
// and turns a dead or stalled peer into a btx::dist::DistError naming this rank, the group
// and what it was doing, so every rank exits non-zero instead of hanging or aborting.
//
// Gloo's headers do not ship with the torch wheel: with none found (Debian: libgloo-dev),
// this header still compiles and a one-process Communicator works; connecting a world of
// more than one process throws, saying so. btx only constructs c10d types, never Gloo's,
// because distribution Gloo headers can be older than the Gloo inside libtorch.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#if defined(USE_C10D_GLOO) && __has_include(<gloo/context.h>) && \
    __has_include(<torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>)
#define BTX_HAS_GLOO 1
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#else
#define BTX_HAS_GLOO 0
#endif

#include <btx/parallel/dist_env.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace dist {

// A collective that failed: a peer died (connection reset), stalled past the timeout, or
// never arrived at the store.
class DistError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class Reduce { sum, mean, max };

inline constexpr std::chrono::milliseconds kDefaultTimeout{std::chrono::seconds(60)};

class Communicator {
 public:
  // One process, no peers: every collective is the identity.
  Communicator() = default;

  // Joins the world `env` describes (rank 0 serves the store unless torchrun's agent
  // does). `timeout` bounds the rendezvous and every collective.
  static Communicator connect(const DistEnv& env,
                              std::chrono::milliseconds timeout = kDefaultTimeout) {
    Communicator c;
    c.rank_ = env.rank;
    c.size_ = env.world_size;
    c.timeout_ = timeout;
    c.name_ = "world";
    const bool loopback = env.master_addr == "localhost" || env.master_addr.rfind("127.", 0) == 0;
    c.device_host_ = loopback ? "127.0.0.1" : "";
    if (env.world_size == 1) return c;
#if BTX_HAS_GLOO
    try {
      c10d::TCPStoreOptions o;
      o.port = static_cast<std::uint16_t>(env.master_port);
      o.isServer = env.rank == 0 && !env.agent_store;
      o.numWorkers = static_cast<size_t>(env.world_size);
      o.timeout = timeout;
      c.store_ = c10::make_intrusive<c10d::TCPStore>(env.master_addr, o);
    } catch (const std::exception& e) {
      throw DistError("btx::dist: " + env.describe() +
                      ": cannot reach the store: " + first_line(e.what()));
    }
    c.connect_group("world");
    return c;
#else
    throw DistError("btx::dist: " + env.describe() +
                    ": btx was built without Gloo's headers (Debian: apt-get install "
                    "libgloo-dev), so it cannot join a world of more than one process");
#endif
  }

  [[nodiscard]] int64_t rank() const {
    return rank_;
  }
  [[nodiscard]] int64_t size() const {
    return size_;
  }
  [[nodiscard]] const std::string& name() const {
    return name_;
  }
  [[nodiscard]] std::chrono::milliseconds timeout() const {
    return timeout_;
  }
  [[nodiscard]] bool is_root() const {
    return rank_ == 0;
  }

  // The ranks sharing `color` as one group (every rank calls it, with its own color);
  // rank order within the group follows world rank order.
  [[nodiscard]] Communicator split(int64_t color) {
    std::vector<int64_t> colors = all_gather_int(color, "split");
    Communicator g;
    g.timeout_ = timeout_;
    g.device_host_ = device_host_;
#if BTX_HAS_GLOO
    g.store_ = store_;
#endif
    g.name_ = name_ + "/group" + std::to_string(color);
    g.rank_ = 0;
    g.size_ = 0;
    for (int64_t r = 0; r < int64_t(colors.size()); ++r) {
      if (colors[size_t(r)] != color) continue;
      if (r == rank_) g.rank_ = g.size_;
      ++g.size_;
    }
#if BTX_HAS_GLOO
    if (g.size_ > 1) g.connect_group(g.name_);
#endif
    return g;
  }

  // In place over every tensor (CPU). `what` names the data in errors.
  void all_reduce(std::vector<torch::Tensor>& tensors, Reduce op, const std::string& what) {
    if (size_ == 1) return;
#if BTX_HAS_GLOO
    c10d::AllreduceOptions o;
    o.reduceOp = op == Reduce::max ? c10d::ReduceOp::MAX : c10d::ReduceOp::SUM;
    o.timeout = timeout_;
    run("all_reduce of " + what, [&] { return backend_->allreduce(tensors, o); });
    if (op == Reduce::mean) {
      for (auto& t : tensors) t.div_(double(size_));
    }
#else
    (void)tensors, (void)op, (void)what;
#endif
  }

  // Rank `root`'s tensors, in place on every rank.
  void broadcast(std::vector<torch::Tensor>& tensors, int64_t root, const std::string& what) {
    if (size_ == 1) return;
#if BTX_HAS_GLOO
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.timeout = timeout_;
    run("broadcast of " + what, [&] { return backend_->broadcast(tensors, o); });
#else
    (void)tensors, (void)root, (void)what;
#endif
  }

  void barrier(const std::string& what) {
    if (size_ == 1) return;
#if BTX_HAS_GLOO
    c10d::BarrierOptions o;
    o.timeout = timeout_;
    run("barrier (" + what + ")", [&] { return backend_->barrier(o); });
#else
    (void)what;
#endif
  }

  // Every rank's value of `v`, in rank order.
  [[nodiscard]] std::vector<int64_t> all_gather_int(int64_t v, const std::string& what) {
    if (size_ == 1) return {v};
    std::vector<torch::Tensor> slots = {torch::zeros({size_}, torch::kInt64)};
    slots[0][rank_] = v;
    all_reduce(slots, Reduce::sum, what);
    std::vector<int64_t> out(static_cast<size_t>(size_));
    for (int64_t r = 0; r < size_; ++r) out[size_t(r)] = slots[0][r].item<int64_t>();
    return out;
  }

  // The mean over ranks of each value (one small all-reduce).
  [[nodiscard]] std::vector<double> mean(const std::vector<double>& values,
                                         const std::string& what) {
    if (size_ == 1) return values;
    std::vector<torch::Tensor> t = {torch::tensor(values, torch::kFloat64)};
    all_reduce(t, Reduce::mean, what);
    return std::vector<double>(t[0].data_ptr<double>(), t[0].data_ptr<double>() + values.size());
  }

 private:
  static std::string first_line(const std::string& s) {
    return s.substr(0, s.find('\n'));
  }

  [[nodiscard]] std::string where() const {
    return "btx::dist: rank " + std::to_string(rank_) + " of " + std::to_string(size_) +
           " in group '" + name_ + "'";
  }

#if BTX_HAS_GLOO
  void connect_group(const std::string& prefix) {
    try {
      auto options = c10d::ProcessGroupGloo::Options::create(timeout_);
      // GLOO_SOCKET_IFNAME picks the interface, as in torch.distributed; a job on one host
      // talks over loopback; otherwise the interface of this host's name.
      const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
      options->devices.push_back(
          ifname && *ifname       ? c10d::ProcessGroupGloo::createDeviceForInterface(ifname)
          : !device_host_.empty() ? c10d::ProcessGroupGloo::createDeviceForHostname(device_host_)
                                  : c10d::ProcessGroupGloo::createDefaultDevice());
      backend_ = c10::make_intrusive<c10d::ProcessGroupGloo>(
          c10::make_intrusive<c10d::PrefixStore>(prefix, store_), int(rank_), int(size_), options);
    } catch (const std::exception& e) {
      throw DistError(where() + ": cannot form the process group within " +
                      std::to_string(timeout_.count()) + " ms: " + first_line(e.what()));
    }
  }

  template <class Start>
  void run(const std::string& what, Start start) {
    try {
      auto work = start();
      work->wait(timeout_);
    } catch (const std::exception& e) {
      throw DistError(where() + ": " + what + " failed: " + first_line(e.what()) +
                      " (a peer died, stalled past the " + std::to_string(timeout_.count()) +
                      " ms timeout, or left the job)");
    }
  }

  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::Backend> backend_;
#endif
  std::string device_host_;  // "127.0.0.1" for a single-host job, "" otherwise
  int64_t rank_ = 0;
  int64_t size_ = 1;
  std::chrono::milliseconds timeout_ = kDefaultTimeout;
  std::string name_ = "world";
};

}  // namespace dist
BTX_NAMESPACE_END
}  // namespace btx
