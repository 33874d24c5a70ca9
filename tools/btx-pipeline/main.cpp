// SPDX-License-Identifier: MIT
// build/bin/btx-pipeline [CONFIG.yaml|json] [--quick] [--run-dir DIR] [--until STAGE]
// The Branch-Train-MiX pipeline end to end, with its baselines at equal compute and a
// report. Run with --help for everything; README.md shows a measured default run.
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

#include <btx/models/auto.hpp>
#include <btx/moe/router_registry.hpp>
#include <btx/recipe/baselines.hpp>
#include <btx/recipe/branch.hpp>
#include <btx/recipe/finetune.hpp>
#include <btx/recipe/mix.hpp>
#include <btx/recipe/topology.hpp>
#include <btx/recipe/train_stage.hpp>
#include <btx/recipe/worker_dispatch.hpp>
#include <btx/recipe/workers.hpp>

#include "../common/cli.hpp"
#include "../common/yaml_json.hpp"
#include "config.hpp"
#include "corpus.hpp"
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
prose (/usr/share/common-licenses and quotations from the `fortunes` package in
/usr/share/games/fortunes) -- each split into train and held-out documents (see
<run>/manifest.json). --quick is a smaller preset
(about a minute). Stages, each in <run>/<stage>/ and skipped when already finished:
  seed        pretrain on the mixture of all domains (or load seed_checkpoint: an HF
              checkpoint of any family btx knows, e.g. Llama)
  branch      one copy of the seed per domain; records each expert's lineage (--until seed
              stops here, ready for `--worker expert` jobs, e.g. slurm/experts.sbatch)
  expert-D    one expert per domain, trained from its copy, each in its own OS process
  mix         FFNs -> experts (plus the seed as generalist), the rest averaged, new routers
  btx-R       MoE finetune on the mixture with router R (load balancing alpha 0.01)
  dense, upcycle, btm-merge   baselines at BTX's total compute (seed excluded)
  eval        held-out loss per domain, math exact match, routing analysis -> report.md

CONFIG (YAML or JSON) overrides any of these keys (unknown keys are errors):
  run_dir, seed, seq_len, batch_size, log_every
  curve_every (20; quick: 10), curve_windows (16; quick: 4): learning curves, the held-out
    loss of every training stage every curve_every steps (a multiple of log_every; 0: off)
    on the first curve_windows held-out windows per domain, plotted against training FLOPs
  sweep: {axis: LABEL, variants: [{name, x, KEY: VALUE...}]}: run every variant (this file
    with the variant's keys applied; with its repeats) in <run>/<name>/ and report them side
    by side in <run>/report.md with a plot against x (tools/btx-pipeline/sweep.hpp); or a
    list of such sweeps, each with a name (its folder <run>/<name>/), run one after the other
    with one report of all (tools/btx-pipeline/presets/sweeps.yaml: the faithful-miniature preset);
    a stage that a variant would train exactly as an earlier one did is taken over from it
  moe_share (0.23, the paper's; quick: 0): the MoE stage's share of BTX's compute after the
    seed; in (0, 1) it sets finetune_stage.steps from the experts' planned compute (0: the
    steps as given)
  repeats (1): run the whole pipeline with seeds seed .. seed+repeats-1, each in
    <run>/seed-<s>/, and report every model's mean and spread over them in <run>/report.md
    (an ordering is stated only where the per-seed gaps' 95% interval excludes zero);
    each repeat (and each sweep variant) is a run folder of its own: point workers there
  model: {hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
          num_key_value_heads, head_dim, rope_theta, rms_norm_eps,
          max_position_embeddings, tie_word_embeddings, vocab_size}
  domains: [{name, paths: [files or dirs], extensions: [.h], recursive,
             generator: arithmetic, token_file: train.bin, eval_token_file: val.bin,
             token_dtype: uint16|uint32, max_train_tokens, max_eval_tokens, eval_every}]
  seed_checkpoint: HF checkpoint folder
  seed_stage/expert_stage/finetune_stage: {steps, lr, warmup} (default: seed 1000 steps at
    3e-3; experts 150 at 1e-3; MoE stage at 3e-4, its steps from moe_share)
  router: a router name (see Routers below)    extra_routers: [more routers to compare]
  load_balance_alpha (0.01), load_balance_form: btx|switch, seed_as_expert (true),
  freeze_experts (false): BTX's MoE stage trains the routers and the trunk, not the experts
    (FLOPs still counted as for a full backward),
  seed_as_shared_expert (false; a Qwen2 seed: its FFN as the MoE's always-on shared expert),
  router_init: normal|zero|hidden, experts_from: btx|blend|split (the paper's Table 5:
  blend: expert n holds chunk n of every domain's FFN; split: each FFN cut into
  split_chunks (2) experts, e.g. router top2 or topk:4 of 8), averaging: uniform|task_arithmetic|ties|dare_linear|
  dare_ties (shared tensors, against the seed; averaging_density, averaging_lambda),
  baselines (true), eval_windows, math_problems, sample_prompts, sample_tokens
  checkpoint_every (50; quick: 10): every training stage checkpoints into
    <run>/<stage>/checkpoints/ and a rerun resumes from there (0: no checkpoints)
  stage_jobs (0): stages trained at once (0: every expert at once, then the MoE stages and
    baselines at once); 2 or 1 where they do not all fit in memory (each of N lanes runs
    its stages one after another)
  device: cpu | cuda | cuda:N (cpu), precision: fp32 | bf16-mixed | bf16 (fp32): where and
    how every stage trains and the report evaluates (bf16-mixed: fp32 weights and AdamW
    state, bf16 matmuls; bf16: bf16 weights and state); a device this machine lacks is an
    error before any work
  ranks_per_expert (1): each expert trains data-parallel on a group of this many ranks;
    expert_worlds: per_expert (one job per expert) | shared (one world split into groups)
  ranks_per_stage (1): ranks of each synchronous stage (btx-R finetune, dense, upcycle)
  dist_timeout_s (60): rendezvous and collective timeout; a lost rank fails its job only
  fail_expert, fail_step, fail_rank (0), fail_signal: abort|kill: fault injection (rank
    fail_rank of expert fail_expert's job aborts or SIGKILLs itself before step fail_step)
  allow_non_finite (false): load a seed_checkpoint or stage model holding NaN or Inf
    (refused by default, naming tensor, file and index)
  A run folder has one driver and each stage one writer at a time (a second is refused
    naming the holder); a finished stage whose model files changed is redone
Token files follow nanoGPT: flat little-endian uint16 (or uint32) ids; the model's
vocab_size must cover them.
tokenizer: auto | sentencepiece | seed | bytes (auto): how text becomes ids. sentencepiece trains
  a BPE SentencePiece model of tokenizer_vocab_size pieces (2048; quick: 512; byte
  fallback, whitespace kept) on the train split of every domain into <run>/tokenizer/ and
  writes it (tokenizer.model + tokenizer_config.json, a LlamaTokenizer) into every stage's
  checkpoint, so transformers' AutoTokenizer reads any of them; the model's vocab_size is
  the tokenizer's. seed: seed_checkpoint's own tokenizer (tokenizer.json through Python's
  `tokenizers`, $BTX_PYTHON; else tokenizer.model), text encoded without special tokens.
  bytes: one id per byte (vocab 256). auto: seed when seed_checkpoint has a tokenizer,
  bytes when a token_file domain or a seed without one brings the ids, else sentencepiece.
sample_prompts ([]), sample_tokens (32): the report shows every model's greedy
  continuation of each prompt (sample_tokens new tokens).
)";

struct Args {
  std::string config_file, run_dir, until;
  bool quick = false;
  bool check = false;
};

std::string routers_help() {
  std::string out = "Routers (router, extra_routers, --router):\n";
  for (const auto& r : btx::router_registry().all()) {
    char line[256];
    std::snprintf(line, sizeof line, "  %-12s %s\n", r->name().c_str(), r->spec().describe.c_str());
    out += line;
  }
  return out;
}

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

// (a) the seed: pretrained on the mixture, or seed_checkpoint (any registered family).
CausalLM seed_stage(const bp::PipelineRun& p) {
  if (p.config.seed_checkpoint.empty()) {
    CausalLM seed = recipe::make_stage_model(p.seed_spec);
    recipe::StageOptions options;
    options.hooks = btx::placed(bp::placement(p.config));
    recipe::train_stage(p.run, "seed", seed, p.mixture_sampler(0), p.config.seed_stage,
                        p.with_curves(options));
    seed.module().to(torch::kCPU);  // Branch and MiX work on the CPU, from the checkpoints
    return seed;
  }
  if (p.run.skip_if_done("seed")) return recipe::load_stage_model(p.run, "seed");
  CausalLM seed = btx::load_causal_lm(p.config.seed_checkpoint, torch::kFloat32, {}, torch::kCPU,
                                      p.run.non_finite());
  recipe::finish_stage(
      p.run, "seed", seed,
      {{"source", p.config.seed_checkpoint}, {"flops", 0.0}, {"tokens", 0}, {"seconds", 0.0}});
  return seed;
}

// ------------------------------------------------ the worker kinds (one process each)
// The training hooks of a stage on this process's world (data-parallel when the launcher
// started several ranks), on the configured device and precision.
recipe::StageOptions on_ranks(const bp::PipelineRun& p, btx::dist::Communicator& ranks) {
  recipe::StageOptions options;
  options.hooks = recipe::stage_hooks(ranks, btx::placed(bp::placement(p.config)));
  options.record["ranks"] = ranks.size();  // stage.json says how it was trained
  return p.with_curves(options);
}

// (c) expert I, trained from its branch of the seed on `ranks` (its group); fault injection
// for the isolation tests.
void train_expert_on(const bp::PipelineRun& p, int64_t i, btx::dist::Communicator& ranks) {
  if (i >= int64_t(p.corpus.domains.size())) {
    throw std::invalid_argument("expert index " + std::to_string(i) + " out of range [0, " +
                                std::to_string(p.corpus.domains.size()) + ")");
  }
  if (!p.run.done(recipe::kBranchStage)) {
    throw std::runtime_error("the branch stage is not finished in " + p.run.dir().string() +
                             ": run the pipeline with --until seed first");
  }
  const std::string name = p.corpus.domains[size_t(i)].name;
  auto expert = recipe::branched_expert(p.run, recipe::load_stage_model(p.run, "seed"), name);
  recipe::StageOptions options = on_ranks(p, ranks);
  if (p.config.fail_expert == i && p.config.fail_rank == ranks.rank()) {
    options.on_step = [&config = p.config, name](int64_t step) {
      if (step != config.fail_step) return;
      std::fprintf(stderr, "[%s] fault injected at step %lld: %s\n", name.c_str(),
                   static_cast<long long>(step), config.fail_signal.c_str());
      if (config.fail_signal == "kill") std::raise(SIGKILL);
      std::abort();
    };
  }
  recipe::train_expert(p.run, expert, p.domain_sampler(size_t(i), 1 + uint64_t(i)),
                       p.config.expert_stage, options);
}

void expert_worker(const recipe::WorkerArgs& a) {
  const auto p = reopen_run(a.run_dir);
  auto world = recipe::join_world(p.config.topology);
  train_expert_on(p, a.index("expert", "SLURM_ARRAY_TASK_ID"), world);
}

// Every expert in one world, split into a group per expert (ranks never talk across groups).
void experts_worker(const recipe::WorkerArgs& a) {
  const auto p = reopen_run(a.run_dir);
  auto world = recipe::join_world(p.config.topology);
  auto group = recipe::split_expert_groups(world, p.domain_names());
  train_expert_on(p, group.expert, group.ranks);
}

// (e) MoE finetune of the mixed model with router R.
void finetune_worker(const recipe::WorkerArgs& a) {
  const auto p = reopen_run(a.run_dir);
  auto world = recipe::join_world(p.config.topology);
  auto options = on_ranks(p, world);
  options.freeze_experts = p.config.freeze_experts;
  recipe::finetune_mix(p.run, p.moe_options(a.value_or("router", p.config.router)),
                       p.mixture_sampler(100), p.config.finetune_stage, options);
}

// Baseline: dense continued training of the seed on the mixture at BTX's compute.
void dense_worker(const recipe::WorkerArgs& a) {
  const auto p = reopen_run(a.run_dir);
  auto world = recipe::join_world(p.config.topology);
  recipe::dense_baseline(p.run, recipe::load_stage_model(p.run, "seed"), p.mixture_sampler(200),
                         p.config.expert_stage, p.btx_budget_flops(), on_ranks(p, world));
}

// Baseline: sparse upcycling (an MoE of seed copies) finetuned with BTX's whole budget.
void upcycle_worker(const recipe::WorkerArgs& a) {
  const auto p = reopen_run(a.run_dir);
  auto world = recipe::join_world(p.config.topology);
  recipe::upcycle_baseline(p.run, recipe::load_stage_model(p.run, "seed"),
                           p.upcycle_options(p.config.router), p.mixture_sampler(300),
                           p.config.finetune_stage, p.btx_budget_flops(), p.config.seed + 17,
                           on_ranks(p, world));
}

const recipe::WorkerTable& workers() {
  static const recipe::WorkerTable table = [] {
    recipe::WorkerTable t;
    t.add("expert", {"expert"}, expert_worker)
        .add("experts", {}, experts_worker)
        .add("finetune", {"router"}, finetune_worker)
        .add("dense", {}, dense_worker)
        .add("upcycle", {}, upcycle_worker);
    return t;
  }();
  return table;
}

}  // namespace

int write_report(const bp::PipelineRun& p);                  // report_main.cpp
int write_repeats_report(const bp::PipelineConfig& config);  // repeats_report.cpp
std::string write_sweep_report(const bp::PipelineConfig& config,
                               const bp::Sweep& sweep);  // sweep_report.cpp
int write_sweeps_report(const bp::PipelineConfig& config, const std::vector<bp::Sweep>& sweeps);

namespace {

// One run of the whole pipeline in config.run_dir, up to `until` (empty: to the report).
int run_pipeline(const bp::PipelineConfig& config, const std::string& until) {
  // One driver per run folder (a second is refused naming the first's PID and host); the
  // workers it starts claim their stages instead (recipe::Run::claim).
  const auto run_lock = recipe::Run(config.run_dir).lock();
  const auto p = bp::open_run(config);  // every data and config error surfaces here
  // LibTorch seeds its default generator from the OS in C++ (Python seeds it): without a
  // seed of our own, the seed model's init and so every result would differ run to run.
  torch::manual_seed(p.config.seed);
  const auto& run = p.run;
  fs::create_directories(run.dir());
  std::ofstream(run.dir() / "config.json") << bp::to_json(p.config).dump(2) << "\n";
  auto manifest = p.corpus.manifest_json();
  manifest["tokenizer"] = p.tokenizer_manifest;
  manifest["token_files"] = bp::write_corpus_tokens(p);
  std::ofstream(run.dir() / "manifest.json") << manifest.dump(2) << "\n";
  // One thread per process: the stages that run concurrently already fill the cores,
  // and OpenMP's spinning barriers slow to a crawl on a loaded machine.
  torch::set_num_threads(1);

  // (a, b) Branch: the seed, copied once per domain.
  recipe::branch_stage(run, seed_stage(p), p.domain_names());
  release_free_memory();  // the workers below need it more than this waiting driver
  if (until == "seed") return 0;

  // (c) Train: one expert per domain, each on its own ranks, no communication between them.
  const auto& topology = p.config.topology;
  std::vector<recipe::WorkerJob> experts;
  if (topology.expert_worlds == recipe::ExpertWorlds::shared) {
    auto job = workers().job(run, "expert-groups", "experts");
    job.ranks = topology.ranks_per_expert * int64_t(p.corpus.domains.size());
    for (const auto& d : p.corpus.domains) job.finishes.push_back(recipe::expert_stage(d.name));
    experts.push_back(std::move(job));
  } else {
    for (size_t d = 0; d < p.corpus.domains.size(); ++d) {
      auto job = workers().job(run, recipe::expert_stage(p.corpus.domains[d].name), "expert",
                               {{"expert", std::to_string(d)}});
      job.ranks = topology.ranks_per_expert;
      experts.push_back(std::move(job));
    }
  }
  recipe::WorkerOptions at_once;
  at_once.max_jobs = p.config.stage_jobs;
  if (!recipe::run_workers(run, experts, at_once).ok()) return 1;
  if (until == "experts") return 0;

  // (d) MiX: the experts' FFNs (and the seed's) become one MoE; BTM averages them instead.
  {
    const auto trained = recipe::load_experts(run);
    recipe::mix_stage(run, trained, recipe::load_stage_model(run, "seed"), p.mix_options());
    if (p.config.baselines) recipe::btm_merge(run, trained);
  }
  release_free_memory();
  if (until == "mix") return 0;

  // (e) MoE-finetune with each router; the baselines at BTX's compute beside it.
  std::vector<recipe::WorkerJob> finetunes;
  for (const auto& r : p.routers()) {
    finetunes.push_back(workers().job(run, recipe::finetune_stage(r), "finetune", {{"router", r}}));
  }
  if (p.config.baselines) {
    finetunes.push_back(workers().job(run, recipe::kDenseStage, "dense"));
    finetunes.push_back(workers().job(run, recipe::kUpcycleStage, "upcycle"));
  }
  for (auto& job : finetunes) job.ranks = topology.ranks_per_stage;
  if (!recipe::run_workers(run, finetunes, at_once).ok()) return 1;
  if (until == "finetune") return 0;

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

int main(int argc, char** argv) {
  Args a;
  CLI::App app{kAbout, "btx-pipeline"};
  app.footer(std::string(kHelp) + routers_help());
  app.add_option("CONFIG", a.config_file, "YAML or JSON file overriding the default's keys")
      ->check(CLI::ExistingFile);
  app.add_flag("--quick", a.quick, "the smaller preset (about a minute)");
  app.add_flag("--check", a.check,
               "validate the config's keys (every variant of a sweep's) and list the runs it "
               "makes; reads no data, trains nothing");
  auto* run_dir = app.add_option("--run-dir", a.run_dir, "the run's folder (config key run_dir)");
  app.add_option("--until", a.until, "stop after this stage")
      ->check(CLI::IsMember({"seed", "experts", "mix", "finetune"}));
  const btx::tools::WorkerOptions worker_options(app, workers(), run_dir);
  if (const auto status = btx::tools::parse_command_line(app, argc, argv)) return *status;
  try {
    if (const auto worker = worker_options.args(app)) {
      torch::set_num_threads(1);
      workers().run(*worker);
      return 0;
    }
    const auto config = resolve_config(a);
    if (a.check) return check_config(config);
    if (!config.sweep.is_null()) return run_sweep(config, a.until);
    return config.repeats > 1 ? run_repeats(config, a.until) : run_pipeline(config, a.until);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "btx-pipeline: error: %s\n", e.what());
    return 1;
  }
}
