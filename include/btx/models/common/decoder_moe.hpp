// SPDX-License-Identifier: MIT
// MoE feed-forward blocks for the shared decoder: moe_feed_forward() is a
// FeedForwardFactory whose layers are MoE<router, PackedSwiGLU> (parameter names follow
// btx's MoE contract: mlp.gate.weight, mlp.experts.{gate,up,down}_proj), which each family's
// name table maps to its HF MoE architecture.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <stdexcept>

#include <btx/core/gated_ffn.hpp>
#include <btx/core/model_spec.hpp>
#include <btx/core/moe_config.hpp>
#include <btx/models/common/decoder.hpp>
#include <btx/moe/experts/packed_swiglu.hpp>
#include <btx/moe/moe_layer.hpp>
#include <btx/moe/router_registry.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// DecoderForCausalLM(config, moe_feed_forward({.num_experts = 4, .router = "top2"})).
// The router (any registered one, btx::router_names()) is resolved here, once, before any
// layer is built. `activation` is the experts' gate activation (SiLU in the shipped families).
// The first moe.dense_layers layers stay dense FFNs of width `dense_intermediate_size`
// (0: the width the factory is called with).
inline FeedForwardFactory moe_feed_forward(MoEConfig moe,
                                           GateActivation activation = GateActivation::silu,
                                           int64_t dense_intermediate_size = 0) {
  moe = resolved(std::move(moe));  // validates name and options; k against E below
  const auto router = moe.router.registration;
  (void)router->active_experts(moe);
  if (moe.dense_layers < 0) throw std::invalid_argument("btx: MoEConfig.dense_layers must be >= 0");
  return [moe, router, activation, dense_intermediate_size](const DecoderConfig& config,
                                                            int64_t layer) -> torch::nn::AnyModule {
    if (layer < moe.dense_layers) {
      const int64_t F =
          dense_intermediate_size > 0 ? dense_intermediate_size : config.intermediate_size;
      return torch::nn::AnyModule(GatedMLP(config.hidden_size, F, activation));
    }
    auto gate = router->make_router(moe, config.hidden_size, static_cast<uint64_t>(layer));
    auto experts = std::make_shared<PackedSwiGLU>(moe.num_experts, config.hidden_size,
                                                  config.intermediate_size, activation);
    experts->set_kernel(moe.expert_kernel);
    auto layer_module = router->make_layer(gate, experts, moe.aux());
    if (moe.shared_expert_size) {
      dynamic_cast<MoELayerBase&>(*layer_module.ptr())
          .add_shared_expert(SharedExpertSlot::make(config.hidden_size, *moe.shared_expert_size,
                                                    activation, moe.shared_expert_gated));
    }
    return layer_module;
  };
}

BTX_NAMESPACE_END
}  // namespace btx
