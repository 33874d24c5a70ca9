// SPDX-License-Identifier: MIT
// One router registration with its concrete router types captured, and a registry of them.
// RouterRegistry::add<R...>(spec) instantiates the MoE<R, PackedSwiGLU> and
// MoE<R, ModuleExperts> layer builders, so whole layers can be built from a name
// (torch::nn::AnyModule). btx's process-wide registry, seeded with the shipped routers, is
// btx::router_registry() in btx/moe/router_registry.hpp.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <typeinfo>
#include <utility>
#include <vector>

#include <btx/core/concepts.hpp>
#include <btx/core/moe_config.hpp>
#include <btx/moe/experts/module_experts.hpp>
#include <btx/moe/experts/packed_swiglu.hpp>
#include <btx/moe/moe_layer.hpp>
#include <btx/moe/router_spec.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// Immutable once made; shared by the registry's users and by every RouterChoice resolved
// to it.
class RegisteredRouter {
 public:
  // Captures Rs (every concrete type spec.make may return) and instantiates the MoE layer
  // builders for both expert containers. Throws std::invalid_argument on an incomplete spec.
  template <Router... Rs>
  static RegisteredRouter of(RouterSpec spec) {
    static_assert(sizeof...(Rs) > 0, "name the router type(s) RouterSpec.make returns");
    const std::string where = "btx::register_router('" + spec.name + "')";
    if (spec.name.empty()) {
      throw std::invalid_argument("btx::register_router: RouterSpec.name must not be empty");
    }
    if (!spec.make) throw std::invalid_argument(where + ": RouterSpec.make is not set");
    if (!spec.active_experts) {
      throw std::invalid_argument(where + ": RouterSpec.active_experts is not set");
    }
    RegisteredRouter r;
    r.spec_ = std::move(spec);
    r.types_ = {c10::demangle(typeid(Rs).name())...};
    r.is_registered_type_ = [](const torch::nn::Module& m) {
      return ((typeid(m) == typeid(Rs)) || ...);
    };
    r.route_ = &route_any<Rs...>;
    r.packed_ = &build_layer<PackedSwiGLU, Rs...>;
    r.modules_ = &build_layer<ModuleExperts, Rs...>;
    return r;
  }

  [[nodiscard]] const RouterSpec& spec() const { return spec_; }
  [[nodiscard]] const std::string& name() const { return spec_.name; }
  [[nodiscard]] bool is_family() const { return static_cast<bool>(spec_.matches); }
  [[nodiscard]] bool matches(const std::string& router) const {
    return is_family() ? spec_.matches(router) : router == spec_.name;
  }
  // The registered router types, demangled (e.g. "btx::SampleTop1").
  [[nodiscard]] const std::vector<std::string>& router_types() const { return types_; }

  // Router `router`'s options: `given` read by the registration (defaults filled in). A
  // router that takes none refuses any.
  [[nodiscard]] nlohmann::json resolve_options(const std::string& router,
                                               const nlohmann::json& given) const {
    check_name(router);
    const bool none = given.is_null() || (given.is_object() && given.empty());
    if (spec_.options) return spec_.options(router, none ? nlohmann::json::object() : given);
    if (!none) {
      throw std::invalid_argument("config: router '" + router + "' takes no options, got " +
                                  given.dump());
    }
    return nlohmann::json::object();
  }

  // The router for layer `layer` over `hidden` as `moe` configures it. Throws
  // std::invalid_argument when moe.num_experts < 1 or moe.router is not this
  // registration's, what spec.make throws, and std::logic_error when make returns null or
  // a type not registered.
  [[nodiscard]] std::shared_ptr<torch::nn::Module> make_router(const MoEConfig& moe, int64_t hidden,
                                                               uint64_t layer) const {
    auto gate = spec_.make(build_of(moe, hidden, layer));
    if (!gate) {
      throw std::logic_error("btx: router '" + moe.router.name +
                             "': RouterSpec.make returned null");
    }
    if (!is_registered_type_(*gate)) {
      const torch::nn::Module& g = *gate;
      throw std::logic_error("btx: router '" + moe.router.name + "' built a " +
                             c10::demangle(typeid(g).name()) + " but its registration lists " +
                             join(types_) +
                             "; name every type RouterSpec.make returns in register_router<...>");
    }
    return gate;
  }

  // Routes x_TD [T, D] through `gate` (as make_router returned it) without knowing its
  // type: for layers other than MoE<R, X> that route over experts (attention experts).
  [[nodiscard]] RoutingResult route(torch::nn::Module& gate, const torch::Tensor& x_TD) const {
    return route_(gate, x_TD);
  }

  // Experts run per token (see RouterSpec::active_experts), checked to be in [1, E].
  [[nodiscard]] int64_t active_experts(const MoEConfig& moe) const {
    const int64_t n = spec_.active_experts(build_of(moe, 0, 0));
    if (n < 1 || n > moe.num_experts) {
      throw std::logic_error("btx: router '" + moe.router.name +
                             "' declares active_experts=" + std::to_string(n) +
                             " for num_experts=" + std::to_string(moe.num_experts) +
                             "; it must be in [1, num_experts]");
    }
    return n;
  }

  // The MoE<R, X> layer over `gate` (as make_router returned it; its concrete type R picks
  // the layer type) and `experts`. The router first moves to the experts' device and dtype.
  [[nodiscard]] torch::nn::AnyModule make_layer(const std::shared_ptr<torch::nn::Module>& gate,
                                                const std::shared_ptr<PackedSwiGLU>& experts,
                                                const AuxLossOptions& aux) const {
    return packed_(checked_gate(gate, experts), experts, aux);
  }
  [[nodiscard]] torch::nn::AnyModule make_layer(const std::shared_ptr<torch::nn::Module>& gate,
                                                const std::shared_ptr<ModuleExperts>& experts,
                                                const AuxLossOptions& aux) const {
    return modules_(checked_gate(gate, experts), experts, aux);
  }

  // make_router at the experts' hidden size, then make_layer: layer `layer` of a model.
  template <class X>
  [[nodiscard]] torch::nn::AnyModule make_layer(const MoEConfig& moe, uint64_t layer,
                                                const std::shared_ptr<X>& experts) const {
    if (!experts) throw std::invalid_argument("btx: MoE layer experts must be non-null");
    return make_layer(make_router(moe, experts->hidden_size(), layer), experts, moe.aux());
  }

 private:
  using Route = RoutingResult (*)(torch::nn::Module&, const torch::Tensor&);
  template <class X>
  using LayerBuilder = torch::nn::AnyModule (*)(const std::shared_ptr<torch::nn::Module>&,
                                                const std::shared_ptr<X>&, const AuxLossOptions&);

  RegisteredRouter() = default;

  void check_name(const std::string& router) const {
    if (!matches(router)) {
      throw std::invalid_argument("btx: the registration of router '" + spec_.name +
                                  "' was asked to build router '" + router + "'");
    }
  }

  // What the spec's functions see: moe's router options as this registration resolves
  // them (as they are when the choice was resolved to it already).
  [[nodiscard]] RouterBuild build_of(const MoEConfig& moe, int64_t hidden, uint64_t layer) const {
    if (moe.num_experts <= 0) {
      throw std::invalid_argument("btx: MoEConfig.num_experts must be >= 1, got " +
                                  std::to_string(moe.num_experts));
    }
    check_name(moe.router.name);
    RouterBuild b;
    b.name = moe.router.name;
    b.options = moe.router.registration.get() == this
                    ? moe.router.options
                    : resolve_options(moe.router.name, moe.router.options);
    b.num_experts = moe.num_experts;
    b.hidden_size = hidden;
    b.layer = layer;
    b.seed = moe.seed;
    return b;
  }

  // MoE<R, X> into `out` when gate's type is exactly R (a subclass would be sliced by
  // the layer's clone()); false otherwise.
  template <class R, class X>
  static bool build_if(const std::shared_ptr<torch::nn::Module>& gate,
                       const std::shared_ptr<X>& experts, const AuxLossOptions& aux,
                       torch::nn::AnyModule& out) {
    const torch::nn::Module& g = *gate;
    if (typeid(g) != typeid(R)) return false;
    out = torch::nn::AnyModule(MoE<R, X>(std::static_pointer_cast<R>(gate), experts, aux));
    return true;
  }

  template <class R>
  static bool route_if(torch::nn::Module& gate, const torch::Tensor& x_TD, RoutingResult& out) {
    if (typeid(gate) != typeid(R)) return false;
    out = static_cast<R&>(gate).route(x_TD);
    return true;
  }
  template <class... Rs>
  static RoutingResult route_any(torch::nn::Module& gate, const torch::Tensor& x_TD) {
    RoutingResult out;
    if (!(route_if<Rs>(gate, x_TD, out) || ...)) {
      throw std::logic_error("btx: a router of type " + c10::demangle(typeid(gate).name()) +
                             " is not one its registration lists");
    }
    return out;
  }

  // Exactly one of Rs is gate's type (checked before): MoE<that R, X>.
  template <class X, class... Rs>
  static torch::nn::AnyModule build_layer(const std::shared_ptr<torch::nn::Module>& gate,
                                          const std::shared_ptr<X>& experts,
                                          const AuxLossOptions& aux) {
    torch::nn::AnyModule layer;
    (void)(build_if<Rs>(gate, experts, aux, layer) || ...);
    return layer;
  }

  // A registered, non-null router on the experts' device and dtype.
  template <class X>
  const std::shared_ptr<torch::nn::Module>& checked_gate(
      const std::shared_ptr<torch::nn::Module>& gate, const std::shared_ptr<X>& experts) const {
    if (!experts) throw std::invalid_argument("btx: MoE layer experts must be non-null");
    if (!gate || !is_registered_type_(*gate)) {
      throw std::invalid_argument("btx: router '" + spec_.name +
                                  "': make_layer needs a router its make_router built (" +
                                  join(types_) + ")");
    }
    const auto params = experts->parameters();
    if (!params.empty()) gate->to(params.front().device(), params.front().scalar_type());
    return gate;
  }

  static std::string join(const std::vector<std::string>& names) {
    std::string out;
    for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
    return out;
  }

  RouterSpec spec_;
  std::vector<std::string> types_;
  std::function<bool(const torch::nn::Module&)> is_registered_type_;
  Route route_ = nullptr;
  LayerBuilder<PackedSwiGLU> packed_ = nullptr;
  LayerBuilder<ModuleExperts> modules_ = nullptr;
};

// Registrations by name, in registration order. An exact name wins over families; names
// and families may not overlap. Thread-safe: add() and find() take a mutex (matchers run
// under it, so they must not call the registry).
class RouterRegistry {
 public:
  // Registers routers of types Rs under spec.name. Throws std::invalid_argument on an
  // incomplete spec or a name (or family) that overlaps one already registered.
  template <Router... Rs>
  void add(RouterSpec spec) {
    static_assert(sizeof...(Rs) > 0, "name the router type(s) RouterSpec.make returns");
    add(RegisteredRouter::of<Rs...>(std::move(spec)));
  }

  void add(RegisteredRouter router) {
    auto entry = std::make_shared<const RegisteredRouter>(std::move(router));
    const std::string& name = entry->name();
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& r : routers_) {
      if (r->name() == name) {
        throw std::invalid_argument("btx::register_router: a router named '" + name +
                                    "' is already registered (" + r->spec().describe + ")");
      }
      if (!entry->is_family() && r->is_family() && r->matches(name)) {
        throw std::invalid_argument("btx::register_router: '" + name +
                                    "' already belongs to the router family '" + r->name() + "'");
      }
      if (entry->is_family() && !r->is_family() && entry->matches(r->name())) {
        throw std::invalid_argument("btx::register_router: family '" + name +
                                    "' would also claim the registered router '" + r->name() + "'");
      }
    }
    routers_.push_back(std::move(entry));
  }

  // The registration `router` names; nullptr when none.
  [[nodiscard]] std::shared_ptr<const RegisteredRouter> find_if_registered(
      const std::string& router) const {
    lookups_.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& r : routers_) {
      if (!r->is_family() && r->name() == router) return r;
    }
    for (const auto& r : routers_) {
      if (r->is_family() && r->matches(router)) return r;
    }
    return nullptr;
  }

  // The registration `router` names; throws std::invalid_argument listing the valid names.
  [[nodiscard]] std::shared_ptr<const RegisteredRouter> find(const std::string& router) const {
    if (auto r = find_if_registered(router)) return r;
    std::string valid;
    for (const auto& n : names()) valid += (valid.empty() ? "" : ", ") + n;
    throw std::invalid_argument("btx: unknown router '" + router + "'; valid: " + valid);
  }

  // Every registration, in registration order.
  [[nodiscard]] std::vector<std::shared_ptr<const RegisteredRouter>> all() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return routers_;
  }

  // Registered names (families as their pattern, e.g. "topk:K"), in registration order.
  [[nodiscard]] std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& r : all()) out.push_back(r->name());
    return out;
  }

  // How many names were looked up so far: a resolved RouterChoice is never looked up
  // again (the test that follows a config's router to its layers counts them).
  [[nodiscard]] uint64_t lookups() const { return lookups_.load(std::memory_order_relaxed); }

 private:
  mutable std::mutex mutex_;
  mutable std::atomic<uint64_t> lookups_{0};
  std::vector<std::shared_ptr<const RegisteredRouter>> routers_;
};

BTX_NAMESPACE_END
}  // namespace btx
