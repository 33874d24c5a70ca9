// SPDX-License-Identifier: MIT
// The Llama family as a ModelFamily, on the shared decoder like every family: dense
// LlamaForCausalLM (MistralForCausalLM when it has a sliding window), MoE
// MixtralForCausalLM routed as transformers' Mixtral. What it adds to DecoderFamily: its
// config.json reader and writers, Mistral as a further model type, and Mixtral's own tensor
// names (block_sparse_moe, w1/w2/w3). Registered in models/registry.hpp. Older Llama names
// (LlamaConfig, LlamaForCausalLM, ...) are in models/llama/compat.hpp.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include <btx/core/model_spec.hpp>
#include <btx/hf/name_map.hpp>
#include <btx/models/common/decoder_family.hpp>
#include <btx/models/family.hpp>
#include <btx/models/llama/hf_config.hpp>
#include <btx/models/llama/hf_names.hpp>
#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

struct LlamaFamily : DecoderFamily<LlamaFamily> {
  static std::string name() { return "llama"; }
  static std::string dense_model_type() { return "llama"; }
  static std::string moe_model_type() { return "mixtral"; }
  // Mistral is a Llama with a sliding window: read, and written for a windowed dense model.
  static std::vector<std::string> other_model_types() { return {"mistral"}; }

  static hf::HFConfig parse(const nlohmann::json& j, const std::string& where) {
    return hf::config_from_json(j, where);
  }
  static nlohmann::ordered_json dense_json(const DecoderConfig& c, const std::string& dtype) {
    return hf::llama_config_json(c, dtype);
  }
  static nlohmann::ordered_json moe_json(const DecoderConfig& c, const MoEConfig& moe,
                                         const std::string& dtype) {
    return hf::mixtral_config_json(c, moe, dtype);
  }

  // Mixtral's classic per-expert names (hf_names.hpp) instead of transformers' mlp.experts.
  static std::vector<std::string> hf_names(const std::string& param, int64_t experts) {
    return hf::btx_to_hf_names(param, experts);
  }
  static hf::BtxSlot btx_slot(const std::string& hf_name) { return hf::hf_to_btx_slot(hf_name); }
};
static_assert(ModelFamily<LlamaFamily>);

BTX_NAMESPACE_END
}  // namespace btx
