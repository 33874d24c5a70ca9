// SPDX-License-Identifier: MIT
// What one router registration is: a RouterSpec says how a name (or a family of names such
// as "topk:K") reads its own options, builds its router for an MoE layer, and how many
// experts that router runs per token. A router header declares its specs here without
// pulling in the MoE layer; the registry (moe/router_registry.hpp) captures the concrete
// router types when it adds them, so layers can be built from the name alone.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>

#include <btx/core/schema.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// What a registration's functions are given: the router's name as configured ("topk:3"),
// its options as its `options` function resolved them (every key, defaults filled in),
// and the layer it is for.
struct RouterBuild {
  std::string name;
  nlohmann::json options = nlohmann::json::object();
  int64_t num_experts = 0;  // E, >= 1 (checked before any function of the spec runs)
  int64_t hidden_size = 0;  // D (0 where only active_experts is asked)
  uint64_t layer = 0;       // counted from 0
  uint64_t seed = 0;        // MoEConfig.seed: stochastic routers' noise

  // The options as the registration's own type (read back through its schema).
  template <class O>
  [[nodiscard]] O read(const schema::Schema<O>& options_schema) const {
    return options_schema.read(options, O{}, name);
  }
};

// How one router name builds its router. Designated initialisers read best:
//   {.name = "switch", .describe = "...",
//    .make = [](const RouterBuild& b) { return std::make_shared<Switch>(...); },
//    .active_experts = [](const RouterBuild&) -> int64_t { return 1; },
//    .options = router_options(switch_options_schema())}
struct RouterSpec {
  // The MoEConfig.router name; for a family (see `matches`) the pattern users are shown,
  // e.g. "topk:K".
  std::string name;
  // One line for --help listings.
  std::string describe;
  // The router of one MoE layer. Bad options throw std::invalid_argument naming the option.
  std::function<std::shared_ptr<torch::nn::Module>(const RouterBuild&)> make;
  // Experts run per token, for FLOP accounting and config.json's num_experts_per_tok:
  // top-k -> k, switch and sample_top1 -> 1, soft -> num_experts. Must be in [1, E]; an
  // impossible request (k > E) throws std::invalid_argument naming both.
  std::function<int64_t(const RouterBuild&)> active_experts;
  // Families only: which router names belong to this registration (a pure function of the
  // name; it must not call the registry). Unset: exactly `name`.
  std::function<bool(const std::string& router)> matches = {};
  // The router's own options: `given` (a config's mapping) read over the defaults, for
  // router `router`, returned with every key. Unset: the router takes none.
  std::function<nlohmann::json(const std::string& router, const nlohmann::json& given)> options =
      {};
  // The option keys with their defaults and docs, for --help (router_options fills it).
  std::string options_help = {};
};

// RouterSpec::options from a schema of the router's options type O: `given` read over
// O{} (adjusted for the name by `from_name`, e.g. "topk:3" sets k), written back whole.
template <class O>
std::function<nlohmann::json(const std::string&, const nlohmann::json&)> router_options(
    schema::Schema<O> options_schema,
    std::type_identity_t<std::function<void(const std::string&, const nlohmann::json&, O&)>>
        from_name = {}) {
  return [options_schema = std::move(options_schema), from_name = std::move(from_name)](
             const std::string& router, const nlohmann::json& given) {
    O base{};
    const nlohmann::json j = given.is_null() ? nlohmann::json::object() : given;
    if (from_name) from_name(router, j, base);
    return options_schema.write(options_schema.read(j, base, "router '" + router + "' options"));
  };
}

BTX_NAMESPACE_END
}  // namespace btx
