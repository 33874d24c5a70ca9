// SPDX-License-Identifier: MIT
// The report of a sweep: every model's average held-out loss per variant (mean ± sd over
// the variant's repeats), the gaps that matter per variant (BTX against each baseline and
// the trunk-averaging penalty, BTM merge minus the seed), orderings only where the repeats
// carry them, a plot against the swept value, and sweep.json with every number.
#include <algorithm>
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

#include "forgetting.hpp"
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

// The sweep's section of a report: tables, gaps, orderings, plot and variants, every link
// relative to the folder the report is in (`prefix`: from there to the sweep's folder).
std::string sweep_markdown(const bp::Sweep& sweep,
                           const std::vector<std::map<std::string, bp::PerRepeat>>& results,
                           const std::vector<std::string>& order, bool plotted,
                           const std::string& prefix, const std::string& heading) {
  std::ostringstream md;
  md << heading << sweep.axis << "\n\n| model |";
  for (const auto& v : sweep.variants) {
    std::ostringstream x;
    x << v.x;  // shortest form: 0.0003, 2400
    md << " " << v.name << " (" << x.str() << ") |";
  }
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
  const auto& first = sweep.variants.front();
  const std::string first_btx = "BTX " + first.config.router.name;
  md << "\nGaps (positive: the first model's loss is higher; `*`: separated). BTX is each "
        "variant's own router; the last column is its BTX against "
     << first.name << "'s (" << first_btx << "), repeat by repeat.\n\n"
     << "| variant | BTX − dense | BTX − sparse upcycling | BTX − BTM ensemble | trunk penalty "
        "(BTM merge − seed) | BTX − "
     << first.name << " BTX |\n|---|---|---|---|---|---|\n";
  for (size_t i = 0; i < sweep.variants.size(); ++i) {
    const auto& r = results[i];
    const std::string btx_name = "BTX " + sweep.variants[i].config.router.name;
    std::string against_first = "-";
    if (i > 0 && r.count(btx_name) && results[0].count(first_btx)) {
      const auto gap = btx::paired_gap(results[0].at(first_btx).avg_loss, r.at(btx_name).avg_loss);
      against_first = btx::format_spread(gap.difference) + (gap.separated ? " *" : "");
    }
    md << "| " << sweep.variants[i].name << " | " << gap_cell(r, btx_name, "dense") << " | "
       << gap_cell(r, btx_name, "sparse upcycling") << " | "
       << gap_cell(r, btx_name, "BTM ensemble") << " | " << gap_cell(r, "BTM merge", "seed")
       << " | " << against_first << " |\n";
  }
  std::ostringstream forgetting;
  for (size_t i = 0; i < sweep.variants.size(); ++i) {
    const auto& c = sweep.variants[i].config;
    const auto table = bp::forgetting_table(results[i], bp::mixes_of(c), bp::domain_names_of(c));
    if (!table.empty()) forgetting << "\n" << sweep.variants[i].name << ":\n\n" << table;
  }
  if (!forgetting.str().empty()) {
    md << "\nWhat each mix forgets (each variant's report explains the columns):\n"
       << forgetting.str();
  }
  md << "\nOrderings:\n\n";
  for (size_t i = 0; i < sweep.variants.size(); ++i) {
    std::map<std::string, std::vector<double>> arms;
    for (const auto& [name, m] : results[i]) {
      if (name.rfind("expert ", 0) != 0) arms[name] = m.avg_loss;  // methods, not experts
    }
    md << "- " << sweep.variants[i].name << ": " << btx::ordering_statement(arms) << "\n";
  }
  md << "\n"
     << (plotted ? "![" + sweep.axis + "](" + prefix + "sweep.png)\n" : "(gnuplot unavailable)\n")
     << "\nVariants (each a run with its own report and learning curves against compute, "
        "`compute_curves.png` in each repeat):\n\n";
  for (const auto& v : sweep.variants) {
    md << "- [" << v.name << "](" << prefix << v.name << "/report.md)";
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
  return md.str();
}

}  // namespace

// Writes <sweep.dir>/report.md, sweep.json and sweep.png; returns the sweep's section for a
// report one folder up (a list of sweeps' combined report).
std::string write_sweep_report(const bp::PipelineConfig& /*config*/, const bp::Sweep& sweep) {
  std::vector<std::map<std::string, bp::PerRepeat>> results;
  std::vector<std::string> order;  // every model, in the order the variants first name them
  for (const auto& v : sweep.variants) {
    // A variant may have domains of its own (a regime sweep): its average is over them.
    std::vector<std::string> variant_order;
    results.push_back(bp::collect_results(bp::result_dirs(v.config), bp::domain_names_of(v.config),
                                          variant_order));
    for (const auto& name : variant_order) {
      if (std::find(order.begin(), order.end(), name) == order.end()) order.push_back(name);
    }
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
  const fs::path dir = sweep.dir;
  fs::create_directories(dir);
  const bool plotted = btx::plot_lines(dir / "sweep.png", "held-out loss against " + sweep.axis,
                                       sweep.axis, "average held-out nats/token", series);
  const std::string intro =
      "Each variant is the base config with its own keys (the variant's resolved config in "
      "`<variant>/config.json`), run with its repeats. Numbers: average held-out loss "
      "(nats/token), mean ± sample standard deviation over the repeats. A `*` marks a gap "
      "whose 95% interval over the repeats (Student's t, per-seed differences) excludes "
      "zero.\n\n";
  std::ofstream(dir / "report.md")
      << "# btx pipeline sweep: " << sweep.axis << "\n\n"
      << intro
      << sweep_markdown(sweep, results, order, plotted, "", "## Average held-out loss against ");

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
  return sweep_markdown(sweep, results, order, plotted, sweep.name + "/",
                        "## " + sweep.name + ": ");
}

// A list of sweeps: <run>/report.md with every sweep's section (each sweep keeps its own
// report in its folder).
int write_sweeps_report(const bp::PipelineConfig& config, const std::vector<bp::Sweep>& sweeps) {
  std::ostringstream md;
  md << "# btx pipeline sweeps\n\n"
     << "Every sweep varies the base config (`config.json`) along one axis; each variant is run "
        "with its repeats, and a stage a variant would train exactly as an earlier variant (of "
        "any sweep, same seed) did is taken over from it. Numbers: average held-out loss "
        "(nats/token), mean ± sample standard deviation over the repeats; `*` marks a gap whose "
        "95% interval over the repeats (Student's t, per-seed differences) excludes zero.\n\n";
  for (const auto& sweep : sweeps) md << write_sweep_report(config, sweep) << "\n";
  const fs::path out = fs::path(config.run_dir) / "report.md";
  std::ofstream(out) << md.str();
  std::fprintf(stderr, "[pipeline] sweeps report: %s\n", out.c_str());
  return 0;
}
