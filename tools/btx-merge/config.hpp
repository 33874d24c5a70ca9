// SPDX-License-Identifier: MIT
// btx-merge's configuration: mergekit-moe's keys where they apply plus btx's own, read from
// YAML or JSON. Unknown keys, wrong types and impossible combinations are errors naming the
// key, reported before any checkpoint is opened.
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/core/device.hpp>

namespace btx::merge_tool {

struct ExpertEntry {
  std::string source_model;             // a HF dense checkpoint folder ("" only for method upcycle)
  std::vector<nlohmann::json> prompts;  // positive_prompts: strings or token-id lists
  std::vector<nlohmann::json> negative_prompts;  // subtracted (mergekit's negative_prompts)
};

struct MergeConfig {
  std::string base_model;
  std::vector<ExpertEntry> experts;
  std::string gate_mode = "hidden";  // mergekit's default
  int64_t experts_per_token = 2;
  std::string dtype;  // "" = the sources' dtype
  std::string averaging = "uniform";
  std::vector<double> weights;
  double density = -1.0;  // ties / dare_*: fraction of each task vector kept (-1: default)
  double lambda = 1.0;    // task_arithmetic / ties / dare_*: scale of the merged task vector
  int64_t split = 0;      // SplitMix chunks (method split)
  std::string method = "btx";
  bool include_base_as_expert = false;
  bool allow_non_finite = false;  // take NaN/Inf in the sources instead of refusing them
  std::string shared_expert;      // shared_experts[0].source_model ("" : none)
  uint64_t seed = 0;
  uint64_t max_shard_size = 5'000'000'000;
  double router_aux_loss_coef = 0.02;
  std::string device = "cpu";    // where averaging and stacking compute (cpu, cuda, cuda:N)
  std::string tokenizer_source;  // "" or "base": base_model's (sources must agree); else a folder

  // The averagings that merge task vectors against base_model (trunk_merging.hpp).
  [[nodiscard]] bool merges_task_vectors() const {
    return averaging == "task_arithmetic" || averaging == "ties" ||
           averaging.rfind("dare_", 0) == 0;
  }
};

inline constexpr const char* kConfigHelp = R"(CONFIG keys (YAML or JSON; unknown keys are errors):
  base_model: PATH          HF dense checkpoint folder: the architecture, tokenizer files and
                            config.json come from it; gate_mode hidden runs it. Required.
  experts:                  the dense experts, in expert order. Required, at least one.
    - source_model: PATH    HF dense checkpoint folder (for method upcycle: omitted or base_model)
      positive_prompts:     gate_mode hidden only: prompts of this expert's domain, each a
        - "text"            string, tokenised with base_model's own tokenizer as
        - [1, 5, 9]         transformers does (tokenizer.json through Python's `tokenizers`
                            package, $BTX_PYTHON or python3; tokenizer.model through
                            SentencePiece; byte-level when base_model has neither), or a
                            list of token ids
      negative_prompts:     optional, the same form: prompts this expert should not take;
                            their mean hidden state is subtracted from the positive one's
  gate_mode: hidden         router init: hidden (mergekit's default: row j = the base
                            model's mean FFN input on expert j's prompts, unit norm),
                            random (N(0, 0.02^2), seeded) or zero (uniform routing)
  experts_per_token: 2      top-k of the Mixtral (split C: the config gets C*k)
  dtype: float32            output dtype: float32, float16 or bfloat16 (default: sources')
  method: btx               btx (expert j = source j's FFN), split (each FFN cut into
                            `split` experts), blend (expert n = chunk n of every FFN) or
                            upcycle (len(experts) copies of base_model's FFN)
  split: 2                  chunks per FFN for method split (implies method split);
                            down_proj is scaled by C and a source's C chunks share its
                            router row, so top-(C*k) equals the unsplit top-k
  averaging: uniform        non-FFN tensors: uniform (mean), weighted (by `weights`),
                            keep_base (base_model's, which must be one of the sources),
                            or merged as task vectors against base_model (the seed):
                            task_arithmetic, ties, dare_linear, dare_ties
  weights: [1, 2]           one per source, in source order (implies averaging weighted
                            unless averaging is task_arithmetic or dare_linear)
  density: 0.2              ties (default 0.2) / dare_* (default 0.5): fraction of each
                            task vector kept (by magnitude / at random, seeded by `seed`)
  lambda: 1.0               task vector methods: base + lambda * merged task vector
  include_base_as_expert: false
                            add base_model as expert 0 (the BTX paper's generalist); with
                            gate_mode hidden its prompts are all experts' prompts together
  shared_experts:           Qwen2-MoE only: its always-on shared expert (mergekit's key;
    - source_model: PATH    one entry), e.g. base_model: the BTX paper's generalist,
                            always on instead of routed. Its gate starts at 0 (sigmoid:
                            1/2) and the routed experts' down_proj is halved, so copies
                            of one model merge into that model. Without it a Qwen2-MoE
                            gets a zero-width shared expert (it adds 0)
  seed: 0                   seed of gate_mode random and of dare_* drops
  max_shard_size: 5000000000
                            bytes per safetensors shard (also "500MB", "2GB", "1GiB")
  router_aux_loss_coef: 0.02
                            written to config.json (transformers' load-balancing weight)
  device: cpu               where averaging and stacking compute: cpu, cuda or cuda:N
                            (tensors are read from disk and written from the CPU)
  tokenizer_source: base    whose tokenizer, chat template and generation files the output
                            keeps, byte for byte: base (base_model's; every source's
                            tokenizer must then give the same ids and special tokens) or a
                            folder (sources not compared). mergekit's union is refused: btx
                            does not resize embeddings
  allow_non_finite: false   every tensor read (or copied) is checked for NaN and Inf; the
                            first is an error naming tensor, file and index, and nothing is
                            written. true takes them as they are
The output also gets a model card (README.md: method, sources with XXH3-128 hashes of
their files, router, averaging, top-k, the checks btx ran, this config) and btx_merge.json.
Relative paths are relative to the current directory (as in mergekit).
)";

namespace detail {

inline std::invalid_argument key_error(const std::string& key, const std::string& what) {
  return std::invalid_argument("config key '" + key + "': " + what);
}
inline std::string get_string(const nlohmann::json& j, const std::string& key) {
  if (!j.is_string()) throw key_error(key, "must be a string, got " + j.dump());
  return j.get<std::string>();
}
inline int64_t get_int(const nlohmann::json& j, const std::string& key, int64_t min) {
  if (!j.is_number_integer()) throw key_error(key, "must be an integer, got " + j.dump());
  const auto v = j.get<int64_t>();
  if (v < min) throw key_error(key, "must be >= " + std::to_string(min) + ", got " + j.dump());
  return v;
}
inline double get_number(const nlohmann::json& j, const std::string& key) {
  if (!j.is_number() || !std::isfinite(j.get<double>())) {
    throw key_error(key, "must be a finite number, got " + j.dump());
  }
  return j.get<double>();
}
inline std::string one_of(const nlohmann::json& j, const std::string& key,
                          const std::set<std::string>& allowed) {
  const auto v = get_string(j, key);
  if (!allowed.count(v)) {
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    throw key_error(key, "unknown value '" + v + "'; use one of: " + list);
  }
  return v;
}
inline uint64_t parse_size(const nlohmann::json& j, const std::string& key) {
  if (j.is_number_integer()) return uint64_t(get_int(j, key, 1));
  const auto text = get_string(j, key);
  static const std::map<std::string, uint64_t> units = {{"B", 1},
                                                        {"KB", 1000},
                                                        {"MB", 1000'000},
                                                        {"GB", 1000'000'000},
                                                        {"KiB", 1ull << 10},
                                                        {"MiB", 1ull << 20},
                                                        {"GiB", 1ull << 30}};
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    throw key_error(key, "'" + text + "' is not a size (bytes, or e.g. 500MB, 2GB, 1GiB)");
  }
  const auto unit = units.find(text.substr(used));
  if (unit == units.end() || !(v > 0)) {
    throw key_error(key, "'" + text + "' is not a size (bytes, or e.g. 500MB, 2GB, 1GiB)");
  }
  const double bytes = v * double(unit->second);
  if (!(bytes >= 1.0 && bytes < 18446744073709551616.0)) {  // [1, 2^64): a uint64_t
    throw key_error(key, "'" + text + "' is not between 1 byte and 2^64 bytes");
  }
  return uint64_t(bytes);
}

}  // namespace detail

inline MergeConfig parse_merge_config(const nlohmann::json& j) {
  using namespace detail;
  if (!j.is_object()) throw std::invalid_argument("the config must be a mapping of keys");
  static const std::set<std::string> known = {"base_model",      "experts",
                                              "gate_mode",       "experts_per_token",
                                              "dtype",           "averaging",
                                              "weights",         "density",
                                              "lambda",          "split",
                                              "method",          "include_base_as_expert",
                                              "shared_experts",  "seed",
                                              "max_shard_size",  "router_aux_loss_coef",
                                              "device",          "tokenizer_source",
                                              "allow_non_finite"};
  for (const auto& [key, value] : j.items()) {
    if (!known.count(key)) {
      throw key_error(key, "unknown key (btx-merge --help lists the keys it reads)");
    }
  }
  MergeConfig c;
  if (!j.contains("base_model"))
    throw key_error("base_model", "missing (a HF dense checkpoint folder)");
  c.base_model = get_string(j["base_model"], "base_model");
  if (j.contains("split")) {
    c.split = get_int(j["split"], "split", 1);
    c.method = "split";
  }
  if (j.contains("method")) {
    c.method = one_of(j["method"], "method", {"btx", "split", "blend", "upcycle"});
  }
  if (c.method == "split" && c.split == 0) c.split = 2;
  if (c.method != "split" && j.contains("split")) {
    throw key_error("split", "applies to method split only (method is " + c.method + ")");
  }
  if (j.contains("gate_mode")) {
    c.gate_mode = one_of(j["gate_mode"], "gate_mode", {"hidden", "random", "zero"});
  }
  if (j.contains("experts_per_token")) {
    c.experts_per_token = get_int(j["experts_per_token"], "experts_per_token", 1);
  }
  if (j.contains("dtype"))
    c.dtype = one_of(j["dtype"], "dtype", {"float32", "float16", "bfloat16"});
  if (j.contains("device")) {
    c.device = get_string(j["device"], "device");
    try {
      (void)parse_device(c.device);  // a device this machine lacks: an error before any work
    } catch (const std::invalid_argument& e) {
      throw key_error("device", e.what());
    }
  }
  if (j.contains("weights")) {
    if (!j["weights"].is_array() || j["weights"].empty()) {
      throw key_error("weights", "must be a non-empty list of numbers, one per source");
    }
    for (const auto& w : j["weights"]) c.weights.push_back(get_number(w, "weights"));
    c.averaging = "weighted";
  }
  if (j.contains("averaging")) {
    c.averaging = one_of(j["averaging"], "averaging",
                         {"uniform", "weighted", "keep_base", "task_arithmetic", "ties",
                          "dare_linear", "dare_ties"});
  }
  const bool weighs =
      c.averaging == "weighted" || c.averaging == "task_arithmetic" || c.averaging == "dare_linear";
  if (c.averaging == "weighted" && c.weights.empty()) {
    throw key_error("averaging", "weighted needs 'weights' (one per source)");
  }
  if (!weighs && !c.weights.empty()) {
    throw key_error("weights", "given but averaging is " + c.averaging);
  }
  if (j.contains("density")) {
    if (!c.merges_task_vectors() || c.averaging == "task_arithmetic") {
      throw key_error("density", "applies to averaging ties, dare_linear and dare_ties only");
    }
    c.density = get_number(j["density"], "density");
    if (!(c.density > 0.0 && c.density <= 1.0)) throw key_error("density", "must be in (0, 1]");
  }
  if (c.density < 0.0) c.density = c.averaging == "ties" ? 0.2 : 0.5;
  if (j.contains("lambda")) {
    if (!c.merges_task_vectors()) {
      throw key_error("lambda",
                      "applies to the task-vector averagings (task_arithmetic, ties, "
                      "dare_linear, dare_ties) only");
    }
    c.lambda = get_number(j["lambda"], "lambda");
  }
  if (j.contains("allow_non_finite")) {
    if (!j["allow_non_finite"].is_boolean())
      throw key_error("allow_non_finite", "must be true or false");
    c.allow_non_finite = j["allow_non_finite"].get<bool>();
  }
  if (j.contains("include_base_as_expert")) {
    if (!j["include_base_as_expert"].is_boolean()) {
      throw key_error("include_base_as_expert", "must be true or false");
    }
    c.include_base_as_expert = j["include_base_as_expert"].get<bool>();
  }
  if (j.contains("shared_experts")) {
    const auto& list = j["shared_experts"];
    if (!list.is_array() || list.size() != 1) {
      throw key_error("shared_experts",
                      "must list exactly one {source_model: PATH} (Qwen2-MoE has one shared "
                      "expert)");
    }
    const auto& x = list[0];
    if (!x.is_object() || !x.contains("source_model")) {
      throw key_error("shared_experts[0]", "must be a mapping with source_model");
    }
    for (const auto& [key, value] : x.items()) {
      if (key != "source_model") {
        throw key_error("shared_experts[0]." + key,
                        "not supported (btx starts the shared expert's gate at zero; "
                        "shared_experts take source_model only)");
      }
    }
    c.shared_expert = get_string(x["source_model"], "shared_experts[0].source_model");
  }
  if (j.contains("seed")) c.seed = uint64_t(get_int(j["seed"], "seed", 0));
  if (j.contains("tokenizer_source")) {
    c.tokenizer_source = get_string(j["tokenizer_source"], "tokenizer_source");
    if (c.tokenizer_source == "union") {
      throw key_error("tokenizer_source",
                      "union is not supported (btx does not resize embeddings); use base or "
                      "the folder whose tokenizer to keep");
    }
    if (c.tokenizer_source.empty()) throw key_error("tokenizer_source", "must not be empty");
  }
  if (j.contains("max_shard_size"))
    c.max_shard_size = parse_size(j["max_shard_size"], "max_shard_size");
  if (j.contains("router_aux_loss_coef")) {
    c.router_aux_loss_coef = get_number(j["router_aux_loss_coef"], "router_aux_loss_coef");
  }

  if (!j.contains("experts") || !j["experts"].is_array() || j["experts"].empty()) {
    throw key_error("experts", "missing or empty (a list of {source_model: PATH})");
  }
  for (size_t e = 0; e < j["experts"].size(); ++e) {
    const auto& x = j["experts"][e];
    const std::string where = "experts[" + std::to_string(e) + "]";
    if (!x.is_object()) throw key_error(where, "must be a mapping with source_model");
    ExpertEntry entry;
    for (const auto& [key, value] : x.items()) {
      if (key == "source_model") {
        entry.source_model = get_string(value, where + ".source_model");
      } else if (key == "positive_prompts" || key == "negative_prompts") {
        if (!value.is_array()) throw key_error(where + "." + key, "must be a list");
        auto& into = key == "positive_prompts" ? entry.prompts : entry.negative_prompts;
        for (const auto& p : value) into.push_back(p);
      } else {
        throw key_error(where + "." + key,
                        "unknown key (experts take source_model, positive_prompts and "
                        "negative_prompts)");
      }
    }
    if (entry.source_model.empty() && c.method != "upcycle") {
      throw key_error(where + ".source_model", "missing (a HF dense checkpoint folder)");
    }
    c.experts.push_back(std::move(entry));
  }

  // Combinations.
  if (c.method == "upcycle") {
    if (c.include_base_as_expert) {
      throw key_error("include_base_as_expert", "does not apply to method upcycle");
    }
    if (j.contains("averaging") || j.contains("weights")) {
      throw key_error(j.contains("averaging") ? "averaging" : "weights",
                      "does not apply to method upcycle (one source: base_model)");
    }
    if (c.gate_mode == "hidden") {
      throw key_error("gate_mode",
                      "hidden gives identical rows for upcycled copies of one "
                      "model; use random or zero with method upcycle");
    }
  }
  if (c.method == "blend" && c.gate_mode == "hidden") {
    throw key_error("gate_mode",
                    "hidden needs experts from one source each; method blend "
                    "mixes every source in every expert (use random or zero)");
  }
  if (c.gate_mode == "hidden") {
    for (size_t e = 0; e < c.experts.size(); ++e) {
      if (c.experts[e].prompts.empty()) {
        throw key_error("experts[" + std::to_string(e) + "].positive_prompts",
                        "missing: gate_mode hidden (mergekit's default) needs prompts for every "
                        "expert; or set gate_mode: random");
      }
    }
  } else {
    for (size_t e = 0; e < c.experts.size(); ++e) {
      const bool positive = !c.experts[e].prompts.empty();
      if (positive || !c.experts[e].negative_prompts.empty()) {
        throw key_error("experts[" + std::to_string(e) +
                            (positive ? "].positive_prompts" : "].negative_prompts"),
                        "used by gate_mode hidden only (gate_mode is " + c.gate_mode + ")");
      }
    }
  }
  const size_t unsplit = c.experts.size() + (c.include_base_as_expert ? 1 : 0);
  if (size_t(c.experts_per_token) > unsplit) {
    throw key_error("experts_per_token", std::to_string(c.experts_per_token) +
                                             " is more than the " + std::to_string(unsplit) +
                                             " experts");
  }
  return c;
}

}  // namespace btx::merge_tool
