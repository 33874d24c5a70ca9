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
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

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

}  // namespace btx::pipeline
