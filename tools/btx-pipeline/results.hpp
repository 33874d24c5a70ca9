// SPDX-License-Identifier: MIT
// Finished runs' results read back for the reports that span runs (repeats, sweeps): each
// model's held-out numbers per repeat, from every repeat's eval/results.json.
#pragma once

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "config.hpp"

namespace btx::pipeline {

// One model's numbers, one entry per repeat (in repeat order).
struct PerRepeat {
  std::map<std::string, std::vector<double>> loss;  // domain -> per repeat
  std::vector<double> avg_loss, math_exact_match, train_tflop;
};

// Every model of the runs in `dirs` (in the first run's order, into `order`), each holding
// one value per run; a model missing from any run is an error naming it.
inline std::map<std::string, PerRepeat> collect_results(
    const std::vector<std::filesystem::path>& dirs, const std::vector<std::string>& domains,
    std::vector<std::string>& order) {
  std::map<std::string, PerRepeat> models;
  for (size_t k = 0; k < dirs.size(); ++k) {
    const auto file = dirs[k] / "eval" / "results.json";
    std::ifstream in(file);
    if (!in) throw std::runtime_error("report: no " + file.string() + " (has the run finished?)");
    for (const auto& r : nlohmann::json::parse(in)) {
      const std::string name = r.at("name");
      auto& m = models[name];
      if (k == 0) order.push_back(name);
      if (m.avg_loss.size() != k) {
        throw std::runtime_error("report: model '" + name + "' of " + file.string() +
                                 " is missing from an earlier run");
      }
      double sum = 0;
      for (const auto& d : domains) {
        const double l = r.at("loss").at(d).get<double>();
        m.loss[d].push_back(l);
        sum += l;
      }
      m.avg_loss.push_back(sum / double(domains.size()));
      const auto& em = r.at("math_exact_match");
      m.math_exact_match.push_back(em.is_null() ? std::nan("") : em.get<double>());
      m.train_tflop.push_back(r.at("train_flops").get<double>() / 1e12);
    }
  }
  for (const auto& [name, m] : models) {
    if (m.avg_loss.size() != dirs.size()) {
      throw std::runtime_error("report: model '" + name + "' is in " +
                               std::to_string(m.avg_loss.size()) + " of " +
                               std::to_string(dirs.size()) + " runs");
    }
  }
  return models;
}

// The run folders a config's results live in: its own, or one per repeat.
inline std::vector<std::filesystem::path> result_dirs(const PipelineConfig& config) {
  std::vector<std::filesystem::path> dirs;
  for (const auto& run : runs_of(config)) dirs.emplace_back(run.run_dir);
  return dirs;
}

// Stages each run took over from an earlier sweep variant (sweep.hpp's adopt_upstream):
// "stage: source" lines, or empty.
inline std::vector<std::string> adopted_stages(const std::filesystem::path& run_dir) {
  std::ifstream in(run_dir / "adopted.json");
  if (!in) return {};
  const auto j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  std::vector<std::string> out;
  if (!j.is_object()) return out;
  for (const auto& [stage, source] : j.items()) {
    out.push_back(stage + " from " + (source.is_string() ? source.get<std::string>() : "?"));
  }
  return out;
}

inline std::vector<std::string> domain_names_of(const PipelineConfig& config) {
  std::vector<std::string> names;
  for (const auto& d : config.domains) names.push_back(d.name);
  return names;
}

}  // namespace btx::pipeline
