// SPDX-License-Identifier: MIT
// Mixtral-like Llama models: moe_feed_forward() is a FeedForwardFactory whose layers are
// MoE<router, PackedSwiGLU> (parameter names as HF Mixtral's, see the MoE contract), and
// mixtral_moe_options() the MoEOptions that route exactly as transformers' Mixtral.
// (Sparse upcycling of a built model is merge::upcycled, for every family.)
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>

#include <btx/core/gated_ffn.hpp>
#include <btx/core/model_spec.hpp>
#include <btx/models/llama/model.hpp>
#include <btx/moe/aux_loss.hpp>
#include <btx/moe/experts/packed_swiglu.hpp>
#include <btx/moe/moe_layer.hpp>
#include <btx/moe/options.hpp>
#include <btx/moe/router_registry.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// LlamaForCausalLM(config, moe_feed_forward({.num_experts = 4, .router = "top2"})).
// The router name (any registered one, btx::router_names()) is checked here, before any
// layer is built. `activation` is the experts' gate activation (SiLU for Llama; a derived
// family may pick another).
inline FeedForwardFactory moe_feed_forward(MoEOptions options,
                                           GateActivation activation = GateActivation::silu) {
  check_router(options);  // validates name, k, E and the router's options
  auto router = find_router(options.router);
  return [options, router, activation](const LlamaConfig& config,
                                       int64_t layer) -> torch::nn::AnyModule {
    auto gate = router->make_router(options, config.hidden_size, static_cast<uint64_t>(layer));
    auto experts = std::make_shared<PackedSwiGLU>(options.num_experts, config.hidden_size,
                                                  config.intermediate_size, activation);
    experts->set_kernel(options.expert_kernel);
    return router->make_layer(gate, experts, options.aux());
  };
}

// MoEOptions reproducing HF Mixtral: top-k over softmax, renormalised; Switch-form
// load-balancing loss weighted by router_aux_loss_coef.
inline MoEOptions mixtral_moe_options(const MoEConfig& moe) {
  MoEOptions o;
  o.num_experts = moe.num_local_experts;
  o.router = "topk";
  o.k = moe.num_experts_per_tok;
  o.load_balance_alpha = moe.router_aux_loss_coef;
  o.load_balance_form = LoadBalanceForm::switch_;
  return o;
}

BTX_NAMESPACE_END
}  // namespace btx
