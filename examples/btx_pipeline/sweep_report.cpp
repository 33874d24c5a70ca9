// SPDX-License-Identifier: MIT
// The report of a sweep: every model's average held-out loss per variant (mean ± sd over
// the variant's repeats), the gaps that matter per variant (BTX against each baseline and
// the trunk-averaging penalty, BTM merge minus the seed), orderings only where the repeats
// carry them, a plot against the swept value, and sweep.json with every number.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/report/gnuplot.hpp>
#include <btx/report/repeats.hpp>

#include "report.hpp"
#include "results.hpp"
#include "sweep.hpp"

namespace bp = btx::pipeline;
namespace fs = std::filesystem;

namespace {

// "0.123 ± 0.004*" where the paired gap is separated (its 95% interval excludes zero).
std::string gap_cell(const std::map<std::string, bp::PerRepeat>& models, const std::string& from,
                     const std::string& minus) {
  if (!models.count(from) || !models.count(minus)) return "-";
  const auto gap = btx::paired_gap(models.at(minus).avg_loss, models.at(from).avg_loss);
  return btx::format_spread(gap.difference) + (gap.separated ? " *" : "");
}

// The MoE stage's steps as the variant ran them (moe_share derives them when the run opens).
int64_t finetune_steps_run(const bp::PipelineConfig& config) {
  std::ifstream in(bp::result_dirs(config).front() / "config.json");
  return in ? nlohmann::json::parse(in).at("finetune_stage").at("steps").get<int64_t>()
            : config.finetune_stage.steps;
}

}  // namespace

int write_sweep_report(const bp::PipelineConfig& config, const bp::Sweep& sweep) {
  const auto domains = bp::domain_names_of(config);
  std::vector<std::map<std::string, bp::PerRepeat>> results;
  std::vector<std::string> order;  // the models of the first variant, in its order
  for (const auto& v : sweep.variants) {
    std::vector<std::string> variant_order;
    results.push_back(bp::collect_results(bp::result_dirs(v.config), domains, variant_order));
    if (order.empty()) order = variant_order;
  }
  const std::string btx_name = "BTX " + config.router;

  std::ostringstream md;
  md << "# btx pipeline sweep: " << sweep.axis << "\n\n"
     << "Each variant is the base config with its own keys (`config.json` here; the variant's "
        "own in `<variant>/config.json`), run with its repeats. Numbers: average held-out loss "
        "(nats/token), mean ± sample standard deviation over the repeats. A `*` marks a gap "
        "whose 95% interval over the repeats (Student's t, per-seed differences) excludes "
        "zero.\n\n| model |";
  for (const auto& v : sweep.variants) md << " " << v.name << " (" << bp::fmt(v.x, 3) << ") |";
  md << "\n|---|";
  for (size_t i = 0; i < sweep.variants.size(); ++i) md << "---|";
  md << "\n";
  for (const auto& name : order) {
    md << "| " << name << " |";
    for (const auto& r : results) {
      md << " " << (r.count(name) ? btx::format_spread(btx::spread_of(r.at(name).avg_loss)) : "-")
         << " |";
    }
    md << "\n";
  }
  md << "\n## Gaps per variant\n\n"
     << "Positive: the first model's loss is higher. The trunk penalty is BTM merge minus the "
        "seed: what averaging the experts' non-FFN parameters costs before any finetuning.\n\n"
     << "| variant | " << btx_name << " − dense | " << btx_name << " − sparse upcycling | "
     << btx_name << " − BTM ensemble | trunk penalty |\n|---|---|---|---|---|\n";
  for (size_t i = 0; i < sweep.variants.size(); ++i) {
    const auto& r = results[i];
    md << "| " << sweep.variants[i].name << " | " << gap_cell(r, btx_name, "dense") << " | "
       << gap_cell(r, btx_name, "sparse upcycling") << " | "
       << gap_cell(r, btx_name, "BTM ensemble") << " | " << gap_cell(r, "BTM merge", "seed")
       << " |\n";
  }
  md << "\n## Orderings per variant\n\n";
  for (size_t i = 0; i < sweep.variants.size(); ++i) {
    std::map<std::string, std::vector<double>> arms;
    for (const auto& [name, m] : results[i]) {
      if (name.rfind("expert ", 0) != 0) arms[name] = m.avg_loss;  // methods, not experts
    }
    md << "- " << sweep.variants[i].name << ": " << btx::ordering_statement(arms) << "\n";
  }

  // Each method's mean against the swept value (experts left out: one line per method).
  btx::Series series;
  for (const auto& name : order) {
    if (name.rfind("expert ", 0) == 0) continue;
    for (size_t i = 0; i < sweep.variants.size(); ++i) {
      if (results[i].count(name)) {
        series[name].emplace_back(sweep.variants[i].x,
                                  btx::spread_of(results[i].at(name).avg_loss).mean);
      }
    }
  }
  const fs::path dir = config.run_dir;
  const bool plotted = btx::plot_lines(dir / "sweep.png", "held-out loss against " + sweep.axis,
                                       sweep.axis, "average held-out nats/token", series);
  md << "\n"
     << (plotted ? "![sweep](sweep.png)\n" : "(gnuplot unavailable)\n") << "\n## Variants\n\n";
  for (const auto& v : sweep.variants) {
    md << "- [" << v.name << "](" << v.name << "/report.md)";
    size_t shared = 0;
    std::string example;
    for (const auto& dir : bp::result_dirs(v.config)) {
      const auto adopted = bp::adopted_stages(dir);
      shared += adopted.size();
      if (example.empty() && !adopted.empty()) example = adopted.front();
    }
    if (shared > 0) {
      md << ": " << shared << " finished stages taken over from earlier variants with the same "
         << "config up to them (e.g. " << example << "; `adopted.json` in each run)";
    }
    md << "\n";
  }
  std::ofstream(dir / "report.md") << md.str();

  nlohmann::json j = {{"axis", sweep.axis}, {"variants", nlohmann::json::array()}};
  for (size_t i = 0; i < sweep.variants.size(); ++i) {
    nlohmann::json models = nlohmann::json::object();
    for (const auto& [name, m] : results[i]) {
      models[name] = {{"avg_loss", m.avg_loss}, {"loss", m.loss}, {"train_tflop", m.train_tflop}};
    }
    j["variants"].push_back({{"name", sweep.variants[i].name},
                             {"x", sweep.variants[i].x},
                             {"repeats", sweep.variants[i].config.repeats},
                             {"finetune_steps", finetune_steps_run(sweep.variants[i].config)},
                             {"models", models}});
  }
  std::ofstream(dir / "sweep.json") << j.dump(2) << "\n";
  std::fprintf(stderr, "[pipeline] sweep report: %s\n", (dir / "report.md").c_str());
  return 0;
}
