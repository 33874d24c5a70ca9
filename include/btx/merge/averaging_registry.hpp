// SPDX-License-Identifier: MIT
// Averaging policies by name, each registered once with its own options and their
// defaults (ties keeps 20% of each task vector unless told otherwise, dare 50%), so
// btx-merge, the pipeline's mix and a user's program read the same names the same way:
//   uniform, weighted, keep_base, task_arithmetic, ties, dare_linear, dare_ties.
// A program adds its own with btx::merge::averagings().add({...}).
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/core/named_registry.hpp>
#include <btx/core/schema.hpp>
#include <btx/merge/any_averaging.hpp>
#include <btx/merge/averaging.hpp>
#include <btx/merge/trunk_merging.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

// What a policy is made for: the sources it averages and the base (seed) beside them.
struct AveragingContext {
  size_t num_sources = 0;
  bool has_base = false;              // a base to take task vectors against
  std::optional<size_t> base_source;  // the base's index among the sources, if it is one
  uint64_t seed = 0;                  // random drops (dare)
};

struct AveragingSpec {
  std::string name, describe;
  std::vector<std::string> aliases = {};
  OptionSchema options = OptionSchema::none();
  bool needs_base = false;  // merges task vectors against a base (the seed, base_model)
  std::function<AnyAveraging(const nlohmann::json& options, const AveragingContext&)> make;
};

namespace detail {

struct WeightOptions {
  std::vector<double> weights;  // one per source; empty: each 1
  double lambda = 1.0;
};
struct DensityOptions {
  double density = 0.5;
  double lambda = 1.0;
  std::vector<double> weights;
};

inline schema::Schema<WeightOptions> weight_schema(bool with_lambda, const std::string& name) {
  schema::Schema<WeightOptions> s(name + " options");
  s.key("weights", &WeightOptions::weights, "one per source, in source order");
  if (with_lambda) {
    s.key("lambda", &WeightOptions::lambda, "base + lambda * the merged task vector");
  }
  return s;
}
inline schema::Schema<DensityOptions> density_schema(bool with_weights, const std::string& name) {
  schema::Schema<DensityOptions> s(name + " options");
  s.key("density", &DensityOptions::density, "fraction of each task vector kept",
        schema::above_at_most(0.0, 1.0));
  s.key("lambda", &DensityOptions::lambda, "base + lambda * the merged task vector");
  if (with_weights) {
    s.key("weights", &DensityOptions::weights, "one per source, in source order (empty: 1 each)");
  }
  return s;
}

inline std::vector<double> weights_of(const nlohmann::json& o) {
  return o.value("weights", std::vector<double>{});
}
inline void check_count(const std::string& name, const std::vector<double>& w, size_t n) {
  if (!w.empty() && w.size() != n) {
    throw std::invalid_argument("config: averaging " + name + ": " + std::to_string(w.size()) +
                                " weights for " + std::to_string(n) + " sources");
  }
}

inline NamedRegistry<AveragingSpec>& seeded_averagings() {
  static NamedRegistry<AveragingSpec> registry("averaging");
  registry.add({.name = "uniform",
                .describe = "the mean of the sources (the BTX paper's)",
                .aliases = {"uniform_mean"},
                .make = [](const nlohmann::json&, const AveragingContext&) -> AnyAveraging {
                  return UniformMean{};
                }});
  registry.add(
      {.name = "weighted",
       .describe = "the mean weighted by `weights`",
       .aliases = {"weighted_mean"},
       .options = OptionSchema::of(
           weight_schema(false, "weighted")
               .rule([](const WeightOptions& o, const nlohmann::json&, const std::string& where) {
                 if (o.weights.empty()) throw schema::error(where, "needs weights, one per source");
               })),
       .make = [](const nlohmann::json& o, const AveragingContext& c) -> AnyAveraging {
         check_count("weighted", weights_of(o), c.num_sources);
         return WeightedMean{weights_of(o)};
       }});
  registry.add({.name = "keep_base",
                .describe = "the base model's own tensors (it must be one of the sources)",
                .aliases = {"keep_one"},
                .make = [](const nlohmann::json&, const AveragingContext& c) -> AnyAveraging {
                  if (!c.base_source) {
                    throw std::invalid_argument(
                        "config: averaging keep_base needs the base model among the sources");
                  }
                  return KeepOne{*c.base_source};
                }});
  registry.add({.name = "task_arithmetic",
                .describe = "base + lambda * sum_j w_j (source_j - base)",
                .options = OptionSchema::of(weight_schema(true, "task_arithmetic")),
                .needs_base = true,
                .make = [](const nlohmann::json& o, const AveragingContext& c) -> AnyAveraging {
                  check_count("task_arithmetic", weights_of(o), c.num_sources);
                  return TaskArithmetic{weights_of(o), o.at("lambda").get<double>()};
                }});
  registry.add({.name = "ties",
                .describe = "TIES: trim to density by magnitude, elect signs, disjoint mean",
                .options = OptionSchema::of(density_schema(false, "ties"), {.density = 0.2}),
                .needs_base = true,
                .make = [](const nlohmann::json& o, const AveragingContext&) -> AnyAveraging {
                  return Ties{o.at("density").get<double>(), o.at("lambda").get<double>()};
                }});
  registry.add({.name = "dare_linear",
                .describe = "DARE: random drop to density and rescale, then a weighted sum",
                .options = OptionSchema::of(density_schema(true, "dare_linear")),
                .needs_base = true,
                .make = [](const nlohmann::json& o, const AveragingContext& c) -> AnyAveraging {
                  check_count("dare_linear", weights_of(o), c.num_sources);
                  return Dare{o.at("density").get<double>(), o.at("lambda").get<double>(), c.seed,
                              false, weights_of(o)};
                }});
  registry.add(
      {.name = "dare_ties",
       .describe = "DARE's drop, then TIES' sign election and disjoint mean",
       .options = OptionSchema::of(density_schema(false, "dare_ties")),
       .needs_base = true,
       .make = [](const nlohmann::json& o, const AveragingContext& c) -> AnyAveraging {
         return Dare{o.at("density").get<double>(), o.at("lambda").get<double>(), c.seed, true};
       }});
  return registry;
}

}  // namespace detail

// The process-wide registry of averaging policies, the shipped ones first.
inline NamedRegistry<AveragingSpec>& averagings() {
  static NamedRegistry<AveragingSpec>& registry = detail::seeded_averagings();
  return registry;
}

// The registered policy a merge manifest's averaging record (a policy's to_json()) names,
// with the parameters it records; throws std::invalid_argument naming an unknown name or a
// missing or ill-typed parameter.
inline AnyAveraging averaging_from_json(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("name") || !j["name"].is_string()) {
    throw std::invalid_argument(
        "btx::merge::averaging_from_json: expected an object with a string 'name', got " +
        j.dump());
  }
  const std::string name = j["name"].get<std::string>();
  std::shared_ptr<const AveragingSpec> spec;
  try {
    spec = averagings().find(name);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument("btx::merge::averaging_from_json: unknown averaging '" + name +
                                "' (" + e.what() + ")");
  }
  nlohmann::json options = nlohmann::json::object();
  for (const auto& key : spec->options.keys) {
    if (j.contains(key)) options[key] = j.at(key);
  }
  AveragingContext c;
  c.num_sources = j.contains("weights") && j.at("weights").is_array() ? j.at("weights").size() : 0;
  c.has_base = spec->needs_base;
  if (j.contains("index")) c.base_source = j.at("index").get<size_t>();
  c.seed = j.value("seed", uint64_t{0});
  return spec->make(spec->options.read(options, "averaging " + name), c);
}

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
