// SPDX-License-Identifier: MIT
// Runs a recipe's stage graph (recipe/stage_graph.hpp) phase by phase: the stages without a
// worker in this process, the others as worker jobs of this very program (its worker kinds
// come from the graph: worker_table), each on the ranks the topology gives it, all of a
// phase at once or in stage_jobs lanes. run_in_process runs every stage here instead, one
// after another (a user's program that starts no processes). Context needs `run`,
// `topology`, `stage_jobs`, `selection()` (which declarations run), `domain_names()` and
// `routers()`; `threads`, `worker_bytes` and `useful_threads` (recipe.hpp) when it has them.
#pragma once

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/parallel/communicator.hpp>
#include <btx/parallel/machine_budget.hpp>
#include <btx/recipe/stage_graph.hpp>
#include <btx/recipe/topology.hpp>
#include <btx/recipe/worker_dispatch.hpp>
#include <btx/recipe/workers.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace recipe {

namespace detail {

template <class Context>
std::vector<StageInstance> instances_here(const StageDecl<Context>& d, const Context& c) {
  return StageGraph<Context>::instances_of(d, c.domain_names(), c.routers());
}

inline std::string option_of(Each each, const std::string& given) {
  if (!given.empty()) return given;
  return each == Each::domain ? "domain" : each == Each::router ? "router" : "";
}

// The instance a worker command line names: its index option (or $SLURM_ARRAY_TASK_ID),
// its router (default: the first), or the declaration's one.
template <class Context>
StageInstance instance_of(const StageDecl<Context>& d, const Context& c, const WorkerArgs& a) {
  const auto all = instances_here(d, c);
  if (d.each == Each::once) return all.front();
  if (d.each == Each::router) {
    const std::string r = a.value_or(option_of(d.each, d.worker_option), c.routers().front());
    for (const auto& i : all) {
      if (i.router == r) return i;
    }
    throw std::invalid_argument("worker '" + a.kind + "': router '" + r +
                                "' is not one of the run's");
  }
  const int64_t k = a.index(option_of(d.each, d.worker_option), "SLURM_ARRAY_TASK_ID");
  if (k >= int64_t(all.size())) {
    throw std::invalid_argument("worker '" + a.kind + "': index " + std::to_string(k) +
                                " out of range [0, " + std::to_string(all.size()) + ")");
  }
  return all[size_t(k)];
}

}  // namespace detail

// This program's worker kinds, one per declaration with a worker (and a group worker for
// per-domain stages that name one): `reopen` rebuilds the context from a worker's run
// folder, as the driver that started it made it.
template <class Context>
WorkerTable worker_table(const StageGraph<Context>& graph,
                         std::function<Context(const WorkerArgs&)> reopen) {
  WorkerTable t;
  for (const auto& d : graph.declarations()) {
    if (d.worker.empty()) continue;
    std::set<std::string> options;
    if (d.each != Each::once) options.insert(detail::option_of(d.each, d.worker_option));
    t.add(d.worker, options, [d, reopen](const WorkerArgs& a) {
      const Context c = reopen(a);
      auto world = join_world(c.topology);
      d.run(c, detail::instance_of(d, c, a), world);
    });
    if (!d.group_worker.empty()) {
      t.add(d.group_worker, {}, [d, reopen](const WorkerArgs& a) {
        const Context c = reopen(a);
        auto world = join_world(c.topology);
        const auto all = detail::instances_here(d, c);
        std::vector<std::string> names;
        for (const auto& i : all) names.push_back(i.domain.empty() ? i.stage : i.domain);
        auto group = split_expert_groups(world, names);
        d.run(c, all[size_t(group.expert)], group.ranks);
      });
    }
  }
  return t;
}

struct DriverHooks {
  std::function<void(const std::string& phase)> after_phase = {};  // e.g. hand memory back
};

// Runs every phase up to and including `until` (empty: all). Returns false when a worker
// stage failed (each failure reported by run_workers); the finished stages stay finished.
template <class Context>
bool run_graph(const StageGraph<Context>& graph, const Context& c, const WorkerTable& workers,
               const std::string& until = {}, const DriverHooks& hooks = {}) {
  if (!until.empty() &&
      std::find(graph.phases().begin(), graph.phases().end(), until) == graph.phases().end()) {
    throw std::invalid_argument("btx::recipe: no phase '" + until + "'");
  }
  WorkerOptions lanes;
  lanes.max_jobs = c.stage_jobs;
  // Optional members of a context: the threads each worker takes (0: a share of the cores;
  // the user's OMP_NUM_THREADS counts as their choice) and a worker's peak memory estimate.
  if constexpr (requires { c.threads; }) lanes.threads = c.threads;
  if (lanes.threads == 0) {
    if (const auto omp = btx::detail::positive_env("OMP_NUM_THREADS")) lanes.threads = *omp;
  }
  if constexpr (requires { c.worker_bytes; }) lanes.bytes_per_process = c.worker_bytes;
  if constexpr (requires { c.useful_threads; }) lanes.max_threads = c.useful_threads;
  if constexpr (requires { c.max_restarts; }) lanes.max_restarts = c.max_restarts;
  for (const auto& phase : graph.phases()) {
    std::vector<WorkerJob> jobs;
    for (const auto& d : graph.declarations()) {
      if (d.phase != phase || !d.run || !c.selection()(d)) continue;
      const auto all = detail::instances_here(d, c);
      if (d.worker.empty()) {
        for (const auto& i : all) {
          auto one = dist::Communicator::connect(dist::DistEnv{}, c.topology.timeout());
          d.run(c, i, one);
        }
        continue;
      }
      const int64_t ranks = d.ranks == Ranks::expert  ? c.topology.ranks_per_expert
                            : d.ranks == Ranks::stage ? c.topology.ranks_per_stage
                                                      : 1;
      if (!d.group_worker.empty() && c.topology.expert_worlds == ExpertWorlds::shared) {
        auto job = workers.job(c.run, d.worker + "-groups", d.group_worker);
        job.ranks = ranks * int64_t(all.size());
        for (const auto& i : all) job.finishes.push_back(i.stage);
        jobs.push_back(std::move(job));
        continue;
      }
      for (const auto& i : all) {
        std::map<std::string, std::string> options;
        if (d.each == Each::domain) {
          options[detail::option_of(d.each, d.worker_option)] = std::to_string(i.index);
        }
        if (d.each == Each::router) options[detail::option_of(d.each, d.worker_option)] = i.router;
        auto job = workers.job(c.run, i.stage, d.worker, options);
        job.ranks = ranks;
        jobs.push_back(std::move(job));
      }
    }
    if (!jobs.empty() && !run_workers(c.run, jobs, lanes).ok()) return false;
    if (hooks.after_phase) hooks.after_phase(phase);
    if (phase == until) break;
  }
  return true;
}

// Every stage in this process, phase by phase (worker stages too, on one process).
template <class Context>
void run_in_process(const StageGraph<Context>& graph, const Context& c) {
  for (const auto& phase : graph.phases()) {
    for (const auto& d : graph.declarations()) {
      if (d.phase != phase || !d.run || !c.selection()(d)) continue;
      for (const auto& i : detail::instances_here(d, c)) {
        auto one = dist::Communicator::connect(dist::DistEnv{}, c.topology.timeout());
        d.run(c, i, one);
      }
    }
  }
}

}  // namespace recipe
BTX_NAMESPACE_END
}  // namespace btx
