// SPDX-License-Identifier: MIT
// Background writers for streaming checkpoint writers: the caller computes the next tensor
// while worker threads write earlier ones (pwrite of a computed tensor, copy_file_range of
// a source's bytes), so reading, arithmetic and writing overlap instead of taking turns.
// Memory stays bounded: at most `max_held_bytes` of computed tensors wait or are being
// written (a job larger than that still runs, alone), so a writer's peak is the tensor
// it is computing plus that bound.
//
//   io::WriteQueue queue(/*threads=*/2, /*max_held_bytes=*/largest_tensor);
//   queue.submit(0, [&] { writer.copy(name, range); });          // holds no memory
//   queue.submit(bytes_of(t), [&writer, t] { writer.write(name, t); });
//   queue.drain();  // every job done; rethrows the first job's error
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace io {

class WriteQueue {
 public:
  // threads == 0 runs every job inside submit() (no overlap; the old behaviour).
  WriteQueue(size_t threads, uint64_t max_held_bytes) : max_held_(max_held_bytes) {
    for (size_t i = 0; i < threads; ++i) workers_.emplace_back([this] { work(); });
  }
  WriteQueue(const WriteQueue&) = delete;
  WriteQueue& operator=(const WriteQueue&) = delete;
  // Jobs not yet started are dropped (a failed or abandoned write leaves nothing to
  // finish); running ones complete before the destructor returns, so whatever they write
  // into outlives them when declared before the queue.
  ~WriteQueue() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
      jobs_.clear();
    }
    changed_.notify_all();
    for (auto& w : workers_) w.join();
  }

  // Queues `job`, which keeps `held_bytes` of memory alive until it has run. Blocks while
  // the bytes already held would exceed the bound. Rethrows an earlier job's error.
  void submit(uint64_t held_bytes, std::function<void()> job) {
    if (workers_.empty()) {
      job();
      return;
    }
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return error_ || held_ == 0 || held_ + held_bytes <= max_held_; });
    rethrow_locked();
    held_ += held_bytes;
    jobs_.push_back({held_bytes, std::move(job)});
    lock.unlock();
    changed_.notify_all();
  }

  // Waits until every queued job has run; rethrows the first job's error.
  void drain() {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return error_ || (jobs_.empty() && running_ == 0); });
    rethrow_locked();
  }

 private:
  struct Job {
    uint64_t held;
    std::function<void()> run;
  };

  void rethrow_locked() {
    if (error_) std::rethrow_exception(error_);
  }

  void work() {
    std::unique_lock lock(mutex_);
    for (;;) {
      changed_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // stopping, nothing left
      Job job = std::move(jobs_.front());
      jobs_.pop_front();
      ++running_;
      lock.unlock();
      std::exception_ptr failed;
      try {
        job.run();
      } catch (...) {
        failed = std::current_exception();
      }
      job.run = nullptr;  // release what the job held before accounting for it
      lock.lock();
      --running_;
      held_ -= job.held;
      if (failed && !error_) {
        error_ = failed;
        jobs_.clear();  // the output is abandoned; nothing else needs writing
      }
      changed_.notify_all();
    }
  }

  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Job> jobs_;
  std::vector<std::thread> workers_;
  uint64_t max_held_ = 0, held_ = 0;
  size_t running_ = 0;
  std::exception_ptr error_;
  bool stopping_ = false;
};

}  // namespace io
BTX_NAMESPACE_END
}  // namespace btx
