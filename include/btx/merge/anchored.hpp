// SPDX-License-Identifier: MIT
// Anchored experts (FlexOlmo, Shi et al. 2025): each expert trains as an MoE of two beside
// a frozen copy of the anchor's (the public model's) FFN, with the anchor's router row and
// every shared tensor frozen, so all experts keep one trunk. Merging them is then a
// concatenation that averages nothing: the anchor FFN plus every expert's FFN as experts,
// their router rows stacked. An expert can be removed from the merged model (opt-out) or
// one trained later against the same anchor added (opt-in) without touching the others.
//
//   anchored_expert(anchor, anchor_rows_LD, domain_rows_LD)   the MoE of two to train
//   freeze_anchored(expert, trains)                           what stays fixed (FrozenSlices)
//   check_anchor(anchor, expert)                              trained against this anchor?
// and, in merge/anchored_merge.hpp, merging them:
//   concat_anchored(experts, moe)                             experts [anchor, e_1 .. e_N]
//   remove_experts(moe, {j})  /  add_anchored(moe, expert)    opt-out / opt-in
//
// Works on any family's CausalLM through its FFN naming (core/sublayer_naming.hpp).
// Router rows start as domain embeddings: the mean FFN input of a domain's text through the
// anchor, per layer (merge::mean_mlp_inputs), scaled to unit norm as mergekit's hidden gate.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/core/causal_lm.hpp>
#include <btx/core/moe_config.hpp>
#include <btx/merge/upcycle_model.hpp>
#include <btx/models/family.hpp>
#include <btx/moe/router_registry.hpp>
#include <btx/train/flops.hpp>
#include <btx/train/frozen_slices.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

// What an anchored expert trains besides its own FFN and router row.
enum class AnchoredTrains {
  ffn,           // FlexOlmo: everything shared frozen
  ffn_norms,     // and the RMSNorm weights
  ffn_attention  // and attention (trunks then differ: a merge must average them)
};

inline std::string to_string(AnchoredTrains t) {
  switch (t) {
    case AnchoredTrains::ffn:
      return "ffn";
    case AnchoredTrains::ffn_norms:
      return "ffn+norms";
    case AnchoredTrains::ffn_attention:
      return "ffn+attention";
  }
  return "?";
}
inline AnchoredTrains parse_anchored_trains(const std::string& s) {
  for (auto t : {AnchoredTrains::ffn, AnchoredTrains::ffn_norms, AnchoredTrains::ffn_attention}) {
    if (to_string(t) == s) return t;
  }
  throw std::invalid_argument("anchored experts train '" + s +
                              "', not one of ffn, ffn+norms, ffn+attention");
}

// The MoE of an anchored expert: the anchor's FFN and the expert's, both run on every
// token and weighted by a softmax over their two router rows (top-2 of 2, renormalised);
// no load balancing (both experts always run).
inline MoEConfig anchored_pair_moe() {
  MoEConfig m;
  m.num_experts = 2;
  m.router = RouterChoice("topk:2", {{"renormalize", true}});
  m.load_balance_alpha = 0.0;
  return m;
}

namespace detail {

// One layer's router row as a unit-norm vector (mergekit's hidden gate); a zero row stays
// zero (a logit of 0: the reference the other rows are measured against).
inline torch::Tensor unit_rows(const torch::Tensor& rows_LD, int64_t layer) {
  auto r = rows_LD[layer].to(torch::kFloat32);
  return r / r.norm().clamp_min(1e-8);
}

inline void check_rows(const torch::Tensor& rows_LD, int64_t layers, int64_t hidden,
                       const std::string& what) {
  if (!rows_LD.defined() || rows_LD.dim() != 2 || rows_LD.size(0) != layers ||
      rows_LD.size(1) != hidden) {
    throw std::invalid_argument("btx::merge::anchored_expert: " + what +
                                " must be [layers=" + std::to_string(layers) +
                                ", hidden=" + std::to_string(hidden) + "]");
  }
  if (!torch::isfinite(rows_LD).all().item<bool>()) {
    throw std::invalid_argument("btx::merge::anchored_expert: " + what + " hold NaN or Inf");
  }
}

// Whether parameter `name` is one of the MoE layers' expert or router tensors: a tensor
// whose rows (dim 0) are per expert, row 0 the anchor's.
inline bool per_expert(const SublayerNaming& naming, int64_t layers, const std::string& name) {
  for (int64_t l = 0; l < layers; ++l) {
    if (name == naming.router_name(l)) return true;
    for (const auto& p : naming.projections) {
      if (name == naming.experts_name(l, p)) return true;
    }
  }
  return false;
}

// What every model built over one anchor shares of tensor `t`: the anchor's row of a
// per-expert tensor, else the whole tensor.
inline torch::Tensor anchor_part(const torch::Tensor& t, bool per_expert_rows) {
  return per_expert_rows ? t.slice(0, 0, 1) : t;
}

inline void require_moe(const CausalLM& m, const std::string& where) {
  if (!m.is_moe()) throw std::invalid_argument(where + ": the model is not an MoE");
  if (m.spec().moe->shared_expert_size.value_or(0) > 0) {
    throw std::invalid_argument(where + ": a shared expert is not supported here");
  }
}

// A model of `spec` whose parameters are `values` (by name; every one must be given).
inline CausalLM built_with(const ModelSpec& spec, const CausalLM& like,
                           const std::map<std::string, torch::Tensor>& values) {
  CausalLM out = family_of(spec).make(spec);
  const auto params = like.parameters();
  if (!params.empty()) out.to(params.front().device(), params.front().scalar_type());
  torch::NoGradGuard no_grad;
  for (auto& p : out.named_parameters()) {
    auto it = values.find(p.key());
    if (it == values.end()) {
      throw std::logic_error("btx::merge: no value for parameter '" + p.key() + "'");
    }
    if (it->second.sizes() != p.value().sizes()) {
      throw std::logic_error("btx::merge: '" + p.key() + "' built as " +
                             c10::str(it->second.sizes()) + ", the model has " +
                             c10::str(p.value().sizes()));
    }
    p.value().copy_(it->second);
  }
  return out;
}

}  // namespace detail

// The anchored expert to train: `anchor` (dense) made an MoE of two copies of its FFN,
// router rows anchor_rows_LD (the anchor's, e.g. its mean FFN input on public text) and
// domain_rows_LD (this expert's domain's), each [L, D] and scaled to unit norm.
inline CausalLM anchored_expert(const CausalLM& anchor, const torch::Tensor& anchor_rows_LD,
                                const torch::Tensor& domain_rows_LD) {
  if (anchor.is_moe()) {
    throw std::invalid_argument("btx::merge::anchored_expert: the anchor must be a dense model");
  }
  const int64_t L = anchor.spec().shape.num_hidden_layers, D = anchor.spec().shape.hidden_size;
  detail::check_rows(anchor_rows_LD, L, D, "the anchor's router rows");
  detail::check_rows(domain_rows_LD, L, D, "the domain's router rows");
  CausalLM expert = upcycled(anchor, anchored_pair_moe());
  const SublayerNaming naming = family_of(expert.spec()).ffn;
  torch::NoGradGuard no_grad;
  auto params = expert.named_parameters();
  for (int64_t l = 0; l < L; ++l) {
    auto& w = params[naming.router_name(l)];
    w.copy_(
        torch::stack({detail::unit_rows(anchor_rows_LD, l), detail::unit_rows(domain_rows_LD, l)}));
  }
  return expert;
}

// Freezes what an anchored expert must not train: expert 0 (the anchor's FFN) and router
// row 0 in every MoE layer, by slice; every other tensor but the expert FFN and the router
// wholly, except the norms (ffn_norms) or attention too (ffn_attention). Returns the
// slices, whose applied_to(hooks) keeps them fixed through training.
inline FrozenSlices freeze_anchored(CausalLM& expert, AnchoredTrains trains) {
  detail::require_moe(expert, "btx::merge::freeze_anchored");
  if (expert.spec().moe->num_experts != 2) {
    throw std::invalid_argument(
        "btx::merge::freeze_anchored: an anchored expert has 2 experts, "
        "this model has " +
        std::to_string(expert.spec().moe->num_experts));
  }
  const auto& family = family_of(expert.spec());
  const int64_t L = expert.spec().shape.num_hidden_layers;
  const SublayerNaming& ffn = family.ffn;
  FrozenSlices slices;
  for (auto& p : expert.named_parameters()) {
    if (detail::per_expert(ffn, L, p.key())) {
      p.value().set_requires_grad(true);
      slices.freeze(p.value(), 0, 1, p.key());
      continue;
    }
    const bool norm = p.key().find("norm") != std::string::npos;
    const bool attention =
        family.attention && p.key().find("." + family.attention->slot + ".") != std::string::npos;
    const bool trains_it = (trains == AnchoredTrains::ffn_norms && norm) ||
                           (trains == AnchoredTrains::ffn_attention && attention && !norm);
    p.value().set_requires_grad(trains_it);
  }
  return slices;
}

// Router rows that separate the domains where centered rows do not: per layer, domain d's
// row scores +1 on d's mean FFN input and -1 on every other domain's (the anchor's row 0
// scores 0), the least-norm such rows (ridge-regularised by `ridge` times the mean squared
// norm of the means). With centered rows (a domain's mean minus the mixture's) text of one
// domain also outscores the anchor on every related domain's row, so top-2 pairs two
// experts that never trained together. means_LD: one [L, D] per domain; returns one each.
inline std::vector<torch::Tensor> separating_rows(const std::vector<torch::Tensor>& means_LD,
                                                  double ridge = 1e-3) {
  if (means_LD.empty()) throw std::invalid_argument("btx::merge::separating_rows: no domains");
  const auto M_LND = torch::stack(means_LD).to(torch::kFloat64).transpose(0, 1);
  const int64_t N = M_LND.size(1);
  const auto eye_NN = torch::eye(N, M_LND.options());
  const auto target_NN = 2.0 * eye_NN - 1.0;
  const auto gram_LNN = torch::matmul(M_LND, M_LND.transpose(1, 2));
  const auto scale_L = gram_LNN.diagonal(0, 1, 2).mean(-1).view({-1, 1, 1});
  // rows R with R M^T = target: R = target (M M^T)^-1 M
  const auto rows_LND =
      torch::matmul(target_NN, torch::linalg_solve(gram_LNN + ridge * scale_L * eye_NN, M_LND));
  std::vector<torch::Tensor> out;
  for (int64_t d = 0; d < N; ++d) {
    out.push_back(rows_LND.select(1, d).to(means_LD[0].scalar_type()).contiguous());
  }
  return out;
}

// Matmul parameters per token an anchored expert trains, per layer and in the LM head
// (for train/flops.hpp's partly_frozen_training_flops_per_token): one FFN and one router
// row, plus attention for ffn_attention (norms are not matmuls).
inline std::pair<double, double> anchored_trained_params(const ArchShape& shape,
                                                         AnchoredTrains trains) {
  const MatmulParams m = matmul_params_per_token(shape, {2, 2});
  double per_layer = m.ffn + m.router / 2.0;
  if (trains == AnchoredTrains::ffn_attention) per_layer += m.attention;
  return {per_layer, 0.0};
}

// Checks that `expert` (an anchored expert, an MoE of two) was trained against `anchor`
// (dense): its anchor slot is the anchor's FFN and every shared tensor the anchor's; a
// difference is refused naming the tensor.
inline void check_anchor(const CausalLM& anchor, const CausalLM& expert, const std::string& what) {
  const std::string where = "btx::merge::check_anchor: " + what;
  detail::require_moe(expert, where);
  if (anchor.is_moe() || anchor.spec().family != expert.spec().family ||
      anchor.spec().config != expert.spec().config) {
    throw std::invalid_argument(where +
                                " is not an anchored expert of the anchor's (dense) "
                                "architecture");
  }
  const SublayerNaming naming = family_of(anchor.spec()).ffn;
  const int64_t L = anchor.spec().shape.num_hidden_layers;
  auto theirs = expert.named_parameters();
  torch::NoGradGuard no_grad;
  for (const auto& p : anchor.named_parameters()) {
    std::string name = p.key();
    torch::Tensor mine = p.value();
    for (int64_t l = 0; l < L; ++l) {
      for (const auto& proj : naming.projections) {
        if (name == naming.dense_name(l, proj)) name = naming.experts_name(l, proj);
      }
    }
    const auto* t = theirs.find(name);
    if (t == nullptr) throw std::invalid_argument(where + " has no '" + name + "'");
    const auto slot = name == p.key() ? *t : (*t)[0];
    if (!torch::equal(slot, mine.to(slot.device(), slot.scalar_type()))) {
      throw std::invalid_argument(where + "'s '" + name + "'" +
                                  (name == p.key() ? "" : " (its anchor slot)") +
                                  " differs from the anchor's: it was not trained against this "
                                  "frozen anchor");
    }
  }
}

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
