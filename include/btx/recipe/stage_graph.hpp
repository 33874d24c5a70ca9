// SPDX-License-Identifier: MIT
// A recipe's stages declared once, as a table every part of a program iterates: the driver
// runs them phase by phase (in its own process or as worker jobs), the worker command line
// runs one of them, the evaluation scores the ones that are arms of the comparison, the
// report draws their compute, and sweeps share the ones whose config is unchanged. Each
// declaration says what the stage is made from (`inputs`: its compute counts through
// them), what else it waits for, who trains it, whether it is a baseline, how the report
// names it, and which config keys only it (and what follows it) reads. Adding an arm is
// one declaration: StageGraph::add. Context is what a stage's run function draws on
// (recipe/recipe.hpp's Recipe for BTX).
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/core/causal_lm.hpp>
#include <btx/core/named_registry.hpp>
#include <btx/train/evaluate.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace dist {
class Communicator;
}  // namespace dist
namespace recipe {

// One stage, or one per domain ("expert-{domain}"), or one per router ("btx-{router}").
enum class Each { once, domain, router };
// Who trains a stage: the driver itself, an expert's group of ranks, or a synchronous
// stage's ranks (recipe/topology.hpp).
enum class Ranks { driver, expert, stage };

// One instance of a declaration: the stage's folder name and what it stands for.
struct StageInstance {
  std::string stage;   // e.g. "expert-math", "btx-top2"
  std::string decl;    // the declaration's name pattern, e.g. "expert-{domain}"
  std::string domain;  // Each::domain: its domain
  std::string router;  // Each::router: its router
  size_t index = 0;    // its position among the declaration's instances
};

// How the report names a stage's model. {domain} and {router} are filled in.
struct Arm {
  std::string label;     // "BTX {router}", "expert {domain}", "dense"
  std::string describe;  // one line: what it is
  bool routing = false;  // an MoE: the report shows its routing
  // A mixed model before any training after its mix: the label of the experts it was
  // mixed from ("expert {domain}"), so the report says how much the mix forgot (its loss
  // minus each expert's on its own domain).
  std::string mixed_from = {};
};

template <class Context>
struct StageDecl {
  std::string name;   // the stage's folder; "{domain}" / "{router}" per instance
  std::string phase;  // when the driver runs it (and --until stops after)
  Each each = Each::once;
  std::vector<std::string> inputs = {};  // declarations its model is made from
  std::vector<std::string> after = {};   // declarations it needs finished otherwise
  std::string worker = {};               // worker kind running it; empty: the driver runs it
  Ranks ranks = Ranks::driver;
  bool baseline = false;               // left out when the context asks for no baselines
  std::string option = {};             // runs only when the context's arms name it
  std::optional<Arm> arm = {};         // scored in the report
  std::vector<std::string> keys = {};  // config keys only it and what follows it read
  // Trains or makes the stage on `ranks` (the driver's lone process, or a worker's group).
  // Unset: no stage of its own (an arm that combines other stages, as BTM's ensemble).
  std::function<void(const Context&, const StageInstance&, dist::Communicator& ranks)> run = {};
  // The finished stage's model, as the report scores it (unset: as its checkpoint says).
  std::function<CausalLM(const Context&, const StageInstance&)> load = {};
  // An arm with no model of its own: its next-token logits on `device`.
  std::function<LogitsFn(const Context&, const StageInstance&, torch::Device)> logits = {};
  // Workers: the command-line option naming the instance (default: "domain" or "router"),
  // and for per-domain stages a second worker kind that runs every instance in one world
  // split into a group each (recipe/topology.hpp's shared expert worlds).
  std::string worker_option = {};
  std::string group_worker = {};
  // An MoE arm's experts in router order, as the report labels its routing (unset: the
  // context's, BTX's).
  std::function<std::vector<std::string>(const Context&)> expert_names = {};
};

// Fills "{domain}" and "{router}" in a pattern.
inline std::string instance_name(std::string pattern, const std::string& domain,
                                 const std::string& router) {
  for (const auto& [key, value] :
       {std::pair<std::string, std::string>{"{domain}", domain}, {"{router}", router}}) {
    for (auto at = pattern.find(key); at != std::string::npos; at = pattern.find(key)) {
      pattern.replace(at, key.size(), value);
    }
  }
  return pattern;
}

// An optional arm: stages a run has only when its config's `arms` names it.
struct ArmOption {
  std::string name, describe;
  OptionSchema options = OptionSchema::none();
};

// Which declarations a run has: baselines or not, and the optional arms it asked for.
struct Selection {
  bool baselines = true;
  std::set<std::string> arms = {};

  Selection(bool with_baselines = true, std::set<std::string> optional_arms = {})  // NOLINT
      : baselines(with_baselines), arms(std::move(optional_arms)) {}
  template <class Decl>
  [[nodiscard]] bool operator()(const Decl& d) const {
    return (!d.baseline || baselines) && (d.option.empty() || arms.count(d.option) > 0);
  }
};

template <class Context>
class StageGraph {
 public:
  using Decl = StageDecl<Context>;

  // Appends a declaration: a new arm or stage of the recipe. Its inputs and `after` must
  // be declared already, its phase one of the graph's, its name new.
  StageGraph& add(Decl d) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (d.name.empty() || d.phase.empty()) {
      throw std::invalid_argument("btx::recipe::StageGraph: a stage needs a name and a phase");
    }
    if (std::find(phases_.begin(), phases_.end(), d.phase) == phases_.end()) {
      throw std::invalid_argument("btx::recipe::StageGraph: stage '" + d.name + "' has phase '" +
                                  d.phase + "', not one of the graph's");
    }
    for (const auto& other : decls_) {
      if (other.name == d.name) {
        throw std::invalid_argument("btx::recipe::StageGraph: stage '" + d.name +
                                    "' is declared twice");
      }
    }
    for (const auto* list : {&d.inputs, &d.after}) {
      for (const auto& in : *list) {
        if (!find_locked(in)) {
          throw std::invalid_argument("btx::recipe::StageGraph: stage '" + d.name + "' needs '" +
                                      in + "', which is not declared before it");
        }
      }
    }
    if (!d.option.empty() && std::none_of(options_.begin(), options_.end(),
                                          [&](const ArmOption& o) { return o.name == d.option; })) {
      throw std::invalid_argument("btx::recipe::StageGraph: stage '" + d.name +
                                  "' belongs to optional arm '" + d.option +
                                  "', which is not declared (add_option) before it");
    }
    if (!d.worker.empty() && !d.run) {
      throw std::invalid_argument("btx::recipe::StageGraph: stage '" + d.name + "' names worker '" +
                                  d.worker + "' but has no run function");
    }
    decls_.push_back(std::move(d));
    return *this;
  }

  // More config keys that declaration `name` reads itself (a tool's names for what the
  // declaration's stage reads, as the pipeline's merge keys for the mix).
  StageGraph& add_keys(const std::string& name, const std::vector<std::string>& keys) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& d : decls_) {
      if (d.name != name) continue;
      for (const auto& k : keys) {
        if (std::find(d.keys.begin(), d.keys.end(), k) == d.keys.end()) d.keys.push_back(k);
      }
      return *this;
    }
    throw std::invalid_argument("btx::recipe::StageGraph: no stage '" + name + "'");
  }

  // An optional arm (a set of declarations whose `option` names it), with the options a
  // config gives it (`arms: {NAME: {...}}`); declare it before its stages.
  StageGraph& add_option(ArmOption o) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (o.name.empty() || !o.options.read) {
      throw std::invalid_argument(
          "btx::recipe::StageGraph: an optional arm needs a name and an "
          "option schema (OptionSchema::none() for none)");
    }
    for (const auto& other : options_) {
      if (other.name == o.name) {
        throw std::invalid_argument("btx::recipe::StageGraph: optional arm '" + o.name +
                                    "' is declared twice");
      }
    }
    options_.push_back(std::move(o));
    return *this;
  }
  [[nodiscard]] std::vector<ArmOption> options() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return options_;
  }
  // The optional arm `name`, or an error listing the ones there are.
  [[nodiscard]] ArmOption option(const std::string& name) const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::string known;
    for (const auto& o : options_) {
      if (o.name == name) return o;
      known += (known.empty() ? "" : ", ") + o.name;
    }
    throw std::invalid_argument("config: arms: no optional arm '" + name +
                                "'; there are: " + (known.empty() ? std::string("none") : known));
  }

  // The phases in driver order (fixed when the graph is made).
  explicit StageGraph(std::vector<std::string> phases) : phases_(std::move(phases)) {}
  StageGraph(const StageGraph& other)
      : phases_(other.phases_),
        decls_(other.declarations()),
        options_(other.options()),
        report_keys_(other.report_keys_) {}

  [[nodiscard]] const std::vector<std::string>& phases() const { return phases_; }
  // Config keys only the evaluation and report read: they reach no stage.
  StageGraph& report_keys(std::vector<std::string> keys) {
    std::lock_guard<std::mutex> lock(mutex_);
    report_keys_ = std::move(keys);
    return *this;
  }
  [[nodiscard]] std::vector<Decl> declarations() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return decls_;
  }
  [[nodiscard]] Decl declaration(const std::string& name) const {
    std::lock_guard<std::mutex> lock(mutex_);
    if (const auto* d = find_locked(name)) return *d;
    throw std::invalid_argument("btx::recipe::StageGraph: no stage '" + name + "'");
  }

  // The instances of declaration `d` for these domains and routers.
  [[nodiscard]] static std::vector<StageInstance> instances_of(
      const Decl& d, const std::vector<std::string>& domains,
      const std::vector<std::string>& routers) {
    std::vector<StageInstance> out;
    if (d.each == Each::once) out.push_back({d.name, d.name, "", "", 0});
    if (d.each == Each::domain) {
      for (size_t i = 0; i < domains.size(); ++i) {
        out.push_back({instance_name(d.name, domains[i], ""), d.name, domains[i], "", i});
      }
    }
    if (d.each == Each::router) {
      for (size_t i = 0; i < routers.size(); ++i) {
        out.push_back({instance_name(d.name, "", routers[i]), d.name, "", routers[i], i});
      }
    }
    return out;
  }

  // Every selected declaration's instances, in order.
  [[nodiscard]] std::vector<std::pair<Decl, StageInstance>> instances(
      const std::vector<std::string>& domains, const std::vector<std::string>& routers,
      const Selection& selected) const {
    std::vector<std::pair<Decl, StageInstance>> out;
    for (const auto& d : declarations()) {
      if (!selected(d)) continue;
      for (const auto& i : instances_of(d, domains, routers)) out.emplace_back(d, i);
    }
    return out;
  }

  // The stages (instance names) `stage` is made from, directly or not: its inputs' instances
  // and theirs. With `and_after`, also what it waits for.
  [[nodiscard]] std::vector<std::string> upstream(const StageInstance& of,
                                                  const std::vector<std::string>& domains,
                                                  const std::vector<std::string>& routers,
                                                  bool and_after = false) const {
    std::vector<std::string> out;
    std::set<std::string> seen;
    std::vector<std::pair<std::string, StageInstance>> todo = {{of.decl, of}};
    while (!todo.empty()) {
      const auto [decl_name, inst] = todo.back();
      todo.pop_back();
      const Decl d = declaration(decl_name);
      std::vector<std::string> next = d.inputs;
      if (and_after) next.insert(next.end(), d.after.begin(), d.after.end());
      for (const auto& in : next) {
        const Decl up = declaration(in);
        for (const auto& i : instances_of(up, domains, routers)) {
          // A per-router stage made from a per-router stage is made from its own router's.
          if (up.each == Each::router && !inst.router.empty() && i.router != inst.router) continue;
          if (up.each == Each::domain && !inst.domain.empty() && i.domain != inst.domain) continue;
          if (seen.insert(i.stage).second) {
            out.push_back(i.stage);
            todo.emplace_back(in, i);
          }
        }
      }
    }
    return out;
  }

  // The config keys some declaration owns (every other key of a config reaches every stage).
  [[nodiscard]] std::set<std::string> owned_keys() const {
    std::set<std::string> out;
    for (const auto& d : declarations()) out.insert(d.keys.begin(), d.keys.end());
    std::lock_guard<std::mutex> lock(mutex_);
    out.insert(report_keys_.begin(), report_keys_.end());
    return out;
  }
  // The keys of declaration `decl` and of everything upstream of it (with `after`).
  [[nodiscard]] std::set<std::string> keys_through(const std::string& decl) const {
    std::set<std::string> out;
    std::vector<std::string> todo = {decl};
    std::set<std::string> seen;
    while (!todo.empty()) {
      const Decl d = declaration(todo.back());
      todo.pop_back();
      if (!seen.insert(d.name).second) continue;
      out.insert(d.keys.begin(), d.keys.end());
      todo.insert(todo.end(), d.inputs.begin(), d.inputs.end());
      todo.insert(todo.end(), d.after.begin(), d.after.end());
    }
    return out;
  }
  // `config` without the keys that reach declaration `decl` only from downstream: what
  // its result depends on. Two runs whose upstream_config agree trained it the same way.
  [[nodiscard]] nlohmann::json upstream_config(const nlohmann::json& config,
                                               const std::string& decl) const {
    const auto owned = owned_keys();
    const auto mine = keys_through(decl);
    nlohmann::json out = nlohmann::json::object();
    for (const auto& [key, value] : config.items()) {
      if (!owned.count(key) || mine.count(key)) out[key] = value;
    }
    return out;
  }

 private:
  [[nodiscard]] const Decl* find_locked(const std::string& name) const {
    for (const auto& d : decls_) {
      if (d.name == name) return &d;
    }
    return nullptr;
  }

  std::vector<std::string> phases_;
  mutable std::mutex mutex_;
  std::vector<Decl> decls_;
  std::vector<ArmOption> options_;
  std::vector<std::string> report_keys_;
};

}  // namespace recipe
BTX_NAMESPACE_END
}  // namespace btx
