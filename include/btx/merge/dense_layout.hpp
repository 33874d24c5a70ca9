// SPDX-License-Identifier: MIT
// Tensor names of dense and btx MoE state dicts (the naming contract,
// core/sublayer_naming.hpp), and the validation every merge runs before producing anything:
// the sources must be dense decoders of one architecture, with the same tensor set, shapes
// and dtypes, and the sublayer that becomes experts (the FFN unless told otherwise) a set of
// bias-free weight matrices in every layer.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <btx/core/sublayer_naming.hpp>
#include <btx/merge/state_dict.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

// The FFN layout every merge assumes unless told otherwise: transformers' decoder layout
// (see core/sublayer_naming.hpp), used by every family btx ships.
inline const FfnNaming& default_ffn_naming() {
  static const FfnNaming naming;
  return naming;
}
// The three gated-FFN projections: gate/up [F, D], down [D, F].
inline const std::vector<std::string>& ffn_projections() {
  return default_ffn_naming().projections;
}
inline std::string layer_prefix(int64_t layer) {
  return default_ffn_naming().layer_prefix(layer);
}
// Dense: model.layers.{i}.mlp.{gate,up,down}_proj.weight
inline std::string dense_ffn_name(int64_t layer, const std::string& proj) {
  return default_ffn_naming().dense_ffn_name(layer, proj);
}
// MoE (contract): model.layers.{i}.mlp.experts.{gate,up,down}_proj [E, F, D] / [E, D, F]
inline std::string experts_name(int64_t layer, const std::string& proj) {
  return default_ffn_naming().experts_name(layer, proj);
}
// MoE router (contract): model.layers.{i}.mlp.gate.weight [E, D]
inline std::string router_name(int64_t layer) {
  return default_ffn_naming().router_name(layer);
}
// MoE shared expert (contract): model.layers.{i}.mlp.shared_expert.{proj}.weight and its
// gate model.layers.{i}.mlp.shared_expert_gate.weight [1, D]
inline std::string shared_expert_name(int64_t layer, const std::string& proj) {
  return default_ffn_naming().shared_expert_name(layer, proj);
}
inline std::string shared_expert_gate_name(int64_t layer) {
  return default_ffn_naming().shared_expert_gate_name(layer);
}
// Layer index of a name under model.layers.{i}., if any.
inline std::optional<int64_t> layer_of(const std::string& name) {
  return default_ffn_naming().layer_of(name);
}
inline bool is_ffn_tensor(const std::string& name) {
  return default_ffn_naming().is_ffn_tensor(name);
}

// What validation learnt about the (identically shaped) dense sources.
struct DenseLayout {
  int64_t num_layers = 0;
  int64_t hidden = 0;        // D
  int64_t intermediate = 0;  // W of the expert sublayer (the FFN's F) in its first projection
  std::map<std::string, int64_t> widths;  // each projection's W (attention: q's H*A, k's G*A)
  torch::ScalarType ffn_dtype = torch::kFloat32;
  SublayerNaming sublayer;        // the sublayer that becomes experts
  std::vector<TensorSpec> specs;  // every tensor of source 0, sorted by name

  [[nodiscard]] std::vector<TensorSpec> shared_specs() const {  // all but that sublayer's
    std::vector<TensorSpec> out;
    for (const auto& s : specs) {
      if (!sublayer.is_sublayer_tensor(s.name)) out.push_back(s);
    }
    return out;
  }
  // Projection `proj`'s share of a piece [begin, end) of the first projection's width.
  [[nodiscard]] std::pair<int64_t, int64_t> rows_of(const std::string& proj, int64_t begin,
                                                    int64_t end) const {
    const int64_t w = widths.at(proj);
    return {begin * w / intermediate, end * w / intermediate};
  }
  [[nodiscard]] bool divides(const std::string& proj, int64_t at) const {
    return at * widths.at(proj) % intermediate == 0;
  }
};

template <TensorSource S>
std::vector<std::string> labels_of(const std::vector<S>& sources) {
  std::vector<std::string> out;
  for (const auto& s : sources) out.push_back(s.label());
  return out;
}

namespace detail {
// "the FFN" or "the sublayer 'self_attn'", for messages.
inline std::string sublayer_words(const SublayerNaming& n) {
  return n.kind == Sublayer::ffn ? std::string("FFN") : "sublayer '" + n.slot + "'";
}
}  // namespace detail

// Throws std::invalid_argument naming the tensor and the two sources that disagree, or the
// structural problem (not a dense decoder, a missing weight of the expert sublayer,
// inconsistent shapes).
template <TensorSource S>
DenseLayout validate_dense_sources(const std::vector<S>& sources,
                                   const SublayerNaming& sublayer = SublayerNaming::ffn()) {
  if (sources.empty()) throw std::invalid_argument("btx::merge: no sources to merge");
  const auto& ref = sources.front();
  const auto ref_names = ref.names();
  const std::set<std::string> ref_set(ref_names.begin(), ref_names.end());
  DenseLayout layout;
  layout.sublayer = sublayer;
  for (const auto& n : ref_set) layout.specs.push_back(ref.spec(n));

  for (size_t j = 1; j < sources.size(); ++j) {
    const auto names = sources[j].names();
    const std::set<std::string> set(names.begin(), names.end());
    for (const auto& n : ref_set) {
      if (!set.count(n)) {
        throw std::invalid_argument("btx::merge: tensor '" + n + "' is in '" + ref.label() +
                                    "' but missing from '" + sources[j].label() +
                                    "'; merged sources must have the same tensors");
      }
    }
    for (const auto& n : set) {
      if (!ref_set.count(n)) {
        throw std::invalid_argument("btx::merge: tensor '" + n + "' is in '" + sources[j].label() +
                                    "' but missing from '" + ref.label() +
                                    "'; merged sources must have the same tensors");
      }
    }
    for (const auto& s : layout.specs) {
      const TensorSpec other = sources[j].spec(s.name);
      if (other.shape != s.shape || other.dtype != s.dtype) {
        throw std::invalid_argument("btx::merge: tensor '" + s.name + "' is " +
                                    shape_string(s.shape) + " " + c10::toString(s.dtype) + " in '" +
                                    ref.label() + "' but " + shape_string(other.shape) + " " +
                                    c10::toString(other.dtype) + " in '" + sources[j].label() +
                                    "'; merged sources must share architecture and dtype");
      }
    }
  }

  std::set<int64_t> layers;
  for (const auto& n : ref_set) {
    if (const auto l = layer_of(n)) layers.insert(*l);
    for (const auto& any : {SublayerNaming::ffn(), SublayerNaming::attention()}) {
      if (any.is_packed_experts(n) || any.is_router(n) ||
          n.find("." + any.slot + ".experts.") != std::string::npos) {
        throw std::invalid_argument("btx::merge: source '" + ref.label() + "' has MoE tensor '" +
                                    n + "'; the Mix stage merges dense checkpoints");
      }
    }
  }
  layout.num_layers = static_cast<int64_t>(layers.size());
  if (layout.num_layers == 0 || *layers.rbegin() != layout.num_layers - 1) {
    throw std::invalid_argument(
        "btx::merge: source '" + ref.label() + "' has no contiguous model.layers.{0.." +
        std::to_string(layout.num_layers) + "} tensors; is it a decoder state dict?");
  }
  const bool ffn = sublayer.kind == Sublayer::ffn;
  const std::string what = detail::sublayer_words(sublayer);
  for (int64_t i = 0; i < layout.num_layers; ++i) {
    for (const auto& proj : sublayer.projections) {
      const auto name = sublayer.dense_name(i, proj);
      if (!ref_set.count(name)) {
        throw std::invalid_argument("btx::merge: source '" + ref.label() + "' lacks '" + name +
                                    (ffn ? std::string("'; each layer needs a dense SwiGLU FFN")
                                         : "'; each layer needs the " + what + "'s projections"));
      }
      const auto s = ref.spec(name);
      const int64_t wd = sublayer.width_dim(proj);
      if (s.shape.size() != 2) {
        throw std::invalid_argument("btx::merge: '" + name + "' is " + shape_string(s.shape) +
                                    "; " + what + " weights are matrices");
      }
      const int64_t W = s.shape[size_t(wd)];
      const int64_t H = s.shape[size_t(1 - wd)];
      if (layout.hidden == 0) {
        layout.hidden = H;
        layout.intermediate = W;
        layout.ffn_dtype = s.dtype;
      }
      if (!layout.widths.count(proj)) layout.widths[proj] = W;
      const bool same_width = ffn ? W == layout.intermediate : W == layout.widths.at(proj);
      if (H != layout.hidden || !same_width || s.dtype != layout.ffn_dtype) {
        throw std::invalid_argument(
            "btx::merge: '" + name + "' is " + shape_string(s.shape) + " " +
            c10::toString(s.dtype) + " but layer 0's " + what +
            " has D=" + std::to_string(layout.hidden) + ", " + (ffn ? "F" : proj + " width") + "=" +
            std::to_string(ffn ? layout.intermediate : layout.widths.at(proj)) + " " +
            c10::toString(layout.ffn_dtype) + "; packed experts need the same " + what +
            " shape and dtype in every layer");
      }
    }
    for (const auto& n : ref_set) {
      if (layer_of(n) != i || !sublayer.is_sublayer_tensor(n)) continue;
      const bool known =
          std::any_of(sublayer.projections.begin(), sublayer.projections.end(),
                      [&](const std::string& proj) { return n == sublayer.dense_name(i, proj); });
      if (!known) {
        throw std::invalid_argument(
            "btx::merge: unexpected " + what + " tensor '" + n + "' in '" + ref.label() +
            (ffn ? std::string("'; only bias-free SwiGLU FFNs can be mixed")
                 : "'; only its bias-free, norm-free projections can become experts"));
      }
    }
  }
  return layout;
}

// The same, with the seed the sources branched from (when given) checked like a source.
template <TensorSource S>
DenseLayout validate_dense_sources(const std::vector<S>& sources, const S* base,
                                   const SublayerNaming& sublayer = SublayerNaming::ffn()) {
  if (!base || sources.empty()) return validate_dense_sources(sources, sublayer);
  std::vector<S> with_base = sources;
  with_base.push_back(*base);
  return validate_dense_sources(with_base, sublayer);
}

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
