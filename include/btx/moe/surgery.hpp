// SPDX-License-Identifier: MIT
// Model surgery for sparse upcycling in one call: every feed-forward block a selector
// picks in a user's plain LibTorch model becomes an MoE layer whose experts start as
// copies of that block. The block must sit in a `torch::nn::AnyModule` member of its
// parent that is also registered as the parent's child; the names stay predictable:
// `<parent>.<child>.gate.weight`, `<parent>.<child>.experts.{j}.<block's own names>`
// (gated-FFN blocks, GatedFfnSource: the packed `experts.{gate,up,down}_proj` of btx's
// MoE contract).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <typeinfo>
#include <vector>

#include <btx/core/gated_ffn.hpp>
#include <btx/core/moe_config.hpp>
#include <btx/moe/experts/module_experts.hpp>
#include <btx/moe/experts/packed_swiglu.hpp>
#include <btx/moe/moe_layer.hpp>
#include <btx/moe/router_registry.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// Selects the feed-forward slot `child` (held in the member `member`) of every module of
// type Parent; `where`, if set, further filters by the slot's qualified name.
template <class Parent>
struct FeedForwardSlot {
  torch::nn::AnyModule Parent::*member;
  std::string child;
  std::function<bool(const std::string& qualified_name)> where = {};
};

template <class Parent>
FeedForwardSlot<Parent> ffn_slot(torch::nn::AnyModule Parent::*member, std::string child,
                                 std::function<bool(const std::string&)> where = {}) {
  return FeedForwardSlot<Parent>{member, std::move(child), std::move(where)};
}

// Builds the MoE layer for one dense block with moe's router (any registered one):
// packed experts for a gated FFN (a block that implements GatedFfnSource, as every
// family's FFN does), otherwise moe.num_experts clones of the block; the router follows
// the experts' device and dtype.
inline torch::nn::AnyModule upcycle_block(const torch::nn::AnyModule& block, const MoEConfig& moe,
                                          uint64_t layer_index) {
  const auto router = registration_of(moe.router);
  if (const auto* dense = dynamic_cast<const GatedFfnSource*>(block.ptr().get())) {
    auto experts = PackedSwiGLU::copies_of(*dense, moe.num_experts);
    experts->set_kernel(moe.expert_kernel);
    return router->make_layer(moe, layer_index, experts);
  }
  if (moe.hidden_size <= 0) {
    throw std::invalid_argument(
        "btx::upcycle: MoEConfig.hidden_size must be set (the width the feed-forward block "
        "maps [.., H] -> [.., H] over) to upcycle a block of type " +
        std::string(block.type_info().name()));
  }
  return router->make_layer(moe, layer_index,
                            ModuleExperts::copies_of(block, moe.num_experts, moe.hidden_size));
}

// Replaces every selected block of `model` with an MoE layer (sparse upcycling) and
// returns the qualified names of the replaced slots, in module order. Throws if nothing
// matched. btx's family models clone correctly afterwards; a user's Cloneable parent does
// too if its reset() keeps a block it already holds (as btx's decoder layers do).
template <class Parent>
std::vector<std::string> upcycle(torch::nn::Module& model, const FeedForwardSlot<Parent>& slot,
                                 const MoEConfig& options) {
  const MoEConfig moe = resolved(options);  // the router's name looked up once
  std::vector<std::string> replaced;
  auto visit = [&](const std::string& prefix, torch::nn::Module& m) {
    auto* parent = dynamic_cast<Parent*>(&m);
    if (parent == nullptr) return;
    const std::string name = prefix.empty() ? slot.child : prefix + "." + slot.child;
    if (slot.where && !slot.where(name)) return;
    torch::nn::AnyModule& member = parent->*slot.member;
    if (member.is_empty() || parent->named_children().find(slot.child) == nullptr ||
        parent->named_children()[slot.child].get() != member.ptr().get()) {
      throw std::invalid_argument("btx::upcycle: '" + name +
                                  "' is not a registered child held by the selected "
                                  "AnyModule member; register the block under that name");
    }
    auto layer = upcycle_block(member, moe, replaced.size());
    parent->replace_module(slot.child, layer.ptr());
    member = std::move(layer);
    replaced.push_back(name);
  };
  // Collect first (owning) so replacing a child never invalidates what is left to visit.
  auto all = model.named_modules("", /*include_self=*/false);
  visit("", model);
  for (auto& item : all) visit(item.key(), *item.value());
  if (replaced.empty()) {
    throw std::invalid_argument(
        "btx::upcycle: the selector matched no feed-forward block of "
        "type " +
        std::string(typeid(Parent).name()) + " named '" + slot.child + "'");
  }
  return replaced;
}

BTX_NAMESPACE_END
}  // namespace btx
