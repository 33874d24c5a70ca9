// SPDX-License-Identifier: MIT
// Expert parallelism applied to a built model from outside: every MoE layer's experts are
// spread evenly over the ranks of a group, and each layer sends tokens to the rank that
// holds their expert with all-to-alls (btx/moe/expert_parallel.hpp). A rank then holds E/G
// experts per layer instead of E. Train with data_parallel over the same ranks (its
// gradient handling knows the shards); gather_experts makes whole layers again, e.g. on
// rank 0 before saving a checkpoint that any tool can read.
//
//   auto comm = btx::dist::Communicator::connect(btx::dist::dist_env_from_environment());
//   btx::dist::expert_parallel(*model, comm);   // every rank, after building the model
//   btx::train_causal_lm(model, sampler, options, btx::dist::data_parallel(comm));
//   btx::dist::gather_experts(*model);          // every rank; then rank 0 saves
#pragma once

#include <torch/torch.h>

#include <memory>
#include <stdexcept>
#include <string>

#include <btx/moe/moe_layer.hpp>
#include <btx/parallel/communicator.hpp>
#include <btx/parallel/data_parallel.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace dist {

// Shards every MoE layer of `model` over `group` (a collective). Group rank 0's weights are
// first copied to every rank, so the shards fit together; with several expert groups in
// one data-parallel world, broadcast_module over the world first. Returns the number of
// MoE layers sharded; a model without MoE layers is refused.
inline size_t expert_parallel(torch::nn::Module& model, Communicator& group) {
  const auto layers = moe_layers(model);
  if (layers.empty()) {
    throw std::invalid_argument("btx::dist::expert_parallel: the model has no MoE layers");
  }
  broadcast_module(group, model);
  const auto shared = std::make_shared<Communicator>(group);
  for (const auto& [name, layer] : layers) {
    try {
      layer->shard_experts(shared);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument("btx::dist::expert_parallel: MoE layer " + name + ": " +
                                  e.what());
    }
  }
  return layers.size();
}

// Gathers every sharded MoE layer's experts back from its group (a collective), so each
// rank holds the whole model again.
inline void gather_experts(torch::nn::Module& model) {
  for (const auto& [name, layer] : moe_layers(model)) layer->unshard_experts();
}

}  // namespace dist
BTX_NAMESPACE_END
}  // namespace btx
