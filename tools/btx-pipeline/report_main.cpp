// SPDX-License-Identifier: MIT
// The eval stage and the report: results.json (cached, so a re-run does not re-evaluate),
// metrics.jsonl (every stage's logged steps), pictures, report.md.
#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <btx/recipe/baselines.hpp>
#include <btx/recipe/btx_stages.hpp>
#include <btx/recipe/finetune.hpp>
#include <btx/recipe/lineage.hpp>

#include "evaluation.hpp"
#include "forgetting.hpp"
#include "pipeline_run.hpp"
#include "report.hpp"

namespace bp = btx::pipeline;
namespace fs = std::filesystem;

namespace {

nlohmann::json to_json(const bp::Evaluated& e) {
  const auto& r = e.result;
  return {{"name", r.name},
          {"kind", r.kind},
          {"loss", r.loss},
          {"math_exact_match", std::isnan(r.math_exact_match) ? nlohmann::json(nullptr)
                                                              : nlohmann::json(r.math_exact_match)},
          {"train_flops", r.train_flops},
          {"train_tokens", r.train_tokens},
          {"train_seconds", r.train_seconds},
          {"samples", r.samples},
          {"routing", e.routing}};
}

bp::Evaluated from_json(const nlohmann::json& j) {
  bp::Evaluated e;
  e.result.name = j["name"];
  e.result.kind = j["kind"];
  e.result.loss = j["loss"].get<std::map<std::string, double>>();
  e.result.math_exact_match =
      j["math_exact_match"].is_null() ? std::nan("") : j["math_exact_match"].get<double>();
  e.result.train_flops = j["train_flops"];
  e.result.train_tokens = j["train_tokens"];
  e.result.train_seconds = j["train_seconds"];
  e.routing = j["routing"].get<bp::RoutingShares>();
  if (j.contains("samples")) e.result.samples = j["samples"].get<std::vector<std::string>>();
  return e;
}

std::string slug(std::string s) {
  for (auto& c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return s;
}

}  // namespace

int write_report(const bp::PipelineRun& p) {
  const auto& run = p.run();
  const auto eval_dir = run.stage_dir("eval");
  fs::create_directories(eval_dir);
  std::vector<bp::Evaluated> results;
  if (run.skip_if_done("eval")) {
    std::ifstream in(eval_dir / "results.json");
    for (const auto& j : nlohmann::json::parse(in)) results.push_back(from_json(j));
  } else {
    btx::ProgressLine progress("eval", 1);
    results = bp::evaluate_all(p);
    auto all = nlohmann::json::array();
    for (const auto& e : results) all.push_back(to_json(e));
    std::ofstream(eval_dir / "results.json") << all.dump(2) << "\n";
    progress.finish(std::to_string(results.size()) + " models evaluated");
    run.mark_done("eval", {{"models", results.size()}});
  }

  // metrics.jsonl: every stage's logged steps, in stage order.
  std::vector<nlohmann::json> records;
  std::ofstream metrics(run.dir() / "metrics.jsonl");
  for (const auto& entry : fs::directory_iterator(run.dir())) {
    const auto file = entry.path() / "metrics.jsonl";
    if (!fs::exists(file)) continue;
    std::ifstream in(file);
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      metrics << line << "\n";
      records.push_back(nlohmann::json::parse(line));
    }
  }
  std::sort(records.begin(), records.end(), [](const auto& a, const auto& b) {
    return std::pair(a["stage"].template get<std::string>(), a["step"].template get<int64_t>()) <
           std::pair(b["stage"].template get<std::string>(), b["step"].template get<int64_t>());
  });
  const bool curves = bp::plot_loss_curves(run.dir() / "loss_curves.png", records);
  // Held-out curves against compute: a stage's curve starts where the compute of what it
  // is made from ends (BTX's MoE stage after its experts'); the experts' curves are drawn
  // as one, each on its own domain.
  std::map<std::string, double> offset;
  std::map<std::string, std::string> expert_domain;
  for (const auto& [d, i] :
       btx::recipe::btx_graph().instances(p.domain_names(), p.routers(), p.recipe.selection())) {
    if (!d.run || d.phase == btx::recipe::btx_phases().front() || !run.done(i.stage)) continue;
    if (d.each == btx::recipe::Each::domain) expert_domain[i.stage] = i.domain;
    double before = 0;
    for (const auto& s : bp::compute_stages(d, i, p)) {
      if (s != i.stage) before += run.record(s).value("flops", 0.0);
    }
    offset[i.stage] = before / 1e12;
  }
  const bool compute_curves =
      p.config.curve_every > 0 &&
      bp::plot_compute_curves(run.dir() / "compute_curves.png", records, offset, expert_domain);

  std::vector<bp::ModelResult> rows;
  for (const auto& e : results) rows.push_back(e.result);
  const auto domains = p.domain_names();
  std::ofstream md(run.dir() / "report.md");
  md << "# btx pipeline report\n\nRun folder: `" << run.dir().string()
     << "`. Config: `config.json`; "
     << "data: `manifest.json` (every file read, with its size and FNV-1a hash).\n\n"
     << "## Held-out loss per domain (nats/token; perplexity in brackets)\n\n"
     << "Compute is the training after the seed, the budget every method shares: BTX = the "
        "experts + the MoE finetune; dense and sparse upcycling spend the same FLOPs; BTM "
        "spends only the experts'.\n\n"
     << bp::results_table(rows, domains) << "\n";
  for (const auto& r : rows) md << "- **" << r.name << "**: " << r.kind << "\n";
  // Experts from outside: where each came from and whether its cost is in the budget.
  for (const auto& e : p.config.experts) {
    md << "- **expert " << e.domain << "** was not trained here: it is `" << e.checkpoint << "`"
       << (e.flops ? ", whose training cost (given) counts in BTX's compute"
                   : "; its training cost is unknown and counted as 0, so BTX's compute and "
                     "the baselines' equal budget leave it out")
       << "\n";
  }
  {
    std::vector<std::string> order;
    const auto models = bp::collect_results({run.dir()}, domains, order);
    const auto forgetting = bp::forgetting_table(models, bp::mixes_of(p.config), domains);
    if (!forgetting.empty()) {
      md << "\n## What the mix forgets\n\n" << bp::kForgettingIntro << forgetting;
    }
  }
  md << "\n## Routing analysis\n\nShare of each domain's routed tokens per expert and layer "
        "(held-out text, inference mode). Experts: ";
  const auto btx_experts = p.expert_names();
  for (size_t e = 0; e < btx_experts.size(); ++e)
    md << (e ? ", " : "") << "`" << btx_experts[e] << "`";
  md << " (the last is the seed, the generalist).\n\n";
  for (const auto& e : results) {
    if (e.routing.empty()) continue;
    md << "### " << e.result.name << "\n\n";
    // Sparse upcycling keeps one expert per domain (and the seed's) when BTX splits or
    // blends its experts: its columns are numbered.
    auto experts = e.experts.empty() ? btx_experts : e.experts;
    if (const size_t E = e.routing.begin()->second.front().size(); E != experts.size()) {
      experts.clear();
      for (size_t j = 0; j < E; ++j) experts.push_back("expert " + std::to_string(j));
    }
    for (const auto& file : bp::plot_routing(run.dir(), slug(e.result.name), e.routing, experts)) {
      md << "![routing](" << file << ")\n";
    }
    const auto warnings =
        bp::dead_expert_warnings(e.routing, experts, 1.0 / (4.0 * double(experts.size())));
    for (const auto& w : warnings) {
      md << "\n> warning: " << w << "\n";
      std::fprintf(stderr, "[pipeline] warning (%s): %s\n", e.result.name.c_str(), w.c_str());
    }
    md << "\n";
  }
  if (!p.config.sample_prompts.empty()) {
    md << "## Samples\n\nEach model's greedy continuation (" << p.config.sample_tokens
       << " tokens) of each prompt; also in `eval/results.json`.\n\n";
    for (size_t i = 0; i < p.config.sample_prompts.size(); ++i) {
      md << "### Prompt " << i + 1 << "\n\n```text\n" << p.config.sample_prompts[i] << "\n```\n\n";
      for (const auto& r : rows) {
        if (i >= r.samples.size()) continue;
        md << "**" << r.name << "**:\n\n```text\n"
           << p.config.sample_prompts[i] << r.samples[i] << "\n```\n\n";
      }
    }
  }
  md << "## Held-out loss against training compute\n\n";
  if (compute_curves) {
    md << "Average held-out loss during training (the first " << p.config.curve_windows
       << " held-out windows of each domain, every " << p.config.curve_every
       << " steps; the table above uses " << p.config.eval_windows
       << ") over the compute after the seed. The experts train in parallel: their curve is "
          "their summed compute against the mean of each expert's loss on its own domain; "
          "BTX's MoE stage starts where that compute ends. Data: `compute_curves.dat`.\n\n"
          "![held-out loss against compute](compute_curves.png)\n\n";
  } else {
    md << (p.config.curve_every > 0 ? "(gnuplot unavailable)\n\n"
                                    : "(curve_every: 0, no learning curves)\n\n");
  }
  md << "## Loss curves\n\n"
     << (curves ? "![loss curves](loss_curves.png)\n" : "(gnuplot unavailable)\n")
     << "\n## Checkpoints\n\nEvery stage's model is a Hugging Face checkpoint in `<stage>/model/`; "
        "the final BTX model (`btx-"
     << p.config.router.name << "/model/`) is its family's MoE checkpoint.\n";
  std::fprintf(stderr, "[pipeline] report: %s\n\n%s", (run.dir() / "report.md").c_str(),
               bp::results_table(rows, domains).c_str());
  return 0;
}
