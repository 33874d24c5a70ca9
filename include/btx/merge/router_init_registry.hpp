// SPDX-License-Identifier: MIT
// Router initialisations by name, each registered once with its own options: how a mixed
// MoE's new routers start (normal, alias random: N(0, std^2), seeded; zero: uniform
// routing; hidden: each expert's row from its source's mean FFN input, mergekit's
// default). AnyRouterInit holds any RouterInit behind one type, so a tool instantiates
// each merge plan once whatever the config names.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <concepts>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <btx/core/named_registry.hpp>
#include <btx/core/schema.hpp>
#include <btx/merge/router_init.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

class AnyRouterInit {
 public:
  AnyRouterInit() : AnyRouterInit(RouterNormal{}) {}
  template <class R>
  requires(!std::same_as<std::decay_t<R>, AnyRouterInit> && RouterInit<R>)
      AnyRouterInit(R init)  // NOLINT: implicit, like std::function
      : impl_(std::make_shared<Model<R>>(std::move(init))) {}

  [[nodiscard]] std::string name() const { return impl_->name(); }
  [[nodiscard]] nlohmann::json to_json() const { return impl_->to_json(); }
  void validate(size_t n, int64_t layers, int64_t hidden) const {
    impl_->validate(n, layers, hidden);
  }
  [[nodiscard]] torch::Tensor init(int64_t layer, const std::vector<int64_t>& src, int64_t hidden,
                                   torch::ScalarType dtype) const {
    return impl_->init(layer, src, hidden, dtype);
  }

 private:
  struct Concept {
    virtual ~Concept() = default;
    [[nodiscard]] virtual std::string name() const = 0;
    [[nodiscard]] virtual nlohmann::json to_json() const = 0;
    virtual void validate(size_t n, int64_t layers, int64_t hidden) const = 0;
    [[nodiscard]] virtual torch::Tensor init(int64_t layer, const std::vector<int64_t>& src,
                                             int64_t hidden, torch::ScalarType dtype) const = 0;
  };
  template <class R>
  struct Model final : Concept {
    explicit Model(R r) : init_(std::move(r)) {}
    [[nodiscard]] std::string name() const override { return init_.name(); }
    [[nodiscard]] nlohmann::json to_json() const override { return init_.to_json(); }
    void validate(size_t n, int64_t layers, int64_t hidden) const override {
      init_.validate(n, layers, hidden);
    }
    [[nodiscard]] torch::Tensor init(int64_t layer, const std::vector<int64_t>& src, int64_t hidden,
                                     torch::ScalarType dtype) const override {
      return init_.init(layer, src, hidden, dtype);
    }
    R init_;
  };
  std::shared_ptr<const Concept> impl_;
};
static_assert(RouterInit<AnyRouterInit>);

// What an initialisation is made with: a seed, and (only for those that need them, asked
// at most once) each source's mean FFN input per layer, [L, D] per source.
struct RouterInitContext {
  uint64_t seed = 0;
  std::function<std::vector<torch::Tensor>()> hidden_states = {};
};

struct RouterInitSpec {
  std::string name, describe;
  std::vector<std::string> aliases = {};
  OptionSchema options = OptionSchema::none();
  // Each router row comes from one source's data: every expert must come from one source
  // (not blending).
  bool per_source = false;
  std::function<AnyRouterInit(const nlohmann::json& options, const RouterInitContext&)> make;
};

namespace detail {

struct NormalOptions {
  double std = 0.02;
};
struct HiddenOptions {
  double scale = 1.0;
  bool normalize = true;
};

inline NamedRegistry<RouterInitSpec>& seeded_router_inits() {
  static NamedRegistry<RouterInitSpec> registry("router init");
  registry.add(
      {.name = "normal",
       .describe = "N(0, std^2), seeded: the same router wherever it is made",
       .aliases = {"random"},
       .options = OptionSchema::of(
           schema::Schema<NormalOptions>("normal router init options")
               .key("std", &NormalOptions::std, "standard deviation", schema::at_least(0.0))),
       .make = [](const nlohmann::json& o, const RouterInitContext& c) -> AnyRouterInit {
         return RouterNormal{o.at("std").get<double>(), c.seed};
       }});
  registry.add({.name = "zero",
                .describe = "all zeros: every expert gets weight 1/E until the router learns",
                .make = [](const nlohmann::json&, const RouterInitContext&) -> AnyRouterInit {
                  return RouterZero{};
                }});
  registry.add(
      {.name = "hidden",
       .describe = "row j: source j's mean FFN input (unit norm), mergekit-moe's default",
       .options = OptionSchema::of(
           schema::Schema<HiddenOptions>("hidden router init options")
               .key("scale", &HiddenOptions::scale, "each row's length after normalising")
               .key("normalize", &HiddenOptions::normalize, "rows scaled to unit norm first")),
       .per_source = true,
       .make = [](const nlohmann::json& o, const RouterInitContext& c) -> AnyRouterInit {
         if (!c.hidden_states) {
           throw std::invalid_argument(
               "config: router init hidden needs each expert's hidden states (prompts or "
               "samples of its domain)");
         }
         RouterFromHidden r;
         r.per_source = c.hidden_states();
         r.scale = o.at("scale").get<double>();
         r.normalize = o.at("normalize").get<bool>();
         return r;
       }});
  return registry;
}

}  // namespace detail

// The process-wide registry of router initialisations, the shipped ones first.
inline NamedRegistry<RouterInitSpec>& router_inits() {
  static NamedRegistry<RouterInitSpec>& registry = detail::seeded_router_inits();
  return registry;
}

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
