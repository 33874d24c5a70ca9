// SPDX-License-Identifier: MIT
// What btx-train says about a finished run: the model card that goes into the trained
// checkpoint (what trained, on which files by content hash, for how long, the held-out
// loss before and after per domain) and <run>/<stage>/report.md beside it (the same
// numbers, the held-out curves from metrics.jsonl and, for an MoE, a routing heatmap per
// domain: each layer's share of the domain's tokens per expert).
#pragma once

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/data/corpus.hpp>
#include <btx/hf/model_card.hpp>
#include <btx/report/gnuplot.hpp>
#include <btx/train/routing_shares.hpp>

#include "config.hpp"

namespace btx::train_tool {

struct TrainedRun {
  const TrainConfig& config;
  const Corpus& corpus;
  const nlohmann::json& record;  // stage.json
  const nlohmann::json& before;  // held_out_losses of the checkpoint as given
  const nlohmann::json& after;   // ... and as trained
  const RoutingShares& routing;  // empty for a dense model
};

namespace detail {

inline std::string fixed(double v, int digits = 4) {
  char out[32];
  std::snprintf(out, sizeof out, "%.*f", digits, v);
  return out;
}

inline std::string held_out_table(const TrainedRun& r) {
  std::ostringstream t;
  t << "| domain | weight | train tokens | held-out tokens | loss before | loss after |\n"
    << "|---|---|---|---|---|---|\n";
  for (const auto& d : r.corpus.domains) {
    t << "| " << hf::table_cell(d.name) << " | " << fixed(d.weight, 2) << " | "
      << d.train_tokens.numel() << " | " << d.eval_tokens.numel() << " | "
      << fixed(r.before["loss"][d.name].get<double>()) << " | "
      << fixed(r.after["loss"][d.name].get<double>()) << " |\n";
  }
  t << "| average | | | | " << fixed(r.before["avg"].get<double>()) << " | "
    << fixed(r.after["avg"].get<double>()) << " |\n";
  return t.str();
}

inline std::string data_table(const TrainedRun& r) {
  std::ostringstream t;
  t << "| domain | file | split | bytes | FNV-1a 64 |\n|---|---|---|---|---|\n";
  const auto files = r.corpus.manifest_json();
  for (const auto& f : files["files"]) {
    t << "| " << hf::table_cell(f["domain"].get<std::string>()) << " | "
      << hf::table_cell(f["path"].get<std::string>()) << " | " << f["split"].get<std::string>()
      << " | " << f["bytes"].get<uint64_t>() << " | `" << f["fnv1a64"].get<std::string>()
      << "` |\n";
  }
  return t.str();
}

inline std::string training_summary(const TrainedRun& r) {
  const auto& c = r.config;
  std::ostringstream t;
  t << "- trained: **" << c.trains << "** (" << r.record["trainable_values"].get<int64_t>()
    << " of "
    << r.record["trainable_values"].get<int64_t>() + r.record["frozen_values"].get<int64_t>()
    << " values; the rest unchanged bit for bit)\n"
    << "- " << r.record["steps"].get<int64_t>() << " steps, " << r.record["tokens"].get<int64_t>()
    << " tokens (batch " << c.batch_size << " x " << c.seq_len << "), "
    << fixed(r.record["seconds"].get<double>(), 1) << " s on " << r.record["ranks"].get<int64_t>()
    << " rank(s) of " << r.record.value("threads", int64_t(1)) << " thread(s), "
    << r.record.value("precision", c.precision) << " on " << c.device << "\n"
    << "- AdamW, peak lr " << c.lr << ", " << c.warmup << " warmup steps, " << c.schedule
    << " schedule" << (c.schedule == "cosine" ? " to " + fixed(c.lr_floor, 2) + " x lr" : "")
    << ", weight decay " << c.weight_decay << "\n"
    << "- documents packed with EOS after each, tokenised by the checkpoint's own tokenizer\n";
  return t.str();
}

}  // namespace detail

inline std::string model_card(const TrainedRun& r) {
  hf::ModelCard card;
  card.title = r.config.stage + " of " + std::filesystem::path(r.config.model).filename().string();
  card.license = hf::card_license(r.config.model);
  card.base_models = {r.config.model};
  card.tags = {"btx", "btx-train"};
  card.summary = "`" + r.config.model + "` trained by btx-train (" + r.config.trains + ") on " +
                 std::to_string(r.corpus.domains.size()) + " domain(s).";
  card.sections = {{"Training", detail::training_summary(r)},
                   {"Held-out loss (nats per token)", detail::held_out_table(r)},
                   {"Data", detail::data_table(r)}};
  return card.render();
}

// report.md, the held-out curve (held_out.png) and routing heatmaps in `stage_dir`.
inline void write_report(const std::filesystem::path& stage_dir, const TrainedRun& r) {
  std::ostringstream md;
  md << "# btx-train: " << r.config.stage << "\n\n"
     << detail::training_summary(r) << "\n"
     << "## Held-out loss (nats per token)\n\n"
     << detail::held_out_table(r) << "\n";
  // The curve: metrics.jsonl's held_out records, one line per domain.
  Series curve;
  std::ifstream metrics(stage_dir / "metrics.jsonl");
  for (std::string line; std::getline(metrics, line);) {
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("held_out") || !j.contains("step")) continue;
    for (const auto& [domain, loss] : j["held_out"]["loss"].items()) {
      curve[domain].emplace_back(j["step"].get<double>(), loss.get<double>());
    }
  }
  if (!curve.empty() && plot_lines(stage_dir / "held_out.png", "held-out loss per domain", "step",
                                   "nats per token", curve)) {
    md << "![held-out loss](held_out.png)\n\n";
  }
  if (!r.routing.empty()) {
    md << "## Routing (share of each domain's held-out tokens per expert)\n\n";
    nlohmann::json routing = r.routing;
    std::ofstream(stage_dir / "routing.json") << routing.dump(2) << "\n";
    for (const auto& [domain, layers] : r.routing) {
      std::vector<std::string> rows, cols;
      for (size_t l = 0; l < layers.size(); ++l) rows.push_back("layer " + std::to_string(l));
      for (size_t e = 0; e < (layers.empty() ? 0 : layers.front().size()); ++e) {
        cols.push_back("expert " + std::to_string(e));
      }
      const auto png = "routing_" + domain + ".png";
      if (plot_heatmap(stage_dir / png, "routing of " + domain, rows, cols, layers)) {
        md << "![routing of " << domain << "](" << png << ")\n\n";
      }
    }
    md << "Numbers: routing.json (domain -> [layer][expert]).\n";
  }
  std::ofstream(stage_dir / "report.md") << md.str();
}

}  // namespace btx::train_tool
