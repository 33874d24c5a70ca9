// SPDX-License-Identifier: MIT
// The CheckpointMerger policies: BTX mix, splitting, blending, sparse upcycling (dense
// experts -> MoE, outputs named by the MoE contract) and BTM merge (-> one dense model).
// Each validates every source before producing anything and returns a Plan, so the same
// merge runs all at once (merge()) or tensor by tensor (a streaming checkpoint writer).
//
//   auto plan = btx::merge::BtxMix<>{}.plan(sources);   // sources: TensorSources
//   btx::merge::StateDict moe = btx::merge::materialize(plan);
#pragma once

#include <torch/torch.h>

#include <concepts>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/merge/averaging.hpp>
#include <btx/merge/dense_layout.hpp>
#include <btx/merge/moe_plan.hpp>
#include <btx/merge/plan.hpp>
#include <btx/merge/recipes.hpp>
#include <btx/merge/router_init.hpp>
#include <btx/merge/state_dict.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

// ---------------------------------------------------------------- the concept
template <class M, class S>
concept plans_merges_of = requires(const M& m, const std::vector<S>& sources) {
  { m.plan(sources) } -> std::same_as<Plan>;
};
template <class M, class S>
concept CheckpointMerger =
    names_itself<M> && TensorSource<S> && plans_merges_of<M, S> && std::copy_constructible<M>;

template <class M, TensorSource S>
requires CheckpointMerger<M, S> StateDict merge(const M& merger, const std::vector<S>& sources) {
  return materialize(merger.plan(sources));
}

// Every mixer also plans with a base: the seed the sources branched from, which
// task-vector averaging policies (trunk_merging.hpp) need: merger.plan(sources, &seed).

namespace detail {
template <TensorSource S>
int64_t intermediate_of(const std::vector<S>& sources) {
  if (sources.empty()) throw std::invalid_argument("btx::merge: no sources to merge");
  return validate_dense_sources(sources).intermediate;
}
}  // namespace detail

// ------------------------------------------------------------------ BTX mix
// The paper's MiX: expert j of every layer is source j's FFN; every other tensor is
// averaged by `averaging`; routers start from `router`.
template <AveragingPolicy A = UniformMean, RouterInit R = RouterNormal>
struct BtxMix {
  A averaging{};
  R router{};
  int64_t experts_per_token = 2;
  SharedExpertChoice shared{};  // an always-on shared expert (Qwen2-MoE), see moe_plan.hpp

  [[nodiscard]] std::string name() const { return "btx_mix"; }
  template <TensorSource S>
  [[nodiscard]] Plan plan(const std::vector<S>& sources, const S* base = nullptr) const {
    return moe_plan(
        sources, averaging, router,
        btx_recipe(sources.size(), detail::intermediate_of(sources), experts_per_token, shared),
        base);
  }
};

// ---------------------------------------------------------------- splitting
// Each source FFN is cut into `chunks` = C pieces along I: N*C experts of I/C each, expert
// j*C + c holding rows [c*I/C, (c+1)*I/C) of source j. SwiGLU acts elementwise along I, so
// the sum of a source's C chunk outputs equals its dense FFN output.
// Matching the unsplit MoE: if the C chunks of source j share source j's router row (as
// RouterFromHidden gives), top-(C*k) routing selects all chunks of the top-k sources, but
// the renormalised weights give each chunk g_j / C, so the output is 1/C of the unsplit
// MoE's. With rescale_down = true every chunk's down_proj is multiplied by C and the split
// MoE with top-(C*k) reproduces the unsplit top-k MoE exactly. The manifest suggests
// experts_per_token = C*k (experts_per_token here is the unsplit k).
template <AveragingPolicy A = UniformMean, RouterInit R = RouterNormal>
struct SplitMix {
  A averaging{};
  R router{};
  int64_t chunks = 2;
  int64_t experts_per_token = 2;
  bool rescale_down = false;  // multiply down_proj chunks by C (see above)
  SharedExpertChoice shared{};

  [[nodiscard]] std::string name() const { return "split"; }
  template <TensorSource S>
  [[nodiscard]] Plan plan(const std::vector<S>& sources, const S* base = nullptr) const {
    return moe_plan(sources, averaging, router,
                    split_recipe(sources.size(), detail::intermediate_of(sources), chunks,
                                 experts_per_token, rescale_down, shared),
                    base);
  }
};

// ----------------------------------------------------------------- blending
// N experts, expert n the concatenation (along I) of chunk n of every source's FFN:
// [chunk n of source 0, chunk n of source 1, ...], each chunk I/N wide. Every expert mixes
// every domain, so RouterFromHidden does not apply.
template <AveragingPolicy A = UniformMean, RouterInit R = RouterNormal>
struct BlendMix {
  A averaging{};
  R router{};
  int64_t experts_per_token = 2;
  SharedExpertChoice shared{};

  [[nodiscard]] std::string name() const { return "blend"; }
  template <TensorSource S>
  [[nodiscard]] Plan plan(const std::vector<S>& sources, const S* base = nullptr) const {
    return moe_plan(
        sources, averaging, router,
        blend_recipe(sources.size(), detail::intermediate_of(sources), experts_per_token, shared),
        base);
  }
};

// --------------------------------------------------------- sparse upcycling
// One source (the seed): num_experts copies of its FFN, each optionally perturbed by
// Gaussian noise of std noise_std * std(weight), seeded; everything else copied.
template <RouterInit R = RouterNormal>
struct Upcycle {
  int64_t num_experts = 4;
  R router{};
  double noise_std = 0.0;
  uint64_t noise_seed = 0;
  int64_t experts_per_token = 2;
  SharedExpertChoice shared{};  // of_source(0): the seed's FFN as the shared expert too
  bool router_bias = false;     // MoeRecipe::router_bias
  int64_t dense_layers = 0;     // MoeRecipe::dense_layers

  [[nodiscard]] std::string name() const { return "upcycle"; }
  template <TensorSource S>
  [[nodiscard]] Plan plan(const std::vector<S>& sources) const {
    if (sources.size() != 1) {
      throw std::invalid_argument("btx::merge::Upcycle: needs exactly one source (the seed), got " +
                                  std::to_string(sources.size()));
    }
    auto recipe = upcycle_recipe(1, detail::intermediate_of(sources), num_experts,
                                 experts_per_token, noise_std, noise_seed, shared);
    recipe.router_bias = router_bias;
    recipe.dense_layers = dense_layers;
    return moe_plan(sources, KeepOne{0}, router, std::move(recipe));
  }
};

// ---------------------------------------------------------------- BTM merge
// Branch-Train-Merge's parameter average: one dense model, every tensor (FFNs included)
// averaged by `averaging`.
template <AveragingPolicy A = UniformMean>
struct BtmMerge {
  A averaging{};

  [[nodiscard]] std::string name() const { return "btm_merge"; }
  template <TensorSource S>
  [[nodiscard]] Plan plan(const std::vector<S>& sources, const S* base = nullptr) const {
    const DenseLayout layout = validate_dense_sources(sources, base);
    const std::vector<double> weights = plan_averaging(averaging, sources.size(), base != nullptr);
    MixManifest m;
    m.method = name();
    m.sources = labels_of(sources);
    m.averaging = averaging.to_json();
    m.weights = weights;
    if (base) m.base = base->label();
    auto state = std::make_shared<const std::vector<S>>(sources);
    auto base_state = base ? std::make_shared<const S>(*base) : std::shared_ptr<const S>();
    auto labels = m.sources;
    Plan::Compute compute = [state, base_state, labels, averaging = averaging,
                             weights](const TensorSpec& spec) {
      torch::NoGradGuard no_grad;
      return merge_tensor(averaging, weights,
                          shared_tensor_inputs(spec.name, *state, base_state.get(), labels));
    };
    return Plan(layout.specs, std::move(compute), std::move(m));
  }
};

static_assert(CheckpointMerger<BtxMix<>, StateDictSource>);
static_assert(CheckpointMerger<SplitMix<>, StateDictSource>);
static_assert(CheckpointMerger<BlendMix<>, StateDictSource>);
static_assert(CheckpointMerger<Upcycle<>, StateDictSource>);
static_assert(CheckpointMerger<BtmMerge<>, StateDictSource>);

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
