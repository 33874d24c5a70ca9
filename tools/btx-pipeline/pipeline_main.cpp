// SPDX-License-Identifier: MIT
// btx-pipeline [CONFIG.yaml|json] [--quick] [--run-dir DIR] [--until PHASE]: the
// Branch-Train-MiX pipeline end to end, with its baselines at equal compute and a report,
// over the recipe's stage graph (recipe/btx_stages.hpp): its driver, its workers, its
// repeats and sweeps. btx::pipeline::main is the whole program; tools/btx-pipeline/main.cpp
// calls it, and so may a program that first adds an arm to the graph. --help for
// everything; docs/pipeline.md shows a measured default run.
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <torch/torch.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <btx/merge/merge_choice.hpp>
#include <btx/models/auto.hpp>
#include <btx/moe/router_registry.hpp>
#include <btx/parallel/machine_budget.hpp>
#include <btx/recipe/btx_stages.hpp>
#include <btx/recipe/driver.hpp>
#include <btx/recipe/worker_dispatch.hpp>
#include <btx/train/allocator.hpp>

#include "../common/cli.hpp"
#include "../common/yaml_json.hpp"
#include "config.hpp"
#include "pipeline_main.hpp"
#include "pipeline_run.hpp"
#include "sweep.hpp"

namespace bp = btx::pipeline;
namespace fs = std::filesystem;
namespace recipe = btx::recipe;
using btx::CausalLM;

namespace {

constexpr const char* kAbout =
    "btx-pipeline: Branch-Train-MiX end to end, with baselines at equal compute.";

constexpr const char* kHelp =
    R"(Worker command lines (one stage of a run; see the Workers options):
  btx-pipeline --worker expert [--expert I] --run-dir DIR   (I defaults to $SLURM_ARRAY_TASK_ID)
  btx-pipeline --worker experts --run-dir DIR     (one world split into a group per expert)
  btx-pipeline --worker finetune [--router R] --run-dir DIR
  btx-pipeline --worker dense|upcycle --run-dir DIR
A worker started by torchrun or srun joins that job's c10d world (Gloo) and trains its stage
data-parallel over it, e.g. after `btx-pipeline --until mix`:
  torchrun --no-python --nproc-per-node 2 build/bin/btx-pipeline --worker finetune --run-dir DIR

With no CONFIG it runs the embedded default: a Llama (hidden 128, 2 layers, GQA 4:2) with
a SentencePiece tokenizer of 2048 pieces trained on the run's text, and three domains read
from this machine -- math (generated arithmetic with answers), code (/usr/include/*.h),
prose (/usr/share/common-licenses and quotations from the `fortunes` package) -- each split
into train and held-out documents (<run>/manifest.json). --quick: a smaller preset (about
a minute). Each stage is a folder <run>/<stage>/, skipped when already finished; the
report (<run>/report.md) scores every arm of the recipe at equal compute after the seed.
)";

// The stages and arms of the recipe's graph, the config keys (with the default's values)
// and every registry's entries: --help, generated from what the program runs.
std::string help_text() {
  std::string out = kHelp;
  out += "\nStages, phase by phase (--until PHASE stops after one):\n";
  for (const auto& phase : recipe::btx_graph().phases()) {
    out += "  " + phase + ":";
    for (const auto& d : recipe::btx_graph().declarations()) {
      if (d.phase == phase && d.run) out += " " + d.name;
    }
    out += "\n";
  }
  out += "Arms of the report:";
  for (const auto& d : recipe::btx_graph().declarations()) {
    if (!d.arm) continue;
    out += " " + d.arm->label + (d.baseline ? " (baseline)" : "") +
           (d.option.empty() ? "" : " (arms: " + d.option + ")") + ";";
  }
  out += "\nOptional arms (arms: [NAME] or {NAME: {options}}):\n";
  for (const auto& o : recipe::btx_graph().options()) {
    out += "  " + o.name + ": " + o.describe + "\n" + o.options.help;
  }
  out += "\n\nCONFIG keys (YAML or JSON; unknown keys are errors; the default's values):\n" +
         bp::pipeline_schema().help(bp::default_config());
  out += "\nRouters (router, extra_routers, --router; router_options: the router's own):\n" +
         btx::routers_help();
  out += "\nMerge methods (experts_from):\n" + btx::merge::methods().help() +
         "Averagings (averaging; options as averaging_<option>):\n" +
         btx::merge::averagings().help() + "Router inits (router_init; router_init_<option>):\n" +
         btx::merge::router_inits().help();
  return out;
}

struct Args {
  std::string config_file, run_dir, until;
  bool quick = false;
  bool check = false;
};

bp::PipelineConfig resolve_config(const Args& a) {
  auto config = a.quick ? bp::quick_config() : bp::default_config();
  if (!a.config_file.empty())
    config = bp::apply_config(config, btx::tools::load_config_file(a.config_file));
  if (!a.run_dir.empty()) config.run_dir = a.run_dir;
  return config;
}

// Workers re-read the resolved config the parent wrote, so all processes agree.
bp::PipelineRun reopen_run(const fs::path& run_dir) {
  std::ifstream in(run_dir / "config.json");
  if (!in) {
    throw std::invalid_argument("no config.json in run dir '" + run_dir.string() +
                                "': run the pipeline first");
  }
  auto config = bp::apply_config(bp::default_config(), nlohmann::json::parse(in));
  config.run_dir = run_dir.string();
  torch::manual_seed(config.seed);  // as the parent does (see main)
  return bp::open_run(config);
}

// Hands the heap's free pages back to the system: the driver waits while its workers train,
// and with a 135M-parameter seed it had kept ~4.6 GB of freed model copies from the seed,
// branch and mix stages, which the MoE-stage workers (7 GB each) need.
void release_free_memory() {
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

// Workers re-read the run's recorded config, so every process agrees.
recipe::Recipe reopen_recipe(const recipe::WorkerArgs& a) {
  return reopen_run(a.run_dir).recipe;
}

const recipe::WorkerTable& workers() {
  static const recipe::WorkerTable table =
      recipe::worker_table<recipe::Recipe>(recipe::btx_graph(), reopen_recipe);
  return table;
}

}  // namespace

int write_report(const bp::PipelineRun& p);                  // report_main.cpp
int write_repeats_report(const bp::PipelineConfig& config);  // repeats_report.cpp
std::string write_sweep_report(const bp::PipelineConfig& config,
                               const bp::Sweep& sweep);  // sweep_report.cpp
int write_sweeps_report(const bp::PipelineConfig& config, const std::vector<bp::Sweep>& sweeps);

namespace {

// One run of the whole pipeline in config.run_dir, up to phase `until` (empty: to the report).
int run_pipeline(const bp::PipelineConfig& config, const std::string& until) {
  // One driver per run folder (a second is refused naming the first's PID and host); the
  // workers it starts claim their stages instead (recipe::Run::claim).
  const auto run_lock = recipe::Run(config.run_dir).lock();
  const auto p = bp::open_run(config);  // every data and config error surfaces here
  // LibTorch seeds its default generator from the OS in C++ (Python seeds it): without a
  // seed of our own, the seed model's init and so every result would differ run to run.
  torch::manual_seed(p.config.seed);
  const auto& run = p.run();
  fs::create_directories(run.dir());
  std::ofstream(run.dir() / "config.json") << bp::to_json(p.config).dump(2) << "\n";
  auto manifest = p.corpus.manifest_json();
  manifest["tokenizer"] = p.tokenizer_manifest;
  manifest["token_files"] = bp::write_corpus_tokens(p);
  std::ofstream(run.dir() / "manifest.json") << manifest.dump(2) << "\n";
  // The stages this process runs itself (the seed, the mix, evaluation) run while no worker
  // does: they take every core it may use; workers get their share from run_workers.
  auto threads = btx::process_threads(p.config.threads);
  if (!threads.chosen && threads.threads > p.recipe.useful_threads) {
    threads = {p.recipe.useful_threads, "as many as a step of this model uses well"};
  }
  btx::use_threads(threads.threads);
  (void)btx::keep_freed_memory();  // each step reuses the last one's blocks
  const auto device = bp::placement(p.config).device;
  run.log("this process: " + btx::describe(threads) + "; precision " +
          btx::resolve_precision(p.config.precision, device).why);

  // Every phase of the graph: the seed and Branch here, the experts (each its own job, no
  // communication), MiX and BTM's merge here, the MoE stages and baselines as jobs.
  recipe::DriverHooks hooks;
  hooks.after_phase = [](const std::string&) { release_free_memory(); };
  if (!recipe::run_graph(recipe::btx_graph(), p.recipe, workers(), until, hooks)) return 1;
  if (!until.empty()) return 0;

  // (f) Evaluation and the report.
  return write_report(p);
}

// `repeats` runs of the pipeline, seeds seed, seed+1, ..., each a complete run of its own in
// <run>/seed-<s>/ (resumable like any run), then the report of means and spreads.
int run_repeats(const bp::PipelineConfig& config, const std::string& until) {
  const auto run_lock = recipe::Run(config.run_dir).lock();
  const auto runs = bp::runs_of(config);
  for (size_t k = 0; k < runs.size(); ++k) {
    std::fprintf(stderr, "[pipeline] repeat %zu of %zu: seed %llu in %s\n", k + 1, runs.size(),
                 static_cast<unsigned long long>(runs[k].seed), runs[k].run_dir.c_str());
    if (const int rc = run_pipeline(runs[k], until)) return rc;
  }
  if (!until.empty()) return 0;
  std::ofstream(fs::path(config.run_dir) / "config.json") << bp::to_json(config).dump(2) << "\n";
  return write_repeats_report(config);
}

// Every variant of the config's sweeps (each with its repeats) in its folder, then the
// report across them. Every variant is validated before the first trains.
int run_sweep(const bp::PipelineConfig& config, const std::string& until) {
  const auto run_lock = recipe::Run(config.run_dir).lock();
  const auto sweeps = bp::sweeps_of(config);
  std::vector<bp::PipelineConfig> earlier;  // every variant run so far, of every sweep
  for (const auto& sweep : sweeps) {
    for (const auto& v : sweep.variants) {
      std::fprintf(stderr, "[pipeline] sweep %s variant %s (%s = %g) in %s\n", sweep.name.c_str(),
                   v.name.c_str(), sweep.axis.c_str(), v.x, v.config.run_dir.c_str());
      // Stages an earlier variant already trained with the same upstream config are shared.
      const auto now = bp::runs_of(v.config);
      for (const auto& e : earlier) {
        const auto before = bp::runs_of(e);
        for (size_t r = 0; r < std::min(now.size(), before.size()); ++r) {
          bp::adopt_upstream(before[r], now[r]);
        }
      }
      const int rc =
          v.config.repeats > 1 ? run_repeats(v.config, until) : run_pipeline(v.config, until);
      if (rc != 0) return rc;
      earlier.push_back(v.config);
    }
  }
  if (!until.empty()) return 0;
  std::ofstream(fs::path(config.run_dir) / "config.json") << bp::to_json(config).dump(2) << "\n";
  if (config.sweep.is_array()) return write_sweeps_report(config, sweeps);
  write_sweep_report(config, sweeps.front());
  return 0;
}

// --check: the config's keys validated (every variant of a sweep's) and the runs it would
// make listed, without reading any data or training.
int check_config(const bp::PipelineConfig& config) {
  std::vector<std::pair<std::string, bp::PipelineConfig>> runs;
  if (config.sweep.is_null()) {
    bp::validate(config, bp::seed_spec_of(config).shape);
    runs.emplace_back("", config);
  } else {
    for (const auto& sweep : bp::sweeps_of(config)) {
      for (const auto& v : sweep.variants) {
        runs.emplace_back((sweep.name.empty() ? "" : sweep.name + "/") + v.name, v.config);
      }
    }
  }
  size_t total = 0;
  for (const auto& [name, c] : runs) {
    const auto each = bp::runs_of(c);
    total += each.size();
    std::printf("%s%s: %zu run%s in %s\n", name.c_str(), name.empty() ? "config" : "", each.size(),
                each.size() == 1 ? "" : "s", c.run_dir.c_str());
  }
  std::printf("config OK: %zu run%s\n", total, total == 1 ? "" : "s");
  return 0;
}

}  // namespace

namespace btx::pipeline {

int main(int argc, char** argv) {
  Args a;
  CLI::App app{kAbout, "btx-pipeline"};
  app.footer(help_text());
  app.add_option("CONFIG", a.config_file, "YAML or JSON file overriding the default's keys")
      ->check(CLI::ExistingFile);
  app.add_flag("--quick", a.quick, "the smaller preset (about a minute)");
  app.add_flag("--check", a.check,
               "validate the config's keys (every variant of a sweep's) and list the runs it "
               "makes; reads no data, trains nothing");
  auto* run_dir = app.add_option("--run-dir", a.run_dir, "the run's folder (config key run_dir)");
  app.add_option("--until", a.until, "stop after this phase")
      ->check(CLI::IsMember(recipe::btx_graph().phases()));
  const btx::tools::WorkerOptions worker_options(app, workers(), run_dir);
  if (const auto status = btx::tools::parse_command_line(app, argc, argv)) return *status;
  try {
    if (const auto worker = worker_options.args(app)) {
      // Its driver's share of the cores (BTX_THREADS), or under Slurm its task's CPUs.
      btx::use_threads(btx::process_threads().threads);
      (void)btx::keep_freed_memory();
      workers().run(*worker);
      return 0;
    }
    const auto config = resolve_config(a);
    bp::refuse_run_dir_over_inputs(config);  // before the run's lock exists
    if (a.check) return check_config(config);
    if (!config.sweep.is_null()) return run_sweep(config, a.until);
    return config.repeats > 1 ? run_repeats(config, a.until) : run_pipeline(config, a.until);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "btx-pipeline: error: %s\n", e.what());
    return 1;
  }
}

}  // namespace btx::pipeline
