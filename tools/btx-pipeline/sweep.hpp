// SPDX-License-Identifier: MIT
// A sweep: variants of one pipeline config, each run (with its repeats) in <run>/<name>/,
// reported side by side. The config's `sweep` key:
//   sweep:
//     axis: MoE-stage share of BTX's compute    # the plot's x label
//     variants:
//       - {name: share10, x: 0.10, moe_share: 0.10}
//       - {name: share23, x: 0.23, moe_share: 0.23}
// A variant is a name (a folder), an optional x (its position on the plot; default: its
// index) and any keys of the pipeline's config, applied over the rest of the file. A list
// of such sweeps, each with a name (its folder), runs them one after the other (a preset of
// several axes, one command). Every variant is validated before the first one trains, and
// a stage a variant would train the same way as an earlier variant (of any sweep of the
// run, same repeat) is taken over from it instead (adopt_upstream).
#pragma once

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/core/schema.hpp>

#include <btx/recipe/adopt.hpp>
#include <btx/recipe/baselines.hpp>
#include <btx/recipe/branch.hpp>
#include <btx/recipe/btx_stages.hpp>
#include <btx/recipe/finetune.hpp>
#include <btx/recipe/lineage.hpp>
#include <btx/recipe/mix.hpp>

#include "config.hpp"
#include "pipeline_run.hpp"
#include "results.hpp"

namespace btx::pipeline {

struct SweepVariant {
  std::string name;
  double x = 0.0;
  PipelineConfig config;  // the base with the variant's keys applied, run_dir <dir>/<name>
};

struct Sweep {
  std::string name;  // its folder in the run (a list of sweeps); empty: the run folder itself
  std::string axis = "variant";
  std::filesystem::path dir;  // where its variants and its report go
  std::vector<SweepVariant> variants;
};

inline bool folder_safe(const std::string& name) {
  if (name.empty() || name[0] == '.' || name.size() > 100) return false;
  for (const unsigned char c : name) {
    if (!std::isalnum(c) && c != '-' && c != '_' && c != '.') return false;
  }
  return true;
}

namespace detail {

// One sweep ({[name,] axis, variants}) over `base`, its variants in `dir`/<variant>/.
inline Sweep read_sweep(const nlohmann::json& j, const PipelineConfig& base,
                        const std::filesystem::path& dir, const std::string& where) {
  static const auto keys = schema::Schema<Sweep>(where)
                               .key("name", &Sweep::name, "its folder (a list of sweeps)")
                               .key("axis", &Sweep::axis, "the plot's x label")
                               .custom(
                                   "variants", "[{name, x, KEY: VALUE...}]",
                                   [](Sweep&, const nlohmann::json&, const std::string&) {},
                                   [](const Sweep&) { return nlohmann::json(); });
  Sweep sweep = keys.read(j, Sweep{}, where);
  sweep.name.clear();  // set by sweeps_of for a list
  sweep.dir = dir;
  if (!j.contains("variants") || !j.at("variants").is_array() || j.at("variants").empty()) {
    throw std::invalid_argument("config: " + where + ".variants must be a non-empty list");
  }
  std::set<std::string> names;
  for (const auto& v : j.at("variants")) {
    if (!v.is_object() || !v.contains("name") || !v.at("name").is_string()) {
      throw std::invalid_argument("config: every variant of " + where + " needs a name, got " +
                                  v.dump());
    }
    SweepVariant variant;
    variant.name = v.at("name").get<std::string>();
    const std::string at = where + " variant '" + variant.name + "'";
    if (!folder_safe(variant.name)) {
      throw std::invalid_argument("config: " + at +
                                  ": a name is a folder: letters, digits, '-', '_', '.'");
    }
    if (!names.insert(variant.name).second) {
      throw std::invalid_argument("config: " + at + " appears twice");
    }
    variant.x = double(sweep.variants.size());
    if (v.contains("x")) variant.x = schema::detail::decode<double>(v.at("x"), at + ".x");
    nlohmann::json overrides = v;
    overrides.erase("name");
    overrides.erase("x");
    for (const char* key : {"sweep", "run_dir"}) {
      if (overrides.contains(key)) {
        throw std::invalid_argument("config: " + at + " cannot set '" + key + "'");
      }
    }
    try {
      variant.config = apply_config(base, overrides);
      validate(variant.config, seed_spec_of(variant.config).shape);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(at + ": " + e.what());
    }
    variant.config.run_dir = (dir / variant.name).string();
    sweep.variants.push_back(std::move(variant));
  }
  return sweep;
}

}  // namespace detail

// The config's sweeps: one (sweep: {axis, variants}), its variants in <run>/<variant>/, or
// several (sweep: [{name, axis, variants}, ...]), each in <run>/<name>/<variant>/. Every
// variant of every sweep is validated here, before anything trains.
inline std::vector<Sweep> sweeps_of(const PipelineConfig& config) {
  PipelineConfig base = config;
  base.sweep = nullptr;
  const std::filesystem::path run = config.run_dir;
  if (!config.sweep.is_array()) return {detail::read_sweep(config.sweep, base, run, "sweep")};
  if (config.sweep.empty()) throw std::invalid_argument("config: sweep is an empty list");
  std::vector<Sweep> sweeps;
  std::set<std::string> names;
  for (const auto& j : config.sweep) {
    if (!j.is_object() || !j.contains("name") || !j.at("name").is_string()) {
      throw std::invalid_argument("config: every sweep of a list needs a name (its folder), got " +
                                  j.dump().substr(0, 200));
    }
    const std::string name = j.at("name").get<std::string>();
    const std::string where = "sweep '" + name + "'";
    if (!folder_safe(name)) {
      throw std::invalid_argument("config: " + where +
                                  ": a name is a folder: letters, digits, '-', '_', '.'");
    }
    if (!names.insert(name).second) {
      throw std::invalid_argument("config: " + where + " appears twice");
    }
    sweeps.push_back(detail::read_sweep(j, base, run / name, where));
    sweeps.back().name = name;
  }
  return sweeps;
}

// Before `now` runs: every stage `earlier` finished whose upstream config matches now's
// (recipe/stage_graph.hpp: the config without the keys that reach the stage only from
// downstream; the run's own folder, repeats, sweeps, lanes and threads reach none), and the
// evaluation when everything matches, recorded in <now>/adopted.json for the report.
inline void adopt_upstream(const PipelineConfig& earlier, const PipelineConfig& now) {
  // Every merge key of the config (experts_from, averaging, router_init and their options)
  // is read by the mix stage.
  static const bool mix_keys_owned =
      (recipe::btx_graph().add_keys(recipe::kMixStage, merge::merge_choice_keys(mix_keys())), true);
  (void)mix_keys_owned;
  const auto& graph = recipe::btx_graph();
  const auto without_run_keys = [](nlohmann::json j) {
    for (const char* key : {"run_dir", "repeats", "sweep", "stage_jobs", "threads", "max_restarts"})
      j.erase(key);
    return j;
  };
  const auto before = without_run_keys(to_json(earlier)), after = without_run_keys(to_json(now));
  const auto same = [&](const std::string& decl) {
    return graph.upstream_config(before, decl) == graph.upstream_config(after, decl);
  };
  if (!same("seed")) return;
  const recipe::Run from(earlier.run_dir, {}, "pipeline"), to(now.run_dir, {}, "pipeline");
  std::vector<std::string> stages;
  std::vector<std::string> routers = {now.router.name};
  routers.insert(routers.end(), now.extra_routers.begin(), now.extra_routers.end());
  for (const auto& d : graph.declarations()) {
    if (!d.run || !same(d.name)) continue;
    for (const auto& i : graph.instances_of(d, domain_names_of(now), routers)) {
      stages.push_back(i.stage);
    }
  }
  if (before == after) stages.push_back("eval");
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
