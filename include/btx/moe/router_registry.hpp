// SPDX-License-Identifier: MIT
// Routers by name: the process-wide registry behind MoEOptions.router. btx's routers
// register themselves in their own headers (top1, top2, topk, topk:K, switch,
// sample_top1, soft); a program adds its own router with its class plus one call,
//   btx::register_router<MyRouter>({.name = "mine", .describe = "...", .make = ...,
//                                   .active_experts = ...});
// and the name then works everywhere btx takes one: moe_feed_forward and upcycled (Llama),
// upcycle (surgery on any model), the FLOP accounting (active_experts) and listings.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <btx/moe/experts/module_experts.hpp>
#include <btx/moe/experts/packed_swiglu.hpp>
#include <btx/moe/options.hpp>
#include <btx/moe/router_spec.hpp>
#include <btx/moe/routers/sample_top1.hpp>
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
    register_top_k_routers(registry);
    register_switch_router(registry);
    register_sample_top1_router(registry);
    register_soft_router(registry);
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

// The registration `name` (a MoEOptions.router value) belongs to; throws
// std::invalid_argument listing the registered names when there is none.
inline std::shared_ptr<const RegisteredRouter> find_router(const std::string& name) {
  return router_registry().find(name);
}

// Registered names in registration order (families as their pattern, e.g. "topk:K").
inline std::vector<std::string> router_names() {
  return router_registry().names();
}

// Experts each token runs through with options.router (FLOP accounting, Mixtral's
// num_experts_per_tok), as its registration declares: top-k -> k, switch -> 1, soft -> E.
inline int64_t active_experts(const MoEOptions& options) {
  return find_router(options.router)->active_experts(options);
}

// Throws what building options' router would: an unknown name (listing the valid ones),
// num_experts < 1, an impossible k, bad router options. For checking a config up front.
inline void check_router(const MoEOptions& options) {
  (void)find_router(options.router)->make_router(options, /*hidden=*/1, /*layer=*/0);
}

// MoE layer `layer` (counted from 0) over `experts` with the router options.router names,
// built at the experts' hidden size on their device and dtype: MoE<R, PackedSwiGLU> or
// MoE<R, ModuleExperts> for the router's concrete type R.
inline torch::nn::AnyModule make_moe_layer(const MoEOptions& options, uint64_t layer,
                                           const std::shared_ptr<PackedSwiGLU>& experts) {
  return find_router(options.router)->make_layer(options, layer, experts);
}
inline torch::nn::AnyModule make_moe_layer(const MoEOptions& options, uint64_t layer,
                                           const std::shared_ptr<ModuleExperts>& experts) {
  return find_router(options.router)->make_layer(options, layer, experts);
}

BTX_NAMESPACE_END
}  // namespace btx
