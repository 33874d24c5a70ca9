// SPDX-License-Identifier: MIT
// btx-merge's configuration: mergekit-moe's keys where they apply plus btx's own, read from
// YAML or JSON, every key declared once in merge_config_schema() (config_schema.cpp). The
// method, averaging and router init (gate_mode) are the merge registries' names
// (merge/merge_choice.hpp) with their own options; unknown keys, wrong types and impossible
// combinations are errors naming the key, reported before any checkpoint is opened.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/core/schema.hpp>
#include <btx/merge/merge_choice.hpp>

namespace btx::merge_tool {

struct ExpertEntry {
  std::string source_model;             // a HF dense checkpoint folder ("" only for upcycle)
  std::vector<nlohmann::json> prompts;  // positive_prompts: strings or token-id lists
  std::vector<nlohmann::json> negative_prompts;  // subtracted (mergekit's negative_prompts)
};

// btx-merge's names for the merge choice's keys: mergekit's gate_mode for the router init
// (hidden by default, as mergekit), split for split's chunks.
inline merge::MergeKeys merge_keys() {
  merge::MergeKeys k;
  k.method = "method";
  k.averaging = "averaging";
  k.router_init = "gate_mode";
  k.default_router_init = "hidden";
  k.options = {{"chunks", "split"},
               {"std", "gate_std"},
               {"scale", "gate_scale"},
               {"normalize", "gate_normalize"}};
  return k;
}

struct MergeConfig {
  // merge: dense sources -> one MoE (the default, mergekit-moe's job). The MoE edits of
  // anchored experts (FlexOlmo; merge/anchored.hpp): flexolmo concatenates anchored experts
  // (experts[]: MoEs of two over base_model), remove_experts drops experts (`remove`) from
  // the MoE base_model (opt-out), add_experts appends anchored experts to it (opt-in).
  std::string operation = "merge";
  std::vector<int64_t> remove;  // remove_experts: the experts' indices in base_model
  std::string base_model;
  std::vector<ExpertEntry> experts;
  // method, averaging and gate_mode with their options (split, weights, density, lambda, ...).
  merge::MergeChoice merge = merge::read_merge_choice(nlohmann::json::object(), merge_keys());
  nlohmann::json merge_given = nlohmann::json::object();  // those keys as the config gave them
  int64_t experts_per_token = 2;
  std::string dtype;  // "" = the sources' dtype
  // How the MoE's experts are stored: "" (the family's default), per_expert or packed.
  std::string expert_layout;
  bool include_base_as_expert = false;
  bool allow_non_finite = false;  // take NaN/Inf in the sources instead of refusing them
  // shared_experts[*].source_model, in order (empty: none): concatenated into the MoE's
  // shared expert (several: GLM-4-MoE's n_shared_experts, a wider Qwen2-MoE shared expert).
  std::vector<std::string> shared_experts;
  std::string architecture;  // the output's model_type ("": base_model's family's MoE)
  int64_t dense_layers = 0;  // leading layers kept dense (first_k_dense_replace)
  uint64_t seed = 0;
  uint64_t max_shard_size = 5'000'000'000;
  double router_aux_loss_coef = 0.02;
  std::string device = "cpu";    // where averaging and stacking compute (cpu, cuda, cuda:N)
  std::string tokenizer_source;  // "" or "base": base_model's (sources must agree); else a folder

  [[nodiscard]] const std::string& method() const { return merge.method.name(); }
};

// Every key of a btx-merge config.
const schema::Schema<MergeConfig>& merge_config_schema();

// `j` read as a btx-merge config, its merge keys resolved (mergekit's shorthands: `split`
// implies method split, `weights` averaging weighted) and every combination checked.
MergeConfig parse_merge_config(const nlohmann::json& j);

// The config keys and the registries' entries, for --help.
std::string config_help();

}  // namespace btx::merge_tool
