// SPDX-License-Identifier: MIT
// The run report: a model x domain table of held-out loss/perplexity, math exact match and
// compute; the routing analysis (per domain and layer, each expert's share of tokens) as
// heatmaps with dead-expert warnings; loss curves of every stage; all tied together in
// report.md, with metrics.jsonl holding every logged step.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/train/routing_shares.hpp>

#include <btx/report/gnuplot.hpp>

namespace btx::pipeline {

struct ModelResult {
  std::string name;                    // "BTX top2", "dense", ...
  std::string kind;                    // what it is, one line
  std::map<std::string, double> loss;  // domain -> mean nats/token
  double math_exact_match = std::nan("");
  double train_flops = 0.0;  // compute spent after the seed (the equal-compute budget)
  int64_t train_tokens = 0;
  double train_seconds = 0.0;
  std::vector<std::string> samples;  // greedy continuation of each of the config's prompts
};

// shares[domain][layer][expert]: fraction of the domain's routed assignments.
using btx::RoutingShares;

inline std::string fmt(double v, int digits = 3) {
  if (std::isnan(v)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

inline std::string results_table(const std::vector<ModelResult>& models,
                                 const std::vector<std::string>& domains) {
  std::ostringstream t;
  t << "| model |";
  for (const auto& d : domains) t << " " << d << " loss (ppl) |";
  t << " avg loss | math EM | train TFLOP | tokens | seconds |\n|---|";
  for (size_t i = 0; i < domains.size() + 5; ++i) t << "---|";
  t << "\n";
  for (const auto& m : models) {
    t << "| " << m.name << " |";
    double sum = 0;
    for (const auto& d : domains) {
      const double l = m.loss.count(d) ? m.loss.at(d) : std::nan("");
      sum += l;
      t << " " << fmt(l) << " (" << fmt(std::exp(l), 2) << ") |";
    }
    t << " " << fmt(sum / double(domains.size())) << " | " << fmt(m.math_exact_match, 2) << " | "
      << fmt(m.train_flops / 1e12, 3) << " | " << m.train_tokens << " | " << fmt(m.train_seconds, 1)
      << " |\n";
  }
  return t.str();
}

// Warnings for experts whose share of a domain-averaged layer falls below `dead`.
inline std::vector<std::string> dead_expert_warnings(const RoutingShares& shares,
                                                     const std::vector<std::string>& expert_names,
                                                     double dead = 0.01) {
  std::vector<std::string> out;
  if (shares.empty()) return out;
  const size_t layers = shares.begin()->second.size();
  for (size_t l = 0; l < layers; ++l) {
    for (size_t e = 0; e < expert_names.size(); ++e) {
      double mean = 0;
      for (const auto& [domain, per_layer] : shares) mean += per_layer[l][e];
      mean /= double(shares.size());
      if (mean < dead) {
        out.push_back("layer " + std::to_string(l) + ": expert '" + expert_names[e] +
                      "' receives " + fmt(100 * mean, 2) + "% of tokens (dead expert)");
      }
    }
  }
  return out;
}

// One heatmap per layer: rows = domains, columns = experts; for a deep model (more than
// kRoutingPlotsPerLayer layers: SmolLM2 has 30) one per domain instead, rows = layers.
constexpr size_t kRoutingPlotsPerLayer = 8;
inline std::vector<std::string> plot_routing(const std::filesystem::path& dir,
                                             const std::string& model, const RoutingShares& shares,
                                             const std::vector<std::string>& expert_names) {
  std::vector<std::string> files;
  if (shares.empty()) return files;
  std::vector<std::string> rows;
  for (const auto& [domain, _] : shares) rows.push_back(domain);
  const size_t layers = shares.begin()->second.size();
  if (layers > kRoutingPlotsPerLayer) {
    std::vector<std::string> layer_rows;
    for (size_t l = 0; l < layers; ++l) layer_rows.push_back("layer " + std::to_string(l));
    for (const auto& [domain, per_layer] : shares) {
      const std::string file = "routing_" + model + "_" + domain + ".png";
      plot_heatmap(dir / file, model + ": share of " + domain + " tokens per expert and layer",
                   layer_rows, expert_names, per_layer);
      files.push_back(file);
    }
    return files;
  }
  for (size_t l = 0; l < layers; ++l) {
    std::vector<std::vector<double>> grid;
    for (const auto& [domain, per_layer] : shares) grid.push_back(per_layer[l]);
    const std::string file = "routing_" + model + "_layer" + std::to_string(l) + ".png";
    plot_heatmap(dir / file, model + ": share of tokens per expert, layer " + std::to_string(l),
                 rows, expert_names, grid);
    files.push_back(file);
  }
  return files;
}

// Loss curves from metrics.jsonl records {"stage","step","loss"}.
inline bool plot_loss_curves(const std::filesystem::path& png,
                             const std::vector<nlohmann::json>& records) {
  Series series;
  for (const auto& r : records) {
    if (r.contains("loss") && r.contains("stage") && r.contains("step")) {
      series[r["stage"].get<std::string>()].emplace_back(r["step"].get<double>(),
                                                         r["loss"].get<double>());
    }
  }
  return !series.empty() &&
         plot_lines(png, "training loss per stage", "step", "nats/token", series);
}

// Learning curves against compute, as the paper's efficiency figure draws them: held-out
// average loss (metrics records with "held_out" and "flops") over training TFLOPs after the
// seed. `offset` shifts a stage's curve (BTX's MoE stage starts where its experts' compute
// ends); stages in `experts` train in parallel and are drawn as one curve: their summed
// compute against the mean of each expert's loss on its own domain (`expert_domain`).
inline bool plot_compute_curves(const std::filesystem::path& png,
                                const std::vector<nlohmann::json>& records,
                                const std::map<std::string, double>& offset,
                                const std::map<std::string, std::string>& expert_domain) {
  Series series;
  std::map<int64_t, std::pair<double, std::vector<double>>> experts;  // step -> flops, losses
  for (const auto& r : records) {
    if (!r.contains("held_out") || !r.contains("flops")) continue;
    const std::string stage = r["stage"];
    const double tflop = r["flops"].get<double>() / 1e12;
    if (const auto e = expert_domain.find(stage); e != expert_domain.end()) {
      auto& [flops, losses] = experts[r["step"].get<int64_t>()];
      flops += tflop;
      losses.push_back(r["held_out"]["loss"][e->second].get<double>());
    } else if (const auto o = offset.find(stage); o != offset.end()) {
      series[stage].emplace_back(o->second + tflop, r["held_out"]["avg"].get<double>());
    }
  }
  for (const auto& [step, point] : experts) {
    if (point.second.size() != expert_domain.size()) continue;  // a step some expert lacks
    double sum = 0;
    for (double l : point.second) sum += l;
    series["experts, each on its own domain"].emplace_back(point.first,
                                                           sum / double(point.second.size()));
  }
  return !series.empty() &&
         plot_lines(png, "held-out loss against training compute after the seed",
                    "training TFLOP after the seed", "held-out nats/token", series);
}

}  // namespace btx::pipeline
