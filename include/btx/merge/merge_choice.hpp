// SPDX-License-Identifier: MIT
// A merge as a config describes it: a method, an averaging policy and a router init, each
// by registered name with its own options (merge/{method,averaging,router_init}_registry
// .hpp). read_merge_choice() reads them from a config's keys, whatever names a tool gives
// those keys (btx-merge: method, split, density, ...; the pipeline: experts_from,
// split_chunks, averaging_density, ...); an option given for an entry that does not take
// it is refused naming the entries that do. plan_merge() plans any choice over any
// sources, in memory or streamed from checkpoints.
#pragma once

#include <nlohmann/json.hpp>

#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/core/schema.hpp>
#include <btx/merge/any_averaging.hpp>
#include <btx/merge/averaging_registry.hpp>
#include <btx/merge/method_registry.hpp>
#include <btx/merge/mixers.hpp>
#include <btx/merge/moe_plan.hpp>
#include <btx/merge/plan.hpp>
#include <btx/merge/router_init_registry.hpp>
#include <btx/merge/state_dict.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

// One registered entry with its options read (every key, defaults filled in).
template <class Spec>
struct Chosen {
  std::shared_ptr<const Spec> spec;
  nlohmann::json options = nlohmann::json::object();

  [[nodiscard]] const std::string& name() const { return spec->name; }
  [[nodiscard]] nlohmann::json to_json() const {
    return {{"name", spec->name}, {"options", options}};
  }
};

struct MergeChoice {
  Chosen<MergeMethodSpec> method;
  Chosen<AveragingSpec> averaging;
  Chosen<RouterInitSpec> router_init;

  // The experts' names in router order, from the sources' names.
  [[nodiscard]] std::vector<std::string> expert_names(
      const std::vector<std::string>& sources) const {
    return method.spec->expert_names(sources, method.options);
  }
  [[nodiscard]] nlohmann::json to_json() const {
    return {{"method", method.to_json()},
            {"averaging", averaging.to_json()},
            {"router_init", router_init.to_json()}};
  }
};

// The names a tool gives the choice's keys in its config: the three entries' keys and,
// per option key of any entry, the config key that carries it (unlisted: the option's own
// name). Defaults are the entries a config that leaves a key out gets.
struct MergeKeys {
  std::string method = "method", averaging = "averaging", router_init = "router_init";
  std::map<std::string, std::string> options = {};
  std::string default_method = "btx", default_averaging = "uniform", default_router_init = "normal";

  [[nodiscard]] std::string key_of(const std::string& option) const {
    const auto it = options.find(option);
    return it == options.end() ? option : it->second;
  }
};

namespace detail {

// Entry `name` with its options read; a refusal names the option by the config's key for
// it, with the entry it belongs to ("config: split (method split) must be > 0, got 0").
template <class Spec>
Chosen<Spec> choose(const NamedRegistry<Spec>& registry, const std::string& name,
                    const nlohmann::json& given, const std::string& entry_key,
                    const MergeKeys& keys) {
  Chosen<Spec> c;
  c.spec = registry.find(name);
  try {
    c.options = c.spec->options.read(given, "");
  } catch (const std::invalid_argument& e) {
    std::string what = e.what();
    for (const auto& option : c.spec->options.keys) {
      const std::string said = "config: " + option;
      if (what.rfind(said, 0) == 0 && what.size() > said.size() &&
          (what[said.size()] == ' ' || what[said.size()] == '[')) {
        what = "config: " + keys.key_of(option) + " (" + entry_key + " " + name + ")" +
               what.substr(said.size());
        break;
      }
    }
    throw std::invalid_argument(what);
  }
  return c;
}

}  // namespace detail

// Every config key the choice may read: the three names and every option key of every
// registered entry, under the tool's names.
inline std::vector<std::string> merge_choice_keys(const MergeKeys& keys) {
  std::vector<std::string> out = {keys.method, keys.averaging, keys.router_init};
  const auto add = [&](const auto& registry) {
    for (const auto& e : registry.all()) {
      for (const auto& k : e->options.keys) {
        const auto key = keys.key_of(k);
        if (std::find(out.begin(), out.end(), key) == out.end()) out.push_back(key);
      }
    }
  };
  add(methods());
  add(averagings());
  add(router_inits());
  return out;
}

// The choice `j` (a config mapping; keys of other concerns ignored) describes. Unknown
// names list the registered ones; an option for an entry that does not take it is refused
// naming the config key and the entries that take it.
inline MergeChoice read_merge_choice(const nlohmann::json& j, const MergeKeys& keys = {}) {
  const auto name_of = [&](const std::string& key, const std::string& fallback) {
    if (!j.contains(key)) return fallback;
    return schema::detail::decode<std::string>(j.at(key), key);
  };
  const std::string method = name_of(keys.method, keys.default_method);
  const std::string averaging = name_of(keys.averaging, keys.default_averaging);
  const std::string router_init = name_of(keys.router_init, keys.default_router_init);
  const auto method_spec = methods().find(method);
  const auto averaging_spec = averagings().find(averaging);
  const auto init_spec = router_inits().find(router_init);
  // Each option key given goes to the chosen entry that takes it.
  nlohmann::json for_method = nlohmann::json::object(), for_averaging = for_method,
                 for_init = for_method;
  std::map<std::string, bool> taken;
  const auto collect = [&](const OptionSchema& s, nlohmann::json& into) {
    for (const auto& option : s.keys) {
      const auto key = keys.key_of(option);
      if (j.contains(key)) {
        into[option] = j.at(key);
        taken[key] = true;
      }
    }
  };
  collect(method_spec->options, for_method);
  collect(averaging_spec->options, for_averaging);
  collect(init_spec->options, for_init);
  for (const auto& key : merge_choice_keys(keys)) {
    if (!j.contains(key) || taken.count(key) || key == keys.method || key == keys.averaging ||
        key == keys.router_init) {
      continue;
    }
    std::vector<std::string> takers;
    const auto add = [&](const auto& registry, const std::string& what) {
      std::vector<std::string> names;
      for (const auto& e : registry.all()) {
        for (const auto& o : e->options.keys) {
          if (keys.key_of(o) == key) names.push_back(e->name);
        }
      }
      if (!names.empty()) takers.push_back(what + " " + schema::join(names));
    };
    add(methods(), keys.method);
    add(averagings(), keys.averaging);
    add(router_inits(), keys.router_init);
    throw schema::error(key, "applies to " + schema::join(takers, "; ") + " only (" + keys.method +
                                 " is " + method + ", " + keys.averaging + " " + averaging + ", " +
                                 keys.router_init + " " + router_init + ")");
  }
  MergeChoice c;
  c.method = detail::choose(methods(), method, for_method, keys.method, keys);
  c.averaging = detail::choose(averagings(), averaging, for_averaging, keys.averaging, keys);
  c.router_init = detail::choose(router_inits(), router_init, for_init, keys.router_init, keys);
  if (c.router_init.spec->per_source && !c.method.spec->per_source_experts) {
    throw schema::error(keys.router_init,
                        router_init +
                            " starts each expert's router row from its source's data, "
                            "but " +
                            keys.method + " " + method +
                            " does not make each expert from one source (use normal or zero)");
  }
  return c;
}

// What a plan needs besides the choice and the sources.
struct MergeContext {
  int64_t experts_per_token = 2;  // k as the config gives it
  int64_t copies = 0;             // methods that copy one source: experts wanted
  SharedExpertChoice shared{};
  bool router_bias = false;           // MoeRecipe::router_bias (the output architecture's router)
  int64_t dense_layers = 0;           // MoeRecipe::dense_layers
  std::optional<size_t> base_source;  // the base among the sources (averaging keep_base)
  uint64_t seed = 0;                  // router init normal, random drops
  std::function<std::vector<torch::Tensor>()> hidden_states = {};  // router init hidden
};

// The averaging and router init the choice names, made for `n` sources.
inline AnyAveraging make_averaging(const MergeChoice& c, size_t n, bool has_base,
                                   const MergeContext& ctx) {
  if (c.averaging.spec->needs_base && !has_base) {
    throw std::invalid_argument("config: averaging " + c.averaging.name() +
                                " merges task vectors against a base model, and none is given");
  }
  return c.averaging.spec->make(c.averaging.options, {n, has_base, ctx.base_source, ctx.seed});
}

// The plan of choice `c` over `sources` (and the base they branched from, for the
// averagings that need one).
template <TensorSource S>
Plan plan_merge(const MergeChoice& c, const std::vector<S>& sources, const S* base,
                const MergeContext& ctx) {
  const auto& method = *c.method.spec;
  if (method.dense_output) {
    return BtmMerge<AnyAveraging>{make_averaging(c, sources.size(), base != nullptr, ctx)}.plan(
        sources, base);
  }
  if (sources.empty()) throw std::invalid_argument("btx::merge: no sources to merge");
  MethodContext m;
  m.num_sources = sources.size();
  m.width = validate_dense_sources(sources, base).intermediate;
  m.experts_per_token = ctx.experts_per_token;
  m.copies = ctx.copies;
  m.shared = ctx.shared;
  MoeRecipe recipe = method.recipe(c.method.options, m);
  recipe.router_bias = ctx.router_bias;
  recipe.dense_layers = ctx.dense_layers;
  AnyRouterInit router =
      c.router_init.spec->make(c.router_init.options, {ctx.seed, ctx.hidden_states});
  if (method.row_per_source && method.row_per_source(c.method.options)) {
    router = RouterRowPerSource<AnyRouterInit>{router};
  }
  if (method.copies_one_source) return moe_plan(sources, KeepOne{0}, router, std::move(recipe));
  return moe_plan(sources, make_averaging(c, sources.size(), base != nullptr, ctx), router,
                  std::move(recipe), base);
}

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
