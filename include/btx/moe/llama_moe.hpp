// SPDX-License-Identifier: MIT
// Mixtral-like Llama models: moe_feed_forward() is a FeedForwardFactory whose layers are
// MoE<router, PackedSwiGLU> (parameter names as HF Mixtral's, see the MoE contract), and
// upcycled() turns a dense Llama into such a model with every expert a copy of its FFN.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

#include <btx/models/llama.hpp>
#include <btx/moe/experts/packed_swiglu.hpp>
#include <btx/moe/moe_layer.hpp>
#include <btx/moe/options.hpp>
#include <btx/moe/router_registry.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// LlamaForCausalLM(config, moe_feed_forward({.num_experts = 4, .router = "top2"})).
// The router name (any registered one, btx::router_names()) is checked here, before any
// layer is built.
inline FeedForwardFactory moe_feed_forward(MoEOptions options) {
  check_router(options);  // validates name, k, E and the router's options
  auto router = find_router(options.router);
  return [options, router](const LlamaConfig& config, int64_t layer) -> torch::nn::AnyModule {
    auto gate = router->make_router(options, config.hidden_size, static_cast<uint64_t>(layer));
    auto experts = std::make_shared<PackedSwiGLU>(options.num_experts, config.hidden_size,
                                                  config.intermediate_size);
    return router->make_layer(gate, experts, options.aux());
  };
}

// Sparse upcycling of the reference model: a new Mixtral-like model whose every
// non-FFN parameter is copied from `dense` and whose E experts per layer are copies of
// the dense FFN; routers keep their fresh random init. The result clones cleanly.
inline LlamaForCausalLM upcycled(LlamaForCausalLMImpl& dense, const MoEOptions& options) {
  LlamaForCausalLM moe(dense.config(), moe_feed_forward(options));
  auto target = moe->named_parameters();
  torch::NoGradGuard no_grad;
  moe->to(dense.parameters().front().device(), dense.parameters().front().scalar_type());
  for (const auto& p : dense.named_parameters()) {
    if (auto* t = target.find(p.key())) {
      t->copy_(p.value());
      continue;
    }
    // model.layers.{i}.mlp.{gate,up,down}_proj.weight -> experts.{...} [E, ...]
    const std::string& name = p.key();
    const auto mlp = name.find(".mlp.");
    const auto suffix = name.rfind(".weight");
    if (mlp == std::string::npos || suffix == std::string::npos) {
      throw std::runtime_error("btx::upcycled: no place for dense parameter '" + name + "'");
    }
    const std::string packed =
        name.substr(0, mlp) + ".mlp.experts." + name.substr(mlp + 5, suffix - (mlp + 5));
    auto* t = target.find(packed);
    if (t == nullptr) {
      throw std::runtime_error("btx::upcycled: dense parameter '" + name +
                               "' has no packed "
                               "counterpart '" +
                               packed + "'");
    }
    t->copy_(p.value().unsqueeze(0).expand_as(*t));
  }
  return moe;
}

BTX_NAMESPACE_END
}  // namespace btx
