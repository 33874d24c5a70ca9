// SPDX-License-Identifier: MIT
// The engine under every dense -> MoE merge: a recipe per output expert (which rows of
// which source's FFN, along the intermediate dimension F) turned into a Plan whose
// outputs follow the MoE naming contract. BTX mix, splitting, blending and sparse
// upcycling differ only in their recipes (see mixers.hpp).
#pragma once

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/merge/averaging.hpp>
#include <btx/merge/dense_layout.hpp>
#include <btx/merge/manifest.hpp>
#include <btx/merge/plan.hpp>
#include <btx/merge/router_init.hpp>
#include <btx/merge/state_dict.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

// Rows [begin, end) along F of source `source`'s FFN: gate/up rows, down columns.
struct FfnPiece {
  size_t source = 0;
  int64_t begin = 0, end = 0;
};
// One output expert: its pieces concatenated along F, in order.
struct ExpertRecipe {
  std::vector<FfnPiece> pieces;

  [[nodiscard]] int64_t intermediate() const {
    int64_t n = 0;
    for (const auto& p : pieces) n += p.end - p.begin;
    return n;
  }
  // The source it comes from, or -1 when it mixes several.
  [[nodiscard]] int64_t single_source() const {
    if (pieces.empty()) return -1;
    for (const auto& p : pieces) {
      if (p.source != pieces.front().source) return -1;
    }
    return int64_t(pieces.front().source);
  }
};

// Where a merged MoE's always-on shared expert (moe/shared_expert.hpp; Qwen2-MoE and
// GLM-4-MoE have one) comes from. Filled from dense FFNs, the shared expert and the routed
// mixture each start at half weight: a gated one's gate is zero (sigmoid 0 = 1/2), an
// ungated one's down_proj is halved, and the routed experts' down_proj is halved, so when
// every FFN is the same (copies of one model) the MoE equals the dense model, and the
// finetune learns how much of each to use. Several FFNs (several shared experts:
// GLM-4-MoE's n_shared_experts, a Qwen2-MoE shared expert N times as wide) are
// concatenated along F, each at 1/N. Zero-width: the slot a family always has, adding
// exactly 0 (the routed experts are left as they are).
struct SharedFfn {
  bool base = false;  // the base model's FFN, else source `source`'s
  size_t source = 0;
};
struct SharedExpertChoice {
  enum class From { none, zero_width, base, source };
  From from = From::none;       // the first FFN's (or none, or zero-width)
  size_t source = 0;            // From::source: which source's FFN
  std::vector<SharedFfn> also;  // further FFNs in the shared expert, after the first
  bool gated = true;            // sigmoid(shared_expert_gate x) (Qwen2-MoE) or none (GLM-4-MoE)

  [[nodiscard]] static SharedExpertChoice zero_width() { return {From::zero_width, 0}; }
  [[nodiscard]] static SharedExpertChoice of_base() { return {From::base, 0}; }
  [[nodiscard]] static SharedExpertChoice of_source(size_t j) { return {From::source, j}; }
  [[nodiscard]] bool filled() const { return from == From::base || from == From::source; }
  // Every FFN in the shared expert, in order (none unless filled).
  [[nodiscard]] std::vector<SharedFfn> ffns() const {
    if (!filled()) return {};
    std::vector<SharedFfn> out = {{from == From::base, source}};
    out.insert(out.end(), also.begin(), also.end());
    return out;
  }
  [[nodiscard]] bool uses_base() const {
    for (const auto& f : ffns())
      if (f.base) return true;
    return false;
  }
};

// Everything a dense -> MoE plan needs besides the sources and policies.
struct MoeRecipe {
  std::string method;
  std::vector<ExpertRecipe> experts;
  int64_t split_factor = 1;
  int64_t experts_per_token = 2;
  double noise_std = 0.0;  // Gaussian noise on expert weights, relative to each tensor's std
  uint64_t noise_seed = 0;
  double down_scale = 1.0;  // factor on every expert's output projection (splitting's rescale)
  SharedExpertChoice shared{};
  // The output architecture's router carries a balancing bias (gate.e_score_correction_bias,
  // zeros at the start: DeepSeek-V3's, GLM-4-MoE's).
  bool router_bias = false;
  // Leading layers that stay dense (first_k_dense_replace): their FFNs are averaged.
  int64_t dense_layers = 0;
  // The sublayer that becomes experts (the FFN; attention next): pieces run along its
  // width, in units of its first projection's (a projection of another width, as GQA's
  // k and v, takes the same share of its own).
  SublayerNaming sublayer = SublayerNaming::ffn();
};

// Expert e's weight for projection `proj` of one layer, built from the loaded dense
// source tensors ([W, D], or [D, W] for an output projection such as down_proj).
inline torch::Tensor build_expert(const ExpertRecipe& recipe, const std::string& proj,
                                  const std::vector<torch::Tensor>& dense,
                                  const DenseLayout& layout) {
  const int64_t dim = layout.sublayer.width_dim(proj);
  std::vector<torch::Tensor> parts;
  for (const auto& p : recipe.pieces) {
    const auto [begin, end] = layout.rows_of(proj, p.begin, p.end);
    parts.push_back(dense.at(p.source).narrow(dim, begin, end - begin));
  }
  return parts.size() == 1 ? parts.front() : torch::cat(parts, dim);
}

// w plus N(0, (relative_std * std(w))^2), seeded per (seed, layer, projection, expert).
inline torch::Tensor add_relative_noise(const torch::Tensor& w, double relative_std,
                                        uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto w32 = w.to(torch::kFloat32);
  // Drawn on the CPU whatever w's device, so the same merge adds the same noise anywhere.
  auto noise = torch::randn(w.sizes(), gen, torch::dtype(torch::kFloat32).device(torch::kCPU))
                   .to(w.device());
  return (w32 + noise * (relative_std * w32.std())).to(w.scalar_type());
}

// `base`: the seed the sources branched from, for averaging policies that merge task
// vectors (trunk_merging.hpp); null when there is none.
template <TensorSource S, AveragingPolicy A, RouterInit R>
Plan moe_plan(const std::vector<S>& sources, const A& averaging, const R& router, MoeRecipe recipe,
              const S* base = nullptr) {
  // ------------------------------------------------ validate everything first
  const DenseLayout layout = validate_dense_sources(sources, base, recipe.sublayer);
  const SublayerNaming& naming = recipe.sublayer;
  const std::vector<double> weights = plan_averaging(averaging, sources.size(), base != nullptr);
  router.validate(sources.size(), layout.num_layers, layout.hidden);
  if (recipe.experts.empty()) {
    throw std::invalid_argument("btx::merge::" + recipe.method + ": no experts to build");
  }
  const int64_t F_e = recipe.experts.front().intermediate();
  for (size_t e = 0; e < recipe.experts.size(); ++e) {
    for (const auto& p : recipe.experts[e].pieces) {
      if (p.source >= sources.size() || p.begin < 0 || p.end <= p.begin ||
          p.end > layout.intermediate) {
        throw std::invalid_argument(
            "btx::merge::" + recipe.method + ": expert " + std::to_string(e) + " reads rows [" +
            std::to_string(p.begin) + ", " + std::to_string(p.end) + ") of source " +
            std::to_string(p.source) +
            ", outside its FFN (I=" + std::to_string(layout.intermediate) + ")");
      }
      for (const auto& [proj, w] : layout.widths) {
        if (!layout.divides(proj, p.begin) || !layout.divides(proj, p.end)) {
          throw std::invalid_argument("btx::merge::" + recipe.method + ": expert " +
                                      std::to_string(e) + "'s rows [" + std::to_string(p.begin) +
                                      ", " + std::to_string(p.end) + ") do not cut " + proj +
                                      " (width " + std::to_string(w) + ") evenly");
        }
      }
    }
    if (recipe.experts[e].intermediate() != F_e || F_e == 0) {
      throw std::invalid_argument("btx::merge::" + recipe.method +
                                  ": experts must share one intermediate size to be packed");
    }
  }
  if (!std::isfinite(recipe.down_scale) || recipe.down_scale == 0.0) {
    throw std::invalid_argument("btx::merge::" + recipe.method +
                                ": down_scale must be finite and non-zero");
  }
  if (!(recipe.noise_std >= 0.0) || !std::isfinite(recipe.noise_std)) {
    throw std::invalid_argument("btx::merge::" + recipe.method +
                                ": noise std must be finite and >= 0");
  }
  using SharedFrom = SharedExpertChoice::From;
  if (recipe.shared.uses_base() && !base) {
    throw std::invalid_argument("btx::merge::" + recipe.method +
                                ": the shared expert is to be the base model's FFN, but no base "
                                "(seed) was given");
  }
  for (const auto& f : recipe.shared.ffns()) {
    if (!f.base && f.source >= sources.size()) {
      throw std::invalid_argument("btx::merge::" + recipe.method + ": a shared expert's source " +
                                  std::to_string(f.source) + " is not among the " +
                                  std::to_string(sources.size()) + " sources");
    }
  }
  if (recipe.dense_layers < 0 || recipe.dense_layers >= layout.num_layers) {
    throw std::invalid_argument("btx::merge::" + recipe.method + ": dense_layers must be in [0, " +
                                std::to_string(layout.num_layers) + ") (the model's layers), got " +
                                std::to_string(recipe.dense_layers));
  }
  // Filled, the shared expert and the routed mixture start at half weight each (see above).
  if (recipe.shared.filled()) recipe.down_scale *= 0.5;
  const int64_t shared_ffns = int64_t(recipe.shared.ffns().size());
  // Per projection: an expert's width and the shared expert's (every FFN's width, or none).
  std::map<std::string, int64_t> F_e_of, F_s_of;
  for (const auto& [proj, w] : layout.widths) {
    F_e_of[proj] = layout.rows_of(proj, 0, F_e).second;
    F_s_of[proj] = w * shared_ffns;
  }

  // -------------------------------------------------------- the output list
  const int64_t E = int64_t(recipe.experts.size());
  const int64_t D = layout.hidden;
  struct Role {
    int kind = 0;  // 0 averaged, 1 router, 2 experts, 3 shared expert, 4 its gate, 5 router bias
    int64_t layer = 0;
    std::string proj;
  };
  std::vector<TensorSpec> outputs;
  std::map<std::string, Role> roles;
  for (const auto& s : layout.shared_specs()) {
    outputs.push_back(s);
    roles[s.name] = Role{};
  }
  for (int64_t i = 0; i < layout.num_layers; ++i) {
    if (i < recipe.dense_layers) {  // a dense layer: its FFN averaged like the trunk
      for (const auto& proj : naming.projections) {
        outputs.push_back({naming.dense_name(i, proj),
                           naming.is_output(proj) ? std::vector<int64_t>{D, layout.widths.at(proj)}
                                                  : std::vector<int64_t>{layout.widths.at(proj), D},
                           layout.ffn_dtype});
        roles[naming.dense_name(i, proj)] = Role{};
      }
      continue;
    }
    outputs.push_back({naming.router_name(i), {E, D}, layout.ffn_dtype});
    roles[naming.router_name(i)] = Role{1, i, ""};
    if (recipe.router_bias) {
      const std::string bias = naming.prefix(i) + "gate.e_score_correction_bias";
      outputs.push_back({bias, {E}, layout.ffn_dtype});
      roles[bias] = Role{5, i, ""};
    }
    for (const auto& proj : naming.projections) {
      const bool out = naming.is_output(proj);
      const int64_t fe = F_e_of.at(proj), fs = F_s_of.at(proj);
      outputs.push_back({naming.experts_name(i, proj),
                         out ? std::vector<int64_t>{E, D, fe} : std::vector<int64_t>{E, fe, D},
                         layout.ffn_dtype});
      roles[naming.experts_name(i, proj)] = Role{2, i, proj};
      if (recipe.shared.from != SharedFrom::none) {
        outputs.push_back({naming.shared_expert_name(i, proj),
                           out ? std::vector<int64_t>{D, fs} : std::vector<int64_t>{fs, D},
                           layout.ffn_dtype});
        roles[naming.shared_expert_name(i, proj)] = Role{3, i, proj};
      }
    }
    if (recipe.shared.from != SharedFrom::none && recipe.shared.gated) {
      outputs.push_back({naming.shared_expert_gate_name(i), {1, D}, layout.ffn_dtype});
      roles[naming.shared_expert_gate_name(i)] = Role{4, i, ""};
    }
  }
  std::sort(outputs.begin(), outputs.end(),
            [](const TensorSpec& a, const TensorSpec& b) { return a.name < b.name; });

  MixManifest manifest;
  manifest.method = recipe.method;
  manifest.sources = labels_of(sources);
  manifest.averaging = averaging.to_json();
  manifest.router_init = router.to_json();
  manifest.weights = weights;
  manifest.num_experts = E;
  manifest.split_factor = recipe.split_factor;
  manifest.experts_per_token = recipe.experts_per_token;
  manifest.moe_intermediate_size = F_e;
  for (const auto& ex : recipe.experts) {
    nlohmann::json pieces = nlohmann::json::array();
    for (const auto& p : ex.pieces) {
      pieces.push_back({{"source", manifest.sources[p.source]}, {"rows", {p.begin, p.end}}});
    }
    manifest.experts.push_back(std::move(pieces));
  }
  if (recipe.down_scale != 1.0) manifest.options["down_scale"] = recipe.down_scale;
  if (naming.kind != Sublayer::ffn) manifest.options["sublayer"] = to_string(naming.kind);
  if (recipe.noise_std > 0.0) {
    manifest.options["noise_std"] = recipe.noise_std;  // beside down_scale, not instead of it
    manifest.options["noise_seed"] = recipe.noise_seed;
  }

  if (base) manifest.base = base->label();
  if (recipe.shared.from != SharedFrom::none) {
    manifest.shared_expert_intermediate_size = layout.intermediate * shared_ffns;
    nlohmann::json names = nlohmann::json::array();
    for (const auto& f : recipe.shared.ffns())
      names.push_back(f.base ? manifest.base : manifest.sources[f.source]);
    if (names.size() == 1) manifest.options["shared_expert"] = names[0];
    if (names.size() > 1) manifest.options["shared_experts"] = names;
    if (!recipe.shared.gated) manifest.options["shared_expert_gated"] = false;
  }
  if (recipe.dense_layers > 0) manifest.options["dense_layers"] = recipe.dense_layers;

  // --------------------------------------------- computing one output tensor
  auto state = std::make_shared<const std::vector<S>>(sources);
  auto base_state = base ? std::make_shared<const S>(*base) : std::shared_ptr<const S>();
  // The sources whose FFNs fill the shared expert (none: none, or zero-width).
  std::vector<std::shared_ptr<const S>> shared_states;
  for (const auto& f : recipe.shared.ffns()) {
    shared_states.push_back(f.base ? base_state : std::make_shared<const S>(sources[f.source]));
  }
  // Each shared FFN's output projection: 1/N of the shared expert, halved again when no
  // gate halves it (see SharedExpertChoice).
  const double shared_down_scale =
      shared_ffns == 0 ? 1.0 : (recipe.shared.gated ? 1.0 : 0.5) / double(shared_ffns);
  auto labels = manifest.sources;
  Plan::Compute compute = [state, base_state, shared_states, shared_down_scale, labels, averaging,
                           weights, router, recipe, roles, D,
                           layout](const TensorSpec& spec) -> torch::Tensor {
    const SublayerNaming& naming = recipe.sublayer;
    torch::NoGradGuard no_grad;
    const Role& role = roles.at(spec.name);
    const auto& srcs = *state;
    if (role.kind == 0) {
      return merge_tensor(averaging, weights,
                          shared_tensor_inputs(spec.name, srcs, base_state.get(), labels));
    }
    if (role.kind == 1) {
      std::vector<int64_t> src_of;
      for (const auto& ex : recipe.experts) src_of.push_back(ex.single_source());
      return router.init(role.layer, src_of, D, spec.dtype);
    }
    if (role.kind == 3) {
      if (shared_states.empty()) {  // zero-width: no data, on the CPU by name
        return torch::empty(spec.shape, torch::dtype(spec.dtype).device(torch::kCPU));
      }
      const bool down = naming.is_output(role.proj);
      std::vector<torch::Tensor> parts;
      for (const auto& st : shared_states) {
        auto w = st->load(naming.dense_name(role.layer, role.proj));
        if (down && shared_down_scale != 1.0)
          w = (w.to(torch::kFloat32) * shared_down_scale).to(w.scalar_type());
        parts.push_back(w.to(spec.dtype));
      }
      return parts.size() == 1 ? parts.front() : torch::cat(parts, naming.width_dim(role.proj));
    }
    if (role.kind == 4 || role.kind == 5) {  // the shared expert's gate (sigmoid 0 = 1/2) and
      // the router's balancing bias start at 0
      return torch::zeros(spec.shape, torch::dtype(spec.dtype).device(torch::kCPU));
    }
    // Load each source's dense weight once, only if some expert reads it.
    std::vector<torch::Tensor> dense(srcs.size());
    for (const auto& ex : recipe.experts) {
      for (const auto& p : ex.pieces) {
        if (!dense[p.source].defined()) {
          dense[p.source] = srcs[p.source].load(naming.dense_name(role.layer, role.proj));
        }
      }
    }
    const int64_t proj_index =
        std::find(naming.projections.begin(), naming.projections.end(), role.proj) -
        naming.projections.begin();
    std::vector<torch::Tensor> experts;
    for (size_t e = 0; e < recipe.experts.size(); ++e) {
      auto w = build_expert(recipe.experts[e], role.proj, dense, layout);
      if (recipe.down_scale != 1.0 && naming.is_output(role.proj)) {
        w = (w.to(torch::kFloat32) * recipe.down_scale).to(w.scalar_type());
      }
      if (recipe.noise_std > 0.0) {
        const uint64_t seed = recipe.noise_seed * 1000003ULL + uint64_t(role.layer) * 7919ULL +
                              uint64_t(proj_index) * 104729ULL + e;
        w = add_relative_noise(w, recipe.noise_std, seed);
      }
      experts.push_back(w.to(spec.dtype));
    }
    return torch::stack(experts);
  };
  // Experts (and a filled shared expert) that are a source's FFN rows unchanged, in the
  // output dtype, are copied file to file by writers that can (a BTX mix's experts).
  Plan::Locate locate;
  if constexpr (locates_tensor_bytes<S>) {
    locate = [state, shared_states, shared_down_scale, recipe, roles,
              layout](const TensorSpec& spec) -> Plan::FileRanges {
      const Role& role = roles.at(spec.name);
      if (role.kind != 2 && role.kind != 3) return std::nullopt;  // computed, never copied
      const SublayerNaming& naming = recipe.sublayer;
      const bool down = naming.is_output(role.proj);
      const int64_t width = layout.widths.at(role.proj);
      const int64_t row_bytes =
          (down ? width : layout.hidden) * int64_t(c10::elementSize(spec.dtype));
      const auto rows_of = [&](const S& source, int64_t piece_begin,
                               int64_t piece_end) -> std::optional<io::FileRange> {
        const std::string name = naming.dense_name(role.layer, role.proj);
        if (source.spec(name).dtype != spec.dtype) return std::nullopt;
        const auto [begin, end] = layout.rows_of(role.proj, piece_begin, piece_end);
        // An output projection [D, W] holds a column range, contiguous only when it is every
        // column.
        if (down && (begin != 0 || end != width)) return std::nullopt;
        auto range = source.file_range(name);
        if (!range || down) return range;
        range->offset += uint64_t(begin * row_bytes);
        range->bytes = uint64_t((end - begin) * row_bytes);
        return range;
      };
      std::vector<io::FileRange> ranges;
      if (role.kind == 2 && recipe.noise_std == 0.0 && recipe.down_scale == 1.0) {
        for (const auto& ex : recipe.experts) {
          if (ex.pieces.size() != 1) return std::nullopt;
          const auto& p = ex.pieces.front();
          auto range = rows_of((*state)[p.source], p.begin, p.end);
          if (!range) return std::nullopt;
          ranges.push_back(*range);
        }
        return ranges;
      }
      if (role.kind == 3 && shared_states.size() == 1 && shared_down_scale == 1.0) {
        auto range = rows_of(*shared_states.front(), 0, layout.intermediate);  // every row
        if (!range) return std::nullopt;
        return std::vector<io::FileRange>{*range};
      }
      return std::nullopt;
    };
  }
  return Plan(std::move(outputs), std::move(compute), std::move(manifest), std::move(locate));
}

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
