// SPDX-License-Identifier: MIT
// build/bin/btx-pipeline [CONFIG.yaml|json] [--quick] [--run-dir DIR] [--until STAGE]
// The Branch-Train-MiX pipeline end to end, with its baselines at equal compute and a
// report. Run with --help for everything; README.md shows a measured default run.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <btx/moe/router_registry.hpp>
#include <btx/parallel/process_group.hpp>

#include "../common/yaml_json.hpp"
#include "config.hpp"
#include "evaluation.hpp"
#include "report.hpp"
#include "run.hpp"
#include "stages.hpp"

namespace bp = btx::pipeline;
namespace fs = std::filesystem;

namespace {

constexpr const char* kHelp =
    R"(btx-pipeline: Branch-Train-MiX end to end, with baselines at equal compute.

usage: btx-pipeline [CONFIG] [--quick] [--run-dir DIR] [--until STAGE]
       btx-pipeline --worker expert [--expert I] --run-dir DIR   (I defaults to $SLURM_ARRAY_TASK_ID)
       btx-pipeline --worker finetune|dense|upcycle [--router R] --run-dir DIR

With no CONFIG it runs the embedded default: a byte-level Llama (vocab 256, hidden 128,
2 layers, GQA 4:2) and three domains read from this machine -- math (generated arithmetic
with answers), code (/usr/include/*.h), prose (/usr/share/common-licenses) -- each split
into train and held-out documents (see <run>/manifest.json). --quick is a smaller preset
(about a minute). Stages, each in <run>/<stage>/ and skipped when already finished:
  seed        pretrain on the mixture of all domains (or load seed_checkpoint, an HF Llama)
  expert-D    one expert per domain, branched from the seed, each in its own OS process
  mix         FFNs -> experts (plus the seed as generalist), the rest averaged, new routers
  btx-R       MoE finetune on the mixture with router R (load balancing alpha 0.01)
  dense, upcycle, btm-merge   baselines at BTX's total compute (seed excluded)
  eval        held-out loss per domain, math exact match, routing analysis -> report.md

CONFIG (YAML or JSON) overrides any of these keys (unknown keys are errors):
  run_dir, seed, seq_len, batch_size, log_every
  model: {hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
          num_key_value_heads, head_dim, rope_theta, rms_norm_eps,
          max_position_embeddings, tie_word_embeddings, vocab_size}
  domains: [{name, paths: [files or dirs], extensions: [.h], recursive,
             generator: arithmetic, token_file: train.bin, eval_token_file: val.bin,
             token_dtype: uint16|uint32, max_train_tokens, max_eval_tokens, eval_every}]
  seed_checkpoint: HF Llama folder      seed_stage/expert_stage/finetune_stage: {steps, lr, warmup}
  router: a router name (see Routers below)    extra_routers: [more routers to compare]
  load_balance_alpha (0.01), load_balance_form: btx|switch, seed_as_expert (true),
  router_init: normal|zero|hidden, baselines (true), eval_windows, math_problems
  checkpoint_every (50; quick: 10): every training stage checkpoints into
    <run>/<stage>/checkpoints/ and a rerun resumes from there (0: no checkpoints)
  fail_expert, fail_step: fault injection (expert I aborts at step N)
Token files follow nanoGPT: flat little-endian uint16 (or uint32) ids; the model's
vocab_size must cover them. Text is tokenised one byte per token.
)";

struct Args {
  std::string config_file, run_dir, until, worker, router;
  bool quick = false;
  int64_t expert = -1;
};

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument("missing value after " + s);
      return argv[++i];
    };
    if (s == "--help" || s == "-h") {
      std::cout << kHelp << "Routers (router, extra_routers, --router):\n";
      for (const auto& r : btx::router_registry().all())
        std::printf("  %-12s %s\n", r->name().c_str(), r->spec().describe.c_str());
      std::exit(0);
    } else if (s == "--quick") {
      a.quick = true;
    } else if (s == "--run-dir") {
      a.run_dir = value();
    } else if (s == "--until") {
      a.until = value();
    } else if (s == "--worker") {
      a.worker = value();
    } else if (s == "--expert") {
      a.expert = std::stoll(value());
    } else if (s == "--router") {
      a.router = value();
    } else if (!s.empty() && s[0] == '-') {
      throw std::invalid_argument("unknown option " + s + " (see --help)");
    } else if (a.config_file.empty()) {
      a.config_file = s;
    } else {
      throw std::invalid_argument("more than one CONFIG given: " + a.config_file + ", " + s);
    }
  }
  return a;
}

bp::Run open_run(const bp::PipelineConfig& config) {
  bp::Run run{config, fs::absolute(config.run_dir), btx::build_corpus(config.domains)};
  for (size_t d = 0; d < run.corpus.domains.size(); ++d) (void)run.domain_sampler(d, 0);
  if (run.corpus.vocab_size > config.model.vocab_size) {
    throw std::invalid_argument("config: the data has token ids up to " +
                                std::to_string(run.corpus.vocab_size - 1) +
                                " but model.vocab_size=" + std::to_string(config.model.vocab_size));
  }
  for (const auto& r : [&] {
         auto v = config.extra_routers;
         v.push_back(config.router);
         return v;
       }()) {
    (void)run.moe_options(r);
    (void)run.make_moe(r);  // an unknown router or impossible k fails here, before training
  }
  return run;
}

// Workers re-read the resolved config the parent wrote, so all processes agree.
int run_worker(const Args& a) {
  torch::set_num_threads(1);
  if (a.run_dir.empty()) throw std::invalid_argument("--worker needs --run-dir");
  std::ifstream in(fs::path(a.run_dir) / "config.json");
  if (!in)
    throw std::invalid_argument("no config.json in run dir '" + a.run_dir +
                                "': run the pipeline first");
  auto config = bp::apply_config(bp::default_config(), nlohmann::json::parse(in));
  config.run_dir = a.run_dir;
  auto run = open_run(config);
  if (a.worker == "expert") {
    int64_t i = a.expert;
    if (i < 0) {
      const char* task = std::getenv("SLURM_ARRAY_TASK_ID");
      if (task == nullptr)
        throw std::invalid_argument("--worker expert needs --expert I or SLURM_ARRAY_TASK_ID");
      i = std::stoll(task);
    }
    if (i < 0 || i >= int64_t(run.corpus.domains.size())) {
      throw std::invalid_argument("expert index " + std::to_string(i) + " out of range [0, " +
                                  std::to_string(run.corpus.domains.size()) + ")");
    }
    if (!run.done("seed"))
      throw std::runtime_error("the seed stage is not finished in " + a.run_dir);
    bp::run_expert(run, size_t(i));
  } else if (a.worker == "finetune") {
    bp::run_finetune(run, a.router.empty() ? run.config.router : a.router);
  } else if (a.worker == "dense") {
    bp::run_dense(run);
  } else if (a.worker == "upcycle") {
    bp::run_upcycle(run);
  } else {
    throw std::invalid_argument("unknown worker '" + a.worker +
                                "' (expert, finetune, dense, upcycle)");
  }
  return 0;
}

// The last "[stage] step ..." or "[stage] done ..." line of a worker's log, if any.
std::string last_progress_line(const fs::path& log) {
  std::ifstream in(log);
  std::string line, last;
  while (std::getline(in, line)) {
    if (line.size() > 1 && line[0] == '[' &&
        (line.find("] step ") != std::string::npos || line.find("] done ") != std::string::npos)) {
      last = line;
    }
  }
  return last;
}

// Launches one worker process per job; returns false if any failed (others finish).
bool run_workers(const bp::Run& run,
                 const std::vector<std::pair<std::string, std::vector<std::string>>>& jobs) {
  btx::ProcessGroup group;
  const auto exe = btx::self_executable();
  for (const auto& [stage, extra] : jobs) {
    if (run.done(stage)) {
      std::fprintf(stderr, "[pipeline] %s already finished, skipped\n", stage.c_str());
      continue;
    }
    fs::create_directories(run.stage_dir(stage));
    std::vector<std::string> argv{exe};
    argv.insert(argv.end(), extra.begin(), extra.end());
    argv.insert(argv.end(), {"--run-dir", run.dir.string()});
    group.spawn(stage, argv, (run.stage_dir(stage) / "log.txt").string(), {"OMP_NUM_THREADS=1"});
    std::fprintf(stderr, "[pipeline] started %s (log: %s)\n", stage.c_str(),
                 (run.stage_dir(stage) / "log.txt").c_str());
  }
  // Relay each worker's newest progress line to our stderr while they run.
  std::map<std::string, std::string> shown;
  while (group.running()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    for (const auto& [stage, extra] : jobs) {
      const auto line = last_progress_line(run.stage_dir(stage) / "log.txt");
      if (!line.empty() && shown[stage] != line) {
        std::fprintf(stderr, "%s\n", line.c_str());
        shown[stage] = line;
      }
    }
  }
  bool ok = true;
  for (const auto& outcome : group.wait_all()) {
    if (outcome.ok() && run.done(outcome.name)) {
      std::fprintf(stderr, "[pipeline] %s finished\n", outcome.name.c_str());
    } else {
      ok = false;
      std::fprintf(stderr, "[pipeline] FAILED: %s; see %s. Run the pipeline again to resume.\n",
                   outcome.describe().c_str(), (run.stage_dir(outcome.name) / "log.txt").c_str());
    }
  }
  return ok;
}

}  // namespace

int write_report(const bp::Run& run);  // report_main.cpp

int main(int argc, char** argv) {
  try {
    const Args a = parse_args(argc, argv);
    if (!a.worker.empty()) return run_worker(a);
    auto config = a.quick ? bp::quick_config() : bp::default_config();
    if (!a.config_file.empty())
      config = bp::apply_config(config, btx::tools::load_config_file(a.config_file));
    if (!a.run_dir.empty()) config.run_dir = a.run_dir;
    if (!config.seed_checkpoint.empty()) {
      // The seed defines the architecture; a config btx cannot represent fails here.
      config.model =
          btx::hf::read_config_json(fs::path(config.seed_checkpoint) / "config.json").llama;
    }
    bp::validate(config);
    auto run = open_run(config);  // every data and config error surfaces here
    fs::create_directories(run.dir);
    std::ofstream(run.dir / "config.json") << bp::to_json(config).dump(2) << "\n";
    std::ofstream(run.dir / "manifest.json") << run.corpus.manifest_json().dump(2) << "\n";
    // One thread per process: the stages that run concurrently already fill the cores,
    // and OpenMP's spinning barriers slow to a crawl on a loaded machine.
    torch::set_num_threads(1);
    bp::run_seed(run);
    if (a.until == "seed") return 0;
    std::vector<std::pair<std::string, std::vector<std::string>>> experts;
    for (size_t d = 0; d < run.corpus.domains.size(); ++d) {
      experts.push_back({bp::expert_stage(run.corpus.domains[d].name),
                         {"--worker", "expert", "--expert", std::to_string(d)}});
    }
    if (!run_workers(run, experts)) return 1;
    if (a.until == "experts") return 0;
    bp::run_mix(run);
    if (config.baselines) bp::run_btm_merge(run);
    if (a.until == "mix") return 0;
    std::vector<std::pair<std::string, std::vector<std::string>>> finetunes;
    std::vector<std::string> routers{config.router};
    routers.insert(routers.end(), config.extra_routers.begin(), config.extra_routers.end());
    for (const auto& r : routers)
      finetunes.push_back({bp::finetune_stage(r), {"--worker", "finetune", "--router", r}});
    if (config.baselines) {
      finetunes.push_back({"dense", {"--worker", "dense"}});
      finetunes.push_back({"upcycle", {"--worker", "upcycle"}});
    }
    if (!run_workers(run, finetunes)) return 1;
    if (a.until == "finetune") return 0;
    return write_report(run);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "btx-pipeline: error: %s\n", e.what());
    return 2;
  }
}
