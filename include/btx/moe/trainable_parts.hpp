// SPDX-License-Identifier: MIT
// Which parts of a model a training run updates: everything; only the routers (a merged
// MoE's router learning token-level routing while every expert and the trunk stay as
// merged); routers and shared experts; everything but the routed experts; or only the
// feed-forward blocks (a dense model's MLPs, an MoE's whole MoE layers). The rest stops
// taking gradients: the optimizer, gradient clipping and data-parallel averaging skip a
// parameter without one, so its values stay bit for bit what they were.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/moe/moe_layer.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

enum class TrainedParts { everything, router, router_and_shared, experts_frozen, ffn };

inline const std::vector<std::string>& trained_parts_names() {
  static const std::vector<std::string> names = {"everything", "router", "router_and_shared",
                                                 "experts_frozen", "ffn"};
  return names;
}

inline std::string trained_parts_name(TrainedParts p) {
  return trained_parts_names().at(size_t(p));
}

inline TrainedParts parse_trained_parts(const std::string& name) {
  const auto& names = trained_parts_names();
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] == name) return TrainedParts(i);
  }
  std::string known;
  for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown trained parts '" + name + "' (known: " + known + ")");
}

// What restrict_training left trainable, for logs and model cards.
struct TrainedPartsSummary {
  int64_t trainable_tensors = 0, frozen_tensors = 0;
  int64_t trainable_values = 0, frozen_values = 0;
};

namespace detail {
// The parameter names under module `prefix` ("" is the whole model).
inline std::set<std::string> parameter_names_under(torch::nn::Module& module,
                                                   const std::string& prefix) {
  std::set<std::string> out;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) {
    out.insert(prefix.empty() ? p.key() : prefix + "." + p.key());
  }
  return out;
}
}  // namespace detail

// Freezes every parameter of `model` outside `parts`. `ffn_slot` names a dense decoder
// layer's feed-forward child ("mlp" in every family btx reads). A choice the model cannot
// honour (router training on a dense model, a shared expert it lacks, an FFN slot it has
// not) is an error naming it, before anything is frozen.
inline TrainedPartsSummary restrict_training(torch::nn::Module& model, TrainedParts parts,
                                             const std::string& ffn_slot = "mlp") {
  std::set<std::string> keep;
  const auto layers = moe_layers(model);
  const auto name = trained_parts_name(parts);
  if (parts != TrainedParts::everything && parts != TrainedParts::ffn && layers.empty()) {
    throw std::invalid_argument("trains: " + name +
                                " needs an MoE model; this one is dense (no router, no experts)");
  }
  if (parts == TrainedParts::everything) {
    keep = detail::parameter_names_under(model, "");
  } else if (parts == TrainedParts::ffn) {
    for (auto& item : model.named_modules("", /*include_self=*/false)) {
      const auto& key = item.key();
      const auto dot = key.rfind('.');
      if ((dot == std::string::npos ? key : key.substr(dot + 1)) != ffn_slot) continue;
      const auto names = detail::parameter_names_under(*item.value(), key);
      keep.insert(names.begin(), names.end());
    }
    if (keep.empty()) {
      throw std::invalid_argument("trains: ffn found no feed-forward module named '" + ffn_slot +
                                  "' in the model");
    }
  } else {
    bool has_shared = false;
    for (const auto& [layer_name, layer] : layers) {
      auto* module = dynamic_cast<torch::nn::Module*>(layer);
      if (!module) continue;
      for (auto& child : module->named_children()) {
        const auto& c = child.key();
        const bool router = c == "gate";
        const bool shared = c == "shared_expert" || c == "shared_expert_gate";
        const bool experts = c == "experts";
        has_shared = has_shared || shared;
        const bool take = parts == TrainedParts::router              ? router
                          : parts == TrainedParts::router_and_shared ? router || shared
                                                                     : !experts;
        if (!take) continue;
        const auto names = detail::parameter_names_under(
            *child.value(), layer_name.empty() ? c : layer_name + "." + c);
        keep.insert(names.begin(), names.end());
      }
    }
    if (parts == TrainedParts::router_and_shared && !has_shared) {
      throw std::invalid_argument(
          "trains: router_and_shared, but the model's MoE layers have no shared expert");
    }
    if (parts == TrainedParts::experts_frozen) {
      // Everything outside the MoE layers trains too.
      std::set<std::string> in_moe;
      for (const auto& [layer_name, layer] : layers) {
        if (auto* module = dynamic_cast<torch::nn::Module*>(layer)) {
          const auto names = detail::parameter_names_under(*module, layer_name);
          in_moe.insert(names.begin(), names.end());
        }
      }
      for (const auto& n : detail::parameter_names_under(model, "")) {
        if (!in_moe.count(n)) keep.insert(n);
      }
    }
  }
  TrainedPartsSummary summary;
  for (auto& p : model.named_parameters(/*recurse=*/true)) {
    const bool trains = keep.count(p.key()) > 0;
    if (!trains) p.value().set_requires_grad(false);
    (trains ? summary.trainable_tensors : summary.frozen_tensors) += 1;
    (trains ? summary.trainable_values : summary.frozen_values) += p.value().numel();
  }
  if (summary.trainable_tensors == 0) {
    throw std::invalid_argument("trains: " + name + " leaves nothing to train in this model");
  }
  return summary;
}

BTX_NAMESPACE_END
}  // namespace btx
