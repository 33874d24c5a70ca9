// SPDX-License-Identifier: MIT
// Merge methods by name, each registered once with its own options: how dense sources'
// sublayers become an MoE's experts (btx: expert j is source j's FFN; split: each FFN cut
// into chunks; blend: expert n holds chunk n of every FFN; upcycle: copies of one model's
// FFN) or, for btm_merge, one dense model. A method is a recipe (merge/moe_plan.hpp) of
// which rows of which source each expert takes; btx-merge, the pipeline's mix and a user's
// program plan every method through plan_merge (merge/merge_choice.hpp). A program adds its
// own with btx::merge::methods().add({...}).
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/core/named_registry.hpp>
#include <btx/core/schema.hpp>
#include <btx/merge/moe_plan.hpp>
#include <btx/merge/recipes.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

// What a method's recipe is made for.
struct MethodContext {
  size_t num_sources = 0;         // sources whose sublayers the experts come from
  int64_t width = 0;              // the sublayer's width (the FFN's F) in every source
  int64_t experts_per_token = 2;  // k as the config gives it (split: of the unsplit experts)
  int64_t copies = 0;             // methods that copy one source: how many experts (>= 1)
  SharedExpertChoice shared{};    // an always-on shared expert, see moe_plan.hpp
};

struct MergeMethodSpec {
  std::string name, describe;
  std::vector<std::string> aliases = {};
  OptionSchema options = OptionSchema::none();
  bool dense_output = false;       // one dense model (btm_merge): no experts, no router
  bool per_source_experts = true;  // each expert from one source's data (router init hidden)
  bool copies_one_source = false;  // one source, copied (upcycle): no averaging
  // The experts: which rows of which source each takes (not for dense_output).
  std::function<MoeRecipe(const nlohmann::json& options, const MethodContext&)> recipe = {};
  // Whether experts cut from one source share its router row at the start (split).
  std::function<bool(const nlohmann::json& options)> row_per_source = {};
  // The experts' names, in router order, from the sources' names.
  std::function<std::vector<std::string>(const std::vector<std::string>& sources,
                                         const nlohmann::json& options)>
      expert_names = {};
};

namespace detail {

struct SplitOptions {
  int64_t chunks = 2;
  bool rescale_down = true;
};
struct UpcycleOptions {
  double noise_std = 0.0;
  uint64_t noise_seed = 0;
};

inline NamedRegistry<MergeMethodSpec>& seeded_methods() {
  static NamedRegistry<MergeMethodSpec> registry("merge method");
  const auto same_names = [](const std::vector<std::string>& sources, const nlohmann::json&) {
    return sources;
  };
  registry.add({.name = "btx",
                .describe = "the BTX paper's MiX: expert j is source j's FFN",
                .aliases = {"btx_mix"},
                .recipe =
                    [](const nlohmann::json&, const MethodContext& c) {
                      return btx_recipe(c.num_sources, c.width, c.experts_per_token, c.shared);
                    },
                .expert_names = same_names});
  registry.add(
      {.name = "split",
       .describe = "each source's FFN cut into `chunks` experts of 1/chunks the width; with "
                   "rescale_down, top-(chunks*k) equals the unsplit top-k",
       .options = OptionSchema::of(
           schema::Schema<SplitOptions>("split options")
               .key("chunks", &SplitOptions::chunks, "experts cut from each source's FFN",
                    schema::positive<int64_t>())
               .key("rescale_down", &SplitOptions::rescale_down,
                    "each chunk's down_proj times chunks, so a source's chunks together "
                    "equal its FFN under the unsplit router weight")),
       .recipe =
           [](const nlohmann::json& o, const MethodContext& c) {
             return split_recipe(c.num_sources, c.width, o.at("chunks").get<int64_t>(),
                                 c.experts_per_token, o.at("rescale_down").get<bool>(), c.shared);
           },
       .row_per_source = [](const nlohmann::json&) { return true; },
       .expert_names =
           [](const std::vector<std::string>& sources, const nlohmann::json& o) {
             std::vector<std::string> out;
             for (const auto& s : sources) {
               for (int64_t k = 0; k < o.at("chunks").get<int64_t>(); ++k) {
                 out.push_back(s + "." + std::to_string(k));
               }
             }
             return out;
           }});
  registry.add({.name = "blend",
                .describe = "expert n holds chunk n of every source's FFN (the paper's Blending)",
                .per_source_experts = false,
                .recipe =
                    [](const nlohmann::json&, const MethodContext& c) {
                      return blend_recipe(c.num_sources, c.width, c.experts_per_token, c.shared);
                    },
                .expert_names =
                    [](const std::vector<std::string>& sources, const nlohmann::json&) {
                      std::vector<std::string> out;
                      for (size_t n = 0; n < sources.size(); ++n)
                        out.push_back("blend-" + std::to_string(n));
                      return out;
                    }});
  registry.add({.name = "upcycle",
                .describe = "sparse upcycling: copies of one model's FFN (optionally perturbed)",
                .options = OptionSchema::of(
                    schema::Schema<UpcycleOptions>("upcycle options")
                        .key("noise_std", &UpcycleOptions::noise_std,
                             "Gaussian noise on each copy, relative to each weight's std",
                             schema::at_least(0.0))
                        .key("noise_seed", &UpcycleOptions::noise_seed, "the noise's seed")),
                .per_source_experts = false,
                .copies_one_source = true,
                .recipe =
                    [](const nlohmann::json& o, const MethodContext& c) {
                      return upcycle_recipe(c.num_sources, c.width, c.copies, c.experts_per_token,
                                            o.at("noise_std").get<double>(),
                                            o.at("noise_seed").get<uint64_t>(), c.shared);
                    },
                .expert_names = [](const std::vector<std::string>& sources,
                                   const nlohmann::json&) { return sources; }});
  registry.add({.name = "btm_merge",
                .describe = "Branch-Train-Merge's parameter average: one dense model, every "
                            "tensor (FFNs too) averaged",
                .dense_output = true,
                .expert_names = [](const std::vector<std::string>&, const nlohmann::json&) {
                  return std::vector<std::string>{};
                }});
  return registry;
}

}  // namespace detail

// The process-wide registry of merge methods, the shipped ones first.
inline NamedRegistry<MergeMethodSpec>& methods() {
  static NamedRegistry<MergeMethodSpec>& registry = detail::seeded_methods();
  return registry;
}

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
