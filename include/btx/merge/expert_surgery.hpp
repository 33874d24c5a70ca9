// SPDX-License-Identifier: MIT
// Adding and removing experts of an existing MoE state dict (MoE naming contract): a new
// domain expert joins with its FFN appended to every layer's packed experts and one new
// router row; removing expert j drops its slices and router row. Shared tensors are left
// as they are (re-mix from the dense experts to re-average them).
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <btx/merge/dense_layout.hpp>
#include <btx/merge/manifest.hpp>
#include <btx/merge/router_init.hpp>
#include <btx/merge/state_dict.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace merge {

struct MoeLayout {
  int64_t num_layers = 0;
  int64_t num_experts = 0;   // E
  int64_t hidden = 0;        // H
  int64_t intermediate = 0;  // each expert's I
  torch::ScalarType dtype = torch::kFloat32;
};

// Reads and checks the MoE tensors of every layer: router [E, H], gate/up [E, I, H],
// down [E, H, I], the same E, H, I and dtype everywhere. Throws naming the tensor.
inline MoeLayout inspect_moe(const StateDict& moe) {
  MoeLayout m;
  while (moe.count(router_name(m.num_layers))) ++m.num_layers;
  if (m.num_layers == 0) {
    throw std::invalid_argument("btx::merge: no '" + router_name(0) +
                                "' in the state dict; is it a btx MoE state dict?");
  }
  const auto expect = [&](const std::string& name, std::vector<int64_t> shape) {
    auto it = moe.find(name);
    if (it == moe.end()) {
      throw std::invalid_argument("btx::merge: MoE state dict lacks '" + name + "'");
    }
    if (it->second.sizes().vec() != shape || it->second.scalar_type() != m.dtype) {
      throw std::invalid_argument(
          "btx::merge: '" + name + "' is " + shape_string(it->second.sizes().vec()) + " " +
          c10::toString(it->second.scalar_type()) + ", expected " + shape_string(shape) + " " +
          c10::toString(m.dtype) + " (from layer 0's router and experts)");
    }
  };
  const auto& r0 = moe.at(router_name(0));
  const auto& g0 = moe.at(experts_name(0, "gate_proj"));
  if (r0.dim() != 2 || g0.dim() != 3) {
    throw std::invalid_argument(
        "btx::merge: layer 0's router must be [E, H] and experts [E, I, H]");
  }
  m.num_experts = r0.size(0);
  m.hidden = r0.size(1);
  m.intermediate = g0.size(1);
  m.dtype = r0.scalar_type();
  for (int64_t i = 0; i < m.num_layers; ++i) {
    expect(router_name(i), {m.num_experts, m.hidden});
    expect(experts_name(i, "gate_proj"), {m.num_experts, m.intermediate, m.hidden});
    expect(experts_name(i, "up_proj"), {m.num_experts, m.intermediate, m.hidden});
    expect(experts_name(i, "down_proj"), {m.num_experts, m.hidden, m.intermediate});
  }
  return m;
}

// Appends `expert` (a dense decoder: its model.layers.{i}.mlp.*_proj.weight) as expert E in
// every layer, with a router row from `router` (RouterFromHidden: one [L, H] table, the new
// expert's). Returns the new state dict; `moe` is unchanged. `manifest`, if given, gets
// the new expert count and `label` appended to its sources.
template <RouterInit R>
StateDict add_expert(const StateDict& moe, const StateDict& expert, const R& router,
                     const std::string& label = "added", MixManifest* manifest = nullptr) {
  const MoeLayout m = inspect_moe(moe);
  router.validate(1, m.num_layers, m.hidden);
  for (int64_t i = 0; i < m.num_layers; ++i) {  // validate all before building anything
    for (const auto& proj : ffn_projections()) {
      const auto name = dense_ffn_name(i, proj);
      auto it = expert.find(name);
      const std::vector<int64_t> want = proj == "down_proj"
                                            ? std::vector<int64_t>{m.hidden, m.intermediate}
                                            : std::vector<int64_t>{m.intermediate, m.hidden};
      if (it == expert.end()) {
        throw std::invalid_argument("btx::merge::add_expert: expert '" + label + "' lacks '" +
                                    name + "'");
      }
      if (it->second.sizes().vec() != want) {
        throw std::invalid_argument("btx::merge::add_expert: '" + name + "' of '" + label +
                                    "' is " + shape_string(it->second.sizes().vec()) +
                                    " but the MoE's experts need " + shape_string(want));
      }
    }
  }
  StateDict out = moe;
  torch::NoGradGuard no_grad;
  for (int64_t i = 0; i < m.num_layers; ++i) {
    for (const auto& proj : ffn_projections()) {
      const auto& packed = moe.at(experts_name(i, proj));
      auto w = expert.at(dense_ffn_name(i, proj)).to(packed.device(), m.dtype).unsqueeze(0);
      out[experts_name(i, proj)] = torch::cat({packed, w});
    }
    const auto& r = moe.at(router_name(i));
    auto row = router.init(i, {0}, m.hidden, m.dtype).to(r.device());
    out[router_name(i)] = torch::cat({r, row});
  }
  if (manifest != nullptr) {
    manifest->num_experts = m.num_experts + 1;
    manifest->sources.push_back(label);
    manifest->experts.push_back(
        nlohmann::json::array({{{"source", label}, {"rows", {0, m.intermediate}}}}));
  }
  return out;
}

// Drops expert `index` from every layer (its expert slices and router row). Throws when
// out of range or when it is the last expert.
inline StateDict remove_expert(const StateDict& moe, int64_t index,
                               MixManifest* manifest = nullptr) {
  const MoeLayout m = inspect_moe(moe);
  if (index < 0 || index >= m.num_experts) {
    throw std::invalid_argument("btx::merge::remove_expert: expert " + std::to_string(index) +
                                " is out of range for " + std::to_string(m.num_experts) +
                                " experts");
  }
  if (m.num_experts == 1) {
    throw std::invalid_argument("btx::merge::remove_expert: cannot remove the only expert");
  }
  StateDict out = moe;
  const auto drop = [&](const torch::Tensor& t) {
    return torch::cat({t.narrow(0, 0, index), t.narrow(0, index + 1, m.num_experts - index - 1)});
  };
  for (int64_t i = 0; i < m.num_layers; ++i) {
    out[router_name(i)] = drop(moe.at(router_name(i)));
    for (const auto& proj : ffn_projections()) {
      out[experts_name(i, proj)] = drop(moe.at(experts_name(i, proj)));
    }
  }
  if (manifest != nullptr) {
    manifest->num_experts = m.num_experts - 1;
    if (manifest->sources.size() == size_t(m.num_experts)) {  // one source per expert
      manifest->sources.erase(manifest->sources.begin() + index);
    }
    if (manifest->experts.is_array() && manifest->experts.size() == size_t(m.num_experts)) {
      manifest->experts.erase(manifest->experts.begin() + index);
    }
  }
  return out;
}

}  // namespace merge
BTX_NAMESPACE_END
}  // namespace btx
