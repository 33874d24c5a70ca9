// SPDX-License-Identifier: MIT
// Mixtral-like Llama models: the shared decoder's moe_feed_forward() (its MoE layers'
// names map to HF Mixtral's, hf_names.hpp), and mixtral_moe_options() the MoEOptions that
// route exactly as transformers' Mixtral.
// (Sparse upcycling of a built model is merge::upcycled, for every family.)
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>

#include <btx/core/gated_ffn.hpp>
#include <btx/core/model_spec.hpp>
#include <btx/models/common/decoder_moe.hpp>
#include <btx/models/llama/model.hpp>
#include <btx/moe/aux_loss.hpp>
#include <btx/moe/experts/packed_swiglu.hpp>
#include <btx/moe/moe_layer.hpp>
#include <btx/moe/options.hpp>
#include <btx/moe/router_registry.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

// MoEOptions reproducing HF Mixtral: top-k over softmax, renormalised; Switch-form
// load-balancing loss weighted by router_aux_loss_coef.
inline MoEOptions mixtral_moe_options(const MoEConfig& moe) {
  return hf_top_k_options(moe);
}

BTX_NAMESPACE_END
}  // namespace btx
