// SPDX-License-Identifier: MIT
// load_causal_lm: any checkpoint folder btx reads (LlamaForCausalLM or MixtralForCausalLM)
// as a btx model, chosen by its config.json, as transformers' AutoModelForCausalLM does.
// A Mixtral becomes a Llama whose FFNs are btx's MoE module with Mixtral's routing.
#pragma once

#include <torch/torch.h>

#include <filesystem>

#include <btx/hf/config_json.hpp>
#include <btx/hf/llama_checkpoint.hpp>
#include <btx/models/llama.hpp>
#include <btx/moe/aux_loss.hpp>
#include <btx/moe/llama_moe.hpp>
#include <btx/moe/options.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN
namespace hf {

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

// Builds the model config.json describes (dense Llama, or Mixtral via moe_feed_forward),
// converts it to `dtype` and loads the weights (every tensor checked before any is copied).
inline LlamaForCausalLM load_causal_lm(const std::filesystem::path& dir,
                                       torch::Dtype dtype = torch::kFloat32) {
  const auto config = read_config_json(dir / "config.json");
  LlamaForCausalLM model =
      config.moe
          ? LlamaForCausalLM(config.llama, moe_feed_forward(mixtral_moe_options(*config.moe)))
          : LlamaForCausalLM(config.llama);
  model->to(dtype);
  load_hf_weights(*model, dir);
  return model;
}

}  // namespace hf
BTX_NAMESPACE_END
}  // namespace btx
