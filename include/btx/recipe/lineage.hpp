// SPDX-License-Identifier: MIT
// Lineage of a run's experts, kept in its stage records: the Branch stage records the
// parent (its name and weights_fingerprint) and one ExpertInfo per expert; each expert's
// stage.json carries its ExpertInfo under "expert" once trained (steps, tokens, FLOPs),
// so Mix, the budget matching and a reader of the run folder can say what came from what.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <btx/merge/expert_info.hpp>
#include <btx/recipe/run.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace recipe {

inline constexpr const char* kBranchStage = "branch";

// The stage that trains expert `name`.
inline std::string expert_stage(const std::string& name) {
  return "expert-" + name;
}

// What the Branch stage records.
struct BranchRecord {
  std::string parent;                      // the model the experts copy, e.g. "seed"
  std::string parent_fingerprint;          // merge::weights_fingerprint of it at branch time
  std::vector<merge::ExpertInfo> experts;  // in branch (= router) order
  bool operator==(const BranchRecord&) const = default;

  [[nodiscard]] std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& e : experts) out.push_back(e.name);
    return out;
  }
  [[nodiscard]] const merge::ExpertInfo& expert(const std::string& name) const {
    for (const auto& e : experts) {
      if (e.name == name) return e;
    }
    std::string known;
    for (const auto& e : experts) known += (known.empty() ? "" : ", ") + e.name;
    throw std::invalid_argument("btx::recipe: the Branch stage made no expert '" + name +
                                "' (it made: " + known + ")");
  }
};

inline void to_json(nlohmann::json& j, const BranchRecord& r) {
  j = nlohmann::json{
      {"parent", r.parent}, {"parent_fingerprint", r.parent_fingerprint}, {"experts", r.experts}};
}
inline void from_json(const nlohmann::json& j, BranchRecord& r) {
  if (!j.is_object() || !j.contains("experts") || !j.at("experts").is_array()) {
    throw std::invalid_argument("btx::recipe: a Branch record needs an \"experts\" list");
  }
  BranchRecord out;
  out.parent = j.value("parent", std::string());
  out.parent_fingerprint = j.value("parent_fingerprint", std::string());
  for (const auto& e : j.at("experts")) out.experts.push_back(e.get<merge::ExpertInfo>());
  r = std::move(out);
}

// The finished Branch stage's record; throws when Branch has not run.
inline BranchRecord branch_record(const Run& run) {
  return run.record(kBranchStage).get<BranchRecord>();
}

// A trained expert's ExpertInfo from its stage.json; records written before "expert"
// existed are read from their top-level fields (domain, parent, steps, tokens, flops).
inline merge::ExpertInfo expert_info(const Run& run, const std::string& name) {
  const auto record = run.record(expert_stage(name));
  if (record.contains("expert")) return record.at("expert").get<merge::ExpertInfo>();
  merge::ExpertInfo info;
  info.name = name;
  info.domain = record.value("domain", name);
  info.parent = record.value("parent", std::string());
  info.steps_trained = record.value("steps", int64_t{0});
  info.tokens_trained = record.value("tokens", int64_t{0});
  info.flops = record.value("flops", 0.0);
  return info;
}

// Every expert the Branch stage made, as trained (each stage must be finished).
inline std::vector<merge::ExpertInfo> expert_infos(const Run& run) {
  std::vector<merge::ExpertInfo> out;
  for (const auto& name : branch_record(run).names()) out.push_back(expert_info(run, name));
  return out;
}

}  // namespace recipe
BTX_NAMESPACE_END
}  // namespace btx
