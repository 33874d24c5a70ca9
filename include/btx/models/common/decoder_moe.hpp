// SPDX-License-Identifier: MIT
// MoE feed-forward blocks for the shared decoder: moe_feed_forward() is a
// FeedForwardFactory whose layers are MoE<router, PackedSwiGLU> (parameter names follow
// btx's MoE contract: mlp.gate.weight, mlp.experts.{gate,up,down}_proj), which each family's
// name table maps to its HF MoE architecture.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>

#include <btx/core/gated_ffn.hpp>
#include <btx/core/model_spec.hpp>
#include <btx/models/common/decoder.hpp>
#include <btx/moe/experts/packed_swiglu.hpp>
#include <btx/moe/moe_layer.hpp>
#include <btx/moe/options.hpp>
#include <btx/moe/router_registry.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// DecoderForCausalLM(config, moe_feed_forward({.num_experts = 4, .router = "top2"})).
// The router name (any registered one, btx::router_names()) is checked here, before any
// layer is built. `activation` is the experts' gate activation (SiLU in the shipped families).
inline FeedForwardFactory moe_feed_forward(MoEOptions options,
                                           GateActivation activation = GateActivation::silu) {
  check_router(options);  // validates name, k, E and the router's options
  auto router = find_router(options.router);
  return [options, router, activation](const DecoderConfig& config,
                                       int64_t layer) -> torch::nn::AnyModule {
    auto gate = router->make_router(options, config.hidden_size, static_cast<uint64_t>(layer));
    auto experts = std::make_shared<PackedSwiGLU>(options.num_experts, config.hidden_size,
                                                  config.intermediate_size, activation);
    experts->set_kernel(options.expert_kernel);
    auto moe = router->make_layer(gate, experts, options.aux());
    if (options.shared_expert_size) {
      dynamic_cast<MoELayerBase&>(*moe.ptr())
          .add_shared_expert(
              SharedExpertSlot::make(config.hidden_size, *options.shared_expert_size, activation));
    }
    return moe;
  };
}

// MoEOptions of an HF MoE model that routes top-k over the softmax (Mixtral; Qwen2-MoE and
// Qwen3-MoE, renormalised when norm_topk_prob), with Switch-form load balancing weighted by
// router_aux_loss_coef, and the config's shared expert (Qwen2-MoE).
inline MoEOptions hf_top_k_options(const MoEConfig& moe) {
  MoEOptions o;
  o.num_experts = moe.num_local_experts;
  o.router = "topk";
  o.k = moe.num_experts_per_tok;
  o.renormalize_top_k = moe.norm_topk_prob;
  o.shared_expert_size = moe.shared_expert_intermediate_size;
  o.load_balance_alpha = moe.router_aux_loss_coef;
  o.load_balance_form = LoadBalanceForm::switch_;
  return o;
}

// The MoE fields of a model `spec` built with `options` describes: its config's own (the
// HF architecture's top-k, aux coefficient, expert F) where it has them, with the expert
// count, renormalisation and shared expert that `options` builds.
inline ModelSpec with_moe_options(const ModelSpec& spec, const MoEOptions& options) {
  ModelSpec moe = spec;
  if (!moe.moe) moe.moe = MoEConfig{options.num_experts, 2, options.load_balance_alpha};
  moe.moe->num_local_experts = options.num_experts;
  moe.moe->norm_topk_prob = options.renormalize_top_k;
  moe.moe->shared_expert_intermediate_size = options.shared_expert_size;
  if (options.expert_size > 0) moe.moe->expert_intermediate_size = options.expert_size;
  return moe;
}

BTX_NAMESPACE_END
}  // namespace btx
