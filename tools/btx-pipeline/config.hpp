// SPDX-License-Identifier: MIT
// btx-pipeline's configuration: the embedded default (a real multi-domain corpus found on
// a stock Debian machine + generated arithmetic), the --quick preset used by the tests,
// and every key a user's YAML or JSON may set, declared once in pipeline_schema(): reading
// (unknown keys and wrong types refused, naming them), config.json and --help all come from
// it. The router's own options are its registration's (router_options); experts_from,
// averaging and router_init are the merge registries' names, their options theirs.
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/core/model_spec.hpp>
#include <btx/core/schema.hpp>
#include <btx/data/corpus.hpp>
#include <btx/merge/merge_choice.hpp>
#include <btx/models/common/decoder_config.hpp>
#include <btx/moe/router_registry.hpp>
#include <btx/recipe/run.hpp>
#include <btx/recipe/topology.hpp>
#include <btx/recipe/train_stage.hpp>
#include <btx/train/precision.hpp>

namespace btx::pipeline {

using recipe::StageBudget;

// The pipeline's merge keys: experts_from (the method), averaging and router_init, and
// their options under the pipeline's names.
inline merge::MergeKeys mix_keys() {
  merge::MergeKeys k;
  k.method = "experts_from";
  k.averaging = "averaging";
  k.router_init = "router_init";
  k.options = {{"chunks", "split_chunks"},         {"rescale_down", "split_rescale_down"},
               {"density", "averaging_density"},   {"lambda", "averaging_lambda"},
               {"weights", "averaging_weights"},   {"std", "router_init_std"},
               {"scale", "router_init_scale"},     {"normalize", "router_init_normalize"},
               {"noise_std", "upcycle_noise_std"}, {"noise_seed", "upcycle_noise_seed"}};
  return k;
}

struct PipelineConfig {
  std::string run_dir = "runs/default";
  uint64_t seed = 0;
  // The whole pipeline this many times, with seeds seed, seed+1, ... (each in
  // <run>/seed-<s>/), and a report of every arm's mean and spread over them.
  int64_t repeats = 1;
  // Variants of this config, each run (with its repeats) in <run>/<name>/, and one report
  // across them: {axis: label, variants: [{name, x, <any keys of this config>}]}
  // (tools/btx-pipeline/sweep.hpp). Null: no sweep.
  nlohmann::json sweep;
  DecoderConfig model;  // the demo seed's architecture (a Llama; ignored with seed_checkpoint)
  int64_t seq_len = 128;
  int64_t batch_size = 16;
  std::vector<DomainSpec> domains;
  // How text becomes ids: sentencepiece (a tokenizer trained on the training text, written
  // into every checkpoint), seed (seed_checkpoint's own tokenizer.json or tokenizer.model),
  // bytes (one id per byte), or auto: seed when seed_checkpoint has a tokenizer, bytes when
  // it has none or a token_file domain brings its own ids, else sentencepiece.
  std::string tokenizer = "auto";
  int64_t tokenizer_vocab_size = 2048;  // sentencepiece: pieces (the model's vocab_size)
  std::string seed_checkpoint;  // HF checkpoint of any registered family; empty: pretrain a seed
  // Experts the user already has (dense finetunes of seed_checkpoint), taken instead of
  // training those domains' experts; their cost is unknown (0) unless `flops` gives it.
  struct ExpertSource {
    std::string domain, checkpoint;
    std::optional<double> flops;
  };
  std::vector<ExpertSource> experts;
  StageBudget seed_stage{400, 3e-3, 20};
  StageBudget expert_stage{300, 2e-3, 10};
  StageBudget finetune_stage{100, 1e-3, 10};
  // The MoE stage's share of BTX's compute after the seed (the paper: 23%): when in (0, 1),
  // finetune_stage.steps is derived from the experts' planned compute. 0: steps as given.
  double moe_share = 0.0;
  RouterChoice router = resolve_router("top2");  // BTX's router, with its own options
  std::vector<std::string> extra_routers;        // also finetune these (switch, sample_top1, soft)
  double load_balance_alpha = 0.01;
  bool freeze_experts = false;            // BTX's MoE stage trains routers and trunk only (Table 5)
  std::string load_balance_form = "btx";  // btx | switch
  bool seed_as_expert = true;             // the paper's generalist expert
  bool seed_as_shared_expert = false;     // or, in a Qwen2 seed's MoE, its shared expert
  // How MiX makes experts (experts_from: btx | blend | split, the paper's Table 5), averages
  // the rest (averaging) and starts the routers (router_init), each with its own options.
  merge::MergeChoice mix = merge::read_merge_choice(nlohmann::json::object(), mix_keys());
  bool baselines = true;  // dense, BTM merge/ensemble, sparse upcycling
  // Optional arms of the recipe's graph to run too, each with its options resolved
  // (`arms: [flexolmo, bam]` or `arms: {flexolmo: {trains: ffn}}`).
  std::map<std::string, nlohmann::json> arms;
  int64_t eval_windows = 48;
  int64_t math_problems = 100;
  // Generation samples in the report: every model's greedy continuation of each prompt.
  std::vector<std::string> sample_prompts;
  int64_t sample_tokens = 32;
  int64_t log_every = 20;
  // Learning curves: held-out loss every curve_every steps of every training stage (a
  // multiple of log_every; 0: none) on the first curve_windows held-out windows per domain.
  int64_t curve_every = 20;
  int64_t curve_windows = 16;
  int64_t checkpoint_every = 50;  // training checkpoints per stage (0: none); reruns resume
  int64_t stage_jobs = 0;     // stages trained at once in lanes (0: planned by cores and memory)
  int64_t threads = 0;        // threads per process (0: OMP_NUM_THREADS, else a share of the cores)
  int64_t max_restarts = 0;   // a failed worker job runs again this many times, resuming
  recipe::Topology topology;  // ranks per expert and per synchronous stage
  std::string device = "cpu";         // where the stages train and evaluate: cpu, cuda, cuda:N
  std::string precision = "fp32";     // fp32 | bf16-mixed | bf16 | auto
  int64_t fail_expert = -1;           // fault injection: this expert index ...
  int64_t fail_step = -1;             // ... aborts at this step (tests of isolated failures)
  int64_t fail_rank = 0;              // ... on this rank of its group ...
  std::string fail_signal = "abort";  // ... by abort() or by SIGKILL ("kill")
  bool allow_non_finite = false;      // load seed/stage checkpoints holding NaN or Inf
};

// A stock Debian machine's real text: C headers (libc6-dev) as code; English licence texts
// (base-files) and quotations from literature, science and daily life (the `fortunes`
// package, which quickstart installs) as prose; plus generated arithmetic.
inline std::vector<DomainSpec> default_domains(int64_t train_tokens, int64_t eval_tokens) {
  return {
      {.name = "math",
       .generator = "arithmetic",
       .max_train_tokens = train_tokens,
       .max_eval_tokens = eval_tokens},
      {.name = "code",
       .paths = {"/usr/include"},
       .extensions = {".h"},
       .max_train_tokens = train_tokens,
       .max_eval_tokens = eval_tokens},
      {.name = "prose",
       .paths = {"/usr/share/common-licenses", "/usr/share/games/fortunes/literature",
                 "/usr/share/games/fortunes/wisdom", "/usr/share/games/fortunes/people",
                 "/usr/share/games/fortunes/science", "/usr/share/games/fortunes/education",
                 "/usr/share/games/fortunes/humorists", "/usr/share/games/fortunes/work",
                 "/usr/share/games/fortunes/love", "/usr/share/games/fortunes/platitudes"},
       .max_train_tokens = train_tokens,
       .max_eval_tokens = eval_tokens,
       .eval_every = 5},
  };
}

inline PipelineConfig default_config() {
  PipelineConfig c;
  c.model.vocab_size = 256;
  c.model.hidden_size = 128;
  c.model.intermediate_size = 352;
  c.model.num_hidden_layers = 2;
  c.model.num_attention_heads = 4;
  c.model.num_key_value_heads = 2;
  c.model.max_position_embeddings = 512;
  c.domains = default_domains(1 << 20, 1 << 15);
  // The paper's regime in miniature (issue 16's sweeps, presets/sweeps.yaml): a seed
  // trained well beyond each expert (the paper: 2T tokens against 42-210B per expert; here
  // nearly 7x each expert's steps), experts at a third of the seed's peak LR (the paper:
  // 1e-4 after Llama-2's 3e-4), the MoE stage lower still (a tenth: the sweep's MoE-stage LR
  // 1e-4 beat 1e-3 and 3e-3; sparse upcycling trains at this LR too, so not lower), and 23%
  // of BTX's compute after the seed in the MoE stage.
  c.seed_stage = {1000, 3e-3, 20};
  c.expert_stage = {150, 1e-3, 10};
  c.finetune_stage = {100, 3e-4, 10};  // steps: from moe_share
  c.moe_share = 0.23;
  return c;
}

// Small enough for the test suite (about a minute on two cores).
inline PipelineConfig quick_config() {
  PipelineConfig c = default_config();
  c.run_dir = "runs/quick";
  c.model.hidden_size = 64;
  c.model.intermediate_size = 128;
  c.seq_len = 64;
  c.batch_size = 8;
  c.domains = default_domains(1 << 17, 1 << 13);
  c.tokenizer_vocab_size = 512;
  c.seed_stage = {60, 3e-3, 5};
  c.expert_stage = {40, 2e-3, 5};
  c.finetune_stage = {20, 1e-3, 5};
  c.moe_share = 0.0;  // the steps as given
  c.eval_windows = 8;
  c.math_problems = 20;
  c.log_every = 10;
  c.curve_every = 10;
  c.curve_windows = 4;
  c.checkpoint_every = 10;
  return c;
}

// Whether seed_checkpoint has a tokenizer of its own.
inline bool seed_has_tokenizer(const PipelineConfig& c) {
  const std::filesystem::path seed = c.seed_checkpoint;
  return !c.seed_checkpoint.empty() && (std::filesystem::exists(seed / "tokenizer.json") ||
                                        std::filesystem::exists(seed / "tokenizer.model"));
}
// Whether text is tokenised by seed_checkpoint's own tokenizer (tokenizer: seed, or auto
// with a seed that has one).
inline bool uses_seed_tokenizer(const PipelineConfig& c) {
  if (c.tokenizer == "seed") return true;
  if (c.tokenizer != "auto" || !seed_has_tokenizer(c)) return false;
  for (const auto& d : c.domains)
    if (!d.token_file.empty()) return false;
  return true;
}
// Whether text is tokenised by a SentencePiece model trained for the run (config key
// tokenizer; auto: unless a seed checkpoint or token files bring their own ids).
inline bool uses_sentencepiece(const PipelineConfig& c) {
  if (c.tokenizer == "sentencepiece") return true;
  if (c.tokenizer == "bytes") return false;
  if (!c.seed_checkpoint.empty()) return false;
  for (const auto& d : c.domains)
    if (!d.token_file.empty()) return false;
  return true;
}

// Every key of a pipeline config, declared once (config_schema.hpp).
const schema::Schema<PipelineConfig>& pipeline_schema();

// Overlays a parsed YAML/JSON document on `base` (default or quick).
inline PipelineConfig apply_config(PipelineConfig c, const nlohmann::json& j) {
  return pipeline_schema().read(j, std::move(c), "");
}

// The config as config.json records it (and apply_config reads it back).
inline nlohmann::json to_json(const PipelineConfig& c) {
  return pipeline_schema().write(c);
}

// Where and in what precision the stages train and evaluate (checked against this machine).
inline Placement placement(const PipelineConfig& c) {
  try {
    const auto device = parse_device(c.device);
    return {device, resolve_precision(c.precision, device).precision};
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string("config: ") + e.what());
  }
}

// What the keys alone cannot check: their combinations, against the seed's shape
// (config.model's, or seed_checkpoint's).
void validate(const PipelineConfig& c, const ArchShape& seed);

// Repeat k of a run of `repeats`: seed + k, in <run>/seed-<seed + k>/, a run of its own.
inline PipelineConfig repeat_config(const PipelineConfig& c, int64_t k) {
  PipelineConfig one = c;
  one.repeats = 1;
  one.seed = c.seed + uint64_t(k);
  one.run_dir = (std::filesystem::path(c.run_dir) / ("seed-" + std::to_string(one.seed))).string();
  return one;
}

// The runs a config makes: itself, or one per repeat (seed + k, in <run>/seed-<s>/).
inline std::vector<PipelineConfig> runs_of(const PipelineConfig& c) {
  if (c.repeats <= 1) return {c};
  std::vector<PipelineConfig> runs;
  for (int64_t k = 0; k < c.repeats; ++k) runs.push_back(repeat_config(c, k));
  return runs;
}

// What every training stage of the run shares.
inline recipe::TrainSettings train_settings(const PipelineConfig& c) {
  return {
      .batch_size = c.batch_size, .log_every = c.log_every, .checkpoint_every = c.checkpoint_every};
}

}  // namespace btx::pipeline
