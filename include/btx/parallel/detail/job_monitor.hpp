// SPDX-License-Identifier: MIT
// This process's view of its distributed job: a heartbeat, what it is doing now, and, when
// a collective fails, which peer was lost. A failed Gloo collective only says that this
// rank's connection broke ("Connection reset by peer") or that it timed out, not which of
// N ranks died or froze. So every rank bumps a counter in the job's store once per
// `period` from a thread of its own (with its own connection to the store), and a rank
// that gives up on an error of its own says so in the store first. When a collective
// fails, the survivors wait a little over two periods: a peer whose counter stopped and
// who left no word is lost (killed, crashed or stalled); one that left word failed after
// someone else did. The rank that serves the store keeps it up after its own failure until
// every survivor has settled on its verdict (or a deadline), so a survivor that notices
// the failure a little later still learns who was lost, not merely that the store went
// away with its host. Only c10d's Store is used (see communicator.hpp for why).
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#if __has_include(<torch/csrc/distributed/c10d/Store.hpp>)
#include <torch/csrc/distributed/c10d/Store.hpp>
#define BTX_HAS_C10D_STORE 1
#else
#define BTX_HAS_C10D_STORE 0
#endif

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace dist {

inline constexpr std::chrono::milliseconds kDefaultHeartbeat{1000};

// What a failed rank found out about its peers.
struct PeerDiagnosis {
  std::string verdict;        // one sentence; empty when every peer still beats
  std::vector<int64_t> lost;  // world ranks without a heartbeat and without a word
};

class JobMonitor {
 public:
  // `what_serves_store` names the store's host for errors when it is gone ("rank 0").
  JobMonitor(int64_t world_rank, std::string what_serves_store)
      : world_rank_(world_rank), store_host_(std::move(what_serves_store)) {}
  JobMonitor(const JobMonitor&) = delete;
  JobMonitor& operator=(const JobMonitor&) = delete;
  ~JobMonitor() { stop(); }

  // What this process is doing now (e.g. "step 12 of stage 'expert-code'"), for errors.
  void set_activity(std::string activity) {
    std::lock_guard<std::mutex> lock(mu_);
    activity_ = std::move(activity);
  }
  [[nodiscard]] std::string activity() const {
    std::lock_guard<std::mutex> lock(mu_);
    return activity_;
  }

#if BTX_HAS_C10D_STORE
  // Starts beating into `store` (a clone is taken, so the caller's connection stays its own);
  // `serves_store`: this process hosts it, so the store ends with this process.
  void start(const c10::intrusive_ptr<c10d::Store>& store, std::chrono::milliseconds period,
             bool serves_store) {
    period_ = period;
    serves_store_ = serves_store;
    store_ = store->clone();
    store_->setTimeout(std::chrono::milliseconds(std::max<int64_t>(2 * period.count(), 2000)));
    beat_store_ = store->clone();
    beat_store_->setTimeout(store_->getTimeout());
    beat_store_->add(beat_key(world_rank_), 1);  // "arrived", before the first collective
    thread_ = std::thread([this] { beat(); });
  }

  // Tells the peers that this rank gives up on an error of its own (best effort).
  void mark_left(const std::string& why) noexcept {
    if (!store_) return;
    try {
      store_->set(left_key(world_rank_), why);
    } catch (...) {
    }
  }

  // Which of `world_ranks` (the members of a failed group, never this rank) are lost, as
  // one sentence, e.g. "lost rank 1 (world rank 1): no heartbeat for 2.5 s (killed, crashed
  // or stalled)". Empty when every peer still beats (e.g. the collective merely timed out).
  [[nodiscard]] PeerDiagnosis diagnose(const std::vector<int64_t>& world_ranks) {
    if (!store_) return {};
    std::vector<int64_t> peers;
    for (int64_t r : world_ranks) {
      if (r != world_rank_) peers.push_back(r);
    }
    std::vector<int64_t> before, after;
    try {
      before = counters(peers);
      std::this_thread::sleep_for(window());
      after = counters(peers);
    } catch (const std::exception&) {
      return {"the job's store (served by " + store_host_ + ") is unreachable, so " + store_host_ +
                  " is lost",
              {}};
    }
    PeerDiagnosis d;
    std::string lost, left;
    for (size_t i = 0; i < peers.size(); ++i) {
      const int64_t g = group_rank(world_ranks, peers[i]);
      const std::string who =
          "rank " + std::to_string(g) +
          (g == peers[i] ? "" : " (world rank " + std::to_string(peers[i]) + ")");
      const std::string left_why = left_word(peers[i]);
      if (!left_why.empty()) {
        left += (left.empty() ? "" : "; ") + who + " left on its own error (" + left_why + ")";
      } else if (after[i] == before[i]) {
        d.lost.push_back(peers[i]);
        lost += (lost.empty() ? "" : ", ") + who;
        lost += before[i] == 0 ? ": never arrived" : "";
      }
    }
    if (!lost.empty()) {
      d.verdict = "lost " + lost + " (no heartbeat for " + seconds(window()) +
                  "; killed, crashed or stalled)";
    }
    if (!left.empty()) d.verdict += (d.verdict.empty() ? "" : "; ") + left;
    return d;
  }

  // After this rank's own diagnosis: says so in the store and, where this process serves
  // the store, keeps it up until every peer of `world_ranks` that is not lost has settled
  // too, or until a peer that failed at `failed_at` or later, after waiting `peer_timeout`
  // in a collective, would have settled (its diagnosis takes as long as this one's).
  void settle(const std::vector<int64_t>& world_ranks, const PeerDiagnosis& d,
              std::chrono::steady_clock::time_point failed_at,
              std::chrono::milliseconds peer_timeout) noexcept {
    if (!store_) return;
    const auto deadline = failed_at + peer_timeout + window() + period_;
    try {
      store_->set(settled_key(world_rank_), "1");
      if (!serves_store_) return;
      std::vector<std::string> waiting;
      for (int64_t r : world_ranks) {
        if (r != world_rank_ && std::find(d.lost.begin(), d.lost.end(), r) == d.lost.end())
          waiting.push_back(settled_key(r));
      }
      while (!waiting.empty() && std::chrono::steady_clock::now() < deadline) {
        std::erase_if(waiting, [&](const std::string& key) { return store_->check({key}); });
        if (!waiting.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    } catch (...) {
    }
  }
#endif

 private:
  static std::string beat_key(int64_t r) {
    return "btx/beat/" + restart() + "/" + std::to_string(r);
  }
  static std::string left_key(int64_t r) {
    return "btx/left/" + restart() + "/" + std::to_string(r);
  }
  static std::string settled_key(int64_t r) {
    return "btx/settled/" + restart() + "/" + std::to_string(r);
  }
  // torchrun's agent store outlives a restart of the workers: keys are per attempt.
  static std::string restart() {
    const char* v = std::getenv("TORCHELASTIC_RESTART_COUNT");
    return v && *v ? v : "0";
  }
  static int64_t group_rank(const std::vector<int64_t>& members, int64_t world_rank) {
    for (size_t i = 0; i < members.size(); ++i) {
      if (members[i] == world_rank) return int64_t(i);
    }
    return world_rank;
  }
  static std::string seconds(std::chrono::milliseconds ms) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f s", double(ms.count()) / 1000.0);
    return buf;
  }
  [[nodiscard]] std::chrono::milliseconds window() const {
    return period_ * 5 / 2;
  }

#if BTX_HAS_C10D_STORE
  std::vector<int64_t> counters(const std::vector<int64_t>& ranks) {
    std::vector<int64_t> out;
    for (int64_t r : ranks) out.push_back(store_->add(beat_key(r), 0));
    return out;
  }
  std::string left_word(int64_t r) {
    try {
      if (!store_->check({left_key(r)})) return "";
      const auto v = store_->get(left_key(r));
      return std::string(v.begin(), v.end());
    } catch (const std::exception&) {
      return "";
    }
  }
  void beat() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stopping_) {
      lock.unlock();
      try {
        beat_store_->add(beat_key(world_rank_), 1);
      } catch (...) {
        return;  // the store is gone; diagnose() says so when it matters
      }
      lock.lock();
      wake_.wait_for(lock, period_, [this] { return stopping_; });
    }
  }
  c10::intrusive_ptr<c10d::Store> store_, beat_store_;
#endif

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    wake_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  int64_t world_rank_;
  std::string store_host_;
  std::chrono::milliseconds period_ = kDefaultHeartbeat;
  bool serves_store_ = false;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::string activity_;
  std::thread thread_;
};

}  // namespace dist
BTX_NAMESPACE_END
}  // namespace btx
