// SPDX-License-Identifier: MIT
// The report of a run with repeats > 1: every model's held-out loss as mean ± sample
// standard deviation over the repeats (seeds), orderings stated only where the per-seed gaps
// carry them (btx/report/repeats.hpp), and repeats.json with every repeat's numbers.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/report/repeats.hpp>

#include "config.hpp"
#include "forgetting.hpp"
#include "report.hpp"
#include "results.hpp"

namespace bp = btx::pipeline;
namespace fs = std::filesystem;

namespace {

std::string table(const std::map<std::string, bp::PerRepeat>& models,
                  const std::vector<std::string>& order, const std::vector<std::string>& domains) {
  std::ostringstream t;
  t << "| model |";
  for (const auto& d : domains) t << " " << d << " loss |";
  t << " avg loss | math EM | train TFLOP |\n|---|";
  for (size_t i = 0; i < domains.size() + 3; ++i) t << "---|";
  t << "\n";
  for (const auto& name : order) {
    const auto& m = models.at(name);
    t << "| " << name << " |";
    for (const auto& d : domains)
      t << " " << btx::format_spread(btx::spread_of(m.loss.at(d))) << " |";
    std::vector<double> em;
    for (double v : m.math_exact_match)
      if (!std::isnan(v)) em.push_back(v);
    t << " " << btx::format_spread(btx::spread_of(m.avg_loss)) << " | "
      << btx::format_spread(btx::spread_of(em), 2) << " | "
      << btx::format_spread(btx::spread_of(m.train_tflop), 4) << " |\n";
  }
  return t.str();
}

}  // namespace

int write_repeats_report(const bp::PipelineConfig& config) {
  const auto dirs = bp::result_dirs(config);
  const auto domains = bp::domain_names_of(config);
  std::vector<std::string> order;
  const auto models = bp::collect_results(dirs, domains, order);

  std::map<std::string, std::vector<double>> avg;
  for (const auto& [name, m] : models) avg[name] = m.avg_loss;
  const std::string btx_name = "BTX " + config.router.name;
  const auto n = std::to_string(dirs.size());

  const fs::path run_dir = config.run_dir;
  std::ofstream md(run_dir / "report.md");
  md << "# btx pipeline report: " << n << " repeats\n\n"
     << "Seeds " << config.seed << " to " << config.seed + uint64_t(dirs.size()) - 1
     << ", each a complete run (seed model, experts, MoE stage, baselines) with its own "
        "report in `seed-<s>/`. Numbers are mean ± sample standard deviation over the "
     << n
     << " repeats. Every repeat evaluates on the same held-out documents, so two models are "
        "compared repeat by repeat: a gap counts when the 95% confidence interval of the mean "
        "per-seed difference (Student's t) excludes zero.\n\n"
     << "## Held-out loss per domain (nats/token)\n\n"
     << table(models, order, domains) << "\n## Ordering by average held-out loss\n\n"
     << btx::ordering_statement(avg)
     << "\n\n`<`: the gap to the next model is separated (its 95% interval over the repeats "
        "excludes zero); `≈`: it is not (within the noise of "
     << n << " seeds).\n\nPer domain:\n\n";
  for (const auto& d : domains) {
    std::map<std::string, std::vector<double>> arms;
    for (const auto& [name, m] : models) arms[name] = m.loss.at(d);
    md << "- " << d << ": " << btx::ordering_statement(arms) << "\n";
  }
  if (models.count(btx_name)) {
    md << "\n## " << btx_name << " against every other model\n\n"
       << "| model | avg loss minus " << btx_name
       << " (per-seed mean ± sd) | 95% interval | separated |\n"
       << "|---|---|---|---|\n";
    for (const auto& name : order) {
      if (name == btx_name) continue;
      const auto gap = btx::paired_gap(avg.at(btx_name), avg.at(name));
      md << "| " << name << " | " << btx::format_spread(gap.difference) << " | "
         << (std::isnan(gap.half_width) ? "-" : "± " + bp::fmt(gap.half_width)) << " | "
         << (gap.separated ? (gap.difference.mean > 0 ? "yes: BTX lower" : "yes: BTX higher")
                           : "no")
         << " |\n";
    }
  }
  if (const auto forgetting = bp::forgetting_table(models, bp::mixes_of(config), domains);
      !forgetting.empty()) {
    md << "\n## What the mix forgets\n\n" << bp::kForgettingIntro << forgetting;
  }
  md << "\n## Repeats\n\n";
  for (const auto& d : dirs) {
    const auto name = d.filename().string();
    md << "- [" << name << "](" << name << "/report.md)\n";
  }

  nlohmann::json j = {{"seeds", nlohmann::json::array()}, {"models", nlohmann::json::object()}};
  for (size_t k = 0; k < dirs.size(); ++k) j["seeds"].push_back(config.seed + k);
  for (const auto& [name, m] : models) {
    nlohmann::json em = nlohmann::json::array();
    for (double v : m.math_exact_match)
      em.push_back(std::isnan(v) ? nlohmann::json() : nlohmann::json(v));
    j["models"][name] = {{"loss", m.loss},
                         {"avg_loss", m.avg_loss},
                         {"math_exact_match", em},
                         {"train_tflop", m.train_tflop}};
  }
  std::ofstream(run_dir / "repeats.json") << j.dump(2) << "\n";
  std::fprintf(stderr, "[pipeline] report over %s repeats: %s\n\n%s\nordering: %s\n", n.c_str(),
               (run_dir / "report.md").c_str(), table(models, order, domains).c_str(),
               btx::ordering_statement(avg).c_str());
  return 0;
}
