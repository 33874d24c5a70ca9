// SPDX-License-Identifier: MIT
// ExpertInfo: what is known about one branched expert (domain, lineage, training done),
// kept beside its checkpoint as JSON so a Mix can say what it mixed.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

struct ExpertInfo {
  std::string name;            // this expert's name, e.g. "math"
  std::string domain;          // the data it trains on, e.g. "math"
  std::string parent;          // the model it was branched from, e.g. "seed"
  std::string seed_hash;       // weights_fingerprint() of the parent at branch time
  int64_t branch_index = 0;    // position among its siblings
  int64_t tokens_trained = 0;  // tokens seen since branching (a natural averaging weight)
  int64_t steps_trained = 0;   // optimiser steps since branching
  nlohmann::json extra = nlohmann::json::object();  // anything else (hyper-parameters, ...)
  double flops = 0.0;  // training FLOPs since branching (last, so positional init still fits)

  friend bool operator==(const ExpertInfo&, const ExpertInfo&) = default;
};

inline void to_json(nlohmann::json& j, const ExpertInfo& e) {
  j = nlohmann::json{{"name", e.name},
                     {"domain", e.domain},
                     {"parent", e.parent},
                     {"seed_hash", e.seed_hash},
                     {"branch_index", e.branch_index},
                     {"tokens_trained", e.tokens_trained},
                     {"steps_trained", e.steps_trained},
                     {"flops", e.flops},
                     {"extra", e.extra}};
}

// Requires name and domain; the counters default to 0 (so records written before a
// counter existed, e.g. without "flops", still read). Throws std::invalid_argument
// naming the field that is missing or of the wrong type.
inline void from_json(const nlohmann::json& j, ExpertInfo& e) {
  if (!j.is_object()) throw std::invalid_argument("btx::merge::ExpertInfo: JSON must be an object");
  const auto field = [&](const char* key, auto fallback, bool required) {
    using T = decltype(fallback);
    if (!j.contains(key)) {
      if (required) {
        throw std::invalid_argument(std::string("btx::merge::ExpertInfo: missing field '") + key +
                                    "'");
      }
      return fallback;
    }
    try {
      return j.at(key).get<T>();
    } catch (const nlohmann::json::exception&) {
      throw std::invalid_argument(std::string("btx::merge::ExpertInfo: field '") + key +
                                  "' has the wrong type: " + j.at(key).dump());
    }
  };
  ExpertInfo out;
  out.name = field("name", std::string(), true);
  out.domain = field("domain", std::string(), true);
  out.parent = field("parent", std::string(), false);
  out.seed_hash = field("seed_hash", std::string(), false);
  out.branch_index = field("branch_index", int64_t{0}, false);
  out.tokens_trained = field("tokens_trained", int64_t{0}, false);
  out.steps_trained = field("steps_trained", int64_t{0}, false);
  out.flops = field("flops", 0.0, false);
  out.extra = j.value("extra", nlohmann::json::object());
  if (out.tokens_trained < 0 || out.steps_trained < 0 || !(out.flops >= 0.0)) {
    throw std::invalid_argument("btx::merge::ExpertInfo '" + out.name +
                                "': tokens_trained, steps_trained and flops must be >= 0");
  }
  e = std::move(out);
}

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
