// SPDX-License-Identifier: MIT
// A sweep: variants of one pipeline config, each run (with its repeats) in <run>/<name>/,
// reported side by side. The config's `sweep` key:
//   sweep:
//     axis: MoE-stage share of BTX's compute    # the plot's x label
//     variants:
//       - {name: share10, x: 0.10, moe_share: 0.10}
//       - {name: share23, x: 0.23, moe_share: 0.23}
// A variant is a name (a folder), an optional x (its position on the plot; default: its
// index) and any keys of the pipeline's config, applied over the rest of the file.
// Every variant is validated before the first one trains.
#pragma once

#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/recipe/adopt.hpp>
#include <btx/recipe/branch.hpp>
#include <btx/recipe/lineage.hpp>

#include "config.hpp"
#include "corpus.hpp"

namespace btx::pipeline {

struct SweepVariant {
  std::string name;
  double x = 0.0;
  PipelineConfig config;  // the base with the variant's keys applied, run_dir <run>/<name>
};

struct Sweep {
  std::string axis = "variant";
  std::vector<SweepVariant> variants;
};

inline bool folder_safe(const std::string& name) {
  if (name.empty() || name[0] == '.' || name.size() > 100) return false;
  for (const unsigned char c : name) {
    if (!std::isalnum(c) && c != '-' && c != '_' && c != '.') return false;
  }
  return true;
}

inline Sweep sweep_of(const PipelineConfig& config) {
  const auto& j = config.sweep;
  detail::reject_unknown(j, "sweep", {"axis", "variants"});
  Sweep sweep;
  detail::read(j, "axis", sweep.axis, "sweep");
  if (!j.contains("variants") || !j.at("variants").is_array() || j.at("variants").empty()) {
    throw std::invalid_argument("config: sweep.variants must be a non-empty list");
  }
  PipelineConfig base = config;
  base.sweep = nullptr;
  std::set<std::string> names;
  for (const auto& v : j.at("variants")) {
    if (!v.is_object() || !v.contains("name") || !v.at("name").is_string()) {
      throw std::invalid_argument("config: every sweep variant needs a name, got " + v.dump());
    }
    SweepVariant variant;
    variant.name = v.at("name").get<std::string>();
    const std::string where = "sweep variant '" + variant.name + "'";
    if (!folder_safe(variant.name)) {
      throw std::invalid_argument("config: " + where +
                                  ": a name is a folder: letters, digits, '-', '_', '.'");
    }
    if (!names.insert(variant.name).second) {
      throw std::invalid_argument("config: " + where + " appears twice");
    }
    variant.x = double(sweep.variants.size());
    detail::read(v, "x", variant.x, where);
    nlohmann::json overrides = v;
    overrides.erase("name");
    overrides.erase("x");
    for (const char* key : {"sweep", "run_dir"}) {
      if (overrides.contains(key)) {
        throw std::invalid_argument("config: " + where + " cannot set '" + key + "'");
      }
    }
    try {
      variant.config = apply_config(base, overrides);
      validate(variant.config, seed_spec_of(variant.config).shape);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(where + ": " + e.what());
    }
    variant.config.run_dir = (std::filesystem::path(config.run_dir) / variant.name).string();
    sweep.variants.push_back(std::move(variant));
  }
  return sweep;
}

// What a stage's result depends on: the config without the keys that only act after it.
// Leaving a key in is safe (a stage is retrained); leaving one out that matters is not, so
// these lists name only keys known to act downstream.
inline nlohmann::json upstream_of(const PipelineConfig& c, bool through_experts) {
  auto j = to_json(c);
  for (const char* key : {"run_dir",
                          "repeats",
                          "sweep",
                          "moe_share",
                          "finetune_stage",
                          "router",
                          "extra_routers",
                          "load_balance_alpha",
                          "freeze_experts",
                          "load_balance_form",
                          "seed_as_expert",
                          "seed_as_shared_expert",
                          "router_init",
                          "averaging",
                          "averaging_density",
                          "averaging_lambda",
                          "baselines",
                          "eval_windows",
                          "math_problems",
                          "curve_every",
                          "curve_windows",
                          "log_every",
                          "checkpoint_every",
                          "ranks_per_stage",
                          "dist_timeout_s"}) {
    j.erase(key);
  }
  if (!through_experts) {
    for (const char* key : {"expert_stage", "ranks_per_expert", "expert_worlds", "fail_expert",
                            "fail_step", "fail_rank", "fail_signal"}) {
      j.erase(key);
    }
  }
  return j;
}

// Before `now` runs: the tokenizer, seed and branch of `earlier` when their upstream configs
// match, and its experts when those match too; recorded in <now>/adopted.json for the report.
inline void adopt_upstream(const PipelineConfig& earlier, const PipelineConfig& now) {
  if (upstream_of(earlier, false) != upstream_of(now, false)) return;
  const recipe::Run from(earlier.run_dir, {}, "pipeline"), to(now.run_dir, {}, "pipeline");
  std::vector<std::string> stages = {"seed", recipe::kBranchStage};
  if (upstream_of(earlier, true) == upstream_of(now, true)) {
    for (const auto& d : now.domains) stages.push_back(recipe::expert_stage(d.name));
  }
  std::filesystem::create_directories(to.dir());
  recipe::adopt_folder(from, to, "tokenizer");
  const auto record = to.dir() / "adopted.json";
  nlohmann::json adopted = nlohmann::json::object();
  if (std::ifstream in(record); in) adopted = nlohmann::json::parse(in, nullptr, false);
  if (!adopted.is_object()) adopted = nlohmann::json::object();
  bool any = false;
  for (const auto& stage : stages) {
    if (recipe::adopt_stage(from, to, stage)) {
      adopted[stage] = from.stage_dir(stage).string();
      any = true;
    }
  }
  if (any) std::ofstream(record) << adopted.dump(2) << "\n";
}

}  // namespace btx::pipeline
