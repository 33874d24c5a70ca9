// SPDX-License-Identifier: MIT
// What a mix forgets: a mixed model before any training after its mix (an arm whose
// recipe::Arm::mixed_from names its experts) against those experts, each on its own
// domain (perfect routing: the ceiling a mix of them can reach without more training).
// forgotten = the mixed model's average held-out loss - the mean of the experts'
// own-domain losses, per repeat; near zero when the mix keeps what the experts learned.
#pragma once

#include <cmath>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <btx/recipe/btx_stages.hpp>
#include <btx/report/repeats.hpp>

#include "config.hpp"
#include "report.hpp"
#include "results.hpp"

namespace btx::pipeline {

struct MixedFrom {
  std::string mixed;                 // the mixed model's report label
  std::vector<std::string> experts;  // its experts' labels, in domain order
};

// Every scored mixed model of a config's graph, with its experts.
inline std::vector<MixedFrom> mixes_of(const PipelineConfig& config) {
  std::set<std::string> arms;
  for (const auto& [name, options] : config.arms) arms.insert(name);
  std::vector<std::string> routers = {config.router.name};
  routers.insert(routers.end(), config.extra_routers.begin(), config.extra_routers.end());
  const auto domains = domain_names_of(config);
  std::vector<MixedFrom> out;
  for (const auto& [d, i] :
       recipe::btx_graph().instances(domains, routers, recipe::Selection(config.baselines, arms))) {
    if (!d.arm || d.arm->mixed_from.empty()) continue;
    MixedFrom m{recipe::instance_name(d.arm->label, i.domain, i.router), {}};
    for (const auto& domain : domains) {
      m.experts.push_back(recipe::instance_name(d.arm->mixed_from, domain, i.router));
    }
    out.push_back(std::move(m));
  }
  return out;
}

// Per repeat: the experts' mean own-domain loss (the ceiling) and what the mix forgot.
struct Forgetting {
  std::vector<double> ceiling, forgotten;
};
inline Forgetting forgetting_of(const std::map<std::string, PerRepeat>& models, const MixedFrom& m,
                                const std::vector<std::string>& domains) {
  const auto& mixed = models.at(m.mixed);
  Forgetting f;
  for (size_t k = 0; k < mixed.avg_loss.size(); ++k) {
    double own = 0;
    for (size_t j = 0; j < domains.size(); ++j) {
      own += models.at(m.experts[j]).loss.at(domains[j]).at(k);
    }
    own /= double(domains.size());
    f.ceiling.push_back(own);
    f.forgotten.push_back(mixed.avg_loss[k] - own);
  }
  return f;
}

// The markdown table of every mix in `models` (mean ± sd over repeats); empty when none.
inline std::string forgetting_table(const std::map<std::string, PerRepeat>& models,
                                    const std::vector<MixedFrom>& mixes,
                                    const std::vector<std::string>& domains) {
  std::ostringstream t;
  for (const auto& m : mixes) {
    bool present = models.count(m.mixed) > 0;
    for (const auto& e : m.experts) present = present && models.count(e) > 0;
    if (!present) continue;
    if (t.tellp() == 0) {
      t << "| mixed model, before training | its experts, each on its own domain | the mixed "
           "model | forgotten (nats) |\n|---|---|---|---|\n";
    }
    const auto f = forgetting_of(models, m, domains);
    t << "| " << m.mixed << " | " << format_spread(spread_of(f.ceiling)) << " | "
      << format_spread(spread_of(models.at(m.mixed).avg_loss)) << " | "
      << format_spread(spread_of(f.forgotten)) << " |\n";
  }
  return t.str();
}

inline const char* kForgettingIntro =
    "Each mixed model before any training after its mix, against its experts each on its own "
    "domain (perfect routing; their mean is the ceiling a mix of them reaches without more "
    "training). Forgotten: the mixed model's average held-out loss minus that ceiling; near "
    "zero when the mix keeps what the experts learned.\n\n";

}  // namespace btx::pipeline
