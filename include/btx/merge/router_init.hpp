// SPDX-License-Identifier: MIT
// RouterInit policies: the starting value of each layer's new router W_l [E, H]. Random
// normal (the paper, and HF's init), zero (uniform routing at first), or "hidden" as in
// mergekit-moe: row e is expert e's mean FFN input on sample text, so tokens that look
// like an expert's domain start out routed to it.
#pragma once

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/core/causal_lm.hpp>
#include <btx/merge/averaging.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

// ---------------------------------------------------------------- the concept
// validate(num_sources, num_layers, hidden): throws before a merge produces anything.
template <class R>
concept validates_router_inputs = requires(const R& r, size_t n, int64_t l, int64_t h) {
  r.validate(n, l, h);
};
// init(layer, source_of_expert, hidden, dtype) -> [E, H]. source_of_expert[e] is the source
// whose FFN expert e came from, or -1 when it mixes several (blending).
template <class R>
concept initialises_router = requires(const R& r, int64_t layer, const std::vector<int64_t>& src,
                                      int64_t hidden, torch::ScalarType dtype) {
  { r.init(layer, src, hidden, dtype) } -> std::same_as<torch::Tensor>;
};
template <class R>
concept RouterInit = names_itself<R> && describes_itself_in_json<R> && validates_router_inputs<R> &&
    initialises_router<R> && std::copy_constructible<R>;

// -------------------------------------------------------------- the policies
// N(0, std^2), seeded per (seed, layer): the same router whichever order layers are made.
struct RouterNormal {
  double std = 0.02;
  uint64_t seed = 0;

  [[nodiscard]] std::string name() const { return "normal"; }
  [[nodiscard]] nlohmann::json to_json() const {
    return {{"name", name()}, {"std", std}, {"seed", seed}};
  }
  void validate(size_t, int64_t, int64_t) const {
    if (!(std >= 0.0) || !std::isfinite(std)) {
      throw std::invalid_argument("btx::merge::RouterNormal: std must be finite and >= 0, got " +
                                  std::to_string(std));
    }
  }
  [[nodiscard]] torch::Tensor init(int64_t layer, const std::vector<int64_t>& src, int64_t hidden,
                                   torch::ScalarType dtype) const {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed * 1000003ULL + uint64_t(layer));
    // On the CPU: a router's initial weights depend on the seed, not on the compute device.
    auto w = torch::randn({int64_t(src.size()), hidden}, gen,
                          torch::dtype(torch::kFloat32).device(torch::kCPU)) *
             std;
    return w.to(dtype);
  }
};

// All zeros: every expert gets weight 1/E until the router learns.
struct RouterZero {
  [[nodiscard]] std::string name() const { return "zero"; }
  [[nodiscard]] nlohmann::json to_json() const { return {{"name", name()}}; }
  void validate(size_t, int64_t, int64_t) const {}
  [[nodiscard]] torch::Tensor init(int64_t, const std::vector<int64_t>& src, int64_t hidden,
                                   torch::ScalarType dtype) const {
    return torch::zeros({int64_t(src.size()), hidden}, torch::dtype(dtype).device(torch::kCPU));
  }
};

// mergekit-moe's "hidden" mode. per_source[j] is [L, H]: a mean FFN input per layer for
// source j (see mean_mlp_inputs). As in mergekit, each row is scaled to unit L2 norm (norms
// below 1e-8 clamped), then multiplied by `scale`; normalize=false keeps the raw means.
// Differences from mergekit, by choice: btx takes the FFN's actual input (the output of
// post_attention_layernorm, what the router sees) where mergekit takes the residual
// stream entering the layer, and averages over all tokens (mergekit's "hidden_avg"; its
// default "hidden" takes the last token). Two ways to fill it:
//   hidden_router_init(experts, samples): each expert on the same sample text;
//   hidden_router_init_from_prompts(base, prompts[, negative]): mergekit's way, the base
//   model on each expert's own domain prompts (minus its negative prompts).
struct RouterFromHidden {
  std::vector<torch::Tensor> per_source;  // N tensors [L, H]
  double scale = 1.0;
  bool normalize = true;

  [[nodiscard]] std::string name() const { return "hidden"; }
  [[nodiscard]] nlohmann::json to_json() const {
    return {{"name", name()}, {"scale", scale}, {"normalize", normalize}};
  }
  void validate(size_t num_sources, int64_t num_layers, int64_t hidden) const {
    if (per_source.size() != num_sources) {
      throw std::invalid_argument("btx::merge::RouterFromHidden: " +
                                  std::to_string(per_source.size()) + " hidden-state tables for " +
                                  std::to_string(num_sources) + " sources; give one per source");
    }
    for (size_t j = 0; j < per_source.size(); ++j) {
      const auto& t = per_source[j];
      if (!t.defined() || t.dim() != 2 || t.size(0) != num_layers || t.size(1) != hidden) {
        throw std::invalid_argument(
            "btx::merge::RouterFromHidden: hidden states of source " + std::to_string(j) +
            " must be [num_layers=" + std::to_string(num_layers) +
            ", hidden=" + std::to_string(hidden) + "], got " +
            (t.defined() ? shape_string(t.sizes().vec()) : std::string("an undefined tensor")));
      }
      if (!torch::isfinite(t).all().item<bool>()) {
        throw std::invalid_argument("btx::merge::RouterFromHidden: hidden states of source " +
                                    std::to_string(j) + " contain NaN or Inf");
      }
    }
  }
  [[nodiscard]] torch::Tensor init(int64_t layer, const std::vector<int64_t>& src, int64_t hidden,
                                   torch::ScalarType dtype) const {
    std::vector<torch::Tensor> rows;
    for (size_t e = 0; e < src.size(); ++e) {
      if (src[e] < 0 || size_t(src[e]) >= per_source.size()) {
        throw std::invalid_argument(
            "btx::merge::RouterFromHidden: expert " + std::to_string(e) +
            " does not come from a single source (blending?); use RouterNormal or RouterZero");
      }
      auto row = per_source[size_t(src[e])][layer].to(torch::kFloat32).reshape({hidden});
      if (normalize) row = row / row.norm().clamp_min(1e-8);
      rows.push_back(row * scale);
    }
    return torch::stack(rows).to(dtype);
  }
};

static_assert(RouterInit<RouterNormal>);
static_assert(RouterInit<RouterZero>);
static_assert(RouterInit<RouterFromHidden>);

// ------------------------------------------------------- hidden states of a model
// Mean FFN input per layer over every token of `samples` (each [B, S] token ids): [L, D]
// fp32, from model->ffn_inputs(ids) (any family's holder, or a btx::CausalLM). Tokens
// weigh equally (mergekit averages per prompt first).
template <lm_ffn_inputs Model>
torch::Tensor mean_mlp_inputs(Model& model, const std::vector<torch::Tensor>& samples) {
  if (samples.empty()) {
    throw std::invalid_argument("btx::merge::mean_mlp_inputs: no sample token ids given");
  }
  torch::NoGradGuard no_grad;
  const auto device = model->parameters().front().device();
  torch::Tensor sum_LD;
  int64_t tokens = 0;
  for (const auto& ids : samples) {
    const std::vector<torch::Tensor> ffn_inputs =
        model->ffn_inputs(ids.to(device));  // L x [B, S, D]
    std::vector<torch::Tensor> per_layer;
    for (const auto& x_BSD : ffn_inputs) {
      per_layer.push_back(x_BSD.to(torch::kFloat32).reshape({-1, x_BSD.size(-1)}).sum(0));
    }
    auto s_LD = torch::stack(per_layer).cpu();
    sum_LD = sum_LD.defined() ? sum_LD + s_LD : s_LD;
    tokens += ids.numel();
  }
  return sum_LD / double(tokens);
}

// RouterFromHidden over each expert's own hidden states on the same samples.
template <lm_ffn_inputs Model>
RouterFromHidden hidden_router_init(std::vector<Model>& experts,
                                    const std::vector<torch::Tensor>& samples, double scale = 1.0) {
  RouterFromHidden r;
  r.scale = scale;
  for (auto& m : experts) r.per_source.push_back(mean_mlp_inputs(m, samples));
  return r;
}

// With mergekit's negative prompts: row j is the mean on expert j's prompts minus the mean
// on its negative ones (an expert without negatives, or `negative` empty: nothing taken).
template <lm_ffn_inputs Model>
RouterFromHidden hidden_router_init_from_prompts(
    Model& base, const std::vector<std::vector<torch::Tensor>>& prompts_per_expert,
    const std::vector<std::vector<torch::Tensor>>& negative_per_expert, double scale = 1.0) {
  if (!negative_per_expert.empty() && negative_per_expert.size() != prompts_per_expert.size()) {
    throw std::invalid_argument("btx::merge::hidden_router_init_from_prompts: " +
                                std::to_string(negative_per_expert.size()) +
                                " negative prompt lists for " +
                                std::to_string(prompts_per_expert.size()) + " experts");
  }
  RouterFromHidden r;
  r.scale = scale;
  for (size_t j = 0; j < prompts_per_expert.size(); ++j) {
    torch::Tensor h_LD = mean_mlp_inputs(base, prompts_per_expert[j]);
    if (!negative_per_expert.empty() && !negative_per_expert[j].empty()) {
      h_LD = h_LD - mean_mlp_inputs(base, negative_per_expert[j]);
    }
    r.per_source.push_back(h_LD);
  }
  return r;
}

// mergekit's recipe: one model (the base) run on each expert's own prompts; row j of
// every router comes from prompts_per_expert[j] (each a list of [B, T] token ids).
template <lm_ffn_inputs Model>
RouterFromHidden hidden_router_init_from_prompts(
    Model& base, const std::vector<std::vector<torch::Tensor>>& prompts_per_expert,
    double scale = 1.0) {
  return hidden_router_init_from_prompts(base, prompts_per_expert, {}, scale);
}

// Adapter for splitting: the C experts cut from one source share that source's router row,
// so equal logits make top-(C*k) over the N*C experts pick all C chunks of k sources, i.e.
// k whole FFNs as before the split. Finetuning may then pull the rows apart.
template <RouterInit R>
struct RouterRowPerSource {
  R inner;
  [[nodiscard]] std::string name() const { return inner.name(); }
  [[nodiscard]] nlohmann::json to_json() const {
    auto j = inner.to_json();
    j["row_per_source"] = true;
    return j;
  }
  void validate(size_t n, int64_t layers, int64_t hidden) const {
    inner.validate(n, layers, hidden);
  }
  // src[e]: the source of expert e, possibly repeated; rows are init'ed once per source.
  [[nodiscard]] torch::Tensor init(int64_t layer, const std::vector<int64_t>& src, int64_t hidden,
                                   torch::ScalarType dtype) const {
    std::vector<int64_t> unique, row_of_expert;
    for (auto s : src) {
      auto it = std::find(unique.begin(), unique.end(), s);
      row_of_expert.push_back(int64_t(it - unique.begin()));
      if (it == unique.end()) unique.push_back(s);
    }
    const auto rows = inner.init(layer, unique, hidden, dtype);
    return rows.index_select(0, torch::tensor(row_of_expert, torch::kInt64).to(rows.device()));
  }
};
static_assert(RouterInit<RouterRowPerSource<RouterNormal>>);

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
