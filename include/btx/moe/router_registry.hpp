// SPDX-License-Identifier: MIT
// Routers by name: the process-wide registry behind MoEConfig.router. btx's routers declare
// their specs in their own headers (top1, top2, topk, topk:K, switch, sample_top1, soft,
// sigmoid_topk)
// and are added here; a program adds its own router with its class plus one call,
//   btx::register_router<MyRouter>({.name = "mine", .describe = "...", .make = ...,
//                                   .active_experts = ...});
// and the name then works everywhere btx takes one: moe_feed_forward, every family's
// make_moe, upcycle (surgery on any model), the FLOP accounting (active_experts), the
// tools' configs and listings. resolve_router() is the one look-up of a configured name.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <btx/core/moe_config.hpp>
#include <btx/moe/experts/module_experts.hpp>
#include <btx/moe/experts/packed_swiglu.hpp>
#include <btx/moe/registered_router.hpp>
#include <btx/moe/router_spec.hpp>
#include <btx/moe/routers/sample_top1.hpp>
#include <btx/moe/routers/sigmoid_top_k.hpp>
#include <btx/moe/routers/soft.hpp>
#include <btx/moe/routers/switch.hpp>
#include <btx/moe/routers/top_k.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// The registry, holding btx's routers from its first use on: a function-local static, so
// it is complete before any use, also from another translation unit's static initialiser.
// Registration and look-up are thread-safe (RouterRegistry takes a mutex).
inline RouterRegistry& router_registry() {
  static RouterRegistry registry;
  static const bool shipped = [] {
    for (auto& spec : top_k_router_specs()) registry.add<TopK>(std::move(spec));
    registry.add<Switch>(switch_router_spec());
    registry.add<SampleTop1, Soft>(sample_top1_router_spec());
    registry.add<Soft>(soft_router_spec());
    registry.add<SigmoidTopK>(sigmoid_top_k_router_spec());
    return true;
  }();
  (void)shipped;
  return registry;
}

// Adds a router by name: Rs are every concrete type spec.make may return (usually one).
// Throws std::invalid_argument when the name is taken or the spec is incomplete. Returns
// true, so a registration can initialise a namespace-scope constant:
//   const bool registered = btx::register_router<ExpertChoice>({...});
template <Router... Rs>
bool register_router(RouterSpec spec) {
  static_assert(sizeof...(Rs) > 0, "name the router type(s) RouterSpec.make returns");
  router_registry().add<Rs...>(std::move(spec));
  return true;
}

// The registration `name` belongs to; throws std::invalid_argument listing the registered
// names when there is none.
inline std::shared_ptr<const RegisteredRouter> find_router(const std::string& name) {
  return router_registry().find(name);
}

// Registered names in registration order (families as their pattern, e.g. "topk:K").
inline std::vector<std::string> router_names() {
  return router_registry().names();
}

// `choice` with its registration found and its options read by it (unknown keys, wrong
// types, bad values refused naming them). A resolved choice is returned as it is: its
// name is looked up once, wherever it then travels.
inline RouterChoice resolve_router(RouterChoice choice) {
  if (choice.registration) return choice;
  auto registration = find_router(choice.name);
  choice.options = registration->resolve_options(choice.name, choice.options);
  choice.registration = std::move(registration);
  return choice;
}
inline RouterChoice resolve_router(std::string name, nlohmann::json options) {
  return resolve_router(RouterChoice(std::move(name), std::move(options)));
}
// `moe` with its router resolved (see above).
inline MoEConfig resolved(MoEConfig moe) {
  moe.router = resolve_router(std::move(moe.router));
  return moe;
}

// The registration of `choice`: its own when resolved, else looked up.
inline std::shared_ptr<const RegisteredRouter> registration_of(const RouterChoice& choice) {
  return choice.registration ? choice.registration : find_router(choice.name);
}

// Experts each token runs through with moe.router (FLOP accounting, config.json's
// num_experts_per_tok), as its registration declares: top-k -> k, switch -> 1, soft -> E.
inline int64_t active_experts(const MoEConfig& moe) {
  return registration_of(moe.router)->active_experts(moe);
}

// Throws what building moe's routers would: an unknown name (listing the valid ones),
// num_experts < 1, an impossible k, bad router options. Builds nothing.
inline void check_router(const MoEConfig& moe) {
  (void)active_experts(resolved(moe));
}

// MoE layer `layer` (counted from 0) over `experts` with moe's router, built at the
// experts' hidden size on their device and dtype: MoE<R, PackedSwiGLU> or
// MoE<R, ModuleExperts> for the router's concrete type R.
inline torch::nn::AnyModule make_moe_layer(const MoEConfig& moe, uint64_t layer,
                                           const std::shared_ptr<PackedSwiGLU>& experts) {
  return registration_of(moe.router)->make_layer(moe, layer, experts);
}
inline torch::nn::AnyModule make_moe_layer(const MoEConfig& moe, uint64_t layer,
                                           const std::shared_ptr<ModuleExperts>& experts) {
  return registration_of(moe.router)->make_layer(moe, layer, experts);
}

// "  name  description" per registration, and the options each takes, for --help.
inline std::string routers_help() {
  std::string out;
  for (const auto& r : router_registry().all()) {
    std::string line = "  " + r->name();
    line.resize(std::max<size_t>(line.size() + 1, 15), ' ');
    out += line + r->spec().describe + "\n";
    if (!r->spec().options_help.empty()) out += r->spec().options_help;
  }
  return out;
}

BTX_NAMESPACE_END
}  // namespace btx
