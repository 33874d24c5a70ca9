// SPDX-License-Identifier: MIT
// btx-pipeline's configuration: the embedded default (a real multi-domain corpus found on
// a stock Debian machine + generated arithmetic), the --quick preset used by the tests,
// and loading/validation of a user's YAML or JSON file. Unknown keys are errors, so a
// typo never silently falls back to a default.
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <set>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/core/model_spec.hpp>
#include <btx/data/corpus.hpp>
#include <btx/models/llama/compat.hpp>
#include <btx/recipe/run.hpp>
#include <btx/recipe/topology.hpp>
#include <btx/recipe/train_stage.hpp>
#include <btx/train/precision.hpp>

namespace btx::pipeline {

using recipe::StageBudget;

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
  LlamaConfig model;  // the demo seed's architecture (ignored with seed_checkpoint)
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
  StageBudget seed_stage{400, 3e-3, 20};
  StageBudget expert_stage{300, 2e-3, 10};
  StageBudget finetune_stage{100, 1e-3, 10};
  // The MoE stage's share of BTX's compute after the seed (the paper: 23%): when in (0, 1),
  // finetune_stage.steps is derived from the experts' planned compute. 0: steps as given.
  double moe_share = 0.0;
  std::string router = "top2";             // BTX's router
  std::vector<std::string> extra_routers;  // also finetune these (switch, sample_top1, soft)
  double load_balance_alpha = 0.01;
  bool freeze_experts = false;            // BTX's MoE stage trains routers and trunk only (Table 5)
  std::string load_balance_form = "btx";  // btx | switch
  bool seed_as_expert = true;             // the paper's generalist expert
  bool seed_as_shared_expert = false;     // or, in a Qwen2 seed's MoE, its shared expert
  std::string router_init = "normal";     // normal | zero | hidden
  std::string experts_from = "btx";   // btx (expert j: domain j's FFN) | blend | split (Table 5)
  int64_t split_chunks = 2;           // split: experts cut from each FFN
  std::string averaging = "uniform";  // shared tensors: uniform | task_arithmetic | ties |
                                      // dare_linear | dare_ties (against the seed)
  double averaging_density = 0.5;     // ties / dare_*: fraction of task vectors kept
  double averaging_lambda = 1.0;      // task-vector merges: scale of the merged vector
  bool baselines = true;              // dense, BTM merge/ensemble, sparse upcycling
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
  int64_t checkpoint_every = 50;   // training checkpoints per stage (0: none); reruns resume
  int64_t stage_jobs = 0;          // stages trained at once (0: all of a phase), in that many lanes
  recipe::Topology topology;       // ranks per expert and per synchronous stage
  std::string device = "cpu";      // where the stages train and evaluate: cpu, cuda, cuda:N
  std::string precision = "fp32";  // fp32 | bf16-mixed | bf16
  int64_t fail_expert = -1;        // fault injection: this expert index ...
  int64_t fail_step = -1;          // ... aborts at this step (tests of isolated failures)
  int64_t fail_rank = 0;           // ... on this rank of its group ...
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
  // The paper's regime in miniature (issue 16's sweeps, tools/btx-pipeline/presets/sweeps.yaml):
  // a seed trained well beyond each expert (the paper: 2T tokens against 42-210B per
  // expert; here nearly 7x each expert's steps), experts at a third of the seed's peak LR (the
  // paper: 1e-4 after Llama-2's 3e-4), the MoE stage lower still (a tenth: the sweep's
  // MoE-stage LR 1e-4 beat 1e-3 and 3e-3; sparse upcycling trains at this LR too, so not
  // lower), and 23% of BTX's compute after the seed in the MoE stage.
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

namespace detail {

inline void reject_unknown(const nlohmann::json& j, const std::string& where,
                           const std::set<std::string>& known) {
  if (!j.is_object()) throw std::invalid_argument("config: '" + where + "' must be a mapping");
  for (const auto& [key, value] : j.items()) {
    if (!known.contains(key)) {
      std::string list;
      for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
      throw std::invalid_argument("config: unknown key '" + key + "' in " + where +
                                  " (known: " + list + ")");
    }
  }
}

// An integer key takes a whole number within its type's range (1e3 is 1000; 2.5, 1e300, and
// -1 for an unsigned key are errors): nlohmann::json's get<T> would truncate, or convert out
// of range (undefined behaviour for a floating-point value).
template <class T>
bool integer_in_range(const nlohmann::json& v) {
  if (v.is_number_unsigned()) return std::in_range<T>(v.get<uint64_t>());
  if (v.is_number_integer()) return std::in_range<T>(v.get<int64_t>());
  const double d = v.get<double>();
  // double(max) + 1 is 2^63 or 2^64 exactly: the first value past T's range.
  return std::trunc(d) == d && d >= double(std::numeric_limits<T>::min()) &&
         d < double(std::numeric_limits<T>::max()) + 1.0;
}

template <class T>
void read(const nlohmann::json& j, const char* key, T& out, const std::string& where) {
  if (!j.contains(key)) return;
  const auto& v = j.at(key);
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    if (v.is_number() && !integer_in_range<T>(v)) {
      throw std::invalid_argument("config: " + where + "." + key + " must be a whole number in [" +
                                  std::to_string(std::numeric_limits<T>::min()) + ", " +
                                  std::to_string(std::numeric_limits<T>::max()) + "], got " +
                                  v.dump());
    }
  }
  try {
    out = v.get<T>();
  } catch (const nlohmann::json::exception&) {
    throw std::invalid_argument("config: " + where + "." + key + " has the wrong type (" +
                                v.dump() + ")");
  }
}

inline void read_stage(const nlohmann::json& j, const char* key, StageBudget& s) {
  if (!j.contains(key)) return;
  const auto& o = j.at(key);
  reject_unknown(o, key, {"steps", "lr", "warmup"});
  read(o, "steps", s.steps, key);
  read(o, "lr", s.lr, key);
  read(o, "warmup", s.warmup, key);
}

inline DomainSpec read_domain(const nlohmann::json& d, const DomainSpec& defaults) {
  reject_unknown(
      d, "domains[]",
      {"name", "paths", "extensions", "recursive", "generator", "token_file", "eval_token_file",
       "token_dtype", "max_train_tokens", "max_eval_tokens", "eval_every", "seed"});
  DomainSpec s = defaults;
  const std::string w = "domains[]";
  read(d, "name", s.name, w);
  read(d, "paths", s.paths, w);
  read(d, "extensions", s.extensions, w);
  read(d, "recursive", s.recursive, w);
  read(d, "generator", s.generator, w);
  read(d, "token_file", s.token_file, w);
  read(d, "eval_token_file", s.eval_token_file, w);
  read(d, "token_dtype", s.token_dtype, w);
  read(d, "max_train_tokens", s.max_train_tokens, w);
  read(d, "max_eval_tokens", s.max_eval_tokens, w);
  read(d, "eval_every", s.eval_every, w);
  read(d, "seed", s.seed, w);
  return s;
}

}  // namespace detail

// Whether text is tokenised by a SentencePiece model trained for the run (config key
// tokenizer; auto: unless a seed checkpoint or token files bring their own ids).
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
inline bool uses_sentencepiece(const PipelineConfig& c) {
  if (c.tokenizer == "sentencepiece") return true;
  if (c.tokenizer == "bytes") return false;
  if (!c.seed_checkpoint.empty()) return false;
  for (const auto& d : c.domains)
    if (!d.token_file.empty()) return false;
  return true;
}

// Overlays a parsed YAML/JSON document on `base` (default or quick).
inline PipelineConfig apply_config(PipelineConfig c, const nlohmann::json& j) {
  using detail::read;
  detail::reject_unknown(j, "the top level",
                         {"run_dir",
                          "seed",
                          "repeats",
                          "sweep",
                          "moe_share",
                          "model",
                          "seq_len",
                          "batch_size",
                          "domains",
                          "tokenizer",
                          "tokenizer_vocab_size",
                          "seed_checkpoint",
                          "seed_stage",
                          "expert_stage",
                          "finetune_stage",
                          "router",
                          "extra_routers",
                          "load_balance_alpha",
                          "freeze_experts",
                          "load_balance_form",
                          "seed_as_expert",
                          "seed_as_shared_expert",
                          "router_init",
                          "experts_from",
                          "split_chunks",
                          "averaging",
                          "averaging_density",
                          "averaging_lambda",
                          "baselines",
                          "eval_windows",
                          "math_problems",
                          "sample_prompts",
                          "sample_tokens",
                          "log_every",
                          "curve_every",
                          "curve_windows",
                          "checkpoint_every",
                          "stage_jobs",
                          "device",
                          "precision",
                          "ranks_per_expert",
                          "ranks_per_stage",
                          "expert_worlds",
                          "dist_timeout_s",
                          "fail_expert",
                          "fail_step",
                          "fail_rank",
                          "fail_signal",
                          "allow_non_finite"});
  const std::string top = "config";
  read(j, "run_dir", c.run_dir, top);
  read(j, "seed", c.seed, top);
  read(j, "repeats", c.repeats, top);
  if (j.contains("sweep")) c.sweep = j.at("sweep");
  read(j, "moe_share", c.moe_share, top);
  // Checked here, not in validate(): the driver splits the run into repeats before any
  // repeat's own validation sees its config.
  if (c.repeats < 1) {
    throw std::invalid_argument("config: repeats must be > 0, got " + std::to_string(c.repeats));
  }
  if (c.seed > std::numeric_limits<uint64_t>::max() - uint64_t(c.repeats)) {
    throw std::invalid_argument("config: seed + repeats overflows the seed's range");
  }
  if (j.contains("model")) {
    const auto& m = j.at("model");
    detail::reject_unknown(
        m, "model",
        {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
         "num_key_value_heads", "head_dim", "rope_theta", "rms_norm_eps", "max_position_embeddings",
         "tie_word_embeddings", "vocab_size"});
    read(m, "hidden_size", c.model.hidden_size, "model");
    read(m, "intermediate_size", c.model.intermediate_size, "model");
    read(m, "num_hidden_layers", c.model.num_hidden_layers, "model");
    read(m, "num_attention_heads", c.model.num_attention_heads, "model");
    read(m, "num_key_value_heads", c.model.num_key_value_heads, "model");
    if (m.contains("head_dim")) {
      int64_t head_dim = 0;
      read(m, "head_dim", head_dim, "model");
      c.model.head_dim = head_dim;
    }
    read(m, "rope_theta", c.model.rope_theta, "model");
    read(m, "rms_norm_eps", c.model.rms_norm_eps, "model");
    read(m, "max_position_embeddings", c.model.max_position_embeddings, "model");
    read(m, "tie_word_embeddings", c.model.tie_word_embeddings, "model");
    read(m, "vocab_size", c.model.vocab_size, "model");
  }
  read(j, "seq_len", c.seq_len, top);
  read(j, "batch_size", c.batch_size, top);
  if (j.contains("domains")) {
    if (!j.at("domains").is_array()) throw std::invalid_argument("config: domains must be a list");
    DomainSpec defaults;
    defaults.max_train_tokens =
        c.domains.empty() ? defaults.max_train_tokens : c.domains.front().max_train_tokens;
    c.domains.clear();
    for (const auto& d : j.at("domains")) c.domains.push_back(detail::read_domain(d, defaults));
  }
  read(j, "seed_checkpoint", c.seed_checkpoint, top);
  detail::read_stage(j, "seed_stage", c.seed_stage);
  detail::read_stage(j, "expert_stage", c.expert_stage);
  detail::read_stage(j, "finetune_stage", c.finetune_stage);
  read(j, "router", c.router, top);
  read(j, "extra_routers", c.extra_routers, top);
  read(j, "load_balance_alpha", c.load_balance_alpha, top);
  read(j, "freeze_experts", c.freeze_experts, top);
  read(j, "load_balance_form", c.load_balance_form, top);
  read(j, "seed_as_expert", c.seed_as_expert, top);
  read(j, "seed_as_shared_expert", c.seed_as_shared_expert, top);
  read(j, "router_init", c.router_init, top);
  read(j, "experts_from", c.experts_from, top);
  read(j, "split_chunks", c.split_chunks, top);
  read(j, "averaging", c.averaging, top);
  read(j, "averaging_density", c.averaging_density, top);
  read(j, "averaging_lambda", c.averaging_lambda, top);
  read(j, "baselines", c.baselines, top);
  read(j, "eval_windows", c.eval_windows, top);
  read(j, "math_problems", c.math_problems, top);
  read(j, "sample_prompts", c.sample_prompts, top);
  read(j, "sample_tokens", c.sample_tokens, top);
  read(j, "log_every", c.log_every, top);
  read(j, "curve_every", c.curve_every, top);
  read(j, "curve_windows", c.curve_windows, top);
  read(j, "checkpoint_every", c.checkpoint_every, top);
  read(j, "stage_jobs", c.stage_jobs, top);
  read(j, "device", c.device, top);
  read(j, "precision", c.precision, top);
  read(j, "ranks_per_expert", c.topology.ranks_per_expert, top);
  read(j, "ranks_per_stage", c.topology.ranks_per_stage, top);
  if (j.contains("expert_worlds")) {
    std::string worlds;
    read(j, "expert_worlds", worlds, top);
    c.topology.expert_worlds = recipe::parse_expert_worlds(worlds);
  }
  read(j, "dist_timeout_s", c.topology.timeout_s, top);
  read(j, "fail_expert", c.fail_expert, top);
  read(j, "fail_step", c.fail_step, top);
  read(j, "fail_rank", c.fail_rank, top);
  read(j, "fail_signal", c.fail_signal, top);
  read(j, "allow_non_finite", c.allow_non_finite, top);
  read(j, "tokenizer", c.tokenizer, top);
  read(j, "tokenizer_vocab_size", c.tokenizer_vocab_size, top);
  if (uses_sentencepiece(c) && j.contains("model") && j.at("model").contains("vocab_size") &&
      c.model.vocab_size != c.tokenizer_vocab_size) {
    throw std::invalid_argument(
        "config: model.vocab_size " + std::to_string(c.model.vocab_size) +
        " differs from tokenizer_vocab_size " + std::to_string(c.tokenizer_vocab_size) +
        ": with a sentencepiece tokenizer the model's vocabulary is the tokenizer's (set "
        "tokenizer_vocab_size, or tokenizer: bytes for vocab_size 256)");
  }
  return c;
}

// Where and in what precision the stages train and evaluate (checked against this machine).
inline Placement placement(const PipelineConfig& c) {
  try {
    return {parse_device(c.device), parse_precision(c.precision)};
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string("config: ") + e.what());
  }
}

// Everything that can be checked before training starts; `seed` is the seed's shape
// (config.model's, or seed_checkpoint's).
inline void validate(const PipelineConfig& c, const ArchShape& seed) {
  if (c.seed_checkpoint.empty()) c.model.validate();
  const auto positive = [](const char* field, int64_t v) {
    if (v <= 0) {
      throw std::invalid_argument(std::string("config: ") + field + " must be > 0, got " +
                                  std::to_string(v));
    }
  };
  positive("seq_len", c.seq_len);
  positive("batch_size", c.batch_size);
  positive("seed_stage.steps", c.seed_checkpoint.empty() ? c.seed_stage.steps : 1);
  positive("expert_stage.steps", c.expert_stage.steps);
  positive("finetune_stage.steps", c.finetune_stage.steps);
  positive("eval_windows", c.eval_windows);
  positive("sample_tokens", c.sample_tokens);
  positive("log_every", c.log_every);
  if (!(c.moe_share >= 0.0 && c.moe_share < 1.0)) {
    throw std::invalid_argument(
        "config: moe_share must be in [0, 1) (0: finetune_stage.steps as "
        "given), got " +
        std::to_string(c.moe_share));
  }
  positive("curve_windows", c.curve_windows);
  if (c.curve_every < 0 || c.curve_every % c.log_every != 0) {
    throw std::invalid_argument("config: curve_every (" + std::to_string(c.curve_every) +
                                ") must be 0 (no learning curves) or a multiple of log_every (" +
                                std::to_string(c.log_every) + ")");
  }
  if (c.stage_jobs < 0) {
    throw std::invalid_argument(
        "config: stage_jobs must be >= 0 (0: every stage of a phase at "
        "once), got " +
        std::to_string(c.stage_jobs));
  }
  if (c.checkpoint_every < 0) {
    throw std::invalid_argument("config: checkpoint_every must be >= 0 (0: no checkpoints), got " +
                                std::to_string(c.checkpoint_every));
  }
  if (c.seq_len >= seed.max_position_embeddings) {  // seq_len + 1 positions (no overflow)
    throw std::invalid_argument("config: seq_len=" + std::to_string(c.seq_len) +
                                " exceeds the seed's max_position_embeddings=" +
                                std::to_string(seed.max_position_embeddings));
  }
  if (c.domains.empty()) throw std::invalid_argument("config: no domains");
  if (c.tokenizer != "auto" && c.tokenizer != "sentencepiece" && c.tokenizer != "bytes" &&
      c.tokenizer != "seed") {
    throw std::invalid_argument("config: tokenizer '" + c.tokenizer +
                                "' is not one of auto, sentencepiece, seed, bytes");
  }
  if (c.tokenizer == "seed" && !seed_has_tokenizer(c)) {
    throw std::invalid_argument(c.seed_checkpoint.empty()
                                    ? std::string("config: tokenizer seed needs a seed_checkpoint")
                                    : "config: tokenizer seed, but seed_checkpoint " +
                                          c.seed_checkpoint +
                                          " has no tokenizer.json or tokenizer.model");
  }
  if (c.tokenizer == "sentencepiece") {
    if (!c.seed_checkpoint.empty()) {
      throw std::invalid_argument(
          "config: tokenizer sentencepiece trains a new vocabulary, but seed_checkpoint " +
          c.seed_checkpoint + " has its own (use tokenizer: seed, bytes or auto)");
    }
    for (const auto& d : c.domains) {
      if (!d.token_file.empty()) {
        throw std::invalid_argument("config: tokenizer sentencepiece, but domain '" + d.name +
                                    "' reads ids from a token_file (use tokenizer: bytes)");
      }
    }
  }
  if (uses_sentencepiece(c) && (c.tokenizer_vocab_size < 260 || c.tokenizer_vocab_size > 65536)) {
    throw std::invalid_argument(
        "config: tokenizer_vocab_size must be in [260, 65536] (256 byte pieces + <unk>, <s>, "
        "</s> and more), got " +
        std::to_string(c.tokenizer_vocab_size));
  }
  if (c.router_init != "normal" && c.router_init != "zero" && c.router_init != "hidden") {
    throw std::invalid_argument("config: router_init '" + c.router_init +
                                "' is not one of normal, zero, hidden");
  }
  if (c.experts_from != "btx" && c.experts_from != "blend" && c.experts_from != "split") {
    throw std::invalid_argument("config: experts_from '" + c.experts_from +
                                "' is not one of btx, blend, split");
  }
  if (c.experts_from == "split" &&
      (c.split_chunks < 1 || seed.intermediate_size % c.split_chunks != 0)) {
    throw std::invalid_argument("config: split_chunks (" + std::to_string(c.split_chunks) +
                                ") must be >= 1 and divide intermediate_size " +
                                std::to_string(seed.intermediate_size));
  }
  if (c.experts_from == "blend" && c.router_init == "hidden") {
    throw std::invalid_argument(
        "config: router_init hidden starts each expert's router row from its domain's text, "
        "but experts_from blend makes every expert a slice of every domain");
  }
  if (c.experts_from == "blend") {
    const auto sources = int64_t(c.domains.size()) + (c.seed_as_expert ? 1 : 0);
    if (sources > 0 && seed.intermediate_size % sources != 0) {
      throw std::invalid_argument(
          "config: experts_from blend cuts every FFN into one chunk per expert (" +
          std::to_string(sources) + "), which must divide intermediate_size " +
          std::to_string(seed.intermediate_size));
    }
  }
  static const std::set<std::string> averagings = {"uniform", "task_arithmetic", "ties",
                                                   "dare_linear", "dare_ties"};
  if (!averagings.count(c.averaging)) {
    throw std::invalid_argument("config: averaging '" + c.averaging +
                                "' is not one of uniform, task_arithmetic, ties, dare_linear, "
                                "dare_ties");
  }
  if (!(c.averaging_density > 0.0 && c.averaging_density <= 1.0)) {
    throw std::invalid_argument("config: averaging_density must be in (0, 1], got " +
                                std::to_string(c.averaging_density));
  }
  if (!std::isfinite(c.averaging_lambda)) {
    throw std::invalid_argument("config: averaging_lambda must be finite");
  }
  c.topology.validate(c.batch_size);
  (void)placement(c);  // a device this machine lacks fails here, before any work
  if (c.fail_signal != "abort" && c.fail_signal != "kill") {
    throw std::invalid_argument("config: fail_signal '" + c.fail_signal + "' is not abort or kill");
  }
  if (c.load_balance_form != "btx" && c.load_balance_form != "switch") {
    throw std::invalid_argument("config: load_balance_form '" + c.load_balance_form +
                                "' is not one of btx, switch");
  }
}

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

inline nlohmann::json to_json(const PipelineConfig& c) {
  auto domains = nlohmann::json::array();
  for (const auto& d : c.domains) {
    domains.push_back({{"name", d.name},
                       {"paths", d.paths},
                       {"extensions", d.extensions},
                       {"recursive", d.recursive},
                       {"generator", d.generator},
                       {"token_file", d.token_file},
                       {"eval_token_file", d.eval_token_file},
                       {"token_dtype", d.token_dtype},
                       {"max_train_tokens", d.max_train_tokens},
                       {"max_eval_tokens", d.max_eval_tokens},
                       {"eval_every", d.eval_every},
                       {"seed", d.seed}});
  }
  const auto stage = [](const StageBudget& s) {
    return nlohmann::json{{"steps", s.steps}, {"lr", s.lr}, {"warmup", s.warmup}};
  };
  nlohmann::json model = {{"hidden_size", c.model.hidden_size},
                          {"intermediate_size", c.model.intermediate_size},
                          {"num_hidden_layers", c.model.num_hidden_layers},
                          {"num_attention_heads", c.model.num_attention_heads},
                          {"num_key_value_heads", c.model.num_key_value_heads},
                          {"rope_theta", c.model.rope_theta},
                          {"rms_norm_eps", c.model.rms_norm_eps},
                          {"max_position_embeddings", c.model.max_position_embeddings},
                          {"tie_word_embeddings", c.model.tie_word_embeddings},
                          {"vocab_size", c.model.vocab_size}};
  if (c.model.head_dim) model["head_dim"] = *c.model.head_dim;
  return {{"run_dir", c.run_dir},
          {"seed", c.seed},
          {"repeats", c.repeats},
          {"sweep", c.sweep},
          {"moe_share", c.moe_share},
          {"model", model},
          {"seq_len", c.seq_len},
          {"batch_size", c.batch_size},
          {"domains", domains},
          {"tokenizer", c.tokenizer},
          {"tokenizer_vocab_size", c.tokenizer_vocab_size},
          {"seed_checkpoint", c.seed_checkpoint},
          {"seed_stage", stage(c.seed_stage)},
          {"expert_stage", stage(c.expert_stage)},
          {"finetune_stage", stage(c.finetune_stage)},
          {"router", c.router},
          {"extra_routers", c.extra_routers},
          {"load_balance_alpha", c.load_balance_alpha},
          {"freeze_experts", c.freeze_experts},
          {"load_balance_form", c.load_balance_form},
          {"seed_as_expert", c.seed_as_expert},
          {"seed_as_shared_expert", c.seed_as_shared_expert},
          {"router_init", c.router_init},
          {"experts_from", c.experts_from},
          {"split_chunks", c.split_chunks},
          {"averaging", c.averaging},
          {"averaging_density", c.averaging_density},
          {"averaging_lambda", c.averaging_lambda},
          {"baselines", c.baselines},
          {"eval_windows", c.eval_windows},
          {"math_problems", c.math_problems},
          {"sample_prompts", c.sample_prompts},
          {"sample_tokens", c.sample_tokens},
          {"log_every", c.log_every},
          {"curve_every", c.curve_every},
          {"curve_windows", c.curve_windows},
          {"checkpoint_every", c.checkpoint_every},
          {"stage_jobs", c.stage_jobs},
          {"device", c.device},
          {"precision", c.precision},
          {"ranks_per_expert", c.topology.ranks_per_expert},
          {"ranks_per_stage", c.topology.ranks_per_stage},
          {"expert_worlds", recipe::to_string(c.topology.expert_worlds)},
          {"dist_timeout_s", c.topology.timeout_s},
          {"fail_expert", c.fail_expert},
          {"fail_step", c.fail_step},
          {"fail_rank", c.fail_rank},
          {"fail_signal", c.fail_signal},
          {"allow_non_finite", c.allow_non_finite}};
}

}  // namespace btx::pipeline
