// SPDX-License-Identifier: MIT
// A c10d process group for btx's synchronous stages: the store (TCPStore at the launcher's
// MASTER_ADDR:MASTER_PORT), a Gloo backend for CPU tensors (and NCCL for CUDA tensors in a
// CUDA LibTorch built with it), sub-groups, and the collectives that data and expert
// parallelism need. Every collective waits with btx's timeout (not Gloo's 30 minutes) and
// turns a dead or stalled peer into a btx::dist::DistError naming this rank, the group,
// what it was doing and which peer was lost (job_monitor.hpp), so every surviving rank
// exits non-zero instead of hanging or aborting.
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
#include <functional>
#include <memory>
#include <numeric>
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
// NCCL for CUDA tensors: only where LibTorch was built with it (a CUDA wheel defines
// USE_C10D_NCCL on its targets) and Gloo carries the store-based rendezvous.
#if BTX_HAS_GLOO && defined(USE_C10D_NCCL) && \
    __has_include(<torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>)
#define BTX_HAS_NCCL 1
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#else
#define BTX_HAS_NCCL 0
#endif

#include <signal.h>  // sigaction: POSIX, not in <csignal>

#include <btx/core/collectives.hpp>
#include <btx/parallel/detail/job_monitor.hpp>
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

// A collective started without waiting (all_reduce_async); wait() before using the data.
class PendingCollective {
 public:
  PendingCollective() = default;
  explicit PendingCollective(std::function<void()> wait) : wait_(std::move(wait)) {}
  void wait() {
    if (wait_) std::exchange(wait_, {})();
  }

 private:
  std::function<void()> wait_;
};

// A send to a peer that has died raises SIGPIPE, whose default action kills this rank
// before Gloo or the store can report EPIPE as an error naming the lost peer. Python
// ignores SIGPIPE at start-up, so torch's Python users never meet this; a C++ program
// must. A handler the program installed itself is left alone.
inline void ignore_broken_pipes() {
  struct sigaction current {};
  if (sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL)
    signal(SIGPIPE, SIG_IGN);
}

class Communicator : public Collectives {
 public:
  // One process, no peers: every collective is the identity.
  Communicator() = default;

  // Joins the world `env` describes (rank 0 serves the store unless torchrun's agent
  // does). `timeout` bounds the rendezvous and every collective; `heartbeat` is how often
  // this rank tells the store it is alive (a lost peer is named after ~2.5 beats).
  static Communicator connect(const DistEnv& env,
                              std::chrono::milliseconds timeout = kDefaultTimeout,
                              std::chrono::milliseconds heartbeat = kDefaultHeartbeat) {
    Communicator c;
    c.rank_ = env.rank;
    c.size_ = env.world_size;
    c.timeout_ = timeout;
    c.members_.resize(size_t(env.world_size));
    std::iota(c.members_.begin(), c.members_.end(), int64_t{0});
    c.monitor_ = std::make_shared<JobMonitor>(
        env.rank, env.agent_store ? "torchrun's agent at " + env.master_addr : "rank 0");
    const bool loopback = env.master_addr == "localhost" || env.master_addr.rfind("127.", 0) == 0;
    c.device_host_ = loopback ? "127.0.0.1" : "";
    if (env.world_size == 1) return c;
#if BTX_HAS_GLOO
    ignore_broken_pipes();
    try {
      c10d::TCPStoreOptions o;
      o.port = static_cast<std::uint16_t>(env.master_port);
      o.isServer = env.rank == 0 && !env.agent_store;
      if (o.isServer && env.store_listen_fd >= 0) o.masterListenFd = env.store_listen_fd;
      o.waitWorkers = false;  // the group's rendezvous waits, and can name who is missing
      o.timeout = timeout;
      c.store_ = c10::make_intrusive<c10d::TCPStore>(env.master_addr, o);
      // A restarted job (torchrun --max-restarts) meets the last attempt's keys in the
      // agent's store; each attempt keeps to its own.
      if (env.agent_store) {
        c.store_ = c10::make_intrusive<c10d::PrefixStore>(
            "btx-attempt-" + std::to_string(env.restart_count), c.store_);
      }
      c.monitor_->start(c.store_, heartbeat, o.isServer);
    } catch (const std::exception& e) {
      throw DistError("btx::dist: " + env.describe() +
                      ": cannot reach the store: " + first_line(e.what()));
    }
    c.connect_group("world");
    return c;
#else
    (void)heartbeat;
    throw DistError("btx::dist: " + env.describe() +
                    ": btx was built without Gloo's headers (Debian: apt-get install "
                    "libgloo-dev), so it cannot join a world of more than one process");
#endif
  }

  [[nodiscard]] int64_t rank() const override {
    return rank_;
  }
  [[nodiscard]] int64_t size() const override {
    return size_;
  }
  [[nodiscard]] std::string group_name() const override {
    return name_;
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
  // The world rank of each member, in group rank order.
  [[nodiscard]] const std::vector<int64_t>& world_ranks() const {
    return members_;
  }

  // What this process is doing, named by any collective that fails (e.g. "step 12").
  void set_activity(std::string activity) {
    if (monitor_) monitor_->set_activity(std::move(activity));
  }

  // The ranks sharing `color` as one group named `name` (default "<this>/group<color>");
  // every rank of this group calls it, in the same order, with its own color. Rank order
  // within the new group follows this group's order.
  [[nodiscard]] Communicator split(int64_t color, std::string name = "") {
    std::vector<int64_t> colors = all_gather_int(color, "split");
    Communicator g;
    g.timeout_ = timeout_;
    g.device_host_ = device_host_;
    g.monitor_ = monitor_;
    g.name_ = name.empty() ? name_ + "/group" + std::to_string(color) : std::move(name);
    g.rank_ = 0;
    g.size_ = 0;
    g.members_.clear();
    for (int64_t r = 0; r < int64_t(colors.size()); ++r) {
      if (colors[size_t(r)] != color) continue;
      if (r == rank_) g.rank_ = g.size_;
      g.members_.push_back(members_[size_t(r)]);
      ++g.size_;
    }
#if BTX_HAS_GLOO
    g.store_ = store_;
    // Each split gets its own store keys, even a second split of the same colors.
    g.prefix_ = prefix_ + "/" + std::to_string((*splits_)++) + ":" + std::to_string(color);
    if (g.size_ > 1) g.connect_group(g.prefix_);
#endif
    return g;
  }

  // In place over every tensor (all on the CPU, or all on CUDA). `what` names the data.
  void all_reduce(std::vector<torch::Tensor>& tensors, Reduce op, const std::string& what) {
    all_reduce_async(tensors, op, what).wait();
  }

  // all_reduce started on the backend's threads; the tensors hold the result after wait().
  [[nodiscard]] PendingCollective all_reduce_async(std::vector<torch::Tensor>& tensors, Reduce op,
                                                   const std::string& what) {
    if (size_ == 1 || tensors.empty()) return {};
#if BTX_HAS_GLOO
    c10d::AllreduceOptions o;
    o.reduceOp = op == Reduce::max ? c10d::ReduceOp::MAX : c10d::ReduceOp::SUM;
    o.timeout = timeout_;
    auto work = start("all_reduce of " + what,
                      [&] { return backend_for(tensors[0])->allreduce(tensors, o); });
    return PendingCollective([self = *this, work, tensors, op, what]() mutable {
      self.finish("all_reduce of " + what, work);
      if (op == Reduce::mean) {
        for (auto& t : tensors) t.div_(double(self.size_));
      }
    });
#else
    (void)op, (void)what;
    return {};
#endif
  }

  void all_reduce_sum(torch::Tensor& t, const std::string& what) override {
    std::vector<torch::Tensor> one = {t};
    all_reduce(one, Reduce::sum, what);
  }

  // Rank `root`'s tensors, in place on every rank.
  void broadcast(std::vector<torch::Tensor>& tensors, int64_t root, const std::string& what) {
    if (size_ == 1 || tensors.empty()) return;
#if BTX_HAS_GLOO
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.timeout = timeout_;
    run("broadcast of " + what, [&] { return backend_for(tensors[0])->broadcast(tensors, o); });
#else
    (void)root, (void)what;
#endif
  }

  [[nodiscard]] torch::Tensor all_to_all(const torch::Tensor& input_N,
                                         const std::vector<int64_t>& send_rows,
                                         const std::vector<int64_t>& recv_rows,
                                         const std::string& what) override {
    if (int64_t(send_rows.size()) != size_ || int64_t(recv_rows.size()) != size_) {
      throw std::invalid_argument(where() + ": all_to_all of " + what +
                                  " needs one row count per rank (" + std::to_string(size_) + ")");
    }
    const int64_t sent = std::accumulate(send_rows.begin(), send_rows.end(), int64_t{0});
    if (input_N.dim() < 1 || input_N.size(0) != sent) {
      throw std::invalid_argument(where() + ": all_to_all of " + what + ": input " +
                                  c10::str(input_N.sizes()) + " does not have the " +
                                  std::to_string(sent) + " rows it sends");
    }
    auto shape = input_N.sizes().vec();
    shape[0] = std::accumulate(recv_rows.begin(), recv_rows.end(), int64_t{0});
    if (size_ == 1) return input_N.clone();
    torch::Tensor out = torch::empty(shape, input_N.options());
#if BTX_HAS_GLOO
    torch::Tensor in = input_N.contiguous();
    std::vector<int64_t> out_counts = recv_rows, in_counts = send_rows;
    c10d::AllToAllOptions o;
    o.timeout = timeout_;
    run("all_to_all of " + what,
        [&] { return backend_for(in)->alltoall_base(out, in, out_counts, in_counts, o); });
#endif
    return out;
  }

  // Every rank's `shard` [n] into `full` [size * n] in rank order, started on the backend's
  // threads (ZeRO-3's prefetch); `full` holds the result after wait().
  [[nodiscard]] PendingCollective all_gather_async(const torch::Tensor& full,
                                                   const torch::Tensor& shard,
                                                   const std::string& what) {
    check_sharded(full, shard, "all_gather of " + what);
    if (size_ == 1) {
      full.copy_(shard);
      return {};
    }
#if BTX_HAS_GLOO
    auto out = full, in = shard;
    c10d::AllgatherOptions o;
    o.timeout = timeout_;
    auto work = start("all_gather of " + what,
                      [&] { return backend_for(in)->_allgather_base(out, in, o); });
    return PendingCollective([self = *this, work, what, out, in]() mutable {
      self.finish("all_gather of " + what, work);
    });
#else
    return {};
#endif
  }

  // The sum over ranks of `full` [size * n]; this rank's slice of it into `shard` [n].
  void reduce_scatter(const torch::Tensor& shard, const torch::Tensor& full,
                      const std::string& what) {
    check_sharded(full, shard, "reduce_scatter of " + what);
    if (size_ == 1) {
      shard.copy_(full);
      return;
    }
#if BTX_HAS_GLOO
    auto out = shard, in = full;
    c10d::ReduceScatterOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    o.timeout = timeout_;
    run("reduce_scatter of " + what,
        [&] { return backend_for(in)->_reduce_scatter_base(out, in, o); });
#endif
  }

  void barrier(const std::string& what) {
    if (size_ == 1) return;
#if BTX_HAS_GLOO
    std::vector<torch::Tensor> token = {torch::zeros({1})};
    all_reduce(token, Reduce::sum, "barrier (" + what + ")");
#else
    (void)what;
#endif
  }

  // Every rank's value of `v`, in rank order.
  [[nodiscard]] std::vector<int64_t> all_gather_int(int64_t v, const std::string& what) {
    if (size_ == 1) return {v};
    std::vector<torch::Tensor> slots = {torch::zeros({size_}, torch::kInt64)};
    slots[0].data_ptr<int64_t>()[rank_] = v;
    all_reduce(slots, Reduce::sum, what);
    const int64_t* all = slots[0].data_ptr<int64_t>();
    return std::vector<int64_t>(all, all + size_);
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
  // Gloo's own message without its source location and advice: "Read error [addr]: ...".
  static std::string backend_message(const std::string& s) {
    std::string m = first_line(s);
    if (!m.empty() && m[0] == '[' && m.find("] ") != std::string::npos)
      m = m.substr(m.find("] ") + 2);
    const auto advice = m.find(" This is typically");
    return advice == std::string::npos ? m : m.substr(0, advice);
  }

  void check_sharded(const torch::Tensor& full, const torch::Tensor& shard,
                     const std::string& what) const {
    if (!full.is_contiguous() || !shard.is_contiguous() || full.numel() != size_ * shard.numel() ||
        full.scalar_type() != shard.scalar_type()) {
      throw std::invalid_argument(where() + ": " + what + ": a contiguous [" +
                                  std::to_string(size_) +
                                  " x n] tensor and its [n] shard of one "
                                  "dtype expected, got " +
                                  c10::str(full.sizes()) + " and " + c10::str(shard.sizes()));
    }
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
#if BTX_HAS_NCCL
      if (torch::cuda::is_available()) {
        auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
        nccl_options->timeout = timeout_;
        cuda_backend_ = c10::make_intrusive<c10d::ProcessGroupNCCL>(
            c10::make_intrusive<c10d::PrefixStore>(prefix + "/nccl", store_), int(rank_),
            int(size_), nccl_options);
      }
#endif
    } catch (const std::exception& e) {
      fail("forming the process group within " + std::to_string(timeout_.count()) + " ms", e);
    }
  }

  [[nodiscard]] c10::intrusive_ptr<c10d::Backend> backend_for(const torch::Tensor& t) const {
    if (!t.is_cuda()) return backend_;
#if BTX_HAS_NCCL
    if (cuda_backend_) return cuda_backend_;
#endif
    throw std::invalid_argument(where() +
                                ": a CUDA tensor, but this LibTorch has no NCCL "
                                "(or no GPU is visible): keep tensors on the CPU");
  }

  template <class Start>
  c10::intrusive_ptr<c10d::Work> start(const std::string& what, Start&& start_fn) {
    try {
      return start_fn();
    } catch (const std::exception& e) {
      fail(what, e);
    }
  }
  void finish(const std::string& what, const c10::intrusive_ptr<c10d::Work>& work) {
    try {
      work->wait(timeout_);
    } catch (const std::exception& e) {
      fail(what, e);
    }
  }
  template <class Start>
  void run(const std::string& what, Start&& start_fn) {
    finish(what, start(what, std::forward<Start>(start_fn)));
  }

  // Says in the store that this rank gives up, finds which peer was lost, waits for the
  // others to find out too where this process serves the store, and throws.
  [[noreturn]] void fail(const std::string& what, const std::exception& e) const {
    const auto failed_at = std::chrono::steady_clock::now();
    const std::string activity = monitor_->activity();
    const std::string doing = what + (activity.empty() ? "" : " at " + activity);
    monitor_->mark_left(doing);
    const PeerDiagnosis diagnosis = monitor_->diagnose(members_);
    monitor_->settle(members_, diagnosis, failed_at, timeout_);
    std::string lost = diagnosis.verdict;
    if (lost.empty()) lost = "every peer still answers (a collective mismatch or a slow peer?)";
    throw DistError(where() + ": " + doing + " failed: " + lost + " [" + backend_message(e.what()) +
                    "; timeout " + std::to_string(timeout_.count()) + " ms]");
  }

  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::Backend> backend_;
#if BTX_HAS_NCCL
  c10::intrusive_ptr<c10d::Backend> cuda_backend_;
#endif
  std::string prefix_ = "world";
  std::shared_ptr<int64_t> splits_ = std::make_shared<int64_t>(0);  // shared by copies
#endif
  std::shared_ptr<JobMonitor> monitor_;  // one per process, shared by its groups
  std::string device_host_;              // "127.0.0.1" for a single-host job, "" otherwise
  int64_t rank_ = 0;
  int64_t size_ = 1;
  std::vector<int64_t> members_ = {0};
  std::chrono::milliseconds timeout_ = kDefaultTimeout;
  std::string name_ = "world";
};

}  // namespace dist
BTX_NAMESPACE_END
}  // namespace btx
