// SPDX-License-Identifier: MIT
// The BTX topology: which ranks train what. Expert i trains on a group of its own of
// ranks_per_expert ranks, data-parallel inside the group and with no communication between
// groups, so a failure inside one group costs only that expert. The groups are either
// separate jobs (one world per expert: one torchrun per expert, a Slurm array of multi-node
// jobs, or btx's own launcher) or one world split into a group per expert. The synchronous
// stages (the MoE finetune, the dense and upcycling baselines) are each one data-parallel
// job over ranks_per_stage ranks. Inside a job, the launcher's environment (torchrun,
// Slurm, btx's own) says where each process stands (parallel/dist_env.hpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/parallel/communicator.hpp>
#include <btx/parallel/data_parallel.hpp>
#include <btx/parallel/dist_env.hpp>
#include <btx/parallel/sharded_data_parallel.hpp>
#include <btx/train/hooks.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace recipe {

enum class ExpertWorlds {
  per_expert,  // one job (world) per expert
  shared       // one world of experts x ranks_per_expert ranks, split into expert groups
};

inline ExpertWorlds parse_expert_worlds(const std::string& name) {
  if (name == "per_expert") return ExpertWorlds::per_expert;
  if (name == "shared") return ExpertWorlds::shared;
  throw std::invalid_argument("expert_worlds '" + name + "' is not one of per_expert, shared");
}
inline std::string to_string(ExpertWorlds w) {
  return w == ExpertWorlds::shared ? "shared" : "per_expert";
}

struct Topology {
  int64_t ranks_per_expert = 1;  // data-parallel ranks training each expert
  int64_t ranks_per_stage = 1;   // data-parallel ranks of each synchronous stage
  ExpertWorlds expert_worlds = ExpertWorlds::per_expert;
  int64_t timeout_s = 60;  // rendezvous and every collective; a lost peer fails the job

  // Every rank count must split the global batch evenly.
  void validate(int64_t batch_size) const {
    const auto check = [&](const char* key, int64_t ranks) {
      if (ranks < 1) {
        throw std::invalid_argument(std::string("config: ") + key + " must be >= 1, got " +
                                    std::to_string(ranks));
      }
      if (batch_size % ranks != 0) {
        throw std::invalid_argument("config: batch_size " + std::to_string(batch_size) +
                                    " does not split evenly over " + key + " " +
                                    std::to_string(ranks) + " data-parallel ranks");
      }
    };
    check("ranks_per_expert", ranks_per_expert);
    check("ranks_per_stage", ranks_per_stage);
    if (timeout_s < 1) {
      throw std::invalid_argument("config: dist_timeout_s must be >= 1, got " +
                                  std::to_string(timeout_s));
    }
  }

  [[nodiscard]] std::chrono::milliseconds timeout() const {
    return std::chrono::seconds(timeout_s);
  }
};

// This process's world as its launcher describes it (one process when none does).
inline dist::Communicator join_world(const Topology& topology) {
  return dist::Communicator::connect(dist::dist_env_from_environment(), topology.timeout());
}

// The expert this rank trains in a world shared by `experts` groups, and its group.
struct ExpertGroup {
  int64_t expert = 0;
  dist::Communicator ranks;
};

// Splits `world` (experts x R ranks; ranks [i R, (i + 1) R) train expert i) into expert
// groups named "expert-<name>" (a collective over the world, once, before training).
inline ExpertGroup split_expert_groups(dist::Communicator& world,
                                       const std::vector<std::string>& expert_names) {
  const int64_t n = int64_t(expert_names.size());
  if (n == 0 || world.size() % n != 0) {
    throw std::invalid_argument("btx::recipe: a world of " + std::to_string(world.size()) +
                                " ranks does not split into " + std::to_string(n) +
                                " equal expert groups; launch experts x ranks_per_expert ranks");
  }
  const int64_t expert = world.rank() / (world.size() / n);
  return {expert, world.split(expert, "expert-" + expert_names[size_t(expert)])};
}

// A stage's training hooks on `ranks`: data-parallel when there is more than one, its
// state sharded as `sharding` says (parallel/sharded_data_parallel.hpp).
inline TrainHooks stage_hooks(dist::Communicator& ranks, TrainHooks base = {},
                              dist::Sharding sharding = dist::Sharding::none) {
  return ranks.size() > 1
             ? dist::sharded_data_parallel(ranks, std::move(base), {.sharding = sharding})
             : base;
}

}  // namespace recipe
BTX_NAMESPACE_END
}  // namespace btx
